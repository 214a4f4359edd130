//! Seeded workloads for benchmarks and tests: Karpenter's scheduling microbenchmark
//! (`scheduling_benchmark_test.go`, see `karpenter.md` §6.1) and the shape of
//! kubernetes-sigs/karpenter#3152 (2,000 pending pods, 1,000 nodes, 20 NodePools), where
//! Karpenter's 1-minute timeout left most pods unevaluated.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::catalog::synthetic_type;
use crate::instance_type::{CapacityType, Offering};
use crate::labels;
use crate::node::{Taint, TaintEffect};
use crate::pod::{
    DAEMONSET_KIND, LabelSelector, PodAffinityTerm, PodSpec, Toleration, TopologySpread, WhenUnsatisfiable,
};
use crate::requirements::{Operator, Requirement, Requirements};
use crate::resources::Resources;

use super::existing::ExistingNode;
use super::template::{InstanceTypeOption, NODES_LIMIT, NodePoolTemplate, type_requirements};

/// A small seeded PRNG (SplitMix64): deterministic workloads without a `rand` dependency.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator from a seed.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        (self.next_u64() % n as u64) as usize
    }

    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// The zones of the benchmark's offerings.
pub const BENCH_ZONES: [&str; 3] = ["us-west-2a", "us-west-2b", "us-west-2c"];

const GIB: i64 = 1 << 30;
const MIB: i64 = 1 << 20;

/// Karpenter's `fake.InstanceTypes(count)`: type `i` (`fake-it.<i>`) has `i+1` vCPU,
/// `2(i+1)` GiB and `10(i+1)` pods; allocatable holds back 100m CPU and 10Mi memory (the
/// fake's kube-reserved); spot offerings in the first two zones and on-demand in all three,
/// priced `0.1 × vCPU + 0.1 × GB` (spot = on-demand).
pub fn benchmark_instance_types(count: usize) -> Vec<Arc<InstanceTypeOption>> {
    (0..count)
        .filter_map(|i| {
            let vcpus = (i + 1) as u32;
            let memory = 2 * (i as i64 + 1) * GIB;
            let instance_type = synthetic_type(&format!("fake-it.{i}"), vcpus, (memory / MIB) as u64).ok()?;
            let price = 0.1 * f64::from(vcpus) + 0.1 * memory as f64 / 1e9;
            let mut offerings = Vec::new();
            for (z, zone) in BENCH_ZONES.iter().enumerate() {
                if z < 2 {
                    offerings.push(Offering {
                        zone: (*zone).to_owned(),
                        capacity_type: CapacityType::Spot,
                        price,
                        available: true,
                    });
                }
                offerings.push(Offering {
                    zone: (*zone).to_owned(),
                    capacity_type: CapacityType::OnDemand,
                    price,
                    available: true,
                });
            }
            let requirements = type_requirements(&instance_type, &offerings).ok()?;
            let capacity = Resources::new(i64::from(vcpus) * 1000, memory).with_pods(10 * (i as i64 + 1));
            let allocatable =
                Resources::new(capacity.cpu_millis - 100, memory - 10 * MIB).with_pods(capacity.pods);
            Some(Arc::new(InstanceTypeOption {
                instance_type: Arc::new(instance_type),
                requirements,
                capacity,
                allocatable,
                offerings,
            }))
        })
        .collect()
}

const CPU_CHOICES: [i64; 5] = [100, 250, 500, 1000, 1500];
const MEMORY_CHOICES_MIB: [i64; 6] = [100, 256, 512, 1024, 2048, 4096];
const LABEL_VALUES: [&str; 7] = ["a", "b", "c", "d", "e", "f", "g"];

fn random_requests(rng: &mut SplitMix64) -> Resources {
    let cpu = *rng.pick(&CPU_CHOICES);
    let memory = *rng.pick(&MEMORY_CHOICES_MIB) * MIB;
    Resources::new(cpu, memory).with_pods(1)
}

fn labels_of(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn bench_pod(i: usize, labels: BTreeMap<String, String>, requests: Resources) -> PodSpec {
    let mut pod = PodSpec::new("default", format!("pod-{i:05}"), requests);
    pod.uid = format!("uid-{i:05}");
    pod.labels = labels;
    pod.created_unix_ms = i as i64;
    pod.owner_kind = Some("ReplicaSet".into());
    pod
}

/// The workload of Karpenter's scheduling benchmark: one NodePool (`default`, no limits)
/// over [`benchmark_instance_types`]`(400)`, and `pods` pods split evenly (the remainder
/// generic) into generic pods, zonal topology spread (maxSkew 1), hostname topology spread
/// (maxSkew 1), zonal pod affinity and hostname pod anti-affinity. As in Karpenter, spread
/// and generic pods carry `my-label` and select on it, affinity pods carry and select
/// `my-affinity` (values `a`–`g` drawn independently), and anti-affinity pods all carry and
/// select `app=nginx` (one node each). Requests: CPU from {100, 250, 500, 1000, 1500}m,
/// memory from {100, 256, 512, 1024, 2048, 4096}Mi.
pub fn karpenter_benchmark(pods: usize, seed: u64) -> (Vec<NodePoolTemplate>, Vec<Arc<PodSpec>>) {
    let template = NodePoolTemplate::new("default", benchmark_instance_types(400));
    let mut rng = SplitMix64::new(seed);
    let fifth = pods / 5;
    let mut out = Vec::with_capacity(pods);
    let mut add = |pod: PodSpec| out.push(Arc::new(pod));
    let mut i = 0;
    let generic = pods - 4 * fifth;
    for _ in 0..generic {
        let label = labels_of(&[("my-label", *rng.pick(&LABEL_VALUES))]);
        add(bench_pod(i, label, random_requests(&mut rng)));
        i += 1;
    }
    for key in [labels::ZONE, labels::HOSTNAME] {
        for _ in 0..fifth {
            let label = labels_of(&[("my-label", *rng.pick(&LABEL_VALUES))]);
            let selector = LabelSelector::labels([("my-label", *rng.pick(&LABEL_VALUES))]);
            let mut pod = bench_pod(i, label, random_requests(&mut rng));
            pod.topology_spread.push(TopologySpread {
                topology_key: key.to_owned(),
                max_skew: 1,
                min_domains: None,
                when_unsatisfiable: WhenUnsatisfiable::DoNotSchedule,
                selector,
            });
            add(pod);
            i += 1;
        }
    }
    for _ in 0..fifth {
        let label = labels_of(&[("my-affinity", *rng.pick(&LABEL_VALUES))]);
        let selector = LabelSelector::labels([("my-affinity", *rng.pick(&LABEL_VALUES))]);
        let mut pod = bench_pod(i, label, random_requests(&mut rng));
        pod.pod_affinity.push(PodAffinityTerm {
            topology_key: labels::ZONE.to_owned(),
            selector,
            namespaces: Vec::new(),
        });
        add(pod);
        i += 1;
    }
    for _ in 0..fifth {
        let mut pod = bench_pod(i, labels_of(&[("app", "nginx")]), random_requests(&mut rng));
        pod.pod_anti_affinity.push(PodAffinityTerm {
            topology_key: labels::HOSTNAME.to_owned(),
            selector: LabelSelector::labels([("app", "nginx")]),
            namespaces: Vec::new(),
        });
        add(pod);
        i += 1;
    }
    (vec![template], out)
}

/// The inputs of a solve shaped like kubernetes-sigs/karpenter#3152.
#[derive(Debug, Clone)]
pub struct Issue3152 {
    /// 20 NodePools.
    pub templates: Vec<NodePoolTemplate>,
    /// 1,000 nodes, mostly full.
    pub existing: Vec<ExistingNode>,
    /// Three DaemonSets.
    pub daemonsets: Vec<PodSpec>,
    /// 2,000 pending pods.
    pub pods: Vec<Arc<PodSpec>>,
}

const TEAMS: usize = 10;

fn team(k: usize) -> String {
    format!("team-{k}")
}

/// A solve shaped like kubernetes-sigs/karpenter#3152: 20 NodePools (teams 0–9, spot and
/// on-demand, every fourth tainted for its team, half capped at 64 vCPU per node, limits
/// left), 1,000 existing nodes ~90% full with bound pods (some with hostname anti-affinity),
/// 3 DaemonSets and 2,000 pending pods: small pods pinned to a team, zonal spread pods,
/// hostname anti-affinity pods and large pods.
pub fn issue_3152_shape(seed: u64) -> Issue3152 {
    let mut rng = SplitMix64::new(seed);
    let types = benchmark_instance_types(400);
    let mut templates = Vec::new();
    for i in 0..20 {
        let name = format!("pool-{i:02}");
        let mut t = NodePoolTemplate::new(&name, types.clone());
        let k = i % TEAMS;
        t.weight = if i < 10 { 10 } else { 0 };
        t.labels.insert("team".into(), team(k));
        let capacity_type = if i % 2 == 0 { "spot" } else { "on-demand" };
        for r in [
            Requirement::new("team", Operator::In, [team(k)]),
            Requirement::new(labels::CAPACITY_TYPE, Operator::In, [capacity_type]),
        ]
        .into_iter()
        .flatten()
        {
            t.requirements.add(r);
        }
        if i % 2 == 1
            && let Ok(r) = Requirement::new(labels::INSTANCE_CPU, Operator::Lt, ["65"])
        {
            t.requirements.add(r);
        }
        if i % 4 == 0 {
            t.taints
                .push(Taint::new("dedicated", team(k), TaintEffect::NoSchedule));
        }
        t.limits = Some(Resources::new(2_000_000, 8000 * GIB).with_extended(NODES_LIMIT, 400));
        templates.push(t);
    }
    let daemonsets = {
        let ds = |name: &str, cpu: i64, memory: i64| {
            let mut pod = PodSpec::new("kube-system", name, Resources::new(cpu, memory * MIB));
            pod.owner_kind = Some(DAEMONSET_KIND.into());
            pod.tolerations.push(Toleration::exists(None, None));
            pod
        };
        let mut amd64 = ds("node-exporter", 50, 64);
        amd64.node_requirements = vec![
            Requirements::new().with(
                Requirement::new(labels::ARCH, Operator::In, ["amd64"])
                    .unwrap_or_else(|_| Requirement::exists(labels::ARCH)),
            ),
        ];
        vec![ds("aws-node", 25, 128), ds("kube-proxy", 100, 128), amd64]
    };
    let mut existing = Vec::new();
    let mut pod_id = 0usize;
    for n in 0..1000 {
        let pool = n % 20;
        let k = pool % TEAMS;
        let option = &types[8 + rng.below(56)];
        let zone = BENCH_ZONES[rng.below(if pool % 2 == 0 { 2 } else { 3 })];
        let capacity_type = if pool % 2 == 0 {
            CapacityType::Spot
        } else {
            CapacityType::OnDemand
        };
        let name = format!("node-{n:04}");
        let mut node_labels =
            labels::instance_type_labels(&option.instance_type, zone, capacity_type).unwrap_or_default();
        node_labels.insert(labels::NODE_POOL.into(), templates[pool].name.clone());
        node_labels.insert("team".into(), team(k));
        node_labels.insert(labels::HOSTNAME.into(), name.clone());
        let mut node = ExistingNode::new(name, node_labels, option.allocatable.clone());
        node.nodepool = Some(templates[pool].name.clone());
        node.taints = templates[pool].taints.clone();
        // Fill ~90% of the CPU (daemons included).
        let budget = option.allocatable.cpu_millis * 9 / 10 - 175;
        let mut used = 0;
        while used < budget {
            let mut requests = random_requests(&mut rng);
            requests.cpu_millis = requests.cpu_millis.min(budget - used).max(50);
            used += requests.cpu_millis;
            let mut pod = PodSpec::new(format!("ns-{k}"), format!("bound-{pod_id:06}"), requests);
            pod.labels = labels_of(&[("app", &format!("web-{}", rng.below(20)))]);
            pod.node_name = Some(node.name.clone());
            pod.tolerations = vec![Toleration::exists(Some("dedicated"), None)];
            if rng.below(10) == 0 {
                let app = format!("db-{}", rng.below(5));
                pod.labels = labels_of(&[("app", &app)]);
                pod.pod_anti_affinity.push(PodAffinityTerm {
                    topology_key: labels::HOSTNAME.into(),
                    selector: LabelSelector::labels([("app", app.as_str())]),
                    namespaces: Vec::new(),
                });
            }
            node.pods.push(Arc::new(pod));
            pod_id += 1;
        }
        existing.push(node);
    }
    let mut pods = Vec::new();
    for i in 0..2000 {
        let k = rng.below(TEAMS);
        let roll = rng.below(10);
        let mut requests = random_requests(&mut rng);
        if roll == 9 {
            requests.cpu_millis = 4000 * (1 + rng.below(4)) as i64;
            requests.memory_bytes = 8 * GIB * (1 + rng.below(4)) as i64;
        }
        let mut pod = PodSpec::new(format!("ns-{k}"), format!("pending-{i:05}"), requests);
        pod.uid = format!("pending-uid-{i:05}");
        pod.created_unix_ms = 1_000_000 + i as i64;
        pod.owner_kind = Some("ReplicaSet".into());
        pod.tolerations = vec![Toleration::equal(
            "dedicated",
            team(k),
            Some(TaintEffect::NoSchedule),
        )];
        pod.labels = labels_of(&[("app", &format!("web-{}", rng.below(20)))]);
        match roll {
            0..=5 => {
                if let Ok(r) = Requirement::new("team", Operator::In, [team(k)]) {
                    pod.node_requirements = vec![Requirements::new().with(r)];
                }
            }
            6 | 7 => pod.topology_spread.push(TopologySpread {
                topology_key: labels::ZONE.into(),
                max_skew: 1,
                min_domains: None,
                when_unsatisfiable: WhenUnsatisfiable::DoNotSchedule,
                selector: LabelSelector::labels([("app", pod.labels["app"].as_str())]),
            }),
            8 => {
                let app = format!("db-{}", rng.below(5));
                pod.labels = labels_of(&[("app", &app)]);
                pod.pod_anti_affinity.push(PodAffinityTerm {
                    topology_key: labels::HOSTNAME.into(),
                    selector: LabelSelector::labels([("app", app.as_str())]),
                    namespaces: Vec::new(),
                });
            }
            _ => {}
        }
        pods.push(Arc::new(pod));
    }
    Issue3152 {
        templates,
        existing,
        daemonsets,
        pods,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_is_deterministic() {
        let mut a = SplitMix64::new(42);
        let mut b = SplitMix64::new(42);
        let xs: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..5).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs[0], xs[1]);
        assert!((0..100).all(|_| a.below(7) < 7));
        assert_eq!(a.below(0), 0);
    }

    #[test]
    fn benchmark_types_follow_karpenter() {
        let types = benchmark_instance_types(400);
        assert_eq!(types.len(), 400);
        let t9 = &types[9];
        assert_eq!(t9.capacity.cpu_millis, 10_000);
        assert_eq!(t9.capacity.memory_bytes, 20 * GIB);
        assert_eq!(t9.capacity.pods, 100);
        assert_eq!(t9.offerings.len(), 5);
        assert_eq!(
            t9.offerings
                .iter()
                .filter(|o| o.capacity_type == CapacityType::Spot)
                .count(),
            2
        );
        assert!((t9.offerings[0].price - (1.0 + 0.1 * 20.0 * GIB as f64 / 1e9)).abs() < 1e-9);
    }

    #[test]
    fn benchmark_mix() {
        let (templates, pods) = karpenter_benchmark(1003, 7);
        assert_eq!(templates.len(), 1);
        assert_eq!(pods.len(), 1003);
        let spread = pods.iter().filter(|p| !p.topology_spread.is_empty()).count();
        let affinity = pods.iter().filter(|p| !p.pod_affinity.is_empty()).count();
        let anti = pods.iter().filter(|p| !p.pod_anti_affinity.is_empty()).count();
        assert_eq!((spread, affinity, anti), (400, 200, 200));
        let (_, again) = karpenter_benchmark(1003, 7);
        assert_eq!(pods, again, "seeded");
    }

    #[test]
    fn issue_3152_sizes() {
        let shape = issue_3152_shape(1);
        assert_eq!(shape.templates.len(), 20);
        assert_eq!(shape.existing.len(), 1000);
        assert_eq!(shape.pods.len(), 2000);
        assert_eq!(shape.daemonsets.len(), 3);
        assert!(shape.existing.iter().all(|n| !n.pods.is_empty()));
    }
}
