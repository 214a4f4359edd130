//! The Karpenter-like baseline: first-fit decreasing with flexible bin types.
//!
//! Items are sorted by CPU, then memory, descending (then by index, as Karpenter breaks ties
//! by creation time). Each item goes into the first open bin that can still hold it: a bin
//! keeps every type its items fit in together, and takes the item when at least one of them
//! still fits the larger load. An item no open bin can hold opens a new bin. At the end each
//! bin becomes the cheapest type it still fits in. This is what Karpenter's scheduler does
//! for pods without constraints, and what [`pack`](super::pack) is measured against.
//!
//! Runs of identical items are placed together (the first bin that fits the next item takes
//! as many of the run as it can), which gives exactly the item-by-item answer faster.

use super::BinType;
use super::model::{Error, Item, Packing, Problem};

/// Packs `items` into bins of `types` the way Karpenter does (see the module
/// documentation). Fails when an item fits in no type, or on invalid input.
pub fn first_fit_decreasing(items: &[Item], types: &[BinType]) -> Result<Packing, Error> {
    let problem = Problem::new(items, types)?;
    let bins = ffd_bins(&problem, items);
    Ok(problem.to_packing(bins.iter().map(|(t, content)| (*t, content.as_slice()))))
}

/// An open bin of the baseline.
struct OpenBin {
    load: Vec<i64>,
    /// The kept types the load fits in, cheapest first.
    types: Vec<usize>,
    /// The largest capacity of `types` in each dimension: a quick "cannot fit" test.
    envelope: Vec<i64>,
    /// (class, count) in placement order.
    content: Vec<(usize, usize)>,
}

impl OpenBin {
    fn new(p: &Problem, types: Vec<usize>) -> OpenBin {
        let mut bin = OpenBin {
            load: vec![0; p.dims],
            types,
            envelope: Vec::new(),
            content: Vec::new(),
        };
        bin.update_envelope(p);
        bin
    }

    fn update_envelope(&mut self, p: &Problem) {
        self.envelope = vec![i64::MIN; p.dims];
        for &t in &self.types {
            for (e, &c) in self.envelope.iter_mut().zip(p.cap(t)) {
                *e = (*e).max(c);
            }
        }
    }

    /// How many items of `class` the bin can still take.
    fn room(&self, p: &Problem, class: usize) -> usize {
        let fits_envelope = self
            .load
            .iter()
            .zip(p.req(class))
            .zip(&self.envelope)
            .all(|((l, r), e)| l + r <= *e);
        if !fits_envelope {
            return 0;
        }
        self.types
            .iter()
            .map(|&t| p.room(&self.load, class, t))
            .max()
            .unwrap_or(0)
    }

    fn take(&mut self, p: &Problem, class: usize, count: usize) {
        p.add(&mut self.load, class, count);
        let load = &self.load;
        self.types.retain(|&t| p.fits(load, t));
        self.update_envelope(p);
        match self.content.last_mut() {
            Some((c, n)) if *c == class => *n += count,
            _ => self.content.push((class, count)),
        }
    }
}

/// The baseline's bins as (kept type, (class, count) pairs sorted by class).
pub(crate) fn ffd_bins(p: &Problem, items: &[Item]) -> Vec<(usize, Vec<(usize, usize)>)> {
    let mut class_of = vec![0usize; items.len()];
    for (class, members) in p.class_items.iter().enumerate() {
        for &item in members {
            class_of[item] = class;
        }
    }
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by(|&a, &b| {
        let (ra, rb) = (&items[a].requests, &items[b].requests);
        rb.cpu_millis
            .cmp(&ra.cpu_millis)
            .then(rb.memory_bytes.cmp(&ra.memory_bytes))
            .then(a.cmp(&b))
    });
    let mut bins: Vec<OpenBin> = Vec::new();
    let empty = vec![0; p.dims];
    let mut start = 0;
    while start < order.len() {
        let class = class_of[order[start]];
        let mut end = start + 1;
        while end < order.len() && class_of[order[end]] == class {
            end += 1;
        }
        let mut left = end - start;
        start = end;
        for bin in &mut bins {
            if left == 0 {
                break;
            }
            let k = bin.room(p, class).min(left);
            if k > 0 {
                bin.take(p, class, k);
                left -= k;
            }
        }
        while left > 0 {
            let fitting: Vec<usize> = (0..p.types()).filter(|&t| p.room(&empty, class, t) > 0).collect();
            let mut bin = OpenBin::new(p, fitting);
            // Problem::new guarantees at least one type fits every class.
            let k = bin.room(p, class).min(left).max(1);
            bin.take(p, class, k);
            left -= k;
            bins.push(bin);
        }
    }
    bins.into_iter()
        .map(|mut bin| {
            bin.content.sort_unstable();
            let mut merged: Vec<(usize, usize)> = Vec::with_capacity(bin.content.len());
            for (class, count) in bin.content {
                match merged.last_mut() {
                    Some((c, n)) if *c == class => *n += count,
                    _ => merged.push((class, count)),
                }
            }
            (bin.types.first().copied().unwrap_or(0), merged)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packing::Bin;
    use crate::resources::Resources;

    const GI: i64 = 1 << 30;

    fn item(cpu: i64, mem: i64) -> Item {
        Item::new(Resources::new(cpu, mem).with_pods(1))
    }

    fn bin_type(cpu: i64, mem: i64, price: f64) -> BinType {
        BinType::new(Resources::new(cpu, mem).with_pods(110), price)
    }

    #[test]
    fn first_fit_grows_one_bin_like_karpenter() {
        // kubernetes-sigs/karpenter#2457: 3 + 1 vCPU go into one 4-vCPU bin when one fits,
        // whatever the price of two 2-vCPU bins.
        let items = vec![item(1000, GI), item(3000, GI)];
        let types = vec![bin_type(2000, 4 * GI, 0.1), bin_type(4000, 8 * GI, 0.5)];
        let packing = first_fit_decreasing(&items, &types).unwrap();
        packing.check(&items, &types).unwrap();
        assert_eq!(
            packing.bins,
            vec![Bin {
                bin_type: 1,
                items: vec![0, 1]
            }]
        );
    }

    #[test]
    fn decreasing_order_and_new_bins() {
        let items = vec![item(500, GI), item(3000, GI), item(2000, GI), item(1500, GI)];
        let types = vec![bin_type(2000, 8 * GI, 0.1), bin_type(4000, 8 * GI, 0.25)];
        let packing = first_fit_decreasing(&items, &types).unwrap();
        packing.check(&items, &types).unwrap();
        // 3000 opens bin A; 2000 does not fit A (5000 > 4000) and opens B; 1500 fits B
        // (3500); 500 fits A (3500).
        assert_eq!(
            packing.bins,
            vec![
                Bin {
                    bin_type: 1,
                    items: vec![0, 1]
                },
                Bin {
                    bin_type: 1,
                    items: vec![2, 3]
                },
            ]
        );
    }

    #[test]
    fn runs_match_item_by_item_first_fit() {
        // 7 identical items, 3 per largest bin: 3 + 3 + 1, the last right-sized.
        let items = vec![item(1000, GI); 7];
        let types = vec![bin_type(1000, 2 * GI, 0.1), bin_type(3000, 6 * GI, 0.3)];
        let packing = first_fit_decreasing(&items, &types).unwrap();
        packing.check(&items, &types).unwrap();
        let sizes: Vec<(usize, usize)> = packing.bins.iter().map(|b| (b.bin_type, b.items.len())).collect();
        assert_eq!(sizes, vec![(1, 3), (1, 3), (0, 1)]);
        assert_eq!(packing.bins[0].items, vec![0, 1, 2]);
    }

    #[test]
    fn empty_input_and_errors() {
        let types = vec![bin_type(1000, GI, 0.1)];
        assert_eq!(first_fit_decreasing(&[], &types).unwrap(), Packing::default());
        assert!(matches!(
            first_fit_decreasing(&[item(2000, GI)], &types),
            Err(Error::NoFit { item: 0, .. })
        ));
        assert!(matches!(
            first_fit_decreasing(&[item(100, GI)], &[]),
            Err(Error::NoFit {
                item: 0,
                types: 0,
                ..
            })
        ));
    }
}
