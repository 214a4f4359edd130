//! Leader election over HTTP against spot-kube-sim: one leader at a time, hand-over on
//! release, take-over after expiry.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::TestSim;
use spot_core::clock::TokioClock;
use spot_core::leader::LeaderGate;
use spot_k8s::lease::{LeaseElector, LeaseLock, LeaseTiming};
use spot_k8s::sim::SimConfig;

const TIMING: LeaseTiming = LeaseTiming {
    lease_duration: Duration::from_millis(1500),
    renew_deadline: Duration::from_millis(1000),
    retry_period: Duration::from_millis(200),
};

fn elector(sim: &TestSim, identity: &str) -> LeaseElector {
    let lock = LeaseLock::new(
        sim.client(),
        "kube-system",
        "spot-nth",
        identity,
        TIMING,
        Arc::new(TokioClock::new()),
    )
    .expect("valid timing");
    LeaseElector::start(lock)
}

async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

#[tokio::test]
async fn one_leader_handover_on_release_and_takeover_after_expiry() {
    let sim = TestSim::start(SimConfig::default()).await;
    let a = elector(&sim, "replica-a");
    within("a leads", a.acquire()).await.unwrap();
    let b = elector(&sim, "replica-b");

    // For several lease durations both run: never two leaders.
    for _ in 0..30 {
        assert!(
            a.is_leader() && !b.is_leader(),
            "a={} b={}",
            a.is_leader(),
            b.is_leader()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Release hands over at once (well before the lease would expire).
    a.release().await;
    within("b leads after release", b.acquire()).await.unwrap();
    assert!(!a.is_leader() || !b.is_leader());

    // A leader that vanishes without releasing is replaced after the lease duration.
    drop(b);
    let c = elector(&sim, "replica-c");
    within("c leads after expiry", c.acquire()).await.unwrap();

    let lease: serde_json::Value = serde_json::from_str(
        &sim.kubectl_ok(&["get", "lease", "spot-nth", "-n", "kube-system", "-o", "json"])
            .await,
    )
    .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "replica-c");
    assert_eq!(lease["spec"]["leaseTransitions"], 2);
}

#[tokio::test]
async fn timing_must_be_ordered() {
    let sim = TestSim::start(SimConfig::default()).await;
    let bad = LeaseTiming {
        renew_deadline: Duration::from_secs(20),
        ..LeaseTiming::default()
    };
    let err = LeaseLock::new(sim.client(), "ns", "l", "me", bad, Arc::new(TokioClock::new())).unwrap_err();
    assert!(
        err.to_string()
            .contains("retry_period < renew_deadline < lease_duration"),
        "{err}"
    );
}
