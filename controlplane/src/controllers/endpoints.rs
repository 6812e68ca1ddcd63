//! The EndpointSlice controller, with the legacy Endpoints object mirrored
//! beside it: Services with a selector get slices listing the matching pods'
//! addresses, ports (named target ports resolved per pod) and conditions.
//! Slices of Services without a selector belong to their users and are left
//! alone.

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

#[derive(Debug, Default)]
pub struct EndpointsController {
    /// Services to reconcile, by (namespace, name).
    queue: BTreeSet<(String, String)>,
    /// Managed slice names by (namespace, service), so a sync reads its own
    /// slices instead of scanning the namespace.
    slices: HashMap<(String, String), BTreeSet<String>>,
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

fn desired(reg: &Registry, svc: &Value, sel: &Map<String, Value>) -> Desired {
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
    let pods = reg
        .store
        .list(&PODS, Some(ns), |a| selects(sel, |k| a.label(k)))
        .unwrap_or_default();
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
        let want = desired(reg, svc, sel);
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

    /// Services in `ns` whose selector matches `pod`.
    fn services_selecting(&mut self, reg: &Registry, pod: &Value) {
        let ns = object::namespace(pod);
        for svc in list_all(reg, &SERVICES, Some(ns)) {
            if selector(&svc).is_some_and(|sel| selects(sel, |k| object::label(pod, k))) {
                self.queue
                    .insert((ns.to_string(), object::name(&svc).to_string()));
            }
        }
    }
}

impl Controller for EndpointsController {
    fn name(&self) -> &'static str {
        "endpointslice"
    }

    fn watches(&self, res: &Resource) -> bool {
        matches!(res.kind, "Service" | "Pod" | "EndpointSlice" | "Node")
    }

    fn resync(&mut self, reg: &Registry) {
        self.slices.clear();
        for slice in list_all(reg, &ENDPOINTSLICES, None) {
            self.index_slice(&slice, true);
        }
        for svc in list_all(reg, &SERVICES, None) {
            self.queue.insert((
                object::namespace(&svc).to_string(),
                object::name(&svc).to_string(),
            ));
        }
    }

    fn observe(&mut self, reg: &Registry, ev: &Change) {
        match ev.resource.kind {
            "Service" => {
                self.queue.insert((
                    ev.namespace.clone(),
                    object::name(ev.object_meta()).to_string(),
                ));
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
                if ev.previous().map(relevant) == Some(relevant(ev.object()))
                    && ev.kind != crate::store::EventType::Deleted
                {
                    return;
                }
                self.services_selecting(reg, ev.object());
                if let Some(prev) = ev.previous() {
                    self.services_selecting(reg, prev);
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
                "spec": {"selector": {"app": format!("s{j}")}, "ports": [{"port": 80}]}});
            reg.create(&SERVICES, "default", svc, &opts).expect("service");
        }
        for i in 0..pods {
            reg.create(&PODS, "default", pod(i, services, true), &opts)
                .expect("pod");
        }
        eprintln!(
            "loaded {services} services and {pods} pods in {:?}",
            started.elapsed()
        );
        let mut ctrl = EndpointsController::default();
        let started = Instant::now();
        ctrl.resync(&reg);
        ctrl.reconcile(&reg);
        eprintln!("initial sync of {services} services: {:?}", started.elapsed());
        let started = Instant::now();
        let mut done = 0;
        while done < changes {
            // The in-memory history keeps 1000 events: feed them in batches.
            let from = reg.store.revision();
            let batch = (changes - done).min(500);
            for i in done..done + batch {
                reg.update(&PODS, "default", &format!("p{i}"), Some("status"), pod(i, services, false), &opts)
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

    /// 10,000 Services and 100,000 pods (issue 12's scale row); run with
    /// `--ignored --nocapture` to read the times.
    #[test]
    #[ignore = "minutes of load; prints times"]
    fn ten_thousand_services_hundred_thousand_pods() {
        load(10_000, 100_000, 2_000);
    }
}
