//! The Node authorizer (kube's `plugin/pkg/auth/authorizer/node`), smallest
//! correct version: a user `system:node:<name>` in group `system:nodes`
//! may do what a ferry-node needs, and may read only the Secrets and
//! ConfigMaps, and mint tokens only for the ServiceAccounts, of the pods
//! bound to it. The pod → node graph is kept from the store's pods.
//!
//! NodeRestriction's part that the authorizer can decide is folded in: a
//! node modifies only its own Node and Lease, and writes status of and
//! deletes only pods bound to it. The part that needs the body (the name
//! of a Node or Lease it creates) is [`admit`].

use std::collections::HashMap;

use serde_json::Value;

use super::attributes::{Attributes, Target};
use crate::error::ApiError;

/// The group every node user is in.
pub const NODES_GROUP: &str = "system:nodes";
const NODE_PREFIX: &str = "system:node:";
/// The namespace of node heartbeats.
const LEASE_NAMESPACE: &str = "kube-node-lease";

/// The node a user acts for, when it is a node's identity.
pub fn node_of(user: &crate::auth::User) -> Option<&str> {
    let node = user.name.strip_prefix(NODE_PREFIX)?;
    (!node.is_empty() && user.groups.iter().any(|g| g == NODES_GROUP)).then_some(node)
}

/// An object a pod uses.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Ref {
    Pod(String, String),
    Secret(String, String),
    ConfigMap(String, String),
    ServiceAccount(String, String),
}

#[derive(Debug, Clone)]
struct PodRefs {
    node: String,
    refs: Vec<Ref>,
}

/// Which objects each node's pods use, counted, so a secret two pods use
/// stays reachable until both are gone.
#[derive(Debug, Default)]
pub struct Graph {
    pods: HashMap<(String, String), PodRefs>,
    by_node: HashMap<String, HashMap<Ref, usize>>,
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn items<'a>(v: &'a Value, ptr: &str) -> impl Iterator<Item = &'a Value> {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// The objects a pod uses: itself, its ServiceAccount, the Secrets and
/// ConfigMaps of its volumes (projected sources included), env
/// `valueFrom`, `envFrom` and `imagePullSecrets`.
fn refs_of(ns: &str, pod: &Value) -> Vec<Ref> {
    let secret = |n: &str| Ref::Secret(ns.to_string(), n.to_string());
    let config_map = |n: &str| Ref::ConfigMap(ns.to_string(), n.to_string());
    let mut out = vec![Ref::Pod(
        ns.to_string(),
        crate::object::name(pod).to_string(),
    )];
    if let Some(sa) = str_at(pod, "/spec/serviceAccountName") {
        out.push(Ref::ServiceAccount(ns.to_string(), sa.to_string()));
    }
    for s in items(pod, "/spec/imagePullSecrets") {
        out.extend(str_at(s, "/name").map(secret));
    }
    for vol in items(pod, "/spec/volumes") {
        out.extend(str_at(vol, "/secret/secretName").map(secret));
        out.extend(str_at(vol, "/configMap/name").map(config_map));
        for src in items(vol, "/projected/sources") {
            out.extend(str_at(src, "/secret/name").map(secret));
            out.extend(str_at(src, "/configMap/name").map(config_map));
        }
    }
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        for c in items(pod, &format!("/spec/{list}")) {
            for e in items(c, "/env") {
                out.extend(str_at(e, "/valueFrom/secretKeyRef/name").map(secret));
                out.extend(str_at(e, "/valueFrom/configMapKeyRef/name").map(config_map));
            }
            for e in items(c, "/envFrom") {
                out.extend(str_at(e, "/secretRef/name").map(secret));
                out.extend(str_at(e, "/configMapRef/name").map(config_map));
            }
        }
    }
    out.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    out.dedup();
    out
}

impl Graph {
    /// Takes note of a pod's current state (`None`: it is gone).
    pub fn set_pod(&mut self, ns: &str, name: &str, pod: Option<&Value>) {
        let key = (ns.to_string(), name.to_string());
        if let Some(old) = self.pods.remove(&key)
            && let Some(counts) = self.by_node.get_mut(&old.node)
        {
            for r in old.refs {
                if let Some(n) = counts.get_mut(&r) {
                    *n -= 1;
                    if *n == 0 {
                        counts.remove(&r);
                    }
                }
            }
            if counts.is_empty() {
                self.by_node.remove(&old.node);
            }
        }
        let Some(pod) = pod else { return };
        let Some(node) = str_at(pod, "/spec/nodeName") else {
            return;
        };
        let refs = refs_of(ns, pod);
        let counts = self.by_node.entry(node.to_string()).or_default();
        for r in &refs {
            *counts.entry(r.clone()).or_default() += 1;
        }
        self.pods.insert(
            key,
            PodRefs {
                node: node.to_string(),
                refs,
            },
        );
    }

    /// Whether a pod bound to `node` uses `r`.
    pub fn reaches(&self, node: &str, r: &Ref) -> bool {
        self.by_node.get(node).is_some_and(|m| m.contains_key(r))
    }
}

/// What the Node authorizer says.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Not for the Node authorizer to grant; RBAC decides, and a denial
    /// carries the reason.
    NoOpinion(String),
}

fn no_relationship(node: &str) -> Decision {
    Decision::NoOpinion(format!(
        "no relationship found between node '{node}' and this object"
    ))
}

/// Decides a request of `node` (the user's node name).
pub fn authorize(graph: &Graph, node: &str, attrs: &Attributes) -> Decision {
    let Target::Resource {
        group,
        resource,
        subresource,
        namespace,
        name,
    } = &attrs.target
    else {
        return Decision::NoOpinion(String::new());
    };
    let verb = attrs.verb.as_str();
    let read = matches!(verb, "get" | "list" | "watch");
    let ns = namespace.clone();
    let named = |mk: fn(String, String) -> Ref| -> Decision {
        match name {
            Some(n) if !ns.is_empty() && graph.reaches(node, &mk(ns.clone(), n.clone())) => {
                Decision::Allow
            }
            _ => no_relationship(node),
        }
    };
    match (group.as_str(), resource.as_str(), subresource.as_deref()) {
        ("", "secrets", None) if read => named(Ref::Secret),
        ("", "configmaps", None) if read => named(Ref::ConfigMap),
        ("", "secrets" | "configmaps", _) => {
            Decision::NoOpinion("can only read resources of this type".into())
        }
        ("", "serviceaccounts", Some("token")) if verb == "create" => named(Ref::ServiceAccount),
        ("", "serviceaccounts", Some("token")) => {
            Decision::NoOpinion("can only create tokens for individual service accounts".into())
        }
        ("coordination.k8s.io", "leases", None) => {
            let own = name.as_deref() == Some(node) || (verb == "create" && name.is_none());
            if matches!(verb, "get" | "create" | "update" | "patch" | "delete")
                && ns == LEASE_NAMESPACE
                && own
            {
                Decision::Allow
            } else {
                Decision::NoOpinion(
                    "can only access node lease with the same name as the requesting node".into(),
                )
            }
        }
        ("", "nodes", None | Some("status")) => match verb {
            "get" | "list" | "watch" => Decision::Allow,
            "create" if subresource.is_none() => Decision::Allow,
            "update" | "patch" | "delete" => match name.as_deref() {
                Some(n) if n == node => Decision::Allow,
                Some(n) => Decision::NoOpinion(format!(
                    "node {node:?} is not allowed to modify node {n:?}"
                )),
                None => Decision::NoOpinion(String::new()),
            },
            _ => Decision::NoOpinion(String::new()),
        },
        ("", "pods", None) if read => Decision::Allow,
        ("", "pods", None) if verb == "delete" => named(Ref::Pod),
        ("", "pods", Some("status")) if verb == "get" => Decision::Allow,
        ("", "pods", Some("status")) if matches!(verb, "update" | "patch") => named(Ref::Pod),
        ("" | "events.k8s.io", "events", None) if matches!(verb, "create" | "update" | "patch") => {
            Decision::Allow
        }
        ("", "services" | "endpoints", None) if read => Decision::Allow,
        ("authentication.k8s.io", "tokenreviews", None)
        | ("authorization.k8s.io", "subjectaccessreviews", None)
            if verb == "create" =>
        {
            Decision::Allow
        }
        _ => Decision::NoOpinion(String::new()),
    }
}

/// NodeRestriction's check of what the authorizer cannot see: a node
/// creates only a Node and a Lease of its own name.
pub fn admit(node: &str, kind: &str, obj: &Value) -> Result<(), ApiError> {
    let name = crate::object::name(obj);
    let (resource, group) = match kind {
        "Node" => ("nodes", ""),
        "Lease" => ("leases", "coordination.k8s.io"),
        _ => return Ok(()),
    };
    if name == node {
        return Ok(());
    }
    Err(super::attributes::forbidden_status(
        resource.to_string(),
        Some(name.to_string()),
        group,
        resource.to_string(),
        format!("node {node:?} is not allowed to modify {kind} {name:?}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::User;
    use serde_json::json;

    fn node_user(n: &str) -> User {
        User {
            name: format!("system:node:{n}"),
            groups: vec![NODES_GROUP.into(), "system:authenticated".into()],
        }
    }

    fn ask(graph: &Graph, node: &str, method: &str, path: &str) -> Decision {
        authorize(
            graph,
            node,
            &Attributes::of_request(node_user(node), method, path, None),
        )
    }

    #[test]
    fn a_node_reaches_only_what_its_pods_use() {
        let mut g = Graph::default();
        let pod = json!({
            "metadata": {"name": "p", "namespace": "d"},
            "spec": {
                "nodeName": "n1",
                "serviceAccountName": "sa",
                "imagePullSecrets": [{"name": "pull"}],
                "volumes": [
                    {"name": "a", "secret": {"secretName": "vol"}},
                    {"name": "b", "projected": {"sources": [{"configMap": {"name": "kube-root-ca.crt"}}, {"secret": {"name": "proj"}}]}}
                ],
                "containers": [{"name": "c", "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "env", "key": "k"}}}], "envFrom": [{"configMapRef": {"name": "cm"}}]}]
            }
        });
        g.set_pod("d", "p", Some(&pod));
        for s in ["pull", "vol", "proj", "env"] {
            assert_eq!(
                ask(
                    &g,
                    "n1",
                    "GET",
                    &format!("/api/v1/namespaces/d/secrets/{s}")
                ),
                Decision::Allow,
                "{s}"
            );
            assert_ne!(
                ask(
                    &g,
                    "n2",
                    "GET",
                    &format!("/api/v1/namespaces/d/secrets/{s}")
                ),
                Decision::Allow,
                "{s}"
            );
        }
        for c in ["kube-root-ca.crt", "cm"] {
            assert_eq!(
                ask(
                    &g,
                    "n1",
                    "GET",
                    &format!("/api/v1/namespaces/d/configmaps/{c}")
                ),
                Decision::Allow
            );
        }
        assert_ne!(
            ask(&g, "n1", "GET", "/api/v1/namespaces/d/secrets/other"),
            Decision::Allow
        );
        assert_ne!(
            ask(&g, "n1", "GET", "/api/v1/namespaces/d/secrets"),
            Decision::Allow
        );
        assert_ne!(
            ask(&g, "n1", "DELETE", "/api/v1/namespaces/d/secrets/vol"),
            Decision::Allow
        );
        assert_eq!(
            ask(
                &g,
                "n1",
                "POST",
                "/api/v1/namespaces/d/serviceaccounts/sa/token"
            ),
            Decision::Allow
        );
        assert_ne!(
            ask(
                &g,
                "n1",
                "POST",
                "/api/v1/namespaces/d/serviceaccounts/other/token"
            ),
            Decision::Allow
        );
        assert_eq!(
            ask(&g, "n1", "PATCH", "/api/v1/namespaces/d/pods/p/status"),
            Decision::Allow
        );
        assert_ne!(
            ask(&g, "n2", "PATCH", "/api/v1/namespaces/d/pods/p/status"),
            Decision::Allow
        );
        // The pod moves away (or goes): what it used goes with it.
        g.set_pod("d", "p", None);
        assert_ne!(
            ask(&g, "n1", "GET", "/api/v1/namespaces/d/secrets/vol"),
            Decision::Allow
        );
        assert!(g.by_node.is_empty());
    }

    #[test]
    fn a_node_changes_only_its_own_node_and_lease() {
        let g = Graph::default();
        assert_eq!(
            ask(&g, "n1", "PATCH", "/api/v1/nodes/n1/status"),
            Decision::Allow
        );
        assert_eq!(ask(&g, "n1", "PUT", "/api/v1/nodes/n1"), Decision::Allow);
        assert_eq!(ask(&g, "n1", "GET", "/api/v1/nodes/n2"), Decision::Allow);
        assert_eq!(
            ask(&g, "n1", "PATCH", "/api/v1/nodes/n2/status"),
            Decision::NoOpinion("node \"n1\" is not allowed to modify node \"n2\"".into())
        );
        let lease = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";
        assert_eq!(
            ask(&g, "n1", "PUT", &format!("{lease}/n1")),
            Decision::Allow
        );
        assert_eq!(ask(&g, "n1", "POST", lease), Decision::Allow);
        assert_ne!(
            ask(&g, "n1", "PUT", &format!("{lease}/n2")),
            Decision::Allow
        );
        assert_ne!(
            ask(
                &g,
                "n1",
                "GET",
                "/apis/coordination.k8s.io/v1/namespaces/default/leases/n1"
            ),
            Decision::Allow
        );
        assert!(admit("n1", "Lease", &json!({"metadata": {"name": "n1"}})).is_ok());
        let e = admit("n1", "Node", &json!({"metadata": {"name": "n2"}})).expect_err("other node");
        assert_eq!(e.code, 403);
        assert_eq!(node_of(&node_user("n1")), Some("n1"));
        assert_eq!(
            node_of(&User {
                name: "system:node:n1".into(),
                groups: vec![]
            }),
            None
        );
    }
}
