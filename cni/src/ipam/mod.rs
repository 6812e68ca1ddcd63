//! Built-in IPAM: host-local's config and on-disk format, with the node's
//! podCIDRs from the API as the ranges when the config names none.

pub mod k8s;
pub mod range;
pub mod store;

use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::{AddressSource, IpamConfig};
use crate::error::{Error, Result};
use crate::input::{RESOLV_CONF_LIMIT, read_regular_file};
use crate::types::{Dns, Route};
use range::{Range, RangeSet};

/// The range sets addresses are drawn from: the configured ones, or one per
/// podCIDR of the node (looked up through the API).
pub fn range_sets(ipam: &IpamConfig) -> Result<Vec<RangeSet>> {
    match &ipam.source {
        AddressSource::Ranges(sets) => Ok(sets.clone()),
        AddressSource::Node {
            kubeconfig,
            node_name,
        } => {
            let cidrs = k8s::node_pod_cidrs(kubeconfig, node_name)?;
            let mut sets = Vec::new();
            for cidr in cidrs {
                let cidr = cidr.trunc();
                let range = Range::canonicalize(cidr, None, None, None).map_err(|e| {
                    Error::InvalidConfig(format!("node {node_name} podCIDR {cidr}: {e}"))
                })?;
                sets.push(RangeSet(vec![range]));
            }
            range::validate_sets(&sets)?;
            Ok(sets)
        }
    }
}

/// The routes to install in the pod: the configured ones, or a default
/// route per family the pod has an address of.
pub fn pod_routes(ipam: &IpamConfig, ips: &[IpAddr]) -> Vec<Route> {
    let has_v4 = ips.iter().any(IpAddr::is_ipv4);
    let has_v6 = ips.iter().any(IpAddr::is_ipv6);
    match &ipam.routes {
        Some(routes) => routes
            .iter()
            .filter(|r| {
                if r.dst.addr().is_ipv4() {
                    has_v4
                } else {
                    has_v6
                }
            })
            .cloned()
            .collect(),
        None => {
            let mut out = Vec::new();
            if has_v4 {
                out.push(Route::new(IpNet::V4(Default::default()), None));
            }
            if has_v6 {
                out.push(Route::new(IpNet::V6(Default::default()), None));
            }
            out
        }
    }
}

/// DNS settings from a resolv.conf file (host-local's `resolvConf`): a
/// regular file of at most [`RESOLV_CONF_LIMIT`] bytes (anything else is
/// error 7, and a FIFO is refused without waiting for a writer).
pub fn dns_from_resolv_conf(path: &std::path::Path) -> Result<Dns> {
    let bytes = read_regular_file(path, "ipam.resolvConf", RESOLV_CONF_LIMIT)?;
    let text = String::from_utf8_lossy(&bytes);
    let mut dns = Dns::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => dns.nameservers.extend(words.next().map(str::to_string)),
            Some("domain") => dns.domain = words.next().map(str::to_string),
            Some("search") => dns.search = words.map(str::to_string).collect(),
            Some("options") => dns.options.extend(words.map(str::to_string)),
            _ => {}
        }
    }
    Ok(dns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let p = tmp.path().join("resolv.conf");
        std::fs::write(&p, "# c\nnameserver 10.96.0.10\nnameserver fd00::a\nsearch a.svc b.svc\noptions ndots:5\ndomain x\n")
            .expect("write");
        let d = dns_from_resolv_conf(&p).expect("parse");
        assert_eq!(d.nameservers, vec!["10.96.0.10", "fd00::a"]);
        assert_eq!(d.search, vec!["a.svc", "b.svc"]);
        assert_eq!(d.options, vec!["ndots:5"]);
        assert_eq!(d.domain.as_deref(), Some("x"));
    }

    /// A FIFO used to block ADD for ever (read_to_string waits for a
    /// writer); /dev/zero would have been read until memory ran out.
    #[test]
    fn resolv_conf_fifo_or_device_refused_at_once() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let fifo = tmp.path().join("resolv.conf");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(dns_from_resolv_conf(&fifo).err().map(|e| e.code()));
        });
        let code = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("reading a FIFO resolvConf blocked");
        assert_eq!(code, Some(7));
        assert_eq!(
            dns_from_resolv_conf(std::path::Path::new("/dev/zero"))
                .err()
                .map(|e| e.code()),
            Some(7)
        );
    }
}
