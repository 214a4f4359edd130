//! Node registration: [`KubeRegistrar`] makes the instances a [`crate::SimCloud`] launches
//! into Nodes of a Kubernetes API (spot-kube-sim in practice) through kube-rs, as the kubelet
//! and the cloud node lifecycle controller would.
//!
//! For each launched instance, after [`RegistrarConfig::registration_delay`] it creates the
//! Node:
//!
//! - name and `kubernetes.io/hostname`: the private DNS name;
//! - labels: [`spot_core::labels::instance_type_labels`] (type, zone, region, capacity type,
//!   arch, os, `karpenter.k8s.aws/instance-*`), then the labels the launch passed (NodePool,
//!   NodeClaim labels), then the hostname;
//! - `spec.providerID` `aws:///<zone>/<instance-id>`, and the taints the launch passed
//!   (taints and startup taints);
//! - `status.capacity` and `status.allocatable` from the [`AllocatableModel`];
//! - addresses (InternalIP, InternalDNS, Hostname), node info, and the kubelet's conditions
//!   with `Ready=False` (`KubeletNotReady`);
//!
//! then after [`RegistrarConfig::ready_delay`] it sets `Ready=True` through the `status`
//! subresource. When the instance is terminated it deletes the Node (a pending registration
//! is cancelled), as the cloud node lifecycle controller does.
//!
//! Delays are `tokio::time` durations. Registration runs in tasks, so a launch is not held
//! up; failures are logged and kept ([`KubeRegistrar::failures`]), since a kubelet that fails
//! to join does not undo the launch.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo, Taint as KubeTaint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use spot_core::allocatable::AllocatableModel;
use spot_core::clock::{Clock, TokioClock};
use spot_core::cloud::Instance;
use spot_core::instance_type::{Architecture, InstanceType};
use spot_core::labels;
use spot_core::node::Taint;
use time::OffsetDateTime;
use tokio::task::JoinHandle;

use crate::cloud::{InstanceObserver, TAG_NODECLAIM};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The instance type has no labels for a node (no Kubernetes architecture, bad zone).
    #[error("instance {instance_id}: {source}")]
    Labels {
        /// The instance.
        instance_id: String,
        /// Why.
        #[source]
        source: labels::Error,
    },
    /// The allocatable model's options are invalid.
    #[error("registrar allocatable model: {0}")]
    Allocatable(#[from] spot_core::allocatable::Error),
    /// A Kubernetes API call failed.
    #[error("{operation} node {node}: {source}")]
    Kube {
        /// `create`, `patch status of`, `delete`.
        operation: &'static str,
        /// The node.
        node: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// Finding the node of an instance by provider id failed.
    #[error("finding the node of instance {instance_id}: {source}")]
    Lookup {
        /// The instance.
        instance_id: String,
        /// The lookup's error.
        #[source]
        source: spot_k8s::nodes::Error,
    },
}

/// Settings of [`KubeRegistrar`].
#[derive(Clone)]
pub struct RegistrarConfig {
    /// From launch to the Node object (boot and kubelet start; default 30 s).
    pub registration_delay: Duration,
    /// From the Node object to `Ready=True` (CNI start; default 10 s).
    pub ready_delay: Duration,
    /// Capacity and allocatable (default: Karpenter's AWS model).
    pub allocatable: AllocatableModel,
    /// `status.nodeInfo.kubeletVersion` (default `v1.33.0`).
    pub kubelet_version: String,
    /// The clock of condition timestamps (default [`TokioClock`]; pass the
    /// [`crate::SimCloud`] to stamp virtual time).
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for RegistrarConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistrarConfig")
            .field("registration_delay", &self.registration_delay)
            .field("ready_delay", &self.ready_delay)
            .field("allocatable", &self.allocatable)
            .field("kubelet_version", &self.kubelet_version)
            .finish_non_exhaustive()
    }
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        RegistrarConfig {
            registration_delay: Duration::from_secs(30),
            ready_delay: Duration::from_secs(10),
            allocatable: AllocatableModel::default(),
            kubelet_version: "v1.33.0".to_owned(),
            clock: Arc::new(TokioClock::new()),
        }
    }
}

#[derive(Default)]
struct Inner {
    /// Registrations in progress, by instance id.
    tasks: Mutex<HashMap<String, JoinHandle<()>>>,
    /// Node names, by instance id.
    nodes: Mutex<HashMap<String, String>>,
    failures: Mutex<Vec<String>>,
}

/// Registers launched instances as Nodes; see the [module documentation](self). Cheap to
/// clone (clones share their state).
#[derive(Clone)]
pub struct KubeRegistrar {
    client: kube::Client,
    config: Arc<RegistrarConfig>,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for KubeRegistrar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeRegistrar")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn kube_time(t: OffsetDateTime) -> Time {
    Time(
        k8s_openapi::jiff::Timestamp::from_nanosecond(t.unix_timestamp_nanos())
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

/// The kubelet's node conditions, `Ready` as given, the pressure conditions false.
fn conditions(ready: bool, now: OffsetDateTime) -> Vec<NodeCondition> {
    let at = kube_time(now);
    let condition = |type_: &str, status: bool, reason: &str, message: &str| NodeCondition {
        type_: type_.to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        last_heartbeat_time: Some(at.clone()),
        last_transition_time: Some(at.clone()),
    };
    vec![
        condition(
            "MemoryPressure",
            false,
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
        ),
        condition(
            "DiskPressure",
            false,
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure",
        ),
        condition(
            "PIDPressure",
            false,
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available",
        ),
        if ready {
            condition("Ready", true, "KubeletReady", "kubelet is posting ready status")
        } else {
            condition(
                "Ready",
                false,
                "KubeletNotReady",
                "container runtime network not ready: NetworkReady=false",
            )
        },
    ]
}

/// `10.1.2.3` from `ip-10-1-2-3.ec2.internal`, when the name has that shape.
fn ip_of(dns: &str) -> Option<String> {
    let host = dns.split('.').next()?.strip_prefix("ip-")?;
    let parts: Vec<&str> = host.split('-').collect();
    (parts.len() == 4 && parts.iter().all(|p| p.parse::<u8>().is_ok())).then(|| parts.join("."))
}

impl KubeRegistrar {
    /// A registrar writing through `client`.
    pub fn new(client: kube::Client, config: RegistrarConfig) -> Result<KubeRegistrar, Error> {
        config.allocatable.validate()?;
        Ok(KubeRegistrar {
            client,
            config: Arc::new(config),
            inner: Arc::new(Inner::default()),
        })
    }

    /// The settings.
    pub fn config(&self) -> &RegistrarConfig {
        &self.config
    }

    /// The Node object of an instance, not Ready yet (see the [module documentation](self)).
    pub fn node_object(
        &self,
        instance: &Instance,
        instance_type: &InstanceType,
        extra_labels: &BTreeMap<String, String>,
        taints: &[Taint],
    ) -> Result<Node, Error> {
        let name = instance.private_dns_name.clone();
        let mut node_labels =
            labels::instance_type_labels(instance_type, &instance.zone, instance.capacity_type).map_err(
                |source| Error::Labels {
                    instance_id: instance.id.clone(),
                    source,
                },
            )?;
        node_labels.extend(extra_labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        node_labels.insert(labels::HOSTNAME.to_owned(), name.clone());
        let quantities = |map: BTreeMap<String, String>| -> BTreeMap<String, Quantity> {
            map.into_iter().map(|(k, v)| (k, Quantity(v))).collect()
        };
        let model = &self.config.allocatable;
        let arch = instance_type
            .architectures
            .iter()
            .find_map(|a| Architecture::as_kubernetes(*a))
            .unwrap_or("amd64");
        let mut addresses = Vec::new();
        if let Some(ip) = ip_of(&name) {
            addresses.push(NodeAddress {
                type_: "InternalIP".to_owned(),
                address: ip,
            });
        }
        for type_ in ["InternalDNS", "Hostname"] {
            addresses.push(NodeAddress {
                type_: type_.to_owned(),
                address: name.clone(),
            });
        }
        let kube_taints: Vec<KubeTaint> = taints
            .iter()
            .map(|t| KubeTaint {
                key: t.key.clone(),
                value: t.value.clone(),
                effect: t.effect.as_str().to_owned(),
                time_added: None,
            })
            .collect();
        Ok(Node {
            metadata: ObjectMeta {
                name: Some(name),
                labels: Some(node_labels),
                annotations: Some(BTreeMap::from([
                    ("node.alpha.kubernetes.io/ttl".to_owned(), "0".to_owned()),
                    (
                        "volumes.kubernetes.io/controller-managed-attach-detach".to_owned(),
                        "true".to_owned(),
                    ),
                ])),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                provider_id: Some(instance.provider_id()),
                taints: (!kube_taints.is_empty()).then_some(kube_taints),
                ..NodeSpec::default()
            }),
            status: Some(NodeStatus {
                capacity: Some(quantities(model.capacity_resources(instance_type).to_map())),
                allocatable: Some(quantities(model.allocatable_resources(instance_type).to_map())),
                conditions: Some(conditions(false, self.config.clock.now())),
                addresses: Some(addresses),
                node_info: Some(NodeSystemInfo {
                    architecture: arch.to_owned(),
                    operating_system: labels::OS_LINUX.to_owned(),
                    kubelet_version: self.config.kubelet_version.clone(),
                    container_runtime_version: "containerd://2.0.0".to_owned(),
                    os_image: "Amazon Linux 2023 (spot-sim)".to_owned(),
                    kernel_version: "6.12.0-spot-sim".to_owned(),
                    machine_id: instance.id.clone(),
                    system_uuid: instance.id.clone(),
                    boot_id: instance.id.clone(),
                    ..NodeSystemInfo::default()
                }),
                ..NodeStatus::default()
            }),
        })
    }

    /// Registers an instance now: waits the registration delay, creates the Node, waits the
    /// ready delay and sets it Ready. [`InstanceObserver::launched`] runs this in a task.
    pub async fn register(
        &self,
        instance: &Instance,
        instance_type: &InstanceType,
        extra_labels: &BTreeMap<String, String>,
        taints: &[Taint],
    ) -> Result<(), Error> {
        let name = instance.private_dns_name.clone();
        lock(&self.inner.nodes).insert(instance.id.clone(), name.clone());
        tokio::time::sleep(self.config.registration_delay).await;
        // The kubelet registers with the taints its user data names, and Karpenter renders
        // the user data from the NodeClaim: take the claim's taints and startup taints, so no
        // pod can land on the Node before a controller syncs them.
        let mut taints = taints.to_vec();
        for t in self.claim_taints(instance).await {
            if !taints.iter().any(|have| have.same_slot(&t)) {
                taints.push(t);
            }
        }
        let node = self.node_object(instance, instance_type, extra_labels, &taints)?;
        let api: Api<Node> = Api::all(self.client.clone());
        api.create(&PostParams::default(), &node)
            .await
            .map_err(|source| Error::Kube {
                operation: "create",
                node: name.clone(),
                source,
            })?;
        tokio::time::sleep(self.config.ready_delay).await;
        self.set_ready(&name).await
    }

    /// The taints and startup taints of the NodeClaim the instance's [`TAG_NODECLAIM`] tag
    /// names (`karpenter.sh/v1`), or none when there is no such tag, claim or CRD.
    async fn claim_taints(&self, instance: &Instance) -> Vec<Taint> {
        let Some(claim) = instance.tags.get(TAG_NODECLAIM) else {
            return Vec::new();
        };
        let resource = kube::api::ApiResource {
            group: "karpenter.sh".into(),
            version: "v1".into(),
            api_version: "karpenter.sh/v1".into(),
            kind: "NodeClaim".into(),
            plural: "nodeclaims".into(),
        };
        let api: Api<kube::api::DynamicObject> = Api::all_with(self.client.clone(), &resource);
        let Ok(Some(claim)) = api.get_opt(claim).await else {
            return Vec::new();
        };
        ["taints", "startupTaints"]
            .iter()
            .filter_map(|field| claim.data.pointer(&format!("/spec/{field}")))
            .filter_map(|list| serde_json::from_value::<Vec<Taint>>(list.clone()).ok())
            .flatten()
            .collect()
    }

    /// Sets a Node's conditions to the kubelet's Ready ones.
    pub async fn set_ready(&self, node: &str) -> Result<(), Error> {
        let api: Api<Node> = Api::all(self.client.clone());
        let patch = json!({"status": {"conditions": conditions(true, self.config.clock.now())}});
        api.patch_status(node, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|source| Error::Kube {
                operation: "patch status of",
                node: node.to_owned(),
                source,
            })?;
        Ok(())
    }

    /// Cancels a pending registration of the instance and deletes its Node (found by the
    /// name it was registered under, else by provider id); a missing Node is not an error.
    pub async fn deregister(&self, instance_id: &str) -> Result<(), Error> {
        let pending = lock(&self.inner.tasks).remove(instance_id);
        if let Some(task) = pending {
            task.abort();
            let _ = task.await;
        }
        let known = lock(&self.inner.nodes).remove(instance_id);
        let name = match known {
            Some(name) => Some(name),
            None => spot_k8s::nodes::by_instance_id(&self.client, instance_id)
                .await
                .map_err(|source| Error::Lookup {
                    instance_id: instance_id.to_owned(),
                    source,
                })?,
        };
        let Some(name) = name else {
            return Ok(());
        };
        let api: Api<Node> = Api::all(self.client.clone());
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(source) => Err(Error::Kube {
                operation: "delete",
                node: name,
                source,
            }),
        }
    }

    /// Waits until every registration started so far has finished.
    pub async fn wait_idle(&self) {
        loop {
            let tasks: Vec<(String, JoinHandle<()>)> = lock(&self.inner.tasks).drain().collect();
            if tasks.is_empty() {
                return;
            }
            for (_, task) in tasks {
                let _ = task.await;
            }
        }
    }

    /// The failures so far, as messages (registrations and deletions that failed).
    pub fn failures(&self) -> Vec<String> {
        lock(&self.inner.failures).clone()
    }

    fn fail(&self, error: &Error) {
        tracing::warn!(error = %error, "spot-sim node registration failed");
        lock(&self.inner.failures).push(error.to_string());
    }
}

#[async_trait]
impl InstanceObserver for KubeRegistrar {
    async fn launched(
        &self,
        instance: &Instance,
        instance_type: &InstanceType,
        labels: &BTreeMap<String, String>,
        taints: &[Taint],
    ) {
        let this = self.clone();
        let (instance, instance_type) = (instance.clone(), instance_type.clone());
        let (labels, taints) = (labels.clone(), taints.to_vec());
        let id = instance.id.clone();
        // Hold the task map while spawning so the task's own removal comes after the insert.
        let mut tasks = lock(&self.inner.tasks);
        let task = tokio::spawn(async move {
            if let Err(e) = this.register(&instance, &instance_type, &labels, &taints).await {
                this.fail(&e);
            }
            lock(&this.inner.tasks).remove(&instance.id);
        });
        tasks.insert(id, task);
    }

    async fn terminated(&self, instance_id: &str) {
        if let Err(e) = self.deregister(instance_id).await {
            self.fail(&e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spot_core::catalog::Catalog;
    use spot_core::instance_type::CapacityType;
    use spot_core::node::TaintEffect;

    fn registrar() -> KubeRegistrar {
        // A client that is never called: building the object needs no server.
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        KubeRegistrar::new(client, RegistrarConfig::default()).unwrap()
    }

    fn instance(id: &str, dns: &str) -> Instance {
        Instance {
            id: id.into(),
            instance_type: "m6g.xlarge".into(),
            zone: "us-west-2b".into(),
            capacity_type: CapacityType::Spot,
            private_dns_name: dns.into(),
            state: "pending".into(),
            tags: BTreeMap::new(),
            launch_time: None,
        }
    }

    #[tokio::test]
    async fn node_object_has_the_labels_capacity_and_taints() {
        let r = registrar();
        let t = Catalog::embedded().get("m6g.xlarge").unwrap();
        let i = instance("i-0abc", "ip-10-1-2-3.us-west-2.compute.internal");
        let extra = BTreeMap::from([("karpenter.sh/nodepool".to_owned(), "default".to_owned())]);
        let taints = [Taint::new("example.com/startup", "x", TaintEffect::NoExecute)];
        let node = r.node_object(&i, t, &extra, &taints).unwrap();
        let labels = node.metadata.labels.as_ref().unwrap();
        assert_eq!(node.metadata.name.as_deref(), Some(i.private_dns_name.as_str()));
        for (k, v) in [
            ("kubernetes.io/hostname", "ip-10-1-2-3.us-west-2.compute.internal"),
            ("kubernetes.io/arch", "arm64"),
            ("node.kubernetes.io/instance-type", "m6g.xlarge"),
            ("topology.kubernetes.io/zone", "us-west-2b"),
            ("topology.kubernetes.io/region", "us-west-2"),
            ("karpenter.sh/capacity-type", "spot"),
            ("karpenter.sh/nodepool", "default"),
            ("karpenter.k8s.aws/instance-family", "m6g"),
        ] {
            assert_eq!(labels.get(k).map(String::as_str), Some(v), "{k}");
        }
        let spec = node.spec.as_ref().unwrap();
        assert_eq!(spec.provider_id.as_deref(), Some("aws:///us-west-2b/i-0abc"));
        let kt = &spec.taints.as_ref().unwrap()[0];
        assert_eq!(
            (kt.key.as_str(), kt.value.as_deref(), kt.effect.as_str()),
            ("example.com/startup", Some("x"), "NoExecute")
        );
        let status = node.status.as_ref().unwrap();
        let model = AllocatableModel::default();
        let alloc = status.allocatable.as_ref().unwrap();
        for (k, v) in model.allocatable_resources(t).to_map() {
            assert_eq!(alloc[&k].0, v, "{k}");
        }
        assert_eq!(
            status.capacity.as_ref().unwrap()["cpu"].0,
            "4",
            "{:?}",
            status.capacity
        );
        let ready = status
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "False");
        let addresses = status.addresses.as_ref().unwrap();
        assert_eq!(
            (addresses[0].type_.as_str(), addresses[0].address.as_str()),
            ("InternalIP", "10.1.2.3")
        );
        assert_eq!(status.node_info.as_ref().unwrap().architecture, "arm64");
        // No taints: no taint list at all.
        let node = r.node_object(&i, t, &BTreeMap::new(), &[]).unwrap();
        assert!(node.spec.unwrap().taints.is_none());
    }

    #[tokio::test]
    async fn errors_name_the_instance() {
        let r = registrar();
        let mut t = Catalog::embedded().get("m5.large").unwrap().clone();
        t.architectures = vec![Architecture::I386];
        let err = r
            .node_object(
                &instance("i-0bad", "ip-10-0-0-9.ec2.internal"),
                &t,
                &BTreeMap::new(),
                &[],
            )
            .unwrap_err();
        assert!(err.to_string().contains("i-0bad"), "{err}");
        let bad = RegistrarConfig {
            allocatable: AllocatableModel {
                vm_memory_overhead: 2.0,
                ..AllocatableModel::default()
            },
            ..RegistrarConfig::default()
        };
        let err = KubeRegistrar::new(r.client.clone(), bad).unwrap_err();
        assert!(err.to_string().contains("vm_memory_overhead"), "{err}");
    }

    #[test]
    fn ip_from_dns_name() {
        assert_eq!(ip_of("ip-10-1-2-3.ec2.internal").as_deref(), Some("10.1.2.3"));
        assert_eq!(ip_of("ip-10-1-2.ec2.internal"), None);
        assert_eq!(ip_of("node-1"), None);
        assert_eq!(ip_of("ip-10-1-2-300.x"), None);
    }
}
