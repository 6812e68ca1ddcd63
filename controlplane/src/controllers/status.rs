//! How the workload controllers (ReplicaSet, DaemonSet, StatefulSet) count
//! and write the status of what they own: available pods (Ready for
//! `minReadySeconds`, the owner synced again when the next one will be),
//! the fields carried over from the stored status, zero counts omitted as
//! upstream's `omitempty` omits them, and the write through the `status`
//! subresource only when something changed.

use serde_json::{Value, json};

use super::owned::Key;
use super::queue::WorkQueue;
use super::replicaset::PodInfo;
use super::{log_failure, write_opts};
use crate::object;
use crate::registry::Registry;
use crate::resources::Resource;

/// Now, in seconds since the epoch (the unit of the timestamps kept of
/// pods).
pub(crate) fn epoch_now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// The ready pods of an owner and the available ones among them, and when
/// the next ready pod becomes available.
#[derive(Debug)]
pub(crate) struct Availability {
    min_ready: i64,
    now: i64,
    pub ready: i64,
    pub available: i64,
    next: Option<i64>,
}

impl Availability {
    /// Counting for `owner`, by its `spec.minReadySeconds`, as of now.
    pub fn of(owner: &Value) -> Self {
        Self {
            min_ready: owner
                .pointer("/spec/minReadySeconds")
                .and_then(Value::as_i64)
                .unwrap_or(0),
            now: epoch_now(),
            ready: 0,
            available: 0,
            next: None,
        }
    }

    /// Counts a pod that is ready by the owner's measure.
    pub fn count_ready(&mut self, p: &PodInfo) {
        self.ready += 1;
        if p.available(self.min_ready, self.now) {
            self.available += 1;
        } else if let Some(t) = p.ready_since {
            let at = t + self.min_ready;
            self.next = Some(self.next.map_or(at, |n| n.min(at)));
        }
    }

    /// Queues `key` for when the next counted pod becomes available, so
    /// the status follows without another event.
    pub fn requeue(&self, queue: &mut WorkQueue<Key>, key: Key) {
        if let Some(at) = self.next {
            queue.add_after_seconds(at - self.now, key);
        }
    }
}

/// Removes the `fields` of `status` that are 0.
pub(crate) fn omit_zero(status: &mut Value, fields: &[&str]) {
    if let Some(m) = status.as_object_mut() {
        for f in fields {
            if m.get(*f) == Some(&json!(0)) {
                m.remove(*f);
            }
        }
    }
}

/// What DaemonSets and StatefulSets carry in status besides their counts:
/// the generation observed, the collision count (the one this sync used,
/// else the stored one) and the stored conditions, which no controller
/// sets.
pub(crate) fn carry_over(status: &mut Value, owner: &Value, collisions: Option<i64>) {
    if let Some(g) = owner.pointer("/metadata/generation") {
        status["observedGeneration"] = g.clone();
    }
    if let Some(c) = collisions.or_else(|| {
        owner
            .pointer("/status/collisionCount")
            .and_then(Value::as_i64)
    }) {
        status["collisionCount"] = json!(c);
    }
    if let Some(conds) = owner.pointer("/status/conditions") {
        status["conditions"] = conds.clone();
    }
}

/// Writes `status` through the status subresource of `owner` (an object
/// of `res`) unless it is what `owner` already has. A failed write is
/// logged; the owner's next event syncs it again.
pub(crate) fn write(
    reg: &Registry,
    component: &str,
    res: &'static Resource,
    owner: &Value,
    status: Value,
) {
    if owner.get("status") == Some(&status) {
        return;
    }
    let mut next = owner.clone();
    next["status"] = status;
    if let Err(e) = reg.update(
        res,
        object::namespace(owner),
        object::name(owner),
        Some("status"),
        next,
        &write_opts(),
    ) {
        log_failure(component, object::name(owner), &e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn availability_counts_after_min_ready_and_requeues_for_the_next() {
        let mut a = Availability::of(&json!({"spec": {"minReadySeconds": 30}}));
        let now = a.now;
        let ready_since = |t: i64| PodInfo {
            ready: true,
            ready_since: Some(t),
            ..PodInfo::default()
        };
        a.count_ready(&ready_since(now - 60));
        a.count_ready(&ready_since(now - 10));
        a.count_ready(&ready_since(now - 20));
        assert_eq!((a.ready, a.available), (3, 1));
        assert_eq!(a.next, Some(now + 10), "the soonest to become available");
        let mut q = WorkQueue::default();
        a.requeue(&mut q, ("ns".to_string(), "web".to_string()));
        assert!(q.take_due().is_empty() && q.next_wakeup().is_some());
    }

    #[test]
    fn zero_counts_are_omitted_and_stored_fields_carried_over() {
        let mut status = json!({"a": 0, "b": 2, "c": 0});
        omit_zero(&mut status, &["a", "b"]);
        assert_eq!(status, json!({"b": 2, "c": 0}));
        let owner = json!({"metadata": {"generation": 4},
            "status": {"collisionCount": 1, "conditions": [{"type": "X"}]}});
        carry_over(&mut status, &owner, None);
        assert_eq!(status["observedGeneration"], json!(4));
        assert_eq!(status["collisionCount"], json!(1));
        assert_eq!(status["conditions"], json!([{"type": "X"}]));
        carry_over(&mut status, &owner, Some(2));
        assert_eq!(status["collisionCount"], json!(2), "this sync's count wins");
    }
}
