//! Embedding the provisioner: a cluster (spot-kube-sim, in process), a cloud (spot-sim's
//! simulated EC2, registering Nodes), NodePools, and `Provisioner::builder`.
//!
//! ```text
//! cargo run -p spot-examples --example provisioner -- 120
//! ```
//!
//! With a real cluster and EC2, replace the simulator's client with `kube::Client::try_default()`
//! and the cloud with `spot_aws::fleet::Ec2Fleet` (that is what the `spot-provisioner run`
//! binary does).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use spot_k8s::sim::{Sim, SimConfig};
use spot_provisioner::api::{NodePool, SpotNodeClass};
use spot_provisioner::batcher::BatchWindow;
use spot_provisioner::{InstanceCatalog, Provisioner, Settings};
use spot_sim::cloud::SimClock;
use spot_sim::register::RegistrarConfig;
use spot_sim::{KubeRegistrar, MarketConfig, SimCloud, SimCloudConfig};

#[tokio::main]
async fn main() -> Result<()> {
    let replicas: i32 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(120);

    // 1. A cluster: the API simulator with its scheduler, kubelet and ReplicaSet controller.
    let sim = Sim::new(SimConfig {
        kubelet: true,
        scheduler: true,
        replicaset_controller: true,
        ..SimConfig::default()
    })
    .start("127.0.0.1:0".parse()?)
    .await?;
    let client = kube::Client::try_from(kube::Config::new(sim.url().parse()?))?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (_, crd) in spot_provisioner::api::crds() {
        crds.create(&PostParams::default(), &crd).await?;
    }

    // 2. What may be launched: a node class and a NodePool (Karpenter's v1 API).
    let class: SpotNodeClass = serde_json::from_value(json!({
        "apiVersion": "spot.dev/v1", "kind": "SpotNodeClass", "metadata": {"name": "default"},
        "spec": {"zones": [{"zone": "us-east-1a"}, {"zone": "us-east-1b"}, {"zone": "us-east-1c"}]}}))?;
    Api::<SpotNodeClass>::all(client.clone())
        .create(&PostParams::default(), &class)
        .await?;
    let pool: NodePool = serde_json::from_value(json!({
        "apiVersion": "karpenter.sh/v1", "kind": "NodePool", "metadata": {"name": "default"},
        "spec": {"template": {"spec": {
            "nodeClassRef": {"group": "spot.dev", "kind": "SpotNodeClass", "name": "default"},
            "requirements": [
                {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot", "on-demand"]},
                {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]},
                {"key": "karpenter.k8s.aws/instance-generation", "operator": "Gt", "values": ["5"]}]}}}}))?;
    Api::<NodePool>::all(client.clone())
        .create(&PostParams::default(), &pool)
        .await?;

    // 3. A cloud: the simulated spot market; launched instances register as Nodes.
    let cloud = Arc::new(SimCloud::offline(
        SimCloudConfig {
            api_latency: Duration::from_millis(50),
            clock: SimClock::Manual,
            ..SimCloudConfig::default()
        },
        MarketConfig {
            seed: 42,
            ..MarketConfig::default()
        },
    )?);
    cloud.add_observer(Arc::new(KubeRegistrar::new(
        client.clone(),
        RegistrarConfig {
            registration_delay: Duration::from_millis(300),
            ready_delay: Duration::from_millis(200),
            ..RegistrarConfig::default()
        },
    )?));

    // 4. The provisioner: the client, the cloud, and what the cloud sells at which price.
    let catalog = Arc::new(InstanceCatalog::with_prices("us-east-1", cloud.clone())?);
    let provisioner = Arc::new(
        Provisioner::builder(client.clone(), cloud.clone(), catalog)
            .settings(Settings {
                batch: BatchWindow {
                    idle: Duration::from_millis(300),
                    max: Duration::from_secs(3),
                },
                ..Settings::default()
            })
            .build()?,
    );
    let run = tokio::spawn(provisioner.clone().run(std::future::pending()));

    // 5. A workload, and wait until every pod is bound.
    let deploy = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "default"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [
                    {"name": "web", "image": "nginx", "resources": {"requests": {"cpu": "750m", "memory": "1536Mi"}}}]}}}}))?;
    Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &deploy)
        .await?;
    let pods: Api<Pod> = Api::all(client.clone());
    let start = tokio::time::Instant::now();
    loop {
        let list = pods.list(&ListParams::default()).await?.items;
        let bound = list
            .iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
            .count();
        println!(
            "{:>5.1}s  {bound}/{replicas} pods bound",
            start.elapsed().as_secs_f64()
        );
        if bound == replicas as usize {
            break;
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(120),
            "pods still pending after 2 minutes"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let instances = cloud.instances();
    println!(
        "{} nodes, ${:.3}/hour; NodeClaims created by the provisioner:",
        instances.len(),
        cloud.running_cost_per_hour()
    );
    for i in &instances {
        println!(
            "  {:<14} {:<10} {:<11} ${:.4}/h",
            i.instance.instance_type,
            i.instance.capacity_type.as_str(),
            i.instance.zone,
            i.price
        );
    }
    run.abort();
    provisioner
        .metrics()
        .encode()
        .lines()
        .filter(|l| l.contains("nodeclaims_launched_total{"))
        .for_each(|l| println!("{l}"));
    Ok(())
}
