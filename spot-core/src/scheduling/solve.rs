//! The solve loop: placing pending pods on existing nodes, on NodeClaims of this solve, and
//! on new NodeClaims, with Karpenter's order, constraints and relaxation; then packing the
//! unconstrained rest for cost and right-sizing every claim.

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

use crate::labels;
use crate::node::{Taint, TaintEffect};
use crate::pod::{HostPort, PodSpec, Toleration, TolerationOperator, taint_to_string};
use crate::requirements::{Requirement, Requirements};
use crate::resources::Resources;

use super::claim::{Claim, NewNodeClaim};
use super::existing::{ExistingNode, Prepared, without_hostname};
use super::intern::{Bits, Dims, FxMap, Mode, NO_REQS, ReqId, ReqTable, add_into, fits, fx_hash, sum_fits};
use super::preferences::{Relax, Shape};
use super::template::{IndexCache, InstanceTypeOption, LimitDim, NodePoolTemplate, Tpl};
use super::topology::{GroupSpec, Kind, NO_SET, NodeView, TopoAttempt, Topology};
use super::{MinValuesPolicy, SchedulerOptions};

/// The scheduling simulation (see the [module documentation](super)).
///
/// Built once from the NodePools, existing nodes and DaemonSets (instance types are indexed
/// and DaemonSet overhead computed here); every [`Scheduler::solve`] starts from that
/// state, so solves can be repeated.
#[derive(Debug, Clone)]
pub struct Scheduler {
    templates: Vec<Tpl>,
    existing: Vec<Prepared>,
    dims: Dims,
    options: SchedulerOptions,
    tolerate_prefer_no_schedule: bool,
}

/// The outcome of a solve.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Solution {
    /// Pods placed on existing nodes (or in-flight claims): (pod key, node name).
    pub existing: Vec<(String, String)>,
    /// NodeClaims to create.
    pub new_claims: Vec<NewNodeClaim>,
    /// Pods that fit nowhere: (pod key, reason naming the constraint that failed).
    pub unschedulable: Vec<(String, String)>,
    /// How many pending pods were tried at least once (all of them unless the solve timed
    /// out).
    pub pods_evaluated: usize,
}

impl Solution {
    /// How many pods were placed (on existing nodes or new claims).
    pub fn scheduled(&self) -> usize {
        self.existing.len() + self.new_claims.iter().map(|c| c.pods.len()).sum::<usize>()
    }

    /// The total price per hour of the new claims (cheapest offering of each).
    pub fn new_claims_price(&self) -> f64 {
        self.new_claims.iter().map(NewNodeClaim::price).sum()
    }
}

impl Scheduler {
    /// Prepares a scheduler: NodePools are ordered by weight (then name) and their instance
    /// types filtered to those they can launch; existing nodes are ordered initialized first,
    /// then by name.
    pub fn new(
        templates: Vec<NodePoolTemplate>,
        existing: Vec<ExistingNode>,
        daemonsets: Vec<PodSpec>,
        options: SchedulerOptions,
    ) -> Scheduler {
        let dims = Dims::collect(
            templates
                .iter()
                .flat_map(|t| t.instance_types.iter().map(|o| &o.allocatable))
                .chain(daemonsets.iter().map(|d| &d.requests))
                .chain(existing.iter().map(|n| &n.allocatable)),
        );
        let mut templates = templates;
        templates.sort_by(|a, b| b.weight.cmp(&a.weight).then_with(|| a.name.cmp(&b.name)));
        let mut prepared: Vec<Prepared> = existing
            .into_iter()
            .map(|n| Prepared::build(n, &templates, &daemonsets, &dims))
            .collect();
        prepared.sort_by(|a, b| {
            b.node
                .initialized
                .cmp(&a.node.initialized)
                .then_with(|| a.node.name.cmp(&b.node.name))
        });
        let mut index_cache = IndexCache::default();
        let templates: Vec<Tpl> = templates
            .into_iter()
            .map(|t| Tpl::build(t, &dims, &daemonsets, &mut index_cache))
            .collect();
        let tolerate_prefer_no_schedule = templates.iter().any(|t| t.prefer_no_schedule);
        Scheduler {
            templates,
            existing: prepared,
            dims,
            options,
            tolerate_prefer_no_schedule,
        }
    }

    /// The options.
    pub fn options(&self) -> &SchedulerOptions {
        &self.options
    }

    /// Places the pending pods. DaemonSet pods are not provisioned for (they are reported
    /// unschedulable with that reason).
    pub fn solve(&mut self, pods: Vec<Arc<PodSpec>>) -> Solution {
        Solve::new(self, pods).run()
    }
}

/// Why a pod did not fit a NodePool (rendered into a reason at the end).
#[derive(Debug, Clone)]
enum Failure {
    /// A pod-level reason, not about any NodePool.
    Pod(String),
    /// A taint of the taint set (set, index) is not tolerated.
    Taint(u32, u32),
    /// A host port is taken (by a DaemonSet).
    HostPort(HostPort),
    /// The pod requires a hostname.
    Hostname(String),
    /// Incompatible requirements (the table's error index).
    Requirements(u32),
    /// A topology group refuses.
    Topology(u32),
    /// No instance type is left: requirements, offerings or resources.
    Types { reqs: ReqId, requests: Vec<i64> },
    /// `minValues` cannot be met.
    MinValues { key: String, min: u32, have: usize },
    /// Every instance type exceeds the NodePool's remaining limits.
    Limits,
    /// The NodePool has no launchable instance type.
    NoTypes,
    /// A claim of this solve rejected the pod in a quick check (never reported).
    Skipped,
}

/// Why a pod fits no NodePool: per NodePool (`None`: about the pod itself).
type Failures = Vec<(Option<usize>, Failure)>;

/// Packed bins: (bin type, item indices).
type Bins = Vec<(usize, Vec<usize>)>;

/// A successful fit on a claim.
#[derive(Debug)]
struct Fit {
    reqs: ReqId,
    /// The types that still fit; `None`: the claim's list is kept as it is (a superset:
    /// types that no longer fit are dropped lazily, see [`Solve::try_claim`]).
    types: Option<Vec<u16>>,
    requests: Vec<i64>,
    relaxed: bool,
}

/// Everything the solve knows about a pending pod.
#[derive(Debug)]
struct PodInfo {
    spec: Arc<PodSpec>,
    /// Required node-affinity terms (hostname removed); empty: no constraint.
    terms: Vec<ReqId>,
    /// The hostname requirement of each term.
    hostname_terms: Vec<Option<Requirement>>,
    /// Preferred node-affinity terms, heaviest first.
    preferred: Vec<ReqId>,
    tol: u32,
    spread: Vec<(u32, bool)>,
    affinity: Vec<u32>,
    anti: Vec<u32>,
    pref_affinity: Vec<u32>,
    pref_anti: Vec<u32>,
    /// Non-inverse groups that select the pod (sorted).
    selected_by: Rc<[u32]>,
    /// Inverse anti-affinity groups that select the pod.
    inverse_selecting: Rc<[u32]>,
    /// Inverse anti-affinity groups the pod owns.
    inverse_owned: Rc<[u32]>,
    shape: Shape,
    free: bool,
    blocked: Option<Failure>,
}

/// One scheduling attempt of a pod at a relaxation level.
#[derive(Debug)]
struct Attempt {
    pod: u32,
    req: Vec<i64>,
    node_req: ReqId,
    hostname: Option<Requirement>,
    tol: u32,
    pns: bool,
    ports: Vec<HostPort>,
    topo: TopoAttempt,
    hopeless: Option<u32>,
    /// Per template: its taints tolerated, or the index of the first that is not.
    tpl_taints: Vec<Result<(), u32>>,
}

/// An existing node's state during a solve.
#[derive(Debug, Clone)]
struct NodeState {
    remaining: Vec<i64>,
    reqs: ReqId,
    ports: Vec<HostPort>,
    taints: u32,
    flexible: bool,
}

/// The state of one solve.
struct Solve<'s> {
    s: &'s Scheduler,
    width: usize,
    table: ReqTable,
    topo: Topology,
    pods: Vec<PodInfo>,
    pod_req: Vec<i64>,
    tol_sets: Vec<Vec<Toleration>>,
    taint_sets: Vec<Vec<Taint>>,
    taint_cache: FxMap<(u32, u32, bool), Result<(), u32>>,
    tpl_reqs: Vec<ReqId>,
    tpl_taints: Vec<u32>,
    tpl_limits: Vec<Vec<i64>>,
    tpl_avail: Vec<Vec<u16>>,
    tpl_avail_env: Vec<Vec<i64>>,
    tpl_domains: Vec<Vec<Option<u32>>>,
    type_ok: FxMap<(ReqId, u32), Rc<Bits>>,
    prices: FxMap<(ReqId, u32), Rc<[f64]>>,
    taint_table: Vec<u32>,
    taint_stride: usize,
    eligible: FxMap<(u32, bool, ReqId, u32), u32>,
    nodes: Vec<NodeState>,
    node_domains: Vec<Vec<Option<u32>>>,
    claims: Vec<Claim>,
    /// Per claim (width of the dims, contiguous for the claim loop): envelope − requests,
    /// an upper bound of what it can still take.
    slack: Vec<i64>,
    /// Per claim: its requirements (a copy of `Claim::reqs`, contiguous for the claim loop).
    claim_reqs: Vec<ReqId>,
    /// Per claim (width of the dims): what its cheapest type can still take; valid when
    /// `room_valid`.
    room: Vec<i64>,
    room_valid: Vec<bool>,
    order: Vec<u32>,
    zero: Vec<i64>,
    placed: Vec<bool>,
    placed_count: usize,
    on_existing: Vec<(u32, u32)>,
    failures: Vec<Option<Failures>>,
    evaluated: Vec<bool>,
    deadline: Option<tokio::time::Instant>,
    ticks: u32,
    timed_out: bool,
}

/// How many types that no longer fit a claim may be passed over before its list is
/// rebuilt.
const LAZY_PASSES: usize = 16;

/// The ordering key of the queue: CPU desc, memory desc, creation, UID.
fn queue_order(a: &PodSpec, b: &PodSpec) -> std::cmp::Ordering {
    b.requests
        .cpu_millis
        .cmp(&a.requests.cpu_millis)
        .then_with(|| b.requests.memory_bytes.cmp(&a.requests.memory_bytes))
        .then_with(|| a.created_unix_ms.cmp(&b.created_unix_ms))
        .then_with(|| a.uid.cmp(&b.uid))
}

/// Whether two lists of host ports clash.
fn ports_conflict(a: &[HostPort], b: &[HostPort]) -> Option<HostPort> {
    a.iter().find(|p| b.iter().any(|q| p.conflicts(q))).cloned()
}

/// Resources for people: `96 vCPU, 10Gi memory, 1 pod, 2 nvidia.com/gpu`.
fn describe(r: &Resources) -> String {
    let map = r.to_map();
    let mut parts = Vec::new();
    if r.cpu_millis != 0 {
        let cpu = if r.cpu_millis % 1000 == 0 {
            (r.cpu_millis / 1000).to_string()
        } else {
            format!("{:.3}", r.cpu_millis as f64 / 1000.0)
                .trim_end_matches('0')
                .to_owned()
        };
        parts.push(format!("{cpu} vCPU"));
    }
    if let Some(memory) = map.get(crate::resources::MEMORY) {
        parts.push(format!("{memory} memory"));
    }
    if r.pods != 0 {
        parts.push(format!("{} pod{}", r.pods, if r.pods == 1 { "" } else { "s" }));
    }
    if let Some(storage) = map.get(crate::resources::EPHEMERAL_STORAGE) {
        parts.push(format!("{storage} ephemeral storage"));
    }
    for (name, amount) in &r.extended {
        parts.push(format!("{amount} {name}"));
    }
    if parts.is_empty() {
        "nothing".to_owned()
    } else {
        parts.join(", ")
    }
}

/// The placeholder hostname of a new claim.
fn placeholder(node: usize) -> String {
    format!("hostname-placeholder-{node:04}")
}

/// A cache of the groups selecting pods with the same namespace and labels.
type SelectionCache = FxMap<
    u64,
    Vec<(
        String,
        std::collections::BTreeMap<String, String>,
        Rc<[u32]>,
        Rc<[u32]>,
    )>,
>;

impl<'s> Solve<'s> {
    fn new(s: &'s Scheduler, pods: Vec<Arc<PodSpec>>) -> Solve<'s> {
        let width = s.dims.width();
        let mut solve = Solve {
            s,
            width,
            table: ReqTable::new(),
            topo: Topology::default(),
            pods: Vec::with_capacity(pods.len()),
            pod_req: vec![0; pods.len() * width],
            tol_sets: Vec::new(),
            taint_sets: Vec::new(),
            taint_cache: FxMap::default(),
            tpl_reqs: Vec::new(),
            tpl_taints: Vec::new(),
            tpl_limits: Vec::new(),
            tpl_avail: Vec::new(),
            tpl_avail_env: Vec::new(),
            tpl_domains: Vec::new(),
            type_ok: FxMap::default(),
            prices: FxMap::default(),
            taint_table: Vec::new(),
            taint_stride: 0,
            eligible: FxMap::default(),
            nodes: Vec::new(),
            node_domains: Vec::new(),
            claims: Vec::new(),
            slack: Vec::new(),
            claim_reqs: Vec::new(),
            room: Vec::new(),
            room_valid: Vec::new(),
            order: Vec::new(),
            zero: vec![0; width],
            placed: vec![false; pods.len()],
            placed_count: 0,
            on_existing: Vec::new(),
            failures: vec![None; pods.len()],
            evaluated: vec![false; pods.len()],
            deadline: s.options.timeout.map(|t| tokio::time::Instant::now() + t),
            ticks: 0,
            timed_out: false,
        };
        solve.setup(pods);
        solve
    }

    fn intern_taints(&mut self, taints: &[Taint], index: &mut FxMap<Vec<Taint>, u32>) -> u32 {
        if let Some(id) = index.get(taints) {
            return *id;
        }
        let id = self.taint_sets.len() as u32;
        self.taint_sets.push(taints.to_vec());
        index.insert(taints.to_vec(), id);
        id
    }

    fn setup(&mut self, pods: Vec<Arc<PodSpec>>) {
        let s = self.s;
        let width = self.width;
        // Pods being scheduled are not counted where they are bound (Karpenter's
        // `excludedPods`): a consolidation simulation passes the pods of the nodes it
        // removes.
        let pending: std::collections::HashSet<String> = if s.existing.iter().any(|n| !n.node.pods.is_empty())
        {
            pods.iter()
                .filter(|p| !p.uid.is_empty())
                .map(|p| p.uid.clone())
                .collect()
        } else {
            std::collections::HashSet::new()
        };
        let counted = |pod: &PodSpec| pod.uid.is_empty() || !pending.contains(&pod.uid);
        // Templates and existing nodes.
        let mut taint_index: FxMap<Vec<Taint>, u32> = FxMap::default();
        for (t, tpl) in s.templates.iter().enumerate() {
            let reqs = without_hostname(&tpl.spec.requirements);
            self.tpl_reqs.push(self.table.intern(reqs));
            let taints = self.intern_taints(&tpl.spec.taints, &mut taint_index);
            self.tpl_taints.push(taints);
            self.tpl_limits
                .push(tpl.limit_dims.iter().map(|(_, a)| *a).collect());
            self.tpl_avail.push(Vec::new());
            self.tpl_avail_env.push(Vec::new());
            self.refresh_avail(t);
        }
        for node in &s.existing {
            let reqs = self.table.intern(node.requirements.clone());
            let taints = self.intern_taints(&node.taints, &mut taint_index);
            self.nodes.push(NodeState {
                remaining: node.remaining.clone(),
                reqs,
                ports: node.host_ports.clone(),
                taints,
                flexible: node.flexible,
            });
        }

        // Pods: requests, requirements, tolerations, topology groups.
        let mut tol_index: FxMap<Vec<Toleration>, u32> = FxMap::default();
        for (p, spec) in pods.into_iter().enumerate() {
            let mut blocked = None;
            if spec.is_daemonset() {
                blocked = Some(Failure::Pod(
                    "owned by a DaemonSet: the DaemonSet controller places it, not provisioning".to_owned(),
                ));
            }
            if let Err(name) = s
                .dims
                .dense_into(&spec.requests, &mut self.pod_req[p * width..(p + 1) * width])
            {
                blocked = Some(Failure::Pod(format!(
                    "requests extended resource {name:?}, which no node or instance type has"
                )));
            }
            let mut terms = Vec::new();
            let mut hostname_terms = Vec::new();
            for term in &spec.node_requirements {
                hostname_terms.push(term.get(labels::HOSTNAME).cloned());
                terms.push(self.table.intern(without_hostname(term)));
            }
            let mut preferred: Vec<(i32, &Requirements)> = spec
                .preferred_node_affinity
                .iter()
                .map(|(w, r)| (*w, r))
                .collect();
            preferred.sort_by_key(|p| std::cmp::Reverse(p.0));
            let preferred: Vec<ReqId> = preferred
                .into_iter()
                .map(|(_, r)| self.table.intern(without_hostname(r)))
                .collect();
            let tol = match tol_index.get(&spec.tolerations) {
                Some(id) => *id,
                None => {
                    let id = self.tol_sets.len() as u32;
                    self.tol_sets.push(spec.tolerations.clone());
                    tol_index.insert(spec.tolerations.clone(), id);
                    id
                }
            };
            let own = vec![spec.namespace.clone()];
            let namespaces = |ns: &[String]| if ns.is_empty() { own.clone() } else { ns.to_vec() };
            let mut spread = Vec::new();
            for c in &spec.topology_spread {
                let g = self.topo.group(GroupSpec {
                    kind: Kind::Spread,
                    inverse: false,
                    key: &c.topology_key,
                    max_skew: c.max_skew,
                    min_domains: c.min_domains,
                    namespaces: own.clone(),
                    selector: &c.selector,
                    node_filter: terms.clone(),
                });
                spread.push((
                    g,
                    c.when_unsatisfiable == crate::pod::WhenUnsatisfiable::ScheduleAnyway,
                ));
            }
            let term_group = |topo: &mut Topology, kind, inverse, term: &crate::pod::PodAffinityTerm| {
                topo.group(GroupSpec {
                    kind,
                    inverse,
                    key: &term.topology_key,
                    max_skew: i32::MAX,
                    min_domains: None,
                    namespaces: namespaces(&term.namespaces),
                    selector: &term.selector,
                    node_filter: Vec::new(),
                })
            };
            let affinity: Vec<u32> = spec
                .pod_affinity
                .iter()
                .map(|t| term_group(&mut self.topo, Kind::Affinity, false, t))
                .collect();
            let anti: Vec<u32> = spec
                .pod_anti_affinity
                .iter()
                .map(|t| term_group(&mut self.topo, Kind::AntiAffinity, false, t))
                .collect();
            let inverse_owned: Rc<[u32]> = spec
                .pod_anti_affinity
                .iter()
                .map(|t| term_group(&mut self.topo, Kind::AntiAffinity, true, t))
                .collect();
            let mut weighted: Vec<&(i32, crate::pod::PodAffinityTerm)> =
                spec.preferred_pod_affinity.iter().collect();
            weighted.sort_by_key(|w| std::cmp::Reverse(w.0));
            let pref_affinity: Vec<u32> = weighted
                .iter()
                .map(|(_, t)| term_group(&mut self.topo, Kind::Affinity, false, t))
                .collect();
            let mut weighted: Vec<&(i32, crate::pod::PodAffinityTerm)> =
                spec.preferred_pod_anti_affinity.iter().collect();
            weighted.sort_by_key(|w| std::cmp::Reverse(w.0));
            let pref_anti: Vec<u32> = weighted
                .iter()
                .map(|(_, t)| term_group(&mut self.topo, Kind::AntiAffinity, false, t))
                .collect();
            let tolerates_prefer_no_schedule = spec.tolerations.iter().any(|t| {
                t.operator == TolerationOperator::Exists
                    && t.key.as_deref().unwrap_or("").is_empty()
                    && t.effect.is_none_or(|e| e == TaintEffect::PreferNoSchedule)
            });
            let shape = Shape {
                terms: terms.len(),
                preferred_node: preferred.len(),
                preferred_affinity: pref_affinity.len(),
                preferred_anti: pref_anti.len(),
                schedule_anyway: spread.iter().filter(|(_, anyway)| *anyway).count(),
                tolerates_prefer_no_schedule,
            };
            let free = spec.is_free() && hostname_terms.iter().all(Option::is_none);
            self.pods.push(PodInfo {
                spec,
                terms,
                hostname_terms,
                preferred,
                tol,
                spread,
                affinity,
                anti,
                pref_affinity,
                pref_anti,
                selected_by: Rc::from(Vec::new()),
                inverse_selecting: Rc::from(Vec::new()),
                inverse_owned,
                shape,
                free,
                blocked,
            });
        }
        // A dense taint cache when small enough.
        self.taint_stride = self.tol_sets.len() * 2;
        let slots = self.taint_sets.len() * self.taint_stride;
        if slots <= 1 << 22 {
            self.taint_table = vec![0; slots];
        }
        // Inverse anti-affinity of bound pods.
        let mut bound_inverse: Vec<(u32, u32)> = Vec::new();
        for (e, node) in s.existing.iter().enumerate() {
            for pod in node.node.pods.iter().filter(|p| counted(p)) {
                for term in &pod.pod_anti_affinity {
                    let g = self.topo.group(GroupSpec {
                        kind: Kind::AntiAffinity,
                        inverse: true,
                        key: &term.topology_key,
                        max_skew: i32::MAX,
                        min_domains: None,
                        namespaces: if term.namespaces.is_empty() {
                            vec![pod.namespace.clone()]
                        } else {
                            term.namespaces.clone()
                        },
                        selector: &term.selector,
                        node_filter: Vec::new(),
                    });
                    bound_inverse.push((e as u32, g));
                }
            }
        }

        // Domains of every topology key.
        self.register_domains();

        // Which groups select which pods (cached by namespace and labels).
        let mut cache: SelectionCache = FxMap::default();
        for p in 0..self.pods.len() {
            let (selected, inverse) = self.selection(&mut cache, &self.pods[p].spec.clone());
            let info = &mut self.pods[p];
            info.free = info.free && inverse.is_empty();
            info.selected_by = selected;
            info.inverse_selecting = inverse;
        }
        // Bound pods count where they run.
        for e in 0..s.existing.len() {
            for pod in s.existing[e].node.pods.iter().filter(|p| counted(p)) {
                let (selected, _) = self.selection(&mut cache, pod);
                let node_reqs = self.nodes[e].reqs;
                for &g in selected.iter() {
                    let group = &self.topo.groups[g as usize];
                    if group.kind == Kind::Spread && !group.node_filter.is_empty() {
                        let filter = group.node_filter.clone();
                        if !filter
                            .iter()
                            .any(|&f| self.table.check(node_reqs, f, Mode::Strict).is_ok())
                        {
                            continue;
                        }
                    }
                    self.count_bound(g, e);
                }
            }
        }
        for (e, g) in bound_inverse {
            self.count_bound(g, e as usize);
        }
    }

    /// Records a bound pod of existing node `e` in group `g`.
    fn count_bound(&mut self, g: u32, e: usize) {
        match self.topo.groups[g as usize].key {
            None => self.topo.record_at(g, e),
            Some(k) => {
                if let Some(d) = self.node_domains[e][k as usize] {
                    self.topo.record_at(g, d as usize);
                }
            }
        }
    }

    /// The (non-inverse, inverse) groups selecting a pod.
    fn selection(&self, cache: &mut SelectionCache, pod: &PodSpec) -> (Rc<[u32]>, Rc<[u32]>) {
        let hash = fx_hash(&(&pod.namespace, &pod.labels));
        if let Some(entries) = cache.get(&hash) {
            for (ns, labels, selected, inverse) in entries {
                if *ns == pod.namespace && *labels == pod.labels {
                    return (selected.clone(), inverse.clone());
                }
            }
        }
        let mut selected = Vec::new();
        let mut inverse = Vec::new();
        for (g, group) in self.topo.groups.iter().enumerate() {
            if group.selects(pod) {
                if group.inverse {
                    inverse.push(g as u32);
                } else {
                    selected.push(g as u32);
                }
            }
        }
        let selected: Rc<[u32]> = selected.into();
        let inverse: Rc<[u32]> = inverse.into();
        cache.entry(hash).or_default().push((
            pod.namespace.clone(),
            pod.labels.clone(),
            selected.clone(),
            inverse.clone(),
        ));
        (selected, inverse)
    }

    /// Registers the domains of every topology key from the NodePools (their requirements,
    /// instance types and available offerings) and the existing nodes.
    fn register_domains(&mut self) {
        let s = self.s;
        let keys: Vec<String> = self.topo.keys.iter().map(|k| k.name.clone()).collect();
        let mut tpl_values: Vec<Vec<Vec<String>>> = Vec::new();
        for tpl in &s.templates {
            let reqs = &tpl.spec.requirements;
            let mut per_key = Vec::new();
            for key in &keys {
                let mut values: Vec<String> = if key == labels::ZONE || key == labels::CAPACITY_TYPE {
                    let mut v = Vec::new();
                    for option in &tpl.types {
                        for o in option.offerings.iter().filter(|o| o.available) {
                            let value = if key == labels::ZONE {
                                o.zone.clone()
                            } else {
                                o.capacity_type.as_str().to_owned()
                            };
                            if !v.contains(&value) {
                                v.push(value);
                            }
                        }
                    }
                    v
                } else {
                    match reqs.get(key) {
                        Some(r) if r.operator() == crate::requirements::Operator::In => {
                            r.values().map(str::to_owned).collect()
                        }
                        _ => tpl.type_values(key),
                    }
                };
                if let Some(r) = reqs.get(key) {
                    values.retain(|v| r.has(v));
                }
                per_key.push(values);
            }
            tpl_values.push(per_key);
        }
        for (k, key) in keys.iter().enumerate() {
            for values in &tpl_values {
                for v in &values[k] {
                    self.topo.register(k as u32, v);
                }
            }
            for node in &s.existing {
                if let Some(v) = node.node.labels.get(key) {
                    self.topo.register(k as u32, v);
                } else if let Some(r) = node.requirements.get(key)
                    && r.operator() == crate::requirements::Operator::In
                {
                    for v in r.values() {
                        self.topo.register(k as u32, v);
                    }
                }
            }
        }
        self.topo.freeze();
        for values in tpl_values {
            let mut per_key = Vec::new();
            for (k, list) in values.iter().enumerate() {
                let mut bits = Bits::empty(self.topo.width(k as u32));
                for v in list {
                    if let Some(d) = self.topo.domain(k as u32, v) {
                        bits.set(d as usize);
                    }
                }
                per_key.push(Some(self.topo.store(bits)));
            }
            self.tpl_domains.push(per_key);
        }
        for node in &s.existing {
            let domains = keys
                .iter()
                .enumerate()
                .map(|(k, key)| {
                    if node.flexible {
                        None
                    } else {
                        node.node
                            .labels
                            .get(key)
                            .and_then(|v| self.topo.domain(k as u32, v))
                    }
                })
                .collect();
            self.node_domains.push(domains);
        }
    }

    /// Recomputes the types of a template within its remaining limits.
    fn refresh_avail(&mut self, t: usize) {
        let tpl = &self.s.templates[t];
        let remaining = &self.tpl_limits[t];
        let avail: Vec<u16> = (0..tpl.len())
            .filter(|&i| tpl.within_limits(i, remaining))
            .map(|i| i as u16)
            .collect();
        self.tpl_avail_env[t] = tpl.envelope(&avail, self.width);
        self.tpl_avail[t] = avail;
    }

    /// Whether the solve ran out of time (checked every few calls).
    fn out_of_time(&mut self) -> bool {
        if self.timed_out {
            return true;
        }
        let Some(deadline) = self.deadline else {
            return false;
        };
        self.ticks = self.ticks.wrapping_add(1);
        if self.ticks.is_multiple_of(16) && tokio::time::Instant::now() >= deadline {
            self.timed_out = true;
        }
        self.timed_out
    }

    /// Whether the tolerations (plus PreferNoSchedule with `pns`) tolerate a taint set;
    /// `Err` is the index of the first taint that is not tolerated.
    fn taints_ok(&mut self, set: u32, tol: u32, pns: bool) -> Result<(), u32> {
        let slot = set as usize * self.taint_stride + tol as usize * 2 + usize::from(pns);
        if let Some(&cached) = self.taint_table.get(slot) {
            match cached {
                0 => {}
                1 => return Ok(()),
                k => return Err(k - 2),
            }
        } else if let Some(r) = self.taint_cache.get(&(set, tol, pns)) {
            return *r;
        }
        let tolerations = &self.tol_sets[tol as usize];
        let result = match self.taint_sets[set as usize].iter().position(|taint| {
            !(tolerations.iter().any(|t| t.tolerates(taint))
                || (pns && taint.effect == TaintEffect::PreferNoSchedule))
        }) {
            Some(i) => Err(i as u32),
            None => Ok(()),
        };
        match self.taint_table.get_mut(slot) {
            Some(entry) => {
                *entry = match result {
                    Ok(()) => 1,
                    Err(i) => i + 2,
                }
            }
            None => {
                self.taint_cache.insert((set, tol, pns), result);
            }
        }
        result
    }

    /// The types of template `t` compatible with `reqs` and with an available offering it
    /// allows.
    fn type_ok(&mut self, reqs: ReqId, t: usize) -> Rc<Bits> {
        if let Some(bits) = self.type_ok.get(&(reqs, t as u32)) {
            return bits.clone();
        }
        let tpl = &self.s.templates[t];
        let r = self.table.get(reqs);
        let mut bits = tpl.compat_mask(r);
        bits.and_with(&tpl.offering_mask(r));
        let bits = Rc::new(bits);
        self.type_ok.insert((reqs, t as u32), bits.clone());
        bits
    }

    /// The domains of a key the pod could reach at all (NodePools whose taints it tolerates
    /// and whose requirements it is compatible with, existing nodes it could run on),
    /// within its own requirements.
    fn eligible(&mut self, tol: u32, pns: bool, term: ReqId, k: u32) -> u32 {
        if let Some(i) = self.eligible.get(&(tol, pns, term, k)) {
            return *i;
        }
        let mut bits = Bits::empty(self.topo.width(k));
        for t in 0..self.s.templates.len() {
            if self.taints_ok(self.tpl_taints[t], tol, pns).is_ok()
                && self.table.check(self.tpl_reqs[t], term, Mode::Lenient).is_ok()
                && let Some(set) = self.tpl_domains[t][k as usize]
            {
                bits.or_with(self.topo.set(set));
            }
        }
        for e in 0..self.nodes.len() {
            let (reqs, flexible) = (self.nodes[e].reqs, self.nodes[e].flexible);
            let mode = if flexible { Mode::Lenient } else { Mode::Strict };
            if self.table.check(reqs, term, mode).is_err() {
                continue;
            }
            if flexible {
                let set = self.topo.domains_of(&self.table, reqs, k);
                bits.or_with(self.topo.set(set));
            } else if let Some(d) = self.node_domains[e][k as usize] {
                bits.set(d as usize);
            }
        }
        let own = self.topo.domains_of(&self.table, term, k);
        bits.and_with(self.topo.set(own));
        let i = self.topo.store(bits);
        self.eligible.insert((tol, pns, term, k), i);
        i
    }

    /// The constraints of pod `p` at a relaxation level.
    fn attempt(&mut self, p: u32, relax: &Relax) -> Attempt {
        let info = &self.pods[p as usize];
        let term = info.terms.get(relax.term).copied().unwrap_or(NO_REQS);
        let hostname = info.hostname_terms.get(relax.term).cloned().flatten();
        let preferred = info.preferred.get(relax.preferred_node).copied();
        let mut groups = Vec::new();
        let mut anyway_seen = 0;
        for &(g, anyway) in &info.spread {
            if anyway {
                anyway_seen += 1;
                if anyway_seen <= relax.schedule_anyway {
                    continue;
                }
            }
            groups.push(g);
        }
        groups.extend(info.affinity.iter().copied());
        groups.extend(info.anti.iter().copied());
        groups.extend(info.pref_affinity.iter().skip(relax.preferred_affinity).copied());
        groups.extend(info.pref_anti.iter().skip(relax.preferred_anti).copied());
        groups.extend(info.inverse_selecting.iter().copied());
        let tol = info.tol;
        let selected = info.selected_by.clone();
        let ports = info.spec.host_ports.clone();
        let pns = relax.prefer_no_schedule;
        let width = self.width;
        let req = self.pod_req[p as usize * width..(p as usize + 1) * width].to_vec();
        let node_req = match preferred {
            Some(pr) => self.table.intersect(term, pr),
            None => term,
        };
        let mut topo = TopoAttempt {
            groups: Vec::with_capacity(groups.len()),
            self_select: Vec::with_capacity(groups.len()),
            pod_domains: Vec::with_capacity(groups.len()),
            spread_min: Vec::with_capacity(groups.len()),
            hostname: Vec::new(),
            allowed: Vec::with_capacity(groups.len()),
            bootstrap: Vec::with_capacity(groups.len()),
        };
        for g in groups {
            let (kind, key) = {
                let group = &self.topo.groups[g as usize];
                (group.kind, group.key)
            };
            let (domains, min) = match key {
                None => (NO_SET, 0),
                Some(k) => {
                    let domains = self.topo.domains_of(&self.table, term, k);
                    let min = if kind == Kind::Spread {
                        let eligible = self.eligible(tol, pns, term, k);
                        let bits = self.topo.set(eligible).clone();
                        self.topo.spread_min(g, Some(&bits))
                    } else {
                        0
                    };
                    (domains, min)
                }
            };
            let selfsel = selected.binary_search(&g).is_ok();
            let (allowed, bootstrap) = match key {
                None => {
                    topo.hostname.push(topo.groups.len());
                    (Bits::default(), false)
                }
                Some(_) => self.topo.allowed(g, selfsel, self.topo.set(domains), min),
            };
            topo.groups.push(g);
            topo.self_select.push(selfsel);
            topo.pod_domains.push(domains);
            topo.spread_min.push(min);
            topo.allowed.push(allowed);
            topo.bootstrap.push(bootstrap);
        }
        let hopeless = (0..topo.groups.len())
            .find(|&i| self.topo.affinity_hopeless(&topo, i))
            .map(|i| topo.groups[i]);
        let tpl_taints = (0..self.s.templates.len())
            .map(|t| self.taints_ok(self.tpl_taints[t], tol, pns))
            .collect();
        Attempt {
            pod: p,
            req,
            node_req,
            hostname,
            tol,
            pns,
            ports,
            topo,
            hopeless,
            tpl_taints,
        }
    }

    /// Tries an existing node; the node's new requirements on success.
    fn try_existing(&mut self, att: &Attempt, e: usize) -> Option<ReqId> {
        let state = &self.nodes[e];
        if !fits(&att.req, &state.remaining) {
            return None;
        }
        if !self.topo.hostname_ok(&att.topo, e) {
            return None;
        }
        let (taints, flexible, reqs) = (state.taints, state.flexible, state.reqs);
        if !att.ports.is_empty() && ports_conflict(&att.ports, &state.ports).is_some() {
            return None;
        }
        if self.taints_ok(taints, att.tol, att.pns).is_err() {
            return None;
        }
        if let Some(h) = &att.hostname
            && !h.has(self.s.existing[e].node.hostname())
        {
            return None;
        }
        if flexible {
            let combined = self.table.combine(reqs, att.node_req, Mode::Lenient).ok()?;
            self.topo
                .check(
                    &mut self.table,
                    &att.topo,
                    NodeView::Flexible { node: e as u32 },
                    combined,
                )
                .ok()
        } else {
            self.table.check(reqs, att.node_req, Mode::Strict).ok()?;
            let view = NodeView::Real {
                node: e as u32,
                domains: &self.node_domains[e],
            };
            self.topo.check(&mut self.table, &att.topo, view, reqs).ok()
        }
    }

    /// Per type of template `t`, the price of its cheapest offering `reqs` allow.
    fn prices(&mut self, reqs: ReqId, t: usize) -> Rc<[f64]> {
        if let Some(prices) = self.prices.get(&(reqs, t as u32)) {
            return prices.clone();
        }
        let prices: Rc<[f64]> = self.s.templates[t].prices(self.table.get(reqs)).into();
        self.prices.insert((reqs, t as u32), prices.clone());
        prices
    }

    /// The cheapest type of a claim under its requirements (ties by name); also sets the
    /// claim's room (what that type can still take).
    fn claim_cheapest(&mut self, c: usize) -> Option<u16> {
        if let Some(cached) = self.claims[c].cheapest {
            return cached;
        }
        let width = self.width;
        let (reqs, t) = (self.claims[c].reqs, self.claims[c].tpl);
        let prices = self.prices(reqs, t);
        let tpl = &self.s.templates[t];
        let rank = &tpl.rank;
        let claim = &mut self.claims[c];
        let found = claim
            .types
            .iter()
            .copied()
            .filter(|&i| {
                prices[i as usize].is_finite() && fits(&claim.requests, tpl.cap_of(i as usize, width))
            })
            .min_by(|&a, &b| {
                prices[a as usize]
                    .total_cmp(&prices[b as usize])
                    .then(rank[a as usize].cmp(&rank[b as usize]))
            });
        claim.cheapest = Some(found);
        let room = &mut self.room[c * width..(c + 1) * width];
        match found {
            Some(i) => {
                for ((r, cap), used) in room
                    .iter_mut()
                    .zip(tpl.cap_of(i as usize, width))
                    .zip(&claim.requests)
                {
                    *r = cap.saturating_sub(*used);
                }
            }
            None => room.fill(-1),
        }
        self.room_valid[c] = true;
        found
    }

    /// Whether a pod passes the cheap checks of claim `c`: resources within its slack (or
    /// its cheapest type's room with `headroom`) and the topology groups' quick test.
    #[inline]
    fn claim_quick_ok(&mut self, att: &Attempt, c: usize, headroom: bool) -> bool {
        let width = self.width;
        if headroom {
            if !self.room_valid[c] {
                self.claim_cheapest(c);
            }
            if !fits(&att.req, &self.room[c * width..(c + 1) * width]) {
                return false;
            }
        } else if !fits(&att.req, &self.slack[c * width..(c + 1) * width]) {
            return false;
        }
        att.topo.groups.is_empty()
            || self.topo.quick_ok(
                &self.table,
                &att.topo,
                self.s.existing.len() + c,
                self.claim_reqs[c],
            )
    }

    /// Tries a claim of this solve (`Some(c)`; `t` is then ignored) or a new claim from
    /// template `t`. With
    /// `headroom`, the pod must fit the claim's current cheapest type without narrowing its
    /// requirements (so adding it costs nothing).
    fn try_claim(
        &mut self,
        att: &Attempt,
        c: Option<usize>,
        t: usize,
        headroom: bool,
    ) -> Result<Fit, Failure> {
        let width = self.width;
        let node = self.s.existing.len() + c.unwrap_or(self.claims.len());
        if let Some(c) = c
            && !self.claim_quick_ok(att, c, headroom)
        {
            return Err(Failure::Skipped);
        }
        let (claim_reqs, t) = match c {
            Some(c) => (self.claims[c].reqs, self.claims[c].tpl),
            None => (self.tpl_reqs[t], t),
        };
        if let Err(i) = att.tpl_taints[t] {
            return Err(Failure::Taint(self.tpl_taints[t], i));
        }
        if !att.ports.is_empty()
            && let Some(c) = c
            && let Some(port) = ports_conflict(&att.ports, &self.claims[c].ports)
        {
            return Err(Failure::HostPort(port));
        }
        if let Some(h) = &att.hostname
            && !h.has(&placeholder(node))
        {
            return Err(Failure::Hostname(h.to_string()));
        }
        let combined = self
            .table
            .combine(claim_reqs, att.node_req, Mode::Lenient)
            .map_err(Failure::Requirements)?;
        if headroom && combined != claim_reqs {
            return Err(Failure::Requirements(u32::MAX));
        }
        let reqs = self
            .topo
            .check(
                &mut self.table,
                &att.topo,
                NodeView::Flexible { node: node as u32 },
                combined,
            )
            .map_err(Failure::Topology)?;
        let tpl = &self.s.templates[t];
        {
            let (requests, envelope) = match c {
                Some(c) => (&self.claims[c].requests, &self.claims[c].envelope),
                None => (&self.zero, &self.tpl_avail_env[t]),
            };
            if !sum_fits(requests, &att.req, envelope) {
                let mut total = requests.clone();
                add_into(&mut total, &att.req);
                return Err(Failure::Types {
                    reqs,
                    requests: total,
                });
            }
        }
        let mask = self.type_ok(reqs, t);
        if headroom
            && let Some(c) = c
            && !self
                .claim_cheapest(c)
                .is_some_and(|cheapest| mask.get(cheapest as usize))
        {
            return Err(Failure::Skipped);
        }
        let (types, requests) = match c {
            Some(c) => (&self.claims[c].types, &self.claims[c].requests),
            None => (&self.tpl_avail[t], &self.zero),
        };
        let mut total = requests.clone();
        add_into(&mut total, &att.req);
        // A claim's list may keep types that no longer fit (they are dropped here once
        // enough of them are passed over, and at the end): when the requirements did not
        // change, one fitting type is enough.
        if c.is_some() && reqs == claim_reqs && att.ports.is_empty() && !self.table.has_min_values(reqs) {
            let mut passed = 0;
            let found = types.iter().any(|&i| {
                let ok = mask.get(i as usize) && fits(&total, tpl.cap_of(i as usize, width));
                passed += usize::from(!ok);
                ok
            });
            if found && passed <= LAZY_PASSES {
                return Ok(Fit {
                    reqs,
                    types: None,
                    requests: total,
                    relaxed: false,
                });
            }
        }
        let check_ports = !att.ports.is_empty() && tpl.any_daemon_ports;
        let mut port_clash = None;
        let filtered: Vec<u16> = types
            .iter()
            .copied()
            .filter(|&i| {
                let i = i as usize;
                if !mask.get(i) || !fits(&total, tpl.cap_of(i, width)) {
                    return false;
                }
                if check_ports && let Some(port) = ports_conflict(&att.ports, &tpl.daemon_ports[i]) {
                    port_clash = Some(port);
                    return false;
                }
                true
            })
            .collect();
        if filtered.is_empty() {
            return Err(match port_clash {
                Some(port) => Failure::HostPort(port),
                None => Failure::Types {
                    reqs,
                    requests: total,
                },
            });
        }
        let relaxed = self.check_min_values(t, reqs, &filtered)?;
        Ok(Fit {
            reqs,
            types: Some(filtered),
            requests: total,
            relaxed,
        })
    }

    /// Checks `minValues` of the requirements over the types: `Ok(true)` when relaxed
    /// (BestEffort).
    fn check_min_values(&self, t: usize, reqs: ReqId, types: &[u16]) -> Result<bool, Failure> {
        if !self.table.has_min_values(reqs) {
            return Ok(false);
        }
        let tpl = &self.s.templates[t];
        for r in self.table.get(reqs).iter() {
            let Some(min) = r.min_values() else { continue };
            let have = tpl.distinct_values(types, r.key());
            if have < min as usize {
                return match self.s.options.min_values_policy {
                    MinValuesPolicy::Strict => Err(Failure::MinValues {
                        key: r.key().to_owned(),
                        min,
                        have,
                    }),
                    MinValuesPolicy::BestEffort => Ok(true),
                };
            }
        }
        Ok(false)
    }

    /// Moves claim `c` to its place in the fewest-pods-first order after gaining a pod.
    fn reorder(&mut self, c: usize, old_len: usize) {
        let claims = &self.claims;
        let key = |x: u32| (claims[x as usize].pods.len(), x);
        let old = (old_len, c as u32);
        let new = key(c as u32);
        let Ok(pos) = self.order.binary_search_by(|&x| {
            let k = if x as usize == c { old } else { key(x) };
            k.cmp(&old)
        }) else {
            return;
        };
        let after = self.order[pos + 1..].partition_point(|&x| key(x) < new);
        self.order[pos..=pos + after].rotate_left(1);
        debug_assert!(
            self.order.len() > 512 || self.order.windows(2).all(|w| key(w[0]) < key(w[1])),
            "claims stay in fewest-pods-first order"
        );
    }

    fn mark_placed(&mut self, p: u32) {
        if !self.placed[p as usize] {
            self.placed[p as usize] = true;
            self.placed_count += 1;
        }
        self.failures[p as usize] = None;
    }

    fn commit_existing(&mut self, att: &Attempt, e: usize, reqs: ReqId) {
        let p = att.pod;
        let state = &mut self.nodes[e];
        for (r, a) in state.remaining.iter_mut().zip(&att.req) {
            *r -= a;
        }
        state.ports.extend(att.ports.iter().cloned());
        let flexible = state.flexible;
        if flexible {
            state.reqs = reqs;
        }
        let (selected, owned) = (
            self.pods[p as usize].selected_by.clone(),
            self.pods[p as usize].inverse_owned.clone(),
        );
        let view = if flexible {
            NodeView::Flexible { node: e as u32 }
        } else {
            NodeView::Real {
                node: e as u32,
                domains: &self.node_domains[e],
            }
        };
        let record_reqs = if flexible { reqs } else { self.nodes[e].reqs };
        self.topo
            .record(&mut self.table, &selected, &owned, view, record_reqs);
        self.on_existing.push((p, e as u32));
        self.mark_placed(p);
    }

    fn commit_claim(&mut self, att: &Attempt, c: usize, fit: Fit) {
        let p = att.pod;
        let width = self.width;
        let old_len = self.claims[c].pods.len();
        let claim = &mut self.claims[c];
        let tpl = &self.s.templates[claim.tpl];
        if let Some(types) = fit.types {
            // The envelope only speeds up rejections: an old one is still an upper bound, so
            // it is recomputed only once the list has shrunk by a quarter.
            if types.len() * 4 < claim.envelope_len * 3 {
                claim.envelope = tpl.envelope(&types, width);
                claim.envelope_len = types.len();
            }
            claim.types = types;
        }
        claim.reqs = fit.reqs;
        claim.requests = fit.requests;
        claim.pods.push(p);
        claim.ports.extend(att.ports.iter().cloned());
        claim.min_values_relaxed |= fit.relaxed;
        claim.cheapest = None;
        self.room_valid[c] = false;
        self.claim_reqs[c] = fit.reqs;
        for d in 0..width {
            self.slack[c * width + d] = claim.envelope[d].saturating_sub(claim.requests[d]);
        }
        self.reorder(c, old_len);
        let node = (self.s.existing.len() + c) as u32;
        let (selected, owned) = (
            self.pods[p as usize].selected_by.clone(),
            self.pods[p as usize].inverse_owned.clone(),
        );
        self.topo.record(
            &mut self.table,
            &selected,
            &owned,
            NodeView::Flexible { node },
            fit.reqs,
        );
        self.mark_placed(p);
    }

    /// Creates a claim from template `t` for some pods, charging the template's limits with
    /// the largest listed type (Karpenter's `subtractMax`).
    fn create_claim(&mut self, t: usize, pods: &[u32], fit: Fit, ports: Vec<HostPort>) {
        let c = self.claims.len();
        let tpl = &self.s.templates[t];
        // New claims always come with their filtered list.
        let types = fit.types.unwrap_or_default();
        let envelope = tpl.envelope(&types, self.width);
        if !tpl.limit_dims.is_empty() {
            let mut remaining = std::mem::take(&mut self.tpl_limits[t]);
            tpl.subtract_max(&types, &mut remaining);
            self.tpl_limits[t] = remaining;
            self.refresh_avail(t);
        }
        let envelope_len = types.len();
        self.slack.extend(
            envelope
                .iter()
                .zip(&fit.requests)
                .map(|(e, r)| e.saturating_sub(*r)),
        );
        self.claim_reqs.push(fit.reqs);
        self.room.extend(std::iter::repeat_n(-1, self.width));
        self.room_valid.push(false);
        self.claims.push(Claim {
            tpl: t,
            reqs: fit.reqs,
            types,
            requests: fit.requests,
            envelope,
            envelope_len,
            pods: pods.to_vec(),
            ports,
            min_values_relaxed: fit.relaxed,
            cheapest: None,
        });
        let key = (pods.len(), c as u32);
        let claims = &self.claims;
        let at = self
            .order
            .partition_point(|&x| (claims[x as usize].pods.len(), x) < key);
        self.order.insert(at, c as u32);
        let node = (self.s.existing.len() + c) as u32;
        for &p in pods {
            let (selected, owned) = (
                self.pods[p as usize].selected_by.clone(),
                self.pods[p as usize].inverse_owned.clone(),
            );
            self.topo.record(
                &mut self.table,
                &selected,
                &owned,
                NodeView::Flexible { node },
                fit.reqs,
            );
            self.mark_placed(p);
        }
    }

    /// Karpenter's `Scheduler.add` for one attempt: existing nodes, then this solve's claims
    /// fewest pods first, then a new claim from the first NodePool that fits.
    fn add(&mut self, att: &Attempt) -> Result<(), Failures> {
        let templates = self.s.templates.len();
        if let Some(g) = att.hopeless {
            return Err((0..templates).map(|t| (Some(t), Failure::Topology(g))).collect());
        }
        for e in 0..self.nodes.len() {
            if let Some(reqs) = self.try_existing(att, e) {
                self.commit_existing(att, e, reqs);
                return Ok(());
            }
        }
        let candidates = self.anti_candidates(att);
        let n = candidates.as_ref().map_or(self.order.len(), Vec::len);
        for i in 0..n {
            let c = match &candidates {
                Some(list) => list[i],
                None => self.order[i],
            } as usize;
            if !self.claim_quick_ok(att, c, false) {
                continue;
            }
            if let Ok(fit) = self.try_claim(att, Some(c), usize::MAX, false) {
                self.commit_claim(att, c, fit);
                return Ok(());
            }
        }
        let mut failures = Vec::new();
        for t in 0..templates {
            match self.try_new(att, t) {
                Ok(fit) => {
                    self.create_claim(t, &[att.pod], fit, att.ports.clone());
                    return Ok(());
                }
                Err(f) => failures.push((Some(t), f)),
            }
        }
        Err(failures)
    }

    /// When a hostname anti-affinity group of the attempt already holds pods on most nodes,
    /// the claims it leaves free, in fewest-pods-first order: the same claims the full
    /// order would reach, without visiting the others.
    fn anti_candidates(&self, att: &Attempt) -> Option<Vec<u32>> {
        let existing = self.s.existing.len();
        if self.claims.len() < 64 {
            return None;
        }
        let total = existing + self.claims.len();
        let group = att
            .topo
            .hostname
            .iter()
            .map(|&i| &self.topo.groups[att.topo.groups[i] as usize])
            .find(|g| g.kind == Kind::AntiAffinity && g.nonzero as usize * 2 > total)?;
        let mut list: Vec<u32> = (0..self.claims.len() as u32)
            .filter(|&c| group.count(existing + c as usize) == 0)
            .collect();
        list.sort_by_key(|&c| (self.claims[c as usize].pods.len(), c));
        Some(list)
    }

    /// Tries a new claim from template `t`.
    fn try_new(&mut self, att: &Attempt, t: usize) -> Result<Fit, Failure> {
        if self.s.templates[t].len() == 0 {
            return Err(Failure::NoTypes);
        }
        if self.tpl_avail[t].is_empty() {
            return Err(Failure::Limits);
        }
        self.try_claim(att, None, t, false)
    }

    /// Schedules a pod, relaxing its preferences until it fits or nothing is left.
    fn try_schedule(&mut self, p: u32) -> Result<(), Failures> {
        if let Some(f) = &self.pods[p as usize].blocked {
            return Err(vec![(None, f.clone())]);
        }
        let shape = self.pods[p as usize].shape;
        let mut relax = Relax::initial(self.s.options.preference_policy, &shape);
        loop {
            let att = self.attempt(p, &relax);
            match self.add(&att) {
                Ok(()) => return Ok(()),
                Err(failures) => {
                    if !relax.next(&shape, self.s.tolerate_prefer_no_schedule) {
                        return Err(failures);
                    }
                }
            }
        }
    }

    /// Karpenter's queue: pop, try, push back on failure; stop when a pod comes round again
    /// with the queue no shorter than when it was pushed. Returns the pods left.
    fn run_queue(&mut self, pods: Vec<u32>) -> Vec<u32> {
        let mut queue: VecDeque<u32> = pods.into();
        let mut last_len: FxMap<u32, usize> = FxMap::default();
        while let Some(&p) = queue.front() {
            if last_len.get(&p) == Some(&queue.len()) || self.out_of_time() {
                break;
            }
            queue.pop_front();
            self.evaluated[p as usize] = true;
            match self.try_schedule(p) {
                Ok(()) => {}
                Err(failures) => {
                    self.failures[p as usize] = Some(failures);
                    queue.push_back(p);
                    last_len.insert(p, queue.len());
                }
            }
        }
        queue.into_iter().collect()
    }

    /// Whether a free pod can have a new claim of template `t`; the claim's requirements.
    fn free_template(&mut self, att: &Attempt, t: usize) -> Result<ReqId, Failure> {
        let width = self.width;
        if self.s.templates[t].len() == 0 {
            return Err(Failure::NoTypes);
        }
        if self.tpl_avail[t].is_empty() {
            return Err(Failure::Limits);
        }
        if let Err(i) = att.tpl_taints[t] {
            return Err(Failure::Taint(self.tpl_taints[t], i));
        }
        let reqs = self
            .table
            .combine(self.tpl_reqs[t], att.node_req, Mode::Lenient)
            .map_err(Failure::Requirements)?;
        let mask = self.type_ok(reqs, t);
        let tpl = &self.s.templates[t];
        let fitting: Vec<u16> = self.tpl_avail[t]
            .iter()
            .copied()
            .filter(|&i| mask.get(i as usize) && fits(&att.req, tpl.cap_of(i as usize, width)))
            .collect();
        if fitting.is_empty() {
            return Err(Failure::Types {
                reqs,
                requests: att.req.clone(),
            });
        }
        self.check_min_values(t, reqs, &fitting)?;
        Ok(reqs)
    }

    /// Places the free pods: existing nodes, then the headroom of open claims, then groups
    /// per (NodePool, requirements) packed for cost.
    fn run_free(&mut self, pods: Vec<u32>) -> Vec<u32> {
        let mut failed = Vec::new();
        let mut groups: Vec<((usize, ReqId), Vec<u32>)> = Vec::new();
        let mut group_index: FxMap<(usize, ReqId), usize> = FxMap::default();
        // Requests no claim had room for: claims only lose room during this loop, so a pod
        // asking at least as much in every dimension need not look.
        let mut no_room: Vec<Vec<i64>> = Vec::new();
        'pods: for p in pods {
            if self.out_of_time() {
                failed.push(p);
                continue;
            }
            self.evaluated[p as usize] = true;
            if let Some(f) = &self.pods[p as usize].blocked {
                self.failures[p as usize] = Some(vec![(None, f.clone())]);
                failed.push(p);
                continue;
            }
            let shape = self.pods[p as usize].shape;
            let mut relax = Relax::initial(self.s.options.preference_policy, &shape);
            loop {
                let att = self.attempt(p, &relax);
                for e in 0..self.nodes.len() {
                    if let Some(reqs) = self.try_existing(&att, e) {
                        self.commit_existing(&att, e, reqs);
                        continue 'pods;
                    }
                }
                if !no_room.iter().any(|r| fits(r, &att.req)) {
                    let width = self.width;
                    let mut any_room = false;
                    for i in 0..self.order.len() {
                        let c = self.order[i] as usize;
                        if !self.room_valid[c] {
                            self.claim_cheapest(c);
                        }
                        if !fits(&att.req, &self.room[c * width..(c + 1) * width]) {
                            continue;
                        }
                        any_room = true;
                        if !self.claim_quick_ok(&att, c, true) {
                            continue;
                        }
                        if let Ok(fit) = self.try_claim(&att, Some(c), usize::MAX, true) {
                            self.commit_claim(&att, c, fit);
                            continue 'pods;
                        }
                    }
                    if !any_room {
                        no_room.push(att.req.clone());
                    }
                }
                let mut failures = Vec::new();
                for t in 0..self.s.templates.len() {
                    match self.free_template(&att, t) {
                        Ok(reqs) => {
                            let at = *group_index.entry((t, reqs)).or_insert_with(|| {
                                groups.push(((t, reqs), Vec::new()));
                                groups.len() - 1
                            });
                            groups[at].1.push(p);
                            continue 'pods;
                        }
                        Err(f) => failures.push((Some(t), f)),
                    }
                }
                if !relax.next(&shape, self.s.tolerate_prefer_no_schedule) {
                    self.failures[p as usize] = Some(failures);
                    failed.push(p);
                    continue 'pods;
                }
            }
        }
        for ((t, reqs), pods) in groups {
            failed.extend(self.pack_group(t, reqs, pods));
        }
        failed
    }

    /// Packs one group of free pods into new claims of template `t` with requirements
    /// `reqs`; pods the packing cannot place go through the regular path. Returns the pods
    /// left unschedulable.
    fn pack_group(&mut self, t: usize, reqs: ReqId, pods: Vec<u32>) -> Vec<u32> {
        let width = self.width;
        let mask = self.type_ok(reqs, t);
        let tpl = &self.s.templates[t];
        let candidates: Vec<u16> = self.tpl_avail[t]
            .iter()
            .copied()
            .filter(|&i| mask.get(i as usize))
            .collect();
        let prices = self.prices(reqs, t);
        let bin_types: Vec<(Resources, f64)> = candidates
            .iter()
            .filter(|&&i| prices[i as usize].is_finite())
            .map(|&i| {
                (
                    self.s.dims.resources(tpl.cap_of(i as usize, width)),
                    prices[i as usize],
                )
            })
            .collect();
        let items: Vec<Resources> = pods
            .iter()
            .map(|&p| {
                self.s
                    .dims
                    .resources(&self.pod_req[p as usize * width..(p as usize + 1) * width])
            })
            .collect();
        let mut leftover = Vec::new();
        match pack_items(&items, &bin_types) {
            Ok(bins) => {
                for (_, members) in bins {
                    let members: Vec<u32> =
                        members.into_iter().filter_map(|i| pods.get(i).copied()).collect();
                    if !self.create_packed_claim(t, reqs, &members) {
                        leftover.extend(members);
                    }
                }
            }
            Err(_) => leftover = pods,
        }
        let mut failed = Vec::new();
        for p in leftover {
            if self.placed[p as usize] {
                continue;
            }
            if let Err(f) = self.try_schedule(p) {
                self.failures[p as usize] = Some(f);
                failed.push(p);
            }
        }
        failed
    }

    /// Creates a right-sized claim for a packed bin; false when no type within the limits
    /// fits (or `minValues` fails under Strict).
    fn create_packed_claim(&mut self, t: usize, reqs: ReqId, pods: &[u32]) -> bool {
        if pods.is_empty() {
            return true;
        }
        let width = self.width;
        let mut total = vec![0i64; width];
        for &p in pods {
            add_into(
                &mut total,
                &self.pod_req[p as usize * width..(p as usize + 1) * width],
            );
        }
        let mask = self.type_ok(reqs, t);
        let tpl = &self.s.templates[t];
        let types: Vec<u16> = self.tpl_avail[t]
            .iter()
            .copied()
            .filter(|&i| mask.get(i as usize) && fits(&total, tpl.cap_of(i as usize, width)))
            .collect();
        if types.is_empty() {
            return false;
        }
        let Ok(relaxed) = self.check_min_values(t, reqs, &types) else {
            return false;
        };
        let fit = Fit {
            reqs,
            types: Some(types),
            requests: total,
            relaxed,
        };
        self.create_claim(t, pods, fit, Vec::new());
        true
    }

    fn run(mut self) -> Solution {
        let mut queue: Vec<u32> = (0..self.pods.len() as u32).collect();
        queue.sort_by(|&a, &b| queue_order(&self.pods[a as usize].spec, &self.pods[b as usize].spec));
        let (free, constrained): (Vec<u32>, Vec<u32>) =
            queue.into_iter().partition(|&p| self.pods[p as usize].free);
        let mut failed = self.run_queue(constrained);
        let before = self.placed_count;
        let failed_free = self.run_free(free);
        if !failed.is_empty() && self.placed_count > before && !self.timed_out {
            failed = self.run_queue(failed);
        }
        failed.extend(failed_free);
        self.finish()
    }

    /// Renders a failure for template `t`.
    fn render(&self, t: Option<usize>, failure: &Failure) -> String {
        let detail = match failure {
            Failure::Pod(message) => return message.clone(),
            Failure::Taint(set, i) => match self.taint_sets[*set as usize].get(*i as usize) {
                Some(taint) => format!("taint {} not tolerated", taint_to_string(taint)),
                None => "a taint is not tolerated".to_owned(),
            },
            Failure::HostPort(port) => format!("host port {port} is already in use"),
            Failure::Hostname(requirement) => format!("requires {requirement}, which a new node cannot have"),
            Failure::Requirements(i) if *i == u32::MAX => "incompatible requirements".to_owned(),
            Failure::Requirements(i) => self.table.error(*i).to_string(),
            Failure::Topology(g) => self.topo.groups[*g as usize].describe(),
            Failure::MinValues { key, min, have } => format!(
                "minValues: {key} needs {min} distinct values, only {have} remain among the instance types that fit"
            ),
            Failure::Limits => match t {
                Some(t) => {
                    let tpl = &self.s.templates[t];
                    let left: Vec<String> = tpl
                        .limit_dims
                        .iter()
                        .zip(&self.tpl_limits[t])
                        .map(|((dim, _), amount)| {
                            let amount = (*amount).max(0);
                            let one = match dim {
                                LimitDim::Cpu => Resources::new(amount, 0),
                                LimitDim::Memory => Resources::new(0, amount),
                                LimitDim::Pods => Resources::default().with_pods(amount),
                                LimitDim::Ephemeral => Resources::default().with_ephemeral_storage(amount),
                                LimitDim::Nodes => {
                                    Resources::default().with_extended(super::NODES_LIMIT, amount)
                                }
                                LimitDim::Extended(name) => {
                                    Resources::default().with_extended(name.clone(), amount)
                                }
                            };
                            let name = match dim {
                                LimitDim::Cpu => crate::resources::CPU,
                                LimitDim::Memory => crate::resources::MEMORY,
                                LimitDim::Pods => crate::resources::PODS,
                                LimitDim::Ephemeral => crate::resources::EPHEMERAL_STORAGE,
                                LimitDim::Nodes => super::NODES_LIMIT,
                                LimitDim::Extended(name) => name.as_str(),
                            };
                            if amount == 0 {
                                format!("{name}=0")
                            } else {
                                one.to_string()
                            }
                        })
                        .collect();
                    format!(
                        "all instance types exceed the nodepool's remaining limits ({})",
                        left.join(", ")
                    )
                }
                None => "all instance types exceed the nodepool's limits".to_owned(),
            },
            Failure::NoTypes => "the nodepool has no instance type it can launch".to_owned(),
            Failure::Skipped => "does not fit".to_owned(),
            Failure::Types { reqs, requests } => match t {
                Some(t) => self.render_types(t, *reqs, requests),
                None => "no instance type fits".to_owned(),
            },
        };
        match t {
            Some(t) => format!(
                "incompatible with nodepool {}: {detail}",
                self.s.templates[t].spec.name
            ),
            None => detail,
        }
    }

    /// Why no instance type of template `t` is left.
    fn render_types(&self, t: usize, reqs: ReqId, requests: &[i64]) -> String {
        let tpl = &self.s.templates[t];
        let width = self.width;
        let r = self.table.get(reqs);
        let compat = tpl.compat_mask(r);
        if compat.is_empty() {
            let mut text = r.to_string();
            if text.len() > 300 {
                text.truncate(300);
                text.push_str("...");
            }
            return format!("no instance type matches the requirements {text}");
        }
        let mut both = compat.clone();
        both.and_with(&tpl.offering_mask(r));
        if both.is_empty() {
            let describe = |key: &str| {
                r.get(key)
                    .map_or_else(|| format!("any {key}"), ToString::to_string)
            };
            return format!(
                "no instance type matching the requirements has an available offering in {} with {}",
                describe(labels::ZONE),
                describe(labels::CAPACITY_TYPE)
            );
        }
        let largest = both.ones().max_by(|&a, &b| {
            let (ca, cb) = (tpl.cap_of(a, width), tpl.cap_of(b, width));
            ca[0].cmp(&cb[0]).then(ca[1].cmp(&cb[1])).then(b.cmp(&a))
        });
        let wanted = describe(&self.s.dims.resources(requests));
        match largest {
            Some(i) => {
                let overhead = self.s.dims.resources(tpl.overhead_of(i, width));
                let after = if overhead.is_zero() {
                    String::new()
                } else {
                    format!(", after DaemonSet overhead of {}", describe(&overhead))
                };
                format!(
                    "no instance type has {wanted}: largest allocatable is {} ({}{after})",
                    describe(&self.s.dims.resources(tpl.cap_of(i, width))),
                    tpl.types[i].name()
                )
            }
            None => format!("no instance type has {wanted}"),
        }
    }

    /// The reason a pod is unschedulable.
    fn reason(&self, p: usize) -> String {
        if !self.evaluated[p] {
            return "not evaluated: the scheduling simulation timed out".to_owned();
        }
        match &self.failures[p] {
            None if self.timed_out => "not placed before the scheduling simulation timed out".to_owned(),
            None => "not placed".to_owned(),
            Some(list) if list.is_empty() => "fits no existing node and there is no nodepool".to_owned(),
            Some(list) => list
                .iter()
                .map(|(t, f)| self.render(*t, f))
                .collect::<Vec<_>>()
                .join("; "),
        }
    }

    /// Right-sizes, truncates and returns the claims, and reports every pod.
    fn finish(mut self) -> Solution {
        let width = self.width;
        let s = self.s;
        let mut new_claims = Vec::new();
        let claims = std::mem::take(&mut self.claims);
        for claim in claims {
            let tpl = &s.templates[claim.tpl];
            let reqs = self.table.get(claim.reqs).clone();
            let prices = self.prices(claim.reqs, claim.tpl);
            let mut priced: Vec<(f64, u16)> = claim
                .types
                .iter()
                .filter(|&&i| {
                    fits(&claim.requests, tpl.cap_of(i as usize, width))
                        && (claim.ports.is_empty()
                            || ports_conflict(&claim.ports, &tpl.daemon_ports[i as usize]).is_none())
                })
                .map(|&i| (prices[i as usize], i))
                .collect();
            priced.sort_by(|a, b| {
                a.0.total_cmp(&b.0)
                    .then_with(|| tpl.rank[a.1 as usize].cmp(&tpl.rank[b.1 as usize]))
            });
            let mut relaxed = claim.min_values_relaxed;
            let mut types: Vec<u16> = priced.iter().map(|(_, i)| *i).collect();
            if types.len() > s.options.max_instance_types {
                let truncated: Vec<u16> = types[..s.options.max_instance_types].to_vec();
                match self.check_min_values(claim.tpl, claim.reqs, &truncated) {
                    Ok(r) => {
                        relaxed |= r;
                        types = truncated;
                    }
                    Err(f) => {
                        for &p in &claim.pods {
                            self.placed[p as usize] = false;
                            self.failures[p as usize] = Some(vec![(Some(claim.tpl), f.clone())]);
                        }
                        continue;
                    }
                }
            }
            let mut overhead = vec![i64::MAX; width];
            for &i in &types {
                for (o, v) in overhead.iter_mut().zip(tpl.overhead_of(i as usize, width)) {
                    *o = (*o).min(*v);
                }
            }
            if types.is_empty() {
                overhead = vec![0; width];
            }
            let mut requests = claim.requests.clone();
            add_into(&mut requests, &overhead);
            new_claims.push(NewNodeClaim {
                nodepool: tpl.spec.name.clone(),
                requirements: reqs,
                instance_types: types
                    .iter()
                    .map(|&i| tpl.types[i as usize].clone())
                    .collect::<Vec<Arc<InstanceTypeOption>>>(),
                pods: claim
                    .pods
                    .iter()
                    .map(|&p| self.pods[p as usize].spec.clone())
                    .collect(),
                requests: s.dims.resources(&requests),
                daemon_overhead: s.dims.resources(&overhead),
                min_values_relaxed: relaxed,
            });
        }
        let existing = self
            .on_existing
            .iter()
            .map(|&(p, e)| {
                (
                    self.pods[p as usize].spec.key(),
                    s.existing[e as usize].node.name.clone(),
                )
            })
            .collect();
        let mut order: Vec<usize> = (0..self.pods.len()).collect();
        order.sort_by(|&a, &b| queue_order(&self.pods[a].spec, &self.pods[b].spec));
        let unschedulable = order
            .into_iter()
            .filter(|&p| !self.placed[p])
            .map(|p| (self.pods[p].spec.key(), self.reason(p)))
            .collect();
        Solution {
            existing,
            new_claims,
            unschedulable,
            pods_evaluated: self.evaluated.iter().filter(|e| **e).count(),
        }
    }
}

/// A cost-minimising packing of items into bins of the given types (capacity, price), by
/// [`crate::packing::pack`].
fn pack_items(items: &[Resources], bin_types: &[(Resources, f64)]) -> Result<Bins, String> {
    use crate::packing::{BinType, Item, pack};
    let items: Vec<Item> = items.iter().cloned().map(Item::new).collect();
    let types: Vec<BinType> = bin_types
        .iter()
        .map(|(c, p)| BinType::new(c.clone(), *p))
        .collect();
    pack(&items, &types)
        .map(|packing| packing.bins.into_iter().map(|b| (b.bin_type, b.items)).collect())
        .map_err(|e| e.to_string())
}
