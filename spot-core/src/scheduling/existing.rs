//! Capacity that already exists: registered nodes and NodeClaims launched by an earlier
//! solve that have not become nodes yet, and what the scheduler precomputes about them
//! (remaining resources after bound pods and missing DaemonSet pods, effective taints).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::labels;
use crate::node::Taint;
use crate::pod::{HostPort, PodSpec, tolerates_all};
use crate::requirements::{Operator, Requirement, Requirements};
use crate::resources::Resources;

use super::intern::{Dims, strictly_compatible};
use super::template::NodePoolTemplate;

/// Taints that only mark a node as not ready yet; ignored on nodes that are not initialized.
pub const EPHEMERAL_TAINTS: [&str; 4] = [
    "node.kubernetes.io/not-ready",
    "node.kubernetes.io/unreachable",
    "node.cloudprovider.kubernetes.io/uninitialized",
    "karpenter.sh/unregistered",
];

/// A NodeClaim launched but not yet registered as a node.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InFlightClaim {
    /// The NodeClaim's requirements (NodePool ∩ its pods ∩ topology decisions).
    pub requirements: Requirements,
    /// The candidate instance types (`node.kubernetes.io/instance-type In [...]`); empty when
    /// the requirements already say it or it is unknown.
    pub instance_types: Vec<String>,
}

/// A node (or in-flight NodeClaim) pods can be placed on.
#[derive(Debug, Clone, PartialEq)]
pub struct ExistingNode {
    /// The node's (or NodeClaim's) name, reported in [`super::Solution::existing`].
    pub name: String,
    /// The node's labels (for an in-flight claim, those already known).
    pub labels: BTreeMap<String, String>,
    /// The node's taints.
    pub taints: Vec<Taint>,
    /// What pods can request on the node.
    pub allocatable: Resources,
    /// Bound, non-terminal pods.
    pub pods: Vec<Arc<PodSpec>>,
    /// Whether the node finished initializing (startup taints gone); initialized nodes are
    /// tried first, and on the others startup and not-ready taints are ignored.
    pub initialized: bool,
    /// The NodePool that launched it.
    pub nodepool: Option<String>,
    /// Set for a NodeClaim that is not a node yet: its requirements and candidate types.
    pub in_flight: Option<InFlightClaim>,
}

impl ExistingNode {
    /// An initialized node with these labels and allocatable resources, no taints and no
    /// pods.
    pub fn new(
        name: impl Into<String>,
        labels: BTreeMap<String, String>,
        allocatable: Resources,
    ) -> ExistingNode {
        ExistingNode {
            name: name.into(),
            labels,
            taints: Vec::new(),
            allocatable,
            pods: Vec::new(),
            initialized: true,
            nodepool: None,
            in_flight: None,
        }
    }

    /// The `kubernetes.io/hostname` label, or the name.
    pub fn hostname(&self) -> &str {
        self.labels
            .get(labels::HOSTNAME)
            .map_or(self.name.as_str(), String::as_str)
    }
}

/// An existing node with what the scheduler needs precomputed.
#[derive(Debug, Clone)]
pub(crate) struct Prepared {
    pub(crate) node: ExistingNode,
    /// The taints scheduling checks.
    pub(crate) taints: Vec<Taint>,
    /// Labels as requirements (∩ the in-flight claim's requirements), hostname excluded.
    pub(crate) requirements: Requirements,
    /// Whether the requirements may still narrow (an in-flight claim).
    pub(crate) flexible: bool,
    /// Allocatable − bound pods − DaemonSet pods that should run but are not there yet.
    pub(crate) remaining: Vec<i64>,
    /// Host ports of the bound pods.
    pub(crate) host_ports: Vec<HostPort>,
}

/// Whether a DaemonSet pod would run on the node (taints tolerated, labels satisfy one of
/// its node requirement terms).
fn daemon_runs_on(daemon: &PodSpec, taints: &[Taint], requirements: &Requirements, flexible: bool) -> bool {
    if tolerates_all(&daemon.tolerations, taints).is_err() {
        return false;
    }
    daemon.node_requirements.is_empty()
        || daemon.node_requirements.iter().any(|term| {
            let term = without_hostname(term);
            if flexible {
                requirements.compatible(&term).is_ok()
            } else {
                strictly_compatible(requirements, &term).is_ok()
            }
        })
}

/// The requirements without the hostname key.
pub(crate) fn without_hostname(r: &Requirements) -> Requirements {
    if r.get(labels::HOSTNAME).is_none() {
        return r.clone();
    }
    r.iter()
        .filter(|q| q.key() != labels::HOSTNAME)
        .cloned()
        .collect()
}

impl Prepared {
    /// Precomputes an existing node.
    pub(crate) fn build(
        node: ExistingNode,
        templates: &[NodePoolTemplate],
        daemonsets: &[PodSpec],
        dims: &Dims,
    ) -> Prepared {
        let startup: &[Taint] = node
            .nodepool
            .as_deref()
            .and_then(|pool| templates.iter().find(|t| t.name == pool))
            .map_or(&[], |t| t.startup_taints.as_slice());
        let taints: Vec<Taint> = if node.initialized {
            node.taints.clone()
        } else {
            node.taints
                .iter()
                .filter(|t| {
                    !EPHEMERAL_TAINTS.contains(&t.key.as_str()) && !startup.iter().any(|s| s.same_slot(t))
                })
                .cloned()
                .collect()
        };
        let mut requirements = without_hostname(&Requirements::from_labels(&node.labels));
        let flexible = node.in_flight.is_some();
        if let Some(claim) = &node.in_flight {
            requirements = requirements.intersect(&without_hostname(&claim.requirements));
            if !claim.instance_types.is_empty()
                && let Ok(r) =
                    Requirement::new(labels::INSTANCE_TYPE, Operator::In, claim.instance_types.clone())
            {
                requirements.add(r);
            }
        }
        let width = dims.width();
        let mut used = vec![0i64; width];
        let mut present_daemons = vec![0i64; width];
        let mut host_ports = Vec::new();
        for pod in &node.pods {
            let dense = dims.dense_lossy(&pod.requests);
            super::intern::add_into(&mut used, &dense);
            if pod.is_daemonset() {
                super::intern::add_into(&mut present_daemons, &dense);
            }
            host_ports.extend(pod.host_ports.iter().cloned());
        }
        let mut expected_daemons = vec![0i64; width];
        for daemon in daemonsets {
            if daemon_runs_on(daemon, &taints, &requirements, flexible) {
                super::intern::add_into(&mut expected_daemons, &dims.dense_lossy(&daemon.requests));
                host_ports.extend(daemon.host_ports.iter().cloned());
            }
        }
        let allocatable = dims.dense_lossy(&node.allocatable);
        let remaining = (0..width)
            .map(|d| {
                let missing = (expected_daemons[d] - present_daemons[d]).max(0);
                allocatable[d] - used[d] - missing
            })
            .collect();
        host_ports.sort();
        host_ports.dedup();
        Prepared {
            node,
            taints,
            requirements,
            flexible,
            remaining,
            host_ports,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::TaintEffect;
    use crate::pod::DAEMONSET_KIND;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn remaining_counts_pods_and_missing_daemons() {
        let mut node = ExistingNode::new(
            "n1",
            labels(&[(labels::ZONE, "z1"), (labels::ARCH, "amd64")]),
            Resources::new(4000, 8 << 30).with_pods(110),
        );
        node.pods.push(Arc::new(PodSpec::new(
            "default",
            "web",
            Resources::new(1000, 1 << 30),
        )));
        let mut present = PodSpec::new("kube-system", "ds-a", Resources::new(100, 1 << 20));
        present.owner_kind = Some(DAEMONSET_KIND.into());
        node.pods.push(Arc::new(present.clone()));
        let missing = PodSpec::new("kube-system", "ds-b", Resources::new(200, 0));
        let mut arm_only = PodSpec::new("kube-system", "ds-c", Resources::new(300, 0));
        arm_only.node_requirements =
            vec![Requirements::new().with(Requirement::new(labels::ARCH, Operator::In, ["arm64"]).unwrap())];
        let dims = Dims::default();
        let p = Prepared::build(node, &[], &[present, missing, arm_only], &dims);
        assert_eq!(
            p.remaining[0],
            4000 - 1000 - 100 - 200,
            "ds-b is expected, ds-c does not run"
        );
        assert_eq!(p.remaining[2], 110 - 2 - 1);
        assert!(!p.flexible);
        assert_eq!(p.node.hostname(), "n1");
    }

    #[test]
    fn uninitialized_nodes_ignore_startup_and_ephemeral_taints() {
        let mut node = ExistingNode::new("n1", BTreeMap::new(), Resources::new(1000, 1 << 30));
        node.initialized = false;
        node.nodepool = Some("default".into());
        node.taints = vec![
            Taint::new("node.kubernetes.io/not-ready", "", TaintEffect::NoSchedule),
            Taint::new("example.com/init", "x", TaintEffect::NoSchedule),
            Taint::new("dedicated", "gpu", TaintEffect::NoSchedule),
        ];
        let mut template = NodePoolTemplate::new("default", Vec::new());
        template.startup_taints = vec![Taint::new("example.com/init", "x", TaintEffect::NoSchedule)];
        let p = Prepared::build(node, &[template], &[], &Dims::default());
        assert_eq!(p.taints.len(), 1);
        assert_eq!(p.taints[0].key, "dedicated");
    }

    #[test]
    fn in_flight_claims_are_flexible() {
        let mut node = ExistingNode::new("claim-1", BTreeMap::new(), Resources::new(2000, 4 << 30));
        node.in_flight = Some(InFlightClaim {
            requirements: Requirements::new()
                .with(Requirement::new(labels::ZONE, Operator::In, ["z1", "z2"]).unwrap())
                .with(Requirement::new(labels::HOSTNAME, Operator::In, ["placeholder"]).unwrap()),
            instance_types: vec!["m5.large".into()],
        });
        let p = Prepared::build(node, &[], &[], &Dims::default());
        assert!(p.flexible);
        assert!(p.requirements.get(labels::HOSTNAME).is_none());
        assert_eq!(p.requirements.get(labels::ZONE).unwrap().values().count(), 2);
        assert!(p.requirements.get(labels::INSTANCE_TYPE).unwrap().has("m5.large"));
    }
}
