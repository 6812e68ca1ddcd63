//! The node's podCIDRs from the Kubernetes API: the only path that talks to
//! the API server, and the only one that builds an async runtime for it (a
//! current-thread one, for this call).

use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};

use crate::error::{Error, Result};
use crate::input::{KUBECONFIG_LIMIT, open_regular_file};

/// How long one lookup may take before the runtime is told to retry.
const TIMEOUT: Duration = Duration::from_secs(10);

/// `spec.podCIDRs` (or the older `spec.podCIDR`) of `node`. A node without
/// one yet, or an API server that cannot be reached, is transient: error 11.
pub fn node_pod_cidrs(kubeconfig: &Path, node: &str) -> Result<Vec<IpNet>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("building the runtime for the API lookup", e))?;
    rt.block_on(async {
        match tokio::time::timeout(TIMEOUT, lookup(kubeconfig, node)).await {
            Ok(r) => r,
            Err(_) => Err(Error::TryAgainLater(format!(
                "reading node {node} from the API server timed out after {TIMEOUT:?}"
            ))),
        }
    })
}

async fn lookup(kubeconfig: &Path, node: &str) -> Result<Vec<IpNet>> {
    if !kubeconfig.exists() {
        // The node agent writes it; until then the plugin is not ready.
        return Err(Error::TryAgainLater(format!(
            "kubeconfig {} does not exist (yet)",
            kubeconfig.display()
        )));
    }
    // Only a regular file of bounded size is handed to the reader (which
    // would wait for ever on a FIFO, beyond reach of the timeout, since the
    // read blocks the runtime's only thread).
    drop(open_regular_file(
        kubeconfig,
        "kubeconfig",
        KUBECONFIG_LIMIT,
    )?);
    let kc = Kubeconfig::read_from(kubeconfig).map_err(|e| {
        Error::InvalidConfig(format!("reading kubeconfig {}: {e}", kubeconfig.display()))
    })?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| Error::InvalidConfig(format!("kubeconfig {}: {e}", kubeconfig.display())))?;
    let client =
        Client::try_from(config).map_err(|e| Error::InvalidConfig(format!("API client: {e}")))?;
    let nodes: Api<Node> = Api::all(client);
    let obj = match nodes.get(node).await {
        Ok(n) => n,
        Err(kube::Error::Api(status)) if status.code == 404 => {
            return Err(Error::TryAgainLater(format!(
                "node {node} does not exist (yet)"
            )));
        }
        Err(e) => return Err(Error::TryAgainLater(format!("reading node {node}: {e}"))),
    };
    let spec = obj.spec.unwrap_or_default();
    let raw: Vec<String> = match spec.pod_cidrs {
        Some(list) if !list.is_empty() => list,
        _ => spec.pod_cidr.into_iter().collect(),
    };
    if raw.is_empty() {
        return Err(Error::TryAgainLater(format!(
            "node {node} has no podCIDR yet"
        )));
    }
    raw.iter()
        .map(|s| {
            s.parse::<IpNet>().map_err(|e| {
                Error::InvalidConfig(format!("node {node} has an invalid podCIDR {s:?}: {e}"))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A FIFO as kubeconfig used to hang the plugin (the blocking read is
    /// out of the timeout's reach).
    #[test]
    fn fifo_kubeconfig_refused_at_once() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let fifo = tmp.path().join("kubeconfig");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(node_pod_cidrs(&fifo, "node-1").err().map(|e| e.code()));
        });
        let code = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("a FIFO kubeconfig blocked the lookup");
        assert_eq!(code, Some(7));
    }
}
