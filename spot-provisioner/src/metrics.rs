//! Prometheus metrics of the provisioner, with bounded label cardinality: reasons and
//! capacity types are fixed sets, NodePool names are bounded by the NodePools a cluster has,
//! and no pod, node or instance name is ever a label.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
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
            pod_pending_seconds: Histogram::new(
                [
                    0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
                ]
                .into_iter(),
            ),
            scheduling_seconds: Histogram::new(
                [
                    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ]
                .into_iter(),
            ),
            pods_evaluated: Gauge::default(),
            pods_unschedulable: Gauge::default(),
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
        Metrics { registry, ..m }
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
        let text = m.encode();
        for needle in [
            r#"spot_provisioner_nodeclaims_created_total{nodepool="default",reason="provisioning"} 1"#,
            r#"spot_provisioner_nodeclaims_launched_total{nodepool="default",reason="spot"} 1"#,
            r#"spot_provisioner_nodeclaims_failed_total{nodepool="default",reason="spot_limit"} 1"#,
            "spot_provisioner_pod_pending_seconds_count 1",
            "spot_provisioner_pods_evaluated 2000",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
