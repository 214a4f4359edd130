//! NodeClaims: the ones a solve builds up ([`Claim`], internal) and the finished ones it
//! returns ([`NewNodeClaim`]).

use std::sync::Arc;

use crate::instance_type::Offering;
use crate::pod::{HostPort, PodSpec};
use crate::requirements::Requirements;
use crate::resources::Resources;

use super::intern::ReqId;
use super::template::InstanceTypeOption;

/// A NodeClaim to launch.
#[derive(Debug, Clone, PartialEq)]
pub struct NewNodeClaim {
    /// The NodePool it is launched from.
    pub nodepool: String,
    /// Final requirements: NodePool ∩ pods ∩ zone and capacity type decided by topology;
    /// no hostname.
    pub requirements: Requirements,
    /// Every instance type that fits, cheapest available compatible offering first (ties by
    /// name), truncated to `max_instance_types` with `minValues` honoured.
    pub instance_types: Vec<Arc<InstanceTypeOption>>,
    /// The pods it is for.
    pub pods: Vec<Arc<PodSpec>>,
    /// The pods' requests plus the DaemonSet overhead.
    pub requests: Resources,
    /// The DaemonSet overhead: per dimension, the smallest among the listed types.
    pub daemon_overhead: Resources,
    /// Set when `minValues` could not be met and [`super::MinValuesPolicy::BestEffort`] let
    /// the claim through (Karpenter's `karpenter.sh/nodeclaim-min-values-relaxed`).
    pub min_values_relaxed: bool,
}

impl NewNodeClaim {
    /// The cheapest instance type and offering the claim allows (an available offering whose
    /// zone and capacity type the requirements allow).
    pub fn cheapest(&self) -> Option<(&InstanceTypeOption, &Offering)> {
        self.instance_types
            .iter()
            .filter_map(|t| t.cheapest_offering(&self.requirements).map(|o| (t.as_ref(), o)))
            .fold(
                None,
                |best: Option<(&InstanceTypeOption, &Offering)>, (t, o)| match best {
                    Some((_, b)) if b.price <= o.price => best,
                    _ => Some((t, o)),
                },
            )
    }

    /// The price per hour of [`NewNodeClaim::cheapest`] (infinite when nothing is
    /// launchable).
    pub fn price(&self) -> f64 {
        self.cheapest().map_or(f64::INFINITY, |(_, o)| o.price)
    }
}

/// A NodeClaim being built by a solve.
#[derive(Debug, Clone)]
pub(crate) struct Claim {
    /// The template index.
    pub(crate) tpl: usize,
    /// Current requirements.
    pub(crate) reqs: ReqId,
    /// The template types that still fit, by template index.
    pub(crate) types: Vec<u16>,
    /// The pods' requests (dense, without DaemonSet overhead).
    pub(crate) requests: Vec<i64>,
    /// Per dimension, at least the most any remaining type can hold.
    pub(crate) envelope: Vec<i64>,
    /// The number of types when the envelope was computed.
    pub(crate) envelope_len: usize,
    /// Pod indices.
    pub(crate) pods: Vec<u32>,
    /// Host ports in use.
    pub(crate) ports: Vec<HostPort>,
    /// Whether `minValues` was relaxed.
    pub(crate) min_values_relaxed: bool,
    /// The cheapest type under the current requirements, once computed.
    pub(crate) cheapest: Option<Option<u16>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allocatable::AllocatableModel;
    use crate::catalog::synthetic_type;
    use crate::instance_type::CapacityType;
    use crate::labels;
    use crate::requirements::{Operator, Requirement};

    #[test]
    fn cheapest_respects_requirements() {
        let offer = |zone: &str, capacity_type, price| Offering {
            zone: zone.into(),
            capacity_type,
            price,
            available: true,
        };
        let t = |name: &str, offerings| {
            Arc::new(
                InstanceTypeOption::new(
                    Arc::new(synthetic_type(name, 2, 8192).unwrap()),
                    &AllocatableModel::default(),
                    offerings,
                )
                .unwrap(),
            )
        };
        let claim = NewNodeClaim {
            nodepool: "default".into(),
            requirements: Requirements::new()
                .with(Requirement::new(labels::CAPACITY_TYPE, Operator::In, ["on-demand"]).unwrap()),
            instance_types: vec![
                t(
                    "m5.large",
                    vec![
                        offer("us-east-1a", CapacityType::Spot, 0.03),
                        offer("us-east-1a", CapacityType::OnDemand, 0.09),
                    ],
                ),
                t(
                    "c5.large",
                    vec![offer("us-east-1a", CapacityType::OnDemand, 0.08)],
                ),
            ],
            pods: Vec::new(),
            requests: Resources::default(),
            daemon_overhead: Resources::default(),
            min_values_relaxed: false,
        };
        let (it, o) = claim.cheapest().unwrap();
        assert_eq!(it.name(), "c5.large");
        assert_eq!(o.price, 0.08);
        assert_eq!(claim.price(), 0.08);
        let empty = NewNodeClaim {
            instance_types: Vec::new(),
            ..claim
        };
        assert_eq!(empty.price(), f64::INFINITY);
    }
}
