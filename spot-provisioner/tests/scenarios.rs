//! Provisioning scenarios end to end: spot-kube-sim (API, scheduler, kubelet, ReplicaSet
//! controller) over HTTP, the simulated cloud registering Nodes, and the real provisioner
//! wired through kube-rs.

mod common;

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Node;
use serde_json::json;
use spot_core::instance_type::CapacityType;

use common::{apply, claims, default_pool, deployment, env, list, scale, sim_cloud, wait_all_bound};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_scaled_from_zero_to_500_gets_nodes_and_every_pod_is_bound() {
    let env = env(default_pool(), sim_cloud(7)).await;
    apply::<Deployment>(&env.client, deployment("web", 0, "500m", "1Gi", json!({}))).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        claims(&env.client).await.is_empty(),
        "nothing to provision at 0 replicas"
    );
    scale(&env.client, "web", 500).await;
    let took = wait_all_bound(&env.client, 500, Duration::from_secs(90)).await;
    // The lifecycle catches up with the scheduler: every claim ends Launched, Registered
    // and Initialized.
    let claims = common::wait_claims_initialized(&env.client, Duration::from_secs(60)).await;
    let nodes: Vec<Node> = list(&env.client).await;
    assert_eq!(nodes.len(), claims.len(), "one node per NodeClaim");
    // 500 × (0.5 CPU, 1 GiB) = 250 vCPU requested; allocatable overhead and the packing
    // keep the fleet within a few percent of that.
    let vcpus: u32 = env
        .cloud
        .instances()
        .iter()
        .filter(|i| i.instance.state == "running" || i.instance.state == "pending")
        .map(|i| {
            spot_core::Catalog::embedded()
                .get(&i.instance.instance_type)
                .map(|t| t.vcpus)
                .unwrap_or(0)
        })
        .sum();
    let cost = env.cloud.running_cost_per_hour();
    println!(
        "500 pods bound in {took:?} on {} nodes, {vcpus} vCPU, ${cost:.3}/h",
        nodes.len()
    );
    assert!((250..=300).contains(&vcpus), "{vcpus} vCPU for 250 requested");
    assert!(cost > 0.0);
    let metrics = env.metrics();
    assert!(
        metrics.contains("spot_provisioner_nodeclaims_launched_total"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spot_capacity_errors_fall_back_to_on_demand_within_one_loop() {
    let cloud = sim_cloud(11);
    // Every spot pool of every type this pool may use is out of capacity.
    for t in spot_core::Catalog::embedded().types() {
        for z in ["us-east-1a", "us-east-1b", "us-east-1c"] {
            cloud.inject(
                &t.name,
                z,
                CapacityType::Spot,
                "InsufficientInstanceCapacity",
                1000,
            );
        }
    }
    let env = env(default_pool(), cloud).await;
    apply::<Deployment>(&env.client, deployment("api", 3, "1", "2Gi", json!({}))).await;
    wait_all_bound(&env.client, 3, Duration::from_secs(60)).await;
    // The launch records its outcome on the claim right after the instance exists; under
    // load that can trail the pods being bound by a moment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let claims = loop {
        let claims = claims(&env.client).await;
        let labelled = claims.iter().all(|c| {
            c.metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key("karpenter.sh/capacity-type"))
        });
        if labelled || tokio::time::Instant::now() > deadline {
            break claims;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        claims.len(),
        1,
        "one NodeClaim: the fallback happened in the same loop"
    );
    let labels = claims[0].metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("karpenter.sh/capacity-type").map(String::as_str),
        Some("on-demand")
    );
    let metrics = env.metrics();
    assert!(
        metrics.contains(
            r#"spot_provisioner_nodeclaims_launched_total{nodepool="default",reason="on-demand"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        !metrics.contains("spot_provisioner_nodeclaims_failed_total{"),
        "{metrics}"
    );
}
