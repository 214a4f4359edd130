//! The comparison on a small scenario with a fixed seed: price-capacity-optimized with
//! consolidation is cheaper than on-demand only and is interrupted less than lowest-price.
//!
//! Two days of a diurnal workload of about 60 nodes at its peak. The market's interruption
//! rates are ten times the Spot Instance Advisor bands' (the bands' order kept), so that two
//! days give enough interruptions to compare strategies rather than noise.

use std::time::Duration;

use spot_sim::des::{self, Allocation, Report, Scale, Scenario, SimConfig, TraceKind};

fn config() -> SimConfig {
    let mut config = SimConfig {
        seed: 42,
        duration: Duration::from_secs(2 * 86_400),
        trace: TraceKind::Diurnal,
        scale: Scale::Nodes(60),
        ..SimConfig::default()
    };
    config.market.band_monthly_rates = [0.22, 0.54, 0.74, 0.85, 0.94];
    config
}

#[test]
fn pco_with_consolidation_is_cheaper_than_on_demand_and_interrupted_less_than_lowest_price() {
    let scenarios = [
        Scenario::new(Allocation::OnDemand),
        Scenario::new(Allocation::LowestPrice),
        Scenario::new(Allocation::PriceCapacityOptimized).with_consolidation(),
    ];
    let results = des::run_all(&config(), &scenarios, 2).unwrap();
    let report = Report::new(results);
    println!("{}", report.table());
    let [od, lp, pco] = [0, 1, 2].map(|i| &report.results[i].summary);
    assert!(
        pco.cost < od.cost,
        "pco+consolidation ${:.2} vs on-demand ${:.2}",
        pco.cost,
        od.cost
    );
    assert!(
        pco.interruptions < lp.interruptions,
        "pco+consolidation {} interruptions vs lowest-price {}",
        pco.interruptions,
        lp.interruptions
    );
    // Sanity: the workload ran everywhere, on-demand was never interrupted, spot was used.
    for r in &report.results {
        let s = &r.summary;
        assert!(s.peak_pods > 100 && s.peak_nodes > 10, "{}: {s:?}", r.scenario);
        assert!(
            r.series.len() >= 2 * 24 * 6,
            "{}: {} samples",
            r.scenario,
            r.series.len()
        );
        let last = r.series.last().unwrap();
        assert!(last.pending * 10 < last.pods, "{}: {last:?}", r.scenario);
    }
    assert_eq!(od.interruptions, 0);
    assert_eq!(od.spot_share, 0.0);
    assert!(pco.spot_share > 0.9, "{pco:?}");
    assert!(pco.consolidations > 0, "{pco:?}");
    assert!(report.rows()[2].savings_percent > 40.0, "{}", report.table());
}

#[test]
fn the_same_seed_gives_the_same_results() {
    let mut config = config();
    config.duration = Duration::from_secs(6 * 3600);
    config.scale = Scale::Nodes(20);
    let scenario = [Scenario::new(Allocation::PriceCapacityOptimized)
        .with_consolidation()
        .with_rebalance()];
    let a = des::run_all(&config, &scenario, 1).unwrap();
    let b = des::run_all(&config, &scenario, 1).unwrap();
    assert_eq!(a, b);
    config.seed += 1;
    let c = des::run_all(&config, &scenario, 1).unwrap();
    assert_ne!(a[0].summary, c[0].summary);
}
