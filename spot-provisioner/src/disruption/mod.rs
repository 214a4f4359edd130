//! The disruption controller: consolidation (emptiness, drift, multi- and single-node),
//! expiration and `terminationGracePeriod`, after Karpenter's disruption controller
//! (`karpenter.md` §3), running next to the [`Provisioner`]:
//!
//! ```no_run
//! # async fn demo(provisioner: std::sync::Arc<spot_provisioner::Provisioner>) {
//! use spot_provisioner::disruption::{Disruption, DisruptionSettings};
//! Disruption::new(provisioner, DisruptionSettings::default())
//!     .run(std::future::pending())
//!     .await
//!     .unwrap();
//! # }
//! ```
//!
//! Every [`DisruptionSettings::poll_interval`] (10 s) a pass:
//!
//! 1. **Housekeeping.** Records pod events (`status.lastPodEventTime` when the pods of a
//!    node changed), sets and clears the `Drifted` condition (the NodePool template hash
//!    `karpenter.sh/nodepool-hash` stamped at launch, or requirements no longer met),
//!    deletes expired NodeClaims (`expireAfter`: not budget-limited, not blocked by
//!    `karpenter.sh/do-not-disrupt`), force-deletes the pods of deleting NodeClaims whose
//!    `terminationGracePeriod` runs out (each at `deadline − its terminationGracePeriodSeconds`,
//!    as Karpenter), removes stale `karpenter.sh/disrupted` taints, and resumes or rolls back
//!    the commands a previous process left half-done.
//! 2. **Commands.** Builds [`ClusterState`](spot_core::disruption::ClusterState) from the
//!    API objects ([`state`]), runs [`compute_commands`], waits
//!    [`DisruptionSettings::validation_delay`] (15 s), rebuilds the state and keeps the
//!    commands [`validate_command`] still accepts (budgets, `do-not-disrupt`, PDBs and the
//!    simulation are checked again).
//! 3. **Execution** ([`orchestrate`]), in the background: the candidates get a disruption
//!    record, the `DisruptionReason` condition and the `karpenter.sh/disrupted:NoSchedule`
//!    taint; the replacement (if any) is created and launched through the provisioner;
//!    once it is `Initialized` the candidates' NodeClaims are deleted, and the provisioner's
//!    termination path drains and terminates them. A command that fails (a replacement that
//!    does not launch or initialize within [`DisruptionSettings::replacement_timeout`])
//!    un-taints its candidates and clears their records.
//!
//! Nothing lives only in memory: a restarted controller finds the records on the NodeClaims
//! and the replacements that name their command, and carries on.

pub mod orchestrate;
pub mod state;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use spot_core::disruption::drift::{nodepool_drift, requirements_drift};
use spot_core::disruption::{Command, ConsolidationOptions, Reason, compute_commands, validate_command};
use spot_core::node::TaintEffect;
use spot_core::scheduling::NodePoolTemplate;
use time::OffsetDateTime;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use self::orchestrate::{Record, WaitError};
use self::state::View;
use crate::api::NodeClaim;
use crate::api::nodeclaim::conditions;
use crate::provisioner::{DISRUPTED_TAINT, Provisioner};

/// Errors of the disruption controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the cluster failed.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::Error),
    /// Creating a replacement failed.
    #[error(transparent)]
    Provisioner(#[from] crate::provisioner::Error),
    /// An API call failed.
    #[error("{action}: {source}")]
    Api {
        /// What was being done.
        action: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// A node action failed.
    #[error("{action} node {node}: {message}")]
    Node {
        /// The node.
        node: String,
        /// What was being done.
        action: &'static str,
        /// The error.
        message: String,
    },
    /// A setting is invalid.
    #[error("disruption settings: {field}: invalid value {value}: {reason}")]
    Setting {
        /// The setting.
        field: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A computation on the blocking pool failed.
    #[error("{what}: {message}")]
    Task {
        /// What was computed.
        what: &'static str,
        /// The join error.
        message: String,
    },
    /// A NodeClaim could not be marked for a command: it is gone, deleting, or another
    /// command owns it.
    #[error("command {command}: NodeClaim {claim}: {why}")]
    TakenOver {
        /// The NodeClaim.
        claim: String,
        /// The command.
        command: String,
        /// Why.
        why: String,
    },
    /// A command's replacements did not come up.
    #[error("command {command}: {source}")]
    Replacement {
        /// The command.
        command: String,
        /// Why.
        #[source]
        source: WaitError,
    },
}

/// Settings of the disruption controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisruptionSettings {
    /// How often a pass runs when the last one did nothing (Karpenter: 10 s).
    pub poll_interval: Duration,
    /// How long after computing a command it is validated again and executed (Karpenter:
    /// 15 s).
    pub validation_delay: Duration,
    /// How long a command waits for its replacements to be initialized before it is rolled
    /// back (Karpenter gives up after 10 minutes at least).
    pub replacement_timeout: Duration,
    /// While unbound pods exist, nodes initialized less than this ago count as nominated
    /// for them and are not disrupted (Karpenter: twice the 10 s batch window).
    pub nomination_window: Duration,
    /// The consolidation methods' options (spot-to-spot, multi-node limits, scheduler).
    pub options: ConsolidationOptions,
    /// The NodePool templates are rebuilt at least this often (prices move), and whenever a
    /// NodePool or node class changes.
    pub templates_max_age: Duration,
}

impl Default for DisruptionSettings {
    fn default() -> Self {
        DisruptionSettings {
            poll_interval: Duration::from_secs(10),
            validation_delay: spot_core::disruption::consolidation::COMMAND_VALIDATION_DELAY,
            replacement_timeout: Duration::from_secs(10 * 60),
            nomination_window: Duration::from_secs(20),
            options: ConsolidationOptions::default(),
            templates_max_age: Duration::from_secs(30),
        }
    }
}

impl DisruptionSettings {
    /// Checks the settings; the error names the first invalid one.
    pub fn validate(&self) -> Result<(), Error> {
        let positive = |field: &'static str, d: Duration| {
            if d.is_zero() {
                Err(Error::Setting {
                    field,
                    value: format!("{d:?}"),
                    reason: "must be positive",
                })
            } else {
                Ok(())
            }
        };
        positive("poll_interval", self.poll_interval)?;
        positive("replacement_timeout", self.replacement_timeout)?;
        if self.options.multi_node_max_candidates < 2 {
            return Err(Error::Setting {
                field: "options.multi_node_max_candidates",
                value: self.options.multi_node_max_candidates.to_string(),
                reason: "must be at least 2",
            });
        }
        Ok(())
    }
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PassReport {
    /// NodeClaims deleted because they expired.
    pub expired: Vec<String>,
    /// NodeClaims newly marked `Drifted`.
    pub drifted: Vec<String>,
    /// Pods force-deleted because their NodeClaim's `terminationGracePeriod` ran out.
    pub forced: Vec<String>,
    /// Commands resumed (or rolled back) after a restart.
    pub resumed: Vec<String>,
    /// Commands computed.
    pub computed: Vec<Command>,
    /// Commands that failed validation, with why.
    pub invalid: Vec<String>,
    /// Ids of the commands started.
    pub started: Vec<String>,
    /// Candidates that may not be disrupted now, with why.
    pub blocked: Vec<String>,
}

/// What a pass would do now (see [`Disruption::plan`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// The commands [`compute_commands`] returns for the cluster as it is.
    pub commands: Vec<Command>,
    /// The candidates that may be disrupted.
    pub candidates: Vec<String>,
    /// The candidates that may not be disrupted now, with why.
    pub blocked: Vec<String>,
}

/// The reasons this controller's commands carry (the interruption controller owns the
/// others).
const OWN_REASONS: [Reason; 3] = [Reason::Empty, Reason::Underutilized, Reason::Drifted];

fn own(reason: &str) -> bool {
    OWN_REASONS.iter().any(|r| r.to_string() == reason)
}

/// The disruption controller; see the [module documentation](self).
pub struct Disruption {
    provisioner: Arc<Provisioner>,
    settings: DisruptionSettings,
    /// A hash of the moving pods of each NodeClaim's node at the last pass.
    pod_sets: Mutex<HashMap<String, u64>>,
    /// Commands executing in this process.
    running: Mutex<HashSet<String>>,
    /// The NodeClaims of the commands executing in this process (see [`View::busy`]).
    busy: Mutex<BTreeSet<String>>,
    templates: state::TemplateCache,
    tasks: Mutex<JoinSet<()>>,
}

impl std::fmt::Debug for Disruption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disruption")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Disruption {
    /// A controller acting through `provisioner` (its client, cloud, catalog, metrics and
    /// clock).
    pub fn new(provisioner: Arc<Provisioner>, settings: DisruptionSettings) -> Disruption {
        Disruption {
            provisioner,
            templates: state::TemplateCache::new(settings.templates_max_age),
            settings,
            pod_sets: Mutex::default(),
            running: Mutex::default(),
            busy: Mutex::default(),
            tasks: Mutex::new(JoinSet::new()),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &DisruptionSettings {
        &self.settings
    }

    /// Runs passes until `shutdown` resolves: every [`DisruptionSettings::poll_interval`],
    /// or after a second when the last pass started a command. Commands still executing at
    /// shutdown are stopped; their records resume them at the next start.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), Error> {
        self.settings.validate()?;
        let me = Arc::new(self);
        let main = async {
            loop {
                let acted = match me.reconcile().await {
                    Ok(r) => {
                        if !r.started.is_empty() || !r.expired.is_empty() {
                            info!(
                                started = r.started.len(),
                                expired = r.expired.len(),
                                invalid = r.invalid.len(),
                                "disruption pass"
                            );
                        }
                        !r.started.is_empty()
                    }
                    Err(e) => {
                        warn!(error = %e, "disruption pass failed");
                        false
                    }
                };
                let wait = if acted {
                    me.settings.poll_interval.min(Duration::from_secs(1))
                } else {
                    me.settings.poll_interval
                };
                tokio::time::sleep(wait).await;
            }
        };
        tokio::select! {
            () = main => {}
            () = shutdown => {}
        }
        lock(&me.tasks).abort_all();
        Ok(())
    }

    fn client(&self) -> &Client {
        self.provisioner.client()
    }

    fn now(&self) -> OffsetDateTime {
        self.provisioner.clock().now()
    }

    /// Reads the cluster, with the NodeClaims of the commands executing here as busy.
    async fn read_view(&self) -> Result<View, Error> {
        let mut view = View::read(self.client(), self.now()).await?;
        view.busy = lock(&self.busy).clone();
        Ok(view)
    }

    /// What a pass would do now, without acting (no housekeeping, no validation delay, no
    /// execution): for dry runs and diagnostics.
    pub async fn plan(&self) -> Result<Plan, Error> {
        let view = self.read_view().await?;
        let built = state::build(
            &view,
            &self.provisioner,
            self.templates.get(&self.provisioner, &view.snapshot).await,
            &self.settings,
        );
        let (state, commands) = self.compute(built.state, view.now).await?;
        Ok(Plan {
            commands,
            candidates: state.candidates.iter().map(|c| c.node_name.clone()).collect(),
            blocked: built.blocked.iter().map(ToString::to_string).collect(),
        })
    }

    /// [`compute_commands`] on the blocking pool (it is CPU-bound); the state comes back.
    async fn compute(
        &self,
        state: spot_core::disruption::ClusterState,
        now: OffsetDateTime,
    ) -> Result<(spot_core::disruption::ClusterState, Vec<Command>), Error> {
        let options = self.settings.options.clone();
        tokio::task::spawn_blocking(move || {
            let commands = compute_commands(&state, &options, now);
            (state, commands)
        })
        .await
        .map_err(|e| Error::Task {
            what: "computing disruption commands",
            message: e.to_string(),
        })
    }

    /// [`validate_command`] of each command on the blocking pool.
    async fn validate(
        &self,
        commands: Vec<Command>,
        state: spot_core::disruption::ClusterState,
        now: OffsetDateTime,
    ) -> Result<Vec<(Command, Result<(), String>)>, Error> {
        let options = self.settings.options.clone();
        tokio::task::spawn_blocking(move || {
            commands
                .into_iter()
                .map(|c| {
                    let valid = validate_command(&c, &state, &options, now).map_err(|e| e.to_string());
                    (c, valid)
                })
                .collect()
        })
        .await
        .map_err(|e| Error::Task {
            what: "validating disruption commands",
            message: e.to_string(),
        })
    }

    /// One pass (see the [module documentation](self)); the commands it starts execute in
    /// the background.
    pub async fn reconcile(self: &Arc<Self>) -> Result<PassReport, Error> {
        let mut report = PassReport::default();
        while lock(&self.tasks).try_join_next().is_some() {}
        let pass = tokio::time::Instant::now();
        let view = self.read_view().await?;
        debug!(
            ms = pass.elapsed().as_millis() as u64,
            "disruption pass: cluster read"
        );
        let changed = self.housekeeping(&view, &mut report).await;
        debug!(
            ms = pass.elapsed().as_millis() as u64,
            changed, "disruption pass: housekeeping done"
        );
        let view = if changed { self.read_view().await? } else { view };
        let built = state::build(
            &view,
            &self.provisioner,
            self.templates.get(&self.provisioner, &view.snapshot).await,
            &self.settings,
        );
        for (pool, e) in &built.invalid_pools {
            warn!(nodepool = %pool, error = %e, "NodePool skipped by disruption");
        }
        report.blocked = built.blocked.iter().map(ToString::to_string).collect();
        let started = tokio::time::Instant::now();
        let blocked = built.blocked.len();
        let (state, commands) = self.compute(built.state, view.now).await?;
        self.provisioner
            .metrics()
            .disruption_evaluation_seconds
            .observe(started.elapsed().as_secs_f64());
        debug!(
            ms = pass.elapsed().as_millis() as u64,
            candidates = state.candidates.len(),
            blocked,
            commands = commands.len(),
            "disruption pass: computed"
        );
        if commands.is_empty() {
            return Ok(report);
        }
        for c in &commands {
            self.provisioner
                .metrics()
                .command(&c.reason.to_string(), "computed");
            debug!(reason = %c.reason, candidates = ?c.candidates, replacements = c.replacements.len(), savings = c.savings_per_hour, "disruption command computed");
        }
        report.computed = commands.clone();
        tokio::time::sleep(self.settings.validation_delay).await;
        let view = Arc::new(self.read_view().await?);
        let built = state::build(
            &view,
            &self.provisioner,
            self.templates.get(&self.provisioner, &view.snapshot).await,
            &self.settings,
        );
        let templates = built.state.templates.clone();
        for (command, valid) in self.validate(commands, built.state, view.now).await? {
            if let Err(why) = valid {
                self.provisioner
                    .metrics()
                    .command(&command.reason.to_string(), "invalid");
                info!(reason = %command.reason, candidates = ?command.candidates, error = %why, "disruption command no longer valid");
                report.invalid.push(why);
                continue;
            }
            let id = command_id(&view, &command);
            if !lock(&self.running).insert(id.clone()) {
                continue;
            }
            report.started.push(id.clone());
            let by_node = view.claims_by_node();
            let claims: Vec<String> = command
                .candidates
                .iter()
                .filter_map(|n| by_node.get(n).map(|c| c.name_any()))
                .collect();
            lock(&self.busy).extend(claims.iter().cloned());
            let me = self.clone();
            let view = view.clone();
            let templates = templates.clone();
            lock(&self.tasks).spawn(async move {
                if let Err(e) = me.execute(&id, &command, &view, &templates).await {
                    warn!(command = %id, error = %e, "disruption command failed");
                }
                let mut busy = lock(&me.busy);
                for c in &claims {
                    busy.remove(c);
                }
                drop(busy);
                lock(&me.running).remove(&id);
            });
        }
        Ok(report)
    }

    /// Carries out a validated command (see [`orchestrate`]).
    async fn execute(
        &self,
        id: &str,
        command: &Command,
        view: &View,
        templates: &[NodePoolTemplate],
    ) -> Result<(), Error> {
        let by_node = view.claims_by_node();
        let candidates: Vec<(&NodeClaim, &str)> = command
            .candidates
            .iter()
            .filter_map(|n| by_node.get(n).map(|c| (*c, n.as_str())))
            .collect();
        let reason = command.reason.to_string();
        let record = Record {
            reason: reason.clone(),
            command: id.to_owned(),
            replacements: command.replacements.len(),
            started: view.now,
        };
        info!(command = %id, %reason, candidates = ?command.candidates, replacements = command.replacements.len(), savings_per_hour = command.savings_per_hour, "disrupting");
        let mut marked = Vec::new();
        let outcome = async {
            for (claim, node) in &candidates {
                orchestrate::mark(&self.provisioner, claim, Some(node), &record, false).await?;
                marked.push((claim.name_any(), node.to_string()));
            }
            if !command.replacements.is_empty() {
                let replacements: Vec<(spot_core::scheduling::NewNodeClaim, String)> = command
                    .replacements
                    .iter()
                    .map(|c| (c.clone(), id.to_owned()))
                    .collect();
                let created = orchestrate::create_replacements(
                    &self.provisioner,
                    &view.snapshot,
                    templates,
                    &replacements,
                    if command.reason == Reason::Drifted {
                        "drift"
                    } else {
                        "consolidation"
                    },
                )
                .await?;
                let names: Vec<String> = created.iter().map(|(c, _)| c.name_any()).collect();
                orchestrate::launch(&self.provisioner, created).await;
                orchestrate::wait_initialized(
                    self.client(),
                    &names,
                    self.provisioner.settings().resync,
                    tokio::time::Instant::now() + self.settings.replacement_timeout,
                )
                .await
                .map_err(|source| Error::Replacement {
                    command: id.to_owned(),
                    source,
                })?;
            }
            let names: Vec<String> = candidates.iter().map(|(c, _)| c.name_any()).collect();
            orchestrate::delete_claims(self.client(), &names).await
        }
        .await;
        let metrics = self.provisioner.metrics();
        match outcome {
            Ok(()) => {
                metrics.command(&reason, "executed");
                for (claim, _) in &candidates {
                    let pool = claim
                        .labels()
                        .get(spot_core::labels::NODE_POOL)
                        .cloned()
                        .unwrap_or_default();
                    metrics.disrupted(&reason, &pool);
                }
                if command.savings_per_hour > 0.0 && command.reason != Reason::Drifted {
                    metrics
                        .consolidation_savings_per_hour
                        .inc_by(command.savings_per_hour);
                }
                Ok(())
            }
            Err(e) => {
                metrics.command(&reason, "failed");
                for (claim, node) in &marked {
                    if let Err(e) = orchestrate::unmark(&self.provisioner, claim, Some(node), id).await {
                        warn!(nodeclaim = %claim, error = %e, "rolling back the disruption failed");
                    }
                }
                Err(e)
            }
        }
    }

    /// Housekeeping (see the [module documentation](self)); returns whether it changed any
    /// object the pass reads.
    async fn housekeeping(self: &Arc<Self>, view: &View, report: &mut PassReport) -> bool {
        let mut changed = false;
        changed |= self.record_pod_events(view).await;
        changed |= self.update_drift(view, report).await;
        changed |= self.expire(view, report).await;
        self.enforce_grace_periods(view, report).await;
        self.clear_stale_taints(view).await;
        changed |= self.resume(view, report);
        changed
    }

    /// Sets `status.lastPodEventTime` on the NodeClaims whose node's pods changed since the
    /// last pass (a pod bound, or one gone or terminating). A claim seen for the first time
    /// (after a restart) gets an event at its newest pod's creation when that pod is newer
    /// than the recorded event: pods bound while no controller ran still restart the
    /// `consolidateAfter` window. A failed write is detected again at the next pass.
    async fn record_pod_events(&self, view: &View) -> bool {
        let pods = state::node_pods(&view.snapshot);
        let mut seen: HashMap<String, u64> = HashMap::new();
        let mut events: Vec<(String, OffsetDateTime)> = Vec::new();
        let before = lock(&self.pod_sets).clone();
        for claim in &view.snapshot.claims {
            let Some(node) = view.snapshot.node_of(claim) else {
                continue;
            };
            let moving: Vec<&spot_core::pod::PodSpec> = pods
                .get(&node.name_any())
                .into_iter()
                .flatten()
                .filter(|(p, terminating)| {
                    !terminating && spot_core::disruption::candidate::is_reschedulable(p)
                })
                .map(|(p, _)| p.as_ref())
                .collect();
            let mut uids: Vec<&str> = moving.iter().map(|p| p.uid.as_str()).collect();
            uids.sort_unstable();
            let mut h = std::collections::hash_map::DefaultHasher::new();
            uids.hash(&mut h);
            let hash = h.finish();
            let name = claim.name_any();
            match before.get(&name) {
                Some(&was) if was != hash => events.push((name.clone(), view.now)),
                Some(_) => {}
                None => {
                    let recorded = claim
                        .status
                        .as_ref()
                        .and_then(|s| s.last_pod_event_time.as_ref())
                        .map(state::offset_time);
                    let newest = moving.iter().map(|p| p.created_unix_ms).max().and_then(|ms| {
                        OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
                    });
                    if let (Some(recorded), Some(newest)) = (recorded, newest)
                        && newest > recorded
                    {
                        events.push((name.clone(), newest.min(view.now)));
                    }
                }
            }
            seen.insert(name, hash);
        }
        let api = Api::<NodeClaim>::all(self.client().clone());
        let mut recorded = false;
        for (name, at) in &events {
            let patch = json!({"status": {"lastPodEventTime": jiff(*at)}});
            match api
                .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => recorded = true,
                Err(e) => {
                    debug!(nodeclaim = %name, error = %e, "recording the last pod event failed; next pass");
                    // The old pod set stays: the change is seen again.
                    match before.get(name) {
                        Some(&was) => {
                            seen.insert(name.clone(), was);
                        }
                        None => {
                            seen.remove(name);
                        }
                    }
                }
            }
        }
        *lock(&self.pod_sets) = seen;
        recorded
    }

    /// Sets the `Drifted` condition on drifted NodeClaims and clears it on the others.
    async fn update_drift(&self, view: &View, report: &mut PassReport) -> bool {
        let mut changed = false;
        for claim in &view.snapshot.claims {
            if claim.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let Some(node) = view.snapshot.node_of(claim) else {
                continue;
            };
            let Some(pool) = claim
                .labels()
                .get(spot_core::labels::NODE_POOL)
                .and_then(|p| view.pool(p))
            else {
                continue;
            };
            let drift = nodepool_drift(&pool.template_hash(), claim.annotations()).or_else(|| {
                pool.requirements()
                    .ok()
                    .and_then(|r| requirements_drift(&r, &state::instance_labels(claim, Some(node))))
            });
            let has = state::true_since(claim, conditions::DRIFTED).is_some();
            let name = claim.name_any();
            let result = match (&drift, has) {
                (Some(why), false) => {
                    let text = why.to_string();
                    let kind = text.split(':').next().unwrap_or("Drifted").to_owned();
                    info!(nodeclaim = %name, reason = %text, "drifted");
                    report.drifted.push(name.clone());
                    orchestrate::set_condition(
                        self.client(),
                        claim,
                        conditions::DRIFTED,
                        Some((&kind, &text)),
                        view.now,
                    )
                    .await
                }
                (None, true) => {
                    orchestrate::set_condition(self.client(), claim, conditions::DRIFTED, None, view.now)
                        .await
                }
                _ => continue,
            };
            changed = true;
            if let Err(e) = result {
                debug!(nodeclaim = %name, error = %e, "updating the Drifted condition failed; next pass");
            }
        }
        changed
    }

    /// Deletes the NodeClaims past their `expireAfter`.
    async fn expire(&self, view: &View, report: &mut PassReport) -> bool {
        let mut changed = false;
        for claim in &view.snapshot.claims {
            if claim.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let Some(after) = claim.spec.expire_after.duration() else {
                continue;
            };
            let Ok(after) = time::Duration::try_from(after) else {
                continue;
            };
            if view.now < state::created(claim) + after {
                continue;
            }
            let name = claim.name_any();
            info!(nodeclaim = %name, "expired: deleting");
            if let Err(e) = orchestrate::set_condition(
                self.client(),
                claim,
                conditions::DISRUPTION_REASON,
                Some((&Reason::Expired.to_string(), "expireAfter elapsed")),
                view.now,
            )
            .await
            {
                debug!(nodeclaim = %name, error = %e, "recording the disruption reason failed");
            }
            match orchestrate::delete_claims(self.client(), std::slice::from_ref(&name)).await {
                Ok(()) => {
                    let pool = claim
                        .labels()
                        .get(spot_core::labels::NODE_POOL)
                        .cloned()
                        .unwrap_or_default();
                    self.provisioner
                        .metrics()
                        .disrupted(&Reason::Expired.to_string(), &pool);
                    report.expired.push(name);
                    changed = true;
                }
                Err(e) => warn!(nodeclaim = %name, error = %e, "deleting an expired NodeClaim failed"),
            }
        }
        changed
    }

    /// Deletes the pods of deleting NodeClaims whose `terminationGracePeriod` runs out: each
    /// pod at `deadline − its terminationGracePeriodSeconds`, with the time left as its grace
    /// period, bypassing PodDisruptionBudgets and `do-not-disrupt` (as Karpenter).
    async fn enforce_grace_periods(&self, view: &View, report: &mut PassReport) {
        for claim in &view.snapshot.claims {
            let (Some(deleted), Some(tgp)) = (
                claim.metadata.deletion_timestamp.as_ref(),
                claim.spec.termination_grace_period,
            ) else {
                continue;
            };
            let Some(node) = view.snapshot.node_of(claim) else {
                continue;
            };
            let Ok(tgp) = time::Duration::try_from(tgp.get()) else {
                continue;
            };
            let deadline = state::offset_time(deleted) + tgp;
            let node = node.name_any();
            for pod in view.snapshot.pods.iter().filter(|p| {
                p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.as_str())
                    && !spot_k8s::convert::is_terminal(p)
            }) {
                let own_grace = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
                    .unwrap_or(30);
                if view.now < deadline - time::Duration::seconds(own_grace) {
                    continue;
                }
                let ends_in_time = pod
                    .metadata
                    .deletion_timestamp
                    .as_ref()
                    .is_some_and(|t| state::offset_time(t) <= deadline);
                if ends_in_time {
                    continue;
                }
                let left = (deadline - view.now).whole_seconds().max(0);
                let ns = pod.namespace().unwrap_or_default();
                let name = pod.name_any();
                let dp = DeleteParams {
                    grace_period_seconds: Some(u32::try_from(left).unwrap_or(0)),
                    ..DeleteParams::default()
                };
                match Api::<Pod>::namespaced(self.client().clone(), &ns)
                    .delete(&name, &dp)
                    .await
                {
                    Ok(_) => {
                        info!(pod = %format!("{ns}/{name}"), node = %node, grace_seconds = left, "terminationGracePeriod reached: deleting pod");
                        report.forced.push(format!("{ns}/{name}"));
                    }
                    Err(e) => {
                        debug!(pod = %format!("{ns}/{name}"), error = %e, "deleting pod at the grace deadline failed")
                    }
                }
            }
        }
    }

    /// Removes `karpenter.sh/disrupted` taints left on nodes whose NodeClaim is neither
    /// deleting nor part of a command (Karpenter clears them at start).
    async fn clear_stale_taints(&self, view: &View) {
        for (node_name, claim) in view.claims_by_node() {
            if View::claim_disrupting(claim) {
                continue;
            }
            let tainted = view
                .snapshot
                .nodes
                .iter()
                .find(|n| n.name_any() == node_name)
                .and_then(|n| n.spec.as_ref())
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|ts| ts.iter().any(|t| t.key == DISRUPTED_TAINT));
            if !tainted {
                continue;
            }
            info!(node = %node_name, "removing a stale disrupted taint");
            if let Err(e) = self
                .provisioner
                .node_actions()
                .untaint(&node_name, DISRUPTED_TAINT, TaintEffect::NoSchedule)
                .await
            {
                warn!(node = %node_name, error = %e, "removing a stale disrupted taint failed");
            }
        }
    }

    /// Resumes (in the background) the commands of this controller that a previous process
    /// left half-done: their records are on NodeClaims not yet deleting.
    fn resume(self: &Arc<Self>, view: &View, report: &mut PassReport) -> bool {
        let by_node = view.claims_by_node();
        let node_of: BTreeMap<String, String> =
            by_node.iter().map(|(n, c)| (c.name_any(), n.clone())).collect();
        let mut commands: BTreeMap<String, (Record, Vec<ClaimAndNode>)> = BTreeMap::new();
        for claim in &view.snapshot.claims {
            if claim.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let Some(record) = Record::of(claim) else {
                continue;
            };
            if !own(&record.reason) {
                continue;
            }
            let name = claim.name_any();
            let node = node_of.get(&name).cloned();
            commands
                .entry(record.command.clone())
                .or_insert_with(|| (record.clone(), Vec::new()))
                .1
                .push((name, node));
        }
        let mut any = false;
        for (id, (record, claims)) in commands {
            if !lock(&self.running).insert(id.clone()) {
                continue;
            }
            any = true;
            report.resumed.push(id.clone());
            let me = self.clone();
            lock(&self.tasks).spawn(async move {
                if let Err(e) = me.resume_command(&record, &claims).await {
                    warn!(command = %id, error = %e, "resuming a disruption command failed");
                }
                lock(&me.running).remove(&id);
            });
        }
        any
    }

    /// Carries on with a command found half-done: when all its replacements exist, waits for
    /// them (within the time left of [`DisruptionSettings::replacement_timeout`]) and deletes
    /// the candidates; otherwise rolls it back.
    async fn resume_command(
        &self,
        record: &Record,
        claims: &[(String, Option<String>)],
    ) -> Result<(), Error> {
        info!(command = %record.command, reason = %record.reason, "resuming a disruption command");
        let replacements = orchestrate::find_replacements(self.client(), &record.command).await?;
        let alive: Vec<String> = replacements
            .iter()
            .filter(|c| c.metadata.deletion_timestamp.is_none())
            .map(ResourceExt::name_any)
            .collect();
        let outcome = if alive.len() < record.replacements {
            Err(Error::Replacement {
                command: record.command.clone(),
                source: WaitError::Gone(format!(
                    "{} of {} replacements exist",
                    alive.len(),
                    record.replacements
                )),
            })
        } else {
            let elapsed = (self.now() - record.started).unsigned_abs();
            let left = self.settings.replacement_timeout.saturating_sub(elapsed);
            orchestrate::wait_initialized(
                self.client(),
                &alive,
                self.provisioner.settings().resync,
                tokio::time::Instant::now() + left,
            )
            .await
            .map_err(|source| Error::Replacement {
                command: record.command.clone(),
                source,
            })
        };
        match outcome {
            Ok(()) => {
                let names: Vec<String> = claims.iter().map(|(c, _)| c.clone()).collect();
                orchestrate::delete_claims(self.client(), &names).await?;
                self.provisioner.metrics().command(&record.reason, "executed");
                Ok(())
            }
            Err(e) => {
                self.provisioner.metrics().command(&record.reason, "failed");
                for (claim, node) in claims {
                    orchestrate::unmark(&self.provisioner, claim, node.as_deref(), &record.command).await?;
                }
                Err(e)
            }
        }
    }
}

/// A NodeClaim's name and its node's, if it has one.
type ClaimAndNode = (String, Option<String>);

/// A command's id: its first candidate's NodeClaim and the time, unique enough per process
/// and restart.
fn command_id(view: &View, command: &Command) -> String {
    let by_node = view.claims_by_node();
    let first = command
        .candidates
        .iter()
        .find_map(|n| by_node.get(n).map(|c| c.name_any()))
        .unwrap_or_else(|| command.candidates.first().cloned().unwrap_or_default());
    let extra: BTreeSet<&String> = command.candidates.iter().skip(1).collect();
    let suffix = if extra.is_empty() {
        String::new()
    } else {
        format!("-and-{}", extra.len())
    };
    format!("{first}{suffix}-{}", view.now.unix_timestamp())
}

fn jiff(t: OffsetDateTime) -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::from_nanosecond(t.unix_timestamp_nanos()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        DisruptionSettings::default().validate().unwrap();
        let e = DisruptionSettings {
            poll_interval: Duration::ZERO,
            ..DisruptionSettings::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("poll_interval") && e.contains("0ns"), "{e}");
        let mut s = DisruptionSettings::default();
        s.options.multi_node_max_candidates = 1;
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("multi_node_max_candidates") && e.contains('1'), "{e}");
    }

    #[test]
    fn records_round_trip_and_own_reasons() {
        let r = Record {
            reason: "Underutilized".into(),
            command: "default-abcde-1700000000".into(),
            replacements: 1,
            started: time::macros::datetime!(2026-05-06 12:00 UTC),
        };
        let mut claim: NodeClaim = serde_json::from_value(json!({
            "apiVersion": "karpenter.sh/v1", "kind": "NodeClaim", "metadata": {"name": "c"},
            "spec": {"requirements": [], "nodeClassRef": {"group": "g", "kind": "k", "name": "n"}},
        }))
        .unwrap();
        assert_eq!(Record::of(&claim), None);
        claim.metadata.annotations = Some(
            [(
                orchestrate::DISRUPTION_ANNOTATION.to_owned(),
                serde_json::to_string(&r).unwrap(),
            )]
            .into(),
        );
        assert_eq!(Record::of(&claim), Some(r));
        assert!(own("Empty") && own("Underutilized") && own("Drifted"));
        assert!(!own("Interrupted") && !own("Rebalance") && !own("Expired"));
    }
}
