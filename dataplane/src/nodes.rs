//! What routing needs from Node objects: pod CIDRs and underlay addresses.

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;

/// One node as routing sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    /// `spec.podCIDRs` (or `spec.podCIDR`).
    pub pod_cidrs: Vec<IpNet>,
    /// `status.addresses` of type InternalIP, in order.
    pub internal_ips: Vec<IpAddr>,
}

impl NodeInfo {
    /// Reads a Node; unparsable CIDRs and addresses are skipped.
    pub fn from_node(node: &Node) -> Self {
        let spec = node.spec.as_ref();
        let mut cidrs: Vec<String> = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
        if cidrs.is_empty()
            && let Some(c) = spec.and_then(|s| s.pod_cidr.clone())
        {
            cidrs.push(c);
        }
        let internal_ips = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .filter(|a| a.type_ == "InternalIP")
            .filter_map(|a| a.address.parse().ok())
            .collect();
        Self {
            name: node.metadata.name.clone().unwrap_or_default(),
            pod_cidrs: cidrs.iter().filter_map(|c| c.parse().ok()).collect(),
            internal_ips,
        }
    }

    /// The node's underlay address of the same family as `net`.
    pub fn ip_for(&self, net: &IpNet) -> Option<IpAddr> {
        self.internal_ips
            .iter()
            .copied()
            .find(|ip| ip.is_ipv4() == matches!(net, IpNet::V4(_)))
    }

    /// The address VXLAN tunnels to: IPv4 when the node has one.
    pub fn tunnel_ip(&self) -> Option<IpAddr> {
        self.internal_ips
            .iter()
            .copied()
            .find(IpAddr::is_ipv4)
            .or_else(|| self.internal_ips.first().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cidrs_and_addresses() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1"},
            "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fd00:244:1::/64"]},
            "status": {"addresses": [{"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "fd00::3"}, {"type": "InternalIP", "address": "172.31.0.3"}]}
        }))
        .expect("node");
        let info = NodeInfo::from_node(&node);
        assert_eq!(info.pod_cidrs.len(), 2);
        assert_eq!(
            info.tunnel_ip().map(|i| i.to_string()).as_deref(),
            Some("172.31.0.3")
        );
        let v6: IpNet = "fd00:244:1::/64".parse().expect("net");
        assert_eq!(
            info.ip_for(&v6).map(|i| i.to_string()).as_deref(),
            Some("fd00::3")
        );
    }
}
