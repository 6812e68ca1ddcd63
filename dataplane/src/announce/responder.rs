//! The responder: on each announcing device, answers ARP requests and
//! Neighbor Solicitations for the IPs this node holds, with the device's
//! MAC, and announces an IP it takes with gratuitous ARP or an unsolicited
//! Neighbor Advertisement so neighbours move to this node at once.
//!
//! Per device it owns two AF_PACKET sockets (ARP, and IPv6 narrowed by a
//! classic BPF filter to ICMPv6 Neighbor Solicitations with hop limit
//! 255, so the node's IPv6 traffic never reaches user space) and a UDP
//! socket whose only job is to hold the solicited-node multicast groups of
//! the IPv6 addresses held, so the device accepts their solicitations. It
//! touches no address, route, neighbour entry or sysctl of the node.
//!
//! A frame costs one read into a fixed buffer, a bounded parse and one hash
//! lookup; nothing is kept per frame, so a flood cannot grow memory (the
//! kernel drops what the socket buffer cannot hold). Malformed frames are
//! counted and dropped.

use std::collections::HashMap;
use std::io::{self, Read as _};
use std::net::{IpAddr, Ipv6Addr, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_daemon::logging::LogLimit;
use nix::sys::socket::LinkAddr;
use socket2::{Domain, Protocol, SockFilter, Socket, Type};
use tokio::io::unix::AsyncFd;

use super::Held;
use super::frame::{self, Mac};
use crate::metrics::Metrics;

/// Frames read per wake-up before the other socket gets a turn.
const BATCH: usize = 64;
/// Longest frame read; longer ones are cut (and then fail to parse).
const FRAME_MAX: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum ResponderError {
    #[error("listing the node's links: {0}")]
    Links(#[source] nix::Error),
    #[error("no device named {0} in this network namespace")]
    Missing(String),
    #[error("device {0} has no Ethernet address (L2 announcement needs one)")]
    NotEthernet(String),
    #[error("{what} on {device}: {source}")]
    Socket {
        what: &'static str,
        device: String,
        #[source]
        source: io::Error,
    },
}

/// A device to answer on: its index, MAC and packet-socket address.
#[derive(Debug, Clone)]
pub struct Device {
    pub name: String,
    pub index: u32,
    pub mac: Mac,
    link: LinkAddr,
}

/// Finds `name` among the node's links (getifaddrs' AF_PACKET entries,
/// which carry the index and hardware address).
pub fn find_device(name: &str) -> Result<Device, ResponderError> {
    let links = nix::ifaddrs::getifaddrs().map_err(ResponderError::Links)?;
    for ifa in links {
        if ifa.interface_name != name {
            continue;
        }
        let Some(link) = ifa.address.as_ref().and_then(|a| a.as_link_addr()).copied() else {
            continue;
        };
        // ARPHRD_ETHER.
        if link.hatype() != 1 || link.halen() != 6 {
            return Err(ResponderError::NotEthernet(name.to_owned()));
        }
        let mac = link
            .addr()
            .ok_or_else(|| ResponderError::NotEthernet(name.to_owned()))?;
        let index =
            u32::try_from(link.ifindex()).map_err(|_| ResponderError::Missing(name.to_owned()))?;
        return Ok(Device {
            name: name.to_owned(),
            index,
            mac,
            link,
        });
    }
    Err(ResponderError::Missing(name.to_owned()))
}

// Classic BPF, as the kernel runs it on a packet socket (offsets from the
// start of the Ethernet header).
const LD_H_ABS: u16 = 0x28;
const LD_B_ABS: u16 = 0x30;
const JEQ_K: u16 = 0x15;
const RET_K: u16 = 0x06;
const ACCEPT: u32 = FRAME_MAX as u32;

/// ARP requests about IPv4 only.
fn arp_filter() -> [SockFilter; 6] {
    [
        SockFilter::new(LD_H_ABS, 0, 0, 20), // ARP opcode
        SockFilter::new(JEQ_K, 0, 3, 1),     // request?
        SockFilter::new(LD_H_ABS, 0, 0, 16), // protocol type
        SockFilter::new(JEQ_K, 0, 1, 0x0800),
        SockFilter::new(RET_K, 0, 0, ACCEPT),
        SockFilter::new(RET_K, 0, 0, 0),
    ]
}

/// ICMPv6 Neighbor Solicitations (no extension headers) with hop limit 255.
fn solicitation_filter() -> [SockFilter; 8] {
    [
        SockFilter::new(LD_B_ABS, 0, 0, 20), // next header
        SockFilter::new(JEQ_K, 0, 5, 58),    // ICMPv6?
        SockFilter::new(LD_B_ABS, 0, 0, 21), // hop limit
        SockFilter::new(JEQ_K, 0, 3, 255),
        SockFilter::new(LD_B_ABS, 0, 0, 54), // ICMPv6 type
        SockFilter::new(JEQ_K, 0, 1, 135),   // Neighbor Solicitation?
        SockFilter::new(RET_K, 0, 0, ACCEPT),
        SockFilter::new(RET_K, 0, 0, 0),
    ]
}

fn packet_socket(
    dev: &Device,
    ethertype: u16,
    filter: &[SockFilter],
) -> Result<AsyncFd<Socket>, ResponderError> {
    let err = |what| {
        let device = dev.name.clone();
        move |source| ResponderError::Socket {
            what,
            device,
            source,
        }
    };
    // The protocol goes in network byte order.
    let proto = Protocol::from(i32::from(ethertype.to_be()));
    let sock = Socket::new(Domain::PACKET, Type::RAW, Some(proto))
        .map_err(err("opening a packet socket"))?;
    sock.attach_filter(filter)
        .map_err(err("attaching the socket filter"))?;
    // The address from getifaddrs names the device; its protocol (0) keeps
    // the socket's.
    nix::sys::socket::bind(sock.as_raw_fd(), &dev.link)
        .map_err(|e| io::Error::from_raw_os_error(e as i32))
        .map_err(err("binding the packet socket"))?;
    sock.set_nonblocking(true)
        .map_err(err("making the socket non-blocking"))?;
    // Whatever arrived before the filter and the binding took hold may be
    // from any device: drop it.
    let mut buf = [0u8; FRAME_MAX];
    for _ in 0..4096 {
        if (&sock).read(&mut buf).is_err() {
            break;
        }
    }
    // Tokio 1.54 deprecates the safe constructor for types whose raw fd
    // might change or close under it; its replacement is `unsafe`. A
    // `Socket` owns its fd and returns that one for its whole life, which
    // is exactly the condition `register` asks of its caller.
    #[allow(deprecated)]
    let fd = AsyncFd::new(sock).map_err(err("registering the socket"))?;
    Ok(fd)
}

/// A device's open sockets.
pub struct Responder {
    dev: Device,
    arp: AsyncFd<Socket>,
    nd: AsyncFd<Socket>,
    groups: Option<UdpSocket>,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("device", &self.dev.name)
            .finish_non_exhaustive()
    }
}

impl Responder {
    /// Opens the sockets on `dev` (needs CAP_NET_RAW).
    pub fn open(dev: Device) -> Result<Self, ResponderError> {
        let arp = packet_socket(&dev, frame::ETHERTYPE_ARP, &arp_filter())?;
        let nd = packet_socket(&dev, frame::ETHERTYPE_IPV6, &solicitation_filter())?;
        // A node without IPv6 answers IPv4 only.
        let groups = match UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0)) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(device = %dev.name, error = %e, "no IPv6 socket for multicast groups; IPv6 solicitations may not reach this node");
                None
            }
        };
        Ok(Self {
            dev,
            arp,
            nd,
            groups,
        })
    }

    /// Answers until the process ends.
    pub async fn run(self, held: Arc<Held>, metrics: Arc<Metrics>) {
        let mut changes = held.subscribe();
        let mut state = State {
            dev: self.dev,
            announced: HashMap::new(),
            joined: HashMap::new(),
            groups: self.groups,
            errors: LogLimit::new(Duration::from_secs(10)),
        };
        let mut buf = [0u8; FRAME_MAX];
        state.reconcile(&held, &self.arp, &self.nd, &metrics);
        loop {
            tokio::select! {
                r = self.arp.readable() => {
                    let ok = match r {
                        Ok(mut guard) => state.drain(&mut guard, &mut buf, &metrics, |state, f| state.on_arp(f, &held, &self.arp, &metrics)),
                        Err(e) => state.failed("waiting on the ARP socket", &e),
                    };
                    if !ok {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                r = self.nd.readable() => {
                    let ok = match r {
                        Ok(mut guard) => state.drain(&mut guard, &mut buf, &metrics, |state, f| state.on_solicitation(f, &held, &self.nd, &metrics)),
                        Err(e) => state.failed("waiting on the NDP socket", &e),
                    };
                    if !ok {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                r = changes.changed() => {
                    if r.is_err() {
                        return;
                    }
                    state.reconcile(&held, &self.arp, &self.nd, &metrics);
                }
            }
        }
    }
}

struct State {
    dev: Device,
    /// Each held IP and the announcement round it was last announced in.
    announced: HashMap<IpAddr, u64>,
    /// Solicited-node groups joined, with how many held IPs need each.
    joined: HashMap<Ipv6Addr, usize>,
    groups: Option<UdpSocket>,
    errors: LogLimit,
}

impl State {
    /// Reads up to [`BATCH`] frames; false when the socket failed.
    fn drain(
        &mut self,
        guard: &mut tokio::io::unix::AsyncFdReadyGuard<'_, Socket>,
        buf: &mut [u8; FRAME_MAX],
        metrics: &Metrics,
        mut on_frame: impl FnMut(&mut Self, &[u8]),
    ) -> bool {
        for _ in 0..BATCH {
            match guard.try_io(|s| s.get_ref().read(&mut buf[..])) {
                Ok(Ok(n)) => on_frame(self, buf.get(..n).unwrap_or_default()),
                Ok(Err(e)) => {
                    metrics.l2_errors.inc();
                    return self.failed("reading a frame", &e);
                }
                // Drained: readiness is cleared.
                Err(_) => return true,
            }
        }
        true
    }

    fn failed(&mut self, what: &str, e: &io::Error) -> bool {
        if let Some(left_out) = self.errors.due(Instant::now()) {
            tracing::warn!(device = %self.dev.name, error = %e, left_out, "{what}");
        }
        false
    }

    fn send(&mut self, sock: &AsyncFd<Socket>, frame: &[u8], metrics: &Metrics) -> bool {
        match sock.get_ref().send(frame) {
            Ok(_) => true,
            Err(e) => {
                metrics.l2_errors.inc();
                self.failed("sending a frame", &e);
                false
            }
        }
    }

    fn on_arp(&mut self, f: &[u8], held: &Held, sock: &AsyncFd<Socket>, metrics: &Metrics) {
        let req = match frame::parse_arp(f) {
            Ok(Some(req)) => req,
            Ok(None) => return,
            Err(_) => {
                metrics.l2_malformed.inc();
                return;
            }
        };
        // Not our own frames, nor another's announcement of the address.
        if req.sender_mac == self.dev.mac || req.sender_ip == req.target_ip {
            return;
        }
        if !held.holds(IpAddr::V4(req.target_ip)) {
            return;
        }
        let reply = frame::arp_reply(self.dev.mac, req.target_ip, &req);
        if self.send(sock, &reply, metrics) {
            metrics.l2_replies("IPv4").inc();
        }
    }

    fn on_solicitation(
        &mut self,
        f: &[u8],
        held: &Held,
        sock: &AsyncFd<Socket>,
        metrics: &Metrics,
    ) {
        let sol = match frame::parse_solicitation(f) {
            Ok(Some(sol)) => sol,
            Ok(None) => return,
            Err(_) => {
                metrics.l2_malformed.inc();
                return;
            }
        };
        if sol.reply_mac == self.dev.mac || !held.holds(IpAddr::V6(sol.target)) {
            return;
        }
        let reply = frame::neighbor_advertisement(self.dev.mac, &sol);
        if self.send(sock, &reply, metrics) {
            metrics.l2_replies("IPv6").inc();
        }
    }

    /// Brings the device in step with what is held: joins and leaves
    /// solicited-node groups, announces every IP held since (or asked to be
    /// announced again since) the last look.
    fn reconcile(
        &mut self,
        held: &Held,
        arp: &AsyncFd<Socket>,
        nd: &AsyncFd<Socket>,
        metrics: &Metrics,
    ) {
        let now = held.rounds();
        let gone: Vec<IpAddr> = self
            .announced
            .keys()
            .filter(|ip| !now.contains_key(ip))
            .copied()
            .collect();
        for ip in gone {
            self.announced.remove(&ip);
            if let IpAddr::V6(v6) = ip {
                self.leave(v6);
            }
        }
        for (ip, round) in now {
            let before = self.announced.insert(ip, round);
            if before == Some(round) {
                continue;
            }
            match ip {
                IpAddr::V4(v4) => {
                    for f in frame::gratuitous_arp(self.dev.mac, v4) {
                        self.send(arp, &f, metrics);
                    }
                }
                IpAddr::V6(v6) => {
                    if before.is_none() {
                        self.join(v6);
                    }
                    self.send(
                        nd,
                        &frame::unsolicited_advertisement(self.dev.mac, v6),
                        metrics,
                    );
                }
            }
            tracing::debug!(device = %self.dev.name, %ip, "announced");
        }
    }

    fn join(&mut self, ip: Ipv6Addr) {
        let group = frame::solicited_node(ip);
        let count = self.joined.entry(group).or_default();
        *count += 1;
        if *count > 1 {
            return;
        }
        if let Some(s) = &self.groups
            && let Err(e) = s.join_multicast_v6(&group, self.dev.index)
        {
            tracing::warn!(device = %self.dev.name, %group, error = %e, "joining the solicited-node group");
        }
    }

    fn leave(&mut self, ip: Ipv6Addr) {
        let group = frame::solicited_node(ip);
        let Some(count) = self.joined.get_mut(&group) else {
            return;
        };
        *count -= 1;
        if *count > 0 {
            return;
        }
        self.joined.remove(&group);
        if let Some(s) = &self.groups
            && let Err(e) = s.leave_multicast_v6(&group, self.dev.index)
        {
            tracing::debug!(device = %self.dev.name, %group, error = %e, "leaving the solicited-node group");
        }
    }
}
