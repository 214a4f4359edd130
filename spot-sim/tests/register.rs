//! SimCloud + KubeRegistrar against spot-kube-sim over HTTP: launched instances become Ready
//! Nodes that kube-rs and the real `kubectl` see; terminated ones disappear. The kubectl part
//! fails (never skips) without kubectl on PATH.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::ListParams;
use spot_core::allocatable::AllocatableModel;
use spot_core::catalog::Catalog;
use spot_core::cloud::{AllocationStrategy, CloudProvider, FleetRequest, LaunchCandidate};
use spot_core::instance_type::CapacityType;
use spot_core::node::{Taint, TaintEffect};
use spot_k8s::sim::{RunningSim, Sim, SimConfig};
use spot_sim::cloud::{SimClock, TAG_NODECLAIM, TAG_NODEPOOL};
use spot_sim::register::RegistrarConfig;
use spot_sim::{KubeRegistrar, MarketConfig, NodeTemplate, SimCloud, SimCloudConfig};

struct Cluster {
    running: RunningSim,
    dir: tempfile::TempDir,
    client: kube::Client,
}

async fn cluster() -> Cluster {
    let running = Sim::new(SimConfig::default())
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .expect("start spot-kube-sim");
    let dir = tempfile::tempdir().unwrap();
    running.write_kubeconfig(&dir.path().join("kubeconfig")).unwrap();
    let mut config = kube::Config::new(running.url().parse().unwrap());
    config.default_retry = false;
    let client = kube::Client::try_from(config).unwrap();
    Cluster { running, dir, client }
}

impl Cluster {
    /// Runs the real kubectl against the simulator.
    async fn kubectl(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(self.dir.path().join("kubeconfig"))
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .args(args)
            .env("HOME", self.dir.path())
            .env_remove("KUBECONFIG");
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("this test needs kubectl on PATH: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }
}

fn cloud() -> SimCloud {
    SimCloud::offline(
        SimCloudConfig {
            api_latency: Duration::from_millis(20),
            clock: SimClock::Manual,
            ..SimCloudConfig::default()
        },
        MarketConfig {
            seed: 3,
            band_monthly_rates: [0.0; 5],
            ..MarketConfig::default()
        },
    )
    .unwrap()
}

fn registrar(client: &kube::Client) -> KubeRegistrar {
    KubeRegistrar::new(
        client.clone(),
        RegistrarConfig {
            registration_delay: Duration::from_millis(50),
            ready_delay: Duration::from_millis(100),
            ..RegistrarConfig::default()
        },
    )
    .unwrap()
}

fn request() -> FleetRequest {
    let template = NodeTemplate {
        labels: BTreeMap::from([("team".to_owned(), "checkout".to_owned())]),
        taints: vec![],
        startup_taints: vec![Taint::new(
            "node.cilium.io/agent-not-ready",
            "true",
            TaintEffect::NoExecute,
        )],
    };
    let mut tags = template.to_tags();
    tags.insert(TAG_NODEPOOL.to_owned(), "default".to_owned());
    tags.insert(TAG_NODECLAIM.to_owned(), "default-x7k2p".to_owned());
    FleetRequest {
        capacity_type: CapacityType::Spot,
        candidates: [
            ("m5.large", "us-east-1a"),
            ("m6g.xlarge", "us-east-1b"),
            ("c5.2xlarge", "us-east-1c"),
        ]
        .iter()
        .map(|(t, z)| LaunchCandidate {
            instance_type: (*t).to_owned(),
            zone: (*z).to_owned(),
            price: 0.1,
        })
        .collect(),
        count: 3,
        strategy: AllocationStrategy::Diversified,
        tags,
    }
}

fn ready(node: &Node) -> Option<String> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launched_instances_become_ready_nodes_and_terminated_ones_go_away() {
    let c = cluster().await;
    let cloud = cloud();
    let reg = registrar(&c.client);
    cloud.add_observer(Arc::new(reg.clone()));
    let nodes: Api<Node> = Api::all(c.client.clone());

    let launched = cloud.launch(&request()).await.unwrap();
    assert_eq!(launched.instances.len(), 3, "{:?}", launched.errors);
    reg.wait_idle().await;
    assert!(reg.failures().is_empty(), "{:?}", reg.failures());

    let list = nodes.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 3);
    let model = AllocatableModel::default();
    for instance in &launched.instances {
        let node = nodes.get(&instance.private_dns_name).await.unwrap();
        assert_eq!(ready(&node).as_deref(), Some("True"), "{}", instance.id);
        let t = Catalog::embedded().get(&instance.instance_type).unwrap();
        let labels = node.metadata.labels.as_ref().unwrap();
        let expect = [
            ("kubernetes.io/hostname", instance.private_dns_name.as_str()),
            (
                "node.kubernetes.io/instance-type",
                instance.instance_type.as_str(),
            ),
            ("topology.kubernetes.io/zone", instance.zone.as_str()),
            ("topology.kubernetes.io/region", "us-east-1"),
            ("karpenter.sh/capacity-type", "spot"),
            ("karpenter.sh/nodepool", "default"),
            ("team", "checkout"),
            ("karpenter.k8s.aws/instance-family", t.family.as_str()),
        ];
        for (k, v) in expect {
            assert_eq!(labels.get(k).map(String::as_str), Some(v), "{k}");
        }
        let arch = if instance.instance_type == "m6g.xlarge" {
            "arm64"
        } else {
            "amd64"
        };
        assert_eq!(labels["kubernetes.io/arch"], arch);
        let spec = node.spec.as_ref().unwrap();
        assert_eq!(spec.provider_id.as_deref(), Some(instance.provider_id().as_str()));
        let taints = spec.taints.as_ref().unwrap();
        assert_eq!(
            (taints.len(), taints[0].key.as_str(), taints[0].effect.as_str()),
            (1, "node.cilium.io/agent-not-ready", "NoExecute")
        );
        let status = node.status.as_ref().unwrap();
        let allocatable: BTreeMap<String, String> = status
            .allocatable
            .as_ref()
            .unwrap()
            .iter()
            .map(|(k, q)| (k.clone(), q.0.clone()))
            .collect();
        assert_eq!(allocatable, model.allocatable_resources(t).to_map());
        assert_eq!(status.capacity.as_ref().unwrap()["cpu"].0, t.vcpus.to_string());
    }

    // The real kubectl sees three Ready nodes.
    let out = c.kubectl(&["get", "nodes", "-o", "wide"]).await;
    let rows: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "{out}");
    for i in &launched.instances {
        let row = rows
            .iter()
            .find(|r| r.starts_with(&i.private_dns_name))
            .unwrap_or_else(|| panic!("no row for {}:\n{out}", i.private_dns_name));
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[1], "Ready", "{row}");
    }
    let out = c
        .kubectl(&[
            "get",
            "nodes",
            "-l",
            "karpenter.sh/nodepool=default,kubernetes.io/arch=arm64",
            "-o",
            "name",
        ])
        .await;
    let arm = launched
        .instances
        .iter()
        .find(|i| i.instance_type == "m6g.xlarge")
        .unwrap();
    assert_eq!(out.trim(), format!("node/{}", arm.private_dns_name));

    // Terminating an instance deletes its Node.
    cloud.terminate(std::slice::from_ref(&arm.id)).await.unwrap();
    assert_eq!(nodes.list(&ListParams::default()).await.unwrap().items.len(), 2);
    assert!(nodes.get_opt(&arm.private_dns_name).await.unwrap().is_none());

    // A registrar that did not register the instance finds its Node by provider id.
    let other = launched.instances[0].clone();
    let fresh = registrar(&c.client);
    fresh.deregister(&other.id).await.unwrap();
    assert!(nodes.get_opt(&other.private_dns_name).await.unwrap().is_none());
    // Unknown instances and missing Nodes are not errors.
    fresh.deregister("i-0000000000000dead").await.unwrap();
    reg.deregister(&other.id).await.unwrap();
    c.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_instance_never_registers_and_not_ready_comes_first() {
    let c = cluster().await;
    let cloud = cloud();
    let reg = KubeRegistrar::new(
        c.client.clone(),
        RegistrarConfig {
            registration_delay: Duration::from_millis(300),
            ready_delay: Duration::from_secs(600),
            ..RegistrarConfig::default()
        },
    )
    .unwrap();
    cloud.add_observer(Arc::new(reg.clone()));
    let nodes: Api<Node> = Api::all(c.client.clone());
    let mut req = request();
    req.count = 2;
    let launched = cloud.launch(&req).await.unwrap();
    assert_eq!(launched.instances.len(), 2);
    // Terminated before the kubelet registered: no Node ever.
    cloud
        .terminate(&[launched.instances[0].id.clone()])
        .await
        .unwrap();
    // The other registers NotReady, and stays so until its (long) ready delay.
    let name = &launched.instances[1].private_dns_name;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let node = loop {
        if let Some(node) = nodes.get_opt(name).await.unwrap() {
            break node;
        }
        assert!(tokio::time::Instant::now() < deadline, "{name} never registered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ready(&node).as_deref(), Some("False"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let names: Vec<String> = nodes
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    assert_eq!(names, std::slice::from_ref(name));
    // Ready can also be set directly.
    reg.set_ready(name).await.unwrap();
    assert_eq!(ready(&nodes.get(name).await.unwrap()).as_deref(), Some("True"));
    cloud
        .terminate(&[launched.instances[1].id.clone()])
        .await
        .unwrap();
    assert!(nodes.list(&ListParams::default()).await.unwrap().items.is_empty());
    assert!(reg.failures().is_empty(), "{:?}", reg.failures());
    c.running.shutdown().await;
}
