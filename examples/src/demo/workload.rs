//! The sample workload: Deployments with zone spread, host anti-affinity and plain
//! replicas, and the NodePool and SpotNodeClass the provisioner launches them with.

use anyhow::{Context, Result};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use spot_provisioner::api::{NodePool, SpotNodeClass};

/// The namespace of the workload.
pub const NAMESPACE: &str = "default";

/// One Deployment of the workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App {
    /// Name, also the `app` label.
    pub name: &'static str,
    /// Replicas at the chosen scale.
    pub replicas: usize,
    /// CPU request.
    pub cpu: &'static str,
    /// Memory request.
    pub memory: &'static str,
    /// Scheduling constraints, in words.
    pub constraints: &'static str,
}

/// The Deployments at `scale` (replicas are multiplied and rounded, at least one each).
pub fn apps(scale: f64) -> Vec<App> {
    let n = |base: f64| ((base * scale).round() as usize).max(1);
    vec![
        App {
            name: "web",
            replicas: n(20.0),
            cpu: "500m",
            memory: "1Gi",
            constraints: "spread across zones (maxSkew 1)",
        },
        App {
            name: "api",
            replicas: n(10.0),
            cpu: "1",
            memory: "2Gi",
            constraints: "spread across zones, preferably across nodes",
        },
        App {
            name: "worker",
            replicas: n(16.0),
            cpu: "250m",
            memory: "512Mi",
            constraints: "none",
        },
        App {
            name: "cache",
            replicas: n(3.0),
            cpu: "2",
            memory: "8Gi",
            constraints: "one per node (pod anti-affinity)",
        },
        App {
            name: "ingress",
            replicas: n(3.0),
            cpu: "500m",
            memory: "512Mi",
            constraints: "one per node, spread across zones",
        },
    ]
}

fn zone_spread(app: &str, hard: bool) -> Value {
    json!({"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
           "whenUnsatisfiable": if hard { "DoNotSchedule" } else { "ScheduleAnyway" },
           "labelSelector": {"matchLabels": {"app": app}}})
}

fn one_per_node(app: &str) -> Value {
    json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": app}}}]}})
}

/// The Deployment object of `app`.
pub fn deployment(app: &App) -> Value {
    let name = app.name;
    let mut spec = json!({
        "terminationGracePeriodSeconds": 1,
        "containers": [{"name": name, "image": format!("example.com/{name}:1.0"),
                        "resources": {"requests": {"cpu": app.cpu, "memory": app.memory}}}]});
    match name {
        "web" => spec["topologySpreadConstraints"] = json!([zone_spread(name, true)]),
        "api" => {
            let mut by_node = zone_spread(name, false);
            by_node["topologyKey"] = json!("kubernetes.io/hostname");
            spec["topologySpreadConstraints"] = json!([zone_spread(name, true), by_node]);
        }
        "cache" => spec["affinity"] = one_per_node(name),
        "ingress" => {
            spec["affinity"] = one_per_node(name);
            spec["topologySpreadConstraints"] = json!([zone_spread(name, true)]);
        }
        _ => {}
    }
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
           "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"demo.spot.dev/app": "true"}},
           "spec": {"replicas": app.replicas, "selector": {"matchLabels": {"app": name}},
                    "template": {"metadata": {"labels": {"app": name}}, "spec": spec}}})
}

/// The node class (three zones of us-east-1).
pub fn node_class() -> Value {
    json!({"apiVersion": "spot.dev/v1", "kind": "SpotNodeClass", "metadata": {"name": "default"},
           "spec": {"zones": [{"zone": "us-east-1a"}, {"zone": "us-east-1b"}, {"zone": "us-east-1c"}]}})
}

/// The NodePool: spot or on-demand (the provisioner prefers spot while it is cheaper),
/// current-generation c, m and r families, 2 to 16 vCPUs; rebalance recommendations replace
/// the node, one at a time.
pub fn node_pool() -> Value {
    json!({"apiVersion": "karpenter.sh/v1", "kind": "NodePool", "metadata": {"name": "default"},
           "spec": {
               "template": {"spec": {
                   "nodeClassRef": {"group": "spot.dev", "kind": "SpotNodeClass", "name": "default"},
                   "requirements": [
                       {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot", "on-demand"]},
                       {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]},
                       {"key": "karpenter.k8s.aws/instance-category", "operator": "In", "values": ["c", "m", "r"]},
                       {"key": "karpenter.k8s.aws/instance-generation", "operator": "Gt", "values": ["5"]},
                       {"key": "karpenter.k8s.aws/instance-cpu", "operator": "In", "values": ["2", "4", "8", "16"]}]}},
               "disruption": {"rebalance": {"policy": "Replace", "maxConcurrent": "1"}}}})
}

/// Creates the node class and the NodePool.
pub async fn apply_pool(client: &Client) -> Result<()> {
    let class: SpotNodeClass = serde_json::from_value(node_class()).context("the SpotNodeClass")?;
    Api::<SpotNodeClass>::all(client.clone())
        .create(&PostParams::default(), &class)
        .await
        .context("creating the SpotNodeClass")?;
    let pool: NodePool = serde_json::from_value(node_pool()).context("the NodePool")?;
    Api::<NodePool>::all(client.clone())
        .create(&PostParams::default(), &pool)
        .await
        .context("creating the NodePool")?;
    Ok(())
}

/// Creates the Deployments of `apps`.
pub async fn apply_apps(client: &Client, apps: &[App]) -> Result<()> {
    let api = Api::<Deployment>::namespaced(client.clone(), NAMESPACE);
    for app in apps {
        let d: Deployment = serde_json::from_value(deployment(app)).context("a Deployment")?;
        api.create(&PostParams::default(), &d)
            .await
            .with_context(|| format!("creating Deployment {}", app.name))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_multiplies_replicas_with_at_least_one() {
        let one: usize = apps(1.0).iter().map(|a| a.replicas).sum();
        assert_eq!(one, 52);
        let two: usize = apps(2.0).iter().map(|a| a.replicas).sum();
        assert_eq!(two, 104);
        assert!(apps(0.01).iter().all(|a| a.replicas == 1));
    }

    #[test]
    fn objects_parse_as_their_types() {
        for app in apps(1.0) {
            let d: Deployment = serde_json::from_value(deployment(&app)).unwrap();
            assert_eq!(d.spec.replicas, Some(app.replicas as i32));
        }
        let _: NodePool = serde_json::from_value(node_pool()).unwrap();
        let _: SpotNodeClass = serde_json::from_value(node_class()).unwrap();
    }
}
