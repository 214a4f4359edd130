//! Consolidation on generated 1,000-node clusters ([`spot_core::disruption::bench_shape`]),
//! for `cargo xtask bench` (run in release mode): the time to evaluate every single-node
//! consolidation candidate (Karpenter gives up after 3 minutes and stalls near 700 nodes),
//! on a cluster with room to consolidate and on one in steady state, and the time of
//! multi-node consolidation.
//!
//! `bench_consolidation [NODES] [SEED]` prints one JSON object per figure and line on stdout:
//! `{"name": ..., "value": ..., "unit": ..., "note": ...}`; details go to stderr.

use std::collections::BTreeMap;

use serde_json::json;
use spot_core::disruption::bench_shape::{self, NOW};
use spot_core::disruption::consolidation::{Consolidator, Skip};
use spot_core::disruption::{ClusterState, ConsolidationOptions, Decision};
use tokio::time::Instant;

/// Describes a generated cluster on stderr; returns its pod count.
fn describe(what: &str, cluster: &ClusterState) -> usize {
    let pods: usize = cluster.nodes.iter().map(|n| n.pods.len()).sum();
    let (requested, allocatable) = cluster.nodes.iter().fold((0i64, 0i64), |(r, a), n| {
        (
            r + n.pods.iter().map(|p| p.requests.cpu_millis).sum::<i64>(),
            a + n.allocatable.cpu_millis,
        )
    });
    eprintln!(
        "bench_consolidation: {what}: {} nodes, {pods} pods, {} NodePools, {:.1} % of the allocatable CPU requested",
        cluster.nodes.len(),
        cluster.pools.len(),
        100.0 * requested as f64 / allocatable.max(1) as f64
    );
    pods
}

/// Evaluates every single-node candidate; returns the seconds taken.
fn single_node(what: &str, cluster: &ClusterState, options: &ConsolidationOptions) -> f64 {
    let started = Instant::now();
    let mut consolidator = Consolidator::new(cluster, options, NOW);
    let prepared = started.elapsed().as_secs_f64();
    let evaluations = consolidator.single_node_evaluations();
    let seconds = started.elapsed().as_secs_f64();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for e in &evaluations {
        let key = match &e.result {
            Ok(cmd) if cmd.decision() == Decision::Delete => "delete".to_owned(),
            Ok(_) => "replace".to_owned(),
            Err(Skip::Budget) => "budget".to_owned(),
            Err(Skip::Balanced) => "balanced".to_owned(),
            Err(Skip::NoOp(why)) => {
                let why = why.to_string();
                format!("no-op: {}", why.split([':', '$']).next().unwrap_or(""))
            }
        };
        *outcomes.entry(key).or_default() += 1;
    }
    eprintln!(
        "bench_consolidation: {what}: single-node: {} candidates in {seconds:.3} s (prepare {prepared:.3} s); \
         {:?}; {outcomes:?}",
        evaluations.len(),
        consolidator.stats(),
    );
    seconds
}

fn main() {
    let mut args = std::env::args().skip(1);
    let nodes: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let seed: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(42);
    let options = ConsolidationOptions::default();

    let room = bench_shape::cluster(nodes, seed);
    let pods = describe("room to consolidate", &room);
    let steady = bench_shape::steady_state(nodes, seed);
    let steady_pods = describe("steady state", &steady);

    let single_room = single_node("room to consolidate", &room, &options);
    let single_steady = single_node("steady state", &steady, &options);

    let started = Instant::now();
    let mut consolidator = Consolidator::new(&room, &options, NOW);
    let multi = consolidator.multi_node();
    let multi_time = started.elapsed().as_secs_f64();
    eprintln!(
        "bench_consolidation: room to consolidate: multi-node in {multi_time:.3} s: {}; {:?}",
        multi.as_ref().map_or("no command".to_owned(), |c| format!(
            "{:?} of {} nodes saving ${:.3}/h",
            c.decision(),
            c.candidates.len(),
            c.savings_per_hour
        )),
        consolidator.stats()
    );

    let note = |pods| format!("{nodes} nodes, {pods} pods, 3 NodePools, seed {seed}, one core");
    for (name, value, pods) in [
        (
            "consolidation: every single-node candidate (room to consolidate)",
            single_room,
            pods,
        ),
        (
            "consolidation: every single-node candidate (steady state)",
            single_steady,
            steady_pods,
        ),
        (
            "consolidation: multi-node (room to consolidate)",
            multi_time,
            pods,
        ),
    ] {
        println!(
            "{}",
            json!({"name": name, "value": value, "unit": "s", "note": note(pods)})
        );
    }
}
