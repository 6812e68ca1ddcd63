//! The node's own objects: its Node (registered at start, status posted
//! when it changes and at least every [`REPORT_EVERY`]) and its Lease
//! `kube-node-lease/<name>` (renewed every [`LEASE_RENEW`], what the node
//! lifecycle controller watches for liveness).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::sandbox::Network;
use crate::time;

/// How often the Lease is renewed.
pub const LEASE_RENEW: Duration = Duration::from_secs(10);
/// The Lease's duration.
pub const LEASE_DURATION_SECONDS: i32 = 40;
/// How often the node's status is checked for changes (posted only when
/// it changed): the network config that install-cni writes makes the
/// node Ready within this, and pods waiting for a Ready node follow.
pub const STATUS_CHECK: Duration = Duration::from_secs(1);
/// The longest time between two status posts (upstream's
/// nodeStatusReportFrequency).
pub const REPORT_EVERY: Duration = Duration::from_secs(300);
/// The kubelet version the Node reports.
pub const KUBELET_VERSION: &str = "v1.32.0-ferry";
/// The namespace of node Leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";

/// What the Node says about this node.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    pub name: String,
    pub ips: Vec<IpAddr>,
    pub max_pods: u32,
    pub health_port: u16,
    /// The node API's port (`status.daemonEndpoints.kubeletEndpoint`,
    /// where the apiserver sends `kubectl logs` and `exec`).
    pub kubelet_port: u16,
}

/// The node's registration and heartbeat.
pub struct Registration {
    client: Client,
    settings: NodeSettings,
    network: Network,
    /// Per condition type: (status, lastTransitionTime).
    transitions: BTreeMap<String, (String, String)>,
    last_posted: Option<(Value, Instant)>,
}

impl Registration {
    pub fn new(client: Client, settings: NodeSettings, network: Network) -> Self {
        Registration {
            client,
            settings,
            network,
            transitions: BTreeMap::new(),
            last_posted: None,
        }
    }

    fn labels(&self) -> Value {
        json!({
            "kubernetes.io/hostname": self.settings.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": arch(),
            "beta.kubernetes.io/os": "linux",
            "beta.kubernetes.io/arch": arch(),
        })
    }

    /// Creates the Node, or adds this node's labels to an existing one.
    pub async fn register(&mut self) -> anyhow::Result<()> {
        let api: Api<Node> = Api::all(self.client.clone());
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": self.settings.name, "labels": self.labels()},
        }))?;
        match api.create(&PostParams::default(), &node).await {
            Ok(_) => tracing::info!(node = %self.settings.name, "registered the Node"),
            Err(kube::Error::Api(e)) if e.code == 409 => {
                api.patch(
                    &self.settings.name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"labels": self.labels()}})),
                )
                .await
                .context("updating the Node's labels")?;
                tracing::info!(node = %self.settings.name, "the Node exists: updated it");
            }
            Err(e) => return Err(e).context("creating the Node"),
        }
        self.post_status(true).await
    }

    fn condition(
        &mut self,
        kind: &str,
        status: &str,
        reason: &str,
        message: &str,
        now: &str,
    ) -> Value {
        let entry = self
            .transitions
            .entry(kind.to_owned())
            .or_insert_with(|| (status.to_owned(), now.to_owned()));
        if entry.0 != status {
            *entry = (status.to_owned(), now.to_owned());
        }
        json!({
            "type": kind, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": now, "lastTransitionTime": entry.1,
        })
    }

    /// The node's status now.
    fn status(&mut self) -> Value {
        let now = time::now();
        let (ready, reason, message) = match self.network.config() {
            Ok(_) => (
                "True",
                "KubeletReady",
                "kubelet is posting ready status".to_owned(),
            ),
            Err(e) => (
                "False",
                "KubeletNotReady",
                format!(
                    "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: {e:#}"
                ),
            ),
        };
        let conditions = vec![
            self.condition(
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
                &now,
            ),
            self.condition(
                "DiskPressure",
                "False",
                "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure",
                &now,
            ),
            self.condition(
                "PIDPressure",
                "False",
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
                &now,
            ),
            self.condition("Ready", ready, reason, &message, &now),
        ];
        let mut addresses: Vec<Value> = self
            .settings
            .ips
            .iter()
            .map(|ip| json!({"type": "InternalIP", "address": ip.to_string()}))
            .collect();
        addresses.push(json!({"type": "Hostname", "address": self.settings.name}));
        let capacity = json!({
            "cpu": online_cpus().to_string(),
            "memory": memory_kib().map_or_else(|| "0".to_owned(), |k| format!("{k}Ki")),
            "pods": self.settings.max_pods.to_string(),
        });
        json!({
            "addresses": addresses,
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": conditions,
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.settings.kubelet_port}},
            "nodeInfo": {
                "architecture": arch(),
                "bootID": read_trimmed("/proc/sys/kernel/random/boot_id"),
                "containerRuntimeVersion": format!("ferry://{}", env!("CARGO_PKG_VERSION")),
                "kernelVersion": read_trimmed("/proc/sys/kernel/osrelease"),
                "kubeProxyVersion": "",
                "kubeletVersion": KUBELET_VERSION,
                "machineID": read_trimmed("/etc/machine-id"),
                "operatingSystem": "linux",
                "osImage": os_image(),
                "systemUUID": read_trimmed("/sys/class/dmi/id/product_uuid"),
            },
        })
    }

    /// Posts the status if it changed (heartbeat times aside) or
    /// [`REPORT_EVERY`] passed, or when `force`d.
    pub async fn post_status(&mut self, force: bool) -> anyhow::Result<()> {
        let status = self.status();
        let comparable = without_heartbeats(&status);
        let due = match &self.last_posted {
            None => true,
            Some((last, at)) => *last != comparable || at.elapsed() >= REPORT_EVERY,
        };
        if !(due || force) {
            return Ok(());
        }
        let api: Api<Node> = Api::all(self.client.clone());
        api.patch_status(
            &self.settings.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await
        .context("posting the Node's status")?;
        self.last_posted = Some((comparable, Instant::now()));
        Ok(())
    }

    /// Creates or renews the Lease.
    pub async fn renew_lease(&self) -> anyhow::Result<()> {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), LEASE_NAMESPACE);
        let name = &self.settings.name;
        let spec = json!({
            "holderIdentity": name,
            "leaseDurationSeconds": LEASE_DURATION_SECONDS,
            "renewTime": time::now_micro(),
        });
        match api.get_opt(name).await.context("reading the Lease")? {
            Some(_) => {
                api.patch(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": spec})),
                )
                .await
                .context("renewing the Lease")?;
            }
            None => {
                let nodes: Api<Node> = Api::all(self.client.clone());
                let owner = nodes
                    .get_opt(name)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|n| n.metadata.uid)
                    .map(|uid| json!([{"apiVersion": "v1", "kind": "Node", "name": name, "uid": uid}]));
                let mut meta = json!({"name": name, "namespace": LEASE_NAMESPACE});
                if let Some(o) = owner {
                    meta["ownerReferences"] = o;
                }
                let lease: Lease = serde_json::from_value(json!({
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": meta, "spec": spec,
                }))?;
                api.create(&PostParams::default(), &lease)
                    .await
                    .context("creating the Lease")?;
            }
        }
        Ok(())
    }
}

fn without_heartbeats(status: &Value) -> Value {
    let mut s = status.clone();
    if let Some(conds) = s.get_mut("conditions").and_then(Value::as_array_mut) {
        for c in conds {
            if let Some(o) = c.as_object_mut() {
                o.remove("lastHeartbeatTime");
            }
        }
    }
    s
}

/// GOARCH spelling of this machine's architecture.
pub fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The number of online CPUs (`/sys/devices/system/cpu/online`, e.g.
/// `0-3,5`).
pub fn online_cpus() -> usize {
    let text = read_trimmed("/sys/devices/system/cpu/online");
    let count = parse_cpu_list(&text);
    if count > 0 {
        count
    } else {
        std::thread::available_parallelism().map_or(1, usize::from)
    }
}

fn parse_cpu_list(text: &str) -> usize {
    text.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|part| match part.trim().split_once('-') {
            Some((a, b)) => match (a.parse::<usize>(), b.parse::<usize>()) {
                (Ok(a), Ok(b)) if b >= a => b - a + 1,
                _ => 0,
            },
            None => usize::from(part.trim().parse::<usize>().is_ok()),
        })
        .sum()
}

/// MemTotal from `/proc/meminfo`, in KiB.
pub fn memory_kib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn os_image() -> String {
    let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .unwrap_or_else(|| "Linux".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3"), 4);
        assert_eq!(parse_cpu_list("0-1,4,6-7"), 5);
        assert_eq!(parse_cpu_list("0"), 1);
        assert_eq!(parse_cpu_list(""), 0);
        assert!(online_cpus() >= 1);
        assert!(memory_kib().is_some_and(|m| m > 0));
    }
}
