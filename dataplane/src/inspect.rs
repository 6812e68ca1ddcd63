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
