//! Server-side printing: `meta.k8s.io/v1` Table responses for clients that ask for them
//! (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`), as `kubectl get` does.

use serde_json::{Value, json};

/// Whether the Accept header asks for a Table.
pub fn wants_table(accept: &str) -> bool {
    accept.split(',').any(|part| {
        let params: Vec<&str> = part.split(';').map(str::trim).collect();
        params.contains(&"as=Table") && params.contains(&"g=meta.k8s.io") && params.contains(&"v=v1")
    })
}

fn col(name: &str, priority: u8) -> Value {
    let format = if name == "Name" { "name" } else { "" };
    json!({"name": name, "type": "string", "format": format, "description": "", "priority": priority})
}

/// kubectl's short human duration.
pub fn human_age(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..120 => format!("{s}s"),
        120..600 => format!("{}m{}s", s / 60, s % 60),
        600..10_800 => format!("{}m", s / 60),
        10_800..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

fn age(obj: &Value) -> String {
    let created = obj
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .and_then(|t| time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok());
    match created {
        Some(t) => human_age((time::OffsetDateTime::now_utc() - t).whole_seconds()),
        None => "<unknown>".into(),
    }
}

fn s<'a>(obj: &'a Value, pointer: &str) -> &'a str {
    obj.pointer(pointer).and_then(Value::as_str).unwrap_or_default()
}

fn or_none(v: &str) -> String {
    if v.is_empty() {
        "<none>".into()
    } else {
        v.to_owned()
    }
}

fn condition(obj: &Value, kind: &str) -> Option<String> {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind))
        .map(|c| s(c, "/status").to_owned())
}

fn int(obj: &Value, pointer: &str) -> i64 {
    obj.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

/// Column definitions and cells of one object.
fn columns(kind: &str) -> Vec<Value> {
    match kind {
        "Pod" => vec![
            col("Name", 0),
            col("Ready", 0),
            col("Status", 0),
            col("Restarts", 0),
            col("Age", 0),
            col("IP", 1),
            col("Node", 1),
            col("Nominated Node", 1),
            col("Readiness Gates", 1),
        ],
        "Node" => vec![
            col("Name", 0),
            col("Status", 0),
            col("Roles", 0),
            col("Age", 0),
            col("Version", 0),
            col("Internal-IP", 1),
            col("External-IP", 1),
            col("Instance-Type", 1),
            col("Zone", 1),
        ],
        "Deployment" => {
            vec![
                col("Name", 0),
                col("Ready", 0),
                col("Up-to-date", 0),
                col("Available", 0),
                col("Age", 0),
            ]
        }
        "ReplicaSet" => vec![
            col("Name", 0),
            col("Desired", 0),
            col("Current", 0),
            col("Ready", 0),
            col("Age", 0),
        ],
        "PodDisruptionBudget" => vec![
            col("Name", 0),
            col("Min Available", 0),
            col("Max Unavailable", 0),
            col("Allowed Disruptions", 0),
            col("Age", 0),
        ],
        "Event" => vec![
            col("Last Seen", 0),
            col("Type", 0),
            col("Reason", 0),
            col("Object", 0),
            col("Message", 0),
        ],
        _ => vec![col("Name", 0), col("Age", 0)],
    }
}

fn cells(kind: &str, o: &Value) -> Vec<Value> {
    let name = json!(s(o, "/metadata/name"));
    match kind {
        "Pod" => {
            let containers = o
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            let ready = if condition(o, "Ready").as_deref() == Some("True") {
                containers
            } else {
                0
            };
            let status = if o.pointer("/metadata/deletionTimestamp").is_some() {
                "Terminating".to_owned()
            } else {
                or_none(s(o, "/status/phase")).replace("<none>", "Pending")
            };
            vec![
                name,
                json!(format!("{ready}/{containers}")),
                json!(status),
                json!(0),
                json!(age(o)),
                json!(or_none(s(o, "/status/podIP"))),
                json!(or_none(s(o, "/spec/nodeName"))),
                json!("<none>"),
                json!("<none>"),
            ]
        }
        "Node" => {
            let mut status = match condition(o, "Ready").as_deref() {
                Some("True") => "Ready".to_owned(),
                Some(_) => "NotReady".to_owned(),
                None => "Unknown".to_owned(),
            };
            if o.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
                status.push_str(",SchedulingDisabled");
            }
            let address = |t: &str| {
                o.pointer("/status/addresses")
                    .and_then(Value::as_array)
                    .and_then(|a| a.iter().find(|x| x["type"] == t))
                    .map_or_else(|| "<none>".to_owned(), |x| s(x, "/address").to_owned())
            };
            let labels = o.pointer("/metadata/labels");
            let label = |k: &str| {
                or_none(
                    labels
                        .and_then(|l| l.get(k))
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                )
            };
            vec![
                name,
                json!(status),
                json!("<none>"),
                json!(age(o)),
                json!(s(o, "/status/nodeInfo/kubeletVersion")),
                json!(address("InternalIP")),
                json!(address("ExternalIP")),
                json!(label("node.kubernetes.io/instance-type")),
                json!(label("topology.kubernetes.io/zone")),
            ]
        }
        "Deployment" => vec![
            name,
            json!(format!(
                "{}/{}",
                int(o, "/status/readyReplicas"),
                int(o, "/spec/replicas")
            )),
            json!(int(o, "/status/updatedReplicas")),
            json!(int(o, "/status/availableReplicas")),
            json!(age(o)),
        ],
        "ReplicaSet" => vec![
            name,
            json!(int(o, "/spec/replicas")),
            json!(int(o, "/status/replicas")),
            json!(int(o, "/status/readyReplicas")),
            json!(age(o)),
        ],
        "PodDisruptionBudget" => {
            let v = |p: &str| {
                o.pointer(p).map_or_else(
                    || "N/A".to_owned(),
                    |x| x.as_str().map_or_else(|| x.to_string(), str::to_owned),
                )
            };
            vec![
                name,
                json!(v("/spec/minAvailable")),
                json!(v("/spec/maxUnavailable")),
                json!(int(o, "/status/disruptionsAllowed")),
                json!(age(o)),
            ]
        }
        "Event" => {
            // core/v1 and events.k8s.io/v1 spell the same things differently.
            let first = |a: &str, b: &str| {
                let v = s(o, a);
                if v.is_empty() {
                    s(o, b).to_owned()
                } else {
                    v.to_owned()
                }
            };
            let seen = first("/lastTimestamp", "/eventTime");
            let seen = time::OffsetDateTime::parse(&seen, &time::format_description::well_known::Rfc3339)
                .map_or_else(
                    |_| "<unknown>".to_owned(),
                    |t| human_age((time::OffsetDateTime::now_utc() - t).whole_seconds()),
                );
            let object = format!(
                "{}/{}",
                first("/involvedObject/kind", "/regarding/kind").to_lowercase(),
                first("/involvedObject/name", "/regarding/name")
            );
            vec![
                json!(seen),
                json!(s(o, "/type")),
                json!(s(o, "/reason")),
                json!(object),
                json!(first("/message", "/note")),
            ]
        }
        _ => vec![name, json!(age(o))],
    }
}

fn row(kind: &str, o: &Value) -> Value {
    json!({
        "cells": cells(kind, o),
        "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o.get("metadata").cloned().unwrap_or_default()},
    })
}

/// A Table of objects of one kind.
pub fn table<'a>(kind: &str, objects: impl IntoIterator<Item = &'a Value>, metadata: Value) -> Value {
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": columns(kind),
        "rows": objects.into_iter().map(|o| row(kind, o)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation() {
        assert!(wants_table(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
        ));
        assert!(!wants_table("application/json"));
        assert!(!wants_table("application/json;as=Table;v=v1beta1;g=meta.k8s.io"));
    }

    #[test]
    fn pod_and_node_rows() {
        let pod = json!({"metadata": {"name": "p", "deletionTimestamp": "2026-01-01T00:00:00Z"}, "spec": {"nodeName": "n", "containers": [{}, {}]}, "status": {"phase": "Running", "podIP": "10.0.0.2", "conditions": [{"type": "Ready", "status": "True"}]}});
        let t = table("Pod", [&pod], json!({}));
        assert_eq!(
            t["rows"][0]["cells"],
            json!([
                "p",
                "2/2",
                "Terminating",
                0,
                "<unknown>",
                "10.0.0.2",
                "n",
                "<none>",
                "<none>"
            ])
        );
        assert_eq!(t["rows"][0]["object"]["metadata"]["name"], "p");
        let node = json!({"metadata": {"name": "n", "labels": {"topology.kubernetes.io/zone": "z"}}, "spec": {"unschedulable": true}, "status": {"conditions": [{"type": "Ready", "status": "True"}], "nodeInfo": {"kubeletVersion": "v1.33.0"}}});
        let t = table("Node", [&node], json!({}));
        assert_eq!(t["rows"][0]["cells"][1], "Ready,SchedulingDisabled");
        assert_eq!(t["rows"][0]["cells"][8], "z");
        assert_eq!(t["columnDefinitions"].as_array().unwrap().len(), 9);
    }

    #[test]
    fn ages() {
        assert_eq!(human_age(5), "5s");
        assert_eq!(human_age(125), "2m5s");
        assert_eq!(human_age(3000), "50m");
        assert_eq!(human_age(7200 * 3), "6h");
        assert_eq!(human_age(86_400 * 3), "3d");
    }
}
