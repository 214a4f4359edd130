//! [`SimCloud`]: an in-memory EC2 implementing [`CloudProvider`] over the seeded
//! [`Market`], with the allocation strategies implemented for real.
//!
//! # Launches
//!
//! [`CloudProvider::launch`] waits [`SimCloudConfig::api_latency`] (`tokio::time::sleep`, so
//! tests with paused time are instant), then places the instances one at a time, as EC2
//! Fleet `instant` does:
//!
//! 1. Candidates are de-duplicated by (type, zone). A type missing from the catalog, not
//!    offered in the zone, not sold with the requested capacity type, or (spot) not priced by
//!    the market fails with `Unsupported` for that pool.
//! 2. The strategy picks a pool among the remaining ones (prices are the market's current
//!    spot prices, or on-demand prices; "available" is the pool's spare spot capacity,
//!    unlimited for on-demand):
//!    - `price-capacity-optimized`: among the pools with capacity, those whose spare capacity
//!      is at least [`SimCloudConfig::pco_capacity_fraction`] (default ½) of the deepest
//!      pool's are "high capacity"; the cheapest of them wins (ties: more capacity, then
//!      request order). This is AWS's description ("the pools with the highest capacity
//!      availability, then the lowest price among them") with "highest" made a threshold.
//!    - `capacity-optimized`: the pool with the most spare capacity (ties: cheaper, then
//!      request order).
//!    - `lowest-price`: the cheapest pool (ties: request order), blind to capacity.
//!    - `diversified`: the pools in request order, round robin, blind to capacity.
//!
//!    Capacity-aware strategies never pick an empty pool; when every remaining pool is empty,
//!    each of them is reported as `InsufficientInstanceCapacity`. The capacity-blind ones find
//!    out by trying: the pool is reported and dropped, and the next pick is made.
//! 3. An error injected with [`SimCloud::inject`] for the picked pool fails that attempt
//!    with its code (one use of its count); the pool is reported and dropped. A spot pick that
//!    would exceed [`SimCloudConfig::spot_vcpu_limit`], or an injected
//!    `MaxSpotInstanceCountExceeded`, ends the whole request (an account limit).
//! 4. A spot instance takes one unit of the pool's capacity and pays the pool's spot price
//!    at launch; an on-demand instance pays the on-demand price. Its interruption plan is
//!    drawn ([`Market::plan_interruption`]).
//!
//! The result holds the instances and one [`LaunchError`] per (pool, code): both can be
//! non-empty, as with CreateFleet.
//!
//! Instances get ids `i-0` + 16 hex digits, private IPv4 addresses in `10.0.0.0/8` and
//! private DNS names as EC2 names them: `ip-10-1-2-3.ec2.internal` in us-east-1,
//! `ip-10-1-2-3.<region>.compute.internal` elsewhere. They are `pending` for
//! [`SimCloudConfig::pending_duration`], then `running`; terminated ones are
//! `shutting-down` for [`SimCloudConfig::shutdown_duration`], then `terminated`, and stay
//! describable.
//!
//! # Node labels and taints
//!
//! A real launch carries the node's labels and taints in its user data; the simulation reads
//! them from [`FleetRequest::tags`] and hands them to the [`InstanceObserver`]s:
//!
//! | tag | meaning |
//! |---|---|
//! | [`TAG_NODEPOOL`] (`karpenter.sh/nodepool`) | the `karpenter.sh/nodepool` label |
//! | [`TAG_NODECLAIM`] (`karpenter.sh/nodeclaim`) | kept on the instance only (the Node is tied to its NodeClaim by provider id, as in Karpenter) |
//! | [`TAG_NODE_LABELS`] (`sim.spot.dev/node-labels`) | JSON object of further labels (the NodeClaim's labels) |
//! | [`TAG_NODE_TAINTS`] (`sim.spot.dev/node-taints`) | JSON array of taints `{"key", "value", "effect"}` |
//! | [`TAG_STARTUP_TAINTS`] (`sim.spot.dev/startup-taints`) | JSON array of startup taints |
//!
//! [`NodeTemplate`] parses and writes these tags.
//!
//! # Time, interruptions and cost
//!
//! Virtual time is `manual + tokio elapsed × speed` ([`SimClock`]): [`SimCloud::advance`]
//! moves it explicitly (a discrete-event simulation steps days in milliseconds with
//! [`SimClock::Manual`]); with [`SimClock::Tokio`] it also follows tokio's clock, so paused
//! tests and the demo see time pass. [`SimCloud`] implements [`Clock`] with it.
//!
//! Every call first brings the cloud up to the current virtual time: due rebalance
//! recommendations and interruption notices become [`InterruptionEvent`]s that
//! [`SimCloud::interruptions`] hands out once each, and instances past their deadline are
//! terminated (`interrupted`, their capacity unit not returned). Events have the shapes the
//! SQS parser produces ([`EventOrigin::Queue`]: an EventBridge-style id as identity,
//! observed at the notice time) or the IMDS ones ([`EventOrigin::Imds`]).
//!
//! Observers hear about launches and terminations from the async calls (launch, terminate,
//! describe, [`SimCloud::advance`], [`SimCloud::tick`], [`SimCloud::interruptions`]); a
//! reclaim noticed by a synchronous accessor (costs, [`SimCloud::instances`]) reaches them at
//! the next async call. Nothing runs in the background: a driver calls [`SimCloud::tick`]
//! (or [`SimCloud::interruptions`]) periodically, or jumps to [`SimCloud::next_due`].
//!
//! Cost is billed per second from launch to termination (or reclaim) at the price fixed at
//! launch: [`SimCloud::running_cost_per_hour`], [`SimCloud::accumulated_cost`].

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use spot_core::catalog::Catalog;
use spot_core::clock::Clock;
use spot_core::cloud::{
    AllocationStrategy, CloudProvider, Error as CloudError, FleetRequest, FleetResult, Instance, LaunchError,
};
use spot_core::event::{EventKind, InterruptionEvent, Origin, SpotAction};
use spot_core::instance_type::{CapacityType, InstanceType};
use spot_core::labels;
use spot_core::node::Taint;
use spot_core::price::PriceSource;
use spot_core::source::MemorySource;
use time::OffsetDateTime;

use crate::market::{self, InterruptionPlan, Market, MarketConfig, PoolKey};
use crate::rng::SimRng;

/// The tag naming the NodePool: becomes the `karpenter.sh/nodepool` label.
pub const TAG_NODEPOOL: &str = labels::NODE_POOL;
/// The tag naming the NodeClaim (kept on the instance).
pub const TAG_NODECLAIM: &str = "karpenter.sh/nodeclaim";
/// The tag carrying further node labels, a JSON object.
pub const TAG_NODE_LABELS: &str = "sim.spot.dev/node-labels";
/// The tag carrying the node's taints, a JSON array of `{"key", "value", "effect"}`.
pub const TAG_NODE_TAINTS: &str = "sim.spot.dev/node-taints";
/// The tag carrying the node's startup taints, a JSON array like [`TAG_NODE_TAINTS`].
pub const TAG_STARTUP_TAINTS: &str = "sim.spot.dev/startup-taints";

/// The error code of a pool without capacity.
pub const INSUFFICIENT_CAPACITY: &str = "InsufficientInstanceCapacity";
/// The error code of the account's spot limit.
pub const SPOT_LIMIT: &str = "MaxSpotInstanceCountExceeded";
/// The error code of a pool that does not exist.
pub const UNSUPPORTED: &str = "Unsupported";

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// A configuration field with an invalid value.
    #[error("sim cloud config: {field} = {value}: {message}")]
    Config {
        /// The field.
        field: &'static str,
        /// Its value.
        value: String,
        /// What is expected.
        message: &'static str,
    },
    /// A node tag that does not parse.
    #[error("tag {tag}: {message}")]
    Tag {
        /// The tag key.
        tag: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The market refused.
    #[error(transparent)]
    Market(#[from] market::Error),
    /// A scripted interruption names an instance that cannot get one.
    #[error("instance {instance_id}: {message}")]
    NotInterruptible {
        /// The instance.
        instance_id: String,
        /// Why (unknown, not spot, already ended).
        message: &'static str,
    },
}

/// How virtual time moves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SimClock {
    /// Only through [`SimCloud::advance`].
    Manual,
    /// Also with tokio's clock (paused in tests), `speed` times faster (positive).
    Tokio {
        /// Virtual seconds per tokio second.
        speed: f64,
    },
}

/// Which source's event shape [`SimCloud::interruptions`] produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventOrigin {
    /// EventBridge through SQS: an EventBridge-style id as identity and
    /// [`Origin::Queue`].
    Queue,
    /// The instance metadata service: identities from the notice times, [`Origin::Imds`].
    Imds,
}

/// Settings of [`SimCloud`]. [`Default`] gives the values documented on each field.
#[derive(Debug, Clone, PartialEq)]
pub struct SimCloudConfig {
    /// How long a launch call takes (default 1 s).
    pub api_latency: Duration,
    /// How long instances stay `pending` (default 10 s).
    pub pending_duration: Duration,
    /// How long terminated instances stay `shutting-down` (default 30 s).
    pub shutdown_duration: Duration,
    /// How virtual time moves (default [`SimClock::Tokio`] at speed 1).
    pub clock: SimClock,
    /// The price-capacity-optimized threshold: pools with at least this fraction of the
    /// deepest pool's spare capacity compete on price (default 0.5, in `(0, 1]`).
    pub pco_capacity_fraction: f64,
    /// The account's running spot vCPU limit (default none).
    pub spot_vcpu_limit: Option<u32>,
    /// The shape of interruption events (default [`EventOrigin::Queue`]).
    pub event_origin: EventOrigin,
}

impl Default for SimCloudConfig {
    fn default() -> Self {
        SimCloudConfig {
            api_latency: Duration::from_secs(1),
            pending_duration: Duration::from_secs(10),
            shutdown_duration: Duration::from_secs(30),
            clock: SimClock::Tokio { speed: 1.0 },
            pco_capacity_fraction: 0.5,
            spot_vcpu_limit: None,
            event_origin: EventOrigin::Queue,
        }
    }
}

impl SimCloudConfig {
    /// Checks the fields; the error names the first invalid one.
    pub fn validate(&self) -> Result<(), Error> {
        if let SimClock::Tokio { speed } = self.clock
            && !(speed.is_finite() && speed > 0.0)
        {
            return Err(Error::Config {
                field: "clock.speed",
                value: speed.to_string(),
                message: "must be finite and positive",
            });
        }
        if !(self.pco_capacity_fraction > 0.0 && self.pco_capacity_fraction <= 1.0) {
            return Err(Error::Config {
                field: "pco_capacity_fraction",
                value: self.pco_capacity_fraction.to_string(),
                message: "must be in (0, 1]",
            });
        }
        Ok(())
    }
}

/// The node a launch asks for: the labels and taints carried by the request's tags (see the
/// [module documentation](self)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeTemplate {
    /// Labels: [`TAG_NODE_LABELS`], then `karpenter.sh/nodepool` from [`TAG_NODEPOOL`].
    pub labels: BTreeMap<String, String>,
    /// Taints from [`TAG_NODE_TAINTS`].
    pub taints: Vec<Taint>,
    /// Startup taints from [`TAG_STARTUP_TAINTS`].
    pub startup_taints: Vec<Taint>,
}

impl NodeTemplate {
    /// Reads the node tags of a request.
    pub fn from_tags(tags: &BTreeMap<String, String>) -> Result<NodeTemplate, Error> {
        let mut labels: BTreeMap<String, String> = match tags.get(TAG_NODE_LABELS) {
            Some(json) => serde_json::from_str(json).map_err(|e| Error::Tag {
                tag: TAG_NODE_LABELS,
                message: format!("expected a JSON object of strings: {e}"),
            })?,
            None => BTreeMap::new(),
        };
        if let Some(pool) = tags.get(TAG_NODEPOOL) {
            labels.insert(labels::NODE_POOL.to_owned(), pool.clone());
        }
        let taints = |tag: &'static str| -> Result<Vec<Taint>, Error> {
            match tags.get(tag) {
                Some(json) => serde_json::from_str(json).map_err(|e| Error::Tag {
                    tag,
                    message: format!("expected a JSON array of {{\"key\", \"value\", \"effect\"}}: {e}"),
                }),
                None => Ok(Vec::new()),
            }
        };
        Ok(NodeTemplate {
            labels,
            taints: taints(TAG_NODE_TAINTS)?,
            startup_taints: taints(TAG_STARTUP_TAINTS)?,
        })
    }

    /// The [`TAG_NODE_LABELS`], [`TAG_NODE_TAINTS`] and [`TAG_STARTUP_TAINTS`] tags of this
    /// template (empty parts left out), for callers that build requests. The NodePool and
    /// NodeClaim tags are the caller's.
    pub fn to_tags(&self) -> BTreeMap<String, String> {
        // Serialising maps of strings and plain structs cannot fail.
        let mut tags = BTreeMap::new();
        if !self.labels.is_empty() {
            tags.insert(
                TAG_NODE_LABELS.to_owned(),
                serde_json::to_string(&self.labels).unwrap_or_default(),
            );
        }
        for (tag, taints) in [
            (TAG_NODE_TAINTS, &self.taints),
            (TAG_STARTUP_TAINTS, &self.startup_taints),
        ] {
            if !taints.is_empty() {
                tags.insert(tag.to_owned(), serde_json::to_string(taints).unwrap_or_default());
            }
        }
        tags
    }

    /// The taints the kubelet registers the node with: the taints, then the startup taints
    /// whose (key, effect) is not already there.
    pub fn registration_taints(&self) -> Vec<Taint> {
        let mut all = self.taints.clone();
        for t in &self.startup_taints {
            if !all.iter().any(|a| a.same_slot(t)) {
                all.push(t.clone());
            }
        }
        all
    }
}

/// Told about every launch and termination of a [`SimCloud`] (node registration, recorders).
///
/// Calls come in the order the cloud saw the events, never concurrently for one cloud. They
/// run under the cloud's notification lock: an observer must not call the cloud's async
/// methods (launch, terminate, describe, advance, ...), which would wait for that lock; spawn
/// a task for such work.
#[async_trait]
pub trait InstanceObserver: Send + Sync {
    /// An instance was launched. `labels` are the request's node labels (see
    /// [`NodeTemplate`]), `taints` the ones the kubelet registers with
    /// ([`NodeTemplate::registration_taints`]: taints, then startup taints).
    async fn launched(
        &self,
        instance: &Instance,
        instance_type: &InstanceType,
        labels: &BTreeMap<String, String>,
        taints: &[Taint],
    );

    /// An instance was terminated (by the customer or by a spot interruption).
    async fn terminated(&self, instance_id: &str);
}

/// One instance with its simulation record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimInstance {
    /// The instance as [`CloudProvider::describe`] shows it now.
    pub instance: Instance,
    /// The price it pays, USD per hour.
    pub price: f64,
    /// Launch time.
    #[serde(with = "time::serde::rfc3339")]
    pub launched_at: OffsetDateTime,
    /// When it was terminated or reclaimed.
    #[serde(with = "time::serde::rfc3339::option")]
    pub terminated_at: Option<OffsetDateTime>,
    /// Whether a spot interruption ended it.
    pub interrupted: bool,
    /// When its interruption notice is (or was) due, for spot instances that get one.
    #[serde(with = "time::serde::rfc3339::option")]
    pub notice_at: Option<OffsetDateTime>,
}

/// Counters of a [`SimCloud`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudStats {
    /// Instances launched.
    pub launched: u64,
    /// Instances the customer terminated.
    pub terminated: u64,
    /// Spot instances reclaimed after their notice.
    pub interrupted: u64,
    /// Interruption notices issued.
    pub interruption_notices: u64,
    /// Rebalance recommendations issued.
    pub rebalance_recommendations: u64,
    /// Launch errors by code (one per pool and launch call).
    pub launch_errors: BTreeMap<String, u64>,
}

#[derive(Debug, Clone)]
struct Record {
    instance: Instance,
    seq: u64,
    pool: PoolKey,
    price: f64,
    vcpus: u32,
    ip: u32,
    launched_at: Duration,
    ended_at: Option<Duration>,
    interrupted: bool,
    plan: Option<InterruptionPlan>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    Rebalance,
    Notice,
    Reclaim,
}

#[derive(Debug, Clone)]
struct Injection {
    instance_type: String,
    zone: String,
    capacity_type: CapacityType,
    code: String,
    remaining: u32,
}

impl Injection {
    fn matches(&self, key: &PoolKey, capacity_type: CapacityType) -> bool {
        self.remaining > 0
            && self.capacity_type == capacity_type
            && (self.instance_type == "*" || self.instance_type == key.instance_type)
            && (self.zone == "*" || self.zone == key.zone)
    }
}

#[derive(Debug, Clone)]
enum Notice {
    Launched {
        instance: Box<Instance>,
        instance_type: Box<InstanceType>,
        labels: BTreeMap<String, String>,
        taints: Vec<Taint>,
    },
    Terminated(String),
}

#[derive(Debug)]
struct State {
    market: Market,
    manual: Duration,
    /// By id: ordered, so sums over instances are the same on every run.
    records: BTreeMap<String, Record>,
    schedule: BTreeSet<(Duration, u64, Due, String)>,
    outbox: Vec<InterruptionEvent>,
    notices: Vec<Notice>,
    injections: Vec<Injection>,
    rng: SimRng,
    ips: HashSet<u32>,
    seq: u64,
    stats: CloudStats,
}

/// The simulated cloud; see the [module documentation](self).
pub struct SimCloud {
    config: SimCloudConfig,
    catalog: Arc<Catalog>,
    origin: tokio::time::Instant,
    seed: u64,
    state: Mutex<State>,
    observers: Mutex<Vec<Arc<dyn InstanceObserver>>>,
    flush: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for SimCloud {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimCloud")
            .field("config", &self.config)
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

/// A candidate pool of one launch.
struct Pick {
    key: PoolKey,
    instance_type: InstanceType,
    /// The on-demand price (on-demand launches).
    on_demand: f64,
}

/// What the strategies see of a pool.
#[derive(Debug, Clone, Copy, PartialEq)]
struct View {
    price: f64,
    available: u32,
}

/// The strategy's pick among `views` (an index), `None` when a capacity-aware strategy finds
/// no pool with capacity. `cursor` is the diversified rotation.
fn choose(strategy: AllocationStrategy, views: &[View], cursor: usize, fraction: f64) -> Option<usize> {
    let n = views.len();
    let cheaper = |a: usize, b: usize| views[a].price.total_cmp(&views[b].price);
    let deeper = |a: usize, b: usize| views[b].available.cmp(&views[a].available);
    match strategy {
        AllocationStrategy::LowestPrice => (0..n).min_by(|&a, &b| cheaper(a, b).then(a.cmp(&b))),
        AllocationStrategy::Diversified => (n > 0).then(|| cursor % n),
        AllocationStrategy::CapacityOptimized => (0..n)
            .filter(|&i| views[i].available >= 1)
            .min_by(|&a, &b| deeper(a, b).then(cheaper(a, b)).then(a.cmp(&b))),
        AllocationStrategy::PriceCapacityOptimized => {
            let deepest = views.iter().map(|v| v.available).max().filter(|&m| m >= 1)?;
            let floor = ((f64::from(deepest) * fraction).ceil() as u32).max(1);
            (0..n)
                .filter(|&i| views[i].available >= floor)
                .min_by(|&a, &b| cheaper(a, b).then(deeper(a, b)).then(a.cmp(&b)))
        }
    }
}

/// RFC 3339, UTC, whole seconds, as IMDS writes times.
fn imds_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// A UUID-shaped id (as EventBridge and SQS use) from a seeded stream.
fn uuid(rng: &mut SimRng) -> String {
    let (a, b) = (rng.next_u64(), rng.next_u64());
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

impl SimCloud {
    /// A cloud over `market`, launching the types of `catalog`. The seed of instance ids and
    /// addresses is the market's.
    pub fn new(config: SimCloudConfig, market: Market, catalog: Arc<Catalog>) -> Result<SimCloud, Error> {
        config.validate()?;
        let seed = market.config().seed;
        Ok(SimCloud {
            config,
            catalog,
            origin: tokio::time::Instant::now(),
            seed,
            state: Mutex::new(State {
                market,
                manual: Duration::ZERO,
                records: BTreeMap::new(),
                schedule: BTreeSet::new(),
                outbox: Vec::new(),
                notices: Vec::new(),
                injections: Vec::new(),
                rng: SimRng::stream(seed, "instances"),
                ips: HashSet::new(),
                seq: 0,
                stats: CloudStats::default(),
            }),
            observers: Mutex::new(Vec::new()),
            flush: tokio::sync::Mutex::new(()),
        })
    }

    /// A cloud over the embedded catalog and an offline market ([`Market::offline`]).
    pub fn offline(config: SimCloudConfig, market: MarketConfig) -> Result<SimCloud, Error> {
        SimCloud::new(
            config,
            Market::offline(market)?,
            Arc::new(Catalog::embedded().clone()),
        )
    }

    /// The settings.
    pub fn config(&self) -> &SimCloudConfig {
        &self.config
    }

    /// The catalog.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// Adds an observer of launches and terminations (from the next event on).
    pub fn add_observer(&self, observer: Arc<dyn InstanceObserver>) {
        lock(&self.observers).push(observer);
    }

    /// Makes the next `count` launch attempts in matching pools fail with `code`
    /// (`InsufficientInstanceCapacity`, `MaxSpotInstanceCountExceeded`, ...). `"*"` as the
    /// instance type or zone matches any.
    pub fn inject(
        &self,
        instance_type: &str,
        zone: &str,
        capacity_type: CapacityType,
        code: &str,
        count: u32,
    ) {
        lock(&self.state).injections.push(Injection {
            instance_type: instance_type.to_owned(),
            zone: zone.to_owned(),
            capacity_type,
            code: code.to_owned(),
            remaining: count,
        });
    }

    /// Removes every injected error.
    pub fn clear_injections(&self) {
        lock(&self.state).injections.clear();
    }

    /// Runs `f` on the market, brought to the current virtual time (to configure pools or
    /// read prices).
    pub fn market<R>(&self, f: impl FnOnce(&mut Market) -> R) -> R {
        let mut st = lock(&self.state);
        let now = self.now_of(&st);
        st.market.advance_to(now);
        f(&mut st.market)
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now_of(&lock(&self.state))
    }

    /// Moves virtual time forward by `dt`, then handles what became due (see
    /// [`SimCloud::tick`]).
    pub async fn advance(&self, dt: Duration) {
        {
            let mut st = lock(&self.state);
            st.manual = st.manual.saturating_add(dt);
            self.settle(&mut st);
        }
        self.flush().await;
    }

    /// Handles what is due at the current virtual time: queues due interruption events,
    /// terminates reclaimed instances, and tells the observers.
    pub async fn tick(&self) {
        self.settle(&mut lock(&self.state));
        self.flush().await;
    }

    /// When the next interruption event (rebalance recommendation, notice or reclaim) is due,
    /// if any: a discrete-event simulation can jump there.
    pub fn next_due(&self) -> Option<OffsetDateTime> {
        let st = lock(&self.state);
        st.schedule
            .iter()
            .find(|(_, _, _, id)| st.records.get(id).is_some_and(|r| r.ended_at.is_none()))
            .map(|(at, ..)| st.market.time_at(*at))
    }

    /// The interruption events that became due since the last call (each is returned once):
    /// rebalance recommendations and two-minute spot interruption notices, in time order.
    pub async fn interruptions(&self) -> Vec<InterruptionEvent> {
        let events = {
            let mut st = lock(&self.state);
            self.settle(&mut st);
            std::mem::take(&mut st.outbox)
        };
        self.flush().await;
        events
    }

    /// Interrupts the running spot instance `instance_id` from now on, replacing its drawn
    /// plan (scripted scenarios: the demo, tests). With `rebalance_lead`, a rebalance
    /// recommendation comes now and the interruption notice that much later; without, the
    /// notice comes now. The reclaim follows the notice after [`MarketConfig::notice`]. The
    /// events come out of [`SimCloud::interruptions`] like drawn ones; returns the plan, in
    /// virtual time since the start ([`SimCloud::elapsed`]).
    pub async fn interrupt(
        &self,
        instance_id: &str,
        rebalance_lead: Option<Duration>,
    ) -> Result<InterruptionPlan, Error> {
        let plan = {
            let mut st = lock(&self.state);
            let now = self.settle(&mut st);
            let seq = Self::interruptible(&st, instance_id)?;
            let notice_at = now + rebalance_lead.unwrap_or_default();
            let plan = InterruptionPlan {
                rebalance_at: rebalance_lead.map(|_| now),
                notice_at,
                terminate_at: notice_at + st.market.config().notice,
            };
            st.schedule.retain(|(_, _, _, id)| id != instance_id);
            if let Some(at) = plan.rebalance_at {
                st.schedule
                    .insert((at, seq, Due::Rebalance, instance_id.to_owned()));
            }
            st.schedule
                .insert((plan.notice_at, seq, Due::Notice, instance_id.to_owned()));
            st.schedule
                .insert((plan.terminate_at, seq, Due::Reclaim, instance_id.to_owned()));
            if let Some(r) = st.records.get_mut(instance_id) {
                r.plan = Some(plan);
            }
            self.settle(&mut st);
            plan
        };
        self.flush().await;
        Ok(plan)
    }

    /// Issues a rebalance recommendation for the running spot instance `instance_id` now,
    /// with no interruption following it (its drawn plan, if any, stays).
    pub async fn recommend_rebalance(&self, instance_id: &str) -> Result<(), Error> {
        {
            let mut st = lock(&self.state);
            let now = self.settle(&mut st);
            let seq = Self::interruptible(&st, instance_id)?;
            st.schedule
                .insert((now, seq, Due::Rebalance, instance_id.to_owned()));
            self.settle(&mut st);
        }
        self.flush().await;
        Ok(())
    }

    /// The sequence number of a running spot instance, or why it cannot be interrupted.
    fn interruptible(st: &State, instance_id: &str) -> Result<u64, Error> {
        let bad = |message| Error::NotInterruptible {
            instance_id: instance_id.to_owned(),
            message,
        };
        let r = st
            .records
            .get(instance_id)
            .ok_or_else(|| bad("no such instance"))?;
        if r.ended_at.is_some() {
            return Err(bad("the instance is terminated"));
        }
        if r.instance.capacity_type != CapacityType::Spot {
            return Err(bad("only spot instances are interrupted"));
        }
        Ok(r.seq)
    }

    /// Pushes the due interruption events to `source`, one delivery per event (as SQS
    /// delivers one EventBridge event per message); returns how many.
    pub async fn deliver_interruptions(&self, source: &MemorySource) -> usize {
        let events = self.interruptions().await;
        let n = events.len();
        for event in events {
            source.push(vec![event]).await;
        }
        n
    }

    /// What the instances running now cost per hour, USD.
    pub fn running_cost_per_hour(&self) -> f64 {
        let mut st = lock(&self.state);
        self.settle(&mut st);
        st.records
            .values()
            .filter(|r| r.ended_at.is_none())
            .map(|r| r.price)
            .sum()
    }

    /// What every instance has cost so far, USD: price × running time, per second.
    pub fn accumulated_cost(&self) -> f64 {
        let mut st = lock(&self.state);
        let now = self.settle(&mut st);
        st.records
            .values()
            .map(|r| {
                let end = r.ended_at.unwrap_or(now);
                r.price * end.saturating_sub(r.launched_at).as_secs_f64() / 3600.0
            })
            .sum()
    }

    /// Every instance ever launched, in launch order.
    pub fn instances(&self) -> Vec<SimInstance> {
        let mut st = lock(&self.state);
        let now = self.settle(&mut st);
        let mut records: Vec<&Record> = st.records.values().collect();
        records.sort_by_key(|r| r.seq);
        records.into_iter().map(|r| self.snapshot(&st, r, now)).collect()
    }

    /// One instance.
    pub fn instance(&self, instance_id: &str) -> Option<SimInstance> {
        let mut st = lock(&self.state);
        let now = self.settle(&mut st);
        st.records.get(instance_id).map(|r| self.snapshot(&st, r, now))
    }

    /// The counters.
    pub fn stats(&self) -> CloudStats {
        let mut st = lock(&self.state);
        self.settle(&mut st);
        st.stats.clone()
    }

    fn now_of(&self, st: &State) -> Duration {
        let follow = match self.config.clock {
            SimClock::Manual => Duration::ZERO,
            SimClock::Tokio { speed } => {
                let secs = self.origin.elapsed().as_secs_f64() * speed;
                Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
            }
        };
        st.manual.saturating_add(follow)
    }

    fn state_name(&self, r: &Record, now: Duration) -> &'static str {
        match r.ended_at {
            Some(end) if now >= end.saturating_add(self.config.shutdown_duration) => "terminated",
            Some(_) => "shutting-down",
            None if now < r.launched_at.saturating_add(self.config.pending_duration) => "pending",
            None => "running",
        }
    }

    fn snapshot(&self, st: &State, r: &Record, now: Duration) -> SimInstance {
        let mut instance = r.instance.clone();
        instance.state = self.state_name(r, now).to_owned();
        SimInstance {
            instance,
            price: r.price,
            launched_at: st.market.time_at(r.launched_at),
            terminated_at: r.ended_at.map(|t| st.market.time_at(t)),
            interrupted: r.interrupted,
            notice_at: r.plan.map(|p| st.market.time_at(p.notice_at)),
        }
    }

    /// Brings the state to the current virtual time; returns it.
    fn settle(&self, st: &mut State) -> Duration {
        let now = self.now_of(st);
        while let Some((at, _, due, id)) = st.schedule.first().cloned() {
            if at > now {
                break;
            }
            st.schedule.pop_first();
            st.market.advance_to(at);
            if st.records.get(&id).is_none_or(|r| r.ended_at.is_some()) {
                continue;
            }
            let when = st.market.time_at(at);
            match due {
                Due::Rebalance => {
                    st.stats.rebalance_recommendations += 1;
                    let event = self.event(&id, EventKind::RebalanceRecommendation, when);
                    st.outbox.push(event);
                }
                Due::Notice => {
                    st.stats.interruption_notices += 1;
                    let deadline = when + st.market.config().notice;
                    let kind = EventKind::SpotInterruption {
                        action: SpotAction::Terminate,
                        deadline,
                    };
                    let event = self.event(&id, kind, when);
                    st.outbox.push(event);
                }
                Due::Reclaim => {
                    st.stats.interrupted += 1;
                    if let Some(r) = st.records.get_mut(&id) {
                        r.ended_at = Some(at);
                        r.interrupted = true;
                        let ip = r.ip;
                        st.ips.remove(&ip);
                    }
                    st.notices.push(Notice::Terminated(id));
                }
            }
        }
        st.market.advance_to(now);
        now
    }

    fn event(&self, instance_id: &str, kind: EventKind, at: OffsetDateTime) -> InterruptionEvent {
        match self.config.event_origin {
            EventOrigin::Queue => {
                let mut draw = SimRng::stream(
                    self.seed,
                    &format!("event/{}/{instance_id}/{}", kind.name(), imds_time(at)),
                );
                let upstream = uuid(&mut draw);
                let message_id = uuid(&mut draw);
                InterruptionEvent::new(
                    instance_id,
                    kind,
                    &upstream,
                    at,
                    Origin::Queue {
                        message_id,
                        upstream_id: Some(upstream.clone()),
                    },
                )
            }
            EventOrigin::Imds => {
                let identity = match &kind {
                    EventKind::SpotInterruption { deadline, .. } => {
                        format!("terminate:{}", imds_time(*deadline))
                    }
                    _ => imds_time(at),
                };
                InterruptionEvent::new(instance_id, kind, &identity, at, Origin::Imds)
            }
        }
    }

    /// Tells the observers what happened, in order; one flush at a time.
    async fn flush(&self) {
        let _one_at_a_time = self.flush.lock().await;
        let notices = std::mem::take(&mut lock(&self.state).notices);
        if notices.is_empty() {
            return;
        }
        let observers = lock(&self.observers).clone();
        for notice in &notices {
            for o in &observers {
                match notice {
                    Notice::Launched {
                        instance,
                        instance_type,
                        labels,
                        taints,
                    } => o.launched(instance, instance_type, labels, taints).await,
                    Notice::Terminated(id) => o.terminated(id).await,
                }
            }
        }
    }

    fn new_id(st: &mut State) -> String {
        loop {
            let id = format!("i-0{:016x}", st.rng.next_u64());
            if !st.records.contains_key(&id) {
                return id;
            }
        }
    }

    /// A free private address in 10.0.0.0/8 (host part not 0 or 255), as 24 bits.
    fn new_ip(st: &mut State) -> u32 {
        let mut last = 0;
        for _ in 0..64 {
            let ip = (st.rng.next_u64() & 0x00ff_ffff) as u32;
            last = ip;
            if !matches!(ip & 0xff, 0 | 255) && st.ips.insert(ip) {
                return ip;
            }
        }
        // Sixteen million live instances: reuse an address rather than loop forever.
        last
    }

    fn dns_name(&self, zone: &str, ip: u32) -> String {
        let region = self
            .catalog
            .region_of(zone)
            .or_else(|| labels::region_of_zone(zone))
            .unwrap_or("us-east-1");
        let host = format!("ip-10-{}-{}-{}", ip >> 16, (ip >> 8) & 0xff, ip & 0xff);
        if region == "us-east-1" {
            format!("{host}.ec2.internal")
        } else {
            format!("{host}.{region}.compute.internal")
        }
    }

    fn launch_locked(&self, st: &mut State, request: &FleetRequest, node: &NodeTemplate) -> FleetResult {
        let now = self.settle(st);
        let capacity_type = request.capacity_type;
        let mut errors: Vec<LaunchError> = Vec::new();
        let report =
            |errors: &mut Vec<LaunchError>, st: &mut State, key: &PoolKey, code: &str, message: String| {
                let duplicate = errors.iter().any(|e| {
                    e.code == code
                        && e.instance_type.as_deref() == Some(key.instance_type.as_str())
                        && e.zone.as_deref() == Some(key.zone.as_str())
                });
                if !duplicate {
                    *st.stats.launch_errors.entry(code.to_owned()).or_default() += 1;
                    errors.push(LaunchError {
                        instance_type: Some(key.instance_type.clone()),
                        zone: Some(key.zone.clone()),
                        code: code.to_owned(),
                        message,
                    });
                }
            };

        // 1. The pools that exist.
        let mut picks: Vec<Pick> = Vec::new();
        let mut seen = HashSet::new();
        for c in &request.candidates {
            let key = PoolKey::new(&c.instance_type, &c.zone);
            if !seen.insert(key.clone()) {
                continue;
            }
            let unsupported = match self.catalog.get(&c.instance_type) {
                Err(_) => Some(format!("The instance type '{}' does not exist.", c.instance_type)),
                Ok(t) if !t.sold_as(capacity_type) => Some(format!(
                    "The instance type '{}' is not sold as {capacity_type}.",
                    c.instance_type
                )),
                Ok(_) if !self.catalog.is_offered(&c.zone, &c.instance_type) => Some(format!(
                    "Your requested instance type ({}) is not supported in your requested \
                     Availability Zone ({}).",
                    c.instance_type, c.zone
                )),
                Ok(t) => {
                    let priced = match capacity_type {
                        CapacityType::Spot => st.market.spot_price(&key).map(|_| 0.0),
                        CapacityType::OnDemand => st.market.on_demand_price(&key),
                    };
                    let fallback = (c.price.is_finite() && c.price > 0.0).then_some(c.price);
                    match (priced, capacity_type, fallback) {
                        (Ok(on_demand), _, _) => {
                            picks.push(Pick {
                                key: key.clone(),
                                instance_type: t.clone(),
                                on_demand,
                            });
                            None
                        }
                        (Err(_), CapacityType::OnDemand, Some(price)) => {
                            picks.push(Pick {
                                key: key.clone(),
                                instance_type: t.clone(),
                                on_demand: price,
                            });
                            None
                        }
                        (Err(e), _, _) => Some(format!("The simulated market has no such pool: {e}")),
                    }
                }
            };
            if let Some(message) = unsupported {
                report(&mut errors, st, &key, UNSUPPORTED, message);
            }
        }

        // 2-4. One instance at a time.
        let mut live: Vec<usize> = (0..picks.len()).collect();
        let mut cursor = 0;
        let mut instances = Vec::new();
        let mut spot_vcpus: u64 = st
            .records
            .values()
            .filter(|r| r.ended_at.is_none() && r.instance.capacity_type == CapacityType::Spot)
            .map(|r| u64::from(r.vcpus))
            .sum();
        while instances.len() < request.count as usize && !live.is_empty() {
            let views: Vec<View> = live
                .iter()
                .map(|&i| {
                    let p = &picks[i];
                    match capacity_type {
                        CapacityType::Spot => View {
                            price: st.market.spot_price(&p.key).unwrap_or(f64::INFINITY),
                            available: st.market.available(&p.key).unwrap_or(0),
                        },
                        CapacityType::OnDemand => View {
                            price: p.on_demand,
                            available: u32::MAX,
                        },
                    }
                })
                .collect();
            let Some(pos) = choose(
                request.strategy,
                &views,
                cursor,
                self.config.pco_capacity_fraction,
            ) else {
                for &i in &live {
                    let message = "There is no Spot capacity available that matches your request.".to_owned();
                    report(&mut errors, st, &picks[i].key, INSUFFICIENT_CAPACITY, message);
                }
                break;
            };
            let pick = &picks[live[pos]];
            let key = &pick.key;
            if let Some(inj) = st
                .injections
                .iter_mut()
                .find(|inj| inj.matches(key, capacity_type))
            {
                inj.remaining -= 1;
                let code = inj.code.clone();
                let message = format!("Injected by the simulation: {code} for {key} ({capacity_type}).");
                report(&mut errors, st, key, &code, message);
                live.remove(pos);
                if code == SPOT_LIMIT {
                    break;
                }
                continue;
            }
            let vcpus = pick.instance_type.vcpus;
            if capacity_type == CapacityType::Spot
                && let Some(limit) = self.config.spot_vcpu_limit
                && spot_vcpus + u64::from(vcpus) > u64::from(limit)
            {
                let message = format!(
                    "Max spot instance count exceeded: {spot_vcpus} spot vCPUs running, the limit is {limit}."
                );
                report(&mut errors, st, key, SPOT_LIMIT, message);
                break;
            }
            let price = match capacity_type {
                CapacityType::OnDemand => pick.on_demand,
                CapacityType::Spot => match st.market.acquire(key) {
                    Ok(price) => price,
                    Err(e) => {
                        let (code, message) = match e {
                            market::Error::InsufficientCapacity { .. } => (
                                INSUFFICIENT_CAPACITY,
                                "There is no Spot capacity available that matches your request.".to_owned(),
                            ),
                            other => (UNSUPPORTED, other.to_string()),
                        };
                        report(&mut errors, st, key, code, message);
                        live.remove(pos);
                        continue;
                    }
                },
            };
            if capacity_type == CapacityType::Spot {
                spot_vcpus += u64::from(vcpus);
            }
            cursor = pos + 1;
            let id = Self::new_id(st);
            let ip = Self::new_ip(st);
            let state = if self.config.pending_duration.is_zero() {
                "running"
            } else {
                "pending"
            };
            let instance = Instance {
                id: id.clone(),
                instance_type: key.instance_type.clone(),
                zone: key.zone.clone(),
                capacity_type,
                private_dns_name: self.dns_name(&key.zone, ip),
                state: state.to_owned(),
                tags: request.tags.clone(),
                launch_time: Some(st.market.time_at(now)),
            };
            let plan = match capacity_type {
                CapacityType::Spot => st.market.plan_interruption(key, &id, now).ok().flatten(),
                CapacityType::OnDemand => None,
            };
            st.seq += 1;
            if let Some(plan) = plan {
                let seq = st.seq;
                if let Some(r) = plan.rebalance_at {
                    st.schedule.insert((r, seq, Due::Rebalance, id.clone()));
                }
                st.schedule.insert((plan.notice_at, seq, Due::Notice, id.clone()));
                st.schedule
                    .insert((plan.terminate_at, seq, Due::Reclaim, id.clone()));
            }
            st.records.insert(
                id.clone(),
                Record {
                    instance: instance.clone(),
                    seq: st.seq,
                    pool: key.clone(),
                    price,
                    vcpus,
                    ip,
                    launched_at: now,
                    ended_at: None,
                    interrupted: false,
                    plan,
                },
            );
            st.notices.push(Notice::Launched {
                instance: Box::new(instance.clone()),
                instance_type: Box::new(pick.instance_type.clone()),
                labels: node.labels.clone(),
                taints: node.registration_taints(),
            });
            st.stats.launched += 1;
            instances.push(instance);
        }
        FleetResult { instances, errors }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[async_trait]
impl CloudProvider for SimCloud {
    async fn launch(&self, request: &FleetRequest) -> Result<FleetResult, CloudError> {
        if request.count == 0 {
            return Err(CloudError::InvalidRequest(
                "count must be at least 1, found 0".to_owned(),
            ));
        }
        if request.candidates.is_empty() {
            return Err(CloudError::InvalidRequest("candidates is empty".to_owned()));
        }
        let node =
            NodeTemplate::from_tags(&request.tags).map_err(|e| CloudError::InvalidRequest(e.to_string()))?;
        if !self.config.api_latency.is_zero() {
            tokio::time::sleep(self.config.api_latency).await;
        }
        let result = self.launch_locked(&mut lock(&self.state), request, &node);
        self.flush().await;
        Ok(result)
    }

    async fn terminate(&self, instance_ids: &[String]) -> Result<(), CloudError> {
        {
            let mut st = lock(&self.state);
            let now = self.settle(&mut st);
            for id in instance_ids {
                let Some(r) = st.records.get_mut(id).filter(|r| r.ended_at.is_none()) else {
                    continue;
                };
                r.ended_at = Some(now);
                let (pool, ip, spot) = (
                    r.pool.clone(),
                    r.ip,
                    r.instance.capacity_type == CapacityType::Spot,
                );
                st.ips.remove(&ip);
                if spot {
                    // The pool exists: the instance was placed in it.
                    let _ = st.market.release(&pool);
                }
                st.stats.terminated += 1;
                st.notices.push(Notice::Terminated(id.clone()));
            }
        }
        self.flush().await;
        Ok(())
    }

    async fn describe(&self, instance_ids: &[String]) -> Result<Vec<Instance>, CloudError> {
        let found = {
            let mut st = lock(&self.state);
            let now = self.settle(&mut st);
            let mut seen = HashSet::new();
            instance_ids
                .iter()
                .filter(|id| seen.insert(id.as_str()))
                .filter_map(|id| st.records.get(id))
                .map(|r| {
                    let mut i = r.instance.clone();
                    i.state = self.state_name(r, now).to_owned();
                    i
                })
                .collect()
        };
        self.flush().await;
        Ok(found)
    }
}

impl Clock for SimCloud {
    fn now(&self) -> OffsetDateTime {
        let st = lock(&self.state);
        st.market.time_at(self.now_of(&st))
    }
}

/// Prices as the simulated market sees them now: spot prices move, on-demand prices and
/// bands are the pools' (crafted pools included).
impl PriceSource for SimCloud {
    fn on_demand(&self, region: &str, instance_type: &str) -> Option<f64> {
        lock(&self.state).market.region_on_demand(region, instance_type)
    }
    fn spot(&self, zone: &str, instance_type: &str) -> Option<f64> {
        self.market(|m| m.spot_price(&PoolKey::new(instance_type, zone)).ok())
    }
    fn interruption_band(&self, region: &str, instance_type: &str) -> Option<u8> {
        lock(&self.state).market.region_band(region, instance_type)
    }
}

#[cfg(test)]
mod tests;
