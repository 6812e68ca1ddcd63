//! The Deployment controller, with kube-controller-manager's semantics
//! (pkg/controller/deployment): one ReplicaSet per pod template, named
//! `<deployment>-<pod-template-hash>`, rolled out by RollingUpdate
//! (maxSurge/maxUnavailable) or Recreate; proportional scaling while a
//! rollout is in flight; the `deployment.kubernetes.io/revision`,
//! `desired-replicas` and `max-replicas` annotations; cleanup past
//! `revisionHistoryLimit`; `paused`; the Available and Progressing
//! conditions with upstream's reasons; and `ScalingReplicaSet` events.
//!
//! `kubectl rollout undo` (v1.32) patches the template of an old
//! ReplicaSet back into the Deployment; the controller then finds that
//! ReplicaSet as the new one and gives it the next revision.

use super::key_of;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use serde_json::{Map, Value, json};

use super::events::Recorder;
use super::owned::{ByController, Controlled, Key};
use super::queue::WorkQueue;
use super::replicaset::{controller_of, controller_ref};
use super::{Change, Controller, log_failure, write_opts};
use crate::admission::workloads::scaled_value;
use crate::object;
use crate::patch::PatchType;
use crate::registry::Registry;
use crate::resources::{DEPLOYMENTS, REPLICASETS, Resource};
use crate::selector::LabelSelector;
use crate::store::EventType;

pub const COMPONENT: &str = "deployment-controller";
pub const HASH_LABEL: &str = "pod-template-hash";
pub const REVISION: &str = "deployment.kubernetes.io/revision";
const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
const DESIRED: &str = "deployment.kubernetes.io/desired-replicas";
const MAX: &str = "deployment.kubernetes.io/max-replicas";
/// Annotations never copied from a Deployment to its ReplicaSets.
const SKIPPED_ANNOTATIONS: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED,
    MAX,
    "deprecated.deployment.rollback.to",
];
/// Longest revision-history annotation (upstream's default).
const MAX_HISTORY_CHARS: usize = 2000;

fn i(v: &Value, ptr: &str) -> i64 {
    v.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

fn annotation<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    object::metadata(v)
        .and_then(|m| m.get("annotations"))
        .and_then(|a| a.get(key))
        .and_then(Value::as_str)
}

fn set_annotation(v: &mut Value, key: &str, value: &str) {
    if let Some(m) = object::metadata_mut(v) {
        let a = m.entry("annotations").or_insert_with(|| json!({}));
        if !a.is_object() {
            *a = json!({});
        }
        a[key] = json!(value);
    }
}

fn replicas(rs: &Value) -> i64 {
    rs.pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1)
}

fn created(v: &Value) -> String {
    v.pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

fn revision(rs: &Value) -> i64 {
    annotation(rs, REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// Sorts maps by key, so equal objects serialize to equal bytes.
fn canonical(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let sorted: BTreeMap<&String, Value> =
                m.iter().map(|(k, v)| (k, canonical(v))).collect();
            Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
        }
        Value::Array(a) => Value::Array(a.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// apimachinery's SafeEncodeString: each byte mapped into an alphabet with
/// no vowels and no confusable digits.
fn safe_encode(s: &str) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    s.bytes()
        .map(|b| char::from(ALPHANUMS[usize::from(b) % ALPHANUMS.len()]))
        .collect()
}

/// The pod-template-hash of a template, as upstream's ComputeHash builds
/// it: FNV-32a over the template (here its canonical JSON; upstream hashes
/// the Go struct's dump) and the collision count, rendered as the decimal
/// sum through SafeEncodeString.
pub fn template_hash(template: &Value, collision_count: Option<i64>) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            hash = (hash ^ u32::from(*b)).wrapping_mul(0x0100_0193);
        }
    };
    feed(canonical(template).to_string().as_bytes());
    if let Some(c) = collision_count {
        let mut buf = [0u8; 8];
        buf[..4].copy_from_slice(&(c as u32).to_le_bytes());
        feed(&buf);
    }
    safe_encode(&hash.to_string())
}

/// Templates equal but for the pod-template-hash label (EqualIgnoreHash).
fn equal_ignore_hash(a: Option<&Value>, b: Option<&Value>) -> bool {
    let strip = |t: Option<&Value>| {
        let mut t = t.cloned().unwrap_or(Value::Null);
        if let Some(labels) = t
            .pointer_mut("/metadata/labels")
            .and_then(Value::as_object_mut)
        {
            labels.remove(HASH_LABEL);
            if labels.is_empty()
                && let Some(m) = t.get_mut("metadata").and_then(Value::as_object_mut)
            {
                m.remove("labels");
            }
        }
        if t.get("metadata")
            .and_then(Value::as_object)
            .is_some_and(Map::is_empty)
            && let Some(m) = t.as_object_mut()
        {
            m.remove("metadata");
        }
        t
    };
    strip(a) == strip(b)
}

fn is_rolling(d: &Value) -> bool {
    d.pointer("/spec/strategy/type").and_then(Value::as_str) != Some("Recreate")
}

/// (maxSurge, maxUnavailable) for the Deployment's replicas
/// (ResolveFenceposts: surge rounds up, unavailable down; both 0 gives 1
/// unavailable).
fn fenceposts(d: &Value) -> (i64, i64) {
    if !is_rolling(d) {
        return (0, 0);
    }
    let desired = replicas(d);
    let ru = d.pointer("/spec/strategy/rollingUpdate");
    let surge = scaled_value(ru.and_then(|r| r.get("maxSurge")), desired, true).unwrap_or(0);
    let unavailable =
        scaled_value(ru.and_then(|r| r.get("maxUnavailable")), desired, false).unwrap_or(0);
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

fn max_surge(d: &Value) -> i64 {
    fenceposts(d).0
}

fn max_unavailable(d: &Value) -> i64 {
    if !is_rolling(d) || replicas(d) == 0 {
        return 0;
    }
    fenceposts(d).1.min(replicas(d))
}

fn sum(rss: &[Value], f: impl Fn(&Value) -> i64) -> i64 {
    rss.iter().map(f).sum()
}

fn spec_sum(rss: &[Value]) -> i64 {
    sum(rss, replicas)
}

fn condition<'a>(status: &'a Value, ty: &str) -> Option<&'a Value> {
    status
        .get("conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(ty))
}

fn new_condition(ty: &str, status: &str, reason: &str, message: &str) -> Value {
    let now = object::now();
    json!({"type": ty, "status": status, "lastUpdateTime": now, "lastTransitionTime": now, "reason": reason, "message": message})
}

/// SetDeploymentCondition: same status and reason keeps the old one; same
/// status keeps its transition time.
fn set_condition(status: &mut Value, mut cond: Value) {
    let ty = cond["type"].as_str().unwrap_or("").to_string();
    if let Some(cur) = condition(status, &ty) {
        if cur.get("status") == cond.get("status") && cur.get("reason") == cond.get("reason") {
            return;
        }
        if cur.get("status") == cond.get("status") {
            cond["lastTransitionTime"] = cur["lastTransitionTime"].clone();
        }
    }
    remove_condition(status, &ty);
    if !status.get("conditions").is_some_and(Value::is_array) {
        status["conditions"] = json!([]);
    }
    if let Some(a) = status["conditions"].as_array_mut() {
        a.push(cond);
    }
}

fn remove_condition(status: &mut Value, ty: &str) {
    if let Some(a) = status.get_mut("conditions").and_then(Value::as_array_mut) {
        a.retain(|c| c.get("type").and_then(Value::as_str) != Some(ty));
    }
}

#[derive(Debug, Default)]
pub struct DeploymentController {
    /// Deployment selectors by key, and keys by uid and namespace.
    selectors: HashMap<Key, Option<LabelSelector>>,
    by_uid: HashMap<String, Key>,
    in_ns: HashMap<String, BTreeSet<String>>,
    /// ReplicaSets by the uid of their controller; orphans by namespace;
    /// and what each one was last seen with.
    rs_seen: ByController<SeenRs>,
    /// The controller uid of each ReplicaSet, by the ReplicaSet's uid.
    rs_owner_by_uid: HashMap<String, Option<String>>,
    /// Pods not yet finished per ReplicaSet uid (Recreate waits for them).
    running_pods: ByController<PodOf>,
    /// Deployments to sync, now or at their progress deadline.
    queue: WorkQueue<Key>,
    events: Recorder,
}

/// What the controller keeps of a ReplicaSet.
#[derive(Debug)]
struct SeenRs {
    uid: String,
    /// The uid of its controller.
    owner: Option<String>,
}

impl Controlled for SeenRs {
    fn controller(&self) -> Option<&str> {
        self.owner.as_deref()
    }
}

/// A pod not yet finished, by the uid of its ReplicaSet.
#[derive(Debug)]
struct PodOf(String);

impl Controlled for PodOf {
    fn controller(&self) -> Option<&str> {
        Some(&self.0)
    }
}

/// A Deployment in the middle of a sync: its latest stored state.
struct Sync {
    d: Value,
}

impl DeploymentController {
    fn index_rs(&mut self, key: Key, rs: &Value) {
        let uid = object::uid(rs).to_string();
        let owner = controller_of(
            rs.pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .map_or(&[][..], Vec::as_slice),
        )
        .map(String::from);
        self.unindex_rs(&key);
        self.rs_owner_by_uid.insert(uid.clone(), owner.clone());
        self.rs_seen.insert(key, SeenRs { uid, owner });
    }

    fn unindex_rs(&mut self, key: &Key) -> Option<SeenRs> {
        let seen = self.rs_seen.remove(key)?;
        self.rs_owner_by_uid.remove(&seen.uid);
        Some(seen)
    }

    fn index_deployment(&mut self, key: Key, d: &Value) {
        self.by_uid.insert(object::uid(d).to_string(), key.clone());
        self.in_ns
            .entry(key.0.clone())
            .or_default()
            .insert(key.1.clone());
        let sel = d
            .pointer("/spec/selector")
            .and_then(|s| LabelSelector::from_api(s).ok());
        self.selectors.insert(key, sel);
    }

    fn unindex_deployment(&mut self, key: &Key, uid: &str) {
        self.selectors.remove(key);
        self.by_uid.remove(uid);
        self.events.forget(uid);
        if let Some(s) = self.in_ns.get_mut(&key.0) {
            s.remove(&key.1);
            if s.is_empty() {
                self.in_ns.remove(&key.0);
            }
        }
    }

    /// Queues the Deployment a ReplicaSet belongs to, or for an orphan
    /// those of its namespace that select it.
    fn enqueue_for_rs(
        &mut self,
        ns: &str,
        owner: Option<&str>,
        rs_labels: &BTreeMap<String, String>,
    ) {
        match owner {
            Some(o) => {
                if let Some(k) = self.by_uid.get(o) {
                    self.queue.add(k.clone());
                }
            }
            None => {
                for name in self.in_ns.get(ns).into_iter().flatten() {
                    let key = (ns.to_string(), name.clone());
                    let selects = self
                        .selectors
                        .get(&key)
                        .and_then(Option::as_ref)
                        .is_some_and(|sel| {
                            !sel.is_empty()
                                && sel.matches_with(|k| rs_labels.get(k).map(String::as_str))
                        });
                    if selects {
                        self.queue.add(key);
                    }
                }
            }
        }
    }

    /// The ReplicaSets this Deployment controls after adopting matching
    /// orphans and releasing owned ones that no longer match.
    fn claim(&mut self, reg: &Registry, d: &Value, sel: &LabelSelector) -> Vec<Value> {
        let ns = object::namespace(d).to_string();
        let uid = object::uid(d).to_string();
        let deleting = object::deletion_timestamp(d).is_some();
        let matches = |rs: &Value| sel.matches_with(|k| object::label(rs, k));
        let mut out = Vec::new();
        let owned: Vec<Key> = self.rs_seen.owned_keys(&uid).cloned().collect();
        for key in owned {
            let Ok(Some(rs)) = reg.store.get(&REPLICASETS, &key.0, &key.1) else {
                continue;
            };
            let rs = (*rs).clone();
            if deleting || matches(&rs) {
                out.push(rs);
            } else {
                let refs: Vec<Value> = owner_refs(&rs)
                    .into_iter()
                    .filter(|r| r.get("uid").and_then(Value::as_str) != Some(&uid))
                    .collect();
                self.patch_owners(reg, &rs, refs);
            }
        }
        if !deleting {
            let orphans: Vec<String> = self.rs_seen.orphans(&ns).cloned().collect();
            for name in orphans {
                let Ok(Some(rs)) = reg.store.get(&REPLICASETS, &ns, &name) else {
                    continue;
                };
                if object::deletion_timestamp(&rs).is_some() || !matches(&rs) {
                    continue;
                }
                let mut refs = owner_refs(&rs);
                refs.push(controller_ref(d, "apps/v1", "Deployment"));
                if let Some(adopted) = self.patch_owners(reg, &rs, refs) {
                    out.push(adopted);
                }
            }
        }
        out.sort_by(|a, b| {
            created(a)
                .cmp(&created(b))
                .then_with(|| object::name(a).cmp(object::name(b)))
        });
        out
    }

    fn patch_owners(&mut self, reg: &Registry, rs: &Value, refs: Vec<Value>) -> Option<Value> {
        let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": object::resource_version(rs).to_string()}});
        let (ns, name) = (object::namespace(rs), object::name(rs));
        match reg.patch(
            &REPLICASETS,
            ns,
            name,
            None,
            (PatchType::Merge, patch.to_string().as_bytes()),
            &write_opts(),
        ) {
            Ok(e) => {
                let v = e.value().ok()?;
                self.index_rs((ns.to_string(), name.to_string()), &v);
                Some(v)
            }
            Err(e) => {
                log_failure(COMPONENT, name, &e);
                None
            }
        }
    }

    fn sync(&mut self, reg: &Registry, key: &Key) {
        let Ok(Some(d)) = reg.store.get(&DEPLOYMENTS, &key.0, &key.1) else {
            return;
        };
        let d = (*d).clone();
        let Some(sel) = d
            .pointer("/spec/selector")
            .and_then(|s| LabelSelector::from_api(s).ok())
        else {
            return;
        };
        let mut s = Sync { d };
        if sel.is_empty() {
            // Selecting everything is refused, as upstream does.
            if i(&s.d, "/status/observedGeneration") < i(&s.d, "/metadata/generation") {
                let mut status = s.d.get("status").cloned().unwrap_or_else(|| json!({}));
                status["observedGeneration"] = s.d["metadata"]["generation"].clone();
                self.write_status(reg, &mut s, status);
            }
            return;
        }
        let mut rss = self.claim(reg, &s.d, &sel);
        if object::deletion_timestamp(&s.d).is_some() {
            let (new_rs, old) = self.new_and_old(reg, &mut s, &mut rss, false);
            self.sync_status(reg, &mut s, new_rs.as_ref(), &old);
            return;
        }
        self.check_paused(reg, &mut s);
        let paused = s.d.pointer("/spec/paused").and_then(Value::as_bool) == Some(true);
        if paused || self.is_scaling_event(reg, &mut s, &mut rss) {
            self.scale_sync(reg, &mut s, &mut rss, paused);
            return;
        }
        if is_rolling(&s.d) {
            self.rollout_rolling(reg, &mut s, &mut rss);
        } else {
            self.rollout_recreate(reg, &mut s, &mut rss);
        }
    }

    /// Finds (and, when asked, creates) the ReplicaSet of the current
    /// template; returns it and the others, syncing revision annotations.
    fn new_and_old(
        &mut self,
        reg: &Registry,
        s: &mut Sync,
        rss: &mut Vec<Value>,
        create: bool,
    ) -> (Option<Value>, Vec<Value>) {
        let template = s.d.pointer("/spec/template").cloned();
        let new_idx = rss
            .iter()
            .position(|rs| equal_ignore_hash(rs.pointer("/spec/template"), template.as_ref()));
        let old: Vec<Value> = rss
            .iter()
            .enumerate()
            .filter(|(n, _)| Some(*n) != new_idx)
            .map(|(_, r)| r.clone())
            .collect();
        let max_old = old.iter().map(revision).max().unwrap_or(0);
        let new_revision = (max_old + 1).to_string();
        if let Some(n) = new_idx {
            let mut rs = rss[n].clone();
            let changed = self.new_rs_annotations(&s.d, &mut rs, &new_revision, true);
            let min_ready = s.d.pointer("/spec/minReadySeconds").cloned();
            let min_ready_changed = rs.pointer("/spec/minReadySeconds") != min_ready.as_ref()
                && !(min_ready.is_none() && i(&rs, "/spec/minReadySeconds") == 0);
            if changed || min_ready_changed {
                rs["spec"]["minReadySeconds"] = min_ready.unwrap_or(json!(0));
                if let Some(updated) = self.update_rs(reg, rs) {
                    rss[n] = updated.clone();
                    return (Some(updated), old);
                }
                return (Some(rss[n].clone()), old);
            }
            let rev = annotation(&rs, REVISION).unwrap_or("").to_string();
            let mut status = s.d.get("status").cloned().unwrap_or_else(|| json!({}));
            let mut needs = annotation(&s.d, REVISION) != Some(rev.as_str());
            if needs {
                set_annotation(&mut s.d, REVISION, &rev);
            }
            if s.d.pointer("/spec/progressDeadlineSeconds").is_some()
                && condition(&status, "Progressing").is_none()
            {
                set_condition(
                    &mut status,
                    new_condition(
                        "Progressing",
                        "True",
                        "FoundNewReplicaSet",
                        &format!("Found new replica set \"{}\"", object::name(&rs)),
                    ),
                );
                needs = true;
            }
            if needs {
                self.write_status(reg, s, status);
            }
            return (Some(rs), old);
        }
        if !create {
            return (None, old);
        }
        let collisions =
            s.d.pointer("/status/collisionCount")
                .and_then(Value::as_i64);
        let hash = template_hash(template.as_ref().unwrap_or(&Value::Null), collisions);
        let mut tmpl = template.unwrap_or_else(|| json!({}));
        if !tmpl.get("metadata").is_some_and(Value::is_object) {
            tmpl["metadata"] = json!({});
        }
        if !tmpl["metadata"].get("labels").is_some_and(Value::is_object) {
            tmpl["metadata"]["labels"] = json!({});
        }
        tmpl["metadata"]["labels"][HASH_LABEL] = json!(hash);
        let mut selector =
            s.d.pointer("/spec/selector")
                .cloned()
                .unwrap_or_else(|| json!({}));
        if !selector.get("matchLabels").is_some_and(Value::is_object) {
            selector["matchLabels"] = json!({});
        }
        selector["matchLabels"][HASH_LABEL] = json!(hash);
        let ns = object::namespace(&s.d).to_string();
        let name = format!("{}-{hash}", object::name(&s.d));
        let mut rs = json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {
                "name": name, "namespace": ns,
                "labels": tmpl["metadata"]["labels"].clone(),
                "ownerReferences": [controller_ref(&s.d, "apps/v1", "Deployment")],
            },
            "spec": {"replicas": 0, "minReadySeconds": i(&s.d, "/spec/minReadySeconds"), "selector": selector, "template": tmpl},
        });
        let mut all = old.clone();
        all.push(rs.clone());
        let count = new_rs_new_replicas(&s.d, &all, &rs);
        rs["spec"]["replicas"] = json!(count);
        self.new_rs_annotations(&s.d, &mut rs, &new_revision, false);
        let created = match reg.create(&REPLICASETS, &ns, rs, &write_opts()) {
            Ok(e) => match e.value() {
                Ok(v) => v,
                Err(_) => return (None, old),
            },
            Err(e) if e.reason == "AlreadyExists" => {
                // A hash collision, unless it is ours with our template.
                if let Ok(Some(existing)) = reg.store.get(&REPLICASETS, &ns, &name) {
                    let ours = controller_of(&owner_refs(&existing)) == Some(object::uid(&s.d));
                    if ours
                        && equal_ignore_hash(
                            existing.pointer("/spec/template"),
                            s.d.pointer("/spec/template"),
                        )
                    {
                        let existing = (*existing).clone();
                        self.index_rs((ns, name), &existing);
                        rss.push(existing.clone());
                        return (Some(existing), old);
                    }
                }
                let mut status = s.d.get("status").cloned().unwrap_or_else(|| json!({}));
                status["collisionCount"] = json!(collisions.unwrap_or(0) + 1);
                self.write_status(reg, s, status);
                self.queue.add((ns, object::name(&s.d).to_string()));
                return (None, old);
            }
            Err(e) => {
                log_failure(COMPONENT, &name, &e);
                let mut status = s.d.get("status").cloned().unwrap_or_else(|| json!({}));
                set_condition(
                    &mut status,
                    new_condition("ReplicaFailure", "True", "FailedCreate", &e.message),
                );
                self.write_status(reg, s, status);
                return (None, old);
            }
        };
        self.index_rs((ns, name.clone()), &created);
        rss.push(created.clone());
        if count > 0 {
            self.event(
                reg,
                &s.d,
                &format!("Scaled up replica set {name} from 0 to {count}"),
            );
        }
        set_annotation(&mut s.d, REVISION, &new_revision);
        let mut status = s.d.get("status").cloned().unwrap_or_else(|| json!({}));
        if s.d.pointer("/spec/progressDeadlineSeconds").is_some() {
            set_condition(
                &mut status,
                new_condition(
                    "Progressing",
                    "True",
                    "NewReplicaSetCreated",
                    &format!("Created new replica set \"{name}\""),
                ),
            );
        }
        self.write_status(reg, s, status);
        (Some(created), old)
    }

    /// SetNewReplicaSetAnnotations; true when something changed.
    fn new_rs_annotations(
        &self,
        d: &Value,
        rs: &mut Value,
        new_revision: &str,
        exists: bool,
    ) -> bool {
        let mut changed = false;
        for (k, v) in object::metadata(d)
            .and_then(|m| m.get("annotations"))
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let v = v.as_str().unwrap_or("");
            if SKIPPED_ANNOTATIONS.contains(&k.as_str()) || annotation(rs, k) == Some(v) {
                continue;
            }
            set_annotation(rs, k, v);
            changed = true;
        }
        let old_revision = annotation(rs, REVISION).map(String::from);
        let old_int: i64 = match &old_revision {
            Some(r) => match r.parse() {
                Ok(n) => n,
                Err(_) => return changed,
            },
            None => 0,
        };
        let new_int: i64 = new_revision.parse().unwrap_or(0);
        if old_int < new_int {
            set_annotation(rs, REVISION, new_revision);
            changed = true;
            if let Some(old) = old_revision {
                let history = annotation(rs, REVISION_HISTORY).unwrap_or("").to_string();
                if history.is_empty() {
                    set_annotation(rs, REVISION_HISTORY, &old);
                } else {
                    let mut parts: Vec<&str> = history.split(',').collect();
                    let mut total = history.len() + old.len() + 1;
                    let mut start = 0;
                    while total > MAX_HISTORY_CHARS && start < parts.len() {
                        total -= parts[start].len() + 1;
                        start += 1;
                    }
                    if total <= MAX_HISTORY_CHARS {
                        parts = parts.split_off(start);
                        parts.push(&old);
                        set_annotation(rs, REVISION_HISTORY, &parts.join(","));
                    }
                }
            }
        }
        if !exists && set_replicas_annotations(rs, replicas(d), replicas(d) + max_surge(d)) {
            changed = true;
        }
        changed
    }

    fn update_rs(&mut self, reg: &Registry, rs: Value) -> Option<Value> {
        let (ns, name) = key_of(&rs);
        match reg.update(&REPLICASETS, &ns, &name, None, rs, &write_opts()) {
            Ok((e, _)) => e.value().ok(),
            Err(e) => {
                log_failure(COMPONENT, &name, &e);
                None
            }
        }
    }

    fn event(&mut self, reg: &Registry, d: &Value, message: &str) {
        self.events
            .record(reg, COMPONENT, d, "Normal", "ScalingReplicaSet", message);
    }

    /// scaleReplicaSet: the new size and the replica annotations; records
    /// the event when the size changed. Returns whether it scaled.
    fn scale_rs(
        &mut self,
        reg: &Registry,
        d: &Value,
        rs: &mut Value,
        new_scale: i64,
        op: &str,
    ) -> bool {
        let size_changed = replicas(rs) != new_scale;
        let (desired, max) = (replicas(d), replicas(d) + max_surge(d));
        let annotations_changed = annotation(rs, DESIRED) != Some(desired.to_string().as_str())
            || annotation(rs, MAX) != Some(max.to_string().as_str());
        if !size_changed && !annotations_changed {
            return false;
        }
        let old_scale = replicas(rs);
        let mut next = rs.clone();
        next["spec"]["replicas"] = json!(new_scale);
        set_replicas_annotations(&mut next, desired, max);
        match self.update_rs(reg, next) {
            Some(updated) => {
                *rs = updated;
                if size_changed {
                    self.event(
                        reg,
                        d,
                        &format!(
                            "Scaled {op} replica set {} from {old_scale} to {new_scale}",
                            object::name(rs)
                        ),
                    );
                }
                size_changed
            }
            None => false,
        }
    }

    fn scale_and_record(
        &mut self,
        reg: &Registry,
        d: &Value,
        rs: &mut Value,
        new_scale: i64,
    ) -> bool {
        if replicas(rs) == new_scale {
            return false;
        }
        let op = if replicas(rs) < new_scale {
            "up"
        } else {
            "down"
        };
        self.scale_rs(reg, d, rs, new_scale, op)
    }

    fn is_scaling_event(&mut self, reg: &Registry, s: &mut Sync, rss: &mut Vec<Value>) -> bool {
        let (new_rs, old) = self.new_and_old(reg, s, rss, false);
        let want = replicas(&s.d);
        old.iter()
            .chain(new_rs.iter())
            .filter(|r| replicas(r) > 0)
            .filter_map(|r| annotation(r, DESIRED)?.parse::<i64>().ok())
            .any(|desired| desired != want)
    }

    /// The `sync` path: scaling (proportionally during a rollout), cleanup
    /// when paused, and the status.
    fn scale_sync(&mut self, reg: &Registry, s: &mut Sync, rss: &mut Vec<Value>, paused: bool) {
        let (new_rs, mut old) = self.new_and_old(reg, s, rss, false);
        let mut new_rs = new_rs;
        self.scale(reg, s, &mut new_rs, &mut old);
        if paused {
            self.cleanup(reg, &s.d, &old);
        }
        self.sync_status(reg, s, new_rs.as_ref(), &old);
    }

    fn scale(
        &mut self,
        reg: &Registry,
        s: &mut Sync,
        new_rs: &mut Option<Value>,
        old: &mut [Value],
    ) {
        let d = s.d.clone();
        let want = replicas(&d);
        // Newest first, as FindActiveOrLatest sorts.
        old.sort_by_key(|r| std::cmp::Reverse(created(r)));
        let active_count = old
            .iter()
            .chain(new_rs.iter())
            .filter(|r| replicas(r) > 0)
            .count();
        if active_count <= 1 {
            let target: Option<&mut Value> = if active_count == 1 {
                match new_rs.as_mut().filter(|r| replicas(r) > 0) {
                    Some(r) => Some(r),
                    None => old.iter_mut().find(|r| replicas(r) > 0),
                }
            } else {
                match new_rs.as_mut() {
                    Some(r) => Some(r),
                    None => old.first_mut(),
                }
            };
            if let Some(rs) = target
                && replicas(rs) != want
            {
                self.scale_and_record(reg, &d, rs, want);
            }
            return;
        }
        let saturated = new_rs.as_ref().is_some_and(|rs| {
            replicas(rs) == want
                && annotation(rs, DESIRED).and_then(|v| v.parse::<i64>().ok()) == Some(want)
                && i(rs, "/status/availableReplicas") == want
        });
        if saturated {
            for rs in old.iter_mut().filter(|r| replicas(r) > 0) {
                self.scale_and_record(reg, &d, rs, 0);
            }
            return;
        }
        if !is_rolling(&d) {
            return;
        }
        // Proportional scaling of every active ReplicaSet.
        let mut all: Vec<&mut Value> = old
            .iter_mut()
            .chain(new_rs.iter_mut())
            .filter(|r| replicas(r) > 0)
            .collect();
        let current: i64 = all.iter().map(|r| replicas(r)).sum();
        let allowed = if want > 0 { want + max_surge(&d) } else { 0 };
        let to_add = allowed - current;
        let op = if to_add > 0 { "up" } else { "down" };
        match to_add.cmp(&0) {
            std::cmp::Ordering::Greater => all.sort_by(|a, b| {
                replicas(b)
                    .cmp(&replicas(a))
                    .then_with(|| created(b).cmp(&created(a)))
            }),
            std::cmp::Ordering::Less => all.sort_by(|a, b| {
                replicas(b)
                    .cmp(&replicas(a))
                    .then_with(|| created(a).cmp(&created(b)))
            }),
            std::cmp::Ordering::Equal => {}
        }
        let mut added = 0i64;
        let mut sizes: Vec<i64> = Vec::with_capacity(all.len());
        for rs in &all {
            if to_add != 0 {
                let p = proportion(rs, &d, to_add, added);
                sizes.push(replicas(rs) + p);
                added += p;
            } else {
                sizes.push(replicas(rs));
            }
        }
        for (n, rs) in all.into_iter().enumerate() {
            if n == 0 && to_add != 0 {
                sizes[0] = (sizes[0] + to_add - added).max(0);
            }
            self.scale_rs(reg, &d, rs, sizes[n], op);
        }
    }

    fn rollout_rolling(&mut self, reg: &Registry, s: &mut Sync, rss: &mut Vec<Value>) {
        let (new_rs, mut old) = self.new_and_old(reg, s, rss, true);
        let Some(mut new_rs) = new_rs else {
            return;
        };
        let d = s.d.clone();
        let mut all: Vec<Value> = old.clone();
        all.push(new_rs.clone());
        // Scale up, if we can.
        let want = replicas(&d);
        let scaled_up = if replicas(&new_rs) > want {
            self.scale_and_record(reg, &d, &mut new_rs, want)
        } else if replicas(&new_rs) < want {
            let n = new_rs_new_replicas(&d, &all, &new_rs);
            self.scale_and_record(reg, &d, &mut new_rs, n)
        } else {
            false
        };
        if !scaled_up {
            let scaled_down = self.reconcile_old(reg, &d, &mut old, &new_rs);
            if !scaled_down && deployment_complete(&d, &calculate_status(&old, Some(&new_rs), &d)) {
                self.cleanup(reg, &d, &old);
            }
        }
        self.sync_rollout_status(reg, s, Some(&new_rs), &old);
    }

    /// reconcileOldReplicaSets: unhealthy old replicas first, then as many
    /// as availability allows.
    fn reconcile_old(
        &mut self,
        reg: &Registry,
        d: &Value,
        old: &mut [Value],
        new_rs: &Value,
    ) -> bool {
        let old_count = spec_sum(old);
        if old_count == 0 {
            return false;
        }
        let all_count = old_count + replicas(new_rs);
        let min_available = replicas(d) - max_unavailable(d);
        let new_unavailable = replicas(new_rs) - i(new_rs, "/status/availableReplicas");
        let max_scaled_down = all_count - min_available - new_unavailable;
        if max_scaled_down <= 0 {
            return false;
        }
        old.sort_by_key(created);
        let mut cleaned = 0;
        for rs in old.iter_mut() {
            if cleaned >= max_scaled_down {
                break;
            }
            let available = i(rs, "/status/availableReplicas");
            if replicas(rs) == 0 || replicas(rs) == available {
                continue;
            }
            let down = (max_scaled_down - cleaned).min(replicas(rs) - available);
            let target = replicas(rs) - down;
            self.scale_and_record(reg, d, rs, target);
            cleaned += down;
        }
        // scaleDownOldReplicaSetsForRollingUpdate
        let mut all: Vec<Value> = old.to_vec();
        all.push(new_rs.clone());
        let available = sum(&all, |r| i(r, "/status/availableReplicas"));
        let mut scaled = 0;
        if available > min_available {
            let total = available - min_available;
            for rs in old.iter_mut() {
                if scaled >= total {
                    break;
                }
                if replicas(rs) == 0 {
                    continue;
                }
                let down = replicas(rs).min(total - scaled);
                let target = replicas(rs) - down;
                self.scale_and_record(reg, d, rs, target);
                scaled += down;
            }
        }
        cleaned + scaled > 0
    }

    fn rollout_recreate(&mut self, reg: &Registry, s: &mut Sync, rss: &mut Vec<Value>) {
        let (mut new_rs, mut old) = self.new_and_old(reg, s, rss, false);
        let d = s.d.clone();
        let mut scaled_down = false;
        for rs in old.iter_mut().filter(|r| replicas(r) > 0) {
            scaled_down |= self.scale_and_record(reg, &d, rs, 0);
        }
        if scaled_down || self.old_pods_running(new_rs.as_ref(), &old) {
            self.sync_rollout_status(reg, s, new_rs.as_ref(), &old);
            return;
        }
        if new_rs.is_none() {
            let (n, o) = self.new_and_old(reg, s, rss, true);
            new_rs = n;
            old = o;
        }
        let d = s.d.clone();
        if let Some(rs) = new_rs.as_mut() {
            self.scale_and_record(reg, &d, rs, replicas(&d));
        }
        if deployment_complete(&d, &calculate_status(&old, new_rs.as_ref(), &d)) {
            self.cleanup(reg, &d, &old);
        }
        self.sync_rollout_status(reg, s, new_rs.as_ref(), &old);
    }

    /// Whether pods of the old ReplicaSets are still there and unfinished.
    fn old_pods_running(&self, new_rs: Option<&Value>, old: &[Value]) -> bool {
        if sum(old, |r| i(r, "/status/replicas")) > 0 {
            return true;
        }
        let new_uid = new_rs.map(object::uid);
        old.iter()
            .map(object::uid)
            .filter(|u| Some(*u) != new_uid)
            .any(|u| self.running_pods.owned_keys(u).next().is_some())
    }

    /// cleanupDeployment: old ReplicaSets past revisionHistoryLimit, oldest
    /// revision first, only when scaled to nothing and observed.
    fn cleanup(&mut self, reg: &Registry, d: &Value, old: &[Value]) {
        let Some(limit) = d
            .pointer("/spec/revisionHistoryLimit")
            .and_then(Value::as_i64)
        else {
            return;
        };
        let mut alive: Vec<&Value> = old
            .iter()
            .filter(|r| object::deletion_timestamp(r).is_none())
            .collect();
        let diff = alive.len() as i64 - limit;
        if diff <= 0 {
            return;
        }
        alive.sort_by(|a, b| {
            revision(a)
                .cmp(&revision(b))
                .then_with(|| created(a).cmp(&created(b)))
        });
        for rs in alive.into_iter().take(diff as usize) {
            if i(rs, "/status/replicas") != 0
                || replicas(rs) != 0
                || i(rs, "/metadata/generation") > i(rs, "/status/observedGeneration")
            {
                continue;
            }
            super::delete(
                reg,
                COMPONENT,
                &REPLICASETS,
                object::namespace(rs),
                object::name(rs),
            );
        }
    }

    fn check_paused(&mut self, reg: &Registry, s: &mut Sync) {
        if s.d.pointer("/spec/progressDeadlineSeconds").is_none() {
            return;
        }
        let mut status = s.d.get("status").cloned().unwrap_or_else(|| json!({}));
        let reason = condition(&status, "Progressing")
            .and_then(|c| c.get("reason"))
            .and_then(Value::as_str)
            .map(String::from);
        if reason.as_deref() == Some("ProgressDeadlineExceeded") {
            return;
        }
        let paused = s.d.pointer("/spec/paused").and_then(Value::as_bool) == Some(true);
        let paused_cond = reason.as_deref() == Some("DeploymentPaused");
        if paused && !paused_cond {
            set_condition(
                &mut status,
                new_condition(
                    "Progressing",
                    "Unknown",
                    "DeploymentPaused",
                    "Deployment is paused",
                ),
            );
        } else if !paused && paused_cond {
            set_condition(
                &mut status,
                new_condition(
                    "Progressing",
                    "Unknown",
                    "DeploymentResumed",
                    "Deployment is resumed",
                ),
            );
        } else {
            return;
        }
        self.write_status(reg, s, status);
    }

    fn sync_status(&mut self, reg: &Registry, s: &mut Sync, new_rs: Option<&Value>, old: &[Value]) {
        let status = calculate_status(old, new_rs, &s.d);
        if s.d.get("status") != Some(&status) {
            self.write_status(reg, s, status);
        }
    }

    /// syncRolloutStatus: the status with the Progressing condition moved
    /// on as upstream judges progress, complete, or timed out.
    fn sync_rollout_status(
        &mut self,
        reg: &Registry,
        s: &mut Sync,
        new_rs: Option<&Value>,
        old: &[Value],
    ) {
        let d = &s.d;
        let mut status = calculate_status(old, new_rs, d);
        let deadline = d
            .pointer("/spec/progressDeadlineSeconds")
            .and_then(Value::as_i64);
        if deadline.is_none() {
            remove_condition(&mut status, "Progressing");
        }
        let current = condition(d.get("status").unwrap_or(&Value::Null), "Progressing").cloned();
        let complete_before = i(&status, "/replicas") == i(&status, "/updatedReplicas")
            && current
                .as_ref()
                .and_then(|c| c.get("reason"))
                .and_then(Value::as_str)
                == Some("NewReplicaSetAvailable");
        let rs_name = new_rs.map(|r| object::name(r).to_string());
        let name_msg = |fmt_rs: &str, fmt_d: &str| match &rs_name {
            Some(n) => format!("ReplicaSet \"{n}\" {fmt_rs}"),
            None => format!("Deployment \"{}\" {fmt_d}", object::name(d)),
        };
        if let Some(deadline) = deadline
            && !complete_before
        {
            let old_status = d.get("status").cloned().unwrap_or_else(|| json!({}));
            if deployment_complete(d, &status) {
                set_condition(
                    &mut status,
                    new_condition(
                        "Progressing",
                        "True",
                        "NewReplicaSetAvailable",
                        &name_msg(
                            "has successfully progressed.",
                            "has successfully progressed.",
                        ),
                    ),
                );
            } else if progressing(&old_status, &status) {
                let mut cond = new_condition(
                    "Progressing",
                    "True",
                    "ReplicaSetUpdated",
                    &name_msg("is progressing.", "is progressing."),
                );
                if let Some(cur) = &current {
                    if cur.get("status").and_then(Value::as_str) == Some("True") {
                        cond["lastTransitionTime"] = cur["lastTransitionTime"].clone();
                    }
                    remove_condition(&mut status, "Progressing");
                }
                set_condition(&mut status, cond);
            } else if let Some(cond) = condition(&status, "Progressing").cloned() {
                let reason = cond.get("reason").and_then(Value::as_str).unwrap_or("");
                let since = cond
                    .get("lastUpdateTime")
                    .and_then(Value::as_str)
                    .and_then(object::age_seconds);
                let timed_out = reason == "ProgressDeadlineExceeded"
                    || (reason != "NewReplicaSetAvailable"
                        && since.is_some_and(|age| age > deadline));
                if timed_out {
                    set_condition(
                        &mut status,
                        new_condition(
                            "Progressing",
                            "False",
                            "ProgressDeadlineExceeded",
                            &name_msg("has timed out progressing.", "has timed out progressing."),
                        ),
                    );
                } else if let Some(age) = since
                    && reason != "NewReplicaSetAvailable"
                {
                    // Look again when the deadline passes.
                    let key = (
                        object::namespace(d).to_string(),
                        object::name(d).to_string(),
                    );
                    self.queue.add_after_seconds(deadline - age, key);
                }
            }
        }
        if s.d.get("status") != Some(&status) {
            self.write_status(reg, s, status);
        }
    }

    /// Writes the status (and the revision annotation with it) through the
    /// status subresource, keeping `s.d` the stored state.
    fn write_status(&mut self, reg: &Registry, s: &mut Sync, status: Value) {
        let mut next = s.d.clone();
        next["status"] = status;
        let (ns, name) = (
            object::namespace(&s.d).to_string(),
            object::name(&s.d).to_string(),
        );
        match reg.update(
            &DEPLOYMENTS,
            &ns,
            &name,
            Some("status"),
            next,
            &write_opts(),
        ) {
            Ok((e, _)) => {
                if let Ok(v) = e.value() {
                    s.d = v;
                }
            }
            Err(e) => log_failure(COMPONENT, &name, &e),
        }
    }
}

fn owner_refs(v: &Value) -> Vec<Value> {
    v.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn set_replicas_annotations(rs: &mut Value, desired: i64, max: i64) -> bool {
    let mut changed = false;
    for (k, v) in [(DESIRED, desired), (MAX, max)] {
        let v = v.to_string();
        if annotation(rs, k) != Some(v.as_str()) {
            set_annotation(rs, k, &v);
            changed = true;
        }
    }
    changed
}

/// NewRSNewReplicas: how far the new ReplicaSet may grow now.
fn new_rs_new_replicas(d: &Value, all: &[Value], new_rs: &Value) -> i64 {
    if !is_rolling(d) {
        return replicas(d);
    }
    let current = spec_sum(all);
    let max_total = replicas(d) + max_surge(d);
    if current >= max_total {
        return replicas(new_rs);
    }
    let up = (max_total - current).min(replicas(d) - replicas(new_rs));
    replicas(new_rs) + up
}

/// GetReplicaSetProportion.
fn proportion(rs: &Value, d: &Value, to_add: i64, added: i64) -> i64 {
    if replicas(rs) == 0 || to_add == 0 || to_add == added {
        return 0;
    }
    let fraction = if replicas(d) == 0 {
        -replicas(rs)
    } else {
        let total = replicas(d) + max_surge(d);
        let annotated = annotation(rs, MAX)
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or_else(|| i(d, "/status/replicas"));
        if annotated == 0 {
            0
        } else {
            let size = (replicas(rs) * total) as f64 / annotated as f64;
            size.round() as i64 - replicas(rs)
        }
    };
    let allowed = to_add - added;
    if to_add > 0 {
        fraction.min(allowed)
    } else {
        fraction.max(allowed)
    }
}

/// calculateStatus: counts from the ReplicaSets and the Available
/// condition.
fn calculate_status(old: &[Value], new_rs: Option<&Value>, d: &Value) -> Value {
    let all: Vec<Value> = old.iter().chain(new_rs).cloned().collect();
    let available = sum(&all, |r| i(r, "/status/availableReplicas"));
    let total = spec_sum(&all);
    let mut status = d
        .get("status")
        .cloned()
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    let fields = [
        ("observedGeneration", i(d, "/metadata/generation")),
        ("replicas", sum(&all, |r| i(r, "/status/replicas"))),
        (
            "updatedReplicas",
            new_rs.map_or(0, |r| i(r, "/status/replicas")),
        ),
        (
            "readyReplicas",
            sum(&all, |r| i(r, "/status/readyReplicas")),
        ),
        ("availableReplicas", available),
        ("unavailableReplicas", (total - available).max(0)),
    ];
    for (k, v) in fields {
        if v != 0 {
            status[k] = json!(v);
        } else if let Some(m) = status.as_object_mut() {
            m.remove(k);
        }
    }
    if available >= replicas(d) - max_unavailable(d) {
        set_condition(
            &mut status,
            new_condition(
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.",
            ),
        );
    } else {
        set_condition(
            &mut status,
            new_condition(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
            ),
        );
    }
    status
}

fn deployment_complete(d: &Value, status: &Value) -> bool {
    let want = replicas(d);
    i(status, "/updatedReplicas") == want
        && i(status, "/replicas") == want
        && i(status, "/availableReplicas") == want
        && i(status, "/observedGeneration") >= i(d, "/metadata/generation")
}

fn progressing(old: &Value, new: &Value) -> bool {
    let old_old = i(old, "/replicas") - i(old, "/updatedReplicas");
    let new_old = i(new, "/replicas") - i(new, "/updatedReplicas");
    i(new, "/updatedReplicas") > i(old, "/updatedReplicas")
        || new_old < old_old
        || i(new, "/readyReplicas") > i(old, "/readyReplicas")
        || i(new, "/availableReplicas") > i(old, "/availableReplicas")
}

impl Controller for DeploymentController {
    fn name(&self) -> &'static str {
        "deployment"
    }

    fn watches(&self, res: &Resource) -> bool {
        matches!(res.kind, "Deployment" | "ReplicaSet" | "Pod")
    }

    fn resync(&mut self, reg: &Registry) {
        *self = Self {
            events: std::mem::take(&mut self.events),
            ..Self::default()
        };
        for d in super::list_all(reg, &DEPLOYMENTS, None) {
            let key = key_of(&d);
            self.index_deployment(key.clone(), &d);
            self.queue.add(key);
        }
        for rs in super::list_all(reg, &REPLICASETS, None) {
            let key = key_of(&rs);
            self.index_rs(key, &rs);
        }
        for pod in super::list_all(reg, &crate::resources::PODS, None) {
            let phase = pod
                .pointer("/status/phase")
                .and_then(Value::as_str)
                .unwrap_or("");
            if let Some(owner) = controller_of(&owner_refs(&pod))
                && !matches!(phase, "Succeeded" | "Failed")
            {
                let key = key_of(&pod);
                self.running_pods.insert(key, PodOf(owner.to_string()));
            }
        }
    }

    fn observe(&mut self, _reg: &Registry, ev: &Change) {
        let key = ev.key();
        match ev.resource.kind {
            "Deployment" => {
                if ev.kind == EventType::Deleted {
                    self.unindex_deployment(&key, object::uid(ev.object_meta()));
                } else {
                    self.index_deployment(key.clone(), ev.object());
                    self.queue.add(key);
                }
            }
            "ReplicaSet" => {
                let before = self.unindex_rs(&key);
                let meta = ev.object_meta();
                let labels: BTreeMap<String, String> = object::labels(meta)
                    .into_iter()
                    .flatten()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect();
                if let Some(before) = &before {
                    self.enqueue_for_rs(&key.0, before.owner.as_deref(), &labels);
                }
                if ev.kind != EventType::Deleted {
                    self.index_rs(key.clone(), meta);
                }
                let owner = controller_of(&owner_refs(meta)).map(String::from);
                self.enqueue_for_rs(&key.0, owner.as_deref(), &labels);
            }
            "Pod" => {
                let owner = controller_of(&owner_refs(ev.object_meta())).map(String::from);
                let running = ev.kind != EventType::Deleted
                    && !matches!(ev.field("status.phase"), "Succeeded" | "Failed");
                let before = self.running_pods.remove(&key).map(|p| p.0);
                if let (Some(o), true) = (&owner, running) {
                    self.running_pods.insert(key, PodOf(o.clone()));
                }
                // Only a pod leaving (or entering) the running set of a
                // ReplicaSet matters, to a Recreate rollout.
                let changed = before.as_deref() != owner.as_deref().filter(|_| running);
                if changed {
                    for rs_uid in [before, owner].into_iter().flatten() {
                        let deployment = self.rs_owner_by_uid.get(&rs_uid).cloned().flatten();
                        if let Some(d) = deployment.and_then(|o| self.by_uid.get(&o).cloned()) {
                            self.queue.add(d);
                        }
                    }
                }
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

    fn d(replicas: i64, surge: Value, unavailable: Value) -> Value {
        json!({"spec": {"replicas": replicas, "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}}}})
    }

    #[test]
    fn fenceposts_round_like_upstream() {
        assert_eq!(fenceposts(&d(3, json!("25%"), json!("25%"))), (1, 0));
        assert_eq!(fenceposts(&d(10, json!("25%"), json!("25%"))), (3, 2));
        assert_eq!(fenceposts(&d(3, json!(0), json!(0))), (0, 1));
        assert_eq!(max_unavailable(&d(3, json!("25%"), json!("25%"))), 0);
    }

    #[test]
    fn hash_is_stable_safe_and_template_bound() {
        let t = json!({"metadata": {"labels": {"app": "nginx"}}, "spec": {"containers": [{"name": "nginx", "image": "nginx:latest"}]}});
        let h = template_hash(&t, None);
        assert_eq!(h, template_hash(&t, None));
        assert!(
            h.bytes()
                .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b)),
            "{h}"
        );
        assert!(!h.is_empty() && h.len() <= 10);
        let mut other = t.clone();
        other["spec"]["containers"][0]["image"] = json!("nginx:1.25");
        assert_ne!(h, template_hash(&other, None));
        assert_ne!(h, template_hash(&t, Some(1)));
        let mut hashed = t.clone();
        hashed["metadata"]["labels"][HASH_LABEL] = json!(h);
        assert!(equal_ignore_hash(Some(&t), Some(&hashed)));
        assert!(!equal_ignore_hash(Some(&other), Some(&hashed)));
    }

    #[test]
    fn new_replicas_respect_surge() {
        let dep = d(3, json!("25%"), json!("25%"));
        let old = json!({"spec": {"replicas": 3}});
        let new = json!({"spec": {"replicas": 0}});
        assert_eq!(
            new_rs_new_replicas(&dep, &[old.clone(), new.clone()], &new),
            1
        );
        let new1 = json!({"spec": {"replicas": 1}});
        assert_eq!(new_rs_new_replicas(&dep, &[old, new1.clone()], &new1), 1);
    }
}
