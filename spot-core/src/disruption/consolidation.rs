//! The disruption methods and their commands, after Karpenter's disruption controller
//! (`karpenter.md` §3): per loop the first method that finds something acts, in the order
//! [`emptiness`], [drift](Consolidator::drift), [multi-node](Consolidator::multi_node),
//! [single-node](Consolidator::single_node) ([`compute_commands`]). [`expiration`] runs on
//! its own, as Karpenter's expiration controller.
//!
//! - **Emptiness**: every empty, consolidatable candidate the budgets allow, in one delete.
//! - **Drift**: empty drifted candidates in one delete; otherwise the oldest drifted node
//!   whose pods can all be rescheduled, replaced by whatever new nodes they need.
//! - **Multi-node consolidation**: candidates by savings ratio, budget-filtered, at most
//!   [`multi_node_max_candidates`](ConsolidationOptions::multi_node_max_candidates). The
//!   whole list is tried first (more nodes can pay for a bigger replacement when fewer
//!   cannot); then Karpenter's binary search for the longest prefix that can be deleted or
//!   replaced by one cheaper node; then a greedy extension trying the following candidates
//!   one at a time. Validity is not monotone in the prefix length, so both additions find
//!   commands the binary search alone misses; the best saving found wins.
//! - **Single-node consolidation**: candidates by savings ratio, round-robin across
//!   NodePools; the first that can be deleted, or replaced by one cheaper node (see
//!   [`replacement`](super::replacement)), wins.
//!
//! `Balanced` pools only take moves whose score passes (see [`cost::balanced_score`]);
//! single-node consolidation skips their candidates whose best case (a delete) cannot pass.
//! [`validate_command`] repeats the decision after Karpenter's 15-second delay and drops the
//! command when its candidates, their pods or the outcome changed.

use std::collections::{BTreeMap, BTreeSet};

use time::OffsetDateTime;

use super::budget::Reason;
use super::candidate::Candidate;
use super::cluster::{ClusterState, ConsolidationOptions, ConsolidationPolicy};
use super::cost::{self, PoolTotals};
use super::replacement::{NoOp, replacement};
use super::simulate::{Outcome, PriceBound, Simulator, Stats};
use crate::instance_type::CapacityType;
use crate::scheduling::NewNodeClaim;

/// Karpenter's delay before a command is re-validated and executed (`commandValidationDelay`).
pub const COMMAND_VALIDATION_DELAY: std::time::Duration = std::time::Duration::from_secs(15);

/// Delete the candidates, or replace them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Their pods fit elsewhere.
    Delete,
    /// New nodes are launched first.
    Replace,
}

/// A disruption to carry out.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// Why.
    pub reason: Reason,
    /// The nodes to remove.
    pub candidates: Vec<String>,
    /// The nodes to launch first (none for a delete; at most one for consolidation; drift
    /// launches what the pods need).
    pub replacements: Vec<NewNodeClaim>,
    /// What the move saves per hour (candidates' prices minus the replacement's cheapest
    /// launch price).
    pub savings_per_hour: f64,
    /// The candidates' reschedulable pods (`namespace/name`, sorted) when the command was
    /// computed: validation drops the command when they changed.
    pub pods: Vec<String>,
}

impl Command {
    /// Delete or replace.
    pub fn decision(&self) -> Decision {
        if self.replacements.is_empty() {
            Decision::Delete
        } else {
            Decision::Replace
        }
    }

    /// The (first) replacement.
    pub fn replacement(&self) -> Option<&NewNodeClaim> {
        self.replacements.first()
    }
}

/// Why a command no longer holds at validation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Invalid {
    /// A node is no longer a candidate (gone, blocked, or no longer eligible).
    #[error("node {0} is no longer a candidate")]
    NotCandidate(String),
    /// A candidate's pods changed.
    #[error("the pods of node {0} changed")]
    PodsChanged(String),
    /// The budgets no longer allow the command.
    #[error("NodePool {pool}: the budget allows {allowed} disruptions, the command needs {needed}")]
    Budget {
        /// The NodePool.
        pool: String,
        /// What the budget allows now.
        allowed: usize,
        /// What the command needs.
        needed: usize,
    },
    /// The simulation no longer supports the command.
    #[error("the simulation changed: {0}")]
    Simulation(String),
}

/// Why single-node consolidation passed over a candidate.
#[derive(Debug, Clone, PartialEq)]
pub enum Skip {
    /// The pool's budget allows no more disruption.
    Budget,
    /// Under `Balanced`, even deleting the node would not score enough.
    Balanced,
    /// The simulation found nothing to do.
    NoOp(NoOp),
}

/// What single-node consolidation concluded for one candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// The candidate node.
    pub node: String,
    /// The command it would lead to, or why none.
    pub result: Result<Command, Skip>,
}

/// Whether consolidation (not emptiness) may act on the candidate: its type, zone and price
/// are known, it is consolidatable and not empty, and its pool's policy allows it.
fn consolidation_eligible(cluster: &ClusterState, c: &Candidate) -> bool {
    let policy = cluster.pool(&c.nodepool).map(|p| p.consolidation_policy);
    policy.is_some_and(|p| p != ConsolidationPolicy::WhenEmpty)
        && !c.instance_type.is_empty()
        && !c.zone.is_empty()
        && c.price > 0.0
        && c.consolidatable
        && !c.is_empty()
}

/// Candidates by descending savings ratio (ties: node name).
fn by_savings_ratio(mut candidates: Vec<&Candidate>) -> Vec<&Candidate> {
    let ratio: BTreeMap<&str, f64> = candidates
        .iter()
        .map(|c| (c.node_name.as_str(), c.savings_ratio()))
        .collect();
    candidates.sort_by(|a, b| {
        ratio[b.node_name.as_str()]
            .total_cmp(&ratio[a.node_name.as_str()])
            .then_with(|| a.node_name.cmp(&b.node_name))
    });
    candidates
}

/// The budget left per pool for a reason.
fn budgets(cluster: &ClusterState, reason: Reason, now: OffsetDateTime) -> BTreeMap<&str, usize> {
    cluster
        .pools
        .iter()
        .map(|p| (p.name.as_str(), p.allowed(reason, now)))
        .collect()
}

fn pod_keys(candidates: &[&Candidate]) -> Vec<String> {
    let mut keys: Vec<String> = candidates
        .iter()
        .flat_map(|c| c.reschedulable_pods().map(|p| p.key()))
        .collect();
    keys.sort();
    keys
}

/// One delete command over these candidates.
fn delete(reason: Reason, candidates: &[&Candidate]) -> Command {
    Command {
        reason,
        candidates: candidates.iter().map(|c| c.node_name.clone()).collect(),
        replacements: Vec::new(),
        savings_per_hour: candidates.iter().map(|c| c.price).sum(),
        pods: pod_keys(candidates),
    }
}

/// Emptiness: every empty, consolidatable candidate the `Empty` budgets allow, most
/// expensive first, in one delete command.
pub fn emptiness(cluster: &ClusterState, now: OffsetDateTime) -> Option<Command> {
    let mut budget = budgets(cluster, Reason::Empty, now);
    let empty: Vec<&Candidate> = cluster
        .candidates
        .iter()
        .filter(|c| c.consolidatable && c.is_empty() && cluster.pool(&c.nodepool).is_some())
        .collect();
    let mut taken = Vec::new();
    for c in by_savings_ratio(empty) {
        if let Some(left) = budget.get_mut(c.nodepool.as_str())
            && *left > 0
        {
            *left -= 1;
            taken.push(c);
        }
    }
    (!taken.is_empty()).then(|| delete(Reason::Empty, &taken))
}

/// Expiration: every node whose `expireAfter` has passed, in one delete command (oldest
/// first). As in Karpenter, budgets and `do-not-disrupt` do not hold expiration back (the
/// drain still honours PodDisruptionBudgets until the termination grace period ends), so pass
/// every node here, not only those [`ClusterState::retain_disruptable`] keeps.
pub fn expiration(candidates: &[Candidate], now: OffsetDateTime) -> Option<Command> {
    let mut expired: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| !c.deleting && super::drift::expired(c.created, c.expire_after, now))
        .collect();
    expired.sort_by(|a, b| {
        a.created
            .cmp(&b.created)
            .then_with(|| a.node_name.cmp(&b.node_name))
    });
    (!expired.is_empty()).then(|| delete(Reason::Expired, &expired))
}

/// The shared state of the consolidation methods for one loop.
pub struct Consolidator<'c> {
    cluster: &'c ClusterState,
    options: &'c ConsolidationOptions,
    now: OffsetDateTime,
    simulator: Simulator<'c>,
    totals: BTreeMap<&'c str, PoolTotals>,
}

impl<'c> Consolidator<'c> {
    /// Prepares the simulation for this cluster state.
    pub fn new(
        cluster: &'c ClusterState,
        options: &'c ConsolidationOptions,
        now: OffsetDateTime,
    ) -> Consolidator<'c> {
        let mut totals: BTreeMap<&str, PoolTotals> = BTreeMap::new();
        for c in &cluster.candidates {
            totals
                .entry(c.nodepool.as_str())
                .or_default()
                .add(c.price, c.reschedule_cost());
        }
        Consolidator {
            cluster,
            options,
            now,
            simulator: Simulator::new(cluster, options),
            totals,
        }
    }

    /// Which shortcut answered the simulations so far.
    pub fn stats(&self) -> Stats {
        self.simulator.stats()
    }

    /// The `Balanced` verdict on a move, pool by pool (each Balanced pool must approve its
    /// share of the savings).
    fn balanced(&self, candidates: &[&Candidate], savings: f64) -> Result<(), NoOp> {
        let total_cost: f64 = candidates.iter().map(|c| c.price).sum();
        let pools: BTreeSet<&str> = candidates.iter().map(|c| c.nodepool.as_str()).collect();
        for pool in &pools {
            let Some(policy) = self.cluster.pool(pool) else {
                continue;
            };
            if policy.consolidation_policy != ConsolidationPolicy::Balanced {
                continue;
            }
            let mine: Vec<&&Candidate> = candidates.iter().filter(|c| c.nodepool == *pool).collect();
            let pool_cost: f64 = mine.iter().map(|c| c.price).sum();
            let share = if pools.len() > 1 && total_cost > 0.0 {
                savings * pool_cost / total_cost
            } else {
                savings
            };
            let disruption: f64 = mine.iter().map(|c| c.reschedule_cost()).sum();
            let totals = self.totals.get(pool).copied().unwrap_or_default();
            let score = cost::balanced_score(share, disruption, totals, policy.balanced_k);
            if !score.approved {
                return Err(NoOp::Balanced {
                    pool: (*pool).to_owned(),
                    score: score.score,
                    threshold: score.threshold,
                });
            }
        }
        Ok(())
    }

    /// Simulates removing the candidates and turns the outcome into a consolidation command.
    /// Also returns the unfiltered instance types of the simulation's new claim (validation
    /// compares against them).
    fn evaluate(&mut self, candidates: &[&Candidate], single: bool) -> Result<(Command, Vec<String>), NoOp> {
        let price: f64 = candidates.iter().map(|c| c.price).sum();
        let bound = PriceBound {
            cap: price,
            excluded: candidates.iter().map(|c| c.instance_type.as_str()).collect(),
            spot_floor: (single && candidates.iter().all(|c| c.capacity_type == CapacityType::Spot))
                .then_some(self.options.min_spot_to_spot_types),
        };
        let (replacements, raw) = match self.simulator.simulate(candidates, Some(&bound)) {
            Outcome::NoOp(why) => return Err(why),
            Outcome::Delete => (Vec::new(), Vec::new()),
            Outcome::NewClaims(mut claims) => {
                if claims.len() > 1 {
                    return Err(NoOp::ManyClaims(claims.len()));
                }
                let claim = claims.remove(0);
                let raw = claim.instance_types.iter().map(|t| t.name().to_owned()).collect();
                (vec![replacement(claim, candidates, single, self.options)?], raw)
            }
        };
        let savings = price - replacements.iter().map(NewNodeClaim::price).sum::<f64>();
        self.balanced(candidates, savings)?;
        let command = Command {
            reason: Reason::Underutilized,
            candidates: candidates.iter().map(|c| c.node_name.clone()).collect(),
            replacements,
            savings_per_hour: savings,
            pods: pod_keys(candidates),
        };
        Ok((command, raw))
    }

    /// Single-node consolidation's candidates in evaluation order: by savings ratio, then
    /// round-robin across NodePools (in name order).
    fn single_node_order(&self) -> Vec<&'c Candidate> {
        let eligible = self
            .cluster
            .candidates
            .iter()
            .filter(|c| consolidation_eligible(self.cluster, c))
            .collect();
        let mut by_pool: BTreeMap<&str, Vec<&Candidate>> = BTreeMap::new();
        for c in by_savings_ratio(eligible) {
            by_pool.entry(c.nodepool.as_str()).or_default().push(c);
        }
        let longest = by_pool.values().map(Vec::len).max().unwrap_or(0);
        (0..longest)
            .flat_map(|i| by_pool.values().filter_map(move |list| list.get(i).copied()))
            .collect()
    }

    /// Evaluates one single-node candidate (budgets and the `Balanced` pre-check first).
    fn single(&mut self, c: &'c Candidate, budget: &BTreeMap<&str, usize>) -> Result<Command, Skip> {
        if budget.get(c.nodepool.as_str()).copied().unwrap_or(0) == 0 {
            return Err(Skip::Budget);
        }
        if self.balanced(&[c], c.price).is_err() {
            return Err(Skip::Balanced);
        }
        self.evaluate(&[c], true).map(|(cmd, _)| cmd).map_err(Skip::NoOp)
    }

    /// Single-node consolidation: the first candidate (see the [module
    /// documentation](self)) with a delete or a cheaper replacement.
    pub fn single_node(&mut self) -> Option<Command> {
        let budget = budgets(self.cluster, Reason::Underutilized, self.now);
        self.single_node_order()
            .into_iter()
            .find_map(|c| self.single(c, &budget).ok())
    }

    /// What single-node consolidation concludes for every candidate, in evaluation order
    /// (diagnostics and benchmarks: the controller stops at the first command).
    pub fn single_node_evaluations(&mut self) -> Vec<Evaluation> {
        let budget = budgets(self.cluster, Reason::Underutilized, self.now);
        self.single_node_order()
            .into_iter()
            .map(|c| Evaluation {
                node: c.node_name.clone(),
                result: self.single(c, &budget),
            })
            .collect()
    }

    /// Multi-node consolidation (see the [module documentation](self)).
    pub fn multi_node(&mut self) -> Option<Command> {
        let eligible = self
            .cluster
            .candidates
            .iter()
            .filter(|c| consolidation_eligible(self.cluster, c))
            .collect();
        let mut budget = budgets(self.cluster, Reason::Underutilized, self.now);
        let mut candidates: Vec<&Candidate> = Vec::new();
        for c in by_savings_ratio(eligible) {
            if candidates.len() == self.options.multi_node_max_candidates {
                break;
            }
            if let Some(left) = budget.get_mut(c.nodepool.as_str())
                && *left > 0
            {
                *left -= 1;
                candidates.push(c);
            }
        }
        if candidates.len() < 2 {
            return None;
        }
        // The whole list first: consolidating more nodes can pay for a bigger replacement
        // when fewer cannot, which the binary search alone would miss.
        let mut best: Option<(Command, usize)> = None;
        let keep = |best: &mut Option<(Command, usize)>, cmd: Command, size: usize| {
            if best
                .as_ref()
                .is_none_or(|(b, _)| cmd.savings_per_hour > b.savings_per_hour)
            {
                *best = Some((cmd, size));
            }
        };
        if let Ok((cmd, _)) = self.evaluate(&candidates, false) {
            keep(&mut best, cmd, candidates.len());
        } else {
            // Karpenter's binary search over prefixes of at least two candidates.
            let (mut low, mut high) = (1usize, candidates.len() - 2);
            while low <= high {
                let mid = (low + high) / 2;
                match self.evaluate(&candidates[..=mid], false) {
                    Ok((cmd, _)) => {
                        keep(&mut best, cmd, mid + 1);
                        low = mid + 1;
                    }
                    Err(_) => high = mid - 1,
                }
            }
        }
        // Greedy extension: try adding each following candidate.
        let (mut command, taken) = best?;
        let mut chosen: Vec<&Candidate> = candidates[..taken].to_vec();
        for c in candidates[taken..]
            .iter()
            .take(self.options.multi_node_extension_attempts)
        {
            chosen.push(c);
            match self.evaluate(&chosen, false) {
                Ok((cmd, _)) if cmd.savings_per_hour > command.savings_per_hour => command = cmd,
                _ => {
                    chosen.pop();
                }
            }
        }
        Some(command)
    }

    /// Drift: empty drifted candidates in one delete (within the `Drifted` budgets);
    /// otherwise the first drifted candidate (oldest drift first) whose pods can all be
    /// rescheduled, with the new nodes they need.
    pub fn drift(&mut self) -> Option<Command> {
        let mut budget = budgets(self.cluster, Reason::Drifted, self.now);
        let mut drifted: Vec<&Candidate> = self
            .cluster
            .candidates
            .iter()
            .filter(|c| c.drifted.is_some() && self.cluster.pool(&c.nodepool).is_some())
            .collect();
        drifted.sort_by(|a, b| {
            a.drifted
                .cmp(&b.drifted)
                .then_with(|| a.node_name.cmp(&b.node_name))
        });
        let mut empty = Vec::new();
        for c in drifted.iter().filter(|c| c.is_empty()) {
            if let Some(left) = budget.get_mut(c.nodepool.as_str())
                && *left > 0
            {
                *left -= 1;
                empty.push(*c);
            }
        }
        if !empty.is_empty() {
            return Some(delete(Reason::Drifted, &empty));
        }
        for c in drifted.into_iter().filter(|c| !c.is_empty()) {
            if budget.get(c.nodepool.as_str()).copied().unwrap_or(0) == 0 {
                continue;
            }
            let replacements = match self.simulator.simulate(&[c], None) {
                Outcome::Delete => Vec::new(),
                Outcome::NewClaims(claims) => claims,
                Outcome::NoOp(_) => continue,
            };
            return Some(Command {
                reason: Reason::Drifted,
                candidates: vec![c.node_name.clone()],
                savings_per_hour: c.price - replacements.iter().map(NewNodeClaim::price).sum::<f64>(),
                replacements,
                pods: pod_keys(&[c]),
            });
        }
        None
    }
}

/// The commands of this loop: those of the first method, in the order emptiness, drift,
/// multi-node, single-node, that finds any (see the [module documentation](self)).
pub fn compute_commands(
    cluster: &ClusterState,
    options: &ConsolidationOptions,
    now: OffsetDateTime,
) -> Vec<Command> {
    if let Some(cmd) = emptiness(cluster, now) {
        return vec![cmd];
    }
    let mut consolidator = Consolidator::new(cluster, options, now);
    consolidator
        .drift()
        .or_else(|| consolidator.multi_node())
        .or_else(|| consolidator.single_node())
        .into_iter()
        .collect()
}

/// Re-validates a command against the cluster as it is now (Karpenter re-validates after
/// [`COMMAND_VALIDATION_DELAY`]): its nodes must still be candidates with the same pods and
/// within budget; an empty delete must still be empty; a consolidation must still simulate
/// to the same decision (a replacement's types still among what the simulation would
/// launch); a drift replacement must still schedule every pod. Expiration and interruption
/// commands are not re-validated.
pub fn validate_command(
    before: &Command,
    cluster: &ClusterState,
    options: &ConsolidationOptions,
    now: OffsetDateTime,
) -> Result<(), Invalid> {
    if !before.reason.is_budgeted() {
        return Ok(());
    }
    let mut candidates = Vec::with_capacity(before.candidates.len());
    for name in &before.candidates {
        let c = cluster
            .candidate(name)
            .ok_or_else(|| Invalid::NotCandidate(name.clone()))?;
        let still = match before.reason {
            Reason::Empty => c.consolidatable && c.is_empty(),
            Reason::Underutilized => consolidation_eligible(cluster, c),
            _ => c.drifted.is_some(),
        };
        if !still {
            return Err(Invalid::NotCandidate(name.clone()));
        }
        candidates.push(c);
    }
    let now_pods = pod_keys(&candidates);
    if now_pods != before.pods {
        let changed = candidates
            .iter()
            .find(|c| {
                c.reschedulable_pods()
                    .any(|p| before.pods.binary_search(&p.key()).is_err())
            })
            .or(candidates.first())
            .map(|c| c.node_name.clone())
            .unwrap_or_default();
        return Err(Invalid::PodsChanged(changed));
    }
    let allowed = budgets(cluster, before.reason, now);
    let mut needed: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &candidates {
        *needed.entry(c.nodepool.as_str()).or_default() += 1;
    }
    for (pool, needed) in needed {
        let allowed = allowed.get(pool).copied().unwrap_or(0);
        if needed > allowed {
            return Err(Invalid::Budget {
                pool: pool.to_owned(),
                allowed,
                needed,
            });
        }
    }
    let mut consolidator = Consolidator::new(cluster, options, now);
    match before.reason {
        Reason::Empty => Ok(()),
        Reason::Underutilized => {
            let (cmd, raw) = consolidator
                .evaluate(&candidates, candidates.len() == 1)
                .map_err(|why| Invalid::Simulation(why.to_string()))?;
            match (before.replacement(), cmd.decision()) {
                (None, Decision::Delete) => Ok(()),
                (Some(was), Decision::Replace) => {
                    let missing = was
                        .instance_types
                        .iter()
                        .find(|t| !raw.iter().any(|r| r == t.name()));
                    match missing {
                        Some(t) => Err(Invalid::Simulation(format!(
                            "instance type {} is no longer a possible replacement",
                            t.name()
                        ))),
                        None => Ok(()),
                    }
                }
                (None, Decision::Replace) => {
                    Err(Invalid::Simulation("the pods now need a new node".to_owned()))
                }
                (Some(_), Decision::Delete) => Err(Invalid::Simulation(
                    "the pods now fit without a replacement".to_owned(),
                )),
            }
        }
        _ => match consolidator.simulator.simulate(&candidates, None) {
            Outcome::NoOp(why) => Err(Invalid::Simulation(why.to_string())),
            _ => Ok(()),
        },
    }
}

#[cfg(test)]
#[path = "consolidation_tests.rs"]
mod tests;
