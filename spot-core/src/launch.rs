//! Launch planning: from a NodeClaim's candidate instance types to one fleet request, as
//! Karpenter's AWS provider does (karpenter.md §2). Pure: the provisioner's launcher and the
//! simulator both plan with [`plan`], then send the request their own way.
//!
//! 1. The usable offerings: available, allowed by the claim's zone and capacity-type
//!    requirements, and not marked in the [`UnavailableOfferings`] cache.
//! 2. Spot offerings priced above the cheapest usable on-demand offering are dropped
//!    (Karpenter's `SpotOfferingFilter`: such a pool is never worth it).
//! 3. The capacity type: spot when any spot offering is left, otherwise on-demand. One
//!    request is always one capacity type.
//! 4. Types are ordered by their cheapest offering of that capacity type (ties by name),
//!    each type's offerings cheapest first, and truncated to `max_instance_types`
//!    ([`MAX_INSTANCE_TYPES`], EC2 Fleet's practical limit), keeping every requirement's
//!    `minValues` satisfied by what is left.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::cloud::{AllocationStrategy, LaunchCandidate};
use crate::instance_type::CapacityType;
use crate::labels;
use crate::offerings::UnavailableOfferings;
use crate::requirements::Requirements;
use crate::scheduling::InstanceTypeOption;

/// How many instance types one fleet request lists (Karpenter's AWS provider: 60).
pub const MAX_INSTANCE_TYPES: usize = 60;

/// Errors of launch planning.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// No candidate has a usable offering.
    #[error(
        "{types} candidate types, none with an available offering matching the claim's zone and \
         capacity-type requirements"
    )]
    NoOffering {
        /// How many candidate types the claim listed.
        types: usize,
    },
    /// Truncation would leave fewer distinct values than a requirement's `minValues`.
    #[error("requirement {key} needs {min_values} distinct values, only {available} remain")]
    MinValues {
        /// The requirement key.
        key: String,
        /// Its minValues.
        min_values: u32,
        /// Distinct values left.
        available: usize,
    },
}

/// One fleet request, before its strategy and tags.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchPlan {
    /// The capacity type of the request.
    pub capacity_type: CapacityType,
    /// Pools, cheapest type first (a type's offerings stay together, cheapest first).
    pub candidates: Vec<LaunchCandidate>,
    /// Distinct instance types in the request, in the order of `candidates`.
    pub instance_types: Vec<String>,
}

impl LaunchPlan {
    /// Karpenter's strategy for the plan's capacity type: `price-capacity-optimized` for
    /// spot, `lowest-price` for on-demand.
    pub fn default_strategy(&self) -> AllocationStrategy {
        match self.capacity_type {
            CapacityType::Spot => AllocationStrategy::PriceCapacityOptimized,
            CapacityType::OnDemand => AllocationStrategy::LowestPrice,
        }
    }
}

fn allowed(reqs: &Requirements, key: &str, value: &str) -> bool {
    reqs.get(key).is_none_or(|r| r.matches(Some(value)))
}

/// A usable offering: zone, capacity type, price.
type Offer<'a> = (&'a str, CapacityType, f64);
/// A type with its offerings of the chosen capacity type (zone, price) and its cheapest price.
type Ranked<'a> = (&'a InstanceTypeOption, Vec<(&'a str, f64)>, f64);

/// Plans one fleet request for a claim with these requirements and candidate types: see the
/// [module documentation](self) for the rules. `max_instance_types` is at least 1.
pub fn plan(
    requirements: &Requirements,
    types: &[Arc<InstanceTypeOption>],
    unavailable: &UnavailableOfferings,
    max_instance_types: usize,
) -> Result<LaunchPlan, Error> {
    let mut usable: Vec<(&InstanceTypeOption, Vec<Offer<'_>>)> = Vec::new();
    for t in types {
        let name = t.name();
        let offers: Vec<_> = t
            .offerings
            .iter()
            .filter(|o| {
                o.available
                    && allowed(requirements, labels::CAPACITY_TYPE, o.capacity_type.as_str())
                    && allowed(requirements, labels::ZONE, &o.zone)
                    && !unavailable.is_unavailable(name, &o.zone, o.capacity_type)
            })
            .map(|o| (o.zone.as_str(), o.capacity_type, o.price))
            .collect();
        if !offers.is_empty() {
            usable.push((t, offers));
        }
    }
    let cheapest_on_demand = usable
        .iter()
        .flat_map(|(_, o)| o.iter())
        .filter(|x| x.1 == CapacityType::OnDemand)
        .map(|x| x.2)
        .fold(f64::INFINITY, f64::min);
    for (_, offers) in &mut usable {
        offers.retain(|x| x.1 == CapacityType::OnDemand || x.2 <= cheapest_on_demand);
    }
    let has = |ct: CapacityType| usable.iter().any(|(_, o)| o.iter().any(|x| x.1 == ct));
    let capacity_type = if has(CapacityType::Spot) {
        CapacityType::Spot
    } else if has(CapacityType::OnDemand) {
        CapacityType::OnDemand
    } else {
        return Err(Error::NoOffering { types: types.len() });
    };
    let mut ranked: Vec<Ranked<'_>> = usable
        .into_iter()
        .filter_map(|(t, offers)| {
            let mut o: Vec<(&str, f64)> = offers
                .into_iter()
                .filter(|x| x.1 == capacity_type)
                .map(|x| (x.0, x.2))
                .collect();
            o.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(b.0)));
            let min = o.first()?.1;
            Some((t, o, min))
        })
        .collect();
    ranked.sort_by(|a, b| a.2.total_cmp(&b.2).then_with(|| a.0.name().cmp(b.0.name())));
    ranked.truncate(max_instance_types.max(1));
    check_min_values(requirements, ranked.iter().map(|r| r.0))?;
    let mut candidates = Vec::new();
    let mut instance_types = Vec::with_capacity(ranked.len());
    for (t, offers, _) in &ranked {
        instance_types.push(t.name().to_owned());
        candidates.extend(offers.iter().map(|(zone, price)| LaunchCandidate {
            instance_type: t.name().to_owned(),
            zone: (*zone).to_owned(),
            price: *price,
        }));
    }
    Ok(LaunchPlan {
        capacity_type,
        candidates,
        instance_types,
    })
}

/// Checks every requirement with `minValues` against the types kept.
fn check_min_values<'a>(
    requirements: &Requirements,
    kept: impl Iterator<Item = &'a InstanceTypeOption> + Clone,
) -> Result<(), Error> {
    for r in requirements.iter() {
        let Some(min) = r.min_values() else { continue };
        let distinct: BTreeSet<String> = kept
            .clone()
            .filter_map(|t| t.requirements.get(r.key()).and_then(|tr| tr.intersect(r).any()))
            .collect();
        if distinct.len() < min as usize {
            return Err(Error::MinValues {
                key: r.key().to_owned(),
                min_values: min,
                available: distinct.len(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use time::OffsetDateTime;

    use super::*;
    use crate::clock::FixedClock;
    use crate::requirements::{Operator, Requirement};

    use CapacityType::{OnDemand, Spot};

    fn option(name: &str, offers: &[(&str, CapacityType, f64)]) -> Arc<InstanceTypeOption> {
        Arc::new(InstanceTypeOption::synthetic(name, 2, 8192, offers).unwrap())
    }

    fn cache() -> UnavailableOfferings {
        UnavailableOfferings::new(Arc::new(FixedClock(OffsetDateTime::UNIX_EPOCH)))
    }

    fn types() -> Vec<Arc<InstanceTypeOption>> {
        vec![
            option(
                "m5.large",
                &[
                    ("us-east-1a", Spot, 0.04),
                    ("us-east-1b", Spot, 0.03),
                    ("us-east-1a", OnDemand, 0.096),
                ],
            ),
            // Its spot pool is dearer than the cheapest on-demand offering.
            option(
                "c5.large",
                &[("us-east-1a", Spot, 0.09), ("us-east-1a", OnDemand, 0.085)],
            ),
            option(
                "r5.large",
                &[("us-east-1a", Spot, 0.05), ("us-east-1b", OnDemand, 0.126)],
            ),
        ]
    }

    fn pools(p: &LaunchPlan) -> Vec<String> {
        p.candidates
            .iter()
            .map(|c| format!("{}/{}", c.instance_type, c.zone))
            .collect()
    }

    #[test]
    fn spot_first_cheapest_type_first_and_no_spot_above_on_demand() {
        let p = plan(&Requirements::new(), &types(), &cache(), MAX_INSTANCE_TYPES).unwrap();
        assert_eq!(p.capacity_type, Spot);
        assert_eq!(p.default_strategy(), AllocationStrategy::PriceCapacityOptimized);
        assert_eq!(
            pools(&p),
            [
                "m5.large/us-east-1b",
                "m5.large/us-east-1a",
                "r5.large/us-east-1a"
            ]
        );
        assert_eq!(p.instance_types, ["m5.large", "r5.large"]);
    }

    #[test]
    fn on_demand_when_spot_is_not_allowed_or_every_spot_pool_is_marked() {
        let od = Requirements::new()
            .with(Requirement::new(labels::CAPACITY_TYPE, Operator::In, ["on-demand"]).unwrap());
        let p = plan(&od, &types(), &cache(), 2).unwrap();
        assert_eq!(p.capacity_type, OnDemand);
        assert_eq!(p.default_strategy(), AllocationStrategy::LowestPrice);
        assert_eq!(p.instance_types, ["c5.large", "m5.large"], "truncated to 2");
        let unavailable = cache();
        for (t, z) in [
            ("m5.large", "us-east-1a"),
            ("m5.large", "us-east-1b"),
            ("r5.large", "us-east-1a"),
        ] {
            unavailable.mark(t, z, Spot);
        }
        let p = plan(&Requirements::new(), &types(), &unavailable, MAX_INSTANCE_TYPES).unwrap();
        assert_eq!(p.capacity_type, OnDemand);
        assert_eq!(
            pools(&p),
            [
                "c5.large/us-east-1a",
                "m5.large/us-east-1a",
                "r5.large/us-east-1b"
            ]
        );
    }

    #[test]
    fn zones_outside_the_requirements_leave_no_offering() {
        let zone_c =
            Requirements::new().with(Requirement::new(labels::ZONE, Operator::In, ["us-east-1c"]).unwrap());
        assert_eq!(
            plan(&zone_c, &types(), &cache(), MAX_INSTANCE_TYPES),
            Err(Error::NoOffering { types: 3 })
        );
    }

    #[test]
    fn min_values_counts_what_survives_truncation() {
        let reqs = Requirements::new().with(
            Requirement::new(labels::INSTANCE_FAMILY, Operator::In, ["m5", "r5"])
                .unwrap()
                .with_min_values(2),
        );
        assert_eq!(
            plan(&reqs, &types(), &cache(), 1),
            Err(Error::MinValues {
                key: labels::INSTANCE_FAMILY.to_owned(),
                min_values: 2,
                available: 1
            })
        );
        assert!(plan(&reqs, &types(), &cache(), 2).is_ok());
    }
}
