//! From a simulation's one new NodeClaim to a consolidation replacement, as Karpenter's
//! `computeConsolidation`, `filterByPrice`, `filterOutSameInstanceType` and
//! `computeSpotToSpotConsolidation` do:
//!
//! - the candidates' own instance types are never replacements (no same-type churn,
//!   kubernetes-sigs/karpenter#2388);
//! - every remaining type's *worst* launch price (the dearest offering it could launch with
//!   under the claim's requirements: spot when spot is allowed and offered, otherwise
//!   on-demand) must be below what the candidates cost;
//! - `minValues` must still hold after the filtering;
//! - all-spot candidates replaced with spot: only with spot-to-spot enabled, and for a single
//!   node only when at least [`min_spot_to_spot_types`](super::ConsolidationOptions) cheaper
//!   types remain; the launch list is then cut to that many (or what `minValues` needs);
//! - a replacement that could launch as spot or on-demand is pinned to spot: prices were
//!   filtered assuming spot, and an on-demand fallback could cost more than the candidates.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use super::candidate::Candidate;
use super::cluster::ConsolidationOptions;
use crate::instance_type::{CapacityType, Offering};
use crate::labels;
use crate::requirements::{Operator, Requirement, Requirements};
use crate::scheduling::{InstanceTypeOption, NewNodeClaim};

/// Why a simulation does not lead to a command.
#[derive(Debug, Clone, PartialEq)]
pub enum NoOp {
    /// A pod of a candidate fits nowhere.
    Unschedulable {
        /// The pod.
        pod: String,
        /// The scheduler's reason.
        reason: String,
    },
    /// A pod of a candidate would land on a node that is not initialized.
    Uninitialized {
        /// The pod.
        pod: String,
        /// The node.
        node: String,
    },
    /// The pods need more than one new node (never N→M).
    ManyClaims(usize),
    /// Spot-to-spot replacement is disabled.
    SpotToSpotDisabled,
    /// No launchable type is cheaper than the candidates.
    NotCheaper {
        /// What the candidates cost per hour.
        price: f64,
    },
    /// Too few cheaper spot types remain for a single-node spot-to-spot replacement.
    SpotToSpotFlexibility {
        /// How many remain.
        have: usize,
        /// How many are needed.
        need: usize,
    },
    /// The cheaper types cannot keep a requirement's `minValues`.
    MinValues {
        /// The label key.
        key: String,
        /// Its `minValues`.
        min: u32,
        /// How many distinct values the cheaper types have.
        have: usize,
    },
    /// The `Balanced` policy refuses the move.
    Balanced {
        /// The NodePool.
        pool: String,
        /// The move's score.
        score: f64,
        /// `1 / k`.
        threshold: f64,
    },
}

impl fmt::Display for NoOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoOp::Unschedulable { pod, reason } => write!(f, "pod {pod} cannot be rescheduled: {reason}"),
            NoOp::Uninitialized { pod, node } => {
                write!(f, "pod {pod} would schedule against uninitialized node {node}")
            }
            NoOp::ManyClaims(n) => write!(f, "rescheduling needs {n} new nodes"),
            NoOp::SpotToSpotDisabled => f.write_str("spot-to-spot consolidation is disabled"),
            NoOp::NotCheaper { price } => write!(f, "no replacement is cheaper than ${price:.4}/h"),
            NoOp::SpotToSpotFlexibility { have, need } => write!(
                f,
                "spot-to-spot consolidation needs {need} cheaper instance types, got {have}"
            ),
            NoOp::MinValues { key, min, have } => write!(
                f,
                "the cheaper instance types have {have} values of {key}, minValues is {min}"
            ),
            NoOp::Balanced {
                pool,
                score,
                threshold,
            } => write!(
                f,
                "NodePool {pool} (Balanced): score {score:.3} is below {threshold:.3}"
            ),
        }
    }
}

/// Whether an offering's zone and capacity type are allowed by the requirements.
pub fn offering_allowed(offering: &Offering, reqs: &Requirements) -> bool {
    reqs.get(labels::ZONE).is_none_or(|r| r.has(&offering.zone))
        && reqs
            .get(labels::CAPACITY_TYPE)
            .is_none_or(|r| r.has(offering.capacity_type.as_str()))
}

/// Karpenter's `WorstLaunchPrice`: among the available offerings the requirements allow, the
/// dearest spot one when there is any (spot is launched first), otherwise the dearest
/// on-demand one; `None` when nothing is launchable.
pub fn worst_launch_price(option: &InstanceTypeOption, reqs: &Requirements) -> Option<f64> {
    let dearest = |capacity_type| {
        option
            .offerings
            .iter()
            .filter(|o| o.available && o.capacity_type == capacity_type && offering_allowed(o, reqs))
            .map(|o| o.price)
            .fold(None, |max: Option<f64>, p| Some(max.map_or(p, |m| m.max(p))))
    };
    dearest(CapacityType::Spot).or_else(|| dearest(CapacityType::OnDemand))
}

/// How many of the first types are needed to keep every `minValues` of the requirements
/// (Karpenter's `SatisfiesMinValues`): 0 without `minValues`; the error names the first key
/// the whole list cannot satisfy.
pub fn min_values_prefix(types: &[Arc<InstanceTypeOption>], reqs: &Requirements) -> Result<usize, NoOp> {
    let keys: Vec<(&str, u32)> = reqs
        .iter()
        .filter_map(|r| r.min_values().map(|m| (r.key(), m)))
        .collect();
    if keys.is_empty() {
        return Ok(0);
    }
    let mut seen: Vec<BTreeSet<&str>> = vec![BTreeSet::new(); keys.len()];
    for (index, option) in types.iter().enumerate() {
        for ((key, _), values) in keys.iter().zip(seen.iter_mut()) {
            if let Some(r) = option.requirements.get(key)
                && r.operator() == Operator::In
            {
                values.extend(r.values());
            }
        }
        if keys
            .iter()
            .zip(&seen)
            .all(|((_, min), v)| v.len() >= *min as usize)
        {
            return Ok(index + 1);
        }
    }
    let ((key, min), have) = keys
        .iter()
        .zip(&seen)
        .find(|((_, min), v)| v.len() < *min as usize)
        .map(|(k, v)| (*k, v.len()))
        .unwrap_or((keys[0], 0));
    Err(NoOp::MinValues {
        key: key.to_owned(),
        min,
        have,
    })
}

/// The types whose worst launch price is below `price`, in order, with `minValues` checked.
fn filter_by_price(
    types: &[Arc<InstanceTypeOption>],
    reqs: &Requirements,
    price: f64,
) -> Result<Vec<Arc<InstanceTypeOption>>, NoOp> {
    let kept: Vec<Arc<InstanceTypeOption>> = types
        .iter()
        .filter(|t| worst_launch_price(t, reqs).is_some_and(|p| p < price))
        .cloned()
        .collect();
    if kept.is_empty() {
        return Err(NoOp::NotCheaper { price });
    }
    min_values_prefix(&kept, reqs)?;
    Ok(kept)
}

fn spot_requirement() -> Option<Requirement> {
    Requirement::new(labels::CAPACITY_TYPE, Operator::In, [CapacityType::Spot.as_str()]).ok()
}

/// The replacement for `candidates` from the simulation's one new claim, or why there is
/// none (see the [module documentation](self)). `single` selects the single-node rules.
pub fn replacement(
    mut claim: NewNodeClaim,
    candidates: &[&Candidate],
    single: bool,
    options: &ConsolidationOptions,
) -> Result<NewNodeClaim, NoOp> {
    let price: f64 = candidates.iter().map(|c| c.price).sum();
    // Never the same instance type; for several candidates, nothing as dear as the cheapest
    // candidate of a type the claim could launch (`filterOutSameInstanceType`).
    let own: BTreeSet<&str> = candidates.iter().map(|c| c.instance_type.as_str()).collect();
    let same_type_cap = candidates
        .iter()
        .filter(|c| claim.instance_types.iter().any(|t| t.name() == c.instance_type))
        .map(|c| c.price)
        .fold(f64::INFINITY, f64::min);
    let cap = if single { price } else { price.min(same_type_cap) };
    claim.instance_types.retain(|t| !own.contains(t.name()));

    let all_spot = candidates.iter().all(|c| c.capacity_type == CapacityType::Spot);
    let capacity = claim.requirements.get(labels::CAPACITY_TYPE);
    let allows = |ct: CapacityType| capacity.is_none_or(|r| r.has(ct.as_str()));
    let (allows_spot, allows_on_demand) = (allows(CapacityType::Spot), allows(CapacityType::OnDemand));

    if all_spot && allows_spot {
        if !options.spot_to_spot {
            return Err(NoOp::SpotToSpotDisabled);
        }
        if let Some(spot) = spot_requirement() {
            claim.requirements.add(spot);
        }
        let reqs = claim.requirements.clone();
        claim.instance_types.retain(|t| {
            t.offerings
                .iter()
                .any(|o| o.available && o.capacity_type == CapacityType::Spot && offering_allowed(o, &reqs))
        });
        claim.instance_types = filter_by_price(&claim.instance_types, &reqs, cap)?;
        if single {
            let need = options.min_spot_to_spot_types;
            if claim.instance_types.len() < need {
                return Err(NoOp::SpotToSpotFlexibility {
                    have: claim.instance_types.len(),
                    need,
                });
            }
            let keep = need.max(min_values_prefix(&claim.instance_types, &reqs)?);
            claim.instance_types.truncate(keep);
        }
        return Ok(claim);
    }

    let reqs = claim.requirements.clone();
    claim.instance_types = filter_by_price(&claim.instance_types, &reqs, cap)?;
    if allows_spot && allows_on_demand {
        let has_spot = |t: &Arc<InstanceTypeOption>| {
            t.offerings
                .iter()
                .any(|o| o.available && o.capacity_type == CapacityType::Spot && offering_allowed(o, &reqs))
        };
        // Prices were filtered assuming spot where it is offered: pin the replacement to spot.
        // When none of the cheaper types is offered as spot, they are cheaper on demand:
        // pin to on-demand instead.
        let pin = if claim.instance_types.iter().any(has_spot) {
            claim.instance_types.retain(has_spot);
            CapacityType::Spot
        } else {
            CapacityType::OnDemand
        };
        if let Ok(r) = Requirement::new(labels::CAPACITY_TYPE, Operator::In, [pin.as_str()]) {
            claim.requirements.add(r);
        }
        min_values_prefix(&claim.instance_types, &claim.requirements)?;
    }
    Ok(claim)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allocatable::AllocatableModel;
    use crate::catalog::synthetic_type;

    fn offer(zone: &str, capacity_type: CapacityType, price: f64) -> Offering {
        Offering {
            zone: zone.into(),
            capacity_type,
            price,
            available: true,
        }
    }

    fn option(name: &str, offerings: Vec<Offering>) -> Arc<InstanceTypeOption> {
        Arc::new(
            InstanceTypeOption::new(
                Arc::new(synthetic_type(name, 2, 8192).unwrap()),
                &AllocatableModel::default(),
                offerings,
            )
            .unwrap(),
        )
    }

    fn req(key: &str, values: &[&str]) -> Requirement {
        Requirement::new(key, Operator::In, values.iter().copied()).unwrap()
    }

    #[test]
    fn worst_launch_price_prefers_spot_and_takes_the_dearest_zone() {
        let t = option(
            "m5.large",
            vec![
                offer("us-east-1a", CapacityType::Spot, 0.03),
                offer("us-east-1b", CapacityType::Spot, 0.05),
                offer("us-east-1a", CapacityType::OnDemand, 0.096),
            ],
        );
        assert_eq!(worst_launch_price(&t, &Requirements::new()), Some(0.05));
        let zone_a = Requirements::new().with(req(labels::ZONE, &["us-east-1a"]));
        assert_eq!(worst_launch_price(&t, &zone_a), Some(0.03));
        let od = Requirements::new().with(req(labels::CAPACITY_TYPE, &["on-demand"]));
        assert_eq!(worst_launch_price(&t, &od), Some(0.096));
        let nowhere = Requirements::new().with(req(labels::ZONE, &["us-east-1c"]));
        assert_eq!(worst_launch_price(&t, &nowhere), None);
        let mut unavailable = (*t).clone();
        unavailable.offerings[1].available = false;
        assert_eq!(worst_launch_price(&unavailable, &Requirements::new()), Some(0.03));
    }

    #[test]
    fn min_values_counts_distinct_values_in_order() {
        let types: Vec<_> = ["m5.large", "m5.xlarge", "c5.large", "r5.large"]
            .iter()
            .map(|n| option(n, vec![offer("us-east-1a", CapacityType::Spot, 0.1)]))
            .collect();
        let families = |min| {
            Requirements::new().with(req(labels::INSTANCE_FAMILY, &["m5", "c5", "r5"]).with_min_values(min))
        };
        assert_eq!(min_values_prefix(&types, &Requirements::new()), Ok(0));
        assert_eq!(min_values_prefix(&types, &families(1)), Ok(1));
        assert_eq!(
            min_values_prefix(&types, &families(2)),
            Ok(3),
            "m5 twice, then c5"
        );
        assert_eq!(min_values_prefix(&types, &families(3)), Ok(4));
        assert_eq!(
            min_values_prefix(&types[..2], &families(2)),
            Err(NoOp::MinValues {
                key: labels::INSTANCE_FAMILY.into(),
                min: 2,
                have: 1
            })
        );
    }
}
