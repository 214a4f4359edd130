//! Karpenter's disruption costs and consolidation ranking
//! (`pkg/utils/disruption/disruption.go`, `pkg/controllers/disruption/balanced.go`).
//!
//! - A pod's eviction cost is [`PodSpec::eviction_cost`]: `1 + deletion_cost / 2^27 +
//!   priority / 2^25`, clamped to `[-10, 10]`.
//! - A node's *disruption cost* is the sum of its pods' eviction costs scaled by the fraction
//!   of its lifetime remaining (1 at creation, 0 at `expireAfter`).
//! - A node's *reschedule cost* is `1 + Σ max(0, eviction cost)` over the pods that would
//!   move; a node whose reschedule cost is at most 1 is *empty*.
//! - Candidates are tried in descending *savings ratio*, `price / reschedule cost`.
//! - The `Balanced` policy approves a move when `(savings / pool cost) / (move disruption /
//!   pool disruption) >= 1 / k`, with `k` = [`BALANCED_K`].

use std::time::Duration;

use time::OffsetDateTime;

use crate::pod::PodSpec;

/// The disruption cost of removing a node at all (`PerNodeBaseDisruptionCost`).
pub const PER_NODE_BASE_DISRUPTION_COST: f64 = 1.0;

/// Karpenter's default consolidation threshold `k` of the `Balanced` policy: a move must
/// save at least half its share of the pool's disruption as a share of the pool's cost.
pub const BALANCED_K: u32 = 2;

/// The fraction of a node's lifetime remaining: `1 - age / expire_after`, clamped to
/// `[0, 1]`; 1 without `expireAfter` (or with a zero one).
pub fn lifetime_remaining(
    created: OffsetDateTime,
    expire_after: Option<Duration>,
    now: OffsetDateTime,
) -> f64 {
    match expire_after {
        Some(total) if !total.is_zero() => {
            let age = (now - created).as_seconds_f64();
            let total = total.as_secs_f64();
            ((total - age) / total).clamp(0.0, 1.0)
        }
        _ => 1.0,
    }
}

/// `Σ eviction cost × lifetime remaining` (Karpenter's `DisruptionCost`, the sort key before
/// savings ratios).
pub fn disruption_cost<'a>(pods: impl IntoIterator<Item = &'a PodSpec>, lifetime_remaining: f64) -> f64 {
    pods.into_iter().map(PodSpec::eviction_cost).sum::<f64>() * lifetime_remaining
}

/// `1 + Σ max(0, eviction cost)` over the pods that would be rescheduled
/// (`RescheduleDisruptionCost`).
pub fn reschedule_cost<'a>(pods: impl IntoIterator<Item = &'a PodSpec>) -> f64 {
    PER_NODE_BASE_DISRUPTION_COST + pods.into_iter().map(|p| p.eviction_cost().max(0.0)).sum::<f64>()
}

/// Whether a node with this reschedule cost counts as empty (no pod with a positive
/// eviction cost would move).
pub fn is_empty_cost(reschedule_cost: f64) -> bool {
    reschedule_cost <= PER_NODE_BASE_DISRUPTION_COST
}

/// `price / reschedule cost`: dollars per hour saved per unit of disruption if the node
/// goes. Higher is tried first.
pub fn savings_ratio(price: f64, reschedule_cost: f64) -> f64 {
    if reschedule_cost > 0.0 {
        price / reschedule_cost
    } else {
        price
    }
}

/// A NodePool's totals that `Balanced` scores normalise against: the summed price and
/// reschedule cost of its nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PoolTotals {
    /// Σ price of the pool's nodes, USD per hour.
    pub cost: f64,
    /// Σ reschedule cost of the pool's nodes.
    pub disruption: f64,
}

impl PoolTotals {
    /// Adds a node; nodes without a price are left out of both totals, as Karpenter does.
    pub fn add(&mut self, price: f64, reschedule_cost: f64) {
        if price > 0.0 {
            self.cost += price;
            self.disruption += reschedule_cost;
        }
    }
}

/// A `Balanced` policy verdict.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BalancedScore {
    /// `savings_fraction / disruption_fraction` (infinite when the pool has no disruption).
    pub score: f64,
    /// `savings / pool cost`.
    pub savings_fraction: f64,
    /// `move disruption / pool disruption`.
    pub disruption_fraction: f64,
    /// `1 / k`.
    pub threshold: f64,
    /// Whether `score >= threshold` (and the move saves something).
    pub approved: bool,
}

/// Scores a move under `Balanced` (Karpenter's `ScoreMove`): never approved without savings
/// or when the pool costs nothing; always approved (with savings) when the pool has no
/// disruption cost.
pub fn balanced_score(savings: f64, move_disruption: f64, totals: PoolTotals, k: u32) -> BalancedScore {
    let threshold = 1.0 / f64::from(k.max(1));
    let verdict = |score, savings_fraction, disruption_fraction, approved| BalancedScore {
        score,
        savings_fraction,
        disruption_fraction,
        threshold,
        approved,
    };
    if totals.cost <= 0.0 {
        return verdict(0.0, 0.0, 0.0, false);
    }
    let savings_fraction = savings / totals.cost;
    if savings <= 0.0 {
        return verdict(0.0, savings_fraction, 0.0, false);
    }
    if totals.disruption <= 0.0 {
        return verdict(f64::INFINITY, savings_fraction, 0.0, true);
    }
    let disruption_fraction = move_disruption / totals.disruption;
    let score = savings_fraction / disruption_fraction;
    verdict(score, savings_fraction, disruption_fraction, score >= threshold)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Resources;
    use time::macros::datetime;

    fn pod(priority: i32, deletion_cost: i32) -> PodSpec {
        PodSpec {
            priority,
            deletion_cost,
            ..PodSpec::new("ns", "p", Resources::new(100, 0))
        }
    }

    #[test]
    fn lifetime_is_linear_and_clamped() {
        let created = datetime!(2026-05-01 00:00 UTC);
        let day = Duration::from_secs(86_400);
        let ten_days = Some(day * 10);
        assert_eq!(lifetime_remaining(created, ten_days, created), 1.0);
        assert!(
            (lifetime_remaining(created, ten_days, datetime!(2026-05-03 12:00 UTC)) - 0.75).abs() < 1e-12
        );
        assert_eq!(
            lifetime_remaining(created, ten_days, datetime!(2026-06-01 00:00 UTC)),
            0.0
        );
        assert_eq!(
            lifetime_remaining(created, None, datetime!(2030-01-01 00:00 UTC)),
            1.0
        );
        assert_eq!(
            lifetime_remaining(created, ten_days, datetime!(2026-04-01 00:00 UTC)),
            1.0,
            "clock skew"
        );
    }

    #[test]
    fn costs() {
        let pods = [pod(0, 0), pod(0, 0), pod(1 << 25, 0), pod(i32::MIN, 0)];
        // 1 + 1 + 2 - 10
        assert_eq!(disruption_cost(&pods, 1.0), -6.0);
        assert_eq!(disruption_cost(&pods, 0.5), -3.0);
        // Negative eviction costs count as zero when rescheduling.
        assert_eq!(reschedule_cost(&pods), 5.0);
        assert_eq!(reschedule_cost(&[]), 1.0);
        assert!(is_empty_cost(reschedule_cost(&[])));
        assert!(
            is_empty_cost(reschedule_cost(&[pod(i32::MIN, 0)])),
            "only negative-cost pods"
        );
        assert!(!is_empty_cost(reschedule_cost(&[pod(0, 0)])));
    }

    #[test]
    fn savings_ratio_prefers_expensive_nodes_with_few_pods() {
        let expensive_few = savings_ratio(0.40, reschedule_cost(&[pod(0, 0)]));
        let cheap_few = savings_ratio(0.10, reschedule_cost(&[pod(0, 0)]));
        let expensive_many = savings_ratio(0.40, reschedule_cost(&vec![pod(0, 0); 20]));
        assert_eq!(expensive_few, 0.20);
        assert!(expensive_few > cheap_few && expensive_few > expensive_many);
    }

    #[test]
    fn balanced_threshold() {
        // A pool of 10 nodes at $1/h, each with 9 pods (reschedule cost 10): totals $10, 100.
        let totals = PoolTotals {
            cost: 10.0,
            disruption: 100.0,
        };
        // Deleting one node: 10% of the cost for 10% of the disruption: score 1.
        let delete = balanced_score(1.0, 10.0, totals, BALANCED_K);
        assert_eq!(delete.score, 1.0);
        assert!(delete.approved);
        // Replacing it for $0.05/h less: 0.5% of the cost for 10% of the disruption.
        let marginal = balanced_score(0.05, 10.0, totals, BALANCED_K);
        assert!((marginal.score - 0.05).abs() < 1e-12);
        assert!(!marginal.approved);
        // Exactly at 1/k passes.
        let edge = balanced_score(0.5, 10.0, totals, BALANCED_K);
        assert_eq!(edge.score, 0.5);
        assert!(edge.approved);
        assert!(!balanced_score(0.49, 10.0, totals, BALANCED_K).approved);
        assert!(
            balanced_score(0.3, 10.0, totals, 4).approved,
            "k = 4 accepts a quarter"
        );
        assert!(
            !balanced_score(0.0, 1.0, totals, BALANCED_K).approved,
            "no savings"
        );
        assert!(!balanced_score(1.0, 1.0, PoolTotals::default(), BALANCED_K).approved);
        let free = PoolTotals {
            cost: 1.0,
            disruption: 0.0,
        };
        assert!(balanced_score(0.1, 0.0, free, BALANCED_K).approved);
        let mut totals = PoolTotals::default();
        totals.add(0.5, 3.0);
        totals.add(0.0, 7.0);
        assert_eq!(
            totals,
            PoolTotals {
                cost: 0.5,
                disruption: 3.0
            }
        );
    }
}
