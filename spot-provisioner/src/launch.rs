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
//!
//! Steps 1 to 3 are [`spot_core::launch::plan`], which spot-sim's simulation shares.

use std::collections::BTreeMap;
use std::sync::Arc;

use spot_core::cloud::{CloudProvider, FleetRequest, Instance, LaunchError};
use spot_core::instance_type::CapacityType;
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
    /// At most this many instance types per fleet request (Karpenter: 60,
    /// [`spot_core::launch::MAX_INSTANCE_TYPES`]).
    pub max_instance_types: usize,
    /// At most this many fleet requests per launch (each one marks at least one offering
    /// unavailable, so this only bounds pathological providers).
    pub max_attempts: usize,
}

impl Default for LaunchOptions {
    fn default() -> Self {
        LaunchOptions {
            max_instance_types: spot_core::launch::MAX_INSTANCE_TYPES,
            max_attempts: 16,
        }
    }
}

pub use spot_core::launch::LaunchPlan;

/// Plans one fleet request for a claim with [`spot_core::launch::plan`] (see the module
/// documentation for the rules); the error names the claim.
pub fn plan(
    claim: &str,
    requirements: &Requirements,
    types: &[Arc<InstanceTypeOption>],
    unavailable: &UnavailableOfferings,
    options: &LaunchOptions,
) -> Result<LaunchPlan, Error> {
    spot_core::launch::plan(requirements, types, unavailable, options.max_instance_types).map_err(|e| match e
    {
        spot_core::launch::Error::NoOffering { .. } => Error::NoOffering {
            claim: claim.to_owned(),
            reason: e.to_string(),
        },
        spot_core::launch::Error::MinValues {
            key,
            min_values,
            available,
        } => Error::MinValues {
            claim: claim.to_owned(),
            key,
            min_values,
            available,
        },
    })
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
            strategy: plan.default_strategy(),
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use spot_core::clock::FixedClock;
    use spot_core::cloud::AllocationStrategy;
    use spot_core::cloud::{Error as CloudError, FleetResult};
    use spot_core::labels;
    use spot_core::requirements::{Operator, Requirement};
    use time::OffsetDateTime;

    use super::*;

    fn option(name: &str, vcpus: u32, offers: &[(&str, CapacityType, f64)]) -> Arc<InstanceTypeOption> {
        Arc::new(InstanceTypeOption::synthetic(name, vcpus, u64::from(vcpus) * 4096, offers).unwrap())
    }

    fn cache() -> UnavailableOfferings {
        UnavailableOfferings::new(Arc::new(FixedClock(OffsetDateTime::UNIX_EPOCH)))
    }

    use CapacityType::{OnDemand, Spot};

    fn types() -> Vec<Arc<InstanceTypeOption>> {
        vec![
            option(
                "m5.xlarge",
                4,
                &[("us-east-1a", Spot, 0.08), ("us-east-1a", OnDemand, 0.192)],
            ),
            option(
                "m5.large",
                2,
                &[
                    ("us-east-1a", Spot, 0.04),
                    ("us-east-1b", Spot, 0.05),
                    ("us-east-1a", OnDemand, 0.096),
                ],
            ),
            // A spot pool dearer than the cheapest on-demand one is dropped.
            option(
                "c5.large",
                2,
                &[("us-east-1a", Spot, 0.50), ("us-east-1a", OnDemand, 0.085)],
            ),
        ]
    }

    #[test]
    fn spot_first_cheapest_first_and_no_spot_above_on_demand() {
        let p = plan(
            "c1",
            &Requirements::new(),
            &types(),
            &cache(),
            &LaunchOptions::default(),
        )
        .unwrap();
        assert_eq!(p.capacity_type, Spot);
        assert_eq!(p.instance_types, ["m5.large", "m5.xlarge"]);
        assert_eq!(p.candidates[0].zone, "us-east-1a");
        assert!(p.candidates.iter().all(|c| c.instance_type != "c5.large"));
    }

    #[test]
    fn on_demand_when_spot_is_not_allowed_and_truncation() {
        let reqs = Requirements::new()
            .with(Requirement::new(labels::CAPACITY_TYPE, Operator::In, ["on-demand"]).unwrap());
        let opts = LaunchOptions {
            max_instance_types: 2,
            ..LaunchOptions::default()
        };
        let p = plan("c1", &reqs, &types(), &cache(), &opts).unwrap();
        assert_eq!(p.capacity_type, OnDemand);
        assert_eq!(p.instance_types, ["c5.large", "m5.large"]);
    }

    #[test]
    fn min_values_counts_what_survives_truncation() {
        let reqs = Requirements::new().with(
            Requirement::new(labels::INSTANCE_FAMILY, Operator::In, ["m5", "c5"])
                .unwrap()
                .with_min_values(2),
        );
        let opts = LaunchOptions {
            max_instance_types: 1,
            ..LaunchOptions::default()
        };
        let err = plan("c1", &reqs, &types(), &cache(), &opts).unwrap_err();
        assert!(matches!(err, Error::MinValues { available: 1, .. }), "{err}");
    }

    /// A cloud that answers each request with the next scripted result and records requests.
    struct Scripted(Mutex<Vec<FleetResult>>, Mutex<Vec<FleetRequest>>);

    #[async_trait]
    impl CloudProvider for Scripted {
        async fn launch(&self, request: &FleetRequest) -> Result<FleetResult, CloudError> {
            self.1.lock().unwrap().push(request.clone());
            let mut s = self.0.lock().unwrap();
            Ok(if s.is_empty() {
                FleetResult::default()
            } else {
                s.remove(0)
            })
        }
        async fn terminate(&self, _: &[String]) -> Result<(), CloudError> {
            Ok(())
        }
        async fn describe(&self, _: &[String]) -> Result<Vec<Instance>, CloudError> {
            Ok(Vec::new())
        }
    }

    fn ice(t: Option<&str>, z: Option<&str>) -> LaunchError {
        LaunchError {
            instance_type: t.map(str::to_owned),
            zone: z.map(str::to_owned),
            code: "InsufficientInstanceCapacity".into(),
            message: "no capacity".into(),
        }
    }

    fn instance(t: &str, z: &str, ct: CapacityType) -> Instance {
        Instance {
            id: "i-1".into(),
            instance_type: t.into(),
            zone: z.into(),
            capacity_type: ct,
            private_dns_name: "ip-10-0-0-1.ec2.internal".into(),
            state: "running".into(),
            tags: BTreeMap::new(),
            launch_time: None,
        }
    }

    #[tokio::test]
    async fn spot_capacity_errors_fall_back_to_on_demand_in_the_same_call() {
        let cloud = Scripted(
            Mutex::new(vec![
                FleetResult {
                    instances: vec![],
                    errors: vec![ice(None, None)],
                },
                FleetResult {
                    instances: vec![instance("c5.large", "us-east-1a", OnDemand)],
                    errors: vec![],
                },
            ]),
            Mutex::new(Vec::new()),
        );
        let unavailable = cache();
        let (r, report) = launch(
            &cloud,
            "c1",
            &Requirements::new(),
            &types(),
            &unavailable,
            &BTreeMap::new(),
            &LaunchOptions::default(),
        )
        .await;
        let i = r.unwrap();
        assert_eq!(i.capacity_type, OnDemand);
        assert_eq!(report.requests, 2);
        let sent = cloud.1.lock().unwrap();
        assert_eq!(sent[0].capacity_type, Spot);
        assert_eq!(sent[0].strategy, AllocationStrategy::PriceCapacityOptimized);
        assert_eq!(sent[1].capacity_type, OnDemand);
        assert_eq!(sent[1].strategy, AllocationStrategy::LowestPrice);
        assert!(unavailable.is_unavailable("m5.large", "us-east-1b", Spot));
        assert_eq!(
            report.marked_unavailable.len(),
            3,
            "every spot pool of the request"
        );
    }

    #[tokio::test]
    async fn a_pool_error_only_marks_that_pool_and_retries_spot() {
        let cloud = Scripted(
            Mutex::new(vec![
                FleetResult {
                    instances: vec![],
                    errors: vec![ice(Some("m5.large"), Some("us-east-1a"))],
                },
                FleetResult {
                    instances: vec![instance("m5.large", "us-east-1b", Spot)],
                    errors: vec![],
                },
            ]),
            Mutex::new(Vec::new()),
        );
        let unavailable = cache();
        let (r, _) = launch(
            &cloud,
            "c1",
            &Requirements::new(),
            &types(),
            &unavailable,
            &BTreeMap::new(),
            &LaunchOptions::default(),
        )
        .await;
        assert_eq!(r.unwrap().zone, "us-east-1b");
        let sent = cloud.1.lock().unwrap();
        assert!(
            !sent[1]
                .candidates
                .iter()
                .any(|c| c.instance_type == "m5.large" && c.zone == "us-east-1a")
        );
        assert_eq!(sent[1].capacity_type, Spot);
    }

    #[tokio::test]
    async fn spot_limit_is_reported_without_fallback() {
        let cloud = Scripted(
            Mutex::new(vec![FleetResult {
                instances: vec![],
                errors: vec![LaunchError {
                    code: "MaxSpotInstanceCountExceeded".into(),
                    ..ice(None, None)
                }],
            }]),
            Mutex::new(Vec::new()),
        );
        let (r, report) = launch(
            &cloud,
            "c1",
            &Requirements::new(),
            &types(),
            &cache(),
            &BTreeMap::new(),
            &LaunchOptions::default(),
        )
        .await;
        assert!(matches!(r, Err(Error::SpotLimit { .. })));
        assert_eq!(report.requests, 1);
    }

    #[tokio::test]
    async fn all_pools_exhausted_ends_with_insufficient_capacity() {
        let cloud = Scripted(
            Mutex::new(
                (0..10)
                    .map(|_| FleetResult {
                        instances: vec![],
                        errors: vec![ice(None, None)],
                    })
                    .collect(),
            ),
            Mutex::new(Vec::new()),
        );
        let (r, report) = launch(
            &cloud,
            "c1",
            &Requirements::new(),
            &types(),
            &cache(),
            &BTreeMap::new(),
            &LaunchOptions::default(),
        )
        .await;
        assert!(
            matches!(r, Err(Error::InsufficientCapacity { tried: 3, .. })),
            "{r:?}"
        );
        // Spot, then on-demand, then the spot pool that was dearer than on-demand (no
        // on-demand pool is left to compare it with), then nothing.
        assert_eq!(report.requests, 3);
    }
}
