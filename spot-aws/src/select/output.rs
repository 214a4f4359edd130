//! Renderers for selected instance types: plain lists, tables, JSON, and the YAML of a
//! Karpenter `NodePool` or of kOps `InstanceGroup`s.

use std::collections::BTreeMap;
use std::str::FromStr;

use serde::Serialize;
use spot_core::instance_type::CapacityType;
use spot_core::select::Selected;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Serializing JSON failed.
    #[error("cannot serialize JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Serializing YAML failed.
    #[error("cannot serialize YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
    /// An unknown spot allocation strategy.
    #[error(
        "invalid spot allocation strategy {0:?}: expected price-capacity-optimized or capacity-optimized"
    )]
    Strategy(String),
}

/// One type per line.
pub fn simple(items: &[Selected]) -> String {
    items
        .iter()
        .map(|s| format!("{}\n", s.instance_type.name))
        .collect()
}

/// Names separated by commas, one line.
pub fn one_line(items: &[Selected]) -> String {
    let names: Vec<&str> = items.iter().map(|s| s.instance_type.name.as_str()).collect();
    format!("{}\n", names.join(","))
}

/// A number with at most three decimals and no trailing zeros (`4`, `0.5`, `3.75`).
fn number(value: f64) -> String {
    let text = format!("{value:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn price(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_owned(), |p| format!("${p:.4}"))
}

fn render_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let parts: Vec<String> = cells.zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    line(&mut rule.iter().map(String::as_str));
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// Instance type, vCPUs and memory.
pub fn table(items: &[Selected]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|s| {
            let t = &s.instance_type;
            vec![t.name.clone(), t.vcpus.to_string(), number(t.memory_gib())]
        })
        .collect();
    render_table(&["Instance Type", "VCPUs", "Mem (GiB)"], &rows)
}

/// Every attribute the selector filters on, with prices and zones.
pub fn table_wide(items: &[Selected]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|s| {
            let t = &s.instance_type;
            let archs: Vec<&str> = t.architectures.iter().map(|a| a.as_ec2()).collect();
            let gpu_info = if t.gpus == 0 {
                "none".to_owned()
            } else {
                format!("{} {}", t.gpu_manufacturer, t.gpu_model)
            };
            vec![
                t.name.clone(),
                t.vcpus.to_string(),
                number(t.memory_gib()),
                if t.hypervisor.is_empty() {
                    "none".to_owned()
                } else {
                    t.hypervisor.clone()
                },
                t.current_generation.to_string(),
                t.burstable.to_string(),
                archs.join(","),
                number(t.network_gbps),
                t.max_enis.to_string(),
                t.gpus.to_string(),
                number(t.gpu_memory_gib()),
                gpu_info,
                s.zones.len().to_string(),
                price(s.on_demand_price),
                price(s.spot_price),
                s.interruption_band
                    .map_or_else(|| "n/a".to_owned(), |b| interruption_label(b).to_owned()),
            ]
        })
        .collect();
    render_table(
        &[
            "Instance Type",
            "VCPUs",
            "Mem (GiB)",
            "Hypervisor",
            "Current Gen",
            "Burstable",
            "CPU Arch",
            "Network (Gbps)",
            "ENIs",
            "GPUs",
            "GPU Mem (GiB)",
            "GPU Info",
            "Zones",
            "On-Demand Price/Hr",
            "Spot Price/Hr",
            "Interruption",
        ],
        &rows,
    )
}

/// The Spot Advisor label of an interruption band.
pub fn interruption_label(band: u8) -> &'static str {
    match band {
        0 => "<5%",
        1 => "5-10%",
        2 => "10-15%",
        3 => "15-20%",
        _ => ">20%",
    }
}

/// One element of the `-o json` array.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JsonEntry {
    /// Name, such as `m5.large`.
    pub instance_type: String,
    /// Default vCPUs.
    pub vcpus: u32,
    /// Memory in GiB.
    pub memory_gib: f64,
    /// EC2 architecture names.
    pub architectures: Vec<String>,
    /// CPU manufacturer.
    pub cpu_manufacturer: String,
    /// GPU count.
    pub gpus: u32,
    /// Total GPU memory in GiB.
    pub gpu_memory_gib: f64,
    /// GPU manufacturer, empty when none.
    pub gpu_manufacturer: String,
    /// GPU model, empty when none.
    pub gpu_model: String,
    /// Hypervisor, empty on bare metal.
    pub hypervisor: String,
    /// Burstable performance.
    pub burstable: bool,
    /// Bare metal.
    pub bare_metal: bool,
    /// EC2's current-generation flag as recorded.
    pub current_generation: bool,
    /// Baseline network bandwidth in Gbps.
    pub network_gbps: f64,
    /// Maximum network interfaces.
    pub network_interfaces: u32,
    /// Local instance storage in GB.
    pub instance_storage_gb: u64,
    /// Region of the selection.
    pub region: String,
    /// On-demand USD per hour, `null` when unknown.
    pub ondemand_price_usd: Option<f64>,
    /// Lowest spot USD per hour over `zones`, `null` when unknown.
    pub spot_price_usd: Option<f64>,
    /// Spot interruption band 0..=4, `null` when unknown.
    pub interruption_band: Option<u8>,
    /// Zones that count for this selection.
    pub zones: Vec<String>,
}

impl From<&Selected> for JsonEntry {
    fn from(s: &Selected) -> Self {
        let t = &s.instance_type;
        JsonEntry {
            instance_type: t.name.clone(),
            vcpus: t.vcpus,
            memory_gib: t.memory_gib(),
            architectures: t.architectures.iter().map(|a| a.as_ec2().to_owned()).collect(),
            cpu_manufacturer: t.cpu_manufacturer.clone(),
            gpus: t.gpus,
            gpu_memory_gib: t.gpu_memory_gib(),
            gpu_manufacturer: t.gpu_manufacturer.clone(),
            gpu_model: t.gpu_model.clone(),
            hypervisor: t.hypervisor.clone(),
            burstable: t.burstable,
            bare_metal: t.bare_metal,
            current_generation: t.current_generation,
            network_gbps: t.network_gbps,
            network_interfaces: t.max_enis,
            instance_storage_gb: t.instance_storage_gb,
            region: s.region.clone(),
            ondemand_price_usd: s.on_demand_price.map(round6),
            spot_price_usd: s.spot_price.map(round6),
            interruption_band: s.interruption_band,
            zones: s.zones.clone(),
        }
    }
}

/// Rounds a price to 6 decimals, the precision of EC2's price lists.
fn round6(price: f64) -> f64 {
    (price * 1e6).round() / 1e6
}

/// A pretty JSON array of [`JsonEntry`].
pub fn json(items: &[Selected]) -> Result<String, Error> {
    let entries: Vec<JsonEntry> = items.iter().map(JsonEntry::from).collect();
    Ok(serde_json::to_string_pretty(&entries)? + "\n")
}

#[derive(Serialize)]
struct Requirement {
    key: &'static str,
    operator: &'static str,
    values: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Object<S> {
    api_version: &'static str,
    kind: &'static str,
    metadata: Metadata,
    spec: S,
}

#[derive(Serialize)]
struct Metadata {
    name: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct NodePoolSpec {
    template: NodeClaimTemplate,
}

#[derive(Serialize)]
struct NodeClaimTemplate {
    spec: NodeClaimSpec,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeClaimSpec {
    requirements: Vec<Requirement>,
    node_class_ref: NodeClassRef,
}

#[derive(Serialize)]
struct NodeClassRef {
    group: &'static str,
    kind: &'static str,
    name: &'static str,
}

/// Options of the Karpenter `NodePool` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePoolOptions {
    /// `metadata.name`.
    pub name: String,
    /// The `karpenter.sh/capacity-type` value.
    pub capacity_type: CapacityType,
    /// Zones for a `topology.kubernetes.io/zone` requirement (none when empty).
    pub zones: Vec<String>,
}

fn kubernetes_archs(items: &[Selected]) -> Vec<String> {
    let mut archs: Vec<String> = items
        .iter()
        .flat_map(|s| {
            s.instance_type
                .architectures
                .iter()
                .filter_map(|a| a.as_kubernetes())
        })
        .map(str::to_owned)
        .collect();
    archs.sort();
    archs.dedup();
    archs
}

fn names(items: &[Selected]) -> Vec<String> {
    items.iter().map(|s| s.instance_type.name.clone()).collect()
}

/// A Karpenter v1 `NodePool` restricted to the selected types, referring to the
/// `EC2NodeClass` named `default`.
pub fn nodepool(items: &[Selected], options: &NodePoolOptions) -> Result<String, Error> {
    let mut requirements = vec![
        Requirement {
            key: "node.kubernetes.io/instance-type",
            operator: "In",
            values: names(items),
        },
        Requirement {
            key: "karpenter.sh/capacity-type",
            operator: "In",
            values: vec![options.capacity_type.as_str().to_owned()],
        },
        Requirement {
            key: "kubernetes.io/arch",
            operator: "In",
            values: kubernetes_archs(items),
        },
    ];
    if !options.zones.is_empty() {
        requirements.push(Requirement {
            key: "topology.kubernetes.io/zone",
            operator: "In",
            values: options.zones.clone(),
        });
    }
    let pool = Object {
        api_version: "karpenter.sh/v1",
        kind: "NodePool",
        metadata: Metadata {
            name: options.name.clone(),
            labels: BTreeMap::new(),
        },
        spec: NodePoolSpec {
            template: NodeClaimTemplate {
                spec: NodeClaimSpec {
                    requirements,
                    node_class_ref: NodeClassRef {
                        group: "karpenter.k8s.aws",
                        kind: "EC2NodeClass",
                        name: "default",
                    },
                },
            },
        },
    };
    Ok(serde_yaml::to_string(&pool)?)
}

/// How an Auto Scaling group spreads spot capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SpotAllocationStrategy {
    /// `price-capacity-optimized` (the default, AWS's recommendation).
    #[default]
    PriceCapacityOptimized,
    /// `capacity-optimized` (what kOps writes).
    CapacityOptimized,
}

impl SpotAllocationStrategy {
    /// The Auto Scaling spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SpotAllocationStrategy::PriceCapacityOptimized => "price-capacity-optimized",
            SpotAllocationStrategy::CapacityOptimized => "capacity-optimized",
        }
    }
}

impl FromStr for SpotAllocationStrategy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "price-capacity-optimized" => Ok(SpotAllocationStrategy::PriceCapacityOptimized),
            "capacity-optimized" => Ok(SpotAllocationStrategy::CapacityOptimized),
            other => Err(Error::Strategy(other.to_owned())),
        }
    }
}

/// Options of the kOps `InstanceGroup` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceGroupOptions {
    /// Cluster name for the `kops.k8s.io/cluster` label, when known.
    pub cluster: Option<String>,
    /// `spec.minSize`.
    pub min_size: u32,
    /// `spec.maxSize`.
    pub max_size: u32,
    /// Spot adds `onDemandBase: 0`, `onDemandAboveBase: 0` and the allocation strategy;
    /// on-demand writes the instances only.
    pub capacity_type: CapacityType,
    /// `spotAllocationStrategy` for spot groups.
    pub spot_allocation_strategy: SpotAllocationStrategy,
    /// `spec.subnets` (kOps names subnets after zones); none when empty.
    pub subnets: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct InstanceGroupSpec {
    role: &'static str,
    machine_type: String,
    min_size: u32,
    max_size: u32,
    node_labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    subnets: Vec<String>,
    mixed_instances_policy: MixedInstancesPolicy,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MixedInstancesPolicy {
    instances: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    on_demand_base: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    on_demand_above_base: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spot_allocation_strategy: Option<&'static str>,
}

/// kOps `InstanceGroup` documents (separated by `---`), one per `(name, types)` group with
/// at least one type; `machineType` is the group's first type.
pub fn instance_groups(
    groups: &[(String, Vec<Selected>)],
    options: &InstanceGroupOptions,
) -> Result<String, Error> {
    let spot = options.capacity_type == CapacityType::Spot;
    let mut out = String::new();
    for (name, items) in groups.iter().filter(|(_, items)| !items.is_empty()) {
        let labels: BTreeMap<String, String> = options
            .cluster
            .iter()
            .map(|c| ("kops.k8s.io/cluster".to_owned(), c.clone()))
            .collect();
        let group = Object {
            api_version: "kops.k8s.io/v1alpha2",
            kind: "InstanceGroup",
            metadata: Metadata {
                name: name.clone(),
                labels,
            },
            spec: InstanceGroupSpec {
                role: "Node",
                machine_type: items[0].instance_type.name.clone(),
                min_size: options.min_size,
                max_size: options.max_size,
                node_labels: BTreeMap::from([("kops.k8s.io/instancegroup".to_owned(), name.clone())]),
                subnets: options.subnets.clone(),
                mixed_instances_policy: MixedInstancesPolicy {
                    instances: names(items),
                    on_demand_base: spot.then_some(0),
                    on_demand_above_base: spot.then_some(0),
                    spot_allocation_strategy: spot.then_some(options.spot_allocation_strategy.as_str()),
                },
            },
        };
        if !out.is_empty() {
            out.push_str("---\n");
        }
        out.push_str(&serde_yaml::to_string(&group)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use spot_core::instance_type::{Architecture, InstanceType};

    use super::*;

    fn sel(name: &str, vcpus: u32, memory_gib: u64, arch: Architecture) -> Selected {
        Selected {
            instance_type: InstanceType {
                architectures: vec![arch],
                max_enis: 3,
                ipv4_per_eni: 10,
                network_performance: "Up to 10 Gigabit".into(),
                network_gbps: 0.75,
                ..spot_core::catalog::synthetic_type(name, vcpus, memory_gib * 1024).unwrap()
            },
            region: "us-east-1".into(),
            zones: vec!["us-east-1a".into()],
            on_demand_price: Some(0.085),
            spot_price: None,
            interruption_band: Some(0),
        }
    }

    #[test]
    fn lists_and_tables() {
        let items = [
            sel("c5.large", 2, 4, Architecture::X86_64),
            sel("m6g.medium", 1, 4, Architecture::Arm64),
        ];
        assert_eq!(simple(&items), "c5.large\nm6g.medium\n");
        assert_eq!(one_line(&items), "c5.large,m6g.medium\n");
        assert_eq!(
            table(&items),
            "Instance Type  VCPUs  Mem (GiB)\n-------------  -----  ---------\nc5.large       2      4\nm6g.medium     1      4\n"
        );
        let wide = table_wide(&items);
        assert!(wide.lines().nth(2).unwrap().contains("$0.0850"), "{wide}");
        assert!(wide.lines().nth(2).unwrap().contains("n/a"), "{wide}");
        assert!(wide.lines().nth(2).unwrap().ends_with("<5%"), "{wide}");
        assert_eq!(number(0.5), "0.5");
        assert_eq!(number(3.75), "3.75");
        assert_eq!(number(12.0), "12");
    }

    #[test]
    fn nodepool_and_instance_groups_are_well_formed() {
        let items = vec![
            sel("c5.large", 2, 4, Architecture::X86_64),
            sel("m6g.large", 2, 8, Architecture::Arm64),
        ];
        let yaml = nodepool(
            &items,
            &NodePoolOptions {
                name: "pool".into(),
                capacity_type: CapacityType::Spot,
                zones: vec![],
            },
        )
        .unwrap();
        let v: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(v["apiVersion"].as_str(), Some("karpenter.sh/v1"));
        let reqs = v["spec"]["template"]["spec"]["requirements"]
            .as_sequence()
            .unwrap();
        assert_eq!(reqs.len(), 3);
        assert_eq!(
            reqs[2]["values"],
            serde_yaml::to_value(["amd64", "arm64"]).unwrap()
        );

        let options = InstanceGroupOptions {
            cluster: Some("k.example.com".into()),
            min_size: 1,
            max_size: 5,
            capacity_type: CapacityType::OnDemand,
            spot_allocation_strategy: SpotAllocationStrategy::CapacityOptimized,
            subnets: vec![],
        };
        let groups = vec![
            ("a1".to_owned(), items.clone()),
            ("a2".to_owned(), vec![]),
            ("a3".to_owned(), items),
        ];
        let yaml = instance_groups(&groups, &options).unwrap();
        assert_eq!(
            yaml.matches("---\n").count(),
            1,
            "empty groups are skipped:\n{yaml}"
        );
        let first: serde_yaml::Value = serde_yaml::from_str(yaml.split("---\n").next().unwrap()).unwrap();
        let policy = &first["spec"]["mixedInstancesPolicy"];
        assert!(
            policy.get("spotAllocationStrategy").is_none(),
            "on-demand has no spot fields"
        );
        assert_eq!(
            first["metadata"]["labels"]["kops.k8s.io/cluster"].as_str(),
            Some("k.example.com")
        );
        assert!("lowest-price".parse::<SpotAllocationStrategy>().is_err());
    }
}
