//! The four patch flavours of the Kubernetes API, over JSON values.
//!
//! - JSON merge patch (RFC 7386).
//! - Strategic merge patch, for the fields this workspace uses: maps merge, `null` deletes,
//!   lists are replaced (as for `spec.taints`, which has no patch merge key) except the lists
//!   Kubernetes merges by name (`containers`, `initContainers`, `volumes`, `env`, ...);
//!   `$patch`, `$setElementOrder/`, `$retainKeys` and `$deleteFromPrimitiveList/` directives
//!   are understood.
//! - JSON patch (RFC 6902) including `test`, `move` and `copy`.
//! - Server-side apply, approximated by a strategic merge of the applied configuration.

use serde_json::{Map, Value};

/// Errors of patch application.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The patch document itself is malformed (Kubernetes answers 400).
    #[error("malformed patch: {0}")]
    Malformed(String),
    /// A JSON patch operation could not be applied, or a `test` failed (Kubernetes answers
    /// 422).
    #[error("{0}")]
    Failed(String),
}

/// RFC 7386 JSON merge patch.
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target) = target else { return };
    for (k, v) in patch {
        if v.is_null() {
            target.remove(k);
        } else {
            merge(target.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// The merge key of the lists Kubernetes merges element-wise in a strategic merge patch.
fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "containers" | "initContainers" | "ephemeralContainers" | "volumes" | "env" | "imagePullSecrets" => {
            Some("name")
        }
        "volumeMounts" => Some("mountPath"),
        "conditions" => Some("type"),
        "ports" => Some("containerPort"),
        _ => None,
    }
}

/// Strategic merge patch.
pub fn strategic(target: &mut Value, patch: &Value) -> Result<(), Error> {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return Ok(());
    };
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut p = patch.clone();
            p.remove("$patch");
            *target = Value::Object(p);
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Null;
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => return Err(Error::Malformed(format!("unknown $patch directive {other:?}"))),
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else { return Ok(()) };
    for (k, v) in patch {
        if k == "$patch" || k == "$retainKeys" || k.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(remove)) = (t.get_mut(field), v) {
                list.retain(|x| !remove.contains(x));
            }
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        match (merge_key(k), v) {
            (Some(key), Value::Array(items)) => {
                let existing = t.entry(k.clone()).or_insert_with(|| Value::Array(Vec::new()));
                if !existing.is_array() {
                    *existing = Value::Array(Vec::new());
                }
                let Value::Array(list) = existing else { continue };
                for item in items {
                    let id = item.get(key).cloned();
                    let directive = item.get("$patch").and_then(Value::as_str);
                    let pos = id
                        .as_ref()
                        .and_then(|id| list.iter().position(|e| e.get(key) == Some(id)));
                    match (pos, directive) {
                        (Some(i), Some("delete")) => {
                            list.remove(i);
                        }
                        (None, Some("delete")) => {}
                        (Some(i), _) => strategic(&mut list[i], item)?,
                        (None, _) => {
                            let mut fresh = Value::Null;
                            strategic(&mut fresh, item)?;
                            list.push(fresh);
                        }
                    }
                }
            }
            (_, Value::Object(_)) => {
                let slot = t.entry(k.clone()).or_insert(Value::Null);
                strategic(slot, v)?;
                if slot.is_null() {
                    t.remove(k);
                }
            }
            (_, Value::Array(items)) => {
                // Replace, dropping `$patch` directive elements of an atomic list.
                let items: Vec<Value> = items
                    .iter()
                    .filter(|i| i.get("$patch").is_none())
                    .cloned()
                    .collect();
                t.insert(k.clone(), Value::Array(items));
            }
            _ => {
                t.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(())
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

fn parse_pointer(path: &str) -> Result<Vec<String>, Error> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| Error::Malformed(format!("path {path:?} does not start with /")))?;
    Ok(rest.split('/').map(unescape).collect())
}

fn parent_mut<'a>(doc: &'a mut Value, tokens: &[String], path: &str) -> Result<&'a mut Value, Error> {
    let mut cur = doc;
    for t in tokens {
        cur = match cur {
            Value::Object(m) => m.get_mut(t),
            Value::Array(a) => t.parse::<usize>().ok().and_then(move |i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| Error::Failed(format!("doc is missing path: {path:?}")))?;
    }
    Ok(cur)
}

fn get_at<'a>(doc: &'a Value, tokens: &[String]) -> Option<&'a Value> {
    let mut cur = doc;
    for t in tokens {
        cur = match cur {
            Value::Object(m) => m.get(t)?,
            Value::Array(a) => a.get(t.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn remove_at(doc: &mut Value, tokens: &[String], path: &str) -> Result<Value, Error> {
    let missing = || Error::Failed(format!("unable to remove nonexistent key: {path:?}"));
    let (last, parent) = tokens
        .split_last()
        .ok_or_else(|| Error::Failed("cannot remove the root".into()))?;
    match parent_mut(doc, parent, path)? {
        Value::Object(m) => m.remove(last).ok_or_else(missing),
        Value::Array(a) => {
            let i = last.parse::<usize>().map_err(|_| missing())?;
            if i < a.len() {
                Ok(a.remove(i))
            } else {
                Err(missing())
            }
        }
        _ => Err(missing()),
    }
}

fn add_at(doc: &mut Value, tokens: &[String], value: Value, path: &str) -> Result<(), Error> {
    let Some((last, parent)) = tokens.split_last() else {
        *doc = value;
        return Ok(());
    };
    match parent_mut(doc, parent, path)? {
        Value::Object(m) => {
            m.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(a) => {
            let i = if last == "-" {
                a.len()
            } else {
                last.parse::<usize>()
                    .map_err(|_| Error::Failed(format!("invalid array index in {path:?}")))?
            };
            if i > a.len() {
                return Err(Error::Failed(format!("array index out of bounds in {path:?}")));
            }
            a.insert(i, value);
            Ok(())
        }
        _ => Err(Error::Failed(format!("doc is missing path: {path:?}"))),
    }
}

/// RFC 6902 JSON patch. The document is left unchanged when an operation fails.
pub fn json_patch(doc: &mut Value, patch: &Value) -> Result<(), Error> {
    let ops = patch
        .as_array()
        .ok_or_else(|| Error::Malformed("a JSON patch must be an array".into()))?;
    let mut work = doc.clone();
    for op in ops {
        let name = op
            .get("op")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::Malformed("operation without \"op\"".into()))?;
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::Malformed(format!("{name} operation without \"path\"")))?;
        let tokens = parse_pointer(path)?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| Error::Malformed(format!("{name} operation without \"value\"")))
        };
        let from = || -> Result<(String, Vec<String>), Error> {
            let f = op
                .get("from")
                .and_then(Value::as_str)
                .ok_or_else(|| Error::Malformed(format!("{name} operation without \"from\"")))?;
            Ok((f.to_owned(), parse_pointer(f)?))
        };
        match name {
            "add" => add_at(&mut work, &tokens, value()?, path)?,
            "remove" => {
                remove_at(&mut work, &tokens, path)?;
            }
            "replace" => {
                let v = value()?;
                if tokens.is_empty() {
                    work = v;
                } else {
                    let slot = parent_mut(&mut work, &tokens, path).map_err(|_| {
                        Error::Failed(format!(
                            "replace operation does not apply: doc is missing key: {path}"
                        ))
                    })?;
                    *slot = v;
                }
            }
            "test" => {
                let want = value()?;
                if get_at(&work, &tokens) != Some(&want) {
                    return Err(Error::Failed(format!("testing value {path} failed: test failed")));
                }
            }
            "move" => {
                let (f, ftokens) = from()?;
                let v = remove_at(&mut work, &ftokens, &f)?;
                add_at(&mut work, &tokens, v, path)?;
            }
            "copy" => {
                let (f, ftokens) = from()?;
                let v = get_at(&work, &ftokens)
                    .cloned()
                    .ok_or_else(|| Error::Failed(format!("doc is missing from path: {f:?}")))?;
                add_at(&mut work, &tokens, v, path)?;
            }
            other => {
                return Err(Error::Malformed(format!(
                    "unexpected kind of operation {other:?}"
                )));
            }
        }
    }
    *doc = work;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_rfc7386() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge(&mut doc, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(doc, json!({"a": "z", "c": {"d": "e"}}));
        let mut doc = json!({"a": [1, 2]});
        merge(&mut doc, &json!({"a": [3]}));
        assert_eq!(doc, json!({"a": [3]}));
    }

    #[test]
    fn strategic_replaces_taints_and_merges_containers() {
        let mut node = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"taints": [{"key": "x", "effect": "NoSchedule"}]}});
        strategic(
            &mut node,
            &json!({"metadata": {"labels": {"a": null, "c": "3"}, "$setElementOrder/x": []}, "spec": {"unschedulable": true, "taints": [{"key": "y", "effect": "NoExecute"}]}}),
        )
        .unwrap();
        assert_eq!(
            node,
            json!({"metadata": {"labels": {"b": "2", "c": "3"}}, "spec": {"unschedulable": true, "taints": [{"key": "y", "effect": "NoExecute"}]}})
        );
        let mut pod =
            json!({"spec": {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "1"}]}});
        strategic(
            &mut pod,
            &json!({"spec": {"containers": [{"name": "b", "image": "2"}, {"name": "c", "image": "3"}, {"name": "a", "$patch": "delete"}]}}),
        )
        .unwrap();
        assert_eq!(
            pod,
            json!({"spec": {"containers": [{"name": "b", "image": "2"}, {"name": "c", "image": "3"}]}})
        );
        let mut doc = json!({"spec": {"x": {"a": 1}}});
        strategic(&mut doc, &json!({"spec": {"x": {"$patch": "replace", "b": 2}}})).unwrap();
        assert_eq!(doc, json!({"spec": {"x": {"b": 2}}}));
        assert!(strategic(&mut doc, &json!({"$patch": "bogus"})).is_err());
    }

    #[test]
    fn json_patch_ops_and_test_failure() {
        let mut doc = json!({"spec": {"taints": [{"key": "a"}]}, "metadata": {"resourceVersion": "5"}});
        json_patch(
            &mut doc,
            &json!([
                {"op": "test", "path": "/metadata/resourceVersion", "value": "5"},
                {"op": "add", "path": "/spec/taints/-", "value": {"key": "b"}},
                {"op": "add", "path": "/metadata/labels", "value": {"x~y/z": "1"}},
                {"op": "copy", "from": "/spec/taints/0", "path": "/spec/first"},
                {"op": "move", "from": "/spec/first", "path": "/spec/moved"},
                {"op": "replace", "path": "/metadata/labels/x~0y~1z", "value": "2"}
            ]),
        )
        .unwrap();
        assert_eq!(
            doc,
            json!({"spec": {"taints": [{"key": "a"}, {"key": "b"}], "moved": {"key": "a"}}, "metadata": {"resourceVersion": "5", "labels": {"x~y/z": "2"}}})
        );
        let before = doc.clone();
        let err = json_patch(
            &mut doc,
            &json!([{"op": "remove", "path": "/spec/taints/0"}, {"op": "test", "path": "/metadata/resourceVersion", "value": "4"}]),
        )
        .unwrap_err();
        assert!(matches!(err, Error::Failed(_)), "{err:?}");
        assert_eq!(doc, before, "a failed patch leaves the document alone");
        assert!(matches!(
            json_patch(&mut doc, &json!({"op": "add"})),
            Err(Error::Malformed(_))
        ));
        assert!(matches!(
            json_patch(&mut doc, &json!([{"op": "remove", "path": "/nope"}])),
            Err(Error::Failed(_))
        ));
    }
}
