//! Metadata mode end to end, without AWS: the real `spot-nth` binary in `imds` mode polls
//! the in-process IMDS simulator (IMDSv2 tokens and all) and acts on its own node in
//! spot-kube-sim. A spot notice taints, cordons and drains the node; a scheduled reboot under
//! the `cordon` policy cordons it and its cancellation uncordons it; SIGTERM ends the process
//! cleanly (exit status 0), as a DaemonSet pod's deletion requires.

mod common;

use std::time::Duration;

use common::{Kube, Nth, env, eventually};
use spot_aws::imds_sim::{ImdsSim, RunningSim, ScheduledSpec, SimConfig};
use spot_core::event::SpotAction;

const NODE: &str = "ip-172-16-34-43.ec2.internal";
const PODS: usize = 3;
const LIMIT: Duration = Duration::from_secs(30);

struct Imds {
    kube: Kube,
    imds: RunningSim,
}

impl Imds {
    async fn start() -> Imds {
        let kube = Kube::start().await;
        kube.add_node(NODE, PODS);
        let imds = ImdsSim::start(SimConfig::default(), "127.0.0.1:0".parse().unwrap())
            .await
            .expect("start the IMDS simulator");
        Imds { kube, imds }
    }

    fn spawn(&self, extra: &[(&str, &str)]) -> Nth {
        let mut vars = env(&[
            ("NODE_NAME", NODE),
            ("INSTANCE_METADATA_URL", &self.imds.url()),
            ("METADATA_POLL_INTERVAL", "200ms"),
            ("KUBECONFIG", self.kube.kubeconfig.to_str().unwrap()),
            ("TAINT_NODE", "true"),
            ("POD_TERMINATION_GRACE_PERIOD", "1"),
            ("LOG_LEVEL", "debug"),
        ]);
        vars.extend(env(extra));
        Nth::spawn(self.kube.dir.path(), &["imds"], &vars)
    }

    fn sim(&self) -> &ImdsSim {
        self.imds.sim()
    }

    /// Waits until the handler has polled IMDS (it holds a token), so it is up and watching.
    async fn wait_polling(&self, nth: &mut Nth) {
        eventually(LIMIT, "spot-nth to poll IMDS", || {
            nth.assert_running();
            let polled = self.sim().snapshot().live_tokens > 0;
            async move { polled.then_some(()) }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spot_notice_through_imds_taints_cordons_and_drains() {
    let world = Imds::start().await;
    let mut nth = world.spawn(&[
        ("EMIT_KUBERNETES_EVENTS", "true"),
        (
            "KUBERNETES_EVENTS_EXTRA_ANNOTATIONS",
            "team=spot,example.com/owner=platform",
        ),
        ("METADATA_TRIES", "5"),
    ]);
    world.wait_polling(&mut nth).await;
    assert_eq!(world.kube.state(NODE), Default::default());

    world
        .sim()
        .trigger_spot_itn(SpotAction::Terminate, Duration::from_secs(120));
    let view = eventually(LIMIT, "the node to be drained", || async {
        let v = world.kube.state(NODE);
        (v.unschedulable && v.phase() == Some("drained") && world.kube.pods_on(NODE).is_empty()).then_some(v)
    })
    .await;
    let taint = view
        .taints
        .get("aws-node-termination-handler/spot-itn")
        .unwrap_or_else(|| panic!("no spot-itn taint: {view:?}"));
    assert_eq!(view.nth.get("nth.spot.dev/event-id"), Some(taint));
    assert_eq!(
        view.nth.get("nth.spot.dev/instance-id").map(String::as_str),
        Some("i-1234567890abcdef0")
    );
    assert_eq!(nth.drains(), [PODS], "one drain of every pod");
    // Polling the same notice again changes nothing: still one drain.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(nth.drains(), [PODS]);
    // Every Event about the node carries KUBERNETES_EVENTS_EXTRA_ANNOTATIONS.
    let events = eventually(LIMIT, "the Drained event", || async {
        let events = world
            .kube
            .sim()
            .list("events.k8s.io/v1", "Event", Some("default"));
        events.iter().any(|e| e["reason"] == "Drained").then_some(events)
    })
    .await;
    let mut reasons: Vec<&str> = events.iter().filter_map(|e| e["reason"].as_str()).collect();
    reasons.sort_unstable();
    assert_eq!(reasons, ["Cordon", "Drain", "Drained", "Taint"]);
    for e in &events {
        assert_eq!(
            e["metadata"]["annotations"],
            serde_json::json!({"team": "spot", "example.com/owner": "platform"}),
            "{e}"
        );
        assert_eq!(e["regarding"]["name"], NODE);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canceled_scheduled_reboot_under_the_cordon_policy_uncordons() {
    let world = Imds::start().await;
    let mut nth = world.spawn(&[("SCHEDULED_EVENT_CODE_POLICIES", "system-reboot=cordon")]);
    world.wait_polling(&mut nth).await;

    let event = world
        .sim()
        .schedule(ScheduledSpec {
            code: Some("system-reboot".into()),
            not_before: Some(time::OffsetDateTime::now_utc() + Duration::from_secs(3600)),
            ..ScheduledSpec::default()
        })
        .expect("schedule");
    let view = eventually(LIMIT, "the cordon", || async {
        let v = world.kube.state(NODE);
        (v.unschedulable && v.phase() == Some("cordoned")).then_some(v)
    })
    .await;
    assert!(
        view.taints
            .contains_key("aws-node-termination-handler/scheduled-maintenance"),
        "{view:?}"
    );
    assert_eq!(
        view.nth.get("nth.spot.dev/scheduled-code").map(String::as_str),
        Some("system-reboot")
    );
    // Cordon only: the pods stay.
    assert_eq!(world.kube.pods_on(NODE).len(), PODS);

    world.sim().cancel_scheduled(&event.event_id).expect("cancel");
    eventually(LIMIT, "the uncordon", || async {
        (world.kube.state(NODE) == Default::default()).then_some(())
    })
    .await;
    assert_eq!(world.kube.pods_on(NODE).len(), PODS);
    nth.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_with_status_zero() {
    let world = Imds::start().await;
    let mut nth = world.spawn(&[]);
    world.wait_polling(&mut nth).await;
    eventually(LIMIT, "the start-up log", || async {
        nth.logs().contains("spot-nth started").then_some(())
    })
    .await;
    nth.sigterm();
    let status = nth.exit_within(Duration::from_secs(15)).await;
    assert!(status.success(), "exit status {status}; logs:\n{}", nth.logs());
    assert_eq!(world.kube.state(NODE), Default::default());
}
