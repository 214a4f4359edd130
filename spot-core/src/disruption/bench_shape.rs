//! A generated cluster for consolidation benchmarks and tests: [`cluster`]`(nodes, seed)`.
//!
//! - 60 instance types: 12 families (`m5`, `m5a`, `m6i`, `m6a`, `c5`, `c5a`, `c6i`, `c6a`,
//!   `r5`, `r5a`, `r6i`, `r6a`; 2, 4 and 8 GiB per vCPU) × 5 sizes (`large` to `8xlarge`),
//!   in three zones; on-demand prices from the family's rate per vCPU and GiB, spot at a
//!   seeded 30–45 % of that per zone.
//! - Three NodePools: `general` (every family, spot; `WhenEmptyOrUnderutilized`), `compute`
//!   (c families, spot and on-demand; `WhenEmptyOrUnderutilized`) and `memory` (r families,
//!   on-demand; `Balanced`); default budgets (10 %).
//! - Two DaemonSets on every node (100m/128Mi and 200m/256Mi).
//! - `nodes` nodes of seeded types, zones and pools, 5–30 pods each: 90 % filled to
//!   95–99 % of their CPU and memory, 7 % to 80–94 %, 3 % to 20–50 % ([`steady_state`]:
//!   all to 97–99 %, no empty node). Pods belong to 40
//!   apps: 60 % of the apps are unconstrained, 15 % spread across zones with `maxSkew` 1
//!   and `ScheduleAnyway`, 10 % with `maxSkew` 10 and `DoNotSchedule`, and 15 % have
//!   hostname anti-affinity within their app. A few nodes (1 %) hold only DaemonSet pods,
//!   and 5 % had a pod event inside their `consolidateAfter` window.
//!
//! Every node is a valid candidate, created 1–20 days before [`NOW`] with `expireAfter`
//! 720h.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use time::macros::datetime;

use super::candidate::Candidate;
use super::cluster::{ClusterState, ConsolidationPolicy, PoolPolicy};
use crate::allocatable::AllocatableModel;
use crate::catalog::synthetic_type;
use crate::instance_type::{CapacityType, Offering};
use crate::labels;
use crate::pod::{
    DAEMONSET_KIND, LabelSelector, PodAffinityTerm, PodSpec, TopologySpread, WhenUnsatisfiable,
};
use crate::requirements::{Operator, Requirement};
use crate::resources::Resources;
use crate::scheduling::bench_shape::SplitMix64;
use crate::scheduling::{ExistingNode, InstanceTypeOption, NodePoolTemplate};

/// The time the generated cluster is seen at.
pub const NOW: OffsetDateTime = datetime!(2026-06-01 00:00 UTC);

/// The zones of the generated offerings.
pub const ZONES: [&str; 3] = ["us-east-1a", "us-east-1b", "us-east-1c"];

const MIB: i64 = 1 << 20;

/// (family, GiB per vCPU, on-demand USD per vCPU-hour).
const FAMILIES: [(&str, u64, f64); 12] = [
    ("m5", 4, 0.048),
    ("m5a", 4, 0.043),
    ("m6i", 4, 0.048),
    ("m6a", 4, 0.0432),
    ("c5", 2, 0.0425),
    ("c5a", 2, 0.0385),
    ("c6i", 2, 0.0425),
    ("c6a", 2, 0.0383),
    ("r5", 8, 0.063),
    ("r5a", 8, 0.0565),
    ("r6i", 8, 0.063),
    ("r6a", 8, 0.0567),
];

const SIZES: [(&str, u32); 5] = [
    ("large", 2),
    ("xlarge", 4),
    ("2xlarge", 8),
    ("4xlarge", 16),
    ("8xlarge", 32),
];

/// The generated instance types, with seeded spot prices.
pub fn instance_types(seed: u64) -> Vec<Arc<InstanceTypeOption>> {
    let mut rng = SplitMix64::new(seed ^ 0x5eed_7e57);
    let model = AllocatableModel::default();
    let mut out = Vec::new();
    for (family, gib_per_vcpu, rate) in FAMILIES {
        for (size, vcpus) in SIZES {
            let name = format!("{family}.{size}");
            let Ok(t) = synthetic_type(&name, vcpus, u64::from(vcpus) * gib_per_vcpu * 1024) else {
                continue;
            };
            let on_demand = f64::from(vcpus) * rate;
            let mut offerings = Vec::new();
            for zone in ZONES {
                let discount = 0.30 + (rng.below(16) as f64) / 100.0;
                offerings.push(Offering {
                    zone: zone.to_owned(),
                    capacity_type: CapacityType::Spot,
                    price: (on_demand * discount * 10_000.0).round() / 10_000.0,
                    available: true,
                });
                offerings.push(Offering {
                    zone: zone.to_owned(),
                    capacity_type: CapacityType::OnDemand,
                    price: on_demand,
                    available: true,
                });
            }
            if let Ok(option) = InstanceTypeOption::new(Arc::new(t), &model, offerings) {
                out.push(Arc::new(option));
            }
        }
    }
    out
}

/// The DaemonSets of the generated cluster.
pub fn daemonsets() -> Vec<PodSpec> {
    [("kube-proxy", 100, 128), ("log-agent", 200, 256)]
        .into_iter()
        .map(|(name, cpu, mem)| {
            let mut pod = PodSpec::new("kube-system", name, Resources::new(cpu, mem * MIB));
            pod.owner_kind = Some(DAEMONSET_KIND.to_owned());
            pod
        })
        .collect()
}

fn requirement(key: &str, values: &[&str]) -> Requirement {
    Requirement::new(key, Operator::In, values.iter().copied()).unwrap_or_else(|_| Requirement::exists(key))
}

/// The three NodePools over the types.
fn templates(types: &[Arc<InstanceTypeOption>]) -> Vec<NodePoolTemplate> {
    let of = |prefix: &str| -> Vec<Arc<InstanceTypeOption>> {
        types
            .iter()
            .filter(|t| t.instance_type.family.starts_with(prefix))
            .cloned()
            .collect()
    };
    let mut general = NodePoolTemplate::new("general", types.to_vec());
    general
        .requirements
        .add(requirement(labels::CAPACITY_TYPE, &["spot"]));
    let mut compute = NodePoolTemplate::new("compute", of("c"));
    compute
        .requirements
        .add(requirement(labels::CAPACITY_TYPE, &["spot", "on-demand"]));
    compute
        .requirements
        .add(requirement(labels::INSTANCE_CATEGORY, &["c"]));
    compute.weight = 10;
    let mut memory = NodePoolTemplate::new("memory", of("r"));
    memory
        .requirements
        .add(requirement(labels::CAPACITY_TYPE, &["on-demand"]));
    memory
        .requirements
        .add(requirement(labels::INSTANCE_CATEGORY, &["r"]));
    memory.weight = 20;
    vec![general, compute, memory]
}

/// One app's pod template: its constraint.
#[derive(Clone, Copy, PartialEq)]
enum Shape {
    Free,
    SoftZoneSpread,
    HardZoneSpread,
    HostnameAnti,
}

/// A generated cluster of `nodes` nodes (see the [module documentation](self)), with room
/// to consolidate: most candidates' pods fit in the others' free capacity.
pub fn cluster(nodes: usize, seed: u64) -> ClusterState {
    generate(nodes, seed, &[(90, 95, 99), (7, 80, 94), (3, 20, 50)], 10)
}

/// A generated cluster in steady state: every node filled to 97–99 % of its CPU and memory,
/// no empty node, so pods rarely fit elsewhere and consolidation mostly weighs
/// replacements.
pub fn steady_state(nodes: usize, seed: u64) -> ClusterState {
    generate(nodes, seed, &[(100, 97, 99)], 0)
}

/// `fills`: (share of nodes in percent, lowest and highest fill in percent); `empty`: empty
/// nodes per thousand.
fn generate(nodes: usize, seed: u64, fills: &[(usize, i64, i64)], empty: usize) -> ClusterState {
    let mut rng = SplitMix64::new(seed);
    let types = instance_types(seed);
    let templates = templates(&types);
    let daemonsets = daemonsets();
    let daemon_requests = daemonsets.iter().fold(Resources::default(), |sum, d| {
        sum.checked_add(&d.requests).unwrap_or(sum)
    });
    let shapes: Vec<Shape> = (0..40)
        .map(|app| match app % 20 {
            0..12 => Shape::Free,
            12..15 => Shape::SoftZoneSpread,
            15..17 => Shape::HardZoneSpread,
            _ => Shape::HostnameAnti,
        })
        .collect();

    let mut cluster = ClusterState {
        templates: templates.clone(),
        daemonsets: daemonsets.clone(),
        ..ClusterState::default()
    };
    let mut pool_counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut serial = 0usize;
    for n in 0..nodes {
        let template = &templates[rng.below(templates.len())];
        let option = rng.pick(&template.instance_types).clone();
        let zone = *rng.pick(&ZONES);
        let allowed = |ct: CapacityType| {
            template
                .requirements
                .get(labels::CAPACITY_TYPE)
                .is_none_or(|r| r.has(ct.as_str()))
        };
        let capacity_type =
            if allowed(CapacityType::Spot) && (rng.below(10) < 8 || !allowed(CapacityType::OnDemand)) {
                CapacityType::Spot
            } else {
                CapacityType::OnDemand
            };
        let price = option
            .offerings
            .iter()
            .find(|o| o.zone == zone && o.capacity_type == capacity_type)
            .map_or(0.0, |o| o.price);
        let name = format!("node-{n:05}");
        let mut node_labels =
            labels::instance_type_labels(&option.instance_type, zone, capacity_type).unwrap_or_default();
        node_labels.insert(labels::NODE_POOL.to_owned(), template.name.clone());
        node_labels.insert(labels::HOSTNAME.to_owned(), name.clone());

        let mut pods: Vec<Arc<PodSpec>> = daemonsets
            .iter()
            .map(|d| {
                let mut pod = d.clone();
                pod.name = format!("{}-{name}", d.name);
                pod.uid = format!("kube-system/{}", pod.name);
                pod.node_name = Some(name.clone());
                Arc::new(pod)
            })
            .collect();
        let room = option.allocatable.saturating_sub(&daemon_requests);
        let empty = rng.below(1000) < empty;
        let mut draw = rng.below(100);
        let (low, high) = fills
            .iter()
            .find(|(share, ..)| {
                let hit = draw < *share;
                draw = draw.saturating_sub(*share);
                hit
            })
            .map_or((95, 99), |&(_, low, high)| (low, high));
        let fill = low + rng.below((high - low + 1) as usize) as i64;
        let count = 5 + rng.below(26);
        let (cpu_budget, mem_budget) = (room.cpu_millis * fill / 100, room.memory_bytes * fill / 100);
        let mut used = Resources::default();
        let mut hostname_apps = Vec::new();
        for k in 0..if empty { 0 } else { count } {
            // Each pod takes a jittered share of what is left; the last takes the rest.
            let left = (count - k) as i64;
            let jitter = if left == 1 { 100 } else { 70 + rng.below(61) as i64 };
            let share = |budget: i64, used: i64, unit: i64| {
                ((budget - used) / left * jitter / 100 / unit).max(1) * unit
            };
            let cpu = share(cpu_budget, used.cpu_millis, 10);
            let mem = share(mem_budget, used.memory_bytes, MIB);
            let requests = Resources::new(cpu, mem).with_pods(1);
            let total = used.checked_add(&requests).unwrap_or_default();
            if !total.fits_in(&room) || total.cpu_millis > cpu_budget || total.memory_bytes > mem_budget {
                continue;
            }
            let mut app = rng.below(shapes.len());
            if shapes[app] == Shape::HostnameAnti && hostname_apps.contains(&app) {
                app = 0;
            }
            serial += 1;
            let mut pod = PodSpec::new("apps", format!("app-{app}-{serial:06}"), requests);
            pod.labels.insert("app".to_owned(), format!("app-{app}"));
            pod.owner_kind = Some("ReplicaSet".to_owned());
            pod.node_name = Some(name.clone());
            pod.created_unix_ms = (NOW.unix_timestamp() - 86_400) * 1000;
            let selector = LabelSelector::labels([("app", format!("app-{app}"))]);
            match shapes[app] {
                Shape::Free => {}
                Shape::SoftZoneSpread | Shape::HardZoneSpread => pod.topology_spread.push(TopologySpread {
                    topology_key: labels::ZONE.to_owned(),
                    max_skew: if shapes[app] == Shape::SoftZoneSpread {
                        1
                    } else {
                        10
                    },
                    min_domains: None,
                    when_unsatisfiable: if shapes[app] == Shape::SoftZoneSpread {
                        WhenUnsatisfiable::ScheduleAnyway
                    } else {
                        WhenUnsatisfiable::DoNotSchedule
                    },
                    selector,
                }),
                Shape::HostnameAnti => {
                    hostname_apps.push(app);
                    pod.pod_anti_affinity.push(PodAffinityTerm {
                        topology_key: labels::HOSTNAME.to_owned(),
                        selector,
                        namespaces: Vec::new(),
                    });
                }
            }
            used = total;
            pods.push(Arc::new(pod));
        }

        let recent = rng.below(20) == 0;
        if recent {
            cluster.non_destinations.insert(name.clone());
        }
        *pool_counts.entry(template.name.clone()).or_default() += 1;
        let created = NOW - time::Duration::hours(24 + rng.below(19 * 24) as i64);
        cluster.candidates.push(Candidate {
            node_name: name.clone(),
            nodepool: template.name.clone(),
            instance_type: option.name().to_owned(),
            zone: zone.to_owned(),
            capacity_type,
            price,
            pods: pods.clone(),
            initialized: true,
            created,
            expire_after: Some(Duration::from_secs(720 * 3600)),
            consolidatable: !recent,
            do_not_disrupt: false,
            nominated: false,
            deleting: false,
            drifted: None,
        });
        cluster.nodes.push(ExistingNode {
            name,
            labels: node_labels,
            taints: Vec::new(),
            allocatable: option.allocatable.clone(),
            pods,
            initialized: true,
            nodepool: Some(template.name.clone()),
            in_flight: None,
        });
    }
    cluster.pools = templates
        .iter()
        .map(|t| {
            let mut pool = PoolPolicy::new(t.name.clone(), pool_counts.get(&t.name).copied().unwrap_or(0));
            if t.name == "memory" {
                pool.consolidation_policy = ConsolidationPolicy::Balanced;
            }
            pool
        })
        .collect();
    cluster
}
