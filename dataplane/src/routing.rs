//! Routes between nodes' pod CIDRs, kept equal to what the Node objects say.
//!
//! Direct mode (nodes share L2): `podCIDR via nodeIP` for every other node.
//! VXLAN mode: one `ferry.vxlan` device; for each other node, its pod CIDRs
//! route onlink via the first address of the CIDR, that address resolves to
//! the node's VTEP MAC by a permanent neighbour entry, and the MAC forwards
//! to the node's underlay IP by an FDB entry. VTEP MACs derive from the
//! node's tunnel IP, so no node needs to publish its MAC.
//!
//! Routes carry [`ROUTE_PROTOCOL`], so a restarted agent finds and prunes the
//! ones it installed before, and never touches anyone else's.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourState,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};
use rtnetlink::{Handle, LinkUnspec, LinkVxlan, RouteMessageBuilder};
use thiserror::Error;

use crate::nodes::NodeInfo;

/// The route protocol number marking Ferry's routes (`ip route show proto 196`).
pub const ROUTE_PROTOCOL: u8 = 196;
/// The overlay device.
pub const VXLAN_DEVICE: &str = "ferry.vxlan";

#[derive(Debug, Error)]
pub enum RoutingError {
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
    #[error("invalid route for {dst}: {detail}")]
    Route { dst: IpNet, detail: String },
    #[error("VXLAN needs this node's tunnel address (a Node InternalIP)")]
    NoTunnelAddress,
}

/// How pod traffic crosses between nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Direct,
    Vxlan { vni: u32, port: u16 },
}

/// The VTEP MAC of a node: locally administered, from its tunnel IP.
pub fn vtep_mac(ip: IpAddr) -> [u8; 6] {
    let tail = match ip {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            [o[12], o[13], o[14], o[15]]
        }
    };
    [0x0a, 0x58, tail[0], tail[1], tail[2], tail[3]]
}

/// A remote VTEP: the gateway address routes point at, the node's VTEP
/// MAC, and its underlay address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Vtep {
    gateway: IpAddr,
    mac: [u8; 6],
    remote: IpAddr,
}

/// A route this node should have.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Wanted {
    dst: IpNet,
    via: IpAddr,
}

/// What one sync did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncStats {
    pub routes: usize,
    pub removed: usize,
}

pub struct Router {
    handle: Handle,
    mode: Mode,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

fn route_dst(msg: &RouteMessage) -> Option<IpNet> {
    let len = msg.header.destination_prefix_length;
    msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(v4)) => {
            IpNet::new(IpAddr::V4(*v4), len).ok()
        }
        RouteAttribute::Destination(RouteAddress::Inet6(v6)) => {
            IpNet::new(IpAddr::V6(*v6), len).ok()
        }
        _ => None,
    })
}

impl Router {
    pub fn new(handle: Handle, mode: Mode) -> Self {
        Self { handle, mode }
    }

    async fn link_index(&self, name: &str) -> Result<Option<u32>, RoutingError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(link) => Ok(link.map(|l| l.header.index)),
            // ENODEV: no such link.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -19 => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Makes `ferry.vxlan` exist, up, with this node's MAC and addresses.
    async fn ensure_vxlan(
        &self,
        local: &NodeInfo,
        vni: u32,
        port: u16,
    ) -> Result<u32, RoutingError> {
        let tunnel = local.tunnel_ip().ok_or(RoutingError::NoTunnelAddress)?;
        let index = match self.link_index(VXLAN_DEVICE).await? {
            Some(i) => i,
            None => {
                let mut builder = LinkVxlan::new(VXLAN_DEVICE, vni).port(port).learning(false);
                builder = match tunnel {
                    IpAddr::V4(v4) => builder.local(v4),
                    IpAddr::V6(v6) => builder.local6(v6),
                };
                self.handle.link().add(builder.build()).execute().await?;
                self.link_index(VXLAN_DEVICE)
                    .await?
                    .ok_or(RoutingError::NoTunnelAddress)?
            }
        };
        let mac = vtep_mac(tunnel).to_vec();
        let set = LinkUnspec::new_with_index(index).address(mac).up().build();
        self.handle.link().set(set).execute().await?;
        // The device's own address on each family: the first address of this
        // node's pod CIDR, which is what the peers route to.
        let have: BTreeSet<IpAddr> = crate::devices::addresses(&self.handle, index)
            .await?
            .into_iter()
            .collect();
        for cidr in &local.pod_cidrs {
            let ip = cidr.network();
            if !have.contains(&ip) {
                let prefix = if ip.is_ipv4() { 32 } else { 128 };
                self.handle
                    .address()
                    .add(index, ip, prefix)
                    .execute()
                    .await?;
            }
        }
        Ok(index)
    }

    async fn remove_vxlan(&self) -> Result<(), RoutingError> {
        if let Some(i) = self.link_index(VXLAN_DEVICE).await? {
            self.handle.link().del(i).execute().await?;
        }
        Ok(())
    }

    /// Routes with Ferry's protocol, by destination.
    async fn installed(&self) -> Result<Vec<RouteMessage>, RoutingError> {
        let mut out = Vec::new();
        for family in [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ] {
            let routes: Vec<RouteMessage> = self
                .handle
                .route()
                .get(family)
                .execute()
                .try_collect()
                .await?;
            out.extend(
                routes
                    .into_iter()
                    .filter(|r| r.header.protocol == RouteProtocol::Other(ROUTE_PROTOCOL)),
            );
        }
        Ok(out)
    }

    async fn put_route(&self, w: &Wanted, oif: Option<u32>) -> Result<(), RoutingError> {
        let bad = |detail: String| RoutingError::Route { dst: w.dst, detail };
        let mut b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(w.dst.network(), w.dst.prefix_len())
            .map_err(|e| bad(e.to_string()))?
            .gateway(w.via)
            .map_err(|e| bad(e.to_string()))?
            .protocol(RouteProtocol::Other(ROUTE_PROTOCOL));
        if let Some(i) = oif {
            b = b.output_interface(i).onlink();
        }
        self.handle
            .route()
            .add(b.build())
            .replace()
            .execute()
            .await?;
        Ok(())
    }

    /// Makes the routes (and, for VXLAN, neighbour and FDB entries) match
    /// `peers`; removes what Ferry installed for nodes no longer there.
    pub async fn sync(
        &self,
        local: &NodeInfo,
        peers: &[NodeInfo],
    ) -> Result<SyncStats, RoutingError> {
        let mut wanted = BTreeSet::new();
        let mut vtep: Option<(u32, Vec<Vtep>)> = None;
        match self.mode {
            Mode::Direct => {
                self.remove_vxlan().await?;
                for peer in peers.iter().filter(|p| p.name != local.name) {
                    for cidr in &peer.pod_cidrs {
                        if let Some(via) = peer.ip_for(cidr) {
                            wanted.insert(Wanted { dst: *cidr, via });
                        }
                    }
                }
            }
            Mode::Vxlan { vni, port } => {
                let index = self.ensure_vxlan(local, vni, port).await?;
                let mut entries = Vec::new();
                for peer in peers.iter().filter(|p| p.name != local.name) {
                    let Some(tunnel) = peer.tunnel_ip() else {
                        continue;
                    };
                    let mac = vtep_mac(tunnel);
                    for cidr in &peer.pod_cidrs {
                        let gw = cidr.network();
                        wanted.insert(Wanted {
                            dst: *cidr,
                            via: gw,
                        });
                        entries.push(Vtep {
                            gateway: gw,
                            mac,
                            remote: tunnel,
                        });
                    }
                }
                vtep = Some((index, entries));
            }
        }
        let oif = vtep.as_ref().map(|(i, _)| *i);
        if let Some((index, entries)) = &vtep {
            self.sync_vtep(*index, entries).await?;
        }
        for w in &wanted {
            self.put_route(w, oif).await?;
        }
        let mut removed = 0;
        for r in self.installed().await? {
            let stale = route_dst(&r).is_none_or(|dst| !wanted.iter().any(|w| w.dst == dst));
            if stale {
                self.handle.route().del(r).execute().await?;
                removed += 1;
            }
        }
        Ok(SyncStats {
            routes: wanted.len(),
            removed,
        })
    }

    /// Neighbour (gateway -> MAC) and FDB (MAC -> underlay IP) entries on the
    /// VXLAN device, exactly `entries`.
    async fn sync_vtep(&self, index: u32, entries: &[Vtep]) -> Result<(), RoutingError> {
        for Vtep {
            gateway: gw,
            mac,
            remote,
        } in entries
        {
            self.handle
                .neighbours()
                .add(index, *gw)
                .link_layer_address(mac)
                .replace()
                .execute()
                .await?;
            self.handle
                .neighbours()
                .add_bridge(index, mac)
                // NTF_SELF: the entry belongs to the VXLAN device itself, not
                // to a bridge it is enslaved to.
                .flags(NeighbourFlags::Own)
                .destination(*remote)
                .replace()
                .execute()
                .await?;
        }
        let neighbours: Vec<_> = self
            .handle
            .neighbours()
            .get()
            .execute()
            .try_collect()
            .await?;
        for n in neighbours.into_iter().filter(|n| n.header.ifindex == index) {
            let keep = match n.header.family {
                AddressFamily::Bridge => n.attributes.iter().any(|a| match a {
                    NeighbourAttribute::LinkLayerAddress(l) => {
                        entries.iter().any(|v| v.mac.as_slice() == l.as_slice())
                    }
                    _ => false,
                }),
                _ => n.attributes.iter().any(|a| match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                        entries.iter().any(|v| v.gateway == IpAddr::V4(*v4))
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                        entries.iter().any(|v| v.gateway == IpAddr::V6(*v6))
                    }
                    _ => false,
                }),
            };
            if !keep && n.header.state == NeighbourState::Permanent {
                self.handle.neighbours().del(n).execute().await?;
            }
        }
        Ok(())
    }

    /// Removes everything this router installed.
    pub async fn uninstall(&self) -> Result<(), RoutingError> {
        for r in self.installed().await? {
            self.handle.route().del(r).execute().await?;
        }
        self.remove_vxlan().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vtep_macs_are_local_and_distinct() {
        let a = vtep_mac("172.31.0.2".parse().expect("ip"));
        let b = vtep_mac("172.31.0.3".parse().expect("ip"));
        assert_ne!(a, b);
        assert_eq!(a[0] & 0x02, 0x02, "locally administered");
        assert_eq!(a[0] & 0x01, 0, "unicast");
    }
}
