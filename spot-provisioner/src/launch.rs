//! From a NodeClaim's candidate instance types to a launched instance, as Karpenter's AWS
//! provider does (karpenter.md §2), with the fallback done inside one call:
//!
//! 1. The capacity type: spot when the claim allows it and some candidate has an available
//!    spot offering, otherwise on-demand. One request is always one capacity type.
//! 2. Spot offerings priced above the cheapest compatible on-demand offering are dropped.
//! 3. Types are ordered by their cheapest available offering and truncated to
//!    [`LaunchOptions::max_instance_types`] (60, EC2 Fleet's practical limit), keeping every
//!    requirement's `minValues` satisfied.
//! 4. The provider gets one fleet request (`price-capacity-optimized` for spot,
//!    `lowest-price` for on-demand).
//! 5. Insufficient-capacity errors mark their (type, zone, capacity type) offering
//!    unavailable (with the per-offering back-off of [`UnavailableOfferings`]) and the plan
//!    is made again from what is left, falling back to other spot pools and then to
//!    on-demand before the call returns. `MaxSpotInstanceCountExceeded` does not fall back.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use spot_core::cloud::{
    AllocationStrategy, CloudProvider, FleetRequest, Instance, LaunchCandidate, LaunchError,
};
use spot_core::instance_type::CapacityType;
use spot_core::labels;
use spot_core::offerings::UnavailableOfferings;
use spot_core::requirements::Requirements;
use spot_core::scheduling::InstanceTypeOption;

/// Errors of a launch.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No candidate has an available offering compatible with the claim.
    #[error("no available offering for {claim}: {reason}")]
    NoOffering {
        /// The NodeClaim.
        claim: String,
        /// What was left out and why.
        reason: String,
    },
    /// Truncation would leave fewer distinct values than a requirement's `minValues`.
    #[error("{claim}: requirement {key} needs {min_values} distinct values, only {available} remain")]
    MinValues {
        /// The NodeClaim.
        claim: String,
        /// The requirement key.
        key: String,
        /// Its minValues.
        min_values: u32,
        /// Distinct values left.
        available: usize,
    },
    /// The account reached its spot instance limit: reported, never retried on-demand.
    #[error("{claim}: spot instance limit reached: {message}")]
    SpotLimit {
        /// The NodeClaim.
        claim: String,
        /// The provider's message.
        message: String,
    },
    /// Every pool tried was out of capacity.
    #[error("{claim}: insufficient capacity in every pool tried ({tried} requests): {last}")]
    InsufficientCapacity {
        /// The NodeClaim.
        claim: String,
        /// Requests sent.
        tried: usize,
        /// The last error.
        last: String,
    },
    /// The provider failed for another reason.
    #[error("{claim}: launch failed: {message}")]
    Provider {
        /// The NodeClaim.
        claim: String,
        /// What failed.
        message: String,
    },
}

/// Launch settings.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchOptions {
    /// At most this many instance types per fleet request (Karpenter: 60).
    pub max_instance_types: usize,
    /// At most this many fleet requests per launch (each one marks at least one offering
    /// unavailable, so this only bounds pathological providers).
    pub max_attempts: usize,
}

impl Default for LaunchOptions {
    fn default() -> Self {
        LaunchOptions {
            max_instance_types: 60,
            max_attempts: 16,
        }
    }
}

/// The result of planning: one fleet request, before tags.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchPlan {
    /// The capacity type of the request.
    pub capacity_type: CapacityType,
    /// Pools, cheapest type first (a type's offerings stay together).
    pub candidates: Vec<LaunchCandidate>,
    /// Distinct instance types in the request.
    pub instance_types: Vec<String>,
}

fn capacity_type_allowed(reqs: &Requirements, ct: CapacityType) -> bool {
    reqs.get(labels::CAPACITY_TYPE)
        .is_none_or(|r| r.matches(Some(ct.as_str())))
}

fn zone_allowed(reqs: &Requirements, zone: &str) -> bool {
    reqs.get(labels::ZONE).is_none_or(|r| r.matches(Some(zone)))
}

/// Plans one fleet request for a claim: see the module documentation for the rules.
pub fn plan(
    claim: &str,
    requirements: &Requirements,
    types: &[Arc<InstanceTypeOption>],
    unavailable: &UnavailableOfferings,
    options: &LaunchOptions,
) -> Result<LaunchPlan, Error> {
    // Available offerings per type, compatible with the claim's zone and capacity type.
    let mut usable: Vec<(&InstanceTypeOption, Vec<(&str, CapacityType, f64)>)> = Vec::new();
    for t in types {
        let name = &t.instance_type.name;
        let offers: Vec<_> = t
            .offerings
            .iter()
            .filter(|o| {
                o.available
                    && capacity_type_allowed(requirements, o.capacity_type)
                    && zone_allowed(requirements, &o.zone)
                    && !unavailable.is_unavailable(name, &o.zone, o.capacity_type)
            })
            .map(|o| (o.zone.as_str(), o.capacity_type, o.price))
            .collect();
        if !offers.is_empty() {
            usable.push((t, offers));
        }
    }
    let has = |ct: CapacityType| usable.iter().any(|(_, o)| o.iter().any(|x| x.1 == ct));
    let capacity_type = if has(CapacityType::Spot) {
        CapacityType::Spot
    } else if has(CapacityType::OnDemand) {
        CapacityType::OnDemand
    } else {
        return Err(Error::NoOffering {
            claim: claim.to_owned(),
            reason: format!(
                "{} candidate types, none with an available offering matching the claim's zone and capacity-type requirements",
                types.len()
            ),
        });
    };
    let cheapest_on_demand = usable
        .iter()
        .flat_map(|(_, o)| o.iter())
        .filter(|x| x.1 == CapacityType::OnDemand)
        .map(|x| x.2)
        .fold(f64::INFINITY, f64::min);
    let mut ranked: Vec<(&InstanceTypeOption, Vec<(&str, f64)>, f64)> = usable
        .into_iter()
        .filter_map(|(t, offers)| {
            let mut o: Vec<(&str, f64)> = offers
                .into_iter()
                .filter(|x| x.1 == capacity_type)
                // Karpenter's SpotOfferingFilter: a spot pool dearer than on-demand is never worth it.
                .filter(|x| capacity_type == CapacityType::OnDemand || x.2 <= cheapest_on_demand)
                .map(|x| (x.0, x.2))
                .collect();
            o.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(b.0)));
            let min = o.first()?.1;
            Some((t, o, min))
        })
        .collect();
    if ranked.is_empty() {
        return Err(Error::NoOffering {
            claim: claim.to_owned(),
            reason: "every spot offering is priced above the cheapest on-demand offering".into(),
        });
    }
    ranked.sort_by(|a, b| {
        a.2.total_cmp(&b.2)
            .then_with(|| a.0.instance_type.name.cmp(&b.0.instance_type.name))
    });
    ranked.truncate(options.max_instance_types.max(1));
    check_min_values(claim, requirements, ranked.iter().map(|r| r.0))?;
    let mut candidates = Vec::new();
    let mut instance_types = Vec::new();
    for (t, offers, _) in &ranked {
        instance_types.push(t.instance_type.name.clone());
        for (zone, price) in offers {
            candidates.push(LaunchCandidate {
                instance_type: t.instance_type.name.clone(),
                zone: (*zone).to_owned(),
                price: *price,
            });
        }
    }
    Ok(LaunchPlan {
        capacity_type,
        candidates,
        instance_types,
    })
}

/// Checks every requirement with `minValues` against the types kept.
fn check_min_values<'a>(
    claim: &str,
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
                claim: claim.to_owned(),
                key: r.key().to_owned(),
                min_values: min,
                available: distinct.len(),
            });
        }
    }
    Ok(())
}

/// What [`launch`] did, for metrics, events and logs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LaunchReport {
    /// Fleet requests sent.
    pub requests: usize,
    /// Offerings marked unavailable on the way.
    pub marked_unavailable: Vec<(String, String, CapacityType)>,
    /// The capacity type of the successful request.
    pub capacity_type: Option<CapacityType>,
}

/// Plans and sends fleet requests for one claim until an instance is launched, falling back
/// through the remaining pools and capacity types within the call.
pub async fn launch(
    cloud: &dyn CloudProvider,
    claim: &str,
    requirements: &Requirements,
    types: &[Arc<InstanceTypeOption>],
    unavailable: &UnavailableOfferings,
    tags: &BTreeMap<String, String>,
    options: &LaunchOptions,
) -> (Result<Instance, Error>, LaunchReport) {
    let mut report = LaunchReport::default();
    let mut last = String::new();
    while report.requests < options.max_attempts.max(1) {
        let plan = match plan(claim, requirements, types, unavailable, options) {
            Ok(p) => p,
            Err(e @ Error::NoOffering { .. }) if report.requests > 0 => {
                let _ = e;
                return (
                    Err(Error::InsufficientCapacity {
                        claim: claim.to_owned(),
                        tried: report.requests,
                        last,
                    }),
                    report,
                );
            }
            Err(e) => return (Err(e), report),
        };
        let request = FleetRequest {
            capacity_type: plan.capacity_type,
            candidates: plan.candidates.clone(),
            count: 1,
            strategy: match plan.capacity_type {
                CapacityType::Spot => AllocationStrategy::PriceCapacityOptimized,
                CapacityType::OnDemand => AllocationStrategy::LowestPrice,
            },
            tags: tags.clone(),
        };
        report.requests += 1;
        let result = match cloud.launch(&request).await {
            Ok(r) => r,
            Err(e) => {
                return (
                    Err(Error::Provider {
                        claim: claim.to_owned(),
                        message: e.to_string(),
                    }),
                    report,
                );
            }
        };
        if let Some(instance) = result.instances.into_iter().next() {
            unavailable.succeeded(&instance.instance_type, &instance.zone, instance.capacity_type);
            report.capacity_type = Some(plan.capacity_type);
            return (Ok(instance), report);
        }
        if let Some(limit) = result.errors.iter().find(|e| e.is_spot_limit()) {
            return (
                Err(Error::SpotLimit {
                    claim: claim.to_owned(),
                    message: limit.message.clone(),
                }),
                report,
            );
        }
        if result.errors.is_empty() || !result.errors.iter().all(LaunchError::is_insufficient_capacity) {
            let message = result
                .errors
                .iter()
                .find(|e| !e.is_insufficient_capacity())
                .map(|e| format!("{}: {}", e.code, e.message))
                .unwrap_or_else(|| "the provider returned neither an instance nor an error".into());
            return (
                Err(Error::Provider {
                    claim: claim.to_owned(),
                    message,
                }),
                report,
            );
        }
        for e in &result.errors {
            last = format!("{}: {}", e.code, e.message);
            // An error that names no pool covers every pool of the request.
            for c in plan.candidates.iter().filter(|c| {
                e.instance_type.as_deref().is_none_or(|t| t == c.instance_type)
                    && e.zone.as_deref().is_none_or(|z| z == c.zone)
            }) {
                unavailable.mark(&c.instance_type, &c.zone, plan.capacity_type);
                report
                    .marked_unavailable
                    .push((c.instance_type.clone(), c.zone.clone(), plan.capacity_type));
            }
        }
    }
    (
        Err(Error::InsufficientCapacity {
            claim: claim.to_owned(),
            tried: report.requests,
            last,
        }),
        report,
    )
}
