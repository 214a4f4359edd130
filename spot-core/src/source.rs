//! The event-source seam: where interruption events come from (IMDS, SQS, in-memory).
//!
//! A source hands out [`Delivery`]s; the consumer acknowledges each one only after its work
//! succeeded, so nothing is lost when the process dies half-way.

use std::collections::VecDeque;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Mutex, Notify};

use crate::event::InterruptionEvent;

/// Errors of event sources.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The transport failed (network, HTTP status, SDK error); the source may recover.
    #[error("{source_name}: transport error: {message}")]
    Transport {
        /// The source's name.
        source_name: String,
        /// What failed.
        message: String,
    },
    /// The acknowledgement handle is not known to this source.
    #[error("{source_name}: unknown acknowledgement handle {handle:?}")]
    UnknownHandle {
        /// The source's name.
        source_name: String,
        /// The handle.
        handle: String,
    },
    /// The source was closed.
    #[error("{0}: source closed")]
    Closed(String),
}

/// An opaque handle that acknowledges (or extends) one delivery.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AckHandle(pub String);

/// One unit of work from a source: the events one message (or one poll) carried, and the
/// handle to acknowledge once all of them are handled.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The events (an AWS Health message can name several instances).
    pub events: Vec<InterruptionEvent>,
    /// Acknowledges the delivery.
    pub ack: AckHandle,
    /// How long the delivery had waited in the source before we received it, when known
    /// (queue message age).
    pub age: Option<Duration>,
}

/// A source of interruption events.
#[async_trait]
pub trait EventSource: Send + Sync {
    /// A short name for logs and metrics (`imds`, `sqs`).
    fn name(&self) -> &str;

    /// Waits for the next deliveries. Returns an empty list when the wait ended with nothing
    /// (a long poll timed out); transport errors are returned, and the caller backs off.
    async fn receive(&self) -> Result<Vec<Delivery>, Error>;

    /// Acknowledges deliveries whose work is done: a queue deletes the messages.
    async fn acknowledge(&self, handles: &[AckHandle]) -> Result<(), Error>;

    /// Keeps a delivery hidden from other consumers for `extend` more, while its work goes on.
    /// Sources without visibility (IMDS) do nothing.
    async fn keep_alive(&self, _handle: &AckHandle, _extend: Duration) -> Result<(), Error> {
        Ok(())
    }

    /// Whether the source can currently reach its backend (for readiness probes).
    async fn ready(&self) -> bool {
        true
    }
}

/// An in-memory event source, for tests, simulations and embedders that produce events
/// themselves. Unacknowledged deliveries can be inspected.
#[derive(Debug, Default)]
pub struct MemorySource {
    queue: Mutex<VecDeque<Delivery>>,
    in_flight: Mutex<Vec<Delivery>>,
    notify: Notify,
    next: std::sync::atomic::AtomicU64,
}

impl MemorySource {
    /// An empty source.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues one delivery carrying `events`; returns its handle.
    pub async fn push(&self, events: Vec<InterruptionEvent>) -> AckHandle {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ack = AckHandle(format!("mem-{n}"));
        self.queue.lock().await.push_back(Delivery {
            events,
            ack: ack.clone(),
            age: None,
        });
        self.notify.notify_one();
        ack
    }

    /// Deliveries received but not yet acknowledged.
    pub async fn unacknowledged(&self) -> Vec<Delivery> {
        self.in_flight.lock().await.clone()
    }

    /// Deliveries not yet received.
    pub async fn pending(&self) -> usize {
        self.queue.lock().await.len()
    }
}

#[async_trait]
impl EventSource for MemorySource {
    fn name(&self) -> &str {
        "memory"
    }

    async fn receive(&self) -> Result<Vec<Delivery>, Error> {
        loop {
            let notified = self.notify.notified();
            {
                let mut queue = self.queue.lock().await;
                if !queue.is_empty() {
                    let batch: Vec<Delivery> = queue.drain(..).collect();
                    self.in_flight.lock().await.extend(batch.iter().cloned());
                    return Ok(batch);
                }
            }
            notified.await;
        }
    }

    async fn acknowledge(&self, handles: &[AckHandle]) -> Result<(), Error> {
        let mut in_flight = self.in_flight.lock().await;
        for handle in handles {
            let Some(pos) = in_flight.iter().position(|d| &d.ack == handle) else {
                return Err(Error::UnknownHandle {
                    source_name: "memory".into(),
                    handle: handle.0.clone(),
                });
            };
            in_flight.remove(pos);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventKind, InterruptionEvent, Origin};
    use time::macros::datetime;

    fn rebalance(id: &str) -> InterruptionEvent {
        InterruptionEvent::new(
            id,
            EventKind::RebalanceRecommendation,
            "t",
            datetime!(2026-01-01 00:00:00 UTC),
            Origin::Other { name: "test".into() },
        )
    }

    #[tokio::test]
    async fn memory_source_keeps_unacknowledged_work() {
        let source = MemorySource::new();
        let h1 = source.push(vec![rebalance("i-1")]).await;
        let _h2 = source.push(vec![rebalance("i-2")]).await;
        let got = source.receive().await.unwrap();
        assert_eq!(got.len(), 2);
        source.acknowledge(std::slice::from_ref(&h1)).await.unwrap();
        let left = source.unacknowledged().await;
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].events[0].instance_id, "i-2");
        let err = source.acknowledge(&[h1]).await.unwrap_err();
        assert!(err.to_string().contains("mem-0"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn receive_waits_for_a_push() {
        let source = std::sync::Arc::new(MemorySource::new());
        let s2 = source.clone();
        let waiter = tokio::spawn(async move { s2.receive().await.unwrap() });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished());
        source.push(vec![rebalance("i-3")]).await;
        assert_eq!(waiter.await.unwrap()[0].events[0].instance_id, "i-3");
    }
}
