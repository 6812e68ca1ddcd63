//! ControllerRevisions, the template history that DaemonSets and
//! StatefulSets keep (upstream's pkg/controller/history): one revision per
//! distinct pod template, named `<owner>-<hash>`, holding the template as
//! the strategic-merge patch upstream stores
//! (`{"spec":{"template":{..., "$patch":"replace"}}}`), numbered in the
//! order the templates were last used (a rollback to an old template
//! renumbers its revision rather than making a new one), and pruned to the
//! owner's `revisionHistoryLimit` among those no live pod uses.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::{Value, json};

use super::deployment::template_hash;
use super::replicaset::{controller_of, controller_ref};
use super::{delete, write_opts};
use crate::error::ApiError;
use crate::object;
use crate::registry::Registry;
use crate::resources::CONTROLLERREVISIONS;

/// The label a revision and the pods made from it carry.
pub const HASH_LABEL: &str = "controller-revision-hash";

/// One revision of an owner's template.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Revision {
    pub name: String,
    pub hash: String,
    pub number: i64,
    pub template: Value,
}

/// The patch a revision stores for `template`.
fn data_of(template: &Value) -> Value {
    let mut t = template.clone();
    if let Some(m) = t.as_object_mut() {
        m.insert("$patch".into(), json!("replace"));
    }
    json!({"spec": {"template": t}})
}

/// The template a stored revision holds.
fn template_of(rev: &Value) -> Value {
    let mut t = rev
        .pointer("/data/spec/template")
        .cloned()
        .unwrap_or(Value::Null);
    if let Some(m) = t.as_object_mut() {
        m.remove("$patch");
    }
    t
}

fn revision_of(rev: &Value) -> Revision {
    Revision {
        name: object::name(rev).to_string(),
        hash: object::label(rev, HASH_LABEL).unwrap_or("").to_string(),
        number: rev.get("revision").and_then(Value::as_i64).unwrap_or(0),
        template: template_of(rev),
    }
}

/// The revisions `owner` controls, oldest number first.
pub(crate) fn owned(reg: &Registry, owner: &Value) -> Vec<Arc<Value>> {
    let uid = object::uid(owner);
    let mut revs: Vec<Arc<Value>> =
        super::list_all(reg, &CONTROLLERREVISIONS, Some(object::namespace(owner)))
            .into_iter()
            .filter(|r| {
                controller_of(
                    r.pointer("/metadata/ownerReferences")
                        .and_then(Value::as_array)
                        .map_or(&[][..], Vec::as_slice),
                ) == Some(uid)
            })
            .collect();
    revs.sort_by_key(|r| {
        (
            r.get("revision").and_then(Value::as_i64).unwrap_or(0),
            object::name(r).to_string(),
        )
    });
    revs
}

/// The revision of `owner`'s current template (`/spec/template`), created
/// or renumbered as the newest when needed. Returns it and the collision
/// count to record in the owner's status when a name clash forced a new
/// one.
pub(crate) fn current(
    reg: &Registry,
    owner: &Value,
    kind: &str,
    revs: &[Arc<Value>],
) -> Result<(Revision, Option<i64>), ApiError> {
    let template = owner
        .pointer("/spec/template")
        .cloned()
        .unwrap_or(Value::Null);
    let max = revs
        .iter()
        .filter_map(|r| r.get("revision").and_then(Value::as_i64))
        .max()
        .unwrap_or(0);
    let ns = object::namespace(owner);
    if let Some(existing) = revs.iter().rev().find(|r| template_of(r) == template) {
        let mut rev = revision_of(existing);
        if rev.number < max {
            // A rollback: the old template becomes the newest revision.
            let mut next = (**existing).clone();
            next["revision"] = json!(max + 1);
            let stored = reg.update(
                &CONTROLLERREVISIONS,
                ns,
                &rev.name,
                None,
                next,
                &write_opts(),
            )?;
            rev = revision_of(&stored.0.value()?);
        }
        return Ok((rev, None));
    }
    let data = data_of(&template);
    let start = owner
        .pointer("/status/collisionCount")
        .and_then(Value::as_i64);
    let mut collisions = start;
    let mut labels = template
        .pointer("/metadata/labels")
        .cloned()
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    for _ in 0..10 {
        let hash = template_hash(&data, collisions);
        labels[HASH_LABEL] = json!(hash);
        let name = format!("{}-{hash}", object::name(owner));
        let body = json!({
            "apiVersion": "apps/v1", "kind": "ControllerRevision",
            "metadata": {"name": name, "namespace": ns, "labels": labels,
                "ownerReferences": [controller_ref(owner, "apps/v1", kind)]},
            "data": data,
            "revision": max + 1,
        });
        match reg.create(&CONTROLLERREVISIONS, ns, body, &write_opts()) {
            Ok(entry) => {
                let rev = revision_of(&entry.value()?);
                return Ok((
                    rev,
                    (collisions != start).then_some(collisions.unwrap_or(0)),
                ));
            }
            Err(e) if e.code == 409 => {
                // Ours with the same template (the event not seen yet):
                // use it; anyone else's or another template's: a
                // collision, hashed again with the count raised.
                if let Ok(Some(cur)) = reg.store.get(&CONTROLLERREVISIONS, ns, &name)
                    && template_of(&cur) == template
                    && controller_of(
                        cur.pointer("/metadata/ownerReferences")
                            .and_then(Value::as_array)
                            .map_or(&[][..], Vec::as_slice),
                    ) == Some(object::uid(owner))
                {
                    return Ok((revision_of(&cur), None));
                }
                collisions = Some(collisions.unwrap_or(0) + 1);
            }
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::internal(format!(
        "no free ControllerRevision name for {} after 10 collisions",
        object::name(owner)
    )))
}

/// A revision of `owner` by name.
pub(crate) fn by_name(revs: &[Arc<Value>], name: &str) -> Option<Revision> {
    revs.iter()
        .find(|r| object::name(r) == name)
        .map(|r| revision_of(r))
}

/// Deletes the oldest revisions beyond `limit` that are neither `keep`
/// nor named in `live` (the revisions live pods were made from).
pub(crate) fn prune(
    reg: &Registry,
    ctrl: &str,
    owner: &Value,
    revs: &[Arc<Value>],
    keep: &BTreeSet<String>,
    limit: i64,
) {
    let spare: Vec<&Arc<Value>> = revs
        .iter()
        .filter(|r| !keep.contains(object::name(r)))
        .collect();
    let excess = spare
        .len()
        .saturating_sub(usize::try_from(limit.max(0)).unwrap_or(0));
    for r in spare.into_iter().take(excess) {
        delete(
            reg,
            ctrl,
            &CONTROLLERREVISIONS,
            object::namespace(owner),
            object::name(r),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::WriteOptions;
    use crate::resources::DAEMONSETS;

    fn ds(image: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "agent", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "a"}},
                "template": {"metadata": {"labels": {"app": "a"}},
                    "spec": {"containers": [{"name": "c", "image": image}]}}}})
    }

    #[test]
    fn one_revision_per_template_renumbered_on_rollback_and_pruned() {
        let reg = Registry::in_memory().expect("registry");
        let opts = WriteOptions::default();
        let v1 = reg
            .create(&DAEMONSETS, "default", ds("a:1"), &opts)
            .expect("ds")
            .value()
            .expect("json");
        let (r1, c) = current(&reg, &v1, "DaemonSet", &owned(&reg, &v1)).expect("rev");
        assert_eq!((r1.number, c), (1, None));
        assert_eq!(r1.name, format!("agent-{}", r1.hash));
        // Asking again finds the same revision.
        let (again, _) = current(&reg, &v1, "DaemonSet", &owned(&reg, &v1)).expect("rev");
        assert_eq!(again, r1);
        let mut v2 = v1.clone();
        v2["spec"]["template"]["spec"]["containers"][0]["image"] = json!("a:2");
        let (r2, _) = current(&reg, &v2, "DaemonSet", &owned(&reg, &v2)).expect("rev");
        assert_eq!(r2.number, 2);
        assert_ne!(r2.hash, r1.hash);
        // Back to the first template: its revision becomes number 3.
        let (r3, _) = current(&reg, &v1, "DaemonSet", &owned(&reg, &v1)).expect("rev");
        assert_eq!((r3.name.as_str(), r3.number), (r1.name.as_str(), 3));
        assert_eq!(r3.template, v1["spec"]["template"]);
        let revs = owned(&reg, &v1);
        assert_eq!(revs.len(), 2);
        prune(
            &reg,
            "test",
            &v1,
            &revs,
            &BTreeSet::from([r3.name.clone()]),
            0,
        );
        let left: Vec<String> = owned(&reg, &v1)
            .iter()
            .map(|r| object::name(r).to_string())
            .collect();
        assert_eq!(left, [r1.name]);
    }

    #[test]
    fn a_name_taken_by_another_template_is_a_collision() {
        let reg = Registry::in_memory().expect("registry");
        let opts = WriteOptions::default();
        let owner = reg
            .create(&DAEMONSETS, "default", ds("a:1"), &opts)
            .expect("ds")
            .value()
            .expect("json");
        let hash = template_hash(&data_of(&owner["spec"]["template"]), None);
        let squatter = json!({"apiVersion": "apps/v1", "kind": "ControllerRevision",
            "metadata": {"name": format!("agent-{hash}")}, "data": {}, "revision": 7});
        reg.create(&CONTROLLERREVISIONS, "default", squatter, &opts)
            .expect("squatter");
        let (rev, collisions) =
            current(&reg, &owner, "DaemonSet", &owned(&reg, &owner)).expect("rev");
        assert_eq!(collisions, Some(1));
        assert_ne!(rev.hash, hash);
        assert_eq!(rev.number, 1, "the squatter is not ours");
    }
}
