//! Drift and expiration (Karpenter's `nodeclaim/disruption/drift.go` and
//! `nodeclaim/expiration`):
//!
//! - *NodePool drift*: the NodePool's template hash (annotation `karpenter.sh/nodepool-hash`,
//!   version `v3`) differs from the one stamped on the NodeClaim at launch. The hash covers
//!   the template's labels, annotations, taints, startup taints, `expireAfter`,
//!   `terminationGracePeriod` and `nodeClassRef`; requirements are left out (they drift on
//!   their own, below). Like Karpenter's `hashstructure` options, lists are sets and empty
//!   values hash as absent.
//! - *Requirements drift*: the NodeClaim's labels no longer satisfy the pool's requirements.
//! - *Expiration*: `expireAfter` has passed since the NodeClaim was created.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::labels;
use crate::node::Taint;
use crate::requirements::Requirements;

/// The annotation holding the NodePool template hash (on the NodePool and on its NodeClaims).
pub const NODEPOOL_HASH_ANNOTATION: &str = "karpenter.sh/nodepool-hash";
/// The annotation holding the hash's version.
pub const NODEPOOL_HASH_VERSION_ANNOTATION: &str = "karpenter.sh/nodepool-hash-version";
/// The version of [`template_hash`]; hashes of other versions are not compared.
pub const NODEPOOL_HASH_VERSION: &str = "v3";

/// Why a node drifted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriftReason {
    /// The NodePool template changed since the node launched.
    #[error("NodePoolDrifted: template hash {current} (node launched with {launched})")]
    NodePoolDrifted {
        /// The NodePool's current hash.
        current: String,
        /// The hash stamped on the NodeClaim.
        launched: String,
    },
    /// A NodePool requirement no longer holds for the node's labels.
    #[error("RequirementsDrifted: {requirement} does not hold for {key}={}", value.as_deref().unwrap_or("(absent)"))]
    RequirementsDrifted {
        /// The label key.
        key: String,
        /// The requirement, as text.
        requirement: String,
        /// The node's label value, if it has the label.
        value: Option<String>,
    },
}

/// A NodePool's `nodeClassRef`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct NodeClassRef {
    /// API group.
    pub group: String,
    /// Kind.
    pub kind: String,
    /// Name.
    pub name: String,
}

/// The NodePool template fields the hash covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateFields {
    /// `spec.template.metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `spec.template.metadata.annotations`.
    pub annotations: BTreeMap<String, String>,
    /// `spec.template.spec.taints`.
    pub taints: Vec<Taint>,
    /// `spec.template.spec.startupTaints`.
    pub startup_taints: Vec<Taint>,
    /// `spec.template.spec.expireAfter`; `None` is `Never`.
    pub expire_after: Option<Duration>,
    /// `spec.template.spec.terminationGracePeriod`.
    pub termination_grace_period: Option<Duration>,
    /// `spec.template.spec.nodeClassRef`.
    pub node_class_ref: NodeClassRef,
}

/// Feeds length-prefixed fields to the hasher, so that no two encodings collide.
struct Encoder(Sha256);

impl Encoder {
    fn bytes(&mut self, bytes: &[u8]) {
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }

    /// A named field, skipped when empty (as `IgnoreZeroValue`).
    fn field<I, S>(&mut self, name: &str, values: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        let values: Vec<S> = values.into_iter().collect();
        if values.iter().all(|v| v.as_ref().is_empty()) {
            return;
        }
        self.bytes(name.as_bytes());
        self.0.update((values.len() as u64).to_le_bytes());
        for value in &values {
            self.bytes(value.as_ref());
        }
    }

    /// A map as a list of length-prefixed `key` + `value` entries, in key order.
    fn map(&mut self, name: &str, map: &BTreeMap<String, String>) {
        self.field(name, map.iter().map(|(k, v)| format!("{}:{k}{v}", k.len())));
    }

    /// Taints as a set: sorted and de-duplicated.
    fn taints(&mut self, name: &str, taints: &[Taint]) {
        let set: BTreeSet<String> = taints
            .iter()
            .map(|t| {
                let value = t.value.as_deref().unwrap_or("");
                format!("{}:{}|{}:{value}|{}", t.key.len(), t.key, value.len(), t.effect)
            })
            .collect();
        self.field(name, set);
    }

    fn duration(&mut self, name: &str, duration: Option<Duration>) {
        if let Some(d) = duration.filter(|d| !d.is_zero()) {
            self.field(name, [d.as_nanos().to_string()]);
        }
    }
}

/// The NodePool template hash (see the [module documentation](self)): a decimal `u64`, as
/// Karpenter prints it. Stable across runs, platforms and the order of taints.
pub fn template_hash(template: &TemplateFields) -> String {
    let mut e = Encoder(Sha256::new());
    e.map("labels", &template.labels);
    e.map("annotations", &template.annotations);
    e.taints("taints", &template.taints);
    e.taints("startupTaints", &template.startup_taints);
    e.duration("expireAfter", template.expire_after);
    e.duration("terminationGracePeriod", template.termination_grace_period);
    let r = &template.node_class_ref;
    e.field("nodeClassRef.group", [&r.group]);
    e.field("nodeClassRef.kind", [&r.kind]);
    e.field("nodeClassRef.name", [&r.name]);
    let digest = e.0.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first).to_string()
}

/// The annotations a NodeClaim launched from this template carries.
pub fn hash_annotations(template: &TemplateFields) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NODEPOOL_HASH_ANNOTATION.to_owned(), template_hash(template)),
        (
            NODEPOOL_HASH_VERSION_ANNOTATION.to_owned(),
            NODEPOOL_HASH_VERSION.to_owned(),
        ),
    ])
}

/// NodePool drift: the NodeClaim carries a `v3` hash that differs from `pool_hash`. A
/// NodeClaim without the annotations, or stamped by another hash version, has not drifted
/// (Karpenter re-stamps those instead).
pub fn nodepool_drift(pool_hash: &str, claim_annotations: &BTreeMap<String, String>) -> Option<DriftReason> {
    let launched = claim_annotations.get(NODEPOOL_HASH_ANNOTATION)?;
    let version = claim_annotations.get(NODEPOOL_HASH_VERSION_ANNOTATION)?;
    (version == NODEPOOL_HASH_VERSION && launched != pool_hash).then(|| DriftReason::NodePoolDrifted {
        current: pool_hash.to_owned(),
        launched: launched.clone(),
    })
}

/// Requirements drift: the first pool requirement (in key order) the NodeClaim's labels do not
/// satisfy. A missing label satisfies only `NotIn` and `DoesNotExist` (Karpenter's
/// `StrictlyCompatible`).
pub fn requirements_drift(
    pool_requirements: &Requirements,
    claim_labels: &BTreeMap<String, String>,
) -> Option<DriftReason> {
    let mut normalized: BTreeMap<&str, &str> = BTreeMap::new();
    for (key, value) in claim_labels {
        let stable = labels::normalize(key);
        if stable == key.as_str() {
            normalized.insert(stable, value);
        } else {
            normalized.entry(stable).or_insert(value);
        }
    }
    pool_requirements.iter().find_map(|requirement| {
        let value = normalized.get(requirement.key()).copied();
        (!requirement.matches(value)).then(|| DriftReason::RequirementsDrifted {
            key: requirement.key().to_owned(),
            requirement: requirement.to_string(),
            value: value.map(str::to_owned),
        })
    })
}

/// Whether `expire_after` (`None` = `Never`) has passed since `created`.
pub fn expired(created: OffsetDateTime, expire_after: Option<Duration>, now: OffsetDateTime) -> bool {
    match expire_after.map(time::Duration::try_from) {
        Some(Ok(after)) => now >= created + after,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::TaintEffect;
    use crate::requirements::{Operator, Requirement};
    use time::macros::datetime;

    fn template() -> TemplateFields {
        TemplateFields {
            labels: BTreeMap::from([("team".into(), "web".into())]),
            annotations: BTreeMap::new(),
            taints: vec![
                Taint::new("dedicated", "web", TaintEffect::NoSchedule),
                Taint::new("spot", "true", TaintEffect::PreferNoSchedule),
            ],
            startup_taints: vec![],
            expire_after: Some(Duration::from_secs(720 * 3600)),
            termination_grace_period: None,
            node_class_ref: NodeClassRef {
                group: "spot.dev".into(),
                kind: "SpotNodeClass".into(),
                name: "default".into(),
            },
        }
    }

    #[test]
    fn hash_is_stable_and_covers_every_field() {
        let base = template();
        let hash = template_hash(&base);
        assert_eq!(hash, template_hash(&base.clone()));
        assert!(hash.parse::<u64>().is_ok(), "{hash}");
        let mut reordered = base.clone();
        reordered.taints.reverse();
        reordered.taints.push(reordered.taints[0].clone());
        assert_eq!(template_hash(&reordered), hash, "taints are a set");
        type Change = Box<dyn Fn(&mut TemplateFields)>;
        let changes: Vec<(&str, Change)> = vec![
            (
                "label",
                Box::new(|t| {
                    t.labels.insert("team".into(), "api".into());
                }),
            ),
            (
                "annotation",
                Box::new(|t| {
                    t.annotations.insert("a".into(), "b".into());
                }),
            ),
            (
                "taint",
                Box::new(|t| {
                    t.taints.pop();
                }),
            ),
            (
                "startup taint",
                Box::new(|t| {
                    t.startup_taints
                        .push(Taint::new("init", "1", TaintEffect::NoExecute))
                }),
            ),
            (
                "expireAfter",
                Box::new(|t| t.expire_after = Some(Duration::from_secs(3600))),
            ),
            ("Never", Box::new(|t| t.expire_after = None)),
            (
                "terminationGracePeriod",
                Box::new(|t| t.termination_grace_period = Some(Duration::from_secs(60))),
            ),
            ("nodeClassRef", Box::new(|t| t.node_class_ref.name = "gpu".into())),
        ];
        let mut seen = BTreeSet::from([hash.clone()]);
        for (what, change) in changes {
            let mut t = base.clone();
            change(&mut t);
            assert!(seen.insert(template_hash(&t)), "{what} changes the hash");
        }
        // Moving text between fields changes the hash too.
        let mut a = base.clone();
        a.labels = BTreeMap::from([("a".into(), "bc".into())]);
        let mut b = base.clone();
        b.labels = BTreeMap::from([("ab".into(), "c".into())]);
        assert_ne!(template_hash(&a), template_hash(&b));
        // Empty values hash as absent.
        let mut zero = base.clone();
        zero.termination_grace_period = Some(Duration::ZERO);
        assert_eq!(template_hash(&zero), hash);
    }

    #[test]
    fn nodepool_drift_compares_same_version_hashes() {
        let t = template();
        let stamped = hash_annotations(&t);
        assert_eq!(stamped[NODEPOOL_HASH_VERSION_ANNOTATION], "v3");
        assert_eq!(nodepool_drift(&template_hash(&t), &stamped), None);
        let mut changed = t.clone();
        changed.labels.insert("team".into(), "api".into());
        let drift = nodepool_drift(&template_hash(&changed), &stamped).unwrap();
        assert!(
            drift.to_string().starts_with("NodePoolDrifted: template hash "),
            "{drift}"
        );
        let mut old = stamped.clone();
        old.insert(NODEPOOL_HASH_VERSION_ANNOTATION.into(), "v2".into());
        assert_eq!(
            nodepool_drift(&template_hash(&changed), &old),
            None,
            "other versions"
        );
        assert_eq!(nodepool_drift(&template_hash(&changed), &BTreeMap::new()), None);
    }

    #[test]
    fn requirements_drift_names_the_key() {
        let pool: Requirements = [
            Requirement::new(labels::CAPACITY_TYPE, Operator::In, ["spot"]).unwrap(),
            Requirement::new(labels::INSTANCE_CATEGORY, Operator::In, ["c", "m"]).unwrap(),
            Requirement::new("example.com/gpu", Operator::DoesNotExist, Vec::<String>::new()).unwrap(),
        ]
        .into_iter()
        .collect();
        let mut node = BTreeMap::from([
            (labels::CAPACITY_TYPE.to_owned(), "spot".to_owned()),
            (labels::INSTANCE_CATEGORY.to_owned(), "m".to_owned()),
        ]);
        assert_eq!(requirements_drift(&pool, &node), None);
        node.insert(labels::INSTANCE_CATEGORY.into(), "r".into());
        let drift = requirements_drift(&pool, &node).unwrap();
        assert_eq!(
            drift,
            DriftReason::RequirementsDrifted {
                key: labels::INSTANCE_CATEGORY.into(),
                requirement: pool.get(labels::INSTANCE_CATEGORY).unwrap().to_string(),
                value: Some("r".into()),
            }
        );
        node.remove(labels::INSTANCE_CATEGORY);
        assert!(
            requirements_drift(&pool, &node)
                .unwrap()
                .to_string()
                .ends_with("(absent)"),
            "a missing label satisfies only NotIn/DoesNotExist"
        );
        node.insert(labels::INSTANCE_CATEGORY.into(), "c".into());
        node.insert("example.com/gpu".into(), "yes".into());
        assert!(requirements_drift(&pool, &node).is_some());
        // Legacy aliases count.
        let zone: Requirements = [Requirement::new(labels::ZONE, Operator::In, ["us-east-1a"]).unwrap()]
            .into_iter()
            .collect();
        let legacy = BTreeMap::from([(labels::FAILURE_DOMAIN_ZONE.to_owned(), "us-east-1a".to_owned())]);
        assert_eq!(requirements_drift(&zone, &legacy), None);
    }

    #[test]
    fn expiration() {
        let created = datetime!(2026-05-01 00:00 UTC);
        let day = Some(Duration::from_secs(86_400));
        assert!(!expired(created, day, datetime!(2026-05-01 23:59 UTC)));
        assert!(expired(created, day, datetime!(2026-05-02 00:00 UTC)));
        assert!(!expired(created, None, datetime!(2036-05-02 00:00 UTC)), "Never");
    }
}
