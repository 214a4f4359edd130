//! Provisioning benchmarks for `cargo xtask bench` (run in release mode, with `--features lp`):
//! each subcommand prints one JSON object per figure and line on stdout
//! (`{"name", "value", "unit", "note"}`, a null value when it could not be measured);
//! progress goes to stderr. Run every size as its own process so the peak memory is that size's.
//!
//! ```text
//! bench_provisioning scheduling PODS [SEED]   # Karpenter's benchmark shape: pods/s, peak RSS
//! bench_provisioning issue-3152 [SEED]        # 2,000 pending pods, 1,000 nodes, 20 NodePools
//! bench_provisioning packing                  # the certification suite against the LP bound
//! bench_provisioning consolidation NODES [SEED]  # every single-node candidate
//! ```
//!
//! - `scheduling`: [`karpenter_benchmark`] (400 synthetic types; pods split evenly into
//!   generic, zonal spread, hostname spread, zonal self-affinity and hostname anti-affinity).
//!   Like Karpenter's `BenchmarkScheduling*`, only `Scheduler::solve` is timed, over the
//!   same scheduler, until at least a second has passed (at least twice); pods per second is
//!   the pod count over the mean solve time. Peak memory is the process's `VmHWM` at the end
//!   (workload, scheduler and every solve included).
//! - `issue-3152`: [`issue_3152_shape`], with Karpenter's 1-minute solve timeout; the wall
//!   time covers `Scheduler::new` and one `solve`, and the pods evaluated are the solve's
//!   `pods_evaluated`.
//! - `packing`: for every case of [`certification_suite`], the cost of [`packing::pack`] and
//!   of the Karpenter-like [`packing::first_fit_decreasing`] over [`packing::lower_bound`];
//!   max and mean pack/bound, the baseline's max and mean, and mean ffd/pack.
//! - `consolidation`: the time to evaluate every single-node consolidation candidate
//!   (`Consolidator::new` included) of [`bench_shape::cluster`] (room to consolidate) and
//!   [`bench_shape::steady_state`].

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use spot_core::disruption::bench_shape::{self, NOW};
use spot_core::disruption::consolidation::{Consolidator, Skip};
use spot_core::disruption::{ClusterState, ConsolidationOptions, Decision};
use spot_core::packing::{self, certification_suite};
use spot_core::scheduling::bench_shape::{issue_3152_shape, karpenter_benchmark};
use spot_core::scheduling::{Scheduler, SchedulerOptions, Solution};
use tokio::time::Instant;

const USAGE: &str = "usage: bench_provisioning (scheduling PODS [SEED] | issue-3152 [SEED] | packing | consolidation NODES [SEED])";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize| args.get(i).and_then(|a| a.parse::<u64>().ok());
    let seed = |i: usize| number(i).unwrap_or(42);
    let figures = match (args.first().map(String::as_str), number(1)) {
        (Some("scheduling"), Some(pods)) => scheduling(pods as usize, seed(2)),
        (Some("issue-3152"), _) => issue_3152(number(1).unwrap_or(3152)),
        (Some("packing"), _) => packing_suite(),
        (Some("consolidation"), Some(nodes)) => consolidation(nodes as usize, seed(2)),
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    for figure in figures {
        println!("{figure}");
    }
}

/// One figure line.
fn figure(name: &str, value: Option<f64>, unit: &str, note: String) -> Value {
    json!({"name": name, "value": value, "unit": unit, "note": note})
}

/// The process's peak resident set size in MiB (`VmHWM` of `/proc/self/status`).
fn peak_rss_mib() -> Result<f64, String> {
    let status =
        std::fs::read_to_string("/proc/self/status").map_err(|e| format!("/proc/self/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kib| kib.parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .ok_or_else(|| "no VmHWM in /proc/self/status".to_owned())
}

/// Karpenter's scheduling benchmark shape at `pods` pods: pods per second and peak RSS.
fn scheduling(pods: usize, seed: u64) -> Vec<Value> {
    let generated = Instant::now();
    let (templates, workload) = karpenter_benchmark(pods, seed);
    let generated = generated.elapsed();
    let built = Instant::now();
    let mut scheduler = Scheduler::new(templates, Vec::new(), Vec::new(), SchedulerOptions::default());
    let built = built.elapsed();
    let mut times = Vec::new();
    let mut solution = Solution::default();
    while times.len() < 2 || times.iter().sum::<Duration>() < Duration::from_secs(1) {
        let started = Instant::now();
        solution = scheduler.solve(workload.clone());
        times.push(started.elapsed());
    }
    let mean = times.iter().sum::<Duration>().as_secs_f64() / times.len() as f64;
    let best = times.iter().min().copied().unwrap_or_default().as_secs_f64();
    eprintln!(
        "bench_provisioning: scheduling {pods} pods: generated in {:.1} ms, Scheduler::new {:.1} ms, \
         solve mean {:.1} ms / best {:.1} ms over {} runs: {} claims, {} unschedulable, ${:.2}/h",
        generated.as_secs_f64() * 1e3,
        built.as_secs_f64() * 1e3,
        mean * 1e3,
        best * 1e3,
        times.len(),
        solution.new_claims.len(),
        solution.unschedulable.len(),
        solution.new_claims_price()
    );
    let name = format!("scheduling_karpenter_shape_{pods}_pods");
    let rss = peak_rss_mib();
    vec![
        figure(
            &format!("{name}.pods_per_second"),
            Some(pods as f64 / mean),
            "pods/s",
            format!(
                "400 types, seed {seed}, Scheduler::solve only (as Karpenter's benchmark): mean {:.1} ms over {} runs \
                 (best {:.1} ms); {} new NodeClaims, {} pods unschedulable, one core",
                mean * 1e3,
                times.len(),
                best * 1e3,
                solution.new_claims.len(),
                solution.unschedulable.len()
            ),
        ),
        match rss {
            Ok(mib) => figure(
                &format!("{name}.peak_rss"),
                Some(mib),
                "MiB",
                "VmHWM of the benchmark process at the end (workload, scheduler and every solve included)"
                    .to_owned(),
            ),
            Err(why) => figure(
                &format!("{name}.peak_rss"),
                None,
                "MiB",
                format!("not measured: {why}"),
            ),
        },
    ]
}

/// The shape of kubernetes-sigs/karpenter#3152 under Karpenter's 1-minute timeout.
fn issue_3152(seed: u64) -> Vec<Value> {
    let shape = issue_3152_shape(seed);
    let pending = shape.pods.len();
    let nodes = shape.existing.len();
    let pools = shape.templates.len();
    let options = SchedulerOptions {
        timeout: Some(Duration::from_secs(60)),
        ..SchedulerOptions::default()
    };
    let started = Instant::now();
    let mut scheduler = Scheduler::new(shape.templates, shape.existing, shape.daemonsets, options);
    let built = started.elapsed().as_secs_f64();
    let solution = scheduler.solve(shape.pods);
    let wall = started.elapsed().as_secs_f64();
    let summary = format!(
        "{pending} pending pods, {nodes} nodes, {pools} NodePools, seed {seed}, 60 s solve timeout; \
         Scheduler::new {:.0} ms + solve {:.0} ms; {} on existing nodes, {} in {} new NodeClaims, {} unschedulable",
        built * 1e3,
        (wall - built) * 1e3,
        solution.existing.len(),
        solution.scheduled() - solution.existing.len(),
        solution.new_claims.len(),
        solution.unschedulable.len()
    );
    eprintln!("bench_provisioning: issue 3152: {summary}");
    vec![
        figure(
            "scheduling_issue_3152.wall_time",
            Some(wall),
            "s",
            summary.clone(),
        ),
        figure(
            "scheduling_issue_3152.pods_evaluated",
            Some(solution.pods_evaluated as f64),
            "pods",
            format!("of {pending} pending; {summary}"),
        ),
    ]
}

/// The packing certification suite against the LP lower bound.
fn packing_suite() -> Vec<Value> {
    let started = Instant::now();
    let suite = certification_suite();
    // (case, pack/bound, ffd/bound)
    let mut ratios: Vec<(String, f64, f64)> = Vec::new();
    let mut errors = Vec::new();
    for case in &suite {
        let result = (|| -> Result<(f64, f64, f64), String> {
            let bound = packing::lower_bound(&case.items, &case.types).map_err(|e| format!("bound: {e}"))?;
            let packed = packing::pack(&case.items, &case.types).map_err(|e| format!("pack: {e}"))?;
            packed
                .check(&case.items, &case.types)
                .map_err(|e| format!("invalid packing: {e}"))?;
            let ffd =
                packing::first_fit_decreasing(&case.items, &case.types).map_err(|e| format!("ffd: {e}"))?;
            ffd.check(&case.items, &case.types)
                .map_err(|e| format!("invalid baseline: {e}"))?;
            if bound <= 0.0 {
                return Err(format!("bound {bound} is not positive"));
            }
            Ok((bound, packed.cost(&case.types), ffd.cost(&case.types)))
        })();
        match result {
            Ok((bound, pack, ffd)) => {
                eprintln!(
                    "bench_provisioning: packing {:<28} {:>5} pods {:>4} types  bound {bound:>10.4}  pack {pack:>10.4} \
                     ({:.4})  ffd {ffd:>10.4} ({:.4})",
                    case.name,
                    case.items.len(),
                    case.types.len(),
                    pack / bound,
                    ffd / bound
                );
                ratios.push((case.name.clone(), pack / bound, ffd / bound));
            }
            Err(e) => {
                eprintln!("bench_provisioning: packing {}: {e}", case.name);
                errors.push(format!("{}: {e}", case.name));
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let n = ratios.len() as f64;
    let max = |f: fn(&(String, f64, f64)) -> f64| ratios.iter().map(f).reduce(f64::max);
    let mean = |f: fn(&(String, f64, f64)) -> f64| {
        (!ratios.is_empty()).then(|| ratios.iter().map(f).sum::<f64>() / n)
    };
    let per_case = ratios
        .iter()
        .map(|(name, p, f)| format!("{name} {p:.4}/{f:.4}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut note = format!(
        "{} of {} certification cases in {seconds:.1} s",
        ratios.len(),
        suite.len()
    );
    if !errors.is_empty() {
        note.push_str(&format!("; failed: {}", errors.join("; ")));
    }
    let worst = ratios
        .iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map_or(String::new(), |(name, p, _)| {
            format!("worst case {name} ({p:.4}); ")
        });
    vec![
        figure(
            "packing_suite.max_pack_over_bound",
            max(|r| r.1),
            "ratio",
            format!("{worst}{note}; per case pack/bound and ffd/bound: {per_case}"),
        ),
        figure(
            "packing_suite.mean_pack_over_bound",
            mean(|r| r.1),
            "ratio",
            note.clone(),
        ),
        figure(
            "packing_suite.max_ffd_over_bound",
            max(|r| r.2),
            "ratio",
            note.clone(),
        ),
        figure(
            "packing_suite.mean_ffd_over_bound",
            mean(|r| r.2),
            "ratio",
            note.clone(),
        ),
        figure(
            "packing_suite.mean_ffd_over_pack",
            mean(|r| r.2 / r.1),
            "ratio",
            format!(
                "cost of the Karpenter-like first-fit-decreasing baseline over pack's, per case, same run; {note}"
            ),
        ),
    ]
}

/// Evaluates every single-node candidate; returns the seconds taken and a summary.
fn single_node(cluster: &ClusterState, options: &ConsolidationOptions) -> (f64, String) {
    let started = Instant::now();
    let mut consolidator = Consolidator::new(cluster, options, NOW);
    let prepared = started.elapsed().as_secs_f64();
    let evaluations = consolidator.single_node_evaluations();
    let seconds = started.elapsed().as_secs_f64();
    let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
    for e in &evaluations {
        let key = match &e.result {
            Ok(cmd) if cmd.decision() == Decision::Delete => "delete",
            Ok(_) => "replace",
            Err(Skip::Budget) => "budget",
            Err(Skip::Balanced) => "balanced",
            Err(Skip::NoOp(_)) => "no-op",
        };
        *outcomes.entry(key).or_default() += 1;
    }
    let outcomes = outcomes
        .iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect::<Vec<_>>()
        .join(", ");
    let pods: usize = cluster.nodes.iter().map(|n| n.pods.len()).sum();
    (
        seconds,
        format!(
            "{} nodes, {pods} pods, {} NodePools; {} candidates evaluated ({outcomes}); Consolidator::new {:.0} ms; one core",
            cluster.nodes.len(),
            cluster.pools.len(),
            evaluations.len(),
            prepared * 1e3
        ),
    )
}

/// Every single-node consolidation candidate of generated `nodes`-node clusters.
fn consolidation(nodes: usize, seed: u64) -> Vec<Value> {
    let options = ConsolidationOptions::default();
    let mut out = Vec::new();
    for (what, cluster) in [
        ("room_to_consolidate", bench_shape::cluster(nodes, seed)),
        ("steady_state", bench_shape::steady_state(nodes, seed)),
    ] {
        let (seconds, summary) = single_node(&cluster, &options);
        eprintln!("bench_provisioning: consolidation {what}: {seconds:.3} s: {summary}");
        out.push(figure(
            &format!("consolidation_{nodes}_nodes_{what}.single_node_all_candidates"),
            Some(seconds),
            "s",
            format!("seed {seed}; {summary}"),
        ));
    }
    out
}
