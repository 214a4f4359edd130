//! Simulated controllers: a kubelet, a scheduler, and Deployment/ReplicaSet controllers.
//! They run one reconciliation pass over the whole store after each burst of changes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use spot_core::Quantity;
use tokio::sync::broadcast::error::RecvError;

use super::Shared;
use super::store::{Store, WriteMode, name_of, namespace_of, uid_of};

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

fn quantity(v: Option<&Value>, millis: bool) -> i64 {
    let q = v.and_then(Value::as_str).and_then(|s| Quantity::parse(s).ok());
    match q {
        Some(q) if millis => q.to_millis().unwrap_or(i64::MAX),
        Some(q) => q.to_value(),
        None => 0,
    }
}

fn requests(pod: &Value) -> (i64, i64) {
    let containers = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    containers.iter().fold((0, 0), |(c, m), ct| {
        let r = ct.pointer("/resources/requests");
        (
            c.saturating_add(quantity(r.and_then(|r| r.get("cpu")), true)),
            m.saturating_add(quantity(r.and_then(|r| r.get("memory")), false)),
        )
    })
}

fn node_ready(node: &Value) -> bool {
    node.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some("Ready")
                    && c.get("status").and_then(Value::as_str) == Some("True")
            })
        })
}

/// Whether the pod tolerates a taint (NoSchedule/NoExecute taints must be tolerated).
pub(crate) fn tolerates(pod: &Value, taint: &Value) -> bool {
    let effect = taint.get("effect").and_then(Value::as_str).unwrap_or_default();
    if effect == "PreferNoSchedule" {
        return true;
    }
    let key = taint.get("key").and_then(Value::as_str).unwrap_or_default();
    let value = taint.get("value").and_then(Value::as_str).unwrap_or_default();
    pod.pointer("/spec/tolerations")
        .and_then(Value::as_array)
        .is_some_and(|ts| {
            ts.iter().any(|t| {
                let t_effect = t.get("effect").and_then(Value::as_str).unwrap_or_default();
                let t_key = t.get("key").and_then(Value::as_str).unwrap_or_default();
                let op = t.get("operator").and_then(Value::as_str).unwrap_or("Equal");
                let t_value = t.get("value").and_then(Value::as_str).unwrap_or_default();
                (t_effect.is_empty() || t_effect == effect)
                    && (t_key.is_empty() && op == "Exists" || t_key == key)
                    && (op == "Exists" || t_value == value)
            })
        })
}

/// Binds pending pods to the least-loaded feasible node.
fn schedule(store: &mut Store) {
    let (Some(nt), Some(pt)) = (store.find("", "nodes"), store.find("", "pods")) else {
        return;
    };
    let pods = store.all(&pt, None);
    let pending: Vec<_> = pods
        .iter()
        .filter(|p| {
            active(p)
                && p.pointer("/spec/nodeName")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
        })
        .cloned()
        .collect();
    if pending.is_empty() {
        return;
    }
    let mut used: BTreeMap<String, (i64, i64, i64)> = BTreeMap::new();
    for p in pods.iter().filter(|p| active(p)) {
        if let Some(n) = p
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        {
            let (c, m) = requests(p);
            let e = used.entry(n.to_owned()).or_default();
            *e = (e.0 + c, e.1 + m, e.2 + 1);
        }
    }
    let nodes: Vec<_> = store
        .all(&nt, None)
        .into_iter()
        .filter(|n| {
            node_ready(n)
                && n.pointer("/spec/unschedulable").and_then(Value::as_bool) != Some(true)
                && n.pointer("/metadata/deletionTimestamp").is_none()
        })
        .collect();
    for pod in pending {
        let (cpu, mem) = requests(&pod);
        let selector: BTreeMap<String, String> = pod
            .pointer("/spec/nodeSelector")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        let mut best: Option<(i64, String)> = None;
        for n in &nodes {
            let name = name_of(n);
            let labels = n.pointer("/metadata/labels");
            if !selector
                .iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)).and_then(Value::as_str) == Some(v))
            {
                continue;
            }
            let taints = n
                .pointer("/spec/taints")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if !taints.iter().all(|t| tolerates(&pod, t)) {
                continue;
            }
            let alloc = n.pointer("/status/allocatable");
            let a_cpu = quantity(alloc.and_then(|a| a.get("cpu")), true);
            let a_mem = quantity(alloc.and_then(|a| a.get("memory")), false);
            let a_pods = quantity(alloc.and_then(|a| a.get("pods")), false);
            let (u_cpu, u_mem, u_pods) = used.get(name).copied().unwrap_or_default();
            if u_cpu + cpu > a_cpu || u_mem + mem > a_mem || (a_pods > 0 && u_pods + 1 > a_pods) {
                continue;
            }
            let free = a_cpu - u_cpu - cpu;
            if best.as_ref().is_none_or(|(f, _)| free > *f) {
                best = Some((free, name.to_owned()));
            }
        }
        let Some((_, node)) = best else { continue };
        let mut next = (*pod).clone();
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
        if store
            .update(
                &pt,
                namespace_of(&pod),
                name_of(&pod),
                next,
                WriteMode::Internal,
                false,
            )
            .is_ok()
        {
            let e = used.entry(node).or_default();
            *e = (e.0 + cpu, e.1 + mem, e.2 + 1);
        }
    }
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
    fn tolerations() {
        let taint = json!({"key": "k", "value": "v", "effect": "NoSchedule"});
        let pod = |t: Value| json!({"spec": {"tolerations": t}});
        assert!(tolerates(&pod(json!([{"operator": "Exists"}])), &taint));
        assert!(tolerates(
            &pod(json!([{"key": "k", "operator": "Equal", "value": "v"}])),
            &taint
        ));
        assert!(!tolerates(
            &pod(json!([{"key": "k", "operator": "Equal", "value": "w"}])),
            &taint
        ));
        assert!(!tolerates(
            &pod(json!([{"key": "k", "operator": "Exists", "effect": "NoExecute"}])),
            &taint
        ));
        assert!(!tolerates(&json!({}), &taint));
        assert!(tolerates(
            &json!({}),
            &json!({"key": "k", "effect": "PreferNoSchedule"})
        ));
    }

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
