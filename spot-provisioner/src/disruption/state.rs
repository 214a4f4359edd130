//! The cluster as the disruption methods see it, built from the API objects of one pass:
//! [`spot_core::disruption::ClusterState`] (candidates, NodePool policies, pending pods,
//! templates for replacements) and [`Pdbs`].
//!
//! - **Candidates** are the nodes of initialized NodeClaims of existing NodePools. Type, zone
//!   and capacity type come from the node's labels, the price from the catalog's offering
//!   (the node's own zone and capacity type). `Consolidatable` is computed: the NodePool's
//!   `consolidateAfter` has passed since `status.lastPodEventTime` (which the controller
//!   keeps current), or since the claim initialized. `Drifted` is the claim's condition.
//! - **Disrupting** nodes (their NodeClaim is deleting, carries a disruption
//!   [`Record`](super::orchestrate::Record) or is named by a replacement) are not
//!   destinations: they leave the scheduler's nodes and their reschedulable pods join the
//!   pending ones, as in Karpenter; in-flight replacements then count as holding them.
//!   Cordoned nodes keep their pods but get the `node.kubernetes.io/unschedulable` taint
//!   kube-scheduler stands for.
//! - **Nomination**: the provisioner does not record nominations, so while unbound pods
//!   exist, nodes initialized less than [`DisruptionSettings::nomination_window`] ago count
//!   as nominated (Karpenter nominates nodes for pending pods for about as long), and are
//!   not disrupted.
//! - **PodDisruptionBudgets**: `disruptionsAllowed` is computed from the spec and the pods
//!   (healthy matching pods minus those the budget requires, as the disruption controller
//!   does), because the status may lag behind the pods.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as KubeLabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use spot_core::disruption::candidate::{DO_NOT_DISRUPT, is_consolidatable, is_reschedulable};
use spot_core::disruption::{Blocked, Candidate, ClusterState, ConsolidationPolicy, Pdb, Pdbs, PoolPolicy};
use spot_core::instance_type::CapacityType;
use spot_core::labels;
use spot_core::node::{Taint, TaintEffect};
use spot_core::pod::{LabelSelector, LabelSelectorOperator, LabelSelectorRequirement, PodSpec};
use spot_core::scheduling::{InstanceTypeOption, NodePoolTemplate};
use spot_k8s::convert;
use time::OffsetDateTime;

use super::orchestrate::{REPLACEMENT_FOR_ANNOTATION, Record};
use super::{DisruptionSettings, Error};
use crate::api::nodeclaim::conditions;
use crate::api::{NodeClaim, NodePool};
use crate::cluster::Snapshot;
use crate::provisioner::Provisioner;

/// The taint kube-scheduler stands for on cordoned nodes.
pub const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";

/// Everything one disruption pass reads.
#[derive(Debug, Clone)]
pub struct View {
    /// Nodes, NodeClaims, NodePools, node classes, DaemonSets and pods.
    pub snapshot: Snapshot,
    /// PodDisruptionBudgets.
    pub pdbs: Vec<PodDisruptionBudget>,
    /// When the pass started.
    pub now: OffsetDateTime,
    /// NodeClaims this process is disrupting whose marks may not be written yet: they count
    /// as going away (so a pass never picks them again nor spends their budget twice).
    pub busy: BTreeSet<String>,
}

impl View {
    /// Lists everything (nodes and claims before pods, PDBs last).
    pub async fn read(client: &Client, now: OffsetDateTime) -> Result<View, Error> {
        let snapshot = Snapshot::read(client).await?;
        let pdbs = Api::<PodDisruptionBudget>::all(client.clone())
            .list(&ListParams::default())
            .await
            .map_err(|source| Error::Api {
                action: "listing poddisruptionbudgets".to_owned(),
                source,
            })?
            .items;
        Ok(View {
            snapshot,
            pdbs,
            now,
            busy: BTreeSet::new(),
        })
    }

    /// The NodeClaim of a node, by name.
    pub fn claims_by_node(&self) -> BTreeMap<String, &NodeClaim> {
        self.snapshot
            .claims
            .iter()
            .filter_map(|c| self.snapshot.node_of(c).map(|n| (n.name_any(), c)))
            .collect()
    }

    /// A NodePool by name.
    pub fn pool(&self, name: &str) -> Option<&NodePool> {
        self.snapshot
            .nodepools
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(name) && p.metadata.deletion_timestamp.is_none())
    }

    /// Whether a NodeClaim is going away: deleting, or carrying a disruption record.
    pub fn claim_disrupting(claim: &NodeClaim) -> bool {
        claim.metadata.deletion_timestamp.is_some() || Record::of(claim).is_some()
    }

    /// The NodeClaims going away: deleting, carrying a disruption record, named by a live
    /// replacement (an interruption creates the replacement before it marks the interrupted
    /// NodeClaim), or [`View::busy`].
    pub fn going_away(&self) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = self.busy.clone();
        let mut replaced: BTreeSet<&str> = BTreeSet::new();
        for claim in &self.snapshot.claims {
            if View::claim_disrupting(claim) {
                out.insert(claim.name_any());
            }
            if claim.metadata.deletion_timestamp.is_none()
                && let Some(v) = claim.annotations().get(REPLACEMENT_FOR_ANNOTATION)
            {
                replaced.extend(v.split(','));
            }
        }
        for claim in &self.snapshot.claims {
            if replaced.contains(claim.name_any().as_str()) {
                out.insert(claim.name_any());
            }
        }
        out
    }

    /// The nodes of [`View::going_away`] NodeClaims, and the nodes being deleted.
    pub fn nodes_going_away(&self) -> BTreeSet<String> {
        let claims = self.going_away();
        let mut out: BTreeSet<String> = self
            .snapshot
            .nodes
            .iter()
            .filter(|n| n.metadata.deletion_timestamp.is_some())
            .map(ResourceExt::name_any)
            .collect();
        for claim in &self.snapshot.claims {
            if claims.contains(&claim.name_any())
                && let Some(n) = self.snapshot.node_of(claim)
            {
                out.insert(n.name_any());
            }
        }
        out
    }
}

/// A Kubernetes time as [`OffsetDateTime`].
pub fn offset_time(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(t.0.as_nanosecond()).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// When a NodeClaim was created.
pub fn created(claim: &NodeClaim) -> OffsetDateTime {
    claim
        .metadata
        .creation_timestamp
        .as_ref()
        .map(offset_time)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// When a NodeClaim's condition became true, if it is true.
pub fn true_since(claim: &NodeClaim, type_: &str) -> Option<OffsetDateTime> {
    claim
        .status
        .as_ref()?
        .condition(type_)
        .filter(|c| c.status == "True")
        .map(|c| offset_time(&c.last_transition_time))
}

/// The non-terminal pods bound to each node, converted, with whether each is terminating.
/// Pods that do not convert are left out (the provisioner reports them).
pub fn node_pods(snapshot: &Snapshot) -> BTreeMap<String, Vec<(Arc<PodSpec>, bool)>> {
    let mut out: BTreeMap<String, Vec<(Arc<PodSpec>, bool)>> = BTreeMap::new();
    for p in &snapshot.pods {
        let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) else {
            continue;
        };
        if convert::is_terminal(p) {
            continue;
        }
        if let Ok(spec) = convert::pod_spec(p) {
            out.entry(node.to_owned())
                .or_default()
                .push((Arc::new(spec), convert::is_terminating(p)));
        }
    }
    out
}

/// The pods that move when the node goes: reschedulable (not DaemonSet or mirror pods) and
/// not terminating; their `node_name` is cleared for the simulation.
pub fn moving_pods(pods: &[(Arc<PodSpec>, bool)]) -> Vec<Arc<PodSpec>> {
    pods.iter()
        .filter(|(p, terminating)| !terminating && is_reschedulable(p))
        .map(|(p, _)| {
            let mut p = p.clone();
            Arc::make_mut(&mut p).node_name = None;
            p
        })
        .collect()
}

/// Whether any pod waits for a node (unbound and not terminal).
fn unbound_pods(pods: &[Pod]) -> bool {
    pods.iter().any(|p| {
        p.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_none()
            && !convert::is_terminal(p)
            && !convert::is_terminating(p)
    })
}

/// The price of a node's own offering (zone and capacity type), from the catalog.
pub fn offering_price(
    provisioner: &Provisioner,
    instance_type: &str,
    zone: &str,
    capacity_type: CapacityType,
) -> Option<f64> {
    let catalog = provisioner.catalog();
    match capacity_type {
        CapacityType::Spot => catalog.prices.spot(zone, instance_type),
        _ => catalog.prices.on_demand(&catalog.region, instance_type),
    }
}

/// The scheduler's view of the nodes that can take pods: every node and in-flight claim
/// except those going away ([`View::going_away`]) and those named in `except`; cordoned
/// nodes tainted [`UNSCHEDULABLE_TAINT`].
pub fn destinations(
    view: &View,
    templates: &[NodePoolTemplate],
    except: &BTreeSet<String>,
) -> Vec<spot_core::scheduling::ExistingNode> {
    let by_name: BTreeMap<&str, &Arc<InstanceTypeOption>> = templates
        .iter()
        .flat_map(|t| t.instance_types.iter())
        .map(|t| (t.name(), t))
        .collect();
    let snapshot = &view.snapshot;
    let mut gone: BTreeSet<String> = except.clone();
    gone.extend(view.going_away());
    gone.extend(view.nodes_going_away());
    let mut cordoned = BTreeSet::new();
    for n in &snapshot.nodes {
        if n.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false) {
            cordoned.insert(n.name_any());
        }
    }
    let mut nodes = snapshot.existing(&|n| by_name.get(n).map(|t| (*t).clone()));
    nodes.retain(|n| !gone.contains(&n.name));
    for n in &mut nodes {
        if cordoned.contains(&n.name) && !n.taints.iter().any(|t| t.key == UNSCHEDULABLE_TAINT) {
            n.taints.push(Taint {
                key: UNSCHEDULABLE_TAINT.to_owned(),
                value: None,
                effect: TaintEffect::NoSchedule,
            });
        }
    }
    nodes
}

/// The NodePool templates ([`Provisioner::templates`]), cached: building them walks the
/// whole catalog. A NodePool or node class change rebuilds them before the read returns;
/// templates older than `max_age` (prices move) are still returned while a rebuild runs in
/// the background. One rebuild runs at a time, on the blocking pool (it is CPU-bound).
/// Every read applies the unavailable offerings marked since the build and recomputes the
/// NodePool limits from the current usage.
pub struct TemplateCache {
    max_age: std::time::Duration,
    cached: Arc<std::sync::Mutex<Option<Arc<CachedTemplates>>>>,
    building: Arc<tokio::sync::Mutex<()>>,
}

struct CachedTemplates {
    key: Vec<(String, String)>,
    built: tokio::time::Instant,
    templates: Vec<NodePoolTemplate>,
    errors: Vec<(String, String)>,
}

impl std::fmt::Debug for TemplateCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TemplateCache")
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}

/// What the templates depend on besides prices: every NodePool and node class, by name and
/// resourceVersion.
fn template_key(snapshot: &Snapshot) -> Vec<(String, String)> {
    let mut key: Vec<(String, String)> = snapshot
        .nodepools
        .iter()
        .map(|p| {
            let deleting = if p.metadata.deletion_timestamp.is_some() {
                "-"
            } else {
                ""
            };
            (
                format!("pool/{}", p.name_any()),
                format!("{}{deleting}", p.resource_version().unwrap_or_default()),
            )
        })
        .chain(snapshot.nodeclasses.iter().map(|c| {
            (
                format!("class/{}", c.name_any()),
                c.resource_version().unwrap_or_default(),
            )
        }))
        .collect();
    key.sort();
    key
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Builds the templates on the blocking pool and stores them, unless a build for the same
/// key finished while this one waited for its turn.
async fn rebuild(
    cached: &std::sync::Mutex<Option<Arc<CachedTemplates>>>,
    building: &tokio::sync::Mutex<()>,
    provisioner: &Arc<Provisioner>,
    snapshot: &Snapshot,
    key: Vec<(String, String)>,
    fresher_than: Option<tokio::time::Instant>,
) -> Arc<CachedTemplates> {
    let _turn = building.lock().await;
    if let Some(c) = lock(cached).clone()
        && c.key == key
        && fresher_than.is_none_or(|t| c.built > t)
    {
        return c;
    }
    let (p, snap) = (provisioner.clone(), snapshot.clone());
    let (templates, errors) = match tokio::task::spawn_blocking(move || p.templates(&snap)).await {
        Ok(built) => built,
        Err(e) => (
            Vec::new(),
            vec![(String::new(), format!("building the NodePool templates: {e}"))],
        ),
    };
    let fresh = Arc::new(CachedTemplates {
        key,
        built: tokio::time::Instant::now(),
        templates,
        errors,
    });
    *lock(cached) = Some(fresh.clone());
    fresh
}

impl TemplateCache {
    /// A cache whose templates are rebuilt at least every `max_age`.
    pub fn new(max_age: std::time::Duration) -> TemplateCache {
        TemplateCache {
            max_age,
            cached: Arc::default(),
            building: Arc::default(),
        }
    }

    /// The templates for this snapshot, with the NodePools that could not be built and why.
    pub async fn get(
        &self,
        provisioner: &Arc<Provisioner>,
        snapshot: &Snapshot,
    ) -> (Vec<NodePoolTemplate>, Vec<(String, String)>) {
        let key = template_key(snapshot);
        let current = lock(&self.cached).clone().filter(|c| c.key == key);
        let entry = match current {
            Some(c) => {
                if c.built.elapsed() >= self.max_age
                    && let Ok(turn) = self.building.clone().try_lock_owned()
                {
                    // Stale: serve it, refresh in the background.
                    drop(turn);
                    let (cached, building, p, snap) = (
                        self.cached.clone(),
                        self.building.clone(),
                        provisioner.clone(),
                        snapshot.clone(),
                    );
                    let built = c.built;
                    tokio::spawn(async move {
                        rebuild(&cached, &building, &p, &snap, key, Some(built)).await;
                    });
                }
                c
            }
            None => rebuild(&self.cached, &self.building, provisioner, snapshot, key, None).await,
        };
        let mut templates = entry.templates.clone();
        let unavailable = provisioner.unavailable_offerings();
        for t in &mut templates {
            for option in &mut t.instance_types {
                let mut offerings = option.offerings.clone();
                unavailable.apply(option.name(), &mut offerings);
                if offerings != option.offerings {
                    Arc::make_mut(option).offerings = offerings;
                }
            }
            let pool = snapshot
                .nodepools
                .iter()
                .find(|p| p.metadata.name.as_deref() == Some(t.name.as_str()));
            if let Some(limits) = pool.and_then(|p| p.limits().ok()) {
                t.limits = limits.map(|l| {
                    l.saturating_sub(&crate::template::usage(snapshot, &t.name, &provisioner.catalog()))
                });
            }
        }
        (templates, entry.errors.clone())
    }
}

/// The cluster state of one pass, with what was ruled out.
#[derive(Debug, Clone)]
pub struct Built {
    /// The state [`spot_core::disruption::compute_commands`] reads.
    pub state: ClusterState,
    /// The PodDisruptionBudgets.
    pub pdbs: Pdbs,
    /// Candidates that may not be disrupted now, with why.
    pub blocked: Vec<Blocked>,
    /// NodePools whose disruption settings are invalid, with the error.
    pub invalid_pools: Vec<(String, String)>,
}

/// The NodePool's `consolidationPolicy` in spot-core's terms.
fn policy(p: crate::api::ConsolidationPolicy) -> ConsolidationPolicy {
    match p {
        crate::api::ConsolidationPolicy::WhenEmptyOrUnderutilized => {
            ConsolidationPolicy::WhenEmptyOrUnderutilized
        }
        crate::api::ConsolidationPolicy::WhenEmpty => ConsolidationPolicy::WhenEmpty,
        crate::api::ConsolidationPolicy::Balanced => ConsolidationPolicy::Balanced,
    }
}

/// When the last pod event on a claim's node happened: `status.lastPodEventTime`, else the
/// newest creation time of its reschedulable pods (a pod bound after initialization is an
/// event), else none.
fn last_pod_event(claim: &NodeClaim, pods: &[(Arc<PodSpec>, bool)]) -> Option<OffsetDateTime> {
    if let Some(t) = claim.status.as_ref().and_then(|s| s.last_pod_event_time.as_ref()) {
        return Some(offset_time(t));
    }
    pods.iter()
        .filter(|(p, _)| is_reschedulable(p))
        .map(|(p, _)| p.created_unix_ms)
        .max()
        .and_then(|ms| OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok())
}

/// Builds the cluster state of a pass over these templates (from a [`TemplateCache`]).
pub fn build(
    view: &View,
    provisioner: &Provisioner,
    (templates, template_errors): (Vec<NodePoolTemplate>, Vec<(String, String)>),
    settings: &DisruptionSettings,
) -> Built {
    let snapshot = &view.snapshot;
    let now = view.now;
    let mut invalid_pools = template_errors;
    let pods_by_node = node_pods(snapshot);
    let pending_exist = unbound_pods(&snapshot.pods);
    let nodes = destinations(view, &templates, &BTreeSet::new());

    let mut pending = snapshot.provisionable().0;
    let going = view.going_away();
    let mut candidates = Vec::new();
    let mut non_destinations = BTreeSet::new();
    // Per pool: (initialized nodes, disrupting ones).
    let mut counts: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for claim in &snapshot.claims {
        let Some(node) = snapshot.node_of(claim) else {
            continue;
        };
        let node_name = node.name_any();
        let pods = pods_by_node.get(&node_name).map(Vec::as_slice).unwrap_or(&[]);
        let disrupting = going.contains(&claim.name_any()) || node.metadata.deletion_timestamp.is_some();
        if disrupting {
            pending.extend(moving_pods(pods));
        }
        let node_labels = node.labels();
        let Some(pool_name) = node_labels
            .get(labels::NODE_POOL)
            .or_else(|| claim.labels().get(labels::NODE_POOL))
        else {
            continue;
        };
        let Some(pool) = view.pool(pool_name) else {
            continue;
        };
        let initialized = true_since(claim, conditions::INITIALIZED).is_some()
            && node_labels
                .get(crate::provisioner::INITIALIZED_LABEL)
                .is_some_and(|v| v == "true");
        let count = counts.entry(pool_name.clone()).or_default();
        if initialized {
            count.0 += 1;
            if disrupting || !convert::node_ready(node) {
                count.1 += 1;
            }
        }
        let instance_type = node_labels
            .get(labels::INSTANCE_TYPE)
            .cloned()
            .unwrap_or_default();
        let zone = node_labels.get(labels::ZONE).cloned().unwrap_or_default();
        let capacity_type = node_labels
            .get(labels::CAPACITY_TYPE)
            .and_then(|c| c.parse::<CapacityType>().ok())
            .unwrap_or(CapacityType::OnDemand);
        let price = offering_price(provisioner, &instance_type, &zone, capacity_type).unwrap_or(0.0);
        let created_at = created(claim);
        let initialized_at = true_since(claim, conditions::INITIALIZED).unwrap_or(created_at);
        let consolidate_after = pool.spec.disruption.consolidate_after.duration();
        let last_event = last_pod_event(claim, pods);
        let consolidatable = is_consolidatable(last_event, initialized_at, consolidate_after, now);
        if let Some(after) = consolidate_after
            && !consolidatable
            && let Ok(after) = time::Duration::try_from(after)
            && now < last_event.unwrap_or(initialized_at) + after
        {
            non_destinations.insert(node_name.clone());
        }
        let annotated = |meta: &kube::api::ObjectMeta| {
            meta.annotations
                .as_ref()
                .and_then(|a| a.get(DO_NOT_DISRUPT))
                .is_some_and(|v| v == "true")
        };
        let nominated = pending_exist
            && initialized
            && now - initialized_at
                < time::Duration::try_from(settings.nomination_window).unwrap_or(time::Duration::ZERO);
        candidates.push(Candidate {
            node_name,
            nodepool: pool_name.clone(),
            instance_type,
            zone,
            capacity_type,
            price,
            pods: pods
                .iter()
                .filter(|(_, terminating)| !terminating)
                .map(|(p, _)| p.clone())
                .collect(),
            initialized,
            created: created_at,
            expire_after: claim.spec.expire_after.duration(),
            consolidatable,
            do_not_disrupt: annotated(&node.metadata) || annotated(&claim.metadata),
            nominated,
            deleting: disrupting,
            drifted: true_since(claim, conditions::DRIFTED),
        });
    }

    let mut pools = Vec::new();
    for pool in &snapshot.nodepools {
        if pool.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let name = pool.name_any();
        let budgets = match pool.budgets() {
            Ok(b) => b,
            Err(e) => {
                invalid_pools.push((name, e.to_string()));
                continue;
            }
        };
        let (total, disrupting) = counts.get(&name).copied().unwrap_or_default();
        let mut p = PoolPolicy::new(name, total);
        p.consolidation_policy = policy(pool.spec.disruption.consolidation_policy);
        p.budgets = budgets;
        p.termination_grace_period = pool.spec.template.spec.termination_grace_period.is_some();
        p.disrupting = disrupting;
        pools.push(p);
    }
    // Candidates of pools without a valid policy are dropped (their budgets are unknown).
    candidates.retain(|c| pools.iter().any(|p| p.name == c.nodepool));

    let pdbs = pdbs(&view.pdbs, &snapshot.pods);
    let mut state = ClusterState {
        templates,
        nodes,
        candidates,
        pools,
        daemonsets: snapshot.daemonset_pods(),
        pending,
        non_destinations,
    };
    let blocked = state.retain_disruptable(&pdbs, now);
    Built {
        state,
        pdbs,
        blocked,
        invalid_pools,
    }
}

/// A Kubernetes label selector in spot-core's terms; `None` selects nothing (a PDB without
/// a selector), an empty selector everything. Unknown operators select nothing.
pub fn label_selector(selector: Option<&KubeLabelSelector>) -> LabelSelector {
    let Some(s) = selector else {
        return LabelSelector::nothing();
    };
    let mut out = LabelSelector {
        match_labels: s.match_labels.clone().unwrap_or_default(),
        match_expressions: Vec::new(),
    };
    for e in s.match_expressions.iter().flatten() {
        let operator = match e.operator.as_str() {
            "In" => LabelSelectorOperator::In,
            "NotIn" => LabelSelectorOperator::NotIn,
            "Exists" => LabelSelectorOperator::Exists,
            "DoesNotExist" => LabelSelectorOperator::DoesNotExist,
            _ => return LabelSelector::nothing(),
        };
        out.match_expressions.push(LabelSelectorRequirement {
            key: e.key.clone(),
            operator,
            values: e.values.clone().unwrap_or_default(),
        });
    }
    out
}

/// An int-or-percent of `total`, percentages rounded up (as the disruption controller
/// scales `minAvailable` and `maxUnavailable`).
fn scaled(v: &IntOrString, total: i64) -> Option<i64> {
    match v {
        IntOrString::Int(n) => Some(i64::from(*n)),
        IntOrString::String(s) => match s.strip_suffix('%') {
            Some(p) => p.trim().parse::<i64>().ok().map(|p| (p * total + 99) / 100),
            None => s.parse().ok(),
        },
    }
}

/// Whether a pod counts as healthy for a PodDisruptionBudget: Running, Ready, not deleting.
fn healthy(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod.status.as_ref().is_some_and(|s| {
            s.phase.as_deref() == Some("Running")
                && s.conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

/// The budgets with `disruptionsAllowed` computed from their spec over the pods: healthy
/// matching pods minus the healthy pods required (`minAvailable`, or the matching pods minus
/// `maxUnavailable`; neither set means `minAvailable: 1`), never below zero. A budget whose
/// spec does not scale (a malformed percentage) allows nothing.
pub fn pdbs(pdbs: &[PodDisruptionBudget], pods: &[Pod]) -> Pdbs {
    Pdbs::new(pdbs.iter().map(|pdb| {
        let namespace = pdb.namespace().unwrap_or_default();
        let spec = pdb.spec.clone().unwrap_or_default();
        let selector = label_selector(spec.selector.as_ref());
        let matching: Vec<&Pod> = pods
            .iter()
            .filter(|p| p.namespace().as_deref() == Some(namespace.as_str()))
            .filter(|p| !convert::is_terminal(p))
            .filter(|p| selector.matches(p.metadata.labels.as_ref().unwrap_or(&BTreeMap::new())))
            .collect();
        let expected = matching.len() as i64;
        let healthy = matching.iter().filter(|p| healthy(p)).count() as i64;
        let desired = match (&spec.min_available, &spec.max_unavailable) {
            (Some(min), _) => scaled(min, expected),
            (None, Some(max)) => scaled(max, expected).map(|m| (expected - m).max(0)),
            (None, None) => Some(1),
        };
        let allowed = match desired {
            Some(d) => (healthy - d).max(0),
            // A spec that does not scale protects its pods.
            None => 0,
        };
        Pdb {
            namespace,
            name: pdb.name_any(),
            selector,
            disruptions_allowed: i32::try_from(allowed).unwrap_or(i32::MAX),
        }
    }))
}

/// The labels a NodeClaim's instance has: its node's labels over the claim's own.
pub fn instance_labels(claim: &NodeClaim, node: Option<&Node>) -> BTreeMap<String, String> {
    let mut out = claim.labels().clone();
    if let Some(n) = node {
        out.extend(n.labels().iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, app: &str, ready: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "prod", "labels": {"app": app}},
            "spec": {"containers": [], "nodeName": "n1"},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]},
        }))
        .unwrap()
    }

    fn pdb(spec: serde_json::Value) -> PodDisruptionBudget {
        serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "prod"}, "spec": spec}))
            .unwrap()
    }

    #[test]
    fn pdb_allowance_follows_the_disruption_controller() {
        let pods = vec![
            pod("a", "web", true),
            pod("b", "web", true),
            pod("c", "web", false),
            pod("d", "db", true),
        ];
        let allowed = |spec: serde_json::Value| {
            let p = pdbs(&[pdb(spec)], &pods);
            let probe = PodSpec {
                labels: [("app".to_owned(), "web".to_owned())].into(),
                ..PodSpec::new("prod", "x", spot_core::resources::Resources::default())
            };
            p.selecting(&probe).next().unwrap().disruptions_allowed
        };
        let sel = json!({"matchLabels": {"app": "web"}});
        // 3 pods match, 2 healthy.
        assert_eq!(allowed(json!({"selector": sel, "minAvailable": 1})), 1);
        assert_eq!(allowed(json!({"selector": sel, "minAvailable": 2})), 0);
        assert_eq!(
            allowed(json!({"selector": sel, "minAvailable": "50%"})),
            0,
            "50% of 3 rounds up to 2"
        );
        assert_eq!(allowed(json!({"selector": sel, "maxUnavailable": 2})), 1);
        assert_eq!(allowed(json!({"selector": sel, "maxUnavailable": "100%"})), 2);
        assert_eq!(allowed(json!({"selector": sel})), 1, "minAvailable defaults to 1");
        let everything = pdbs(&[pdb(json!({"selector": {}, "maxUnavailable": 0}))], &pods);
        let probe = PodSpec::new("prod", "x", spot_core::resources::Resources::default());
        assert_eq!(
            everything.selecting(&probe).count(),
            1,
            "an empty selector selects every pod"
        );
        let none = pdbs(&[pdb(json!({"maxUnavailable": 0}))], &pods);
        assert_eq!(none.selecting(&probe).count(), 0, "no selector selects nothing");
    }

    #[test]
    fn selectors_convert() {
        let s: KubeLabelSelector = serde_json::from_value(json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}],
        }))
        .unwrap();
        let sel = label_selector(Some(&s));
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert!(sel.matches(&labels(&[("app", "web"), ("tier", "a")])));
        assert!(!sel.matches(&labels(&[("app", "web"), ("tier", "c")])));
        let bad: KubeLabelSelector = serde_json::from_value(json!({
            "matchExpressions": [{"key": "tier", "operator": "Near"}],
        }))
        .unwrap();
        assert!(!label_selector(Some(&bad)).matches(&labels(&[("tier", "a")])));
    }
}
