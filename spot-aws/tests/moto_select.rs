//! The live path of `spot-select` against moto: DescribeInstanceTypes,
//! DescribeInstanceTypeOfferings and DescribeSpotPriceHistory read through the SDK, and the
//! binary's `--live --endpoint-url`.

mod common;

use std::process::Command;

use serde_json::Value;
use spot_aws::select::live::LiveCatalog;
use spot_core::catalog::Catalog;
use spot_core::instance_type::Architecture;
use spot_core::price::{OfflinePrices, PriceSource};
use spot_core::select::{Criteria, Range, ZoneAvailability, select};

/// moto's fake spot price for every (type, zone).
const MOTO_SPOT_PRICE: f64 = 0.00001;

#[tokio::test]
async fn live_catalog_reads_types_offerings_and_spot_prices() {
    let config = common::moto_config("us-east-1").await;
    let client = aws_sdk_ec2::Client::new(&config);
    let live = LiveCatalog::fetch(&client, "us-east-1").await.unwrap();

    assert!(
        live.types.len() > 1000,
        "moto describes every type: {}",
        live.types.len()
    );
    assert!(
        live.types.windows(2).all(|w| w[0].name < w[1].name),
        "sorted and unique"
    );
    let c5 = live.types.iter().find(|t| t.name == "c5.large").unwrap();
    assert_eq!((c5.vcpus, c5.memory_mib, c5.gpus), (2, 4096, 0));
    assert_eq!(c5.architectures, [Architecture::X86_64]);
    assert_eq!(
        (c5.hypervisor.as_str(), c5.cpu_manufacturer.as_str()),
        ("nitro", "Intel")
    );
    assert!(c5.spot_supported && c5.on_demand_supported && c5.max_enis >= 3 && c5.network_gbps > 0.0);
    let g4 = live.types.iter().find(|t| t.name == "g4dn.xlarge").unwrap();
    assert_eq!(
        (g4.gpus, g4.gpu_manufacturer.as_str(), g4.gpu_model.as_str()),
        (1, "NVIDIA", "T4")
    );
    assert!(g4.instance_storage_gb > 0);

    // The same moto data (possibly an older release) as the embedded catalog: core specs agree.
    let embedded = Catalog::embedded();
    for name in ["c5.large", "m5.xlarge", "m6g.large", "g4dn.xlarge", "r5.2xlarge"] {
        let (a, b) = (
            live.types.iter().find(|t| t.name == name).unwrap(),
            embedded.get(name).unwrap(),
        );
        assert_eq!(
            (
                a.vcpus,
                a.memory_mib,
                &a.architectures,
                a.gpus,
                a.gpu_memory_mib,
                &a.hypervisor,
                a.max_enis
            ),
            (
                b.vcpus,
                b.memory_mib,
                &b.architectures,
                b.gpus,
                b.gpu_memory_mib,
                &b.hypervisor,
                b.max_enis
            ),
            "{name}"
        );
    }

    let zones = live.offerings.zones("us-east-1");
    assert!(
        zones.len() >= 5 && zones.iter().all(|z| z.starts_with("us-east-1")),
        "{zones:?}"
    );
    let m5 = live.offerings.offered_zones("us-east-1", "m5.large");
    assert!(m5.contains(&"us-east-1a".to_owned()), "{m5:?}");
    assert!(live.offerings.offered_zones("us-east-1", "nope.large").is_empty());

    assert_eq!(
        live.spot_prices
            .get(&("us-east-1a".to_owned(), "m5.large".to_owned())),
        Some(&MOTO_SPOT_PRICE)
    );
    let prices = live.prices(OfflinePrices::embedded());
    assert_eq!(prices.spot("us-east-1a", "m5.large"), Some(MOTO_SPOT_PRICE));
    assert_eq!(
        prices.on_demand("us-east-1", "m5.large"),
        OfflinePrices::embedded().on_demand("us-east-1", "m5.large")
    );

    let criteria = Criteria {
        vcpus: Some(Range::exact(2)),
        memory_mib: Some(Range::exact(4096.0)),
        cpu_architecture: Some(Architecture::X86_64),
        region: Some("us-east-1".into()),
        ..Criteria::default()
    };
    let selection = select(&criteria, &live.types, &live.offerings, &prices).unwrap();
    let names: Vec<&str> = selection
        .selected
        .iter()
        .map(|s| s.instance_type.name.as_str())
        .collect();
    assert!(names.contains(&"c5.large"), "{names:?}");
    assert!(
        selection
            .selected
            .iter()
            .all(|s| s.spot_price == Some(MOTO_SPOT_PRICE))
    );
}

#[tokio::test]
async fn live_catalog_of_another_region() {
    let config = common::moto_config("eu-west-1").await;
    let client = aws_sdk_ec2::Client::new(&config);
    let live = LiveCatalog::fetch(&client, "eu-west-1").await.unwrap();
    let zones = live.offerings.zones("eu-west-1");
    assert!(
        !zones.is_empty() && zones.iter().all(|z| z.starts_with("eu-west-1")),
        "{zones:?}"
    );
    assert!(
        live.spot_prices
            .keys()
            .all(|(zone, _)| zone.starts_with("eu-west-1"))
    );
}

fn spot_select(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_spot-select"))
        .args(args)
        .env_remove("AWS_PROFILE")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap()
}

#[test]
fn binary_live_json_against_moto() {
    let endpoint = common::moto_endpoint();
    let out = spot_select(&[
        "--live",
        "--endpoint-url",
        &endpoint,
        "--region",
        "us-east-1",
        "--vcpus",
        "2",
        "--memory",
        "4",
        "--cpu-architecture",
        "x86_64",
        "-o",
        "json",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let items: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = items
        .iter()
        .map(|v| v["instance_type"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"c5.large"), "{names:?}");
    for v in &items {
        assert_eq!(
            (v["vcpus"].as_u64(), v["memory_gib"].as_f64()),
            (Some(2), Some(4.0)),
            "{v}"
        );
        assert_eq!(v["spot_price_usd"].as_f64(), Some(MOTO_SPOT_PRICE), "{v}");
        assert!(v["zones"].as_array().is_some_and(|z| !z.is_empty()), "{v}");
        assert_eq!(v["region"].as_str(), Some("us-east-1"));
    }
    let c5 = items.iter().find(|v| v["instance_type"] == "c5.large").unwrap();
    let od = OfflinePrices::embedded()
        .on_demand("us-east-1", "c5.large")
        .unwrap();
    assert!(
        (c5["ondemand_price_usd"].as_f64().unwrap() - od).abs() < 1e-6,
        "on-demand comes from the offline table"
    );

    // A price filter on spot: moto's price is below any bound.
    let out = spot_select(&[
        "--live",
        "--endpoint-url",
        &endpoint,
        "--region",
        "us-east-1",
        "--instance-types",
        "m5.large,c5.large",
        "-u",
        "spot",
        "--price-per-hour-max",
        "0.0001",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "c5.large\nm5.large\n");
}

#[test]
fn binary_live_unreachable_endpoint_exits_1() {
    let out = spot_select(&[
        "--live",
        "--endpoint-url",
        "http://127.0.0.1:9",
        "--region",
        "us-east-1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("DescribeInstanceTypes failed"));
}
