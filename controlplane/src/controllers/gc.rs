//! The garbage collector: deletes objects whose owners (ownerReferences) are
//! all gone, and carries out foreground and orphan deletion of owners.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde_json::{Value, json};

use super::{Change, Controller, delete, list_all, log_failure, write_opts};
use crate::object;
use crate::patch::PatchType;
use crate::registry::Registry;
use crate::resources::{RESOURCES, Resource};
use crate::store::EventType;

/// (kind, namespace, name) of a dependent.
type Dependent = (&'static Resource, String, String);

#[derive(Debug, Default)]
pub struct GarbageCollector {
    live: HashSet<String>,
    dependents: HashMap<String, BTreeSet<(usize, String, String)>>,
    /// Owners gone since the last reconcile.
    gone: BTreeSet<String>,
    /// Owners being deleted in the foreground or orphaning.
    finalizing: BTreeSet<(usize, String, String)>,
}

/// UIDs of the owners this collector can judge: owners of a kind the
/// server does not serve (a Deployment, a custom resource) are never taken
/// for gone.
fn owner_uids(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(|refs| {
            refs.iter()
                .filter(|r| {
                    let api_version = r.get("apiVersion").and_then(Value::as_str).unwrap_or("");
                    let kind = r.get("kind").and_then(Value::as_str).unwrap_or("");
                    RESOURCES
                        .iter()
                        .any(|res| res.kind == kind && res.api_version() == api_version)
                })
                .filter_map(|r| r.get("uid")?.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn index_of(res: &Resource) -> usize {
    RESOURCES.iter().position(|r| r == res).unwrap_or(0)
}

impl GarbageCollector {
    fn track(&mut self, res: &Resource, obj: &Value) {
        let key = (
            index_of(res),
            object::namespace(obj).to_string(),
            object::name(obj).to_string(),
        );
        self.live.insert(object::uid(obj).to_string());
        for owner in owner_uids(obj) {
            self.dependents
                .entry(owner)
                .or_default()
                .insert(key.clone());
        }
        let fins = object::finalizers(obj);
        if object::deletion_timestamp(obj).is_some()
            && fins
                .iter()
                .any(|f| f == "foregroundDeletion" || f == "orphan")
        {
            self.finalizing.insert(key);
        }
    }

    fn untrack_refs(&mut self, res: &Resource, obj: &Value) {
        let key = (
            index_of(res),
            object::namespace(obj).to_string(),
            object::name(obj).to_string(),
        );
        for owner in owner_uids(obj) {
            if let Some(set) = self.dependents.get_mut(&owner) {
                set.remove(&key);
                if set.is_empty() {
                    self.dependents.remove(&owner);
                }
            }
        }
    }

    fn dependents_of(&self, uid: &str) -> Vec<Dependent> {
        self.dependents
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|(i, ns, name)| Some((RESOURCES.get(*i)?, ns.clone(), name.clone())))
            .collect()
    }

    /// Foreground: delete the dependents, then drop the owner's finalizer.
    /// Orphan: strip the owner reference from each dependent, then drop it.
    fn finalize(&mut self, reg: &Registry, res: &'static Resource, ns: &str, name: &str) -> bool {
        let Ok(Some(owner)) = reg.store.get(res, ns, name) else {
            return true;
        };
        let uid = object::uid(&owner).to_string();
        let fins = object::finalizers(&owner);
        let dependents = self.dependents_of(&uid);
        let (finalizer, done) = if fins.iter().any(|f| f == "orphan") {
            for (dres, dns, dname) in &dependents {
                let Ok(Some(d)) = reg.store.get(dres, dns, dname) else {
                    continue;
                };
                let refs: Vec<Value> = d
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter(|r| r.get("uid").and_then(Value::as_str) != Some(&uid))
                    .cloned()
                    .collect();
                let patch = json!({"metadata": {"ownerReferences": refs}});
                if let Err(e) = reg.patch(
                    dres,
                    dns,
                    dname,
                    None,
                    (PatchType::Merge, patch.to_string().as_bytes()),
                    &write_opts(),
                ) {
                    log_failure(self.name(), dname, &e);
                }
            }
            ("orphan", true)
        } else {
            for (dres, dns, dname) in &dependents {
                delete(reg, self.name(), dres, dns, dname);
            }
            ("foregroundDeletion", dependents.is_empty())
        };
        if !done {
            return false;
        }
        let patch = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": [finalizer]}});
        match reg.patch(
            res,
            ns,
            name,
            None,
            (PatchType::Strategic, patch.to_string().as_bytes()),
            &write_opts(),
        ) {
            Ok(_) => true,
            Err(e) if e.code == 404 => true,
            Err(e) => {
                log_failure(self.name(), name, &e);
                false
            }
        }
    }
}

impl Controller for GarbageCollector {
    fn name(&self) -> &'static str {
        "garbagecollector"
    }

    fn watches(&self, _res: &Resource) -> bool {
        true
    }

    fn resync(&mut self, reg: &Registry) {
        *self = Self::default();
        for res in RESOURCES {
            for obj in list_all(reg, res, None) {
                self.track(res, &obj);
            }
        }
        // Owners that vanished while we were not looking.
        self.gone = self
            .dependents
            .keys()
            .filter(|u| !self.live.contains(*u))
            .cloned()
            .collect();
    }

    fn observe(&mut self, _reg: &Registry, ev: &Change) {
        if let Some(prev) = ev.previous_meta() {
            self.untrack_refs(ev.resource, prev);
        }
        match ev.kind {
            EventType::Deleted => {
                let uid = object::uid(ev.object_meta()).to_string();
                self.live.remove(&uid);
                self.gone.insert(uid);
                self.untrack_refs(ev.resource, ev.object_meta());
            }
            _ => {
                self.track(ev.resource, ev.object_meta());
                // A dependent pointing at an owner that is already gone.
                if owner_uids(ev.object_meta())
                    .iter()
                    .any(|u| !self.live.contains(u))
                {
                    self.gone.extend(
                        owner_uids(ev.object_meta())
                            .into_iter()
                            .filter(|u| !self.live.contains(u)),
                    );
                }
            }
        }
    }

    fn reconcile(&mut self, reg: &Registry) {
        for uid in std::mem::take(&mut self.gone) {
            for (res, ns, name) in self.dependents_of(&uid) {
                let Ok(Some(obj)) = reg.store.get(res, &ns, &name) else {
                    continue;
                };
                let refs = obj
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
                let judged = owner_uids(&obj);
                // Every owner must be one we can see, and gone.
                if judged.len() == refs
                    && judged.iter().all(|u| !self.live.contains(u))
                    && object::deletion_timestamp(&obj).is_none()
                {
                    delete(reg, self.name(), res, &ns, &name);
                }
            }
        }
        for (i, ns, name) in std::mem::take(&mut self.finalizing) {
            let Some(res) = RESOURCES.get(i) else {
                continue;
            };
            if !self.finalize(reg, res, &ns, &name) {
                self.finalizing.insert((i, ns, name));
            }
        }
    }
}
