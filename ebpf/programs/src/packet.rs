//! Per-packet load balancing at TC on the node's devices, for traffic the
//! socket hooks never see: packets arriving from other nodes or from
//! outside the cluster for a ClusterIP, ExternalIP or LoadBalancer address.
//!
//! Ingress translates a new flow's destination to a backend and records
//! the flow in the conntrack map, so later packets keep their backend.
//! A backend on this node replies through the device's egress, where the
//! source is turned back into the frontend. A backend on another node would
//! answer the client directly, so such flows are also source-translated to
//! the node's address on egress (as kube-proxy masquerades), and their
//! replies come back through ingress, where both addresses are restored.
//!
//! Conntrack entries, one per direction that needs rewriting (keys are
//! the packet's own tuple):
//! - forward `client → frontend` (ingress): destination becomes the backend;
//! - SNAT `client → backend` (egress, remote backends only): source becomes
//!   node:port;
//! - reply `backend → client` (egress, local backends): source becomes the
//!   frontend;
//! - reply `backend → node:port` (ingress, remote backends): source becomes
//!   the frontend, destination the client.

use aya_ebpf::bindings::{__sk_buff, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT};
use aya_ebpf::helpers::{
    bpf_ktime_get_ns, bpf_redirect, bpf_redirect_neigh, bpf_skb_adjust_room, bpf_skb_change_tail,
};
use aya_ebpf::macros::classifier;
use aya_ebpf::programs::TcContext;
use ferry_ebpf_common::{
    BACKEND_FLAG_LOCAL, Backend, CT_FLAG_DSR, CT_FLAG_EGRESS, CT_FLAG_REPLY, CT_FLAG_SNAT, CtValue,
    PROTO_SCTP, PROTO_TCP, PROTO_UDP, SCOPE_EXTERNAL, SCOPE_INTERNAL, ServiceKey, is_v4,
};
use ferry_ebpf_common::observe::{FLOW_DIR_NONE, FLOW_TRANSLATED, REASON_SERVICE};
use ferry_ebpf_common::policy::{DIR_EGRESS, DIR_INGRESS};

use crate::dsr;
use crate::observe;
use crate::policy;
use crate::flow::{
    ETH_HLEN, Frame, Packet, TCP_ACK, TCP_RST, TCP_SYN, count_packet, parse, source_allowed, touch,
    track, track_dsr,
};
use crate::maps::{CONNTRACK, NODE_ADDRS, NODEPORT_ADDRS, SCRATCH};
use crate::service::{Chosen, Verdict, node_port, select};

const BPF_F_PSEUDO_HDR: u64 = 0x10;
/// The TC programs read a frame through the skb helpers and handle IPv4
/// options and SCTP.
impl Frame for TcContext {
    const FULL: bool = true;

    #[inline(always)]
    fn load<T: Copy>(&self, off: usize) -> Option<T> {
        TcContext::load(self, off).ok()
    }

    #[inline(always)]
    fn frame_len(&self) -> u32 {
        self.len()
    }
}

/// Rewrites the source (`src = true`) or destination address and port,
/// keeping the IPv4 header and TCP/UDP checksums right. A subprogram, so
/// its locals do not pile onto the callers' stack frames.
#[inline(never)]
pub fn rewrite(skb: *mut __sk_buff, p: &Packet, src: bool, addr: &[u32; 4], port: u16) -> i32 {
    match rewrite_inner(&TcContext::new(skb), p, src, addr, port) {
        Some(()) => 0,
        None => -1,
    }
}

#[inline(always)]
fn rewrite_inner(ctx: &TcContext, p: &Packet, src: bool, addr: &[u32; 4], port: u16) -> Option<()> {
    let csum = p.csum_off();
    let flags = p.csum_flags();
    // SCTP's CRC32c covers no IP pseudo-header: only its ports change it.
    let sctp = p.proto == PROTO_SCTP;
    let (old_addr, old_port) = if src {
        (&p.src, p.sport)
    } else {
        (&p.dst, p.dport)
    };
    if p.v4 {
        let off = p.l3 + if src { 12 } else { 16 };
        let (old, new) = (old_addr[3], addr[3]);
        if !sctp {
            ctx.l4_csum_replace(csum, old as u64, new as u64, flags | BPF_F_PSEUDO_HDR | 4)
                .ok()?;
        }
        ctx.l3_csum_replace(p.l3 + 10, old as u64, new as u64, 4)
            .ok()?;
        ctx.store(off, &new, 0).ok()?;
    } else {
        let off = p.l3 + if src { 8 } else { 24 };
        if !sctp {
            for i in 0..4 {
                ctx.l4_csum_replace(
                    csum,
                    old_addr[i] as u64,
                    addr[i] as u64,
                    flags | BPF_F_PSEUDO_HDR | 4,
                )
                .ok()?;
            }
        }
        ctx.store(off, addr, 0).ok()?;
    }
    let port_off = p.l4 + if src { 0 } else { 2 };
    if sctp {
        ok(sctp_port(ctx.skb.skb, p, src, old_port, port))?;
    } else {
        ctx.l4_csum_replace(csum, old_port as u64, port as u64, flags | 2)
            .ok()?;
    }
    ctx.store(port_off, &port, 0).ok()?;
    Some(())
}

/// Updates an SCTP packet's CRC32c for its source (`src`) or destination
/// port changing from `old` to `new` (`ferry_ebpf_common::sctp`); the SCTP
/// packet's length comes from the IP header.
#[inline(never)]
fn sctp_port(skb: *mut __sk_buff, p: &Packet, src: bool, old: u16, new: u16) -> i32 {
    let ctx = TcContext::new(skb);
    let len = if p.v4 {
        ctx.load::<u16>(p.l3 + 2)
            .map(|t| u32::from(u16::from_be(t)).saturating_sub((p.l4 - p.l3) as u32))
    } else {
        ctx.load::<u16>(p.l3 + 4)
            .map(|t| u32::from(u16::from_be(t)))
    };
    let (Ok(len), Ok(crc)) = (len, ctx.load::<u32>(p.csum_off())) else {
        return -1;
    };
    let offset = if src { 0 } else { 2 };
    let crc =
        ferry_ebpf_common::sctp::update_port(u32::from_le(crc), old, new, offset, len & 0xffff);
    match ctx.store(p.csum_off(), &crc.to_le(), 0) {
        Ok(()) => 0,
        Err(_) => -1,
    }
}

#[classifier]
pub fn ferry_tc_ingress(ctx: TcContext) -> i32 {
    match ingress(&ctx) {
        Some(verdict) => verdict,
        None => TC_ACT_OK as i32,
    }
}

#[classifier]
pub fn ferry_tc_egress(ctx: TcContext) -> i32 {
    let _ = egress(&ctx);
    TC_ACT_OK as i32
}

/// A pod's device, packets from the pod: translated as on any device,
/// then judged by the pod's egress policy against the real destination.
#[classifier]
pub fn ferry_pod_tc_ingress(ctx: TcContext) -> i32 {
    let rc = ingress(&ctx).unwrap_or(TC_ACT_OK as i32);
    if rc != TC_ACT_OK as i32 {
        return rc;
    }
    policy::judge(&ctx, DIR_EGRESS)
}

/// A pod's device, packets to the pod: judged by the pod's ingress policy
/// as they arrive (a reply still from its backend, so its flow is found),
/// then translated back.
#[classifier]
pub fn ferry_pod_tc_egress(ctx: TcContext) -> i32 {
    let rc = policy::judge(&ctx, DIR_INGRESS);
    if rc != TC_ACT_OK as i32 {
        return rc;
    }
    let _ = egress(&ctx);
    TC_ACT_OK as i32
}

#[inline(always)]
fn ingress(ctx: &TcContext) -> Option<i32> {
    let p = parse(ctx)?;
    let now = unsafe { bpf_ktime_get_ns() };
    let skb = ctx.skb.skb;
    // Geneve from another node's DSR, for this node (a `--devices` one).
    if p.proto == PROTO_UDP
        && p.dport == dsr::GENEVE_PORT
        && dsr::enabled()
        && NODE_ADDRS.get_ptr(&unsafe { (*skb).ifindex }).is_some()
    {
        return Some(dsr::arrive(skb, &p));
    }
    // The packet's tuple, kept in the scratch map for `new_flow` too.
    let scratch = SCRATCH.get_ptr_mut(0)?;
    let key = unsafe {
        (*scratch).key = p.key();
        &(*scratch).key
    };
    if let Some(entry) = CONNTRACK.get_ptr_mut(key) {
        // Fields are read through the pointer rather than copied out: the
        // call chain below shares one 512-byte stack.
        let (flags, id) = unsafe { ((*entry).flags, (*entry).id) };
        if flags & CT_FLAG_EGRESS != 0 {
            return None;
        }
        touch(entry, &p, now);
        count_packet(id, p.len);
        let ct = unsafe { &*entry };
        if flags & CT_FLAG_DSR != 0 {
            return Some(dsr::send(skb, &p, ct));
        }
        if flags & CT_FLAG_REPLY == 0 {
            // A tracked flow keeps its backend.
            ok(rewrite(skb, &p, false, &ct.addr, ct.port))?;
        } else if flags & CT_FLAG_SNAT != 0 {
            // A remote backend's reply to the node: back to the client,
            // from the frontend.
            let from_node = NODEPORT_ADDRS.get_ptr(&ct.addr).is_some();
            ok(rewrite(skb, &p, true, &ct.addr, ct.port))?;
            ok(rewrite(skb, &p, false, &ct.nat_addr, ct.nat_port))?;
            if from_node {
                // From one of the node's own addresses (a NodePort): the
                // stack would drop a forwarded packet with a local source,
                // so it leaves here, through the device it came in on,
                // toward the next hop the FIB gives for the client.
                let ifindex = unsafe { (*skb).ifindex };
                let rc = unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) };
                return Some(rc as i32);
            }
        }
        return Some(TC_ACT_OK as i32);
    }
    let rc = new_flow(skb, &p, now);
    if rc == DSR_STARTED {
        // `new_flow` left the flow's entry (tracked or not) in the scratch.
        let entry = unsafe { &(*scratch).value };
        return Some(dsr::send(skb, &p, entry));
    }
    Some(rc)
}

/// [`new_flow`] tracked a DSR flow: the caller sends it (a return value no
/// TC verdict uses).
const DSR_STARTED: i32 = -1000;

#[inline(always)]
fn ok(rc: i32) -> Option<()> {
    (rc == 0).then_some(())
}

/// A packet of no tracked flow: a frontend's first packet gets a backend
/// and conntrack entries; anything else passes.
///
/// A device with node addresses (`--devices`) brings traffic from outside
/// the node: external scope, source-translated toward other nodes. Any
/// other device is a pod's (`--pod-devices`): the traffic is in-cluster, as
/// if it had passed the socket hooks, and keeps its source all the way.
#[inline(never)]
fn new_flow(skb: *mut __sk_buff, p: &Packet, now: u64) -> i32 {
    let ifindex = unsafe { (*skb).ifindex };
    let external = NODE_ADDRS.get_ptr(&ifindex).is_some();
    let mut svc = ServiceKey {
        addr: p.dst,
        port: p.dport,
        proto: p.proto,
        scope: if external {
            SCOPE_EXTERNAL
        } else {
            SCOPE_INTERNAL
        },
    };
    let to_node = node_port(&mut svc, false);
    let mut chosen = Chosen::default();
    // The tuple (for affinity and a Maglev group's hash) in the scratch map,
    // where `ingress` put it for its lookup: the stack has no room for it.
    // `track` reuses the scratch later.
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return TC_ACT_OK as i32;
    };
    let flow = unsafe { &(*scratch).key };
    match select(&svc, 0, Some(flow), &mut chosen) {
        Verdict::Pass => {
            // Traffic for the node itself never met a translation: only a
            // flow toward a backend can clash with a stale one.
            if !to_node {
                forget_superseded(p);
            }
            return TC_ACT_OK as i32;
        }
        // kube-proxy rejects: a SYN gets a RST, a datagram an ICMP port
        // unreachable, at once, so the client sees "connection refused"
        // rather than a timeout; anything else drops.
        Verdict::Reject => {
            if p.proto == PROTO_TCP && p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
                return refuse(skb, p);
            }
            if p.proto == PROTO_UDP || p.proto == PROTO_SCTP {
                return unreachable(skb, p);
            }
            return TC_ACT_SHOT as i32;
        }
        Verdict::Drop => return TC_ACT_SHOT as i32,
        Verdict::To => {}
    }
    if external && !source_allowed(p) {
        return TC_ACT_SHOT as i32;
    }
    if is_v4(&chosen.backend.addr) != p.v4 {
        return TC_ACT_OK as i32;
    }
    if external && chosen.backend.flags & BACKEND_FLAG_LOCAL == 0 && dsr::applies(p.proto) {
        let mut node = [0u32; 4];
        // A backend without a node to tunnel to is source-translated.
        if dsr::node_of(skb, p, &chosen.backend.addr, &mut node).is_some() {
            // A Maglev pick needs no entry: every packet of the flow hashes
            // to the same backend again (and on any node).
            return match track_dsr(p, &chosen, &node, now, !chosen.maglev) {
                Some(()) => {
                    count_packet(chosen.id, p.len);
                    if observe::watched() {
                        translated(p, &chosen.backend, ifindex);
                    }
                    DSR_STARTED
                }
                None => TC_ACT_SHOT as i32,
            };
        }
    }
    // ifindex 0 is no device: no source translation.
    match track(p, &chosen, if external { ifindex } else { 0 }, now) {
        Some(()) => {
            count_packet(chosen.id, p.len);
            if observe::watched() {
                translated(p, &chosen.backend, ifindex);
            }
            let _ = rewrite(skb, p, false, &chosen.backend.addr, chosen.backend.port);
            TC_ACT_OK as i32
        }
        None => TC_ACT_SHOT as i32,
    }
}

/// While watched: a new flow's frontend translated to `backend`.
#[inline(never)]
fn translated(p: &Packet, backend: &Backend, ifindex: u32) {
    let Some(e) = observe::slot() else {
        return;
    };
    unsafe {
        (*e).src = p.src;
        (*e).dst = backend.addr;
        (*e).orig_dst = p.dst;
        (*e).sport = p.sport;
        (*e).dport = backend.port;
        (*e).orig_dport = p.dport;
        (*e).proto = p.proto;
        (*e).kind = FLOW_TRANSLATED;
        (*e).dir = FLOW_DIR_NONE;
        (*e).reason = REASON_SERVICE;
        (*e)._pad = 0;
        (*e).policy = 0;
        (*e).set = 0;
        (*e).ifindex = ifindex;
    }
    observe::emit();
}

/// A packet of a new flow that is not translated (it goes straight to its
/// destination) supersedes a translated flow that used the same tuple
/// before: its replies would otherwise be rewritten to come from that
/// flow's frontend, and the client would drop them. The stale reply entry
/// (keyed by this packet's reverse tuple) and the forward entry it names
/// go, as Linux conntrack resolves the same clash for NAT. One lookup, and
/// only for packets no entry and no frontend matched.
#[inline(never)]
fn forget_superseded(p: &Packet) {
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let key = unsafe { &mut (*s).key };
    *key = p.key().reverse();
    let Some(entry) = CONNTRACK.get_ptr(&*key) else {
        return;
    };
    let (flags, frontend, port) = unsafe { ((*entry).flags, (*entry).addr, (*entry).port) };
    // Only a reply entry that restores a frontend on the way back; a
    // source-translated flow's entries are keyed by the node's address.
    if flags & CT_FLAG_REPLY == 0 || flags & CT_FLAG_SNAT != 0 {
        return;
    }
    let _ = CONNTRACK.remove(&*key);
    key.src = p.src;
    key.dst = frontend;
    key.sport = p.sport;
    key.dport = port;
    let _ = CONNTRACK.remove(&*key);
}

#[inline(always)]
fn egress(ctx: &TcContext) -> Option<()> {
    let p = parse(ctx)?;
    let entry = CONNTRACK.get_ptr_mut(&p.key())?;
    let ct: CtValue = unsafe { *entry };
    if ct.flags & CT_FLAG_EGRESS == 0 {
        return None;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    touch(entry, &p, now);
    let skb = ctx.skb.skb;
    if ct.flags & CT_FLAG_REPLY != 0 {
        // A local backend's reply: from the frontend again.
        count_packet(ct.id, p.len);
        ok(rewrite(skb, &p, true, &ct.addr, ct.port))
    } else {
        // Toward a remote backend: from the node, so the reply comes back.
        ok(rewrite(skb, &p, true, &ct.nat_addr, ct.nat_port))
    }
}

/// Turns a SYN into the RST+ACK that answers it and sends it back out the
/// device it came in on: the frame's and packet's addresses and ports are
/// swapped, options and payload cut, and both checksums computed afresh.
#[inline(never)]
fn refuse(skb: *mut __sk_buff, p: &Packet) -> i32 {
    match refuse_inner(skb, p) {
        Some(()) => TC_ACT_REDIRECT as i32,
        None => TC_ACT_SHOT as i32,
    }
}

#[inline(always)]
fn refuse_inner(skb: *mut __sk_buff, p: &Packet) -> Option<()> {
    let ctx = TcContext::new(skb);
    let seq = u32::from_be(ctx.load::<u32>(p.l4 + 4).ok()?);
    let mac: [u8; 12] = ctx.load(0).ok()?;
    let l3_len = if p.v4 { 20 } else { 40 };
    if unsafe { bpf_skb_change_tail(skb, (ETH_HLEN + l3_len + 20) as u32, 0) } != 0 {
        return None;
    }
    let ctx = TcContext::new(skb);
    let addrs = answer_headers(&ctx, p, mac, PROTO_TCP, 20)?;
    // Pseudo-header: addresses, protocol and TCP length.
    let sum = addrs + u32::from(PROTO_TCP) + 20;
    let mut t = [0u8; 20];
    t[0..2].copy_from_slice(&p.dport.to_ne_bytes());
    t[2..4].copy_from_slice(&p.sport.to_ne_bytes());
    t[8..12].copy_from_slice(&seq.wrapping_add(1).to_be_bytes());
    t[12] = 5 << 4;
    t[13] = TCP_RST | TCP_ACK;
    let c = !fold(add_words(&t, sum));
    t[16..18].copy_from_slice(&c.to_be_bytes());
    ctx.store(ETH_HLEN + l3_len, &t, 0).ok()?;
    send_back(skb)
}

/// Writes the frame and IP headers of an answer to `p`: MACs from `mac`
/// swapped, a fresh option-free IP header from the packet's addresses,
/// swapped, carrying `proto` with `payload` bytes. Returns the sum of the
/// addresses, the part of a pseudo-header checksum they make.
#[inline(always)]
fn answer_headers(
    ctx: &TcContext,
    p: &Packet,
    mac: [u8; 12],
    proto: u8,
    payload: u16,
) -> Option<u32> {
    let mut mac = mac;
    mac.rotate_left(6);
    ctx.store(0, &mac, 0).ok()?;
    let mut sum = 0u32;
    if p.v4 {
        let mut h = [0u8; 20];
        h[0] = 0x45;
        h[2..4].copy_from_slice(&(20 + payload).to_be_bytes());
        h[6] = 0x40;
        h[8] = 64;
        h[9] = proto;
        h[12..16].copy_from_slice(&p.dst[3].to_ne_bytes());
        h[16..20].copy_from_slice(&p.src[3].to_ne_bytes());
        let c = !fold(add_words(&h, 0));
        h[10..12].copy_from_slice(&c.to_be_bytes());
        ctx.store(ETH_HLEN, &h, 0).ok()?;
        sum = add_words(&h[12..20], sum);
    } else {
        let mut h = [0u8; 8];
        h[0] = 0x60;
        h[4..6].copy_from_slice(&payload.to_be_bytes());
        h[6] = proto;
        h[7] = 64;
        ctx.store(ETH_HLEN, &h, 0).ok()?;
        ctx.store(ETH_HLEN + 8, &p.dst, 0).ok()?;
        ctx.store(ETH_HLEN + 24, &p.src, 0).ok()?;
        for i in 0..4 {
            sum = add_words(&p.dst[i].to_ne_bytes(), sum);
            sum = add_words(&p.src[i].to_ne_bytes(), sum);
        }
    }
    Some(sum)
}

/// Out of the device the packet came in on, back toward its sender.
#[inline(always)]
fn send_back(skb: *mut __sk_buff) -> Option<()> {
    let ifindex = unsafe { (*skb).ifindex };
    (unsafe { bpf_redirect(ifindex, 0) } == TC_ACT_REDIRECT as i64).then_some(())
}

/// One's-complement sum of big-endian 16-bit words, onto `sum`.
#[inline(always)]
pub fn add_words(bytes: &[u8], mut sum: u32) -> u32 {
    let mut i = 0;
    while i + 1 < bytes.len() {
        sum += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    sum
}

#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

const BPF_ADJ_ROOM_MAC: u32 = 1;
const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;

/// Answers a datagram for a Service without endpoints with an ICMP (or
/// ICMPv6) port unreachable quoting its headers, sent back out the device
/// it came in on.
#[inline(never)]
fn unreachable(skb: *mut __sk_buff, p: &Packet) -> i32 {
    match unreachable_inner(skb, p) {
        Some(()) => TC_ACT_REDIRECT as i32,
        None => TC_ACT_SHOT as i32,
    }
}

#[inline(always)]
fn unreachable_inner(skb: *mut __sk_buff, p: &Packet) -> Option<()> {
    let ctx = TcContext::new(skb);
    let mac: [u8; 12] = ctx.load(0).ok()?;
    // The quote: the IP header (v4 without options) and 8 bytes of UDP.
    let (ip_len, room) = if p.v4 {
        (20usize, 28u32)
    } else {
        (40usize, 48u32)
    };
    if p.l4 - p.l3 != ip_len {
        return None;
    }
    if unsafe { bpf_skb_adjust_room(skb, room as i32, BPF_ADJ_ROOM_MAC, 0) } != 0 {
        return None;
    }
    // New IP header and ICMP header, then the quoted original.
    let icmp_at = ETH_HLEN + ip_len;
    let total = icmp_at + 8 + ip_len + 8;
    if unsafe { bpf_skb_change_tail(skb, total as u32, 0) } != 0 {
        return None;
    }
    let ctx = TcContext::new(skb);
    let quote_len = (ip_len + 8) as u16;
    let (proto, pseudo) = if p.v4 {
        (PROTO_ICMP, false)
    } else {
        (PROTO_ICMPV6, true)
    };
    let addrs = answer_headers(&ctx, p, mac, proto, 8 + quote_len)?;
    // ICMPv6 sums a pseudo-header; ICMP does not.
    let mut sum = if pseudo {
        addrs + u32::from(8 + quote_len) + u32::from(PROTO_ICMPV6)
    } else {
        0
    };
    // The quoted headers moved `room` bytes further in; sum them there.
    let quoted = icmp_at + 8;
    // Word by word: a buffer for the quote would not fit the stack.
    let words = usize::from(quote_len) / 4;
    let mut i = 0;
    while i < 12 && i < words {
        let w: [u8; 4] = ctx.load(quoted + i * 4).ok()?;
        sum = add_words(&w, sum);
        i += 1;
    }
    let mut icmp = [0u8; 8];
    // Port unreachable: type 3 code 3 (ICMPv6: type 1 code 4).
    if p.v4 {
        icmp[0] = 3;
        icmp[1] = 3;
    } else {
        icmp[0] = 1;
        icmp[1] = 4;
    }
    let c = !fold(add_words(&icmp, sum));
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    ctx.store(icmp_at, &icmp, 0).ok()?;
    send_back(skb)
}
