//! The policy/v1 Eviction decision: whether evicting a pod would violate a
//! PodDisruptionBudget.

use serde_json::{Value, json};

use super::selector::LabelSelector;
use super::store::{ApiError, Store, name_of};

/// Whether a pod counts as healthy for a budget: Running, Ready and not being deleted.
pub fn pod_healthy(pod: &Value) -> bool {
    pod.pointer("/metadata/deletionTimestamp").is_none()
        && pod.pointer("/status/phase").and_then(Value::as_str) == Some("Running")
        && pod
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|cs| {
                cs.iter().any(|c| {
                    c.get("type").and_then(Value::as_str) == Some("Ready")
                        && c.get("status").and_then(Value::as_str) == Some("True")
                })
            })
}

/// Resolves an int-or-percent against a total, rounding up as Kubernetes does.
fn scaled(v: &Value, total: i64) -> Result<i64, String> {
    match v {
        Value::Number(n) => n.as_i64().ok_or_else(|| format!("invalid value {n}")),
        Value::String(s) => match s.strip_suffix('%') {
            Some(p) => {
                let p: i64 = p
                    .trim()
                    .parse()
                    .map_err(|_| format!("invalid value for IntOrString: {s:?}"))?;
                Ok((p * total + 99) / 100)
            }
            None => s
                .parse()
                .map_err(|_| format!("invalid value for IntOrString: {s:?}")),
        },
        other => Err(format!("invalid value for IntOrString: {other}")),
    }
}

/// The budget arithmetic of one PDB over its pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Pods the budget expects (matching pods, or the replicas of their controllers).
    pub expected: i64,
    /// Healthy matching pods.
    pub healthy: i64,
    /// Healthy pods the budget requires.
    pub desired: i64,
}

impl Budget {
    /// How many more pods may be disrupted.
    pub fn disruptions_allowed(&self) -> i64 {
        (self.healthy - self.desired).max(0)
    }
}

/// Computes a PDB's budget from the store.
pub fn budget(store: &Store, pdb: &Value) -> Result<Budget, String> {
    let ns = pdb
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let selector = LabelSelector::from_object(pdb.pointer("/spec/selector")).map_err(|e| e.to_string())?;
    let pods_t = store.find("", "pods").ok_or("pods are not served")?;
    let pods: Vec<_> = if pdb.pointer("/spec/selector").is_none_or(Value::is_null) {
        Vec::new()
    } else {
        store
            .all(&pods_t, Some(ns))
            .into_iter()
            .filter(|p| selector.matches(p))
            .collect()
    };
    let healthy = pods.iter().filter(|p| pod_healthy(p)).count() as i64;
    // Expected pods: the replicas of the controllers (ReplicaSets) of the matching pods when
    // all have one, else the number of matching pods.
    let mut expected = pods.len() as i64;
    if let Some(rs_t) = store.find("apps", "replicasets") {
        let mut owners = std::collections::BTreeSet::new();
        let mut all_owned = !pods.is_empty();
        for p in &pods {
            let owner = p
                .pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .and_then(|refs| {
                    refs.iter().find(|r| {
                        r.get("controller").and_then(Value::as_bool) == Some(true)
                            && r.get("kind").and_then(Value::as_str) == Some("ReplicaSet")
                    })
                });
            match owner.and_then(|o| o.get("name")).and_then(Value::as_str) {
                Some(n) => {
                    owners.insert(n.to_owned());
                }
                None => all_owned = false,
            }
        }
        if all_owned {
            let replicas: Option<i64> = owners
                .iter()
                .map(|n| {
                    store
                        .get(&rs_t, ns, n)
                        .ok()
                        .and_then(|rs| rs.pointer("/spec/replicas").and_then(Value::as_i64))
                })
                .sum();
            if let Some(r) = replicas {
                expected = r;
            }
        }
    }
    let desired = match (
        pdb.pointer("/spec/minAvailable"),
        pdb.pointer("/spec/maxUnavailable"),
    ) {
        (Some(min), _) => scaled(min, expected)?,
        (None, Some(max)) => (expected - scaled(max, expected)?).max(0),
        (None, None) => {
            // Neither set: Kubernetes defaults minAvailable to 1.
            1
        }
    };
    Ok(Budget {
        expected,
        healthy,
        desired,
    })
}

/// Decides an eviction: `Ok(())` when it may proceed, a 429 (or 500 for several budgets)
/// otherwise. Also returns the budgets' new status objects to record.
pub fn check(store: &Store, pod: &Value) -> (Result<(), ApiError>, Vec<(String, Value)>) {
    let phase = pod
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if pod.pointer("/metadata/deletionTimestamp").is_some() || phase == "Succeeded" || phase == "Failed" {
        return (Ok(()), Vec::new());
    }
    let ns = pod
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let Some(pdb_t) = store.find("policy", "poddisruptionbudgets") else {
        return (Ok(()), Vec::new());
    };
    let pdbs: Vec<_> = store
        .all(&pdb_t, Some(ns))
        .into_iter()
        .filter(|pdb| {
            let sel = pdb.pointer("/spec/selector");
            !sel.is_none_or(Value::is_null) && LabelSelector::from_object(sel).is_ok_and(|s| s.matches(pod))
        })
        .collect();
    if pdbs.is_empty() {
        return (Ok(()), Vec::new());
    }
    if pdbs.len() > 1 {
        return (
            Err(ApiError::new(
                500,
                "InternalError",
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
            )),
            Vec::new(),
        );
    }
    let pdb = &pdbs[0];
    let b = match budget(store, pdb) {
        Ok(b) => b,
        Err(e) => return (Err(ApiError::new(500, "InternalError", e)), Vec::new()),
    };
    let allowed = if pod_healthy(pod) {
        b.disruptions_allowed() >= 1
    } else {
        b.healthy >= b.desired
    };
    let after = if allowed && pod_healthy(pod) {
        b.disruptions_allowed() - 1
    } else {
        b.disruptions_allowed()
    };
    let status = json!({
        "observedGeneration": pdb.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
        "currentHealthy": if allowed && pod_healthy(pod) { b.healthy - 1 } else { b.healthy },
        "desiredHealthy": b.desired,
        "expectedPods": b.expected,
        "disruptionsAllowed": after,
    });
    let updates = vec![(name_of(pdb).to_owned(), status)];
    if allowed {
        return (Ok(()), updates);
    }
    let err = ApiError {
        details: Some(json!({"causes": [{
            "reason": "DisruptionBudget",
            "message": format!("The disruption budget {} needs {} healthy pods and has {} currently", name_of(pdb), b.desired, b.healthy),
        }]})),
        ..ApiError::new(
            429,
            "TooManyRequests",
            "Cannot evict pod as it would violate the pod's disruption budget.",
        )
    };
    (Err(err), updates)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(pods: &[(&str, bool)], pdb_spec: Value) -> (Store, Vec<Value>) {
        let mut s = Store::new(1000);
        let pt = s.find("", "pods").unwrap();
        let mut out = Vec::new();
        for (name, ready) in pods {
            let p = json!({
                "metadata": {"name": name, "labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c"}]},
                "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if *ready { "True" } else { "False" }}]}
            });
            out.push((*s.create(&pt, Some("default"), p, false).unwrap()).clone());
        }
        let bt = s.find("policy", "poddisruptionbudgets").unwrap();
        let mut spec = pdb_spec;
        spec["selector"] = json!({"matchLabels": {"app": "web"}});
        s.create(
            &bt,
            Some("default"),
            json!({"metadata": {"name": "web"}, "spec": spec}),
            false,
        )
        .unwrap();
        (s, out)
    }

    #[test]
    fn min_available_int_and_percent() {
        let (s, pods) = setup(
            &[("a", true), ("b", true), ("c", true)],
            json!({"minAvailable": 2}),
        );
        assert!(check(&s, &pods[0]).0.is_ok());
        let (s, pods) = setup(
            &[("a", true), ("b", true), ("c", true)],
            json!({"minAvailable": 3}),
        );
        let err = check(&s, &pods[0]).0.unwrap_err();
        assert_eq!(err.code, 429);
        assert!(
            err.status()["details"]["causes"][0]["message"]
                .as_str()
                .unwrap()
                .contains("needs 3 healthy pods and has 3")
        );
        // 50% of 3 rounds up to 2.
        let (s, pods) = setup(
            &[("a", true), ("b", true), ("c", true)],
            json!({"minAvailable": "50%"}),
        );
        assert!(check(&s, &pods[0]).0.is_ok());
        let (s, pods) = setup(
            &[("a", true), ("b", true), ("c", false)],
            json!({"minAvailable": "50%"}),
        );
        assert_eq!(check(&s, &pods[0]).0.unwrap_err().code, 429);
        // The unhealthy pod may go: the budget is met without it.
        assert!(check(&s, &pods[2]).0.is_ok());
    }

    #[test]
    fn max_unavailable_int_and_percent() {
        let (s, pods) = setup(&[("a", true), ("b", true)], json!({"maxUnavailable": 0}));
        assert_eq!(check(&s, &pods[0]).0.unwrap_err().code, 429);
        let (s, pods) = setup(&[("a", true), ("b", true)], json!({"maxUnavailable": 1}));
        let (res, status) = check(&s, &pods[0]);
        assert!(res.is_ok());
        assert_eq!(status[0].1["disruptionsAllowed"], 0);
        let (s, pods) = setup(&[("a", true), ("b", false)], json!({"maxUnavailable": "50%"}));
        assert_eq!(check(&s, &pods[0]).0.unwrap_err().code, 429);
        assert_eq!(scaled(&json!("25%"), 10), Ok(3));
        assert!(scaled(&json!("x%"), 10).is_err());
    }
}
