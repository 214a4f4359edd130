//! A lower bound on the cost of any packing: the optimum of a linear-programming relaxation,
//! solved with `good_lp` and its pure-Rust `microlp` solver (feature `lp`).
//!
//! Items are grouped into classes `c` of identical requests (`n_c` items each), types are
//! the useful, non-dominated ones of [`Problem`]. Variables: `x_t ≥ 0`, the number of bins
//! of type `t`, and `y_ct ≥ 0`, the number of items of class `c` placed in bins of type `t`
//! (only where one item of `c` fits in `t`). Minimise `Σ_t price_t · x_t` subject to:
//!
//! 1. every item is placed: `Σ_t y_ct = n_c`;
//! 2. capacity, for every type `t` and resource `r`: `Σ_c req_cr · y_ct ≤ cap_tr · x_t`;
//! 3. big items, for every type `t` and resource `r`: `Σ_{c big} y_ct ≤ x_t`, where `c` is
//!    big when one item takes more than half of `cap_tr`;
//! 4. per-class counts, for every class `c` and type `t`: `y_ct ≤ k_ct · x_t`, where
//!    `k_ct = min_r ⌊cap_tr / req_cr⌋` is how many items of `c` one bin of `t` holds (added
//!    only where rounding down makes it tighter than 2 by more than 1%);
//! 5. at least one bin: `Σ_t x_t ≥ 1` (when there is an item that requests something).
//!
//! In 2-4 each capacity `cap_tr` is first rounded down to a multiple of `g_r`, the greatest
//! common divisor of the requests for `r` (with CPU requests in whole cores, a bin of 15.89
//! usable cores holds at most 15 cores of items).
//!
//! **Why this is a lower bound.** Take any valid packing and set `x_t` to its number of
//! bins of type `t` and `y_ct` to its number of items of class `c` in those bins. Then 1
//! holds because every item is in a bin; 2 is the sum over the bins of type `t` of each
//! bin's capacity check; 3 holds because two items that each take more than half of a
//! resource cannot share a bin, so each bin of type `t` holds at most one big item for `r`,
//! whatever their classes; 4 holds because each bin of type `t` holds at most `k_ct` items
//! of `c`; 5 because items need a bin. Rounding capacities down is safe because a bin's
//! load for `r` is a sum of requests, hence a multiple of `g_r`, so a load that fits in
//! `cap_tr` fits in the rounded capacity too. The objective equals the packing's cost, so every
//! packing is a feasible point and the LP minimum is at most the cheapest packing's cost.
//! Leaving out dominated types (another type has at least the same capacity everywhere for
//! no more money) does not change the cheapest packing's cost, since swapping a dominated
//! bin for its dominator keeps the packing valid and costs no more; dimensions no item
//! requests constrain nothing. Each resource is scaled by its largest capacity before the
//! LP is built, which changes no solution and keeps the solver's numbers near 1.

use good_lp::{Expression, ProblemVariables, Solution, SolverModel, Variable, microlp, variable};

use super::model::{BinType, Error, Item, Problem};

/// The LP lower bound on the cost of packing `items` into bins of `types` (see the module
/// documentation). Zero for no items. Fails when an item fits in no type, on invalid input,
/// or when the solver fails.
pub fn lower_bound(items: &[Item], types: &[BinType]) -> Result<f64, Error> {
    let p = Problem::new(items, types)?;
    let classes: Vec<usize> = (0..p.classes()).filter(|&c| !p.is_empty_class(c)).collect();
    if classes.is_empty() {
        // Only items that request nothing: one bin of the cheapest type, or none.
        return Ok(if items.is_empty() { 0.0 } else { p.type_price[0] });
    }
    let scale: Vec<f64> = (0..p.dims)
        .map(|d| (0..p.types()).map(|t| p.cap(t)[d]).max().unwrap_or(1).max(1) as f64)
        .collect();
    // Loads are sums of requests, so multiples of the requests' greatest common divisor in
    // each dimension: a capacity can be rounded down to such a multiple.
    let divisor: Vec<i64> = (0..p.dims)
        .map(|d| classes.iter().fold(0, |g, &c| gcd(g, p.req(c)[d])).max(1))
        .collect();
    let caps: Vec<Vec<i64>> = (0..p.types())
        .map(|t| p.cap(t).iter().zip(&divisor).map(|(&c, &g)| c / g * g).collect())
        .collect();
    let mut vars = ProblemVariables::new();
    let x: Vec<Variable> = (0..p.types()).map(|_| vars.add(variable().min(0.0))).collect();
    // y[t]: (class, variable) for the classes that fit in t.
    let mut y: Vec<Vec<(usize, Variable)>> = vec![Vec::new(); p.types()];
    // placed[c]: Σ_t y_ct.
    let mut placed: Vec<Expression> = vec![Expression::with_capacity(p.types()); p.classes()];
    let empty = vec![0; p.dims];
    for &c in &classes {
        for (t, ys) in y.iter_mut().enumerate() {
            if p.room(&empty, c, t) > 0 {
                let v = vars.add(variable().min(0.0));
                placed[c].add_mul(1.0, v);
                ys.push((c, v));
            }
        }
    }
    let mut objective = Expression::with_capacity(p.types());
    for (t, &xt) in x.iter().enumerate() {
        objective.add_mul(p.type_price[t], xt);
    }
    let mut constraints = Vec::new();
    // 1. Every item is placed.
    for &c in &classes {
        let sum = std::mem::take(&mut placed[c]);
        constraints.push(sum.eq(p.class_items[c].len() as f64));
    }
    for (t, ys) in y.iter().enumerate() {
        let cap = &caps[t];
        for d in 0..p.dims {
            // 2. Capacity.
            let mut used = Expression::with_capacity(ys.len() + 1);
            let mut big = Expression::with_capacity(ys.len() + 1);
            let (mut any_used, mut any_big) = (false, false);
            for &(c, v) in ys {
                let r = p.req(c)[d];
                if r > 0 {
                    used.add_mul(r as f64 / scale[d], v);
                    any_used = true;
                }
                if 2 * r > cap[d] {
                    big.add_mul(1.0, v);
                    any_big = true;
                }
            }
            if any_used {
                used.add_mul(-(cap[d] as f64) / scale[d], x[t]);
                constraints.push(used.leq(0.0));
            }
            // 3. Big items.
            if any_big {
                big.add_mul(-1.0, x[t]);
                constraints.push(big.leq(0.0));
            }
        }
        // 4. Per-class counts.
        for &(c, v) in ys {
            let (whole, exact) = per_bin(p.req(c), cap);
            if whole > 1 && (whole as f64) < 0.99 * exact {
                let mut count = Expression::with_capacity(2);
                count.add_mul(1.0, v);
                count.add_mul(-(whole as f64), x[t]);
                constraints.push(count.leq(0.0));
            }
        }
    }
    // 5. At least one bin.
    let mut bins = Expression::with_capacity(p.types());
    for &xt in &x {
        bins.add_mul(1.0, xt);
    }
    constraints.push(bins.geq(1.0));

    let solution = vars
        .minimise(objective.clone())
        .using(microlp)
        .with_all(constraints)
        .solve()
        .map_err(|e| Error::Solver(e.to_string()))?;
    Ok(solution.eval(&objective))
}

/// How many items with requests `req` one bin of capacity `cap` holds: whole
/// (`⌊min_r cap/req⌋`) and as a fraction (`min_r cap/req`).
fn per_bin(req: &[i64], cap: &[i64]) -> (u64, f64) {
    let mut exact = f64::INFINITY;
    let mut whole = u64::MAX;
    for (&r, &c) in req.iter().zip(cap) {
        if r > 0 {
            exact = exact.min(c as f64 / r as f64);
            whole = whole.min(u64::try_from(c / r).unwrap_or(0));
        }
    }
    (whole, exact)
}

/// The greatest common divisor (`gcd(0, b) = b`).
fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packing::pack;
    use crate::resources::Resources;

    const GI: i64 = 1 << 30;

    fn item(cpu: i64, mem: i64) -> Item {
        Item::new(Resources::new(cpu, mem).with_pods(1))
    }

    fn bin_type(cpu: i64, mem: i64, price: f64) -> BinType {
        BinType::new(Resources::new(cpu, mem).with_pods(110), price)
    }

    #[test]
    fn bound_of_a_perfect_fit_is_its_cost() {
        let items = vec![item(1000, GI); 8];
        let types = vec![bin_type(4000, 4 * GI, 0.4), bin_type(2000, 2 * GI, 0.25)];
        let bound = lower_bound(&items, &types).unwrap();
        assert!((bound - 0.8).abs() < 1e-6, "{bound}");
        let cost = pack(&items, &types).unwrap().cost(&types);
        assert!((cost - 0.8).abs() < 1e-9, "{cost}");
    }

    #[test]
    fn big_items_cannot_share() {
        // Two 600m items in 1000m bins: the plain relaxation says 1.2 bins, the big-item
        // constraint says 2.
        let items = vec![item(600, GI), item(600, GI)];
        let types = vec![bin_type(1000, 4 * GI, 1.0)];
        let bound = lower_bound(&items, &types).unwrap();
        assert!((bound - 2.0).abs() < 1e-6, "{bound}");
        // Items of different classes, both big: still one per bin.
        let items = vec![item(600, GI), item(700, GI), item(800, GI)];
        let bound = lower_bound(&items, &types).unwrap();
        assert!((bound - 3.0).abs() < 1e-6, "{bound}");
    }

    #[test]
    fn per_class_counts_round_down() {
        // 400m items: 2 per 1000m bin, not 2.5.
        let items = vec![item(400, GI); 10];
        let types = vec![bin_type(1000, 16 * GI, 1.0)];
        let bound = lower_bound(&items, &types).unwrap();
        assert!((bound - 5.0).abs() < 1e-6, "{bound}");
    }

    #[test]
    fn bound_is_below_every_packing() {
        let mut items = Vec::new();
        for i in 0..120i64 {
            items.push(item(100 + (i * 53) % 1900, (1 + (i * 7) % 9) * GI / 2));
        }
        let types: Vec<BinType> = (1..=12)
            .map(|i| bin_type(i * 1000, i * 2 * GI, 0.05 * i as f64 + 0.02 * (i % 4) as f64))
            .collect();
        let bound = lower_bound(&items, &types).unwrap();
        let packed = pack(&items, &types).unwrap().cost(&types);
        let ffd = crate::packing::first_fit_decreasing(&items, &types)
            .unwrap()
            .cost(&types);
        assert!(bound > 0.0 && bound <= packed + 1e-9 && packed <= ffd + 1e-9);
        assert!(packed <= 1.1 * bound, "pack {packed} bound {bound}");
    }

    #[test]
    fn trivial_inputs() {
        let types = vec![bin_type(1000, GI, 0.3), bin_type(2000, GI, 0.5)];
        assert_eq!(lower_bound(&[], &types).unwrap(), 0.0);
        let zero = Item::new(Resources::default());
        assert!((lower_bound(&[zero], &types).unwrap() - 0.3).abs() < 1e-12);
        // A single small item still needs one bin.
        assert!((lower_bound(&[item(10, 1)], &types).unwrap() - 0.3).abs() < 1e-6);
        assert!(matches!(
            lower_bound(&[item(5000, 1)], &types),
            Err(Error::NoFit { item: 0, .. })
        ));
    }
}
