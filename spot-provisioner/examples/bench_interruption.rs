//! Interruption benchmark: the time from a spot interruption notice to its replacement
//! NodeClaim, through the real interruption controller, provisioner, spot-kube-sim (over
//! HTTP, with its scheduler, kubelet and ReplicaSet controller) and the simulated cloud.
//!
//! ```text
//! cargo run --release -p spot-provisioner --example bench_interruption -- --nodes 100 --singles 20 --wave 50
//! ```
//!
//! A fleet of `--nodes` nodes is provisioned (one `api` pod per node by anti-affinity, ten
//! small `web` pods per node), then the interruption controller starts and receives:
//!
//! - `--singles` notices one at a time (each handled fully before the next);
//! - a wave of `--wave` notices at once (distinct nodes).
//!
//! For each notice the latency is measured from handing it to the event source to the first
//! sight (a NodeClaim watch) of its decision: the replacement NodeClaim created, or, when the
//! node's pods fit elsewhere, the NodeClaim marked `Interrupted`. The controller's own
//! histogram (`spot_provisioner_interruption_replacement_seconds`, from receipt to creation)
//! is read as well. Figures are printed as JSON lines on stdout
//! (`{"name", "value", "unit", "note"}`) for `cargo xtask bench`; progress goes to stderr.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use spot_core::event::{EventKind, InterruptionEvent, Origin, SpotAction};
use spot_core::source::MemorySource;
use spot_k8s::sim::{Sim, SimConfig};
use spot_provisioner::api::NodeClaim;
use spot_provisioner::batcher::BatchWindow;
use spot_provisioner::disruption::orchestrate::{REPLACEMENT_FOR_ANNOTATION, Record};
use spot_provisioner::interruption::Interruption;
use spot_provisioner::{InstanceCatalog, Provisioner, Settings};
use spot_sim::cloud::SimClock;
use spot_sim::register::RegistrarConfig;
use spot_sim::{KubeRegistrar, MarketConfig, SimCloud, SimCloudConfig};
use tokio::time::Instant;

#[derive(Debug)]
struct Args {
    nodes: usize,
    singles: usize,
    wave: usize,
    timeout: Duration,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        nodes: 100,
        singles: 20,
        wave: 50,
        timeout: Duration::from_secs(600),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| -> Result<usize> {
            let v = it.next().with_context(|| format!("{name} needs a value"))?;
            v.parse().with_context(|| format!("{name}: invalid value {v:?}"))
        };
        match flag.as_str() {
            "--nodes" => args.nodes = value("--nodes")?,
            "--singles" => args.singles = value("--singles")?,
            "--wave" => args.wave = value("--wave")?,
            "--timeout" => args.timeout = Duration::from_secs(value("--timeout")? as u64),
            other => {
                bail!("unknown argument {other:?} (--nodes N, --singles N, --wave N, --timeout SECONDS)")
            }
        }
    }
    if args.nodes == 0 {
        bail!("--nodes: invalid value 0: at least one node is needed");
    }
    if args.singles + args.wave > args.nodes {
        bail!(
            "--singles {} + --wave {} exceed --nodes {}: each notice needs its own node",
            args.singles,
            args.wave,
            args.nodes
        );
    }
    Ok(args)
}

fn figure(name: &str, value: Option<f64>, unit: &str, note: Option<String>) -> Value {
    json!({"name": name, "value": value, "unit": unit, "note": note})
}

/// The `q` quantile (nearest rank) of sorted values.
fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

async fn create<K>(client: &Client, obj: Value) -> Result<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(obj)?;
    let url = K::url_path(&(), obj.meta().namespace.as_deref());
    let req = http::Request::post(url)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&obj)?)?;
    Ok(client.request(req).await?)
}

fn deployment(name: &str, replicas: usize, cpu: &str, memory: &str, spread: bool) -> Value {
    let mut spec = json!({"terminationGracePeriodSeconds": 1, "containers": [{"name": "app", "image": "nginx",
        "resources": {"requests": {"cpu": cpu, "memory": memory}}}]});
    if spread {
        spec["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": name}}}]}});
    }
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
           "metadata": {"name": name, "namespace": "default"},
           "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                    "template": {"metadata": {"labels": {"app": name}}, "spec": spec}}})
}

/// When each interrupted NodeClaim's decision was first seen (replacement created, or the
/// claim marked), by the claim's name.
type Decisions = Arc<Mutex<BTreeMap<String, Instant>>>;

/// Watches NodeClaims and records decisions.
fn watch_decisions(client: &Client) -> Decisions {
    let seen: Decisions = Arc::default();
    let out = seen.clone();
    let api = Api::<NodeClaim>::all(client.clone());
    tokio::spawn(async move {
        let stream = watcher(api, watcher::Config::default());
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            let Ok(watcher::Event::Apply(c) | watcher::Event::InitApply(c)) = ev else {
                continue;
            };
            let now = Instant::now();
            let mut decided: Vec<String> = c
                .annotations()
                .get(REPLACEMENT_FOR_ANNOTATION)
                .map(|v| v.split(',').map(str::to_owned).collect())
                .unwrap_or_default();
            if Record::of(&c).is_some_and(|r| r.reason == "Interrupted") {
                decided.push(c.name_any());
            }
            let mut seen = out.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for d in decided {
                seen.entry(d).or_insert(now);
            }
        }
    });
    seen
}

fn notice(instance: &str, id: &str) -> InterruptionEvent {
    let now = time::OffsetDateTime::now_utc();
    InterruptionEvent::new(
        instance,
        EventKind::SpotInterruption {
            action: SpotAction::Terminate,
            deadline: now + time::Duration::minutes(2),
        },
        id,
        now,
        Origin::Queue {
            message_id: id.to_owned(),
            upstream_id: None,
        },
    )
}

fn instance_id(c: &NodeClaim) -> Option<String> {
    c.status
        .as_ref()?
        .provider_id
        .as_deref()?
        .rsplit('/')
        .next()
        .map(str::to_owned)
}

fn initialized(c: &NodeClaim) -> bool {
    c.status.as_ref().is_some_and(|s| s.is_true("Initialized"))
}

/// Waits until `check` holds, polling, or fails after `limit`.
async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let start = Instant::now();
    loop {
        if check().await? {
            return Ok(());
        }
        if start.elapsed() > limit {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every pod running and every NodeClaim initialized, none deleting.
async fn settled(client: &Client, pods_wanted: usize) -> Result<bool> {
    let pods = Api::<Pod>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let claims = Api::<NodeClaim>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let running = pods
        .iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        })
        .count();
    Ok(running == pods_wanted
        && pods.len() == pods_wanted
        && claims
            .iter()
            .all(|c| c.metadata.deletion_timestamp.is_none() && initialized(c)))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let running = Sim::new(SimConfig {
        kubelet: true,
        scheduler: true,
        replicaset_controller: true,
        ..SimConfig::default()
    })
    .start("127.0.0.1:0".parse()?)
    .await
    .context("starting spot-kube-sim")?;
    let client = Client::try_from(kube::Config::new(running.url().parse()?))?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (_, crd) in spot_provisioner::api::crds() {
        crds.create(&PostParams::default(), &crd).await?;
    }
    create::<spot_provisioner::api::SpotNodeClass>(
        &client,
        json!({"apiVersion": "spot.dev/v1", "kind": "SpotNodeClass", "metadata": {"name": "default"},
               "spec": {"zones": [{"zone": "us-east-1a"}, {"zone": "us-east-1b"}, {"zone": "us-east-1c"}]}}),
    )
    .await?;
    create::<spot_provisioner::api::NodePool>(
        &client,
        json!({"apiVersion": "karpenter.sh/v1", "kind": "NodePool", "metadata": {"name": "default"},
        "spec": {"disruption": {"consolidateAfter": "Never"}, "template": {"spec": {
            "nodeClassRef": {"group": "spot.dev", "kind": "SpotNodeClass", "name": "default"},
            "requirements": [
                {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot"]},
                {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]},
                {"key": "karpenter.k8s.aws/instance-category", "operator": "In", "values": ["c", "m", "r"]},
                {"key": "karpenter.k8s.aws/instance-generation", "operator": "Gt", "values": ["4"]}
            ]}}}}),
    )
    .await?;
    let cloud = Arc::new(SimCloud::offline(
        SimCloudConfig {
            api_latency: Duration::from_millis(20),
            clock: SimClock::Manual,
            ..SimCloudConfig::default()
        },
        MarketConfig {
            seed: 7,
            band_monthly_rates: [0.0; 5],
            ..MarketConfig::default()
        },
    )?);
    cloud.add_observer(Arc::new(KubeRegistrar::new(
        client.clone(),
        RegistrarConfig {
            registration_delay: Duration::from_millis(100),
            ready_delay: Duration::from_millis(100),
            ..RegistrarConfig::default()
        },
    )?));
    let catalog = Arc::new(InstanceCatalog::with_prices("us-east-1", cloud.clone())?);
    let provisioner = Arc::new(
        Provisioner::builder(client.clone(), cloud.clone(), catalog)
            .settings(Settings {
                batch: BatchWindow {
                    idle: Duration::from_millis(200),
                    max: Duration::from_secs(2),
                },
                resync: Duration::from_millis(200),
                ..Settings::default()
            })
            .build()?,
    );
    tokio::spawn({
        let p = provisioner.clone();
        async move {
            let _ = p.run(std::future::pending()).await;
        }
    });

    let pods = args.nodes * 11;
    eprintln!(
        "bench_interruption: provisioning {} nodes for {pods} pods",
        args.nodes
    );
    let setup = Instant::now();
    create::<Deployment>(&client, deployment("api", args.nodes, "500m", "512Mi", true)).await?;
    create::<Deployment>(
        &client,
        deployment("web", args.nodes * 10, "100m", "128Mi", false),
    )
    .await?;
    wait_until("the fleet to settle", args.timeout, || settled(&client, pods)).await?;
    let claims = Api::<NodeClaim>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    eprintln!(
        "bench_interruption: {} NodeClaims up in {:.1} s",
        claims.len(),
        setup.elapsed().as_secs_f64()
    );
    let mut victims: Vec<(String, String)> = claims
        .iter()
        .filter_map(|c| Some((c.name_any(), instance_id(c)?)))
        .collect();
    victims.sort();
    if victims.len() < args.singles + args.wave {
        bail!(
            "only {} NodeClaims for {} notices",
            victims.len(),
            args.singles + args.wave
        );
    }

    let decisions = watch_decisions(&client);
    let source = Arc::new(MemorySource::new());
    let controller = Interruption::new(provisioner.clone(), source.clone());
    tokio::spawn(async move {
        if let Err(e) = controller.run(std::future::pending()).await {
            eprintln!("bench_interruption: the interruption controller stopped: {e}");
        }
    });
    // The controller builds the NodePool templates before it receives: give it that time.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let claims_api = Api::<NodeClaim>::all(client.clone());
    let decided = |name: &str| {
        decisions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .copied()
    };

    let mut singles = Vec::new();
    for (i, (claim, instance)) in victims.iter().take(args.singles).enumerate() {
        let sent = Instant::now();
        source.push(vec![notice(instance, &format!("single-{i}"))]).await;
        wait_until("a decision", args.timeout, || async {
            Ok(decided(claim).is_some())
        })
        .await?;
        let at = decided(claim).context("decision")?;
        singles.push(at.duration_since(sent).as_secs_f64() * 1000.0);
        wait_until("the interrupted NodeClaim to go", args.timeout, || async {
            Ok(claims_api.get_opt(claim).await?.is_none())
        })
        .await?;
    }

    let wave: Vec<&(String, String)> = victims.iter().skip(args.singles).take(args.wave).collect();
    let sent = Instant::now();
    for (i, (_, instance)) in wave.iter().enumerate() {
        source.push(vec![notice(instance, &format!("wave-{i}"))]).await;
    }
    let names: BTreeSet<&str> = wave.iter().map(|(c, _)| c.as_str()).collect();
    wait_until("every wave decision", args.timeout, || async {
        Ok(names.iter().all(|n| decided(n).is_some()))
    })
    .await?;
    let mut waved: Vec<f64> = names
        .iter()
        .filter_map(|n| decided(n))
        .map(|at| at.duration_since(sent).as_secs_f64() * 1000.0)
        .collect();
    singles.sort_by(f64::total_cmp);
    waved.sort_by(f64::total_cmp);
    wait_until("the wave's NodeClaims to go", args.timeout, || async {
        let claims = claims_api.list(&ListParams::default()).await?.items;
        Ok(claims.iter().all(|c| !names.contains(c.name_any().as_str())))
    })
    .await?;
    let text = provisioner.metrics().encode();
    let created = text
        .lines()
        .filter(|l| {
            l.starts_with("spot_provisioner_nodeclaims_created_total")
                && l.contains("reason=\"interruption\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    let internal = |suffix: &str| {
        text.lines()
            .find(|l| {
                l.starts_with(&format!(
                    "spot_provisioner_interruption_replacement_seconds_{suffix}"
                ))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    let internal_mean = match (internal("sum"), internal("count")) {
        (Some(s), Some(c)) if c > 0.0 => Some(s / c * 1000.0),
        _ => None,
    };

    let n = args.nodes;
    let note = |what: &str| {
        Some(format!(
            "{what}; {n} nodes with 11 pods each; notice handed to the event source until the replacement NodeClaim (or the Interrupted mark when the pods fit elsewhere) is seen by a watch; {created} replacements created by the controller for {} notices",
            args.singles + args.wave
        ))
    };
    let single_note = note(&format!("{} notices one at a time", singles.len()));
    let wave_note = note(&format!("{} notices at once", waved.len()));
    let mut out = vec![
        figure(
            &format!("interruption_to_replacement_{n}_nodes.single.p50"),
            quantile(&singles, 0.5),
            "ms",
            single_note.clone(),
        ),
        figure(
            &format!("interruption_to_replacement_{n}_nodes.single.p99"),
            quantile(&singles, 0.99),
            "ms",
            single_note,
        ),
        figure(
            &format!("interruption_to_replacement_{n}_nodes.wave_{}.p50", args.wave),
            quantile(&waved, 0.5),
            "ms",
            wave_note.clone(),
        ),
        figure(
            &format!("interruption_to_replacement_{n}_nodes.wave_{}.p99", args.wave),
            quantile(&waved, 0.99),
            "ms",
            wave_note,
        ),
    ];
    out.push(figure(
        &format!("interruption_to_replacement_{n}_nodes.controller_mean"),
        internal_mean,
        "ms",
        Some(
            "the controller's own histogram: message received to replacements created, every notice"
                .to_owned(),
        ),
    ));
    for f in out {
        println!("{f}");
    }
    Ok(())
}
