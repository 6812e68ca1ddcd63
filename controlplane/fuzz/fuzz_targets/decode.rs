//! Any bytes as an object body of a ConfigMap, Service, Pod or
//! NetworkPolicy (the first byte picks which), decoded as JSON and as
//! protobuf and created through the registry on an in-memory store: it must
//! never panic, and whatever it stores must read back.
//! Run: `cargo xtask fuzz --target apiserver-decode [SECONDS]`.

#![no_main]

use std::sync::OnceLock;

use ferry_controlplane::registry::{Registry, WriteOptions};
use ferry_controlplane::resources::{self, Resource};
use libfuzzer_sys::fuzz_target;

const KINDS: [&Resource; 4] = [
    &resources::CONFIGMAPS,
    &resources::SERVICES,
    &resources::PODS,
    &resources::NETWORKPOLICIES,
];

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
    let res = KINDS[usize::from(selector % 4)];
    let decoded = if selector & 0x80 != 0 {
        ferry_controlplane::api::protobuf::decode(res.kind, body).ok()
    } else {
        serde_json::from_slice(body).ok()
    };
    let Some(value) = decoded else {
        return;
    };
    let registry = registry();
    if let Ok(entry) = registry.create(res, "default", value, &WriteOptions::default()) {
        let stored = match entry.value() {
            Ok(v) => v,
            Err(e) => panic!("stored an object that does not read back: {e}"),
        };
        let name = ferry_controlplane::object::name(&stored).to_string();
        let _ = registry.delete(res, "default", &name, &Default::default());
    }
});
