//! NetworkPolicy at a pod's device: one verdict per new flow, in a fixed
//! number of lookups, and every later packet of a judged flow (either way)
//! at one lookup in the policy conntrack map.
//!
//! The pod devices' programs call [`judge`]: on the device's ingress
//! (packets from the pod: the pod's egress) after service translation, so
//! the real backend is judged; on its egress (packets to the pod: the pod's
//! ingress) before reverse translation, so a reply is matched to the flow
//! its request started. The maps and identities are described in
//! `ferry_ebpf_common::policy`; this module only reads the agent's maps and
//! writes the policy conntrack and statistics.

use aya_ebpf::bindings::{TC_ACT_OK, TC_ACT_SHOT};
use aya_ebpf::helpers::bpf_ktime_get_ns;
use aya_ebpf::maps::lpm_trie::Key;
use aya_ebpf::programs::TcContext;
use aya_ebpf::maps::LruHashMap;
use ferry_ebpf_common::observe::{
    FLOW_DROPPED, FLOW_FORWARDED, REASON_FROM_HOST, REASON_NOT_ISOLATED, REASON_POLICY_ALLOWED,
    REASON_POLICY_DENIED, REASON_SELF, REASON_SPOOFED,
};
use ferry_ebpf_common::policy::{
    DIR_EGRESS, DIR_INGRESS, EP_ISOLATED_EGRESS, EP_ISOLATED_INGRESS, IDENTITY_ANY, IDENTITY_HOST,
    PCT_FLAG_CLOSING, PCT_FLAG_EGRESS, PCT_FLAG_INGRESS,
    PolicyCidrKey, PolicyCtValue, PolicyRuleKey, RULE_PREFIX_FULL,
};
use ferry_ebpf_common::{CtKey, PROTO_SCTP, PROTO_TCP, PROTO_UDP, v4_mapped};

use crate::flow::{ETH_HLEN, REFRESH_NS, TCP_FIN, TCP_RST};
use crate::maps::{OBS_SEEN, POL_CIDRS, POL_CT, POL_EP, POL_IDS, POL_RULES, POL_STATS};
use crate::observe;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;

/// Idle timeouts of judged flows (Cilium's): TCP, anything else, and a TCP
/// flow that saw a FIN or RST.
const TCP_IDLE_NS: u64 = 6 * 3600 * 1_000_000_000;
const OTHER_IDLE_NS: u64 = 60 * 1_000_000_000;
const CLOSING_IDLE_NS: u64 = 10 * 1_000_000_000;

/// What policy needs of a packet: any IP protocol, not only the ones the
/// service programs translate.
struct Flow {
    proto: u8,
    src: [u32; 4],
    dst: [u32; 4],
    /// Network order. ICMP echo: the identifier as the request's source
    /// port and the reply's destination port, so a reply is the reverse
    /// tuple of its request.
    sport: u16,
    dport: u16,
    tcp_flags: u8,
    /// ICMP errors and IPv6 neighbour discovery: never judged.
    control: bool,
}

impl Flow {
    fn key(&self) -> CtKey {
        CtKey::new(self.src, self.dst, self.sport, self.dport, self.proto)
    }
}

/// Set in [`judge`]'s result: a flow event waits in the observe slot.
const REPORT: i32 = 0x100;
/// Set in [`judge`]'s result: a new flow at a pod no policy judges, while
/// watched.
const UNJUDGED: i32 = 0x200;

/// The verdict for the packet in `ctx`, `dir` being the pod's direction
/// ([`DIR_EGRESS`] on the pod device's ingress, [`DIR_INGRESS`] on its
/// egress): `TC_ACT_OK` or `TC_ACT_SHOT` (a denied SYN is dropped, so the
/// client times out, as the API's tests expect). Flow events are sent
/// after it returns, in a frame of their own ([`settle`]): its stack and
/// theirs together would not fit the programs' 512 bytes.
#[inline(always)]
pub fn judge(ctx: &TcContext, dir: u8) -> i32 {
    settle(ctx, dir, decide(ctx, dir))
}

#[inline(never)]
fn decide(ctx: &TcContext, dir: u8) -> i32 {
    verdict(ctx, dir).unwrap_or(TC_ACT_OK as i32)
}

#[inline(always)]
fn settle(ctx: &TcContext, dir: u8, rc: i32) -> i32 {
    if rc & UNJUDGED != 0 {
        unjudged(ctx, dir);
    } else if rc & REPORT != 0 {
        observe::emit();
    }
    rc & !(REPORT | UNJUDGED)
}

#[inline(always)]
fn verdict(ctx: &TcContext, dir: u8) -> Option<i32> {
    const PASS: i32 = TC_ACT_OK as i32;
    const DROP: i32 = TC_ACT_SHOT as i32;
    let f = parse(ctx)?;
    let local = if dir == DIR_EGRESS { &f.src } else { &f.dst };
    let ep = POL_EP.get_ptr(local)?;
    let (set, flags, ifindex) = unsafe { ((*ep).set, (*ep).flags, (*ep).ifindex) };
    if f.control {
        return Some(PASS);
    }
    if flags == 0 {
        return Some(if observe::watched() { PASS | UNJUDGED } else { PASS });
    }
    let device = unsafe { (*ctx.skb.skb).ifindex };
    // Another device claiming the pod's address is not the pod.
    if ifindex != 0 && ifindex != device {
        count(dir, REASON_SPOOFED);
        return Some(DROP | note(&f, dir, FLOW_DROPPED, REASON_SPOOFED, 0, set, device));
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let (this_hook, reply_hook) = hooks(dir);
    let key = f.key();
    if let Some(entry) = POL_CT.get_ptr_mut(&key) {
        let (seen, ct_flags) = unsafe { ((*entry).last_seen_ns, (*entry).flags) };
        if fresh(ct_flags, seen, now, f.proto) && ct_flags & this_hook != 0 {
            unsafe {
                if f.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
                    (*entry).flags |= PCT_FLAG_CLOSING;
                    (*entry).last_seen_ns = now;
                } else if now.saturating_sub(seen) > REFRESH_NS {
                    (*entry).last_seen_ns = now;
                }
            }
            return Some(PASS);
        }
    }
    let isolated = if dir == DIR_INGRESS {
        flags & EP_ISOLATED_INGRESS != 0
    } else {
        flags & EP_ISOLATED_EGRESS != 0
    };
    let (reason, policy) = if isolated {
        match allowed(&f, dir, set) {
            Some(grant) => grant,
            None => {
                count(dir, REASON_POLICY_DENIED);
                let report = note(&f, dir, FLOW_DROPPED, REASON_POLICY_DENIED, 0, set, device);
                return Some(DROP | report);
            }
        }
    } else {
        (REASON_NOT_ISOLATED, 0)
    };
    count(dir, reason);
    // This flow's packets pass this hook from now on, and its replies the
    // endpoint's other hook, even when that direction is isolated too.
    mark(&POL_CT, &key, this_hook, now, f.proto);
    mark(&POL_CT, &key.reverse(), reply_hook, now, f.proto);
    Some(PASS | note(&f, dir, FLOW_FORWARDED, reason, policy, set, device))
}

/// The conntrack flag of the hook judging `dir`, and of the one its
/// replies cross.
#[inline(always)]
fn hooks(dir: u8) -> (u32, u32) {
    if dir == DIR_INGRESS {
        (PCT_FLAG_INGRESS, PCT_FLAG_EGRESS)
    } else {
        (PCT_FLAG_EGRESS, PCT_FLAG_INGRESS)
    }
}

/// While watched: a new flow at a pod no policy judges, reported once per
/// hook (its tuple both ways kept in `OBS_SEEN`, which no verdict reads).
#[inline(never)]
fn unjudged(ctx: &TcContext, dir: u8) {
    let Some(f) = parse(ctx) else {
        return;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let (this_hook, reply_hook) = hooks(dir);
    let key = f.key();
    if let Some(entry) = OBS_SEEN.get_ptr(&key) {
        let (seen, flags) = unsafe { ((*entry).last_seen_ns, (*entry).flags) };
        if flags & this_hook != 0 && fresh(flags, seen, now, f.proto) {
            return;
        }
    }
    mark(&OBS_SEEN, &key, this_hook, now, f.proto);
    mark(&OBS_SEEN, &key.reverse(), reply_hook, now, f.proto);
    let device = unsafe { (*ctx.skb.skb).ifindex };
    if note(&f, dir, FLOW_FORWARDED, REASON_NOT_ISOLATED, 0, 0, device) != 0 {
        observe::emit();
    }
}

/// While watched, writes a verdict's event into the observe slot and
/// returns [`REPORT`]; 0 otherwise.
#[inline(always)]
fn note(f: &Flow, dir: u8, kind: u8, reason: u8, policy: u32, set: u32, device: u32) -> i32 {
    if !observe::watched() {
        return 0;
    }
    let Some(e) = observe::slot() else {
        return 0;
    };
    unsafe {
        (*e).src = f.src;
        (*e).dst = f.dst;
        (*e).orig_dst = [0; 4];
        (*e).sport = f.sport;
        (*e).dport = f.dport;
        (*e).orig_dport = 0;
        (*e).proto = f.proto;
        (*e).kind = kind;
        (*e).dir = dir;
        (*e).reason = reason;
        (*e)._pad = 0;
        (*e).policy = policy;
        (*e).set = set;
        (*e).ifindex = device;
    }
    REPORT
}

/// Whether an entry last seen at `seen` still stands at `now`.
#[inline(always)]
fn fresh(flags: u32, seen: u64, now: u64, proto: u8) -> bool {
    let idle = if flags & PCT_FLAG_CLOSING != 0 {
        CLOSING_IDLE_NS
    } else if proto == PROTO_TCP {
        TCP_IDLE_NS
    } else {
        OTHER_IDLE_NS
    };
    now.saturating_sub(seen) <= idle
}

/// Lets packets with tuple `key` pass the hooks in `hook` too (in `map`).
#[inline(always)]
fn mark(map: &LruHashMap<CtKey, PolicyCtValue>, key: &CtKey, hook: u32, now: u64, proto: u8) {
    if let Some(entry) = map.get_ptr_mut(key) {
        let (seen, flags) = unsafe { ((*entry).last_seen_ns, (*entry).flags) };
        if fresh(flags, seen, now, proto) {
            unsafe {
                (*entry).flags = flags | hook;
                (*entry).last_seen_ns = now;
            }
            return;
        }
    }
    let value = PolicyCtValue {
        last_seen_ns: now,
        flags: hook,
        _pad: 0,
    };
    let _ = map.insert(key, &value, 0);
}

/// Whether a rule of set `set` allows the flow's peer, protocol and port,
/// at most three lookups: the peer's pod identity, its CIDR identity, and
/// the rules for anyone. Allowed: why (`REASON_*`) and the allowing
/// policy's number.
#[inline(always)]
fn allowed(f: &Flow, dir: u8, set: u32) -> Option<(u8, u32)> {
    let peer = if dir == DIR_INGRESS { &f.src } else { &f.dst };
    // A pod reaching itself (through its Service, per packet) crosses its
    // own device both ways.
    if f.src == f.dst {
        return Some((REASON_SELF, 0));
    }
    let pod = POL_IDS.get_ptr(peer).map(|id| unsafe { *id });
    if dir == DIR_INGRESS && pod == Some(IDENTITY_HOST) {
        return Some((REASON_FROM_HOST, 0));
    }
    let rule = |identity: u32| {
        let key = Key::new(
            RULE_PREFIX_FULL,
            PolicyRuleKey {
                set,
                peer: identity,
                dir,
                proto: f.proto,
                port: f.dport,
            },
        );
        POL_RULES
            .get(&key)
            .map(|v| (REASON_POLICY_ALLOWED, v.policy))
    };
    if let Some(id) = pod
        && id != IDENTITY_ANY
        && let Some(grant) = rule(id)
    {
        return Some(grant);
    }
    let cidr = POL_CIDRS
        .get(&Key::new(128, PolicyCidrKey { addr: *peer }))
        .copied();
    if let Some(id) = cidr
        && id != IDENTITY_ANY
        && let Some(grant) = rule(id)
    {
        return Some(grant);
    }
    rule(IDENTITY_ANY)
}

/// Counts a judged flow by why (`REASON_*`) and direction.
#[inline(always)]
fn count(dir: u8, reason: u8) {
    if let Some(s) = POL_STATS.get_ptr_mut(0) {
        let i = usize::from(reason & 7) * 2 + usize::from(dir & 1);
        unsafe {
            if let Some(c) = (*s).counts.get_mut(i) {
                *c += 1;
            }
        }
    }
}

#[inline(always)]
fn parse(ctx: &TcContext) -> Option<Flow> {
    let ethertype = u16::from_be(ctx.load::<u16>(12).ok()?);
    let l3 = ETH_HLEN;
    let (v4, proto, src, dst, l4) = match ethertype {
        ETH_P_IP => {
            let vihl: u8 = ctx.load(l3).ok()?;
            let ihl = usize::from(vihl & 0x0f) * 4;
            if ihl < 20 {
                return None;
            }
            // A later fragment carries no ports: the first one was judged.
            let frag = u16::from_be(ctx.load::<u16>(l3 + 6).ok()?);
            if frag & 0x1fff != 0 {
                return None;
            }
            let proto: u8 = ctx.load(l3 + 9).ok()?;
            let src: u32 = ctx.load(l3 + 12).ok()?;
            let dst: u32 = ctx.load(l3 + 16).ok()?;
            (true, proto, v4_mapped(src), v4_mapped(dst), l3 + ihl)
        }
        ETH_P_IPV6 => {
            let proto: u8 = ctx.load(l3 + 6).ok()?;
            let src: [u32; 4] = ctx.load(l3 + 8).ok()?;
            let dst: [u32; 4] = ctx.load(l3 + 24).ok()?;
            (false, proto, src, dst, l3 + 40)
        }
        _ => return None,
    };
    let mut f = Flow {
        proto,
        src,
        dst,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        control: false,
    };
    match proto {
        PROTO_TCP | PROTO_UDP | PROTO_SCTP => {
            f.sport = ctx.load(l4).ok()?;
            f.dport = ctx.load(l4 + 2).ok()?;
            if proto == PROTO_TCP {
                f.tcp_flags = ctx.load(l4 + 13).ok()?;
            }
        }
        PROTO_ICMP if v4 => {
            let ty: u8 = ctx.load(l4).ok()?;
            match ty {
                // Echo request and reply.
                8 => f.sport = ctx.load(l4 + 4).ok()?,
                0 => f.dport = ctx.load(l4 + 4).ok()?,
                // Unreachable, time exceeded, parameter problem.
                3 | 11 | 12 => f.control = true,
                _ => {}
            }
        }
        PROTO_ICMPV6 if !v4 => {
            let ty: u8 = ctx.load(l4).ok()?;
            match ty {
                128 => f.sport = ctx.load(l4 + 4).ok()?,
                129 => f.dport = ctx.load(l4 + 4).ok()?,
                // Errors, and router and neighbour discovery.
                1..=4 | 133..=137 => f.control = true,
                _ => {}
            }
        }
        _ => {}
    }
    Some(f)
}
