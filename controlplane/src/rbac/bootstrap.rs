//! The default roles and bindings kube-apiserver creates at start
//! (`plugin/pkg/auth/authorizer/rbac/bootstrappolicy`), labelled
//! `kubernetes.io/bootstrapping: rbac-defaults` and annotated
//! `rbac.authorization.kubernetes.io/autoupdate: "true"`.
//!
//! Each is created when missing. One that exists is reconciled only while
//! it keeps the autoupdate annotation at `"true"`: missing rules and
//! subjects are added back, nothing the user added is removed. A user who
//! wants a default object left alone sets the annotation to `"false"`.
//! A failure (a malformed stored object, a refused write) is logged and
//! the rest goes on: it never stops the server from starting.

use serde_json::{Value, json};

use super::rules::Rule;
use crate::registry::{Registry, WriteOptions};
use crate::resources::{CLUSTERROLEBINDINGS, CLUSTERROLES, Resource};

const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";
const GROUP: &str = "rbac.authorization.k8s.io";

fn meta(name: &str) -> Value {
    json!({
        "name": name,
        "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
        "annotations": {AUTOUPDATE: "true"},
    })
}

fn res_rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Value {
    json!({"verbs": verbs, "apiGroups": groups, "resources": resources})
}

fn url_rule(verbs: &[&str], urls: &[&str]) -> Value {
    json!({"verbs": verbs, "nonResourceURLs": urls})
}

const READ: &[&str] = &["get", "list", "watch"];

/// The default ClusterRoles.
pub fn cluster_roles() -> Vec<Value> {
    let mut roles = system_roles();
    roles.extend(user_facing_roles());
    roles
}

const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
/// Every verb of a stored kind (upstream's `admin`/`edit` spell them out).
const ALL_VERBS: &[&str] = crate::api::discovery::VERBS;

/// `admin`, `edit` and `view`, as upstream: aggregated (by the
/// `clusterrole-aggregation` controller) from the
/// `system:aggregate-to-{admin,edit,view}` roles, whose labels chain them
/// (what view may, edit and admin may too).
fn user_facing_roles() -> Vec<Value> {
    let aggregated = |name: &str| {
        let label = format!("rbac.authorization.k8s.io/aggregate-to-{name}");
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": meta(name),
            "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {label: "true"}}]},
            "rules": [],
        })
    };
    let part = |to: &[&str], rules: Vec<Value>| {
        let mut m = meta(&format!("system:aggregate-to-{}", to[0]));
        for t in to {
            m["labels"][format!("rbac.authorization.k8s.io/aggregate-to-{t}")] = json!("true");
        }
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": m, "rules": rules})
    };
    vec![
        aggregated("admin"),
        aggregated("edit"),
        aggregated("view"),
        part(
            &["admin"],
            vec![
                res_rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["localsubjectaccessreviews"],
                ),
                res_rule(
                    ALL_VERBS,
                    &["rbac.authorization.k8s.io"],
                    &["rolebindings", "roles"],
                ),
            ],
        ),
        part(
            &["edit", "admin"],
            vec![
                res_rule(&["impersonate"], &[""], &["serviceaccounts"]),
                res_rule(
                    WRITE,
                    &[""],
                    &[
                        "pods",
                        "pods/attach",
                        "pods/proxy",
                        "pods/exec",
                        "pods/portforward",
                    ],
                ),
                res_rule(
                    &["create"],
                    &[""],
                    &["pods/eviction", "serviceaccounts/token"],
                ),
                res_rule(
                    WRITE,
                    &[""],
                    &[
                        "configmaps",
                        "events",
                        "persistentvolumeclaims",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "secrets",
                        "serviceaccounts",
                        "services",
                        "services/proxy",
                    ],
                ),
                res_rule(
                    WRITE,
                    &["apps"],
                    &[
                        "daemonsets",
                        "deployments",
                        "deployments/rollback",
                        "deployments/scale",
                        "replicasets",
                        "replicasets/scale",
                        "statefulsets",
                        "statefulsets/scale",
                    ],
                ),
                res_rule(WRITE, &["autoscaling"], &["horizontalpodautoscalers"]),
                res_rule(WRITE, &["batch"], &["cronjobs", "jobs"]),
                res_rule(
                    WRITE,
                    &["networking.k8s.io"],
                    &["ingresses", "networkpolicies"],
                ),
                res_rule(WRITE, &["policy"], &["poddisruptionbudgets"]),
                res_rule(WRITE, &["coordination.k8s.io"], &["leases"]),
                res_rule(
                    READ,
                    &[""],
                    &[
                        "pods/attach",
                        "pods/proxy",
                        "pods/exec",
                        "pods/portforward",
                        "secrets",
                        "services/proxy",
                    ],
                ),
            ],
        ),
        part(
            &["view", "edit", "admin"],
            vec![
                res_rule(
                    READ,
                    &[""],
                    &[
                        "pods",
                        "pods/log",
                        "pods/status",
                        "configmaps",
                        "endpoints",
                        "persistentvolumeclaims",
                        "persistentvolumeclaims/status",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "replicationcontrollers/status",
                        "serviceaccounts",
                        "services",
                        "services/status",
                        "bindings",
                        "events",
                        "limitranges",
                        "namespaces/status",
                        "resourcequotas",
                        "resourcequotas/status",
                        "namespaces",
                    ],
                ),
                res_rule(READ, &["discovery.k8s.io"], &["endpointslices"]),
                res_rule(
                    READ,
                    &["apps"],
                    &[
                        "controllerrevisions",
                        "daemonsets",
                        "daemonsets/status",
                        "deployments",
                        "deployments/scale",
                        "deployments/status",
                        "replicasets",
                        "replicasets/scale",
                        "replicasets/status",
                        "statefulsets",
                        "statefulsets/scale",
                        "statefulsets/status",
                    ],
                ),
                res_rule(READ, &["autoscaling"], &["horizontalpodautoscalers"]),
                res_rule(READ, &["batch"], &["cronjobs", "jobs"]),
                res_rule(READ, &["policy"], &["poddisruptionbudgets"]),
                res_rule(
                    READ,
                    &["networking.k8s.io"],
                    &["ingresses", "networkpolicies"],
                ),
                res_rule(READ, &["coordination.k8s.io"], &["leases"]),
            ],
        ),
    ]
}

/// The `system:` ClusterRoles.
fn system_roles() -> Vec<Value> {
    let role = |name: &str, rules: Vec<Value>| json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": meta(name), "rules": rules});
    vec![
        role(
            "cluster-admin",
            vec![res_rule(&["*"], &["*"], &["*"]), url_rule(&["*"], &["*"])],
        ),
        role(
            "system:discovery",
            vec![url_rule(
                &["get"],
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
            )],
        ),
        role(
            "system:basic-user",
            vec![
                res_rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
                res_rule(
                    &["create"],
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                ),
            ],
        ),
        // The OIDC discovery of ServiceAccount tokens, for every
        // ServiceAccount (upstream binds it so since 1.20).
        role(
            "system:service-account-issuer-discovery",
            vec![url_rule(
                &["get"],
                &[
                    "/.well-known/openid-configuration",
                    "/.well-known/openid-configuration/",
                    "/openid/v1/jwks",
                    "/openid/v1/jwks/",
                ],
            )],
        ),
        role(
            "system:public-info-viewer",
            vec![url_rule(
                &["get"],
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
            )],
        ),
        role(
            "system:monitoring",
            vec![url_rule(
                &["get"],
                &[
                    "/metrics",
                    "/metrics/slis",
                    "/livez",
                    "/readyz",
                    "/healthz",
                    "/livez/*",
                    "/readyz/*",
                    "/healthz/*",
                ],
            )],
        ),
        // What the Node authorizer grants beyond the graph-scoped objects;
        // its binding has no subjects (the Node authorizer does the work).
        role(
            "system:node",
            vec![
                res_rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                res_rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews", "localsubjectaccessreviews"],
                ),
                res_rule(READ, &[""], &["services", "endpoints"]),
                res_rule(&["create", "get", "list", "watch"], &[""], &["nodes"]),
                res_rule(&["update", "patch"], &[""], &["nodes/status"]),
                res_rule(&["update", "patch"], &[""], &["nodes"]),
                res_rule(
                    &["create", "update", "patch"],
                    &["", "events.k8s.io"],
                    &["events"],
                ),
                res_rule(READ, &[""], &["pods"]),
                res_rule(&["create", "delete"], &[""], &["pods"]),
                res_rule(&["update", "patch"], &[""], &["pods/status"]),
                res_rule(&["create"], &[""], &["serviceaccounts/token"]),
                res_rule(
                    &["get", "create", "update", "patch", "delete"],
                    &["coordination.k8s.io"],
                    &["leases"],
                ),
            ],
        ),
        role(
            "system:node-proxier",
            vec![
                res_rule(&["list", "watch"], &[""], &["services", "endpoints"]),
                res_rule(READ, &[""], &["nodes"]),
                res_rule(
                    &["create", "patch", "update"],
                    &["", "events.k8s.io"],
                    &["events"],
                ),
                res_rule(
                    &["list", "watch"],
                    &["discovery.k8s.io"],
                    &["endpointslices"],
                ),
            ],
        ),
    ]
}

/// The default ClusterRoleBindings.
pub fn cluster_role_bindings() -> Vec<Value> {
    let group = |g: &str| json!({"kind": "Group", "apiGroup": GROUP, "name": g});
    let binding = |name: &str, subjects: Vec<Value>| {
        let mut b = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": meta(name),
            "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": name},
        });
        if !subjects.is_empty() {
            b["subjects"] = json!(subjects);
        }
        b
    };
    vec![
        binding("cluster-admin", vec![group(super::MASTERS_GROUP)]),
        binding("system:discovery", vec![group(super::AUTHENTICATED_GROUP)]),
        binding("system:basic-user", vec![group(super::AUTHENTICATED_GROUP)]),
        binding(
            "system:public-info-viewer",
            vec![
                group(super::AUTHENTICATED_GROUP),
                group(super::UNAUTHENTICATED_GROUP),
            ],
        ),
        binding("system:monitoring", vec![group("system:monitoring")]),
        binding(
            "system:service-account-issuer-discovery",
            vec![group(crate::serviceaccount::ALL_GROUP)],
        ),
        binding("system:node", vec![]),
        binding(
            "system:node-proxier",
            vec![json!({"kind": "User", "apiGroup": GROUP, "name": "system:kube-proxy"})],
        ),
    ]
}

/// What `current` lacks of `wanted` in the list at `field`: the items to
/// append (rules compared as rules, subjects as values).
fn lacking(field: &str, current: &Value, wanted: &Value) -> Vec<Value> {
    let have: Vec<&Value> = current
        .get(field)
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let want = wanted
        .get(field)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    want.into_iter()
        .filter(|w| {
            !have.iter().any(|h| {
                if field == "rules" {
                    Rule::from_json(h) == Rule::from_json(w)
                } else {
                    *h == w
                }
            })
        })
        .collect()
}

fn ensure(registry: &Registry, res: &'static Resource, wanted: Value, field: &str) {
    let name = crate::object::name(&wanted).to_string();
    let current = match registry.store.get(res, "", &name) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(kind = res.kind, %name, error = %e, "reading a default RBAC object");
            return;
        }
    };
    let result = match current {
        None => registry
            .create(res, "", wanted, &WriteOptions::default())
            .map(|_| ()),
        Some(cur) => {
            let auto = cur
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(AUTOUPDATE))
                .and_then(Value::as_str)
                == Some("true");
            let missing = lacking(field, &cur, &wanted);
            if !auto || missing.is_empty() {
                return;
            }
            if field == "subjects" && cur.get("roleRef") != wanted.get("roleRef") {
                tracing::warn!(kind = res.kind, %name, "a default binding refers to another role; left as it is");
                return;
            }
            let mut next = (*cur).clone();
            let mut list = next
                .get(field)
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            list.extend(missing);
            next[field] = json!(list);
            tracing::info!(kind = res.kind, %name, "restoring what a default RBAC object lacks");
            registry
                .update(res, "", &name, None, next, &WriteOptions::default())
                .map(|_| ())
        }
    };
    if let Err(e) = result {
        tracing::error!(kind = res.kind, %name, error = %e, "could not create or reconcile a default RBAC object; going on without it");
    }
}

/// Creates the default roles and bindings, and reconciles those still
/// marked autoupdate. Never fails: each problem is logged.
pub fn run(registry: &Registry) {
    for role in cluster_roles() {
        ensure(registry, &CLUSTERROLES, role, "rules");
    }
    for binding in cluster_role_bindings() {
        ensure(registry, &CLUSTERROLEBINDINGS, binding, "subjects");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_created_once_and_restored_only_while_autoupdate() {
        let reg = Registry::in_memory().expect("registry");
        run(&reg);
        let admin = reg
            .store
            .get(&CLUSTERROLES, "", "cluster-admin")
            .expect("get")
            .expect("cluster-admin");
        assert_eq!(
            admin["metadata"]["labels"]["kubernetes.io/bootstrapping"],
            "rbac-defaults"
        );
        for b in cluster_role_bindings() {
            let name = crate::object::name(&b);
            assert!(
                reg.store
                    .get(&CLUSTERROLEBINDINGS, "", name)
                    .expect("get")
                    .is_some(),
                "{name}"
            );
        }
        // A rule removed from an autoupdate role comes back...
        let mut cur = (*reg
            .store
            .get(&CLUSTERROLES, "", "system:discovery")
            .expect("get")
            .expect("role"))
        .clone();
        cur["rules"] = json!([]);
        reg.update(
            &CLUSTERROLES,
            "",
            "system:discovery",
            None,
            cur.clone(),
            &WriteOptions::default(),
        )
        .expect("strip");
        run(&reg);
        let back = reg
            .store
            .get(&CLUSTERROLES, "", "system:discovery")
            .expect("get")
            .expect("role");
        assert_eq!(back["rules"].as_array().map(Vec::len), Some(1));
        // ...but not once the user turned autoupdate off.
        let mut cur = (*back).clone();
        cur["rules"] = json!([]);
        cur["metadata"]["annotations"][AUTOUPDATE] = json!("false");
        reg.update(
            &CLUSTERROLES,
            "",
            "system:discovery",
            None,
            cur,
            &WriteOptions::default(),
        )
        .expect("strip");
        run(&reg);
        let kept = reg
            .store
            .get(&CLUSTERROLES, "", "system:discovery")
            .expect("get")
            .expect("role");
        assert_eq!(kept["rules"], json!([]));
    }
}
