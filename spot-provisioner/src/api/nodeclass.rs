//! `SpotNodeClass` (`spot.dev/v1`): where and how instances launch. Both the EC2 launcher and
//! the simulated cloud read it: the zones (each with its subnet), the launch template, tags,
//! kubelet settings (which change what a node can allocate) and instance metadata options.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use spot_core::allocatable::AllocatableModel;
use spot_core::quantity::Quantity;

use super::Error;

/// The API group.
pub const GROUP: &str = "spot.dev";
/// The kind.
pub const KIND: &str = "SpotNodeClass";

/// Where and how instances launch.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "spot.dev",
    version = "v1",
    kind = "SpotNodeClass",
    plural = "spotnodeclasses",
    singular = "spotnodeclass",
    shortname = "snc",
    category = "karpenter",
    status = "SpotNodeClassStatus",
    derive = "PartialEq",
    doc = "Where and how instances launch: zones and subnets, launch template, tags, kubelet and metadata options.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct SpotNodeClassSpec {
    /// The zones instances may launch in, each with the subnet to use there.
    #[schemars(length(min = 1, max = 64))]
    pub zones: Vec<ZoneSubnet>,
    /// The EC2 launch template (AMI, security groups, user data, instance profile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_template: Option<LaunchTemplateRef>,
    /// Tags for instances and volumes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Kubelet settings, which also change what a node can allocate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubelet: Option<KubeletConfiguration>,
    /// Instance metadata service options.
    #[serde(default)]
    pub metadata_options: MetadataOptions,
}

/// A zone and the subnet instances launch into there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ZoneSubnet {
    /// The availability zone (`us-east-1a`).
    #[schemars(length(min = 1))]
    pub zone: String,
    /// The subnet id (`subnet-0123...`); EC2 needs one, the simulated cloud does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_id: Option<String>,
}

/// An EC2 launch template, by name or by id (exactly one).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LaunchTemplateRef {
    /// The launch template's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The launch template's id (`lt-0123...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The version (`$Default`, `$Latest` or a number), default `$Default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// The kubelet settings Karpenter's `EC2NodeClass.spec.kubelet` has that change scheduling.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubeletConfiguration {
    /// `--max-pods`, replacing the ENI-based pod density.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_pods: Option<i32>,
    /// `--pods-per-core`: at most this many pods per vCPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub pods_per_core: Option<i32>,
    /// `--kube-reserved` (`cpu`, `memory`, `ephemeral-storage`), replacing the computed
    /// amounts per entry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub kube_reserved: BTreeMap<String, String>,
    /// `--system-reserved` (`cpu`, `memory`, `ephemeral-storage`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub system_reserved: BTreeMap<String, String>,
    /// `--eviction-hard` (`memory.available` as a quantity, `nodefs.available` as a
    /// percentage).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub eviction_hard: BTreeMap<String, String>,
}

/// Instance metadata service options; the defaults are Karpenter's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetadataOptions {
    /// `enabled` (default) or `disabled`.
    #[serde(default = "enabled")]
    #[schemars(extend("enum" = ["enabled", "disabled"]))]
    pub http_endpoint: String,
    /// `disabled` (default) or `enabled`.
    #[serde(default = "disabled", rename = "httpProtocolIPv6")]
    #[schemars(extend("enum" = ["enabled", "disabled"]))]
    pub http_protocol_ipv6: String,
    /// The hop limit of IMDS responses, 1 to 64, default 1 (containers cannot reach IMDS).
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 64))]
    pub http_put_response_hop_limit: i64,
    /// `required` (default: IMDSv2 only) or `optional`.
    #[serde(default = "required")]
    #[schemars(extend("enum" = ["required", "optional"]))]
    pub http_tokens: String,
}

fn enabled() -> String {
    "enabled".to_owned()
}
fn disabled() -> String {
    "disabled".to_owned()
}
fn required() -> String {
    "required".to_owned()
}
fn one() -> i64 {
    1
}

impl Default for MetadataOptions {
    fn default() -> Self {
        MetadataOptions {
            http_endpoint: enabled(),
            http_protocol_ipv6: disabled(),
            http_put_response_hop_limit: one(),
            http_tokens: required(),
        }
    }
}

/// What the controller resolved.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpotNodeClassStatus {
    /// Ready and the reasons it is not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl SpotNodeClass {
    fn class_name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }

    /// The zones, in the order given.
    pub fn zones(&self) -> Vec<String> {
        self.spec.zones.iter().map(|z| z.zone.clone()).collect()
    }

    /// The subnet of a zone, if the class has that zone and a subnet for it.
    pub fn subnet(&self, zone: &str) -> Option<&str> {
        self.spec
            .zones
            .iter()
            .find(|z| z.zone == zone)
            .and_then(|z| z.subnet_id.as_deref())
    }

    /// Checks the fields the schema cannot: a zone at most once, a launch template by name or
    /// id (not both), metadata option values, and that the kubelet settings parse.
    pub fn validate(&self) -> Result<(), Error> {
        let name = self.class_name();
        let invalid = |field: String, value: String, reason: &str| {
            Error::invalid(KIND, name, field, value, reason.to_owned())
        };
        if self.spec.zones.is_empty() {
            return Err(invalid(
                "spec.zones".into(),
                String::new(),
                "at least one zone is needed",
            ));
        }
        for (i, z) in self.spec.zones.iter().enumerate() {
            if spot_core::labels::region_of_zone(&z.zone).is_none() {
                return Err(invalid(
                    format!("spec.zones[{i}].zone"),
                    z.zone.clone(),
                    "not an availability zone name such as us-east-1a",
                ));
            }
            if self.spec.zones[..i].iter().any(|o| o.zone == z.zone) {
                return Err(invalid(
                    format!("spec.zones[{i}].zone"),
                    z.zone.clone(),
                    "the zone is listed twice",
                ));
            }
        }
        if let Some(lt) = &self.spec.launch_template
            && lt.name.is_some() == lt.id.is_some()
        {
            return Err(invalid(
                "spec.launchTemplate".into(),
                format!("name={:?} id={:?}", lt.name, lt.id),
                "give the launch template's name or its id, not both",
            ));
        }
        let m = &self.spec.metadata_options;
        for (field, value, allowed) in [
            ("httpEndpoint", &m.http_endpoint, ["enabled", "disabled"]),
            ("httpProtocolIPv6", &m.http_protocol_ipv6, ["enabled", "disabled"]),
            ("httpTokens", &m.http_tokens, ["required", "optional"]),
        ] {
            if !allowed.contains(&value.as_str()) {
                return Err(invalid(
                    format!("spec.metadataOptions.{field}"),
                    value.clone(),
                    &format!("expected {} or {}", allowed[0], allowed[1]),
                ));
            }
        }
        if !(1..=64).contains(&m.http_put_response_hop_limit) {
            return Err(invalid(
                "spec.metadataOptions.httpPutResponseHopLimit".into(),
                m.http_put_response_hop_limit.to_string(),
                "must be between 1 and 64",
            ));
        }
        self.allocatable_model(&AllocatableModel::default()).map(|_| ())
    }

    /// `base` with this class's kubelet settings applied: `maxPods`, `podsPerCore`,
    /// `kubeReserved`, `systemReserved` and the `memory.available` / `nodefs.available` hard
    /// eviction thresholds. Errors name the field and the value.
    pub fn allocatable_model(&self, base: &AllocatableModel) -> Result<AllocatableModel, Error> {
        let mut model = base.clone();
        let Some(k) = &self.spec.kubelet else {
            return Ok(model);
        };
        let name = self.class_name();
        let invalid =
            |field: String, value: String, reason: String| Error::invalid(KIND, name, field, value, reason);
        if let Some(n) = k.max_pods {
            let n = u32::try_from(n).ok().filter(|n| *n > 0).ok_or_else(|| {
                invalid(
                    "spec.kubelet.maxPods".into(),
                    n.to_string(),
                    "must be at least 1".into(),
                )
            })?;
            model.max_pods = Some(n);
        }
        if let Some(n) = k.pods_per_core {
            let n = u32::try_from(n).map_err(|_| {
                invalid(
                    "spec.kubelet.podsPerCore".into(),
                    n.to_string(),
                    "must not be negative".into(),
                )
            })?;
            model.pods_per_core = (n > 0).then_some(n);
        }
        let amount = |field: &str, key: &str, value: &str, millis: bool| -> Result<u64, Error> {
            let q: Quantity = value.parse().map_err(|e: spot_core::quantity::Error| {
                invalid(format!("{field}.{key}"), value.into(), e.to_string())
            })?;
            let n = if millis {
                q.to_millis().unwrap_or(i64::MAX)
            } else {
                q.to_value()
            };
            u64::try_from(n).map_err(|_| {
                invalid(
                    format!("{field}.{key}"),
                    value.into(),
                    "must not be negative".into(),
                )
            })
        };
        for (key, value) in &k.kube_reserved {
            let field = "spec.kubelet.kubeReserved";
            match key.as_str() {
                "cpu" => model.kube_reserved.cpu_millis = Some(amount(field, key, value, true)?),
                "memory" => model.kube_reserved.memory_bytes = Some(amount(field, key, value, false)?),
                "ephemeral-storage" => {
                    model.kube_reserved.ephemeral_bytes = Some(amount(field, key, value, false)?);
                }
                "pid" => {}
                other => {
                    return Err(invalid(
                        field.into(),
                        other.into(),
                        "expected cpu, memory, ephemeral-storage or pid".into(),
                    ));
                }
            }
        }
        for (key, value) in &k.system_reserved {
            let field = "spec.kubelet.systemReserved";
            match key.as_str() {
                "cpu" => model.system_reserved.cpu_millis = amount(field, key, value, true)?,
                "memory" => model.system_reserved.memory_bytes = amount(field, key, value, false)?,
                "ephemeral-storage" => {
                    model.system_reserved.ephemeral_bytes = amount(field, key, value, false)?
                }
                "pid" => {}
                other => {
                    return Err(invalid(
                        field.into(),
                        other.into(),
                        "expected cpu, memory, ephemeral-storage or pid".into(),
                    ));
                }
            }
        }
        for (key, value) in &k.eviction_hard {
            let field = "spec.kubelet.evictionHard";
            match key.as_str() {
                "memory.available" if value.ends_with('%') => {
                    return Err(invalid(
                        format!("{field}.{key}"),
                        value.clone(),
                        "a percentage of memory.available is not supported; give a quantity such as 100Mi"
                            .into(),
                    ));
                }
                "memory.available" => model.eviction_memory_bytes = amount(field, key, value, false)?,
                "nodefs.available" => {
                    let pct = value
                        .strip_suffix('%')
                        .and_then(|p| p.parse::<f64>().ok())
                        .filter(|p| (0.0..=100.0).contains(p))
                        .ok_or_else(|| {
                            invalid(
                                format!("{field}.{key}"),
                                value.clone(),
                                "expected a percentage such as 10%".into(),
                            )
                        })?;
                    model.eviction_ephemeral_percent = pct;
                }
                "nodefs.inodesFree" | "imagefs.available" | "imagefs.inodesFree" | "pid.available" => {}
                other => {
                    return Err(invalid(
                        field.into(),
                        other.into(),
                        "expected memory.available, nodefs.available, nodefs.inodesFree, imagefs.available, imagefs.inodesFree or pid.available"
                            .into(),
                    ));
                }
            }
        }
        Ok(model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(spec: serde_json::Value) -> SpotNodeClass {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "spot.dev/v1", "kind": "SpotNodeClass", "metadata": {"name": "default"}, "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn defaults_and_accessors() {
        let c = class(
            serde_json::json!({"zones": [{"zone": "us-east-1a", "subnetId": "subnet-1"}, {"zone": "us-east-1b"}]}),
        );
        assert_eq!(c.spec.metadata_options, MetadataOptions::default());
        assert_eq!(c.spec.metadata_options.http_tokens, "required");
        assert_eq!(c.spec.metadata_options.http_put_response_hop_limit, 1);
        assert_eq!(c.zones(), ["us-east-1a", "us-east-1b"]);
        assert_eq!(c.subnet("us-east-1a"), Some("subnet-1"));
        assert_eq!(c.subnet("us-east-1b"), None);
        c.validate().unwrap();
        assert_eq!(
            c.allocatable_model(&AllocatableModel::default()).unwrap(),
            AllocatableModel::default()
        );
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["spec"]["metadataOptions"]["httpProtocolIPv6"], "disabled");
    }

    #[test]
    fn kubelet_settings_change_the_allocatable_model() {
        let c = class(serde_json::json!({
            "zones": [{"zone": "us-east-1a"}],
            "launchTemplate": {"name": "nodes"},
            "kubelet": {"maxPods": 58, "podsPerCore": 0, "kubeReserved": {"cpu": "200m", "memory": "1Gi"},
                        "systemReserved": {"memory": "500Mi", "ephemeral-storage": "1Gi"},
                        "evictionHard": {"memory.available": "200Mi", "nodefs.available": "15%"}},
        }));
        c.validate().unwrap();
        let m = c.allocatable_model(&AllocatableModel::default()).unwrap();
        assert_eq!(m.max_pods, Some(58));
        assert_eq!(m.pods_per_core, None);
        assert_eq!(m.kube_reserved.cpu_millis, Some(200));
        assert_eq!(m.kube_reserved.memory_bytes, Some(1 << 30));
        assert_eq!(m.kube_reserved.ephemeral_bytes, None);
        assert_eq!(m.system_reserved.memory_bytes, 500 << 20);
        assert_eq!(m.system_reserved.ephemeral_bytes, 1 << 30);
        assert_eq!(m.eviction_memory_bytes, 200 << 20);
        assert_eq!(m.eviction_ephemeral_percent, 15.0);
    }

    #[test]
    fn validation_names_field_and_value() {
        let check = |spec: serde_json::Value, field: &str, value: &str| {
            let e = class(spec).validate().unwrap_err().to_string();
            assert!(e.contains(field) && e.contains(value), "{field} {value}: {e}");
        };
        check(serde_json::json!({"zones": []}), "spec.zones", "at least one");
        check(
            serde_json::json!({"zones": [{"zone": "moon"}]}),
            "spec.zones[0].zone",
            "moon",
        );
        check(
            serde_json::json!({"zones": [{"zone": "us-east-1a"}, {"zone": "us-east-1a"}]}),
            "spec.zones[1].zone",
            "twice",
        );
        let z = serde_json::json!([{"zone": "us-east-1a"}]);
        check(
            serde_json::json!({"zones": z, "launchTemplate": {"name": "a", "id": "lt-1"}}),
            "spec.launchTemplate",
            "lt-1",
        );
        check(
            serde_json::json!({"zones": z, "metadataOptions": {"httpTokens": "maybe"}}),
            "spec.metadataOptions.httpTokens",
            "maybe",
        );
        check(
            serde_json::json!({"zones": z, "metadataOptions": {"httpPutResponseHopLimit": 65}}),
            "httpPutResponseHopLimit",
            "65",
        );
        check(
            serde_json::json!({"zones": z, "kubelet": {"maxPods": 0}}),
            "spec.kubelet.maxPods",
            "0",
        );
        check(
            serde_json::json!({"zones": z, "kubelet": {"kubeReserved": {"cpu": "lots"}}}),
            "spec.kubelet.kubeReserved.cpu",
            "lots",
        );
        check(
            serde_json::json!({"zones": z, "kubelet": {"systemReserved": {"gpu": "1"}}}),
            "spec.kubelet.systemReserved",
            "gpu",
        );
        check(
            serde_json::json!({"zones": z, "kubelet": {"evictionHard": {"memory.available": "5%"}}}),
            "spec.kubelet.evictionHard.memory.available",
            "5%",
        );
        check(
            serde_json::json!({"zones": z, "kubelet": {"evictionHard": {"nodefs.available": "1Gi"}}}),
            "spec.kubelet.evictionHard.nodefs.available",
            "1Gi",
        );
    }
}
