//! Disruption and interruption end to end: spot-kube-sim (API, scheduler, kubelet, ReplicaSet
//! controller, evictions honouring PodDisruptionBudgets) over HTTP, the simulated cloud
//! registering Nodes, the provisioner, and the interruption and disruption controllers, all
//! through kube-rs.
//!
//! Watchers record every change of pods and NodeClaims with its resourceVersion (the
//! simulator's single, increasing counter), so orderings such as "the replacement was
//! created before the first eviction" are checked exactly.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::events::v1::Event as KubeEvent;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use spot_core::event::{EventKind, InstanceState, InterruptionEvent, Origin, SpotAction};
use spot_core::instance_type::CapacityType;
use spot_core::node::DrainOptions;
use spot_core::packing::{BinType, Item, lower_bound};
use spot_core::source::MemorySource;
use spot_provisioner::Settings;
use spot_provisioner::api::{NodeClaim, NodePool};
use spot_provisioner::cluster::Snapshot;
use spot_provisioner::disruption::orchestrate::{REPLACEMENT_FOR_ANNOTATION, Record, replaces};
use spot_provisioner::disruption::{Disruption, DisruptionSettings};
use spot_provisioner::interruption::{Interruption, InterruptionSettings};
use tokio::time::Instant;

use common::{apply, deployment, initialized, list, node_of, pool, running, scale, sim_cloud, wait_for};

/// One change seen by a watcher: resourceVersion, whether the object was deleted, the object.
#[derive(Debug, Clone)]
struct Seen<K> {
    rv: u64,
    deleted: bool,
    obj: K,
}

type Log<K> = Arc<Mutex<Vec<Seen<K>>>>;

fn rv<K: kube::Resource>(obj: &K) -> u64 {
    obj.meta()
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Records every change of `K` from now on.
fn record<K>(client: &Client) -> (Log<K>, tokio::task::JoinHandle<()>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let log: Log<K> = Arc::default();
    let api = Api::<K>::all(client.clone());
    let out = log.clone();
    let task = tokio::spawn(async move {
        let stream = watcher(api, watcher::Config::default());
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            let (obj, deleted) = match ev {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => (o, false),
                Ok(watcher::Event::Delete(o)) => (o, true),
                _ => continue,
            };
            out.lock().unwrap().push(Seen {
                rv: rv(&obj),
                deleted,
                obj,
            });
        }
    });
    (log, task)
}

/// The shared harness with the interruption controller's event source.
struct Env {
    base: common::Env,
    source: Arc<MemorySource>,
}

impl std::ops::Deref for Env {
    type Target = common::Env;
    fn deref(&self) -> &common::Env {
        &self.base
    }
}

impl std::ops::DerefMut for Env {
    fn deref_mut(&mut self) -> &mut common::Env {
        &mut self.base
    }
}

/// A cluster with the CRDs, a node class in three zones and the NodePool `default` with
/// `spec`; the provisioner runs, the controllers are started by the test.
async fn env(nodepool_spec: serde_json::Value, seed: u64) -> Env {
    let settings = Settings {
        // The provisioner terminates an instance whose drain outlasts this: generous, so that
        // a loaded machine never cuts a drain short (the PDB check would see it).
        drain: DrainOptions {
            timeout: Duration::from_secs(120),
            eviction_retry: Duration::from_millis(200),
            ..DrainOptions::default()
        },
        ..common::fast_settings()
    };
    Env {
        base: common::start(sim_cloud(seed), &[("default", nodepool_spec)], settings).await,
        source: Arc::new(MemorySource::new()),
    }
}

impl Env {
    fn start_interruption(&mut self, settings: InterruptionSettings) {
        let controller = Interruption::new(self.provisioner.clone(), self.source.clone()).settings(settings);
        self.tasks.push(tokio::spawn(async move {
            controller.run(std::future::pending()).await.unwrap();
        }));
    }

    fn start_disruption(&mut self, settings: DisruptionSettings) {
        let controller = Disruption::new(self.provisioner.clone(), settings);
        self.tasks.push(tokio::spawn(async move {
            controller.run(std::future::pending()).await.unwrap();
        }));
    }
}

/// Short windows for tests; the timeouts stay generous (a loaded machine initializes
/// replacements slowly, and a command that times out rolls back).
fn fast_disruption() -> DisruptionSettings {
    DisruptionSettings {
        poll_interval: Duration::from_millis(300),
        validation_delay: Duration::from_millis(500),
        replacement_timeout: Duration::from_secs(90),
        nomination_window: Duration::from_secs(1),
        ..DisruptionSettings::default()
    }
}

fn fast_interruption() -> InterruptionSettings {
    InterruptionSettings {
        replacement_wait: Duration::from_secs(10),
        drain_reserve: Duration::from_secs(60),
        resync: Duration::from_millis(300),
        rebalance_timeout: Duration::from_secs(90),
        retry: Duration::from_millis(200),
        ..InterruptionSettings::default()
    }
}

/// One pod per node.
fn spread(app: &str) -> serde_json::Value {
    json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": app}}}]}}})
}

/// Waits until `want` pods run on existing nodes and every NodeClaim is initialized with its
/// node (nothing deleting), or panics with the state after `limit`.
async fn wait_settled(client: &Client, want: usize, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let pods: Vec<Pod> = list(client).await;
        let nodes: BTreeSet<String> = list::<Node>(client).await.iter().map(|n| n.name_any()).collect();
        let claims: Vec<NodeClaim> = list(client).await;
        let ok_pods = pods
            .iter()
            .filter(|p| running(p) && node_of(p).is_some_and(|n| nodes.contains(n)))
            .count();
        let claims_ok = claims
            .iter()
            .all(|c| c.metadata.deletion_timestamp.is_none() && initialized(c));
        if pods.len() == want && ok_pods == want && claims_ok && claims.len() == nodes.len() {
            return start.elapsed();
        }
        if start.elapsed() > limit {
            panic!(
                "after {limit:?}: {ok_pods}/{} pods running on nodes (want {want}), {} NodeClaims ({} not initialized or deleting), {} nodes",
                pods.len(),
                claims.len(),
                claims
                    .iter()
                    .filter(|c| c.metadata.deletion_timestamp.is_some() || !initialized(c))
                    .count(),
                nodes.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The instance id of a NodeClaim.
fn instance_id(c: &NodeClaim) -> String {
    c.status
        .as_ref()
        .and_then(|s| s.provider_id.as_deref())
        .and_then(|p| p.rsplit('/').next())
        .unwrap()
        .to_owned()
}

fn spot_notice(instance: &str, identity: &str) -> InterruptionEvent {
    let now = time::OffsetDateTime::now_utc();
    InterruptionEvent::new(
        instance,
        EventKind::SpotInterruption {
            action: SpotAction::Terminate,
            deadline: now + time::Duration::minutes(2),
        },
        identity,
        now,
        Origin::Queue {
            message_id: identity.to_owned(),
            upstream_id: None,
        },
    )
}

/// The sum of the metric lines starting with `prefix`.
fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The histogram bucket bound holding the `q` quantile.
fn quantile_bound(text: &str, name: &str, q: f64) -> f64 {
    let count = metric(text, &format!("{name}_count"));
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&format!("{name}_bucket{{le=\""))?;
            let (le, value) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, value.parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
        .iter()
        .find(|(_, c)| *c >= q * count)
        .map(|(le, _)| *le)
        .unwrap_or(f64::INFINITY)
}

const REPLACEMENT_SECONDS: &str = "spot_provisioner_interruption_replacement_seconds";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spot_interruption_replaces_the_node_before_the_first_eviction() {
    // Nodes of 8 or 16 vCPU: the 30 pods land on one node.
    let mut env = env(
        pool(json!({"template": {"spec": {"requirements": [
            {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot"]},
            {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]},
            {"key": "karpenter.k8s.aws/instance-category", "operator": "In", "values": ["c", "m", "r"]},
            {"key": "karpenter.k8s.aws/instance-size", "operator": "In", "values": ["2xlarge", "4xlarge"]}
        ]}}})),
        21,
    )
    .await;
    apply::<Deployment>(&env.client, deployment("web", 30, "200m", "256Mi", json!({}))).await;
    wait_settled(&env.client, 30, Duration::from_secs(90)).await;
    let claims: Vec<NodeClaim> = list(&env.client).await;
    assert_eq!(claims.len(), 1, "30 pods on one node");
    let victim = claims[0].clone();
    let victim_name = victim.name_any();
    let node = victim.status.as_ref().unwrap().node_name.clone().unwrap();
    let pods: Vec<Pod> = list(&env.client).await;
    assert_eq!(
        pods.iter().filter(|p| node_of(p) == Some(node.as_str())).count(),
        30
    );
    let labels = victim.labels().clone();
    let (itype, zone) = (
        labels["node.kubernetes.io/instance-type"].clone(),
        labels["topology.kubernetes.io/zone"].clone(),
    );

    let (pod_log, t1) = record::<Pod>(&env.client);
    let (claim_log, t2) = record::<NodeClaim>(&env.client);
    env.tasks.extend([t1, t2]);
    env.start_interruption(fast_interruption());
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The same notice three times: twice from the queue, once as IMDS sees it.
    let id = instance_id(&victim);
    env.source.push(vec![spot_notice(&id, "evt-1")]).await;
    env.source.push(vec![spot_notice(&id, "evt-1")]).await;
    let mut imds = spot_notice(&id, "imds");
    imds.origin = Origin::Imds;
    env.source.push(vec![imds]).await;

    let client = env.client.clone();
    let name = victim_name.clone();
    wait_for(
        "the interrupted NodeClaim to be gone",
        Duration::from_secs(90),
        || {
            let client = client.clone();
            let name = name.clone();
            async move {
                Api::<NodeClaim>::all(client)
                    .get_opt(&name)
                    .await
                    .unwrap()
                    .is_none()
            }
        },
    )
    .await;
    wait_settled(&env.client, 30, Duration::from_secs(60)).await;

    let pods: Vec<Pod> = list(&env.client).await;
    assert!(
        pods.iter().all(|p| node_of(p) != Some(node.as_str())),
        "no pod left on the interrupted node"
    );
    let claims: Vec<NodeClaim> = list(&env.client).await;
    let replacements: Vec<&NodeClaim> = claims.iter().filter(|c| replaces(c, &victim_name)).collect();
    assert_eq!(
        replacements.len(),
        1,
        "one replacement however many messages: {claims:#?}"
    );
    assert_eq!(claims.len(), 1, "nothing else was launched");
    let replacement = replacements[0].name_any();

    // Orderings, by resourceVersion.
    let pods = pod_log.lock().unwrap().clone();
    let first_eviction = pods
        .iter()
        .filter(|s| node_of(&s.obj) == Some(node.as_str()))
        .filter(|s| s.deleted || s.obj.metadata.deletion_timestamp.is_some())
        .map(|s| s.rv)
        .min()
        .expect("the node's pods were evicted");
    let seen = claim_log.lock().unwrap().clone();
    let of = |name: String| seen.iter().filter(move |s| s.obj.name_any() == name);
    let created = of(replacement.clone()).map(|s| s.rv).min().unwrap();
    let launched = of(replacement.clone())
        .filter(|s| s.obj.status.as_ref().is_some_and(|st| st.is_true("Launched")))
        .map(|s| s.rv)
        .min()
        .unwrap();
    let victim_deleting = of(victim_name.clone())
        .filter(|s| s.obj.metadata.deletion_timestamp.is_some())
        .map(|s| s.rv)
        .min()
        .unwrap();
    let marked = of(victim_name.clone()).find_map(|s| Record::of(&s.obj)).unwrap();
    assert_eq!(marked.reason, "Interrupted");
    assert!(
        created < launched && launched < victim_deleting && victim_deleting < first_eviction,
        "replacement created at rv {created}, launched at {launched}; interrupted claim deleted at {victim_deleting}; first eviction at {first_eviction}"
    );

    // Every delivery acknowledged; the offering marked unavailable; one handling.
    assert!(env.source.unacknowledged().await.is_empty());
    assert_eq!(env.source.pending().await, 0);
    assert!(
        env.provisioner
            .unavailable_offerings()
            .is_unavailable(&itype, &zone, CapacityType::Spot)
    );
    let text = env.metrics();
    assert_eq!(
        metric(&text, &format!("{REPLACEMENT_SECONDS}_count")),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            r#"spot_provisioner_interruption_events_total{kind="spot-interruption",action="replaced"}"#
        ),
        1.0,
        "{text}"
    );
    let latency = metric(&text, &format!("{REPLACEMENT_SECONDS}_sum"));
    println!(
        "interruption → replacement NodeClaim created in {:.1} ms; replacement created at rv {created}, launched at rv {launched}, first eviction at rv {first_eviction}",
        latency * 1000.0
    );
    // The latency goal (under 1 s at p99) is measured by `cargo xtask bench`, not here.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn interrupting_eight_nodes_at_once_replaces_each_before_its_drain() {
    let mut env = env(pool(json!({})), 22).await;
    apply::<Deployment>(&env.client, deployment("api", 8, "500m", "512Mi", spread("api"))).await;
    wait_settled(&env.client, 8, Duration::from_secs(90)).await;
    let claims: Vec<NodeClaim> = list(&env.client).await;
    assert_eq!(claims.len(), 8);
    env.start_interruption(fast_interruption());
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (i, c) in claims.iter().enumerate() {
        // One delivery per message, and a duplicate of each.
        env.source
            .push(vec![spot_notice(&instance_id(c), &format!("e{i}"))])
            .await;
        env.source
            .push(vec![spot_notice(&instance_id(c), &format!("e{i}"))])
            .await;
    }
    let client = env.client.clone();
    let old: BTreeSet<String> = claims.iter().map(|c| c.name_any()).collect();
    wait_for(
        "every interrupted NodeClaim to be gone",
        Duration::from_secs(120),
        || {
            let client = client.clone();
            let old = old.clone();
            async move {
                list::<NodeClaim>(&client)
                    .await
                    .iter()
                    .all(|c| !old.contains(&c.name_any()))
            }
        },
    )
    .await;
    wait_settled(&env.client, 8, Duration::from_secs(60)).await;
    let now: Vec<NodeClaim> = list(&env.client).await;
    assert_eq!(now.len(), 8, "one replacement each");
    assert!(env.source.unacknowledged().await.is_empty());
    let text = env.metrics();
    assert_eq!(metric(&text, &format!("{REPLACEMENT_SECONDS}_count")), 8.0);
    assert_eq!(
        metric(
            &text,
            r#"spot_provisioner_nodeclaims_created_total{nodepool="default",reason="interruption"}"#
        ),
        8.0,
        "every replacement came from the interruption controller, none from provisioning after the drain\n{text}"
    );
    let p99 = quantile_bound(&text, REPLACEMENT_SECONDS, 0.99);
    let mean = metric(&text, &format!("{REPLACEMENT_SECONDS}_sum")) / 8.0;
    println!(
        "8 concurrent interruptions: replacement NodeClaims created in {:.1} ms on average, p99 bucket ≤ {p99} s",
        mean * 1000.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebalance_recommendations_follow_the_nodepool_policy() {
    let mut env = env(
        pool(json!({"disruption": {"rebalance": {"policy": "Replace", "maxConcurrent": "1"}}})),
        23,
    )
    .await;
    apply::<Deployment>(&env.client, deployment("api", 3, "500m", "512Mi", spread("api"))).await;
    wait_settled(&env.client, 3, Duration::from_secs(90)).await;
    let claims: Vec<NodeClaim> = list(&env.client).await;
    assert_eq!(claims.len(), 3);
    let (claim_log, t) = record::<NodeClaim>(&env.client);
    env.tasks.push(t);
    env.start_interruption(fast_interruption());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let now = time::OffsetDateTime::now_utc();
    for c in &claims {
        env.source
            .push(vec![InterruptionEvent::new(
                instance_id(c),
                EventKind::RebalanceRecommendation,
                "r",
                now,
                Origin::Imds,
            )])
            .await;
    }
    let client = env.client.clone();
    let old: BTreeSet<String> = claims.iter().map(|c| c.name_any()).collect();
    wait_for(
        "every recommended NodeClaim to be replaced",
        Duration::from_secs(135),
        || {
            let client = client.clone();
            let old = old.clone();
            async move {
                list::<NodeClaim>(&client)
                    .await
                    .iter()
                    .all(|c| !old.contains(&c.name_any()))
            }
        },
    )
    .await;
    wait_settled(&env.client, 3, Duration::from_secs(60)).await;
    assert!(env.source.unacknowledged().await.is_empty());

    // At most one proactive replacement at a time, and each node drained only once its
    // replacement was initialized.
    let seen = claim_log.lock().unwrap().clone();
    let mut active: BTreeSet<String> = BTreeSet::new();
    let mut most = 0;
    for s in &seen {
        let name = s.obj.name_any();
        let busy = !s.deleted && Record::of(&s.obj).is_some_and(|r| r.reason == "Rebalance");
        if busy {
            active.insert(name);
        } else {
            active.remove(&name);
        }
        most = most.max(active.len());
    }
    assert_eq!(most, 1, "maxConcurrent 1");
    for old_claim in &old {
        let deleting = seen
            .iter()
            .filter(|s| &s.obj.name_any() == old_claim && s.obj.metadata.deletion_timestamp.is_some())
            .map(|s| s.rv)
            .min()
            .expect("deleted");
        let ready = seen
            .iter()
            .filter(|s| {
                s.obj.annotations().get(REPLACEMENT_FOR_ANNOTATION) == Some(old_claim) && initialized(&s.obj)
            })
            .map(|s| s.rv)
            .min()
            .expect("a replacement initialized");
        assert!(
            ready < deleting,
            "{old_claim}: replacement initialized at rv {ready}, drain started at rv {deleting}"
        );
    }

    // `Event`: an Event, no replacement. `Ignore`: nothing.
    let pools = Api::<NodePool>::all(env.client.clone());
    pools
        .patch(
            "default",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"disruption": {"rebalance": {"policy": "Event"}}}})),
        )
        .await
        .unwrap();
    let current: Vec<NodeClaim> = list(&env.client).await;
    let target = current[0].clone();
    env.source
        .push(vec![InterruptionEvent::new(
            instance_id(&target),
            EventKind::RebalanceRecommendation,
            "r2",
            now,
            Origin::Imds,
        )])
        .await;
    let client = env.client.clone();
    let target_name = target.name_any();
    wait_for("a RebalanceRecommendation Event", Duration::from_secs(30), || {
        let client = client.clone();
        let target_name = target_name.clone();
        async move {
            list::<KubeEvent>(&client).await.iter().any(|e| {
                e.reason.as_deref() == Some("RebalanceRecommendation")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(target_name.as_str())
            })
        }
    })
    .await;
    pools
        .patch(
            "default",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"disruption": {"rebalance": {"policy": "Ignore"}}}})),
        )
        .await
        .unwrap();
    env.source
        .push(vec![InterruptionEvent::new(
            instance_id(&current[1]),
            EventKind::RebalanceRecommendation,
            "r3",
            now,
            Origin::Imds,
        )])
        .await;
    wait_for("the ignored recommendation", Duration::from_secs(30), || {
        let text = env.metrics();
        async move {
            metric(
                &text,
                r#"spot_provisioner_interruption_events_total{kind="rebalance-recommendation",action="ignored"}"#,
            ) == 1.0
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after: Vec<NodeClaim> = list(&env.client).await;
    assert_eq!(
        after.iter().map(|c| c.name_any()).collect::<BTreeSet<_>>(),
        current.iter().map(|c| c.name_any()).collect::<BTreeSet<_>>(),
        "Event and Ignore replace nothing"
    );
    assert!(after.iter().all(|c| c.metadata.deletion_timestamp.is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebalance_a_spot_notice_and_a_state_change_for_one_instance_get_one_replacement() {
    let mut env = env(
        pool(json!({"disruption": {"rebalance": {"policy": "Replace", "maxConcurrent": "1"}}})),
        30,
    )
    .await;
    apply::<Deployment>(&env.client, deployment("api", 3, "500m", "512Mi", spread("api"))).await;
    wait_settled(&env.client, 3, Duration::from_secs(90)).await;
    let claims: Vec<NodeClaim> = list(&env.client).await;
    let victim = claims[0].name_any();
    let id = instance_id(&claims[0]);
    let (claim_log, t) = record::<NodeClaim>(&env.client);
    env.tasks.push(t);
    env.start_interruption(fast_interruption());
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The recommendation first; once its replacement exists (usually still launching), the
    // spot notice and the state change in one delivery, and the notice again in another.
    let now = time::OffsetDateTime::now_utc();
    env.source
        .push(vec![InterruptionEvent::new(
            id.clone(),
            EventKind::RebalanceRecommendation,
            "r",
            now,
            Origin::Imds,
        )])
        .await;
    let client = env.client.clone();
    wait_for("the proactive replacement", Duration::from_secs(60), || {
        let client = client.clone();
        let victim = victim.clone();
        async move {
            list::<NodeClaim>(&client)
                .await
                .iter()
                .any(|c| replaces(c, &victim))
        }
    })
    .await;
    let stopping = InterruptionEvent::new(
        id.clone(),
        EventKind::StateChange {
            state: InstanceState::Stopping,
        },
        "s",
        now,
        Origin::Queue {
            message_id: "s".into(),
            upstream_id: None,
        },
    );
    env.source.push(vec![spot_notice(&id, "n"), stopping]).await;
    env.source.push(vec![spot_notice(&id, "n")]).await;
    wait_for(
        "the instance's NodeClaim to be gone",
        Duration::from_secs(90),
        || {
            let client = client.clone();
            let victim = victim.clone();
            async move {
                Api::<NodeClaim>::all(client)
                    .get_opt(&victim)
                    .await
                    .unwrap()
                    .is_none()
            }
        },
    )
    .await;
    wait_settled(&env.client, 3, Duration::from_secs(60)).await;
    wait_for("every delivery acknowledged", Duration::from_secs(30), || {
        let source = env.source.clone();
        async move { source.unacknowledged().await.is_empty() && source.pending().await == 0 }
    })
    .await;

    let replacements: BTreeSet<String> = claim_log
        .lock()
        .unwrap()
        .iter()
        .filter(|s| replaces(&s.obj, &victim))
        .map(|s| s.obj.name_any())
        .collect();
    assert_eq!(replacements.len(), 1, "one replacement: {replacements:?}");
    assert_eq!(
        list::<NodeClaim>(&env.client).await.len(),
        3,
        "nothing else launched"
    );
    let text = env.metrics();
    let replaced: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("spot_provisioner_interruption_events_total") && l.contains(r#"action="replaced""#)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        replaced <= 1.0,
        "at most one terminal handling replaced the node\n{text}"
    );
    assert_eq!(
        metric(
            &text,
            r#"spot_provisioner_nodeclaims_created_total{nodepool="default",reason="interruption"}"#
        ),
        0.0,
        "the notices reused the proactive replacement\n{text}"
    );
}

/// The LP lower bound on the cost of nodes for `pods` over the NodePool's instance types
/// (cheapest available offering of each).
async fn lp_bound(env: &Env, pods: &[Pod]) -> f64 {
    let snapshot = Snapshot::read(&env.client).await.unwrap();
    let (templates, _) = env.provisioner.templates(&snapshot);
    let t = &templates[0];
    let types: Vec<BinType> = t
        .instance_types
        .iter()
        .filter_map(|o| {
            o.cheapest_price(&t.requirements)
                .map(|price| BinType::new(o.allocatable.clone(), price))
        })
        .collect();
    let items: Vec<Item> = pods
        .iter()
        .map(|p| Item::new(spot_k8s::convert::pod_requests(p).unwrap()))
        .collect();
    lower_bound(&items, &types).unwrap()
}

/// Waits until the disruption controller is quiet: at least three passes done, nothing
/// disrupting or uninitialized, and no command computed for 3 s.
async fn settle_disruption(env: &Env, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut quiet_since = Instant::now();
    let mut last_commands = -1.0;
    let first_passes = metric(
        &env.metrics(),
        "spot_provisioner_disruption_evaluation_seconds_count",
    );
    loop {
        let claims: Vec<NodeClaim> = list(&env.client).await;
        let busy = claims
            .iter()
            .any(|c| c.metadata.deletion_timestamp.is_some() || Record::of(c).is_some() || !initialized(c));
        let text = env.metrics();
        let commands = metric(&text, "spot_provisioner_disruption_commands_total");
        let passes = metric(&text, "spot_provisioner_disruption_evaluation_seconds_count");
        if busy || commands != last_commands || passes < first_passes + 3.0 {
            quiet_since = Instant::now();
            last_commands = commands;
        }
        if quiet_since.elapsed() > Duration::from_secs(3) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "disruption did not settle in {limit:?}: {} NodeClaims\n{text}",
            claims.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consolidation_after_scaling_500_pods_to_100_approaches_the_lp_bound_within_budgets_and_pdbs() {
    let mut env = env(
        pool(json!({"disruption": {"consolidateAfter": "1s", "budgets": [{"nodes": "30%"}]}})),
        24,
    )
    .await;
    apply::<Deployment>(&env.client, deployment("web", 500, "500m", "1Gi", json!({}))).await;
    apply::<PodDisruptionBudget>(
        &env.client,
        json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
               "metadata": {"name": "web", "namespace": "default"},
               "spec": {"maxUnavailable": "10%", "selector": {"matchLabels": {"app": "web"}}}}),
    )
    .await;
    let up = wait_settled(&env.client, 500, Duration::from_secs(180)).await;
    let peak_nodes = list::<NodeClaim>(&env.client).await.len();
    let peak_cost = env.cloud.running_cost_per_hour();
    scale(&env.client, "web", 100).await;
    wait_settled(&env.client, 100, Duration::from_secs(60)).await;
    let before_nodes = list::<NodeClaim>(&env.client).await.len();
    let before = env.cloud.running_cost_per_hour();
    let pods: Vec<Pod> = list(&env.client).await;
    let bound = lp_bound(&env, &pods).await;

    let (claim_log, t1) = record::<NodeClaim>(&env.client);
    let (pod_log, t2) = record::<Pod>(&env.client);
    env.tasks.extend([t1, t2]);
    env.start_disruption(fast_disruption());
    let took = settle_disruption(&env, Duration::from_secs(180)).await;
    wait_settled(&env.client, 100, Duration::from_secs(30)).await;
    let after_nodes = list::<NodeClaim>(&env.client).await.len();
    for i in env.cloud.instances().iter().filter(|i| i.terminated_at.is_none()) {
        println!(
            "  {} {} {:?} ${:.4}/h",
            i.instance.instance_type, i.instance.zone, i.instance.capacity_type, i.price
        );
    }
    let after = env.cloud.running_cost_per_hour();
    let attainable = before - bound;
    let saved = before - after;
    println!(
        "500 pods up in {up:?} on {peak_nodes} nodes (${peak_cost:.3}/h); at 100 pods {before_nodes} nodes ${before:.3}/h; \
         consolidated in {took:?} to {after_nodes} nodes ${after:.3}/h; LP bound ${bound:.3}/h: saved ${saved:.3}/h of ${attainable:.3}/h attainable ({:.1}%), final cost {:.1}% above the bound",
        100.0 * saved / attainable,
        100.0 * (after / bound - 1.0)
    );
    assert!(
        saved >= 0.9 * attainable,
        "saved ${saved:.3}/h, the LP bound allows ${attainable:.3}/h"
    );

    // Budgets: at no time more of the pool's initialized nodes disrupting than 30% allows.
    let seen = claim_log.lock().unwrap().clone();
    let mut state: BTreeMap<String, NodeClaim> = BTreeMap::new();
    // The most NodeClaims draining at once.
    let mut draining = 0;
    for s in &seen {
        if s.deleted {
            state.remove(&s.obj.name_any());
        } else {
            state.insert(s.obj.name_any(), s.obj.clone());
        }
        let total = state.values().filter(|c| initialized(c)).count();
        let disrupting = state
            .values()
            .filter(|c| {
                initialized(c)
                    && (Record::of(c).is_some_and(|r| r.reason != "Interrupted")
                        || c.metadata.deletion_timestamp.is_some())
            })
            .count();
        draining = draining.max(
            state
                .values()
                .filter(|c| c.metadata.deletion_timestamp.is_some())
                .count(),
        );
        assert!(
            disrupting <= (total * 30).div_ceil(100),
            "rv {}: {disrupting} of {total} nodes disrupting, the budget allows 30%",
            s.rv
        );
    }
    // The PodDisruptionBudget: at least 90 of the 100 pods healthy at all times.
    let mut healthy: BTreeMap<String, bool> = pods.iter().map(|p| (p.name_any(), running(p))).collect();
    let mut least = healthy.values().filter(|h| **h).count();
    for s in pod_log.lock().unwrap().iter() {
        let ready = !s.deleted
            && running(&s.obj)
            && s.obj
                .status
                .as_ref()
                .and_then(|st| st.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        healthy.insert(s.obj.name_any(), ready);
        let now = healthy.values().filter(|h| **h).count();
        least = least.min(now);
    }
    println!(
        "at least {least} of 100 pods healthy throughout (PDB: 90); at most {draining} nodes draining at once"
    );
    // spot-kube-sim checks the budget and deletes the pod in one critical section, as the
    // API server's optimistic concurrency on the budget's status does: concurrent drains
    // never spend the same disruption twice.
    assert!(
        least >= 90,
        "{least} healthy pods with {draining} drains at once; the PDB requires 90"
    );
    let text = env.metrics();
    assert!(
        metric(&text, "spot_provisioner_consolidation_savings_per_hour_total") > 0.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consolidated_fleet_makes_no_more_moves() {
    let mut env = env(pool(json!({"disruption": {"consolidateAfter": "0s"}})), 25).await;
    apply::<Deployment>(&env.client, deployment("web", 60, "500m", "1Gi", json!({}))).await;
    apply::<Deployment>(&env.client, deployment("db", 12, "1", "4Gi", json!({}))).await;
    wait_settled(&env.client, 72, Duration::from_secs(120)).await;
    let provisioned = list::<NodeClaim>(&env.client).await.len();
    let provisioned_cost = env.cloud.running_cost_per_hour();
    env.start_disruption(fast_disruption());
    settle_disruption(&env, Duration::from_secs(120)).await;
    wait_settled(&env.client, 72, Duration::from_secs(30)).await;
    let text = env.metrics();
    let (moves, passes) = (
        metric(
            &text,
            r#"spot_provisioner_disruption_commands_total{reason="Underutilized",result="executed"}"#,
        ) + metric(
            &text,
            r#"spot_provisioner_disruption_commands_total{reason="Empty",result="executed"}"#,
        ),
        metric(&text, "spot_provisioner_disruption_evaluation_seconds_count"),
    );
    let commands = metric(&text, "spot_provisioner_disruption_commands_total");
    let before: BTreeSet<String> = list::<NodeClaim>(&env.client)
        .await
        .iter()
        .map(|c| c.name_any())
        .collect();
    let cost = env.cloud.running_cost_per_hour();
    wait_for("ten more passes", Duration::from_secs(90), || {
        let text = env.metrics();
        async move { metric(&text, "spot_provisioner_disruption_evaluation_seconds_count") >= passes + 10.0 }
    })
    .await;
    let text = env.metrics();
    let more_passes = metric(&text, "spot_provisioner_disruption_evaluation_seconds_count") - passes;
    let after: BTreeSet<String> = list::<NodeClaim>(&env.client)
        .await
        .iter()
        .map(|c| c.name_any())
        .collect();
    println!(
        "provisioned {provisioned} nodes at ${provisioned_cost:.3}/h; {moves} consolidation moves to {} nodes at ${cost:.3}/h; \
         then {more_passes} passes and no command",
        before.len()
    );
    assert!(more_passes >= 10.0, "{more_passes} passes\n{text}");
    assert_eq!(
        metric(&text, "spot_provisioner_disruption_commands_total"),
        commands,
        "a consolidated fleet computes no command\n{text}"
    );
    assert_eq!(before, after);
    assert_eq!(env.cloud.running_cost_per_hour(), cost);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_nodes_are_deleted_and_their_pods_run_elsewhere() {
    let mut env = env(
        pool(
            json!({"template": {"spec": {"expireAfter": "8s"}}, "disruption": {"consolidateAfter": "Never"}}),
        ),
        26,
    )
    .await;
    apply::<Deployment>(&env.client, deployment("web", 5, "500m", "1Gi", json!({}))).await;
    wait_settled(&env.client, 5, Duration::from_secs(60)).await;
    let first: Vec<NodeClaim> = list(&env.client).await;
    assert!(
        first
            .iter()
            .all(|c| c.spec.expire_after.duration() == Some(Duration::from_secs(8)))
    );
    // The replacements must not expire in turn (on a loaded machine a node can take 8 s to
    // come up): their pool now says 1h. The first claims keep their 8 s (and drift, which
    // expiry beats: it deletes them in the controller's first pass once they are 8 s old).
    Api::<NodePool>::all(env.client.clone())
        .patch(
            "default",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"spec": {"expireAfter": "1h"}}}})),
        )
        .await
        .unwrap();
    let newest = first
        .iter()
        .filter_map(|c| c.metadata.creation_timestamp.as_ref())
        .map(|t| t.0.as_second())
        .max()
        .unwrap();
    wait_for(
        "the first NodeClaims to be 8 s old",
        Duration::from_secs(30),
        || async move { time::OffsetDateTime::now_utc().unix_timestamp() > newest + 9 },
    )
    .await;
    env.start_disruption(fast_disruption());
    let client = env.client.clone();
    let old: BTreeSet<String> = first.iter().map(|c| c.name_any()).collect();
    wait_for(
        "the expired NodeClaims to be gone",
        Duration::from_secs(90),
        || {
            let client = client.clone();
            let old = old.clone();
            async move {
                list::<NodeClaim>(&client)
                    .await
                    .iter()
                    .all(|c| !old.contains(&c.name_any()))
            }
        },
    )
    .await;
    wait_for("the pods to run on new nodes", Duration::from_secs(60), || {
        let client = client.clone();
        let old = old.clone();
        async move {
            let claims: Vec<NodeClaim> = list(&client).await;
            let nodes: BTreeSet<String> = claims
                .iter()
                .filter(|c| !old.contains(&c.name_any()) && initialized(c))
                .filter_map(|c| c.status.as_ref()?.node_name.clone())
                .collect();
            let pods: Vec<Pod> = list(&client).await;
            pods.len() == 5
                && pods
                    .iter()
                    .all(|p| running(p) && node_of(p).is_some_and(|n| nodes.contains(n)))
        }
    })
    .await;
    let text = env.metrics();
    assert_eq!(
        metric(
            &text,
            r#"spot_provisioner_disruption_nodes_total{reason="Expired",result="default"}"#
        ),
        old.len() as f64,
        "every first NodeClaim expired (none was replaced for drift first)\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_changed_nodepool_template_drifts_its_nodes_which_are_replaced() {
    let mut env = env(pool(json!({"disruption": {"consolidateAfter": "Never"}})), 27).await;
    apply::<Deployment>(&env.client, deployment("web", 5, "500m", "1Gi", json!({}))).await;
    wait_settled(&env.client, 5, Duration::from_secs(60)).await;
    let first: Vec<NodeClaim> = list(&env.client).await;
    let pools = Api::<NodePool>::all(env.client.clone());
    let hash = pools.get("default").await.unwrap().template_hash();
    assert!(
        first
            .iter()
            .all(|c| c.annotations().get("karpenter.sh/nodepool-hash") == Some(&hash)),
        "claims carry the template hash"
    );
    let (claim_log, t) = record::<NodeClaim>(&env.client);
    env.tasks.push(t);
    env.start_disruption(fast_disruption());
    pools
        .patch(
            "default",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"metadata": {"labels": {"team": "blue"}}}}})),
        )
        .await
        .unwrap();
    let new_hash = pools.get("default").await.unwrap().template_hash();
    assert_ne!(hash, new_hash);
    let client = env.client.clone();
    let old: BTreeSet<String> = first.iter().map(|c| c.name_any()).collect();
    wait_for(
        "the drifted NodeClaims to be replaced",
        Duration::from_secs(90),
        || {
            let client = client.clone();
            let old = old.clone();
            async move {
                list::<NodeClaim>(&client)
                    .await
                    .iter()
                    .all(|c| !old.contains(&c.name_any()))
            }
        },
    )
    .await;
    wait_settled(&env.client, 5, Duration::from_secs(60)).await;
    let now: Vec<NodeClaim> = list(&env.client).await;
    for c in &now {
        assert_eq!(c.annotations().get("karpenter.sh/nodepool-hash"), Some(&new_hash));
        assert_eq!(c.labels().get("team").map(String::as_str), Some("blue"));
    }
    let nodes: Vec<Node> = list(&env.client).await;
    assert!(
        nodes
            .iter()
            .all(|n| n.labels().get("team").map(String::as_str) == Some("blue"))
    );
    let seen = claim_log.lock().unwrap().clone();
    for o in &old {
        let drifted = seen
            .iter()
            .filter(|s| &s.obj.name_any() == o)
            .filter(|s| {
                s.obj
                    .status
                    .as_ref()
                    .and_then(|st| st.condition("Drifted"))
                    .is_some_and(|c| c.status == "True" && c.reason == "NodePoolDrifted")
            })
            .map(|s| s.rv)
            .min()
            .expect("marked Drifted");
        let deleting = seen
            .iter()
            .filter(|s| &s.obj.name_any() == o && s.obj.metadata.deletion_timestamp.is_some())
            .map(|s| s.rv)
            .min()
            .expect("deleted");
        let replacement_ready = seen
            .iter()
            .filter(|s| {
                s.obj
                    .annotations()
                    .get(REPLACEMENT_FOR_ANNOTATION)
                    .is_some_and(|cmd| cmd.starts_with(o.as_str()))
                    && initialized(&s.obj)
            })
            .map(|s| s.rv)
            .min()
            .expect("a replacement initialized");
        assert!(drifted < replacement_ready && replacement_ready < deleting);
    }
    let text = env.metrics();
    assert!(
        metric(
            &text,
            r#"spot_provisioner_disruption_commands_total{reason="Drifted",result="executed"}"#
        ) >= 1.0,
        "{text}"
    );
}

/// Three nodes, one pod each (by anti-affinity).
async fn three_node_fleet(env: &Env) -> Vec<String> {
    apply::<Deployment>(
        &env.client,
        deployment("spread", 3, "500m", "1Gi", spread("spread")),
    )
    .await;
    wait_settled(&env.client, 3, Duration::from_secs(90)).await;
    let mut nodes: Vec<String> = list::<Node>(&env.client)
        .await
        .iter()
        .map(|n| n.name_any())
        .collect();
    nodes.sort();
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_zero_budget_in_an_active_window_blocks_consolidation_until_it_is_lifted() {
    let mut env = env(
        pool(json!({"disruption": {"consolidateAfter": "0s", "budgets": [
            {"nodes": "0", "schedule": "* * * * *", "duration": "1h"},
            {"nodes": "100%"}
        ]}})),
        28,
    )
    .await;
    let nodes = three_node_fleet(&env).await;
    assert_eq!(nodes.len(), 3);
    scale(&env.client, "spread", 1).await;
    wait_settled(&env.client, 1, Duration::from_secs(30)).await;
    env.start_disruption(fast_disruption());
    wait_for("five disruption passes", Duration::from_secs(90), || {
        let text = env.metrics();
        async move { metric(&text, "spot_provisioner_disruption_evaluation_seconds_count") >= 5.0 }
    })
    .await;
    let text = env.metrics();
    assert_eq!(
        metric(&text, "spot_provisioner_disruption_commands_total"),
        0.0,
        "a budget of 0 in its window blocks every command\n{text}"
    );
    assert_eq!(list::<NodeClaim>(&env.client).await.len(), 3);
    Api::<NodePool>::all(env.client.clone())
        .patch(
            "default",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"disruption": {"budgets": [{"nodes": "100%"}]}}})),
        )
        .await
        .unwrap();
    let client = env.client.clone();
    wait_for("the empty nodes to go", Duration::from_secs(60), || {
        let client = client.clone();
        async move {
            let claims: Vec<NodeClaim> = list(&client).await;
            claims.len() == 1 && claims.iter().all(initialized)
        }
    })
    .await;
    wait_settled(&env.client, 1, Duration::from_secs(30)).await;
    let text = env.metrics();
    assert!(
        metric(
            &text,
            r#"spot_provisioner_disruption_commands_total{reason="Empty",result="executed"}"#
        ) >= 1.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn do_not_disrupt_pods_and_pdbs_keep_their_nodes() {
    let mut env = env(pool(json!({"disruption": {"consolidateAfter": "0s"}})), 29).await;
    let nodes = three_node_fleet(&env).await;
    assert_eq!(nodes.len(), 3);
    // Two small pods on two different nodes: one must not be disrupted, one is under a PDB
    // allowing nothing. Either could move next to the other pods but for that.
    let apart = json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"protected": "yes"}}}]}}});
    let mut dnd = deployment("dnd", 1, "100m", "128Mi", apart.clone());
    dnd["spec"]["template"]["metadata"]["annotations"] = json!({"karpenter.sh/do-not-disrupt": "true"});
    dnd["spec"]["template"]["metadata"]["labels"]["protected"] = json!("yes");
    let mut guarded = deployment("guarded", 1, "100m", "128Mi", apart);
    guarded["spec"]["template"]["metadata"]["labels"]["protected"] = json!("yes");
    apply::<Deployment>(&env.client, dnd).await;
    apply::<Deployment>(&env.client, guarded).await;
    apply::<PodDisruptionBudget>(
        &env.client,
        json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
               "metadata": {"name": "guarded", "namespace": "default"},
               "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "guarded"}}}}),
    )
    .await;
    wait_settled(&env.client, 5, Duration::from_secs(30)).await;
    scale(&env.client, "spread", 1).await;
    wait_settled(&env.client, 3, Duration::from_secs(30)).await;
    let pods: Vec<Pod> = list(&env.client).await;
    let on = |app: &str| {
        pods.iter()
            .find(|p| p.labels().get("app").map(String::as_str) == Some(app))
            .and_then(|p| node_of(p).map(str::to_owned))
            .unwrap()
    };
    let (dnd_node, guarded_node) = (on("dnd"), on("guarded"));
    assert_ne!(dnd_node, guarded_node);
    let claims: Vec<NodeClaim> = list(&env.client).await;
    let claim_on = |node: &str| {
        claims
            .iter()
            .find(|c| c.status.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
            .map(|c| c.name_any())
            .unwrap()
    };
    let protected = [claim_on(&dnd_node), claim_on(&guarded_node)];
    let (claim_log, t) = record::<NodeClaim>(&env.client);
    env.tasks.push(t);
    env.start_disruption(fast_disruption());
    wait_for("ten disruption passes", Duration::from_secs(90), || {
        let text = env.metrics();
        async move { metric(&text, "spot_provisioner_disruption_evaluation_seconds_count") >= 10.0 }
    })
    .await;
    let plan = Disruption::new(env.provisioner.clone(), fast_disruption())
        .plan()
        .await
        .unwrap();
    assert!(
        plan.blocked
            .iter()
            .any(|b| b.contains(&dnd_node) && b.contains("do-not-disrupt")),
        "{plan:#?}"
    );
    assert!(
        plan.blocked
            .iter()
            .any(|b| b.contains(&guarded_node) && b.contains("PodDisruptionBudget default/guarded")),
        "{plan:#?}"
    );
    // The protected nodes were never marked nor deleted.
    for s in claim_log.lock().unwrap().iter() {
        if protected.contains(&s.obj.name_any()) {
            assert!(
                !s.deleted && s.obj.metadata.deletion_timestamp.is_none() && Record::of(&s.obj).is_none(),
                "{} was disrupted",
                s.obj.name_any()
            );
        }
    }
    // Without the annotation the node is a candidate again.
    let dnd_pod = list::<Pod>(&env.client)
        .await
        .into_iter()
        .find(|p| p.labels().get("app").map(String::as_str) == Some("dnd"))
        .unwrap();
    Api::<Pod>::namespaced(env.client.clone(), "default")
        .patch(
            &dnd_pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"karpenter.sh/do-not-disrupt": null}}})),
        )
        .await
        .unwrap();
    let plan = Disruption::new(env.provisioner.clone(), fast_disruption())
        .plan()
        .await
        .unwrap();
    assert!(
        !plan.blocked.iter().any(|b| b.contains("do-not-disrupt")),
        "{plan:#?}"
    );
    assert!(
        plan.blocked.iter().any(|b| b.contains(&guarded_node)),
        "{plan:#?}"
    );
}
