//! Benchmarks of the handler engine for `cargo xtask bench` (run in release mode).
//!
//! The real engine ([`spot_nth::handler::Handler`]) consumes a [`MemorySource`] and acts through
//! the real [`KubeNodeActions`] over HTTP against an in-process `spot_k8s::sim` with the kubelet
//! simulation on, so evicted pods terminate. Every figure is printed on stdout as one JSON object
//! per line: `{"name": ..., "value": ..., "unit": ..., "note": ...}` (`value` is null when the
//! figure could not be produced; `note` says why).
//!
//! - `bench_nth wave`: a wave of simultaneous spot notices, one per node; every node carries a
//!   foreign taint beforehand, so lost taints can be counted.
//! - `bench_nth latency`: single notices one after another; notice-to-cordon latency.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use async_trait::async_trait;
use clap::Parser;
use serde_json::{Value, json};
use spot_core::clock::{Clock, TokioClock};
use spot_core::event::{EventKind, InterruptionEvent, Origin, SpotAction};
use spot_core::node::{
    CordonWith, DrainOptions, DrainReport, Error as NodeError, MetadataPatch, NodeActions, NodeState, Taint,
    TaintEffect,
};
use spot_core::source::MemorySource;
use spot_k8s::actions::{ActionsConfig, KubeNodeActions, PodSource};
use spot_k8s::ratelimit::{Priority, RateLimiter};
use spot_k8s::sim::{RunningSim, Sim, SimConfig};
use spot_nth::handler::{Deps, Handler, HandlerConfig, Lookup, NodeLookup, TAINT_SPOT_ITN};
use spot_nth::metrics::Metrics;
use tokio::time::Instant;

/// The taint another controller put on every node before the wave.
const FOREIGN_TAINT: &str = "other.example.com/keep";

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "bench_nth",
    about = "Handler engine benchmarks (JSON lines on stdout)"
)]
enum Cmd {
    /// A wave of simultaneous spot notices, one per node.
    Wave(Wave),
    /// Notice-to-cordon latency of single notices handled one after another.
    Latency(Latency),
    /// Serves the IMDS simulator of `spot-imds-sim` (spot_aws::imds_sim, default settings) on
    /// a free loopback port, prints `listening on URL` and runs until killed (the idle-RSS
    /// benchmark of `spot-nth imds` polls it).
    ImdsSim,
}

/// Shared settings.
#[derive(Debug, clap::Args)]
struct Common {
    /// Nodes in the simulator.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Pods per node.
    #[arg(long, default_value_t = 20)]
    pods: usize,
    /// KUBE_API_QPS of the handler's client-side rate limiter.
    #[arg(long, default_value_t = 200.0)]
    qps: f64,
    /// KUBE_API_BURST.
    #[arg(long, default_value_t = 400)]
    burst: u32,
    /// WORKERS: deliveries handled at once (default: one per node).
    #[arg(long)]
    workers: Option<usize>,
    /// Pod termination grace period the drain asks for (seconds).
    #[arg(long, default_value_t = 1)]
    grace: i64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Where drains read pods from: one watch shared by all drains (queue mode's choice), a
    /// watch per drain (metadata mode's), or a list per poll.
    #[arg(long, value_enum, default_value = "shared")]
    pod_source: Pods,
}

/// `--pod-source`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Pods {
    Shared,
    Watch,
    List,
}

impl Pods {
    fn source(self) -> PodSource {
        match self {
            Pods::Shared => PodSource::Shared,
            Pods::Watch => PodSource::Watch,
            Pods::List => PodSource::List,
        }
    }
}

/// `wave`.
#[derive(Debug, clap::Args)]
struct Wave {
    #[command(flatten)]
    common: Common,
    /// Stop once this many nodes are cordoned (for very slow settings such as QPS 5).
    #[arg(long)]
    stop_after_cordoned: Option<usize>,
}

/// `latency`.
#[derive(Debug, clap::Args)]
struct Latency {
    #[command(flatten)]
    common: Common,
    /// Notices, each for the next node, pushed once the previous one's node is cordoned.
    #[arg(long, default_value_t = 200)]
    events: usize,
    /// Push the next notice only once the previous delivery was fully handled (drained and
    /// acknowledged), so no drain runs in the background.
    #[arg(long)]
    isolated: bool,
}

fn main() -> Result<()> {
    spot_nth::install_crypto_provider();
    let cmd = Cmd::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let figures = match cmd {
        Cmd::Wave(w) => runtime.block_on(wave(&w))?,
        Cmd::Latency(l) => runtime.block_on(latency(&l))?,
        Cmd::ImdsSim => runtime.block_on(imds_sim())?,
    };
    for f in figures {
        println!("{f}");
    }
    // In-flight drains and watches are abandoned, not awaited.
    runtime.shutdown_background();
    Ok(())
}

async fn imds_sim() -> Result<Vec<Value>> {
    let sim =
        spot_aws::imds_sim::ImdsSim::start(spot_aws::imds_sim::SimConfig::default(), "127.0.0.1:0".parse()?)
            .await
            .context("starting the IMDS simulator")?;
    println!("listening on {}", sim.url());
    std::future::pending::<()>().await;
    Ok(Vec::new())
}

/// One figure.
fn figure(name: &str, value: Option<f64>, unit: &str, note: Option<String>) -> Value {
    json!({"name": name, "value": value, "unit": unit, "note": note})
}

/// Instance `i-bench-N` runs node `sim-node-N`.
struct BenchLookup;

#[async_trait]
impl NodeLookup for BenchLookup {
    async fn lookup(&self, instance_id: &str) -> Result<Lookup, String> {
        Ok(match instance_id.strip_prefix("i-bench-") {
            Some(n) => Lookup::Node(format!("sim-node-{n}")),
            None => Lookup::NotFound,
        })
    }
}

/// When each node's cordon and drain returned (and drain failures).
#[derive(Default)]
struct Progress {
    cordoned: HashMap<String, Instant>,
    drained: HashMap<String, Instant>,
    failures: Vec<String>,
}

/// [`KubeNodeActions`] that records when each cordon and drain returned.
struct Timed {
    inner: KubeNodeActions,
    limiter: RateLimiter,
    progress: Mutex<Progress>,
}

impl Timed {
    fn record_cordon(&self, node: &str, r: &Result<(), NodeError>) {
        let mut p = self.progress();
        match r {
            Ok(()) => {
                p.cordoned.entry(node.to_owned()).or_insert_with(Instant::now);
            }
            Err(e) => p.failures.push(format!("cordon {node}: {e}")),
        }
    }

    /// API requests so far (every one takes a token): node actions, then drains.
    fn calls(&self) -> (u64, u64) {
        (
            self.limiter.granted(Priority::High),
            self.limiter.granted(Priority::Normal),
        )
    }

    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl NodeActions for Timed {
    async fn cordon(&self, node: &str) -> Result<(), NodeError> {
        let r = self.inner.cordon(node).await;
        self.record_cordon(node, &r);
        r
    }
    async fn cordon_with(&self, node: &str, with: &CordonWith) -> Result<(), NodeError> {
        let r = self.inner.cordon_with(node, with).await;
        self.record_cordon(node, &r);
        r
    }
    async fn uncordon(&self, node: &str) -> Result<(), NodeError> {
        self.inner.uncordon(node).await
    }
    async fn taint(&self, node: &str, taint: &Taint) -> Result<bool, NodeError> {
        let r = self.inner.taint(node, taint).await;
        if let Err(e) = &r {
            self.progress().failures.push(format!("taint {node}: {e}"));
        }
        r
    }
    async fn untaint(&self, node: &str, key: &str, effect: TaintEffect) -> Result<bool, NodeError> {
        self.inner.untaint(node, key, effect).await
    }
    async fn label(&self, node: &str, labels: &MetadataPatch) -> Result<(), NodeError> {
        self.inner.label(node, labels).await
    }
    async fn annotate(&self, node: &str, annotations: &MetadataPatch) -> Result<(), NodeError> {
        self.inner.annotate(node, annotations).await
    }
    async fn get(&self, node: &str) -> Result<NodeState, NodeError> {
        self.inner.get(node).await
    }
    async fn drain(&self, node: &str, options: &DrainOptions) -> Result<DrainReport, NodeError> {
        let r = self.inner.drain(node, options).await;
        let mut p = self.progress();
        match &r {
            Ok(_) => {
                p.drained.entry(node.to_owned()).or_insert_with(Instant::now);
            }
            Err(e) => p.failures.push(format!("drain {node}: {e}")),
        }
        r
    }
}

/// A simulator with kubelets, `nodes` nodes of `pods` pods each, every node carrying the
/// foreign taint.
async fn start_sim(c: &Common) -> Result<RunningSim> {
    let sim = Sim::new(SimConfig {
        kubelet: true,
        // Room for every pod deletion and node write, so no watch falls out of the history.
        history: (c.nodes * (c.pods * 3 + 20)).max(10_000),
        ..SimConfig::default()
    });
    sim.seed(c.nodes, c.pods).context("seeding the simulator")?;
    for n in 0..c.nodes {
        let name = format!("sim-node-{n}");
        let mut node = sim
            .get("v1", "Node", "", &name)
            .with_context(|| format!("seeded node {name}"))?;
        node["spec"]["taints"] = json!([{"key": FOREIGN_TAINT, "value": "1", "effect": "NoSchedule"}]);
        sim.put(node).context("tainting a seeded node")?;
    }
    sim.start("127.0.0.1:0".parse()?)
        .await
        .context("starting the simulator")
}

/// The engine over HTTP against `running`, with `source` and the settings of `c`.
fn engine(running: &RunningSim, c: &Common, source: Arc<MemorySource>) -> Result<(Arc<Handler>, Arc<Timed>)> {
    let config = kube::Config::new(running.url().parse()?);
    let client = kube::Client::try_from(config)?;
    let limiter = RateLimiter::new(c.qps, c.burst)?;
    let timed = Arc::new(Timed {
        inner: KubeNodeActions::new(client)
            .with_rate_limiter(limiter.clone())
            .with_config(ActionsConfig {
                pod_source: c.pod_source.source(),
                ..ActionsConfig::default()
            }),
        limiter,
        progress: Mutex::default(),
    });
    let timeout = Duration::from_secs(c.timeout);
    let cfg = HandlerConfig {
        taint_node: true,
        drain: DrainOptions {
            timeout,
            grace_period_seconds: Some(c.grace),
            ..DrainOptions::default()
        },
        node_termination_grace: timeout,
        workers: c.workers.unwrap_or(c.nodes).max(1),
        ..HandlerConfig::default()
    };
    let handler = Handler::new(
        cfg,
        Deps {
            source,
            nodes: timed.clone(),
            lookup: Arc::new(BenchLookup),
            lifecycle: None,
            webhook: None,
            metrics: Arc::new(Metrics::new()),
            clock: Arc::new(TokioClock::new()),
        },
    );
    Ok((handler, timed))
}

/// A spot notice for node `n`, observed now.
fn notice(n: usize, clock: &TokioClock) -> InterruptionEvent {
    let now = clock.now();
    InterruptionEvent::new(
        format!("i-bench-{n}"),
        EventKind::SpotInterruption {
            action: SpotAction::Terminate,
            deadline: now + Duration::from_secs(120),
        },
        &format!("bench-{n}"),
        now,
        Origin::Other { name: "bench".into() },
    )
}

fn secs(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64()
}

async fn wave(w: &Wave) -> Result<Vec<Value>> {
    let c = &w.common;
    let prefix = format!(
        "wave_{}_nodes_{}_pods_qps{}_burst{}_workers{}",
        c.nodes,
        c.pods,
        c.qps,
        c.burst,
        c.workers.unwrap_or(c.nodes)
    );
    let seeding = Instant::now();
    let running = start_sim(c).await?;
    eprintln!(
        "bench_nth: {prefix}: seeded in {:.1} s",
        seeding.elapsed().as_secs_f64()
    );
    let source = Arc::new(MemorySource::new());
    let (handler, timed) = engine(&running, c, source.clone())?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = {
        let handler = handler.clone();
        tokio::spawn(async move {
            handler
                .run(async {
                    let _ = stopped.await;
                })
                .await;
        })
    };
    let clock = TokioClock::new();
    let start = Instant::now();
    for n in 0..c.nodes {
        source.push(vec![notice(n, &clock)]).await;
    }
    let deadline = start + Duration::from_secs(c.timeout);
    let first = 100.min(c.nodes);
    let mut first_cordoned = None;
    let mut last_report = Instant::now();
    let finished = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (cordoned, drained, failures) = {
            let p = timed.progress();
            if first_cordoned.is_none() && p.cordoned.len() >= first {
                first_cordoned = p.cordoned.values().copied().max();
            }
            (p.cordoned.len(), p.drained.len(), p.failures.len())
        };
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            let (high, normal) = timed.calls();
            eprintln!(
                "bench_nth: {prefix}: {:.0} s: {cordoned} cordoned, {drained} drained, {failures} failures; {high} + {normal} API calls",
                start.elapsed().as_secs_f64()
            );
        }
        if w.stop_after_cordoned.is_some_and(|k| cordoned >= k) {
            break false;
        }
        let acknowledged = source.pending().await == 0 && source.unacknowledged().await.is_empty();
        if drained == c.nodes && acknowledged {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
    };
    let elapsed = start.elapsed().as_secs_f64();
    let _ = stop.send(());
    run.abort();

    // The end state, read from the store.
    let nodes = running.sim().list("v1", "Node", None);
    let has_taint = |node: &Value, key: &str| {
        node.pointer("/spec/taints")
            .and_then(Value::as_array)
            .is_some_and(|ts| ts.iter().any(|t| t["key"] == key))
    };
    let foreign_lost = nodes.iter().filter(|n| !has_taint(n, FOREIGN_TAINT)).count();
    let ours_missing = nodes.iter().filter(|n| !has_taint(n, TAINT_SPOT_ITN)).count();
    let not_cordoned = nodes
        .iter()
        .filter(|n| n.pointer("/spec/unschedulable") != Some(&json!(true)))
        .count();
    let pods_left = running.sim().count("v1", "Pod");

    let p = timed.progress();
    let why = |what: &str| {
        Some(format!(
            "not reached: {what} after {elapsed:.0} s ({} of {} cordoned, {} drained, {} failures{}{})",
            p.cordoned.len(),
            c.nodes,
            p.drained.len(),
            p.failures.len(),
            if w.stop_after_cordoned.is_some() {
                "; stopped early on purpose"
            } else {
                ""
            },
            p.failures
                .first()
                .map(|f| format!("; first failure: {f}"))
                .unwrap_or_default(),
        ))
    };
    let all_cordoned = (p.cordoned.len() == c.nodes)
        .then(|| p.cordoned.values().copied().max())
        .flatten();
    let all_drained = finished.then(|| p.drained.values().copied().max()).flatten();
    let mut out = vec![
        figure(
            &format!("{prefix}.first_{first}_cordoned"),
            first_cordoned.map(|t| secs(start, t)),
            "s",
            first_cordoned.is_none().then(|| why("time to cordon")).flatten(),
        ),
        figure(
            &format!("{prefix}.all_tainted_cordoned"),
            all_cordoned.map(|t| secs(start, t)),
            "s",
            all_cordoned
                .is_none()
                .then(|| why("every node cordoned"))
                .flatten(),
        ),
        figure(
            &format!("{prefix}.all_drained"),
            all_drained.map(|t| secs(start, t)),
            "s",
            all_drained.is_none().then(|| why("every node drained")).flatten(),
        ),
    ];
    if all_cordoned.is_some() {
        out.push(figure(
            &format!("{prefix}.taints_lost"),
            Some((foreign_lost + ours_missing + not_cordoned) as f64),
            "nodes",
            Some(format!(
                "{foreign_lost} nodes lost the foreign taint {FOREIGN_TAINT}, {ours_missing} lack {TAINT_SPOT_ITN}, {not_cordoned} are schedulable"
            )),
        ));
    } else {
        out.push(figure(
            &format!("{prefix}.taints_lost"),
            None,
            "nodes",
            Some(format!(
                "wave did not finish cordoning; so far {foreign_lost} nodes lost the foreign taint"
            )),
        ));
    }
    if finished {
        out.push(figure(
            &format!("{prefix}.pods_left"),
            Some(pods_left as f64),
            "pods",
            None,
        ));
    }
    let (high, normal) = timed.calls();
    out.push(figure(
        &format!("{prefix}.api_calls_per_node"),
        Some((high + normal) as f64 / c.nodes.max(1) as f64),
        "calls",
        Some(format!(
            "{high} node reads and writes (high priority) and {normal} drain calls (evictions, pod \
             watch starts; normal priority) for {} nodes{}; drains read pods from {:?}",
            c.nodes,
            if finished { "" } else { " (unfinished wave)" },
            c.pod_source
        )),
    ));
    drop(p);
    Ok(out)
}

async fn latency(l: &Latency) -> Result<Vec<Value>> {
    let c = &l.common;
    let events = l.events.min(c.nodes);
    let name = format!(
        "notice_to_cordon_{}_{}_nodes_{}_pods_qps{}_burst{}",
        if l.isolated {
            "isolated"
        } else {
            "under_drain_load"
        },
        c.nodes,
        c.pods,
        c.qps,
        c.burst
    );
    let running = start_sim(c).await?;
    let source = Arc::new(MemorySource::new());
    let (handler, timed) = engine(&running, c, source.clone())?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = {
        let handler = handler.clone();
        tokio::spawn(async move {
            handler
                .run(async {
                    let _ = stopped.await;
                })
                .await;
        })
    };
    let clock = TokioClock::new();
    let deadline = Instant::now() + Duration::from_secs(c.timeout);
    let mut samples = Vec::with_capacity(events);
    let mut failure = None;
    'events: for n in 0..events {
        let node = format!("sim-node-{n}");
        let pushed = Instant::now();
        source.push(vec![notice(n, &clock)]).await;
        loop {
            if let Some(t) = timed.progress().cordoned.get(&node) {
                samples.push(secs(pushed, *t));
                break;
            }
            if Instant::now() >= deadline {
                failure = Some(format!("node {node} not cordoned within {} s", c.timeout));
                break 'events;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        while l.isolated && !source.unacknowledged().await.is_empty() {
            if Instant::now() >= deadline {
                failure = Some(format!(
                    "notice for {node} not acknowledged within {} s",
                    c.timeout
                ));
                break 'events;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let _ = stop.send(());
    run.abort();
    samples.sort_by(f64::total_cmp);
    let pct = |q: f64| -> Option<f64> {
        if samples.len() < events || samples.is_empty() {
            return None;
        }
        let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
        Some(samples[i] * 1000.0)
    };
    let note = failure.or_else(|| {
        Some(format!(
            "{} single notices, each pushed once the previous one {}; from push into the MemorySource to cordon() returning (annotate+taint+cordon done)",
            samples.len(),
            if l.isolated {
                "was drained and acknowledged"
            } else {
                "had its node cordoned, while earlier drains go on"
            }
        ))
    });
    Ok(vec![
        figure(&format!("{name}.p50"), pct(0.50), "ms", note.clone()),
        figure(&format!("{name}.p99"), pct(0.99), "ms", note),
    ])
}
