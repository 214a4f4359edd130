//! The demo behind `cargo xtask demo`: a spot cluster simulated in process, a workload, spot
//! interruptions, and a summary that checks no pod was lost.
//!
//! 1. [`world`]: spot-kube-sim, the simulated EC2 Spot cloud registering Nodes, one IMDS
//!    and `spot-nth` per node ([`agents`]), the in-memory interruption queue, the provisioner
//!    and its interruption controller, all on 127.0.0.1, on an accelerated clock.
//! 2. [`workload`]: Deployments with zone spread and pod anti-affinity; the provisioner
//!    launches spot nodes until every pod runs.
//! 3. Spot interruptions (seeded choice of nodes) arrive through the queue and through each
//!    node's IMDS, plus a rebalance recommendation; the provisioner replaces the capacity,
//!    then drains.
//! 4. [`summary`]: pods, nodes, cost against an all-on-demand fleet, interruptions handled,
//!    longest pending time, pods lost, computed from the cluster and the [`recorder`]'s
//!    watches.

pub mod agents;
pub mod recorder;
pub mod summary;
pub mod workload;
pub mod world;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use spot_core::labels;
use spot_provisioner::api::NodeClaim;
use spot_provisioner::api::nodeclaim::conditions;
use spot_sim::SimCloud;
use spot_sim::rng::SimRng;
use tokio::time::Instant;

pub use recorder::Recorder;
pub use summary::Summary;
pub use world::World;

/// What the demo does.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Multiplies the workload's replicas (1: 52 pods).
    pub scale: f64,
    /// Seed of the market, instance ids and the choice of interrupted nodes.
    pub seed: u64,
    /// Simulated seconds per real second.
    pub speed: f64,
    /// Spot interruption notices (one more spot node gets a rebalance recommendation).
    pub interruptions: usize,
    /// The longest each phase may take, in real time.
    pub phase_limit: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            scale: 1.0,
            seed: 42,
            speed: 10.0,
            interruptions: 2,
            phase_limit: Duration::from_secs(180),
        }
    }
}

impl Options {
    /// Checks the values; the error names the option.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.scale.is_finite() && self.scale > 0.0 && self.scale <= 20.0,
            "--scale {}: must be above 0 and at most 20",
            self.scale
        );
        ensure!(
            self.speed.is_finite() && (1.0..=100.0).contains(&self.speed),
            "--speed {}: must be from 1 to 100 (simulated seconds per second)",
            self.speed
        );
        ensure!(
            (1..=50).contains(&self.interruptions),
            "--interruptions {}: must be from 1 to 50",
            self.interruptions
        );
        Ok(())
    }
}

/// Where the demo reports as it goes.
pub trait Progress: Send + Sync {
    /// A timeline entry, stamped with real and simulated time since the start.
    fn event(&self, real: Duration, simulated: Duration, text: &str);
    /// The current phase: `done` of `total`, and a short state.
    fn status(&self, phase: &str, done: usize, total: usize, detail: &str);
}

/// A [`Progress`] that reports nothing (tests).
#[derive(Debug, Clone, Copy, Default)]
pub struct Quiet;

impl Progress for Quiet {
    fn event(&self, _: Duration, _: Duration, _: &str) {}
    fn status(&self, _: &str, _: usize, _: usize, _: &str) {}
}

/// Stamps entries with real and simulated time.
#[derive(Clone)]
pub struct Timeline {
    progress: Arc<dyn Progress>,
    cloud: Arc<SimCloud>,
    origin: Instant,
}

impl Timeline {
    /// A timeline started at `origin`, simulated time read from `cloud`.
    pub fn new(progress: Arc<dyn Progress>, cloud: Arc<SimCloud>, origin: Instant) -> Timeline {
        Timeline {
            progress,
            cloud,
            origin,
        }
    }

    /// Reports `text` now.
    pub fn event(&self, text: &str) {
        self.progress
            .event(self.origin.elapsed(), self.cloud.elapsed(), text);
    }

    /// Reports the phase.
    pub fn status(&self, phase: &str, done: usize, total: usize, detail: &str) {
        self.progress.status(phase, done, total, detail);
    }

    /// `T+mm:ss` of simulated time `d`.
    pub fn virtual_label(&self, d: Duration) -> String {
        clock_label(d)
    }
}

/// `T+mm:ss`.
pub fn clock_label(d: Duration) -> String {
    let s = d.as_secs();
    format!("T+{:02}:{:02}", s / 60, s % 60)
}

/// What a scripted disruption does to a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A two-minute spot interruption notice, then the reclaim.
    Notice,
    /// A rebalance recommendation, nothing after it.
    Rebalance,
}

/// A node chosen for a scripted disruption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Victim {
    /// What happens to it.
    pub kind: Kind,
    /// Its NodeClaim.
    pub claim: String,
    /// Its node.
    pub node: String,
    /// Its instance.
    pub instance: String,
}

/// The cluster as listed now.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Pods of the workload, by app: (wanted, running on a Ready node).
    pub apps: BTreeMap<String, (usize, usize)>,
    /// Pods bound to nodes that no longer exist.
    pub on_missing_nodes: Vec<String>,
    /// Ready nodes.
    pub ready_nodes: usize,
    /// NodeClaims.
    pub claims: Vec<NodeClaim>,
}

impl Observed {
    /// Pods wanted.
    pub fn wanted(&self) -> usize {
        self.apps.values().map(|(w, _)| w).sum()
    }

    /// Pods running on a Ready node.
    pub fn healthy(&self) -> usize {
        self.apps.values().map(|(_, h)| h).sum()
    }

    /// Every NodeClaim is initialized and not going away.
    pub fn claims_settled(&self) -> bool {
        self.claims
            .iter()
            .all(|c| c.metadata.deletion_timestamp.is_none() && initialized(c))
    }

    /// Every pod runs, and every NodeClaim is initialized and not going away.
    pub fn settled(&self) -> bool {
        self.healthy() == self.wanted() && self.on_missing_nodes.is_empty() && self.claims_settled()
    }

    /// Nothing will change any more: the NodeClaims are settled and every pod runs, or is
    /// lost on a node that went away (its ReplicaSet still counts it, so it is never
    /// replaced).
    pub fn at_rest(&self) -> bool {
        self.claims_settled() && self.healthy() + self.on_missing_nodes.len() >= self.wanted()
    }
}

/// Whether the claim is initialized.
pub fn initialized(c: &NodeClaim) -> bool {
    c.status
        .as_ref()
        .is_some_and(|s| s.is_true(conditions::INITIALIZED))
}

fn ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Lists pods, nodes and NodeClaims.
pub async fn observe(client: &kube::Client, apps: &[workload::App]) -> Result<Observed> {
    let lp = ListParams::default();
    let nodes = Api::<Node>::all(client.clone())
        .list(&lp)
        .await
        .context("listing nodes")?;
    let ready_nodes: BTreeMap<String, bool> = nodes.items.iter().map(|n| (n.name_any(), ready(n))).collect();
    let pods = Api::<Pod>::namespaced(client.clone(), workload::NAMESPACE)
        .list(&lp)
        .await
        .context("listing pods")?;
    let claims = Api::<NodeClaim>::all(client.clone())
        .list(&lp)
        .await
        .context("listing NodeClaims")?
        .items;
    let mut out = Observed {
        ready_nodes: ready_nodes.values().filter(|r| **r).count(),
        claims,
        ..Observed::default()
    };
    for app in apps {
        out.apps.insert(app.name.to_owned(), (app.replicas, 0));
    }
    for pod in &pods.items {
        let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
        let terminating = pod.metadata.deletion_timestamp.is_some();
        if let Some(node) = node
            && !terminating
            && !ready_nodes.contains_key(node)
        {
            out.on_missing_nodes.push(format!("{} on {node}", pod.name_any()));
        }
        let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        let healthy = running && !terminating && node.is_some_and(|n| ready_nodes.get(n) == Some(&true));
        if healthy
            && let Some(app) = pod.labels().get("app")
            && let Some((_, h)) = out.apps.get_mut(app)
        {
            *h += 1;
        }
    }
    Ok(out)
}

/// Polls `check` every 200 ms until it returns `Some`, reporting `phase` with what
/// `progress` computes; fails after `limit` with the last state.
async fn wait_for<T>(
    world: &World,
    apps: &[workload::App],
    phase: &str,
    limit: Duration,
    mut check: impl FnMut(&Observed) -> (Option<T>, usize, usize, String),
) -> Result<T> {
    let start = Instant::now();
    loop {
        let observed = observe(&world.client, apps).await?;
        let (done, n, total, detail) = check(&observed);
        world.timeline.status(phase, n, total, &detail);
        if let Some(done) = done {
            return Ok(done);
        }
        if start.elapsed() > limit {
            bail!(
                "{phase}: not done after {limit:?}: {detail}; pods running {}/{}, {} on deleted nodes, {} NodeClaims ({} not initialized or deleting)",
                observed.healthy(),
                observed.wanted(),
                observed.on_missing_nodes.len(),
                observed.claims.len(),
                observed
                    .claims
                    .iter()
                    .filter(|c| c.metadata.deletion_timestamp.is_some() || !initialized(c))
                    .count()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Chooses the interrupted nodes among the initialized spot NodeClaims, seeded: up to
/// `notices` spot notices (one spot node is kept for the rebalance recommendation), then
/// one rebalance recommendation.
pub fn choose_victims(claims: &[NodeClaim], notices: usize, seed: u64) -> Vec<Victim> {
    let mut spot: Vec<Victim> = claims
        .iter()
        .filter(|c| initialized(c) && c.metadata.deletion_timestamp.is_none())
        .filter(|c| c.labels().get(labels::CAPACITY_TYPE).map(String::as_str) == Some("spot"))
        .filter_map(|c| {
            let status = c.status.as_ref()?;
            Some(Victim {
                kind: Kind::Notice,
                claim: c.name_any(),
                node: status.node_name.clone()?,
                instance: status.provider_id.as_deref()?.rsplit('/').next()?.to_owned(),
            })
        })
        .collect();
    // NodeClaim names are random: order by what the seed decides (type, zone), then id.
    let key = |v: &Victim| {
        let claim = claims.iter().find(|c| c.name_any() == v.claim);
        let label = |k: &str| claim.and_then(|c| c.labels().get(k).cloned()).unwrap_or_default();
        (
            label(labels::INSTANCE_TYPE),
            label(labels::ZONE),
            v.instance.clone(),
        )
    };
    spot.sort_by_cached_key(key);
    let mut rng = SimRng::stream(seed, "demo/victims");
    for i in (1..spot.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        spot.swap(i, j);
    }
    let notices = notices.min(spot.len().saturating_sub(1));
    spot.truncate(notices + 1);
    if let Some(last) = spot.get_mut(notices) {
        last.kind = Kind::Rebalance;
    }
    spot
}

/// The finished demo: the world still runs (for `--serve`).
pub struct Demo {
    /// The world.
    pub world: World,
    /// The watches.
    pub recorder: Recorder,
    /// What happened.
    pub summary: Summary,
}

/// Runs the demo to its summary.
pub async fn run(options: &Options, progress: Arc<dyn Progress>) -> Result<Demo> {
    options.validate()?;
    let origin = Instant::now();
    let world = World::start(options, |cloud| Timeline::new(progress.clone(), cloud, origin)).await?;
    let t = world.timeline.clone();
    let recorder = Recorder::start(&world.client, &t);
    t.event(&format!(
        "cluster up: spot-kube-sim at {}, NodePool `default` (spot or on-demand, c/m/r gen 6+, 2-16 vCPUs, rebalance: Replace), clock ×{}",
        world.kube.url(),
        options.speed
    ));

    // 1. The workload, until every pod runs.
    let apps = workload::apps(options.scale);
    workload::apply_apps(&world.client, &apps).await?;
    let total: usize = apps.iter().map(|a| a.replicas).sum();
    let list: Vec<String> = apps
        .iter()
        .map(|a| format!("{} ×{} ({})", a.name, a.replicas, a.constraints))
        .collect();
    t.event(&format!(
        "applied {} Deployments, {total} pods: {}",
        apps.len(),
        list.join("; ")
    ));
    let claims = wait_for(&world, &apps, "scaling up", options.phase_limit, |o| {
        let detail = format!("{} pods running, {} nodes Ready", o.healthy(), o.ready_nodes);
        (
            o.settled().then(|| o.claims.clone()),
            o.healthy(),
            o.wanted(),
            detail,
        )
    })
    .await?;
    t.event(&format!(
        "all {total} pods running on {} nodes, ${:.3}/h",
        claims.len(),
        world.cloud.running_cost_per_hour()
    ));
    let scaled_up = Instant::now();

    // 2. Interruptions, a simulated half minute apart.
    let victims = choose_victims(&claims, options.interruptions, options.seed);
    let notices = victims.iter().filter(|v| v.kind == Kind::Notice).count();
    if notices < options.interruptions {
        t.event(&format!(
            "only {} spot nodes: {notices} interruption notices instead of {}",
            victims.len(),
            options.interruptions
        ));
    }
    let mut last_deadline = world.cloud.elapsed();
    for (i, v) in victims.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(world.real(Duration::from_secs(30))).await;
        }
        match v.kind {
            Kind::Notice => {
                let plan = world
                    .cloud
                    .interrupt(&v.instance, None)
                    .await
                    .with_context(|| format!("interrupting {}", v.instance))?;
                last_deadline = last_deadline.max(plan.terminate_at);
            }
            Kind::Rebalance => {
                world
                    .cloud
                    .recommend_rebalance(&v.instance)
                    .await
                    .with_context(|| format!("recommending a rebalance of {}", v.instance))?;
            }
        }
    }

    // 3. Until every disrupted node is replaced and gone, the deadlines passed, the queue
    //    drained and every pod runs again.
    loop {
        let done = wait_for(&world, &apps, "interruptions", options.phase_limit, |o| {
            let names: Vec<String> = o.claims.iter().map(|c| c.name_any()).collect();
            let gone = victims.iter().filter(|v| !names.contains(&v.claim)).count();
            let detail = format!(
                "{gone} of {} nodes replaced, {} of {} pods running",
                victims.len(),
                o.healthy(),
                o.wanted()
            );
            (
                (gone == victims.len() && o.at_rest()).then_some(()),
                gone,
                victims.len(),
                detail,
            )
        })
        .await;
        done?;
        let deadlines = world.cloud.elapsed() >= last_deadline;
        let queue_drained = world.queue.pending().await == 0 && world.queue.unacknowledged().await.is_empty();
        if deadlines && queue_drained {
            break;
        }
        ensure!(
            scaled_up.elapsed() < options.phase_limit,
            "interruptions: the queue still holds {} messages ({} unacknowledged) after {:?}",
            world.queue.pending().await,
            world.queue.unacknowledged().await.len(),
            options.phase_limit
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The bridge reports reclaims every 50 ms.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let summary = summary::compute(options, &world, &recorder, &apps, &victims, origin, scaled_up).await?;
    Ok(Demo {
        world,
        recorder,
        summary,
    })
}
