//! What a NodePool can launch: [`InstanceTypeOption`]s and the [`NodePoolTemplate`], plus the
//! per-template data the scheduler precomputes once (dense allocatable minus DaemonSet
//! overhead per type, an index from label values to type masks, compact offerings).

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use crate::allocatable::AllocatableModel;
use crate::instance_type::{CapacityType, InstanceType, Offering};
use crate::labels;
use crate::node::{Taint, TaintEffect};
use crate::pod::{HostPort, PodSpec, tolerates_all};
use crate::requirements::{Operator, Requirement, Requirements};
use crate::resources::Resources;

use super::Error;
use super::intern::{Bits, Dims, FxMap, add_into, max_into};

/// One instance type as a NodePool can launch it.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceTypeOption {
    /// The instance type.
    pub instance_type: Arc<InstanceType>,
    /// Its labels (the [`labels::instance_type_labels`] keys) as `In` requirements; zone and
    /// capacity type list the values of its offerings.
    pub requirements: Requirements,
    /// What the node has before reservations.
    pub capacity: Resources,
    /// What pods can request (from the [`AllocatableModel`]).
    pub allocatable: Resources,
    /// Zone × capacity type, with price and availability.
    pub offerings: Vec<Offering>,
}

/// Whether an offering's zone and capacity type are allowed by the requirements.
pub(crate) fn offering_allowed(offering: &Offering, reqs: &Requirements) -> bool {
    reqs.get(labels::ZONE).is_none_or(|r| r.has(&offering.zone))
        && reqs
            .get(labels::CAPACITY_TYPE)
            .is_none_or(|r| r.has(offering.capacity_type.as_str()))
}

/// The requirements of an instance type sold through these offerings: every label of
/// [`labels::instance_type_labels`] as `In [value]`, with zone and capacity type listing the
/// offerings' values.
pub fn type_requirements(
    instance_type: &InstanceType,
    offerings: &[Offering],
) -> Result<Requirements, Error> {
    let first = offerings.first().ok_or_else(|| Error::NoOfferings {
        instance_type: instance_type.name.clone(),
    })?;
    let type_labels = labels::instance_type_labels(instance_type, &first.zone, first.capacity_type)?;
    let mut requirements = Requirements::new();
    for (key, value) in &type_labels {
        if key == labels::ZONE || key == labels::CAPACITY_TYPE {
            continue;
        }
        if let Ok(r) = Requirement::new(key, Operator::In, [value.clone()]) {
            requirements.add(r);
        }
    }
    let zones: Vec<String> = offerings.iter().map(|o| o.zone.clone()).collect();
    let capacity_types: Vec<String> = offerings
        .iter()
        .map(|o| o.capacity_type.as_str().to_owned())
        .collect();
    for (key, values) in [(labels::ZONE, zones), (labels::CAPACITY_TYPE, capacity_types)] {
        if let Ok(r) = Requirement::new(key, Operator::In, values) {
            requirements.add(r);
        }
    }
    Ok(requirements)
}

impl InstanceTypeOption {
    /// An option whose requirements come from [`type_requirements`] and whose capacity and
    /// allocatable come from the model.
    pub fn new(
        instance_type: Arc<InstanceType>,
        model: &AllocatableModel,
        offerings: Vec<Offering>,
    ) -> Result<InstanceTypeOption, Error> {
        let requirements = type_requirements(&instance_type, &offerings)?;
        Ok(InstanceTypeOption {
            capacity: model.capacity_resources(&instance_type),
            allocatable: model.allocatable_resources(&instance_type),
            instance_type,
            requirements,
            offerings,
        })
    }

    /// An option over a [`synthetic_type`](crate::catalog::synthetic_type) with `vcpus` and
    /// `memory_mib`, sold through `offerings` given as (zone, capacity type, price per hour),
    /// all available, with the default [`AllocatableModel`]: a compact fixture for tests,
    /// examples and simulations.
    pub fn synthetic(
        name: &str,
        vcpus: u32,
        memory_mib: u64,
        offerings: &[(&str, CapacityType, f64)],
    ) -> Result<InstanceTypeOption, Error> {
        let instance_type = crate::catalog::synthetic_type(name, vcpus, memory_mib)?;
        let offerings = offerings
            .iter()
            .map(|&(zone, capacity_type, price)| Offering {
                zone: zone.to_owned(),
                capacity_type,
                price,
                available: true,
            })
            .collect();
        InstanceTypeOption::new(Arc::new(instance_type), &AllocatableModel::default(), offerings)
    }

    /// The instance type's name.
    pub fn name(&self) -> &str {
        &self.instance_type.name
    }

    /// The cheapest available offering whose zone and capacity type the requirements allow
    /// (ties: the first listed).
    pub fn cheapest_offering(&self, reqs: &Requirements) -> Option<&Offering> {
        self.offerings
            .iter()
            .filter(|o| o.available && offering_allowed(o, reqs))
            .fold(None, |best: Option<&Offering>, o| match best {
                Some(b) if b.price <= o.price => Some(b),
                _ => Some(o),
            })
    }

    /// The price of [`InstanceTypeOption::cheapest_offering`].
    pub fn cheapest_price(&self, reqs: &Requirements) -> Option<f64> {
        self.cheapest_offering(reqs).map(|o| o.price)
    }
}

/// A NodePool as the scheduler sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodePoolTemplate {
    /// The NodePool's name.
    pub name: String,
    /// Higher weights are tried first (then names in order).
    pub weight: i32,
    /// `spec.template.spec.requirements` + `karpenter.sh/nodepool In [name]` + the template
    /// labels.
    pub requirements: Requirements,
    /// The template labels.
    pub labels: BTreeMap<String, String>,
    /// Taints every node gets.
    pub taints: Vec<Taint>,
    /// Taints removed once the node is initialized; ignored when scheduling.
    pub startup_taints: Vec<Taint>,
    /// What the NodePool may still launch (`None`: unlimited); a node limit is the extended
    /// resource `nodes`.
    pub limits: Option<Resources>,
    /// The instance types the NodePool may launch.
    pub instance_types: Vec<Arc<InstanceTypeOption>>,
}

/// The extended resource name of a node-count limit.
pub const NODES_LIMIT: &str = "nodes";

impl NodePoolTemplate {
    /// A template with `karpenter.sh/nodepool In [name]` as its only requirement, no taints,
    /// no limits and weight 0.
    pub fn new(name: impl Into<String>, instance_types: Vec<Arc<InstanceTypeOption>>) -> NodePoolTemplate {
        let name = name.into();
        let requirements = Requirements::new().with(
            Requirement::new(labels::NODE_POOL, Operator::In, [name.clone()]).unwrap_or_else(|_| {
                // An empty name cannot form `In`; fall back to requiring the label.
                Requirement::exists(labels::NODE_POOL)
            }),
        );
        NodePoolTemplate {
            name,
            weight: 0,
            requirements,
            labels: BTreeMap::new(),
            taints: Vec::new(),
            startup_taints: Vec::new(),
            limits: None,
            instance_types,
        }
    }
}

/// An offering in compact form.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Offer {
    /// Index into [`Tpl::zones`].
    pub(crate) zone: u16,
    pub(crate) spot: bool,
    pub(crate) available: bool,
    pub(crate) price: f64,
}

/// For one label key, which types allow which values.
#[derive(Debug, Clone)]
pub(crate) struct KeyIndex {
    /// Types without a requirement on the key (compatible with anything on it).
    absent: Bits,
    /// Distinct type requirements on the key, the value when it is a single `In`, and the
    /// types that have it.
    groups: Vec<(Requirement, Option<String>, Bits)>,
}

/// A limited dimension of a NodePool.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum LimitDim {
    Cpu,
    Memory,
    Pods,
    Ephemeral,
    Nodes,
    Extended(String),
}

impl LimitDim {
    /// The amount of an instance type's capacity in this dimension.
    pub(crate) fn of(&self, capacity: &Resources) -> i64 {
        match self {
            LimitDim::Cpu => capacity.cpu_millis,
            LimitDim::Memory => capacity.memory_bytes,
            LimitDim::Pods => capacity.pods,
            LimitDim::Ephemeral => capacity.ephemeral_storage_bytes,
            LimitDim::Nodes => 1,
            LimitDim::Extended(name) => capacity.extended(name),
        }
    }

    /// The dimensions a limit vector constrains, with their amounts.
    pub(crate) fn of_limits(limits: &Resources) -> Vec<(LimitDim, i64)> {
        let mut out = vec![
            (LimitDim::Cpu, limits.cpu_millis),
            (LimitDim::Memory, limits.memory_bytes),
            (LimitDim::Pods, limits.pods),
            (LimitDim::Ephemeral, limits.ephemeral_storage_bytes),
        ];
        // A zero core amount reads as "not limited": `Resources` cannot tell unset from zero.
        out.retain(|(_, amount)| *amount != 0);
        for (name, amount) in &limits.extended {
            let dim = if name == NODES_LIMIT {
                LimitDim::Nodes
            } else {
                LimitDim::Extended(name.clone())
            };
            out.push((dim, *amount));
        }
        out
    }
}

/// A template with everything the hot path needs precomputed.
#[derive(Debug, Clone)]
pub(crate) struct Tpl {
    pub(crate) spec: NodePoolTemplate,
    /// The launchable types: compatible with the template's requirements and with an
    /// available offering it allows.
    pub(crate) types: Vec<Arc<InstanceTypeOption>>,
    /// Per type (width of the dims): allocatable minus DaemonSet overhead (may be negative).
    pub(crate) cap: Vec<i64>,
    /// Per type: the DaemonSet overhead.
    pub(crate) overhead: Vec<i64>,
    /// Per type: host ports the DaemonSets bind.
    pub(crate) daemon_ports: Vec<Vec<HostPort>>,
    /// Whether any DaemonSet binds a host port on some type.
    pub(crate) any_daemon_ports: bool,
    /// Per type: its offerings.
    pub(crate) offers: Vec<Vec<Offer>>,
    /// The zones of the offerings.
    pub(crate) zones: Vec<String>,
    /// Per type: its rank by name (price ties are broken by name).
    pub(crate) rank: Vec<u32>,
    /// Label key → type index.
    keys: KeyIndexes,
    /// Whether the template has a PreferNoSchedule taint.
    pub(crate) prefer_no_schedule: bool,
    /// The limited dimensions and, per type, its capacity in each.
    pub(crate) limit_dims: Vec<(LimitDim, i64)>,
    pub(crate) limit_caps: Vec<i64>,
}

/// Label key → [`KeyIndex`] over a list of types.
pub(crate) type KeyIndexes = FxMap<String, KeyIndex>;

/// Label indexes already built, by the identity of the type list (NodePools usually share
/// their instance types).
pub(crate) type IndexCache = FxMap<Vec<usize>, Rc<KeyIndexes>>;

/// Builds the label index of a list of types.
fn key_index(types: &[Arc<InstanceTypeOption>]) -> KeyIndexes {
    let n = types.len();
    let mut keys: KeyIndexes = FxMap::default();
    // Per key, the group of each single value (most type requirements are `In [value]`).
    let mut singles: FxMap<String, FxMap<String, usize>> = FxMap::default();
    for (t, option) in types.iter().enumerate() {
        for r in option.requirements.iter() {
            if !keys.contains_key(r.key()) {
                keys.insert(
                    r.key().to_owned(),
                    KeyIndex {
                        absent: Bits::full(n),
                        groups: Vec::new(),
                    },
                );
                singles.insert(r.key().to_owned(), FxMap::default());
            }
            let (Some(entry), Some(seen)) = (keys.get_mut(r.key()), singles.get_mut(r.key())) else {
                continue;
            };
            entry.absent.clear(t);
            let single = if r.operator() == Operator::In && r.values().count() == 1 {
                r.values().next()
            } else {
                None
            };
            let existing = match single {
                Some(value) => seen.get(value).copied(),
                None => entry.groups.iter().position(|(q, _, _)| q == r),
            };
            match existing {
                Some(i) => entry.groups[i].2.set(t),
                None => {
                    if let Some(value) = single {
                        seen.insert(value.to_owned(), entry.groups.len());
                    }
                    entry
                        .groups
                        .push((r.clone(), single.map(str::to_owned), Bits::single(n, t)));
                }
            }
        }
    }
    keys
}

/// The index of a subset of the types (`keep`: their positions in the indexed list,
/// ascending).
fn restrict(index: &KeyIndexes, keep: &[usize]) -> KeyIndexes {
    let total = keep.last().map_or(0, |last| last + 1);
    let mut new_of = vec![usize::MAX; total];
    for (new, &old) in keep.iter().enumerate() {
        new_of[old] = new;
    }
    let remap = |bits: &Bits| {
        let mut out = Bits::empty(keep.len());
        for old in bits.ones() {
            if let Some(&new) = new_of.get(old)
                && new != usize::MAX
            {
                out.set(new);
            }
        }
        out
    };
    index
        .iter()
        .filter_map(|(key, k)| {
            let groups: Vec<(Requirement, Option<String>, Bits)> = k
                .groups
                .iter()
                .map(|(q, single, bits)| (q, single, remap(bits)))
                .filter(|(_, _, bits)| !bits.is_empty())
                .map(|(q, single, bits)| (q.clone(), single.clone(), bits))
                .collect();
            (!groups.is_empty()).then(|| {
                (
                    key.clone(),
                    KeyIndex {
                        absent: remap(&k.absent),
                        groups,
                    },
                )
            })
        })
        .collect()
}

/// Karpenter's `Intersects` of each type's requirements with `reqs`, as a mask over `n`
/// types.
fn compat_mask(keys: &KeyIndexes, n: usize, reqs: &Requirements) -> Bits {
    let mut mask = Bits::full(n);
    for r in reqs.iter() {
        let Some(index) = keys.get(r.key()) else { continue };
        let mut allowed = index.absent.clone();
        for (q, single, bits) in &index.groups {
            let ok = match single {
                Some(value) => r.has(value),
                None => q.is_compatible(r),
            };
            if ok {
                allowed.or_with(bits);
            }
        }
        mask.and_with(&allowed);
    }
    mask
}

impl Tpl {
    /// Precomputes a template: launchable types, DaemonSet overhead per type (the
    /// DaemonSets that tolerate the template's taints and whose node requirements the
    /// template and the type allow), dense capacities and the label index.
    pub(crate) fn build(
        spec: NodePoolTemplate,
        dims: &Dims,
        daemonsets: &[PodSpec],
        cache: &mut IndexCache,
    ) -> Tpl {
        let all = spec.instance_types.clone();
        let identity: Vec<usize> = all.iter().map(|t| Arc::as_ptr(t) as usize).collect();
        let all_keys = cache
            .entry(identity)
            .or_insert_with(|| Rc::new(key_index(&all)))
            .clone();
        let compatible = compat_mask(&all_keys, all.len(), &spec.requirements);
        let keep: Vec<usize> = all
            .iter()
            .enumerate()
            .filter(|(t, option)| {
                compatible.get(*t)
                    && option
                        .offerings
                        .iter()
                        .any(|o| o.available && offering_allowed(o, &spec.requirements))
            })
            .map(|(t, _)| t)
            .collect();
        let types: Vec<Arc<InstanceTypeOption>> = keep.iter().map(|&t| all[t].clone()).collect();
        let n = types.len();
        let keys = restrict(&all_keys, &keep);
        let mut zones: Vec<String> = Vec::new();
        let offers = types
            .iter()
            .map(|option| {
                option
                    .offerings
                    .iter()
                    .map(|o| {
                        let zone = match zones.iter().position(|z| *z == o.zone) {
                            Some(i) => i,
                            None => {
                                zones.push(o.zone.clone());
                                zones.len() - 1
                            }
                        };
                        Offer {
                            zone: zone as u16,
                            spot: o.capacity_type == CapacityType::Spot,
                            available: o.available,
                            price: o.price,
                        }
                    })
                    .collect()
            })
            .collect();

        // DaemonSet overhead per type.
        let width = dims.width();
        let mut overhead = vec![0i64; n * width];
        let mut daemon_ports = vec![Vec::new(); n];
        for daemon in daemonsets {
            if tolerates_all(&daemon.tolerations, &spec.taints).is_err() {
                continue;
            }
            let runs_on = if daemon.node_requirements.is_empty() {
                Bits::full(n)
            } else {
                let mut any = Bits::empty(n);
                for term in &daemon.node_requirements {
                    if spec.requirements.compatible(term).is_ok() {
                        any.or_with(&compat_mask(&keys, n, &spec.requirements.intersect(term)));
                    }
                }
                any
            };
            let dense = dims.dense_lossy(&daemon.requests);
            for t in runs_on.ones() {
                add_into(&mut overhead[t * width..(t + 1) * width], &dense);
                daemon_ports[t].extend(daemon.host_ports.iter().cloned());
            }
        }
        let mut cap = vec![0i64; n * width];
        for (t, option) in types.iter().enumerate() {
            let allocatable = dims.dense_lossy(&option.allocatable);
            for d in 0..width {
                cap[t * width + d] = allocatable[d].saturating_sub(overhead[t * width + d]);
            }
        }
        let limit_dims = spec.limits.as_ref().map(LimitDim::of_limits).unwrap_or_default();
        let limit_caps = types
            .iter()
            .flat_map(|option| limit_dims.iter().map(|(dim, _)| dim.of(&option.capacity)))
            .collect();
        let prefer_no_schedule = spec
            .taints
            .iter()
            .any(|t| t.effect == TaintEffect::PreferNoSchedule);
        let any_daemon_ports = daemon_ports.iter().any(|p| !p.is_empty());
        let mut by_name: Vec<usize> = (0..n).collect();
        by_name.sort_by(|&a, &b| types[a].name().cmp(types[b].name()));
        let mut rank = vec![0u32; n];
        for (r, &t) in by_name.iter().enumerate() {
            rank[t] = r as u32;
        }
        Tpl {
            spec,
            types,
            cap,
            overhead,
            daemon_ports,
            any_daemon_ports,
            offers,
            zones,
            rank,
            keys,
            prefer_no_schedule,
            limit_dims,
            limit_caps,
        }
    }

    /// The number of launchable types.
    pub(crate) fn len(&self) -> usize {
        self.types.len()
    }

    /// The types whose requirements intersect `reqs`.
    pub(crate) fn compat_mask(&self, reqs: &Requirements) -> Bits {
        compat_mask(&self.keys, self.types.len(), reqs)
    }

    /// Which zones (by index) and capacity types (spot, on-demand) `reqs` allow.
    fn allowed(&self, reqs: &Requirements) -> (Vec<bool>, bool, bool) {
        let zone_ok: Vec<bool> = match reqs.get(labels::ZONE) {
            Some(r) => self.zones.iter().map(|z| r.has(z)).collect(),
            None => vec![true; self.zones.len()],
        };
        let ct = reqs.get(labels::CAPACITY_TYPE);
        let spot_ok = ct.is_none_or(|r| r.has(CapacityType::Spot.as_str()));
        let od_ok = ct.is_none_or(|r| r.has(CapacityType::OnDemand.as_str()));
        (zone_ok, spot_ok, od_ok)
    }

    /// The types with an available offering whose zone and capacity type `reqs` allow.
    pub(crate) fn offering_mask(&self, reqs: &Requirements) -> Bits {
        let mut mask = Bits::empty(self.types.len());
        for (t, price) in self.prices(reqs).iter().enumerate() {
            if price.is_finite() {
                mask.set(t);
            }
        }
        mask
    }

    /// Per type, the price of its cheapest available offering whose zone and capacity type
    /// `reqs` allow (infinite when there is none).
    pub(crate) fn prices(&self, reqs: &Requirements) -> Vec<f64> {
        let (zone_ok, spot_ok, od_ok) = self.allowed(reqs);
        self.offers
            .iter()
            .map(|offers| {
                offers
                    .iter()
                    .filter(|o| {
                        o.available && zone_ok[o.zone as usize] && if o.spot { spot_ok } else { od_ok }
                    })
                    .map(|o| o.price)
                    .fold(f64::INFINITY, f64::min)
            })
            .collect()
    }

    /// The values the types allow for a key (finite `In` sets), if any type defines it.
    pub(crate) fn type_values(&self, key: &str) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(index) = self.keys.get(key) {
            for (q, _, _) in &index.groups {
                if q.operator() == Operator::In {
                    out.extend(q.values().map(str::to_owned));
                }
            }
        }
        out
    }

    /// The allocatable-minus-overhead vector of a type.
    pub(crate) fn cap_of(&self, t: usize, width: usize) -> &[i64] {
        &self.cap[t * width..(t + 1) * width]
    }

    /// The DaemonSet overhead vector of a type.
    pub(crate) fn overhead_of(&self, t: usize, width: usize) -> &[i64] {
        &self.overhead[t * width..(t + 1) * width]
    }

    /// The component-wise max of the caps of some types.
    pub(crate) fn envelope(&self, types: &[u16], width: usize) -> Vec<i64> {
        let mut env = vec![i64::MIN; width];
        for &t in types {
            max_into(&mut env, self.cap_of(t as usize, width));
        }
        env
    }

    /// Whether a type's capacity stays within the remaining limits.
    pub(crate) fn within_limits(&self, t: usize, remaining: &[i64]) -> bool {
        let k = self.limit_dims.len();
        self.limit_caps[t * k..(t + 1) * k]
            .iter()
            .zip(remaining)
            .all(|(cap, rem)| cap <= rem)
    }

    /// Karpenter's `subtractMax`: the remaining limits minus the largest capacity among the
    /// types, per dimension.
    pub(crate) fn subtract_max(&self, types: &[u16], remaining: &mut [i64]) {
        let k = self.limit_dims.len();
        for (d, rem) in remaining.iter_mut().enumerate() {
            let max = types
                .iter()
                .map(|&t| self.limit_caps[t as usize * k + d])
                .max()
                .unwrap_or(0);
            *rem = rem.saturating_sub(max);
        }
    }

    /// The distinct values the types allow for a key (for `minValues`).
    pub(crate) fn distinct_values(&self, types: &[u16], key: &str) -> usize {
        let mut seen: Vec<&str> = Vec::new();
        for &t in types {
            if let Some(r) = self.types[t as usize].requirements.get(key)
                && r.operator() == Operator::In
            {
                for v in r.values() {
                    if !seen.contains(&v) {
                        seen.push(v);
                    }
                }
            }
        }
        seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::synthetic_type;

    fn offering(zone: &str, capacity_type: CapacityType, price: f64) -> Offering {
        Offering {
            zone: zone.into(),
            capacity_type,
            price,
            available: true,
        }
    }

    fn option(name: &str, vcpus: u32, offerings: Vec<Offering>) -> Arc<InstanceTypeOption> {
        let t = Arc::new(synthetic_type(name, vcpus, u64::from(vcpus) * 4096).unwrap());
        Arc::new(InstanceTypeOption::new(t, &AllocatableModel::default(), offerings).unwrap())
    }

    #[test]
    fn option_requirements_and_prices() {
        let o = option(
            "m5.large",
            2,
            vec![
                offering("us-east-1a", CapacityType::Spot, 0.04),
                offering("us-east-1b", CapacityType::OnDemand, 0.096),
                Offering {
                    available: false,
                    ..offering("us-east-1c", CapacityType::Spot, 0.01)
                },
            ],
        );
        let zones: Vec<&str> = o.requirements.get(labels::ZONE).unwrap().values().collect();
        assert_eq!(zones, vec!["us-east-1a", "us-east-1b", "us-east-1c"]);
        assert!(o.requirements.get(labels::INSTANCE_TYPE).unwrap().has("m5.large"));
        assert_eq!(
            o.cheapest_price(&Requirements::new()),
            Some(0.04),
            "unavailable skipped"
        );
        let od = Requirements::new()
            .with(Requirement::new(labels::CAPACITY_TYPE, Operator::In, ["on-demand"]).unwrap());
        assert_eq!(o.cheapest_price(&od), Some(0.096));
        let zone_c =
            Requirements::new().with(Requirement::new(labels::ZONE, Operator::In, ["us-east-1c"]).unwrap());
        assert_eq!(o.cheapest_price(&zone_c), None);
        assert!(o.allocatable.cpu_millis < o.capacity.cpu_millis);
        let none = InstanceTypeOption::new(o.instance_type.clone(), &AllocatableModel::default(), Vec::new());
        assert!(matches!(none, Err(Error::NoOfferings { .. })));
    }

    #[test]
    fn template_masks_and_overhead() {
        let types = vec![
            option(
                "m5.large",
                2,
                vec![offering("us-east-1a", CapacityType::Spot, 0.04)],
            ),
            option(
                "m5.xlarge",
                4,
                vec![offering("us-east-1b", CapacityType::OnDemand, 0.2)],
            ),
            option(
                "c5.xlarge",
                4,
                vec![offering("us-east-1a", CapacityType::OnDemand, 0.17)],
            ),
        ];
        let mut spec = NodePoolTemplate::new("default", types);
        spec.requirements
            .add(Requirement::new(labels::INSTANCE_FAMILY, Operator::In, ["m5", "c5"]).unwrap());
        let mut daemon = PodSpec::new("kube-system", "ds", Resources::new(100, 1 << 20));
        daemon.node_requirements = vec![
            Requirements::new()
                .with(Requirement::new(labels::INSTANCE_FAMILY, Operator::In, ["m5"]).unwrap()),
        ];
        let dims = Dims::default();
        let tpl = Tpl::build(spec, &dims, &[daemon], &mut IndexCache::default());
        assert_eq!(tpl.len(), 3);
        let w = dims.width();
        assert_eq!(tpl.overhead_of(0, w)[0], 100, "m5 runs the DaemonSet");
        assert_eq!(tpl.overhead_of(2, w)[0], 0, "c5 does not");
        assert_eq!(tpl.cap_of(0, w)[0], tpl.types[0].allocatable.cpu_millis - 100);
        let m5 = Requirements::new()
            .with(Requirement::new(labels::INSTANCE_FAMILY, Operator::In, ["m5"]).unwrap());
        assert_eq!(tpl.compat_mask(&m5).ones().collect::<Vec<_>>(), vec![0, 1]);
        let spot = Requirements::new()
            .with(Requirement::new(labels::CAPACITY_TYPE, Operator::In, ["spot"]).unwrap());
        assert_eq!(tpl.offering_mask(&spot).ones().collect::<Vec<_>>(), vec![0]);
        let cpu_gt =
            Requirements::new().with(Requirement::new(labels::INSTANCE_CPU, Operator::Gt, ["2"]).unwrap());
        assert_eq!(tpl.compat_mask(&cpu_gt).ones().collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(tpl.distinct_values(&[0, 1, 2], labels::INSTANCE_FAMILY), 2);
        let mut values = tpl.type_values(labels::INSTANCE_FAMILY);
        values.sort();
        values.dedup();
        assert_eq!(values, vec!["c5", "m5"]);
        // A family the template excludes is not launchable.
        let mut only_c = NodePoolTemplate::new("c", tpl.spec.instance_types.clone());
        only_c
            .requirements
            .add(Requirement::new(labels::INSTANCE_FAMILY, Operator::In, ["c5"]).unwrap());
        assert_eq!(
            Tpl::build(only_c, &dims, &[], &mut IndexCache::default()).len(),
            1
        );
    }

    #[test]
    fn limits() {
        let types = vec![
            option(
                "m5.large",
                2,
                vec![offering("us-east-1a", CapacityType::Spot, 0.04)],
            ),
            option(
                "m5.2xlarge",
                8,
                vec![offering("us-east-1a", CapacityType::Spot, 0.2)],
            ),
        ];
        let mut spec = NodePoolTemplate::new("default", types);
        spec.limits = Some(Resources::new(10_000, 0).with_extended(NODES_LIMIT, 3));
        let tpl = Tpl::build(spec, &Dims::default(), &[], &mut IndexCache::default());
        assert_eq!(tpl.limit_dims.len(), 2);
        let mut remaining: Vec<i64> = tpl.limit_dims.iter().map(|(_, a)| *a).collect();
        assert!(tpl.within_limits(1, &remaining));
        tpl.subtract_max(&[0, 1], &mut remaining);
        assert_eq!(remaining, vec![2000, 2]);
        assert!(tpl.within_limits(0, &remaining) && !tpl.within_limits(1, &remaining));
    }
}
