//! Tests of the disruption methods on small hand-built clusters.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use time::macros::datetime;

use super::*;
use crate::catalog::synthetic_type;
use crate::disruption::budget::{Budget, Budgets};
use crate::disruption::candidate::Pdbs;
use crate::disruption::cluster::PoolPolicy;
use crate::instance_type::Offering;
use crate::labels;
use crate::pod::{LabelSelector, PodAffinityTerm, PodSpec, TopologySpread, WhenUnsatisfiable};
use crate::requirements::{Operator, Requirement};
use crate::resources::Resources;
use crate::scheduling::{ExistingNode, InstanceTypeOption, NodePoolTemplate};

const NOW: OffsetDateTime = datetime!(2026-06-01 12:00 UTC);
const GIB: i64 = 1 << 30;
const ZONES: [&str; 2] = ["us-east-1a", "us-east-1b"];

/// A type with round allocatable (`vcpus` CPUs, 4 GiB per CPU, 110 pods), sold as spot and
/// on demand in both zones.
fn it(name: &str, vcpus: u32, on_demand: f64, spot: f64) -> Arc<InstanceTypeOption> {
    let offerings = ZONES
        .iter()
        .flat_map(|zone| {
            [
                Offering {
                    zone: (*zone).into(),
                    capacity_type: CapacityType::Spot,
                    price: spot,
                    available: true,
                },
                Offering {
                    zone: (*zone).into(),
                    capacity_type: CapacityType::OnDemand,
                    price: on_demand,
                    available: true,
                },
            ]
        })
        .collect();
    let t = synthetic_type(name, vcpus, u64::from(vcpus) * 4096).unwrap();
    let mut option = InstanceTypeOption::new(
        Arc::new(t),
        &crate::allocatable::AllocatableModel::default(),
        offerings,
    )
    .unwrap();
    option.allocatable = Resources::new(i64::from(vcpus) * 1000, i64::from(vcpus) * 4 * GIB).with_pods(110);
    option.capacity = option.allocatable.clone();
    Arc::new(option)
}

/// m5: large 2 CPU $0.096, xlarge $0.192, 2xlarge $0.384 (spot at a third).
fn m5() -> Vec<Arc<InstanceTypeOption>> {
    vec![
        it("m5.large", 2, 0.096, 0.032),
        it("m5.xlarge", 4, 0.192, 0.064),
        it("m5.2xlarge", 8, 0.384, 0.128),
    ]
}

fn template(name: &str, types: Vec<Arc<InstanceTypeOption>>, capacity: &[&str]) -> NodePoolTemplate {
    let mut t = NodePoolTemplate::new(name, types);
    t.requirements
        .add(Requirement::new(labels::CAPACITY_TYPE, Operator::In, capacity.iter().copied()).unwrap());
    t
}

fn pod(name: &str, cpu: i64) -> Arc<PodSpec> {
    let mut p = PodSpec::new("apps", name, Resources::new(cpu, cpu * 1024 * 1024));
    p.owner_kind = Some("ReplicaSet".into());
    p.labels
        .insert("app".into(), name.split('-').next().unwrap_or(name).into());
    Arc::new(p)
}

/// A small cluster builder.
struct Builder {
    cluster: ClusterState,
}

impl Builder {
    fn new(templates: Vec<NodePoolTemplate>) -> Builder {
        let pools = templates
            .iter()
            .map(|t| PoolPolicy::new(t.name.clone(), 0))
            .collect();
        Builder {
            cluster: ClusterState {
                templates,
                pools,
                ..ClusterState::default()
            },
        }
    }

    /// Adds a node of `type_name` from the pool (first zone) with these pods.
    fn node(
        &mut self,
        name: &str,
        pool: &str,
        type_name: &str,
        capacity_type: CapacityType,
        pods: &[Arc<PodSpec>],
    ) {
        self.node_in(ZONES[0], name, pool, type_name, capacity_type, pods);
    }

    /// Adds a node in a zone.
    fn node_in(
        &mut self,
        zone: &str,
        name: &str,
        pool: &str,
        type_name: &str,
        capacity_type: CapacityType,
        pods: &[Arc<PodSpec>],
    ) {
        let template = self.cluster.templates.iter().find(|t| t.name == pool).unwrap();
        let option = template
            .instance_types
            .iter()
            .find(|t| t.name() == type_name)
            .unwrap();
        let price = option
            .offerings
            .iter()
            .find(|o| o.zone == zone && o.capacity_type == capacity_type)
            .unwrap()
            .price;
        let mut node_labels =
            labels::instance_type_labels(&option.instance_type, zone, capacity_type).unwrap();
        node_labels.insert(labels::NODE_POOL.into(), pool.into());
        node_labels.insert(labels::HOSTNAME.into(), name.into());
        let pods: Vec<Arc<PodSpec>> = pods
            .iter()
            .map(|p| {
                let mut p = (**p).clone();
                p.node_name = Some(name.into());
                Arc::new(p)
            })
            .collect();
        self.cluster.nodes.push(ExistingNode {
            name: name.into(),
            labels: node_labels,
            taints: Vec::new(),
            allocatable: option.allocatable.clone(),
            pods: pods.clone(),
            initialized: true,
            nodepool: Some(pool.into()),
            in_flight: None,
        });
        self.cluster.candidates.push(Candidate {
            node_name: name.into(),
            nodepool: pool.into(),
            instance_type: type_name.into(),
            zone: zone.into(),
            capacity_type,
            price,
            pods,
            initialized: true,
            created: NOW - time::Duration::days(2),
            expire_after: Some(Duration::from_secs(720 * 3600)),
            consolidatable: true,
            do_not_disrupt: false,
            nominated: false,
            deleting: false,
            drifted: None,
        });
        let pool = self.cluster.pools.iter_mut().find(|p| p.name == pool).unwrap();
        pool.total_nodes += 1;
        pool.budgets = Budgets::new(&[Budget::nodes("100%")]).unwrap();
    }

    fn candidate(&mut self, name: &str) -> &mut Candidate {
        self.cluster
            .candidates
            .iter_mut()
            .find(|c| c.node_name == name)
            .unwrap()
    }

    fn pool(&mut self, name: &str) -> &mut PoolPolicy {
        self.cluster.pools.iter_mut().find(|p| p.name == name).unwrap()
    }

    fn build(self) -> ClusterState {
        self.cluster
    }
}

fn options() -> ConsolidationOptions {
    ConsolidationOptions::default()
}

fn single(cluster: &ClusterState) -> Vec<Evaluation> {
    let options = options();
    Consolidator::new(cluster, &options, NOW).single_node_evaluations()
}

fn result<'a>(evaluations: &'a [Evaluation], node: &str) -> &'a Result<Command, Skip> {
    &evaluations.iter().find(|e| e.node == node).unwrap().result
}

#[test]
fn ranking_by_savings_ratio_round_robin_across_pools() {
    let mut b = Builder::new(vec![
        template("a", m5(), &["on-demand"]),
        template("b", m5(), &["on-demand"]),
    ]);
    // Savings ratio = price / (1 + pods).
    b.node(
        "a-cheap-busy",
        "a",
        "m5.large",
        CapacityType::OnDemand,
        &[pod("x-1", 100), pod("x-2", 100)],
    );
    b.node(
        "a-dear-quiet",
        "a",
        "m5.2xlarge",
        CapacityType::OnDemand,
        &[pod("x-3", 100)],
    );
    b.node(
        "a-mid",
        "a",
        "m5.xlarge",
        CapacityType::OnDemand,
        &[pod("x-4", 100)],
    );
    b.node(
        "b-only",
        "b",
        "m5.large",
        CapacityType::OnDemand,
        &[pod("y-1", 100)],
    );
    let cluster = b.build();
    let order: Vec<String> = single(&cluster).into_iter().map(|e| e.node).collect();
    assert_eq!(order, ["a-dear-quiet", "b-only", "a-mid", "a-cheap-busy"]);
    let ratios: Vec<f64> = ["a-dear-quiet", "a-mid", "a-cheap-busy"]
        .iter()
        .map(|n| cluster.candidate(n).unwrap().savings_ratio())
        .collect();
    assert!(ratios.windows(2).all(|w| w[0] > w[1]), "{ratios:?}");
}

#[test]
fn emptiness_deletes_every_empty_node_within_budget() {
    let mut b = Builder::new(vec![template("od", m5(), &["on-demand"])]);
    for i in 0..5 {
        b.node(
            &format!("empty-{i}"),
            "od",
            "m5.large",
            CapacityType::OnDemand,
            &[],
        );
    }
    b.node(
        "busy",
        "od",
        "m5.large",
        CapacityType::OnDemand,
        &[pod("web-1", 1500)],
    );
    b.candidate("empty-4").consolidatable = false;
    let mut low_priority = (*pod("batch-1", 100)).clone();
    low_priority.priority = i32::MIN;
    b.node(
        "only-negative",
        "od",
        "m5.xlarge",
        CapacityType::OnDemand,
        &[Arc::new(low_priority)],
    );
    b.pool("od").budgets = Budgets::new(&[Budget::nodes("3")]).unwrap();
    let cluster = b.build();
    let cmd = emptiness(&cluster, NOW).unwrap();
    assert_eq!(cmd.reason, Reason::Empty);
    assert_eq!(cmd.decision(), Decision::Delete);
    assert_eq!(cmd.candidates.len(), 3, "the budget allows 3");
    assert_eq!(
        cmd.candidates[0], "only-negative",
        "most expensive first; negative-cost pods count as empty"
    );
    assert!(
        !cmd.candidates.contains(&"empty-4".to_owned()),
        "not consolidatable yet"
    );
    assert!(!cmd.candidates.contains(&"busy".to_owned()));
    let commands = compute_commands(&cluster, &options(), NOW);
    assert_eq!(commands, vec![cmd], "emptiness goes first");
}

#[test]
fn delete_when_pods_fit_elsewhere() {
    let mut b = Builder::new(vec![template("od", m5(), &["on-demand"])]);
    b.node(
        "roomy",
        "od",
        "m5.xlarge",
        CapacityType::OnDemand,
        &[pod("web-1", 1000)],
    );
    b.node(
        "small",
        "od",
        "m5.large",
        CapacityType::OnDemand,
        &[pod("web-2", 500), pod("web-3", 500)],
    );
    let cluster = b.build();
    let evaluations = single(&cluster);
    let cmd = result(&evaluations, "small").as_ref().unwrap();
    assert_eq!(cmd.decision(), Decision::Delete);
    assert_eq!(cmd.savings_per_hour, 0.096);
    assert_eq!(cmd.pods, ["apps/web-2", "apps/web-3"]);
    // The roomy node's pod fits in the small one's free 1000m.
    let roomy = result(&evaluations, "roomy").as_ref().unwrap();
    assert_eq!(roomy.decision(), Decision::Delete);
    // The controller takes the best-ranked one.
    let commands = compute_commands(&cluster, &options(), NOW);
    assert_eq!(commands.len(), 1);
}

#[test]
fn replace_with_a_cheaper_type() {
    let mut b = Builder::new(vec![template("od", m5(), &["on-demand"])]);
    b.node(
        "big",
        "od",
        "m5.2xlarge",
        CapacityType::OnDemand,
        &[pod("web-1", 900), pod("web-2", 900)],
    );
    let cluster = b.build();
    let cmd = result(&single(&cluster), "big").clone().unwrap();
    assert_eq!(cmd.decision(), Decision::Replace);
    let replacement = cmd.replacement().unwrap();
    let names: Vec<&str> = replacement.instance_types.iter().map(|t| t.name()).collect();
    assert_eq!(
        names,
        ["m5.large", "m5.xlarge"],
        "cheaper types only, cheapest first"
    );
    assert!((cmd.savings_per_hour - (0.384 - 0.096)).abs() < 1e-9);
    assert!(
        replacement
            .requirements
            .get(labels::CAPACITY_TYPE)
            .unwrap()
            .has("on-demand"),
        "an on-demand pool stays on demand"
    );
}

#[test]
fn a_replacement_that_may_be_spot_or_on_demand_is_pinned_to_spot() {
    let mut b = Builder::new(vec![template("mixed", m5(), &["spot", "on-demand"])]);
    b.node(
        "big",
        "mixed",
        "m5.2xlarge",
        CapacityType::OnDemand,
        &[pod("web-1", 900)],
    );
    let cluster = b.build();
    let cmd = result(&single(&cluster), "big").clone().unwrap();
    let ct = cmd
        .replacement()
        .unwrap()
        .requirements
        .get(labels::CAPACITY_TYPE)
        .unwrap();
    assert!(ct.has("spot") && !ct.has("on-demand"), "{ct}");
    assert!(
        (cmd.savings_per_hour - (0.384 - 0.032)).abs() < 1e-9,
        "priced as spot"
    );
}

#[test]
fn never_the_same_instance_type() {
    let mut b = Builder::new(vec![template("od", m5(), &["on-demand"])]);
    b.node(
        "large",
        "od",
        "m5.large",
        CapacityType::OnDemand,
        &[pod("web-1", 1500)],
    );
    // The node was bought when m5.large cost more: the same type is now cheaper, but
    // replacing it with itself is pure churn.
    b.candidate("large").price = 0.15;
    let cluster = b.build();
    match result(&single(&cluster), "large") {
        Err(Skip::NoOp(NoOp::NotCheaper { .. })) => {}
        other => panic!("{other:?}"),
    }
    assert!(compute_commands(&cluster, &options(), NOW).is_empty());
}

/// `count` spot-priced types cheaper than an m5.2xlarge at $0.128 spot, each big enough.
fn cheap_spot_types(count: usize) -> Vec<Arc<InstanceTypeOption>> {
    let mut types = m5();
    for i in 0..count {
        types.push(it(
            &format!("c{}.2xlarge", i + 1),
            8,
            0.30,
            0.05 + i as f64 * 0.001,
        ));
    }
    types
}

#[test]
fn spot_to_spot_needs_fifteen_cheaper_types() {
    let pods = [pod("web-1", 3000), pod("web-2", 2500)];
    let build = |count| {
        let mut b = Builder::new(vec![template("spot", cheap_spot_types(count), &["spot"])]);
        b.node("big", "spot", "m5.2xlarge", CapacityType::Spot, &pods);
        b.build()
    };
    // Two zones at $0.128 for the candidate; 14 cheaper types that fit 5.5 CPUs: refused.
    let few = build(14);
    match result(&single(&few), "big") {
        Err(Skip::NoOp(NoOp::SpotToSpotFlexibility { have: 14, need: 15 })) => {}
        other => panic!("{other:?}"),
    }
    // 20 cheaper types: replaced, the launch list cut to the 15 cheapest.
    let many = build(20);
    let cmd = result(&single(&many), "big").clone().unwrap();
    let replacement = cmd.replacement().unwrap();
    assert_eq!(replacement.instance_types.len(), 15);
    assert_eq!(replacement.instance_types[0].name(), "c1.2xlarge");
    assert_eq!(replacement.instance_types[14].name(), "c15.2xlarge");
    let ct = replacement.requirements.get(labels::CAPACITY_TYPE).unwrap();
    assert!(ct.has("spot") && !ct.has("on-demand"));
    // With the gate off, spot is never replaced by spot.
    let off = ConsolidationOptions {
        spot_to_spot: false,
        ..options()
    };
    let evaluations = Consolidator::new(&many, &off, NOW).single_node_evaluations();
    assert!(result(&evaluations, "big").is_err());
}

#[test]
fn balanced_refuses_marginal_moves() {
    let mut types = m5();
    types.push(it("m6.xlarge", 4, 0.186, 0.06));
    let build = |policy| {
        let mut b = Builder::new(vec![template("od", types.clone(), &["on-demand"])]);
        for i in 0..9 {
            b.node(
                &format!("full-{i}"),
                "od",
                "m5.xlarge",
                CapacityType::OnDemand,
                &[pod(&format!("db-{i}"), 3900)],
            );
        }
        // Its pods need a 4-CPU node: only m6.xlarge, $0.006/h cheaper, could replace it.
        b.node(
            "busy",
            "od",
            "m5.xlarge",
            CapacityType::OnDemand,
            &[pod("web-1", 1500), pod("web-2", 1500)],
        );
        b.pool("od").consolidation_policy = policy;
        b.build()
    };
    let eager = build(ConsolidationPolicy::WhenEmptyOrUnderutilized);
    let cmd = result(&single(&eager), "busy").clone().unwrap();
    assert_eq!(cmd.replacement().unwrap().instance_types[0].name(), "m6.xlarge");
    let balanced = build(ConsolidationPolicy::Balanced);
    match result(&single(&balanced), "busy") {
        Err(Skip::NoOp(NoOp::Balanced {
            pool,
            score,
            threshold,
        })) => {
            assert_eq!(pool, "od");
            assert!(*score < *threshold, "{score} < {threshold}");
        }
        other => panic!("{other:?}"),
    }
    // A delete of a node carrying an average share of the pool's pods passes (score 1).
    let mut b = Builder::new(vec![template("od", m5(), &["on-demand"])]);
    b.node(
        "roomy",
        "od",
        "m5.xlarge",
        CapacityType::OnDemand,
        &[pod("a-1", 1000)],
    );
    b.node(
        "other",
        "od",
        "m5.xlarge",
        CapacityType::OnDemand,
        &[pod("b-1", 1000)],
    );
    b.pool("od").consolidation_policy = ConsolidationPolicy::Balanced;
    let cluster = b.build();
    assert_eq!(
        result(&single(&cluster), "roomy").as_ref().unwrap().decision(),
        Decision::Delete
    );
}

#[test]
fn steady_state_has_nothing_to_do() {
    let mut b = Builder::new(vec![template("od", m5(), &["on-demand"])]);
    for i in 0..3 {
        b.node(
            &format!("n{i}"),
            "od",
            "m5.large",
            CapacityType::OnDemand,
            &[pod(&format!("web-{i}"), 1900)],
        );
    }
    b.node(
        "x",
        "od",
        "m5.xlarge",
        CapacityType::OnDemand,
        &[pod("api-1", 2000), pod("api-2", 1900)],
    );
    let cluster = b.build();
    assert_eq!(compute_commands(&cluster, &options(), NOW), Vec::<Command>::new());
    let evaluations = single(&cluster);
    assert_eq!(evaluations.len(), 4);
    assert!(evaluations.iter().all(|e| e.result.is_err()), "{evaluations:?}");
}

#[test]
fn multi_node_finds_three_to_one() {
    let mut b = Builder::new(vec![template("od", m5(), &["on-demand"])]);
    for i in 0..3 {
        b.node(
            &format!("n{i}"),
            "od",
            "m5.large",
            CapacityType::OnDemand,
            &[pod(&format!("web-{i}"), 1200)],
        );
    }
    let cluster = b.build();
    // Single-node: a 1200m pod fits in no other node's 800m, and no type is cheaper than an
    // m5.large.
    assert!(single(&cluster).iter().all(|e| e.result.is_err()));
    let options = options();
    let cmd = Consolidator::new(&cluster, &options, NOW).multi_node().unwrap();
    assert_eq!(cmd.candidates.len(), 3);
    assert_eq!(cmd.decision(), Decision::Replace);
    assert_eq!(cmd.replacement().unwrap().instance_types[0].name(), "m5.xlarge");
    assert!((cmd.savings_per_hour - (3.0 * 0.096 - 0.192)).abs() < 1e-9);
    assert_eq!(compute_commands(&cluster, &options, NOW), vec![cmd]);
}

#[test]
fn budgets_gate_consolidation() {
    let mut b = Builder::new(vec![template("od", m5(), &["on-demand"])]);
    b.node(
        "roomy",
        "od",
        "m5.xlarge",
        CapacityType::OnDemand,
        &[pod("a-1", 1000)],
    );
    b.node(
        "small",
        "od",
        "m5.large",
        CapacityType::OnDemand,
        &[pod("b-1", 500)],
    );
    b.node(
        "n3",
        "od",
        "m5.large",
        CapacityType::OnDemand,
        &[pod("c-1", 1900)],
    );
    b.pool("od").budgets = Budgets::new(&[Budget::nodes("0")]).unwrap();
    let cluster = b.build();
    assert!(single(&cluster).iter().all(|e| e.result == Err(Skip::Budget)));
    assert!(compute_commands(&cluster, &options(), NOW).is_empty());
    // A budget of one: multi-node takes one candidate at most, which is not multi-node.
    let mut cluster = cluster;
    cluster.pools[0].budgets = Budgets::new(&[Budget::nodes("1")]).unwrap();
    let options = options();
    assert_eq!(Consolidator::new(&cluster, &options, NOW).multi_node(), None);
    let commands = compute_commands(&cluster, &options, NOW);
    assert_eq!(commands.len(), 1);
    assert_eq!(commands[0].candidates.len(), 1);
}

#[test]
fn blocked_candidates_are_left_alone() {
    let mut b = Builder::new(vec![template("od", m5(), &["on-demand"])]);
    b.node(
        "roomy",
        "od",
        "m5.xlarge",
        CapacityType::OnDemand,
        &[pod("a-1", 1000)],
    );
    let mut protected = (*pod("db-0", 300)).clone();
    protected.do_not_disrupt = Some("true".into());
    b.node(
        "guarded",
        "od",
        "m5.large",
        CapacityType::OnDemand,
        &[Arc::new(protected)],
    );
    b.node(
        "budgeted",
        "od",
        "m5.large",
        CapacityType::OnDemand,
        &[pod("api-1", 300)],
    );
    let mut cluster = b.build();
    let pdbs = Pdbs::new([crate::disruption::Pdb {
        namespace: "apps".into(),
        name: "api".into(),
        selector: LabelSelector::labels([("app", "api")]),
        disruptions_allowed: 0,
    }]);
    let blocked = cluster.retain_disruptable(&pdbs, NOW);
    let names: Vec<String> = blocked.iter().map(ToString::to_string).collect();
    assert_eq!(
        names,
        [
            "node guarded: pod apps/db-0 has karpenter.sh/do-not-disrupt=\"true\"",
            "node budgeted: PodDisruptionBudget apps/api allows no disruption of pod apps/api-1",
        ]
    );
    assert_eq!(cluster.candidates.len(), 1);
    for cmd in compute_commands(&cluster, &options(), NOW) {
        assert_eq!(cmd.candidates, ["roomy"]);
    }
}

#[test]
fn pods_do_not_move_onto_nodes_inside_consolidate_after() {
    let mut b = Builder::new(vec![template("od", m5(), &["on-demand"])]);
    b.node(
        "roomy",
        "od",
        "m5.2xlarge",
        CapacityType::OnDemand,
        &[pod("a-1", 1000)],
    );
    b.node(
        "small",
        "od",
        "m5.large",
        CapacityType::OnDemand,
        &[pod("b-1", 1500)],
    );
    let mut cluster = b.build();
    assert_eq!(
        result(&single(&cluster), "small").as_ref().unwrap().decision(),
        Decision::Delete
    );
    cluster.non_destinations.insert("roomy".into());
    cluster.candidates.retain(|c| c.node_name == "small");
    assert!(result(&single(&cluster), "small").is_err(), "roomy just changed");
}

#[test]
fn uninitialized_destinations_invalidate() {
    let mut b = Builder::new(vec![template("od", m5(), &["on-demand"])]);
    b.node(
        "big",
        "od",
        "m5.2xlarge",
        CapacityType::OnDemand,
        &[pod("web-1", 900)],
    );
    b.node("fresh", "od", "m5.xlarge", CapacityType::OnDemand, &[]);
    let mut cluster = b.build();
    cluster.nodes[1].initialized = false;
    cluster.candidates.retain(|c| c.node_name == "big");
    match result(&single(&cluster), "big") {
        Err(Skip::NoOp(NoOp::Uninitialized { pod, node })) => {
            assert_eq!((pod.as_str(), node.as_str()), ("apps/web-1", "fresh"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn hostname_anti_affinity_is_honoured() {
    let anti = |name: &str| {
        let mut p = (*pod(name, 500)).clone();
        p.pod_anti_affinity.push(PodAffinityTerm {
            topology_key: labels::HOSTNAME.into(),
            selector: LabelSelector::labels([("app", "web")]),
            namespaces: Vec::new(),
        });
        Arc::new(p)
    };
    let mut b = Builder::new(vec![template(
        "od",
        vec![it("m5.large", 2, 0.096, 0.032)],
        &["on-demand"],
    )]);
    b.node("a", "od", "m5.large", CapacityType::OnDemand, &[anti("web-1")]);
    b.node("b", "od", "m5.large", CapacityType::OnDemand, &[anti("web-2")]);
    b.node(
        "c",
        "od",
        "m5.large",
        CapacityType::OnDemand,
        &[pod("api-1", 500)],
    );
    let cluster = b.build();
    let evaluations = single(&cluster);
    // web-1 may not join web-2 on b, but fits on c.
    let cmd = result(&evaluations, "a").as_ref().unwrap();
    assert_eq!(cmd.decision(), Decision::Delete);
    // Without c, web-1 has nowhere to go.
    let mut without_c = cluster.clone();
    without_c.nodes.retain(|n| n.name != "c");
    without_c.candidates.retain(|c| c.node_name != "c");
    assert!(result(&single(&without_c), "a").is_err());
}

#[test]
fn drift_replaces_the_oldest_drifted_node() {
    let mut b = Builder::new(vec![template("od", m5(), &["on-demand"])]);
    b.node(
        "old",
        "od",
        "m5.large",
        CapacityType::OnDemand,
        &[pod("web-1", 1500)],
    );
    b.node(
        "older",
        "od",
        "m5.large",
        CapacityType::OnDemand,
        &[pod("web-2", 1500)],
    );
    b.node(
        "steady",
        "od",
        "m5.large",
        CapacityType::OnDemand,
        &[pod("web-3", 1900)],
    );
    b.candidate("old").drifted = Some(NOW - time::Duration::hours(1));
    b.candidate("older").drifted = Some(NOW - time::Duration::hours(5));
    let cluster = b.build();
    let commands = compute_commands(&cluster, &options(), NOW);
    assert_eq!(commands.len(), 1);
    let cmd = &commands[0];
    assert_eq!(cmd.reason, Reason::Drifted);
    assert_eq!(cmd.candidates, ["older"]);
    assert_eq!(
        cmd.replacements.len(),
        1,
        "drift launches what the pods need, at any price"
    );
    assert_eq!(validate_command(cmd, &cluster, &options(), NOW), Ok(()));
    // An empty drifted node goes first, without a replacement.
    let mut b = Builder::new(vec![template("od", m5(), &["on-demand"])]);
    b.node(
        "busy",
        "od",
        "m5.large",
        CapacityType::OnDemand,
        &[pod("web-1", 1500)],
    );
    b.node("idle", "od", "m5.large", CapacityType::OnDemand, &[]);
    b.candidate("busy").drifted = Some(NOW - time::Duration::hours(5));
    b.candidate("idle").drifted = Some(NOW - time::Duration::hours(1));
    b.candidate("idle").consolidatable = false;
    let cluster = b.build();
    let commands = compute_commands(&cluster, &options(), NOW);
    assert_eq!(commands[0].candidates, ["idle"]);
    assert_eq!(commands[0].decision(), Decision::Delete);
}

#[test]
fn validation_drops_commands_when_things_changed() {
    let mut b = Builder::new(vec![template("od", m5(), &["on-demand"])]);
    b.node(
        "roomy",
        "od",
        "m5.2xlarge",
        CapacityType::OnDemand,
        &[pod("a-1", 1000)],
    );
    b.node(
        "small",
        "od",
        "m5.large",
        CapacityType::OnDemand,
        &[pod("b-1", 1500)],
    );
    let mut cluster = b.build();
    cluster.candidates.retain(|c| c.node_name == "small");
    let options = options();
    let cmd = compute_commands(&cluster, &options, NOW).remove(0);
    assert_eq!(
        (cmd.candidates.as_slice(), cmd.decision()),
        (&["small".to_owned()][..], Decision::Delete)
    );
    assert_eq!(validate_command(&cmd, &cluster, &options, NOW), Ok(()));
    let later = NOW + time::Duration::seconds(15);
    assert_eq!(validate_command(&cmd, &cluster, &options, later), Ok(()));

    // A pod arrived on a candidate.
    let mut churned = cluster.clone();
    let name = cmd.candidates[0].clone();
    churned
        .candidates
        .iter_mut()
        .find(|c| c.node_name == name)
        .unwrap()
        .pods
        .push(pod("c-1", 10));
    assert_eq!(
        validate_command(&cmd, &churned, &options, later),
        Err(Invalid::PodsChanged(name.clone()))
    );
    // The candidate went away.
    let mut gone = cluster.clone();
    gone.candidates.retain(|c| c.node_name != name);
    assert_eq!(
        validate_command(&cmd, &gone, &options, later),
        Err(Invalid::NotCandidate(name.clone()))
    );
    // The budget closed.
    let mut closed = cluster.clone();
    closed.pools[0].budgets = Budgets::new(&[Budget::nodes("0")]).unwrap();
    assert!(matches!(
        validate_command(&cmd, &closed, &options, later),
        Err(Invalid::Budget { allowed: 0, .. })
    ));
    // The destination filled up: the delete no longer holds.
    let mut full = cluster.clone();
    for node in full
        .nodes
        .iter_mut()
        .filter(|n| !cmd.candidates.contains(&n.name))
    {
        node.pods.push(pod("filler-1", 6900));
    }
    assert!(matches!(
        validate_command(&cmd, &full, &options, later),
        Err(Invalid::Simulation(_))
    ));
}

#[test]
fn bench_shape_clusters_are_consistent() {
    let cluster = crate::disruption::bench_shape::cluster(60, 7);
    assert_eq!(cluster.nodes.len(), 60);
    assert_eq!(cluster.candidates.len(), 60);
    assert_eq!(cluster.pools.iter().map(|p| p.total_nodes).sum::<usize>(), 60);
    for (node, candidate) in cluster.nodes.iter().zip(&cluster.candidates) {
        let used = node.pods.iter().fold(Resources::default(), |sum, p| {
            sum.checked_add(&p.requests).unwrap()
        });
        assert!(used.fits_in(&node.allocatable), "{} is overcommitted", node.name);
        assert!(candidate.price > 0.0);
        assert_eq!(node.name, candidate.node_name);
        let pods = node.pods.iter().filter(|p| !p.is_daemonset()).count();
        assert!(pods == 0 || (5..=30).contains(&pods), "{pods} pods");
    }
    assert_eq!(
        crate::disruption::bench_shape::cluster(60, 7).nodes,
        cluster.nodes,
        "seeded"
    );
    let options = options();
    let evaluations =
        Consolidator::new(&cluster, &options, crate::disruption::bench_shape::NOW).single_node_evaluations();
    assert!(evaluations.iter().any(|e| e.result.is_ok()));
}

#[test]
fn zone_spread_counts_pods_on_every_node() {
    let spread = |name: &str| {
        let mut p = (*pod(name, 300)).clone();
        p.topology_spread.push(TopologySpread {
            topology_key: labels::ZONE.into(),
            max_skew: 1,
            min_domains: None,
            when_unsatisfiable: WhenUnsatisfiable::DoNotSchedule,
            selector: LabelSelector::labels([("app", "web")]),
        });
        Arc::new(p)
    };
    let build = |b_web: usize| {
        let mut b = Builder::new(vec![template("od", m5(), &["on-demand"])]);
        b.node_in(
            ZONES[0],
            "candidate",
            "od",
            "m5.2xlarge",
            CapacityType::OnDemand,
            &[spread("web-1")],
        );
        let full: Vec<Arc<PodSpec>> = (0..b_web)
            .map(|i| spread(&format!("web-{}", i + 2)))
            .chain([pod("db-1", 2000 - 300 * b_web as i64)])
            .collect();
        b.node_in(
            ZONES[1],
            "b-full",
            "od",
            "m5.large",
            CapacityType::OnDemand,
            &full,
        );
        b.node_in(
            ZONES[1],
            "b-roomy",
            "od",
            "m5.xlarge",
            CapacityType::OnDemand,
            &[pod("api-1", 500)],
        );
        let mut cluster = b.build();
        cluster.candidates.retain(|c| c.node_name == "candidate");
        cluster
    };
    // Zone b holds no web pod: web-1 may move there, and the candidate goes.
    let free = build(0);
    assert_eq!(
        result(&single(&free), "candidate").as_ref().unwrap().decision(),
        Decision::Delete
    );
    // Zone b holds two (on a full node the simulation only keeps for counting): moving
    // web-1 there would make the skew 3, so it needs a node in zone a, a cheaper one.
    let skewed = build(2);
    let cmd = result(&single(&skewed), "candidate").clone().unwrap();
    assert_eq!(cmd.decision(), Decision::Replace);
    let zone = cmd.replacement().unwrap().requirements.get(labels::ZONE).unwrap();
    assert!(zone.has(ZONES[0]) && !zone.has(ZONES[1]), "{zone}");
}

#[test]
fn expiration_ignores_budgets_and_blocks() {
    let mut b = Builder::new(vec![template("od", m5(), &["on-demand"])]);
    b.node(
        "young",
        "od",
        "m5.large",
        CapacityType::OnDemand,
        &[pod("web-1", 500)],
    );
    b.node(
        "old",
        "od",
        "m5.large",
        CapacityType::OnDemand,
        &[pod("web-2", 500)],
    );
    b.node(
        "older",
        "od",
        "m5.large",
        CapacityType::OnDemand,
        &[pod("web-3", 500)],
    );
    b.candidate("old").created = NOW - time::Duration::days(31);
    b.candidate("older").created = NOW - time::Duration::days(40);
    b.candidate("older").do_not_disrupt = true;
    b.pool("od").budgets = Budgets::new(&[Budget::nodes("0")]).unwrap();
    let cluster = b.build();
    let cmd = expiration(&cluster.candidates, NOW).unwrap();
    assert_eq!(cmd.reason, Reason::Expired);
    assert_eq!(cmd.candidates, ["older", "old"]);
    assert_eq!(
        validate_command(&cmd, &cluster, &options(), NOW),
        Ok(()),
        "not re-validated"
    );
    assert_eq!(
        expiration(&cluster.candidates, NOW - time::Duration::days(11)),
        None
    );
}

#[test]
fn drift_with_a_grace_period_ignores_pod_blocks() {
    let mut b = Builder::new(vec![template("od", m5(), &["on-demand"])]);
    let mut protected = (*pod("db-0", 1500)).clone();
    protected.do_not_disrupt = Some("true".into());
    b.node(
        "drifted",
        "od",
        "m5.large",
        CapacityType::OnDemand,
        &[Arc::new(protected)],
    );
    b.candidate("drifted").drifted = Some(NOW - time::Duration::hours(1));
    let mut cluster = b.build();
    let mut without = cluster.clone();
    assert_eq!(without.retain_disruptable(&Pdbs::default(), NOW).len(), 1);
    assert!(without.candidates.is_empty());
    cluster.pools[0].termination_grace_period = true;
    assert!(cluster.retain_disruptable(&Pdbs::default(), NOW).is_empty());
    assert!(!cluster.candidates[0].consolidatable, "kept for drift only");
    let commands = compute_commands(&cluster, &options(), NOW);
    assert_eq!(commands.len(), 1);
    assert_eq!(
        (commands[0].reason, commands[0].candidates.as_slice()),
        (Reason::Drifted, &["drifted".to_owned()][..])
    );
}
