//! The discrete-event simulation of one [`Scenario`]: an in-memory cluster driven by a
//! workload trace, the real scheduler, launch planning and consolidation of `spot-core`, and
//! a [`SimCloud`] on a manual virtual clock.
//!
//! # Model
//!
//! - **Pods** come from the [`Workload`]: every trace step (5 minutes) each Deployment is
//!   scaled to its replica count; new pods are pending, removed pods go pending ones first,
//!   then those not running yet, then the newest.
//! - **Provisioning** runs [`SimConfig::batch_delay`] (10 s, Karpenter's batch window) after
//!   pods become pending: the [`Scheduler`] places the unassigned pending pods on existing
//!   nodes (ready or still starting) and asks for new NodeClaims, each launched through
//!   [`plan`] and the [`SimCloud`] with the scenario's allocation, falling back through the
//!   pools that answer `InsufficientInstanceCapacity` (marked in an
//!   [`UnavailableOfferings`] cache on the virtual clock) as spot-provisioner does. A node is
//!   ready [`SimConfig::node_startup`] (60 s) after its launch; its pods run from then on.
//!   Only nodes with room for the smallest pending pod are handed to the scheduler, those
//!   with the most free CPU first, until they hold twice the pending pods' CPU and memory
//!   (plus 16 more, at most `4 × pending + 64`): the pods are unconstrained, so the nodes
//!   left out could not take any of them, or would only be tried after those.
//! - **Interruptions** come from the cloud's market: a rebalance recommendation (when the
//!   scenario replaces on rebalance) and an interruption notice (when
//!   [`SimConfig::replace_on_notice`], Karpenter's interruption handling) cordon the node and
//!   launch replacement capacity for its pods at once; each pod moves (an eviction) when its
//!   new node is ready, and the node is terminated once its pods are gone. Pods still on the
//!   node at the reclaim are evicted: they wait for their replacement, or go pending.
//! - **Consolidation** (when the scenario has it) runs every
//!   [`SimConfig::consolidation_interval`]: [`compute_commands`] over the whole cluster
//!   (default budgets of 10 %, `consolidateAfter` [`SimConfig::consolidate_after`],
//!   spot-to-spot on), then [`validate_command`] 15 s later, then the command: a delete
//!   evicts the pods (they go pending and are placed at once) and terminates the nodes; a
//!   replace launches the replacement, moves the pods the simulation put on it when it is
//!   ready, evicts the others and terminates the candidates. After a round that found
//!   nothing, the next one waits three intervals, and longer while nothing changed (like
//!   Karpenter's `IsConsolidated`, with a fresh look every 15 minutes).
//! - **Cost** is the cloud's per-second billing at launch prices.
//!
//! Time moves from event to event: the simulation's own queue (trace steps, provisioning,
//! node readiness, consolidation, samples) and the cloud's [`SimCloud::next_due`].

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use spot_core::allocatable::AllocatableModel;
use spot_core::catalog::Catalog;
use spot_core::cloud::{CloudProvider, FleetRequest, Instance};
use spot_core::disruption::candidate::is_consolidatable;
use spot_core::disruption::{
    Candidate, ClusterState, Command, ConsolidationOptions, Decision, PoolPolicy, compute_commands,
    validate_command,
};
use spot_core::event::EventKind;
use spot_core::instance_type::{CapacityType, InstanceType, Offering};
use spot_core::labels;
use spot_core::node::Taint;
use spot_core::offerings::UnavailableOfferings;
use spot_core::pod::{DAEMONSET_KIND, PodSpec};
use spot_core::requirements::{Operator, Requirement, Requirements};
use spot_core::resources::Resources;
use spot_core::scheduling::{
    ExistingNode, InstanceTypeOption, NewNodeClaim, NodePoolTemplate, Scheduler, SchedulerOptions,
};
use time::OffsetDateTime;

use super::strategy::{Scenario, plan};
use super::trace::Workload;
use super::{Error, SimConfig};
use crate::cloud::{InstanceObserver, SimClock, SimCloud, SimCloudConfig};
use crate::market::{Market, PoolKey};

/// How long a consolidation round that found nothing is trusted while nothing changes.
const IDLE_RECHECK: Duration = Duration::from_secs(900);

/// The NodePool every node is launched from.
pub const NODEPOOL: &str = "default";
/// The namespace of the workload's pods.
pub const NAMESPACE: &str = "default";

/// One point of a scenario's time series, over the sample interval that ends at `hours`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Virtual time, hours since the start.
    pub hours: f64,
    /// Nodes running (ready or starting).
    pub nodes: usize,
    /// Of which spot.
    pub spot_nodes: usize,
    /// Pods of the workload.
    pub pods: usize,
    /// Pods not running, averaged over the interval.
    pub pending_mean: f64,
    /// Pods not running now.
    pub pending: usize,
    /// What the running instances cost per hour now, USD.
    pub cost_per_hour: f64,
    /// What every instance has cost so far, USD.
    pub cost: f64,
}

/// The totals of a scenario.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// What every instance cost, USD.
    pub cost: f64,
    /// What the same instances would have cost on-demand, USD.
    pub on_demand_equivalent: f64,
    /// Spot interruption notices received.
    pub interruptions: u64,
    /// Instances reclaimed by the market (notices whose node was still there).
    pub reclaimed: u64,
    /// Rebalance recommendations received.
    pub rebalance_recommendations: u64,
    /// Pods evicted: moved by consolidation or replacement, or killed by a reclaim.
    pub evictions: u64,
    /// Of the evictions, pods killed by a reclaim.
    pub reclaimed_pods: u64,
    /// Pod-minutes spent not running (pending, or bound to a node not ready yet).
    pub pending_pod_minutes: f64,
    /// Instances launched.
    pub launches: u64,
    /// Launch errors (one per pool and request), by code.
    pub launch_errors: BTreeMap<String, u64>,
    /// Consolidation commands carried out.
    pub consolidations: u64,
    /// Nodes removed by consolidation.
    pub consolidated_nodes: u64,
    /// The most nodes at once.
    pub peak_nodes: usize,
    /// Nodes on average.
    pub mean_nodes: f64,
    /// Share of node-hours on spot.
    pub spot_share: f64,
    /// The most pods at once.
    pub peak_pods: usize,
    /// Scheduler solves run (provisioning and replacements).
    pub solves: u64,
}

/// What a scenario produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioResult {
    /// The scenario.
    pub scenario: Scenario,
    /// Its totals.
    pub summary: Summary,
    /// Its time series.
    pub series: Vec<Sample>,
}

/// Why a node is going away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Doom {
    Rebalance,
    Notice,
    Consolidation,
}

#[derive(Debug)]
struct Pod {
    spec: Arc<PodSpec>,
    /// The node it runs on or is bound to.
    node: Option<u64>,
    running: bool,
    /// Where it moves when that node is ready (its node is being replaced).
    next: Option<u64>,
}

#[derive(Debug)]
struct Node {
    name: String,
    /// Index into `Sim::types`.
    kind: usize,
    zone: String,
    capacity_type: CapacityType,
    price: f64,
    launched_at: Duration,
    ready: bool,
    /// Pods counted against it: bound here, or moving here.
    pods: Vec<u64>,
    /// CPU, memory and pods they request.
    used: [i64; 3],
    last_pod_event: Duration,
    nominated_until: Duration,
    doomed: Option<Doom>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Trace,
    Provision,
    Ready(u64),
    Consolidate,
    Validate,
    Sample,
}

/// An instance type the NodePool may launch, with what the simulation needs of it.
struct Kind {
    instance_type: Arc<InstanceType>,
    allocatable: Resources,
    /// Allocatable minus the DaemonSets: CPU, memory, pods.
    room: [i64; 3],
    labels: BTreeMap<String, BTreeMap<String, String>>,
}

/// Records the instances the cloud terminated (reclaims included).
#[derive(Default)]
struct Reclaims {
    ids: Mutex<Vec<String>>,
}

#[async_trait]
impl InstanceObserver for Reclaims {
    async fn launched(
        &self,
        _instance: &Instance,
        _instance_type: &InstanceType,
        _labels: &BTreeMap<String, String>,
        _taints: &[Taint],
    ) {
    }

    async fn terminated(&self, instance_id: &str) {
        self.ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(instance_id.to_owned());
    }
}

/// The DaemonSets of every node: kube-proxy and a log agent.
pub fn daemonsets() -> Vec<PodSpec> {
    [("kube-proxy", 100, 128), ("log-agent", 200, 256)]
        .into_iter()
        .map(|(name, cpu, mem)| {
            let mut pod = PodSpec::new("kube-system", name, Resources::new(cpu, mem << 20));
            pod.owner_kind = Some(DAEMONSET_KIND.to_owned());
            pod
        })
        .collect()
}

/// The simulation of one scenario.
pub struct Simulation {
    config: SimConfig,
    scenario: Scenario,
    workload: Arc<Workload>,
    cloud: Arc<SimCloud>,
    reclaims: Arc<Reclaims>,
    unavailable: UnavailableOfferings,
    kinds: Vec<Kind>,
    kind_index: HashMap<String, usize>,
    daemonsets: Vec<PodSpec>,
    templates: Vec<NodePoolTemplate>,
    templates_built: Option<(Duration, u64)>,
    templates_dirty: bool,
    start: OffsetDateTime,
    end: Duration,
    now: Duration,
    queue: BinaryHeap<Reverse<(Duration, u64, Event)>>,
    seq: u64,
    provision_at: Option<Duration>,
    pods: BTreeMap<u64, Pod>,
    next_pod: u64,
    unassigned: BTreeSet<u64>,
    deployments: Vec<Vec<u64>>,
    nodes: BTreeMap<u64, Node>,
    by_name: HashMap<String, u64>,
    next_node: u64,
    rotation: usize,
    not_running: usize,
    command: Option<Command>,
    generation: u64,
    /// The (generation, price step, time) of the last consolidation round that found nothing.
    idle: Option<(u64, u64, Duration)>,
    drained: Vec<u64>,
    spot_count: usize,
    consolidation_options: ConsolidationOptions,
    // Metrics.
    pending_seconds: f64,
    interval_pending_seconds: f64,
    node_seconds: f64,
    spot_node_seconds: f64,
    last_sample: Duration,
    summary: Summary,
    series: Vec<Sample>,
}

fn add_used(used: &mut [i64; 3], r: &Resources, sign: i64) {
    used[0] += sign * r.cpu_millis;
    used[1] += sign * r.memory_bytes;
    used[2] += sign * r.pods;
}

/// The pod id in a pod key (`default/app-0001-42` is 42).
fn pod_id(key: &str) -> Option<u64> {
    key.rsplit_once('-').and_then(|(_, id)| id.parse().ok())
}

impl Simulation {
    /// Prepares the scenario: the cloud and its market, the NodePool's instance types, the
    /// workload (shared between scenarios: it depends only on the configuration).
    pub fn new(config: &SimConfig, scenario: Scenario, workload: Arc<Workload>) -> Result<Simulation, Error> {
        config.validate()?;
        let mut market_config = config.market.clone();
        market_config.seed = config.seed;
        let catalog = Catalog::embedded();
        let market = Market::offline(market_config)?;
        let cloud = SimCloud::new(
            SimCloudConfig {
                api_latency: Duration::ZERO,
                pending_duration: Duration::ZERO,
                clock: SimClock::Manual,
                ..SimCloudConfig::default()
            },
            market,
            Arc::new(catalog.clone()),
        )?;
        let cloud = Arc::new(cloud);
        let reclaims = Arc::new(Reclaims::default());
        cloud.add_observer(reclaims.clone());
        let start = config.market.start;
        let daemonsets = daemonsets();
        let overhead = daemonsets.iter().fold(Resources::default(), |sum, d| {
            sum.checked_add(&d.requests).unwrap_or(sum)
        });
        let model = AllocatableModel::default();
        let mut kinds = Vec::new();
        for family in &config.families {
            for size in &config.sizes {
                let name = format!("{family}.{size}");
                let Ok(t) = catalog.get(&name) else { continue };
                let zones: Vec<&String> = config
                    .zones
                    .iter()
                    .filter(|z| catalog.is_offered(z, &name))
                    .collect();
                let priced = zones
                    .iter()
                    .all(|z| cloud.market(|m| m.on_demand_price(&PoolKey::new(&name, z.as_str())).is_ok()));
                if zones.is_empty() || !priced {
                    continue;
                }
                let allocatable = model.allocatable_resources(t);
                let room = [
                    allocatable.cpu_millis - overhead.cpu_millis,
                    allocatable.memory_bytes - overhead.memory_bytes,
                    allocatable.pods - overhead.pods,
                ];
                let mut by_zone = BTreeMap::new();
                for z in zones {
                    for ct in [CapacityType::Spot, CapacityType::OnDemand] {
                        if let Ok(l) = labels::instance_type_labels(t, z, ct) {
                            by_zone.insert(format!("{z}/{ct}"), l);
                        }
                    }
                }
                kinds.push(Kind {
                    instance_type: Arc::new(t.clone()),
                    allocatable,
                    room,
                    labels: by_zone,
                });
            }
        }
        if kinds.is_empty() {
            return Err(Error::NoInstanceTypes {
                families: config.families.join(","),
                sizes: config.sizes.join(","),
                zones: config.zones.join(","),
            });
        }
        let kind_index = kinds
            .iter()
            .enumerate()
            .map(|(i, k)| (k.instance_type.name.clone(), i))
            .collect();
        let unavailable = UnavailableOfferings::new(cloud.clone());
        let deployments = vec![Vec::new(); workload.deployments.len()];
        Ok(Simulation {
            config: config.clone(),
            scenario,
            workload,
            cloud,
            reclaims,
            unavailable,
            kinds,
            kind_index,
            daemonsets,
            templates: Vec::new(),
            templates_built: None,
            templates_dirty: true,
            start,
            end: config.duration,
            now: Duration::ZERO,
            queue: BinaryHeap::new(),
            seq: 0,
            provision_at: None,
            pods: BTreeMap::new(),
            next_pod: 0,
            unassigned: BTreeSet::new(),
            deployments,
            nodes: BTreeMap::new(),
            by_name: HashMap::new(),
            next_node: 0,
            rotation: 0,
            not_running: 0,
            command: None,
            generation: 0,
            idle: None,
            drained: Vec::new(),
            spot_count: 0,
            consolidation_options: ConsolidationOptions::default(),
            pending_seconds: 0.0,
            interval_pending_seconds: 0.0,
            node_seconds: 0.0,
            spot_node_seconds: 0.0,
            last_sample: Duration::ZERO,
            summary: Summary::default(),
            series: Vec::new(),
        })
    }

    /// The instance types the NodePool may launch.
    pub fn instance_types(&self) -> Vec<String> {
        self.kinds.iter().map(|k| k.instance_type.name.clone()).collect()
    }

    /// Runs the scenario to the end of [`SimConfig::duration`].
    pub async fn run(mut self) -> Result<ScenarioResult, Error> {
        self.schedule(Duration::ZERO, Event::Trace);
        self.schedule(self.config.sample_interval, Event::Sample);
        if self.scenario.consolidation {
            self.schedule(self.config.consolidation_interval, Event::Consolidate);
        }
        loop {
            let next_event = self.queue.peek().map(|Reverse((t, _, _))| *t);
            let next_cloud = self.cloud.next_due().map(|at| self.offset(at));
            let next = match (next_event, next_cloud) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => self.end,
            };
            let t = next.clamp(self.now, self.end);
            self.advance_to(t).await;
            self.handle_cloud().await;
            while let Some(Reverse((at, _, event))) = self.queue.peek().copied() {
                if at > self.now {
                    break;
                }
                self.queue.pop();
                self.handle(event, at).await;
                self.terminate_drained().await;
            }
            if self.now >= self.end {
                break;
            }
        }
        self.sample();
        Ok(self.finish())
    }

    fn offset(&self, at: OffsetDateTime) -> Duration {
        Duration::try_from(at - self.start).unwrap_or(Duration::ZERO)
    }

    fn utc(&self) -> OffsetDateTime {
        self.start + self.now
    }

    fn schedule(&mut self, at: Duration, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, event)));
    }

    /// Asks for a provisioning run `delay` from now (keeps an earlier one).
    fn request_provision(&mut self, delay: Duration) {
        let at = self.now + delay;
        if self.provision_at.is_none_or(|p| p > at) {
            self.provision_at = Some(at);
            self.schedule(at, Event::Provision);
        }
    }

    async fn advance_to(&mut self, t: Duration) {
        let dt = t.saturating_sub(self.now);
        if dt.is_zero() {
            return;
        }
        let secs = dt.as_secs_f64();
        self.pending_seconds += self.not_running as f64 * secs;
        self.interval_pending_seconds += self.not_running as f64 * secs;
        let spot = self.spot_count;
        self.node_seconds += self.nodes.len() as f64 * secs;
        self.spot_node_seconds += spot as f64 * secs;
        self.cloud.advance(dt).await;
        self.now = t;
    }

    async fn handle(&mut self, event: Event, at: Duration) {
        match event {
            Event::Trace => {
                self.apply_trace();
                let next = self.now + self.workload.config.step;
                if next < self.end {
                    self.schedule(next, Event::Trace);
                }
            }
            Event::Provision => {
                if self.provision_at == Some(at) {
                    self.provision_at = None;
                    self.provision().await;
                }
            }
            Event::Ready(id) => self.node_ready(id).await,
            Event::Consolidate => {
                self.consolidate();
                let next = self.now + self.config.consolidation_interval;
                self.schedule(next, Event::Consolidate);
            }
            Event::Validate => self.validate().await,
            Event::Sample => {
                self.sample();
                let next = self.now + self.config.sample_interval;
                self.schedule(next, Event::Sample);
            }
        }
    }

    // ---- Pods ----------------------------------------------------------------------------

    fn apply_trace(&mut self) {
        let mut added = false;
        for d in 0..self.deployments.len() {
            let want = self.workload.replicas(d, self.now) as usize;
            let have = self.deployments[d].len();
            if want > have {
                for _ in have..want {
                    self.create_pod(d);
                }
                added = true;
            } else if want < have {
                for _ in want..have {
                    self.remove_one(d);
                }
            }
        }
        let pods = self.pods.len();
        self.summary.peak_pods = self.summary.peak_pods.max(pods);
        if added {
            self.request_provision(self.config.batch_delay);
        }
    }

    fn create_pod(&mut self, deployment: usize) {
        let id = self.next_pod;
        self.next_pod += 1;
        let d = &self.workload.deployments[deployment];
        let mut spec = PodSpec::new(
            NAMESPACE,
            format!("{}-{id}", d.name),
            Resources::new(d.cpu_millis, d.memory_bytes),
        );
        spec.labels.insert("app".to_owned(), d.name.clone());
        spec.owner_kind = Some("ReplicaSet".to_owned());
        spec.created_unix_ms = (self.utc().unix_timestamp_nanos() / 1_000_000) as i64;
        self.pods.insert(
            id,
            Pod {
                spec: Arc::new(spec),
                node: None,
                running: false,
                next: None,
            },
        );
        self.unassigned.insert(id);
        self.deployments[deployment].push(id);
        self.not_running += 1;
        self.generation += 1;
    }

    /// Removes one pod of the Deployment: unassigned first, then not running, then the
    /// newest.
    fn remove_one(&mut self, deployment: usize) {
        let list = &self.deployments[deployment];
        let rank = |id: &u64| match self.pods.get(id) {
            Some(p) if p.node.is_none() => 0,
            Some(p) if !p.running => 1,
            _ => 2,
        };
        let Some(pos) = (0..list.len()).rev().min_by_key(|&i| rank(&list[i])) else {
            return;
        };
        let id = self.deployments[deployment].remove(pos);
        self.delete_pod(id);
    }

    fn delete_pod(&mut self, id: u64) {
        let Some(pod) = self.pods.remove(&id) else { return };
        self.unassigned.remove(&id);
        if !pod.running {
            self.not_running -= 1;
        }
        for node in pod.node.into_iter().chain(pod.next) {
            self.unreserve(node, id, &pod.spec);
        }
        self.generation += 1;
        if let Some(old) = pod.node {
            self.finish_if_drained(old);
        }
    }

    fn reserve(&mut self, node: u64, id: u64, spec: &PodSpec) {
        if let Some(n) = self.nodes.get_mut(&node) {
            n.pods.push(id);
            add_used(&mut n.used, &spec.requests, 1);
            n.last_pod_event = self.now;
        }
    }

    fn unreserve(&mut self, node: u64, id: u64, spec: &PodSpec) {
        if let Some(n) = self.nodes.get_mut(&node)
            && let Some(pos) = n.pods.iter().position(|p| *p == id)
        {
            n.pods.swap_remove(pos);
            add_used(&mut n.used, &spec.requests, -1);
            n.last_pod_event = self.now;
        }
    }

    /// Binds an unassigned pod to a node; it runs when the node is ready.
    fn bind(&mut self, id: u64, node: u64) {
        let Some(ready) = self.nodes.get(&node).map(|n| n.ready) else {
            return;
        };
        let Some(spec) = self
            .pods
            .get(&id)
            .filter(|p| p.node.is_none())
            .map(|p| p.spec.clone())
        else {
            return;
        };
        self.unassigned.remove(&id);
        self.reserve(node, id, &spec);
        if let Some(p) = self.pods.get_mut(&id) {
            p.node = Some(node);
            if ready {
                p.running = true;
                self.not_running -= 1;
            }
        }
        self.generation += 1;
    }

    /// Takes a pod off its node: it goes pending (an eviction when it was running).
    fn evict(&mut self, id: u64) {
        let Some(pod) = self.pods.get_mut(&id) else { return };
        let Some(node) = pod.node.take() else { return };
        let spec = pod.spec.clone();
        let next = pod.next.take();
        if pod.running {
            pod.running = false;
            self.not_running += 1;
            self.summary.evictions += 1;
        }
        self.unassigned.insert(id);
        self.unreserve(node, id, &spec);
        if let Some(next) = next {
            self.unreserve(next, id, &spec);
        }
        self.generation += 1;
    }

    /// Moves a pod to the node it was waiting for (ready now): an eviction and a restart
    /// without pending time.
    fn move_pod(&mut self, id: u64, to: u64) {
        let Some(pod) = self.pods.get_mut(&id) else { return };
        let from = pod.node.replace(to);
        pod.next = None;
        let spec = pod.spec.clone();
        if pod.running {
            self.summary.evictions += 1;
        } else {
            pod.running = true;
            self.not_running -= 1;
        }
        if let Some(from) = from {
            self.unreserve(from, id, &spec);
        }
        self.generation += 1;
    }

    // ---- Templates -----------------------------------------------------------------------

    /// The NodePool with current market prices and the unavailable offerings marked.
    fn refresh_templates(&mut self) {
        let step = self.now.as_secs() / self.config.market.price_interval.as_secs().max(1);
        let fresh = self.templates_built.is_some_and(|(built, built_step)| {
            built_step == step
                && !self.templates_dirty
                && (self.unavailable.is_empty() || self.now < built + Duration::from_secs(10))
        });
        if fresh {
            return;
        }
        let spot = self.scenario.allocation.spot();
        let mut options = Vec::with_capacity(self.kinds.len());
        for k in &self.kinds {
            let name = &k.instance_type.name;
            let mut offerings = Vec::new();
            for zone in &self.config.zones {
                let key = PoolKey::new(name, zone);
                let prices = self.cloud.market(|m| {
                    let od = m.on_demand_price(&key).ok();
                    let sp = if spot { m.spot_price(&key).ok() } else { None };
                    (od, sp)
                });
                if let (_, Some(price)) = prices {
                    offerings.push(Offering {
                        zone: zone.clone(),
                        capacity_type: CapacityType::Spot,
                        price,
                        available: !self.unavailable.is_unavailable(name, zone, CapacityType::Spot),
                    });
                }
                if let (Some(price), _) = prices {
                    offerings.push(Offering {
                        zone: zone.clone(),
                        capacity_type: CapacityType::OnDemand,
                        price,
                        available: !self
                            .unavailable
                            .is_unavailable(name, zone, CapacityType::OnDemand),
                    });
                }
            }
            if offerings.is_empty() {
                continue;
            }
            if let Ok(o) =
                InstanceTypeOption::new(k.instance_type.clone(), &AllocatableModel::default(), offerings)
            {
                options.push(Arc::new(o));
            }
        }
        let mut template = NodePoolTemplate::new(NODEPOOL, options);
        let capacity_types: &[&str] = if spot {
            &["spot", "on-demand"]
        } else {
            &["on-demand"]
        };
        if let Ok(r) = Requirement::new(
            labels::CAPACITY_TYPE,
            Operator::In,
            capacity_types.iter().copied(),
        ) {
            template.requirements.add(r);
        }
        if let Ok(r) = Requirement::new(labels::ZONE, Operator::In, self.config.zones.iter().cloned()) {
            template.requirements.add(r);
        }
        self.templates = vec![template];
        self.templates_built = Some((self.now, step));
        self.templates_dirty = false;
    }

    // ---- Nodes ---------------------------------------------------------------------------

    fn existing(&self, node: &Node) -> ExistingNode {
        let kind = &self.kinds[node.kind];
        let mut labels = kind
            .labels
            .get(&format!("{}/{}", node.zone, node.capacity_type))
            .cloned()
            .unwrap_or_default();
        labels.insert(labels::NODE_POOL.to_owned(), NODEPOOL.to_owned());
        labels.insert(labels::HOSTNAME.to_owned(), node.name.clone());
        let pods = node
            .pods
            .iter()
            .filter_map(|p| self.pods.get(p).map(|p| p.spec.clone()))
            .collect();
        ExistingNode {
            name: node.name.clone(),
            labels,
            taints: Vec::new(),
            allocatable: kind.allocatable.clone(),
            pods,
            initialized: node.ready,
            nodepool: Some(NODEPOOL.to_owned()),
            in_flight: None,
        }
    }

    fn room(&self, node: &Node) -> [i64; 3] {
        let r = self.kinds[node.kind].room;
        [r[0] - node.used[0], r[1] - node.used[1], r[2] - node.used[2]]
    }

    /// Of nodes with room (free CPU, name, id), those with the most free CPU until they hold
    /// twice `need` (CPU, memory), plus 16, at most `4 × count + 64`.
    fn destinations(&self, mut open: Vec<(i64, &String, u64)>, need: [i64; 2], count: usize) -> Vec<u64> {
        open.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        let mut have = [0i64; 2];
        let mut keep = 0;
        for (_, _, id) in &open {
            if (have[0] >= 2 * need[0] && have[1] >= 2 * need[1]) || keep >= 4 * count + 64 {
                break;
            }
            if let Some(n) = self.nodes.get(id) {
                let room = self.room(n);
                have[0] += room[0];
                have[1] += room[1];
            }
            keep += 1;
        }
        open.truncate(keep + 16);
        open.into_iter().map(|(_, _, id)| id).collect()
    }

    /// Runs the scheduler over `pods` with the nodes that could take one of them (not
    /// doomed, room for the smallest), see the [module documentation](self).
    fn solve(&mut self, pods: Vec<Arc<PodSpec>>) -> spot_core::scheduling::Solution {
        self.refresh_templates();
        let mut min = [i64::MAX; 3];
        for p in &pods {
            min[0] = min[0].min(p.requests.cpu_millis);
            min[1] = min[1].min(p.requests.memory_bytes);
            min[2] = min[2].min(p.requests.pods);
        }
        let open: Vec<(i64, &String, u64)> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.doomed.is_none())
            .filter_map(|(id, n)| {
                let room = self.room(n);
                (room[0] >= min[0] && room[1] >= min[1] && room[2] >= min[2])
                    .then_some((room[0], &n.name, *id))
            })
            .collect();
        let need = pods.iter().fold([0i64; 2], |n, p| {
            [n[0] + p.requests.cpu_millis, n[1] + p.requests.memory_bytes]
        });
        let open = self.destinations(open, need, pods.len());
        let existing: Vec<ExistingNode> = open
            .iter()
            .filter_map(|id| self.nodes.get(id).map(|n| self.existing(n)))
            .collect();
        let mut scheduler = Scheduler::new(
            self.templates.clone(),
            existing,
            self.daemonsets.clone(),
            SchedulerOptions::default(),
        );
        self.summary.solves += 1;
        scheduler.solve(pods)
    }

    async fn provision(&mut self) {
        let ids: Vec<u64> = self.unassigned.iter().copied().collect();
        if ids.is_empty() {
            return;
        }
        let pods: Vec<Arc<PodSpec>> = ids
            .iter()
            .filter_map(|id| self.pods.get(id).map(|p| p.spec.clone()))
            .collect();
        let solution = self.solve(pods);
        for (key, node_name) in &solution.existing {
            if let (Some(id), Some(&node)) = (pod_id(key), self.by_name.get(node_name)) {
                self.bind(id, node);
                if let Some(n) = self.nodes.get_mut(&node) {
                    n.nominated_until = self.now + Duration::from_secs(20);
                }
            }
        }
        for claim in &solution.new_claims {
            if let Some(node) = self.launch(&claim.requirements, &claim.instance_types).await {
                for pod in &claim.pods {
                    if let Some(id) = pod_id(&pod.key()) {
                        self.bind(id, node);
                    }
                }
            }
        }
        if !self.unassigned.is_empty() {
            self.request_provision(self.config.batch_delay);
        }
    }

    /// Launches one node for a claim, falling back through pools that are out of capacity.
    async fn launch(
        &mut self,
        requirements: &Requirements,
        types: &[Arc<InstanceTypeOption>],
    ) -> Option<u64> {
        for _ in 0..16 {
            let plan = plan(
                self.scenario.allocation,
                requirements,
                types,
                &self.unavailable,
                self.rotation,
            )
            .ok()?;
            self.rotation = self.rotation.wrapping_add(1);
            let request = FleetRequest {
                capacity_type: plan.capacity_type,
                candidates: plan.candidates,
                count: 1,
                strategy: plan.strategy,
                tags: BTreeMap::new(),
            };
            let result = self.cloud.launch(&request).await.ok()?;
            self.unavailable.observe(plan.capacity_type, &result);
            if !result.errors.is_empty() {
                self.templates_dirty = true;
            }
            if let Some(instance) = result.instances.into_iter().next() {
                return self.add_node(instance);
            }
            if result.errors.is_empty() || result.errors.iter().any(|e| !e.is_insufficient_capacity()) {
                return None;
            }
        }
        None
    }

    fn add_node(&mut self, instance: Instance) -> Option<u64> {
        let kind = *self.kind_index.get(&instance.instance_type)?;
        let price = self.cloud.instance(&instance.id).map_or(0.0, |i| i.price);
        let id = self.next_node;
        self.next_node += 1;
        let instance_capacity_type = instance.capacity_type;
        self.by_name.insert(instance.id.clone(), id);
        self.nodes.insert(
            id,
            Node {
                name: instance.id,
                kind,
                zone: instance.zone,
                capacity_type: instance.capacity_type,
                price,
                launched_at: self.now,
                ready: false,
                pods: Vec::new(),
                used: [0; 3],
                last_pod_event: self.now,
                nominated_until: Duration::ZERO,
                doomed: None,
            },
        );
        if instance_capacity_type == CapacityType::Spot {
            self.spot_count += 1;
        }
        self.summary.peak_nodes = self.summary.peak_nodes.max(self.nodes.len());
        self.generation += 1;
        self.schedule(self.now + self.config.node_startup, Event::Ready(id));
        Some(id)
    }

    async fn node_ready(&mut self, id: u64) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        node.ready = true;
        node.last_pod_event = self.now;
        let pods = node.pods.clone();
        self.generation += 1;
        let mut sources = BTreeSet::new();
        for p in pods {
            let Some(pod) = self.pods.get_mut(&p) else {
                continue;
            };
            if pod.node == Some(id) {
                if !pod.running {
                    pod.running = true;
                    self.not_running -= 1;
                }
            } else if pod.next == Some(id) {
                if let Some(from) = pod.node {
                    sources.insert(from);
                }
                self.move_pod(p, id);
            }
        }
        for from in sources {
            self.finish_if_drained(from);
        }
        self.terminate_drained().await;
    }

    /// A doomed node whose pods are no longer waiting for a replacement: its other pods are
    /// evicted and it is queued for termination.
    fn finish_if_drained(&mut self, id: u64) {
        let Some(node) = self.nodes.get(&id) else { return };
        if node.doomed.is_none() {
            return;
        }
        let waiting = node.pods.iter().any(|p| {
            self.pods
                .get(p)
                .is_some_and(|p| p.node == Some(id) && p.next.is_some())
        });
        if waiting {
            return;
        }
        let evicted: Vec<u64> = node.pods.clone();
        for p in evicted {
            if self.pods.get(&p).is_some_and(|p| p.node == Some(id)) {
                self.evict(p);
            }
        }
        if !self.unassigned.is_empty() {
            self.request_provision(Duration::from_secs(1));
        }
        self.drained.push(id);
    }

    async fn terminate_drained(&mut self) {
        let ids = std::mem::take(&mut self.drained);
        let mut names = Vec::new();
        for id in ids {
            if let Some(node) = self.remove_node(id) {
                names.push(node.name);
            }
        }
        if !names.is_empty() {
            let _ = self.cloud.terminate(&names).await;
        }
    }

    /// Forgets a node: pods that were moving to it stay where they are.
    fn remove_node(&mut self, id: u64) -> Option<Node> {
        let node = self.nodes.remove(&id)?;
        self.by_name.remove(&node.name);
        if node.capacity_type == CapacityType::Spot {
            self.spot_count -= 1;
        }
        for p in &node.pods {
            if let Some(pod) = self.pods.get_mut(p)
                && pod.next == Some(id)
            {
                pod.next = None;
            }
        }
        self.generation += 1;
        let sources: BTreeSet<u64> = node
            .pods
            .iter()
            .filter_map(|p| self.pods.get(p).and_then(|p| p.node))
            .filter(|n| *n != id)
            .collect();
        for s in sources {
            self.finish_if_drained(s);
        }
        Some(node)
    }

    // ---- Interruptions -------------------------------------------------------------------

    async fn handle_cloud(&mut self) {
        for event in self.cloud.interruptions().await {
            let Some(&id) = self.by_name.get(&event.instance_id) else {
                continue;
            };
            match event.kind {
                EventKind::RebalanceRecommendation if self.scenario.rebalance => {
                    self.replace(id, Doom::Rebalance).await;
                }
                EventKind::SpotInterruption { .. } if self.config.replace_on_notice => {
                    self.replace(id, Doom::Notice).await;
                }
                _ => {}
            }
        }
        let reclaimed = std::mem::take(
            &mut *self
                .reclaims
                .ids
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for name in reclaimed {
            if let Some(&id) = self.by_name.get(&name) {
                self.reclaim(id);
            }
        }
        self.terminate_drained().await;
    }

    /// Cordons the node and launches capacity for its pods; they move when it is ready.
    async fn replace(&mut self, id: u64, why: Doom) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        if node.doomed.is_some() {
            return;
        }
        node.doomed = Some(why);
        self.generation += 1;
        let ids: Vec<u64> = node.pods.clone();
        let moving: Vec<u64> = ids
            .into_iter()
            .filter(|p| self.pods.get(p).is_some_and(|p| p.node == Some(id)))
            .collect();
        if !moving.is_empty() {
            let specs: Vec<Arc<PodSpec>> = moving
                .iter()
                .filter_map(|p| self.pods.get(p).map(|p| p.spec.clone()))
                .collect();
            let solution = self.solve(specs);
            let mut targets: Vec<(u64, u64)> = Vec::new();
            for (key, node_name) in &solution.existing {
                if let (Some(p), Some(&to)) = (pod_id(key), self.by_name.get(node_name)) {
                    targets.push((p, to));
                }
            }
            for claim in &solution.new_claims {
                if let Some(to) = self.launch(&claim.requirements, &claim.instance_types).await {
                    targets.extend(
                        claim
                            .pods
                            .iter()
                            .filter_map(|p| pod_id(&p.key()))
                            .map(|p| (p, to)),
                    );
                }
            }
            for (p, to) in targets {
                self.plan_move(p, to);
            }
        }
        self.finish_if_drained(id);
        self.terminate_drained().await;
    }

    /// Sets where a pod goes; a ready target takes it at once.
    fn plan_move(&mut self, p: u64, to: u64) {
        let Some(ready) = self.nodes.get(&to).map(|n| n.ready) else {
            return;
        };
        let Some((spec, bound)) = self
            .pods
            .get(&p)
            .map(|pod| (pod.spec.clone(), pod.node.is_some()))
        else {
            return;
        };
        if !bound {
            self.bind(p, to);
            return;
        }
        if ready {
            self.reserve(to, p, &spec);
            self.move_pod(p, to);
        } else {
            self.reserve(to, p, &spec);
            if let Some(pod) = self.pods.get_mut(&p) {
                pod.next = Some(to);
            }
        }
    }

    /// The market took the instance: its pods go to their replacement or pending.
    fn reclaim(&mut self, id: u64) {
        let Some(node) = self.nodes.get(&id) else { return };
        let pods: Vec<u64> = node.pods.clone();
        for p in pods {
            let Some(pod) = self.pods.get_mut(&p) else {
                continue;
            };
            if pod.node != Some(id) {
                continue;
            }
            if pod.running {
                self.summary.reclaimed_pods += 1;
            }
            match pod.next.take() {
                Some(to) => {
                    pod.node = Some(to);
                    let spec = pod.spec.clone();
                    if pod.running {
                        pod.running = false;
                        self.not_running += 1;
                        self.summary.evictions += 1;
                    }
                    self.unreserve(id, p, &spec);
                    self.generation += 1;
                }
                None => self.evict(p),
            }
        }
        self.remove_node(id);
        if !self.unassigned.is_empty() {
            self.request_provision(self.config.batch_delay);
        }
    }

    // ---- Consolidation -------------------------------------------------------------------

    /// The cluster as consolidation sees it. Like provisioning, it is cut down to what can
    /// matter for unconstrained pods: the empty candidates, the
    /// [`SimConfig::consolidation_candidates`] others with the best savings ratio (price per
    /// pod to move: the order the methods try them in, so a bigger list only adds work they
    /// would seldom reach), the nodes in `keep`, and as destinations the nodes with the most
    /// free CPU that have room for the smallest pod to place, until they hold twice the pods
    /// of the candidates and the pending ones. Budgets count every node.
    fn cluster(&self, keep: &[String]) -> ClusterState {
        let now = self.utc();
        let mut cluster = ClusterState {
            templates: self.templates.clone(),
            daemonsets: self.daemonsets.clone(),
            ..ClusterState::default()
        };
        let after = self.config.consolidate_after;
        let mut total = 0;
        let mut disrupting = 0;
        let consolidatable = |node: &Node| {
            is_consolidatable(
                Some(self.start + node.last_pod_event),
                self.start + node.launched_at,
                Some(after),
                now,
            )
        };
        // Candidates: (savings ratio, name, id).
        let mut ranked: Vec<(f64, &String, u64)> = Vec::new();
        let mut chosen: BTreeSet<u64> = BTreeSet::new();
        for (id, node) in &self.nodes {
            if node.doomed.is_some() {
                disrupting += 1;
                for p in &node.pods {
                    if let Some(pod) = self
                        .pods
                        .get(p)
                        .filter(|pod| pod.node == Some(*id) && pod.next.is_none())
                    {
                        cluster.pending.push(pod.spec.clone());
                    }
                }
                continue;
            }
            if !node.ready {
                continue;
            }
            total += 1;
            if keep.contains(&node.name) {
                chosen.insert(*id);
            } else if self.now >= node.nominated_until && consolidatable(node) {
                if node.pods.is_empty() {
                    chosen.insert(*id);
                } else {
                    ranked.push((node.price / (1.0 + node.pods.len() as f64), &node.name, *id));
                }
            }
        }
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        chosen.extend(
            ranked
                .iter()
                .take(self.config.consolidation_candidates)
                .map(|(_, _, id)| *id),
        );
        for id in &self.unassigned {
            if let Some(pod) = self.pods.get(id) {
                cluster.pending.push(pod.spec.clone());
            }
        }
        // Destinations.
        let mut min = [i64::MAX; 3];
        let mut moving = 0;
        let pods_of = |id: &u64| self.nodes.get(id).into_iter().flat_map(|n| n.pods.iter());
        let specs = chosen
            .iter()
            .flat_map(pods_of)
            .filter_map(|p| self.pods.get(p).map(|p| &p.spec))
            .chain(cluster.pending.iter());
        let mut need = [0i64; 2];
        for spec in specs {
            moving += 1;
            need[0] += spec.requests.cpu_millis;
            need[1] += spec.requests.memory_bytes;
            min[0] = min[0].min(spec.requests.cpu_millis);
            min[1] = min[1].min(spec.requests.memory_bytes);
            min[2] = min[2].min(spec.requests.pods);
        }
        let open: Vec<(i64, &String, u64)> = self
            .nodes
            .iter()
            .filter(|(id, n)| n.doomed.is_none() && !chosen.contains(id))
            .filter_map(|(id, n)| {
                let room = self.room(n);
                (room[0] >= min[0] && room[1] >= min[1] && room[2] >= min[2])
                    .then_some((room[0], &n.name, *id))
            })
            .collect();
        let open = self.destinations(open, need, moving);
        for id in chosen {
            let Some(node) = self.nodes.get(&id) else { continue };
            let existing = self.existing(node);
            if self.now < node.last_pod_event + after {
                cluster.non_destinations.insert(node.name.clone());
            }
            cluster.candidates.push(Candidate {
                node_name: node.name.clone(),
                nodepool: NODEPOOL.to_owned(),
                instance_type: self.kinds[node.kind].instance_type.name.clone(),
                zone: node.zone.clone(),
                capacity_type: node.capacity_type,
                price: node.price,
                pods: existing.pods.clone(),
                initialized: true,
                created: self.start + node.launched_at,
                expire_after: Some(Duration::from_secs(720 * 3600)),
                consolidatable: consolidatable(node),
                do_not_disrupt: false,
                nominated: false,
                deleting: false,
                drifted: None,
            });
            cluster.nodes.push(existing);
        }
        for id in open {
            let Some(node) = self.nodes.get(&id) else { continue };
            if node.ready && self.now < node.last_pod_event + after {
                cluster.non_destinations.insert(node.name.clone());
            }
            cluster.nodes.push(self.existing(node));
        }
        let mut pool = PoolPolicy::new(NODEPOOL, total);
        pool.disrupting = disrupting;
        cluster.pools.push(pool);
        cluster
    }

    fn consolidate(&mut self) {
        let step = self.now.as_secs() / self.config.market.price_interval.as_secs().max(1);
        let idle = self.idle.is_some_and(|(generation, idle_step, at)| {
            self.now < at + 3 * self.config.consolidation_interval
                || (generation == self.generation && idle_step == step && self.now < at + IDLE_RECHECK)
        });
        if self.command.is_some() || idle {
            return;
        }
        self.refresh_templates();
        let cluster = self.cluster(&[]);
        let commands = compute_commands(&cluster, &self.consolidation_options, self.utc());
        match commands.into_iter().next() {
            Some(command) => {
                self.command = Some(command);
                self.idle = None;
                let at = self.now + spot_core::disruption::consolidation::COMMAND_VALIDATION_DELAY;
                self.schedule(at, Event::Validate);
            }
            None => self.idle = Some((self.generation, step, self.now)),
        }
    }

    async fn validate(&mut self) {
        let Some(command) = self.command.take() else {
            return;
        };
        self.refresh_templates();
        let cluster = self.cluster(&command.candidates);
        if validate_command(&command, &cluster, &self.consolidation_options, self.utc()).is_err() {
            return;
        }
        let candidates: Vec<u64> = command
            .candidates
            .iter()
            .filter_map(|name| self.by_name.get(name).copied())
            .collect();
        self.summary.consolidations += 1;
        self.summary.consolidated_nodes += candidates.len() as u64;
        for id in &candidates {
            if let Some(node) = self.nodes.get_mut(id) {
                node.doomed = Some(Doom::Consolidation);
            }
        }
        self.generation += 1;
        if command.decision() == Decision::Replace {
            let mut launched = false;
            for claim in &command.replacements {
                launched |= self.launch_replacement(claim).await;
            }
            if !launched {
                // No replacement: the candidates stay.
                for id in &candidates {
                    if let Some(node) = self.nodes.get_mut(id) {
                        node.doomed = None;
                    }
                }
                self.summary.consolidations -= 1;
                self.summary.consolidated_nodes -= candidates.len() as u64;
                return;
            }
        }
        for id in candidates {
            self.finish_if_drained(id);
        }
        self.terminate_drained().await;
    }

    async fn launch_replacement(&mut self, claim: &NewNodeClaim) -> bool {
        let Some(to) = self.launch(&claim.requirements, &claim.instance_types).await else {
            return false;
        };
        for pod in &claim.pods {
            if let Some(p) = pod_id(&pod.key()) {
                self.plan_move(p, to);
            }
        }
        true
    }

    // ---- Results -------------------------------------------------------------------------

    fn sample(&mut self) {
        let interval = self.now.saturating_sub(self.last_sample).as_secs_f64();
        let pending_mean = if interval > 0.0 {
            self.interval_pending_seconds / interval
        } else {
            self.not_running as f64
        };
        self.interval_pending_seconds = 0.0;
        self.last_sample = self.now;
        self.series.push(Sample {
            hours: self.now.as_secs_f64() / 3600.0,
            nodes: self.nodes.len(),
            spot_nodes: self
                .nodes
                .values()
                .filter(|n| n.capacity_type == CapacityType::Spot)
                .count(),
            pods: self.pods.len(),
            pending_mean,
            pending: self.not_running,
            cost_per_hour: self.cloud.running_cost_per_hour(),
            cost: self.cloud.accumulated_cost(),
        });
    }

    fn finish(mut self) -> ScenarioResult {
        let stats = self.cloud.stats();
        let instances = self.cloud.instances();
        let end = self.start + self.now;
        let on_demand_equivalent = instances
            .iter()
            .map(|i| {
                let od = self
                    .cloud
                    .market(|m| m.on_demand_price(&PoolKey::new(&i.instance.instance_type, &i.instance.zone)))
                    .unwrap_or(i.price);
                let hours = (i.terminated_at.unwrap_or(end) - i.launched_at).as_seconds_f64() / 3600.0;
                od * hours
            })
            .sum();
        let s = &mut self.summary;
        s.cost = self.cloud.accumulated_cost();
        s.on_demand_equivalent = on_demand_equivalent;
        s.interruptions = stats.interruption_notices;
        s.reclaimed = stats.interrupted;
        s.rebalance_recommendations = stats.rebalance_recommendations;
        s.launches = stats.launched;
        s.launch_errors = stats.launch_errors;
        s.pending_pod_minutes = self.pending_seconds / 60.0;
        let total = self.now.as_secs_f64();
        s.mean_nodes = if total > 0.0 {
            self.node_seconds / total
        } else {
            0.0
        };
        s.spot_share = if self.node_seconds > 0.0 {
            self.spot_node_seconds / self.node_seconds
        } else {
            0.0
        };
        ScenarioResult {
            scenario: self.scenario,
            summary: self.summary,
            series: self.series,
        }
    }
}
