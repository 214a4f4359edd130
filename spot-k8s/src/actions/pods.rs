//! What drains know about pods: a compact projection of each pod ([`PodInfo`]), and one
//! cluster-wide pod watch shared by every drain of a [`super::KubeNodeActions`]
//! ([`SharedPods`], for [`super::PodSource::Shared`]).
//!
//! The shared watch follows every bound pod (`spec.nodeName!=`) and keeps only the projection,
//! indexed by node: a few hundred bytes per pod instead of the whole object. It starts with the
//! first drain, and stops (forgetting every pod) once no drain has used it for
//! [`SharedPods::linger`], so an idle handler holds no pods and makes no API calls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use spot_core::node::{DrainOptions, PodRef};
use tokio::time::Instant;

use super::{CRITICAL_PRIORITY_CLASSES, MIRROR_ANNOTATION};
use crate::ratelimit::RateLimiter;

/// What a drain needs to know about a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PodInfo {
    /// Namespace and name.
    pub pod: PodRef,
    /// `metadata.uid`.
    pub uid: String,
    /// A mirror (static) pod.
    pub mirror: bool,
    /// `metadata.deletionTimestamp` is set.
    pub terminating: bool,
    /// Controlled by a DaemonSet.
    pub daemonset: bool,
    /// Has an emptyDir volume.
    pub empty_dir: bool,
    /// `system-cluster-critical`/`system-node-critical` or priority ≥ 2,000,000,000.
    pub critical: bool,
}

impl PodInfo {
    /// The projection of `p`.
    pub fn of(p: &Pod) -> Self {
        let spec = p.spec.as_ref();
        PodInfo {
            pod: PodRef {
                namespace: p.namespace().unwrap_or_default(),
                name: p.name_any(),
            },
            uid: p.metadata.uid.clone().unwrap_or_default(),
            mirror: p.annotations().contains_key(MIRROR_ANNOTATION),
            terminating: p.metadata.deletion_timestamp.is_some(),
            daemonset: p
                .owner_references()
                .iter()
                .any(|o| o.controller == Some(true) && o.kind == "DaemonSet"),
            empty_dir: spec
                .and_then(|s| s.volumes.as_ref())
                .is_some_and(|vs| vs.iter().any(|v| v.empty_dir.is_some())),
            critical: spec
                .and_then(|s| s.priority_class_name.as_deref())
                .is_some_and(|c| CRITICAL_PRIORITY_CLASSES.contains(&c))
                || spec
                    .and_then(|s| s.priority)
                    .is_some_and(|pr| pr >= 2_000_000_000),
        }
    }

    /// Why a drain leaves the pod alone, if it does.
    pub fn skip_reason(&self, options: &DrainOptions) -> Option<&'static str> {
        if self.mirror {
            return Some("mirror pod");
        }
        if options.skip_pod.as_ref() == Some(&self.pod) {
            return Some("own pod");
        }
        if self.terminating {
            return Some("already terminating");
        }
        if self.daemonset && options.ignore_daemonsets {
            return Some("DaemonSet pod");
        }
        if self.empty_dir && !options.delete_emptydir_data {
            return Some("emptyDir data (delete_emptydir_data is off)");
        }
        None
    }
}

/// Pods by node, then by (namespace, name).
type ByNode = HashMap<String, HashMap<(String, String), PodInfo>>;

#[derive(Debug, Default)]
struct State {
    /// Drains holding a [`Use`].
    users: usize,
    /// When the last user left.
    idle_since: Option<Instant>,
    /// Whether a watch task runs.
    running: bool,
    pods: ByNode,
}

/// One cluster-wide watch of bound pods, shared by the drains of one `KubeNodeActions`.
#[derive(Debug)]
pub(crate) struct SharedPods {
    state: StdMutex<State>,
    ready: tokio::sync::watch::Sender<bool>,
    linger: Duration,
}

/// A drain's use of the shared watch; the watch may stop once no use is left.
#[derive(Debug)]
pub(crate) struct Use(Arc<SharedPods>);

impl Drop for Use {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.users = state.users.saturating_sub(1);
        if state.users == 0 {
            state.idle_since = Some(Instant::now());
        }
    }
}

impl Use {
    /// The pods on `node` as the watch last saw them.
    pub fn pods_on(&self, node: &str) -> Vec<PodInfo> {
        self.0
            .lock()
            .pods
            .get(node)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Waits (until `deadline`) for the watch's first complete listing. Returns whether it
    /// came.
    pub async fn ready(&self, deadline: Instant) -> bool {
        let mut rx = self.0.ready.subscribe();
        matches!(
            tokio::time::timeout_at(deadline, rx.wait_for(|r| *r)).await,
            Ok(Ok(_))
        )
    }
}

fn node_of(p: &Pod) -> Option<&str> {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

fn key_of(p: &Pod) -> (String, String) {
    (p.namespace().unwrap_or_default(), p.name_any())
}

fn insert(pods: &mut ByNode, p: &Pod) {
    if let Some(node) = node_of(p) {
        pods.entry(node.to_owned())
            .or_default()
            .insert(key_of(p), PodInfo::of(p));
    }
}

fn remove(pods: &mut ByNode, p: &Pod) {
    let Some(node) = node_of(p) else { return };
    if let Some(on_node) = pods.get_mut(node) {
        on_node.remove(&key_of(p));
        if on_node.is_empty() {
            pods.remove(node);
        }
    }
}

impl SharedPods {
    /// A stopped watch that, once started, stops `linger` after its last user left.
    pub fn new(linger: Duration) -> Arc<Self> {
        Arc::new(SharedPods {
            state: StdMutex::default(),
            ready: tokio::sync::watch::Sender::new(false),
            linger,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How long the watch outlives its last user.
    pub fn linger(&self) -> Duration {
        self.linger
    }

    /// Whether the watch runs.
    pub fn running(&self) -> bool {
        self.lock().running
    }

    /// Uses the watch, starting it when it is not running (its start takes a token from
    /// `limiter`; the initial listing is paginated by `page_size`).
    pub async fn use_it(self: &Arc<Self>, client: &Client, page_size: u32, limiter: &RateLimiter) -> Use {
        let start = {
            let mut state = self.lock();
            state.users += 1;
            state.idle_since = None;
            !std::mem::replace(&mut state.running, true)
        };
        let used = Use(self.clone());
        if start {
            limiter.acquire().await;
            let this = self.clone();
            let client = client.clone();
            tokio::spawn(async move { this.run(client, page_size).await });
        }
        used
    }

    async fn run(self: Arc<Self>, client: Client, page_size: u32) {
        let api: Api<Pod> = Api::all(client);
        let config = watcher::Config::default()
            .fields("spec.nodeName!=")
            .page_size(page_size);
        let stream = watcher(api, config).default_backoff();
        futures::pin_mut!(stream);
        let mut listing: Option<ByNode> = None;
        let mut check = tokio::time::interval((self.linger / 4).max(Duration::from_millis(100)));
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                item = stream.next() => match item {
                    Some(Ok(watcher::Event::Init)) => listing = Some(ByNode::new()),
                    Some(Ok(watcher::Event::InitApply(p))) => insert(listing.get_or_insert_default(), &p),
                    Some(Ok(watcher::Event::InitDone)) => {
                        // A relist replaces the pods at once: drains never see a partial list.
                        self.lock().pods = listing.take().unwrap_or_default();
                        self.ready.send_replace(true);
                    }
                    Some(Ok(watcher::Event::Apply(p))) => insert(&mut self.lock().pods, &p),
                    Some(Ok(watcher::Event::Delete(p))) => remove(&mut self.lock().pods, &p),
                    Some(Err(e)) => tracing::warn!(error = %e, "shared drain pod watch failed; retrying"),
                    None => break,
                },
                _ = check.tick() => {
                    let mut state = self.lock();
                    if state.users == 0 && state.idle_since.is_some_and(|t| t.elapsed() >= self.linger) {
                        state.running = false;
                        state.pods = ByNode::new();
                        self.ready.send_replace(false);
                        tracing::debug!("no drain for a while: shared pod watch stopped");
                        return;
                    }
                }
            }
        }
        let mut state = self.lock();
        state.running = false;
        state.pods = ByNode::new();
        self.ready.send_replace(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{EmptyDirVolumeSource, PodSpec, Volume};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    fn pod(name: &str, node: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(format!("uid-{name}")),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                ..PodSpec::default()
            }),
            status: None,
        }
    }

    #[test]
    fn skip_rules() {
        let opts = DrainOptions::default();
        assert_eq!(PodInfo::of(&pod("a", "n")).skip_reason(&opts), None);
        let mut mirror = pod("m", "n");
        mirror.metadata.annotations = Some([(MIRROR_ANNOTATION.to_owned(), "x".to_owned())].into());
        assert_eq!(PodInfo::of(&mirror).skip_reason(&opts), Some("mirror pod"));
        let mut ds = pod("d", "n");
        ds.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "apps/v1".into(),
            kind: "DaemonSet".into(),
            name: "ds".into(),
            uid: "u".into(),
            controller: Some(true),
            block_owner_deletion: None,
        }]);
        assert_eq!(PodInfo::of(&ds).skip_reason(&opts), Some("DaemonSet pod"));
        let keep_ds = DrainOptions {
            ignore_daemonsets: false,
            ..opts.clone()
        };
        assert_eq!(PodInfo::of(&ds).skip_reason(&keep_ds), None);
        let own = DrainOptions {
            skip_pod: Some(PodRef {
                namespace: "default".into(),
                name: "a".into(),
            }),
            ..opts.clone()
        };
        assert_eq!(PodInfo::of(&pod("a", "n")).skip_reason(&own), Some("own pod"));
        let mut ed = pod("e", "n");
        ed.spec.as_mut().unwrap().volumes = Some(vec![Volume {
            name: "v".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        }]);
        assert_eq!(PodInfo::of(&ed).skip_reason(&opts), None);
        let keep_data = DrainOptions {
            delete_emptydir_data: false,
            ..opts
        };
        assert!(PodInfo::of(&ed).skip_reason(&keep_data).is_some());
    }

    #[test]
    fn critical_pods_are_marked() {
        let mut p = pod("c", "n");
        assert!(!PodInfo::of(&p).critical);
        p.spec.as_mut().unwrap().priority_class_name = Some("system-node-critical".into());
        assert!(PodInfo::of(&p).critical);
        let mut q = pod("q", "n");
        q.spec.as_mut().unwrap().priority = Some(2_000_001_000);
        assert!(PodInfo::of(&q).critical);
    }

    #[test]
    fn index_by_node() {
        let mut pods = ByNode::new();
        insert(&mut pods, &pod("a", "n1"));
        insert(&mut pods, &pod("b", "n1"));
        insert(&mut pods, &pod("c", "n2"));
        insert(&mut pods, &pod("unbound", ""));
        assert_eq!(pods.len(), 2);
        assert_eq!(pods["n1"].len(), 2);
        remove(&mut pods, &pod("c", "n2"));
        assert!(!pods.contains_key("n2"));
        remove(&mut pods, &pod("a", "n1"));
        assert_eq!(
            pods["n1"]
                .values()
                .map(|p| p.pod.name.as_str())
                .collect::<Vec<_>>(),
            ["b"]
        );
    }
}
