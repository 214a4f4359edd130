//! Offline planning: the same scheduling and packing code as the controller, on manifests
//! instead of a cluster and a price table instead of a cloud (`spot-provisioner plan`).

use std::collections::BTreeMap;
use std::sync::Arc;

use kube::ResourceExt;
use serde::Serialize;
use spot_core::offerings::UnavailableOfferings;
use spot_core::packing::{BinType, Item};
use spot_core::pod::PodSpec;
use spot_core::resources::Resources;
use spot_core::scheduling::{ExistingNode, InstanceTypeOption, Scheduler, SchedulerOptions};
use spot_k8s::convert;

use crate::api::NodePool;
use crate::manifests::Manifests;
use crate::template::{self, InstanceCatalog};

/// Errors of planning.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A NodePool could not be turned into a template.
    #[error(transparent)]
    Template(#[from] template::Error),
    /// A pod or node does not convert.
    #[error(transparent)]
    Convert(#[from] convert::Error),
    /// The default NodePool does not parse (a bug).
    #[error("default NodePool: {0}")]
    DefaultPool(String),
}

/// One NodeClaim the plan would create.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannedClaim {
    /// The NodePool.
    pub nodepool: String,
    /// The instance type chosen (the cheapest the claim allows).
    pub instance_type: String,
    /// `spot` or `on-demand`.
    pub capacity_type: String,
    /// The zone of the cheapest offering.
    pub zone: String,
    /// Its price.
    pub price_usd_per_hour: f64,
    /// Every type the claim allows, cheapest first (what EC2 Fleet gets, truncated to 60).
    pub instance_types: Vec<String>,
    /// The pods (`namespace/name`).
    pub pods: Vec<String>,
}

/// A pod that fits nowhere.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Unschedulable {
    /// `namespace/name`.
    pub pod: String,
    /// The constraint that failed.
    pub reason: String,
}

/// The plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// NodeClaims to create.
    pub nodeclaims: Vec<PlannedClaim>,
    /// Pods that fit on the existing nodes given: (pod, node).
    pub on_existing_nodes: Vec<(String, String)>,
    /// The total price of the NodeClaims.
    pub total_usd_per_hour: f64,
    /// The LP relaxation's lower bound on the price of any fleet for the same pods.
    pub lower_bound_usd_per_hour: Option<f64>,
    /// `total / lower bound`.
    pub ratio: Option<f64>,
    /// Pods that fit no instance type, with the reason.
    pub unschedulable: Vec<Unschedulable>,
}

/// The NodePool used when the manifests bring none: every instance type, spot first.
pub fn default_nodepool() -> Result<NodePool, Error> {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "karpenter.sh/v1", "kind": "NodePool", "metadata": {"name": "default"},
        "spec": {"template": {"spec": {
            "nodeClassRef": {"group": "spot.dev", "kind": "SpotNodeClass", "name": "default"},
            "requirements": [
                {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot", "on-demand"]},
                {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}
            ]}}}
    }))
    .map_err(|e| Error::DefaultPool(e.to_string()))
}

/// Plans NodeClaims for the pending pods of `manifests` (pods without `spec.nodeName`).
pub fn plan(
    manifests: &Manifests,
    catalog: &InstanceCatalog,
    options: SchedulerOptions,
) -> Result<Plan, Error> {
    let unavailable = UnavailableOfferings::new(Arc::new(spot_core::clock::FixedClock(
        time::OffsetDateTime::UNIX_EPOCH,
    )));
    let pools = if manifests.node_pools.is_empty() {
        vec![default_nodepool()?]
    } else {
        manifests.node_pools.clone()
    };
    let mut templates = Vec::new();
    for pool in &pools {
        let class_name = &pool.spec.template.spec.node_class_ref.name;
        let class = manifests
            .node_classes
            .iter()
            .find(|c| &c.name_any() == class_name);
        templates.push(template::template(
            pool,
            class,
            catalog,
            &unavailable,
            &Resources::default(),
        )?);
    }
    let mut pending = Vec::new();
    let mut bound: BTreeMap<String, Vec<Arc<PodSpec>>> = BTreeMap::new();
    for pod in &manifests.pods {
        let spec = Arc::new(convert::pod_spec(pod)?);
        match &spec.node_name {
            Some(node) => bound.entry(node.clone()).or_default().push(spec),
            None => pending.push(spec),
        }
    }
    let mut existing: Vec<ExistingNode> = Vec::new();
    for node in &manifests.nodes {
        let pods = bound.remove(&node.name_any()).unwrap_or_default();
        existing.push(convert::existing_node(node, pods)?);
    }
    let daemonsets: Vec<PodSpec> = manifests
        .daemonsets
        .iter()
        .map(convert::pod_spec)
        .collect::<Result<_, _>>()?;
    let mut scheduler = Scheduler::new(templates.clone(), existing, daemonsets, options);
    let solution = scheduler.solve(pending);
    let mut nodeclaims = Vec::new();
    for claim in &solution.new_claims {
        let Some((t, offering)) = claim.cheapest() else {
            continue;
        };
        nodeclaims.push(PlannedClaim {
            nodepool: claim.nodepool.clone(),
            instance_type: t.name().to_owned(),
            capacity_type: offering.capacity_type.as_str().to_owned(),
            zone: offering.zone.clone(),
            price_usd_per_hour: offering.price,
            instance_types: claim.instance_types.iter().map(|t| t.name().to_owned()).collect(),
            pods: claim.pods.iter().map(|p| p.key()).collect(),
        });
    }
    let total: f64 = nodeclaims.iter().map(|c| c.price_usd_per_hour).sum();
    let lower_bound = bound_of(&solution.new_claims, &templates);
    Ok(Plan {
        ratio: lower_bound.filter(|b| *b > 0.0).map(|b| total / b),
        nodeclaims,
        on_existing_nodes: solution.existing.clone(),
        total_usd_per_hour: total,
        lower_bound_usd_per_hour: lower_bound,
        unschedulable: solution
            .unschedulable
            .iter()
            .map(|(pod, reason)| Unschedulable {
                pod: pod.clone(),
                reason: reason.clone(),
            })
            .collect(),
    })
}

/// The LP lower bound for the pods of the new claims over every instance type of the
/// templates (each at its cheapest offering, less the smallest DaemonSet overhead of the
/// claims). Relaxing the pods' other constraints only lowers it, so it stays a bound.
fn bound_of(
    claims: &[spot_core::scheduling::NewNodeClaim],
    templates: &[spot_core::scheduling::NodePoolTemplate],
) -> Option<f64> {
    if claims.is_empty() {
        return Some(0.0);
    }
    let items: Vec<Item> = claims
        .iter()
        .flat_map(|c| c.pods.iter().map(|p| Item::new(p.requests.clone())))
        .collect();
    let overhead = claims
        .iter()
        .map(|c| c.daemon_overhead.clone())
        .reduce(|a, b| if b.cpu_millis < a.cpu_millis { b } else { a })
        .unwrap_or_default();
    let mut seen = std::collections::BTreeSet::new();
    let types: Vec<BinType> = templates
        .iter()
        .flat_map(|t| t.instance_types.iter().map(move |o| (t, o)))
        .filter(|(_, o)| seen.insert(o.name().to_owned()))
        .filter_map(|(t, o): (_, &Arc<InstanceTypeOption>)| {
            let price = o.cheapest_price(&t.requirements)?;
            Some(BinType::new(o.allocatable.saturating_sub(&overhead), price))
        })
        .collect();
    lower_bound(&items, &types)
}

fn lower_bound(items: &[Item], types: &[BinType]) -> Option<f64> {
    spot_core::packing::lower_bound(items, types).ok()
}
