//! `spot-nth`: the node termination handler binary. See `spot-nth --help`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use spot_aws::autoscaling::LifecycleClient;
use spot_aws::imds::{ImdsConfig, ImdsSource};
use spot_aws::instances::{InstanceResolver, ManagedTag};
use spot_aws::sqs::{SqsConfig, SqsSource};
use spot_core::clock::{Clock, TokioClock};
use spot_core::event::LifecycleAction;
use spot_core::leader::{AlwaysLeader, LeaderGate};
use spot_core::node::{DrainOptions, NodeActions, PodRef};
use spot_core::source::EventSource;
use spot_k8s::actions::{ActionsConfig, KubeNodeActions, PodSource};
use spot_k8s::lease::{LeaseElector, LeaseLock, LeaseTiming};
use spot_k8s::ratelimit::RateLimiter;
use spot_nth::config::{self, Cli, LogLevel, Mode, Settings};
use spot_nth::handler::{Deps, Handler, HandlerConfig, Lifecycle, Lookup, NodeLookup, ThisNode};
use spot_nth::metrics::Metrics;
use spot_nth::server::{self, ReadyCheck};
use spot_nth::webhook::Webhook;
use tracing::{error, info, warn};

fn main() -> ExitCode {
    spot_nth::install_crypto_provider();
    let cli = match config::parse_from(std::env::args_os(), |k| std::env::var(k).ok()) {
        Ok(cli) => cli,
        Err(config::Error::Cli(e)) => {
            // Help and version go to stdout with success; usage errors exit 2.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
        Err(e) => {
            eprintln!("spot-nth: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = cli.settings.validate(cli.mode()) {
        eprintln!("spot-nth: {e}");
        return ExitCode::from(2);
    }
    init_logging(&cli.settings);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("spot-nth: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = format!("{e:#}"), "spot-nth stopped");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(s: &Settings) {
    let level = match s.log_level {
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
    };
    let filter = tracing_subscriber::EnvFilter::new(format!(
        "warn,spot_nth={level},spot_aws={level},spot_k8s={level}"
    ));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if s.json_logging {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

/// Resolves SIGTERM or SIGINT.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

async fn kube_client(s: &Settings) -> Result<kube::Client> {
    let mut config = match &s.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {path}"))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await?
        }
        None => kube::Config::infer()
            .await
            .context("finding the Kubernetes API (in-cluster or kubeconfig)")?,
    };
    if let (Some(host), Some(port)) = (&s.kubernetes_service_host, &s.kubernetes_service_port) {
        config.cluster_url = format!("https://{host}:{port}")
            .parse()
            .context("KUBERNETES_SERVICE_HOST/PORT")?;
    }
    // kube's own retry layer retries a 429 up to 15 times with exponential backoff (minutes in
    // total): an eviction refused by a PodDisruptionBudget would then block silently and be
    // retried long after the budget allows it. Drains do their own bounded 429 backoff.
    config.default_retry = false;
    Ok(kube::Client::try_from(config)?)
}

/// The region in an SQS queue URL (`https://sqs.<region>.amazonaws.com/...`).
fn region_of_queue_url(url: &str) -> Option<String> {
    let host = url.split("://").nth(1)?.split('/').next()?;
    let mut parts = host.split('.');
    (parts.next()? == "sqs")
        .then(|| parts.next().map(str::to_owned))
        .flatten()
}

fn handler_config(s: &Settings, mode: Mode) -> Result<HandlerConfig> {
    let grace = Duration::from_secs(s.node_termination_grace_period);
    let skip_pod = match (&s.pod_name, &s.namespace) {
        (Some(name), Some(namespace)) => Some(PodRef {
            namespace: namespace.clone(),
            name: name.clone(),
        }),
        _ => None,
    };
    Ok(HandlerConfig {
        spot_interruption: s.enable_spot_interruption_draining,
        scheduled_default: s.scheduled_event_policy,
        scheduled_codes: s.scheduled_code_policies()?,
        scheduled_events: s.enable_scheduled_event_draining,
        rebalance: s.rebalance_policy(),
        rebalance_uncordon_after: s.rebalance_uncordon_after,
        // In metadata mode NTH drains on an ASG target state only when asked to.
        asg_lifecycle: mode == Mode::Queue || s.enable_asg_lifecycle_draining,
        cordon_only: s.cordon_only,
        taint_node: s.taint_node,
        taint_effect: s.taint_effect,
        out_of_service_taint: s.enable_out_of_service_taint,
        exclude_from_load_balancers: s.exclude_from_load_balancers,
        drain: DrainOptions {
            timeout: grace,
            ignore_daemonsets: s.ignore_daemon_sets,
            delete_emptydir_data: s.delete_local_data,
            grace_period_seconds: (s.pod_termination_grace_period >= 0)
                .then_some(s.pod_termination_grace_period),
            force_at_deadline: s.force_drain_at_deadline,
            skip_pod,
            ..DrainOptions::default()
        },
        node_termination_grace: grace,
        delete_if_node_not_found: s.delete_sqs_msg_if_node_not_found,
        complete_lifecycle_delay: u64::try_from(s.complete_lifecycle_action_delay_seconds)
            .ok()
            .map(Duration::from_secs),
        heartbeat: (s.heartbeat_interval > 0).then(|| {
            (
                Duration::from_secs(s.heartbeat_interval.unsigned_abs()),
                Duration::from_secs(s.heartbeat_until().unsigned_abs()),
            )
        }),
        launch_ready_timeout: Duration::from_secs(600),
        workers: s.workers as usize,
        keep_alive: Duration::from_secs(u64::from(s.sqs_msg_visibility_timeout_sec)),
        dry_run: s.dry_run,
    })
}

/// The node actions: drains in queue mode (many nodes at once) share one pod watch; in
/// metadata mode (this node only) each drain watches its node's pods. Events, when on, carry
/// KUBERNETES_EVENTS_EXTRA_ANNOTATIONS.
fn node_actions(
    s: &Settings,
    mode: Mode,
    client: kube::Client,
    limiter: RateLimiter,
    identity: &str,
) -> Result<KubeNodeActions> {
    let mut actions = KubeNodeActions::new(client)
        .with_rate_limiter(limiter)
        .with_config(ActionsConfig {
            pod_source: match mode {
                Mode::Queue => PodSource::Shared,
                Mode::Imds => PodSource::Watch,
            },
            ..ActionsConfig::default()
        });
    if s.emit_kubernetes_events {
        actions = actions
            .with_events(kube::runtime::events::Reporter {
                controller: "spot-nth".into(),
                instance: Some(identity.to_owned()),
            })
            .with_event_annotations(s.events_extra_annotations()?);
    }
    Ok(actions)
}

/// The IMDS client settings (METADATA_TRIES attempts per request on transport errors).
fn imds_config(s: &Settings) -> ImdsConfig {
    ImdsConfig {
        endpoint: s.instance_metadata_url.trim_end_matches('/').to_owned(),
        allow_imdsv1: s.allow_imdsv1,
        poll_interval: s.metadata_poll_interval,
        tries: s.metadata_tries,
        ..ImdsConfig::default()
    }
}

fn webhook(s: &Settings) -> Result<Option<Webhook>> {
    let url = match (&s.webhook_url, &s.webhook_url_file) {
        (Some(url), _) => url.clone(),
        (None, Some(file)) => std::fs::read_to_string(file)
            .with_context(|| format!("WEBHOOK_URL_FILE {file}"))?
            .trim()
            .to_owned(),
        (None, None) => return Ok(None),
    };
    let template = match &s.webhook_template_file {
        Some(file) => {
            std::fs::read_to_string(file).with_context(|| format!("WEBHOOK_TEMPLATE_FILE {file}"))?
        }
        None => s.webhook_template.clone(),
    };
    Ok(Some(Webhook::new(
        url,
        &s.webhook_headers,
        &template,
        s.webhook_proxy.as_deref(),
    )?))
}

/// Queue mode: EC2 DescribeInstances (cached) to find the node of an instance.
struct QueueLookup {
    resolver: InstanceResolver,
    check_tag: bool,
    provider_id: Option<kube::Client>,
}

#[async_trait]
impl NodeLookup for QueueLookup {
    async fn lookup(&self, instance_id: &str) -> Result<Lookup, String> {
        let info = self
            .resolver
            .resolve_one(instance_id)
            .await
            .map_err(|e| e.to_string())?;
        if self.check_tag && info.as_ref().is_some_and(|i| !i.managed) {
            return Ok(Lookup::Unmanaged);
        }
        if let Some(client) = &self.provider_id {
            return match spot_k8s::nodes::by_instance_id(client, instance_id)
                .await
                .map_err(|e| e.to_string())?
            {
                Some(node) => Ok(Lookup::Node(node)),
                None => Ok(Lookup::NotFound),
            };
        }
        Ok(match info.and_then(|i| i.node_name) {
            Some(node) => Lookup::Node(node),
            None => Lookup::NotFound,
        })
    }
}

/// What differs between the modes.
struct Wiring {
    source: Arc<dyn EventSource>,
    lookup: Arc<dyn NodeLookup>,
    lifecycle: Option<Arc<dyn Lifecycle>>,
    leader: Arc<dyn LeaderGate>,
}

struct AsgLifecycle(LifecycleClient);

#[async_trait]
impl Lifecycle for AsgLifecycle {
    async fn complete(&self, instance_id: &str, action: &LifecycleAction) -> Result<(), String> {
        self.0
            .complete(instance_id, action)
            .await
            .map_err(|e| e.to_string())
    }
    async fn heartbeat(&self, instance_id: &str, action: &LifecycleAction) -> Result<(), String> {
        self.0
            .heartbeat(instance_id, action)
            .await
            .map_err(|e| e.to_string())
    }
}

fn read_uptime(path: Option<&str>) -> Result<Duration> {
    let path = path.unwrap_or("/proc/uptime");
    let text = std::fs::read_to_string(path).with_context(|| format!("reading uptime from {path}"))?;
    let secs: f64 = text
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("{path}: not an uptime: {text:?}"))?;
    Ok(Duration::from_secs_f64(secs.max(0.0)))
}

async fn serve(addr: SocketAddr, router: axum::Router) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    info!(%addr, "serving");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            error!(error = %e, "HTTP server stopped");
        }
    });
    Ok(())
}

async fn run(cli: Cli) -> Result<()> {
    let mode = cli.mode();
    let s = cli.settings;
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let metrics = Arc::new(Metrics::new());
    let client = kube_client(&s).await?;
    let limiter = RateLimiter::new(s.kube_api_qps, s.kube_api_burst)?;
    let identity = s
        .pod_name
        .clone()
        .or_else(|| s.node_name.clone())
        .unwrap_or_else(|| "spot-nth".to_owned());
    let nodes: Arc<dyn NodeActions> = Arc::new(node_actions(&s, mode, client.clone(), limiter, &identity)?);

    let Wiring {
        source,
        lookup,
        lifecycle,
        leader,
    } = match mode {
        Mode::Imds => {
            let node = s.node_name.clone().unwrap_or_default();
            let source = ImdsSource::new(&imds_config(&s))?.with_clock(clock.clone());
            Wiring {
                source: Arc::new(source),
                lookup: Arc::new(ThisNode(node)),
                lifecycle: None,
                leader: Arc::new(AlwaysLeader),
            }
        }
        Mode::Queue => {
            let queue_url = s.queue_url.clone().unwrap_or_default();
            let region = s.aws_region.clone().or_else(|| region_of_queue_url(&queue_url));
            if region.is_none() {
                bail!("AWS_REGION is not set and the queue URL {queue_url:?} names no region");
            }
            let sdk = spot_aws::config::load(&spot_aws::config::Endpoint {
                region,
                url: s.aws_endpoint.clone(),
            })
            .await;
            let sqs = SqsSource::new(
                aws_sdk_sqs::Client::new(&sdk),
                SqsConfig::new(queue_url)
                    .visibility_timeout(Duration::from_secs(u64::from(s.sqs_msg_visibility_timeout_sec))),
            )?
            .with_clock(clock.clone());
            let mut resolver = InstanceResolver::new(aws_sdk_ec2::Client::new(&sdk));
            if s.check_tag_before_draining {
                resolver = resolver.with_managed_tag(ManagedTag::key(s.managed_tag.clone()));
            }
            let lookup = QueueLookup {
                resolver,
                check_tag: s.check_tag_before_draining,
                provider_id: s.use_provider_id.then(|| client.clone()),
            };
            // The SDKs' per-service endpoint variable wins over AWS_ENDPOINT for Auto Scaling
            // (emulators such as moto do not implement the lifecycle-action calls).
            let mut asg = aws_sdk_autoscaling::config::Builder::from(&sdk);
            if let Some(url) = std::env::var("AWS_ENDPOINT_URL_AUTO_SCALING")
                .ok()
                .filter(|u| !u.is_empty())
            {
                asg = asg.endpoint_url(url);
            }
            let lifecycle = AsgLifecycle(LifecycleClient::new(aws_sdk_autoscaling::Client::from_conf(
                asg.build(),
            )));
            let namespace = s
                .namespace
                .clone()
                .unwrap_or_else(|| client.default_namespace().to_owned());
            let lock = LeaseLock::new(
                client.clone(),
                &namespace,
                "spot-nth",
                &identity,
                LeaseTiming::default(),
                clock.clone(),
            )?;
            Wiring {
                source: Arc::new(sqs),
                lookup: Arc::new(lookup),
                lifecycle: Some(Arc::new(lifecycle)),
                leader: Arc::new(LeaseElector::start(lock)),
            }
        }
    };

    let ready: ReadyCheck = {
        let (source, client) = (source.clone(), client.clone());
        Arc::new(move || {
            let (source, client) = (source.clone(), client.clone());
            Box::pin(async move {
                if !source.ready().await {
                    return Err(format!("event source {} is not reachable", source.name()));
                }
                client
                    .apiserver_version()
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("Kubernetes API: {e}"))
            })
        })
    };
    let router = server::router(metrics.clone(), &s.probes_server_endpoint, ready);
    match (s.enable_probes_server, s.enable_prometheus_server) {
        (true, true) if s.probes_server_port == s.prometheus_server_port => {
            serve(([0, 0, 0, 0], s.probes_server_port).into(), router).await?;
        }
        (probes, prometheus) => {
            if probes {
                serve(([0, 0, 0, 0], s.probes_server_port).into(), router.clone()).await?;
            }
            if prometheus {
                serve(([0, 0, 0, 0], s.prometheus_server_port).into(), router).await?;
            }
        }
    }

    let handler = Handler::new(
        handler_config(&s, mode)?,
        Deps {
            source,
            nodes,
            lookup,
            lifecycle,
            webhook: webhook(&s)?,
            metrics,
            clock,
        },
    );
    info!(mode = ?mode, dry_run = s.dry_run, identity, "spot-nth started");

    if mode == Mode::Imds && s.enable_scheduled_event_draining {
        let node = s.node_name.clone().unwrap_or_default();
        match read_uptime(s.uptime_from_file.as_deref()) {
            Ok(uptime) => match handler.uncordon_after_reboot(&node, uptime).await {
                Ok(true) => info!(node, "uncordoned after a scheduled reboot"),
                Ok(false) => {}
                Err(e) => warn!(node, error = %e, "uncordon after reboot failed"),
            },
            Err(e) => warn!(error = format!("{e:#}"), "cannot tell whether the node rebooted"),
        }
    }

    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    tokio::select! {
        () = &mut shutdown => {
            info!("signal received before leadership: exiting");
            leader.release().await;
            return Ok(());
        }
        r = leader.acquire() => r?,
    }
    // Rebalance cordons of an earlier process still get their automatic uncordon.
    let cordoned = match mode {
        Mode::Imds => s.node_name.clone().into_iter().collect(),
        Mode::Queue => spot_k8s::nodes::with_annotation(
            &client,
            spot_nth::handler::ANN_REASON,
            "rebalance-recommendation",
        )
        .await
        .unwrap_or_else(|e| {
            warn!(
                error = format!("{e:#}"),
                "listing nodes to resume automatic uncordons failed"
            );
            Vec::new()
        }),
    };
    handler.resume_auto_uncordons(&cordoned).await;
    let lost = tokio::select! {
        () = handler.run(&mut shutdown) => false,
        () = leader.lost() => true,
    };
    leader.release().await;
    if lost {
        bail!("leadership lost: exiting so that the restarted pod campaigns again");
    }
    info!("spot-nth stopped cleanly");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_from_queue_urls() {
        assert_eq!(
            region_of_queue_url("https://sqs.eu-west-1.amazonaws.com/123/q").as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(region_of_queue_url("http://127.0.0.1:5000/123/q"), None);
    }

    fn settings(env: &[(&str, &str)]) -> Settings {
        let env: std::collections::HashMap<String, String> =
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        config::parse_from(["spot-nth"], |k| env.get(k).cloned())
            .unwrap()
            .settings
    }

    #[test]
    fn metadata_tries_reach_the_imds_client() {
        let s = settings(&[
            ("METADATA_TRIES", "7"),
            ("INSTANCE_METADATA_URL", "http://127.0.0.1:1338/"),
        ]);
        let c = imds_config(&s);
        assert_eq!(c.tries, 7);
        assert_eq!(c.endpoint, "http://127.0.0.1:1338");
        assert_eq!(imds_config(&settings(&[])).tries, 3);
    }

    #[tokio::test]
    async fn node_actions_per_mode_with_event_annotations() {
        let client =
            kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap())).unwrap();
        let limiter = RateLimiter::unlimited();
        let s = settings(&[
            ("EMIT_KUBERNETES_EVENTS", "true"),
            ("KUBERNETES_EVENTS_EXTRA_ANNOTATIONS", "team=spot"),
        ]);
        let queue = format!(
            "{:?}",
            node_actions(&s, Mode::Queue, client.clone(), limiter.clone(), "me").unwrap()
        );
        assert!(
            queue.contains("Shared") && queue.contains("\"team\": \"spot\""),
            "{queue}"
        );
        let imds = format!(
            "{:?}",
            node_actions(&settings(&[]), Mode::Imds, client, limiter, "me").unwrap()
        );
        assert!(imds.contains("Watch") && imds.contains("events: false"), "{imds}");
    }

    #[test]
    fn uptime_files() {
        let dir = std::env::temp_dir().join(format!("spot-nth-uptime-{}", std::process::id()));
        std::fs::write(&dir, "1234.56 789.0\n").unwrap();
        assert_eq!(
            read_uptime(dir.to_str()).unwrap(),
            Duration::from_secs_f64(1234.56)
        );
        std::fs::write(&dir, "soon").unwrap();
        assert!(
            read_uptime(dir.to_str())
                .unwrap_err()
                .to_string()
                .contains("not an uptime")
        );
        std::fs::remove_file(dir).unwrap();
    }
}
