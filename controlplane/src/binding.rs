//! The `pods/binding` subresource (and the legacy `bindings` resource): the
//! one way a pending pod gets its node, for the scheduler here and for any
//! other scheduler through the API, with kube-apiserver's BindingREST rules.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::error::{ApiError, Cause};
use crate::object;
use crate::registry::Registry;
use crate::resources::PODS;
use crate::store::{Entry, Mutation};

/// A parsed v1 Binding.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    /// The pod bound (the Binding's own name).
    pub pod: String,
    /// The node it is bound to (`target.name`).
    pub node: String,
    /// Preconditions on the pod.
    pub uid: Option<String>,
    pub resource_version: Option<u64>,
    /// Copied onto the pod.
    pub annotations: Map<String, Value>,
}

impl Binding {
    /// A binding of `pod` to `node` with no preconditions but the pod's UID.
    pub fn new(pod: &str, node: &str, uid: Option<&str>) -> Self {
        Self {
            pod: pod.into(),
            node: node.into(),
            uid: uid.filter(|u| !u.is_empty()).map(String::from),
            resource_version: None,
            annotations: Map::new(),
        }
    }

    /// Reads a Binding body posted in `ns`, to `pods/{url_name}/binding`
    /// when `url_name` is given, else to `bindings`.
    pub fn parse(ns: &str, url_name: Option<&str>, body: &Value) -> Result<Self, ApiError> {
        let str_at = |ptr: &str| body.pointer(ptr).and_then(Value::as_str).unwrap_or("");
        let kind = str_at("/kind");
        let api_version = str_at("/apiVersion");
        if !(kind.is_empty() || kind == "Binding")
            || !(api_version.is_empty() || api_version == "v1")
        {
            return Err(ApiError::bad_request(format!(
                "the body must be a v1 Binding, not {api_version} {kind}"
            )));
        }
        let name = str_at("/metadata/name");
        if url_name.is_some_and(|u| u != name) {
            return Err(ApiError::bad_request(
                "name in URL does not match name in Binding object",
            ));
        }
        let body_ns = str_at("/metadata/namespace");
        if !body_ns.is_empty() && body_ns != ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let mut causes = Vec::new();
        if name.is_empty() {
            causes.push(Cause::required("metadata.name"));
        }
        let target_kind = str_at("/target/kind");
        if !target_kind.is_empty() && target_kind != "Node" {
            causes.push(Cause::unsupported(
                "target.kind",
                target_kind,
                &["Node", "<empty>"],
            ));
        }
        let node = str_at("/target/name");
        if node.is_empty() {
            causes.push(Cause::required("target.name"));
        }
        if !causes.is_empty() {
            let invalid = ApiError::invalid(&PODS, name, causes);
            let message = invalid.message.replacen("Pod ", "Binding ", 1);
            return Err(invalid.with_message(message));
        }
        let resource_version =
            match str_at("/metadata/resourceVersion") {
                "" => None,
                rv => Some(rv.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!("invalid resourceVersion {rv:?}"))
                })?),
            };
        let annotations = body
            .pointer("/metadata/annotations")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        Ok(Self {
            pod: name.into(),
            node: node.into(),
            uid: Some(str_at("/metadata/uid"))
                .filter(|u| !u.is_empty())
                .map(String::from),
            resource_version,
            annotations,
        })
    }
}

/// The answer to a successful binding, as kube-apiserver sends it.
pub fn success() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})
}

fn conflict(pod: &str, why: &str) -> ApiError {
    ApiError::conflict(&PODS, pod, why).with_message(format!(
        "Operation cannot be fulfilled on pods/binding \"{pod}\": {why}"
    ))
}

/// Sets `spec.nodeName` of a pod that has none, merges the binding's
/// annotations and sets `PodScheduled=True`, in one write; a pod that is
/// already bound, being deleted or gated is a conflict (409), as are
/// failed UID and resourceVersion preconditions.
pub fn bind(
    reg: &Registry,
    ns: &str,
    binding: &Binding,
    dry_run: bool,
) -> Result<Arc<Entry>, ApiError> {
    let pod = binding.pod.as_str();
    let stored = reg.store.mutate(&PODS, ns, pod, dry_run, |cur| {
        let Some(cur) = cur else {
            return Err(ApiError::not_found(&PODS, pod));
        };
        if let Some(uid) = &binding.uid
            && uid != object::uid(cur)
        {
            return Err(conflict(
                pod,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    object::uid(cur)
                ),
            ));
        }
        if let Some(rv) = binding.resource_version
            && rv != object::resource_version(cur)
        {
            return Err(conflict(
                pod,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        if object::deletion_timestamp(cur).is_some() {
            return Err(conflict(
                pod,
                &format!("pod {pod} is being deleted, cannot be assigned to a host"),
            ));
        }
        let current = cur
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !current.is_empty() {
            return Err(conflict(
                pod,
                &format!("pod {pod} is already assigned to node \"{current}\""),
            ));
        }
        if cur
            .pointer("/spec/schedulingGates")
            .and_then(Value::as_array)
            .is_some_and(|g| !g.is_empty())
        {
            return Err(conflict(
                pod,
                &format!("pod {pod} has non-empty .spec.schedulingGates"),
            ));
        }
        let mut next = cur.clone();
        next["spec"]["nodeName"] = json!(binding.node);
        if !binding.annotations.is_empty()
            && let Some(meta) = object::metadata_mut(&mut next)
        {
            let ann = meta.entry("annotations").or_insert_with(|| json!({}));
            if !ann.is_object() {
                *ann = json!({});
            }
            if let Some(ann) = ann.as_object_mut() {
                ann.extend(binding.annotations.clone());
            }
        }
        set_condition(&mut next, "PodScheduled", "True", None, None);
        Ok(Mutation::Put(next))
    })?;
    stored.ok_or_else(|| ApiError::not_found(&PODS, pod))
}

/// Sets condition `ty` of a pod's status, as the apiserver's
/// UpdatePodCondition does: the transition time moves only when the status
/// does. Returns whether anything changed.
pub fn set_condition(
    pod: &mut Value,
    ty: &str,
    status: &str,
    reason: Option<&str>,
    message: Option<&str>,
) -> bool {
    if !pod.get("status").is_some_and(Value::is_object) {
        pod["status"] = json!({});
    }
    let conditions = &mut pod["status"]["conditions"];
    if !conditions.is_array() {
        *conditions = json!([]);
    }
    let Some(list) = conditions.as_array_mut() else {
        return false;
    };
    let mut wanted = json!({"type": ty, "status": status, "lastProbeTime": null});
    if let Some(r) = reason {
        wanted["reason"] = json!(r);
    }
    if let Some(m) = message {
        wanted["message"] = json!(m);
    }
    match list.iter_mut().find(|c| c["type"] == ty) {
        Some(c) => {
            let same = c["status"] == status
                && c.get("reason").and_then(Value::as_str) == reason
                && c.get("message").and_then(Value::as_str) == message;
            if same {
                return false;
            }
            wanted["lastTransitionTime"] = if c["status"] == status {
                c.get("lastTransitionTime").cloned().unwrap_or(Value::Null)
            } else {
                json!(object::now())
            };
            *c = wanted;
        }
        None => {
            wanted["lastTransitionTime"] = json!(object::now());
            list.push(wanted);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::WriteOptions;

    fn pod(reg: &Registry, name: &str) -> Value {
        let p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
        reg.create(&PODS, "default", p, &WriteOptions::default())
            .expect("create")
            .value()
            .expect("parse")
    }

    #[test]
    fn binds_once() {
        let reg = Registry::in_memory().expect("registry");
        let p = pod(&reg, "a");
        let body = json!({"apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": "a", "annotations": {"x": "y"}}, "target": {"kind": "Node", "name": "n1"}});
        let b = Binding::parse("default", Some("a"), &body).expect("parse");
        let bound = bind(&reg, "default", &b, false)
            .expect("bind")
            .value()
            .expect("json");
        assert_eq!(bound["spec"]["nodeName"], "n1");
        assert_eq!(bound["metadata"]["annotations"]["x"], "y");
        let cond = bound["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "PodScheduled"))
            .expect("condition");
        assert_eq!(cond["status"], "True");
        assert_eq!(bound["metadata"]["uid"], p["metadata"]["uid"]);

        let again = bind(&reg, "default", &Binding::new("a", "n2", None), false)
            .expect_err("second binding");
        assert_eq!(again.code, 409);
        assert!(
            again
                .message
                .contains("pod a is already assigned to node \"n1\""),
            "{}",
            again.message
        );
    }

    #[test]
    fn preconditions_and_validation() {
        let reg = Registry::in_memory().expect("registry");
        pod(&reg, "b");
        let err = bind(
            &reg,
            "default",
            &Binding::new("b", "n1", Some("other")),
            false,
        )
        .expect_err("uid mismatch");
        assert_eq!(err.code, 409);
        let err =
            bind(&reg, "default", &Binding::new("nope", "n1", None), false).expect_err("no pod");
        assert_eq!(err.code, 404);
        let bad = json!({"metadata": {"name": "b"}, "target": {"kind": "Pod"}});
        let err = Binding::parse("default", Some("b"), &bad).expect_err("invalid");
        assert_eq!(err.code, 422);
        assert!(
            err.message.contains("target.name: Required value"),
            "{}",
            err.message
        );
        assert!(err.message.contains("target.kind"), "{}", err.message);
        let err = Binding::parse(
            "default",
            Some("c"),
            &json!({"metadata": {"name": "b"}, "target": {"name": "n"}}),
        )
        .expect_err("name mismatch");
        assert_eq!(err.code, 400);
        // Dry run binds nothing.
        bind(&reg, "default", &Binding::new("b", "n1", None), true).expect("dry run");
        let stored = reg
            .store
            .get(&PODS, "default", "b")
            .expect("get")
            .expect("pod");
        assert!(stored.pointer("/spec/nodeName").is_none());
    }

    #[test]
    fn condition_transitions() {
        let mut p = json!({});
        assert!(set_condition(
            &mut p,
            "PodScheduled",
            "False",
            Some("Unschedulable"),
            Some("m")
        ));
        assert!(!set_condition(
            &mut p,
            "PodScheduled",
            "False",
            Some("Unschedulable"),
            Some("m")
        ));
        assert!(set_condition(&mut p, "PodScheduled", "True", None, None));
        let c = &p["status"]["conditions"];
        assert_eq!(c.as_array().map(Vec::len), Some(1));
        assert_eq!(c[0]["status"], "True");
        assert!(c[0].get("reason").is_none());
    }
}
