//! A write acknowledged to a client survives kill -9 of the apiserver.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{ApiServer, Backend};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

async fn acknowledged_writes_survive_kill_9(backend: Backend) {
    let mut api = ApiServer::start_on(backend, &[]);
    let cms: Api<ConfigMap> = Api::default_namespaced(api.client().await);
    let acked = Arc::new(Mutex::new(Vec::<(String, u64)>::new()));
    let mut writers = Vec::new();
    for w in 0..8 {
        let cms = cms.clone();
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let name = format!("w{w}-{i}");
                let obj: ConfigMap = serde_json::from_value(
                    json!({"metadata": {"name": name}, "data": {"i": i.to_string()}}),
                )
                .expect("cm");
                match cms.create(&PostParams::default(), &obj).await {
                    Ok(c) => {
                        let rv = c
                            .metadata
                            .resource_version
                            .and_then(|r| r.parse().ok())
                            .expect("rv");
                        acked.lock().expect("lock").push((name, rv));
                    }
                    Err(_) => break,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    api.kill();
    for w in writers {
        let _ = tokio::time::timeout(Duration::from_secs(10), w).await;
    }
    let acked = acked.lock().expect("lock").clone();
    assert!(
        acked.len() > 50,
        "the burst made only {} writes",
        acked.len()
    );

    api.restart();
    let cms: Api<ConfigMap> = Api::default_namespaced(api.client().await);
    let list = cms.list(&ListParams::default()).await.expect("list");
    let stored: std::collections::HashMap<String, u64> = list
        .items
        .iter()
        .map(|c| {
            (
                c.metadata.name.clone().expect("name"),
                c.metadata
                    .resource_version
                    .as_deref()
                    .and_then(|r| r.parse().ok())
                    .expect("rv"),
            )
        })
        .collect();
    for (name, rv) in &acked {
        assert_eq!(
            stored.get(name),
            Some(rv),
            "acknowledged write {name}@{rv} lost"
        );
    }
    // Revisions keep increasing after the restart.
    let max = acked.iter().map(|(_, rv)| *rv).max().unwrap_or(0);
    let next = cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "after"}})).expect("cm"),
        )
        .await
        .expect("create after restart");
    let next_rv: u64 = next
        .metadata
        .resource_version
        .and_then(|r| r.parse().ok())
        .expect("rv");
    assert!(next_rv > max);
}

on_both_backends!(acknowledged_writes_survive_kill_9);
