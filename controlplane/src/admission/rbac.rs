//! Defaulting and validation of rbac.authorization.k8s.io/v1 Roles,
//! ClusterRoles, RoleBindings and ClusterRoleBindings, as kube-apiserver's
//! `pkg/apis/rbac/validation` and `v1` defaults: rules need verbs; resource
//! rules need apiGroups and resources; non-resource URLs only in
//! ClusterRoles and never mixed with resources in one rule; a binding's
//! `roleRef` is required and immutable; subjects are User, Group or
//! ServiceAccount. Sizes are bounded so one object cannot make every request
//! that consults it slow.

use serde_json::{Value, json};

use crate::error::Cause;
use crate::rbac::rules::strings;

/// The API group of the RBAC kinds, the only one a roleRef may name.
pub const GROUP: &str = "rbac.authorization.k8s.io";

/// Most rules in one Role or ClusterRole.
pub const MAX_RULES: usize = 1000;
/// Most entries in one list of a rule (verbs, resources, names...).
pub const MAX_RULE_ITEMS: usize = 1000;
/// Most subjects in one binding.
pub const MAX_SUBJECTS: usize = 1000;
/// Most label selectors in a ClusterRole's aggregationRule.
pub const MAX_SELECTORS: usize = 100;

fn too_many(field: String, n: usize, max: usize) -> Cause {
    Cause {
        reason: "FieldValueTooMany",
        field,
        message: format!("Too many: {n}: must have at most {max} items"),
    }
}

/// Validates the rules of a Role (`namespaced`) or ClusterRole.
pub fn role(obj: Value, namespaced: bool, causes: &mut Vec<Cause>) -> Value {
    let rules = obj
        .get("rules")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if rules.len() > MAX_RULES {
        causes.push(too_many("rules".into(), rules.len(), MAX_RULES));
        return obj;
    }
    for (i, rule) in rules.iter().enumerate() {
        let at = |f: &str| format!("rules[{i}].{f}");
        for key in [
            "verbs",
            "apiGroups",
            "resources",
            "resourceNames",
            "nonResourceURLs",
        ] {
            let n = strings(rule, key).len();
            if n > MAX_RULE_ITEMS {
                causes.push(too_many(at(key), n, MAX_RULE_ITEMS));
            }
        }
        if strings(rule, "verbs").is_empty() {
            causes.push(Cause {
                reason: "FieldValueRequired",
                field: at("verbs"),
                message: "Required value: verbs must contain at least one value".into(),
            });
        }
        let urls = strings(rule, "nonResourceURLs");
        let groups = strings(rule, "apiGroups");
        let resources = strings(rule, "resources");
        if !urls.is_empty() {
            if namespaced {
                causes.push(Cause::invalid(
                    at("nonResourceURLs"),
                    format!("{urls:?}"),
                    "namespaced rules cannot apply to non-resource URLs",
                ));
            }
            if !groups.is_empty()
                || !resources.is_empty()
                || !strings(rule, "resourceNames").is_empty()
            {
                causes.push(Cause::invalid(
                    at("nonResourceURLs"),
                    format!("{urls:?}"),
                    "rules cannot apply to both regular resources and non-resource URLs",
                ));
            }
            continue;
        }
        if groups.is_empty() {
            causes.push(Cause {
                reason: "FieldValueRequired",
                field: at("apiGroups"),
                message: "Required value: resource rules must supply at least one api group".into(),
            });
        }
        if resources.is_empty() {
            causes.push(Cause {
                reason: "FieldValueRequired",
                field: at("resources"),
                message: "Required value: resource rules must supply at least one resource".into(),
            });
        }
    }
    if let Some(agg) = obj.get("aggregationRule") {
        let n = agg
            .get("clusterRoleSelectors")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        if n > MAX_SELECTORS {
            causes.push(too_many(
                "aggregationRule.clusterRoleSelectors".into(),
                n,
                MAX_SELECTORS,
            ));
        }
    }
    obj
}

/// Go's `%#v` of a RoleRef, as kube-apiserver prints it in the
/// "cannot change roleRef" error.
fn role_ref_text(r: Option<&Value>) -> String {
    let f = |k: &str| {
        r.and_then(|r| r.get(k))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    format!(
        "rbac.RoleRef{{APIGroup:{:?}, Kind:{:?}, Name:{:?}}}",
        f("apiGroup"),
        f("kind"),
        f("name")
    )
}

/// Defaults and validates a RoleBinding (`namespaced`) or
/// ClusterRoleBinding; `old` is the stored one on update.
pub fn binding(
    mut obj: Value,
    namespaced: bool,
    old: Option<&Value>,
    causes: &mut Vec<Cause>,
) -> Value {
    // SetDefaults_RoleBinding / SetDefaults_Subject.
    if obj.get("roleRef").is_some_and(Value::is_object)
        && obj
            .pointer("/roleRef/apiGroup")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
    {
        obj["roleRef"]["apiGroup"] = json!(GROUP);
    }
    if let Some(subjects) = obj.get_mut("subjects").and_then(Value::as_array_mut) {
        for s in subjects {
            let kind = s.get("kind").and_then(Value::as_str).unwrap_or("");
            let group_empty = s
                .get("apiGroup")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty);
            if group_empty && matches!(kind, "User" | "Group") {
                s["apiGroup"] = json!(GROUP);
            }
        }
    }
    let rr = obj.get("roleRef");
    let rr_str = |k: &str| {
        rr.and_then(|r| r.get(k))
            .and_then(Value::as_str)
            .unwrap_or("")
    };
    if rr_str("apiGroup") != GROUP {
        causes.push(Cause::unsupported(
            "roleRef.apiGroup",
            rr_str("apiGroup"),
            &[GROUP],
        ));
    }
    let kinds: &[&str] = if namespaced {
        &["Role", "ClusterRole"]
    } else {
        &["ClusterRole"]
    };
    if !kinds.contains(&rr_str("kind")) {
        causes.push(Cause::unsupported("roleRef.kind", rr_str("kind"), kinds));
    }
    if rr_str("name").is_empty() {
        causes.push(Cause::required("roleRef.name"));
    } else if let Some(msg) = super::meta::check_name("Role", rr_str("name")) {
        causes.push(Cause::invalid("roleRef.name", rr_str("name"), msg));
    }
    if let Some(old) = old
        && old.get("roleRef") != obj.get("roleRef")
    {
        causes.push(Cause::invalid(
            "roleRef",
            role_ref_text(obj.get("roleRef")),
            "cannot change roleRef",
        ));
    }
    let subjects = obj
        .get("subjects")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if subjects.len() > MAX_SUBJECTS {
        causes.push(too_many("subjects".into(), subjects.len(), MAX_SUBJECTS));
        return obj;
    }
    for (i, s) in subjects.iter().enumerate() {
        let at = |f: &str| format!("subjects[{i}].{f}");
        let get = |k: &str| s.get(k).and_then(Value::as_str).unwrap_or("");
        if get("name").is_empty() {
            causes.push(Cause::required(at("name")));
        }
        match get("kind") {
            "ServiceAccount" => {
                if !get("apiGroup").is_empty() {
                    causes.push(Cause::unsupported(at("apiGroup"), get("apiGroup"), &[""]));
                }
                if !get("name").is_empty()
                    && let Some(msg) = super::meta::check_name("ServiceAccount", get("name"))
                {
                    causes.push(Cause::invalid(at("name"), get("name"), msg));
                }
                if get("namespace").is_empty() && !namespaced {
                    causes.push(Cause::required(at("namespace")));
                }
            }
            "User" | "Group" => {
                if get("apiGroup") != GROUP {
                    causes.push(Cause::unsupported(
                        at("apiGroup"),
                        get("apiGroup"),
                        &[GROUP],
                    ));
                }
            }
            other => causes.push(Cause::unsupported(
                at("kind"),
                other,
                &["ServiceAccount", "User", "Group"],
            )),
        }
    }
    obj
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_role(obj: Value, namespaced: bool) -> Vec<String> {
        let mut causes = Vec::new();
        role(obj, namespaced, &mut causes);
        causes
            .into_iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect()
    }

    #[test]
    fn rules_are_validated_as_upstream() {
        let ok = json!({"rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]});
        assert!(check_role(ok, true).is_empty());
        let errs = check_role(
            json!({"rules": [{"apiGroups": [""], "resources": ["pods"]}]}),
            true,
        );
        assert_eq!(
            errs,
            ["rules[0].verbs: Required value: verbs must contain at least one value"]
        );
        let errs = check_role(json!({"rules": [{"verbs": ["get"]}]}), false);
        assert_eq!(errs.len(), 2, "{errs:?}");
        let url = json!({"rules": [{"verbs": ["get"], "nonResourceURLs": ["/metrics"]}]});
        assert!(check_role(url.clone(), false).is_empty());
        assert!(check_role(url, true)[0].contains("namespaced rules cannot apply"));
        let mixed = json!({"rules": [{"verbs": ["get"], "nonResourceURLs": ["/x"], "resources": ["pods"]}]});
        assert!(check_role(mixed, false)[0].contains("both regular resources"));
        let many: Vec<Value> = (0..=MAX_RULES)
            .map(|_| json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}))
            .collect();
        assert!(check_role(json!({ "rules": many }), true)[0].contains("Too many: 1001"));
    }

    #[test]
    fn bindings_are_defaulted_and_their_role_ref_is_immutable() {
        let mut causes = Vec::new();
        let b = binding(
            json!({"roleRef": {"kind": "Role", "name": "r"}, "subjects": [{"kind": "User", "name": "alice"}, {"kind": "ServiceAccount", "name": "sa"}]}),
            true,
            None,
            &mut causes,
        );
        assert!(causes.is_empty(), "{causes:?}");
        assert_eq!(b["roleRef"]["apiGroup"], GROUP);
        assert_eq!(b["subjects"][0]["apiGroup"], GROUP);
        assert!(b["subjects"][1].get("apiGroup").is_none());
        // A ClusterRoleBinding: no Role, and service accounts need a namespace.
        binding(
            json!({"roleRef": {"kind": "Role", "name": "r"}, "subjects": [{"kind": "ServiceAccount", "name": "sa"}, {"kind": "Robot", "name": "x"}]}),
            false,
            None,
            &mut causes,
        );
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            ["roleRef.kind", "subjects[0].namespace", "subjects[1].kind"]
        );
        let mut causes = Vec::new();
        binding(
            json!({"roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": "other"}}),
            true,
            Some(&json!({"roleRef": {"apiGroup": GROUP, "kind": "Role", "name": "r"}})),
            &mut causes,
        );
        assert_eq!(causes.len(), 1);
        assert_eq!(
            causes[0].message,
            "Invalid value: rbac.RoleRef{APIGroup:\"rbac.authorization.k8s.io\", Kind:\"ClusterRole\", Name:\"other\"}: cannot change roleRef"
        );
    }
}
