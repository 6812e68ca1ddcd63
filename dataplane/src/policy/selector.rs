//! Label selectors as NetworkPolicy uses them (`podSelector`,
//! `namespaceSelector`): `matchLabels` and `matchExpressions` with `In`,
//! `NotIn`, `Exists` and `DoesNotExist`, every requirement ANDed, the empty
//! selector matching everything.
//!
//! Owns parsing a `LabelSelector` (rejecting what the API server rejects)
//! and matching a label map. Must not know about pods, namespaces or
//! policies. `kube::core::Selector` is not used: it accepts `In`/`NotIn`
//! without values and `Exists`/`DoesNotExist` with values (the API server's
//! `LabelSelectorAsSelector` rejects both) and reports errors as bare
//! strings without the field.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// A label map (`metadata.labels`): the pairs sorted by key in one
/// allocation. A pod's handful of labels takes a quarter of what a
/// `BTreeMap` node holds, and the agent keeps one map per pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Labels(Box<[(Box<str>, Box<str>)]>);

impl Labels {
    pub fn new() -> Self {
        Labels::default()
    }

    fn find(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| (**k).cmp(key))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.find(key).ok().map(|i| &*self.0[i].1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_ok()
    }

    /// Sets `key` (a copy of the pairs: labels change rarely).
    pub fn insert(&mut self, key: String, value: String) {
        let (key, value) = (key.into_boxed_str(), value.into_boxed_str());
        match self.find(&key) {
            Ok(i) => self.0[i].1 = value,
            Err(i) => {
                let mut pairs = std::mem::take(&mut self.0).into_vec();
                pairs.insert(i, (key, value));
                self.0 = pairs.into_boxed_slice();
            }
        }
    }

    /// Removes `key`, if present.
    pub fn remove(&mut self, key: &str) {
        if let Ok(i) = self.find(key) {
            let mut pairs = std::mem::take(&mut self.0).into_vec();
            pairs.remove(i);
            self.0 = pairs.into_boxed_slice();
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| &**k)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `metadata.labels` as the API gives them.
impl From<&BTreeMap<String, String>> for Labels {
    fn from(map: &BTreeMap<String, String>) -> Self {
        let pairs: Vec<(Box<str>, Box<str>)> = map
            .iter()
            .map(|(k, v)| (Box::from(k.as_str()), Box::from(v.as_str())))
            .collect();
        Labels(pairs.into_boxed_slice())
    }
}

/// Later pairs win over earlier ones with the same key, as collecting into
/// a map does.
impl<K: Into<Box<str>>, V: Into<Box<str>>> FromIterator<(K, V)> for Labels {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut pairs: Vec<(Box<str>, Box<str>)> = iter
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        // Stable: among equal keys the last one given stays last.
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<(Box<str>, Box<str>)> = Vec::with_capacity(pairs.len());
        for (k, v) in pairs {
            match out.last_mut() {
                Some(last) if last.0 == k => last.1 = v,
                _ => out.push((k, v)),
            }
        }
        Labels(out.into_boxed_slice())
    }
}

/// Why a selector was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("matchExpressions[{index}]: unknown operator {operator:?}")]
    UnknownOperator { index: usize, operator: String },
    #[error("matchExpressions[{index}]: operator {operator} needs at least one value")]
    MissingValues {
        index: usize,
        operator: &'static str,
    },
    #[error("matchExpressions[{index}]: operator {operator} takes no values")]
    UnexpectedValues {
        index: usize,
        operator: &'static str,
    },
    #[error("matchExpressions[{index}]: empty key")]
    EmptyKey { index: usize },
    #[error("{count} requirements, more than the limit of {limit}")]
    TooManyRequirements { count: usize, limit: usize },
}

/// At most this many requirements (labels plus expressions) per selector.
pub const MAX_REQUIREMENTS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Requirement {
    /// The label is present with one of these values (`matchLabels` is
    /// `In` with one value).
    In(String, BTreeSet<String>),
    /// The label is absent or has none of these values.
    NotIn(String, BTreeSet<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Requirement {
    pub fn matches(&self, labels: &Labels) -> bool {
        match self {
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        }
    }
}

/// A parsed label selector: all requirements must hold; none matches all.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector {
    reqs: Vec<Requirement>,
}

impl Selector {
    /// The selector that matches every label set.
    pub fn everything() -> Self {
        Selector::default()
    }

    pub fn from_requirements(mut reqs: Vec<Requirement>) -> Self {
        reqs.sort();
        reqs.dedup();
        Selector { reqs }
    }

    /// `{key: value, ...}` as `matchLabels`.
    pub fn from_labels<'a>(labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self::from_requirements(
            labels
                .into_iter()
                .map(|(k, v)| Requirement::In(k.to_string(), BTreeSet::from([v.to_string()])))
                .collect(),
        )
    }

    pub fn parse(sel: &LabelSelector) -> Result<Self, SelectorError> {
        let labels = sel.match_labels.as_ref().map_or(0, BTreeMap::len);
        let exprs = sel.match_expressions.as_deref().unwrap_or_default();
        if labels + exprs.len() > MAX_REQUIREMENTS {
            return Err(SelectorError::TooManyRequirements {
                count: labels + exprs.len(),
                limit: MAX_REQUIREMENTS,
            });
        }
        let mut reqs = Vec::with_capacity(labels + exprs.len());
        for (k, v) in sel.match_labels.iter().flatten() {
            reqs.push(Requirement::In(k.clone(), BTreeSet::from([v.clone()])));
        }
        for (index, e) in exprs.iter().enumerate() {
            if e.key.is_empty() {
                return Err(SelectorError::EmptyKey { index });
            }
            let values: BTreeSet<String> = e.values.iter().flatten().cloned().collect();
            let with_values = |operator: &'static str| {
                if values.is_empty() {
                    Err(SelectorError::MissingValues { index, operator })
                } else {
                    Ok(values.clone())
                }
            };
            let without_values = |operator: &'static str| {
                if values.is_empty() {
                    Ok(())
                } else {
                    Err(SelectorError::UnexpectedValues { index, operator })
                }
            };
            let req = match e.operator.as_str() {
                "In" => Requirement::In(e.key.clone(), with_values("In")?),
                "NotIn" => Requirement::NotIn(e.key.clone(), with_values("NotIn")?),
                "Exists" => {
                    without_values("Exists")?;
                    Requirement::Exists(e.key.clone())
                }
                "DoesNotExist" => {
                    without_values("DoesNotExist")?;
                    Requirement::DoesNotExist(e.key.clone())
                }
                other => {
                    return Err(SelectorError::UnknownOperator {
                        index,
                        operator: other.to_string(),
                    });
                }
            };
            reqs.push(req);
        }
        Ok(Self::from_requirements(reqs))
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.reqs.iter().all(|r| r.matches(labels))
    }

    pub fn matches_everything(&self) -> bool {
        self.reqs.is_empty()
    }

    pub fn requirements(&self) -> &[Requirement] {
        &self.reqs
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn labels_stay_sorted_and_the_last_value_wins() {
        let mut l: Labels = [("b", "1"), ("a", "2"), ("b", "3")].into_iter().collect();
        assert_eq!(l.iter().collect::<Vec<_>>(), [("a", "2"), ("b", "3")]);
        l.insert("c".into(), "4".into());
        l.insert("a".into(), "5".into());
        l.insert("0".into(), "6".into());
        assert_eq!(l.keys().collect::<Vec<_>>(), ["0", "a", "b", "c"]);
        assert_eq!((l.get("a"), l.get("z")), (Some("5"), None));
        l.remove("b");
        l.remove("z");
        assert!(!l.contains_key("b") && l.contains_key("c"));
        assert_eq!(l.len(), 3);
    }

    fn expr(key: &str, op: &str, values: Option<&[&str]>) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: values.map(|v| v.iter().map(|s| s.to_string()).collect()),
        }
    }

    fn sel(ml: &[(&str, &str)], exprs: Vec<LabelSelectorRequirement>) -> LabelSelector {
        LabelSelector {
            match_labels: (!ml.is_empty()).then(|| {
                ml.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            }),
            match_expressions: (!exprs.is_empty()).then_some(exprs),
        }
    }

    #[test]
    fn empty_selector_matches_everything() {
        let s = Selector::parse(&LabelSelector::default()).unwrap();
        assert!(s.matches(&Labels::new()));
        assert!(s.matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn operators() {
        let on = labels(&[("app", "web"), ("tier", "front")]);
        let cases = [
            (expr("app", "In", Some(&["web", "db"])), true),
            (expr("app", "In", Some(&["db"])), false),
            (expr("missing", "In", Some(&["x"])), false),
            (expr("app", "NotIn", Some(&["db"])), true),
            (expr("app", "NotIn", Some(&["web"])), false),
            (expr("missing", "NotIn", Some(&["x"])), true),
            (expr("tier", "Exists", None), true),
            (expr("missing", "Exists", None), false),
            (expr("missing", "DoesNotExist", None), true),
            (expr("tier", "DoesNotExist", None), false),
        ];
        for (e, want) in cases {
            let s = Selector::parse(&sel(&[], vec![e.clone()])).unwrap();
            assert_eq!(s.matches(&on), want, "{e:?}");
        }
    }

    #[test]
    fn labels_and_expressions_are_anded() {
        let s = Selector::parse(&sel(
            &[("app", "web")],
            vec![expr("tier", "In", Some(&["front"]))],
        ))
        .unwrap();
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "front")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "back")])));
        assert!(!s.matches(&labels(&[("app", "db"), ("tier", "front")])));
    }

    #[test]
    fn malformed_expressions_are_errors() {
        let bad = [
            (
                expr("a", "Equals", Some(&["x"])),
                SelectorError::UnknownOperator {
                    index: 0,
                    operator: "Equals".into(),
                },
            ),
            (
                expr("a", "In", None),
                SelectorError::MissingValues {
                    index: 0,
                    operator: "In",
                },
            ),
            (
                expr("a", "NotIn", Some(&[])),
                SelectorError::MissingValues {
                    index: 0,
                    operator: "NotIn",
                },
            ),
            (
                expr("a", "Exists", Some(&["x"])),
                SelectorError::UnexpectedValues {
                    index: 0,
                    operator: "Exists",
                },
            ),
            (
                expr("", "Exists", None),
                SelectorError::EmptyKey { index: 0 },
            ),
        ];
        for (e, want) in bad {
            assert_eq!(Selector::parse(&sel(&[], vec![e])), Err(want));
        }
    }

    #[test]
    fn too_many_requirements() {
        let many: Vec<_> = (0..=MAX_REQUIREMENTS)
            .map(|i| expr(&format!("k{i}"), "Exists", None))
            .collect();
        assert!(matches!(
            Selector::parse(&sel(&[], many)),
            Err(SelectorError::TooManyRequirements { .. })
        ));
    }
}
