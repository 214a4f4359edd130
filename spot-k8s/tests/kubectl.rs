//! Real `kubectl` against spot-kube-sim. These tests fail (never skip) without kubectl.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use common::{TestSim, pdb, pods_on};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::EvictParams;
use serde_json::{Value, json};
use spot_k8s::sim::SimConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_cordon_taint_label() {
    let ts = TestSim::start(SimConfig::default()).await;
    ts.sim().seed(2, 2).unwrap();
    let out = ts.kubectl_ok(&["get", "nodes"]).await;
    assert!(out.contains("sim-node-0") && out.contains("sim-node-1"), "{out}");
    let out = ts.kubectl_ok(&["get", "no", "-o", "name"]).await;
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["node/sim-node-0", "node/sim-node-1"]
    );
    // Server-side Table printing, wide columns included.
    let out = ts.kubectl_ok(&["get", "pods", "-A", "-o", "wide"]).await;
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header[..6],
        ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE"],
        "{out}"
    );
    assert!(header.contains(&"NODE") && header.contains(&"IP"), "{out}");
    let row = out
        .lines()
        .find(|l| l.contains("sim-app-1-1"))
        .expect("a row per pod");
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        (cells[0], cells[2], cells[3]),
        ("default", "1/1", "Running"),
        "{row}"
    );
    assert!(cells.contains(&"sim-node-1"), "{row}");
    let out = ts
        .kubectl_ok(&[
            "get",
            "pods",
            "-l",
            "app=sim-app",
            "--field-selector",
            "spec.nodeName=sim-node-1",
            "-o",
            "name",
        ])
        .await;
    assert_eq!(out.lines().count(), 2, "{out}");

    let out = ts.kubectl_ok(&["cordon", "sim-node-0"]).await;
    assert!(out.contains("cordoned"), "{out}");
    let node = ts.sim().get("v1", "Node", "", "sim-node-0").unwrap();
    assert_eq!(node["spec"]["unschedulable"], true);
    let out = ts.kubectl_ok(&["get", "nodes", "-o", "wide"]).await;
    let row = out.lines().find(|l| l.starts_with("sim-node-0")).unwrap();
    assert!(
        row.contains("Ready,SchedulingDisabled") && row.contains("m5.xlarge"),
        "{out}"
    );
    ts.kubectl_ok(&["uncordon", "sim-node-0"]).await;
    let node = ts.sim().get("v1", "Node", "", "sim-node-0").unwrap();
    assert_ne!(node["spec"]["unschedulable"], true);

    ts.kubectl_ok(&["taint", "nodes", "sim-node-0", "spot=itn:NoSchedule"])
        .await;
    ts.kubectl_ok(&["taint", "nodes", "sim-node-0", "other=x:NoExecute"])
        .await;
    let node = ts.sim().get("v1", "Node", "", "sim-node-0").unwrap();
    let mut keys: Vec<&str> = node["spec"]["taints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["key"].as_str().unwrap())
        .collect();
    keys.sort();
    assert_eq!(keys, ["other", "spot"]);
    ts.kubectl_ok(&["taint", "nodes", "sim-node-0", "spot:NoSchedule-"])
        .await;
    let node = ts.sim().get("v1", "Node", "", "sim-node-0").unwrap();
    assert_eq!(
        node["spec"]["taints"],
        json!([{"key": "other", "value": "x", "effect": "NoExecute"}])
    );

    ts.kubectl_ok(&["label", "nodes", "sim-node-0", "spot/pool=a"])
        .await;
    let node = ts.sim().get("v1", "Node", "", "sim-node-0").unwrap();
    assert_eq!(node["metadata"]["labels"]["spot/pool"], "a");
    ts.kubectl_ok(&["label", "nodes", "sim-node-0", "spot/pool-"])
        .await;
    let node = ts.sim().get("v1", "Node", "", "sim-node-0").unwrap();
    assert!(node["metadata"]["labels"].get("spot/pool").is_none());
    ts.kubectl_ok(&["annotate", "nodes", "sim-node-0", "spot/note=hi"])
        .await;
    let out = ts
        .kubectl_ok(&[
            "get",
            "node",
            "sim-node-0",
            "-o",
            "jsonpath={.metadata.annotations.spot/note}",
        ])
        .await;
    assert_eq!(out, "hi");

    let out = ts.kubectl(&["get", "node", "nope"]).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not found"),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_waits_for_pdb_then_completes() {
    let ts = TestSim::start(SimConfig {
        kubelet: true,
        ..SimConfig::default()
    })
    .await;
    let sim = ts.sim();
    sim.seed(2, 2).unwrap();
    // A DaemonSet pod and an emptyDir pod on the node as well.
    let mut ds = common::running_pod(
        "kube-system",
        "agent-sim-node-0",
        "sim-node-0",
        json!({"app": "agent"}),
    );
    ds["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "agent", "uid": "agent-uid", "controller": true}]);
    sim.insert(json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent", "namespace": "kube-system"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}}, "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {"containers": [{"name": "a"}]}}}}))
        .unwrap();
    sim.insert(ds).unwrap();
    let mut scratch = common::running_pod("default", "scratch", "sim-node-0", json!({"app": "scratch"}));
    scratch["spec"]["volumes"] = json!([{"name": "tmp", "emptyDir": {}}]);
    // kubectl drain refuses controller-less pods without --force.
    let rs_uid = sim.get("apps/v1", "ReplicaSet", "default", "sim-app").unwrap()["metadata"]["uid"].clone();
    scratch["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "sim-app", "uid": rs_uid, "controller": true}]);
    sim.insert(scratch).unwrap();
    // All 4 sim-app pods are required: the drain is blocked.
    sim.insert(pdb(
        "default",
        "sim-app",
        "sim-app",
        json!({"minAvailable": "100%"}),
    ))
    .unwrap();
    for p in sim.list("v1", "Pod", Some("default")) {
        // Graceful termination of 1 s, so pods are visibly Terminating.
        let mut p = p;
        p["spec"]["terminationGracePeriodSeconds"] = json!(1);
        sim.put(p).unwrap();
    }
    let mut cmd = ts.kubectl_command(&[
        "drain",
        "sim-node-0",
        "--ignore-daemonsets",
        "--delete-emptydir-data",
        "--timeout=90s",
    ]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn kubectl drain");
    let drain = tokio::task::spawn_blocking(move || child.wait_with_output().expect("kubectl drain"));
    // Wait for a refused eviction, visible in the budget's status.
    let mut blocked = false;
    for _ in 0..100 {
        let b = sim
            .get("policy/v1", "PodDisruptionBudget", "default", "sim-app")
            .unwrap();
        if b.pointer("/status/disruptionsAllowed") == Some(&json!(0)) {
            blocked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(blocked, "kubectl never hit the budget");
    assert!(!drain.is_finished());
    let node = sim.get("v1", "Node", "", "sim-node-0").unwrap();
    assert_eq!(node["spec"]["unschedulable"], true, "drain cordons first");
    let mut b = sim
        .get("policy/v1", "PodDisruptionBudget", "default", "sim-app")
        .unwrap();
    b["spec"]["minAvailable"] = json!(1);
    sim.put(b).unwrap();
    let out = tokio::time::timeout(Duration::from_secs(60), drain)
        .await
        .expect("drain finishes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("drained"), "{stdout}");
    assert!(
        stderr.contains("disruption budget"),
        "kubectl reported the PDB refusal: {stderr}"
    );
    assert_eq!(pods_on(sim, "sim-node-0"), ["agent-sim-node-0"]);
}

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
  labels: {app: web}
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: nginx:1.27
        resources:
          requests: {cpu: 100m, memory: 64Mi}
"#;

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: nodepools.spot.example.com
spec:
  group: spot.example.com
  scope: Cluster
  names: {plural: nodepools, singular: nodepool, kind: NodePool, shortNames: [np]}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
"#;

const NODEPOOL: &str = r#"
apiVersion: spot.example.com/v1
kind: NodePool
metadata:
  name: default
spec:
  limits: {cpu: "1000"}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_deployment_and_crd() {
    let ts = TestSim::start(SimConfig {
        kubelet: true,
        scheduler: true,
        replicaset_controller: true,
        ..SimConfig::default()
    })
    .await;
    ts.sim().seed(2, 0).unwrap();
    let dir = ts.dir.path();
    std::fs::write(dir.join("deploy.yaml"), DEPLOYMENT).unwrap();
    std::fs::write(dir.join("crd.yaml"), CRD).unwrap();
    std::fs::write(dir.join("np.yaml"), NODEPOOL).unwrap();
    let f = |n: &str| dir.join(n).display().to_string();

    let out = ts.kubectl_ok(&["apply", "-f", &f("deploy.yaml")]).await;
    assert!(out.contains("deployment.apps/web created"), "{out}");
    let out = ts.kubectl_ok(&["apply", "-f", &f("deploy.yaml")]).await;
    assert!(out.contains("deployment.apps/web unchanged"), "{out}");
    let changed = DEPLOYMENT.replace("replicas: 3", "replicas: 4");
    std::fs::write(dir.join("deploy.yaml"), changed).unwrap();
    let out = ts.kubectl_ok(&["apply", "-f", &f("deploy.yaml")]).await;
    assert!(out.contains("deployment.apps/web configured"), "{out}");
    let d = ts.sim().get("apps/v1", "Deployment", "default", "web").unwrap();
    assert_eq!(d["spec"]["replicas"], 4);
    assert!(d["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"].is_string());
    // The simulated controllers run the pods.
    let mut running = 0;
    for _ in 0..100 {
        running = ts
            .sim()
            .list("v1", "Pod", Some("default"))
            .iter()
            .filter(|p| p["metadata"]["labels"]["app"] == "web" && p["status"]["phase"] == "Running")
            .count();
        if running == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(running, 4);
    let out = ts
        .kubectl_ok(&["get", "deploy", "web", "-o", "jsonpath={.status.readyReplicas}"])
        .await;
    assert_eq!(out, "4");
    let out = ts
        .kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=20s"])
        .await;
    assert!(out.contains("successfully rolled out"), "{out}");
    let out = ts.kubectl_ok(&["scale", "deployment/web", "--replicas=2"]).await;
    assert!(out.contains("scaled"), "{out}");
    let mut left = 0;
    for _ in 0..100 {
        left = ts
            .sim()
            .list("v1", "Pod", Some("default"))
            .iter()
            .filter(|p| p["metadata"]["labels"]["app"] == "web")
            .count();
        if left == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(left, 2, "the ReplicaSet controller scaled down");

    let out = ts.kubectl_ok(&["apply", "-f", &f("crd.yaml")]).await;
    assert!(
        out.contains("customresourcedefinition.apiextensions.k8s.io/nodepools.spot.example.com created"),
        "{out}"
    );
    ts.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "crd/nodepools.spot.example.com",
        "--timeout=10s",
    ])
    .await;
    let out = ts.kubectl_ok(&["apply", "-f", &f("np.yaml")]).await;
    assert!(out.contains("nodepool.spot.example.com/default created"), "{out}");
    let out = ts.kubectl_ok(&["get", "np", "-o", "name"]).await;
    assert_eq!(out.trim(), "nodepool.spot.example.com/default");
    let out = ts
        .kubectl_ok(&["api-resources", "--api-group=spot.example.com", "-o", "name"])
        .await;
    assert_eq!(out.trim(), "nodepools.spot.example.com");

    // Server-side apply.
    let ssa = NODEPOOL.replace("\"1000\"", "\"2000\"");
    std::fs::write(dir.join("np.yaml"), ssa).unwrap();
    let out = ts
        .kubectl_ok(&["apply", "--server-side", "--force-conflicts", "-f", &f("np.yaml")])
        .await;
    assert!(out.contains("serverside-applied"), "{out}");
    let np = ts
        .sim()
        .get("spot.example.com/v1", "NodePool", "", "default")
        .unwrap();
    assert_eq!(np["spec"]["limits"]["cpu"], "2000");
    let out = ts
        .kubectl_ok(&["apply", "--server-side", "-f", &f("deploy.yaml")])
        .await;
    assert!(out.contains("serverside-applied"), "{out}");
    let out = ts.kubectl_ok(&["delete", "-f", &f("np.yaml")]).await;
    assert!(out.contains("deleted"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_pods_watch_sees_evictions() {
    let ts = TestSim::start(SimConfig::default()).await;
    ts.sim().seed(1, 2).unwrap();
    let mut cmd = ts.kubectl_command(&["get", "pods", "-w", "--output-watch-events"]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = cmd.spawn().expect("spawn kubectl get -w");
    let stdout = child.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let reader = tokio::task::spawn_blocking(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The header and the initial listing.
    let mut lines = Vec::new();
    while lines.len() < 3 {
        let l = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("initial pods")
            .unwrap();
        lines.push(l);
    }
    let pods: Api<Pod> = Api::namespaced(ts.client(), "default");
    pods.evict("sim-app-0-1", &EvictParams::default()).await.unwrap();
    let mut seen_delete = false;
    while !seen_delete {
        let l = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("eviction event")
            .unwrap();
        seen_delete = l.contains("DELETED") && l.contains("sim-app-0-1");
        lines.push(l);
    }
    child.kill().unwrap();
    let _ = child.wait();
    reader.await.unwrap();
    assert!(
        lines[0].contains("EVENT") && lines[0].contains("NAME"),
        "{lines:?}"
    );
    assert!(
        lines[1].starts_with("ADDED") && lines[2].starts_with("ADDED"),
        "{lines:?}"
    );
    let remaining: Vec<Value> = ts.sim().list("v1", "Pod", Some("default"));
    assert_eq!(remaining.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_seeded_cluster_until_sigterm() {
    common::require_kubectl();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_spot-kube-sim"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--nodes",
            "3",
            "--pods-per-node",
            "2",
            "--kubelet-sim",
            "--write-kubeconfig",
        ])
        .arg(&kubeconfig)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn spot-kube-sim");
    let stdout = child.stdout.take().unwrap();
    let addr = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await
    .unwrap()
    .unwrap();
    let addr: std::net::SocketAddr = addr.trim().parse().expect("the bound address on stdout");
    assert!(
        std::fs::read_to_string(&kubeconfig)
            .unwrap()
            .contains(&format!("server: http://{addr}"))
    );
    let kc = kubeconfig.clone();
    let home = dir.path().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kc)
            .args(["get", "pods", "-A", "-o", "name"])
            .env("HOME", &home)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 6);
    let pid = child.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "exits cleanly on SIGTERM: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_action_events_show_in_kubectl_get_events() {
    let ts = TestSim::start(SimConfig::default()).await;
    ts.sim().seed(1, 0).unwrap();
    let actions = spot_k8s::KubeNodeActions::new(ts.client()).with_events(kube::runtime::events::Reporter {
        controller: "spot-nth".into(),
        instance: None,
    });
    spot_core::node::NodeActions::cordon(&actions, "sim-node-0")
        .await
        .unwrap();
    let out = ts.kubectl_ok(&["get", "events"]).await;
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
        "{out}"
    );
    let row = out
        .lines()
        .find(|l| l.contains("Cordon"))
        .unwrap_or_else(|| panic!("no Cordon event: {out}"));
    assert!(
        row.contains("Normal") && row.contains("node/sim-node-0") && row.contains("cordoned"),
        "{row}"
    );
    let out = ts
        .kubectl_ok(&["get", "events.v1.events.k8s.io", "-o", "name"])
        .await;
    assert_eq!(out.lines().count(), 1, "{out}");
}
