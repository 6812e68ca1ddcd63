//! The underlay's router: in the underlay namespace (where the apiserver
//! and the host's relays live), a route per node pod CIDR via that node's
//! address, following the Nodes as node IPAM hands out their CIDRs. Without
//! it a pod's packets reach the apiserver but its answers have no way back
//! (the `kubernetes` Service, in-cluster clients). What a physical network
//! gets from static routes or BGP; the nodes route among themselves
//! (ferry-agent).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ferry_dataplane::nodes::NodeInfo;
use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};
use tokio::task::JoinHandle;

/// Routes `(cidr, via)` a node needs.
type Routes = BTreeSet<(String, IpAddr)>;

/// The routing task; dropping it stops following (the routes go with the
/// namespace).
#[derive(Debug)]
pub struct PodRoutes {
    task: JoinHandle<()>,
    routed: Arc<AtomicUsize>,
}

impl PodRoutes {
    /// Starts following the Nodes, routing in namespace `underlay`. Must be
    /// called inside a tokio runtime.
    pub fn start(client: Client, underlay: String) -> Self {
        let routed = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(run(client, underlay, Arc::clone(&routed)));
        Self { task, routed }
    }

    /// How many nodes have all their pod CIDRs routed.
    pub fn routed_nodes(&self) -> usize {
        self.routed.load(Ordering::Relaxed)
    }
}

impl Drop for PodRoutes {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The routes a Node asks for: each pod CIDR via its InternalIP of the same
/// family (the agent's reading of a Node, `ferry_dataplane::nodes`).
fn wanted(node: &Node) -> Routes {
    let info = NodeInfo::from_node(node);
    info.pod_cidrs
        .iter()
        .filter_map(|cidr| Some((cidr.to_string(), info.ip_for(cidr)?)))
        .collect()
}

async fn ip_route(underlay: &str, verb: &str, cidr: &str, via: Option<IpAddr>) -> bool {
    let mut cmd = tokio::process::Command::new("ip");
    cmd.args(["-n", underlay, "route", verb, cidr]);
    if let Some(via) = via {
        cmd.args(["via", &via.to_string()]);
    }
    cmd.kill_on_drop(true);
    match tokio::time::timeout(Duration::from_secs(10), cmd.output()).await {
        Ok(Ok(out)) if out.status.success() => true,
        Ok(Ok(out)) => {
            tracing::warn!(cidr, verb, error = %String::from_utf8_lossy(&out.stderr).trim(), "underlay route");
            false
        }
        Ok(Err(e)) => {
            tracing::warn!(cidr, verb, error = %e, "running ip route");
            false
        }
        Err(_) => {
            tracing::warn!(cidr, verb, "ip route timed out");
            false
        }
    }
}

async fn run(client: Client, underlay: String, routed: Arc<AtomicUsize>) {
    let api: Api<Node> = Api::all(client);
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    // What is installed, per node.
    let mut installed: BTreeMap<String, Routes> = BTreeMap::new();
    let mut seen: BTreeMap<String, Routes> = BTreeMap::new();
    loop {
        let event = match stream.next().await {
            Some(Ok(ev)) => ev,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "watching nodes for underlay routes");
                continue;
            }
            None => return,
        };
        let settled = match event {
            watcher::Event::Apply(n) | watcher::Event::InitApply(n) => {
                seen.insert(n.metadata.name.clone().unwrap_or_default(), wanted(&n));
                true
            }
            watcher::Event::Delete(n) => {
                seen.remove(n.metadata.name.as_deref().unwrap_or_default());
                true
            }
            watcher::Event::Init => {
                seen.clear();
                false
            }
            watcher::Event::InitDone => true,
        };
        if !settled {
            continue;
        }
        // Removed first (a CIDR may move to another node), then added.
        for (name, routes) in &installed {
            let keep = seen.get(name);
            for (cidr, via) in routes {
                if !keep.is_some_and(|k| k.contains(&(cidr.clone(), *via))) {
                    ip_route(&underlay, "del", cidr, None).await;
                }
            }
        }
        installed.retain(|name, _| seen.contains_key(name));
        for (name, routes) in &seen {
            let have = installed.entry(name.clone()).or_default();
            for (cidr, via) in routes {
                if !have.contains(&(cidr.clone(), *via))
                    && ip_route(&underlay, "replace", cidr, Some(*via)).await
                {
                    have.insert((cidr.clone(), *via));
                }
            }
            have.retain(|r| routes.contains(r));
        }
        let complete = seen
            .iter()
            .filter(|(name, routes)| {
                !routes.is_empty() && installed.get(*name).is_some_and(|i| i == *routes)
            })
            .count();
        routed.store(complete, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus};

    #[test]
    fn each_pod_cidr_goes_via_the_internal_ip_of_its_family() {
        let node = Node {
            spec: Some(NodeSpec {
                pod_cidrs: Some(vec!["10.244.1.0/24".into(), "fd00:10:244:1::/64".into()]),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                addresses: Some(vec![
                    NodeAddress {
                        type_: "Hostname".into(),
                        address: "n1".into(),
                    },
                    NodeAddress {
                        type_: "InternalIP".into(),
                        address: "fd00:31::2".into(),
                    },
                    NodeAddress {
                        type_: "InternalIP".into(),
                        address: "172.31.0.2".into(),
                    },
                ]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let routes: Vec<(String, IpAddr)> = wanted(&node).into_iter().collect();
        assert_eq!(
            routes,
            vec![
                ("10.244.1.0/24".into(), "172.31.0.2".parse().expect("ip")),
                (
                    "fd00:10:244:1::/64".into(),
                    "fd00:31::2".parse().expect("ip")
                ),
            ]
        );
        // No address of the family: no route rather than a wrong one.
        let mut v4_only = node.clone();
        if let Some(s) = v4_only.status.as_mut() {
            s.addresses = Some(vec![NodeAddress {
                type_: "InternalIP".into(),
                address: "172.31.0.2".into(),
            }]);
        }
        assert_eq!(wanted(&v4_only).len(), 1);
    }
}
