//! Shared test helpers: a simulator on loopback, a kube-rs client for it, kubectl.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

use kube::Client;
use serde_json::{Value, json};
use spot_k8s::sim::{Kubectl, RunningSim, Sim, SimConfig};
use tempfile::TempDir;

/// A running simulator with a kubeconfig in a temporary directory.
pub struct TestSim {
    /// The server.
    pub running: RunningSim,
    /// Holds the kubeconfig and kubectl's cache.
    pub dir: TempDir,
    /// The kubeconfig file.
    pub kubeconfig: PathBuf,
    /// kubectl for this simulator.
    pub kubectl: Kubectl,
}

impl TestSim {
    /// Starts a simulator on 127.0.0.1:0.
    pub async fn start(config: SimConfig) -> TestSim {
        let running = Sim::new(config)
            .start("127.0.0.1:0".parse().unwrap())
            .await
            .expect("start the simulator");
        let dir = tempfile::tempdir().expect("tempdir");
        let kubectl = Kubectl::new(&running, dir.path()).expect("write kubeconfig");
        TestSim {
            running,
            kubeconfig: kubectl.kubeconfig().to_path_buf(),
            dir,
            kubectl,
        }
    }

    /// The store.
    pub fn sim(&self) -> &Sim {
        self.running.sim()
    }

    /// A kube-rs client without kube's own 429 retries (drains do their own backoff).
    pub fn client(&self) -> Client {
        let mut config = kube::Config::new(self.running.url().parse().unwrap());
        config.default_retry = false;
        Client::try_from(config).expect("client")
    }

    /// A client built from the written kubeconfig, as a user would.
    pub async fn client_from_kubeconfig(&self) -> Client {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("read kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .expect("config from kubeconfig");
        Client::try_from(config).expect("client")
    }

    /// The kubectl command line for this simulator (own cache dir and HOME).
    pub fn kubectl_command(&self, args: &[&str]) -> Command {
        require_kubectl();
        self.kubectl.command(args)
    }

    /// Runs kubectl to completion off the async runtime.
    pub async fn kubectl(&self, args: &[&str]) -> Output {
        require_kubectl();
        self.kubectl.run(args).await.expect("run kubectl")
    }

    /// Runs kubectl and fails the test unless it succeeds; returns stdout.
    pub async fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args).await;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "kubectl {args:?} failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
            out.status
        );
        stdout
    }
}

/// Fails (never skips) when kubectl is not installed.
pub fn require_kubectl() {
    if let Err(e) = spot_k8s::sim::require_kubectl() {
        panic!("these tests need `kubectl` on PATH: {e}");
    }
}

/// A Ready node.
pub fn node(name: &str) -> Value {
    spot_k8s::sim::sim_node(name, "us-east-1a", "m5.xlarge", "4", "16Gi")
}

/// A Running, Ready pod on `node` with labels.
pub fn running_pod(ns: &str, name: &str, node: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 0, "containers": [{"name": "c", "image": "pause"}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    })
}

/// A PodDisruptionBudget.
pub fn pdb(ns: &str, name: &str, app: &str, spec: Value) -> Value {
    let mut spec = spec;
    spec["selector"] = json!({"matchLabels": {"app": app}});
    json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

/// Names of the pods on a node.
pub fn pods_on(sim: &Sim, node: &str) -> Vec<String> {
    let mut names: Vec<String> = sim
        .list("v1", "Pod", None)
        .into_iter()
        .filter(|p| p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node))
        .map(|p| p["metadata"]["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    names.sort();
    names
}
