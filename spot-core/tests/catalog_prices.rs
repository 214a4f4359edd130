//! The catalog, allocatable and price APIs as other crates use them.

use spot_core::catalog::{self, Catalog};
use spot_core::price::{CsvPrices, OfflinePrices, SpotAdvisor};
use spot_core::{AllocatableModel, PriceSource};

#[test]
fn cheapest_spot_m5_large_zone_in_us_east_1() {
    let catalog = Catalog::embedded();
    let prices = OfflinePrices::embedded();
    let zones = catalog.offered_zones("us-east-1", "m5.large");
    let (zone, price) = zones
        .iter()
        .filter_map(|z| prices.spot(z, "m5.large").map(|p| (*z, p)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .expect("m5.large has spot prices in us-east-1");
    assert!(zone.starts_with("us-east-1"));
    assert!(
        price
            < prices
                .on_demand("us-east-1", "m5.large")
                .expect("on-demand price")
    );
}

#[test]
fn allocatable_of_every_embedded_type_fits_in_its_capacity() {
    let model = AllocatableModel::default();
    for t in Catalog::embedded().types() {
        let (cap, alloc) = (model.capacity(t), model.allocatable(t));
        assert!(
            alloc.cpu_millis <= cap.cpu_millis && alloc.memory_bytes <= cap.memory_bytes,
            "{}",
            t.name
        );
        assert!(alloc.pods <= 110, "{}", t.name);
        assert_eq!(alloc.gpus, u64::from(t.gpus));
    }
}

#[test]
fn simulation_catalog_with_user_prices() {
    let types: Vec<_> = (1..=3)
        .map(|i| catalog::synthetic_type(&format!("sim{i}.large"), 2 * i, 8192 * u64::from(i)))
        .collect::<Result<_, _>>()
        .expect("valid names");
    let sim = Catalog::builder()
        .version("sim")
        .instance_type(types[0].clone())
        .instance_type(types[1].clone())
        .instance_type(types[2].clone())
        .zone_offering_all("sim-1", "sim-1a")
        .build()
        .expect("valid catalog");
    let csv =
        CsvPrices::parse("instance_type,usd_per_hour\nsim1.large,0.1\nsim2.large,0.2\n").expect("valid CSV");
    let prices = OfflinePrices::new(csv, SpotAdvisor::generate(&sim, 3), &sim);
    assert!(prices.spot("sim-1a", "sim2.large").is_some_and(|p| p < 0.2));
    assert_eq!(
        prices.spot("sim-1a", "sim3.large"),
        None,
        "no on-demand price, no spot price"
    );
    assert!(prices.interruption_band("sim-1", "sim3.large").is_some());
}
