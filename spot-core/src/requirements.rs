//! Node-selector requirement algebra, after Karpenter's `scheduling.Requirement`.
//!
//! A [`Requirement`] is the set of label values a key may take, kept in a normal form:
//!
//! - a finite set (`In`), or the complement of a finite set (`NotIn`, `Exists`);
//! - optional integer bounds (`Gt`, `Lt`; exclusive), only on complement sets;
//! - whether a node *without* the label satisfies it (true for `NotIn` and `DoesNotExist`).
//!
//! `DoesNotExist` is the empty finite set that accepts a missing label. Intersections are
//! exact, so compatibility is simply "the intersection accepts some value, or accepts a
//! missing label", which gives Karpenter's `DoesNotExist` semantics: `DoesNotExist` is
//! compatible with `NotIn` and `DoesNotExist`, and with nothing else.
//!
//! Values under bounds must parse as integers (`i64`, leading `+` and zeros allowed, as Go's
//! `strconv.Atoi`): `Gt 5` accepts `6`, `06` and `+6`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::labels;

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// An operator other than the six Kubernetes knows.
    #[error("unknown operator {0:?}: expected In, NotIn, Exists, DoesNotExist, Gt or Lt")]
    Operator(String),
    /// A requirement whose operator is unknown.
    #[error(
        "requirement on {key:?}: unknown operator {operator:?}: \
         expected In, NotIn, Exists, DoesNotExist, Gt or Lt"
    )]
    UnknownOperator {
        /// The label key.
        key: String,
        /// The operator as given.
        operator: String,
    },
    /// A requirement with an empty key.
    #[error("requirement with operator {operator} has an empty key")]
    EmptyKey {
        /// The operator.
        operator: Operator,
    },
    /// `In` or `NotIn` without values.
    #[error("requirement on {key:?}: operator {operator} needs at least one value")]
    MissingValues {
        /// The label key.
        key: String,
        /// The operator.
        operator: Operator,
    },
    /// `Exists` or `DoesNotExist` with values.
    #[error("requirement on {key:?}: operator {operator} takes no values, got {values:?}")]
    UnexpectedValues {
        /// The label key.
        key: String,
        /// The operator.
        operator: Operator,
        /// The values given.
        values: Vec<String>,
    },
    /// `Gt` or `Lt` without exactly one integer value.
    #[error("requirement on {key:?}: operator {operator} needs exactly one integer value, got {values:?}")]
    Bound {
        /// The label key.
        key: String,
        /// The operator.
        operator: Operator,
        /// The values given.
        values: Vec<String>,
    },
    /// A `minValues` of zero, or larger than the number of `In` values.
    #[error(
        "requirement on {key:?}: minValues {min_values} must be at least 1 \
         and at most the number of values ({values})"
    )]
    MinValues {
        /// The label key.
        key: String,
        /// The minValues given.
        min_values: u32,
        /// How many values the requirement lists.
        values: usize,
    },
}

/// Why two sets of requirements cannot both hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IncompatibleError {
    /// Both sides constrain the key and no value (nor a missing label) satisfies both.
    #[error("incompatible requirements on {key:?}: {incoming} does not intersect {existing}")]
    Conflict {
        /// The label key.
        key: String,
        /// The requirement of `self`.
        existing: String,
        /// The requirement of the other side.
        incoming: String,
    },
    /// The other side needs a custom label that `self` does not define.
    #[error("incompatible requirements on {key:?}: {incoming} needs a label the other side does not define")]
    Undefined {
        /// The label key.
        key: String,
        /// The requirement of the other side.
        incoming: String,
    },
}

/// A node-selector operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Operator {
    /// The label value is one of the values.
    In,
    /// The label is missing or its value is none of the values.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is missing.
    DoesNotExist,
    /// The label value is an integer greater than the value.
    Gt,
    /// The label value is an integer less than the value.
    Lt,
}

impl Operator {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Operator::In => "In",
            Operator::NotIn => "NotIn",
            Operator::Exists => "Exists",
            Operator::DoesNotExist => "DoesNotExist",
            Operator::Gt => "Gt",
            Operator::Lt => "Lt",
        }
    }
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Operator {
    type Err = Error;
    fn from_str(s: &str) -> Result<Operator, Error> {
        match s {
            "In" => Ok(Operator::In),
            "NotIn" => Ok(Operator::NotIn),
            "Exists" => Ok(Operator::Exists),
            "DoesNotExist" => Ok(Operator::DoesNotExist),
            "Gt" => Ok(Operator::Gt),
            "Lt" => Ok(Operator::Lt),
            other => Err(Error::Operator(other.to_owned())),
        }
    }
}

/// A Kubernetes `NodeSelectorRequirement` (with Karpenter's `minValues`), as found in pod
/// affinities and node pools. The operator stays a string so that bad input can be reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSelectorRequirement {
    /// The label key.
    pub key: String,
    /// `In`, `NotIn`, `Exists`, `DoesNotExist`, `Gt` or `Lt`.
    pub operator: String,
    /// The values (one integer for `Gt` and `Lt`, none for `Exists` and `DoesNotExist`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// Karpenter's flexibility: at least this many distinct values must stay possible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_values: Option<u32>,
}

impl NodeSelectorRequirement {
    /// A requirement from its parts.
    pub fn new(key: impl Into<String>, operator: Operator, values: &[&str]) -> NodeSelectorRequirement {
        NodeSelectorRequirement {
            key: key.into(),
            operator: operator.as_str().to_owned(),
            values: values.iter().map(|v| (*v).to_owned()).collect(),
            min_values: None,
        }
    }
}

/// The set of values a label key may take (see the [module documentation](self)).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Requirement {
    /// The normalized label key.
    key: String,
    /// True when `values` lists excluded values rather than allowed ones.
    complement: bool,
    /// Allowed values, or excluded values when `complement`.
    values: BTreeSet<String>,
    /// Exclusive lower bound (only when `complement`).
    greater_than: Option<i64>,
    /// Exclusive upper bound (only when `complement`).
    less_than: Option<i64>,
    /// Whether a node without the label satisfies the requirement.
    allows_absent: bool,
    /// Karpenter's minValues.
    min_values: Option<u32>,
}

/// Whether the value satisfies the integer bounds (always, without bounds).
fn within(value: &str, greater_than: Option<i64>, less_than: Option<i64>) -> bool {
    if greater_than.is_none() && less_than.is_none() {
        return true;
    }
    let Ok(n) = value.parse::<i64>() else { return false };
    greater_than.is_none_or(|g| n > g) && less_than.is_none_or(|l| n < l)
}

/// The smallest and largest integer within the bounds, or `None` when there is none.
fn integer_range(greater_than: Option<i64>, less_than: Option<i64>) -> Option<(i64, i64)> {
    let low = match greater_than {
        Some(g) => g.checked_add(1)?,
        None => i64::MIN,
    };
    let high = match less_than {
        Some(l) => l.checked_sub(1)?,
        None => i64::MAX,
    };
    (low <= high).then_some((low, high))
}

impl Requirement {
    /// A requirement from an operator and its values, validated as Kubernetes does: `In` and
    /// `NotIn` need values, `Exists` and `DoesNotExist` take none, `Gt` and `Lt` take exactly
    /// one integer. The key is normalized with [`labels::normalize`].
    pub fn new<I>(key: &str, operator: Operator, values: I) -> Result<Requirement, Error>
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let values: Vec<String> = values.into_iter().map(Into::into).collect();
        if key.is_empty() {
            return Err(Error::EmptyKey { operator });
        }
        let key = labels::normalize(key).to_owned();
        let set = |values: Vec<String>| values.into_iter().collect::<BTreeSet<_>>();
        let (complement, allows_absent) = match operator {
            Operator::In => (false, false),
            Operator::NotIn | Operator::DoesNotExist => (operator == Operator::NotIn, true),
            Operator::Exists | Operator::Gt | Operator::Lt => (true, false),
        };
        let mut requirement = Requirement {
            key,
            complement,
            values: BTreeSet::new(),
            greater_than: None,
            less_than: None,
            allows_absent,
            min_values: None,
        };
        match operator {
            Operator::In | Operator::NotIn if values.is_empty() => {
                return Err(Error::MissingValues {
                    key: requirement.key,
                    operator,
                });
            }
            Operator::In | Operator::NotIn => requirement.values = set(values),
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                return Err(Error::UnexpectedValues {
                    key: requirement.key,
                    operator,
                    values,
                });
            }
            Operator::Exists | Operator::DoesNotExist => {}
            Operator::Gt | Operator::Lt => {
                let bound = match values.as_slice() {
                    [value] => value.parse::<i64>().ok(),
                    _ => None,
                };
                let Some(bound) = bound else {
                    return Err(Error::Bound {
                        key: requirement.key,
                        operator,
                        values,
                    });
                };
                if operator == Operator::Gt {
                    requirement.greater_than = Some(bound);
                } else {
                    requirement.less_than = Some(bound);
                }
            }
        }
        Ok(requirement.normalized())
    }

    /// Parses a requirement whose operator is a string (as in Kubernetes objects).
    pub fn parse<I>(key: &str, operator: &str, values: I) -> Result<Requirement, Error>
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let op = operator.parse::<Operator>().map_err(|_| Error::UnknownOperator {
            key: key.to_owned(),
            operator: operator.to_owned(),
        })?;
        Requirement::new(key, op, values)
    }

    /// Converts a [`NodeSelectorRequirement`], validating `minValues` too (at least 1, and at
    /// most the number of values for `In`).
    pub fn from_node_selector(requirement: &NodeSelectorRequirement) -> Result<Requirement, Error> {
        let parsed = Requirement::parse(
            &requirement.key,
            &requirement.operator,
            requirement.values.iter().cloned(),
        )?;
        match requirement.min_values {
            None => Ok(parsed),
            Some(min_values) => {
                let values = requirement.values.len();
                let too_many = parsed.operator() == Operator::In && min_values as usize > values;
                if min_values == 0 || too_many {
                    return Err(Error::MinValues {
                        key: parsed.key,
                        min_values,
                        values,
                    });
                }
                Ok(parsed.with_min_values(min_values))
            }
        }
    }

    /// `key Exists`.
    pub fn exists(key: &str) -> Requirement {
        Requirement::any_value(key, true, false)
    }

    /// `key DoesNotExist`.
    pub fn does_not_exist(key: &str) -> Requirement {
        Requirement::any_value(key, false, true)
    }

    /// A requirement without values or bounds.
    fn any_value(key: &str, complement: bool, allows_absent: bool) -> Requirement {
        Requirement {
            key: labels::normalize(key).to_owned(),
            complement,
            values: BTreeSet::new(),
            greater_than: None,
            less_than: None,
            allows_absent,
            min_values: None,
        }
    }

    /// The same requirement with Karpenter's `minValues`.
    #[must_use]
    pub fn with_min_values(mut self, min_values: u32) -> Requirement {
        self.min_values = Some(min_values);
        self
    }

    /// Restores the normal form: values outside the bounds are dropped, finite sets carry no
    /// bounds, and bounds that no integer satisfies make the set empty.
    fn normalized(mut self) -> Requirement {
        let (gt, lt) = (self.greater_than, self.less_than);
        self.values.retain(|v| within(v, gt, lt));
        if !self.complement || integer_range(gt, lt).is_none() {
            if self.complement {
                self.complement = false;
                self.values.clear();
            }
            self.greater_than = None;
            self.less_than = None;
        }
        self
    }

    /// The normalized label key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Karpenter's `minValues`, if any.
    pub fn min_values(&self) -> Option<u32> {
        self.min_values
    }

    /// The operator that describes the set, as Karpenter reports it: `In` for a non-empty
    /// finite set, `DoesNotExist` for an empty one, `NotIn` for a complement with excluded
    /// values, `Exists` for any other complement (bounds included). Use
    /// [`Requirement::to_node_selector`] for an exact rendering.
    pub fn operator(&self) -> Operator {
        match (self.complement, self.values.is_empty()) {
            (false, false) => Operator::In,
            (false, true) => Operator::DoesNotExist,
            (true, false) => Operator::NotIn,
            (true, true) => Operator::Exists,
        }
    }

    /// The allowed values (`In`) or the excluded ones (`NotIn`), sorted.
    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.values.iter().map(String::as_str)
    }

    /// The exclusive lower bound from `Gt`.
    pub fn greater_than(&self) -> Option<i64> {
        self.greater_than
    }

    /// The exclusive upper bound from `Lt`.
    pub fn less_than(&self) -> Option<i64> {
        self.less_than
    }

    /// Whether a node without the label satisfies the requirement (`NotIn`, `DoesNotExist`).
    pub fn allows_absent(&self) -> bool {
        self.allows_absent
    }

    /// Whether no label value satisfies the requirement (`DoesNotExist` included).
    pub fn is_empty(&self) -> bool {
        !self.complement && self.values.is_empty()
    }

    /// Whether a label with this value satisfies the requirement.
    pub fn has(&self, value: &str) -> bool {
        if self.complement {
            !self.values.contains(value) && within(value, self.greater_than, self.less_than)
        } else {
            self.values.contains(value)
        }
    }

    /// Whether a node whose label is `value` (`None`: no such label) satisfies the
    /// requirement.
    pub fn matches(&self, value: Option<&str>) -> bool {
        value.map_or(self.allows_absent, |v| self.has(v))
    }

    /// The values (or missing label) both requirements accept, with the larger `minValues`.
    /// The result keeps `self`'s key.
    #[must_use]
    pub fn intersect(&self, other: &Requirement) -> Requirement {
        let values = match (self.complement, other.complement) {
            (true, true) => self.values.union(&other.values).cloned().collect(),
            (true, false) => other.values.difference(&self.values).cloned().collect(),
            (false, true) => self.values.difference(&other.values).cloned().collect(),
            (false, false) => self.values.intersection(&other.values).cloned().collect(),
        };
        let max = |a: Option<i64>, b: Option<i64>| a.max(b);
        let min = |a: Option<i64>, b: Option<i64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            _ => a.or(b),
        };
        Requirement {
            key: self.key.clone(),
            complement: self.complement && other.complement,
            values,
            greater_than: max(self.greater_than, other.greater_than),
            less_than: min(self.less_than, other.less_than),
            allows_absent: self.allows_absent && other.allows_absent,
            min_values: self.min_values.max(other.min_values),
        }
        .normalized()
    }

    /// Whether some node can satisfy both: the intersection accepts a value or a missing
    /// label.
    pub fn is_compatible(&self, other: &Requirement) -> bool {
        let both = self.intersect(other);
        !both.is_empty() || both.allows_absent
    }

    /// A value that satisfies the requirement, or `None` when [`Requirement::is_empty`]. The
    /// smallest value of a finite set; for a complement, the integer closest to zero (within
    /// the bounds) that is not excluded, zero-padded if every candidate spelling is.
    pub fn any(&self) -> Option<String> {
        if !self.complement {
            return self.values.first().cloned();
        }
        let (low, high) = integer_range(self.greater_than, self.less_than)?;
        let start = 0i64.clamp(low, high);
        // Candidates alternate around `start` so both open ends are covered.
        let excluded = self.values.len();
        let mut candidates = Vec::with_capacity(2 * excluded + 2);
        for step in 0..=(excluded as i64) {
            for candidate in [start.checked_add(step), start.checked_sub(step)]
                .into_iter()
                .flatten()
            {
                if (low..=high).contains(&candidate) && !candidates.contains(&candidate) {
                    candidates.push(candidate);
                }
            }
        }
        if let Some(found) = candidates
            .iter()
            .map(i64::to_string)
            .find(|s| !self.values.contains(s))
        {
            return Some(found);
        }
        // Every canonical spelling is excluded: another spelling of the same integer is not.
        let sign = if start < 0 { "-" } else { "" };
        (1..=excluded + 1)
            .map(|zeros| format!("{sign}{}{}", "0".repeat(zeros), start.unsigned_abs()))
            .find(|s| !self.values.contains(s))
    }

    /// The Kubernetes expressions whose conjunction is exactly this requirement (usually
    /// one; `Exists` plus `NotIn` when a complement rejects a missing label, one per bound,
    /// `Exists` plus `DoesNotExist` for an unsatisfiable requirement, none when anything is
    /// accepted). `minValues` goes on the first expression.
    pub fn to_node_selector(&self) -> Vec<NodeSelectorRequirement> {
        let key = self.key.as_str();
        let values: Vec<&str> = self.values().collect();
        let mut out = Vec::new();
        if !self.complement {
            if !values.is_empty() {
                out.push(NodeSelectorRequirement::new(key, Operator::In, &values));
            } else if self.allows_absent {
                out.push(NodeSelectorRequirement::new(key, Operator::DoesNotExist, &[]));
            } else {
                out.push(NodeSelectorRequirement::new(key, Operator::Exists, &[]));
                out.push(NodeSelectorRequirement::new(key, Operator::DoesNotExist, &[]));
            }
        } else {
            let bounded = self.greater_than.is_some() || self.less_than.is_some();
            if !self.allows_absent && !bounded {
                out.push(NodeSelectorRequirement::new(key, Operator::Exists, &[]));
            }
            if let Some(g) = self.greater_than {
                out.push(NodeSelectorRequirement::new(key, Operator::Gt, &[&g.to_string()]));
            }
            if let Some(l) = self.less_than {
                out.push(NodeSelectorRequirement::new(key, Operator::Lt, &[&l.to_string()]));
            }
            if !values.is_empty() {
                out.push(NodeSelectorRequirement::new(key, Operator::NotIn, &values));
            }
        }
        if let Some(first) = out.first_mut() {
            first.min_values = self.min_values;
        }
        out
    }
}

impl fmt::Display for Requirement {
    /// `key In [a, b]`; several expressions are joined with ` and `; an unconstrained
    /// requirement is `key (any)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let expressions = self.to_node_selector();
        if expressions.is_empty() {
            return write!(f, "{} (any)", self.key);
        }
        for (index, e) in expressions.iter().enumerate() {
            if index > 0 {
                f.write_str(" and ")?;
            }
            write!(f, "{} {}", e.key, e.operator)?;
            if !e.values.is_empty() {
                write!(f, " [{}]", e.values.join(", "))?;
            }
        }
        if let Some(n) = self.min_values {
            write!(f, " (minValues {n})")?;
        }
        Ok(())
    }
}

/// Requirements on several keys, all of which must hold. Keys are normalized with
/// [`labels::normalize`]; adding a second requirement on a key intersects the two.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requirements {
    /// Requirement by normalized key.
    by_key: BTreeMap<String, Requirement>,
}

impl Requirements {
    /// No requirement.
    pub fn new() -> Requirements {
        Requirements::default()
    }

    /// Adds a requirement, intersecting it with any existing one on the same key.
    pub fn add(&mut self, requirement: Requirement) {
        match self.by_key.get_mut(&requirement.key) {
            Some(existing) => *existing = existing.intersect(&requirement),
            None => {
                self.by_key.insert(requirement.key.clone(), requirement);
            }
        }
    }

    /// The same requirements with one more.
    #[must_use]
    pub fn with(mut self, requirement: Requirement) -> Requirements {
        self.add(requirement);
        self
    }

    /// One `In [value]` requirement per label: what a node with these labels offers.
    pub fn from_labels(labels: &BTreeMap<String, String>) -> Requirements {
        normalized_labels(labels)
            .into_iter()
            .filter_map(|(key, value)| Requirement::new(key, Operator::In, [value]).ok())
            .collect()
    }

    /// Converts Kubernetes expressions, intersecting those on the same key.
    pub fn from_node_selector<'a, I>(expressions: I) -> Result<Requirements, Error>
    where
        I: IntoIterator<Item = &'a NodeSelectorRequirement>,
    {
        let mut requirements = Requirements::new();
        for expression in expressions {
            requirements.add(Requirement::from_node_selector(expression)?);
        }
        Ok(requirements)
    }

    /// The Kubernetes expressions whose conjunction is exactly these requirements.
    pub fn to_node_selector(&self) -> Vec<NodeSelectorRequirement> {
        self.by_key
            .values()
            .flat_map(Requirement::to_node_selector)
            .collect()
    }

    /// The requirement on a key (normalized first).
    pub fn get(&self, key: &str) -> Option<&Requirement> {
        self.by_key.get(labels::normalize(key))
    }

    /// The requirements, by key order.
    pub fn iter(&self) -> impl Iterator<Item = &Requirement> {
        self.by_key.values()
    }

    /// The constrained keys, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.by_key.keys().map(String::as_str)
    }

    /// The number of constrained keys.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether no key is constrained.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Both sets of requirements at once.
    #[must_use]
    pub fn intersect(&self, other: &Requirements) -> Requirements {
        let mut out = self.clone();
        for requirement in other.iter() {
            out.add(requirement.clone());
        }
        out
    }

    /// Checks that every key both sides constrain has a value (or a missing label) that
    /// satisfies both. Keys only one side constrains are fine. Reports the first conflicting
    /// key in key order.
    pub fn intersects(&self, other: &Requirements) -> Result<(), IncompatibleError> {
        for incoming in other.iter() {
            if let Some(existing) = self.by_key.get(&incoming.key)
                && !existing.is_compatible(incoming)
            {
                return Err(IncompatibleError::Conflict {
                    key: incoming.key.clone(),
                    existing: existing.to_string(),
                    incoming: incoming.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Karpenter's compatibility check, `self` being what a node pool or instance type
    /// offers and `other` what a pod asks: [`Requirements::intersects`], and every custom
    /// (not [well-known](labels::WELL_KNOWN)) key that `other` needs present (anything but
    /// `NotIn` and `DoesNotExist`) must be constrained by `self` too, since a node only gets
    /// the custom labels its node pool defines.
    pub fn compatible(&self, other: &Requirements) -> Result<(), IncompatibleError> {
        for incoming in other.iter() {
            let key = incoming.key.as_str();
            if !self.by_key.contains_key(key) && !incoming.allows_absent && !labels::is_well_known(key) {
                return Err(IncompatibleError::Undefined {
                    key: key.to_owned(),
                    incoming: incoming.to_string(),
                });
            }
        }
        self.intersects(other)
    }

    /// Whether a node with these labels satisfies every requirement. Label keys are
    /// normalized (a stable key wins over its legacy alias); a missing label satisfies only
    /// requirements that accept absence (`NotIn`, `DoesNotExist`).
    pub fn matches_labels(&self, labels: &BTreeMap<String, String>) -> bool {
        let labels = normalized_labels(labels);
        self.by_key
            .iter()
            .all(|(key, r)| r.matches(labels.get(key.as_str()).copied()))
    }
}

/// The labels under normalized keys; a stable key wins over its aliases.
fn normalized_labels(labels: &BTreeMap<String, String>) -> BTreeMap<&str, &str> {
    let mut out = BTreeMap::new();
    for (key, value) in labels {
        let stable = labels::normalize(key);
        if stable == key.as_str() {
            out.insert(stable, value.as_str());
        } else {
            out.entry(stable).or_insert(value.as_str());
        }
    }
    out
}

impl FromIterator<Requirement> for Requirements {
    fn from_iter<I: IntoIterator<Item = Requirement>>(iter: I) -> Requirements {
        let mut requirements = Requirements::new();
        for requirement in iter {
            requirements.add(requirement);
        }
        requirements
    }
}

impl fmt::Display for Requirements {
    /// The requirements joined with `, `, or `(none)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("(none)");
        }
        for (index, requirement) in self.iter().enumerate() {
            if index > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{requirement}")?;
        }
        Ok(())
    }
}

impl Serialize for Requirements {
    /// Serializes as a list of Kubernetes `NodeSelectorRequirement`s.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_node_selector().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Requirements {
    /// Deserializes from a list of Kubernetes `NodeSelectorRequirement`s.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Requirements, D::Error> {
        let expressions = Vec::<NodeSelectorRequirement>::deserialize(deserializer)?;
        Requirements::from_node_selector(&expressions).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const K: &str = "example.com/key";

    fn req(operator: Operator, values: &[&str]) -> Requirement {
        Requirement::new(K, operator, values.iter().copied()).unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn operator_parse_and_errors() {
        for op in [
            Operator::In,
            Operator::NotIn,
            Operator::Exists,
            Operator::DoesNotExist,
            Operator::Gt,
            Operator::Lt,
        ] {
            assert_eq!(op.as_str().parse::<Operator>(), Ok(op));
        }
        let err = Requirement::parse(K, "Inn", ["a"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "requirement on \"example.com/key\": unknown operator \"Inn\": expected In, NotIn, Exists, \
             DoesNotExist, Gt or Lt"
        );
        let err = Requirement::new(K, Operator::Gt, ["a"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "requirement on \"example.com/key\": operator Gt needs exactly one integer value, got [\"a\"]"
        );
        assert!(matches!(
            Requirement::new(K, Operator::Lt, ["1", "2"]),
            Err(Error::Bound { .. })
        ));
        assert!(matches!(
            Requirement::new(K, Operator::Lt, Vec::<String>::new()),
            Err(Error::Bound { .. })
        ));
        assert_eq!(
            Requirement::new(K, Operator::In, Vec::<String>::new()),
            Err(Error::MissingValues {
                key: K.into(),
                operator: Operator::In
            })
        );
        assert_eq!(
            Requirement::new(K, Operator::Exists, ["x"])
                .unwrap_err()
                .to_string(),
            "requirement on \"example.com/key\": operator Exists takes no values, got [\"x\"]"
        );
        assert_eq!(
            Requirement::new("", Operator::Exists, ["x"; 0]),
            Err(Error::EmptyKey {
                operator: Operator::Exists
            })
        );
        let mut expression = NodeSelectorRequirement::new(K, Operator::In, &["a", "b"]);
        expression.min_values = Some(3);
        assert_eq!(
            Requirement::from_node_selector(&expression)
                .unwrap_err()
                .to_string(),
            "requirement on \"example.com/key\": minValues 3 must be at least 1 \
             and at most the number of values (2)"
        );
        expression.min_values = Some(2);
        assert_eq!(
            Requirement::from_node_selector(&expression).unwrap().min_values(),
            Some(2)
        );
    }

    #[test]
    fn keys_are_normalized() {
        let r = Requirement::new(labels::BETA_ARCH, Operator::In, ["amd64"]).unwrap();
        assert_eq!(r.key(), labels::ARCH);
        let rs = Requirements::new()
            .with(
                Requirement::new(
                    labels::FAILURE_DOMAIN_ZONE,
                    Operator::In,
                    ["us-east-1a", "us-east-1b"],
                )
                .unwrap(),
            )
            .with(Requirement::new(labels::ZONE, Operator::In, ["us-east-1b", "us-east-1c"]).unwrap());
        assert_eq!(rs.len(), 1);
        assert_eq!(
            rs.get(labels::EBS_CSI_ZONE)
                .map(|r| r.values().collect::<Vec<_>>()),
            Some(vec!["us-east-1b"])
        );
        assert!(rs.matches_labels(&labels(&[(labels::FAILURE_DOMAIN_ZONE, "us-east-1b")])));
        assert!(
            rs.matches_labels(&labels(&[
                (labels::FAILURE_DOMAIN_ZONE, "us-east-1a"),
                (labels::ZONE, "us-east-1b")
            ])),
            "the stable key wins"
        );
    }

    #[test]
    fn operator_pairs() {
        use Operator::*;
        let in_ab = req(In, &["a", "b"]);
        let in_bc = req(In, &["b", "c"]);
        let in_c = req(In, &["c"]);
        let not_in_a = req(NotIn, &["a"]);
        let not_in_ab = req(NotIn, &["a", "b"]);
        let exists = Requirement::exists(K);
        let dne = Requirement::does_not_exist(K);
        let gt1 = req(Gt, &["1"]);
        let lt3 = req(Lt, &["3"]);
        let in_nums = req(In, &["1", "2", "3", "x"]);

        // In x In.
        assert_eq!(in_ab.intersect(&in_bc), req(In, &["b"]));
        assert!(!in_ab.intersect(&in_c).is_compatible(&in_ab));
        assert!(!in_ab.is_compatible(&in_c));
        // In x NotIn.
        assert_eq!(in_ab.intersect(&not_in_a), req(In, &["b"]));
        assert!(!in_ab.is_compatible(&not_in_ab));
        // In x Exists, In x DoesNotExist.
        assert_eq!(in_ab.intersect(&exists), in_ab);
        assert!(!in_ab.is_compatible(&dne));
        // In x Gt / Lt: the finite set is filtered and loses the bounds.
        assert_eq!(in_nums.intersect(&gt1), req(In, &["2", "3"]));
        assert_eq!(in_nums.intersect(&lt3), req(In, &["1", "2"]));
        assert!(!in_ab.is_compatible(&gt1), "non-integers never satisfy bounds");
        // NotIn x NotIn, NotIn x Exists.
        assert_eq!(not_in_a.intersect(&req(NotIn, &["b"])), not_in_ab);
        let exists_not_a = not_in_a.intersect(&exists);
        assert_eq!(exists_not_a.operator(), NotIn);
        assert!(!exists_not_a.allows_absent(), "Exists still requires the label");
        assert!(exists_not_a.has("b") && !exists_not_a.has("a"));
        // NotIn x DoesNotExist: only the missing label.
        let absent = not_in_a.intersect(&dne);
        assert_eq!(absent, dne);
        assert!(not_in_a.is_compatible(&dne));
        // Exists x DoesNotExist: nothing at all.
        let nothing = exists.intersect(&dne);
        assert!(nothing.is_empty() && !nothing.allows_absent());
        assert!(!exists.is_compatible(&dne));
        assert!(dne.is_compatible(&dne));
        assert!(exists.is_compatible(&exists));
        // Gt x Lt.
        let between = gt1.intersect(&lt3);
        assert!(between.has("2") && between.has("02") && !between.has("1") && !between.has("3"));
        assert_eq!(between.any().as_deref(), Some("2"));
        assert!(!req(Gt, &["2"]).is_compatible(&lt3), "no integer in (2, 3)");
        assert!(req(Gt, &["2"]).intersect(&lt3).is_empty());
        assert!(!gt1.is_compatible(&dne));
        // Gt x NotIn: excluded integers, and a padded spelling when every canonical one is.
        let only_two = between.intersect(&req(NotIn, &["2"]));
        assert_eq!(only_two.any().as_deref(), Some("02"));
        assert!(!only_two.allows_absent());
        assert_eq!(
            gt1.intersect(&req(NotIn, &["0", "abc"])),
            gt1,
            "out-of-bound exclusions are dropped"
        );
        // Gt x Gt keeps the larger bound, Lt x Lt the smaller.
        assert_eq!(gt1.intersect(&req(Gt, &["5"])).greater_than(), Some(5));
        assert_eq!(lt3.intersect(&req(Lt, &["-5"])).less_than(), Some(-5));
        assert!(req(Gt, &[&i64::MAX.to_string()]).is_empty());
        assert!(req(Lt, &[&i64::MIN.to_string()]).is_empty());
    }

    #[test]
    fn any_picks_a_satisfying_value() {
        use Operator::*;
        assert_eq!(req(In, &["b", "a"]).any().as_deref(), Some("a"));
        assert_eq!(Requirement::exists(K).any().as_deref(), Some("0"));
        assert_eq!(req(NotIn, &["0", "1", "-1"]).any().as_deref(), Some("2"));
        assert_eq!(req(Lt, &["-10"]).any().as_deref(), Some("-11"));
        assert_eq!(req(Gt, &["10"]).any().as_deref(), Some("11"));
        let minus_eleven_only = req(Lt, &["-10"])
            .intersect(&req(Gt, &["-12"]))
            .intersect(&req(NotIn, &["-11"]));
        assert_eq!(minus_eleven_only.any().as_deref(), Some("-011"));
        assert_eq!(Requirement::does_not_exist(K).any(), None);
    }

    #[test]
    fn node_selector_round_trip_and_display() {
        use Operator::*;
        let cases = [
            (req(In, &["a", "b"]), "example.com/key In [a, b]"),
            (req(NotIn, &["a"]), "example.com/key NotIn [a]"),
            (Requirement::exists(K), "example.com/key Exists"),
            (Requirement::does_not_exist(K), "example.com/key DoesNotExist"),
            (
                req(Gt, &["1"]).intersect(&req(Lt, &["9"])),
                "example.com/key Gt [1] and example.com/key Lt [9]",
            ),
            (
                req(NotIn, &["a"]).intersect(&Requirement::exists(K)),
                "example.com/key Exists and example.com/key NotIn [a]",
            ),
            (
                Requirement::exists(K).intersect(&Requirement::does_not_exist(K)),
                "example.com/key Exists and example.com/key DoesNotExist",
            ),
            (
                req(In, &["a", "b"]).with_min_values(2),
                "example.com/key In [a, b] (minValues 2)",
            ),
        ];
        for (requirement, text) in cases {
            assert_eq!(requirement.to_string(), text);
            let back = Requirements::from_node_selector(&requirement.to_node_selector()).unwrap();
            assert_eq!(back.get(K), Some(&requirement), "{text}");
        }
    }

    #[test]
    fn requirements_compatible_and_matches() {
        let pool = Requirements::new()
            .with(Requirement::new(labels::CAPACITY_TYPE, Operator::In, ["spot", "on-demand"]).unwrap())
            .with(Requirement::new("team", Operator::In, ["a"]).unwrap());
        let pod = Requirements::new()
            .with(Requirement::new(labels::CAPACITY_TYPE, Operator::In, ["spot"]).unwrap())
            .with(Requirement::new(labels::ARCH, Operator::In, ["arm64"]).unwrap());
        assert_eq!(pool.compatible(&pod), Ok(()), "well-known keys may be undefined");
        let on_demand = Requirements::new()
            .with(Requirement::new(labels::CAPACITY_TYPE, Operator::In, ["reserved"]).unwrap());
        assert_eq!(
            pool.compatible(&on_demand).unwrap_err().to_string(),
            "incompatible requirements on \"karpenter.sh/capacity-type\": karpenter.sh/capacity-type In [reserved] \
             does not intersect karpenter.sh/capacity-type In [on-demand, spot]"
        );
        let custom = Requirements::new().with(Requirement::exists("gpu-team"));
        assert_eq!(
            pool.compatible(&custom),
            Err(IncompatibleError::Undefined {
                key: "gpu-team".into(),
                incoming: "gpu-team Exists".into()
            })
        );
        assert_eq!(pool.intersects(&custom), Ok(()));
        let avoid = Requirements::new().with(Requirement::new("gpu-team", Operator::NotIn, ["x"]).unwrap());
        assert_eq!(
            pool.compatible(&avoid),
            Ok(()),
            "NotIn allows an undefined custom label"
        );
        let team_absent = Requirements::new().with(Requirement::does_not_exist("team"));
        assert!(pool.compatible(&team_absent).is_err());

        let both = pool.intersect(&pod);
        assert_eq!(
            both.get(labels::CAPACITY_TYPE)
                .map(|r| r.values().collect::<Vec<_>>()),
            Some(vec!["spot"])
        );
        assert_eq!(both.len(), 3);

        let node = labels(&[
            (labels::CAPACITY_TYPE, "spot"),
            (labels::ARCH, "arm64"),
            ("team", "a"),
        ]);
        assert!(both.matches_labels(&node));
        assert!(
            !both.matches_labels(&labels(&[(labels::CAPACITY_TYPE, "spot"), ("team", "a")])),
            "arch missing"
        );
        let not_in = Requirements::new()
            .with(Requirement::new("dedicated", Operator::NotIn, ["x"]).unwrap())
            .with(Requirement::does_not_exist("spare"));
        assert!(
            not_in.matches_labels(&BTreeMap::new()),
            "a missing key satisfies NotIn and DoesNotExist"
        );
        assert!(!not_in.matches_labels(&labels(&[("spare", "1")])));
        assert!(Requirements::from_labels(&node).matches_labels(&node));
        assert!(pool.compatible(&Requirements::from_labels(&node)).is_ok());
    }

    #[test]
    fn requirements_serde() {
        let json = r#"[
            {"key": "beta.kubernetes.io/arch", "operator": "In", "values": ["amd64", "arm64"]},
            {"key": "karpenter.k8s.aws/instance-cpu", "operator": "Gt", "values": ["3"]},
            {"key": "karpenter.k8s.aws/instance-family", "operator": "In", "values": ["m5", "c5"], "minValues": 2}
        ]"#;
        let rs: Requirements = serde_json::from_str(json).unwrap();
        assert_eq!(rs.len(), 3);
        assert!(rs.get(labels::ARCH).is_some_and(|r| r.has("arm64")));
        let back: Requirements = serde_json::from_str(&serde_json::to_string(&rs).unwrap()).unwrap();
        assert_eq!(back, rs);
        let text = serde_json::to_string(&rs).unwrap();
        assert!(text.contains(r#""minValues":2"#), "{text}");
        let err =
            serde_json::from_str::<Requirements>(r#"[{"key": "k", "operator": "Inn", "values": ["a"]}]"#)
                .unwrap_err()
                .to_string();
        assert!(err.contains("unknown operator \"Inn\""), "{err}");
        assert!(rs.to_string().matches(", ").count() >= 2);
    }

    /// Values the generated requirements mention, and spellings that only bounds accept.
    const UNIVERSE: &[&str] = &[
        "a", "b", "c", "zz", "-1", "0", "1", "2", "3", "4", "5", "6", "00", "01", "02", "03", "04", "05",
        "+2",
    ];
    const VALUES: &[&str] = &["a", "b", "1", "2", "3", "4"];

    fn build(operator: Operator, values: Vec<String>) -> Requirement {
        Requirement::new(K, operator, values).unwrap()
    }

    fn requirement_strategy() -> impl Strategy<Value = Requirement> {
        let values = || {
            proptest::sample::subsequence(VALUES, 1..=3)
                .prop_map(|v| v.into_iter().map(String::from).collect::<Vec<_>>())
        };
        let bound = || (0i64..6).prop_map(|n| vec![n.to_string()]);
        prop_oneof![
            values().prop_map(|v| build(Operator::In, v)),
            values().prop_map(|v| build(Operator::NotIn, v)),
            Just(Requirement::exists(K)),
            Just(Requirement::does_not_exist(K)),
            bound().prop_map(|v| build(Operator::Gt, v)),
            bound().prop_map(|v| build(Operator::Lt, v)),
        ]
    }

    /// A requirement built from one to three generated ones, so that mixed forms appear.
    fn combined_strategy() -> impl Strategy<Value = Requirement> {
        proptest::collection::vec(requirement_strategy(), 1..=3).prop_map(|rs| {
            rs.into_iter()
                .reduce(|acc, r| acc.intersect(&r))
                .expect("at least one requirement")
        })
    }

    fn accepted(r: &Requirement) -> Vec<Option<&'static str>> {
        UNIVERSE
            .iter()
            .map(|v| Some(*v))
            .chain([None])
            .filter(|v| r.matches(*v))
            .collect()
    }

    proptest! {
        #[test]
        fn intersection_is_commutative_and_exact(a in combined_strategy(), b in combined_strategy()) {
            let ab = a.intersect(&b);
            let ba = b.intersect(&a);
            prop_assert_eq!(accepted(&ab), accepted(&ba));
            prop_assert_eq!(&ab, &ba);
            for v in UNIVERSE.iter().map(|v| Some(*v)).chain([None]) {
                prop_assert_eq!(ab.matches(v), a.matches(v) && b.matches(v), "{:?}", v);
            }
        }

        #[test]
        fn compatibility_agrees_with_a_common_value(a in combined_strategy(), b in combined_strategy()) {
            let common = !accepted(&a.intersect(&b)).is_empty();
            prop_assert_eq!(a.is_compatible(&b), common, "{} / {}", a, b);
            prop_assert_eq!(b.is_compatible(&a), common);
        }

        #[test]
        fn intersection_with_itself_is_identity(a in combined_strategy()) {
            prop_assert_eq!(a.intersect(&a), a);
        }

        #[test]
        fn any_satisfies_and_node_selector_round_trips(a in combined_strategy()) {
            match a.any() {
                Some(v) => prop_assert!(a.has(&v), "{} picked {}", a, v),
                None => prop_assert!(a.is_empty()),
            }
            let back = Requirements::from_node_selector(&a.to_node_selector())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let fallback = Requirement::exists(K);
            prop_assert_eq!(back.get(K).unwrap_or(&fallback), &a);
        }
    }
}
