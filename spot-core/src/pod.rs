//! The scheduling view of a pod: what the provisioner's scheduling simulation needs to know
//! about a pending or bound pod, independent of any Kubernetes client.
//!
//! `spot-k8s` converts `k8s-openapi` pods into [`PodSpec`]s; tests and benchmarks build them
//! directly. The semantics follow Kubernetes (tolerations, label selectors, host ports) and
//! Karpenter (eviction cost).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::node::{Taint, TaintEffect};
use crate::requirements::Requirements;
use crate::resources::Resources;

/// The owner kind of DaemonSet pods.
pub const DAEMONSET_KIND: &str = "DaemonSet";

/// A pod as the scheduling simulation sees it.
///
/// [`Default`] gives an empty pod (no requests, no constraints) to build on in tests.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PodSpec {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The pod's UID (ordering ties, de-duplication).
    pub uid: String,
    /// The pod's labels (matched by selectors of topology spread and pod affinity).
    pub labels: BTreeMap<String, String>,
    /// Effective requests: max(init containers incl. restartable sidecars rules, sum of
    /// containers) + pod overhead, with `pods: 1`. Computed by the converter.
    pub requests: Resources,
    /// nodeSelector AND required node affinity; the terms are ORed. Empty vec = no
    /// constraint.
    pub node_requirements: Vec<Requirements>,
    /// Preferred node affinity terms, (weight, requirements).
    pub preferred_node_affinity: Vec<(i32, Requirements)>,
    /// Tolerations.
    pub tolerations: Vec<Toleration>,
    /// Topology spread constraints.
    pub topology_spread: Vec<TopologySpread>,
    /// Required pod affinity terms (all must hold).
    pub pod_affinity: Vec<PodAffinityTerm>,
    /// Required pod anti-affinity terms (all must hold).
    pub pod_anti_affinity: Vec<PodAffinityTerm>,
    /// Preferred pod affinity terms, (weight, term).
    pub preferred_pod_affinity: Vec<(i32, PodAffinityTerm)>,
    /// Preferred pod anti-affinity terms, (weight, term).
    pub preferred_pod_anti_affinity: Vec<(i32, PodAffinityTerm)>,
    /// Host ports the pod's containers bind.
    pub host_ports: Vec<HostPort>,
    /// Scheduling priority.
    pub priority: i32,
    /// `controller.kubernetes.io/pod-deletion-cost`.
    pub deletion_cost: i32,
    /// The controlling owner's kind: `ReplicaSet`, `DaemonSet`, `Node`, `Job`, ...
    pub owner_kind: Option<String>,
    /// The `karpenter.sh/do-not-disrupt` annotation value.
    pub do_not_disrupt: Option<String>,
    /// `terminationGracePeriodSeconds`.
    pub termination_grace_seconds: Option<i64>,
    /// Creation time in Unix milliseconds (ordering ties).
    pub created_unix_ms: i64,
    /// The node the pod is bound to, if any.
    pub node_name: Option<String>,
}

impl PodSpec {
    /// An empty pod named `namespace/name` with these requests (`pods: 1` is added when the
    /// requests do not count pods), its UID set to `namespace/name`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>, requests: Resources) -> PodSpec {
        let (namespace, name) = (namespace.into(), name.into());
        let requests = if requests.pods == 0 {
            requests.with_pods(1)
        } else {
            requests
        };
        PodSpec {
            uid: format!("{namespace}/{name}"),
            namespace,
            name,
            requests,
            ..PodSpec::default()
        }
    }

    /// Whether a DaemonSet owns the pod.
    pub fn is_daemonset(&self) -> bool {
        self.owner_kind.as_deref() == Some(DAEMONSET_KIND)
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Karpenter's `EvictionCost`: `1 + deletion_cost / 2^27 + priority / 2^25`, clamped to
    /// `[-10, 10]`.
    pub fn eviction_cost(&self) -> f64 {
        let cost = 1.0
            + f64::from(self.deletion_cost) / f64::from(1u32 << 27)
            + f64::from(self.priority) / f64::from(1u32 << 25);
        cost.clamp(-10.0, 10.0)
    }

    /// Whether the pod has no constraint but node requirements and tolerations (no topology
    /// spread, pod affinity or anti-affinity, required or preferred, and no host ports):
    /// such pods can be packed freely.
    pub fn is_free(&self) -> bool {
        self.topology_spread.is_empty()
            && self.pod_affinity.is_empty()
            && self.pod_anti_affinity.is_empty()
            && self.preferred_pod_affinity.is_empty()
            && self.preferred_pod_anti_affinity.is_empty()
            && self.host_ports.is_empty()
    }
}

/// The operator of a [`Toleration`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TolerationOperator {
    /// The taint's value must equal the toleration's (the Kubernetes default).
    #[default]
    Equal,
    /// Any value; with no key, any taint.
    Exists,
}

/// A pod toleration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Toleration {
    /// The taint key; `None` (or empty) with `Exists` tolerates every key.
    pub key: Option<String>,
    /// `Equal` or `Exists`.
    pub operator: TolerationOperator,
    /// The value `Equal` compares with (`None` is the empty value).
    pub value: Option<String>,
    /// The effect tolerated; `None` tolerates every effect.
    pub effect: Option<TaintEffect>,
}

impl Toleration {
    /// `key=value:effect` with `Equal`.
    pub fn equal(
        key: impl Into<String>,
        value: impl Into<String>,
        effect: Option<TaintEffect>,
    ) -> Toleration {
        Toleration {
            key: Some(key.into()),
            operator: TolerationOperator::Equal,
            value: Some(value.into()),
            effect,
        }
    }

    /// `key` with `Exists` (`None`: every key).
    pub fn exists(key: Option<&str>, effect: Option<TaintEffect>) -> Toleration {
        Toleration {
            key: key.map(str::to_owned),
            operator: TolerationOperator::Exists,
            value: None,
            effect,
        }
    }

    /// Whether this toleration tolerates the taint, as Kubernetes' `ToleratesTaint`: the
    /// effect must match (or be unset), the key must match (or be empty with `Exists`), and
    /// with `Equal` the values must be equal.
    pub fn tolerates(&self, taint: &Taint) -> bool {
        if self.effect.is_some_and(|e| e != taint.effect) {
            return false;
        }
        let key = self.key.as_deref().unwrap_or("");
        if key.is_empty() {
            return self.operator == TolerationOperator::Exists;
        }
        if key != taint.key {
            return false;
        }
        match self.operator {
            TolerationOperator::Exists => true,
            TolerationOperator::Equal => {
                self.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
            }
        }
    }
}

/// `key=value:Effect`, as `kubectl` writes taints.
pub fn taint_to_string(taint: &Taint) -> String {
    match taint.value.as_deref() {
        Some(value) if !value.is_empty() => format!("{}={}:{}", taint.key, value, taint.effect),
        _ => format!("{}:{}", taint.key, taint.effect),
    }
}

/// Checks that every taint (of any effect, as Karpenter does) is tolerated by one of the
/// tolerations; the error names the first taint that is not (`taint dedicated=gpu:NoSchedule
/// not tolerated`).
pub fn tolerates_all(tolerations: &[Toleration], taints: &[Taint]) -> Result<(), String> {
    match taints
        .iter()
        .find(|taint| !tolerations.iter().any(|t| t.tolerates(taint)))
    {
        Some(taint) => Err(format!("taint {} not tolerated", taint_to_string(taint))),
        None => Ok(()),
    }
}

/// The operator of a [`LabelSelectorRequirement`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LabelSelectorOperator {
    /// The label's value is one of the values.
    In,
    /// The label is missing or its value is none of the values.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is missing.
    DoesNotExist,
}

/// One expression of a [`LabelSelector`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LabelSelectorRequirement {
    /// The label key.
    pub key: String,
    /// The operator.
    pub operator: LabelSelectorOperator,
    /// The values (`In`, `NotIn`).
    pub values: Vec<String>,
}

impl LabelSelectorRequirement {
    /// Whether a pod with these labels satisfies the expression.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            LabelSelectorOperator::In => value.is_some_and(|v| self.values.contains(v)),
            LabelSelectorOperator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            LabelSelectorOperator::Exists => value.is_some(),
            LabelSelectorOperator::DoesNotExist => value.is_none(),
        }
    }
}

/// A Kubernetes label selector over pod labels. The empty selector matches every pod; use
/// [`LabelSelector::nothing`] for the "nil selector" that matches none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LabelSelector {
    /// Labels that must be present with these values.
    pub match_labels: BTreeMap<String, String>,
    /// Expressions that must all hold.
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

impl LabelSelector {
    /// A selector on `key=value` pairs.
    pub fn labels<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> LabelSelector {
        LabelSelector {
            match_labels: pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
            match_expressions: Vec::new(),
        }
    }

    /// A selector that matches no pod (what Kubernetes does with a nil selector).
    pub fn nothing() -> LabelSelector {
        LabelSelector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![LabelSelectorRequirement {
                key: String::new(),
                operator: LabelSelectorOperator::In,
                values: Vec::new(),
            }],
        }
    }

    /// Whether a pod with these labels is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k).is_some_and(|l| l == v))
            && self.match_expressions.iter().all(|e| e.matches(labels))
    }
}

/// What to do when a topology spread constraint cannot be met.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WhenUnsatisfiable {
    /// A hard constraint.
    #[default]
    DoNotSchedule,
    /// A preference, relaxed when it cannot be met.
    ScheduleAnyway,
}

/// A topology spread constraint.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TopologySpread {
    /// The node label whose values are the domains (`topology.kubernetes.io/zone`,
    /// `kubernetes.io/hostname`, ...).
    pub topology_key: String,
    /// The largest allowed difference between the most and least loaded domains.
    pub max_skew: i32,
    /// With fewer eligible domains than this, the global minimum is taken as zero.
    pub min_domains: Option<i32>,
    /// Hard or soft.
    pub when_unsatisfiable: WhenUnsatisfiable,
    /// The pods counted.
    pub selector: LabelSelector,
}

/// A pod affinity or anti-affinity term.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PodAffinityTerm {
    /// The node label whose values are the domains.
    pub topology_key: String,
    /// The pods the term is about.
    pub selector: LabelSelector,
    /// The namespaces of those pods; empty means the namespace of the pod with the term.
    pub namespaces: Vec<String>,
}

impl PodAffinityTerm {
    /// Whether `other` is one of the pods this term (on a pod in `own_namespace`) selects.
    pub fn selects(&self, own_namespace: &str, other: &PodSpec) -> bool {
        let in_namespace = if self.namespaces.is_empty() {
            other.namespace == own_namespace
        } else {
            self.namespaces.contains(&other.namespace)
        };
        in_namespace && self.selector.matches(&other.labels)
    }
}

/// A host port bound by a container.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HostPort {
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// The host IP; empty or `0.0.0.0` means every address.
    pub host_ip: String,
    /// The port.
    pub port: u16,
}

impl HostPort {
    /// A TCP port on every address.
    pub fn tcp(port: u16) -> HostPort {
        HostPort {
            protocol: "TCP".to_owned(),
            host_ip: String::new(),
            port,
        }
    }

    /// Whether two bindings cannot coexist on a node: same protocol and port, and the same
    /// address or one of them binds every address.
    pub fn conflicts(&self, other: &HostPort) -> bool {
        let wildcard = |ip: &str| ip.is_empty() || ip == "0.0.0.0";
        self.port == other.port
            && self.protocol == other.protocol
            && (self.host_ip == other.host_ip || wildcard(&self.host_ip) || wildcard(&other.host_ip))
    }
}

impl fmt::Display for HostPort {
    /// `TCP/0.0.0.0:80`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ip = if self.host_ip.is_empty() {
            "0.0.0.0"
        } else {
            &self.host_ip
        };
        write!(f, "{}/{}:{}", self.protocol, ip, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn tolerations_follow_kubernetes() {
        let gpu = Taint::new("dedicated", "gpu", TaintEffect::NoSchedule);
        assert!(Toleration::equal("dedicated", "gpu", Some(TaintEffect::NoSchedule)).tolerates(&gpu));
        assert!(Toleration::equal("dedicated", "gpu", None).tolerates(&gpu));
        assert!(!Toleration::equal("dedicated", "cpu", None).tolerates(&gpu));
        assert!(!Toleration::equal("dedicated", "gpu", Some(TaintEffect::NoExecute)).tolerates(&gpu));
        assert!(Toleration::exists(Some("dedicated"), None).tolerates(&gpu));
        assert!(!Toleration::exists(Some("other"), None).tolerates(&gpu));
        assert!(
            Toleration::exists(None, None).tolerates(&gpu),
            "tolerate everything"
        );
        assert!(!Toleration::exists(None, Some(TaintEffect::NoExecute)).tolerates(&gpu));
        let empty_key_equal = Toleration {
            operator: TolerationOperator::Equal,
            ..Toleration::default()
        };
        assert!(!empty_key_equal.tolerates(&gpu), "an empty key needs Exists");
        let no_value = Taint {
            key: "k".into(),
            value: None,
            effect: TaintEffect::NoSchedule,
        };
        assert!(Toleration::equal("k", "", None).tolerates(&no_value));
        assert!(
            Toleration {
                key: Some("k".into()),
                ..Toleration::default()
            }
            .tolerates(&no_value)
        );
    }

    #[test]
    fn tolerates_all_names_the_taint() {
        let taints = [
            Taint::new("a", "1", TaintEffect::NoSchedule),
            Taint::new("dedicated", "gpu", TaintEffect::NoSchedule),
        ];
        let tolerations = [Toleration::exists(Some("a"), None)];
        assert_eq!(
            tolerates_all(&tolerations, &taints),
            Err("taint dedicated=gpu:NoSchedule not tolerated".to_owned())
        );
        assert_eq!(tolerates_all(&tolerations, &taints[..1]), Ok(()));
        assert_eq!(tolerates_all(&[], &[]), Ok(()));
        let prefer = Taint {
            key: "soft".into(),
            value: None,
            effect: TaintEffect::PreferNoSchedule,
        };
        assert_eq!(
            tolerates_all(&[], &[prefer]),
            Err("taint soft:PreferNoSchedule not tolerated".to_owned()),
            "Karpenter checks every effect"
        );
    }

    #[test]
    fn label_selectors() {
        let pod = labels(&[("app", "web"), ("tier", "front")]);
        assert!(LabelSelector::default().matches(&pod));
        assert!(LabelSelector::default().matches(&BTreeMap::new()));
        assert!(!LabelSelector::nothing().matches(&pod));
        assert!(!LabelSelector::nothing().matches(&BTreeMap::new()));
        assert!(LabelSelector::labels([("app", "web")]).matches(&pod));
        assert!(!LabelSelector::labels([("app", "db")]).matches(&pod));
        let expr = |key: &str, operator, values: &[&str]| LabelSelector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![LabelSelectorRequirement {
                key: key.into(),
                operator,
                values: values.iter().map(|v| (*v).to_owned()).collect(),
            }],
        };
        use LabelSelectorOperator::*;
        assert!(expr("app", In, &["web", "db"]).matches(&pod));
        assert!(!expr("app", NotIn, &["web"]).matches(&pod));
        assert!(expr("missing", NotIn, &["web"]).matches(&pod));
        assert!(expr("tier", Exists, &[]).matches(&pod));
        assert!(!expr("tier", DoesNotExist, &[]).matches(&pod));
        assert!(expr("missing", DoesNotExist, &[]).matches(&pod));
        assert!(!expr("missing", In, &["x"]).matches(&pod));
    }

    #[test]
    fn affinity_terms_select_by_namespace() {
        let mut other = PodSpec::new("prod", "db-0", Resources::default());
        other.labels = labels(&[("app", "db")]);
        let term = PodAffinityTerm {
            topology_key: crate::labels::ZONE.into(),
            selector: LabelSelector::labels([("app", "db")]),
            namespaces: Vec::new(),
        };
        assert!(term.selects("prod", &other));
        assert!(!term.selects("dev", &other), "own namespace only by default");
        let across = PodAffinityTerm {
            namespaces: vec!["prod".into()],
            ..term
        };
        assert!(across.selects("dev", &other));
    }

    #[test]
    fn eviction_cost_is_karpenters() {
        let mut pod = PodSpec::new("ns", "p", Resources::new(100, 0));
        assert_eq!(pod.eviction_cost(), 1.0);
        pod.deletion_cost = 1 << 27;
        assert_eq!(pod.eviction_cost(), 2.0);
        pod.deletion_cost = 0;
        pod.priority = 1 << 25;
        assert_eq!(pod.eviction_cost(), 2.0);
        pod.priority = i32::MAX;
        assert_eq!(pod.eviction_cost(), 10.0, "clamped");
        pod.priority = i32::MIN;
        assert_eq!(pod.eviction_cost(), -10.0, "clamped");
    }

    #[test]
    fn keys_daemonsets_and_free_pods() {
        let mut pod = PodSpec::new("kube-system", "ds-1", Resources::new(100, 0));
        assert_eq!(pod.key(), "kube-system/ds-1");
        assert_eq!(pod.requests.pods, 1, "pods: 1 is added");
        assert!(!pod.is_daemonset());
        pod.owner_kind = Some(DAEMONSET_KIND.into());
        assert!(pod.is_daemonset());
        assert!(pod.is_free());
        pod.host_ports.push(HostPort::tcp(80));
        assert!(!pod.is_free());
    }

    #[test]
    fn host_port_conflicts() {
        let any80 = HostPort::tcp(80);
        let local80 = HostPort {
            host_ip: "10.0.0.1".into(),
            ..HostPort::tcp(80)
        };
        let other80 = HostPort {
            host_ip: "10.0.0.2".into(),
            ..HostPort::tcp(80)
        };
        let udp80 = HostPort {
            protocol: "UDP".into(),
            ..HostPort::tcp(80)
        };
        assert!(any80.conflicts(&local80));
        assert!(local80.conflicts(&any80));
        assert!(!local80.conflicts(&other80));
        assert!(!any80.conflicts(&udp80));
        assert!(!any80.conflicts(&HostPort::tcp(81)));
        assert_eq!(local80.to_string(), "TCP/10.0.0.1:80");
        assert_eq!(any80.to_string(), "TCP/0.0.0.0:80");
    }

    #[test]
    fn serde_round_trip() {
        let mut pod = PodSpec::new("ns", "p", Resources::new(500, 1 << 30));
        pod.tolerations
            .push(Toleration::exists(Some("k"), Some(TaintEffect::NoSchedule)));
        pod.topology_spread.push(TopologySpread {
            topology_key: crate::labels::ZONE.into(),
            max_skew: 1,
            min_domains: Some(3),
            when_unsatisfiable: WhenUnsatisfiable::ScheduleAnyway,
            selector: LabelSelector::labels([("app", "web")]),
        });
        let text = serde_json::to_string(&pod).unwrap();
        let back: PodSpec = serde_json::from_str(&text).unwrap();
        assert_eq!(back, pod);
    }
}
