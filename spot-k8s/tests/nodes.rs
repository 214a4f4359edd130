//! Node lookups over HTTP against spot-kube-sim: by instance id through `spec.providerID`
//! (across list pages) and by annotation.

mod common;

use common::TestSim;
use spot_k8s::sim::{SimConfig, sim_node};

#[tokio::test]
async fn find_nodes_by_provider_id_and_by_annotation() {
    let ts = TestSim::start(SimConfig::default()).await;
    // More nodes than one list page (500), the one we look for near the end.
    for i in 0..620 {
        let mut node = sim_node(&format!("n{i}"), "us-east-1a", "m5.large", "2", "8Gi");
        node["spec"]["providerID"] = format!("aws:///us-east-1a/i-{i:017x}").into();
        if i % 200 == 7 {
            node["metadata"]["annotations"] =
                serde_json::json!({"nth.spot.dev/reason": "rebalance-recommendation"});
        }
        ts.sim().insert(node).unwrap();
    }
    let client = ts.client();
    let found = spot_k8s::nodes::by_instance_id(&client, &format!("i-{:017x}", 611))
        .await
        .unwrap();
    assert_eq!(found.as_deref(), Some("n611"));
    // A suffix of another id is not a match.
    assert_eq!(
        spot_k8s::nodes::by_instance_id(&client, "i-0123").await.unwrap(),
        None
    );

    let mut marked =
        spot_k8s::nodes::with_annotation(&client, "nth.spot.dev/reason", "rebalance-recommendation")
            .await
            .unwrap();
    marked.sort();
    assert_eq!(marked, ["n207", "n407", "n607", "n7"]);
    assert!(
        spot_k8s::nodes::with_annotation(&client, "nth.spot.dev/reason", "other")
            .await
            .unwrap()
            .is_empty()
    );
}
