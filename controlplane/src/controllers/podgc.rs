//! Finishes graceful pod deletion: a pod whose grace period has run out is
//! removed, as the kubelet would once its containers stopped.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Change, Controller, list_all, log_failure};
use crate::object;
use crate::registry::{DeleteOptions, Registry};
use crate::resources::{PODS, Resource};
use crate::store::EventType;

#[derive(Debug, Default)]
pub struct PodGc {
    /// (namespace, name) -> when its grace period ends.
    deadlines: BTreeMap<(String, String), Instant>,
}

impl PodGc {
    fn track(&mut self, pod: &Value) {
        let key = (
            object::namespace(pod).to_string(),
            object::name(pod).to_string(),
        );
        match object::deletion_timestamp(pod) {
            Some(ts) if object::finalizers(pod).is_empty() => {
                let left = object::age_seconds(ts).map_or(0, |age| (-age).max(0));
                let left = Duration::from_secs(u64::try_from(left).unwrap_or(0));
                self.deadlines.insert(key, Instant::now() + left);
            }
            _ => {
                self.deadlines.remove(&key);
            }
        }
    }
}

impl Controller for PodGc {
    fn name(&self) -> &'static str {
        "podgc"
    }

    fn watches(&self, res: &Resource) -> bool {
        res.kind == "Pod"
    }

    fn resync(&mut self, reg: &Registry) {
        self.deadlines.clear();
        for pod in list_all(reg, &PODS, None) {
            self.track(&pod);
        }
    }

    fn observe(&mut self, _reg: &Registry, ev: &Change) {
        if ev.kind == EventType::Deleted {
            self.deadlines.remove(&ev.key());
        } else {
            self.track(ev.object_meta());
        }
    }

    fn reconcile(&mut self, reg: &Registry) {
        let now = Instant::now();
        let due: Vec<_> = self
            .deadlines
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for (ns, name) in due {
            self.deadlines.remove(&(ns.clone(), name.clone()));
            let force = DeleteOptions {
                grace_period_seconds: Some(0),
                ..Default::default()
            };
            if let Err(e) = reg.delete(&PODS, &ns, &name, &force)
                && e.code != 404
            {
                log_failure(self.name(), &name, &e);
            }
        }
    }

    fn next_wakeup(&self) -> Option<Instant> {
        self.deadlines.values().min().copied()
    }
}
