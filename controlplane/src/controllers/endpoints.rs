//! The EndpointSlice controller, with the legacy Endpoints object mirrored
//! beside it: Services with a selector get slices listing the matching pods'
//! addresses, ports (named target ports resolved per pod) and conditions.
//! Slices of Services without a selector belong to their users and are left
//! alone.
//!
//! The controller indexes what it matches on, so its work follows the
//! objects an event concerns rather than the size of the namespace: each
//! Service's selector sits in an inverted index under one of its
//! `key=value` pairs (the one fewest Services share), so a pod event checks
//! only the Services indexed under the pod's own labels; and every pod's
//! labels are indexed by pair, so syncing a Service reads only the pods
//! carrying its rarest pair, not every pod of the namespace.

use super::key_of;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{Map, Value, json};

use super::{Change, Controller, delete, list_all, log_failure, write_opts};
use crate::object;
use crate::registry::Registry;
use crate::resources::{ENDPOINTS, ENDPOINTSLICES, NODES, PODS, Resource, SERVICES};

pub const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
pub const CONTROLLER: &str = "endpointslice-controller.k8s.io";
pub const SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Endpoints per slice, as kube-controller-manager's default.
pub const MAX_PER_SLICE: usize = 100;

type Key = (String, String);
/// (namespace, label key, label value).
type Pair = (String, String, String);
type Labels = Vec<(String, String)>;

#[derive(Debug, Default)]
pub struct EndpointsController {
    /// Services to reconcile, by (namespace, name).
    queue: BTreeSet<Key>,
    /// Managed slice names by (namespace, service), so a sync reads its own
    /// slices instead of scanning the namespace.
    slices: HashMap<Key, BTreeSet<String>>,
    /// Each selector Service's selector and the pair it is indexed under.
    selectors: HashMap<Key, (Labels, Pair)>,
    /// Services by the one selector pair each is indexed under.
    services_by_pair: HashMap<Pair, BTreeSet<String>>,
    /// How many selectors hold each pair, to pick the rarest.
    pair_uses: HashMap<Pair, usize>,
    /// Every pod's labels, and pods by label pair.
    pod_labels: HashMap<Key, Labels>,
    pods_by_pair: HashMap<Pair, BTreeSet<String>>,
    /// Services whose selectors pod events made the controller check, for
    /// tests to hold the work to what a pod concerns.
    checked: u64,
}

fn selector(svc: &Value) -> Option<&Map<String, Value>> {
    svc.pointer("/spec/selector")
        .and_then(Value::as_object)
        .filter(|m| !m.is_empty())
}

fn selects<'a>(sel: &Map<String, Value>, label: impl Fn(&str) -> Option<&'a str>) -> bool {
    sel.iter().all(|(k, v)| label(k) == v.as_str())
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

/// The pod's addresses of `family`.
fn pod_ips(pod: &Value, family: &str) -> Vec<String> {
    let mut ips: Vec<String> = pod
        .pointer("/status/podIPs")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|p| p.get("ip")?.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    if ips.is_empty() && !s(pod, "/status/podIP").is_empty() {
        ips.push(s(pod, "/status/podIP").to_string());
    }
    ips.into_iter()
        .filter(|ip| {
            ip.parse::<std::net::IpAddr>()
                .is_ok_and(|a| (family == "IPv6") == a.is_ipv6())
        })
        .collect()
}

fn pod_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| s(c, "/type") == "Ready" && s(c, "/status") == "True")
}

/// Resolves a service port's targetPort for one pod; None when a named port
/// is not declared by any of its containers.
fn target_port(port: &Value, pod: &Value) -> Option<i64> {
    match port.get("targetPort") {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(name)) => {
            let proto = port
                .get("protocol")
                .and_then(Value::as_str)
                .unwrap_or("TCP");
            pod.pointer("/spec/containers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .flat_map(|c| {
                    c.get("ports")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                })
                .find(|p| {
                    s(p, "/name") == name
                        && p.get("protocol").and_then(Value::as_str).unwrap_or("TCP") == proto
                })
                .and_then(|p| p.get("containerPort")?.as_i64())
        }
        _ => port.get("port").and_then(Value::as_i64),
    }
}

/// The slice ports for one pod: a pod missing a named port is left out.
fn ports_for(svc: &Value, pod: &Value) -> Option<Vec<Value>> {
    svc.pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| {
            let mut out = json!({
                "name": p.get("name").and_then(Value::as_str).unwrap_or(""),
                "port": target_port(p, pod)?,
                "protocol": p.get("protocol").and_then(Value::as_str).unwrap_or("TCP"),
            });
            if let Some(ap) = p.get("appProtocol") {
                out["appProtocol"] = ap.clone();
            }
            Some(out)
        })
        .collect()
}

/// Slice content for one address type and one set of resolved ports.
struct Group {
    ports: Vec<Value>,
    endpoints: Vec<Value>,
}

/// One subset of the legacy Endpoints object.
struct Subset {
    ports: Vec<Value>,
    ready: Vec<Value>,
    not_ready: Vec<Value>,
}

struct Desired {
    /// (addressType, ports) -> endpoints, in pod name order.
    groups: BTreeMap<(String, String), Group>,
    /// Endpoints-object subsets by ports.
    subsets: BTreeMap<String, Subset>,
}

fn desired(
    reg: &Registry,
    svc: &Value,
    sel: &Map<String, Value>,
    names: &BTreeSet<String>,
) -> Desired {
    let ns = object::namespace(svc);
    let mut families = object::ip_families(svc);
    if families.is_empty() {
        families.push("IPv4".into());
    }
    let publish_not_ready = svc
        .pointer("/spec/publishNotReadyAddresses")
        .and_then(Value::as_bool)
        == Some(true);
    let svc_name = object::name(svc);
    let mut zones: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut out = Desired {
        groups: BTreeMap::new(),
        subsets: BTreeMap::new(),
    };
    // The candidates, checked against the stored pod in case the index
    // lags behind it.
    let pods = names.iter().filter_map(|name| {
        let entry = reg.store.entry(&PODS, ns, name).ok()??;
        if !selects(sel, |k| entry.attrs.label(k)) {
            return None;
        }
        entry.value().ok()
    });
    for pod in pods {
        if matches!(s(&pod, "/status/phase"), "Succeeded" | "Failed") {
            continue;
        }
        let Some(ports) = ports_for(svc, &pod) else {
            continue;
        };
        let terminating = object::deletion_timestamp(&pod).is_some();
        let serving = pod_ready(&pod) || publish_not_ready;
        let ready = serving && (!terminating || publish_not_ready);
        let node = s(&pod, "/spec/nodeName").to_string();
        let zone = zones
            .entry(node.clone())
            .or_insert_with(|| {
                reg.store
                    .get(&NODES, "", &node)
                    .ok()
                    .flatten()
                    .and_then(|n| {
                        object::label(&n, "topology.kubernetes.io/zone").map(String::from)
                    })
            })
            .clone();
        let ports_key = serde_json::to_string(&ports).unwrap_or_default();
        let hostname = (s(&pod, "/spec/subdomain") == svc_name
            && !s(&pod, "/spec/hostname").is_empty())
        .then(|| s(&pod, "/spec/hostname").to_string());
        let target_ref = json!({"kind": "Pod", "namespace": ns, "name": object::name(&pod), "uid": object::uid(&pod)});
        for family in &families {
            for ip in pod_ips(&pod, family) {
                let mut ep = json!({
                    "addresses": [ip],
                    "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
                    "targetRef": target_ref,
                });
                if let Some(h) = &hostname {
                    ep["hostname"] = json!(h);
                }
                if !node.is_empty() {
                    ep["nodeName"] = json!(node);
                }
                if let Some(z) = &zone {
                    ep["zone"] = json!(z);
                }
                let group = out
                    .groups
                    .entry((family.clone(), ports_key.clone()))
                    .or_insert_with(|| Group {
                        ports: ports.clone(),
                        endpoints: Vec::new(),
                    });
                group.endpoints.push(ep);
                let mut addr = json!({"ip": ip, "targetRef": target_ref});
                if !node.is_empty() {
                    addr["nodeName"] = json!(node);
                }
                if let Some(h) = &hostname {
                    addr["hostname"] = json!(h);
                }
                let subset = out
                    .subsets
                    .entry(ports_key.clone())
                    .or_insert_with(|| Subset {
                        ports: ports.clone(),
                        ready: Vec::new(),
                        not_ready: Vec::new(),
                    });
                if ready {
                    subset.ready.push(addr);
                } else if !terminating {
                    subset.not_ready.push(addr);
                }
            }
        }
    }
    // A service with no endpoints still gets one empty slice per family.
    if out.groups.is_empty() {
        let ports: Vec<Value> = svc
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|p| json!({"name": p.get("name").and_then(Value::as_str).unwrap_or(""), "port": target_port(p, &json!({})), "protocol": p.get("protocol").and_then(Value::as_str).unwrap_or("TCP")}))
            .filter(|p| !p["port"].is_null())
            .collect();
        for family in &families {
            out.groups.insert(
                (family.clone(), String::new()),
                Group {
                    ports: ports.clone(),
                    endpoints: Vec::new(),
                },
            );
        }
    }
    out
}

fn owner_ref(svc: &Value) -> Value {
    json!([{"apiVersion": "v1", "kind": "Service", "name": object::name(svc), "uid": object::uid(svc), "controller": true, "blockOwnerDeletion": true}])
}

impl EndpointsController {
    fn sync(&mut self, reg: &Registry, ns: &str, name: &str) {
        let svc = reg.store.get(&SERVICES, ns, name).ok().flatten();
        let sel = svc.as_deref().and_then(selector);
        let existing: Vec<_> = self
            .slices
            .get(&(ns.to_string(), name.to_string()))
            .into_iter()
            .flatten()
            .filter_map(|slice| reg.store.get(&ENDPOINTSLICES, ns, slice).ok().flatten())
            .filter(|sl| {
                object::label(sl, SERVICE_NAME) == Some(name)
                    && object::label(sl, MANAGED_BY) == Some(CONTROLLER)
            })
            .collect();
        let (Some(svc), Some(sel)) = (svc.as_deref(), sel) else {
            // Gone or selectorless: its managed slices and Endpoints go.
            for sl in existing {
                delete(reg, self.name(), &ENDPOINTSLICES, ns, object::name(&sl));
            }
            if let Ok(Some(ep)) = reg.store.get(&ENDPOINTS, ns, name)
                && object::label(&ep, "endpoints.kubernetes.io/managed-by")
                    == Some("endpoint-controller")
            {
                delete(reg, self.name(), &ENDPOINTS, ns, name);
            }
            return;
        };
        let candidates = self.pods_with(ns, sel);
        let want = desired(reg, svc, sel, &candidates);
        let mut labels = object::labels(svc).cloned().unwrap_or_default();
        labels.insert(SERVICE_NAME.into(), json!(name));
        labels.insert(MANAGED_BY.into(), json!(CONTROLLER));
        if svc.pointer("/spec/clusterIP").and_then(Value::as_str) == Some("None") {
            labels.insert("service.kubernetes.io/headless".into(), json!(""));
        }
        let mut slices: Vec<Value> = Vec::new();
        for ((family, _), Group { ports, endpoints }) in &want.groups {
            let chunks: Vec<&[Value]> = if endpoints.is_empty() {
                vec![&[][..]]
            } else {
                endpoints.chunks(MAX_PER_SLICE).collect()
            };
            for chunk in chunks {
                slices.push(json!({
                    "apiVersion": "discovery.k8s.io/v1",
                    "kind": "EndpointSlice",
                    "metadata": {"namespace": ns, "labels": labels, "ownerReferences": owner_ref(svc)},
                    "addressType": family,
                    "endpoints": chunk,
                    "ports": ports,
                }));
            }
        }
        // Reuse existing slices in order (same address type first) so that a
        // change rewrites slices in place instead of deleting and recreating.
        let mut spare: Vec<_> = existing;
        for mut slice in slices {
            let family = slice["addressType"].as_str().unwrap_or("").to_string();
            let reuse = spare
                .iter()
                .position(|e| s(e, "/addressType") == family)
                .map(|i| spare.remove(i));
            match reuse {
                Some(cur) => {
                    let unchanged = cur.get("endpoints").unwrap_or(&json!([]))
                        == slice.get("endpoints").unwrap_or(&json!([]))
                        && cur.get("ports") == slice.get("ports")
                        && object::labels(&cur) == object::labels(&slice);
                    if unchanged {
                        continue;
                    }
                    slice["metadata"]["name"] = json!(object::name(&cur));
                    slice["metadata"]["resourceVersion"] =
                        json!(object::resource_version(&cur).to_string());
                    if let Err(e) = reg.update(
                        &ENDPOINTSLICES,
                        ns,
                        object::name(&cur),
                        None,
                        slice,
                        &write_opts(),
                    ) {
                        log_failure(self.name(), name, &e);
                    }
                }
                None => {
                    slice["metadata"]["generateName"] = json!(format!("{name}-"));
                    // Indexed at once: the next sync must see it even before
                    // its event arrives.
                    match reg.create(&ENDPOINTSLICES, ns, slice, &write_opts()) {
                        Ok(created) => match created.value() {
                            Ok(v) => self.index_slice(&v, true),
                            Err(e) => log_failure(self.name(), name, &e),
                        },
                        Err(e) => log_failure(self.name(), name, &e),
                    }
                }
            }
        }
        for extra in spare {
            delete(reg, self.name(), &ENDPOINTSLICES, ns, object::name(&extra));
        }
        self.sync_endpoints(reg, svc, &want);
    }

    /// The legacy Endpoints object, for clients that still read it.
    fn sync_endpoints(&self, reg: &Registry, svc: &Value, want: &Desired) {
        let (ns, name) = (object::namespace(svc), object::name(svc));
        let subsets: Vec<Value> = want
            .subsets
            .values()
            .filter(|ss| !ss.ready.is_empty() || !ss.not_ready.is_empty())
            .map(
                |Subset {
                     ports,
                     ready,
                     not_ready,
                 }| {
                    let ports: Vec<Value> = ports
                        .iter()
                        .map(|p| {
                            let mut p = p.clone();
                            if p["name"] == ""
                                && let Some(m) = p.as_object_mut()
                            {
                                m.remove("name");
                            }
                            p
                        })
                        .collect();
                    let mut ss = json!({ "ports": ports });
                    if !ready.is_empty() {
                        ss["addresses"] = json!(ready);
                    }
                    if !not_ready.is_empty() {
                        ss["notReadyAddresses"] = json!(not_ready);
                    }
                    ss
                },
            )
            .collect();
        let mut labels = object::labels(svc).cloned().unwrap_or_default();
        labels.insert(
            "endpoints.kubernetes.io/managed-by".into(),
            json!("endpoint-controller"),
        );
        let mut body = json!({
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
        });
        if !subsets.is_empty() {
            body["subsets"] = json!(subsets);
        }
        match reg.store.get(&ENDPOINTS, ns, name) {
            Ok(Some(cur)) => {
                if cur.get("subsets") == body.get("subsets")
                    && object::labels(&cur) == object::labels(&body)
                {
                    return;
                }
                body["metadata"]["resourceVersion"] =
                    json!(object::resource_version(&cur).to_string());
                if let Err(e) = reg.update(&ENDPOINTS, ns, name, None, body, &write_opts()) {
                    log_failure(self.name(), name, &e);
                }
            }
            _ => {
                if let Err(e) = reg.create(&ENDPOINTS, ns, body, &write_opts()) {
                    log_failure(self.name(), name, &e);
                }
            }
        }
    }

    fn index_slice(&mut self, slice: &Value, present: bool) {
        if object::label(slice, MANAGED_BY) != Some(CONTROLLER) {
            return;
        }
        let Some(svc) = object::label(slice, SERVICE_NAME) else {
            return;
        };
        let key = (object::namespace(slice).to_string(), svc.to_string());
        let names = self.slices.entry(key.clone()).or_default();
        if present {
            names.insert(object::name(slice).to_string());
        } else {
            names.remove(object::name(slice));
            if names.is_empty() {
                self.slices.remove(&key);
            }
        }
    }

    /// The pods of `ns` carrying the rarest pair of `sel`.
    fn pods_with(&self, ns: &str, sel: &Map<String, Value>) -> BTreeSet<String> {
        sel.iter()
            .filter_map(|(k, v)| {
                let pair = (ns.to_string(), k.clone(), v.as_str()?.to_string());
                Some(self.pods_by_pair.get(&pair))
            })
            .min_by_key(|names| names.map_or(0, BTreeSet::len))
            .flatten()
            .cloned()
            .unwrap_or_default()
    }

    fn index_service(&mut self, key: &Key, svc: Option<&Value>) {
        if let Some((pairs, at)) = self.selectors.remove(key) {
            if let Some(names) = self.services_by_pair.get_mut(&at) {
                names.remove(&key.1);
                if names.is_empty() {
                    self.services_by_pair.remove(&at);
                }
            }
            for (k, v) in pairs {
                let pair = (key.0.clone(), k, v);
                if let Some(n) = self.pair_uses.get_mut(&pair) {
                    *n -= 1;
                    if *n == 0 {
                        self.pair_uses.remove(&pair);
                    }
                }
            }
        }
        let Some(sel) = svc.and_then(selector) else {
            return;
        };
        let pairs: Labels = sel
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
            .collect();
        // A selector value that is not a string matches no pod: index it
        // under its first pair like any other; the check refuses it.
        let mut best: Option<(usize, Pair)> = None;
        for (k, v) in &pairs {
            let pair = (key.0.clone(), k.clone(), v.clone());
            let n = self.pair_uses.entry(pair.clone()).or_default();
            *n += 1;
            if best.as_ref().is_none_or(|(m, _)| *n < *m) {
                best = Some((*n, pair));
            }
        }
        let Some((_, at)) = best else { return };
        self.services_by_pair
            .entry(at.clone())
            .or_default()
            .insert(key.1.clone());
        self.selectors.insert(key.clone(), (pairs, at));
    }

    fn index_pod(&mut self, key: &Key, labels: Option<Labels>) {
        if let Some(old) = self.pod_labels.remove(key) {
            for (k, v) in old {
                let pair = (key.0.clone(), k, v);
                if let Some(names) = self.pods_by_pair.get_mut(&pair) {
                    names.remove(&key.1);
                    if names.is_empty() {
                        self.pods_by_pair.remove(&pair);
                    }
                }
            }
        }
        let Some(labels) = labels else { return };
        for (k, v) in &labels {
            self.pods_by_pair
                .entry((key.0.clone(), k.clone(), v.clone()))
                .or_default()
                .insert(key.1.clone());
        }
        self.pod_labels.insert(key.clone(), labels);
    }

    /// Queues the Services of `ns` whose selector matches `labels`: only
    /// those indexed under one of the labels' pairs are looked at.
    fn services_selecting(&mut self, ns: &str, labels: &Labels) {
        let get = |k: &str| {
            labels
                .iter()
                .find(|(lk, _)| lk == k)
                .map(|(_, v)| v.as_str())
        };
        for (k, v) in labels {
            let pair = (ns.to_string(), k.clone(), v.clone());
            for name in self.services_by_pair.get(&pair).into_iter().flatten() {
                let key = (ns.to_string(), name.clone());
                self.checked += 1;
                if self
                    .selectors
                    .get(&key)
                    .is_some_and(|(sel, _)| sel.iter().all(|(k, v)| get(k) == Some(v.as_str())))
                {
                    self.queue.insert(key);
                }
            }
        }
    }
}

fn labels_of(obj: &Value) -> Labels {
    object::labels(obj)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect()
}

impl Controller for EndpointsController {
    fn name(&self) -> &'static str {
        "endpointslice"
    }

    fn watches(&self, res: &Resource) -> bool {
        matches!(res.kind, "Service" | "Pod" | "EndpointSlice" | "Node")
    }

    fn resync(&mut self, reg: &Registry) {
        *self = Self {
            queue: std::mem::take(&mut self.queue),
            checked: self.checked,
            ..Self::default()
        };
        for slice in list_all(reg, &ENDPOINTSLICES, None) {
            self.index_slice(&slice, true);
        }
        for svc in list_all(reg, &SERVICES, None) {
            let key = key_of(&svc);
            self.index_service(&key, Some(&svc));
            self.queue.insert(key);
        }
        // Only the pods' metadata is read.
        let pods = reg
            .store
            .list_entries(&PODS, None, None, 0, |_| true)
            .map(|p| p.items)
            .unwrap_or_default();
        for entry in pods {
            let meta = super::parse_meta(&entry);
            let key = key_of(&meta);
            self.index_pod(&key, Some(labels_of(&meta)));
        }
    }

    fn observe(&mut self, reg: &Registry, ev: &Change) {
        match ev.resource.kind {
            "Service" => {
                let key = ev.key();
                let svc = (ev.kind != crate::store::EventType::Deleted).then(|| ev.object());
                self.index_service(&key, svc);
                self.queue.insert(key);
            }
            "Pod" => {
                // Only changes that matter to endpoints: labels, addresses,
                // readiness, deletion.
                let relevant = |p: &Value| {
                    json!([
                        object::labels(p),
                        p.pointer("/status/podIPs"),
                        p.pointer("/status/podIP"),
                        pod_ready(p),
                        object::deletion_timestamp(p),
                        p.pointer("/status/phase"),
                        p.pointer("/spec/nodeName"),
                        p.pointer("/spec/hostname"),
                        p.pointer("/spec/subdomain")
                    ])
                };
                let key = ev.key();
                let deleted = ev.kind == crate::store::EventType::Deleted;
                let labels = labels_of(ev.object_meta());
                let before = self.pod_labels.get(&key).cloned();
                self.index_pod(&key, (!deleted).then(|| labels.clone()));
                if ev.previous().map(relevant) == Some(relevant(ev.object())) && !deleted {
                    return;
                }
                self.services_selecting(&ev.namespace, &labels);
                let prev = ev.previous_meta().map(labels_of).or(before);
                if let Some(prev) = prev.filter(|p| *p != labels) {
                    self.services_selecting(&ev.namespace, &prev);
                }
            }
            "EndpointSlice" => {
                if let Some(prev) = ev.previous_meta() {
                    self.index_slice(prev, false);
                }
                self.index_slice(
                    ev.object_meta(),
                    ev.kind != crate::store::EventType::Deleted,
                );
                // Someone changed or removed a managed slice: put it right.
                if ev.label(MANAGED_BY) == Some(CONTROLLER)
                    && let Some(svc) = ev.label(SERVICE_NAME)
                {
                    self.queue.insert((ev.namespace.clone(), svc.to_string()));
                }
            }
            // A node's zone label feeds every endpoint on it.
            _ => {
                if ev
                    .previous_meta()
                    .map(|p| object::label(p, "topology.kubernetes.io/zone"))
                    != Some(ev.label("topology.kubernetes.io/zone"))
                {
                    self.resync(reg);
                }
            }
        }
    }

    fn reconcile(&mut self, reg: &Registry) {
        for (ns, name) in std::mem::take(&mut self.queue) {
            self.sync(reg, &ns, &name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::WriteOptions;
    use std::time::Instant;

    fn pod(i: usize, services: usize, ready: bool) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("p{i}"), "labels": {"app": format!("s{}", i % services), "tier": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "nginx"}]},
            "status": {"phase": "Running", "podIP": format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255),
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
    }

    /// Loads `services` Services and `pods` pods (each selected by one
    /// Service), syncs everything, then changes the readiness of `changes`
    /// pods and feeds their events; returns the times of both phases.
    fn load(services: usize, pods: usize, changes: usize) -> (EndpointsController, Registry) {
        let reg = Registry::in_memory().expect("registry");
        let opts = WriteOptions::default();
        let started = Instant::now();
        for j in 0..services {
            let svc = json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": format!("s{j}")},
                "spec": {"selector": {"app": format!("s{j}"), "tier": "web"}, "ports": [{"port": 80}]}});
            reg.create(&SERVICES, "default", svc, &opts)
                .expect("service");
        }
        for i in 0..pods {
            reg.create(&PODS, "default", pod(i, services, true), &opts)
                .expect("pod");
            // Create leaves the status out, as kube-apiserver does.
            reg.update(
                &PODS,
                "default",
                &format!("p{i}"),
                Some("status"),
                pod(i, services, true),
                &opts,
            )
            .expect("status");
        }
        eprintln!(
            "loaded {services} services and {pods} pods in {:?}",
            started.elapsed()
        );
        let mut ctrl = EndpointsController::default();
        let started = Instant::now();
        ctrl.resync(&reg);
        ctrl.reconcile(&reg);
        eprintln!(
            "initial sync of {services} services: {:?}",
            started.elapsed()
        );
        let started = Instant::now();
        ctrl.checked = 0;
        let mut done = 0;
        while done < changes {
            // The in-memory history keeps 1000 events: feed them in batches.
            let from = reg.store.revision();
            let batch = (changes - done).min(500);
            for i in done..done + batch {
                reg.update(
                    &PODS,
                    "default",
                    &format!("p{i}"),
                    Some("status"),
                    pod(i, services, false),
                    &opts,
                )
                .expect("status");
            }
            for ev in reg.store.events_after(from).expect("events") {
                let change = Change::of(ev);
                if ctrl.watches(change.resource) {
                    ctrl.observe(&reg, &change);
                }
            }
            ctrl.reconcile(&reg);
            done += batch;
        }
        eprintln!(
            "{changes} pod readiness changes observed and synced: {:?}",
            started.elapsed()
        );
        (ctrl, reg)
    }

    fn ready_addresses(reg: &Registry, svc: &str) -> BTreeSet<String> {
        list_all(reg, &ENDPOINTSLICES, Some("default"))
            .iter()
            .filter(|s| object::label(s, SERVICE_NAME) == Some(svc))
            .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
            .filter(|e| e["conditions"]["ready"] == json!(true))
            .filter_map(|e| e["targetRef"]["name"].as_str().map(String::from))
            .collect()
    }

    /// A pod event looks only at the Services indexed under the pod's own
    /// labels (here the one that selects it; the pair every selector
    /// shares is not used), and the slices still follow readiness and
    /// label changes.
    #[test]
    fn pod_events_check_only_services_indexed_under_their_labels() {
        let (mut ctrl, reg) = load(300, 3000, 600);
        assert_eq!(ctrl.checked, 600, "one candidate Service per pod event");
        // p0 and p300 belong to s0; p0 went unready, p300 did not.
        assert_eq!(
            ready_addresses(&reg, "s0"),
            BTreeSet::from([
                "p600".into(),
                "p900".into(),
                "p1200".into(),
                "p1500".into(),
                "p1800".into(),
                "p2100".into(),
                "p2400".into(),
                "p2700".into()
            ])
        );
        // p2999 moves from s299 to s0.
        let from = reg.store.revision();
        let mut moved = pod(2999, 300, true);
        moved["metadata"]["labels"]["app"] = json!("s0");
        reg.update(
            &PODS,
            "default",
            "p2999",
            None,
            moved,
            &WriteOptions::default(),
        )
        .expect("relabel");
        for ev in reg.store.events_after(from).expect("events") {
            ctrl.observe(&reg, &Change::of(ev));
        }
        ctrl.reconcile(&reg);
        assert!(ready_addresses(&reg, "s0").contains("p2999"));
        assert!(!ready_addresses(&reg, "s299").contains("p2999"));
        assert_eq!(
            ready_addresses(&reg, "s298").len(),
            8,
            "p298 and p598 not ready"
        );
    }

    /// 10,000 Services and 100,000 pods (issue 12's scale row); run with
    /// `--ignored --nocapture` to read the times.
    #[test]
    #[ignore = "minutes of load; prints times"]
    fn ten_thousand_services_hundred_thousand_pods() {
        load(10_000, 100_000, 2_000);
    }
}
