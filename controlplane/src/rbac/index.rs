//! The RBAC policy in memory, indexed by subject: a request looks up the
//! ClusterRoleBindings and the RoleBindings of its namespace that name the
//! user or one of its groups, never scanning every binding. Rebuilt whole
//! from the store whenever an RBAC object changes (they are few and change
//! rarely). A binding whose role is missing grants nothing and breaks
//! nothing else; a malformed object is skipped with a warning.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use super::rules::Rule;
use crate::auth::User;
use crate::resources::{CLUSTERROLEBINDINGS, CLUSTERROLES, ROLEBINDINGS, ROLES};
use crate::store::Store;

/// Whom a binding names: service accounts are matched by their user name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Subject {
    User(String),
    Group(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RoleKind {
    Role,
    ClusterRole,
}

#[derive(Debug)]
struct Binding {
    /// Where the binding lives; empty for a ClusterRoleBinding.
    namespace: String,
    role_kind: RoleKind,
    role_name: String,
}

type BySubject = HashMap<Subject, Vec<Arc<Binding>>>;

#[derive(Debug, Default)]
pub struct Policy {
    roles: HashMap<(String, String), Arc<Vec<Rule>>>,
    cluster_roles: HashMap<String, Arc<Vec<Rule>>>,
    cluster_bindings: BySubject,
    namespaced_bindings: HashMap<String, BySubject>,
}

/// The user name of a service account, as its tokens carry it.
pub fn service_account_user(ns: &str, name: &str) -> String {
    format!("system:serviceaccount:{ns}:{name}")
}

fn subjects_of(binding: &Value, binding_ns: &str) -> Vec<Subject> {
    let mut out = Vec::new();
    for s in binding
        .get("subjects")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let get = |k: &str| s.get(k).and_then(Value::as_str).unwrap_or("");
        match get("kind") {
            "User" => out.push(Subject::User(get("name").to_string())),
            "Group" => out.push(Subject::Group(get("name").to_string())),
            "ServiceAccount" => {
                let ns = match get("namespace") {
                    "" => binding_ns,
                    ns => ns,
                };
                if !ns.is_empty() {
                    out.push(Subject::User(service_account_user(ns, get("name"))));
                }
            }
            _ => {}
        }
    }
    out
}

impl Policy {
    /// Reads every Role, ClusterRole and binding from the store.
    pub fn load(store: &Store) -> Self {
        let mut p = Self::default();
        let list = |res| match store.list(res, None, |_| true) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(kind = res.kind, error = %e, "listing RBAC objects; they grant nothing until the next change");
                Vec::new()
            }
        };
        for role in list(&ROLES) {
            let key = (
                crate::object::namespace(&role).to_string(),
                crate::object::name(&role).to_string(),
            );
            p.roles.insert(key, Arc::new(Rule::all_of(&role)));
        }
        for role in list(&CLUSTERROLES) {
            p.cluster_roles.insert(
                crate::object::name(&role).to_string(),
                Arc::new(Rule::all_of(&role)),
            );
        }
        for (res, namespaced) in [(&CLUSTERROLEBINDINGS, false), (&ROLEBINDINGS, true)] {
            for b in list(res) {
                let ns = if namespaced {
                    crate::object::namespace(&b).to_string()
                } else {
                    String::new()
                };
                let kind = match b.pointer("/roleRef/kind").and_then(Value::as_str) {
                    Some("Role") if namespaced => RoleKind::Role,
                    Some("ClusterRole") => RoleKind::ClusterRole,
                    _ => {
                        tracing::warn!(kind = res.kind, namespace = %ns, name = crate::object::name(&b), "binding with an unusable roleRef grants nothing");
                        continue;
                    }
                };
                let binding = Arc::new(Binding {
                    namespace: ns.clone(),
                    role_kind: kind,
                    role_name: b
                        .pointer("/roleRef/name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                });
                let index = if namespaced {
                    p.namespaced_bindings.entry(ns.clone()).or_default()
                } else {
                    &mut p.cluster_bindings
                };
                for s in subjects_of(&b, &ns) {
                    index.entry(s).or_default().push(binding.clone());
                }
            }
        }
        p
    }

    fn role_rules(&self, b: &Binding) -> Result<&[Rule], String> {
        let found = match b.role_kind {
            RoleKind::ClusterRole => self.cluster_roles.get(&b.role_name),
            RoleKind::Role => self.roles.get(&(b.namespace.clone(), b.role_name.clone())),
        };
        found
            .map(|r| r.as_slice())
            .ok_or_else(|| match b.role_kind {
                RoleKind::ClusterRole => format!(
                    "clusterrole.rbac.authorization.k8s.io {:?} not found",
                    b.role_name
                ),
                RoleKind::Role => {
                    format!("role.rbac.authorization.k8s.io {:?} not found", b.role_name)
                }
            })
    }

    /// Visits the rules granted to `user` by ClusterRoleBindings and, for
    /// a namespaced request, by the RoleBindings of `namespace`, until
    /// `visit` returns true. Returns whether it did, and the bindings whose
    /// role is missing.
    pub fn visit(
        &self,
        user: &User,
        namespace: &str,
        mut visit: impl FnMut(&Rule) -> bool,
    ) -> (bool, Vec<String>) {
        let mut errors = Vec::new();
        let subjects: Vec<Subject> = std::iter::once(Subject::User(user.name.clone()))
            .chain(user.groups.iter().cloned().map(Subject::Group))
            .collect();
        let mut indexes = vec![&self.cluster_bindings];
        if !namespace.is_empty()
            && let Some(ns) = self.namespaced_bindings.get(namespace)
        {
            indexes.push(ns);
        }
        for index in indexes {
            for s in &subjects {
                for b in index.get(s).into_iter().flatten() {
                    match self.role_rules(b) {
                        Ok(rules) => {
                            if rules.iter().any(&mut visit) {
                                return (true, errors);
                            }
                        }
                        Err(e) => errors.push(e),
                    }
                }
            }
        }
        (false, errors)
    }

    /// Every rule `user` holds in `namespace` (cluster-wide ones included).
    pub fn rules_for(&self, user: &User, namespace: &str) -> Vec<Rule> {
        let mut out: Vec<Rule> = Vec::new();
        self.visit(user, namespace, |r| {
            if !out.contains(r) {
                out.push(r.clone());
            }
            false
        });
        out
    }

    /// The rules of the role a binding refers to.
    pub fn referenced_rules(
        &self,
        namespace: &str,
        kind: &str,
        name: &str,
    ) -> Option<Arc<Vec<Rule>>> {
        match kind {
            "ClusterRole" => self.cluster_roles.get(name).cloned(),
            "Role" => self
                .roles
                .get(&(namespace.to_string(), name.to_string()))
                .cloned(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Registry, WriteOptions};
    use crate::resources::NAMESPACES;
    use serde_json::json;

    fn user(name: &str, groups: &[&str]) -> User {
        User {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    #[test]
    fn bindings_are_found_by_subject_and_scope() {
        let reg = Registry::in_memory().expect("registry");
        let o = WriteOptions::default();
        let create = |res, ns: &str, v| reg.create(res, ns, v, &o).map(|_| ()).expect("create");
        create(&NAMESPACES, "", json!({"metadata": {"name": "y"}}));
        let rule = |r: &str| json!([{"verbs": ["get"], "apiGroups": [""], "resources": [r]}]);
        create(
            &ROLES,
            "y",
            json!({"metadata": {"name": "r"}, "rules": rule("pods")}),
        );
        create(
            &CLUSTERROLES,
            "",
            json!({"metadata": {"name": "c"}, "rules": rule("secrets")}),
        );
        let binding = |name: &str, kind: &str, role: &str, subjects| json!({"metadata": {"name": name}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role}, "subjects": subjects});
        create(
            &ROLEBINDINGS,
            "y",
            binding(
                "rb",
                "Role",
                "r",
                json!([{"kind": "User", "name": "alice"}]),
            ),
        );
        create(
            &ROLEBINDINGS,
            "y",
            binding(
                "sa",
                "ClusterRole",
                "c",
                json!([{"kind": "ServiceAccount", "name": "robot"}]),
            ),
        );
        create(
            &ROLEBINDINGS,
            "y",
            binding(
                "ghost",
                "Role",
                "missing",
                json!([{"kind": "User", "name": "alice"}]),
            ),
        );
        create(
            &CLUSTERROLEBINDINGS,
            "",
            binding(
                "crb",
                "ClusterRole",
                "c",
                json!([{"kind": "Group", "name": "devs"}]),
            ),
        );
        let p = Policy::load(&reg.store);
        let held = |u: &User, ns: &str| {
            let mut r: Vec<String> = p
                .rules_for(u, ns)
                .iter()
                .map(|r| r.resources[0].clone())
                .collect();
            r.sort();
            r
        };
        assert_eq!(held(&user("alice", &[]), "y"), ["pods"]);
        assert!(held(&user("alice", &[]), "z").is_empty());
        // A RoleBinding's service account defaults to its namespace.
        assert_eq!(
            held(&user("system:serviceaccount:y:robot", &[]), "y"),
            ["secrets"]
        );
        assert!(held(&user("system:serviceaccount:z:robot", &[]), "y").is_empty());
        // Cluster bindings apply everywhere, and at the cluster scope.
        assert_eq!(held(&user("bob", &["devs"]), ""), ["secrets"]);
        assert_eq!(held(&user("alice", &["devs"]), "y"), ["pods", "secrets"]);
        // The missing role is reported and grants nothing.
        let (found, errors) = p.visit(&user("alice", &[]), "y", |r| r.resources[0] == "nodes");
        assert!(!found);
        assert_eq!(
            errors,
            [r#"role.rbac.authorization.k8s.io "missing" not found"#]
        );
    }
}
