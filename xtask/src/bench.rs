//! `cargo xtask bench`: release-mode benchmarks of every performance goal of the workspace.
//!
//! Builds the release binaries and bench examples in two `cargo build`s (spot-nth's side, so
//! the measured binary carries only its own features, and the provisioning side; each
//! unifies its features once, and a second run builds nothing), runs every benchmark as a
//! subprocess,
//! writes `target/bench/report.json` (an array of
//! `{name, value, unit, anchor_value, anchor_source, goal, note}`) and prints a Markdown table.
//! A figure that could not be produced has a null value and a note saying why.
//!
//! - `bench_nth wave` / `bench_nth latency` (spot-nth/examples/bench_nth.rs): the handler
//!   engine through KubeNodeActions over HTTP against an in-process simulator.
//! - `bench_kube_sim` (spot-k8s/examples/bench_kube_sim.rs): list and patch throughput.
//! - Idle RSS of the `spot-nth imds` and `spot-nth queue` processes against spot-kube-sim,
//!   spot-imds-sim and moto, and the release binary's size.
//! - `bench_provisioning` (spot-core/examples/bench_provisioning.rs, built apart with `lp`):
//!   scheduling, packing and consolidation figures, see `bench/provisioning.rs`.
//! - `bench_interruption` (spot-provisioner/examples/bench_interruption.rs): interruption
//!   notice to replacement NodeClaim, see `bench/interruption.rs`.
//! - `spot-sim`: the wall time of a 7-day simulation of 10,000 nodes, see `bench/sim.rs`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::moto::Moto;

mod interruption;
mod provisioning;
mod sim;

/// Options of `cargo xtask bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Smaller sizes (a 200-node wave, no QPS 5 run, 300-node consolidation, a 40-node
    /// interruption run, one simulated day instead of 7); under 3 minutes once built.
    #[arg(long)]
    pub quick: bool,
    /// Skip the release build (use the binaries already in target/release).
    #[arg(long)]
    pub no_build: bool,
    /// Run only these benchmarks (comma-separated): `nth-wave` (the QPS 200 wave),
    /// `nth-wave-qps5` (full run only), `nth-latency`, `kube-sim`, `rss`, `size`,
    /// `provisioning`, `interruption`, `spot-sim`. The report then holds only their figures.
    #[arg(long, value_delimiter = ',', value_enum)]
    pub only: Vec<Only>,
}

/// The benchmarks `--only` can pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Only {
    /// The wave at QPS 200 (200 nodes with --quick, else 1,000).
    NthWave,
    /// The 1,000-node wave at NTH's QPS 5 (not with --quick).
    NthWaveQps5,
    /// Notice-to-cordon latency.
    NthLatency,
    /// spot-kube-sim list and patch throughput.
    KubeSim,
    /// Idle RSS of both modes.
    Rss,
    /// Binary size.
    Size,
    /// Scheduling, packing and consolidation (spot-core's bench_provisioning).
    Provisioning,
    /// Interruption notice to replacement NodeClaim (spot-provisioner's bench_interruption).
    Interruption,
    /// The wall time of a 7-day spot-sim run.
    SpotSim,
}

/// One row of the report.
#[derive(Debug, Clone, PartialEq)]
struct Figure {
    name: String,
    value: Option<f64>,
    unit: String,
    anchor_value: Option<f64>,
    anchor_source: Option<String>,
    goal: Option<String>,
    note: Option<String>,
}

impl Figure {
    fn new(name: impl Into<String>, value: Option<f64>, unit: &str, note: Option<String>) -> Self {
        let mut f = Figure {
            name: name.into(),
            value,
            unit: unit.to_owned(),
            anchor_value: None,
            anchor_source: None,
            goal: None,
            note,
        };
        f.annotate();
        f
    }

    /// A figure that could not be produced.
    fn missing(name: impl Into<String>, unit: &str, why: impl std::fmt::Display) -> Self {
        Figure::new(name, None, unit, Some(format!("not measured: {why}")))
    }

    /// Sets the anchor and goal from the figure's name.
    fn annotate(&mut self) {
        const NTH_1280: &str = "aws-node-termination-handler#1280: at KUBE_API_QPS 5 only 39 of 50 nodes were tainted within 2 min (120 s is a lower bound for 50 nodes)";
        const NTH_MEMORY: &str =
            "NTH's documented memory request 24Mi / limit 64Mi (mitodl/ol-infrastructure#5088)";
        const NTH_IMAGE: &str =
            "NTH v1.14.0 image, ~13 MB compressed (third-party mirror; an image, not a bare binary)";
        let n = self.name.as_str();
        let (anchor, source, goal): (Option<f64>, Option<&str>, Option<&str>) =
            if n.ends_with(".all_tainted_cordoned") || n.contains("_cordoned") {
                (
                    Some(120.0),
                    Some(NTH_1280),
                    Some("< 120 s (within the spot notice)"),
                )
            } else if n.ends_with(".all_drained") {
                (None, None, Some("< 120 s (within the spot notice)"))
            } else if n.ends_with(".taints_lost") || n.ends_with(".pods_left") || n.ends_with(".lost") {
                (None, None, Some("0"))
            } else if n.starts_with("notice_to_cordon") && n.ends_with(".p50") {
                (None, None, Some("< 100 ms"))
            } else if n.starts_with("notice_to_cordon") && n.ends_with(".p99") {
                (None, None, Some("< 1000 ms"))
            } else if n.starts_with("idle_rss") {
                (Some(24.0), Some(NTH_MEMORY), Some("< 64 MiB (NTH's limit)"))
            } else if n == "spot_nth_binary_size_gzip" {
                (Some(13.0), Some(NTH_IMAGE), Some("< 13 MB"))
            } else if n == "spot_nth_binary_size_stripped" {
                (Some(13.0), Some(NTH_IMAGE), None)
            } else {
                (None, None, None)
            };
        self.anchor_value = anchor;
        self.anchor_source = source.map(str::to_owned);
        self.goal = goal.map(str::to_owned);
    }

    fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "anchor_value": self.anchor_value,
            "anchor_source": self.anchor_source,
            "goal": self.goal,
            "note": self.note,
        })
    }
}

#[allow(
    clippy::disallowed_methods,
    reason = "xtask is synchronous: there is no tokio clock"
)]
fn now() -> std::time::Instant {
    std::time::Instant::now()
}

#[allow(
    clippy::disallowed_methods,
    reason = "xtask is synchronous: waiting for child processes"
)]
fn pause(d: Duration) {
    std::thread::sleep(d);
}

/// Runs the benchmarks.
pub fn run(root: &Path, args: &BenchArgs) -> Result<()> {
    let started = now();
    let runs = |b: Only| args.only.is_empty() || args.only.contains(&b);
    let nth_side = [
        Only::NthWave,
        Only::NthWaveQps5,
        Only::NthLatency,
        Only::KubeSim,
        Only::Rss,
        Only::Size,
    ];
    if !args.no_build && nth_side.into_iter().any(runs) {
        build(root)?;
    }
    // The provisioning side: a failed build is reported as missing figures.
    let provisioning_side = [Only::Provisioning, Only::Interruption, Only::SpotSim];
    let tools = if args.no_build || !provisioning_side.into_iter().any(runs) {
        Ok(())
    } else {
        build_provisioning_side(root).map_err(|e| format!("{e:#}"))
    };
    let release = root.join("target/release");
    let bench_nth = release.join("examples/bench_nth");
    let bench_sim = release.join("examples/bench_kube_sim");
    let mut figures = Vec::new();

    // (a) The wave.
    let wave_nodes = if args.quick { "200" } else { "1000" };
    if runs(Only::NthWave) {
        figures.extend(run_bench(
            &bench_nth,
            &[
                "wave",
                "--nodes",
                wave_nodes,
                "--pods",
                "20",
                "--qps",
                "200",
                "--burst",
                "400",
                // 20,000 evictions take minutes on a busy 2-core machine: give the wave
                // time to finish so "all drained" is a figure, not a note.
                "--timeout",
                if args.quick { "140" } else { "1500" },
            ],
            Duration::from_secs(if args.quick { 150 } else { 1600 }),
            &format!(
                "wave_{wave_nodes}_nodes_20_pods_qps200_burst400_workers{wave_nodes}.all_tainted_cordoned"
            ),
        ));
    }
    if !args.quick && runs(Only::NthWaveQps5) {
        // NTH's defaults (QPS 5, burst 10) would need about 28,000 API calls / 5 per second
        // (over 90 minutes) for the whole wave: stop once 100 nodes are cordoned.
        figures.extend(run_bench(
            &bench_nth,
            &[
                "wave",
                "--nodes",
                "1000",
                "--pods",
                "20",
                "--qps",
                "5",
                "--burst",
                "10",
                "--workers",
                "100",
                "--stop-after-cordoned",
                "100",
                "--timeout",
                "600",
            ],
            Duration::from_secs(700),
            "wave_1000_nodes_20_pods_qps5_burst10_workers100.first_100_cordoned",
        ));
    }
    // (b) Notice-to-cordon latency: single notices in isolation (the nodes have no pods, so
    // each notice is fully handled quickly), then while earlier nodes' drains go on.
    if runs(Only::NthLatency) {
        figures.extend(run_bench(
            &bench_nth,
            &[
                "latency",
                "--isolated",
                "--nodes",
                "200",
                "--pods",
                "0",
                "--events",
                "200",
                "--qps",
                "200",
                "--burst",
                "400",
                "--timeout",
                "120",
            ],
            Duration::from_secs(150),
            "notice_to_cordon_isolated_200_nodes_0_pods_qps200_burst400.p50",
        ));
        let events = if args.quick { "100" } else { "200" };
        figures.extend(run_bench(
            &bench_nth,
            &[
                "latency",
                "--nodes",
                "200",
                "--pods",
                "20",
                "--events",
                events,
                "--qps",
                "200",
                "--burst",
                "400",
                "--timeout",
                "120",
            ],
            Duration::from_secs(150),
            "notice_to_cordon_under_drain_load_200_nodes_20_pods_qps200_burst400.p50",
        ));
    }
    // 100,000 pods take about 10 s, so --quick keeps the full size.
    if runs(Only::KubeSim) {
        figures.extend(run_bench(
            &bench_sim,
            &["--nodes", "5000", "--pods", "20", "--patches", "1000"],
            Duration::from_secs(if args.quick { 120 } else { 600 }),
            "kube_sim_list.seconds_per_list",
        ));
    }
    // (c) Idle RSS.
    if runs(Only::Rss) {
        figures.push(
            idle_rss_imds(root)
                .unwrap_or_else(|e| Figure::missing("idle_rss_spot_nth_imds", "MiB", format!("{e:#}"))),
        );
        figures.push(
            idle_rss_queue(root)
                .unwrap_or_else(|e| Figure::missing("idle_rss_spot_nth_queue", "MiB", format!("{e:#}"))),
        );
    }
    // (d) Binary size.
    if runs(Only::Size) {
        figures.extend(binary_size(&release.join("spot-nth")));
    }
    // (e) Scheduling, packing and consolidation.
    if runs(Only::Provisioning) {
        figures.extend(provisioning::figures(root, args.quick, tools.as_ref().err()));
    }
    // (f) Interruption to replacement.
    if runs(Only::Interruption) {
        figures.extend(interruption::figures(root, args.quick));
    }
    // (g) The spot-sim run.
    if runs(Only::SpotSim) {
        figures.extend(sim::figures(root, args.quick));
    }

    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let report = Value::Array(figures.iter().map(Figure::to_json).collect());
    let path = dir.join("report.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    println!("{}", markdown(&figures));
    eprintln!(
        "xtask: bench{} took {:.0} s (build included); report: {}",
        if args.quick { " --quick" } else { "" },
        started.elapsed().as_secs_f64(),
        path.display()
    );
    Ok(())
}

/// One `cargo build --release` of spot-nth's side: the handler, spot-kube-sim and their
/// bench examples. spot-aws is not selected: its dev-dependencies (SDK `test-util` features)
/// would then be unified into the SDK crates and rebuild them.
fn build(root: &Path) -> Result<()> {
    cargo_release(
        root,
        &[
            "-p",
            "spot-nth",
            "-p",
            "spot-k8s",
            "--bins",
            "--examples",
            "--features",
            "spot-k8s/sim-bin",
        ],
    )
}

/// One `cargo build --release` of the provisioning side, apart from spot-nth's so that
/// spot-core's `lp` and the simulators' features are not unified into the measured
/// `spot-nth` binary: `bench_provisioning` (spot-core with `lp`), `bench_interruption` and
/// the `spot-sim` binary. None of them links the AWS SDK.
fn build_provisioning_side(root: &Path) -> Result<()> {
    cargo_release(
        root,
        &[
            "-p",
            "spot-core",
            "-p",
            "spot-provisioner",
            "-p",
            "spot-sim",
            "--example",
            "bench_provisioning",
            "--example",
            "bench_interruption",
            "--bin",
            "spot-sim",
            "--features",
            "spot-core/lp",
        ],
    )
}

/// `nice -n 19 cargo build --release ARGS` in the workspace root.
fn cargo_release(root: &Path, args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    eprintln!("xtask: nice -n 19 cargo build --release {}", args.join(" "));
    let status = Command::new("nice")
        .args(["-n", "19"])
        .arg(&cargo)
        .args(["build", "--release"])
        .args(args)
        .current_dir(root)
        .status()
        .context("running nice cargo build")?;
    if !status.success() {
        bail!("cargo build --release {} failed with {status}", args.join(" "));
    }
    Ok(())
}

/// Runs a bench binary that prints JSON figures on stdout; on failure, one missing figure
/// named `fallback` says why.
fn run_bench(exe: &Path, args: &[&str], limit: Duration, fallback: &str) -> Vec<Figure> {
    eprintln!("xtask: {} {}", exe.display(), args.join(" "));
    match run_capture(Command::new(exe).args(args), limit) {
        Ok((status, stdout)) => {
            let figures: Vec<Figure> = stdout.lines().filter_map(parse_figure).collect();
            if status.is_some_and(|s| s.success()) && !figures.is_empty() {
                return figures;
            }
            let why = match status {
                Some(s) => format!("{} exited with {s}", exe.display()),
                None => format!("{} did not finish within {} s", exe.display(), limit.as_secs()),
            };
            if figures.is_empty() {
                vec![Figure::missing(fallback, "s", why)]
            } else {
                figures
            }
        }
        Err(e) => vec![Figure::missing(fallback, "s", format!("{e:#}"))],
    }
}

/// `{"name", "value", "unit", "note"}`.
fn parse_figure(line: &str) -> Option<Figure> {
    let v: Value = serde_json::from_str(line.trim()).ok()?;
    Some(Figure::new(
        v.get("name")?.as_str()?,
        v.get("value").and_then(Value::as_f64),
        v.get("unit").and_then(Value::as_str).unwrap_or(""),
        v.get("note").and_then(Value::as_str).map(str::to_owned),
    ))
}

/// Runs a command with stderr passed through; returns its status (None when killed at the
/// limit) and stdout.
fn run_capture(cmd: &mut Command, limit: Duration) -> Result<(Option<ExitStatus>, String)> {
    let mut child = Guard(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {cmd:?} (was it built?)"))?,
    );
    let mut stdout = child.0.stdout.take().context("stdout")?;
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let deadline = now() + limit;
    let status = loop {
        if let Some(s) = child.0.try_wait()? {
            break Some(s);
        }
        if now() >= deadline {
            let _ = child.0.kill();
            let _ = child.0.wait();
            break None;
        }
        pause(Duration::from_millis(100));
    };
    let out = reader.join().unwrap_or_default();
    Ok((status, out))
}

/// A child process killed (by its pid) and reaped when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a server that prints its address as the first line of stdout.
fn start_server(cmd: &mut Command) -> Result<(Guard, String)> {
    let mut child = Guard(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {cmd:?} (was it built?)"))?,
    );
    let stdout = child.0.stdout.take().context("stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    if line.trim().is_empty() {
        bail!("{cmd:?} printed no address");
    }
    Ok((child, line.trim().to_owned()))
}

/// A spot-kube-sim with one node, and its kubeconfig.
fn kube_sim(root: &Path, dir: &Path) -> Result<(Guard, PathBuf)> {
    let kubeconfig = dir.join("kubeconfig");
    let (guard, _) = start_server(
        Command::new(root.join("target/release/spot-kube-sim"))
            .args(["--listen", "127.0.0.1:0", "--nodes", "1", "--write-kubeconfig"])
            .arg(&kubeconfig),
    )?;
    Ok((guard, kubeconfig))
}

/// Starts `spot-nth`, waits 5 s idle and reads its VmRSS.
fn idle_rss(root: &Path, name: &str, mode: &str, env: &[(&str, String)]) -> Result<Figure> {
    let free = || -> Result<String> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
            .to_string())
    };
    let mut cmd = Command::new(root.join("target/release/spot-nth"));
    cmd.arg(mode)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PROBES_SERVER_PORT", free()?)
        .env("PROMETHEUS_SERVER_PORT", free()?)
        .env("ENABLE_PROMETHEUS_SERVER", "true")
        .env("TAINT_NODE", "true")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = Guard(
        cmd.spawn()
            .context("starting target/release/spot-nth (was it built?)")?,
    );
    let stderr = child.0.stderr.take().context("stderr")?;
    let log = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut out);
        out
    });
    pause(Duration::from_secs(5));
    if let Some(status) = child.0.try_wait()? {
        let log = log.join().unwrap_or_default();
        bail!(
            "spot-nth {mode} exited with {status}: {}",
            log.lines().last().unwrap_or("")
        );
    }
    let pid = child.0.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS in /proc/PID/status")?;
    drop(child);
    let log = log.join().unwrap_or_default();
    let started = log.contains("spot-nth started");
    Ok(Figure::new(
        name,
        Some(kib / 1024.0),
        "MiB",
        Some(format!(
            "VmRSS after 5 s idle{}",
            if started {
                ""
            } else {
                " (the start-up log line was not seen)"
            }
        )),
    ))
}

fn idle_rss_imds(root: &Path) -> Result<Figure> {
    let dir = tempdir(root, "imds")?;
    let (_sim, kubeconfig) = kube_sim(root, &dir)?;
    // spot-imds-sim's simulator, served by the bench example: building the spot-aws binary
    // would bring spot-aws's dev-dependency features into this build.
    let (_imds, line) =
        start_server(Command::new(root.join("target/release/examples/bench_nth")).arg("imds-sim"))?;
    let url = line.strip_prefix("listening on ").unwrap_or(&line).to_owned();
    let figure = idle_rss(
        root,
        "idle_rss_spot_nth_imds",
        "imds",
        &[
            ("KUBECONFIG", kubeconfig.display().to_string()),
            ("NODE_NAME", "sim-node-0".to_owned()),
            ("INSTANCE_METADATA_URL", url),
        ],
    );
    let _ = std::fs::remove_dir_all(&dir);
    figure
}

fn idle_rss_queue(root: &Path) -> Result<Figure> {
    let dir = tempdir(root, "queue")?;
    let (_sim, kubeconfig) = kube_sim(root, &dir)?;
    let moto = Moto::start(root)?;
    let queue_url = create_queue(&moto.endpoint(), "spot-nth-bench")?;
    let figure = idle_rss(
        root,
        "idle_rss_spot_nth_queue",
        "queue",
        &[
            ("KUBECONFIG", kubeconfig.display().to_string()),
            ("QUEUE_URL", queue_url),
            ("AWS_REGION", "us-east-1".to_owned()),
            ("AWS_ENDPOINT", moto.endpoint()),
            ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
            ("POD_NAME", "spot-nth-bench".to_owned()),
            ("NAMESPACE", "default".to_owned()),
        ],
    );
    drop(moto);
    let _ = std::fs::remove_dir_all(&dir);
    figure
}

fn tempdir(root: &Path, what: &str) -> Result<PathBuf> {
    let dir = root
        .join("target/bench/tmp")
        .join(format!("{what}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Creates an SQS queue with one JSON-protocol call (moto ignores the signature) and returns
/// its URL.
fn create_queue(endpoint: &str, name: &str) -> Result<String> {
    let addr = endpoint
        .strip_prefix("http://")
        .context("moto endpoint is not http")?;
    let body = json!({"QueueName": name}).to_string();
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "POST / HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/x-amz-json-1.0\r\n\
         X-Amz-Target: AmazonSQS.CreateQueue\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=testing/20250101/us-east-1/sqs/aws4_request, SignedHeaders=host;x-amz-target, Signature=0\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (_, payload) = response
        .split_once("\r\n\r\n")
        .context("no HTTP body from moto")?;
    let v: Value = serde_json::from_str(payload)
        .with_context(|| format!("CreateQueue answered: {}", response.lines().next().unwrap_or("")))?;
    v.get("QueueUrl")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .with_context(|| format!("no QueueUrl in {payload}"))
}

/// The stripped release binary's size, raw and gzip-compressed (an image layer is compressed).
fn binary_size(exe: &Path) -> Vec<Figure> {
    let bytes = match std::fs::read(exe) {
        Ok(b) => b,
        Err(e) => {
            return vec![
                Figure::missing(
                    "spot_nth_binary_size_stripped",
                    "MB",
                    format!("{}: {e}", exe.display()),
                ),
                Figure::missing(
                    "spot_nth_binary_size_gzip",
                    "MB",
                    format!("{}: {e}", exe.display()),
                ),
            ];
        }
    };
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let compressed = gz.write_all(&bytes).and_then(|()| gz.finish()).map(|v| v.len());
    let mb = |n: usize| n as f64 / 1e6;
    vec![
        Figure::new(
            "spot_nth_binary_size_stripped",
            Some(mb(bytes.len())),
            "MB",
            Some(format!(
                "target/release/spot-nth, {} bytes (release profile: strip = true, thin LTO)",
                bytes.len()
            )),
        ),
        match compressed {
            Ok(n) => Figure::new(
                "spot_nth_binary_size_gzip",
                Some(mb(n)),
                "MB",
                Some(format!("gzip -6 of the stripped binary, {n} bytes")),
            ),
            Err(e) => Figure::missing("spot_nth_binary_size_gzip", "MB", e),
        },
    ]
}

/// The Markdown table, with notes below.
fn markdown(figures: &[Figure]) -> String {
    let num = |v: Option<f64>| match v {
        None => "n/a".to_owned(),
        Some(v) if v == v.trunc() && v.abs() < 1e9 => format!("{v:.0}"),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 1.0 => format!("{v:.2}"),
        Some(v) => format!("{v:.3}"),
    };
    let mut out = String::from("| benchmark | value | unit | anchor | goal |\n|---|---:|---|---|---|\n");
    let mut notes = Vec::new();
    for f in figures {
        let anchor = match (&f.anchor_value, &f.anchor_source) {
            (Some(v), Some(s)) => format!("{} ({s})", num(Some(*v))),
            (None, Some(s)) => s.clone(),
            _ => "—".to_owned(),
        };
        let mut value = num(f.value);
        if let Some(note) = &f.note {
            let i = match notes.iter().position(|n| n == note) {
                Some(i) => i + 1,
                None => {
                    notes.push(note.clone());
                    notes.len()
                }
            };
            value = format!("{value} [{i}]");
        }
        out.push_str(&format!(
            "| `{}` | {value} | {} | {anchor} | {} |\n",
            f.name,
            f.unit,
            f.goal.as_deref().unwrap_or("—")
        ));
    }
    if !notes.is_empty() {
        out.push('\n');
        for (i, n) in notes.iter().enumerate() {
            out.push_str(&format!("[{}] {n}\n", i + 1));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_get_anchors_and_goals() {
        let f = parse_figure(
            r#"{"name":"wave_200_nodes_20_pods_qps200_burst400_workers200.taints_lost","value":0,"unit":"nodes","note":null}"#,
        )
        .unwrap();
        assert_eq!(f.value, Some(0.0));
        assert_eq!(f.goal.as_deref(), Some("0"));
        let f = Figure::new("wave_x.all_tainted_cordoned", Some(3.5), "s", None);
        assert_eq!(f.anchor_value, Some(120.0));
        assert!(f.anchor_source.unwrap().contains("#1280"));
        let f = Figure::missing("idle_rss_spot_nth_queue", "MiB", "moto missing");
        assert_eq!(f.value, None);
        assert_eq!(f.anchor_value, Some(24.0));
        assert!(f.note.unwrap().starts_with("not measured"));
        assert_eq!(parse_figure("not json"), None);
    }

    #[test]
    fn table_marks_notes() {
        let t = markdown(&[
            Figure::new("a", Some(1.25), "s", None),
            Figure::missing("b", "MiB", "why"),
        ]);
        assert!(t.contains("| `a` | 1.25 | s |"), "{t}");
        assert!(t.contains("| `b` | n/a [1] | MiB |"), "{t}");
        assert!(t.contains("[1] not measured: why"), "{t}");
    }
}
