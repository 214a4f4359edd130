//! `cargo xtask demo`: a spot cluster simulated in process, from an empty cluster to spot
//! interruptions handled without losing a pod. See `spot_examples::demo` for what runs.
//!
//! ```text
//! cargo run -p spot-examples --example demo -- --help
//! ```

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use spot_examples::demo::{self, Options, Progress, clock_label};

/// A spot cluster in one process: spot-kube-sim, a simulated EC2 Spot market, the
/// provisioner, spot-nth on every node and an interruption queue. A workload is scheduled
/// onto spot nodes, then spot interruptions arrive (through the queue and IMDS) and a
/// rebalance recommendation; capacity is replaced before each node is drained. Ends with a
/// summary; exits non-zero if a pod was lost or something failed. No AWS account, cluster
/// or Python needed.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask demo", bin_name = "cargo xtask demo")]
struct Args {
    /// Multiplies the workload's replicas (1: 52 pods in 5 Deployments, about 10 nodes; at
    /// most 20). Every node runs its own IMDS and spot-nth, so large scales take minutes.
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Seed of the spot market, instance ids and the choice of interrupted nodes.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Simulated seconds per real second. A two-minute spot notice lasts 120/speed s of real
    /// time, and the handlers are not sped up: far above the default, EC2 reclaims nodes
    /// before the replacement is up and the drain done, and pods are lost.
    #[arg(long, default_value_t = 10.0)]
    speed: f64,
    /// Spot interruption notices (one more spot node gets a rebalance recommendation).
    #[arg(long, default_value_t = 2)]
    interruptions: usize,
    /// Keep the simulated cluster running after the summary and print a kubeconfig, for
    /// `kubectl get nodes,pods -A`; Ctrl-C stops it.
    #[arg(long)]
    serve: bool,
    /// Where `--serve` writes the kubeconfig (default: a file in the temporary directory).
    #[arg(long, requires = "serve")]
    kubeconfig: Option<PathBuf>,
}

/// Prints timeline entries, with an in-place progress line when stdout is a terminal.
struct Terminal {
    tty: bool,
    origin: tokio::time::Instant,
    status: Mutex<String>,
}

impl Terminal {
    fn bar(done: usize, total: usize) -> String {
        const WIDTH: usize = 24;
        let filled = (done * WIDTH).checked_div(total).unwrap_or(WIDTH).min(WIDTH);
        format!("[{}{}]", "#".repeat(filled), "-".repeat(WIDTH - filled))
    }
}

impl Progress for Terminal {
    fn event(&self, real: Duration, simulated: Duration, text: &str) {
        let status = self
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = std::io::stdout().lock();
        if self.tty {
            let _ = write!(out, "\r\x1b[2K");
        }
        let _ = writeln!(
            out,
            "{:>6.1}s  {}  {text}",
            real.as_secs_f64(),
            clock_label(simulated)
        );
        if self.tty && !status.is_empty() {
            let _ = write!(out, "{status}");
        }
        let _ = out.flush();
    }

    fn status(&self, phase: &str, done: usize, total: usize, detail: &str) {
        let line = format!(
            "{:>6.1}s  {} {phase}: {done}/{total}  {detail}",
            self.origin.elapsed().as_secs_f64(),
            Self::bar(done, total)
        );
        let mut status = self
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.tty && *status != line {
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "\r\x1b[2K{line}");
            let _ = out.flush();
        }
        *status = line;
    }
}

impl Terminal {
    fn clear(&self) {
        let mut status = self
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.tty && !status.is_empty() {
            print!("\r\x1b[2K");
            let _ = std::io::stdout().flush();
        }
        status.clear();
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    spot_nth::install_crypto_provider();
    let options = Options {
        scale: args.scale,
        seed: args.seed,
        speed: args.speed,
        interruptions: args.interruptions,
        ..Options::default()
    };
    options.validate()?;
    let terminal = Arc::new(Terminal {
        tty: std::io::stdout().is_terminal(),
        origin: tokio::time::Instant::now(),
        status: Mutex::new(String::new()),
    });
    println!(
        "spot demo: seed {}, scale {}, clock ×{} (real seconds, then simulated time)",
        options.seed, options.scale, options.speed
    );
    let outcome = demo::run(&options, terminal.clone()).await;
    terminal.clear();
    let demo = outcome.context("the demo failed")?;
    println!();
    print!("{}", demo.summary.render());
    let failures = demo.summary.failures();

    if args.serve {
        let path = args.kubeconfig.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("spot-demo-{}.kubeconfig", std::process::id()))
        });
        std::fs::write(&path, demo.world.kubeconfig())
            .with_context(|| format!("writing the kubeconfig {}", path.display()))?;
        println!();
        println!("The simulated cluster keeps running (provisioner, spot-nth, simulated EC2). Try:");
        println!("  kubectl --kubeconfig {} get nodes,pods -A", path.display());
        println!(
            "  kubectl --kubeconfig {} get nodeclaims,nodepools -o wide",
            path.display()
        );
        println!("Ctrl-C stops it.");
        tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
        let _ = std::fs::remove_file(&path);
    }
    if !failures.is_empty() {
        bail!("the demo failed:\n  {}", failures.join("\n  "));
    }
    Ok(())
}
