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
    /// The positions of the hostname groups (checked first: they reject most nodes).
    pub(crate) hostname: Vec<usize>,
    /// Other groups: the domains the pod may go to whatever the node (spread: within the
    /// skew; affinity: holding a selected pod, or the pod's own domains when it bootstraps;
    /// anti-affinity: holding none).
    pub(crate) allowed: Vec<Bits>,
    /// Affinity groups that no domain satisfies yet but the pod selects itself: it takes
    /// the first domain the node allows.
    pub(crate) bootstrap: Vec<bool>,
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
    /// Per requirement id, per key: the arena index of its domains (`NO_SET`: unknown).
    set_index: Vec<Vec<u32>>,
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
        if let Some(&i) = self
            .set_index
            .get(reqs as usize)
            .and_then(|row| row.get(key as usize))
            && i != NO_SET
        {
            return i;
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
        if self.set_index.len() <= reqs as usize {
            self.set_index.resize(reqs as usize + 1, Vec::new());
        }
        let keys = self.keys.len();
        let row = &mut self.set_index[reqs as usize];
        if row.len() < keys {
            row.resize(keys, NO_SET);
        }
        row[key as usize] = i;
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

    /// The domains a (non-hostname) group lets the pod use whatever the node, and whether
    /// the pod bootstraps its own affinity. `pod_domains` are the pod's own domains,
    /// `spread_min` the spread group's global minimum.
    pub(crate) fn allowed(
        &self,
        group: u32,
        selfsel: bool,
        pod_domains: &Bits,
        spread_min: i32,
    ) -> (Bits, bool) {
        let g = &self.groups[group as usize];
        let width = g.key.map_or(0, |k| self.width(k));
        let mut allowed = Bits::empty(width);
        match g.kind {
            Kind::Spread => {
                for d in 0..width {
                    if g.count(d) + i32::from(selfsel) - spread_min <= g.max_skew {
                        allowed.set(d);
                    }
                }
            }
            Kind::Affinity => {
                for d in pod_domains.ones() {
                    if g.count(d) > 0 {
                        allowed.set(d);
                    }
                }
                if allowed.is_empty() && selfsel {
                    return (pod_domains.clone(), true);
                }
            }
            Kind::AntiAffinity => {
                for d in pod_domains.ones() {
                    if g.count(d) == 0 {
                        allowed.set(d);
                    }
                }
            }
        }
        (allowed, false)
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
            Some(_) => att.allowed[i].is_empty(),
        }
    }

    /// A hostname group on a node.
    #[inline]
    fn hostname_group_ok(&self, att: &TopoAttempt, i: usize, node: usize) -> bool {
        let g = &self.groups[att.groups[i] as usize];
        let c = g.count(node);
        match g.kind {
            Kind::Spread => c + i32::from(att.self_select[i]) <= g.max_skew,
            Kind::Affinity => c > 0 || (g.nonzero == 0 && att.self_select[i]),
            Kind::AntiAffinity => c == 0,
        }
    }

    /// A quick rejection before the full [`Topology::check`]: the hostname groups, and for
    /// the other groups whether the node's domains (under requirements `reqs`, which the
    /// pod can only narrow) meet the allowed ones.
    #[inline]
    pub(crate) fn quick_ok(&mut self, table: &ReqTable, att: &TopoAttempt, node: usize, reqs: ReqId) -> bool {
        for i in 0..att.groups.len() {
            let Some(key) = self.groups[att.groups[i] as usize].key else {
                if !self.hostname_group_ok(att, i, node) {
                    return false;
                }
                continue;
            };
            let n = self.domains_of(table, reqs, key);
            if !self.sets[n as usize].intersects(&att.allowed[i]) {
                return false;
            }
        }
        true
    }

    /// The hostname groups alone, for registered nodes.
    #[inline]
    pub(crate) fn hostname_ok(&self, att: &TopoAttempt, node: usize) -> bool {
        att.hostname.iter().all(|&i| self.hostname_group_ok(att, i, node))
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
            let Some(key) = self.groups[gid as usize].key else {
                if !self.hostname_group_ok(att, i, node) {
                    return Err(gid);
                }
                continue;
            };
            let allowed = &att.allowed[i];
            match view {
                NodeView::Real { domains, .. } => {
                    let Some(d) = domains[key as usize] else {
                        return Err(gid);
                    };
                    if !allowed.get(d as usize) {
                        return Err(gid);
                    }
                }
                NodeView::Flexible { .. } => {
                    let n_idx = self.domains_of(table, reqs, key);
                    let g = &self.groups[gid as usize];
                    let n = &self.sets[n_idx as usize];
                    let single = |d: usize| n.count_is_one() && n.get(d);
                    // The one domain to narrow to, or the set (affinity) when several stay.
                    let choice: Result<Option<usize>, ()> = match g.kind {
                        Kind::Spread => {
                            let mut best: Option<(i32, usize)> = None;
                            for d in n.ones() {
                                if allowed.get(d) {
                                    let c = g.count(d);
                                    if best.is_none_or(|(b, _)| c < b) {
                                        best = Some((c, d));
                                    }
                                }
                            }
                            best.map(|(_, d)| Some(d)).ok_or(())
                        }
                        Kind::Affinity if att.bootstrap[i] => {
                            n.ones().find(|d| allowed.get(*d)).map(Some).ok_or(())
                        }
                        Kind::Affinity => {
                            if !n.intersects(allowed) {
                                Err(())
                            } else {
                                Ok(None)
                            }
                        }
                        Kind::AntiAffinity => {
                            // Narrowed to one empty domain, so that recording it is exact.
                            n.ones().find(|d| allowed.get(*d)).map(Some).ok_or(())
                        }
                    };
                    match choice {
                        Err(()) => return Err(gid),
                        Ok(Some(d)) => {
                            if !single(d) {
                                let width = self.keys[key as usize].values.len();
                                reqs = self.narrow(table, reqs, key, Bits::single(width, d));
                            }
                        }
                        Ok(None) => {
                            if !n.is_subset_of(allowed) {
                                let mut both = n.clone();
                                both.and_with(allowed);
                                reqs = self.narrow(table, reqs, key, both);
                            }
                        }
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
        let min = t.spread_min(g, Some(&Bits::full(3)));
        assert_eq!(min, 0);
        let (allowed, bootstrap) = t.allowed(g, true, &Bits::full(3), min);
        assert_eq!(
            allowed.ones().collect::<Vec<_>>(),
            vec![2],
            "only z3 keeps the skew at 1"
        );
        let att = TopoAttempt {
            groups: vec![g],
            self_select: vec![true],
            pod_domains: vec![all],
            spread_min: vec![min],
            hostname: Vec::new(),
            allowed: vec![allowed],
            bootstrap: vec![bootstrap],
        };
        let z1 = table
            .intern(Requirements::new().with(Requirement::new(labels::ZONE, Operator::In, ["z1"]).unwrap()));
        assert!(
            !t.quick_ok(&table, &att, 0, z1),
            "a node in z1 is rejected up front"
        );
        assert!(t.quick_ok(&table, &att, 0, super::super::intern::NO_REQS));
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
            hostname: vec![0],
            allowed: vec![Bits::default()],
            bootstrap: vec![false],
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
