//! NodePool disruption budgets (Karpenter's `spec.disruption.budgets`): how many of a pool's
//! nodes may be disrupted at once, per reason, optionally only during scheduled windows.
//!
//! - `nodes` is a count (`"5"`) or a percentage of the pool's nodes (`"10%"`, rounded up, as
//!   Kubernetes rounds `maxUnavailable`).
//! - `reasons` limits a budget to some reasons (`Underutilized`, `Empty`, `Drifted`); unset
//!   means every reason.
//! - `schedule` (UTC cron, see [`cron`](super::cron)) and `duration` go together: the budget
//!   is active for `duration` after each fire of the schedule; without them it is always
//!   active.
//! - The smallest active budget wins; with none active, disruption is unlimited. Nodes already
//!   disrupting (NotReady or deleting) are subtracted.
//! - Budgets do not limit expiration or interruption.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::cron::Schedule;

/// Karpenter's cap on the number of budgets of a pool.
pub const MAX_BUDGETS: usize = 50;

/// Errors of this module; each names the budget field and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// `nodes` is neither a count nor a percentage.
    #[error("budgets[{index}].nodes: {value:?} is not a node count or a percentage such as \"10%\"")]
    Nodes {
        /// The budget's position.
        index: usize,
        /// The value given.
        value: String,
    },
    /// A percentage above 100.
    #[error("budgets[{index}].nodes: {value:?} is not a percentage between 0 and 100")]
    Percent {
        /// The budget's position.
        index: usize,
        /// The value given.
        value: String,
    },
    /// A schedule that does not parse.
    #[error("budgets[{index}].schedule: {source}")]
    Schedule {
        /// The budget's position.
        index: usize,
        /// The parse error (it quotes the schedule).
        source: super::cron::Error,
    },
    /// `schedule` without `duration` or the reverse.
    #[error("budgets[{index}]: schedule and duration must be set together (got {which} only)")]
    ScheduleWithoutDuration {
        /// The budget's position.
        index: usize,
        /// `schedule` or `duration`: the one that is set.
        which: &'static str,
    },
    /// A reason budgets cannot name.
    #[error("budgets[{index}].reasons: {reason} is not a budget reason (Underutilized, Empty or Drifted)")]
    Reason {
        /// The budget's position.
        index: usize,
        /// The reason given.
        reason: Reason,
    },
    /// More than [`MAX_BUDGETS`] budgets.
    #[error("budgets: {count} budgets, at most {MAX_BUDGETS} are allowed")]
    TooMany {
        /// How many were given.
        count: usize,
    },
}

/// Why a node is disrupted. Budgets name the first three; the others are never limited by
/// budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Reason {
    /// Consolidation of a node whose pods fit elsewhere or on a cheaper node.
    Underutilized,
    /// Consolidation of an empty node.
    Empty,
    /// The node no longer matches its NodePool or node class.
    Drifted,
    /// The node reached `expireAfter` (not budget-limited).
    Expired,
    /// The instance is being reclaimed (spot interruption, scheduled change; not
    /// budget-limited).
    Interrupted,
}

impl Reason {
    /// Whether budgets apply to this reason.
    pub fn is_budgeted(self) -> bool {
        matches!(self, Reason::Underutilized | Reason::Empty | Reason::Drifted)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::Underutilized => "Underutilized",
            Reason::Empty => "Empty",
            Reason::Drifted => "Drifted",
            Reason::Expired => "Expired",
            Reason::Interrupted => "Interrupted",
        })
    }
}

/// One budget as the NodePool spells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    /// A count (`"5"`) or a percentage (`"10%"`).
    pub nodes: String,
    /// The reasons the budget applies to; `None` (or empty) means all.
    pub reasons: Option<Vec<Reason>>,
    /// A UTC cron schedule opening the budget's windows.
    pub schedule: Option<String>,
    /// How long each window lasts.
    pub duration: Option<Duration>,
}

impl Default for Budget {
    /// Karpenter's default: `{nodes: "10%"}`.
    fn default() -> Budget {
        Budget::nodes("10%")
    }
}

impl Budget {
    /// An always-active budget for every reason.
    pub fn nodes(nodes: impl Into<String>) -> Budget {
        Budget {
            nodes: nodes.into(),
            reasons: None,
            schedule: None,
            duration: None,
        }
    }
}

/// The default budgets of a NodePool: `[{nodes: "10%"}]`.
pub fn default_budgets() -> Vec<Budget> {
    vec![Budget::default()]
}

/// A budget's `nodes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nodes {
    /// A node count.
    Count(usize),
    /// A percentage of the pool's nodes, 0 to 100.
    Percent(u8),
}

impl Nodes {
    /// How many of `total` nodes this allows (percentages round up).
    pub fn of(self, total: usize) -> usize {
        match self {
            Nodes::Count(n) => n,
            Nodes::Percent(p) => total.saturating_mul(usize::from(p)).div_ceil(100),
        }
    }
}

/// A validated budget.
#[derive(Debug, Clone, PartialEq)]
struct Compiled {
    nodes: Nodes,
    reasons: Option<Vec<Reason>>,
    window: Option<(Schedule, Duration)>,
}

/// A pool's budgets, validated once and evaluated many times.
#[derive(Debug, Clone, PartialEq)]
pub struct Budgets {
    budgets: Vec<Compiled>,
}

impl Default for Budgets {
    /// Karpenter's default, `[{nodes: "10%"}]`.
    fn default() -> Budgets {
        Budgets {
            budgets: vec![Compiled {
                nodes: Nodes::Percent(10),
                reasons: None,
                window: None,
            }],
        }
    }
}

impl Budgets {
    /// Validates the budgets; errors name the field and value
    /// (`budgets[1].nodes: "110%" is not a percentage between 0 and 100`).
    pub fn new(budgets: &[Budget]) -> Result<Budgets, Error> {
        if budgets.len() > MAX_BUDGETS {
            return Err(Error::TooMany { count: budgets.len() });
        }
        let compiled = budgets
            .iter()
            .enumerate()
            .map(|(index, budget)| compile(index, budget))
            .collect::<Result<_, _>>()?;
        Ok(Budgets { budgets: compiled })
    }

    /// How many more nodes may be disrupted for `reason`: the smallest active budget that
    /// applies to the reason, scaled to `total_nodes`, minus `disrupting` (never below zero).
    /// `usize::MAX` when no budget applies or the reason is not budget-limited.
    pub fn allowed(
        &self,
        reason: Reason,
        total_nodes: usize,
        disrupting: usize,
        now: OffsetDateTime,
    ) -> usize {
        if !reason.is_budgeted() {
            return usize::MAX;
        }
        let smallest = self
            .budgets
            .iter()
            .filter(|b| {
                b.reasons
                    .as_ref()
                    .is_none_or(|r| r.is_empty() || r.contains(&reason))
            })
            .filter(|b| {
                b.window
                    .is_none_or(|(schedule, duration)| schedule.active(duration, now))
            })
            .map(|b| b.nodes.of(total_nodes))
            .min();
        match smallest {
            Some(n) => n.saturating_sub(disrupting),
            None => usize::MAX,
        }
    }
}

fn compile(index: usize, budget: &Budget) -> Result<Compiled, Error> {
    let nodes = parse_nodes(index, &budget.nodes)?;
    if let Some(reason) = budget.reasons.iter().flatten().find(|r| !r.is_budgeted()) {
        return Err(Error::Reason {
            index,
            reason: *reason,
        });
    }
    let window = match (&budget.schedule, budget.duration) {
        (None, None) => None,
        (Some(_), None) => {
            return Err(Error::ScheduleWithoutDuration {
                index,
                which: "schedule",
            });
        }
        (None, Some(_)) => {
            return Err(Error::ScheduleWithoutDuration {
                index,
                which: "duration",
            });
        }
        (Some(schedule), Some(duration)) => {
            let schedule = Schedule::parse(schedule).map_err(|source| Error::Schedule { index, source })?;
            Some((schedule, duration))
        }
    };
    Ok(Compiled {
        nodes,
        reasons: budget.reasons.clone(),
        window,
    })
}

fn parse_nodes(index: usize, text: &str) -> Result<Nodes, Error> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match text.strip_suffix('%') {
        Some(p) if digits(p) => match p.parse::<u32>() {
            Ok(p) if p <= 100 => Ok(Nodes::Percent(p as u8)),
            _ => Err(Error::Percent {
                index,
                value: text.to_owned(),
            }),
        },
        None if digits(text) => text.parse().map(Nodes::Count).map_err(|_| Error::Nodes {
            index,
            value: text.to_owned(),
        }),
        _ => Err(Error::Nodes {
            index,
            value: text.to_owned(),
        }),
    }
}

/// How many more of a pool's nodes may be disrupted for `reason` at `now` (see
/// [`Budgets::allowed`]); validates the budgets first.
pub fn allowed(
    budgets: &[Budget],
    reason: Reason,
    total_nodes: usize,
    disrupting: usize,
    now: OffsetDateTime,
) -> Result<usize, Error> {
    Ok(Budgets::new(budgets)?.allowed(reason, total_nodes, disrupting, now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-05-06 10:30 UTC);

    fn scheduled(nodes: &str, schedule: &str, hours: u64) -> Budget {
        Budget {
            schedule: Some(schedule.into()),
            duration: Some(Duration::from_secs(hours * 3600)),
            ..Budget::nodes(nodes)
        }
    }

    #[test]
    fn percentages_round_up() {
        let allowed =
            |nodes: &str, total| allowed(&[Budget::nodes(nodes)], Reason::Empty, total, 0, NOW).unwrap();
        assert_eq!(allowed("10%", 10), 1);
        assert_eq!(allowed("10%", 11), 2, "1.1 rounds up");
        assert_eq!(allowed("10%", 1), 1, "a small pool still moves");
        assert_eq!(allowed("10%", 0), 0);
        assert_eq!(allowed("0%", 50), 0);
        assert_eq!(allowed("100%", 7), 7);
        assert_eq!(allowed("5", 3), 5, "counts are not capped by the pool size");
        assert_eq!(allowed("0", 3), 0);
    }

    #[test]
    fn default_is_ten_percent() {
        assert_eq!(default_budgets(), vec![Budget::nodes("10%")]);
        assert_eq!(Budgets::default(), Budgets::new(&default_budgets()).unwrap());
        assert_eq!(
            allowed(&default_budgets(), Reason::Underutilized, 25, 0, NOW).unwrap(),
            3
        );
    }

    #[test]
    fn smallest_active_budget_wins_minus_disrupting() {
        let budgets = [Budget::nodes("50%"), Budget::nodes("3"), Budget::nodes("20%")];
        assert_eq!(allowed(&budgets, Reason::Drifted, 100, 0, NOW).unwrap(), 3);
        assert_eq!(
            allowed(&budgets, Reason::Drifted, 10, 0, NOW).unwrap(),
            2,
            "20% of 10"
        );
        assert_eq!(allowed(&budgets, Reason::Drifted, 10, 1, NOW).unwrap(), 1);
        assert_eq!(
            allowed(&budgets, Reason::Drifted, 10, 5, NOW).unwrap(),
            0,
            "never negative"
        );
        assert_eq!(
            allowed(&[], Reason::Drifted, 10, 0, NOW).unwrap(),
            usize::MAX,
            "no budget: unlimited"
        );
    }

    #[test]
    fn reasons_select_budgets() {
        let budgets = [
            Budget {
                reasons: Some(vec![Reason::Empty, Reason::Drifted]),
                ..Budget::nodes("0")
            },
            Budget::nodes("10%"),
        ];
        assert_eq!(allowed(&budgets, Reason::Empty, 40, 0, NOW).unwrap(), 0);
        assert_eq!(allowed(&budgets, Reason::Drifted, 40, 0, NOW).unwrap(), 0);
        assert_eq!(allowed(&budgets, Reason::Underutilized, 40, 0, NOW).unwrap(), 4);
        assert_eq!(
            allowed(&budgets, Reason::Expired, 40, 0, NOW).unwrap(),
            usize::MAX,
            "expiration is never budget-limited"
        );
        assert_eq!(
            allowed(&budgets, Reason::Interrupted, 40, 39, NOW).unwrap(),
            usize::MAX
        );
    }

    #[test]
    fn schedules_are_active_for_their_duration() {
        // No disruption on weekdays from 09:00 for 8 hours; 2026-05-06 is a Wednesday.
        let budgets = [scheduled("0", "0 9 * * mon-fri", 8), Budget::nodes("10%")];
        let at = |t| allowed(&budgets, Reason::Underutilized, 30, 0, t).unwrap();
        assert_eq!(at(NOW), 0, "inside the window");
        assert_eq!(at(datetime!(2026-05-06 09:00 UTC)), 0, "at the fire");
        assert_eq!(at(datetime!(2026-05-06 08:59 UTC)), 3, "before it");
        assert_eq!(at(datetime!(2026-05-06 16:59 UTC)), 0);
        assert_eq!(at(datetime!(2026-05-06 17:00 UTC)), 3, "after the 8 hours");
        assert_eq!(at(datetime!(2026-05-09 10:00 UTC)), 3, "Saturday");
        // A window across midnight.
        let night = [scheduled("100%", "@daily", 2), scheduled("0", "0 22 * * *", 4)];
        let at = |t| allowed(&night, Reason::Empty, 8, 0, t).unwrap();
        assert_eq!(
            at(datetime!(2026-05-06 01:00 UTC)),
            0,
            "both active: the smallest wins"
        );
        assert_eq!(
            at(datetime!(2026-05-06 03:00 UTC)),
            usize::MAX,
            "none active: unlimited"
        );
        assert_eq!(at(datetime!(2026-05-06 23:00 UTC)), 0);
        assert_eq!(at(datetime!(2026-05-06 00:30 UTC)), 0);
        assert_eq!(
            at(datetime!(2026-05-06 02:00 UTC)),
            usize::MAX,
            "the @daily window ended at 02:00 too"
        );
    }

    #[test]
    fn errors_name_field_and_value() {
        let check = |budgets: &[Budget], want: &str| {
            let err = Budgets::new(budgets).unwrap_err();
            assert_eq!(err.to_string(), want);
        };
        check(
            &[Budget::nodes("1"), Budget::nodes("110%")],
            "budgets[1].nodes: \"110%\" is not a percentage between 0 and 100",
        );
        check(
            &[Budget::nodes("ten")],
            "budgets[0].nodes: \"ten\" is not a node count or a percentage such as \"10%\"",
        );
        check(
            &[Budget::nodes("-1")],
            "budgets[0].nodes: \"-1\" is not a node count or a percentage such as \"10%\"",
        );
        check(
            &[Budget::nodes("%")],
            "budgets[0].nodes: \"%\" is not a node count or a percentage such as \"10%\"",
        );
        check(
            &[scheduled("1", "0 25 * * *", 1)],
            "budgets[0].schedule: invalid cron schedule \"0 25 * * *\": hour field \"25\": 25 is outside 0-23",
        );
        check(
            &[Budget {
                schedule: Some("@daily".into()),
                ..Budget::nodes("1")
            }],
            "budgets[0]: schedule and duration must be set together (got schedule only)",
        );
        check(
            &[Budget {
                duration: Some(Duration::from_secs(60)),
                ..Budget::nodes("1")
            }],
            "budgets[0]: schedule and duration must be set together (got duration only)",
        );
        check(
            &[Budget {
                reasons: Some(vec![Reason::Empty, Reason::Expired]),
                ..Budget::nodes("1")
            }],
            "budgets[0].reasons: Expired is not a budget reason (Underutilized, Empty or Drifted)",
        );
        check(
            &vec![Budget::nodes("1"); 51],
            "budgets: 51 budgets, at most 50 are allowed",
        );
    }
}
