//! Node lifecycle: a node that stops renewing its Lease in
//! `kube-node-lease` and stops posting its Ready condition for longer than
//! `--node-monitor-grace-period` is marked unreachable, as
//! kube-controller-manager's node lifecycle controller does: its Ready
//! condition (and the pressure conditions it has) become `Unknown` with
//! reason `NodeStatusUnknown`, it gets the `node.kubernetes.io/unreachable`
//! taints (NoSchedule and NoExecute), and the Ready condition of its pods is
//! set False, so the EndpointSlice controller stops routing to them. When it
//! renews its Lease again the taints go; Ready comes back when the node
//! posts its own status.
//!
//! Health is judged by when this controller *saw* a renewal or a status
//! post, never by comparing the timestamps written in them with its own
//! clock. Only nodes that have a Lease are watched: Node objects that no
//! agent keeps alive (written by hand or by tests) are left alone. Taint
//! based eviction (deleting pods after their NoExecute tolerations run
//! out) is not done here.

use super::key_of;
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::scheduler::TAINT_UNREACHABLE;
use super::{Change, Controller, list_all, log_failure, record_event, write_opts};
use crate::config::ClusterConfig;
use crate::object;
use crate::registry::Registry;
use crate::resources::{LEASES, NODES, PODS, Resource};
use crate::store::EventType;

pub const LEASE_NAMESPACE: &str = "kube-node-lease";
const COMPONENT: &str = "node-controller";
const UNKNOWN_REASON: &str = "NodeStatusUnknown";

type Key = (String, String);

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

/// The Ready condition's (status, reason, lastHeartbeatTime).
fn ready(node: &Value) -> Option<(&str, &str, &str)> {
    node.pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| s(c, "/type") == "Ready")
        .map(|c| (s(c, "/status"), s(c, "/reason"), s(c, "/lastHeartbeatTime")))
}

fn unreachable_taints(node: &Value) -> bool {
    node.pointer("/spec/taints")
        .and_then(Value::as_array)
        .is_some_and(|t| t.iter().any(|t| s(t, "/key") == TAINT_UNREACHABLE))
}

#[derive(Debug)]
struct NodeState {
    /// The node has a Lease: it is watched.
    lease: bool,
    /// The node object exists.
    exists: bool,
    /// When a renewal or a status post was last seen.
    heard: Instant,
    /// When it is next checked.
    check: Option<Instant>,
    /// Ready is Unknown because of us.
    marked: bool,
    tainted: bool,
}

#[derive(Debug)]
pub struct NodeLifecycle {
    grace: Duration,
    nodes: HashMap<String, NodeState>,
    checks: BTreeSet<(Instant, String)>,
    /// Pods by the node they are bound to.
    pods: HashMap<String, BTreeSet<Key>>,
    pod_node: HashMap<Key, String>,
    /// Nodes to look at on the next reconcile.
    dirty: BTreeSet<String>,
}

impl NodeLifecycle {
    pub fn new(config: &ClusterConfig) -> Self {
        Self {
            grace: config.node_monitor_grace_period,
            nodes: HashMap::new(),
            checks: BTreeSet::new(),
            pods: HashMap::new(),
            pod_node: HashMap::new(),
            dirty: BTreeSet::new(),
        }
    }

    fn state(&mut self, name: &str) -> &mut NodeState {
        self.nodes
            .entry(name.to_string())
            .or_insert_with(|| NodeState {
                lease: false,
                exists: false,
                heard: Instant::now(),
                check: None,
                marked: false,
                tainted: false,
            })
    }

    fn heard(&mut self, name: &str) {
        self.state(name).heard = Instant::now();
        self.dirty.insert(name.to_string());
    }

    fn lease_changed(&mut self, name: &str, lease: &Value, previous: Option<&Value>) {
        let renewed = previous.is_none_or(|p| p.get("spec") != lease.get("spec"));
        self.state(name).lease = true;
        if renewed {
            self.heard(name);
        }
    }

    fn node_changed(&mut self, name: &str, node: &Value, previous: Option<&Value>) {
        let now_ready = ready(node);
        // A status post by the node itself, not our own marking.
        let posted = now_ready.is_some_and(|(_, reason, _)| reason != UNKNOWN_REASON)
            && previous.is_none_or(|p| {
                ready(p).map(|(st, _, hb)| (st, hb)) != now_ready.map(|(st, _, hb)| (st, hb))
            });
        let st = self.state(name);
        st.exists = true;
        st.marked =
            now_ready.is_some_and(|(st, reason, _)| st == "Unknown" && reason == UNKNOWN_REASON);
        st.tainted = unreachable_taints(node);
        if posted {
            self.heard(name);
        } else {
            self.dirty.insert(name.to_string());
        }
    }

    fn pod_changed(&mut self, key: Key, node: &str) {
        match self.pod_node.get(&key) {
            Some(n) if n == node => return,
            Some(_) => self.pod_deleted(&key),
            None => {}
        }
        if !node.is_empty() {
            self.pods
                .entry(node.to_string())
                .or_default()
                .insert(key.clone());
            self.pod_node.insert(key, node.to_string());
        }
    }

    fn pod_deleted(&mut self, key: &Key) {
        if let Some(node) = self.pod_node.remove(key)
            && let Some(set) = self.pods.get_mut(&node)
        {
            set.remove(key);
            if set.is_empty() {
                self.pods.remove(&node);
            }
        }
    }

    fn schedule_check(&mut self, name: &str, at: Option<Instant>) {
        let st = self.state(name);
        let old = std::mem::replace(&mut st.check, at);
        if let Some(old) = old {
            self.checks.remove(&(old, name.to_string()));
        }
        if let Some(at) = at {
            self.checks.insert((at, name.to_string()));
        }
    }

    fn check(&mut self, reg: &Registry, name: &str) {
        let Some(st) = self.nodes.get(name) else {
            return;
        };
        if !st.exists || !st.lease {
            self.schedule_check(name, None);
            return;
        }
        let deadline = st.heard + self.grace;
        let (marked, tainted) = (st.marked, st.tainted);
        if Instant::now() < deadline {
            if tainted {
                self.untaint(reg, name);
            }
            self.schedule_check(name, Some(deadline));
            return;
        }
        self.schedule_check(name, None);
        if !marked || !tainted {
            self.mark_unreachable(reg, name);
        }
    }

    /// Ready=Unknown, the unreachable taints, and the node's pods not ready.
    fn mark_unreachable(&mut self, reg: &Registry, name: &str) {
        let Ok(Some(node)) = reg.store.get(&NODES, "", name) else {
            return;
        };
        let mut next = (*node).clone();
        let never = ready(&node).is_none();
        let message = if never {
            "Kubelet never posted node status."
        } else {
            "Kubelet stopped posting node status."
        };
        let changed = mark_conditions_unknown(&mut next, message);
        if changed {
            tracing::warn!(node = name, grace = ?self.grace, "node stopped renewing its lease and posting status: marking it unreachable");
            match reg.update(&NODES, "", name, Some("status"), next, &write_opts()) {
                Ok(_) => {
                    let obj = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "uid": object::uid(&node)}});
                    record_event(
                        reg,
                        COMPONENT,
                        &obj,
                        "Normal",
                        "NodeNotReady",
                        &format!("Node {name} status is now: NodeNotReady"),
                    );
                }
                Err(e) => {
                    log_failure(self.name(), name, &e);
                    self.dirty.insert(name.to_string());
                    return;
                }
            }
        }
        self.set_taints(reg, name, true);
        for key in self.pods.get(name).cloned().unwrap_or_default() {
            mark_pod_not_ready(reg, &key, name);
        }
    }

    fn untaint(&mut self, reg: &Registry, name: &str) {
        tracing::info!(
            node = name,
            "node renewed its lease: removing the unreachable taints"
        );
        self.set_taints(reg, name, false);
    }

    fn set_taints(&mut self, reg: &Registry, name: &str, on: bool) {
        let Ok(Some(node)) = reg.store.get(&NODES, "", name) else {
            return;
        };
        let mut taints: Vec<Value> = node
            .pointer("/spec/taints")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if on == unreachable_taints(&node) {
            return;
        }
        taints.retain(|t| s(t, "/key") != TAINT_UNREACHABLE);
        if on {
            taints.push(json!({"key": TAINT_UNREACHABLE, "effect": "NoSchedule"}));
            taints.push(json!({"key": TAINT_UNREACHABLE, "effect": "NoExecute", "timeAdded": object::now()}));
        }
        let mut next = (*node).clone();
        next["spec"]["taints"] = if taints.is_empty() {
            Value::Null
        } else {
            json!(taints)
        };
        if let Err(e) = reg.update(&NODES, "", name, None, next, &write_opts()) {
            log_failure(self.name(), name, &e);
            self.dirty.insert(name.to_string());
        }
    }
}

/// Ready, and the pressure conditions the node has, set Unknown (kube's
/// tryUpdateNodeHealth), keeping their heartbeat times; whether anything
/// changed.
fn mark_conditions_unknown(node: &mut Value, message: &str) -> bool {
    let now = object::now();
    let created = node
        .pointer("/metadata/creationTimestamp")
        .cloned()
        .unwrap_or_else(|| json!(now));
    if !node.get("status").is_some_and(Value::is_object) {
        node["status"] = json!({});
    }
    if !node["status"]["conditions"].is_array() {
        node["status"]["conditions"] = json!([]);
    }
    let Some(conditions) = node["status"]["conditions"].as_array_mut() else {
        return false;
    };
    if !conditions.iter().any(|c| s(c, "/type") == "Ready") {
        conditions.push(json!({"type": "Ready", "lastHeartbeatTime": created}));
    }
    let mut changed = false;
    for c in conditions.iter_mut().filter(|c| {
        matches!(
            s(c, "/type"),
            "Ready" | "MemoryPressure" | "DiskPressure" | "PIDPressure"
        )
    }) {
        if s(c, "/status") == "Unknown" && s(c, "/reason") == UNKNOWN_REASON {
            continue;
        }
        changed = true;
        if s(c, "/status") != "Unknown" {
            c["lastTransitionTime"] = json!(now);
        }
        c["status"] = json!("Unknown");
        c["reason"] = json!(UNKNOWN_REASON);
        c["message"] = json!(message);
    }
    changed
}

/// The pod's Ready condition set False, as MarkPodsNotReady does.
fn mark_pod_not_ready(reg: &Registry, (ns, name): &Key, node: &str) {
    let Ok(Some(pod)) = reg.store.get(&PODS, ns, name) else {
        return;
    };
    if s(&pod, "/spec/nodeName") != node {
        return;
    }
    let is_ready = pod
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| s(c, "/type") == "Ready" && s(c, "/status") != "False")
        });
    if !is_ready {
        return;
    }
    let mut next = (*pod).clone();
    for c in next
        .pointer_mut("/status/conditions")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if s(c, "/type") == "Ready" {
            c["status"] = json!("False");
            c["lastTransitionTime"] = json!(object::now());
        }
    }
    match reg.update(&PODS, ns, name, Some("status"), next, &write_opts()) {
        Ok(_) => record_event(
            reg,
            COMPONENT,
            &pod,
            "Warning",
            "NodeNotReady",
            "Node is not ready",
        ),
        Err(e) => log_failure(COMPONENT, name, &e),
    }
}

impl Controller for NodeLifecycle {
    fn name(&self) -> &'static str {
        "nodelifecycle"
    }

    fn watches(&self, res: &Resource) -> bool {
        matches!(res.kind, "Node" | "Lease" | "Pod")
    }

    fn resync(&mut self, reg: &Registry) {
        let grace = self.grace;
        *self = Self {
            grace,
            nodes: HashMap::new(),
            checks: BTreeSet::new(),
            pods: HashMap::new(),
            pod_node: HashMap::new(),
            dirty: BTreeSet::new(),
        };
        // Everything seen now counts as heard now: a restarted controller
        // gives every node a full grace period, as kube's does.
        for node in list_all(reg, &NODES, None) {
            self.node_changed(object::name(&node), &node, None);
        }
        for lease in list_all(reg, &LEASES, Some(LEASE_NAMESPACE)) {
            self.lease_changed(object::name(&lease), &lease, None);
        }
        for pod in list_all(reg, &PODS, None) {
            let key = key_of(&pod);
            self.pod_changed(key, s(&pod, "/spec/nodeName"));
        }
    }

    fn observe(&mut self, _reg: &Registry, ev: &Change) {
        let name = object::name(ev.object_meta()).to_string();
        match (ev.resource.kind, ev.kind) {
            ("Lease", _) if ev.namespace != LEASE_NAMESPACE => {}
            ("Lease", EventType::Deleted) => {
                self.state(&name).lease = false;
                self.dirty.insert(name);
            }
            ("Lease", _) => self.lease_changed(&name, ev.object(), ev.previous()),
            ("Node", EventType::Deleted) => {
                self.schedule_check(&name, None);
                self.nodes.remove(&name);
            }
            ("Node", _) => self.node_changed(&name, ev.object(), ev.previous()),
            ("Pod", EventType::Deleted) => self.pod_deleted(&(ev.namespace.clone(), name)),
            ("Pod", _) => {
                let node = s(ev.object(), "/spec/nodeName").to_string();
                self.pod_changed((ev.namespace.clone(), name), &node);
            }
            _ => {}
        }
    }

    fn reconcile(&mut self, reg: &Registry) {
        let now = Instant::now();
        while let Some((t, _)) = self.checks.first()
            && *t <= now
        {
            if let Some((_, name)) = self.checks.pop_first() {
                if let Some(st) = self.nodes.get_mut(&name) {
                    st.check = None;
                }
                self.dirty.insert(name);
            }
        }
        for name in std::mem::take(&mut self.dirty) {
            self.check(reg, &name);
        }
    }

    fn next_wakeup(&self) -> Option<Instant> {
        // A write that failed is tried again in a second.
        let retry = (!self.dirty.is_empty()).then(|| Instant::now() + Duration::from_secs(1));
        self.checks
            .first()
            .map(|(t, _)| *t)
            .into_iter()
            .chain(retry)
            .min()
    }
}
