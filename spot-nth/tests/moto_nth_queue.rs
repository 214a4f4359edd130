//! Queue mode end to end, one test per event kind: the real `spot-nth` binary consumes an
//! SQS queue in moto fed by EventBridge rules (the ones NTH's template installs) on a
//! per-test bus, finds the node of a managed (tagged) moto instance by its private DNS name,
//! and acts on spot-kube-sim. Each test ends in the node state the event kind calls for and
//! checks that the message was deleted (the queue holds nothing visible or in flight).

mod common;

use std::time::Duration;

use anyhow::Result;
use common::{PODS, Queue, assert_form, event_id, eventually};

/// Generous bound for one event to be fully handled (cordon, drain with 1 s pod grace,
/// webhook, delete).
const HANDLED: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spot_interruption_taints_cordons_drains_and_deletes_the_message() -> Result<()> {
    let q = Queue::new().await?;
    let (instance, node) = q.instance().await?;
    let (_, other) = q.instance().await?;
    let _nth = q.spawn("nth-spot", &[]);
    let upstream = q.aws.spot_interruption(&instance).await?;
    let id = event_id("spot-interruption", &instance, &upstream);

    let view = q.wait_drained(&node, HANDLED).await;
    assert_eq!(
        view.taints.get("aws-node-termination-handler/spot-itn"),
        Some(&id),
        "{view:?}"
    );
    assert_eq!(view.nth.get("nth.spot.dev/event-id"), Some(&id));
    assert_eq!(view.nth.get("nth.spot.dev/instance-id"), Some(&instance));
    assert_eq!(
        view.nth.get("nth.spot.dev/reason").map(String::as_str),
        Some("spot-interruption")
    );
    q.aws.wait_empty(HANDLED).await;
    eventually(HANDLED, "the webhook", || async {
        (q.webhook.count() == 1).then_some(())
    })
    .await;
    assert!(
        q.webhook.bodies()[0].contains(&instance),
        "{:?}",
        q.webhook.bodies()
    );
    // The other instance's node is untouched.
    assert_eq!(q.kube.state(&other), Default::default());
    assert_eq!(q.kube.pods_on(&other).len(), PODS);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_recommendation_drains_with_rebalance_draining_on() -> Result<()> {
    let q = Queue::new().await?;
    let (instance, node) = q.instance().await?;
    let _nth = q.spawn("nth-rebalance-drain", &[("ENABLE_REBALANCE_DRAINING", "true")]);
    let upstream = q.aws.rebalance(&instance).await?;

    let view = q.wait_drained(&node, HANDLED).await;
    assert_eq!(
        view.taints
            .get("aws-node-termination-handler/rebalance-recommendation"),
        Some(&event_id("rebalance-recommendation", &instance, &upstream)),
        "{view:?}"
    );
    q.aws.wait_empty(HANDLED).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_recommendation_only_cordons_under_the_cordon_policy() -> Result<()> {
    let q = Queue::new().await?;
    let (instance, node) = q.instance().await?;
    let _nth = q.spawn("nth-rebalance-cordon", &[("REBALANCE_POLICY", "cordon")]);
    let upstream = q.aws.rebalance(&instance).await?;

    let view = eventually(HANDLED, "the cordon", || async {
        let v = q.kube.state(&node);
        (v.unschedulable && v.phase() == Some("cordoned")).then_some(v)
    })
    .await;
    assert_eq!(
        view.taints
            .get("aws-node-termination-handler/rebalance-recommendation"),
        Some(&event_id("rebalance-recommendation", &instance, &upstream))
    );
    q.aws.wait_empty(HANDLED).await;
    // Handled and deleted: the pods stay.
    assert_eq!(q.kube.pods_on(&node).len(), PODS);
    assert_eq!(q.kube.state(&node).phase(), Some("cordoned"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_and_shutting_down_state_changes_drain() -> Result<()> {
    let q = Queue::new().await?;
    let (stopping, stopping_node) = q.instance().await?;
    let (shutting, shutting_node) = q.instance().await?;
    let _nth = q.spawn("nth-state", &[]);
    let a = q.aws.state_change(&stopping, "stopping").await?;
    let b = q.aws.state_change(&shutting, "shutting-down").await?;

    for (instance, node, upstream) in [(&stopping, &stopping_node, a), (&shutting, &shutting_node, b)] {
        let view = q.wait_drained(node, HANDLED).await;
        // State changes drain without an NTH taint; the event is recorded on the node.
        assert!(view.nth_taints().is_empty(), "{view:?}");
        assert_eq!(
            view.nth.get("nth.spot.dev/event-id"),
            Some(&event_id("state-change", instance, &upstream))
        );
    }
    q.aws.wait_empty(HANDLED).await;
    eventually(HANDLED, "two webhooks", || async {
        (q.webhook.count() == 2).then_some(())
    })
    .await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_state_change_is_ignored_and_deleted() -> Result<()> {
    let q = Queue::new().await?;
    let (instance, node) = q.instance().await?;
    let mut nth = q.spawn("nth-running", &[]);
    q.aws.state_change(&instance, "running").await?;

    // Received, found to need nothing, and deleted.
    q.aws.wait_empty(HANDLED).await;
    nth.assert_running();
    assert_eq!(q.kube.state(&node), Default::default());
    assert_eq!(q.kube.pods_on(&node).len(), PODS);
    assert_eq!(q.webhook.count(), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_scheduled_change_in_the_past_drains_now() -> Result<()> {
    let q = Queue::new().await?;
    let (instance, node) = q.instance().await?;
    let _nth = q.spawn("nth-health", &[]);
    let arn = format!(
        "arn:aws:health:us-east-1::event/EC2/AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED/{}",
        common::unique("retire")
    );
    q.aws.health_scheduled(&instance, &arn).await?;
    // Health events are identified by their ARN and state (a redelivery is the same notice).
    let id = spot_core::event::EventId::derive(&["scheduled-change", &instance, &arn, "active"]).to_string();

    let view = q.wait_drained(&node, HANDLED).await;
    assert_eq!(
        view.taints
            .get("aws-node-termination-handler/scheduled-maintenance"),
        Some(&id),
        "{view:?}"
    );
    assert_eq!(
        view.nth.get("nth.spot.dev/scheduled-code").map(String::as_str),
        Some("instance-retirement")
    );
    q.aws.wait_empty(HANDLED).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asg_terminate_lifecycle_action_drains_then_completes_with_continue() -> Result<()> {
    let q = Queue::new().await?;
    let (instance, node) = q.instance().await?;
    let _nth = q.spawn("nth-asg", &[]);
    let token = "0befcbdb-6ecd-498a-9ff7-ae9b54447cd6";
    let upstream = q
        .aws
        .asg_terminate(&instance, "workers-e2e", "nth-hook", token)
        .await?;

    let view = q.wait_drained(&node, HANDLED).await;
    assert_eq!(
        view.taints
            .get("aws-node-termination-handler/asg-lifecycle-termination"),
        Some(&event_id("asg-lifecycle-terminate", &instance, &upstream)),
        "{view:?}"
    );
    q.aws.wait_empty(HANDLED).await;
    // The message is deleted only once the action was completed.
    let completions = q.autoscaling.completions();
    assert_eq!(completions.len(), 1, "{:?}", q.autoscaling.bodies());
    assert_form(
        &completions[0],
        &[
            ("AutoScalingGroupName", "workers-e2e"),
            ("LifecycleHookName", "nth-hook"),
            ("LifecycleActionToken", token),
            ("LifecycleActionResult", "CONTINUE"),
            ("InstanceId", &instance),
        ],
    )?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_reservation_interruption_drains() -> Result<()> {
    let q = Queue::new().await?;
    let (instance, node) = q.instance().await?;
    let _nth = q.spawn("nth-odcr", &[]);
    let upstream = q.aws.capacity_reservation(&instance).await?;

    let view = q.wait_drained(&node, HANDLED).await;
    assert_eq!(
        view.nth.get("nth.spot.dev/event-id"),
        Some(&event_id(
            "capacity-reservation-interruption",
            &instance,
            &upstream
        ))
    );
    q.aws.wait_empty(HANDLED).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmanaged_instances_are_left_alone() -> Result<()> {
    let q = Queue::new().await?;
    let (instance, node) = q.aws.run_instance(false).await?;
    q.kube.add_node(&node, PODS);
    let _nth = q.spawn("nth-unmanaged", &[]);
    q.aws.spot_interruption(&instance).await?;

    // CHECK_TAG_BEFORE_DRAINING: the message is consumed, the node is not ours to touch.
    q.aws.wait_empty(HANDLED).await;
    assert_eq!(q.kube.state(&node), Default::default());
    assert_eq!(q.kube.pods_on(&node).len(), PODS);
    assert_eq!(q.webhook.count(), 0);
    Ok(())
}
