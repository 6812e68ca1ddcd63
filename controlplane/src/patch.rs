//! The patch types of the PATCH verb: JSON patch (RFC 6902), JSON merge patch
//! (RFC 7386) and strategic merge patch with the list merge keys of the
//! served kinds, as their Go types declare them.

use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::limits::{self, Limits};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Option<Self> {
        match ct.split(';').next().unwrap_or("").trim() {
            "application/json-patch+json" => Some(Self::Json),
            "application/merge-patch+json" => Some(Self::Merge),
            "application/strategic-merge-patch+json" => Some(Self::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Some(Self::Apply),
            _ => None,
        }
    }
}

/// How a list field merges under a strategic merge patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListStrategy {
    /// The patch's list replaces the stored one.
    Atomic,
    /// Elements are maps merged by this key.
    MergeKey(&'static str),
    /// A list of scalars merged as a set.
    Set,
}

/// The list strategy of the field at `path` (field names from the object
/// root, list indices left out) in `kind`.
fn list_strategy(kind: &str, path: &[&str]) -> ListStrategy {
    use ListStrategy::*;
    // A workload's pod template merges as a pod does.
    if let (
        "Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet",
        ["spec", "template", rest @ ..],
    ) = (kind, path)
        && !rest.is_empty()
    {
        return list_strategy("Pod", rest);
    }
    match path {
        ["metadata", "ownerReferences"] => MergeKey("uid"),
        ["metadata", "finalizers"] => Set,
        _ => match (kind, path) {
            (
                "Pod",
                [
                    "spec",
                    "containers" | "initContainers" | "ephemeralContainers",
                ],
            ) => MergeKey("name"),
            (
                "Pod",
                [
                    "spec",
                    "containers" | "initContainers" | "ephemeralContainers",
                    "ports",
                ],
            ) => MergeKey("containerPort"),
            (
                "Pod",
                [
                    "spec",
                    "containers" | "initContainers" | "ephemeralContainers",
                    "env",
                ],
            ) => MergeKey("name"),
            (
                "Pod",
                [
                    "spec",
                    "containers" | "initContainers" | "ephemeralContainers",
                    "volumeMounts",
                ],
            ) => MergeKey("mountPath"),
            (
                "Pod",
                [
                    "spec",
                    "containers" | "initContainers" | "ephemeralContainers",
                    "volumeDevices",
                ],
            ) => MergeKey("devicePath"),
            (
                "Pod",
                [
                    "spec",
                    "volumes" | "imagePullSecrets" | "resourceClaims" | "schedulingGates",
                ],
            ) => MergeKey("name"),
            ("Pod", ["spec", "hostAliases"]) => MergeKey("ip"),
            ("Pod", ["spec", "topologySpreadConstraints"]) => MergeKey("topologyKey"),
            ("Pod", ["status", "conditions"]) => MergeKey("type"),
            ("Pod", ["status", "podIPs" | "hostIPs"]) => MergeKey("ip"),
            ("Service", ["spec", "ports"]) => MergeKey("port"),
            (
                "Service" | "Namespace" | "Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet",
                ["status", "conditions"],
            ) => MergeKey("type"),
            ("Service", ["status", "loadBalancer", "ingress", "ports"]) => Atomic,
            ("Node", ["status", "conditions" | "addresses"]) => MergeKey("type"),
            ("Node", ["spec", "podCIDRs"]) => Set,
            ("Namespace", ["spec", "finalizers"]) => Atomic,
            _ => Atomic,
        },
    }
}

fn bad(msg: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(msg.to_string())
}

/// Applies `body` of type `ty` to `current`, within `limits`: a JSON patch
/// may not have more operations than allowed nor copy more bytes, and no
/// operation may nest the document deeper than objects may be (checked as
/// it goes, so a patch cannot build a value too deep to even drop safely).
pub fn apply(
    kind: &str,
    current: &Value,
    ty: PatchType,
    body: &[u8],
    limits: &Limits,
) -> Result<Value, ApiError> {
    match ty {
        PatchType::Json => {
            let patch: json_patch::Patch = serde_json::from_slice(body).map_err(bad)?;
            let mut doc = current.clone();
            json_patch_bounded(&mut doc, &patch.0, limits)?;
            Ok(doc)
        }
        PatchType::Merge => {
            let patch: Value = serde_json::from_slice(body).map_err(bad)?;
            if !patch.is_object() {
                return Err(bad("merge patch must be a JSON object"));
            }
            let mut doc = current.clone();
            json_patch::merge(&mut doc, &patch);
            Ok(doc)
        }
        PatchType::Strategic => {
            let patch: Value = serde_json::from_slice(body).map_err(bad)?;
            let Value::Object(patch) = patch else {
                return Err(bad("strategic merge patch must be a JSON object"));
            };
            let mut doc = current.clone();
            let Value::Object(target) = &mut doc else {
                return Err(ApiError::internal("stored object is not a JSON object"));
            };
            merge_map(kind, &mut Vec::new(), target, patch)?;
            Ok(doc)
        }
        PatchType::Apply => Err(ApiError::unsupported_media_type(
            "application/apply-patch+yaml",
        )),
    }
}

/// Applies a JSON patch one operation at a time, accounting what `copy`
/// operations copy and bounding how deep the document may get. The caller
/// patches a copy, so a failed operation leaves nothing to undo.
fn json_patch_bounded(
    doc: &mut Value,
    ops: &[json_patch::PatchOperation],
    limits: &Limits,
) -> Result<(), ApiError> {
    use json_patch::PatchOperation as Op;
    if ops.len() > limits.max_patch_operations {
        return Err(ApiError::too_large(format!(
            "The allowed number of operations in a JSON patch is {}, but the patch has {} operations (--max-json-patch-operations)",
            limits.max_patch_operations,
            ops.len()
        )));
    }
    // An upper bound of the document's depth, kept as operations apply.
    let mut depth = limits::shape(doc).depth;
    let mut copied = 0usize;
    for (i, op) in ops.iter().enumerate() {
        let placed = match op {
            Op::Add(o) => o.path.count() + limits::shape(&o.value).depth,
            Op::Replace(o) => o.path.count() + limits::shape(&o.value).depth,
            Op::Copy(o) => {
                let source = doc.pointer(o.from.as_str()).map(limits::shape);
                let source = source.unwrap_or_default();
                copied = copied.saturating_add(source.bytes);
                if copied > limits.max_patch_copy_bytes {
                    return Err(ApiError::too_large(format!(
                        "JSON patch operation {i} would bring the bytes copied by the patch to {copied}, more than the limit of {} (--max-json-patch-copy-bytes)",
                        limits.max_patch_copy_bytes
                    )));
                }
                o.path.count() + source.depth
            }
            // What moves is at most as deep as the document below `from`.
            Op::Move(o) => o.path.count() + depth.saturating_sub(o.from.count()),
            Op::Remove(_) | Op::Test(_) => 0,
        };
        depth = depth.max(placed);
        if depth > limits.max_depth {
            return Err(ApiError::invalid_patch(format!(
                "JSON patch operation {i} would nest the object {depth} levels deep, more than the limit of {} (--max-object-depth)",
                limits.max_depth
            )));
        }
        json_patch::patch_unsafe(doc, std::slice::from_ref(op)).map_err(|e| {
            ApiError::invalid_patch(format!(
                "the server rejected our request due to an error in our request: {e}"
            ))
        })?;
    }
    Ok(())
}

const ORDER_PREFIX: &str = "$setElementOrder/";
const DELETE_PRIMITIVE_PREFIX: &str = "$deleteFromPrimitiveList/";

fn merge_map(
    kind: &str,
    path: &mut Vec<String>,
    target: &mut Map<String, Value>,
    mut patch: Map<String, Value>,
) -> Result<(), ApiError> {
    match patch.remove("$patch").as_ref().and_then(Value::as_str) {
        Some("replace") => {
            *target = patch
                .into_iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .collect();
            return Ok(());
        }
        Some("delete") => {
            target.clear();
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => return Err(bad(format!("unknown patch type: {other}"))),
    }
    if let Some(Value::Array(keep)) = patch.remove("$retainKeys") {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        target.retain(|k, _| keep.contains(&k.as_str()));
    }
    let mut orders = Vec::new();
    for (key, value) in patch {
        if let Some(field) = key.strip_prefix(ORDER_PREFIX) {
            orders.push((field.to_string(), value));
            continue;
        }
        if let Some(field) = key.strip_prefix(DELETE_PRIMITIVE_PREFIX) {
            if let (Some(Value::Array(list)), Value::Array(remove)) = (target.get_mut(field), value)
            {
                list.retain(|v| !remove.contains(v));
            }
            continue;
        }
        if key.starts_with('$') {
            continue;
        }
        path.push(key.clone());
        match value {
            Value::Null => {
                target.remove(&key);
            }
            Value::Object(p) => {
                if p.get("$patch").and_then(Value::as_str) == Some("delete") {
                    target.remove(&key);
                } else {
                    let slot = target
                        .entry(key.clone())
                        .or_insert_with(|| Value::Object(Map::new()));
                    if !slot.is_object() {
                        *slot = Value::Object(Map::new());
                    }
                    if let Value::Object(t) = slot {
                        merge_map(kind, path, t, p)?;
                    }
                }
            }
            Value::Array(items) => {
                let names: Vec<&str> = path.iter().map(String::as_str).collect();
                let strategy = list_strategy(kind, &names);
                let current = target.remove(&key);
                let merged = merge_list(kind, path, strategy, current, items)?;
                target.insert(key.clone(), merged);
            }
            scalar => {
                target.insert(key.clone(), scalar);
            }
        }
        path.pop();
    }
    for (field, order) in orders {
        let names: Vec<&str> = path
            .iter()
            .map(String::as_str)
            .chain([field.as_str()])
            .collect();
        let strategy = list_strategy(kind, &names);
        if let (Some(Value::Array(list)), Value::Array(order)) = (target.get_mut(&field), order) {
            reorder(list, &order, strategy);
        }
    }
    Ok(())
}

fn merge_list(
    kind: &str,
    path: &mut Vec<String>,
    strategy: ListStrategy,
    current: Option<Value>,
    items: Vec<Value>,
) -> Result<Value, ApiError> {
    let replace = items
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"));
    let mut list = match current {
        Some(Value::Array(l)) if !replace => l,
        _ => Vec::new(),
    };
    match strategy {
        ListStrategy::Atomic => Ok(Value::Array(
            items
                .into_iter()
                .filter(|i| i.get("$patch").is_none())
                .collect(),
        )),
        ListStrategy::Set => {
            for item in items {
                if !list.contains(&item) {
                    list.push(item);
                }
            }
            Ok(Value::Array(list))
        }
        ListStrategy::MergeKey(mk) => {
            for item in items {
                let Value::Object(mut patch) = item else {
                    return Err(bad(format!(
                        "list items of {} must be objects",
                        path.join(".")
                    )));
                };
                let directive = patch
                    .get("$patch")
                    .and_then(Value::as_str)
                    .map(String::from);
                if directive.as_deref() == Some("replace") {
                    continue;
                }
                let Some(key) = patch.get(mk).cloned() else {
                    return Err(bad(format!(
                        "map: {patch:?} does not contain declared merge key: {mk}"
                    )));
                };
                let pos = list.iter().position(|e| e.get(mk) == Some(&key));
                match (directive.as_deref(), pos) {
                    (Some("delete"), Some(i)) => {
                        list.remove(i);
                    }
                    (Some("delete"), None) => {}
                    (_, Some(i)) => {
                        if let Value::Object(t) = &mut list[i] {
                            patch.remove("$patch");
                            merge_map(kind, path, t, patch)?;
                        }
                    }
                    (_, None) => {
                        patch.remove("$patch");
                        let mut fresh = Map::new();
                        merge_map(kind, path, &mut fresh, patch)?;
                        list.push(Value::Object(fresh));
                    }
                }
            }
            Ok(Value::Array(list))
        }
    }
}

/// Orders `list` as `$setElementOrder` says; elements it does not name keep
/// their relative order after the named ones.
fn reorder(list: &mut Vec<Value>, order: &[Value], strategy: ListStrategy) {
    let key_of = |v: &Value| -> Value {
        match strategy {
            ListStrategy::MergeKey(mk) => v.get(mk).cloned().unwrap_or(Value::Null),
            _ => v.clone(),
        }
    };
    let order_key = |o: &Value| -> Value {
        match strategy {
            ListStrategy::MergeKey(mk) => o.get(mk).cloned().unwrap_or(Value::Null),
            _ => o.clone(),
        }
    };
    let wanted: Vec<Value> = order.iter().map(order_key).collect();
    let mut named: Vec<(usize, Value)> = Vec::new();
    let mut rest = Vec::new();
    for v in list.drain(..) {
        match wanted.iter().position(|w| *w == key_of(&v)) {
            Some(i) => named.push((i, v)),
            None => rest.push(v),
        }
    }
    named.sort_by_key(|(i, _)| *i);
    list.extend(named.into_iter().map(|(_, v)| v));
    list.extend(rest);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smp(kind: &str, cur: Value, patch: Value) -> Value {
        apply(
            kind,
            &cur,
            PatchType::Strategic,
            patch.to_string().as_bytes(),
            &Limits::default(),
        )
        .expect("patch")
    }

    #[test]
    fn service_ports_merge_by_port() {
        let cur = json!({"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}]}});
        let out = smp(
            "Service",
            cur,
            json!({"spec": {"ports": [{"port": 443, "targetPort": 8443}, {"port": 53, "name": "dns"}]}}),
        );
        assert_eq!(
            out["spec"]["ports"],
            json!([{"port": 80, "name": "http"}, {"port": 443, "name": "https", "targetPort": 8443}, {"port": 53, "name": "dns"}])
        );
    }

    #[test]
    fn directives() {
        let cur = json!({"metadata": {"finalizers": ["a", "b"], "labels": {"x": "1", "y": "2"}},
                         "spec": {"ports": [{"port": 80}, {"port": 81}], "selector": {"app": "a"}}});
        let out = smp(
            "Service",
            cur.clone(),
            json!({
                "metadata": {"$deleteFromPrimitiveList/finalizers": ["a"], "labels": {"x": null}},
                "spec": {"ports": [{"port": 80, "$patch": "delete"}], "selector": {"$patch": "replace", "app": "b"}}
            }),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["b"]));
        assert_eq!(out["metadata"]["labels"], json!({"y": "2"}));
        assert_eq!(out["spec"]["ports"], json!([{"port": 81}]));
        assert_eq!(out["spec"]["selector"], json!({"app": "b"}));
        let out = smp(
            "Service",
            cur,
            json!({"spec": {"$setElementOrder/ports": [{"port": 81}, {"port": 80}]}}),
        );
        assert_eq!(out["spec"]["ports"], json!([{"port": 81}, {"port": 80}]));
    }

    #[test]
    fn atomic_lists_replace_and_json_patch_tests() {
        let cur = json!({"spec": {"externalIPs": ["1.1.1.1"]}});
        let out = smp(
            "Service",
            cur.clone(),
            json!({"spec": {"externalIPs": ["2.2.2.2"]}}),
        );
        assert_eq!(out["spec"]["externalIPs"], json!(["2.2.2.2"]));
        let jp = json!([{"op": "test", "path": "/spec/externalIPs/0", "value": "9.9.9.9"}]);
        let err = apply(
            "Service",
            &cur,
            PatchType::Json,
            jp.to_string().as_bytes(),
            &Limits::default(),
        )
        .expect_err("test op fails");
        assert_eq!(err.code, 422);
    }
}
