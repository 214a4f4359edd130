//! A consistent read of the cluster for one provisioning loop: every object the scheduling
//! simulation needs, converted to `spot-core`'s vocabulary.
//!
//! Node state is read before pods, as Karpenter does: a pod bound in between then looks
//! pending, which errs toward launching too little rather than too much... and is corrected
//! by the next loop, because the in-flight claims count as existing capacity.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use spot_core::pod::PodSpec;
use spot_core::resources::Resources;
use spot_core::scheduling::{ExistingNode, InFlightClaim, InstanceTypeOption};
use spot_k8s::convert;

use crate::api::nodeclaim::conditions;
use crate::api::{NodeClaim, NodePool, SpotNodeClass};

/// Errors of reading the cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server failed.
    #[error("listing {what}: {source}")]
    List {
        /// What was listed.
        what: &'static str,
        /// The client error.
        #[source]
        source: kube::Error,
    },
}

/// Everything one loop reads.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Nodes.
    pub nodes: Vec<Node>,
    /// NodeClaims.
    pub claims: Vec<NodeClaim>,
    /// NodePools.
    pub nodepools: Vec<NodePool>,
    /// Node classes.
    pub nodeclasses: Vec<SpotNodeClass>,
    /// DaemonSets.
    pub daemonsets: Vec<DaemonSet>,
    /// Pods.
    pub pods: Vec<Pod>,
    /// The labels of every namespace, for pod affinity terms with a `namespaceSelector`.
    pub namespaces: convert::NamespaceLabels,
}

impl Snapshot {
    /// Lists everything, nodes and claims before pods.
    pub async fn read(client: &Client) -> Result<Snapshot, Error> {
        let lp = ListParams::default();
        let list = |what: &'static str| move |source| Error::List { what, source };
        let nodes = Api::<Node>::all(client.clone())
            .list(&lp)
            .await
            .map_err(list("nodes"))?
            .items;
        let claims = Api::<NodeClaim>::all(client.clone())
            .list(&lp)
            .await
            .map_err(list("nodeclaims"))?
            .items;
        let nodepools = Api::<NodePool>::all(client.clone())
            .list(&lp)
            .await
            .map_err(list("nodepools"))?
            .items;
        let nodeclasses = Api::<SpotNodeClass>::all(client.clone())
            .list(&lp)
            .await
            .map_err(list("spotnodeclasses"))?
            .items;
        let daemonsets = Api::<DaemonSet>::all(client.clone())
            .list(&lp)
            .await
            .map_err(list("daemonsets"))?
            .items;
        let namespaces = Api::<Namespace>::all(client.clone())
            .list(&lp)
            .await
            .map_err(list("namespaces"))?
            .items
            .into_iter()
            .map(|ns| {
                let labels = ns.metadata.labels.clone().unwrap_or_default();
                (ns.name_any(), labels)
            })
            .collect();
        let pods = Api::<Pod>::all(client.clone())
            .list(&lp)
            .await
            .map_err(list("pods"))?
            .items;
        Ok(Snapshot {
            nodes,
            claims,
            nodepools,
            nodeclasses,
            daemonsets,
            pods,
            namespaces,
        })
    }

    /// Converts a pod, resolving its pod affinity `namespaceSelector`s against the
    /// namespaces of this snapshot.
    pub fn pod_spec(&self, pod: &Pod) -> Result<PodSpec, convert::Error> {
        convert::pod_spec_in(pod, &self.namespaces)
    }

    /// Pods that wait for capacity, converted; pods that do not convert are returned apart
    /// with the reason (they are reported, not silently dropped).
    pub fn provisionable(&self) -> (Vec<Arc<PodSpec>>, Vec<(String, String)>) {
        let mut ok = Vec::new();
        let mut bad = Vec::new();
        for p in self.pods.iter().filter(|p| convert::is_provisionable(p)) {
            match self.pod_spec(p) {
                Ok(spec) => ok.push(Arc::new(spec)),
                Err(e) => bad.push((
                    format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()),
                    e.to_string(),
                )),
            }
        }
        (ok, bad)
    }

    /// Bound, non-terminal pods by node name.
    pub fn bound_pods(&self) -> BTreeMap<String, Vec<Arc<PodSpec>>> {
        let mut out: BTreeMap<String, Vec<Arc<PodSpec>>> = BTreeMap::new();
        for p in &self.pods {
            let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) else {
                continue;
            };
            if convert::is_terminal(p) {
                continue;
            }
            if let Ok(spec) = self.pod_spec(p) {
                out.entry(node.to_owned()).or_default().push(Arc::new(spec));
            }
        }
        out
    }

    /// DaemonSet pod templates as pods, for the per-instance-type overhead.
    pub fn daemonset_pods(&self) -> Vec<PodSpec> {
        self.daemonsets
            .iter()
            .filter_map(|ds| {
                let template = ds.spec.template.clone();
                let pod = Pod {
                    metadata: kube::api::ObjectMeta {
                        name: Some(ds.name_any()),
                        namespace: ds.namespace(),
                        labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
                        owner_references: Some(vec![
                            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                                api_version: "apps/v1".into(),
                                kind: "DaemonSet".into(),
                                name: ds.name_any(),
                                uid: ds.uid().unwrap_or_default(),
                                controller: Some(true),
                                ..Default::default()
                            },
                        ]),
                        ..Default::default()
                    },
                    spec: template.spec,
                    status: None,
                };
                self.pod_spec(&pod).ok()
            })
            .collect()
    }

    /// The node a NodeClaim registered as: by `status.nodeName`, else by provider id.
    pub fn node_of(&self, claim: &NodeClaim) -> Option<&Node> {
        let status = claim.status.as_ref()?;
        if let Some(name) = &status.node_name
            && let Some(n) = self.nodes.iter().find(|n| n.metadata.name.as_ref() == Some(name))
        {
            return Some(n);
        }
        let pid = status.provider_id.as_deref()?;
        self.nodes
            .iter()
            .find(|n| n.spec.as_ref().and_then(|s| s.provider_id.as_deref()) == Some(pid))
    }

    /// Existing capacity for the scheduler: every node that is not being deleted, and every
    /// NodeClaim that has no node yet (with the smallest allocatable of its candidate types,
    /// which all fit the pods it was created for). `types` resolves instance type names.
    pub fn existing(&self, types: &dyn Fn(&str) -> Option<Arc<InstanceTypeOption>>) -> Vec<ExistingNode> {
        let bound = self.bound_pods();
        let mut out = Vec::new();
        for n in &self.nodes {
            if n.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let name = n.name_any();
            let pods = bound.get(&name).cloned().unwrap_or_default();
            if let Ok(e) = convert::existing_node(n, pods) {
                out.push(e);
            }
        }
        for c in &self.claims {
            if c.metadata.deletion_timestamp.is_some() || self.node_of(c).is_some() {
                continue;
            }
            let Ok(requirements) = c.requirements() else {
                continue;
            };
            let names: Vec<String> = requirements
                .get(spot_core::labels::INSTANCE_TYPE)
                .map(|r| r.values().map(str::to_owned).collect())
                .unwrap_or_default();
            let launched_alloc = c
                .status
                .as_ref()
                .filter(|s| !s.allocatable.is_empty())
                .and_then(|s| {
                    Resources::from_pairs(s.allocatable.iter().map(|(k, q)| (k.as_str(), q.0.as_str()))).ok()
                });
            let allocatable = launched_alloc.or_else(|| {
                names
                    .iter()
                    .filter_map(|n| types(n))
                    .map(|t| t.allocatable.clone())
                    .reduce(|a, b| min_resources(&a, &b))
            });
            let Some(allocatable) = allocatable else { continue };
            let mut labels = c.labels().clone();
            for r in requirements.iter() {
                if r.operator() == spot_core::requirements::Operator::In
                    && let Some(v) = r.values().next()
                    && r.values().count() == 1
                {
                    labels.entry(r.key().to_owned()).or_insert_with(|| v.to_owned());
                }
            }
            let (taints, _startup) = c.taints().unwrap_or_default();
            let mut e = ExistingNode::new(c.name_any(), labels, allocatable);
            e.taints = taints;
            e.initialized = false;
            e.nodepool = c.labels().get(spot_core::labels::NODE_POOL).cloned();
            e.in_flight = Some(InFlightClaim {
                requirements,
                instance_types: names,
            });
            out.push(e);
        }
        out
    }

    /// Whether a NodeClaim has the condition set to True.
    pub fn claim_is(claim: &NodeClaim, condition: &str) -> bool {
        claim.status.as_ref().is_some_and(|s| s.is_true(condition))
    }

    /// Launched claims without a node yet.
    pub fn in_flight(&self) -> usize {
        self.claims
            .iter()
            .filter(|c| Self::claim_is(c, conditions::LAUNCHED) && self.node_of(c).is_none())
            .count()
    }
}

/// Per-dimension minimum.
fn min_resources(a: &Resources, b: &Resources) -> Resources {
    let mut out = Resources {
        cpu_millis: a.cpu_millis.min(b.cpu_millis),
        memory_bytes: a.memory_bytes.min(b.memory_bytes),
        pods: a.pods.min(b.pods),
        ephemeral_storage_bytes: a.ephemeral_storage_bytes.min(b.ephemeral_storage_bytes),
        extended: BTreeMap::new(),
    };
    for (k, v) in &a.extended {
        let w = b.extended(k);
        if w.min(*v) != 0 {
            out.extended.insert(k.clone(), w.min(*v));
        }
    }
    out
}
