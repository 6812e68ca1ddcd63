//! The StatefulSet controller, with kube-controller-manager's semantics
//! (pkg/controller/statefulset): pods `<name>-<ordinal>` for the ordinals
//! `[start, start + replicas)`, each with `hostname` its own name and
//! `subdomain` the governing Service (so a headless Service of that name
//! publishes `<pod>.<service>.<ns>.svc.<zone>`), labelled
//! `statefulset.kubernetes.io/pod-name`, `apps.kubernetes.io/pod-index` and
//! `controller-revision-hash` (the name of the ControllerRevision the pod
//! was made from). `OrderedReady` creates the next pod only once every
//! lower one is Running and Ready and removes the highest ordinal first,
//! one at a time; `Parallel` creates and removes at once. Failed pods are
//! replaced. `RollingUpdate` replaces pods from the highest ordinal down
//! to the `partition`, one at a time, each once the ones above it are
//! healthy again; `OnDelete` makes new pods from the new template only
//! when the user deletes old ones. Status as upstream counts it
//! (`currentRevision` follows `updateRevision` when the roll-out
//! completes), so `kubectl rollout status sts/x` works.
//!
//! Ferry has no storage: `volumeClaimTemplates` are accepted, and each
//! claim becomes an `emptyDir` volume of the same name in the pod (so the
//! template's volumeMounts resolve), with a Warning event
//! `VolumeClaimTemplatesIgnored` on the StatefulSet saying so.

use super::key_of;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};

use super::claim::{claim, controlled_by_kind};
use super::history::{self, HASH_LABEL, Revision};
use super::owned::{ByController, Controlled, Key};
use super::queue::WorkQueue;
use super::replicaset::{PodInfo, Recorder, controller_ref};
use super::{Change, Controller, log_failure, record_event, write_opts};
use crate::object;
use crate::registry::{DeleteOptions, Registry};
use crate::resources::{PODS, Resource, STATEFULSETS};
use crate::selector::LabelSelector;
use crate::store::EventType;

pub const COMPONENT: &str = "statefulset-controller";
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// What the controller keeps of a pod that belongs to a StatefulSet.
#[derive(Debug, Clone)]
struct SetPod {
    info: PodInfo,
    name: String,
}

impl Controlled for SetPod {
    fn controller(&self) -> Option<&str> {
        self.info.controller.as_deref()
    }
}

impl SetPod {
    fn of(pod: &Value) -> Self {
        Self {
            info: PodInfo::of(pod),
            name: object::name(pod).to_string(),
        }
    }

    fn revision(&self) -> &str {
        self.info.labels.get(HASH_LABEL).map_or("", String::as_str)
    }

    /// The ordinal of a pod of `set`, from its name (upstream's
    /// getParentNameAndOrdinal).
    fn ordinal(&self, set: &str) -> Option<i64> {
        let (parent, ord) = self.name.rsplit_once('-')?;
        if parent != set || ord.is_empty() || !ord.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        ord.parse().ok()
    }

    fn terminating(&self) -> bool {
        self.info.deleting
    }

    fn failed(&self) -> bool {
        matches!(self.info.phase.as_str(), "Failed" | "Succeeded")
    }

    fn running_and_ready(&self) -> bool {
        self.info.phase == "Running" && self.info.ready
    }

    /// Running, Ready for `min_ready` seconds, and not terminating.
    fn healthy(&self, min_ready: i64, now: i64) -> bool {
        self.running_and_ready() && !self.terminating() && self.info.available(min_ready, now)
    }
}

#[derive(Debug, Default)]
pub struct StatefulSetController {
    sets: HashMap<Key, String>,
    by_uid: HashMap<String, Key>,
    /// Pods whose controller is a StatefulSet.
    pods: ByController<SetPod>,
    /// StatefulSets to sync, now or when a pod becomes available.
    queue: WorkQueue<Key>,
    adopt: BTreeSet<Key>,
    /// StatefulSets already warned about their volumeClaimTemplates.
    warned: HashSet<String>,
    events: Recorder,
}

fn epoch_now() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn i(v: &Value, ptr: &str) -> Option<i64> {
    v.pointer(ptr).and_then(Value::as_i64)
}

/// The pod of ordinal `ord` made from `template` (upstream's
/// newStatefulSetPod with its identity and revision).
fn new_pod(set: &Value, template: &Value, ord: i64, revision: &str) -> Value {
    let set_name = object::name(set);
    let name = format!("{set_name}-{ord}");
    let mut labels = template
        .pointer("/metadata/labels")
        .cloned()
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    labels[POD_NAME_LABEL] = json!(name);
    labels[POD_INDEX_LABEL] = json!(ord.to_string());
    labels[HASH_LABEL] = json!(revision);
    let mut meta = json!({
        "name": name,
        "labels": labels,
        "ownerReferences": [controller_ref(set, "apps/v1", "StatefulSet")],
    });
    for field in ["annotations", "finalizers"] {
        if let Some(v) = template.pointer(&format!("/metadata/{field}")) {
            meta[field] = v.clone();
        }
    }
    let mut spec = template
        .get("spec")
        .cloned()
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    spec["hostname"] = json!(name);
    match set.pointer("/spec/serviceName").and_then(Value::as_str) {
        Some(svc) if !svc.is_empty() => spec["subdomain"] = json!(svc),
        _ => {}
    }
    let claims: Vec<String> = set
        .pointer("/spec/volumeClaimTemplates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.pointer("/metadata/name").and_then(Value::as_str))
        .map(String::from)
        .collect();
    if !claims.is_empty() {
        let mut volumes: Vec<Value> = spec
            .get("volumes")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for c in claims {
            if !volumes
                .iter()
                .any(|v| v.get("name").and_then(Value::as_str) == Some(c.as_str()))
            {
                volumes.push(json!({"name": c, "emptyDir": {}}));
            }
        }
        spec["volumes"] = json!(volumes);
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
}

/// What one sync does to the pods, in upstream's order.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Create(i64, bool),
    Delete(String),
}

/// The state one sync works from.
struct View<'a> {
    /// The pods of ordinals `[start, start + replicas)`, by ordinal.
    replicas: Vec<(i64, Option<&'a SetPod>)>,
    /// Pods of other ordinals, lowest first.
    condemned: Vec<&'a SetPod>,
    monotonic: bool,
    rolling: bool,
    partition: i64,
    start: i64,
    update: &'a str,
    min_ready: i64,
    now: i64,
}

/// Upstream's updateStatefulSet: the steps to take this round, at most one
/// blocking step in `OrderedReady` mode. `Create(ord, from_update)` makes
/// the pod of `ord` from the update (or the current) revision.
fn plan(v: &View) -> Vec<Step> {
    let mut steps = Vec::new();
    // New pods below the partition keep the current revision
    // (upstream's newVersionedStatefulSetPod).
    let from_update = |ord: i64| !(v.rolling && ord < v.start + v.partition);
    let first_unhealthy = v
        .replicas
        .iter()
        .filter_map(|(_, p)| *p)
        .chain(v.condemned.iter().copied())
        .find(|p| !p.healthy(v.min_ready, v.now))
        .map(|p| p.name.clone());
    for (ord, pod) in &v.replicas {
        match pod {
            Some(p) if p.failed() && !p.terminating() => {
                // Replaced: deleted now, made again below.
                steps.push(Step::Delete(p.name.clone()));
                steps.push(Step::Create(*ord, from_update(*ord)));
                if v.monotonic {
                    return steps;
                }
            }
            None => {
                steps.push(Step::Create(*ord, from_update(*ord)));
                if v.monotonic {
                    return steps;
                }
            }
            Some(p) if p.terminating() => {
                if v.monotonic {
                    return steps;
                }
            }
            Some(p) => {
                if v.monotonic && !p.healthy(v.min_ready, v.now) {
                    return steps;
                }
            }
        }
    }
    for p in v.condemned.iter().rev() {
        if p.terminating() {
            if v.monotonic {
                return steps;
            }
            continue;
        }
        if v.monotonic
            && !p.healthy(v.min_ready, v.now)
            && first_unhealthy.as_deref() != Some(p.name.as_str())
        {
            return steps;
        }
        steps.push(Step::Delete(p.name.clone()));
        if v.monotonic {
            return steps;
        }
    }
    if !v.rolling || !steps.is_empty() {
        return steps;
    }
    // Rolling update: the highest ordinal not at the update revision goes,
    // once every pod above it is healthy again.
    let floor = usize::try_from(v.partition.max(0)).unwrap_or(usize::MAX);
    for (_, pod) in v.replicas.iter().skip(floor).rev() {
        let Some(p) = pod else { return steps };
        if p.revision() != v.update && !p.terminating() {
            steps.push(Step::Delete(p.name.clone()));
            return steps;
        }
        if !p.healthy(v.min_ready, v.now) {
            return steps;
        }
    }
    steps
}

impl StatefulSetController {
    fn enqueue_owner(&mut self, pod: &SetPod) {
        if let Some(key) = pod
            .info
            .controller
            .as_ref()
            .and_then(|u| self.by_uid.get(u))
        {
            self.queue.add(key.clone());
        }
    }

    fn forget_set(&mut self, key: &Key) {
        if let Some(uid) = self.sets.remove(key) {
            self.by_uid.remove(&uid);
            self.events.forget(&uid);
            self.warned.remove(&uid);
        }
    }

    fn sync(&mut self, reg: &Registry, key: &Key) {
        let (ns, name) = key;
        let adopt = self.adopt.remove(key);
        let Ok(Some(set)) = reg.store.get(&STATEFULSETS, ns, name) else {
            return;
        };
        if object::deletion_timestamp(&set).is_some() {
            return;
        }
        let Some(sel) = set
            .pointer("/spec/selector")
            .and_then(|s| LabelSelector::from_api(s).ok())
            .filter(|s| !s.is_empty())
        else {
            return;
        };
        let uid = object::uid(&set).to_string();
        let owned = self.pods.owned(&uid).map(|(k, p)| (k, &p.info));
        let written = claim(reg, COMPONENT, &set, "StatefulSet", &sel, owned, adopt);
        for (k, pod) in written {
            if controlled_by_kind(&pod, "StatefulSet") {
                self.pods.insert(k, SetPod::of(&pod));
            } else {
                self.pods.remove(&k);
            }
        }
        self.warn_claims(reg, &set);
        let revs = history::owned(reg, &set);
        let (update, collisions) = match history::current(reg, &set, "StatefulSet", &revs) {
            Ok(r) => r,
            Err(e) => {
                log_failure(COMPONENT, name, &e);
                return;
            }
        };
        let revs = history::owned(reg, &set);
        let current = set
            .pointer("/status/currentRevision")
            .and_then(Value::as_str)
            .and_then(|n| history::by_name(&revs, n))
            .unwrap_or_else(|| update.clone());

        let replicas = i(&set, "/spec/replicas").unwrap_or(1).max(0);
        let start = i(&set, "/spec/ordinals/start").unwrap_or(0).max(0);
        let min_ready = i(&set, "/spec/minReadySeconds").unwrap_or(0);
        let now = epoch_now();
        let mut replica_pods: BTreeMap<i64, &SetPod> = BTreeMap::new();
        let mut condemned: Vec<(i64, &SetPod)> = Vec::new();
        for (_, p) in self.pods.owned(&uid) {
            let Some(ord) = p.ordinal(name) else { continue };
            if (start..start + replicas).contains(&ord) {
                replica_pods.insert(ord, p);
            } else {
                condemned.push((ord, p));
            }
        }
        condemned.sort_by_key(|(o, _)| *o);
        let view = View {
            replicas: (start..start + replicas)
                .map(|o| (o, replica_pods.get(&o).copied()))
                .collect(),
            condemned: condemned.iter().map(|(_, p)| *p).collect(),
            monotonic: set
                .pointer("/spec/podManagementPolicy")
                .and_then(Value::as_str)
                != Some("Parallel"),
            rolling: set
                .pointer("/spec/updateStrategy/type")
                .and_then(Value::as_str)
                != Some("OnDelete"),
            partition: i(&set, "/spec/updateStrategy/rollingUpdate/partition").unwrap_or(0),
            start,
            update: &update.name,
            min_ready,
            now,
        };
        let steps = plan(&view);
        drop(view);
        drop(replica_pods);
        drop(condemned);
        self.execute(reg, &set, &steps, &current, &update);
        self.update_status(reg, key, &set, &current, &update, collisions);
        // History: the revisions live pods use, the two in status, and
        // the limit more.
        let mut keep: BTreeSet<String> = self
            .pods
            .owned(&uid)
            .map(|(_, p)| p)
            .map(|p| p.revision().to_string())
            .collect();
        keep.insert(current.name.clone());
        keep.insert(update.name.clone());
        let limit = i(&set, "/spec/revisionHistoryLimit").unwrap_or(10);
        history::prune(reg, COMPONENT, &set, &revs, &keep, limit);
    }

    fn warn_claims(&mut self, reg: &Registry, set: &Value) {
        let claims: Vec<&str> = set
            .pointer("/spec/volumeClaimTemplates")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c.pointer("/metadata/name").and_then(Value::as_str))
            .collect();
        if claims.is_empty() || !self.warned.insert(object::uid(set).to_string()) {
            return;
        }
        record_event(
            reg,
            COMPONENT,
            set,
            "Warning",
            "VolumeClaimTemplatesIgnored",
            &format!(
                "this cluster has no storage: volumeClaimTemplates {} are not provisioned; each pod gets an emptyDir volume of the same name instead, whose data goes with the pod",
                claims.join(", ")
            ),
        );
    }

    fn execute(
        &mut self,
        reg: &Registry,
        set: &Value,
        steps: &[Step],
        current: &Revision,
        update: &Revision,
    ) {
        let ns = object::namespace(set).to_string();
        let set_name = object::name(set);
        for step in steps {
            match step {
                Step::Create(ord, from_update) => {
                    let rev = if *from_update { update } else { current };
                    let pod = new_pod(set, &rev.template, *ord, &rev.name);
                    let pname = format!("{set_name}-{ord}");
                    match reg.create(&PODS, &ns, pod, &write_opts()) {
                        Ok(entry) => {
                            if let Ok(created) = entry.value() {
                                self.pods
                                    .insert((ns.clone(), pname.clone()), SetPod::of(&created));
                            }
                            self.events.record(
                                reg,
                                COMPONENT,
                                set,
                                "Normal",
                                "SuccessfulCreate",
                                &format!("create Pod {pname} in StatefulSet {set_name} successful"),
                            );
                        }
                        Err(e) => {
                            self.events.record(
                                reg,
                                COMPONENT,
                                set,
                                "Warning",
                                "FailedCreate",
                                &format!(
                                    "create Pod {pname} in StatefulSet {set_name} failed error: {}",
                                    e.message
                                ),
                            );
                            log_failure(COMPONENT, &pname, &e);
                            return;
                        }
                    }
                }
                Step::Delete(pname) => {
                    let key = (ns.clone(), pname.clone());
                    match reg.delete(&PODS, &ns, pname, &DeleteOptions::default()) {
                        Ok(_) => {
                            // Gone at once (unbound or finished) or being
                            // deleted gracefully: the event tells which.
                            match reg.store.get(&PODS, &ns, pname) {
                                Ok(Some(p)) => self.pods.insert(key, SetPod::of(&p)),
                                _ => {
                                    self.pods.remove(&key);
                                }
                            }
                            self.events.record(
                                reg,
                                COMPONENT,
                                set,
                                "Normal",
                                "SuccessfulDelete",
                                &format!("delete Pod {pname} in StatefulSet {set_name} successful"),
                            );
                        }
                        Err(e) if e.code == 404 => {
                            self.pods.remove(&key);
                        }
                        Err(e) => {
                            self.events.record(
                                reg,
                                COMPONENT,
                                set,
                                "Warning",
                                "FailedDelete",
                                &format!(
                                    "delete Pod {pname} in StatefulSet {set_name} failed error: {}",
                                    e.message
                                ),
                            );
                            log_failure(COMPONENT, pname, &e);
                            return;
                        }
                    }
                }
            }
        }
    }

    fn update_status(
        &mut self,
        reg: &Registry,
        key: &Key,
        set: &Value,
        current: &Revision,
        update: &Revision,
        collisions: Option<i64>,
    ) {
        let uid = object::uid(set);
        let min_ready = i(set, "/spec/minReadySeconds").unwrap_or(0);
        let now = epoch_now();
        let (mut replicas, mut ready, mut available) = (0i64, 0i64, 0i64);
        let (mut at_current, mut at_update) = (0i64, 0i64);
        let mut next_available: Option<i64> = None;
        for (_, p) in self.pods.owned(uid) {
            if p.ordinal(object::name(set)).is_none() || p.terminating() {
                continue;
            }
            replicas += 1;
            if p.running_and_ready() {
                ready += 1;
                if p.info.available(min_ready, now) {
                    available += 1;
                } else if let Some(t) = p.info.ready_since {
                    let at = t + min_ready;
                    next_available = Some(next_available.map_or(at, |n| n.min(at)));
                }
            }
            if p.revision() == current.name {
                at_current += 1;
            }
            if p.revision() == update.name {
                at_update += 1;
            }
        }
        if let Some(at) = next_available {
            self.queue.add_after_seconds(at - now, key.clone());
        }
        let (mut current_name, mut current_count) = (current.name.clone(), at_current);
        let rolling = set
            .pointer("/spec/updateStrategy/type")
            .and_then(Value::as_str)
            != Some("OnDelete");
        // upstream's completeRollingUpdate.
        if rolling && at_update == replicas && ready == replicas {
            current_name = update.name.clone();
            current_count = at_update;
        }
        let mut status = json!({
            "replicas": replicas,
            "readyReplicas": ready,
            "currentReplicas": current_count,
            "updatedReplicas": at_update,
            "availableReplicas": available,
            "currentRevision": current_name,
            "updateRevision": update.name,
        });
        if let Some(m) = status.as_object_mut() {
            for zero_omitted in ["readyReplicas", "currentReplicas", "updatedReplicas"] {
                if m.get(zero_omitted) == Some(&json!(0)) {
                    m.remove(zero_omitted);
                }
            }
        }
        if let Some(g) = set.pointer("/metadata/generation") {
            status["observedGeneration"] = g.clone();
        }
        if let Some(c) = collisions.or_else(|| i(set, "/status/collisionCount")) {
            status["collisionCount"] = json!(c);
        }
        if let Some(conds) = set.pointer("/status/conditions") {
            status["conditions"] = conds.clone();
        }
        if set.get("status") == Some(&status) {
            return;
        }
        let mut next = set.clone();
        next["status"] = status;
        if let Err(e) = reg.update(
            &STATEFULSETS,
            &key.0,
            &key.1,
            Some("status"),
            next,
            &write_opts(),
        ) {
            log_failure(COMPONENT, &key.1, &e);
        }
    }
}

impl Controller for StatefulSetController {
    fn name(&self) -> &'static str {
        "statefulset"
    }

    fn watches(&self, res: &Resource) -> bool {
        matches!(res.kind, "Pod" | "StatefulSet")
    }

    fn resync(&mut self, reg: &Registry) {
        *self = Self {
            events: std::mem::take(&mut self.events),
            warned: std::mem::take(&mut self.warned),
            ..Self::default()
        };
        for set in super::list_all(reg, &STATEFULSETS, None) {
            let key = key_of(&set);
            self.sets.insert(key.clone(), object::uid(&set).to_string());
            self.by_uid
                .insert(object::uid(&set).to_string(), key.clone());
            self.adopt.insert(key.clone());
            self.queue.add(key);
        }
        let pods: Vec<Arc<Value>> = reg.store.list(&PODS, None, |_| true).unwrap_or_default();
        for pod in pods {
            if controlled_by_kind(&pod, "StatefulSet") {
                let key = key_of(&pod);
                self.pods.insert(key, SetPod::of(&pod));
            }
        }
    }

    fn observe(&mut self, _reg: &Registry, ev: &Change) {
        let key = ev.key();
        match (ev.resource.kind, ev.kind) {
            ("Pod", EventType::Deleted) => {
                if let Some(old) = self.pods.remove(&key) {
                    self.enqueue_owner(&old);
                }
            }
            ("Pod", _) => {
                let rv = object::resource_version(ev.object_meta());
                if self.pods.get(&key).is_some_and(|p| p.info.rv > rv) {
                    return;
                }
                if let Some(old) = self.pods.get(&key).cloned() {
                    self.enqueue_owner(&old);
                }
                if controlled_by_kind(ev.object_meta(), "StatefulSet") {
                    let pod = SetPod::of(ev.object());
                    self.enqueue_owner(&pod);
                    self.pods.insert(key, pod);
                } else {
                    self.pods.remove(&key);
                }
            }
            ("StatefulSet", EventType::Deleted) => self.forget_set(&key),
            ("StatefulSet", _) => {
                let obj = ev.object_meta();
                let uid = object::uid(obj).to_string();
                if self.sets.get(&key) != Some(&uid) {
                    self.forget_set(&key);
                    self.sets.insert(key.clone(), uid.clone());
                    self.by_uid.insert(uid, key.clone());
                }
                let generation = |m: &Value| m.pointer("/metadata/generation").cloned();
                if ev.previous_meta().map(generation) != Some(generation(obj)) {
                    self.adopt.insert(key.clone());
                }
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
