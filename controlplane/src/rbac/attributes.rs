//! What a request asks to do, as kube-apiserver's `RequestInfoFactory`
//! reads it from the method, path and query (before routing, so a path
//! that does not exist is still authorized first), and the 403 it gets
//! when denied, with kube-apiserver's exact text.

use serde_json::json;

use crate::auth::User;
use crate::error::ApiError;

/// What the request touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Resource {
        /// API group; empty for core.
        group: String,
        /// Plural resource name (`pods`).
        resource: String,
        subresource: Option<String>,
        /// Empty when cluster-scoped.
        namespace: String,
        name: Option<String>,
    },
    NonResource {
        path: String,
    },
}

/// One request to authorize.
#[derive(Debug, Clone)]
pub struct Attributes {
    pub user: User,
    /// get list watch create update patch delete deletecollection, or for a
    /// non-resource path the lowercase method.
    pub verb: String,
    pub target: Target,
}

/// The `metadata.name=X` of a field selector, as list and watch requests
/// for one object name it.
fn selected_name(query: Option<&str>) -> Option<String> {
    let q = query?;
    let selector = url::form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == "fieldSelector")
        .map(|(_, v)| v.into_owned())?;
    selector.split(',').find_map(|term| {
        let (k, v) = term
            .split_once("==")
            .or_else(|| term.split_once('='))
            .filter(|(k, _)| !k.ends_with('!'))?;
        (k.trim() == "metadata.name"
            && !v.is_empty()
            && v != "."
            && v != ".."
            && !v.contains('/')
            && !v.contains('%'))
        .then(|| v.trim().to_string())
    })
}

fn watch_flag(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .any(|(k, v)| k == "watch" && matches!(v.as_ref(), "true" | "1"))
    })
}

impl Attributes {
    /// Reads a request as kube-apiserver's RequestInfoFactory does.
    pub fn of_request(user: User, method: &str, path: &str, query: Option<&str>) -> Self {
        let non_resource = |user: User| Self {
            user,
            verb: method.to_ascii_lowercase(),
            target: Target::NonResource {
                path: path.to_string(),
            },
        };
        let parts: Vec<&str> = path
            .trim_matches('/')
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        if parts.len() < 3 || !matches!(parts[0], "api" | "apis") {
            return non_resource(user);
        }
        let mut rest = &parts[1..];
        let mut group = "";
        if parts[0] == "apis" {
            if rest.len() < 3 {
                return non_resource(user);
            }
            group = rest[0];
            rest = &rest[1..];
        }
        // The version.
        rest = &rest[1..];
        let mut verb = match method {
            "POST" => "create",
            "GET" | "HEAD" => "get",
            "PUT" => "update",
            "PATCH" => "patch",
            "DELETE" => "delete",
            _ => "",
        }
        .to_string();
        if rest.first() == Some(&"watch") {
            verb = "watch".into();
            rest = &rest[1..];
        }
        let mut namespace = String::new();
        if rest.first() == Some(&"namespaces")
            && let Some(ns) = rest.get(1)
        {
            namespace = (*ns).to_string();
            if rest.len() > 2 && !matches!(rest[2], "status" | "finalize") {
                rest = &rest[2..];
            }
        }
        let resource = rest.first().map(|s| (*s).to_string()).unwrap_or_default();
        let mut name = rest.get(1).map(|s| (*s).to_string());
        let subresource = rest.get(2).map(|s| (*s).to_string());
        if name.is_none() && verb == "get" {
            verb = if watch_flag(query) { "watch" } else { "list" }.into();
        }
        if name.is_none() && matches!(verb.as_str(), "list" | "watch") {
            name = selected_name(query);
        }
        if name.is_none() && verb == "delete" {
            verb = "deletecollection".into();
        }
        // A WebSocket exec, attach or port-forward opens with a GET; since
        // 1.31 kube-apiserver asks `create` for it, as for the POST.
        if verb == "get"
            && resource == "pods"
            && matches!(
                subresource.as_deref(),
                Some("exec" | "attach" | "portforward")
            )
        {
            verb = "create".into();
        }
        Self {
            user,
            verb,
            target: Target::Resource {
                group: group.to_string(),
                resource,
                subresource,
                namespace,
                name,
            },
        }
    }

    /// A resource request with these fields (for reviews and checks made
    /// by the server itself).
    pub fn resource(
        user: &User,
        verb: &str,
        group: &str,
        resource: &str,
        namespace: &str,
        name: Option<&str>,
    ) -> Self {
        Self {
            user: user.clone(),
            verb: verb.to_string(),
            target: Target::Resource {
                group: group.to_string(),
                resource: resource.to_string(),
                subresource: None,
                namespace: namespace.to_string(),
                name: name.map(String::from),
            },
        }
    }

    /// The namespace of a namespaced resource request; empty otherwise.
    pub fn namespace(&self) -> &str {
        match &self.target {
            Target::Resource { namespace, .. } => namespace,
            Target::NonResource { .. } => "",
        }
    }

    /// kube-apiserver's `forbiddenMessage`.
    fn denial_text(&self) -> String {
        let user = &self.user.name;
        match &self.target {
            Target::NonResource { path } => {
                format!("User {user:?} cannot {} path {path:?}", self.verb)
            }
            Target::Resource {
                group,
                resource,
                subresource,
                namespace,
                ..
            } => {
                let res = match subresource {
                    Some(s) => format!("{resource}/{s}"),
                    None => resource.clone(),
                };
                let scope = if namespace.is_empty() {
                    "at the cluster scope".to_string()
                } else {
                    format!("in the namespace {namespace:?}")
                };
                format!(
                    "User {user:?} cannot {} resource {res:?} in API group {group:?} {scope}",
                    self.verb
                )
            }
        }
    }

    /// The 403 for this request, as kube-apiserver's `Forbidden` writes
    /// it: `pods "x" is forbidden: User "u" cannot get resource "pods" in
    /// API group "" in the namespace "d"[: reason]`.
    pub fn forbidden(&self, reason: &str) -> ApiError {
        let mut why = self.denial_text();
        if !reason.is_empty() {
            why = format!("{why}: {reason}");
        }
        match &self.target {
            Target::NonResource { .. } => {
                forbidden_status(String::new(), None, "", String::new(), why)
            }
            Target::Resource {
                group,
                resource,
                name,
                ..
            } => forbidden_status(resource.clone(), name.clone(), group, resource.clone(), why),
        }
    }
}

/// apimachinery's `NewForbidden(GroupResource{group, resource}, name,
/// err)`: `<resource>[.<group>] ["<name>"] is forbidden: <why>`, or
/// `forbidden: <why>` without a resource.
pub fn forbidden_status(
    resource: String,
    name: Option<String>,
    group: &str,
    kind: String,
    why: String,
) -> ApiError {
    let qualified = if group.is_empty() {
        resource.clone()
    } else {
        format!("{resource}.{group}")
    };
    let message = match (&name, qualified.is_empty()) {
        (_, true) => format!("forbidden: {why}"),
        (Some(n), false) if !n.is_empty() => format!("{qualified} {n:?} is forbidden: {why}"),
        _ => format!("{qualified} is forbidden: {why}"),
    };
    let mut details = serde_json::Map::new();
    if let Some(n) = name.filter(|n| !n.is_empty()) {
        details.insert("name".into(), json!(n));
    }
    if !group.is_empty() {
        details.insert("group".into(), json!(group));
    }
    if !kind.is_empty() {
        details.insert("kind".into(), json!(kind));
    }
    ApiError::forbidden_with(message, serde_json::Value::Object(details))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u() -> User {
        User {
            name: "alice".into(),
            groups: vec![],
        }
    }

    fn target(method: &str, path: &str, q: Option<&str>) -> (String, Target) {
        let a = Attributes::of_request(u(), method, path, q);
        (a.verb, a.target)
    }

    fn res(g: &str, r: &str, sub: Option<&str>, ns: &str, name: Option<&str>) -> Target {
        Target::Resource {
            group: g.into(),
            resource: r.into(),
            subresource: sub.map(String::from),
            namespace: ns.into(),
            name: name.map(String::from),
        }
    }

    #[test]
    fn requests_are_read_as_kube_apiserver_reads_them() {
        assert_eq!(
            target("GET", "/api/v1/namespaces/y/pods", None),
            ("list".into(), res("", "pods", None, "y", None))
        );
        assert_eq!(
            target("GET", "/api/v1/namespaces/y/pods", Some("watch=true")),
            ("watch".into(), res("", "pods", None, "y", None))
        );
        assert_eq!(
            target("GET", "/api/v1/namespaces/y/pods/p/log", None),
            ("get".into(), res("", "pods", Some("log"), "y", Some("p")))
        );
        assert_eq!(
            target("DELETE", "/apis/apps/v1/namespaces/y/deployments", None),
            (
                "deletecollection".into(),
                res("apps", "deployments", None, "y", None)
            )
        );
        assert_eq!(
            target("PATCH", "/api/v1/nodes/n1/status", None),
            (
                "patch".into(),
                res("", "nodes", Some("status"), "", Some("n1"))
            )
        );
        assert_eq!(
            target("GET", "/api/v1/namespaces/y", None),
            ("get".into(), res("", "namespaces", None, "y", Some("y")))
        );
        assert_eq!(
            target("PUT", "/api/v1/namespaces/y/finalize", None),
            (
                "update".into(),
                res("", "namespaces", Some("finalize"), "y", Some("y"))
            )
        );
        assert_eq!(
            target(
                "GET",
                "/api/v1/namespaces/y/secrets",
                Some("fieldSelector=metadata.name%3Ds1&watch=1")
            ),
            ("watch".into(), res("", "secrets", None, "y", Some("s1")))
        );
        assert_eq!(
            target("GET", "/api/v1/watch/namespaces/y/pods", None),
            ("watch".into(), res("", "pods", None, "y", None))
        );
        assert_eq!(
            target(
                "GET",
                "/api/v1/namespaces/y/pods/p/exec",
                Some("command=sh")
            ),
            (
                "create".into(),
                res("", "pods", Some("exec"), "y", Some("p"))
            )
        );
        for p in [
            "/api",
            "/apis",
            "/api/v1",
            "/apis/apps",
            "/apis/apps/v1",
            "/metrics",
            "/openapi/v2",
        ] {
            assert_eq!(
                target("GET", p, None),
                ("get".into(), Target::NonResource { path: p.into() }),
                "{p}"
            );
        }
    }

    #[test]
    fn denials_read_as_kube_apiserver_writes_them() {
        let a = Attributes::of_request(u(), "GET", "/api/v1/namespaces/y/pods", None);
        let e = a.forbidden("");
        assert_eq!(e.code, 403);
        assert_eq!(
            e.message,
            r#"pods is forbidden: User "alice" cannot list resource "pods" in API group "" in the namespace "y""#
        );
        assert_eq!(e.details, Some(json!({"kind": "pods"})));
        let a = Attributes::of_request(
            u(),
            "GET",
            "/apis/apps/v1/namespaces/y/deployments/d/scale",
            None,
        );
        assert_eq!(
            a.forbidden("").message,
            r#"deployments.apps "d" is forbidden: User "alice" cannot get resource "deployments/scale" in API group "apps" in the namespace "y""#
        );
        let a = Attributes::of_request(u(), "DELETE", "/api/v1/nodes/n1", None);
        assert_eq!(
            a.forbidden("").message,
            r#"nodes "n1" is forbidden: User "alice" cannot delete resource "nodes" in API group "" at the cluster scope"#
        );
        let a = Attributes::of_request(u(), "GET", "/metrics", None);
        let e = a.forbidden("");
        assert_eq!(
            e.message,
            r#"forbidden: User "alice" cannot get path "/metrics""#
        );
        assert_eq!(e.details, Some(json!({})));
    }
}
