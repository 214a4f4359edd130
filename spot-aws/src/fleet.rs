//! Launching instances with EC2 CreateFleet: [`Ec2Fleet`] implements
//! [`spot_core::cloud::CloudProvider`].
//!
//! One [`FleetRequest`] becomes one CreateFleet call of type `instant` (Karpenter's
//! `CreateFleetInputBuilder`):
//!
//! - `TargetCapacitySpecification`: `TotalTargetCapacity` = the count,
//!   `DefaultTargetCapacityType` = the request's capacity type (one capacity type per call,
//!   never mixed).
//! - Spot: `SpotOptions.AllocationStrategy` from the request's strategy
//!   (`price-capacity-optimized` by default). On-demand: `OnDemandOptions.AllocationStrategy`
//!   = `lowest-price` whatever the request says, as EC2 offers no other on-demand strategy
//!   without priorities.
//! - One launch template (by name or id, configured) with one override per candidate: its
//!   instance type and the subnet configured for its zone. Candidates whose zone has no
//!   subnet are dropped; duplicates are sent once.
//! - Tags (the configured ones, then the request's) on the instances, their volumes and the
//!   fleet; a fresh client token per call so that SDK retries never launch twice.
//!
//! The response's instances are described (DescribeInstances) to report their private DNS
//! name, state, tags and launch time; an instance EC2 does not show yet is reported from the
//! response itself (type, zone, capacity type, state `pending`). Per-override errors become
//! [`LaunchError`]s naming the instance type and zone of the failed override.
//!
//! **Request merging** (Karpenter's `pkg/batcher/createfleet.go`): identical requests (equal
//! in everything but the count) arriving within an idle window of 35 ms of each other (at
//! most 1 s after the first, at most 1000 requests) are sent as one CreateFleet with the
//! summed count; the instances are handed back in arrival order, each caller receiving at most
//! what it asked for. The fleet's errors go to every caller of the batch, so a caller that
//! receives fewer instances than asked learns why, and each caller can feed the
//! insufficient-capacity errors to its [`UnavailableOfferings`] cache (marks within its
//! debounce count once).
//!
//! [`UnavailableOfferings`]: spot_core::offerings::UnavailableOfferings

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_ec2::operation::create_fleet::{CreateFleetInput, CreateFleetOutput};
use aws_sdk_ec2::types::{
    CreateFleetError, CreateFleetInstance, DefaultTargetCapacityType, Filter,
    FleetLaunchTemplateConfigRequest, FleetLaunchTemplateOverrides, FleetLaunchTemplateOverridesRequest,
    FleetLaunchTemplateSpecificationRequest, FleetOnDemandAllocationStrategy, FleetType, InstanceLifecycle,
    InstanceType, OnDemandOptionsRequest, ResourceType, SpotAllocationStrategy, SpotOptionsRequest, Tag,
    TagSpecification, TargetCapacitySpecificationRequest,
};
use spot_core::cloud::{
    self, AllocationStrategy, CloudProvider, FleetRequest, FleetResult, Instance, LaunchError,
};
use spot_core::instance_type::CapacityType;
use time::OffsetDateTime;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use crate::instances::{InstanceInfo, MAX_IDS_PER_CALL};
use crate::sqs::messages::is_instance_id;

/// Karpenter's CreateFleet batcher idle window: a batch closes this long after its last
/// request.
pub const DEFAULT_BATCH_IDLE: Duration = Duration::from_millis(35);
/// A batch closes at the latest this long after its first request.
pub const DEFAULT_BATCH_MAX_WAIT: Duration = Duration::from_secs(1);
/// A batch closes when it holds this many requests.
pub const DEFAULT_BATCH_MAX_ITEMS: usize = 1000;
/// The most instance ids one TerminateInstances call carries.
pub const MAX_TERMINATE_IDS: usize = 500;
/// The launch template version used unless configured otherwise.
pub const DEFAULT_LAUNCH_TEMPLATE_VERSION: &str = "$Latest";

/// Errors of the fleet configuration and of launch requests (reported to
/// [`CloudProvider`] callers as [`cloud::Error::InvalidRequest`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The launch template name or id is empty.
    #[error("launch template {0} is empty")]
    EmptyLaunchTemplate(&'static str),
    /// No zone has a subnet.
    #[error("subnets_by_zone is empty: no zone to launch in")]
    NoSubnets,
    /// A zone or subnet id in `subnets_by_zone` is empty.
    #[error("subnets_by_zone maps zone {zone:?} to subnet {subnet:?}: neither may be empty")]
    EmptySubnet {
        /// The zone.
        zone: String,
        /// The subnet id.
        subnet: String,
    },
    /// Batch options that cannot work.
    #[error("batch option {field} = {value} is invalid: {reason}")]
    Batch {
        /// The option.
        field: &'static str,
        /// Its value.
        value: String,
        /// Why.
        reason: &'static str,
    },
    /// A tag key EC2 reserves or refuses.
    #[error("tag key {0:?} is invalid: keys must be non-empty and must not start with \"aws:\"")]
    TagKey(String),
    /// The SDK refused the CreateFleet input (every required field is set, so this means an
    /// SDK change).
    #[error("building the CreateFleet input failed: {0}")]
    Input(String),
    /// The request has no candidates.
    #[error("candidates is empty: nothing to launch from")]
    NoCandidates,
    /// The request asks for no instance.
    #[error("count is 0: nothing to launch")]
    ZeroCount,
    /// The request asks for more instances than CreateFleet's capacity field holds.
    #[error("count {0} is larger than {max}", max = i32::MAX)]
    CountTooLarge(u32),
    /// A candidate names no instance type.
    #[error("candidate {index} has an empty instance type")]
    EmptyInstanceType {
        /// The candidate's position in the request.
        index: usize,
    },
    /// No candidate's zone has a configured subnet.
    #[error(
        "no candidate zone has a subnet: candidate zones {zones:?}, subnets configured for {configured:?}"
    )]
    NoSubnetForCandidates {
        /// The candidates' zones.
        zones: Vec<String>,
        /// The zones with a subnet.
        configured: Vec<String>,
    },
}

impl From<Error> for cloud::Error {
    fn from(error: Error) -> Self {
        cloud::Error::InvalidRequest(error.to_string())
    }
}

/// The launch template every fleet uses (AMI, security groups, user data, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaunchTemplate {
    /// By name.
    Name(String),
    /// By id (`lt-...`).
    Id(String),
}

/// How requests are merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchOptions {
    /// A batch closes this long after its last request.
    pub idle: Duration,
    /// A batch closes at the latest this long after its first request.
    pub max_wait: Duration,
    /// A batch closes when it holds this many requests.
    pub max_items: usize,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            idle: DEFAULT_BATCH_IDLE,
            max_wait: DEFAULT_BATCH_MAX_WAIT,
            max_items: DEFAULT_BATCH_MAX_ITEMS,
        }
    }
}

/// What every fleet of one [`Ec2Fleet`] shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ec2FleetConfig {
    /// The launch template.
    pub launch_template: LaunchTemplate,
    /// Its version (`$Latest`, `$Default` or a number).
    pub launch_template_version: String,
    /// The subnet to launch in, per zone.
    pub subnets_by_zone: BTreeMap<String, String>,
    /// Tags on every instance, volume and fleet (a request's tags override them).
    pub tags: BTreeMap<String, String>,
    /// Request merging; `None` sends every request on its own at once.
    pub batch: Option<BatchOptions>,
    /// Whether launched instances are described to report DNS name, state, tags and launch
    /// time (otherwise they are reported from the CreateFleet response alone).
    pub describe_after_launch: bool,
}

impl Ec2FleetConfig {
    /// A configuration with `$Latest` of the template, no extra tags, default batching and a
    /// describe after each launch.
    pub fn new(launch_template: LaunchTemplate, subnets_by_zone: BTreeMap<String, String>) -> Self {
        Ec2FleetConfig {
            launch_template,
            launch_template_version: DEFAULT_LAUNCH_TEMPLATE_VERSION.to_owned(),
            subnets_by_zone,
            tags: BTreeMap::new(),
            batch: Some(BatchOptions::default()),
            describe_after_launch: true,
        }
    }

    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), Error> {
        match &self.launch_template {
            LaunchTemplate::Name(name) if name.is_empty() => return Err(Error::EmptyLaunchTemplate("name")),
            LaunchTemplate::Id(id) if id.is_empty() => return Err(Error::EmptyLaunchTemplate("id")),
            _ => {}
        }
        if self.launch_template_version.is_empty() {
            return Err(Error::EmptyLaunchTemplate("version"));
        }
        if self.subnets_by_zone.is_empty() {
            return Err(Error::NoSubnets);
        }
        for (zone, subnet) in &self.subnets_by_zone {
            if zone.is_empty() || subnet.is_empty() {
                return Err(Error::EmptySubnet {
                    zone: zone.clone(),
                    subnet: subnet.clone(),
                });
            }
        }
        validate_tags(&self.tags)?;
        if let Some(batch) = &self.batch {
            if batch.max_items == 0 {
                return Err(Error::Batch {
                    field: "max_items",
                    value: "0".into(),
                    reason: "a batch must hold at least one request",
                });
            }
            if batch.idle > batch.max_wait {
                return Err(Error::Batch {
                    field: "idle",
                    value: format!("{:?}", batch.idle),
                    reason: "the idle window must not exceed max_wait",
                });
            }
        }
        Ok(())
    }
}

fn validate_tags(tags: &BTreeMap<String, String>) -> Result<(), Error> {
    match tags
        .keys()
        .find(|k| k.is_empty() || k.to_ascii_lowercase().starts_with("aws:"))
    {
        Some(key) => Err(Error::TagKey(key.clone())),
        None => Ok(()),
    }
}

/// Checks a request on its own: count, candidates, tags.
pub fn validate_request(request: &FleetRequest) -> Result<(), Error> {
    if request.count == 0 {
        return Err(Error::ZeroCount);
    }
    if i32::try_from(request.count).is_err() {
        return Err(Error::CountTooLarge(request.count));
    }
    if request.candidates.is_empty() {
        return Err(Error::NoCandidates);
    }
    if let Some(index) = request.candidates.iter().position(|c| c.instance_type.is_empty()) {
        return Err(Error::EmptyInstanceType { index });
    }
    validate_tags(&request.tags)
}

/// The overrides of a request: one per distinct (instance type, zone) candidate whose zone
/// has a subnet, in the request's order.
pub fn overrides(
    config: &Ec2FleetConfig,
    request: &FleetRequest,
) -> Result<Vec<FleetLaunchTemplateOverridesRequest>, Error> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for candidate in &request.candidates {
        let Some(subnet) = config.subnets_by_zone.get(&candidate.zone) else {
            continue;
        };
        if !seen.insert((candidate.instance_type.as_str(), candidate.zone.as_str())) {
            continue;
        }
        out.push(
            FleetLaunchTemplateOverridesRequest::builder()
                .instance_type(InstanceType::from(candidate.instance_type.as_str()))
                .subnet_id(subnet)
                .build(),
        );
    }
    if out.is_empty() {
        let zones: BTreeSet<&str> = request.candidates.iter().map(|c| c.zone.as_str()).collect();
        return Err(Error::NoSubnetForCandidates {
            zones: zones.into_iter().map(str::to_owned).collect(),
            configured: config.subnets_by_zone.keys().cloned().collect(),
        });
    }
    Ok(out)
}

fn spot_strategy(strategy: AllocationStrategy) -> SpotAllocationStrategy {
    match strategy {
        AllocationStrategy::PriceCapacityOptimized => SpotAllocationStrategy::PriceCapacityOptimized,
        AllocationStrategy::CapacityOptimized => SpotAllocationStrategy::CapacityOptimized,
        AllocationStrategy::LowestPrice => SpotAllocationStrategy::LowestPrice,
        AllocationStrategy::Diversified => SpotAllocationStrategy::Diversified,
    }
}

/// The tags of a request's instances: the configured ones, overridden by the request's.
fn merged_tags(config: &Ec2FleetConfig, request: &FleetRequest) -> BTreeMap<String, String> {
    let mut tags = config.tags.clone();
    tags.extend(request.tags.iter().map(|(k, v)| (k.clone(), v.clone())));
    tags
}

/// A client token unique to this process and call (CreateFleet idempotency: an SDK retry of
/// the same call launches nothing twice).
fn client_token() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "spot-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Builds the CreateFleet input of a (validated) request.
pub fn create_fleet_input(
    config: &Ec2FleetConfig,
    request: &FleetRequest,
) -> Result<CreateFleetInput, Error> {
    validate_request(request)?;
    let count = i32::try_from(request.count).map_err(|_| Error::CountTooLarge(request.count))?;
    let overrides = overrides(config, request)?;
    let template = match &config.launch_template {
        LaunchTemplate::Name(name) => {
            FleetLaunchTemplateSpecificationRequest::builder().launch_template_name(name)
        }
        LaunchTemplate::Id(id) => FleetLaunchTemplateSpecificationRequest::builder().launch_template_id(id),
    }
    .version(&config.launch_template_version)
    .build();
    let default_type = match request.capacity_type {
        CapacityType::Spot => DefaultTargetCapacityType::Spot,
        CapacityType::OnDemand => DefaultTargetCapacityType::OnDemand,
    };
    let tags: Vec<Tag> = merged_tags(config, request)
        .into_iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect();
    let tag_specifications = if tags.is_empty() {
        None
    } else {
        Some(
            [ResourceType::Instance, ResourceType::Volume, ResourceType::Fleet]
                .into_iter()
                .map(|resource| {
                    TagSpecification::builder()
                        .resource_type(resource)
                        .set_tags(Some(tags.clone()))
                        .build()
                })
                .collect(),
        )
    };
    let mut input = CreateFleetInput::builder()
        .r#type(FleetType::Instant)
        .client_token(client_token())
        .target_capacity_specification(
            TargetCapacitySpecificationRequest::builder()
                .total_target_capacity(count)
                .default_target_capacity_type(default_type)
                .build(),
        )
        .launch_template_configs(
            FleetLaunchTemplateConfigRequest::builder()
                .launch_template_specification(template)
                .set_overrides(Some(overrides))
                .build(),
        )
        .set_tag_specifications(tag_specifications);
    input = match request.capacity_type {
        CapacityType::Spot => input.spot_options(
            SpotOptionsRequest::builder()
                .allocation_strategy(spot_strategy(request.strategy))
                .build(),
        ),
        CapacityType::OnDemand => input.on_demand_options(
            OnDemandOptionsRequest::builder()
                .allocation_strategy(FleetOnDemandAllocationStrategy::LowestPrice)
                .build(),
        ),
    };
    // Every required field is set above; a build error would be an SDK change.
    input.build().map_err(|e| Error::Input(e.to_string()))
}

/// The capacity type of an EC2 lifecycle, when it is one we launch.
fn capacity_type_of(lifecycle: Option<&InstanceLifecycle>) -> Option<CapacityType> {
    match lifecycle? {
        InstanceLifecycle::Spot => Some(CapacityType::Spot),
        InstanceLifecycle::OnDemand => Some(CapacityType::OnDemand),
        _ => None,
    }
}

/// Reads the (instance type, zone) of a response's overrides; the zone comes from the
/// override's zone or, failing that, from the configured zone of its subnet.
fn override_pool(
    overrides: Option<&FleetLaunchTemplateOverrides>,
    zone_by_subnet: &HashMap<String, String>,
) -> (Option<String>, Option<String>) {
    let Some(o) = overrides else {
        return (None, None);
    };
    let instance_type = o.instance_type().map(|t| t.as_str().to_owned());
    let zone = o
        .availability_zone()
        .filter(|z| !z.is_empty())
        .map(str::to_owned)
        .or_else(|| o.subnet_id().and_then(|s| zone_by_subnet.get(s).cloned()));
    (instance_type, zone)
}

/// Maps one per-override CreateFleet error.
pub fn launch_error(error: &CreateFleetError, zone_by_subnet: &HashMap<String, String>) -> LaunchError {
    let (instance_type, zone) = override_pool(
        error.launch_template_and_overrides().and_then(|l| l.overrides()),
        zone_by_subnet,
    );
    LaunchError {
        instance_type,
        zone,
        code: error.error_code().unwrap_or("Unknown").to_owned(),
        message: error.error_message().unwrap_or_default().to_owned(),
    }
}

/// The instances of a CreateFleet response as far as the response itself tells: type, zone
/// (from the instance, its override, or its subnet), capacity type (from the lifecycle, else
/// the request's), state `pending`, and the tags that were requested.
pub fn response_instances(
    output: &CreateFleetOutput,
    request_capacity_type: CapacityType,
    tags: &BTreeMap<String, String>,
    zone_by_subnet: &HashMap<String, String>,
    fallback_zone: Option<&str>,
) -> Vec<Instance> {
    let mut out = Vec::new();
    for group in output.instances() {
        let (override_type, override_zone) = override_pool(
            group.launch_template_and_overrides().and_then(|l| l.overrides()),
            zone_by_subnet,
        );
        let instance_type = group
            .instance_type()
            .map(|t| t.as_str().to_owned())
            .or(override_type)
            .unwrap_or_default();
        let zone = instance_zone(group)
            .or_else(|| group.subnet_id().and_then(|s| zone_by_subnet.get(s).cloned()))
            .or(override_zone)
            .or_else(|| fallback_zone.map(str::to_owned))
            .unwrap_or_default();
        let capacity_type = capacity_type_of(group.lifecycle()).unwrap_or(request_capacity_type);
        for id in group.instance_ids() {
            out.push(Instance {
                id: id.clone(),
                instance_type: instance_type.clone(),
                zone: zone.clone(),
                capacity_type,
                private_dns_name: String::new(),
                state: "pending".to_owned(),
                tags: tags.clone(),
                launch_time: None,
            });
        }
    }
    out
}

fn instance_zone(group: &CreateFleetInstance) -> Option<String> {
    group
        .availability_zone()
        .filter(|z| !z.is_empty())
        .map(str::to_owned)
}

/// Reads a described SDK instance.
fn described_instance(instance: &aws_sdk_ec2::types::Instance) -> Result<Instance, cloud::Error> {
    let info = InstanceInfo::from_ec2(instance, None).map_err(|e| cloud::Error::Api {
        operation: "DescribeInstances",
        message: e.to_string(),
    })?;
    let launch_time = instance
        .launch_time()
        .and_then(|t| OffsetDateTime::from_unix_timestamp_nanos(t.as_nanos()).ok());
    Ok(Instance {
        id: info.instance_id,
        instance_type: info.instance_type,
        zone: info.zone,
        capacity_type: info.capacity_type,
        private_dns_name: info.node_name.unwrap_or_default(),
        state: info.state,
        tags: info.tags,
        launch_time,
    })
}

fn api_error<E>(operation: &'static str, error: &E) -> cloud::Error
where
    E: std::error::Error,
{
    cloud::Error::Api {
        operation,
        message: DisplayErrorContext(error).to_string(),
    }
}

/// A copy of a cloud error for each caller of a batch.
fn copy_error(error: &cloud::Error) -> cloud::Error {
    match error {
        cloud::Error::InvalidRequest(message) => cloud::Error::InvalidRequest(message.clone()),
        cloud::Error::Api { operation, message } => cloud::Error::Api {
            operation,
            message: message.clone(),
        },
    }
}

type Reply = oneshot::Sender<Result<FleetResult, cloud::Error>>;

struct Waiter {
    count: u32,
    reply: Reply,
}

struct BatchState {
    request: FleetRequest,
    waiters: Vec<Waiter>,
    total: u32,
    first: Instant,
    last: Instant,
    closed: bool,
}

struct BatchCell {
    state: Mutex<BatchState>,
    wake: Notify,
}

impl BatchCell {
    fn lock(&self) -> MutexGuard<'_, BatchState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

struct Inner {
    client: Client,
    config: Ec2FleetConfig,
    zone_by_subnet: HashMap<String, String>,
    open: Mutex<HashMap<String, Arc<BatchCell>>>,
    create_fleet_calls: AtomicU64,
}

/// Launches, describes and terminates EC2 instances; see the [module docs](self).
///
/// Cheap to clone (the clones share the client and the open batches).
#[derive(Clone)]
pub struct Ec2Fleet {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Ec2Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ec2Fleet")
            .field("config", &self.inner.config)
            .field("create_fleet_calls", &self.create_fleet_calls())
            .finish()
    }
}

impl Ec2Fleet {
    /// A fleet launcher using `client` and `config` (validated).
    pub fn new(client: Client, config: Ec2FleetConfig) -> Result<Self, Error> {
        config.validate()?;
        let zone_by_subnet = config
            .subnets_by_zone
            .iter()
            .map(|(zone, subnet)| (subnet.clone(), zone.clone()))
            .collect();
        Ok(Ec2Fleet {
            inner: Arc::new(Inner {
                client,
                config,
                zone_by_subnet,
                open: Mutex::new(HashMap::new()),
                create_fleet_calls: AtomicU64::new(0),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Ec2FleetConfig {
        &self.inner.config
    }

    /// How many CreateFleet calls were sent so far (merged requests count once).
    pub fn create_fleet_calls(&self) -> u64 {
        self.inner.create_fleet_calls.load(Ordering::Relaxed)
    }

    /// Joins (or opens) the batch of requests identical to `request`, and waits for its
    /// share of the result.
    async fn launch_batched(
        &self,
        request: &FleetRequest,
        options: BatchOptions,
    ) -> Result<FleetResult, cloud::Error> {
        let key = {
            let mut shape = request.clone();
            shape.count = 0;
            serde_json::to_string(&shape).map_err(|e| cloud::Error::InvalidRequest(e.to_string()))?
        };
        let (reply, receive) = oneshot::channel();
        let waiter = Waiter {
            count: request.count,
            reply,
        };
        let now = Instant::now();
        let spawn = {
            let mut open = self.inner.lock_open();
            let joined = match open.get(&key).cloned() {
                Some(cell) => {
                    let mut state = cell.lock();
                    if !state.closed
                        && state
                            .total
                            .checked_add(request.count)
                            .is_some_and(|t| i32::try_from(t).is_ok())
                    {
                        state.total += request.count;
                        state.last = now;
                        state.waiters.push(waiter);
                        if state.waiters.len() >= options.max_items {
                            state.closed = true;
                        }
                        let closed = state.closed;
                        drop(state);
                        if closed {
                            open.remove(&key);
                        }
                        cell.wake.notify_one();
                        None
                    } else {
                        // Full: close it (its task sends it) and start a new batch.
                        state.closed = true;
                        drop(state);
                        cell.wake.notify_one();
                        Some(waiter)
                    }
                }
                None => Some(waiter),
            };
            match joined {
                None => None,
                Some(waiter) => {
                    let closed = options.max_items <= 1;
                    let cell = Arc::new(BatchCell {
                        state: Mutex::new(BatchState {
                            request: request.clone(),
                            total: request.count,
                            waiters: vec![waiter],
                            first: now,
                            last: now,
                            closed,
                        }),
                        wake: Notify::new(),
                    });
                    if closed {
                        open.remove(&key);
                    } else {
                        open.insert(key.clone(), Arc::clone(&cell));
                    }
                    Some(cell)
                }
            }
        };
        if let Some(cell) = spawn {
            let inner = Arc::clone(&self.inner);
            tokio::spawn(async move { inner.run_batch(key, cell, options).await });
        }
        receive.await.unwrap_or_else(|_| {
            Err(cloud::Error::Api {
                operation: "CreateFleet",
                message: "the batch was dropped before it was sent (runtime shutting down)".into(),
            })
        })
    }
}

impl Inner {
    fn lock_open(&self) -> MutexGuard<'_, HashMap<String, Arc<BatchCell>>> {
        self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until the batch closes (idle window, max wait or max items), then sends it and
    /// hands each caller its share.
    async fn run_batch(self: Arc<Self>, key: String, cell: Arc<BatchCell>, options: BatchOptions) {
        loop {
            let deadline = {
                let mut open = self.lock_open();
                let mut state = cell.lock();
                let deadline = (state.last + options.idle).min(state.first + options.max_wait);
                if !state.closed && Instant::now() >= deadline {
                    state.closed = true;
                }
                if state.closed {
                    if open.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                        open.remove(&key);
                    }
                    break;
                }
                deadline
            };
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                _ = cell.wake.notified() => {}
            }
        }
        let (mut request, waiters, total) = {
            let mut state = cell.lock();
            (
                state.request.clone(),
                std::mem::take(&mut state.waiters),
                state.total,
            )
        };
        request.count = total;
        tracing::debug!(
            requests = waiters.len(),
            count = total,
            capacity_type = %request.capacity_type,
            "sending merged CreateFleet"
        );
        let result = self.launch_now(&request).await;
        split(result, waiters);
    }

    /// One CreateFleet call for `request`, its instances described.
    async fn launch_now(&self, request: &FleetRequest) -> Result<FleetResult, cloud::Error> {
        let input = create_fleet_input(&self.config, request)?;
        self.create_fleet_calls.fetch_add(1, Ordering::Relaxed);
        let output = self
            .client
            .create_fleet()
            .set_type(input.r#type)
            .set_client_token(input.client_token)
            .set_target_capacity_specification(input.target_capacity_specification)
            .set_spot_options(input.spot_options)
            .set_on_demand_options(input.on_demand_options)
            .set_launch_template_configs(input.launch_template_configs)
            .set_tag_specifications(input.tag_specifications)
            .send()
            .await
            .map_err(|e| api_error("CreateFleet", &e))?;
        let errors: Vec<LaunchError> = output
            .errors()
            .iter()
            .map(|e| launch_error(e, &self.zone_by_subnet))
            .collect();
        let tags = merged_tags(&self.config, request);
        let zones: BTreeSet<&str> = request
            .candidates
            .iter()
            .filter(|c| self.config.subnets_by_zone.contains_key(&c.zone))
            .map(|c| c.zone.as_str())
            .collect();
        let only_zone = if zones.len() == 1 {
            zones.first().copied()
        } else {
            None
        };
        let mut instances = response_instances(
            &output,
            request.capacity_type,
            &tags,
            &self.zone_by_subnet,
            only_zone,
        );
        if self.config.describe_after_launch && !instances.is_empty() {
            let ids: Vec<String> = instances.iter().map(|i| i.id.clone()).collect();
            match self.describe(&ids).await {
                Ok(described) => {
                    let mut by_id: HashMap<String, Instance> =
                        described.into_iter().map(|i| (i.id.clone(), i)).collect();
                    for instance in &mut instances {
                        if let Some(found) = by_id.remove(&instance.id) {
                            *instance = found;
                        }
                    }
                }
                // The instances exist: report them from the response rather than lose them.
                Err(e) => tracing::warn!(error = %e, "describing launched instances failed"),
            }
        }
        tracing::debug!(
            fleet = output.fleet_id().unwrap_or_default(),
            launched = instances.len(),
            errors = errors.len(),
            "CreateFleet"
        );
        Ok(FleetResult { instances, errors })
    }

    async fn describe(&self, instance_ids: &[String]) -> Result<Vec<Instance>, cloud::Error> {
        let mut wanted: Vec<String> = Vec::new();
        for id in instance_ids {
            if is_instance_id(id) && !wanted.contains(id) {
                wanted.push(id.clone());
            }
        }
        let mut found: HashMap<String, Instance> = HashMap::new();
        for chunk in wanted.chunks(MAX_IDS_PER_CALL) {
            let mut pages = self
                .client
                .describe_instances()
                .filters(
                    Filter::builder()
                        .name("instance-id")
                        .set_values(Some(chunk.to_vec()))
                        .build(),
                )
                .max_results(1000)
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| api_error("DescribeInstances", &e))?;
                for instance in page.reservations().iter().flat_map(|r| r.instances()) {
                    let instance = described_instance(instance)?;
                    found.insert(instance.id.clone(), instance);
                }
            }
        }
        Ok(wanted.iter().filter_map(|id| found.remove(id)).collect())
    }

    async fn terminate(&self, instance_ids: &[String]) -> Result<(), cloud::Error> {
        let mut wanted: Vec<String> = Vec::new();
        for id in instance_ids {
            if is_instance_id(id) && !wanted.contains(id) {
                wanted.push(id.clone());
            }
        }
        for chunk in wanted.chunks(MAX_TERMINATE_IDS) {
            self.terminate_chunk(chunk.to_vec()).await?;
        }
        Ok(())
    }

    /// One TerminateInstances call. One unknown id fails the whole call: the ids EC2 names
    /// in its NotFound message are dropped and the rest retried (an instance launched a
    /// moment ago and not yet visible to DescribeInstances is still terminated); when the
    /// message names none of them, the ids DescribeInstances knows are retried.
    async fn terminate_chunk(&self, mut ids: Vec<String>) -> Result<(), cloud::Error> {
        let mut described = false;
        while !ids.is_empty() {
            let error = match self.terminate_call(&ids).await {
                Ok(()) => return Ok(()),
                Err(e) if e.code() == Some("InvalidInstanceID.NotFound") => e,
                Err(e) => return Err(api_error("TerminateInstances", &e)),
            };
            let unknown = named_instance_ids(error.message().unwrap_or_default(), &ids);
            if !unknown.is_empty() {
                ids.retain(|id| !unknown.contains(id));
            } else if !described {
                described = true;
                let known: BTreeSet<String> = self.describe(&ids).await?.into_iter().map(|i| i.id).collect();
                ids.retain(|id| known.contains(id));
            } else {
                return Err(api_error("TerminateInstances", &error));
            }
        }
        Ok(())
    }

    async fn terminate_call(
        &self,
        ids: &[String],
    ) -> Result<
        (),
        aws_sdk_ec2::error::SdkError<aws_sdk_ec2::operation::terminate_instances::TerminateInstancesError>,
    > {
        self.client
            .terminate_instances()
            .set_instance_ids(Some(ids.to_vec()))
            .send()
            .await
            .map(|_| ())
    }
}

/// The ids of `among` that an EC2 message names, such as
/// `The instance IDs 'i-1, i-2' do not exist`.
fn named_instance_ids(message: &str, among: &[String]) -> BTreeSet<String> {
    message
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|token| among.iter().any(|id| id == token))
        .map(str::to_owned)
        .collect()
}

/// Hands each waiter its share of a batch's result, in arrival order. A caller that went
/// away leaves its share to the callers after it; instances nobody claims are logged (they
/// carry the request's tags, so the owner's garbage collection finds them).
fn split(result: Result<FleetResult, cloud::Error>, waiters: Vec<Waiter>) {
    match result {
        Err(error) => {
            for waiter in waiters {
                let _ = waiter.reply.send(Err(copy_error(&error)));
            }
        }
        Ok(FleetResult { instances, errors }) => {
            let mut pool: VecDeque<Instance> = instances.into();
            for waiter in waiters {
                let take = (waiter.count as usize).min(pool.len());
                let share: Vec<Instance> = pool.drain(..take).collect();
                let sent = waiter.reply.send(Ok(FleetResult {
                    instances: share,
                    errors: errors.clone(),
                }));
                if let Err(Ok(returned)) = sent {
                    for instance in returned.instances.into_iter().rev() {
                        pool.push_front(instance);
                    }
                }
            }
            if !pool.is_empty() {
                let ids: Vec<&str> = pool.iter().map(|i| i.id.as_str()).collect();
                tracing::warn!(?ids, "launched instances nobody waits for any more");
            }
        }
    }
}

#[async_trait]
impl CloudProvider for Ec2Fleet {
    async fn launch(&self, request: &FleetRequest) -> Result<FleetResult, cloud::Error> {
        validate_request(request)?;
        overrides(&self.inner.config, request)?;
        match self.inner.config.batch {
            Some(options) => self.launch_batched(request, options).await,
            None => self.inner.launch_now(request).await,
        }
    }

    async fn terminate(&self, instance_ids: &[String]) -> Result<(), cloud::Error> {
        self.inner.terminate(instance_ids).await
    }

    async fn describe(&self, instance_ids: &[String]) -> Result<Vec<Instance>, cloud::Error> {
        self.inner.describe(instance_ids).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::types::LaunchTemplateAndOverridesResponse;
    use spot_core::cloud::LaunchCandidate;

    fn config() -> Ec2FleetConfig {
        let mut config = Ec2FleetConfig::new(
            LaunchTemplate::Name("workers".into()),
            BTreeMap::from([
                ("us-east-1a".to_owned(), "subnet-a".to_owned()),
                ("us-east-1b".to_owned(), "subnet-b".to_owned()),
            ]),
        );
        config.tags = BTreeMap::from([
            ("cluster".to_owned(), "blue".to_owned()),
            ("team".to_owned(), "infra".to_owned()),
        ]);
        config
    }

    fn candidate(instance_type: &str, zone: &str) -> LaunchCandidate {
        LaunchCandidate {
            instance_type: instance_type.into(),
            zone: zone.into(),
            price: 0.05,
        }
    }

    fn request(capacity_type: CapacityType, count: u32) -> FleetRequest {
        FleetRequest {
            capacity_type,
            candidates: vec![
                candidate("m5.large", "us-east-1a"),
                candidate("m5.large", "us-east-1c"), // no subnet: dropped
                candidate("c5.large", "us-east-1b"),
                candidate("m5.large", "us-east-1a"), // duplicate: sent once
            ],
            count,
            strategy: AllocationStrategy::PriceCapacityOptimized,
            tags: BTreeMap::from([("team".to_owned(), "data".to_owned())]),
        }
    }

    fn zone_by_subnet() -> HashMap<String, String> {
        HashMap::from([
            ("subnet-a".to_owned(), "us-east-1a".to_owned()),
            ("subnet-b".to_owned(), "us-east-1b".to_owned()),
        ])
    }

    #[test]
    fn spot_request_builds_an_instant_price_capacity_optimized_fleet() {
        let input = create_fleet_input(&config(), &request(CapacityType::Spot, 3)).unwrap();
        assert_eq!(input.r#type(), Some(&FleetType::Instant));
        let target = input.target_capacity_specification().unwrap();
        assert_eq!(target.total_target_capacity(), Some(3));
        assert_eq!(
            target.default_target_capacity_type(),
            Some(&DefaultTargetCapacityType::Spot)
        );
        assert_eq!(
            input.spot_options().and_then(|o| o.allocation_strategy()),
            Some(&SpotAllocationStrategy::PriceCapacityOptimized)
        );
        assert!(input.on_demand_options().is_none());

        let configs = input.launch_template_configs();
        assert_eq!(configs.len(), 1);
        let template = configs[0].launch_template_specification().unwrap();
        assert_eq!(template.launch_template_name(), Some("workers"));
        assert_eq!(template.launch_template_id(), None);
        assert_eq!(template.version(), Some("$Latest"));
        let overrides: Vec<(&str, &str)> = configs[0]
            .overrides()
            .iter()
            .map(|o| (o.instance_type().unwrap().as_str(), o.subnet_id().unwrap()))
            .collect();
        assert_eq!(overrides, [("m5.large", "subnet-a"), ("c5.large", "subnet-b")]);

        let specs = input.tag_specifications();
        let resources: Vec<&ResourceType> = specs.iter().filter_map(|s| s.resource_type()).collect();
        assert_eq!(
            resources,
            [
                &ResourceType::Instance,
                &ResourceType::Volume,
                &ResourceType::Fleet
            ]
        );
        for spec in specs {
            let tags: Vec<(&str, &str)> = spec
                .tags()
                .iter()
                .map(|t| (t.key().unwrap(), t.value().unwrap()))
                .collect();
            // The request's tag overrides the configured one.
            assert_eq!(tags, [("cluster", "blue"), ("team", "data")]);
        }
        let token = input.client_token().unwrap().to_owned();
        let again = create_fleet_input(&config(), &request(CapacityType::Spot, 3)).unwrap();
        assert_ne!(
            again.client_token(),
            Some(token.as_str()),
            "client tokens must differ per call"
        );
        assert!(token.len() <= 64);
    }

    #[test]
    fn spot_strategies_map_one_to_one() {
        for (ours, theirs) in [
            (
                AllocationStrategy::PriceCapacityOptimized,
                SpotAllocationStrategy::PriceCapacityOptimized,
            ),
            (
                AllocationStrategy::CapacityOptimized,
                SpotAllocationStrategy::CapacityOptimized,
            ),
            (
                AllocationStrategy::LowestPrice,
                SpotAllocationStrategy::LowestPrice,
            ),
            (
                AllocationStrategy::Diversified,
                SpotAllocationStrategy::Diversified,
            ),
        ] {
            let mut r = request(CapacityType::Spot, 1);
            r.strategy = ours;
            let input = create_fleet_input(&config(), &r).unwrap();
            assert_eq!(
                input.spot_options().and_then(|o| o.allocation_strategy()),
                Some(&theirs)
            );
        }
    }

    #[test]
    fn on_demand_request_uses_lowest_price_and_template_id() {
        let mut config = config();
        config.launch_template = LaunchTemplate::Id("lt-0123".into());
        config.launch_template_version = "7".into();
        config.tags.clear();
        let mut r = request(CapacityType::OnDemand, 2);
        r.tags.clear();
        let input = create_fleet_input(&config, &r).unwrap();
        let target = input.target_capacity_specification().unwrap();
        assert_eq!(
            target.default_target_capacity_type(),
            Some(&DefaultTargetCapacityType::OnDemand)
        );
        assert_eq!(
            input.on_demand_options().and_then(|o| o.allocation_strategy()),
            Some(&FleetOnDemandAllocationStrategy::LowestPrice)
        );
        assert!(input.spot_options().is_none());
        let template = input.launch_template_configs()[0]
            .launch_template_specification()
            .unwrap();
        assert_eq!(
            (template.launch_template_id(), template.version()),
            (Some("lt-0123"), Some("7"))
        );
        assert!(template.launch_template_name().is_none());
        // No tags at all: no tag specifications (EC2 refuses empty tag lists).
        assert!(input.tag_specifications().is_empty());
    }

    #[test]
    fn invalid_requests_are_refused_with_the_reason() {
        let c = config();
        let mut zero = request(CapacityType::Spot, 0);
        assert_eq!(create_fleet_input(&c, &zero).unwrap_err(), Error::ZeroCount);
        zero.count = u32::MAX;
        assert_eq!(
            create_fleet_input(&c, &zero).unwrap_err().to_string(),
            "count 4294967295 is larger than 2147483647"
        );
        let mut empty = request(CapacityType::Spot, 1);
        empty.candidates.clear();
        assert_eq!(create_fleet_input(&c, &empty).unwrap_err(), Error::NoCandidates);
        let mut elsewhere = request(CapacityType::Spot, 1);
        elsewhere.candidates = vec![
            candidate("m5.large", "eu-west-1a"),
            candidate("m5.large", "eu-west-1b"),
        ];
        let err = create_fleet_input(&c, &elsewhere).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no candidate zone has a subnet: candidate zones [\"eu-west-1a\", \"eu-west-1b\"], \
             subnets configured for [\"us-east-1a\", \"us-east-1b\"]"
        );
        let mut unnamed = request(CapacityType::Spot, 1);
        unnamed.candidates[2].instance_type.clear();
        assert_eq!(
            create_fleet_input(&c, &unnamed).unwrap_err(),
            Error::EmptyInstanceType { index: 2 }
        );
        let mut reserved = request(CapacityType::Spot, 1);
        reserved
            .tags
            .insert("aws:cloudformation:stack-name".into(), "x".into());
        assert_eq!(
            create_fleet_input(&c, &reserved).unwrap_err(),
            Error::TagKey("aws:cloudformation:stack-name".into())
        );
        // As the CloudProvider reports them.
        let err: cloud::Error = Error::ZeroCount.into();
        assert_eq!(
            err.to_string(),
            "invalid launch request: count is 0: nothing to launch"
        );
    }

    #[test]
    fn invalid_configurations_are_refused() {
        let mut c = config();
        c.launch_template = LaunchTemplate::Name(String::new());
        assert_eq!(c.validate(), Err(Error::EmptyLaunchTemplate("name")));
        let mut c = config();
        c.launch_template = LaunchTemplate::Id(String::new());
        assert_eq!(c.validate(), Err(Error::EmptyLaunchTemplate("id")));
        let mut c = config();
        c.subnets_by_zone.clear();
        assert_eq!(c.validate(), Err(Error::NoSubnets));
        let mut c = config();
        c.subnets_by_zone.insert("us-east-1c".into(), String::new());
        assert!(matches!(c.validate(), Err(Error::EmptySubnet { zone, .. }) if zone == "us-east-1c"));
        let mut c = config();
        c.tags.insert(String::new(), "v".into());
        assert_eq!(c.validate(), Err(Error::TagKey(String::new())));
        let mut c = config();
        c.batch = Some(BatchOptions {
            max_items: 0,
            ..BatchOptions::default()
        });
        assert!(matches!(
            c.validate(),
            Err(Error::Batch {
                field: "max_items",
                ..
            })
        ));
        c.batch = Some(BatchOptions {
            idle: Duration::from_secs(2),
            ..BatchOptions::default()
        });
        assert!(matches!(c.validate(), Err(Error::Batch { field: "idle", .. })));
        assert_eq!(config().validate(), Ok(()));
    }

    fn overrides_response(
        instance_type: Option<&str>,
        subnet: Option<&str>,
        zone: Option<&str>,
    ) -> LaunchTemplateAndOverridesResponse {
        LaunchTemplateAndOverridesResponse::builder()
            .overrides(
                FleetLaunchTemplateOverrides::builder()
                    .set_instance_type(instance_type.map(InstanceType::from))
                    .set_subnet_id(subnet.map(str::to_owned))
                    .set_availability_zone(zone.map(str::to_owned))
                    .build(),
            )
            .build()
    }

    #[test]
    fn fleet_errors_name_the_pool_of_their_override() {
        let ice = CreateFleetError::builder()
            .launch_template_and_overrides(overrides_response(Some("c5.large"), Some("subnet-b"), None))
            .lifecycle(InstanceLifecycle::Spot)
            .error_code("InsufficientInstanceCapacity")
            .error_message("We currently do not have sufficient c5.large capacity in us-east-1b.")
            .build();
        let mapped = launch_error(&ice, &zone_by_subnet());
        assert_eq!(
            mapped,
            LaunchError {
                instance_type: Some("c5.large".into()),
                zone: Some("us-east-1b".into()),
                code: "InsufficientInstanceCapacity".into(),
                message: "We currently do not have sufficient c5.large capacity in us-east-1b.".into(),
            }
        );
        assert!(mapped.is_insufficient_capacity());
        // The override's own zone wins over the subnet's.
        let with_zone = CreateFleetError::builder()
            .launch_template_and_overrides(overrides_response(
                Some("m5.large"),
                Some("subnet-unknown"),
                Some("us-east-1d"),
            ))
            .error_code("UnfulfillableCapacity")
            .build();
        let mapped = launch_error(&with_zone, &zone_by_subnet());
        assert_eq!(
            (
                mapped.instance_type.as_deref(),
                mapped.zone.as_deref(),
                mapped.message.as_str()
            ),
            (Some("m5.large"), Some("us-east-1d"), "")
        );
        // An error without overrides names no pool.
        let bare = CreateFleetError::builder()
            .error_message("You've reached the limit")
            .build();
        let mapped = launch_error(&bare, &zone_by_subnet());
        assert_eq!((mapped.instance_type, mapped.zone), (None, None));
        assert_eq!(mapped.code, "Unknown");
    }

    #[test]
    fn response_instances_use_what_the_response_carries() {
        let output = CreateFleetOutput::builder()
            .fleet_id("fleet-1")
            .instances(
                CreateFleetInstance::builder()
                    .instance_ids("i-1")
                    .instance_ids("i-2")
                    .instance_type(InstanceType::M5Large)
                    .lifecycle(InstanceLifecycle::Spot)
                    .availability_zone("us-east-1a")
                    .build(),
            )
            .instances(
                // No type or zone of its own: from the override and its subnet.
                CreateFleetInstance::builder()
                    .instance_ids("i-3")
                    .launch_template_and_overrides(overrides_response(
                        Some("c5.large"),
                        Some("subnet-b"),
                        None,
                    ))
                    .build(),
            )
            .instances(CreateFleetInstance::builder().instance_ids("i-4").build())
            .build();
        let tags = BTreeMap::from([("k".to_owned(), "v".to_owned())]);
        let instances = response_instances(
            &output,
            CapacityType::OnDemand,
            &tags,
            &zone_by_subnet(),
            Some("us-east-1z"),
        );
        let summary: Vec<(&str, &str, &str, CapacityType)> = instances
            .iter()
            .map(|i| {
                (
                    i.id.as_str(),
                    i.instance_type.as_str(),
                    i.zone.as_str(),
                    i.capacity_type,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("i-1", "m5.large", "us-east-1a", CapacityType::Spot),
                ("i-2", "m5.large", "us-east-1a", CapacityType::Spot),
                ("i-3", "c5.large", "us-east-1b", CapacityType::OnDemand),
                ("i-4", "", "us-east-1z", CapacityType::OnDemand),
            ]
        );
        assert!(instances.iter().all(|i| i.state == "pending" && i.tags == tags));
    }

    #[test]
    fn not_found_messages_name_the_unknown_ids() {
        let ids: Vec<String> = ["i-1", "i-22", "i-0abc"].map(str::to_owned).to_vec();
        assert_eq!(
            named_instance_ids("The instance IDs 'i-22, i-0abc' do not exist", &ids),
            BTreeSet::from(["i-22".to_owned(), "i-0abc".to_owned()])
        );
        assert_eq!(
            named_instance_ids("The instance ID 'i-1' does not exist", &ids),
            BTreeSet::from(["i-1".to_owned()])
        );
        // Ids we did not send, or prefixes of ours, do not count.
        assert!(named_instance_ids("The instance ID 'i-2' does not exist", &ids).is_empty());
        assert!(named_instance_ids("Invalid id", &ids).is_empty());
    }

    fn instance(id: &str) -> Instance {
        Instance {
            id: id.into(),
            instance_type: "m5.large".into(),
            zone: "us-east-1a".into(),
            capacity_type: CapacityType::Spot,
            private_dns_name: String::new(),
            state: "pending".into(),
            tags: BTreeMap::new(),
            launch_time: None,
        }
    }

    #[test]
    fn split_hands_out_in_arrival_order_and_errors_to_all() {
        let mut receivers = Vec::new();
        let mut waiters = Vec::new();
        for count in [2, 1, 2, 1] {
            let (reply, rx) = oneshot::channel();
            waiters.push(Waiter { count, reply });
            receivers.push(rx);
        }
        // The second caller went away: its instance goes to the next caller.
        drop(receivers.remove(1));
        let ice = LaunchError {
            instance_type: Some("c5.large".into()),
            zone: Some("us-east-1b".into()),
            code: "InsufficientInstanceCapacity".into(),
            message: String::new(),
        };
        split(
            Ok(FleetResult {
                instances: ["i-1", "i-2", "i-3", "i-4"].map(instance).to_vec(),
                errors: vec![ice.clone()],
            }),
            waiters,
        );
        let got: Vec<(Vec<String>, usize)> = receivers
            .into_iter()
            .map(|mut rx| {
                let r = rx.try_recv().unwrap().unwrap();
                (r.instances.into_iter().map(|i| i.id).collect(), r.errors.len())
            })
            .collect();
        assert_eq!(
            got,
            [
                (vec!["i-1".to_owned(), "i-2".to_owned()], 1),
                (vec!["i-3".to_owned(), "i-4".to_owned()], 1),
                (vec![], 1),
            ]
        );

        let (reply, mut rx) = oneshot::channel();
        split(
            Err(cloud::Error::Api {
                operation: "CreateFleet",
                message: "throttled".into(),
            }),
            vec![Waiter { count: 1, reply }],
        );
        assert_eq!(
            rx.try_recv().unwrap().unwrap_err().to_string(),
            "CreateFleet failed: throttled"
        );
    }
}
