//! The cloud-provider seam: launching, describing and terminating instances.
//!
//! `spot-aws` implements [`CloudProvider`] over EC2 CreateFleet; simulations implement it in
//! memory. Price logic (which candidates, in which order) stays on our side of the seam.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::instance_type::CapacityType;

/// Errors of cloud providers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request was invalid before it was sent.
    #[error("invalid launch request: {0}")]
    InvalidRequest(String),
    /// The provider's API failed.
    #[error("{operation} failed: {message}")]
    Api {
        /// The operation (`CreateFleet`, `TerminateInstances`, ...).
        operation: &'static str,
        /// What the API said.
        message: String,
    },
}

/// One (instance type, zone) pool a launch may use, with the price we expect to pay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaunchCandidate {
    /// Instance type name.
    pub instance_type: String,
    /// Availability zone.
    pub zone: String,
    /// Expected price in USD per hour.
    pub price: f64,
}

/// How the provider chooses among spot candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AllocationStrategy {
    /// Lowest price among pools with the most available capacity (spot default).
    PriceCapacityOptimized,
    /// Most available capacity.
    CapacityOptimized,
    /// Lowest price (on-demand default).
    LowestPrice,
    /// Spread across pools.
    Diversified,
}

/// A request for `count` instances of one capacity type from a list of candidate pools.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetRequest {
    /// Spot or on-demand.
    pub capacity_type: CapacityType,
    /// The pools, cheapest first.
    pub candidates: Vec<LaunchCandidate>,
    /// How many instances.
    pub count: u32,
    /// How to choose among candidates.
    pub strategy: AllocationStrategy,
    /// Tags to put on the instances.
    pub tags: BTreeMap<String, String>,
}

/// An instance as the provider describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    /// Instance id.
    pub id: String,
    /// Instance type name.
    pub instance_type: String,
    /// Availability zone.
    pub zone: String,
    /// Spot or on-demand.
    pub capacity_type: CapacityType,
    /// Private DNS name (the node name on EKS with the default naming).
    pub private_dns_name: String,
    /// The provider's state name (`running`, `terminated`, ...).
    pub state: String,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// Launch time.
    #[serde(with = "time::serde::rfc3339::option")]
    pub launch_time: Option<OffsetDateTime>,
}

impl Instance {
    /// The Kubernetes provider id: `aws:///<zone>/<instance-id>`.
    pub fn provider_id(&self) -> String {
        format!("aws:///{}/{}", self.zone, self.id)
    }
}

/// A pool that failed during a launch, such as `InsufficientInstanceCapacity`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchError {
    /// Instance type, when the error names one.
    pub instance_type: Option<String>,
    /// Zone, when the error names one.
    pub zone: Option<String>,
    /// The provider's error code.
    pub code: String,
    /// The provider's message.
    pub message: String,
}

impl LaunchError {
    /// Whether the error means "no capacity in that pool right now" (try another pool).
    pub fn is_insufficient_capacity(&self) -> bool {
        matches!(
            self.code.as_str(),
            "InsufficientInstanceCapacity"
                | "InsufficientCapacity"
                | "UnfulfillableCapacity"
                | "SpotMaxPriceTooLow"
        )
    }

    /// Whether the account hit its spot instance limit (do not fall back: report it).
    pub fn is_spot_limit(&self) -> bool {
        self.code == "MaxSpotInstanceCountExceeded"
    }
}

/// What a launch produced: instances and per-pool errors (both can be non-empty).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetResult {
    /// Launched instances.
    pub instances: Vec<Instance>,
    /// Pools that failed.
    pub errors: Vec<LaunchError>,
}

/// A cloud that launches, describes and terminates instances.
#[async_trait]
pub trait CloudProvider: Send + Sync {
    /// Launches instances (EC2 CreateFleet `instant`).
    async fn launch(&self, request: &FleetRequest) -> Result<FleetResult, Error>;

    /// Terminates instances. Unknown or already terminated instances are not an error.
    async fn terminate(&self, instance_ids: &[String]) -> Result<(), Error>;

    /// Describes instances by id; unknown ids are left out of the result.
    async fn describe(&self, instance_ids: &[String]) -> Result<Vec<Instance>, Error>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_id_and_error_classes() {
        let i = Instance {
            id: "i-1".into(),
            instance_type: "m5.large".into(),
            zone: "us-east-1a".into(),
            capacity_type: CapacityType::Spot,
            private_dns_name: "ip-10-0-0-1.ec2.internal".into(),
            state: "running".into(),
            tags: BTreeMap::new(),
            launch_time: None,
        };
        assert_eq!(i.provider_id(), "aws:///us-east-1a/i-1");
        let ice = LaunchError {
            instance_type: None,
            zone: None,
            code: "InsufficientInstanceCapacity".into(),
            message: String::new(),
        };
        assert!(ice.is_insufficient_capacity() && !ice.is_spot_limit());
        let lim = LaunchError {
            code: "MaxSpotInstanceCountExceeded".into(),
            ..ice
        };
        assert!(lim.is_spot_limit() && !lim.is_insufficient_capacity());
    }
}
