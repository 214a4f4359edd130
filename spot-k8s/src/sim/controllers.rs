//! Simulated controllers: a kubelet, a scheduler, and Deployment/ReplicaSet controllers.
//! They run one reconciliation pass over the whole store after each burst of changes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::{Value, json};
use spot_core::node::{Taint, TaintEffect};
use spot_core::pod::PodSpec;
use spot_core::resources::Resources;
use spot_core::scheduling::{Scheduler, SchedulerOptions};
use tokio::sync::broadcast::error::RecvError;

use super::Shared;
use super::store::{ResourceType, Store, WriteMode, name_of, namespace_of, uid_of};
use crate::convert;

/// Runs the enabled controllers until the task is aborted.
pub(crate) async fn run(shared: Arc<Shared>) {
    let mut rx = shared.lock().subscribe();
    loop {
        {
            let mut store = shared.lock();
            let c = &shared.config;
            if c.replicaset_controller {
                deployments(&mut store);
                replicasets(&mut store);
            }
            if c.scheduler {
                schedule(&mut store);
            }
            if c.kubelet {
                kubelet(&mut store);
            }
        }
        tokio::select! {
            msg = rx.recv() => {
                if matches!(msg, Err(RecvError::Closed)) {
                    return;
                }
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        // Debounce: let a burst of writes land before the next pass.
        tokio::time::sleep(Duration::from_millis(10)).await;
        while rx.try_recv().is_ok() {}
    }
}

fn active(pod: &Value) -> bool {
    let phase = pod
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or_default();
    pod.pointer("/metadata/deletionTimestamp").is_none() && phase != "Succeeded" && phase != "Failed"
}

fn owned_by(obj: &Value, uid: &str) -> bool {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|refs| {
            refs.iter()
                .any(|r| r.get("uid").and_then(Value::as_str) == Some(uid))
        })
}

fn template_hash(template: &Value) -> String {
    let s = template.to_string();
    let h = s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut r = h;
    (0..10)
        .map(|_| {
            let c = ALPHABET[(r % ALPHABET.len() as u64) as usize] as char;
            r /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

/// Deployments: one ReplicaSet per template, older ones deleted (a Recreate-style rollout).
fn deployments(store: &mut Store) {
    let (Some(dt), Some(rt)) = (
        store.find("apps", "deployments"),
        store.find("apps", "replicasets"),
    ) else {
        return;
    };
    for d in store.all(&dt, None) {
        if d.pointer("/metadata/deletionTimestamp").is_some() {
            continue;
        }
        let ns = namespace_of(&d).to_owned();
        let uid = uid_of(&d).to_owned();
        let replicas = d.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
        let template = d.pointer("/spec/template").cloned().unwrap_or_default();
        let hash = template_hash(&template);
        let rs_name = format!("{}-{hash}", name_of(&d));
        for old in store
            .all(&rt, Some(&ns))
            .into_iter()
            .filter(|r| owned_by(r, &uid) && name_of(r) != rs_name)
        {
            let _ = store.delete(&rt, &ns, name_of(&old), Some(0), false, false);
        }
        match store.get(&rt, &ns, &rs_name) {
            Ok(rs) => {
                if rs.pointer("/spec/replicas").and_then(Value::as_i64) != Some(replicas) {
                    let mut next = (*rs).clone();
                    next["spec"]["replicas"] = json!(replicas);
                    let _ = store.update(&rt, &ns, &rs_name, next, WriteMode::Internal, false);
                }
            }
            Err(_) => {
                let mut tpl = template.clone();
                tpl["metadata"]["labels"]["pod-template-hash"] = json!(hash);
                let mut selector = d.pointer("/spec/selector").cloned().unwrap_or(json!({}));
                selector["matchLabels"]["pod-template-hash"] = json!(hash);
                let rs = json!({
                    "apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "metadata": {"name": rs_name, "namespace": ns, "labels": tpl["metadata"]["labels"].clone(),
                                 "ownerReferences": super::owner_ref("Deployment", name_of(&d), &uid)},
                    "spec": {"replicas": replicas, "selector": selector, "template": tpl},
                });
                let _ = store.create(&rt, Some(&ns), rs, false);
            }
        }
        if let Ok(rs) = store.get(&rt, &ns, &rs_name) {
            let st = rs.get("status").cloned().unwrap_or_default();
            let status = json!({
                "observedGeneration": d.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
                "replicas": st.get("replicas").cloned().unwrap_or(json!(0)),
                "updatedReplicas": st.get("replicas").cloned().unwrap_or(json!(0)),
                "readyReplicas": st.get("readyReplicas").cloned().unwrap_or(json!(0)),
                "availableReplicas": st.get("availableReplicas").cloned().unwrap_or(json!(0)),
            });
            if d.get("status") != Some(&status) {
                let mut next = (*d).clone();
                next["status"] = status;
                let _ = store.update(&dt, &ns, name_of(&d), next, WriteMode::Internal, false);
            }
        }
    }
}

/// ReplicaSets: create or delete pods to match `spec.replicas`; keep `status` current.
fn replicasets(store: &mut Store) {
    let (Some(rt), Some(pt)) = (store.find("apps", "replicasets"), store.find("", "pods")) else {
        return;
    };
    let mut by_owner: HashMap<String, Vec<Arc<Value>>> = HashMap::new();
    for p in store.all(&pt, None) {
        if let Some(refs) = p.pointer("/metadata/ownerReferences").and_then(Value::as_array) {
            for r in refs {
                if let Some(uid) = r.get("uid").and_then(Value::as_str) {
                    by_owner.entry(uid.to_owned()).or_default().push(p.clone());
                }
            }
        }
    }
    for rs in store.all(&rt, None) {
        if rs.pointer("/metadata/deletionTimestamp").is_some() {
            continue;
        }
        let ns = namespace_of(&rs).to_owned();
        let uid = uid_of(&rs).to_owned();
        let want = rs
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1)
            .max(0) as usize;
        let pods: Vec<_> = by_owner
            .get(&uid)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|p| active(p))
            .collect();
        if pods.len() < want {
            for _ in pods.len()..want {
                let mut pod = super::pod_from_template(&rs, "");
                if let Some(m) = pod["metadata"].as_object_mut() {
                    m.remove("name");
                    m.insert("generateName".into(), json!(format!("{}-", name_of(&rs))));
                    m.insert(
                        "ownerReferences".into(),
                        super::owner_ref("ReplicaSet", name_of(&rs), &uid),
                    );
                }
                pod["status"] = json!({"phase": "Pending", "qosClass": "Burstable"});
                let _ = store.create(&pt, Some(&ns), pod, false);
            }
        } else if pods.len() > want {
            let mut extra = pods.clone();
            // Unscheduled and not-ready pods go first, as in Kubernetes.
            extra.sort_by_key(|p| {
                (
                    super::eviction::pod_healthy(p),
                    p.pointer("/spec/nodeName").is_some(),
                )
            });
            for p in extra.iter().take(pods.len() - want) {
                let _ = store.delete(&pt, &ns, name_of(p), Some(0), false, false);
            }
        }
        let pods: Vec<_> = store
            .all(&pt, Some(&ns))
            .into_iter()
            .filter(|p| owned_by(p, &uid) && active(p))
            .collect();
        let ready = pods.iter().filter(|p| super::eviction::pod_healthy(p)).count();
        let status = json!({
            "replicas": pods.len(), "fullyLabeledReplicas": pods.len(), "readyReplicas": ready, "availableReplicas": ready,
            "observedGeneration": rs.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
        });
        if let Ok(cur) = store.get(&rt, &ns, name_of(&rs))
            && cur.get("status") != Some(&status)
        {
            let mut next = (*cur).clone();
            next["status"] = status;
            let _ = store.update(&rt, &ns, name_of(&rs), next, WriteMode::Internal, false);
        }
    }
}

/// The taint kube-scheduler's NodeUnschedulable plugin stands for on cordoned nodes.
const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";
/// The taint the node lifecycle controller puts on nodes that are not Ready.
const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";

fn node_ready(node: &Node) -> bool {
    convert::node_ready(node)
}

/// Whether kube-scheduler would consider the pod: no node yet, the default scheduler, and
/// not gated.
fn wants_scheduling(pod: &Value) -> bool {
    let scheduler = pod
        .pointer("/spec/schedulerName")
        .and_then(Value::as_str)
        .unwrap_or("default-scheduler");
    active(pod)
        && pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        && (scheduler.is_empty() || scheduler == "default-scheduler")
}

fn gated(pod: &Value) -> bool {
    pod.pointer("/spec/schedulingGates")
        .and_then(Value::as_array)
        .is_some_and(|g| !g.is_empty())
}

/// A pod as the simulation reads it. DaemonSet pods name their node with
/// `matchFields: metadata.name In [node]`, which the provisioner's converter refuses (as
/// Karpenter does); here it becomes the equivalent hostname requirement (simulated nodes'
/// hostname label is their name), and the DaemonSet owner is forgotten so that the
/// scheduling simulation places the pod instead of leaving it to a DaemonSet controller.
fn pod_view(pod: &Value, namespaces: &convert::NamespaceLabels) -> Result<PodSpec, String> {
    let mut v = pod.clone();
    if let Some(terms) = v
        .pointer_mut(
            "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms",
        )
        .and_then(Value::as_array_mut)
    {
        for term in terms {
            let Some(fields) = term.get_mut("matchFields").map(Value::take) else {
                continue;
            };
            let mut exprs = term
                .get("matchExpressions")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for f in fields.as_array().into_iter().flatten() {
                if f.get("key").and_then(Value::as_str) != Some("metadata.name") {
                    return Err(format!("matchFields key {} is not supported", f["key"]));
                }
                let mut e = f.clone();
                e["key"] = json!(spot_core::labels::HOSTNAME);
                exprs.push(e);
            }
            term["matchExpressions"] = json!(exprs);
            if let Some(t) = term.as_object_mut() {
                t.remove("matchFields");
            }
        }
    }
    let typed: Pod = serde_json::from_value(v).map_err(|e| format!("the pod does not parse: {e}"))?;
    let mut spec = convert::pod_spec_in(&typed, namespaces).map_err(|e| e.to_string())?;
    if spec.is_daemonset() {
        spec.owner_kind = None;
    }
    Ok(spec)
}

/// Binds pending pods with the provisioner's scheduling simulation
/// ([`spot_core::scheduling::Scheduler`]) restricted to the existing nodes, so binding honours
/// every constraint the provisioner simulates: resources, node selectors and affinity,
/// taints, topology spread, pod (anti-)affinity and host ports. Cordoned and NotReady nodes
/// count for topology and carry the taints kube-scheduler stands for
/// (`node.kubernetes.io/unschedulable`, `node.kubernetes.io/not-ready`); PreferNoSchedule
/// taints only score in kube-scheduler and are ignored. Pods that fit nowhere get
/// `PodScheduled=False`, reason `Unschedulable`, with the failed constraint as the message,
/// which is what makes them provisionable.
fn schedule(store: &mut Store) {
    let (Some(nt), Some(pt)) = (store.find("", "nodes"), store.find("", "pods")) else {
        return;
    };
    let pods = store.all(&pt, None);
    let pending: Vec<Arc<Value>> = pods.iter().filter(|p| wants_scheduling(p)).cloned().collect();
    if pending.is_empty() {
        return;
    }
    let namespaces: convert::NamespaceLabels = store
        .find("", "namespaces")
        .map(|t| store.all(&t, None))
        .unwrap_or_default()
        .iter()
        .map(|n| {
            let labels = n
                .pointer("/metadata/labels")
                .and_then(|l| serde_json::from_value(l.clone()).ok())
                .unwrap_or_default();
            (name_of(n).to_owned(), labels)
        })
        .collect();
    let mut bound: HashMap<String, Vec<Arc<PodSpec>>> = HashMap::new();
    for p in pods.iter().filter(|p| active(p)) {
        let Some(node) = p
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        else {
            continue;
        };
        // A bound pod that does not convert still takes a slot on its node.
        let spec = pod_view(p, &namespaces)
            .unwrap_or_else(|_| PodSpec::new(namespace_of(p), name_of(p), Resources::default()));
        bound.entry(node.to_owned()).or_default().push(Arc::new(spec));
    }
    let mut existing = Vec::new();
    for n in store.all(&nt, None) {
        if n.pointer("/metadata/deletionTimestamp").is_some() {
            continue;
        }
        let Ok(node) = serde_json::from_value::<Node>((*n).clone()) else {
            continue;
        };
        let pods = bound.remove(name_of(&n)).unwrap_or_default();
        let Ok(mut e) = convert::existing_node(&node, pods) else {
            continue;
        };
        e.taints.retain(|t| t.effect != TaintEffect::PreferNoSchedule);
        if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
            e.taints.push(Taint {
                key: UNSCHEDULABLE_TAINT.into(),
                value: None,
                effect: TaintEffect::NoSchedule,
            });
        }
        if !node_ready(&node) {
            e.taints.push(Taint {
                key: NOT_READY_TAINT.into(),
                value: None,
                effect: TaintEffect::NoSchedule,
            });
        }
        existing.push(e);
    }
    let mut specs = Vec::new();
    let mut by_key: HashMap<String, Arc<Value>> = HashMap::new();
    for pod in pending {
        if gated(&pod) {
            set_pod_scheduled(
                store,
                &pt,
                &pod,
                "SchedulingGated",
                "Scheduling is blocked due to non-empty scheduling gates",
            );
            continue;
        }
        match pod_view(&pod, &namespaces) {
            Ok(spec) => {
                by_key.insert(spec.key(), pod.clone());
                specs.push(Arc::new(spec));
            }
            Err(e) => set_pod_scheduled(store, &pt, &pod, "Unschedulable", &e),
        }
    }
    if specs.is_empty() {
        return;
    }
    let mut views: Vec<NodeSummary> = existing.iter().map(NodeSummary::of).collect();
    let specs_by_key: HashMap<String, Arc<PodSpec>> = specs.iter().map(|s| (s.key(), s.clone())).collect();
    let solution = Scheduler::new(Vec::new(), existing, Vec::new(), SchedulerOptions::default()).solve(specs);
    for (key, node) in solution.existing {
        if let Some(pod) = by_key.get(&key) {
            bind(store, &pt, pod, &node);
        }
        // What this solve placed is not free for the messages either.
        if let (Some(view), Some(spec)) = (views.iter_mut().find(|v| v.name == node), specs_by_key.get(&key))
        {
            view.free = view.free.saturating_sub(&spec.requests);
        }
    }
    for (key, reason) in solution.unschedulable {
        if let (Some(pod), Some(spec)) = (by_key.get(&key), specs_by_key.get(&key)) {
            let message = explain(spec, &views, &reason);
            set_pod_scheduled(store, &pt, pod, "Unschedulable", &message);
        }
    }
}

/// What the unschedulable message needs to know about a node.
struct NodeSummary {
    name: String,
    labels: std::collections::BTreeMap<String, String>,
    taints: Vec<Taint>,
    free: Resources,
}

impl NodeSummary {
    fn of(n: &spot_core::scheduling::ExistingNode) -> NodeSummary {
        let used = n.pods.iter().fold(Resources::default(), |acc, p| {
            acc.checked_add(&p.requests).unwrap_or(acc)
        });
        NodeSummary {
            name: n.name.clone(),
            labels: n.labels.clone(),
            taints: n.taints.clone(),
            free: n.allocatable.saturating_sub(&used),
        }
    }
}

/// kube-scheduler's message shape: `0/3 nodes are available: 1 node(s) had untolerated taint
/// {node.kubernetes.io/not-ready: }, 2 Insufficient cpu.`, each node counted under the first
/// filter it fails (taints, node affinity, resources); nodes that pass those failed the
/// pod's topology, affinity or host-port constraints, which the simulation's `reason` names.
fn explain(pod: &PodSpec, nodes: &[NodeSummary], reason: &str) -> String {
    let mut counts: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    let mut other = 0;
    for n in nodes {
        let why = if let Some(t) = n
            .taints
            .iter()
            .find(|t| !pod.tolerations.iter().any(|tol| tol.tolerates(t)))
        {
            format!(
                "node(s) had untolerated taint {{{}: {}}}",
                t.key,
                t.value.as_deref().unwrap_or_default()
            )
        } else if !pod.node_requirements.is_empty()
            && !pod.node_requirements.iter().any(|r| r.matches_labels(&n.labels))
        {
            "node(s) didn't match Pod's node affinity/selector".to_owned()
        } else if let Some(name) = pod.requests.exceeding(&n.free).first() {
            format!("Insufficient {name}")
        } else {
            other += 1;
            continue;
        };
        *counts.entry(why).or_default() += 1;
    }
    let mut parts: Vec<String> = counts.into_iter().map(|(why, n)| format!("{n} {why}")).collect();
    if other > 0 || parts.is_empty() {
        parts.push(format!("{other} node(s) failed the pod's constraints: {reason}"));
    }
    format!("0/{} nodes are available: {}.", nodes.len(), parts.join(", "))
}

/// Binds a pod to a node, as the binding subresource does.
fn bind(store: &mut Store, pt: &Arc<ResourceType>, pod: &Value, node: &str) {
    let mut next = pod.clone();
    next["spec"]["nodeName"] = json!(node);
    let mut conds: Vec<Value> = next
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c["type"] != "PodScheduled")
        .collect();
    conds.push(json!({"type": "PodScheduled", "status": "True", "lastTransitionTime": super::store::now_timestamp()}));
    next["status"]["conditions"] = json!(conds);
    let _ = store.update(
        pt,
        namespace_of(pod),
        name_of(pod),
        next,
        WriteMode::Internal,
        false,
    );
}

/// Records `PodScheduled=False` with a reason and message, as kube-scheduler does; nothing is
/// written when the pod already says so (the controllers run after every write).
fn set_pod_scheduled(store: &mut Store, pt: &Arc<ResourceType>, pod: &Value, reason: &str, message: &str) {
    let conds: Vec<Value> = pod
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if conds.iter().any(|c| {
        c["type"] == "PodScheduled"
            && c["status"] == "False"
            && c["reason"] == reason
            && c["message"] == message
    }) {
        return;
    }
    let mut next = pod.clone();
    let mut conds: Vec<Value> = conds
        .into_iter()
        .filter(|c| c["type"] != "PodScheduled")
        .collect();
    conds.push(
        json!({"type": "PodScheduled", "status": "False", "reason": reason, "message": message,
                      "lastTransitionTime": super::store::now_timestamp()}),
    );
    next["status"]["conditions"] = json!(conds);
    if next["status"]["phase"].is_null() {
        next["status"]["phase"] = json!("Pending");
    }
    let _ = store.update(
        pt,
        namespace_of(pod),
        name_of(pod),
        next,
        WriteMode::Internal,
        false,
    );
}

/// Pods bound to an existing node start: Running and Ready.
fn kubelet(store: &mut Store) {
    let (Some(nt), Some(pt)) = (store.find("", "nodes"), store.find("", "pods")) else {
        return;
    };
    let starting: Vec<_> = store
        .all(&pt, None)
        .into_iter()
        .filter(|p| {
            active(p)
                && p.pointer("/status/phase").and_then(Value::as_str) != Some("Running")
                && p.pointer("/spec/nodeName")
                    .and_then(Value::as_str)
                    .is_some_and(|n| store.get(&nt, "", n).is_ok())
        })
        .collect();
    for pod in starting {
        let r = store.random();
        let mut next = (*pod).clone();
        next["status"] = super::running_status(&format!("10.244.{}.{}", (r >> 8) & 255, r % 250 + 2));
        let _ = store.update(
            &pt,
            namespace_of(&pod),
            name_of(&pod),
            next,
            WriteMode::Internal,
            false,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::selector::LabelSelector;

    #[test]
    fn scheduler_respects_capacity_selector_and_taints() {
        let mut s = Store::new(1000);
        let nt = s.find("", "nodes").unwrap();
        let pt = s.find("", "pods").unwrap();
        let mut small = super::super::sim_node("small", "us-east-1a", "t3.small", "1", "1Gi");
        small["spec"]["taints"] = json!([{"key": "dedicated", "value": "x", "effect": "NoSchedule"}]);
        s.create(&nt, None, small, false).unwrap();
        s.create(
            &nt,
            None,
            super::super::sim_node("big", "us-east-1b", "m5.xlarge", "4", "16Gi"),
            false,
        )
        .unwrap();
        let pod = |name: &str, cpu: &str, extra: Value| {
            let mut p = json!({"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": "100Mi"}}}]}});
            super::super::patch::merge(&mut p, &extra);
            p
        };
        s.create(&pt, Some("default"), pod("a", "3", json!({})), false)
            .unwrap();
        s.create(&pt, Some("default"), pod("b", "2", json!({})), false)
            .unwrap();
        s.create(&pt, Some("default"), pod("c", "500m", json!({"spec": {"tolerations": [{"key": "dedicated", "operator": "Exists"}], "nodeSelector": {"topology.kubernetes.io/zone": "us-east-1a"}}})), false).unwrap();
        schedule(&mut s);
        kubelet(&mut s);
        let node_of = |s: &Store, n: &str| {
            s.get(&pt, "default", n)
                .unwrap()
                .pointer("/spec/nodeName")
                .cloned()
        };
        assert_eq!(node_of(&s, "a"), Some(json!("big")));
        assert_eq!(
            node_of(&s, "b"),
            None,
            "2 cpu fit nowhere after a took 3 of big's 4"
        );
        assert_eq!(node_of(&s, "c"), Some(json!("small")));
        assert!(super::super::eviction::pod_healthy(
            &s.get(&pt, "default", "a").unwrap()
        ));
        let b = s.get(&pt, "default", "b").unwrap();
        let cond = scheduled_condition(&b);
        assert_eq!(
            (cond["status"].as_str(), cond["reason"].as_str()),
            (Some("False"), Some("Unschedulable"))
        );
        let message = cond["message"].as_str().unwrap();
        assert_eq!(
            message,
            "0/2 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint {dedicated: x}."
        );
        // The provisioner's converter sees the pod as provisionable.
        let typed: Pod = serde_json::from_value((*b).clone()).unwrap();
        assert!(convert::is_provisionable(&typed));
        // Another pass writes nothing (the controllers run after every write).
        let rv = b["metadata"]["resourceVersion"].clone();
        schedule(&mut s);
        assert_eq!(
            s.get(&pt, "default", "b").unwrap()["metadata"]["resourceVersion"],
            rv
        );
    }

    fn scheduled_condition(pod: &Value) -> Value {
        pod.pointer("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|cs| cs.iter().find(|c| c["type"] == "PodScheduled").cloned())
            .unwrap_or_default()
    }

    /// A store with Ready nodes `(name, zone)` of 4 CPUs and 16Gi.
    fn cluster(nodes: &[(&str, &str)]) -> Store {
        let mut s = Store::new(1000);
        let nt = s.find("", "nodes").unwrap();
        for (name, zone) in nodes {
            s.create(
                &nt,
                None,
                super::super::sim_node(name, zone, "m5.xlarge", "4", "16Gi"),
                false,
            )
            .unwrap();
        }
        s
    }

    fn add_pod(s: &mut Store, name: &str, spec: Value) {
        let pt = s.find("", "pods").unwrap();
        let mut p = json!({"metadata": {"name": name, "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "100m", "memory": "100Mi"}}}]}});
        super::super::patch::merge(&mut p, &json!({"spec": spec}));
        s.create(&pt, Some("default"), p, false).unwrap();
    }

    fn placement(s: &Store, name: &str) -> Option<String> {
        let pt = s.find("", "pods").unwrap();
        s.get(&pt, "default", name)
            .unwrap()
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .map(str::to_owned)
    }

    #[test]
    fn scheduler_spreads_across_zones_and_honours_anti_affinity() {
        let mut s = cluster(&[
            ("a1", "us-east-1a"),
            ("a2", "us-east-1a"),
            ("b1", "us-east-1b"),
            ("c1", "us-east-1c"),
        ]);
        let spread = json!({"topologySpreadConstraints": [{"topologyKey": "topology.kubernetes.io/zone", "maxSkew": 1,
            "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}}}]});
        for i in 0..3 {
            add_pod(&mut s, &format!("web-{i}"), spread.clone());
        }
        schedule(&mut s);
        let mut zones: Vec<String> = (0..3)
            .map(|i| {
                let node = placement(&s, &format!("web-{i}")).expect("bound");
                let nt = s.find("", "nodes").unwrap();
                s.get(&nt, "", &node).unwrap()["metadata"]["labels"]["topology.kubernetes.io/zone"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        zones.sort();
        assert_eq!(zones, ["us-east-1a", "us-east-1b", "us-east-1c"]);

        let anti = json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"role": "db"}}}]}}});
        let pt = s.find("", "pods").unwrap();
        for i in 0..5 {
            let mut p = json!({"metadata": {"name": format!("db-{i}"), "labels": {"role": "db"}},
                "spec": {"containers": [{"name": "c"}]}});
            super::super::patch::merge(&mut p, &json!({"spec": anti}));
            s.create(&pt, Some("default"), p, false).unwrap();
        }
        schedule(&mut s);
        let mut nodes: Vec<Option<String>> = (0..5).map(|i| placement(&s, &format!("db-{i}"))).collect();
        nodes.sort();
        assert_eq!(nodes[0], None, "four nodes take four db pods, one each");
        assert_eq!(
            nodes
                .iter()
                .flatten()
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
            4
        );
        let stuck = (0..5)
            .map(|i| s.get(&pt, "default", &format!("db-{i}")).unwrap())
            .find(|p| p.pointer("/spec/nodeName").is_none())
            .unwrap();
        let cond = scheduled_condition(&stuck);
        assert_eq!(cond["reason"], "Unschedulable");
        assert!(
            cond["message"]
                .as_str()
                .unwrap()
                .contains("0/4 nodes are available"),
            "{cond}"
        );
    }

    #[test]
    fn scheduler_honours_host_ports_affinity_and_cordons() {
        let mut s = cluster(&[("n1", "us-east-1a"), ("n2", "us-east-1b")]);
        let nt = s.find("", "nodes").unwrap();
        let mut n2 = (*s.get(&nt, "", "n2").unwrap()).clone();
        n2["spec"]["unschedulable"] = json!(true);
        s.update(&nt, "", "n2", n2, WriteMode::Internal, false).unwrap();
        let port = json!({"containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 8080}]}]});
        add_pod(&mut s, "p1", port.clone());
        add_pod(&mut s, "p2", port);
        // Only a pod tolerating the cordon goes to the cordoned node.
        add_pod(
            &mut s,
            "tolerant",
            json!({"tolerations": [{"key": "node.kubernetes.io/unschedulable", "operator": "Exists"}],
                   "nodeSelector": {"topology.kubernetes.io/zone": "us-east-1b"}}),
        );
        add_pod(
            &mut s,
            "needs-b",
            json!({"nodeSelector": {"topology.kubernetes.io/zone": "us-east-1b"}}),
        );
        // Required node affinity with matchExpressions.
        add_pod(
            &mut s,
            "affine",
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1"]}]}]}}}}),
        );
        schedule(&mut s);
        let ports: Vec<Option<String>> = ["p1", "p2"].iter().map(|p| placement(&s, p)).collect();
        assert!(
            ports.contains(&Some("n1".into())) && ports.contains(&None),
            "{ports:?}"
        );
        assert_eq!(placement(&s, "tolerant").as_deref(), Some("n2"));
        assert_eq!(placement(&s, "needs-b"), None);
        assert_eq!(placement(&s, "affine").as_deref(), Some("n1"));
    }

    #[test]
    fn scheduler_places_daemonset_pods_gated_and_foreign_pods_are_left() {
        let mut s = cluster(&[("n1", "us-east-1a"), ("n2", "us-east-1b")]);
        let pt = s.find("", "pods").unwrap();
        s.create(
            &pt,
            Some("kube-system"),
            json!({"metadata": {"name": "ds-n2", "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "ds", "uid": "1", "controller": true}]},
                   "spec": {"containers": [{"name": "c"}], "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                       {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n2"]}]}]}}}}}),
            false,
        )
        .unwrap();
        add_pod(
            &mut s,
            "gated",
            json!({"schedulingGates": [{"name": "example.com/wait"}]}),
        );
        add_pod(&mut s, "foreign", json!({"schedulerName": "other"}));
        schedule(&mut s);
        let ds = s.get(&pt, "kube-system", "ds-n2").unwrap();
        assert_eq!(ds["spec"]["nodeName"], "n2");
        assert_eq!(placement(&s, "gated"), None);
        let gated = s.get(&pt, "default", "gated").unwrap();
        assert_eq!(scheduled_condition(&gated)["reason"], "SchedulingGated");
        assert_eq!(placement(&s, "foreign"), None);
        assert_eq!(
            scheduled_condition(&s.get(&pt, "default", "foreign").unwrap()),
            Value::Null
        );
    }

    #[test]
    fn scheduler_skips_not_ready_nodes_and_reports_bad_pods() {
        let mut s = cluster(&[("n1", "us-east-1a")]);
        let nt = s.find("", "nodes").unwrap();
        let mut n1 = (*s.get(&nt, "", "n1").unwrap()).clone();
        n1["status"]["conditions"][0]["status"] = json!("False");
        s.update(&nt, "", "n1", n1, WriteMode::Internal, false).unwrap();
        add_pod(&mut s, "p", json!({}));
        add_pod(
            &mut s,
            "bad",
            json!({"tolerations": [{"key": "k", "operator": "Sometimes"}]}),
        );
        schedule(&mut s);
        assert_eq!(placement(&s, "p"), None);
        let pt = s.find("", "pods").unwrap();
        let p = s.get(&pt, "default", "p").unwrap();
        assert!(
            scheduled_condition(&p)["message"]
                .as_str()
                .unwrap()
                .contains("not-ready"),
            "{p}"
        );
        let bad = s.get(&pt, "default", "bad").unwrap();
        let cond = scheduled_condition(&bad);
        assert_eq!(cond["reason"], "Unschedulable");
        assert!(
            cond["message"]
                .as_str()
                .unwrap()
                .contains("spec.tolerations[0].operator"),
            "{cond}"
        );
    }

    #[test]
    fn replicaset_controller_keeps_replicas() {
        let mut s = Store::new(1000);
        let rt = s.find("apps", "replicasets").unwrap();
        let pt = s.find("", "pods").unwrap();
        s.create(
            &rt,
            Some("default"),
            json!({"metadata": {"name": "web"}, "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c"}]}}}}),
            false,
        )
        .unwrap();
        replicasets(&mut s);
        let pods = s.all(&pt, Some("default"));
        assert_eq!(pods.len(), 3);
        assert!(pods.iter().all(|p| name_of(p).starts_with("web-")));
        s.remove(&pt, "default", name_of(&pods[0]));
        replicasets(&mut s);
        assert_eq!(s.all(&pt, Some("default")).len(), 3);
        let rs = s.get(&rt, "default", "web").unwrap();
        assert_eq!(rs["status"]["replicas"], 3);
        assert!(LabelSelector::parse("app=web").unwrap().matches(&pods[1]));
    }
}
