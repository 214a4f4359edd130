//! What the disruption methods read: the cluster (nodes, candidates, pending pods), the
//! NodePools (templates for replacements, policies and budgets) and the options.

use std::collections::BTreeSet;
use std::sync::Arc;

use time::OffsetDateTime;

use super::budget::{Budgets, Reason};
use super::candidate::{Blocked, Candidate, Pdbs};
use super::cost::BALANCED_K;
use crate::pod::PodSpec;
use crate::scheduling::{ExistingNode, NodePoolTemplate, SchedulerOptions};

/// A NodePool's `consolidationPolicy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum ConsolidationPolicy {
    /// Empty nodes, and nodes whose pods fit elsewhere or on a cheaper node (the default).
    #[default]
    WhenEmptyOrUnderutilized,
    /// Empty nodes only.
    WhenEmpty,
    /// Like `WhenEmptyOrUnderutilized`, but a move must save enough for the disruption it
    /// causes (see [`cost::balanced_score`](super::cost::balanced_score)).
    Balanced,
}

/// A NodePool's disruption settings and node counts.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolPolicy {
    /// The NodePool's name.
    pub name: String,
    /// `spec.disruption.consolidationPolicy`.
    pub consolidation_policy: ConsolidationPolicy,
    /// `spec.disruption.budgets`, validated.
    pub budgets: Budgets,
    /// The `Balanced` threshold `k` (default [`BALANCED_K`]).
    pub balanced_k: u32,
    /// Whether `spec.template.spec.terminationGracePeriod` is set (drift then ignores pod
    /// blocks when building candidates; see [`Candidate::validate`]).
    pub termination_grace_period: bool,
    /// The pool's managed, initialized nodes not yet terminating (the budgets' total).
    pub total_nodes: usize,
    /// How many of them are NotReady or already deleting.
    pub disrupting: usize,
}

impl PoolPolicy {
    /// A pool with the default policy and budgets (`10%`) over `total_nodes` nodes.
    pub fn new(name: impl Into<String>, total_nodes: usize) -> PoolPolicy {
        PoolPolicy {
            name: name.into(),
            consolidation_policy: ConsolidationPolicy::default(),
            budgets: Budgets::default(),
            balanced_k: BALANCED_K,
            termination_grace_period: false,
            total_nodes,
            disrupting: 0,
        }
    }

    /// How many more of the pool's nodes may be disrupted for `reason` at `now`.
    pub fn allowed(&self, reason: Reason, now: OffsetDateTime) -> usize {
        self.budgets
            .allowed(reason, self.total_nodes, self.disrupting, now)
    }
}

/// The cluster as the disruption methods see it.
#[derive(Debug, Clone, Default)]
pub struct ClusterState {
    /// Every NodePool as the scheduler launches from it (replacements come from these).
    pub templates: Vec<NodePoolTemplate>,
    /// Every node and in-flight NodeClaim with its bound pods, candidates included.
    pub nodes: Vec<ExistingNode>,
    /// The nodes disruption may act on, already checked with [`Candidate::validate`]; each
    /// names a node of `nodes`. Include every valid candidate (consolidatable or not): the
    /// `Balanced` totals are computed over all of them.
    pub candidates: Vec<Candidate>,
    /// Every NodePool's disruption settings.
    pub pools: Vec<PoolPolicy>,
    /// The DaemonSets (their overhead on replacements).
    pub daemonsets: Vec<PodSpec>,
    /// Pending pods and the reschedulable pods of nodes already deleting: simulations place
    /// them too, as Karpenter does, so a consolidation never takes capacity they need.
    pub pending: Vec<Arc<PodSpec>>,
    /// Nodes still inside their `consolidateAfter` window since their last pod event:
    /// simulations do not move pods onto them (they may be about to change).
    pub non_destinations: BTreeSet<String>,
}

impl ClusterState {
    /// The policy of a pool.
    pub fn pool(&self, name: &str) -> Option<&PoolPolicy> {
        self.pools.iter().find(|p| p.name == name)
    }

    /// Drops the candidates that may not be disrupted now (see [`Candidate::validate`]) and
    /// returns why, in candidate order. A drifted candidate of a pool with a
    /// `terminationGracePeriod` that only its pods block stays for drift (which then ignores
    /// them, as Karpenter's eventual disruption does) but is marked not consolidatable.
    pub fn retain_disruptable(&mut self, pdbs: &Pdbs, now: OffsetDateTime) -> Vec<Blocked> {
        let mut blocked = Vec::new();
        let pools = &self.pools;
        self.candidates.retain_mut(|c| {
            let Err(why) = c.validate(pdbs, now, false) else {
                return true;
            };
            let eventual = c.drifted.is_some()
                && pools
                    .iter()
                    .any(|p| p.name == c.nodepool && p.termination_grace_period);
            if eventual && c.validate(pdbs, now, true).is_ok() {
                c.consolidatable = false;
                return true;
            }
            blocked.push(why);
            false
        });
        blocked
    }

    /// A candidate by node name.
    pub fn candidate(&self, node: &str) -> Option<&Candidate> {
        self.candidates.iter().find(|c| c.node_name == node)
    }
}

/// Knobs of the disruption methods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsolidationOptions {
    /// Whether a spot node may be replaced by a cheaper spot node (Karpenter's
    /// `SpotToSpotConsolidation` feature gate; on by default here).
    pub spot_to_spot: bool,
    /// Single-node spot-to-spot needs at least this many cheaper types, and launches with the
    /// this many cheapest (or what `minValues` needs): 15, as Karpenter.
    pub min_spot_to_spot_types: usize,
    /// Multi-node consolidation considers at most this many candidates (Karpenter: 100).
    pub multi_node_max_candidates: usize,
    /// After the binary search, how many further candidates multi-node consolidation tries to
    /// add one at a time.
    pub multi_node_extension_attempts: usize,
    /// The scheduling simulation's options.
    pub scheduler: SchedulerOptions,
}

impl Default for ConsolidationOptions {
    fn default() -> ConsolidationOptions {
        ConsolidationOptions {
            spot_to_spot: true,
            min_spot_to_spot_types: 15,
            multi_node_max_candidates: 100,
            multi_node_extension_attempts: 16,
            scheduler: SchedulerOptions::default(),
        }
    }
}
