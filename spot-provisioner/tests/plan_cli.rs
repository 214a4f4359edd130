//! `spot-provisioner plan` as a user runs it: manifests in, NodeClaims out.

use std::process::Command;

fn plan(args: &[&str], yaml: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("workload.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_spot-provisioner"))
        .arg("plan")
        .arg("-f")
        .arg(&file)
        .args(args)
        .env_remove("AWS_REGION")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const WORKLOAD: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 40
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: nginx, resources: {requests: {cpu: 500m, memory: 1Gi}}}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  replicas: 3
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - labelSelector: {matchLabels: {app: db}}
            topologyKey: kubernetes.io/hostname
      containers: [{name: db, image: postgres, resources: {requests: {cpu: "2", memory: 8Gi}}}]
---
apiVersion: v1
kind: Pod
metadata: {name: huge}
spec:
  containers: [{name: x, image: x, resources: {requests: {cpu: "5000", memory: 1Gi}}}]
---
apiVersion: karpenter.sh/v1
kind: NodePool
metadata: {name: general}
spec:
  template:
    spec:
      nodeClassRef: {group: spot.dev, kind: SpotNodeClass, name: default}
      requirements:
      - {key: kubernetes.io/arch, operator: In, values: [amd64]}
      - {key: karpenter.sh/capacity-type, operator: In, values: [spot, on-demand]}
      - {key: karpenter.k8s.aws/instance-category, operator: In, values: [c, m, r]}
"#;

#[test]
fn json_plan_has_every_field_and_places_every_pod_but_the_impossible_one() {
    let (code, stdout, stderr) = plan(&["-o", "json"], WORKLOAD);
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let claims = v["nodeclaims"].as_array().unwrap();
    let pods: usize = claims.iter().map(|c| c["pods"].as_array().unwrap().len()).sum();
    assert_eq!(pods, 43, "40 web + 3 db");
    for c in claims {
        for field in [
            "instance_type",
            "capacity_type",
            "zone",
            "price_usd_per_hour",
            "pods",
        ] {
            assert!(!c[field].is_null(), "{field} missing in {c}");
        }
        let t = c["instance_type"].as_str().unwrap();
        assert!(
            ["c", "m", "r"].iter().any(|p| t.starts_with(p)),
            "{t} is outside the pool"
        );
        assert_eq!(
            c["instance_types"][0].as_str(),
            Some(t),
            "the chosen type is the cheapest candidate"
        );
    }
    // Hostname anti-affinity: the three db pods are on three different claims.
    let db_claims = claims
        .iter()
        .filter(|c| {
            c["pods"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p.as_str().unwrap().starts_with("default/db-"))
        })
        .count();
    assert_eq!(db_claims, 3);
    let total = v["total_usd_per_hour"].as_f64().unwrap();
    let sum: f64 = claims
        .iter()
        .map(|c| c["price_usd_per_hour"].as_f64().unwrap())
        .sum();
    assert!((total - sum).abs() < 1e-9);
    let bound = v["lower_bound_usd_per_hour"].as_f64().unwrap();
    assert!(
        bound > 0.0 && bound <= total + 1e-9,
        "bound {bound} total {total}"
    );
    let unschedulable = v["unschedulable"].as_array().unwrap();
    assert_eq!(unschedulable.len(), 1);
    assert_eq!(unschedulable[0]["pod"], "default/huge");
    assert!(
        unschedulable[0]["reason"].as_str().unwrap().contains("5000 vCPU"),
        "{}",
        unschedulable[0]["reason"]
    );
}

#[test]
fn table_plan_prints_totals_and_the_bound() {
    let (code, stdout, stderr) = plan(&[], WORKLOAD);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("INSTANCE TYPE"), "{stdout}");
    assert!(
        stdout.contains("total:") && stdout.contains("lower bound:"),
        "{stdout}"
    );
    assert!(stdout.contains("default/huge: "), "{stdout}");
}

#[test]
fn a_price_table_replaces_the_offline_prices() {
    let dir = tempfile::tempdir().unwrap();
    let prices = dir.path().join("prices.csv");
    std::fs::write(
        &prices,
        "instance_type,usd_per_hour\nm5.large,0.096\nm5.xlarge,0.192\n",
    )
    .unwrap();
    let (code, stdout, stderr) = plan(
        &["-o", "json", "--prices", prices.to_str().unwrap()],
        "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec:\n  containers: [{name: a, image: a, resources: {requests: {cpu: 1, memory: 1Gi}}}]\n",
    );
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["nodeclaims"][0]["instance_type"], "m5.large");
    assert_eq!(v["nodeclaims"][0]["capacity_type"], "on-demand");
    assert_eq!(v["total_usd_per_hour"], 0.096);
}

#[test]
fn bad_input_names_the_problem_and_exits_2() {
    let (code, _, stderr) = plan(
        &[],
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replicas: many}\n",
    );
    assert_eq!(code, 2);
    assert!(stderr.contains("replicas"), "{stderr}");
}
