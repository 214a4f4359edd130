//! Scheduling throughput on Karpenter's benchmark shape (400 instance types; generic, zonal
//! spread, hostname spread, zonal affinity and hostname anti-affinity pods) and on the
//! shape of kubernetes-sigs/karpenter#3152 (2,000 pending pods, 1,000 nodes, 20 NodePools).
//!
//! Like Karpenter's `BenchmarkScheduling*`, only `Scheduler::solve` is timed; the scheduler
//! is built once per workload. Run in release:
//!
//! ```text
//! cargo run --release -p spot-core --example bench_scheduling [-- PODS...]
//! ```
//!
//! With pod counts as arguments, only the benchmark shape runs, at those counts.

use std::time::Duration;

use spot_core::scheduling::bench_shape::{issue_3152_shape, karpenter_benchmark};
use spot_core::scheduling::{PreferencePolicy, Scheduler, SchedulerOptions, Solution};

/// Runs `solve` until at least a second has passed (and at least twice), returning the
/// fastest run and its solution.
fn time<F: FnMut() -> Solution>(mut solve: F) -> (Duration, Solution) {
    let mut best = Duration::MAX;
    let mut total = Duration::ZERO;
    let mut runs = 0;
    let mut last = Solution::default();
    while runs < 2 || total < Duration::from_secs(1) {
        let start = tokio::time::Instant::now();
        last = solve();
        let elapsed = start.elapsed();
        best = best.min(elapsed);
        total += elapsed;
        runs += 1;
    }
    (best, last)
}

fn report(name: &str, pods: usize, elapsed: Duration, solution: &Solution) {
    println!(
        "{name:<28} {pods:>6} pods  {:>9.1} ms  {:>9.0} pods/s  {:>5} claims  {:>5} on existing  {:>4} unschedulable  {:>5} evaluated  ${:.2}/h",
        elapsed.as_secs_f64() * 1000.0,
        pods as f64 / elapsed.as_secs_f64(),
        solution.new_claims.len(),
        solution.existing.len(),
        solution.unschedulable.len(),
        solution.pods_evaluated,
        solution.new_claims_price(),
    );
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let full = args.is_empty();
    let counts = if full { vec![1000, 5000, 20_000] } else { args };
    for &pods in &counts {
        let (templates, workload) = karpenter_benchmark(pods, 42);
        let start = tokio::time::Instant::now();
        let mut scheduler = Scheduler::new(templates, Vec::new(), Vec::new(), SchedulerOptions::default());
        if pods == counts[0] {
            println!(
                "Scheduler::new, 1 NodePool x 400 types: {:.1} ms",
                start.elapsed().as_secs_f64() * 1000.0
            );
        }
        let (elapsed, solution) = time(|| scheduler.solve(workload.clone()));
        report("karpenter benchmark", pods, elapsed, &solution);
    }
    if !full {
        return;
    }
    for policy in [PreferencePolicy::Respect, PreferencePolicy::Ignore] {
        // Karpenter's RespectPreferences / IgnorePreferences cases: 4,000 pods whose spread
        // constraints are soft.
        let (templates, mut workload) = karpenter_benchmark(4000, 42);
        for pod in &mut workload {
            let pod = std::sync::Arc::make_mut(pod);
            for c in &mut pod.topology_spread {
                c.when_unsatisfiable = spot_core::pod::WhenUnsatisfiable::ScheduleAnyway;
            }
            for term in std::mem::take(&mut pod.pod_affinity) {
                pod.preferred_pod_affinity.push((50, term));
            }
        }
        let options = SchedulerOptions {
            preference_policy: policy,
            ..SchedulerOptions::default()
        };
        let mut scheduler = Scheduler::new(templates, Vec::new(), Vec::new(), options);
        let (elapsed, solution) = time(|| scheduler.solve(workload.clone()));
        report(&format!("preferences {policy:?}"), 4000, elapsed, &solution);
    }
    let shape = issue_3152_shape(3152);
    let pods = shape.pods.len();
    let start = tokio::time::Instant::now();
    let mut scheduler = Scheduler::new(
        shape.templates,
        shape.existing,
        shape.daemonsets,
        SchedulerOptions::default(),
    );
    println!(
        "Scheduler::new, 20 NodePools x 400 types, 1,000 nodes: {:.1} ms",
        start.elapsed().as_secs_f64() * 1000.0
    );
    let (elapsed, solution) = time(|| scheduler.solve(shape.pods.clone()));
    report("issue 3152 shape", pods, elapsed, &solution);
}
