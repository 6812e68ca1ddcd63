//! The ReplicaSet controller, with kube-controller-manager's semantics
//! (pkg/controller/replicaset): pods created from the template (named
//! `<rs>-<5 random>`, controlled by the ReplicaSet) or deleted until the
//! active ones match `spec.replicas`, orphans matching the selector adopted
//! and owned pods that stopped matching released, the pods to delete ranked
//! as upstream ranks them, and the status counted (ready, available after
//! `minReadySeconds`, fully labeled, observed generation).
//!
//! The controller keeps a small summary of every pod, indexed by its
//! controller's uid and (for orphans) by namespace, so the work of one
//! event is proportional to the ReplicaSet it concerns.

use super::key_of;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use serde_json::{Value, json};

use super::events::{PodAction, Recorder};
use super::owned::{ByController, Controlled, Key};
use super::queue::WorkQueue;
use super::status::{self, Availability, epoch_now};
use super::{Change, Controller, log_failure, write_opts};
use crate::object;
use crate::patch::PatchType;
use crate::registry::{DeleteOptions, Registry};
use crate::resources::{PODS, REPLICASETS, Resource};
use crate::selector::LabelSelector;
use crate::store::EventType;

pub const COMPONENT: &str = "replicaset-controller";
/// Pods created or deleted in one sync at most (upstream's burstReplicas).
const BURST: usize = 500;

/// What the controller needs of a pod.
#[derive(Debug, Clone, Default)]
pub(crate) struct PodInfo {
    pub uid: String,
    pub rv: u64,
    pub labels: BTreeMap<String, String>,
    /// The uid of the pod's controller (any kind).
    pub controller: Option<String>,
    pub owner_refs: Vec<Value>,
    pub phase: String,
    pub node: String,
    pub ready: bool,
    /// When the Ready condition last turned true (seconds since the epoch).
    pub ready_since: Option<i64>,
    pub deleting: bool,
    pub created: Option<i64>,
    pub restarts: i64,
    pub deletion_cost: i64,
}

fn timestamp(v: Option<&Value>) -> Option<i64> {
    v.and_then(Value::as_str)
        .and_then(|s| s.parse::<jiff::Timestamp>().ok())
        .map(|t| t.as_second())
}

impl PodInfo {
    pub fn of(pod: &Value) -> Self {
        let owner_refs: Vec<Value> = pod
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let ready_cond = pod
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"));
        let ready =
            ready_cond.is_some_and(|c| c.get("status").and_then(Value::as_str) == Some("True"));
        Self {
            uid: object::uid(pod).to_string(),
            rv: object::resource_version(pod),
            labels: object::labels(pod)
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect(),
            controller: controller_of(&owner_refs).map(String::from),
            owner_refs,
            phase: pod
                .pointer("/status/phase")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            node: pod
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            ready,
            ready_since: ready
                .then(|| timestamp(ready_cond.and_then(|c| c.get("lastTransitionTime"))))
                .flatten(),
            deleting: object::deletion_timestamp(pod).is_some(),
            created: timestamp(pod.pointer("/metadata/creationTimestamp")),
            restarts: pod
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|c| c.get("restartCount").and_then(Value::as_i64))
                .max()
                .unwrap_or(0),
            deletion_cost: object::metadata(pod)
                .and_then(|m| m.get("annotations"))
                .and_then(|a| a.get("controller.kubernetes.io/pod-deletion-cost"))
                .and_then(Value::as_str)
                .and_then(|s| s.parse::<i32>().ok())
                .map_or(0, i64::from),
        }
    }

    /// Succeeded or Failed.
    pub fn finished(&self) -> bool {
        matches!(self.phase.as_str(), "Succeeded" | "Failed")
    }

    /// Neither being deleted nor finished (upstream's FilterActivePods).
    pub fn active(&self) -> bool {
        !self.deleting && !self.finished()
    }

    /// Ready for at least `min_ready` seconds at `now`.
    pub fn available(&self, min_ready: i64, now: i64) -> bool {
        self.ready && (min_ready <= 0 || self.ready_since.is_some_and(|t| t + min_ready <= now))
    }

    fn label(&self, k: &str) -> Option<&str> {
        self.labels.get(k).map(String::as_str)
    }
}

impl Controlled for PodInfo {
    fn controller(&self) -> Option<&str> {
        self.controller.as_deref()
    }
}

/// The uid of the ownerReference marked `controller`.
pub(crate) fn controller_of(refs: &[Value]) -> Option<&str> {
    refs.iter()
        .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
        .and_then(|r| r.get("uid").and_then(Value::as_str))
}

/// The ownerReference a controller sets on what it creates.
pub(crate) fn controller_ref(owner: &Value, api_version: &str, kind: &str) -> Value {
    json!({
        "apiVersion": api_version, "kind": kind,
        "name": object::name(owner), "uid": object::uid(owner),
        "controller": true, "blockOwnerDeletion": true,
    })
}

#[derive(Debug, Clone)]
struct RsInfo {
    uid: String,
    selector: Option<LabelSelector>,
    /// The uid of the ReplicaSet's own controller (its Deployment).
    controller: Option<String>,
}

#[derive(Debug, Default)]
pub struct ReplicaSetController {
    /// Pods by the uid of their controller, orphans by namespace.
    pods: ByController<PodInfo>,
    sets: HashMap<Key, RsInfo>,
    by_uid: HashMap<String, Key>,
    in_ns: HashMap<String, BTreeSet<String>>,
    /// ReplicaSets to sync, now or when a pod becomes available.
    queue: WorkQueue<Key>,
    events: Recorder,
}

/// Upstream's ActivePodsWithRanks ordering: the pods to delete first sort
/// first.
fn deletion_order(
    a: &PodInfo,
    b: &PodInfo,
    rank: &dyn Fn(&PodInfo) -> usize,
    now: i64,
) -> std::cmp::Ordering {
    deletion_key(a, rank, now).cmp(&deletion_key(b, rank, now))
}

type DeletionKey = (
    bool,
    u8,
    bool,
    i64,
    std::cmp::Reverse<usize>,
    i64,
    std::cmp::Reverse<i64>,
    i64,
    String,
);

/// Where a pod stands in [`deletion_order`], as one key so that the order
/// is total (sorting panics on a comparison that is not): upstream's rules
/// in turn — unscheduled, then Pending < Unknown < Running, not ready, lower
/// deletion cost, doubled up on its node, ready for less time (Go's
/// logarithmic buckets), more restarts, newer (buckets again) — and the uid
/// last, where upstream breaks ties within a bucket.
fn deletion_key(p: &PodInfo, rank: &dyn Fn(&PodInfo) -> usize, now: i64) -> DeletionKey {
    let phase = match p.phase.as_str() {
        "Unknown" => 1,
        "Running" => 2,
        _ => 0,
    };
    // Go's logarithmic buckets of an age in nanoseconds; none: -1 (first).
    let log_age = |t: Option<i64>| match t {
        Some(t) if now > t => ((now - t) as f64 * 1e9).log2() as i64,
        _ => -1,
    };
    let ready_bucket = if p.ready { log_age(p.ready_since) } else { -1 };
    (
        !p.node.is_empty(),
        phase,
        p.ready,
        p.deletion_cost,
        std::cmp::Reverse(rank(p)),
        ready_bucket,
        std::cmp::Reverse(p.restarts),
        log_age(p.created),
        p.uid.clone(),
    )
}

impl ReplicaSetController {
    fn index_set(&mut self, key: Key, rs: &Value) {
        let uid = object::uid(rs).to_string();
        let selector = rs
            .pointer("/spec/selector")
            .and_then(|s| LabelSelector::from_api(s).ok());
        self.by_uid.insert(uid.clone(), key.clone());
        self.in_ns
            .entry(key.0.clone())
            .or_default()
            .insert(key.1.clone());
        let controller = controller_of(
            rs.pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .map_or(&[][..], Vec::as_slice),
        )
        .map(String::from);
        self.sets.insert(
            key,
            RsInfo {
                uid,
                selector,
                controller,
            },
        );
    }

    fn unindex_set(&mut self, key: &Key) {
        if let Some(info) = self.sets.remove(key) {
            self.by_uid.remove(&info.uid);
            self.events.forget(&info.uid);
        }
        if let Some(set) = self.in_ns.get_mut(&key.0) {
            set.remove(&key.1);
            if set.is_empty() {
                self.in_ns.remove(&key.0);
            }
        }
    }

    /// Queues what a pod's state concerns: its controller, or the
    /// ReplicaSets of its namespace that select it when it is an orphan.
    fn enqueue_for_pod(&mut self, ns: &str, info: &PodInfo) {
        match &info.controller {
            Some(owner) => {
                if let Some(key) = self.by_uid.get(owner) {
                    self.queue.add(key.clone());
                }
            }
            None => {
                for name in self.in_ns.get(ns).into_iter().flatten() {
                    let key = (ns.to_string(), name.clone());
                    if self
                        .sets
                        .get(&key)
                        .and_then(|s| s.selector.as_ref())
                        .is_some_and(|sel| !sel.is_empty() && sel.matches_with(|k| info.label(k)))
                    {
                        self.queue.add(key);
                    }
                }
            }
        }
    }

    fn sync(&mut self, reg: &Registry, key: &Key) {
        let (ns, name) = key;
        let Ok(Some(rs)) = reg.store.get(&REPLICASETS, ns, name) else {
            return;
        };
        let rs = (*rs).clone();
        let uid = object::uid(&rs).to_string();
        let Some(selector) = rs
            .pointer("/spec/selector")
            .and_then(|s| LabelSelector::from_api(s).ok())
            .filter(|s| !s.is_empty())
        else {
            return;
        };
        let rs_deleting = object::deletion_timestamp(&rs).is_some();
        let my_ref = controller_ref(&rs, "apps/v1", "ReplicaSet");

        // Claim: keep owned pods that match, release those that do not,
        // adopt matching orphans.
        let mut claimed: Vec<Key> = Vec::new();
        let owned: Vec<Key> = self.pods.owned_keys(&uid).cloned().collect();
        for pkey in owned {
            let Some(info) = self.pods.get(&pkey) else {
                continue;
            };
            if rs_deleting || selector.matches_with(|k| info.label(k)) {
                claimed.push(pkey);
            } else {
                let refs: Vec<Value> = info
                    .owner_refs
                    .iter()
                    .filter(|r| r.get("uid").and_then(Value::as_str) != Some(&uid))
                    .cloned()
                    .collect();
                self.patch_owners(reg, &pkey, info.rv, refs);
            }
        }
        if !rs_deleting {
            let orphans: Vec<String> = self.pods.orphans(ns).cloned().collect();
            for pname in orphans {
                let pkey = (ns.clone(), pname);
                let Some(info) = self.pods.get(&pkey) else {
                    continue;
                };
                if info.deleting || !selector.matches_with(|k| info.label(k)) {
                    continue;
                }
                let mut refs = info.owner_refs.clone();
                refs.push(my_ref.clone());
                if self.patch_owners(reg, &pkey, info.rv, refs) {
                    claimed.push(pkey);
                }
            }
        }
        let active: Vec<Key> = claimed
            .into_iter()
            .filter(|k| self.pods.get(k).is_some_and(PodInfo::active))
            .collect();

        let replicas = rs
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1)
            .max(0) as usize;
        let mut failure = None;
        if !rs_deleting {
            failure = if active.len() < replicas {
                self.create_pods(reg, &rs, &my_ref, (replicas - active.len()).min(BURST))
            } else if active.len() > replicas {
                self.delete_pods(
                    reg,
                    &rs,
                    &uid,
                    &active,
                    (active.len() - replicas).min(BURST),
                )
            } else {
                None
            };
        }
        self.update_status(reg, &rs, &active, replicas, failure);
    }

    /// Writes a pod's ownerReferences; true when written.
    fn patch_owners(&mut self, reg: &Registry, pkey: &Key, rv: u64, refs: Vec<Value>) -> bool {
        let patch =
            json!({"metadata": {"ownerReferences": refs, "resourceVersion": rv.to_string()}});
        match reg.patch(
            &PODS,
            &pkey.0,
            &pkey.1,
            None,
            (PatchType::Merge, patch.to_string().as_bytes()),
            &write_opts(),
        ) {
            Ok(entry) => {
                if let Ok(pod) = entry.value() {
                    self.pods.insert(pkey.clone(), PodInfo::of(&pod));
                }
                true
            }
            Err(e) => {
                log_failure(COMPONENT, &pkey.1, &e);
                false
            }
        }
    }

    /// Creates `count` pods in upstream's slow-start batches (1, 2, 4, ...),
    /// stopping at the first failure; returns its message.
    fn create_pods(
        &mut self,
        reg: &Registry,
        rs: &Value,
        my_ref: &Value,
        count: usize,
    ) -> Option<String> {
        let ns = object::namespace(rs).to_string();
        let template = rs.pointer("/spec/template").cloned().unwrap_or(Value::Null);
        let mut meta = json!({
            "generateName": format!("{}-", object::name(rs)),
            "ownerReferences": [my_ref],
        });
        for field in ["labels", "annotations", "finalizers"] {
            if let Some(v) = template.pointer(&format!("/metadata/{field}")) {
                meta[field] = v.clone();
            }
        }
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": meta,
            "spec": template.get("spec").cloned().unwrap_or_else(|| json!({})),
        });
        let (mut done, mut batch) = (0usize, 1usize);
        while done < count {
            let n = batch.min(count - done);
            for _ in 0..n {
                match reg.create(&PODS, &ns, pod.clone(), &write_opts()) {
                    Ok(entry) => {
                        if let Ok(created) = entry.value() {
                            let pname = object::name(&created).to_string();
                            self.pods
                                .insert((ns.clone(), pname.clone()), PodInfo::of(&created));
                            self.events.pod_event(
                                reg,
                                COMPONENT,
                                rs,
                                PodAction::Create,
                                Ok(&pname),
                            );
                        }
                    }
                    Err(e) => {
                        self.events
                            .pod_event(reg, COMPONENT, rs, PodAction::Create, Err(&e));
                        log_failure(COMPONENT, object::name(rs), &e);
                        return Some(e.message);
                    }
                }
            }
            done += n;
            batch *= 2;
        }
        None
    }

    /// Deletes the `count` pods upstream would pick first.
    fn delete_pods(
        &mut self,
        reg: &Registry,
        rs: &Value,
        uid: &str,
        active: &[Key],
        count: usize,
    ) -> Option<String> {
        let now = epoch_now();
        // Ready pods of this ReplicaSet and its siblings (same controller)
        // per node: a pod doubled up with more of them goes first.
        let ns = object::namespace(rs);
        let owner = self
            .sets
            .get(&(ns.to_string(), object::name(rs).to_string()))
            .and_then(|s| s.controller.clone());
        let siblings: Vec<String> = match owner {
            Some(owner) => self
                .in_ns
                .get(ns)
                .into_iter()
                .flatten()
                .filter_map(|n| self.sets.get(&(ns.to_string(), n.clone())))
                .filter(|s| s.controller.as_deref() == Some(owner.as_str()))
                .map(|s| s.uid.clone())
                .collect(),
            None => vec![uid.to_string()],
        };
        let mut per_node: HashMap<&str, usize> = HashMap::new();
        for s in &siblings {
            for (_, p) in self.pods.owned(s) {
                if p.active() && p.ready && !p.node.is_empty() {
                    *per_node.entry(p.node.as_str()).or_default() += 1;
                }
            }
        }
        let rank = |p: &PodInfo| {
            if p.node.is_empty() {
                0
            } else {
                per_node.get(p.node.as_str()).copied().unwrap_or(0)
            }
        };
        let mut order: Vec<&Key> = active.iter().collect();
        if count < order.len() {
            order.sort_by(|a, b| match (self.pods.get(a), self.pods.get(b)) {
                (Some(pa), Some(pb)) => deletion_order(pa, pb, &rank, now),
                _ => std::cmp::Ordering::Equal,
            });
        }
        let victims: Vec<Key> = order.into_iter().take(count).cloned().collect();
        let mut failure = None;
        for pkey in victims {
            match reg.delete(&PODS, &pkey.0, &pkey.1, &DeleteOptions::default()) {
                Ok(_) => {
                    if let Some(p) = self.pods.get_mut(&pkey) {
                        p.deleting = true;
                    }
                    self.events
                        .pod_event(reg, COMPONENT, rs, PodAction::Delete, Ok(&pkey.1));
                }
                Err(e) if e.code == 404 => {
                    self.pods.remove(&pkey);
                }
                Err(e) => {
                    self.events
                        .pod_event(reg, COMPONENT, rs, PodAction::Delete, Err(&e));
                    log_failure(COMPONENT, &pkey.1, &e);
                    failure = Some(e.message);
                }
            }
        }
        failure
    }

    fn update_status(
        &mut self,
        reg: &Registry,
        rs: &Value,
        active: &[Key],
        replicas: usize,
        failure: Option<String>,
    ) {
        let template_labels: Vec<(String, String)> = rs
            .pointer("/spec/template/metadata/labels")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
            .collect();
        let mut labeled = 0i64;
        let mut availability = Availability::of(rs);
        for k in active {
            let Some(p) = self.pods.get(k) else { continue };
            if template_labels
                .iter()
                .all(|(k, v)| p.label(k) == Some(v.as_str()))
            {
                labeled += 1;
            }
            if p.ready {
                availability.count_ready(p);
            }
        }
        availability.requeue(&mut self.queue, key_of(rs));
        let mut status = rs
            .get("status")
            .cloned()
            .filter(Value::is_object)
            .unwrap_or_else(|| json!({}));
        let mut conditions: Vec<Value> = status
            .get("conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let has_failure = conditions
            .iter()
            .any(|c| c.get("type").and_then(Value::as_str) == Some("ReplicaFailure"));
        match (&failure, has_failure) {
            (Some(msg), false) => {
                let reason = if active.len() < replicas {
                    "FailedCreate"
                } else {
                    "FailedDelete"
                };
                conditions.push(json!({"type": "ReplicaFailure", "status": "True", "lastTransitionTime": object::now(), "reason": reason, "message": msg}));
            }
            (None, true) => conditions
                .retain(|c| c.get("type").and_then(Value::as_str) != Some("ReplicaFailure")),
            _ => {}
        }
        let Some(st) = status.as_object_mut() else {
            return;
        };
        st.insert("replicas".into(), json!(active.len()));
        for (field, n) in [
            ("fullyLabeledReplicas", labeled),
            ("readyReplicas", availability.ready),
            ("availableReplicas", availability.available),
        ] {
            if n > 0 {
                st.insert(field.into(), json!(n));
            } else {
                st.remove(field);
            }
        }
        if let Some(g) = rs.pointer("/metadata/generation") {
            st.insert("observedGeneration".into(), g.clone());
        }
        if conditions.is_empty() {
            st.remove("conditions");
        } else {
            st.insert("conditions".into(), json!(conditions));
        }
        status::write(reg, COMPONENT, &REPLICASETS, rs, status);
    }
}

impl Controller for ReplicaSetController {
    fn name(&self) -> &'static str {
        "replicaset"
    }

    fn watches(&self, res: &Resource) -> bool {
        res.kind == "Pod" || res.kind == "ReplicaSet"
    }

    fn resync(&mut self, reg: &Registry) {
        *self = Self {
            events: std::mem::take(&mut self.events),
            ..Self::default()
        };
        for rs in super::list_all(reg, &REPLICASETS, None) {
            let key = key_of(&rs);
            self.index_set(key.clone(), &rs);
            self.queue.add(key);
        }
        for pod in super::list_all(reg, &PODS, None) {
            let key = key_of(&pod);
            self.pods.insert(key, PodInfo::of(&pod));
        }
    }

    fn observe(&mut self, _reg: &Registry, ev: &Change) {
        let key = ev.key();
        match (ev.resource.kind, ev.kind) {
            ("Pod", EventType::Deleted) => {
                if let Some(old) = self.pods.remove(&key) {
                    self.enqueue_for_pod(&key.0, &old);
                }
            }
            ("Pod", _) => {
                let rv = object::resource_version(ev.object_meta());
                // Our own write may already be indexed at a later version.
                if self.pods.get(&key).is_some_and(|p| p.rv > rv) {
                    return;
                }
                let info = PodInfo::of(ev.object());
                if let Some(old) = self.pods.get(&key).cloned()
                    && (old.controller != info.controller || old.labels != info.labels)
                {
                    self.enqueue_for_pod(&key.0, &old);
                }
                self.enqueue_for_pod(&key.0, &info);
                self.pods.insert(key, info);
            }
            ("ReplicaSet", EventType::Deleted) => self.unindex_set(&key),
            ("ReplicaSet", _) => {
                self.index_set(key.clone(), ev.object());
                self.queue.add(key);
            }
            _ => {}
        }
    }

    fn reconcile(&mut self, reg: &Registry) {
        for key in self.queue.take_due() {
            self.sync(reg, &key);
        }
    }

    fn next_wakeup(&self) -> Option<Instant> {
        self.queue.next_wakeup()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(node: &str, phase: &str, ready: bool, created: i64) -> PodInfo {
        PodInfo {
            uid: format!("{node}{phase}{ready}{created}"),
            node: node.into(),
            phase: phase.into(),
            ready,
            ready_since: ready.then_some(created),
            created: Some(created),
            ..PodInfo::default()
        }
    }

    /// A thousand running, ready pods as a scale-down from 1,000 to 0 sees
    /// them: ready and created within seconds of each other, many at the
    /// same second, so readiness ties fall through to restarts and age
    /// while neighbouring buckets tie by uid. Sorting must neither panic
    /// (the comparison was once not a total order, which killed the
    /// controller's thread) nor disagree with itself.
    #[test]
    fn deletion_order_is_total_on_a_large_scale_down() {
        use rand::{Rng as _, SeedableRng as _};
        let now = 1_000_000;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut pods: Vec<PodInfo> = (0..1000)
            .map(|i| PodInfo {
                uid: format!("{:08x}", rng.random::<u32>()),
                node: format!("n{}", i % 10),
                phase: "Running".into(),
                ready: true,
                ready_since: Some(now - rng.random_range(1..40)),
                created: Some(now - rng.random_range(1..60)),
                restarts: rng.random_range(0..2),
                ..PodInfo::default()
            })
            .collect();
        let rank = |p: &PodInfo| p.node.len() % 3;
        pods.sort_by(|a, b| deletion_order(a, b, &rank, now));
        assert!(
            pods.windows(2)
                .all(|w| deletion_order(&w[0], &w[1], &rank, now) != std::cmp::Ordering::Greater)
        );
    }

    #[test]
    fn deletion_prefers_unscheduled_pending_unready_then_newest() {
        let now = 1_000_000;
        let mut pods = [
            pod("n1", "Running", true, now - 5000),
            pod("n1", "Running", true, now - 10),
            pod("", "Pending", false, now - 5000),
            pod("n1", "Pending", false, now - 5000),
            pod("n1", "Running", false, now - 5000),
        ];
        let rank = |_: &PodInfo| 0;
        pods.sort_by(|a, b| deletion_order(a, b, &rank, now));
        let order: Vec<(&str, &str, bool)> = pods
            .iter()
            .map(|p| (p.node.as_str(), p.phase.as_str(), p.ready))
            .collect();
        assert_eq!(order[0], ("", "Pending", false));
        assert_eq!(order[1], ("n1", "Pending", false));
        assert_eq!(order[2], ("n1", "Running", false));
        assert_eq!(
            pods[3].created,
            Some(now - 10),
            "the newest ready pod before the oldest"
        );
    }

    #[test]
    fn availability_waits_min_ready_seconds() {
        let p = pod("n", "Running", true, 100);
        assert!(p.available(0, 100));
        assert!(!p.available(10, 105));
        assert!(p.available(10, 110));
    }
}
