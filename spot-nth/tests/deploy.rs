//! The deploy manifests render with the real `kubectl kustomize` and say what the docs promise.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Renders a kustomize base. Fails (never skips) when kubectl is missing.
fn kustomize(base: &str) -> Vec<Value> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(repo().join("deploy").join(base))
        .output()
        .unwrap_or_else(|e| panic!("kubectl is required for this test and must be on PATH: {e}"));
    assert!(
        out.status.success(),
        "kubectl kustomize {base}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

#[test]
fn imds_daemonset_runs_only_on_spot_nodes_with_host_network_and_least_privilege() {
    let docs = kustomize("imds");
    let ds = find(&docs, "DaemonSet");
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(ds["metadata"]["namespace"], "kube-system");
    assert_eq!(spec["hostNetwork"], true);
    let terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        .as_sequence()
        .unwrap();
    let keys: Vec<&str> = terms
        .iter()
        .map(|t| t["matchExpressions"][0]["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        ["karpenter.sh/capacity-type", "node.kubernetes.io/lifecycle"]
    );
    for t in terms {
        assert_eq!(t["matchExpressions"][0]["values"][0], "spot");
    }
    let container = &spec["containers"][0];
    assert_eq!(container["args"][0], "imds");
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert_eq!(spec["tolerations"][0]["operator"], "Exists");
    let env: Vec<&str> = container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(env.contains(&"NODE_NAME"), "{env:?}");
    // Every variable the manifests set is one spot-nth knows.
    for name in env {
        assert!(
            spot_nth::config::ENV.iter().any(|(v, _)| *v == name),
            "unknown variable {name}"
        );
    }
}

#[test]
fn queue_deployment_has_two_replicas_a_pdb_and_known_settings() {
    let docs = kustomize("queue");
    let deploy = find(&docs, "Deployment");
    assert_eq!(deploy["spec"]["replicas"], 2);
    assert_eq!(
        deploy["spec"]["template"]["spec"]["containers"][0]["args"][0],
        "queue"
    );
    assert_eq!(find(&docs, "PodDisruptionBudget")["spec"]["minAvailable"], 1);
    let cm = find(&docs, "ConfigMap");
    for (key, _) in cm["data"].as_mapping().unwrap() {
        let key = key.as_str().unwrap();
        assert!(
            spot_nth::config::ENV.iter().any(|(v, _)| *v == key),
            "unknown variable {key}"
        );
    }
    // The generated ConfigMap name (with its hash) is the one the Deployment references.
    let cm_name = cm["metadata"]["name"].as_str().unwrap();
    let referenced =
        deploy["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]["configMapRef"]["name"].as_str();
    assert_eq!(referenced, Some(cm_name));
}

#[test]
fn rbac_is_least_privilege() {
    let docs = kustomize("rbac");
    let role = find(&docs, "ClusterRole");
    let mut grants: Vec<String> = Vec::new();
    for rule in role["rules"].as_sequence().unwrap() {
        for resource in rule["resources"].as_sequence().unwrap() {
            for verb in rule["verbs"].as_sequence().unwrap() {
                grants.push(format!(
                    "{}:{}",
                    resource.as_str().unwrap(),
                    verb.as_str().unwrap()
                ));
            }
        }
    }
    assert!(grants.contains(&"pods/eviction:create".to_owned()));
    assert!(grants.contains(&"nodes:patch".to_owned()));
    for forbidden in ["pods:delete", "nodes:delete", "secrets:get", "*:*"] {
        assert!(!grants.contains(&forbidden.to_owned()), "{forbidden} granted");
    }
}

#[test]
fn cloudformation_has_the_queue_and_five_rules_targeting_it() {
    let text = std::fs::read_to_string(repo().join("deploy/aws/cloudformation.yaml")).unwrap();
    let doc: Value = serde_yaml::from_str(&text).unwrap();
    let resources = doc["Resources"].as_mapping().unwrap();
    let rules: Vec<&Value> = resources
        .values()
        .filter(|r| r["Type"] == "AWS::Events::Rule")
        .collect();
    assert_eq!(rules.len(), 5);
    let mut detail_types: Vec<String> = rules
        .iter()
        .flat_map(|r| {
            r["Properties"]["EventPattern"]["detail-type"]
                .as_sequence()
                .unwrap()
                .iter()
        })
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    detail_types.sort();
    assert_eq!(
        detail_types,
        [
            "AWS Health Event",
            "EC2 Capacity Reservation Instance Interruption Warning",
            "EC2 Instance Rebalance Recommendation",
            "EC2 Instance State-change Notification",
            "EC2 Instance-launch Lifecycle Action",
            "EC2 Instance-terminate Lifecycle Action",
            "EC2 Spot Instance Interruption Warning",
        ]
    );
    assert_eq!(
        resources
            .values()
            .filter(|r| r["Type"] == "AWS::SQS::Queue")
            .count(),
        1
    );

    let policy: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("deploy/aws/iam-policy.json")).unwrap())
            .unwrap();
    let actions: Vec<&str> = policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["Action"].as_array().unwrap())
        .map(|a| a.as_str().unwrap())
        .collect();
    for needed in [
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "ec2:DescribeInstances",
        "autoscaling:CompleteLifecycleAction",
    ] {
        assert!(actions.contains(&needed), "{needed} missing");
    }
}

/// `kubectl apply --dry-run=server` of both bases against spot-kube-sim: the API server
/// accepts every object (and stores none of them).
#[tokio::test]
async fn bases_apply_with_server_dry_run_against_spot_kube_sim() {
    let running = spot_k8s::sim::Sim::new(spot_k8s::sim::SimConfig::default())
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .expect("start spot-kube-sim");
    let dir = tempfile::tempdir().unwrap();
    let kubectl = spot_k8s::sim::Kubectl::new(&running, dir.path()).unwrap();
    for base in ["imds", "queue"] {
        let path = repo().join("deploy").join(base);
        let path = path.to_str().unwrap();
        let stdout = kubectl
            .run_ok(&["apply", "--dry-run=server", "-k", path])
            .await
            .unwrap_or_else(|e| panic!("apply {base} (kubectl is required for this test): {e}"));
        let applied = stdout
            .lines()
            .filter(|l| l.ends_with("created (server dry run)"))
            .count();
        assert_eq!(applied, kustomize(base).len(), "{stdout}");
    }
    // Server dry run stores nothing.
    let sim = running.sim();
    assert!(sim.list("apps/v1", "DaemonSet", None).is_empty());
    assert!(
        sim.list("rbac.authorization.k8s.io/v1", "ClusterRole", None)
            .is_empty()
    );
}
