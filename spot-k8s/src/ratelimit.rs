//! A client-side token bucket shared by every caller of one API client (client-go's
//! `QPS`/`Burst`), on `tokio::time` so tests can pause time.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
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

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// A token bucket: `qps` tokens per second, at most `burst` stored. Clones share the bucket.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    qps: f64,
    burst: f64,
    bucket: Arc<Mutex<Bucket>>,
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
        Ok(RateLimiter {
            qps,
            burst: f64::from(burst),
            bucket: Arc::new(Mutex::new(Bucket {
                tokens: f64::from(burst),
                last: Instant::now(),
            })),
        })
    }

    /// A limiter that never waits.
    pub fn unlimited() -> Self {
        RateLimiter {
            qps: f64::INFINITY,
            burst: f64::INFINITY,
            bucket: Arc::new(Mutex::new(Bucket {
                tokens: f64::INFINITY,
                last: Instant::now(),
            })),
        }
    }

    /// Waits for a token. Callers are served in arrival order (the bucket lock is fair).
    pub async fn acquire(&self) {
        if self.qps.is_infinite() {
            return;
        }
        let mut bucket = self.bucket.lock().await;
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.qps).min(self.burst);
        bucket.last = now;
        if bucket.tokens < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - bucket.tokens) / self.qps);
            // Holding the lock while sleeping keeps later callers queued behind this one.
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
        b.acquire().await;
        a.acquire().await;
        assert!(
            start.elapsed() >= Duration::from_millis(999),
            "{:?}",
            start.elapsed()
        );
        RateLimiter::unlimited().acquire().await;
    }

    #[test]
    fn rejects_bad_settings() {
        assert_eq!(RateLimiter::new(0.0, 1).unwrap_err(), Error::Rate(0.0));
        assert!(RateLimiter::new(f64::NAN, 1).is_err());
        assert_eq!(RateLimiter::new(1.0, 0).unwrap_err(), Error::Burst);
    }
}
