//! Disruption: which nodes to remove or replace, and when, after Karpenter's disruption
//! controller. Pure algorithms: callers build the inputs from the cluster and act on the
//! commands.
//!
//! - [`budget`]: NodePool disruption budgets (counts, percentages, reasons, cron windows),
//!   with [`cron`] schedules and Go [`duration`]s.

pub mod budget;
pub mod cron;
pub mod duration;

pub use budget::{Budget, Budgets, Reason};
