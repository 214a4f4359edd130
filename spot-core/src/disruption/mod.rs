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
//! - [`cluster`]: the inputs (nodes, candidates, NodePool policies) and options.
//! - [`consolidation`]: emptiness, drift, multi- and single-node consolidation and
//!   expiration, their [`Command`]s and re-validation; [`simulate`] is the scheduling simulation behind them
//!   and [`replacement`] the rules a replacement node must meet.
//! - [`bench_shape`]: a generated cluster for benchmarks and tests.

pub mod bench_shape;
pub mod budget;
pub mod candidate;
pub mod cluster;
pub mod consolidation;
pub mod cost;
pub mod cron;
pub mod drift;
pub mod duration;
pub mod replacement;
pub mod simulate;

pub use budget::{Budget, Budgets, Reason};
pub use candidate::{Blocked, Candidate, Pdb, Pdbs};
pub use cluster::{ClusterState, ConsolidationOptions, ConsolidationPolicy, PoolPolicy};
pub use consolidation::{
    Command, Consolidator, Decision, compute_commands, emptiness, expiration, validate_command,
};
