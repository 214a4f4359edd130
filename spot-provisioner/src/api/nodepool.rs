//! `NodePool` (`karpenter.sh/v1`): what nodes the provisioner may launch (requirements,
//! taints, node class, limits, weight) and how it may disrupt them (consolidation policy,
//! budgets, expiry). Fields, defaults and validation follow Karpenter v1
//! (`pkg/apis/v1/nodepool.go` and its CEL rules).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Taint as KubeTaint;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use spot_core::labels;
use spot_core::node::Taint;
use spot_core::requirements::Requirements;
use spot_core::resources::Resources;

use super::Error;
use super::duration::{GoDuration, NillableDuration, field_deserializers};
use super::nodeclaim::{
    NodeClassReference, NodeSelectorRequirementWithMinValues, default_expire_after, requirements_of,
    resource_list_schema, resources_of, taints_of,
};

const KIND: &str = "NodePool";

field_deserializers! {
    pool_expire_after: NillableDuration = "spec.template.spec.expireAfter";
    pool_termination_grace_period: Option<GoDuration> = "spec.template.spec.terminationGracePeriod";
    pool_consolidate_after: NillableDuration = "spec.disruption.consolidateAfter";
    budget_duration: Option<GoDuration> = "spec.disruption.budgets[].duration";
}

/// What nodes the provisioner may launch, and how it may disrupt them.
// kube's printcolumn(...) repeats `type_ = "string"`, which clippy takes for a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "karpenter.sh",
    version = "v1",
    kind = "NodePool",
    plural = "nodepools",
    singular = "nodepool",
    category = "karpenter",
    shortname = "np",
    status = "NodePoolStatus",
    derive = "PartialEq",
    doc = "What nodes the provisioner may launch, and how it may disrupt them.",
    printcolumn(
        name = "NodeClass",
        type_ = "string",
        json_path = ".spec.template.spec.nodeClassRef.name"
    ),
    printcolumn(name = "Nodes", type_ = "string", json_path = ".status.resources.nodes"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(name = "Weight", type_ = "integer", json_path = ".spec.weight", priority = 1),
    printcolumn(
        name = "CPU",
        type_ = "string",
        json_path = ".status.resources.cpu",
        priority = 1
    ),
    printcolumn(
        name = "Memory",
        type_ = "string",
        json_path = ".status.resources.memory",
        priority = 1
    )
)]
#[serde(rename_all = "camelCase")]
pub struct NodePoolSpec {
    /// The NodeClaims this pool creates.
    pub template: NodeClaimTemplate,
    /// How nodes of this pool may be disrupted.
    #[serde(default)]
    pub disruption: Disruption,
    /// The most this pool may launch in total (`cpu`, `memory`, `nodes`, extended
    /// resources); unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_resource_list_schema")]
    pub limits: Option<BTreeMap<String, Quantity>>,
    /// Higher weights are tried first (1 to 100; absent is 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub weight: Option<i32>,
}

fn optional_resource_list_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    resource_list_schema(generator)
}

/// A NodeClaim template: labels and annotations for the node, and the NodeClaim spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NodeClaimTemplate {
    /// Labels and annotations the nodes get.
    #[serde(default)]
    pub metadata: TemplateMetadata,
    /// The NodeClaim spec.
    pub spec: NodeClaimTemplateSpec,
}

/// Labels and annotations copied to every node of the pool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TemplateMetadata {
    /// Node labels (also requirements pods can select on).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Node annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The NodeClaim part of a NodePool template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeClaimTemplateSpec {
    /// What every node of the pool satisfies (may be empty: any instance type).
    #[schemars(length(max = 100))]
    pub requirements: Vec<NodeSelectorRequirementWithMinValues>,
    /// Taints every node gets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<KubeTaint>,
    /// Taints removed by another component once the node is ready; ignored when scheduling.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub startup_taints: Vec<KubeTaint>,
    /// How long a node lives before it is replaced (`Never` to keep it), default `720h`.
    #[serde(default = "default_expire_after", deserialize_with = "pool_expire_after")]
    pub expire_after: NillableDuration,
    /// How long a draining node waits for its pods before it is forcibly terminated.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "pool_termination_grace_period"
    )]
    pub termination_grace_period: Option<GoDuration>,
    /// The node class to launch with.
    pub node_class_ref: NodeClassReference,
}

/// Which nodes consolidation may remove or replace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ConsolidationPolicy {
    /// Empty nodes and nodes whose pods fit elsewhere (or on a cheaper node).
    #[default]
    WhenEmptyOrUnderutilized,
    /// Only nodes without (non-DaemonSet) pods.
    WhenEmpty,
    /// Underutilized nodes only when the savings outweigh the disruption.
    Balanced,
}

/// A reason a node is disrupted, as budgets name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum DisruptionReason {
    /// Consolidation of an underutilized node.
    Underutilized,
    /// Consolidation of an empty node.
    Empty,
    /// The node drifted from its NodePool or node class.
    Drifted,
}

impl From<DisruptionReason> for spot_core::disruption::Reason {
    fn from(r: DisruptionReason) -> Self {
        match r {
            DisruptionReason::Underutilized => spot_core::disruption::Reason::Underutilized,
            DisruptionReason::Empty => spot_core::disruption::Reason::Empty,
            DisruptionReason::Drifted => spot_core::disruption::Reason::Drifted,
        }
    }
}

/// How nodes of a pool may be disrupted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Disruption {
    /// Which nodes consolidation may act on, default `WhenEmptyOrUnderutilized`.
    #[serde(default)]
    pub consolidation_policy: ConsolidationPolicy,
    /// How long after the last pod event a node may be consolidated (`Never` turns
    /// consolidation off), default `0s`.
    #[serde(
        default = "default_consolidate_after",
        deserialize_with = "pool_consolidate_after"
    )]
    pub consolidate_after: NillableDuration,
    /// How many nodes may be disrupted at once, default one budget of `10%`.
    #[serde(default = "default_budgets")]
    #[schemars(length(max = 50))]
    pub budgets: Vec<Budget>,
    /// What EC2 rebalance recommendations for the pool's nodes lead to, default an Event
    /// only.
    #[serde(default, skip_serializing_if = "Rebalance::is_default")]
    pub rebalance: Rebalance,
}

impl Default for Disruption {
    fn default() -> Self {
        Disruption {
            consolidation_policy: ConsolidationPolicy::default(),
            consolidate_after: default_consolidate_after(),
            budgets: default_budgets(),
            rebalance: Rebalance::default(),
        }
    }
}

/// What an EC2 rebalance recommendation (the instance is at elevated risk of interruption)
/// leads to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum RebalancePolicy {
    /// Nothing at all.
    Ignore,
    /// A Kubernetes Event on the NodeClaim, nothing else (Karpenter's behaviour).
    #[default]
    Event,
    /// A replacement NodeClaim is launched, and the node is drained once the replacement is
    /// initialized (at most `maxConcurrent` of the pool's nodes at a time).
    Replace,
}

/// The NodePool's response to rebalance recommendations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rebalance {
    /// `Ignore`, `Event` (default) or `Replace`.
    #[serde(default)]
    pub policy: RebalancePolicy,
    /// With `Replace`: how many of the pool's nodes may be replaced proactively at once, a
    /// count (`2`) or a percentage of the pool's nodes (`10%`, rounded up), default `1`.
    /// Recommendations beyond it wait for a replacement to finish, so the fleet never
    /// thrashes.
    #[serde(default = "default_rebalance_max_concurrent")]
    #[schemars(regex(pattern = r"^((100|[0-9]{1,2})%|[0-9]+)$"))]
    pub max_concurrent: String,
}

fn default_rebalance_max_concurrent() -> String {
    "1".to_owned()
}

impl Default for Rebalance {
    fn default() -> Self {
        Rebalance {
            policy: RebalancePolicy::default(),
            max_concurrent: default_rebalance_max_concurrent(),
        }
    }
}

impl Rebalance {
    fn is_default(&self) -> bool {
        *self == Rebalance::default()
    }
}

fn default_consolidate_after() -> NillableDuration {
    NillableDuration::After(std::time::Duration::ZERO)
}

fn default_budgets() -> Vec<Budget> {
    vec![Budget::default()]
}

fn default_budget_nodes() -> String {
    "10%".to_owned()
}

/// At most `nodes` of the pool may be disrupted at once (for the listed reasons, during the
/// schedule's windows when a schedule is given).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Budget {
    /// The reasons this budget applies to; all when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasons: Option<Vec<DisruptionReason>>,
    /// A count (`5`) or a percentage of the pool's nodes (`10%`, rounded up), default `10%`.
    #[serde(default = "default_budget_nodes")]
    #[schemars(regex(pattern = r"^((100|[0-9]{1,2})%|[0-9]+)$"))]
    pub nodes: String,
    /// A cron schedule (UTC) of when the budget starts to apply; with `duration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(
        pattern = r"^(@(annually|yearly|monthly|weekly|daily|midnight|hourly))|((.+)\s(.+)\s(.+)\s(.+)\s(.+))$"
    ))]
    pub schedule: Option<String>,
    /// How long the budget applies after each scheduled start; with `schedule`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "budget_duration"
    )]
    #[schemars(schema_with = "budget_duration_schema")]
    pub duration: Option<GoDuration>,
}

fn budget_duration_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "string", "pattern": "^((([0-9]+(h|m))|([0-9]+h[0-9]+m))(0s)?)$"})
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            reasons: None,
            nodes: default_budget_nodes(),
            schedule: None,
            duration: None,
        }
    }
}

/// What a NodePool has launched.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodePoolStatus {
    /// The resources of the pool's nodes, with `nodes` the node count.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "resource_list_schema")]
    pub resources: BTreeMap<String, Quantity>,
    /// Ready, NodeClassReady, ValidationSucceeded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Label keys a NodePool may not use in requirements or template labels.
pub const RESTRICTED_LABELS: [&str; 2] = [labels::NODE_POOL, labels::HOSTNAME];

/// `karpenter.sh/` labels a NodePool may use.
pub const ALLOWED_KARPENTER_LABELS: [&str; 1] = [labels::CAPACITY_TYPE];

fn restricted(key: &str) -> Option<&'static str> {
    let key = labels::normalize(key);
    if RESTRICTED_LABELS.contains(&key) {
        return Some("the label is restricted (the provisioner sets it)");
    }
    let domain = key.split_once('/').map(|(d, _)| d);
    let karpenter = domain.is_some_and(|d| d == "karpenter.sh" || d.ends_with(".karpenter.sh"));
    if karpenter && !ALLOWED_KARPENTER_LABELS.contains(&key) {
        return Some("the karpenter.sh label domain is restricted");
    }
    None
}

impl NodePool {
    fn pool_name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }

    /// Checks what Karpenter's CEL rules and webhook check: requirement operators, values and
    /// `minValues`, restricted labels, weight, limits, taints, budgets. Errors name the field
    /// and the value.
    pub fn validate(&self) -> Result<(), Error> {
        let name = self.pool_name();
        let spec = &self.spec;
        let t = &spec.template.spec;
        if spec.weight.is_some_and(|w| !(1..=100).contains(&w)) {
            return Err(Error::invalid(
                KIND,
                name,
                "spec.weight",
                spec.weight.unwrap_or_default().to_string(),
                "weight must be between 1 and 100".into(),
            ));
        }
        for (i, r) in t.requirements.iter().enumerate() {
            let field = format!("spec.template.spec.requirements[{i}]");
            if let Some(reason) = restricted(&r.key) {
                return Err(Error::invalid(
                    KIND,
                    name,
                    format!("{field}.key"),
                    r.key.clone(),
                    reason.into(),
                ));
            }
            r.to_requirement(KIND, name, &field)?;
        }
        for key in spec.template.metadata.labels.keys() {
            if let Some(reason) = restricted(key) {
                return Err(Error::invalid(
                    KIND,
                    name,
                    "spec.template.metadata.labels",
                    key.clone(),
                    reason.into(),
                ));
            }
        }
        self.taints()?;
        self.limits()?;
        let ref_ = &t.node_class_ref;
        for (field, value) in [("group", &ref_.group), ("kind", &ref_.kind), ("name", &ref_.name)] {
            if value.is_empty() {
                return Err(Error::invalid(
                    KIND,
                    name,
                    format!("spec.template.spec.nodeClassRef.{field}"),
                    String::new(),
                    "must not be empty".into(),
                ));
            }
        }
        self.budgets()?;
        self.rebalance_limit(0)?;
        Ok(())
    }

    /// How many of the pool's `total_nodes` nodes may be replaced proactively at once after
    /// rebalance recommendations (`spec.disruption.rebalance.maxConcurrent`; percentages round
    /// up).
    pub fn rebalance_limit(&self, total_nodes: usize) -> Result<usize, Error> {
        let value = &self.spec.disruption.rebalance.max_concurrent;
        let invalid = |reason: &str| {
            Error::invalid(
                KIND,
                self.pool_name(),
                "spec.disruption.rebalance.maxConcurrent",
                value.clone(),
                reason.to_owned(),
            )
        };
        match value.strip_suffix('%') {
            Some(p) => {
                let p: usize = p
                    .parse()
                    .map_err(|_| invalid("not a percentage such as \"10%\""))?;
                if p > 100 {
                    return Err(invalid("a percentage must be between 0 and 100"));
                }
                Ok(total_nodes.saturating_mul(p).div_ceil(100))
            }
            None => value
                .parse()
                .map_err(|_| invalid("not a node count or a percentage such as \"10%\"")),
        }
    }

    /// The template fields the NodePool hash covers (labels, annotations, taints, startup
    /// taints, `expireAfter`, `terminationGracePeriod`, `nodeClassRef`). Taints that do not
    /// convert are left out (validation reports them).
    pub fn template_fields(&self) -> spot_core::disruption::drift::TemplateFields {
        let t = &self.spec.template;
        let (taints, startup_taints) = self.taints().unwrap_or_default();
        let r = &t.spec.node_class_ref;
        spot_core::disruption::drift::TemplateFields {
            labels: t.metadata.labels.clone(),
            annotations: t.metadata.annotations.clone(),
            taints,
            startup_taints,
            expire_after: t.spec.expire_after.duration(),
            termination_grace_period: t.spec.termination_grace_period.map(GoDuration::get),
            node_class_ref: spot_core::disruption::drift::NodeClassRef {
                group: r.group.clone(),
                kind: r.kind.clone(),
                name: r.name.clone(),
            },
        }
    }

    /// The NodePool template hash (`karpenter.sh/nodepool-hash`, version `v3`): a NodeClaim
    /// stamped with another hash has drifted.
    pub fn template_hash(&self) -> String {
        spot_core::disruption::drift::template_hash(&self.template_fields())
    }

    /// The hash annotations a NodeClaim launched from this pool carries
    /// (`karpenter.sh/nodepool-hash` and `karpenter.sh/nodepool-hash-version`).
    pub fn hash_annotations(&self) -> BTreeMap<String, String> {
        spot_core::disruption::drift::hash_annotations(&self.template_fields())
    }

    /// `spec.template.spec.requirements` in spot-core's algebra (without the pool's own
    /// `karpenter.sh/nodepool` requirement and template labels, which
    /// [`template`](crate::template) adds).
    pub fn requirements(&self) -> Result<Requirements, Error> {
        requirements_of(
            &self.spec.template.spec.requirements,
            KIND,
            self.pool_name(),
            "spec.template.spec.requirements",
        )
    }

    /// The taints and the startup taints.
    pub fn taints(&self) -> Result<(Vec<Taint>, Vec<Taint>), Error> {
        let name = self.pool_name();
        let t = &self.spec.template.spec;
        Ok((
            taints_of(&t.taints, KIND, name, "spec.template.spec.taints")?,
            taints_of(&t.startup_taints, KIND, name, "spec.template.spec.startupTaints")?,
        ))
    }

    /// `spec.limits` as [`Resources`] (the node count under the extended resource `nodes`),
    /// `None` when unlimited.
    pub fn limits(&self) -> Result<Option<Resources>, Error> {
        self.spec
            .limits
            .as_ref()
            .map(|l| resources_of(l, KIND, self.pool_name(), "spec.limits"))
            .transpose()
    }

    /// The disruption budgets, validated (counts, percentages, reasons, cron schedules
    /// with their durations), ready for [`spot_core::disruption::Budgets::allowed`].
    pub fn budgets(&self) -> Result<spot_core::disruption::Budgets, Error> {
        use spot_core::disruption::budget::Error as BudgetError;
        let budgets: Vec<spot_core::disruption::Budget> = self
            .spec
            .disruption
            .budgets
            .iter()
            .map(|b| spot_core::disruption::Budget {
                nodes: b.nodes.clone(),
                reasons: b
                    .reasons
                    .as_ref()
                    .map(|r| r.iter().map(|r| (*r).into()).collect()),
                schedule: b.schedule.clone(),
                duration: b.duration.map(GoDuration::get),
            })
            .collect();
        spot_core::disruption::Budgets::new(&budgets).map_err(|e| {
            let b = |i: usize| &self.spec.disruption.budgets[i];
            let (field, value) = match &e {
                BudgetError::Nodes { index, .. } | BudgetError::Percent { index, .. } => (
                    format!("spec.disruption.budgets[{index}].nodes"),
                    b(*index).nodes.clone(),
                ),
                BudgetError::Schedule { index, .. } => (
                    format!("spec.disruption.budgets[{index}].schedule"),
                    b(*index).schedule.clone().unwrap_or_default(),
                ),
                BudgetError::ScheduleWithoutDuration { index, .. } => (
                    format!("spec.disruption.budgets[{index}]"),
                    b(*index).schedule.clone().unwrap_or_default(),
                ),
                BudgetError::Reason { index, reason } => (
                    format!("spec.disruption.budgets[{index}].reasons"),
                    reason.to_string(),
                ),
                BudgetError::TooMany { count } => ("spec.disruption.budgets".to_owned(), count.to_string()),
            };
            Error::invalid(KIND, self.pool_name(), field, value, e.to_string())
        })
    }

    /// The weight (0 when unset).
    pub fn weight(&self) -> i32 {
        self.spec.weight.unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pool(spec: serde_json::Value) -> NodePool {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "karpenter.sh/v1", "kind": "NodePool", "metadata": {"name": "default"}, "spec": spec,
        }))
        .unwrap()
    }

    fn minimal() -> serde_json::Value {
        serde_json::json!({"template": {"spec": {
            "requirements": [], "nodeClassRef": {"group": "spot.dev", "kind": "SpotNodeClass", "name": "default"},
        }}})
    }

    #[test]
    fn defaults_are_karpenters() {
        let p = pool(minimal());
        let t = &p.spec.template.spec;
        assert_eq!(
            t.expire_after,
            NillableDuration::After(Duration::from_secs(720 * 3600))
        );
        assert_eq!(t.termination_grace_period, None);
        let d = &p.spec.disruption;
        assert_eq!(
            d.consolidation_policy,
            ConsolidationPolicy::WhenEmptyOrUnderutilized
        );
        assert_eq!(d.consolidate_after, NillableDuration::After(Duration::ZERO));
        assert_eq!(d.budgets, vec![Budget::default()]);
        assert_eq!(d.budgets[0].nodes, "10%");
        assert_eq!(p.spec.limits, None);
        assert_eq!(p.weight(), 0);
        assert_eq!(p.limits().unwrap(), None);
        p.validate().unwrap();
        // A budget without nodes defaults to 10% too.
        let mut spec = minimal();
        spec["disruption"] =
            serde_json::json!({"budgets": [{"reasons": ["Empty"]}], "consolidateAfter": "Never"});
        let p = pool(spec);
        assert_eq!(p.spec.disruption.budgets[0].nodes, "10%");
        assert_eq!(p.spec.disruption.consolidate_after, NillableDuration::Never);
        assert_eq!(
            p.spec.disruption.consolidation_policy,
            ConsolidationPolicy::WhenEmptyOrUnderutilized
        );
    }

    #[test]
    fn full_pool_round_trips_and_converts() {
        let p = pool(serde_json::json!({
            "template": {
                "metadata": {"labels": {"team": "a"}, "annotations": {"x": "y"}},
                "spec": {
                    "requirements": [
                        {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot", "on-demand"]},
                        {"key": "karpenter.k8s.aws/instance-family", "operator": "In", "values": ["m5", "c5", "r5"], "minValues": 2},
                    ],
                    "taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}],
                    "startupTaints": [{"key": "ready", "effect": "NoSchedule"}],
                    "expireAfter": "Never",
                    "terminationGracePeriod": "1h30m",
                    "nodeClassRef": {"group": "spot.dev", "kind": "SpotNodeClass", "name": "default"},
                },
            },
            "disruption": {"consolidationPolicy": "WhenEmpty", "consolidateAfter": "30s",
                "budgets": [{"nodes": "0", "schedule": "0 9 * * mon-fri", "duration": "8h", "reasons": ["Drifted"]}, {"nodes": "5"}]},
            "limits": {"cpu": "1000", "memory": "1000Gi", "nodes": 10},
            "weight": 50,
        }));
        p.validate().unwrap();
        let t = &p.spec.template.spec;
        assert_eq!(t.expire_after, NillableDuration::Never);
        assert_eq!(
            t.termination_grace_period.unwrap().get(),
            Duration::from_secs(5400)
        );
        assert_eq!(
            p.spec.disruption.consolidate_after.duration(),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            p.spec.disruption.budgets[0].duration.unwrap().get(),
            Duration::from_secs(8 * 3600)
        );
        let limits = p.limits().unwrap().unwrap();
        assert_eq!(limits.cpu_millis, 1_000_000);
        assert_eq!(limits.extended("nodes"), 10);
        let reqs = p.requirements().unwrap();
        assert_eq!(
            reqs.get("karpenter.k8s.aws/instance-family")
                .unwrap()
                .min_values(),
            Some(2)
        );
        let (taints, startup) = p.taints().unwrap();
        assert_eq!((taints.len(), startup.len()), (1, 1));
        assert_eq!(p.weight(), 50);
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(
            json["spec"]["template"]["spec"]["terminationGracePeriod"],
            "1h30m"
        );
        assert_eq!(json["spec"]["template"]["spec"]["expireAfter"], "Never");
        let back: NodePool = serde_json::from_value(json).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn validation_names_field_and_value() {
        let check = |patch: serde_json::Value, field: &str, value: &str| {
            let mut spec = minimal();
            merge(&mut spec, patch);
            let e = pool(spec).validate().unwrap_err().to_string();
            assert!(e.contains(field) && e.contains(value), "{field} {value}: {e}");
        };
        check(serde_json::json!({"weight": 0}), "spec.weight", "0");
        check(
            serde_json::json!({"template": {"spec": {"requirements": [{"key": "karpenter.sh/nodepool", "operator": "In", "values": ["x"]}]}}}),
            "spec.template.spec.requirements[0].key",
            "karpenter.sh/nodepool",
        );
        check(
            serde_json::json!({"template": {"spec": {"requirements": [{"key": "kubernetes.io/hostname", "operator": "Exists"}]}}}),
            "requirements[0].key",
            "kubernetes.io/hostname",
        );
        check(
            serde_json::json!({"template": {"spec": {"requirements": [{"key": "a", "operator": "In", "values": ["x"], "minValues": 2}]}}}),
            "spec.template.spec.requirements[0]",
            "minValues",
        );
        check(
            serde_json::json!({"template": {"spec": {"requirements": [{"key": "a", "operator": "Gt", "values": ["x"]}]}}}),
            "spec.template.spec.requirements[0]",
            "\"x\"",
        );
        check(
            serde_json::json!({"template": {"metadata": {"labels": {"karpenter.sh/foo": "x"}}}}),
            "spec.template.metadata.labels",
            "karpenter.sh/foo",
        );
        check(
            serde_json::json!({"template": {"spec": {"taints": [{"key": "k", "effect": "Never"}]}}}),
            "spec.template.spec.taints[0].effect",
            "Never",
        );
        check(serde_json::json!({"limits": {"cpu": "x1"}}), "spec.limits", "x1");
        check(
            serde_json::json!({"disruption": {"budgets": [{"nodes": "110%"}]}}),
            "spec.disruption.budgets[0].nodes",
            "110%",
        );
        check(
            serde_json::json!({"disruption": {"budgets": [{"nodes": "1", "schedule": "@daily"}]}}),
            "spec.disruption.budgets[0]",
            "together",
        );
        check(
            serde_json::json!({"disruption": {"budgets": [{"nodes": "1", "schedule": "every day", "duration": "1h"}]}}),
            "spec.disruption.budgets[0].schedule",
            "every day",
        );
        check(
            serde_json::json!({"template": {"spec": {"nodeClassRef": {"name": ""}}}}),
            "spec.template.spec.nodeClassRef.name",
            "empty",
        );
        // Durations fail at deserialization, naming the field.
        let mut spec = minimal();
        spec["disruption"] = serde_json::json!({"consolidateAfter": "soon"});
        let e = serde_json::from_value::<NodePool>(serde_json::json!({
            "apiVersion": "karpenter.sh/v1", "kind": "NodePool", "metadata": {"name": "x"}, "spec": spec,
        }))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("spec.disruption.consolidateAfter") && e.contains("soon"),
            "{e}"
        );
    }

    #[test]
    fn budgets_convert_to_spot_core() {
        let mut spec = minimal();
        spec["disruption"] = serde_json::json!({"budgets": [
            {"nodes": "0", "schedule": "0 9 * * *", "duration": "8h", "reasons": ["Drifted"]},
            {"nodes": "20%"},
        ]});
        let budgets = pool(spec).budgets().unwrap();
        let at = |h: u8| {
            time::macros::datetime!(2025-01-01 00:00 UTC)
                .replace_hour(h)
                .unwrap()
        };
        use spot_core::disruption::Reason;
        // 20% of 10 nodes, rounded up; the Drifted budget closes the window 09:00-17:00.
        assert_eq!(budgets.allowed(Reason::Underutilized, 10, 0, at(10)), 2);
        assert_eq!(budgets.allowed(Reason::Drifted, 10, 0, at(10)), 0);
        assert_eq!(budgets.allowed(Reason::Drifted, 10, 1, at(20)), 1);
    }

    #[test]
    fn rebalance_policy_defaults_limits_and_errors() {
        let p = pool(minimal());
        assert_eq!(p.spec.disruption.rebalance.policy, RebalancePolicy::Event);
        assert_eq!(p.rebalance_limit(40).unwrap(), 1);
        let json = serde_json::to_value(&p).unwrap();
        assert!(
            json["spec"]["disruption"].get("rebalance").is_none(),
            "the default is not written: {json}"
        );
        let mut spec = minimal();
        spec["disruption"] = serde_json::json!({"rebalance": {"policy": "Replace", "maxConcurrent": "10%"}});
        let p = pool(spec);
        p.validate().unwrap();
        assert_eq!(p.spec.disruption.rebalance.policy, RebalancePolicy::Replace);
        assert_eq!(p.rebalance_limit(11).unwrap(), 2, "10% of 11, rounded up");
        assert_eq!(p.rebalance_limit(0).unwrap(), 0);
        for bad in ["lots", "150%", "x%"] {
            let mut spec = minimal();
            spec["disruption"] = serde_json::json!({"rebalance": {"maxConcurrent": bad}});
            let e = pool(spec).validate().unwrap_err().to_string();
            assert!(
                e.contains("spec.disruption.rebalance.maxConcurrent") && e.contains(bad),
                "{e}"
            );
        }
    }

    #[test]
    fn template_hash_follows_the_template_not_the_requirements() {
        let base = pool(minimal());
        let hash = base.template_hash();
        assert_eq!(hash, pool(minimal()).template_hash(), "stable");
        let annotations = base.hash_annotations();
        assert_eq!(annotations["karpenter.sh/nodepool-hash"], hash);
        assert_eq!(annotations["karpenter.sh/nodepool-hash-version"], "v3");
        let mut spec = minimal();
        spec["template"]["spec"]["requirements"] =
            serde_json::json!([{"key": "kubernetes.io/arch", "operator": "In", "values": ["arm64"]}]);
        assert_eq!(
            pool(spec).template_hash(),
            hash,
            "requirements drift on their own"
        );
        let mut spec = minimal();
        spec["template"]["metadata"] = serde_json::json!({"labels": {"team": "b"}});
        assert_ne!(pool(spec).template_hash(), hash);
        let mut spec = minimal();
        spec["template"]["spec"]["expireAfter"] = serde_json::json!("24h");
        assert_ne!(pool(spec).template_hash(), hash);
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
}
