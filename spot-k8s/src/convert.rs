//! From Kubernetes objects (k8s-openapi) to the scheduling view of `spot-core`:
//! [`pod_spec`] turns a `Pod` into a [`PodSpec`], [`existing_node`] a `Node` and its bound
//! pods into an [`ExistingNode`], and [`is_provisionable`] says whether a pending pod is one
//! the provisioner should find capacity for.
//!
//! The rules are Kubernetes' (and Karpenter's where it differs):
//!
//! - **Requests** ([`pod_requests`]), as `resourcehelper.PodRequests`: each container's
//!   requests, a resource with only a limit requesting its limit (API defaulting); the sum of
//!   the regular containers and the restartable (sidecar) init containers, against the
//!   largest init container, each of which also runs beside the sidecars started before it
//!   (KEP-753); pod-level `spec.resources` replacing the aggregate for the resources it
//!   names; in-place resizes (`status.containerStatuses[].resources`/`allocatedResources`)
//!   taking the larger of spec and status, or the status when the resize is infeasible;
//!   plus `spec.overhead`, and `pods: 1`.
//! - **Node requirements**: `nodeSelector` ANDed into every required node-affinity term, the
//!   terms ORed; an empty term matches no node (dropped); `matchFields` is refused, as
//!   Karpenter does.
//! - **Topology spread**: a missing label selector selects no pod; `matchLabelKeys` fold the
//!   pod's own values into the selector as `key In [value]`.
//! - **Pod affinity**: the same, with `mismatchLabelKeys` as `key NotIn [value]`;
//!   `namespaceSelector` needs the namespaces' labels ([`pod_spec_in`]).
//! - **Host ports**: of the containers and sidecars; with `hostNetwork`, container ports are
//!   host ports.
//!
//! Errors name the pod (or node), the field and the value.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    Container, ContainerStatus, Node, NodeSelectorTerm, Pod, PodAffinityTerm as KubePodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as KubeQuantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as KubeLabelSelector;
use spot_core::labels;
use spot_core::node::{Taint, TaintEffect};
use spot_core::pod::{
    HostPort, LabelSelector, LabelSelectorOperator, LabelSelectorRequirement, PodAffinityTerm, PodSpec,
    Toleration, TolerationOperator, TopologySpread, WhenUnsatisfiable,
};
use spot_core::requirements::{NodeSelectorRequirement, Operator, Requirement, Requirements};
use spot_core::resources::Resources;
use spot_core::scheduling::ExistingNode;

/// `controller.kubernetes.io/pod-deletion-cost`.
pub const DELETION_COST_ANNOTATION: &str = "controller.kubernetes.io/pod-deletion-cost";
/// `karpenter.sh/do-not-disrupt`.
pub const DO_NOT_DISRUPT_ANNOTATION: &str = "karpenter.sh/do-not-disrupt";
/// The label Karpenter puts on nodes it has initialized.
pub const INITIALIZED_LABEL: &str = "karpenter.sh/initialized";
/// Taints the node lifecycle puts on nodes that are starting; ignored on nodes that are not
/// initialized yet (Karpenter's `KnownEphemeralTaints`).
pub const EPHEMERAL_TAINTS: [&str; 3] = [
    "node.kubernetes.io/not-ready",
    "node.kubernetes.io/unreachable",
    "node.cloudprovider.kubernetes.io/uninitialized",
];

/// Labels of namespaces by name, to resolve pod affinity `namespaceSelector`s.
pub type NamespaceLabels = BTreeMap<String, BTreeMap<String, String>>;

/// A field of a pod or node that cannot be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A pod field.
    #[error("pod {pod}: {field}: invalid value {value:?}: {reason}")]
    Pod {
        /// `namespace/name`.
        pod: String,
        /// The field's path (`spec.containers[0].resources.requests.cpu`).
        field: String,
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A node field.
    #[error("node {node}: {field}: invalid value {value:?}: {reason}")]
    Node {
        /// The node's name.
        node: String,
        /// The field's path.
        field: String,
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Errors for one pod.
struct Ctx<'a> {
    key: String,
    namespaces: Option<&'a NamespaceLabels>,
}

impl Ctx<'_> {
    fn err(&self, field: impl Into<String>, value: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Pod {
            pod: self.key.clone(),
            field: field.into(),
            value: value.into(),
            reason: reason.into(),
        }
    }
}

fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        namespace_of(pod),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

fn namespace_of(pod: &Pod) -> &str {
    pod.metadata
        .namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or("default")
}

/// Converts a pod. Pod affinity terms with a `namespaceSelector` are refused: use
/// [`pod_spec_in`] with the namespaces' labels for those.
pub fn pod_spec(pod: &Pod) -> Result<PodSpec, Error> {
    convert(pod, None)
}

/// Converts a pod, resolving pod affinity `namespaceSelector`s against `namespaces`.
pub fn pod_spec_in(pod: &Pod, namespaces: &NamespaceLabels) -> Result<PodSpec, Error> {
    convert(pod, Some(namespaces))
}

fn convert(pod: &Pod, namespaces: Option<&NamespaceLabels>) -> Result<PodSpec, Error> {
    let ctx = Ctx {
        key: pod_key(pod),
        namespaces,
    };
    let meta = &pod.metadata;
    let labels = meta.labels.clone().unwrap_or_default();
    let annotations = meta.annotations.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let requests = requests(&ctx, pod)?;
    let (node_requirements, preferred_node_affinity) = node_affinity(&ctx, &spec)?;
    let tolerations = spec
        .tolerations
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, t)| toleration(&ctx, i, t))
        .collect::<Result<_, _>>()?;
    let topology_spread = spec
        .topology_spread_constraints
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, c)| {
            let field = format!("spec.topologySpreadConstraints[{i}]");
            let when_unsatisfiable = match c.when_unsatisfiable.as_str() {
                "DoNotSchedule" => WhenUnsatisfiable::DoNotSchedule,
                "ScheduleAnyway" => WhenUnsatisfiable::ScheduleAnyway,
                other => {
                    return Err(ctx.err(
                        format!("{field}.whenUnsatisfiable"),
                        other,
                        "expected DoNotSchedule or ScheduleAnyway",
                    ));
                }
            };
            if c.max_skew < 1 {
                return Err(ctx.err(
                    format!("{field}.maxSkew"),
                    c.max_skew.to_string(),
                    "must be at least 1",
                ));
            }
            if let Some(m) = c.min_domains
                && m < 1
            {
                return Err(ctx.err(format!("{field}.minDomains"), m.to_string(), "must be at least 1"));
            }
            if c.topology_key.is_empty() {
                return Err(ctx.err(format!("{field}.topologyKey"), "", "must not be empty"));
            }
            let selector = selector_with_keys(
                &ctx,
                &field,
                c.label_selector.as_ref(),
                c.match_label_keys.as_deref().unwrap_or_default(),
                &[],
                &labels,
            )?;
            Ok(TopologySpread {
                topology_key: c.topology_key.clone(),
                max_skew: c.max_skew,
                min_domains: c.min_domains,
                when_unsatisfiable,
                selector,
            })
        })
        .collect::<Result<_, _>>()?;
    let affinity = spec.affinity.as_ref();
    let pa = affinity.and_then(|a| a.pod_affinity.as_ref());
    let paa = affinity.and_then(|a| a.pod_anti_affinity.as_ref());
    let ns = namespace_of(pod);
    let required = |terms: Option<&Vec<KubePodAffinityTerm>>, field: &str| {
        terms
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(i, t)| affinity_term(&ctx, &format!("{field}[{i}]"), t, ns, &labels))
            .collect::<Result<Vec<_>, _>>()
    };
    let pod_affinity = required(
        pa.and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref()),
        "spec.affinity.podAffinity.requiredDuringSchedulingIgnoredDuringExecution",
    )?;
    let pod_anti_affinity = required(
        paa.and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref()),
        "spec.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution",
    )?;
    let preferred = |terms: Option<&Vec<k8s_openapi::api::core::v1::WeightedPodAffinityTerm>>,
                     field: &str| {
        terms
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(i, t)| {
                let field = format!("{field}[{i}].podAffinityTerm");
                Ok((
                    t.weight,
                    affinity_term(&ctx, &field, &t.pod_affinity_term, ns, &labels)?,
                ))
            })
            .collect::<Result<Vec<_>, Error>>()
    };
    let preferred_pod_affinity = preferred(
        pa.and_then(|a| a.preferred_during_scheduling_ignored_during_execution.as_ref()),
        "spec.affinity.podAffinity.preferredDuringSchedulingIgnoredDuringExecution",
    )?;
    let preferred_pod_anti_affinity = preferred(
        paa.and_then(|a| a.preferred_during_scheduling_ignored_during_execution.as_ref()),
        "spec.affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution",
    )?;
    let deletion_cost = match annotations.get(DELETION_COST_ANNOTATION) {
        None => 0,
        Some(v) => v.trim().parse::<i32>().map_err(|_| {
            ctx.err(
                format!("metadata.annotations[{DELETION_COST_ANNOTATION}]"),
                v.as_str(),
                "expected a 32-bit integer",
            )
        })?,
    };
    let owners = meta.owner_references.as_deref().unwrap_or_default();
    let owner_kind = owners
        .iter()
        .find(|o| o.controller == Some(true))
        .or_else(|| owners.first())
        .map(|o| o.kind.clone());
    Ok(PodSpec {
        namespace: ns.to_owned(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta
            .uid
            .clone()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| ctx.key.clone()),
        labels,
        requests,
        node_requirements,
        preferred_node_affinity,
        tolerations,
        topology_spread,
        pod_affinity,
        pod_anti_affinity,
        preferred_pod_affinity,
        preferred_pod_anti_affinity,
        host_ports: host_ports(&ctx, &spec)?,
        priority: spec.priority.unwrap_or(0),
        deletion_cost,
        owner_kind,
        do_not_disrupt: annotations.get(DO_NOT_DISRUPT_ANNOTATION).cloned(),
        termination_grace_seconds: spec.termination_grace_period_seconds,
        created_unix_ms: meta
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_millisecond()),
        node_name: spec.node_name.clone().filter(|n| !n.is_empty()),
    })
}

/// The pod's effective requests (see the [module documentation](self)), with `pods: 1`.
pub fn pod_requests(pod: &Pod) -> Result<Resources, Error> {
    requests(
        &Ctx {
            key: pod_key(pod),
            namespaces: None,
        },
        pod,
    )
}

/// Parses a resource list, naming `field.NAME` in errors.
fn resource_list(
    ctx: &Ctx<'_>,
    field: &str,
    list: &BTreeMap<String, KubeQuantity>,
) -> Result<Resources, Error> {
    let mut out = Resources::default();
    for (name, q) in list {
        let one = Resources::from_pairs([(name.as_str(), q.0.as_str())])
            .map_err(|e| ctx.err(format!("{field}.{name}"), q.0.as_str(), e.to_string()))?;
        out = add(ctx, field, &out, &one)?;
    }
    Ok(out)
}

fn add(ctx: &Ctx<'_>, field: &str, a: &Resources, b: &Resources) -> Result<Resources, Error> {
    a.checked_add(b)
        .ok_or_else(|| ctx.err(field, b.to_string(), "the total requests overflow"))
}

/// A container's requests, a resource with only a limit requesting its limit.
fn container_requests(ctx: &Ctx<'_>, field: &str, c: &Container) -> Result<Resources, Error> {
    let Some(r) = &c.resources else {
        return Ok(Resources::default());
    };
    let requests = resource_list(
        ctx,
        &format!("{field}.resources.requests"),
        r.requests.as_ref().unwrap_or(&BTreeMap::new()),
    )?;
    let limits_only: BTreeMap<String, KubeQuantity> = r
        .limits
        .iter()
        .flatten()
        .filter(|(k, _)| !r.requests.as_ref().is_some_and(|req| req.contains_key(*k)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let defaulted = resource_list(ctx, &format!("{field}.resources.limits"), &limits_only)?;
    add(ctx, field, &requests, &defaulted)
}

fn resize_infeasible(pod: &Pod) -> bool {
    let Some(status) = &pod.status else {
        return false;
    };
    status.resize.as_deref() == Some("Infeasible")
        || status.conditions.iter().flatten().any(|c| {
            c.type_ == "PodResizePending" && c.status == "True" && c.reason.as_deref() == Some("Infeasible")
        })
}

/// `resourcehelper`'s `determineContainerReqs` for a container with a status.
fn with_status(
    ctx: &Ctx<'_>,
    field: &str,
    spec: Resources,
    status: Option<&ContainerStatus>,
    infeasible: bool,
) -> Result<Resources, Error> {
    let Some(cs) = status else { return Ok(spec) };
    let Some(actual) = cs.resources.as_ref().and_then(|r| r.requests.as_ref()) else {
        return Ok(spec);
    };
    let actual = resource_list(ctx, &format!("{field}.resources.requests"), actual)?;
    let allocated = match &cs.allocated_resources {
        Some(a) => resource_list(ctx, &format!("{field}.allocatedResources"), a)?,
        None => Resources::default(),
    };
    let status_reqs = actual.max(&allocated);
    Ok(if infeasible {
        status_reqs
    } else {
        spec.max(&status_reqs)
    })
}

fn requests(ctx: &Ctx<'_>, pod: &Pod) -> Result<Resources, Error> {
    let default_spec = Default::default();
    let spec = pod.spec.as_ref().unwrap_or(&default_spec);
    let status = pod.status.as_ref();
    let infeasible = resize_infeasible(pod);
    let statuses = |list: Option<&Vec<ContainerStatus>>| -> BTreeMap<String, ContainerStatus> {
        list.into_iter()
            .flatten()
            .map(|s| (s.name.clone(), s.clone()))
            .collect()
    };
    let container_statuses = statuses(status.and_then(|s| s.container_statuses.as_ref()));
    let init_statuses = statuses(status.and_then(|s| s.init_container_statuses.as_ref()));

    let mut reqs = Resources::default();
    for (i, c) in spec.containers.iter().enumerate() {
        let field = format!("spec.containers[{i}]");
        let r = container_requests(ctx, &field, c)?;
        let status_field = format!("status.containerStatuses[{}]", c.name);
        let r = with_status(ctx, &status_field, r, container_statuses.get(&c.name), infeasible)?;
        reqs = add(ctx, &field, &reqs, &r)?;
    }
    let mut restartable = Resources::default();
    let mut init_max = Resources::default();
    for (i, c) in spec.init_containers.iter().flatten().enumerate() {
        let field = format!("spec.initContainers[{i}]");
        let mut r = container_requests(ctx, &field, c)?;
        let current = if c.restart_policy.as_deref() == Some("Always") {
            let status_field = format!("status.initContainerStatuses[{}]", c.name);
            r = with_status(ctx, &status_field, r, init_statuses.get(&c.name), infeasible)?;
            reqs = add(ctx, &field, &reqs, &r)?;
            restartable = add(ctx, &field, &restartable, &r)?;
            restartable.clone()
        } else {
            add(ctx, &field, &r, &restartable)?
        };
        init_max = init_max.max(&current);
    }
    let mut reqs = reqs.max(&init_max);
    // Pod-level resources replace the aggregate for the resources they name.
    if let Some(pr) = &spec.resources {
        let named: BTreeMap<String, KubeQuantity> = pr
            .limits
            .iter()
            .flatten()
            .chain(pr.requests.iter().flatten())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let level = container_requests(
            ctx,
            "spec",
            &Container {
                resources: Some(pr.clone()),
                ..Container::default()
            },
        )?;
        for name in named.keys() {
            let amount = |r: &Resources| match name.as_str() {
                "cpu" => r.cpu_millis,
                "memory" => r.memory_bytes,
                "ephemeral-storage" => r.ephemeral_storage_bytes,
                "pods" => r.pods,
                other => r.extended(other),
            };
            let value = amount(&level);
            match name.as_str() {
                "cpu" => reqs.cpu_millis = value,
                "memory" => reqs.memory_bytes = value,
                "ephemeral-storage" => reqs.ephemeral_storage_bytes = value,
                "pods" => {}
                other => reqs = reqs.with_extended(other, value),
            }
        }
    }
    if let Some(overhead) = &spec.overhead {
        let o = resource_list(ctx, "spec.overhead", overhead)?;
        reqs = add(ctx, "spec.overhead", &reqs, &o)?;
    }
    Ok(reqs.with_pods(1))
}

/// Converts Kubernetes node selector expressions, naming `field[j]` in errors.
fn expressions(
    ctx: &Ctx<'_>,
    field: &str,
    list: &[k8s_openapi::api::core::v1::NodeSelectorRequirement],
) -> Result<Requirements, Error> {
    let mut out = Requirements::new();
    for (j, e) in list.iter().enumerate() {
        let r = NodeSelectorRequirement {
            key: e.key.clone(),
            operator: e.operator.clone(),
            values: e.values.clone().unwrap_or_default(),
            min_values: None,
        };
        let req = Requirement::from_node_selector(&r).map_err(|err| {
            ctx.err(
                format!("{field}[{j}]"),
                format!("{} {} {:?}", r.key, r.operator, r.values),
                err.to_string(),
            )
        })?;
        out.add(req);
    }
    Ok(out)
}

/// A node selector term's requirements, `None` for an empty term (which matches no node).
fn term(ctx: &Ctx<'_>, field: &str, t: &NodeSelectorTerm) -> Result<Option<Requirements>, Error> {
    if let Some(fields) = t.match_fields.as_ref().filter(|f| !f.is_empty()) {
        let keys: Vec<&str> = fields.iter().map(|f| f.key.as_str()).collect();
        return Err(ctx.err(
            format!("{field}.matchFields"),
            keys.join(","),
            "matchFields is not supported (Karpenter rejects it)",
        ));
    }
    match t.match_expressions.as_ref().filter(|e| !e.is_empty()) {
        None => Ok(None),
        Some(e) => expressions(ctx, &format!("{field}.matchExpressions"), e).map(Some),
    }
}

type NodeAffinity = (Vec<Requirements>, Vec<(i32, Requirements)>);

fn node_affinity(ctx: &Ctx<'_>, spec: &k8s_openapi::api::core::v1::PodSpec) -> Result<NodeAffinity, Error> {
    let mut selector = Requirements::new();
    for (k, v) in spec.node_selector.iter().flatten() {
        let r = Requirement::new(k, Operator::In, [v.clone()])
            .map_err(|e| ctx.err(format!("spec.nodeSelector[{k}]"), v.as_str(), e.to_string()))?;
        selector.add(r);
    }
    let na = spec.affinity.as_ref().and_then(|a| a.node_affinity.as_ref());
    let required = na.and_then(|n| n.required_during_scheduling_ignored_during_execution.as_ref());
    let node_requirements = match required {
        None if selector.is_empty() => Vec::new(),
        None => vec![selector.clone()],
        Some(ns) => {
            let field =
                "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms";
            let mut terms = Vec::new();
            for (i, t) in ns.node_selector_terms.iter().enumerate() {
                if let Some(r) = term(ctx, &format!("{field}[{i}]"), t)? {
                    terms.push(r.intersect(&selector));
                }
            }
            if terms.is_empty() {
                return Err(ctx.err(
                    field,
                    format!("{} term(s)", ns.node_selector_terms.len()),
                    "no term has an expression, so no node can match",
                ));
            }
            terms
        }
    };
    let mut preferred = Vec::new();
    let field = "spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution";
    for (i, p) in na
        .and_then(|n| n.preferred_during_scheduling_ignored_during_execution.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
    {
        if let Some(r) = term(ctx, &format!("{field}[{i}].preference"), &p.preference)? {
            preferred.push((p.weight, r));
        }
    }
    Ok((node_requirements, preferred))
}

fn toleration(
    ctx: &Ctx<'_>,
    i: usize,
    t: &k8s_openapi::api::core::v1::Toleration,
) -> Result<Toleration, Error> {
    let field = format!("spec.tolerations[{i}]");
    let operator = match t.operator.as_deref().unwrap_or_default() {
        "" | "Equal" => TolerationOperator::Equal,
        "Exists" => TolerationOperator::Exists,
        other => return Err(ctx.err(format!("{field}.operator"), other, "expected Equal or Exists")),
    };
    let effect = match t.effect.as_deref().filter(|e| !e.is_empty()) {
        None => None,
        Some(e) => Some(
            e.parse::<TaintEffect>()
                .map_err(|err| ctx.err(format!("{field}.effect"), e, err.to_string()))?,
        ),
    };
    Ok(Toleration {
        key: t.key.clone().filter(|k| !k.is_empty()),
        operator,
        value: t.value.clone(),
        effect,
    })
}

/// Converts a label selector; `None` (absent) selects no pod.
fn selector(ctx: &Ctx<'_>, field: &str, s: Option<&KubeLabelSelector>) -> Result<LabelSelector, Error> {
    let Some(s) = s else {
        return Ok(LabelSelector::nothing());
    };
    let mut out = LabelSelector {
        match_labels: s.match_labels.clone().unwrap_or_default(),
        match_expressions: Vec::new(),
    };
    for (j, e) in s.match_expressions.iter().flatten().enumerate() {
        let operator = match e.operator.as_str() {
            "In" => LabelSelectorOperator::In,
            "NotIn" => LabelSelectorOperator::NotIn,
            "Exists" => LabelSelectorOperator::Exists,
            "DoesNotExist" => LabelSelectorOperator::DoesNotExist,
            other => {
                return Err(ctx.err(
                    format!("{field}.matchExpressions[{j}].operator"),
                    other,
                    "expected In, NotIn, Exists or DoesNotExist",
                ));
            }
        };
        out.match_expressions.push(LabelSelectorRequirement {
            key: e.key.clone(),
            operator,
            values: e.values.clone().unwrap_or_default(),
        });
    }
    Ok(out)
}

/// A selector with `matchLabelKeys` (`key In [own value]`) and `mismatchLabelKeys`
/// (`key NotIn [own value]`) folded in; keys the pod does not have are ignored, as in
/// kube-scheduler.
fn selector_with_keys(
    ctx: &Ctx<'_>,
    field: &str,
    s: Option<&KubeLabelSelector>,
    match_keys: &[String],
    mismatch_keys: &[String],
    own: &BTreeMap<String, String>,
) -> Result<LabelSelector, Error> {
    let mut out = selector(ctx, &format!("{field}.labelSelector"), s)?;
    if s.is_none() {
        return Ok(out);
    }
    for (keys, operator) in [
        (match_keys, LabelSelectorOperator::In),
        (mismatch_keys, LabelSelectorOperator::NotIn),
    ] {
        for key in keys {
            if let Some(value) = own.get(key) {
                out.match_expressions.push(LabelSelectorRequirement {
                    key: key.clone(),
                    operator,
                    values: vec![value.clone()],
                });
            }
        }
    }
    Ok(out)
}

fn affinity_term(
    ctx: &Ctx<'_>,
    field: &str,
    t: &KubePodAffinityTerm,
    own_namespace: &str,
    own_labels: &BTreeMap<String, String>,
) -> Result<PodAffinityTerm, Error> {
    if t.topology_key.is_empty() {
        return Err(ctx.err(format!("{field}.topologyKey"), "", "must not be empty"));
    }
    let mut selector = selector_with_keys(
        ctx,
        field,
        t.label_selector.as_ref(),
        t.match_label_keys.as_deref().unwrap_or_default(),
        t.mismatch_label_keys.as_deref().unwrap_or_default(),
        own_labels,
    )?;
    let mut namespaces = t.namespaces.clone().unwrap_or_default();
    if let Some(ns_selector) = &t.namespace_selector {
        let Some(all) = ctx.namespaces else {
            return Err(ctx.err(
                format!("{field}.namespaceSelector"),
                format!("{ns_selector:?}"),
                "a namespaceSelector needs the namespaces' labels (convert with pod_spec_in)",
            ));
        };
        let sel = self::selector(ctx, &format!("{field}.namespaceSelector"), Some(ns_selector))?;
        for (name, labels) in all {
            if sel.matches(labels) && !namespaces.contains(name) {
                namespaces.push(name.clone());
            }
        }
        if namespaces.is_empty() {
            // No namespace matches: the term selects no pod (an empty list would mean the
            // pod's own namespace).
            namespaces.push(own_namespace.to_owned());
            selector = LabelSelector::nothing();
        }
    }
    namespaces.sort();
    Ok(PodAffinityTerm {
        topology_key: t.topology_key.clone(),
        selector,
        namespaces,
    })
}

fn host_ports(ctx: &Ctx<'_>, spec: &k8s_openapi::api::core::v1::PodSpec) -> Result<Vec<HostPort>, Error> {
    let host_network = spec.host_network == Some(true);
    let containers = spec
        .containers
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("spec.containers[{i}]"), c))
        .chain(
            spec.init_containers
                .iter()
                .flatten()
                .enumerate()
                .filter(|(_, c)| c.restart_policy.as_deref() == Some("Always"))
                .map(|(i, c)| (format!("spec.initContainers[{i}]"), c)),
        );
    let mut out = Vec::new();
    for (field, c) in containers {
        for (j, p) in c.ports.iter().flatten().enumerate() {
            let port = match p.host_port {
                Some(h) if h > 0 => h,
                _ if host_network => p.container_port,
                _ => continue,
            };
            let port = u16::try_from(port).ok().filter(|p| *p > 0).ok_or_else(|| {
                ctx.err(
                    format!("{field}.ports[{j}].hostPort"),
                    port.to_string(),
                    "must be between 1 and 65535",
                )
            })?;
            out.push(HostPort {
                protocol: p
                    .protocol
                    .clone()
                    .filter(|p| !p.is_empty())
                    .unwrap_or_else(|| "TCP".to_owned()),
                host_ip: p.host_ip.clone().unwrap_or_default(),
                port,
            });
        }
    }
    Ok(out)
}

/// Whether the pod has finished (`Succeeded` or `Failed`).
pub fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Whether the pod is being deleted.
pub fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// Whether any owner of the pod has this kind.
pub fn is_owned_by(pod: &Pod, kind: &str) -> bool {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == kind)
}

/// Whether the provisioner should find capacity for the pod, as Karpenter's
/// `IsProvisionable`: the scheduler marked it `PodScheduled=False` with reason
/// `Unschedulable`, it is not bound, not nominated for a node by preemption, not terminating
/// or finished, and not owned by a DaemonSet or a Node (static pods).
pub fn is_provisionable(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    let unschedulable = status.and_then(|s| s.conditions.as_ref()).is_some_and(|cs| {
        cs.iter().any(|c| {
            c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable")
        })
    });
    let bound = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    let preempting = status
        .and_then(|s| s.nominated_node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    unschedulable
        && !bound
        && !preempting
        && !is_terminating(pod)
        && !is_terminal(pod)
        && !is_owned_by(pod, "DaemonSet")
        && !is_owned_by(pod, "Node")
}

/// Whether the node's `Ready` condition is `True`.
pub fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The node's taints; errors name the field.
pub fn node_taints(node: &Node) -> Result<Vec<Taint>, Error> {
    let name = node.metadata.name.clone().unwrap_or_default();
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, t)| {
            let effect = t.effect.parse::<TaintEffect>().map_err(|e| Error::Node {
                node: name.clone(),
                field: format!("spec.taints[{i}].effect"),
                value: t.effect.clone(),
                reason: e.to_string(),
            })?;
            Ok(Taint {
                key: t.key.clone(),
                value: t.value.clone().filter(|v| !v.is_empty()),
                effect,
            })
        })
        .collect()
}

/// The node as the scheduler sees it, with `pods` its bound, non-terminal pods:
/// allocatable from `status.allocatable`, taints (the [`EPHEMERAL_TAINTS`] dropped while the
/// node is not initialized), `nodepool` from the `karpenter.sh/nodepool` label. A node of a
/// NodePool is initialized once labelled `karpenter.sh/initialized=true`; other nodes are
/// taken as initialized.
pub fn existing_node(node: &Node, pods: Vec<Arc<PodSpec>>) -> Result<ExistingNode, Error> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let nodepool = labels.get(labels::NODE_POOL).cloned();
    let initialized = nodepool.is_none() || labels.get(INITIALIZED_LABEL).is_some_and(|v| v == "true");
    let mut allocatable = Resources::default();
    for (k, q) in node
        .status
        .as_ref()
        .and_then(|s| s.allocatable.as_ref())
        .into_iter()
        .flatten()
    {
        let one = Resources::from_pairs([(k.as_str(), q.0.as_str())]).map_err(|e| Error::Node {
            node: name.clone(),
            field: format!("status.allocatable.{k}"),
            value: q.0.clone(),
            reason: e.to_string(),
        })?;
        allocatable = allocatable.checked_add(&one).ok_or_else(|| Error::Node {
            node: name.clone(),
            field: "status.allocatable".into(),
            value: q.0.clone(),
            reason: "overflow".into(),
        })?;
    }
    let mut taints = node_taints(node)?;
    if !initialized {
        taints.retain(|t| !EPHEMERAL_TAINTS.contains(&t.key.as_str()));
    }
    let mut out = ExistingNode::new(name, labels, allocatable);
    out.taints = taints;
    out.pods = pods;
    out.initialized = initialized;
    out.nodepool = nodepool;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        let mut base = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns"}, "spec": {"containers": []}});
        merge(&mut base, v);
        serde_json::from_value(base).unwrap()
    }

    fn merge(base: &mut serde_json::Value, patch: serde_json::Value) {
        match (base, patch) {
            (serde_json::Value::Object(b), serde_json::Value::Object(p)) => {
                for (k, v) in p {
                    merge(b.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (b, p) => *b = p,
        }
    }

    fn c(name: &str, cpu: &str, mem: &str) -> serde_json::Value {
        json!({"name": name, "resources": {"requests": {"cpu": cpu, "memory": mem}}})
    }

    fn sidecar(name: &str, cpu: &str, mem: &str) -> serde_json::Value {
        let mut v = c(name, cpu, mem);
        v["restartPolicy"] = json!("Always");
        v
    }

    const MI: i64 = 1 << 20;

    #[test]
    fn requests_sum_containers_and_add_pods() {
        let p = pod(json!({"spec": {"containers": [c("a", "100m", "64Mi"), c("b", "250m", "128Mi")]}}));
        assert_eq!(
            pod_requests(&p).unwrap(),
            Resources::new(350, 192 * MI).with_pods(1)
        );
        let empty = pod(json!({}));
        assert_eq!(pod_requests(&empty).unwrap(), Resources::default().with_pods(1));
    }

    #[test]
    fn limits_without_requests_are_requests() {
        let p = pod(json!({"spec": {"containers": [
            {"name": "a", "resources": {"limits": {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": "1"}, "requests": {"cpu": "500m"}}}
        ]}}));
        assert_eq!(
            pod_requests(&p).unwrap(),
            Resources::new(500, 1024 * MI)
                .with_pods(1)
                .with_extended("nvidia.com/gpu", 1)
        );
    }

    #[test]
    fn init_containers_take_the_max() {
        // Regular init containers run one at a time, before the containers.
        let p = pod(json!({"spec": {
            "initContainers": [c("i1", "2", "100Mi"), c("i2", "500m", "1Gi")],
            "containers": [c("a", "1", "200Mi")],
        }}));
        assert_eq!(
            pod_requests(&p).unwrap(),
            Resources::new(2000, 1024 * MI).with_pods(1)
        );
    }

    #[test]
    fn sidecars_accumulate_as_in_kep_753() {
        // Kubernetes' own example: sidecar s1 (1 cpu) starts, init i1 (2 cpu) runs beside it
        // (3), sidecar s2 (1 cpu) starts (2 running), init i2 (1 cpu) runs beside both (3);
        // then the containers (2 cpu) run beside both sidecars (4).
        let p = pod(json!({"spec": {
            "initContainers": [sidecar("s1", "1", "1Mi"), c("i1", "2", "1Mi"), sidecar("s2", "1", "1Mi"), c("i2", "1", "10Mi")],
            "containers": [c("a", "2", "1Mi")],
        }}));
        let r = pod_requests(&p).unwrap();
        assert_eq!(r.cpu_millis, 4000);
        // Memory: containers + sidecars = 3Mi; i2 with both sidecars = 12Mi.
        assert_eq!(r.memory_bytes, 12 * MI);
        // An init container larger than everything after it wins.
        let p = pod(json!({"spec": {
            "initContainers": [sidecar("s1", "1", "1Mi"), c("i1", "8", "1Mi")],
            "containers": [c("a", "1", "1Mi")],
        }}));
        assert_eq!(pod_requests(&p).unwrap().cpu_millis, 9000);
    }

    #[test]
    fn overhead_and_pod_level_resources() {
        let p = pod(json!({"spec": {
            "containers": [c("a", "1", "1Gi"), c("b", "1", "1Gi")],
            "overhead": {"cpu": "250m", "memory": "120Mi"},
        }}));
        assert_eq!(
            pod_requests(&p).unwrap(),
            Resources::new(2250, 2168 * MI).with_pods(1)
        );
        // Pod-level requests replace the aggregate for the resources they name; the overhead
        // still adds.
        let p = pod(json!({"spec": {
            "containers": [c("a", "1", "1Gi"), c("b", "1", "1Gi")],
            "resources": {"requests": {"cpu": "3"}, "limits": {"memory": "4Gi"}},
            "overhead": {"cpu": "250m"},
        }}));
        assert_eq!(
            pod_requests(&p).unwrap(),
            Resources::new(3250, 4096 * MI).with_pods(1)
        );
    }

    #[test]
    fn in_place_resize_takes_the_larger_or_the_actual_when_infeasible() {
        let base = json!({"spec": {"containers": [c("a", "1", "1Gi")]},
            "status": {"containerStatuses": [{"name": "a", "image": "x", "imageID": "", "ready": true, "restartCount": 0,
                "resources": {"requests": {"cpu": "2", "memory": "512Mi"}}}]}});
        assert_eq!(
            pod_requests(&pod(base.clone())).unwrap(),
            Resources::new(2000, 1024 * MI).with_pods(1)
        );
        let mut infeasible = base;
        infeasible["status"]["conditions"] =
            json!([{"type": "PodResizePending", "status": "True", "reason": "Infeasible"}]);
        assert_eq!(
            pod_requests(&pod(infeasible)).unwrap(),
            Resources::new(2000, 512 * MI).with_pods(1)
        );
    }

    #[test]
    fn bad_quantities_name_field_and_value() {
        let p = pod(json!({"spec": {"containers": [c("a", "1", "1Gi"), c("b", "lots", "1Gi")]}}));
        let e = pod_requests(&p).unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("pod ns/p")
                && s.contains("spec.containers[1].resources.requests.cpu")
                && s.contains("lots"),
            "{s}"
        );
        let p = pod(json!({"spec": {"containers": [], "overhead": {"memory": "-1"}}}));
        assert!(
            pod_requests(&p)
                .unwrap_err()
                .to_string()
                .contains("spec.overhead.memory")
        );
        let p =
            pod(json!({"metadata": {"annotations": {"controller.kubernetes.io/pod-deletion-cost": "high"}}}));
        let s = pod_spec(&p).unwrap_err().to_string();
        assert!(s.contains("pod-deletion-cost") && s.contains("high"), "{s}");
    }

    fn affinity_terms(terms: serde_json::Value) -> serde_json::Value {
        json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}}})
    }

    #[test]
    fn node_selector_is_anded_into_every_affinity_term() {
        let mut v = affinity_terms(json!([
            {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["us-east-1a"]}]},
            {"matchExpressions": [{"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot"]}]},
            {},
        ]));
        v["spec"]["nodeSelector"] =
            json!({"kubernetes.io/arch": "arm64", "failure-domain.beta.kubernetes.io/zone": "us-east-1a"});
        let s = pod_spec(&pod(v)).unwrap();
        assert_eq!(
            s.node_requirements.len(),
            2,
            "the empty term matches nothing and is dropped"
        );
        for t in &s.node_requirements {
            assert!(t.get("kubernetes.io/arch").unwrap().has("arm64"));
            // The beta zone label is normalised onto the stable key.
            assert!(t.get("topology.kubernetes.io/zone").unwrap().has("us-east-1a"));
        }
        assert!(
            s.node_requirements[1]
                .get("karpenter.sh/capacity-type")
                .unwrap()
                .has("spot")
        );
        // nodeSelector alone is one term.
        let s = pod_spec(&pod(json!({"spec": {"nodeSelector": {"a": "b"}}}))).unwrap();
        assert_eq!(s.node_requirements.len(), 1);
        assert!(pod_spec(&pod(json!({}))).unwrap().node_requirements.is_empty());
        // Only empty terms: nothing can match.
        let e = pod_spec(&pod(affinity_terms(json!([{}]))))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nodeSelectorTerms") && e.contains("no term"), "{e}");
    }

    #[test]
    fn match_fields_and_bad_operators_are_rejected() {
        let e = pod_spec(&pod(affinity_terms(json!([
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}
        ]))))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("nodeSelectorTerms[0].matchFields")
                && e.contains("metadata.name")
                && e.contains("Karpenter"),
            "{e}"
        );
        let e = pod_spec(&pod(affinity_terms(json!([
            {"matchExpressions": [{"key": "a", "operator": "Near", "values": ["x"]}]}
        ]))))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("nodeSelectorTerms[0].matchExpressions[0]") && e.contains("Near"),
            "{e}"
        );
    }

    #[test]
    fn preferred_node_affinity() {
        let s = pod_spec(&pod(json!({"spec": {"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 10, "preference": {"matchExpressions": [{"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot"]}]}},
            {"weight": 5, "preference": {}},
        ]}}}})))
        .unwrap();
        assert_eq!(s.preferred_node_affinity.len(), 1);
        assert_eq!(s.preferred_node_affinity[0].0, 10);
    }

    #[test]
    fn tolerations() {
        let s = pod_spec(&pod(json!({"spec": {"tolerations": [
            {"operator": "Exists"},
            {"key": "k", "value": "v", "effect": "NoSchedule"},
            {"key": "x", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30},
        ]}})))
        .unwrap();
        assert_eq!(s.tolerations[0], Toleration::exists(None, None));
        assert_eq!(
            s.tolerations[1],
            Toleration::equal("k", "v", Some(TaintEffect::NoSchedule))
        );
        assert_eq!(
            s.tolerations[2],
            Toleration::exists(Some("x"), Some(TaintEffect::NoExecute))
        );
        let e = pod_spec(&pod(
            json!({"spec": {"tolerations": [{"key": "k", "operator": "Maybe"}]}}),
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("spec.tolerations[0].operator") && e.contains("Maybe"),
            "{e}"
        );
        let e = pod_spec(&pod(
            json!({"spec": {"tolerations": [{"key": "k", "effect": "Later"}]}}),
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("spec.tolerations[0].effect") && e.contains("Later"),
            "{e}"
        );
    }

    #[test]
    fn topology_spread_with_min_domains_and_match_label_keys() {
        let s = pod_spec(&pod(json!({
            "metadata": {"labels": {"app": "web", "pod-template-hash": "abc"}},
            "spec": {"topologySpreadConstraints": [
                {"topologyKey": "topology.kubernetes.io/zone", "maxSkew": 1, "minDomains": 3, "whenUnsatisfiable": "DoNotSchedule",
                 "labelSelector": {"matchLabels": {"app": "web"}}, "matchLabelKeys": ["pod-template-hash", "missing"]},
                {"topologyKey": "kubernetes.io/hostname", "maxSkew": 2, "whenUnsatisfiable": "ScheduleAnyway"},
            ]},
        })))
        .unwrap();
        let t = &s.topology_spread[0];
        assert_eq!(
            (t.max_skew, t.min_domains, t.when_unsatisfiable),
            (1, Some(3), WhenUnsatisfiable::DoNotSchedule)
        );
        assert_eq!(
            t.selector.match_expressions,
            vec![LabelSelectorRequirement {
                key: "pod-template-hash".into(),
                operator: LabelSelectorOperator::In,
                values: vec!["abc".into()],
            }]
        );
        let mut other = s.labels.clone();
        assert!(t.selector.matches(&other));
        other.insert("pod-template-hash".into(), "old".into());
        assert!(!t.selector.matches(&other), "another revision is not counted");
        // No label selector: no pod is counted.
        assert_eq!(s.topology_spread[1].selector, LabelSelector::nothing());
        assert_eq!(
            s.topology_spread[1].when_unsatisfiable,
            WhenUnsatisfiable::ScheduleAnyway
        );
        let e = pod_spec(&pod(json!({"spec": {"topologySpreadConstraints": [
            {"topologyKey": "z", "maxSkew": 1, "whenUnsatisfiable": "Sometimes"}]}})))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("spec.topologySpreadConstraints[0].whenUnsatisfiable") && e.contains("Sometimes"),
            "{e}"
        );
        let e = pod_spec(&pod(json!({"spec": {"topologySpreadConstraints": [
            {"topologyKey": "z", "maxSkew": 0, "whenUnsatisfiable": "DoNotSchedule"}]}})))
        .unwrap_err()
        .to_string();
        assert!(e.contains("maxSkew"), "{e}");
    }

    #[test]
    fn pod_affinity_required_and_preferred() {
        let v = json!({
            "metadata": {"labels": {"app": "db", "tenant": "t1"}},
            "spec": {"affinity": {
                "podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"topologyKey": "topology.kubernetes.io/zone", "labelSelector": {"matchLabels": {"app": "cache"}}, "namespaces": ["b", "a"]}
                ], "preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 50, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]}}}
                ]},
                "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "db"}}, "mismatchLabelKeys": ["tenant"]}
                ], "preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 1, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname"}}
                ]},
            }},
        });
        let s = pod_spec(&pod(v)).unwrap();
        assert_eq!(s.pod_affinity[0].namespaces, ["a", "b"]);
        assert_eq!(s.preferred_pod_affinity[0].0, 50);
        assert_eq!(s.preferred_pod_affinity[0].1.namespaces, Vec::<String>::new());
        let anti = &s.pod_anti_affinity[0];
        let other = |tenant: &str| {
            BTreeMap::from([
                ("app".to_owned(), "db".to_owned()),
                ("tenant".to_owned(), tenant.to_owned()),
            ])
        };
        assert!(
            !anti.selector.matches(&other("t1")),
            "same tenant is not repelled"
        );
        assert!(anti.selector.matches(&other("t2")));
        assert_eq!(
            s.preferred_pod_anti_affinity[0].1.selector,
            LabelSelector::nothing()
        );
    }

    #[test]
    fn namespace_selectors_need_namespace_labels() {
        let v = json!({"spec": {"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"topologyKey": "kubernetes.io/hostname", "labelSelector": {}, "namespaceSelector": {"matchLabels": {"team": "a"}}}
        ]}}}});
        let p = pod(v);
        let e = pod_spec(&p).unwrap_err().to_string();
        assert!(
            e.contains("namespaceSelector") && e.contains("pod_spec_in"),
            "{e}"
        );
        let nss: NamespaceLabels = BTreeMap::from([
            (
                "x".to_owned(),
                BTreeMap::from([("team".to_owned(), "a".to_owned())]),
            ),
            (
                "y".to_owned(),
                BTreeMap::from([("team".to_owned(), "b".to_owned())]),
            ),
            (
                "z".to_owned(),
                BTreeMap::from([("team".to_owned(), "a".to_owned())]),
            ),
        ]);
        let s = pod_spec_in(&p, &nss).unwrap();
        assert_eq!(s.pod_anti_affinity[0].namespaces, ["x", "z"]);
        assert_eq!(s.pod_anti_affinity[0].selector, LabelSelector::default());
        let none: NamespaceLabels = BTreeMap::new();
        let s = pod_spec_in(&p, &none).unwrap();
        assert_eq!(s.pod_anti_affinity[0].selector, LabelSelector::nothing());
    }

    #[test]
    fn host_ports_of_containers_sidecars_and_host_network() {
        let s = pod_spec(&pod(json!({"spec": {
            "initContainers": [
                {"name": "s", "restartPolicy": "Always", "ports": [{"containerPort": 9000, "hostPort": 9000, "protocol": "UDP"}]},
                {"name": "i", "ports": [{"containerPort": 1, "hostPort": 1}]},
            ],
            "containers": [{"name": "a", "ports": [{"containerPort": 80, "hostPort": 8080, "hostIP": "10.0.0.1"}, {"containerPort": 81}]}],
        }})))
        .unwrap();
        assert_eq!(
            s.host_ports,
            vec![
                HostPort {
                    protocol: "TCP".into(),
                    host_ip: "10.0.0.1".into(),
                    port: 8080
                },
                HostPort {
                    protocol: "UDP".into(),
                    host_ip: String::new(),
                    port: 9000
                },
            ]
        );
        let s = pod_spec(&pod(json!({"spec": {"hostNetwork": true, "containers": [{"name": "a", "ports": [{"containerPort": 53, "protocol": "UDP"}]}]}}))).unwrap();
        assert_eq!(
            s.host_ports,
            vec![HostPort {
                protocol: "UDP".into(),
                host_ip: String::new(),
                port: 53
            }]
        );
    }

    #[test]
    fn metadata_fields() {
        let s = pod_spec(&pod(json!({
            "metadata": {"uid": "u-1", "creationTimestamp": "2025-01-02T03:04:05Z",
                "annotations": {"controller.kubernetes.io/pod-deletion-cost": "-100", "karpenter.sh/do-not-disrupt": "true"},
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Other", "name": "o", "uid": "1"},
                    {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "2", "controller": true},
                ]},
            "spec": {"priority": 1000, "terminationGracePeriodSeconds": 45, "nodeName": "n1"},
        })))
        .unwrap();
        assert_eq!(s.key(), "ns/p");
        assert_eq!(s.uid, "u-1");
        assert_eq!(s.deletion_cost, -100);
        assert_eq!(s.do_not_disrupt.as_deref(), Some("true"));
        assert_eq!(s.owner_kind.as_deref(), Some("ReplicaSet"));
        assert_eq!(s.priority, 1000);
        assert_eq!(s.termination_grace_seconds, Some(45));
        assert_eq!(s.created_unix_ms, 1_735_787_045_000);
        assert_eq!(s.node_name.as_deref(), Some("n1"));
        let d = pod_spec(&pod(json!({"metadata": {"namespace": null, "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "d", "uid": "3"}]}}))).unwrap();
        assert_eq!(d.namespace, "default");
        assert_eq!(d.uid, "default/p");
        assert!(d.is_daemonset());
        assert_eq!((d.priority, d.deletion_cost, d.created_unix_ms), (0, 0, 0));
    }

    fn pending(extra: serde_json::Value) -> Pod {
        let mut v = json!({"status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]}});
        merge(&mut v, extra);
        pod(v)
    }

    #[test]
    fn provisionable_pods() {
        assert!(is_provisionable(&pending(json!({}))));
        assert!(
            !is_provisionable(&pod(json!({}))),
            "not yet rejected by the scheduler"
        );
        assert!(!is_provisionable(&pending(
            json!({"status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}]}})
        )));
        assert!(!is_provisionable(&pending(json!({"spec": {"nodeName": "n"}}))));
        assert!(!is_provisionable(&pending(
            json!({"status": {"nominatedNodeName": "n"}})
        )));
        assert!(!is_provisionable(&pending(
            json!({"metadata": {"deletionTimestamp": "2025-01-01T00:00:00Z"}})
        )));
        assert!(!is_provisionable(&pending(
            json!({"status": {"phase": "Failed"}})
        )));
        for kind in ["DaemonSet", "Node"] {
            assert!(!is_provisionable(&pending(
                json!({"metadata": {"ownerReferences": [{"apiVersion": "v1", "kind": kind, "name": "x", "uid": "1"}]}})
            )));
        }
        assert!(is_provisionable(&pending(
            json!({"metadata": {"ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "x", "uid": "1"}]}})
        )));
    }

    fn node(v: serde_json::Value) -> Node {
        let mut base = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1"}},
            "status": {"allocatable": {"cpu": "3920m", "memory": "15Gi", "pods": "58"}, "conditions": [{"type": "Ready", "status": "True"}]}});
        merge(&mut base, v);
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn existing_nodes() {
        let p = Arc::new(PodSpec::new("ns", "a", Resources::new(100, 0)));
        let n = existing_node(
            &node(json!({"spec": {"taints": [{"key": "dedicated", "value": "x", "effect": "NoSchedule"}, {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}]}})),
            vec![p.clone()],
        )
        .unwrap();
        assert!(node_ready(&node(json!({}))));
        assert_eq!(n.name, "n1");
        assert_eq!(n.allocatable, Resources::new(3920, 15 << 30).with_pods(58));
        assert_eq!(
            n.taints.len(),
            2,
            "unmanaged nodes are initialized: every taint counts"
        );
        assert!(n.initialized);
        assert_eq!(n.nodepool, None);
        assert_eq!(n.pods, vec![p]);
        assert!(n.in_flight.is_none());
        let managed = node(
            json!({"metadata": {"labels": {"karpenter.sh/nodepool": "default"}},
            "spec": {"taints": [{"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}, {"key": "a", "effect": "NoSchedule"}]}}),
        );
        let n = existing_node(&managed, vec![]).unwrap();
        assert!(!n.initialized);
        assert_eq!(n.nodepool.as_deref(), Some("default"));
        assert_eq!(
            n.taints,
            vec![Taint {
                key: "a".into(),
                value: None,
                effect: TaintEffect::NoSchedule
            }]
        );
        let init = node(
            json!({"metadata": {"labels": {"karpenter.sh/nodepool": "default", "karpenter.sh/initialized": "true"}}}),
        );
        assert!(existing_node(&init, vec![]).unwrap().initialized);
        let e = existing_node(&node(json!({"status": {"allocatable": {"cpu": "four"}}})), vec![])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("node n1") && e.contains("status.allocatable.cpu") && e.contains("four"),
            "{e}"
        );
        let e = existing_node(
            &node(json!({"spec": {"taints": [{"key": "k", "effect": "Soon"}]}})),
            vec![],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("spec.taints[0].effect") && e.contains("Soon"), "{e}");
    }
}
