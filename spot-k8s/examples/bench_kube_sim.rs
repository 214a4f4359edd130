//! Throughput of the Kubernetes API simulator over HTTP, for `cargo xtask bench` (run in
//! release mode): paginated pod lists and concurrent node patches through kube-rs.
//!
//! Prints one JSON object per figure and line on stdout:
//! `{"name": ..., "value": ..., "unit": ..., "note": ...}` (`value` null when not produced).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures::future::join_all;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use spot_k8s::sim::{Sim, SimConfig};
use tokio::time::Instant;

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "bench_kube_sim",
    about = "spot-kube-sim throughput (JSON lines on stdout)"
)]
struct Args {
    /// Nodes to seed.
    #[arg(long, default_value_t = 5000)]
    nodes: usize,
    /// Pods per node.
    #[arg(long, default_value_t = 20)]
    pods: usize,
    /// Page size of the pod lists (kubectl's and client-go's informers' default is 500).
    #[arg(long, default_value_t = 500)]
    page: u32,
    /// Full paginated lists to time.
    #[arg(long, default_value_t = 3)]
    lists: usize,
    /// Concurrent node patches.
    #[arg(long, default_value_t = 1000)]
    patches: usize,
}

fn figure(name: &str, value: Option<f64>, unit: &str, note: Option<String>) -> Value {
    json!({"name": name, "value": value, "unit": unit, "note": note})
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let total_pods = args.nodes * args.pods;
    let sim = Sim::new(SimConfig {
        history: 1_000,
        ..SimConfig::default()
    });
    let seeding = Instant::now();
    sim.seed(args.nodes, args.pods).context("seeding")?;
    eprintln!(
        "bench_kube_sim: seeded {} nodes and {total_pods} pods in {:.1} s",
        args.nodes,
        seeding.elapsed().as_secs_f64()
    );
    let running = sim.start("127.0.0.1:0".parse()?).await?;
    let client = kube::Client::try_from(kube::Config::new(running.url().parse()?))?;
    let mut figures = Vec::new();

    // Full paginated lists of every pod.
    let pods: Api<Pod> = Api::all(client.clone());
    let mut times = Vec::new();
    let mut requests = 0usize;
    for _ in 0..args.lists {
        let started = Instant::now();
        let mut lp = ListParams::default().limit(args.page);
        let mut seen = 0;
        loop {
            let page = pods.list(&lp).await.context("listing pods")?;
            requests += 1;
            seen += page.items.len();
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(c) => lp = lp.continue_token(&c),
                None => break,
            }
        }
        if seen != total_pods {
            bail!("a full list returned {seen} pods, not {total_pods}");
        }
        times.push(started.elapsed().as_secs_f64());
    }
    let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
    let name = format!("kube_sim_list_{total_pods}_pods_page{}", args.page);
    let note = Some(format!(
        "{} full paginated lists over HTTP through kube-rs, mean; every list returned all {total_pods} pods",
        times.len()
    ));
    figures.push(figure(
        &format!("{name}.seconds_per_list"),
        Some(mean),
        "s",
        note.clone(),
    ));
    figures.push(figure(
        &format!("{name}.pods_per_s"),
        Some(total_pods as f64 / mean),
        "pods/s",
        note.clone(),
    ));
    figures.push(figure(
        &format!("{name}.requests_per_s"),
        Some(requests as f64 / times.iter().sum::<f64>()),
        "req/s",
        note,
    ));

    // Concurrent merge patches: each adds its own label, to one node or to distinct nodes.
    let nodes: Api<Node> = Api::all(client.clone());
    for (what, target) in [("same_node", Some("sim-node-0")), ("distinct_nodes", None)] {
        let count = if target.is_none() {
            args.patches.min(args.nodes)
        } else {
            args.patches
        };
        let started = Instant::now();
        let results = join_all((0..count).map(|i| {
            let nodes = nodes.clone();
            let node = target.map_or_else(|| format!("sim-node-{i}"), str::to_owned);
            async move {
                let patch = json!({"metadata": {"labels": {format!("bench.example.com/p{i}"): "1"}}});
                tokio::time::timeout(
                    Duration::from_secs(120),
                    nodes.patch(&node, &PatchParams::default(), &Patch::Merge(&patch)),
                )
                .await
            }
        }))
        .await;
        let secs = started.elapsed().as_secs_f64();
        let failed = results.iter().filter(|r| !matches!(r, Ok(Ok(_)))).count();
        // Every label must be there afterwards.
        let mut present = 0;
        for i in 0..count {
            let node = target.map_or_else(|| format!("sim-node-{i}"), str::to_owned);
            let obj = sim.get("v1", "Node", "", &node).context("patched node")?;
            if obj
                .pointer("/metadata/labels")
                .and_then(|l| l.get(format!("bench.example.com/p{i}")))
                .is_some()
            {
                present += 1;
            }
        }
        let name = format!("kube_sim_patch_{count}_concurrent_{what}");
        let note = Some(format!(
            "{count} JSON merge patches at once, each adding its own label; {failed} requests failed"
        ));
        figures.push(figure(
            &format!("{name}.patches_per_s"),
            (failed == 0).then_some(count as f64 / secs),
            "patches/s",
            note.clone(),
        ));
        figures.push(figure(
            &format!("{name}.lost"),
            Some((count - present) as f64),
            "patches",
            note,
        ));
    }
    for f in figures {
        println!("{f}");
    }
    Ok(())
}
