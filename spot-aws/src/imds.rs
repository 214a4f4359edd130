//! The instance metadata service (IMDS) as an interruption event source.
//!
//! [`ImdsClient`] speaks IMDSv2 (a session token from `PUT /latest/api/token`, reused until
//! shortly before it expires and fetched again after a `401`); it falls back to IMDSv1 only when
//! [`ImdsConfig::allow_imdsv1`] is set and the token request is refused with 403, 404 or 405.
//!
//! [`ImdsSource`] polls, every [`ImdsConfig::poll_interval`] (2 s by default):
//!
//! | Path under `/latest/meta-data/` | Event |
//! |---|---|
//! | `spot/instance-action` | [`EventKind::SpotInterruption`] with the notice's deadline |
//! | `events/recommendations/rebalance` | [`EventKind::RebalanceRecommendation`] |
//! | `events/maintenance/scheduled` | [`EventKind::ScheduledChange`], one per event and state |
//! | `autoscaling/target-lifecycle-state` | `Terminated` → [`EventKind::StateChange`] `{ Terminated }` |
//!
//! A `404` on any of them means "nothing". The Auto Scaling target state `Terminated` becomes a
//! [`EventKind::StateChange`] and not an [`EventKind::AsgLifecycle`]: IMDS gives neither the hook
//! name nor the lifecycle action token, so an IMDS consumer cannot complete the lifecycle action
//! (the queue source, which has them, produces `AsgLifecycle`).
//!
//! Event ids are derived from the kind, the instance and the notice's own identity (the spot
//! action and deadline, the rebalance notice time, the scheduled event's `EventId` plus its state,
//! the target state), so a notice polled again has the same id and is not reported again, while a
//! scheduled event that changes state (`active` → `canceled`) is a new event with a new id. A
//! consumer that undoes work for a canceled event matches it with the active one by instance,
//! code and `not_before`.
//!
//! A request that fails in transport (connect, timeout, reading the body) is tried up to
//! [`ImdsConfig::tries`] times (NTH's `METADATA_TRIES`, 3 by default), waiting
//! [`ImdsConfig::retry_delay`] (2 s), then twice as long each time, plus up to half of it in
//! jitter; HTTP statuses are answers, not transport errors, and are not retried this way.
//!
//! Transport and parse errors are returned from [`EventSource::receive`] as
//! [`source::Error::Transport`], counted in [`SourceStats`], and delay the next poll with a capped
//! exponential backoff; the source never panics on what IMDS answers.

pub mod parse;

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use spot_core::clock::{Clock, TokioClock};
use spot_core::event::{EventId, EventKind, InstanceState, InterruptionEvent, Origin};
use spot_core::source::{self, AckHandle, Delivery, EventSource};
use time::OffsetDateTime;
use tokio::sync::Mutex;
use tokio::time::Instant;

pub use parse::{
    IdentityDocument, InstanceAction, RebalanceNotice, ScheduledEvent, TargetLifecycleState,
    format_imds_time, format_scheduled_time,
};

/// The link-local IMDS endpoint.
pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
/// Where IMDSv2 session tokens come from (`PUT`).
pub const TOKEN_PATH: &str = "/latest/api/token";
/// The request header carrying the session token.
pub const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
/// The header with the requested (and, in the answer, granted) token lifetime in seconds.
pub const TOKEN_TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
/// The longest token lifetime IMDS grants (6 hours).
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(21_600);
/// The spot interruption notice.
pub const SPOT_INSTANCE_ACTION_PATH: &str = "/latest/meta-data/spot/instance-action";
/// The rebalance recommendation.
pub const REBALANCE_PATH: &str = "/latest/meta-data/events/recommendations/rebalance";
/// Scheduled maintenance events.
pub const SCHEDULED_EVENTS_PATH: &str = "/latest/meta-data/events/maintenance/scheduled";
/// The Auto Scaling target lifecycle state.
pub const TARGET_LIFECYCLE_STATE_PATH: &str = "/latest/meta-data/autoscaling/target-lifecycle-state";
/// The instance identity document.
pub const IDENTITY_DOCUMENT_PATH: &str = "/latest/dynamic/instance-identity/document";

/// The name of the source in logs, metrics and errors.
const SOURCE_NAME: &str = "imds";
/// How many event ids the source remembers for deduplication.
const SEEN_CAPACITY: usize = 1024;
/// A token is refreshed this long before it expires (at most; a quarter of short TTLs).
const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(15);

/// Errors of the IMDS client and source.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is unusable (endpoint URL, token TTL).
    #[error("invalid IMDS configuration: {0}")]
    InvalidConfig(String),
    /// The HTTP exchange failed (connect, timeout, reading the body).
    #[error("IMDS request {path} failed: {message}")]
    Http {
        /// The path requested.
        path: String,
        /// What failed.
        message: String,
    },
    /// IMDS answered with a status the client does not expect for this path.
    #[error("IMDS answered {status} for {path}")]
    Status {
        /// The path requested.
        path: String,
        /// The HTTP status code.
        status: u16,
    },
    /// The token request was refused and IMDSv1 fallback is not allowed.
    #[error("IMDSv2 token request refused with {status} and IMDSv1 fallback is not allowed")]
    TokenRefused {
        /// The HTTP status code of the refusal.
        status: u16,
    },
    /// The token answer is not a usable token.
    #[error("IMDSv2 token answer is unusable: {0}")]
    InvalidToken(String),
    /// A document did not parse.
    #[error("IMDS {path}: {source}")]
    Parse {
        /// The path requested.
        path: String,
        /// The parser's error, naming the field and value.
        #[source]
        source: parse::Error,
    },
}

/// Settings of the IMDS client and source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImdsConfig {
    /// Base URL without a path, such as `http://169.254.169.254` (the default).
    pub endpoint: String,
    /// The lifetime to ask for session tokens, 1 s to 6 h (default 6 h).
    pub token_ttl: Duration,
    /// Whether to fall back to IMDSv1 (no token) when the token request is refused with 403,
    /// 404 or 405 (default false).
    pub allow_imdsv1: bool,
    /// Timeout of each HTTP request (default 2 s).
    pub request_timeout: Duration,
    /// How often the source polls (default 2 s).
    pub poll_interval: Duration,
    /// The longest delay between polls after errors (default 60 s).
    pub max_backoff: Duration,
    /// Attempts per request when it fails in transport (NTH's `METADATA_TRIES`, default 3;
    /// 0 counts as 1).
    pub tries: u32,
    /// The wait before the second attempt (default 2 s); it doubles for each next one, plus up
    /// to half of it in jitter.
    pub retry_delay: Duration,
}

impl Default for ImdsConfig {
    fn default() -> Self {
        ImdsConfig {
            endpoint: DEFAULT_ENDPOINT.to_owned(),
            token_ttl: MAX_TOKEN_TTL,
            allow_imdsv1: false,
            request_timeout: Duration::from_secs(2),
            poll_interval: Duration::from_secs(2),
            max_backoff: Duration::from_secs(60),
            tries: 3,
            retry_delay: Duration::from_secs(2),
        }
    }
}

impl ImdsConfig {
    /// The default settings with another endpoint (a simulator, say).
    pub fn with_endpoint(endpoint: impl Into<String>) -> Self {
        ImdsConfig {
            endpoint: endpoint.into(),
            ..ImdsConfig::default()
        }
    }
}

/// The session token, or the decision to go without one.
#[derive(Debug)]
enum TokenState {
    /// No token yet (or it was rejected).
    Empty,
    /// A token to use until `refresh_at`.
    Valid { token: String, refresh_at: Instant },
    /// The token request was refused and IMDSv1 is allowed.
    V1,
}

/// An IMDSv2 client (with optional IMDSv1 fallback).
#[derive(Debug)]
pub struct ImdsClient {
    http: reqwest::Client,
    base: String,
    token_ttl: Duration,
    allow_imdsv1: bool,
    token: Mutex<TokenState>,
    token_requests: AtomicU64,
    tries: u32,
    retry_delay: Duration,
    retries: AtomicU64,
}

/// An answer read in full.
struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl ImdsClient {
    /// A client for `config.endpoint`.
    pub fn new(config: &ImdsConfig) -> Result<Self, Error> {
        let base = config.endpoint.trim_end_matches('/').to_owned();
        let url = reqwest::Url::parse(&base)
            .map_err(|e| Error::InvalidConfig(format!("endpoint {:?}: {e}", config.endpoint)))?;
        if url.scheme() != "http" || url.host_str().is_none() {
            return Err(Error::InvalidConfig(format!(
                "endpoint {:?}: expected http://HOST[:PORT]",
                config.endpoint
            )));
        }
        if config.token_ttl < Duration::from_secs(1) || config.token_ttl > MAX_TOKEN_TTL {
            return Err(Error::InvalidConfig(format!(
                "token TTL {:?} is outside 1 s to {} s",
                config.token_ttl,
                MAX_TOKEN_TTL.as_secs()
            )));
        }
        crate::config::install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .no_proxy()
            .build()
            .map_err(|e| Error::InvalidConfig(format!("HTTP client: {e}")))?;
        Ok(ImdsClient {
            http,
            base,
            token_ttl: Duration::from_secs(config.token_ttl.as_secs()),
            allow_imdsv1: config.allow_imdsv1,
            token: Mutex::new(TokenState::Empty),
            token_requests: AtomicU64::new(0),
            tries: config.tries.max(1),
            retry_delay: config.retry_delay,
            retries: AtomicU64::new(0),
        })
    }

    /// How many requests were tried again after a transport error.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Sends the request `build` makes and reads the answer, trying up to `tries` times on
    /// transport errors.
    async fn send(&self, path: &str, build: impl Fn() -> reqwest::RequestBuilder) -> Result<Answer, Error> {
        let mut delay = self.retry_delay;
        let mut attempt = 1;
        loop {
            let result = async {
                let response = build().send().await?;
                let (status, headers) = (response.status(), response.headers().clone());
                let body = response.text().await?;
                Ok::<_, reqwest::Error>(Answer {
                    status,
                    headers,
                    body,
                })
            }
            .await;
            match result {
                Ok(answer) => return Ok(answer),
                Err(e) if attempt < self.tries => {
                    let wait = delay + delay.mul_f64(jitter() / 2.0);
                    tracing::warn!(path, attempt, tries = self.tries, wait_ms = wait.as_millis() as u64, error = %http_error(path, &e), "IMDS request failed; trying again");
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(wait).await;
                    delay = delay.saturating_mul(2);
                    attempt += 1;
                }
                Err(e) => return Err(http_error(path, &e)),
            }
        }
    }

    /// How many token requests (`PUT /latest/api/token`) the client has made.
    pub fn token_requests(&self) -> u64 {
        self.token_requests.load(Ordering::Relaxed)
    }

    /// Whether the client fell back to IMDSv1.
    pub async fn is_imdsv1(&self) -> bool {
        matches!(*self.token.lock().await, TokenState::V1)
    }

    /// Reads `path` (such as `/latest/meta-data/instance-id`): `Ok(None)` on 404.
    ///
    /// A `401` drops the token and retries once with a fresh one.
    pub async fn get(&self, path: &str) -> Result<Option<String>, Error> {
        let url = format!("{}{}", self.base, path);
        for attempt in 0..2 {
            let token = self.token().await?;
            let answer = self
                .send(path, || {
                    let request = self.http.get(&url);
                    match &token {
                        Some(token) => request.header(TOKEN_HEADER, token),
                        None => request,
                    }
                })
                .await?;
            match answer.status {
                status if status.is_success() => return Ok(Some(answer.body)),
                StatusCode::NOT_FOUND => return Ok(None),
                StatusCode::UNAUTHORIZED if attempt == 0 => {
                    tracing::debug!(path, "IMDS answered 401: fetching a new token");
                    *self.token.lock().await = TokenState::Empty;
                }
                status => {
                    return Err(Error::Status {
                        path: path.to_owned(),
                        status: status.as_u16(),
                    });
                }
            }
        }
        Err(Error::Status {
            path: path.to_owned(),
            status: StatusCode::UNAUTHORIZED.as_u16(),
        })
    }

    /// Reads and parses the instance identity document.
    pub async fn identity(&self) -> Result<IdentityDocument, Error> {
        let body = self
            .get(IDENTITY_DOCUMENT_PATH)
            .await?
            .ok_or_else(|| Error::Status {
                path: IDENTITY_DOCUMENT_PATH.to_owned(),
                status: StatusCode::NOT_FOUND.as_u16(),
            })?;
        parse::parse_identity_document(&body).map_err(|source| Error::Parse {
            path: IDENTITY_DOCUMENT_PATH.into(),
            source,
        })
    }

    /// The spot interruption notice, if any.
    pub async fn instance_action(&self) -> Result<Option<InstanceAction>, Error> {
        self.get_parsed(SPOT_INSTANCE_ACTION_PATH, parse::parse_instance_action)
            .await
    }

    /// The rebalance recommendation, if any.
    pub async fn rebalance(&self) -> Result<Option<RebalanceNotice>, Error> {
        self.get_parsed(REBALANCE_PATH, parse::parse_rebalance).await
    }

    /// The scheduled events (none on 404).
    pub async fn scheduled_events(&self) -> Result<Vec<ScheduledEvent>, Error> {
        Ok(self
            .get_parsed(SCHEDULED_EVENTS_PATH, parse::parse_scheduled_events)
            .await?
            .unwrap_or_default())
    }

    /// The Auto Scaling target lifecycle state, if the instance is in a group.
    pub async fn target_lifecycle_state(&self) -> Result<Option<TargetLifecycleState>, Error> {
        self.get_parsed(TARGET_LIFECYCLE_STATE_PATH, parse::parse_target_lifecycle_state)
            .await
    }

    async fn get_parsed<T>(
        &self,
        path: &str,
        parser: fn(&str) -> Result<T, parse::Error>,
    ) -> Result<Option<T>, Error> {
        match self.get(path).await? {
            None => Ok(None),
            Some(body) => parser(&body).map(Some).map_err(|source| Error::Parse {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// The token to send, `None` in IMDSv1 mode; fetches one when needed.
    async fn token(&self) -> Result<Option<String>, Error> {
        let mut state = self.token.lock().await;
        match &*state {
            TokenState::Valid { token, refresh_at } if Instant::now() < *refresh_at => {
                return Ok(Some(token.clone()));
            }
            TokenState::V1 => return Ok(None),
            _ => {}
        }
        self.token_requests.fetch_add(1, Ordering::Relaxed);
        let requested_at = Instant::now();
        let url = format!("{}{}", self.base, TOKEN_PATH);
        let answer = self
            .send(TOKEN_PATH, || {
                self.http
                    .put(&url)
                    .header(TOKEN_TTL_HEADER, self.token_ttl.as_secs())
            })
            .await?;
        let status = answer.status;
        if matches!(
            status,
            StatusCode::FORBIDDEN | StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
        ) {
            if self.allow_imdsv1 {
                tracing::info!(
                    status = status.as_u16(),
                    "IMDSv2 token refused: falling back to IMDSv1"
                );
                *state = TokenState::V1;
                return Ok(None);
            }
            return Err(Error::TokenRefused {
                status: status.as_u16(),
            });
        }
        if !status.is_success() {
            return Err(Error::Status {
                path: TOKEN_PATH.to_owned(),
                status: status.as_u16(),
            });
        }
        let granted = match answer.headers.get(TOKEN_TTL_HEADER) {
            None => self.token_ttl,
            Some(value) => value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|secs| *secs > 0)
                .map(Duration::from_secs)
                .ok_or_else(|| Error::InvalidToken(format!("{TOKEN_TTL_HEADER} is {value:?}")))?,
        };
        let token = answer.body.trim().to_owned();
        if token.is_empty() || reqwest::header::HeaderValue::from_str(&token).is_err() {
            return Err(Error::InvalidToken(format!(
                "{} characters that do not make a header value",
                token.len()
            )));
        }
        let refresh_at = requested_at + granted - TOKEN_REFRESH_MARGIN.min(granted / 4);
        *state = TokenState::Valid {
            token: token.clone(),
            refresh_at,
        };
        Ok(Some(token))
    }
}

/// A pseudo-random number in `[0, 1)` for retry jitter.
fn jitter() -> f64 {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut z = u64::from(nanos) ^ SEQ.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) as f64 / u64::MAX as f64 * 0.999
}

fn http_error(path: &str, error: &reqwest::Error) -> Error {
    use std::error::Error as _;
    let mut message = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        message.push_str(": ");
        message.push_str(&inner.to_string());
        cause = inner.source();
    }
    Error::Http {
        path: path.to_owned(),
        message,
    }
}

/// The event for a spot interruption notice. Its id follows the action and the deadline.
pub fn spot_interruption_event(
    instance_id: &str,
    notice: &InstanceAction,
    observed_at: OffsetDateTime,
) -> InterruptionEvent {
    let identity = format!(
        "{}:{}",
        parse::spot_action_str(notice.action),
        format_imds_time(notice.time)
    );
    InterruptionEvent::new(
        instance_id,
        EventKind::SpotInterruption {
            action: notice.action,
            deadline: notice.time,
        },
        &identity,
        observed_at,
        Origin::Imds,
    )
}

/// The event for a rebalance recommendation. Its id follows the notice time.
pub fn rebalance_event(
    instance_id: &str,
    notice: &RebalanceNotice,
    observed_at: OffsetDateTime,
) -> InterruptionEvent {
    InterruptionEvent::new(
        instance_id,
        EventKind::RebalanceRecommendation,
        &format_imds_time(notice.notice_time),
        observed_at,
        Origin::Imds,
    )
}

/// The event for a scheduled maintenance event. Its id follows the IMDS `EventId` and the
/// state, so each state change is a distinct event.
pub fn scheduled_change_event(
    instance_id: &str,
    event: &ScheduledEvent,
    observed_at: OffsetDateTime,
) -> InterruptionEvent {
    let identity = format!("{}:{}", event.event_id, parse::scheduled_state_str(event.state));
    InterruptionEvent::new(
        instance_id,
        EventKind::ScheduledChange {
            code: event.code.clone(),
            not_before: event.not_before,
            not_after: event.not_after,
            state: event.state,
            description: event.description.clone(),
        },
        &identity,
        observed_at,
        Origin::Imds,
    )
}

/// The event for an Auto Scaling target lifecycle state: `Terminated` becomes
/// [`EventKind::StateChange`] `{ Terminated }` (see the module documentation); other states are
/// no event.
pub fn target_lifecycle_event(
    instance_id: &str,
    state: &TargetLifecycleState,
    observed_at: OffsetDateTime,
) -> Option<InterruptionEvent> {
    (*state == TargetLifecycleState::Terminated).then(|| {
        InterruptionEvent::new(
            instance_id,
            EventKind::StateChange {
                state: InstanceState::Terminated,
            },
            "autoscaling/target-lifecycle-state:Terminated",
            observed_at,
            Origin::Imds,
        )
    })
}

/// The delay before the next poll after `consecutive_errors` failed polls in a row: the poll
/// interval doubled per error, capped at `max` (and never below the interval).
pub fn backoff_delay(interval: Duration, max: Duration, consecutive_errors: u32) -> Duration {
    let factor = 1u32 << consecutive_errors.min(16);
    interval.saturating_mul(factor).min(max).max(interval)
}

/// Counters of an [`ImdsSource`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SourceStats {
    /// Polls made (successful or not).
    pub polls: u64,
    /// Errors seen (a failed path in a poll counts once).
    pub errors: u64,
    /// Polls that failed in a row, up to the last one.
    pub consecutive_errors: u64,
    /// Events reported.
    pub events: u64,
}

/// Event ids already reported, oldest evicted first.
#[derive(Debug, Default)]
struct Seen {
    ids: HashSet<EventId>,
    order: VecDeque<EventId>,
}

impl Seen {
    /// Records `id`; returns whether it was new.
    fn insert(&mut self, id: &EventId) -> bool {
        if self.ids.contains(id) {
            return false;
        }
        if self.order.len() >= SEEN_CAPACITY
            && let Some(old) = self.order.pop_front()
        {
            self.ids.remove(&old);
        }
        self.ids.insert(id.clone());
        self.order.push_back(id.clone());
        true
    }
}

#[derive(Debug, Default)]
struct PollState {
    seen: Seen,
    next_poll: Option<Instant>,
}

/// The IMDS interruption event source (see the module documentation).
pub struct ImdsSource {
    client: ImdsClient,
    clock: Arc<dyn Clock>,
    poll_interval: Duration,
    max_backoff: Duration,
    identity: std::sync::OnceLock<IdentityDocument>,
    state: Mutex<PollState>,
    outstanding: std::sync::Mutex<HashSet<String>>,
    next_handle: AtomicU64,
    polls: AtomicU64,
    errors: AtomicU64,
    consecutive_errors: AtomicU64,
    events: AtomicU64,
}

impl std::fmt::Debug for ImdsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImdsSource")
            .field("client", &self.client)
            .field("poll_interval", &self.poll_interval)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl ImdsSource {
    /// A source polling `config.endpoint`, stamping events with the system time.
    pub fn new(config: &ImdsConfig) -> Result<Self, Error> {
        Ok(Self::with_client(ImdsClient::new(config)?, config))
    }

    /// A source around an existing client; `config` gives the poll interval and backoff cap.
    pub fn with_client(client: ImdsClient, config: &ImdsConfig) -> Self {
        ImdsSource {
            client,
            clock: Arc::new(TokioClock::new()),
            poll_interval: config.poll_interval.max(Duration::from_millis(1)),
            max_backoff: config.max_backoff,
            identity: std::sync::OnceLock::new(),
            state: Mutex::new(PollState::default()),
            outstanding: std::sync::Mutex::new(HashSet::new()),
            next_handle: AtomicU64::new(0),
            polls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            consecutive_errors: AtomicU64::new(0),
            events: AtomicU64::new(0),
        }
    }

    /// The same source stamping `observed_at` with `clock`.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The client.
    pub fn client(&self) -> &ImdsClient {
        &self.client
    }

    /// The identity document, once a poll has read it (it is read once, by the first poll
    /// that reaches IMDS).
    pub fn identity(&self) -> Option<&IdentityDocument> {
        self.identity.get()
    }

    /// The counters.
    pub fn stats(&self) -> SourceStats {
        SourceStats {
            polls: self.polls.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            consecutive_errors: self.consecutive_errors.load(Ordering::Relaxed),
            events: self.events.load(Ordering::Relaxed),
        }
    }

    /// Polls every path once, now, and returns the events not reported before.
    ///
    /// When some paths fail and others yield new events, the events are returned and the
    /// failures logged and counted; when nothing new was found, the first failure is returned.
    pub async fn poll(&self) -> Result<Vec<InterruptionEvent>, Error> {
        let mut state = self.state.lock().await;
        self.poll_locked(&mut state).await
    }

    async fn poll_locked(&self, state: &mut PollState) -> Result<Vec<InterruptionEvent>, Error> {
        self.polls.fetch_add(1, Ordering::Relaxed);
        let instance_id = match self.identity.get() {
            Some(identity) => identity.instance_id.clone(),
            None => {
                let identity = self
                    .client
                    .identity()
                    .await
                    .inspect_err(|_| self.record_error())?;
                tracing::info!(
                    instance_id = identity.instance_id,
                    region = identity.region,
                    zone = identity.availability_zone,
                    instance_type = identity.instance_type,
                    "read the instance identity document"
                );
                self.identity.get_or_init(|| identity).instance_id.clone()
            }
        };
        let mut found = Vec::new();
        let mut errors = Vec::new();
        let now = self.clock.now();
        match self.client.instance_action().await {
            Ok(notice) => found.extend(notice.map(|n| spot_interruption_event(&instance_id, &n, now))),
            Err(e) => errors.push(e),
        }
        match self.client.rebalance().await {
            Ok(notice) => found.extend(notice.map(|n| rebalance_event(&instance_id, &n, now))),
            Err(e) => errors.push(e),
        }
        match self.client.scheduled_events().await {
            Ok(events) => found.extend(
                events
                    .iter()
                    .map(|e| scheduled_change_event(&instance_id, e, now)),
            ),
            Err(e) => errors.push(e),
        }
        match self.client.target_lifecycle_state().await {
            Ok(target) => found.extend(target.and_then(|t| target_lifecycle_event(&instance_id, &t, now))),
            Err(e) => errors.push(e),
        }
        found.retain(|event| state.seen.insert(&event.id));
        for error in &errors {
            self.record_error();
            tracing::warn!(%error, "IMDS poll failed");
        }
        match errors.into_iter().next() {
            Some(error) if found.is_empty() => Err(error),
            _ => {
                self.events.fetch_add(found.len() as u64, Ordering::Relaxed);
                Ok(found)
            }
        }
    }

    fn record_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl EventSource for ImdsSource {
    fn name(&self) -> &str {
        SOURCE_NAME
    }

    /// Waits for the next poll that yields new events (one delivery per event). A failed poll
    /// returns [`source::Error::Transport`] and pushes the next poll back (capped exponential
    /// backoff).
    async fn receive(&self) -> Result<Vec<Delivery>, source::Error> {
        let mut state = self.state.lock().await;
        loop {
            if let Some(at) = state.next_poll {
                tokio::time::sleep_until(at).await;
            }
            match self.poll_locked(&mut state).await {
                Ok(events) => {
                    self.consecutive_errors.store(0, Ordering::Relaxed);
                    state.next_poll = Some(Instant::now() + self.poll_interval);
                    if events.is_empty() {
                        continue;
                    }
                    let mut outstanding = self.outstanding.lock().unwrap_or_else(|e| e.into_inner());
                    let deliveries = events
                        .into_iter()
                        .map(|event| {
                            let n = self.next_handle.fetch_add(1, Ordering::Relaxed);
                            let ack = AckHandle(format!("imds-{n}"));
                            outstanding.insert(ack.0.clone());
                            Delivery {
                                events: vec![event],
                                ack,
                                age: None,
                            }
                        })
                        .collect();
                    return Ok(deliveries);
                }
                Err(error) => {
                    let failures = self
                        .consecutive_errors
                        .fetch_add(1, Ordering::Relaxed)
                        .saturating_add(1);
                    let failures = u32::try_from(failures).unwrap_or(u32::MAX);
                    let delay = backoff_delay(self.poll_interval, self.max_backoff, failures);
                    state.next_poll = Some(Instant::now() + delay);
                    tracing::debug!(?delay, failures, "IMDS poll failed: backing off");
                    return Err(source::Error::Transport {
                        source_name: SOURCE_NAME.to_owned(),
                        message: error.to_string(),
                    });
                }
            }
        }
    }

    /// Forgets the handles (IMDS has nothing to delete); unknown handles are an error.
    async fn acknowledge(&self, handles: &[AckHandle]) -> Result<(), source::Error> {
        let mut outstanding = self.outstanding.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(unknown) = handles.iter().find(|h| !outstanding.contains(&h.0)) {
            return Err(source::Error::UnknownHandle {
                source_name: SOURCE_NAME.to_owned(),
                handle: unknown.0.clone(),
            });
        }
        for handle in handles {
            outstanding.remove(&handle.0);
        }
        Ok(())
    }

    /// Whether the last poll succeeded (true before the first).
    async fn ready(&self) -> bool {
        self.consecutive_errors.load(Ordering::Relaxed) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spot_core::event::{ScheduledState, SpotAction};
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-11-22 10:00:00 UTC);

    fn scheduled(state: ScheduledState) -> ScheduledEvent {
        ScheduledEvent {
            code: "system-reboot".into(),
            description: "scheduled reboot".into(),
            event_id: "instance-event-0d59937288b749b32".into(),
            not_before: datetime!(2026-11-23 09:00:00 UTC),
            not_after: None,
            state,
        }
    }

    #[test]
    fn ids_are_stable_across_polls_and_follow_the_notice() {
        let notice = InstanceAction {
            action: SpotAction::Terminate,
            time: datetime!(2026-11-22 10:02:00 UTC),
        };
        let a = spot_interruption_event("i-1", &notice, NOW);
        let b = spot_interruption_event("i-1", &notice, datetime!(2026-11-22 10:00:02 UTC));
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, spot_interruption_event("i-2", &notice, NOW).id);
        let later = InstanceAction {
            time: datetime!(2026-11-22 10:03:00 UTC),
            ..notice
        };
        assert_ne!(a.id, spot_interruption_event("i-1", &later, NOW).id);
        assert_eq!(
            a.kind,
            EventKind::SpotInterruption {
                action: SpotAction::Terminate,
                deadline: datetime!(2026-11-22 10:02:00 UTC)
            }
        );

        let active = scheduled_change_event("i-1", &scheduled(ScheduledState::Active), NOW);
        let again = scheduled_change_event("i-1", &scheduled(ScheduledState::Active), NOW);
        let canceled = scheduled_change_event("i-1", &scheduled(ScheduledState::Canceled), NOW);
        assert_eq!(active.id, again.id);
        assert_ne!(active.id, canceled.id);
        assert!(active.kind.is_terminal());
        assert!(!canceled.kind.is_terminal());

        let r1 = rebalance_event("i-1", &RebalanceNotice { notice_time: NOW }, NOW);
        let r2 = rebalance_event(
            "i-1",
            &RebalanceNotice { notice_time: NOW },
            datetime!(2026-11-22 11:00:00 UTC),
        );
        assert_eq!(r1.id, r2.id);
        assert_eq!(r1.origin, Origin::Imds);
    }

    #[test]
    fn only_terminated_target_state_is_an_event() {
        assert_eq!(
            target_lifecycle_event("i-1", &TargetLifecycleState::InService, NOW),
            None
        );
        assert_eq!(
            target_lifecycle_event("i-1", &TargetLifecycleState::Other("Standby".into()), NOW),
            None
        );
        let event = target_lifecycle_event("i-1", &TargetLifecycleState::Terminated, NOW).unwrap();
        assert_eq!(
            event.kind,
            EventKind::StateChange {
                state: InstanceState::Terminated
            }
        );
        let later = target_lifecycle_event(
            "i-1",
            &TargetLifecycleState::Terminated,
            datetime!(2026-11-22 12:00 UTC),
        );
        assert_eq!(Some(event.id), later.map(|e| e.id));
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let s = Duration::from_secs;
        assert_eq!(backoff_delay(s(2), s(60), 0), s(2));
        assert_eq!(backoff_delay(s(2), s(60), 1), s(4));
        assert_eq!(backoff_delay(s(2), s(60), 3), s(16));
        assert_eq!(backoff_delay(s(2), s(60), 5), s(60));
        assert_eq!(backoff_delay(s(2), s(60), u32::MAX), s(60));
        assert_eq!(backoff_delay(s(2), s(1), 4), s(2));
    }

    #[test]
    fn seen_evicts_the_oldest() {
        let mut seen = Seen::default();
        let first = EventId::from_raw("first");
        assert!(seen.insert(&first));
        assert!(!seen.insert(&first));
        for n in 0..SEEN_CAPACITY {
            assert!(seen.insert(&EventId::from_raw(format!("id-{n}"))));
        }
        assert_eq!(seen.ids.len(), SEEN_CAPACITY);
        assert!(seen.insert(&first), "the oldest id was evicted");
    }

    #[test]
    fn config_is_checked() {
        let err = ImdsClient::new(&ImdsConfig::with_endpoint("not a url")).unwrap_err();
        assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
        let err = ImdsClient::new(&ImdsConfig::with_endpoint("https://169.254.169.254")).unwrap_err();
        assert!(err.to_string().contains("http://"), "{err}");
        let zero = ImdsConfig {
            token_ttl: Duration::ZERO,
            ..ImdsConfig::default()
        };
        assert!(matches!(ImdsClient::new(&zero), Err(Error::InvalidConfig(_))));
        let long = ImdsConfig {
            token_ttl: Duration::from_secs(21_601),
            ..ImdsConfig::default()
        };
        assert!(matches!(ImdsClient::new(&long), Err(Error::InvalidConfig(_))));
        assert!(ImdsClient::new(&ImdsConfig::with_endpoint("http://127.0.0.1:1338/")).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn unreachable_imds_backs_off_and_never_panics() {
        // Nothing listens on port 9 of loopback (discard service): every request fails.
        let config = ImdsConfig {
            poll_interval: Duration::from_secs(2),
            max_backoff: Duration::from_secs(8),
            request_timeout: Duration::from_millis(100),
            // One try per request: the gaps below are the source's own backoff.
            tries: 1,
            ..ImdsConfig::with_endpoint("http://127.0.0.1:9")
        };
        let source = ImdsSource::new(&config).unwrap();
        let err = source.receive().await.unwrap_err();
        assert!(matches!(err, source::Error::Transport { .. }), "{err}");
        assert!(!source.ready().await);
        let mut gaps = Vec::new();
        for _ in 0..4 {
            let start = Instant::now();
            assert!(source.receive().await.is_err());
            gaps.push(start.elapsed());
        }
        // 4 s, 8 s, then capped at 8 s (plus at most the request timeout each).
        let expected = [4, 8, 8, 8];
        for (gap, secs) in gaps.iter().zip(expected) {
            let secs = Duration::from_secs(secs);
            assert!(
                *gap >= secs && *gap <= secs + Duration::from_millis(300),
                "{gaps:?}"
            );
        }
        let stats = source.stats();
        assert_eq!(stats.polls, 5);
        assert_eq!(stats.consecutive_errors, 5);
        assert_eq!(stats.errors, 5);
    }
}
