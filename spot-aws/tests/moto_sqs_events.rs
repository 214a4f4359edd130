//! The SQS event source against moto: EventBridge rules (the patterns NTH installs) deliver
//! EC2, Health and Auto Scaling events to a queue; direct Auto Scaling and SNS-wrapped
//! notifications are sent to it; the source yields typed events and deletes messages only
//! when acknowledged.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use aws_sdk_eventbridge::types::{PutEventsRequestEntry, Target};
use aws_sdk_sqs::types::QueueAttributeName;
use serde_json::Value;
use spot_aws::sqs::{SqsConfig, SqsSource, UnparsablePolicy};
use spot_core::event::{EventKind, InstanceState, LifecycleTransition, Origin, SpotAction};
use spot_core::source::{AckHandle, Delivery, Error as SourceError, EventSource};

const REGION: &str = "us-east-1";

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!("fixtures/sqs/", $name))
    };
}

/// The EventBridge rules NTH's CloudFormation template installs, plus the launch lifecycle
/// action and capacity-reservation warnings this source also handles.
const RULES: [(&str, &str); 7] = [
    (
        "asg-term",
        r#"{"source":["aws.autoscaling"],"detail-type":["EC2 Instance-terminate Lifecycle Action"]}"#,
    ),
    (
        "asg-launch",
        r#"{"source":["aws.autoscaling"],"detail-type":["EC2 Instance-launch Lifecycle Action"]}"#,
    ),
    (
        "spot-itn",
        r#"{"source":["aws.ec2"],"detail-type":["EC2 Spot Instance Interruption Warning"]}"#,
    ),
    (
        "rebalance",
        r#"{"source":["aws.ec2"],"detail-type":["EC2 Instance Rebalance Recommendation"]}"#,
    ),
    (
        "state",
        r#"{"source":["aws.ec2"],"detail-type":["EC2 Instance State-change Notification"]}"#,
    ),
    (
        "odcr",
        r#"{"source":["aws.ec2"],"detail-type":["EC2 Capacity Reservation Instance Interruption Warning"]}"#,
    ),
    (
        "health",
        r#"{"source":["aws.health"],"detail-type":["AWS Health Event"],"detail":{"service":["EC2"],"eventTypeCategory":["scheduledChange"]}}"#,
    ),
];

struct Env {
    sqs: aws_sdk_sqs::Client,
    events: aws_sdk_eventbridge::Client,
    queue_url: String,
    queue_arn: String,
}

impl Env {
    /// A fresh queue with a `visibility_secs` visibility timeout and extra attributes.
    async fn new(visibility_secs: u32, extra: &[(QueueAttributeName, String)]) -> Result<Self> {
        let config = common::moto_config(REGION).await;
        let sqs = aws_sdk_sqs::Client::new(&config);
        let events = aws_sdk_eventbridge::Client::new(&config);
        let mut create = sqs
            .create_queue()
            .queue_name(common::unique("spot-sqs"))
            .attributes(QueueAttributeName::VisibilityTimeout, visibility_secs.to_string());
        for (name, value) in extra {
            create = create.attributes(name.clone(), value.clone());
        }
        let queue_url = create
            .send()
            .await?
            .queue_url
            .context("CreateQueue returned no URL")?;
        let queue_arn = queue_arn(&sqs, &queue_url).await?;
        Ok(Env {
            sqs,
            events,
            queue_url,
            queue_arn,
        })
    }

    /// The source over this queue: short polls so tests finish quickly.
    fn source(&self, policy: UnparsablePolicy) -> Result<SqsSource> {
        let config = SqsConfig::new(&self.queue_url)
            .wait_time(Duration::from_secs(1))
            .unparsable(policy);
        Ok(SqsSource::new(self.sqs.clone(), config)?)
    }

    /// A custom event bus with NTH's rules targeting this queue (a bus per test: rules on the
    /// default bus would also catch the events of the other tests sharing moto).
    async fn bus_with_rules(&self) -> Result<String> {
        let bus = common::unique("spot-bus");
        self.events.create_event_bus().name(&bus).send().await?;
        for (name, pattern) in RULES {
            let rule = common::unique(&format!("spot-{name}"));
            self.events
                .put_rule()
                .name(&rule)
                .event_bus_name(&bus)
                .event_pattern(pattern)
                .send()
                .await?;
            let target = Target::builder().id("queue").arn(&self.queue_arn).build()?;
            let out = self
                .events
                .put_targets()
                .rule(&rule)
                .event_bus_name(&bus)
                .targets(target)
                .send()
                .await?;
            ensure!(
                out.failed_entry_count() == 0,
                "PutTargets failed: {:?}",
                out.failed_entries()
            );
        }
        Ok(bus)
    }

    /// Puts the `detail` of an EventBridge fixture on `bus`, as the service in it would.
    async fn put_fixture(&self, bus: &str, fixture: &str) -> Result<()> {
        let event: Value = serde_json::from_str(fixture)?;
        let text = |key: &str| {
            event[key]
                .as_str()
                .map(str::to_owned)
                .context(format!("fixture without {key}"))
        };
        let mut entry = PutEventsRequestEntry::builder()
            .event_bus_name(bus)
            .source(text("source")?)
            .detail_type(text("detail-type")?)
            .detail(event["detail"].to_string());
        for resource in event["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            entry = entry.resources(resource);
        }
        let out = self.events.put_events().entries(entry.build()).send().await?;
        ensure!(
            out.failed_entry_count() == 0,
            "PutEvents failed: {:?}",
            out.entries()
        );
        Ok(())
    }

    async fn send(&self, body: &str) -> Result<()> {
        self.sqs
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .send()
            .await?;
        Ok(())
    }

    /// Visible plus in-flight messages.
    async fn messages_left(&self) -> Result<u64> {
        queue_depth(&self.sqs, &self.queue_url).await
    }
}

async fn queue_arn(sqs: &aws_sdk_sqs::Client, url: &str) -> Result<String> {
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await?;
    attrs
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn))
        .cloned()
        .context("queue without an ARN")
}

async fn queue_depth(sqs: &aws_sdk_sqs::Client, url: &str) -> Result<u64> {
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await?;
    let attrs = attrs.attributes().context("no attributes")?;
    let mut total = 0;
    for name in [
        QueueAttributeName::ApproximateNumberOfMessages,
        QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
    ] {
        total += attrs.get(&name).context("attribute missing")?.parse::<u64>()?;
    }
    Ok(total)
}

/// Receives until `want` deliveries arrived (or fails after a bounded number of polls).
async fn receive_n(source: &SqsSource, want: usize) -> Result<Vec<Delivery>> {
    let mut got = Vec::new();
    for _ in 0..10 {
        got.extend(source.receive().await?);
        if got.len() >= want {
            break;
        }
    }
    ensure!(
        got.len() == want,
        "wanted {want} deliveries, got {}: {got:#?}",
        got.len()
    );
    Ok(got)
}

fn handles(deliveries: &[Delivery]) -> Vec<AckHandle> {
    deliveries.iter().map(|d| d.ack.clone()).collect()
}

#[tokio::test]
async fn eventbridge_events_of_every_kind_become_typed_events() -> Result<()> {
    let env = Env::new(30, &[]).await?;
    let bus = env.bus_with_rules().await?;
    for fixture in [
        fixture!("spot-interruption.json"),
        fixture!("rebalance-recommendation.json"),
        fixture!("state-change-shutting-down.json"),
        fixture!("state-change-running.json"),
        fixture!("capacity-reservation-interruption.json"),
        fixture!("health-scheduled-change.json"),
        fixture!("health-other-service.json"),
        fixture!("asg-terminate-lifecycle.json"),
        fixture!("asg-launch-lifecycle.json"),
    ] {
        env.put_fixture(&bus, fixture).await?;
    }
    let source = env.source(UnparsablePolicy::Leave)?;
    // The running state change is delivered by the rule but ignored (and deleted); the RDS
    // Health event does not match the Health rule's pattern.
    let deliveries = receive_n(&source, 7).await?;
    let mut by_kind: BTreeMap<&str, Vec<(String, EventKind)>> = BTreeMap::new();
    for delivery in &deliveries {
        let age = delivery.age.context("no message age")?;
        ensure!(age < Duration::from_secs(60), "age {age:?}");
        for event in &delivery.events {
            let Origin::Queue {
                message_id,
                upstream_id,
            } = &event.origin
            else {
                bail!("origin {:?}", event.origin)
            };
            ensure!(
                !message_id.is_empty() && upstream_id.is_some(),
                "{:?}",
                event.origin
            );
            by_kind
                .entry(event.kind.name())
                .or_default()
                .push((event.instance_id.clone(), event.kind.clone()));
        }
    }
    let instances = |kind: &str| -> Vec<String> {
        let mut ids: Vec<String> = by_kind
            .get(kind)
            .into_iter()
            .flatten()
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(instances("spot-interruption"), ["i-0b662ef9931388ba0"]);
    assert!(matches!(
        by_kind["spot-interruption"][0].1,
        EventKind::SpotInterruption {
            action: SpotAction::Terminate,
            ..
        }
    ));
    assert_eq!(instances("rebalance-recommendation"), ["i-0b662ef9931388ba0"]);
    assert_eq!(instances("state-change"), ["i-abcd1111"]);
    assert_eq!(
        by_kind["state-change"][0].1,
        EventKind::StateChange {
            state: InstanceState::ShuttingDown
        }
    );
    assert_eq!(
        instances("capacity-reservation-interruption"),
        ["i-0c1d2e3f4a5b6c7d8"]
    );
    assert_eq!(instances("scheduled-change"), ["i-12345678", "i-87654321"]);
    assert_eq!(instances("asg-lifecycle-terminate"), ["i-0633ac2b0d9769723"]);
    assert_eq!(instances("asg-lifecycle-launch"), ["i-0a68bf5ef13e21b52"]);
    let EventKind::AsgLifecycle(action) = &by_kind["asg-lifecycle-terminate"][0].1 else {
        bail!("not a hook")
    };
    assert_eq!(action.transition, LifecycleTransition::Terminating);
    assert_eq!(
        (action.group_name.as_str(), action.hook_name.as_str()),
        ("nth-test1", "node-termination-handler")
    );

    let counters = source.counters();
    assert_eq!(
        (counters.deliveries, counters.events, counters.ignored),
        (7, 8, 1)
    );
    assert_eq!(
        (counters.unparsable, counters.unsupported, counters.discarded),
        (0, 0, 1)
    );
    // Only the ignored message is gone; the seven others wait for their acknowledgement.
    assert_eq!(env.messages_left().await?, 7);
    assert_eq!(source.in_flight(), 7);
    source.acknowledge(&handles(&deliveries)).await?;
    assert_eq!(env.messages_left().await?, 0);
    assert_eq!(source.in_flight(), 0);
    assert_eq!(source.counters().acknowledged, 7);
    assert!(source.ready().await);
    Ok(())
}

#[tokio::test]
async fn messages_are_deleted_only_when_acknowledged() -> Result<()> {
    let env = Env::new(1, &[]).await?;
    env.send(fixture!("spot-interruption.json")).await?;
    let source = env.source(UnparsablePolicy::Leave)?;
    let first = receive_n(&source, 1).await?;
    // Not acknowledged: hidden for the visibility timeout, then delivered again, as the same
    // event under a new receipt handle.
    let hidden = env
        .sqs
        .receive_message()
        .queue_url(&env.queue_url)
        .wait_time_seconds(0)
        .send()
        .await?;
    assert!(
        hidden.messages().is_empty(),
        "in-flight message visible: {hidden:?}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = receive_n(&source, 1).await?;
    assert_eq!(second[0].events[0].id, first[0].events[0].id);
    assert_ne!(second[0].ack, first[0].ack);
    source.acknowledge(&handles(&second)).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        source.receive().await?.is_empty(),
        "acknowledged message came back"
    );
    assert_eq!(env.messages_left().await?, 0);
    // A handle acknowledged twice, or never handed out, is refused.
    let err = source.acknowledge(&handles(&second)).await.unwrap_err();
    assert!(matches!(err, SourceError::UnknownHandle { .. }), "{err}");
    let err = source
        .acknowledge(&[AckHandle("made-up".into())])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("made-up"), "{err}");
    Ok(())
}

#[tokio::test]
async fn keep_alive_extends_visibility() -> Result<()> {
    let env = Env::new(1, &[]).await?;
    env.send(fixture!("rebalance-recommendation.json")).await?;
    let source = env.source(UnparsablePolicy::Leave)?;
    let got = receive_n(&source, 1).await?;
    source.keep_alive(&got[0].ack, Duration::from_secs(6)).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        source.receive().await?.is_empty(),
        "extended message came back early"
    );
    assert_eq!(source.counters().visibility_extensions, 1);
    source.acknowledge(&handles(&got)).await?;
    assert_eq!(env.messages_left().await?, 0);
    let err = source
        .keep_alive(&got[0].ack, Duration::from_secs(4))
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::UnknownHandle { .. }), "{err}");
    Ok(())
}

#[tokio::test]
async fn direct_asg_and_sns_wrapped_notifications() -> Result<()> {
    let env = Env::new(30, &[]).await?;
    env.send(fixture!("asg-direct-terminate.json")).await?;
    env.send(fixture!("asg-test-notification.json")).await?;
    env.send(fixture!("sns-spot-interruption.json")).await?;
    let source = env.source(UnparsablePolicy::Leave)?;
    let deliveries = receive_n(&source, 2).await?;
    let mut kinds: HashMap<&str, String> = HashMap::new();
    for d in &deliveries {
        ensure!(d.events.len() == 1, "{d:?}");
        kinds.insert(d.events[0].kind.name(), d.events[0].instance_id.clone());
    }
    assert_eq!(kinds["asg-lifecycle-terminate"], "i-040107f6ba000e5ee");
    assert_eq!(kinds["spot-interruption"], "i-0b662ef9931388ba0");
    // The test notification was acknowledged (deleted) and ignored.
    assert_eq!(source.counters().ignored, 1);
    assert_eq!(env.messages_left().await?, 2);
    source.acknowledge(&handles(&deliveries)).await?;
    assert_eq!(env.messages_left().await?, 0);
    Ok(())
}

const UNSUPPORTED: &str = r#"{"version":"0","id":"u-1","detail-type":"EC2 Fleet Error","source":"aws.ec2","time":"2026-01-01T00:00:00Z","detail":{}}"#;

#[tokio::test]
async fn unparsable_messages_are_deleted_under_the_delete_policy() -> Result<()> {
    let env = Env::new(1, &[]).await?;
    env.send("this is not json").await?;
    env.send(UNSUPPORTED).await?;
    env.send(fixture!("spot-interruption-bad-action.json")).await?;
    let source = env.source(UnparsablePolicy::Delete)?;
    for _ in 0..5 {
        assert!(source.receive().await?.is_empty());
        let c = source.counters();
        if c.unparsable + c.unsupported == 3 {
            break;
        }
    }
    let c = source.counters();
    assert_eq!(
        (c.received, c.unparsable, c.unsupported, c.discarded),
        (3, 2, 1, 3)
    );
    assert_eq!(env.messages_left().await?, 0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(source.receive().await?.is_empty());
    assert_eq!(source.counters().received, 3, "deleted messages came back");
    Ok(())
}

#[tokio::test]
async fn unparsable_messages_are_left_for_the_dead_letter_queue() -> Result<()> {
    let config = common::moto_config(REGION).await;
    let sqs = aws_sdk_sqs::Client::new(&config);
    let dlq_url = sqs
        .create_queue()
        .queue_name(common::unique("spot-dlq"))
        .send()
        .await?
        .queue_url
        .context("no DLQ URL")?;
    let dlq_arn = queue_arn(&sqs, &dlq_url).await?;
    let redrive = format!(r#"{{"deadLetterTargetArn":"{dlq_arn}","maxReceiveCount":"2"}}"#);
    let env = Env::new(1, &[(QueueAttributeName::RedrivePolicy, redrive)]).await?;
    env.send(fixture!("spot-interruption-bad-action.json")).await?;
    let source = env.source(UnparsablePolicy::Leave)?;
    assert!(source.receive().await?.is_empty());
    assert_eq!(source.counters().unparsable, 1);
    // Left on the queue: it comes back after the visibility timeout...
    assert_eq!(env.messages_left().await?, 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(source.receive().await?.is_empty());
    assert_eq!(source.counters().unparsable, 2);
    assert_eq!(source.counters().discarded, 0);
    // ...and after maxReceiveCount receives it moves to the dead-letter queue.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(source.receive().await?.is_empty());
    assert_eq!(
        source.counters().unparsable,
        2,
        "received more than maxReceiveCount times"
    );
    let moved = sqs
        .receive_message()
        .queue_url(&dlq_url)
        .wait_time_seconds(1)
        .send()
        .await?;
    let bodies: Vec<&str> = moved.messages().iter().filter_map(|m| m.body()).collect();
    assert_eq!(bodies, [fixture!("spot-interruption-bad-action.json")]);
    Ok(())
}

#[tokio::test]
async fn failed_deletions_are_reported_and_keep_the_delivery() -> Result<()> {
    let env = Env::new(30, &[]).await?;
    env.send(fixture!("spot-interruption.json")).await?;
    let source = env.source(UnparsablePolicy::Leave)?;
    let stale = receive_n(&source, 1).await?;
    // The message disappears behind the source's back (a purge), then another arrives.
    env.sqs.purge_queue().queue_url(&env.queue_url).send().await?;
    env.send(fixture!("rebalance-recommendation.json")).await?;
    let fresh = receive_n(&source, 1).await?;
    let mut both = handles(&stale);
    both.extend(handles(&fresh));
    let err = source.acknowledge(&both).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, SourceError::Transport { .. }), "{text}");
    assert!(text.contains("1 of 2 messages not deleted"), "{text}");
    let c = source.counters();
    assert_eq!((c.acknowledged, c.delete_failures), (1, 1));
    // The failed one stays in flight (it can be retried), the other is done.
    assert_eq!(source.in_flight(), 1);
    assert_eq!(env.messages_left().await?, 0);
    Ok(())
}
