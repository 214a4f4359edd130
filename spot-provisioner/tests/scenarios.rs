//! Provisioning scenarios end to end: spot-kube-sim (API, scheduler, kubelet, ReplicaSet
//! controller) over HTTP, the simulated cloud registering Nodes, and the real provisioner
//! wired through kube-rs.

mod common;

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::events::v1::Event as KubeEvent;
use kube::api::DeleteParams;
use kube::{Api, ResourceExt};
use serde_json::json;
use spot_core::instance_type::CapacityType;
use spot_k8s::sim::kubectl::{Kubectl, require_kubectl};
use spot_provisioner::api::NodeClaim;

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
    // The launch is counted once the call returns, which can be just after the claim's
    // labels are written: poll.
    let launched = r#"spot_provisioner_nodeclaims_launched_total{nodepool="default",reason="on-demand"} 1"#;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        let metrics = env.metrics();
        if metrics.contains(launched) || tokio::time::Instant::now() > deadline {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(metrics.contains(launched), "{metrics}");
    assert!(
        !metrics.contains("spot_provisioner_nodeclaims_failed_total{"),
        "{metrics}"
    );
}

/// `kubectl get events -A -o json`: (reason, involved kind, involved name, message) of each.
async fn kubectl_events(kubectl: &Kubectl) -> Vec<(String, String, String, String)> {
    let out = kubectl
        .run_ok(&["get", "events", "-A", "-o", "json"])
        .await
        .expect("kubectl get events");
    let list: serde_json::Value = serde_json::from_str(&out).expect("kubectl JSON");
    let text = |v: &serde_json::Value, p: &str| {
        v.pointer(p)
            .and_then(|s| s.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    list["items"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|e| {
            (
                text(e, "/reason"),
                text(e, "/involvedObject/kind"),
                text(e, "/involvedObject/name"),
                text(e, "/message"),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_on_pods_and_nodeclaims_are_listed_by_kubectl() {
    require_kubectl().expect("these tests need kubectl on PATH");
    let env = env(default_pool(), sim_cloud(13)).await;
    let dir = tempfile::tempdir().unwrap();
    let kubectl = Kubectl::new(&env.running, dir.path()).unwrap();
    apply::<Deployment>(&env.client, deployment("web", 2, "500m", "512Mi", json!({}))).await;
    wait_all_bound(&env.client, 2, Duration::from_secs(90)).await;
    let first = common::wait_claims_initialized(&env.client, Duration::from_secs(60)).await;
    let claim = first[0].clone();
    let name = claim.name_any();
    Api::<NodeClaim>::all(env.client.clone())
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    let pods: Vec<String> = common::pods(&env.client)
        .await
        .iter()
        .map(|p| p.name_any())
        .collect();
    let has =
        |events: &[(String, String, String, String)], reason: &str, kind: &str, name: &str, text: &str| {
            events
                .iter()
                .any(|(r, k, n, m)| r == reason && k == kind && n == name && m.contains(text))
        };
    let start = tokio::time::Instant::now();
    loop {
        let events = kubectl_events(&kubectl).await;
        let claim_events = [
            "Launched",
            "Registered",
            "Initialized",
            "Terminating",
            "Terminated",
        ]
        .iter()
        .all(|r| has(&events, r, "NodeClaim", &name, ""));
        let nominated = pods.iter().all(|p| {
            has(
                &events,
                "Nominated",
                "Pod",
                p,
                "Pod should schedule on: nodeclaim/",
            )
        });
        if claim_events && nominated {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "events of {name} and pods {pods:?} missing: {events:#?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let table = kubectl.run_ok(&["get", "events", "-A"]).await.unwrap();
    for word in ["Nominated", "Launched", "Initialized", "Terminated", &name] {
        assert!(table.contains(word), "{word} missing from:\n{table}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_failures_are_warning_events_on_the_nodeclaim_and_the_pod() {
    let cloud = sim_cloud(17);
    // Nothing the pool may use has capacity, spot or on-demand, in any zone: each launch
    // fails and marks what it tried, until no type that fits has an offering left.
    for t in spot_core::Catalog::embedded().types() {
        for z in common::ZONES {
            for ct in [CapacityType::Spot, CapacityType::OnDemand] {
                cloud.inject(&t.name, z, ct, "InsufficientInstanceCapacity", 1000);
            }
        }
    }
    let env = env(default_pool(), cloud).await;
    apply::<Deployment>(&env.client, deployment("api", 1, "1", "2Gi", json!({}))).await;
    let client = env.client.clone();
    common::wait_for(
        "InsufficientCapacityError and FailedScheduling Events",
        Duration::from_secs(90),
        || {
            let client = client.clone();
            async move {
                let events: Vec<KubeEvent> = list(&client).await;
                let warning = |reason: &str, kind: &str, text: &str| {
                    events.iter().any(|e| {
                        e.type_.as_deref() == Some("Warning")
                            && e.reason.as_deref() == Some(reason)
                            && e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some(kind)
                            && e.note.as_deref().is_some_and(|n| n.contains(text))
                    })
                };
                warning(
                    "InsufficientCapacityError",
                    "NodeClaim",
                    "InsufficientInstanceCapacity",
                ) && warning(
                    "FailedScheduling",
                    "Pod",
                    "Failed to schedule pod, incompatible with nodepool default",
                )
            }
        },
    )
    .await;
    assert!(
        common::pods(&env.client)
            .await
            .iter()
            .all(|p| common::node_of(p).is_none()),
        "nothing can run"
    );
}
