//! `spot-kube-sim`: a Kubernetes API simulator on loopback for tests and local runs.
//!
//! ```text
//! spot-kube-sim --listen 127.0.0.1:0 --write-kubeconfig FILE [--nodes N] [--pods-per-node M]
//!               [--kubelet-sim] [--scheduler-sim] [--replicaset-controller]
//! ```
//!
//! Prints the bound address on stdout, writes the kubeconfig, and serves until SIGTERM or
//! SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use spot_k8s::sim::{Sim, SimConfig};

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "spot-kube-sim",
    version,
    about = "A Kubernetes API simulator for tests"
)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Write a kubeconfig for the simulator to this file.
    #[arg(long)]
    write_kubeconfig: Option<PathBuf>,
    /// Seed this many Ready nodes `sim-node-0..`.
    #[arg(long, default_value_t = 0)]
    nodes: usize,
    /// Seed this many Running pods per node, owned by a ReplicaSet in `default`.
    #[arg(long, default_value_t = 0)]
    pods_per_node: usize,
    /// Simulate kubelets: bound pods start; deleted pods terminate after their grace period.
    #[arg(long)]
    kubelet_sim: bool,
    /// Simulate the scheduler: bind pending pods to fitting nodes (every scheduling
    /// constraint the provisioner simulates), mark the others Unschedulable.
    #[arg(long)]
    scheduler_sim: bool,
    /// Simulate the Deployment and ReplicaSet controllers.
    #[arg(long)]
    replicaset_controller: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = SimConfig {
        kubelet: args.kubelet_sim,
        scheduler: args.scheduler_sim,
        replicaset_controller: args.replicaset_controller,
        ..SimConfig::default()
    };
    let sim = Sim::new(config);
    sim.seed(args.nodes, args.pods_per_node)
        .context("seeding the store")?;
    let running = sim.start(args.listen).await?;
    if let Some(path) = &args.write_kubeconfig {
        running.write_kubeconfig(path)?;
    }
    println!("{}", running.addr());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    running.shutdown().await;
    Ok(())
}
