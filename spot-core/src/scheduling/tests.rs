//! Scenario tests of the scheduler: one per constraint kind, relaxation, limits, minValues,
//! DaemonSet overhead, reasons, starvation and the benchmark shapes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::bench_shape::{BENCH_ZONES, benchmark_instance_types, issue_3152_shape, karpenter_benchmark};
use super::*;
use crate::labels;
use crate::node::{Taint, TaintEffect};
use crate::pod::{
    DAEMONSET_KIND, HostPort, LabelSelector, PodAffinityTerm, PodSpec, Toleration, TopologySpread,
    WhenUnsatisfiable,
};
use crate::requirements::{Operator, Requirement, Requirements};
use crate::resources::Resources;

const GIB: i64 = 1 << 30;
const MIB: i64 = 1 << 20;

fn pod(name: &str, cpu: i64, memory_mib: i64) -> PodSpec {
    let mut p = PodSpec::new("default", name, Resources::new(cpu, memory_mib * MIB));
    p.uid = name.to_owned();
    p
}

fn with_labels(mut p: PodSpec, pairs: &[(&str, &str)]) -> PodSpec {
    for (k, v) in pairs {
        p.labels.insert((*k).to_owned(), (*v).to_owned());
    }
    p
}

fn req(key: &str, op: Operator, values: &[&str]) -> Requirements {
    Requirements::new().with(Requirement::new(key, op, values.iter().copied()).unwrap())
}

/// A NodePool `default` over the first `n` benchmark types (1..n vCPU).
fn template(n: usize) -> NodePoolTemplate {
    NodePoolTemplate::new("default", benchmark_instance_types(n))
}

fn solve(templates: Vec<NodePoolTemplate>, existing: Vec<ExistingNode>, pods: Vec<PodSpec>) -> Solution {
    solve_with(templates, existing, Vec::new(), SchedulerOptions::default(), pods)
}

fn solve_with(
    templates: Vec<NodePoolTemplate>,
    existing: Vec<ExistingNode>,
    daemonsets: Vec<PodSpec>,
    options: SchedulerOptions,
    pods: Vec<PodSpec>,
) -> Solution {
    let mut scheduler = Scheduler::new(templates, existing, daemonsets, options);
    scheduler.solve(pods.into_iter().map(Arc::new).collect())
}

fn claim_of<'a>(solution: &'a Solution, pod: &str) -> Option<&'a NewNodeClaim> {
    solution
        .new_claims
        .iter()
        .find(|c| c.pods.iter().any(|p| p.name == pod))
}

fn zone_of(claim: &NewNodeClaim) -> Vec<String> {
    claim
        .requirements
        .get(labels::ZONE)
        .map(|r| r.values().map(str::to_owned).collect())
        .unwrap_or_default()
}

fn reason<'a>(solution: &'a Solution, pod: &str) -> &'a str {
    solution
        .unschedulable
        .iter()
        .find(|(k, _)| k == &format!("default/{pod}"))
        .map(|(_, r)| r.as_str())
        .unwrap_or_else(|| panic!("{pod} is scheduled: {solution:#?}"))
}

fn node(name: &str, zone: &str, cpu: i64, memory_gib: i64) -> ExistingNode {
    let labels: BTreeMap<String, String> = [
        (labels::ZONE, zone),
        (labels::HOSTNAME, name),
        (labels::ARCH, "amd64"),
        (labels::CAPACITY_TYPE, "on-demand"),
        (labels::NODE_POOL, "default"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    ExistingNode::new(name, labels, Resources::new(cpu, memory_gib * GIB).with_pods(110))
}

fn spread(key: &str, max_skew: i32, app: &str, when: WhenUnsatisfiable) -> TopologySpread {
    TopologySpread {
        topology_key: key.to_owned(),
        max_skew,
        min_domains: None,
        when_unsatisfiable: when,
        selector: LabelSelector::labels([("app", app)]),
    }
}

fn term(key: &str, app: &str) -> PodAffinityTerm {
    PodAffinityTerm {
        topology_key: key.to_owned(),
        selector: LabelSelector::labels([("app", app)]),
        namespaces: Vec::new(),
    }
}

#[test]
fn benchmark_shape_1000_pods_all_scheduled() {
    let (templates, pods) = karpenter_benchmark(1000, 42);
    let mut scheduler = Scheduler::new(templates, Vec::new(), Vec::new(), SchedulerOptions::default());
    let solution = scheduler.solve(pods.clone());
    assert!(
        solution.unschedulable.is_empty(),
        "{:?}",
        &solution.unschedulable[..solution.unschedulable.len().min(5)]
    );
    assert_eq!(solution.pods_evaluated, 1000);
    assert_eq!(solution.scheduled(), 1000);
    // Hostname anti-affinity: one nginx pod per claim.
    for claim in &solution.new_claims {
        let nginx = claim
            .pods
            .iter()
            .filter(|p| p.labels.get("app").is_some_and(|a| a == "nginx"))
            .count();
        assert!(nginx <= 1);
        assert!(!claim.instance_types.is_empty());
        let total = claim.pods.iter().fold(Resources::default(), |acc, p| {
            acc.checked_add(&p.requests).unwrap()
        });
        for t in &claim.instance_types {
            assert!(total.fits_in(&t.allocatable), "{} does not fit {total}", t.name());
        }
        let prices: Vec<f64> = claim
            .instance_types
            .iter()
            .map(|t| t.cheapest_price(&claim.requirements).unwrap())
            .collect();
        assert!(prices.windows(2).all(|w| w[0] <= w[1]), "cheapest first");
    }
    // Zonal spread: per selector, zone counts differ by at most one when counted over the
    // spread pods' own placements in zone-decided claims.
    let again = scheduler.solve(pods);
    assert_eq!(again, solution, "solves are repeatable");
}

#[test]
fn existing_nodes_first_fit_in_order() {
    let mut uninitialized = node("a-node", BENCH_ZONES[0], 4000, 16);
    uninitialized.initialized = false;
    let existing = vec![
        node("c-node", BENCH_ZONES[0], 4000, 16),
        node("b-node", BENCH_ZONES[1], 4000, 16),
        uninitialized,
    ];
    let solution = solve(
        vec![template(8)],
        existing,
        vec![pod("p1", 1000, 512), pod("p2", 3500, 512)],
    );
    assert!(solution.new_claims.is_empty());
    let placed: BTreeMap<String, String> = solution.existing.iter().cloned().collect();
    assert_eq!(
        placed["default/p2"], "b-node",
        "initialized nodes by name; p2 is first in the queue"
    );
    assert_eq!(placed["default/p1"], "c-node");
}

#[test]
fn in_flight_claims_fill_before_new_ones_and_narrow() {
    let mut claim = ExistingNode::new(
        "claim-1",
        BTreeMap::new(),
        Resources::new(3000, 8 * GIB).with_pods(20),
    );
    claim.in_flight = Some(InFlightClaim {
        requirements: req(labels::ZONE, Operator::In, &[BENCH_ZONES[0], BENCH_ZONES[1]]),
        instance_types: vec!["fake-it.3".into()],
    });
    let mut zonal = pod("zonal", 1500, 512);
    zonal.node_requirements = vec![req(labels::ZONE, Operator::In, &[BENCH_ZONES[1], BENCH_ZONES[2]])];
    let mut other_zone = pod("other", 1000, 512);
    other_zone.node_requirements = vec![req(labels::ZONE, Operator::In, &[BENCH_ZONES[0]])];
    let solution = solve(vec![template(8)], vec![claim], vec![zonal, other_zone]);
    assert_eq!(
        solution.existing,
        vec![("default/zonal".to_owned(), "claim-1".to_owned())]
    );
    let c = claim_of(&solution, "other").expect("zone a no longer fits the narrowed claim");
    assert_eq!(zone_of(c), vec![BENCH_ZONES[0]]);
}

#[test]
fn node_requirements_and_reasons() {
    let mut arm = pod("arm", 500, 256);
    arm.node_requirements = vec![req(labels::ARCH, Operator::In, &["arm64"])];
    let solution = solve(vec![template(8)], Vec::new(), vec![arm]);
    let r = reason(&solution, "arm");
    assert!(r.starts_with("incompatible with nodepool default:"), "{r}");
    assert!(r.contains(labels::ARCH), "{r}");

    let mut custom = pod("custom", 500, 256);
    custom.node_requirements = vec![req("team", Operator::In, &["a"])];
    let solution = solve(vec![template(8)], Vec::new(), vec![custom.clone()]);
    assert!(
        reason(&solution, "custom").contains("\"team\""),
        "undefined custom label"
    );
    let mut team = template(8);
    team.requirements
        .add(Requirement::new("team", Operator::In, ["a"]).unwrap());
    let solution = solve(vec![team], Vec::new(), vec![custom]);
    assert!(solution.unschedulable.is_empty());
}

#[test]
fn required_terms_are_ored_through_relaxation() {
    let mut p = pod("either", 500, 256);
    p.node_requirements = vec![
        req(labels::ARCH, Operator::In, &["arm64"]),
        req(labels::ZONE, Operator::In, &[BENCH_ZONES[2]]),
    ];
    let solution = solve(vec![template(8)], Vec::new(), vec![p]);
    let c = claim_of(&solution, "either").unwrap();
    assert_eq!(
        zone_of(c),
        vec![BENCH_ZONES[2]],
        "the second term after dropping the first"
    );
}

#[test]
fn taints_and_tolerations() {
    let mut gpu = template(8);
    gpu.taints = vec![Taint::new("dedicated", "gpu", TaintEffect::NoSchedule)];
    gpu.startup_taints = vec![Taint::new("example.com/init", "x", TaintEffect::NoSchedule)];
    let plain = pod("plain", 500, 256);
    let mut tolerant = pod("tolerant", 500, 256);
    tolerant.tolerations = vec![Toleration::equal(
        "dedicated",
        "gpu",
        Some(TaintEffect::NoSchedule),
    )];
    let solution = solve(vec![gpu], Vec::new(), vec![plain, tolerant]);
    assert_eq!(
        reason(&solution, "plain"),
        "incompatible with nodepool default: taint dedicated=gpu:NoSchedule not tolerated"
    );
    assert!(
        claim_of(&solution, "tolerant").is_some(),
        "startup taints are ignored"
    );
}

#[test]
fn prefer_no_schedule_is_tolerated_last() {
    let mut soft = template(8);
    soft.taints = vec![Taint {
        key: "spot".into(),
        value: None,
        effect: TaintEffect::PreferNoSchedule,
    }];
    let solution = solve(vec![soft], Vec::new(), vec![pod("p", 500, 256)]);
    assert!(
        solution.unschedulable.is_empty(),
        "relaxation step 6 tolerates PreferNoSchedule"
    );
}

#[test]
fn zonal_topology_spread() {
    let pods: Vec<PodSpec> = (0..6)
        .map(|i| {
            let mut p = with_labels(pod(&format!("web-{i}"), 500, 256), &[("app", "web")]);
            p.topology_spread = vec![spread(labels::ZONE, 1, "web", WhenUnsatisfiable::DoNotSchedule)];
            p
        })
        .collect();
    let solution = solve(vec![template(8)], Vec::new(), pods);
    assert!(solution.unschedulable.is_empty());
    let mut per_zone = BTreeMap::<String, usize>::new();
    for c in &solution.new_claims {
        let zones = zone_of(c);
        assert_eq!(zones.len(), 1, "spread decides the zone");
        *per_zone.entry(zones[0].clone()).or_default() += c.pods.len();
    }
    assert_eq!(per_zone.values().copied().collect::<Vec<_>>(), vec![2, 2, 2]);
}

#[test]
fn spread_violation_is_named_and_schedule_anyway_relaxes() {
    // Two web pods in zone a; zones b and c have full nodes; the NodePool only launches in
    // zone a. Another web pod in zone a would make the skew 3 − 0 > 1.
    let mut a = node("node-a", BENCH_ZONES[0], 8000, 32);
    for i in 0..2 {
        a.pods.push(Arc::new(with_labels(
            pod(&format!("bound-{i}"), 100, 64),
            &[("app", "web")],
        )));
    }
    let b = node("node-b", BENCH_ZONES[1], 100, 32);
    let c = node("node-c", BENCH_ZONES[2], 100, 32);
    let mut zone_a = template(8);
    zone_a
        .requirements
        .add(Requirement::new(labels::ZONE, Operator::In, [BENCH_ZONES[0]]).unwrap());
    let mut hard = with_labels(pod("hard", 500, 256), &[("app", "web")]);
    hard.topology_spread = vec![spread(labels::ZONE, 1, "web", WhenUnsatisfiable::DoNotSchedule)];
    let mut soft = hard.clone();
    soft.name = "soft".into();
    soft.uid = "soft".into();
    soft.topology_spread[0].when_unsatisfiable = WhenUnsatisfiable::ScheduleAnyway;
    let solution = solve(
        vec![zone_a],
        vec![a.clone(), b.clone(), c.clone()],
        vec![hard.clone(), soft],
    );
    assert_eq!(
        reason(&solution, "hard"),
        "incompatible with nodepool default: would violate topology spread on topology.kubernetes.io/zone (maxSkew 1)"
    );
    assert_eq!(
        solution.existing,
        vec![("default/soft".to_owned(), "node-a".to_owned())]
    );

    // Pinned to zone a by its own node affinity, only zone a counts (nodeAffinityPolicy
    // Honor): the skew is 1 and the pod fits.
    hard.node_requirements = vec![req(labels::ZONE, Operator::In, &[BENCH_ZONES[0]])];
    let solution = solve(vec![template(8)], vec![a, b, c], vec![hard]);
    assert_eq!(
        solution.existing,
        vec![("default/hard".to_owned(), "node-a".to_owned())]
    );
}

#[test]
fn hostname_spread_and_min_domains() {
    let pods: Vec<PodSpec> = (0..4)
        .map(|i| {
            let mut p = with_labels(pod(&format!("h-{i}"), 100, 64), &[("app", "h")]);
            p.topology_spread = vec![spread(labels::HOSTNAME, 1, "h", WhenUnsatisfiable::DoNotSchedule)];
            p
        })
        .collect();
    let solution = solve(vec![template(8)], Vec::new(), pods);
    assert_eq!(
        solution.new_claims.len(),
        4,
        "hostname spread assumes a global minimum of 0"
    );

    let pods: Vec<PodSpec> = (0..4)
        .map(|i| {
            let mut p = with_labels(pod(&format!("m-{i}"), 100, 64), &[("app", "m")]);
            let mut s = spread(labels::ZONE, 1, "m", WhenUnsatisfiable::DoNotSchedule);
            s.min_domains = Some(5);
            p.topology_spread = vec![s];
            p
        })
        .collect();
    let solution = solve(vec![template(8)], Vec::new(), pods);
    assert_eq!(
        solution.scheduled(),
        3,
        "fewer domains than minDomains: one pod per zone"
    );
    assert!(
        solution.unschedulable[0]
            .1
            .contains("would violate topology spread")
    );
}

#[test]
fn pod_affinity_waits_for_its_target() {
    // The follower is larger, so it is tried first and must come round again.
    let mut follower = with_labels(pod("follower", 2000, 256), &[("app", "client")]);
    follower.pod_affinity = vec![term(labels::ZONE, "db")];
    let mut db = with_labels(pod("db", 500, 256), &[("app", "db")]);
    db.node_requirements = vec![req(labels::ZONE, Operator::In, &[BENCH_ZONES[2]])];
    db.topology_spread = vec![spread(labels::ZONE, 1, "db", WhenUnsatisfiable::DoNotSchedule)];
    let solution = solve(vec![template(8)], Vec::new(), vec![follower.clone(), db]);
    assert!(solution.unschedulable.is_empty(), "{:?}", solution.unschedulable);
    assert_eq!(
        zone_of(claim_of(&solution, "follower").unwrap()),
        vec![BENCH_ZONES[2]]
    );

    let solution = solve(vec![template(8)], Vec::new(), vec![follower]);
    assert_eq!(
        reason(&solution, "follower"),
        "incompatible with nodepool default: pod affinity on topology.kubernetes.io/zone: no domain with a matching pod fits"
    );
}

#[test]
fn pod_anti_affinity_and_inverse() {
    let pods: Vec<PodSpec> = (0..3)
        .map(|i| {
            let mut p = with_labels(pod(&format!("a-{i}"), 100, 64), &[("app", "solo")]);
            p.pod_anti_affinity = vec![term(labels::HOSTNAME, "solo")];
            p
        })
        .collect();
    let solution = solve(vec![template(8)], Vec::new(), pods);
    assert_eq!(solution.new_claims.len(), 3);

    // A bound pod with anti-affinity to app=web keeps web pods off its node.
    let mut guarded = node("guarded", BENCH_ZONES[0], 8000, 32);
    let mut guard = with_labels(pod("guard", 100, 64), &[("app", "guard")]);
    guard.pod_anti_affinity = vec![term(labels::HOSTNAME, "web")];
    guarded.pods.push(Arc::new(guard));
    let web = with_labels(pod("web", 500, 256), &[("app", "web")]);
    let other = pod("other", 500, 256);
    let solution = solve(vec![template(8)], vec![guarded], vec![web, other]);
    assert_eq!(
        solution.existing,
        vec![("default/other".to_owned(), "guarded".to_owned())]
    );
    assert!(claim_of(&solution, "web").is_some());

    // Zonal anti-affinity: one pod per zone, each claim pinned to its zone.
    let pods: Vec<PodSpec> = (0..4)
        .map(|i| {
            let mut p = with_labels(pod(&format!("z-{i}"), 100, 64), &[("app", "z")]);
            p.pod_anti_affinity = vec![term(labels::ZONE, "z")];
            p
        })
        .collect();
    let solution = solve(vec![template(8)], Vec::new(), pods);
    assert_eq!(solution.scheduled(), 3);
    assert!(
        solution.unschedulable[0]
            .1
            .contains("would violate pod anti-affinity on topology.kubernetes.io/zone")
    );
}

#[test]
fn host_ports() {
    let n = node("n", BENCH_ZONES[0], 8000, 32);
    let mut a = pod("a", 500, 256);
    a.host_ports = vec![HostPort::tcp(80)];
    let mut b = pod("b", 400, 256);
    b.host_ports = vec![HostPort::tcp(80)];
    let solution = solve(vec![template(8)], vec![n], vec![a, b.clone()]);
    assert_eq!(solution.existing, vec![("default/a".to_owned(), "n".to_owned())]);
    assert!(claim_of(&solution, "b").is_some());

    let mut daemon = pod("ds", 100, 64);
    daemon.owner_kind = Some(DAEMONSET_KIND.into());
    daemon.host_ports = vec![HostPort::tcp(80)];
    let solution = solve_with(
        vec![template(8)],
        Vec::new(),
        vec![daemon],
        SchedulerOptions::default(),
        vec![b],
    );
    assert_eq!(
        reason(&solution, "b"),
        "incompatible with nodepool default: host port TCP/0.0.0.0:80 is already in use"
    );
}

#[test]
fn daemonset_overhead_per_instance_type() {
    let mut daemon = pod("ds", 1000, 256);
    daemon.owner_kind = Some(DAEMONSET_KIND.into());
    let mut big_only = pod("ds-big", 2000, 256);
    big_only.owner_kind = Some(DAEMONSET_KIND.into());
    big_only.node_requirements = vec![req(labels::INSTANCE_CPU, Operator::Gt, &["4"])];
    let solution = solve_with(
        vec![template(8)],
        Vec::new(),
        vec![daemon, big_only],
        SchedulerOptions::default(),
        vec![pod("p", 2500, 512)],
    );
    let c = claim_of(&solution, "p").unwrap();
    // 2.5 + 1 vCPU needs the 4-vCPU type (3.9 allocatable); types above 4 vCPU also run
    // ds-big, so 5 vCPU (4.9) cannot hold 5.5 and 6 vCPU (5.9) can.
    let names: Vec<&str> = c.instance_types.iter().map(|t| t.name()).collect();
    assert_eq!(names, vec!["fake-it.3", "fake-it.5", "fake-it.6", "fake-it.7"]);
    assert_eq!(
        c.daemon_overhead.cpu_millis, 1000,
        "the smallest overhead among the types"
    );
    assert_eq!(c.requests.cpu_millis, 3500);
}

#[test]
fn nodepool_limits_subtract_the_largest_type() {
    let mut limited = template(8);
    // The first claim lists types up to 8 vCPU and is charged 8: nothing is left for a second.
    limited.limits = Some(Resources::new(8_000, 0));
    let mut spillover = template(8);
    spillover.name = "spillover".into();
    spillover.requirements = req(labels::NODE_POOL, Operator::In, &["spillover"]);
    spillover.weight = -1;
    let mut a = with_labels(pod("a", 1000, 256), &[("app", "x")]);
    a.pod_anti_affinity = vec![term(labels::HOSTNAME, "x")];
    let mut b = a.clone();
    b.name = "b".into();
    b.uid = "b".into();
    let solution = solve(
        vec![limited.clone(), spillover],
        Vec::new(),
        vec![a.clone(), b.clone()],
    );
    assert_eq!(claim_of(&solution, "a").unwrap().nodepool, "default");
    assert_eq!(claim_of(&solution, "b").unwrap().nodepool, "spillover");

    let solution = solve(vec![limited], Vec::new(), vec![a, b]);
    let r = reason(&solution, "b");
    assert!(
        r.contains("exceed the nodepool's remaining limits (cpu=0)"),
        "{r}"
    );

    let mut one_node = template(8);
    one_node.limits = Some(Resources::default().with_extended(NODES_LIMIT, 1));
    let mut c = with_labels(pod("c", 100, 64), &[("app", "y")]);
    c.pod_anti_affinity = vec![term(labels::HOSTNAME, "y")];
    let mut d = c.clone();
    d.name = "d".into();
    d.uid = "d".into();
    let solution = solve(vec![one_node], Vec::new(), vec![c, d]);
    assert_eq!(solution.new_claims.len(), 1);
    assert!(reason(&solution, "d").contains("nodes=0"));
}

#[test]
fn min_values_strict_and_best_effort() {
    // Two families; the pool wants three distinct families.
    let types: Vec<Arc<InstanceTypeOption>> = benchmark_instance_types(4)
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let mut it = (*t.instance_type).clone();
            it.family = if i % 2 == 0 { "m5".into() } else { "c5".into() };
            let mut option = (*t).clone();
            option.requirements = type_requirements(&it, &option.offerings).unwrap();
            option.instance_type = Arc::new(it);
            Arc::new(option)
        })
        .collect();
    let mut pool = NodePoolTemplate::new("default", types);
    pool.requirements.add(
        Requirement::new(labels::INSTANCE_FAMILY, Operator::In, ["m5", "c5", "r5"])
            .unwrap()
            .with_min_values(3),
    );
    let solution = solve(vec![pool.clone()], Vec::new(), vec![pod("p", 500, 256)]);
    assert_eq!(
        reason(&solution, "p"),
        "incompatible with nodepool default: minValues: karpenter.k8s.aws/instance-family needs 3 distinct values, \
         only 2 remain among the instance types that fit"
    );
    let options = SchedulerOptions {
        min_values_policy: MinValuesPolicy::BestEffort,
        ..SchedulerOptions::default()
    };
    let solution = solve_with(
        vec![pool],
        Vec::new(),
        Vec::new(),
        options,
        vec![pod("p", 500, 256)],
    );
    assert!(solution.new_claims[0].min_values_relaxed);
}

#[test]
fn resource_reasons_name_the_largest_type() {
    let solution = solve(
        vec![template(8)],
        Vec::new(),
        vec![pod("huge", 96_000, 10 * 1024)],
    );
    assert_eq!(
        reason(&solution, "huge"),
        "incompatible with nodepool default: no instance type has 96 vCPU, 10Gi memory, 1 pod: \
         largest allocatable is 7.9 vCPU, 16374Mi memory, 80 pods (fake-it.7)"
    );
    let mut daemon = pod("ds", 250, 64);
    daemon.owner_kind = Some(DAEMONSET_KIND.into());
    let solution = solve_with(
        vec![template(8)],
        Vec::new(),
        vec![daemon],
        SchedulerOptions::default(),
        vec![pod("huge", 8000, 1024)],
    );
    assert!(
        reason(&solution, "huge").ends_with(
            "largest allocatable is 7.65 vCPU, 16310Mi memory, 79 pods (fake-it.7, after DaemonSet overhead of \
             0.25 vCPU, 64Mi memory, 1 pod)"
        ),
        "{}",
        reason(&solution, "huge")
    );
    let mut zone = pod("nowhere", 100, 64);
    zone.node_requirements = vec![
        req(labels::ZONE, Operator::In, &[BENCH_ZONES[2]])
            .with(Requirement::new(labels::CAPACITY_TYPE, Operator::In, ["spot"]).unwrap()),
    ];
    let solution = solve(vec![template(8)], Vec::new(), vec![zone]);
    assert_eq!(
        reason(&solution, "nowhere"),
        "incompatible with nodepool default: no instance type matching the requirements has an available offering \
         in topology.kubernetes.io/zone In [us-west-2c] with karpenter.sh/capacity-type In [spot]"
    );
    let mut family = pod("family", 100, 64);
    family.node_requirements = vec![req(labels::INSTANCE_FAMILY, Operator::In, &["m5"])];
    let solution = solve(vec![template(8)], Vec::new(), vec![family]);
    assert!(
        reason(&solution, "family")
            .contains("no instance type matches the requirements karpenter.k8s.aws/instance-family In [m5]"),
        "{}",
        reason(&solution, "family")
    );
}

#[test]
fn preferences_relax_in_karpenter_order() {
    // Preferred pod affinity to nothing is dropped before the preferred node affinity.
    let mut p = pod("p", 500, 256);
    p.preferred_node_affinity = vec![(10, req(labels::ZONE, Operator::In, &[BENCH_ZONES[1]]))];
    p.preferred_pod_affinity = vec![(50, term(labels::ZONE, "ghost"))];
    let solution = solve(vec![template(8)], Vec::new(), vec![p.clone()]);
    assert_eq!(zone_of(claim_of(&solution, "p").unwrap()), vec![BENCH_ZONES[1]]);

    // An impossible preference is dropped.
    let mut q = pod("q", 500, 256);
    q.preferred_node_affinity = vec![(10, req(labels::ARCH, Operator::In, &["arm64"]))];
    let solution = solve(vec![template(8)], Vec::new(), vec![q]);
    assert!(solution.unschedulable.is_empty());

    // Ignore: preferences never narrow.
    let options = SchedulerOptions {
        preference_policy: PreferencePolicy::Ignore,
        ..SchedulerOptions::default()
    };
    let solution = solve_with(vec![template(8)], Vec::new(), Vec::new(), options, vec![p]);
    assert!(zone_of(claim_of(&solution, "p").unwrap()).is_empty());
}

#[test]
fn truncation_keeps_the_cheapest() {
    let options = SchedulerOptions {
        max_instance_types: 5,
        ..SchedulerOptions::default()
    };
    let solution = solve_with(
        vec![template(40)],
        Vec::new(),
        Vec::new(),
        options,
        vec![pod("p", 1500, 512)],
    );
    let names: Vec<&str> = solution.new_claims[0]
        .instance_types
        .iter()
        .map(|t| t.name())
        .collect();
    assert_eq!(
        names,
        vec!["fake-it.1", "fake-it.2", "fake-it.3", "fake-it.4", "fake-it.5"]
    );
}

#[test]
fn free_pods_fill_existing_nodes_and_headroom() {
    let n = node("n", BENCH_ZONES[0], 1000, 8);
    let mut anchor = with_labels(pod("anchor", 1500, 256), &[("app", "a")]);
    anchor.pod_anti_affinity = vec![term(labels::HOSTNAME, "a")];
    let pods = vec![
        anchor,
        pod("on-node", 900, 256),
        pod("small", 300, 128),
        pod("big", 1900, 256),
    ];
    let solution = solve(vec![template(8)], vec![n], pods);
    assert_eq!(
        solution.existing,
        vec![("default/on-node".to_owned(), "n".to_owned())]
    );
    let a = claim_of(&solution, "anchor").unwrap();
    assert_eq!(
        a.instance_types[0].name(),
        "fake-it.1",
        "the anchor's cheapest type is unchanged"
    );
    assert!(
        a.pods.iter().any(|p| p.name == "small"),
        "small fits the anchor claim's headroom"
    );
    assert!(!a.pods.iter().any(|p| p.name == "big"), "big does not");
    assert_eq!(solution.new_claims.len(), 2);
}

#[test]
fn no_starvation_every_pod_is_evaluated() {
    let mut pods = Vec::new();
    for i in 0..2000 {
        // Every tenth pod can never fit; they are all still evaluated and reported.
        let cpu = if i % 10 == 0 {
            1_000_000
        } else {
            100 + (i % 7) * 100
        };
        let mut p = with_labels(
            pod(&format!("p-{i:04}"), cpu, 128),
            &[("app", &format!("app-{}", i % 13))],
        );
        if i % 3 == 0 {
            p.topology_spread = vec![spread(
                labels::ZONE,
                1,
                &format!("app-{}", i % 13),
                WhenUnsatisfiable::DoNotSchedule,
            )];
        }
        pods.push(p);
    }
    let solution = solve(vec![template(64)], Vec::new(), pods);
    assert_eq!(solution.pods_evaluated, 2000);
    assert_eq!(solution.unschedulable.len(), 200);
    assert_eq!(solution.scheduled(), 1800);
    assert!(
        solution
            .unschedulable
            .iter()
            .all(|(_, r)| r.contains("no instance type has"))
    );
}

#[test]
fn issue_3152_shape_evaluates_every_pod() {
    let shape = issue_3152_shape(3152);
    let mut scheduler = Scheduler::new(
        shape.templates,
        shape.existing,
        shape.daemonsets,
        SchedulerOptions::default(),
    );
    let solution = scheduler.solve(shape.pods);
    assert_eq!(solution.pods_evaluated, 2000);
    assert_eq!(solution.scheduled() + solution.unschedulable.len(), 2000);
    assert!(
        solution.scheduled() > 1900,
        "{:?}",
        &solution.unschedulable[..5.min(solution.unschedulable.len())]
    );
    for claim in &solution.new_claims {
        let team = claim.requirements.get("team").unwrap();
        for p in &claim.pods {
            for term in &p.node_requirements {
                assert!(term.get("team").is_none_or(|t| t.is_compatible(team)));
            }
        }
    }
}

#[test]
fn timeouts_and_daemonset_pods_are_reported() {
    let options = SchedulerOptions {
        timeout: Some(Duration::ZERO),
        ..SchedulerOptions::default()
    };
    let pods: Vec<PodSpec> = (0..100).map(|i| pod(&format!("t-{i:03}"), 100, 64)).collect();
    let solution = solve_with(vec![template(8)], Vec::new(), Vec::new(), options, pods);
    assert!(solution.pods_evaluated < 100);
    assert!(
        solution
            .unschedulable
            .iter()
            .any(|(_, r)| r.contains("timed out"))
    );
    assert_eq!(solution.scheduled() + solution.unschedulable.len(), 100);

    let mut ds = pod("ds", 100, 64);
    ds.owner_kind = Some(DAEMONSET_KIND.into());
    let solution = solve(vec![template(8)], Vec::new(), vec![ds]);
    assert!(reason(&solution, "ds").contains("DaemonSet"));

    let solution = solve(Vec::new(), Vec::new(), vec![pod("lonely", 100, 64)]);
    assert_eq!(
        reason(&solution, "lonely"),
        "fits no existing node and there is no nodepool"
    );
}

#[test]
fn spread_on_any_node_label_key() {
    // Capacity type: spot and on-demand alternate.
    let pods: Vec<PodSpec> = (0..4)
        .map(|i| {
            let mut p = with_labels(pod(&format!("ct-{i}"), 500, 256), &[("app", "ct")]);
            p.topology_spread = vec![spread(
                labels::CAPACITY_TYPE,
                1,
                "ct",
                WhenUnsatisfiable::DoNotSchedule,
            )];
            p
        })
        .collect();
    let solution = solve(vec![template(8)], Vec::new(), pods);
    let mut per_type = BTreeMap::<String, usize>::new();
    for c in &solution.new_claims {
        let ct: Vec<&str> = c
            .requirements
            .get(labels::CAPACITY_TYPE)
            .unwrap()
            .values()
            .collect();
        assert_eq!(ct.len(), 1);
        *per_type.entry(ct[0].to_owned()).or_default() += c.pods.len();
        let (_, offering) = c.cheapest().unwrap();
        assert_eq!(offering.capacity_type.as_str(), ct[0]);
    }
    assert_eq!(per_type.values().copied().collect::<Vec<_>>(), vec![2, 2]);

    // A custom label that two NodePools define differently.
    let rack = |name: &str, value: &str, weight: i32| {
        let mut t = template(8);
        t.name = name.to_owned();
        t.weight = weight;
        t.requirements = req(labels::NODE_POOL, Operator::In, &[name])
            .with(Requirement::new("rack", Operator::In, [value]).unwrap());
        t
    };
    let pods: Vec<PodSpec> = (0..2)
        .map(|i| {
            let mut p = with_labels(pod(&format!("r-{i}"), 500, 256), &[("app", "r")]);
            p.topology_spread = vec![spread("rack", 1, "r", WhenUnsatisfiable::DoNotSchedule)];
            p
        })
        .collect();
    let solution = solve(
        vec![rack("rack-1", "r1", 10), rack("rack-2", "r2", 0)],
        Vec::new(),
        pods,
    );
    let pools: Vec<&str> = solution.new_claims.iter().map(|c| c.nodepool.as_str()).collect();
    assert_eq!(pools, vec!["rack-1", "rack-2"]);
}

#[test]
fn nodepools_by_weight_then_name() {
    let pool = |name: &str, weight: i32| {
        let mut t = template(8);
        t.name = name.to_owned();
        t.weight = weight;
        t.requirements = req(labels::NODE_POOL, Operator::In, &[name]);
        t
    };
    let solution = solve(
        vec![pool("b", 0), pool("a", 0), pool("heavy", 50)],
        Vec::new(),
        vec![pod("p", 100, 64)],
    );
    assert_eq!(solution.new_claims[0].nodepool, "heavy");
    let solution = solve(
        vec![pool("b", 0), pool("a", 0)],
        Vec::new(),
        vec![pod("p", 100, 64)],
    );
    assert_eq!(solution.new_claims[0].nodepool, "a");
}

#[test]
fn pods_being_rescheduled_are_not_counted_where_they_are_bound() {
    // A consolidation simulation passes the pods of a node it removes while they are still
    // bound to it: they must not count against themselves.
    let mut n = node("leaving", BENCH_ZONES[0], 1000, 4);
    let mut solo = with_labels(pod("solo", 100, 64), &[("app", "solo")]);
    solo.pod_anti_affinity = vec![term(labels::HOSTNAME, "solo")];
    solo.node_name = Some("leaving".into());
    n.pods.push(Arc::new(solo.clone()));
    let solution = solve(vec![template(8)], vec![n.clone()], vec![solo]);
    assert_eq!(
        solution.existing,
        vec![("default/solo".to_owned(), "leaving".to_owned())]
    );
    let other = node("other", BENCH_ZONES[1], 4000, 8);
    let mut twin = with_labels(pod("twin", 100, 64), &[("app", "solo")]);
    twin.pod_anti_affinity = vec![term(labels::HOSTNAME, "solo")];
    let mut scheduler = Scheduler::new(
        vec![template(8)],
        vec![n, other],
        Vec::new(),
        SchedulerOptions::default(),
    );
    let bound = scheduler.solve(vec![Arc::new(twin)]);
    assert_eq!(
        bound.existing,
        vec![("default/twin".to_owned(), "other".to_owned())],
        "still counted when not pending"
    );
}
