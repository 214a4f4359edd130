//! The interruption event model: everything that can take an instance away, from any source.
//!
//! Sources (IMDS, SQS/EventBridge) parse their wire formats into [`InterruptionEvent`]s; the
//! handler and the provisioner act on these and never on the wire formats.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// A stable event identifier: the same notice seen twice (polled again, delivered twice)
/// has the same id, so handlers can deduplicate on it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(String);

impl EventId {
    /// Derives an id from the parts that identify a notice (kind, instance, the source's own
    /// id or the notice time). The result is a short hex digest, safe as a label or taint value.
    pub fn derive(parts: &[&str]) -> Self {
        let mut hasher = Sha256::new();
        for part in parts {
            hasher.update(part.as_bytes());
            hasher.update([0u8]);
        }
        let digest = hasher.finalize();
        let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        EventId(hex)
    }

    /// Wraps an id that a source already made stable (an EventBridge event id, say).
    pub fn from_raw(id: impl Into<String>) -> Self {
        EventId(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What EC2 will do to a spot instance at the end of its notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpotAction {
    /// The instance is terminated.
    Terminate,
    /// The instance is stopped.
    Stop,
    /// The instance is hibernated.
    Hibernate,
}

/// State of an EC2 scheduled event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduledState {
    /// The event will happen.
    Active,
    /// The event was canceled: undo what was done for it.
    Canceled,
    /// The event already happened.
    Completed,
}

/// EC2 instance states that end an instance's life as a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceState {
    /// `stopping`.
    Stopping,
    /// `stopped`.
    Stopped,
    /// `shutting-down`.
    ShuttingDown,
    /// `terminated`.
    Terminated,
}

/// Which Auto Scaling lifecycle transition a hook is holding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LifecycleTransition {
    /// `autoscaling:EC2_INSTANCE_TERMINATING`.
    Terminating,
    /// `autoscaling:EC2_INSTANCE_LAUNCHING`.
    Launching,
}

/// The Auto Scaling lifecycle action that must be completed once the work is done.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LifecycleAction {
    /// Which transition.
    pub transition: LifecycleTransition,
    /// The hook's name.
    pub hook_name: String,
    /// The Auto Scaling group.
    pub group_name: String,
    /// The token to pass to CompleteLifecycleAction.
    pub token: String,
}

/// What happened (or will happen) to the instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum EventKind {
    /// A two-minute spot interruption notice.
    SpotInterruption {
        /// What EC2 will do.
        action: SpotAction,
        /// When EC2 will do it.
        #[serde(with = "time::serde::rfc3339")]
        deadline: OffsetDateTime,
    },
    /// The instance is at elevated risk of interruption.
    RebalanceRecommendation,
    /// Scheduled maintenance (AWS Health scheduledChange or IMDS scheduled events).
    ScheduledChange {
        /// The event code (`instance-stop`, `system-reboot`, ...).
        code: String,
        /// Earliest start.
        #[serde(with = "time::serde::rfc3339")]
        not_before: OffsetDateTime,
        /// Latest end, when known.
        #[serde(with = "time::serde::rfc3339::option")]
        not_after: Option<OffsetDateTime>,
        /// Active, canceled or completed.
        state: ScheduledState,
        /// Free text from AWS.
        description: String,
    },
    /// The instance changed to a state that ends it.
    StateChange {
        /// The new state.
        state: InstanceState,
    },
    /// An Auto Scaling lifecycle hook holds the instance.
    AsgLifecycle(LifecycleAction),
    /// A capacity reservation the instance runs in is being reclaimed.
    CapacityReservationInterruption,
}

impl EventKind {
    /// A short, bounded name for metrics labels and logs.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::SpotInterruption { .. } => "spot-interruption",
            EventKind::RebalanceRecommendation => "rebalance-recommendation",
            EventKind::ScheduledChange { .. } => "scheduled-change",
            EventKind::StateChange { .. } => "state-change",
            EventKind::AsgLifecycle(LifecycleAction {
                transition: LifecycleTransition::Terminating,
                ..
            }) => "asg-lifecycle-terminate",
            EventKind::AsgLifecycle(LifecycleAction {
                transition: LifecycleTransition::Launching,
                ..
            }) => "asg-lifecycle-launch",
            EventKind::CapacityReservationInterruption => "capacity-reservation-interruption",
        }
    }

    /// Whether the instance goes away (as opposed to a warning or a launch).
    pub fn is_terminal(&self) -> bool {
        match self {
            EventKind::SpotInterruption { .. }
            | EventKind::StateChange { .. }
            | EventKind::CapacityReservationInterruption => true,
            EventKind::ScheduledChange { state, .. } => *state == ScheduledState::Active,
            EventKind::AsgLifecycle(action) => action.transition == LifecycleTransition::Terminating,
            EventKind::RebalanceRecommendation => false,
        }
    }
}

/// Where an event came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "kebab-case")]
pub enum Origin {
    /// The instance metadata service of the instance itself.
    Imds,
    /// A queue message.
    Queue {
        /// The queue's message id.
        message_id: String,
        /// The EventBridge (or notification) id inside the message, when it has one.
        upstream_id: Option<String>,
    },
    /// Anything else (tests, simulations, embedders).
    Other {
        /// A free-form name.
        name: String,
    },
}

/// One interruption event about one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterruptionEvent {
    /// Stable id (see [`EventId`]).
    pub id: EventId,
    /// The EC2 instance id.
    pub instance_id: String,
    /// What happens.
    pub kind: EventKind,
    /// When the source saw it (or AWS stamped it).
    #[serde(with = "time::serde::rfc3339")]
    pub observed_at: OffsetDateTime,
    /// Where it came from.
    pub origin: Origin,
}

impl InterruptionEvent {
    /// Builds an event whose id is derived from the kind, the instance and `identity`
    /// (the part that makes this notice distinct, such as its time or upstream id).
    pub fn new(
        instance_id: impl Into<String>,
        kind: EventKind,
        identity: &str,
        observed_at: OffsetDateTime,
        origin: Origin,
    ) -> Self {
        let instance_id = instance_id.into();
        let id = EventId::derive(&[kind.name(), &instance_id, identity]);
        InterruptionEvent {
            id,
            instance_id,
            kind,
            observed_at,
            origin,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn ids_are_stable_and_distinct() {
        let a = EventId::derive(&["spot-interruption", "i-1", "2026-01-01T00:00:00Z"]);
        let b = EventId::derive(&["spot-interruption", "i-1", "2026-01-01T00:00:00Z"]);
        let c = EventId::derive(&["spot-interruption", "i-2", "2026-01-01T00:00:00Z"]);
        // Part boundaries matter: ("ab", "c") is not ("a", "bc").
        let d = EventId::derive(&["ab", "c"]);
        let e = EventId::derive(&["a", "bc"]);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(d, e);
        assert_eq!(a.as_str().len(), 16);
    }

    #[test]
    fn event_round_trips_through_json() {
        let ev = InterruptionEvent::new(
            "i-0abc",
            EventKind::SpotInterruption {
                action: SpotAction::Terminate,
                deadline: datetime!(2026-11-22 10:02:00 UTC),
            },
            "2026-11-22T10:02:00Z",
            datetime!(2026-11-22 10:00:00 UTC),
            Origin::Imds,
        );
        let json = serde_json::to_string(&ev).unwrap();
        assert!(json.contains("\"kind\":\"spot-interruption\""), "{json}");
        let back: InterruptionEvent = serde_json::from_str(&json).unwrap();
        assert_eq!(back, ev);
        assert!(ev.kind.is_terminal());
        assert!(!EventKind::RebalanceRecommendation.is_terminal());
    }
}
