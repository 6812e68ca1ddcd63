//! A short soak: ordinary writers and watchers side by side with hostile
//! clients (objects too deep, patches that copy too much, bodies too large,
//! garbage, forged continue tokens, half-open TLS handshakes) for a bounded
//! time. Ordinary clients must see no server error, and after a kill -9 the
//! server must start again with every acknowledged write present.

mod common;

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::ApiServer;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::{Value, json};

const SOAK: Duration = Duration::from_secs(8);

/// Counts what hostile requests got, by status code.
type Codes = Arc<Mutex<HashMap<u16, usize>>>;

async fn hostile(client: kube::Client, stop: Arc<AtomicBool>, codes: Codes) {
    let mut deep = json!({});
    for _ in 0..118 {
        deep = json!({ "f:a": deep });
    }
    let requests: Vec<(&str, String, &str, Vec<u8>)> = vec![
        (
            "POST",
            "/api/v1/namespaces/default/configmaps".into(),
            "application/json",
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "deep-", "managedFields": [{"manager": "m", "operation": "Update", "fieldsType": "FieldsV1", "fieldsV1": deep}]}}).to_string().into_bytes(),
        ),
        (
            "PATCH",
            "/api/v1/namespaces/default/configmaps/target".into(),
            "application/json-patch+json",
            Value::Array((0..2000).map(|i| json!({"op": "copy", "from": "/data/k", "path": format!("/data/k{i}")})).collect()).to_string().into_bytes(),
        ),
        (
            "PATCH",
            "/api/v1/namespaces/default/configmaps/target".into(),
            "application/merge-patch+json",
            json!({"data": {"big": "x".repeat(2 * 1024 * 1024)}}).to_string().into_bytes(),
        ),
        (
            "POST",
            "/api/v1/namespaces/default/configmaps".into(),
            "application/vnd.kubernetes.protobuf",
            b"k8s\0\x0a\xff\xff\xff\xff\x0f garbage".to_vec(),
        ),
        (
            "GET",
            "/api/v1/namespaces/default/configmaps?limit=1&continue=eyJydiI6OTk5OTk5OTksIm5zIjoiZGVmYXVsdCIsIm5hbWUiOiJ4In0".into(),
            "application/json",
            Vec::new(),
        ),
    ];
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let (method, path, ct, body) = &requests[i % requests.len()];
        i += 1;
        let req = http::Request::builder()
            .method(*method)
            .uri(path.as_str())
            .header("Content-Type", *ct)
            .body(body.clone())
            .expect("request");
        let code = match client.request_text(req).await {
            Ok(_) => 200,
            Err(kube::Error::Api(s)) => s.code,
            Err(_) => 0,
        };
        *codes.lock().expect("codes").entry(code).or_default() += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ordinary_clients_are_served_through_hostile_ones_and_acked_writes_survive() {
    let mut api = ApiServer::start(&[]);
    let client = api.client().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(
            json!({"metadata": {"name": "target"}, "data": {"k": "x".repeat(64 * 1024)}}),
        )
        .expect("cm"),
    )
    .await
    .expect("target");
    let stop = Arc::new(AtomicBool::new(false));

    // Half-open TLS handshakes, held for the whole soak.
    let port = api.port;
    let held: Vec<std::net::TcpStream> = (0..100)
        .filter_map(|_| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
            s.write_all(&[0x16, 0x03, 0x01]).ok()?;
            Some(s)
        })
        .collect();

    // Writers: each owns its names, so its last acknowledged value per name
    // is what the store must hold.
    let acked: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let server_errors = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..4 {
        let (cms, stop, acked, errors) = (
            cms.clone(),
            stop.clone(),
            acked.clone(),
            server_errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("w{w}-{}", i % 20);
                let value = i.to_string();
                let patch = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"v": value}});
                let result = cms
                    .patch(
                        &name,
                        &PatchParams::apply("soak").force(),
                        &Patch::Apply(&patch),
                    )
                    .await;
                match result {
                    Ok(_) => {
                        acked.lock().expect("acked").insert(name, value);
                    }
                    Err(kube::Error::Api(s)) if s.code >= 500 => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {}
                }
                i += 1;
            }
        }));
    }
    // Watchers: events keep flowing; a 410 only means relist.
    let events = Arc::new(AtomicUsize::new(0));
    for _ in 0..2 {
        let (cms, stop, events) = (cms.clone(), stop.clone(), events.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let rv = match cms.list(&ListParams::default().limit(1)).await {
                    Ok(l) => l.metadata.resource_version.unwrap_or_default(),
                    Err(_) => continue,
                };
                let Ok(stream) = cms.watch(&WatchParams::default().timeout(3), &rv).await else {
                    continue;
                };
                let mut stream = Box::pin(stream);
                while let Some(Ok(ev)) = stream.next().await {
                    if matches!(ev, WatchEvent::Error(_)) {
                        break;
                    }
                    events.fetch_add(1, Ordering::Relaxed);
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
            }
        }));
    }
    let codes: Codes = Arc::default();
    for _ in 0..2 {
        tasks.push(tokio::spawn(hostile(
            client.clone(),
            stop.clone(),
            codes.clone(),
        )));
    }
    tokio::time::sleep(SOAK).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(20), t)
            .await
            .expect("a client task did not stop")
            .expect("client task");
    }
    drop(held);

    let codes = codes.lock().expect("codes").clone();
    assert!(
        codes.keys().all(|c| matches!(c, 400 | 413 | 415 | 422)),
        "hostile requests got {codes:?}"
    );
    assert_eq!(
        server_errors.load(Ordering::Relaxed),
        0,
        "ordinary writes got server errors"
    );
    let acked = acked.lock().expect("acked").clone();
    assert_eq!(acked.len(), 80, "every writer name was written");
    assert!(
        events.load(Ordering::Relaxed) > 100,
        "watchers saw few events"
    );

    api.kill();
    api.restart();
    let cms: Api<ConfigMap> = Api::default_namespaced(api.client().await);
    let stored: HashMap<String, String> = cms
        .list(&ListParams::default())
        .await
        .expect("list after restart")
        .items
        .into_iter()
        .filter_map(|c| {
            let name = c.metadata.name?;
            let v = c.data?.get("v")?.clone();
            Some((name, v))
        })
        .collect();
    // Values only grow per name; a write whose answer was lost in flight may
    // have landed after the last acknowledged one.
    for (name, value) in &acked {
        let kept = stored.get(name).and_then(|v| v.parse::<u64>().ok());
        assert!(
            kept >= value.parse::<u64>().ok(),
            "acknowledged write {name}={value} lost (stored {kept:?})"
        );
    }
}
