//! Well-known node labels, their legacy aliases, and the labels a node of a given instance
//! type gets (following Karpenter's AWS provider).

use std::collections::BTreeMap;

use crate::instance_type::{Architecture, CapacityType, InstanceType};

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// None of the instance type's architectures can run Kubernetes nodes.
    #[error(
        "instance type {instance_type:?} has no architecture Kubernetes nodes run on \
         (it supports {architectures:?}, expected x86_64 or arm64)"
    )]
    Architecture {
        /// The instance type.
        instance_type: String,
        /// Its architectures, in EC2 spelling.
        architectures: Vec<String>,
    },
    /// A zone name from which no region can be derived.
    #[error("invalid availability zone {0:?}: expected a name such as us-east-1a")]
    Zone(String),
}

/// Whether the node is spot or on-demand (`spot`, `on-demand`).
pub const CAPACITY_TYPE: &str = "karpenter.sh/capacity-type";
/// The node pool that launched the node.
pub const NODE_POOL: &str = "karpenter.sh/nodepool";
/// The EC2 instance type (`m5.large`).
pub const INSTANCE_TYPE: &str = "node.kubernetes.io/instance-type";
/// The availability zone (`us-east-1a`).
pub const ZONE: &str = "topology.kubernetes.io/zone";
/// The region (`us-east-1`).
pub const REGION: &str = "topology.kubernetes.io/region";
/// The CPU architecture in Kubernetes spelling (`amd64`, `arm64`).
pub const ARCH: &str = "kubernetes.io/arch";
/// The operating system (`linux`).
pub const OS: &str = "kubernetes.io/os";
/// The node's host name.
pub const HOSTNAME: &str = "kubernetes.io/hostname";

/// The instance family (`m5`).
pub const INSTANCE_FAMILY: &str = "karpenter.k8s.aws/instance-family";
/// The instance category (`m`).
pub const INSTANCE_CATEGORY: &str = "karpenter.k8s.aws/instance-category";
/// The instance generation (`5`).
pub const INSTANCE_GENERATION: &str = "karpenter.k8s.aws/instance-generation";
/// The instance size (`large`).
pub const INSTANCE_SIZE: &str = "karpenter.k8s.aws/instance-size";
/// The number of vCPUs.
pub const INSTANCE_CPU: &str = "karpenter.k8s.aws/instance-cpu";
/// The CPU manufacturer, lower case (`intel`, `amd`, `aws`).
pub const INSTANCE_CPU_MANUFACTURER: &str = "karpenter.k8s.aws/instance-cpu-manufacturer";
/// The memory in MiB.
pub const INSTANCE_MEMORY: &str = "karpenter.k8s.aws/instance-memory";
/// The number of GPUs.
pub const INSTANCE_GPU_COUNT: &str = "karpenter.k8s.aws/instance-gpu-count";
/// The GPU model, lower kebab case (`t4`, `a10g`).
pub const INSTANCE_GPU_NAME: &str = "karpenter.k8s.aws/instance-gpu-name";
/// The GPU manufacturer, lower kebab case (`nvidia`).
pub const INSTANCE_GPU_MANUFACTURER: &str = "karpenter.k8s.aws/instance-gpu-manufacturer";
/// The memory of one GPU in MiB.
pub const INSTANCE_GPU_MEMORY: &str = "karpenter.k8s.aws/instance-gpu-memory";
/// The hypervisor (`nitro`, `xen`, empty on bare metal).
pub const INSTANCE_HYPERVISOR: &str = "karpenter.k8s.aws/instance-hypervisor";
/// The baseline network bandwidth in Mbps.
pub const INSTANCE_NETWORK_BANDWIDTH: &str = "karpenter.k8s.aws/instance-network-bandwidth";
/// The local instance storage in GB.
pub const INSTANCE_LOCAL_NVME: &str = "karpenter.k8s.aws/instance-local-nvme";

/// Legacy alias of [`INSTANCE_TYPE`].
pub const BETA_INSTANCE_TYPE: &str = "beta.kubernetes.io/instance-type";
/// Legacy alias of [`ZONE`].
pub const FAILURE_DOMAIN_ZONE: &str = "failure-domain.beta.kubernetes.io/zone";
/// Legacy alias of [`REGION`].
pub const FAILURE_DOMAIN_REGION: &str = "failure-domain.beta.kubernetes.io/region";
/// Legacy alias of [`ARCH`].
pub const BETA_ARCH: &str = "beta.kubernetes.io/arch";
/// Legacy alias of [`OS`].
pub const BETA_OS: &str = "beta.kubernetes.io/os";
/// The EBS CSI driver's zone label, an alias of [`ZONE`] (Karpenter normalizes it too).
pub const EBS_CSI_ZONE: &str = "topology.ebs.csi.aws.com/zone";

/// The value of [`OS`] on the nodes this toolkit launches.
pub const OS_LINUX: &str = "linux";

/// Labels whose values the provisioner knows before launching a node: a pod may require them
/// even when a node pool does not constrain them (Karpenter's well-known labels).
pub const WELL_KNOWN: &[&str] = &[
    NODE_POOL,
    ZONE,
    REGION,
    INSTANCE_TYPE,
    ARCH,
    OS,
    CAPACITY_TYPE,
    INSTANCE_FAMILY,
    INSTANCE_CATEGORY,
    INSTANCE_GENERATION,
    INSTANCE_SIZE,
    INSTANCE_CPU,
    INSTANCE_CPU_MANUFACTURER,
    INSTANCE_MEMORY,
    INSTANCE_GPU_COUNT,
    INSTANCE_GPU_NAME,
    INSTANCE_GPU_MANUFACTURER,
    INSTANCE_GPU_MEMORY,
    INSTANCE_HYPERVISOR,
    INSTANCE_NETWORK_BANDWIDTH,
    INSTANCE_LOCAL_NVME,
];

/// Maps a legacy or alias label key to its stable key; other keys are returned unchanged.
pub fn normalize(key: &str) -> &str {
    match key {
        BETA_INSTANCE_TYPE => INSTANCE_TYPE,
        FAILURE_DOMAIN_ZONE | EBS_CSI_ZONE => ZONE,
        FAILURE_DOMAIN_REGION => REGION,
        BETA_ARCH => ARCH,
        BETA_OS => OS,
        other => other,
    }
}

/// Whether the (normalized) key is one of the [`WELL_KNOWN`] labels.
pub fn is_well_known(key: &str) -> bool {
    WELL_KNOWN.contains(&normalize(key))
}

/// The region of an availability zone: `us-east-1a` → `us-east-1`, `us-gov-west-1b` →
/// `us-gov-west-1`, `us-west-2-lax-1a` (a Local Zone) → `us-west-2`.
pub fn region_of_zone(zone: &str) -> Option<&str> {
    let mut offset = 0;
    for (index, part) in zone.split('-').enumerate() {
        let digits = part.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 {
            // A region has at least two letter parts before its number (`us-east-1`).
            return (index >= 2).then(|| &zone[..offset + digits]);
        }
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_lowercase()) {
            return None;
        }
        offset += part.len() + 1;
    }
    None
}

/// Lower kebab case, as Karpenter writes GPU names and manufacturers (`Radeon Pro V520` →
/// `radeon-pro-v520`).
fn lower_kebab(text: &str) -> String {
    text.split_whitespace()
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join("-")
}

/// The labels Karpenter's AWS provider puts on a node of this instance type launched in
/// `zone` with `capacity_type`: instance type, zone, region, capacity type, architecture
/// (Kubernetes spelling), OS (`linux`) and the `karpenter.k8s.aws/instance-*` attributes.
///
/// GPU labels appear only on GPU instances, `instance-local-nvme` only with instance storage,
/// `instance-network-bandwidth` only when the bandwidth is known; `instance-hypervisor` is
/// empty on bare metal, as in Karpenter. When the type supports several architectures, the
/// first one Kubernetes runs on is used.
pub fn instance_type_labels(
    instance_type: &InstanceType,
    zone: &str,
    capacity_type: CapacityType,
) -> Result<BTreeMap<String, String>, Error> {
    let arch = instance_type
        .architectures
        .iter()
        .find_map(|a| Architecture::as_kubernetes(*a))
        .ok_or_else(|| Error::Architecture {
            instance_type: instance_type.name.clone(),
            architectures: instance_type
                .architectures
                .iter()
                .map(|a| a.as_ec2().to_owned())
                .collect(),
        })?;
    let region = region_of_zone(zone).ok_or_else(|| Error::Zone(zone.to_owned()))?;
    let mut labels = BTreeMap::new();
    let mut set = |key: &str, value: String| {
        labels.insert(key.to_owned(), value);
    };
    set(INSTANCE_TYPE, instance_type.name.clone());
    set(ZONE, zone.to_owned());
    set(REGION, region.to_owned());
    set(CAPACITY_TYPE, capacity_type.as_str().to_owned());
    set(ARCH, arch.to_owned());
    set(OS, OS_LINUX.to_owned());
    set(INSTANCE_FAMILY, instance_type.family.clone());
    set(INSTANCE_CATEGORY, instance_type.category.clone());
    set(INSTANCE_GENERATION, instance_type.generation.to_string());
    set(INSTANCE_SIZE, instance_type.size.clone());
    set(INSTANCE_CPU, instance_type.vcpus.to_string());
    set(
        INSTANCE_CPU_MANUFACTURER,
        instance_type.cpu_manufacturer.to_lowercase(),
    );
    set(INSTANCE_MEMORY, instance_type.memory_mib.to_string());
    set(INSTANCE_HYPERVISOR, instance_type.hypervisor.clone());
    if instance_type.network_gbps.is_finite() && instance_type.network_gbps > 0.0 {
        // Karpenter's value is in Mbps; the catalog's in Gbps.
        set(
            INSTANCE_NETWORK_BANDWIDTH,
            format!("{:.0}", instance_type.network_gbps * 1000.0),
        );
    }
    if instance_type.instance_storage_gb > 0 {
        set(INSTANCE_LOCAL_NVME, instance_type.instance_storage_gb.to_string());
    }
    if instance_type.gpus > 0 {
        set(INSTANCE_GPU_COUNT, instance_type.gpus.to_string());
        set(INSTANCE_GPU_NAME, lower_kebab(&instance_type.gpu_model));
        set(
            INSTANCE_GPU_MANUFACTURER,
            lower_kebab(&instance_type.gpu_manufacturer),
        );
        // Karpenter labels the memory of one GPU; the catalog holds the total.
        set(
            INSTANCE_GPU_MEMORY,
            (instance_type.gpu_memory_mib / u64::from(instance_type.gpus)).to_string(),
        );
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance_type(name: &str) -> InstanceType {
        InstanceType {
            generation: 5,
            max_enis: 3,
            ipv4_per_eni: 10,
            network_performance: "Up to 10 Gigabit".into(),
            network_gbps: 0.75,
            ..crate::catalog::synthetic_type(name, 2, 8192).unwrap()
        }
    }

    #[test]
    fn normalize_maps_aliases_to_stable_keys() {
        assert_eq!(normalize(BETA_INSTANCE_TYPE), INSTANCE_TYPE);
        assert_eq!(normalize(FAILURE_DOMAIN_ZONE), ZONE);
        assert_eq!(normalize(EBS_CSI_ZONE), ZONE);
        assert_eq!(normalize(FAILURE_DOMAIN_REGION), REGION);
        assert_eq!(normalize(BETA_ARCH), ARCH);
        assert_eq!(normalize(BETA_OS), OS);
        for stable in [
            INSTANCE_TYPE,
            ZONE,
            REGION,
            ARCH,
            OS,
            HOSTNAME,
            "example.com/team",
        ] {
            assert_eq!(normalize(stable), stable);
        }
        assert!(is_well_known(FAILURE_DOMAIN_ZONE));
        assert!(is_well_known(INSTANCE_CPU));
        assert!(!is_well_known(HOSTNAME));
        assert!(!is_well_known("example.com/team"));
    }

    #[test]
    fn region_from_zone() {
        assert_eq!(region_of_zone("us-east-1a"), Some("us-east-1"));
        assert_eq!(region_of_zone("eu-central-1c"), Some("eu-central-1"));
        assert_eq!(region_of_zone("ap-southeast-2b"), Some("ap-southeast-2"));
        assert_eq!(region_of_zone("us-gov-west-1a"), Some("us-gov-west-1"));
        assert_eq!(region_of_zone("us-west-2-lax-1a"), Some("us-west-2"));
        assert_eq!(region_of_zone("us-east-1-wl1-bos-wlz-1"), Some("us-east-1"));
        for bad in ["", "us", "1a", "us-1a", "us-east", "US-EAST-1a", "us--east-1a"] {
            assert_eq!(region_of_zone(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn labels_of_a_general_purpose_type() {
        let labels =
            instance_type_labels(&instance_type("m5.large"), "us-east-1a", CapacityType::Spot).unwrap();
        let get = |key: &str| labels.get(key).map(String::as_str);
        assert_eq!(get(INSTANCE_TYPE), Some("m5.large"));
        assert_eq!(get(ZONE), Some("us-east-1a"));
        assert_eq!(get(REGION), Some("us-east-1"));
        assert_eq!(get(CAPACITY_TYPE), Some("spot"));
        assert_eq!(get(ARCH), Some("amd64"));
        assert_eq!(get(OS), Some("linux"));
        assert_eq!(get(INSTANCE_FAMILY), Some("m5"));
        assert_eq!(get(INSTANCE_CATEGORY), Some("m"));
        assert_eq!(get(INSTANCE_GENERATION), Some("5"));
        assert_eq!(get(INSTANCE_SIZE), Some("large"));
        assert_eq!(get(INSTANCE_CPU), Some("2"));
        assert_eq!(get(INSTANCE_CPU_MANUFACTURER), Some("intel"));
        assert_eq!(get(INSTANCE_MEMORY), Some("8192"));
        assert_eq!(get(INSTANCE_HYPERVISOR), Some("nitro"));
        assert_eq!(get(INSTANCE_NETWORK_BANDWIDTH), Some("750"));
        for absent in [
            INSTANCE_GPU_COUNT,
            INSTANCE_GPU_NAME,
            INSTANCE_LOCAL_NVME,
            NODE_POOL,
            HOSTNAME,
        ] {
            assert_eq!(get(absent), None, "{absent}");
        }
        assert!(labels.keys().all(|k| is_well_known(k)));
    }

    #[test]
    fn labels_of_gpu_arm_and_metal_types() {
        let mut gpu = instance_type("g5.12xlarge");
        gpu.architectures = vec![Architecture::X86_64];
        gpu.cpu_manufacturer = "AMD".into();
        gpu.gpus = 4;
        gpu.gpu_memory_mib = 4 * 24576;
        gpu.gpu_manufacturer = "NVIDIA".into();
        gpu.gpu_model = "A10G".into();
        gpu.instance_storage_gb = 3800;
        let labels = instance_type_labels(&gpu, "us-west-2b", CapacityType::OnDemand).unwrap();
        assert_eq!(labels[INSTANCE_GPU_COUNT], "4");
        assert_eq!(labels[INSTANCE_GPU_NAME], "a10g");
        assert_eq!(labels[INSTANCE_GPU_MANUFACTURER], "nvidia");
        assert_eq!(labels[INSTANCE_GPU_MEMORY], "24576");
        assert_eq!(labels[INSTANCE_LOCAL_NVME], "3800");
        assert_eq!(labels[INSTANCE_CPU_MANUFACTURER], "amd");
        assert_eq!(labels[CAPACITY_TYPE], "on-demand");

        let mut graviton = instance_type("m7g.metal");
        graviton.architectures = vec![Architecture::Arm64];
        graviton.cpu_manufacturer = "AWS".into();
        graviton.hypervisor = String::new();
        graviton.network_gbps = 0.0;
        let labels = instance_type_labels(&graviton, "eu-west-1c", CapacityType::Spot).unwrap();
        assert_eq!(labels[ARCH], "arm64");
        assert_eq!(labels[INSTANCE_HYPERVISOR], "");
        assert_eq!(labels[REGION], "eu-west-1");
        assert!(!labels.contains_key(INSTANCE_NETWORK_BANDWIDTH));

        let mut radeon = instance_type("g4ad.xlarge");
        radeon.gpus = 1;
        radeon.gpu_model = "Radeon Pro V520".into();
        radeon.gpu_manufacturer = "AMD".into();
        let labels = instance_type_labels(&radeon, "us-east-1a", CapacityType::Spot).unwrap();
        assert_eq!(labels[INSTANCE_GPU_NAME], "radeon-pro-v520");
        assert_eq!(labels[INSTANCE_GPU_MEMORY], "0");
    }

    #[test]
    fn labels_errors() {
        let mut mac = instance_type("mac1.metal");
        mac.architectures = vec![Architecture::X86_64Mac];
        let err = instance_type_labels(&mac, "us-east-1a", CapacityType::OnDemand).unwrap_err();
        assert_eq!(
            err.to_string(),
            "instance type \"mac1.metal\" has no architecture Kubernetes nodes run on (it supports \
             [\"x86_64_mac\"], expected x86_64 or arm64)"
        );
        let err =
            instance_type_labels(&instance_type("m5.large"), "nowhere", CapacityType::Spot).unwrap_err();
        assert_eq!(err, Error::Zone("nowhere".into()));
    }
}
