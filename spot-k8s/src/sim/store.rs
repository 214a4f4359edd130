//! The simulator's in-memory object store: resource types, objects per resource, one global
//! resourceVersion counter and a bounded change history for watches.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use super::selector::{FieldSelector, LabelSelector};

/// A Kubernetes API error, rendered as a `Status` object.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// The `reason` field (`NotFound`, `Conflict`, ...).
    pub reason: &'static str,
    /// Human-readable message.
    pub message: String,
    /// The `details` field, if any.
    pub details: Option<Value>,
}

impl ApiError {
    /// A new error without details.
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(400, "BadRequest", message)
    }

    /// 404 NotFound for an object.
    pub fn not_found(rt: &ResourceType, name: &str) -> Self {
        ApiError {
            details: Some(json!({"name": name, "group": rt.group, "kind": rt.plural})),
            ..ApiError::new(
                404,
                "NotFound",
                format!("{} \"{}\" not found", rt.group_resource(), name),
            )
        }
    }

    /// 409 Conflict for a stale resourceVersion.
    pub fn conflict(rt: &ResourceType, name: &str, why: &str) -> Self {
        ApiError {
            details: Some(json!({"name": name, "group": rt.group, "kind": rt.plural})),
            ..ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{}\": {}",
                    rt.group_resource(),
                    name,
                    why
                ),
            )
        }
    }

    /// 422 Invalid with field causes.
    pub fn invalid(rt: &ResourceType, name: &str, causes: Vec<(String, String)>) -> Self {
        let msg = causes
            .iter()
            .map(|(f, m)| format!("{f}: {m}"))
            .collect::<Vec<_>>()
            .join(", ");
        ApiError {
            details: Some(json!({
                "name": name, "group": rt.group, "kind": rt.kind,
                "causes": causes.iter().map(|(f, m)| json!({"reason": "FieldValueInvalid", "message": m, "field": f})).collect::<Vec<_>>()
            })),
            ..ApiError::new(
                422,
                "Invalid",
                format!("{} \"{}\" is invalid: {}", rt.kind, name, msg),
            )
        }
    }

    /// The `Status` object.
    pub fn status(&self) -> Value {
        let mut s = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

/// A served resource type (built in or from a CustomResourceDefinition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceType {
    /// API group (`""` for core).
    pub group: String,
    /// Served versions (the first is the preferred and storage version).
    pub versions: Vec<String>,
    /// Plural resource name (`pods`).
    pub plural: String,
    /// Singular name (`pod`).
    pub singular: String,
    /// Kind (`Pod`).
    pub kind: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Short names (`po`).
    pub short_names: Vec<String>,
    /// Categories (`all`).
    pub categories: Vec<String>,
    /// Whether a `status` subresource exists (status is then ignored by main-resource
    /// writes).
    pub status_subresource: bool,
}

impl ResourceType {
    /// `group/version` or `version` for the core group.
    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_owned()
        } else {
            format!("{}/{}", self.group, version)
        }
    }

    /// `plural.group` or `plural`.
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// The key objects of this type are stored under.
    pub fn key(&self) -> (String, String) {
        (self.group.clone(), self.plural.clone())
    }
}

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Created.
    Added,
    /// Updated.
    Modified,
    /// Removed.
    Deleted,
}

impl ChangeKind {
    /// The WatchEvent `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Added => "ADDED",
            ChangeKind::Modified => "MODIFIED",
            ChangeKind::Deleted => "DELETED",
        }
    }
}

/// One change, as recorded in the history and broadcast to watchers.
#[derive(Debug, Clone)]
pub struct Change {
    /// The resourceVersion of the change.
    pub rv: u64,
    /// `(group, plural)`.
    pub resource: (String, String),
    /// Namespace (`""` for cluster-scoped).
    pub namespace: String,
    /// What happened.
    pub kind: ChangeKind,
    /// The object after the change (for deletions: its last state).
    pub object: Arc<Value>,
    /// The object before the change (modifications only).
    pub previous: Option<Arc<Value>>,
}

/// The query of a list or watch.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// `labelSelector`.
    pub labels: LabelSelector,
    /// `fieldSelector`.
    pub fields: FieldSelector,
    /// `limit` (0 = all).
    pub limit: usize,
    /// `continue` token.
    pub continue_token: Option<String>,
}

impl ListQuery {
    /// Whether an object passes the selectors.
    pub fn matches(&self, object: &Value) -> bool {
        self.labels.matches(object) && self.fields.matches(object)
    }
}

/// How a write treats `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// A write to the main resource: `status` is kept from the stored object when the type has
    /// a status subresource.
    Main,
    /// A write to the `status` subresource: only `status` changes.
    Status,
    /// An internal write (controllers, seeding): everything is taken.
    Internal,
}

type ObjKey = (String, String);

/// The store.
#[derive(Debug)]
pub struct Store {
    rv: u64,
    seq: u64,
    types: Vec<Arc<ResourceType>>,
    objects: HashMap<(String, String), BTreeMap<ObjKey, Arc<Value>>>,
    history: VecDeque<Arc<Change>>,
    history_cap: usize,
    compacted_rv: u64,
    tx: broadcast::Sender<Arc<Change>>,
}

fn rt(
    group: &str,
    versions: &[&str],
    plural: &str,
    kind: &str,
    namespaced: bool,
    short: &[&str],
    status: bool,
) -> ResourceType {
    ResourceType {
        group: group.into(),
        versions: versions.iter().map(|v| (*v).to_owned()).collect(),
        plural: plural.into(),
        singular: kind.to_lowercase(),
        kind: kind.into(),
        namespaced,
        short_names: short.iter().map(|v| (*v).to_owned()).collect(),
        categories: Vec::new(),
        status_subresource: status,
    }
}

/// The built-in resource types.
pub fn builtin_types() -> Vec<ResourceType> {
    let mut all = vec![
        rt("", &["v1"], "nodes", "Node", false, &["no"], true),
        rt("", &["v1"], "pods", "Pod", true, &["po"], true),
        rt("", &["v1"], "namespaces", "Namespace", false, &["ns"], true),
        rt("", &["v1"], "events", "Event", true, &["ev"], false),
        rt("", &["v1"], "configmaps", "ConfigMap", true, &["cm"], false),
        rt("", &["v1"], "services", "Service", true, &["svc"], true),
        rt(
            "",
            &["v1"],
            "serviceaccounts",
            "ServiceAccount",
            true,
            &["sa"],
            false,
        ),
        rt("apps", &["v1"], "daemonsets", "DaemonSet", true, &["ds"], true),
        rt("apps", &["v1"], "replicasets", "ReplicaSet", true, &["rs"], true),
        rt(
            "apps",
            &["v1"],
            "deployments",
            "Deployment",
            true,
            &["deploy"],
            true,
        ),
        rt(
            "apps",
            &["v1"],
            "statefulsets",
            "StatefulSet",
            true,
            &["sts"],
            true,
        ),
        rt(
            "policy",
            &["v1"],
            "poddisruptionbudgets",
            "PodDisruptionBudget",
            true,
            &["pdb"],
            true,
        ),
        rt(
            "coordination.k8s.io",
            &["v1"],
            "leases",
            "Lease",
            true,
            &[],
            false,
        ),
        rt("events.k8s.io", &["v1"], "events", "Event", true, &["ev"], false),
        // RBAC objects are stored and served (so manifests can be applied), not enforced.
        rt(
            "rbac.authorization.k8s.io",
            &["v1"],
            "clusterroles",
            "ClusterRole",
            false,
            &[],
            false,
        ),
        rt(
            "rbac.authorization.k8s.io",
            &["v1"],
            "clusterrolebindings",
            "ClusterRoleBinding",
            false,
            &[],
            false,
        ),
        rt(
            "rbac.authorization.k8s.io",
            &["v1"],
            "roles",
            "Role",
            true,
            &[],
            false,
        ),
        rt(
            "rbac.authorization.k8s.io",
            &["v1"],
            "rolebindings",
            "RoleBinding",
            true,
            &[],
            false,
        ),
        rt(
            "scheduling.k8s.io",
            &["v1"],
            "priorityclasses",
            "PriorityClass",
            false,
            &["pc"],
            false,
        ),
        rt(
            "apiextensions.k8s.io",
            &["v1"],
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
            &["crd", "crds"],
            true,
        ),
    ];
    for t in &mut all {
        if matches!(
            t.plural.as_str(),
            "pods" | "services" | "daemonsets" | "replicasets" | "deployments" | "statefulsets"
        ) {
            t.categories.push("all".into());
        }
    }
    all
}

/// Current time as a Kubernetes timestamp (seconds precision, UTC).
pub fn now_timestamp() -> String {
    timestamp_in(0)
}

/// A Kubernetes timestamp `seconds` from now.
pub fn timestamp_in(seconds: i64) -> String {
    // Request input (grace periods) can be absurd: saturate rather than overflow.
    let now = time::OffsetDateTime::now_utc();
    let t = now.checked_add(time::Duration::seconds(seconds)).unwrap_or(now);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// The object's `metadata.name`.
pub fn name_of(obj: &Value) -> &str {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// The object's `metadata.namespace` (`""` if none).
pub fn namespace_of(obj: &Value) -> &str {
    obj.pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// The object's `metadata.uid`.
pub fn uid_of(obj: &Value) -> &str {
    obj.pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn metadata_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = Value::Object(Map::new());
    }
    let Value::Object(o) = obj else {
        unreachable!("made an object above")
    };
    let meta = o.entry("metadata").or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    match meta {
        Value::Object(m) => m,
        _ => unreachable!("made an object above"),
    }
}

/// Checks the fields the simulator validates; returns (field, message) causes.
fn validate(rt: &ResourceType, obj: &Value) -> Vec<(String, String)> {
    let mut causes = Vec::new();
    let name = name_of(obj);
    if !valid_name(name) {
        causes.push((
            "metadata.name".to_owned(),
            format!("Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'"),
        ));
    }
    if let Some(labels) = obj.pointer("/metadata/labels") {
        match labels.as_object() {
            Some(l) if l.values().all(Value::is_string) => {}
            _ => causes.push((
                "metadata.labels".into(),
                "Invalid value: labels must be strings".into(),
            )),
        }
    }
    match rt.kind.as_str() {
        "Node" => {
            if let Some(taints) = obj.pointer("/spec/taints").and_then(Value::as_array) {
                let mut seen = std::collections::BTreeSet::new();
                for (i, t) in taints.iter().enumerate() {
                    let key = t.get("key").and_then(Value::as_str).unwrap_or_default();
                    let effect = t.get("effect").and_then(Value::as_str).unwrap_or_default();
                    if key.is_empty() {
                        causes.push((format!("spec.taints[{i}].key"), "Required value".into()));
                    }
                    if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
                        causes.push((
                            format!("spec.taints[{i}].effect"),
                            format!("Unsupported value: {effect:?}: supported values: \"NoSchedule\", \"PreferNoSchedule\", \"NoExecute\""),
                        ));
                    }
                    if !seen.insert((key.to_owned(), effect.to_owned())) {
                        causes.push((
                            format!("spec.taints[{i}]"),
                            format!("Duplicate value: taints must be unique by key and effect pair: {key}:{effect}"),
                        ));
                    }
                }
            }
        }
        "Pod"
            if obj
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty) =>
        {
            causes.push(("spec.containers".into(), "Required value".into()));
        }
        "PodDisruptionBudget" => {
            let spec = obj.get("spec");
            if spec.and_then(|s| s.get("minAvailable")).is_some()
                && spec.and_then(|s| s.get("maxUnavailable")).is_some()
            {
                causes.push((
                    "spec".into(),
                    "Invalid value: minAvailable and maxUnavailable cannot be both set".into(),
                ));
            }
        }
        _ => {}
    }
    causes
}

impl Store {
    /// An empty store serving the built-in types, with the usual namespaces.
    pub fn new(history_cap: usize) -> Self {
        let (tx, _) = broadcast::channel(4096);
        let mut store = Store {
            rv: 1,
            seq: 0,
            types: builtin_types().into_iter().map(Arc::new).collect(),
            objects: HashMap::new(),
            history: VecDeque::new(),
            history_cap: history_cap.max(16),
            compacted_rv: 0,
            tx,
        };
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}, "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
            let t = store.find("", "namespaces").expect("namespaces is built in");
            store.create(&t, None, obj, false).expect("a valid namespace");
        }
        store
    }

    /// Subscribes to future changes.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.tx.subscribe()
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// The served types.
    pub fn types(&self) -> &[Arc<ResourceType>] {
        &self.types
    }

    /// A served type by group and plural.
    pub fn find(&self, group: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.types
            .iter()
            .find(|t| t.group == group && t.plural == plural)
            .cloned()
    }

    /// A served type by group, version and plural.
    pub fn resolve(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.types
            .iter()
            .find(|t| t.group == group && t.plural == plural && t.versions.iter().any(|v| v == version))
            .cloned()
    }

    /// A served type by apiVersion and kind.
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<Arc<ResourceType>> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        self.types
            .iter()
            .find(|t| t.group == group && t.kind == kind && t.versions.iter().any(|v| v == version))
            .cloned()
    }

    /// Pseudo-random 64 bits (splitmix64 over a sequence and the clock).
    pub fn random(&mut self) -> u64 {
        self.seq = self.seq.wrapping_add(1);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mut z = nanos ^ self.seq.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn uid(&mut self) -> String {
        let a = self.random();
        let b = self.random();
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            b >> 52,
            b & 0xffff_ffff_ffff
        )
    }

    fn suffix(&mut self) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        let mut r = self.random();
        (0..5)
            .map(|_| {
                let c = ALPHABET[(r % ALPHABET.len() as u64) as usize] as char;
                r /= ALPHABET.len() as u64;
                c
            })
            .collect()
    }

    fn record(
        &mut self,
        rt: &ResourceType,
        kind: ChangeKind,
        object: Arc<Value>,
        previous: Option<Arc<Value>>,
    ) {
        let change = Arc::new(Change {
            rv: self.rv,
            resource: rt.key(),
            namespace: namespace_of(&object).to_owned(),
            kind,
            object,
            previous,
        });
        self.history.push_back(change.clone());
        while self.history.len() > self.history_cap {
            if let Some(old) = self.history.pop_front() {
                self.compacted_rv = old.rv;
            }
        }
        let _ = self.tx.send(change);
    }

    /// Changes of one resource after `rv`, or `None` when `rv` is older than the history.
    pub fn changes_since(&self, resource: &(String, String), rv: u64) -> Option<Vec<Arc<Change>>> {
        if rv < self.compacted_rv {
            return None;
        }
        let start = self.history.partition_point(|c| c.rv <= rv);
        Some(
            self.history
                .iter()
                .skip(start)
                .filter(|c| &c.resource == resource)
                .cloned()
                .collect(),
        )
    }

    /// Reads an object.
    pub fn get(&self, rt: &ResourceType, ns: &str, name: &str) -> Result<Arc<Value>, ApiError> {
        self.objects
            .get(&rt.key())
            .and_then(|m| m.get(&(ns.to_owned(), name.to_owned())))
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))
    }

    /// Every object of a type (in one namespace when `ns` is given), in key order.
    pub fn all(&self, rt: &ResourceType, ns: Option<&str>) -> Vec<Arc<Value>> {
        let Some(m) = self.objects.get(&rt.key()) else {
            return Vec::new();
        };
        match ns {
            Some(ns) => m
                .range((ns.to_owned(), String::new())..)
                .take_while(|((n, _), _)| n == ns)
                .map(|(_, v)| v.clone())
                .collect(),
            None => m.values().cloned().collect(),
        }
    }

    /// Lists objects: `(items, continue token, remaining count if known)`.
    pub fn list(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        q: &ListQuery,
    ) -> Result<(Vec<Arc<Value>>, Option<String>), ApiError> {
        let Some(m) = self.objects.get(&rt.key()) else {
            return Ok((Vec::new(), None));
        };
        let start: ObjKey = match &q.continue_token {
            Some(tok) => decode_continue(tok)
                .ok_or_else(|| ApiError::new(410, "Expired", "the provided continue parameter is invalid"))?,
            None => (ns.unwrap_or_default().to_owned(), String::new()),
        };
        let mut items = Vec::new();
        let mut next = None;
        // A name equality in the field selector narrows the scan (as etcd keys would).
        let exact = q.fields.required("metadata.name");
        for ((n, name), v) in m.range(start.clone()..) {
            if ns.is_some_and(|ns| ns != n) {
                break;
            }
            if q.continue_token.is_some() && (n, name) == (&start.0, &start.1) {
                continue;
            }
            if exact.is_some_and(|e| e != name) {
                continue;
            }
            if !q.matches(v) {
                continue;
            }
            if q.limit > 0 && items.len() == q.limit {
                let last = items
                    .last()
                    .map(|o: &Arc<Value>| (namespace_of(o).to_owned(), name_of(o).to_owned()));
                next = last.map(|(a, b)| encode_continue(&a, &b));
                break;
            }
            items.push(v.clone());
        }
        Ok((items, next))
    }

    fn check_namespace(&self, rt: &ResourceType, ns: &str) -> Result<(), ApiError> {
        if !rt.namespaced {
            return Ok(());
        }
        let exists = self
            .objects
            .get(&(String::new(), "namespaces".to_owned()))
            .is_some_and(|m| m.contains_key(&(String::new(), ns.to_owned())));
        if exists {
            Ok(())
        } else {
            Err(ApiError {
                details: Some(json!({"name": ns, "kind": "namespaces"})),
                ..ApiError::new(404, "NotFound", format!("namespaces \"{ns}\" not found"))
            })
        }
    }

    /// Creates an object (metadata filled in: name from generateName, uid, resourceVersion,
    /// creationTimestamp, generation). With `dry_run` nothing is stored.
    pub fn create(
        &mut self,
        rt: &ResourceType,
        ns: Option<&str>,
        mut obj: Value,
        dry_run: bool,
    ) -> Result<Arc<Value>, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        let version = obj
            .get("apiVersion")
            .and_then(Value::as_str)
            .and_then(|av| av.rsplit('/').next())
            .filter(|v| rt.versions.iter().any(|x| x == v))
            .unwrap_or(&rt.versions[0])
            .to_owned();
        obj["apiVersion"] = json!(rt.api_version(&version));
        obj["kind"] = json!(rt.kind);
        let ns = if rt.namespaced {
            let body_ns = namespace_of(&obj).to_owned();
            match ns {
                Some(ns) if !body_ns.is_empty() && body_ns != ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                Some(ns) => ns.to_owned(),
                None if !body_ns.is_empty() => body_ns,
                None => "default".to_owned(),
            }
        } else {
            String::new()
        };
        self.check_namespace(rt, &ns)?;
        let suffix = self.suffix();
        let uid = self.uid();
        let meta = metadata_mut(&mut obj);
        if meta.get("name").and_then(Value::as_str).is_none_or(str::is_empty) {
            match meta.get("generateName").and_then(Value::as_str) {
                Some(prefix) if !prefix.is_empty() => {
                    let name = format!("{prefix}{suffix}");
                    meta.insert("name".into(), json!(name));
                }
                _ => {
                    return Err(ApiError::invalid(
                        rt,
                        "",
                        vec![(
                            "metadata.name".into(),
                            "Required value: name or generateName is required".into(),
                        )],
                    ));
                }
            }
        }
        if rt.namespaced {
            meta.insert("namespace".into(), json!(ns));
        } else {
            meta.remove("namespace");
        }
        meta.insert("uid".into(), json!(uid));
        meta.insert("creationTimestamp".into(), json!(now_timestamp()));
        meta.remove("deletionTimestamp");
        meta.remove("deletionGracePeriodSeconds");
        meta.remove("managedFields");
        if rt.kind != "Pod" && rt.kind != "Event" {
            meta.insert("generation".into(), json!(1));
        }
        let name = name_of(&obj).to_owned();
        let causes = validate(rt, &obj);
        if !causes.is_empty() {
            return Err(ApiError::invalid(rt, &name, causes));
        }
        let key = (ns.clone(), name.clone());
        if self.objects.get(&rt.key()).is_some_and(|m| m.contains_key(&key)) {
            return Err(ApiError {
                details: Some(json!({"name": name, "group": rt.group, "kind": rt.plural})),
                ..ApiError::new(
                    409,
                    "AlreadyExists",
                    format!("{} \"{}\" already exists", rt.group_resource(), name),
                )
            });
        }
        if dry_run {
            return Ok(Arc::new(obj));
        }
        self.rv += 1;
        metadata_mut(&mut obj).insert("resourceVersion".into(), json!(self.rv.to_string()));
        let obj = Arc::new(obj);
        self.objects.entry(rt.key()).or_default().insert(key, obj.clone());
        self.record(rt, ChangeKind::Added, obj.clone(), None);
        self.mirror_event(rt, &obj, false);
        Ok(obj)
    }

    /// Replaces an object. A non-empty `metadata.resourceVersion` in `obj` must match the
    /// stored one (409 Conflict otherwise); an empty one is an unconditional update.
    pub fn update(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        mut obj: Value,
        mode: WriteMode,
        dry_run: bool,
    ) -> Result<Arc<Value>, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        let current = self.get(rt, ns, name)?;
        let body_name = name_of(&obj);
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let body_ns = namespace_of(&obj);
        if rt.namespaced && !body_ns.is_empty() && body_ns != ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let stored_rv = current
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let given_rv = obj
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !given_rv.is_empty() && given_rv != stored_rv {
            return Err(ApiError::conflict(
                rt,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        if mode == WriteMode::Status {
            let mut next = (*current).clone();
            next["status"] = obj.get("status").cloned().unwrap_or(Value::Null);
            if next["status"].is_null()
                && let Value::Object(m) = &mut next
            {
                m.remove("status");
            }
            obj = next;
        } else {
            if mode == WriteMode::Main && rt.status_subresource {
                match current.get("status") {
                    Some(s) => obj["status"] = s.clone(),
                    None => {
                        if let Value::Object(m) = &mut obj {
                            m.remove("status");
                        }
                    }
                }
            }
            let keep = [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
            ];
            let old_meta = current.get("metadata").cloned().unwrap_or_default();
            let meta = metadata_mut(&mut obj);
            for k in keep {
                match old_meta.get(k) {
                    Some(v) => meta.insert(k.into(), v.clone()),
                    None => meta.remove(k),
                };
            }
            meta.insert("name".into(), json!(name));
            if rt.namespaced {
                meta.insert("namespace".into(), json!(ns));
            }
        }
        obj["apiVersion"] = current.get("apiVersion").cloned().unwrap_or_default();
        obj["kind"] = json!(rt.kind);
        let spec_changed = {
            let strip = |v: &Value| {
                let mut v = v.clone();
                if let Value::Object(m) = &mut v {
                    m.remove("metadata");
                    m.remove("status");
                }
                v
            };
            strip(&obj) != strip(&current)
        };
        if spec_changed && let Some(g) = current.pointer("/metadata/generation").and_then(Value::as_i64) {
            metadata_mut(&mut obj).insert("generation".into(), json!(g + 1));
        }
        let causes = validate(rt, &obj);
        if !causes.is_empty() {
            return Err(ApiError::invalid(rt, name, causes));
        }
        metadata_mut(&mut obj).insert("resourceVersion".into(), json!(stored_rv));
        if obj == *current {
            // Kubernetes does not bump the resourceVersion of a no-op write.
            return Ok(current);
        }
        if dry_run {
            return Ok(Arc::new(obj));
        }
        // Removing the last finalizer of an object being deleted completes the deletion.
        let deleting = obj.pointer("/metadata/deletionTimestamp").is_some();
        let finalizers_empty = obj
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty);
        let waiting_for_kubelet = rt.kind == "Pod"
            && obj
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                > 0;
        self.rv += 1;
        metadata_mut(&mut obj).insert("resourceVersion".into(), json!(self.rv.to_string()));
        let obj = Arc::new(obj);
        self.objects
            .entry(rt.key())
            .or_default()
            .insert((ns.to_owned(), name.to_owned()), obj.clone());
        self.record(rt, ChangeKind::Modified, obj.clone(), Some(current));
        self.mirror_event(rt, &obj, false);
        if deleting && finalizers_empty && !waiting_for_kubelet {
            self.remove(rt, ns, name);
        }
        Ok(obj)
    }

    /// Removes an object at once (the end of a deletion). Returns its last state.
    pub fn remove(&mut self, rt: &ResourceType, ns: &str, name: &str) -> Option<Arc<Value>> {
        let old = self
            .objects
            .get_mut(&rt.key())?
            .remove(&(ns.to_owned(), name.to_owned()))?;
        self.rv += 1;
        let mut last = (*old).clone();
        metadata_mut(&mut last).insert("resourceVersion".into(), json!(self.rv.to_string()));
        let last = Arc::new(last);
        self.record(rt, ChangeKind::Deleted, last.clone(), None);
        self.mirror_event(rt, &last, true);
        // Pods and Events own nothing: skipping them keeps a pod removal O(log n) instead of a
        // scan of every pod and ReplicaSet in the namespace (a drain wave removes thousands).
        if !matches!(rt.kind.as_str(), "Pod" | "Event") {
            self.collect_garbage(uid_of(&old).to_owned(), ns);
        }
        Some(last)
    }

    /// Mirrors an events.k8s.io/v1 Event into the core/v1 view, as the API server serves both
    /// from one storage (so `kubectl get events` shows what a kube-rs `Recorder` wrote).
    fn mirror_event(&mut self, rt: &ResourceType, event: &Value, deleted: bool) {
        if rt.group != "events.k8s.io" || rt.plural != "events" {
            return;
        }
        let Some(core) = self.find("", "events") else {
            return;
        };
        let (ns, name) = (namespace_of(event).to_owned(), name_of(event).to_owned());
        if deleted {
            self.remove(&core, &ns, &name);
            return;
        }
        let time = event
            .get("eventTime")
            .and_then(Value::as_str)
            .map(|t| format!("{}Z", t.get(..19).unwrap_or(t)))
            .unwrap_or_else(now_timestamp);
        let last = event
            .pointer("/series/lastObservedTime")
            .and_then(Value::as_str)
            .map(|t| format!("{}Z", t.get(..19).unwrap_or(t)))
            .unwrap_or_else(|| time.clone());
        let controller = event.get("reportingController").cloned().unwrap_or_default();
        let mut converted = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": ns},
            "involvedObject": event.get("regarding").cloned().unwrap_or_default(),
            "reason": event.get("reason").cloned().unwrap_or_default(),
            "message": event.get("note").cloned().unwrap_or_default(),
            "type": event.get("type").cloned().unwrap_or_default(),
            "action": event.get("action").cloned().unwrap_or_default(),
            "source": {"component": controller},
            "reportingComponent": controller,
            "reportingInstance": event.get("reportingInstance").cloned().unwrap_or_default(),
            "firstTimestamp": time,
            "lastTimestamp": last,
            "count": event.pointer("/series/count").cloned().unwrap_or(json!(1)),
        });
        match self.get(&core, &ns, &name) {
            Ok(cur) => {
                converted["metadata"] = cur.get("metadata").cloned().unwrap_or_default();
                if let Some(m) = converted["metadata"].as_object_mut() {
                    m.remove("resourceVersion");
                }
                let _ = self.update(&core, &ns, &name, converted, WriteMode::Internal, false);
            }
            Err(_) => {
                let _ = self.create(&core, Some(&ns), converted, false);
            }
        }
    }

    /// Deletes objects owned (ownerReferences) by a removed controller object.
    fn collect_garbage(&mut self, owner_uid: String, ns: &str) {
        if owner_uid.is_empty() || ns.is_empty() {
            return;
        }
        for plural in ["replicasets", "pods"] {
            let group = if plural == "pods" { "" } else { "apps" };
            let Some(t) = self.find(group, plural) else {
                continue;
            };
            let owned: Vec<String> = self
                .all(&t, Some(ns))
                .iter()
                .filter(|o| {
                    o.pointer("/metadata/ownerReferences")
                        .and_then(Value::as_array)
                        .is_some_and(|refs| {
                            refs.iter()
                                .any(|r| r.get("uid").and_then(Value::as_str) == Some(&owner_uid))
                        })
                })
                .map(|o| name_of(o).to_owned())
                .collect();
            for name in owned {
                self.remove(&t, ns, &name);
            }
        }
    }

    /// Starts deleting an object. Objects with finalizers, and pods given a grace period
    /// (`graceful`), get a deletionTimestamp and stay; others are removed at once. Returns the
    /// object's state and whether it is gone.
    pub fn delete(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        grace: Option<i64>,
        graceful: bool,
        dry_run: bool,
    ) -> Result<(Arc<Value>, bool), ApiError> {
        let current = self.get(rt, ns, name)?;
        let has_finalizers = current
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        let grace = grace.unwrap_or_else(|| {
            current
                .pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(30)
        });
        let already = current.pointer("/metadata/deletionTimestamp").is_some();
        let pod_waits = rt.kind == "Pod" && graceful && grace > 0;
        if !has_finalizers && !pod_waits {
            if dry_run {
                return Ok((current, true));
            }
            let last = self.remove(rt, ns, name).unwrap_or(current);
            return Ok((last, true));
        }
        if dry_run {
            return Ok((current, false));
        }
        if already {
            let old_grace = current
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            if !pod_waits || grace >= old_grace {
                return Ok((current, false));
            }
        }
        let mut next = (*current).clone();
        let meta = metadata_mut(&mut next);
        meta.insert(
            "deletionTimestamp".into(),
            json!(timestamp_in(if pod_waits { grace } else { 0 })),
        );
        meta.insert(
            "deletionGracePeriodSeconds".into(),
            json!(if pod_waits { grace } else { 0 }),
        );
        self.rv += 1;
        meta.insert("resourceVersion".into(), json!(self.rv.to_string()));
        let next = Arc::new(next);
        self.objects
            .entry(rt.key())
            .or_default()
            .insert((ns.to_owned(), name.to_owned()), next.clone());
        self.record(rt, ChangeKind::Modified, next.clone(), Some(current));
        Ok((next, false))
    }

    /// Registers (or re-registers) the type a CustomResourceDefinition describes.
    pub fn register_crd(&mut self, crd: &Value) {
        let spec = crd.get("spec").cloned().unwrap_or_default();
        let s = |p: &str| {
            spec.pointer(p)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let versions: Vec<String> = spec
            .get("versions")
            .and_then(Value::as_array)
            .map(|vs| {
                let mut v: Vec<(bool, String)> = vs
                    .iter()
                    .filter(|v| v.get("served").and_then(Value::as_bool).unwrap_or(true))
                    .map(|v| {
                        let storage = v.get("storage").and_then(Value::as_bool).unwrap_or(false);
                        (
                            !storage,
                            v.get("name")
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                                .to_owned(),
                        )
                    })
                    .collect();
                v.sort();
                v.into_iter().map(|(_, n)| n).collect()
            })
            .unwrap_or_default();
        let status_subresource = spec
            .get("versions")
            .and_then(Value::as_array)
            .is_some_and(|vs| vs.iter().any(|v| v.pointer("/subresources/status").is_some()));
        let t = ResourceType {
            group: s("/group"),
            versions,
            plural: s("/names/plural"),
            singular: s("/names/singular"),
            kind: s("/names/kind"),
            namespaced: s("/scope") != "Cluster",
            short_names: spec
                .pointer("/names/shortNames")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect())
                .unwrap_or_default(),
            categories: spec
                .pointer("/names/categories")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect())
                .unwrap_or_default(),
            status_subresource,
        };
        if t.group.is_empty() || t.plural.is_empty() || t.kind.is_empty() || t.versions.is_empty() {
            return;
        }
        self.types
            .retain(|x| !(x.group == t.group && x.plural == t.plural));
        self.types.push(Arc::new(t));
    }

    /// Stops serving the type of a deleted CustomResourceDefinition (and drops its objects).
    pub fn unregister_crd(&mut self, crd: &Value) {
        let group = crd
            .pointer("/spec/group")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let plural = crd
            .pointer("/spec/names/plural")
            .and_then(Value::as_str)
            .unwrap_or_default();
        self.types.retain(|x| !(x.group == group && x.plural == plural));
        self.objects.remove(&(group.to_owned(), plural.to_owned()));
    }

    /// How many objects of a type are stored.
    pub fn count(&self, rt: &ResourceType) -> usize {
        self.objects.get(&rt.key()).map_or(0, BTreeMap::len)
    }
}

fn encode_continue(ns: &str, name: &str) -> String {
    format!("{ns}/{name}")
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn decode_continue(token: &str) -> Option<ObjKey> {
    if !token.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
        .collect();
    let s = String::from_utf8(bytes?).ok()?;
    let (ns, name) = s.split_once('/')?;
    Some((ns.to_owned(), name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods(store: &Store) -> Arc<ResourceType> {
        store.find("", "pods").unwrap()
    }

    fn pod(name: &str) -> Value {
        json!({"metadata": {"name": name, "labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}})
    }

    #[test]
    fn create_fills_metadata_and_rejects_duplicates() {
        let mut s = Store::new(100);
        let t = pods(&s);
        let p = s.create(&t, Some("default"), pod("a"), false).unwrap();
        assert_eq!(p["apiVersion"], "v1");
        assert_eq!(p["kind"], "Pod");
        assert_eq!(p["metadata"]["namespace"], "default");
        assert!(!uid_of(&p).is_empty());
        let err = s.create(&t, Some("default"), pod("a"), false).unwrap_err();
        assert_eq!((err.code, err.reason), (409, "AlreadyExists"));
        let err = s.create(&t, Some("nope"), pod("b"), false).unwrap_err();
        assert_eq!(err.code, 404);
        let g = s
            .create(
                &t,
                Some("default"),
                json!({"metadata": {"generateName": "web-"}, "spec": {"containers": [{"name": "c"}]}}),
                false,
            )
            .unwrap();
        assert!(name_of(&g).starts_with("web-") && name_of(&g).len() == 9);
        let err = s
            .create(
                &t,
                Some("default"),
                json!({"metadata": {"name": "Bad_Name"}, "spec": {"containers": [{}]}}),
                false,
            )
            .unwrap_err();
        assert_eq!(err.code, 422);
        let before = s.resource_version();
        s.create(&t, Some("default"), pod("dry"), true).unwrap();
        assert_eq!(s.resource_version(), before);
        assert!(s.get(&t, "default", "dry").is_err());
    }

    #[test]
    fn removing_an_owner_collects_its_pods_and_removing_a_pod_collects_nothing() {
        let mut s = Store::new(100);
        let t = pods(&s);
        let rst = s.find("apps", "replicasets").unwrap();
        let rs = s
            .create(
                &rst,
                Some("default"),
                json!({"metadata": {"name": "web"}, "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}}),
                false,
            )
            .unwrap();
        let owned = |name: &str, owner: &str| {
            let mut p = pod(name);
            p["metadata"]["ownerReferences"] =
                json!([{"apiVersion": "v1", "kind": "Thing", "name": "o", "uid": owner, "controller": true}]);
            p
        };
        s.create(&t, Some("default"), owned("a", uid_of(&rs)), false)
            .unwrap();
        let b = s
            .create(&t, Some("default"), owned("b", uid_of(&rs)), false)
            .unwrap();
        // A pod "owned" by pod b stays when b goes: pods own nothing here.
        s.create(&t, Some("default"), owned("c", uid_of(&b)), false)
            .unwrap();
        s.remove(&t, "default", "b");
        assert!(s.get(&t, "default", "a").is_ok() && s.get(&t, "default", "c").is_ok());
        s.remove(&rst, "default", "web");
        assert!(
            s.get(&t, "default", "a").is_err(),
            "the ReplicaSet's pod is collected"
        );
        assert!(s.get(&t, "default", "c").is_ok());
    }

    #[test]
    fn update_checks_resource_version() {
        let mut s = Store::new(100);
        let t = pods(&s);
        let p = s.create(&t, Some("default"), pod("a"), false).unwrap();
        let mut stale = (*p).clone();
        stale["metadata"]["labels"]["x"] = json!("1");
        let fresh = s
            .update(&t, "default", "a", stale.clone(), WriteMode::Main, false)
            .unwrap();
        assert_ne!(
            fresh["metadata"]["resourceVersion"],
            p["metadata"]["resourceVersion"]
        );
        let err = s
            .update(&t, "default", "a", stale, WriteMode::Main, false)
            .unwrap_err();
        assert_eq!((err.code, err.reason), (409, "Conflict"));
        // Status is ignored by main writes and only taken by status writes.
        let mut with_status = (*fresh).clone();
        with_status["status"] = json!({"phase": "Running"});
        let after = s
            .update(&t, "default", "a", with_status.clone(), WriteMode::Main, false)
            .unwrap();
        assert!(after.get("status").is_none());
        let after = s
            .update(&t, "default", "a", with_status, WriteMode::Status, false)
            .unwrap();
        assert_eq!(after["status"]["phase"], "Running");
    }

    #[test]
    fn list_paginates_and_history_compacts() {
        let mut s = Store::new(20);
        let t = pods(&s);
        for i in 0..30 {
            s.create(&t, Some("default"), pod(&format!("p{i:02}")), false)
                .unwrap();
        }
        let mut q = ListQuery {
            limit: 7,
            ..Default::default()
        };
        let mut seen = Vec::new();
        loop {
            let (items, next) = s.list(&t, Some("default"), &q).unwrap();
            seen.extend(items.iter().map(|o| name_of(o).to_owned()));
            match next {
                Some(c) => q.continue_token = Some(c),
                None => break,
            }
        }
        assert_eq!(seen.len(), 30);
        assert_eq!(seen[0], "p00");
        assert_eq!(seen[29], "p29");
        assert!(s.changes_since(&t.key(), 1).is_none(), "history was compacted");
        let rv = s.resource_version();
        assert_eq!(s.changes_since(&t.key(), rv).unwrap().len(), 0);
        assert_eq!(s.changes_since(&t.key(), rv - 3).unwrap().len(), 3);
        assert!(
            s.list(
                &t,
                None,
                &ListQuery {
                    continue_token: Some("zz".into()),
                    ..Default::default()
                }
            )
            .is_err()
        );
    }

    #[test]
    fn finalizers_and_graceful_pod_deletion() {
        let mut s = Store::new(100);
        let t = pods(&s);
        let mut p = pod("a");
        p["metadata"]["finalizers"] = json!(["x/y"]);
        s.create(&t, Some("default"), p, false).unwrap();
        let (obj, gone) = s.delete(&t, "default", "a", Some(0), false, false).unwrap();
        assert!(!gone);
        assert!(obj.pointer("/metadata/deletionTimestamp").is_some());
        let mut cleared = (*obj).clone();
        cleared["metadata"]["finalizers"] = json!([]);
        s.update(&t, "default", "a", cleared, WriteMode::Main, false)
            .unwrap();
        assert!(s.get(&t, "default", "a").is_err());
        s.create(&t, Some("default"), pod("b"), false).unwrap();
        let (obj, gone) = s.delete(&t, "default", "b", Some(10), true, false).unwrap();
        assert!(!gone);
        assert_eq!(obj["metadata"]["deletionGracePeriodSeconds"], 10);
        let (_, gone) = s.delete(&t, "default", "b", Some(0), true, false).unwrap();
        assert!(gone);
    }

    #[test]
    fn absurd_grace_periods_do_not_overflow() {
        assert_eq!(timestamp_in(i64::MAX).len(), 20);
        let mut s = Store::new(100);
        let t = pods(&s);
        s.create(&t, Some("default"), pod("a"), false).unwrap();
        let (obj, gone) = s.delete(&t, "default", "a", Some(i64::MAX), true, false).unwrap();
        assert!(!gone);
        assert!(obj.pointer("/metadata/deletionTimestamp").is_some());
    }

    #[test]
    fn node_taints_are_validated() {
        let mut s = Store::new(100);
        let t = s.find("", "nodes").unwrap();
        let err = s
            .create(
                &t,
                None,
                json!({"metadata": {"name": "n"}, "spec": {"taints": [{"key": "a", "effect": "NoSchedule"}, {"key": "a", "effect": "NoSchedule"}, {"key": "b", "effect": "Bogus"}]}}),
                false,
            )
            .unwrap_err();
        assert_eq!(err.code, 422);
        assert!(
            err.message.contains("Duplicate value") && err.message.contains("Unsupported value"),
            "{}",
            err.message
        );
    }
}
