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

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Instant;

use serde_json::{Value, json};

use super::events::{PodAction, Recorder, record_event};
use super::history::{self, HASH_LABEL, Revision};
use super::owned::Key;
use super::pod_owners::{OwnedPod, PodOwners};
use super::replicaset::{PodInfo, controller_ref};
use super::status::{self, Availability, epoch_now};
use super::{Change, Controller, log_failure, write_opts};
use crate::object;
use crate::registry::{DeleteOptions, Registry};
use crate::resources::{PODS, Resource, STATEFULSETS};

pub const COMPONENT: &str = "statefulset-controller";
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// What the controller keeps of a pod that belongs to a StatefulSet.
#[derive(Debug, Clone)]
struct SetPod {
    info: PodInfo,
    name: String,
}

impl OwnedPod for SetPod {
    const OWNER: &'static Resource = &STATEFULSETS;

    fn of(pod: &Value) -> Self {
        Self {
            info: PodInfo::of(pod),
            name: object::name(pod).to_string(),
        }
    }

    fn info(&self) -> &PodInfo {
        &self.info
    }
}

impl SetPod {
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
    /// The StatefulSets, their pods, and those to sync, now or when a pod
    /// becomes available.
    sets: PodOwners<SetPod>,
    /// StatefulSets already warned about their volumeClaimTemplates.
    warned: HashSet<String>,
    events: Recorder,
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
            Some(p) if p.info.finished() && !p.terminating() => {
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
    /// Drops what is kept of a StatefulSet that is gone.
    fn forget(&mut self, uid: &str) {
        self.events.forget(uid);
        self.warned.remove(uid);
    }

    fn sync(&mut self, reg: &Registry, key: &Key) {
        let name = &key.1;
        let Some(set) = self.sets.claim(reg, COMPONENT, key) else {
            return;
        };
        let uid = object::uid(&set).to_string();
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
        for (_, p) in self.sets.pods.owned(&uid) {
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
            .sets
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
            let (action, pname, outcome) = match step {
                Step::Create(ord, from_update) => {
                    let rev = if *from_update { update } else { current };
                    let pod = new_pod(set, &rev.template, *ord, &rev.name);
                    let pname = format!("{set_name}-{ord}");
                    let outcome = reg.create(&PODS, &ns, pod, &write_opts()).map(|entry| {
                        if let Ok(created) = entry.value() {
                            self.sets
                                .pods
                                .insert((ns.clone(), pname.clone()), SetPod::of(&created));
                        }
                    });
                    (PodAction::Create, pname, outcome)
                }
                Step::Delete(pname) => {
                    let key = (ns.clone(), pname.clone());
                    let outcome = match reg.delete(&PODS, &ns, pname, &DeleteOptions::default()) {
                        Err(e) if e.code == 404 => {
                            self.sets.pods.remove(&key);
                            continue;
                        }
                        outcome => outcome.map(|_| {
                            // Gone at once (unbound or finished) or being
                            // deleted gracefully: the event tells which.
                            match reg.store.get(&PODS, &ns, pname) {
                                Ok(Some(p)) => self.sets.pods.insert(key, SetPod::of(&p)),
                                _ => {
                                    self.sets.pods.remove(&key);
                                }
                            }
                        }),
                    };
                    (PodAction::Delete, pname.clone(), outcome)
                }
            };
            self.events.stateful_pod_event(
                reg,
                COMPONENT,
                set,
                action,
                &pname,
                outcome.as_ref().copied(),
            );
            if let Err(e) = outcome {
                log_failure(COMPONENT, &pname, &e);
                return;
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
        let (mut replicas, mut at_current, mut at_update) = (0i64, 0i64, 0i64);
        let mut availability = Availability::of(set);
        for (_, p) in self.sets.pods.owned(uid) {
            if p.ordinal(object::name(set)).is_none() || p.terminating() {
                continue;
            }
            replicas += 1;
            if p.running_and_ready() {
                availability.count_ready(&p.info);
            }
            if p.revision() == current.name {
                at_current += 1;
            }
            if p.revision() == update.name {
                at_update += 1;
            }
        }
        availability.requeue(&mut self.sets.queue, key.clone());
        let ready = availability.ready;
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
            "availableReplicas": availability.available,
            "currentRevision": current_name,
            "updateRevision": update.name,
        });
        status::omit_zero(
            &mut status,
            &["readyReplicas", "currentReplicas", "updatedReplicas"],
        );
        status::carry_over(&mut status, set, collisions);
        status::write(reg, COMPONENT, &STATEFULSETS, set, status);
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
        self.sets.resync(reg);
    }

    fn observe(&mut self, _reg: &Registry, ev: &Change) {
        match ev.resource.kind {
            "Pod" => self.sets.observe_pod(ev),
            "StatefulSet" => {
                if let Some(uid) = self.sets.observe_owner(ev) {
                    self.forget(&uid);
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
