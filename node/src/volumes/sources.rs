//! What configMap, secret, downwardAPI and projected volumes hold: the
//! payload each source gives ([`Payload`]), built the kubelet's way.
//! Pure: the worker fetches the ConfigMaps and Secrets first
//! ([`crate::env::References`]); [`super::atomic_writer`] writes the result.
//!
//! A projected volume is the union of its sources' payloads; each kind of
//! source is one arm of [`projection`]; a `serviceAccountToken` source
//! takes the token the worker holds for it ([`super::token`]).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, VolumeProjection,
};

use super::atomic_writer::{FileProjection, Payload};
use crate::env::{self, PodAddresses, References};

/// The mode of files with none given (`0644`, the API's default).
pub const DEFAULT_MODE: i32 = 0o644;
/// Largest ConfigMap or Secret (the API's own limit, checked again).
pub const MAX_OBJECT_BYTES: usize = 1 << 20;
/// Largest payload of one volume (a projected volume may hold several
/// objects).
pub const MAX_VOLUME_BYTES: usize = 4 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SourceError {
    #[error("configmap {0:?} not found")]
    ConfigMapMissing(String),
    #[error("secret {0:?} not found")]
    SecretMissing(String),
    #[error("configmap references non-existent config key: {0}")]
    ConfigMapKey(String),
    #[error("references non-existent secret key: {0}")]
    SecretKey(String),
    #[error("{what} holds {size} bytes, more than the {limit} allowed")]
    TooLarge {
        what: String,
        size: usize,
        limit: usize,
    },
    #[error("downwardAPI {path}: {what}")]
    Field { path: String, what: String },
    #[error("{0} is not supported by ferry-node yet")]
    Unsupported(&'static str),
    #[error("no service account token for the projection at {0:?} yet")]
    TokenMissing(String),
    #[error("item {path:?}: {what}")]
    BadItem { path: String, what: String },
}

/// The names of the ConfigMaps and Secrets the pod's volumes read.
pub fn referenced(pod: &Pod) -> (Vec<String>, Vec<String>) {
    let mut cms = Vec::new();
    let mut secrets = Vec::new();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        if let Some(cm) = &v.config_map {
            cms.push(cm.name.clone());
        }
        if let Some(s) = &v.secret {
            secrets.push(s.secret_name.clone().unwrap_or_default());
        }
        for p in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(cm) = &p.config_map {
                cms.push(cm.name.clone());
            }
            if let Some(s) = &p.secret {
                secrets.push(s.name.clone());
            }
        }
    }
    cms.sort();
    cms.dedup();
    secrets.sort();
    secrets.dedup();
    (cms, secrets)
}

fn mode(item: Option<i32>, default: Option<i32>) -> u32 {
    u32::try_from(item.or(default).unwrap_or(DEFAULT_MODE) & 0o7777).unwrap_or(0o644)
}

/// Key/value entries to files: all keys with `default`, or the `items`
/// (a missing key an error unless `optional`).
fn keyed(
    entries: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    default: Option<i32>,
    optional: bool,
    missing_key: impl Fn(String) -> SourceError,
) -> Result<Payload, SourceError> {
    let mut out = Payload::new();
    match items {
        None => {
            for (k, v) in entries {
                out.insert(
                    k.clone(),
                    FileProjection {
                        data: v.clone(),
                        mode: mode(None, default),
                    },
                );
            }
        }
        Some(items) => {
            for item in items {
                match entries.get(&item.key) {
                    Some(v) => {
                        out.insert(
                            item.path.clone(),
                            FileProjection {
                                data: v.clone(),
                                mode: mode(item.mode, default),
                            },
                        );
                    }
                    None if optional => {}
                    None => return Err(missing_key(item.key.clone())),
                }
            }
        }
    }
    Ok(out)
}

fn bounded(what: String, entries: &BTreeMap<String, Vec<u8>>) -> Result<(), SourceError> {
    let size: usize = entries.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > MAX_OBJECT_BYTES {
        return Err(SourceError::TooLarge {
            what,
            size,
            limit: MAX_OBJECT_BYTES,
        });
    }
    Ok(())
}

fn config_map_entries(cm: &ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = cm
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    for (k, v) in cm.binary_data.iter().flatten() {
        out.insert(k.clone(), v.0.clone());
    }
    out
}

fn secret_entries(s: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = s
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    for (k, v) in s.string_data.iter().flatten() {
        out.insert(k.clone(), v.clone().into_bytes());
    }
    out
}

/// A ConfigMap's files (`name` missing and `optional`: none).
pub fn config_map(
    refs: &References,
    name: &str,
    items: Option<&Vec<KeyToPath>>,
    default: Option<i32>,
    optional: bool,
) -> Result<Payload, SourceError> {
    match refs.config_maps.get(name).and_then(Option::as_ref) {
        Some(cm) => {
            let entries = config_map_entries(cm);
            bounded(format!("configmap {name:?}"), &entries)?;
            keyed(
                &entries,
                items,
                default,
                optional,
                SourceError::ConfigMapKey,
            )
        }
        None if optional => Ok(Payload::new()),
        None => Err(SourceError::ConfigMapMissing(name.to_owned())),
    }
}

/// A Secret's files (`name` missing and `optional`: none).
pub fn secret(
    refs: &References,
    name: &str,
    items: Option<&Vec<KeyToPath>>,
    default: Option<i32>,
    optional: bool,
) -> Result<Payload, SourceError> {
    match refs.secrets.get(name).and_then(Option::as_ref) {
        Some(s) => {
            let entries = secret_entries(s);
            bounded(format!("secret {name:?}"), &entries)?;
            keyed(&entries, items, default, optional, SourceError::SecretKey)
        }
        None if optional => Ok(Payload::new()),
        None => Err(SourceError::SecretMissing(name.to_owned())),
    }
}

/// Go's `%q` of a string (what the kubelet writes for label and
/// annotation values).
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0b' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\x7f' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `key="value"` lines in key order, as the kubelet's `FormatMap`.
fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// downwardAPI items' files.
pub fn downward_api(
    pod: &Pod,
    addrs: &PodAddresses,
    items: &[DownwardAPIVolumeFile],
    default: Option<i32>,
) -> Result<Payload, SourceError> {
    let mut out = Payload::new();
    for item in items {
        let value = match (&item.field_ref, &item.resource_field_ref) {
            (Some(f), None) => match f.field_path.as_str() {
                "metadata.labels" => format_map(pod.metadata.labels.as_ref()),
                "metadata.annotations" => format_map(pod.metadata.annotations.as_ref()),
                path => {
                    env::field(pod, addrs, &item.path, path).map_err(|e| SourceError::Field {
                        path: item.path.clone(),
                        what: e.to_string(),
                    })?
                }
            },
            (None, Some(_)) => {
                return Err(SourceError::Unsupported("downwardAPI resourceFieldRef"));
            }
            _ => {
                return Err(SourceError::BadItem {
                    path: item.path.clone(),
                    what: "needs exactly one of fieldRef and resourceFieldRef".into(),
                });
            }
        };
        out.insert(
            item.path.clone(),
            FileProjection {
                data: value.into_bytes(),
                mode: mode(item.mode, default),
            },
        );
    }
    Ok(out)
}

/// One source of a projected volume.
pub fn projection(
    pod: &Pod,
    addrs: &PodAddresses,
    refs: &References,
    source: &VolumeProjection,
    default: Option<i32>,
) -> Result<Payload, SourceError> {
    if let Some(cm) = &source.config_map {
        return config_map(
            refs,
            &cm.name,
            cm.items.as_ref(),
            default,
            cm.optional.unwrap_or(false),
        );
    }
    if let Some(s) = &source.secret {
        return secret(
            refs,
            &s.name,
            s.items.as_ref(),
            default,
            s.optional.unwrap_or(false),
        );
    }
    if let Some(d) = &source.downward_api {
        return downward_api(pod, addrs, d.items.as_deref().unwrap_or_default(), default);
    }
    if let Some(t) = &source.service_account_token {
        let token = refs
            .tokens
            .get(&super::token::TokenKey::of(t))
            .ok_or_else(|| SourceError::TokenMissing(t.path.clone()))?;
        let mut out = Payload::new();
        out.insert(
            t.path.clone(),
            FileProjection {
                data: token.clone().into_bytes(),
                mode: mode(None, default),
            },
        );
        return Ok(out);
    }
    if source.cluster_trust_bundle.is_some() {
        return Err(SourceError::Unsupported("a clusterTrustBundle projection"));
    }
    Ok(Payload::new())
}

/// The union of payloads (a later source's file replaces an earlier one,
/// as the kubelet's projection), bounded in total.
pub fn merge(parts: Vec<Payload>) -> Result<Payload, SourceError> {
    let mut out = Payload::new();
    for p in parts {
        out.extend(p);
    }
    let size: usize = out.iter().map(|(k, f)| k.len() + f.data.len()).sum();
    if size > MAX_VOLUME_BYTES {
        return Err(SourceError::TooLarge {
            what: "the volume".into(),
            size,
            limit: MAX_VOLUME_BYTES,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn from_json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).expect("decodes")
    }

    fn refs() -> References {
        let mut r = References::default();
        r.config_maps.insert(
            "cfg".into(),
            Some(from_json(json!({"metadata": {"name": "cfg"},
                "data": {"a": "1", "b": "2"}, "binaryData": {"bin": "AAE="}}))),
        );
        r.config_maps.insert("gone".into(), None);
        r.secrets.insert(
            "sec".into(),
            Some(from_json(
                json!({"metadata": {"name": "sec"}, "data": {"pw": "aHVudGVyMg=="}}),
            )),
        );
        r
    }

    #[test]
    fn config_maps_and_secrets_like_the_kubelet() {
        let r = refs();
        let all = config_map(&r, "cfg", None, Some(0o600), false).expect("all keys");
        assert_eq!(all.len(), 3);
        assert_eq!(all["a"].data, b"1");
        assert_eq!(all["bin"].data, vec![0u8, 1]);
        assert!(all.values().all(|f| f.mode == 0o600));
        let items: Vec<KeyToPath> = from_json(
            json!([{"key": "b", "path": "dir/b.txt", "mode": 0o400}, {"key": "a", "path": "a"}]),
        );
        let some = config_map(&r, "cfg", Some(&items), None, false).expect("items");
        assert_eq!(some.keys().collect::<Vec<_>>(), ["a", "dir/b.txt"]);
        assert_eq!(some["dir/b.txt"].mode, 0o400);
        assert_eq!(some["a"].mode, 0o644);
        let missing: Vec<KeyToPath> = from_json(json!([{"key": "zz", "path": "z"}]));
        assert_eq!(
            config_map(&r, "cfg", Some(&missing), None, false)
                .expect_err("missing key")
                .to_string(),
            "configmap references non-existent config key: zz"
        );
        assert!(
            config_map(&r, "cfg", Some(&missing), None, true)
                .expect("optional")
                .is_empty()
        );
        assert_eq!(
            config_map(&r, "gone", None, None, false)
                .expect_err("gone")
                .to_string(),
            "configmap \"gone\" not found"
        );
        assert!(
            config_map(&r, "gone", None, None, true)
                .expect("optional")
                .is_empty()
        );
        let s = secret(&r, "sec", None, None, false).expect("secret");
        assert_eq!(s["pw"].data, b"hunter2");
        assert_eq!(
            secret(&r, "nope", None, None, false)
                .expect_err("missing")
                .to_string(),
            "secret \"nope\" not found"
        );
    }

    #[test]
    fn objects_over_the_api_limit_are_refused() {
        let mut r = References::default();
        r.config_maps.insert(
            "big".into(),
            Some(from_json(json!({"metadata": {"name": "big"}, "data": {"x": "y".repeat(MAX_OBJECT_BYTES + 1)}}))),
        );
        assert!(matches!(
            config_map(&r, "big", None, None, false),
            Err(SourceError::TooLarge { .. })
        ));
    }

    #[test]
    fn downward_api_files() {
        let pod: Pod = from_json(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u-1",
                "labels": {"b": "2", "a": "say \"hi\"\n"}, "annotations": {"k": "v"}},
            "spec": {"nodeName": "n1", "serviceAccountName": "sa", "containers": []}}));
        let addrs = PodAddresses {
            pod_ips: vec![
                "10.0.0.5".parse().expect("ip"),
                "fd00::5".parse().expect("ip"),
            ],
            host_ips: Vec::new(),
        };
        let items: Vec<DownwardAPIVolumeFile> = from_json(json!([
            {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
            {"path": "ns", "fieldRef": {"fieldPath": "metadata.namespace"}, "mode": 0o400},
            {"path": "uid", "fieldRef": {"fieldPath": "metadata.uid"}},
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
            {"path": "node", "fieldRef": {"fieldPath": "spec.nodeName"}},
            {"path": "sa", "fieldRef": {"fieldPath": "spec.serviceAccountName"}},
            {"path": "ip", "fieldRef": {"fieldPath": "status.podIP"}},
            {"path": "ips", "fieldRef": {"fieldPath": "status.podIPs"}},
            {"path": "one", "fieldRef": {"fieldPath": "metadata.labels['b']"}},
        ]));
        let p = downward_api(&pod, &addrs, &items, None).expect("payload");
        let text = |k: &str| String::from_utf8(p[k].data.clone()).expect("utf-8");
        assert_eq!(text("name"), "p");
        assert_eq!(text("ns"), "ns");
        assert_eq!(p["ns"].mode, 0o400);
        assert_eq!(text("uid"), "u-1");
        assert_eq!(text("labels"), "a=\"say \\\"hi\\\"\\n\"\nb=\"2\"");
        assert_eq!(text("annotations"), "k=\"v\"");
        assert_eq!(text("node"), "n1");
        assert_eq!(text("sa"), "sa");
        assert_eq!(text("ip"), "10.0.0.5");
        assert_eq!(text("ips"), "10.0.0.5,fd00::5");
        assert_eq!(text("one"), "2");
        let bad: Vec<DownwardAPIVolumeFile> =
            from_json(json!([{"path": "x", "fieldRef": {"fieldPath": "spec.nope"}}]));
        assert!(downward_api(&pod, &addrs, &bad, None).is_err());
    }

    #[test]
    fn projections_merge_and_tokens_are_written() {
        let r = refs();
        let pod: Pod = from_json(json!({"metadata": {"name": "p"}, "spec": {"containers": []}}));
        let addrs = PodAddresses::default();
        let sources: Vec<VolumeProjection> = from_json(json!([
            {"configMap": {"name": "cfg", "items": [{"key": "a", "path": "cfg-a"}]}},
            {"secret": {"name": "sec"}},
            {"downwardAPI": {"items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}},
        ]));
        let parts = sources
            .iter()
            .map(|s| projection(&pod, &addrs, &r, s, Some(0o440)))
            .collect::<Result<Vec<_>, _>>()
            .expect("parts");
        let all = merge(parts).expect("merged");
        assert_eq!(all.keys().collect::<Vec<_>>(), ["cfg-a", "name", "pw"]);
        assert!(all.values().all(|f| f.mode == 0o440));
        let token: VolumeProjection = from_json(json!({"serviceAccountToken": {"path": "token"}}));
        assert_eq!(
            projection(&pod, &addrs, &r, &token, None),
            Err(SourceError::TokenMissing("token".into()))
        );
        let mut r = r;
        r.tokens.insert(
            crate::volumes::token::TokenKey {
                audience: String::new(),
                expiration_secs: 3600,
            },
            "jwt".into(),
        );
        let files = projection(&pod, &addrs, &r, &token, Some(0o440)).expect("token");
        assert_eq!(files["token"].data, b"jwt");
        assert_eq!(files["token"].mode, 0o440);
    }
}
