//! `cargo xtask demo`: builds and runs the demo example of `spot-examples` (dev profile: a
//! release build of the AWS SDK takes far longer than the demo), passing every argument
//! through. Cargo's progress stays visible: the first build takes minutes. The demo lives in `examples/` so that xtask does not link the AWS SDK.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Options of `cargo xtask demo`: everything is passed to the demo.
#[derive(Debug, clap::Args)]
#[command(disable_help_flag = true)]
pub struct DemoArgs {
    /// Arguments of the demo (`cargo xtask demo --help` lists them).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// Runs the demo; its exit status becomes ours.
pub fn run(root: &Path, args: &DemoArgs) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root)
        .args(["run", "-p", "spot-examples", "--example", "demo", "--"])
        .args(&args.args)
        .status()
        .context("running cargo run -p spot-examples --example demo")?;
    if !status.success() {
        match status.code() {
            Some(code) => std::process::exit(code),
            None => bail!("the demo was stopped by a signal ({status})"),
        }
    }
    Ok(())
}
