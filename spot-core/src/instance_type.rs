//! EC2 instance types and their offerings (zone × capacity type × price).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A capacity type other than `spot` or `on-demand`.
    #[error("invalid capacity type {0:?}: expected \"spot\" or \"on-demand\"")]
    CapacityType(String),
    /// An architecture other than the ones EC2 reports.
    #[error("invalid architecture {0:?}: expected one of x86_64 (amd64), arm64, i386, x86_64_mac, arm64_mac")]
    Architecture(String),
    /// An instance type name that does not have the `family.size` shape.
    #[error("invalid instance type name {0:?}: expected FAMILY.SIZE such as m5.large")]
    Name(String),
}

/// How an instance is bought.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CapacityType {
    /// Spare EC2 capacity, interruptible with a two-minute notice.
    Spot,
    /// Regular on-demand capacity.
    OnDemand,
}

impl CapacityType {
    /// The value of the `karpenter.sh/capacity-type` label.
    pub fn as_str(self) -> &'static str {
        match self {
            CapacityType::Spot => "spot",
            CapacityType::OnDemand => "on-demand",
        }
    }
}

impl fmt::Display for CapacityType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CapacityType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "spot" => Ok(CapacityType::Spot),
            "on-demand" | "ondemand" | "on_demand" => Ok(CapacityType::OnDemand),
            other => Err(Error::CapacityType(other.to_owned())),
        }
    }
}

/// A CPU architecture as EC2 reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    /// 64-bit x86 (`amd64` in Kubernetes).
    X86_64,
    /// 64-bit ARM (Graviton).
    Arm64,
    /// 32-bit x86.
    I386,
    /// x86_64 Mac hosts.
    X86_64Mac,
    /// ARM Mac hosts.
    Arm64Mac,
}

impl Architecture {
    /// The EC2 spelling (`x86_64`, `arm64`, ...).
    pub fn as_ec2(self) -> &'static str {
        match self {
            Architecture::X86_64 => "x86_64",
            Architecture::Arm64 => "arm64",
            Architecture::I386 => "i386",
            Architecture::X86_64Mac => "x86_64_mac",
            Architecture::Arm64Mac => "arm64_mac",
        }
    }

    /// The `kubernetes.io/arch` label value, when Kubernetes nodes can run on it.
    pub fn as_kubernetes(self) -> Option<&'static str> {
        match self {
            Architecture::X86_64 => Some("amd64"),
            Architecture::Arm64 => Some("arm64"),
            _ => None,
        }
    }
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_ec2())
    }
}

impl FromStr for Architecture {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "x86_64" | "amd64" | "x86-64" => Ok(Architecture::X86_64),
            "arm64" | "aarch64" => Ok(Architecture::Arm64),
            "i386" => Ok(Architecture::I386),
            "x86_64_mac" => Ok(Architecture::X86_64Mac),
            "arm64_mac" => Ok(Architecture::Arm64Mac),
            _ => Err(Error::Architecture(s.to_owned())),
        }
    }
}

/// The parts of an instance type name: `m5dn.2xlarge` is family `m5dn`, category `m`,
/// generation 5, size `2xlarge`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameParts {
    /// Everything before the dot (`m5dn`, `u-6tb1`).
    pub family: String,
    /// The leading letters of the family (`m`, `u`).
    pub category: String,
    /// The number after the category (5), 0 when the family has none.
    pub generation: u32,
    /// Everything after the dot (`2xlarge`, `metal-48xl`).
    pub size: String,
}

impl NameParts {
    /// Splits an instance type name into its parts.
    pub fn parse(name: &str) -> Result<Self, Error> {
        let (family, size) = name.split_once('.').ok_or_else(|| Error::Name(name.to_owned()))?;
        if family.is_empty() || size.is_empty() || !family.starts_with(|c: char| c.is_ascii_lowercase()) {
            return Err(Error::Name(name.to_owned()));
        }
        let category: String = family.chars().take_while(|c| c.is_ascii_lowercase()).collect();
        let digits: String = family[category.len()..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        Ok(NameParts {
            family: family.to_owned(),
            generation: digits.parse().unwrap_or(0),
            category,
            size: size.to_owned(),
        })
    }
}

/// Everything the scheduler, the selector and the allocatable model need to know about one
/// EC2 instance type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceType {
    /// The API name, such as `m5.large`.
    pub name: String,
    /// The family (`m5`).
    pub family: String,
    /// The category (`m`).
    pub category: String,
    /// The generation (5).
    pub generation: u32,
    /// The size (`large`).
    pub size: String,
    /// Supported CPU architectures.
    pub architectures: Vec<Architecture>,
    /// CPU manufacturer as EC2 reports it (`Intel`, `AMD`, `AWS`, `Apple`).
    pub cpu_manufacturer: String,
    /// Default vCPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Number of GPUs (0 when none).
    pub gpus: u32,
    /// Total GPU memory in MiB (0 when none).
    pub gpu_memory_mib: u64,
    /// GPU manufacturer (`NVIDIA`, `AMD`), empty when none.
    pub gpu_manufacturer: String,
    /// GPU model (`T4`, `A10G`), empty when none.
    pub gpu_model: String,
    /// Maximum number of network interfaces (ENIs).
    pub max_enis: u32,
    /// Private IPv4 addresses per ENI.
    pub ipv4_per_eni: u32,
    /// Hypervisor (`nitro`, `xen`), empty on bare metal.
    pub hypervisor: String,
    /// Burstable performance (T family).
    pub burstable: bool,
    /// Bare metal.
    pub bare_metal: bool,
    /// EC2's current-generation flag, as generated in the data set.
    pub current_generation: bool,
    /// EC2's network performance text, such as `Up to 12.5 Gigabit`.
    pub network_performance: String,
    /// Baseline network bandwidth in Gbps (peak when EC2 reports no baseline).
    pub network_gbps: f64,
    /// Local instance storage in GB (0 when EBS only).
    pub instance_storage_gb: u64,
    /// Whether EC2 sells it as spot.
    pub spot_supported: bool,
    /// Whether EC2 sells it on demand.
    pub on_demand_supported: bool,
}

impl InstanceType {
    /// Memory in GiB, as the selector and the tables show it.
    pub fn memory_gib(&self) -> f64 {
        self.memory_mib as f64 / 1024.0
    }

    /// GPU memory in GiB.
    pub fn gpu_memory_gib(&self) -> f64 {
        self.gpu_memory_mib as f64 / 1024.0
    }

    /// Whether the type can run the given architecture.
    pub fn supports(&self, arch: Architecture) -> bool {
        self.architectures.contains(&arch)
    }

    /// Whether EC2 sells this type with that capacity type.
    pub fn sold_as(&self, capacity_type: CapacityType) -> bool {
        match capacity_type {
            CapacityType::Spot => self.spot_supported,
            CapacityType::OnDemand => self.on_demand_supported,
        }
    }
}

/// One way to buy an instance type: a zone, a capacity type and a price.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Offering {
    /// Availability zone, such as `us-east-1a`.
    pub zone: String,
    /// Spot or on-demand.
    pub capacity_type: CapacityType,
    /// Price in USD per hour.
    pub price: f64,
    /// False while the offering is marked unavailable (for example after an
    /// insufficient-capacity error).
    pub available: bool,
}

/// Bandwidth from EC2's network performance text, used when no network card reports a
/// baseline: `Up to 12.5 Gigabit` → 12.5, `4x 100 Gigabit` → 400, `25 Gigabit` → 25. The
/// qualitative levels of old generations map to small figures: `Very Low` 0.05,
/// `Low` 0.1, `Low to Moderate` 0.3, `Moderate` 0.5, `High` 1; anything else 0.
pub fn network_gbps_from_text(text: &str) -> f64 {
    match text.trim() {
        "Very Low" => return 0.05,
        "Low" => return 0.1,
        "Low to Moderate" => return 0.3,
        "Moderate" => return 0.5,
        "High" => return 1.0,
        _ => {}
    }
    let Some(rest) = text.trim().strip_suffix("Gigabit") else {
        return 0.0;
    };
    let rest = rest.trim().trim_start_matches("Up to").trim();
    let (count, each) = match rest.split_once("x ") {
        Some((n, v)) => (n.trim().parse::<f64>().ok(), v.trim()),
        None => (Some(1.0), rest),
    };
    match (count, each.parse::<f64>()) {
        (Some(n), Ok(v)) => n * v,
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_text() {
        assert_eq!(network_gbps_from_text("Up to 12.5 Gigabit"), 12.5);
        assert_eq!(network_gbps_from_text("4x 100 Gigabit"), 400.0);
        assert_eq!(network_gbps_from_text("25 Gigabit"), 25.0);
        assert_eq!(network_gbps_from_text("Low to Moderate"), 0.3);
        assert_eq!(network_gbps_from_text("Ludicrous"), 0.0);
    }

    #[test]
    fn name_parts() {
        let p = NameParts::parse("m5dn.2xlarge").unwrap();
        assert_eq!(
            (
                p.family.as_str(),
                p.category.as_str(),
                p.generation,
                p.size.as_str()
            ),
            ("m5dn", "m", 5, "2xlarge")
        );
        let p = NameParts::parse("u-6tb1.metal").unwrap();
        assert_eq!((p.category.as_str(), p.generation), ("u", 0));
        let p = NameParts::parse("mac2-m2pro.metal").unwrap();
        assert_eq!((p.category.as_str(), p.generation), ("mac", 2));
        assert_eq!(NameParts::parse("large"), Err(Error::Name("large".into())));
        assert!(NameParts::parse(".large").is_err());
    }

    #[test]
    fn capacity_type_round_trip() {
        for ct in [CapacityType::Spot, CapacityType::OnDemand] {
            assert_eq!(ct.as_str().parse::<CapacityType>().unwrap(), ct);
        }
        let err = "reserved".parse::<CapacityType>().unwrap_err();
        assert!(err.to_string().contains("\"reserved\""));
    }

    #[test]
    fn architecture_aliases() {
        assert_eq!("amd64".parse::<Architecture>().unwrap(), Architecture::X86_64);
        assert_eq!(Architecture::Arm64.as_kubernetes(), Some("arm64"));
        assert!("sparc".parse::<Architecture>().is_err());
    }
}
