//! Carrying out a disruption, shared by the disruption and interruption controllers:
//! mark the candidates (a [`Record`] annotation, the `DisruptionReason` condition and the
//! `karpenter.sh/disrupted:NoSchedule` taint), create and launch the replacements, wait for
//! them, delete the candidates' NodeClaims (the provisioner's termination path drains and
//! terminates), or undo the marks when the command fails.
//!
//! Everything a command needs to resume lives in the API objects: the candidates carry the
//! [`Record`] (reason, command id, how many replacements, start time) and every replacement
//! carries [`REPLACEMENT_FOR_ANNOTATION`] with the command id. A controller that restarts
//! finds its commands there ([`find_replacements`]) and carries on or rolls back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::json;
use spot_core::node::{Taint, TaintEffect};
use spot_core::scheduling::{InstanceTypeOption, NewNodeClaim, NodePoolTemplate, Scheduler};
use time::OffsetDateTime;
use tracing::{info, warn};

use super::Error;
use super::state::{View, destinations, moving_pods, node_pods};
use crate::api::NodeClaim;
use crate::api::nodeclaim::conditions;
use crate::cluster::Snapshot;
use crate::provisioner::{DISRUPTED_TAINT, Provisioner};

/// The annotation on a NodeClaim being disrupted: its [`Record`] as JSON.
pub const DISRUPTION_ANNOTATION: &str = "spot.dev/disruption";
/// The annotation on a replacement NodeClaim: the id of the command it replaces nodes for.
pub const REPLACEMENT_FOR_ANNOTATION: &str = "spot.dev/replacement-for";

/// What a NodeClaim being disrupted records about its command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Why: `Empty`, `Underutilized`, `Drifted`, `Interrupted`, `Rebalance`.
    pub reason: String,
    /// The command's id (shared by its candidates and named by its replacements).
    pub command: String,
    /// How many replacements the command launches.
    pub replacements: usize,
    /// When the command started.
    #[serde(with = "time::serde::rfc3339")]
    pub started: OffsetDateTime,
}

impl Record {
    /// The record on a NodeClaim, if it carries a valid one.
    pub fn of(claim: &NodeClaim) -> Option<Record> {
        claim
            .annotations()
            .get(DISRUPTION_ANNOTATION)
            .and_then(|v| serde_json::from_str(v).ok())
    }
}

fn api_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let action = action.into();
    move |source| Error::Api { action, source }
}

fn jiff(t: OffsetDateTime) -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::from_nanosecond(t.unix_timestamp_nanos()).unwrap_or_default()
}

/// The `karpenter.sh/disrupted:NoSchedule` taint.
pub fn disrupted_taint() -> Taint {
    Taint {
        key: DISRUPTED_TAINT.to_owned(),
        value: None,
        effect: TaintEffect::NoSchedule,
    }
}

/// Sets (or, with `None`, removes) a condition on a NodeClaim's status, guarded by the
/// claim's resourceVersion so a concurrent status write is never lost (the caller retries
/// at its next pass).
pub async fn set_condition(
    client: &Client,
    claim: &NodeClaim,
    type_: &str,
    value: Option<(&str, &str)>,
    now: OffsetDateTime,
) -> Result<(), Error> {
    let name = claim.name_any();
    let mut conds = claim
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    conds.retain(|c| c.type_ != type_);
    if let Some((reason, message)) = value {
        conds.push(Condition {
            type_: type_.to_owned(),
            status: "True".to_owned(),
            reason: reason.to_owned(),
            message: message.to_owned(),
            last_transition_time: Time(jiff(now)),
            observed_generation: None,
        });
    }
    let patch = json!({
        "metadata": {"resourceVersion": claim.resource_version()},
        "status": {"conditions": conds},
    });
    Api::<NodeClaim>::all(client.clone())
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(api_err(format!("setting condition {type_} of NodeClaim {name}")))?;
    Ok(())
}

/// How many times [`mark`] and [`unmark`] re-read a NodeClaim that changed under them.
const WRITE_TRIES: usize = 5;

/// Whether a write failed because the object changed since it was read.
fn conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// Marks a NodeClaim as disrupted by a command: the [`Record`] annotation first (the durable
/// marker), then the `DisruptionReason` condition (best effort) and the node's
/// `karpenter.sh/disrupted:NoSchedule` taint.
///
/// The annotation is written against the claim's current resourceVersion after checking
/// that it is not deleting and carries no other command's record, so two commands never
/// both own a claim (an interruption's record, with `take_over`, replaces a disruption's or
/// a rebalance's: the instance is going away whatever they planned). A claim that is gone,
/// deleting, or owned by another command is an [`Error::TakenOver`].
pub async fn mark(
    provisioner: &Provisioner,
    claim: &NodeClaim,
    node: Option<&str>,
    record: &Record,
    take_over: bool,
) -> Result<(), Error> {
    let client = provisioner.client();
    let name = claim.name_any();
    let value = serde_json::to_string(record).unwrap_or_default();
    let api = Api::<NodeClaim>::all(client.clone());
    let mut tries = 0;
    let marked = loop {
        tries += 1;
        let current = api
            .get_opt(&name)
            .await
            .map_err(api_err(format!("reading NodeClaim {name}")))?;
        let taken = |why: String| Error::TakenOver {
            claim: name.clone(),
            command: record.command.clone(),
            why,
        };
        let Some(current) = current else {
            return Err(taken("it is gone".to_owned()));
        };
        if current.metadata.deletion_timestamp.is_some() {
            return Err(taken("it is deleting".to_owned()));
        }
        if let Some(other) = Record::of(&current)
            && other.command != record.command
            && !take_over
        {
            return Err(taken(format!(
                "command {} ({}) owns it",
                other.command, other.reason
            )));
        }
        let patch = json!({"metadata": {
            "resourceVersion": current.resource_version(),
            "annotations": {DISRUPTION_ANNOTATION: value},
        }});
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(c) => break c,
            Err(e) if conflict(&e) && tries < WRITE_TRIES => {}
            Err(e) => return Err(api_err(format!("annotating NodeClaim {name}"))(e)),
        }
    };
    if let Err(e) = set_condition(
        client,
        &marked,
        conditions::DISRUPTION_REASON,
        Some((&record.reason, &format!("command {}", record.command))),
        provisioner.clock().now(),
    )
    .await
    {
        warn!(nodeclaim = %name, error = %e, "recording the disruption reason failed");
    }
    if let Some(node) = node {
        provisioner
            .node_actions()
            .taint(node, &disrupted_taint())
            .await
            .map_err(|e| Error::Node {
                node: node.to_owned(),
                action: "tainting",
                message: e.to_string(),
            })?;
    }
    Ok(())
}

/// Undoes [`mark`] for `command`: the taint first, then the annotation and the condition. A
/// claim already gone, deleting (its termination drains it), or now owned by another
/// command (an interruption took it over) is left alone.
pub async fn unmark(
    provisioner: &Provisioner,
    claim: &str,
    node: Option<&str>,
    command: &str,
) -> Result<(), Error> {
    let api = Api::<NodeClaim>::all(provisioner.client().clone());
    let mut tries = 0;
    loop {
        tries += 1;
        let current = match api.get_opt(claim).await {
            Ok(Some(c)) => c,
            Ok(None) => return Ok(()),
            Err(e) => return Err(api_err(format!("reading NodeClaim {claim}"))(e)),
        };
        if current.metadata.deletion_timestamp.is_some()
            || Record::of(&current).is_some_and(|r| r.command != command)
        {
            info!(nodeclaim = %claim, command, "not rolling back: the NodeClaim is deleting or owned by another command");
            return Ok(());
        }
        if tries == 1
            && let Some(node) = node
            && let Err(e) = provisioner
                .node_actions()
                .untaint(node, DISRUPTED_TAINT, TaintEffect::NoSchedule)
                .await
        {
            warn!(node, error = %e, "removing the disrupted taint failed");
        }
        let patch = json!({"metadata": {
            "resourceVersion": current.resource_version(),
            "annotations": {DISRUPTION_ANNOTATION: null},
        }});
        let cleared = match api
            .patch(claim, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(c) => c,
            Err(e) if conflict(&e) && tries < WRITE_TRIES => continue,
            Err(e) => {
                return Err(api_err(format!("clearing the disruption of NodeClaim {claim}"))(
                    e,
                ));
            }
        };
        if cleared
            .status
            .as_ref()
            .is_some_and(|s| s.condition(conditions::DISRUPTION_REASON).is_some())
            && let Err(e) = set_condition(
                provisioner.client(),
                &cleared,
                conditions::DISRUPTION_REASON,
                None,
                provisioner.clock().now(),
            )
            .await
        {
            warn!(nodeclaim = %claim, error = %e, "clearing the disruption reason failed");
        }
        return Ok(());
    }
}

/// What a replacement simulation found for the pods of some nodes.
#[derive(Debug, Clone, Default)]
pub struct Replacements {
    /// The NodePool templates the simulation used.
    pub templates: Vec<NodePoolTemplate>,
    /// The new NodeClaims the nodes' pods need, each with the NodeClaims (of the nodes
    /// removed) whose pods it holds, sorted; a claim that holds only pods of other nodes
    /// going away (this removal took the room their in-flight replacements had for them)
    /// names every NodeClaim removed.
    pub claims: Vec<(NewNodeClaim, Vec<String>)>,
    /// The nodes' pods that fit nowhere, with the reason.
    pub unschedulable: Vec<(String, String)>,
    /// How many of the nodes' pods move.
    pub moving: usize,
}

/// Whether a replacement NodeClaim (its [`REPLACEMENT_FOR_ANNOTATION`]) replaces nodes for
/// `command` (a command id, or the name of an interrupted NodeClaim).
pub fn replaces(claim: &NodeClaim, command: &str) -> bool {
    claim
        .annotations()
        .get(REPLACEMENT_FOR_ANNOTATION)
        .is_some_and(|v| v.split(',').any(|c| c == command))
}

/// Simulates scheduling the pods of `claims`' nodes with those nodes gone, over `templates`
/// (from a [`TemplateCache`](super::state::TemplateCache)), every other node and in-flight
/// claim (those going away excluded), pending pods and the pods of other nodes going away
/// included (in-flight replacements hold those; a new replacement may as well hold the
/// rest). The new claims holding at least one pod of a node going away (these nodes' or
/// others') are kept: the scheduler places pods in its own order, so the nodes' pods may
/// take the in-flight room meant for other leaving pods and leave those to a new claim,
/// which these nodes then need. Claims holding only pending pods are dropped: the
/// provisioner launches for those. CPU-bound: async callers use
/// [`simulate_replacements_blocking`].
pub fn simulate_replacements(
    provisioner: &Provisioner,
    templates: Vec<NodePoolTemplate>,
    view: &View,
    claims: &[NodeClaim],
) -> Replacements {
    let snapshot = &view.snapshot;
    let mut except = std::collections::BTreeSet::new();
    let mut pods_of = node_pods(snapshot);
    let leaving = view.nodes_going_away();
    // Pod key → the NodeClaim whose node it leaves.
    let mut source: BTreeMap<String, String> = BTreeMap::new();
    let mut moving = Vec::new();
    for claim in claims {
        except.insert(claim.name_any());
        if let Some(node) = snapshot.node_of(claim).map(ResourceExt::name_any) {
            if let Some(pods) = pods_of.remove(&node) {
                for p in moving_pods(&pods) {
                    source.insert(p.key(), claim.name_any());
                    moving.push(p);
                }
            }
            except.insert(node);
        }
    }
    if moving.is_empty() {
        return Replacements {
            templates,
            ..Replacements::default()
        };
    }
    let nodes = destinations(view, &templates, &except);
    let count = moving.len();
    let mut pods = moving;
    // The pods of other nodes going away are about to be pending: they count first on the
    // replacements already in flight for them.
    let mut others: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    for (node, node_pods) in &pods_of {
        if leaving.contains(node) {
            for p in moving_pods(node_pods) {
                others.insert(p.key());
                pods.push(p);
            }
        }
    }
    let mut all: Vec<String> = claims.iter().map(ResourceExt::name_any).collect();
    all.sort();
    pods.extend(snapshot.provisionable().0);
    let mut scheduler = Scheduler::new(
        templates.clone(),
        nodes,
        snapshot.daemonset_pods(),
        provisioner.settings().scheduler.clone(),
    );
    let solution = scheduler.solve(pods);
    let claims = solution
        .new_claims
        .into_iter()
        .filter_map(|c| {
            let mut from: Vec<String> = c
                .pods
                .iter()
                .filter_map(|p| source.get(&p.key()).cloned())
                .collect();
            from.sort();
            from.dedup();
            if from.is_empty() && c.pods.iter().any(|p| others.contains(&p.key())) {
                from = all.clone();
            }
            (!from.is_empty()).then_some((c, from))
        })
        .collect();
    let unschedulable = solution
        .unschedulable
        .into_iter()
        .filter(|(p, _)| source.contains_key(p))
        .collect();
    Replacements {
        templates,
        claims,
        unschedulable,
        moving: count,
    }
}

/// [`simulate_replacements`] on the blocking pool.
pub async fn simulate_replacements_blocking(
    provisioner: &Arc<Provisioner>,
    templates: Vec<NodePoolTemplate>,
    view: &Arc<View>,
    claims: Vec<NodeClaim>,
) -> Replacements {
    let (p, v) = (provisioner.clone(), view.clone());
    match tokio::task::spawn_blocking(move || simulate_replacements(&p, templates, &v, &claims)).await {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "the replacement simulation failed");
            Replacements::default()
        }
    }
}

/// Creates replacement NodeClaims (concurrently), each annotated with what it replaces (a
/// command id, or the interrupted NodeClaims, comma-separated); not launched yet. Returns
/// each with its candidate instance types, in order.
pub async fn create_replacements(
    provisioner: &Provisioner,
    snapshot: &Snapshot,
    templates: &[NodePoolTemplate],
    claims: &[(NewNodeClaim, String)],
    reason: &str,
) -> Result<Vec<(NodeClaim, Vec<Arc<InstanceTypeOption>>)>, Error> {
    // All at once: a wave of interruptions needs its replacements together.
    let creations = claims.iter().map(|(claim, replaces)| async move {
        let template = templates.iter().find(|t| t.name == claim.nodepool);
        let pool = snapshot
            .nodepools
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(claim.nodepool.as_str()));
        let annotations = BTreeMap::from([(REPLACEMENT_FOR_ANNOTATION.to_owned(), replaces.clone())]);
        let obj = provisioner
            .create_claim(claim, template, pool, reason, annotations)
            .await?;
        Ok::<_, Error>((obj, claim.instance_types.clone()))
    });
    futures::future::try_join_all(creations).await
}

/// Launches created replacements at once (the provisioner's lifecycle would at its next
/// pass); a failed launch deletes the claim, which [`wait_initialized`] reports.
pub async fn launch(provisioner: &Provisioner, created: Vec<(NodeClaim, Vec<Arc<InstanceTypeOption>>)>) {
    let launches = created
        .into_iter()
        .map(|(claim, types)| provisioner.launch_claim(claim, types));
    futures::future::join_all(launches).await;
}

/// The replacements of a command: every NodeClaim that [`replaces`] for it.
pub async fn find_replacements(client: &Client, command: &str) -> Result<Vec<NodeClaim>, Error> {
    Ok(Api::<NodeClaim>::all(client.clone())
        .list(&Default::default())
        .await
        .map_err(api_err("listing nodeclaims"))?
        .items
        .into_iter()
        .filter(|c| replaces(c, command))
        .collect())
}

/// Why waiting for replacements ended without them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WaitError {
    /// A replacement was deleted (its launch failed, or it never registered).
    #[error("replacement NodeClaim {0} is gone")]
    Gone(String),
    /// The deadline passed first.
    #[error("replacements {0:?} not initialized before the deadline")]
    Timeout(Vec<String>),
}

/// Waits until every named replacement is `Initialized`, polling every `poll`, until
/// `deadline` (tokio time).
pub async fn wait_initialized(
    client: &Client,
    names: &[String],
    poll: Duration,
    deadline: tokio::time::Instant,
) -> Result<(), WaitError> {
    let api = Api::<NodeClaim>::all(client.clone());
    loop {
        let mut waiting = Vec::new();
        for name in names {
            match api.get_opt(name).await {
                Ok(Some(c)) if c.metadata.deletion_timestamp.is_some() => {
                    return Err(WaitError::Gone(name.clone()));
                }
                Ok(Some(c)) if Snapshot::claim_is(&c, conditions::INITIALIZED) => {}
                Ok(Some(_)) => waiting.push(name.clone()),
                Ok(None) => return Err(WaitError::Gone(name.clone())),
                // A transient read error: try again at the next poll.
                Err(_) => waiting.push(name.clone()),
            }
        }
        if waiting.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(WaitError::Timeout(waiting));
        }
        tokio::time::sleep(poll.min(deadline.saturating_duration_since(tokio::time::Instant::now()))).await;
    }
}

/// Deletes NodeClaims (their finalizer keeps them until the provisioner has drained and
/// terminated them). A claim already gone is fine.
pub async fn delete_claims(client: &Client, names: &[String]) -> Result<(), Error> {
    let api = Api::<NodeClaim>::all(client.clone());
    for name in names {
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => info!(nodeclaim = %name, "deleted NodeClaim"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(api_err(format!("deleting NodeClaim {name}"))(e)),
        }
    }
    Ok(())
}
