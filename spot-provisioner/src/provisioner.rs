//! The provisioning controller: pending pods → scheduling simulation → NodeClaims →
//! launches; and the NodeClaim lifecycle (launched, registered, initialized, terminated).
//!
//! Everything lives in the API objects: a restarted provisioner finds its NodeClaims and
//! carries on (claims without a provider id are launched, launched ones wait for their
//! node, deleted ones are drained and terminated).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use spot_core::clock::Clock;
use spot_core::cloud::CloudProvider;
use spot_core::labels;
use spot_core::node::{DrainOptions, NodeActions, Taint, TaintEffect};
use spot_core::offerings::UnavailableOfferings;
use spot_core::scheduling::{
    InstanceTypeOption, NewNodeClaim, NodePoolTemplate, Scheduler, SchedulerOptions,
};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::api::nodeclaim::{ResourceRequirements, conditions};
use crate::api::{
    NodeClaim, NodeClaimSpec, NodeClassReference, NodeSelectorRequirementWithMinValues, RequirementOperator,
};
use crate::batcher::{BatchWindow, Batcher, Trigger, Triggers};
use crate::cluster::Snapshot;
use crate::events::Events;
use crate::launch::{self, LaunchOptions};
use crate::metrics::Metrics;
use crate::template::{self, InstanceCatalog};

/// Errors of the controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the cluster failed.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::Error),
    /// An API call failed.
    #[error("{action}: {source}")]
    Api {
        /// What was being done.
        action: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// A setting is invalid.
    #[error(transparent)]
    Batch(#[from] crate::batcher::Error),
    /// The node of a deleted NodeClaim is not drained yet (PodDisruptionBudgets, pods still
    /// terminating); its instance is kept and the drain retried.
    #[error("node {node} not drained yet, instance kept: {message}")]
    Drain {
        /// The node.
        node: String,
        /// Why the drain did not finish.
        message: String,
    },
}

/// The finalizer that keeps a NodeClaim until its instance is terminated.
pub const TERMINATION_FINALIZER: &str = "karpenter.sh/termination";
/// The taint put on nodes being disrupted.
pub const DISRUPTED_TAINT: &str = "karpenter.sh/disrupted";
/// The label set once a node is initialized.
pub const INITIALIZED_LABEL: &str = "karpenter.sh/initialized";
/// The label set once a node registered.
pub const REGISTERED_LABEL: &str = "karpenter.sh/registered";
/// The NodeClaim label naming the claim on its node.
pub const NODECLAIM_LABEL: &str = "karpenter.sh/nodeclaim";

/// Settings of the controller.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Karpenter's batch window (1 s idle, 10 s max).
    pub batch: BatchWindow,
    /// Scheduler options.
    pub scheduler: SchedulerOptions,
    /// Launch options.
    pub launch: LaunchOptions,
    /// A claim whose node did not register within this time is deleted (Karpenter: 15 min).
    pub registration_timeout: Duration,
    /// How often the NodeClaim lifecycle is reconciled, and pods re-checked.
    pub resync: Duration,
    /// Drain settings when a NodeClaim is deleted.
    pub drain: DrainOptions,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            batch: BatchWindow::default(),
            scheduler: SchedulerOptions::default(),
            launch: LaunchOptions::default(),
            registration_timeout: Duration::from_secs(15 * 60),
            resync: Duration::from_secs(1),
            drain: DrainOptions::default(),
        }
    }
}

/// What one provisioning loop did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoopReport {
    /// Provisionable pods seen (every one is evaluated).
    pub pending: usize,
    /// Pods the simulation evaluated.
    pub evaluated: usize,
    /// Pods placed on existing nodes or in-flight claims.
    pub on_existing: usize,
    /// NodeClaims created.
    pub claims_created: Vec<String>,
    /// Pods that fit nowhere, with the reason.
    pub unschedulable: Vec<(String, String)>,
    /// Price per hour of the created claims (cheapest offering of each).
    pub price_per_hour: f64,
    /// How long the simulation took.
    pub scheduling: Duration,
}

/// The provisioner. Build it with [`Provisioner::builder`].
pub struct Provisioner {
    client: Client,
    cloud: Arc<dyn CloudProvider>,
    catalog: std::sync::RwLock<Arc<InstanceCatalog>>,
    actions: Arc<dyn NodeActions>,
    unavailable: Arc<UnavailableOfferings>,
    metrics: Arc<Metrics>,
    events: Events,
    clock: Arc<dyn Clock>,
    settings: Settings,
    launching: Mutex<HashSet<String>>,
    terminating: Arc<Mutex<HashSet<String>>>,
    seq: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Provisioner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provisioner")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Provisioner`].
pub struct ProvisionerBuilder {
    client: Client,
    cloud: Arc<dyn CloudProvider>,
    catalog: Arc<InstanceCatalog>,
    actions: Option<Arc<dyn NodeActions>>,
    unavailable: Option<Arc<UnavailableOfferings>>,
    metrics: Option<Arc<Metrics>>,
    events: Option<Events>,
    clock: Option<Arc<dyn Clock>>,
    settings: Settings,
}

impl ProvisionerBuilder {
    /// The node actions used to drain deleted NodeClaims (default: kube-rs actions over the
    /// same client).
    pub fn node_actions(mut self, actions: Arc<dyn NodeActions>) -> Self {
        self.actions = Some(actions);
        self
    }
    /// Shares an unavailable-offerings cache (for example with the interruption controller).
    pub fn unavailable_offerings(mut self, cache: Arc<UnavailableOfferings>) -> Self {
        self.unavailable = Some(cache);
        self
    }
    /// Shares a metrics registry.
    pub fn metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }
    /// Where Kubernetes Events go (default: [`crate::events::REPORTER`] over the same client).
    pub fn events(mut self, events: Events) -> Self {
        self.events = Some(events);
        self
    }
    /// The clock (default: [`spot_core::clock::TokioClock`]).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }
    /// The settings.
    pub fn settings(mut self, settings: Settings) -> Self {
        self.settings = settings;
        self
    }
    /// Builds the provisioner.
    pub fn build(self) -> Result<Provisioner, Error> {
        self.settings.batch.validate()?;
        let clock: Arc<dyn Clock> = self
            .clock
            .unwrap_or_else(|| Arc::new(spot_core::clock::TokioClock::new()));
        let actions: Arc<dyn NodeActions> = match self.actions {
            Some(a) => a,
            None => Arc::new(spot_k8s::actions::KubeNodeActions::new(self.client.clone())),
        };
        let events = self
            .events
            .unwrap_or_else(|| Events::new(self.client.clone(), crate::events::REPORTER.into()));
        Ok(Provisioner {
            events,
            client: self.client,
            cloud: self.cloud,
            catalog: std::sync::RwLock::new(self.catalog),
            actions,
            unavailable: self
                .unavailable
                .unwrap_or_else(|| Arc::new(UnavailableOfferings::new(clock.clone()))),
            metrics: self.metrics.unwrap_or_default(),
            clock,
            settings: self.settings,
            launching: Mutex::new(HashSet::new()),
            terminating: Arc::default(),
            seq: std::sync::atomic::AtomicU64::new(0),
        })
    }
}

fn operator_of(op: &str) -> RequirementOperator {
    match op {
        "In" => RequirementOperator::In,
        "NotIn" => RequirementOperator::NotIn,
        "DoesNotExist" => RequirementOperator::DoesNotExist,
        "Gt" => RequirementOperator::Gt,
        "Lt" => RequirementOperator::Lt,
        "Gte" => RequirementOperator::Gte,
        "Lte" => RequirementOperator::Lte,
        _ => RequirementOperator::Exists,
    }
}

fn api_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let action = action.into();
    move |source| Error::Api { action, source }
}

fn condition(type_: &str, status: bool, reason: &str, message: &str, now: time::OffsetDateTime) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        last_transition_time: Time(jiff_from(now)),
        observed_generation: None,
    }
}

fn jiff_from(t: time::OffsetDateTime) -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::from_nanosecond(t.unix_timestamp_nanos()).unwrap_or_default()
}

impl Provisioner {
    /// Starts a builder: the Kubernetes client, the cloud and what it can launch.
    pub fn builder(
        client: Client,
        cloud: Arc<dyn CloudProvider>,
        catalog: Arc<InstanceCatalog>,
    ) -> ProvisionerBuilder {
        ProvisionerBuilder {
            client,
            cloud,
            catalog,
            actions: None,
            unavailable: None,
            metrics: None,
            events: None,
            clock: None,
            settings: Settings::default(),
        }
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The unavailable-offerings cache.
    pub fn unavailable_offerings(&self) -> &Arc<UnavailableOfferings> {
        &self.unavailable
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The Kubernetes client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The node actions (cordon, taint, drain).
    pub fn node_actions(&self) -> &Arc<dyn NodeActions> {
        &self.actions
    }

    /// What can be launched (instance types, zones, prices).
    pub fn catalog(&self) -> Arc<InstanceCatalog> {
        self.catalog
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces what can be launched (a refreshed catalog: new prices, offerings, types);
    /// the next loop uses it.
    pub fn set_catalog(&self, catalog: Arc<InstanceCatalog>) {
        *self
            .catalog
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = catalog;
    }

    /// Where Kubernetes Events go.
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Creates a NodeClaim for a claim the scheduling simulation decided (replacements of
    /// disrupted or interrupted nodes), counted under `reason`, with extra `annotations`.
    /// `template` and `pool` are the claim's NodePool as the simulation saw it. The claim is
    /// not launched yet: [`Provisioner::launch_claim`] launches it (or the lifecycle does at
    /// its next pass).
    pub async fn create_claim(
        &self,
        claim: &NewNodeClaim,
        template: Option<&NodePoolTemplate>,
        pool: Option<&crate::api::NodePool>,
        reason: &str,
        annotations: BTreeMap<String, String>,
    ) -> Result<NodeClaim, Error> {
        let mut obj = self.claim_object(claim, template, pool);
        if !annotations.is_empty() {
            obj.metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .extend(annotations);
        }
        let name = obj.name_any();
        let created = Api::<NodeClaim>::all(self.client.clone())
            .create(&PostParams::default(), &obj)
            .await
            .map_err(api_err(format!("creating NodeClaim {name}")))?;
        self.metrics.created(&claim.nodepool, reason);
        info!(
            nodeclaim = %name,
            nodepool = %claim.nodepool,
            reason,
            pods = claim.pods.len(),
            cheapest = claim.cheapest().map(|(t, _)| t.name().to_owned()).unwrap_or_default(),
            candidates = claim.instance_types.len(),
            "created NodeClaim"
        );
        Ok(created)
    }

    /// Runs until `shutdown` resolves: a watcher turns provisionable pods into triggers, the
    /// batcher closes windows, each window runs [`Provisioner::provision_once`], and the
    /// NodeClaim lifecycle is reconciled every `resync`.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) -> Result<(), Error> {
        let (mut batcher, triggers) = Batcher::new(self.settings.batch)?;
        let watcher = tokio::spawn(watch_pods(self.client.clone(), triggers.clone()));
        let ticker = tokio::spawn({
            let me = self.clone();
            let triggers = triggers.clone();
            async move {
                let mut last_pending = 0usize;
                loop {
                    tokio::time::sleep(me.settings.resync).await;
                    if let Err(e) = me.reconcile_claims().await {
                        warn!(error = %e, "NodeClaim lifecycle failed");
                    }
                    // Karpenter re-queues pending pods every 10 s; a cheap count is enough here.
                    let pending = me.pending_count().await.unwrap_or(0);
                    if pending > 0 && pending != last_pending {
                        triggers.trigger(Trigger::Other("resync"));
                    }
                    last_pending = pending;
                }
            }
        });
        let periodic = tokio::spawn({
            let triggers = triggers.clone();
            async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    triggers.trigger(Trigger::Other("periodic"));
                }
            }
        });
        triggers.trigger(Trigger::Other("start"));
        let main = async {
            while let Some(batch) = batcher.next().await {
                match self.provision_once().await {
                    Ok(r) if !r.claims_created.is_empty() || !r.unschedulable.is_empty() => info!(
                        pods = batch.pods,
                        pending = r.pending,
                        evaluated = r.evaluated,
                        claims = r.claims_created.len(),
                        unschedulable = r.unschedulable.len(),
                        price_per_hour = r.price_per_hour,
                        scheduling_ms = r.scheduling.as_millis() as u64,
                        "provisioning loop"
                    ),
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "provisioning loop failed"),
                }
            }
        };
        tokio::select! {
            () = main => {}
            () = shutdown => {}
        }
        watcher.abort();
        ticker.abort();
        periodic.abort();
        Ok(())
    }

    async fn pending_count(&self) -> Result<usize, kube::Error> {
        let pods = Api::<k8s_openapi::api::core::v1::Pod>::all(self.client.clone())
            .list(&kube::api::ListParams::default().fields("spec.nodeName="))
            .await?;
        Ok(pods
            .items
            .iter()
            .filter(|p| spot_k8s::convert::is_provisionable(p))
            .count())
    }

    /// The NodePool templates of a snapshot (unavailable offerings applied, limits reduced by
    /// current usage).
    pub fn templates(&self, snapshot: &Snapshot) -> (Vec<NodePoolTemplate>, Vec<(String, String)>) {
        template::templates(snapshot, &self.catalog(), &self.unavailable)
    }

    /// One provisioning loop over every provisionable pod.
    pub async fn provision_once(&self) -> Result<LoopReport, Error> {
        let snapshot = Snapshot::read(&self.client).await?;
        let (pending, bad) = snapshot.provisionable();
        let mut report = LoopReport {
            pending: pending.len() + bad.len(),
            unschedulable: bad,
            ..LoopReport::default()
        };
        if pending.is_empty() {
            // Pods that do not convert are still reported.
            self.events
                .provisioned(&snapshot, &Default::default(), &[], &report.unschedulable);
            return Ok(report);
        }
        let (templates, template_errors) = self.templates(&snapshot);
        for (pool, e) in template_errors {
            warn!(nodepool = %pool, error = %e, "NodePool skipped");
        }
        let by_name: BTreeMap<String, Arc<InstanceTypeOption>> = templates
            .iter()
            .flat_map(|t| t.instance_types.iter())
            .map(|t| (t.name().to_owned(), t.clone()))
            .collect();
        let existing = snapshot.existing(&|n| by_name.get(n).cloned());
        let started = Instant::now();
        let mut scheduler = Scheduler::new(
            templates.clone(),
            existing,
            snapshot.daemonset_pods(),
            self.settings.scheduler.clone(),
        );
        let solution = scheduler.solve(pending);
        report.scheduling = started.elapsed();
        self.metrics
            .scheduling_seconds
            .observe(report.scheduling.as_secs_f64());
        self.metrics.pods_evaluated.set(solution.pods_evaluated as i64);
        self.metrics
            .pods_unschedulable
            .set(solution.unschedulable.len() as i64);
        report.evaluated = solution.pods_evaluated;
        report.on_existing = solution.existing.len();
        report
            .unschedulable
            .extend(solution.unschedulable.iter().cloned());
        for (pod, reason) in &solution.unschedulable {
            warn!(pod = %pod, reason = %reason, "pod fits no NodePool");
        }
        let mut created = Vec::new();
        for claim in &solution.new_claims {
            let template = templates.iter().find(|t| t.name == claim.nodepool);
            let pool = snapshot.nodepools.iter().find(|p| p.name_any() == claim.nodepool);
            let obj = self.claim_object(claim, template, pool);
            let name = obj.name_any();
            Api::<NodeClaim>::all(self.client.clone())
                .create(&PostParams::default(), &obj)
                .await
                .map_err(api_err(format!("creating NodeClaim {name}")))?;
            self.metrics.created(&claim.nodepool, "provisioning");
            report.price_per_hour += claim.price();
            info!(
                nodeclaim = %name,
                nodepool = %claim.nodepool,
                pods = claim.pods.len(),
                cheapest = claim.cheapest().map(|(t, _)| t.name().to_owned()).unwrap_or_default(),
                candidates = claim.instance_types.len(),
                "created NodeClaim"
            );
            created.push((obj, claim.instance_types.clone()));
        }
        report.claims_created = created.iter().map(|(o, _)| o.name_any()).collect();
        self.events.provisioned(
            &snapshot,
            &solution,
            &report.claims_created,
            &report.unschedulable,
        );
        // Launch right away rather than waiting for the lifecycle tick.
        let launches = created
            .into_iter()
            .map(|(obj, types)| self.launch_claim(obj, types));
        futures::future::join_all(launches).await;
        Ok(report)
    }

    fn claim_name(&self, nodepool: &str) -> String {
        let n = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let t = self.clock.now().unix_timestamp_nanos() as u64;
        let mut x = t ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut s = String::new();
        for _ in 0..5 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            s.push(b"bcdfghjklmnpqrstvwxz2456789"[((x >> 33) % 27) as usize] as char);
        }
        format!("{nodepool}-{s}")
    }

    fn claim_object(
        &self,
        claim: &NewNodeClaim,
        template: Option<&NodePoolTemplate>,
        pool: Option<&crate::api::NodePool>,
    ) -> NodeClaim {
        let name = self.claim_name(&claim.nodepool);
        let mut reqs: Vec<NodeSelectorRequirementWithMinValues> = claim
            .requirements
            .iter()
            .filter(|r| r.key() != labels::INSTANCE_TYPE && r.key() != labels::HOSTNAME)
            .flat_map(|r| {
                let min = r.min_values();
                r.to_node_selector()
                    .into_iter()
                    .map(move |ns| NodeSelectorRequirementWithMinValues {
                        key: ns.key,
                        operator: operator_of(&ns.operator),
                        values: ns.values,
                        min_values: min.map(|m| m as i32),
                    })
            })
            .collect();
        reqs.push(NodeSelectorRequirementWithMinValues {
            key: labels::INSTANCE_TYPE.to_owned(),
            operator: RequirementOperator::In,
            values: claim.instance_types.iter().map(|t| t.name().to_owned()).collect(),
            min_values: claim
                .requirements
                .get(labels::INSTANCE_TYPE)
                .and_then(|r| r.min_values())
                .map(|m| m as i32),
        });
        let mut meta_labels: BTreeMap<String, String> =
            template.map(|t| t.labels.clone()).unwrap_or_default();
        meta_labels.insert(labels::NODE_POOL.to_owned(), claim.nodepool.clone());
        // The template hash: a claim whose pool template changed since has drifted.
        let mut annotations = pool.map(|p| p.hash_annotations()).unwrap_or_default();
        if claim.min_values_relaxed {
            annotations.insert(
                "karpenter.sh/nodeclaim-min-values-relaxed".to_owned(),
                "true".to_owned(),
            );
        }
        let (node_class_ref, expire_after, tgp) = match pool {
            Some(p) => (
                p.spec.template.spec.node_class_ref.clone(),
                p.spec.template.spec.expire_after,
                p.spec.template.spec.termination_grace_period,
            ),
            None => (
                NodeClassReference::spot("default"),
                crate::api::nodeclaim::DEFAULT_EXPIRE_AFTER,
                None,
            ),
        };
        let kube_taint = |t: &Taint| k8s_openapi::api::core::v1::Taint {
            key: t.key.clone(),
            value: t.value.clone(),
            effect: t.effect.as_str().to_owned(),
            time_added: None,
        };
        NodeClaim {
            metadata: ObjectMeta {
                name: Some(name),
                labels: Some(meta_labels),
                annotations: (!annotations.is_empty()).then_some(annotations),
                finalizers: Some(vec![TERMINATION_FINALIZER.to_owned()]),
                ..ObjectMeta::default()
            },
            spec: NodeClaimSpec {
                taints: template
                    .map(|t| t.taints.iter().map(kube_taint).collect())
                    .unwrap_or_default(),
                startup_taints: template
                    .map(|t| t.startup_taints.iter().map(kube_taint).collect())
                    .unwrap_or_default(),
                requirements: reqs,
                resources: ResourceRequirements {
                    requests: claim
                        .requests
                        .to_map()
                        .into_iter()
                        .map(|(k, v)| (k, k8s_openapi::apimachinery::pkg::api::resource::Quantity(v)))
                        .collect(),
                },
                node_class_ref,
                termination_grace_period: tgp,
                expire_after,
            },
            status: None,
        }
    }

    /// Launches a NodeClaim that has no instance yet; on failure the claim is deleted so its
    /// pods go back to pending and the next loop skips the offerings marked unavailable.
    pub async fn launch_claim(&self, claim: NodeClaim, types: Vec<Arc<InstanceTypeOption>>) {
        let name = claim.name_any();
        if !self
            .launching
            .lock()
            .map(|mut s| s.insert(name.clone()))
            .unwrap_or(false)
        {
            return;
        }
        let api = Api::<NodeClaim>::all(self.client.clone());
        // The snapshot this claim came from may predate a launch that just finished: read it
        // again, and never launch a claim twice.
        let claim = match api.get_opt(&name).await {
            Ok(Some(fresh))
                if fresh.metadata.deletion_timestamp.is_none()
                    && !Snapshot::claim_is(&fresh, conditions::LAUNCHED) =>
            {
                fresh
            }
            Ok(_) => {
                self.done_launching(&name);
                return;
            }
            Err(e) => {
                warn!(nodeclaim = %name, error = %e, "reading NodeClaim before launch failed");
                self.done_launching(&name);
                return;
            }
        };
        let pool = claim.labels().get(labels::NODE_POOL).cloned().unwrap_or_default();
        let requirements = match claim.requirements() {
            Ok(r) => r,
            Err(e) => {
                warn!(nodeclaim = %name, error = %e, "NodeClaim requirements invalid");
                self.done_launching(&name);
                return;
            }
        };
        let mut tags = BTreeMap::new();
        tags.insert(labels::NODE_POOL.to_owned(), pool.clone());
        tags.insert(NODECLAIM_LABEL.to_owned(), name.clone());
        let (result, report) = launch::launch(
            self.cloud.as_ref(),
            &name,
            &requirements,
            &types,
            &self.unavailable,
            &tags,
            &self.settings.launch,
        )
        .await;
        for (t, z, ct) in &report.marked_unavailable {
            info!(nodeclaim = %name, instance_type = %t, zone = %z, capacity_type = %ct.as_str(), "offering marked unavailable");
        }
        match result {
            Ok(instance) => {
                let t = types.iter().find(|t| t.name() == instance.instance_type);
                let quantities =
                    |r: &spot_core::resources::Resources| -> BTreeMap<String, String> { r.to_map() };
                let now = self.clock.now();
                let patch = json!({
                    "metadata": {"labels": {
                        labels::INSTANCE_TYPE: instance.instance_type,
                        labels::ZONE: instance.zone,
                        labels::CAPACITY_TYPE: instance.capacity_type.as_str(),
                    }},
                });
                let status = json!({"status": {
                    "providerID": instance.provider_id(),
                    "capacity": t.map(|t| quantities(&t.capacity)).unwrap_or_default(),
                    "allocatable": t.map(|t| quantities(&t.allocatable)).unwrap_or_default(),
                    "conditions": [condition(conditions::LAUNCHED, true, "Launched", "", now)],
                }});
                let pp = PatchParams::default();
                if let Err(e) = api.patch(&name, &pp, &Patch::Merge(&patch)).await {
                    warn!(nodeclaim = %name, error = %e, "labelling launched NodeClaim failed");
                }
                if let Err(e) = api.patch_status(&name, &pp, &Patch::Merge(&status)).await {
                    warn!(nodeclaim = %name, error = %e, "recording launch failed");
                }
                self.metrics.launched(&pool, instance.capacity_type.as_str());
                self.events.launched(&claim, &instance);
                info!(nodeclaim = %name, instance = %instance.id, instance_type = %instance.instance_type, zone = %instance.zone, capacity_type = %instance.capacity_type.as_str(), requests = report.requests, "launched");
            }
            Err(e) => {
                let class = match &e {
                    launch::Error::InsufficientCapacity { .. } => "insufficient_capacity",
                    launch::Error::SpotLimit { .. } => "spot_limit",
                    launch::Error::NoOffering { .. } => "no_offering",
                    launch::Error::MinValues { .. } => "min_values",
                    launch::Error::Provider { .. } => "provider",
                };
                self.metrics.failed(&pool, class);
                self.events.launch_failed(
                    &claim,
                    class == "insufficient_capacity" || class == "no_offering",
                    &e,
                );
                warn!(nodeclaim = %name, error = %e, "Provisioning failed");
                // Nothing was launched: drop the finalizer with the claim.
                let _ = api
                    .patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                    )
                    .await;
                let _ = api.delete(&name, &DeleteParams::default()).await;
            }
        }
        self.done_launching(&name);
    }

    fn done_launching(&self, name: &str) {
        if let Ok(mut s) = self.launching.lock() {
            s.remove(name);
        }
    }

    /// One pass of the NodeClaim lifecycle over every claim.
    pub async fn reconcile_claims(&self) -> Result<(), Error> {
        let snapshot = Snapshot::read(&self.client).await?;
        let claims_api = Api::<NodeClaim>::all(self.client.clone());
        let nodes_api = Api::<Node>::all(self.client.clone());
        let pp = PatchParams::default();
        let now = self.clock.now();
        let mut to_launch = Vec::new();
        for claim in &snapshot.claims {
            let name = claim.name_any();
            if claim.metadata.deletion_timestamp.is_some() {
                let node = snapshot.node_of(claim);
                let overrides = drain_override(claim, node, now);
                self.spawn_termination(claim.clone(), node.map(|n| n.name_any()), overrides);
                continue;
            }
            let launched = Snapshot::claim_is(claim, conditions::LAUNCHED);
            if !launched {
                to_launch.push(claim.clone());
                continue;
            }
            let Some(node) = snapshot.node_of(claim) else {
                // Registration timeout.
                let since = claim
                    .status
                    .as_ref()
                    .and_then(|s| s.condition(conditions::LAUNCHED))
                    .map(|c| c.last_transition_time.0.as_second());
                if let Some(since) = since
                    && now.unix_timestamp() - since > self.settings.registration_timeout.as_secs() as i64
                {
                    warn!(nodeclaim = %name, "node did not register in time: deleting the NodeClaim");
                    let _ = claims_api.delete(&name, &DeleteParams::default()).await;
                }
                continue;
            };
            let node_name = node.name_any();
            let registered = Snapshot::claim_is(claim, conditions::REGISTERED);
            if !registered {
                // Sync labels and taints onto the node, as Karpenter does at registration.
                let mut node_labels: BTreeMap<String, String> = claim.labels().clone();
                node_labels.insert(NODECLAIM_LABEL.to_owned(), name.clone());
                node_labels.insert(REGISTERED_LABEL.to_owned(), "true".to_owned());
                let (taints, _startup) = claim.taints().unwrap_or_default();
                let mut node_taints: Vec<serde_json::Value> = node
                    .spec
                    .as_ref()
                    .and_then(|s| s.taints.clone())
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|t| t.key != "karpenter.sh/unregistered")
                    .map(|t| serde_json::to_value(t).unwrap_or_default())
                    .collect();
                for t in &taints {
                    if !node_taints
                        .iter()
                        .any(|x| x["key"] == t.key.as_str() && x["effect"] == t.effect.as_str())
                    {
                        node_taints
                            .push(json!({"key": t.key, "value": t.value, "effect": t.effect.as_str()}));
                    }
                }
                let patch = json!({"metadata": {"labels": node_labels}, "spec": {"taints": node_taints}});
                nodes_api
                    .patch(&node_name, &pp, &Patch::Merge(&patch))
                    .await
                    .map_err(api_err(format!("registering node {node_name}")))?;
                let mut conds = claim
                    .status
                    .as_ref()
                    .map(|s| s.conditions.clone())
                    .unwrap_or_default();
                conds.retain(|c| c.type_ != conditions::REGISTERED);
                conds.push(condition(conditions::REGISTERED, true, "Registered", "", now));
                claims_api
                    .patch_status(
                        &name,
                        &pp,
                        &Patch::Merge(json!({"status": {"nodeName": node_name, "conditions": conds}})),
                    )
                    .await
                    .map_err(api_err(format!("recording registration of {name}")))?;
                self.events.registered(claim, &node_name);
                continue;
            }
            if !Snapshot::claim_is(claim, conditions::INITIALIZED) {
                let (_, startup) = claim.taints().unwrap_or_default();
                let ready = spot_k8s::convert::node_ready(node);
                let node_taints = spot_k8s::convert::node_taints(node).unwrap_or_default();
                let startup_left = startup.iter().any(|s| node_taints.iter().any(|t| t.same_slot(s)));
                if ready && !startup_left {
                    nodes_api
                        .patch(
                            &node_name,
                            &pp,
                            &Patch::Merge(json!({"metadata": {"labels": {INITIALIZED_LABEL: "true"}}})),
                        )
                        .await
                        .map_err(api_err(format!("initializing node {node_name}")))?;
                    let mut conds = claim
                        .status
                        .as_ref()
                        .map(|s| s.conditions.clone())
                        .unwrap_or_default();
                    conds.retain(|c| c.type_ != conditions::INITIALIZED && c.type_ != conditions::READY);
                    conds.push(condition(conditions::INITIALIZED, true, "Initialized", "", now));
                    conds.push(condition(conditions::READY, true, "Ready", "", now));
                    claims_api
                        .patch_status(
                            &name,
                            &pp,
                            &Patch::Merge(json!({"status": {"conditions": conds}})),
                        )
                        .await
                        .map_err(api_err(format!("recording initialization of {name}")))?;
                    self.events.initialized(claim, &node_name);
                }
            }
        }
        if !to_launch.is_empty() {
            let (templates, _) = self.templates(&snapshot);
            let by_name: BTreeMap<&str, &Arc<InstanceTypeOption>> = templates
                .iter()
                .flat_map(|t| t.instance_types.iter())
                .map(|t| (t.name(), t))
                .collect();
            let launches = to_launch.into_iter().map(|claim| {
                let types: Vec<Arc<InstanceTypeOption>> = claim
                    .requirements()
                    .ok()
                    .and_then(|r| r.get(labels::INSTANCE_TYPE).cloned())
                    .map(|r| {
                        r.values()
                            .filter_map(|n| by_name.get(n).map(|t| (*t).clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                self.launch_claim(claim, types)
            });
            futures::future::join_all(launches).await;
        }
        Ok(())
    }

    fn spawn_termination(&self, claim: NodeClaim, node: Option<String>, overrides: Option<&'static str>) {
        let name = claim.name_any();
        if !self
            .terminating
            .lock()
            .map(|mut s| s.insert(name.clone()))
            .unwrap_or(false)
        {
            return;
        }
        let client = self.client.clone();
        let cloud = self.cloud.clone();
        let actions = self.actions.clone();
        let drain = self.settings.drain.clone();
        let terminating = self.terminating.clone();
        let events = self.events.clone();
        tokio::spawn(async move {
            events.terminating(&claim, node.as_deref());
            let r = terminate(
                &client,
                cloud.as_ref(),
                actions.as_ref(),
                &claim,
                node.as_deref(),
                &drain,
                overrides,
            )
            .await;
            match &r {
                Ok(()) => events.terminated(&claim),
                Err(e) => warn!(nodeclaim = %name, error = %e, "terminating NodeClaim failed; will retry"),
            }
            if let Ok(mut s) = terminating.lock() {
                s.remove(&name);
            }
        });
    }
}

/// Why a deleted NodeClaim's instance may be terminated although its drain did not finish
/// (pods blocked by a PodDisruptionBudget, or still terminating), if it may: the instance is
/// being reclaimed by EC2 anyway (an interruption), its `terminationGracePeriod` is over (the
/// disruption controller force-deletes the pods by then, as Karpenter), or the node is not
/// Ready (its pods cannot finish terminating). Otherwise the drain is retried on the next
/// pass and the instance kept, as Karpenter keeps draining: PodDisruptionBudgets hold.
fn drain_override(claim: &NodeClaim, node: Option<&Node>, now: time::OffsetDateTime) -> Option<&'static str> {
    if crate::disruption::orchestrate::Record::of(claim)
        .is_some_and(|r| r.reason == crate::interruption::INTERRUPTED)
    {
        return Some("the instance is being reclaimed (interrupted)");
    }
    if let (Some(deleted), Some(tgp)) = (
        claim.metadata.deletion_timestamp.as_ref(),
        claim.spec.termination_grace_period,
    ) && let Ok(tgp) = time::Duration::try_from(tgp.get())
        && crate::disruption::state::offset_time(deleted) + tgp <= now
    {
        return Some("its terminationGracePeriod is over");
    }
    if node.is_some_and(|n| !spot_k8s::convert::node_ready(n)) {
        return Some("the node is not Ready");
    }
    None
}

/// Drains the node of a deleted NodeClaim (taint `karpenter.sh/disrupted:NoSchedule`, cordon,
/// evict), terminates its instance, deletes the Node and removes the finalizer. A drain that
/// does not finish stops here (the finalizer stays and the next pass retries) unless
/// `overrides` says why the instance may go anyway (see [`drain_override`]).
async fn terminate(
    client: &Client,
    cloud: &dyn CloudProvider,
    actions: &dyn NodeActions,
    claim: &NodeClaim,
    node: Option<&str>,
    drain: &DrainOptions,
    overrides: Option<&'static str>,
) -> Result<(), Error> {
    let name = claim.name_any();
    if let Some(node) = node {
        let taint = Taint::new(DISRUPTED_TAINT, "", TaintEffect::NoSchedule);
        let taint = Taint { value: None, ..taint };
        if let Err(e) = actions.taint(node, &taint).await {
            warn!(node, error = %e, "tainting failed");
        }
        if let Err(e) = actions.cordon(node).await {
            warn!(node, error = %e, "cordoning failed");
        }
        match actions.drain(node, drain).await {
            Ok(report) => info!(node, evicted = report.evicted.len(), "drained"),
            Err(e) => match overrides {
                Some(why) => warn!(node, error = %e, "drain incomplete; terminating anyway: {why}"),
                None => {
                    return Err(Error::Drain {
                        node: node.to_owned(),
                        message: e.to_string(),
                    });
                }
            },
        }
    }
    if let Some(pid) = claim.status.as_ref().and_then(|s| s.provider_id.as_deref())
        && let Some(id) = pid.rsplit('/').next()
        && let Err(e) = cloud.terminate(&[id.to_owned()]).await
    {
        return Err(Error::Api {
            action: format!("terminating instance {id}"),
            source: kube::Error::Service(e.to_string().into()),
        });
    }
    if let Some(node) = node {
        let _ = Api::<Node>::all(client.clone())
            .delete(node, &DeleteParams::default())
            .await;
    }
    remove_finalizer(client, &name).await
}

/// Removes [`TERMINATION_FINALIZER`] from a NodeClaim, leaving other controllers' finalizers
/// alone. The patch carries the resourceVersion it was computed from, so a concurrent change
/// makes it fail (and the termination retries) instead of dropping a finalizer added meanwhile.
/// A NodeClaim already gone counts as done.
async fn remove_finalizer(client: &Client, name: &str) -> Result<(), Error> {
    let api = Api::<NodeClaim>::all(client.clone());
    let Some(claim) = api
        .get_opt(name)
        .await
        .map_err(api_err(format!("reading {name} to remove its finalizer")))?
    else {
        return Ok(());
    };
    let finalizers = claim.metadata.finalizers.unwrap_or_default();
    if !finalizers.iter().any(|f| f == TERMINATION_FINALIZER) {
        return Ok(());
    }
    let rest: Vec<&String> = finalizers
        .iter()
        .filter(|f| *f != TERMINATION_FINALIZER)
        .collect();
    let patch = json!({"metadata": {
        "finalizers": rest,
        "resourceVersion": claim.metadata.resource_version,
    }});
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(api_err(format!("removing the finalizer of {name}"))(e)),
    }
}

/// Turns pod changes into triggers: every pod that becomes provisionable wakes the batcher.
async fn watch_pods(client: Client, triggers: Triggers) {
    use futures::TryStreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let api = Api::<k8s_openapi::api::core::v1::Pod>::all(client);
    let stream = watcher(api, watcher::Config::default()).applied_objects();
    futures::pin_mut!(stream);
    loop {
        match stream.try_next().await {
            Ok(Some(pod)) => {
                if spot_k8s::convert::is_provisionable(&pod) {
                    triggers.trigger(Trigger::Pod(pod.uid().unwrap_or_default()));
                }
            }
            Ok(None) => return,
            Err(e) => {
                warn!(error = %e, "pod watch failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
