//! Pod ownership for the DaemonSet and StatefulSet controllers (upstream's
//! PodControllerRefManager): owned pods that no longer match the selector
//! are released, orphans that match are adopted, each by a merge patch of
//! `ownerReferences` guarded by the pod's resourceVersion.

use serde_json::{Value, json};

use super::replicaset::{PodInfo, controller_of, controller_ref};
use super::{log_failure, write_opts};
use crate::object;
use crate::patch::PatchType;
use crate::registry::Registry;
use crate::resources::PODS;
use crate::selector::LabelSelector;

type Key = (String, String);

/// Releases the `owned` pods `sel` no longer matches and, with `adopt`,
/// adopts the namespace's orphans it matches. Returns the pods written, as
/// stored, for the caller's index.
pub(crate) fn claim<'a>(
    reg: &Registry,
    component: &str,
    owner: &Value,
    kind: &str,
    sel: &LabelSelector,
    owned: impl Iterator<Item = (&'a Key, &'a PodInfo)>,
    adopt: bool,
) -> Vec<(Key, Value)> {
    let uid = object::uid(owner);
    let mut written = Vec::new();
    let release: Vec<(Key, u64, Vec<Value>)> = owned
        .filter(|(_, p)| !sel.matches_with(|k| p.labels.get(k).map(String::as_str)))
        .map(|(k, p)| {
            let refs = p
                .owner_refs
                .iter()
                .filter(|r| r.get("uid").and_then(Value::as_str) != Some(uid))
                .cloned()
                .collect();
            (k.clone(), p.rv, refs)
        })
        .collect();
    for (key, rv, refs) in release {
        if let Some(pod) = patch_owners(reg, component, &key, rv, refs) {
            written.push((key, pod));
        }
    }
    if !adopt {
        return written;
    }
    let ns = object::namespace(owner);
    let my_ref = controller_ref(owner, "apps/v1", kind);
    let candidates = reg
        .store
        .list(&PODS, Some(ns), |a| sel.matches(a))
        .unwrap_or_default();
    for pod in candidates {
        let mut refs: Vec<Value> = pod
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if controller_of(&refs).is_some() || object::deletion_timestamp(&pod).is_some() {
            continue;
        }
        refs.push(my_ref.clone());
        let key = (ns.to_string(), object::name(&pod).to_string());
        if let Some(pod) = patch_owners(reg, component, &key, object::resource_version(&pod), refs)
        {
            written.push((key, pod));
        }
    }
    written
}

fn patch_owners(
    reg: &Registry,
    component: &str,
    key: &Key,
    rv: u64,
    refs: Vec<Value>,
) -> Option<Value> {
    let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": rv.to_string()}});
    match reg.patch(
        &PODS,
        &key.0,
        &key.1,
        None,
        (PatchType::Merge, patch.to_string().as_bytes()),
        &write_opts(),
    ) {
        Ok(entry) => entry.value().ok(),
        Err(e) => {
            log_failure(component, &key.1, &e);
            None
        }
    }
}

/// Whether `pod`'s controller is an object of `kind`.
pub(crate) fn controlled_by_kind(pod: &Value, kind: &str) -> bool {
    pod.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|r| {
            r.get("controller").and_then(Value::as_bool) == Some(true)
                && r.get("kind").and_then(Value::as_str) == Some(kind)
        })
}
