//! The SQS interruption event source: EventBridge rules, Auto Scaling lifecycle hooks and SNS
//! topics deliver to one queue; [`SqsSource`] long-polls it and turns messages into
//! [`Delivery`]s of typed events (parsed by [`messages`]).
//!
//! Acknowledgement is explicit: a message that carries events is deleted only when the
//! consumer acknowledges its delivery, so a crash half-way leaves it on the queue and it is
//! received again once its visibility timeout expires. Messages that need no action (Auto
//! Scaling test notifications, non-terminal state changes, other Health events) are deleted
//! at once; messages that cannot be parsed are counted, logged with their message id, and
//! deleted or left for a dead-letter queue according to [`UnparsablePolicy`].

pub mod messages;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName, QueueAttributeName,
};
use spot_core::clock::{Clock, TokioClock};
use spot_core::source::{AckHandle, Delivery, Error as SourceError, EventSource};
use time::OffsetDateTime;
use tokio::time::Instant;

use self::messages::{MessageContext, Parsed};

/// The longest long-poll wait SQS accepts.
pub const MAX_WAIT_TIME: Duration = Duration::from_secs(20);
/// The most messages one ReceiveMessage (and one DeleteMessageBatch) handles.
pub const MAX_BATCH: i32 = 10;
/// The longest visibility timeout SQS accepts (12 hours).
pub const MAX_VISIBILITY: Duration = Duration::from_secs(43_200);

/// The name this source reports (logs, metrics).
const NAME: &str = "sqs";

/// Errors of building an [`SqsSource`]. Errors while running are the event-source errors of
/// [`spot_core::source::Error`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The queue URL is empty.
    #[error("SQS queue URL is empty")]
    EmptyQueueUrl,
    /// The long-poll wait is longer than SQS allows.
    #[error("SQS wait time {0:?} exceeds the maximum of 20 s")]
    WaitTime(Duration),
    /// The batch size is outside 1..=10.
    #[error("SQS max messages {0} is outside 1..=10")]
    MaxMessages(i32),
    /// The visibility timeout is longer than SQS allows.
    #[error("SQS visibility timeout {0:?} exceeds the maximum of 12 h")]
    Visibility(Duration),
}

/// What to do with a message that cannot be parsed or is of an unsupported kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UnparsablePolicy {
    /// Delete it (it would never parse; NTH's behaviour).
    #[default]
    Delete,
    /// Leave it: it becomes visible again after the visibility timeout and, after the queue's
    /// `maxReceiveCount`, moves to its dead-letter queue for inspection.
    Leave,
}

/// Settings of an [`SqsSource`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqsConfig {
    /// The queue URL.
    pub queue_url: String,
    /// Long-poll wait per ReceiveMessage (`WaitTimeSeconds`, at most 20 s; default 20 s).
    pub wait_time: Duration,
    /// Messages per ReceiveMessage (`MaxNumberOfMessages`, 1..=10; default 10).
    pub max_messages: i32,
    /// Visibility timeout requested on receive; `None` keeps the queue's own.
    pub visibility_timeout: Option<Duration>,
    /// What to do with unparsable and unsupported messages.
    pub unparsable: UnparsablePolicy,
}

impl SqsConfig {
    /// The defaults for `queue_url`: 20 s long polls of up to 10 messages, the queue's
    /// visibility timeout, unparsable messages deleted.
    pub fn new(queue_url: impl Into<String>) -> Self {
        SqsConfig {
            queue_url: queue_url.into(),
            wait_time: MAX_WAIT_TIME,
            max_messages: MAX_BATCH,
            visibility_timeout: None,
            unparsable: UnparsablePolicy::Delete,
        }
    }

    /// Sets the long-poll wait.
    pub fn wait_time(mut self, wait: Duration) -> Self {
        self.wait_time = wait;
        self
    }

    /// Sets the number of messages per receive.
    pub fn max_messages(mut self, n: i32) -> Self {
        self.max_messages = n;
        self
    }

    /// Sets the visibility timeout requested on receive.
    pub fn visibility_timeout(mut self, timeout: Duration) -> Self {
        self.visibility_timeout = Some(timeout);
        self
    }

    /// Sets the unparsable-message policy.
    pub fn unparsable(mut self, policy: UnparsablePolicy) -> Self {
        self.unparsable = policy;
        self
    }

    fn validate(&self) -> Result<(), Error> {
        if self.queue_url.is_empty() {
            return Err(Error::EmptyQueueUrl);
        }
        if self.wait_time > MAX_WAIT_TIME {
            return Err(Error::WaitTime(self.wait_time));
        }
        if !(1..=MAX_BATCH).contains(&self.max_messages) {
            return Err(Error::MaxMessages(self.max_messages));
        }
        if let Some(v) = self.visibility_timeout
            && v > MAX_VISIBILITY
        {
            return Err(Error::Visibility(v));
        }
        Ok(())
    }
}

/// Counts of what the source saw and did since it was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SqsCounters {
    /// Messages received.
    pub received: u64,
    /// Deliveries handed to the consumer (messages that carried events).
    pub deliveries: u64,
    /// Events in those deliveries.
    pub events: u64,
    /// Messages that needed no action (deleted at once).
    pub ignored: u64,
    /// Messages that could not be parsed (malformed, or without a receipt handle).
    pub unparsable: u64,
    /// Well-formed messages of an unsupported kind.
    pub unsupported: u64,
    /// Messages deleted after acknowledgement.
    pub acknowledged: u64,
    /// Messages deleted by the source itself (ignored, or unparsable under
    /// [`UnparsablePolicy::Delete`]).
    pub discarded: u64,
    /// Deletions that failed (the message comes back after its visibility timeout).
    pub delete_failures: u64,
    /// Successful visibility extensions.
    pub visibility_extensions: u64,
}

#[derive(Debug, Default)]
struct Counters {
    received: AtomicU64,
    deliveries: AtomicU64,
    events: AtomicU64,
    ignored: AtomicU64,
    unparsable: AtomicU64,
    unsupported: AtomicU64,
    acknowledged: AtomicU64,
    discarded: AtomicU64,
    delete_failures: AtomicU64,
    visibility_extensions: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn snapshot(&self) -> SqsCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SqsCounters {
            received: get(&self.received),
            deliveries: get(&self.deliveries),
            events: get(&self.events),
            ignored: get(&self.ignored),
            unparsable: get(&self.unparsable),
            unsupported: get(&self.unsupported),
            acknowledged: get(&self.acknowledged),
            discarded: get(&self.discarded),
            delete_failures: get(&self.delete_failures),
            visibility_extensions: get(&self.visibility_extensions),
        }
    }
}

/// A delivery handed out and not yet acknowledged.
#[derive(Debug)]
struct InFlight {
    message_id: String,
    received: Instant,
}

/// A message to delete: receipt handle and message id (for logs).
struct ToDelete {
    receipt: String,
    message_id: String,
}

/// The SQS event source. Build it from a client (configured by the caller) and a queue URL.
pub struct SqsSource {
    client: Client,
    config: SqsConfig,
    clock: Arc<dyn Clock>,
    counters: Counters,
    in_flight: Mutex<HashMap<String, InFlight>>,
}

impl std::fmt::Debug for SqsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsSource")
            .field("config", &self.config)
            .field("counters", &self.counters)
            .finish()
    }
}

impl SqsSource {
    /// A source reading `config.queue_url` through `client`.
    pub fn new(client: Client, config: SqsConfig) -> Result<Self, Error> {
        config.validate()?;
        Ok(SqsSource {
            client,
            config,
            clock: Arc::new(TokioClock::new()),
            counters: Counters::default(),
            in_flight: Mutex::new(HashMap::new()),
        })
    }

    /// Uses `clock` for message ages and the observation time of undated messages.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The settings.
    pub fn config(&self) -> &SqsConfig {
        &self.config
    }

    /// What the source saw and did so far.
    pub fn counters(&self) -> SqsCounters {
        self.counters.snapshot()
    }

    /// How many deliveries are handed out and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.lock_in_flight().len()
    }

    fn lock_in_flight(&self) -> MutexGuard<'_, HashMap<String, InFlight>> {
        self.in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn transport(&self, operation: &str, message: impl std::fmt::Display) -> SourceError {
        SourceError::Transport {
            source_name: NAME.into(),
            message: format!("{operation}: {message}"),
        }
    }

    /// Handles one received message: a delivery, or a message to delete, or nothing.
    fn handle_message(
        &self,
        message: &Message,
        now: OffsetDateTime,
        deliveries: &mut Vec<Delivery>,
        discard: &mut Vec<ToDelete>,
    ) {
        let message_id = message.message_id().unwrap_or_default().to_owned();
        let Some(receipt) = message.receipt_handle().map(str::to_owned) else {
            Counters::add(&self.counters.unparsable, 1);
            tracing::warn!(message_id, "SQS message without a receipt handle: skipped");
            return;
        };
        let ctx = MessageContext {
            message_id: message_id.clone(),
            received_at: now,
        };
        match messages::parse_body(message.body().unwrap_or_default(), &ctx) {
            Ok(Parsed::Events(events)) => {
                let age = sent_timestamp(message).map(|sent| {
                    let age = now - sent;
                    Duration::try_from(age).unwrap_or(Duration::ZERO)
                });
                Counters::add(&self.counters.deliveries, 1);
                Counters::add(&self.counters.events, events.len());
                tracing::debug!(
                    message_id,
                    events = events.len(),
                    kind = events.first().map(|e| e.kind.name()).unwrap_or_default(),
                    "SQS message received"
                );
                self.lock_in_flight().insert(
                    receipt.clone(),
                    InFlight {
                        message_id,
                        received: Instant::now(),
                    },
                );
                deliveries.push(Delivery {
                    events,
                    ack: AckHandle(receipt),
                    age,
                });
            }
            Ok(Parsed::Ignored { reason }) => {
                Counters::add(&self.counters.ignored, 1);
                tracing::debug!(message_id, reason, "SQS message needs no action: deleting it");
                discard.push(ToDelete { receipt, message_id });
            }
            Err(error) => {
                let counter = if error.is_unsupported() {
                    &self.counters.unsupported
                } else {
                    &self.counters.unparsable
                };
                Counters::add(counter, 1);
                match self.config.unparsable {
                    UnparsablePolicy::Delete => {
                        tracing::warn!(message_id, %error, "cannot use SQS message: deleting it");
                        discard.push(ToDelete { receipt, message_id });
                    }
                    UnparsablePolicy::Leave => {
                        tracing::warn!(message_id, %error, "cannot use SQS message: leaving it for the dead-letter queue");
                    }
                }
            }
        }
    }

    /// Deletes messages in batches of 10; returns the failures as (receipt, reason).
    async fn delete(&self, entries: &[ToDelete]) -> Vec<(String, String)> {
        let mut failures = Vec::new();
        for chunk in entries.chunks(MAX_BATCH as usize) {
            let mut request = self
                .client
                .delete_message_batch()
                .queue_url(&self.config.queue_url);
            for (i, entry) in chunk.iter().enumerate() {
                match DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(&entry.receipt)
                    .build()
                {
                    Ok(e) => request = request.entries(e),
                    Err(e) => failures.push((entry.receipt.clone(), e.to_string())),
                }
            }
            match request.send().await {
                Ok(out) => {
                    for failed in out.failed() {
                        let entry = failed.id().parse::<usize>().ok().and_then(|i| chunk.get(i));
                        let reason = format!("{}: {}", failed.code(), failed.message().unwrap_or_default());
                        match entry {
                            Some(entry) => failures.push((entry.receipt.clone(), reason)),
                            None => tracing::warn!(
                                id = failed.id(),
                                reason,
                                "DeleteMessageBatch: unknown entry id"
                            ),
                        }
                    }
                }
                Err(e) => {
                    let reason = DisplayErrorContext(&e).to_string();
                    failures.extend(chunk.iter().map(|entry| (entry.receipt.clone(), reason.clone())));
                }
            }
        }
        for (receipt, reason) in &failures {
            let message_id = entries
                .iter()
                .find(|e| &e.receipt == receipt)
                .map(|e| e.message_id.as_str());
            tracing::warn!(
                message_id,
                reason,
                "SQS message not deleted: it will be received again"
            );
        }
        Counters::add(&self.counters.delete_failures, failures.len());
        failures
    }

    /// Forgets deliveries older than SQS's longest visibility timeout: their receipt handles
    /// expired and the messages (if still there) were received again under new handles.
    fn prune(&self) {
        self.lock_in_flight()
            .retain(|_, f| f.received.elapsed() <= MAX_VISIBILITY);
    }
}

/// When the message was sent (the `SentTimestamp` attribute, milliseconds since the epoch).
fn sent_timestamp(message: &Message) -> Option<OffsetDateTime> {
    let millis: i128 = message
        .attributes()?
        .get(&MessageSystemAttributeName::SentTimestamp)?
        .parse()
        .ok()?;
    OffsetDateTime::from_unix_timestamp_nanos(millis.checked_mul(1_000_000)?).ok()
}

#[async_trait]
impl EventSource for SqsSource {
    fn name(&self) -> &str {
        NAME
    }

    async fn receive(&self) -> Result<Vec<Delivery>, SourceError> {
        self.prune();
        let output = self
            .client
            .receive_message()
            .queue_url(&self.config.queue_url)
            .wait_time_seconds(self.config.wait_time.as_secs() as i32)
            .max_number_of_messages(self.config.max_messages)
            .set_visibility_timeout(self.config.visibility_timeout.map(|v| v.as_secs() as i32))
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .send()
            .await
            .map_err(|e| self.transport("ReceiveMessage", DisplayErrorContext(&e)))?;
        let now = self.clock.now();
        let mut deliveries = Vec::new();
        let mut discard = Vec::new();
        Counters::add(&self.counters.received, output.messages().len());
        for message in output.messages() {
            self.handle_message(message, now, &mut deliveries, &mut discard);
        }
        if !discard.is_empty() {
            // A failed deletion is not an error of the receive: the message comes back and is
            // discarded again.
            let failures = self.delete(&discard).await;
            Counters::add(
                &self.counters.discarded,
                discard.len().saturating_sub(failures.len()),
            );
        }
        Ok(deliveries)
    }

    async fn acknowledge(&self, handles: &[AckHandle]) -> Result<(), SourceError> {
        let mut seen = HashSet::new();
        let entries: Vec<ToDelete> = {
            let in_flight = self.lock_in_flight();
            let mut entries = Vec::new();
            for handle in handles {
                if !seen.insert(&handle.0) {
                    continue;
                }
                let Some(flight) = in_flight.get(&handle.0) else {
                    return Err(SourceError::UnknownHandle {
                        source_name: NAME.into(),
                        handle: handle.0.clone(),
                    });
                };
                entries.push(ToDelete {
                    receipt: handle.0.clone(),
                    message_id: flight.message_id.clone(),
                });
            }
            entries
        };
        if entries.is_empty() {
            return Ok(());
        }
        let failures = self.delete(&entries).await;
        let failed: HashSet<&str> = failures.iter().map(|(r, _)| r.as_str()).collect();
        {
            let mut in_flight = self.lock_in_flight();
            for entry in &entries {
                if !failed.contains(entry.receipt.as_str()) {
                    in_flight.remove(&entry.receipt);
                }
            }
        }
        Counters::add(
            &self.counters.acknowledged,
            entries.len().saturating_sub(failures.len()),
        );
        if failures.is_empty() {
            return Ok(());
        }
        let detail: Vec<String> = failures
            .iter()
            .map(|(receipt, reason)| {
                let id = entries
                    .iter()
                    .find(|e| &e.receipt == receipt)
                    .map(|e| e.message_id.as_str());
                format!("{}: {reason}", id.unwrap_or("?"))
            })
            .collect();
        Err(self.transport(
            "DeleteMessageBatch",
            format!(
                "{} of {} messages not deleted: {}",
                failures.len(),
                entries.len(),
                detail.join("; ")
            ),
        ))
    }

    async fn keep_alive(&self, handle: &AckHandle, extend: Duration) -> Result<(), SourceError> {
        if !self.lock_in_flight().contains_key(&handle.0) {
            return Err(SourceError::UnknownHandle {
                source_name: NAME.into(),
                handle: handle.0.clone(),
            });
        }
        let seconds = extend.min(MAX_VISIBILITY).as_secs_f64().ceil() as i32;
        self.client
            .change_message_visibility()
            .queue_url(&self.config.queue_url)
            .receipt_handle(&handle.0)
            .visibility_timeout(seconds)
            .send()
            .await
            .map_err(|e| self.transport("ChangeMessageVisibility", DisplayErrorContext(&e)))?;
        Counters::add(&self.counters.visibility_extensions, 1);
        Ok(())
    }

    async fn ready(&self) -> bool {
        self.client
            .get_queue_attributes()
            .queue_url(&self.config.queue_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_validation() {
        let config = SqsConfig::new("https://sqs.us-east-1.amazonaws.com/123456789012/q");
        assert_eq!(config.wait_time, Duration::from_secs(20));
        assert_eq!(config.max_messages, 10);
        assert_eq!(config.unparsable, UnparsablePolicy::Delete);
        assert!(config.validate().is_ok());
        assert!(matches!(SqsConfig::new("").validate(), Err(Error::EmptyQueueUrl)));
        assert!(matches!(
            config.clone().max_messages(11).validate(),
            Err(Error::MaxMessages(11))
        ));
        assert!(matches!(
            config.clone().max_messages(0).validate(),
            Err(Error::MaxMessages(0))
        ));
        assert!(matches!(
            config.clone().wait_time(Duration::from_secs(21)).validate(),
            Err(Error::WaitTime(_))
        ));
        assert!(matches!(
            config
                .clone()
                .visibility_timeout(Duration::from_secs(43_201))
                .validate(),
            Err(Error::Visibility(_))
        ));
        assert!(
            config
                .wait_time(Duration::ZERO)
                .max_messages(1)
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn sent_timestamp_is_read_from_the_attribute() {
        let message = Message::builder()
            .attributes(MessageSystemAttributeName::SentTimestamp, "1593641998123")
            .build();
        let sent = sent_timestamp(&message).map(|t| t.unix_timestamp_nanos());
        assert_eq!(sent, Some(1_593_641_998_123_000_000));
        let bad = Message::builder()
            .attributes(MessageSystemAttributeName::SentTimestamp, "soon")
            .build();
        assert_eq!(sent_timestamp(&bad), None);
        assert_eq!(sent_timestamp(&Message::builder().build()), None);
    }
}
