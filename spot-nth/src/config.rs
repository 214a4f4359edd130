//! Configuration: every aws-node-termination-handler environment variable, with NTH's
//! defaults, plus a flag for each.
//!
//! Environment variables are layered under the command line: a flag given on the command line
//! wins; otherwise a non-empty variable is used (NTH treats an empty variable as unset).
//! Values are checked with the flag's own parser, and a bad value stops start-up with a message
//! that names the variable.

use std::ffi::OsString;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use spot_core::node::TaintEffect;

/// Errors of configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An environment variable holds a value its flag does not accept.
    #[error("invalid value {value:?} for environment variable {var} (--{flag}): {reason}")]
    InvalidEnv {
        /// The variable.
        var: &'static str,
        /// The flag it feeds.
        flag: &'static str,
        /// The value.
        value: String,
        /// Why it was refused.
        reason: String,
    },
    /// The settings contradict each other or miss something the mode needs.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// The command line itself is wrong (clap's message, help and version output).
    #[error(transparent)]
    Cli(#[from] clap::Error),
}

/// Parses NTH-style booleans (Go's strconv.ParseBool: 1, t, true, 0, f, false in any case).
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "t" | "true" => Ok(true),
        "0" | "f" | "false" => Ok(false),
        _ => Err(format!("expected true or false, got {s:?}")),
    }
}

fn parse_effect(s: &str) -> Result<TaintEffect, String> {
    s.parse::<TaintEffect>().map_err(|e| e.to_string())
}

/// Log verbosity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "lower")]
pub enum LogLevel {
    /// Debug.
    Debug,
    /// Info (default).
    Info,
    /// Warnings.
    Warn,
    /// Errors only.
    Error,
}

fn parse_log_level(s: &str) -> Result<LogLevel, String> {
    LogLevel::from_str(s, true).map_err(|_| format!("expected debug, info, warn or error, got {s:?}"))
}

/// What to do on a rebalance recommendation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RebalancePolicy {
    /// Nothing.
    None,
    /// Cordon (and taint), uncordon again when no interruption follows.
    Cordon,
    /// Cordon and drain.
    CordonAndDrain,
}

/// What to do on a scheduled maintenance event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScheduledPolicy {
    /// Nothing.
    None,
    /// Cordon only.
    Cordon,
    /// Cordon and drain at `NotBefore - NODE_TERMINATION_GRACE_PERIOD`.
    CordonAndDrain,
    /// Cordon and drain as soon as the event is seen.
    DrainNow,
}

/// Which mode to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One pod per node (DaemonSet), events from the instance metadata service.
    Imds,
    /// A Deployment that acts on any node, events from an SQS queue.
    Queue,
}

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "spot-nth",
    version,
    about = "Node termination handler for Kubernetes on EC2 Spot: cordons, taints and drains nodes \
             before EC2 takes them away. A drop-in successor of aws-node-termination-handler: every \
             NTH environment variable is accepted with its NTH default.",
    after_help = "With no subcommand the mode follows ENABLE_SQS_TERMINATION_DRAINING, as in NTH."
)]
pub struct Cli {
    /// The mode; defaults to queue when ENABLE_SQS_TERMINATION_DRAINING is true, else imds.
    #[command(subcommand)]
    pub mode: Option<ModeCommand>,
    /// Settings shared by both modes.
    #[command(flatten)]
    pub settings: Settings,
}

/// The mode subcommands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum ModeCommand {
    /// Metadata mode: run as a DaemonSet, watch this node's instance metadata service.
    Imds,
    /// Queue mode: run as a Deployment, consume interruption events from SQS.
    Queue,
}

/// Every setting. The doc comment of each is its `--help` text; `ENV` lists the variables.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    // --- Identity -------------------------------------------------------------------------
    /// Name of the node this pod runs on (required in metadata mode).
    #[arg(long, global = true)]
    pub node_name: Option<String>,
    /// Name of this pod (never evicted by its own drain).
    #[arg(long, global = true)]
    pub pod_name: Option<String>,
    /// Namespace of this pod.
    #[arg(long = "pod-namespace", global = true)]
    pub namespace: Option<String>,
    /// Kubernetes API host override (in-cluster configuration otherwise).
    #[arg(long, global = true)]
    pub kubernetes_service_host: Option<String>,
    /// Kubernetes API port override.
    #[arg(long, global = true)]
    pub kubernetes_service_port: Option<String>,
    /// Path of a kubeconfig file (out-of-cluster use).
    #[arg(long, global = true)]
    pub kubeconfig: Option<String>,

    // --- Metadata mode ----------------------------------------------------------------------
    /// Base URL of the instance metadata service.
    #[arg(
        long = "metadata-url",
        global = true,
        default_value = "http://169.254.169.254"
    )]
    pub instance_metadata_url: String,
    /// Attempts per metadata request on transport errors (2 s, then doubling, with jitter).
    #[arg(long, global = true, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub metadata_tries: u32,
    /// How often to poll the metadata service.
    #[arg(long, global = true, default_value = "2s", value_parser = humantime::parse_duration)]
    pub metadata_poll_interval: Duration,
    /// Allow falling back to IMDSv1 when no IMDSv2 token can be had.
    #[arg(long, global = true, default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub allow_imdsv1: bool,
    /// Drain on spot interruption notices.
    #[arg(long, global = true, default_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub enable_spot_interruption_draining: bool,
    /// Act on scheduled maintenance events (and uncordon after a scheduled reboot).
    #[arg(long, global = true, default_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub enable_scheduled_event_draining: bool,
    /// Watch rebalance recommendations (cordon only, unless rebalance draining is on).
    #[arg(long, global = true, default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub enable_rebalance_monitoring: bool,
    /// Cordon and drain on rebalance recommendations.
    #[arg(long, global = true, default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub enable_rebalance_draining: bool,
    /// Drain when the Auto Scaling target lifecycle state becomes Terminated.
    #[arg(long, global = true, default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub enable_asg_lifecycle_draining: bool,
    /// File to read the uptime from (the host's /proc/uptime), for uncordon after reboot.
    #[arg(long, global = true)]
    pub uptime_from_file: Option<String>,

    // --- Queue mode -------------------------------------------------------------------------
    /// Queue mode on (used only when no subcommand is given).
    #[arg(long, global = true, default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub enable_sqs_termination_draining: bool,
    /// URL of the SQS queue.
    #[arg(long, global = true)]
    pub queue_url: Option<String>,
    /// AWS region (else taken from the queue URL).
    #[arg(long, global = true)]
    pub aws_region: Option<String>,
    /// AWS endpoint override, for testing against moto or LocalStack.
    #[arg(long, global = true)]
    pub aws_endpoint: Option<String>,
    /// Maximum number of events handled at once.
    #[arg(long, global = true, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub workers: u32,
    /// Only act on instances that carry the managed tag.
    #[arg(long, global = true, default_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub check_tag_before_draining: bool,
    /// The managed tag key.
    #[arg(long, global = true, default_value = "aws-node-termination-handler/managed")]
    pub managed_tag: String,
    /// Find nodes by spec.providerID instead of the EC2 private DNS name.
    #[arg(long, global = true, default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub use_provider_id: bool,
    /// Delete a message whose instance has no node (foreign or already gone).
    #[arg(long = "delete-sqs-msg-if-node-not-found", global = true, default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub delete_sqs_msg_if_node_not_found: bool,
    /// Seconds to wait after a drain before completing the lifecycle action (-1: none).
    #[arg(long, global = true, default_value_t = -1, allow_negative_numbers = true)]
    pub complete_lifecycle_action_delay_seconds: i64,
    /// Seconds between lifecycle heartbeats while draining (-1: off; 30..3600).
    #[arg(long, global = true, default_value_t = -1, allow_negative_numbers = true)]
    pub heartbeat_interval: i64,
    /// Stop heartbeats after this many seconds (-1: 172800 when heartbeats are on).
    #[arg(long, global = true, default_value_t = -1, allow_negative_numbers = true)]
    pub heartbeat_until: i64,
    /// Visibility timeout of received messages, in seconds (1..119); extended while draining.
    #[arg(long = "sqs-msg-visibility-timeout-sec", global = true, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..120))]
    pub sqs_msg_visibility_timeout_sec: u32,

    // --- Drain and cordon -------------------------------------------------------------------
    /// Log every action instead of taking it.
    #[arg(long, global = true, default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub dry_run: bool,
    /// Cordon but never drain.
    #[arg(long, global = true, default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub cordon_only: bool,
    /// Leave DaemonSet pods in place.
    #[arg(long = "ignore-daemon-sets", global = true, default_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub ignore_daemon_sets: bool,
    /// Evict pods that use emptyDir volumes (their data is lost).
    #[arg(long, global = true, default_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub delete_local_data: bool,
    /// Pod termination grace period override in seconds (-1: each pod's own).
    #[arg(long, global = true, default_value_t = -1, allow_negative_numbers = true)]
    pub pod_termination_grace_period: i64,
    /// Seconds before an event's start that the drain begins; also the drain timeout.
    #[arg(long, global = true, default_value_t = 120)]
    pub node_termination_grace_period: u64,
    /// Label nodes node.kubernetes.io/exclude-from-external-load-balancers before cordoning.
    #[arg(long, global = true, default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub exclude_from_load_balancers: bool,
    /// Accepted for compatibility: pods always come from a watch-backed cache here.
    #[arg(long, global = true, default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub use_apiserver_cache: bool,
    /// Kubernetes API queries per second, shared by all workers.
    #[arg(long, global = true, default_value_t = 5.0)]
    pub kube_api_qps: f64,
    /// Kubernetes API burst.
    #[arg(long, global = true, default_value_t = 10)]
    pub kube_api_burst: u32,
    /// Delete the pods still on the node when the drain deadline passes.
    #[arg(long, global = true, default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub force_drain_at_deadline: bool,

    // --- Taints -----------------------------------------------------------------------------
    /// Taint the node with the per-kind NTH taint (value: the event id).
    #[arg(long, global = true, default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub taint_node: bool,
    /// Effect of that taint: NoSchedule, PreferNoSchedule or NoExecute.
    #[arg(long, global = true, default_value = "NoSchedule", value_parser = parse_effect)]
    pub taint_effect: TaintEffect,
    /// After a successful drain, add node.kubernetes.io/out-of-service=nodeshutdown:NoExecute.
    #[arg(long, global = true, default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub enable_out_of_service_taint: bool,

    // --- Policies (beyond NTH) ----------------------------------------------------------------
    /// Rebalance policy; by default derived from the NTH rebalance switches.
    #[arg(long, global = true, value_enum)]
    pub rebalance_policy: Option<RebalancePolicy>,
    /// Uncordon a node cordoned for a rebalance recommendation when no interruption follows
    /// within this time (0: never).
    #[arg(long, global = true, default_value = "10m", value_parser = humantime::parse_duration)]
    pub rebalance_uncordon_after: Duration,
    /// Default scheduled-maintenance policy.
    #[arg(long, global = true, value_enum, default_value = "cordon-and-drain")]
    pub scheduled_event_policy: ScheduledPolicy,
    /// Per-code overrides, e.g. `system-reboot=cordon,instance-retirement=drain-now`.
    #[arg(long, global = true, default_value = "")]
    pub scheduled_event_code_policies: String,

    // --- Webhooks ---------------------------------------------------------------------------
    /// Webhook URL (Slack-compatible by default).
    #[arg(long, global = true)]
    pub webhook_url: Option<String>,
    /// File holding the webhook URL (a mounted Secret).
    #[arg(long, global = true)]
    pub webhook_url_file: Option<String>,
    /// Webhook headers as a JSON object.
    #[arg(long, global = true, default_value = r#"{"Content-type":"application/json"}"#)]
    pub webhook_headers: String,
    /// Webhook body template (Go-template subset: {{ .Field }}).
    #[arg(long, global = true, default_value = crate::webhook::DEFAULT_TEMPLATE)]
    pub webhook_template: String,
    /// File holding the webhook template.
    #[arg(long, global = true)]
    pub webhook_template_file: Option<String>,
    /// HTTP proxy for webhooks.
    #[arg(long, global = true)]
    pub webhook_proxy: Option<String>,

    // --- Observability ------------------------------------------------------------------------
    /// Serve Prometheus metrics.
    #[arg(long, global = true, default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub enable_prometheus_server: bool,
    /// Port of the metrics server (path /metrics).
    #[arg(long, global = true, default_value_t = 9092)]
    pub prometheus_server_port: u16,
    /// Serve liveness and readiness probes.
    #[arg(long, global = true, default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub enable_probes_server: bool,
    /// Port of the probes server.
    #[arg(long, global = true, default_value_t = 8080)]
    pub probes_server_port: u16,
    /// Path of the liveness probe (readiness is served at /readyz).
    #[arg(long, global = true, default_value = "/healthz")]
    pub probes_server_endpoint: String,
    /// Emit Kubernetes Events for every action.
    #[arg(long, global = true, default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub emit_kubernetes_events: bool,
    /// Annotations added to every one of those events, `k=v,k2=v2`.
    #[arg(long, global = true, default_value = "")]
    pub kubernetes_events_extra_annotations: String,
    /// JSON logs.
    #[arg(long, global = true, default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub json_logging: bool,
    /// Log level: debug, info, warn, error (any case).
    #[arg(long, global = true, default_value = "info", value_parser = parse_log_level)]
    pub log_level: LogLevel,
    /// Accepted for compatibility (1 or 2); logs always carry the event kind and source.
    #[arg(long, global = true, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub log_format_version: u8,
}

/// Environment variable → long flag. NTH's deprecated aliases come after the names they
/// stand for, so that the current name wins when both are set.
pub const ENV: &[(&str, &str)] = &[
    ("NODE_NAME", "node-name"),
    ("POD_NAME", "pod-name"),
    ("NAMESPACE", "pod-namespace"),
    ("KUBERNETES_SERVICE_HOST", "kubernetes-service-host"),
    ("KUBERNETES_SERVICE_PORT", "kubernetes-service-port"),
    ("KUBECONFIG", "kubeconfig"),
    ("INSTANCE_METADATA_URL", "metadata-url"),
    ("METADATA_TRIES", "metadata-tries"),
    ("METADATA_POLL_INTERVAL", "metadata-poll-interval"),
    ("ALLOW_IMDSV1", "allow-imdsv1"),
    (
        "ENABLE_SPOT_INTERRUPTION_DRAINING",
        "enable-spot-interruption-draining",
    ),
    (
        "ENABLE_SCHEDULED_EVENT_DRAINING",
        "enable-scheduled-event-draining",
    ),
    ("ENABLE_REBALANCE_MONITORING", "enable-rebalance-monitoring"),
    ("ENABLE_REBALANCE_DRAINING", "enable-rebalance-draining"),
    ("ENABLE_ASG_LIFECYCLE_DRAINING", "enable-asg-lifecycle-draining"),
    ("UPTIME_FROM_FILE", "uptime-from-file"),
    (
        "ENABLE_SQS_TERMINATION_DRAINING",
        "enable-sqs-termination-draining",
    ),
    ("QUEUE_URL", "queue-url"),
    ("AWS_REGION", "aws-region"),
    ("AWS_ENDPOINT", "aws-endpoint"),
    ("WORKERS", "workers"),
    ("CHECK_TAG_BEFORE_DRAINING", "check-tag-before-draining"),
    ("CHECK_ASG_TAG_BEFORE_DRAINING", "check-tag-before-draining"),
    ("MANAGED_TAG", "managed-tag"),
    ("MANAGED_ASG_TAG", "managed-tag"),
    ("USE_PROVIDER_ID", "use-provider-id"),
    (
        "DELETE_SQS_MSG_IF_NODE_NOT_FOUND",
        "delete-sqs-msg-if-node-not-found",
    ),
    (
        "COMPLETE_LIFECYCLE_ACTION_DELAY_SECONDS",
        "complete-lifecycle-action-delay-seconds",
    ),
    ("HEARTBEAT_INTERVAL", "heartbeat-interval"),
    ("HEARTBEAT_UNTIL", "heartbeat-until"),
    ("SQS_MSG_VISIBILITY_TIMEOUT_SEC", "sqs-msg-visibility-timeout-sec"),
    ("DRY_RUN", "dry-run"),
    ("CORDON_ONLY", "cordon-only"),
    ("IGNORE_DAEMON_SETS", "ignore-daemon-sets"),
    ("DELETE_LOCAL_DATA", "delete-local-data"),
    ("POD_TERMINATION_GRACE_PERIOD", "pod-termination-grace-period"),
    ("GRACE_PERIOD", "pod-termination-grace-period"),
    ("NODE_TERMINATION_GRACE_PERIOD", "node-termination-grace-period"),
    ("EXCLUDE_FROM_LOAD_BALANCERS", "exclude-from-load-balancers"),
    ("USE_APISERVER_CACHE", "use-apiserver-cache"),
    ("KUBE_API_QPS", "kube-api-qps"),
    ("KUBE_API_BURST", "kube-api-burst"),
    ("FORCE_DRAIN_AT_DEADLINE", "force-drain-at-deadline"),
    ("TAINT_NODE", "taint-node"),
    ("TAINT_EFFECT", "taint-effect"),
    ("ENABLE_OUT_OF_SERVICE_TAINT", "enable-out-of-service-taint"),
    ("REBALANCE_POLICY", "rebalance-policy"),
    ("REBALANCE_UNCORDON_AFTER", "rebalance-uncordon-after"),
    ("SCHEDULED_EVENT_POLICY", "scheduled-event-policy"),
    ("SCHEDULED_EVENT_CODE_POLICIES", "scheduled-event-code-policies"),
    ("WEBHOOK_URL", "webhook-url"),
    ("WEBHOOK_URL_FILE", "webhook-url-file"),
    ("WEBHOOK_HEADERS", "webhook-headers"),
    ("WEBHOOK_TEMPLATE", "webhook-template"),
    ("WEBHOOK_TEMPLATE_FILE", "webhook-template-file"),
    ("WEBHOOK_PROXY", "webhook-proxy"),
    ("ENABLE_PROMETHEUS_SERVER", "enable-prometheus-server"),
    ("PROMETHEUS_SERVER_PORT", "prometheus-server-port"),
    ("ENABLE_PROBES_SERVER", "enable-probes-server"),
    ("PROBES_SERVER_PORT", "probes-server-port"),
    ("PROBES_SERVER_ENDPOINT", "probes-server-endpoint"),
    ("EMIT_KUBERNETES_EVENTS", "emit-kubernetes-events"),
    (
        "KUBERNETES_EVENTS_EXTRA_ANNOTATIONS",
        "kubernetes-events-extra-annotations",
    ),
    ("JSON_LOGGING", "json-logging"),
    ("LOG_LEVEL", "log-level"),
    ("LOG_FORMAT_VERSION", "log-format-version"),
];

/// The clap command with each flag's help naming its environment variable(s).
pub fn command() -> clap::Command {
    let mut cmd = Cli::command();
    let ids: Vec<(String, String)> = cmd
        .get_arguments()
        .filter_map(|a| a.get_long().map(|l| (a.get_id().to_string(), l.to_owned())))
        .collect();
    for (id, long) in ids {
        let vars: Vec<&str> = ENV.iter().filter(|(_, f)| *f == long).map(|(v, _)| *v).collect();
        if vars.is_empty() {
            continue;
        }
        cmd = cmd.mut_arg(id, |arg| {
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            arg.help(format!("{help} [env: {}]", vars.join(", ")))
        });
    }
    cmd
}

/// Parses the command line `args` (program name first) layered over the environment `env`.
pub fn parse_from<I, T>(args: I, env: impl Fn(&str) -> Option<String>) -> Result<Cli, Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut argv: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let given: Vec<String> = argv
        .iter()
        .filter_map(|a| a.to_str())
        .map(str::to_owned)
        .collect();
    let cmd = command();
    let mut injected: Vec<&str> = Vec::new();
    for (var, flag) in ENV {
        let Some(value) = env(var).filter(|v| !v.is_empty()) else {
            continue;
        };
        let on_cli = given
            .iter()
            .any(|a| a == &format!("--{flag}") || a.starts_with(&format!("--{flag}=")));
        if on_cli || injected.contains(flag) {
            continue;
        }
        let Some(arg) = cmd.get_arguments().find(|a| a.get_long() == Some(flag)) else {
            return Err(Error::Invalid(format!("{var} maps to unknown flag --{flag}")));
        };
        // Check the value with the flag's own parser, alone, so the error can name the variable.
        let probe = clap::Command::new("env")
            .no_binary_name(true)
            .arg(arg.clone().global(false).required(false));
        probe
            .try_get_matches_from([format!("--{flag}={value}")])
            .map_err(|e| Error::InvalidEnv {
                var,
                flag,
                value: value.clone(),
                reason: clap_reason(&e),
            })?;
        injected.push(flag);
        argv.push(OsString::from(format!("--{flag}={value}")));
    }
    let matches = command().try_get_matches_from(argv)?;
    Ok(Cli::from_arg_matches(&matches)?)
}

/// The reason part of a clap value error, without clap's framing.
fn clap_reason(e: &clap::Error) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default();
    first
        .rsplit_once(": ")
        .map(|(_, r)| r.to_owned())
        .unwrap_or_else(|| first.trim_start_matches("error: ").to_owned())
}

impl Cli {
    /// The mode: the subcommand, else ENABLE_SQS_TERMINATION_DRAINING as in NTH.
    pub fn mode(&self) -> Mode {
        match self.mode {
            Some(ModeCommand::Imds) => Mode::Imds,
            Some(ModeCommand::Queue) => Mode::Queue,
            None if self.settings.enable_sqs_termination_draining => Mode::Queue,
            None => Mode::Imds,
        }
    }
}

impl Settings {
    /// The rebalance policy: the explicit one, else NTH's switches.
    pub fn rebalance_policy(&self) -> RebalancePolicy {
        match self.rebalance_policy {
            Some(p) => p,
            None if self.enable_rebalance_draining => RebalancePolicy::CordonAndDrain,
            None if self.enable_rebalance_monitoring => RebalancePolicy::Cordon,
            None => RebalancePolicy::None,
        }
    }

    /// The per-code scheduled-event policies of SCHEDULED_EVENT_CODE_POLICIES.
    pub fn scheduled_code_policies(
        &self,
    ) -> Result<std::collections::BTreeMap<String, ScheduledPolicy>, Error> {
        let mut out = std::collections::BTreeMap::new();
        for entry in self
            .scheduled_event_code_policies
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            let Some((code, policy)) = entry.split_once('=') else {
                return Err(Error::Invalid(format!(
                    "SCHEDULED_EVENT_CODE_POLICIES entry {entry:?} is not CODE=POLICY"
                )));
            };
            let parsed = ScheduledPolicy::from_str(policy.trim(), true).map_err(|_| {
                Error::Invalid(format!(
                    "SCHEDULED_EVENT_CODE_POLICIES: unknown policy {:?} for code {:?}: expected none, cordon, \
                     cordon-and-drain or drain-now",
                    policy.trim(),
                    code.trim()
                ))
            })?;
            out.insert(code.trim().to_owned(), parsed);
        }
        Ok(out)
    }

    /// The annotations of KUBERNETES_EVENTS_EXTRA_ANNOTATIONS (`k=v,k2=v2`; blanks around
    /// entries and empty entries are ignored). A value may not contain `,`; a key must be a
    /// valid annotation key (`[prefix/]name`).
    pub fn events_extra_annotations(&self) -> Result<std::collections::BTreeMap<String, String>, Error> {
        let mut out = std::collections::BTreeMap::new();
        for entry in self
            .kubernetes_events_extra_annotations
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            let Some((key, value)) = entry.split_once('=') else {
                return Err(Error::Invalid(format!(
                    "KUBERNETES_EVENTS_EXTRA_ANNOTATIONS entry {entry:?} is not KEY=VALUE"
                )));
            };
            let key = key.trim();
            if let Err(why) = check_annotation_key(key) {
                return Err(Error::Invalid(format!(
                    "KUBERNETES_EVENTS_EXTRA_ANNOTATIONS: annotation key {key:?} is invalid: {why}"
                )));
            }
            out.insert(key.to_owned(), value.trim().to_owned());
        }
        Ok(out)
    }

    /// The policy for a scheduled-event code.
    pub fn scheduled_policy(&self, code: &str) -> Result<ScheduledPolicy, Error> {
        Ok(self
            .scheduled_code_policies()?
            .get(code)
            .copied()
            .unwrap_or(self.scheduled_event_policy))
    }

    /// Checks the combination of settings for `mode`.
    pub fn validate(&self, mode: Mode) -> Result<(), Error> {
        // A typo in a per-code policy fails at start-up, not at the first event.
        self.scheduled_code_policies()?;
        // As in NTH, the annotations are read only when events are on.
        if self.emit_kubernetes_events {
            self.events_extra_annotations()?;
        }
        if mode == Mode::Imds && self.node_name.as_deref().unwrap_or_default().is_empty() {
            return Err(Error::Invalid(
                "NODE_NAME (--node-name) is required in metadata mode".into(),
            ));
        }
        if mode == Mode::Queue && self.queue_url.as_deref().unwrap_or_default().is_empty() {
            return Err(Error::Invalid(
                "QUEUE_URL (--queue-url) is required in queue mode".into(),
            ));
        }
        if self.heartbeat_interval != -1 {
            if mode == Mode::Imds {
                return Err(Error::Invalid(
                    "HEARTBEAT_INTERVAL is only supported in queue mode".into(),
                ));
            }
            if !(30..=3600).contains(&self.heartbeat_interval) {
                return Err(Error::Invalid(format!(
                    "HEARTBEAT_INTERVAL must be between 30 and 3600 seconds, got {}",
                    self.heartbeat_interval
                )));
            }
            let until = self.heartbeat_until();
            if !(60..=172_800).contains(&until) || until < self.heartbeat_interval {
                return Err(Error::Invalid(format!(
                    "HEARTBEAT_UNTIL must be between 60 and 172800 seconds and not below HEARTBEAT_INTERVAL, got {until}"
                )));
            }
        }
        if !(self.kube_api_qps.is_finite() && self.kube_api_qps > 0.0) {
            return Err(Error::Invalid(format!(
                "KUBE_API_QPS must be positive, got {}",
                self.kube_api_qps
            )));
        }
        if self.webhook_url.is_some() && self.webhook_url_file.is_some() {
            return Err(Error::Invalid(
                "set only one of WEBHOOK_URL and WEBHOOK_URL_FILE".into(),
            ));
        }
        serde_json::from_str::<std::collections::BTreeMap<String, String>>(&self.webhook_headers).map_err(
            |e| {
                Error::Invalid(format!(
                    "WEBHOOK_HEADERS is not a JSON object of strings ({e}): {:?}",
                    self.webhook_headers
                ))
            },
        )?;
        Ok(())
    }

    /// HEARTBEAT_UNTIL with NTH's default (172800 s when heartbeats are on).
    pub fn heartbeat_until(&self) -> i64 {
        if self.heartbeat_until == -1 {
            172_800
        } else {
            self.heartbeat_until
        }
    }
}

/// Checks a Kubernetes annotation key: an optional DNS-subdomain prefix (at most 253
/// characters) and `/`, then a name of at most 63 characters, alphanumeric at both ends with
/// `-`, `_` and `.` inside.
fn check_annotation_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if p.is_empty() || p.len() > 253 || !p.split('.').all(label_ok) {
            return Err(format!("prefix {p:?} is not a lowercase DNS subdomain"));
        }
    }
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if name.is_empty() || name.len() > 63 {
        return Err("the name must have 1 to 63 characters".into());
    }
    if !alnum(name.chars().next())
        || !alnum(name.chars().last())
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "the name {name:?} must be alphanumeric at both ends, with only '-', '_' and '.' inside"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<Cli, Error> {
        let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut argv = vec!["spot-nth"];
        argv.extend_from_slice(args);
        parse_from(argv, |k| env.get(k).cloned())
    }

    #[test]
    fn nth_defaults() {
        let cli = parse(&[], &[]).unwrap();
        let s = &cli.settings;
        assert_eq!(cli.mode(), Mode::Imds);
        assert_eq!(s.instance_metadata_url, "http://169.254.169.254");
        assert_eq!(s.workers, 10);
        assert_eq!(s.node_termination_grace_period, 120);
        assert_eq!(s.pod_termination_grace_period, -1);
        assert!(s.enable_spot_interruption_draining && s.enable_scheduled_event_draining);
        assert!(!s.enable_rebalance_monitoring && !s.enable_asg_lifecycle_draining);
        assert!(s.ignore_daemon_sets && s.delete_local_data && s.check_tag_before_draining);
        assert_eq!(s.managed_tag, "aws-node-termination-handler/managed");
        assert_eq!(s.taint_effect, TaintEffect::NoSchedule);
        assert_eq!(s.prometheus_server_port, 9092);
        assert_eq!(s.probes_server_port, 8080);
        assert_eq!(s.sqs_msg_visibility_timeout_sec, 20);
        assert_eq!((s.kube_api_qps, s.kube_api_burst), (5.0, 10));
        assert_eq!(s.rebalance_policy(), RebalancePolicy::None);
    }

    #[test]
    fn mode_follows_enable_sqs_termination_draining() {
        let cli = parse(
            &[],
            &[
                ("ENABLE_SQS_TERMINATION_DRAINING", "true"),
                ("QUEUE_URL", "http://q"),
            ],
        )
        .unwrap();
        assert_eq!(cli.mode(), Mode::Queue);
        cli.settings.validate(Mode::Queue).unwrap();
        let cli = parse(&["imds"], &[("ENABLE_SQS_TERMINATION_DRAINING", "true")]).unwrap();
        assert_eq!(cli.mode(), Mode::Imds);
    }

    #[test]
    fn env_values_are_parsed_and_cli_wins() {
        let cli = parse(
            &["--workers", "3"],
            &[
                ("WORKERS", "50"),
                ("TAINT_EFFECT", "NoExecute"),
                ("TAINT_NODE", "TRUE"),
                ("LOG_LEVEL", "DEBUG"),
            ],
        )
        .unwrap();
        assert_eq!(cli.settings.workers, 3);
        assert_eq!(cli.settings.taint_effect, TaintEffect::NoExecute);
        assert!(cli.settings.taint_node);
        assert_eq!(cli.settings.log_level, LogLevel::Debug);
    }

    #[test]
    fn empty_env_is_unset() {
        let cli = parse(&[], &[("WORKERS", ""), ("NODE_NAME", "")]).unwrap();
        assert_eq!(cli.settings.workers, 10);
        assert_eq!(cli.settings.node_name, None);
    }

    #[test]
    fn invalid_env_names_the_variable() {
        for (var, value) in [
            ("WORKERS", "ten"),
            ("TAINT_EFFECT", "Sometimes"),
            ("DRY_RUN", "yes please"),
            ("LOG_LEVEL", "verbose"),
            ("SQS_MSG_VISIBILITY_TIMEOUT_SEC", "600"),
        ] {
            let err = parse(&[], &[(var, value)]).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(var) && text.contains(value), "{text}");
        }
    }

    #[test]
    fn deprecated_aliases_lose_to_current_names() {
        let cli = parse(&[], &[("GRACE_PERIOD", "30")]).unwrap();
        assert_eq!(cli.settings.pod_termination_grace_period, 30);
        let cli = parse(
            &[],
            &[("GRACE_PERIOD", "30"), ("POD_TERMINATION_GRACE_PERIOD", "60")],
        )
        .unwrap();
        assert_eq!(cli.settings.pod_termination_grace_period, 60);
        let cli = parse(&[], &[("MANAGED_ASG_TAG", "old"), ("MANAGED_TAG", "new")]).unwrap();
        assert_eq!(cli.settings.managed_tag, "new");
    }

    #[test]
    fn validation() {
        let cli = parse(&["imds"], &[]).unwrap();
        assert!(
            cli.settings
                .validate(Mode::Imds)
                .unwrap_err()
                .to_string()
                .contains("NODE_NAME")
        );
        let cli = parse(
            &["queue"],
            &[("QUEUE_URL", "http://q"), ("HEARTBEAT_INTERVAL", "5")],
        )
        .unwrap();
        assert!(
            cli.settings
                .validate(Mode::Queue)
                .unwrap_err()
                .to_string()
                .contains("HEARTBEAT_INTERVAL")
        );
        let cli = parse(
            &["queue"],
            &[("QUEUE_URL", "http://q"), ("WEBHOOK_HEADERS", "[1]")],
        )
        .unwrap();
        assert!(
            cli.settings
                .validate(Mode::Queue)
                .unwrap_err()
                .to_string()
                .contains("WEBHOOK_HEADERS")
        );
        let cli = parse(
            &[],
            &[
                ("NODE_NAME", "n"),
                ("SCHEDULED_EVENT_CODE_POLICIES", "system-reboot=maybe"),
            ],
        )
        .unwrap();
        assert!(
            cli.settings
                .validate(Mode::Imds)
                .unwrap_err()
                .to_string()
                .contains("maybe")
        );
    }

    #[test]
    fn per_code_policies() {
        let cli = parse(
            &[],
            &[(
                "SCHEDULED_EVENT_CODE_POLICIES",
                "system-reboot=cordon, instance-retirement=drain-now",
            )],
        )
        .unwrap();
        let s = &cli.settings;
        assert_eq!(
            s.scheduled_policy("system-reboot").unwrap(),
            ScheduledPolicy::Cordon
        );
        assert_eq!(
            s.scheduled_policy("instance-retirement").unwrap(),
            ScheduledPolicy::DrainNow
        );
        assert_eq!(
            s.scheduled_policy("instance-stop").unwrap(),
            ScheduledPolicy::CordonAndDrain
        );
    }

    #[test]
    fn events_extra_annotations() {
        let cli = parse(
            &[],
            &[(
                "KUBERNETES_EVENTS_EXTRA_ANNOTATIONS",
                "team=spot, example.com/owner=platform,,cost-center=",
            )],
        )
        .unwrap();
        let a = cli.settings.events_extra_annotations().unwrap();
        assert_eq!(
            a.into_iter().collect::<Vec<_>>(),
            [
                ("cost-center".to_owned(), String::new()),
                ("example.com/owner".to_owned(), "platform".to_owned()),
                ("team".to_owned(), "spot".to_owned()),
            ]
        );
        assert!(
            parse(&[], &[])
                .unwrap()
                .settings
                .events_extra_annotations()
                .unwrap()
                .is_empty()
        );
        for bad in [
            "team",
            "=x",
            "Bad_Prefix.com/x=1",
            "-x=1",
            &format!("{}=1", "n".repeat(64)),
        ] {
            let cli = parse(
                &[],
                &[
                    ("NODE_NAME", "n"),
                    ("EMIT_KUBERNETES_EVENTS", "true"),
                    ("KUBERNETES_EVENTS_EXTRA_ANNOTATIONS", bad),
                ],
            )
            .unwrap();
            let err = cli.settings.validate(Mode::Imds).unwrap_err().to_string();
            assert!(
                err.contains("KUBERNETES_EVENTS_EXTRA_ANNOTATIONS"),
                "{bad}: {err}"
            );
            // With events off the value is never read, as in NTH.
            let cli = parse(
                &[],
                &[("NODE_NAME", "n"), ("KUBERNETES_EVENTS_EXTRA_ANNOTATIONS", bad)],
            )
            .unwrap();
            cli.settings.validate(Mode::Imds).unwrap();
        }
    }

    #[test]
    fn metadata_tries_must_be_positive() {
        assert_eq!(parse(&[], &[]).unwrap().settings.metadata_tries, 3);
        assert_eq!(
            parse(&[], &[("METADATA_TRIES", "5")])
                .unwrap()
                .settings
                .metadata_tries,
            5
        );
        let err = parse(&[], &[("METADATA_TRIES", "0")]).unwrap_err().to_string();
        assert!(err.contains("METADATA_TRIES"), "{err}");
    }

    #[test]
    fn every_env_var_maps_to_a_flag_and_help_names_it() {
        let cmd = command();
        for (var, flag) in ENV {
            let arg = cmd.get_arguments().find(|a| a.get_long() == Some(flag));
            let arg = arg.unwrap_or_else(|| panic!("{var} maps to missing flag --{flag}"));
            assert!(arg.get_help().unwrap().to_string().contains(var), "{var}");
        }
        cmd.debug_assert();
    }
}
