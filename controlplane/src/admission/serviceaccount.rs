//! The ServiceAccount admission plugin's mutation of a pod being created
//! (kube-apiserver's `plugin/pkg/admission/serviceaccount`): the pod runs
//! as `spec.serviceAccountName` (default `default`), which must exist (the
//! registry looks it up, and waits a little for `default`, which the
//! `serviceaccount` controller makes in every namespace), and, unless
//! `automountServiceAccountToken` is false on the pod or else on the
//! ServiceAccount, gets the projected volume `kube-api-access-<5 random>`
//! (a bound token, the cluster CA of ConfigMap `kube-root-ca.crt` and the
//! namespace) mounted read-only at [`MOUNT_PATH`] in every container and
//! init container that has no mount there yet.

use serde_json::{Value, json};

/// Where containers find their token, `ca.crt` and `namespace`.
pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The prefix of the volume's name.
pub const VOLUME_PREFIX: &str = "kube-api-access-";
/// The ConfigMap holding the cluster CA in every namespace.
pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";
/// The token's lifetime asked for by the volume (upstream's
/// `WarnOnlyBoundTokenExpirationSeconds`).
pub const TOKEN_EXPIRATION_SECS: i64 = 3607;
/// The ServiceAccount a pod runs as when it names none.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// The ServiceAccount `pod` runs as: `spec.serviceAccountName`, else the
/// deprecated `spec.serviceAccount`, else `default`.
pub fn account_of(pod: &Value) -> String {
    ["/spec/serviceAccountName", "/spec/serviceAccount"]
        .iter()
        .find_map(|p| pod.pointer(p).and_then(Value::as_str))
        .filter(|s| !s.is_empty())
        .unwrap_or(DEFAULT_SERVICE_ACCOUNT)
        .to_owned()
}

/// Whether a mirror pod (a static pod's copy): the plugin leaves those.
pub fn is_mirror(pod: &Value) -> bool {
    pod.pointer("/metadata/annotations/kubernetes.io~1config.mirror")
        .is_some()
}

/// The projected volume's source, as upstream's `TokenVolumeSource`.
pub fn token_volume_source() -> Value {
    json!({
        "defaultMode": 420,
        "sources": [
            {"serviceAccountToken": {"expirationSeconds": TOKEN_EXPIRATION_SECS, "path": "token"}},
            {"configMap": {"name": ROOT_CA_CONFIGMAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
        ],
    })
}

/// Mutates `pod` (being created) for its ServiceAccount `sa`;
/// `volume_name` is the name a new token volume gets.
pub fn admit_pod(pod: &mut Value, sa: &Value, volume_name: &str) {
    let account = account_of(pod);
    if !pod.get("spec").is_some_and(Value::is_object) {
        pod["spec"] = json!({});
    }
    pod["spec"]["serviceAccountName"] = json!(account);
    let automount = pod
        .pointer("/spec/automountServiceAccountToken")
        .and_then(Value::as_bool)
        .or_else(|| {
            sa.get("automountServiceAccountToken")
                .and_then(Value::as_bool)
        })
        .unwrap_or(true);
    if !automount {
        return;
    }
    let spec = &mut pod["spec"];
    let existing = spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.get("name").and_then(Value::as_str))
        .find(|n| n.starts_with(VOLUME_PREFIX))
        .map(String::from);
    let name = existing.clone().unwrap_or_else(|| volume_name.to_owned());
    let mount = json!({"name": name, "readOnly": true, "mountPath": MOUNT_PATH});
    let mut needed = false;
    for list in ["initContainers", "containers"] {
        let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in containers.iter_mut().filter(|c| c.is_object()) {
            let has = c
                .get("volumeMounts")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|m| m.get("mountPath").and_then(Value::as_str) == Some(MOUNT_PATH));
            if has {
                continue;
            }
            match c.get_mut("volumeMounts").and_then(Value::as_array_mut) {
                Some(mounts) => mounts.push(mount.clone()),
                None => c["volumeMounts"] = json!([mount.clone()]),
            }
            needed = true;
        }
    }
    if needed && existing.is_none() {
        let volume = json!({"name": name, "projected": token_volume_source()});
        match spec.get_mut("volumes").and_then(Value::as_array_mut) {
            Some(v) => v.push(volume),
            None => spec["volumes"] = json!([volume]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_volume_is_added_and_mounted_everywhere_once() {
        let mut pod = json!({"spec": {
            "initContainers": [{"name": "i"}],
            "containers": [
                {"name": "a", "volumeMounts": [{"name": "x", "mountPath": "/x"}]},
                {"name": "b", "volumeMounts": [{"name": "mine", "mountPath": MOUNT_PATH}]},
            ],
            "volumes": [{"name": "x", "emptyDir": {}}, {"name": "mine", "emptyDir": {}}],
        }});
        admit_pod(&mut pod, &json!({}), "kube-api-access-abcde");
        assert_eq!(pod["spec"]["serviceAccountName"], "default");
        let vols = pod["spec"]["volumes"].as_array().expect("volumes");
        assert_eq!(vols.len(), 3);
        assert_eq!(vols[2]["name"], "kube-api-access-abcde");
        assert_eq!(vols[2]["projected"]["defaultMode"], 420);
        assert_eq!(
            vols[2]["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"],
            3607
        );
        let mounted = |c: &Value| {
            c["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|m| m["mountPath"] == MOUNT_PATH)
                .map(|m| (m["name"].clone(), m["readOnly"].clone()))
                .collect::<Vec<_>>()
        };
        let ours = (json!("kube-api-access-abcde"), json!(true));
        assert_eq!(
            mounted(&pod["spec"]["initContainers"][0]),
            std::slice::from_ref(&ours)
        );
        assert_eq!(mounted(&pod["spec"]["containers"][0]), [ours]);
        // A container with its own mount there keeps it.
        assert_eq!(
            mounted(&pod["spec"]["containers"][1]),
            [(json!("mine"), Value::Null)]
        );
        // Admitted again (a retried create): nothing doubles.
        let before = pod.clone();
        admit_pod(&mut pod, &json!({}), "kube-api-access-zzzzz");
        assert_eq!(pod, before);
    }

    #[test]
    fn automount_false_on_the_pod_or_the_account_is_honoured() {
        let base = json!({"spec": {"serviceAccountName": "robot", "containers": [{"name": "a"}]}});
        let mut pod = base.clone();
        admit_pod(
            &mut pod,
            &json!({"automountServiceAccountToken": false}),
            "kube-api-access-abcde",
        );
        assert!(pod["spec"].get("volumes").is_none());
        assert_eq!(pod["spec"]["serviceAccountName"], "robot");
        // The pod's word wins over the account's, either way.
        let mut pod = base.clone();
        pod["spec"]["automountServiceAccountToken"] = json!(true);
        admit_pod(
            &mut pod,
            &json!({"automountServiceAccountToken": false}),
            "kube-api-access-abcde",
        );
        assert_eq!(pod["spec"]["volumes"].as_array().map(Vec::len), Some(1));
        let mut pod = base;
        pod["spec"]["automountServiceAccountToken"] = json!(false);
        admit_pod(&mut pod, &json!({}), "kube-api-access-abcde");
        assert!(pod["spec"].get("volumes").is_none());
    }

    #[test]
    fn the_account_falls_back_to_the_deprecated_field_then_default() {
        assert_eq!(account_of(&json!({"spec": {}})), "default");
        assert_eq!(
            account_of(&json!({"spec": {"serviceAccount": "old"}})),
            "old"
        );
        assert_eq!(
            account_of(&json!({"spec": {"serviceAccount": "old", "serviceAccountName": "new"}})),
            "new"
        );
    }
}
