//! `spot-sim`: simulates days of a Kubernetes cluster on EC2 Spot under several ways of
//! buying capacity and compares them (cost, savings versus on-demand, interruptions,
//! evictions, pod-minutes pending).
//!
//! Writes `results.csv`, `timeseries.csv`, `cost.svg` and `pending.svg` to `--out` and
//! prints the comparison as a table, JSON or CSV.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use spot_sim::des::{self, Report, Scale, Scenario, SimConfig, TraceKind};
use tokio::time::Instant;

/// Output format on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
    Csv,
}

/// Simulates days of cluster life on EC2 Spot and compares allocation strategies.
#[derive(Debug, Parser)]
#[command(name = "spot-sim", version)]
struct Args {
    /// Simulated days.
    #[arg(long, default_value_t = 7.0)]
    days: f64,
    /// Size the workload to about this many nodes at its peak.
    #[arg(long, conflicts_with = "pods")]
    nodes: Option<u64>,
    /// Size the workload to this many pods at its peak (instead of --nodes).
    #[arg(long)]
    pods: Option<u64>,
    /// Seed of the workload, the market and the instances.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Workload trace: steady, diurnal or bursty.
    #[arg(long, default_value = "diurnal")]
    trace: String,
    /// Comma-separated scenarios: ALLOCATION[+consolidation][+rebalance], with ALLOCATION one
    /// of on-demand, lowest-price, capacity-optimized, price-capacity-optimized,
    /// diversified:N (short forms od, lp, co, pco, div:N, +c, +r). Default: each allocation
    /// with and without consolidation, and pco+consolidation+rebalance.
    #[arg(long)]
    strategies: Option<String>,
    /// Directory of results.csv, timeseries.csv, cost.svg and pending.svg.
    #[arg(long, default_value = "target/spot-sim")]
    out: PathBuf,
    /// Output format on stdout.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    output: Format,
    /// Scenarios run in parallel (default: the available cores).
    #[arg(long)]
    jobs: Option<usize>,
    /// Pods wait for the reclaim instead of being replaced at the interruption notice.
    #[arg(long)]
    no_replace_on_notice: bool,
    /// Consolidation interval in seconds (default: 60 up to 2,000 nodes, then proportionally
    /// longer).
    #[arg(long)]
    consolidation_interval: Option<u64>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !(args.days.is_finite() && args.days > 0.0 && args.days <= 366.0) {
        bail!("--days {}: expected a number of days in (0, 366]", args.days);
    }
    let trace: TraceKind = args.trace.parse().context("--trace")?;
    let scenarios = match &args.strategies {
        Some(list) => Scenario::parse_list(list).context("--strategies")?,
        None => Scenario::default_set(),
    };
    if scenarios.is_empty() {
        bail!("--strategies: no scenario given");
    }
    let scale = match (args.nodes, args.pods) {
        (_, Some(pods)) => Scale::Pods(pods),
        (nodes, None) => Scale::Nodes(nodes.unwrap_or(200)),
    };
    let nodes_hint = match scale {
        Scale::Nodes(n) => n,
        Scale::Pods(p) => p / 4,
    };
    let mut config = SimConfig {
        seed: args.seed,
        duration: Duration::from_secs_f64(args.days * 86_400.0),
        trace,
        scale,
        replace_on_notice: !args.no_replace_on_notice,
        ..SimConfig::for_nodes(nodes_hint)
    };
    if let Some(seconds) = args.consolidation_interval {
        config.consolidation_interval = Duration::from_secs(seconds.max(1));
    }
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));

    eprintln!(
        "spot-sim: {} scenarios, {} trace, {:?}, {} days, seed {}, {} jobs",
        scenarios.len(),
        trace,
        scale,
        args.days,
        args.seed,
        jobs
    );
    let started = Instant::now();
    let results = des::run_all(&config, &scenarios, jobs)?;
    let elapsed = started.elapsed();
    let report = Report::new(results);

    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let write = |name: &str, text: &str| -> Result<()> {
        let path = args.out.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    };
    write("results.csv", &report.results_csv())?;
    write("timeseries.csv", &report.timeseries_csv())?;
    write("cost.svg", &des::chart::cost_svg(&report.results)?)?;
    write("pending.svg", &des::chart::pending_svg(&report.results)?)?;

    match args.output {
        Format::Table => print!("{}", report.table()),
        Format::Json => println!("{}", report.to_json()),
        Format::Csv => print!("{}", report.results_csv()),
    }
    eprintln!(
        "spot-sim: {:.1} s wall time; wrote results.csv, timeseries.csv, cost.svg, pending.svg to {}",
        elapsed.as_secs_f64(),
        args.out.display()
    );
    Ok(())
}
