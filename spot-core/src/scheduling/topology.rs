//! Topology groups: pod counts per domain for topology spread, pod affinity and pod
//! anti-affinity (and the inverse anti-affinity of pods that carry it), after Karpenter's
//! `Topology` and `TopologyGroup`.
//!
//! A group is shared by every pod with the same constraint (a Deployment's 1,000 replicas
//! with one spread constraint make one group with 1,000 owners). Domains of a key are
//! interned: the hostname key uses the scheduler's node index (every existing node and new
//! claim is its own hostname domain); other keys use values registered from the NodePools,
//! their instance types and the existing nodes before the solve starts.

use std::collections::BTreeSet;

use crate::labels;
use crate::pod::{LabelSelector, PodSpec};
use crate::requirements::{Operator, Requirement};

use super::intern::{Bits, FxMap, Mode, ReqId, ReqTable};

/// What a group constrains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    /// Topology spread (max skew).
    Spread,
    /// Pod affinity: domains that already hold a selected pod.
    Affinity,
    /// Pod anti-affinity: domains that hold no selected pod.
    AntiAffinity,
}

/// One topology group.
#[derive(Debug, Clone)]
pub(crate) struct Group {
    pub(crate) kind: Kind,
    /// An inverse anti-affinity group counts the pods that *own* the anti-affinity term and
    /// constrains the pods its selector selects.
    pub(crate) inverse: bool,
    /// The key's index in [`Topology::keys`], `None` for the hostname.
    pub(crate) key: Option<u32>,
    pub(crate) key_name: String,
    pub(crate) max_skew: i32,
    pub(crate) min_domains: Option<i32>,
    namespaces: Vec<String>,
    selector: LabelSelector,
    /// Spread only: the owners' node requirement terms; a pod counts only on nodes that
    /// satisfy one (nodeAffinityPolicy Honor). Empty: every node.
    pub(crate) node_filter: Vec<ReqId>,
    counts: Vec<i32>,
    /// How many domains have a non-zero count.
    pub(crate) nonzero: u32,
}

impl Group {
    /// Whether the group counts this pod (namespace and selector).
    pub(crate) fn selects(&self, pod: &PodSpec) -> bool {
        self.namespaces.contains(&pod.namespace) && self.selector.matches(&pod.labels)
    }

    /// The count of a domain.
    #[inline]
    pub(crate) fn count(&self, domain: usize) -> i32 {
        self.counts.get(domain).copied().unwrap_or(0)
    }

    /// Adds one to a domain.
    pub(crate) fn record(&mut self, domain: usize) {
        if self.counts.len() <= domain {
            self.counts.resize(domain + 1, 0);
        }
        if self.counts[domain] == 0 {
            self.nonzero += 1;
        }
        self.counts[domain] += 1;
    }

    /// A description for unschedulable reasons.
    pub(crate) fn describe(&self) -> String {
        match self.kind {
            Kind::Spread => format!(
                "would violate topology spread on {} (maxSkew {})",
                self.key_name, self.max_skew
            ),
            Kind::Affinity => format!(
                "pod affinity on {}: no domain with a matching pod fits",
                self.key_name
            ),
            Kind::AntiAffinity if self.inverse => format!(
                "would violate the pod anti-affinity on {} of pods already placed",
                self.key_name
            ),
            Kind::AntiAffinity => format!("would violate pod anti-affinity on {}", self.key_name),
        }
    }
}

/// The identity of a group (what Karpenter hashes).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct GroupKey {
    kind: Kind,
    inverse: bool,
    key: String,
    max_skew: i32,
    min_domains: Option<i32>,
    namespaces: Vec<String>,
    selector: LabelSelector,
    node_filter: Vec<ReqId>,
}

/// The domains of one (non-hostname) key.
#[derive(Debug, Clone, Default)]
pub(crate) struct KeyDomains {
    pub(crate) name: String,
    pending: BTreeSet<String>,
    pub(crate) values: Vec<String>,
    index: FxMap<String, u32>,
}

/// A group's parameters.
pub(crate) struct GroupSpec<'a> {
    pub(crate) kind: Kind,
    pub(crate) inverse: bool,
    pub(crate) key: &'a str,
    pub(crate) max_skew: i32,
    pub(crate) min_domains: Option<i32>,
    pub(crate) namespaces: Vec<String>,
    pub(crate) selector: &'a LabelSelector,
    pub(crate) node_filter: Vec<ReqId>,
}

/// What one scheduling attempt of a pod checks: its active groups (owned, not relaxed, and
/// the inverse anti-affinity groups that select it), with per-group data computed once per
/// attempt.
#[derive(Debug, Clone, Default)]
pub(crate) struct TopoAttempt {
    pub(crate) groups: Vec<u32>,
    /// Whether the group selects the pod itself.
    pub(crate) self_select: Vec<bool>,
    /// The pod's own domains for the key (arena index), hostname groups: unused.
    pub(crate) pod_domains: Vec<u32>,
    /// Spread groups: the global minimum the skew is measured against.
    pub(crate) spread_min: Vec<i32>,
}

/// The node a pod is tried on.
#[derive(Debug, Clone, Copy)]
pub(crate) enum NodeView<'a> {
    /// A registered node with fixed labels: its domain per key.
    Real { node: u32, domains: &'a [Option<u32>] },
    /// An in-flight or new NodeClaim whose requirements may narrow.
    Flexible { node: u32 },
}

impl NodeView<'_> {
    fn node(&self) -> usize {
        match self {
            NodeView::Real { node, .. } | NodeView::Flexible { node } => *node as usize,
        }
    }
}

/// All topology groups of a solve.
#[derive(Debug, Default)]
pub(crate) struct Topology {
    pub(crate) groups: Vec<Group>,
    index: FxMap<GroupKey, u32>,
    pub(crate) keys: Vec<KeyDomains>,
    key_index: FxMap<String, u32>,
    sets: Vec<Bits>,
    set_index: FxMap<(ReqId, u32), u32>,
    narrowed: FxMap<(ReqId, u32, Bits), ReqId>,
    filter_ok: FxMap<(ReqId, ReqId, bool), bool>,
}

/// Marks "no domain set" in [`TopoAttempt::pod_domains`].
pub(crate) const NO_SET: u32 = u32::MAX;

impl Topology {
    /// The group with these parameters, created if new.
    pub(crate) fn group(&mut self, spec: GroupSpec<'_>) -> u32 {
        let key_name = labels::normalize(spec.key).to_owned();
        let mut namespaces = spec.namespaces;
        namespaces.sort();
        namespaces.dedup();
        let id = GroupKey {
            kind: spec.kind,
            inverse: spec.inverse,
            key: key_name.clone(),
            max_skew: spec.max_skew,
            min_domains: spec.min_domains,
            namespaces: namespaces.clone(),
            selector: spec.selector.clone(),
            node_filter: spec.node_filter.clone(),
        };
        if let Some(g) = self.index.get(&id) {
            return *g;
        }
        let key = if key_name == labels::HOSTNAME {
            None
        } else {
            Some(self.key_id_or_insert(&key_name))
        };
        let g = self.groups.len() as u32;
        self.groups.push(Group {
            kind: spec.kind,
            inverse: spec.inverse,
            key,
            key_name,
            max_skew: spec.max_skew,
            min_domains: spec.min_domains,
            namespaces,
            selector: spec.selector.clone(),
            node_filter: spec.node_filter,
            counts: Vec::new(),
            nonzero: 0,
        });
        self.index.insert(id, g);
        g
    }

    fn key_id_or_insert(&mut self, key: &str) -> u32 {
        if let Some(k) = self.key_index.get(key) {
            return *k;
        }
        let k = self.keys.len() as u32;
        self.keys.push(KeyDomains {
            name: key.to_owned(),
            ..KeyDomains::default()
        });
        self.key_index.insert(key.to_owned(), k);
        k
    }

    /// The index of a (normalized) topology key, if some group uses it.
    #[cfg(test)]
    pub(crate) fn key_id(&self, key: &str) -> Option<u32> {
        self.key_index.get(labels::normalize(key)).copied()
    }

    /// Registers a domain value of a key (before [`Topology::freeze`]).
    pub(crate) fn register(&mut self, key: u32, value: &str) {
        self.keys[key as usize].pending.insert(value.to_owned());
    }

    /// Fixes the domains of every key, sorted by value.
    pub(crate) fn freeze(&mut self) {
        for key in &mut self.keys {
            key.values = std::mem::take(&mut key.pending).into_iter().collect();
            key.index = key
                .values
                .iter()
                .enumerate()
                .map(|(i, v)| (v.clone(), i as u32))
                .collect();
        }
    }

    /// The domain id of a value.
    pub(crate) fn domain(&self, key: u32, value: &str) -> Option<u32> {
        self.keys[key as usize].index.get(value).copied()
    }

    /// The number of domains of a key.
    pub(crate) fn width(&self, key: u32) -> usize {
        self.keys[key as usize].values.len()
    }

    /// The set at an arena index.
    pub(crate) fn set(&self, index: u32) -> &Bits {
        &self.sets[index as usize]
    }

    /// Stores a set in the arena.
    pub(crate) fn store(&mut self, bits: Bits) -> u32 {
        self.sets.push(bits);
        (self.sets.len() - 1) as u32
    }

    /// The domains of `key` that requirements allow (all when they do not constrain it).
    pub(crate) fn domains_of(&mut self, table: &ReqTable, reqs: ReqId, key: u32) -> u32 {
        if let Some(i) = self.set_index.get(&(reqs, key)) {
            return *i;
        }
        let domains = &self.keys[key as usize];
        let bits = match table.get(reqs).get(&domains.name) {
            None => Bits::full(domains.values.len()),
            Some(r) => {
                let mut b = Bits::empty(domains.values.len());
                for (i, v) in domains.values.iter().enumerate() {
                    if r.has(v) {
                        b.set(i);
                    }
                }
                b
            }
        };
        let i = self.store(bits);
        self.set_index.insert((reqs, key), i);
        i
    }

    /// Requirements narrowed to `key In allowed`.
    fn narrow(&mut self, table: &mut ReqTable, reqs: ReqId, key: u32, allowed: Bits) -> ReqId {
        let cache_key = (reqs, key, allowed);
        if let Some(id) = self.narrowed.get(&cache_key) {
            return *id;
        }
        let domains = &self.keys[key as usize];
        let values: Vec<String> = cache_key.2.ones().map(|d| domains.values[d].clone()).collect();
        let id = match Requirement::new(&domains.name, Operator::In, values) {
            Ok(r) => table.with(reqs, r),
            Err(_) => reqs,
        };
        self.narrowed.insert(cache_key, id);
        id
    }

    /// The global minimum of a spread group over the eligible domains (0 for the hostname,
    /// or with fewer eligible domains than `minDomains`).
    pub(crate) fn spread_min(&self, group: u32, eligible: Option<&Bits>) -> i32 {
        let g = &self.groups[group as usize];
        let Some(eligible) = eligible else { return 0 };
        let mut min = i32::MAX;
        let mut n = 0;
        for d in eligible.ones() {
            n += 1;
            min = min.min(g.count(d));
        }
        if g.min_domains.is_some_and(|m| n < m) {
            return 0;
        }
        min
    }

    /// Whether an affinity group has no domain at all for the pod: no domain it may use
    /// holds a selected pod, and it cannot bootstrap by selecting itself.
    pub(crate) fn affinity_hopeless(&self, att: &TopoAttempt, i: usize) -> bool {
        let g = &self.groups[att.groups[i] as usize];
        if g.kind != Kind::Affinity || att.self_select[i] {
            return false;
        }
        match g.key {
            None => g.nonzero == 0,
            Some(_) => !self.set(att.pod_domains[i]).ones().any(|d| g.count(d) > 0),
        }
    }

    /// Checks the attempt's groups on a node and narrows the node's requirements to the
    /// domains they allow. `Err` is the violated group.
    pub(crate) fn check(
        &mut self,
        table: &mut ReqTable,
        att: &TopoAttempt,
        view: NodeView<'_>,
        mut reqs: ReqId,
    ) -> Result<ReqId, u32> {
        let node = view.node();
        for (i, &gid) in att.groups.iter().enumerate() {
            let selfsel = i32::from(att.self_select[i]);
            let Some(key) = self.groups[gid as usize].key else {
                let g = &self.groups[gid as usize];
                let c = g.count(node);
                let ok = match g.kind {
                    Kind::Spread => c + selfsel <= g.max_skew,
                    Kind::Affinity => c > 0 || (g.nonzero == 0 && selfsel == 1),
                    Kind::AntiAffinity => c == 0,
                };
                if !ok {
                    return Err(gid);
                }
                continue;
            };
            let pod_domains = att.pod_domains[i];
            match view {
                NodeView::Real { domains, .. } => {
                    let g = &self.groups[gid as usize];
                    let Some(d) = domains[key as usize] else {
                        return Err(gid);
                    };
                    let d = d as usize;
                    let c = g.count(d);
                    let p = &self.sets[pod_domains as usize];
                    let ok = match g.kind {
                        Kind::Spread => c + selfsel - att.spread_min[i] <= g.max_skew,
                        Kind::Affinity => {
                            if p.ones().any(|x| g.count(x) > 0) {
                                c > 0 && p.get(d)
                            } else {
                                selfsel == 1 && p.get(d)
                            }
                        }
                        Kind::AntiAffinity => c == 0,
                    };
                    if !ok {
                        return Err(gid);
                    }
                }
                NodeView::Flexible { .. } => {
                    let n_idx = self.domains_of(table, reqs, key);
                    let g = &self.groups[gid as usize];
                    let n = &self.sets[n_idx as usize];
                    let p = &self.sets[pod_domains as usize];
                    let width = self.keys[key as usize].values.len();
                    let allowed = match g.kind {
                        Kind::Spread => {
                            let mut best: Option<(i32, usize)> = None;
                            for d in n.ones() {
                                let c = g.count(d) + selfsel;
                                if c - att.spread_min[i] <= g.max_skew && best.is_none_or(|(b, _)| c < b) {
                                    best = Some((c, d));
                                }
                            }
                            match best {
                                Some((_, d)) => Bits::single(width, d),
                                None => return Err(gid),
                            }
                        }
                        Kind::Affinity => {
                            let mut options = Bits::empty(width);
                            for d in p.ones() {
                                if g.count(d) > 0 {
                                    options.set(d);
                                }
                            }
                            if options.is_empty() && selfsel == 1 {
                                if let Some(d) = p.ones().find(|d| n.get(*d)) {
                                    options.set(d);
                                }
                                if let Some(d) = p.first() {
                                    options.set(d);
                                }
                            }
                            options.and_with(n);
                            if options.is_empty() {
                                return Err(gid);
                            }
                            options
                        }
                        Kind::AntiAffinity => {
                            // Narrowed to one empty domain, so that recording it is exact.
                            match p.ones().find(|d| n.get(*d) && g.count(*d) == 0) {
                                Some(d) => Bits::single(width, d),
                                None => return Err(gid),
                            }
                        }
                    };
                    if allowed != *n {
                        reqs = self.narrow(table, reqs, key, allowed);
                    }
                }
            }
        }
        Ok(reqs)
    }

    /// Whether a spread group counts pods on a node with these requirements.
    fn filter_matches(&mut self, table: &mut ReqTable, group: u32, reqs: ReqId, strict: bool) -> bool {
        let filter = &self.groups[group as usize].node_filter;
        if filter.is_empty() {
            return true;
        }
        let filter = filter.clone();
        filter.iter().any(|&term| {
            if let Some(ok) = self.filter_ok.get(&(reqs, term, strict)) {
                return *ok;
            }
            let mode = if strict { Mode::Strict } else { Mode::Lenient };
            let ok = table.combine(reqs, term, mode).is_ok();
            self.filter_ok.insert((reqs, term, strict), ok);
            ok
        })
    }

    /// Records a pod placed on a node with final requirements `reqs`: in every group that
    /// selects it (spread: if the node passes the group's node filter; affinity and spread
    /// only when the domain is decided, anti-affinity in every possible domain), and in the
    /// inverse groups it owns.
    pub(crate) fn record(
        &mut self,
        table: &mut ReqTable,
        selected_by: &[u32],
        inverse_owned: &[u32],
        view: NodeView<'_>,
        reqs: ReqId,
    ) {
        let node = view.node();
        for (&gid, owner) in selected_by
            .iter()
            .map(|g| (g, false))
            .chain(inverse_owned.iter().map(|g| (g, true)))
        {
            let (kind, key) = {
                let g = &self.groups[gid as usize];
                (g.kind, g.key)
            };
            if !owner && kind == Kind::Spread {
                let strict = matches!(view, NodeView::Real { .. });
                if !self.filter_matches(table, gid, reqs, strict) {
                    continue;
                }
            }
            let all = owner || kind == Kind::AntiAffinity;
            match (key, view) {
                (None, _) => self.groups[gid as usize].record(node),
                (Some(k), NodeView::Real { domains, .. }) => {
                    if let Some(d) = domains[k as usize] {
                        self.groups[gid as usize].record(d as usize);
                    }
                }
                (Some(k), NodeView::Flexible { .. }) => {
                    let set = self.domains_of(table, reqs, k);
                    let domains: Vec<usize> = self.sets[set as usize].ones().collect();
                    if all || domains.len() == 1 {
                        for d in domains {
                            self.groups[gid as usize].record(d);
                        }
                    }
                }
            }
        }
    }

    /// Records a bound pod in a group at a known domain (setup).
    pub(crate) fn record_at(&mut self, group: u32, domain: usize) {
        self.groups[group as usize].record(domain);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::requirements::Requirements;

    fn spread(topology: &mut Topology, key: &str, max_skew: i32, selector: &LabelSelector) -> u32 {
        topology.group(GroupSpec {
            kind: Kind::Spread,
            inverse: false,
            key,
            max_skew,
            min_domains: None,
            namespaces: vec!["default".into()],
            selector,
            node_filter: Vec::new(),
        })
    }

    #[test]
    fn groups_are_shared_and_domains_sorted() {
        let mut t = Topology::default();
        let selector = LabelSelector::labels([("app", "web")]);
        let a = spread(&mut t, labels::ZONE, 1, &selector);
        let b = spread(&mut t, labels::FAILURE_DOMAIN_ZONE, 1, &selector);
        assert_eq!(a, b, "same constraint, same group (keys normalized)");
        assert_ne!(a, spread(&mut t, labels::ZONE, 2, &selector));
        let k = t.key_id(labels::ZONE).unwrap();
        t.register(k, "z2");
        t.register(k, "z1");
        t.register(k, "z2");
        t.freeze();
        assert_eq!(t.keys[k as usize].values, vec!["z1", "z2"]);
        assert_eq!(t.domain(k, "z2"), Some(1));
        assert_eq!(t.width(k), 2);
        let mut web = PodSpec::new("default", "w", crate::resources::Resources::default());
        web.labels.insert("app".into(), "web".into());
        assert!(t.groups[a as usize].selects(&web));
        web.namespace = "other".into();
        assert!(!t.groups[a as usize].selects(&web));
    }

    #[test]
    fn spread_picks_the_least_loaded_allowed_domain() {
        let mut t = Topology::default();
        let mut table = ReqTable::new();
        let selector = LabelSelector::labels([("app", "web")]);
        let g = spread(&mut t, labels::ZONE, 1, &selector);
        let k = t.key_id(labels::ZONE).unwrap();
        for z in ["z1", "z2", "z3"] {
            t.register(k, z);
        }
        t.freeze();
        t.record_at(g, 0);
        t.record_at(g, 1);
        let all = t.domains_of(&table, super::super::intern::NO_REQS, k);
        let att = TopoAttempt {
            groups: vec![g],
            self_select: vec![true],
            pod_domains: vec![all],
            spread_min: vec![t.spread_min(g, Some(&Bits::full(3)))],
        };
        assert_eq!(att.spread_min[0], 0);
        let reqs = t
            .check(
                &mut table,
                &att,
                NodeView::Flexible { node: 0 },
                super::super::intern::NO_REQS,
            )
            .unwrap();
        let zone = table.get(reqs).get(labels::ZONE).unwrap();
        assert_eq!(zone.values().collect::<Vec<_>>(), vec!["z3"]);
        // A registered node in z1 (count 1 + self − min 0 = 2 > 1) is refused.
        let domains = [Some(0u32)];
        assert_eq!(
            t.check(
                &mut table,
                &att,
                NodeView::Real {
                    node: 0,
                    domains: &domains
                },
                0
            ),
            Err(g)
        );
        assert!(t.groups[g as usize].describe().contains("maxSkew 1"));
        // Record in z3 through the flexible node's requirements.
        t.record(&mut table, &[g], &[], NodeView::Flexible { node: 0 }, reqs);
        assert_eq!(t.groups[g as usize].count(2), 1);
        let z_any = table.intern(Requirements::new());
        assert_eq!(z_any, super::super::intern::NO_REQS);
    }

    #[test]
    fn hostname_affinity_and_anti_affinity() {
        let mut t = Topology::default();
        let mut table = ReqTable::new();
        let selector = LabelSelector::labels([("app", "db")]);
        let spec = |kind| GroupSpec {
            kind,
            inverse: false,
            key: labels::HOSTNAME,
            max_skew: i32::MAX,
            min_domains: None,
            namespaces: vec!["default".into()],
            selector: &selector,
            node_filter: Vec::new(),
        };
        let anti = t.group(spec(Kind::AntiAffinity));
        let affinity = t.group(spec(Kind::Affinity));
        t.freeze();
        let att = |g: u32, selfsel: bool| TopoAttempt {
            groups: vec![g],
            self_select: vec![selfsel],
            pod_domains: vec![NO_SET],
            spread_min: vec![0],
        };
        assert!(t.affinity_hopeless(&att(affinity, false), 0));
        assert!(
            !t.affinity_hopeless(&att(affinity, true), 0),
            "self-affinity bootstraps"
        );
        assert!(
            t.check(&mut table, &att(anti, true), NodeView::Flexible { node: 3 }, 0)
                .is_ok()
        );
        t.record_at(anti, 3);
        t.record_at(affinity, 3);
        assert_eq!(
            t.check(&mut table, &att(anti, true), NodeView::Flexible { node: 3 }, 0),
            Err(anti)
        );
        assert!(
            t.check(&mut table, &att(anti, true), NodeView::Flexible { node: 4 }, 0)
                .is_ok()
        );
        assert!(
            t.check(
                &mut table,
                &att(affinity, false),
                NodeView::Flexible { node: 3 },
                0
            )
            .is_ok()
        );
        assert_eq!(
            t.check(
                &mut table,
                &att(affinity, false),
                NodeView::Flexible { node: 4 },
                0
            ),
            Err(affinity)
        );
    }
}
