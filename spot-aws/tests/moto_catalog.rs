//! The provisioner's live catalog against moto: types, zonal offerings and spot prices read
//! through the SDK at once, on-demand prices from the embedded table.

mod common;

use std::sync::Arc;

use spot_aws::catalog::Ec2Catalog;
use spot_core::price::{OfflinePrices, PriceSource};
use spot_core::select::ZoneAvailability;

/// moto's fake spot price for every (type, zone).
const MOTO_SPOT_PRICE: f64 = 0.00001;

#[tokio::test]
async fn the_catalog_holds_types_zones_spot_and_on_demand_prices() {
    let config = common::moto_config("us-east-1").await;
    let client = aws_sdk_ec2::Client::new(&config);
    let fallback: Arc<dyn PriceSource> = Arc::new(OfflinePrices::embedded());
    let catalog = Ec2Catalog::fetch(&client, "us-east-1", fallback.clone())
        .await
        .unwrap();
    assert_eq!(catalog.region, "us-east-1");
    assert!(catalog.types.len() > 1000, "{}", catalog.types.len());
    assert!(
        catalog.offered_types() > 500,
        "{} types offered in us-east-1",
        catalog.offered_types()
    );
    let zones = catalog.offerings.zones("us-east-1");
    assert!(zones.contains(&"us-east-1a".to_owned()), "{zones:?}");
    let m5 = catalog.offerings.offered_zones("us-east-1", "m5.large");
    assert!(m5.len() >= 3, "{m5:?}");
    for zone in &m5 {
        assert_eq!(
            catalog.prices.spot(zone, "m5.large"),
            Some(MOTO_SPOT_PRICE),
            "{zone}"
        );
    }
    assert!(catalog.prices.spot_prices() > 1000);
    assert_eq!(
        catalog.prices.on_demand("us-east-1", "m5.large"),
        fallback.on_demand("us-east-1", "m5.large")
    );
    assert!(catalog.prices.on_demand("us-east-1", "m5.large").unwrap() > 0.05);
    let c5 = catalog.types.iter().find(|t| t.name == "c5.large").unwrap();
    assert_eq!((c5.vcpus, c5.memory_mib), (2, 4096));
    assert!(
        c5.max_enis > 0 && c5.ipv4_per_eni > 0,
        "the allocatable model needs the ENI limits"
    );
}
