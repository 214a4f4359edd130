//! Batching of provisioning triggers, as Karpenter's batcher: a window opens at the first
//! trigger and closes once no new trigger arrived for the idle duration, or at the maximum
//! duration, whichever comes first.
//!
//! Triggers carry pod UIDs only to de-duplicate them: a provisioning loop always reads every
//! provisionable pod from the cluster, never only the pods of the batch.

use std::collections::HashSet;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

/// Errors of the batcher.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A window that is zero or where idle exceeds max.
    #[error("invalid batch window: {field} = {value:?} ({reason})")]
    Window {
        /// The field (`batch_idle_duration` or `batch_max_duration`).
        field: &'static str,
        /// The value.
        value: Duration,
        /// Why it is invalid.
        reason: &'static str,
    },
}

/// The batch window: Karpenter's `BATCH_IDLE_DURATION` (1 s) and `BATCH_MAX_DURATION` (10 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchWindow {
    /// The window closes after this long without a new trigger.
    pub idle: Duration,
    /// The window closes after this long in any case.
    pub max: Duration,
}

impl Default for BatchWindow {
    fn default() -> Self {
        BatchWindow {
            idle: Duration::from_secs(1),
            max: Duration::from_secs(10),
        }
    }
}

impl BatchWindow {
    /// Checks that both durations are positive and idle does not exceed max.
    pub fn validate(&self) -> Result<(), Error> {
        if self.idle.is_zero() {
            return Err(Error::Window {
                field: "batch_idle_duration",
                value: self.idle,
                reason: "must be positive",
            });
        }
        if self.max < self.idle {
            return Err(Error::Window {
                field: "batch_max_duration",
                value: self.max,
                reason: "must not be shorter than batch_idle_duration",
            });
        }
        Ok(())
    }
}

/// What wakes the provisioner: a pod became provisionable, or something else changed (a
/// NodePool, a node that was deleted, a timer).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// A provisionable pod, by UID.
    Pod(String),
    /// Any other reason to run a loop.
    Other(&'static str),
}

/// The sending half, cheap to clone: controllers and watchers call [`Triggers::trigger`].
#[derive(Debug, Clone)]
pub struct Triggers(mpsc::UnboundedSender<Trigger>);

impl Triggers {
    /// Asks for a provisioning loop. Never blocks; a closed batcher ignores the trigger.
    pub fn trigger(&self, trigger: Trigger) {
        let _ = self.0.send(trigger);
    }
}

/// One closed window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// Distinct pod UIDs that triggered during the window.
    pub pods: usize,
    /// Other triggers during the window (not de-duplicated).
    pub other: usize,
    /// How long the window was open.
    pub duration: Duration,
}

/// The receiving half: [`Batcher::next`] waits for the next window to close.
#[derive(Debug)]
pub struct Batcher {
    rx: mpsc::UnboundedReceiver<Trigger>,
    window: BatchWindow,
}

impl Batcher {
    /// A batcher with the given window and the handle that feeds it.
    pub fn new(window: BatchWindow) -> Result<(Batcher, Triggers), Error> {
        window.validate()?;
        let (tx, rx) = mpsc::unbounded_channel();
        Ok((Batcher { rx, window }, Triggers(tx)))
    }

    /// Waits for a first trigger, then for the window to close. `None` once every
    /// [`Triggers`] handle is dropped and nothing is pending.
    pub async fn next(&mut self) -> Option<Batch> {
        let first = self.rx.recv().await?;
        let start = Instant::now();
        let mut seen = HashSet::new();
        let mut batch = Batch::default();
        let mut count = |t: Trigger, batch: &mut Batch| match t {
            Trigger::Pod(uid) => {
                if seen.insert(uid) {
                    batch.pods += 1;
                }
            }
            Trigger::Other(_) => batch.other += 1,
        };
        count(first, &mut batch);
        let max_deadline = start + self.window.max;
        let mut idle_deadline = start + self.window.idle;
        loop {
            let deadline = idle_deadline.min(max_deadline);
            tokio::select! {
                t = self.rx.recv() => match t {
                    Some(t) => {
                        count(t, &mut batch);
                        idle_deadline = Instant::now() + self.window.idle;
                    }
                    None => break,
                },
                () = sleep_until(deadline) => break,
            }
        }
        batch.duration = Instant::now() - start;
        Some(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_window_closes_after_one_second_of_silence() {
        let (mut b, t) = Batcher::new(BatchWindow::default()).unwrap();
        t.trigger(Trigger::Pod("a".into()));
        t.trigger(Trigger::Pod("a".into()));
        t.trigger(Trigger::Pod("b".into()));
        let feeder = tokio::spawn({
            let t = t.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(700)).await;
                t.trigger(Trigger::Other("nodepool"));
            }
        });
        let batch = b.next().await.unwrap();
        feeder.await.unwrap();
        assert_eq!(batch.pods, 2, "UIDs are de-duplicated");
        assert_eq!(batch.other, 1);
        assert_eq!(batch.duration, Duration::from_millis(1700));
    }

    #[tokio::test(start_paused = true)]
    async fn max_window_caps_a_steady_stream() {
        let (mut b, t) = Batcher::new(BatchWindow::default()).unwrap();
        let feeder = tokio::spawn(async move {
            for i in 0..100 {
                t.trigger(Trigger::Pod(format!("p{i}")));
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
        let batch = b.next().await.unwrap();
        assert_eq!(batch.duration, Duration::from_secs(10));
        assert!(
            (33..=35).contains(&batch.pods),
            "triggers every 0.3 s for 10 s: {batch:?}"
        );
        feeder.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn closed_channel_ends_the_batcher() {
        let (mut b, t) = Batcher::new(BatchWindow::default()).unwrap();
        t.trigger(Trigger::Other("x"));
        drop(t);
        assert_eq!(b.next().await.unwrap().other, 1);
        assert!(b.next().await.is_none());
    }

    #[test]
    fn invalid_windows_name_the_field() {
        let err = Batcher::new(BatchWindow {
            idle: Duration::ZERO,
            max: Duration::from_secs(1),
        })
        .unwrap_err();
        assert!(err.to_string().contains("batch_idle_duration"), "{err}");
        let err = BatchWindow {
            idle: Duration::from_secs(5),
            max: Duration::from_secs(1),
        }
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("batch_max_duration"), "{err}");
    }
}
