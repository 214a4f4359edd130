//! One end-to-end scenario per scheduling constraint of the provisioner: spot-kube-sim (API,
//! scheduler, kubelet, ReplicaSet controller) over HTTP, the simulated cloud registering
//! Nodes, and the provisioner through kube-rs. Each scenario ends with every pod bound, or
//! with the pods that cannot be placed pending and a `FailedScheduling` Event naming the
//! constraint, and checks that the constraint holds on the nodes the pods landed on.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::events::v1::Event as KubeEvent;
use kube::{Client, ResourceExt};
use serde_json::json;
use spot_core::catalog::Catalog;
use spot_core::labels;
use spot_core::resources::Resources;

use common::{
    Env, apply, claims, default_pool, deployment, env, fast_settings, list, node_of, pods, pool, sim_cloud,
    start, wait_all_bound, wait_claims_initialized, wait_for,
};

/// Generous: CI runs every test at once on two cores.
const LIMIT: Duration = Duration::from_secs(120);

/// Every bound pod with its node, and every node by name.
async fn placement(client: &Client) -> (Vec<(Pod, Node)>, BTreeMap<String, Node>) {
    let nodes: BTreeMap<String, Node> = list::<Node>(client)
        .await
        .into_iter()
        .map(|n| (n.name_any(), n))
        .collect();
    let placed = pods(client)
        .await
        .into_iter()
        .filter_map(|p| {
            let node = nodes.get(node_of(&p)?)?.clone();
            Some((p, node))
        })
        .collect();
    (placed, nodes)
}

fn label<'a>(node: &'a Node, key: &str) -> &'a str {
    node.labels().get(key).map(String::as_str).unwrap_or_default()
}

fn app(p: &Pod) -> &str {
    p.labels().get("app").map(String::as_str).unwrap_or_default()
}

/// The bound pods of `app` with their nodes.
fn of_app<'a>(placed: &'a [(Pod, Node)], name: &str) -> Vec<&'a (Pod, Node)> {
    placed.iter().filter(|(p, _)| app(p) == name).collect()
}

/// Pods of `name` per value of the node label `key`.
fn per_domain(placed: &[(Pod, Node)], name: &str, key: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (_, n) in of_app(placed, name) {
        *out.entry(label(n, key).to_owned()).or_default() += 1;
    }
    out
}

/// The notes of the `FailedScheduling` Events about pods of `app`.
async fn failed_scheduling(client: &Client, app: &str) -> Vec<String> {
    list::<KubeEvent>(client)
        .await
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("FailedScheduling"))
        .filter(|e| {
            e.regarding.as_ref().is_some_and(|r| {
                r.kind.as_deref() == Some("Pod")
                    && r.name
                        .as_deref()
                        .is_some_and(|n| n.starts_with(&format!("{app}-")))
            })
        })
        .filter_map(|e| e.note)
        .collect()
}

/// Waits until `bound` pods of `app` are bound and the other `pending` ones are reported
/// unschedulable by the provisioner with a note containing `why`; every NodeClaim is then
/// initialized. Returns the notes.
async fn wait_partly_unschedulable(
    env: &Env,
    app_name: &str,
    bound: usize,
    pending: usize,
    why: &str,
) -> Vec<String> {
    let start = tokio::time::Instant::now();
    loop {
        let all: Vec<Pod> = pods(&env.client)
            .await
            .into_iter()
            .filter(|p| app(p) == app_name)
            .collect();
        let unbound: BTreeSet<String> = all
            .iter()
            .filter(|p| node_of(p).is_none())
            .map(|p| p.name_any())
            .collect();
        let notes: BTreeMap<String, String> = list::<KubeEvent>(&env.client)
            .await
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("FailedScheduling"))
            .filter_map(|e| Some((e.regarding?.name?, e.note?)))
            .collect();
        let reported = |p: &String| notes.get(p).is_some_and(|n| n.contains(why));
        if all.len() == bound + pending && unbound.len() == pending && unbound.iter().all(reported) {
            break;
        }
        assert!(
            start.elapsed() < LIMIT,
            "after {LIMIT:?}: {} pods of {app_name}, unbound {unbound:?} (want {bound} bound and {pending} \
             reported unschedulable with {why:?}); FailedScheduling notes: {notes:#?}",
            all.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_claims_initialized(&env.client, LIMIT).await;
    failed_scheduling(&env.client, app_name).await
}

/// Waits until `n` pods of `app` are bound.
async fn wait_bound(client: &Client, app_name: &str, n: usize) {
    let client = client.clone();
    let name = app_name.to_owned();
    wait_for(&format!("{n} pods of {app_name} bound"), LIMIT, || {
        let client = client.clone();
        let name = name.clone();
        async move {
            pods(&client)
                .await
                .iter()
                .filter(|p| app(p) == name && node_of(p).is_some())
                .count()
                == n
        }
    })
    .await;
}

fn required_node_affinity(expressions: serde_json::Value) -> serde_json::Value {
    json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": expressions}]}}}})
}

fn category(node: &Node) -> String {
    let t = label(node, labels::INSTANCE_TYPE);
    Catalog::embedded()
        .get(t)
        .map(|t| t.category.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_selectors_and_required_node_affinity_pin_zone_capacity_type_and_category() {
    let env = env(default_pool(), sim_cloud(21)).await;
    apply::<Deployment>(
        &env.client,
        deployment(
            "zonal",
            3,
            "500m",
            "512Mi",
            json!({"nodeSelector": {"topology.kubernetes.io/zone": "us-east-1b", "karpenter.sh/capacity-type": "on-demand"}}),
        ),
    )
    .await;
    apply::<Deployment>(
        &env.client,
        deployment(
            "memory",
            2,
            "500m",
            "1Gi",
            required_node_affinity(json!([
                {"key": "karpenter.k8s.aws/instance-category", "operator": "In", "values": ["r"]},
                {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot"]},
                {"key": "topology.kubernetes.io/zone", "operator": "NotIn", "values": ["us-east-1b"]}
            ])),
        ),
    )
    .await;
    wait_all_bound(&env.client, 5, LIMIT).await;
    let (placed, _) = placement(&env.client).await;
    for (p, n) in of_app(&placed, "zonal") {
        assert_eq!(label(n, labels::ZONE), "us-east-1b", "{}", p.name_any());
        assert_eq!(label(n, labels::CAPACITY_TYPE), "on-demand", "{}", p.name_any());
    }
    for (p, n) in of_app(&placed, "memory") {
        assert_eq!(
            category(n),
            "r",
            "{} on {}",
            p.name_any(),
            label(n, labels::INSTANCE_TYPE)
        );
        assert_eq!(label(n, labels::CAPACITY_TYPE), "spot", "{}", p.name_any());
        assert_ne!(label(n, labels::ZONE), "us-east-1b", "{}", p.name_any());
    }
    assert_eq!(
        of_app(&placed, "zonal").len() + of_app(&placed, "memory").len(),
        5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preferred_node_affinity_is_honoured_and_relaxed_when_it_cannot_be() {
    let env = env(default_pool(), sim_cloud(22)).await;
    let prefer = |zone: &str| {
        json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "preference": {"matchExpressions": [
                {"key": "topology.kubernetes.io/zone", "operator": "In", "values": [zone]}]}}]}}})
    };
    apply::<Deployment>(
        &env.client,
        deployment("east-c", 3, "500m", "512Mi", prefer("us-east-1c")),
    )
    .await;
    // A preference is soft for kube-scheduler too: on their own, nothing else competes.
    wait_all_bound(&env.client, 3, LIMIT).await;
    // The node class has no us-east-1d: the preference is relaxed, the pods still run.
    apply::<Deployment>(
        &env.client,
        deployment("east-d", 2, "500m", "512Mi", prefer("us-east-1d")),
    )
    .await;
    wait_all_bound(&env.client, 5, LIMIT).await;
    let (placed, _) = placement(&env.client).await;
    assert_eq!(
        per_domain(&placed, "east-c", labels::ZONE),
        BTreeMap::from([("us-east-1c".to_owned(), 3)])
    );
    let relaxed = per_domain(&placed, "east-d", labels::ZONE);
    assert_eq!(relaxed.values().sum::<usize>(), 2);
    assert!(
        relaxed.keys().all(|z| common::ZONES.contains(&z.as_str())),
        "{relaxed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taints_keep_intolerant_pods_off_and_tolerations_let_pods_on() {
    let dedicated = pool(json!({"weight": 50, "template": {
        "metadata": {"labels": {"team": "batch"}},
        "spec": {"taints": [{"key": "dedicated", "value": "batch", "effect": "NoSchedule"}]}}}));
    let env = start(
        sim_cloud(23),
        &[("dedicated", dedicated), ("general", pool(json!({"weight": 10})))],
        fast_settings(),
    )
    .await;
    apply::<Deployment>(
        &env.client,
        deployment(
            "batch",
            3,
            "500m",
            "512Mi",
            json!({"nodeSelector": {"team": "batch"},
                   "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "batch", "effect": "NoSchedule"}]}),
        ),
    )
    .await;
    // The heavier pool is tainted: these pods do not tolerate it and go to the other pool.
    apply::<Deployment>(&env.client, deployment("web", 3, "500m", "512Mi", json!({}))).await;
    wait_all_bound(&env.client, 6, LIMIT).await;
    wait_claims_initialized(&env.client, LIMIT).await;
    let (placed, nodes) = placement(&env.client).await;
    let tainted = |n: &Node| {
        n.spec.as_ref().and_then(|s| s.taints.as_ref()).is_some_and(|ts| {
            ts.iter()
                .any(|t| t.key == "dedicated" && t.effect == "NoSchedule")
        })
    };
    for (p, n) in of_app(&placed, "batch") {
        assert_eq!(label(n, labels::NODE_POOL), "dedicated", "{}", p.name_any());
        assert!(tainted(n), "{} runs on untainted {}", p.name_any(), n.name_any());
    }
    for (p, n) in of_app(&placed, "web") {
        assert_eq!(
            label(n, labels::NODE_POOL),
            "general",
            "{} on {}: taints {:?}, labels {:?}",
            p.name_any(),
            n.name_any(),
            n.spec.as_ref().and_then(|s| s.taints.as_ref()),
            n.metadata.labels
        );
        assert!(!tainted(n), "{} runs on tainted {}", p.name_any(), n.name_any());
    }
    // Every node of the tainted pool carries the taint (synced at registration).
    for n in nodes
        .values()
        .filter(|n| label(n, labels::NODE_POOL) == "dedicated")
    {
        assert!(tainted(n), "{}", n.name_any());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_spread_over_zones_and_hostnames_keeps_the_skew() {
    let env = env(default_pool(), sim_cloud(24)).await;
    // kube-scheduler counts only the domains of nodes that exist: without minDomains, the
    // first node up would take every pod. minDomains keeps the global minimum at 0 until
    // the provisioner's nodes are all up, as the provisioner planned.
    let spread = |app: &str, key: &str, domains: i32| {
        json!({"topologySpreadConstraints": [{"maxSkew": 1, "minDomains": domains, "topologyKey": key,
            "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": app}}}]})
    };
    apply::<Deployment>(
        &env.client,
        deployment("zones", 9, "250m", "256Mi", spread("zones", labels::ZONE, 3)),
    )
    .await;
    apply::<Deployment>(
        &env.client,
        deployment("hosts", 4, "250m", "256Mi", spread("hosts", labels::HOSTNAME, 4)),
    )
    .await;
    wait_all_bound(&env.client, 13, LIMIT).await;
    let (placed, _) = placement(&env.client).await;
    let zones = per_domain(&placed, "zones", labels::ZONE);
    assert_eq!(zones.len(), 3, "{zones:?}");
    assert!(
        zones.values().all(|&n| n == 3),
        "maxSkew 1 over 3 zones: {zones:?}"
    );
    // A hostname spread against empty new nodes (global minimum 0) puts one pod per node.
    let hosts = per_domain(&placed, "hosts", labels::HOSTNAME);
    assert_eq!(hosts.len(), 4, "{hosts:?}");
    assert!(hosts.values().all(|&n| n == 1), "{hosts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_domains_above_the_zones_available_caps_each_zone_at_max_skew() {
    let env = env(default_pool(), sim_cloud(25)).await;
    // Two eligible zones, minDomains 3: the global minimum counts as 0, so each zone takes
    // at most maxSkew (1) pod and the other two stay pending.
    let mut extra = required_node_affinity(json!([
        {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["us-east-1a", "us-east-1b"]}
    ]));
    common::merge(
        &mut extra,
        json!({"topologySpreadConstraints": [{"maxSkew": 1, "minDomains": 3, "topologyKey": labels::ZONE,
            "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "quorum"}}}]}),
    );
    apply::<Deployment>(&env.client, deployment("quorum", 4, "250m", "256Mi", extra)).await;
    let notes = wait_partly_unschedulable(&env, "quorum", 2, 2, "topology spread").await;
    let (placed, _) = placement(&env.client).await;
    assert_eq!(
        per_domain(&placed, "quorum", labels::ZONE),
        BTreeMap::from([("us-east-1a".to_owned(), 1), ("us-east-1b".to_owned(), 1)])
    );
    assert!(notes.iter().all(|n| n.contains(labels::ZONE)), "{notes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_anti_affinity_on_hostname_and_zone() {
    let env = env(default_pool(), sim_cloud(26)).await;
    let anti = |app: &str, key: &str| {
        json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"topologyKey": key, "labelSelector": {"matchLabels": {"app": app}}}]}}})
    };
    apply::<Deployment>(
        &env.client,
        deployment("solo", 4, "250m", "256Mi", anti("solo", labels::HOSTNAME)),
    )
    .await;
    // Four replicas that each want a zone to themselves, in three zones: one stays pending.
    apply::<Deployment>(
        &env.client,
        deployment("zonal", 4, "250m", "256Mi", anti("zonal", labels::ZONE)),
    )
    .await;
    let notes = wait_partly_unschedulable(&env, "zonal", 3, 1, "anti-affinity").await;
    wait_bound(&env.client, "solo", 4).await;
    let (placed, _) = placement(&env.client).await;
    let hosts = per_domain(&placed, "solo", labels::HOSTNAME);
    assert_eq!(hosts.len(), 4, "one node each: {hosts:?}");
    let zones = per_domain(&placed, "zonal", labels::ZONE);
    assert_eq!(zones.len(), 3, "{zones:?}");
    assert!(zones.values().all(|&n| n == 1), "{zones:?}");
    assert!(notes.iter().all(|n| n.contains(labels::ZONE)), "{notes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_affinity_on_zone_and_hostname_follows_the_target() {
    let env = env(default_pool(), sim_cloud(27)).await;
    let with = |key: &str| {
        json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"topologyKey": key, "labelSelector": {"matchLabels": {"app": "db"}}}]}}})
    };
    // Applied together: the affinity to a pod of the same batch is resolved in one solve.
    apply::<Deployment>(&env.client, deployment("db", 1, "1", "2Gi", json!({}))).await;
    apply::<Deployment>(
        &env.client,
        deployment("cache", 2, "250m", "256Mi", with(labels::HOSTNAME)),
    )
    .await;
    wait_all_bound(&env.client, 3, LIMIT).await;
    // Later, pods that follow it into its zone (its node may be full by then).
    apply::<Deployment>(
        &env.client,
        deployment("web", 4, "500m", "512Mi", with(labels::ZONE)),
    )
    .await;
    wait_all_bound(&env.client, 7, LIMIT).await;
    let (placed, _) = placement(&env.client).await;
    let db = &of_app(&placed, "db")[0].1;
    for (p, n) in of_app(&placed, "web") {
        assert_eq!(
            label(n, labels::ZONE),
            label(db, labels::ZONE),
            "{}",
            p.name_any()
        );
    }
    for (p, n) in of_app(&placed, "cache") {
        assert_eq!(n.name_any(), db.name_any(), "{}", p.name_any());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_ports_never_share_a_node() {
    let env = env(default_pool(), sim_cloud(28)).await;
    let port = json!({"containers": [{"name": "app", "image": "nginx",
        "ports": [{"containerPort": 8080, "hostPort": 8080, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]});
    apply::<Deployment>(&env.client, deployment("proxy", 4, "100m", "128Mi", port)).await;
    // Small pods without ports pack together, and may share the proxies' nodes.
    apply::<Deployment>(&env.client, deployment("small", 4, "100m", "128Mi", json!({}))).await;
    wait_all_bound(&env.client, 8, LIMIT).await;
    let (placed, _) = placement(&env.client).await;
    let hosts = per_domain(&placed, "proxy", labels::HOSTNAME);
    assert_eq!(hosts.len(), 4, "host port 8080 once per node: {hosts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodepool_limits_cap_the_capacity_and_leave_the_rest_pending() {
    let env = env(pool(json!({"limits": {"cpu": "8"}})), sim_cloud(29)).await;
    apply::<Deployment>(&env.client, deployment("big", 12, "1", "1Gi", json!({}))).await;
    // Four vCPU of allocatable hold three 1-CPU pods: 8 vCPU of capacity hold at most 7.
    let client = env.client.clone();
    wait_for("the limit to be reached", LIMIT, || {
        let client = client.clone();
        async move {
            let bound = pods(&client)
                .await
                .iter()
                .filter(|p| node_of(p).is_some())
                .count();
            bound >= 1 && !failed_scheduling(&client, "big").await.is_empty()
        }
    })
    .await;
    let bound = pods(&env.client)
        .await
        .iter()
        .filter(|p| node_of(p).is_some())
        .count();
    let notes = wait_partly_unschedulable(&env, "big", bound, 12 - bound, "limits").await;
    let nodes: Vec<Node> = list(&env.client).await;
    let vcpus: i64 = nodes
        .iter()
        .map(|n| {
            let cap = n
                .status
                .as_ref()
                .and_then(|s| s.capacity.clone())
                .unwrap_or_default();
            Resources::from_pairs(cap.iter().map(|(k, q)| (k.as_str(), q.0.as_str())))
                .unwrap()
                .cpu_millis
        })
        .sum();
    assert!(vcpus <= 8000, "capacity {vcpus}m over the 8 CPU limit");
    assert!((1..12).contains(&bound), "{bound} bound");
    assert!(notes.iter().any(|n| n.contains("cpu")), "{notes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_nodepools_fill_the_heavier_pool_first_then_overflow() {
    let heavy = pool(
        json!({"weight": 80, "limits": {"cpu": "4"}, "template": {"metadata": {"labels": {"tier": "heavy"}}}}),
    );
    let light = pool(json!({"weight": 10, "template": {"metadata": {"labels": {"tier": "light"}}}}));
    let env = start(
        sim_cloud(30),
        &[("light", light), ("heavy", heavy)],
        fast_settings(),
    )
    .await;
    apply::<Deployment>(&env.client, deployment("web", 8, "1", "1Gi", json!({}))).await;
    wait_all_bound(&env.client, 8, LIMIT).await;
    wait_claims_initialized(&env.client, LIMIT).await;
    let (placed, nodes) = placement(&env.client).await;
    let pools = per_domain(&placed, "web", labels::NODE_POOL);
    assert!(pools.get("heavy").copied().unwrap_or(0) >= 1, "{pools:?}");
    assert!(
        pools.get("light").copied().unwrap_or(0) >= 1,
        "the 4-CPU limit overflows: {pools:?}"
    );
    let heavy_cpu: i64 = nodes
        .values()
        .filter(|n| label(n, labels::NODE_POOL) == "heavy")
        .map(|n| {
            assert_eq!(label(n, "tier"), "heavy");
            let cap = n
                .status
                .as_ref()
                .and_then(|s| s.capacity.clone())
                .unwrap_or_default();
            Resources::from_pairs(cap.iter().map(|(k, q)| (k.as_str(), q.0.as_str())))
                .unwrap()
                .cpu_millis
        })
        .sum();
    assert!(
        (1..=4000).contains(&heavy_cpu),
        "heavy pool capacity {heavy_cpu}m"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_values_keep_enough_instance_families_or_the_pods_wait() {
    let mut wide = pool(json!({"template": {"metadata": {"labels": {"team": "wide"}}}}));
    wide["template"]["spec"]["requirements"]
        .as_array_mut()
        .unwrap()
        .push(json!({"key": "karpenter.k8s.aws/instance-family", "operator": "Exists", "minValues": 4}));
    let mut narrow = pool(json!({"template": {"metadata": {"labels": {"team": "narrow"}}}}));
    narrow["template"]["spec"]["requirements"].as_array_mut().unwrap().push(
        json!({"key": "karpenter.k8s.aws/instance-family", "operator": "In", "values": ["c5", "m5", "r5"], "minValues": 3}),
    );
    let env = start(
        sim_cloud(31),
        &[("wide", wide), ("narrow", narrow)],
        fast_settings(),
    )
    .await;
    apply::<Deployment>(
        &env.client,
        deployment("wide", 2, "1", "1Gi", json!({"nodeSelector": {"team": "wide"}})),
    )
    .await;
    apply::<Deployment>(
        &env.client,
        deployment(
            "narrow",
            2,
            "1",
            "1Gi",
            json!({"nodeSelector": {"team": "narrow", "karpenter.k8s.aws/instance-family": "c5"}}),
        ),
    )
    .await;
    // The pods pin one family where the pool wants three: no claim could keep minValues.
    let notes = wait_partly_unschedulable(&env, "narrow", 0, 2, "minValues").await;
    assert!(notes.iter().all(|n| n.contains("instance-family")), "{notes:?}");
    wait_bound(&env.client, "wide", 2).await;
    let claims = claims(&env.client).await;
    assert!(!claims.is_empty());
    for c in &claims {
        assert_eq!(
            c.labels().get(labels::NODE_POOL).map(String::as_str),
            Some("wide")
        );
        let types: Vec<String> = c
            .spec
            .requirements
            .iter()
            .find(|r| r.key == labels::INSTANCE_TYPE)
            .map(|r| r.values.clone())
            .unwrap_or_default();
        let families: BTreeSet<String> = types
            .iter()
            .filter_map(|t| Catalog::embedded().get(t).ok().map(|t| t.family.clone()))
            .collect();
        assert!(
            families.len() >= 4,
            "{}: {families:?} from {types:?}",
            c.name_any()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonset_overhead_leaves_room_for_the_daemon_on_every_new_node() {
    let env = env(default_pool(), sim_cloud(32)).await;
    let ds: DaemonSet = apply(
        &env.client,
        json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent", "namespace": "default"},
               "spec": {"selector": {"matchLabels": {"app": "agent"}},
                        "template": {"metadata": {"labels": {"app": "agent"}},
                                     "spec": {"containers": [{"name": "agent", "image": "agent",
                                              "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}]}}}}),
    )
    .await;
    // Without the overhead, a 2-vCPU type would hold one of these pods and nothing else.
    apply::<Deployment>(&env.client, deployment("app", 3, "1500m", "1Gi", json!({}))).await;
    // Play the DaemonSet controller: one pod pinned to each node as it appears.
    let client = env.client.clone();
    let uid = ds.uid().unwrap_or_default();
    let controller = tokio::spawn(async move {
        let mut done = BTreeSet::new();
        loop {
            for n in list::<Node>(&client).await {
                let name = n.name_any();
                if done.insert(name.clone()) {
                    apply::<Pod>(
                        &client,
                        json!({"apiVersion": "v1", "kind": "Pod",
                               "metadata": {"name": format!("agent-{name}"), "namespace": "default", "labels": {"app": "agent"},
                                            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "agent",
                                                                 "uid": uid, "controller": true}]},
                               "spec": {"containers": [{"name": "agent", "image": "agent",
                                                        "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}],
                                        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                                            "nodeSelectorTerms": [{"matchFields": [
                                                {"key": "metadata.name", "operator": "In", "values": [name]}]}]}}}}}),
                    )
                    .await;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let client = env.client.clone();
    wait_for("every app and agent pod bound", LIMIT, || {
        let client = client.clone();
        async move {
            let nodes = list::<Node>(&client).await.len();
            let pods = pods(&client).await;
            let bound = |a: &str| {
                pods.iter()
                    .filter(|p| app(p) == a && node_of(p).is_some())
                    .count()
            };
            nodes > 0 && bound("app") == 3 && bound("agent") == nodes
        }
    })
    .await;
    controller.abort();
    let (placed, nodes) = placement(&env.client).await;
    for n in nodes.values() {
        let agents: Vec<_> = of_app(&placed, "agent")
            .into_iter()
            .filter(|(_, m)| m.name_any() == n.name_any())
            .collect();
        assert_eq!(agents.len(), 1, "one agent on {}", n.name_any());
        let apps = of_app(&placed, "app")
            .iter()
            .filter(|(_, m)| m.name_any() == n.name_any())
            .count();
        let cpu = Catalog::embedded()
            .get(label(n, labels::INSTANCE_TYPE))
            .unwrap()
            .vcpus;
        assert!(
            cpu as usize * 1000 >= 1000 + apps * 1500,
            "{} ({} vCPU) holds {apps} app pods and the agent",
            n.name_any(),
            cpu
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_no_instance_type_can_hold_is_reported_with_the_reason() {
    let env = env(default_pool(), sim_cloud(33)).await;
    apply::<Deployment>(&env.client, deployment("huge", 1, "1000", "1Gi", json!({}))).await;
    apply::<Deployment>(&env.client, deployment("fine", 2, "500m", "512Mi", json!({}))).await;
    let notes = wait_partly_unschedulable(&env, "huge", 0, 1, "no instance type has").await;
    assert!(
        notes.iter().all(|n| n.contains("cpu") || n.contains("vCPU")),
        "{notes:?}"
    );
    let (placed, _) = placement(&env.client).await;
    assert_eq!(of_app(&placed, "fine").len(), 2);
    // Reported once, not at every loop: more loops (nothing else is pending, so they create
    // nothing) leave the Event as it was.
    for _ in 0..3 {
        let report = env.provisioner.provision_once().await.unwrap();
        assert!(report.claims_created.is_empty());
        assert_eq!(report.unschedulable.len(), 1, "{report:?}");
    }
    let events: Vec<KubeEvent> = list::<KubeEvent>(&env.client)
        .await
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("FailedScheduling"))
        .collect();
    assert_eq!(events.len(), 1, "{events:#?}");
    assert!(events[0].series.is_none(), "{events:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_affinity_with_a_namespace_selector_finds_pods_in_other_namespaces() {
    let env = env(default_pool(), sim_cloud(34)).await;
    apply::<k8s_openapi::api::core::v1::Namespace>(
        &env.client,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "data", "labels": {"team": "data"}}}),
    )
    .await;
    let mut db = deployment("db", 1, "1", "2Gi", json!({}));
    db["metadata"]["namespace"] = json!("data");
    apply::<Deployment>(&env.client, db).await;
    wait_all_bound(&env.client, 1, LIMIT).await;
    let with = json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"topologyKey": labels::ZONE, "labelSelector": {"matchLabels": {"app": "db"}},
         "namespaceSelector": {"matchLabels": {"team": "data"}}}]}}});
    apply::<Deployment>(&env.client, deployment("web", 3, "500m", "512Mi", with)).await;
    wait_all_bound(&env.client, 4, LIMIT).await;
    let (placed, _) = placement(&env.client).await;
    let db = &of_app(&placed, "db")[0].1;
    for (p, n) in of_app(&placed, "web") {
        assert_eq!(
            label(n, labels::ZONE),
            label(db, labels::ZONE),
            "{}",
            p.name_any()
        );
    }
}
