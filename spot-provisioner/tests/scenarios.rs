//! Provisioning scenarios end to end: spot-kube-sim (API, scheduler, kubelet, ReplicaSet
//! controller) over HTTP, the simulated cloud registering Nodes, and the real provisioner
//! wired through kube-rs.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use spot_core::instance_type::CapacityType;
use spot_k8s::sim::{RunningSim, Sim, SimConfig};
use spot_provisioner::api::{NodeClaim, NodePool, SpotNodeClass};
use spot_provisioner::batcher::BatchWindow;
use spot_provisioner::{InstanceCatalog, Provisioner, Settings};
use spot_sim::cloud::SimClock;
use spot_sim::register::RegistrarConfig;
use spot_sim::{KubeRegistrar, MarketConfig, SimCloud, SimCloudConfig};

struct Env {
    _running: RunningSim,
    client: Client,
    cloud: Arc<SimCloud>,
    provisioner: Arc<Provisioner>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn apply<K>(client: &Client, obj: serde_json::Value)
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
    let _: K = client.request(req).await.expect("create");
}

/// A cluster with the CRDs, a node class in three zones and the given NodePool spec.
async fn env(nodepool_spec: serde_json::Value, cloud: SimCloud) -> Env {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SPOT_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
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
    apply::<SpotNodeClass>(
        &client,
        json!({"apiVersion": "spot.dev/v1", "kind": "SpotNodeClass", "metadata": {"name": "default"},
               "spec": {"zones": [{"zone": "us-east-1a"}, {"zone": "us-east-1b"}, {"zone": "us-east-1c"}]}}),
    )
    .await;
    apply::<NodePool>(
        &client,
        json!({"apiVersion": "karpenter.sh/v1", "kind": "NodePool", "metadata": {"name": "default"},
               "spec": nodepool_spec}),
    )
    .await;
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
            .settings(Settings {
                batch: BatchWindow {
                    idle: Duration::from_millis(200),
                    max: Duration::from_secs(2),
                },
                resync: Duration::from_millis(200),
                ..Settings::default()
            })
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
        _running: running,
        client,
        cloud,
        provisioner,
        task,
    }
}

fn sim_cloud(seed: u64) -> SimCloud {
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

fn default_pool() -> serde_json::Value {
    json!({"template": {"spec": {
    "nodeClassRef": {"group": "spot.dev", "kind": "SpotNodeClass", "name": "default"},
    "requirements": [
        {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot", "on-demand"]},
        {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]},
        {"key": "karpenter.k8s.aws/instance-category", "operator": "In", "values": ["c", "m", "r"]},
        {"key": "karpenter.k8s.aws/instance-generation", "operator": "Gt", "values": ["4"]}
    ]}}})
}

fn deployment(
    name: &str,
    replicas: i32,
    cpu: &str,
    memory: &str,
    extra: serde_json::Value,
) -> serde_json::Value {
    let mut spec = json!({"containers": [{"name": "app", "image": "nginx",
        "resources": {"requests": {"cpu": cpu, "memory": memory}}}]});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
           "metadata": {"name": name, "namespace": "default"},
           "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                    "template": {"metadata": {"labels": {"app": name}}, "spec": spec}}})
}

async fn pods(client: &Client) -> Vec<Pod> {
    Api::<Pod>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
}

/// Waits until `want` pods exist and every one is bound to a node, or panics with the state.
async fn wait_all_bound(client: &Client, want: usize, limit: Duration) -> Duration {
    let start = tokio::time::Instant::now();
    loop {
        let pods = pods(client).await;
        let bound = pods
            .iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
            .count();
        if pods.len() == want && bound == want {
            return start.elapsed();
        }
        if start.elapsed() > limit {
            let claims = Api::<NodeClaim>::all(client.clone())
                .list(&ListParams::default())
                .await
                .map(|l| l.items.len())
                .unwrap_or(0);
            let nodes = Api::<Node>::all(client.clone())
                .list(&ListParams::default())
                .await
                .map(|l| l.items.len())
                .unwrap_or(0);
            panic!(
                "after {limit:?}: {bound}/{} pods bound (want {want}), {claims} NodeClaims, {nodes} nodes",
                pods.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn claims(client: &Client) -> Vec<NodeClaim> {
    Api::<NodeClaim>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_scaled_from_zero_to_500_gets_nodes_and_every_pod_is_bound() {
    let env = env(default_pool(), sim_cloud(7)).await;
    apply::<Deployment>(&env.client, deployment("web", 0, "500m", "1Gi", json!({}))).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        claims(&env.client).await.is_empty(),
        "nothing to provision at 0 replicas"
    );
    Api::<Deployment>::namespaced(env.client.clone(), "default")
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 500}})),
        )
        .await
        .unwrap();
    let took = wait_all_bound(&env.client, 500, Duration::from_secs(90)).await;
    // The lifecycle catches up with the scheduler: every claim ends Launched, Registered
    // and Initialized.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let claims = loop {
        let claims = claims(&env.client).await;
        let pending: Vec<String> = claims
            .iter()
            .filter(|c| {
                !["Launched", "Registered", "Initialized"]
                    .iter()
                    .all(|cond| c.status.as_ref().is_some_and(|s| s.is_true(cond)))
            })
            .map(|c| {
                format!(
                    "{}: {:?}",
                    c.metadata.name.as_deref().unwrap_or_default(),
                    c.status
                )
            })
            .collect();
        if pending.is_empty() {
            break claims;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "claims not initialized: {pending:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let nodes = Api::<Node>::all(env.client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert_eq!(nodes.len(), claims.len(), "one node per NodeClaim");
    // 500 × (0.5 CPU, 1 GiB) = 250 vCPU requested; allocatable overhead and the packing
    // keep the fleet within a few percent of that.
    let vcpus: u32 = env
        .cloud
        .instances()
        .iter()
        .filter(|i| i.instance.state == "running" || i.instance.state == "pending")
        .map(|i| {
            spot_core::Catalog::embedded()
                .get(&i.instance.instance_type)
                .map(|t| t.vcpus)
                .unwrap_or(0)
        })
        .sum();
    let cost = env.cloud.running_cost_per_hour();
    println!(
        "500 pods bound in {took:?} on {} nodes, {vcpus} vCPU, ${cost:.3}/h",
        nodes.len()
    );
    assert!((250..=300).contains(&vcpus), "{vcpus} vCPU for 250 requested");
    assert!(cost > 0.0);
    let metrics = env.provisioner.metrics().encode();
    assert!(
        metrics.contains("spot_provisioner_nodeclaims_launched_total"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spot_capacity_errors_fall_back_to_on_demand_within_one_loop() {
    let cloud = sim_cloud(11);
    // Every spot pool of every type this pool may use is out of capacity.
    for t in spot_core::Catalog::embedded().types() {
        for z in ["us-east-1a", "us-east-1b", "us-east-1c"] {
            cloud.inject(
                &t.name,
                z,
                CapacityType::Spot,
                "InsufficientInstanceCapacity",
                1000,
            );
        }
    }
    let env = env(default_pool(), cloud).await;
    apply::<Deployment>(&env.client, deployment("api", 3, "1", "2Gi", json!({}))).await;
    wait_all_bound(&env.client, 3, Duration::from_secs(60)).await;
    // The launch records its outcome on the claim right after the instance exists; under
    // load that can trail the pods being bound by a moment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let claims = loop {
        let claims = claims(&env.client).await;
        let labelled = claims.iter().all(|c| {
            c.metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key("karpenter.sh/capacity-type"))
        });
        if labelled || tokio::time::Instant::now() > deadline {
            break claims;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        claims.len(),
        1,
        "one NodeClaim: the fallback happened in the same loop"
    );
    let labels = claims[0].metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("karpenter.sh/capacity-type").map(String::as_str),
        Some("on-demand")
    );
    let metrics = env.provisioner.metrics().encode();
    assert!(
        metrics.contains(
            r#"spot_provisioner_nodeclaims_launched_total{nodepool="default",reason="on-demand"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        !metrics.contains("spot_provisioner_nodeclaims_failed_total{"),
        "{metrics}"
    );
}
