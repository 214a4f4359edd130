//! Resource vectors: CPU, memory, pods, ephemeral storage and extended resources (GPUs, ...),
//! with checked arithmetic and conversion from and to Kubernetes resource maps.
//!
//! Every amount is a whole number in the resource's base unit: millicores for CPU, bytes for
//! memory and storage, counts for the rest. Amounts are never negative: parsing rejects
//! negative quantities and [`Resources::checked_sub`] refuses to go below zero.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::quantity::{self, Format, Quantity};

/// The CPU resource name.
pub const CPU: &str = "cpu";
/// The memory resource name.
pub const MEMORY: &str = "memory";
/// The pod-count resource name.
pub const PODS: &str = "pods";
/// The ephemeral-storage resource name.
pub const EPHEMERAL_STORAGE: &str = "ephemeral-storage";
/// NVIDIA GPUs (an extended resource).
pub const NVIDIA_GPU: &str = "nvidia.com/gpu";
/// AMD GPUs (an extended resource).
pub const AMD_GPU: &str = "amd.com/gpu";
/// AWS Neuron devices (Inferentia, Trainium; an extended resource).
pub const AWS_NEURON: &str = "aws.amazon.com/neuron";
/// The extended resources [`Resources::gpus`] counts.
pub const GPU_RESOURCES: [&str; 3] = [NVIDIA_GPU, AMD_GPU, AWS_NEURON];

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The quantity of a resource does not parse.
    #[error("resource {name:?}: {source}")]
    Quantity {
        /// The resource name.
        name: String,
        /// Why the quantity is invalid (it names the quantity).
        source: quantity::Error,
    },
    /// A negative quantity.
    #[error("resource {name:?}: quantity {value:?} is negative")]
    Negative {
        /// The resource name.
        name: String,
        /// The quantity as given.
        value: String,
    },
    /// A fractional quantity of a resource that is counted (pods, extended resources).
    #[error("resource {name:?}: quantity {value:?} must be a whole number")]
    NotWhole {
        /// The resource name.
        name: String,
        /// The quantity as given.
        value: String,
    },
    /// A quantity too large for its unit (CPU above `i64::MAX` millicores).
    #[error("resource {name:?}: quantity {value:?} is too large")]
    TooLarge {
        /// The resource name.
        name: String,
        /// The quantity as given.
        value: String,
    },
    /// The same resource twice in a list of pairs.
    #[error("resource {name:?} is given more than once")]
    Duplicate {
        /// The resource name.
        name: String,
    },
    /// An empty resource name.
    #[error("empty resource name (with quantity {value:?})")]
    EmptyName {
        /// The quantity given with it.
        value: String,
    },
}

/// A vector of resource amounts, as requested by pods or offered by nodes.
///
/// Extended resources absent from [`Resources::extended`] are zero; the operations of this
/// type never store zero entries, so two vectors with the same amounts compare equal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Resources {
    /// CPU in millicores.
    pub cpu_millis: i64,
    /// Memory in bytes.
    pub memory_bytes: i64,
    /// Number of pods.
    pub pods: i64,
    /// Ephemeral storage in bytes.
    pub ephemeral_storage_bytes: i64,
    /// Extended resources by name (`nvidia.com/gpu`, `amd.com/gpu`, `aws.amazon.com/neuron`,
    /// `hugepages-2Mi`, ...), as counts (or bytes for hugepages).
    pub extended: BTreeMap<String, i64>,
}

impl Resources {
    /// CPU and memory only.
    pub fn new(cpu_millis: i64, memory_bytes: i64) -> Resources {
        Resources {
            cpu_millis,
            memory_bytes,
            ..Resources::default()
        }
    }

    /// The same vector with the pod count set.
    #[must_use]
    pub fn with_pods(mut self, pods: i64) -> Resources {
        self.pods = pods;
        self
    }

    /// The same vector with the ephemeral storage set.
    #[must_use]
    pub fn with_ephemeral_storage(mut self, bytes: i64) -> Resources {
        self.ephemeral_storage_bytes = bytes;
        self
    }

    /// The same vector with an extended resource set (removed when zero).
    #[must_use]
    pub fn with_extended(mut self, name: impl Into<String>, amount: i64) -> Resources {
        let name = name.into();
        if amount == 0 {
            self.extended.remove(&name);
        } else {
            self.extended.insert(name, amount);
        }
        self
    }

    /// The amount of an extended resource (zero when absent).
    pub fn extended(&self, name: &str) -> i64 {
        self.extended.get(name).copied().unwrap_or(0)
    }

    /// The number of accelerators of any kind in [`GPU_RESOURCES`].
    pub fn gpus(&self) -> i64 {
        GPU_RESOURCES
            .iter()
            .map(|name| self.extended(name))
            .fold(0, i64::saturating_add)
    }

    /// Whether every amount is zero.
    pub fn is_zero(&self) -> bool {
        self.cpu_millis == 0
            && self.memory_bytes == 0
            && self.pods == 0
            && self.ephemeral_storage_bytes == 0
            && self.extended.values().all(|&v| v == 0)
    }

    /// Combines two vectors dimension by dimension; `None` when `f` fails on any dimension.
    fn try_zip(&self, other: &Resources, f: impl Fn(i64, i64) -> Option<i64>) -> Option<Resources> {
        let mut extended = BTreeMap::new();
        for name in self.extended.keys().chain(other.extended.keys()) {
            if !extended.contains_key(name) {
                let amount = f(self.extended(name), other.extended(name))?;
                if amount != 0 {
                    extended.insert(name.clone(), amount);
                }
            }
        }
        Some(Resources {
            cpu_millis: f(self.cpu_millis, other.cpu_millis)?,
            memory_bytes: f(self.memory_bytes, other.memory_bytes)?,
            pods: f(self.pods, other.pods)?,
            ephemeral_storage_bytes: f(self.ephemeral_storage_bytes, other.ephemeral_storage_bytes)?,
            extended,
        })
    }

    /// Combines two vectors dimension by dimension with an infallible function.
    fn zip(&self, other: &Resources, f: impl Fn(i64, i64) -> i64) -> Resources {
        self.try_zip(other, |a, b| Some(f(a, b))).unwrap_or_default()
    }

    /// The sum, or `None` on overflow.
    pub fn checked_add(&self, other: &Resources) -> Option<Resources> {
        self.try_zip(other, i64::checked_add)
    }

    /// The difference, or `None` when any dimension would go below zero (or overflow).
    pub fn checked_sub(&self, other: &Resources) -> Option<Resources> {
        self.try_zip(other, |a, b| a.checked_sub(b).filter(|&d| d >= 0))
    }

    /// The difference with every dimension floored at zero.
    pub fn saturating_sub(&self, other: &Resources) -> Resources {
        self.zip(other, |a, b| a.saturating_sub(b).max(0))
    }

    /// The larger amount of each dimension.
    pub fn max(&self, other: &Resources) -> Resources {
        self.zip(other, i64::max)
    }

    /// Every amount multiplied by `factor`, or `None` on overflow.
    pub fn checked_mul(&self, factor: u64) -> Option<Resources> {
        let factor = i64::try_from(factor).ok()?;
        self.try_zip(&Resources::default(), |a, _| a.checked_mul(factor))
    }

    /// Whether every dimension of `self` is at most the same dimension of `other` (a request
    /// fits in what a node has left).
    pub fn fits_in(&self, other: &Resources) -> bool {
        self.cpu_millis <= other.cpu_millis
            && self.memory_bytes <= other.memory_bytes
            && self.pods <= other.pods
            && self.ephemeral_storage_bytes <= other.ephemeral_storage_bytes
            && self
                .extended
                .keys()
                .chain(other.extended.keys())
                .all(|n| self.extended(n) <= other.extended(n))
    }

    /// The dimensions of `self` that exceed `other`, by resource name (empty when
    /// [`Resources::fits_in`] holds). Handy for "does not fit" messages.
    pub fn exceeding(&self, other: &Resources) -> Vec<&str> {
        let mut names = Vec::new();
        let core = [
            (CPU, self.cpu_millis, other.cpu_millis),
            (MEMORY, self.memory_bytes, other.memory_bytes),
            (PODS, self.pods, other.pods),
            (
                EPHEMERAL_STORAGE,
                self.ephemeral_storage_bytes,
                other.ephemeral_storage_bytes,
            ),
        ];
        names.extend(core.iter().filter(|(_, a, b)| a > b).map(|(name, _, _)| *name));
        names.extend(
            self.extended
                .iter()
                .filter(|(n, a)| **a > other.extended(n))
                .map(|(n, _)| n.as_str()),
        );
        names
    }

    /// Parses a Kubernetes resource map (`{"cpu": "500m", "memory": "1Gi"}`). Keys other than
    /// `cpu`, `memory`, `pods` and `ephemeral-storage` are extended resources. CPU is rounded
    /// up to millicores and byte amounts up to whole bytes, as Kubernetes does; pods and
    /// extended resources must be whole numbers.
    pub fn from_map(map: &BTreeMap<String, String>) -> Result<Resources, Error> {
        Resources::from_pairs(map)
    }

    /// Parses `(name, quantity)` pairs, as [`Resources::from_map`]; a name given twice is an
    /// error.
    pub fn from_pairs<I, K, V>(pairs: I) -> Result<Resources, Error>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut resources = Resources::default();
        let mut seen = std::collections::BTreeSet::new();
        for (name, value) in pairs {
            let (name, value) = (name.as_ref(), value.as_ref());
            let quantity: Quantity = value.parse().map_err(|source| Error::Quantity {
                name: name.to_owned(),
                source,
            })?;
            if !seen.insert(name.to_owned()) {
                return Err(Error::Duplicate {
                    name: name.to_owned(),
                });
            }
            resources.set(name, &quantity, value)?;
        }
        Ok(resources)
    }

    /// Sets one resource from a parsed quantity; `raw` is the text errors quote.
    fn set(&mut self, name: &str, quantity: &Quantity, raw: &str) -> Result<(), Error> {
        let error = |make: fn(String, String) -> Error| make(name.to_owned(), raw.to_owned());
        if name.is_empty() {
            return Err(Error::EmptyName {
                value: raw.to_owned(),
            });
        }
        if quantity.is_negative() {
            return Err(error(|name, value| Error::Negative { name, value }));
        }
        match name {
            CPU => {
                self.cpu_millis = quantity
                    .to_millis()
                    .ok_or_else(|| error(|name, value| Error::TooLarge { name, value }))?;
            }
            MEMORY => self.memory_bytes = quantity.to_value(),
            EPHEMERAL_STORAGE => self.ephemeral_storage_bytes = quantity.to_value(),
            _ => {
                if !quantity.is_integer() {
                    return Err(error(|name, value| Error::NotWhole { name, value }));
                }
                if name == PODS {
                    self.pods = quantity.to_value();
                } else if !quantity.is_zero() {
                    self.extended.insert(name.to_owned(), quantity.to_value());
                }
            }
        }
        Ok(())
    }

    /// The Kubernetes resource map with canonical quantity strings (`1500m`, `2`, `1Gi`);
    /// zero amounts are left out. Byte amounts use binary suffixes unless that is
    /// longer (`1Gi`, but `20G`).
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.to_quantities()
            .into_iter()
            .map(|(name, q)| (name, q.to_string()))
            .collect()
    }

    /// The non-zero amounts as quantities, by resource name.
    pub fn to_quantities(&self) -> BTreeMap<String, Quantity> {
        let bytes = |amount: i64| {
            let decimal = Quantity::from_value(amount);
            let binary = decimal.with_format(Format::BinarySI);
            if binary.to_string().len() <= decimal.to_string().len() {
                binary
            } else {
                decimal
            }
        };
        let mut map = BTreeMap::new();
        let core = [
            (CPU, Quantity::from_millis(self.cpu_millis)),
            (MEMORY, bytes(self.memory_bytes)),
            (PODS, Quantity::from_value(self.pods)),
            (EPHEMERAL_STORAGE, bytes(self.ephemeral_storage_bytes)),
        ];
        for (name, quantity) in core {
            if !quantity.is_zero() {
                map.insert(name.to_owned(), quantity);
            }
        }
        for (name, &amount) in &self.extended {
            if amount != 0 {
                map.insert(name.clone(), Quantity::from_value(amount));
            }
        }
        map
    }
}

impl TryFrom<&BTreeMap<String, String>> for Resources {
    type Error = Error;
    fn try_from(map: &BTreeMap<String, String>) -> Result<Resources, Error> {
        Resources::from_map(map)
    }
}

impl fmt::Display for Resources {
    /// `cpu=1500m, memory=1Gi, pods=110`, or `none` when zero.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let quantities = self.to_quantities();
        if quantities.is_empty() {
            return f.write_str("none");
        }
        for (index, (name, quantity)) in quantities.iter().enumerate() {
            if index > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{name}={quantity}")?;
        }
        Ok(())
    }
}

impl Serialize for Resources {
    /// Serializes as a Kubernetes resource map of quantity strings.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_quantities().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Resources {
    /// Deserializes from a Kubernetes resource map whose quantities are strings or numbers.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Resources, D::Error> {
        let map = BTreeMap::<String, Quantity>::deserialize(deserializer)?;
        let mut resources = Resources::default();
        for (name, quantity) in &map {
            resources
                .set(name, quantity, &quantity.to_string())
                .map_err(serde::de::Error::custom)?;
        }
        Ok(resources)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GI: i64 = 1 << 30;
    const MI: i64 = 1 << 20;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn parse_kubernetes_map() {
        let r = Resources::from_map(&map(&[
            ("cpu", "1500m"),
            ("memory", "1Gi"),
            ("pods", "110"),
            ("ephemeral-storage", "20G"),
            ("nvidia.com/gpu", "1"),
            ("hugepages-2Mi", "0"),
        ]))
        .unwrap();
        assert_eq!(r.cpu_millis, 1500);
        assert_eq!(r.memory_bytes, GI);
        assert_eq!(r.pods, 110);
        assert_eq!(r.ephemeral_storage_bytes, 20_000_000_000);
        assert_eq!(r.extended(NVIDIA_GPU), 1);
        assert_eq!(r.gpus(), 1);
        assert!(
            !r.extended.contains_key("hugepages-2Mi"),
            "zero entries are not stored"
        );
        let rounded = Resources::from_pairs([("cpu", "0.1m"), ("memory", "0.5")]).unwrap();
        assert_eq!(
            (rounded.cpu_millis, rounded.memory_bytes),
            (1, 1),
            "rounded up like Kubernetes"
        );
    }

    #[test]
    fn parse_errors_name_resource_and_value() {
        let cases: [(&[(&str, &str)], &str); 6] = [
            (
                &[("cpu", "abc")],
                "resource \"cpu\": invalid quantity \"abc\": expected a number before the suffix",
            ),
            (
                &[("memory", "12Qi")],
                "resource \"memory\": invalid quantity \"12Qi\": unknown suffix \"Qi\"",
            ),
            (
                &[("memory", "-1Gi")],
                "resource \"memory\": quantity \"-1Gi\" is negative",
            ),
            (
                &[("pods", "1.5")],
                "resource \"pods\": quantity \"1.5\" must be a whole number",
            ),
            (
                &[("nvidia.com/gpu", "500m")],
                "resource \"nvidia.com/gpu\": quantity \"500m\" must be a whole number",
            ),
            (&[("cpu", "9E")], "resource \"cpu\": quantity \"9E\" is too large"),
        ];
        for (pairs, want) in cases {
            let err = Resources::from_pairs(pairs.iter().copied()).unwrap_err();
            assert_eq!(err.to_string(), want);
        }
        let err = Resources::from_pairs([("cpu", "1"), ("cpu", "2")]).unwrap_err();
        assert_eq!(err, Error::Duplicate { name: "cpu".into() });
        let err = Resources::from_pairs([("", "2")]).unwrap_err();
        assert_eq!(err.to_string(), "empty resource name (with quantity \"2\")");
    }

    #[test]
    fn back_to_canonical_map() {
        let r = Resources::new(1500, GI)
            .with_pods(110)
            .with_ephemeral_storage(20_000_000_000)
            .with_extended(NVIDIA_GPU, 2);
        assert_eq!(
            r.to_map(),
            map(&[
                ("cpu", "1500m"),
                ("memory", "1Gi"),
                ("pods", "110"),
                ("ephemeral-storage", "20G"),
                ("nvidia.com/gpu", "2"),
            ])
        );
        assert_eq!(Resources::from_map(&r.to_map()).unwrap(), r);
        assert_eq!(
            Resources::new(2000, 1000).to_map(),
            map(&[("cpu", "2"), ("memory", "1k")])
        );
        assert_eq!(Resources::new(0, 0).to_map(), BTreeMap::new());
        assert_eq!(
            r.to_string(),
            "cpu=1500m, ephemeral-storage=20G, memory=1Gi, nvidia.com/gpu=2, pods=110"
        );
        assert_eq!(Resources::default().to_string(), "none");
    }

    #[test]
    fn checked_arithmetic() {
        let a = Resources::new(1000, 2 * GI)
            .with_pods(1)
            .with_extended(NVIDIA_GPU, 1);
        let b = Resources::new(500, GI).with_extended(AMD_GPU, 1);
        let sum = a.checked_add(&b).unwrap();
        assert_eq!(
            sum,
            Resources::new(1500, 3 * GI)
                .with_pods(1)
                .with_extended(NVIDIA_GPU, 1)
                .with_extended(AMD_GPU, 1)
        );
        assert_eq!(sum.gpus(), 2);
        assert_eq!(sum.checked_sub(&b), Some(a.clone()));
        assert_eq!(
            a.checked_sub(&a),
            Some(Resources::default()),
            "zero entries are dropped"
        );
        assert_eq!(b.checked_sub(&a), None, "underflow");
        assert_eq!(a.checked_sub(&b), None, "amd.com/gpu would go negative");
        assert_eq!(
            b.saturating_sub(&a),
            Resources::new(0, 0).with_extended(AMD_GPU, 1),
            "floored at zero per dimension"
        );
        assert_eq!(
            Resources::new(i64::MAX, 0).checked_add(&Resources::new(1, 0)),
            None
        );
        assert_eq!(
            a.checked_mul(3),
            Some(
                Resources::new(3000, 6 * GI)
                    .with_pods(3)
                    .with_extended(NVIDIA_GPU, 3)
            )
        );
        assert_eq!(a.checked_mul(0), Some(Resources::default()));
        assert_eq!(a.checked_mul(u64::MAX), None);
        assert_eq!(a.checked_mul(i64::MAX as u64), None);
        assert_eq!(
            a.max(&b),
            Resources::new(1000, 2 * GI)
                .with_pods(1)
                .with_extended(NVIDIA_GPU, 1)
                .with_extended(AMD_GPU, 1)
        );
    }

    #[test]
    fn fits_in_every_dimension() {
        let node = Resources::new(4000, 16 * GI)
            .with_pods(110)
            .with_extended(NVIDIA_GPU, 1);
        let pod = Resources::new(500, 512 * MI).with_pods(1);
        assert!(pod.fits_in(&node));
        assert!(node.fits_in(&node));
        assert!(!node.fits_in(&pod));
        assert!(Resources::default().fits_in(&pod));
        let gpu_pod = pod.clone().with_extended(NVIDIA_GPU, 2);
        assert!(!gpu_pod.fits_in(&node));
        assert_eq!(gpu_pod.exceeding(&node), vec![NVIDIA_GPU]);
        let neuron_pod = pod.clone().with_extended(AWS_NEURON, 1);
        assert!(
            !neuron_pod.fits_in(&node),
            "a resource the node lacks does not fit"
        );
        assert_eq!(Resources::new(5000, 32 * GI).exceeding(&node), vec![CPU, MEMORY]);
        assert!(pod.exceeding(&node).is_empty());
    }

    #[test]
    fn zero_and_with_extended() {
        assert!(Resources::default().is_zero());
        assert!(!Resources::new(0, 1).is_zero());
        assert!(!Resources::default().with_extended(AWS_NEURON, 1).is_zero());
        let r = Resources::default()
            .with_extended(AWS_NEURON, 1)
            .with_extended(AWS_NEURON, 0);
        assert_eq!(r, Resources::default());
        let mut explicit_zero = Resources::default();
        explicit_zero.extended.insert("x".into(), 0);
        assert!(explicit_zero.is_zero());
        assert!(explicit_zero.fits_in(&Resources::default()));
    }

    #[test]
    fn serde_as_resource_map() {
        let r = Resources::new(250, 128 * MI).with_extended(NVIDIA_GPU, 1);
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, r#"{"cpu":"250m","memory":"128Mi","nvidia.com/gpu":"1"}"#);
        assert_eq!(serde_json::from_str::<Resources>(&json).unwrap(), r);
        let numbers: Resources = serde_json::from_str(r#"{"cpu": 2, "memory": "1Gi", "pods": 110}"#).unwrap();
        assert_eq!(numbers, Resources::new(2000, GI).with_pods(110));
        let err = serde_json::from_str::<Resources>(r#"{"pods": "-3"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("resource \"pods\": quantity \"-3\" is negative"),
            "{err}"
        );
    }
}
