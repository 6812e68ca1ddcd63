//! What the DaemonSet and StatefulSet controllers keep alike, fed by the
//! same watch events: their objects by key and by uid, the pods whose
//! controller is one of them (client-go's informer index), the queue of
//! those to sync, and those whose orphans to look for (new, or a changed
//! spec). A sync starts here: the owner as stored, its pods claimed
//! ([`super::claim`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::Value;

use super::claim::{claim, controlled_by_kind};
use super::history::HASH_LABEL;
use super::owned::{ByController, Controlled, Key};
use super::queue::WorkQueue;
use super::replicaset::PodInfo;
use super::{Change, key_of, list_all};
use crate::object;
use crate::registry::Registry;
use crate::resources::{PODS, Resource};
use crate::selector::LabelSelector;
use crate::store::EventType;

/// What a controller keeps of a pod one of its owners controls.
pub(crate) trait OwnedPod: Clone {
    /// The resource of the owners (DaemonSets, StatefulSets).
    const OWNER: &'static Resource;
    fn of(pod: &Value) -> Self;
    fn info(&self) -> &PodInfo;

    /// Its `controller-revision-hash` label: the revision it was made
    /// from.
    fn revision(&self) -> &str {
        self.info()
            .labels
            .get(HASH_LABEL)
            .map_or("", String::as_str)
    }
}

impl<P: OwnedPod> Controlled for P {
    fn controller(&self) -> Option<&str> {
        self.info().controller()
    }
}

/// Owners of one kind and the pods they control.
#[derive(Debug)]
pub(crate) struct PodOwners<P> {
    /// Owner uids by key, and keys by uid.
    uids: HashMap<Key, String>,
    by_uid: HashMap<String, Key>,
    /// Pods whose controller is an owner of this kind.
    pub pods: ByController<P>,
    /// Owners to sync, now or later.
    pub queue: WorkQueue<Key>,
    /// Owners whose orphans to adopt at their next sync.
    adopt: BTreeSet<Key>,
}

impl<P> Default for PodOwners<P> {
    fn default() -> Self {
        Self {
            uids: HashMap::new(),
            by_uid: HashMap::new(),
            pods: ByController::default(),
            queue: WorkQueue::default(),
            adopt: BTreeSet::new(),
        }
    }
}

impl<P: OwnedPod> PodOwners<P> {
    /// Rebuilds from a full read, every owner queued to sync and adopt.
    pub fn resync(&mut self, reg: &Registry) {
        *self = Self::default();
        for owner in list_all(reg, P::OWNER, None) {
            let key = key_of(&owner);
            let uid = object::uid(&owner).to_string();
            self.uids.insert(key.clone(), uid.clone());
            self.by_uid.insert(uid, key.clone());
            self.adopt.insert(key.clone());
            self.queue.add(key);
        }
        for pod in list_all(reg, &PODS, None) {
            if controlled_by_kind(&pod, P::OWNER.kind) {
                self.pods.insert(key_of(&pod), P::of(&pod));
            }
        }
    }

    /// Takes note of a pod's change: kept while an owner of this kind
    /// controls it; its owner, before and after, queued.
    pub fn observe_pod(&mut self, ev: &Change) {
        let key = ev.key();
        if ev.kind == EventType::Deleted {
            if let Some(old) = self.pods.remove(&key) {
                self.enqueue_owner(&old);
            }
            return;
        }
        let rv = object::resource_version(ev.object_meta());
        // Our own write may already be kept at a later version.
        if self.pods.get(&key).is_some_and(|p| p.info().rv > rv) {
            return;
        }
        if let Some(old) = self.pods.get(&key).cloned() {
            self.enqueue_owner(&old);
        }
        if controlled_by_kind(ev.object_meta(), P::OWNER.kind) {
            let pod = P::of(ev.object());
            self.enqueue_owner(&pod);
            self.pods.insert(key, pod);
        } else {
            self.pods.remove(&key);
        }
    }

    /// Takes note of an owner's change, queuing it (and its orphans when
    /// it is new or its spec changed). Returns the uid of an owner it
    /// forgot (deleted, or replaced by a new object of the same name), for
    /// the caller to drop what else it keeps of it.
    pub fn observe_owner(&mut self, ev: &Change) -> Option<String> {
        let key = ev.key();
        if ev.kind == EventType::Deleted {
            return self.forget(&key);
        }
        let obj = ev.object_meta();
        let uid = object::uid(obj).to_string();
        let mut forgotten = None;
        if self.uids.get(&key) != Some(&uid) {
            forgotten = self.forget(&key);
            self.uids.insert(key.clone(), uid.clone());
            self.by_uid.insert(uid, key.clone());
        }
        let generation = |m: &Value| m.pointer("/metadata/generation").cloned();
        if ev.previous_meta().map(generation) != Some(generation(obj)) {
            self.adopt.insert(key.clone());
        }
        self.queue.add(key);
        forgotten
    }

    /// Queues every owner.
    pub fn enqueue_all(&mut self) {
        self.queue.extend(self.uids.keys().cloned());
    }

    /// Starts the sync of `key`: the owner as stored (None when it is
    /// gone, being deleted, or selects nothing), after releasing the pods
    /// its selector no longer matches and, when due, adopting the orphans
    /// it does.
    pub fn claim(&mut self, reg: &Registry, component: &str, key: &Key) -> Option<Arc<Value>> {
        let adopt = self.adopt.remove(key);
        let Ok(Some(owner)) = reg.store.get(P::OWNER, &key.0, &key.1) else {
            return None;
        };
        if object::deletion_timestamp(&owner).is_some() {
            return None;
        }
        let sel = owner
            .pointer("/spec/selector")
            .and_then(|s| LabelSelector::from_api(s).ok())
            .filter(|s| !s.is_empty())?;
        let owned = self
            .pods
            .owned(object::uid(&owner))
            .map(|(k, p)| (k, p.info()));
        let written = claim(reg, component, &owner, P::OWNER.kind, &sel, owned, adopt);
        for (k, pod) in written {
            if controlled_by_kind(&pod, P::OWNER.kind) {
                self.pods.insert(k, P::of(&pod));
            } else {
                self.pods.remove(&k);
            }
        }
        Some(owner)
    }

    fn enqueue_owner(&mut self, pod: &P) {
        if let Some(key) = pod.controller().and_then(|u| self.by_uid.get(u)) {
            self.queue.add(key.clone());
        }
    }

    fn forget(&mut self, key: &Key) -> Option<String> {
        let uid = self.uids.remove(key)?;
        self.by_uid.remove(&uid);
        Some(uid)
    }
}
