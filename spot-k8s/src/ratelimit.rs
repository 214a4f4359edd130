//! A client-side token bucket shared by every caller of one API client (client-go's
//! `QPS`/`Burst`), on `tokio::time` so tests can pause time.
//!
//! Callers take a token with a [`Priority`]. [`Priority::High`] callers are served before any
//! waiting [`Priority::Normal`] caller: node actions (cordon, taint, the handler's progress
//! annotations) do not queue behind thousands of evictions, so a wave of spot notices gets every
//! node cordoned first and drained afterwards. Within a class callers are served in arrival order.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, Notify};
use tokio::time::Instant;

/// Errors of rate limiter construction.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// The rate is not a positive, finite number.
    #[error("invalid rate {0}: must be positive and finite")]
    Rate(f64),
    /// The burst is zero.
    #[error("burst must be at least 1")]
    Burst,
}

/// Which class a caller waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Priority {
    /// Served before every waiting normal caller (node reads and writes).
    High,
    /// Everything else (evictions, pod lists and watches, events about drains).
    #[default]
    Normal,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

#[derive(Debug)]
struct Shared {
    bucket: Mutex<Bucket>,
    /// Normal callers pass one at a time, so a high caller waits behind at most one of them.
    normal_gate: Mutex<()>,
    /// High callers waiting for (or taking) a token.
    high_waiting: AtomicUsize,
    /// Signalled when `high_waiting` drops to zero.
    high_done: Notify,
    /// Tokens handed out, per class.
    granted: [AtomicU64; 2],
}

/// A token bucket: `qps` tokens per second, at most `burst` stored. Clones share the bucket.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    qps: f64,
    burst: f64,
    shared: Arc<Shared>,
}

/// Counts a high-priority caller while it waits, also when its future is dropped.
struct HighWaiting<'a>(&'a Shared);

impl<'a> HighWaiting<'a> {
    fn new(shared: &'a Shared) -> Self {
        shared.high_waiting.fetch_add(1, Ordering::SeqCst);
        HighWaiting(shared)
    }
}

impl Drop for HighWaiting<'_> {
    fn drop(&mut self) {
        if self.0.high_waiting.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.high_done.notify_waiters();
        }
    }
}

impl RateLimiter {
    /// A limiter allowing `qps` requests per second with bursts of `burst`.
    pub fn new(qps: f64, burst: u32) -> Result<Self, Error> {
        if !(qps.is_finite() && qps > 0.0) {
            return Err(Error::Rate(qps));
        }
        if burst == 0 {
            return Err(Error::Burst);
        }
        Ok(Self::build(qps, f64::from(burst)))
    }

    /// A limiter that never waits.
    pub fn unlimited() -> Self {
        Self::build(f64::INFINITY, f64::INFINITY)
    }

    fn build(qps: f64, burst: f64) -> Self {
        RateLimiter {
            qps,
            burst,
            shared: Arc::new(Shared {
                bucket: Mutex::new(Bucket {
                    tokens: burst,
                    last: Instant::now(),
                }),
                normal_gate: Mutex::new(()),
                high_waiting: AtomicUsize::new(0),
                high_done: Notify::new(),
                granted: [AtomicU64::new(0), AtomicU64::new(0)],
            }),
        }
    }

    /// Waits for a token with [`Priority::Normal`].
    pub async fn acquire(&self) {
        self.acquire_with(Priority::Normal).await;
    }

    /// Waits for a token. High-priority callers go before every waiting normal one (a normal
    /// caller already taking its token finishes first); within a class, arrival order.
    pub async fn acquire_with(&self, priority: Priority) {
        let shared = &*self.shared;
        if self.qps.is_infinite() {
            shared.granted[priority as usize].fetch_add(1, Ordering::Relaxed);
            return;
        }
        match priority {
            Priority::High => {
                let _waiting = HighWaiting::new(shared);
                self.take().await;
            }
            Priority::Normal => {
                let _gate = shared.normal_gate.lock().await;
                loop {
                    let done = shared.high_done.notified();
                    tokio::pin!(done);
                    // Registered before the check, so a wake-up between the two is not lost.
                    done.as_mut().enable();
                    if shared.high_waiting.load(Ordering::SeqCst) == 0 {
                        break;
                    }
                    done.await;
                }
                self.take().await;
            }
        }
        shared.granted[priority as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// How many tokens callers of `priority` took so far (each is one API request).
    pub fn granted(&self, priority: Priority) -> u64 {
        self.shared.granted[priority as usize].load(Ordering::Relaxed)
    }

    async fn take(&self) {
        let mut bucket = self.shared.bucket.lock().await;
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.qps).min(self.burst);
        bucket.last = now;
        if bucket.tokens < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - bucket.tokens) / self.qps);
            // Holding the lock while sleeping keeps later callers queued behind this one (the
            // lock is fair).
            tokio::time::sleep(wait).await;
            bucket.tokens = 1.0;
            bucket.last = Instant::now();
        }
        bucket.tokens -= 1.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn burst_then_steady_rate() {
        let limiter = RateLimiter::new(10.0, 5).unwrap();
        let start = Instant::now();
        for _ in 0..5 {
            limiter.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO, "the burst is free");
        for _ in 0..10 {
            limiter.acquire().await;
        }
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(999) && took <= Duration::from_millis(1001),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn clones_share_the_bucket() {
        let a = RateLimiter::new(2.0, 1).unwrap();
        let b = a.clone();
        let start = Instant::now();
        a.acquire().await;
        b.acquire_with(Priority::High).await;
        a.acquire().await;
        assert!(
            start.elapsed() >= Duration::from_millis(999),
            "{:?}",
            start.elapsed()
        );
        let unlimited = RateLimiter::unlimited();
        unlimited.acquire().await;
        unlimited.acquire_with(Priority::High).await;
        assert_eq!(a.granted(Priority::Normal), 2);
        assert_eq!(b.granted(Priority::High), 1);
        assert_eq!(unlimited.granted(Priority::High), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn high_priority_goes_before_waiting_normal_callers() {
        let limiter = RateLimiter::new(10.0, 1).unwrap();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let spawn = |name: &'static str, priority: Priority| {
            let (limiter, order) = (limiter.clone(), order.clone());
            tokio::spawn(async move {
                limiter.acquire_with(priority).await;
                order.lock().unwrap().push(name);
            })
        };
        let mut tasks = Vec::new();
        for name in ["n1", "n2", "n3", "n4", "n5"] {
            tasks.push(spawn(name, Priority::Normal));
            tokio::task::yield_now().await;
        }
        // The normal callers are queued (one takes the burst token, the next sleeps for its
        // token); now three high callers arrive.
        tokio::time::sleep(Duration::from_millis(1)).await;
        for name in ["h1", "h2", "h3"] {
            tasks.push(spawn(name, Priority::High));
            tokio::task::yield_now().await;
        }
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap().clone();
        assert_eq!(order.len(), 8);
        // n1 had the burst token and n2 was already sleeping for the next one; the high
        // callers come next, in arrival order, then the other normal callers in theirs.
        assert_eq!(order, ["n1", "n2", "h1", "h2", "h3", "n3", "n4", "n5"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_high_caller_does_not_block_normal_ones() {
        let limiter = RateLimiter::new(1.0, 1).unwrap();
        limiter.acquire().await;
        // A high caller gives up while it waits for its token.
        let waiting =
            tokio::time::timeout(Duration::from_millis(10), limiter.acquire_with(Priority::High)).await;
        assert!(waiting.is_err());
        let start = Instant::now();
        limiter.acquire().await;
        assert!(start.elapsed() <= Duration::from_secs(1), "{:?}", start.elapsed());
    }

    #[test]
    fn rejects_bad_settings() {
        assert_eq!(RateLimiter::new(0.0, 1).unwrap_err(), Error::Rate(0.0));
        assert!(RateLimiter::new(f64::NAN, 1).is_err());
        assert_eq!(RateLimiter::new(1.0, 0).unwrap_err(), Error::Burst);
    }
}
