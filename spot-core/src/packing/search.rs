//! Local search after the greedy construction of [`pack`](super::pack).
//!
//! Rounds of moves, each kept only when it lowers the total price, until a round changes
//! nothing (or after [`MAX_ROUNDS`]; a quick search does [`QUICK_ROUNDS`] rounds of the
//! first three moves):
//! - *right-size*: every bin becomes the cheapest type its items fit in;
//! - *empty*: the least efficient bins are emptied into the headroom of the others (their
//!   types unchanged), saving the emptied bin's price;
//! - *re-pack*: the items of a group of bins are packed again from scratch (greedy
//!   construction, or one bin of the cheapest type holding them all). Groups are the `k`
//!   least efficient bins for growing `k` (merges), every pair of the least efficient bins,
//!   and every single bin (splits into cheaper bins; bins with the same content are tried
//!   once). A group is left alone when its cost is within [`MIN_GAIN`] of a quick lower
//!   bound (each resource at the lowest price per unit).
//!
//! Bins are ranked by efficiency (value of their items over their price, see
//! [`pack`](super::pack)), least efficient first, ties by position.

use std::collections::HashSet;

use super::pack::{BinState, Packer};

/// At most this many rounds of moves.
const MAX_ROUNDS: usize = 12;
/// Rounds of the quick search.
const QUICK_ROUNDS: usize = 3;
/// Groups whose cost is within this fraction of their lower bound are not re-packed.
const MIN_GAIN: f64 = 1e-3;
/// The emptying move tries this many of the least efficient bins.
const EMPTY_CANDIDATES: usize = 64;
/// Group sizes of the re-pack move.
const GROUP_SIZES: [usize; 10] = [2, 3, 4, 6, 8, 12, 16, 24, 32, 48];
/// Pairs are taken among this many of the least efficient bins.
const PAIR_CANDIDATES: usize = 12;

impl Packer<'_> {
    /// Improves a packing in place (see the module documentation).
    /// A quick search (`thorough == false`) only right-sizes, empties and re-packs groups,
    /// for a few rounds.
    pub(crate) fn improve(&mut self, bins: &mut Vec<BinState>, thorough: bool) {
        let mut tried_alone: HashSet<(usize, Vec<(usize, usize)>)> = HashSet::new();
        let rounds = if thorough { MAX_ROUNDS } else { QUICK_ROUNDS };
        for _ in 0..rounds {
            let before = self.cost(bins);
            self.right_size_all(bins);
            self.empty_into_headroom(bins);
            self.repack_groups(bins);
            if thorough {
                self.repack_pairs(bins);
                self.repack_singles(bins, &mut tried_alone);
            }
            if self.cost(bins) >= before - 1e-9 * before.abs() {
                break;
            }
        }
    }

    /// A lower bound on the cost of any packing of `content`: for each resource, its total
    /// at the lowest price per unit any type offers.
    fn fluid_bound(&self, content: &[(usize, usize)]) -> f64 {
        let mut load = vec![0; self.p.dims];
        for &(c, k) in content {
            self.p.add(&mut load, c, k);
        }
        load.iter()
            .zip(&self.unit_price)
            .map(|(&l, &u)| l as f64 * u)
            .fold(0.0, f64::max)
    }

    /// Every bin becomes the cheapest type its load fits in.
    fn right_size_all(&self, bins: &mut [BinState]) {
        for bin in bins {
            if let Some(t) = self.p.cheapest_fit(&bin.load)
                && self.p.type_price[t] < self.p.type_price[bin.ty]
            {
                bin.ty = t;
            }
        }
    }

    /// Bin indices, least efficient first.
    fn ranked(&self, bins: &[BinState]) -> Vec<usize> {
        let efficiency: Vec<f64> = bins.iter().map(|b| self.efficiency(b)).collect();
        let mut order: Vec<usize> = (0..bins.len()).collect();
        order.sort_by(|&a, &b| efficiency[a].total_cmp(&efficiency[b]).then(a.cmp(&b)));
        order
    }

    /// Empties the least efficient bins into the others' headroom; returns whether any bin
    /// was emptied.
    fn empty_into_headroom(&self, bins: &mut Vec<BinState>) -> bool {
        let p = self.p;
        let order = self.ranked(bins);
        let mut removed = vec![false; bins.len()];
        // Tentative loads of the bins touched while trying one victim: slot[bin] indexes
        // `loads`.
        let mut slot = vec![usize::MAX; bins.len()];
        let mut any = false;
        for &victim in order.iter().take(EMPTY_CANDIDATES) {
            // Tentative moves: (target bin, class, count).
            let mut moves: Vec<(usize, usize, usize)> = Vec::new();
            let mut loads: Vec<(usize, Vec<i64>)> = Vec::new();
            let mut complete = true;
            for &(class, count) in &bins[victim].content {
                let mut left = count;
                // Fullest targets first: they are the least likely to be emptied later.
                for &target in order.iter().rev() {
                    if left == 0 {
                        break;
                    }
                    if target == victim || removed[target] {
                        continue;
                    }
                    if slot[target] == usize::MAX {
                        slot[target] = loads.len();
                        loads.push((target, bins[target].load.clone()));
                    }
                    let load = &mut loads[slot[target]].1;
                    let k = p.room(load, class, bins[target].ty).min(left);
                    if k > 0 {
                        p.add(load, class, k);
                        moves.push((target, class, k));
                        left -= k;
                    }
                }
                if left > 0 {
                    complete = false;
                    break;
                }
            }
            for (target, _) in &loads {
                slot[*target] = usize::MAX;
            }
            if !complete {
                continue;
            }
            for (target, class, count) in moves {
                let bin = &mut bins[target];
                p.add(&mut bin.load, class, count);
                match bin.content.binary_search_by_key(&class, |&(c, _)| c) {
                    Ok(i) => bin.content[i].1 += count,
                    Err(i) => bin.content.insert(i, (class, count)),
                }
            }
            removed[victim] = true;
            any = true;
        }
        if any {
            let mut index = 0;
            bins.retain(|_| {
                index += 1;
                !removed[index - 1]
            });
        }
        any
    }

    /// Re-packs the items of the bins at `indices`; keeps the result when it is cheaper.
    fn try_repack(&mut self, bins: &mut Vec<BinState>, indices: &[usize]) -> bool {
        let p = self.p;
        let old: f64 = indices.iter().map(|&i| p.type_price[bins[i].ty]).sum();
        let mut pool: Vec<(usize, usize)> = indices
            .iter()
            .flat_map(|&i| bins[i].content.iter().copied())
            .collect();
        pool.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(pool.len());
        for (class, count) in pool {
            match merged.last_mut() {
                Some((c, n)) if *c == class => *n += count,
                _ => merged.push((class, count)),
            }
        }
        if self.fluid_bound(&merged) >= old * (1.0 - MIN_GAIN) {
            return false;
        }
        // Only types cheaper than the bins replaced can be part of a cheaper answer.
        let mut best = match self.construct(&merged, old) {
            Some(greedy) => (self.cost(&greedy), greedy),
            None => (f64::INFINITY, Vec::new()),
        };
        if let Some(single) = self.right_sized(merged)
            && p.type_price[single.ty] < best.0
        {
            best = (p.type_price[single.ty], vec![single]);
        }
        if best.0 < old - 1e-9 * old.abs().max(1e-12) {
            let mut sorted = indices.to_vec();
            sorted.sort_unstable();
            for &i in sorted.iter().rev() {
                bins.remove(i);
            }
            bins.extend(best.1);
            true
        } else {
            false
        }
    }

    /// Re-packs the `k` least efficient bins for growing `k`.
    fn repack_groups(&mut self, bins: &mut Vec<BinState>) -> bool {
        let mut any = false;
        for k in GROUP_SIZES {
            if k > bins.len() {
                break;
            }
            let order = self.ranked(bins);
            any |= self.try_repack(bins, &order[..k]);
        }
        any
    }

    /// Re-packs every pair of the least efficient bins.
    fn repack_pairs(&mut self, bins: &mut Vec<BinState>) -> bool {
        let mut any = false;
        let mut order = self.ranked(bins);
        let mut i = 0;
        while i < order.len().min(PAIR_CANDIDATES) {
            let mut j = i + 1;
            let mut changed = false;
            while j < order.len().min(PAIR_CANDIDATES) {
                if self.try_repack(bins, &[order[i], order[j]]) {
                    any = true;
                    changed = true;
                    break;
                }
                j += 1;
            }
            if changed {
                order = self.ranked(bins);
            } else {
                i += 1;
            }
        }
        any
    }

    /// Re-packs every bin alone (splits); bins whose (type, content) already failed are
    /// skipped.
    fn repack_singles(
        &mut self,
        bins: &mut Vec<BinState>,
        tried: &mut HashSet<(usize, Vec<(usize, usize)>)>,
    ) -> bool {
        let mut any = false;
        let mut i = 0;
        while i < bins.len() {
            let key = (bins[i].ty, bins[i].content.clone());
            if tried.contains(&key) {
                i += 1;
                continue;
            }
            if self.try_repack(bins, &[i]) {
                // The bin was replaced by bins at the end; position i holds the next one.
                any = true;
            } else {
                tried.insert(key);
                i += 1;
            }
        }
        any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packing::model::{BinType, Item, Problem};
    use crate::resources::Resources;

    const GI: i64 = 1 << 30;

    fn state(packer: &Packer<'_>, content: Vec<(usize, usize)>, ty: usize) -> BinState {
        let mut bin = packer.right_sized(content).unwrap();
        bin.ty = ty;
        bin
    }

    #[test]
    fn moves_lower_the_cost() {
        let items: Vec<Item> = (0..4)
            .map(|_| Item::new(Resources::new(1000, GI).with_pods(1)))
            .collect();
        let types = vec![
            BinType::new(Resources::new(1000, 2 * GI).with_pods(10), 0.1),
            BinType::new(Resources::new(2000, 4 * GI).with_pods(10), 0.15),
            BinType::new(Resources::new(4000, 8 * GI).with_pods(10), 0.25),
        ];
        let p = Problem::new(&items, &types).unwrap();
        let mut packer = Packer::new(&p);
        // Four single-item bins of the largest type: right-size, then merge into one.
        let mut bins: Vec<BinState> = (0..4).map(|_| state(&packer, vec![(0, 1)], 2)).collect();
        packer.improve(&mut bins, true);
        assert_eq!(bins.len(), 1);
        assert!((packer.cost(&bins) - 0.25).abs() < 1e-12);
        // A half-empty large bin splits into... nothing cheaper than 0.15 for two items.
        let mut bins = vec![state(&packer, vec![(0, 2)], 2)];
        packer.improve(&mut bins, true);
        assert!((packer.cost(&bins) - 0.15).abs() < 1e-12, "{bins:?}");
        // One item moves into another bin's headroom.
        let mut bins = vec![state(&packer, vec![(0, 3)], 2), state(&packer, vec![(0, 1)], 0)];
        assert!(packer.empty_into_headroom(&mut bins));
        assert_eq!(bins.len(), 1);
        assert_eq!(bins[0].content, vec![(0, 4)]);
    }
}
