//! Kubernetes Events (`events.k8s.io/v1`, so `kubectl get events` and `kubectl describe`
//! show them) about pods and NodeClaims, as Karpenter emits them:
//!
//! - pods: `Nominated` (Normal, "Pod should schedule on: nodeclaim/NAME" or "node/NAME")
//!   and `FailedScheduling` (Warning, "Failed to schedule pod, REASON" with the constraint
//!   that failed);
//! - NodeClaims: `Launched`, `Registered`, `Initialized` (Normal), `InsufficientCapacityError`
//!   and `LaunchFailed` (Warning, with the error), `Terminating` and `Terminated`.
//!
//! Publishing goes through kube's [`Recorder`] (repeats after the window become a series
//! on the first Event) in a background task, so a provisioning loop never waits for the
//! API server; failures are logged, never fatal. The same Event about the same object
//! (reason and message) is published at most once per [`DEDUPE_WINDOW`]: a pod that stays
//! pending is not reported again at every loop.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use spot_core::cloud::Instance;
use spot_core::pod::PodSpec;
use spot_core::scheduling::Solution;
use tokio::time::Instant;
use tracing::debug;

use crate::api::NodeClaim;
use crate::cluster::Snapshot;

/// The reporting controller of every Event.
pub const REPORTER: &str = "spot-provisioner";
/// How long the same Event about the same object is not published again (Karpenter's
/// default dedupe timeout).
pub const DEDUPE_WINDOW: Duration = Duration::from_secs(120);
/// How many Events are published at once.
const CONCURRENCY: usize = 8;
/// The dedupe cache is pruned of expired entries once it holds this many.
const PRUNE_AT: usize = 8192;

/// Errors of this module (none is fatal: publishing failures are logged).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused an Event.
    #[error("publishing Event {reason} about {kind} {name}: {source}")]
    Publish {
        /// The Event's reason.
        reason: String,
        /// The object's kind.
        kind: String,
        /// The object's name.
        name: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
}

/// What identifies repeats.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    object: String,
    reason: String,
    note: String,
}

/// One Event to publish.
struct Pending {
    reference: ObjectReference,
    type_: EventType,
    reason: &'static str,
    action: &'static str,
    note: String,
}

/// Publishes the provisioner's Events. Cheap to clone.
#[derive(Clone)]
pub struct Events {
    recorder: Recorder,
    window: Duration,
    recent: Arc<Mutex<HashMap<Key, Instant>>>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

/// A reference to a pod of the scheduling view.
fn pod_reference(namespace: &str, name: &str, uid: Option<String>) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: Some(namespace.to_owned()),
        name: Some(name.to_owned()),
        uid: uid.filter(|u| !u.is_empty()),
        ..ObjectReference::default()
    }
}

fn spec_reference(pod: &PodSpec) -> ObjectReference {
    pod_reference(&pod.namespace, &pod.name, Some(pod.uid.clone()))
}

impl Events {
    /// Publishes as `reporter` (controller [`REPORTER`] and this replica's name, usually).
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Events {
            recorder: Recorder::new(client, reporter),
            window: DEDUPE_WINDOW,
            recent: Arc::default(),
        }
    }

    /// Changes the dedupe window.
    pub fn with_dedupe_window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Keeps the Events not published within the window and records them as published.
    fn fresh(&self, events: Vec<Pending>) -> Vec<Pending> {
        let now = Instant::now();
        let mut recent = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if recent.len() >= PRUNE_AT {
            recent.retain(|_, at| now.duration_since(*at) < self.window);
        }
        events
            .into_iter()
            .filter(|e| {
                let r = &e.reference;
                let key = Key {
                    object: format!(
                        "{}/{}/{}/{}",
                        r.kind.as_deref().unwrap_or_default(),
                        r.namespace.as_deref().unwrap_or_default(),
                        r.name.as_deref().unwrap_or_default(),
                        r.uid.as_deref().unwrap_or_default()
                    ),
                    reason: e.reason.to_owned(),
                    note: e.note.clone(),
                };
                match recent.get(&key) {
                    Some(at) if now.duration_since(*at) < self.window => false,
                    _ => {
                        recent.insert(key, now);
                        true
                    }
                }
            })
            .collect()
    }

    /// Publishes in the background what was not published within the window.
    fn emit(&self, events: Vec<Pending>) {
        let events = self.fresh(events);
        if events.is_empty() {
            return;
        }
        let recorder = self.recorder.clone();
        tokio::spawn(async move {
            futures::stream::iter(events)
                .for_each_concurrent(CONCURRENCY, |e| {
                    let recorder = recorder.clone();
                    async move {
                        let event = Event {
                            type_: e.type_,
                            reason: e.reason.to_owned(),
                            note: Some(e.note),
                            action: e.action.to_owned(),
                            secondary: None,
                        };
                        if let Err(source) = recorder.publish(&event, &e.reference).await {
                            let err = Error::Publish {
                                reason: e.reason.to_owned(),
                                kind: e.reference.kind.unwrap_or_default(),
                                name: e.reference.name.unwrap_or_default(),
                                source,
                            };
                            debug!(error = %err, "Event not published");
                        }
                    }
                })
                .await;
        });
    }

    /// The Events of one provisioning loop: `Nominated` for every pod placed on a node, an
    /// in-flight NodeClaim or one of the `created` NodeClaims (in the order of
    /// `solution.new_claims`), and `FailedScheduling` for every `unschedulable` pod.
    pub fn provisioned(
        &self,
        snapshot: &Snapshot,
        solution: &Solution,
        created: &[String],
        unschedulable: &[(String, String)],
    ) {
        let pods: BTreeMap<String, &Pod> = snapshot
            .pods
            .iter()
            .map(|p| {
                (
                    format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()),
                    p,
                )
            })
            .collect();
        let reference = |key: &str| -> ObjectReference {
            match pods.get(key) {
                Some(p) => {
                    let mut r = p.object_ref(&());
                    r.resource_version = None;
                    r
                }
                None => {
                    let (ns, name) = key.split_once('/').unwrap_or(("default", key));
                    pod_reference(ns, name, None)
                }
            }
        };
        let mut events = Vec::new();
        let unlaunched: Vec<String> = snapshot
            .claims
            .iter()
            .filter(|c| snapshot.node_of(c).is_none())
            .map(ResourceExt::name_any)
            .collect();
        for (pod, node) in &solution.existing {
            let target = if unlaunched.contains(node) {
                format!("nodeclaim/{node}")
            } else {
                format!("node/{node}")
            };
            events.push(nominated(reference(pod), &target));
        }
        for (claim, name) in solution.new_claims.iter().zip(created) {
            for pod in &claim.pods {
                events.push(nominated(spec_reference(pod), &format!("nodeclaim/{name}")));
            }
        }
        for (pod, reason) in unschedulable {
            events.push(Pending {
                reference: reference(pod),
                type_: EventType::Warning,
                reason: "FailedScheduling",
                action: "Scheduling",
                note: truncate(format!("Failed to schedule pod, {reason}")),
            });
        }
        self.emit(events);
    }

    fn claim(
        &self,
        claim: &NodeClaim,
        type_: EventType,
        reason: &'static str,
        action: &'static str,
        note: String,
    ) {
        let mut reference = claim.object_ref(&());
        reference.resource_version = None;
        self.emit(vec![Pending {
            reference,
            type_,
            reason,
            action,
            note: truncate(note),
        }]);
    }

    /// A NodeClaim's instance was launched.
    pub fn launched(&self, claim: &NodeClaim, instance: &Instance) {
        self.claim(
            claim,
            EventType::Normal,
            "Launched",
            "Launch",
            format!(
                "Launched instance {} ({}, {}, {})",
                instance.id,
                instance.instance_type,
                instance.capacity_type.as_str(),
                instance.zone
            ),
        );
    }

    /// A NodeClaim's launch failed; `insufficient_capacity` when no offering had capacity.
    pub fn launch_failed(
        &self,
        claim: &NodeClaim,
        insufficient_capacity: bool,
        error: &dyn std::fmt::Display,
    ) {
        let reason = if insufficient_capacity {
            "InsufficientCapacityError"
        } else {
            "LaunchFailed"
        };
        self.claim(
            claim,
            EventType::Warning,
            reason,
            "Launch",
            format!("Launching NodeClaim failed: {error}"),
        );
    }

    /// A NodeClaim's node registered.
    pub fn registered(&self, claim: &NodeClaim, node: &str) {
        self.claim(
            claim,
            EventType::Normal,
            "Registered",
            "Register",
            format!("Registered node {node}"),
        );
    }

    /// A NodeClaim's node is initialized (ready, startup taints gone).
    pub fn initialized(&self, claim: &NodeClaim, node: &str) {
        self.claim(
            claim,
            EventType::Normal,
            "Initialized",
            "Initialize",
            format!("Initialized node {node}"),
        );
    }

    /// A deleted NodeClaim is being drained and terminated.
    pub fn terminating(&self, claim: &NodeClaim, node: Option<&str>) {
        let note = match node {
            Some(node) => format!("Draining node {node} and terminating its instance"),
            None => "Terminating the instance (no node registered)".to_owned(),
        };
        self.claim(claim, EventType::Normal, "Terminating", "Terminate", note);
    }

    /// A deleted NodeClaim's instance is terminated and the claim released.
    pub fn terminated(&self, claim: &NodeClaim) {
        let instance = claim
            .status
            .as_ref()
            .and_then(|s| s.provider_id.as_deref())
            .and_then(|p| p.rsplit('/').next())
            .unwrap_or("none");
        self.claim(
            claim,
            EventType::Normal,
            "Terminated",
            "Terminate",
            format!("Terminated instance {instance}"),
        );
    }
}

fn nominated(reference: ObjectReference, target: &str) -> Pending {
    Pending {
        reference,
        type_: EventType::Normal,
        reason: "Nominated",
        action: "Scheduling",
        note: format!("Pod should schedule on: {target}"),
    }
}

/// Event notes are limited to 1 kB.
fn truncate(mut note: String) -> String {
    const MAX: usize = 1024;
    if note.len() > MAX {
        let mut end = MAX - 3;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push_str("...");
    }
    note
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(name: &str, reason: &'static str, note: &str) -> Pending {
        Pending {
            reference: pod_reference("default", name, Some(format!("uid-{name}"))),
            type_: EventType::Warning,
            reason,
            action: "Scheduling",
            note: note.to_owned(),
        }
    }

    fn events() -> Events {
        let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
        Events::new(Client::try_from(config).unwrap(), REPORTER.into())
    }

    #[tokio::test(start_paused = true)]
    async fn repeats_within_the_window_are_dropped_and_published_again_after_it() {
        let events = events();
        let first = events.fresh(vec![
            pending("a", "FailedScheduling", "x"),
            pending("b", "FailedScheduling", "x"),
        ]);
        assert_eq!(first.len(), 2);
        tokio::time::advance(Duration::from_secs(60)).await;
        let again = events.fresh(vec![
            pending("a", "FailedScheduling", "x"),
            // Another reason is news.
            pending("b", "FailedScheduling", "y"),
        ]);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].note, "y");
        tokio::time::advance(DEDUPE_WINDOW).await;
        assert_eq!(events.fresh(vec![pending("a", "FailedScheduling", "x")]).len(), 1);
    }

    #[test]
    fn long_notes_are_cut_at_a_character_boundary() {
        let note = truncate("é".repeat(600));
        assert!(note.len() <= 1024 && note.ends_with("..."), "{}", note.len());
        assert_eq!(truncate("short".into()), "short");
    }
}
