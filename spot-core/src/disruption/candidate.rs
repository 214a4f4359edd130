//! Disruption candidates: the nodes the disruption methods may act on, and the checks that
//! rule a node out (Karpenter's `NewCandidate`, `ValidateNodeDisruptable`,
//! `ValidatePodsDisruptable`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use super::cost;
use super::duration::parse_go_duration;
use crate::instance_type::CapacityType;
use crate::pod::{LabelSelector, PodSpec};

/// The annotation on pods and nodes that blocks voluntary disruption: `"true"`, or a Go
/// duration counted from the pod's start.
pub const DO_NOT_DISRUPT: &str = "karpenter.sh/do-not-disrupt";

/// The owner kind of mirror (static) pods: they are neither evicted nor rescheduled.
pub const NODE_OWNER_KIND: &str = "Node";

/// Why a node cannot be disrupted now; each names the node and what blocks it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Blocked {
    /// The node is not initialized yet.
    #[error("node {node}: not initialized")]
    NotInitialized {
        /// The node.
        node: String,
    },
    /// The provisioner nominated the node for pending pods.
    #[error("node {node}: nominated for pending pods")]
    Nominated {
        /// The node.
        node: String,
    },
    /// The node is already being deleted.
    #[error("node {node}: already deleting")]
    Deleting {
        /// The node.
        node: String,
    },
    /// The node has `karpenter.sh/do-not-disrupt: "true"`.
    #[error("node {node}: annotated {DO_NOT_DISRUPT}")]
    NodeDoNotDisrupt {
        /// The node.
        node: String,
    },
    /// A pod's `karpenter.sh/do-not-disrupt` is `"true"` or a duration not yet elapsed.
    #[error("node {node}: pod {pod} has {DO_NOT_DISRUPT}={value:?}")]
    PodDoNotDisrupt {
        /// The node.
        node: String,
        /// The pod, `namespace/name`.
        pod: String,
        /// The annotation value.
        value: String,
    },
    /// A PodDisruptionBudget allows no disruption of a pod.
    #[error("node {node}: PodDisruptionBudget {pdb} allows no disruption of pod {pod}")]
    Pdb {
        /// The node.
        node: String,
        /// The pod, `namespace/name`.
        pod: String,
        /// The PDB, `namespace/name`.
        pdb: String,
    },
    /// More than one PodDisruptionBudget selects a pod (the eviction API refuses those).
    #[error("node {node}: pod {pod} is selected by several PodDisruptionBudgets ({})", pdbs.join(", "))]
    MultiplePdbs {
        /// The node.
        node: String,
        /// The pod, `namespace/name`.
        pod: String,
        /// The PDBs, `namespace/name`.
        pdbs: Vec<String>,
    },
}

/// A PodDisruptionBudget as far as disruption cares.
#[derive(Debug, Clone, PartialEq)]
pub struct Pdb {
    /// Namespace (a PDB selects pods of its own namespace only).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The pods it covers.
    pub selector: LabelSelector,
    /// `status.disruptionsAllowed`.
    pub disruptions_allowed: i32,
}

/// The cluster's PodDisruptionBudgets, indexed by namespace.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pdbs {
    by_namespace: BTreeMap<String, Vec<Pdb>>,
}

impl Pdbs {
    /// Indexes the budgets.
    pub fn new(pdbs: impl IntoIterator<Item = Pdb>) -> Pdbs {
        let mut by_namespace: BTreeMap<String, Vec<Pdb>> = BTreeMap::new();
        for pdb in pdbs {
            by_namespace.entry(pdb.namespace.clone()).or_default().push(pdb);
        }
        Pdbs { by_namespace }
    }

    /// The budgets selecting a pod.
    pub fn selecting<'a>(&'a self, pod: &'a PodSpec) -> impl Iterator<Item = &'a Pdb> + 'a {
        self.by_namespace
            .get(&pod.namespace)
            .into_iter()
            .flatten()
            .filter(|pdb| pdb.selector.matches(&pod.labels))
    }

    /// Whether the pod could be evicted now: at most one budget selects it, and that one
    /// allows a disruption. The error names the blocking budget, or every budget when
    /// several select the pod.
    fn check(&self, pod: &PodSpec) -> Result<(), Vec<String>> {
        let mut selecting = self.selecting(pod);
        let Some(first) = selecting.next() else {
            return Ok(());
        };
        let rest: Vec<&Pdb> = selecting.collect();
        if rest.is_empty() && first.disruptions_allowed > 0 {
            return Ok(());
        }
        Err(std::iter::once(first)
            .chain(rest)
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect())
    }
}

/// Whether a pod moves when its node goes: not a DaemonSet pod and not a mirror pod.
pub fn is_reschedulable(pod: &PodSpec) -> bool {
    !pod.is_daemonset() && pod.owner_kind.as_deref() != Some(NODE_OWNER_KIND)
}

/// Whether a pod's `karpenter.sh/do-not-disrupt` value blocks disruption at `now`: `"true"`,
/// or a Go duration that has not elapsed since the pod started. Other values are ignored, as
/// in Karpenter.
pub fn pod_blocks_disruption(pod: &PodSpec, now: OffsetDateTime) -> bool {
    match pod.do_not_disrupt.as_deref() {
        None => false,
        Some("true") => true,
        Some(value) => match parse_go_duration(value) {
            Ok(window) => {
                let started_ms = i128::from(pod.created_unix_ms);
                let now_ms = now.unix_timestamp_nanos() / 1_000_000;
                now_ms < started_ms + window.as_millis() as i128
            }
            Err(_) => false,
        },
    }
}

/// Karpenter's `Consolidatable` condition: `consolidate_after` (`None` = `Never`) has passed
/// since the last pod event on the node, or since it initialized when none happened.
pub fn is_consolidatable(
    last_pod_event: Option<OffsetDateTime>,
    initialized_at: OffsetDateTime,
    consolidate_after: Option<Duration>,
    now: OffsetDateTime,
) -> bool {
    let Some(after) = consolidate_after else {
        return false;
    };
    let since = last_pod_event.unwrap_or(initialized_at);
    match time::Duration::try_from(after) {
        Ok(after) => now >= since + after,
        Err(_) => false,
    }
}

/// A node the disruption methods may act on.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// The node's name.
    pub node_name: String,
    /// Its NodePool (`karpenter.sh/nodepool`).
    pub nodepool: String,
    /// Its instance type; empty when unknown (consolidation skips such nodes).
    pub instance_type: String,
    /// Its zone; empty when unknown.
    pub zone: String,
    /// Its capacity type.
    pub capacity_type: CapacityType,
    /// What it costs, USD per hour (its own offering's price).
    pub price: f64,
    /// Every pod bound to it (DaemonSet and mirror pods included).
    pub pods: Vec<Arc<PodSpec>>,
    /// Whether the node is initialized.
    pub initialized: bool,
    /// When its NodeClaim was created.
    pub created: OffsetDateTime,
    /// Its NodeClaim's `expireAfter`; `None` is `Never`.
    pub expire_after: Option<Duration>,
    /// Karpenter's `Consolidatable` condition (see [`is_consolidatable`]).
    pub consolidatable: bool,
    /// The node has `karpenter.sh/do-not-disrupt: "true"`.
    pub do_not_disrupt: bool,
    /// The provisioner nominated it for pending pods.
    pub nominated: bool,
    /// It is already being deleted.
    pub deleting: bool,
    /// When its `Drifted` condition became true, if it did.
    pub drifted: Option<OffsetDateTime>,
}

impl Candidate {
    /// The pods that move if the node goes (see [`is_reschedulable`]).
    pub fn reschedulable_pods(&self) -> impl Iterator<Item = &Arc<PodSpec>> {
        self.pods.iter().filter(|p| is_reschedulable(p))
    }

    /// `1 + Σ max(0, eviction cost)` of the reschedulable pods.
    pub fn reschedule_cost(&self) -> f64 {
        cost::reschedule_cost(self.reschedulable_pods().map(|p| &**p))
    }

    /// Whether no pod with a positive eviction cost would move.
    pub fn is_empty(&self) -> bool {
        cost::is_empty_cost(self.reschedule_cost())
    }

    /// `price / reschedule cost`.
    pub fn savings_ratio(&self) -> f64 {
        cost::savings_ratio(self.price, self.reschedule_cost())
    }

    /// The fraction of the node's lifetime remaining at `now`.
    pub fn lifetime_remaining(&self, now: OffsetDateTime) -> f64 {
        cost::lifetime_remaining(self.created, self.expire_after, now)
    }

    /// Karpenter's `DisruptionCost`: the reschedulable pods' eviction costs × lifetime
    /// remaining.
    pub fn disruption_cost(&self, now: OffsetDateTime) -> f64 {
        cost::disruption_cost(
            self.reschedulable_pods().map(|p| &**p),
            self.lifetime_remaining(now),
        )
    }

    /// Checks that the node may be disrupted now: initialized, not nominated, not deleting,
    /// no `do-not-disrupt` on the node; and unless `ignore_pod_blocks` (an eventual
    /// disruption such as drift on a pool with `terminationGracePeriod`), no pod with an
    /// active `do-not-disrupt` and no pod a PodDisruptionBudget protects (or that several
    /// select). Mirror pods are never evicted, so PDBs are not checked for them.
    pub fn validate(&self, pdbs: &Pdbs, now: OffsetDateTime, ignore_pod_blocks: bool) -> Result<(), Blocked> {
        let node = || self.node_name.clone();
        if !self.initialized {
            return Err(Blocked::NotInitialized { node: node() });
        }
        if self.deleting {
            return Err(Blocked::Deleting { node: node() });
        }
        if self.nominated {
            return Err(Blocked::Nominated { node: node() });
        }
        if self.do_not_disrupt {
            return Err(Blocked::NodeDoNotDisrupt { node: node() });
        }
        if ignore_pod_blocks {
            return Ok(());
        }
        for pod in &self.pods {
            if pod_blocks_disruption(pod, now) {
                return Err(Blocked::PodDoNotDisrupt {
                    node: node(),
                    pod: pod.key(),
                    value: pod.do_not_disrupt.clone().unwrap_or_default(),
                });
            }
        }
        for pod in self
            .pods
            .iter()
            .filter(|p| p.owner_kind.as_deref() != Some(NODE_OWNER_KIND))
        {
            if let Err(mut names) = pdbs.check(pod) {
                return Err(if names.len() > 1 {
                    Blocked::MultiplePdbs {
                        node: node(),
                        pod: pod.key(),
                        pdbs: names,
                    }
                } else {
                    Blocked::Pdb {
                        node: node(),
                        pod: pod.key(),
                        pdb: names.remove(0),
                    }
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::DAEMONSET_KIND;
    use crate::resources::Resources;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-05-06 12:00 UTC);

    fn pod(name: &str, app: &str) -> Arc<PodSpec> {
        let mut pod = PodSpec::new("prod", name, Resources::new(100, 1 << 20));
        pod.labels.insert("app".into(), app.into());
        pod.owner_kind = Some("ReplicaSet".into());
        pod.created_unix_ms = (NOW.unix_timestamp() - 600) * 1000;
        Arc::new(pod)
    }

    fn candidate(pods: Vec<Arc<PodSpec>>) -> Candidate {
        Candidate {
            node_name: "node-a".into(),
            nodepool: "default".into(),
            instance_type: "m5.large".into(),
            zone: "us-east-1a".into(),
            capacity_type: CapacityType::Spot,
            price: 0.04,
            pods,
            initialized: true,
            created: NOW - time::Duration::days(1),
            expire_after: Some(Duration::from_secs(720 * 3600)),
            consolidatable: true,
            do_not_disrupt: false,
            nominated: false,
            deleting: false,
            drifted: None,
        }
    }

    fn pdb(name: &str, app: &str, allowed: i32) -> Pdb {
        Pdb {
            namespace: "prod".into(),
            name: name.into(),
            selector: LabelSelector::labels([("app", app)]),
            disruptions_allowed: allowed,
        }
    }

    #[test]
    fn reschedulable_pods_and_costs() {
        let mut ds = (*pod("ds", "agent")).clone();
        ds.owner_kind = Some(DAEMONSET_KIND.into());
        let mut mirror = (*pod("kube-proxy", "proxy")).clone();
        mirror.owner_kind = Some(NODE_OWNER_KIND.into());
        let c = candidate(vec![
            pod("web-1", "web"),
            Arc::new(ds),
            Arc::new(mirror),
            pod("web-2", "web"),
        ]);
        assert_eq!(c.reschedulable_pods().count(), 2);
        assert_eq!(c.reschedule_cost(), 3.0);
        assert!(!c.is_empty());
        assert_eq!(c.savings_ratio(), 0.04 / 3.0);
        let remaining = 1.0 - 24.0 / 720.0;
        assert!((c.disruption_cost(NOW) - 2.0 * remaining).abs() < 1e-12);
        assert!(candidate(vec![]).is_empty());
    }

    #[test]
    fn node_checks() {
        let pdbs = Pdbs::default();
        let mut c = candidate(vec![pod("web-1", "web")]);
        assert_eq!(c.validate(&pdbs, NOW, false), Ok(()));
        c.do_not_disrupt = true;
        assert_eq!(
            c.validate(&pdbs, NOW, true).unwrap_err().to_string(),
            "node node-a: annotated karpenter.sh/do-not-disrupt",
            "the node annotation blocks even eventual disruption"
        );
        c.do_not_disrupt = false;
        c.nominated = true;
        assert!(matches!(
            c.validate(&pdbs, NOW, false),
            Err(Blocked::Nominated { .. })
        ));
        c.nominated = false;
        c.initialized = false;
        assert!(matches!(
            c.validate(&pdbs, NOW, false),
            Err(Blocked::NotInitialized { .. })
        ));
        c.initialized = true;
        c.deleting = true;
        assert!(matches!(
            c.validate(&pdbs, NOW, false),
            Err(Blocked::Deleting { .. })
        ));
    }

    #[test]
    fn do_not_disrupt_pods() {
        let pdbs = Pdbs::default();
        let with = |value: &str| {
            let mut p = (*pod("batch-1", "batch")).clone();
            p.do_not_disrupt = Some(value.into());
            candidate(vec![pod("web-1", "web"), Arc::new(p)])
        };
        assert_eq!(
            with("true").validate(&pdbs, NOW, false).unwrap_err().to_string(),
            "node node-a: pod prod/batch-1 has karpenter.sh/do-not-disrupt=\"true\""
        );
        // Started 10 minutes ago.
        assert!(
            with("30m").validate(&pdbs, NOW, false).is_err(),
            "20 minutes to go"
        );
        assert_eq!(with("5m").validate(&pdbs, NOW, false), Ok(()), "elapsed");
        assert_eq!(with("10m").validate(&pdbs, NOW, false), Ok(()), "elapsed exactly");
        assert_eq!(with("false").validate(&pdbs, NOW, false), Ok(()));
        assert_eq!(
            with("soon").validate(&pdbs, NOW, false),
            Ok(()),
            "invalid values are ignored"
        );
        assert_eq!(
            with("true").validate(&pdbs, NOW, true),
            Ok(()),
            "eventual with a grace period"
        );
    }

    #[test]
    fn pdbs_block() {
        let c = candidate(vec![pod("web-1", "web"), pod("db-0", "db")]);
        assert_eq!(c.validate(&Pdbs::new([pdb("web", "web", 1)]), NOW, false), Ok(()));
        assert_eq!(
            c.validate(&Pdbs::new([pdb("db", "db", 0)]), NOW, false)
                .unwrap_err()
                .to_string(),
            "node node-a: PodDisruptionBudget prod/db allows no disruption of pod prod/db-0"
        );
        let two = Pdbs::new([pdb("web", "web", 3), pdb("all", "web", 3)]);
        assert_eq!(
            c.validate(&two, NOW, false).unwrap_err(),
            Blocked::MultiplePdbs {
                node: "node-a".into(),
                pod: "prod/web-1".into(),
                pdbs: vec!["prod/web".into(), "prod/all".into()],
            }
        );
        let mut other_ns = pdb("db", "db", 0);
        other_ns.namespace = "staging".into();
        assert_eq!(
            c.validate(&Pdbs::new([other_ns]), NOW, false),
            Ok(()),
            "own namespace only"
        );
        let mut mirror = (*pod("etcd", "db")).clone();
        mirror.owner_kind = Some(NODE_OWNER_KIND.into());
        let c = candidate(vec![Arc::new(mirror)]);
        assert_eq!(
            c.validate(&Pdbs::new([pdb("db", "db", 0)]), NOW, false),
            Ok(()),
            "mirror pods are not evicted"
        );
    }

    #[test]
    fn consolidatable_after_the_window() {
        let init = datetime!(2026-05-06 11:00 UTC);
        let five = Some(Duration::from_secs(300));
        assert!(is_consolidatable(None, init, five, NOW));
        assert!(!is_consolidatable(
            Some(datetime!(2026-05-06 11:57 UTC)),
            init,
            five,
            NOW
        ));
        assert!(is_consolidatable(
            Some(datetime!(2026-05-06 11:55 UTC)),
            init,
            five,
            NOW
        ));
        assert!(!is_consolidatable(None, init, None, NOW), "Never");
        assert!(is_consolidatable(Some(NOW), init, Some(Duration::ZERO), NOW));
    }
}
