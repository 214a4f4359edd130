//! The cost-minimising packer: a greedy construction by cost efficiency with value
//! correction, then local search ([`search`](super::search)).
//!
//! **Item values.** The *value* of an item is what it would cost alone, packed as densely as
//! a fluid into the type that suits it best: `min over types t of price(t) × share(t)`, where
//! `share(t)` is the largest fraction of a resource of `t` the item takes. A bin's
//! *efficiency* is the value of its items divided by its price: 1 for a bin of the item's
//! best type filled to the brim with it, above 1 when complementary items (CPU-heavy with
//! memory-heavy) share a bin better than either could alone.
//!
//! **Construction.** While items are left, every type is filled several ways and the most
//! efficient bin wins:
//! - *slice*: the type takes the largest proportional slice of what is left (every class in
//!   the same proportion, so a mixed workload stays mixed), then is topped up largest first;
//! - *largest first*: classes by the share of the type they take, descending;
//! - *affinity*: classes the type serves best first (the item's value over the price of the
//!   share of this type it takes: 1 for the class's best type);
//! - *balanced* (bins of at most [`BALANCED_MAX_ITEMS`] items): item by item, the class whose
//!   requests best match the free capacity;
//! - *knapsack* (bins of at most [`KNAPSACK_MAX_ITEMS`] items): the content of highest value,
//!   by a bounded exact search.
//!
//! The winning bin is repeated as often as the remaining items allow, which keeps the
//! number of rounds near the number of distinct bin shapes. Types are measured lazily, from
//! an upper bound on their efficiency. Once what is left fits in one bin, "finish with the
//! cheapest type that holds it all" is remembered as an alternative to the greedy tail, and
//! the cheaper ending is kept.
//!
//! **Value correction.** The construction and a quick local search run [`PASSES`] times; after
//! each run, the value of every class is multiplied by the mean inverse efficiency of the
//! bins its items ended up in, so items that were left to fill poor bins are placed earlier
//! next time. The cheapest run then gets a thorough local search
//! ([`search`](super::search)).
//!
//! Identical items are grouped into classes (see [`Problem`]), so the work depends on the
//! number of distinct request vectors, not on the number of items.

use super::model::{BinType, Error, Item, Packing, Problem};

/// Packs `items` into bins of `types` to minimise the total price (see the module
/// documentation). Deterministic: the same input gives the same answer. Fails when an item
/// fits in no type (the error names it), or on invalid input (negative amounts, a price that
/// is not a finite non-negative number).
pub fn pack(items: &[Item], types: &[BinType]) -> Result<Packing, Error> {
    let problem = Problem::new(items, types)?;
    let mut packer = Packer::new(&problem);
    let bins = packer.solve();
    Ok(problem.to_packing(bins.iter().map(|b| (b.ty, b.content.as_slice()))))
}

/// Items as (class, count) pairs sorted by class.
pub(crate) type Content = Vec<(usize, usize)>;

/// One bin under construction: its (kept) type, its load and its items as (class, count)
/// pairs sorted by class.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BinState {
    pub ty: usize,
    pub load: Vec<i64>,
    pub content: Vec<(usize, usize)>,
}

/// Above this many (class, type) pairs, every type uses the same class order.
const PER_TYPE_ORDER_LIMIT: usize = 1 << 20;
/// A type whose last measured efficiency is within this fraction of the best bin of the
/// round is measured again (efficiencies drift as items are used up).
const LAZY_SLACK: f64 = 0.02;
/// Construction and local search runs, each with values corrected by the previous one.
const PASSES: usize = 6;
/// Balanced fills are tried in bins that hold at most this many of the smallest items
/// (in some resource).
const BALANCED_MAX_ITEMS: i64 = 128;
/// Bins that hold at most this many items are also filled by a bounded exact search.
const KNAPSACK_MAX_ITEMS: i64 = 8;
/// Nodes the exact search of one bin may visit.
const KNAPSACK_NODES: usize = 3000;

/// How a type is filled in one round of the construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strategy {
    Slice,
    Largest,
    Affinity,
    Balanced,
    Knapsack,
}

/// Class orders for one construction, per candidate type (by position in the candidate
/// list).
struct Orders {
    /// Per type: the classes that fit it, largest share first. Empty when `global` is used.
    largest: Vec<Vec<u32>>,
    /// Per type: the classes that fit it, the ones it serves best first.
    affinity: Vec<Vec<u32>>,
    /// One order for every type (by value, descending) when per-type orders are too big.
    global: Vec<u32>,
}

/// The packer's state: the problem, item values and scratch space.
pub(crate) struct Packer<'p> {
    pub p: &'p Problem,
    /// Value of one item of each class (see the module documentation).
    pub value: Vec<f64>,
    /// Prices below this count as this when dividing (types may be free).
    price_floor: f64,
    /// Scratch: items of each class taken by the bin being filled.
    taken: Vec<usize>,
    /// Scratch: remaining items of each class in the construction.
    rem: Vec<usize>,
    /// Per dimension, the lowest price per unit of any type.
    pub unit_price: Vec<f64>,
}

impl<'p> Packer<'p> {
    /// Computes item values.
    pub fn new(p: &'p Problem) -> Packer<'p> {
        let max_price = p.type_price.iter().copied().fold(0.0, f64::max);
        let scale = if max_price > 0.0 { max_price } else { 1.0 };
        let mut max_cap = vec![0i64; p.dims];
        for t in 0..p.types() {
            for (m, &c) in max_cap.iter_mut().zip(p.cap(t)) {
                *m = (*m).max(c);
            }
        }
        let value = (0..p.classes())
            .map(|c| {
                if p.is_empty_class(c) {
                    return 0.0;
                }
                let best = (0..p.types())
                    .filter_map(|t| share(p, c, t).map(|s| p.type_price[t] * s))
                    .fold(f64::INFINITY, f64::min);
                let size = p
                    .req(c)
                    .iter()
                    .zip(&max_cap)
                    .filter(|(r, _)| **r > 0)
                    .map(|(&r, &m)| r as f64 / m as f64)
                    .fold(0.0, f64::max);
                // The tiny size term keeps values positive when some types are free.
                best + 1e-9 * scale * size
            })
            .collect();
        let unit_price = (0..p.dims)
            .map(|d| {
                (0..p.types())
                    .filter(|&t| p.cap(t)[d] > 0)
                    .map(|t| p.type_price[t] / p.cap(t)[d] as f64)
                    .fold(f64::INFINITY, f64::min)
            })
            .map(|u| if u.is_finite() { u } else { 0.0 })
            .collect();
        Packer {
            p,
            value,
            unit_price,
            price_floor: 1e-12 * scale,
            taken: vec![0; p.classes()],
            rem: vec![0; p.classes()],
        }
    }

    /// The price of a kept type as a divisor.
    pub fn divisor(&self, t: usize) -> f64 {
        self.p.type_price[t].max(self.price_floor)
    }

    /// The efficiency of a bin: the value of its items over its price.
    pub fn efficiency(&self, bin: &BinState) -> f64 {
        self.content_value(&bin.content) / self.divisor(bin.ty)
    }

    /// The value of a content.
    pub fn content_value(&self, content: &[(usize, usize)]) -> f64 {
        content.iter().map(|&(c, k)| self.value[c] * k as f64).sum()
    }

    /// The total price of bins.
    pub fn cost(&self, bins: &[BinState]) -> f64 {
        bins.iter().map(|b| self.p.type_price[b.ty]).sum()
    }

    /// Packs every item: [`PASSES`] runs of construction and local search, each with item
    /// values corrected by the previous run (items that ended up in inefficient bins are
    /// worth more, so the next construction places them earlier); the cheapest run wins.
    /// Then the items that request nothing go into the first bin (or the cheapest type when
    /// there is no other bin).
    pub fn solve(&mut self) -> Vec<BinState> {
        let p = self.p;
        let all: Vec<(usize, usize)> = (0..p.classes())
            .filter(|&c| !p.is_empty_class(c))
            .map(|c| (c, p.class_items[c].len()))
            .collect();
        let mut best: Option<(f64, Vec<BinState>, Vec<f64>)> = None;
        for pass in 0..PASSES {
            let Some(mut bins) = self.construct(&all, f64::INFINITY) else {
                break;
            };
            self.improve(&mut bins, false);
            let cost = self.cost(&bins);
            let values = self.value.clone();
            if pass + 1 < PASSES {
                self.correct_values(&bins);
            }
            if best.as_ref().is_none_or(|(b, _, _)| cost < b * (1.0 - 1e-12)) {
                best = Some((cost, bins, values));
            }
        }
        let mut bins = match best {
            Some((_, mut bins, values)) => {
                self.value = values;
                self.improve(&mut bins, true);
                bins
            }
            None => Vec::new(),
        };
        let free: Vec<(usize, usize)> = (0..p.classes())
            .filter(|&c| p.is_empty_class(c))
            .map(|c| (c, p.class_items[c].len()))
            .collect();
        if !free.is_empty() {
            if bins.is_empty() {
                bins.push(BinState {
                    ty: 0,
                    load: vec![0; p.dims],
                    content: Vec::new(),
                });
            }
            let first = &mut bins[0].content;
            first.extend(free);
            first.sort_unstable();
        }
        bins
    }

    /// Sequential value correction: each class's value is multiplied by the mean inverse
    /// efficiency of the bins its items ended up in (a class left in half-empty bins is
    /// worth twice as much next time; uniform scaling changes nothing, as only ratios of
    /// efficiencies matter).
    fn correct_values(&mut self, bins: &[BinState]) {
        let mut inverse = vec![0.0; self.p.classes()];
        let mut count = vec![0usize; self.p.classes()];
        for bin in bins {
            let efficiency = self.efficiency(bin);
            if efficiency > 0.0 {
                for &(c, k) in &bin.content {
                    inverse[c] += k as f64 / efficiency;
                    count[c] += k;
                }
            }
        }
        for (c, value) in self.value.iter_mut().enumerate() {
            if count[c] > 0 {
                *value *= inverse[c] / count[c] as f64;
            }
        }
    }

    /// A bin holding `content`, of the cheapest type it fits in.
    pub fn right_sized(&self, content: Vec<(usize, usize)>) -> Option<BinState> {
        let mut load = vec![0; self.p.dims];
        for &(c, k) in &content {
            self.p.add(&mut load, c, k);
        }
        let ty = self.p.cheapest_fit(&load)?;
        Some(BinState { ty, load, content })
    }

    /// The greedy construction on a pool of (class, count) pairs with the types cheaper
    /// than `max_price` (see the module documentation); the bins are right-sized. `None`
    /// when some item fits in none of those types.
    ///
    /// Types are measured lazily: each round measures types in decreasing order of their
    /// last measured efficiency and stops at the first one that cannot come within
    /// [`LAZY_SLACK`] of the best bin found, as efficiencies only drift down as items are
    /// used up.
    pub fn construct(&mut self, pool: &[(usize, usize)], max_price: f64) -> Option<Vec<BinState>> {
        let p = self.p;
        let mut active: Vec<usize> = Vec::new();
        for &(c, k) in pool {
            if k > 0 && !p.is_empty_class(c) {
                if self.rem[c] == 0 {
                    active.push(c);
                }
                self.rem[c] += k;
            }
        }
        active.sort_unstable();
        let types: Vec<usize> = (0..p.types()).filter(|&t| p.type_price[t] < max_price).collect();
        let orders = self.orders(&active, &types);
        let strategies: &[Strategy] = if orders.global.is_empty() {
            &[
                Strategy::Slice,
                Strategy::Largest,
                Strategy::Affinity,
                Strategy::Balanced,
                Strategy::Knapsack,
            ]
        } else {
            &[Strategy::Slice, Strategy::Largest]
        };
        let mut stale = self.efficiency_bounds(&active, &types);
        let mut candidates: Vec<usize> = (0..types.len()).collect();
        let mut bins: Vec<BinState> = Vec::new();
        // (number of bins before, type holding everything left, what was left)
        let mut endings: Vec<(usize, usize, Content)> = Vec::new();
        let mut content = Vec::new();
        let mut best_content = Vec::new();
        while !active.is_empty() {
            let mut totals = vec![0i64; p.dims];
            let mut min_req = vec![i64::MAX; p.dims];
            for &c in &active {
                p.add(&mut totals, c, self.rem[c]);
                for (m, &r) in min_req.iter_mut().zip(p.req(c)) {
                    *m = (*m).min(r);
                }
            }
            if let Some(t) = types.iter().copied().find(|&t| p.fits(&totals, t)) {
                let left = active.iter().map(|&c| (c, self.rem[c])).collect();
                endings.push((bins.len(), t, left));
            }
            let totals: Vec<(usize, f64)> = totals
                .iter()
                .enumerate()
                .filter(|(_, total)| **total > 0)
                .map(|(d, &total)| (d, total as f64))
                .collect();
            candidates.sort_by(|&a, &b| stale[b].total_cmp(&stale[a]).then(a.cmp(&b)));
            // (efficiency, value)
            let mut best: Option<(f64, f64)> = None;
            for &i in &candidates {
                if let Some((e, _)) = best
                    && stale[i] < e * (1.0 - LAZY_SLACK)
                {
                    break;
                }
                let t = types[i];
                let cap = p.cap(t);
                let s = totals
                    .iter()
                    .map(|&(d, total)| cap[d] as f64 / total)
                    .fold(f64::INFINITY, f64::min);
                let mut measured: f64 = 0.0;
                // Balanced fills pay off in bins of few items; slices balance large ones.
                let most = cap
                    .iter()
                    .zip(&min_req)
                    .filter(|(_, m)| **m > 0)
                    .map(|(c, m)| c / m)
                    .min()
                    .unwrap_or(i64::MAX);
                for &strategy in strategies {
                    if (strategy == Strategy::Balanced && most > BALANCED_MAX_ITEMS)
                        || (strategy == Strategy::Knapsack && most > KNAPSACK_MAX_ITEMS)
                    {
                        continue;
                    }
                    let value = match strategy {
                        Strategy::Balanced => self.fill_balanced(t, &active, &min_req, &mut content),
                        Strategy::Knapsack => self.fill_knapsack(t, &active, &mut content),
                        Strategy::Slice | Strategy::Largest | Strategy::Affinity => {
                            let order: &[u32] = match strategy {
                                _ if !orders.global.is_empty() => &orders.global,
                                Strategy::Affinity => &orders.affinity[i],
                                _ => &orders.largest[i],
                            };
                            let slice = (strategy == Strategy::Slice).then_some(s);
                            self.fill(t, slice, order, &active, &min_req, &mut content)
                        }
                    };
                    if content.is_empty() {
                        continue;
                    }
                    let efficiency = value / self.divisor(t);
                    measured = measured.max(efficiency);
                    let better = match best {
                        None => true,
                        Some((e, v)) => {
                            efficiency > e * (1.0 + 1e-12)
                                || (efficiency >= e * (1.0 - 1e-12) && value > v * (1.0 + 1e-12))
                        }
                    };
                    if better {
                        best = Some((efficiency, value));
                        std::mem::swap(&mut best_content, &mut content);
                    }
                }
                stale[i] = measured;
            }
            if best.is_none() {
                break;
            }
            let copies = best_content
                .iter()
                .map(|&(c, k)| self.rem[c] / k)
                .min()
                .unwrap_or(1)
                .max(1);
            for &(c, k) in &best_content {
                self.rem[c] -= k * copies;
            }
            if let Some(bin) = self.right_sized(best_content.clone()) {
                bins.extend(std::iter::repeat_n(bin, copies));
            }
            active.retain(|&c| self.rem[c] > 0);
        }
        let complete = active.is_empty();
        for &c in &active {
            self.rem[c] = 0;
        }
        if !complete {
            return None;
        }
        // Keep the cheapest ending.
        let mut suffix = vec![0.0; bins.len() + 1];
        for i in (0..bins.len()).rev() {
            suffix[i] = suffix[i + 1] + p.type_price[bins[i].ty];
        }
        let mut choice: Option<(f64, usize)> = None;
        for (index, &(start, t, _)) in endings.iter().enumerate() {
            let saving = suffix[start] - p.type_price[t];
            if saving > 1e-9 * suffix[start] && choice.is_none_or(|(s, _)| saving > s) {
                choice = Some((saving, index));
            }
        }
        if let Some((_, index)) = choice {
            let (start, _, left) = endings.swap_remove(index);
            bins.truncate(start);
            bins.extend(self.right_sized(left));
        }
        Some(bins)
    }

    /// An upper bound on the efficiency of one bin of each type of `types` filled from the
    /// remaining items of `active` classes: the value of everything left, and for each
    /// resource every class requests, the fractional knapsack of that resource alone (the
    /// classes of highest value per unit first, as many as are left and fit).
    fn efficiency_bounds(&self, active: &[usize], types: &[usize]) -> Vec<f64> {
        let p = self.p;
        let total: f64 = active.iter().map(|&c| self.value[c] * self.rem[c] as f64).sum();
        // Per bounding dimension: the classes by value per unit, highest first.
        let mut by_density: Vec<(usize, Vec<(usize, f64)>)> = Vec::new();
        for d in 0..p.dims {
            if active.iter().any(|&c| p.req(c)[d] == 0) {
                continue;
            }
            let mut classes: Vec<(usize, f64)> = active
                .iter()
                .map(|&c| (c, self.value[c] / p.req(c)[d] as f64))
                .collect();
            classes.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            by_density.push((d, classes));
        }
        types
            .iter()
            .map(|&t| {
                let cap = p.cap(t);
                let mut bound = total;
                for (d, classes) in &by_density {
                    let mut room = cap[*d] as f64;
                    let mut value = 0.0;
                    for &(c, density) in classes {
                        if room <= 0.0 {
                            break;
                        }
                        if share(p, c, t).is_none() {
                            continue;
                        }
                        let amount = (p.req(c)[*d] as f64 * self.rem[c] as f64).min(room);
                        value += amount * density;
                        room -= amount;
                    }
                    bound = bound.min(value);
                }
                bound / self.divisor(t) * (1.0 + 1e-9)
            })
            .collect()
    }

    /// Fills one bin of type `t` from the remaining items; returns the value of its content,
    /// written to `out` as (class, count) sorted by class.
    fn fill(
        &mut self,
        t: usize,
        slice: Option<f64>,
        order: &[u32],
        active: &[usize],
        min_req: &[i64],
        out: &mut Vec<(usize, usize)>,
    ) -> f64 {
        let p = self.p;
        let cap = p.cap(t);
        let mut load = vec![0i64; p.dims];
        out.clear();
        if let Some(s) = slice {
            for &c in active {
                let want = if s >= 1.0 {
                    self.rem[c]
                } else {
                    ((s * self.rem[c] as f64).floor() as usize).min(self.rem[c])
                };
                let k = want.min(p.room(&load, c, t));
                if k > 0 {
                    p.add(&mut load, c, k);
                    self.taken[c] += k;
                    out.push((c, 0));
                }
            }
        }
        for &c in order {
            if is_full(&load, cap, min_req) {
                break;
            }
            let c = c as usize;
            let avail = self.rem[c] - self.taken[c];
            if avail == 0 {
                continue;
            }
            let k = avail.min(p.room(&load, c, t));
            if k > 0 {
                if self.taken[c] == 0 {
                    out.push((c, 0));
                }
                p.add(&mut load, c, k);
                self.taken[c] += k;
            }
        }
        self.finish_fill(out)
    }

    /// Fills one bin of type `t` item by item (in chunks of half of what fits): each
    /// time the class whose requests best match the free capacity (largest dot product of
    /// the two, both as fractions of the capacity). Returns the value, as [`Packer::fill`].
    fn fill_balanced(
        &mut self,
        t: usize,
        active: &[usize],
        min_req: &[i64],
        out: &mut Vec<(usize, usize)>,
    ) -> f64 {
        let p = self.p;
        let cap = p.cap(t);
        let inverse: Vec<f64> = cap
            .iter()
            .map(|&c| if c > 0 { 1.0 / c as f64 } else { 0.0 })
            .collect();
        let mut load = vec![0i64; p.dims];
        out.clear();
        loop {
            if is_full(&load, cap, min_req) {
                break;
            }
            // (score, class, how many fit)
            let mut pick: Option<(f64, usize, usize)> = None;
            for &c in active {
                let avail = self.rem[c] - self.taken[c];
                if avail == 0 {
                    continue;
                }
                let room = avail.min(p.room(&load, c, t));
                if room == 0 {
                    continue;
                }
                let mut score = 0.0;
                for d in 0..p.dims {
                    let free = (cap[d] - load[d]) as f64 * inverse[d];
                    score += p.req(c)[d] as f64 * inverse[d] * free;
                }
                if pick.is_none_or(|(s, _, _)| score > s) {
                    pick = Some((score, c, room));
                }
            }
            let Some((_, c, room)) = pick else {
                break;
            };
            let k = room.div_ceil(2);
            if self.taken[c] == 0 {
                out.push((c, 0));
            }
            p.add(&mut load, c, k);
            self.taken[c] += k;
        }
        self.finish_fill(out)
    }

    /// Fills one bin of type `t` with the content of highest value, by depth-first search
    /// over the classes (most valuable first, as many items as fit first), pruned by an
    /// upper bound (room for `n` more of the smallest remaining items, each worth at most the
    /// next class) and stopped after [`KNAPSACK_NODES`] nodes with the best content found.
    /// Returns the value, as [`Packer::fill`].
    fn fill_knapsack(&mut self, t: usize, active: &[usize], out: &mut Vec<(usize, usize)>) -> f64 {
        let p = self.p;
        let mut classes: Vec<(usize, usize)> = active
            .iter()
            .filter(|&&c| self.rem[c] > 0 && share(p, c, t).is_some())
            .map(|&c| (c, self.rem[c]))
            .collect();
        classes.sort_by(|a, b| self.value[b.0].total_cmp(&self.value[a.0]).then(a.0.cmp(&b.0)));
        // smallest[i]: the smallest request of classes i.. in each dimension.
        let mut smallest = vec![vec![i64::MAX; p.dims]; classes.len() + 1];
        for i in (0..classes.len()).rev() {
            let (head, tail) = smallest.split_at_mut(i + 1);
            for (d, m) in head[i].iter_mut().enumerate() {
                *m = tail[0][d].min(p.req(classes[i].0)[d]);
            }
        }
        let mut search = Knapsack {
            p,
            t,
            values: classes.iter().map(|&(c, _)| self.value[c]).collect(),
            classes,
            smallest,
            load: vec![0; p.dims],
            counts: Vec::new(),
            best: 0.0,
            best_counts: Vec::new(),
            nodes: 0,
        };
        search.counts = vec![0; search.classes.len()];
        search.run(0, 0.0);
        out.clear();
        for (&(c, _), &k) in search.classes.iter().zip(&search.best_counts) {
            if k > 0 {
                self.taken[c] = k;
                out.push((c, 0));
            }
        }
        self.finish_fill(out)
    }

    /// Moves the taken counts into `out` (sorted by class) and returns its value.
    fn finish_fill(&mut self, out: &mut [(usize, usize)]) -> f64 {
        let mut value = 0.0;
        for (c, k) in out.iter_mut() {
            *k = std::mem::take(&mut self.taken[*c]);
            value += self.value[*c] * *k as f64;
        }
        out.sort_unstable();
        value
    }

    /// The class orders of a construction over `active` classes and candidate `types`.
    fn orders(&self, active: &[usize], types: &[usize]) -> Orders {
        let p = self.p;
        if active.len().saturating_mul(types.len()) > PER_TYPE_ORDER_LIMIT {
            let mut global: Vec<u32> = active.iter().map(|&c| c as u32).collect();
            global.sort_by(|&a, &b| {
                self.value[b as usize]
                    .total_cmp(&self.value[a as usize])
                    .then(a.cmp(&b))
            });
            return Orders {
                largest: Vec::new(),
                affinity: Vec::new(),
                global,
            };
        }
        let mut largest = Vec::with_capacity(types.len());
        let mut affinity = Vec::with_capacity(types.len());
        for &t in types {
            let shares: Vec<(u32, f64)> = active
                .iter()
                .filter_map(|&c| share(p, c, t).map(|s| (c as u32, s)))
                .collect();
            let mut by_size = shares.clone();
            by_size.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            largest.push(by_size.iter().map(|&(c, _)| c).collect());
            let price = self.divisor(t);
            let mut by_fit: Vec<(u32, f64, f64)> = shares
                .iter()
                .map(|&(c, s)| (c, self.value[c as usize] / (price * s.max(f64::MIN_POSITIVE)), s))
                .collect();
            by_fit.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.2.total_cmp(&a.2)).then(a.0.cmp(&b.0)));
            affinity.push(by_fit.iter().map(|&(c, _, _)| c).collect());
        }
        Orders {
            largest,
            affinity,
            global: Vec::new(),
        }
    }
}

/// The state of the exact search of [`Packer::fill_knapsack`].
struct Knapsack<'a> {
    p: &'a Problem,
    t: usize,
    /// (class, items left), most valuable first.
    classes: Vec<(usize, usize)>,
    values: Vec<f64>,
    smallest: Vec<Vec<i64>>,
    load: Vec<i64>,
    counts: Vec<usize>,
    best: f64,
    best_counts: Vec<usize>,
    nodes: usize,
}

impl Knapsack<'_> {
    fn run(&mut self, i: usize, value: f64) {
        self.nodes += 1;
        if value > self.best * (1.0 + 1e-12) {
            self.best = value;
            self.best_counts.clone_from(&self.counts);
        }
        if i == self.classes.len() || self.nodes > KNAPSACK_NODES {
            return;
        }
        let cap = self.p.cap(self.t);
        let more = self.smallest[i]
            .iter()
            .zip(cap)
            .zip(&self.load)
            .filter(|((m, _), _)| **m > 0)
            .map(|((m, c), l)| (c - l) / m)
            .min()
            .unwrap_or(i64::MAX);
        if value + more as f64 * self.values[i] <= self.best * (1.0 + 1e-12) {
            return;
        }
        let (c, left) = self.classes[i];
        let most = left.min(self.p.room(&self.load, c, self.t));
        for k in (0..=most).rev() {
            self.p.add(&mut self.load, c, k);
            self.counts[i] = k;
            self.run(i + 1, value + k as f64 * self.values[i]);
            self.counts[i] = 0;
            for (l, &r) in self.load.iter_mut().zip(self.p.req(c)) {
                *l -= r * k as i64;
            }
            if self.nodes > KNAPSACK_NODES {
                return;
            }
        }
    }
}

/// Whether no remaining item can fit any more: some dimension has less room than the
/// smallest request of every remaining class.
fn is_full(load: &[i64], cap: &[i64], min_req: &[i64]) -> bool {
    load.iter().zip(cap).zip(min_req).any(|((l, c), m)| c - l < *m)
}

/// The largest fraction of a resource of type `t` one item of `class` takes, or `None`
/// when it does not fit.
pub(crate) fn share(p: &Problem, class: usize, t: usize) -> Option<f64> {
    let mut share: f64 = 0.0;
    for (&r, &c) in p.req(class).iter().zip(p.cap(t)) {
        if r > c {
            return None;
        }
        if r > 0 {
            share = share.max(r as f64 / c as f64);
        }
    }
    Some(share)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packing::first_fit_decreasing;
    use crate::resources::{self, Resources};

    const GI: i64 = 1 << 30;

    fn item(cpu: i64, mem: i64) -> Item {
        Item::new(Resources::new(cpu, mem).with_pods(1))
    }

    fn bin_type(cpu: i64, mem: i64, price: f64) -> BinType {
        BinType::new(Resources::new(cpu, mem).with_pods(110), price)
    }

    fn packed(items: &[Item], types: &[BinType]) -> Packing {
        let packing = pack(items, types).unwrap();
        packing.check(items, types).unwrap();
        packing
    }

    #[test]
    fn two_small_bins_beat_one_big_one() {
        // kubernetes-sigs/karpenter#2457: 3 + 1 vCPU.
        let items = vec![item(1000, GI), item(3000, GI)];
        let types = vec![
            bin_type(1000, 2 * GI, 0.05),
            bin_type(3000, 6 * GI, 0.15),
            bin_type(4000, 8 * GI, 0.4),
        ];
        let packing = packed(&items, &types);
        assert!((packing.cost(&types) - 0.2).abs() < 1e-12, "{packing:?}");
        let ffd = first_fit_decreasing(&items, &types).unwrap();
        assert!((ffd.cost(&types) - 0.4).abs() < 1e-12);
    }

    #[test]
    fn complementary_items_share_a_balanced_type() {
        // CPU-heavy and memory-heavy pods: one general-purpose bin holds a pair more
        // cheaply than a compute bin and a memory bin.
        let mut items = Vec::new();
        for _ in 0..50 {
            items.push(item(3500, 2 * GI));
            items.push(item(500, 13 * GI));
        }
        let types = vec![
            bin_type(4000, 8 * GI, 0.17),   // compute
            bin_type(4000, 16 * GI, 0.192), // general purpose
            bin_type(2000, 16 * GI, 0.126), // memory
        ];
        let packing = packed(&items, &types);
        assert_eq!(packing.bins.len(), 50);
        assert!(packing.bins.iter().all(|b| b.bin_type == 1));
        let ffd = first_fit_decreasing(&items, &types).unwrap();
        assert!(packing.cost(&types) <= ffd.cost(&types) + 1e-9);
    }

    #[test]
    fn homogeneous_items_use_the_most_efficient_type() {
        // 1.5 vCPU pods: a 4-vCPU bin wastes 1 vCPU, a 3-vCPU bin none.
        let items = vec![item(1500, GI); 60];
        let types = vec![
            bin_type(2000, 8 * GI, 0.1),
            bin_type(3000, 12 * GI, 0.15),
            bin_type(4000, 16 * GI, 0.2),
        ];
        let packing = packed(&items, &types);
        assert!(
            (packing.cost(&types) - 30.0 * 0.15).abs() < 1e-9,
            "{}",
            packing.cost(&types)
        );
    }

    #[test]
    fn extended_resources_and_pod_limits_count() {
        let gpu = |cpu| {
            Item::new(
                Resources::new(cpu, GI)
                    .with_pods(1)
                    .with_extended(resources::NVIDIA_GPU, 1),
            )
        };
        let mut items = vec![gpu(4000), gpu(4000), gpu(4000)];
        items.extend(vec![item(10, 1 << 20); 30]);
        let types = vec![
            BinType::new(Resources::new(8000, 32 * GI).with_pods(10), 0.1),
            BinType::new(
                Resources::new(16000, 64 * GI)
                    .with_pods(29)
                    .with_extended(resources::NVIDIA_GPU, 4),
                1.0,
            ),
        ];
        let packing = packed(&items, &types);
        // One GPU bin takes the 3 GPU pods and 26 small ones; the 4 left need one small bin.
        assert!((packing.cost(&types) - 1.1).abs() < 1e-9, "{packing:?}");
    }

    #[test]
    fn empty_free_and_zero_request_items() {
        let types = vec![bin_type(1000, GI, 0.2), bin_type(1000, GI, 0.1)];
        assert_eq!(pack(&[], &types).unwrap(), Packing::default());
        let zero = Item::new(Resources::default());
        let packing = packed(&[zero.clone(), zero], &types);
        assert_eq!(packing.bins.len(), 1);
        assert_eq!(packing.bins[0].bin_type, 1);
        let free = vec![bin_type(1000, GI, 0.0), bin_type(4000, 4 * GI, 0.0)];
        let packing = packed(&vec![item(600, 1 << 20); 10], &free);
        assert_eq!(packing.cost(&free), 0.0);
        assert!(packing.bins.len() <= 2);
    }

    #[test]
    fn errors_name_the_item() {
        let types = vec![bin_type(1000, GI, 0.1)];
        let err = pack(&[item(100, 1), item(100, 2 * GI)], &types).unwrap_err();
        assert!(matches!(err, Error::NoFit { item: 1, .. }), "{err}");
    }

    #[test]
    fn deterministic() {
        let mut items = Vec::new();
        for i in 0..300i64 {
            items.push(item(100 + (i * 37) % 1400, (1 + (i * 13) % 7) * GI / 2));
        }
        let types: Vec<BinType> = (1..=16)
            .map(|i| bin_type(i * 1000, i * 3 * GI, 0.04 * i as f64 + 0.01 * (i % 3) as f64))
            .collect();
        let a = packed(&items, &types);
        let b = packed(&items, &types);
        assert_eq!(a, b);
        assert!(a.cost(&types) <= first_fit_decreasing(&items, &types).unwrap().cost(&types) + 1e-9);
    }
}
