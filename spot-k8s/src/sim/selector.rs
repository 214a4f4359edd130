//! Label and field selectors: the `labelSelector`/`fieldSelector` query parameters and the
//! `LabelSelector` objects of PodDisruptionBudgets, ReplicaSets and friends.

use std::collections::BTreeSet;

use serde_json::Value;

/// Errors of selector parsing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The selector string is malformed.
    #[error("unable to parse requirement {0:?}")]
    Syntax(String),
    /// A `matchExpressions` operator other than In, NotIn, Exists, DoesNotExist.
    #[error("{0:?} is not a valid label selector operator")]
    Operator(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Exists,
    NotExists,
    Eq(String),
    NotEq(String),
    In(BTreeSet<String>),
    NotIn(BTreeSet<String>),
    Gt(i64),
    Lt(i64),
}

/// A parsed label selector: every requirement must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<(String, Op)>,
}

/// Splits at commas outside parentheses.
fn split_terms(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter().map(str::trim).filter(|t| !t.is_empty()).collect()
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 317
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn parse_set(term: &str, rest: &str) -> Result<BTreeSet<String>, Error> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| Error::Syntax(term.to_owned()))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect())
}

impl LabelSelector {
    /// Parses the `labelSelector` query syntax: `a=b`, `a==b`, `a!=b`, `a`, `!a`,
    /// `a in (x,y)`, `a notin (x,y)`, `a>1`, `a<1`, comma-separated.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let mut requirements = Vec::new();
        for term in split_terms(s) {
            let syntax = || Error::Syntax(term.to_owned());
            let req = if let Some(key) = term.strip_prefix('!') {
                (key.trim().to_owned(), Op::NotExists)
            } else if let Some((k, v)) = term.split_once("!=") {
                (k.trim().to_owned(), Op::NotEq(v.trim().to_owned()))
            } else if let Some((k, v)) = term.split_once("==") {
                (k.trim().to_owned(), Op::Eq(v.trim().to_owned()))
            } else if let Some((k, v)) = term.split_once('=') {
                (k.trim().to_owned(), Op::Eq(v.trim().to_owned()))
            } else if let Some((k, v)) = term.split_once('>') {
                (
                    k.trim().to_owned(),
                    Op::Gt(v.trim().parse().map_err(|_| syntax())?),
                )
            } else if let Some((k, v)) = term.split_once('<') {
                (
                    k.trim().to_owned(),
                    Op::Lt(v.trim().parse().map_err(|_| syntax())?),
                )
            } else if let Some((k, rest)) = term.split_once(" notin ") {
                (k.trim().to_owned(), Op::NotIn(parse_set(term, rest)?))
            } else if let Some((k, rest)) = term.split_once(" in ") {
                (k.trim().to_owned(), Op::In(parse_set(term, rest)?))
            } else {
                (term.to_owned(), Op::Exists)
            };
            if !valid_key(&req.0) {
                return Err(syntax());
            }
            requirements.push(req);
        }
        Ok(LabelSelector { requirements })
    }

    /// Builds a selector from a `LabelSelector` object (`matchLabels`, `matchExpressions`).
    /// A missing or null object selects everything; an empty one too (as for PDBs in
    /// policy/v1).
    pub fn from_object(selector: Option<&Value>) -> Result<Self, Error> {
        let mut requirements = Vec::new();
        let Some(sel) = selector else {
            return Ok(LabelSelector::default());
        };
        if let Some(labels) = sel.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in labels {
                requirements.push((k.clone(), Op::Eq(v.as_str().unwrap_or_default().to_owned())));
            }
        }
        if let Some(exprs) = sel.get("matchExpressions").and_then(Value::as_array) {
            for e in exprs {
                let key = e
                    .get("key")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let values: BTreeSet<String> = e
                    .get("values")
                    .and_then(Value::as_array)
                    .map(|vs| vs.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
                    .unwrap_or_default();
                let op = match e.get("operator").and_then(Value::as_str).unwrap_or_default() {
                    "In" => Op::In(values),
                    "NotIn" => Op::NotIn(values),
                    "Exists" => Op::Exists,
                    "DoesNotExist" => Op::NotExists,
                    other => return Err(Error::Operator(other.to_owned())),
                };
                requirements.push((key, op));
            }
        }
        Ok(LabelSelector { requirements })
    }

    /// Whether the selector has no requirement (selects everything).
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether an object's `metadata.labels` satisfy the selector.
    pub fn matches(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels");
        self.requirements.iter().all(|(key, op)| {
            let value = labels.and_then(|l| l.get(key)).and_then(Value::as_str);
            match op {
                Op::Exists => value.is_some(),
                Op::NotExists => value.is_none(),
                Op::Eq(v) => value == Some(v.as_str()),
                Op::NotEq(v) => value != Some(v.as_str()),
                Op::In(set) => value.is_some_and(|x| set.contains(x)),
                Op::NotIn(set) => value.is_none_or(|x| !set.contains(x)),
                Op::Gt(n) => value.and_then(|x| x.parse::<i64>().ok()).is_some_and(|x| x > *n),
                Op::Lt(n) => value.and_then(|x| x.parse::<i64>().ok()).is_some_and(|x| x < *n),
            }
        })
    }
}

/// A parsed field selector: `path=value`, `path==value`, `path!=value`, comma-separated.
/// Paths are dotted JSON paths (`metadata.name`, `spec.nodeName`, `status.phase`); a missing
/// field reads as the empty string, as in Kubernetes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    requirements: Vec<(String, bool, String)>,
}

impl FieldSelector {
    /// Parses the `fieldSelector` query syntax.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let mut requirements = Vec::new();
        for term in split_terms(s) {
            let (path, equal, value) = if let Some((k, v)) = term.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = term.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = term.split_once('=') {
                (k, true, v)
            } else {
                return Err(Error::Syntax(term.to_owned()));
            };
            let path = path.trim();
            if path.is_empty() || !path.chars().all(|c| c.is_ascii_alphanumeric() || c == '.') {
                return Err(Error::Syntax(term.to_owned()));
            }
            requirements.push((path.to_owned(), equal, value.trim().to_owned()));
        }
        Ok(FieldSelector { requirements })
    }

    /// The value required for `path` by an equality requirement, if any (used to narrow a
    /// list to one name).
    pub fn required(&self, path: &str) -> Option<&str> {
        self.requirements
            .iter()
            .find(|(p, eq, _)| *eq && p == path)
            .map(|(_, _, v)| v.as_str())
    }

    /// Whether the object's fields satisfy the selector.
    pub fn matches(&self, object: &Value) -> bool {
        self.requirements.iter().all(|(path, equal, want)| {
            let mut cur = Some(object);
            for part in path.split('.') {
                cur = cur.and_then(|c| c.get(part));
            }
            let have = match cur {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Number(n)) => n.to_string(),
                _ => String::new(),
            };
            (have == *want) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(labels: Value) -> Value {
        json!({"metadata": {"name": "p", "labels": labels}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}})
    }

    #[test]
    fn label_selector_operators() {
        let p = pod(json!({"app": "web", "tier": "front", "n": "5"}));
        let cases = [
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app", true),
            ("!app", false),
            ("!missing", true),
            ("app in (web, db)", true),
            ("app notin (web,db)", false),
            ("missing notin (x)", true),
            ("app in (db)", false),
            ("app=web,tier in (front,back)", true),
            ("app=web,tier=back", false),
            ("n>4", true),
            ("n<5", false),
            ("", true),
        ];
        for (sel, want) in cases {
            assert_eq!(LabelSelector::parse(sel).unwrap().matches(&p), want, "{sel}");
        }
        assert!(LabelSelector::parse("app in web").is_err());
        assert!(LabelSelector::parse("a b").is_err());
    }

    #[test]
    fn label_selector_object() {
        let sel = json!({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["back"]}]});
        let s = LabelSelector::from_object(Some(&sel)).unwrap();
        assert!(s.matches(&pod(json!({"app": "web"}))));
        assert!(!s.matches(&pod(json!({"app": "web", "tier": "back"}))));
        assert!(!s.matches(&pod(json!({"app": "db"}))));
        let bad = json!({"matchExpressions": [{"key": "a", "operator": "Maybe"}]});
        assert_eq!(
            LabelSelector::from_object(Some(&bad)),
            Err(Error::Operator("Maybe".into()))
        );
    }

    #[test]
    fn field_selector() {
        let p = pod(json!({}));
        assert!(FieldSelector::parse("spec.nodeName=n1").unwrap().matches(&p));
        assert!(!FieldSelector::parse("spec.nodeName=n2").unwrap().matches(&p));
        assert!(
            FieldSelector::parse("status.phase!=Succeeded,metadata.name=p")
                .unwrap()
                .matches(&p)
        );
        assert!(FieldSelector::parse("spec.schedulerName=").unwrap().matches(&p));
        assert_eq!(
            FieldSelector::parse("metadata.name=p")
                .unwrap()
                .required("metadata.name"),
            Some("p")
        );
        assert!(FieldSelector::parse("nonsense").is_err());
    }
}
