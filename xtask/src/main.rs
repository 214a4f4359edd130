//! Every development and CI task of the spot workspace, in Rust (see
//! <https://github.com/matklad/cargo-xtask>). Run `cargo xtask --help`; the alias lives in
//! `.cargo/config.toml`.

mod bench;
mod catalog;
mod crds;
mod demo;
mod moto;
mod prices;
mod test;

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    about = "Development and CI tasks of the spot workspace"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// The demo: a simulated spot cluster from an empty cluster to spot interruptions
    /// handled without losing a pod (`cargo xtask demo --help`).
    Demo(demo::DemoArgs),
    /// Formatting, clippy and the whole test suite, with a moto server for the AWS tests.
    Test(test::TestArgs),
    /// Regenerate the embedded EC2 catalog (spot-core/data) from the moto package's data.
    Catalog(catalog::CatalogArgs),
    /// Fit the built-in on-demand price model against ../shared/data/ondemand-us-east-1.csv.
    FitPrices(prices::FitArgs),
    /// Write a seeded synthetic Spot Instance Advisor file.
    SpotAdvisor(prices::SpotArgs),
    /// Release-mode benchmarks: target/bench/report.json and a Markdown table (never part of
    /// `test`).
    Bench(bench::BenchArgs),
    /// Write the provisioner's CRDs (generated from spot-provisioner's API types) to
    /// deploy/provisioner/crds/.
    Crds(crds::CrdsArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = project_root();
    match cli.task {
        Task::Demo(args) => demo::run(&root, &args),
        Task::Test(args) => test::run(&root, &args),
        Task::Catalog(args) => catalog::run(&args),
        Task::FitPrices(args) => prices::run_fit(&args),
        Task::SpotAdvisor(args) => prices::run_spot(&args),
        Task::Bench(args) => bench::run(&root, &args),
        Task::Crds(args) => crds::run(&root, &args),
    }
}

/// The workspace root: the parent of this crate's directory.
fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}
