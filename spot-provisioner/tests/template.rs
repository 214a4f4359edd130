//! NodePool + node class + catalog → the scheduler's `NodePoolTemplate`: requirements,
//! labels, taints, zones, offerings and prices, unavailable offerings, limits minus usage.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;
use serde_json::json;
use spot_core::allocatable::AllocatableModel;
use spot_core::catalog::synthetic_type;
use spot_core::clock::FixedClock;
use spot_core::instance_type::CapacityType;
use spot_core::offerings::UnavailableOfferings;
use spot_core::price::PriceSource;
use spot_core::requirements::Requirements;
use spot_core::resources::Resources;
use spot_core::scheduling::{InstanceTypeOption, NODES_LIMIT, NodePoolTemplate};
use spot_core::select::OfferingMap;
use spot_provisioner::api::{NodeClaim, NodePool, SpotNodeClass};
use spot_provisioner::cluster::Snapshot;
use spot_provisioner::template::{InstanceCatalog, template, templates, usage};

/// On-demand: $0.1 per vCPU; spot: 30% of it in zone a, 40% elsewhere; `c5` has no spot
/// price in zone c.
struct Prices;

impl PriceSource for Prices {
    fn on_demand(&self, _region: &str, instance_type: &str) -> Option<f64> {
        vcpus(instance_type).map(|v| 0.1 * v)
    }
    fn spot(&self, zone: &str, instance_type: &str) -> Option<f64> {
        if instance_type.starts_with("c5.") && zone == "us-east-1c" {
            return None;
        }
        let share = if zone == "us-east-1a" { 0.3 } else { 0.4 };
        vcpus(instance_type).map(|v| 0.1 * v * share)
    }
    fn interruption_band(&self, _region: &str, _instance_type: &str) -> Option<u8> {
        None
    }
}

fn vcpus(name: &str) -> Option<f64> {
    Some(match name.split_once('.')?.1 {
        "large" => 2.0,
        "xlarge" => 4.0,
        "2xlarge" => 8.0,
        _ => return None,
    })
}

fn catalog() -> InstanceCatalog {
    let types = [
        ("m5.large", 2, 8192),
        ("m5.xlarge", 4, 16384),
        ("c5.large", 2, 4096),
        ("r5.2xlarge", 8, 65536),
    ];
    let mut zones = OfferingMap::new();
    for z in ["us-east-1a", "us-east-1b", "us-east-1c"] {
        zones.add_zone("us-east-1", z);
        for (t, _, _) in types {
            // r5 only in zone a.
            if t.starts_with("r5") && z != "us-east-1a" {
                continue;
            }
            zones.add("us-east-1", z, t);
        }
    }
    InstanceCatalog {
        region: "us-east-1".into(),
        types: types
            .iter()
            .map(|(n, c, m)| Arc::new(synthetic_type(n, *c, *m).unwrap()))
            .collect(),
        zones: Arc::new(zones),
        prices: Arc::new(Prices),
        model: AllocatableModel::default(),
    }
}

fn unavailable() -> UnavailableOfferings {
    UnavailableOfferings::new(Arc::new(FixedClock(
        time::macros::datetime!(2025-01-01 00:00 UTC),
    )))
}

fn pool(spec: serde_json::Value) -> NodePool {
    let mut full = json!({"template": {"spec": {
        "requirements": [], "nodeClassRef": {"group": "spot.dev", "kind": "SpotNodeClass", "name": "default"}}}});
    merge(&mut full, spec);
    serde_json::from_value(json!({"apiVersion": "karpenter.sh/v1", "kind": "NodePool", "metadata": {"name": "general"}, "spec": full}))
        .unwrap()
}

fn class(zones: &[&str], kubelet: serde_json::Value) -> SpotNodeClass {
    let zones: Vec<_> = zones.iter().map(|z| json!({"zone": z})).collect();
    serde_json::from_value(
        json!({"apiVersion": "spot.dev/v1", "kind": "SpotNodeClass", "metadata": {"name": "default"},
        "spec": {"zones": zones, "kubelet": kubelet}}),
    )
    .unwrap()
}

fn merge(base: &mut serde_json::Value, patch: serde_json::Value) {
    match (base, patch) {
        (serde_json::Value::Object(b), serde_json::Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (b, p) => *b = p,
    }
}

fn option<'a>(t: &'a NodePoolTemplate, name: &str) -> &'a InstanceTypeOption {
    t.instance_types
        .iter()
        .find(|o| o.name() == name)
        .unwrap_or_else(|| panic!("{name} missing"))
}

#[test]
fn requirements_labels_taints_and_weight() {
    let p = pool(json!({
        "template": {"metadata": {"labels": {"team": "a"}}, "spec": {
            "requirements": [{"key": "karpenter.k8s.aws/instance-category", "operator": "In", "values": ["m", "c"]}],
            "taints": [{"key": "dedicated", "value": "a", "effect": "NoSchedule"}],
            "startupTaints": [{"key": "agent-not-ready", "effect": "NoExecute"}]}},
        "weight": 7,
    }));
    let t = template(
        &p,
        Some(&class(&["us-east-1a"], json!(null))),
        &catalog(),
        &unavailable(),
        &Resources::default(),
    )
    .unwrap();
    assert_eq!((t.name.as_str(), t.weight), ("general", 7));
    let pool_req = t.requirements.get("karpenter.sh/nodepool").unwrap();
    assert!(pool_req.has("general") && !pool_req.has("other"));
    assert!(t.requirements.get("team").unwrap().has("a"));
    let cat = t.requirements.get("karpenter.k8s.aws/instance-category").unwrap();
    assert!(cat.has("m") && cat.has("c") && !cat.has("r"));
    assert_eq!(t.labels, BTreeMap::from([("team".to_owned(), "a".to_owned())]));
    assert_eq!(t.taints.len(), 1);
    assert_eq!(t.startup_taints[0].key, "agent-not-ready");
    assert_eq!(t.limits, None);
    // A pod asking for the pool and the label fits its requirements; another pool's does not.
    let wants = |pool: &str| {
        Requirements::from_labels(&BTreeMap::from([
            ("karpenter.sh/nodepool".to_owned(), pool.to_owned()),
            ("team".to_owned(), "a".to_owned()),
        ]))
    };
    assert!(t.requirements.compatible(&wants("general")).is_ok());
    assert!(t.requirements.compatible(&wants("other")).is_err());
}

#[test]
fn offerings_per_zone_and_capacity_type_with_prices() {
    let t = template(
        &pool(json!({})),
        Some(&class(&["us-east-1a", "us-east-1c"], json!(null))),
        &catalog(),
        &unavailable(),
        &Resources::default(),
    )
    .unwrap();
    let m5 = option(&t, "m5.xlarge");
    let mut got: Vec<(String, CapacityType, String)> = m5
        .offerings
        .iter()
        .map(|o| (o.zone.clone(), o.capacity_type, format!("{:.2}", o.price)))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("us-east-1a".to_owned(), CapacityType::Spot, "0.12".to_owned()),
            ("us-east-1a".to_owned(), CapacityType::OnDemand, "0.40".to_owned()),
            ("us-east-1c".to_owned(), CapacityType::Spot, "0.16".to_owned()),
            ("us-east-1c".to_owned(), CapacityType::OnDemand, "0.40".to_owned()),
        ],
        "the class's zones only (not us-east-1b)"
    );
    assert!(m5.offerings.iter().all(|o| o.available));
    // No spot price in c: only on-demand there.
    let c5 = option(&t, "c5.large");
    assert!(
        !c5.offerings
            .iter()
            .any(|o| o.zone == "us-east-1c" && o.capacity_type == CapacityType::Spot)
    );
    assert!(
        c5.offerings
            .iter()
            .any(|o| o.zone == "us-east-1c" && o.capacity_type == CapacityType::OnDemand)
    );
    // r5 is offered in zone a only.
    assert!(
        option(&t, "r5.2xlarge")
            .offerings
            .iter()
            .all(|o| o.zone == "us-east-1a")
    );
    // The type's requirements carry the zones and capacity types of its offerings.
    let zone = m5.requirements.get("topology.kubernetes.io/zone").unwrap();
    assert!(zone.has("us-east-1a") && zone.has("us-east-1c") && !zone.has("us-east-1b"));
    assert_eq!(m5.cheapest_price(&Requirements::new()), Some(0.4 * 0.3));
}

#[test]
fn unavailable_offerings_are_marked() {
    let u = unavailable();
    u.mark("m5.large", "us-east-1a", CapacityType::Spot);
    let t = template(
        &pool(json!({})),
        Some(&class(&["us-east-1a"], json!(null))),
        &catalog(),
        &u,
        &Resources::default(),
    )
    .unwrap();
    let m5 = option(&t, "m5.large");
    for o in &m5.offerings {
        assert_eq!(
            o.available,
            o.capacity_type != CapacityType::Spot,
            "{o:?}: only the ICE'd spot offering is unavailable"
        );
    }
    assert!(option(&t, "m5.xlarge").offerings.iter().all(|o| o.available));
}

#[test]
fn node_class_kubelet_settings_change_allocatable() {
    let base = template(
        &pool(json!({})),
        Some(&class(&["us-east-1a"], json!(null))),
        &catalog(),
        &unavailable(),
        &Resources::default(),
    )
    .unwrap();
    let tuned = template(
        &pool(json!({})),
        Some(&class(
            &["us-east-1a"],
            json!({"maxPods": 20, "systemReserved": {"memory": "1Gi"}}),
        )),
        &catalog(),
        &unavailable(),
        &Resources::default(),
    )
    .unwrap();
    let (a, b) = (option(&base, "m5.xlarge"), option(&tuned, "m5.xlarge"));
    assert_eq!(b.allocatable.pods, 20);
    assert_ne!(a.allocatable.pods, 20);
    // Fewer pods lower kube-reserved (11 MiB each); system-reserved takes 1 GiB.
    let expected = a.allocatable.memory_bytes - (1 << 30) + (a.allocatable.pods - 20) * 11 * (1 << 20);
    assert_eq!(b.allocatable.memory_bytes, expected);
    assert_eq!(a.capacity, b.capacity.clone().with_pods(a.capacity.pods));
}

#[test]
fn limits_are_reduced_by_usage() {
    let p = pool(json!({"limits": {"cpu": "100", "memory": "400Gi", "nodes": 10}}));
    let used = Resources::new(30_000, 100 << 30).with_extended(NODES_LIMIT, 4);
    let t = template(&p, None, &catalog(), &unavailable(), &used).unwrap();
    let limits = t.limits.unwrap();
    assert_eq!(limits.cpu_millis, 70_000);
    assert_eq!(limits.memory_bytes, 300 << 30);
    assert_eq!(limits.extended(NODES_LIMIT), 6);
    // Usage beyond the limits leaves nothing, never a negative amount.
    let over = Resources::new(200_000, 0).with_extended(NODES_LIMIT, 20);
    let t = template(&p, None, &catalog(), &unavailable(), &over).unwrap();
    assert_eq!(t.limits.as_ref().unwrap().cpu_millis, 0);
    // Without a class, every zone of the region is used.
    let zones: std::collections::BTreeSet<&str> = option(&t, "m5.large")
        .offerings
        .iter()
        .map(|o| o.zone.as_str())
        .collect();
    assert_eq!(zones.len(), 3);
}

#[test]
fn usage_counts_nodes_and_unregistered_claims_of_the_pool() {
    let node = |name: &str, pool: &str, cpu: &str| -> Node {
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"karpenter.sh/nodepool": pool}},
            "status": {"capacity": {"cpu": cpu, "memory": "8Gi", "pods": "29"}}}))
        .unwrap()
    };
    let claim: NodeClaim = serde_json::from_value(json!({"apiVersion": "karpenter.sh/v1", "kind": "NodeClaim",
        "metadata": {"name": "general-x", "labels": {"karpenter.sh/nodepool": "general"}},
        "spec": {"requirements": [], "nodeClassRef": {"group": "spot.dev", "kind": "SpotNodeClass", "name": "default"},
                 "resources": {"requests": {"cpu": "3", "memory": "1Gi"}}}}))
    .unwrap();
    let snapshot = Snapshot {
        nodes: vec![node("n1", "general", "2"), node("n2", "other", "64")],
        claims: vec![claim],
        nodepools: vec![pool(json!({"limits": {"cpu": "10"}}))],
        nodeclasses: vec![class(&["us-east-1a"], json!(null))],
        ..Snapshot::default()
    };
    let used = usage(&snapshot, "general", &catalog());
    assert_eq!(
        used.cpu_millis, 5000,
        "node n1 (2) and the claim not yet a node (3)"
    );
    assert_eq!(used.extended(NODES_LIMIT), 2);
    let (ok, bad) = templates(&snapshot, &catalog(), &unavailable());
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(ok[0].limits.as_ref().unwrap().cpu_millis, 5000);
}

#[test]
fn invalid_pools_and_missing_classes_are_reported_apart() {
    let mut bad_pool = pool(json!({"weight": 500}));
    bad_pool.metadata.name = Some("heavy".into());
    let mut elsewhere = pool(json!({}));
    elsewhere.metadata.name = Some("elsewhere".into());
    elsewhere.spec.template.spec.node_class_ref.name = "missing".into();
    let snapshot = Snapshot {
        nodepools: vec![pool(json!({})), bad_pool, elsewhere],
        nodeclasses: vec![class(&["us-east-1a"], json!(null))],
        ..Snapshot::default()
    };
    let (ok, bad) = templates(&snapshot, &catalog(), &unavailable());
    assert_eq!(ok.len(), 1);
    assert_eq!(ok[0].name, "general");
    let reasons: BTreeMap<String, String> = bad.into_iter().collect();
    assert!(
        reasons["heavy"].contains("spec.weight") && reasons["heavy"].contains("500"),
        "{reasons:?}"
    );
    assert!(reasons["elsewhere"].contains("missing"), "{reasons:?}");
}

#[test]
fn an_unlaunched_claim_counts_as_the_largest_type_it_lists() {
    let claim = |name: &str, types: serde_json::Value| -> NodeClaim {
        serde_json::from_value(json!({"apiVersion": "karpenter.sh/v1", "kind": "NodeClaim",
            "metadata": {"name": name, "labels": {"karpenter.sh/nodepool": "general"}},
            "spec": {"requirements": [{"key": "node.kubernetes.io/instance-type", "operator": "In", "values": types}],
                     "nodeClassRef": {"group": "spot.dev", "kind": "SpotNodeClass", "name": "default"},
                     "resources": {"requests": {"cpu": "3", "memory": "1Gi"}}}}))
        .unwrap()
    };
    let snapshot = Snapshot {
        claims: vec![
            claim("general-a", json!(["m5.large", "m5.xlarge"])),
            // Types the catalog does not know: the requests count.
            claim("general-b", json!(["nope.large"])),
        ],
        nodepools: vec![pool(json!({"limits": {"cpu": "10"}}))],
        ..Snapshot::default()
    };
    let used = usage(&snapshot, "general", &catalog());
    // m5.xlarge has 4 vCPU and 16 GiB: whichever listed type EC2 picks fits in that.
    assert_eq!(used.cpu_millis, 4000 + 3000);
    let catalog = catalog();
    let xlarge = catalog.types.iter().find(|t| t.name == "m5.xlarge").unwrap();
    // The node's memory capacity, as the allocatable model reports it (less the VM overhead).
    let capacity = catalog.model.capacity_resources(xlarge).memory_bytes;
    assert_eq!(used.memory_bytes, capacity + (1 << 30));
    assert_eq!(used.extended(NODES_LIMIT), 2);
}
