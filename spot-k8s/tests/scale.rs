//! Scale smoke test: 5,000 nodes and 100,000 pods stored, then listed over HTTP (paginated,
//! all namespaces and per node). No timing assertions.

mod common;

use common::TestSim;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::ListParams;
use spot_k8s::sim::SimConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_nodes_and_a_hundred_thousand_pods() {
    let ts = TestSim::start(SimConfig {
        history: 1_000,
        ..SimConfig::default()
    })
    .await;
    ts.sim().seed(5_000, 20).unwrap();
    assert_eq!(ts.sim().count("v1", "Node"), 5_000);
    assert_eq!(ts.sim().count("v1", "Pod"), 100_000);
    let client = ts.client();

    let nodes: Api<Node> = Api::all(client.clone());
    let all_nodes = nodes.list(&ListParams::default()).await.unwrap();
    assert_eq!(all_nodes.items.len(), 5_000);

    let pods: Api<Pod> = Api::all(client.clone());
    let mut lp = ListParams::default().limit(5_000);
    let mut total = 0;
    let mut pages = 0;
    loop {
        let page = pods.list(&lp).await.unwrap();
        total += page.items.len();
        pages += 1;
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => lp = lp.continue_token(&c),
            None => break,
        }
    }
    assert_eq!(total, 100_000);
    assert_eq!(pages, 20);

    let on_node = pods
        .list(&ListParams::default().fields("spec.nodeName=sim-node-4321"))
        .await
        .unwrap();
    assert_eq!(on_node.items.len(), 20);
    let by_label = pods
        .list(&ListParams::default().labels("app=sim-app").limit(10))
        .await
        .unwrap();
    assert_eq!(by_label.items.len(), 10);
}

/// 1,000 concurrent merge patches, each adding its own label to the same node, and 1,000 more
/// spread over 100 nodes: every write lands (none lost to a race in the store).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_patches_lose_nothing() {
    use kube::api::{Patch, PatchParams};
    use serde_json::json;

    let ts = TestSim::start(SimConfig::default()).await;
    ts.sim().seed(100, 0).unwrap();
    let nodes: Api<Node> = Api::all(ts.client());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..1_000 {
        let api = nodes.clone();
        tasks.spawn(async move {
            let same = json!({"metadata": {"labels": {format!("patch.example.com/p{i}"): "x"}}});
            api.patch("sim-node-0", &PatchParams::default(), &Patch::Merge(&same))
                .await?;
            let spread = json!({"metadata": {"annotations": {format!("patch.example.com/a{i}"): "y"}}});
            api.patch(
                &format!("sim-node-{}", i % 100),
                &PatchParams::default(),
                &Patch::Merge(&spread),
            )
            .await
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap().unwrap();
    }
    let node = nodes.get("sim-node-0").await.unwrap();
    let labels = node.metadata.labels.unwrap_or_default();
    assert_eq!(
        labels
            .keys()
            .filter(|k| k.starts_with("patch.example.com/"))
            .count(),
        1_000
    );
    let annotations: usize = nodes
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|n| {
            n.metadata.annotations.as_ref().map_or(0, |a| {
                a.keys().filter(|k| k.starts_with("patch.example.com/")).count()
            })
        })
        .sum();
    assert_eq!(annotations, 1_000);
}
