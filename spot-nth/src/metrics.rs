//! Prometheus metrics with bounded label cardinality: no node names, event ids or instance
//! ids in labels (NTH's per-node series grew without bound, #925).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of the actions counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    /// `cordon`, `drain`, `uncordon`, `webhook`, `complete-lifecycle-action`, ...
    pub node_action: String,
    /// `success`, `error` or `dry-run`.
    pub node_status: String,
}

/// Labels of the events counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// The event kind (a fixed set).
    pub kind: String,
}

/// Labels of the errors counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WhereLabels {
    /// Where the error happened (`imds`, `sqs`, `node-lookup`, ...).
    pub event_error_where: String,
}

/// The handler's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    actions: Family<ActionLabels, Counter>,
    events: Family<KindLabels, Counter>,
    errors: Family<WhereLabels, Counter>,
    /// Seconds from the notice (as stamped by its source) to the node being cordoned.
    pub notice_to_cordon: Histogram,
    /// Seconds a drain took.
    pub drain_duration: Histogram,
    /// Age of queue messages when received, in seconds.
    pub message_age: Histogram,
}

fn buckets() -> impl Iterator<Item = f64> {
    [
        0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    ]
    .into_iter()
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("spot_nth");
        let actions = Family::<ActionLabels, Counter>::default();
        let events = Family::<KindLabels, Counter>::default();
        let errors = Family::<WhereLabels, Counter>::default();
        let notice_to_cordon = Histogram::new(buckets());
        let drain_duration = Histogram::new(buckets());
        let message_age = Histogram::new(buckets());
        registry.register("actions", "Node actions by action and status", actions.clone());
        registry.register("events", "Interruption events received, by kind", events.clone());
        registry.register("errors", "Errors by where they happened", errors.clone());
        registry.register(
            "notice_to_cordon_seconds",
            "Seconds from notice to cordon",
            notice_to_cordon.clone(),
        );
        registry.register(
            "drain_duration_seconds",
            "Seconds a drain took",
            drain_duration.clone(),
        );
        registry.register(
            "queue_message_age_seconds",
            "Age of queue messages when received",
            message_age.clone(),
        );
        Metrics {
            registry,
            actions,
            events,
            errors,
            notice_to_cordon,
            drain_duration,
            message_age,
        }
    }

    /// Counts an action.
    pub fn action(&self, action: &str, status: &str) {
        self.actions
            .get_or_create(&ActionLabels {
                node_action: action.to_owned(),
                node_status: status.to_owned(),
            })
            .inc();
    }

    /// Counts an event.
    pub fn event(&self, kind: &str) {
        self.events
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Counts an error.
    pub fn error(&self, place: &str) {
        self.errors
            .get_or_create(&WhereLabels {
                event_error_where: place.to_owned(),
            })
            .inc();
    }

    /// How many times `action` ended with `status`.
    pub fn action_count(&self, action: &str, status: &str) -> u64 {
        self.actions
            .get_or_create(&ActionLabels {
                node_action: action.to_owned(),
                node_status: status.to_owned(),
            })
            .get()
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_every_family() {
        let m = Metrics::new();
        m.action("cordon", "success");
        m.event("spot-interruption");
        m.error("sqs");
        m.notice_to_cordon.observe(0.2);
        let text = m.encode();
        for name in [
            "spot_nth_actions_total{node_action=\"cordon\",node_status=\"success\"} 1",
            "spot_nth_events_total{kind=\"spot-interruption\"} 1",
            "spot_nth_errors_total{event_error_where=\"sqs\"} 1",
            "spot_nth_notice_to_cordon_seconds_bucket",
            "spot_nth_drain_duration_seconds_count 0",
            "spot_nth_queue_message_age_seconds_sum",
        ] {
            assert!(text.contains(name), "missing {name} in:\n{text}");
        }
        assert_eq!(m.action_count("cordon", "success"), 1);
    }
}
