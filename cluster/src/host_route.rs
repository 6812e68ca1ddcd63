//! `ferry up --host-access route`: the host joins the cluster's underlay.
//!
//! By default the host reaches a cluster only through [`forward`]'s
//! loopback listeners and gets no address, route or link. With this opt-in
//! (never used by the tests on the real host: they give a namespace of
//! their own as the "host"), the host gets:
//! - a veth `fh-<prefix>` whose other end is a port of the underlay bridge,
//!   with an address of the underlay's subnets (`.253`), so every node's
//!   address is on-link: NodePorts and LoadBalancer IPs announced on the
//!   underlay answer at `<node-ip>:<port>` as on a real network;
//! - routes to the cluster's pod CIDRs via the underlay namespace (which
//!   forwards them to the nodes, [`underlay`] routing each node's pod CIDR
//!   via the node), so pod IPs answer too.
//!
//! Nothing is added when any of those prefixes meets a route the host
//! already has (a real network in 172.31.0.0/16, another cluster's pod
//! CIDR): the error names the route and the way out. Everything added hangs
//! on the veth, which dies with the underlay namespace, so `ferry down`
//! (or a crashed supervisor's sweep) leaves nothing behind.
//!
//! [`forward`]: crate::forward
//! [`underlay`]: crate::underlay

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;

use ferry_testbed::ipnet::IpNet;
use ferry_testbed::{Netns, UNDERLAY_BRIDGE, World};
use serde::{Deserialize, Serialize};

use crate::components::CLUSTER_CIDRS;
use crate::{Error, Result};

/// The host's host part in the underlay's subnets (the apiserver has 250).
const HOST_INDEX: u8 = 253;
/// The bridge port's name inside the underlay namespace.
const UNDERLAY_END: &str = "host0";

/// What the route mode added to the host, as `ferry status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRouteInfo {
    /// The host's end of the veth.
    pub link: String,
    /// The host's addresses on it.
    pub addrs: Vec<String>,
    /// `PREFIX via ADDR`, one per route.
    pub routes: Vec<String>,
}

/// The host's link to the underlay; removed on drop.
#[derive(Debug)]
pub struct HostRoute {
    host: Option<Netns>,
    info: HostRouteInfo,
}

impl HostRoute {
    /// Links `host` (`None`: the namespace this process runs in, the real
    /// host) to `world`'s underlay bridge, with routes to the pod CIDRs of
    /// the families in `via` (the underlay's own address of each family).
    pub fn add(world: &World, host: Option<Netns>, via: &[IpAddr]) -> Result<Self> {
        let node = world.node(0);
        let mut addrs = Vec::new();
        let mut prefixes: Vec<IpNet> = Vec::new();
        let mut routes = Vec::new();
        for gateway in via {
            let (subnet, addr) = match gateway {
                IpAddr::V4(_) => {
                    let net = node.underlay_v4;
                    let addr = Ipv4Addr::from(u32::from(net.network()) + u32::from(HOST_INDEX));
                    (IpNet::V4(net), format!("{addr}/{}", net.prefix_len()))
                }
                IpAddr::V6(_) => {
                    let net = node.underlay_v6;
                    let addr = Ipv6Addr::from(u128::from(net.network()) + u128::from(HOST_INDEX));
                    (IpNet::V6(net), format!("{addr}/{}", net.prefix_len()))
                }
            };
            addrs.push(addr);
            prefixes.push(subnet.trunc());
            for cidr in CLUSTER_CIDRS {
                let cidr: IpNet = cidr
                    .parse()
                    .map_err(|e| Error::Config(format!("cluster CIDR {cidr}: {e}")))?;
                if cidr.addr().is_ipv4() == gateway.is_ipv4() {
                    prefixes.push(cidr);
                    routes.push((cidr, *gateway));
                }
            }
        }
        for prefix in &prefixes {
            if let Some(route) = clashing_route(host.as_ref(), prefix)? {
                return Err(Error::Config(format!(
                    "--host-access route: the host already routes {route:?}, which meets the \
                     cluster's {prefix}; nothing was changed. Remove that route, or use the \
                     default --host-access loopback (NodePorts on localhost)"
                )));
            }
        }
        let link = format!("fh-{}", world.prefix());
        let underlay = world.underlay();
        ip(
            host.as_ref(),
            &[
                "link",
                "add",
                &link,
                "type",
                "veth",
                "peer",
                "name",
                UNDERLAY_END,
                "netns",
                underlay.name(),
            ],
        )?;
        let route = HostRoute {
            host,
            info: HostRouteInfo {
                link: link.clone(),
                addrs: addrs.clone(),
                routes: routes
                    .iter()
                    .map(|(p, via)| format!("{p} via {via}"))
                    .collect(),
            },
        };
        // From here on, dropping `route` removes the link (and with it the
        // addresses and routes).
        underlay.exec([
            "ip",
            "link",
            "set",
            UNDERLAY_END,
            "master",
            UNDERLAY_BRIDGE,
            "up",
        ])?;
        underlay.exec(["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        underlay.exec(["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])?;
        for addr in &addrs {
            let mut args = vec!["addr", "add", addr.as_str(), "dev", link.as_str()];
            if addr.contains(':') {
                args.push("nodad");
            }
            ip(route.host.as_ref(), &args)?;
        }
        ip(route.host.as_ref(), &["link", "set", &link, "up"])?;
        for (prefix, via) in &routes {
            let (prefix, via) = (prefix.to_string(), via.to_string());
            ip(
                route.host.as_ref(),
                &["route", "add", &prefix, "via", &via, "dev", &link],
            )?;
        }
        tracing::info!(link = %link, addrs = ?addrs, routes = ?route.info.routes, "the host joined the underlay (--host-access route)");
        Ok(route)
    }

    pub fn info(&self) -> &HostRouteInfo {
        &self.info
    }
}

impl Drop for HostRoute {
    fn drop(&mut self) {
        // Gone already when the underlay namespace went first.
        let _ = ip(self.host.as_ref(), &["link", "del", &self.info.link]);
    }
}

/// Runs `ip ARGS` in `host` (`None`: this process's namespace).
fn ip(host: Option<&Netns>, args: &[&str]) -> Result<String> {
    match host {
        Some(ns) => Ok(ns.exec(std::iter::once("ip").chain(args.iter().copied()))?),
        None => {
            let out = Command::new("ip")
                .args(args)
                .output()
                .map_err(|e| Error::io("running ip", e))?;
            if out.status.success() {
                Ok(String::from_utf8_lossy(&out.stdout).into_owned())
            } else {
                Err(Error::Config(format!(
                    "ip {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                )))
            }
        }
    }
}

/// A route of the host's main table that meets `prefix` (inside it, or
/// holding it), the default route aside.
fn clashing_route(host: Option<&Netns>, prefix: &IpNet) -> Result<Option<String>> {
    let family = if prefix.addr().is_ipv4() { "-4" } else { "-6" };
    let prefix = prefix.to_string();
    for selector in ["root", "match"] {
        let out = ip(host, &[family, "-o", "route", "show", selector, &prefix])?;
        if let Some(line) = out
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with("default"))
        {
            return Ok(Some(line.to_owned()));
        }
    }
    Ok(None)
}
