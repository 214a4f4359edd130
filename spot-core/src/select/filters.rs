//! The selection criteria and the filters they turn into.
//!
//! Every field of [`Criteria`] left at its default filters nothing; the filters that are set
//! are combined with AND. Numeric filters are [`Range`]s (inclusive; see [`super::ranges`]
//! for the zero rule). Text filters (`gpu_manufacturer`, `gpu_model`, `cpu_manufacturer`,
//! `hypervisor`) compare case-insensitively and in full. The allow- and deny-lists are
//! regular expressions **anchored at both ends**: `m5.*` matches `m5.large` and `m5d.large`
//! but `m5` matches nothing, and `large` does not match `m5.large` (ec2-instance-selector
//! matches unanchored). Write `.*large` to match a suffix.

use std::fmt;
use std::str::FromStr;

use regex::Regex;

use super::ranges::Range;
use super::sort::{SortDirection, SortKey};
use crate::instance_type::{Architecture, CapacityType, InstanceType};

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// An allow- or deny-list pattern that is not a valid regular expression.
    #[error("invalid regular expression {pattern:?}: {message}")]
    Regex {
        /// The pattern as given.
        pattern: String,
        /// Why it does not compile.
        message: String,
    },
}

/// A regular expression matched against whole instance type names.
#[derive(Debug, Clone)]
pub struct NameRegex {
    pattern: String,
    regex: Regex,
}

impl NameRegex {
    /// Compiles `pattern` anchored at both ends (`^(?:pattern)$`).
    pub fn new(pattern: &str) -> Result<Self, Error> {
        let regex = Regex::new(&format!("^(?:{pattern})$")).map_err(|e| Error::Regex {
            pattern: pattern.to_owned(),
            message: e.to_string(),
        })?;
        Ok(NameRegex {
            pattern: pattern.to_owned(),
            regex,
        })
    }

    /// Whether the whole of `name` matches.
    pub fn is_match(&self, name: &str) -> bool {
        self.regex.is_match(name)
    }

    /// The pattern as given, without the anchors.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }
}

impl PartialEq for NameRegex {
    fn eq(&self, other: &Self) -> bool {
        self.pattern == other.pattern
    }
}

impl FromStr for NameRegex {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        NameRegex::new(s)
    }
}

impl fmt::Display for NameRegex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pattern)
    }
}

/// What to select. `Criteria::default()` selects every type offered in the default region.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Criteria {
    /// `--vcpus`: default vCPUs.
    pub vcpus: Option<Range<u32>>,
    /// `--memory`: memory in MiB.
    pub memory_mib: Option<Range<f64>>,
    /// `--vcpus-to-memory-ratio`: GiB of memory per vCPU (`1:4` is 4.0). A type matches when
    /// its own ratio is within 1% of the range, so `2:3` matches a type with 3 GiB per
    /// 2 vCPUs.
    pub vcpus_to_memory_ratio: Option<Range<f64>>,
    /// `--gpus`: GPU count (0 for types without GPU).
    pub gpus: Option<Range<u32>>,
    /// `--gpu-memory-total`: total GPU memory in MiB (0 for types without GPU).
    pub gpu_memory_total_mib: Option<Range<f64>>,
    /// `--gpu-manufacturer`, such as `NVIDIA`.
    pub gpu_manufacturer: Option<String>,
    /// `--gpu-model`, such as `T4`.
    pub gpu_model: Option<String>,
    /// `--cpu-architecture`: the type must support it.
    pub cpu_architecture: Option<Architecture>,
    /// `--cpu-manufacturer`: `intel`, `amd`, `aws`, `apple`.
    pub cpu_manufacturer: Option<String>,
    /// `--usage-class`: EC2 must sell the type that way; `spot` also makes `price_per_hour`
    /// compare spot prices.
    pub usage_class: Option<CapacityType>,
    /// `--burst-support`: burstable (T family) or not.
    pub burst_support: Option<bool>,
    /// `--hypervisor`: `nitro` or `xen`. Bare-metal types have none and never match.
    pub hypervisor: Option<String>,
    /// `--bare-metal`.
    pub bare_metal: Option<bool>,
    /// `--current-generation`: EC2's flag as recorded in the data.
    pub current_generation: Option<bool>,
    /// `--network-performance`: baseline bandwidth in Gbps.
    pub network_performance_gbps: Option<Range<f64>>,
    /// `--network-interfaces`: maximum ENIs.
    pub network_interfaces: Option<Range<u32>>,
    /// `--instance-storage`: local storage in MiB. EC2 reports GB; like ec2-instance-selector
    /// the GB figure is read as GiB. EBS-only types have 0.
    pub instance_storage_mib: Option<Range<f64>>,
    /// `--price-per-hour`: USD per hour, on-demand, or spot with `usage_class` spot. Types
    /// without a known price never match (ec2-instance-selector counts them as free).
    pub price_per_hour: Option<Range<f64>>,
    /// `--allow-list`: keep only names matching.
    pub allow_list: Option<NameRegex>,
    /// `--deny-list`: drop names matching.
    pub deny_list: Option<NameRegex>,
    /// `--instance-types`: keep only these exact names (empty: no filter).
    pub instance_types: Vec<String>,
    /// `--instance-family`: keep only these families, such as `m5` (empty: no filter).
    pub instance_families: Vec<String>,
    /// `--instance-category`: keep only these categories, such as `m` (empty: no filter).
    pub instance_categories: Vec<String>,
    /// `--instance-generation`: the number in the family name.
    pub instance_generation: Option<Range<u32>>,
    /// `--region`; [`super::DEFAULT_REGION`] when `None`. Only types offered in the region
    /// are candidates.
    pub region: Option<String>,
    /// `--availability-zones`: the type must be offered in **every** listed zone.
    pub availability_zones: Vec<String>,
    /// `--max-results`: keep the first N after sorting (`None`: all).
    pub max_results: Option<usize>,
    /// `--sort-by`.
    pub sort_by: SortKey,
    /// `--sort-direction`.
    pub sort_direction: SortDirection,
}

impl Criteria {
    /// Checks every range (min <= max, no NaN), naming the flag of the first bad one.
    pub fn validate(&self) -> Result<(), super::ranges::Error> {
        let u32_ranges = [
            ("vcpus", &self.vcpus),
            ("gpus", &self.gpus),
            ("network-interfaces", &self.network_interfaces),
            ("instance-generation", &self.instance_generation),
        ];
        for (flag, range) in u32_ranges {
            if let Some(r) = range {
                r.validate(flag)?;
            }
        }
        let size_ranges = [
            ("memory", &self.memory_mib),
            ("gpu-memory-total", &self.gpu_memory_total_mib),
            ("instance-storage", &self.instance_storage_mib),
        ];
        for (flag, range) in size_ranges {
            if let Some(r) = range {
                r.validate_shown(flag, super::ranges::format_gib)?;
            }
        }
        if let Some(r) = &self.vcpus_to_memory_ratio {
            r.validate_shown("vcpus-to-memory-ratio", super::ranges::format_ratio)?;
        }
        let f64_ranges = [
            ("network-performance", &self.network_performance_gbps),
            ("price-per-hour", &self.price_per_hour),
        ];
        for (flag, range) in f64_ranges {
            if let Some(r) = range {
                r.validate(flag)?;
            }
        }
        Ok(())
    }
}

/// A type under consideration: the type, its prices and the zones that count.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Candidate<'a> {
    pub(crate) instance_type: &'a InstanceType,
    pub(crate) on_demand_price: Option<f64>,
    pub(crate) spot_price: Option<f64>,
    /// Zones of the region where the type is offered.
    pub(crate) zones: &'a [String],
}

/// One active filter: the flag it comes from and its predicate.
pub(crate) type Check<'c> = (&'static str, Box<dyn Fn(&Candidate<'_>) -> bool + 'c>);

fn eq_ignore_case(wanted: &str, actual: &str) -> bool {
    !actual.is_empty() && wanted.eq_ignore_ascii_case(actual)
}

/// The filters `criteria` sets, in flag order.
pub(crate) fn checks(criteria: &Criteria) -> Vec<Check<'_>> {
    let mut out: Vec<Check<'_>> = Vec::new();
    let c = criteria;
    if let Some(r) = c.vcpus {
        out.push(("vcpus", Box::new(move |x| r.contains(x.instance_type.vcpus))));
    }
    if let Some(r) = c.memory_mib {
        out.push((
            "memory",
            Box::new(move |x| r.contains(x.instance_type.memory_mib as f64)),
        ));
    }
    if let Some(r) = c.vcpus_to_memory_ratio {
        out.push((
            "vcpus-to-memory-ratio",
            Box::new(move |x| {
                let t = x.instance_type;
                if t.vcpus == 0 {
                    return false;
                }
                let ratio = t.memory_gib() / f64::from(t.vcpus);
                r.min.is_none_or(|min| ratio >= min * 0.99) && r.max.is_none_or(|max| ratio <= max * 1.01)
            }),
        ));
    }
    if let Some(r) = c.gpus {
        out.push(("gpus", Box::new(move |x| r.contains(x.instance_type.gpus))));
    }
    if let Some(r) = c.gpu_memory_total_mib {
        out.push((
            "gpu-memory-total",
            Box::new(move |x| r.contains(x.instance_type.gpu_memory_mib as f64)),
        ));
    }
    if let Some(m) = &c.gpu_manufacturer {
        out.push((
            "gpu-manufacturer",
            Box::new(move |x| eq_ignore_case(m, &x.instance_type.gpu_manufacturer)),
        ));
    }
    if let Some(m) = &c.gpu_model {
        out.push((
            "gpu-model",
            Box::new(move |x| eq_ignore_case(m, &x.instance_type.gpu_model)),
        ));
    }
    if let Some(a) = c.cpu_architecture {
        out.push(("cpu-architecture", Box::new(move |x| x.instance_type.supports(a))));
    }
    if let Some(m) = &c.cpu_manufacturer {
        out.push((
            "cpu-manufacturer",
            Box::new(move |x| eq_ignore_case(m, &x.instance_type.cpu_manufacturer)),
        ));
    }
    if let Some(u) = c.usage_class {
        out.push(("usage-class", Box::new(move |x| x.instance_type.sold_as(u))));
    }
    if let Some(b) = c.burst_support {
        out.push(("burst-support", Box::new(move |x| x.instance_type.burstable == b)));
    }
    if let Some(h) = &c.hypervisor {
        out.push((
            "hypervisor",
            Box::new(move |x| eq_ignore_case(h, &x.instance_type.hypervisor)),
        ));
    }
    if let Some(b) = c.bare_metal {
        out.push(("bare-metal", Box::new(move |x| x.instance_type.bare_metal == b)));
    }
    if let Some(b) = c.current_generation {
        out.push((
            "current-generation",
            Box::new(move |x| x.instance_type.current_generation == b),
        ));
    }
    if let Some(r) = c.network_performance_gbps {
        out.push((
            "network-performance",
            Box::new(move |x| r.contains(x.instance_type.network_gbps)),
        ));
    }
    if let Some(r) = c.network_interfaces {
        out.push((
            "network-interfaces",
            Box::new(move |x| r.contains(x.instance_type.max_enis)),
        ));
    }
    if let Some(r) = c.instance_storage_mib {
        out.push((
            "instance-storage",
            Box::new(move |x| r.contains(x.instance_type.instance_storage_gb as f64 * 1024.0)),
        ));
    }
    if let Some(r) = c.price_per_hour {
        let spot = c.usage_class == Some(CapacityType::Spot);
        out.push((
            "price-per-hour",
            Box::new(move |x| {
                let price = if spot { x.spot_price } else { x.on_demand_price };
                price.is_some_and(|p| r.contains(p))
            }),
        ));
    }
    if let Some(re) = &c.allow_list {
        out.push((
            "allow-list",
            Box::new(move |x| re.is_match(&x.instance_type.name)),
        ));
    }
    if let Some(re) = &c.deny_list {
        out.push((
            "deny-list",
            Box::new(move |x| !re.is_match(&x.instance_type.name)),
        ));
    }
    if !c.instance_types.is_empty() {
        out.push((
            "instance-types",
            Box::new(|x| c.instance_types.contains(&x.instance_type.name)),
        ));
    }
    if !c.instance_families.is_empty() {
        out.push((
            "instance-family",
            Box::new(|x| c.instance_families.contains(&x.instance_type.family)),
        ));
    }
    if !c.instance_categories.is_empty() {
        out.push((
            "instance-category",
            Box::new(|x| c.instance_categories.contains(&x.instance_type.category)),
        ));
    }
    if let Some(r) = c.instance_generation {
        out.push((
            "instance-generation",
            Box::new(move |x| r.contains(x.instance_type.generation)),
        ));
    }
    if !c.availability_zones.is_empty() {
        out.push((
            "availability-zones",
            Box::new(|x| c.availability_zones.iter().all(|z| x.zones.contains(z))),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_regex_is_anchored() {
        let re = NameRegex::new("m5.*").unwrap();
        assert!(re.is_match("m5.large") && re.is_match("m5d.large"));
        assert!(!re.is_match("xm5.large"));
        let re = NameRegex::new("large").unwrap();
        assert!(!re.is_match("m5.large"));
        let re = NameRegex::new("c5|m5").unwrap();
        assert!(!re.is_match("c5.large"), "alternation stays inside the anchors");
        assert!(NameRegex::new("c5|m5\\..*").unwrap().is_match("m5.large"));
        let err = NameRegex::new("m5(").unwrap_err();
        assert!(err.to_string().contains("\"m5(\""), "{err}");
    }

    #[test]
    fn validate_names_the_flag() {
        let c = Criteria {
            price_per_hour: Some(Range::between(1.0, 0.5)),
            ..Criteria::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("--price-per-hour-min")
        );
        let c = Criteria {
            instance_generation: Some(Range::between(7, 5)),
            ..Criteria::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("--instance-generation-min 7")
        );
        let c = Criteria {
            memory_mib: Some(Range::between(2048.0, 1024.0)),
            ..Criteria::default()
        };
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "--memory-min 2GiB is greater than --memory-max 1GiB"
        );
        assert!(Criteria::default().validate().is_ok());
    }
}
