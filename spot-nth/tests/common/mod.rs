//! Shared helpers of the spot-nth end-to-end tests: the real `spot-nth` binary as a child
//! process, spot-kube-sim with nodes and pods, a webhook receiver, a fake Auto Scaling
//! endpoint, and moto (SQS, EventBridge, EC2) for queue mode.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use aws_sdk_eventbridge::types::{PutEventsRequestEntry, Target};
use aws_sdk_sqs::types::QueueAttributeName;
use axum::Router;
use axum::extract::State;
use axum::routing::post;
use serde_json::{Value, json};
use spot_k8s::sim::{RunningSim, Sim, SimConfig};
use tempfile::TempDir;

/// The environment variable `cargo xtask test` sets to the moto server it started.
pub const MOTO_ENV: &str = "SPOT_TEST_MOTO_ENDPOINT";
/// The region of every AWS call.
pub const REGION: &str = "us-east-1";
/// The tag `CHECK_TAG_BEFORE_DRAINING` looks for.
pub const MANAGED_TAG: &str = "aws-node-termination-handler/managed";

/// A name unique to this test process.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls `check` every 100 ms until it yields a value; fails naming `what` after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let polled = tokio::time::timeout(limit, async {
        loop {
            if let Some(v) = check().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    match polled {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

// --- The Kubernetes side -------------------------------------------------------------------

/// spot-kube-sim with the kubelet simulation (evicted pods terminate after their grace
/// period), serving on loopback, with a kubeconfig file.
pub struct Kube {
    /// The server (stops when dropped).
    pub running: RunningSim,
    /// Holds the kubeconfig and the handler logs.
    pub dir: TempDir,
    /// The kubeconfig file.
    pub kubeconfig: PathBuf,
}

impl Kube {
    /// Starts the simulator on 127.0.0.1:0.
    pub async fn start() -> Kube {
        let config = SimConfig {
            kubelet: true,
            ..SimConfig::default()
        };
        let running = Sim::new(config)
            .start("127.0.0.1:0".parse().unwrap())
            .await
            .expect("start spot-kube-sim");
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = dir.path().join("kubeconfig");
        running.write_kubeconfig(&kubeconfig).expect("write kubeconfig");
        Kube {
            running,
            dir,
            kubeconfig,
        }
    }

    /// The store.
    pub fn sim(&self) -> &Sim {
        self.running.sim()
    }

    /// Adds a Ready node with `pods` Running pods labelled `app=<node>` in `default`.
    pub fn add_node(&self, name: &str, pods: usize) {
        self.sim()
            .insert(spot_k8s::sim::sim_node(
                name,
                "us-east-1a",
                "m5.xlarge",
                "4",
                "16Gi",
            ))
            .expect("insert node");
        for i in 0..pods {
            self.sim()
                .insert(json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": format!("{name}-pod-{i}"), "namespace": "default", "labels": {"app": app_of(name)}},
                    "spec": {"nodeName": name, "terminationGracePeriodSeconds": 30, "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]},
                    "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
                }))
                .expect("insert pod");
        }
    }

    /// The node object.
    pub fn node(&self, name: &str) -> Value {
        self.sim()
            .get("v1", "Node", "", name)
            .unwrap_or_else(|| panic!("node {name} is gone"))
    }

    /// The node's summary.
    pub fn state(&self, name: &str) -> NodeView {
        NodeView::of(&self.node(name))
    }

    /// Names of the pods bound to `node`.
    pub fn pods_on(&self, node: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .sim()
            .list("v1", "Pod", None)
            .into_iter()
            .filter(|p| p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node))
            .map(|p| p["metadata"]["name"].as_str().unwrap_or_default().to_owned())
            .collect();
        names.sort();
        names
    }

    /// Marks the node unschedulable, as an operator's `kubectl cordon` would.
    pub fn cordon_by_hand(&self, name: &str) {
        let mut node = self.node(name);
        node["spec"]["unschedulable"] = json!(true);
        self.sim().put(node).expect("cordon by hand");
    }

    /// A policy/v1 PodDisruptionBudget over the pods of `node` with `minAvailable`.
    pub fn add_pdb(&self, node: &str, min_available: i64) {
        self.sim()
            .insert(json!({
                "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                "metadata": {"name": app_of(node), "namespace": "default"},
                "spec": {"minAvailable": min_available, "selector": {"matchLabels": {"app": app_of(node)}}},
            }))
            .expect("insert pdb");
    }

    /// Changes the budget's `minAvailable`.
    pub fn set_pdb_min_available(&self, node: &str, min_available: i64) {
        let mut pdb = self
            .sim()
            .get("policy/v1", "PodDisruptionBudget", "default", &app_of(node))
            .expect("pdb");
        pdb["spec"]["minAvailable"] = json!(min_available);
        self.sim().put(pdb).expect("patch pdb");
    }

    /// The holder of the Lease `spot-nth` in `default`.
    pub fn lease_holder(&self) -> Option<String> {
        self.sim()
            .get("coordination.k8s.io/v1", "Lease", "default", "spot-nth")
            .and_then(|l| {
                l.pointer("/spec/holderIdentity")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .filter(|h| !h.is_empty())
    }
}

/// The label value of the pods of a node (a PDB selects them).
pub fn app_of(node: &str) -> String {
    let mut app: String = node
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    app.truncate(60);
    format!("a-{}", app.trim_matches('-'))
}

/// What the tests look at on a Node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeView {
    /// `spec.unschedulable`.
    pub unschedulable: bool,
    /// Taint key → value.
    pub taints: BTreeMap<String, String>,
    /// The `nth.spot.dev/*` annotations.
    pub nth: BTreeMap<String, String>,
}

impl NodeView {
    /// Reads a Node object.
    pub fn of(node: &Value) -> NodeView {
        let taints = node
            .pointer("/spec/taints")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|t| {
                (
                    t["key"].as_str().unwrap_or_default().to_owned(),
                    t["value"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        let nth = node
            .pointer("/metadata/annotations")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.starts_with("nth.spot.dev/"))
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect();
        NodeView {
            unschedulable: node.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true),
            taints,
            nth,
        }
    }

    /// The NTH taints (`aws-node-termination-handler/*`).
    pub fn nth_taints(&self) -> BTreeMap<String, String> {
        self.taints
            .iter()
            .filter(|(k, _)| k.starts_with("aws-node-termination-handler/"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// `nth.spot.dev/phase`.
    pub fn phase(&self) -> Option<&str> {
        self.nth.get("nth.spot.dev/phase").map(String::as_str)
    }
}

/// The id spot-nth gives an event (the id its source would derive).
pub fn event_id(kind: &str, instance: &str, upstream: &str) -> String {
    spot_core::event::EventId::derive(&[kind, instance, upstream]).to_string()
}

// --- Local HTTP receivers -----------------------------------------------------------------

/// A local HTTP endpoint recording the bodies POSTed to it.
#[derive(Clone)]
pub struct Recorder {
    /// `http://127.0.0.1:PORT/`.
    pub url: String,
    bodies: Arc<Mutex<Vec<String>>>,
}

async fn record(State((bodies, answer)): State<(Arc<Mutex<Vec<String>>>, Answer)>, body: String) -> String {
    bodies.lock().unwrap().push(body.clone());
    match answer {
        Answer::Ok => "ok".to_owned(),
        Answer::AutoScaling => {
            let action = body
                .split('&')
                .find_map(|p| p.strip_prefix("Action="))
                .unwrap_or_default()
                .to_owned();
            format!(
                "<{action}Response><{action}Result/><ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></{action}Response>"
            )
        }
    }
}

#[derive(Clone, Copy)]
enum Answer {
    Ok,
    AutoScaling,
}

impl Recorder {
    async fn start(answer: Answer) -> Recorder {
        let bodies: Arc<Mutex<Vec<String>>> = Arc::default();
        let app = Router::new()
            .route("/", post(record))
            .with_state((bodies.clone(), answer));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
        Recorder { url, bodies }
    }

    /// A webhook receiver (answers 200 to every POST).
    pub async fn webhook() -> Recorder {
        Recorder::start(Answer::Ok).await
    }

    /// A fake Auto Scaling query API endpoint: every action succeeds and is recorded (moto
    /// implements neither CompleteLifecycleAction nor RecordLifecycleActionHeartbeat).
    pub async fn autoscaling() -> Recorder {
        Recorder::start(Answer::AutoScaling).await
    }

    /// The bodies received so far.
    pub fn bodies(&self) -> Vec<String> {
        self.bodies.lock().unwrap().clone()
    }

    /// How many POSTs arrived.
    pub fn count(&self) -> usize {
        self.bodies.lock().unwrap().len()
    }

    /// The CompleteLifecycleAction requests received.
    pub fn completions(&self) -> Vec<String> {
        self.bodies()
            .into_iter()
            .filter(|b| b.contains("Action=CompleteLifecycleAction"))
            .collect()
    }
}

// --- The handler process --------------------------------------------------------------------

/// A running `spot-nth`, killed (SIGKILL) when dropped.
pub struct Nth {
    child: Child,
    /// Its stderr (the logs).
    pub log: PathBuf,
}

impl Nth {
    /// Starts the binary with `args`, only the environment in `env` (plus PATH), logs to a
    /// file in `dir`.
    pub fn spawn(dir: &std::path::Path, args: &[&str], env: &BTreeMap<String, String>) -> Nth {
        let log = dir.join(format!("{}.log", unique("spot-nth")));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_spot-nth"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn spot-nth");
        Nth { child, log }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its logs so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM (what the kubelet sends on pod deletion).
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", self.pid());
    }

    /// Kills with SIGKILL (a crash or a node gone) and reaps the process.
    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The exit status, once the process has exited within `limit`.
    pub async fn exit_within(&mut self, limit: Duration) -> ExitStatus {
        let child = &mut self.child;
        let polled = tokio::time::timeout(limit, async {
            loop {
                if let Some(status) = child.try_wait().expect("try_wait") {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        match polled {
            Ok(status) => status,
            Err(_) => panic!("spot-nth did not exit within {limit:?}; logs:\n{}", self.logs()),
        }
    }

    /// Fails when the process has exited (start-up error, crash).
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!("spot-nth exited with {status}; logs:\n{}", self.logs());
        }
    }

    /// How many drains this process finished, and the `evicted=` of each.
    pub fn drains(&self) -> Vec<usize> {
        self.logs()
            .lines()
            .filter(|l| l.contains("node drained"))
            .map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("evicted="))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(usize::MAX)
            })
            .collect()
    }
}

impl Drop for Nth {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- spot-nth logs ({}) ---\n{}", self.log.display(), self.logs());
        }
    }
}

/// Builds an environment from pairs.
pub fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

// --- moto -----------------------------------------------------------------------------------

/// The moto endpoint. Fails with instructions when none was provided: a test that needs moto
/// never skips silently.
pub fn moto_endpoint() -> String {
    match std::env::var(MOTO_ENV) {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "{MOTO_ENV} is not set: this test needs a moto server. Run it through `cargo xtask test`, \
             which starts moto_server, or start `moto_server -H 127.0.0.1 -p 5197` and set \
             {MOTO_ENV}=http://127.0.0.1:5197"
        ),
    }
}

/// The EventBridge rules NTH's CloudFormation template installs (plus capacity-reservation
/// warnings), all targeting the queue.
pub const RULES: [(&str, &str); 6] = [
    (
        "asg-term",
        r#"{"source":["aws.autoscaling"],"detail-type":["EC2 Instance-terminate Lifecycle Action"]}"#,
    ),
    (
        "spot-itn",
        r#"{"source":["aws.ec2"],"detail-type":["EC2 Spot Instance Interruption Warning"]}"#,
    ),
    (
        "rebalance",
        r#"{"source":["aws.ec2"],"detail-type":["EC2 Instance Rebalance Recommendation"]}"#,
    ),
    (
        "state",
        r#"{"source":["aws.ec2"],"detail-type":["EC2 Instance State-change Notification"]}"#,
    ),
    (
        "odcr",
        r#"{"source":["aws.ec2"],"detail-type":["EC2 Capacity Reservation Instance Interruption Warning"]}"#,
    ),
    (
        "health",
        r#"{"source":["aws.health"],"detail-type":["AWS Health Event"],"detail":{"service":["EC2"],"eventTypeCategory":["scheduledChange"]}}"#,
    ),
];

/// One test's AWS world in moto: a queue fed by its own event bus with NTH's rules.
pub struct Aws {
    /// moto's URL.
    pub endpoint: String,
    /// SQS.
    pub sqs: aws_sdk_sqs::Client,
    /// EC2.
    pub ec2: aws_sdk_ec2::Client,
    /// EventBridge.
    pub events: aws_sdk_eventbridge::Client,
    /// The queue.
    pub queue_url: String,
    /// The bus (per test: rules on the default bus would catch the other tests' events).
    pub bus: String,
}

impl Aws {
    /// A queue and a bus with the rules.
    pub async fn new() -> Result<Aws> {
        let endpoint = moto_endpoint();
        let config = spot_aws::config::local(&endpoint, REGION).await;
        let sqs = aws_sdk_sqs::Client::new(&config);
        let ec2 = aws_sdk_ec2::Client::new(&config);
        let events = aws_sdk_eventbridge::Client::new(&config);
        let queue_url = sqs
            .create_queue()
            .queue_name(unique("nth-e2e"))
            .send()
            .await
            .context("CreateQueue (is moto running?)")?
            .queue_url
            .context("CreateQueue returned no URL")?;
        let attrs = sqs
            .get_queue_attributes()
            .queue_url(&queue_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await?;
        let queue_arn = attrs
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn))
            .cloned()
            .context("queue without an ARN")?;
        let bus = unique("nth-bus");
        events.create_event_bus().name(&bus).send().await?;
        for (name, pattern) in RULES {
            let rule = unique(&format!("nth-{name}"));
            events
                .put_rule()
                .name(&rule)
                .event_bus_name(&bus)
                .event_pattern(pattern)
                .send()
                .await?;
            let target = Target::builder().id("queue").arn(&queue_arn).build()?;
            let out = events
                .put_targets()
                .rule(&rule)
                .event_bus_name(&bus)
                .targets(target)
                .send()
                .await?;
            ensure!(
                out.failed_entry_count() == 0,
                "PutTargets failed: {:?}",
                out.failed_entries()
            );
        }
        Ok(Aws {
            endpoint,
            sqs,
            ec2,
            events,
            queue_url,
            bus,
        })
    }

    /// Launches an instance (tagged managed or not); returns its id and private DNS name
    /// (the node name spot-nth looks for).
    pub async fn run_instance(&self, managed: bool) -> Result<(String, String)> {
        let mut run = self
            .ec2
            .run_instances()
            .image_id("ami-12c6146b")
            .instance_type(aws_sdk_ec2::types::InstanceType::M5Xlarge)
            .min_count(1)
            .max_count(1);
        if managed {
            run = run.tag_specifications(
                aws_sdk_ec2::types::TagSpecification::builder()
                    .resource_type(aws_sdk_ec2::types::ResourceType::Instance)
                    .tags(
                        aws_sdk_ec2::types::Tag::builder()
                            .key(MANAGED_TAG)
                            .value("")
                            .build(),
                    )
                    .build(),
            );
        }
        let out = run.send().await.context("RunInstances")?;
        let id = out
            .instances()
            .first()
            .and_then(|i| i.instance_id())
            .context("no instance")?
            .to_owned();
        let described = self.ec2.describe_instances().instance_ids(&id).send().await?;
        let dns = described
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .find_map(|i| i.private_dns_name())
            .filter(|d| !d.is_empty())
            .context("instance without a private DNS name")?
            .to_owned();
        Ok((id, dns))
    }

    /// Puts an event on the bus as the AWS service `source` would; returns EventBridge's id.
    pub async fn put_event(
        &self,
        source: &str,
        detail_type: &str,
        detail: Value,
        resources: &[String],
    ) -> Result<String> {
        let mut entry = PutEventsRequestEntry::builder()
            .event_bus_name(&self.bus)
            .source(source)
            .detail_type(detail_type)
            .detail(detail.to_string());
        for r in resources {
            entry = entry.resources(r);
        }
        let out = self.events.put_events().entries(entry.build()).send().await?;
        ensure!(
            out.failed_entry_count() == 0,
            "PutEvents failed: {:?}",
            out.entries()
        );
        out.entries()
            .first()
            .and_then(|e| e.event_id())
            .map(str::to_owned)
            .context("PutEvents returned no event id")
    }

    /// An EC2 Spot Instance Interruption Warning.
    pub async fn spot_interruption(&self, instance: &str) -> Result<String> {
        self.put_event(
            "aws.ec2",
            "EC2 Spot Instance Interruption Warning",
            json!({"instance-id": instance, "instance-action": "terminate"}),
            &[format!("arn:aws:ec2:us-east-1b:instance/{instance}")],
        )
        .await
    }

    /// An EC2 Instance Rebalance Recommendation.
    pub async fn rebalance(&self, instance: &str) -> Result<String> {
        self.put_event(
            "aws.ec2",
            "EC2 Instance Rebalance Recommendation",
            json!({"instance-id": instance}),
            &[format!("arn:aws:ec2:us-east-1b:instance/{instance}")],
        )
        .await
    }

    /// An EC2 Instance State-change Notification.
    pub async fn state_change(&self, instance: &str, state: &str) -> Result<String> {
        self.put_event(
            "aws.ec2",
            "EC2 Instance State-change Notification",
            json!({"instance-id": instance, "state": state}),
            &[format!("arn:aws:ec2:us-east-1:123456789012:instance/{instance}")],
        )
        .await
    }

    /// An EC2 Capacity Reservation Instance Interruption Warning.
    pub async fn capacity_reservation(&self, instance: &str) -> Result<String> {
        self.put_event(
            "aws.ec2",
            "EC2 Capacity Reservation Instance Interruption Warning",
            json!({"instance-id": instance, "instance-action": "terminate", "instance-termination-time": "2026-11-20T10:02:00Z", "azId": "use1-az1"}),
            &[format!("arn:aws:ec2:us-east-1:123456789012:instance/{instance}")],
        )
        .await
    }

    /// An AWS Health scheduledChange for EC2 whose window started an hour ago.
    pub async fn health_scheduled(&self, instance: &str, arn: &str) -> Result<String> {
        let start = time::OffsetDateTime::now_utc() - Duration::from_secs(3600);
        let end = start + Duration::from_secs(7200);
        let fmt = time::format_description::well_known::Rfc2822;
        self.put_event(
            "aws.health",
            "AWS Health Event",
            json!({
                "eventArn": arn, "service": "EC2",
                "eventTypeCode": "AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED", "eventTypeCategory": "scheduledChange",
                "startTime": start.format(&fmt)?, "endTime": end.format(&fmt)?,
                "statusCode": "upcoming",
                "eventDescription": [{"language": "en_US", "latestDescription": "Your instance will be retired."}],
                "affectedEntities": [{"entityValue": instance}],
            }),
            &[instance.to_owned()],
        )
        .await
    }

    /// An EC2 Instance-terminate Lifecycle Action.
    pub async fn asg_terminate(
        &self,
        instance: &str,
        group: &str,
        hook: &str,
        token: &str,
    ) -> Result<String> {
        self.put_event(
            "aws.autoscaling",
            "EC2 Instance-terminate Lifecycle Action",
            json!({
                "LifecycleActionToken": token, "AutoScalingGroupName": group, "LifecycleHookName": hook,
                "EC2InstanceId": instance, "LifecycleTransition": "autoscaling:EC2_INSTANCE_TERMINATING",
            }),
            &[format!(
                "arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:26e7234b-03a4-47fb-b0a9-2b241662774e:autoScalingGroupName/{group}"
            )],
        )
        .await
    }

    /// (ApproximateNumberOfMessages, ApproximateNumberOfMessagesNotVisible).
    pub async fn depth(&self) -> Result<(u64, u64)> {
        let attrs = self
            .sqs
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await?;
        let attrs = attrs.attributes().context("no attributes")?;
        let get = |name: QueueAttributeName| -> Result<u64> {
            Ok(attrs.get(&name).context("attribute missing")?.parse::<u64>()?)
        };
        Ok((
            get(QueueAttributeName::ApproximateNumberOfMessages)?,
            get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)?,
        ))
    }

    /// Waits until the queue holds no message, visible or in flight.
    pub async fn wait_empty(&self, limit: Duration) {
        eventually(limit, "the queue to be empty", || async {
            matches!(self.depth().await, Ok((0, 0))).then_some(())
        })
        .await;
    }

    /// The queue-mode environment: moto for SQS and EC2, `autoscaling` for lifecycle calls,
    /// the managed-tag check on, taints on, 5 s visibility, 1 s pod grace.
    pub fn handler_env(
        &self,
        kube: &Kube,
        pod: &str,
        webhook: &Recorder,
        autoscaling: &Recorder,
    ) -> BTreeMap<String, String> {
        env(&[
            ("QUEUE_URL", &self.queue_url),
            ("AWS_REGION", REGION),
            ("AWS_ENDPOINT", &self.endpoint),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            (
                "AWS_ENDPOINT_URL_AUTO_SCALING",
                autoscaling.url.trim_end_matches('/'),
            ),
            ("NAMESPACE", "default"),
            ("POD_NAME", pod),
            ("KUBECONFIG", kube.kubeconfig.to_str().unwrap()),
            ("CHECK_TAG_BEFORE_DRAINING", "true"),
            ("WEBHOOK_URL", &webhook.url),
            ("SQS_MSG_VISIBILITY_TIMEOUT_SEC", "5"),
            ("TAINT_NODE", "true"),
            ("POD_TERMINATION_GRACE_PERIOD", "1"),
            ("LOG_LEVEL", "debug"),
        ])
    }
}

/// Fails unless `body` carries every `key=value` form parameter.
pub fn assert_form(body: &str, params: &[(&str, &str)]) -> Result<()> {
    let pairs: Vec<(String, String)> = body
        .split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.replace("%3A", ":").replace("%2F", "/")))
        .collect();
    for (k, v) in params {
        if !pairs.iter().any(|(pk, pv)| pk == k && pv == v) {
            bail!("{k}={v} missing from {body}");
        }
    }
    Ok(())
}

// --- Queue-mode scenarios -------------------------------------------------------------------

/// One queue-mode world: moto queue and bus, the kube sim, receivers, and managed instances
/// with a node each (named after the instance's private DNS name) carrying `PODS` pods.
pub struct Queue {
    /// moto.
    pub aws: Aws,
    /// spot-kube-sim.
    pub kube: Kube,
    /// Webhook receiver.
    pub webhook: Recorder,
    /// Fake Auto Scaling endpoint.
    pub autoscaling: Recorder,
}

/// Pods per node in the queue scenarios.
pub const PODS: usize = 3;

impl Queue {
    /// The world, without instances.
    pub async fn new() -> Result<Queue> {
        let aws = Aws::new().await?;
        Ok(Queue {
            aws,
            kube: Kube::start().await,
            webhook: Recorder::webhook().await,
            autoscaling: Recorder::autoscaling().await,
        })
    }

    /// A managed instance with its node and `PODS` pods: (instance id, node name).
    pub async fn instance(&self) -> Result<(String, String)> {
        let (id, node) = self.aws.run_instance(true).await?;
        self.kube.add_node(&node, PODS);
        Ok((id, node))
    }

    /// Starts a replica `pod` with the queue-mode environment plus `extra`.
    pub fn spawn(&self, pod: &str, extra: &[(&str, &str)]) -> Nth {
        let mut vars = self
            .aws
            .handler_env(&self.kube, pod, &self.webhook, &self.autoscaling);
        vars.extend(env(extra));
        Nth::spawn(self.kube.dir.path(), &["queue"], &vars)
    }

    /// Waits until `node` is cordoned, has no pods and is recorded as drained.
    pub async fn wait_drained(&self, node: &str, limit: Duration) -> NodeView {
        eventually(limit, &format!("node {node} to be drained"), || async {
            let view = self.kube.state(node);
            (view.unschedulable && view.phase() == Some("drained") && self.kube.pods_on(node).is_empty())
                .then_some(view)
        })
        .await
    }
}
