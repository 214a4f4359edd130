use std::sync::atomic::{AtomicU32, Ordering};

use spot_core::clock::TokioClock;
use spot_core::event::{InstanceState, Origin, SpotAction};
use spot_core::node::{Call, MemoryNodes};
use spot_core::source::MemorySource;
use time::macros::datetime;

use super::*;

const NODE: &str = "ip-10-0-0-1.ec2.internal";
const INSTANCE: &str = "i-0123456789abcdef0";
const START: OffsetDateTime = datetime!(2026-11-22 10:00:00 UTC);

#[derive(Default)]
struct Recorder {
    completed: AtomicU32,
    heartbeats: AtomicU32,
}

#[async_trait]
impl Lifecycle for Recorder {
    async fn complete(&self, _instance_id: &str, _action: &LifecycleAction) -> Result<(), String> {
        self.completed.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    async fn heartbeat(&self, _instance_id: &str, _action: &LifecycleAction) -> Result<(), String> {
        self.heartbeats.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

struct Fixture {
    handler: Arc<Handler>,
    source: Arc<MemorySource>,
    nodes: Arc<MemoryNodes>,
    lifecycle: Arc<Recorder>,
    metrics: Arc<Metrics>,
}

fn fixture(cfg: HandlerConfig) -> Fixture {
    fixture_with(cfg, Arc::new(MemoryNodes::new()))
}

fn fixture_with(cfg: HandlerConfig, nodes: Arc<MemoryNodes>) -> Fixture {
    if nodes.node(NODE).is_none() {
        nodes.add_node(NODE, 5);
    }
    let source = Arc::new(MemorySource::new());
    let lifecycle = Arc::new(Recorder::default());
    let metrics = Arc::new(Metrics::new());
    let handler = Handler::new(
        cfg,
        Deps {
            source: source.clone(),
            nodes: nodes.clone(),
            lookup: Arc::new(ThisNode(NODE.to_owned())),
            lifecycle: Some(lifecycle.clone()),
            webhook: None,
            metrics: metrics.clone(),
            clock: Arc::new(TokioClock::starting_at(START)),
        },
    );
    Fixture {
        handler,
        source,
        nodes,
        lifecycle,
        metrics,
    }
}

fn event(kind: EventKind, identity: &str) -> InterruptionEvent {
    InterruptionEvent::new(
        INSTANCE,
        kind,
        identity,
        START,
        Origin::Other { name: "test".into() },
    )
}

fn spot() -> InterruptionEvent {
    event(
        EventKind::SpotInterruption {
            action: SpotAction::Terminate,
            deadline: START + time::Duration::minutes(2),
        },
        "itn",
    )
}

fn asg_terminate() -> InterruptionEvent {
    event(
        EventKind::AsgLifecycle(LifecycleAction {
            transition: LifecycleTransition::Terminating,
            hook_name: "hook".into(),
            group_name: "asg".into(),
            token: "tok".into(),
        }),
        "asg",
    )
}

fn scheduled(state: ScheduledState, code: &str, in_minutes: i64) -> InterruptionEvent {
    event(
        EventKind::ScheduledChange {
            code: code.into(),
            not_before: START + time::Duration::minutes(in_minutes),
            not_after: None,
            state,
            description: "maintenance".into(),
        },
        &format!("{state:?}"),
    )
}

async fn deliver(f: &Fixture, events: Vec<InterruptionEvent>) -> Outcome {
    f.source.push(events).await;
    let delivery = f.source.receive().await.unwrap().remove(0);
    f.handler.handle(delivery).await
}

fn drains(nodes: &MemoryNodes) -> usize {
    nodes.count(|c| matches!(c, Call::Drain(_)))
}

fn cordons(nodes: &MemoryNodes) -> usize {
    nodes.count(|c| matches!(c, Call::Cordon(_)))
}

#[tokio::test(start_paused = true)]
async fn spot_interruption_taints_cordons_drains_and_acknowledges() {
    let f = fixture(HandlerConfig {
        taint_node: true,
        exclude_from_load_balancers: true,
        ..HandlerConfig::default()
    });
    let ev = spot();
    assert_eq!(deliver(&f, vec![ev.clone()]).await, Outcome::Acknowledged);
    let node = f.nodes.node(NODE).unwrap();
    assert!(node.unschedulable);
    assert_eq!(
        node.taints,
        vec![Taint::new(
            TAINT_SPOT_ITN,
            ev.id.to_string(),
            TaintEffect::NoSchedule
        )]
    );
    assert_eq!(
        node.labels.get(LABEL_EXCLUDE_LB).map(String::as_str),
        Some(LABEL_EXCLUDE_LB_VALUE)
    );
    assert_eq!(
        node.annotations.get(ANN_PHASE).map(String::as_str),
        Some("drained")
    );
    assert!(f.nodes.pods(NODE).is_empty());
    assert!(f.source.unacknowledged().await.is_empty());
    assert_eq!(f.metrics.action_count("drain", "success"), 1);
}

#[tokio::test(start_paused = true)]
async fn one_drain_per_instance_across_event_kinds() {
    let f = fixture(HandlerConfig::default());
    // The spot notice, its ASG lifecycle action and the state change, in separate messages
    // and concurrently.
    let (a, b, c) = tokio::join!(
        deliver(&f, vec![spot()]),
        deliver(&f, vec![asg_terminate()]),
        deliver(
            &f,
            vec![event(
                EventKind::StateChange {
                    state: InstanceState::ShuttingDown
                },
                "sc"
            )]
        ),
    );
    assert_eq!(
        (a, b, c),
        (
            Outcome::Acknowledged,
            Outcome::Acknowledged,
            Outcome::Acknowledged
        )
    );
    assert_eq!(cordons(&f.nodes), 1);
    assert_eq!(drains(&f.nodes), 1);
    assert_eq!(
        f.lifecycle.completed.load(Ordering::SeqCst),
        1,
        "the lifecycle action is still completed"
    );
}

#[tokio::test(start_paused = true)]
async fn restart_mid_drain_resumes_from_the_node() {
    let nodes = Arc::new(MemoryNodes::new());
    nodes.add_node(NODE, 5);
    nodes.fail_next_drains(NODE, 1);
    // First process: cordons, then the drain fails (the pod dies, say): not acknowledged.
    let first = fixture_with(HandlerConfig::default(), nodes.clone());
    assert!(matches!(deliver(&first, vec![spot()]).await, Outcome::Retry(_)));
    assert_eq!(first.source.unacknowledged().await.len(), 1);
    assert_eq!(
        nodes
            .node(NODE)
            .unwrap()
            .annotations
            .get(ANN_PHASE)
            .map(String::as_str),
        Some("cordoned")
    );
    // Second process (fresh memory) gets the redelivered message: no second cordon, one drain.
    let second = fixture_with(HandlerConfig::default(), nodes.clone());
    assert_eq!(deliver(&second, vec![spot()]).await, Outcome::Acknowledged);
    assert_eq!(cordons(&nodes), 1);
    assert_eq!(drains(&nodes), 2);
    // A third delivery of anything about this instance drains nothing more.
    let third = fixture_with(HandlerConfig::default(), nodes.clone());
    assert_eq!(
        deliver(&third, vec![asg_terminate()]).await,
        Outcome::Acknowledged
    );
    assert_eq!(drains(&nodes), 2);
    assert_eq!(third.lifecycle.completed.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn rebalance_cordon_is_undone_when_nothing_follows() {
    let f = fixture(HandlerConfig {
        rebalance: RebalancePolicy::Cordon,
        taint_node: true,
        rebalance_uncordon_after: Duration::from_secs(300),
        ..HandlerConfig::default()
    });
    assert_eq!(
        deliver(&f, vec![event(EventKind::RebalanceRecommendation, "r")]).await,
        Outcome::Acknowledged
    );
    let node = f.nodes.node(NODE).unwrap();
    assert!(node.unschedulable);
    assert_eq!(node.taints[0].key, TAINT_REBALANCE);
    assert_eq!(drains(&f.nodes), 0);
    tokio::time::sleep(Duration::from_secs(301)).await;
    let node = f.nodes.node(NODE).unwrap();
    assert!(!node.unschedulable, "uncordoned after the window");
    assert!(node.taints.is_empty());
    assert!(!node.annotations.keys().any(|k| k.starts_with(ANNOTATION_PREFIX)));
}

#[tokio::test(start_paused = true)]
async fn rebalance_followed_by_interruption_stays_cordoned() {
    let f = fixture(HandlerConfig {
        rebalance: RebalancePolicy::Cordon,
        rebalance_uncordon_after: Duration::from_secs(300),
        ..HandlerConfig::default()
    });
    deliver(&f, vec![event(EventKind::RebalanceRecommendation, "r")]).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(deliver(&f, vec![spot()]).await, Outcome::Acknowledged);
    tokio::time::sleep(Duration::from_secs(600)).await;
    let node = f.nodes.node(NODE).unwrap();
    assert!(node.unschedulable);
    assert_eq!(drains(&f.nodes), 1);
}

#[tokio::test(start_paused = true)]
async fn rebalance_never_uncordons_an_admin_cordon() {
    let nodes = Arc::new(MemoryNodes::new());
    nodes.add_node(NODE, 1);
    nodes.cordon(NODE).await.unwrap();
    let f = fixture_with(
        HandlerConfig {
            rebalance: RebalancePolicy::Cordon,
            rebalance_uncordon_after: Duration::from_secs(10),
            ..HandlerConfig::default()
        },
        nodes.clone(),
    );
    deliver(&f, vec![event(EventKind::RebalanceRecommendation, "r")]).await;
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert!(nodes.node(NODE).unwrap().unschedulable);
    assert_eq!(nodes.count(|c| matches!(c, Call::Uncordon(_))), 0);
}

#[tokio::test(start_paused = true)]
async fn scheduled_event_drains_at_not_before_minus_grace_and_cancel_undoes_cordon() {
    let f = fixture(HandlerConfig {
        node_termination_grace: Duration::from_secs(120),
        ..HandlerConfig::default()
    });
    // Drain 10 minutes ahead: it waits 8 minutes (10 - 2 of grace).
    let h = f.handler.clone();
    let ev = scheduled(ScheduledState::Active, "instance-stop", 10);
    let task = tokio::spawn(async move { h.handle_event(&ev).await });
    tokio::time::sleep(Duration::from_secs(7 * 60)).await;
    assert_eq!(cordons(&f.nodes), 0, "nothing before NotBefore - grace");
    tokio::time::sleep(Duration::from_secs(61)).await;
    task.await.unwrap().unwrap();
    assert_eq!(drains(&f.nodes), 1);

    // A cordon-only code, then its cancellation: the cordon is undone.
    let f = fixture(HandlerConfig {
        scheduled_codes: BTreeMap::from([("system-reboot".to_owned(), ScheduledPolicy::Cordon)]),
        ..HandlerConfig::default()
    });
    deliver(&f, vec![scheduled(ScheduledState::Active, "system-reboot", 60)]).await;
    assert!(f.nodes.node(NODE).unwrap().unschedulable);
    deliver(&f, vec![scheduled(ScheduledState::Canceled, "system-reboot", 60)]).await;
    assert!(!f.nodes.node(NODE).unwrap().unschedulable);
}

#[tokio::test(start_paused = true)]
async fn uncordon_after_reboot() {
    let f = fixture(HandlerConfig {
        scheduled_codes: BTreeMap::from([("system-reboot".to_owned(), ScheduledPolicy::Cordon)]),
        ..HandlerConfig::default()
    });
    deliver(&f, vec![scheduled(ScheduledState::Active, "system-reboot", 60)]).await;
    tokio::time::sleep(Duration::from_secs(3600)).await;
    // Up for two hours: the reboot has not happened yet.
    assert!(
        !f.handler
            .uncordon_after_reboot(NODE, Duration::from_secs(7200))
            .await
            .unwrap()
    );
    assert!(f.nodes.node(NODE).unwrap().unschedulable);
    // Up for ten minutes, cordoned an hour ago: rebooted since.
    assert!(
        f.handler
            .uncordon_after_reboot(NODE, Duration::from_secs(600))
            .await
            .unwrap()
    );
    assert!(!f.nodes.node(NODE).unwrap().unschedulable);
}

#[tokio::test(start_paused = true)]
async fn dry_run_changes_nothing() {
    let f = fixture(HandlerConfig {
        dry_run: true,
        taint_node: true,
        ..HandlerConfig::default()
    });
    assert_eq!(deliver(&f, vec![spot(), asg_terminate()]).await, Outcome::DryRun);
    assert!(f.nodes.calls().is_empty(), "{:?}", f.nodes.calls());
    assert_eq!(f.nodes.pods(NODE).len(), 5);
    assert_eq!(f.lifecycle.completed.load(Ordering::SeqCst), 0);
    assert_eq!(f.metrics.action_count("cordon", "dry-run"), 2);
}

#[tokio::test(start_paused = true)]
async fn cordon_only_never_drains_but_completes_lifecycle() {
    let f = fixture(HandlerConfig {
        cordon_only: true,
        ..HandlerConfig::default()
    });
    assert_eq!(deliver(&f, vec![asg_terminate()]).await, Outcome::Acknowledged);
    assert_eq!(drains(&f.nodes), 0);
    assert!(f.nodes.node(NODE).unwrap().unschedulable);
    assert_eq!(f.lifecycle.completed.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn out_of_service_taint_after_drain() {
    let f = fixture(HandlerConfig {
        out_of_service_taint: true,
        ..HandlerConfig::default()
    });
    deliver(&f, vec![spot()]).await;
    let taints = f.nodes.node(NODE).unwrap().taints;
    assert_eq!(
        taints,
        vec![Taint::new(
            TAINT_OUT_OF_SERVICE,
            "nodeshutdown",
            TaintEffect::NoExecute
        )]
    );
}

#[tokio::test(start_paused = true)]
async fn heartbeats_while_draining_and_keep_their_budget_across_restarts() {
    struct SlowNodes(MemoryNodes);
    #[async_trait]
    impl NodeActions for SlowNodes {
        async fn cordon(&self, n: &str) -> Result<(), spot_core::node::Error> {
            self.0.cordon(n).await
        }
        async fn uncordon(&self, n: &str) -> Result<(), spot_core::node::Error> {
            self.0.uncordon(n).await
        }
        async fn taint(&self, n: &str, t: &Taint) -> Result<bool, spot_core::node::Error> {
            self.0.taint(n, t).await
        }
        async fn untaint(&self, n: &str, k: &str, e: TaintEffect) -> Result<bool, spot_core::node::Error> {
            self.0.untaint(n, k, e).await
        }
        async fn label(&self, n: &str, l: &MetadataPatch) -> Result<(), spot_core::node::Error> {
            self.0.label(n, l).await
        }
        async fn annotate(&self, n: &str, a: &MetadataPatch) -> Result<(), spot_core::node::Error> {
            self.0.annotate(n, a).await
        }
        async fn get(&self, n: &str) -> Result<NodeState, spot_core::node::Error> {
            self.0.get(n).await
        }
        async fn drain(
            &self,
            n: &str,
            o: &DrainOptions,
        ) -> Result<spot_core::node::DrainReport, spot_core::node::Error> {
            tokio::time::sleep(Duration::from_secs(100)).await;
            self.0.drain(n, o).await
        }
    }
    let inner = MemoryNodes::new();
    inner.add_node(NODE, 2);
    let nodes = Arc::new(SlowNodes(inner));
    let lifecycle = Arc::new(Recorder::default());
    let handler = Handler::new(
        HandlerConfig {
            heartbeat: Some((Duration::from_secs(30), Duration::from_secs(3600))),
            ..HandlerConfig::default()
        },
        Deps {
            source: Arc::new(MemorySource::new()),
            nodes: nodes.clone(),
            lookup: Arc::new(ThisNode(NODE.to_owned())),
            lifecycle: Some(lifecycle.clone()),
            webhook: None,
            metrics: Arc::new(Metrics::new()),
            clock: Arc::new(TokioClock::starting_at(START)),
        },
    );
    handler.handle_event(&asg_terminate()).await.unwrap();
    assert_eq!(
        lifecycle.heartbeats.load(Ordering::SeqCst),
        3,
        "heartbeats at 30, 60 and 90 s of a 100 s drain"
    );
    assert_eq!(lifecycle.completed.load(Ordering::SeqCst), 1);
    let since = nodes
        .0
        .node(NODE)
        .unwrap()
        .annotations
        .get(ANN_HEARTBEAT_SINCE)
        .cloned();
    assert_eq!(since.as_deref(), Some("2026-11-22T10:00:00Z"));
}

#[tokio::test(start_paused = true)]
async fn unknown_nodes_are_kept_or_deleted_by_policy() {
    struct Nowhere;
    #[async_trait]
    impl NodeLookup for Nowhere {
        async fn lookup(&self, _: &str) -> Result<Lookup, String> {
            Ok(Lookup::NotFound)
        }
    }
    for (delete, expected_unacked) in [(false, 1), (true, 0)] {
        let source = Arc::new(MemorySource::new());
        let handler = Handler::new(
            HandlerConfig {
                delete_if_node_not_found: delete,
                ..HandlerConfig::default()
            },
            Deps {
                source: source.clone(),
                nodes: Arc::new(MemoryNodes::new()),
                lookup: Arc::new(Nowhere),
                lifecycle: None,
                webhook: None,
                metrics: Arc::new(Metrics::new()),
                clock: Arc::new(TokioClock::starting_at(START)),
            },
        );
        source.push(vec![spot()]).await;
        let d = source.receive().await.unwrap().remove(0);
        handler.handle(d).await;
        assert_eq!(source.unacknowledged().await.len(), expected_unacked);
    }
}

#[tokio::test(start_paused = true)]
async fn run_loop_handles_until_shutdown() {
    let f = fixture(HandlerConfig::default());
    f.source.push(vec![spot()]).await;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let h = f.handler.clone();
    let run = tokio::spawn(async move { h.run(async { rx.await.unwrap_or(()) }).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(drains(&f.nodes), 1);
    tx.send(()).unwrap();
    run.await.unwrap();
    assert!(f.source.unacknowledged().await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_restarted_handler_resumes_the_rebalance_uncordon() {
    let nodes = Arc::new(MemoryNodes::new());
    nodes.add_node(NODE, 1);
    let cfg = HandlerConfig {
        rebalance: RebalancePolicy::Cordon,
        rebalance_uncordon_after: Duration::from_secs(300),
        ..HandlerConfig::default()
    };
    let first = fixture_with(cfg.clone(), nodes.clone());
    deliver(&first, vec![event(EventKind::RebalanceRecommendation, "r")]).await;
    // The process dies 100 s in: its timer dies with it.
    tokio::time::sleep(Duration::from_secs(100)).await;
    drop(first);
    let second = fixture_with(cfg, nodes.clone());
    assert_eq!(second.handler.resume_auto_uncordons(&[NODE.to_owned()]).await, 1);
    tokio::time::sleep(Duration::from_secs(150)).await;
    assert!(
        nodes.node(NODE).unwrap().unschedulable,
        "not before cordoned-at + 300 s"
    );
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!nodes.node(NODE).unwrap().unschedulable);
}

#[tokio::test(start_paused = true)]
async fn an_interruption_takes_over_a_rebalance_cordon() {
    let nodes = Arc::new(MemoryNodes::new());
    nodes.add_node(NODE, 2);
    nodes.fail_next_drains(NODE, 1);
    let f = fixture_with(
        HandlerConfig {
            rebalance: RebalancePolicy::Cordon,
            rebalance_uncordon_after: Duration::from_secs(60),
            taint_node: true,
            ..HandlerConfig::default()
        },
        nodes.clone(),
    );
    deliver(&f, vec![event(EventKind::RebalanceRecommendation, "r")]).await;
    // The interruption's drain fails (a PDB, say): the node must stay cordoned for it.
    let itn = spot();
    assert!(matches!(deliver(&f, vec![itn.clone()]).await, Outcome::Retry(_)));
    let node = nodes.node(NODE).unwrap();
    assert_eq!(
        node.annotations.get(ANN_REASON).map(String::as_str),
        Some("spot-interruption")
    );
    assert_eq!(node.annotations.get(ANN_EVENT), Some(&itn.id.to_string()));
    assert!(node.taints.iter().any(|t| t.key == TAINT_SPOT_ITN));
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert!(
        nodes.node(NODE).unwrap().unschedulable,
        "the rebalance timer must not uncordon it"
    );
}

#[tokio::test(start_paused = true)]
async fn launch_hook_completes_once_the_node_is_ready() {
    let nodes = Arc::new(MemoryNodes::new());
    nodes.add_node(NODE, 0);
    nodes.set_ready(NODE, false);
    let f = fixture_with(HandlerConfig::default(), nodes.clone());
    let launch = event(
        EventKind::AsgLifecycle(LifecycleAction {
            transition: LifecycleTransition::Launching,
            hook_name: "launch-hook".into(),
            group_name: "asg".into(),
            token: "t".into(),
        }),
        "launch",
    );
    let h = f.handler.clone();
    let ev = launch.clone();
    let task = tokio::spawn(async move { h.handle_event(&ev).await });
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        f.lifecycle.completed.load(Ordering::SeqCst),
        0,
        "not while the node is not Ready"
    );
    nodes.set_ready(NODE, true);
    task.await.unwrap().unwrap();
    assert_eq!(f.lifecycle.completed.load(Ordering::SeqCst), 1);
    assert!(nodes.calls().is_empty(), "a launch never touches the node");

    // A node that never becomes Ready fails the event (it is retried, the hook not completed).
    nodes.set_ready(NODE, false);
    let err = f.handler.handle_event(&launch).await.unwrap_err();
    assert!(matches!(err, Error::NotReady(_)), "{err}");
}

#[tokio::test(start_paused = true)]
async fn instance_locks_are_pruned() {
    let f = fixture(HandlerConfig::default());
    for i in 0..3000 {
        drop(f.handler.lock_instance(&format!("i-{i}")).await);
    }
    assert!(f.handler.instances.lock().await.len() <= 1024);
    // A lock in use survives pruning and still serialises its instance.
    let held = f.handler.lock_instance("i-busy").await;
    for i in 0..2000 {
        drop(f.handler.lock_instance(&format!("j-{i}")).await);
    }
    let h = f.handler.clone();
    let waiter = tokio::spawn(async move { drop(h.lock_instance("i-busy").await) });
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(!waiter.is_finished());
    drop(held);
    waiter.await.unwrap();
}
