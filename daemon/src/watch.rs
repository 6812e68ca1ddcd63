//! Watches that survive an object they cannot decode.
//!
//! kube-rs's `watcher` decodes a whole list page, or a watch event, into the
//! typed object; one object of the wrong shape (a field of the wrong type, a
//! value out of range) fails the whole list, and the watcher retries the same
//! list forever: the daemon never syncs. [`Decoded<K>`] takes every object
//! first as its raw JSON text, which cannot fail for the shape of one
//! object, then decodes that into `K`; an object that does not fit is kept as [`Decoded::Bad`]
//! with its metadata (when that parses) and the error, so the watcher keeps
//! going and the daemon decides what a bad object means.
//!
//! Ferry's daemons treat a bad object as absent: on a list it is left out,
//! an update that turns an object bad removes what the good version had
//! put in place (the daemon's view stays that of the objects it can read,
//! never a mix of an old version and a newer one it could not read), and
//! each one is logged and counted in [`DecodeErrors`]
//! (`ferry_watch_decode_errors_total{kind}`).
//!
//! What a JSON parser refuses for the whole document (nesting beyond serde's
//! recursion limit, invalid UTF-8) cannot be tolerated here; the apiserver
//! must refuse such objects.

use std::borrow::Cow;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Deserializer};
use tracing::error;

/// An object from the API: decoded, or kept with why it could not be.
#[derive(Clone, Debug)]
pub enum Decoded<K> {
    Ok(K),
    Bad {
        /// Its metadata, if that much decoded (default otherwise).
        meta: Box<ObjectMeta>,
        /// Why it did not decode as `K`.
        error: String,
    },
}

impl<K> Decoded<K> {
    /// The object, or `None` (with the reason) for a bad one.
    pub fn ok(self) -> Option<K> {
        match self {
            Decoded::Ok(k) => Some(k),
            Decoded::Bad { .. } => None,
        }
    }

    pub fn is_ok(&self) -> bool {
        matches!(self, Decoded::Ok(_))
    }

    /// The decode error of a bad object.
    pub fn error(&self) -> Option<&str> {
        match self {
            Decoded::Ok(_) => None,
            Decoded::Bad { error, .. } => Some(error),
        }
    }
}

impl<'de, K: serde::de::DeserializeOwned> Deserialize<'de> for Decoded<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // The object's text, one allocation, rather than a tree of values:
        // a list of thousands of objects decodes with far less churn.
        let raw = Box::<serde_json::value::RawValue>::deserialize(deserializer)?;
        match serde_json::from_str::<K>(raw.get()) {
            Ok(k) => Ok(Decoded::Ok(k)),
            Err(e) => {
                let meta = serde_json::from_str::<MetadataOnly>(raw.get())
                    .ok()
                    .and_then(|m| m.metadata)
                    .unwrap_or_default();
                Ok(Decoded::Bad {
                    meta: Box::new(meta),
                    error: e.to_string(),
                })
            }
        }
    }
}

/// An object's metadata, whatever the rest holds.
#[derive(Deserialize)]
struct MetadataOnly {
    #[serde(default)]
    metadata: Option<ObjectMeta>,
}

impl<K: Resource> Resource for Decoded<K> {
    type DynamicType = K::DynamicType;
    type Scope = K::Scope;

    fn kind(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::kind(dt)
    }

    fn group(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::group(dt)
    }

    fn version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::version(dt)
    }

    fn api_version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::api_version(dt)
    }

    fn plural(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        match self {
            Decoded::Ok(k) => k.meta(),
            Decoded::Bad { meta, .. } => meta,
        }
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Decoded::Ok(k) => k.meta_mut(),
            Decoded::Bad { meta, .. } => meta,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

/// `ferry_watch_decode_errors_total{kind}`: objects from the API skipped
/// because they did not decode.
#[derive(Clone, Default)]
pub struct DecodeErrors {
    family: Family<KindLabels, Counter>,
}

impl fmt::Debug for DecodeErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DecodeErrors")
    }
}

impl DecodeErrors {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "ferry_watch_decode_errors",
            "Objects from the API skipped because they could not be decoded",
            self.family.clone(),
        );
    }

    /// Logs and counts a bad object of kind `kind`; hands a good one back.
    pub fn check<K>(&self, kind: &str, obj: Decoded<K>) -> Option<K> {
        self.observe(kind, &obj);
        obj.ok()
    }

    /// Logs and counts `obj` if it is bad; whether it is good.
    pub fn observe<K>(&self, kind: &str, obj: &Decoded<K>) -> bool {
        let Decoded::Bad { meta, error } = obj else {
            return true;
        };
        error!(
            kind,
            namespace = meta.namespace.as_deref().unwrap_or_default(),
            name = meta.name.as_deref().unwrap_or_default(),
            %error,
            "skipping an object that cannot be decoded; it is treated as absent"
        );
        self.family
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc();
        false
    }

    /// Bad objects counted for `kind` so far.
    pub fn count(&self, kind: &str) -> u64 {
        self.family
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Service;
    use kube::ResourceExt as _;
    use serde_json::json;

    #[test]
    fn a_good_object_decodes() {
        let obj: Decoded<Service> = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "default", "resourceVersion": "7"},
            "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 80}]},
        }))
        .expect("decodes");
        assert!(obj.is_ok());
        assert_eq!(obj.name_any(), "web");
        assert_eq!(obj.resource_version().as_deref(), Some("7"));
    }

    #[test]
    fn a_list_with_a_bad_item_still_decodes_and_keeps_its_metadata() {
        let list: kube::core::ObjectList<Decoded<Service>> = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ServiceList", "metadata": {"resourceVersion": "9"},
            "items": [
                {"metadata": {"name": "good", "namespace": "a"}, "spec": {"ports": [{"port": 80}]}},
                {"metadata": {"name": "bad", "namespace": "a", "resourceVersion": "8"},
                 "spec": {"ports": "eighty"}},
                {"metadata": {"name": "bad2", "namespace": "a"}, "spec": {"clusterIP": 5}},
                {"metadata": 17, "spec": {}},
            ],
        }))
        .expect("the list decodes");
        // The same list as plain Services fails as a whole: what kube-rs hits.
        let plain: Result<kube::core::ObjectList<Service>, _> =
            serde_json::from_value(json!({"metadata": {}, "items": [
                {"metadata": {"name": "bad"}, "spec": {"ports": "eighty"}}]}));
        assert!(plain.is_err());
        let items = list.items;
        assert!(items[0].is_ok());
        assert!(!items[1].is_ok());
        assert_eq!(items[1].name_any(), "bad");
        assert_eq!(items[1].namespace().as_deref(), Some("a"));
        assert_eq!(items[1].resource_version().as_deref(), Some("8"));
        assert!(items[1].error().is_some_and(|e| e.contains("invalid type")));
        assert_eq!(items[2].name_any(), "bad2");
        assert!(!items[3].is_ok());
        assert_eq!(items[3].meta().name, None);

        let errors = DecodeErrors::default();
        let good: Vec<Service> = items
            .into_iter()
            .filter_map(|o| errors.check("Service", o))
            .collect();
        assert_eq!(good.len(), 1);
        assert_eq!(errors.count("Service"), 3);
    }

    #[test]
    fn a_watch_event_with_a_bad_object_decodes() {
        let ev: kube::core::WatchEvent<Decoded<Service>> = serde_json::from_str(
            r#"{"type":"MODIFIED","object":{"apiVersion":"v1","kind":"Service",
                "metadata":{"name":"web","namespace":"d","resourceVersion":"12"},
                "spec":{"ports":"x"}}}"#,
        )
        .expect("event decodes");
        match ev {
            kube::core::WatchEvent::Modified(obj) => {
                assert!(!obj.is_ok());
                assert_eq!(obj.resource_version().as_deref(), Some("12"));
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
}
