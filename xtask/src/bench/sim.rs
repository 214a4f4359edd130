//! The spot-sim figures of `cargo xtask bench`: the wall time of the release `spot-sim`
//! binary simulating a workload of about 10,000 nodes at its peak over 7 simulated days
//! (issue 9: "10,000 simulated nodes over 7 simulated days must run in minutes on this
//! 2-core machine"), with price-capacity-optimized allocation and consolidation, the scenario
//! that does the most work per simulated minute (every consolidation round simulates the
//! cluster). `--quick` simulates the same 10,000 nodes over one day (the first, with the
//! ramp from an empty cluster).
//!
//! The run writes its table, CSV and charts to `target/bench/spot-sim/`; the figures are the
//! process's wall time (workload generation, simulation and output included) and the peak
//! node count the simulation reached, read from its JSON output.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::{Figure, now, run_capture};

/// The workload's size at its peak, from issue 9.
const NODES: u64 = 10_000;
/// Simulated days of the full run (issue 9).
const FULL_DAYS: u64 = 7;
/// Simulated days of the `--quick` run.
const QUICK_DAYS: u64 = 1;
/// The goal of the full run: "in minutes".
const GOAL_SECONDS: f64 = 600.0;
const SCENARIO: &str = "price-capacity-optimized+consolidation";
const OUTPUTS: [&str; 4] = ["results.csv", "timeseries.csv", "cost.svg", "pending.svg"];

/// The figure names of a run of `days` days: (wall time, peak nodes).
fn names(days: u64) -> (String, String) {
    let base = format!("spot_sim_{NODES}_nodes_{days}_days_pco_consolidation");
    (format!("{base}.wall_time"), format!("{base}.peak_nodes"))
}

/// Runs `target/release/spot-sim` (built by the caller) and returns its figures; a figure
/// that could not be produced has a null value and a note saying why.
pub(super) fn figures(root: &Path, quick: bool) -> Vec<Figure> {
    let days = if quick { QUICK_DAYS } else { FULL_DAYS };
    let (wall_name, peak_name) = names(days);
    let out_dir = root.join("target/bench/spot-sim");
    let exe = root.join("target/release/spot-sim");
    let nodes_arg = NODES.to_string();
    let days_arg = days.to_string();
    let out_arg = out_dir.display().to_string();
    let args = [
        "--nodes",
        nodes_arg.as_str(),
        "--days",
        days_arg.as_str(),
        "--seed",
        "1",
        "--strategies",
        SCENARIO,
        "--jobs",
        "1",
        "--output",
        "json",
        "--out",
        out_arg.as_str(),
    ];
    eprintln!("xtask: {} {}", exe.display(), args.join(" "));
    let limit = Duration::from_secs(if quick { 300 } else { 1800 });
    let started = now();
    let missing = |why: String| {
        vec![
            annotate(Figure::missing(&wall_name, "s", &why), days),
            Figure::missing(&peak_name, "nodes", why),
        ]
    };
    let (status, stdout) = match run_capture(Command::new(&exe).args(args), limit) {
        Ok(r) => r,
        Err(e) => return missing(format!("{e:#}")),
    };
    let wall = started.elapsed().as_secs_f64();
    match status {
        Some(s) if s.success() => {}
        Some(s) => return missing(format!("{} exited with {s}", exe.display())),
        None => {
            return missing(format!(
                "{} did not finish within {} s",
                exe.display(),
                limit.as_secs()
            ));
        }
    }
    let summary = serde_json::from_str::<Value>(&stdout)
        .ok()
        .and_then(|v| v.pointer("/results/0/summary").cloned());
    let written: Vec<&str> = OUTPUTS
        .iter()
        .copied()
        .filter(|f| out_dir.join(f).is_file())
        .collect();
    let note = format!(
        "release spot-sim, one scenario ({SCENARIO}), diurnal trace sized to about {NODES} nodes \
         at its peak, {days} simulated days, seed 1, one thread; wrote {} to target/bench/spot-sim",
        written.join(", ")
    );
    let wall_figure = annotate(Figure::new(&wall_name, Some(wall), "s", Some(note.clone())), days);
    let number = |key: &str| summary.as_ref().and_then(|s| s.get(key)).and_then(Value::as_f64);
    let peak_figure = match number("peak_nodes") {
        Some(peak) => Figure::new(
            &peak_name,
            Some(peak),
            "nodes",
            Some(format!(
                "{note}; {:.0} nodes on average",
                number("mean_nodes").unwrap_or(0.0)
            )),
        ),
        None => Figure::missing(&peak_name, "nodes", "no summary in spot-sim's JSON output"),
    };
    vec![wall_figure, peak_figure]
}

/// The goal and its verdict: "in minutes" (under 10) for the 7-day run, and its share of
/// that for a shorter run.
fn annotate(mut f: Figure, days: u64) -> Figure {
    let goal = GOAL_SECONDS * days as f64 / FULL_DAYS as f64;
    let verdict = match f.value {
        Some(v) if v < goal => "pass",
        Some(_) => "FAIL",
        None => "n/a",
    };
    f.goal = Some(if days == FULL_DAYS {
        format!("< {goal:.0} s (\"in minutes on this 2-core machine\"): {verdict}")
    } else {
        format!("< {goal:.0} s ({days}/{FULL_DAYS} of the 7-day goal, {GOAL_SECONDS:.0} s): {verdict}")
    });
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goals_scale_with_the_days_and_carry_a_verdict() {
        let (wall, peak) = names(FULL_DAYS);
        assert_eq!(wall, "spot_sim_10000_nodes_7_days_pco_consolidation.wall_time");
        assert!(peak.ends_with(".peak_nodes"));
        let f = annotate(Figure::new(&wall, Some(312.0), "s", None), FULL_DAYS);
        assert_eq!(
            f.goal.as_deref(),
            Some("< 600 s (\"in minutes on this 2-core machine\"): pass")
        );
        let f = annotate(Figure::new(&wall, Some(900.0), "s", None), FULL_DAYS);
        assert!(f.goal.unwrap().ends_with(": FAIL"));
        let quick = names(QUICK_DAYS).0;
        let f = annotate(Figure::new(&quick, Some(90.0), "s", None), QUICK_DAYS);
        assert_eq!(
            f.goal.as_deref(),
            Some("< 86 s (1/7 of the 7-day goal, 600 s): FAIL")
        );
        let f = annotate(Figure::missing(&quick, "s", "why"), QUICK_DAYS);
        assert!(f.goal.unwrap().ends_with(": n/a"));
    }
}
