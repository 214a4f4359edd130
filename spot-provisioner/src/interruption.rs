//! The interruption controller: interruption events (SQS in production, IMDS or a
//! [`MemorySource`](spot_core::source::MemorySource) in tests) turned into replacements and
//! drains, next to the [`Provisioner`]:
//!
//! ```no_run
//! # async fn demo(provisioner: std::sync::Arc<spot_provisioner::Provisioner>) {
//! use std::sync::Arc;
//! use spot_core::source::MemorySource;
//! use spot_provisioner::interruption::Interruption;
//! Interruption::new(provisioner, Arc::new(MemorySource::new()))
//!     .run(std::future::pending())
//!     .await
//!     .unwrap();
//! # }
//! ```
//!
//! **Terminal events** (spot interruption, active scheduled change, stopping/terminating
//! state change, capacity-reservation interruption) of a NodeClaim's instance:
//!
//! 1. the (type, zone, spot) offering of a spot node is marked unavailable in the cache the
//!    provisioner shares ([`Provisioner::unavailable_offerings`]);
//! 2. the replacement NodeClaims are created first: the node's pods are scheduled in a
//!    simulation without the node, over the other nodes and the NodePool templates
//!    ([`orchestrate::simulate_replacements`]); the time from receiving the message to this
//!    point is [`Metrics::interruption_replacement_seconds`](crate::metrics::Metrics);
//! 3. the NodeClaim gets its disruption record, the node the `karpenter.sh/disrupted`
//!    taint and a cordon; the replacements are launched;
//! 4. while the notice allows ([`InterruptionSettings::replacement_wait`], and never later
//!    than the deadline minus [`InterruptionSettings::drain_reserve`]) it waits for the
//!    replacements to be initialized, so the evicted pods find a node;
//! 5. the NodeClaim is deleted: the provisioner's termination path drains the node,
//!    terminates the instance and deletes the Node.
//!
//! One instance is handled once however many messages name it: concurrent messages share
//! the handling in progress, and later ones find the NodeClaim deleting (its
//! deletionTimestamp is the durable marker). A delivery is acknowledged only after every
//! event it carries was handled; failed ones are retried, then left unacknowledged for the
//! queue to deliver again.
//!
//! **Rebalance recommendations** follow the NodePool's `spec.disruption.rebalance`:
//! `Ignore`; `Event` (a Kubernetes Event on the NodeClaim, the default); or `Replace`: the
//! NodeClaim is queued (annotation [`REBALANCE_ANNOTATION`]), and at most `maxConcurrent`
//! of the pool's nodes at a time get a replacement and are drained once it is initialized.
//!
//! Unknown instances (no NodeClaim) and Auto Scaling lifecycle events are acknowledged and
//! ignored.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as KubeEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use spot_core::event::{EventKind, InterruptionEvent, ScheduledState};
use spot_core::instance_type::CapacityType;
use spot_core::labels;
use spot_core::scheduling::NewNodeClaim;
use spot_core::source::{Delivery, EventSource};
use time::OffsetDateTime;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::api::{NodeClaim, RebalancePolicy};
use crate::cluster::Snapshot;
use crate::disruption::orchestrate::{self, Record};
use crate::disruption::state::{TemplateCache, View};
use crate::provisioner::Provisioner;

/// The annotation on a NodeClaim whose instance got a rebalance recommendation under a
/// `Replace` policy: when (RFC 3339). The claim waits there for a replacement slot.
pub const REBALANCE_ANNOTATION: &str = "spot.dev/rebalance-recommended";
/// The disruption reason of interrupted nodes.
pub const INTERRUPTED: &str = "Interrupted";
/// The disruption reason of nodes replaced after a rebalance recommendation.
pub const REBALANCE: &str = "Rebalance";
/// The controller name on the Events it publishes.
pub const REPORTING_CONTROLLER: &str = "spot.dev/provisioner";

/// Errors of the interruption controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the cluster failed.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::Error),
    /// Acting on the cluster failed.
    #[error(transparent)]
    Disruption(#[from] crate::disruption::Error),
    /// An API call failed.
    #[error("{action}: {source}")]
    Api {
        /// What was being done.
        action: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// Handling an event failed (the message is shared by every delivery naming the same
    /// instance).
    #[error("instance {instance}: {message}")]
    Handling {
        /// The instance.
        instance: String,
        /// The error.
        message: String,
    },
    /// A setting is invalid.
    #[error("interruption settings: {field}: invalid value {value}: {reason}")]
    Setting {
        /// The setting.
        field: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Settings of the interruption controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterruptionSettings {
    /// How many deliveries are in progress at once. A delivery holds its slot until its
    /// node is drained, mostly waiting; the CPU-bound part (the simulation) runs once per
    /// batch of events whatever this is.
    pub parallelism: usize,
    /// The longest an interrupted node waits for its replacements to be initialized before
    /// it is drained anyway.
    pub replacement_wait: Duration,
    /// The time before the notice's deadline kept for draining: the wait for replacements
    /// never goes past `deadline − drain_reserve`.
    pub drain_reserve: Duration,
    /// How often queued rebalance replacements are started and half-done work resumed.
    pub resync: Duration,
    /// How long a rebalance replacement may take to be initialized before it is given up.
    pub rebalance_timeout: Duration,
    /// The pause after a failed receive or a failed handling attempt.
    pub retry: Duration,
    /// How many times a delivery is handled before it is left unacknowledged.
    pub attempts: u32,
    /// The NodePool templates are rebuilt at least this often (prices move), and whenever a
    /// NodePool or node class changes; the resync keeps them warm so that a handling rarely
    /// waits for a rebuild.
    pub templates_max_age: Duration,
}

impl Default for InterruptionSettings {
    fn default() -> Self {
        InterruptionSettings {
            parallelism: 256,
            replacement_wait: Duration::from_secs(30),
            drain_reserve: Duration::from_secs(60),
            resync: Duration::from_secs(5),
            rebalance_timeout: Duration::from_secs(10 * 60),
            retry: Duration::from_secs(1),
            attempts: 3,
            templates_max_age: Duration::from_secs(30),
        }
    }
}

impl InterruptionSettings {
    /// Checks the settings; the error names the first invalid one.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |field: &'static str, value: String| Error::Setting {
            field,
            value,
            reason: "must be positive",
        };
        if self.parallelism == 0 {
            return Err(bad("parallelism", "0".into()));
        }
        if self.attempts == 0 {
            return Err(bad("attempts", "0".into()));
        }
        if self.resync.is_zero() {
            return Err(bad("resync", format!("{:?}", self.resync)));
        }
        if self.rebalance_timeout.is_zero() {
            return Err(bad("rebalance_timeout", format!("{:?}", self.rebalance_timeout)));
        }
        Ok(())
    }
}

/// What handling one event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The node was replaced (replacements created or found) and its NodeClaim deleted.
    Replaced {
        /// The NodeClaim.
        claim: String,
        /// Its replacements.
        replacements: Vec<String>,
    },
    /// The NodeClaim was already deleting.
    AlreadyHandled {
        /// The NodeClaim.
        claim: String,
    },
    /// No NodeClaim has this instance.
    Unmanaged,
    /// Nothing to do.
    Ignored {
        /// Why.
        why: &'static str,
    },
    /// A rebalance recommendation recorded as an Event.
    Event {
        /// The NodeClaim.
        claim: String,
    },
    /// A rebalance recommendation queued for a proactive replacement.
    RebalanceQueued {
        /// The NodeClaim.
        claim: String,
    },
}

impl Outcome {
    /// A short name for metrics.
    pub fn action(&self) -> &'static str {
        match self {
            Outcome::Replaced { .. } => "replaced",
            Outcome::AlreadyHandled { .. } => "already-handled",
            Outcome::Unmanaged => "unmanaged",
            Outcome::Ignored { .. } => "ignored",
            Outcome::Event { .. } => "event",
            Outcome::RebalanceQueued { .. } => "rebalance-queued",
        }
    }
}

type Handling = Shared<BoxFuture<'static, Result<Outcome, String>>>;

/// A terminal event waiting for the batch that handles it.
struct Pending {
    event: InterruptionEvent,
    received: Instant,
    reply: tokio::sync::oneshot::Sender<Result<Outcome, String>>,
}

/// The interruption controller; see the [module documentation](self).
pub struct Interruption {
    provisioner: Arc<Provisioner>,
    source: Arc<dyn EventSource>,
    settings: InterruptionSettings,
    /// Handlings in progress, by instance and class (terminal or rebalance).
    inflight: Mutex<HashMap<String, Handling>>,
    /// NodeClaims this process is replacing after a rebalance recommendation.
    running: Mutex<HashSet<String>>,
    /// NodeClaims this process is handling a terminal event for.
    interrupting: Mutex<HashSet<String>>,
    /// Held while replacements are simulated and created (a batch of terminal events, or a
    /// rebalance replacement), from the cluster read on: whoever comes second sees the
    /// first one's replacements, so an instance never gets two.
    create_gate: tokio::sync::Mutex<()>,
    /// Terminal events waiting for a batch.
    queue: Mutex<Vec<Pending>>,
    /// Whether a task works through the queue.
    batching: AtomicBool,
    /// Serialises the start of rebalance replacements (the concurrency cap).
    rebalance_gate: tokio::sync::Mutex<()>,
    templates: TemplateCache,
    tasks: Mutex<JoinSet<()>>,
}

impl std::fmt::Debug for Interruption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interruption")
            .field("source", &self.source.name())
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn api_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let action = action.into();
    move |source| Error::Api { action, source }
}

/// The NodeClaim of an instance: its `status.providerID` ends with `/<instance id>`.
pub fn claim_of_instance<'a>(snapshot: &'a Snapshot, instance_id: &str) -> Option<&'a NodeClaim> {
    let suffix = format!("/{instance_id}");
    snapshot.claims.iter().find(|c| {
        c.status
            .as_ref()
            .and_then(|s| s.provider_id.as_deref())
            .is_some_and(|p| p.ends_with(&suffix))
    })
}

/// When the instance goes away, for terminal events; `None` for the others.
fn deadline(event: &InterruptionEvent) -> Option<OffsetDateTime> {
    match &event.kind {
        EventKind::SpotInterruption { deadline, .. } => Some(*deadline),
        EventKind::ScheduledChange {
            not_before,
            state: ScheduledState::Active,
            ..
        } => Some(*not_before),
        EventKind::StateChange { .. } => Some(event.observed_at),
        EventKind::CapacityReservationInterruption => Some(event.observed_at + time::Duration::minutes(2)),
        _ => None,
    }
}

impl Interruption {
    /// A controller consuming `source`, acting through `provisioner`, with the default
    /// settings.
    pub fn new(provisioner: Arc<Provisioner>, source: Arc<dyn EventSource>) -> Interruption {
        Interruption {
            provisioner,
            source,
            settings: InterruptionSettings::default(),
            inflight: Mutex::default(),
            running: Mutex::default(),
            interrupting: Mutex::default(),
            create_gate: tokio::sync::Mutex::new(()),
            queue: Mutex::default(),
            batching: AtomicBool::new(false),
            rebalance_gate: tokio::sync::Mutex::new(()),
            templates: TemplateCache::new(InterruptionSettings::default().templates_max_age),
            tasks: Mutex::new(JoinSet::new()),
        }
    }

    /// Replaces the settings.
    pub fn settings(mut self, settings: InterruptionSettings) -> Interruption {
        self.templates = TemplateCache::new(settings.templates_max_age);
        self.settings = settings;
        self
    }

    /// Runs until `shutdown` resolves: builds the NodePool templates, then receives
    /// deliveries (they wait in the source meanwhile) and handles up to
    /// [`InterruptionSettings::parallelism`] at once; every
    /// [`InterruptionSettings::resync`] starts queued rebalance replacements and resumes
    /// half-done work ([`Interruption::reconcile`]).
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), Error> {
        self.settings.validate()?;
        let me = Arc::new(self);
        // Build the templates before the first message: a handling then finds them ready.
        match me.view().await {
            Ok(view) => {
                let _ = me.templates.get(&me.provisioner, &view.snapshot).await;
            }
            Err(e) => warn!(error = %e, "reading the cluster before receiving events failed"),
        }
        let permits = Arc::new(tokio::sync::Semaphore::new(me.settings.parallelism));
        let receive = async {
            loop {
                let deliveries = match me.source.receive().await {
                    Ok(d) => d,
                    Err(e) => {
                        warn!(source = me.source.name(), error = %e, "receiving interruption events failed");
                        tokio::time::sleep(me.settings.retry).await;
                        continue;
                    }
                };
                let received = Instant::now();
                for delivery in deliveries {
                    let Ok(permit) = permits.clone().acquire_owned().await else {
                        return;
                    };
                    let worker = me.clone();
                    lock(&me.tasks).spawn(async move {
                        worker.process(delivery, received).await;
                        drop(permit);
                    });
                }
                while lock(&me.tasks).try_join_next().is_some() {}
            }
        };
        let tick = async {
            loop {
                if let Err(e) = me.reconcile().await {
                    warn!(error = %e, "interruption resync failed");
                }
                tokio::time::sleep(me.settings.resync).await;
            }
        };
        tokio::select! {
            () = receive => {}
            () = tick => {}
            () = shutdown => {}
        }
        lock(&me.tasks).abort_all();
        Ok(())
    }

    fn client(&self) -> &Client {
        self.provisioner.client()
    }

    /// Whether this process handles a terminal event or a rebalance for a NodeClaim.
    fn busy(&self, claim: &str) -> bool {
        lock(&self.interrupting).contains(claim) || lock(&self.running).contains(claim)
    }

    /// Handles every event of a delivery, then acknowledges it; retries failed handlings
    /// and leaves the delivery unacknowledged after [`InterruptionSettings::attempts`].
    /// Long work keeps the delivery hidden from other consumers.
    async fn process(self: &Arc<Self>, delivery: Delivery, received: Instant) {
        let keep_alive = async {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                if let Err(e) = self
                    .source
                    .keep_alive(&delivery.ack, Duration::from_secs(30))
                    .await
                {
                    debug!(error = %e, "extending a delivery failed");
                }
            }
        };
        let work = async {
            for attempt in 1..=self.settings.attempts {
                let results = futures::future::join_all(
                    delivery.events.iter().map(|e| self.handle(e.clone(), received)),
                )
                .await;
                let failed: Vec<String> = results
                    .iter()
                    .filter_map(|r| r.as_ref().err().map(ToString::to_string))
                    .collect();
                if failed.is_empty() {
                    match self.source.acknowledge(std::slice::from_ref(&delivery.ack)).await {
                        Ok(()) => {}
                        Err(e) => warn!(error = %e, "acknowledging a delivery failed"),
                    }
                    return;
                }
                warn!(attempt, errors = ?failed, "handling interruption events failed");
                tokio::time::sleep(self.settings.retry).await;
            }
            warn!(ack = %delivery.ack.0, "leaving the delivery unacknowledged for redelivery");
        };
        tokio::select! {
            () = work => {}
            () = keep_alive => {}
        }
    }

    /// Handles one event (see the [module documentation](self)). Concurrent calls for the
    /// same instance (and class: terminal or rebalance) share one handling; `received` is
    /// when its message arrived.
    pub async fn handle(
        self: &Arc<Self>,
        event: InterruptionEvent,
        received: Instant,
    ) -> Result<Outcome, Error> {
        let class = if deadline(&event).is_some() {
            "terminal"
        } else {
            "other"
        };
        let key = format!("{}/{class}", event.instance_id);
        let instance = event.instance_id.clone();
        let kind = event.kind.name();
        let (handling, first) = {
            let mut map = lock(&self.inflight);
            match map.get(&key) {
                Some(h) => (h.clone(), false),
                None => {
                    let me = self.clone();
                    let h: Handling =
                        async move { me.handle_inner(event, received).await.map_err(|e| e.to_string()) }
                            .boxed()
                            .shared();
                    map.insert(key.clone(), h.clone());
                    (h, true)
                }
            }
        };
        let result = handling.await;
        if first {
            lock(&self.inflight).remove(&key);
        }
        let metrics = self.provisioner.metrics();
        match result {
            Ok(outcome) => {
                let action = if first {
                    outcome.action()
                } else {
                    "already-handled"
                };
                metrics.interruption(kind, action);
                Ok(outcome)
            }
            Err(message) => {
                metrics.interruption(kind, "failed");
                Err(Error::Handling { instance, message })
            }
        }
    }

    async fn handle_inner(
        self: Arc<Self>,
        event: InterruptionEvent,
        received: Instant,
    ) -> Result<Outcome, Error> {
        match &event.kind {
            EventKind::RebalanceRecommendation => self.handle_rebalance(&event).await,
            EventKind::AsgLifecycle(_) => Ok(Outcome::Ignored {
                why: "Auto Scaling lifecycle hooks are not the provisioner's",
            }),
            EventKind::ScheduledChange { state, .. } if *state != ScheduledState::Active => {
                Ok(Outcome::Ignored {
                    why: "the scheduled change is canceled or completed",
                })
            }
            _ => self.handle_terminal(event, received).await,
        }
    }

    async fn view(&self) -> Result<View, Error> {
        Ok(View {
            snapshot: Snapshot::read(self.client()).await?,
            pdbs: Vec::new(),
            now: self.provisioner.clock().now(),
            busy: std::collections::BTreeSet::new(),
        })
    }

    /// Replaces and drains the node of an instance that is going away. Terminal events are
    /// handled in batches: whatever arrived while the previous batch was being simulated is
    /// simulated together (one cluster read, one scheduling simulation with every
    /// interrupted node removed), which is both faster and more accurate than one simulation
    /// per node.
    async fn handle_terminal(
        self: &Arc<Self>,
        event: InterruptionEvent,
        received: Instant,
    ) -> Result<Outcome, Error> {
        let (reply, outcome) = tokio::sync::oneshot::channel();
        let instance = event.instance_id.clone();
        lock(&self.queue).push(Pending {
            event,
            received,
            reply,
        });
        self.drain_queue();
        match outcome.await {
            Ok(Ok(o)) => Ok(o),
            Ok(Err(message)) => Err(Error::Handling { instance, message }),
            Err(_) => Err(Error::Handling {
                instance,
                message: "the handling was stopped".to_owned(),
            }),
        }
    }

    /// Makes sure one task works through the queue of terminal events.
    fn drain_queue(self: &Arc<Self>) {
        if self.batching.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        lock(&self.tasks).spawn(async move {
            loop {
                let batch = std::mem::take(&mut *lock(&me.queue));
                if batch.is_empty() {
                    me.batching.store(false, Ordering::Release);
                    // An event queued after the take but before the store: take over again.
                    if lock(&me.queue).is_empty() || me.batching.swap(true, Ordering::AcqRel) {
                        return;
                    }
                    continue;
                }
                me.start_batch(batch).await;
            }
        });
    }

    /// Creates the replacements of a batch of terminal events, then finishes each node in
    /// its own task (mark, cordon, wait for the launch, delete), replying when done.
    async fn start_batch(self: &Arc<Self>, batch: Vec<Pending>) {
        let gate = self.create_gate.lock().await;
        let view = match self.view().await {
            Ok(v) => Arc::new(v),
            Err(e) => {
                let message = e.to_string();
                for p in batch {
                    let _ = p.reply.send(Err(message.clone()));
                }
                return;
            }
        };
        let mut targets: Vec<(Pending, NodeClaim)> = Vec::new();
        for p in batch {
            let Some(claim) = claim_of_instance(&view.snapshot, &p.event.instance_id) else {
                debug!(instance = %p.event.instance_id, kind = p.event.kind.name(), "no NodeClaim for the instance");
                let _ = p.reply.send(Ok(Outcome::Unmanaged));
                continue;
            };
            let name = claim.name_any();
            if claim.metadata.deletion_timestamp.is_some() || !lock(&self.interrupting).insert(name.clone()) {
                let _ = p.reply.send(Ok(Outcome::AlreadyHandled { claim: name }));
                continue;
            }
            targets.push((p, claim.clone()));
        }
        if targets.is_empty() {
            return;
        }
        for (_, claim) in &targets {
            let labels = claim.labels();
            let spot = labels
                .get(labels::CAPACITY_TYPE)
                .and_then(|c| c.parse::<CapacityType>().ok())
                == Some(CapacityType::Spot);
            if spot && let (Some(t), Some(z)) = (labels.get(labels::INSTANCE_TYPE), labels.get(labels::ZONE))
            {
                let backoff = self
                    .provisioner
                    .unavailable_offerings()
                    .mark(t, z, CapacityType::Spot);
                info!(instance_type = %t, zone = %z, backoff_s = backoff.as_secs(), "interrupted offering marked unavailable");
            }
        }
        // Replacements of an earlier attempt or of a rebalance in progress count; a claim
        // another command already marked has its replacements in flight under that command.
        let mut replacements: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (_, claim) in &targets {
            let name = claim.name_any();
            let existing: Vec<String> = view
                .snapshot
                .claims
                .iter()
                .filter(|c| c.metadata.deletion_timestamp.is_none() && orchestrate::replaces(c, &name))
                .map(ResourceExt::name_any)
                .collect();
            replacements.insert(name, existing);
        }
        let fresh: Vec<NodeClaim> = targets
            .iter()
            .map(|(_, c)| c)
            .filter(|c| replacements[&c.name_any()].is_empty() && Record::of(c).is_none())
            .cloned()
            .collect();
        let mut created = Vec::new();
        if !fresh.is_empty() {
            let templates = self.templates.get(&self.provisioner, &view.snapshot).await.0;
            let sim =
                orchestrate::simulate_replacements_blocking(&self.provisioner, templates, &view, fresh).await;
            for (pod, why) in &sim.unschedulable {
                warn!(pod = %pod, reason = %why, "a pod of an interrupted node fits nowhere");
            }
            let claims: Vec<(NewNodeClaim, String)> = sim
                .claims
                .iter()
                .map(|(c, from)| (c.clone(), from.join(",")))
                .collect();
            match orchestrate::create_replacements(
                &self.provisioner,
                &view.snapshot,
                &sim.templates,
                &claims,
                "interruption",
            )
            .await
            {
                Ok(c) => {
                    for ((obj, _), (_, from)) in c.iter().zip(&sim.claims) {
                        for f in from {
                            replacements.entry(f.clone()).or_default().push(obj.name_any());
                        }
                    }
                    created = c;
                }
                Err(e) => {
                    let message = e.to_string();
                    for (p, claim) in targets {
                        lock(&self.interrupting).remove(&claim.name_any());
                        let _ = p.reply.send(Err(message.clone()));
                    }
                    return;
                }
            }
        }
        for (p, claim) in &targets {
            let took = p.received.elapsed();
            self.provisioner
                .metrics()
                .interruption_replacement_seconds
                .observe(took.as_secs_f64());
            info!(
                nodeclaim = %claim.name_any(),
                instance = %p.event.instance_id,
                kind = p.event.kind.name(),
                replacements = ?replacements.get(&claim.name_any()),
                batch = targets.len(),
                ms = took.as_millis() as u64,
                "interrupted: replacements created"
            );
        }
        drop(gate);
        let launched: Shared<BoxFuture<'static, ()>> = {
            let p = self.provisioner.clone();
            async move { orchestrate::launch(&p, created).await }
                .boxed()
                .shared()
        };
        lock(&self.tasks).spawn(launched.clone());
        for (p, claim) in targets {
            let me = self.clone();
            let view = view.clone();
            let launched = launched.clone();
            let name = claim.name_any();
            let mine = replacements.remove(&name).unwrap_or_default();
            lock(&self.tasks).spawn(async move {
                let r = me
                    .finish(&view, &claim, &p.event, mine, launched)
                    .await
                    .map_err(|e| e.to_string());
                lock(&me.interrupting).remove(&name);
                let _ = p.reply.send(r);
            });
        }
    }

    /// Marks and cordons an interrupted node, waits for its replacements' launch (and, as
    /// the notice allows, their initialization), then deletes its NodeClaim.
    async fn finish(
        &self,
        view: &View,
        claim: &NodeClaim,
        event: &InterruptionEvent,
        replacements: Vec<String>,
        launched: Shared<BoxFuture<'static, ()>>,
    ) -> Result<Outcome, Error> {
        let name = claim.name_any();
        let node = view.snapshot.node_of(claim).map(ResourceExt::name_any);
        let record = Record {
            reason: INTERRUPTED.to_owned(),
            command: name.clone(),
            replacements: replacements.len(),
            started: view.now,
        };
        // The instance goes away whatever a disruption or rebalance command planned for it.
        orchestrate::mark(&self.provisioner, claim, node.as_deref(), &record, true).await?;
        if let Some(node) = &node
            && let Err(e) = self.provisioner.node_actions().cordon(node).await
        {
            warn!(node = %node, error = %e, "cordoning the interrupted node failed");
        }
        launched.await;
        // Give the replacements the time the notice allows, keeping the drain's share.
        let wait = deadline(event)
            .map(|d| d - self.provisioner.clock().now())
            .and_then(|left| left.try_into().ok())
            .map(|left: Duration| left.saturating_sub(self.settings.drain_reserve))
            .unwrap_or(Duration::ZERO)
            .min(self.settings.replacement_wait);
        if !replacements.is_empty()
            && !wait.is_zero()
            && let Err(e) = orchestrate::wait_initialized(
                self.client(),
                &replacements,
                self.provisioner.settings().resync,
                Instant::now() + wait,
            )
            .await
        {
            info!(nodeclaim = %name, error = %e, "draining before the replacements are initialized");
        }
        orchestrate::delete_claims(self.client(), std::slice::from_ref(&name)).await?;
        let pool = claim.labels().get(labels::NODE_POOL).cloned().unwrap_or_default();
        self.provisioner.metrics().disrupted(INTERRUPTED, &pool);
        Ok(Outcome::Replaced {
            claim: name,
            replacements,
        })
    }

    /// Applies the NodePool's rebalance policy to a recommendation.
    async fn handle_rebalance(self: &Arc<Self>, event: &InterruptionEvent) -> Result<Outcome, Error> {
        let view = self.view().await?;
        let Some(claim) = claim_of_instance(&view.snapshot, &event.instance_id) else {
            return Ok(Outcome::Unmanaged);
        };
        let name = claim.name_any();
        // An instance whose terminal event (or a disruption command) is being handled is
        // going away already: the recommendation adds nothing.
        if claim.metadata.deletion_timestamp.is_some()
            || lock(&self.interrupting).contains(&name)
            || Record::of(claim).is_some_and(|r| r.reason != REBALANCE)
        {
            return Ok(Outcome::AlreadyHandled { claim: name });
        }
        let policy = claim
            .labels()
            .get(labels::NODE_POOL)
            .and_then(|p| view.pool(p))
            .map(|p| p.spec.disruption.rebalance.policy)
            .unwrap_or_default();
        match policy {
            RebalancePolicy::Ignore => Ok(Outcome::Ignored {
                why: "the NodePool ignores rebalance recommendations",
            }),
            RebalancePolicy::Event => {
                self.publish(
                    claim,
                    "RebalanceRecommendation",
                    "EC2 recommends rebalancing: the instance is at elevated risk of interruption",
                )
                .await;
                Ok(Outcome::Event { claim: name })
            }
            RebalancePolicy::Replace => {
                if !claim.annotations().contains_key(REBALANCE_ANNOTATION) {
                    let at = view
                        .now
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default();
                    Api::<NodeClaim>::all(self.client().clone())
                        .patch(
                            &name,
                            &PatchParams::default(),
                            &Patch::Merge(json!({"metadata": {"annotations": {REBALANCE_ANNOTATION: at}}})),
                        )
                        .await
                        .map_err(api_err(format!("queueing the rebalance of NodeClaim {name}")))?;
                    self.publish(
                        claim,
                        "RebalanceRecommendation",
                        "EC2 recommends rebalancing: queued for a proactive replacement",
                    )
                    .await;
                }
                self.start_rebalances().await?;
                Ok(Outcome::RebalanceQueued { claim: name })
            }
        }
    }

    /// Publishes an `events.k8s.io/v1` Event about a NodeClaim (failures are logged).
    async fn publish(&self, claim: &NodeClaim, reason: &str, note: &str) {
        let now = self.provisioner.clock().now();
        let ts =
            k8s_openapi::jiff::Timestamp::from_nanosecond(now.unix_timestamp_nanos()).unwrap_or_default();
        let name = claim.name_any();
        let event = KubeEvent {
            metadata: ObjectMeta {
                name: Some(format!("{name}.{:x}", now.unix_timestamp_nanos())),
                namespace: Some("default".to_owned()),
                ..ObjectMeta::default()
            },
            action: Some("Interruption".to_owned()),
            reason: Some(reason.to_owned()),
            note: Some(note.to_owned()),
            type_: Some("Normal".to_owned()),
            event_time: Some(MicroTime(ts)),
            reporting_controller: Some(REPORTING_CONTROLLER.to_owned()),
            reporting_instance: Some(REPORTING_CONTROLLER.to_owned()),
            regarding: Some(ObjectReference {
                api_version: Some("karpenter.sh/v1".to_owned()),
                kind: Some("NodeClaim".to_owned()),
                name: Some(name.clone()),
                uid: claim.uid(),
                ..ObjectReference::default()
            }),
            ..KubeEvent::default()
        };
        if let Err(e) = Api::<KubeEvent>::namespaced(self.client().clone(), "default")
            .create(&PostParams::default(), &event)
            .await
        {
            warn!(nodeclaim = %name, error = %e, "publishing an Event failed");
        }
    }

    /// Starts queued rebalance replacements while their pools have room under
    /// `spec.disruption.rebalance.maxConcurrent`, oldest recommendation first; returns the
    /// NodeClaims started.
    pub fn start_rebalances(self: &Arc<Self>) -> BoxFuture<'static, Result<Vec<String>, Error>> {
        let me = self.clone();
        async move { me.start_queued().await }.boxed()
    }

    async fn start_queued(self: &Arc<Self>) -> Result<Vec<String>, Error> {
        let _gate = self.rebalance_gate.lock().await;
        let view = self.view().await?;
        let mut in_progress: BTreeMap<String, usize> = BTreeMap::new();
        let mut nodes: BTreeMap<String, usize> = BTreeMap::new();
        let mut queued: Vec<(String, String, String)> = Vec::new();
        let running = lock(&self.running).clone();
        let interrupting = lock(&self.interrupting).clone();
        for claim in &view.snapshot.claims {
            let Some(pool) = claim.labels().get(labels::NODE_POOL).cloned() else {
                continue;
            };
            let name = claim.name_any();
            let record = Record::of(claim);
            if record.as_ref().is_some_and(|r| r.reason == REBALANCE) || running.contains(&name) {
                *in_progress.entry(pool.clone()).or_default() += 1;
            }
            if claim.metadata.deletion_timestamp.is_some() {
                continue;
            }
            *nodes.entry(pool.clone()).or_default() += 1;
            if record.is_none()
                && !running.contains(&name)
                && !interrupting.contains(&name)
                && let Some(at) = claim.annotations().get(REBALANCE_ANNOTATION)
            {
                queued.push((at.clone(), name, pool));
            }
        }
        queued.sort();
        let mut started = Vec::new();
        for (_, name, pool_name) in queued {
            let Some(pool) = view.pool(&pool_name) else {
                continue;
            };
            if pool.spec.disruption.rebalance.policy != RebalancePolicy::Replace {
                continue;
            }
            let limit = match pool.rebalance_limit(nodes.get(&pool_name).copied().unwrap_or(0)) {
                Ok(l) => l,
                Err(e) => {
                    warn!(nodepool = %pool_name, error = %e, "rebalance policy invalid");
                    continue;
                }
            };
            let busy = in_progress.entry(pool_name.clone()).or_default();
            if *busy >= limit {
                continue;
            }
            if !lock(&self.running).insert(name.clone()) {
                continue;
            }
            *busy += 1;
            started.push(name.clone());
            let me = self.clone();
            lock(&self.tasks).spawn(async move {
                if let Err(e) = me.replace_proactively(&name).await {
                    warn!(nodeclaim = %name, error = %e, "rebalance replacement failed");
                }
                lock(&me.running).remove(&name);
                // A slot is free: start the next one.
                if let Err(e) = me.start_rebalances().await {
                    debug!(error = %e, "starting the next rebalance failed");
                }
            });
        }
        Ok(started)
    }

    /// Replaces a NodeClaim after a rebalance recommendation: marks it (the taint), creates
    /// and launches what its pods need (none when replacements created earlier for it
    /// exist), waits until they are initialized, then deletes it. On failure the marks and
    /// the queue annotation are cleared (the recommendation is dropped), unless a terminal
    /// event took the claim over meanwhile.
    async fn replace_proactively(&self, name: &str) -> Result<(), Error> {
        let gate = self.create_gate.lock().await;
        let view = Arc::new(self.view().await?);
        let Some(claim) = view.snapshot.claims.iter().find(|c| c.name_any() == name) else {
            return Ok(());
        };
        let record = Record::of(claim);
        if claim.metadata.deletion_timestamp.is_some()
            || lock(&self.interrupting).contains(name)
            || record.as_ref().is_some_and(|r| r.reason != REBALANCE)
        {
            return Ok(());
        }
        let node = view.snapshot.node_of(claim).map(ResourceExt::name_any);
        let outcome = async {
            let existing: Vec<String> = view
                .snapshot
                .claims
                .iter()
                .filter(|c| c.metadata.deletion_timestamp.is_none() && orchestrate::replaces(c, name))
                .map(ResourceExt::name_any)
                .collect();
            let mut created = Vec::new();
            if existing.is_empty() {
                let templates = self.templates.get(&self.provisioner, &view.snapshot).await.0;
                let sim = orchestrate::simulate_replacements_blocking(
                    &self.provisioner,
                    templates,
                    &view,
                    vec![claim.clone()],
                )
                .await;
                if record.is_none() {
                    let record = Record {
                        reason: REBALANCE.to_owned(),
                        command: name.to_owned(),
                        replacements: sim.claims.len(),
                        started: view.now,
                    };
                    orchestrate::mark(&self.provisioner, claim, node.as_deref(), &record, false).await?;
                }
                info!(nodeclaim = %name, replacements = sim.claims.len(), "rebalance: replacing proactively");
                let claims: Vec<(NewNodeClaim, String)> = sim
                    .claims
                    .iter()
                    .map(|(c, _)| (c.clone(), name.to_owned()))
                    .collect();
                created = orchestrate::create_replacements(
                    &self.provisioner,
                    &view.snapshot,
                    &sim.templates,
                    &claims,
                    "rebalance",
                )
                .await?;
            } else {
                info!(nodeclaim = %name, replacements = ?existing, "rebalance: resuming with the replacements created earlier");
            }
            drop(gate);
            let mut replacements = existing;
            replacements.extend(created.iter().map(|(c, _)| c.name_any()));
            orchestrate::launch(&self.provisioner, created).await;
            orchestrate::wait_initialized(
                self.client(),
                &replacements,
                self.provisioner.settings().resync,
                Instant::now() + self.settings.rebalance_timeout,
            )
            .await
            .map_err(|source| crate::disruption::Error::Replacement {
                command: name.to_owned(),
                source,
            })?;
            orchestrate::delete_claims(self.client(), &[name.to_owned()]).await?;
            Ok::<_, Error>(())
        }
        .await;
        let pool = claim.labels().get(labels::NODE_POOL).cloned().unwrap_or_default();
        match outcome {
            Ok(()) => {
                self.provisioner.metrics().disrupted(REBALANCE, &pool);
                Ok(())
            }
            Err(e) => {
                // `unmark` leaves a claim a terminal event took over (deleting, or with its
                // record) alone; the queue annotation goes only when the rollback happened.
                orchestrate::unmark(&self.provisioner, name, node.as_deref(), name).await?;
                let current = Api::<NodeClaim>::all(self.client().clone())
                    .get_opt(name)
                    .await
                    .ok()
                    .flatten();
                if current
                    .is_some_and(|c| c.metadata.deletion_timestamp.is_none() && Record::of(&c).is_none())
                {
                    let _ = Api::<NodeClaim>::all(self.client().clone())
                        .patch(
                            name,
                            &PatchParams::default(),
                            &Patch::Merge(json!({"metadata": {"annotations": {REBALANCE_ANNOTATION: null}}})),
                        )
                        .await;
                }
                self.provisioner.metrics().command(REBALANCE, "failed");
                Err(e)
            }
        }
    }

    /// One resync: the NodePool templates are refreshed when stale; interrupted NodeClaims a
    /// previous process marked (or replaced) but did not delete are deleted (their replacements exist or were never needed); rebalance replacements a
    /// previous process started are resumed; queued ones are started within their caps.
    pub async fn reconcile(self: &Arc<Self>) -> Result<(), Error> {
        while lock(&self.tasks).try_join_next().is_some() {}
        let view = self.view().await?;
        // Keeps the templates warm for the next handling.
        let _ = self.templates.get(&self.provisioner, &view.snapshot).await;
        // An interruption creates the replacements before it marks the interrupted NodeClaim:
        // one named by a live replacement without a record was interrupted too.
        let named: std::collections::BTreeSet<&str> = view
            .snapshot
            .claims
            .iter()
            .filter(|c| c.metadata.deletion_timestamp.is_none())
            .filter_map(|c| c.annotations().get(orchestrate::REPLACEMENT_FOR_ANNOTATION))
            .flat_map(|v| v.split(','))
            .collect();
        for claim in &view.snapshot.claims {
            if claim.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let name = claim.name_any();
            let reason = match Record::of(claim) {
                Some(record) => record.reason,
                None if named.contains(name.as_str()) => INTERRUPTED.to_owned(),
                None => continue,
            };
            if self.busy(&name) {
                continue;
            }
            // The view may predate a handling that just finished: read the claim again.
            let fresh = Api::<NodeClaim>::all(self.client().clone())
                .get_opt(&name)
                .await
                .map_err(api_err(format!("reading NodeClaim {name}")))?;
            if fresh.is_none_or(|c| c.metadata.deletion_timestamp.is_some()) || self.busy(&name) {
                continue;
            }
            match reason.as_str() {
                INTERRUPTED => {
                    info!(nodeclaim = %name, "resuming an interrupted NodeClaim: deleting it");
                    orchestrate::delete_claims(self.client(), std::slice::from_ref(&name)).await?;
                }
                REBALANCE => {
                    if !lock(&self.running).insert(name.clone()) {
                        continue;
                    }
                    let me = self.clone();
                    lock(&self.tasks).spawn(async move {
                        if let Err(e) = me.replace_proactively(&name).await {
                            warn!(nodeclaim = %name, error = %e, "resumed rebalance replacement failed");
                        }
                        lock(&me.running).remove(&name);
                    });
                }
                _ => {}
            }
        }
        self.start_rebalances().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spot_core::event::{InstanceState, Origin, SpotAction};
    use time::macros::datetime;

    const AT: OffsetDateTime = datetime!(2026-05-06 12:00 UTC);

    fn event(kind: EventKind) -> InterruptionEvent {
        InterruptionEvent::new("i-0abc", kind, "t", AT, Origin::Other { name: "test".into() })
    }

    #[test]
    fn deadlines_of_terminal_events() {
        let spot = event(EventKind::SpotInterruption {
            action: SpotAction::Terminate,
            deadline: AT + time::Duration::minutes(2),
        });
        assert_eq!(deadline(&spot), Some(AT + time::Duration::minutes(2)));
        let scheduled = |state| {
            event(EventKind::ScheduledChange {
                code: "instance-stop".into(),
                not_before: AT + time::Duration::hours(1),
                not_after: None,
                state,
                description: String::new(),
            })
        };
        assert_eq!(
            deadline(&scheduled(ScheduledState::Active)),
            Some(AT + time::Duration::hours(1))
        );
        assert_eq!(deadline(&scheduled(ScheduledState::Canceled)), None);
        assert_eq!(
            deadline(&event(EventKind::StateChange {
                state: InstanceState::Stopping
            })),
            Some(AT)
        );
        assert_eq!(deadline(&event(EventKind::RebalanceRecommendation)), None);
        assert!(deadline(&event(EventKind::CapacityReservationInterruption)).is_some());
    }

    #[test]
    fn settings_are_checked() {
        InterruptionSettings::default().validate().unwrap();
        let e = InterruptionSettings {
            parallelism: 0,
            ..InterruptionSettings::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("parallelism") && e.contains('0'), "{e}");
    }

    #[test]
    fn claims_are_found_by_instance_id() {
        let claim = |name: &str, pid: &str| -> NodeClaim {
            serde_json::from_value(json!({
                "apiVersion": "karpenter.sh/v1", "kind": "NodeClaim", "metadata": {"name": name},
                "spec": {"requirements": [], "nodeClassRef": {"group": "g", "kind": "k", "name": "n"}},
                "status": {"providerID": pid},
            }))
            .unwrap()
        };
        let snapshot = Snapshot {
            claims: vec![
                claim("a", "aws:///us-east-1a/i-0abc1"),
                claim("b", "aws:///us-east-1b/i-0abc"),
            ],
            ..Snapshot::default()
        };
        assert_eq!(
            claim_of_instance(&snapshot, "i-0abc").map(|c| c.name_any()),
            Some("b".into())
        );
        assert!(claim_of_instance(&snapshot, "i-0ab").is_none());
    }
}
