//! What the simulation compares: an allocation [`Allocation`] (on-demand only, or one of the
//! spot allocation strategies) with or without consolidation and rebalance replacement
//! ([`Scenario`]), and how a NodeClaim becomes a fleet request under it ([`plan`]).
//!
//! [`plan`] is spot-provisioner's launch planning, [`spot_core::launch::plan`] (karpenter.md
//! §2): the offerings of the claim's types that are available, allowed by its zone and
//! capacity-type requirements and not marked unavailable; spot offerings dearer than the
//! cheapest on-demand one dropped; spot when any spot offering is left, else on-demand; types
//! ordered by their cheapest offering and truncated to 60 with `minValues` kept. The
//! allocation then decides the strategy of the request
//! (on-demand requests are always `lowest-price`) and, for [`Allocation::Diversified`], which
//! pools it lists: the `N` cheapest, rotated on every launch so that consecutive launches
//! land in different pools (a one-instance fleet request would otherwise always take the
//! first).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use spot_core::cloud::{AllocationStrategy, LaunchCandidate};
use spot_core::instance_type::CapacityType;
use spot_core::launch;
use spot_core::offerings::UnavailableOfferings;
use spot_core::requirements::Requirements;
use spot_core::scheduling::InstanceTypeOption;

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A scenario that does not parse.
    #[error("scenario {scenario:?}: {message}")]
    Scenario {
        /// The text.
        scenario: String,
        /// What is wrong.
        message: String,
    },
    /// The claim cannot be planned (no usable offering, or `minValues`).
    #[error(transparent)]
    Launch(#[from] launch::Error),
}

/// How capacity is bought.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Allocation {
    /// On-demand only: the NodePool allows no spot (`lowest-price`).
    OnDemand,
    /// Spot, `lowest-price`: the cheapest pool, blind to capacity.
    LowestPrice,
    /// Spot, `capacity-optimized`: the deepest pool.
    CapacityOptimized,
    /// Spot, `price-capacity-optimized`: the cheapest of the deep pools (Karpenter's choice).
    PriceCapacityOptimized,
    /// Spot, `diversified` over the `pools` cheapest pools, rotating.
    Diversified {
        /// How many pools.
        pools: usize,
    },
}

impl Allocation {
    /// Whether the NodePool may launch spot.
    pub fn spot(self) -> bool {
        self != Allocation::OnDemand
    }

    /// The fleet strategy of spot requests.
    pub fn strategy(self) -> AllocationStrategy {
        match self {
            Allocation::OnDemand | Allocation::LowestPrice => AllocationStrategy::LowestPrice,
            Allocation::CapacityOptimized => AllocationStrategy::CapacityOptimized,
            Allocation::PriceCapacityOptimized => AllocationStrategy::PriceCapacityOptimized,
            Allocation::Diversified { .. } => AllocationStrategy::Diversified,
        }
    }
}

impl fmt::Display for Allocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Allocation::OnDemand => f.write_str("on-demand"),
            Allocation::LowestPrice => f.write_str("lowest-price"),
            Allocation::CapacityOptimized => f.write_str("capacity-optimized"),
            Allocation::PriceCapacityOptimized => f.write_str("price-capacity-optimized"),
            Allocation::Diversified { pools } => write!(f, "diversified:{pools}"),
        }
    }
}

impl FromStr for Allocation {
    type Err = Error;
    fn from_str(s: &str) -> Result<Allocation, Error> {
        let bad = |message: String| Error::Scenario {
            scenario: s.to_owned(),
            message,
        };
        let lower = s.trim().to_ascii_lowercase();
        let (name, arg) = match lower.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (lower.as_str(), None),
        };
        let allocation = match name {
            "on-demand" | "od" => Allocation::OnDemand,
            "lowest-price" | "lp" => Allocation::LowestPrice,
            "capacity-optimized" | "co" => Allocation::CapacityOptimized,
            "price-capacity-optimized" | "pco" => Allocation::PriceCapacityOptimized,
            "diversified" | "div" => {
                let pools = match arg {
                    None => 4,
                    Some(a) => a.parse::<usize>().ok().filter(|n| *n >= 1).ok_or_else(|| {
                        bad(format!(
                            "diversified pools {a:?}: expected a number of at least 1"
                        ))
                    })?,
                };
                return Ok(Allocation::Diversified { pools });
            }
            other => {
                return Err(bad(format!(
                    "allocation {other:?}: expected on-demand, lowest-price, capacity-optimized, \
                     price-capacity-optimized or diversified[:N]"
                )));
            }
        };
        match arg {
            Some(a) => Err(bad(format!("{name} takes no argument, found {a:?}"))),
            None => Ok(allocation),
        }
    }
}

/// One column of the comparison: an allocation and the disruption features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Scenario {
    /// How capacity is bought.
    pub allocation: Allocation,
    /// Whether consolidation runs (emptiness, multi- and single-node, spot-to-spot).
    pub consolidation: bool,
    /// Whether a rebalance recommendation replaces the node proactively.
    pub rebalance: bool,
}

impl Scenario {
    /// A scenario without consolidation or rebalance replacement.
    pub fn new(allocation: Allocation) -> Scenario {
        Scenario {
            allocation,
            consolidation: false,
            rebalance: false,
        }
    }

    /// The same with consolidation.
    pub fn with_consolidation(mut self) -> Scenario {
        self.consolidation = true;
        self
    }

    /// The same with rebalance replacement.
    pub fn with_rebalance(mut self) -> Scenario {
        self.rebalance = true;
        self
    }

    /// The default comparison: each allocation with and without consolidation, and
    /// price-capacity-optimized with rebalance replacement too.
    pub fn default_set() -> Vec<Scenario> {
        use Allocation::*;
        vec![
            Scenario::new(OnDemand),
            Scenario::new(OnDemand).with_consolidation(),
            Scenario::new(LowestPrice),
            Scenario::new(LowestPrice).with_consolidation(),
            Scenario::new(CapacityOptimized).with_consolidation(),
            Scenario::new(PriceCapacityOptimized),
            Scenario::new(PriceCapacityOptimized).with_consolidation(),
            Scenario::new(PriceCapacityOptimized)
                .with_consolidation()
                .with_rebalance(),
            Scenario::new(Diversified { pools: 4 }).with_consolidation(),
        ]
    }

    /// Parses a comma-separated list of scenarios.
    pub fn parse_list(s: &str) -> Result<Vec<Scenario>, Error> {
        s.split(',')
            .filter(|p| !p.trim().is_empty())
            .map(str::parse)
            .collect()
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.allocation)?;
        if self.consolidation {
            f.write_str("+consolidation")?;
        }
        if self.rebalance {
            f.write_str("+rebalance")?;
        }
        Ok(())
    }
}

/// `ALLOCATION[+consolidation][+rebalance]`; `+c` and `+r` are short forms, and the
/// allocations have short forms too (`od`, `lp`, `co`, `pco`, `div:N`).
impl FromStr for Scenario {
    type Err = Error;
    fn from_str(s: &str) -> Result<Scenario, Error> {
        let mut parts = s.trim().split('+');
        let mut scenario = Scenario::new(parts.next().unwrap_or_default().parse()?);
        for part in parts {
            match part.trim().to_ascii_lowercase().as_str() {
                "consolidation" | "c" => scenario.consolidation = true,
                "rebalance" | "r" => scenario.rebalance = true,
                other => {
                    return Err(Error::Scenario {
                        scenario: s.to_owned(),
                        message: format!("modifier {other:?}: expected consolidation or rebalance"),
                    });
                }
            }
        }
        Ok(scenario)
    }
}

/// One fleet request's worth of a plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The capacity type of the request.
    pub capacity_type: CapacityType,
    /// The pools, cheapest type first (rotated for [`Allocation::Diversified`]).
    pub candidates: Vec<LaunchCandidate>,
    /// The strategy.
    pub strategy: AllocationStrategy,
}

/// Plans one fleet request for a claim (see the [module documentation](self)); `rotation`
/// turns the pool list of a diversified request.
pub fn plan(
    allocation: Allocation,
    requirements: &Requirements,
    types: &[Arc<InstanceTypeOption>],
    unavailable: &UnavailableOfferings,
    rotation: usize,
) -> Result<Plan, Error> {
    let launch = launch::plan(requirements, types, unavailable, launch::MAX_INSTANCE_TYPES)?;
    let capacity_type = launch.capacity_type;
    let mut candidates = launch.candidates;
    let strategy = match capacity_type {
        CapacityType::OnDemand => AllocationStrategy::LowestPrice,
        CapacityType::Spot => allocation.strategy(),
    };
    if let (CapacityType::Spot, Allocation::Diversified { pools }) = (capacity_type, allocation) {
        candidates.sort_by(|a, b| {
            a.price
                .total_cmp(&b.price)
                .then_with(|| a.instance_type.cmp(&b.instance_type))
                .then_with(|| a.zone.cmp(&b.zone))
        });
        candidates.truncate(pools.max(1));
        let n = candidates.len();
        candidates.rotate_left(rotation % n);
    }
    Ok(Plan {
        capacity_type,
        candidates,
        strategy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use spot_core::clock::Clock;
    use spot_core::labels;
    use spot_core::requirements::{Operator, Requirement};
    use time::OffsetDateTime;
    use time::macros::datetime;

    struct Fixed;
    impl Clock for Fixed {
        fn now(&self) -> OffsetDateTime {
            datetime!(2026-01-01 00:00 UTC)
        }
    }

    fn option(name: &str, offers: &[(&str, CapacityType, f64)]) -> Arc<InstanceTypeOption> {
        Arc::new(InstanceTypeOption::synthetic(name, 2, 8192, offers).unwrap())
    }

    #[test]
    fn scenarios_parse_and_print() {
        let all = Scenario::default_set();
        for s in &all {
            assert_eq!(s.to_string().parse::<Scenario>().unwrap(), *s);
        }
        assert_eq!(
            "pco+c+r".parse::<Scenario>().unwrap(),
            Scenario::new(Allocation::PriceCapacityOptimized)
                .with_consolidation()
                .with_rebalance()
        );
        assert_eq!(
            Scenario::parse_list("od, div:3+consolidation").unwrap(),
            [
                Scenario::new(Allocation::OnDemand),
                Scenario::new(Allocation::Diversified { pools: 3 }).with_consolidation()
            ]
        );
        assert_eq!(
            "diversified".parse::<Allocation>().unwrap(),
            Allocation::Diversified { pools: 4 }
        );
        for bad in ["cheapest", "pco+fast", "div:0", "lp:2"] {
            let err = bad.parse::<Scenario>().unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn plans_take_the_shared_launch_plan_and_the_allocation_decides_strategy_and_pools() {
        use CapacityType::*;
        let unavailable = UnavailableOfferings::new(Arc::new(Fixed));
        let types = vec![
            option(
                "m5.large",
                &[
                    ("us-east-1a", Spot, 0.04),
                    ("us-east-1b", Spot, 0.03),
                    ("us-east-1a", OnDemand, 0.096),
                ],
            ),
            option(
                "c5.large",
                &[("us-east-1a", Spot, 0.09), ("us-east-1a", OnDemand, 0.085)],
            ),
            option(
                "r5.large",
                &[("us-east-1a", Spot, 0.05), ("us-east-1b", OnDemand, 0.126)],
            ),
        ];
        let none = Requirements::new();
        let shared = launch::plan(&none, &types, &unavailable, launch::MAX_INSTANCE_TYPES).unwrap();
        for allocation in [
            Allocation::LowestPrice,
            Allocation::CapacityOptimized,
            Allocation::PriceCapacityOptimized,
        ] {
            let p = plan(allocation, &none, &types, &unavailable, 0).unwrap();
            assert_eq!(p.capacity_type, Spot);
            assert_eq!(p.strategy, allocation.strategy());
            assert_eq!(p.candidates, shared.candidates, "{allocation}");
        }
        // Diversified: the two cheapest pools, rotated.
        let d = plan(
            Allocation::Diversified { pools: 2 },
            &none,
            &types,
            &unavailable,
            3,
        )
        .unwrap();
        assert_eq!(d.strategy, AllocationStrategy::Diversified);
        let pools: Vec<String> = d
            .candidates
            .iter()
            .map(|c| format!("{}/{}", c.instance_type, c.zone))
            .collect();
        assert_eq!(pools, ["m5.large/us-east-1a", "m5.large/us-east-1b"]);
        // On-demand requests are lowest-price whatever the allocation.
        let od = Requirements::new()
            .with(Requirement::new(labels::CAPACITY_TYPE, Operator::In, ["on-demand"]).unwrap());
        let p = plan(Allocation::Diversified { pools: 2 }, &od, &types, &unavailable, 1).unwrap();
        assert_eq!(
            (p.capacity_type, p.strategy),
            (OnDemand, AllocationStrategy::LowestPrice)
        );
        assert_eq!(p.candidates[0].instance_type, "c5.large", "not rotated");
        let zone_c =
            Requirements::new().with(Requirement::new(labels::ZONE, Operator::In, ["us-east-1c"]).unwrap());
        assert_eq!(
            plan(Allocation::LowestPrice, &zone_c, &types, &unavailable, 0),
            Err(Error::Launch(launch::Error::NoOffering { types: 3 }))
        );
    }
}
