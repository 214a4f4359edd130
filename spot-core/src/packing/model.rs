//! The packing problem as callers state it ([`Item`], [`BinType`]) and answers come back
//! ([`Bin`], [`Packing`]), and the dense form the algorithms work on ([`Problem`]).
//!
//! [`Problem`] keeps only what matters for the answer:
//! - the dimensions some item requests (a resource no item asks for cannot make a bin
//!   overflow);
//! - one *class* per distinct request vector, with its items (20,000 pods of a few
//!   deployments are a few dozen classes);
//! - the bin types some item fits in and that no other type *dominates* (at least the same
//!   capacity in every dimension for no more money: swapping a dominated type for its
//!   dominator never costs more), sorted by price.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::resources::{self, Resources};

/// Errors of the packing functions.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// An item fits in no bin type, even alone in an empty bin.
    #[error("item {item} (requests {requests}) fits in none of the {types} bin types")]
    NoFit {
        /// The index of the item in the input.
        item: usize,
        /// The item's requests.
        requests: String,
        /// How many bin types were given.
        types: usize,
    },
    /// A bin type whose price is not a finite, non-negative number.
    #[error("bin type {bin_type}: price {price} is not a finite non-negative number")]
    Price {
        /// The index of the bin type in the input.
        bin_type: usize,
        /// The price given.
        price: f64,
    },
    /// An item that requests a negative amount of a resource.
    #[error("item {item}: request {resource}={amount} is negative")]
    NegativeRequest {
        /// The index of the item in the input.
        item: usize,
        /// The resource name.
        resource: String,
        /// The amount, in the resource's base unit.
        amount: i64,
    },
    /// A bin type with a negative capacity of a resource.
    #[error("bin type {bin_type}: capacity {resource}={amount} is negative")]
    NegativeCapacity {
        /// The index of the bin type in the input.
        bin_type: usize,
        /// The resource name.
        resource: String,
        /// The amount, in the resource's base unit.
        amount: i64,
    },
    /// A packing that does not place every item exactly once in a bin it fits in (from
    /// [`Packing::check`]).
    #[error("invalid packing: {0}")]
    Invalid(String),
    /// The LP solver failed (only [`lower_bound`](super::lower_bound) reports this).
    #[error("LP solver: {0}")]
    Solver(String),
}

/// Something to place: a pod, with its effective requests (`pods: 1` included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// What the item takes from the bin it is placed in.
    pub requests: Resources,
}

impl Item {
    /// An item with these requests.
    pub fn new(requests: Resources) -> Item {
        Item { requests }
    }
}

/// A kind of bin that can be opened any number of times: an instance type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BinType {
    /// What items can take from one bin (allocatable minus DaemonSet overhead).
    pub capacity: Resources,
    /// The price of one bin, per hour.
    pub price: f64,
}

impl BinType {
    /// A bin type with this capacity and price.
    pub fn new(capacity: Resources, price: f64) -> BinType {
        BinType { capacity, price }
    }
}

/// One opened bin: its type and the items in it, by index in the input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bin {
    /// The index of the bin's type in the input.
    pub bin_type: usize,
    /// The indices of the items placed in the bin, ascending.
    pub items: Vec<usize>,
}

/// The answer of a packing function: every item in exactly one bin.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Packing {
    /// The opened bins.
    pub bins: Vec<Bin>,
}

impl Packing {
    /// The total price of the bins; NaN when a bin names a type that is not in `types`.
    pub fn cost(&self, types: &[BinType]) -> f64 {
        self.bins
            .iter()
            .map(|b| types.get(b.bin_type).map_or(f64::NAN, |t| t.price))
            .sum()
    }

    /// Checks that every item is in exactly one bin, that every bin names a type of `types`
    /// and is not empty, and that the items of each bin fit in its type's capacity.
    pub fn check(&self, items: &[Item], types: &[BinType]) -> Result<(), Error> {
        let mut seen = vec![false; items.len()];
        for (index, bin) in self.bins.iter().enumerate() {
            let Some(bin_type) = types.get(bin.bin_type) else {
                return Err(Error::Invalid(format!(
                    "bin {index} has type {} but there are {} types",
                    bin.bin_type,
                    types.len()
                )));
            };
            if bin.items.is_empty() {
                return Err(Error::Invalid(format!("bin {index} is empty")));
            }
            let mut load = Resources::default();
            for &item in &bin.items {
                let Some(slot) = seen.get_mut(item) else {
                    return Err(Error::Invalid(format!(
                        "bin {index} holds item {item} but there are {} items",
                        items.len()
                    )));
                };
                if std::mem::replace(slot, true) {
                    return Err(Error::Invalid(format!("item {item} is placed twice")));
                }
                load = load
                    .checked_add(&items[item].requests)
                    .ok_or_else(|| Error::Invalid(format!("bin {index}: the load overflows")))?;
            }
            if !load.fits_in(&bin_type.capacity) {
                return Err(Error::Invalid(format!(
                    "bin {index} (type {}): load {load} exceeds the capacity {} in {}",
                    bin.bin_type,
                    bin_type.capacity,
                    load.exceeding(&bin_type.capacity).join(", ")
                )));
            }
        }
        match seen.iter().position(|placed| !placed) {
            Some(item) => Err(Error::Invalid(format!("item {item} is in no bin"))),
            None => Ok(()),
        }
    }
}

/// The dense form of a packing problem (see the module documentation).
#[derive(Debug, Clone)]
pub(crate) struct Problem {
    /// Number of dimensions kept.
    pub dims: usize,
    /// Resource name of each dimension.
    pub dim_names: Vec<String>,
    /// Request vector of each class, `dims` amounts per class.
    pub class_req: Vec<i64>,
    /// Items of each class, ascending; classes are numbered in order of first item.
    pub class_items: Vec<Vec<usize>>,
    /// Capacity of each kept type, `dims` amounts per type; types sorted by price, then
    /// input index.
    pub type_cap: Vec<i64>,
    /// Price of each kept type.
    pub type_price: Vec<f64>,
    /// Input index of each kept type.
    pub type_index: Vec<usize>,
}

/// The amount of one dimension in a resource vector.
fn amount(r: &Resources, name: &str) -> i64 {
    match name {
        resources::CPU => r.cpu_millis,
        resources::MEMORY => r.memory_bytes,
        resources::PODS => r.pods,
        resources::EPHEMERAL_STORAGE => r.ephemeral_storage_bytes,
        other => r.extended(other),
    }
}

/// Every resource name a vector mentions, core resources first.
fn names(r: &Resources) -> impl Iterator<Item = &str> {
    [
        resources::CPU,
        resources::MEMORY,
        resources::PODS,
        resources::EPHEMERAL_STORAGE,
    ]
    .into_iter()
    .chain(r.extended.keys().map(String::as_str))
}

impl Problem {
    /// Validates the input and builds the dense form.
    pub fn new(items: &[Item], types: &[BinType]) -> Result<Problem, Error> {
        for (bin_type, t) in types.iter().enumerate() {
            if !t.price.is_finite() || t.price < 0.0 {
                return Err(Error::Price {
                    bin_type,
                    price: t.price,
                });
            }
            if let Some(name) = names(&t.capacity).find(|n| amount(&t.capacity, n) < 0) {
                return Err(Error::NegativeCapacity {
                    bin_type,
                    resource: name.to_owned(),
                    amount: amount(&t.capacity, name),
                });
            }
        }
        let mut requested = BTreeSet::new();
        for (item, it) in items.iter().enumerate() {
            for name in names(&it.requests) {
                let value = amount(&it.requests, name);
                if value < 0 {
                    return Err(Error::NegativeRequest {
                        item,
                        resource: name.to_owned(),
                        amount: value,
                    });
                }
                if value > 0 {
                    requested.insert(name);
                }
            }
        }
        // Core dimensions first, in their usual order, then extended resources by name.
        let core = [
            resources::CPU,
            resources::MEMORY,
            resources::PODS,
            resources::EPHEMERAL_STORAGE,
        ];
        let dim_names: Vec<String> = core
            .iter()
            .filter(|n| requested.contains(*n))
            .copied()
            .chain(requested.iter().copied().filter(|n| !core.contains(n)))
            .map(str::to_owned)
            .collect();
        let dims = dim_names.len();

        let mut class_of: HashMap<Vec<i64>, usize> = HashMap::new();
        let mut class_req = Vec::new();
        let mut class_items: Vec<Vec<usize>> = Vec::new();
        for (index, item) in items.iter().enumerate() {
            let req: Vec<i64> = dim_names.iter().map(|n| amount(&item.requests, n)).collect();
            let next = class_items.len();
            let class = *class_of.entry(req.clone()).or_insert(next);
            if class == next {
                class_req.extend_from_slice(&req);
                class_items.push(Vec::new());
            }
            class_items[class].push(index);
        }

        let caps: Vec<Vec<i64>> = types
            .iter()
            .map(|t| dim_names.iter().map(|n| amount(&t.capacity, n)).collect())
            .collect();
        let fits = |req: &[i64], cap: &[i64]| req.iter().zip(cap).all(|(r, c)| r <= c);
        let classes = class_items.len();
        let mut useful = vec![false; types.len()];
        for class in 0..classes {
            let req = &class_req[class * dims..(class + 1) * dims];
            let mut any = false;
            for (t, cap) in caps.iter().enumerate() {
                if fits(req, cap) {
                    useful[t] = true;
                    any = true;
                }
            }
            if !any {
                let item = class_items[class][0];
                return Err(Error::NoFit {
                    item,
                    requests: items[item].requests.to_string(),
                    types: types.len(),
                });
            }
        }
        // Drop dominated types: `u` dominates `t` when it has at least `t`'s capacity in
        // every dimension and costs no more; among identical types the first is kept.
        let candidates: Vec<usize> = (0..types.len()).filter(|&t| useful[t]).collect();
        let mut kept: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|&t| {
                !candidates.iter().any(|&u| {
                    u != t
                        && types[u].price <= types[t].price
                        && fits(&caps[t], &caps[u])
                        && (types[u].price < types[t].price || caps[u] != caps[t] || u < t)
                })
            })
            .collect();
        kept.sort_by(|&a, &b| types[a].price.total_cmp(&types[b].price).then(a.cmp(&b)));
        Ok(Problem {
            dims,
            dim_names,
            class_req,
            class_items,
            type_cap: kept.iter().flat_map(|&t| caps[t].iter().copied()).collect(),
            type_price: kept.iter().map(|&t| types[t].price).collect(),
            type_index: kept,
        })
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.class_items.len()
    }

    /// Number of kept types.
    pub fn types(&self) -> usize {
        self.type_index.len()
    }

    /// The request vector of a class.
    pub fn req(&self, class: usize) -> &[i64] {
        &self.class_req[class * self.dims..(class + 1) * self.dims]
    }

    /// The capacity vector of a kept type.
    pub fn cap(&self, t: usize) -> &[i64] {
        &self.type_cap[t * self.dims..(t + 1) * self.dims]
    }

    /// Whether a load fits in a kept type.
    pub fn fits(&self, load: &[i64], t: usize) -> bool {
        load.iter().zip(self.cap(t)).all(|(l, c)| l <= c)
    }

    /// The cheapest kept type the load fits in.
    pub fn cheapest_fit(&self, load: &[i64]) -> Option<usize> {
        (0..self.types()).find(|&t| self.fits(load, t))
    }

    /// How many more items of `class` fit in a bin of type `t` holding `load`
    /// (`usize::MAX` for a class that requests nothing).
    pub fn room(&self, load: &[i64], class: usize, t: usize) -> usize {
        let mut room = usize::MAX;
        for ((&l, &c), &r) in load.iter().zip(self.cap(t)).zip(self.req(class)) {
            if r > 0 {
                let free = (c - l).max(0) / r;
                room = room.min(usize::try_from(free).unwrap_or(usize::MAX));
            } else if l > c {
                return 0;
            }
        }
        room
    }

    /// Whether a class requests nothing at all.
    pub fn is_empty_class(&self, class: usize) -> bool {
        self.req(class).iter().all(|&r| r == 0)
    }

    /// Adds `count` items of `class` to a load.
    pub fn add(&self, load: &mut [i64], class: usize, count: usize) {
        let count = i64::try_from(count).unwrap_or(i64::MAX);
        for (l, &r) in load.iter_mut().zip(self.req(class)) {
            *l = l.saturating_add(r.saturating_mul(count));
        }
    }

    /// Turns bins given as (kept type, (class, count) pairs) into a [`Packing`] with input
    /// indices: the items of each class are handed out in ascending order.
    pub fn to_packing<'a>(&self, bins: impl IntoIterator<Item = (usize, &'a [(usize, usize)])>) -> Packing {
        let mut next = vec![0usize; self.classes()];
        let mut out = Vec::new();
        for (t, content) in bins {
            let mut items = Vec::new();
            for &(class, count) in content {
                let start = next[class];
                items.extend_from_slice(&self.class_items[class][start..start + count]);
                next[class] += count;
            }
            items.sort_unstable();
            out.push(Bin {
                bin_type: self.type_index[t],
                items,
            });
        }
        Packing { bins: out }
    }
}

impl fmt::Display for Problem {
    /// A one-line summary: classes, kept types and dimensions.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} classes, {} types, dimensions [{}]",
            self.classes(),
            self.types(),
            self.dim_names.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GI: i64 = 1 << 30;

    fn item(cpu: i64, mem: i64) -> Item {
        Item::new(Resources::new(cpu, mem).with_pods(1))
    }

    #[test]
    fn classes_dimensions_and_dominated_types() {
        let items = vec![item(500, GI), item(1000, GI), item(500, GI)];
        let types = vec![
            BinType::new(Resources::new(2000, 4 * GI).with_pods(10), 0.2),
            // Dominated by type 0: less memory, same price.
            BinType::new(Resources::new(2000, 2 * GI).with_pods(10), 0.2),
            // Identical to type 0: the first is kept.
            BinType::new(Resources::new(2000, 4 * GI).with_pods(10), 0.2),
            // Cheaper and smaller: kept, and first.
            BinType::new(Resources::new(1000, 2 * GI).with_pods(10), 0.1),
            // Fits no item.
            BinType::new(Resources::new(100, 4 * GI).with_pods(10), 0.01),
        ];
        let p = Problem::new(&items, &types).unwrap();
        assert_eq!(p.dim_names, ["cpu", "memory", "pods"]);
        assert_eq!(p.class_items, vec![vec![0, 2], vec![1]]);
        assert_eq!(p.type_index, vec![3, 0]);
        assert_eq!(p.req(1), [1000, GI, 1]);
        assert_eq!(p.cheapest_fit(&[1500, GI, 2]), Some(1));
        assert_eq!(p.room(&[500, GI, 1], 0, 1), 3);
        assert_eq!(
            p.to_string(),
            "2 classes, 2 types, dimensions [cpu, memory, pods]"
        );
        let packing = p.to_packing([(1, &[(0, 2), (1, 1)][..])]);
        assert_eq!(
            packing.bins,
            vec![Bin {
                bin_type: 0,
                items: vec![0, 1, 2]
            }]
        );
        packing.check(&items, &types).unwrap();
        assert!((packing.cost(&types) - 0.2).abs() < 1e-12);
    }

    #[test]
    fn input_errors_name_the_culprit() {
        let types = vec![BinType::new(Resources::new(1000, GI).with_pods(10), 0.1)];
        let err = Problem::new(&[item(100, GI), item(2000, GI)], &types).unwrap_err();
        assert_eq!(
            err.to_string(),
            "item 1 (requests cpu=2, memory=1Gi, pods=1) fits in none of the 1 bin types"
        );
        let gpu = Item::new(Resources::new(100, 0).with_extended(resources::NVIDIA_GPU, 1));
        assert!(matches!(
            Problem::new(&[gpu], &types),
            Err(Error::NoFit { item: 0, .. })
        ));
        let bad = vec![BinType::new(Resources::new(1000, GI), f64::NAN)];
        assert!(matches!(
            Problem::new(&[], &bad),
            Err(Error::Price { bin_type: 0, .. })
        ));
        let negative = Item::new(Resources::new(-1, 0));
        assert_eq!(
            Problem::new(&[negative], &types).unwrap_err().to_string(),
            "item 0: request cpu=-1 is negative"
        );
        let negative = vec![BinType::new(Resources::new(1000, -1), 0.1)];
        assert_eq!(
            Problem::new(&[], &negative).unwrap_err().to_string(),
            "bin type 0: capacity memory=-1 is negative"
        );
    }

    #[test]
    fn check_rejects_bad_packings() {
        let items = vec![item(600, GI), item(600, GI)];
        let types = vec![BinType::new(Resources::new(1000, 4 * GI).with_pods(10), 0.1)];
        let both = Packing {
            bins: vec![Bin {
                bin_type: 0,
                items: vec![0, 1],
            }],
        };
        let err = both.check(&items, &types).unwrap_err().to_string();
        assert!(err.contains("exceeds") && err.contains("cpu"), "{err}");
        let missing = Packing {
            bins: vec![Bin {
                bin_type: 0,
                items: vec![0],
            }],
        };
        assert_eq!(
            missing.check(&items, &types).unwrap_err().to_string(),
            "invalid packing: item 1 is in no bin"
        );
        let twice = Packing {
            bins: vec![
                Bin {
                    bin_type: 0,
                    items: vec![0],
                },
                Bin {
                    bin_type: 0,
                    items: vec![0],
                },
            ],
        };
        assert!(
            twice
                .check(&items, &types)
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
        assert!(missing.cost(&[]).is_nan());
    }
}
