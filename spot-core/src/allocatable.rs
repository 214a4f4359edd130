//! What a node of a given instance type offers to pods, computed the way Karpenter's AWS
//! provider does before a real node has registered (`pkg/providers/instancetype/types.go`):
//!
//! `allocatable = capacity − (kube-reserved + system-reserved + eviction threshold)`
//!
//! - **Capacity.** CPU = vCPUs × 1000 m. Memory = `SizeInMiB`, minus 64 MiB of CMA on
//!   Graviton (first architecture `arm64`), minus the VM overhead `ceil(MiB × 0.075)` MiB.
//!   Pods = [`AllocatableModel::max_pods`]. Ephemeral storage = the root volume (20 GiB).
//! - **kube-reserved.** Memory `11 MiB × maxPods + 255 MiB`; CPU 6 % of the first core, 1 %
//!   of the second, 0.5 % of the third and fourth, 0.25 % of every further core (each slice
//!   truncated to whole millicores); ephemeral storage 1 GiB.
//! - **system-reserved.** Empty unless configured.
//! - **Eviction threshold.** Memory 100 MiB; ephemeral storage 10 % of the root volume.
//!
//! Every figure is configurable through the public fields of [`AllocatableModel`], whose
//! [`Default`] is the Karpenter default, except that ENI-limited pod density is capped at 110
//! ([`AllocatableModel::max_pods_cap`]; set it to `None` for Karpenter's uncapped density).

use crate::instance_type::{Architecture, InstanceType};
use crate::resources::{self, Resources};

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// A fraction option outside `[0, 1)`.
    #[error("{option} must be in [0, 1), found {value}")]
    Fraction {
        /// The option's field name.
        option: &'static str,
        /// The value given.
        value: f64,
    },
    /// A percentage option outside `[0, 100]`.
    #[error("{option} must be a percentage in [0, 100], found {value}")]
    Percentage {
        /// The option's field name.
        option: &'static str,
        /// The value given.
        value: f64,
    },
    /// An explicit maximum pod count of zero.
    #[error("max_pods must be at least 1")]
    ZeroMaxPods,
}

/// A node's resources as plain numbers: capacity, reservations or allocatable.
///
/// Base units throughout: millicores, bytes, counts. This is a self-contained vector so the
/// model does not depend on the shape of [`Resources`]; convert with
/// [`Allocatable::to_resources`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Allocatable {
    /// CPU in millicores.
    pub cpu_millis: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Pods.
    pub pods: u64,
    /// Ephemeral storage in bytes.
    pub ephemeral_bytes: u64,
    /// GPUs (NVIDIA or AMD, per the instance type's manufacturer).
    pub gpus: u64,
}

impl Allocatable {
    /// Memory in MiB (rounded down).
    pub fn memory_mib(&self) -> u64 {
        self.memory_bytes / MIB
    }

    /// `self − other`, each amount floored at zero.
    #[must_use]
    pub fn saturating_sub(&self, other: &Allocatable) -> Allocatable {
        Allocatable {
            cpu_millis: self.cpu_millis.saturating_sub(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_sub(other.memory_bytes),
            pods: self.pods.saturating_sub(other.pods),
            ephemeral_bytes: self.ephemeral_bytes.saturating_sub(other.ephemeral_bytes),
            gpus: self.gpus.saturating_sub(other.gpus),
        }
    }

    /// `self + other`, each amount saturating.
    #[must_use]
    pub fn saturating_add(&self, other: &Allocatable) -> Allocatable {
        Allocatable {
            cpu_millis: self.cpu_millis.saturating_add(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_add(other.memory_bytes),
            pods: self.pods.saturating_add(other.pods),
            ephemeral_bytes: self.ephemeral_bytes.saturating_add(other.ephemeral_bytes),
            gpus: self.gpus.saturating_add(other.gpus),
        }
    }

    /// The same amounts as a [`Resources`], the GPUs under the extended resource
    /// `gpu_resource` (`nvidia.com/gpu`, `amd.com/gpu`). Amounts above `i64::MAX` saturate.
    pub fn to_resources(&self, gpu_resource: &str) -> Resources {
        let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        Resources::new(i(self.cpu_millis), i(self.memory_bytes))
            .with_pods(i(self.pods))
            .with_ephemeral_storage(i(self.ephemeral_bytes))
            .with_extended(gpu_resource, i(self.gpus))
    }
}

/// A fixed reservation (system-reserved, or kube-reserved overrides).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reservation {
    /// CPU in millicores.
    pub cpu_millis: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Ephemeral storage in bytes.
    pub ephemeral_bytes: u64,
}

/// Per-resource overrides of the computed kube-reserved amounts (`spec.kubelet.kubeReserved`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KubeReservedOverride {
    /// CPU in millicores, replacing the per-core formula.
    pub cpu_millis: Option<u64>,
    /// Memory in bytes, replacing `11 MiB × maxPods + 255 MiB`.
    pub memory_bytes: Option<u64>,
    /// Ephemeral storage in bytes, replacing 1 GiB.
    pub ephemeral_bytes: Option<u64>,
}

/// The allocatable model and its options; [`Default`] is Karpenter's AWS default (plus the
/// 110-pod cap). See the [module documentation](self).
#[derive(Debug, Clone, PartialEq)]
pub struct AllocatableModel {
    /// Explicit `maxPods` (kubelet `--max-pods`), replacing the ENI formula and the cap.
    pub max_pods: Option<u32>,
    /// `podsPerCore`: when set and non-zero, pods are capped at `pods_per_core × vCPUs`.
    pub pods_per_core: Option<u32>,
    /// ENIs kept off the pod network (Karpenter `--reserved-enis`), default 0.
    pub reserved_enis: u32,
    /// Whether the AMI family limits pods by ENIs (AL2, AL2023, Bottlerocket: true; custom
    /// AMIs: false, giving 110).
    pub eni_limited_pods: bool,
    /// Cap on the computed pod count when [`AllocatableModel::max_pods`] is unset; default
    /// `Some(110)`, the Kubernetes per-node scalability target. `None` keeps Karpenter's
    /// uncapped ENI-limited density (737 on `m5.24xlarge`).
    pub max_pods_cap: Option<u32>,
    /// Share of memory the hypervisor keeps (Karpenter `VM_MEMORY_OVERHEAD_PERCENT`), default
    /// 0.075.
    pub vm_memory_overhead: f64,
    /// MiB of contiguous memory (CMA) Graviton reserves, default 64.
    pub arm64_cma_mib: u64,
    /// Overrides of the computed kube-reserved amounts.
    pub kube_reserved: KubeReservedOverride,
    /// system-reserved, empty by default.
    pub system_reserved: Reservation,
    /// Hard eviction threshold `memory.available`, default 100 MiB.
    pub eviction_memory_bytes: u64,
    /// Hard eviction threshold `nodefs.available` in percent of the root volume, default 10.
    pub eviction_ephemeral_percent: f64,
    /// Root volume size, the node's ephemeral-storage capacity, default 20 GiB.
    pub root_volume_bytes: u64,
}

impl Default for AllocatableModel {
    fn default() -> Self {
        AllocatableModel {
            max_pods: None,
            pods_per_core: None,
            reserved_enis: 0,
            eni_limited_pods: true,
            max_pods_cap: Some(110),
            vm_memory_overhead: 0.075,
            arm64_cma_mib: 64,
            kube_reserved: KubeReservedOverride::default(),
            system_reserved: Reservation::default(),
            eviction_memory_bytes: 100 * MIB,
            eviction_ephemeral_percent: 10.0,
            root_volume_bytes: 20 * GIB,
        }
    }
}

/// Karpenter's kube-reserved CPU slices: `(start, end, share)` in millicores.
const CPU_SLICES: [(u64, u64, f64); 4] = [
    (0, 1000, 0.06),
    (1000, 2000, 0.01),
    (2000, 4000, 0.005),
    (4000, 1 << 31, 0.0025),
];

impl AllocatableModel {
    /// Checks the options. The computations clamp invalid values instead of failing (a
    /// fraction outside `[0, 1)` counts as 0, a percentage is clamped to `[0, 100]`).
    pub fn validate(&self) -> Result<(), Error> {
        if !(0.0..1.0).contains(&self.vm_memory_overhead) {
            return Err(Error::Fraction {
                option: "vm_memory_overhead",
                value: self.vm_memory_overhead,
            });
        }
        if !(0.0..=100.0).contains(&self.eviction_ephemeral_percent) {
            return Err(Error::Percentage {
                option: "eviction_ephemeral_percent",
                value: self.eviction_ephemeral_percent,
            });
        }
        if self.max_pods == Some(0) {
            return Err(Error::ZeroMaxPods);
        }
        Ok(())
    }

    /// Pods per node with the VPC CNI: `max_pods` if set; else
    /// `(ENIs − reserved ENIs) × (IPv4 per ENI − 1) + 2` for ENI-limited AMIs (0 when no ENI
    /// is left), else 110; then the cap, then `pods_per_core × vCPUs`.
    pub fn max_pods(&self, t: &InstanceType) -> u64 {
        let mut count = match self.max_pods {
            Some(n) => u64::from(n),
            None => {
                let computed = if self.eni_limited_pods {
                    eni_limited_pods(t, self.reserved_enis)
                } else {
                    110
                };
                match self.max_pods_cap {
                    Some(cap) => computed.min(u64::from(cap)),
                    None => computed,
                }
            }
        };
        if let Some(per_core) = self.pods_per_core.filter(|&p| p > 0) {
            count = count.min(u64::from(per_core) * u64::from(t.vcpus));
        }
        count
    }

    /// What the instance type has before any reservation.
    pub fn capacity(&self, t: &InstanceType) -> Allocatable {
        let mut mib = t.memory_mib;
        if t.architectures.first() == Some(&Architecture::Arm64) {
            mib = mib.saturating_sub(self.arm64_cma_mib);
        }
        let overhead = if (0.0..1.0).contains(&self.vm_memory_overhead) {
            self.vm_memory_overhead
        } else {
            0.0
        };
        // As Karpenter: ceil(bytes × overhead / 1024 / 1024) MiB.
        let overhead_mib = ((mib.saturating_mul(MIB)) as f64 * overhead / 1024.0 / 1024.0).ceil() as u64;
        Allocatable {
            cpu_millis: u64::from(t.vcpus) * 1000,
            memory_bytes: mib.saturating_sub(overhead_mib).saturating_mul(MIB),
            pods: self.max_pods(t),
            ephemeral_bytes: self.root_volume_bytes,
            gpus: u64::from(t.gpus),
        }
    }

    /// kube-reserved for the instance type (overrides applied).
    pub fn kube_reserved(&self, t: &InstanceType) -> Allocatable {
        let cpu = u64::from(t.vcpus) * 1000;
        let computed_cpu: u64 = CPU_SLICES
            .iter()
            .filter(|(start, _, _)| cpu >= *start)
            .map(|&(start, end, share)| ((cpu.min(end) - start) as f64 * share) as u64)
            .sum();
        let pods = self.max_pods(t);
        Allocatable {
            cpu_millis: self.kube_reserved.cpu_millis.unwrap_or(computed_cpu),
            memory_bytes: self
                .kube_reserved
                .memory_bytes
                .unwrap_or(pods.saturating_mul(11).saturating_add(255).saturating_mul(MIB)),
            pods: 0,
            ephemeral_bytes: self.kube_reserved.ephemeral_bytes.unwrap_or(GIB),
            gpus: 0,
        }
    }

    /// system-reserved.
    pub fn system_reserved(&self) -> Allocatable {
        Allocatable {
            cpu_millis: self.system_reserved.cpu_millis,
            memory_bytes: self.system_reserved.memory_bytes,
            pods: 0,
            ephemeral_bytes: self.system_reserved.ephemeral_bytes,
            gpus: 0,
        }
    }

    /// The hard eviction thresholds: memory, and `ceil(root volume / 100 × percent)` of
    /// ephemeral storage.
    pub fn eviction_threshold(&self) -> Allocatable {
        let percent = self.eviction_ephemeral_percent.clamp(0.0, 100.0);
        Allocatable {
            memory_bytes: self.eviction_memory_bytes,
            ephemeral_bytes: (self.root_volume_bytes as f64 / 100.0 * percent).ceil() as u64,
            ..Allocatable::default()
        }
    }

    /// Everything held back: kube-reserved + system-reserved + eviction threshold.
    pub fn overhead(&self, t: &InstanceType) -> Allocatable {
        self.kube_reserved(t)
            .saturating_add(&self.system_reserved())
            .saturating_add(&self.eviction_threshold())
    }

    /// The extended resource GPUs of the type are counted under: `amd.com/gpu` for AMD,
    /// `nvidia.com/gpu` otherwise.
    pub fn gpu_resource(t: &InstanceType) -> &'static str {
        if t.gpu_manufacturer.eq_ignore_ascii_case("AMD") {
            resources::AMD_GPU
        } else {
            resources::NVIDIA_GPU
        }
    }

    /// [`AllocatableModel::capacity`] as a [`Resources`].
    pub fn capacity_resources(&self, t: &InstanceType) -> Resources {
        self.capacity(t).to_resources(Self::gpu_resource(t))
    }

    /// [`AllocatableModel::allocatable`] as a [`Resources`].
    pub fn allocatable_resources(&self, t: &InstanceType) -> Resources {
        self.allocatable(t).to_resources(Self::gpu_resource(t))
    }

    /// What pods can request on a node of the instance type: capacity minus
    /// [`AllocatableModel::overhead`], floored at zero.
    pub fn allocatable(&self, t: &InstanceType) -> Allocatable {
        self.capacity(t).saturating_sub(&self.overhead(t))
    }
}

/// `(ENIs − reserved) × (IPv4 per ENI − 1) + 2`, 0 when no ENI is left. Uses the instance
/// type's total ENI count; Karpenter counts the default network card's ENIs, which only
/// differs on multi-card types (p4d, p5, trn1, ...), all far above the 110 cap.
fn eni_limited_pods(t: &InstanceType, reserved_enis: u32) -> u64 {
    let usable = u64::from(t.max_enis.saturating_sub(reserved_enis));
    if usable == 0 {
        return 0;
    }
    usable
        .saturating_mul(u64::from(t.ipv4_per_eni.saturating_sub(1)))
        .saturating_add(2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;

    fn get(name: &str) -> &'static InstanceType {
        Catalog::embedded().get(name).unwrap()
    }

    fn mib(n: u64) -> u64 {
        n * MIB
    }

    #[test]
    fn m5_large() {
        // 2 vCPU, 8192 MiB, 3 ENIs × 10 IPv4, x86_64.
        // pods = 3 × (10 − 1) + 2 = 29.
        // memory capacity = 8192 − ceil(8192 × 0.075 = 614.4) = 8192 − 615 = 7577 MiB.
        // kube-reserved: CPU 60 + 10 = 70 m; memory 11 × 29 + 255 = 574 MiB; storage 1 GiB.
        // eviction: 100 MiB; storage 10 % of 20 GiB = 2 GiB.
        // allocatable: 1930 m, 7577 − 574 − 100 = 6903 MiB, 29 pods, 20 − 1 − 2 = 17 GiB.
        let m = AllocatableModel::default();
        let t = get("m5.large");
        assert_eq!(
            m.capacity(t),
            Allocatable {
                cpu_millis: 2000,
                memory_bytes: mib(7577),
                pods: 29,
                ephemeral_bytes: 20 * GIB,
                gpus: 0
            }
        );
        assert_eq!(
            m.allocatable(t),
            Allocatable {
                cpu_millis: 1930,
                memory_bytes: mib(6903),
                pods: 29,
                ephemeral_bytes: 17 * GIB,
                gpus: 0
            }
        );
    }

    #[test]
    fn c5_xlarge() {
        // 4 vCPU, 8192 MiB, 4 ENIs × 15 IPv4: pods = 4 × 14 + 2 = 58.
        // CPU reserved 60 + 10 + 2000 × 0.005 = 80 m → 3920 m.
        // memory 7577 − (11 × 58 + 255 = 893) − 100 = 6584 MiB.
        let m = AllocatableModel::default();
        let a = m.allocatable(get("c5.xlarge"));
        assert_eq!((a.cpu_millis, a.memory_mib(), a.pods), (3920, 6584, 58));
    }

    #[test]
    fn r6g_2xlarge_arm64() {
        // 8 vCPU, 65536 MiB, arm64 (−64 MiB CMA), 4 ENIs × 15 IPv4: pods 58.
        // memory: 65472 − ceil(65472 × 0.075 = 4910.4) = 65472 − 4911 = 60561 MiB.
        // CPU reserved 60 + 10 + 10 + 4000 × 0.0025 = 90 m → 7910 m.
        // allocatable memory 60561 − 893 − 100 = 59568 MiB.
        let m = AllocatableModel::default();
        let t = get("r6g.2xlarge");
        assert_eq!(m.capacity(t).memory_mib(), 60561);
        let a = m.allocatable(t);
        assert_eq!((a.cpu_millis, a.memory_mib(), a.pods), (7910, 59568, 58));
    }

    #[test]
    fn t3_micro() {
        // 2 vCPU, 1024 MiB, 2 ENIs × 2 IPv4: pods = 2 × 1 + 2 = 4.
        // memory 1024 − ceil(76.8) = 947 MiB; reserved 11 × 4 + 255 = 299; 947 − 299 − 100 = 548.
        let m = AllocatableModel::default();
        let a = m.allocatable(get("t3.micro"));
        assert_eq!((a.cpu_millis, a.memory_mib(), a.pods), (1930, 548, 4));
    }

    #[test]
    fn pod_density_options() {
        let big = get("m5.24xlarge"); // 96 vCPU, 15 ENIs × 50 IPv4: 15 × 49 + 2 = 737.
        assert_eq!(AllocatableModel::default().max_pods(big), 110);
        let uncapped = AllocatableModel {
            max_pods_cap: None,
            ..Default::default()
        };
        assert_eq!(uncapped.max_pods(big), 737);
        let explicit = AllocatableModel {
            max_pods: Some(250),
            ..Default::default()
        };
        assert_eq!(explicit.max_pods(big), 250);
        let per_core = AllocatableModel {
            pods_per_core: Some(10),
            ..Default::default()
        };
        assert_eq!(per_core.max_pods(get("m5.large")), 20);
        let reserved = AllocatableModel {
            reserved_enis: 1,
            ..Default::default()
        };
        assert_eq!(reserved.max_pods(get("m5.large")), 2 * 9 + 2);
        let none_left = AllocatableModel {
            reserved_enis: 3,
            ..Default::default()
        };
        assert_eq!(none_left.max_pods(get("m5.large")), 0);
        let custom_ami = AllocatableModel {
            eni_limited_pods: false,
            ..Default::default()
        };
        assert_eq!(custom_ami.max_pods(get("t3.micro")), 110);
    }

    #[test]
    fn overrides_and_validation() {
        let m = AllocatableModel {
            kube_reserved: KubeReservedOverride {
                cpu_millis: Some(500),
                ..Default::default()
            },
            system_reserved: Reservation {
                cpu_millis: 100,
                memory_bytes: mib(200),
                ephemeral_bytes: 0,
            },
            eviction_memory_bytes: mib(500),
            ..Default::default()
        };
        let a = m.allocatable(get("m5.large"));
        assert_eq!(
            (a.cpu_millis, a.memory_mib()),
            (2000 - 500 - 100, 7577 - 574 - 200 - 500)
        );
        assert!(m.validate().is_ok());
        let bad = AllocatableModel {
            vm_memory_overhead: 1.5,
            ..Default::default()
        };
        assert!(matches!(bad.validate(), Err(Error::Fraction { .. })));
        assert_eq!(
            bad.capacity(get("m5.large")).memory_mib(),
            8192,
            "invalid overhead counts as 0"
        );
        let bad = AllocatableModel {
            eviction_ephemeral_percent: 120.0,
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("120"));
        assert_eq!(
            AllocatableModel {
                max_pods: Some(0),
                ..Default::default()
            }
            .validate(),
            Err(Error::ZeroMaxPods)
        );
        // Reservations larger than the node floor at zero.
        let huge = AllocatableModel {
            eviction_memory_bytes: u64::MAX,
            ..Default::default()
        };
        assert_eq!(huge.allocatable(get("t3.micro")).memory_bytes, 0);
    }

    #[test]
    fn gpus_and_resources() {
        let m = AllocatableModel::default();
        let a = m.allocatable(get("p4d.24xlarge"));
        assert_eq!((a.gpus, a.pods), (8, 110));
        let r = m.allocatable_resources(get("p4d.24xlarge"));
        assert_eq!(
            (r.cpu_millis, r.pods),
            (i64::try_from(a.cpu_millis).unwrap(), 110)
        );
        assert_eq!(r.memory_bytes, i64::try_from(a.memory_bytes).unwrap());
        assert_eq!(r.extended(resources::NVIDIA_GPU), 8);
        let r = m.capacity_resources(get("m5.large"));
        assert_eq!(
            (r.cpu_millis, r.memory_bytes, r.ephemeral_storage_bytes),
            (2000, 7577 * 1024 * 1024, 20 << 30)
        );
        assert!(r.extended.is_empty(), "no zero GPU entry");
        assert_eq!(a.to_resources(resources::AMD_GPU).extended(resources::AMD_GPU), 8);
    }
}
