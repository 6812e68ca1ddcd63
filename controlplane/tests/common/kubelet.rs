//! A stand-in kubelet for tests with no node runtime: a task that marks
//! pods Running and Ready by writing their status, as a kubelet would once
//! their containers run.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::{Value, json};

/// Pods the kubelet leaves alone: `ready:<pod>` stays unready,
/// `delete:<pod>` stays terminating.
pub type Held = Arc<Mutex<BTreeSet<String>>>;

pub fn hold(held: &Held, names: &[&str]) {
    let mut h = held.lock().expect("lock");
    h.extend(names.iter().map(|n| n.to_string()));
}

pub fn release(held: &Held, name: &str) {
    held.lock().expect("lock").remove(name);
}

/// What the stand-in does; by default, every pod of the client's namespace
/// that is not being deleted becomes Running and Ready.
#[derive(Default)]
pub struct StandInKubelet {
    /// Pods of every namespace.
    pub all_namespaces: bool,
    /// Only pods bound to a node.
    pub bound_only: bool,
    /// A pod being deleted is removed (grace 0), as a kubelet does once its
    /// containers stop.
    pub finish_deletion: bool,
    /// The status lists the pod's containers, running and ready.
    pub container_statuses: bool,
    pub held: Held,
}

impl StandInKubelet {
    /// Runs until aborted, looking at the pods every 100 ms.
    pub fn start(self, client: kube::Client) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let listed: Api<Pod> = if self.all_namespaces {
                Api::all(client.clone())
            } else {
                Api::default_namespaced(client.clone())
            };
            loop {
                if let Ok(list) = listed.list(&ListParams::default()).await {
                    for p in list.items {
                        self.tend(&client, p).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    }

    async fn tend(&self, client: &kube::Client, p: Pod) {
        let name = p.metadata.name.clone().unwrap_or_default();
        let pods: Api<Pod> = match &p.metadata.namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::default_namespaced(client.clone()),
        };
        let is_held = |what: &str| {
            self.held
                .lock()
                .map(|h| h.contains(&format!("{what}:{name}")))
                .unwrap_or(true)
        };
        if p.metadata.deletion_timestamp.is_some() {
            if self.finish_deletion && !is_held("delete") {
                let _ = pods
                    .delete(&name, &DeleteParams::default().grace_period(0))
                    .await;
            }
            return;
        }
        let bound = p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
        let ready = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if (self.bound_only && !bound) || ready || is_held("ready") {
            return;
        }
        let now = jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let mut status = json!({"status": {"phase": "Running", "podIP": "10.244.0.10", "startTime": now,
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now},
                           {"type": "ContainersReady", "status": "True", "lastTransitionTime": now}]}});
        if self.container_statuses {
            let containers: Vec<Value> = p
                .spec
                .iter()
                .flat_map(|s| s.containers.iter())
                .map(|c| json!({"name": c.name, "image": c.image, "imageID": "", "ready": true, "restartCount": 0, "started": true, "state": {"running": {"startedAt": now}}}))
                .collect();
            status["status"]["containerStatuses"] = json!(containers);
        }
        let _ = pods
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await;
    }
}
