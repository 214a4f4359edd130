//! The selector's data read live from EC2.
//!
//! - Types: `DescribeInstanceTypes`, every page.
//! - Offerings: `DescribeInstanceTypeOfferings` with location type `availability-zone`, every
//!   page; the zones of the region are the zones that appear there.
//! - Spot prices: `DescribeSpotPriceHistory` for `Linux/UNIX` and `Linux/UNIX (Amazon VPC)`
//!   starting now, every page; the latest entry per (zone, type) wins.
//!
//! EC2 has no on-demand price API (that is the Pricing service), so on-demand prices and
//! interruption bands come from a fallback [`PriceSource`] (the offline tables).

use std::collections::HashMap;

use aws_sdk_ec2::Client;
use aws_sdk_ec2::error::DisplayErrorContext;
use aws_sdk_ec2::primitives::DateTime;
use aws_sdk_ec2::types::{InstanceTypeInfo, LocationType, UsageClassType};
use spot_core::instance_type::{Architecture, InstanceType, NameParts};
use spot_core::price::PriceSource;
use spot_core::select::OfferingMap;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An EC2 call failed.
    #[error("{operation} failed: {message}")]
    Api {
        /// The EC2 operation.
        operation: &'static str,
        /// The SDK error with its context.
        message: String,
    },
    /// EC2 returned an instance type without a field the selector needs.
    #[error("DescribeInstanceTypes returned {instance_type} without {field}")]
    MissingField {
        /// The type (or `<unnamed>`).
        instance_type: String,
        /// The missing field.
        field: &'static str,
    },
    /// EC2 returned an instance type whose name does not parse.
    #[error(transparent)]
    Name(#[from] spot_core::instance_type::Error),
}

fn api<E: std::error::Error + 'static>(operation: &'static str) -> impl FnOnce(E) -> Error {
    move |e| Error::Api {
        operation,
        message: DisplayErrorContext(e).to_string(),
    }
}

/// Everything the selector needs from EC2 for one region.
#[derive(Debug, Clone, Default)]
pub struct LiveCatalog {
    /// The region read.
    pub region: String,
    /// Every instance type EC2 describes.
    pub types: Vec<InstanceType>,
    /// Zonal offerings of the region.
    pub offerings: OfferingMap,
    /// Latest spot price per (zone, type).
    pub spot_prices: HashMap<(String, String), f64>,
}

impl LiveCatalog {
    /// Reads types, offerings and spot prices of `client`'s region (named `region`).
    pub async fn fetch(client: &Client, region: &str) -> Result<Self, Error> {
        Ok(LiveCatalog {
            region: region.to_owned(),
            types: describe_instance_types(client).await?,
            offerings: describe_offerings(client, region).await?,
            spot_prices: describe_spot_prices(client).await?,
        })
    }

    /// The prices of this catalog: spot from EC2, the rest from `fallback`.
    pub fn prices<'a>(&'a self, fallback: &'a dyn PriceSource) -> LivePrices<'a> {
        LivePrices {
            spot: &self.spot_prices,
            fallback,
        }
    }
}

/// Spot prices read from EC2, on-demand prices and interruption bands from a fallback.
#[derive(Clone, Copy)]
pub struct LivePrices<'a> {
    spot: &'a HashMap<(String, String), f64>,
    fallback: &'a dyn PriceSource,
}

impl PriceSource for LivePrices<'_> {
    fn on_demand(&self, region: &str, instance_type: &str) -> Option<f64> {
        self.fallback.on_demand(region, instance_type)
    }

    fn spot(&self, zone: &str, instance_type: &str) -> Option<f64> {
        self.spot
            .get(&(zone.to_owned(), instance_type.to_owned()))
            .copied()
    }

    fn interruption_band(&self, region: &str, instance_type: &str) -> Option<u8> {
        self.fallback.interruption_band(region, instance_type)
    }
}

/// Every instance type, following `NextToken`.
pub async fn describe_instance_types(client: &Client) -> Result<Vec<InstanceType>, Error> {
    let mut types = Vec::new();
    let mut token = None;
    loop {
        let out = client
            .describe_instance_types()
            .max_results(100)
            .set_next_token(token)
            .send()
            .await
            .map_err(api("DescribeInstanceTypes"))?;
        for info in out.instance_types() {
            types.push(instance_type_from_info(info)?);
        }
        token = next(out.next_token());
        if token.is_none() {
            break;
        }
    }
    types.sort_by(|a, b| a.name.cmp(&b.name));
    types.dedup_by(|a, b| a.name == b.name);
    Ok(types)
}

/// The zonal offerings of the client's region, following `NextToken`.
pub async fn describe_offerings(client: &Client, region: &str) -> Result<OfferingMap, Error> {
    let mut map = OfferingMap::new();
    let mut token = None;
    loop {
        let out = client
            .describe_instance_type_offerings()
            .location_type(LocationType::AvailabilityZone)
            .max_results(1000)
            .set_next_token(token)
            .send()
            .await
            .map_err(api("DescribeInstanceTypeOfferings"))?;
        for offering in out.instance_type_offerings() {
            if let (Some(t), Some(zone)) = (offering.instance_type(), offering.location()) {
                map.add(region, zone, t.as_str());
            }
        }
        token = next(out.next_token());
        if token.is_none() {
            break;
        }
    }
    Ok(map)
}

/// The current Linux spot price per (zone, type), following `NextToken`.
pub async fn describe_spot_prices(client: &Client) -> Result<HashMap<(String, String), f64>, Error> {
    let now = DateTime::from(std::time::SystemTime::now());
    let mut latest: HashMap<(String, String), (DateTime, f64)> = HashMap::new();
    let mut token = None;
    loop {
        let out = client
            .describe_spot_price_history()
            .product_descriptions("Linux/UNIX")
            .product_descriptions("Linux/UNIX (Amazon VPC)")
            .start_time(now)
            .max_results(1000)
            .set_next_token(token)
            .send()
            .await
            .map_err(api("DescribeSpotPriceHistory"))?;
        for entry in out.spot_price_history() {
            let (Some(zone), Some(t), Some(price)) = (
                entry.availability_zone(),
                entry.instance_type(),
                entry.spot_price(),
            ) else {
                continue;
            };
            let Ok(price) = price.parse::<f64>() else { continue };
            if !price.is_finite() || price < 0.0 {
                continue;
            }
            let at = entry.timestamp().copied().unwrap_or(DateTime::from_secs(0));
            let key = (zone.to_owned(), t.as_str().to_owned());
            match latest.get(&key) {
                Some((seen, _)) if *seen >= at => {}
                _ => {
                    latest.insert(key, (at, price));
                }
            }
        }
        token = next(out.next_token());
        if token.is_none() {
            break;
        }
    }
    Ok(latest.into_iter().map(|(k, (_, p))| (k, p)).collect())
}

fn next(token: Option<&str>) -> Option<String> {
    token.filter(|t| !t.is_empty()).map(str::to_owned)
}

/// Converts one `DescribeInstanceTypes` entry. Missing optional data (GPUs, storage,
/// hypervisor on bare metal) becomes zero or empty; a missing name, vCPU count or memory size
/// is an error.
pub fn instance_type_from_info(info: &InstanceTypeInfo) -> Result<InstanceType, Error> {
    let name = info
        .instance_type()
        .map(|t| t.as_str().to_owned())
        .ok_or(Error::MissingField {
            instance_type: "<unnamed>".into(),
            field: "InstanceType",
        })?;
    let missing = |field| Error::MissingField {
        instance_type: name.clone(),
        field,
    };
    let parts = NameParts::parse(&name)?;
    let vcpus = info
        .v_cpu_info()
        .and_then(|v| v.default_v_cpus())
        .ok_or_else(|| missing("VCpuInfo"))?;
    let memory = info
        .memory_info()
        .and_then(|m| m.size_in_mib())
        .ok_or_else(|| missing("MemoryInfo"))?;
    let processor = info.processor_info();
    let architectures: Vec<Architecture> = processor
        .map(|p| {
            p.supported_architectures()
                .iter()
                .filter_map(|a| a.as_str().parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let gpu = info.gpu_info();
    let gpu_devices = gpu.map(|g| g.gpus()).unwrap_or_default();
    let first_gpu = gpu_devices.first();
    let network = info.network_info();
    let baselines: Vec<f64> = network
        .map(|n| {
            n.network_cards()
                .iter()
                .filter_map(|c| c.baseline_bandwidth_in_gbps())
                .collect()
        })
        .unwrap_or_default();
    let network_performance = network
        .and_then(|n| n.network_performance())
        .unwrap_or_default()
        .to_owned();
    let network_gbps = if baselines.is_empty() {
        spot_core::instance_type::network_gbps_from_text(&network_performance)
    } else {
        baselines.iter().sum()
    };
    let usage = info.supported_usage_classes();
    let non_negative = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(InstanceType {
        family: parts.family,
        category: parts.category,
        generation: parts.generation,
        size: parts.size,
        architectures,
        cpu_manufacturer: processor
            .and_then(|p| p.manufacturer())
            .unwrap_or_default()
            .to_owned(),
        vcpus: u32::try_from(vcpus).unwrap_or(0),
        memory_mib: non_negative(memory),
        gpus: gpu_devices
            .iter()
            .filter_map(|d| d.count())
            .map(|c| u32::try_from(c).unwrap_or(0))
            .sum(),
        gpu_memory_mib: gpu
            .and_then(|g| g.total_gpu_memory_in_mib())
            .map(|m| non_negative(m.into()))
            .unwrap_or(0),
        gpu_manufacturer: first_gpu
            .and_then(|d| d.manufacturer())
            .unwrap_or_default()
            .to_owned(),
        gpu_model: first_gpu.and_then(|d| d.name()).unwrap_or_default().to_owned(),
        max_enis: network
            .and_then(|n| n.maximum_network_interfaces())
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(0),
        ipv4_per_eni: network
            .and_then(|n| n.ipv4_addresses_per_interface())
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(0),
        hypervisor: info
            .hypervisor()
            .map(|h| h.as_str().to_owned())
            .unwrap_or_default(),
        burstable: info.burstable_performance_supported().unwrap_or(false),
        bare_metal: info.bare_metal().unwrap_or(false),
        current_generation: info.current_generation().unwrap_or(false),
        network_performance,
        network_gbps,
        instance_storage_gb: info
            .instance_storage_info()
            .and_then(|s| s.total_size_in_gb())
            .map(non_negative)
            .unwrap_or(0),
        spot_supported: usage.contains(&UsageClassType::Spot),
        on_demand_supported: usage.contains(&UsageClassType::OnDemand),
        name,
    })
}

#[cfg(test)]
mod tests {
    use aws_sdk_ec2::types::{
        ArchitectureType, GpuDeviceInfo, GpuInfo, InstanceStorageInfo, InstanceType as Ec2Type,
        InstanceTypeHypervisor, MemoryInfo, NetworkCardInfo, NetworkInfo, ProcessorInfo, VCpuInfo,
    };

    use super::*;

    #[test]
    fn converts_a_full_entry() {
        let info = InstanceTypeInfo::builder()
            .instance_type(Ec2Type::G4dnXlarge)
            .current_generation(true)
            .supported_usage_classes(UsageClassType::OnDemand)
            .supported_usage_classes(UsageClassType::Spot)
            .bare_metal(false)
            .hypervisor(InstanceTypeHypervisor::Nitro)
            .processor_info(
                ProcessorInfo::builder()
                    .supported_architectures(ArchitectureType::X8664)
                    .manufacturer("Intel")
                    .build(),
            )
            .v_cpu_info(VCpuInfo::builder().default_v_cpus(4).build())
            .memory_info(MemoryInfo::builder().size_in_mib(16384).build())
            .instance_storage_info(InstanceStorageInfo::builder().total_size_in_gb(125).build())
            .network_info(
                NetworkInfo::builder()
                    .network_performance("Up to 25 Gigabit")
                    .maximum_network_interfaces(3)
                    .ipv4_addresses_per_interface(10)
                    .network_cards(NetworkCardInfo::builder().baseline_bandwidth_in_gbps(5.0).build())
                    .build(),
            )
            .gpu_info(
                GpuInfo::builder()
                    .gpus(
                        GpuDeviceInfo::builder()
                            .name("T4")
                            .manufacturer("NVIDIA")
                            .count(1)
                            .build(),
                    )
                    .total_gpu_memory_in_mib(16384)
                    .build(),
            )
            .burstable_performance_supported(false)
            .build();
        let t = instance_type_from_info(&info).unwrap();
        assert_eq!(
            (t.name.as_str(), t.family.as_str(), t.generation),
            ("g4dn.xlarge", "g4dn", 4)
        );
        assert_eq!(
            (t.vcpus, t.memory_mib, t.gpus, t.gpu_memory_mib),
            (4, 16384, 1, 16384)
        );
        assert_eq!(
            (t.gpu_manufacturer.as_str(), t.gpu_model.as_str()),
            ("NVIDIA", "T4")
        );
        assert_eq!(t.architectures, [Architecture::X86_64]);
        assert_eq!(
            (t.max_enis, t.ipv4_per_eni, t.network_gbps, t.instance_storage_gb),
            (3, 10, 5.0, 125)
        );
        assert_eq!(t.hypervisor, "nitro");
        assert!(t.spot_supported && t.on_demand_supported && t.current_generation && !t.burstable);
    }

    #[test]
    fn missing_required_fields_are_errors() {
        let info = InstanceTypeInfo::builder()
            .instance_type(Ec2Type::M5Large)
            .build();
        let err = instance_type_from_info(&info).unwrap_err();
        assert_eq!(
            err.to_string(),
            "DescribeInstanceTypes returned m5.large without VCpuInfo"
        );
        let err = instance_type_from_info(&InstanceTypeInfo::builder().build()).unwrap_err();
        assert!(err.to_string().contains("<unnamed>"));
    }

    #[test]
    fn bare_metal_without_hypervisor_and_text_bandwidth() {
        let info = InstanceTypeInfo::builder()
            .instance_type(Ec2Type::M5Metal)
            .bare_metal(true)
            .v_cpu_info(VCpuInfo::builder().default_v_cpus(96).build())
            .memory_info(MemoryInfo::builder().size_in_mib(393216).build())
            .network_info(NetworkInfo::builder().network_performance("25 Gigabit").build())
            .supported_usage_classes(UsageClassType::OnDemand)
            .build();
        let t = instance_type_from_info(&info).unwrap();
        assert!(t.bare_metal && t.hypervisor.is_empty() && !t.spot_supported);
        assert_eq!((t.network_gbps, t.gpus, t.instance_storage_gb), (25.0, 0, 0));
    }
}
