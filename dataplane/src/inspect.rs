//! `ferry-agent inspect`: what the pinned maps hold, in the shape of
//! `cilium bpf lb list` — one line per frontend with its live backends,
//! or the raw backend, affinity and socket translation entries.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use ferry_ebpf_common::{
    Backend, CT_FLAG_CLOSING, CT_FLAG_DSR, CT_FLAG_EGRESS, CT_FLAG_REPLY, CT_FLAG_SNAT, PROTO_SCTP,
    PROTO_TCP, PROTO_UDP, SCOPE_EXTERNAL, SVC_FLAG_AFFINITY, SVC_FLAG_MAGLEV, ServiceKey, XdpStats,
};

use crate::bpf::{Maps, TC_EGRESS, TC_INGRESS, XDP};
use crate::service::programmer::words_addr;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum What {
    /// Frontends and the backends they translate to.
    Services,
    /// Every backend slot.
    Backends,
    /// Session affinity entries.
    Affinity,
    /// Socket reverse translations (connected and UDP sockets).
    Sockets,
    /// Flows tracked by per-packet translation.
    Conntrack,
    /// Which programs each device has (XDP fast path, TC), and the XDP
    /// counters.
    Devices,
    /// NetworkPolicy: each of this node's pods (or the one at the address
    /// given after it), its isolation and what its policies allow.
    Policy,
}

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("reading {map}: {source}")]
    Map {
        map: &'static str,
        source: Box<aya::maps::MapError>,
    },
    #[error(transparent)]
    Io(#[from] io::Error),
}

fn read_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> InspectError {
    move |e| InspectError::Map {
        map,
        source: Box::new(e),
    }
}

fn proto_name(p: u8) -> &'static str {
    match p {
        PROTO_TCP => "TCP",
        PROTO_UDP => "UDP",
        PROTO_SCTP => "SCTP",
        _ => "?",
    }
}

fn sockaddr(addr: &[u32; 4], port_be: u16) -> SocketAddr {
    SocketAddr::new(words_addr(addr), u16::from_be(port_be))
}

fn frontend(k: &ServiceKey) -> String {
    let scope = if k.scope == SCOPE_EXTERNAL {
        " (external)"
    } else {
        ""
    };
    format!(
        "{} {}{scope}",
        sockaddr(&k.addr, k.port),
        proto_name(k.proto)
    )
}

fn backend(b: &Backend) -> SocketAddr {
    sockaddr(&b.addr, b.port)
}

/// Prints `what`; `links_dir` is where the agent pins its program links.
pub fn print(
    maps: &Maps,
    links_dir: &Path,
    what: What,
    out: &mut impl Write,
) -> Result<(), InspectError> {
    match what {
        What::Services => {
            let mut slots: BTreeMap<(u32, u8, u16), SocketAddr> = BTreeMap::new();
            for entry in maps.backends.iter() {
                let (k, v) = entry.map_err(read_err("backends"))?;
                slots.insert((k.id, k.rev, k.slot), backend(&v));
            }
            let mut rows: Vec<(String, String)> = Vec::new();
            for entry in maps.services.iter() {
                let (k, v) = entry.map_err(read_err("services"))?;
                let backends: Vec<String> = (0..v.count)
                    .map(|slot| match slots.get(&(v.id, v.rev, slot)) {
                        Some(b) => b.to_string(),
                        None => format!("<missing slot {slot}>"),
                    })
                    .collect();
                let mut affinity = if v.flags & SVC_FLAG_AFFINITY != 0 {
                    format!(" affinity={}s", v.affinity_timeout)
                } else {
                    String::new()
                };
                if v.flags & SVC_FLAG_MAGLEV != 0 {
                    affinity.push_str(" lb=maglev");
                }
                let list = if backends.is_empty() {
                    "(no endpoints: reject)".to_owned()
                } else {
                    backends.join(", ")
                };
                rows.push((
                    frontend(&k),
                    format!("group={} rev={}{affinity} -> {list}", v.id, v.rev),
                ));
            }
            rows.sort();
            writeln!(out, "{:<48} BACKENDS", "FRONTEND")?;
            for (f, b) in rows {
                writeln!(out, "{f:<48} {b}")?;
            }
        }
        What::Backends => {
            writeln!(out, "{:<8} {:<4} {:<6} BACKEND", "GROUP", "REV", "SLOT")?;
            let mut rows = Vec::new();
            for entry in maps.backends.iter() {
                let (k, v) = entry.map_err(read_err("backends"))?;
                rows.push((k.id, k.rev, k.slot, backend(&v)));
            }
            rows.sort();
            for (id, rev, slot, b) in rows {
                writeln!(out, "{id:<8} {rev:<4} {slot:<6} {b}")?;
            }
        }
        What::Affinity => {
            writeln!(
                out,
                "{:<8} {:<40} {:<40} LAST USED (ns)",
                "GROUP", "CLIENT", "BACKEND"
            )?;
            for entry in maps.affinity.iter() {
                let (k, v) = entry.map_err(read_err("affinity"))?;
                let client = if k.netns_cookie != 0 {
                    format!("netns:{}", k.netns_cookie)
                } else {
                    IpAddr::to_string(&words_addr(&k.client))
                };
                writeln!(
                    out,
                    "{:<8} {client:<40} {:<40} {}",
                    k.id,
                    backend(&v.backend).to_string(),
                    v.last_used_ns
                )?;
            }
        }
        What::Sockets => {
            writeln!(out, "{:<20} {:<40} FRONTEND", "SOCKET", "BACKEND")?;
            for entry in maps.sock_revnat.iter() {
                let (k, v) = entry.map_err(read_err("socket translations"))?;
                writeln!(
                    out,
                    "{:<20} {:<40} {}",
                    k.cookie,
                    backend(&k.backend).to_string(),
                    sockaddr(&v.addr, v.port)
                )?;
            }
        }
        What::Conntrack => {
            writeln!(
                out,
                "{:<5} {:<46} {:<46} {:<24} GROUP",
                "PROTO", "FLOW", "REWRITE", "KIND"
            )?;
            let now = crate::conntrack::now_ns();
            for entry in maps.conntrack.iter() {
                let (k, v) = entry.map_err(read_err("conntrack"))?;
                let flow = format!(
                    "{} -> {}",
                    sockaddr(&k.src, k.sport),
                    sockaddr(&k.dst, k.dport)
                );
                let (kind, rewrite) = if v.flags & CT_FLAG_DSR != 0 {
                    (
                        "forward(dsr)",
                        format!(
                            "dst={} via {}",
                            sockaddr(&v.addr, v.port),
                            words_addr(&v.nat_addr)
                        ),
                    )
                } else {
                    match (
                        v.flags & CT_FLAG_EGRESS != 0,
                        v.flags & CT_FLAG_REPLY != 0,
                        v.flags & CT_FLAG_SNAT != 0,
                    ) {
                        (false, false, false) => {
                            ("forward", format!("dst={}", sockaddr(&v.addr, v.port)))
                        }
                        (false, false, true) => (
                            "forward(snat)",
                            format!(
                                "dst={} src={}",
                                sockaddr(&v.addr, v.port),
                                sockaddr(&v.nat_addr, v.nat_port)
                            ),
                        ),
                        (false, true, _) => (
                            "reply(snat)",
                            format!(
                                "src={} dst={}",
                                sockaddr(&v.addr, v.port),
                                sockaddr(&v.nat_addr, v.nat_port)
                            ),
                        ),
                        (true, true, _) => ("reply", format!("src={}", sockaddr(&v.addr, v.port))),
                        (true, false, _) => {
                            ("snat", format!("src={}", sockaddr(&v.nat_addr, v.nat_port)))
                        }
                    }
                };
                let idle = now.saturating_sub(v.last_seen_ns) / 1_000_000_000;
                let closing = if v.flags & CT_FLAG_CLOSING != 0 {
                    ",closing"
                } else {
                    ""
                };
                writeln!(
                    out,
                    "{:<5} {flow:<46} {rewrite:<46} {:<24} {}",
                    proto_name(k.proto),
                    format!("{kind}{closing} idle={idle}s"),
                    v.id
                )?;
            }
        }
        What::Devices => devices(maps, links_dir, out)?,
        // Its maps are opened apart (`bpf::PolicyMaps`): see [`policy`].
        What::Policy => writeln!(out, "the policy maps are printed by `inspect policy`")?,
    }
    Ok(())
}

/// One line per device with the programs pinned for it, then the XDP
/// fast path's counters.
fn devices(maps: &Maps, links_dir: &Path, out: &mut impl Write) -> Result<(), InspectError> {
    let mut by_device: BTreeMap<String, Vec<&'static str>> = BTreeMap::new();
    let names = std::fs::read_dir(links_dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    for name in names {
        for (program, path) in [
            (XDP, "xdp(native)"),
            (TC_INGRESS, "tc-ingress"),
            (TC_EGRESS, "tc-egress"),
        ] {
            if let Some(dev) = name.strip_prefix(&format!("{program}_")) {
                by_device.entry(dev.to_owned()).or_default().push(path);
            }
        }
    }
    writeln!(out, "{:<24} {:<14} PROGRAMS", "DEVICE", "FAST PATH")?;
    for (dev, programs) in by_device {
        let path = if programs.contains(&"xdp(native)") {
            "xdp"
        } else {
            "tc"
        };
        writeln!(out, "{dev:<24} {path:<14} {}", programs.join(", "))?;
    }
    let mut sum = XdpStats::default();
    if let Ok(per_cpu) = maps.xdp_stats.get(&0, 0) {
        for s in per_cpu.iter() {
            sum.passed += s.passed;
            sum.tx += s.tx;
            sum.redirected += s.redirected;
            sum.dropped += s.dropped;
            sum.local += s.local;
            sum.to_tc += s.to_tc;
        }
    }
    writeln!(
        out,
        "xdp packets: tx={} redirected={} dropped={} local={} to_tc={} passed={}",
        sum.tx, sum.redirected, sum.dropped, sum.local, sum.to_tc, sum.passed
    )?;
    Ok(())
}

/// What `inspect policy` asks the agent to name for `written`: the pods'
/// and peers' addresses (at most three per identity, as shown), the
/// policies of the rules and the pods' sets, and `pod` (`NS/NAME`).
pub fn policy_query(
    written: &crate::policy::programmer::Written,
    pod: Option<&str>,
) -> crate::observe::names::NameQuery {
    use crate::observe::names::MAX_QUERY_ENTRIES;
    let mut shown: BTreeMap<u32, usize> = BTreeMap::new();
    let mut addresses: Vec<IpAddr> = written.endpoints.keys().map(words_addr).collect();
    for (addr, id) in &written.identities {
        let n = shown.entry(*id).or_default();
        if *n < 3 {
            *n += 1;
            addresses.push(words_addr(addr));
        }
    }
    addresses.truncate(MAX_QUERY_ENTRIES);
    let mut policies: Vec<u32> = written.rules.values().map(|v| v.policy).collect();
    policies.sort_unstable();
    policies.dedup();
    policies.truncate(MAX_QUERY_ENTRIES);
    let mut sets: Vec<u32> = written.endpoints.values().map(|e| e.set).collect();
    sets.sort_unstable();
    sets.dedup();
    sets.truncate(MAX_QUERY_ENTRIES);
    crate::observe::names::NameQuery {
        addresses,
        pods: pod.map(str::to_owned).into_iter().collect(),
        policies,
        sets,
    }
}

/// `inspect policy`: each of this node's pods (or those at `only`) with
/// its isolation and the allow table of its policy set, peers shown as the
/// pods holding their identity or the prefixes of their ipBlocks, named
/// with `names` where the agent gave them.
pub fn policy(
    written: &crate::policy::programmer::Written,
    names: &crate::observe::names::Names,
    only: &[IpAddr],
    out: &mut impl Write,
) -> Result<(), InspectError> {
    use ferry_ebpf_common::policy::{
        DIR_INGRESS, EP_ISOLATED_EGRESS, EP_ISOLATED_INGRESS, IDENTITY_ANY, IDENTITY_CIDR_BIT,
        IDENTITY_HOST, RULE_PREFIX_ANY_PORT, RULE_PREFIX_ANY_PROTO,
    };
    let mut holders: BTreeMap<u32, Vec<IpAddr>> = BTreeMap::new();
    for (addr, id) in &written.identities {
        holders.entry(*id).or_default().push(words_addr(addr));
    }
    let mut blocks: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for ((len, key), id) in &written.cidrs {
        let ip = words_addr(&key.addr);
        let bits = if ip.is_ipv4() {
            len.saturating_sub(96)
        } else {
            *len
        };
        blocks.entry(*id).or_default().push(format!("{ip}/{bits}"));
    }
    let named = |ip: IpAddr| match names.pod(ip) {
        Some(p) => format!("{}/{} {ip}", p.namespace, p.name),
        None => ip.to_string(),
    };
    let peer = |id: u32| -> String {
        match id {
            IDENTITY_ANY => "anyone".into(),
            IDENTITY_HOST => "this node".into(),
            _ if id & IDENTITY_CIDR_BIT != 0 => match blocks.get(&id) {
                Some(b) => format!("ipBlock {}", b.join(" ")),
                None => format!("ipBlock #{}", id & !IDENTITY_CIDR_BIT),
            },
            _ => {
                let addrs = holders.get(&id).map(Vec::as_slice).unwrap_or_default();
                let shown: Vec<String> = addrs.iter().take(3).map(|ip| named(*ip)).collect();
                let more = addrs.len().saturating_sub(3);
                let more = if more > 0 {
                    format!(" +{more} more")
                } else {
                    String::new()
                };
                format!("pods #{id} ({}{more})", shown.join(" "))
            }
        }
    };
    for (addr, ep) in &written.endpoints {
        let ip = words_addr(addr);
        if !only.is_empty() && !only.contains(&ip) {
            continue;
        }
        let iso = match (
            ep.flags & EP_ISOLATED_INGRESS != 0,
            ep.flags & EP_ISOLATED_EGRESS != 0,
        ) {
            (false, false) => "not isolated: everything passes",
            (true, false) => "isolated for ingress",
            (false, true) => "isolated for egress",
            (true, true) => "isolated for ingress and egress",
        };
        let pod = names
            .pod(ip)
            .map(|p| format!("  {}/{}", p.namespace, p.name))
            .unwrap_or_default();
        let by: Vec<String> = names
            .set_policies(ep.set)
            .iter()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect();
        let by = if by.is_empty() {
            String::new()
        } else {
            format!("  (policies: {})", by.join(", "))
        };
        writeln!(out, "{ip}{pod}  set {}  {iso}{by}", ep.set)?;
        if ep.flags == 0 {
            continue;
        }
        writeln!(
            out,
            "  {:<9} {:<44} {:<6} {:<13} POLICY",
            "DIRECTION", "PEER", "PROTO", "PORTS"
        )?;
        let mut any = false;
        for ((len, k), v) in written.rules.iter().filter(|((_, k), _)| k.set == ep.set) {
            let dir = if k.dir == DIR_INGRESS {
                "ingress"
            } else {
                "egress"
            };
            let proto = if *len <= RULE_PREFIX_ANY_PROTO {
                "any".to_owned()
            } else {
                proto_name(k.proto).to_owned()
            };
            let ports = if *len <= RULE_PREFIX_ANY_PORT {
                "any".to_owned()
            } else {
                let first = u16::from_be(k.port);
                let span = 1u32 << (16 - (len - RULE_PREFIX_ANY_PORT).min(16));
                let last = u32::from(first) + span - 1;
                if span == 1 {
                    first.to_string()
                } else {
                    format!("{first}-{last}")
                }
            };
            let policy = match names.policy(v.policy) {
                Some(p) => format!("{}/{}", p.namespace, p.name),
                None => format!("#{}", v.policy),
            };
            writeln!(
                out,
                "  {dir:<9} {:<44} {proto:<6} {ports:<13} {policy}",
                peer(k.peer),
            )?;
            any = true;
        }
        if !any {
            writeln!(out, "  (allows nothing)")?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod policy_tests {
    use super::*;
    use crate::observe::names::{Names, PodName};
    use crate::policy::programmer::Written;
    use crate::service::programmer::addr_words;
    use ferry_ebpf_common::policy::{
        DIR_EGRESS, DIR_INGRESS, EP_ISOLATED_INGRESS, IDENTITY_ANY, IDENTITY_CIDR_BIT,
        PolicyCidrKey, PolicyEndpoint, PolicyRuleKey, PolicyRuleValue,
    };

    #[test]
    fn the_allow_table_names_peers_protocols_and_port_ranges() {
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let mut w = Written::default();
        let ep = |set, flags| PolicyEndpoint {
            set,
            flags,
            ..PolicyEndpoint::default()
        };
        w.endpoints
            .insert(addr_words(ip("10.244.0.5")), ep(3, EP_ISOLATED_INGRESS));
        w.endpoints.insert(addr_words(ip("10.244.0.6")), ep(0, 0));
        w.identities.insert(addr_words(ip("10.244.1.7")), 100);
        w.cidrs.insert(
            (
                96 + 12,
                PolicyCidrKey {
                    addr: addr_words(ip("172.16.0.0")),
                },
            ),
            IDENTITY_CIDR_BIT | 1,
        );
        let rule = |peer, dir, proto, port: u16, len| {
            (
                (
                    len,
                    PolicyRuleKey {
                        set: 3,
                        peer,
                        dir,
                        proto,
                        port: port.to_be(),
                    },
                ),
                PolicyRuleValue { policy: 7 },
            )
        };
        w.rules.extend([
            rule(100, DIR_INGRESS, 6, 80, 96),
            rule(IDENTITY_CIDR_BIT | 1, DIR_INGRESS, 17, 5300, 94),
            rule(IDENTITY_ANY, DIR_EGRESS, 0, 0, 72),
        ]);
        let mut out = Vec::new();
        policy(&w, &Names::default(), &[], &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("10.244.0.5  set 3  isolated for ingress"),
            "{text}"
        );
        assert!(text.contains("pods #100 (10.244.1.7)"), "{text}");
        assert!(text.contains(" #7"), "numbers without names: {text}");
        assert!(text.contains("ipBlock 172.16.0.0/12"), "{text}");
        assert!(text.contains("5300-5303"), "{text}");
        assert!(text.contains("anyone"), "{text}");
        assert!(text.contains("10.244.0.6  set 0  not isolated"), "{text}");
        let mut one = Vec::new();
        policy(&w, &Names::default(), &[ip("10.244.0.6")], &mut one).unwrap();
        assert!(!String::from_utf8(one).unwrap().contains("10.244.0.5"));

        // With the agent's names: pods, the set's policies, the allowing
        // policy; and the query asks for what is shown.
        let q = policy_query(&w, Some("x/a"));
        assert!(q.addresses.contains(&ip("10.244.1.7")) && q.addresses.contains(&ip("10.244.0.5")));
        assert_eq!(
            (q.policies.as_slice(), q.sets.as_slice()),
            ([7].as_slice(), [0, 3].as_slice())
        );
        let mut names = Names::default();
        names.insert_pod(ip("10.244.0.5"), PodName::new("x", "a"));
        names.insert_pod(ip("10.244.1.7"), PodName::new("y", "b"));
        names.insert_policy(7, "x", "allow-b");
        names.insert_set(3, &[(7, true, false)]);
        let mut out = Vec::new();
        policy(&w, &names, &[], &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("10.244.0.5  x/a  set 3  isolated for ingress  (policies: x/allow-b)"),
            "{text}"
        );
        assert!(text.contains("pods #100 (y/b 10.244.1.7)"), "{text}");
        assert!(text.contains(" x/allow-b\n"), "{text}");
    }
}
