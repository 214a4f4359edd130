//! The handler engine: from interruption events to node actions.
//!
//! - **One drain per instance.** Events for the same instance are handled one at a time, and
//!   progress is recorded on the Node (annotations under [`ANNOTATION_PREFIX`]): a spot notice,
//!   its Auto Scaling lifecycle action and the state change that follows lead to one cordon, one
//!   drain and one webhook, even across restarts and replicas.
//! - **Nothing is lost.** A delivery is acknowledged only when every event in it was handled;
//!   while work goes on, its visibility is extended.
//! - **Never cordoned by mistake.** A cordon for a rebalance recommendation is undone when no
//!   interruption follows in time, a canceled scheduled event undoes its cordon, and a node that
//!   was already cordoned by someone else is never uncordoned by us.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use spot_core::clock::Clock;
use spot_core::event::{EventKind, InterruptionEvent, LifecycleAction, LifecycleTransition, ScheduledState};
use spot_core::node::{CordonWith, DrainOptions, MetadataPatch, NodeActions, NodeState, Taint, TaintEffect};
use spot_core::source::{AckHandle, Delivery, EventSource};
use time::OffsetDateTime;
use tokio::sync::{Mutex, Semaphore};
use tracing::{debug, info, warn};

use crate::config::{RebalancePolicy, ScheduledPolicy};
use crate::metrics::Metrics;
use crate::webhook::Webhook;

/// Prefix of the annotations that record progress on a Node.
pub const ANNOTATION_PREFIX: &str = "nth.spot.dev/";
/// The instance the recorded progress is about.
pub const ANN_INSTANCE: &str = "nth.spot.dev/instance-id";
/// The event that started the handling.
pub const ANN_EVENT: &str = "nth.spot.dev/event-id";
/// The event kind that started the handling (`spot-interruption`, `rebalance-recommendation`...).
pub const ANN_REASON: &str = "nth.spot.dev/reason";
/// `cordoned` or `drained`.
pub const ANN_PHASE: &str = "nth.spot.dev/phase";
/// When we cordoned (RFC 3339).
pub const ANN_CORDONED_AT: &str = "nth.spot.dev/cordoned-at";
/// Present when the node was already unschedulable before we touched it.
pub const ANN_WAS_UNSCHEDULABLE: &str = "nth.spot.dev/was-unschedulable";
/// Present once the webhook for this instance was sent.
pub const ANN_WEBHOOK: &str = "nth.spot.dev/webhook-sent";
/// When lifecycle heartbeats started (RFC 3339), so a restart keeps the same budget.
pub const ANN_HEARTBEAT_SINCE: &str = "nth.spot.dev/heartbeat-since";
/// The scheduled event code, for uncordon after reboot.
pub const ANN_SCHEDULED_CODE: &str = "nth.spot.dev/scheduled-code";

/// NTH's taint for spot interruptions.
pub const TAINT_SPOT_ITN: &str = "aws-node-termination-handler/spot-itn";
/// NTH's taint for rebalance recommendations.
pub const TAINT_REBALANCE: &str = "aws-node-termination-handler/rebalance-recommendation";
/// NTH's taint for Auto Scaling lifecycle terminations.
pub const TAINT_ASG: &str = "aws-node-termination-handler/asg-lifecycle-termination";
/// NTH's taint for scheduled maintenance.
pub const TAINT_SCHEDULED: &str = "aws-node-termination-handler/scheduled-maintenance";
/// The out-of-service taint key (value `nodeshutdown`, effect NoExecute).
pub const TAINT_OUT_OF_SERVICE: &str = "node.kubernetes.io/out-of-service";
/// The label that takes a node out of external load balancers.
pub const LABEL_EXCLUDE_LB: &str = "node.kubernetes.io/exclude-from-external-load-balancers";
/// The value NTH puts on that label.
pub const LABEL_EXCLUDE_LB_VALUE: &str = "aws-node-termination-handler";

/// Errors of the handler.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A node action failed.
    #[error("{0}")]
    Node(#[from] spot_core::node::Error),
    /// Looking up the node of an instance failed.
    #[error("finding the node of instance {instance}: {message}")]
    Lookup {
        /// The instance.
        instance: String,
        /// What failed.
        message: String,
    },
    /// The instance has no node (and messages for unknown nodes are kept).
    #[error("instance {0} has no node in this cluster")]
    NodeNotFound(String),
    /// Completing or heartbeating an Auto Scaling lifecycle action failed.
    #[error("lifecycle action for instance {instance}: {message}")]
    Lifecycle {
        /// The instance.
        instance: String,
        /// What failed.
        message: String,
    },
    /// The launched node did not become Ready in time.
    #[error("node {0} did not become Ready in time for its launch lifecycle hook")]
    NotReady(String),
    /// The event source failed.
    #[error("{0}")]
    Source(#[from] spot_core::source::Error),
    /// Bad configuration detected while handling.
    #[error("{0}")]
    Config(#[from] crate::config::Error),
}

/// Where an instance runs in the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The node's name.
    Node(String),
    /// No node has this instance.
    NotFound,
    /// The instance lacks the managed tag: not ours to act on.
    Unmanaged,
}

/// Finds the node of an instance (queue mode: EC2 DescribeInstances; metadata mode: this node).
#[async_trait]
pub trait NodeLookup: Send + Sync {
    /// The node of `instance_id`.
    async fn lookup(&self, instance_id: &str) -> Result<Lookup, String>;
}

/// Metadata mode: every event is about the node the handler runs on.
#[derive(Debug, Clone)]
pub struct ThisNode(pub String);

#[async_trait]
impl NodeLookup for ThisNode {
    async fn lookup(&self, _instance_id: &str) -> Result<Lookup, String> {
        Ok(Lookup::Node(self.0.clone()))
    }
}

/// Auto Scaling lifecycle calls.
#[async_trait]
pub trait Lifecycle: Send + Sync {
    /// CompleteLifecycleAction with result CONTINUE.
    async fn complete(&self, instance_id: &str, action: &LifecycleAction) -> Result<(), String>;
    /// RecordLifecycleActionHeartbeat.
    async fn heartbeat(&self, instance_id: &str, action: &LifecycleAction) -> Result<(), String>;
}

/// What the handler does, resolved from the settings.
#[derive(Debug, Clone)]
pub struct HandlerConfig {
    /// Act on spot interruption notices.
    pub spot_interruption: bool,
    /// Scheduled-event policy per code (`None` key: the default).
    pub scheduled_default: ScheduledPolicy,
    /// Per-code scheduled policies.
    pub scheduled_codes: BTreeMap<String, ScheduledPolicy>,
    /// Act on scheduled events at all.
    pub scheduled_events: bool,
    /// Rebalance policy.
    pub rebalance: RebalancePolicy,
    /// Uncordon after a rebalance cordon when nothing follows (zero: never).
    pub rebalance_uncordon_after: Duration,
    /// Act on Auto Scaling lifecycle terminations.
    pub asg_lifecycle: bool,
    /// Never drain.
    pub cordon_only: bool,
    /// Taint with NTH's per-kind taint.
    pub taint_node: bool,
    /// Effect of that taint.
    pub taint_effect: TaintEffect,
    /// Out-of-service taint after a drain.
    pub out_of_service_taint: bool,
    /// Exclude-from-load-balancers label before cordoning.
    pub exclude_from_load_balancers: bool,
    /// Drain options (timeout = NODE_TERMINATION_GRACE_PERIOD).
    pub drain: DrainOptions,
    /// NODE_TERMINATION_GRACE_PERIOD: drains for future events start this long before.
    pub node_termination_grace: Duration,
    /// Acknowledge events whose instance has no node.
    pub delete_if_node_not_found: bool,
    /// Wait after a drain before completing a lifecycle action.
    pub complete_lifecycle_delay: Option<Duration>,
    /// Lifecycle heartbeat interval and how long to keep it up.
    pub heartbeat: Option<(Duration, Duration)>,
    /// How long to wait for a launched node to become Ready.
    pub launch_ready_timeout: Duration,
    /// Events handled at once.
    pub workers: usize,
    /// Visibility extension while a delivery is being worked on.
    pub keep_alive: Duration,
    /// Log actions instead of taking them.
    pub dry_run: bool,
}

impl Default for HandlerConfig {
    fn default() -> Self {
        HandlerConfig {
            spot_interruption: true,
            scheduled_default: ScheduledPolicy::CordonAndDrain,
            scheduled_codes: BTreeMap::new(),
            scheduled_events: true,
            rebalance: RebalancePolicy::None,
            rebalance_uncordon_after: Duration::from_secs(600),
            asg_lifecycle: true,
            cordon_only: false,
            taint_node: false,
            taint_effect: TaintEffect::NoSchedule,
            out_of_service_taint: false,
            exclude_from_load_balancers: false,
            drain: DrainOptions::default(),
            node_termination_grace: Duration::from_secs(120),
            delete_if_node_not_found: false,
            complete_lifecycle_delay: None,
            heartbeat: None,
            launch_ready_timeout: Duration::from_secs(600),
            workers: 10,
            keep_alive: Duration::from_secs(20),
            dry_run: false,
        }
    }
}

/// What to do for one event.
#[derive(Debug, Clone, PartialEq)]
enum Plan {
    Ignore(&'static str),
    Cordon {
        taint: Option<&'static str>,
        auto_uncordon: bool,
    },
    Drain {
        taint: Option<&'static str>,
        at: Option<OffsetDateTime>,
    },
    Undo,
    Launch(LifecycleAction),
}

/// The outcome of handling one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every event was handled and the delivery acknowledged.
    Acknowledged,
    /// Dry run: handled in the logs only, left unacknowledged.
    DryRun,
    /// At least one event failed: left unacknowledged, to be delivered again.
    Retry(String),
}

/// The handler: consumes an event source and acts on nodes.
pub struct Handler {
    cfg: HandlerConfig,
    source: Arc<dyn EventSource>,
    nodes: Arc<dyn NodeActions>,
    lookup: Arc<dyn NodeLookup>,
    lifecycle: Option<Arc<dyn Lifecycle>>,
    webhook: Option<Webhook>,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    instances: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    workers: Arc<Semaphore>,
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handler")
            .field("cfg", &self.cfg)
            .field("source", &self.source.name())
            .finish_non_exhaustive()
    }
}

/// What the handler needs from the outside world.
pub struct Deps {
    /// Where events come from.
    pub source: Arc<dyn EventSource>,
    /// Where node actions go.
    pub nodes: Arc<dyn NodeActions>,
    /// Instance → node.
    pub lookup: Arc<dyn NodeLookup>,
    /// Auto Scaling lifecycle calls (queue mode).
    pub lifecycle: Option<Arc<dyn Lifecycle>>,
    /// Notifications.
    pub webhook: Option<Webhook>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Wall-clock time.
    pub clock: Arc<dyn Clock>,
}

impl Handler {
    /// A handler.
    pub fn new(cfg: HandlerConfig, deps: Deps) -> Arc<Self> {
        let workers = Arc::new(Semaphore::new(cfg.workers.max(1)));
        Arc::new(Handler {
            cfg,
            source: deps.source,
            nodes: deps.nodes,
            lookup: deps.lookup,
            lifecycle: deps.lifecycle,
            webhook: deps.webhook,
            metrics: deps.metrics,
            clock: deps.clock,
            instances: Mutex::new(HashMap::new()),
            workers,
        })
    }

    /// Receives and handles deliveries until `shutdown` resolves; then stops receiving and
    /// waits for the deliveries in progress (unfinished ones stay unacknowledged and are
    /// delivered again, to this or another replica).
    pub async fn run(self: &Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        let mut tasks = tokio::task::JoinSet::new();
        let mut backoff = Duration::from_millis(500);
        tokio::pin!(shutdown);
        loop {
            let received = tokio::select! {
                () = &mut shutdown => break,
                r = self.source.receive() => r,
            };
            match received {
                Ok(deliveries) => {
                    backoff = Duration::from_millis(500);
                    for delivery in deliveries {
                        if let Some(age) = delivery.age {
                            self.metrics.message_age.observe(age.as_secs_f64());
                        }
                        let permit = self.workers.clone().acquire_owned().await;
                        let this = self.clone();
                        tasks.spawn(async move {
                            let _permit = permit;
                            this.handle(delivery).await
                        });
                    }
                }
                Err(e) => {
                    warn!(source = self.source.name(), error = %e, "receiving events failed; backing off");
                    self.metrics.error(self.source.name());
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
            while tasks.try_join_next().is_some() {}
        }
        info!(
            in_flight = tasks.len(),
            "shutting down: finishing deliveries in progress"
        );
        while tasks.join_next().await.is_some() {}
    }

    /// Handles one delivery: every event, then the acknowledgement.
    pub async fn handle(self: &Arc<Self>, delivery: Delivery) -> Outcome {
        let keep_alive = self.spawn_keep_alive(&delivery.ack);
        let mut failure = None;
        for event in &delivery.events {
            self.metrics.event(event.kind.name());
            if let Err(e) = self.handle_event(event).await {
                warn!(event_id = %event.id, instance = %event.instance_id, kind = event.kind.name(), error = %e, "event handling failed; it will be retried");
                failure = Some(e.to_string());
            }
        }
        keep_alive.abort();
        if let Some(reason) = failure {
            return Outcome::Retry(reason);
        }
        if self.cfg.dry_run {
            return Outcome::DryRun;
        }
        match self.source.acknowledge(std::slice::from_ref(&delivery.ack)).await {
            Ok(()) => Outcome::Acknowledged,
            Err(e) => {
                self.metrics.error(self.source.name());
                Outcome::Retry(e.to_string())
            }
        }
    }

    fn spawn_keep_alive(self: &Arc<Self>, ack: &AckHandle) -> tokio::task::AbortHandle {
        let this = self.clone();
        let ack = ack.clone();
        let every = (self.cfg.keep_alive / 2).max(Duration::from_millis(100));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = this.source.keep_alive(&ack, this.cfg.keep_alive).await {
                    debug!(error = %e, "extending visibility failed");
                }
            }
        })
        .abort_handle()
    }

    fn plan(&self, event: &InterruptionEvent) -> Plan {
        let c = &self.cfg;
        match &event.kind {
            EventKind::SpotInterruption { .. } if c.spot_interruption => Plan::Drain {
                taint: Some(TAINT_SPOT_ITN),
                at: None,
            },
            EventKind::SpotInterruption { .. } => Plan::Ignore("spot interruption draining is off"),
            EventKind::RebalanceRecommendation => match c.rebalance {
                RebalancePolicy::None => Plan::Ignore("rebalance policy is none"),
                RebalancePolicy::Cordon => Plan::Cordon {
                    taint: Some(TAINT_REBALANCE),
                    auto_uncordon: true,
                },
                RebalancePolicy::CordonAndDrain => Plan::Drain {
                    taint: Some(TAINT_REBALANCE),
                    at: None,
                },
            },
            EventKind::ScheduledChange { .. } if !c.scheduled_events => {
                Plan::Ignore("scheduled event draining is off")
            }
            EventKind::ScheduledChange {
                state: ScheduledState::Active,
                code,
                not_before,
                ..
            } => {
                match c
                    .scheduled_codes
                    .get(code)
                    .copied()
                    .unwrap_or(c.scheduled_default)
                {
                    ScheduledPolicy::None => Plan::Ignore("scheduled policy is none for this code"),
                    ScheduledPolicy::Cordon => Plan::Cordon {
                        taint: Some(TAINT_SCHEDULED),
                        auto_uncordon: false,
                    },
                    ScheduledPolicy::CordonAndDrain => Plan::Drain {
                        taint: Some(TAINT_SCHEDULED),
                        at: Some(*not_before),
                    },
                    ScheduledPolicy::DrainNow => Plan::Drain {
                        taint: Some(TAINT_SCHEDULED),
                        at: None,
                    },
                }
            }
            EventKind::ScheduledChange { .. } => Plan::Undo,
            EventKind::StateChange { .. } | EventKind::CapacityReservationInterruption => Plan::Drain {
                taint: None,
                at: None,
            },
            EventKind::AsgLifecycle(a) if a.transition == LifecycleTransition::Launching => {
                Plan::Launch(a.clone())
            }
            EventKind::AsgLifecycle(_) if c.asg_lifecycle => Plan::Drain {
                taint: Some(TAINT_ASG),
                at: None,
            },
            EventKind::AsgLifecycle(_) => Plan::Ignore("ASG lifecycle draining is off"),
        }
    }

    /// Handles one event (public for embedders that bring their own loop).
    pub async fn handle_event(self: &Arc<Self>, event: &InterruptionEvent) -> Result<(), Error> {
        let plan = self.plan(event);
        if let Plan::Ignore(why) = plan {
            debug!(event_id = %event.id, kind = event.kind.name(), why, "event ignored");
            return Ok(());
        }
        let node = match self.lookup.lookup(&event.instance_id).await {
            Ok(Lookup::Node(node)) => node,
            Ok(Lookup::Unmanaged) => {
                info!(instance = %event.instance_id, "instance is not managed (tag missing): ignored");
                return Ok(());
            }
            Ok(Lookup::NotFound) if self.cfg.delete_if_node_not_found => {
                info!(instance = %event.instance_id, "instance has no node: message deleted");
                return Ok(());
            }
            Ok(Lookup::NotFound) => return Err(Error::NodeNotFound(event.instance_id.clone())),
            Err(message) => {
                self.metrics.error("node-lookup");
                return Err(Error::Lookup {
                    instance: event.instance_id.clone(),
                    message,
                });
            }
        };
        // Events for the same instance are handled one at a time.
        let _guard = self.lock_instance(&event.instance_id).await;
        match plan {
            Plan::Ignore(_) => Ok(()),
            Plan::Cordon { taint, auto_uncordon } => {
                self.cordon(event, &node, taint, false).await?;
                if auto_uncordon && !self.cfg.rebalance_uncordon_after.is_zero() {
                    self.spawn_auto_uncordon(event.clone(), node, self.cfg.rebalance_uncordon_after);
                }
                Ok(())
            }
            Plan::Drain { taint, at } => {
                if let Some(at) = at {
                    self.wait_until(at - self.cfg.node_termination_grace, event).await;
                }
                self.drain(event, &node, taint).await
            }
            Plan::Undo => self.undo(event, &node, "scheduled-change").await,
            Plan::Launch(action) => self.complete_launch(event, &node, &action).await,
        }
    }

    /// Serialises the handling of one instance's events. Locks nobody holds or waits for are
    /// pruned once the map grows, so a long-running handler does not keep one per instance
    /// it ever saw.
    async fn lock_instance(&self, instance_id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.instances.lock().await;
            if locks.len() >= 1024 {
                locks.retain(|_, l| Arc::strong_count(l) > 1);
            }
            locks.entry(instance_id.to_owned()).or_default().clone()
        };
        lock.lock_owned().await
    }

    async fn wait_until(&self, when: OffsetDateTime, event: &InterruptionEvent) {
        let now = self.clock.now();
        if when > now {
            let wait = Duration::try_from(when - now).unwrap_or_default();
            info!(event_id = %event.id, instance = %event.instance_id, wait_seconds = wait.as_secs(), "drain scheduled");
            tokio::time::sleep(wait).await;
        }
    }

    fn taint_for(&self, key: &str, event: &InterruptionEvent) -> Taint {
        let mut value = event.id.to_string();
        value.truncate(63);
        Taint::new(key, value, self.cfg.taint_effect)
    }

    /// Cordons (with label and taint) unless this instance's handling already did.
    /// Returns the node's state before.
    /// `drains`: the event's plan drains, so it takes over a cordon recorded for a rebalance
    /// recommendation or a scheduled event (which may be undone later) for the same instance.
    async fn cordon(
        &self,
        event: &InterruptionEvent,
        node: &str,
        taint: Option<&str>,
        drains: bool,
    ) -> Result<NodeState, Error> {
        let state = self.nodes.get(node).await?;
        let ours = state.annotations.get(ANN_INSTANCE) == Some(&event.instance_id);
        let recorded = state.annotations.get(ANN_REASON).map(String::as_str);
        let take_over = drains
            && ours
            && state.annotations.get(ANN_PHASE).map(String::as_str) == Some("cordoned")
            && matches!(recorded, Some("rebalance-recommendation" | "scheduled-change"))
            && recorded != Some(event.kind.name());
        if ours && state.annotations.contains_key(ANN_PHASE) && state.unschedulable && !take_over {
            debug!(node, instance = %event.instance_id, "already cordoned for this instance");
            return Ok(state);
        }
        if self.cfg.dry_run {
            info!(node, event_id = %event.id, kind = event.kind.name(), taint, "dry run: would label, taint and cordon the node");
            self.metrics.action("cordon", "dry-run");
            return Ok(state);
        }
        let mut record: MetadataPatch = BTreeMap::from([
            (ANN_INSTANCE.to_owned(), Some(event.instance_id.clone())),
            (ANN_EVENT.to_owned(), Some(event.id.to_string())),
            (ANN_REASON.to_owned(), Some(event.kind.name().to_owned())),
            (ANN_PHASE.to_owned(), Some("cordoned".to_owned())),
            (ANN_CORDONED_AT.to_owned(), Some(rfc3339(self.clock.now()))),
        ]);
        if state.unschedulable && !ours {
            record.insert(ANN_WAS_UNSCHEDULABLE.to_owned(), Some("true".to_owned()));
        }
        if let EventKind::ScheduledChange { code, .. } = &event.kind {
            record.insert(ANN_SCHEDULED_CODE.to_owned(), Some(code.clone()));
        } else if take_over {
            // No uncordon after a reboot for a node taken over by an interruption.
            record.insert(ANN_SCHEDULED_CODE.to_owned(), None);
        }
        let mut with = CordonWith {
            annotations: record,
            ..CordonWith::default()
        };
        if self.cfg.exclude_from_load_balancers {
            with.labels.insert(
                LABEL_EXCLUDE_LB.to_owned(),
                Some(LABEL_EXCLUDE_LB_VALUE.to_owned()),
            );
        }
        if let (true, Some(key)) = (self.cfg.taint_node, taint) {
            with.taint = Some(self.taint_for(key, event));
        }
        // One write where the node actions allow it: the record, label, taint and cordon
        // land together.
        let result = self.nodes.cordon_with(node, &with).await;
        self.metrics
            .action("cordon", if result.is_ok() { "success" } else { "error" });
        result?;
        let latency = self.clock.now() - event.observed_at;
        self.metrics
            .notice_to_cordon
            .observe(latency.as_seconds_f64().max(0.0));
        info!(node, event_id = %event.id, kind = event.kind.name(), "node cordoned");
        Ok(state)
    }

    async fn drain(
        self: &Arc<Self>,
        event: &InterruptionEvent,
        node: &str,
        taint: Option<&str>,
    ) -> Result<(), Error> {
        let before = self.cordon(event, node, taint, true).await?;
        let done = before.annotations.get(ANN_INSTANCE) == Some(&event.instance_id)
            && before.annotations.get(ANN_PHASE).map(String::as_str) == Some("drained");
        let heartbeat = self.spawn_heartbeat(event, node, &before).await;
        let result = if done {
            debug!(node, instance = %event.instance_id, "already drained for this instance");
            Ok(())
        } else if self.cfg.cordon_only {
            Ok(())
        } else {
            self.drain_now(event, node).await
        };
        if let Some(h) = heartbeat {
            h.abort();
        }
        result?;
        if !done {
            self.notify(event, node, &before).await;
        }
        self.complete_lifecycle(event).await
    }

    async fn drain_now(&self, event: &InterruptionEvent, node: &str) -> Result<(), Error> {
        if self.cfg.dry_run {
            info!(node, event_id = %event.id, "dry run: would drain the node");
            self.metrics.action("drain", "dry-run");
            return Ok(());
        }
        let started = tokio::time::Instant::now();
        let report = self.nodes.drain(node, &self.cfg.drain).await;
        self.metrics
            .drain_duration
            .observe(started.elapsed().as_secs_f64());
        self.metrics
            .action("drain", if report.is_ok() { "success" } else { "error" });
        let report = report?;
        info!(node, event_id = %event.id, evicted = report.evicted.len(), forced = report.forced.len(), pdb_retries = report.pdb_retries, "node drained");
        let mut phase: MetadataPatch = BTreeMap::from([(ANN_PHASE.to_owned(), Some("drained".to_owned()))]);
        if self.cfg.out_of_service_taint && !self.cfg.cordon_only {
            self.nodes
                .taint(
                    node,
                    &Taint::new(TAINT_OUT_OF_SERVICE, "nodeshutdown", TaintEffect::NoExecute),
                )
                .await?;
            phase.insert(
                format!("{ANNOTATION_PREFIX}out-of-service"),
                Some("true".to_owned()),
            );
        }
        self.nodes.annotate(node, &phase).await?;
        Ok(())
    }

    /// Sends the webhook once per instance (recorded on the node).
    async fn notify(&self, event: &InterruptionEvent, node: &str, before: &NodeState) {
        let Some(webhook) = &self.webhook else { return };
        let current = match self.nodes.get(node).await {
            Ok(s) => s,
            Err(_) => before.clone(),
        };
        if current.annotations.get(ANN_INSTANCE) == Some(&event.instance_id)
            && current.annotations.contains_key(ANN_WEBHOOK)
        {
            return;
        }
        let data = webhook_data(event, node);
        if self.cfg.dry_run {
            info!(node, body = %webhook.body(&data), "dry run: would send the webhook");
            return;
        }
        match webhook.send(&data).await {
            Ok(()) => {
                self.metrics.action("webhook", "success");
                let mark = BTreeMap::from([(ANN_WEBHOOK.to_owned(), Some(rfc3339(self.clock.now())))]);
                if let Err(e) = self.nodes.annotate(node, &mark).await {
                    warn!(node, error = %e, "recording the webhook on the node failed");
                }
            }
            Err(e) => {
                self.metrics.action("webhook", "error");
                warn!(node, error = %e, "webhook failed");
            }
        }
    }

    async fn complete_lifecycle(&self, event: &InterruptionEvent) -> Result<(), Error> {
        let EventKind::AsgLifecycle(action) = &event.kind else {
            return Ok(());
        };
        if let (Some(delay), Some(_), false) = (
            self.cfg.complete_lifecycle_delay,
            &self.lifecycle,
            self.cfg.dry_run,
        ) {
            tokio::time::sleep(delay).await;
        }
        self.complete_action(event, action).await
    }

    /// CompleteLifecycleAction(CONTINUE) for `action` (only logged in dry run).
    async fn complete_action(
        &self,
        event: &InterruptionEvent,
        action: &LifecycleAction,
    ) -> Result<(), Error> {
        let Some(lifecycle) = &self.lifecycle else {
            return Ok(());
        };
        if self.cfg.dry_run {
            info!(instance = %event.instance_id, hook = %action.hook_name, "dry run: would complete the lifecycle action");
            return Ok(());
        }
        let result = lifecycle.complete(&event.instance_id, action).await;
        self.metrics.action(
            "complete-lifecycle-action",
            if result.is_ok() { "success" } else { "error" },
        );
        result.map_err(|message| Error::Lifecycle {
            instance: event.instance_id.clone(),
            message,
        })
    }

    /// Heartbeats an Auto Scaling terminate action while the drain runs. The start time is
    /// recorded on the node, so after a restart the budget continues instead of starting over.
    async fn spawn_heartbeat(
        self: &Arc<Self>,
        event: &InterruptionEvent,
        node: &str,
        state: &NodeState,
    ) -> Option<tokio::task::AbortHandle> {
        let EventKind::AsgLifecycle(action) = &event.kind else {
            return None;
        };
        let (interval, until) = self.cfg.heartbeat?;
        let lifecycle = self.lifecycle.clone()?;
        if self.cfg.dry_run {
            return None;
        }
        let now = self.clock.now();
        let since = state
            .annotations
            .get(ANN_HEARTBEAT_SINCE)
            .filter(|_| state.annotations.get(ANN_INSTANCE) == Some(&event.instance_id))
            .and_then(|s| OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok());
        let since = match since {
            Some(s) => s,
            None => {
                let mark = BTreeMap::from([(ANN_HEARTBEAT_SINCE.to_owned(), Some(rfc3339(now)))]);
                if let Err(e) = self.nodes.annotate(node, &mark).await {
                    warn!(node, error = %e, "recording the heartbeat start failed");
                }
                now
            }
        };
        let left = Duration::try_from(since + until - now).unwrap_or_default();
        let (instance, action, metrics) = (event.instance_id.clone(), action.clone(), self.metrics.clone());
        Some(
            tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + left;
                loop {
                    tokio::time::sleep(interval).await;
                    if tokio::time::Instant::now() >= deadline {
                        break;
                    }
                    let r = lifecycle.heartbeat(&instance, &action).await;
                    metrics.action("lifecycle-heartbeat", if r.is_ok() { "success" } else { "error" });
                }
            })
            .abort_handle(),
        )
    }

    /// Uncordons a node we cordoned for `reason`, unless it is draining for something else.
    async fn undo(&self, event: &InterruptionEvent, node: &str, reason: &str) -> Result<(), Error> {
        let state = self.nodes.get(node).await?;
        let a = &state.annotations;
        if a.get(ANN_INSTANCE) != Some(&event.instance_id)
            || a.get(ANN_REASON).map(String::as_str) != Some(reason)
        {
            debug!(node, "nothing of ours to undo");
            return Ok(());
        }
        if a.get(ANN_PHASE).map(String::as_str) == Some("drained") {
            debug!(node, "already drained: not undone");
            return Ok(());
        }
        self.restore(event, node, &state).await
    }

    /// Uncordons (unless someone else had cordoned first), removes our taints, label and
    /// annotations.
    async fn restore(&self, event: &InterruptionEvent, node: &str, state: &NodeState) -> Result<(), Error> {
        if self.cfg.dry_run {
            info!(
                node,
                "dry run: would uncordon the node and remove the handler's taints and labels"
            );
            return Ok(());
        }
        let result = async {
            for key in [TAINT_SPOT_ITN, TAINT_REBALANCE, TAINT_ASG, TAINT_SCHEDULED] {
                if state.taints.iter().any(|t| t.key == key) {
                    self.nodes.untaint(node, key, self.cfg.taint_effect).await?;
                }
            }
            if state.labels.get(LABEL_EXCLUDE_LB).map(String::as_str) == Some(LABEL_EXCLUDE_LB_VALUE) {
                self.nodes
                    .label(node, &BTreeMap::from([(LABEL_EXCLUDE_LB.to_owned(), None)]))
                    .await?;
            }
            if !state.annotations.contains_key(ANN_WAS_UNSCHEDULABLE) {
                self.nodes.uncordon(node).await?;
            }
            let clear: MetadataPatch = state
                .annotations
                .keys()
                .filter(|k| k.starts_with(ANNOTATION_PREFIX))
                .map(|k| (k.clone(), None))
                .collect();
            self.nodes.annotate(node, &clear).await
        }
        .await;
        self.metrics
            .action("uncordon", if result.is_ok() { "success" } else { "error" });
        result?;
        info!(node, event_id = %event.id, "node uncordoned");
        Ok(())
    }

    fn spawn_auto_uncordon(self: &Arc<Self>, event: InterruptionEvent, node: String, after: Duration) {
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _guard = this.lock_instance(&event.instance_id).await;
            if let Err(e) = this.undo(&event, &node, "rebalance-recommendation").await {
                warn!(node, error = %e, "automatic uncordon after rebalance failed");
            }
        });
    }

    /// Completes a launch lifecycle action once the node is Ready.
    async fn complete_launch(
        &self,
        event: &InterruptionEvent,
        node: &str,
        action: &LifecycleAction,
    ) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + self.cfg.launch_ready_timeout;
        loop {
            match self.nodes.get(node).await {
                Ok(state) if state.ready => break,
                Ok(_) | Err(spot_core::node::Error::NodeNotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::NotReady(node.to_owned()));
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        self.complete_action(event, action).await
    }

    /// At start-up: rebalance cordons recorded on `nodes` by an earlier process (restarted,
    /// or a former leader) are undone when their time is up, as that process would have done:
    /// the pending uncordon lives only in memory, and the message that caused it is deleted.
    /// Returns how many uncordons were scheduled.
    pub async fn resume_auto_uncordons(self: &Arc<Self>, nodes: &[String]) -> usize {
        if self.cfg.rebalance_uncordon_after.is_zero() {
            return 0;
        }
        let mut scheduled = 0;
        for node in nodes {
            let state = match self.nodes.get(node).await {
                Ok(state) => state,
                Err(e) => {
                    warn!(node, error = %e, "reading the node to resume its automatic uncordon failed");
                    continue;
                }
            };
            let a = &state.annotations;
            if a.get(ANN_REASON).map(String::as_str) != Some("rebalance-recommendation")
                || a.get(ANN_PHASE).map(String::as_str) != Some("cordoned")
            {
                continue;
            }
            let Some(instance) = a.get(ANN_INSTANCE).cloned() else {
                continue;
            };
            let now = self.clock.now();
            let left = a
                .get(ANN_CORDONED_AT)
                .and_then(|s| OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok())
                .map_or(self.cfg.rebalance_uncordon_after, |at| {
                    Duration::try_from(at + self.cfg.rebalance_uncordon_after - now).unwrap_or_default()
                });
            let mut event = InterruptionEvent::new(
                instance,
                EventKind::RebalanceRecommendation,
                "resume-auto-uncordon",
                now,
                spot_core::event::Origin::Imds,
            );
            if let Some(id) = a.get(ANN_EVENT) {
                event.id = spot_core::event::EventId::from_raw(id.clone());
            }
            info!(
                node,
                wait_seconds = left.as_secs(),
                "resuming the automatic uncordon after a rebalance cordon"
            );
            self.spawn_auto_uncordon(event, node.clone(), left);
            scheduled += 1;
        }
        scheduled
    }

    /// Metadata mode at start-up: a node cordoned for a scheduled reboot that has since
    /// rebooted (its uptime is shorter than the time since the cordon) is uncordoned.
    pub async fn uncordon_after_reboot(&self, node: &str, uptime: Duration) -> Result<bool, Error> {
        let state = self.nodes.get(node).await?;
        let a = &state.annotations;
        let is_reboot = a.get(ANN_SCHEDULED_CODE).is_some_and(|c| c.contains("reboot"));
        let cordoned_at = a
            .get(ANN_CORDONED_AT)
            .and_then(|s| OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok());
        let (true, Some(at)) = (is_reboot, cordoned_at) else {
            return Ok(false);
        };
        if self.clock.now() - at < uptime {
            return Ok(false);
        }
        let instance = a.get(ANN_INSTANCE).cloned().unwrap_or_default();
        let event = InterruptionEvent::new(
            instance,
            EventKind::RebalanceRecommendation,
            "uncordon-after-reboot",
            self.clock.now(),
            spot_core::event::Origin::Imds,
        );
        self.restore(&event, node, &state).await?;
        Ok(true)
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// NTH's event kind names, for webhooks.
fn nth_kind(kind: &EventKind) -> &'static str {
    match kind {
        EventKind::SpotInterruption { .. } => "SPOT_ITN",
        EventKind::RebalanceRecommendation => "REBALANCE_RECOMMENDATION",
        EventKind::ScheduledChange { .. } => "SCHEDULED_EVENT",
        EventKind::StateChange { .. } => "STATE_CHANGE",
        EventKind::AsgLifecycle(a) if a.transition == LifecycleTransition::Launching => {
            "ASG_LAUNCH_LIFECYCLE"
        }
        EventKind::AsgLifecycle(_) => "ASG_LIFECYCLE",
        EventKind::CapacityReservationInterruption => "CAPACITY_RESERVATION_INTERRUPTION",
    }
}

/// The webhook fields for an event.
pub fn webhook_data(event: &InterruptionEvent, node: &str) -> BTreeMap<&'static str, String> {
    let (description, start, end, state, group) = match &event.kind {
        EventKind::SpotInterruption { action, deadline } => (
            format!(
                "Spot interruption notice: the instance will {action:?} at {}",
                rfc3339(*deadline)
            )
            .to_lowercase(),
            *deadline,
            None,
            String::new(),
            String::new(),
        ),
        EventKind::ScheduledChange {
            code,
            not_before,
            not_after,
            state,
            description,
        } => (
            format!("{code}: {description}"),
            *not_before,
            *not_after,
            format!("{state:?}").to_lowercase(),
            String::new(),
        ),
        EventKind::AsgLifecycle(a) => (
            format!(
                "Auto Scaling lifecycle action {} ({:?})",
                a.hook_name, a.transition
            ),
            event.observed_at,
            None,
            String::new(),
            a.group_name.clone(),
        ),
        EventKind::StateChange { state } => (
            format!("EC2 instance state changed to {state:?}").to_lowercase(),
            event.observed_at,
            None,
            format!("{state:?}").to_lowercase(),
            String::new(),
        ),
        EventKind::RebalanceRecommendation => (
            "Rebalance recommendation: elevated risk of interruption".to_owned(),
            event.observed_at,
            None,
            String::new(),
            String::new(),
        ),
        EventKind::CapacityReservationInterruption => (
            "Capacity reservation interruption".to_owned(),
            event.observed_at,
            None,
            String::new(),
            String::new(),
        ),
    };
    BTreeMap::from([
        ("EventID", event.id.to_string()),
        ("Kind", nth_kind(&event.kind).to_owned()),
        ("Monitor", event.kind.name().to_owned()),
        ("Description", description),
        ("State", state),
        ("NodeName", node.to_owned()),
        ("InstanceID", event.instance_id.clone()),
        ("AutoScalingGroupName", group),
        ("StartTime", rfc3339(start)),
        ("EndTime", end.map(rfc3339).unwrap_or_default()),
    ])
}

#[cfg(test)]
mod tests;
