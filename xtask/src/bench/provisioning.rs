//! The provisioning figures of `cargo xtask bench`, from one release-built example,
//! `spot-core/examples/bench_provisioning.rs` (with spot-core's `lp` feature), run once per
//! size so each process's peak memory is that size's:
//!
//! - scheduling throughput and peak RSS on Karpenter's benchmark shape (1,000, 5,000 and
//!   20,000 pods; `--quick`: 1,000 and 5,000);
//! - the kubernetes-sigs/karpenter#3152 shape (2,000 pending pods, 1,000 nodes, 20 NodePools):
//!   wall time and pods evaluated;
//! - the packing certification suite against the LP lower bound, with the first-fit-decreasing
//!   baseline of the same run;
//! - every single-node consolidation candidate of a 1,000-node cluster (`--quick`: 300).
//!
//! The example is built with the provisioning side (`bench.rs`, with spot-core's `lp`),
//! apart from spot-nth so that `lp` is not unified into the spot-nth binary whose size is
//! measured. Each figure gets its anchor and goal here, and the goal ends with
//! the verdict (`pass`, `FAIL`, or `n/a` when not measured).

use std::path::Path;
use std::time::Duration;

use super::{Figure, run_bench};

/// Karpenter's `Scheduler.Solve` times in PR #2486 (Apple M3 Pro): (pods, seconds).
const KARPENTER_SOLVE: [(usize, f64); 3] = [(1000, 0.777), (5000, 3.74), (20_000, 20.2)];
const KARPENTER_2486: &str = "kubernetes-sigs/karpenter PR #2486, Scheduler.Solve on an Apple M3 Pro: 1,000 pods 777 ms, 5,000 pods 3.74 s, 20,000 pods 20.2 s (≈1,300 pods/s)";
const KARPENTER_MEMORY: &str = "Karpenter's perf e2e ceiling: controller P95 memory < 260 MB (248 MiB) for the 1,000-pod basic scale-out (a whole controller, not one solve)";
const KARPENTER_3152: &str = "kubernetes-sigs/karpenter#3152 (v1.14.0, ~2,170 pending pods, ~1,060 nodes, 20 NodePools): the 60 s solve timeout hit after 363 pods were evaluated";
const KARPENTER_CONSOLIDATION: &str = "Karpenter: single-node consolidation gives up at its 3-minute timeout and stalls near 700 nodes (kubernetes-sigs/karpenter#1970)";
const FFD_BASELINE: &str = "spot-core's Karpenter-like first_fit_decreasing on the same cases, same run";
/// The pending pods of the #3152 shape.
const ISSUE_3152_PODS: f64 = 2000.0;
const MB_PER_MIB: f64 = 1.048_576;

/// Runs `bench_provisioning` (built by the caller; `build_error` says why it was not) at the
/// `--quick` or full sizes and returns its figures with anchors, goals and verdicts. A
/// figure that could not be produced is reported with a null value and a note saying why.
pub(super) fn figures(root: &Path, quick: bool, build_error: Option<&String>) -> Vec<Figure> {
    let pods: &[usize] = if quick {
        &[1000, 5000]
    } else {
        &[1000, 5000, 20_000]
    };
    let nodes = if quick { 300 } else { 1000 };
    // Every figure the runs below must produce: (name, unit).
    let mut expected: Vec<(String, &str)> = Vec::new();
    for n in pods {
        expected.push((
            format!("scheduling_karpenter_shape_{n}_pods.pods_per_second"),
            "pods/s",
        ));
        expected.push((format!("scheduling_karpenter_shape_{n}_pods.peak_rss"), "MiB"));
    }
    expected.push(("scheduling_issue_3152.wall_time".to_owned(), "s"));
    expected.push(("scheduling_issue_3152.pods_evaluated".to_owned(), "pods"));
    for stat in [
        "max_pack_over_bound",
        "mean_pack_over_bound",
        "mean_ffd_over_pack",
    ] {
        expected.push((format!("packing_suite.{stat}"), "ratio"));
    }
    for shape in ["room_to_consolidate", "steady_state"] {
        expected.push((
            format!("consolidation_{nodes}_nodes_{shape}.single_node_all_candidates"),
            "s",
        ));
    }

    let mut figures = Vec::new();
    if let Some(e) = build_error {
        figures.extend(
            expected
                .iter()
                .map(|(name, unit)| Figure::missing(name.as_str(), unit, e)),
        );
        return figures;
    }
    let exe = root.join("target/release/examples/bench_provisioning");
    let limit = |seconds: u64| Duration::from_secs(if quick { seconds } else { 3 * seconds });
    for n in pods {
        let n = n.to_string();
        figures.extend(run_bench(
            &exe,
            &["scheduling", &n],
            limit(120),
            &format!("scheduling_karpenter_shape_{n}_pods.pods_per_second"),
        ));
    }
    // The solve itself stops at Karpenter's 60 s timeout.
    figures.extend(run_bench(
        &exe,
        &["issue-3152"],
        Duration::from_secs(120),
        "scheduling_issue_3152.wall_time",
    ));
    figures.extend(run_bench(
        &exe,
        &["packing"],
        limit(120),
        "packing_suite.max_pack_over_bound",
    ));
    let nodes_arg = nodes.to_string();
    figures.extend(run_bench(
        &exe,
        &["consolidation", &nodes_arg],
        limit(120),
        &format!("consolidation_{nodes}_nodes_room_to_consolidate.single_node_all_candidates"),
    ));
    finish(figures, &expected)
}

/// Folds the baseline's ratios into the packing anchors, adds a missing figure for every
/// expected one not reported, sets anchors, goals and verdicts, and keeps the expected order.
fn finish(mut figures: Vec<Figure>, expected: &[(String, &str)]) -> Vec<Figure> {
    let value =
        |figures: &[Figure], name: &str| figures.iter().find(|f| f.name == name).and_then(|f| f.value);
    let ffd_max = value(&figures, "packing_suite.max_ffd_over_bound");
    let ffd_mean = value(&figures, "packing_suite.mean_ffd_over_bound");
    figures.retain(|f| expected.iter().any(|(name, _)| *name == f.name));
    let mut out = Vec::with_capacity(expected.len());
    for (name, unit) in expected {
        let mut figure = match figures.iter().position(|f| f.name == *name) {
            Some(i) => figures.swap_remove(i),
            None => Figure::missing(name.as_str(), unit, "not reported by bench_provisioning"),
        };
        figure.unit = (*unit).to_owned();
        annotate(&mut figure, ffd_max, ffd_mean);
        out.push(figure);
    }
    let failed: Vec<&str> = out
        .iter()
        .filter(|f| f.goal.as_deref().is_some_and(|g| !g.ends_with(": pass")))
        .map(|f| f.name.as_str())
        .collect();
    eprintln!(
        "xtask: provisioning: {} of {} figures meet their goal{}",
        out.len() - failed.len(),
        out.len(),
        if failed.is_empty() {
            String::new()
        } else {
            format!("; not met or not measured: {}", failed.join(", "))
        }
    );
    out
}

/// A goal and whether the value meets it.
struct Goal {
    text: String,
    met: fn(f64) -> bool,
}

impl Goal {
    fn new(text: &str, met: fn(f64) -> bool) -> Goal {
        Goal {
            text: text.to_owned(),
            met,
        }
    }
}

/// Sets the figure's anchor and its goal followed by the verdict.
fn annotate(f: &mut Figure, ffd_max: Option<f64>, ffd_mean: Option<f64>) {
    let name = f.name.clone();
    let (anchor, source, goal): (Option<f64>, String, Goal) = if let Some((pods, what)) = name
        .strip_prefix("scheduling_karpenter_shape_")
        .and_then(|rest| rest.split_once("_pods."))
    {
        let pods: usize = pods.parse().unwrap_or(0);
        if what == "pods_per_second" {
            let karpenter = KARPENTER_SOLVE
                .iter()
                .find(|(n, _)| *n == pods)
                .map_or(1300.0, |(n, s)| *n as f64 / s);
            (
                Some(karpenter.round()),
                KARPENTER_2486.to_owned(),
                Goal::new("≥ 10,000 pods/s", |v| v >= 10_000.0),
            )
        } else if pods <= 1000 {
            (
                Some(248.0),
                KARPENTER_MEMORY.to_owned(),
                Goal::new("< 100 MB (95.4 MiB) for 1,000 pods", |v| v * MB_PER_MIB < 100.0),
            )
        } else {
            (
                Some(248.0),
                KARPENTER_MEMORY.to_owned(),
                Goal::new("< 500 MB (477 MiB), the 20,000-pod target", |v| {
                    v * MB_PER_MIB < 500.0
                }),
            )
        }
    } else if name == "scheduling_issue_3152.wall_time" {
        (
            Some(60.0),
            KARPENTER_3152.to_owned(),
            Goal::new("< 5 s", |v| v < 5.0),
        )
    } else if name == "scheduling_issue_3152.pods_evaluated" {
        (
            Some(363.0),
            KARPENTER_3152.to_owned(),
            Goal::new("every pending pod (2,000)", |v| v >= ISSUE_3152_PODS),
        )
    } else if name == "packing_suite.max_pack_over_bound" {
        (
            ffd_max,
            format!("{FFD_BASELINE}: max ffd/bound"),
            Goal::new("≤ 1.10", |v| v <= 1.10),
        )
    } else if name == "packing_suite.mean_pack_over_bound" {
        (
            ffd_mean,
            format!("{FFD_BASELINE}: mean ffd/bound"),
            Goal::new("≤ 1.03", |v| v <= 1.03),
        )
    } else if name == "packing_suite.mean_ffd_over_pack" {
        (
            Some(1.0),
            format!("{FFD_BASELINE}: parity"),
            Goal::new("> 1 (cheaper than FFD)", |v| v > 1.0),
        )
    } else if name.starts_with("consolidation_") {
        (
            Some(180.0),
            KARPENTER_CONSOLIDATION.to_owned(),
            Goal::new("< 10 s", |v| v < 10.0),
        )
    } else {
        return;
    };
    let verdict = match f.value {
        Some(v) if (goal.met)(v) => "pass",
        Some(_) => "FAIL",
        None => "n/a",
    };
    f.anchor_value = anchor;
    f.anchor_source = Some(source);
    f.goal = Some(format!("{}: {verdict}", goal.text));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figure(name: &str, value: f64, unit: &str) -> Figure {
        Figure::new(name, Some(value), unit, None)
    }

    #[test]
    fn figures_get_anchors_goals_and_verdicts() {
        let expected: Vec<(String, &str)> = [
            ("scheduling_karpenter_shape_1000_pods.pods_per_second", "pods/s"),
            ("scheduling_karpenter_shape_1000_pods.peak_rss", "MiB"),
            ("scheduling_issue_3152.pods_evaluated", "pods"),
            ("packing_suite.mean_pack_over_bound", "ratio"),
            ("packing_suite.mean_ffd_over_pack", "ratio"),
            (
                "consolidation_300_nodes_steady_state.single_node_all_candidates",
                "s",
            ),
        ]
        .into_iter()
        .map(|(n, u)| (n.to_owned(), u))
        .collect();
        let out = finish(
            vec![
                figure("packing_suite.mean_ffd_over_bound", 1.9, "ratio"),
                figure(
                    "scheduling_karpenter_shape_1000_pods.pods_per_second",
                    60_000.0,
                    "pods/s",
                ),
                figure("scheduling_karpenter_shape_1000_pods.peak_rss", 120.0, "MiB"),
                figure("scheduling_issue_3152.pods_evaluated", 2000.0, "pods"),
                figure("packing_suite.mean_pack_over_bound", 1.012, "ratio"),
                figure("packing_suite.mean_ffd_over_pack", 1.6, "ratio"),
            ],
            &expected,
        );
        let names: Vec<&str> = out.iter().map(|f| f.name.as_str()).collect();
        let wanted: Vec<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names, wanted,
            "the expected figures, in order, the ffd ones folded"
        );
        assert_eq!(out[0].anchor_value, Some(1287.0));
        assert_eq!(out[0].goal.as_deref(), Some("≥ 10,000 pods/s: pass"));
        assert!(out[1].goal.as_deref().is_some_and(|g| g.ends_with(": FAIL")));
        assert_eq!(out[2].anchor_value, Some(363.0));
        assert!(out[2].goal.as_deref().is_some_and(|g| g.ends_with(": pass")));
        assert_eq!(out[3].anchor_value, Some(1.9));
        assert_eq!(out[3].goal.as_deref(), Some("≤ 1.03: pass"));
        assert_eq!(out[4].goal.as_deref(), Some("> 1 (cheaper than FFD): pass"));
        assert_eq!(out[5].value, None);
        assert_eq!(out[5].anchor_value, Some(180.0));
        assert_eq!(out[5].goal.as_deref(), Some("< 10 s: n/a"));
        assert!(
            out[5]
                .note
                .as_deref()
                .is_some_and(|n| n.starts_with("not measured"))
        );
    }
}
