//! Instance-type selection: the engine behind `spot-select` and the provisioner's type
//! choice, in the spirit of `ec2-instance-selector`.
//!
//! [`select`] takes [`Criteria`], the instance types to choose from, where they are offered
//! ([`ZoneAvailability`]) and what they cost ([`PriceSource`]), and returns the matching
//! types with their prices and zones, sorted and truncated.
//!
//! - [`ranges`]: inclusive ranges and the size/ratio/number parsers.
//! - [`filters`]: [`Criteria`] and what each criterion keeps.
//! - [`sort`]: sort keys and directions.
//! - [`flexible`]: the `--flexible` defaults and the kOps split by vCPU-to-memory ratio.
//!
//! Candidates are the types offered in at least one zone of the region (default
//! [`DEFAULT_REGION`]). A type's spot price is its lowest spot price over the zones that
//! count: the requested availability zones, or every zone of the region offering it.

pub mod filters;
pub mod flexible;
pub mod ranges;
pub mod sort;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;

use crate::instance_type::{CapacityType, InstanceType};
use crate::price::PriceSource;
pub use filters::{Criteria, NameRegex};
pub use ranges::Range;
pub use sort::{SortDirection, SortKey};

/// The region selections run in when the criteria name none.
pub const DEFAULT_REGION: &str = "us-east-1";

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A range of the criteria is contradictory or not a number.
    #[error(transparent)]
    Range(#[from] ranges::Error),
    /// The availability data knows no zone in the region.
    #[error("unknown region {region:?}: no availability zone data for it")]
    UnknownRegion {
        /// The region asked for.
        region: String,
    },
    /// A requested availability zone is not a zone of the region.
    #[error("unknown availability zone {zone:?} in region {region}: expected one of {known}")]
    UnknownZone {
        /// The zone asked for.
        zone: String,
        /// The region of the selection.
        region: String,
        /// The region's zones, comma-separated.
        known: String,
    },
}

/// Where instance types are offered.
pub trait ZoneAvailability {
    /// The availability zones of `region` (empty when the region is unknown).
    fn zones(&self, region: &str) -> Vec<String>;
    /// The zones of `region` where `instance_type` is offered.
    fn offered_zones(&self, region: &str, instance_type: &str) -> Vec<String>;
}

/// An in-memory [`ZoneAvailability`]: which types are offered in which zone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OfferingMap {
    zones: BTreeMap<String, BTreeSet<String>>,
    offered: BTreeMap<(String, String), BTreeSet<String>>,
}

impl OfferingMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a zone of `region`, even when nothing is offered there yet.
    pub fn add_zone(&mut self, region: &str, zone: &str) {
        self.zones
            .entry(region.to_owned())
            .or_default()
            .insert(zone.to_owned());
    }

    /// Records that `instance_type` is offered in `zone` of `region`.
    pub fn add(&mut self, region: &str, zone: &str, instance_type: &str) {
        self.add_zone(region, zone);
        self.offered
            .entry((region.to_owned(), instance_type.to_owned()))
            .or_default()
            .insert(zone.to_owned());
    }
}

impl ZoneAvailability for OfferingMap {
    fn zones(&self, region: &str) -> Vec<String> {
        self.zones
            .get(region)
            .map(|z| z.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn offered_zones(&self, region: &str, instance_type: &str) -> Vec<String> {
        self.offered
            .get(&(region.to_owned(), instance_type.to_owned()))
            .map(|z| z.iter().cloned().collect())
            .unwrap_or_default()
    }
}

impl ZoneAvailability for crate::catalog::Catalog {
    fn zones(&self, region: &str) -> Vec<String> {
        crate::catalog::Catalog::zones(self, region)
            .map(|zones| zones.into_iter().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    fn offered_zones(&self, region: &str, instance_type: &str) -> Vec<String> {
        crate::catalog::Catalog::offered_zones(self, region, instance_type)
            .into_iter()
            .map(str::to_owned)
            .collect()
    }
}

/// A selected instance type with its prices and zones.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Selected {
    /// The type.
    pub instance_type: InstanceType,
    /// The region of the selection.
    pub region: String,
    /// The zones that count, sorted: the requested availability zones, or every zone of the
    /// region offering the type.
    pub zones: Vec<String>,
    /// On-demand USD per hour in the region, when known.
    pub on_demand_price: Option<f64>,
    /// Lowest spot USD per hour over [`Selected::zones`], when known.
    pub spot_price: Option<f64>,
    /// Spot interruption frequency band (0 = `<5%` .. 4 = `>20%`), when known.
    pub interruption_band: Option<u8>,
}

impl Selected {
    /// The price for buying it as `capacity_type`.
    pub fn price(&self, capacity_type: CapacityType) -> Option<f64> {
        match capacity_type {
            CapacityType::Spot => self.spot_price,
            CapacityType::OnDemand => self.on_demand_price,
        }
    }
}

/// How many candidates one filter keeps on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FilterReport {
    /// The flag, without dashes (`vcpus`, `allow-list`).
    pub flag: &'static str,
    /// Candidates this filter alone keeps.
    pub kept: usize,
}

/// Why a selection came back empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// The region of the selection.
    pub region: String,
    /// Types offered in the region.
    pub candidates: usize,
    /// Each active filter on its own.
    pub filters: Vec<FilterReport>,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no instance type matched: {} types are offered in {}",
            self.candidates, self.region
        )?;
        if self.filters.is_empty() {
            return Ok(());
        }
        f.write_str("; on its own")?;
        for (i, report) in self.filters.iter().enumerate() {
            let sep = if i == 0 { " " } else { ", " };
            write!(f, "{sep}--{} keeps {}", report.flag, report.kept)?;
        }
        let blocking: Vec<_> = self
            .filters
            .iter()
            .filter(|r| r.kept == 0)
            .map(|r| r.flag)
            .collect();
        if blocking.is_empty() {
            f.write_str(", but no type satisfies all of them together")
        } else {
            write!(f, "; nothing satisfies --{}", blocking.join(", --"))
        }
    }
}

/// The outcome of [`select`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Selection {
    /// The matching types, sorted, at most `max_results`.
    pub selected: Vec<Selected>,
    /// Matching types dropped by `max_results`.
    pub truncated: usize,
    /// Set when nothing matched (not when `max_results` dropped every match).
    pub explanation: Option<Explanation>,
}

struct Prepared<'a> {
    instance_type: &'a InstanceType,
    zones: Vec<String>,
    on_demand_price: Option<f64>,
    spot_price: Option<f64>,
}

impl<'a> Prepared<'a> {
    fn candidate(&self) -> filters::Candidate<'_> {
        filters::Candidate {
            instance_type: self.instance_type,
            on_demand_price: self.on_demand_price,
            spot_price: self.spot_price,
            zones: &self.zones,
        }
    }
}

/// Selects the types of `types` that satisfy `criteria`, offered in the region according to
/// `offerings`, priced by `prices`; sorted by `criteria.sort_by` and truncated to
/// `criteria.max_results`.
///
/// Errors on contradictory ranges, an unknown region or a zone outside the region; a
/// selection that matches nothing is not an error (see [`Selection::explanation`]).
pub fn select(
    criteria: &Criteria,
    types: &[InstanceType],
    offerings: &dyn ZoneAvailability,
    prices: &dyn PriceSource,
) -> Result<Selection, Error> {
    criteria.validate()?;
    let region = criteria.region.as_deref().unwrap_or(DEFAULT_REGION);
    let region_zones = offerings.zones(region);
    if region_zones.is_empty() {
        return Err(Error::UnknownRegion {
            region: region.to_owned(),
        });
    }
    if let Some(zone) = criteria
        .availability_zones
        .iter()
        .find(|z| !region_zones.contains(z))
    {
        return Err(Error::UnknownZone {
            zone: zone.clone(),
            region: region.to_owned(),
            known: region_zones.join(", "),
        });
    }
    let prepared: Vec<Prepared<'_>> = types
        .iter()
        .filter_map(|t| {
            let mut zones = offerings.offered_zones(region, &t.name);
            if zones.is_empty() {
                return None;
            }
            zones.sort();
            let counted: Vec<&String> = if criteria.availability_zones.is_empty() {
                zones.iter().collect()
            } else {
                zones
                    .iter()
                    .filter(|z| criteria.availability_zones.contains(z))
                    .collect()
            };
            let spot_price = counted
                .iter()
                .filter_map(|z| prices.spot(z, &t.name))
                .filter(|p| p.is_finite())
                .min_by(f64::total_cmp);
            Some(Prepared {
                instance_type: t,
                on_demand_price: prices.on_demand(region, &t.name),
                spot_price,
                zones,
            })
        })
        .collect();

    let checks = filters::checks(criteria);
    let mut selected: Vec<Selected> = prepared
        .iter()
        .filter(|p| {
            let candidate = p.candidate();
            checks.iter().all(|(_, check)| check(&candidate))
        })
        .map(|p| {
            let zones = if criteria.availability_zones.is_empty() {
                p.zones.clone()
            } else {
                let mut zones = criteria.availability_zones.clone();
                zones.sort();
                zones.dedup();
                zones
            };
            Selected {
                instance_type: p.instance_type.clone(),
                region: region.to_owned(),
                zones,
                on_demand_price: p.on_demand_price,
                spot_price: p.spot_price,
                interruption_band: prices.interruption_band(region, &p.instance_type.name),
            }
        })
        .collect();

    sort::sort(&mut selected, criteria.sort_by, criteria.sort_direction);
    let matched = selected.len();
    let mut truncated = 0;
    if let Some(max) = criteria.max_results
        && selected.len() > max
    {
        truncated = selected.len() - max;
        selected.truncate(max);
    }
    let explanation = (matched == 0).then(|| Explanation {
        region: region.to_owned(),
        candidates: prepared.len(),
        filters: checks
            .iter()
            .map(|(flag, check)| FilterReport {
                flag,
                kept: prepared.iter().filter(|p| check(&p.candidate())).count(),
            })
            .collect(),
    });
    Ok(Selection {
        selected,
        truncated,
        explanation,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::instance_type::Architecture;

    /// A plain x86_64 Intel nitro type.
    pub(crate) fn ty(name: &str, vcpus: u32, memory_gib: u64) -> InstanceType {
        InstanceType {
            max_enis: 3,
            ipv4_per_eni: 10,
            network_performance: "Up to 10 Gigabit".into(),
            network_gbps: 0.75,
            ..crate::catalog::synthetic_type(name, vcpus, memory_gib * 1024).unwrap()
        }
    }

    pub(crate) fn selected(t: InstanceType, on_demand: Option<f64>, spot: Option<f64>) -> Selected {
        Selected {
            instance_type: t,
            region: DEFAULT_REGION.into(),
            zones: vec![],
            on_demand_price: on_demand,
            spot_price: spot,
            interruption_band: None,
        }
    }

    #[derive(Default)]
    struct Prices {
        on_demand: HashMap<String, f64>,
        spot: HashMap<(String, String), f64>,
    }

    impl PriceSource for Prices {
        fn on_demand(&self, _region: &str, t: &str) -> Option<f64> {
            self.on_demand.get(t).copied()
        }
        fn spot(&self, zone: &str, t: &str) -> Option<f64> {
            self.spot.get(&(zone.to_owned(), t.to_owned())).copied()
        }
        fn interruption_band(&self, _region: &str, t: &str) -> Option<u8> {
            self.on_demand.contains_key(t).then_some(1)
        }
    }

    struct Fixture {
        types: Vec<InstanceType>,
        offerings: OfferingMap,
        prices: Prices,
    }

    fn fixture() -> Fixture {
        let mut arm = ty("m6g.large", 2, 8);
        arm.architectures = vec![Architecture::Arm64];
        arm.cpu_manufacturer = "AWS".into();
        let mut gpu = ty("g4dn.xlarge", 4, 16);
        (gpu.gpus, gpu.gpu_memory_mib, gpu.gpu_manufacturer, gpu.gpu_model) =
            (1, 16 * 1024, "NVIDIA".into(), "T4".into());
        gpu.instance_storage_gb = 125;
        gpu.network_gbps = 5.0;
        let mut burst = ty("t3.medium", 2, 4);
        burst.burstable = true;
        let mut metal = ty("m5.metal", 96, 384);
        (
            metal.bare_metal,
            metal.hypervisor,
            metal.max_enis,
            metal.network_gbps,
        ) = (true, String::new(), 15, 25.0);
        let mut old = ty("m4.large", 2, 8);
        (old.current_generation, old.hypervisor) = (false, "xen".into());
        let mut amd = ty("c5a.large", 2, 4);
        amd.cpu_manufacturer = "AMD".into();
        amd.spot_supported = false;
        let odd = ty("x9.large", 2, 3);
        let types = vec![
            ty("c5.large", 2, 4),
            ty("m5.large", 2, 8),
            ty("r5.large", 2, 16),
            ty("m5.xlarge", 4, 16),
            arm,
            gpu,
            burst,
            metal,
            old,
            amd,
            odd,
            ty("z1d.large", 2, 16),
        ];
        let mut offerings = OfferingMap::new();
        for t in &types {
            match t.name.as_str() {
                "z1d.large" => offerings.add("eu-west-1", "eu-west-1a", &t.name),
                "g4dn.xlarge" => offerings.add("us-east-1", "us-east-1b", &t.name),
                name => {
                    offerings.add("us-east-1", "us-east-1a", name);
                    offerings.add("us-east-1", "us-east-1b", name);
                }
            }
        }
        offerings.add_zone("us-east-1", "us-east-1c");
        let mut prices = Prices::default();
        for (i, t) in types.iter().enumerate() {
            if t.name == "x9.large" {
                continue;
            }
            let od = 0.05 * (i + 1) as f64;
            prices.on_demand.insert(t.name.clone(), od);
            prices
                .spot
                .insert(("us-east-1a".into(), t.name.clone()), od * 0.4);
            prices
                .spot
                .insert(("us-east-1b".into(), t.name.clone()), od * 0.3);
        }
        Fixture {
            types,
            offerings,
            prices,
        }
    }

    fn run(c: Criteria) -> Vec<String> {
        let f = fixture();
        let s = select(&c, &f.types, &f.offerings, &f.prices).unwrap();
        s.selected.into_iter().map(|s| s.instance_type.name).collect()
    }

    fn with(f: impl FnOnce(&mut Criteria)) -> Vec<String> {
        let mut c = Criteria::default();
        f(&mut c);
        run(c)
    }

    #[test]
    fn default_selects_the_region_sorted_by_name() {
        let all = run(Criteria::default());
        assert_eq!(all.len(), 11, "z1d.large is only offered in eu-west-1: {all:?}");
        let mut sorted = all.clone();
        sorted.sort();
        assert_eq!(all, sorted);
        assert_eq!(with(|c| c.region = Some("eu-west-1".into())), ["z1d.large"]);
    }

    #[test]
    fn numeric_filters() {
        assert_eq!(
            with(|c| {
                c.vcpus = Some(Range::exact(2));
                c.memory_mib = Some(Range::exact(4096.0));
            }),
            ["c5.large", "c5a.large", "t3.medium"]
        );
        assert_eq!(
            with(|c| c.vcpus = Some(Range::at_least(4))),
            ["g4dn.xlarge", "m5.metal", "m5.xlarge"]
        );
        assert_eq!(with(|c| c.gpus = Some(Range::at_least(1))), ["g4dn.xlarge"]);
        assert_eq!(
            with(|c| c.gpu_memory_total_mib = Some(Range::at_least(1.0))),
            ["g4dn.xlarge"]
        );
        assert_eq!(
            with(|c| c.network_performance_gbps = Some(Range::at_least(5.0))),
            ["g4dn.xlarge", "m5.metal"]
        );
        assert_eq!(
            with(|c| c.network_interfaces = Some(Range::between(10, 20))),
            ["m5.metal"]
        );
        assert_eq!(
            with(|c| c.instance_storage_mib = Some(Range::at_least(1024.0))),
            ["g4dn.xlarge"]
        );
        assert_eq!(
            with(|c| c.instance_generation = Some(Range::at_most(4))),
            ["g4dn.xlarge", "m4.large", "t3.medium"]
        );
        assert_eq!(
            with(|c| c.instance_generation = Some(Range::exact(6))),
            ["m6g.large"]
        );
    }

    #[test]
    fn max_keeps_types_without_the_attribute_when_zero_is_allowed() {
        let all = run(Criteria::default());
        assert_eq!(with(|c| c.gpus = Some(Range::at_most(2))).len(), all.len());
        assert!(!with(|c| c.gpus = Some(Range::exact(0))).contains(&"g4dn.xlarge".to_owned()));
        let no_storage = with(|c| c.instance_storage_mib = Some(Range::at_most(0.0)));
        assert_eq!(no_storage.len(), all.len() - 1);
        assert!(with(|c| c.gpu_memory_total_mib = Some(Range::between(1024.0, 8192.0))).is_empty());
    }

    #[test]
    fn ratio_matches_within_one_percent() {
        assert_eq!(
            with(|c| c.vcpus_to_memory_ratio = Some(Range::exact(2.0))),
            ["c5.large", "c5a.large", "t3.medium"]
        );
        assert_eq!(
            with(|c| c.vcpus_to_memory_ratio = Some(Range::exact(1.5))),
            ["x9.large"]
        );
        assert_eq!(
            with(|c| c.vcpus_to_memory_ratio = Some(Range::exact(1.515))),
            ["x9.large"]
        );
        assert!(with(|c| c.vcpus_to_memory_ratio = Some(Range::exact(1.6))).is_empty());
        let wide = with(|c| c.vcpus_to_memory_ratio = Some(Range::between(4.0, 8.0)));
        assert!(wide.contains(&"r5.large".to_owned()) && !wide.contains(&"c5.large".to_owned()));
    }

    #[test]
    fn text_and_flag_filters() {
        assert_eq!(
            with(|c| c.cpu_architecture = Some(Architecture::Arm64)),
            ["m6g.large"]
        );
        assert_eq!(with(|c| c.cpu_manufacturer = Some("amd".into())), ["c5a.large"]);
        assert_eq!(
            with(|c| c.gpu_manufacturer = Some("nvidia".into())),
            ["g4dn.xlarge"]
        );
        assert_eq!(with(|c| c.gpu_model = Some("t4".into())), ["g4dn.xlarge"]);
        assert!(with(|c| c.gpu_model = Some("A10G".into())).is_empty());
        assert_eq!(with(|c| c.burst_support = Some(true)), ["t3.medium"]);
        assert!(!with(|c| c.burst_support = Some(false)).contains(&"t3.medium".to_owned()));
        assert_eq!(with(|c| c.hypervisor = Some("xen".into())), ["m4.large"]);
        assert!(!with(|c| c.hypervisor = Some("nitro".into())).contains(&"m5.metal".to_owned()));
        assert_eq!(with(|c| c.bare_metal = Some(true)), ["m5.metal"]);
        assert_eq!(with(|c| c.current_generation = Some(false)), ["m4.large"]);
        assert!(!with(|c| c.usage_class = Some(CapacityType::Spot)).contains(&"c5a.large".to_owned()));
        assert_eq!(
            with(|c| c.instance_families = vec!["m5".into()]),
            ["m5.large", "m5.metal", "m5.xlarge"]
        );
        assert_eq!(
            with(|c| c.instance_categories = vec!["r".into(), "t".into()]),
            ["r5.large", "t3.medium"]
        );
        assert_eq!(
            with(|c| c.instance_types = vec!["m5.large".into(), "nope.large".into()]),
            ["m5.large"]
        );
    }

    #[test]
    fn allow_and_deny_lists_are_anchored() {
        assert_eq!(
            with(|c| c.allow_list = NameRegex::new("m5.*").ok()),
            ["m5.large", "m5.metal", "m5.xlarge"]
        );
        assert!(with(|c| c.allow_list = NameRegex::new("large").ok()).is_empty());
        let denied = with(|c| c.deny_list = NameRegex::new(r"m5\..*").ok());
        assert_eq!(denied.len(), 8);
        assert!(denied.iter().all(|n| !n.starts_with("m5.")));
    }

    #[test]
    fn zones_and_prices() {
        let f = fixture();
        let c = Criteria {
            availability_zones: vec!["us-east-1a".into()],
            ..Criteria::default()
        };
        let s = select(&c, &f.types, &f.offerings, &f.prices).unwrap();
        assert!(s.selected.iter().all(|s| s.zones == ["us-east-1a"]));
        assert!(
            !s.selected.iter().any(|s| s.instance_type.name == "g4dn.xlarge"),
            "g4dn only in 1b"
        );
        let c5 = s
            .selected
            .iter()
            .find(|s| s.instance_type.name == "c5.large")
            .unwrap();
        assert_eq!(c5.on_demand_price, Some(0.05));
        assert!((c5.spot_price.unwrap() - 0.02).abs() < 1e-12, "spot in 1a only");
        assert_eq!(c5.interruption_band, Some(1));

        let s = select(&Criteria::default(), &f.types, &f.offerings, &f.prices).unwrap();
        let c5 = s
            .selected
            .iter()
            .find(|s| s.instance_type.name == "c5.large")
            .unwrap();
        assert_eq!(c5.zones, ["us-east-1a", "us-east-1b"]);
        assert!((c5.spot_price.unwrap() - 0.015).abs() < 1e-12, "lowest zone");
        assert_eq!(c5.price(CapacityType::OnDemand), Some(0.05));

        let c = Criteria {
            availability_zones: vec!["us-east-1c".into()],
            ..Criteria::default()
        };
        let s = select(&c, &f.types, &f.offerings, &f.prices).unwrap();
        assert!(s.selected.is_empty());
        assert_eq!(
            s.explanation.unwrap().filters,
            [FilterReport {
                flag: "availability-zones",
                kept: 0
            }]
        );
    }

    #[test]
    fn price_filter_uses_the_usage_class_and_drops_unpriced() {
        // c5.large: 0.05 on demand, 0.015 spot; m5.large: 0.10 / 0.03.
        let od = with(|c| c.price_per_hour = Some(Range::at_most(0.06)));
        assert_eq!(od, ["c5.large"]);
        let spot = with(|c| {
            c.price_per_hour = Some(Range::at_most(0.031));
            c.usage_class = Some(CapacityType::Spot);
        });
        assert_eq!(spot, ["c5.large", "m5.large"]);
        assert!(!with(|c| c.price_per_hour = Some(Range::at_most(100.0))).contains(&"x9.large".to_owned()));
    }

    #[test]
    fn sort_and_truncate() {
        let f = fixture();
        let c = Criteria {
            sort_by: SortKey::OnDemandPrice,
            sort_direction: SortDirection::Descending,
            max_results: Some(2),
            ..Criteria::default()
        };
        let s = select(&c, &f.types, &f.offerings, &f.prices).unwrap();
        let names: Vec<_> = s.selected.iter().map(|s| s.instance_type.name.as_str()).collect();
        assert_eq!(names, ["c5a.large", "m4.large"]);
        assert_eq!(s.truncated, 9);
        assert_eq!(s.explanation, None);
        let c = Criteria {
            max_results: Some(0),
            ..Criteria::default()
        };
        let s = select(&c, &f.types, &f.offerings, &f.prices).unwrap();
        assert_eq!((s.selected.len(), s.truncated, s.explanation), (0, 11, None));
    }

    #[test]
    fn errors_and_explanations() {
        let f = fixture();
        let c = Criteria {
            vcpus: Some(Range::between(8, 2)),
            ..Criteria::default()
        };
        let err = select(&c, &f.types, &f.offerings, &f.prices).unwrap_err();
        assert_eq!(err.to_string(), "--vcpus-min 8 is greater than --vcpus-max 2");
        let c = Criteria {
            region: Some("mars-1".into()),
            ..Criteria::default()
        };
        assert!(matches!(
            select(&c, &f.types, &f.offerings, &f.prices),
            Err(Error::UnknownRegion { region }) if region == "mars-1"
        ));
        let c = Criteria {
            availability_zones: vec!["eu-west-1a".into()],
            ..Criteria::default()
        };
        let err = select(&c, &f.types, &f.offerings, &f.prices).unwrap_err();
        assert!(
            err.to_string().contains("us-east-1a, us-east-1b, us-east-1c"),
            "{err}"
        );

        let c = Criteria {
            vcpus: Some(Range::exact(96)),
            cpu_architecture: Some(Architecture::Arm64),
            ..Criteria::default()
        };
        let s = select(&c, &f.types, &f.offerings, &f.prices).unwrap();
        let e = s.explanation.unwrap();
        assert_eq!(e.candidates, 11);
        assert_eq!(
            e.to_string(),
            "no instance type matched: 11 types are offered in us-east-1; on its own --vcpus keeps 1, \
             --cpu-architecture keeps 1, but no type satisfies all of them together"
        );
        let c = Criteria {
            gpus: Some(Range::exact(8)),
            ..Criteria::default()
        };
        let e = select(&c, &f.types, &f.offerings, &f.prices)
            .unwrap()
            .explanation
            .unwrap();
        assert!(e.to_string().ends_with("; nothing satisfies --gpus"), "{e}");
    }

    #[test]
    fn flexible_selects_a_diversified_set() {
        let mut c = Criteria::default();
        flexible::apply(&mut c);
        assert_eq!(run(c), ["m5.xlarge"]);
        let mut c = Criteria {
            vcpus: Some(Range::exact(2)),
            ..Criteria::default()
        };
        flexible::apply(&mut c);
        assert_eq!(run(c), ["c5.large", "c5a.large", "m5.large", "r5.large"]);
    }
}
