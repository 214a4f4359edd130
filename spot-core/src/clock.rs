//! Wall-clock time that follows `tokio::time`, so that tests which pause or advance tokio's
//! clock also move every timestamp the code takes.

use std::time::Duration;

use time::OffsetDateTime;
use tokio::time::Instant;

/// A source of wall-clock time.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> OffsetDateTime;
}

/// Wall-clock time anchored once to the system clock and advanced by `tokio::time::Instant`,
/// optionally faster than real time (the demo's accelerated clock).
///
/// Under `tokio::time::pause()` it stands still until the test advances tokio's clock.
#[derive(Debug, Clone)]
pub struct TokioClock {
    wall: OffsetDateTime,
    instant: Instant,
    speed: f64,
}

impl TokioClock {
    /// A clock that starts at the system's current time and runs at real speed.
    pub fn new() -> Self {
        Self::starting_at(OffsetDateTime::now_utc())
    }

    /// A clock that reads `start` now and runs at real speed.
    pub fn starting_at(start: OffsetDateTime) -> Self {
        TokioClock {
            wall: start,
            instant: Instant::now(),
            speed: 1.0,
        }
    }

    /// The same clock running `speed` times faster than tokio's (speed must be positive;
    /// other values are treated as 1).
    pub fn with_speed(mut self, speed: f64) -> Self {
        self.speed = if speed.is_finite() && speed > 0.0 {
            speed
        } else {
            1.0
        };
        self
    }

    /// How much real (tokio) time corresponds to `simulated` time on this clock.
    pub fn real_duration(&self, simulated: Duration) -> Duration {
        simulated.div_f64(self.speed)
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> OffsetDateTime {
        let elapsed = self.instant.elapsed().mul_f64(self.speed);
        self.wall + elapsed
    }
}

/// A clock that always reads the same time: for pure tests.
#[derive(Debug, Clone, Copy)]
pub struct FixedClock(pub OffsetDateTime);

impl Clock for FixedClock {
    fn now(&self) -> OffsetDateTime {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[tokio::test(start_paused = true)]
    async fn follows_paused_tokio_time() {
        let clock = TokioClock::starting_at(datetime!(2026-01-01 00:00:00 UTC));
        assert_eq!(clock.now(), datetime!(2026-01-01 00:00:00 UTC));
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(clock.now(), datetime!(2026-01-01 00:01:30 UTC));
    }

    #[tokio::test(start_paused = true)]
    async fn accelerated() {
        let clock = TokioClock::starting_at(datetime!(2026-01-01 00:00:00 UTC)).with_speed(60.0);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(clock.now(), datetime!(2026-01-01 00:02:00 UTC));
        assert_eq!(
            clock.real_duration(Duration::from_secs(120)),
            Duration::from_secs(2)
        );
        assert_eq!(TokioClock::new().with_speed(-3.0).speed, 1.0);
    }
}
