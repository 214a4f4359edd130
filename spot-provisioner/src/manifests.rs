//! Workloads and cluster objects read from YAML (or JSON) files, for planning and
//! simulation without a cluster: Pods, and the pods that Deployments, ReplicaSets,
//! StatefulSets and Jobs would create; DaemonSets (as one pod of each, the per-node
//! overhead); NodePools, SpotNodeClasses and Nodes.
//!
//! - Files hold several documents (`---`), and `List` documents (`kind: List` or
//!   `kind: PodList`, ...) hold `items`.
//! - Controllers are expanded as their controllers would: `replicas` (default 1) pods for
//!   Deployments (`web-<hash>-0`, ..., with the `pod-template-hash` label, owned by the
//!   ReplicaSet `web-<hash>`), ReplicaSets (`rs-0`, ...) and StatefulSets (`web-0`, ..., with
//!   `statefulset.kubernetes.io/pod-name` and `apps.kubernetes.io/pod-index`); Jobs run
//!   `parallelism` pods (default 1, at most `completions`), labelled `job-name`. Pods get the
//!   template's labels and annotations and the controller's namespace; the namespace
//!   defaults to `default`.
//! - Documents of other kinds are listed in [`Manifests::unknown`], never silently dropped;
//!   empty documents are skipped.
//! - Errors name the file, the document (and list item), the field and the value.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Node, Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::api::{NodePool, SpotNodeClass};

/// The namespace of objects that name none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Where a document is: file, document index (from 0) and, inside a `List`, item index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file (or the label given to [`Manifests::add_text`]).
    pub file: String,
    /// The document's index in the file, from 0.
    pub document: usize,
    /// The item's index inside a `List` document.
    pub item: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.file, self.document)?;
        if let Some(i) = self.item {
            write!(f, " item {i}")?;
        }
        Ok(())
    }
}

/// Errors of reading manifests.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory cannot be read.
    #[error("{file}: {source}")]
    Read {
        /// The path.
        file: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A document is not valid YAML, or not a Kubernetes object.
    #[error("{at}: {message}")]
    Document {
        /// Where.
        at: Location,
        /// What is wrong.
        message: String,
    },
    /// A field has a value its kind does not accept.
    #[error("{at} ({object}): {field}: {message}")]
    Field {
        /// Where.
        at: Location,
        /// The object's kind and name (`Deployment "web"`).
        object: String,
        /// The field's path (`spec.replicas`).
        field: String,
        /// What is wrong, with the value.
        message: String,
    },
}

/// A document of a kind this module does not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unknown {
    /// Where.
    pub at: Location,
    /// `apiVersion`.
    pub api_version: String,
    /// `kind`.
    pub kind: String,
    /// `metadata.name`.
    pub name: String,
}

impl fmt::Display for Unknown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} {} {:?} is not read (only Pods, Deployments, ReplicaSets, StatefulSets, Jobs, DaemonSets, NodePools, SpotNodeClasses and Nodes are)",
            self.at, self.api_version, self.kind, self.name
        )
    }
}

/// Everything read from manifests.
#[derive(Debug, Clone, Default)]
pub struct Manifests {
    /// Pods, given or expanded from their controllers, in file order.
    pub pods: Vec<Pod>,
    /// One pod per DaemonSet (the pod every node of a matching pool runs).
    pub daemonsets: Vec<Pod>,
    /// NodePools.
    pub node_pools: Vec<NodePool>,
    /// Node classes.
    pub node_classes: Vec<SpotNodeClass>,
    /// Nodes.
    pub nodes: Vec<Node>,
    /// Documents of other kinds.
    pub unknown: Vec<Unknown>,
}

impl Manifests {
    /// Reads files, and the `*.yaml`, `*.yml` and `*.json` files of directories (sorted by
    /// name, not recursive), in the order given.
    pub fn load<P: AsRef<Path>>(paths: &[P]) -> Result<Manifests, Error> {
        let mut out = Manifests::default();
        for path in paths {
            let path = path.as_ref();
            let read_err = |source| Error::Read {
                file: path.display().to_string(),
                source,
            };
            if path.is_dir() {
                let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                    .map_err(read_err)?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.is_file()
                            && p.extension()
                                .and_then(|e| e.to_str())
                                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
                    })
                    .collect();
                files.sort();
                for f in files {
                    out.add_file(&f)?;
                }
            } else {
                out.add_file(path)?;
            }
        }
        Ok(out)
    }

    /// Reads one file.
    pub fn add_file(&mut self, path: &Path) -> Result<(), Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            file: path.display().to_string(),
            source,
        })?;
        self.add_text(&path.display().to_string(), &text)
    }

    /// Reads the documents of `text`; `file` names it in errors.
    pub fn add_text(&mut self, file: &str, text: &str) -> Result<(), Error> {
        for (document, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let at = Location {
                file: file.to_owned(),
                document,
                item: None,
            };
            let yaml: serde_yaml::Value =
                serde::Deserialize::deserialize(de).map_err(|e| Error::Document {
                    at: at.clone(),
                    message: format!("invalid YAML: {e}"),
                })?;
            if yaml.is_null() {
                continue;
            }
            let json: Value = serde_json::to_value(&yaml).map_err(|e| Error::Document {
                at: at.clone(),
                message: format!("not a JSON-compatible object: {e}"),
            })?;
            self.add_value(at, json)?;
        }
        Ok(())
    }

    fn add_value(&mut self, at: Location, obj: Value) -> Result<(), Error> {
        let Value::Object(map) = &obj else {
            return Err(Error::Document {
                at,
                message: format!("expected an object with apiVersion and kind, found {obj}"),
            });
        };
        let text = |k: &str| map.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
        let (api_version, kind) = (text("apiVersion"), text("kind"));
        if kind.is_empty() {
            return Err(Error::Document {
                at,
                message: "the document has no kind".into(),
            });
        }
        let name = map
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if kind == "List" || (kind.ends_with("List") && map.contains_key("items")) {
            let items = match map.get("items") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(items)) => items.clone(),
                Some(other) => {
                    return Err(Error::Field {
                        at,
                        object: format!("{kind} {name:?}"),
                        field: "items".into(),
                        message: format!("expected a list, found {other}"),
                    });
                }
            };
            let item_kind = kind
                .strip_suffix("List")
                .filter(|k| !k.is_empty())
                .map(str::to_owned);
            for (i, mut item) in items.into_iter().enumerate() {
                // Typed lists (PodList) may leave apiVersion and kind out of their items.
                if let (Some(k), Value::Object(m)) = (&item_kind, &mut item) {
                    m.entry("kind").or_insert_with(|| Value::String(k.clone()));
                    m.entry("apiVersion")
                        .or_insert_with(|| Value::String(api_version.clone()));
                }
                let at = Location {
                    item: Some(i),
                    ..at.clone()
                };
                self.add_value(at, item)?;
            }
            return Ok(());
        }
        let ctx = Ctx {
            at: at.clone(),
            kind: kind.clone(),
            name: name.clone(),
        };
        let group = api_version.split_once('/').map_or("", |(g, _)| g);
        match (group, kind.as_str()) {
            ("", "Pod") => {
                let mut pod: Pod = ctx.typed(obj)?;
                default_namespace(&mut pod.metadata);
                self.pods.push(pod);
            }
            ("", "Node") => self.nodes.push(ctx.typed(obj)?),
            ("apps", "Deployment") => {
                let d: Workload = ctx.typed(obj)?;
                let spec = d.spec;
                let replicas = ctx.count("spec.replicas", spec.replicas, 1)?;
                let hash = pod_template_hash(&spec.template);
                let rs_name = format!("{name}-{hash}");
                let owner = owner("apps/v1", "ReplicaSet", &rs_name);
                let ns = namespace(&d.metadata);
                for i in 0..replicas {
                    let mut pod =
                        from_template(&spec.template, &format!("{rs_name}-{i}"), &ns, owner.clone());
                    label(&mut pod, "pod-template-hash", &hash);
                    self.pods.push(pod);
                }
            }
            ("apps", "ReplicaSet") => {
                let rs: Workload = ctx.typed(obj)?;
                let spec = rs.spec;
                let replicas = ctx.count("spec.replicas", spec.replicas, 1)?;
                let template = spec.template;
                let ns = namespace(&rs.metadata);
                for i in 0..replicas {
                    let pod = from_template(
                        &template,
                        &format!("{name}-{i}"),
                        &ns,
                        owner("apps/v1", "ReplicaSet", &name),
                    );
                    self.pods.push(pod);
                }
            }
            ("apps", "StatefulSet") => {
                let ss: Workload = ctx.typed(obj)?;
                let spec = ss.spec;
                let replicas = ctx.count("spec.replicas", spec.replicas, 1)?;
                let ns = namespace(&ss.metadata);
                for i in 0..replicas {
                    let pod_name = format!("{name}-{i}");
                    let mut pod = from_template(
                        &spec.template,
                        &pod_name,
                        &ns,
                        owner("apps/v1", "StatefulSet", &name),
                    );
                    label(&mut pod, "statefulset.kubernetes.io/pod-name", &pod_name);
                    label(&mut pod, "apps.kubernetes.io/pod-index", &i.to_string());
                    self.pods.push(pod);
                }
            }
            ("batch", "Job") => {
                let job: Workload = ctx.typed(obj)?;
                let spec = job.spec;
                let parallelism = ctx.count("spec.parallelism", spec.parallelism, 1)?;
                let completions = match spec.completions {
                    None => parallelism,
                    Some(_) => ctx.count("spec.completions", spec.completions, 1)?,
                };
                let ns = namespace(&job.metadata);
                for i in 0..parallelism.min(completions) {
                    let mut pod = from_template(
                        &spec.template,
                        &format!("{name}-{i}"),
                        &ns,
                        owner("batch/v1", "Job", &name),
                    );
                    label(&mut pod, "job-name", &name);
                    label(&mut pod, "batch.kubernetes.io/job-name", &name);
                    if spec.completion_mode.as_deref() == Some("Indexed") {
                        label(
                            &mut pod,
                            "batch.kubernetes.io/job-completion-index",
                            &i.to_string(),
                        );
                    }
                    self.pods.push(pod);
                }
            }
            ("apps", "DaemonSet") => {
                let ds: Workload = ctx.typed(obj)?;
                let spec = ds.spec;
                let ns = namespace(&ds.metadata);
                self.daemonsets.push(from_template(
                    &spec.template,
                    &name,
                    &ns,
                    owner("apps/v1", "DaemonSet", &name),
                ));
            }
            ("karpenter.sh", "NodePool") => self.node_pools.push(ctx.typed(obj)?),
            ("spot.dev", "SpotNodeClass") => self.node_classes.push(ctx.typed(obj)?),
            _ => self.unknown.push(Unknown {
                at,
                api_version,
                kind,
                name,
            }),
        }
        Ok(())
    }
}

/// The parts of a workload controller this module reads (the k8s-openapi types of
/// Deployments and StatefulSets differ between Kubernetes versions; these parts do not).
#[derive(Debug, Default, Deserialize)]
struct Workload {
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: WorkloadSpec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WorkloadSpec {
    replicas: Option<i32>,
    parallelism: Option<i32>,
    completions: Option<i32>,
    completion_mode: Option<String>,
    #[serde(default)]
    template: PodTemplateSpec,
}

struct Ctx {
    at: Location,
    kind: String,
    name: String,
}

impl Ctx {
    fn field(&self, field: impl Into<String>, message: impl Into<String>) -> Error {
        Error::Field {
            at: self.at.clone(),
            object: format!("{} {:?}", self.kind, self.name),
            field: field.into(),
            message: message.into(),
        }
    }

    /// Deserializes the document as `T`; the error names the field's path.
    fn typed<T: DeserializeOwned>(&self, obj: Value) -> Result<T, Error> {
        serde_path_to_error::deserialize(obj).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." {
                "(document)".to_owned()
            } else {
                path
            };
            self.field(path, e.into_inner().to_string())
        })
    }

    /// A non-negative count with a default.
    fn count(&self, field: &str, value: Option<i32>, default: i32) -> Result<usize, Error> {
        let v = value.unwrap_or(default);
        usize::try_from(v).map_err(|_| self.field(field, format!("invalid value {v}: must not be negative")))
    }
}

fn namespace(meta: &ObjectMeta) -> String {
    meta.namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned())
}

fn default_namespace(meta: &mut ObjectMeta) {
    meta.namespace = Some(namespace(meta));
}

fn owner(api_version: &str, kind: &str, name: &str) -> OwnerReference {
    OwnerReference {
        api_version: api_version.to_owned(),
        kind: kind.to_owned(),
        name: name.to_owned(),
        uid: String::new(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn label(pod: &mut Pod, key: &str, value: &str) {
    pod.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(key.to_owned(), value.to_owned());
}

/// A pod from a controller's template.
fn from_template(template: &PodTemplateSpec, name: &str, namespace: &str, owner: OwnerReference) -> Pod {
    let meta = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: meta.labels,
            annotations: meta.annotations,
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// The `pod-template-hash` of a template, in Kubernetes' shape: an FNV-1a 32-bit hash (of
/// the template's JSON here) whose decimal digits are mapped onto Kubernetes' safe alphabet.
pub fn pod_template_hash(template: &PodTemplateSpec) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let json = serde_json::to_vec(template).unwrap_or_default();
    let hash = json.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    });
    hash.to_string()
        .bytes()
        .map(|b| ALPHANUMS[usize::from(b) % ALPHANUMS.len()] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Manifests, Error> {
        let mut m = Manifests::default();
        m.add_text("test.yaml", text)?;
        Ok(m)
    }

    fn names(pods: &[Pod]) -> Vec<String> {
        pods.iter()
            .map(|p| {
                format!(
                    "{}/{}",
                    p.metadata.namespace.as_deref().unwrap_or_default(),
                    p.metadata.name.as_deref().unwrap_or_default()
                )
            })
            .collect()
    }

    const WORKLOADS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: solo}
spec:
  containers: [{name: c, resources: {requests: {cpu: 1}}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}, annotations: {a: b}}
    spec:
      containers: [{name: c, image: nginx, resources: {requests: {cpu: 500m, memory: 1Gi}}}]
---
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  replicas: 2
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec: {containers: [{name: c}]}
---
apiVersion: batch/v1
kind: Job
metadata: {name: batch}
spec:
  parallelism: 4
  completions: 2
  completionMode: Indexed
  template:
    spec: {containers: [{name: c}], restartPolicy: Never}
---
apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: rs}
spec:
  selector: {matchLabels: {app: rs}}
  template:
    metadata: {labels: {app: rs}}
    spec: {containers: [{name: c}]}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: kube-system}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec: {containers: [{name: c, resources: {requests: {cpu: 100m}}}]}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {ports: [{port: 80}]}
"#;

    #[test]
    fn expands_controllers_into_pods() {
        let m = read(WORKLOADS).unwrap();
        let hash = m.pods[1].metadata.labels.as_ref().unwrap()["pod-template-hash"].clone();
        assert!(
            !hash.is_empty() && hash.bytes().all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b)),
            "{hash}"
        );
        assert_eq!(
            names(&m.pods),
            [
                "default/solo".to_owned(),
                format!("shop/web-{hash}-0"),
                format!("shop/web-{hash}-1"),
                format!("shop/web-{hash}-2"),
                "default/db-0".to_owned(),
                "default/db-1".to_owned(),
                "default/batch-0".to_owned(),
                "default/batch-1".to_owned(),
                "default/rs-0".to_owned(),
            ]
        );
        let web = &m.pods[1];
        let labels = web.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["app"], "web");
        assert_eq!(web.metadata.annotations.as_ref().unwrap()["a"], "b");
        let owner = &web.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.clone()),
            ("ReplicaSet", format!("web-{hash}"))
        );
        let spec = spot_k8s::convert::pod_spec(web).unwrap();
        assert_eq!(spec.requests.cpu_millis, 500);
        assert_eq!(spec.owner_kind.as_deref(), Some("ReplicaSet"));
        let db1 = m.pods[5].metadata.labels.as_ref().unwrap();
        assert_eq!(db1["statefulset.kubernetes.io/pod-name"], "db-1");
        assert_eq!(db1["apps.kubernetes.io/pod-index"], "1");
        let batch = m.pods[7].metadata.labels.as_ref().unwrap();
        assert_eq!(batch["job-name"], "batch");
        assert_eq!(batch["batch.kubernetes.io/job-completion-index"], "1");
        assert_eq!(
            spot_k8s::convert::pod_spec(&m.pods[0])
                .unwrap()
                .requests
                .cpu_millis,
            1000
        );
        assert_eq!(names(&m.daemonsets), ["kube-system/agent"]);
        assert!(
            spot_k8s::convert::pod_spec(&m.daemonsets[0])
                .unwrap()
                .is_daemonset()
        );
        assert_eq!(m.unknown.len(), 1);
        let u = &m.unknown[0];
        assert_eq!(
            (u.kind.as_str(), u.name.as_str(), u.at.document),
            ("Service", "web", 7)
        );
        assert!(u.to_string().contains("test.yaml: document 7"), "{u}");
        // The hash follows the template.
        let changed = WORKLOADS.replace("image: nginx", "image: nginx:2");
        let m2 = read(&changed).unwrap();
        assert_ne!(
            m2.pods[1].metadata.labels.as_ref().unwrap()["pod-template-hash"],
            hash
        );
    }

    #[test]
    fn zero_replicas_and_defaults() {
        let m = read(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: none}\nspec: {replicas: 0, selector: {}, template: {spec: {containers: []}}}\n---\n\
             apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: one}\nspec: {selector: {}, template: {spec: {containers: []}}}\n---\n\
             apiVersion: batch/v1\nkind: Job\nmetadata: {name: j}\nspec: {template: {spec: {containers: []}}}\n",
        )
        .unwrap();
        assert_eq!(m.pods.len(), 2);
        assert!(m.pods[0].metadata.name.as_deref().unwrap().starts_with("one-"));
        assert_eq!(m.pods[1].metadata.name.as_deref(), Some("j-0"));
    }

    #[test]
    fn lists_nodepools_classes_and_nodes() {
        let m = read(
            r#"
apiVersion: v1
kind: List
items:
- apiVersion: karpenter.sh/v1
  kind: NodePool
  metadata: {name: default}
  spec:
    template:
      spec:
        requirements: [{key: karpenter.sh/capacity-type, operator: In, values: [spot]}]
        nodeClassRef: {group: spot.dev, kind: SpotNodeClass, name: default}
- apiVersion: spot.dev/v1
  kind: SpotNodeClass
  metadata: {name: default}
  spec: {zones: [{zone: us-east-1a}]}
- apiVersion: v1
  kind: Node
  metadata: {name: n1, labels: {kubernetes.io/hostname: n1}}
  status: {allocatable: {cpu: "4", memory: 16Gi, pods: "110"}}
---
apiVersion: v1
kind: PodList
items:
- metadata: {name: a, namespace: x}
  spec: {containers: [{name: c}]}
"#,
        )
        .unwrap();
        assert_eq!(m.node_pools.len(), 1);
        assert_eq!(
            m.node_pools[0].spec.disruption.budgets[0].nodes, "10%",
            "Karpenter's defaults apply"
        );
        assert_eq!(m.node_classes.len(), 1);
        assert_eq!(m.nodes[0].metadata.name.as_deref(), Some("n1"));
        assert_eq!(names(&m.pods), ["x/a"]);
        assert!(m.unknown.is_empty());
    }

    #[test]
    fn errors_name_file_document_field_and_value() {
        let e = read("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: []}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {replicas: many, selector: {}, template: {}}\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("test.yaml: document 1")
                && e.contains("Deployment \"web\"")
                && e.contains("spec.replicas")
                && e.contains("many"),
            "{e}"
        );
        let e = read("apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: db}\nspec: {replicas: -2, selector: {}, template: {}, serviceName: db}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("spec.replicas") && e.contains("-2"), "{e}");
        let e = read("kind: List\napiVersion: v1\nitems:\n- {apiVersion: v1, kind: Pod, metadata: {name: p}, spec: {containers: [{name: c, resources: {requests: [1]}}]}}\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("document 0 item 0") && e.contains("spec.containers[0].resources.requests"),
            "{e}"
        );
        let e = read("apiVersion: karpenter.sh/v1\nkind: NodePool\nmetadata: {name: p}\nspec: {template: {spec: {requirements: [], nodeClassRef: {group: g, kind: k, name: n}, expireAfter: forever}}}\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("spec.template.spec.expireAfter") && e.contains("forever"),
            "{e}"
        );
        let e = read("a: [1,\n").unwrap_err().to_string();
        assert!(
            e.contains("test.yaml: document 0") && e.contains("invalid YAML"),
            "{e}"
        );
        let e = read("- 1\n- 2\n").unwrap_err().to_string();
        assert!(e.contains("expected an object"), "{e}");
        let e = read("apiVersion: v1\nmetadata: {name: x}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no kind"), "{e}");
    }

    #[test]
    fn loads_files_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("b.yaml"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: b}\nspec: {containers: []}\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("a.yml"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: []}\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not yaml: [").unwrap();
        let single = dir.path().join("c.json");
        std::fs::write(
            &single,
            r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "c"}, "spec": {"containers": []}}"#,
        )
        .unwrap();
        let m = Manifests::load(&[dir.path().to_path_buf()]).unwrap();
        assert_eq!(names(&m.pods), ["default/a", "default/b", "default/c"]);
        let m = Manifests::load(&[single]).unwrap();
        assert_eq!(names(&m.pods), ["default/c"]);
        let missing = dir.path().join("missing.yaml");
        let e = Manifests::load(&[&missing]).unwrap_err().to_string();
        assert!(e.contains("missing.yaml"), "{e}");
    }
}
