//! Server-side printing: `meta.k8s.io/v1 Table` responses with the columns
//! and cell formats kube-apiserver uses, so `kubectl get` shows the same
//! output against Ferry as against a real cluster.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::object;
use crate::resources::Resource;

/// (name, priority) of each column after the first `Name` column.
fn columns(kind: &str) -> &'static [(&'static str, u8)] {
    match kind {
        "Pod" => &[
            ("Ready", 0),
            ("Status", 0),
            ("Restarts", 0),
            ("Age", 0),
            ("IP", 1),
            ("Node", 1),
            ("Nominated Node", 1),
            ("Readiness Gates", 1),
        ],
        "Service" => &[
            ("Type", 0),
            ("Cluster-IP", 0),
            ("External-IP", 0),
            ("Port(s)", 0),
            ("Age", 0),
            ("Selector", 1),
        ],
        "Endpoints" => &[("Endpoints", 0), ("Age", 0)],
        "Node" => &[
            ("Status", 0),
            ("Roles", 0),
            ("Age", 0),
            ("Version", 0),
            ("Internal-IP", 1),
            ("External-IP", 1),
            ("OS-Image", 1),
            ("Kernel-Version", 1),
            ("Container-Runtime", 1),
        ],
        "Namespace" => &[("Status", 0), ("Age", 0)],
        "ServiceAccount" => &[("Secrets", 0), ("Age", 0)],
        "ConfigMap" => &[("Data", 0), ("Age", 0)],
        "NetworkPolicy" => &[("Pod-Selector", 0), ("Age", 0)],
        "PodDisruptionBudget" => &[
            ("Min Available", 0),
            ("Max Unavailable", 0),
            ("Allowed Disruptions", 0),
            ("Age", 0),
        ],
        "Lease" => &[("Holder", 0), ("Age", 0)],
        "Secret" => &[("Type", 0), ("Data", 0), ("Age", 0)],
        "Deployment" => &[
            ("Ready", 0),
            ("Up-to-date", 0),
            ("Available", 0),
            ("Age", 0),
            ("Containers", 1),
            ("Images", 1),
            ("Selector", 1),
        ],
        "ReplicaSet" => &[
            ("Desired", 0),
            ("Current", 0),
            ("Ready", 0),
            ("Age", 0),
            ("Containers", 1),
            ("Images", 1),
            ("Selector", 1),
        ],
        "DaemonSet" => &[
            ("Desired", 0),
            ("Current", 0),
            ("Ready", 0),
            ("Up-to-date", 0),
            ("Available", 0),
            ("Node Selector", 0),
            ("Age", 0),
            ("Containers", 1),
            ("Images", 1),
            ("Selector", 1),
        ],
        "StatefulSet" => &[("Ready", 0), ("Age", 0), ("Containers", 1), ("Images", 1)],
        "ControllerRevision" => &[("Controller", 0), ("Revision", 0), ("Age", 0)],
        "EndpointSlice" => &[
            ("AddressType", 0),
            ("Ports", 0),
            ("Endpoints", 0),
            ("Age", 0),
        ],
        "Role" | "ClusterRole" => &[("Created At", 0)],
        "RoleBinding" | "ClusterRoleBinding" => &[
            ("Role", 0),
            ("Age", 0),
            ("Users", 1),
            ("Groups", 1),
            ("ServiceAccounts", 1),
        ],
        _ => &[("Age", 0)],
    }
}

/// A binding's row after its name: `Kind/name` of its role, age, and its
/// subjects by kind (service accounts as `namespace/name`).
fn binding_cells(obj: &Value) -> Vec<Value> {
    let role = format!("{}/{}", s(obj, "/roleRef/kind"), s(obj, "/roleRef/name"));
    let subjects = arr(obj, "/subjects");
    let of_kind = |kind: &str| -> String {
        subjects
            .iter()
            .filter(|sub| sub.get("kind").and_then(Value::as_str) == Some(kind))
            .map(|sub| {
                let name = sub.get("name").and_then(Value::as_str).unwrap_or("");
                match sub.get("namespace").and_then(Value::as_str) {
                    Some(ns) if kind == "ServiceAccount" => format!("{ns}/{name}"),
                    _ => name.to_string(),
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    vec![
        json!(role),
        json!(age(obj)),
        json!(of_kind("User")),
        json!(of_kind("Group")),
        json!(of_kind("ServiceAccount")),
    ]
}

fn column(name: &str, priority: u8, format: &str) -> Value {
    json!({"name": name, "type": "string", "format": format, "description": "", "priority": priority})
}

/// Column definitions for `kind`.
pub fn column_definitions(kind: &str) -> Value {
    if kind == "Event" {
        return Value::Array(
            [
                ("Last Seen", 0),
                ("Type", 0),
                ("Reason", 0),
                ("Object", 0),
                ("Subobject", 1),
                ("Source", 1),
                ("Message", 0),
                ("First Seen", 1),
                ("Count", 1),
            ]
            .iter()
            .map(|(n, p)| column(n, *p, ""))
            .chain([column("Name", 1, "name")])
            .collect(),
        );
    }
    Value::Array(
        [column("Name", 0, "name")]
            .into_iter()
            .chain(columns(kind).iter().map(|(n, p)| column(n, *p, "")))
            .collect(),
    )
}

/// Go's `duration.HumanDuration`, as kubectl prints ages.
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let s = secs.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        if s % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        }
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if d < 8 {
        if h % 24 == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{}h", h % 24)
        }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else if d < 365 * 8 {
        let y = d / 365;
        if d % 365 == 0 {
            format!("{y}y")
        } else {
            format!("{y}y{}d", d % 365)
        }
    } else {
        format!("{}y", d / 365)
    }
}

fn age_of(ts: Option<&str>) -> String {
    ts.and_then(object::age_seconds)
        .map_or_else(|| "<unknown>".into(), human_duration)
}

fn age(obj: &Value) -> String {
    age_of(
        object::metadata(obj)
            .and_then(|m| m.get("creationTimestamp"))
            .and_then(Value::as_str),
    )
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn arr<'a>(v: &'a Value, ptr: &str) -> &'a [Value] {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn or_none(v: String) -> String {
    if v.is_empty() { "<none>".into() } else { v }
}

/// `a,b,c + N more...` as kubectl lists long sets.
fn list_with_more(items: &[String], total: usize) -> String {
    if items.is_empty() {
        return "<unset>".into();
    }
    let joined = items.iter().take(3).cloned().collect::<Vec<_>>().join(",");
    if total > 3 {
        format!("{joined} + {} more...", total - 3)
    } else {
        joined
    }
}

fn join_host_port(ip: &str, port: &Value) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// Formats a LabelSelector (matchLabels and matchExpressions) as a string.
fn format_label_selector(sel: Option<&Value>) -> String {
    let Some(sel) = sel else {
        return "<none>".into();
    };
    or_none(label_selector_string(sel))
}

/// apimachinery's `LabelSelectorAsSelector(sel).String()`: the
/// requirements sorted by key, `k=v`, `k in (a,b)`, `k`, `!k`; empty for
/// the empty selector, `<error>` for an unknown operator.
pub fn label_selector_string(sel: &Value) -> String {
    let mut parts: Vec<(String, String)> = Vec::new();
    if let Some(ml) = sel.get("matchLabels").and_then(Value::as_object) {
        for (k, v) in ml {
            parts.push((k.clone(), format!("{k}={}", v.as_str().unwrap_or(""))));
        }
    }
    for e in sel
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = s(e, "/key").to_string();
        let values: Vec<&str> = arr(e, "/values").iter().filter_map(Value::as_str).collect();
        let text = match s(e, "/operator") {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.clone(),
            "DoesNotExist" => format!("!{key}"),
            _ => return "<error>".into(),
        };
        parts.push((key, text));
    }
    parts.sort();
    parts
        .into_iter()
        .map(|(_, t)| t)
        .collect::<Vec<_>>()
        .join(",")
}

/// labels.FormatLabels: `k=v` sorted by key, `<none>` when empty.
fn format_labels(m: Option<&Value>) -> String {
    let mut parts: Vec<String> = m
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    parts.sort();
    or_none(parts.join(","))
}

/// The names and images of a pod template's containers, comma-joined.
fn containers_and_images(obj: &Value) -> (String, String) {
    let cs = arr(obj, "/spec/template/spec/containers");
    let names: Vec<&str> = cs.iter().map(|c| s(c, "/name")).collect();
    let images: Vec<&str> = cs.iter().map(|c| s(c, "/image")).collect();
    (names.join(","), images.join(","))
}

fn int(obj: &Value, ptr: &str) -> i64 {
    obj.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

fn selector_cell(obj: &Value) -> String {
    obj.pointer("/spec/selector")
        .map(label_selector_string)
        .unwrap_or_default()
}

fn workload_cells(kind: &str, obj: &Value) -> Vec<Value> {
    let (names, images) = containers_and_images(obj);
    match kind {
        "Deployment" => vec![
            json!(format!(
                "{}/{}",
                int(obj, "/status/readyReplicas"),
                int(obj, "/spec/replicas")
            )),
            json!(int(obj, "/status/updatedReplicas")),
            json!(int(obj, "/status/availableReplicas")),
            json!(age(obj)),
            json!(names),
            json!(images),
            json!(selector_cell(obj)),
        ],
        "ReplicaSet" => vec![
            json!(int(obj, "/spec/replicas")),
            json!(int(obj, "/status/replicas")),
            json!(int(obj, "/status/readyReplicas")),
            json!(age(obj)),
            json!(names),
            json!(images),
            json!(selector_cell(obj)),
        ],
        "DaemonSet" => vec![
            json!(int(obj, "/status/desiredNumberScheduled")),
            json!(int(obj, "/status/currentNumberScheduled")),
            json!(int(obj, "/status/numberReady")),
            json!(int(obj, "/status/updatedNumberScheduled")),
            json!(int(obj, "/status/numberAvailable")),
            json!(format_labels(
                obj.pointer("/spec/template/spec/nodeSelector")
            )),
            json!(age(obj)),
            json!(names),
            json!(images),
            json!(selector_cell(obj)),
        ],
        _ => vec![
            json!(format!(
                "{}/{}",
                int(obj, "/status/readyReplicas"),
                int(obj, "/spec/replicas")
            )),
            json!(age(obj)),
            json!(names),
            json!(images),
        ],
    }
}

/// `<kind>.<group>/<name>` of the controller, as kubectl names a
/// ControllerRevision's owner.
fn controller_name(obj: &Value) -> String {
    let Some(owner) = arr(obj, "/metadata/ownerReferences")
        .iter()
        .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
    else {
        return "<none>".into();
    };
    let kind = s(owner, "/kind").to_lowercase();
    let group = s(owner, "/apiVersion")
        .rsplit_once('/')
        .map_or("", |(g, _)| g);
    let gk = if group.is_empty() {
        kind
    } else {
        format!("{kind}.{group}")
    };
    format!("{gk}/{}", s(owner, "/name"))
}

fn pod_cells(obj: &Value) -> Vec<Value> {
    let containers = arr(obj, "/spec/containers").len();
    let statuses = arr(obj, "/status/containerStatuses");
    let mut reason = s(obj, "/status/phase").to_string();
    if !s(obj, "/status/reason").is_empty() {
        reason = s(obj, "/status/reason").to_string();
    }
    let (mut ready, mut restarts) = (0, 0i64);
    for cs in statuses.iter().rev() {
        restarts += cs.get("restartCount").and_then(Value::as_i64).unwrap_or(0);
        if !s(cs, "/state/waiting/reason").is_empty() {
            reason = s(cs, "/state/waiting/reason").to_string();
        } else if !s(cs, "/state/terminated/reason").is_empty() {
            reason = s(cs, "/state/terminated/reason").to_string();
        } else if cs.get("ready").and_then(Value::as_bool) == Some(true)
            && cs.pointer("/state/running").is_some()
        {
            ready += 1;
        }
    }
    if object::deletion_timestamp(obj).is_some()
        && !matches!(reason.as_str(), "Succeeded" | "Failed")
    {
        reason = "Terminating".into();
    }
    let ip = arr(obj, "/status/podIPs")
        .first()
        .map(|p| s(p, "/ip").to_string())
        .unwrap_or_else(|| s(obj, "/status/podIP").to_string());
    let gates = arr(obj, "/spec/readinessGates");
    vec![
        json!(format!("{ready}/{containers}")),
        json!(reason),
        json!(restarts.to_string()),
        json!(age(obj)),
        json!(or_none(ip)),
        json!(or_none(s(obj, "/spec/nodeName").into())),
        json!(or_none(s(obj, "/status/nominatedNodeName").into())),
        json!(if gates.is_empty() {
            "<none>".to_string()
        } else {
            format!("0/{}", gates.len())
        }),
    ]
}

fn service_cells(obj: &Value) -> Vec<Value> {
    let ty = s(obj, "/spec/type");
    let cluster_ip = arr(obj, "/spec/clusterIPs")
        .first()
        .and_then(Value::as_str)
        .unwrap_or_else(|| s(obj, "/spec/clusterIP"))
        .to_string();
    let external: Vec<String> = arr(obj, "/spec/externalIPs")
        .iter()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    let external_ip = match ty {
        "ClusterIP" | "NodePort" => or_none(external.join(",")),
        "LoadBalancer" => {
            let lb: BTreeSet<String> = arr(obj, "/status/loadBalancer/ingress")
                .iter()
                .map(|i| {
                    if s(i, "/ip").is_empty() {
                        s(i, "/hostname").to_string()
                    } else {
                        s(i, "/ip").to_string()
                    }
                })
                .filter(|x| !x.is_empty())
                .collect();
            let mut all: Vec<String> = lb.into_iter().collect();
            all.extend(external);
            if all.is_empty() {
                "<pending>".into()
            } else {
                all.join(",")
            }
        }
        "ExternalName" => s(obj, "/spec/externalName").to_string(),
        _ => "<unknown>".into(),
    };
    let ports: Vec<String> = arr(obj, "/spec/ports")
        .iter()
        .map(|p| {
            let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
            let proto = s(p, "/protocol");
            match p.get("nodePort").and_then(Value::as_i64) {
                Some(np) if np > 0 => format!("{port}:{np}/{proto}"),
                _ => format!("{port}/{proto}"),
            }
        })
        .collect();
    let selector: Vec<String> = obj
        .pointer("/spec/selector")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    vec![
        json!(ty),
        json!(or_none(cluster_ip)),
        json!(external_ip),
        json!(or_none(ports.join(","))),
        json!(age(obj)),
        json!(or_none(selector.join(","))),
    ]
}

fn endpoints_cells(obj: &Value) -> Vec<Value> {
    let subsets = arr(obj, "/subsets");
    let (mut shown, mut count) = (Vec::new(), 0usize);
    for ss in subsets {
        let addrs = arr(ss, "/addresses");
        let ports = arr(ss, "/ports");
        if ports.is_empty() {
            count += addrs.len();
            shown.extend(addrs.iter().map(|a| s(a, "/ip").to_string()));
        } else {
            for p in ports {
                count += addrs.len();
                let port = p.get("port").cloned().unwrap_or(Value::Null);
                shown.extend(addrs.iter().map(|a| join_host_port(s(a, "/ip"), &port)));
            }
        }
    }
    let text = if subsets.is_empty() {
        "<none>".into()
    } else if shown.is_empty() {
        String::new()
    } else {
        list_with_more(&shown, count)
    };
    vec![json!(text), json!(age(obj))]
}

fn node_cells(obj: &Value) -> Vec<Value> {
    let mut status = match arr(obj, "/status/conditions")
        .iter()
        .find(|c| s(c, "/type") == "Ready")
    {
        Some(c) if s(c, "/status") == "True" => "Ready".to_string(),
        Some(_) => "NotReady".to_string(),
        None => "Unknown".to_string(),
    };
    if obj.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push_str(",SchedulingDisabled");
    }
    let mut roles = BTreeSet::new();
    for (k, v) in object::labels(obj).into_iter().flatten() {
        if let Some(role) = k
            .strip_prefix("node-role.kubernetes.io/")
            .filter(|r| !r.is_empty())
        {
            roles.insert(role.to_string());
        } else if k == "kubernetes.io/role" && v.as_str().is_some_and(|x| !x.is_empty()) {
            roles.insert(v.as_str().unwrap_or("").to_string());
        }
    }
    let addr = |ty: &str| {
        or_none(
            arr(obj, "/status/addresses")
                .iter()
                .find(|a| s(a, "/type") == ty)
                .map(|a| s(a, "/address").to_string())
                .unwrap_or_default(),
        )
    };
    let unknown = |p: &str| {
        let v = s(obj, p);
        if v.is_empty() {
            "<unknown>".to_string()
        } else {
            v.to_string()
        }
    };
    vec![
        json!(status),
        json!(or_none(roles.into_iter().collect::<Vec<_>>().join(","))),
        json!(age(obj)),
        json!(s(obj, "/status/nodeInfo/kubeletVersion")),
        json!(addr("InternalIP")),
        json!(addr("ExternalIP")),
        json!(unknown("/status/nodeInfo/osImage")),
        json!(unknown("/status/nodeInfo/kernelVersion")),
        json!(unknown("/status/nodeInfo/containerRuntimeVersion")),
    ]
}

fn endpointslice_cells(obj: &Value) -> Vec<Value> {
    let ports: Vec<String> = arr(obj, "/ports")
        .iter()
        .map(|p| {
            match (
                p.get("port").and_then(Value::as_i64),
                p.get("name").and_then(Value::as_str),
            ) {
                (Some(n), _) => n.to_string(),
                (None, Some(name)) => name.to_string(),
                _ => "*".into(),
            }
        })
        .collect();
    let addrs: Vec<String> = arr(obj, "/endpoints")
        .iter()
        .flat_map(|e| {
            arr(e, "/addresses")
                .iter()
                .filter_map(|a| a.as_str().map(String::from))
        })
        .collect();
    vec![
        json!(s(obj, "/addressType")),
        json!(list_with_more(&ports, ports.len())),
        json!(list_with_more(&addrs, addrs.len())),
        json!(age(obj)),
    ]
}

fn event_cells(obj: &Value) -> Vec<Value> {
    let first = {
        let ft = s(obj, "/firstTimestamp");
        if ft.is_empty() {
            age_of(Some(s(obj, "/eventTime")).filter(|t| !t.is_empty()))
        } else {
            age_of(Some(ft))
        }
    };
    let (last, count) = match obj.get("series") {
        Some(series) if !series.is_null() => (
            age_of(Some(s(series, "/lastObservedTime"))),
            series.get("count").and_then(Value::as_i64).unwrap_or(1),
        ),
        _ => {
            let lt = s(obj, "/lastTimestamp");
            let last = if lt.is_empty() {
                first.clone()
            } else {
                age_of(Some(lt))
            };
            (
                last,
                obj.get("count")
                    .and_then(Value::as_i64)
                    .filter(|c| *c > 0)
                    .unwrap_or(1),
            )
        }
    };
    let kind = s(obj, "/involvedObject/kind").to_lowercase();
    let name = s(obj, "/involvedObject/name");
    let object = if name.is_empty() {
        kind
    } else {
        format!("{kind}/{name}")
    };
    let component = [s(obj, "/source/component"), s(obj, "/reportingComponent")]
        .into_iter()
        .find(|x| !x.is_empty())
        .unwrap_or("");
    let host = [s(obj, "/source/host"), s(obj, "/reportingInstance")]
        .into_iter()
        .find(|x| !x.is_empty())
        .unwrap_or("");
    let source = if host.is_empty() {
        component.to_string()
    } else {
        format!("{component}, {host}")
    };
    vec![
        json!(last),
        json!(s(obj, "/type")),
        json!(s(obj, "/reason")),
        json!(object),
        json!(s(obj, "/involvedObject/fieldPath")),
        json!(source),
        json!(s(obj, "/message").trim()),
        json!(first),
        json!(count),
        json!(object::name(obj)),
    ]
}

/// The cells of one row.
pub fn cells(kind: &str, obj: &Value) -> Vec<Value> {
    if kind == "Event" {
        return event_cells(obj);
    }
    let mut out = vec![json!(object::name(obj))];
    out.extend(match kind {
        "Pod" => pod_cells(obj),
        "Service" => service_cells(obj),
        "Endpoints" => endpoints_cells(obj),
        "Node" => node_cells(obj),
        "EndpointSlice" => endpointslice_cells(obj),
        "Namespace" => vec![json!(s(obj, "/status/phase")), json!(age(obj))],
        "ServiceAccount" => vec![json!(arr(obj, "/secrets").len()), json!(age(obj))],
        "ConfigMap" => {
            let n = obj
                .get("data")
                .and_then(Value::as_object)
                .map_or(0, |m| m.len())
                + obj
                    .get("binaryData")
                    .and_then(Value::as_object)
                    .map_or(0, |m| m.len());
            vec![json!(n), json!(age(obj))]
        }
        "NetworkPolicy" => vec![
            json!(format_label_selector(obj.pointer("/spec/podSelector"))),
            json!(age(obj)),
        ],
        "Lease" => vec![json!(s(obj, "/spec/holderIdentity")), json!(age(obj))],
        "PodDisruptionBudget" => {
            let or_na = |p: &str| match obj.pointer(p) {
                Some(Value::String(v)) => v.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => "N/A".to_owned(),
            };
            vec![
                json!(or_na("/spec/minAvailable")),
                json!(or_na("/spec/maxUnavailable")),
                json!(
                    obj.pointer("/status/disruptionsAllowed")
                        .and_then(Value::as_i64)
                        .unwrap_or(0)
                ),
                json!(age(obj)),
            ]
        }
        "Secret" => vec![
            json!(s(obj, "/type")),
            json!(
                obj.get("data")
                    .and_then(Value::as_object)
                    .map_or(0, |m| m.len())
            ),
            json!(age(obj)),
        ],
        "Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet" => workload_cells(kind, obj),
        "ControllerRevision" => vec![
            json!(controller_name(obj)),
            json!(int(obj, "/revision")),
            json!(age(obj)),
        ],
        "Role" | "ClusterRole" => vec![json!(s(obj, "/metadata/creationTimestamp"))],
        "RoleBinding" | "ClusterRoleBinding" => binding_cells(obj),
        _ => vec![json!(age(obj))],
    });
    out
}

/// How much of each object a row carries (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Include {
    None,
    Metadata,
    Object,
}

impl Include {
    pub fn parse(v: Option<&str>) -> Option<Self> {
        match v.unwrap_or("") {
            "" | "Metadata" => Some(Self::Metadata),
            "Object" => Some(Self::Object),
            "None" => Some(Self::None),
            _ => None,
        }
    }
}

fn row(res: &Resource, obj: &Value, include: Include) -> Value {
    let mut r = json!({ "cells": cells(res.kind, obj) });
    match include {
        Include::None => {}
        Include::Object => r["object"] = obj.clone(),
        Include::Metadata => {
            r["object"] = json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
            })
        }
    }
    r
}

/// A Table of `items`; `with_columns` false leaves the definitions null, as
/// watch events after the first do.
pub fn table<'a>(
    res: &Resource,
    items: impl IntoIterator<Item = &'a Value>,
    list_meta: Value,
    include: Include,
    with_columns: bool,
) -> Value {
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": if with_columns { column_definitions(res.kind) } else { Value::Null },
        "rows": items.into_iter().map(|o| row(res, o, include)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(125), "2m5s");
        assert_eq!(human_duration(3600 * 5 + 60), "5h1m");
        assert_eq!(human_duration(86400 * 3), "3d");
    }

    #[test]
    fn service_row() {
        let svc = json!({"metadata": {"name": "web"}, "spec": {"type": "NodePort", "clusterIPs": ["10.96.0.10"],
            "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30000}, {"port": 53, "protocol": "UDP"}],
            "selector": {"app": "web"}}});
        let c = cells("Service", &svc);
        assert_eq!(c[1], json!("NodePort"));
        assert_eq!(c[2], json!("10.96.0.10"));
        assert_eq!(c[3], json!("<none>"));
        assert_eq!(c[4], json!("80:30000/TCP,53/UDP"));
        assert_eq!(c[6], json!("app=web"));
        let lb = json!({"metadata": {"name": "lb"}, "spec": {"type": "LoadBalancer", "ports": []}});
        assert_eq!(cells("Service", &lb)[3], json!("<pending>"));
    }

    #[test]
    fn workload_rows() {
        let d = json!({"metadata": {"name": "nginx-test"}, "spec": {"replicas": 3,
            "selector": {"matchLabels": {"pod-template-hash": "59c9f8dff", "app": "nginx"}},
            "template": {"spec": {"containers": [{"name": "nginx", "image": "nginx:latest"}, {"name": "side", "image": "busybox"}]}}},
            "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 1}});
        let c = cells("Deployment", &d);
        assert_eq!(c[1], json!("2/3"));
        assert_eq!((c[2].clone(), c[3].clone()), (json!(3), json!(1)));
        assert_eq!(c[5], json!("nginx,side"));
        assert_eq!(c[6], json!("nginx:latest,busybox"));
        assert_eq!(c[7], json!("app=nginx,pod-template-hash=59c9f8dff"));
        let rs = cells("ReplicaSet", &d);
        assert_eq!(
            (rs[1].clone(), rs[2].clone(), rs[3].clone()),
            (json!(3), json!(0), json!(2))
        );
        let cr = json!({"metadata": {"name": "web-1", "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "web", "controller": true}]}, "revision": 2});
        assert_eq!(
            cells("ControllerRevision", &cr)[1],
            json!("statefulset.apps/web")
        );
        let sel = json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}, {"key": "x", "operator": "DoesNotExist"}]});
        assert_eq!(label_selector_string(&sel), "tier in (a,b),!x");
    }

    #[test]
    fn endpoints_more() {
        let ep = json!({"metadata": {"name": "e"}, "subsets": [{"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}, {"ip": "10.0.0.3"}, {"ip": "fd00::4"}], "ports": [{"port": 80}]}]});
        assert_eq!(
            cells("Endpoints", &ep)[1],
            json!("10.0.0.1:80,10.0.0.2:80,10.0.0.3:80 + 1 more...")
        );
    }
}
