//! Disruption: which nodes to remove or replace, and when, after Karpenter's disruption
//! controller. Pure algorithms: callers build the inputs from the cluster and act on the
//! commands.
//!
//! - [`budget`]: NodePool disruption budgets (counts, percentages, reasons, cron windows),
//!   with [`cron`] schedules and Go [`duration`]s.
//! - [`cost`]: eviction, disruption and reschedule costs, savings ratios, the `Balanced` score.
//! - [`candidate`]: the nodes disruption may act on, and what blocks them (do-not-disrupt,
//!   PodDisruptionBudgets).
//! - [`drift`]: the NodePool template hash, requirements drift, expiration.

pub mod budget;
pub mod candidate;
pub mod cost;
pub mod cron;
pub mod drift;
pub mod duration;

pub use budget::{Budget, Budgets, Reason};
pub use candidate::{Blocked, Candidate, Pdb, Pdbs};
