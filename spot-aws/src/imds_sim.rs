//! `spot-imds-sim`: an instance metadata service simulator, compatible with the paths and bodies
//! of amazon-ec2-metadata-mock (AEMM) for the parts an interruption handler reads.
//!
//! Served paths (a trailing `/` is ignored; directories answer a newline-separated listing):
//!
//! - `PUT /latest/api/token` (IMDSv2 session tokens, TTL 1 to 21600 s, echoed in
//!   `X-aws-ec2-metadata-token-ttl-seconds`; a missing or out-of-range TTL is a 400, a PUT with
//!   `X-Forwarded-For` a 403);
//! - `/latest/meta-data/`: `ami-id`, `hostname`, `instance-id`, `instance-life-cycle`
//!   (`spot`), `instance-type`, `local-hostname`, `local-ipv4`, `mac`,
//!   `placement/availability-zone`, `placement/region`;
//! - `spot/instance-action` and `spot/termination-time` (404 until a notice),
//!   `events/recommendations/rebalance` (404 until a recommendation),
//!   `events/maintenance/scheduled` (`[]` when nothing is scheduled; canceled and completed events
//!   stay on this path as in AEMM), `autoscaling/target-lifecycle-state` (`InService` by default);
//! - `/latest/dynamic/instance-identity/document`.
//!
//! IMDSv2 is enforced unless [`SimConfig::imdsv1`] is set: a request without a valid token is a
//! 401. With IMDSv1 allowed, a request without a token passes but an invalid or expired one is
//! still a 401 (as real IMDS; AEMM ignores the header). Tokens expire after their TTL, measured
//! with `tokio::time`.
//!
//! Notice times are fixed when a scenario is triggered: polling again returns the same body
//! (unlike AEMM, whose default times move on every request).
//!
//! The control API (no token needed) takes an empty body or a JSON object, optionally with
//! `delay_seconds` (the change happens later and the answer is `202 Accepted`), and answers with
//! the resulting [`SimSnapshot`] as JSON:
//!
//! | Request | Parameters |
//! |---|---|
//! | `POST /sim/spot-itn` | `action` (`terminate`), `notice_seconds` until the deadline (120) |
//! | `POST /sim/rebalance` | none |
//! | `POST /sim/scheduled` | `event_id` (update that event, or create one with this id), `code` (`system-reboot`), `state` (`active`), `description`, `not_before`, `not_after` (RFC 3339) |
//! | `POST /sim/asg-target-state` | `state` (`Terminated`) |
//! | `POST /sim/reset` | none: clears every notice and pending trigger |
//! | `GET /sim/state` | |

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use spot_core::clock::{Clock, TokioClock};
use spot_core::event::{ScheduledState, SpotAction};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::imds::parse::{format_imds_time, format_scheduled_time, scheduled_state_str, spot_action_str};
use crate::imds::{MAX_TOKEN_TTL, TOKEN_HEADER, TOKEN_PATH, TOKEN_TTL_HEADER};

/// How long [`RunningSim::shutdown`] waits for open connections before it drops them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Errors of the simulator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Binding the listener (or reading its address) failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The server task failed or panicked.
    #[error("simulator server failed: {0}")]
    Server(String),
    /// No scheduled event has this id.
    #[error("no scheduled event {0:?}")]
    UnknownEvent(String),
    /// A scenario parameter is not acceptable.
    #[error("invalid {field} {value:?}: {reason}")]
    InvalidParameter {
        /// The parameter.
        field: &'static str,
        /// Its value.
        value: String,
        /// Why it was refused.
        reason: String,
    },
}

/// The simulated instance and the scenarios to play from start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    /// `instance-id` (default `i-1234567890abcdef0`).
    pub instance_id: String,
    /// `instance-type` (default `m4.xlarge`).
    pub instance_type: String,
    /// `placement/availability-zone` (default `us-east-1a`).
    pub availability_zone: String,
    /// `placement/region`; derived from the zone when `None`.
    pub region: Option<String>,
    /// `ami-id`.
    pub ami_id: String,
    /// `local-ipv4`.
    pub local_ipv4: String,
    /// `local-hostname` and `hostname`.
    pub local_hostname: String,
    /// `mac`.
    pub mac: String,
    /// The account id in the identity document.
    pub account_id: String,
    /// `instance-life-cycle` (default `spot`).
    pub instance_life_cycle: String,
    /// Whether requests without a token are served (IMDSv1); default false (IMDSv2 only).
    pub imdsv1: bool,
    /// Trigger a spot interruption notice this long after start.
    pub spot_itn_delay: Option<Duration>,
    /// The action of start-up spot notices (default terminate).
    pub spot_action: SpotAction,
    /// Time from a spot notice to its deadline (default 120 s).
    pub spot_notice: Duration,
    /// Trigger a rebalance recommendation this long after start.
    pub rebalance_delay: Option<Duration>,
    /// Schedule a maintenance event with [`SimConfig::scheduled_code`] this long after start.
    pub scheduled_delay: Option<Duration>,
    /// The code of the start-up scheduled event (default `system-reboot`).
    pub scheduled_code: String,
    /// Set the Auto Scaling target lifecycle state to `Terminated` this long after start.
    pub asg_terminate_delay: Option<Duration>,
    /// The initial Auto Scaling target lifecycle state (default `InService`).
    pub asg_target_state: String,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            instance_id: "i-1234567890abcdef0".into(),
            instance_type: "m4.xlarge".into(),
            availability_zone: "us-east-1a".into(),
            region: None,
            ami_id: "ami-0a887e401f7654935".into(),
            local_ipv4: "172.16.34.43".into(),
            local_hostname: "ip-172-16-34-43.ec2.internal".into(),
            mac: "0e:49:61:0f:c3:11".into(),
            account_id: "123456789012".into(),
            instance_life_cycle: "spot".into(),
            imdsv1: false,
            spot_itn_delay: None,
            spot_action: SpotAction::Terminate,
            spot_notice: Duration::from_secs(120),
            rebalance_delay: None,
            scheduled_delay: None,
            scheduled_code: "system-reboot".into(),
            asg_terminate_delay: None,
            asg_target_state: "InService".into(),
        }
    }
}

impl SimConfig {
    /// Sets the instance id.
    pub fn with_instance_id(mut self, id: impl Into<String>) -> Self {
        self.instance_id = id.into();
        self
    }

    /// Sets the instance type.
    pub fn with_instance_type(mut self, instance_type: impl Into<String>) -> Self {
        self.instance_type = instance_type.into();
        self
    }

    /// Sets the availability zone (and, unless set, the region derived from it).
    pub fn with_zone(mut self, zone: impl Into<String>) -> Self {
        self.availability_zone = zone.into();
        self
    }

    /// Allows (`true`) or refuses (`false`) requests without a token.
    pub fn with_imdsv1(mut self, allowed: bool) -> Self {
        self.imdsv1 = allowed;
        self
    }

    /// Triggers a spot notice `delay` after start.
    pub fn with_spot_itn_after(mut self, delay: Duration) -> Self {
        self.spot_itn_delay = Some(delay);
        self
    }

    /// Triggers a rebalance recommendation `delay` after start.
    pub fn with_rebalance_after(mut self, delay: Duration) -> Self {
        self.rebalance_delay = Some(delay);
        self
    }

    /// Schedules a `code` maintenance event `delay` after start.
    pub fn with_scheduled_after(mut self, code: impl Into<String>, delay: Duration) -> Self {
        self.scheduled_code = code.into();
        self.scheduled_delay = Some(delay);
        self
    }

    /// Sets the Auto Scaling target state to `Terminated` `delay` after start.
    pub fn with_asg_terminate_after(mut self, delay: Duration) -> Self {
        self.asg_terminate_delay = Some(delay);
        self
    }

    /// The region: [`SimConfig::region`], else the zone without its trailing letter.
    pub fn region(&self) -> String {
        match &self.region {
            Some(region) => region.clone(),
            None => self
                .availability_zone
                .trim_end_matches(|c: char| c.is_ascii_alphabetic())
                .to_owned(),
        }
    }
}

/// A spot interruption notice as served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpotNotice {
    /// What EC2 will do.
    pub action: SpotAction,
    /// The deadline.
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
}

/// A scheduled maintenance event as served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimScheduledEvent {
    /// `instance-event-...`.
    pub event_id: String,
    /// The event code.
    pub code: String,
    /// Free text.
    pub description: String,
    /// Active, canceled or completed.
    pub state: ScheduledState,
    /// Earliest start.
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    /// Latest end.
    #[serde(with = "time::serde::rfc3339::option")]
    pub not_after: Option<OffsetDateTime>,
}

/// What to schedule (or change) with [`ImdsSim::schedule`]. Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduledSpec {
    /// Seconds to wait before applying (control API only; [`ImdsSim::schedule`] ignores it).
    pub delay_seconds: Option<u64>,
    /// An existing event to update; a new event is created when absent.
    pub event_id: Option<String>,
    /// The code (default `system-reboot`, or the existing event's).
    pub code: Option<String>,
    /// The state (default active, or the existing event's).
    pub state: Option<ScheduledState>,
    /// The description (default `The instance is scheduled for <code>`).
    pub description: Option<String>,
    /// Earliest start (default: now).
    #[serde(with = "time::serde::rfc3339::option")]
    pub not_before: Option<OffsetDateTime>,
    /// Latest end (default: a week after `not_before`).
    #[serde(with = "time::serde::rfc3339::option")]
    pub not_after: Option<OffsetDateTime>,
}

/// The simulator's scenario state, as the control API reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimSnapshot {
    /// The spot notice, once triggered.
    pub spot_instance_action: Option<SpotNotice>,
    /// The rebalance recommendation's notice time, once triggered.
    #[serde(with = "time::serde::rfc3339::option")]
    pub rebalance_notice_time: Option<OffsetDateTime>,
    /// Scheduled events, in creation order.
    pub scheduled_events: Vec<SimScheduledEvent>,
    /// The Auto Scaling target lifecycle state.
    pub asg_target_lifecycle_state: String,
    /// Delayed triggers that have not fired yet.
    pub pending_triggers: usize,
    /// IMDSv2 tokens currently valid.
    pub live_tokens: usize,
}

#[derive(Debug, Default)]
struct Scenario {
    spot: Option<SpotNotice>,
    rebalance: Option<OffsetDateTime>,
    scheduled: Vec<SimScheduledEvent>,
    asg_target_state: String,
    tokens: HashMap<String, Instant>,
}

struct Shared {
    config: SimConfig,
    clock: TokioClock,
    scenario: std::sync::Mutex<Scenario>,
    pending: std::sync::Mutex<JoinSet<()>>,
    counter: AtomicU64,
    random: std::collections::hash_map::RandomState,
}

/// The simulator's state and scenario controls. Cheap to clone; every clone controls the same
/// simulator.
#[derive(Clone)]
pub struct ImdsSim {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ImdsSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImdsSim")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl ImdsSim {
    /// A simulator in its initial state (start-up scenarios are armed by [`ImdsSim::start`]).
    pub fn new(config: SimConfig) -> Self {
        let scenario = Scenario {
            asg_target_state: config.asg_target_state.clone(),
            ..Scenario::default()
        };
        ImdsSim {
            shared: Arc::new(Shared {
                config,
                clock: TokioClock::new(),
                scenario: std::sync::Mutex::new(scenario),
                pending: std::sync::Mutex::new(JoinSet::new()),
                counter: AtomicU64::new(0),
                random: std::collections::hash_map::RandomState::new(),
            }),
        }
    }

    /// Binds `addr` (port 0 picks a free port), arms the start-up scenarios of `config` and
    /// serves until [`RunningSim::shutdown`].
    pub async fn start(config: SimConfig, addr: SocketAddr) -> Result<RunningSim, Error> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let sim = ImdsSim::new(config);
        sim.arm_startup_scenarios();
        let (stop, stopped) = oneshot::channel::<()>();
        let router = sim.router();
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        tracing::info!(%addr, "IMDS simulator listening");
        Ok(RunningSim {
            sim,
            addr,
            stop: Some(stop),
            task,
        })
    }

    /// The HTTP service: IMDS paths plus the `/sim/` control API.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/sim/spot-itn", post(control_spot_itn))
            .route("/sim/rebalance", post(control_rebalance))
            .route("/sim/scheduled", post(control_scheduled))
            .route("/sim/asg-target-state", post(control_asg_target_state))
            .route("/sim/reset", post(control_reset))
            .route("/sim/state", get(control_state))
            .fallback(serve_imds)
            .with_state(self.clone())
    }

    /// The configuration.
    pub fn config(&self) -> &SimConfig {
        &self.shared.config
    }

    /// Serves a spot interruption notice for `action`, with the deadline `notice` from now
    /// (whole seconds). The notice replaces any earlier one.
    pub fn trigger_spot_itn(&self, action: SpotAction, notice: Duration) -> SpotNotice {
        let time = whole_seconds(self.shared.clock.now() + notice);
        let spot = SpotNotice { action, time };
        self.scenario().spot = Some(spot);
        tracing::info!(action = spot_action_str(action), time = %format_imds_time(time), "spot notice");
        spot
    }

    /// Serves a rebalance recommendation noticed now; an existing one keeps its time.
    pub fn trigger_rebalance(&self) -> OffsetDateTime {
        let now = whole_seconds(self.shared.clock.now());
        *self.scenario().rebalance.get_or_insert(now)
    }

    /// Creates a scheduled event, or updates the one named by `spec.event_id`.
    pub fn schedule(&self, spec: ScheduledSpec) -> Result<SimScheduledEvent, Error> {
        if let Some(code) = &spec.code
            && (code.trim().is_empty() || code.contains(['\n', '"']))
        {
            return Err(Error::InvalidParameter {
                field: "code",
                value: code.clone(),
                reason: "must be a non-empty word".into(),
            });
        }
        let now = whole_seconds(self.shared.clock.now());
        let mut scenario = self.scenario();
        if let Some(id) = &spec.event_id
            && let Some(event) = scenario.scheduled.iter_mut().find(|e| &e.event_id == id)
        {
            if let Some(code) = spec.code {
                event.code = code;
            }
            if let Some(state) = spec.state {
                event.state = state;
            }
            if let Some(description) = spec.description {
                event.description = description;
            }
            if let Some(not_before) = spec.not_before {
                event.not_before = whole_seconds(not_before);
            }
            if let Some(not_after) = spec.not_after {
                event.not_after = Some(whole_seconds(not_after));
            }
            return Ok(event.clone());
        }
        let code = spec.code.unwrap_or_else(|| "system-reboot".to_owned());
        let not_before = whole_seconds(spec.not_before.unwrap_or(now));
        let event = SimScheduledEvent {
            event_id: spec.event_id.unwrap_or_else(|| self.new_event_id()),
            description: spec
                .description
                .unwrap_or_else(|| format!("The instance is scheduled for {code}")),
            code,
            state: spec.state.unwrap_or(ScheduledState::Active),
            not_before,
            not_after: Some(whole_seconds(
                spec.not_after
                    .unwrap_or(not_before + Duration::from_secs(7 * 86_400)),
            )),
        };
        scenario.scheduled.push(event.clone());
        Ok(event)
    }

    /// Marks the scheduled event `event_id` canceled.
    pub fn cancel_scheduled(&self, event_id: &str) -> Result<SimScheduledEvent, Error> {
        let mut scenario = self.scenario();
        let event = scenario
            .scheduled
            .iter_mut()
            .find(|e| e.event_id == event_id)
            .ok_or_else(|| Error::UnknownEvent(event_id.to_owned()))?;
        event.state = ScheduledState::Canceled;
        Ok(event.clone())
    }

    /// Sets the Auto Scaling target lifecycle state (`InService`, `Terminated`, ...).
    pub fn set_asg_target_state(&self, state: &str) -> Result<(), Error> {
        let state = state.trim();
        if state.is_empty() || !state.chars().all(|c| c.is_ascii_alphanumeric() || c == ':') {
            return Err(Error::InvalidParameter {
                field: "state",
                value: state.to_owned(),
                reason: "expected a lifecycle state such as InService or Terminated".into(),
            });
        }
        self.scenario().asg_target_state = state.to_owned();
        Ok(())
    }

    /// Clears every notice, scheduled event and pending trigger; the Auto Scaling target state
    /// goes back to its initial value. Tokens stay valid.
    pub fn reset(&self) {
        // Dropping the set aborts its tasks.
        *self.pending() = JoinSet::new();
        let mut scenario = self.scenario();
        scenario.spot = None;
        scenario.rebalance = None;
        scenario.scheduled.clear();
        scenario.asg_target_state = self.shared.config.asg_target_state.clone();
    }

    /// Invalidates every IMDSv2 token, as an IMDS restart would: clients get 401 and must
    /// fetch a new one.
    pub fn revoke_tokens(&self) {
        self.scenario().tokens.clear();
    }

    /// The current scenario state.
    pub fn snapshot(&self) -> SimSnapshot {
        let pending_triggers = {
            let mut pending = self.pending();
            while pending.try_join_next().is_some() {}
            pending.len()
        };
        let now = Instant::now();
        let scenario = self.scenario();
        SimSnapshot {
            spot_instance_action: scenario.spot,
            rebalance_notice_time: scenario.rebalance,
            scheduled_events: scenario.scheduled.clone(),
            asg_target_lifecycle_state: scenario.asg_target_state.clone(),
            pending_triggers,
            live_tokens: scenario.tokens.values().filter(|expiry| **expiry > now).count(),
        }
    }

    /// Runs `change` after `delay` unless [`ImdsSim::reset`] (or shutdown) comes first.
    pub fn after(&self, delay: Duration, change: impl FnOnce(&ImdsSim) + Send + 'static) {
        let sim = self.clone();
        let mut pending = self.pending();
        while pending.try_join_next().is_some() {}
        pending.spawn(async move {
            tokio::time::sleep(delay).await;
            change(&sim);
        });
    }

    fn arm_startup_scenarios(&self) {
        let config = &self.shared.config;
        if let Some(delay) = config.spot_itn_delay {
            let (action, notice) = (config.spot_action, config.spot_notice);
            self.after(delay, move |sim| {
                sim.trigger_spot_itn(action, notice);
            });
        }
        if let Some(delay) = config.rebalance_delay {
            self.after(delay, |sim| {
                sim.trigger_rebalance();
            });
        }
        if let Some(delay) = config.scheduled_delay {
            let code = config.scheduled_code.clone();
            self.after(delay, move |sim| {
                if let Err(error) = sim.schedule(ScheduledSpec {
                    code: Some(code),
                    ..ScheduledSpec::default()
                }) {
                    tracing::warn!(%error, "start-up scheduled event refused");
                }
            });
        }
        if let Some(delay) = config.asg_terminate_delay {
            self.after(delay, |sim| {
                if let Err(error) = sim.set_asg_target_state("Terminated") {
                    tracing::warn!(%error, "start-up Auto Scaling state refused");
                }
            });
        }
    }

    fn scenario(&self) -> MutexGuard<'_, Scenario> {
        self.shared.scenario.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pending(&self) -> MutexGuard<'_, JoinSet<()>> {
        self.shared.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn random_u64(&self) -> u64 {
        let mut hasher = self.shared.random.build_hasher();
        hasher.write_u64(self.shared.counter.fetch_add(1, Ordering::Relaxed));
        hasher.finish()
    }

    fn new_event_id(&self) -> String {
        format!(
            "instance-event-{:x}{:016x}",
            self.random_u64() & 0xf,
            self.random_u64()
        )
    }

    fn new_token(&self, ttl: Duration) -> String {
        let token: String = (0..4).map(|_| format!("{:016x}", self.random_u64())).collect();
        let now = Instant::now();
        let mut scenario = self.scenario();
        scenario.tokens.retain(|_, expiry| *expiry > now);
        scenario.tokens.insert(token.clone(), now + ttl);
        token
    }

    /// Whether `token` is valid now; an expired token is forgotten.
    fn check_token(&self, token: &str) -> bool {
        let mut scenario = self.scenario();
        match scenario.tokens.get(token) {
            Some(expiry) if Instant::now() < *expiry => true,
            Some(_) => {
                scenario.tokens.remove(token);
                false
            }
            None => false,
        }
    }
}

/// A simulator serving on a socket.
#[derive(Debug)]
pub struct RunningSim {
    sim: ImdsSim,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl std::ops::Deref for RunningSim {
    type Target = ImdsSim;

    fn deref(&self) -> &ImdsSim {
        &self.sim
    }
}

impl RunningSim {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL, such as `http://127.0.0.1:40123` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A handle to control the simulator (also reachable through `Deref`).
    pub fn sim(&self) -> &ImdsSim {
        &self.sim
    }

    /// Stops accepting connections, lets open requests finish (up to 5 s) and cancels pending
    /// triggers.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        *self.sim.pending() = JoinSet::new();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let abort = self.task.abort_handle();
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut self.task).await {
            Ok(Ok(result)) => result.map_err(Error::Io),
            Ok(Err(join)) => Err(Error::Server(join.to_string())),
            Err(_) => {
                abort.abort();
                Ok(())
            }
        }
    }

    /// Waits until the server stops (it only stops on [`RunningSim::shutdown`] or an error).
    pub async fn wait(&mut self) -> Result<(), Error> {
        match (&mut self.task).await {
            Ok(result) => result.map_err(Error::Io),
            Err(join) => Err(Error::Server(join.to_string())),
        }
    }
}

impl Drop for RunningSim {
    fn drop(&mut self) {
        self.task.abort();
        self.sim.pending().abort_all();
    }
}

fn whole_seconds(time: OffsetDateTime) -> OffsetDateTime {
    time.replace_nanosecond(0)
        .unwrap_or(time)
        .to_offset(time::UtcOffset::UTC)
}

/// An IMDS-style XHTML error page.
fn error_page(status: StatusCode) -> Response {
    let title = format!(
        "{} - {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    );
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>\n\
         <!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Transitional//EN\"\n\
         \t\"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd\">\n\
         <html xmlns=\"http://www.w3.org/1999/xhtml\" xml:lang=\"en\" lang=\"en\">\n \
         <head>\n  <title>{title}</title>\n </head>\n <body>\n  <h1>{title}</h1>\n </body>\n</html>\n"
    );
    (status, [(header::CONTENT_TYPE, "text/html")], body).into_response()
}

fn text(body: impl Into<String>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain")],
        body.into(),
    )
        .into_response()
}

fn json_text(value: &impl Serialize) -> Response {
    match serde_json::to_string_pretty(value) {
        Ok(body) => (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(_) => error_page(StatusCode::INTERNAL_SERVER_ERROR),
    }
}

async fn serve_imds(State(sim): State<ImdsSim>, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let path = uri.path().trim_end_matches('/');
    if path == TOKEN_PATH {
        return if method == Method::PUT {
            issue_token(&sim, &headers)
        } else {
            error_page(StatusCode::METHOD_NOT_ALLOWED)
        };
    }
    if method != Method::GET && method != Method::HEAD {
        return error_page(StatusCode::METHOD_NOT_ALLOWED);
    }
    match headers.get(TOKEN_HEADER).map(HeaderValue::to_str) {
        Some(Ok(token)) if sim.check_token(token) => {}
        None if sim.shared.config.imdsv1 => {}
        _ => return error_page(StatusCode::UNAUTHORIZED),
    }
    lookup(&sim, path)
}

fn issue_token(sim: &ImdsSim, headers: &HeaderMap) -> Response {
    if headers.contains_key("x-forwarded-for") {
        return error_page(StatusCode::FORBIDDEN);
    }
    let ttl = headers
        .get(TOKEN_TTL_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|secs| (1..=MAX_TOKEN_TTL.as_secs()).contains(secs));
    let Some(ttl) = ttl else {
        return error_page(StatusCode::BAD_REQUEST);
    };
    let token = sim.new_token(Duration::from_secs(ttl));
    let headers = [
        (header::CONTENT_TYPE, "text/plain".to_owned()),
        (HeaderName::from_static(TOKEN_TTL_HEADER), ttl.to_string()),
    ];
    (StatusCode::OK, headers, token).into_response()
}

/// Scheduled event with IMDS field names, in the order real IMDS documents them.
#[derive(Serialize)]
struct ImdsScheduledEvent<'a> {
    #[serde(rename = "NotBefore")]
    not_before: String,
    #[serde(rename = "Code")]
    code: &'a str,
    #[serde(rename = "Description")]
    description: &'a str,
    #[serde(rename = "EventId")]
    event_id: &'a str,
    #[serde(rename = "NotAfter", skip_serializing_if = "Option::is_none")]
    not_after: Option<String>,
    #[serde(rename = "State")]
    state: &'static str,
}

fn lookup(sim: &ImdsSim, path: &str) -> Response {
    let config = &sim.shared.config;
    let scenario = sim.scenario();
    let not_found = || error_page(StatusCode::NOT_FOUND);
    let Some(rest) = path.strip_prefix("/latest/meta-data") else {
        return match path {
            "" => text("latest"),
            "/latest" => text("dynamic\nmeta-data"),
            "/latest/dynamic" => text("instance-identity/"),
            "/latest/dynamic/instance-identity" => text("document"),
            "/latest/dynamic/instance-identity/document" => json_text(&serde_json::json!({
                "accountId": config.account_id,
                "architecture": "x86_64",
                "availabilityZone": config.availability_zone,
                "billingProducts": null,
                "devpayProductCodes": null,
                "marketplaceProductCodes": null,
                "imageId": config.ami_id,
                "instanceId": config.instance_id,
                "instanceType": config.instance_type,
                "kernelId": null,
                "pendingTime": "2026-01-01T00:00:00Z",
                "privateIp": config.local_ipv4,
                "ramdiskId": null,
                "region": config.region(),
                "version": "2017-09-30",
            })),
            _ => not_found(),
        };
    };
    match rest {
        "" => {
            let mut items = vec![
                "ami-id",
                "autoscaling/",
                "events/",
                "hostname",
                "instance-id",
                "instance-life-cycle",
                "instance-type",
                "local-hostname",
                "local-ipv4",
                "mac",
                "placement/",
            ];
            if scenario.spot.is_some() {
                items.push("spot/");
            }
            text(items.join("\n"))
        }
        "/ami-id" => text(&config.ami_id),
        "/hostname" | "/local-hostname" => text(&config.local_hostname),
        "/instance-id" => text(&config.instance_id),
        "/instance-life-cycle" => text(&config.instance_life_cycle),
        "/instance-type" => text(&config.instance_type),
        "/local-ipv4" => text(&config.local_ipv4),
        "/mac" => text(&config.mac),
        "/placement" => text("availability-zone\nregion"),
        "/placement/availability-zone" => text(&config.availability_zone),
        "/placement/region" => text(config.region()),
        "/autoscaling" => text("target-lifecycle-state"),
        "/autoscaling/target-lifecycle-state" => text(&scenario.asg_target_state),
        "/events" => text("maintenance/\nrecommendations/"),
        "/events/maintenance" => text("scheduled"),
        "/events/maintenance/scheduled" => {
            let events: Vec<ImdsScheduledEvent<'_>> = scenario
                .scheduled
                .iter()
                .map(|e| ImdsScheduledEvent {
                    not_before: format_scheduled_time(e.not_before),
                    code: &e.code,
                    description: &e.description,
                    event_id: &e.event_id,
                    not_after: e.not_after.map(format_scheduled_time),
                    state: scheduled_state_str(e.state),
                })
                .collect();
            json_text(&events)
        }
        "/events/recommendations" => text("rebalance"),
        "/events/recommendations/rebalance" => match scenario.rebalance {
            Some(time) => json_text(&serde_json::json!({ "noticeTime": format_imds_time(time) })),
            None => not_found(),
        },
        "/spot" => match scenario.spot {
            Some(_) => text("instance-action\ntermination-time"),
            None => not_found(),
        },
        "/spot/instance-action" => match scenario.spot {
            Some(spot) => json_text(&serde_json::json!({
                "action": spot_action_str(spot.action),
                "time": format_imds_time(spot.time),
            })),
            None => not_found(),
        },
        "/spot/termination-time" => match scenario.spot {
            Some(spot) => text(format_imds_time(spot.time)),
            None => not_found(),
        },
        _ => not_found(),
    }
}

/// A control request body: empty, or a JSON object of `T`.
fn control_body<T: for<'de> Deserialize<'de> + Default>(body: &Bytes) -> Result<T, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| e.to_string())
}

fn control_error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

/// Applies `change` now (200) or after `delay_seconds` (202); answers with the snapshot.
fn apply(
    sim: &ImdsSim,
    delay_seconds: Option<u64>,
    change: impl FnOnce(&ImdsSim) -> Result<(), Error> + Send + 'static,
) -> Response {
    match delay_seconds {
        Some(secs) if secs > 0 => {
            sim.after(Duration::from_secs(secs), move |sim| {
                if let Err(error) = change(sim) {
                    tracing::warn!(%error, "delayed scenario change failed");
                }
            });
            (StatusCode::ACCEPTED, axum::Json(sim.snapshot())).into_response()
        }
        _ => match change(sim) {
            Ok(()) => (StatusCode::OK, axum::Json(sim.snapshot())).into_response(),
            Err(error @ Error::UnknownEvent(_)) => control_error(StatusCode::NOT_FOUND, &error.to_string()),
            Err(error) => control_error(StatusCode::BAD_REQUEST, &error.to_string()),
        },
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct SpotRequest {
    delay_seconds: Option<u64>,
    action: Option<SpotAction>,
    notice_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct DelayRequest {
    delay_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct AsgRequest {
    delay_seconds: Option<u64>,
    state: Option<String>,
}

async fn control_spot_itn(State(sim): State<ImdsSim>, body: Bytes) -> Response {
    let request: SpotRequest = match control_body(&body) {
        Ok(r) => r,
        Err(message) => return control_error(StatusCode::BAD_REQUEST, &message),
    };
    let action = request.action.unwrap_or(sim.shared.config.spot_action);
    let notice = request
        .notice_seconds
        .map(Duration::from_secs)
        .unwrap_or(sim.shared.config.spot_notice);
    apply(&sim, request.delay_seconds, move |sim| {
        sim.trigger_spot_itn(action, notice);
        Ok(())
    })
}

async fn control_rebalance(State(sim): State<ImdsSim>, body: Bytes) -> Response {
    let request: DelayRequest = match control_body(&body) {
        Ok(r) => r,
        Err(message) => return control_error(StatusCode::BAD_REQUEST, &message),
    };
    apply(&sim, request.delay_seconds, |sim| {
        sim.trigger_rebalance();
        Ok(())
    })
}

async fn control_scheduled(State(sim): State<ImdsSim>, body: Bytes) -> Response {
    let spec: ScheduledSpec = match control_body(&body) {
        Ok(r) => r,
        Err(message) => return control_error(StatusCode::BAD_REQUEST, &message),
    };
    apply(&sim, spec.delay_seconds, move |sim| sim.schedule(spec).map(drop))
}

async fn control_asg_target_state(State(sim): State<ImdsSim>, body: Bytes) -> Response {
    let request: AsgRequest = match control_body(&body) {
        Ok(r) => r,
        Err(message) => return control_error(StatusCode::BAD_REQUEST, &message),
    };
    let state = request.state.unwrap_or_else(|| "Terminated".to_owned());
    apply(&sim, request.delay_seconds, move |sim| {
        sim.set_asg_target_state(&state)
    })
}

async fn control_reset(State(sim): State<ImdsSim>) -> Response {
    sim.reset();
    (StatusCode::OK, axum::Json(sim.snapshot())).into_response()
}

async fn control_state(State(sim): State<ImdsSim>) -> Response {
    (StatusCode::OK, axum::Json(sim.snapshot())).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    async fn body(response: Response) -> (StatusCode, String) {
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    async fn request(sim: &ImdsSim, method: Method, path: &str, headers: &[(&str, &str)]) -> Response {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        serve_imds(State(sim.clone()), method, path.parse().unwrap(), map).await
    }

    async fn token(sim: &ImdsSim, ttl: &str) -> String {
        let response = request(sim, Method::PUT, TOKEN_PATH, &[(TOKEN_TTL_HEADER, ttl)]).await;
        assert_eq!(response.headers()[TOKEN_TTL_HEADER], ttl);
        let (status, token) = body(response).await;
        assert_eq!(status, StatusCode::OK);
        token
    }

    #[test]
    fn region_follows_the_zone() {
        assert_eq!(SimConfig::default().region(), "us-east-1");
        assert_eq!(SimConfig::default().with_zone("eu-west-3c").region(), "eu-west-3");
        let config = SimConfig {
            region: Some("local".into()),
            ..SimConfig::default()
        };
        assert_eq!(config.region(), "local");
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_are_required_and_expire() {
        let sim = ImdsSim::new(SimConfig::default());
        let (status, page) =
            body(request(&sim, Method::GET, "/latest/meta-data/instance-id", &[]).await).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(page.contains("401 - Unauthorized"), "{page}");
        for bad in ["0", "21601", "abc", "-1", ""] {
            let response = request(&sim, Method::PUT, TOKEN_PATH, &[(TOKEN_TTL_HEADER, bad)]).await;
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "TTL {bad:?}");
        }
        assert_eq!(
            request(&sim, Method::PUT, TOKEN_PATH, &[]).await.status(),
            StatusCode::BAD_REQUEST
        );
        let forwarded = [(TOKEN_TTL_HEADER, "60"), ("x-forwarded-for", "10.0.0.1")];
        assert_eq!(
            request(&sim, Method::PUT, TOKEN_PATH, &forwarded).await.status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            request(&sim, Method::GET, TOKEN_PATH, &[]).await.status(),
            StatusCode::METHOD_NOT_ALLOWED
        );

        let short = token(&sim, "2").await;
        let long = token(&sim, "21600").await;
        assert_ne!(short, long);
        let (status, id) = body(
            request(
                &sim,
                Method::GET,
                "/latest/meta-data/instance-id",
                &[(TOKEN_HEADER, &short)],
            )
            .await,
        )
        .await;
        assert_eq!((status, id.as_str()), (StatusCode::OK, "i-1234567890abcdef0"));
        tokio::time::advance(Duration::from_millis(1999)).await;
        let ok = request(
            &sim,
            Method::GET,
            "/latest/meta-data/instance-id",
            &[(TOKEN_HEADER, &short)],
        )
        .await;
        assert_eq!(ok.status(), StatusCode::OK);
        tokio::time::advance(Duration::from_millis(1)).await;
        let expired = request(
            &sim,
            Method::GET,
            "/latest/meta-data/instance-id",
            &[(TOKEN_HEADER, &short)],
        )
        .await;
        assert_eq!(expired.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(sim.snapshot().live_tokens, 1);
        let ok = request(&sim, Method::GET, "/latest/meta-data", &[(TOKEN_HEADER, &long)]).await;
        assert_eq!(ok.status(), StatusCode::OK);
        sim.revoke_tokens();
        let revoked = request(&sim, Method::GET, "/latest/meta-data", &[(TOKEN_HEADER, &long)]).await;
        assert_eq!(revoked.status(), StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn imdsv1_mode_still_checks_presented_tokens() {
        let sim = ImdsSim::new(SimConfig::default().with_imdsv1(true));
        let (status, id) =
            body(request(&sim, Method::GET, "/latest/meta-data/instance-id/", &[]).await).await;
        assert_eq!((status, id.as_str()), (StatusCode::OK, "i-1234567890abcdef0"));
        let bad = request(
            &sim,
            Method::GET,
            "/latest/meta-data/instance-id",
            &[(TOKEN_HEADER, "nope")],
        )
        .await;
        assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            request(&sim, Method::POST, "/latest/meta-data", &[])
                .await
                .status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[tokio::test(start_paused = true)]
    async fn notices_are_fixed_when_triggered() {
        let sim = ImdsSim::new(SimConfig::default().with_imdsv1(true));
        let path = "/latest/meta-data/spot/instance-action";
        let (status, page) = body(request(&sim, Method::GET, path, &[]).await).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(page.contains("404 - Not Found"));
        let listing = body(request(&sim, Method::GET, "/latest/meta-data/", &[]).await)
            .await
            .1;
        assert!(
            !listing.contains("spot/") && listing.contains("instance-id"),
            "{listing}"
        );

        let notice = sim.trigger_spot_itn(SpotAction::Stop, Duration::from_secs(120));
        let (status, first) = body(request(&sim, Method::GET, path, &[]).await).await;
        assert_eq!(status, StatusCode::OK);
        tokio::time::advance(Duration::from_secs(5)).await;
        let (_, second) = body(request(&sim, Method::GET, path, &[]).await).await;
        assert_eq!(first, second);
        let parsed = crate::imds::parse::parse_instance_action(&first).unwrap();
        assert_eq!((parsed.action, parsed.time), (SpotAction::Stop, notice.time));
        let (_, termination) =
            body(request(&sim, Method::GET, "/latest/meta-data/spot/termination-time", &[]).await).await;
        assert_eq!(termination, format_imds_time(notice.time));
        assert!(
            body(request(&sim, Method::GET, "/latest/meta-data", &[]).await)
                .await
                .1
                .contains("spot/")
        );

        let rebalance = "/latest/meta-data/events/recommendations/rebalance";
        assert_eq!(
            request(&sim, Method::GET, rebalance, &[]).await.status(),
            StatusCode::NOT_FOUND
        );
        let at = sim.trigger_rebalance();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(
            sim.trigger_rebalance(),
            at,
            "a second trigger keeps the notice time"
        );
        let (_, doc) = body(request(&sim, Method::GET, rebalance, &[]).await).await;
        assert_eq!(crate::imds::parse::parse_rebalance(&doc).unwrap().notice_time, at);
    }

    #[tokio::test]
    async fn scheduled_events_and_asg_state() {
        let sim = ImdsSim::new(SimConfig::default().with_imdsv1(true));
        let path = "/latest/meta-data/events/maintenance/scheduled";
        assert_eq!(
            body(request(&sim, Method::GET, path, &[]).await).await,
            (StatusCode::OK, "[]".to_owned())
        );
        let event = sim
            .schedule(ScheduledSpec {
                code: Some("instance-stop".into()),
                not_before: Some(datetime!(2026-01-02 03:04:05.6 UTC)),
                ..ScheduledSpec::default()
            })
            .unwrap();
        assert!(
            event.event_id.starts_with("instance-event-") && event.event_id.len() == 32,
            "{}",
            event.event_id
        );
        assert_eq!(event.not_after, Some(datetime!(2026-01-09 03:04:05 UTC)));
        let (_, doc) = body(request(&sim, Method::GET, path, &[]).await).await;
        assert!(
            doc.contains("\"NotBefore\": \"2 Jan 2026 03:04:05 GMT\""),
            "{doc}"
        );
        let parsed = crate::imds::parse::parse_scheduled_events(&doc).unwrap();
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].event_id, event.event_id);
        assert_eq!(parsed[0].state, ScheduledState::Active);
        assert_eq!(
            parsed[0].description,
            "The instance is scheduled for instance-stop"
        );

        let canceled = sim.cancel_scheduled(&event.event_id).unwrap();
        assert_eq!(canceled.state, ScheduledState::Canceled);
        let (_, doc) = body(request(&sim, Method::GET, path, &[]).await).await;
        assert_eq!(
            crate::imds::parse::parse_scheduled_events(&doc).unwrap()[0].state,
            ScheduledState::Canceled
        );
        assert!(matches!(
            sim.cancel_scheduled("instance-event-nope"),
            Err(Error::UnknownEvent(_))
        ));
        let bad = ScheduledSpec {
            code: Some(" ".into()),
            ..ScheduledSpec::default()
        };
        assert!(matches!(
            sim.schedule(bad),
            Err(Error::InvalidParameter { field: "code", .. })
        ));

        let asg = "/latest/meta-data/autoscaling/target-lifecycle-state";
        assert_eq!(
            body(request(&sim, Method::GET, asg, &[]).await).await.1,
            "InService"
        );
        sim.set_asg_target_state("Terminated").unwrap();
        assert_eq!(
            body(request(&sim, Method::GET, asg, &[]).await).await.1,
            "Terminated"
        );
        assert!(sim.set_asg_target_state("In Service").is_err());

        sim.reset();
        let snapshot = sim.snapshot();
        assert!(snapshot.scheduled_events.is_empty());
        assert_eq!(snapshot.asg_target_lifecycle_state, "InService");
    }

    #[tokio::test]
    async fn identity_document_and_listings() {
        let sim = ImdsSim::new(
            SimConfig::default()
                .with_imdsv1(true)
                .with_instance_id("i-0abc")
                .with_instance_type("c5.large")
                .with_zone("eu-west-1b"),
        );
        let (_, doc) = body(
            request(
                &sim,
                Method::GET,
                "/latest/dynamic/instance-identity/document",
                &[],
            )
            .await,
        )
        .await;
        let identity = crate::imds::parse::parse_identity_document(&doc).unwrap();
        assert_eq!(
            (
                identity.instance_id.as_str(),
                identity.instance_type.as_str(),
                identity.region.as_str()
            ),
            ("i-0abc", "c5.large", "eu-west-1")
        );
        assert_eq!(
            body(request(&sim, Method::GET, "/latest/meta-data/placement/region", &[]).await)
                .await
                .1,
            "eu-west-1"
        );
        assert_eq!(
            body(request(&sim, Method::GET, "/latest/meta-data/instance-life-cycle", &[]).await)
                .await
                .1,
            "spot"
        );
        assert_eq!(body(request(&sim, Method::GET, "/", &[]).await).await.1, "latest");
        assert_eq!(
            request(&sim, Method::GET, "/latest/meta-data/nope", &[])
                .await
                .status(),
            StatusCode::NOT_FOUND
        );
    }

    #[tokio::test(start_paused = true)]
    async fn delayed_triggers_fire_unless_reset() {
        let sim = ImdsSim::new(SimConfig::default().with_rebalance_after(Duration::from_secs(10)));
        sim.arm_startup_scenarios();
        assert_eq!(sim.snapshot().pending_triggers, 1);
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert!(sim.snapshot().rebalance_notice_time.is_some());
        assert_eq!(sim.snapshot().pending_triggers, 0);

        sim.reset();
        sim.after(Duration::from_secs(10), |sim| {
            sim.trigger_spot_itn(SpotAction::Terminate, Duration::from_secs(120));
        });
        sim.reset();
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(sim.snapshot().spot_instance_action, None);
    }

    #[test]
    fn control_bodies() {
        let empty: SpotRequest = control_body(&Bytes::from_static(b" \n")).unwrap();
        assert!(empty.action.is_none() && empty.delay_seconds.is_none());
        let full: SpotRequest = control_body(&Bytes::from_static(
            br#"{"action":"hibernate","notice_seconds":30,"delay_seconds":1}"#,
        ))
        .unwrap();
        assert_eq!(
            (full.action, full.notice_seconds, full.delay_seconds),
            (Some(SpotAction::Hibernate), Some(30), Some(1))
        );
        let unknown = control_body::<SpotRequest>(&Bytes::from_static(br#"{"acton":"stop"}"#)).unwrap_err();
        assert!(unknown.contains("acton"), "{unknown}");
        let spec: ScheduledSpec = control_body(&Bytes::from_static(
            br#"{"state":"canceled","not_before":"2026-01-01T00:00:00Z"}"#,
        ))
        .unwrap();
        assert_eq!(spec.state, Some(ScheduledState::Canceled));
        assert_eq!(spec.not_before, Some(datetime!(2026-01-01 00:00:00 UTC)));
    }
}
