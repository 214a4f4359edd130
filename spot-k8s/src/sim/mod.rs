//! `spot-kube-sim`: an in-process Kubernetes API server simulator for tests and local runs.
//!
//! An axum HTTP server on loopback with an in-memory store (generic over JSON objects, so
//! CustomResourceDefinitions work), enough discovery and OpenAPI for `kubectl` and kube-rs,
//! list/watch with selectors and pagination, the four patch types, `dryRun=All`, optimistic
//! concurrency, pod eviction honouring PodDisruptionBudgets, and optional simulated
//! controllers (kubelet, scheduler, ReplicaSet controller).
//!
//! ```no_run
//! # async fn demo() -> Result<(), spot_k8s::sim::Error> {
//! use spot_k8s::sim::{Sim, SimConfig};
//! let running = Sim::new(SimConfig::default()).start("127.0.0.1:0".parse().unwrap()).await?;
//! running.sim().seed(3, 2)?;
//! running.write_kubeconfig(std::path::Path::new("/tmp/sim.kubeconfig"))?;
//! # Ok(()) }
//! ```

mod api;
mod controllers;
pub mod eviction;
pub mod kubectl;
pub mod patch;
pub mod selector;
pub mod store;
pub mod table;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use serde_json::{Value, json};

pub use kubectl::{Kubectl, require_kubectl};
use store::{ApiError, ResourceType, Store, WriteMode, name_of, namespace_of, uid_of};

/// Errors of the simulator's Rust API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Binding or serving the listener failed.
    #[error("cannot serve on {addr}: {source}")]
    Serve {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Writing the kubeconfig failed.
    #[error("cannot write kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The object has an apiVersion/kind the simulator does not serve.
    #[error("no resource serves apiVersion {api_version:?} kind {kind:?}")]
    UnknownKind {
        /// apiVersion.
        api_version: String,
        /// kind.
        kind: String,
    },
    /// The store refused the object.
    #[error("the simulated API refused the object: {0}")]
    Api(#[from] ApiError),
    /// `kubectl` could not run or failed.
    #[error("kubectl {args}: {message}")]
    Kubectl {
        /// The arguments.
        args: String,
        /// What went wrong (exit status and output).
        message: String,
    },
}

/// Simulator settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    /// Simulated kubelet: pods bound to a node become Running and Ready; deleted pods on a
    /// node terminate after their grace period.
    pub kubelet: bool,
    /// Simulated scheduler: pending pods are bound with spot-core's scheduling simulation
    /// over the existing nodes (resources, node affinity, taints, topology spread, pod
    /// affinity, host ports); pods that fit nowhere get `PodScheduled=False`, reason
    /// `Unschedulable`.
    pub scheduler: bool,
    /// Simulated ReplicaSet controller: keeps `spec.replicas` pods per ReplicaSet.
    pub replicaset_controller: bool,
    /// How many changes the watch history keeps (older resourceVersions get 410 Gone).
    pub history: usize,
    /// How often watches with `allowWatchBookmarks` get a BOOKMARK.
    pub bookmark_interval: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            kubelet: false,
            scheduler: false,
            replicaset_controller: false,
            history: 10_000,
            bookmark_interval: Duration::from_secs(1),
        }
    }
}

/// State shared by handlers and controllers.
#[derive(Debug)]
pub(crate) struct Shared {
    store: Mutex<Store>,
    config: SimConfig,
    addr: OnceLock<SocketAddr>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn server_address(&self) -> String {
        self.addr
            .get()
            .map_or_else(|| "127.0.0.1:0".to_owned(), ToString::to_string)
    }

    /// Creates an object, registering CRDs and marking them established.
    fn create(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        obj: Value,
        dry: bool,
    ) -> Result<Arc<Value>, ApiError> {
        let mut store = self.lock();
        let created = store.create(rt, ns, obj, dry)?;
        if rt.kind == "CustomResourceDefinition" && !dry {
            store.register_crd(&created);
            let mut next = (*created).clone();
            next["status"] = json!({
                "acceptedNames": created.pointer("/spec/names").cloned().unwrap_or_default(),
                "storedVersions": created.pointer("/spec/versions").and_then(Value::as_array)
                    .map(|vs| vs.iter().filter_map(|v| v.get("name").cloned()).collect::<Vec<_>>()).unwrap_or_default(),
                "conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": store::now_timestamp()},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": store::now_timestamp()},
                ],
            });
            return store.update(rt, "", name_of(&created), next, WriteMode::Internal, false);
        }
        Ok(created)
    }

    /// Deletes an object; pods on a node terminate after their grace period when the kubelet
    /// simulation is on. Returns the object's state and whether it is gone.
    fn delete(
        self: &Arc<Self>,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        grace: Option<i64>,
        dry: bool,
    ) -> Result<(Arc<Value>, bool), ApiError> {
        let mut store = self.lock();
        self.delete_locked(&mut store, rt, ns, name, grace, dry)
    }

    /// [`Shared::delete`] under a lock the caller holds (an eviction checks the budgets and
    /// deletes the pod in one critical section, so concurrent evictions never both pass).
    fn delete_locked(
        self: &Arc<Self>,
        store: &mut Store,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        grace: Option<i64>,
        dry: bool,
    ) -> Result<(Arc<Value>, bool), ApiError> {
        let current = store.get(rt, ns, name)?;
        let graceful = self.config.kubelet
            && rt.kind == "Pod"
            && current
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty());
        let (obj, gone) = store.delete(rt, ns, name, grace, graceful, dry)?;
        if gone && !dry {
            match rt.kind.as_str() {
                "CustomResourceDefinition" => store.unregister_crd(&obj),
                "Namespace" => {
                    let types: Vec<_> = store.types().iter().filter(|t| t.namespaced).cloned().collect();
                    for t in types {
                        for o in store.all(&t, Some(name)) {
                            store.remove(&t, name, name_of(&o));
                        }
                    }
                }
                _ => {}
            }
        }
        let secs = obj
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if !gone && !dry && graceful && secs > 0 {
            self.terminate_later(rt, &obj, Duration::from_secs(secs as u64));
        }
        Ok((obj, gone))
    }

    /// The simulated kubelet finishes a pod's termination after its grace period.
    fn terminate_later(self: &Arc<Self>, rt: &ResourceType, pod: &Value, after: Duration) {
        let shared = Arc::clone(self);
        let rt = rt.clone();
        let (ns, name, uid) = (
            namespace_of(pod).to_owned(),
            name_of(pod).to_owned(),
            uid_of(pod).to_owned(),
        );
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let mut store = shared.lock();
            if let Ok(cur) = store.get(&rt, &ns, &name)
                && uid_of(&cur) == uid
                && cur.pointer("/metadata/deletionTimestamp").is_some()
            {
                let finalizers = cur
                    .pointer("/metadata/finalizers")
                    .and_then(Value::as_array)
                    .is_some_and(|f| !f.is_empty());
                if finalizers {
                    // The containers are gone; the API object waits for its finalizers.
                    let mut next = (*cur).clone();
                    next["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                    let _ = store.update(&rt, &ns, &name, next, WriteMode::Internal, false);
                } else {
                    store.remove(&rt, &ns, &name);
                }
            }
        });
    }

    /// Binds a pod to a node (the `binding` subresource).
    fn bind(&self, ns: &str, name: &str, node: &str) -> Result<Arc<Value>, ApiError> {
        let mut store = self.lock();
        let rt = store
            .find("", "pods")
            .ok_or_else(|| ApiError::new(500, "InternalError", "pods are not served"))?;
        let pod = store.get(&rt, ns, name)?;
        if let Some(bound) = pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        {
            return Err(ApiError::conflict(
                &rt,
                name,
                &format!("pod {name} is already assigned to node \"{bound}\""),
            ));
        }
        let mut next = (*pod).clone();
        next["spec"]["nodeName"] = json!(node);
        let conds = next["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut conds: Vec<Value> = conds
            .into_iter()
            .filter(|c| c["type"] != "PodScheduled")
            .collect();
        conds.push(
            json!({"type": "PodScheduled", "status": "True", "lastTransitionTime": store::now_timestamp()}),
        );
        next["status"]["conditions"] = json!(conds);
        if next["status"]["phase"].is_null() {
            next["status"]["phase"] = json!("Pending");
        }
        store.update(&rt, ns, name, next, WriteMode::Internal, false)
    }
}

/// A simulator: the shared store and settings. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Sim {
    shared: Arc<Shared>,
}

/// A simulator serving HTTP. Dropping it stops the server.
#[derive(Debug)]
pub struct RunningSim {
    sim: Sim,
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
    controllers: Option<tokio::task::JoinHandle<()>>,
}

impl Sim {
    /// A simulator with the built-in types and the namespaces `default`, `kube-system`,
    /// `kube-public` and `kube-node-lease`.
    pub fn new(config: SimConfig) -> Self {
        let store = Store::new(config.history);
        Sim {
            shared: Arc::new(Shared {
                store: Mutex::new(store),
                config,
                addr: OnceLock::new(),
            }),
        }
    }

    /// The settings.
    pub fn config(&self) -> &SimConfig {
        &self.shared.config
    }

    /// The axum router serving the Kubernetes API (to mount or serve yourself; controllers
    /// only run with [`Sim::start`]).
    pub fn router(&self) -> axum::Router {
        axum::Router::new()
            .fallback(api::handle)
            .with_state(self.shared.clone())
    }

    /// Binds `addr` (use port 0 for any free port), serves the API and starts the simulated
    /// controllers that are enabled.
    pub async fn start(&self, addr: SocketAddr) -> Result<RunningSim, Error> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Serve { addr, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| Error::Serve { addr, source })?;
        let _ = self.shared.addr.set(bound);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let router = self.router();
        let server = tokio::spawn(async move {
            let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
                let _ = rx.await;
            });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "spot-kube-sim server failed");
            }
        });
        let c = &self.shared.config;
        let controllers = (c.kubelet || c.scheduler || c.replicaset_controller)
            .then(|| tokio::spawn(controllers::run(self.shared.clone())));
        Ok(RunningSim {
            sim: self.clone(),
            addr: bound,
            shutdown: Some(tx),
            server,
            controllers,
        })
    }

    /// Stores an object as the API would on create (apiVersion/kind pick the resource).
    pub fn insert(&self, obj: Value) -> Result<Value, Error> {
        let rt = self.resource_of(&obj)?;
        let ns = namespace_of(&obj).to_owned();
        let ns = (!ns.is_empty()).then_some(ns);
        Ok((*self.shared.create(&rt, ns.as_deref(), obj, false)?).clone())
    }

    /// Reads an object.
    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let store = self.shared.lock();
        let rt = store.by_kind(api_version, kind)?;
        store.get(&rt, namespace, name).ok().map(|o| (*o).clone())
    }

    /// Replaces an object entirely (status included), bypassing optimistic concurrency.
    pub fn put(&self, mut obj: Value) -> Result<Value, Error> {
        let rt = self.resource_of(&obj)?;
        if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        let (ns, name) = (namespace_of(&obj).to_owned(), name_of(&obj).to_owned());
        Ok((*self
            .shared
            .lock()
            .update(&rt, &ns, &name, obj, WriteMode::Internal, false)?)
        .clone())
    }

    /// Deletes an object as a DELETE request without options would (finalizers and, with the
    /// kubelet simulation, pod grace periods are honoured). Returns its state.
    pub fn delete(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Result<Value, Error> {
        let rt = self.resource_of(&json!({"apiVersion": api_version, "kind": kind}))?;
        Ok((*self.shared.delete(&rt, namespace, name, None, false)?.0).clone())
    }

    /// Lists the objects of a kind (in one namespace, or all).
    pub fn list(&self, api_version: &str, kind: &str, namespace: Option<&str>) -> Vec<Value> {
        let store = self.shared.lock();
        let Some(rt) = store.by_kind(api_version, kind) else {
            return Vec::new();
        };
        store
            .all(&rt, namespace)
            .into_iter()
            .map(|o| (*o).clone())
            .collect()
    }

    /// How many objects of a kind are stored.
    pub fn count(&self, api_version: &str, kind: &str) -> usize {
        let store = self.shared.lock();
        store.by_kind(api_version, kind).map_or(0, |rt| store.count(&rt))
    }

    fn resource_of(&self, obj: &Value) -> Result<Arc<ResourceType>, Error> {
        let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
        self.shared
            .lock()
            .by_kind(api_version, kind)
            .ok_or_else(|| Error::UnknownKind {
                api_version: api_version.into(),
                kind: kind.into(),
            })
    }

    /// Seeds `nodes` Ready nodes `sim-node-0..` and, on each, `pods_per_node` Running pods
    /// owned by one ReplicaSet `sim-app` in `default`.
    pub fn seed(&self, nodes: usize, pods_per_node: usize) -> Result<(), Error> {
        const ZONES: [&str; 3] = ["us-east-1a", "us-east-1b", "us-east-1c"];
        let node_type = self.resource_of(&json!({"apiVersion": "v1", "kind": "Node"}))?;
        let pod_type = self.resource_of(&json!({"apiVersion": "v1", "kind": "Pod"}))?;
        let rs_type = self.resource_of(&json!({"apiVersion": "apps/v1", "kind": "ReplicaSet"}))?;
        // One lock for the whole seed: the controllers see the finished cluster, never a
        // ReplicaSet whose pods are not there yet (they would create their own).
        let mut store = self.shared.lock();
        for i in 0..nodes {
            let node = sim_node(
                &format!("sim-node-{i}"),
                ZONES[i % ZONES.len()],
                "m5.xlarge",
                "4",
                "16Gi",
            );
            store.create(&node_type, None, node, false)?;
        }
        if nodes == 0 || pods_per_node == 0 {
            return Ok(());
        }
        let total = nodes * pods_per_node;
        let rs = store.create(&rs_type, Some("default"), json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": "sim-app", "namespace": "default", "labels": {"app": "sim-app"}},
            "spec": {"replicas": total, "selector": {"matchLabels": {"app": "sim-app"}}, "template": pod_template("sim-app")},
        }), false)?;
        let uid = uid_of(&rs).to_owned();
        for n in 0..nodes {
            for p in 0..pods_per_node {
                let mut pod = pod_from_template(&rs, &format!("sim-app-{n}-{p}"));
                pod["metadata"]["ownerReferences"] = owner_ref("ReplicaSet", "sim-app", &uid);
                pod["spec"]["nodeName"] = json!(format!("sim-node-{n}"));
                pod["status"] = running_status(&format!("10.{}.{}.{}", (n >> 8) & 255, n & 255, p % 250 + 2));
                store.create(&pod_type, Some("default"), pod, false)?;
            }
        }
        let mut rs = (*rs).clone();
        if let Some(m) = rs.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        rs["status"] = json!({"replicas": total, "readyReplicas": total, "availableReplicas": total, "fullyLabeledReplicas": total, "observedGeneration": 1});
        store.update(&rs_type, "default", "sim-app", rs, WriteMode::Internal, false)?;
        Ok(())
    }

    /// A kubeconfig for a simulator at `addr`: plain http, a token user, namespace `default`.
    pub fn kubeconfig(addr: SocketAddr) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: spot-kube-sim\n  cluster:\n    server: http://{addr}\n\
             users:\n- name: spot-kube-sim\n  user:\n    token: spot-kube-sim-token\n\
             contexts:\n- name: spot-kube-sim\n  context:\n    cluster: spot-kube-sim\n    user: spot-kube-sim\n    namespace: default\n\
             current-context: spot-kube-sim\npreferences: {{}}\n"
        )
    }
}

impl RunningSim {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The simulator (store access).
    pub fn sim(&self) -> &Sim {
        &self.sim
    }

    /// Writes a kubeconfig pointing at this server.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<(), Error> {
        std::fs::write(path, Sim::kubeconfig(self.addr)).map_err(|source| Error::Kubeconfig {
            path: path.display().to_string(),
            source,
        })
    }

    /// Stops serving and waits for the server task (open watches end).
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(c) = self.controllers.take() {
            c.abort();
        }
        self.server.abort();
        let _ = (&mut self.server).await;
    }
}

impl Drop for RunningSim {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(c) = self.controllers.take() {
            c.abort();
        }
        self.server.abort();
    }
}

/// A Ready node with capacity and the well-known labels.
pub fn sim_node(name: &str, zone: &str, instance_type: &str, cpu: &str, memory: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
            "topology.kubernetes.io/zone": zone, "topology.kubernetes.io/region": zone.trim_end_matches(char::is_alphabetic),
            "node.kubernetes.io/instance-type": instance_type, "karpenter.sh/capacity-type": "spot",
        }},
        "spec": {"providerID": format!("aws:///{zone}/i-{:017x}", name.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b))))},
        "status": {
            "capacity": {"cpu": cpu, "memory": memory, "pods": "110"},
            "allocatable": {"cpu": cpu, "memory": memory, "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status", "lastHeartbeatTime": store::now_timestamp(), "lastTransitionTime": store::now_timestamp()}],
            "nodeInfo": {"kubeletVersion": format!("v{}.{}.0", api::SERVER_VERSION.0, api::SERVER_VERSION.1), "architecture": "amd64", "operatingSystem": "linux", "containerRuntimeVersion": "containerd://2.0.0"},
            "addresses": [{"type": "InternalIP", "address": format!("10.0.{}.{}", name.len() % 250, name.bytes().map(u32::from).sum::<u32>() % 250 + 2)}, {"type": "Hostname", "address": name}],
        },
    })
}

fn pod_template(app: &str) -> Value {
    json!({
        "metadata": {"labels": {"app": app}},
        "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10", "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}], "terminationGracePeriodSeconds": 30},
    })
}

/// A pod built from a controller's `spec.template`.
pub(crate) fn pod_from_template(controller: &Value, name: &str) -> Value {
    let template = controller.pointer("/spec/template").cloned().unwrap_or_default();
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": template.get("metadata").cloned().unwrap_or(json!({})), "spec": template.get("spec").cloned().unwrap_or(json!({}))});
    pod["metadata"]["name"] = json!(name);
    pod["metadata"]["namespace"] = json!(namespace_of(controller));
    pod
}

/// A controller ownerReferences list.
pub(crate) fn owner_ref(kind: &str, name: &str, uid: &str) -> Value {
    json!([{"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": uid, "controller": true, "blockOwnerDeletion": true}])
}

/// The status of a Running, Ready pod.
pub(crate) fn running_status(ip: &str) -> Value {
    let now = store::now_timestamp();
    json!({
        "phase": "Running", "podIP": ip, "hostIP": "10.0.0.1", "startTime": now, "qosClass": "Burstable",
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
            {"type": "Ready", "status": "True", "lastTransitionTime": now},
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_builds_nodes_and_owned_running_pods() {
        let sim = Sim::new(SimConfig::default());
        sim.seed(3, 2).unwrap();
        assert_eq!(sim.count("v1", "Node"), 3);
        let pods = sim.list("v1", "Pod", Some("default"));
        assert_eq!(pods.len(), 6);
        assert!(pods.iter().all(eviction::pod_healthy));
        let node = sim.get("v1", "Node", "", "sim-node-1").unwrap();
        assert_eq!(
            node["metadata"]["labels"]["topology.kubernetes.io/zone"],
            "us-east-1b"
        );
        assert_eq!(
            node["metadata"]["labels"]["topology.kubernetes.io/region"],
            "us-east-1"
        );
        assert!(matches!(
            sim.insert(json!({"apiVersion": "x/v1", "kind": "Nope"})),
            Err(Error::UnknownKind { .. })
        ));
        let kc = Sim::kubeconfig("127.0.0.1:8080".parse().unwrap());
        let parsed: Value = serde_yaml::from_str(&kc).unwrap();
        assert_eq!(
            parsed["clusters"][0]["cluster"]["server"],
            "http://127.0.0.1:8080"
        );
        assert_eq!(parsed["current-context"], "spot-kube-sim");
    }
}
