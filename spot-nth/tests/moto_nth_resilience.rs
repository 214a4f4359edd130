//! Queue mode end to end, beyond the happy path: the real `spot-nth` binary against moto
//! (EventBridge → SQS, EC2 instances tagged managed) and spot-kube-sim.
//!
//! - Duplicate notices for one instance (spot warning, its Auto Scaling lifecycle action and
//!   the state change) lead to one drain, one webhook and one lifecycle completion.
//! - A replica killed (SIGKILL) while a PodDisruptionBudget blocks its drain is replaced by a
//!   new process that finishes the drain once the budget allows it: one webhook in total.
//! - Two replicas share the queue through the `spot-nth` Lease: every event is handled once,
//!   and when the leader dies the other takes over.
//! - A rebalance cordon is undone after `REBALANCE_UNCORDON_AFTER`, also when the handler
//!   restarted in between, but a node someone else cordoned first stays cordoned.
//! - `DRY_RUN` changes nothing, not even the queue.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Result;
use common::{PODS, Queue, eventually};

const HANDLED: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_notices_for_one_instance_drain_notify_and_complete_once() -> Result<()> {
    let q = Queue::new().await?;
    let (instance, node) = q.instance().await?;
    let nth = q.spawn("nth-dup", &[]);
    let spot = q.aws.spot_interruption(&instance).await?;
    let token = "5c6f9e0d-1b2a-4c3d-8e9f-0a1b2c3d4e5f";
    let asg = q
        .aws
        .asg_terminate(&instance, "workers-dup", "nth-hook", token)
        .await?;
    let state = q.aws.state_change(&instance, "shutting-down").await?;
    let ids: BTreeSet<String> = [
        common::event_id("spot-interruption", &instance, &spot),
        common::event_id("asg-lifecycle-terminate", &instance, &asg),
        common::event_id("state-change", &instance, &state),
    ]
    .into();

    q.wait_drained(&node, HANDLED).await;
    // All three messages handled and deleted; the lifecycle action completed before its
    // message was deleted, the webhook sent before any acknowledgement.
    q.aws.wait_empty(HANDLED).await;
    let view = q.kube.state(&node);
    let recorded = view.nth.get("nth.spot.dev/event-id").cloned().unwrap_or_default();
    assert!(
        ids.contains(&recorded),
        "event id {recorded:?} is none of {ids:?}: {view:?}"
    );
    assert_eq!(view.nth.get("nth.spot.dev/instance-id"), Some(&instance));
    // At most one NTH taint (the state change has none), and it names the recorded event.
    let taints = view.nth_taints();
    assert!(taints.len() <= 1, "{taints:?}");
    assert!(
        taints.values().all(|v| *v == recorded),
        "{taints:?} vs {recorded}"
    );
    assert_eq!(q.webhook.count(), 1, "{:?}", q.webhook.bodies());
    assert_eq!(
        q.autoscaling.completions().len(),
        1,
        "{:?}",
        q.autoscaling.bodies()
    );
    assert_eq!(nth.drains(), [PODS], "one drain evicting every pod of the node");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_drain_is_replaced_and_the_drain_completes_once() -> Result<()> {
    let q = Queue::new().await?;
    let (instance, node) = q.instance().await?;
    q.kube.add_pdb(&node, PODS as i64);
    let mut first = q.spawn("nth-restart", &[]);
    q.aws.spot_interruption(&instance).await?;

    // Cordoned, and the drain is blocked by the budget.
    eventually(HANDLED, "the cordon", || async {
        let v = q.kube.state(&node);
        (v.unschedulable && v.phase() == Some("cordoned")).then_some(())
    })
    .await;
    eventually(HANDLED, "an eviction refused by the budget", || async {
        first.logs().contains("eviction refused").then_some(())
    })
    .await;
    first.sigkill();
    assert_eq!(q.kube.pods_on(&node).len(), PODS);
    assert_eq!(q.webhook.count(), 0);

    // The restarted container (same pod name, so it holds the Lease at once) gets the message
    // again once its visibility lapses and is blocked by the budget in turn; then the budget
    // is relaxed and the drain goes through at the next retry.
    let second = q.spawn("nth-restart", &[]);
    eventually(HANDLED, "the new process's eviction to be refused", || async {
        second.logs().contains("eviction refused").then_some(())
    })
    .await;
    assert_eq!(q.kube.pods_on(&node).len(), PODS);
    q.kube.set_pdb_min_available(&node, 0);
    q.wait_drained(&node, Duration::from_secs(20)).await;
    q.aws.wait_empty(HANDLED).await;
    assert_eq!(q.webhook.count(), 1, "{:?}", q.webhook.bodies());
    assert_eq!(second.drains(), [PODS]);
    assert_eq!(first.drains(), Vec::<usize>::new());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_handle_each_event_once_and_fail_over() -> Result<()> {
    let q = Queue::new().await?;
    let mut instances = Vec::new();
    for _ in 0..4 {
        instances.push(q.instance().await?);
    }
    let mut a = q.spawn("nth-a", &[]);
    let mut b = q.spawn("nth-b", &[]);
    let leader = eventually(HANDLED, "a leader", || async { q.kube.lease_holder() }).await;
    assert!(["nth-a", "nth-b"].contains(&leader.as_str()), "{leader}");

    for (instance, _) in &instances[..3] {
        q.aws.spot_interruption(instance).await?;
    }
    for (_, node) in &instances[..3] {
        q.wait_drained(node, HANDLED).await;
    }
    q.aws.wait_empty(HANDLED).await;
    let bodies = q.webhook.bodies();
    assert_eq!(bodies.len(), 3, "{bodies:?}");
    for (instance, _) in &instances[..3] {
        assert_eq!(
            bodies.iter().filter(|b| b.contains(instance.as_str())).count(),
            1,
            "{instance}: {bodies:?}"
        );
    }
    assert_eq!(a.drains().len() + b.drains().len(), 3);
    assert_eq!(q.kube.lease_holder().as_deref(), Some(leader.as_str()));

    // The leader dies without releasing the Lease; the other replica takes over after the
    // lease duration (15 s) and handles the next event.
    let (dead, survivor, name) = if leader == "nth-a" {
        (&mut a, &mut b, "nth-b")
    } else {
        (&mut b, &mut a, "nth-a")
    };
    dead.sigkill();
    let (instance, node) = &instances[3];
    q.aws.spot_interruption(instance).await?;
    q.wait_drained(node, Duration::from_secs(45)).await;
    q.aws.wait_empty(HANDLED).await;
    survivor.assert_running();
    assert_eq!(q.kube.lease_holder().as_deref(), Some(name));
    assert_eq!(survivor.drains().last(), Some(&PODS));
    assert_eq!(q.webhook.count(), 4);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_cordon_is_undone_but_a_node_cordoned_before_stays_cordoned() -> Result<()> {
    let q = Queue::new().await?;
    let (ours, ours_node) = q.instance().await?;
    let (theirs, theirs_node) = q.instance().await?;
    q.kube.cordon_by_hand(&theirs_node);
    let _nth = q.spawn(
        "nth-uncordon",
        &[("REBALANCE_POLICY", "cordon"), ("REBALANCE_UNCORDON_AFTER", "3s")],
    );
    q.aws.rebalance(&ours).await?;
    q.aws.rebalance(&theirs).await?;

    for node in [&ours_node, &theirs_node] {
        let view = eventually(HANDLED, "the rebalance cordon", || async {
            let v = q.kube.state(node);
            (v.unschedulable && v.phase() == Some("cordoned")).then_some(v)
        })
        .await;
        assert!(
            view.taints
                .contains_key("aws-node-termination-handler/rebalance-recommendation"),
            "{view:?}"
        );
    }
    q.aws.wait_empty(HANDLED).await;

    // No interruption followed: both are restored, but only ours is schedulable again.
    eventually(HANDLED, "the uncordon", || async {
        (q.kube.state(&ours_node) == Default::default()).then_some(())
    })
    .await;
    let theirs_view = eventually(
        HANDLED,
        "the other node's taint and annotations to go",
        || async {
            let v = q.kube.state(&theirs_node);
            (v.nth.is_empty() && v.taints.is_empty()).then_some(v)
        },
    )
    .await;
    assert!(
        theirs_view.unschedulable,
        "a node cordoned by someone else was uncordoned"
    );
    assert_eq!(q.kube.pods_on(&ours_node).len(), PODS);
    assert_eq!(q.kube.pods_on(&theirs_node).len(), PODS);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_cordon_is_undone_even_when_the_handler_restarts_in_between() -> Result<()> {
    let q = Queue::new().await?;
    let (instance, node) = q.instance().await?;
    let policy = [("REBALANCE_POLICY", "cordon"), ("REBALANCE_UNCORDON_AFTER", "4s")];
    let mut first = q.spawn("nth-reuncordon", &policy);
    q.aws.rebalance(&instance).await?;
    eventually(HANDLED, "the rebalance cordon", || async {
        let v = q.kube.state(&node);
        (v.unschedulable && v.phase() == Some("cordoned")).then_some(())
    })
    .await;
    // Handled and deleted: the only record left of the pending uncordon is on the node.
    q.aws.wait_empty(HANDLED).await;
    first.sigkill();

    let mut second = q.spawn("nth-reuncordon", &policy);
    eventually(HANDLED, "the uncordon by the restarted process", || {
        second.assert_running();
        let restored = q.kube.state(&node) == Default::default();
        async move { restored.then_some(()) }
    })
    .await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interruption_after_a_rebalance_cordon_is_never_uncordoned() -> Result<()> {
    let q = Queue::new().await?;
    let (instance, node) = q.instance().await?;
    q.kube.add_pdb(&node, PODS as i64);
    // Drains give up after 2 s while the budget blocks them, and are retried when the message
    // comes back; the rebalance uncordon is due 4 s after the cordon, in between.
    let _nth = q.spawn(
        "nth-upgrade",
        &[
            ("REBALANCE_POLICY", "cordon"),
            ("REBALANCE_UNCORDON_AFTER", "4s"),
            ("NODE_TERMINATION_GRACE_PERIOD", "2"),
        ],
    );
    q.aws.rebalance(&instance).await?;
    eventually(HANDLED, "the rebalance cordon", || async {
        let v = q.kube.state(&node);
        (v.unschedulable && v.phase() == Some("cordoned")).then_some(())
    })
    .await;
    let upstream = q.aws.spot_interruption(&instance).await?;

    // For 8 s (past the rebalance uncordon) the node must stay cordoned: an interruption is
    // pending.
    let watch = tokio::time::timeout(Duration::from_secs(8), async {
        loop {
            let v = q.kube.state(&node);
            if !v.unschedulable {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    if let Ok(view) = watch {
        panic!("a node with a pending spot interruption was uncordoned: {view:?}");
    }
    q.kube.set_pdb_min_available(&node, 0);
    let view = q.wait_drained(&node, HANDLED).await;
    assert_eq!(
        view.taints.get("aws-node-termination-handler/spot-itn"),
        Some(&common::event_id("spot-interruption", &instance, &upstream)),
        "{view:?}"
    );
    q.aws.wait_empty(HANDLED).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_changes_nothing_not_even_the_queue() -> Result<()> {
    let q = Queue::new().await?;
    let (instance, node) = q.instance().await?;
    let mut nth = q.spawn("nth-dry", &[("DRY_RUN", "true")]);
    q.aws.spot_interruption(&instance).await?;

    eventually(HANDLED, "the dry-run drain", || async {
        nth.logs().contains("dry run: would drain the node").then_some(())
    })
    .await;
    eventually(HANDLED, "the dry-run webhook", || async {
        nth.logs()
            .contains("dry run: would send the webhook")
            .then_some(())
    })
    .await;
    nth.assert_running();
    assert_eq!(q.kube.state(&node), Default::default());
    assert_eq!(q.kube.pods_on(&node).len(), PODS);
    assert_eq!(q.webhook.count(), 0);
    // Dry run changes nothing, the queue included: the message is not deleted, so it is
    // delivered again after its visibility timeout (and a real run would then act on it).
    let (visible, in_flight) = q.aws.depth().await?;
    assert_eq!(visible + in_flight, 1, "the message was deleted in a dry run");
    Ok(())
}
