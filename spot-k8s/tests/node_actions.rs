//! `KubeNodeActions` through kube-rs over HTTP against spot-kube-sim.

mod common;

use std::time::Duration;

use common::{TestSim, node, pdb, pods_on, running_pod};
use futures::future::join_all;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::events::v1::Event as KubeEvent;
use kube::Api;
use kube::runtime::events::Reporter;
use serde_json::{Value, json};
use spot_core::node::{
    CordonWith, DrainOptions, Error, MetadataPatch, NodeActions, PodRef, Taint, TaintEffect,
};
use spot_k8s::actions::{ActionsConfig, KubeNodeActions, PodSource};
use spot_k8s::ratelimit::Priority;
use spot_k8s::sim::SimConfig;

fn fast() -> ActionsConfig {
    ActionsConfig {
        poll_interval: Duration::from_millis(50),
        ..ActionsConfig::default()
    }
}

fn taint_keys(sim: &spot_k8s::sim::Sim, name: &str) -> Vec<String> {
    let n = sim.get("v1", "Node", "", name).unwrap();
    let mut keys: Vec<String> = n
        .pointer("/spec/taints")
        .and_then(Value::as_array)
        .map(|ts| ts.iter().map(|t| t["key"].as_str().unwrap().to_owned()).collect())
        .unwrap_or_default();
    keys.sort();
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_taint_writers_lose_no_taint() {
    let ts = TestSim::start(SimConfig::default()).await;
    let mut n = node("n1");
    n["spec"]["taints"] = json!([{"key": "someone-else/keep", "value": "x", "effect": "NoSchedule"}]);
    ts.sim().insert(n).unwrap();
    // Eight independent writers (as eight processes would be), 25 taints each, plus a
    // concurrent cordon/label writer: every write races the others on resourceVersion.
    let actors: Vec<KubeNodeActions> = (0..8)
        .map(|_| KubeNodeActions::new(ts.client()).with_config(fast()))
        .collect();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let a = actors[i % actors.len()].clone();
        tasks.push(tokio::spawn(async move {
            a.taint(
                "n1",
                &Taint::new(format!("writer/{i:03}"), format!("v{i}"), TaintEffect::NoSchedule),
            )
            .await
        }));
    }
    let other = actors[0].clone();
    let noise = tokio::spawn(async move {
        for i in 0..20 {
            let mut l = MetadataPatch::new();
            l.insert("noise".into(), Some(i.to_string()));
            other.label("n1", &l).await?;
            if i % 2 == 0 {
                other.cordon("n1").await?
            } else {
                other.uncordon("n1").await?
            }
        }
        Ok::<_, Error>(())
    });
    for t in join_all(tasks).await {
        assert!(t.unwrap().unwrap(), "every taint is new");
    }
    noise.await.unwrap().unwrap();
    let keys = taint_keys(ts.sim(), "n1");
    assert_eq!(keys.len(), 201, "{keys:?}");
    assert!(keys.contains(&"someone-else/keep".to_owned()));
    assert!((0..200).all(|i| keys.contains(&format!("writer/{i:03}"))));

    // Idempotent re-taint, value update, and concurrent removal of half of them.
    assert!(
        !actors[1]
            .taint("n1", &Taint::new("writer/000", "v0", TaintEffect::NoSchedule))
            .await
            .unwrap()
    );
    assert!(
        actors[1]
            .taint("n1", &Taint::new("writer/000", "new", TaintEffect::NoSchedule))
            .await
            .unwrap()
    );
    let removals = (0..100).map(|i| {
        let a = actors[i % actors.len()].clone();
        tokio::spawn(async move {
            a.untaint("n1", &format!("writer/{:03}", i * 2), TaintEffect::NoSchedule)
                .await
        })
    });
    for r in join_all(removals).await {
        assert!(r.unwrap().unwrap());
    }
    let keys = taint_keys(ts.sim(), "n1");
    assert_eq!(keys.len(), 101, "{keys:?}");
    assert!(
        !actors[0]
            .untaint("n1", "writer/000", TaintEffect::NoSchedule)
            .await
            .unwrap()
    );
    assert!(matches!(
        actors[0]
            .taint("nope", &Taint::new("k", "v", TaintEffect::NoSchedule))
            .await,
        Err(Error::NodeNotFound(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cordon_labels_annotations_and_events() {
    let ts = TestSim::start(SimConfig::default()).await;
    ts.sim().insert(node("n1")).unwrap();
    let client = ts.client_from_kubeconfig().await;
    let actions = KubeNodeActions::new(client.clone())
        .with_rate_limiter(spot_k8s::RateLimiter::new(200.0, 20).unwrap())
        .with_events(Reporter {
            controller: "spot-nth".into(),
            instance: Some("test".into()),
        });
    actions.cordon("n1").await.unwrap();
    actions.cordon("n1").await.unwrap();
    let state = actions.get("n1").await.unwrap();
    assert!(state.unschedulable && state.ready);
    assert_eq!(
        state
            .provider_id
            .as_deref()
            .map(|p| p.starts_with("aws:///us-east-1a/i-")),
        Some(true)
    );
    assert_eq!(
        state
            .labels
            .get("node.kubernetes.io/instance-type")
            .map(String::as_str),
        Some("m5.xlarge")
    );
    let nodes: Api<Node> = Api::all(client.clone());
    assert_eq!(
        nodes.get("n1").await.unwrap().spec.unwrap().unschedulable,
        Some(true)
    );
    actions.uncordon("n1").await.unwrap();
    assert_ne!(
        nodes.get("n1").await.unwrap().spec.unwrap().unschedulable,
        Some(true)
    );

    let mut labels = MetadataPatch::new();
    labels.insert("spot/a".into(), Some("1".into()));
    labels.insert("kubernetes.io/hostname".into(), None);
    actions.label("n1", &labels).await.unwrap();
    let l = nodes.get("n1").await.unwrap().metadata.labels.unwrap();
    assert_eq!(l.get("spot/a").map(String::as_str), Some("1"));
    assert!(!l.contains_key("kubernetes.io/hostname"));
    assert!(l.contains_key("topology.kubernetes.io/zone"), "other labels stay");

    let mut ann = MetadataPatch::new();
    ann.insert("spot/progress".into(), Some("drained".into()));
    actions.annotate("n1", &ann).await.unwrap();
    assert_eq!(
        actions
            .get("n1")
            .await
            .unwrap()
            .annotations
            .get("spot/progress")
            .map(String::as_str),
        Some("drained")
    );
    ann.insert("spot/progress".into(), None);
    actions.annotate("n1", &ann).await.unwrap();
    assert!(
        !actions
            .get("n1")
            .await
            .unwrap()
            .annotations
            .contains_key("spot/progress")
    );
    assert!(matches!(actions.cordon("missing").await, Err(Error::NodeNotFound(n)) if n == "missing"));

    // Cordon twice and uncordon once published events about the node (the second cordon
    // was a no-op).
    let events: Api<KubeEvent> = Api::namespaced(client, "default");
    let list = events.list(&Default::default()).await.unwrap();
    let reasons: Vec<String> = list
        .items
        .iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("n1"))
        .filter_map(|e| e.reason.clone())
        .collect();
    assert!(
        reasons.contains(&"Cordon".to_owned()) && reasons.contains(&"Uncordon".to_owned()),
        "{reasons:?}"
    );
    assert_eq!(list.items[0].reporting_controller.as_deref(), Some("spot-nth"));
}

fn drain_fixture(ts: &TestSim) {
    let sim = ts.sim();
    sim.insert(node("n1")).unwrap();
    sim.insert(node("n2")).unwrap();
    for i in 0..3 {
        sim.insert(running_pod(
            "default",
            &format!("web-{i}"),
            "n1",
            json!({"app": "web"}),
        ))
        .unwrap();
    }
    for i in 3..5 {
        sim.insert(running_pod(
            "default",
            &format!("web-{i}"),
            "n2",
            json!({"app": "web"}),
        ))
        .unwrap();
    }
    // Left alone: a mirror pod, a DaemonSet pod, the handler itself, a terminating pod.
    let mut mirror = running_pod("kube-system", "kube-proxy-n1", "n1", json!({}));
    mirror["metadata"]["annotations"] = json!({"kubernetes.io/config.mirror": "abc"});
    sim.insert(mirror).unwrap();
    let mut ds = running_pod("kube-system", "ds-n1", "n1", json!({}));
    ds["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "ds", "uid": "ds-uid", "controller": true}]);
    sim.insert(ds).unwrap();
    sim.insert(running_pod("kube-system", "nth", "n1", json!({})))
        .unwrap();
    let mut term = running_pod("default", "leaving", "n1", json!({}));
    term["metadata"]["finalizers"] = json!(["test/hold"]);
    sim.insert(term).unwrap();
    let leaving = sim.delete("v1", "Pod", "default", "leaving").unwrap();
    assert!(leaving.pointer("/metadata/deletionTimestamp").is_some());
    // An emptyDir pod (evicted: delete_emptydir_data defaults to true).
    let mut ed = running_pod("default", "scratch", "n1", json!({}));
    ed["spec"]["volumes"] = json!([{"name": "tmp", "emptyDir": {}}]);
    sim.insert(ed).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_respects_pdb_and_finishes_when_it_opens() {
    let ts = TestSim::start(SimConfig {
        kubelet: true,
        ..SimConfig::default()
    })
    .await;
    drain_fixture(&ts);
    // 5 healthy web pods, 4 required: one eviction at a time is allowed... until the budget
    // is exhausted, since nothing recreates the pods.
    ts.sim()
        .insert(pdb("default", "web", "web", json!({"minAvailable": 4})))
        .unwrap();
    let actions = KubeNodeActions::new(ts.client()).with_config(fast());
    let options = DrainOptions {
        timeout: Duration::from_secs(30),
        eviction_retry: Duration::from_millis(100),
        skip_pod: Some(PodRef {
            namespace: "kube-system".into(),
            name: "nth".into(),
        }),
        ..DrainOptions::default()
    };
    let drain = tokio::spawn({
        let a = actions.clone();
        let o = options.clone();
        async move { a.drain("n1", &o).await }
    });
    // Wait until the budget has refused evictions, then relax it.
    let sim = ts.sim().clone();
    let mut blocked = false;
    for _ in 0..200 {
        let pdb = sim
            .get("policy/v1", "PodDisruptionBudget", "default", "web")
            .unwrap();
        let left = pods_on(&sim, "n1")
            .iter()
            .filter(|p| p.starts_with("web-"))
            .count();
        if pdb.pointer("/status/disruptionsAllowed") == Some(&json!(0)) && left == 2 {
            blocked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        blocked,
        "the PDB never blocked the drain: {:?}",
        pods_on(&sim, "n1")
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!drain.is_finished(), "the drain waits for the budget");
    let mut relaxed = sim
        .get("policy/v1", "PodDisruptionBudget", "default", "web")
        .unwrap();
    relaxed["spec"]["minAvailable"] = json!(1);
    sim.put(relaxed).unwrap();
    let report = tokio::time::timeout(Duration::from_secs(20), drain)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let mut evicted: Vec<String> = report.evicted.iter().map(ToString::to_string).collect();
    evicted.sort();
    assert_eq!(
        evicted,
        [
            "default/scratch",
            "default/web-0",
            "default/web-1",
            "default/web-2"
        ]
    );
    let mut skipped: Vec<String> = report.skipped.iter().map(ToString::to_string).collect();
    skipped.sort();
    assert_eq!(
        skipped,
        [
            "default/leaving",
            "kube-system/ds-n1",
            "kube-system/kube-proxy-n1",
            "kube-system/nth"
        ]
    );
    assert!(report.pdb_retries > 0, "{report:?}");
    assert!(report.forced.is_empty());
    assert_eq!(pods_on(&sim, "n1"), ["ds-n1", "kube-proxy-n1", "leaving", "nth"]);
    assert_eq!(pods_on(&sim, "n2"), ["web-3", "web-4"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_past_deadline_names_remaining_pods_or_forces() {
    let ts = TestSim::start(SimConfig::default()).await;
    let sim = ts.sim();
    sim.insert(node("n1")).unwrap();
    sim.insert(running_pod("default", "db-0", "n1", json!({"app": "db"})))
        .unwrap();
    sim.insert(running_pod("default", "free", "n1", json!({"app": "free"})))
        .unwrap();
    let mut critical = running_pod("kube-system", "critical", "n1", json!({}));
    critical["spec"]["priorityClassName"] = json!("system-node-critical");
    sim.insert(critical).unwrap();
    sim.insert(pdb("default", "db", "db", json!({"maxUnavailable": 0})))
        .unwrap();
    let actions = KubeNodeActions::new(ts.client()).with_config(fast());
    let options = DrainOptions {
        timeout: Duration::from_millis(800),
        eviction_retry: Duration::from_millis(100),
        ..DrainOptions::default()
    };
    let err = actions.drain("n1", &options).await.unwrap_err();
    match &err {
        Error::DrainTimeout { node, remaining } => {
            assert_eq!(node, "n1");
            let mut r: Vec<String> = remaining.iter().map(ToString::to_string).collect();
            r.sort();
            // The critical pod waits for the first wave, which the budget blocks.
            assert_eq!(r, ["default/db-0", "kube-system/critical"]);
        }
        other => panic!("expected a drain timeout, got {other:?}"),
    }
    assert!(err.to_string().contains("default/db-0"));
    assert_eq!(
        pods_on(sim, "n1"),
        ["critical", "db-0"],
        "the unprotected pod was evicted"
    );

    // The same drain from fresh lists instead of a watch, forcing at the deadline.
    let listing = KubeNodeActions::new(ts.client()).with_config(ActionsConfig {
        pod_source: PodSource::List,
        ..fast()
    });
    let forced = DrainOptions {
        force_at_deadline: true,
        ..options
    };
    let report = listing.drain("n1", &forced).await.unwrap();
    let mut f: Vec<String> = report.forced.iter().map(ToString::to_string).collect();
    f.sort();
    assert_eq!(f, ["default/db-0", "kube-system/critical"]);
    assert!(pods_on(sim, "n1").is_empty());
    assert!(matches!(
        actions.drain("missing", &DrainOptions::default()).await,
        Err(Error::NodeNotFound(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_with_replicaset_controller_and_scheduler_moves_pods() {
    let ts = TestSim::start(SimConfig {
        kubelet: true,
        scheduler: true,
        replicaset_controller: true,
        ..SimConfig::default()
    })
    .await;
    let sim = ts.sim();
    sim.seed(3, 2).unwrap();
    sim.insert(pdb("default", "sim-app", "sim-app", json!({"maxUnavailable": 1})))
        .unwrap();
    let actions = KubeNodeActions::new(ts.client()).with_config(fast());
    actions.cordon("sim-node-0").await.unwrap();
    let report = actions
        .drain(
            "sim-node-0",
            &DrainOptions {
                timeout: Duration::from_secs(30),
                eviction_retry: Duration::from_millis(100),
                grace_period_seconds: Some(1),
                ..DrainOptions::default()
            },
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e}: {:#?}",
                sim.list("v1", "Pod", None)
                    .iter()
                    .map(|p| (
                        p["metadata"].clone(),
                        p["status"]["phase"].clone(),
                        p["spec"]["nodeName"].clone()
                    ))
                    .collect::<Vec<_>>()
            )
        });
    assert_eq!(report.evicted.len(), 2, "{report:?}");
    assert!(pods_on(sim, "sim-node-0").is_empty());
    // The ReplicaSet recreated the evicted pods and the scheduler put them elsewhere.
    let mut running = 0;
    for _ in 0..100 {
        running = sim
            .list("v1", "Pod", Some("default"))
            .iter()
            .filter(|p| spot_k8s::sim::eviction::pod_healthy(p))
            .count();
        if running == 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(running, 6);
    assert!(
        pods_on(sim, "sim-node-0").is_empty(),
        "the cordoned node gets no new pods"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taint_and_drain_publish_events_and_share_the_rate_limit() {
    let ts = TestSim::start(SimConfig::default()).await;
    ts.sim().insert(node("n1")).unwrap();
    ts.sim()
        .insert(running_pod("default", "p", "n1", json!({})))
        .unwrap();
    let client = ts.client();
    // 20 requests per second, no burst to speak of: shared by two instances.
    let limiter = spot_k8s::RateLimiter::new(20.0, 1).unwrap();
    let reporter = Reporter {
        controller: "spot-nth".into(),
        instance: None,
    };
    let a = KubeNodeActions::new(client.clone())
        .with_rate_limiter(limiter.clone())
        .with_events(reporter.clone());
    let b = KubeNodeActions::new(client.clone())
        .with_rate_limiter(limiter)
        .with_config(fast());
    let start = tokio::time::Instant::now();
    // a: get + replace + event = 3 requests; b: drain = node get, watch list, eviction,
    // events none; plus 10 untaints of absent taints (1 get each).
    a.taint("n1", &Taint::new("spot/itn", "e1", TaintEffect::NoSchedule))
        .await
        .unwrap();
    let drain_options = DrainOptions {
        timeout: Duration::from_secs(10),
        ..DrainOptions::default()
    };
    let (_, report) = tokio::join!(
        async {
            for i in 0..10 {
                assert!(
                    !b.untaint("n1", &format!("absent/{i}"), TaintEffect::NoSchedule)
                        .await
                        .unwrap()
                );
            }
        },
        a.drain("n1", &drain_options)
    );
    let report = report.unwrap();
    assert_eq!(
        report.evicted,
        [PodRef {
            namespace: "default".into(),
            name: "p".into()
        }]
    );
    // At least 3 + 10 + 4 token acquisitions at 20/s after the first.
    assert!(
        start.elapsed() >= Duration::from_millis(750),
        "{:?}",
        start.elapsed()
    );
    let events: Api<KubeEvent> = Api::namespaced(client, "default");
    let reasons: Vec<String> = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    // The same events through the core/v1 view (what `kubectl get events` reads).
    let core: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(ts.client(), "default");
    let core_events = core.list(&Default::default()).await.unwrap().items;
    let drained = core_events
        .iter()
        .find(|e| e.reason.as_deref() == Some("Drained"))
        .expect("core/v1 view");
    assert_eq!(drained.involved_object.name.as_deref(), Some("n1"));
    assert!(
        drained
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("1 evicted"),
        "{drained:?}"
    );
    for want in ["Taint", "Drain", "Drained"] {
        assert!(
            reasons.contains(&want.to_owned()),
            "{want} missing from {reasons:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cordon_with_is_one_write_after_a_get_and_survives_a_concurrent_writer() {
    let ts = TestSim::start(SimConfig::default()).await;
    let mut n = node("n1");
    n["spec"]["taints"] = json!([{"key": "someone-else/keep", "value": "x", "effect": "NoSchedule"}]);
    ts.sim().insert(n).unwrap();
    ts.sim().insert(node("n2")).unwrap();
    let limiter = spot_k8s::RateLimiter::unlimited();
    let reporter = Reporter {
        controller: "spot-nth".into(),
        instance: None,
    };
    let actions = KubeNodeActions::new(ts.client())
        .with_rate_limiter(limiter.clone())
        .with_event_annotations([("team".to_owned(), "spot".to_owned())].into())
        .with_events(reporter);
    let with = CordonWith {
        annotations: [("nth.spot.dev/phase".to_owned(), Some("cordoned".to_owned()))].into(),
        labels: [(
            "node.kubernetes.io/exclude-from-external-load-balancers".to_owned(),
            Some("x".to_owned()),
        )]
        .into(),
        taint: Some(Taint::new("spot/itn", "e1", TaintEffect::NoSchedule)),
    };
    let state = actions.get("n1").await.unwrap();
    assert!(!state.unschedulable);
    let before = limiter.granted(Priority::High);
    actions.cordon_with("n1", &with).await.unwrap();
    // The node read by `get` is written back: one replace, then the Taint and Cordon events.
    assert_eq!(limiter.granted(Priority::High) - before, 3);
    let state = actions.get("n1").await.unwrap();
    assert!(state.unschedulable);
    assert_eq!(state.annotations["nth.spot.dev/phase"], "cordoned");
    assert_eq!(
        state.labels["node.kubernetes.io/exclude-from-external-load-balancers"],
        "x"
    );
    assert_eq!(taint_keys(ts.sim(), "n1"), ["someone-else/keep", "spot/itn"]);
    // Nothing left to change: no write, no event (and no read either: the `get` above
    // serves).
    let before = limiter.granted(Priority::High);
    actions.cordon_with("n1", &with).await.unwrap();
    assert_eq!(limiter.granted(Priority::High) - before, 0);
    // Without a recent read: one read, still no write.
    actions.cordon_with("n1", &with).await.unwrap();
    assert_eq!(limiter.granted(Priority::High) - before, 1);

    // Another writer changes n2 between the get and the cordon: the stale copy gets a 409,
    // the node is read again, and neither write is lost.
    actions.get("n2").await.unwrap();
    let mut other = ts.sim().get("v1", "Node", "", "n2").unwrap();
    other["spec"]["taints"] = json!([{"key": "late/writer", "value": "y", "effect": "NoExecute"}]);
    ts.sim().put(other).unwrap();
    actions.cordon_with("n2", &with).await.unwrap();
    assert_eq!(taint_keys(ts.sim(), "n2"), ["late/writer", "spot/itn"]);
    assert!(actions.get("n2").await.unwrap().unschedulable);
    assert!(matches!(
        actions.cordon_with("missing", &with).await,
        Err(Error::NodeNotFound(_))
    ));

    // Every Event carries the extra annotations.
    let events: Api<KubeEvent> = Api::namespaced(ts.client(), "default");
    let list = events.list(&Default::default()).await.unwrap().items;
    let reasons: Vec<&str> = list.iter().filter_map(|e| e.reason.as_deref()).collect();
    assert!(
        reasons.contains(&"Cordon") && reasons.contains(&"Taint"),
        "{reasons:?}"
    );
    for e in &list {
        assert_eq!(
            e.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("team"))
                .map(String::as_str),
            Some("spot"),
            "{e:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drains_share_one_pod_watch_that_stops_when_idle() {
    let ts = TestSim::start(SimConfig {
        kubelet: true,
        ..SimConfig::default()
    })
    .await;
    drain_fixture(&ts);
    let actions = KubeNodeActions::new(ts.client()).with_config(ActionsConfig {
        pod_source: PodSource::Shared,
        shared_watch_linger: Duration::from_millis(400),
        ..fast()
    });
    let options = DrainOptions {
        timeout: Duration::from_secs(20),
        skip_pod: Some(PodRef {
            namespace: "kube-system".into(),
            name: "nth".into(),
        }),
        ..DrainOptions::default()
    };
    let (r1, r2) = tokio::join!(actions.drain("n1", &options), actions.drain("n2", &options));
    let (r1, r2) = (r1.unwrap(), r2.unwrap());
    let mut evicted: Vec<String> = r1.evicted.iter().map(ToString::to_string).collect();
    evicted.sort();
    assert_eq!(
        evicted,
        [
            "default/scratch",
            "default/web-0",
            "default/web-1",
            "default/web-2"
        ]
    );
    assert_eq!(r1.skipped.len(), 4, "{r1:?}");
    assert_eq!(r2.evicted.len(), 2, "{r2:?}");
    let sim = ts.sim();
    assert_eq!(pods_on(sim, "n1"), ["ds-n1", "kube-proxy-n1", "leaving", "nth"]);
    assert!(pods_on(sim, "n2").is_empty());
    // A pod bound after the watch started is seen by the next drain.
    sim.insert(running_pod("default", "late", "n2", json!({})))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = actions.drain("n2", &options).await.unwrap();
    assert_eq!(r.evicted.len(), 1, "{r:?}");
    // The watch outlives the last drain by the linger, then stops; a later drain starts it
    // again.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    sim.insert(running_pod("default", "later", "n2", json!({})))
        .unwrap();
    let r = actions.drain("n2", &options).await.unwrap();
    assert_eq!(
        r.evicted,
        [PodRef {
            namespace: "default".into(),
            name: "later".into()
        }]
    );
    assert!(
        actions.drain("missing", &options).await.is_err(),
        "a missing node is not drained"
    );
}
