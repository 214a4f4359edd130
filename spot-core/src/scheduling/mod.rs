//! The scheduling simulation: which pending pods fit existing nodes, and which new
//! NodeClaims (NodePool, requirements, instance types) to launch for the others.
//!
//! The semantics follow Karpenter's provisioning scheduler (see `karpenter.md` §1.2–1.6):
//! existing nodes first (deterministic first fit), then this solve's new claims (fewest pods
//! first), then new claims from NodePools by weight; the queue is ordered by CPU, memory,
//! creation and UID and cycled until a pass makes no progress; soft constraints are relaxed
//! in Karpenter's order. Pods whose only constraints are node requirements and tolerations
//! are packed for cost after the constrained pods are placed.
//!
//! Deliberate differences from Karpenter, each in the direction of scheduling more pods per
//! solve or cheaper claims:
//!
//! - Pods whose only constraints are node requirements and tolerations ("free" pods: no
//!   topology spread, pod affinity or anti-affinity, host ports, and not selected by the
//!   anti-affinity of another pod) are placed after the constrained ones: on existing nodes
//!   first (as Karpenter), then in the headroom of this solve's claims (only where their
//!   current cheapest instance type still holds them, so the claim's price does not change),
//!   and the rest are packed per (NodePool, requirements) by [`crate::packing::pack`], which
//!   minimises the total price. Constrained pods that waited for them (pod affinity) are
//!   retried afterwards.
//! - Topology constraints narrow a claim's requirements one after the other (Karpenter
//!   computes them all against the same requirements), and pod anti-affinity on a claim
//!   whose zone is still open picks one free domain instead of blocking every possible one,
//!   so a Deployment with zonal anti-affinity gets one pod per zone in a single solve.
//! - Not modelled: volume topology and CSI volume limits, dynamic resource allocation,
//!   reserved (capacity-reservation) offerings and namespace selectors of affinity terms.
//!
//! Every pending pod is tried at least once per solve (no starvation, see
//! [`Solution::pods_evaluated`]) unless [`SchedulerOptions::timeout`] stops it.
//!
//! - [`template`]: [`InstanceTypeOption`] and [`NodePoolTemplate`] (what can be launched).
//! - [`existing`]: [`ExistingNode`] and [`InFlightClaim`] (what already exists).
//! - [`solve`]: [`Scheduler`], [`Solution`], [`NewNodeClaim`].
//! - `topology` (spread, affinity, anti-affinity counts), `preferences` (relaxation),
//!   `claim` (claims being built), `intern` (interning and caches): internals.
//! - [`bench_shape`]: the workloads of Karpenter's scheduling benchmark and of issue #3152.

use std::time::Duration;

pub mod bench_shape;
mod claim;
pub mod existing;
mod intern;
mod preferences;
pub mod solve;
pub mod template;
mod topology;

pub use claim::NewNodeClaim;
pub use existing::{ExistingNode, InFlightClaim};
pub use solve::{Scheduler, Solution};
pub use template::{InstanceTypeOption, NODES_LIMIT, NodePoolTemplate, type_requirements};

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// An instance type without any offering cannot be launched.
    #[error("instance type {instance_type:?} has no offering")]
    NoOfferings {
        /// The instance type.
        instance_type: String,
    },
    /// The instance type's labels cannot be derived.
    #[error(transparent)]
    Labels(#[from] crate::labels::Error),
    /// A synthetic instance type's name does not parse.
    #[error(transparent)]
    Catalog(#[from] crate::catalog::Error),
}

/// Whether soft constraints count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PreferencePolicy {
    /// Preferences are treated as requirements until relaxed (Karpenter's default).
    #[default]
    Respect,
    /// Preferred affinities and `ScheduleAnyway` spread constraints are ignored.
    Ignore,
}

/// What happens when a NodeClaim cannot keep `minValues` distinct values of a key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MinValuesPolicy {
    /// The NodeClaim is not created and its pods are unschedulable (Karpenter's default).
    #[default]
    Strict,
    /// The NodeClaim is created anyway and marked as relaxed.
    BestEffort,
}

/// Options of a [`Scheduler`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerOptions {
    /// Whether preferences are respected.
    pub preference_policy: PreferencePolicy,
    /// The most instance types a NodeClaim lists (Karpenter: 600).
    pub max_instance_types: usize,
    /// What to do when `minValues` cannot be met.
    pub min_values_policy: MinValuesPolicy,
    /// Stop after this long (pods not reached are reported); `None`: no timeout.
    pub timeout: Option<Duration>,
}

/// Karpenter's `MaxInstanceTypes`.
pub const MAX_INSTANCE_TYPES: usize = 600;

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions {
            preference_policy: PreferencePolicy::Respect,
            max_instance_types: MAX_INSTANCE_TYPES,
            min_values_policy: MinValuesPolicy::Strict,
            timeout: None,
        }
    }
}

#[cfg(test)]
mod tests;
