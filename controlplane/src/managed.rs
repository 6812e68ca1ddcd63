//! Field ownership for server-side apply: field sets in the `FieldsV1`
//! encoding, the `metadata.managedFields` entries of each manager, and the
//! apply merge with conflict detection.
//!
//! List and map semantics follow the kinds' OpenAPI list types
//! (`x-kubernetes-list-type`/`list-map-keys`, `x-kubernetes-map-type`), which
//! differ from the strategic-merge-patch keys in [`crate::patch`] (Service
//! ports are keyed by port *and* protocol here).

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use crate::error::{ApiError, Cause};

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Step {
    /// `f:name`: a field of a map.
    Field(String),
    /// `k:{...}`: the item of a map-list with these key values (canonical JSON).
    Key(String),
    /// `v:...`: the item of a set with this value (canonical JSON).
    Value(String),
}

pub type Path = Vec<Step>;

/// A set of owned fields. A path that ends at a map-list or set item stands
/// for the item itself (`"."` in FieldsV1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSet(pub BTreeSet<Path>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListType {
    Atomic,
    Set,
    Map(&'static [&'static str]),
}

/// The list type of the field at `names` (field names from the root).
fn list_type(kind: &str, names: &[&str]) -> ListType {
    use ListType::*;
    const CONTAINERS: &str = "containers";
    // A workload's pod template has a pod's list types.
    if let (
        "Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet",
        ["spec", "template", rest @ ..],
    ) = (kind, names)
        && !rest.is_empty()
    {
        return list_type("Pod", rest);
    }
    match names {
        ["metadata", "finalizers"] => Set,
        ["metadata", "ownerReferences"] => Map(&["uid"]),
        _ => match (kind, names) {
            ("Service", ["spec", "ports"]) => Map(&["port", "protocol"]),
            (
                "Service" | "Namespace" | "Pod" | "Node" | "Deployment" | "ReplicaSet"
                | "DaemonSet" | "StatefulSet",
                ["status", "conditions"],
            ) => Map(&["type"]),
            (
                "Pod",
                [
                    "spec",
                    CONTAINERS | "initContainers" | "ephemeralContainers",
                ],
            ) => Map(&["name"]),
            (
                "Pod",
                [
                    "spec",
                    CONTAINERS | "initContainers" | "ephemeralContainers",
                    "ports",
                ],
            ) => Map(&["containerPort", "protocol"]),
            (
                "Pod",
                [
                    "spec",
                    CONTAINERS | "initContainers" | "ephemeralContainers",
                    "env",
                ],
            ) => Map(&["name"]),
            (
                "Pod",
                [
                    "spec",
                    CONTAINERS | "initContainers" | "ephemeralContainers",
                    "volumeMounts",
                ],
            ) => Map(&["mountPath"]),
            ("Pod", ["spec", "volumes" | "imagePullSecrets"]) => Map(&["name"]),
            ("Pod", ["status", "podIPs" | "hostIPs"]) => Map(&["ip"]),
            ("Node", ["status", "addresses"]) => Map(&["type"]),
            ("Node", ["spec", "podCIDRs"]) => Set,
            _ => Atomic,
        },
    }
}

/// Maps replaced as a whole (`x-kubernetes-map-type: atomic`).
fn atomic_map(kind: &str, names: &[&str]) -> bool {
    matches!(
        (kind, names),
        ("Service", ["spec", "selector"])
            | ("NetworkPolicy", ["spec", "podSelector"])
            | (_, ["spec", "template", "metadata", "labels"])
    )
}

/// Fields no manager owns: identity and server-set metadata.
fn skipped(path: &[&str]) -> bool {
    matches!(
        path,
        ["apiVersion"]
            | ["kind"]
            | [
                "metadata",
                "name"
                    | "namespace"
                    | "uid"
                    | "resourceVersion"
                    | "generation"
                    | "creationTimestamp"
                    | "deletionTimestamp"
                    | "deletionGracePeriodSeconds"
                    | "managedFields"
                    | "selfLink"
                    | "generateName"
            ]
    )
}

fn canonical(v: &Value) -> String {
    // Maps in key order so equal keys encode equally.
    fn sort(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                Value::Object(keys.into_iter().map(|k| (k.clone(), sort(&m[k]))).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    sort(v).to_string()
}

fn item_key(item: &Value, keys: &[&str]) -> String {
    let mut m = Map::new();
    let mut sorted: Vec<&&str> = keys.iter().collect();
    sorted.sort();
    for k in sorted {
        // Key fields the schema defaults count with their default, so an
        // applied `{port: 80}` is the stored `{port: 80, protocol: TCP}`.
        let v = item
            .get(*k)
            .cloned()
            .or_else(|| (*k == "protocol").then(|| json!("TCP")));
        if let Some(v) = v {
            m.insert((*k).to_string(), v);
        }
    }
    canonical(&Value::Object(m))
}

struct Walker<'a> {
    kind: &'a str,
    names: Vec<String>,
    path: Path,
    out: &'a mut BTreeSet<Path>,
}

impl Walker<'_> {
    fn names(&self) -> Vec<&str> {
        self.names.iter().map(String::as_str).collect()
    }

    fn value(&mut self, v: &Value) {
        match v {
            Value::Object(m) if !m.is_empty() && !atomic_map(self.kind, &self.names()) => {
                for (k, child) in m {
                    self.names.push(k.clone());
                    if !skipped(&self.names()) {
                        self.path.push(Step::Field(k.clone()));
                        self.value(child);
                        self.path.pop();
                    }
                    self.names.pop();
                }
            }
            Value::Array(items) => match list_type(self.kind, &self.names()) {
                ListType::Atomic => {
                    self.out.insert(self.path.clone());
                }
                ListType::Set => {
                    for item in items {
                        let mut p = self.path.clone();
                        p.push(Step::Value(canonical(item)));
                        self.out.insert(p);
                    }
                }
                ListType::Map(keys) => {
                    for item in items {
                        self.path.push(Step::Key(item_key(item, keys)));
                        self.out.insert(self.path.clone());
                        self.value(item);
                        self.path.pop();
                    }
                }
            },
            _ => {
                self.out.insert(self.path.clone());
            }
        }
    }
}

impl FieldSet {
    /// Every field `obj` sets; `status` only when `subresource` is status.
    pub fn of(kind: &str, obj: &Value, subresource: Option<&str>) -> Self {
        let mut out = BTreeSet::new();
        let Some(m) = obj.as_object() else {
            return Self(out);
        };
        for (k, v) in m {
            let in_scope = match subresource {
                Some("status") => k == "status",
                _ => k != "status",
            };
            if !in_scope || skipped(&[k.as_str()]) {
                continue;
            }
            let mut w = Walker {
                kind,
                names: vec![k.clone()],
                path: vec![Step::Field(k.clone())],
                out: &mut out,
            };
            w.value(v);
        }
        Self(out)
    }

    /// Decodes a `fieldsV1` trie.
    pub fn from_fields_v1(v: &Value) -> Self {
        fn walk(node: &Value, path: &mut Path, out: &mut BTreeSet<Path>) {
            let Some(m) = node.as_object() else { return };
            for (k, child) in m {
                if k == "." {
                    out.insert(path.clone());
                    continue;
                }
                let step = if let Some(f) = k.strip_prefix("f:") {
                    Step::Field(f.to_string())
                } else if let Some(key) = k.strip_prefix("k:") {
                    Step::Key(
                        serde_json::from_str::<Value>(key)
                            .map(|v| canonical(&v))
                            .unwrap_or_else(|_| key.to_string()),
                    )
                } else if let Some(val) = k.strip_prefix("v:") {
                    Step::Value(
                        serde_json::from_str::<Value>(val)
                            .map(|v| canonical(&v))
                            .unwrap_or_else(|_| val.to_string()),
                    )
                } else {
                    continue;
                };
                path.push(step);
                if child.as_object().is_none_or(Map::is_empty) {
                    out.insert(path.clone());
                } else {
                    walk(child, path, out);
                }
                path.pop();
            }
        }
        let mut out = BTreeSet::new();
        walk(v, &mut Vec::new(), &mut out);
        Self(out)
    }

    /// Encodes as a `fieldsV1` trie.
    pub fn to_fields_v1(&self) -> Value {
        let mut root = Map::new();
        for path in &self.0 {
            let mut node = &mut root;
            for (i, step) in path.iter().enumerate() {
                let key = match step {
                    Step::Field(f) => format!("f:{f}"),
                    Step::Key(k) => format!("k:{k}"),
                    Step::Value(v) => format!("v:{v}"),
                };
                let child = node.entry(key).or_insert_with(|| json!({}));
                let Some(child_map) = child.as_object_mut() else {
                    break;
                };
                // A member that is itself owned and has children carries ".".
                let is_last = i + 1 == path.len();
                if is_last {
                    // Sorted: a path has children iff the next one extends it.
                    let has_children = self
                        .0
                        .range::<Path, _>((
                            std::ops::Bound::Excluded(path),
                            std::ops::Bound::Unbounded,
                        ))
                        .next()
                        .is_some_and(|p| p.starts_with(path));
                    if has_children {
                        child_map.insert(".".into(), json!({}));
                    }
                }
                node = child_map;
            }
        }
        Value::Object(root)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The value at `path` in `obj`, if present.
pub fn value_at<'a>(obj: &'a Value, path: &[Step], kind: &str) -> Option<&'a Value> {
    let mut cur = obj;
    let mut names: Vec<String> = Vec::new();
    for step in path {
        cur = match step {
            Step::Field(f) => {
                names.push(f.clone());
                cur.get(f)?
            }
            Step::Key(k) => {
                let ListType::Map(keys) =
                    list_type(kind, &names.iter().map(String::as_str).collect::<Vec<_>>())
                else {
                    return None;
                };
                cur.as_array()?
                    .iter()
                    .find(|item| item_key(item, keys) == *k)?
            }
            Step::Value(v) => cur.as_array()?.iter().find(|item| canonical(item) == *v)?,
        };
    }
    Some(cur)
}

/// Removes the field at `path` from `obj`.
fn remove_at(obj: &mut Value, path: &[Step], kind: &str) {
    let Some((last, parent_path)) = path.split_last() else {
        return;
    };
    let names: Vec<String> = parent_path
        .iter()
        .filter_map(|s| {
            if let Step::Field(f) = s {
                Some(f.clone())
            } else {
                None
            }
        })
        .collect();
    let mut cur = obj;
    let mut seen: Vec<String> = Vec::new();
    for step in parent_path {
        let next = match step {
            Step::Field(f) => {
                seen.push(f.clone());
                cur.get_mut(f)
            }
            Step::Key(k) => {
                match list_type(kind, &seen.iter().map(String::as_str).collect::<Vec<_>>()) {
                    ListType::Map(keys) => cur
                        .as_array_mut()
                        .and_then(|a| a.iter_mut().find(|i| item_key(i, keys) == *k)),
                    _ => None,
                }
            }
            Step::Value(_) => None,
        };
        let Some(n) = next else { return };
        cur = n;
    }
    match last {
        Step::Field(f) => {
            if let Some(m) = cur.as_object_mut() {
                m.remove(f);
            }
        }
        Step::Key(k) => {
            if let (ListType::Map(keys), Some(a)) = (
                list_type(kind, &names.iter().map(String::as_str).collect::<Vec<_>>()),
                cur.as_array_mut(),
            ) {
                a.retain(|i| item_key(i, keys) != *k);
            }
        }
        Step::Value(v) => {
            if let Some(a) = cur.as_array_mut() {
                a.retain(|i| canonical(i) != *v);
            }
        }
    }
}

/// Merges an applied configuration into the live object.
fn merge(kind: &str, names: &mut Vec<String>, live: &mut Value, applied: &Value) {
    let here: Vec<&str> = names.iter().map(String::as_str).collect();
    match (live, applied) {
        (Value::Object(l), Value::Object(a)) if !atomic_map(kind, &here) => {
            for (k, v) in a {
                names.push(k.clone());
                match l.get_mut(k) {
                    Some(slot) if !v.is_null() => merge(kind, names, slot, v),
                    _ if v.is_null() => {
                        l.remove(k);
                    }
                    _ => {
                        l.insert(k.clone(), v.clone());
                    }
                }
                names.pop();
            }
        }
        (Value::Array(l), Value::Array(a)) => match list_type(kind, &here) {
            ListType::Set => {
                for item in a {
                    if !l.contains(item) {
                        l.push(item.clone());
                    }
                }
            }
            ListType::Map(keys) => {
                for item in a {
                    let k = item_key(item, keys);
                    match l.iter_mut().find(|x| item_key(x, keys) == k) {
                        Some(slot) => merge(kind, names, slot, item),
                        None => l.push(item.clone()),
                    }
                }
            }
            ListType::Atomic => *l = a.clone(),
        },
        (live, applied) => *live = applied.clone(),
    }
}

/// One `metadata.managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub subresource: Option<String>,
    pub fields: FieldSet,
}

impl Entry {
    fn to_json(&self) -> Value {
        let mut v = json!({
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
            "time": self.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": self.fields.to_fields_v1(),
        });
        if let Some(s) = &self.subresource {
            v["subresource"] = json!(s);
        }
        v
    }

    fn describe(&self) -> String {
        let mut s = format!("\"{}\"", self.manager);
        if let Some(sub) = &self.subresource {
            s.push_str(&format!(" with subresource \"{sub}\""));
        }
        if self.operation == "Update" {
            s.push_str(&format!(" using {}", self.api_version));
        }
        s
    }
}

/// Reads `metadata.managedFields`.
pub fn entries(obj: &Value) -> Vec<Entry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            Some(Entry {
                manager: e.get("manager")?.as_str()?.to_string(),
                operation: e
                    .get("operation")
                    .and_then(Value::as_str)
                    .unwrap_or("Update")
                    .to_string(),
                api_version: e
                    .get("apiVersion")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                time: e
                    .get("time")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                subresource: e
                    .get("subresource")
                    .and_then(Value::as_str)
                    .map(String::from),
                fields: FieldSet::from_fields_v1(e.get("fieldsV1").unwrap_or(&Value::Null)),
            })
        })
        .collect()
}

fn set_entries(obj: &mut Value, list: &[Entry]) {
    let list: Vec<Value> = list
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(Entry::to_json)
        .collect();
    if let Some(m) = crate::object::metadata_mut(obj) {
        if list.is_empty() {
            m.remove("managedFields");
        } else {
            m.insert("managedFields".into(), Value::Array(list));
        }
    }
}

fn same_slot(e: &Entry, manager: &str, operation: &str, sub: Option<&str>) -> bool {
    e.manager == manager && e.operation == operation && e.subresource.as_deref() == sub
}

/// True when `v` is a field set in the FieldsV1 encoding, as
/// structured-merge-diff decodes it: a map whose keys are `.` (with `{}`),
/// `f:<name>`, `k:<JSON object>`, `v:<JSON value>` or `i:<index>`, each
/// holding such a map.
pub fn well_formed_fields_v1(v: &Value) -> bool {
    let mut stack = vec![v];
    while let Some(node) = stack.pop() {
        let Some(m) = node.as_object() else {
            return false;
        };
        for (k, child) in m {
            let ok = if k == "." {
                child.as_object().is_some_and(Map::is_empty)
            } else if k.starts_with("f:") {
                true
            } else if let Some(key) = k.strip_prefix("k:") {
                serde_json::from_str::<Value>(key).is_ok_and(|v| v.is_object())
            } else if let Some(val) = k.strip_prefix("v:") {
                serde_json::from_str::<Value>(val).is_ok()
            } else if let Some(i) = k.strip_prefix("i:") {
                i.parse::<u32>().is_ok()
            } else {
                false
            };
            if !ok {
                return false;
            }
            stack.push(child);
        }
    }
    true
}

/// True when every entry of a managedFields list carries a well-formed
/// field set. kube-apiserver ignores a list it cannot decode (keeping the
/// stored one) rather than failing the write; so does Ferry.
fn well_formed_entries(list: &Value) -> bool {
    list.as_array().is_some_and(|entries| {
        entries.iter().all(|e| {
            e.is_object()
                && e.get("manager").is_none_or(Value::is_string)
                && e.get("fieldsV1").is_none_or(well_formed_fields_v1)
        })
    })
}

/// Records an Update by `manager` on `new`: it takes every field whose value
/// it changed, and those fields leave the other managers. When the client
/// itself sent different, well-formed managedFields, they are kept as sent;
/// ones that are not well-formed are replaced by the stored ones first.
pub fn track_update(
    kind: &str,
    api_version: &str,
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    sub: Option<&str>,
) {
    let mut sent = new.pointer("/metadata/managedFields").cloned();
    let stored = old.and_then(|o| o.pointer("/metadata/managedFields").cloned());
    if sent.as_ref().is_some_and(|s| !well_formed_entries(s)) {
        tracing::info!(%kind, name = %crate::object::name(new), "ignoring managedFields that are not well-formed field sets");
        if let Some(m) = crate::object::metadata_mut(new) {
            match &stored {
                Some(s) => m.insert("managedFields".into(), s.clone()),
                None => m.remove("managedFields"),
            };
        }
        sent.clone_from(&stored);
    }
    if sent
        .as_ref()
        .is_some_and(|s| s.as_array().is_some_and(|a| !a.is_empty()))
        && sent != stored
    {
        return;
    }
    let mut list = old.map(entries).unwrap_or_default();
    let after = FieldSet::of(kind, new, sub);
    let changed: BTreeSet<Path> = match old {
        None => after.0.clone(),
        Some(old) => {
            let before = FieldSet::of(kind, old, sub);
            after
                .0
                .iter()
                .filter(|p| {
                    value_at(old, p, kind) != value_at(new, p, kind) || !before.0.contains(*p)
                })
                .chain(before.0.iter().filter(|p| !after.0.contains(*p)))
                .cloned()
                .collect()
        }
    };
    if changed.is_empty() && old.is_some() {
        set_entries(new, &list);
        return;
    }
    for e in list.iter_mut() {
        e.fields.0.retain(|p| !changed.contains(p));
    }
    let mine: BTreeSet<Path> = changed
        .into_iter()
        .filter(|p| after.0.contains(p))
        .collect();
    match list
        .iter_mut()
        .find(|e| same_slot(e, manager, "Update", sub))
    {
        Some(e) => {
            e.fields.0.extend(mine);
            e.time = crate::object::now();
        }
        None => list.push(Entry {
            manager: manager.to_string(),
            operation: "Update".into(),
            api_version: api_version.to_string(),
            time: crate::object::now(),
            subresource: sub.map(String::from),
            fields: FieldSet(mine),
        }),
    }
    set_entries(new, &list);
}

fn path_string(path: &[Step]) -> String {
    let mut s = String::new();
    for step in path {
        match step {
            Step::Field(f) => {
                s.push('.');
                s.push_str(f);
            }
            Step::Key(k) => {
                let inner = serde_json::from_str::<Map<String, Value>>(k)
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_else(|_| k.clone());
                s.push_str(&format!("[{inner}]"));
            }
            Step::Value(v) => s.push_str(&format!("[={v}]")),
        }
    }
    s
}

/// Server-side apply of `applied` by `manager` onto `live` (None: create).
/// Returns the merged object with its managedFields, or 409 listing the
/// fields other managers own with other values.
pub fn apply(
    kind: &str,
    api_version: &str,
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    sub: Option<&str>,
) -> Result<Value, ApiError> {
    let mut list = live.map(entries).unwrap_or_default();
    let wanted = FieldSet::of(kind, applied, sub);
    let mut conflicts: Vec<(String, Vec<String>)> = Vec::new();
    if let Some(live) = live {
        for e in list
            .iter_mut()
            .filter(|e| !same_slot(e, manager, "Apply", sub))
        {
            let clashing: Vec<Path> = wanted
                .0
                .iter()
                // A list item's own marker only says it exists, which both
                // sides agree on; its fields are compared one by one.
                .filter(|p| !matches!(p.last(), Some(Step::Key(_) | Step::Value(_))))
                .filter(|p| {
                    e.fields.0.contains(*p) && value_at(live, p, kind) != value_at(applied, p, kind)
                })
                .cloned()
                .collect();
            if clashing.is_empty() {
                continue;
            }
            if force {
                e.fields.0.retain(|p| !clashing.contains(p));
            } else {
                conflicts.push((
                    e.describe(),
                    clashing.iter().map(|p| path_string(p)).collect(),
                ));
            }
        }
    }
    if !conflicts.is_empty() {
        return Err(apply_conflict(&conflicts));
    }
    let previous = list
        .iter()
        .find(|e| same_slot(e, manager, "Apply", sub))
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    let mut merged = live.cloned().unwrap_or_else(|| json!({}));
    merge(kind, &mut Vec::new(), &mut merged, applied);
    // Fields this manager applied before and no longer does, and nobody else
    // owns, are removed.
    // Shorter paths first (set order puts a prefix before its extensions),
    // and nothing under a path already removed: removing a key field first
    // would change the item's key.
    let mut removed: Vec<&Path> = Vec::new();
    for p in &previous.0 {
        if wanted.0.contains(p)
            || removed.iter().any(|r| p.starts_with(r))
            || list
                .iter()
                .any(|e| !same_slot(e, manager, "Apply", sub) && e.fields.0.contains(p))
        {
            continue;
        }
        remove_at(&mut merged, p, kind);
        removed.push(p);
    }
    list.retain(|e| !same_slot(e, manager, "Apply", sub));
    list.push(Entry {
        manager: manager.to_string(),
        operation: "Apply".into(),
        api_version: api_version.to_string(),
        time: crate::object::now(),
        subresource: sub.map(String::from),
        fields: wanted,
    });
    set_entries(&mut merged, &list);
    Ok(merged)
}

fn apply_conflict(conflicts: &[(String, Vec<String>)]) -> ApiError {
    let total: usize = conflicts.iter().map(|(_, f)| f.len()).sum();
    let message = if total == 1 {
        let (who, fields) = &conflicts[0];
        format!(
            "Apply failed with 1 conflict: conflict with {who}: {}",
            fields[0]
        )
    } else {
        let mut m = format!("Apply failed with {total} conflicts: ");
        for (who, fields) in conflicts {
            m.push_str(&format!("conflicts with {who}:\n"));
            for f in fields {
                m.push_str(&format!("- {f}\n"));
            }
        }
        m.trim_end().to_string()
    };
    let causes = conflicts
        .iter()
        .flat_map(|(who, fields)| {
            fields.iter().map(move |f| Cause {
                reason: "FieldManagerConflict",
                field: f.clone(),
                message: format!("conflict with {who}"),
            })
        })
        .collect();
    ApiError::apply_conflict(message, causes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_v1_round_trip() {
        let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a", "labels": {"app": "x"}, "finalizers": ["f"]},
            "spec": {"selector": {"app": "x"}, "ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080}]}});
        let set = FieldSet::of("Service", &svc, None);
        let encoded = set.to_fields_v1();
        assert_eq!(
            encoded,
            json!({"f:metadata": {"f:finalizers": {"v:\"f\"": {}}, "f:labels": {"f:app": {}}},
                   "f:spec": {"f:ports": {"k:{\"port\":80,\"protocol\":\"TCP\"}": {".": {}, "f:port": {}, "f:protocol": {}, "f:targetPort": {}}},
                              "f:selector": {}}})
        );
        assert_eq!(FieldSet::from_fields_v1(&encoded), set);
    }

    #[test]
    fn apply_conflicts_force_and_removal() {
        let kind = "Service";
        let created = json!({"metadata": {"name": "a"}, "spec": {"type": "ClusterIP", "ports": [{"port": 80, "protocol": "TCP"}]}});
        let mut live = created.clone();
        track_update(kind, "v1", None, &mut live, "creator", None);
        let applied = json!({"metadata": {"name": "a", "labels": {"team": "x"}}, "spec": {"type": "NodePort", "ports": [{"port": 80, "protocol": "TCP"}]}});
        let err =
            apply(kind, "v1", Some(&live), &applied, "ci", false, None).expect_err("conflict");
        assert_eq!(err.code, 409);
        assert!(
            err.message
                .contains("conflict with \"creator\" using v1: .spec.type"),
            "{}",
            err.message
        );
        let forced = apply(kind, "v1", Some(&live), &applied, "ci", true, None).expect("forced");
        assert_eq!(forced["spec"]["type"], "NodePort");
        let owners = entries(&forced);
        let creator = owners
            .iter()
            .find(|e| e.manager == "creator")
            .expect("creator");
        assert!(!creator.fields.0.contains(&vec![
            Step::Field("spec".into()),
            Step::Field("type".into())
        ]));
        // Dropping the label from the applied config removes it.
        let reapplied = json!({"metadata": {"name": "a"}, "spec": {"type": "NodePort", "ports": [{"port": 80, "protocol": "TCP"}]}});
        let out = apply(kind, "v1", Some(&forced), &reapplied, "ci", false, None).expect("reapply");
        assert!(out.pointer("/metadata/labels/team").is_none(), "{out}");
    }
}
