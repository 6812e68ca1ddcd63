//! The routed veth model (as Calico and Cilium wire pods):
//!
//! ```text
//!  pod netns                               node netns
//!  eth0 10.244.1.7/32, fd00::7/128  <-veth->  fer3f9a1c2b7e0 (no address)
//!  169.254.1.1 dev eth0 scope link           10.244.1.7 dev fer3f9a1c2b7e0 scope link
//!  default via 169.254.1.1 dev eth0          fd00::7 dev fer3f9a1c2b7e0
//!  default via fe80::1 dev eth0              neigh 10.244.1.7 / fd00::7 lladdr <eth0 mac> PERMANENT
//!  neigh 169.254.1.1 / fe80::1 lladdr <host veth mac> PERMANENT
//! ```
//!
//! The pod's gateways are link-local addresses nobody owns. They are
//! answered by static (permanent) neighbour entries in the pod that point at
//! the host end's MAC, which works the same for both families and needs no
//! ARP or NDP exchange at all; proxy ARP on the host end (with no delay) is
//! kept as a fallback for IPv4 if the pod's entry is ever flushed. The host
//! end holds no address: the node routes each pod address to its veth, with
//! a permanent neighbour entry for the pod's MAC, and forwards between them
//! (per-interface IPv4 forwarding and IPv6 forwarding are switched on for the
//! host end).
//!
//! Routes are created, never replaced: a route that exists already (the
//! default route of a pod's first interface, when a second one asks for it
//! too) fails the ADD with [`Error::RouteExists`] and the caller rolls back.
//! A second interface does share the gateway: the host route to
//! 169.254.1.1 stays the first interface's, and the second one's routes
//! through the gateway are `onlink`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::error::{Error, Result};
use crate::netlink::{Link, NewRoute, Nl, format_mac, sysctl, with_netlink};
use crate::netns::NetNs;
use crate::types::Route;

/// The pod's IPv4 gateway.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The pod's IPv6 gateway.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// Prefix of every host veth Ferry creates.
pub const HOST_VETH_PREFIX: &str = "fer";

/// The pod's gateway for an address family.
pub fn gateway_for(v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(GATEWAY_V4)
    } else {
        IpAddr::V6(GATEWAY_V6)
    }
}

/// The host end's name: `fer` and the first 11 hex digits of
/// SHA-256(`<containerID>/<ifname>`), 14 characters. Stable across retries
/// and plugin versions, so DEL and GC find it from the attachment alone;
/// the interface name is part of the input so that one container can have
/// several Ferry interfaces.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{container_id}/{ifname}").as_bytes(),
    );
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("{HOST_VETH_PREFIX}{}", &hex[..11])
}

/// A single address as a host route (`/32` or `/128`).
pub fn host_net(ip: IpAddr) -> IpNet {
    match ip {
        IpAddr::V4(v4) => IpNet::V4(ipnet::Ipv4Net::from(v4)),
        IpAddr::V6(v6) => IpNet::V6(ipnet::Ipv6Net::from(v6)),
    }
}

/// What [`setup`] built.
#[derive(Clone, Debug)]
pub struct Wired {
    pub host_mac: String,
    pub pod_mac: String,
    /// The routes as installed in the pod (gateways filled in).
    pub routes: Vec<Route>,
}

/// The request to wire one attachment.
#[derive(Debug)]
pub struct Plan<'a> {
    pub netns: &'a NetNs,
    pub host_veth: &'a str,
    pub ifname: &'a str,
    pub mtu: u32,
    pub ips: &'a [IpAddr],
    pub routes: &'a [Route],
}

/// Fails with [`Error::InterfaceExists`] if either end's name is taken.
pub fn ensure_absent(netns: &NetNs, host_veth: &str, ifname: &str) -> Result<()> {
    if with_netlink(async |nl| nl.link(host_veth).await)?.is_some() {
        return Err(Error::InterfaceExists(format!(
            "host interface {host_veth} already exists"
        )));
    }
    if netns
        .run(|| with_netlink(async |nl| nl.link(ifname).await))?
        .is_some()
    {
        return Err(Error::InterfaceExists(format!(
            "interface {ifname} already exists in {}",
            netns.path().display()
        )));
    }
    Ok(())
}

/// Creates and configures both ends. On error the caller tears down.
pub fn setup(plan: &Plan<'_>) -> Result<Wired> {
    let has_v6 = plan.ips.iter().any(IpAddr::is_ipv6);
    with_netlink(async |nl| {
        nl.create_veth(plan.host_veth, plan.ifname, plan.netns.file(), plan.mtu)
            .await?;
        let host = must_link(nl, plan.host_veth).await?;
        let host_mac = host.mac.clone().unwrap_or_default();
        host_sysctls(plan.host_veth, has_v6)?;
        nl.set_up(host.index).await?;
        crate::crash_point("after-veth");
        let (pod_mac, routes) = plan
            .netns
            .run(|| with_netlink(async |pod| configure_pod(pod, plan, &host_mac).await))?;
        for ip in plan.ips {
            let mut r = NewRoute::new(host_net(*ip), host.index);
            if ip.is_ipv4() {
                r.scope = Some(253); // link
            }
            // Another route to the pod's address in the node would be
            // hijacked by a replace: refuse instead.
            nl.add_route(&r).await.map_err(|e| match e {
                Error::RouteExists(m) => Error::RouteExists(format!("{m} in the node's namespace")),
                e => e,
            })?;
            nl.add_neighbour(host.index, *ip, &pod_mac).await?;
        }
        Ok(Wired {
            host_mac: format_mac(&host_mac),
            pod_mac: format_mac(&pod_mac),
            routes,
        })
    })
}

async fn must_link(nl: &Nl, name: &str) -> Result<Link> {
    nl.link(name)
        .await?
        .ok_or_else(|| Error::Internal(format!("link {name} vanished right after it was created")))
}

fn host_sysctls(host_veth: &str, has_v6: bool) -> Result<()> {
    sysctl(&format!("net/ipv4/conf/{host_veth}/forwarding"), "1")?;
    sysctl(&format!("net/ipv4/conf/{host_veth}/proxy_arp"), "1")?;
    sysctl(&format!("net/ipv4/neigh/{host_veth}/proxy_delay"), "0")?;
    if has_v6 {
        sysctl(&format!("net/ipv6/conf/{host_veth}/forwarding"), "1")?;
        sysctl(&format!("net/ipv6/conf/{host_veth}/accept_ra"), "0")?;
    }
    Ok(())
}

/// Inside the pod: up, addresses, gateway neighbours, routes. Returns the
/// pod end's MAC and the routes as installed.
async fn configure_pod(nl: &Nl, plan: &Plan<'_>, host_mac: &[u8]) -> Result<(Vec<u8>, Vec<Route>)> {
    let link = must_link(nl, plan.ifname).await?;
    nl.set_up(link.index).await?;
    for ip in plan.ips {
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        nl.add_address(link.index, *ip, prefix).await?;
    }
    // Whether another interface of the pod (a second Ferry attachment)
    // already holds the host route to the IPv4 gateway: it is left alone,
    // and this interface's routes through the gateway are `onlink` instead.
    let mut v4_gateway_shared = false;
    if plan.ips.iter().any(IpAddr::is_ipv4) {
        let gw = IpAddr::V4(GATEWAY_V4);
        let mut r = NewRoute::new(host_net(gw), link.index);
        r.scope = Some(253);
        match nl.add_route(&r).await {
            Ok(()) => {}
            Err(Error::RouteExists(held)) => {
                tracing::debug!(
                    held,
                    "the gateway's host route belongs to another interface"
                );
                v4_gateway_shared = true;
            }
            Err(e) => return Err(e),
        }
        nl.add_neighbour(link.index, gw, host_mac).await?;
    }
    if plan.ips.iter().any(IpAddr::is_ipv6) {
        nl.add_neighbour(link.index, IpAddr::V6(GATEWAY_V6), host_mac)
            .await?;
    }
    let mut installed = Vec::with_capacity(plan.routes.len());
    for route in plan.routes {
        let v4 = route.dst.addr().is_ipv4();
        let default_gw = gateway_for(v4);
        let gw = route.gw.unwrap_or(default_gw);
        let mut r = NewRoute::new(route.dst, link.index);
        r.gw = Some(gw);
        // Any other gateway is reached through the host end too.
        r.onlink = (gw != default_gw && !is_link_local(gw))
            || (v4 && gw == default_gw && v4_gateway_shared);
        r.table = route.table;
        r.priority = route.priority;
        r.mtu = route.mtu;
        r.advmss = route.advmss;
        r.scope = route.scope;
        // Never replaced: a second interface must not take over a route
        // (typically the default route) another interface of the pod owns.
        nl.add_route(&r).await.map_err(|e| match e {
            Error::RouteExists(m) => Error::RouteExists(format!(
                "{m} in {}: {} cannot add it without taking it over (give this network \
                 other ipam.routes)",
                plan.netns.path().display(),
                plan.ifname
            )),
            e => e,
        })?;
        installed.push(Route {
            gw: Some(gw),
            ..route.clone()
        });
    }
    Ok((link.mac.unwrap_or_default(), installed))
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    }
}

/// Deletes the host end (which takes the pod end, its routes and neighbour
/// entries with it). Returns whether there was anything to delete.
pub fn teardown(host_veth: &str) -> Result<bool> {
    with_netlink(async |nl| match nl.link(host_veth).await? {
        Some(link) => nl.delete_link(link.index).await.map(|()| true),
        None => Ok(false),
    })
}

/// What CHECK expects to find.
#[derive(Debug)]
pub struct Expected<'a> {
    pub host_veth: &'a str,
    pub host_mac: Option<&'a str>,
    pub ifname: &'a str,
    pub pod_mac: Option<&'a str>,
    pub addresses: &'a [IpNet],
    pub routes: &'a [Route],
}

/// Verifies both ends, the addresses and the routes (code 103 on a
/// mismatch).
pub fn check(netns: &NetNs, want: &Expected<'_>) -> Result<()> {
    let failed = |m: String| Err(Error::CheckFailed(m));
    with_netlink(async |nl| {
        let Some(host) = nl.link(want.host_veth).await? else {
            return failed(format!("host interface {} is missing", want.host_veth));
        };
        if !host.up {
            return failed(format!("host interface {} is down", want.host_veth));
        }
        if let Some(mac) = want.host_mac {
            let have = host.mac.as_deref().map(format_mac).unwrap_or_default();
            if !have.eq_ignore_ascii_case(mac) {
                return failed(format!(
                    "host interface {} has MAC {have}, expected {mac}",
                    want.host_veth
                ));
            }
        }
        for net in want.addresses {
            let v4 = net.addr().is_ipv4();
            let routes = nl.routes(v4).await?;
            let dst = host_net(net.addr());
            if !routes
                .iter()
                .any(|r| r.dst == dst && r.oif == Some(host.index))
            {
                return failed(format!(
                    "host route to {dst} via {} is missing",
                    want.host_veth
                ));
            }
        }
        Ok(())
    })?;
    netns.run(|| {
        with_netlink(async |nl| {
            let Some(link) = nl.link(want.ifname).await? else {
                return failed(format!(
                    "interface {} is missing in {}",
                    want.ifname,
                    netns.path().display()
                ));
            };
            if !link.up {
                return failed(format!("interface {} is down", want.ifname));
            }
            if let Some(mac) = want.pod_mac {
                let have = link.mac.as_deref().map(format_mac).unwrap_or_default();
                if !have.eq_ignore_ascii_case(mac) {
                    return failed(format!(
                        "interface {} has MAC {have}, expected {mac}",
                        want.ifname
                    ));
                }
            }
            let have = nl.addresses(link.index).await?;
            for net in want.addresses {
                if !have.contains(net) {
                    return failed(format!("address {net} is missing on {}", want.ifname));
                }
            }
            for route in want.routes {
                let routes = nl.routes(route.dst.addr().is_ipv4()).await?;
                let found = routes.iter().any(|r| {
                    r.dst == route.dst
                        && r.oif == Some(link.index)
                        && route.gw.is_none_or(|gw| r.gw == Some(gw))
                        && route.table.is_none_or(|t| r.table == t)
                });
                if !found {
                    let via = route.gw.map(|g| format!(" via {g}")).unwrap_or_default();
                    return failed(format!(
                        "route to {}{via} is missing on {}",
                        route.dst, want.ifname
                    ));
                }
            }
            Ok(())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names() {
        let n = host_veth_name("0123456789abcdef", "eth0");
        assert_eq!(n.len(), 14);
        assert!(n.starts_with("fer"));
        assert!(n[3..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(n, host_veth_name("0123456789abcdef", "eth0"));
        assert_ne!(n, host_veth_name("0123456789abcdef", "net1"));
        assert_ne!(n, host_veth_name("0123456789abcdeg", "eth0"));
    }
}
