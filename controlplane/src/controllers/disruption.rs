//! The disruption controller (kube-controller-manager's `disruption`): the
//! status of every PodDisruptionBudget, from the pods its selector picks in
//! its namespace.
//!
//! - `expectedPods`: with an integer `minAvailable`, the pods selected; with
//!   a percentage or `maxUnavailable`, the scale of their controllers (a
//!   ReplicaSet's Deployment, else the ReplicaSet, a StatefulSet), each
//!   counted once, as upstream (a pod without such a controller counts for
//!   itself, where upstream refuses to compute the budget).
//! - `currentHealthy`: selected pods that are Ready and not being deleted.
//! - `desiredHealthy`: `minAvailable`, or expected minus `maxUnavailable`,
//!   percentages rounded up.
//! - `disruptionsAllowed`: current minus desired, never below 0, and 0 with
//!   nothing expected; the `DisruptionAllowed` condition says the same.
//!
//! Work is per namespace: a change of a budget, a pod or a controller marks
//! its namespace, and only marked namespaces holding a budget are counted
//! again.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::{Change, Controller, list_all, status};
use crate::admission::disruption::Amount;
use crate::object;
use crate::registry::Registry;
use crate::resources::{
    DEPLOYMENTS, PODDISRUPTIONBUDGETS, PODS, REPLICASETS, Resource, STATEFULSETS,
};
use crate::selector::LabelSelector;

const COMPONENT: &str = "disruption";

#[derive(Debug, Default)]
pub struct DisruptionController {
    /// Namespaces to count again.
    dirty: BTreeSet<String>,
}

/// What a budget's status says, computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub expected: i64,
    pub current_healthy: i64,
    pub desired_healthy: i64,
    pub allowed: i64,
}

fn ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

fn terminating(pod: &Value) -> bool {
    pod.pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null())
}

/// The pod's controller as (kind, name).
fn controller_of(pod: &Value) -> Option<(String, String)> {
    pod.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)?
        .iter()
        .find(|r| r["controller"] == true)
        .map(|r| {
            (
                r["kind"].as_str().unwrap_or_default().to_owned(),
                r["name"].as_str().unwrap_or_default().to_owned(),
            )
        })
}

/// The scale behind a pod's controller, keyed so that pods of one
/// Deployment count it once; `None` when it has none.
fn scale_of(reg: &Registry, ns: &str, pod: &Value) -> Option<(String, i64)> {
    let (kind, name) = controller_of(pod)?;
    let replicas = |o: &Value| {
        o.pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1)
    };
    let get = |res: &'static Resource, name: &str| reg.store.get(res, ns, name).ok().flatten();
    match kind.as_str() {
        "ReplicaSet" => {
            let rs = get(&REPLICASETS, &name)?;
            if let Some((dk, dn)) = controller_of(&rs)
                && dk == "Deployment"
                && let Some(d) = get(&DEPLOYMENTS, &dn)
            {
                return Some((format!("Deployment/{dn}"), replicas(&d)));
            }
            Some((format!("ReplicaSet/{name}"), replicas(&rs)))
        }
        "StatefulSet" => {
            let ss = get(&STATEFULSETS, &name)?;
            Some((format!("StatefulSet/{name}"), replicas(&ss)))
        }
        _ => None,
    }
}

/// A budget's counts over `pods` (its namespace's); `scale` finds a pod's
/// controller scale.
pub fn count(
    pdb: &Value,
    pods: &[std::sync::Arc<Value>],
    mut scale: impl FnMut(&Value) -> Option<(String, i64)>,
) -> Option<Counts> {
    let spec = pdb.get("spec")?;
    // An absent selector selects nothing (policy/v1); an empty one, all.
    let selector = match spec.get("selector").filter(|s| !s.is_null()) {
        Some(s) => LabelSelector::from_api(s).ok()?,
        None => {
            return Some(Counts {
                expected: 0,
                current_healthy: 0,
                desired_healthy: 0,
                allowed: 0,
            });
        }
    };
    let selected: Vec<&Value> = pods
        .iter()
        .map(AsRef::as_ref)
        .filter(|p| {
            let labels = object::labels(p);
            selector.matches_with(|k| labels.and_then(|l| l.get(k)).and_then(Value::as_str))
        })
        .collect();
    let min = spec
        .get("minAvailable")
        .filter(|v| !v.is_null())
        .and_then(|v| Amount::parse(v).ok());
    let max = spec
        .get("maxUnavailable")
        .filter(|v| !v.is_null())
        .and_then(|v| Amount::parse(v).ok());
    let by_controllers = |scale: &mut dyn FnMut(&Value) -> Option<(String, i64)>| {
        let mut scales: BTreeMap<String, i64> = BTreeMap::new();
        let mut alone = 0;
        for p in &selected {
            match scale(p) {
                Some((key, n)) => {
                    scales.insert(key, n);
                }
                None => alone += 1,
            }
        }
        scales.values().sum::<i64>() + alone
    };
    let (expected, desired) = match (min, max) {
        (Some(Amount::Count(n)), _) => (selected.len() as i64, n),
        (Some(pct @ Amount::Percent(_)), _) => {
            let e = by_controllers(&mut scale);
            (e, pct.of(e))
        }
        (None, Some(m)) => {
            let e = by_controllers(&mut scale);
            (e, (e - m.of(e)).max(0))
        }
        (None, None) => (selected.len() as i64, 0),
    };
    let healthy = selected
        .iter()
        .filter(|p| ready(p) && !terminating(p))
        .count() as i64;
    let allowed = if expected <= 0 {
        0
    } else {
        (healthy - desired).max(0)
    };
    Some(Counts {
        expected,
        current_healthy: healthy,
        desired_healthy: desired,
        allowed,
    })
}

/// `pdb`'s status for `c`, keeping the condition's transition time when
/// its status did not change.
fn status_for(pdb: &Value, c: Counts) -> Value {
    let (cond, reason) = if c.allowed > 0 {
        ("True", "SufficientPods")
    } else {
        ("False", "InsufficientPods")
    };
    let generation = pdb
        .pointer("/metadata/generation")
        .cloned()
        .unwrap_or(json!(1));
    let old = pdb
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|x| x["type"] == "DisruptionAllowed"));
    let since = old
        .filter(|o| o["status"] == cond)
        .and_then(|o| o.get("lastTransitionTime").cloned())
        .unwrap_or_else(|| json!(object::now()));
    let mut st = json!({
        "observedGeneration": generation,
        "disruptionsAllowed": c.allowed,
        "currentHealthy": c.current_healthy,
        "desiredHealthy": c.desired_healthy,
        "expectedPods": c.expected,
        "conditions": [{
            "type": "DisruptionAllowed", "status": cond, "reason": reason, "message": "",
            "observedGeneration": generation, "lastTransitionTime": since,
        }],
    });
    if let Some(d) = pdb
        .pointer("/status/disruptedPods")
        .filter(|d| !d.is_null())
    {
        st["disruptedPods"] = d.clone();
    }
    st
}

impl Controller for DisruptionController {
    fn name(&self) -> &'static str {
        COMPONENT
    }

    fn watches(&self, res: &Resource) -> bool {
        [
            PODDISRUPTIONBUDGETS,
            PODS,
            REPLICASETS,
            DEPLOYMENTS,
            STATEFULSETS,
        ]
        .contains(res)
    }

    fn resync(&mut self, reg: &Registry) {
        for pdb in list_all(reg, &PODDISRUPTIONBUDGETS, None) {
            self.dirty.insert(object::namespace(&pdb).to_owned());
        }
    }

    fn observe(&mut self, _reg: &Registry, ev: &Change) {
        let ns = object::namespace(ev.object_meta());
        if !ns.is_empty() {
            self.dirty.insert(ns.to_owned());
        }
    }

    fn reconcile(&mut self, reg: &Registry) {
        for ns in std::mem::take(&mut self.dirty) {
            let budgets = list_all(reg, &PODDISRUPTIONBUDGETS, Some(&ns));
            if budgets.is_empty() {
                continue;
            }
            let pods = list_all(reg, &PODS, Some(&ns));
            for pdb in budgets {
                let Some(c) = count(&pdb, &pods, |p| scale_of(reg, &ns, p)) else {
                    continue;
                };
                status::write(
                    reg,
                    COMPONENT,
                    &PODDISRUPTIONBUDGETS,
                    &pdb,
                    status_for(&pdb, c),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn pod(name: &str, app: &str, ready: bool, rs: Option<&str>) -> Arc<Value> {
        let mut p = json!({"metadata": {"name": name, "labels": {"app": app}},
            "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}});
        if let Some(rs) = rs {
            p["metadata"]["ownerReferences"] =
                json!([{"kind": "ReplicaSet", "name": rs, "controller": true}]);
        }
        Arc::new(p)
    }

    fn budget(spec: Value) -> Value {
        json!({"metadata": {"name": "b", "generation": 2}, "spec": spec})
    }

    #[test]
    fn counts_follow_upstreams_rules() {
        let pods = vec![
            pod("a", "web", true, Some("rs")),
            pod("b", "web", true, Some("rs")),
            pod("c", "web", false, Some("rs")),
            pod("d", "db", true, None),
        ];
        let sel = json!({"matchLabels": {"app": "web"}});
        // The ReplicaSet wants 4: one pod is yet to come.
        let scale = |p: &Value| controller_of(p).map(|(_, n)| (n, 4));
        let c = count(
            &budget(json!({"selector": sel, "minAvailable": 1})),
            &pods,
            scale,
        )
        .expect("counts");
        assert_eq!(
            c,
            Counts {
                expected: 3,
                current_healthy: 2,
                desired_healthy: 1,
                allowed: 1
            }
        );
        let c = count(
            &budget(json!({"selector": sel, "minAvailable": "50%"})),
            &pods,
            scale,
        )
        .expect("counts");
        assert_eq!((c.expected, c.desired_healthy, c.allowed), (4, 2, 0));
        let c = count(
            &budget(json!({"selector": sel, "maxUnavailable": 1})),
            &pods,
            scale,
        )
        .expect("counts");
        assert_eq!((c.expected, c.desired_healthy, c.allowed), (4, 3, 0));
        let c = count(
            &budget(json!({"selector": {}, "minAvailable": 0})),
            &pods,
            scale,
        )
        .expect("counts");
        assert_eq!((c.expected, c.current_healthy, c.allowed), (4, 3, 3));
        let none = count(&budget(json!({"minAvailable": 1})), &pods, scale).expect("counts");
        assert_eq!(none.allowed, 0);
    }

    #[test]
    fn the_condition_keeps_its_time_until_it_flips() {
        let mut pdb = budget(json!({}));
        let c = Counts {
            expected: 2,
            current_healthy: 2,
            desired_healthy: 1,
            allowed: 1,
        };
        let st = status_for(&pdb, c);
        assert_eq!(st["conditions"][0]["status"], "True");
        assert_eq!(st["observedGeneration"], 2);
        pdb["status"] = st.clone();
        pdb["status"]["conditions"][0]["lastTransitionTime"] = json!("2020-01-01T00:00:00Z");
        let again = status_for(&pdb, c);
        assert_eq!(
            again["conditions"][0]["lastTransitionTime"],
            "2020-01-01T00:00:00Z"
        );
        let flipped = status_for(&pdb, Counts { allowed: 0, ..c });
        assert_eq!(flipped["conditions"][0]["reason"], "InsufficientPods");
        assert_ne!(
            flipped["conditions"][0]["lastTransitionTime"],
            "2020-01-01T00:00:00Z"
        );
    }
}
