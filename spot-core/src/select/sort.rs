//! Ordering of the selected instance types.
//!
//! Results are first ordered by name, then (stably) by the sort key, so ties stay in name
//! order. Types without a value for the key (no known price) sort last in both directions.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use super::Selected;

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// An unknown sort field.
    #[error(
        "invalid sort field {0:?}: expected one of name, vcpus, memory, gpus, gpu-memory-total, network, \
         network-interfaces, instance-storage, generation, price (on-demand-price), spot-price"
    )]
    Key(String),
    /// An unknown sort direction.
    #[error("invalid sort direction {0:?}: expected ascending (asc) or descending (desc)")]
    Direction(String),
}

/// The field results are sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortKey {
    /// The instance type name (`name`, `instance-type`).
    #[default]
    Name,
    /// Default vCPUs (`vcpus`).
    Vcpus,
    /// Memory (`memory`).
    Memory,
    /// GPU count (`gpus`).
    Gpus,
    /// Total GPU memory (`gpu-memory-total`, `gpu-memory`).
    GpuMemoryTotal,
    /// Baseline network bandwidth (`network`, `network-performance`).
    Network,
    /// Maximum network interfaces (`network-interfaces`, `enis`).
    NetworkInterfaces,
    /// Local instance storage (`instance-storage`).
    InstanceStorage,
    /// Generation number in the name (`generation`).
    Generation,
    /// On-demand price (`price`, `on-demand-price`, `ondemand-price`).
    OnDemandPrice,
    /// Spot price (`spot-price`).
    SpotPrice,
}

impl SortKey {
    /// The canonical flag value.
    pub fn as_str(self) -> &'static str {
        match self {
            SortKey::Name => "name",
            SortKey::Vcpus => "vcpus",
            SortKey::Memory => "memory",
            SortKey::Gpus => "gpus",
            SortKey::GpuMemoryTotal => "gpu-memory-total",
            SortKey::Network => "network",
            SortKey::NetworkInterfaces => "network-interfaces",
            SortKey::InstanceStorage => "instance-storage",
            SortKey::Generation => "generation",
            SortKey::OnDemandPrice => "on-demand-price",
            SortKey::SpotPrice => "spot-price",
        }
    }

    /// The value compared for `selected`; `None` sorts last. Not used for [`SortKey::Name`].
    fn value(self, selected: &Selected) -> Option<f64> {
        let t = &selected.instance_type;
        match self {
            SortKey::Name => None,
            SortKey::Vcpus => Some(f64::from(t.vcpus)),
            SortKey::Memory => Some(t.memory_mib as f64),
            SortKey::Gpus => Some(f64::from(t.gpus)),
            SortKey::GpuMemoryTotal => Some(t.gpu_memory_mib as f64),
            SortKey::Network => Some(t.network_gbps),
            SortKey::NetworkInterfaces => Some(f64::from(t.max_enis)),
            SortKey::InstanceStorage => Some(t.instance_storage_gb as f64),
            SortKey::Generation => Some(f64::from(t.generation)),
            SortKey::OnDemandPrice => selected.on_demand_price,
            SortKey::SpotPrice => selected.spot_price,
        }
    }
}

impl fmt::Display for SortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SortKey {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "name" | "instance-type" => SortKey::Name,
            "vcpus" => SortKey::Vcpus,
            "memory" => SortKey::Memory,
            "gpus" => SortKey::Gpus,
            "gpu-memory-total" | "gpu-memory" => SortKey::GpuMemoryTotal,
            "network" | "network-performance" => SortKey::Network,
            "network-interfaces" | "enis" => SortKey::NetworkInterfaces,
            "instance-storage" => SortKey::InstanceStorage,
            "generation" => SortKey::Generation,
            "price" | "on-demand-price" | "ondemand-price" => SortKey::OnDemandPrice,
            "spot-price" => SortKey::SpotPrice,
            _ => return Err(Error::Key(s.to_owned())),
        })
    }
}

/// Sort direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortDirection {
    /// Smallest first (`ascending`, `asc`).
    #[default]
    Ascending,
    /// Largest first (`descending`, `desc`).
    Descending,
}

impl FromStr for SortDirection {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "ascending" | "asc" => Ok(SortDirection::Ascending),
            "descending" | "desc" => Ok(SortDirection::Descending),
            _ => Err(Error::Direction(s.to_owned())),
        }
    }
}

/// Sorts `items` by `key` in `direction`, ties and the name key itself by name; missing
/// values last.
pub fn sort(items: &mut [Selected], key: SortKey, direction: SortDirection) {
    items.sort_by(|a, b| a.instance_type.name.cmp(&b.instance_type.name));
    if direction == SortDirection::Descending && key == SortKey::Name {
        items.reverse();
        return;
    }
    if key == SortKey::Name {
        return;
    }
    items.sort_by(|a, b| match (key.value(a), key.value(b)) {
        (Some(x), Some(y)) => {
            let ord = x.partial_cmp(&y).unwrap_or(Ordering::Equal);
            if direction == SortDirection::Descending {
                ord.reverse()
            } else {
                ord
            }
        }
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::select::tests::{selected, ty};

    fn names(items: &[Selected]) -> Vec<&str> {
        items.iter().map(|s| s.instance_type.name.as_str()).collect()
    }

    #[test]
    fn parses_aliases() {
        assert_eq!("price".parse::<SortKey>().unwrap(), SortKey::OnDemandPrice);
        assert_eq!("Spot-Price".parse::<SortKey>().unwrap(), SortKey::SpotPrice);
        assert_eq!(
            "network-performance".parse::<SortKey>().unwrap(),
            SortKey::Network
        );
        assert!(
            "colour"
                .parse::<SortKey>()
                .unwrap_err()
                .to_string()
                .contains("\"colour\"")
        );
        assert_eq!(
            "desc".parse::<SortDirection>().unwrap(),
            SortDirection::Descending
        );
        assert!("up".parse::<SortDirection>().is_err());
        for key in [
            SortKey::Name,
            SortKey::GpuMemoryTotal,
            SortKey::OnDemandPrice,
            SortKey::NetworkInterfaces,
        ] {
            assert_eq!(key.as_str().parse::<SortKey>().unwrap(), key);
        }
    }

    #[test]
    fn sorts_by_key_with_name_ties_and_missing_last() {
        let mut items = vec![
            selected(ty("m5.xlarge", 4, 16), Some(0.192), None),
            selected(ty("c5.large", 2, 4), Some(0.085), Some(0.03)),
            selected(ty("a1.large", 2, 4), None, Some(0.02)),
            selected(ty("m5.large", 2, 8), Some(0.096), Some(0.04)),
        ];
        sort(&mut items, SortKey::Vcpus, SortDirection::Ascending);
        assert_eq!(names(&items), ["a1.large", "c5.large", "m5.large", "m5.xlarge"]);
        sort(&mut items, SortKey::Vcpus, SortDirection::Descending);
        assert_eq!(names(&items), ["m5.xlarge", "a1.large", "c5.large", "m5.large"]);
        sort(&mut items, SortKey::OnDemandPrice, SortDirection::Descending);
        assert_eq!(names(&items), ["m5.xlarge", "m5.large", "c5.large", "a1.large"]);
        sort(&mut items, SortKey::SpotPrice, SortDirection::Ascending);
        assert_eq!(names(&items), ["a1.large", "c5.large", "m5.large", "m5.xlarge"]);
        sort(&mut items, SortKey::Name, SortDirection::Descending);
        assert_eq!(names(&items), ["m5.xlarge", "m5.large", "c5.large", "a1.large"]);
        sort(&mut items, SortKey::Memory, SortDirection::Ascending);
        assert_eq!(names(&items), ["a1.large", "c5.large", "m5.large", "m5.xlarge"]);
    }
}
