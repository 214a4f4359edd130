//! The node-action seam: what a handler or provisioner does to a Kubernetes node.
//!
//! `spot-k8s` implements [`NodeActions`] over kube-rs; tests and simulations can implement it
//! in memory.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// Errors of node actions.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The node does not exist.
    #[error("node {0:?} not found")]
    NodeNotFound(String),
    /// A taint effect other than the three Kubernetes knows.
    #[error("invalid taint effect {0:?}: expected NoSchedule, PreferNoSchedule or NoExecute")]
    TaintEffect(String),
    /// The API server refused or failed the request.
    #[error("{action} on node {node:?} failed: {message}")]
    Api {
        /// The action (`cordon`, `taint`, ...).
        action: &'static str,
        /// The node.
        node: String,
        /// What the API server said.
        message: String,
    },
    /// The drain did not finish before its deadline.
    #[error("drain of node {node:?} timed out with {} pod(s) remaining: {}", remaining.len(), remaining.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", "))]
    DrainTimeout {
        /// The node.
        node: String,
        /// The pods still on it.
        remaining: Vec<PodRef>,
    },
}

/// The effect of a taint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TaintEffect {
    /// New pods are not scheduled.
    NoSchedule,
    /// The scheduler avoids the node.
    PreferNoSchedule,
    /// Running pods without a toleration are evicted.
    NoExecute,
}

impl TaintEffect {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TaintEffect::NoSchedule => "NoSchedule",
            TaintEffect::PreferNoSchedule => "PreferNoSchedule",
            TaintEffect::NoExecute => "NoExecute",
        }
    }
}

impl fmt::Display for TaintEffect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaintEffect {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "NoSchedule" => Ok(TaintEffect::NoSchedule),
            "PreferNoSchedule" => Ok(TaintEffect::PreferNoSchedule),
            "NoExecute" => Ok(TaintEffect::NoExecute),
            other => Err(Error::TaintEffect(other.to_owned())),
        }
    }
}

/// A node taint.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Taint {
    /// The key, such as `aws-node-termination-handler/spot-itn`.
    pub key: String,
    /// The value (NTH puts the event id there).
    pub value: Option<String>,
    /// The effect.
    pub effect: TaintEffect,
}

impl Taint {
    /// A taint with a value.
    pub fn new(key: impl Into<String>, value: impl Into<String>, effect: TaintEffect) -> Self {
        Taint {
            key: key.into(),
            value: Some(value.into()),
            effect,
        }
    }

    /// Whether two taints are the same slot on a node (Kubernetes identifies a taint by key
    /// and effect).
    pub fn same_slot(&self, other: &Taint) -> bool {
        self.key == other.key && self.effect == other.effect
    }
}

/// A namespaced pod name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PodRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// How to drain a node. The defaults follow `kubectl drain --ignore-daemonsets`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainOptions {
    /// Give up (or force) after this long.
    pub timeout: Duration,
    /// Leave DaemonSet pods on the node (they would be recreated anyway).
    pub ignore_daemonsets: bool,
    /// Evict pods with emptyDir volumes (their data is lost).
    pub delete_emptydir_data: bool,
    /// Override each pod's termination grace period, in seconds.
    pub grace_period_seconds: Option<i64>,
    /// At the deadline, delete the remaining pods instead of reporting a timeout.
    pub force_at_deadline: bool,
    /// A pod never to evict (the handler's own pod).
    pub skip_pod: Option<PodRef>,
    /// First wait after a 429 (PodDisruptionBudget) before retrying an eviction; doubles up
    /// to 8 times this.
    pub eviction_retry: Duration,
}

impl Default for DrainOptions {
    fn default() -> Self {
        DrainOptions {
            timeout: Duration::from_secs(120),
            ignore_daemonsets: true,
            delete_emptydir_data: true,
            grace_period_seconds: None,
            force_at_deadline: false,
            skip_pod: None,
            eviction_retry: Duration::from_secs(5),
        }
    }
}

/// What a drain did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Pods evicted (or already gone).
    pub evicted: Vec<PodRef>,
    /// Pods left alone on purpose (mirror, DaemonSet, own pod, already terminating).
    pub skipped: Vec<PodRef>,
    /// Pods deleted by the force escalation at the deadline.
    pub forced: Vec<PodRef>,
    /// How many evictions a PodDisruptionBudget refused (and were retried).
    pub pdb_retries: u32,
}

/// What handlers need to know about a node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeState {
    /// The node's name.
    pub name: String,
    /// `spec.unschedulable`.
    pub unschedulable: bool,
    /// `spec.taints`.
    pub taints: Vec<Taint>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// Whether the `Ready` condition is `True`.
    pub ready: bool,
    /// `spec.providerID`, when set.
    pub provider_id: Option<String>,
}

/// Label or annotation changes: `Some(value)` sets, `None` removes.
pub type MetadataPatch = BTreeMap<String, Option<String>>;

/// What [`NodeActions::cordon_with`] writes together with the cordon.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CordonWith {
    /// Annotations to set or remove (a handler's progress record).
    pub annotations: MetadataPatch,
    /// Labels to set or remove.
    pub labels: MetadataPatch,
    /// A taint to add (or whose value to update), leaving every other taint.
    pub taint: Option<Taint>,
}

/// Actions on a Kubernetes node.
#[async_trait]
pub trait NodeActions: Send + Sync {
    /// Marks the node unschedulable. Idempotent.
    async fn cordon(&self, node: &str) -> Result<(), Error>;

    /// Marks the node schedulable again. Idempotent.
    async fn uncordon(&self, node: &str) -> Result<(), Error>;

    /// Adds (or updates the value of) a taint without touching any other taint. Returns
    /// whether the node changed.
    async fn taint(&self, node: &str, taint: &Taint) -> Result<bool, Error>;

    /// Removes the taint with this key and effect, leaving every other taint. Returns whether
    /// the node changed.
    async fn untaint(&self, node: &str, key: &str, effect: TaintEffect) -> Result<bool, Error>;

    /// Sets or removes labels.
    async fn label(&self, node: &str, labels: &MetadataPatch) -> Result<(), Error>;

    /// Sets or removes annotations.
    async fn annotate(&self, node: &str, annotations: &MetadataPatch) -> Result<(), Error>;

    /// Reads the node's current state (handlers record their progress in its annotations).
    async fn get(&self, node: &str) -> Result<NodeState, Error>;

    /// Annotates, labels, taints and cordons the node. The default makes those four calls in
    /// that order (stopping at the first error); an implementation may write them at once
    /// (`spot-k8s` does, in one conflict-checked update), which saves API calls and leaves no
    /// window where the node is recorded as ours but still schedulable.
    async fn cordon_with(&self, node: &str, with: &CordonWith) -> Result<(), Error> {
        if !with.annotations.is_empty() {
            self.annotate(node, &with.annotations).await?;
        }
        if !with.labels.is_empty() {
            self.label(node, &with.labels).await?;
        }
        if let Some(taint) = &with.taint {
            self.taint(node, taint).await?;
        }
        self.cordon(node).await
    }

    /// Evicts the node's pods and waits until they are gone.
    async fn drain(&self, node: &str, options: &DrainOptions) -> Result<DrainReport, Error>;
}

/// One recorded call on a [`MemoryNodes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `cordon(node)`.
    Cordon(String),
    /// `uncordon(node)`.
    Uncordon(String),
    /// `taint(node, taint)`.
    Taint(String, Taint),
    /// `untaint(node, key)`.
    Untaint(String, String),
    /// `label(node, patch)`.
    Label(String, MetadataPatch),
    /// `annotate(node, patch)`.
    Annotate(String, MetadataPatch),
    /// `drain(node)`.
    Drain(String),
}

/// In-memory nodes implementing [`NodeActions`], for tests and simulations. Every mutating
/// call is recorded; drains move the node's pods to the evicted list.
#[derive(Debug, Default)]
pub struct MemoryNodes {
    inner: std::sync::Mutex<MemoryNodesInner>,
}

#[derive(Debug, Default)]
struct MemoryNodesInner {
    nodes: BTreeMap<String, NodeState>,
    pods: BTreeMap<String, Vec<PodRef>>,
    calls: Vec<Call>,
    fail_drains: BTreeMap<String, u32>,
}

impl MemoryNodes {
    /// No nodes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a Ready, schedulable node with `pods` pods named `<node>-pod-<i>` in `default`.
    pub fn add_node(&self, name: &str, pods: usize) {
        let mut inner = self.lock();
        inner.nodes.insert(
            name.to_owned(),
            NodeState {
                name: name.to_owned(),
                ready: true,
                ..NodeState::default()
            },
        );
        let pods = (0..pods)
            .map(|i| PodRef {
                namespace: "default".into(),
                name: format!("{name}-pod-{i}"),
            })
            .collect();
        inner.pods.insert(name.to_owned(), pods);
    }

    /// Sets a node's `Ready` condition (a node that is still booting, say).
    pub fn set_ready(&self, node: &str, ready: bool) {
        if let Some(n) = self.lock().nodes.get_mut(node) {
            n.ready = ready;
        }
    }

    /// Makes the next `times` drains of `node` fail with a timeout.
    pub fn fail_next_drains(&self, node: &str, times: u32) {
        self.lock().fail_drains.insert(node.to_owned(), times);
    }

    /// A node's state.
    pub fn node(&self, name: &str) -> Option<NodeState> {
        self.lock().nodes.get(name).cloned()
    }

    /// Pods still on a node.
    pub fn pods(&self, name: &str) -> Vec<PodRef> {
        self.lock().pods.get(name).cloned().unwrap_or_default()
    }

    /// Every mutating call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// How many recorded calls match `pred`.
    pub fn count(&self, pred: impl Fn(&Call) -> bool) -> usize {
        self.lock().calls.iter().filter(|c| pred(c)).count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryNodesInner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn with_node<T>(&self, node: &str, call: Call, f: impl FnOnce(&mut NodeState) -> T) -> Result<T, Error> {
        let mut inner = self.lock();
        inner.calls.push(call);
        let state = inner
            .nodes
            .get_mut(node)
            .ok_or_else(|| Error::NodeNotFound(node.to_owned()))?;
        Ok(f(state))
    }
}

fn apply_patch(map: &mut BTreeMap<String, String>, patch: &MetadataPatch) {
    for (k, v) in patch {
        match v {
            Some(v) => map.insert(k.clone(), v.clone()),
            None => map.remove(k),
        };
    }
}

#[async_trait]
impl NodeActions for MemoryNodes {
    async fn cordon(&self, node: &str) -> Result<(), Error> {
        self.with_node(node, Call::Cordon(node.into()), |n| n.unschedulable = true)
    }

    async fn uncordon(&self, node: &str) -> Result<(), Error> {
        self.with_node(node, Call::Uncordon(node.into()), |n| n.unschedulable = false)
    }

    async fn taint(&self, node: &str, taint: &Taint) -> Result<bool, Error> {
        self.with_node(node, Call::Taint(node.into(), taint.clone()), |n| {
            if n.taints.contains(taint) {
                return false;
            }
            n.taints.retain(|t| !t.same_slot(taint));
            n.taints.push(taint.clone());
            true
        })
    }

    async fn untaint(&self, node: &str, key: &str, effect: TaintEffect) -> Result<bool, Error> {
        self.with_node(node, Call::Untaint(node.into(), key.into()), |n| {
            let before = n.taints.len();
            n.taints.retain(|t| !(t.key == key && t.effect == effect));
            n.taints.len() != before
        })
    }

    async fn label(&self, node: &str, labels: &MetadataPatch) -> Result<(), Error> {
        self.with_node(node, Call::Label(node.into(), labels.clone()), |n| {
            apply_patch(&mut n.labels, labels)
        })
    }

    async fn annotate(&self, node: &str, annotations: &MetadataPatch) -> Result<(), Error> {
        self.with_node(node, Call::Annotate(node.into(), annotations.clone()), |n| {
            apply_patch(&mut n.annotations, annotations)
        })
    }

    async fn get(&self, node: &str) -> Result<NodeState, Error> {
        self.lock()
            .nodes
            .get(node)
            .cloned()
            .ok_or_else(|| Error::NodeNotFound(node.to_owned()))
    }

    async fn drain(&self, node: &str, options: &DrainOptions) -> Result<DrainReport, Error> {
        let mut inner = self.lock();
        inner.calls.push(Call::Drain(node.into()));
        if !inner.nodes.contains_key(node) {
            return Err(Error::NodeNotFound(node.to_owned()));
        }
        if let Some(left) = inner.fail_drains.get_mut(node).filter(|n| **n > 0) {
            *left -= 1;
            let remaining = inner.pods.get(node).cloned().unwrap_or_default();
            return Err(Error::DrainTimeout {
                node: node.to_owned(),
                remaining,
            });
        }
        let pods = inner.pods.remove(node).unwrap_or_default();
        let (skipped, evicted): (Vec<PodRef>, Vec<PodRef>) = pods
            .into_iter()
            .partition(|p| options.skip_pod.as_ref() == Some(p));
        inner.pods.insert(node.to_owned(), skipped.clone());
        Ok(DrainReport {
            evicted,
            skipped,
            ..DrainReport::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_nodes_keep_other_taints_and_record_calls() {
        let nodes = MemoryNodes::new();
        nodes.add_node("n1", 3);
        let other = Taint::new("other", "x", TaintEffect::NoSchedule);
        let ours = Taint::new("ours", "1", TaintEffect::NoSchedule);
        assert!(nodes.taint("n1", &other).await.unwrap());
        assert!(nodes.taint("n1", &ours).await.unwrap());
        assert!(!nodes.taint("n1", &ours).await.unwrap());
        assert!(
            nodes
                .untaint("n1", "ours", TaintEffect::NoSchedule)
                .await
                .unwrap()
        );
        assert_eq!(nodes.node("n1").unwrap().taints, vec![other]);
        nodes.cordon("n1").await.unwrap();
        let report = nodes.drain("n1", &DrainOptions::default()).await.unwrap();
        assert_eq!(report.evicted.len(), 3);
        assert!(nodes.pods("n1").is_empty());
        assert_eq!(nodes.count(|c| matches!(c, Call::Cordon(_))), 1);
        assert!(matches!(nodes.get("nope").await, Err(Error::NodeNotFound(_))));
    }

    #[tokio::test]
    async fn cordon_with_defaults_to_annotate_label_taint_cordon() {
        let nodes = MemoryNodes::new();
        nodes.add_node("n1", 0);
        let taint = Taint::new("ours", "1", TaintEffect::NoSchedule);
        let with = CordonWith {
            annotations: BTreeMap::from([("a".to_owned(), Some("1".to_owned()))]),
            labels: BTreeMap::from([("l".to_owned(), Some("2".to_owned()))]),
            taint: Some(taint.clone()),
        };
        nodes.cordon_with("n1", &with).await.unwrap();
        assert_eq!(
            nodes.calls(),
            vec![
                Call::Annotate("n1".into(), with.annotations.clone()),
                Call::Label("n1".into(), with.labels.clone()),
                Call::Taint("n1".into(), taint.clone()),
                Call::Cordon("n1".into()),
            ]
        );
        let state = nodes.node("n1").unwrap();
        assert!(state.unschedulable && state.taints == vec![taint]);
        nodes.cordon_with("n1", &CordonWith::default()).await.unwrap();
        assert_eq!(nodes.calls().last(), Some(&Call::Cordon("n1".into())));
        assert!(matches!(
            nodes.cordon_with("nope", &with).await,
            Err(Error::NodeNotFound(_))
        ));
    }

    #[test]
    fn taint_effect_parse() {
        assert_eq!(
            "NoExecute".parse::<TaintEffect>().unwrap(),
            TaintEffect::NoExecute
        );
        let err = "noschedule".parse::<TaintEffect>().unwrap_err();
        assert!(err.to_string().contains("\"noschedule\""));
    }

    #[test]
    fn drain_timeout_names_the_pods() {
        let err = Error::DrainTimeout {
            node: "n1".into(),
            remaining: vec![PodRef {
                namespace: "default".into(),
                name: "web-1".into(),
            }],
        };
        assert_eq!(
            err.to_string(),
            "drain of node \"n1\" timed out with 1 pod(s) remaining: default/web-1"
        );
    }

    #[test]
    fn same_slot_ignores_value() {
        let a = Taint::new("k", "1", TaintEffect::NoSchedule);
        let b = Taint::new("k", "2", TaintEffect::NoSchedule);
        let c = Taint::new("k", "1", TaintEffect::NoExecute);
        assert!(a.same_slot(&b));
        assert!(!a.same_slot(&c));
    }
}
