//! Embedding `spot-core` offline: for a few instance types, what a node really offers to pods
//! (Karpenter's allocatable model) and what it costs per allocatable vCPU, on demand and on
//! spot, in every zone of a region.
//!
//! ```sh
//! cargo run -p spot-examples --example catalog -- us-east-1 m5.large c6g.xlarge r6i.2xlarge
//! ```

use anyhow::{Context, Result};
use spot_core::allocatable::AllocatableModel;
use spot_core::catalog::Catalog;
use spot_core::price::{OfflinePrices, PriceSource};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let region = args.next().unwrap_or_else(|| "us-east-1".to_owned());
    let mut names: Vec<String> = args.collect();
    if names.is_empty() {
        names = ["m5.large", "c6g.xlarge", "r6i.2xlarge"]
            .map(str::to_owned)
            .to_vec();
    }
    let catalog = Catalog::embedded();
    let prices = OfflinePrices::embedded();
    let model = AllocatableModel::default();
    println!(
        "catalog: {} instance types from moto {}",
        catalog.types().len(),
        catalog.moto_version()
    );
    for name in &names {
        let t = catalog.get(name)?;
        let a = model.allocatable(t);
        let on_demand = prices
            .on_demand(&region, name)
            .with_context(|| format!("no on-demand price for {name}"))?;
        println!(
            "\n{name}: {} vCPU, {} MiB, max {} pods; allocatable {}m CPU, {} MiB memory",
            t.vcpus,
            t.memory_mib,
            model.max_pods(t),
            a.cpu_millis,
            a.memory_mib()
        );
        println!(
            "  on-demand ${on_demand:.4}/h (${:.4} per allocatable vCPU)",
            on_demand * 1000.0 / a.cpu_millis as f64
        );
        for zone in catalog.offered_zones(&region, name) {
            if let Some(spot) = prices.spot(zone, name) {
                let band = prices.interruption_band(&region, name).unwrap_or_default();
                println!(
                    "  {zone}: spot ${spot:.4}/h, {:.0}% off, interruption band {band}",
                    (1.0 - spot / on_demand) * 100.0
                );
            }
        }
    }
    Ok(())
}
