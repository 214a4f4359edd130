//! The interruption-to-replacement figures of `cargo xtask bench` (issue 8: "message received
//! to replacement NodeClaim created under 1 s at p99"), from the release-built example
//! `spot-provisioner/examples/bench_interruption.rs`: the real interruption controller and
//! provisioner against spot-kube-sim over HTTP and the simulated cloud. It reports p50 and
//! p99 for notices sent one at a time and for a wave sent at once, and the controller's own
//! mean; the p99 figures carry the goal and its verdict.

use std::path::Path;
use std::time::Duration;

use super::{Figure, run_bench};

/// The goal on every p99, in milliseconds.
const GOAL_MS: f64 = 1000.0;

/// (nodes, single notices, wave size) of a run.
fn size(quick: bool) -> (usize, usize, usize) {
    if quick { (40, 10, 20) } else { (100, 20, 50) }
}

/// Every figure the run must produce: (name, unit).
fn expected(quick: bool) -> Vec<String> {
    let (nodes, _, wave) = size(quick);
    let base = format!("interruption_to_replacement_{nodes}_nodes");
    vec![
        format!("{base}.single.p50"),
        format!("{base}.single.p99"),
        format!("{base}.wave_{wave}.p50"),
        format!("{base}.wave_{wave}.p99"),
        format!("{base}.controller_mean"),
    ]
}

/// Runs `target/release/examples/bench_interruption` (built by the caller).
pub(super) fn figures(root: &Path, quick: bool) -> Vec<Figure> {
    let (nodes, singles, wave) = size(quick);
    let exe = root.join("target/release/examples/bench_interruption");
    let (nodes, singles, wave) = (nodes.to_string(), singles.to_string(), wave.to_string());
    let expected = expected(quick);
    let got = run_bench(
        &exe,
        &[
            "--nodes",
            &nodes,
            "--singles",
            &singles,
            "--wave",
            &wave,
            "--timeout",
            "300",
        ],
        Duration::from_secs(if quick { 150 } else { 600 }),
        &expected[1],
    );
    finish(got, &expected)
}

/// Keeps the expected figures in order (a missing one says why), with goals and verdicts.
fn finish(mut got: Vec<Figure>, expected: &[String]) -> Vec<Figure> {
    let why = got
        .iter()
        .find(|f| f.value.is_none())
        .and_then(|f| f.note.clone())
        .unwrap_or_else(|| "not reported by bench_interruption".to_owned());
    expected
        .iter()
        .map(|name| {
            let mut f = match got.iter().position(|f| f.name == *name) {
                Some(i) => got.swap_remove(i),
                None => Figure::missing(name.as_str(), "ms", why.trim_start_matches("not measured: ")),
            };
            if name.ends_with(".p99") {
                let verdict = match f.value {
                    Some(v) if v < GOAL_MS => "pass",
                    Some(_) => "FAIL",
                    None => "n/a",
                };
                f.goal = Some(format!("< {GOAL_MS:.0} ms: {verdict}"));
            }
            f
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p99_figures_get_the_goal_and_missing_ones_say_why() {
        let expected = expected(true);
        assert_eq!(expected[1], "interruption_to_replacement_40_nodes.single.p99");
        let out = finish(
            vec![
                Figure::new(expected[1].as_str(), Some(35.0), "ms", None),
                Figure::new(expected[3].as_str(), Some(1500.0), "ms", None),
                Figure::new(expected[0].as_str(), Some(20.0), "ms", None),
            ],
            &expected,
        );
        let names: Vec<&str> = out.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, expected.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(out[0].goal, None);
        assert_eq!(out[1].goal.as_deref(), Some("< 1000 ms: pass"));
        assert_eq!(out[3].goal.as_deref(), Some("< 1000 ms: FAIL"));
        assert_eq!(out[4].value, None);
        assert!(
            out[4]
                .note
                .as_deref()
                .is_some_and(|n| n.starts_with("not measured"))
        );
    }
}
