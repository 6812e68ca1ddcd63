//! Policy rules: matching a request against a rule (kube's `RuleAllows`)
//! and whether a set of rules covers another (the escalation check's
//! `Covers`), both `*`-aware.

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::attributes::{Attributes, Target};

/// One `PolicyRule`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    pub verbs: Vec<String>,
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    pub resource_names: Vec<String>,
    pub non_resource_urls: Vec<String>,
}

/// The strings of the array `v[key]` (none when absent or not an array).
pub(crate) fn strings(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

impl Rule {
    pub fn from_json(v: &Value) -> Self {
        Self {
            verbs: strings(v, "verbs"),
            api_groups: strings(v, "apiGroups"),
            resources: strings(v, "resources"),
            resource_names: strings(v, "resourceNames"),
            non_resource_urls: strings(v, "nonResourceURLs"),
        }
    }

    /// The rules of a Role or ClusterRole object.
    pub fn all_of(role: &Value) -> Vec<Self> {
        role.get("rules")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(Self::from_json).collect())
            .unwrap_or_default()
    }

    pub fn to_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("verbs".into(), json!(self.verbs));
        for (k, v) in [
            ("apiGroups", &self.api_groups),
            ("resources", &self.resources),
            ("resourceNames", &self.resource_names),
            ("nonResourceURLs", &self.non_resource_urls),
        ] {
            if !v.is_empty() {
                m.insert(k.into(), json!(v));
            }
        }
        Value::Object(m)
    }

    /// Upstream's `PolicyRule.CompactString`: `{APIGroups:[""],
    /// Resources:["pods"], Verbs:["get" "list"]}`.
    pub fn compact_string(&self) -> String {
        let q = |v: &[String]| {
            let items: Vec<String> = v.iter().map(|s| format!("{s:?}")).collect();
            format!("[{}]", items.join(" "))
        };
        let mut parts = Vec::new();
        for (label, v) in [
            ("APIGroups", &self.api_groups),
            ("Resources", &self.resources),
            ("NonResourceURLs", &self.non_resource_urls),
            ("ResourceNames", &self.resource_names),
            ("Verbs", &self.verbs),
        ] {
            if !v.is_empty() {
                parts.push(format!("{label}:{}", q(v)));
            }
        }
        let mut out = String::from("{");
        let _ = write!(out, "{}", parts.join(", "));
        out.push('}');
        out
    }

    /// Whether this rule allows the request.
    pub fn allows(&self, attrs: &Attributes) -> bool {
        if !verb_matches(&self.verbs, &attrs.verb) {
            return false;
        }
        match &attrs.target {
            Target::NonResource { path } => non_resource_url_matches(&self.non_resource_urls, path),
            Target::Resource {
                group,
                resource,
                subresource,
                name,
                ..
            } => {
                group_matches(&self.api_groups, group)
                    && resource_matches(&self.resources, resource, subresource.as_deref())
                    && name_matches(&self.resource_names, name.as_deref())
            }
        }
    }
}

fn verb_matches(verbs: &[String], verb: &str) -> bool {
    verbs.iter().any(|v| v == "*" || v == verb)
}

fn group_matches(groups: &[String], group: &str) -> bool {
    groups.iter().any(|g| g == "*" || g == group)
}

/// `*`, the exact `res` or `res/sub`, or `*/sub` for any resource's `sub`.
fn resource_matches(resources: &[String], resource: &str, sub: Option<&str>) -> bool {
    resources.iter().any(|r| {
        if r == "*" {
            return true;
        }
        match sub {
            None => r == resource,
            Some(sub) => r
                .split_once('/')
                .is_some_and(|(rr, rs)| (rr == resource || rr == "*") && rs == sub),
        }
    })
}

/// An empty list allows any name; otherwise the request must name one of
/// them (list, watch and create carry no name, so never match).
fn name_matches(names: &[String], name: Option<&str>) -> bool {
    names.is_empty() || name.is_some_and(|n| names.iter().any(|x| x == n))
}

/// `*`, exact, or a prefix when the rule ends in `*`.
fn non_resource_url_matches(urls: &[String], path: &str) -> bool {
    urls.iter().any(|u| {
        u == "*"
            || u == path
            || u.strip_suffix('*')
                .is_some_and(|prefix| path.starts_with(prefix))
    })
}

/// Whether `owner` lets a holder do everything `rule` grants: every
/// (verb, group, resource, name) or (verb, url) the rule names is allowed
/// by one of the owner's rules. Returns the parts not covered, compacted
/// per resource, for the escalation error.
pub fn missing(owner: &[Rule], rule: &Rule) -> Vec<Rule> {
    let mut out: Vec<Rule> = Vec::new();
    let mut push = |atom: Rule| {
        // Merge the verbs of one (group, resource, name) or url.
        if let Some(r) = out.iter_mut().find(|r| {
            r.api_groups == atom.api_groups
                && r.resources == atom.resources
                && r.resource_names == atom.resource_names
                && r.non_resource_urls == atom.non_resource_urls
        }) {
            r.verbs.extend(atom.verbs);
        } else {
            out.push(atom);
        }
    };
    for verb in &rule.verbs {
        for url in &rule.non_resource_urls {
            let covered = owner.iter().any(|o| {
                verb_covers(&o.verbs, verb)
                    && o.non_resource_urls.iter().any(|ou| url_covers(ou, url))
            });
            if !covered {
                push(Rule {
                    verbs: vec![verb.clone()],
                    non_resource_urls: vec![url.clone()],
                    ..Rule::default()
                });
            }
        }
        for group in &rule.api_groups {
            for resource in &rule.resources {
                let names: Vec<Option<&String>> = if rule.resource_names.is_empty() {
                    vec![None]
                } else {
                    rule.resource_names.iter().map(Some).collect()
                };
                for name in names {
                    let covered = owner.iter().any(|o| {
                        verb_covers(&o.verbs, verb)
                            && o.api_groups.iter().any(|g| g == "*" || g == group)
                            && o.resources.iter().any(|r| resource_covers(r, resource))
                            && (o.resource_names.is_empty()
                                || name.is_some_and(|n| o.resource_names.contains(n)))
                    });
                    if !covered {
                        push(Rule {
                            verbs: vec![verb.clone()],
                            api_groups: vec![group.clone()],
                            resources: vec![resource.clone()],
                            resource_names: name.cloned().into_iter().collect(),
                            ..Rule::default()
                        });
                    }
                }
            }
        }
    }
    out
}

fn verb_covers(owner: &[String], verb: &str) -> bool {
    owner.iter().any(|v| v == "*" || v == verb)
}

/// An owner resource covers a requested one when equal, `*`, or `*/sub`
/// for a requested `x/sub` (and `*/sub` itself).
fn resource_covers(owner: &str, requested: &str) -> bool {
    if owner == "*" || owner == requested {
        return true;
    }
    match (owner.split_once('/'), requested.split_once('/')) {
        (Some(("*", osub)), Some((_, rsub))) => osub == rsub,
        _ => false,
    }
}

/// An owner URL covers a requested one when equal, `*`, or a prefix
/// ending in `*` of it (a requested `/a/*` is covered by `/a*` or `/a/*`).
fn url_covers(owner: &str, requested: &str) -> bool {
    if owner == "*" || owner == requested {
        return true;
    }
    owner
        .strip_suffix('*')
        .is_some_and(|prefix| requested.starts_with(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::User;

    fn rule(verbs: &[&str], groups: &[&str], resources: &[&str], names: &[&str]) -> Rule {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect();
        Rule {
            verbs: s(verbs),
            api_groups: s(groups),
            resources: s(resources),
            resource_names: s(names),
            non_resource_urls: vec![],
        }
    }

    fn url_rule(verbs: &[&str], urls: &[&str]) -> Rule {
        Rule {
            verbs: verbs.iter().map(|x| x.to_string()).collect(),
            non_resource_urls: urls.iter().map(|x| x.to_string()).collect(),
            ..Rule::default()
        }
    }

    fn req(
        verb: &str,
        group: &str,
        resource: &str,
        sub: Option<&str>,
        name: Option<&str>,
    ) -> Attributes {
        Attributes {
            user: User {
                name: "u".into(),
                groups: vec![],
            },
            verb: verb.into(),
            target: Target::Resource {
                group: group.into(),
                resource: resource.into(),
                subresource: sub.map(String::from),
                namespace: "ns".into(),
                name: name.map(String::from),
            },
        }
    }

    fn path(verb: &str, p: &str) -> Attributes {
        Attributes {
            user: User {
                name: "u".into(),
                groups: vec![],
            },
            verb: verb.into(),
            target: Target::NonResource { path: p.into() },
        }
    }

    #[test]
    fn rules_match_as_kube_rbac() {
        let r = rule(&["get", "list"], &[""], &["pods"], &[]);
        assert!(r.allows(&req("get", "", "pods", None, Some("a"))));
        assert!(r.allows(&req("list", "", "pods", None, None)));
        assert!(!r.allows(&req("watch", "", "pods", None, None)));
        assert!(!r.allows(&req("get", "apps", "pods", None, Some("a"))));
        // A subresource is its own resource.
        assert!(!r.allows(&req("get", "", "pods", Some("log"), Some("a"))));
        let logs = rule(&["get"], &[""], &["pods/log"], &[]);
        assert!(logs.allows(&req("get", "", "pods", Some("log"), Some("a"))));
        assert!(!logs.allows(&req("get", "", "pods", None, Some("a"))));
        let any_status = rule(&["update"], &["*"], &["*/status"], &[]);
        assert!(any_status.allows(&req(
            "update",
            "apps",
            "deployments",
            Some("status"),
            Some("d")
        )));
        assert!(!any_status.allows(&req("update", "apps", "deployments", None, Some("d"))));
        let star = rule(&["*"], &["*"], &["*"], &[]);
        assert!(star.allows(&req(
            "deletecollection",
            "x.io",
            "things",
            Some("scale"),
            None
        )));
        // resourceNames: only requests that name one of them.
        let named = rule(&["get", "list"], &[""], &["secrets"], &["s1"]);
        assert!(named.allows(&req("get", "", "secrets", None, Some("s1"))));
        assert!(!named.allows(&req("get", "", "secrets", None, Some("s2"))));
        assert!(!named.allows(&req("list", "", "secrets", None, None)));
        // Non-resource URLs: exact, `*`, or a prefix ending in `*`.
        let urls = url_rule(&["get"], &["/healthz", "/apis/*"]);
        assert!(urls.allows(&path("get", "/healthz")));
        assert!(!urls.allows(&path("get", "/healthz/ping")));
        assert!(urls.allows(&path("get", "/apis/apps")));
        assert!(!urls.allows(&path("get", "/apis")));
        assert!(!urls.allows(&path("post", "/healthz")));
        assert!(!urls.allows(&req("get", "", "healthz", None, None)));
        assert!(url_rule(&["*"], &["*"]).allows(&path("delete", "/anything")));
        // A resource rule never allows a path.
        assert!(!star.allows(&path("get", "/metrics")));
    }

    #[test]
    fn coverage_is_star_aware_and_reports_what_is_missing() {
        let admin = [rule(&["*"], &["*"], &["*"], &[]), url_rule(&["*"], &["*"])];
        assert!(
            missing(
                &admin,
                &rule(&["get"], &["apps"], &["deployments/scale"], &["x"])
            )
            .is_empty()
        );
        assert!(missing(&admin, &url_rule(&["get"], &["/metrics"])).is_empty());
        let owner = [
            rule(&["get", "list"], &[""], &["pods", "*/status"], &[]),
            rule(&["get"], &[""], &["secrets"], &["s1"]),
            url_rule(&["get"], &["/apis/*"]),
        ];
        assert!(missing(&owner, &rule(&["get"], &[""], &["pods"], &[])).is_empty());
        assert!(missing(&owner, &rule(&["list"], &[""], &["services/status"], &[])).is_empty());
        assert!(missing(&owner, &rule(&["get"], &[""], &["secrets"], &["s1"])).is_empty());
        assert!(missing(&owner, &url_rule(&["get"], &["/apis/apps/*"])).is_empty());
        // A name-restricted grant never covers all names.
        let m = missing(&owner, &rule(&["get"], &[""], &["secrets"], &[]));
        assert_eq!(m, [rule(&["get"], &[""], &["secrets"], &[])]);
        let m = missing(
            &owner,
            &rule(&["get", "watch", "delete"], &[""], &["pods"], &[]),
        );
        assert_eq!(m, [rule(&["watch", "delete"], &[""], &["pods"], &[])]);
        assert_eq!(
            m[0].compact_string(),
            r#"{APIGroups:[""], Resources:["pods"], Verbs:["watch" "delete"]}"#
        );
        // `*` asked for is covered only by `*`.
        assert_eq!(
            missing(&owner, &rule(&["*"], &[""], &["pods"], &[])).len(),
            1
        );
        assert_eq!(missing(&owner, &url_rule(&["get"], &["/metrics"])).len(), 1);
    }
}
