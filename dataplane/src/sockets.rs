//! Ending UDP sockets connected to a backend that went away.
//!
//! Socket-level balancing translates a connected UDP socket once, at
//! connect(); when its backend goes, the socket would keep sending into
//! nothing. As Cilium does, such sockets are destroyed (sock_diag's
//! `SOCK_DESTROY`), so the application sees an error and reconnects, and
//! its new connect() picks a live backend. TCP sockets are left alone:
//! their connection fails by itself.
//!
//! Owns only that: it reads which processes are in the agent's cgroup,
//! enters their network namespaces on threads of its own, and never touches
//! a socket whose peer is not one of the given backends.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_UDP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_packet_sock_diag::{SockDiagDestroy, SockDiagMessage};
use netlink_sys::Socket;
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("sock_diag: {0}")]
    Netlink(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> SocketError {
    let what = what.into();
    move |source| SocketError::Io { what, source }
}

/// One process's network namespace per distinct namespace of the
/// processes in `cgroup` and its descendants.
fn namespaces(cgroup: &Path) -> Vec<PathBuf> {
    let mut seen: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut dirs = vec![cgroup.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines().filter(|l| !l.is_empty()) {
                let ns = PathBuf::from(format!("/proc/{pid}/ns/net"));
                // A process that exited meanwhile has nothing to destroy.
                if let Ok(meta) = std::fs::metadata(&ns) {
                    seen.entry((meta.dev(), meta.ino())).or_insert(ns);
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            dirs.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    seen.into_values().collect()
}

/// Destroys every UDP socket of the cgroup's processes whose peer is one
/// of `backends`; returns how many went.
pub fn destroy_udp_to(cgroup: &Path, backends: &[SocketAddr]) -> Result<usize, SocketError> {
    if backends.is_empty() {
        return Ok(0);
    }
    let mut total = 0;
    for ns in namespaces(cgroup) {
        let file = match File::open(&ns) {
            Ok(f) => f,
            Err(_) => continue,
        };
        // setns(2) changes the calling thread only: a thread of our own.
        let n = std::thread::scope(|s| {
            s.spawn(|| -> Result<usize, SocketError> {
                move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network))
                    .map_err(|e| io_err(format!("entering {}", ns.display()))(e.into()))?;
                destroy_here(backends)
            })
            .join()
            .unwrap_or_else(|_| Err(SocketError::Netlink("socket thread panicked".into())))
        })?;
        total += n;
    }
    Ok(total)
}

/// Destroys this namespace's UDP sockets connected to `backends`.
fn destroy_here(backends: &[SocketAddr]) -> Result<usize, SocketError> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG).map_err(io_err("opening sock_diag"))?;
    socket.bind_auto().map_err(io_err("binding sock_diag"))?;
    let mut destroyed = 0;
    for (family, any) in [
        (AF_INET, SocketId::new_v4()),
        (AF_INET6, SocketId::new_v6()),
    ] {
        let doomed: Vec<SocketId> = dump_udp(&mut socket, family, any)?
            .into_iter()
            .filter(|id| {
                let peer = SocketAddr::new(unmap(id.destination_address), id.destination_port);
                backends.contains(&peer)
            })
            .collect();
        for id in doomed {
            let msg = SockDiagDestroy::new(SockDiagMessage::InetRequest(InetRequest {
                family,
                protocol: IPPROTO_UDP,
                extensions: ExtensionFlags::empty(),
                states: StateFlags::all(),
                socket_id: id,
            }));
            let mut header = NetlinkHeader::default();
            header.flags = NLM_F_REQUEST;
            send(&mut socket, NetlinkMessage::new(header, msg.into()))?;
            destroyed += 1;
        }
    }
    Ok(destroyed)
}

fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn send<T>(socket: &mut Socket, mut msg: NetlinkMessage<T>) -> Result<(), SocketError>
where
    T: netlink_packet_core::NetlinkSerializable + std::fmt::Debug,
{
    msg.finalize();
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    socket
        .send(&buf, 0)
        .map_err(io_err("sending to sock_diag"))?;
    Ok(())
}

/// Every UDP socket of `family` in this namespace.
fn dump_udp(socket: &mut Socket, family: u8, any: SocketId) -> Result<Vec<SocketId>, SocketError> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let request = SockDiagMessage::InetRequest(InetRequest {
        family,
        protocol: IPPROTO_UDP,
        extensions: ExtensionFlags::empty(),
        states: StateFlags::all(),
        socket_id: any,
    });
    send(socket, NetlinkMessage::new(header, request.into()))?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let size = socket
            .recv(&mut &mut buf[..], 0)
            .map_err(io_err("reading sock_diag"))?;
        let mut offset = 0;
        while offset < size {
            let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&buf[offset..size])
                .map_err(|e| SocketError::Netlink(e.to_string()))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    out.push(r.header.socket_id);
                }
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => {
                    return Err(SocketError::Netlink(format!("dump refused: {e:?}")));
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            offset += len;
        }
    }
}
