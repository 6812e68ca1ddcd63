//! The node devices the per-packet programs attach to (`--devices`), with
//! the addresses flows to other nodes' backends are source-translated to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::TryStreamExt as _;
use netlink_packet_route::address::AddressAttribute;
use rtnetlink::Handle;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("no device named {0} in this network namespace")]
    Missing(String),
    #[error("listing {what}: {source}")]
    Netlink {
        what: String,
        source: Box<rtnetlink::Error>,
    },
}

/// A device and its first address of each family (IPv6: the first that is
/// not link-local).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub name: String,
    pub index: u32,
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

/// Looks up each named device.
pub async fn lookup(handle: &Handle, names: &[String]) -> Result<Vec<Device>, DeviceError> {
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let link = handle
            .link()
            .get()
            .match_name(name.clone())
            .execute()
            .try_next()
            .await;
        let index = match link {
            Ok(Some(l)) => l.header.index,
            Ok(None) => return Err(DeviceError::Missing(name.clone())),
            // ENODEV: no such link.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -19 => {
                return Err(DeviceError::Missing(name.clone()));
            }
            Err(e) => {
                return Err(DeviceError::Netlink {
                    what: format!("device {name}"),
                    source: Box::new(e),
                });
            }
        };
        let addrs = addresses(handle, index)
            .await
            .map_err(|e| DeviceError::Netlink {
                what: format!("addresses of {name}"),
                source: Box::new(e),
            })?;
        out.push(Device {
            name: name.clone(),
            index,
            v4: addrs.iter().find_map(|a| match a {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            }),
            v6: addrs.iter().find_map(|a| match a {
                IpAddr::V6(v6) if !v6.is_unicast_link_local() => Some(*v6),
                _ => None,
            }),
        });
    }
    Ok(out)
}

/// The addresses on the link with `index`.
pub async fn addresses(handle: &Handle, index: u32) -> Result<Vec<IpAddr>, rtnetlink::Error> {
    list_addresses(handle, Some(index)).await
}

/// The addresses on one link, or on all of them.
async fn list_addresses(
    handle: &Handle,
    index: Option<u32>,
) -> Result<Vec<IpAddr>, rtnetlink::Error> {
    let mut request = handle.address().get();
    if let Some(index) = index {
        request = request.set_link_index_filter(index);
    }
    request
        .execute()
        .try_filter_map(|m| async move {
            Ok(m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            }))
        })
        .try_collect()
        .await
}

/// The node's addresses where NodePorts answer: every address in this
/// namespace except loopback (the socket hooks take `127.0.0.1` and `::1`
/// themselves) and link-local ones (pods' veths carry their gateway
/// there), kept to `only` when it is not empty (`--nodeport-addresses`).
pub async fn node_port_addresses(
    handle: &Handle,
    only: &[ipnet::IpNet],
) -> Result<Vec<IpAddr>, rtnetlink::Error> {
    let all = list_addresses(handle, None).await?;
    Ok(all
        .into_iter()
        .filter(|ip| {
            let link_local = match ip {
                IpAddr::V4(v4) => v4.is_link_local(),
                IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
            };
            !ip.is_loopback() && !link_local
        })
        .filter(|ip| only.is_empty() || only.iter().any(|n| n.contains(ip)))
        .collect())
}

/// The names of every link in this namespace.
pub async fn link_names(handle: &Handle) -> Result<Vec<String>, rtnetlink::Error> {
    use netlink_packet_route::link::LinkAttribute;
    handle
        .link()
        .get()
        .execute()
        .try_filter_map(|m| async move {
            Ok(m.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            }))
        })
        .try_collect()
        .await
}
