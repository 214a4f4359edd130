//! Leader election on a `coordination.k8s.io/v1` Lease, with client-go's semantics: the
//! holder renews every `retry_period`; another replica takes over once `lease_duration` has
//! passed without a renewal; a holder that cannot renew within `renew_deadline` steps down.
//! Writes carry the resourceVersion, so two replicas can never both win.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;
use spot_core::clock::Clock;
use spot_core::leader::{self, LeaderGate};
use time::OffsetDateTime;
use tokio::sync::watch;
use tracing::{info, warn};

/// Errors of the Lease lock.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server failed.
    #[error("lease {name}: {source}")]
    Api {
        /// The Lease's name.
        name: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// Settings that cannot work.
    #[error("invalid lease settings: {0}")]
    Settings(String),
}

/// Timing of the election (client-go defaults: 15 s, 10 s, 2 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    /// How long a Lease stays valid after its last renewal.
    pub lease_duration: Duration,
    /// How long the holder keeps trying to renew before it steps down.
    pub renew_deadline: Duration,
    /// How often to try to acquire or renew.
    pub retry_period: Duration,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        LeaseTiming {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// One replica's view of a Lease lock.
#[derive(Clone)]
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: LeaseTiming,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for LeaseLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseLock")
            .field("name", &self.name)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

fn micro(t: OffsetDateTime) -> Option<MicroTime> {
    k8s_openapi::jiff::Timestamp::from_nanosecond(t.unix_timestamp_nanos())
        .ok()
        .map(MicroTime)
}

fn from_micro(t: &MicroTime) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(t.0.as_nanosecond()).ok()
}

impl LeaseLock {
    /// A lock on Lease `name` in `namespace`, held under `identity` (the pod name).
    pub fn new(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timing: LeaseTiming,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, Error> {
        if timing.renew_deadline >= timing.lease_duration || timing.retry_period >= timing.renew_deadline {
            return Err(Error::Settings(format!(
                "need retry_period < renew_deadline < lease_duration, got {:?} / {:?} / {:?}",
                timing.retry_period, timing.renew_deadline, timing.lease_duration
            )));
        }
        Ok(LeaseLock {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            timing,
            clock,
        })
    }

    fn api_err(&self, source: kube::Error) -> Error {
        Error::Api {
            name: self.name.clone(),
            source,
        }
    }

    /// One attempt to acquire or renew. Ok(true) when this replica holds the Lease afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, Error> {
        let now = self.clock.now();
        let duration_secs = i32::try_from(self.timing.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let existing = self.api.get_opt(&self.name).await.map_err(|e| self.api_err(e))?;
        let Some(mut lease) = existing else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(duration_secs),
                    acquire_time: micro(now),
                    renew_time: micro(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(false),
                Err(e) => Err(self.api_err(e)),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let ours = holder == self.identity;
        let renewed = spec.renew_time.as_ref().and_then(from_micro);
        let valid_for =
            Duration::from_secs(u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0));
        let expired = match renewed {
            Some(at) => now >= at + valid_for,
            None => true,
        };
        if !ours && !holder.is_empty() && !expired {
            return Ok(false);
        }
        if !ours {
            spec.acquire_time = micro(now);
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(duration_secs);
        spec.renew_time = micro(now);
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.is_conflict() => Ok(false),
            Err(e) => Err(self.api_err(e)),
        }
    }

    /// Gives the Lease up if this replica holds it.
    pub async fn release(&self) -> Result<(), Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await.map_err(|e| self.api_err(e))? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(&self.identity) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = micro(self.clock.now());
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.is_conflict() => Ok(()),
            Err(e) => Err(self.api_err(e)),
        }
    }
}

/// A [`LeaderGate`] that keeps a [`LeaseLock`] in a background task.
#[derive(Debug)]
pub struct LeaseElector {
    lock: LeaseLock,
    tx: Arc<watch::Sender<bool>>,
    state: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl LeaseElector {
    /// Starts competing for the Lease.
    pub fn start(lock: LeaseLock) -> Self {
        let (tx, rx) = watch::channel(false);
        let tx = Arc::new(tx);
        let (l, t) = (lock.clone(), tx.clone());
        let task = tokio::spawn(async move { campaign(l, t).await });
        LeaseElector {
            lock,
            tx,
            state: rx,
            task,
        }
    }
}

async fn campaign(lock: LeaseLock, tx: Arc<watch::Sender<bool>>) {
    let mut last_renewal = tokio::time::Instant::now();
    loop {
        let leading = *tx.borrow();
        match lock.try_acquire_or_renew().await {
            Ok(true) => {
                last_renewal = tokio::time::Instant::now();
                if !leading {
                    info!(lease = %lock.name, identity = %lock.identity, "became leader");
                    tx.send_replace(true);
                }
            }
            Ok(false) if leading => {
                warn!(lease = %lock.name, "leadership taken by another replica");
                tx.send_replace(false);
            }
            Ok(false) => {}
            Err(e) => {
                warn!(lease = %lock.name, error = %e, "lease renewal failed");
                if leading && last_renewal.elapsed() >= lock.timing.renew_deadline {
                    warn!(lease = %lock.name, "renew deadline passed: stepping down");
                    tx.send_replace(false);
                }
            }
        }
        tokio::time::sleep(lock.timing.retry_period).await;
    }
}

#[async_trait]
impl LeaderGate for LeaseElector {
    async fn acquire(&self) -> Result<(), leader::Error> {
        let mut rx = self.state.clone();
        rx.wait_for(|leading| *leading)
            .await
            .map_err(|e| leader::Error::Backend(e.to_string()))?;
        Ok(())
    }

    fn is_leader(&self) -> bool {
        *self.state.borrow()
    }

    async fn lost(&self) {
        let mut rx = self.state.clone();
        if rx.wait_for(|leading| *leading).await.is_ok() {
            let _ = rx.wait_for(|leading| !*leading).await;
        }
    }

    async fn release(&self) {
        self.task.abort();
        self.tx.send_replace(false);
        if let Err(e) = self.lock.release().await {
            warn!(error = %e, "releasing the lease failed");
        }
    }
}

impl Drop for LeaseElector {
    fn drop(&mut self) {
        self.task.abort();
    }
}
