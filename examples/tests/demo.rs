//! The demo's core at a small scale: every interruption is handled, through the queue by
//! the provisioner and through IMDS by spot-nth, and no pod is lost. Only outcomes are
//! checked, never how long anything took.

use std::sync::Arc;
use std::time::Duration;

use spot_examples::demo::{self, Kind, Options, Quiet};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn small_demo_handles_every_interruption_without_losing_a_pod() {
    spot_nth::install_crypto_provider();
    let options = Options {
        scale: 0.5,
        seed: 7,
        // A slow clock: the notice lasts 30 s of real time, ample on a loaded machine.
        speed: 4.0,
        interruptions: 2,
        phase_limit: Duration::from_secs(600),
    };
    let demo = demo::run(&options, Arc::new(Quiet))
        .await
        .expect("the demo runs to its summary");
    let s = &demo.summary;
    let report = s.render();
    println!("{report}");
    assert_eq!(s.pods_lost, 0, "{report}");
    assert_eq!(s.running(), s.pods(), "{report}");
    assert!(s.failures().is_empty(), "{:?}\n{report}", s.failures());

    // Two notices and a rebalance recommendation, each handled without loss.
    let kinds: Vec<Kind> = s.handled.iter().map(|h| h.victim.kind).collect();
    assert_eq!(kinds, [Kind::Notice, Kind::Notice, Kind::Rebalance], "{report}");
    assert_eq!(s.handled_count(), 3, "{report}");
    // spot-nth polls IMDS every 500 ms; a node whose pods fit elsewhere can be drained and
    // terminated before that, but one waiting for its replacement (seconds) cannot.
    for h in s.handled.iter().filter(|h| !h.replacements.is_empty()) {
        assert!(h.nth, "spot-nth did not act on {h:?}\n{report}");
    }
    assert_eq!(s.published, 3, "{report}");
    assert_eq!(s.queue_left, 0, "{report}");
    for h in &s.handled {
        assert!(h.replaced && h.lost == 0, "{h:?}");
    }
    // The interrupted instances are gone, and the cloud saw the notices.
    let stats = demo.world.cloud.stats();
    assert_eq!(stats.interruption_notices, 2);
    assert_eq!(stats.rebalance_recommendations, 1);
    for h in &s.handled {
        let instance = demo.world.cloud.instance(&h.victim.instance).expect("instance");
        assert!(instance.terminated_at.is_some(), "{instance:?}");
    }
    // Savings are computed against the same nodes on demand.
    assert!(s.on_demand_per_hour > s.cost_per_hour, "{report}");
}

#[test]
fn bad_options_name_the_flag() {
    let bad = |o: Options| o.validate().unwrap_err().to_string();
    assert!(
        bad(Options {
            speed: 0.0,
            ..Options::default()
        })
        .starts_with("--speed 0")
    );
    assert!(
        bad(Options {
            scale: -1.0,
            ..Options::default()
        })
        .starts_with("--scale -1")
    );
    assert!(
        bad(Options {
            interruptions: 0,
            ..Options::default()
        })
        .starts_with("--interruptions 0")
    );
}
