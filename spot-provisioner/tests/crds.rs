//! The committed CRDs are the ones the Rust types generate, and the real `kubectl` applies
//! them, and a sample NodePool, to spot-kube-sim.

use std::path::{Path, PathBuf};

use kube::Api;
use spot_k8s::sim::{Kubectl, Sim, SimConfig};
use spot_provisioner::api::{
    ConsolidationPolicy, NillableDuration, NodeClaim, NodePool, SpotNodeClass, crd_yaml,
};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn committed_crds_match_the_types() {
    let dir = repo().join("deploy/provisioner/crds");
    let generated = crd_yaml().unwrap();
    for (file, text) in &generated {
        let committed = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        assert!(
            committed == *text,
            "deploy/provisioner/crds/{file} differs from the types in spot-provisioner/src/api: run `cargo xtask crds`"
        );
    }
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut expected: Vec<String> = generated.iter().map(|(f, _)| (*f).to_owned()).collect();
    expected.sort();
    assert_eq!(on_disk, expected, "stale files in deploy/provisioner/crds");
}

#[test]
fn crds_are_structural_with_karpenter_defaults() {
    let crds = spot_provisioner::api::crds();
    let pool = &crds[0].1;
    assert_eq!(pool.spec.group, "karpenter.sh");
    assert_eq!(pool.spec.scope, "Cluster");
    let schema = serde_json::to_value(&pool.spec.versions[0].schema).unwrap();
    let spec = &schema["openAPIV3Schema"]["properties"]["spec"]["properties"];
    let template_spec = &spec["template"]["properties"]["spec"]["properties"];
    assert_eq!(template_spec["expireAfter"]["default"], "720h");
    assert_eq!(
        template_spec["expireAfter"]["pattern"],
        "^(([0-9]+(s|m|h))+|Never)$"
    );
    let disruption = &spec["disruption"]["properties"];
    assert_eq!(
        disruption["consolidationPolicy"]["default"],
        "WhenEmptyOrUnderutilized"
    );
    assert_eq!(disruption["consolidateAfter"]["default"], "0s");
    assert_eq!(
        disruption["budgets"]["default"],
        serde_json::json!([{"nodes": "10%"}])
    );
    assert_eq!(
        spec["limits"]["additionalProperties"]["x-kubernetes-int-or-string"],
        true
    );
    let ops = &template_spec["requirements"]["items"]["properties"]["operator"]["enum"];
    assert_eq!(
        ops,
        &serde_json::json!(["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt", "Gte", "Lte"])
    );
    // Status is a subresource, as in Karpenter.
    assert!(
        pool.spec.versions[0]
            .subresources
            .as_ref()
            .is_some_and(|s| s.status.is_some())
    );
}

/// `kubectl apply --dry-run=server` of the CRD directory, then the CRDs for real, then the
/// sample NodePool and node class; kube-rs reads them back typed, with Karpenter's defaults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crds_and_a_sample_nodepool_apply_to_spot_kube_sim() {
    let running = Sim::new(SimConfig::default())
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .expect("start spot-kube-sim");
    let dir = tempfile::tempdir().unwrap();
    let kubectl = Kubectl::new(&running, dir.path()).unwrap();
    let crds = repo().join("deploy/provisioner/crds");
    let crds = crds.to_str().unwrap();
    let out = kubectl
        .run_ok(&["apply", "--dry-run=server", "-f", crds])
        .await
        .unwrap_or_else(|e| panic!("kubectl is required for this test: {e}"));
    assert_eq!(
        out.lines()
            .filter(|l| l.ends_with("created (server dry run)"))
            .count(),
        3,
        "{out}"
    );
    assert!(
        running
            .sim()
            .list("apiextensions.k8s.io/v1", "CustomResourceDefinition", None)
            .is_empty()
    );
    kubectl.run_ok(&["apply", "-f", crds]).await.unwrap();
    let sample = repo().join("deploy/provisioner/examples/default.yaml");
    let sample = sample.to_str().unwrap();
    let out = kubectl
        .run_ok(&["apply", "--dry-run=server", "-f", sample])
        .await
        .unwrap();
    assert!(
        out.contains("nodepool.karpenter.sh/default created (server dry run)"),
        "{out}"
    );
    let out = kubectl.run_ok(&["apply", "-f", sample]).await.unwrap();
    assert!(out.contains("spotnodeclass.spot.dev/default created"), "{out}");
    let out = kubectl.run_ok(&["get", "nodepools", "-o", "name"]).await.unwrap();
    assert_eq!(out.trim(), "nodepool.karpenter.sh/default");
    kubectl.run_ok(&["get", "np,nc,snc"]).await.unwrap();

    let client = kube::Client::try_from(kube::Config::new(running.url().parse().unwrap())).unwrap();
    let pool = Api::<NodePool>::all(client.clone()).get("default").await.unwrap();
    pool.validate().unwrap();
    let d = &pool.spec.disruption;
    assert_eq!(
        d.consolidation_policy,
        ConsolidationPolicy::WhenEmptyOrUnderutilized
    );
    assert_eq!(
        d.consolidate_after,
        NillableDuration::After(std::time::Duration::from_secs(30))
    );
    assert_eq!(d.budgets.len(), 2);
    assert_eq!(pool.limits().unwrap().unwrap().cpu_millis, 1_000_000);
    assert_eq!(
        pool.requirements()
            .unwrap()
            .get("node.kubernetes.io/instance-type")
            .unwrap()
            .min_values(),
        Some(5)
    );
    let class = Api::<SpotNodeClass>::all(client.clone())
        .get("default")
        .await
        .unwrap();
    class.validate().unwrap();
    assert_eq!(class.subnet("us-east-1b"), Some("subnet-0bbbbbbbbbbbbbbbb"));
    assert_eq!(class.spec.metadata_options.http_tokens, "required");
    let claims = Api::<NodeClaim>::all(client)
        .list(&Default::default())
        .await
        .unwrap();
    assert!(claims.items.is_empty());
}
