//! [`KubeNodeActions`]: [`NodeActions`] over kube-rs.
//!
//! - Cordon/uncordon: a JSON merge patch of `spec.unschedulable`.
//! - Taints: get → modify → `replace` carrying the resourceVersion, retried on 409 Conflict,
//!   so no other writer's taint is ever lost (a strategic merge of `spec.taints` would
//!   replace the whole list). Writers sharing one `KubeNodeActions` are also serialised per
//!   node, which avoids conflicts among themselves.
//! - [`NodeActions::cordon_with`]: annotations, labels, taint and cordon in one such
//!   conflict-checked `replace`. Its first attempt writes back the node that
//!   [`NodeActions::get`] read moments before (a 409 means it changed since: read again), so
//!   a handler's read-then-cordon costs two API calls instead of six.
//! - Labels and annotations: JSON merge patches (`null` removes).
//! - Drain: follows the node's pods (field selector `spec.nodeName=<node>`) with a kube-rs
//!   reflector for the duration of the drain ([`PodSource::Watch`], the default), with one
//!   cluster-wide watch shared by every drain ([`PodSource::Shared`], for a handler that drains
//!   many nodes at once), or with a fresh paginated list per poll ([`PodSource::List`]); skips
//!   mirror, DaemonSet-owned (configurable), terminating and the handler's own pod, and pods
//!   with emptyDir volumes unless `delete_emptydir_data`; evicts through policy/v1 Eviction,
//!   non-critical pods before `system-cluster-critical`/`system-node-critical` ones, retries
//!   429 (PodDisruptionBudget) with doubling backoff until the deadline, treats 404 as done,
//!   then polls until the pods are gone. At the deadline it reports
//!   [`Error::DrainTimeout`] or, with `force_at_deadline`, deletes the rest with grace 0.
//! - Every API call first takes a token from a shared [`RateLimiter`]: node reads and writes
//!   (and their Events) with [`Priority::High`], drains (evictions, pod lists and watches, the
//!   drain's Events) with [`Priority::Normal`], so cordons never wait behind evictions.
//! - Cordon, uncordon, taint, untaint and drain publish `events.k8s.io/v1` Events about the
//!   node when a reporter is configured, with optional extra annotations on every Event
//!   (failures to publish are logged, never fatal).
//!
//! kube's default client retries 429 responses itself (up to 15 times with exponential
//! backoff); drains bound every call by their deadline regardless, but a client built with
//! `Config::default_retry = false` gives the drain's own PDB backoff full control.

mod events;
mod pods;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::join_all;
use k8s_openapi::api::core::v1::{Node, Pod, Taint as KubeTaint};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{EventType, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use spot_core::node::{
    CordonWith, DrainOptions, DrainReport, Error, MetadataPatch, NodeActions, NodeState, PodRef, Taint,
    TaintEffect,
};
use tokio::time::Instant;

use self::events::{Note, Publisher};
use self::pods::{PodInfo, SharedPods, Use};
use crate::ratelimit::{Priority, RateLimiter};

/// Annotation of mirror (static) pods.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Priority classes evicted last.
pub const CRITICAL_PRIORITY_CLASSES: [&str; 2] = ["system-cluster-critical", "system-node-critical"];

/// Tuning of [`KubeNodeActions`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionsConfig {
    /// How many 409 Conflicts a taint change retries before giving up.
    pub conflict_retries: u32,
    /// First wait after a conflict (jittered, doubling up to 64 times this).
    pub conflict_backoff: Duration,
    /// How often a drain checks (its pod cache, or a fresh list) whether evicted pods are gone.
    pub poll_interval: Duration,
    /// Page size of pod lists.
    pub page_size: u32,
    /// Where drains read the node's pods from.
    pub pod_source: PodSource,
    /// [`PodSource::Shared`]: how long the shared pod watch outlives the last drain.
    pub shared_watch_linger: Duration,
}

/// Where a drain reads the node's pods from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PodSource {
    /// A reflector (list, then watch) over the node's pods for the duration of the drain:
    /// one list and one watch instead of a list per poll.
    #[default]
    Watch,
    /// One watch of every bound pod in the cluster (a compact projection of each, indexed by
    /// node), shared by all drains: for a handler that drains many nodes at once (queue mode),
    /// where one watch per drain would cost the API server one watch per node. It starts with
    /// the first drain and stops [`ActionsConfig::shared_watch_linger`] after the last. A drain
    /// looks at its node's pods once more after evicting them, and evicts any that the watch
    /// had not delivered yet.
    Shared,
    /// A fresh paginated list at the start and on every poll.
    List,
}

/// The node's pods as a drain sees them.
enum PodView {
    Watch {
        store: Store<Pod>,
        task: tokio::task::JoinHandle<()>,
    },
    Shared(Use),
    List,
}

impl Drop for PodView {
    fn drop(&mut self) {
        if let PodView::Watch { task, .. } = self {
            task.abort();
        }
    }
}

impl Default for ActionsConfig {
    fn default() -> Self {
        ActionsConfig {
            conflict_retries: 100,
            conflict_backoff: Duration::from_millis(10),
            poll_interval: Duration::from_secs(1),
            page_size: 500,
            pod_source: PodSource::default(),
            shared_watch_linger: Duration::from_secs(60),
        }
    }
}

/// [`NodeActions`] over a kube-rs [`Client`].
#[derive(Clone)]
pub struct KubeNodeActions {
    client: Client,
    limiter: RateLimiter,
    recorder: Option<Publisher>,
    event_annotations: BTreeMap<String, String>,
    config: ActionsConfig,
    node_locks: Arc<StdMutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    /// Nodes as [`NodeActions::get`] last read them or a conflict-checked write left them: the
    /// base of the first attempt of `cordon_with`, and proof enough for a drain that the node
    /// exists.
    recent: Arc<StdMutex<HashMap<String, (Instant, Node)>>>,
    shared_pods: Arc<SharedPods>,
}

/// How long a node read by `get` may serve as the base of a `cordon_with` (its resourceVersion
/// makes a stale copy fail with 409, never overwrite).
const RECENT_READ: Duration = Duration::from_secs(5);
/// `recent` is pruned of older reads once it holds this many.
const RECENT_PRUNE_AT: usize = 256;

impl std::fmt::Debug for KubeNodeActions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeNodeActions")
            .field("limiter", &self.limiter)
            .field("events", &self.recorder.is_some())
            .field(
                "event_annotations",
                &self.recorder.as_ref().map(Publisher::annotations),
            )
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn api_error(action: &'static str, node: &str, e: impl std::fmt::Display) -> Error {
    Error::Api {
        action,
        node: node.to_owned(),
        message: e.to_string(),
    }
}

fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// `now + after`, saturating at about 30 years for absurd durations.
fn later(after: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(after)
        .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 86_400))
}

/// A pseudo-random number in `[0, 1)` for backoff jitter.
fn jitter() -> f64 {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut z = u64::from(nanos) ^ SEQ.fetch_add(0x9e37_79b9_7f4a_7c15, std::sync::atomic::Ordering::Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) as f64 / u64::MAX as f64 * 0.999
}

/// Adds or updates a taint in a list; returns whether the list changed.
fn upsert_taint(taints: &mut Vec<KubeTaint>, taint: &Taint) -> bool {
    let effect = taint.effect.as_str();
    match taints
        .iter_mut()
        .find(|t| t.key == taint.key && t.effect == effect)
    {
        Some(t) if t.value == taint.value => false,
        Some(t) => {
            t.value.clone_from(&taint.value);
            true
        }
        None => {
            taints.push(KubeTaint {
                key: taint.key.clone(),
                value: taint.value.clone(),
                effect: effect.to_owned(),
                time_added: None,
            });
            true
        }
    }
}

/// Removes the taint with this key and effect; returns whether the list changed.
fn remove_taint(taints: &mut Vec<KubeTaint>, key: &str, effect: TaintEffect) -> bool {
    let before = taints.len();
    taints.retain(|t| !(t.key == key && t.effect == effect.as_str()));
    taints.len() != before
}

/// A policy/v1 Eviction. Built here rather than with `Api::evict` because kube 5.0.0
/// serialises its `EvictParams::delete_options` as `delete_options` instead of
/// `deleteOptions`, which the API server ignores: the grace period override would silently
/// not apply.
fn eviction_body(pod: &PodRef, grace_period_seconds: Option<i64>) -> Value {
    let mut body = json!({
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": pod.name, "namespace": pod.namespace},
    });
    if let Some(g) = grace_period_seconds {
        body["deleteOptions"] = json!({"gracePeriodSeconds": g.max(0)});
    }
    body
}

/// The handler's view of a Node. Taints with an effect Kubernetes does not know are left out.
pub fn node_state(node: Node) -> NodeState {
    let spec = node.spec.unwrap_or_default();
    let taints = spec
        .taints
        .unwrap_or_default()
        .into_iter()
        .filter_map(|t| {
            let effect = t.effect.parse::<TaintEffect>().ok()?;
            Some(Taint {
                key: t.key,
                value: t.value,
                effect,
            })
        })
        .collect();
    let ready = node
        .status
        .and_then(|s| s.conditions)
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    NodeState {
        name: node.metadata.name.unwrap_or_default(),
        unschedulable: spec.unschedulable == Some(true),
        taints,
        labels: node.metadata.labels.unwrap_or_default(),
        annotations: node.metadata.annotations.unwrap_or_default(),
        ready,
        provider_id: spec.provider_id,
    }
}

fn apply_metadata(map: &mut Option<BTreeMap<String, String>>, changes: &MetadataPatch) -> bool {
    let mut changed = false;
    for (k, v) in changes {
        match v {
            Some(v) => {
                let m = map.get_or_insert_default();
                if m.get(k) != Some(v) {
                    m.insert(k.clone(), v.clone());
                    changed = true;
                }
            }
            None => changed |= map.as_mut().and_then(|m| m.remove(k)).is_some(),
        }
    }
    changed
}

/// What `cordon_with` changed on a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Marked {
    metadata: bool,
    tainted: bool,
    cordoned: bool,
}

/// Applies `with` and the cordon to `node` in memory.
fn mark(node: &mut Node, with: &CordonWith) -> Marked {
    let metadata = apply_metadata(&mut node.metadata.annotations, &with.annotations)
        | apply_metadata(&mut node.metadata.labels, &with.labels);
    let spec = node.spec.get_or_insert_with(Default::default);
    let tainted = match &with.taint {
        Some(taint) => {
            let mut taints = spec.taints.take().unwrap_or_default();
            let changed = upsert_taint(&mut taints, taint);
            spec.taints = (!taints.is_empty()).then_some(taints);
            changed
        }
        None => false,
    };
    let cordoned = spec.unschedulable != Some(true);
    spec.unschedulable = Some(true);
    Marked {
        metadata,
        tainted,
        cordoned,
    }
}

fn metadata_patch(field: &str, changes: &MetadataPatch) -> Value {
    let map: serde_json::Map<String, Value> = changes
        .iter()
        .map(|(k, v)| (k.clone(), v.as_ref().map_or(Value::Null, |v| json!(v))))
        .collect();
    json!({"metadata": {field: map}})
}

impl KubeNodeActions {
    /// Node actions over `client`, without a rate limit or events.
    pub fn new(client: Client) -> Self {
        let config = ActionsConfig::default();
        KubeNodeActions {
            client,
            limiter: RateLimiter::unlimited(),
            recorder: None,
            event_annotations: BTreeMap::new(),
            shared_pods: SharedPods::new(config.shared_watch_linger),
            config,
            node_locks: Arc::default(),
            recent: Arc::default(),
        }
    }

    /// Shares a client-side rate limit (clone one [`RateLimiter`] into every user).
    pub fn with_rate_limiter(mut self, limiter: RateLimiter) -> Self {
        self.limiter = limiter;
        self
    }

    /// Publishes Kubernetes Events as `reporter` (controller name, instance).
    pub fn with_events(mut self, reporter: Reporter) -> Self {
        self.recorder = Some(
            Publisher::new(self.client.clone(), reporter).with_annotations(self.event_annotations.clone()),
        );
        self
    }

    /// Puts `annotations` on every Event published (NTH's `KUBERNETES_EVENTS_EXTRA_ANNOTATIONS`),
    /// whether [`Self::with_events`] comes before or after.
    pub fn with_event_annotations(mut self, annotations: BTreeMap<String, String>) -> Self {
        self.recorder = self
            .recorder
            .take()
            .map(|r| r.with_annotations(annotations.clone()));
        self.event_annotations = annotations;
        self
    }

    /// Replaces the tuning.
    pub fn with_config(mut self, config: ActionsConfig) -> Self {
        if config.shared_watch_linger != self.shared_pods.linger() && !self.shared_pods.running() {
            self.shared_pods = SharedPods::new(config.shared_watch_linger);
        }
        self.config = config;
        self
    }

    fn nodes(&self) -> Api<Node> {
        Api::all(self.client.clone())
    }

    async fn event(&self, priority: Priority, node: &str, type_: EventType, reason: &str, note: String) {
        let Some(recorder) = &self.recorder else { return };
        self.limiter.acquire_with(priority).await;
        let action = match reason {
            "Drained" | "DrainFailed" => "Drain",
            other => other,
        };
        let ev = Note {
            type_,
            reason,
            action,
            note,
        };
        if let Err(e) = recorder.publish(&ev, node).await {
            tracing::warn!(node, reason, error = %e, "cannot publish event");
        }
    }

    /// Runs `f` holding this `KubeNodeActions`'s lock of `node`.
    async fn with_node_lock<T>(&self, node: &str, f: impl std::future::Future<Output = T>) -> T {
        let lock = self.node_lock(node);
        let result = {
            let _serialised = lock.lock().await;
            f.await
        };
        drop(lock);
        // Forget the locks nobody holds or waits for, so the map does not grow with every
        // node ever touched.
        self.node_locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|_, l| Arc::strong_count(l) > 1);
        result
    }

    /// The node `get` read less than [`RECENT_READ`] ago, if any (taken: used once).
    fn take_recent(&self, node: &str) -> Option<Node> {
        let mut recent = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        recent
            .remove(node)
            .filter(|(at, _)| at.elapsed() < RECENT_READ)
            .map(|(_, n)| n)
    }

    fn remember(&self, node: &Node) {
        let Some(name) = node.metadata.name.clone() else {
            return;
        };
        let mut recent = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if recent.len() >= RECENT_PRUNE_AT {
            recent.retain(|_, (at, _)| at.elapsed() < RECENT_READ);
        }
        recent.insert(name, (Instant::now(), node.clone()));
    }

    fn node_lock(&self, node: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .node_locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        locks.entry(node.to_owned()).or_default().clone()
    }

    async fn get_node(&self, action: &'static str, node: &str) -> Result<Node, Error> {
        // A drain's read goes with its evictions; every other node read is a node action.
        self.limiter
            .acquire_with(if action == "drain" {
                Priority::Normal
            } else {
                Priority::High
            })
            .await;
        self.nodes().get(node).await.map_err(|e| match status_code(&e) {
            Some(404) => Error::NodeNotFound(node.to_owned()),
            _ => api_error(action, node, e),
        })
    }

    async fn patch_node(&self, action: &'static str, node: &str, patch: Value) -> Result<Node, Error> {
        self.limiter.acquire_with(Priority::High).await;
        self.nodes()
            .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| match status_code(&e) {
                Some(404) => Error::NodeNotFound(node.to_owned()),
                _ => api_error(action, node, e),
            })
    }

    /// Read-modify-write of the node's taints with optimistic concurrency.
    async fn modify_taints(
        &self,
        action: &'static str,
        node: &str,
        change: impl Fn(&mut Vec<KubeTaint>) -> bool,
    ) -> Result<bool, Error> {
        self.with_node_lock(node, self.modify_taints_locked(action, node, change))
            .await
    }

    async fn modify_taints_locked(
        &self,
        action: &'static str,
        node: &str,
        change: impl Fn(&mut Vec<KubeTaint>) -> bool,
    ) -> Result<bool, Error> {
        let changed = self
            .update_node_locked(action, node, None, |n| {
                let spec = n.spec.get_or_insert_with(Default::default);
                let mut taints = spec.taints.take().unwrap_or_default();
                let changed = change(&mut taints);
                spec.taints = (!taints.is_empty()).then_some(taints);
                changed.then_some(())
            })
            .await?;
        Ok(changed.is_some())
    }

    /// Read-modify-write of a node with optimistic concurrency: `change` edits the node read
    /// (`base` first, when given) and says what it changed (`None`: nothing, no write);
    /// a 409 Conflict reads the node again and retries with a jittered, doubling backoff.
    async fn update_node_locked<R>(
        &self,
        action: &'static str,
        node: &str,
        mut base: Option<Node>,
        change: impl Fn(&mut Node) -> Option<R>,
    ) -> Result<Option<R>, Error> {
        let mut backoff = self.config.conflict_backoff;
        for attempt in 0..=self.config.conflict_retries {
            let mut current = match base.take() {
                Some(n) => n,
                None => self.get_node(action, node).await?,
            };
            let Some(changed) = change(&mut current) else {
                return Ok(None);
            };
            self.limiter.acquire_with(Priority::High).await;
            match self.nodes().replace(node, &PostParams::default(), &current).await {
                Ok(written) => {
                    self.remember(&written);
                    return Ok(Some(changed));
                }
                Err(e) if status_code(&e) == Some(409) => {
                    tracing::debug!(node, action, attempt, "node write conflicted; retrying");
                    // Jitter spreads competing writers apart.
                    let wait = backoff.mul_f64(0.5 + jitter());
                    tokio::time::sleep(wait).await;
                    backoff = backoff
                        .saturating_mul(2)
                        .min(self.config.conflict_backoff.saturating_mul(64));
                }
                Err(e) if status_code(&e) == Some(404) => return Err(Error::NodeNotFound(node.to_owned())),
                Err(e) => return Err(api_error(action, node, e)),
            }
        }
        Err(api_error(
            action,
            node,
            format!(
                "gave up after {} conflicting writes",
                self.config.conflict_retries + 1
            ),
        ))
    }

    /// The pods bound to a node (paginated list with `spec.nodeName=<node>`).
    pub async fn node_pods(&self, node: &str) -> Result<Vec<Pod>, Error> {
        let pods: Api<Pod> = Api::all(self.client.clone());
        let mut lp = ListParams::default()
            .fields(&format!("spec.nodeName={node}"))
            .limit(self.config.page_size);
        let mut out = Vec::new();
        loop {
            self.limiter.acquire().await;
            let page = pods.list(&lp).await.map_err(|e| api_error("drain", node, e))?;
            let next = page.metadata.continue_.clone().filter(|c| !c.is_empty());
            out.extend(page.items);
            match next {
                Some(c) => lp = lp.continue_token(&c),
                None => return Ok(out),
            }
        }
    }

    /// Evicts one pod, retrying PodDisruptionBudget refusals until the deadline. Returns
    /// `Ok(true)` when evicted or gone, `Ok(false)` at the deadline.
    async fn evict_one(
        &self,
        node: &str,
        pod: &PodRef,
        options: &DrainOptions,
        deadline: Instant,
        pdb_retries: &std::sync::atomic::AtomicU32,
    ) -> Result<bool, Error> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        let body = eviction_body(pod, options.grace_period_seconds);
        let mut backoff = options.eviction_retry;
        loop {
            if Instant::now() >= deadline {
                return Ok(false);
            }
            let attempt = async {
                self.limiter.acquire().await;
                api.create_subresource::<_, kube::core::Status>(
                    "eviction",
                    &pod.name,
                    &PostParams::default(),
                    &body,
                )
                .await
            };
            let result = match tokio::time::timeout_at(deadline, attempt).await {
                Ok(r) => r,
                Err(_) => return Ok(false),
            };
            match result {
                Ok(_) => return Ok(true),
                Err(e) => match status_code(&e) {
                    Some(404) => return Ok(true),
                    Some(429) | Some(500) | Some(503) | Some(504) => {
                        if status_code(&e) == Some(429) {
                            pdb_retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        tracing::info!(node, pod = %pod, error = %e, "eviction refused; retrying");
                        let wake = later(backoff).min(deadline);
                        tokio::time::sleep_until(wake).await;
                        backoff = backoff
                            .saturating_mul(2)
                            .min(options.eviction_retry.saturating_mul(8));
                    }
                    _ => return Err(api_error("drain", node, format!("evicting {pod}: {e}"))),
                },
            }
        }
    }

    /// Waits until none of `pods` (by uid) is on the node any more; returns those left at the
    /// deadline.
    async fn wait_gone(
        &self,
        node: &str,
        view: &PodView,
        pods: &[(PodRef, String)],
        deadline: Instant,
    ) -> Result<Vec<PodRef>, Error> {
        let mut left: Vec<(PodRef, String)> = pods.to_vec();
        loop {
            let present: BTreeSet<String> = self
                .current_pods(node, view)
                .await?
                .into_iter()
                .map(|p| p.uid)
                .collect();
            left.retain(|(_, uid)| present.contains(uid));
            if left.is_empty() || Instant::now() >= deadline {
                return Ok(left.into_iter().map(|(p, _)| p).collect());
            }
            tokio::time::sleep_until(later(self.config.poll_interval).min(deadline)).await;
        }
    }

    /// Starts a reflector over the node's pods and waits (until the deadline) for its first
    /// listing.
    async fn watch_node_pods(&self, node: &str, deadline: Instant) -> Result<PodView, Error> {
        let api: Api<Pod> = Api::all(self.client.clone());
        let (store, writer) = reflector::store();
        let config = watcher::Config::default()
            .fields(&format!("spec.nodeName={node}"))
            .page_size(self.config.page_size);
        let stream = reflector::reflector(writer, watcher(api, config).default_backoff());
        let node_name = node.to_owned();
        self.limiter.acquire().await;
        let task = tokio::spawn(async move {
            futures::pin_mut!(stream);
            while let Some(item) = futures::StreamExt::next(&mut stream).await {
                if let Err(e) = item {
                    tracing::warn!(node = %node_name, error = %e, "drain pod watch failed; retrying");
                }
            }
        });
        let view = PodView::Watch {
            store: store.clone(),
            task,
        };
        match tokio::time::timeout_at(deadline, store.wait_until_ready()).await {
            Ok(Ok(())) => Ok(view),
            _ => Err(api_error(
                "drain",
                node,
                "the pod watch did not sync before the deadline",
            )),
        }
    }

    /// Uses the shared pod watch, waiting (until the deadline) for its first listing.
    async fn shared_node_pods(&self, node: &str, deadline: Instant) -> Result<PodView, Error> {
        let used = self
            .shared_pods
            .use_it(&self.client, self.config.page_size, &self.limiter)
            .await;
        if used.ready(deadline).await {
            Ok(PodView::Shared(used))
        } else {
            Err(api_error(
                "drain",
                node,
                "the shared pod watch did not sync before the deadline",
            ))
        }
    }

    async fn current_pods(&self, node: &str, view: &PodView) -> Result<Vec<PodInfo>, Error> {
        match view {
            PodView::Watch { store, .. } => Ok(store.state().iter().map(|p| PodInfo::of(p)).collect()),
            PodView::Shared(used) => Ok(used.pods_on(node)),
            PodView::List => Ok(self.node_pods(node).await?.iter().map(PodInfo::of).collect()),
        }
    }

    async fn drain_inner(&self, node: &str, options: &DrainOptions) -> Result<DrainReport, Error> {
        let deadline = later(options.timeout);
        // The node must exist (a missing node is not "drained"): read it, unless this
        // `KubeNodeActions` read or wrote it moments ago (a handler cordons just before).
        if self.take_recent(node).is_none() {
            self.get_node("drain", node).await?;
        }
        let mut report = DrainReport::default();
        let view = match self.config.pod_source {
            PodSource::Watch => self.watch_node_pods(node, deadline).await?,
            PodSource::Shared => self.shared_node_pods(node, deadline).await?,
            PodSource::List => PodView::List,
        };
        let pdb_retries = std::sync::atomic::AtomicU32::new(0);
        let mut remaining: Vec<PodRef> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        // The shared watch may not have delivered a pod bound just before the cordon: a second
        // round evicts what the first did not know of.
        let rounds = if matches!(view, PodView::Shared(_)) { 2 } else { 1 };
        for round in 0..rounds {
            let mut waves: [Vec<(PodRef, String)>; 2] = [Vec::new(), Vec::new()];
            for p in self.current_pods(node, &view).await? {
                if !seen.insert(p.uid.clone()) {
                    continue;
                }
                if let Some(reason) = p.skip_reason(options) {
                    tracing::info!(node, pod = %p.pod, reason, "drain skips pod");
                    report.skipped.push(p.pod);
                    continue;
                }
                waves[usize::from(p.critical)].push((p.pod, p.uid));
            }
            if round > 0 && waves.iter().all(Vec::is_empty) {
                break;
            }
            for (i, wave) in waves.iter().enumerate() {
                if wave.is_empty() {
                    continue;
                }
                if !remaining.is_empty() {
                    // The previous wave did not finish: later waves are not started.
                    remaining.extend(wave.iter().map(|(p, _)| p.clone()));
                    continue;
                }
                let results = join_all(
                    wave.iter()
                        .map(|(p, _)| self.evict_one(node, p, options, deadline, &pdb_retries)),
                )
                .await;
                let mut evicted = Vec::new();
                for ((p, uid), res) in wave.iter().zip(results) {
                    if res? {
                        evicted.push((p.clone(), uid.clone()));
                    } else {
                        remaining.push(p.clone());
                    }
                }
                let left = self.wait_gone(node, &view, &evicted, deadline).await?;
                report.evicted.extend(
                    evicted
                        .iter()
                        .map(|(p, _)| p.clone())
                        .filter(|p| !left.contains(p)),
                );
                tracing::debug!(node, round, wave = i, left = left.len(), "drain wave done");
                remaining.extend(left);
            }
            if !remaining.is_empty() {
                break;
            }
        }
        drop(view);
        report.pdb_retries = pdb_retries.into_inner();
        if remaining.is_empty() {
            return Ok(report);
        }
        if !options.force_at_deadline {
            return Err(Error::DrainTimeout {
                node: node.to_owned(),
                remaining,
            });
        }
        for p in remaining {
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &p.namespace);
            self.limiter.acquire().await;
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            };
            match api.delete(&p.name, &dp).await {
                Ok(_) => report.forced.push(p),
                Err(e) if status_code(&e) == Some(404) => report.evicted.push(p),
                Err(e) => return Err(api_error("drain", node, format!("force-deleting {p}: {e}"))),
            }
        }
        Ok(report)
    }
}

#[async_trait]
impl NodeActions for KubeNodeActions {
    async fn cordon(&self, node: &str) -> Result<(), Error> {
        let before = self.get_node("cordon", node).await?;
        if before.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
            return Ok(());
        }
        self.patch_node("cordon", node, json!({"spec": {"unschedulable": true}}))
            .await?;
        self.cordon_event(node).await;
        Ok(())
    }

    async fn uncordon(&self, node: &str) -> Result<(), Error> {
        let before = self.get_node("uncordon", node).await?;
        if before.spec.as_ref().and_then(|s| s.unschedulable) != Some(true) {
            return Ok(());
        }
        self.patch_node("uncordon", node, json!({"spec": {"unschedulable": null}}))
            .await?;
        self.event(
            Priority::High,
            node,
            EventType::Normal,
            "Uncordon",
            format!("Node {node} uncordoned"),
        )
        .await;
        Ok(())
    }

    async fn taint(&self, node: &str, taint: &Taint) -> Result<bool, Error> {
        let changed = self
            .modify_taints("taint", node, |ts| upsert_taint(ts, taint))
            .await?;
        if changed {
            self.taint_event(node, taint).await;
        }
        Ok(changed)
    }

    async fn untaint(&self, node: &str, key: &str, effect: TaintEffect) -> Result<bool, Error> {
        let changed = self
            .modify_taints("untaint", node, |ts| remove_taint(ts, key, effect))
            .await?;
        if changed {
            self.event(
                Priority::High,
                node,
                EventType::Normal,
                "Untaint",
                format!("Taint {key}:{effect} removed"),
            )
            .await;
        }
        Ok(changed)
    }

    async fn label(&self, node: &str, labels: &MetadataPatch) -> Result<(), Error> {
        if labels.is_empty() {
            return Ok(());
        }
        self.patch_node("label", node, metadata_patch("labels", labels))
            .await
            .map(drop)
    }

    async fn annotate(&self, node: &str, annotations: &MetadataPatch) -> Result<(), Error> {
        if annotations.is_empty() {
            return Ok(());
        }
        self.patch_node("annotate", node, metadata_patch("annotations", annotations))
            .await
            .map(drop)
    }

    async fn get(&self, node: &str) -> Result<NodeState, Error> {
        let n = self.get_node("get", node).await?;
        self.remember(&n);
        Ok(node_state(n))
    }

    async fn cordon_with(&self, node: &str, with: &CordonWith) -> Result<(), Error> {
        let base = self.take_recent(node);
        let marked = self
            .with_node_lock(
                node,
                self.update_node_locked("cordon", node, base, |n| {
                    let m = mark(n, with);
                    (m != Marked::default()).then_some(m)
                }),
            )
            .await?
            .unwrap_or_default();
        if let (true, Some(taint)) = (marked.tainted, &with.taint) {
            self.taint_event(node, taint).await;
        }
        if marked.cordoned {
            self.cordon_event(node).await;
        }
        Ok(())
    }

    async fn drain(&self, node: &str, options: &DrainOptions) -> Result<DrainReport, Error> {
        self.event(
            Priority::Normal,
            node,
            EventType::Normal,
            "Drain",
            format!("Draining node {node}"),
        )
        .await;
        let result = self.drain_inner(node, options).await;
        match &result {
            Ok(r) => {
                let note = format!(
                    "Node {node} drained: {} evicted, {} skipped, {} forced",
                    r.evicted.len(),
                    r.skipped.len(),
                    r.forced.len()
                );
                self.event(Priority::Normal, node, EventType::Normal, "Drained", note)
                    .await;
            }
            Err(e) => {
                self.event(
                    Priority::Normal,
                    node,
                    EventType::Warning,
                    "DrainFailed",
                    e.to_string(),
                )
                .await
            }
        }
        result
    }
}

impl KubeNodeActions {
    async fn cordon_event(&self, node: &str) {
        self.event(
            Priority::High,
            node,
            EventType::Normal,
            "Cordon",
            format!("Node {node} cordoned"),
        )
        .await;
    }

    async fn taint_event(&self, node: &str, taint: &Taint) {
        let value = taint.value.as_deref().unwrap_or_default();
        self.event(
            Priority::High,
            node,
            EventType::Normal,
            "Taint",
            format!("Taint {}={}:{} added", taint.key, value, taint.effect),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    #[test]
    fn taint_list_edits() {
        let mut ts = vec![KubeTaint {
            key: "other".into(),
            value: None,
            effect: "NoSchedule".into(),
            time_added: None,
        }];
        let t = Taint::new("k", "1", TaintEffect::NoExecute);
        assert!(upsert_taint(&mut ts, &t));
        assert!(!upsert_taint(&mut ts, &t));
        assert!(upsert_taint(
            &mut ts,
            &Taint::new("k", "2", TaintEffect::NoExecute)
        ));
        assert_eq!(ts.len(), 2);
        assert_eq!(ts[1].value.as_deref(), Some("2"));
        assert!(!remove_taint(&mut ts, "k", TaintEffect::NoSchedule));
        assert!(remove_taint(&mut ts, "k", TaintEffect::NoExecute));
        assert_eq!(ts.len(), 1);
        assert_eq!(ts[0].key, "other");
    }

    #[test]
    fn eviction_body_uses_the_api_field_names() {
        let p = PodRef {
            namespace: "ns".into(),
            name: "p".into(),
        };
        assert_eq!(
            eviction_body(&p, Some(5)),
            json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "p", "namespace": "ns"}, "deleteOptions": {"gracePeriodSeconds": 5}})
        );
        assert!(eviction_body(&p, None).get("deleteOptions").is_none());
    }

    #[test]
    fn mark_writes_everything_at_once_and_reports_changes() {
        let mut n = Node {
            metadata: ObjectMeta {
                annotations: Some(BTreeMap::from([("gone".to_owned(), "1".to_owned())])),
                ..ObjectMeta::default()
            },
            spec: Some(k8s_openapi::api::core::v1::NodeSpec {
                taints: Some(vec![KubeTaint {
                    key: "other".into(),
                    value: Some("x".into()),
                    effect: "NoSchedule".into(),
                    time_added: None,
                }]),
                ..Default::default()
            }),
            ..Node::default()
        };
        let with = CordonWith {
            annotations: BTreeMap::from([
                ("ours".to_owned(), Some("1".to_owned())),
                ("gone".to_owned(), None),
            ]),
            labels: BTreeMap::from([("l".to_owned(), Some("v".to_owned()))]),
            taint: Some(Taint::new("spot-itn", "e1", TaintEffect::NoSchedule)),
        };
        assert_eq!(
            mark(&mut n, &with),
            Marked {
                metadata: true,
                tainted: true,
                cordoned: true
            }
        );
        let spec = n.spec.as_ref().unwrap();
        assert_eq!(spec.unschedulable, Some(true));
        let keys: Vec<&str> = spec
            .taints
            .as_ref()
            .unwrap()
            .iter()
            .map(|t| t.key.as_str())
            .collect();
        assert_eq!(keys, ["other", "spot-itn"]);
        assert_eq!(
            n.metadata.annotations,
            Some(BTreeMap::from([("ours".to_owned(), "1".to_owned())]))
        );
        assert_eq!(n.metadata.labels.as_ref().unwrap()["l"], "v");
        assert_eq!(mark(&mut n, &with), Marked::default(), "nothing left to change");
    }

    #[test]
    fn metadata_patches_set_and_remove() {
        let mut m = MetadataPatch::new();
        m.insert("a".into(), Some("1".into()));
        m.insert("b".into(), None);
        assert_eq!(
            metadata_patch("labels", &m),
            json!({"metadata": {"labels": {"a": "1", "b": null}}})
        );
    }
}
