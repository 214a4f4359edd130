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
