//! Watches of pods, nodes and NodeClaims: the live timeline of what the controllers do, and
//! the records the summary is computed from (pending times, evictions and replacements
//! ordered by resourceVersion, the simulator's single increasing counter).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use spot_core::labels;
use spot_nth::handler::ANN_REASON;
use spot_provisioner::api::NodeClaim;
use spot_provisioner::api::nodeclaim::conditions;
use spot_provisioner::disruption::orchestrate::{REPLACEMENT_FOR_ANNOTATION, Record};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Timeline;
use super::world::lock;

/// One pod as seen by the watch.
#[derive(Debug, Clone)]
pub struct PodRecord {
    /// `namespace/name`.
    pub name: String,
    /// Its `app` label.
    pub app: Option<String>,
    /// When the watch first saw it.
    pub first_seen: Instant,
    /// When it was first seen bound, and to which node.
    pub bound: Option<(Instant, String)>,
    /// The resourceVersion at which it started terminating (or was deleted).
    pub deleted_rv: Option<u64>,
}

/// One NodeClaim as seen by the watch.
#[derive(Debug, Clone, Default)]
pub struct ClaimRecord {
    /// The claim it replaces (its disruption command), if any.
    pub replacement_for: Option<String>,
    /// Its node, once registered.
    pub node: Option<String>,
    /// Its instance id, once launched.
    pub instance: Option<String>,
    /// Instance type, capacity type and zone, once launched.
    pub offering: Option<(String, String, String)>,
    /// The resourceVersion at which it was first seen initialized.
    pub initialized_rv: Option<u64>,
    /// Its disruption reason (`Interrupted`, `Rebalance`), once marked.
    pub disrupted: Option<String>,
    /// The resourceVersion at which its deletion started.
    pub deleting_rv: Option<u64>,
    /// Whether it is gone.
    pub gone: bool,
}

/// Everything recorded.
#[derive(Debug, Default)]
pub struct Records {
    /// Pods by uid.
    pub pods: HashMap<String, PodRecord>,
    /// NodeClaims by name.
    pub claims: BTreeMap<String, ClaimRecord>,
    /// Nodes spot-nth acted on, with the event kind it recorded.
    pub nth: BTreeMap<String, String>,
}

impl Records {
    /// The first eviction (resourceVersion) of a pod bound to `node`.
    pub fn first_eviction(&self, node: &str) -> Option<u64> {
        self.pods
            .values()
            .filter(|p| p.bound.as_ref().is_some_and(|(_, n)| n == node))
            .filter_map(|p| p.deleted_rv)
            .min()
    }

    /// How many pods bound to `node` were evicted.
    pub fn evicted_from(&self, node: &str) -> usize {
        self.pods
            .values()
            .filter(|p| p.bound.as_ref().is_some_and(|(_, n)| n == node) && p.deleted_rv.is_some())
            .count()
    }

    /// The replacements of the claim `name`.
    pub fn replacements_of(&self, name: &str) -> Vec<(&String, &ClaimRecord)> {
        self.claims
            .iter()
            .filter(|(_, c)| c.replacement_for.as_deref() == Some(name))
            .collect()
    }
}

/// The recorder: three watches feeding [`Records`] and the timeline.
pub struct Recorder {
    records: Arc<Mutex<Records>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn rv<K: Resource>(obj: &K) -> u64 {
    obj.meta()
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Runs `on` for every change of `K` (object, deleted).
fn watch<K>(client: &Client, mut on: impl FnMut(K, bool) + Send + 'static) -> JoinHandle<()>
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let api = Api::<K>::all(client.clone());
    tokio::spawn(async move {
        let stream = watcher(api, watcher::Config::default()).default_backoff();
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => on(o, false),
                Ok(watcher::Event::Delete(o)) => on(o, true),
                _ => {}
            }
        }
    })
}

impl Recorder {
    /// Starts the watches; events go to `timeline`.
    pub fn start(client: &Client, timeline: &Timeline) -> Recorder {
        let records = Arc::new(Mutex::new(Records::default()));
        let pods = {
            let records = records.clone();
            watch::<Pod>(client, move |pod, deleted| {
                on_pod(&mut lock(&records), &pod, deleted)
            })
        };
        let claims = {
            let records = records.clone();
            let timeline = timeline.clone();
            watch::<NodeClaim>(client, move |claim, deleted| {
                on_claim(&mut lock(&records), &timeline, &claim, deleted);
            })
        };
        let nodes = {
            let records = records.clone();
            let timeline = timeline.clone();
            watch::<Node>(client, move |node, deleted| {
                on_node(&mut lock(&records), &timeline, &node, deleted);
            })
        };
        Recorder {
            records,
            tasks: vec![pods, claims, nodes],
        }
    }

    /// Reads the records.
    pub fn with<R>(&self, f: impl FnOnce(&Records) -> R) -> R {
        f(&lock(&self.records))
    }
}

fn on_pod(records: &mut Records, pod: &Pod, deleted: bool) {
    let Some(uid) = pod.uid() else { return };
    let rec = records.pods.entry(uid).or_insert_with(|| PodRecord {
        name: format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any()),
        app: pod.labels().get("app").cloned(),
        first_seen: Instant::now(),
        bound: None,
        deleted_rv: None,
    });
    if rec.bound.is_none()
        && let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone())
    {
        rec.bound = Some((Instant::now(), node));
    }
    if rec.deleted_rv.is_none() && (deleted || pod.metadata.deletion_timestamp.is_some()) {
        rec.deleted_rv = Some(rv(pod));
    }
}

fn on_claim(records: &mut Records, timeline: &Timeline, claim: &NodeClaim, deleted: bool) {
    let name = claim.name_any();
    let first = !records.claims.contains_key(&name);
    let replacement_for = claim.annotations().get(REPLACEMENT_FOR_ANNOTATION).cloned();
    let rec = records.claims.entry(name.clone()).or_default();
    if first && let Some(victim) = &replacement_for {
        timeline.event(&format!(
            "provisioner: NodeClaim {name} created to replace {victim}"
        ));
    }
    rec.replacement_for = replacement_for;
    let status = claim.status.as_ref();
    if rec.node.is_none() {
        rec.node = status.and_then(|s| s.node_name.clone());
    }
    if rec.offering.is_none()
        && status.is_some_and(|s| s.is_true(conditions::LAUNCHED))
        && let (Some(t), Some(c), Some(z)) = (
            claim.labels().get(labels::INSTANCE_TYPE),
            claim.labels().get(labels::CAPACITY_TYPE),
            claim.labels().get(labels::ZONE),
        )
    {
        rec.offering = Some((t.clone(), c.clone(), z.clone()));
        rec.instance = status
            .and_then(|s| s.provider_id.as_deref())
            .and_then(|p| p.rsplit('/').next())
            .map(str::to_owned);
        let why = match &rec.replacement_for {
            Some(victim) => format!("replacing {victim}"),
            None => "for pending pods".to_owned(),
        };
        timeline.event(&format!("provisioner: launched {name}: {t} {c} in {z}, {why}"));
    }
    if rec.initialized_rv.is_none() && status.is_some_and(|s| s.is_true(conditions::INITIALIZED)) {
        rec.initialized_rv = Some(rv(claim));
        if let Some(victim) = &rec.replacement_for {
            let node = rec.node.clone().unwrap_or_default();
            timeline.event(&format!(
                "provisioner: replacement {name} initialized (node {node} Ready) for {victim}"
            ));
        }
    }
    if rec.disrupted.is_none()
        && let Some(record) = Record::of(claim)
    {
        timeline.event(&format!(
            "provisioner: {} {name}: tainted karpenter.sh/disrupted, cordoned, replacement first",
            record.reason.to_lowercase()
        ));
        rec.disrupted = Some(record.reason);
    }
    if rec.deleting_rv.is_none() && (deleted || claim.metadata.deletion_timestamp.is_some()) {
        rec.deleting_rv = Some(rv(claim));
        let node = rec.node.clone().unwrap_or_default();
        timeline.event(&format!("provisioner: draining node {node} ({name} deleted)"));
    }
    if deleted && !rec.gone {
        rec.gone = true;
        let node = rec.node.clone().unwrap_or_default();
        let evicted = records.evicted_from(&node);
        timeline.event(&format!(
            "provisioner: {name} gone: {} evicted from {node}, instance terminated",
            super::summary::plural(evicted, "pod")
        ));
    }
}

fn on_node(records: &mut Records, timeline: &Timeline, node: &Node, deleted: bool) {
    let name = node.name_any();
    if deleted || records.nth.contains_key(&name) {
        return;
    }
    let Some(reason) = node.annotations().get(ANN_REASON) else {
        return;
    };
    let taints: Vec<String> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .map(|ts| {
            ts.iter()
                .filter(|t| t.key.starts_with("aws-node-termination-handler/"))
                .map(|t| t.key.clone())
                .collect()
        })
        .unwrap_or_default();
    timeline.event(&format!(
        "spot-nth (IMDS on {name}): {reason}: tainted {}, cordoned",
        taints.join(", ")
    ));
    records.nth.insert(name, reason.clone());
}
