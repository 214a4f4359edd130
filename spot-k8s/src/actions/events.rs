//! Kubernetes Events (`events.k8s.io/v1`) about nodes, as kube's `Recorder` publishes them
//! (same names, fields and series aggregation of repeats), plus annotations on every Event
//! (NTH's `KUBERNETES_EVENTS_EXTRA_ANNOTATIONS`), which kube's `Recorder` cannot set.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as KubeEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{EventType, Reporter};
use kube::{Client, ResourceExt};
use tokio::sync::Mutex;

/// Repeats within this time become a series on the first Event (as in kube's `Recorder`).
const SERIES_TTL: SignedDuration = SignedDuration::from_mins(6);
/// The cache of recent Events is pruned of expired entries once it holds this many.
const PRUNE_AT: usize = 4096;

/// What identifies repeats of an Event.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    normal: bool,
    reason: String,
    action: String,
    node: String,
}

/// Publishes Events about nodes.
#[derive(Clone)]
pub(crate) struct Publisher {
    client: Client,
    reporter: Reporter,
    annotations: BTreeMap<String, String>,
    recent: Arc<Mutex<HashMap<Key, (KubeEvent, Timestamp)>>>,
}

/// One Event to publish.
pub(crate) struct Note<'a> {
    pub type_: EventType,
    pub reason: &'a str,
    pub action: &'a str,
    pub note: String,
}

impl Publisher {
    /// A publisher reporting as `reporter`.
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Publisher {
            client,
            reporter,
            annotations: BTreeMap::new(),
            recent: Arc::default(),
        }
    }

    /// Puts `annotations` on every Event.
    pub fn with_annotations(mut self, annotations: BTreeMap<String, String>) -> Self {
        self.annotations = annotations;
        self
    }

    /// The annotations put on every Event.
    pub fn annotations(&self) -> &BTreeMap<String, String> {
        &self.annotations
    }

    fn event(&self, ev: &Note<'_>, node: &str, now: Timestamp) -> KubeEvent {
        let regarding = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.to_owned()),
            ..ObjectReference::default()
        };
        KubeEvent {
            action: Some(ev.action.to_owned()),
            reason: Some(ev.reason.to_owned()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding),
            note: Some(ev.note.clone()),
            metadata: ObjectMeta {
                namespace: Some("default".into()),
                name: Some(format!("{node}.{:x}", now.as_nanosecond())),
                annotations: (!self.annotations.is_empty()).then(|| self.annotations.clone()),
                ..ObjectMeta::default()
            },
            reporting_controller: Some(self.reporter.controller.clone()),
            reporting_instance: Some(
                self.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| self.reporter.controller.clone()),
            ),
            type_: Some(
                match ev.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            ..KubeEvent::default()
        }
    }

    /// Publishes `ev` about `node`: a new Event, or a repeat counted on the series of the
    /// same Event published less than 6 minutes ago.
    pub async fn publish(&self, ev: &Note<'_>, node: &str) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let key = Key {
            normal: ev.type_ == EventType::Normal,
            reason: ev.reason.to_owned(),
            action: ev.action.to_owned(),
            node: node.to_owned(),
        };
        let repeat = {
            let mut recent = self.recent.lock().await;
            if recent.len() >= PRUNE_AT {
                recent.retain(|_, (_, last)| *last + SERIES_TTL > now);
            }
            recent
                .get(&key)
                .filter(|(_, last)| *last + SERIES_TTL > now)
                .map(|(e, _)| e.clone())
        };
        let events: Api<KubeEvent> = Api::namespaced(self.client.clone(), "default");
        let event = match repeat {
            Some(mut event) => {
                let count = event.series.as_ref().map_or(2, |s| s.count + 1);
                event.series = Some(EventSeries {
                    count,
                    last_observed_time: MicroTime(now),
                });
                events
                    .patch(&event.name_any(), &PatchParams::default(), &Patch::Merge(&event))
                    .await?;
                event
            }
            None => {
                let event = self.event(ev, node, now);
                events.create(&PostParams::default(), &event).await?;
                event
            }
        };
        self.recent.lock().await.insert(key, (event, now));
        Ok(())
    }
}
