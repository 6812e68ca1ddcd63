//! A bounded fuzz run in `cargo test`: mutations of real patches of every
//! type (JSON, merge, strategic merge, server-side apply) and of object
//! bodies through the registry's write path, on an in-memory store. Nothing
//! may panic, and whatever is stored must read back through a list wrapper
//! within the limits. The cargo-fuzz targets in controlplane/fuzz run the
//! same paths unbounded (`cargo xtask fuzz --target apiserver-patch`).

use ferry_controlplane::limits::{Limits, shape};
use ferry_controlplane::patch::PatchType;
use ferry_controlplane::registry::{Registry, WriteOptions};
use ferry_controlplane::resources::{self, Resource};
use ferry_controlplane::store::Entry;
use serde_json::{Value, json};

fn fixture() -> Registry {
    let registry = Registry::in_memory().expect("registry");
    let opts = WriteOptions::default();
    registry
        .create(
            &resources::CONFIGMAPS,
            "default",
            json!({"metadata": {"name": "c", "labels": {"a": "b"}}, "data": {"k": "v"}}),
            &opts,
        )
        .expect("configmap");
    registry
        .create(
            &resources::SERVICES,
            "default",
            json!({"metadata": {"name": "s"}, "spec": {"selector": {"app": "a"}, "ports": [{"name": "http", "port": 80}]}}),
            &opts,
        )
        .expect("service");
    registry
        .create(
            &resources::PODS,
            "default",
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox", "ports": [{"containerPort": 80}]}]}}),
            &opts,
        )
        .expect("pod");
    registry
}

/// What a reader needs of a stored object: it parses wrapped as a list item
/// would be, and it is within the limits.
fn readable(entry: &Entry) {
    let limits = Limits::default();
    assert!(entry.json.len() <= limits.max_object_bytes);
    let mut wrapped = b"{\"items\":[".to_vec();
    wrapped.extend_from_slice(&entry.json);
    wrapped.extend_from_slice(b"]}");
    let list: Value = serde_json::from_slice(&wrapped).expect("a stored object reads back");
    assert!(shape(&list["items"][0]).depth <= limits.max_depth);
}

fn seeds() -> Vec<(&'static Resource, PatchType, Vec<u8>)> {
    let cm = &resources::CONFIGMAPS;
    let svc = &resources::SERVICES;
    let pod = &resources::PODS;
    let b = |v: Value| v.to_string().into_bytes();
    vec![
        (
            cm,
            PatchType::Json,
            b(
                json!([{"op": "add", "path": "/data/x", "value": "1"}, {"op": "copy", "from": "/data/k", "path": "/data/y"}, {"op": "move", "from": "/metadata/labels", "path": "/metadata/annotations"}]),
            ),
        ),
        (
            cm,
            PatchType::Merge,
            b(json!({"metadata": {"labels": {"a": null, "c": "d"}}, "data": {"k": "w"}})),
        ),
        (
            cm,
            PatchType::Strategic,
            b(
                json!({"metadata": {"finalizers": ["x/y"], "$deleteFromPrimitiveList/finalizers": ["x/y"]}}),
            ),
        ),
        (
            cm,
            PatchType::Apply,
            b(
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "applied"}}),
            ),
        ),
        (
            svc,
            PatchType::Json,
            b(
                json!([{"op": "replace", "path": "/spec/ports/0/port", "value": 81}, {"op": "test", "path": "/spec/type", "value": "ClusterIP"}]),
            ),
        ),
        (
            svc,
            PatchType::Strategic,
            b(
                json!({"spec": {"ports": [{"port": 443, "name": "https"}, {"port": 80, "$patch": "delete"}], "$setElementOrder/ports": [{"port": 443}]}}),
            ),
        ),
        (
            svc,
            PatchType::Merge,
            b(json!({"spec": {"externalIPs": ["192.0.2.1"], "sessionAffinity": "ClientIP"}})),
        ),
        (
            svc,
            PatchType::Apply,
            b(
                json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}),
            ),
        ),
        (
            pod,
            PatchType::Strategic,
            b(
                json!({"spec": {"containers": [{"name": "c", "env": [{"name": "A", "value": "1"}], "ports": [{"containerPort": 8080}]}]}}),
            ),
        ),
        (
            pod,
            PatchType::Json,
            b(
                json!([{"op": "add", "path": "/metadata/ownerReferences", "value": [{"apiVersion": "v1", "kind": "X", "name": "o", "uid": "u"}]}]),
            ),
        ),
    ]
}

/// xorshift: the same mutations on every run, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn mutate(&mut self, mut body: Vec<u8>) -> Vec<u8> {
        const TOKENS: &[&[u8]] = &[
            b"{",
            b"}",
            b"[",
            b"]",
            b"\"",
            b",",
            b":",
            b"null",
            b"-1",
            b"1e400",
            b"\"$patch\":\"replace\"",
            b"\"$retainKeys\":[]",
            b"{\"op\":\"copy\",\"from\":\"\",\"path\":\"/x\"}",
            b"\"/\"",
            b"~1",
            b"\\u0000",
        ];
        for _ in 0..1 + self.next() % 4 {
            if body.is_empty() {
                body.push(b'{');
            }
            let at = (self.next() as usize) % body.len();
            match self.next() % 4 {
                0 => body[at] = self.next() as u8,
                1 => body.truncate(at.max(1)),
                2 => {
                    let t = TOKENS[(self.next() as usize) % TOKENS.len()];
                    body.splice(at..at, t.iter().copied());
                }
                _ => {
                    // Duplicate a slice: nests and grows documents.
                    let end = (at + (self.next() as usize) % 64).min(body.len());
                    let piece = body[at..end].to_vec();
                    body.splice(at..at, piece);
                }
            }
        }
        body
    }
}

#[test]
fn mutated_patches_never_panic_and_never_store_the_unreadable() {
    let registry = fixture();
    let seeds = seeds();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut stored = 0;
    for i in 0..4000 {
        let (res, ty, seed) = &seeds[i % seeds.len()];
        let name = match res.kind {
            "ConfigMap" => "c",
            "Service" => "s",
            _ => "p",
        };
        let body = rng.mutate(seed.clone());
        let opts = WriteOptions {
            field_manager: Some("fuzz".into()),
            force: i % 3 == 0,
            ..Default::default()
        };
        let sub = (i % 7 == 0 && res.kind != "ConfigMap").then_some("status");
        let result = match ty {
            PatchType::Apply => registry
                .apply(res, "default", name, sub, &body, &opts)
                .map(|(e, _)| e),
            _ => registry.patch(res, "default", name, sub, (*ty, &body), &opts),
        };
        if let Ok(entry) = result {
            readable(&entry);
            stored += 1;
        }
        // Keep the fixture objects alive for later rounds.
        if registry
            .store
            .entry(res, "default", name)
            .expect("entry")
            .is_none()
        {
            let fresh = fixture();
            let obj = fresh
                .store
                .get(res, "default", name)
                .expect("get")
                .expect("fixture");
            let mut obj = (*obj).clone();
            for f in [
                "resourceVersion",
                "uid",
                "creationTimestamp",
                "managedFields",
            ] {
                obj["metadata"].as_object_mut().map(|m| m.remove(f));
            }
            if let Value::Object(m) = &mut obj {
                m.remove("status");
            }
            registry
                .create(res, "default", obj, &WriteOptions::default())
                .expect("recreate");
        }
    }
    // Mutations are mostly broken JSON; a good share must still be writes.
    assert!(stored > 100, "only {stored} mutated patches were stored");
}

#[test]
fn mutated_bodies_never_panic_the_decoders() {
    let registry = fixture();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let bodies = [
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "n", "labels": {"a": "b"}, "managedFields": [{"manager": "m", "operation": "Update", "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {".": {}, "f:k": {}}}}]}, "data": {"k": "v"}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "n"}, "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}], "externalIPs": ["192.0.2.1"]}}),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "n"}, "spec": {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}]}]}}),
    ];
    let kinds = [
        &resources::CONFIGMAPS,
        &resources::SERVICES,
        &resources::NETWORKPOLICIES,
    ];
    for i in 0..3000 {
        let which = i % bodies.len();
        let bytes = rng.mutate(bodies[which].to_string().into_bytes());
        let res = kinds[which];
        // The protobuf decoder takes any bytes.
        let _ = ferry_controlplane::api::protobuf::decode(res.kind, &bytes);
        let Ok(value) = serde_json::from_slice::<Value>(&bytes) else {
            continue;
        };
        if let Ok(entry) = registry.create(res, "default", value, &WriteOptions::default()) {
            readable(&entry);
            let name = ferry_controlplane::object::name(&entry.value().expect("parse")).to_string();
            let _ = registry.delete(res, "default", &name, &Default::default());
        }
    }
}
