//! Direct server return (`--lb-mode dsr|hybrid`): a flow from outside to a
//! backend on another node leaves the entry node with the client's address
//! intact, its destination translated to the backend, inside Geneve (UDP
//! 6081) toward the backend's node, the frontend it was sent to in a Geneve
//! option. The backend's node records that frontend as the reply entry of
//! the flow and takes the inner packet, so its egress restores the frontend
//! as the replies' source and they go straight to the client, never back
//! through the entry node.
//!
//! The programs build and strip the Geneve headers themselves (inner IP,
//! no inner Ethernet header), so no tunnel device or kernel module is
//! needed. The entry node keeps one forward entry per flow (its backend and
//! the backend's node), nothing for the replies.

use aya_ebpf::bindings::{
    __sk_buff, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L3_IPV6,
    BPF_F_ADJ_ROOM_ENCAP_L4_UDP, BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_OK, TC_ACT_SHOT,
    bpf_adj_room_mode, bpf_fib_lookup as FibLookup,
};
use aya_ebpf::helpers::{
    bpf_fib_lookup, bpf_ktime_get_ns, bpf_redirect_neigh, bpf_skb_adjust_room,
};
use aya_ebpf::programs::TcContext;
use ferry_ebpf_common::{
    CT_FLAG_EGRESS, CT_FLAG_REPLY, CtValue, DSR_OPT_CLASS, DSR_OPT_TYPE, DSR_OPT_WORDS, DsrOpt,
    LB_MODE_DSR, LB_MODE_HYBRID, PROTO_TCP, PROTO_UDP,
};

use crate::flow::parse;
use crate::flow::{ETH_HLEN, Packet, REFRESH_NS};
use crate::maps::{CONNTRACK, FIB_SCRATCH, LB_CONFIG, NODE_ADDRS, SCRATCH, TUNNEL_SCRATCH};
use crate::packet::{add_words, fold, rewrite};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// Only the route's next hop is wanted, not its MAC.
const BPF_FIB_LOOKUP_SKIP_NEIGH: u32 = 4;
/// Geneve's port, network order.
pub const GENEVE_PORT: u16 = 6081u16.to_be();
/// The VNI DSR packets carry.
const DSR_VNI: u32 = 0xfe44;
/// UDP, Geneve and option headers after the outer IP header.
const TUNNEL_LEN: usize = 8 + 8 + core::mem::size_of::<DsrOpt>();
const OUTER_V4: usize = 20 + TUNNEL_LEN;
const OUTER_V6: usize = 40 + TUNNEL_LEN;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// Whether this node runs DSR (and so takes Geneve DSR packets).
#[inline(always)]
pub fn enabled() -> bool {
    LB_CONFIG
        .get(0)
        .is_some_and(|c| c.lb_mode != ferry_ebpf_common::LB_MODE_SNAT)
}

/// Whether a new flow of `proto` from outside goes by DSR.
#[inline(always)]
pub fn applies(proto: u8) -> bool {
    match LB_CONFIG.get(0) {
        Some(c) => c.lb_mode == LB_MODE_DSR || (c.lb_mode == LB_MODE_HYBRID && proto == PROTO_TCP),
        None => false,
    }
}

/// The backend's node: the next hop of the route to `backend` (a pod
/// CIDR's route via its node), into `out`. `None` for a backend with no
/// gateway (on-link: nothing to tunnel to) or no route.
#[inline(never)]
pub fn node_of(
    skb: *mut __sk_buff,
    p: &Packet,
    backend: &[u32; 4],
    out: &mut [u32; 4],
) -> Option<()> {
    let fib = FIB_SCRATCH.get_ptr_mut(0)?;
    let fib: &mut FibLookup = unsafe {
        *fib = core::mem::zeroed();
        &mut *fib
    };
    fib.family = if p.v4 { AF_INET } else { AF_INET6 };
    fib.l4_protocol = p.proto;
    fib.ifindex = unsafe { (*skb).ifindex };
    if p.v4 {
        fib.__bindgen_anon_4.ipv4_dst = backend[3];
    } else {
        fib.__bindgen_anon_4.ipv6_dst = *backend;
    }
    let rc = unsafe {
        bpf_fib_lookup(
            skb as *mut _,
            fib,
            core::mem::size_of::<FibLookup>() as i32,
            BPF_FIB_LOOKUP_SKIP_NEIGH,
        )
    };
    if rc != i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        return None;
    }
    let hop = unsafe {
        if p.v4 {
            let mut a = *backend;
            a[3] = fib.__bindgen_anon_4.ipv4_dst;
            a
        } else {
            fib.__bindgen_anon_4.ipv6_dst
        }
    };
    if hop == *backend {
        return None;
    }
    *out = hop;
    Some(())
}

/// Sends a packet of DSR flow `ct`: destination to the backend, then the
/// Geneve headers toward its node (`ct.nat_addr`) from this device's
/// address, the frontend (the destination the client used) in the option,
/// out of the device it came in on toward the FIB's next hop.
#[inline(never)]
pub fn send(skb: *mut __sk_buff, p: &Packet, ct: &CtValue) -> i32 {
    match send_inner(skb, p, ct) {
        Some(rc) => rc,
        None => TC_ACT_SHOT as i32,
    }
}

#[inline(always)]
fn send_inner(skb: *mut __sk_buff, p: &Packet, ct: &CtValue) -> Option<i32> {
    let ifindex = unsafe { (*skb).ifindex };
    let node = NODE_ADDRS.get_ptr(&ifindex)?;
    let src = unsafe { if p.v4 { (*node).v4 } else { (*node).v6 } };
    if src == [0; 4] {
        return None;
    }
    let t = TUNNEL_SCRATCH.get_ptr_mut(0)?;
    let h = unsafe { &mut (*t).headers };
    // The inner packet's length before anything is added.
    let inner = (p.len as usize - ETH_HLEN) as u16;
    // Entropy for the underlay's ECMP: the flow's ports and source.
    let sport = (u16::from_be(p.sport) ^ u16::from_be(p.dport) ^ (p.src[3] as u16)) | 0xc000;
    let ip = if p.v4 { 20 } else { 40 };
    let udp_len = (TUNNEL_LEN as u16) + inner;
    if p.v4 {
        let total = 20 + udp_len;
        h[0] = 0x45;
        h[1] = 0;
        h[2..4].copy_from_slice(&total.to_be_bytes());
        h[4..6].copy_from_slice(&[0, 0]);
        // Don't fragment: the tunnel never splits a packet.
        h[6..8].copy_from_slice(&[0x40, 0]);
        h[8] = 64;
        h[9] = PROTO_UDP;
        h[10..12].copy_from_slice(&[0, 0]);
        h[12..16].copy_from_slice(&src[3].to_ne_bytes());
        h[16..20].copy_from_slice(&ct.nat_addr[3].to_ne_bytes());
        let c = !fold(add_words(&h[..20], 0));
        h[10..12].copy_from_slice(&c.to_be_bytes());
    } else {
        h[0..4].copy_from_slice(&[0x60, 0, 0, 0]);
        h[4..6].copy_from_slice(&udp_len.to_be_bytes());
        h[6] = PROTO_UDP;
        h[7] = 64;
        for i in 0..4 {
            h[8 + i * 4..12 + i * 4].copy_from_slice(&src[i].to_ne_bytes());
            h[24 + i * 4..28 + i * 4].copy_from_slice(&ct.nat_addr[i].to_ne_bytes());
        }
    }
    // UDP (no checksum: the inner packet carries its own), Geneve (version
    // 0, options length in words, inner protocol, VNI), then the option.
    let u = &mut h[ip..ip + TUNNEL_LEN];
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&GENEVE_PORT.to_ne_bytes());
    u[4..6].copy_from_slice(&udp_len.to_be_bytes());
    u[6..8].copy_from_slice(&[0, 0]);
    u[8] = (core::mem::size_of::<DsrOpt>() / 4) as u8;
    u[9] = 0;
    let proto = if p.v4 { ETH_P_IP } else { ETH_P_IPV6 };
    u[10..12].copy_from_slice(&proto.to_be_bytes());
    u[12..16].copy_from_slice(&(DSR_VNI << 8).to_be_bytes());
    u[16..18].copy_from_slice(&DSR_OPT_CLASS.to_be_bytes());
    u[18] = DSR_OPT_TYPE;
    u[19] = DSR_OPT_WORDS;
    for i in 0..4 {
        u[20 + i * 4..24 + i * 4].copy_from_slice(&p.dst[i].to_ne_bytes());
    }
    u[36..38].copy_from_slice(&p.dport.to_ne_bytes());
    u[38..40].copy_from_slice(&[0, 0]);
    if rewrite(skb, p, false, &ct.addr, ct.port) != 0 {
        return None;
    }
    let ctx = TcContext::new(skb);
    let mode = bpf_adj_room_mode::BPF_ADJ_ROOM_MAC;
    if p.v4 {
        let flags = u64::from(BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP);
        if unsafe { bpf_skb_adjust_room(skb, OUTER_V4 as i32, mode, flags) } != 0 {
            return None;
        }
        let bytes: &[u8; OUTER_V4] = h[..OUTER_V4].try_into().ok()?;
        ctx.store(ETH_HLEN, bytes, 0).ok()?;
    } else {
        let flags = u64::from(BPF_F_ADJ_ROOM_ENCAP_L3_IPV6 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP);
        if unsafe { bpf_skb_adjust_room(skb, OUTER_V6 as i32, mode, flags) } != 0 {
            return None;
        }
        let bytes: &[u8; OUTER_V6] = h[..OUTER_V6].try_into().ok()?;
        ctx.store(ETH_HLEN, bytes, 0).ok()?;
    }
    Some(unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) } as i32)
}

/// A Geneve packet for this node's port 6081 (`p` its outer headers): when
/// it carries Ferry's DSR option, the option becomes the reply entry of
/// the inner flow (`backend → client`, source back to the frontend), the
/// outer headers go, and the inner packet continues into the stack toward
/// the backend. Anything else passes as it came.
#[inline(never)]
pub fn arrive(skb: *mut __sk_buff, p: &Packet) -> i32 {
    let _ = arrive_inner(skb, p);
    TC_ACT_OK as i32
}

#[inline(always)]
fn arrive_inner(skb: *mut __sk_buff, p: &Packet) -> Option<()> {
    let ctx = TcContext::new(skb);
    let g = p.l4 + 8;
    // Geneve version 0 with our option's length, inner IP of the outer's
    // family, then the option itself.
    let head: [u8; 4] = ctx.load(g).ok()?;
    let inner = if p.v4 { ETH_P_IP } else { ETH_P_IPV6 };
    if head[0] != (core::mem::size_of::<DsrOpt>() / 4) as u8
        || head[1] != 0
        || u16::from_be_bytes([head[2], head[3]]) != inner
    {
        return None;
    }
    let t = TUNNEL_SCRATCH.get_ptr_mut(0)?;
    let opt = unsafe { &mut (*t).opt };
    *opt = ctx.load(g + 8).ok()?;
    if u16::from_be(opt.class) != DSR_OPT_CLASS
        || opt.kind != DSR_OPT_TYPE
        || opt.words != DSR_OPT_WORDS
    {
        return None;
    }
    let outer = if p.v4 { OUTER_V4 } else { OUTER_V6 };
    if p.l4 - p.l3 + TUNNEL_LEN != outer {
        // IPv4 options on the outer header: not ours.
        return None;
    }
    let mode = bpf_adj_room_mode::BPF_ADJ_ROOM_MAC;
    if unsafe { bpf_skb_adjust_room(skb, -(outer as i32), mode, 0) } != 0 {
        return None;
    }
    let ctx = TcContext::new(skb);
    let inner = parse(&ctx)?;
    let s = SCRATCH.get_ptr_mut(0)?;
    let (key, value) = unsafe { (&mut (*s).key, &mut (*s).value) };
    // The reply's tuple.
    *key = inner.key();
    (key.src, key.dst, key.sport, key.dport) = (inner.dst, inner.src, inner.dport, inner.sport);
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(e) = CONNTRACK.get_ptr_mut(&*key) {
        let e = unsafe { &mut *e };
        if e.flags == CT_FLAG_REPLY | CT_FLAG_EGRESS && e.addr == opt.addr && e.port == opt.port {
            if now.saturating_sub(e.last_seen_ns) > REFRESH_NS {
                e.last_seen_ns = now;
            }
            return Some(());
        }
    }
    *value = CtValue {
        last_seen_ns: now,
        addr: opt.addr,
        port: opt.port,
        flags: CT_FLAG_REPLY | CT_FLAG_EGRESS,
        ..CtValue::default()
    };
    CONNTRACK.insert(&*key, &*value, 0).ok()
}
