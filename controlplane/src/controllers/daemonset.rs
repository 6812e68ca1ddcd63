//! The DaemonSet controller, with kube-controller-manager's semantics
//! (pkg/controller/daemon): one pod per eligible node, pinned there by a
//! required node affinity `matchFields metadata.name In [node]` (the
//! scheduler binds it) and carrying the tolerations upstream adds to every
//! daemon pod; a node is eligible when the template's node selector and
//! required affinity match it and it tolerates the node's taints (the
//! scheduler's own filters, [`DaemonFit`]). Pods on nodes that stop being
//! eligible are deleted (for `NoExecute` taints and affinity; a new
//! `NoSchedule` taint leaves a running pod alone), failed pods replaced
//! after a per-node back-off, duplicates removed. Templates are recorded
//! as ControllerRevisions and pods labelled `controller-revision-hash`;
//! `RollingUpdate` replaces old pods within `maxUnavailable`, or surges a
//! new pod beside the old one within `maxSurge`; `OnDelete` waits for the
//! user. Status as upstream counts it, so `kubectl rollout status ds/x`
//! works.
//!
//! The controller keeps the nodes and a summary of the pods that belong to
//! DaemonSets, so an event costs the DaemonSet it concerns (a node event:
//! every DaemonSet, as upstream).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::events::{PodAction, Recorder};
use super::history::{self, HASH_LABEL};
use super::owned::Key;
use super::pod_owners::{OwnedPod, PodOwners};
use super::replicaset::{PodInfo, controller_ref};
use super::scheduler::DaemonFit;
use super::status::{self, Availability, epoch_now};
use super::{Change, Controller, log_failure, write_opts};
use crate::admission::workloads::scaled_value;
use crate::object;
use crate::registry::{DeleteOptions, Registry};
use crate::resources::{DAEMONSETS, NODES, PODS, Resource};
use crate::store::EventType;

pub const COMPONENT: &str = "daemonset-controller";
/// Pods created or deleted in one sync at most (upstream's burstReplicas).
const BURST: usize = 250;
const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(15 * 60);

/// The tolerations upstream gives every daemon pod
/// (AddOrUpdateDaemonPodTolerations).
fn daemon_tolerations(host_network: bool) -> Vec<Value> {
    let mut t = vec![
        json!({"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"}),
        json!({"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"}),
        json!({"key": "node.kubernetes.io/disk-pressure", "operator": "Exists", "effect": "NoSchedule"}),
        json!({"key": "node.kubernetes.io/memory-pressure", "operator": "Exists", "effect": "NoSchedule"}),
        json!({"key": "node.kubernetes.io/pid-pressure", "operator": "Exists", "effect": "NoSchedule"}),
        json!({"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}),
    ];
    if host_network {
        t.push(json!({"key": "node.kubernetes.io/network-unavailable", "operator": "Exists", "effect": "NoSchedule"}));
    }
    t
}

/// The node a daemon pod is for: its nodeName, else the one node its
/// required affinity names (upstream's GetTargetNodeName).
fn target_node(pod: &Value) -> String {
    if let Some(n) = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    {
        return n.to_string();
    }
    pod.pointer("/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|t| t.get("matchFields").and_then(Value::as_array).into_iter().flatten())
        .find(|r| {
            r.get("key").and_then(Value::as_str) == Some("metadata.name")
                && r.get("operator").and_then(Value::as_str) == Some("In")
                && r.get("values").and_then(Value::as_array).is_some_and(|v| v.len() == 1)
        })
        .and_then(|r| r.pointer("/values/0").and_then(Value::as_str))
        .unwrap_or("")
        .to_string()
}

/// The pod template made a pod for `node` (upstream's
/// ReplaceDaemonSetPodNodeNameNodeAffinity: the required affinity becomes
/// the one node).
fn pin(pod: &Value, node: &str) -> Value {
    let mut pod = pod.clone();
    let term = json!({"nodeSelectorTerms": [{"matchFields": [
        {"key": "metadata.name", "operator": "In", "values": [node]}]}]});
    let spec = &mut pod["spec"];
    if !spec.get("affinity").is_some_and(Value::is_object) {
        spec["affinity"] = json!({});
    }
    if !spec["affinity"]
        .get("nodeAffinity")
        .is_some_and(Value::is_object)
    {
        spec["affinity"]["nodeAffinity"] = json!({});
    }
    spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] = term;
    pod
}

/// What the controller keeps of a pod that belongs to a DaemonSet.
#[derive(Debug, Clone)]
struct DaemonPod {
    info: PodInfo,
    node: String,
    name: String,
}

impl OwnedPod for DaemonPod {
    const OWNER: &'static Resource = &DAEMONSETS;

    fn of(pod: &Value) -> Self {
        Self {
            info: PodInfo::of(pod),
            node: target_node(pod),
            name: object::name(pod).to_string(),
        }
    }

    fn info(&self) -> &PodInfo {
        &self.info
    }
}

/// Pods oldest first, a running one before others of the same age
/// (upstream's podByCreationTimestampAndPhase).
fn oldest_first(a: &&DaemonPod, b: &&DaemonPod) -> std::cmp::Ordering {
    a.info
        .created
        .cmp(&b.info.created)
        .then_with(|| (b.info.phase == "Running").cmp(&(a.info.phase == "Running")))
        .then_with(|| a.name.cmp(&b.name))
}

/// The one new and one old pod of a node; None: more than one of either
/// (the node loop cleans that up).
#[allow(clippy::type_complexity)]
fn split<'a>(
    pods: &[&'a DaemonPod],
    hash: &str,
) -> Option<(Option<&'a DaemonPod>, Option<&'a DaemonPod>)> {
    let (mut new, mut old) = (None, None);
    for p in pods.iter().filter(|p| !p.info.deleting) {
        let slot = if p.revision() == hash {
            &mut new
        } else {
            &mut old
        };
        if slot.is_some() {
            return None;
        }
        *slot = Some(*p);
    }
    Some((new, old))
}

/// What one sync decided.
#[derive(Debug, Default)]
struct Plan {
    create: Vec<String>,
    delete: Vec<Key>,
    /// Nodes whose back-off delays a replacement.
    waiting: Option<Instant>,
}

#[derive(Debug, Default)]
pub struct DaemonSetController {
    nodes: BTreeMap<String, Arc<Value>>,
    /// The DaemonSets, their pods, and those to sync, now or later
    /// (back-off, availability).
    sets: PodOwners<DaemonPod>,
    /// (DaemonSet uid, node) -> (back-off, not before), after a failed pod.
    backoff: HashMap<(String, String), (Duration, Instant)>,
    events: Recorder,
}

impl DaemonSetController {
    /// Drops what is kept of a DaemonSet that is gone.
    fn forget(&mut self, uid: &str) {
        self.events.forget(uid);
        self.backoff.retain(|(u, _), _| u != uid);
    }

    fn sync(&mut self, reg: &Registry, key: &Key) {
        let (ns, name) = key;
        let Some(ds) = self.sets.claim(reg, COMPONENT, key) else {
            return;
        };
        let revs = history::owned(reg, &ds);
        let (rev, collisions) = match history::current(reg, &ds, "DaemonSet", &revs) {
            Ok(r) => r,
            Err(e) => {
                log_failure(COMPONENT, name, &e);
                return;
            }
        };
        let hash = rev.hash.clone();
        let uid = object::uid(&ds).to_string();

        // The pod every node gets, before pinning.
        let template = ds.pointer("/spec/template").cloned().unwrap_or(Value::Null);
        let mut pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": format!("{name}-"), "ownerReferences": [controller_ref(&ds, "apps/v1", "DaemonSet")]},
            "spec": template.get("spec").cloned().filter(Value::is_object).unwrap_or_else(|| json!({})),
        });
        for field in ["labels", "annotations", "finalizers"] {
            if let Some(v) = template.pointer(&format!("/metadata/{field}")) {
                pod["metadata"][field] = v.clone();
            }
        }
        if !pod["metadata"].get("labels").is_some_and(Value::is_object) {
            pod["metadata"]["labels"] = json!({});
        }
        pod["metadata"]["labels"][HASH_LABEL] = json!(hash);
        let host_network = pod.pointer("/spec/hostNetwork").and_then(Value::as_bool) == Some(true);
        let mut tolerations: Vec<Value> = pod
            .pointer("/spec/tolerations")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for t in daemon_tolerations(host_network) {
            // Upstream's AddOrUpdateTolerationInPod: an equal key and
            // effect is replaced.
            tolerations
                .retain(|x| !(x.get("key") == t.get("key") && x.get("effect") == t.get("effect")));
            tolerations.push(t);
        }
        pod["spec"]["tolerations"] = json!(tolerations);
        let fit = DaemonFit::new(&pod);

        let mut by_node: BTreeMap<String, Vec<&DaemonPod>> = BTreeMap::new();
        for (_, p) in self.sets.pods.owned(&uid) {
            by_node.entry(p.node.clone()).or_default().push(p);
        }
        for pods in by_node.values_mut() {
            pods.sort_by(oldest_first);
        }
        let surge_allowed = rolling(&ds)
            && scaled_value(
                ds.pointer("/spec/updateStrategy/rollingUpdate/maxSurge"),
                1,
                true,
            )
            .unwrap_or(0)
                > 0;
        let min_ready = ds
            .pointer("/spec/minReadySeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let now = epoch_now();
        let inow = Instant::now();
        let mut plan = Plan::default();
        let mut eligible: BTreeMap<&str, bool> = BTreeMap::new();
        for (node_name, node) in &self.nodes {
            let (run, keep) = fit.check(node);
            eligible.insert(node_name.as_str(), run);
            let pods = by_node.get(node_name).map(Vec::as_slice).unwrap_or(&[]);
            if run {
                if pods.is_empty() {
                    match self.backoff.get(&(uid.clone(), node_name.clone())) {
                        Some((_, until)) if *until > inow => {
                            plan.waiting = Some(plan.waiting.map_or(*until, |w| w.min(*until)));
                        }
                        _ => plan.create.push(node_name.clone()),
                    }
                    continue;
                }
                let mut running: Vec<&DaemonPod> = Vec::new();
                for p in pods {
                    if p.info.deleting {
                        continue;
                    }
                    if p.info.finished() {
                        // Replaced after a back-off, so a pod that fails at
                        // once does not spin.
                        let slot = self
                            .backoff
                            .entry((uid.clone(), node_name.clone()))
                            .or_insert((Duration::ZERO, inow));
                        slot.0 = (slot.0 * 2).clamp(BACKOFF_START, BACKOFF_MAX);
                        slot.1 = inow + slot.0;
                        plan.delete.push((ns.clone(), p.name.clone()));
                        continue;
                    }
                    running.push(p);
                }
                if running.len() <= 1 {
                    continue;
                }
                if !surge_allowed {
                    plan.delete
                        .extend(running[1..].iter().map(|p| (ns.clone(), p.name.clone())));
                    continue;
                }
                // With surge: an old pod may stay beside the new one until
                // the new one is available.
                let (mut new, mut old) = (None, None);
                for p in &running {
                    let slot = if p.revision() == hash {
                        &mut new
                    } else {
                        &mut old
                    };
                    if slot.is_none() {
                        *slot = Some(*p);
                    } else {
                        plan.delete.push((ns.clone(), p.name.clone()));
                    }
                }
                if let (Some(n), Some(o)) = (new, old)
                    && (!o.info.ready || n.info.available(min_ready, now))
                {
                    plan.delete.push((ns.clone(), o.name.clone()));
                }
            } else if !keep {
                plan.delete.extend(
                    pods.iter()
                        .filter(|p| !p.info.deleting)
                        .map(|p| (ns.clone(), p.name.clone())),
                );
            }
        }
        // Pods for nodes that are gone.
        for (node_name, pods) in &by_node {
            if !self.nodes.contains_key(node_name) {
                plan.delete.extend(
                    pods.iter()
                        .filter(|p| !p.info.deleting)
                        .map(|p| (ns.clone(), p.name.clone())),
                );
            }
        }
        // Upstream's rollingUpdate, once the nodes are settled.
        if plan.create.is_empty() && plan.delete.is_empty() && rolling(&ds) {
            self.rolling_update(&ds, &hash, &eligible, &by_node, min_ready, now, &mut plan);
        }
        drop(by_node);
        if let Some(at) = plan.waiting {
            self.sets.queue.add_at(at, key.clone());
        }
        self.execute(reg, &ds, &pod, &plan);

        // History: keep the revisions live pods use, and the limit more.
        let live: BTreeSet<String> = self
            .sets
            .pods
            .owned(&uid)
            .map(|(_, p)| p)
            .map(|p| format!("{name}-{}", p.revision()))
            .chain([rev.name.clone()])
            .collect();
        let limit = ds
            .pointer("/spec/revisionHistoryLimit")
            .and_then(Value::as_i64)
            .unwrap_or(10);
        history::prune(reg, COMPONENT, &ds, &history::owned(reg, &ds), &live, limit);
        self.update_status(reg, key, &ds, &fit, &hash, collisions);
    }

    /// Upstream's rollingUpdate: which old pods to delete (maxSurge 0) or
    /// which nodes get a new pod beside the old one (maxSurge > 0).
    #[allow(clippy::too_many_arguments)]
    fn rolling_update<'a>(
        &self,
        ds: &Value,
        hash: &str,
        eligible: &BTreeMap<&str, bool>,
        by_node: &BTreeMap<String, Vec<&'a DaemonPod>>,
        min_ready: i64,
        now: i64,
        plan: &mut Plan,
    ) {
        let ns = object::namespace(ds).to_string();
        // Every node that should run one, with or without pods, and every
        // node that has pods.
        let mut nodes: BTreeMap<&str, Vec<&'a DaemonPod>> = eligible
            .iter()
            .filter(|(_, run)| **run)
            .map(|(n, _)| (*n, Vec::new()))
            .collect();
        for (n, pods) in by_node {
            nodes.insert(n.as_str(), pods.clone());
        }
        let desired = i64::try_from(eligible.values().filter(|r| **r).count()).unwrap_or(0);
        let ru = ds.pointer("/spec/updateStrategy/rollingUpdate");
        let mut surge =
            scaled_value(ru.and_then(|r| r.get("maxSurge")), desired, true).unwrap_or(0);
        let mut unavailable =
            scaled_value(ru.and_then(|r| r.get("maxUnavailable")), desired, true).unwrap_or(0);
        if surge == 0 && unavailable == 0 {
            unavailable = 1;
        }
        if surge > 0 {
            unavailable = 0;
        } else {
            surge = 0;
        }
        let split = |pods: &[&'a DaemonPod]| split(pods, hash);
        if surge == 0 {
            let mut unavailable_now = 0i64;
            let (mut replace, mut candidates) = (Vec::new(), Vec::new());
            for pods in nodes.values() {
                match split(pods) {
                    None | Some((None, None)) | Some((Some(_), Some(_))) => unavailable_now += 1,
                    Some((Some(new), None)) => {
                        if !new.info.available(min_ready, now) {
                            unavailable_now += 1;
                        }
                    }
                    Some((None, Some(old))) => {
                        if !old.info.available(min_ready, now) {
                            replace.push(old.name.clone());
                            unavailable_now += 1;
                        } else if unavailable_now < unavailable {
                            candidates.push(old.name.clone());
                        }
                    }
                }
            }
            let room = usize::try_from((unavailable - unavailable_now).max(0))
                .unwrap_or(0)
                .min(candidates.len());
            plan.delete.extend(
                replace
                    .into_iter()
                    .chain(candidates.into_iter().take(room))
                    .map(|n| (ns.clone(), n)),
            );
        } else {
            let mut surged = 0i64;
            let (mut allowed, mut candidates) = (Vec::new(), Vec::new());
            for (node, pods) in &nodes {
                match split(pods) {
                    None => surged += 1,
                    Some((_, None)) => {}
                    Some((None, Some(old))) => {
                        if !eligible.get(node).copied().unwrap_or(false) {
                            continue;
                        }
                        if !old.info.available(min_ready, now) {
                            allowed.push(node.to_string());
                        } else if surged < surge {
                            candidates.push(node.to_string());
                        }
                    }
                    Some((Some(new), Some(old))) => {
                        if new.info.available(min_ready, now) {
                            plan.delete.push((ns.clone(), old.name.clone()));
                        } else {
                            surged += 1;
                        }
                    }
                }
            }
            let room = usize::try_from((surge - surged).max(0))
                .unwrap_or(0)
                .min(candidates.len());
            plan.create
                .extend(allowed.into_iter().chain(candidates.into_iter().take(room)));
        }
    }

    /// Creates and deletes what the plan says, stopping creation at the
    /// first failure (recorded as a FailedCreate event).
    fn execute(&mut self, reg: &Registry, ds: &Value, pod: &Value, plan: &Plan) {
        let ns = object::namespace(ds).to_string();
        for node in plan.create.iter().take(BURST) {
            match reg.create(&PODS, &ns, pin(pod, node), &write_opts()) {
                Ok(entry) => {
                    if let Ok(created) = entry.value() {
                        let pname = object::name(&created).to_string();
                        self.sets
                            .pods
                            .insert((ns.clone(), pname.clone()), DaemonPod::of(&created));
                        self.events
                            .pod_event(reg, COMPONENT, ds, PodAction::Create, Ok(&pname));
                    }
                }
                Err(e) => {
                    self.events
                        .pod_event(reg, COMPONENT, ds, PodAction::Create, Err(&e));
                    log_failure(COMPONENT, object::name(ds), &e);
                    break;
                }
            }
        }
        let deletes: BTreeSet<&Key> = plan.delete.iter().collect();
        for key in deletes.into_iter().take(BURST) {
            match reg.delete(&PODS, &key.0, &key.1, &DeleteOptions::default()) {
                Ok(_) => {
                    if let Some(p) = self.sets.pods.get_mut(key) {
                        p.info.deleting = true;
                    }
                    self.events
                        .pod_event(reg, COMPONENT, ds, PodAction::Delete, Ok(&key.1));
                }
                Err(e) if e.code == 404 => {
                    self.sets.pods.remove(key);
                }
                Err(e) => {
                    self.events
                        .pod_event(reg, COMPONENT, ds, PodAction::Delete, Err(&e));
                    log_failure(COMPONENT, &key.1, &e);
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn update_status(
        &mut self,
        reg: &Registry,
        key: &Key,
        ds: &Value,
        fit: &DaemonFit,
        hash: &str,
        collisions: Option<i64>,
    ) {
        let uid = object::uid(ds);
        let mut by_node: BTreeMap<&str, Vec<&DaemonPod>> = BTreeMap::new();
        for (_, p) in self.sets.pods.owned(uid) {
            if !p.info.deleting {
                by_node.entry(p.node.as_str()).or_default().push(p);
            }
        }
        let (mut desired, mut current, mut misscheduled, mut updated) = (0i64, 0i64, 0i64, 0i64);
        let mut availability = Availability::of(ds);
        for (name, node) in &self.nodes {
            let (run, _) = fit.check(node);
            let pods = by_node.get_mut(name.as_str());
            let scheduled = pods.as_ref().is_some_and(|p| !p.is_empty());
            if !run {
                if scheduled {
                    misscheduled += 1;
                }
                continue;
            }
            desired += 1;
            let Some(pods) = pods.filter(|p| !p.is_empty()) else {
                continue;
            };
            current += 1;
            pods.sort_by(oldest_first);
            let p = pods[0];
            if p.info.ready {
                availability.count_ready(&p.info);
            }
            if p.revision() == hash {
                updated += 1;
            }
        }
        availability.requeue(&mut self.sets.queue, key.clone());
        let mut status = json!({
            "currentNumberScheduled": current,
            "numberMisscheduled": misscheduled,
            "desiredNumberScheduled": desired,
            "numberReady": availability.ready,
            "updatedNumberScheduled": updated,
            "numberAvailable": availability.available,
            "numberUnavailable": desired - availability.available,
        });
        status::omit_zero(
            &mut status,
            &[
                "updatedNumberScheduled",
                "numberAvailable",
                "numberUnavailable",
            ],
        );
        status::carry_over(&mut status, ds, collisions);
        status::write(reg, COMPONENT, &DAEMONSETS, ds, status);
    }
}

fn rolling(ds: &Value) -> bool {
    ds.pointer("/spec/updateStrategy/type")
        .and_then(Value::as_str)
        != Some("OnDelete")
}

/// Whether a node change can change where daemon pods belong.
fn node_placement(node: &Value) -> Value {
    let ready = node
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
        .and_then(|c| c.get("status").cloned());
    json!([
        object::labels(node),
        node.pointer("/spec/taints"),
        node.pointer("/spec/unschedulable"),
        ready
    ])
}

impl Controller for DaemonSetController {
    fn name(&self) -> &'static str {
        "daemonset"
    }

    fn watches(&self, res: &Resource) -> bool {
        matches!(res.kind, "Pod" | "DaemonSet" | "Node")
    }

    fn resync(&mut self, reg: &Registry) {
        *self = Self {
            events: std::mem::take(&mut self.events),
            backoff: std::mem::take(&mut self.backoff),
            ..Self::default()
        };
        for node in super::list_all(reg, &NODES, None) {
            self.nodes.insert(object::name(&node).to_string(), node);
        }
        self.sets.resync(reg);
    }

    fn observe(&mut self, _reg: &Registry, ev: &Change) {
        let key = ev.key();
        match (ev.resource.kind, ev.kind) {
            ("Pod", _) => self.sets.observe_pod(ev),
            ("DaemonSet", _) => {
                if let Some(uid) = self.sets.observe_owner(ev) {
                    self.forget(&uid);
                }
            }
            ("Node", EventType::Deleted) => {
                self.nodes.remove(&key.1);
                self.sets.enqueue_all();
            }
            ("Node", _) => {
                let node = Arc::new(ev.object().clone());
                let changed = self
                    .nodes
                    .get(&key.1)
                    .is_none_or(|old| node_placement(old) != node_placement(&node));
                self.nodes.insert(key.1.clone(), node);
                if changed {
                    self.sets.enqueue_all();
                }
            }
            _ => {}
        }
    }

    fn reconcile(&mut self, reg: &Registry) {
        for key in self.sets.queue.take_due() {
            self.sync(reg, &key);
        }
    }

    fn next_wakeup(&self) -> Option<Instant> {
        self.sets.queue.next_wakeup()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_node_from_name_or_affinity() {
        let p = pin(
            &json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            {"nodeSelectorTerms": [{"matchExpressions": [{"key": "a", "operator": "Exists"}]}]}}}}}),
            "n2",
        );
        assert_eq!(target_node(&p), "n2");
        assert_eq!(
            p.pointer("/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms")
                .and_then(Value::as_array)
                .map(Vec::len),
            Some(1),
            "the node term replaces the template's terms"
        );
        assert_eq!(target_node(&json!({"spec": {"nodeName": "n1"}})), "n1");
        assert_eq!(target_node(&json!({"spec": {}})), "");
    }

    #[test]
    fn daemon_pods_tolerate_what_upstream_adds() {
        let node = |taints: Value, ready: &str, unschedulable: bool| {
            json!({"metadata": {"name": "n", "labels": {"disk": "ssd"}},
                "spec": {"taints": taints, "unschedulable": unschedulable},
                "status": {"conditions": [{"type": "Ready", "status": ready}]}})
        };
        let pod = |extra: Value| {
            let mut p =
                json!({"spec": {"tolerations": daemon_tolerations(false), "containers": []}});
            if let (Some(spec), Value::Object(e)) = (p["spec"].as_object_mut(), extra) {
                spec.extend(e);
            }
            p
        };
        let plain = DaemonFit::new(&pod(json!({})));
        assert_eq!(plain.check(&node(json!([]), "True", false)), (true, true));
        assert_eq!(
            plain.check(&node(json!([]), "True", true)),
            (true, true),
            "unschedulable tolerated"
        );
        let pressure =
            json!([{"key": "node.kubernetes.io/memory-pressure", "effect": "NoSchedule"}]);
        assert_eq!(plain.check(&node(pressure, "True", false)), (true, true));
        // Not ready: no new pod, but one there keeps running.
        assert_eq!(plain.check(&node(json!([]), "False", false)), (false, true));
        let gpu_exec = json!([{"key": "gpu", "value": "yes", "effect": "NoExecute"}]);
        assert_eq!(
            plain.check(&node(gpu_exec.clone(), "True", false)),
            (false, false)
        );
        let gpu_sched = json!([{"key": "gpu", "value": "yes", "effect": "NoSchedule"}]);
        assert_eq!(plain.check(&node(gpu_sched, "True", false)), (false, true));
        let mut tolerating = pod(json!({}));
        tolerating["spec"]["tolerations"]
            .as_array_mut()
            .expect("list")
            .push(json!({"key": "gpu", "operator": "Exists"}));
        assert_eq!(
            DaemonFit::new(&tolerating).check(&node(gpu_exec, "True", false)),
            (true, true)
        );
        let hdd = DaemonFit::new(&pod(json!({"nodeSelector": {"disk": "hdd"}})));
        assert_eq!(hdd.check(&node(json!([]), "True", false)), (false, false));
        let net =
            json!([{"key": "node.kubernetes.io/network-unavailable", "effect": "NoSchedule"}]);
        assert!(!plain.check(&node(net.clone(), "True", false)).0);
        let host = DaemonFit::new(
            &json!({"spec": {"hostNetwork": true, "tolerations": daemon_tolerations(true)}}),
        );
        assert!(
            host.check(&node(net, "True", false)).0,
            "hostNetwork pods tolerate network-unavailable"
        );
    }
}
