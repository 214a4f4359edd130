//! HTTP handling: routing, discovery, OpenAPI, the verbs and watch streaming.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::Shared;
use super::eviction;
use super::patch;
use super::selector::{FieldSelector, LabelSelector};
use super::store::{
    ApiError, Change, ChangeKind, ListQuery, ResourceType, WriteMode, name_of, namespace_of, uid_of,
};
use super::table;

/// The Kubernetes version the simulator reports.
pub const SERVER_VERSION: (&str, &str) = ("1", "33");

fn json_response(code: u16, body: &Value) -> Response {
    bytes_response(code, serde_json::to_vec(body).unwrap_or_default())
}

fn bytes_response(code: u16, body: Vec<u8>) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn error_response(e: &ApiError) -> Response {
    json_response(e.code, &e.status())
}

fn obj_response(code: u16, obj: &Value) -> Response {
    json_response(code, obj)
}

/// What a resource URL addresses.
struct Target {
    rt: Arc<ResourceType>,
    version: String,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

fn query_bool(q: &HashMap<String, String>, key: &str) -> bool {
    q.get(key).is_some_and(|v| v == "true" || v == "1")
}

fn dry_run(q: &HashMap<String, String>) -> Result<bool, ApiError> {
    match q.get("dryRun").map(String::as_str) {
        None | Some("") => Ok(false),
        Some("All") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "unsupported dryRun value {other:?}: only All is supported"
        ))),
    }
}

fn list_query(q: &HashMap<String, String>) -> Result<ListQuery, ApiError> {
    let labels = LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))
        .map_err(|e| ApiError::bad_request(format!("labelSelector: {e}")))?;
    let fields = FieldSelector::parse(q.get("fieldSelector").map_or("", String::as_str))
        .map_err(|e| ApiError::bad_request(format!("fieldSelector: {e}")))?;
    let limit = match q.get("limit") {
        Some(l) => l
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
        None => 0,
    };
    let continue_token = q.get("continue").filter(|c| !c.is_empty()).cloned();
    Ok(ListQuery {
        labels,
        fields,
        limit,
        continue_token,
    })
}

/// The single entry point: every request goes through here.
pub(crate) async fn handle(
    State(sim): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query: HashMap<String, String> = match Query::try_from_uri(&uri) {
        Ok(Query(q)) => q,
        Err(e) => return error_response(&ApiError::bad_request(format!("invalid query: {e}"))),
    };
    let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    match route(&sim, &method, &segments, &query, &headers, &body).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

async fn route(
    sim: &Arc<Shared>,
    method: &Method,
    segments: &[&str],
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let not_found = || {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    };
    let (group, version, rest) = match segments {
        ["version"] => return Ok(json_response(200, &version_info())),
        ["healthz" | "readyz" | "livez"] => return Ok((StatusCode::OK, "ok").into_response()),
        ["api"] => return Ok(json_response(200, &api_versions(sim))),
        ["apis"] => return Ok(json_response(200, &api_group_list(sim))),
        ["openapi", "v3"] => return Ok(json_response(200, &openapi_root(sim))),
        ["openapi", "v3", rest @ ..] => {
            let (g, v) = match rest {
                ["api", v] => ("", *v),
                ["apis", g, v] => (*g, *v),
                _ => return Err(not_found()),
            };
            return openapi_doc(sim, g, v)
                .map(|d| json_response(200, &d))
                .ok_or_else(not_found);
        }
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", g] => {
            let groups = api_group_list(sim);
            let found = groups["groups"]
                .as_array()
                .and_then(|gs| gs.iter().find(|x| x["name"] == *g))
                .cloned();
            return found
                .map(|mut g| {
                    g["kind"] = json!("APIGroup");
                    g["apiVersion"] = json!("v1");
                    json_response(200, &g)
                })
                .ok_or_else(not_found);
        }
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(not_found()),
    };
    if rest.is_empty() {
        if method != Method::GET {
            return Err(ApiError::new(
                405,
                "MethodNotAllowed",
                "the server does not allow this method",
            ));
        }
        return resource_list(sim, group, version)
            .map(|d| json_response(200, &d))
            .ok_or_else(not_found);
    }
    let target = {
        let store = sim.lock();
        let ns_target = match rest {
            ["namespaces", ns, plural, tail @ ..] => store
                .resolve(group, version, plural)
                .filter(|t| t.namespaced)
                .map(|t| (t, Some((*ns).to_owned()), tail)),
            _ => None,
        };
        let (rt, namespace, tail) = match ns_target {
            Some(x) => x,
            None => {
                let (plural, tail) = rest.split_first().ok_or_else(not_found)?;
                (
                    store.resolve(group, version, plural).ok_or_else(not_found)?,
                    None,
                    tail,
                )
            }
        };
        let (name, subresource) = match tail {
            [] => (None, None),
            [name] => (Some((*name).to_owned()), None),
            [name, sub] => (Some((*name).to_owned()), Some((*sub).to_owned())),
            _ => return Err(not_found()),
        };
        Target {
            rt,
            version: version.to_owned(),
            namespace,
            name,
            subresource,
        }
    };
    if target.rt.namespaced && target.name.is_some() && target.namespace.is_none() {
        return Err(not_found());
    }
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let as_table = table::wants_table(accept);
    match (
        method.clone(),
        target.name.is_some(),
        target.subresource.as_deref(),
    ) {
        (Method::GET, false, None) if query_bool(query, "watch") => watch(sim, &target, query, as_table),
        (Method::GET, false, None) => list(sim, &target, query, as_table),
        (Method::GET, true, None | Some("status")) => get(sim, &target, as_table),
        (Method::POST, false, None) => create(sim, &target, query, body),
        (Method::POST, true, Some("eviction")) if target.rt.kind == "Pod" => evict(sim, &target, query, body),
        (Method::POST, true, Some("binding")) if target.rt.kind == "Pod" => bind(sim, &target, body),
        (Method::PUT, true, None) => update(sim, &target, query, body, WriteMode::Main),
        (Method::PUT, true, Some("status")) => update(sim, &target, query, body, WriteMode::Status),
        (Method::PATCH, true, None) => patch(sim, &target, query, headers, body, WriteMode::Main),
        (Method::PATCH, true, Some("status")) => patch(sim, &target, query, headers, body, WriteMode::Status),
        (Method::GET | Method::PUT | Method::PATCH, true, Some("scale")) if has_scale(&target.rt) => {
            scale(sim, &target, method.clone(), query, headers, body)
        }
        (Method::DELETE, true, None) => delete(sim, &target, query, body),
        (Method::DELETE, false, None) => delete_collection(sim, &target, query, body),
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )),
    }
}

fn version_info() -> Value {
    json!({
        "major": SERVER_VERSION.0, "minor": SERVER_VERSION.1,
        "gitVersion": format!("v{}.{}.0-spot-kube-sim", SERVER_VERSION.0, SERVER_VERSION.1),
        "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24.0", "compiler": "gc",
        "platform": "linux/amd64",
    })
}

fn api_versions(sim: &Shared) -> Value {
    json!({
        "kind": "APIVersions", "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": sim.server_address()}],
    })
}

fn api_group_list(sim: &Shared) -> Value {
    let store = sim.lock();
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for t in store.types().iter().filter(|t| !t.group.is_empty()) {
        match groups.iter_mut().find(|(g, _)| *g == t.group) {
            Some((_, vs)) => {
                for v in &t.versions {
                    if !vs.contains(v) {
                        vs.push(v.clone());
                    }
                }
            }
            None => groups.push((t.group.clone(), t.versions.clone())),
        }
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(g, vs)| {
            let versions: Vec<Value> = vs
                .iter()
                .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                .collect();
            json!({"name": g, "versions": versions, "preferredVersion": versions[0]})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

fn resource_list(sim: &Shared, group: &str, version: &str) -> Option<Value> {
    let store = sim.lock();
    let types: Vec<_> = store
        .types()
        .iter()
        .filter(|t| t.group == group && t.versions.iter().any(|v| v == version))
        .collect();
    if types.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for t in types {
        let mut r = json!({
            "name": t.plural, "singularName": t.singular, "namespaced": t.namespaced, "kind": t.kind,
            "verbs": VERBS, "shortNames": t.short_names, "storageVersionHash": "",
        });
        if !t.categories.is_empty() {
            r["categories"] = json!(t.categories);
        }
        resources.push(r);
        if t.status_subresource {
            resources.push(json!({"name": format!("{}/status", t.plural), "singularName": "", "namespaced": t.namespaced, "kind": t.kind, "verbs": ["get", "patch", "update"]}));
        }
        if has_scale(t) {
            resources.push(json!({"name": format!("{}/scale", t.plural), "singularName": "", "namespaced": true, "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]}));
        }
        if t.kind == "Pod" && t.group.is_empty() {
            resources.push(json!({"name": "pods/eviction", "singularName": "", "namespaced": true, "group": "policy", "version": "v1", "kind": "Eviction", "verbs": ["create"]}));
            resources.push(json!({"name": "pods/binding", "singularName": "", "namespaced": true, "kind": "Binding", "verbs": ["create"]}));
        }
    }
    let gv = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}))
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

fn openapi_root(sim: &Shared) -> Value {
    let store = sim.lock();
    let mut paths = serde_json::Map::new();
    let rv = store.resource_version();
    for t in store.types() {
        for v in &t.versions {
            let p = gv_path(&t.group, v);
            paths.insert(
                p.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={rv:016X}")}),
            );
        }
    }
    json!({"paths": paths})
}

/// A minimal OpenAPI v3 document of one group-version: a PATCH operation per kind carrying
/// `x-kubernetes-group-version-kind` and the `fieldValidation` parameter, which is what
/// kubectl looks for before relying on server-side field validation.
fn openapi_doc(sim: &Shared, group: &str, version: &str) -> Option<Value> {
    let store = sim.lock();
    let mut paths = serde_json::Map::new();
    let mut any = false;
    for t in store
        .types()
        .iter()
        .filter(|t| t.group == group && t.versions.iter().any(|v| v == version))
    {
        any = true;
        let base = format!("/{}", gv_path(group, version));
        let path = if t.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", t.plural)
        } else {
            format!("{base}/{}/{{name}}", t.plural)
        };
        let params: Vec<Value> = ["dryRun", "fieldManager", "fieldValidation", "force"]
            .iter()
            .map(|n| json!({"name": n, "in": "query", "schema": {"type": "string", "uniqueItems": true}}))
            .collect();
        let gvk = json!({"group": group, "version": version, "kind": t.kind});
        paths.insert(
            path,
            json!({
                "patch": {
                    "operationId": format!("patch{}", t.kind),
                    "parameters": params,
                    "responses": {"200": {"description": "OK"}},
                    "x-kubernetes-action": "patch",
                    "x-kubernetes-group-version-kind": gvk,
                },
                "get": {
                    "operationId": format!("read{}", t.kind),
                    "responses": {"200": {"description": "OK"}},
                    "x-kubernetes-action": "get",
                    "x-kubernetes-group-version-kind": gvk,
                },
            }),
        );
    }
    any.then(|| {
        json!({
            "openapi": "3.0.0",
            "info": {"title": "Kubernetes", "version": format!("v{}.{}.0", SERVER_VERSION.0, SERVER_VERSION.1)},
            "paths": paths,
            "components": {"schemas": {}},
        })
    })
}

fn with_version(obj: &Value, target: &Target) -> Value {
    let mut o = obj.clone();
    o["apiVersion"] = json!(target.rt.api_version(&target.version));
    o
}

fn get(sim: &Shared, t: &Target, as_table: bool) -> Result<Response, ApiError> {
    let store = sim.lock();
    let obj = store.get(
        &t.rt,
        t.namespace.as_deref().unwrap_or_default(),
        t.name.as_deref().unwrap_or_default(),
    )?;
    if as_table {
        let rv = obj
            .pointer("/metadata/resourceVersion")
            .cloned()
            .unwrap_or_default();
        return Ok(json_response(
            200,
            &table::table(&t.rt.kind, [obj.as_ref()], json!({"resourceVersion": rv})),
        ));
    }
    Ok(obj_response(200, &with_version(&obj, t)))
}

fn list(
    sim: &Shared,
    t: &Target,
    query: &HashMap<String, String>,
    as_table: bool,
) -> Result<Response, ApiError> {
    let q = list_query(query)?;
    let store = sim.lock();
    let (items, next) = store.list(&t.rt, t.namespace.as_deref(), &q)?;
    let rv = store.resource_version();
    drop(store);
    let api_version = t.rt.api_version(&t.version);
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if let Some(c) = next {
        meta["continue"] = json!(c);
    }
    if as_table {
        return Ok(json_response(
            200,
            &table::table(&t.rt.kind, items.iter().map(AsRef::as_ref), meta),
        ));
    }
    // Serialise item by item: lists can hold 100,000 pods.
    let mut out = Vec::with_capacity(items.len() * 512 + 256);
    out.extend_from_slice(
        format!(
            "{{\"kind\":\"{}List\",\"apiVersion\":{},\"metadata\":{},\"items\":[",
            t.rt.kind,
            json!(api_version),
            meta
        )
        .as_bytes(),
    );
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if item.get("apiVersion").and_then(Value::as_str) == Some(api_version.as_str()) {
            serde_json::to_writer(&mut out, item.as_ref())
                .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))?;
        } else {
            serde_json::to_writer(&mut out, &with_version(item, t))
                .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))?;
        }
    }
    out.extend_from_slice(b"]}");
    Ok(bytes_response(200, out))
}

fn create(
    sim: &Arc<Shared>,
    t: &Target,
    query: &HashMap<String, String>,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let obj = parse_body(body)?;
    let dry = dry_run(query)?;
    if let Some(av) = obj.get("apiVersion").and_then(Value::as_str)
        && av != t.rt.api_version(&t.version)
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version ({})",
            t.rt.api_version(&t.version)
        )));
    }
    let created = sim.create(&t.rt, t.namespace.as_deref(), obj, dry)?;
    Ok(obj_response(201, &with_version(&created, t)))
}

fn update(
    sim: &Arc<Shared>,
    t: &Target,
    query: &HashMap<String, String>,
    body: &Bytes,
    mode: WriteMode,
) -> Result<Response, ApiError> {
    let obj = parse_body(body)?;
    let dry = dry_run(query)?;
    let name = t.name.as_deref().unwrap_or_default();
    let ns = t.namespace.as_deref().unwrap_or_default();
    let updated = {
        let mut store = sim.lock();
        let updated = store.update(&t.rt, ns, name, obj, mode, dry)?;
        if t.rt.kind == "CustomResourceDefinition" && !dry {
            store.register_crd(&updated);
        }
        updated
    };
    Ok(obj_response(200, &with_version(&updated, t)))
}

fn patch(
    sim: &Arc<Shared>,
    t: &Target,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
    mode: WriteMode,
) -> Result<Response, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned();
    let dry = dry_run(query)?;
    let name = t.name.as_deref().unwrap_or_default();
    let ns = t.namespace.as_deref().unwrap_or_default();
    let apply = content_type == "application/apply-patch+yaml";
    let patch_doc: Value = if apply {
        serde_yaml::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?
    } else {
        parse_body(body)?
    };
    if apply && query.get("fieldManager").is_none_or(String::is_empty) {
        return Err(ApiError::bad_request(
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
        ));
    }
    let mut store = sim.lock();
    let current = match store.get(&t.rt, ns, name) {
        Ok(c) => c,
        Err(e) if apply && e.code == 404 && mode == WriteMode::Main => {
            let mut obj = patch_doc;
            if !obj.is_object() {
                return Err(ApiError::bad_request("an apply patch must be an object"));
            }
            let body_name = name_of(&obj).to_owned();
            if !body_name.is_empty() && body_name != name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({body_name}) does not match the name on the URL ({name})"
                )));
            }
            obj["metadata"]["name"] = json!(name);
            drop(store);
            let created = sim.create(&t.rt, t.namespace.as_deref(), obj, dry)?;
            return Ok(obj_response(201, &with_version(&created, t)));
        }
        Err(e) => return Err(e),
    };
    let mut next = (*current).clone();
    let map_err = |e: patch::Error| match e {
        patch::Error::Malformed(m) => ApiError::bad_request(m),
        patch::Error::Failed(m) => ApiError::new(422, "Invalid", m),
    };
    match content_type.as_str() {
        "application/json-patch+json" => patch::json_patch(&mut next, &patch_doc).map_err(map_err)?,
        "application/merge-patch+json" => patch::merge(&mut next, &patch_doc),
        "application/strategic-merge-patch+json" => {
            if !is_builtin(&t.rt) {
                return Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    "strategic merge patch is not supported for custom resources",
                ));
            }
            patch::strategic(&mut next, &patch_doc).map_err(map_err)?
        }
        "application/apply-patch+yaml" => {
            let mut doc = patch_doc;
            if let Some(m) = doc.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("resourceVersion");
            }
            patch::strategic(&mut next, &doc).map_err(map_err)?
        }
        other => {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {other:?})"
                ),
            ));
        }
    }
    let updated = store.update(&t.rt, ns, name, next, mode, dry)?;
    if t.rt.kind == "CustomResourceDefinition" && !dry {
        store.register_crd(&updated);
    }
    Ok(obj_response(200, &with_version(&updated, t)))
}

fn has_scale(t: &ResourceType) -> bool {
    t.group == "apps" && matches!(t.kind.as_str(), "Deployment" | "ReplicaSet" | "StatefulSet")
}

/// The autoscaling/v1 Scale view of a workload.
fn scale_of(obj: &Value) -> Value {
    let selector = obj
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let meta = obj.get("metadata").cloned().unwrap_or_default();
    json!({
        "apiVersion": "autoscaling/v1", "kind": "Scale",
        "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace"), "uid": meta.get("uid"),
                     "resourceVersion": meta.get("resourceVersion"), "creationTimestamp": meta.get("creationTimestamp")},
        "spec": {"replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(1))},
        "status": {"replicas": obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)), "selector": selector},
    })
}

/// The `scale` subresource: read or change `spec.replicas`.
fn scale(
    sim: &Arc<Shared>,
    t: &Target,
    method: Method,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let name = t.name.as_deref().unwrap_or_default();
    let ns = t.namespace.as_deref().unwrap_or_default();
    let dry = dry_run(query)?;
    let mut store = sim.lock();
    let current = store.get(&t.rt, ns, name)?;
    let mut wanted = scale_of(&current);
    match method {
        Method::GET => return Ok(json_response(200, &wanted)),
        Method::PUT => wanted = parse_body(body)?,
        _ => {
            let doc = parse_body(body)?;
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let result = if content_type.starts_with("application/json-patch+json") {
                patch::json_patch(&mut wanted, &doc)
            } else {
                patch::strategic(&mut wanted, &doc)
            };
            result.map_err(|e| match e {
                patch::Error::Malformed(m) => ApiError::bad_request(m),
                patch::Error::Failed(m) => ApiError::new(422, "Invalid", m),
            })?;
        }
    }
    let replicas = wanted
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .filter(|r| *r >= 0)
        .ok_or_else(|| {
            ApiError::invalid(
                &t.rt,
                name,
                vec![(
                    "spec.replicas".into(),
                    "Invalid value: must be a non-negative integer".into(),
                )],
            )
        })?;
    let mut next = (*current).clone();
    next["spec"]["replicas"] = json!(replicas);
    if let Some(rv) = wanted
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
    {
        next["metadata"]["resourceVersion"] = json!(rv);
    }
    let updated = store.update(&t.rt, ns, name, next, WriteMode::Main, dry)?;
    Ok(json_response(200, &scale_of(&updated)))
}

fn is_builtin(t: &ResourceType) -> bool {
    super::store::builtin_types()
        .iter()
        .any(|b| b.group == t.group && b.plural == t.plural)
}

fn delete_options(query: &HashMap<String, String>, body: &Bytes) -> Result<(Option<i64>, Value), ApiError> {
    let opts: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        parse_body(body)?
    };
    let grace = match query.get("gracePeriodSeconds") {
        Some(g) => Some(
            g.parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("invalid gracePeriodSeconds {g:?}")))?,
        ),
        None => opts.get("gracePeriodSeconds").and_then(Value::as_i64),
    };
    Ok((grace, opts))
}

fn delete(
    sim: &Arc<Shared>,
    t: &Target,
    query: &HashMap<String, String>,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let (grace, opts) = delete_options(query, body)?;
    let dry = dry_run(query)?
        || opts
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|v| v == "All"));
    let name = t.name.as_deref().unwrap_or_default();
    let ns = t.namespace.as_deref().unwrap_or_default();
    {
        let store = sim.lock();
        let current = store.get(&t.rt, ns, name)?;
        if let Some(uid) = opts.pointer("/preconditions/uid").and_then(Value::as_str)
            && uid != uid_of(&current)
        {
            return Err(ApiError::conflict(
                &t.rt,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    uid_of(&current)
                ),
            ));
        }
        if let Some(rv) = opts
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            && Some(rv)
                != current
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
        {
            return Err(ApiError::conflict(
                &t.rt,
                name,
                "Precondition failed: the resourceVersion does not match",
            ));
        }
    }
    let (obj, _gone) = sim.delete(&t.rt, ns, name, grace, dry)?;
    Ok(obj_response(200, &with_version(&obj, t)))
}

fn delete_collection(
    sim: &Arc<Shared>,
    t: &Target,
    query: &HashMap<String, String>,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let (grace, _) = delete_options(query, body)?;
    let dry = dry_run(query)?;
    let q = list_query(query)?;
    let items = {
        let store = sim.lock();
        store
            .list(
                &t.rt,
                t.namespace.as_deref(),
                &ListQuery {
                    limit: 0,
                    continue_token: None,
                    ..q
                },
            )?
            .0
    };
    let mut deleted = Vec::new();
    for item in items {
        if let Ok((obj, _)) = sim.delete(&t.rt, namespace_of(&item), name_of(&item), grace, dry) {
            deleted.push(with_version(&obj, t));
        }
    }
    let rv = sim.lock().resource_version();
    Ok(json_response(
        200,
        &json!({"kind": format!("{}List", t.rt.kind), "apiVersion": t.rt.api_version(&t.version), "metadata": {"resourceVersion": rv.to_string()}, "items": deleted}),
    ))
}

fn evict(
    sim: &Arc<Shared>,
    t: &Target,
    query: &HashMap<String, String>,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let eviction = parse_body(body)?;
    let name = t.name.as_deref().unwrap_or_default();
    let ns = t.namespace.as_deref().unwrap_or_default();
    if let Some(n) = eviction.pointer("/metadata/name").and_then(Value::as_str)
        && n != name
    {
        return Err(ApiError::bad_request(format!(
            "name in URL does not match name in Eviction object: {n} != {name}"
        )));
    }
    let opts = eviction.get("deleteOptions").cloned().unwrap_or_default();
    let grace = opts.get("gracePeriodSeconds").and_then(Value::as_i64);
    let dry = dry_run(query)?
        || opts
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|v| v == "All"));
    {
        let mut store = sim.lock();
        let pod = store.get(&t.rt, ns, name)?;
        if let Some(uid) = opts.pointer("/preconditions/uid").and_then(Value::as_str)
            && uid != uid_of(&pod)
        {
            return Err(ApiError::conflict(
                &t.rt,
                name,
                "Precondition failed: UID mismatch",
            ));
        }
        let (decision, statuses) = eviction::check(&store, &pod);
        if !dry && let Some(pdb_t) = store.find("policy", "poddisruptionbudgets") {
            for (pdb, status) in statuses {
                if let Ok(cur) = store.get(&pdb_t, ns, &pdb)
                    && cur.get("status") != Some(&status)
                {
                    let mut next = (*cur).clone();
                    next["status"] = status;
                    let _ = store.update(&pdb_t, ns, &pdb, next, WriteMode::Internal, false);
                }
            }
        }
        decision?;
        // Under the same lock as the check: two evictions never both spend the last
        // disruption a budget allows.
        sim.delete_locked(&mut store, &t.rt, ns, name, grace, dry)?;
    }
    Ok(json_response(
        201,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}

fn bind(sim: &Arc<Shared>, t: &Target, body: &Bytes) -> Result<Response, ApiError> {
    let binding = parse_body(body)?;
    let node = binding
        .pointer("/target/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::invalid(&t.rt, "", vec![("target.name".into(), "Required value".into())]))?;
    let name = t.name.as_deref().unwrap_or_default();
    let ns = t.namespace.as_deref().unwrap_or_default();
    sim.bind(ns, name, node)?;
    Ok(json_response(
        201,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}

/// Whether a change is visible to a watch, and as which event type.
fn visible(
    change: &Change,
    rt: &ResourceType,
    ns: Option<&str>,
    q: &ListQuery,
) -> Option<(ChangeKind, Arc<Value>)> {
    if change.resource != rt.key() || ns.is_some_and(|ns| ns != change.namespace) {
        return None;
    }
    let now = q.matches(&change.object);
    match (change.kind, change.previous.as_ref().map(|p| q.matches(p))) {
        (ChangeKind::Modified, Some(before)) => match (before, now) {
            (true, true) => Some((ChangeKind::Modified, change.object.clone())),
            (false, true) => Some((ChangeKind::Added, change.object.clone())),
            (true, false) => Some((ChangeKind::Deleted, change.object.clone())),
            (false, false) => None,
        },
        (kind, _) => now.then(|| (kind, change.object.clone())),
    }
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn watch(
    sim: &Arc<Shared>,
    t: &Target,
    query: &HashMap<String, String>,
    as_table: bool,
) -> Result<Response, ApiError> {
    let q = list_query(query)?;
    let bookmarks = query_bool(query, "allowWatchBookmarks");
    let send_initial = query_bool(query, "sendInitialEvents");
    let timeout = match query.get("timeoutSeconds") {
        Some(s) => Duration::from_secs(
            s.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {s:?}")))?,
        ),
        None => Duration::from_secs(1800),
    };
    let rv_param = query.get("resourceVersion").map(String::as_str).unwrap_or("");
    let from: Option<u64> = match rv_param {
        "" | "0" => None,
        s => Some(
            s.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {s:?}")))?,
        ),
    };
    let rt = t.rt.clone();
    let ns = t.namespace.clone();
    let api_version = rt.api_version(&t.version);
    let (initial, mut rx, start_rv, expired) = {
        let store = sim.lock();
        let rx = store.subscribe();
        let current = store.resource_version();
        match from {
            Some(rv) if !send_initial => match store.changes_since(&rt.key(), rv) {
                Some(changes) => {
                    let evs: Vec<(ChangeKind, Arc<Value>)> = changes
                        .iter()
                        .filter_map(|c| visible(c, &rt, ns.as_deref(), &q))
                        .collect();
                    (evs, rx, current, false)
                }
                None => (Vec::new(), rx, current, true),
            },
            _ => {
                let all = store
                    .list(
                        &rt,
                        ns.as_deref(),
                        &ListQuery {
                            limit: 0,
                            continue_token: None,
                            ..q.clone()
                        },
                    )?
                    .0;
                (
                    all.into_iter().map(|o| (ChangeKind::Added, o)).collect(),
                    rx,
                    current,
                    false,
                )
            }
        }
    };
    let (tx, body_rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let bookmark_every = sim.config.bookmark_interval;
    let bookmark = move |rv: u64, initial_end: bool| {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        event_line(
            "BOOKMARK",
            &json!({"kind": rt.kind, "apiVersion": api_version, "metadata": meta}),
        )
    };
    let rt2 = t.rt.clone();
    let with_av = {
        let av = t.rt.api_version(&t.version);
        let kind = t.rt.kind.clone();
        move |o: &Value| {
            if as_table {
                let rv = o
                    .pointer("/metadata/resourceVersion")
                    .cloned()
                    .unwrap_or_default();
                table::table(&kind, [o], json!({"resourceVersion": rv}))
            } else if o.get("apiVersion").and_then(Value::as_str) == Some(av.as_str()) {
                o.clone()
            } else {
                let mut o = o.clone();
                o["apiVersion"] = json!(av);
                o
            }
        }
    };
    tokio::spawn(async move {
        if expired {
            let status = ApiError::new(
                410,
                "Expired",
                format!("too old resource version: {} ({})", from.unwrap_or(0), start_rv),
            )
            .status();
            let _ = tx.send(event_line("ERROR", &status)).await;
            return;
        }
        let mut last_rv = start_rv;
        for (kind, obj) in initial {
            if tx.send(event_line(kind.as_str(), &with_av(&obj))).await.is_err() {
                return;
            }
        }
        if send_initial && bookmarks && tx.send(bookmark(start_rv, true)).await.is_err() {
            return;
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(bookmark_every);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = &mut deadline => {
                    if bookmarks {
                        let _ = tx.send(bookmark(last_rv, false)).await;
                    }
                    return;
                }
                _ = ticker.tick(), if bookmarks => {
                    if tx.send(bookmark(last_rv, false)).await.is_err() {
                        return;
                    }
                }
                msg = rx.recv() => match msg {
                    Ok(change) => {
                        if change.rv <= start_rv {
                            continue;
                        }
                        last_rv = last_rv.max(change.rv);
                        if let Some((kind, obj)) = visible(&change, &rt2, ns.as_deref(), &q) {
                            let mut obj = (*obj).clone();
                            if kind == ChangeKind::Deleted {
                                obj["metadata"]["resourceVersion"] = json!(change.rv.to_string());
                            }
                            let obj = with_av(&obj);
                            if tx.send(event_line(kind.as_str(), &obj)).await.is_err() {
                                return;
                            }
                        }
                    }
                    // A watcher that falls behind is closed; the client re-watches or relists.
                    Err(RecvError::Lagged(_)) | Err(RecvError::Closed) => return,
                },
                _ = tx.closed() => return,
            }
        }
    });
    let stream = futures::stream::unfold(body_rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visibility_follows_selector_transitions() {
        let mut store = super::super::store::Store::new(100);
        let rt = store.find("", "pods").unwrap();
        let q = ListQuery {
            labels: LabelSelector::parse("app=web").unwrap(),
            ..Default::default()
        };
        let before =
            Arc::new(json!({"metadata": {"name": "a", "namespace": "default", "labels": {"app": "db"}}}));
        let after =
            Arc::new(json!({"metadata": {"name": "a", "namespace": "default", "labels": {"app": "web"}}}));
        let change = |prev: &Arc<Value>, obj: &Arc<Value>| Change {
            rv: 5,
            resource: rt.key(),
            namespace: "default".into(),
            kind: ChangeKind::Modified,
            object: obj.clone(),
            previous: Some(prev.clone()),
        };
        assert_eq!(
            visible(&change(&before, &after), &rt, None, &q).unwrap().0,
            ChangeKind::Added
        );
        assert_eq!(
            visible(&change(&after, &before), &rt, None, &q).unwrap().0,
            ChangeKind::Deleted
        );
        assert_eq!(
            visible(&change(&after, &after), &rt, Some("default"), &q)
                .unwrap()
                .0,
            ChangeKind::Modified
        );
        assert!(visible(&change(&before, &before), &rt, None, &q).is_none());
        assert!(visible(&change(&after, &after), &rt, Some("other"), &q).is_none());
        let _ = store.random();
    }
}
