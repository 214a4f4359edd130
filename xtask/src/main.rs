//! Every development and CI task of the spot workspace, in Rust (see
//! <https://github.com/matklad/cargo-xtask>). Run `cargo xtask --help`; the alias lives in
//! `.cargo/config.toml`.

mod moto;
mod test;

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Development and CI tasks of the spot workspace")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Formatting, clippy and the whole test suite, with a moto server for the AWS tests.
    Test(test::TestArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = project_root();
    match cli.task {
        Task::Test(args) => test::run(&root, &args),
    }
}

/// The workspace root: the parent of this crate's directory.
fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}
