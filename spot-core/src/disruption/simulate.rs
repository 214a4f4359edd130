//! The consolidation simulation: "if these nodes went away, where would their pods go?"
//! (Karpenter's `SimulateScheduling`), prepared once per cluster and run per candidate set.
//!
//! Running the full [`Scheduler`] per candidate is what makes Karpenter time out on large
//! clusters, so three cheaper steps come first, each exact in what it concludes.
//!
//! A pod is *local* when every hard constraint it is subject to can be checked on one node:
//! node requirements, tolerations, host ports, and required anti-affinity on
//! `kubernetes.io/hostname` (its own, and that of pods which select it); soft constraints
//! (preferred affinities, `ScheduleAnyway` spread) do not restrict where it may go.
//! `DoNotSchedule` topology spread is checked too, with domain counts kept up to date as pods
//! move; the smallest domain count is taken over every zone the cluster or its NodePools
//! have (0 for hostname spread and other keys), which is never larger than the scheduler's,
//! so a placement that passes here passes there.
//!
//! 1. **Fits on existing nodes.** When every pod to move is local or spread-constrained, a
//!    first fit into the other nodes' free capacity that places every pod proves the nodes
//!    can simply be deleted.
//! 2. **No cheaper replacement.** Pods that fit no other node even alone must go to the one
//!    replacement a consolidation may launch; when no instance type cheaper than the
//!    candidates (and not one of their types) can hold them all, no replacement can be
//!    valid, whatever the scheduler would decide. With the spot-to-spot floor, too few such
//!    types rule it out the same way.
//! 3. **A smaller scheduler.** Local pods (without spread constraints, whose counts need
//!    every node) can only land on nodes where they fit alone: the
//!    scheduler is given just those nodes (and the uninitialized ones, whose use invalidates
//!    a decision); soft constraints are then weighed over those nodes.
//!
//! Only then does the full scheduler run, on the cluster without the candidates. Nodes no
//! moving pod fits on even alone still matter there only for topology, so they are handed
//! over as *skeletons*: no free capacity, the labels topology and node affinity look at, and
//! the bound pods the moving pods' spread and affinity terms select (and those with
//! anti-affinity on a key other than the hostname). Skeletons with the same labels merge
//! into one per domain, except where a hostname spread constraint compares nodes one by
//! one. Counts, domains and inverse anti-affinity stay exact at a fraction of the cost.
//!
//! Consolidation never replaces nodes with more than one new node, so its simulations give
//! every NodePool a limit of one more node: the scheduler then looks for a placement that
//! needs at most one, rather than the cheapest placement over several (which a
//! consolidation would have to refuse).

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use super::candidate::{Candidate, is_reschedulable};
use super::cluster::{ClusterState, ConsolidationOptions};
use super::replacement::{NoOp, offering_allowed, worst_launch_price};
use crate::instance_type::CapacityType;
use crate::labels;
use crate::node::Taint;
use crate::pod::{HostPort, PodAffinityTerm, PodSpec, WhenUnsatisfiable, tolerates_all};
use crate::requirements::Requirements;
use crate::resources::Resources;
use crate::scheduling::{ExistingNode, NODES_LIMIT, NewNodeClaim, NodePoolTemplate, Scheduler};

/// What a simulation concludes.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Every pod of the candidates fits on other nodes: the candidates can be deleted.
    Delete,
    /// The scheduler needs these new claims (one: a replacement may be possible).
    NewClaims(Vec<NewNodeClaim>),
    /// No command is possible.
    NoOp(NoOp),
}

/// How a simulation may prune (consolidation only; drift replaces at any price).
#[derive(Debug, Clone)]
pub struct PriceBound<'a> {
    /// A replacement must cost less than this (the candidates' summed price).
    pub cap: f64,
    /// Instance types a replacement may not have (the candidates' own).
    pub excluded: BTreeSet<&'a str>,
    /// For a single spot candidate: how many cheaper spot types a spot-to-spot replacement
    /// needs (applied only when the replacement is certainly spot).
    pub spot_floor: Option<usize>,
}

/// Which step answered the simulations, for statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Answered by the first fit on existing nodes.
    pub fit: usize,
    /// Ruled out by the price bound.
    pub bound: usize,
    /// Run through a scheduler restricted to the relevant nodes.
    pub reduced: usize,
    /// Run through the scheduler with every remaining node.
    pub full: usize,
}

/// A pod to place, with what the shortcuts need.
#[derive(Debug, Clone)]
struct Entry {
    pod: Arc<PodSpec>,
    /// Index into the placement classes (node requirements and tolerations).
    class: usize,
    /// Whether every hard constraint on it is per node or a topology spread (see the module
    /// documentation): the first fit can place it.
    local: bool,
    /// Local without `DoNotSchedule` spread: the smaller scheduler can place it.
    reducible: bool,
    /// Its `DoNotSchedule` spread constraints: (group, max skew, whether the smallest count
    /// is taken as 0, whether it matches its own selector).
    spreads: Vec<(usize, i32, bool, bool)>,
    /// The spread groups selecting it (their counts move with it).
    counted_by: Vec<usize>,
    /// The node it is bound to now (a candidate's), if any.
    origin: Option<usize>,
    /// Its topology terms' selectors (indices into the selector table).
    selectors: Vec<usize>,
    /// Whether it constrains the capacity type in any way.
    capacity_type: bool,
    /// Whether it constrains the zone in any way.
    zone: bool,
    /// Its required hostname anti-affinity terms (indices into the term table).
    own_terms: Vec<usize>,
    /// The hostname anti-affinity terms that select it.
    selected_by: Vec<usize>,
}

impl Entry {
    /// Whether two pods may not share a node (hostname anti-affinity either way).
    fn clashes(&self, other: &Entry) -> bool {
        self.own_terms.iter().any(|t| other.selected_by.contains(t))
            || other.own_terms.iter().any(|t| self.selected_by.contains(t))
            || self
                .pod
                .host_ports
                .iter()
                .any(|p| other.pod.host_ports.iter().any(|q| p.conflicts(q)))
    }
}

/// A node as the shortcuts see it.
#[derive(Debug, Clone)]
struct Node {
    /// Allocatable minus bound pods minus DaemonSet pods that should run but are missing.
    headroom: Resources,
    /// Initialized, registered, and not inside its `consolidateAfter` window.
    destination: bool,
    /// Not initialized or still an in-flight claim.
    uninitialized: bool,
    /// Host ports of bound pods and expected DaemonSets.
    ports: Vec<HostPort>,
}

/// A required hostname anti-affinity term, with the nodes it concerns.
#[derive(Debug, Clone)]
struct Term {
    /// The namespace of the pods owning it.
    namespace: String,
    term: PodAffinityTerm,
    /// Nodes with a bound pod the term selects (an owner may not go there).
    occupied: Vec<bool>,
    /// Nodes with a bound pod owning the term (a selected pod may not go there).
    owned: Vec<bool>,
}

/// The pods a topology spread constraint counts: those of a namespace matching a selector,
/// per value of a node label.
#[derive(Debug, Clone)]
struct SpreadGroup {
    namespace: String,
    key: String,
    selector: crate::pod::LabelSelector,
    /// Matching bound pods per domain.
    counts: HashMap<String, i64>,
    /// Every domain the smallest count is taken over (zones: those of the nodes and of the
    /// NodePools' offerings).
    domains: Vec<String>,
}

/// A topology term's selector (spread, affinity or anti-affinity of a moving pod) and the
/// bound pods it selects.
#[derive(Debug, Clone)]
struct Selector {
    term: PodAffinityTerm,
    /// The namespace of the pod with the term.
    namespace: String,
    /// What skeletons keep of the pods it selects.
    keep: Keep,
    /// (node index, pod) of every bound pod the term selects.
    pods: Vec<(usize, Arc<PodSpec>)>,
}

/// What skeleton nodes keep of the pods a moving pod's term selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    /// Nothing: a hostname term only concerns nodes the pod may land on.
    Nothing,
    /// Per domain: skeletons with the same topology labels are merged.
    Merged,
    /// Per node: a hostname spread constraint compares every node's count.
    PerNode,
}

/// The simulation, prepared for one cluster state.
pub struct Simulator<'c> {
    cluster: &'c ClusterState,
    options: &'c ConsolidationOptions,
    index: HashMap<&'c str, usize>,
    nodes: Vec<Node>,
    /// The nodes handed to the scheduler (non-destinations with no room left), ordered as
    /// the scheduler orders them: initialized first, then by name.
    sched_nodes: Vec<ExistingNode>,
    /// Node indices in that order.
    order: Vec<usize>,
    /// Per candidate node: its reschedulable pods, unbound.
    moving: HashMap<&'c str, Vec<Entry>>,
    pending: Vec<Entry>,
    /// Per placement class: the destination nodes (in scheduler order) whose labels and
    /// taints the class accepts.
    class_nodes: Vec<Vec<usize>>,
    /// Per placement class: an example pod (requirements and tolerations).
    class_pods: Vec<Arc<PodSpec>>,
    terms: Vec<Term>,
    spreads: Vec<SpreadGroup>,
    /// The templates with at most one more node each: a consolidation can use one new node
    /// only, so its simulations ask whether one suffices.
    one_node_templates: Vec<NodePoolTemplate>,
    /// The moving pods' topology selectors and the bound pods each selects, by node.
    selectors: Vec<Selector>,
    /// Per node (by index): its skeleton without pods.
    skeletons: Vec<ExistingNode>,
    /// Per node: its skeleton group (nodes with the same topology labels, taints and state).
    skeleton_group: Vec<usize>,
    /// Per skeleton group: the merged skeleton without pods.
    group_skeletons: Vec<ExistingNode>,
    /// Nodes with bound pods that have anti-affinity on a key other than the hostname, and
    /// those pods (kept on skeletons: they may bar moving pods from a whole domain).
    anti_owners: Vec<(usize, Vec<Arc<PodSpec>>)>,
    /// Normalized node labels.
    node_labels: Vec<BTreeMap<String, String>>,
    stats: Cell<Stats>,
}

/// Labels under normalized keys.
fn normalized(labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (key, value) in labels {
        let stable = labels::normalize(key);
        if stable == key.as_str() {
            out.insert(stable.to_owned(), value.clone());
        } else {
            out.entry(stable.to_owned()).or_insert_with(|| value.clone());
        }
    }
    out
}

/// Whether a node with these (normalized) labels satisfies one of the terms.
fn terms_match(terms: &[Requirements], labels: &BTreeMap<String, String>) -> bool {
    terms.is_empty()
        || terms.iter().any(|term| {
            term.iter()
                .all(|r| r.matches(labels.get(r.key()).map(String::as_str)))
        })
}

/// Whether the pod says anything about a node label: in its node affinity, or as the key of
/// a spread constraint or a pod affinity term.
fn mentions(pod: &PodSpec, key: &str) -> bool {
    let in_reqs = |r: &Requirements| r.get(key).is_some();
    pod.node_requirements.iter().any(in_reqs)
        || pod.preferred_node_affinity.iter().any(|(_, r)| in_reqs(r))
        || pod_terms(pod)
            .iter()
            .any(|t| labels::normalize(&t.topology_key) == key)
}

fn add(sum: &Resources, more: &Resources) -> Resources {
    sum.checked_add(more).unwrap_or_else(|| sum.clone())
}

/// A node's domain for a topology key: its label, or for the hostname its name when the
/// label is missing (as the scheduler does).
fn domain_of<'a>(labels: &'a BTreeMap<String, String>, name: &'a str, key: &str) -> Option<&'a str> {
    match labels.get(key) {
        Some(value) => Some(value),
        None if key == labels::HOSTNAME => Some(name),
        None => None,
    }
}

/// The key of a term or selector in the de-duplication tables.
fn table_key(namespace: &str, what: &impl std::fmt::Debug) -> String {
    format!("{namespace}\u{0}{what:?}")
}

impl<'c> Simulator<'c> {
    /// Prepares the simulation: free capacity per node, placement classes, anti-affinity
    /// terms and spread counts, the candidates' pods.
    pub fn new(cluster: &'c ClusterState, options: &'c ConsolidationOptions) -> Simulator<'c> {
        let mut order: Vec<usize> = (0..cluster.nodes.len()).collect();
        order.sort_by(|&a, &b| {
            let (a, b) = (&cluster.nodes[a], &cluster.nodes[b]);
            b.initialized
                .cmp(&a.initialized)
                .then_with(|| a.name.cmp(&b.name))
        });
        let index: HashMap<&str, usize> = cluster
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.as_str(), i))
            .collect();
        let mut nodes = Vec::with_capacity(cluster.nodes.len());
        let mut sched_nodes = Vec::with_capacity(cluster.nodes.len());
        let mut node_labels = Vec::with_capacity(cluster.nodes.len());
        for node in &cluster.nodes {
            let labels = normalized(&node.labels);
            let mut used = Resources::default();
            let mut present = Resources::default();
            let mut ports = Vec::new();
            for pod in &node.pods {
                used = add(&used, &pod.requests);
                if pod.is_daemonset() {
                    present = add(&present, &pod.requests);
                }
                ports.extend(pod.host_ports.iter().cloned());
            }
            let mut expected = Resources::default();
            for daemon in &cluster.daemonsets {
                if tolerates_all(&daemon.tolerations, &node.taints).is_ok()
                    && terms_match(&daemon.node_requirements, &labels)
                {
                    expected = add(&expected, &daemon.requests);
                    ports.extend(daemon.host_ports.iter().cloned());
                }
            }
            let missing = expected.saturating_sub(&present);
            let headroom = node.allocatable.saturating_sub(&used).saturating_sub(&missing);
            let uninitialized = !node.initialized || node.in_flight.is_some();
            let closed = cluster.non_destinations.contains(&node.name);
            let mut sched = node.clone();
            if closed {
                // No room left: bound pods still count for topology, nothing new fits.
                sched.allocatable = add(&used, &missing);
            }
            sched_nodes.push(sched);
            nodes.push(Node {
                headroom: if closed { Resources::default() } else { headroom },
                destination: !uninitialized && !closed,
                uninitialized,
                ports,
            });
            node_labels.push(labels);
        }
        let sched_nodes = order.iter().map(|&i| sched_nodes[i].clone()).collect();

        // The pods that may move.
        let movable: Vec<&Arc<PodSpec>> = cluster
            .candidates
            .iter()
            .flat_map(|c| c.reschedulable_pods())
            .chain(cluster.pending.iter().filter(|p| is_reschedulable(p)))
            .collect();

        // Required anti-affinity terms of every pod, de-duplicated; the hostname ones get
        // their node maps.
        let bound = cluster.nodes.iter().flat_map(|n| n.pods.iter());
        let mut term_index: HashMap<String, usize> = HashMap::new();
        let mut terms: Vec<Term> = Vec::new();
        let mut zonal: Vec<(String, PodAffinityTerm)> = Vec::new();
        for pod in bound.chain(movable.iter().copied()) {
            for term in &pod.pod_anti_affinity {
                let key = table_key(&pod.namespace, term);
                if term_index.contains_key(&key) {
                    continue;
                }
                if term.topology_key == labels::HOSTNAME {
                    term_index.insert(key, terms.len());
                    terms.push(Term {
                        namespace: pod.namespace.clone(),
                        term: term.clone(),
                        occupied: vec![false; cluster.nodes.len()],
                        owned: vec![false; cluster.nodes.len()],
                    });
                } else {
                    term_index.insert(key, usize::MAX);
                    zonal.push((pod.namespace.clone(), term.clone()));
                }
            }
        }

        // Spread groups of the movable pods' `DoNotSchedule` constraints.
        let mut spread_index: HashMap<String, usize> = HashMap::new();
        let mut spreads: Vec<SpreadGroup> = Vec::new();
        for pod in &movable {
            for c in &pod.topology_spread {
                if c.when_unsatisfiable != WhenUnsatisfiable::DoNotSchedule
                    || !pod.node_requirements.is_empty()
                {
                    continue;
                }
                let key = table_key(&pod.namespace, &(&c.topology_key, &c.selector));
                if spread_index.contains_key(&key) {
                    continue;
                }
                spread_index.insert(key, spreads.len());
                let mut domains: BTreeSet<String> = BTreeSet::new();
                if labels::normalize(&c.topology_key) == labels::ZONE {
                    domains.extend(node_labels.iter().filter_map(|l| l.get(labels::ZONE).cloned()));
                    for t in &cluster.templates {
                        for o in t.instance_types.iter().flat_map(|o| o.offerings.iter()) {
                            if offering_allowed(o, &t.requirements) {
                                domains.insert(o.zone.clone());
                            }
                        }
                    }
                }
                spreads.push(SpreadGroup {
                    namespace: pod.namespace.clone(),
                    key: labels::normalize(&c.topology_key).to_owned(),
                    selector: c.selector.clone(),
                    counts: HashMap::new(),
                    domains: domains.into_iter().collect(),
                });
            }
        }

        for (i, node) in cluster.nodes.iter().enumerate() {
            for pod in &node.pods {
                for term in &mut terms {
                    if term.term.selects(&term.namespace, pod) {
                        term.occupied[i] = true;
                    }
                }
                for t in &pod.pod_anti_affinity {
                    if let Some(&at) = term_index.get(&table_key(&pod.namespace, t))
                        && at != usize::MAX
                    {
                        terms[at].owned[i] = true;
                    }
                }
                for group in &mut spreads {
                    if group.namespace == pod.namespace
                        && group.selector.matches(&pod.labels)
                        && let Some(domain) = domain_of(&node_labels[i], &node.name, &group.key)
                    {
                        *group.counts.entry(domain.to_owned()).or_default() += 1;
                    }
                }
            }
        }

        // The moving pods' topology terms (spread as a term on its own namespace), with the
        // bound pods each selects; and what skeleton nodes keep.
        let mut selector_index: HashMap<String, usize> = HashMap::new();
        let mut selectors: Vec<Selector> = Vec::new();
        let mut keys: BTreeSet<String> = [
            labels::ZONE,
            labels::REGION,
            labels::HOSTNAME,
            labels::NODE_POOL,
            labels::CAPACITY_TYPE,
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        keys.extend(
            zonal
                .iter()
                .map(|(_, t)| labels::normalize(&t.topology_key).to_owned()),
        );
        for pod in &movable {
            let hard_hostname: Vec<PodAffinityTerm> = pod
                .topology_spread
                .iter()
                .filter(|c| {
                    c.when_unsatisfiable == WhenUnsatisfiable::DoNotSchedule
                        && labels::normalize(&c.topology_key) == labels::HOSTNAME
                })
                .map(|c| spread_term(pod, c))
                .collect();
            for term in pod_terms(pod) {
                let topology_key = labels::normalize(&term.topology_key).to_owned();
                let keep = if topology_key != labels::HOSTNAME {
                    Keep::Merged
                } else if hard_hostname.contains(&term) {
                    Keep::PerNode
                } else {
                    Keep::Nothing
                };
                keys.insert(topology_key);
                let key = table_key(&pod.namespace, &term);
                match selector_index.get(&key) {
                    Some(&at) => {
                        if keep == Keep::PerNode {
                            selectors[at].keep = Keep::PerNode;
                        }
                    }
                    None => {
                        selector_index.insert(key, selectors.len());
                        selectors.push(Selector {
                            term,
                            namespace: pod.namespace.clone(),
                            keep,
                            pods: Vec::new(),
                        });
                    }
                }
            }
            let affinity = pod
                .node_requirements
                .iter()
                .chain(pod.preferred_node_affinity.iter().map(|(_, r)| r));
            keys.extend(affinity.flat_map(|r| r.keys().map(str::to_owned).collect::<Vec<_>>()));
        }
        let mut anti_owners = Vec::new();
        for (i, node) in cluster.nodes.iter().enumerate() {
            let mut owners = Vec::new();
            for pod in &node.pods {
                for selector in selectors.iter_mut().filter(|s| s.keep != Keep::Nothing) {
                    if selector.term.selects(&selector.namespace, pod) {
                        selector.pods.push((i, pod.clone()));
                    }
                }
                if pod
                    .pod_anti_affinity
                    .iter()
                    .any(|t| labels::normalize(&t.topology_key) != labels::HOSTNAME)
                {
                    owners.push(pod.clone());
                }
            }
            if !owners.is_empty() {
                anti_owners.push((i, owners));
            }
        }
        let skeletons: Vec<ExistingNode> = cluster
            .nodes
            .iter()
            .zip(&node_labels)
            .map(|(node, labels)| ExistingNode {
                name: node.name.clone(),
                labels: labels
                    .iter()
                    .filter(|(k, _)| keys.contains(*k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                taints: node.taints.clone(),
                allocatable: Resources::default(),
                pods: Vec::new(),
                initialized: node.initialized,
                nodepool: node.nodepool.clone(),
                in_flight: None,
            })
            .collect();
        let mut group_index: HashMap<String, usize> = HashMap::new();
        let mut group_skeletons: Vec<ExistingNode> = Vec::new();
        let skeleton_group: Vec<usize> = skeletons
            .iter()
            .map(|sk| {
                let mut labels = sk.labels.clone();
                labels.remove(labels::HOSTNAME);
                let key = table_key(
                    &format!("{labels:?}"),
                    &(&sk.taints, sk.initialized, &sk.nodepool),
                );
                *group_index.entry(key).or_insert_with(|| {
                    let name = format!("skeleton-{:04}", group_skeletons.len());
                    labels.insert(labels::HOSTNAME.to_owned(), name.clone());
                    group_skeletons.push(ExistingNode {
                        name,
                        labels,
                        ..sk.clone()
                    });
                    group_skeletons.len() - 1
                })
            })
            .collect();

        let mut classes: HashMap<String, usize> = HashMap::new();
        let mut class_pods: Vec<Arc<PodSpec>> = Vec::new();
        let mut entry = |pod: &Arc<PodSpec>| {
            let key = table_key(&format!("{:?}", pod.node_requirements), &pod.tolerations);
            let class = *classes.entry(key).or_insert_with(|| {
                class_pods.push(pod.clone());
                class_pods.len() - 1
            });
            let origin_name = pod.node_name.clone();
            let mut pod = pod.clone();
            if pod.node_name.is_some() {
                Arc::make_mut(&mut pod).node_name = None;
            }
            let own_terms: Vec<usize> = pod
                .pod_anti_affinity
                .iter()
                .filter_map(|t| term_index.get(&table_key(&pod.namespace, t)).copied())
                .filter(|&at| at != usize::MAX)
                .collect();
            let selected_by: Vec<usize> = terms
                .iter()
                .enumerate()
                .filter(|(_, t)| t.term.selects(&t.namespace, &pod))
                .map(|(at, _)| at)
                .collect();
            let mut hard_spread = false;
            let mut spread_ok = true;
            let mut own_spreads = Vec::new();
            for c in &pod.topology_spread {
                if c.when_unsatisfiable != WhenUnsatisfiable::DoNotSchedule {
                    continue;
                }
                hard_spread = true;
                match spread_index.get(&table_key(&pod.namespace, &(&c.topology_key, &c.selector))) {
                    Some(&g) => {
                        let zero = c.min_domains.is_some() || spreads[g].key != labels::ZONE;
                        own_spreads.push((g, c.max_skew, zero, c.selector.matches(&pod.labels)));
                    }
                    None => spread_ok = false,
                }
            }
            let counted_by: Vec<usize> = spreads
                .iter()
                .enumerate()
                .filter(|(_, g)| g.namespace == pod.namespace && g.selector.matches(&pod.labels))
                .map(|(g, _)| g)
                .collect();
            let origin = origin_name.as_deref().and_then(|n| index.get(n).copied());
            let local = spread_ok
                && pod.pod_affinity.is_empty()
                && pod
                    .pod_anti_affinity
                    .iter()
                    .all(|t| t.topology_key == labels::HOSTNAME)
                && !zonal.iter().any(|(ns, t)| t.selects(ns, &pod));
            let selectors = pod_terms(&pod)
                .iter()
                .filter_map(|t| selector_index.get(&table_key(&pod.namespace, t)).copied())
                .collect();
            Entry {
                selectors,
                origin,
                reducible: local && !hard_spread,
                local,
                spreads: own_spreads,
                counted_by,
                capacity_type: mentions(&pod, labels::CAPACITY_TYPE),
                zone: mentions(&pod, labels::ZONE),
                class,
                own_terms,
                selected_by,
                pod,
            }
        };
        let mut moving = HashMap::new();
        for candidate in &cluster.candidates {
            let pods: Vec<Entry> = candidate.reschedulable_pods().map(&mut entry).collect();
            moving.insert(candidate.node_name.as_str(), pods);
        }
        let pending: Vec<Entry> = cluster
            .pending
            .iter()
            .filter(|p| is_reschedulable(p))
            .map(&mut entry)
            .collect();
        let class_nodes = class_pods
            .iter()
            .map(|pod| {
                order
                    .iter()
                    .copied()
                    .filter(|&i| {
                        nodes[i].destination
                            && tolerates_all(&pod.tolerations, &cluster.nodes[i].taints).is_ok()
                            && terms_match(&pod.node_requirements, &node_labels[i])
                    })
                    .collect()
            })
            .collect();
        Simulator {
            cluster,
            options,
            index,
            nodes,
            sched_nodes,
            order,
            moving,
            pending,
            class_nodes,
            class_pods,
            terms,
            spreads,
            node_labels,
            one_node_templates: cluster.templates.iter().map(one_more_node).collect(),
            selectors,
            skeletons,
            skeleton_group,
            group_skeletons,
            anti_owners,
            stats: Cell::new(Stats::default()),
        }
    }

    /// Which step answered the simulations so far.
    pub fn stats(&self) -> Stats {
        self.stats.get()
    }

    fn count(&self, f: impl FnOnce(&mut Stats)) {
        let mut stats = self.stats.get();
        f(&mut stats);
        self.stats.set(stats);
    }

    /// The pods that move when these candidates go.
    fn moved(&self, candidates: &[&Candidate]) -> Vec<&Entry> {
        candidates
            .iter()
            .flat_map(|c| self.moving.get(c.node_name.as_str()).into_iter().flatten())
            .collect()
    }

    /// Whether the pod may go on node `i` alone: resources, host ports and hostname
    /// anti-affinity with the bound pods (labels and taints are the class's).
    fn fits_alone(&self, e: &Entry, i: usize, headroom: &Resources) -> bool {
        e.pod.requests.fits_in(headroom)
            && !e
                .pod
                .host_ports
                .iter()
                .any(|p| self.nodes[i].ports.iter().any(|q| p.conflicts(q)))
            && !e.own_terms.iter().any(|&t| self.terms[t].occupied[i])
            && !e.selected_by.iter().any(|&t| self.terms[t].owned[i])
    }

    /// Removes the candidates, reschedules their pods (with the pending ones) and says what
    /// happens; `bound` enables the price shortcut.
    pub fn simulate(&self, candidates: &[&Candidate], bound: Option<&PriceBound<'_>>) -> Outcome {
        let mut removed = vec![false; self.nodes.len()];
        for c in candidates {
            if let Some(&i) = self.index.get(c.node_name.as_str()) {
                removed[i] = true;
            }
        }
        let moved = self.moved(candidates);
        let all: Vec<&Entry> = moved.iter().copied().chain(self.pending.iter()).collect();
        let all_local = all.iter().all(|e| e.local);

        if all_local && self.first_fit(&all, &removed) {
            self.count(|s| s.fit += 1);
            return Outcome::Delete;
        }
        if let Some(bound) = bound
            && let Some(why) = self.no_cheaper_replacement(&moved, &removed, bound)
        {
            self.count(|s| s.bound += 1);
            return Outcome::NoOp(why);
        }

        let all_reducible = all.iter().all(|e| e.reducible);
        // Nodes some moving pod fits on alone (resources, labels, taints).
        let mut relevant = vec![false; self.nodes.len()];
        for e in &all {
            for &i in &self.class_nodes[e.class] {
                if !removed[i] && !relevant[i] && e.pod.requests.fits_in(&self.nodes[i].headroom) {
                    relevant[i] = true;
                }
            }
        }
        let full = |i: usize| !removed[i] && (relevant[i] || self.nodes[i].uninitialized);
        let nodes: Vec<ExistingNode> = if all_reducible {
            self.count(|s| s.reduced += 1);
            self.order
                .iter()
                .enumerate()
                .filter(|&(_, &i)| full(i))
                .map(|(at, _)| self.sched_nodes[at].clone())
                .collect()
        } else {
            self.count(|s| s.full += 1);
            let mut needed: Vec<usize> = all.iter().flat_map(|e| e.selectors.iter().copied()).collect();
            needed.sort_unstable();
            needed.dedup();
            needed.retain(|&g| self.selectors[g].keep != Keep::Nothing);
            let skeleton = |i: usize| !removed[i] && !full(i);
            // Nodes a hostname spread constraint counts keep a skeleton of their own; the
            // others merge by topology labels.
            let mut own: BTreeMap<usize, Vec<Arc<PodSpec>>> = BTreeMap::new();
            for &g in &needed {
                if self.selectors[g].keep == Keep::PerNode {
                    for (i, _) in &self.selectors[g].pods {
                        if skeleton(*i) {
                            own.entry(*i).or_default();
                        }
                    }
                }
            }
            let mut merged: BTreeMap<usize, Vec<Arc<PodSpec>>> = BTreeMap::new();
            for i in (0..self.nodes.len()).filter(|&i| skeleton(i) && !own.contains_key(&i)) {
                merged.entry(self.skeleton_group[i]).or_default();
            }
            let mut put = |i: usize, pods: &mut dyn Iterator<Item = Arc<PodSpec>>| match own.get_mut(&i) {
                Some(list) => list.extend(pods),
                None => merged.entry(self.skeleton_group[i]).or_default().extend(pods),
            };
            for &g in &needed {
                for (i, pod) in &self.selectors[g].pods {
                    if skeleton(*i) {
                        put(*i, &mut std::iter::once(pod.clone()));
                    }
                }
            }
            for (i, owners) in &self.anti_owners {
                if skeleton(*i) {
                    put(*i, &mut owners.iter().cloned());
                }
            }
            let with_pods = |mut node: ExistingNode, mut pods: Vec<Arc<PodSpec>>| {
                pods.sort_by(|a, b| a.uid.cmp(&b.uid));
                pods.dedup_by(|a, b| a.uid == b.uid);
                node.pods = pods;
                node
            };
            let mut nodes: Vec<ExistingNode> = self
                .order
                .iter()
                .enumerate()
                .filter(|&(_, &i)| full(i))
                .map(|(at, _)| self.sched_nodes[at].clone())
                .collect();
            nodes.extend(
                own.into_iter()
                    .map(|(i, pods)| with_pods(self.skeletons[i].clone(), pods)),
            );
            nodes.extend(
                merged
                    .into_iter()
                    .map(|(g, pods)| with_pods(self.group_skeletons[g].clone(), pods)),
            );
            nodes
        };
        let templates = if bound.is_some() {
            &self.one_node_templates
        } else {
            &self.cluster.templates
        };
        let mut scheduler = Scheduler::new(
            templates.clone(),
            nodes,
            self.cluster.daemonsets.clone(),
            self.options.scheduler.clone(),
        );
        let pods: Vec<Arc<PodSpec>> = all.iter().map(|e| e.pod.clone()).collect();
        let solution = scheduler.solve(pods);

        let moving: BTreeSet<String> = moved.iter().map(|e| e.pod.key()).collect();
        if let Some((pod, reason)) = solution
            .unschedulable
            .iter()
            .find(|(pod, _)| moving.contains(pod))
        {
            return Outcome::NoOp(NoOp::Unschedulable {
                pod: pod.clone(),
                reason: reason.clone(),
            });
        }
        for (pod, node) in &solution.existing {
            let uninitialized = self
                .index
                .get(node.as_str())
                .is_some_and(|&i| self.nodes[i].uninitialized);
            if uninitialized && moving.contains(pod) {
                return Outcome::NoOp(NoOp::Uninitialized {
                    pod: pod.clone(),
                    node: node.clone(),
                });
            }
        }
        if solution.new_claims.is_empty() {
            Outcome::Delete
        } else {
            Outcome::NewClaims(solution.new_claims)
        }
    }

    /// First fit of every pod (largest first) into the destinations' free capacity,
    /// honouring host ports, hostname anti-affinity and `DoNotSchedule` spread.
    fn first_fit(&self, pods: &[&Entry], removed: &[bool]) -> bool {
        let mut pods = pods.to_vec();
        pods.sort_by(|a, b| {
            b.pod
                .requests
                .cpu_millis
                .cmp(&a.pod.requests.cpu_millis)
                .then_with(|| b.pod.requests.memory_bytes.cmp(&a.pod.requests.memory_bytes))
        });
        // Spread counts of the groups involved, without the moving pods.
        let mut counts: HashMap<usize, HashMap<String, i64>> = HashMap::new();
        for e in &pods {
            for &(g, ..) in &e.spreads {
                counts.entry(g).or_insert_with(|| self.spreads[g].counts.clone());
            }
        }
        if !counts.is_empty() {
            for e in &pods {
                let Some(o) = e.origin else { continue };
                for g in &e.counted_by {
                    if let Some(c) = counts.get_mut(g)
                        && let Some(d) = self.domain(o, *g)
                        && let Some(n) = c.get_mut(d)
                    {
                        *n -= 1;
                    }
                }
            }
        }
        let mut taken: HashMap<usize, (Resources, Vec<&Entry>)> = HashMap::new();
        'pods: for e in pods {
            for &i in &self.class_nodes[e.class] {
                if removed[i] {
                    continue;
                }
                let (left, placed) = match taken.get(&i) {
                    Some((left, placed)) => (left, placed.as_slice()),
                    None => (&self.nodes[i].headroom, &[][..]),
                };
                if !self.fits_alone(e, i, left)
                    || placed.iter().any(|q| e.clashes(q))
                    || !self.spread_allows(e, i, &counts)
                {
                    continue;
                }
                let left = left.saturating_sub(&e.pod.requests);
                let slot = taken
                    .entry(i)
                    .or_insert_with(|| (Resources::default(), Vec::new()));
                slot.0 = left;
                slot.1.push(e);
                for g in &e.counted_by {
                    if let Some(c) = counts.get_mut(g)
                        && let Some(d) = self.domain(i, *g)
                    {
                        *c.entry(d.to_owned()).or_default() += 1;
                    }
                }
                continue 'pods;
            }
            return false;
        }
        true
    }

    /// Node `i`'s domain for spread group `g`.
    fn domain(&self, i: usize, g: usize) -> Option<&str> {
        domain_of(
            &self.node_labels[i],
            &self.cluster.nodes[i].name,
            &self.spreads[g].key,
        )
    }

    /// Whether the pod's `DoNotSchedule` spread constraints allow node `i`: the node has the
    /// key, and its domain's count (+1 when the pod matches its own selector) minus the
    /// smallest count stays within `maxSkew`.
    fn spread_allows(&self, e: &Entry, i: usize, counts: &HashMap<usize, HashMap<String, i64>>) -> bool {
        e.spreads.iter().all(|&(g, max_skew, zero, self_match)| {
            let Some(domain) = self.domain(i, g) else {
                return false;
            };
            let Some(c) = counts.get(&g) else {
                return false;
            };
            let here = c.get(domain).copied().unwrap_or(0);
            let min = if zero {
                0
            } else {
                self.spreads[g]
                    .domains
                    .iter()
                    .map(|d| c.get(d).copied().unwrap_or(0))
                    .min()
                    .unwrap_or(0)
                    .min(here)
            };
            here + i64::from(self_match) - min <= i64::from(max_skew)
        })
    }

    /// Why no replacement can be valid, when that is certain: no instance type cheaper than
    /// the bound (and not excluded) can hold every moved pod that fits no remaining node even
    /// alone, or too few for the spot-to-spot floor (see the [module documentation](self)).
    fn no_cheaper_replacement(
        &self,
        moved: &[&Entry],
        removed: &[bool],
        bound: &PriceBound<'_>,
    ) -> Option<NoOp> {
        let stranded: Vec<&Entry> = moved
            .iter()
            .copied()
            .filter(|e| {
                !self.class_nodes[e.class]
                    .iter()
                    .any(|&i| !removed[i] && self.fits_alone(e, i, &self.nodes[i].headroom))
            })
            .collect();
        if stranded.is_empty() {
            return None;
        }
        let need = stranded
            .iter()
            .fold(Resources::default(), |sum, e| add(&sum, &e.pod.requests));
        let mut classes: Vec<usize> = stranded.iter().map(|e| e.class).collect();
        classes.sort_unstable();
        classes.dedup();
        // The floor applies only when the replacement is certainly spot: no pod says anything
        // about the capacity type and every template that could launch it allows spot.
        let floor = bound.spot_floor.filter(|_| {
            !moved.iter().any(|e| e.capacity_type) && !self.pending.iter().any(|e| e.capacity_type)
        });
        // When no pod narrows the zone or capacity type, the replacement keeps its NodePool's,
        // and a type qualifies only if its worst launch price under them is below the bound
        // (what the replacement rules check); otherwise any cheaper offering might be the one.
        let pinned = |e: &&Entry| e.zone || e.capacity_type;
        let exact = !moved.iter().any(pinned) && !self.pending.iter().any(|e| pinned(&e));
        let mut cheaper: BTreeSet<&str> = BTreeSet::new();
        let mut spot_cheaper: BTreeSet<&str> = BTreeSet::new();
        let mut floor_applies = floor.is_some();
        for template in &self.cluster.templates {
            let hosts = classes
                .iter()
                .all(|&c| template_accepts(&template.requirements, &template.taints, &self.class_pods[c]));
            if !hosts {
                continue;
            }
            let reqs = &template.requirements;
            if reqs
                .get(labels::CAPACITY_TYPE)
                .is_some_and(|r| !r.has(CapacityType::Spot.as_str()))
            {
                floor_applies = false;
            }
            let spot_reqs = spot_only(reqs);
            for option in &template.instance_types {
                if bound.excluded.contains(option.name()) || !need.fits_in(&option.allocatable) {
                    continue;
                }
                if exact {
                    if worst_launch_price(option, reqs).is_some_and(|p| p < bound.cap) {
                        cheaper.insert(option.name());
                    }
                    if worst_launch_price(option, &spot_reqs).is_some_and(|p| p < bound.cap) {
                        spot_cheaper.insert(option.name());
                    }
                    continue;
                }
                for offering in option
                    .offerings
                    .iter()
                    .filter(|o| o.available && offering_allowed(o, reqs))
                {
                    if offering.price < bound.cap {
                        cheaper.insert(option.name());
                        if offering.capacity_type == CapacityType::Spot {
                            spot_cheaper.insert(option.name());
                        }
                    }
                }
            }
        }
        match floor {
            Some(_) if floor_applies && !self.options.spot_to_spot => Some(NoOp::SpotToSpotDisabled),
            Some(need) if floor_applies && spot_cheaper.len() < need => Some(NoOp::SpotToSpotFlexibility {
                have: spot_cheaper.len(),
                need,
            }),
            _ if cheaper.is_empty() => Some(NoOp::NotCheaper { price: bound.cap }),
            _ => None,
        }
    }
}

/// A spread constraint as a term on the pod's namespace.
fn spread_term(pod: &PodSpec, c: &crate::pod::TopologySpread) -> PodAffinityTerm {
    PodAffinityTerm {
        topology_key: c.topology_key.clone(),
        selector: c.selector.clone(),
        namespaces: vec![pod.namespace.clone()],
    }
}

/// A pod's topology terms: spread constraints (as terms on the pod's namespace) and its
/// required and preferred pod affinity and anti-affinity terms.
fn pod_terms(pod: &PodSpec) -> Vec<PodAffinityTerm> {
    let spread = pod.topology_spread.iter().map(|c| spread_term(pod, c));
    let terms = pod
        .pod_affinity
        .iter()
        .chain(&pod.pod_anti_affinity)
        .chain(pod.preferred_pod_affinity.iter().map(|(_, t)| t))
        .chain(pod.preferred_pod_anti_affinity.iter().map(|(_, t)| t))
        .cloned();
    spread.chain(terms).collect()
}

/// The requirements narrowed to spot capacity.
fn spot_only(reqs: &Requirements) -> Requirements {
    let mut reqs = reqs.clone();
    if let Ok(spot) = crate::requirements::Requirement::new(
        labels::CAPACITY_TYPE,
        crate::requirements::Operator::In,
        [CapacityType::Spot.as_str()],
    ) {
        reqs.add(spot);
    }
    reqs
}

/// The template with its node limit capped at one more node.
fn one_more_node(template: &NodePoolTemplate) -> NodePoolTemplate {
    let mut template = template.clone();
    let limits = template.limits.get_or_insert_with(Resources::default);
    let nodes = limits.extended.get(NODES_LIMIT).copied().unwrap_or(1).min(1);
    limits.extended.insert(NODES_LIMIT.to_owned(), nodes);
    template
}

/// Whether a NodePool template could launch a node for the pod (requirements compatible,
/// taints tolerated).
fn template_accepts(requirements: &Requirements, taints: &[Taint], pod: &PodSpec) -> bool {
    tolerates_all(&pod.tolerations, taints).is_ok()
        && (pod.node_requirements.is_empty()
            || pod.node_requirements.iter().any(|term| {
                // The hostname is decided at launch: it never rules a template out.
                if term.get(labels::HOSTNAME).is_some() {
                    let term: Requirements = term
                        .iter()
                        .filter(|r| r.key() != labels::HOSTNAME)
                        .cloned()
                        .collect();
                    requirements.compatible(&term).is_ok()
                } else {
                    requirements.compatible(term).is_ok()
                }
            }))
}
