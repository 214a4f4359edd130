//! `NodeClaim` (`karpenter.sh/v1`): one node the provisioner decided to launch, from the
//! decision (spec: requirements, taints, requests) to the running node (status: provider id,
//! node name, capacity, conditions). Also the types NodeClaims share with NodePool templates.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Taint as KubeTaint;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use spot_core::node::{Taint, TaintEffect};
use spot_core::requirements::{NodeSelectorRequirement, Requirement, Requirements};
use spot_core::resources::Resources;

use super::Error;
use super::duration::{GoDuration, NillableDuration, field_deserializers};

/// Condition types of a NodeClaim's status.
pub mod conditions {
    /// The cloud provider created the instance.
    pub const LAUNCHED: &str = "Launched";
    /// The instance joined the cluster as a Node.
    pub const REGISTERED: &str = "Registered";
    /// The Node is Ready, its startup taints are gone and its resources are registered.
    pub const INITIALIZED: &str = "Initialized";
    /// The node may be consolidated (its `consolidateAfter` has passed since the last pod
    /// event).
    pub const CONSOLIDATABLE: &str = "Consolidatable";
    /// The node no longer matches its NodePool or node class.
    pub const DRIFTED: &str = "Drifted";
    /// The node's pods were evicted.
    pub const DRAINED: &str = "Drained";
    /// Why the node is being disrupted (`Underutilized`, `Empty`, `Drifted`, `Expired`).
    pub const DISRUPTION_REASON: &str = "DisruptionReason";
    /// All three lifecycle conditions hold (Launched, Registered, Initialized).
    pub const READY: &str = "Ready";
}

/// `expireAfter` when none is given: 30 days.
pub const DEFAULT_EXPIRE_AFTER: NillableDuration =
    NillableDuration::After(std::time::Duration::from_secs(720 * 3600));

pub(crate) fn default_expire_after() -> NillableDuration {
    DEFAULT_EXPIRE_AFTER
}

field_deserializers! {
    claim_expire_after: NillableDuration = "spec.expireAfter";
    claim_termination_grace_period: Option<GoDuration> = "spec.terminationGracePeriod";
}

/// The schema of a Kubernetes `ResourceList` (`cpu: "2"`, `memory: 4Gi`, `nodes: 10`).
pub(crate) fn resource_list_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "additionalProperties": {
            "pattern": "^(\\+|-)?(([0-9]+(\\.[0-9]*)?)|(\\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\\+|-)?(([0-9]+(\\.[0-9]*)?)|(\\.[0-9]+))))?$",
            "x-kubernetes-int-or-string": true,
        },
    })
}

/// A Kubernetes `ResourceList` as a [`Resources`] vector; errors name `field`.
pub fn resources_of(
    list: &BTreeMap<String, Quantity>,
    kind: &'static str,
    name: &str,
    field: &str,
) -> Result<Resources, Error> {
    Resources::from_pairs(list.iter().map(|(k, v)| (k.as_str(), v.0.as_str()))).map_err(|e| {
        let value = match &e {
            spot_core::resources::Error::Quantity { name, .. }
            | spot_core::resources::Error::Negative { name, .. }
            | spot_core::resources::Error::NotWhole { name, .. }
            | spot_core::resources::Error::TooLarge { name, .. } => {
                list.get(name).map(|q| q.0.clone()).unwrap_or_default()
            }
            _ => String::new(),
        };
        Error::invalid(kind, name, field, value, e.to_string())
    })
}

/// The operator of a [`NodeSelectorRequirementWithMinValues`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum RequirementOperator {
    /// The label has one of the values.
    In,
    /// The label is absent or has none of the values.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
    /// The label is an integer greater than the value.
    Gt,
    /// The label is an integer less than the value.
    Lt,
    /// The label is an integer greater than or equal to the value.
    Gte,
    /// The label is an integer less than or equal to the value.
    Lte,
}

impl RequirementOperator {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RequirementOperator::In => "In",
            RequirementOperator::NotIn => "NotIn",
            RequirementOperator::Exists => "Exists",
            RequirementOperator::DoesNotExist => "DoesNotExist",
            RequirementOperator::Gt => "Gt",
            RequirementOperator::Lt => "Lt",
            RequirementOperator::Gte => "Gte",
            RequirementOperator::Lte => "Lte",
        }
    }
}

/// A node selector requirement with Karpenter's `minValues`: at least that many distinct
/// values of the key must stay possible among the instance types a NodeClaim may launch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeSelectorRequirementWithMinValues {
    /// The label key.
    #[schemars(length(max = 316))]
    pub key: String,
    /// The relation between the label and the values.
    pub operator: RequirementOperator,
    /// The values: several for `In`/`NotIn`, none for `Exists`/`DoesNotExist`, one integer for
    /// `Gt`, `Lt`, `Gte`, `Lte`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub values: Vec<String>,
    /// At least this many distinct values of the key must stay possible (1 to 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 50))]
    pub min_values: Option<i32>,
}

impl NodeSelectorRequirementWithMinValues {
    /// A requirement without `minValues`.
    pub fn new(key: &str, operator: RequirementOperator, values: &[&str]) -> Self {
        NodeSelectorRequirementWithMinValues {
            key: key.to_owned(),
            operator,
            values: values.iter().map(|v| (*v).to_owned()).collect(),
            min_values: None,
        }
    }

    /// The requirement in spot-core's algebra. `Gte n` becomes `Gt n-1` and `Lte n`
    /// becomes `Lt n+1` (the label values are integers). Errors name `field`.
    pub fn to_requirement(&self, kind: &'static str, name: &str, field: &str) -> Result<Requirement, Error> {
        let invalid = |reason: String| Error::invalid(kind, name, field, self.values.join(","), reason);
        let (operator, values) = match self.operator {
            RequirementOperator::Gte | RequirementOperator::Lte => {
                let bound = match self.values.as_slice() {
                    [v] => v.parse::<i64>().ok(),
                    _ => None,
                };
                let Some(bound) = bound else {
                    return Err(invalid(format!(
                        "key {:?}: operator {} takes exactly one integer value",
                        self.key,
                        self.operator.as_str()
                    )));
                };
                if self.operator == RequirementOperator::Gte {
                    ("Gt", vec![bound.saturating_sub(1).to_string()])
                } else {
                    ("Lt", vec![bound.saturating_add(1).to_string()])
                }
            }
            op => (op.as_str(), self.values.clone()),
        };
        let min_values = match self.min_values {
            None => None,
            Some(m) => Some(u32::try_from(m).map_err(|_| {
                Error::invalid(
                    kind,
                    name,
                    format!("{field}.minValues"),
                    m.to_string(),
                    "minValues must be between 1 and 50".to_owned(),
                )
            })?),
        };
        if let Some(m) = min_values
            && !(1..=50).contains(&m)
        {
            return Err(Error::invalid(
                kind,
                name,
                format!("{field}.minValues"),
                m.to_string(),
                "minValues must be between 1 and 50".to_owned(),
            ));
        }
        let selector = NodeSelectorRequirement {
            key: self.key.clone(),
            operator: operator.to_owned(),
            values,
            min_values,
        };
        Requirement::from_node_selector(&selector).map_err(|e| invalid(e.to_string()))
    }
}

/// Converts a requirement list; each error names its index under `field`.
pub fn requirements_of(
    list: &[NodeSelectorRequirementWithMinValues],
    kind: &'static str,
    name: &str,
    field: &str,
) -> Result<Requirements, Error> {
    let mut out = Requirements::new();
    for (i, r) in list.iter().enumerate() {
        out.add(r.to_requirement(kind, name, &format!("{field}[{i}]"))?);
    }
    Ok(out)
}

/// A Kubernetes taint as spot-core's [`Taint`]; errors name `field`.
pub fn taint_of(taint: &KubeTaint, kind: &'static str, name: &str, field: &str) -> Result<Taint, Error> {
    let effect = taint.effect.parse::<TaintEffect>().map_err(|e| {
        Error::invalid(
            kind,
            name,
            format!("{field}.effect"),
            taint.effect.clone(),
            e.to_string(),
        )
    })?;
    if taint.key.is_empty() {
        return Err(Error::invalid(
            kind,
            name,
            format!("{field}.key"),
            String::new(),
            "a taint needs a key".to_owned(),
        ));
    }
    Ok(Taint {
        key: taint.key.clone(),
        value: taint.value.clone().filter(|v| !v.is_empty()),
        effect,
    })
}

/// Converts a taint list; each error names its index under `field`.
pub fn taints_of(
    list: &[KubeTaint],
    kind: &'static str,
    name: &str,
    field: &str,
) -> Result<Vec<Taint>, Error> {
    list.iter()
        .enumerate()
        .map(|(i, t)| taint_of(t, kind, name, &format!("{field}[{i}]")))
        .collect()
}

/// The node class a NodeClaim launches with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NodeClassReference {
    /// The API group of the node class (`spot.dev`).
    #[schemars(length(min = 1))]
    pub group: String,
    /// The kind of the node class (`SpotNodeClass`).
    #[schemars(length(min = 1))]
    pub kind: String,
    /// The name of the node class.
    #[schemars(length(min = 1))]
    pub name: String,
}

impl NodeClassReference {
    /// A reference to the [`SpotNodeClass`](super::nodeclass::SpotNodeClass) `name`.
    pub fn spot(name: &str) -> Self {
        NodeClassReference {
            group: super::nodeclass::GROUP.to_owned(),
            kind: super::nodeclass::KIND.to_owned(),
            name: name.to_owned(),
        }
    }
}

/// The resources a NodeClaim needs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ResourceRequirements {
    /// The pods' requests plus the DaemonSet overhead.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "resource_list_schema")]
    pub requests: BTreeMap<String, Quantity>,
}

/// A node the provisioner launches: what it must satisfy, and what became of it.
// kube's printcolumn(...) repeats `type_ = "string"`, which clippy takes for a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "karpenter.sh",
    version = "v1",
    kind = "NodeClaim",
    plural = "nodeclaims",
    singular = "nodeclaim",
    category = "karpenter",
    shortname = "nc",
    status = "NodeClaimStatus",
    derive = "PartialEq",
    doc = "A node the provisioner launches: what it must satisfy, and what became of it.",
    printcolumn(
        name = "Type",
        type_ = "string",
        json_path = ".metadata.labels.node\\.kubernetes\\.io/instance-type"
    ),
    printcolumn(
        name = "Capacity",
        type_ = "string",
        json_path = ".metadata.labels.karpenter\\.sh/capacity-type"
    ),
    printcolumn(
        name = "Zone",
        type_ = "string",
        json_path = ".metadata.labels.topology\\.kubernetes\\.io/zone"
    ),
    printcolumn(name = "Node", type_ = "string", json_path = ".status.nodeName"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(name = "ID", type_ = "string", json_path = ".status.providerID", priority = 1),
    printcolumn(
        name = "NodePool",
        type_ = "string",
        json_path = ".metadata.labels.karpenter\\.sh/nodepool",
        priority = 1
    ),
    printcolumn(
        name = "NodeClass",
        type_ = "string",
        json_path = ".spec.nodeClassRef.name",
        priority = 1
    )
)]
#[serde(rename_all = "camelCase")]
pub struct NodeClaimSpec {
    /// Taints the node gets at registration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<KubeTaint>,
    /// Taints some other component removes once the node is ready for pods; the scheduler
    /// ignores them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub startup_taints: Vec<KubeTaint>,
    /// What the instance must satisfy (instance types, zones, capacity types, ...).
    #[schemars(length(max = 100))]
    pub requirements: Vec<NodeSelectorRequirementWithMinValues>,
    /// The resources the node must offer.
    #[serde(default)]
    pub resources: ResourceRequirements,
    /// The node class to launch with.
    pub node_class_ref: NodeClassReference,
    /// How long a draining node waits for its pods before it is forcibly terminated.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "claim_termination_grace_period"
    )]
    pub termination_grace_period: Option<GoDuration>,
    /// How long the node lives before it is replaced (`Never` to keep it), default `720h`.
    #[serde(default = "default_expire_after", deserialize_with = "claim_expire_after")]
    pub expire_after: NillableDuration,
}

/// What became of a NodeClaim.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeClaimStatus {
    /// The Node's name, once registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// The cloud provider's id of the instance (`aws:///us-east-1a/i-...`).
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "providerID")]
    pub provider_id: Option<String>,
    /// The image the instance runs.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "imageID")]
    pub image_id: Option<String>,
    /// The instance's capacity.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "resource_list_schema")]
    pub capacity: BTreeMap<String, Quantity>,
    /// What pods can use.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "resource_list_schema")]
    pub allocatable: BTreeMap<String, Quantity>,
    /// When a pod last started or stopped on the node (consolidation waits
    /// `consolidateAfter` from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_pod_event_time: Option<Time>,
    /// Launched, Registered, Initialized, Ready, Consolidatable, Drifted, Drained,
    /// DisruptionReason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl NodeClaimStatus {
    /// The condition of that type, if set.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    /// Whether the condition of that type is `True`.
    pub fn is_true(&self, type_: &str) -> bool {
        self.condition(type_).is_some_and(|c| c.status == "True")
    }
}

impl NodeClaim {
    /// The requirements in spot-core's algebra (errors name the field).
    pub fn requirements(&self) -> Result<Requirements, Error> {
        requirements_of(
            &self.spec.requirements,
            "NodeClaim",
            &self.name(),
            "spec.requirements",
        )
    }

    /// `spec.resources.requests` as [`Resources`].
    pub fn requests(&self) -> Result<Resources, Error> {
        resources_of(
            &self.spec.resources.requests,
            "NodeClaim",
            &self.name(),
            "spec.resources.requests",
        )
    }

    /// The taints and the startup taints.
    pub fn taints(&self) -> Result<(Vec<Taint>, Vec<Taint>), Error> {
        let name = self.name();
        Ok((
            taints_of(&self.spec.taints, "NodeClaim", &name, "spec.taints")?,
            taints_of(
                &self.spec.startup_taints,
                "NodeClaim",
                &name,
                "spec.startupTaints",
            )?,
        ))
    }

    fn name(&self) -> Cow<'_, str> {
        Cow::Borrowed(self.metadata.name.as_deref().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spot_core::requirements::Operator;

    #[test]
    fn deserializes_with_defaults_and_converts() {
        let claim: NodeClaim = serde_json::from_value(serde_json::json!({
            "apiVersion": "karpenter.sh/v1", "kind": "NodeClaim",
            "metadata": {"name": "default-abcde"},
            "spec": {
                "requirements": [
                    {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": ["m5.large", "c5.large"], "minValues": 2},
                    {"key": "karpenter.k8s.aws/instance-cpu", "operator": "Gte", "values": ["4"]},
                    {"key": "karpenter.k8s.aws/instance-memory", "operator": "Lte", "values": ["8192"]},
                ],
                "resources": {"requests": {"cpu": "1500m", "memory": "2Gi", "pods": "3"}},
                "nodeClassRef": {"group": "spot.dev", "kind": "SpotNodeClass", "name": "default"},
                "startupTaints": [{"key": "node.cilium.io/agent-not-ready", "value": "true", "effect": "NoExecute"}],
            },
            "status": {"providerID": "aws:///us-east-1a/i-0123", "conditions": [
                {"type": "Launched", "status": "True", "reason": "Launched", "message": "", "lastTransitionTime": "2025-01-01T00:00:00Z"}
            ]},
        }))
        .unwrap();
        assert_eq!(claim.spec.expire_after, DEFAULT_EXPIRE_AFTER);
        assert_eq!(claim.spec.termination_grace_period, None);
        let reqs = claim.requirements().unwrap();
        let it = reqs.get("node.kubernetes.io/instance-type").unwrap();
        assert_eq!(it.min_values(), Some(2));
        assert_eq!(it.operator(), Operator::In);
        let cpu = reqs.get("karpenter.k8s.aws/instance-cpu").unwrap();
        assert!(cpu.has("4") && !cpu.has("3"));
        let mem = reqs.get("karpenter.k8s.aws/instance-memory").unwrap();
        assert!(mem.has("8192") && !mem.has("8193"));
        assert_eq!(
            claim.requests().unwrap(),
            Resources::new(1500, 2 << 30).with_pods(3)
        );
        let (taints, startup) = claim.taints().unwrap();
        assert!(taints.is_empty());
        assert_eq!(startup[0].effect, TaintEffect::NoExecute);
        let status = claim.status.as_ref().unwrap();
        assert!(status.is_true(conditions::LAUNCHED));
        assert!(!status.is_true(conditions::REGISTERED));
        // Round trip.
        let back: NodeClaim = serde_json::from_value(serde_json::to_value(&claim).unwrap()).unwrap();
        assert_eq!(back, claim);
    }

    #[test]
    fn errors_name_the_field_and_value() {
        let mut claim = NodeClaim::new(
            "c",
            NodeClaimSpec {
                taints: vec![KubeTaint {
                    key: "k".into(),
                    effect: "Sometimes".into(),
                    ..KubeTaint::default()
                }],
                startup_taints: vec![],
                requirements: vec![NodeSelectorRequirementWithMinValues::new(
                    "karpenter.k8s.aws/instance-cpu",
                    RequirementOperator::Gte,
                    &["four"],
                )],
                resources: ResourceRequirements {
                    requests: [("cpu".to_owned(), Quantity("lots".into()))].into(),
                },
                node_class_ref: NodeClassReference::spot("default"),
                termination_grace_period: None,
                expire_after: DEFAULT_EXPIRE_AFTER,
            },
        );
        let e = claim.requirements().unwrap_err().to_string();
        assert!(e.contains("spec.requirements[0]") && e.contains("four"), "{e}");
        let e = claim.requests().unwrap_err().to_string();
        assert!(e.contains("spec.resources.requests") && e.contains("lots"), "{e}");
        let e = claim.taints().unwrap_err().to_string();
        assert!(
            e.contains("spec.taints[0].effect") && e.contains("Sometimes"),
            "{e}"
        );
        claim.spec.requirements[0] = NodeSelectorRequirementWithMinValues {
            min_values: Some(0),
            ..NodeSelectorRequirementWithMinValues::new("k", RequirementOperator::Exists, &[])
        };
        let e = claim.requirements().unwrap_err().to_string();
        assert!(e.contains("spec.requirements[0].minValues"), "{e}");
        let bad = serde_json::from_value::<NodeClaim>(serde_json::json!({
            "apiVersion": "karpenter.sh/v1", "kind": "NodeClaim", "metadata": {"name": "x"},
            "spec": {"requirements": [], "nodeClassRef": {"group": "g", "kind": "k", "name": "n"}, "expireAfter": "30 days"},
        }))
        .unwrap_err()
        .to_string();
        assert!(
            bad.contains("spec.expireAfter") && bad.contains("30 days"),
            "{bad}"
        );
    }
}
