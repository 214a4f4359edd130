//! Prometheus metrics of the provisioner, with bounded label cardinality: reasons and
//! capacity types are fixed sets, NodePool names are bounded by the NodePools a cluster has,
//! and no pod, node or instance name is ever a label.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of the NodeClaim counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClaimLabels {
    /// The NodePool.
    pub nodepool: String,
    /// `provisioning`, `interruption`, `consolidation`, `drift`, ... for `created`; the
    /// capacity type for `launched`; the failure class for `failed`
    /// (`insufficient_capacity`, `spot_limit`, `no_offering`, `min_values`, `provider`).
    pub reason: String,
}

/// Labels of the interruption counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InterruptionLabels {
    /// The event kind (`spot-interruption`, `rebalance-recommendation`, ...).
    pub kind: String,
    /// What was done: `replaced`, `already-handled`, `unmanaged`, `ignored`, `event`,
    /// `rebalance-queued`, `failed`.
    pub action: String,
}

/// Labels of the disruption counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DisruptionLabels {
    /// `Empty`, `Underutilized`, `Drifted`, `Expired`, `Interrupted`, `Rebalance`.
    pub reason: String,
    /// `computed`, `invalid`, `executed`, `failed` for commands; the NodePool for nodes.
    pub result: String,
}

/// The provisioner's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// NodeClaims created, by NodePool and reason.
    pub nodeclaims_created: Family<ClaimLabels, Counter>,
    /// NodeClaims launched, by NodePool and capacity type.
    pub nodeclaims_launched: Family<ClaimLabels, Counter>,
    /// NodeClaims that failed to launch, by NodePool and failure class.
    pub nodeclaims_failed: Family<ClaimLabels, Counter>,
    /// Seconds a pod was pending (from creation to being bound), observed when it is bound.
    pub pod_pending_seconds: Histogram,
    /// Seconds one scheduling simulation took.
    pub scheduling_seconds: Histogram,
    /// Pods evaluated by the last scheduling simulation (every provisionable pod, always).
    pub pods_evaluated: Gauge,
    /// Pods the last simulation could not place anywhere.
    pub pods_unschedulable: Gauge,
    /// Seconds from receiving an interruption message to its replacement NodeClaims being
    /// created (target: under 1 s at p99).
    pub interruption_replacement_seconds: Histogram,
    /// Interruption events handled, by kind and action.
    pub interruption_events: Family<InterruptionLabels, Counter>,
    /// Disruption commands, by reason and result (`computed`, `invalid`, `executed`,
    /// `failed`).
    pub disruption_commands: Family<DisruptionLabels, Counter>,
    /// Nodes disrupted (their NodeClaims deleted), by reason and NodePool.
    pub disruption_nodes: Family<DisruptionLabels, Counter>,
    /// USD per hour saved by executed consolidation commands (candidates' prices minus their
    /// replacements').
    pub consolidation_savings_per_hour: Counter<f64, AtomicU64>,
    /// Seconds one disruption pass took to compute its commands.
    pub disruption_evaluation_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under the `spot_provisioner` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("spot_provisioner");
        let m = Metrics {
            registry: Registry::default(),
            nodeclaims_created: Family::default(),
            nodeclaims_launched: Family::default(),
            nodeclaims_failed: Family::default(),
            pod_pending_seconds: Histogram::new([
                0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
            ]),
            scheduling_seconds: Histogram::new([
                0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            pods_evaluated: Gauge::default(),
            pods_unschedulable: Gauge::default(),
            interruption_replacement_seconds: Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            interruption_events: Family::default(),
            disruption_commands: Family::default(),
            disruption_nodes: Family::default(),
            consolidation_savings_per_hour: Counter::default(),
            disruption_evaluation_seconds: Histogram::new([
                0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
        };
        registry.register(
            "nodeclaims_created",
            "NodeClaims created, by NodePool and reason",
            m.nodeclaims_created.clone(),
        );
        registry.register(
            "nodeclaims_launched",
            "NodeClaims launched, by NodePool and capacity type",
            m.nodeclaims_launched.clone(),
        );
        registry.register(
            "nodeclaims_failed",
            "NodeClaims that failed to launch, by NodePool and failure class",
            m.nodeclaims_failed.clone(),
        );
        registry.register(
            "pod_pending_seconds",
            "Seconds from pod creation to binding",
            m.pod_pending_seconds.clone(),
        );
        registry.register(
            "scheduling_seconds",
            "Seconds one scheduling simulation took",
            m.scheduling_seconds.clone(),
        );
        registry.register(
            "pods_evaluated",
            "Pods evaluated by the last scheduling simulation",
            m.pods_evaluated.clone(),
        );
        registry.register(
            "pods_unschedulable",
            "Pods the last scheduling simulation could not place",
            m.pods_unschedulable.clone(),
        );
        registry.register(
            "interruption_replacement_seconds",
            "Seconds from an interruption message to its replacement NodeClaims",
            m.interruption_replacement_seconds.clone(),
        );
        registry.register(
            "interruption_events",
            "Interruption events handled, by kind and action",
            m.interruption_events.clone(),
        );
        registry.register(
            "disruption_commands",
            "Disruption commands, by reason and result",
            m.disruption_commands.clone(),
        );
        registry.register(
            "disruption_nodes",
            "Nodes disrupted, by reason and NodePool",
            m.disruption_nodes.clone(),
        );
        registry.register(
            "consolidation_savings_per_hour",
            "USD per hour saved by executed consolidation commands",
            m.consolidation_savings_per_hour.clone(),
        );
        registry.register(
            "disruption_evaluation_seconds",
            "Seconds one disruption pass took to compute its commands",
            m.disruption_evaluation_seconds.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts a handled interruption event.
    pub fn interruption(&self, kind: &str, action: &str) {
        self.interruption_events
            .get_or_create(&InterruptionLabels {
                kind: kind.to_owned(),
                action: action.to_owned(),
            })
            .inc();
    }

    /// Counts a disruption command outcome.
    pub fn command(&self, reason: &str, result: &str) {
        self.disruption_commands
            .get_or_create(&DisruptionLabels {
                reason: reason.to_owned(),
                result: result.to_owned(),
            })
            .inc();
    }

    /// Counts a disrupted node.
    pub fn disrupted(&self, reason: &str, nodepool: &str) {
        self.disruption_nodes
            .get_or_create(&DisruptionLabels {
                reason: reason.to_owned(),
                result: nodepool.to_owned(),
            })
            .inc();
    }

    /// Counts a created NodeClaim.
    pub fn created(&self, nodepool: &str, reason: &str) {
        self.nodeclaims_created
            .get_or_create(&labels(nodepool, reason))
            .inc();
    }

    /// Counts a launched NodeClaim.
    pub fn launched(&self, nodepool: &str, capacity_type: &str) {
        self.nodeclaims_launched
            .get_or_create(&labels(nodepool, capacity_type))
            .inc();
    }

    /// Counts a failed launch.
    pub fn failed(&self, nodepool: &str, class: &str) {
        self.nodeclaims_failed
            .get_or_create(&labels(nodepool, class))
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

fn labels(nodepool: &str, reason: &str) -> ClaimLabels {
    ClaimLabels {
        nodepool: nodepool.to_owned(),
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms_are_exposed() {
        let m = Metrics::new();
        m.created("default", "provisioning");
        m.launched("default", "spot");
        m.failed("default", "spot_limit");
        m.pod_pending_seconds.observe(3.0);
        m.pods_evaluated.set(2000);
        m.interruption_replacement_seconds.observe(0.04);
        m.interruption("spot-interruption", "replaced");
        m.command("Underutilized", "executed");
        m.disrupted("Empty", "default");
        m.consolidation_savings_per_hour.inc_by(0.25);
        let text = m.encode();
        for needle in [
            r#"spot_provisioner_nodeclaims_created_total{nodepool="default",reason="provisioning"} 1"#,
            r#"spot_provisioner_nodeclaims_launched_total{nodepool="default",reason="spot"} 1"#,
            r#"spot_provisioner_nodeclaims_failed_total{nodepool="default",reason="spot_limit"} 1"#,
            "spot_provisioner_pod_pending_seconds_count 1",
            "spot_provisioner_pods_evaluated 2000",
            "spot_provisioner_interruption_replacement_seconds_count 1",
            r#"spot_provisioner_interruption_events_total{kind="spot-interruption",action="replaced"} 1"#,
            r#"spot_provisioner_disruption_commands_total{reason="Underutilized",result="executed"} 1"#,
            r#"spot_provisioner_disruption_nodes_total{reason="Empty",result="default"} 1"#,
            "spot_provisioner_consolidation_savings_per_hour_total 0.25",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
