//! Writes a careless or hostile client can make, each found by probing the
//! apiserver: none may store what cannot be read back, cost more than a
//! bounded amount, or take away what every cluster relies on.

mod common;

use common::{ApiServer, Backend, eventually};
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// `{"f:a": {"f:a": ... {}}}`, `levels` maps deep.
fn nested(levels: usize) -> Value {
    let mut v = json!({});
    for _ in 1..levels {
        v = json!({ "f:a": v });
    }
    v
}

fn managed(fields_v1: Value) -> Value {
    json!([{"manager": "probe", "operation": "Update", "apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": fields_v1}])
}

/// Sends a raw request; returns the status code and the parsed body.
async fn raw(
    client: &kube::Client,
    method: &str,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, Value) {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("Content-Type", content_type)
        .body(body)
        .expect("request");
    match client.request_text(req).await {
        Ok(text) => (200, serde_json::from_str(&text).unwrap_or(Value::Null)),
        Err(kube::Error::Api(s)) => (s.code, json!({"message": s.message, "reason": s.reason})),
        Err(other) => panic!("{method} {path}: {other:?}"),
    }
}

/// POSTs `body` to the default namespace's `plural`.
async fn post(client: &kube::Client, plural: &str, body: &Value) -> (u16, Value) {
    let path = format!("/api/v1/namespaces/default/{plural}");
    let body = body.to_string().into_bytes();
    raw(client, "POST", &path, "application/json", body).await
}

/// Sends the JSON patch `ops` to ConfigMap `name` in the default namespace.
async fn json_patch(client: &kube::Client, name: &str, ops: &Value) -> (u16, Value) {
    let path = format!("/api/v1/namespaces/default/configmaps/{name}");
    let body = ops.to_string().into_bytes();
    raw(client, "PATCH", &path, "application/json-patch+json", body).await
}

/// A refusal with `want`, its message naming each of `needles`.
fn assert_refused(code: u16, status: &Value, want: u16, needles: &[&str]) {
    assert_eq!(code, want, "{status}");
    let message = status["message"].as_str().unwrap_or_default();
    assert!(
        needles.iter().all(|n| message.contains(n)),
        "{needles:?} in {status}"
    );
}

async fn deep_objects_are_refused_and_everything_stays_readable(backend: Backend) {
    let mut api = ApiServer::start_on(backend, &[]);
    let client = api.client().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());

    // 118 levels in managedFields: refused at admission with the limit named.
    let body = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "deep", "managedFields": managed(nested(118))}});
    let (code, status) = post(&client, "configmaps", &body).await;
    assert_refused(code, &status, 422, &["--max-object-depth", "managedFields"]);
    // The same on a Service.
    let svc = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "deep", "managedFields": managed(nested(118))},
        "spec": {"ports": [{"port": 80}]}});
    let (code, _) = post(&client, "services", &svc).await;
    assert_eq!(code, 422);

    // 60 levels pass; a JSON patch adding 60 more is refused.
    let body = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "half", "managedFields": managed(nested(60))}});
    let (code, status) = post(&client, "configmaps", &body).await;
    assert_eq!(code, 200, "{status}");
    let mut path = String::from("/metadata/managedFields/0/fieldsV1");
    for _ in 1..60 {
        path.push_str("/f:a");
    }
    let patch = json!([{"op": "add", "path": format!("{path}/f:b"), "value": nested(60)}]);
    let (code, status) = json_patch(&client, "half", &patch).await;
    assert_eq!(code, 422, "{status}");
    // A patch that nests by moving a subtree into itself over and over is
    // stopped as it goes.
    let ops: Vec<Value> = (0..200)
        .map(|_| json!({"op": "copy", "from": "/metadata/labels", "path": "/metadata/labels/x"}))
        .collect();
    let labelled = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "grow", "labels": {"a": "b"}}});
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(labelled).expect("cm"),
    )
    .await
    .expect("create");
    let (code, status) = json_patch(&client, "grow", &Value::Array(ops)).await;
    assert!(code == 422 || code == 400, "{code} {status}");

    // Everything is still readable, by kubectl too, and deletable (the
    // two and the published kube-root-ca.crt).
    assert_eq!(
        cms.list(&ListParams::default())
            .await
            .expect("list")
            .items
            .len(),
        3
    );
    if common::have_kubectl() {
        api.kubectl_ok(&["get", "cm", "-A"]);
    }
    cms.delete("half", &DeleteParams::default())
        .await
        .expect("delete");
    // And the server starts again.
    api.restart();
    let cms: Api<ConfigMap> = Api::default_namespaced(api.client().await);
    cms.get("grow").await.expect("readable after a restart");
}

async fn json_patch_and_object_size_are_bounded(backend: Backend) {
    let api = ApiServer::start_on(backend, &[]);
    let client = api.client().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let big = "x".repeat(100 * 1024);
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "c"}, "data": {"k": big}}))
            .expect("cm"),
    )
    .await
    .expect("create");

    // 2,000 copies of 100 KiB would store 200 MB: refused once 3 MiB are copied.
    let ops: Vec<Value> = (0..2000)
        .map(|i| json!({"op": "copy", "from": "/data/k", "path": format!("/data/k{i}")}))
        .collect();
    let (code, status) = json_patch(&client, "c", &Value::Array(ops)).await;
    assert_refused(code, &status, 413, &["--max-json-patch-copy-bytes"]);

    // More than 10,000 operations.
    let ops: Vec<Value> = (0..10_001)
        .map(|_| json!({"op": "test", "path": "/metadata/name", "value": "c"}))
        .collect();
    let (code, status) = json_patch(&client, "c", &Value::Array(ops)).await;
    assert_refused(
        code,
        &status,
        413,
        &["10000", "--max-json-patch-operations"],
    );

    // A merge patch that would store 1.6 MiB (under the 3 MiB body limit).
    let patch = json!({"data": {"more": "y".repeat(1600 * 1024)}});
    let err = cms
        .patch("c", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect_err("too large");
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 413);
            assert!(
                s.message.contains("--max-object-size-bytes"),
                "{}",
                s.message
            );
        }
        other => panic!("{other:?}"),
    }
    // Nothing changed; a smaller write still goes through.
    let c = cms.get("c").await.expect("get");
    assert_eq!(c.data.as_ref().map(|d| d.len()), Some(1));
    cms.patch(
        "c",
        &PatchParams::default(),
        &Patch::Merge(&json!({"data": {"small": "z"}})),
    )
    .await
    .expect("small patch");
}

async fn system_namespaces_stay_and_the_kubernetes_service_comes_back(backend: Backend) {
    let api = ApiServer::start_on(backend, &["--advertise-address", "192.0.2.1"]);
    let client = api.client().await;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    for ns in ["default", "kube-system", "kube-public"] {
        match namespaces.delete(ns, &DeleteParams::default()).await {
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 403);
                assert!(s.message.contains("may not be deleted"), "{}", s.message);
            }
            other => panic!("deleting {ns}: {other:?}"),
        }
    }
    let svcs: Api<Service> = Api::default_namespaced(client.clone());
    let eps: Api<Endpoints> = Api::default_namespaced(client.clone());
    let slices: Api<EndpointSlice> = Api::default_namespaced(client.clone());
    let ep = eps.get("kubernetes").await.expect("kubernetes endpoints");
    let subsets = serde_json::to_value(&ep.subsets).expect("json");
    assert_eq!(subsets[0]["addresses"][0]["ip"], "192.0.2.1");
    assert_eq!(subsets[0]["ports"][0]["port"], api.port);
    let slice = slices.get("kubernetes").await.expect("kubernetes slice");
    assert_eq!(slice.endpoints[0].addresses, ["192.0.2.1"]);

    // Deleted: back at once, with its cluster IP, and so are its endpoints.
    let before = svcs.get("kubernetes").await.expect("svc");
    svcs.delete("kubernetes", &DeleteParams::default())
        .await
        .expect("delete");
    eps.delete("kubernetes", &DeleteParams::default())
        .await
        .expect("delete");
    let after = eventually(10, || async { svcs.get("kubernetes").await.ok() }).await;
    assert_ne!(before.metadata.uid, after.metadata.uid);
    assert_eq!(
        before.spec.and_then(|s| s.cluster_ip),
        after.spec.and_then(|s| s.cluster_ip)
    );
    eventually(10, || async { eps.get("kubernetes").await.ok() }).await;
    // Pointed elsewhere: restored by the periodic pass.
    let hijack = json!({"subsets": [{"addresses": [{"ip": "203.0.113.66"}], "ports": [{"name": "https", "port": 443}]}]});
    eps.patch(
        "kubernetes",
        &PatchParams::default(),
        &Patch::Merge(&hijack),
    )
    .await
    .expect("patch");
    eventually(15, || async {
        let ep = eps.get("kubernetes").await.ok()?;
        let s = serde_json::to_value(&ep.subsets).ok()?;
        (s[0]["addresses"][0]["ip"] == "192.0.2.1").then_some(())
    })
    .await;
    // Creates in default keep working.
    let cms: Api<ConfigMap> = Api::default_namespaced(client);
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "still-here"}})).expect("cm"),
    )
    .await
    .expect("create in default");
}

async fn services_cannot_claim_cluster_addresses(backend: Backend) {
    let api = ApiServer::start_on(backend, &[]);
    let client = api.client().await;
    let svcs: Api<Service> = Api::default_namespaced(client.clone());
    let svc = |name: &str, ips: &[&str]| -> Service {
        serde_json::from_value(json!({"metadata": {"name": name},
            "spec": {"ports": [{"port": 80}], "externalIPs": ips}}))
        .expect("svc")
    };
    for (name, ip) in [
        ("shadow-api", "10.96.0.1"),
        ("shadow-pod", "10.244.3.4"),
        ("loop", "127.0.0.1"),
    ] {
        match svcs.create(&PostParams::default(), &svc(name, &[ip])).await {
            Err(kube::Error::Api(s)) => assert_eq!(s.code, 422, "{ip}: {}", s.message),
            other => panic!("externalIP {ip} accepted: {other:?}"),
        }
    }
    svcs.create(&PostParams::default(), &svc("outside", &["192.0.2.10"]))
        .await
        .expect("an address outside the cluster's ranges");
    // The load-balancer status cannot claim the kubernetes Service's address.
    let status = json!({"status": {"loadBalancer": {"ingress": [{"ip": "10.96.0.1"}]}}});
    let err = svcs
        .patch_status("outside", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect_err("ingress in the service CIDR");
    assert!(matches!(err, kube::Error::Api(s) if s.code == 422));

    // With DenyServiceExternalIPs, no new ones at all; the old ones stay.
    drop(api);
    let api = ApiServer::start_on(backend, &["--deny-service-external-ips"]);
    let svcs: Api<Service> = Api::default_namespaced(api.client().await);
    match svcs
        .create(&PostParams::default(), &svc("denied", &["192.0.2.10"]))
        .await
    {
        Err(kube::Error::Api(s)) => assert!(s.message.contains("disabled"), "{}", s.message),
        other => panic!("externalIPs accepted: {other:?}"),
    }
}

async fn managed_fields_names_and_continue_tokens(backend: Backend) {
    let api = ApiServer::start_on(backend, &[]);
    let client = api.client().await;
    // A fieldsV1 that is not a field set is ignored, as kube-apiserver does.
    let body = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "odd", "managedFields": managed(json!({"x:bad": 5}))}});
    let (code, obj) = post(&client, "configmaps", &body).await;
    assert_eq!(code, 200);
    assert!(!obj.to_string().contains("x:bad"), "{obj}");
    // An operation other than Apply or Update is invalid.
    let mut bad = managed(json!({}));
    bad[0]["operation"] = json!("Merge");
    let body = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "odd2", "managedFields": bad}});
    let (code, status) = post(&client, "configmaps", &body).await;
    assert_eq!(code, 422, "{status}");

    // Names up to 253 characters, with no 63-character rule per label.
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let long = "a".repeat(253);
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": long}})).expect("cm"),
    )
    .await
    .expect("a 253-character name");

    // Continue tokens this server did not issue for this list are refused.
    use base64::Engine;
    let token = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    for forged in [
        json!({"rv": 999_999_999u64, "ns": "default", "name": "odd"}),
        json!({"rv": 1, "ns": "kube-system", "name": "odd"}),
    ] {
        let path = format!(
            "/api/v1/namespaces/default/configmaps?limit=1&continue={}",
            token(forged.clone())
        );
        let (code, _) = raw(&client, "GET", &path, "application/json", Vec::new()).await;
        assert_eq!(code, 400, "{forged}");
    }
    let page = cms
        .list(&ListParams::default().limit(1))
        .await
        .expect("page");
    let next = page.metadata.continue_.expect("a continue token");
    cms.list(&ListParams::default().limit(1).continue_token(&next))
        .await
        .expect("a real token still works");
}

/// The watch history is bounded by bytes: big objects rewritten many times
/// push old events out, and a watch behind them gets 410.
#[tokio::test]
async fn watch_history_is_bounded_by_bytes() {
    let api = ApiServer::start(&["--watch-history-bytes", "4000000"]);
    let cms: Api<ConfigMap> = Api::default_namespaced(api.client().await);
    let created = cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "big"}, "data": {"k": "x".repeat(400_000)}}),
            )
            .expect("cm"),
        )
        .await
        .expect("create");
    let first = created.metadata.resource_version.expect("rv");
    let mut last = first.clone();
    for i in 0..12 {
        let c = cms
            .patch(
                "big",
                &PatchParams::default(),
                &Patch::Merge(&json!({"data": {"k": format!("{i}{}", "y".repeat(400_000))}})),
            )
            .await
            .expect("patch");
        last = c.metadata.resource_version.expect("rv");
    }
    let watch = |rv: String| {
        let cms = cms.clone();
        async move {
            let mut stream = Box::pin(
                cms.watch(&kube::api::WatchParams::default().timeout(2), &rv)
                    .await
                    .expect("watch"),
            );
            futures_util::StreamExt::next(&mut stream).await
        }
    };
    match watch(first).await {
        Some(Ok(kube::api::WatchEvent::Error(e))) => assert_eq!(e.code, 410),
        Some(Err(kube::Error::Api(s))) => assert_eq!(s.code, 410),
        other => panic!("a watch behind the byte budget was not expired: {other:?}"),
    }
    // A watch from a recent version is served (it times out with no event).
    assert!(
        !matches!(watch(last).await, Some(Ok(kube::api::WatchEvent::Error(_)))),
        "a recent version must still be watchable"
    );
}

/// A stored object no reader can parse (written by an older server, or
/// corrupted on disk) is set aside at startup: the server starts and serves
/// everything else.
#[test]
fn unreadable_stored_objects_are_quarantined_not_fatal() {
    if !common::have_kubectl() {
        return;
    }
    let mut api = ApiServer::start(&[]);
    api.kubectl_ok(&["create", "configmap", "good", "--from-literal=k=v"]);
    api.kill();
    let db = rusqlite::Connection::open(api.data_dir().join("state.db")).expect("open db");
    let mut deep = String::from(
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"deep","namespace":"default","managedFields":[{"fieldsV1":"#,
    );
    deep.push_str(&"{\"f:a\":".repeat(236));
    deep.push_str("{}");
    deep.push_str(&"}".repeat(236));
    deep.push_str("}]}}");
    for (key, value) in [
        ("/core/configmaps/default/deep", deep.into_bytes()),
        (
            "/core/configmaps/default/torn",
            b"{\"apiVersion\":\"v1\",\"ki".to_vec(),
        ),
    ] {
        db.execute(
            "INSERT INTO objects (key, value, revision) VALUES (?1, ?2, (SELECT value FROM meta WHERE name = 'revision'))",
            rusqlite::params![key, value],
        )
        .expect("insert");
    }
    drop(db);
    api.restart();
    let out = api.kubectl_ok(&["get", "cm", "-A", "-o", "name"]);
    assert!(out.contains("configmap/good"), "{out}");
    assert!(!out.contains("deep") && !out.contains("torn"), "{out}");
    let saved: Vec<String> = std::fs::read_dir(api.data_dir().join("quarantine"))
        .expect("quarantine dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(saved.len(), 2, "{saved:?}");
    let log = std::fs::read_to_string(api.dir.path().join("apiserver.log")).expect("apiserver log");
    assert!(log.contains("QUARANTINED"), "{log}");
    // Set aside once: the next start is clean, and the names are free again.
    api.restart();
    api.kubectl_ok(&["create", "configmap", "deep"]);
}

on_both_backends!(
    deep_objects_are_refused_and_everything_stays_readable,
    json_patch_and_object_size_are_bounded,
    system_namespaces_stay_and_the_kubernetes_service_comes_back,
    services_cannot_claim_cluster_addresses,
    managed_fields_names_and_continue_tokens,
);
