//! The end-to-end harness shared by the scenario, constraint and disruption tests:
//! spot-kube-sim (API, scheduler, kubelet, ReplicaSet controller) over HTTP, the simulated
//! cloud registering Nodes, and the real provisioner wired through kube-rs; plus object
//! builders and polling helpers with generous limits (CI runs everything in parallel on
//! two cores: poll, never assert on speed).

// Each test file uses its own subset of the harness.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use spot_k8s::sim::{RunningSim, Sim, SimConfig};
use spot_provisioner::api::{NodeClaim, NodePool, SpotNodeClass};
use spot_provisioner::batcher::BatchWindow;
use spot_provisioner::{InstanceCatalog, Provisioner, Settings};
use spot_sim::cloud::SimClock;
use spot_sim::register::RegistrarConfig;
use spot_sim::{KubeRegistrar, MarketConfig, SimCloud, SimCloudConfig};
use tokio::time::Instant;

/// The zones of the node class `default`.
pub const ZONES: [&str; 3] = ["us-east-1a", "us-east-1b", "us-east-1c"];

/// A running cluster, cloud and provisioner; background tasks stop when it is dropped.
pub struct Env {
    /// The API server (stops when dropped).
    pub running: RunningSim,
    /// A client of it.
    pub client: Client,
    /// The simulated cloud.
    pub cloud: Arc<SimCloud>,
    /// The provisioner (running in `tasks[0]`).
    pub provisioner: Arc<Provisioner>,
    /// Background tasks, aborted on drop.
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Env {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Env {
    /// The provisioner's metrics, encoded.
    pub fn metrics(&self) -> String {
        self.provisioner.metrics().encode()
    }
}

/// Creates `obj` (any kind, namespaced or not) and returns what the server stored.
pub async fn apply<K>(client: &Client, obj: serde_json::Value) -> K
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(obj).expect("object");
    let url = K::url_path(&(), obj.meta().namespace.as_deref());
    let req = http::Request::post(url)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&obj).unwrap())
        .unwrap();
    client.request(req).await.expect("create")
}

/// Provisioner settings with short windows for tests.
pub fn fast_settings() -> Settings {
    Settings {
        batch: BatchWindow {
            idle: Duration::from_millis(200),
            max: Duration::from_secs(2),
        },
        resync: Duration::from_millis(200),
        ..Settings::default()
    }
}

/// A simulated cloud with no interruptions and a manual clock.
pub fn sim_cloud(seed: u64) -> SimCloud {
    SimCloud::offline(
        SimCloudConfig {
            api_latency: Duration::from_millis(20),
            clock: SimClock::Manual,
            ..SimCloudConfig::default()
        },
        MarketConfig {
            seed,
            band_monthly_rates: [0.0; 5],
            ..MarketConfig::default()
        },
    )
    .unwrap()
}

/// spot-kube-sim with its scheduler, kubelet and ReplicaSet controller, the provisioner's
/// CRDs and the node class `default` in `zones`, and a client without kube's retries.
pub async fn cluster(zones: &[&str]) -> (RunningSim, Client) {
    let running = Sim::new(SimConfig {
        kubelet: true,
        scheduler: true,
        replicaset_controller: true,
        ..SimConfig::default()
    })
    .start("127.0.0.1:0".parse().unwrap())
    .await
    .expect("start spot-kube-sim");
    let mut config = kube::Config::new(running.url().parse().unwrap());
    config.default_retry = false;
    let client = Client::try_from(config).unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (_, crd) in spot_provisioner::api::crds() {
        crds.create(&PostParams::default(), &crd).await.expect("CRD");
    }
    let zones: Vec<serde_json::Value> = zones.iter().map(|z| json!({"zone": z})).collect();
    apply::<SpotNodeClass>(
        &client,
        json!({"apiVersion": "spot.dev/v1", "kind": "SpotNodeClass", "metadata": {"name": "default"},
               "spec": {"zones": zones}}),
    )
    .await;
    (running, client)
}

/// A cluster with the CRDs, the node class `default` in [`ZONES`] and one NodePool per
/// `(name, spec)`; `cloud` registers what it launches as Nodes; the provisioner runs with
/// `settings`.
pub async fn start(cloud: SimCloud, nodepools: &[(&str, serde_json::Value)], settings: Settings) -> Env {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SPOT_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
    let (running, client) = cluster(&ZONES).await;
    for (name, spec) in nodepools {
        apply::<NodePool>(
            &client,
            json!({"apiVersion": "karpenter.sh/v1", "kind": "NodePool", "metadata": {"name": name},
                   "spec": spec}),
        )
        .await;
    }
    let cloud = Arc::new(cloud);
    cloud.add_observer(Arc::new(
        KubeRegistrar::new(
            client.clone(),
            RegistrarConfig {
                registration_delay: Duration::from_millis(100),
                ready_delay: Duration::from_millis(100),
                ..RegistrarConfig::default()
            },
        )
        .unwrap(),
    ));
    let catalog = Arc::new(InstanceCatalog::with_prices("us-east-1", cloud.clone()).unwrap());
    let provisioner = Arc::new(
        Provisioner::builder(client.clone(), cloud.clone(), catalog)
            .settings(settings)
            .build()
            .unwrap(),
    );
    let task = tokio::spawn({
        let p = provisioner.clone();
        async move {
            let _ = p.run(std::future::pending()).await;
        }
    });
    Env {
        running,
        client,
        cloud,
        provisioner,
        tasks: vec![task],
    }
}

/// [`start`] with the NodePool `default` and [`fast_settings`].
pub async fn env(nodepool_spec: serde_json::Value, cloud: SimCloud) -> Env {
    start(cloud, &[("default", nodepool_spec)], fast_settings()).await
}

/// The NodePool spec the tests start from (spot or on-demand, amd64, c/m/r of generation
/// 5 and later), with `extra` merged in.
pub fn pool(extra: serde_json::Value) -> serde_json::Value {
    let mut spec = json!({"template": {"spec": {
    "nodeClassRef": {"group": "spot.dev", "kind": "SpotNodeClass", "name": "default"},
    "requirements": [
        {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot", "on-demand"]},
        {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]},
        {"key": "karpenter.k8s.aws/instance-category", "operator": "In", "values": ["c", "m", "r"]},
        {"key": "karpenter.k8s.aws/instance-generation", "operator": "Gt", "values": ["4"]}
    ]}}});
    merge(&mut spec, extra);
    spec
}

/// [`pool`] with nothing added.
pub fn default_pool() -> serde_json::Value {
    pool(json!({}))
}

/// JSON merge: objects merge key by key, anything else replaces.
pub fn merge(base: &mut serde_json::Value, patch: serde_json::Value) {
    match (base, patch) {
        (serde_json::Value::Object(b), serde_json::Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (b, p) => *b = p,
    }
}

/// A Deployment in `default` whose pods (label `app: name`) request `cpu` and `memory`,
/// with `extra` merged into the pod spec.
pub fn deployment(
    name: &str,
    replicas: i32,
    cpu: &str,
    memory: &str,
    extra: serde_json::Value,
) -> serde_json::Value {
    let mut spec = json!({"terminationGracePeriodSeconds": 1, "containers": [{"name": "app", "image": "nginx",
        "resources": {"requests": {"cpu": cpu, "memory": memory}}}]});
    merge(&mut spec, extra);
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
           "metadata": {"name": name, "namespace": "default"},
           "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                    "template": {"metadata": {"labels": {"app": name}}, "spec": spec}}})
}

/// Sets a Deployment's replicas.
pub async fn scale(client: &Client, name: &str, replicas: i32) {
    Api::<Deployment>::namespaced(client.clone(), "default")
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await
        .unwrap();
}

/// Every object of a kind, in every namespace.
pub async fn list<K>(client: &Client) -> Vec<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    Api::<K>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
}

/// Every pod.
pub async fn pods(client: &Client) -> Vec<Pod> {
    list(client).await
}

/// Every NodeClaim.
pub async fn claims(client: &Client) -> Vec<NodeClaim> {
    list(client).await
}

/// The node a pod is bound to.
pub fn node_of(p: &Pod) -> Option<&str> {
    p.spec.as_ref().and_then(|s| s.node_name.as_deref())
}

/// Whether a pod runs and is not being deleted.
pub fn running(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

/// Whether a NodeClaim is initialized.
pub fn initialized(c: &NodeClaim) -> bool {
    c.status.as_ref().is_some_and(|s| s.is_true("Initialized"))
}

/// Waits until `want` pods exist and every one is bound to a node, or panics with the state
/// after `limit`.
pub async fn wait_all_bound(client: &Client, want: usize, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let pods = pods(client).await;
        let bound = pods.iter().filter(|p| node_of(p).is_some()).count();
        if pods.len() == want && bound == want {
            return start.elapsed();
        }
        if start.elapsed() > limit {
            let claims = claims(client).await.len();
            let nodes = list::<Node>(client).await.len();
            panic!(
                "after {limit:?}: {bound}/{} pods bound (want {want}), {claims} NodeClaims, {nodes} nodes",
                pods.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until `check` holds, or panics naming `what` after `limit`.
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until every NodeClaim is Launched, Registered and Initialized with its node (none
/// deleting) and there is one node per claim; returns the claims, or panics after `limit`.
pub async fn wait_claims_initialized(client: &Client, limit: Duration) -> Vec<NodeClaim> {
    let start = Instant::now();
    loop {
        let claims = claims(client).await;
        let nodes = list::<Node>(client).await;
        let pending: Vec<String> = claims
            .iter()
            .filter(|c| {
                c.metadata.deletion_timestamp.is_some()
                    || !["Launched", "Registered", "Initialized"]
                        .iter()
                        .all(|cond| c.status.as_ref().is_some_and(|s| s.is_true(cond)))
            })
            .map(|c| format!("{}: {:?}", c.name_any(), c.status))
            .collect();
        if pending.is_empty() && nodes.len() == claims.len() {
            return claims;
        }
        assert!(
            start.elapsed() < limit,
            "after {limit:?}: {} nodes for {} claims; claims not initialized: {pending:#?}",
            nodes.len(),
            claims.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
