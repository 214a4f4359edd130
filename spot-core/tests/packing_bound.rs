//! Certification of the packer against the LP lower bound and the Karpenter-like baseline,
//! on every workload of `packing::certification_suite`. Run with `--nocapture` for the
//! table.
#![cfg(feature = "lp")]

use spot_core::packing::{self, certification_suite};

/// Per case: pack ≤ 1.10 × bound.
const MAX_RATIO: f64 = 1.10;
/// Over the suite: mean(pack / bound) ≤ 1.03.
const MAX_MEAN_RATIO: f64 = 1.03;

#[test]
fn pack_is_near_the_lp_bound_and_beats_first_fit_decreasing() {
    let suite = certification_suite();
    let mut ratios = Vec::new();
    let mut strictly_cheaper = 0;
    println!(
        "{:<28} {:>5} {:>6} {:>10} {:>10} {:>10} {:>9} {:>8}",
        "case", "pods", "types", "bound", "pack", "ffd", "pack/lb", "ffd/lb"
    );
    let mut failures = Vec::new();
    for case in &suite {
        let bound = packing::lower_bound(&case.items, &case.types).expect("bound");
        let packed = packing::pack(&case.items, &case.types).expect("pack");
        packed.check(&case.items, &case.types).expect("valid packing");
        let ffd = packing::first_fit_decreasing(&case.items, &case.types).expect("ffd");
        ffd.check(&case.items, &case.types).expect("valid baseline");
        let (cost, baseline) = (packed.cost(&case.types), ffd.cost(&case.types));
        let ratio = cost / bound;
        println!(
            "{:<28} {:>5} {:>6} {:>10.4} {:>10.4} {:>10.4} {:>9.4} {:>8.4}",
            case.name,
            case.items.len(),
            case.types.len(),
            bound,
            cost,
            baseline,
            ratio,
            baseline / bound
        );
        assert!(
            bound > 0.0 && cost >= bound * (1.0 - 1e-6),
            "{}: bound {bound} above cost {cost}",
            case.name
        );
        if ratio > MAX_RATIO {
            failures.push(format!("{}: pack/bound {ratio:.4} > {MAX_RATIO}", case.name));
        }
        if case.is_heterogeneous() && cost > baseline * (1.0 + 1e-9) {
            failures.push(format!("{}: pack {cost:.4} > ffd {baseline:.4}", case.name));
        }
        if cost < baseline * (1.0 - 1e-6) {
            strictly_cheaper += 1;
        }
        ratios.push(ratio);
    }
    let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
    println!(
        "mean pack/bound {mean:.4}; pack strictly cheaper than ffd on {strictly_cheaper} of {} cases",
        suite.len()
    );
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(
        mean <= MAX_MEAN_RATIO,
        "mean pack/bound {mean:.4} > {MAX_MEAN_RATIO}"
    );
    assert!(
        strictly_cheaper >= 3,
        "pack strictly cheaper than ffd on only {strictly_cheaper} cases"
    );
}

/// Karpenter's benchmark shape at full size: 20,000 pods over 400 types. Valid, cheaper than
/// the baseline, and (in release builds) well under a second; the time is printed.
#[test]
fn twenty_thousand_pods_on_400_types() {
    use spot_core::packing::suite::{karpenter_benchmark_items, karpenter_benchmark_types};
    let items = karpenter_benchmark_items(20_000, 42);
    let types: Vec<_> = karpenter_benchmark_types(400)
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    let start = tokio::time::Instant::now();
    let packed = packing::pack(&items, &types).expect("pack");
    let elapsed = start.elapsed();
    packed.check(&items, &types).expect("valid packing");
    let ffd = packing::first_fit_decreasing(&items, &types).expect("ffd");
    let (cost, baseline) = (packed.cost(&types), ffd.cost(&types));
    println!(
        "20,000 pods x 400 types: pack {cost:.1} in {} bins ({elapsed:?}), ffd {baseline:.1} in {} bins",
        packed.bins.len(),
        ffd.bins.len()
    );
    assert!(cost < baseline, "pack {cost} ffd {baseline}");
    assert_eq!(
        packing::pack(&items, &types).expect("pack"),
        packed,
        "deterministic"
    );
}
