//! The few rtnetlink operations the plugin needs, on a netlink socket of the
//! calling thread's network namespace. Each session runs on its own
//! current-thread runtime (rtnetlink is async; nothing else here is).

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsRawFd as _;

use futures_util::TryStreamExt as _;
use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use netlink_packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::neighbour::NeighbourState;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteMetric, RouteScope,
};
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::error::{Error, Result, netlink_errno};

const ENODEV: i32 = 19;
const ENOENT: i32 = 2;
const EEXIST: i32 = 17;

/// The kernel's main routing table (RT_TABLE_MAIN).
pub const MAIN_TABLE: u32 = 254;

/// A netlink session in the current thread's network namespace.
pub struct Nl {
    handle: Handle,
}

/// Runs `f` with a netlink session of the calling thread's namespace.
pub fn with_netlink<R>(f: impl AsyncFnOnce(&Nl) -> Result<R>) -> Result<R> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| Error::io("building the netlink runtime", e))?;
    rt.block_on(async {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| Error::io("opening a netlink socket", e))?;
        let conn = tokio::spawn(conn);
        let out = f(&Nl { handle }).await;
        conn.abort();
        out
    })
}

/// What the plugin needs to know about a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<Vec<u8>>,
    pub mtu: Option<u32>,
    pub up: bool,
}

/// A route in the kernel's table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelRoute {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
    pub oif: Option<u32>,
    pub table: u32,
}

/// A route to add.
#[derive(Clone, Debug)]
pub struct NewRoute {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
    pub oif: u32,
    /// `scope link` (a directly connected destination).
    pub scope: Option<u8>,
    pub onlink: bool,
    pub table: Option<u32>,
    pub priority: Option<u32>,
    pub mtu: Option<u32>,
    pub advmss: Option<u32>,
}

impl NewRoute {
    pub fn new(dst: IpNet, oif: u32) -> NewRoute {
        NewRoute {
            dst,
            gw: None,
            oif,
            scope: None,
            onlink: false,
            table: None,
            priority: None,
            mtu: None,
            advmss: None,
        }
    }
}

/// Formats a hardware address as the spec's `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn link_from_message(msg: LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        mac: None,
        mtu: None,
        up: msg.header.flags.contains(LinkFlags::Up),
    };
    for attr in msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Address(a) => link.mac = Some(a),
            LinkAttribute::Mtu(m) => link.mtu = Some(m),
            _ => {}
        }
    }
    link
}

fn route_from_message(msg: RouteMessage) -> Option<KernelRoute> {
    let v4 = msg.header.address_family == netlink_packet_route::AddressFamily::Inet;
    let mut dst_addr: Option<IpAddr> = None;
    let mut gw = None;
    let mut oif = None;
    let mut table = u32::from(msg.header.table);
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(a) => dst_addr = route_addr(a),
            RouteAttribute::Gateway(a) => gw = route_addr(a),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Table(t) => table = *t,
            _ => {}
        }
    }
    let addr = dst_addr.unwrap_or(if v4 {
        IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
    });
    let dst = IpNet::new(addr, msg.header.destination_prefix_length).ok()?;
    Some(KernelRoute {
        dst,
        gw,
        oif,
        table,
    })
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn is_errno(e: &rtnetlink::Error, errnos: &[i32]) -> bool {
    netlink_errno(e).is_some_and(|n| errnos.contains(&n))
}

impl Nl {
    /// The link named `name`, if there is one.
    pub async fn link(&self, name: &str) -> Result<Option<Link>> {
        let mut stream = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match stream.try_next().await {
            Ok(Some(msg)) => Ok(Some(link_from_message(msg))),
            Ok(None) => Ok(None),
            Err(e) if is_errno(&e, &[ENODEV, ENOENT]) => Ok(None),
            Err(e) => Err(Error::netlink(format!("looking up link {name}"), e)),
        }
    }

    /// The link with index `index`, if there is one.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        let mut stream = self.handle.link().get().match_index(index).execute();
        match stream.try_next().await {
            Ok(Some(msg)) => Ok(Some(link_from_message(msg))),
            Ok(None) => Ok(None),
            Err(e) if is_errno(&e, &[ENODEV, ENOENT]) => Ok(None),
            Err(e) => Err(Error::netlink(format!("looking up link {index}"), e)),
        }
    }

    /// Creates a veth pair: `host` here, `peer` directly in the namespace
    /// `peer_ns` under its final name (so the pod's interface never exists
    /// under a temporary name), both ends with `mtu`.
    pub async fn create_veth(
        &self,
        host: &str,
        peer: &str,
        peer_ns: &File,
        mtu: u32,
    ) -> Result<()> {
        let peer_msg = LinkUnspec::new_with_name(peer)
            .mtu(mtu)
            .setns_by_fd(peer_ns.as_raw_fd())
            .build();
        let msg = LinkVeth::new(host, peer)
            .mtu(mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        match self.handle.link().add(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, &[EEXIST]) => Err(Error::InterfaceExists(format!(
                "cannot create veth {host}/{peer}: an interface with one of these names already exists"
            ))),
            Err(e) => Err(Error::netlink(format!("creating veth {host}/{peer}"), e)),
        }
    }

    pub async fn set_up(&self, index: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("setting link {index} up"), e))
    }

    /// Deletes a link; one that is already gone is not an error.
    pub async fn delete_link(&self, index: u32) -> Result<()> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, &[ENODEV, ENOENT]) => Ok(()),
            Err(e) => Err(Error::netlink(format!("deleting link {index}"), e)),
        }
    }

    /// Adds `ip/prefix`; IPv6 addresses skip duplicate address detection
    /// (the address is unique by IPAM, and DAD would keep it tentative, i.e.
    /// unusable, for a second).
    pub async fn add_address(&self, index: u32, ip: IpAddr, prefix: u8) -> Result<()> {
        let mut req = self.handle.address().add(index, ip, prefix).replace();
        if ip.is_ipv6() {
            let msg = req.message_mut();
            msg.header.flags |= AddressHeaderFlags::Nodad;
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        req.execute()
            .await
            .map_err(|e| Error::netlink(format!("adding address {ip}/{prefix} to link {index}"), e))
    }

    /// The addresses on link `index`.
    pub async fn addresses(&self, index: u32) -> Result<Vec<IpNet>> {
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let mut out = Vec::new();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(|e| Error::netlink(format!("listing addresses of link {index}"), e))?
        {
            if msg.header.index != index {
                continue;
            }
            let addr = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            if let Some(ip) = addr.and_then(|ip| IpNet::new(ip, msg.header.prefix_len).ok()) {
                out.push(ip);
            }
        }
        Ok(out)
    }

    /// Adds a route. One that already exists with the same key (table,
    /// destination and, for IPv4, priority; for IPv6, metric) is never
    /// replaced: that is [`Error::RouteExists`], naming the device that
    /// holds it (the kernel's EEXIST, as `ip route add` reports it).
    pub async fn add_route(&self, r: &NewRoute) -> Result<()> {
        let dst = r.dst;
        let bad = move |e| Error::Internal(format!("building route to {dst}: {e}"));
        let mut b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(r.dst.addr(), r.dst.prefix_len())
            .map_err(bad)?
            .output_interface(r.oif);
        if let Some(gw) = r.gw {
            b = b.gateway(gw).map_err(bad)?;
        }
        if let Some(scope) = r.scope {
            b = b.scope(RouteScope::from(scope));
        }
        if r.onlink {
            b = b.onlink();
        }
        if let Some(t) = r.table {
            b = b.table_id(t);
        }
        if let Some(p) = r.priority {
            b = b.priority(p);
        }
        let mut msg = b.build();
        let mut metrics = Vec::new();
        if let Some(m) = r.mtu {
            metrics.push(RouteMetric::Mtu(m));
        }
        if let Some(m) = r.advmss {
            metrics.push(RouteMetric::Advmss(m));
        }
        if !metrics.is_empty() {
            msg.attributes.push(RouteAttribute::Metrics(metrics));
        }
        match self.handle.route().add(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, &[EEXIST]) => {
                let table = r.table.unwrap_or(MAIN_TABLE);
                let holder = self.route_holder(r.dst, table).await;
                Err(Error::RouteExists(format!(
                    "route to {} (table {table}) already exists{holder}",
                    r.dst
                )))
            }
            Err(e) => Err(Error::netlink(
                format!("adding route to {} via {:?} dev {}", r.dst, r.gw, r.oif),
                e,
            )),
        }
    }

    /// " via <gw> dev <name>" of an existing route to `dst` in `table`, for
    /// error messages (empty if it cannot be found).
    async fn route_holder(&self, dst: IpNet, table: u32) -> String {
        let Ok(routes) = self.routes(dst.addr().is_ipv4()).await else {
            return String::new();
        };
        let Some(r) = routes
            .into_iter()
            .find(|r| r.dst == dst && r.table == table)
        else {
            return String::new();
        };
        let via = r.gw.map(|g| format!(" via {g}")).unwrap_or_default();
        let dev = match r.oif {
            Some(i) => match self.link_by_index(i).await {
                Ok(Some(l)) => format!(" dev {}", l.name),
                _ => format!(" dev #{i}"),
            },
            None => String::new(),
        };
        format!("{via}{dev}")
    }

    /// Every route of one family, in every table.
    pub async fn routes(&self, v4: bool) -> Result<Vec<KernelRoute>> {
        let msg = if v4 {
            RouteMessageBuilder::<std::net::Ipv4Addr>::new().build()
        } else {
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().build()
        };
        let mut stream = self.handle.route().get(msg).execute();
        let mut out = Vec::new();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(|e| Error::netlink("listing routes", e))?
        {
            out.extend(route_from_message(msg));
        }
        Ok(out)
    }

    /// A permanent neighbour entry `ip` → `mac` on link `index`.
    pub async fn add_neighbour(&self, index: u32, ip: IpAddr, mac: &[u8]) -> Result<()> {
        self.handle
            .neighbours()
            .add(index, ip)
            .link_layer_address(mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("adding neighbour {ip} on link {index}"), e))
    }
}

/// Writes a sysctl of the calling thread's network namespace.
pub fn sysctl(path: &str, value: &str) -> Result<()> {
    let full = format!("/proc/sys/{path}");
    std::fs::write(&full, value).map_err(|e| Error::io(format!("writing {value} to {full}"), e))
}
