//! Any bytes as a JSON, merge, strategic merge or apply patch of a
//! ConfigMap, a Service or a Pod (the first byte picks which), through the
//! registry's whole write path on an in-memory store: it must never panic,
//! and whatever it stores must read back within the limits.
//! Run: `cargo xtask fuzz --target apiserver-patch [SECONDS]`.

#![no_main]

use std::sync::OnceLock;

use ferry_controlplane::limits::{Limits, shape};
use ferry_controlplane::patch::PatchType;
use ferry_controlplane::registry::{Registry, WriteOptions};
use ferry_controlplane::resources::{self, Resource};
use libfuzzer_sys::fuzz_target;
use serde_json::json;

const TARGETS: [(&Resource, &str); 3] = [
    (&resources::CONFIGMAPS, "c"),
    (&resources::SERVICES, "s"),
    (&resources::PODS, "p"),
];

fn objects() -> [serde_json::Value; 3] {
    [
        json!({"metadata": {"name": "c", "labels": {"a": "b"}}, "data": {"k": "v"}}),
        json!({"metadata": {"name": "s"}, "spec": {"selector": {"app": "a"}, "ports": [{"name": "http", "port": 80}]}}),
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}),
    ]
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| match Registry::in_memory() {
        Ok(r) => r,
        Err(e) => panic!("registry: {e}"),
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let registry = registry();
    let (res, name) = TARGETS[usize::from(selector % 3)];
    // Each input starts from the fixture object.
    let _ = registry.delete(res, "default", name, &Default::default());
    let fixture = objects()[usize::from(selector % 3)].clone();
    if registry
        .create(res, "default", fixture, &WriteOptions::default())
        .is_err()
    {
        return;
    }
    let opts = WriteOptions {
        field_manager: Some("fuzz".into()),
        force: selector & 0x80 != 0,
        ..Default::default()
    };
    let sub = (selector & 0x40 != 0 && res.kind != "ConfigMap").then_some("status");
    let ty = [
        PatchType::Json,
        PatchType::Merge,
        PatchType::Strategic,
        PatchType::Apply,
    ][usize::from((selector / 3) % 4)];
    let result = match ty {
        PatchType::Apply => registry
            .apply(res, "default", name, sub, body, &opts)
            .map(|(e, _)| e),
        _ => registry.patch(res, "default", name, sub, (ty, body), &opts),
    };
    if let Ok(entry) = result {
        let limits = Limits::default();
        assert!(entry.json.len() <= limits.max_object_bytes);
        let mut wrapped = b"{\"items\":[".to_vec();
        wrapped.extend_from_slice(&entry.json);
        wrapped.extend_from_slice(b"]}");
        match serde_json::from_slice::<serde_json::Value>(&wrapped) {
            Ok(list) => assert!(shape(&list["items"][0]).depth <= limits.max_depth),
            Err(e) => panic!("stored an object that does not read back: {e}"),
        }
    }
});
