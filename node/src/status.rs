//! The pod's phase and conditions from its containers, as the kubelet
//! computes them (`getPhase`, `GeneratePodReadyCondition`, ...).

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// What the phase and conditions need to know of one container.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub name: String,
    pub running: bool,
    /// Terminated (and not about to restart): its exit code.
    pub terminated: Option<i32>,
    /// Waiting to run again after a termination (back-off).
    pub restarting: bool,
    pub ready: bool,
}

/// `getPhase` for the main containers. `init_done`: every init container
/// succeeded; `init_failed`: one failed for good.
pub fn phase(
    restart_policy: &str,
    init_done: bool,
    init_failed: bool,
    containers: &[Summary],
) -> &'static str {
    if init_failed {
        return "Failed";
    }
    if !init_done {
        return "Pending";
    }
    let mut running = 0;
    let mut waiting = 0;
    let mut stopped = 0;
    let mut succeeded = 0;
    for c in containers {
        if c.running {
            running += 1;
        } else if let Some(code) = c.terminated {
            stopped += 1;
            if code == 0 {
                succeeded += 1;
            }
        } else if c.restarting {
            stopped += 1;
        } else {
            waiting += 1;
        }
    }
    if waiting > 0 {
        return "Pending";
    }
    if running > 0 {
        return "Running";
    }
    if stopped > 0 {
        return match restart_policy {
            "Always" => "Running",
            "OnFailure" if stopped == succeeded => "Succeeded",
            "OnFailure" => "Running",
            _ if stopped == succeeded => "Succeeded",
            _ => "Failed",
        };
    }
    "Pending"
}

/// Keeps each condition's lastTransitionTime across updates.
#[derive(Debug, Default, Clone)]
pub struct Transitions(BTreeMap<String, (String, String)>);

impl Transitions {
    /// A condition; its transition time changes only with its status.
    pub fn condition(
        &mut self,
        kind: &str,
        ok: bool,
        reason: Option<&str>,
        message: Option<String>,
        now: &str,
    ) -> Value {
        let status = if ok { "True" } else { "False" };
        let entry = self
            .0
            .entry(kind.to_owned())
            .or_insert_with(|| (status.to_owned(), now.to_owned()));
        if entry.0 != status {
            *entry = (status.to_owned(), now.to_owned());
        }
        let mut c = json!({"type": kind, "status": status, "lastProbeTime": null, "lastTransitionTime": entry.1});
        if let Some(r) = reason {
            c["reason"] = json!(r);
        }
        if let Some(m) = message {
            c["message"] = json!(m);
        }
        c
    }

    /// Seeds the transition times from a status already on the pod (a
    /// restarted ferry-node keeps them).
    pub fn seed(&mut self, conditions: &[Value]) {
        for c in conditions {
            if let (Some(t), Some(s), Some(at)) = (
                c.get("type").and_then(Value::as_str),
                c.get("status").and_then(Value::as_str),
                c.get("lastTransitionTime").and_then(Value::as_str),
            ) {
                self.0.insert(t.to_owned(), (s.to_owned(), at.to_owned()));
            }
        }
    }
}

/// `containers with unready status: [a b]`, or `None` when all are ready.
pub fn unready_message(what: &str, names: &[String]) -> Option<String> {
    (!names.is_empty()).then(|| format!("containers with {what} status: [{}]", names.join(" ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(running: bool, terminated: Option<i32>, restarting: bool) -> Summary {
        Summary {
            name: "c".into(),
            running,
            terminated,
            restarting,
            ready: running,
        }
    }

    #[test]
    fn phases_like_upstream() {
        assert_eq!(
            phase("Always", true, false, &[c(false, None, false)]),
            "Pending"
        );
        assert_eq!(
            phase("Always", true, false, &[c(true, None, false)]),
            "Running"
        );
        assert_eq!(
            phase("Always", true, false, &[c(false, None, true)]),
            "Running"
        );
        assert_eq!(
            phase("Never", true, false, &[c(false, Some(0), false)]),
            "Succeeded"
        );
        assert_eq!(
            phase("Never", true, false, &[c(false, Some(1), false)]),
            "Failed"
        );
        assert_eq!(
            phase("OnFailure", true, false, &[c(false, Some(0), false)]),
            "Succeeded"
        );
        assert_eq!(
            phase(
                "Never",
                true,
                false,
                &[c(true, None, false), c(false, Some(1), false)]
            ),
            "Running"
        );
        assert_eq!(
            phase("Always", false, false, &[c(false, None, false)]),
            "Pending"
        );
        assert_eq!(
            phase("Never", false, true, &[c(false, None, false)]),
            "Failed"
        );
    }

    #[test]
    fn transition_times_stay_until_the_status_changes() {
        let mut t = Transitions::default();
        let a = t.condition("Ready", false, None, None, "t1");
        let b = t.condition("Ready", false, None, None, "t2");
        assert_eq!(a["lastTransitionTime"], "t1");
        assert_eq!(b["lastTransitionTime"], "t1");
        let c = t.condition("Ready", true, None, None, "t3");
        assert_eq!(c["lastTransitionTime"], "t3");
    }
}
