//! The Events controllers record (kube's event recorder and correlator):
//! one Event object per involved object and reason, or per distinct
//! message, whose `count` and `lastTimestamp` go up when it recurs; the
//! [`Recorder`] that combines similar events past the first few; and the
//! words upstream's pod control uses for the pods a workload controller
//! creates and deletes.

use std::collections::HashMap;

use serde_json::Value;

use super::{log_failure, write_opts};
use crate::error::ApiError;
use crate::object;
use crate::registry::Registry;
use crate::resources::EVENTS;

/// Similar events recorded on their own before they are combined.
const SIMILAR_EVENTS: u32 = 10;

/// Records a Warning Event about `obj` from controller `component`, as
/// kube's event recorder does: one Event per object and reason, whose
/// `count` and `lastTimestamp` go up when it recurs (so a retrying
/// controller writes one object, not one per attempt), shown by
/// `kubectl get events` and `kubectl describe`.
pub(crate) fn warn_event(
    reg: &Registry,
    component: &str,
    obj: &Value,
    reason: &str,
    message: &str,
) {
    record_event(reg, component, obj, "Warning", reason, message);
}

/// Records an Event of `event_type` (`Normal` or `Warning`) the same way
/// as [`warn_event`].
pub(crate) fn record_event(
    reg: &Registry,
    component: &str,
    obj: &Value,
    event_type: &str,
    reason: &str,
    message: &str,
) {
    let name = format!(
        "{}.{}",
        crate::object::name(obj),
        reason.to_ascii_lowercase()
    );
    write_event(reg, component, obj, event_type, reason, message, &name);
}

/// Records an Event as kube's event correlator keeps them: one per object
/// and distinct `key` (the message, for events such as "Scaled up replica
/// set web-5d4 from 0 to 3" that differ each time), whose `count` goes up
/// when the same one recurs.
pub(crate) fn record_keyed_event(
    reg: &Registry,
    component: &str,
    obj: &Value,
    event_type: &str,
    reason: &str,
    message: &str,
    key: &str,
) {
    // FNV-1a over the object's uid, the reason and the key: a stable name
    // per distinct event that a recreated object of the same name never
    // shares.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in crate::object::uid(obj)
        .bytes()
        .chain([0])
        .chain(reason.bytes())
        .chain([0])
        .chain(key.bytes())
    {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let name = format!("{}.{hash:016x}", crate::object::name(obj));
    write_event(reg, component, obj, event_type, reason, message, &name);
}

fn write_event(
    reg: &Registry,
    component: &str,
    obj: &Value,
    event_type: &str,
    reason: &str,
    message: &str,
    name: &str,
) {
    // Events about cluster-scoped objects (Nodes) live in `default`.
    let ns = match object::namespace(obj) {
        "" => "default",
        ns => ns,
    };
    let name = name.to_string();
    let now = object::now();
    let res = match reg.store.get(&EVENTS, ns, &name) {
        Ok(Some(cur)) => {
            let mut ev = (*cur).clone();
            let count = ev.get("count").and_then(Value::as_i64).unwrap_or(1);
            ev["count"] = serde_json::json!(count.saturating_add(1));
            ev["lastTimestamp"] = serde_json::json!(now);
            ev["message"] = serde_json::json!(message);
            reg.update(&EVENTS, ns, &name, None, ev, &write_opts())
                .map(|_| ())
        }
        _ => {
            let ev = serde_json::json!({
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"name": name, "namespace": ns},
                "involvedObject": {
                    "apiVersion": obj.get("apiVersion").cloned().unwrap_or(Value::Null),
                    "kind": obj.get("kind").cloned().unwrap_or(Value::Null),
                    "namespace": ns,
                    "name": object::name(obj),
                    "uid": obj.pointer("/metadata/uid").cloned().unwrap_or(Value::Null),
                },
                "reason": reason,
                "message": message,
                "type": event_type,
                "count": 1,
                "firstTimestamp": now,
                "lastTimestamp": now,
                "source": {"component": component},
                "reportingComponent": component,
            });
            reg.create(&EVENTS, ns, ev, &write_opts()).map(|_| ())
        }
    };
    if let Err(e) = res {
        log_failure(component, &name, &e);
    }
}

/// Events the controllers record, with upstream's correlation: the first
/// few of a kind each on their own, then one combined Event per object and
/// reason whose count goes up.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    seen: HashMap<(String, String), u32>,
}

impl Recorder {
    pub fn record(
        &mut self,
        reg: &Registry,
        component: &str,
        obj: &Value,
        event_type: &str,
        reason: &str,
        message: &str,
    ) {
        let n = self
            .seen
            .entry((object::uid(obj).to_string(), reason.to_string()))
            .or_default();
        *n = n.saturating_add(1);
        if *n <= SIMILAR_EVENTS {
            record_keyed_event(reg, component, obj, event_type, reason, message, message);
        } else {
            let combined = format!("(combined from similar events): {message}");
            record_keyed_event(reg, component, obj, event_type, reason, &combined, "");
        }
    }

    /// Records how creating or deleting a pod of `owner` went: the pod's
    /// name, or the error; worded as upstream's RealPodControl words it.
    pub fn pod_event(
        &mut self,
        reg: &Registry,
        component: &str,
        owner: &Value,
        action: PodAction,
        outcome: Result<&str, &ApiError>,
    ) {
        let message = action.pod_control_message(outcome);
        let (event_type, reason) = action.event(outcome.is_ok());
        self.record(reg, component, owner, event_type, reason, &message);
    }

    /// Records how creating or deleting pod `pod` of StatefulSet `set`
    /// went, worded as upstream's StatefulPodControl words it.
    pub fn stateful_pod_event(
        &mut self,
        reg: &Registry,
        component: &str,
        set: &Value,
        action: PodAction,
        pod: &str,
        outcome: Result<(), &ApiError>,
    ) {
        let message = action.stateful_message(pod, object::name(set), outcome);
        let (event_type, reason) = action.event(outcome.is_ok());
        self.record(reg, component, set, event_type, reason, &message);
    }

    /// Forgets an object that is gone.
    pub fn forget(&mut self, uid: &str) {
        self.seen.retain(|(u, _), _| u != uid);
    }
}

/// What a workload controller did to one of its pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PodAction {
    Create,
    Delete,
}

impl PodAction {
    /// The event type and upstream's reason for the action's outcome.
    fn event(self, ok: bool) -> (&'static str, &'static str) {
        match (self, ok) {
            (Self::Create, true) => ("Normal", "SuccessfulCreate"),
            (Self::Create, false) => ("Warning", "FailedCreate"),
            (Self::Delete, true) => ("Normal", "SuccessfulDelete"),
            (Self::Delete, false) => ("Warning", "FailedDelete"),
        }
    }

    /// The message of upstream's RealPodControl (ReplicaSets, DaemonSets):
    /// `Created pod: <pod>`, `Error creating: <error>`, and so for
    /// deleting.
    fn pod_control_message(self, outcome: Result<&str, &ApiError>) -> String {
        match (self, outcome) {
            (Self::Create, Ok(pod)) => format!("Created pod: {pod}"),
            (Self::Create, Err(e)) => format!("Error creating: {}", e.message),
            (Self::Delete, Ok(pod)) => format!("Deleted pod: {pod}"),
            (Self::Delete, Err(e)) => format!("Error deleting: {}", e.message),
        }
    }

    /// The message of upstream's StatefulPodControl:
    /// `create Pod web-0 in StatefulSet web successful`, or
    /// `... failed error: <error>`.
    fn stateful_message(self, pod: &str, set: &str, outcome: Result<(), &ApiError>) -> String {
        let verb = match self {
            Self::Create => "create",
            Self::Delete => "delete",
        };
        match outcome {
            Ok(()) => format!("{verb} Pod {pod} in StatefulSet {set} successful"),
            Err(e) => format!(
                "{verb} Pod {pod} in StatefulSet {set} failed error: {}",
                e.message
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_events_are_worded_as_upstream_words_them() {
        use PodAction::{Create, Delete};
        let err = ApiError::bad_request("quota exceeded");
        let cases = [
            (
                Create,
                Ok("web-x1"),
                "Normal",
                "SuccessfulCreate",
                "Created pod: web-x1",
            ),
            (
                Create,
                Err(&err),
                "Warning",
                "FailedCreate",
                "Error creating: quota exceeded",
            ),
            (
                Delete,
                Ok("web-x1"),
                "Normal",
                "SuccessfulDelete",
                "Deleted pod: web-x1",
            ),
            (
                Delete,
                Err(&err),
                "Warning",
                "FailedDelete",
                "Error deleting: quota exceeded",
            ),
        ];
        for (action, outcome, event_type, reason, message) in cases {
            assert_eq!(action.event(outcome.is_ok()), (event_type, reason));
            assert_eq!(action.pod_control_message(outcome), message);
        }
        assert_eq!(
            Create.stateful_message("web-0", "web", Ok(())),
            "create Pod web-0 in StatefulSet web successful"
        );
        assert_eq!(
            Delete.stateful_message("web-2", "web", Err(&err)),
            "delete Pod web-2 in StatefulSet web failed error: quota exceeded"
        );
    }
}
