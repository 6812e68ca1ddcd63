//! The fast path for traffic from outside the node, at XDP on `--devices`:
//! before the kernel allocates a socket buffer.
//!
//! A packet of a flow toward a backend on another node (NodePort,
//! LoadBalancer or externalIP, source-translated to the node as at TC) and
//! its replies are translated here and sent straight back out with
//! `XDP_TX` (or `XDP_REDIRECT` to another of the node's devices), the
//! next hop's MAC from the kernel's FIB: they never enter the stack. Its
//! conntrack entries are the ones TC makes ([`crate::flow::track`]), so
//! either path can carry any packet of the flow.
//!
//! Everything else passes untouched, at the cost of the conntrack and
//! frontend lookups: a new flow to a backend on this node gets its
//! backend and entries here and is translated by TC (whose conntrack hit
//! does it), as is a packet of ours the FIB cannot send yet (no neighbour
//! entry), one with IP options, a fragment, SCTP (its CRC32c is patched at
//! TC), or one whose TTL would expire.
//! Service refusals (RST, ICMP) are left to TC too.

use core::mem::size_of;

use aya_ebpf::EbpfContext as _;
use aya_ebpf::bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX};
use aya_ebpf::bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibLookup};
use aya_ebpf::helpers::{bpf_fib_lookup, bpf_ktime_get_ns, bpf_redirect};
use aya_ebpf::macros::xdp;
use aya_ebpf::programs::XdpContext;
use ferry_ebpf_common::{
    BACKEND_FLAG_LOCAL, CT_FLAG_DSR, CT_FLAG_EGRESS, CT_FLAG_REPLY, CT_FLAG_SNAT, CtKey, CtValue,
    PROTO_UDP, SCOPE_EXTERNAL, ServiceKey, XdpStats, is_v4,
};

use crate::flow::{
    ETH_HLEN, Frame, Packet, REFRESH_NS, count_packet, parse, source_allowed, touch, track,
};
use crate::maps::{CONNTRACK, FIB_SCRATCH, NODE_ADDRS, SCRATCH, XDP_STATS};
use crate::service::{Chosen, Verdict, node_port, select};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// What happened to a packet, for the counters.
#[derive(Clone, Copy)]
#[repr(u32)]
enum Action {
    Passed,
    Tx,
    Redirected,
    Dropped,
    Local,
    ToTc,
}

/// An action and the program's return code in one register (a BPF
/// function returns one).
#[inline(always)]
fn done(action: Action, code: u32) -> u64 {
    (u64::from(action as u32) << 32) | u64::from(code)
}

#[inline(always)]
fn undone(d: u64) -> (Action, u32) {
    let action = match (d >> 32) as u32 {
        1 => Action::Tx,
        2 => Action::Redirected,
        3 => Action::Dropped,
        4 => Action::Local,
        5 => Action::ToTc,
        _ => Action::Passed,
    };
    (action, d as u32)
}

#[xdp]
pub fn ferry_xdp(ctx: XdpContext) -> u32 {
    let (action, code) = fast_path(&ctx).unwrap_or((Action::Passed, XDP_PASS));
    if let Some(s) = XDP_STATS.get_ptr_mut(0) {
        let s: *mut XdpStats = s;
        // Per CPU: a plain add is exact.
        unsafe {
            match action {
                Action::Passed => (*s).passed += 1,
                Action::Tx => (*s).tx += 1,
                Action::Redirected => (*s).redirected += 1,
                Action::Dropped => (*s).dropped += 1,
                Action::Local => (*s).local += 1,
                Action::ToTc => (*s).to_tc += 1,
            }
        }
    }
    code
}

#[inline(always)]
fn fast_path(ctx: &XdpContext) -> Option<(Action, u32)> {
    let p = parse(ctx)?;
    let now = unsafe { bpf_ktime_get_ns() };
    // The tuple in the scratch map: the lookups' key, and the flow `select`
    // hashes.
    let scratch = SCRATCH.get_ptr_mut(0)?;
    let key = unsafe {
        (*scratch).key = p.key();
        &(*scratch).key
    };
    if let Some(entry) = CONNTRACK.get_ptr_mut(key) {
        let (flags, id, stale) = unsafe {
            (
                (*entry).flags,
                (*entry).id,
                now.saturating_sub((*entry).last_seen_ns) > REFRESH_NS,
            )
        };
        // DSR flows are encapsulated at TC (the Geneve device takes an skb).
        if flags & CT_FLAG_DSR != 0 {
            return Some((Action::ToTc, XDP_PASS));
        }
        // Only source-translated flows (a remote backend) leave here; a
        // local backend's are translated by TC.
        if flags & CT_FLAG_SNAT == 0 || flags & CT_FLAG_EGRESS != 0 {
            return Some((Action::Local, XDP_PASS));
        }
        touch(entry, &p, now);
        let ct = unsafe { &*entry };
        let to = unsafe { &mut (*scratch).key };
        if flags & CT_FLAG_REPLY == 0 {
            if stale {
                refresh_snat(&p, ct, now);
            }
            // Toward the backend, from the node.
            (to.src, to.sport, to.dst, to.dport) = (ct.nat_addr, ct.nat_port, ct.addr, ct.port);
        } else {
            // The backend's reply: from the frontend, to the client.
            (to.src, to.sport, to.dst, to.dport) = (ct.addr, ct.port, ct.nat_addr, ct.nat_port);
        }
        let done = undone(forward(ctx, &p, to));
        if matches!(done.0, Action::Tx | Action::Redirected) {
            count_packet(id, p.len);
        }
        return Some(done);
    }
    match new_flow(ctx, &p, now) {
        NewFlow::Pass => Some((Action::Passed, XDP_PASS)),
        NewFlow::Drop => Some((Action::Dropped, XDP_DROP)),
        NewFlow::Local => Some((Action::Local, XDP_PASS)),
        NewFlow::Remote => {
            // `track` left the forward entry in the scratch value.
            let (v, to) = unsafe { (&(*scratch).value, &mut (*scratch).key) };
            (to.src, to.sport, to.dst, to.dport) = (v.nat_addr, v.nat_port, v.addr, v.port);
            let done = undone(forward(ctx, &p, to));
            if matches!(done.0, Action::Tx | Action::Redirected) {
                count_packet(v.id, p.len);
            }
            Some(done)
        }
    }
}

/// The forward entry of a source-translated flow is refreshed here, but
/// its egress entry (`client → backend`) is only hit at TC: refresh it with
/// it, or the collector would end it under a live flow.
#[inline(never)]
fn refresh_snat(p: &Packet, ct: &CtValue, now: u64) {
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let key = unsafe { &mut (*s).key };
    key.src = p.src;
    key.dst = ct.addr;
    key.sport = p.sport;
    key.dport = ct.port;
    if let Some(e) = CONNTRACK.get_ptr_mut(&*key) {
        unsafe { (*e).last_seen_ns = now };
    }
}

enum NewFlow {
    Pass,
    Drop,
    Local,
    Remote,
}

/// A packet of no tracked flow: a frontend's first packet gets its backend
/// and conntrack entries, as at TC.
#[inline(never)]
fn new_flow(ctx: &XdpContext, p: &Packet, now: u64) -> NewFlow {
    let mut svc = ServiceKey {
        addr: p.dst,
        port: p.dport,
        proto: p.proto,
        scope: SCOPE_EXTERNAL,
    };
    // Under DSR, TC picks the backend and sends (or translates) the flow.
    if crate::dsr::applies(p.proto) {
        return NewFlow::Pass;
    }
    let _ = node_port(&mut svc, false);
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return NewFlow::Pass;
    };
    let mut chosen = Chosen::default();
    match select(&svc, 0, Some(unsafe { &(*scratch).key }), &mut chosen) {
        Verdict::To => {}
        // Refusals are answered by TC.
        Verdict::Pass | Verdict::Reject => return NewFlow::Pass,
        Verdict::Drop => return NewFlow::Drop,
    }
    if !source_allowed(p) {
        return NewFlow::Drop;
    }
    if is_v4(&chosen.backend.addr) != p.v4 {
        return NewFlow::Pass;
    }
    let ifindex = ctx.ingress_ifindex() as u32;
    if track(p, &chosen, ifindex, now).is_none() {
        // No node address or NAT port: TC tries again, and drops.
        return NewFlow::Pass;
    }
    if chosen.backend.flags & BACKEND_FLAG_LOCAL != 0 {
        NewFlow::Local
    } else {
        NewFlow::Remote
    }
}

/// Sends the packet on as `to` (its addresses and ports), out of the
/// device the FIB gives with the next hop's MAC. Nothing changes unless it
/// can leave here: without a route, neighbour entry or TTL to spare, it
/// passes to TC as it came. Returns [`done`]'s pair.
#[inline(never)]
fn forward(ctx: &XdpContext, p: &Packet, to: &CtKey) -> u64 {
    let to_tc = done(Action::ToTc, XDP_PASS);
    let (src, sport, dst, dport) = (&to.src, to.sport, &to.dst, to.dport);
    let Some(fib) = FIB_SCRATCH.get_ptr_mut(0) else {
        return to_tc;
    };
    let fib = unsafe {
        *fib = core::mem::zeroed();
        &mut *fib
    };
    let ingress = ctx.ingress_ifindex() as u32;
    fib.family = if p.v4 { AF_INET } else { AF_INET6 };
    fib.l4_protocol = p.proto;
    fib.sport = sport;
    fib.dport = dport;
    fib.ifindex = ingress;
    // The IP length, so the FIB checks it against the MTU.
    fib.__bindgen_anon_1.tot_len = (p.len as usize - ETH_HLEN) as u16;
    if p.v4 {
        fib.__bindgen_anon_3.ipv4_src = src[3];
        fib.__bindgen_anon_4.ipv4_dst = dst[3];
    } else {
        fib.__bindgen_anon_3.ipv6_src = *src;
        fib.__bindgen_anon_4.ipv6_dst = *dst;
    }
    let rc = unsafe { bpf_fib_lookup(ctx.as_ptr(), fib, size_of::<FibLookup>() as i32, 0) };
    if rc != i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        return to_tc;
    }
    let out = fib.ifindex;
    // Another device only if it is one of the node's own (`--devices`,
    // with this program): redirecting to an arbitrary one may drop.
    if out != ingress && NODE_ADDRS.get_ptr(&out).is_none() {
        return to_tc;
    }
    if rewrite(ctx, p, fib, to).is_none() {
        return to_tc;
    }
    if out == ingress {
        done(Action::Tx, XDP_TX)
    } else {
        done(Action::Redirected, unsafe { bpf_redirect(out, 0) } as u32)
    }
}

/// A pointer to a `T` at `off` in the packet, if it is all there.
#[inline(always)]
fn at<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    let start = ctx.data();
    if start + off + size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + off) as *mut T)
}

#[inline(always)]
fn load<T: Copy>(ctx: &XdpContext, off: usize) -> Option<T> {
    Some(unsafe { core::ptr::read_unaligned(at::<T>(ctx, off)?) })
}

/// The XDP program reads the buffer directly, and leaves IPv4 options
/// (L4 at a fixed offset only) and SCTP (its CRC32c) to TC.
impl Frame for XdpContext {
    const FULL: bool = false;

    #[inline(always)]
    fn load<T: Copy>(&self, off: usize) -> Option<T> {
        load(self, off)
    }

    #[inline(always)]
    fn frame_len(&self) -> u32 {
        (self.data_end() - self.data()) as u32
    }
}

/// The one's-complement change of replacing the 32-bit word `old` by
/// `new`, as 16-bit halves (RFC 1624): words stay in the packet's byte
/// order, which the sum does not depend on.
#[inline(always)]
fn word_delta(old: u32, new: u32) -> u32 {
    u32::from(!(old as u16)) + u32::from(!((old >> 16) as u16)) + (new & 0xffff) + (new >> 16)
}

/// A checksum after adding `delta`.
#[inline(always)]
fn apply(check: u16, delta: u32) -> u16 {
    let mut s = u32::from(!check) + delta;
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

/// Writes the new addresses and ports, one hop less of TTL, both
/// checksums and the frame's MACs. `None` (nothing written) when the TTL
/// would run out: the stack answers that.
#[inline(never)]
fn rewrite(ctx: &XdpContext, p: &Packet, fib: &FibLookup, to: &CtKey) -> Option<()> {
    let (src, sport, dst, dport) = (&to.src, to.sport, &to.dst, to.dport);
    let mut l4_delta =
        u32::from(!p.sport) + u32::from(sport) + u32::from(!p.dport) + u32::from(dport);
    if p.v4 {
        let ttl: *mut u16 = at(ctx, ETH_HLEN + 8)?;
        let ip_check: *mut u16 = at(ctx, ETH_HLEN + 10)?;
        let saddr: *mut u32 = at(ctx, ETH_HLEN + 12)?;
        let daddr: *mut u32 = at(ctx, ETH_HLEN + 16)?;
        let old_ttl = unsafe { ttl.read_unaligned() };
        // TTL is the word's first byte, whichever the host's order.
        let ttl_byte = old_ttl.to_ne_bytes()[0];
        if ttl_byte <= 1 {
            return None;
        }
        let mut bytes = old_ttl.to_ne_bytes();
        bytes[0] = ttl_byte - 1;
        let new_ttl = u16::from_ne_bytes(bytes);
        let addr_delta = word_delta(p.src[3], src[3]) + word_delta(p.dst[3], dst[3]);
        let ip_delta = addr_delta + u32::from(!old_ttl) + u32::from(new_ttl);
        unsafe {
            ttl.write_unaligned(new_ttl);
            ip_check.write_unaligned(apply(ip_check.read_unaligned(), ip_delta));
            saddr.write_unaligned(src[3]);
            daddr.write_unaligned(dst[3]);
        }
        l4_delta += addr_delta;
    } else {
        let hop: *mut u8 = at(ctx, ETH_HLEN + 7)?;
        let saddr: *mut [u32; 4] = at(ctx, ETH_HLEN + 8)?;
        let daddr: *mut [u32; 4] = at(ctx, ETH_HLEN + 24)?;
        let hops = unsafe { *hop };
        if hops <= 1 {
            return None;
        }
        for i in 0..4 {
            l4_delta += word_delta(p.src[i], src[i]) + word_delta(p.dst[i], dst[i]);
        }
        unsafe {
            *hop = hops - 1;
            for i in 0..4 {
                (saddr as *mut u32).add(i).write_unaligned(src[i]);
                (daddr as *mut u32).add(i).write_unaligned(dst[i]);
            }
        }
    }
    let ports: *mut [u16; 2] = at(ctx, p.l4)?;
    let check: *mut u16 = at(ctx, p.csum_off())?;
    unsafe {
        (ports as *mut u16).write_unaligned(sport);
        (ports as *mut u16).add(1).write_unaligned(dport);
        let old = check.read_unaligned();
        // An IPv4 UDP datagram without a checksum keeps none; one that
        // sums to zero is sent as all ones.
        if !(p.v4 && p.proto == PROTO_UDP && old == 0) {
            let mut new = apply(old, l4_delta);
            if p.proto == PROTO_UDP && new == 0 {
                new = 0xffff;
            }
            check.write_unaligned(new);
        }
    }
    let eth: *mut [u8; 12] = at(ctx, 0)?;
    let eth = eth as *mut u8;
    for i in 0..6 {
        unsafe {
            *eth.add(i) = fib.dmac[i];
            *eth.add(6 + i) = fib.smac[i];
        }
    }
    Some(())
}
