//! Events from "kubelet" about the pods of this node, as upstream reports
//! them (Pulled, Created, Started, Killing, BackOff, Unhealthy, Failed).

use std::sync::atomic::{AtomicU64, Ordering};

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::json;

use crate::time;

/// Creates Events for one node's pods. Failures are logged, never fatal.
#[derive(Clone)]
pub struct Recorder {
    client: Client,
    host: String,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// Normal or Warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Normal,
    Warning,
}

impl Recorder {
    pub fn new(client: Client, host: String) -> Self {
        Recorder { client, host }
    }

    /// Records `reason` about `pod` (and its `container`, when given).
    pub async fn pod(
        &self,
        pod: &Pod,
        container: Option<&str>,
        kind: Type,
        reason: &str,
        message: &str,
    ) {
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = pod.metadata.name.clone().unwrap_or_default();
        let now = time::now();
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mut involved = json!({
            "kind": "Pod", "apiVersion": "v1", "namespace": namespace, "name": name,
            "uid": pod.metadata.uid, "resourceVersion": pod.metadata.resource_version,
        });
        if let Some(c) = container {
            involved["fieldPath"] = json!(format!("spec.containers{{{c}}}"));
        }
        let event = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": format!("{name}.{nanos:x}{seq:x}"), "namespace": namespace},
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "type": match kind { Type::Normal => "Normal", Type::Warning => "Warning" },
            "source": {"component": "kubelet", "host": self.host},
            "reportingComponent": "kubelet",
            "reportingInstance": self.host,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        });
        let event: Event = match serde_json::from_value(event) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "building an event");
                return;
            }
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let sent = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            api.create(&PostParams::default(), &event),
        )
        .await;
        match sent {
            Ok(Ok(_)) => tracing::debug!(pod = %name, reason, message, "event"),
            Ok(Err(e)) => tracing::warn!(pod = %name, reason, error = %e, "recording an event"),
            Err(_) => tracing::warn!(pod = %name, reason, "recording an event timed out"),
        }
    }
}
