//! Namespace deletion: removes everything in a terminating namespace, then
//! clears its `kubernetes` finalizer so the namespace itself goes.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::{Change, Controller, delete, list_all, log_failure, write_opts};
use crate::object;
use crate::registry::Registry;
use crate::resources::{NAMESPACES, RESOURCES, Resource};
use crate::store::EventType;

#[derive(Debug, Default)]
pub struct NamespaceController {
    /// Terminating namespaces still to empty.
    pending: BTreeSet<String>,
}

impl NamespaceController {
    fn check(&mut self, obj: &Value) {
        if object::deletion_timestamp(obj).is_some() {
            self.pending.insert(object::name(obj).to_string());
        }
    }

    /// Deletes what is left in `ns`; true when nothing is left.
    fn empty(&self, reg: &Registry, ns: &str) -> bool {
        let mut empty = true;
        for res in RESOURCES.iter().filter(|r| r.namespaced) {
            for obj in list_all(reg, res, Some(ns)) {
                empty = false;
                if object::deletion_timestamp(&obj).is_none() {
                    delete(reg, self.name(), res, ns, object::name(&obj));
                }
            }
        }
        empty
    }
}

impl Controller for NamespaceController {
    fn name(&self) -> &'static str {
        "namespace"
    }

    fn resync(&mut self, reg: &Registry) {
        for ns in list_all(reg, &NAMESPACES, None) {
            self.check(&ns);
        }
    }

    fn watches(&self, res: &Resource) -> bool {
        res.kind == "Namespace"
    }

    fn observe(&mut self, _reg: &Registry, ev: &Change) {
        // Pending namespaces are looked at again on every reconcile, so only
        // the namespaces' own events matter here.
        if ev.kind == EventType::Deleted {
            self.pending.remove(object::name(ev.object_meta()));
        } else {
            self.check(ev.object_meta());
        }
    }

    /// Content deletions are not fed to this controller (it would wake on
    /// every namespaced write); while a namespace is emptying, it looks again
    /// a few times a second instead.
    fn next_wakeup(&self) -> Option<std::time::Instant> {
        (!self.pending.is_empty())
            .then(|| std::time::Instant::now() + std::time::Duration::from_millis(200))
    }

    fn reconcile(&mut self, reg: &Registry) {
        let pending: Vec<String> = self.pending.iter().cloned().collect();
        for ns in pending {
            if !self.empty(reg, &ns) {
                continue;
            }
            let Ok(Some(cur)) = reg.store.get(&NAMESPACES, "", &ns) else {
                self.pending.remove(&ns);
                continue;
            };
            let mut body = (*cur).clone();
            body["spec"] = json!({ "finalizers": [] });
            match reg.update(&NAMESPACES, "", &ns, Some("finalize"), body, &write_opts()) {
                Ok(_) => {
                    self.pending.remove(&ns);
                }
                Err(e) if e.code == 404 => {
                    self.pending.remove(&ns);
                }
                Err(e) => log_failure(self.name(), &ns, &e),
            }
        }
    }
}
