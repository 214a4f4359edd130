//! `spot-provisioner`: the provisioner controller (`run`) and offline planning (`plan`).
//! See `spot-provisioner --help`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use futures::FutureExt;
use spot_aws::sqs::{SqsConfig, SqsSource};
use spot_core::allocatable::AllocatableModel;
use spot_core::leader::LeaderGate;
use spot_core::price::{CsvPrices, OfflinePrices};
use spot_k8s::lease::{LeaseElector, LeaseLock, LeaseTiming};
use spot_provisioner::disruption::{Disruption, DisruptionSettings};
use spot_provisioner::interruption::Interruption;
use spot_provisioner::manifests::Manifests;
use spot_provisioner::plan::{self, Plan};
use spot_provisioner::{InstanceCatalog, Provisioner};
use tracing::{error, info, warn};

/// Karpenter-style provisioning for Kubernetes on EC2 Spot.
#[derive(Debug, Parser)]
#[command(name = "spot-provisioner", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Plans the NodeClaims for the pods in manifests, with no cluster and no cloud.
    Plan(PlanArgs),
    /// Runs the controller against the cluster in the kubeconfig (or in-cluster) and EC2.
    Run(RunArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, clap::Args)]
struct PlanArgs {
    /// Manifests: Pods, Deployments, ReplicaSets, StatefulSets, Jobs, DaemonSets, NodePools,
    /// SpotNodeClasses, Nodes (multi-document YAML or List; repeatable).
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    /// NodePool manifests (same as -f; NodePools may also come with the workloads).
    #[arg(long)]
    nodepool: Vec<PathBuf>,
    /// The region whose zones and prices to use.
    #[arg(long, default_value = "us-east-1", env = "AWS_REGION")]
    region: String,
    /// A price table (`instance_type,usd_per_hour` CSV): on-demand prices from it, no spot.
    #[arg(long)]
    prices: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CatalogSource {
    Ec2,
    Embedded,
}

/// A failed EC2 catalog read is retried after at most this long.
const CATALOG_RETRY: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The EC2 launch template new nodes use (name, or id `lt-...`).
    #[arg(long, env = "LAUNCH_TEMPLATE")]
    launch_template: String,
    /// Subnets by zone: `us-east-1a=subnet-0abc,us-east-1b=subnet-0def`.
    #[arg(long, env = "SUBNETS", value_delimiter = ',')]
    subnets: Vec<String>,
    /// The region.
    #[arg(long, env = "AWS_REGION")]
    region: Option<String>,
    /// An EC2 endpoint override (tests, LocalStack, moto).
    #[arg(long, env = "AWS_ENDPOINT")]
    aws_endpoint: Option<String>,
    /// Tags on every instance (`key=value`, comma-separated).
    #[arg(long, env = "INSTANCE_TAGS", value_delimiter = ',')]
    tags: Vec<String>,
    /// Lease namespace for leader election (default: the client's namespace).
    #[arg(long, env = "NAMESPACE")]
    namespace: Option<String>,
    /// This replica's identity for the Lease (default: the hostname).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Karpenter's BATCH_IDLE_DURATION.
    #[arg(long, env = "BATCH_IDLE_DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    batch_idle_duration: std::time::Duration,
    /// Karpenter's BATCH_MAX_DURATION.
    #[arg(long, env = "BATCH_MAX_DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    batch_max_duration: std::time::Duration,
    /// Log level filter.
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Where instance types, zones and spot prices come from: EC2 (DescribeInstanceTypes,
    /// DescribeInstanceTypeOfferings, DescribeSpotPriceHistory; on-demand prices from the
    /// embedded table), or the embedded catalog and prices (isolated VPCs).
    #[arg(long, env = "CATALOG", value_enum, default_value = "ec2")]
    catalog: CatalogSource,
    /// How often the EC2 catalog is read again (a failed read keeps the previous catalog and
    /// is retried within a minute).
    #[arg(long, env = "CATALOG_REFRESH_INTERVAL", default_value = "1h", value_parser = humantime::parse_duration)]
    catalog_refresh_interval: std::time::Duration,
    /// The SQS queue (URL) of EC2 interruption events (EventBridge rules for spot
    /// interruptions, rebalance recommendations, scheduled changes, state changes and
    /// capacity-reservation interruptions); without it no interruption controller runs.
    #[arg(long, env = "INTERRUPTION_QUEUE")]
    interruption_queue: Option<String>,
    /// Whether consolidation may replace a spot node by a cheaper spot node (Karpenter's
    /// `SpotToSpotConsolidation` feature gate).
    #[arg(long, env = "SPOT_TO_SPOT_CONSOLIDATION", default_value_t = true, action = clap::ArgAction::Set)]
    spot_to_spot_consolidation: bool,
    /// Single-node spot-to-spot consolidation needs at least this many cheaper instance
    /// types, and launches with that many cheapest.
    #[arg(long, env = "SPOT_TO_SPOT_MIN_TYPES", default_value_t = 15)]
    spot_to_spot_min_types: usize,
}

fn main() -> ExitCode {
    spot_aws::config::install_crypto_provider();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("spot-provisioner: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Plan(args) => runtime.block_on(run_plan(args)),
        Command::Run(args) => {
            init_logging(&args.log_level);
            runtime.block_on(run_controller(args))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spot-provisioner: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::new(format!(
        "warn,spot_provisioner={level},spot_aws={level},spot_k8s={level}"
    ));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn run_plan(args: PlanArgs) -> Result<()> {
    let mut paths = args.files.clone();
    paths.extend(args.nodepool.iter().cloned());
    let manifests = Manifests::load(&paths)?;
    for u in &manifests.unknown {
        eprintln!(
            "spot-provisioner: ignoring {} {} {:?} ({}): not a workload, NodePool, node class or Node",
            u.api_version, u.kind, u.name, u.at
        );
    }
    let catalog = match &args.prices {
        Some(path) => {
            let prices =
                CsvPrices::from_path(path).with_context(|| format!("--prices {}", path.display()))?;
            InstanceCatalog::with_prices(&args.region, Arc::new(prices))?
        }
        None => InstanceCatalog::embedded(&args.region)?,
    };
    let plan = plan::plan(&manifests, &catalog, Default::default())?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&plan)?),
        Output::Table => print_table(&plan),
    }
    Ok(())
}

fn print_table(plan: &Plan) {
    println!(
        "{:<16} {:<10} {:<12} {:>10} {:>5}  CANDIDATES",
        "INSTANCE TYPE", "CAPACITY", "ZONE", "USD/HOUR", "PODS"
    );
    for c in &plan.nodeclaims {
        let more = c.instance_types.len().saturating_sub(4);
        let mut candidates = c
            .instance_types
            .iter()
            .take(4)
            .cloned()
            .collect::<Vec<_>>()
            .join(",");
        if more > 0 {
            candidates.push_str(&format!(" (+{more})"));
        }
        println!(
            "{:<16} {:<10} {:<12} {:>10.4} {:>5}  {}",
            c.instance_type,
            c.capacity_type,
            c.zone,
            c.price_usd_per_hour,
            c.pods.len(),
            candidates
        );
    }
    println!();
    println!("nodeclaims:   {}", plan.nodeclaims.len());
    println!("total:        ${:.4}/hour", plan.total_usd_per_hour);
    match (plan.lower_bound_usd_per_hour, plan.ratio) {
        (Some(b), Some(r)) => println!("lower bound:  ${b:.4}/hour (LP relaxation; total is {r:.3}x)"),
        (Some(b), None) => println!("lower bound:  ${b:.4}/hour"),
        _ => println!("lower bound:  not computed"),
    }
    if !plan.on_existing_nodes.is_empty() {
        println!("on existing nodes: {} pods", plan.on_existing_nodes.len());
    }
    if !plan.unschedulable.is_empty() {
        println!("unschedulable: {}", plan.unschedulable.len());
        for u in &plan.unschedulable {
            println!("  {}: {}", u.pod, u.reason);
        }
    }
}

async fn run_controller(args: RunArgs) -> Result<()> {
    let mut subnets = BTreeMap::new();
    for s in &args.subnets {
        let Some((zone, subnet)) = s.split_once('=') else {
            bail!("SUBNETS / --subnets: {s:?} is not zone=subnet-id");
        };
        subnets.insert(zone.trim().to_owned(), subnet.trim().to_owned());
    }
    if subnets.is_empty() {
        bail!("SUBNETS / --subnets: at least one zone=subnet-id is needed");
    }
    let mut tags = BTreeMap::new();
    for t in args.tags.iter().filter(|t| !t.is_empty()) {
        let Some((k, v)) = t.split_once('=') else {
            bail!("INSTANCE_TAGS / --tags: {t:?} is not key=value");
        };
        tags.insert(k.to_owned(), v.to_owned());
    }
    let sdk = spot_aws::config::load(&spot_aws::config::Endpoint {
        region: args.region.clone(),
        url: args.aws_endpoint.clone(),
    })
    .await;
    let region = sdk
        .region()
        .map(|r| r.to_string())
        .context("AWS_REGION / --region: no region configured")?;
    let launch_template = if args.launch_template.starts_with("lt-") {
        spot_aws::fleet::LaunchTemplate::Id(args.launch_template.clone())
    } else {
        spot_aws::fleet::LaunchTemplate::Name(args.launch_template.clone())
    };
    let mut config = spot_aws::fleet::Ec2FleetConfig::new(launch_template, subnets);
    config.tags = tags;
    let ec2 = aws_sdk_ec2::Client::new(&sdk);
    let fleet = spot_aws::fleet::Ec2Fleet::new(ec2.clone(), config)?;
    let client = kube::Client::try_default().await.context("Kubernetes client")?;
    let (catalog, live) = match args.catalog {
        CatalogSource::Embedded => (InstanceCatalog::embedded(&region)?, false),
        CatalogSource::Ec2 => match ec2_catalog(&ec2, &region).await {
            Ok(c) => (c, true),
            Err(e) => {
                error!(error = %e, "reading the EC2 catalog failed: using the embedded one until a refresh succeeds");
                (InstanceCatalog::embedded(&region)?, false)
            }
        },
    };
    let catalog = Arc::new(catalog);
    let provisioner = Arc::new(
        Provisioner::builder(client.clone(), Arc::new(fleet), catalog)
            .settings(spot_provisioner::Settings {
                batch: spot_provisioner::batcher::BatchWindow {
                    idle: args.batch_idle_duration,
                    max: args.batch_max_duration,
                },
                ..Default::default()
            })
            .build()?,
    );
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "spot-provisioner".to_owned());
    let lock = LeaseLock::new(
        client.clone(),
        &namespace,
        "spot-provisioner",
        &identity,
        LeaseTiming::default(),
        Arc::new(spot_core::clock::TokioClock::new()),
    )?;
    let mut disruption_settings = DisruptionSettings::default();
    disruption_settings.options.spot_to_spot = args.spot_to_spot_consolidation;
    disruption_settings.options.min_spot_to_spot_types = args.spot_to_spot_min_types;
    disruption_settings
        .validate()
        .context("SPOT_TO_SPOT_CONSOLIDATION / SPOT_TO_SPOT_MIN_TYPES")?;
    let interruption = match &args.interruption_queue {
        Some(url) if !url.is_empty() => {
            let sqs = SqsSource::new(
                aws_sdk_sqs::Client::new(&sdk),
                // Karpenter's visibility timeout; handlings that take longer extend it.
                SqsConfig::new(url.clone()).visibility_timeout(std::time::Duration::from_secs(20)),
            )
            .context("INTERRUPTION_QUEUE / --interruption-queue")?
            .with_clock(provisioner.clock().clone());
            Some(Interruption::new(provisioner.clone(), Arc::new(sqs)))
        }
        _ => None,
    };
    let refresh = (args.catalog == CatalogSource::Ec2).then(|| {
        tokio::spawn(refresh_catalog(
            provisioner.clone(),
            ec2.clone(),
            region.clone(),
            args.catalog_refresh_interval,
            live,
        ))
    });
    let elector = Arc::new(LeaseElector::start(lock));
    info!(identity = %identity, namespace = %namespace, "waiting for leadership");
    tokio::select! {
        r = elector.acquire() => r.context("leader election")?,
        _ = tokio::signal::ctrl_c() => {
            elector.release().await;
            return Ok(());
        }
    }
    info!(
        interruption_queue = args.interruption_queue.as_deref().unwrap_or("none"),
        "leading: provisioning, disruption and interruption"
    );
    // Every controller stops on a signal or when leadership is lost.
    let stop = {
        let elector = elector.clone();
        async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                () = elector.lost() => {}
            }
        }
        .boxed()
        .shared()
    };
    let disruption = Disruption::new(provisioner.clone(), disruption_settings);
    let result = tokio::try_join!(
        async { provisioner.clone().run(stop.clone()).await.context("provisioner") },
        async {
            disruption
                .run(stop.clone())
                .await
                .context("disruption controller")
        },
        async {
            match interruption {
                Some(i) => i.run(stop.clone()).await.context("interruption controller"),
                None => Ok(()),
            }
        },
    );
    let lost = !elector.is_leader();
    if let Some(refresh) = &refresh {
        refresh.abort();
    }
    elector.release().await;
    if let Err(e) = result {
        error!(error = format!("{e:#}"), "stopped");
        return Err(e);
    }
    if lost {
        bail!("leadership lost: exiting so that the restarted pod campaigns again");
    }
    Ok(())
}

/// The region's catalog read from EC2 (types, zonal offerings, spot prices), with on-demand
/// prices and interruption bands from the embedded tables.
async fn ec2_catalog(ec2: &aws_sdk_ec2::Client, region: &str) -> Result<InstanceCatalog> {
    let read = spot_aws::catalog::Ec2Catalog::fetch(ec2, region, Arc::new(OfflinePrices::embedded()))
        .await
        .context("reading the EC2 catalog")?;
    info!(
        region,
        types = read.types.len(),
        offered = read.offered_types(),
        spot_prices = read.prices.spot_prices(),
        "EC2 catalog read"
    );
    Ok(InstanceCatalog {
        region: read.region,
        types: read.types.into_iter().map(Arc::new).collect(),
        zones: Arc::new(read.offerings),
        prices: Arc::new(read.prices),
        model: AllocatableModel::default(),
    })
}

/// Reads the EC2 catalog every `every` (within [`CATALOG_RETRY`] after a failure, or when
/// the start-up read failed: `healthy` false) and hands it to the provisioner; a failed
/// read keeps the previous catalog.
async fn refresh_catalog(
    provisioner: Arc<Provisioner>,
    ec2: aws_sdk_ec2::Client,
    region: String,
    every: std::time::Duration,
    mut healthy: bool,
) {
    let mut ticker = tokio::time::interval(every.min(CATALOG_RETRY).max(std::time::Duration::from_secs(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut last = tokio::time::Instant::now();
    loop {
        ticker.tick().await;
        if healthy && last.elapsed() < every {
            continue;
        }
        last = tokio::time::Instant::now();
        match ec2_catalog(&ec2, &region).await {
            Ok(catalog) => {
                provisioner.set_catalog(Arc::new(catalog));
                healthy = true;
            }
            Err(e) => {
                warn!(
                    error = format!("{e:#}"),
                    "refreshing the EC2 catalog failed: keeping the previous one"
                );
                healthy = false;
            }
        }
    }
}
