//! What the TC and XDP programs share about a flow: the parsed packet, the
//! conntrack entries a new flow gets ([`track`]), their ageing, counters,
//! and `loadBalancerSourceRanges`. Touches only maps, never a packet, so
//! both program types call it.

use aya_ebpf::maps::lpm_trie::Key;
use ferry_ebpf_common::{
    BACKEND_FLAG_LOCAL, CT_FLAG_CLOSING, CT_FLAG_DSR, CT_FLAG_EGRESS, CT_FLAG_REPLY, CT_FLAG_SNAT,
    CtKey, CtValue, NAT_PORT_MAX_DEFAULT, NAT_PORT_MIN_DEFAULT, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
    SOURCE_RANGE_DENY,
    SOURCE_RANGE_FRONTEND_BITS, SourceRangeKey, v4_mapped,
};

use crate::maps::{CONNTRACK, LB_CONFIG, NODE_ADDRS, SCRATCH, SOURCE_RANGES, STATS};
use crate::service::Chosen;

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const BPF_F_MARK_MANGLED_0: u64 = 0x20;
pub const BPF_NOEXIST: u64 = 1;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;
/// How often a flow's `last_seen_ns` is refreshed: a write per packet
/// would bounce the entry's cache line between CPUs.
pub const REFRESH_NS: u64 = 1_000_000_000;
/// Source ports tried for a source-translated flow, after the client's own
/// (when the NAT range holds it).
pub const NAT_PORT_TRIES: u32 = 8;

/// Where the parsed fields sit in the packet.
#[derive(Clone, Copy)]
pub struct Packet {
    pub v4: bool,
    pub l3: usize,
    pub l4: usize,
    pub proto: u8,
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    pub len: u32,
}

impl Packet {
    pub fn key(&self) -> CtKey {
        CtKey::new(self.src, self.dst, self.sport, self.dport, self.proto)
    }

    /// Where the L4 checksum is: TCP's, UDP's, or SCTP's CRC32c.
    pub fn csum_off(&self) -> usize {
        match self.proto {
            PROTO_TCP => self.l4 + 16,
            PROTO_SCTP => self.l4 + 8,
            _ => self.l4 + 6,
        }
    }

    pub fn csum_flags(&self) -> u64 {
        if self.proto == PROTO_UDP {
            BPF_F_MARK_MANGLED_0
        } else {
            0
        }
    }
}

/// A frame being read: the TC programs' skb or the XDP program's buffer.
pub trait Frame {
    /// Whether IPv4 options and SCTP are handled (TC), or left to the next
    /// hook (XDP: L4 at a fixed offset, no CRC32c to patch).
    const FULL: bool;
    fn load<T: Copy>(&self, off: usize) -> Option<T>;
    fn frame_len(&self) -> u32;
}

/// The addresses, ports and offsets of a TCP, UDP or SCTP packet over IPv4
/// or IPv6; `None` for anything else, a non-first fragment, or (without
/// [`Frame::FULL`]) IPv4 options and SCTP.
#[inline(always)]
pub fn parse<F: Frame>(f: &F) -> Option<Packet> {
    let ethertype = u16::from_be(f.load::<u16>(12)?);
    let l3 = ETH_HLEN;
    let (v4, proto, src, dst, l4) = match ethertype {
        ETH_P_IP => {
            let vihl: u8 = f.load(l3)?;
            let ihl = usize::from(vihl & 0x0f) * 4;
            if ihl < 20 || (!F::FULL && vihl != 0x45) {
                return None;
            }
            // Fragments carry no ports after the first; leave them alone.
            let frag = u16::from_be(f.load::<u16>(l3 + 6)?);
            if frag & 0x3fff != 0 {
                return None;
            }
            let proto: u8 = f.load(l3 + 9)?;
            let src: u32 = f.load(l3 + 12)?;
            let dst: u32 = f.load(l3 + 16)?;
            let l4 = if F::FULL { l3 + ihl } else { l3 + 20 };
            (true, proto, v4_mapped(src), v4_mapped(dst), l4)
        }
        ETH_P_IPV6 => {
            // Only L4 right after the fixed header: extension headers are
            // rare on service traffic and passed untouched.
            let proto: u8 = f.load(l3 + 6)?;
            let src: [u32; 4] = f.load(l3 + 8)?;
            let dst: [u32; 4] = f.load(l3 + 24)?;
            (false, proto, src, dst, l3 + 40)
        }
        _ => return None,
    };
    let sctp = F::FULL && proto == PROTO_SCTP;
    if proto != PROTO_TCP && proto != PROTO_UDP && !sctp {
        return None;
    }
    let sport: u16 = f.load(l4)?;
    let dport: u16 = f.load(l4 + 2)?;
    let tcp_flags = if proto == PROTO_TCP {
        f.load::<u8>(l4 + 13)?
    } else {
        0
    };
    Some(Packet {
        v4,
        l3,
        l4,
        proto,
        src,
        dst,
        sport,
        dport,
        tcp_flags,
        len: f.frame_len(),
    })
}

/// Refreshes a hit entry's age and notes a closing TCP flow.
#[inline(always)]
pub fn touch(entry: *mut CtValue, p: &Packet, now: u64) {
    unsafe {
        if p.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
            (*entry).flags |= CT_FLAG_CLOSING;
            (*entry).last_seen_ns = now;
        } else if now.saturating_sub((*entry).last_seen_ns) > REFRESH_NS {
            (*entry).last_seen_ns = now;
        }
    }
}

#[inline(always)]
pub fn count_packet(id: u32, len: u32) {
    if let Some(s) = STATS.get_ptr_mut(id) {
        unsafe {
            (*s).packets += 1;
            (*s).bytes += u64::from(len);
        }
    }
}

/// Whether `loadBalancerSourceRanges` let the packet's client reach its
/// frontend: no entry for the frontend (no ranges), or the longest match is
/// an allow entry.
#[inline(never)]
pub fn source_allowed(p: &Packet) -> bool {
    let key = Key::new(
        SOURCE_RANGE_FRONTEND_BITS + 128,
        SourceRangeKey {
            frontend: p.dst,
            port: p.dport,
            proto: p.proto,
            _pad: 0,
            src: p.src,
        },
    );
    SOURCE_RANGES
        .get(&key)
        .is_none_or(|v| *v != SOURCE_RANGE_DENY)
}

/// Records a new flow to `chosen`: the forward entry, and the entries its
/// replies (and, for a remote backend of external traffic arriving on
/// device `snat_from`, non-zero, its source translation) need. The entries are built
/// in the per-CPU scratch map, not on the stack.
#[inline(never)]
pub fn track(p: &Packet, chosen: &Chosen, snat_from: u32, now: u64) -> Option<()> {
    let s = SCRATCH.get_ptr_mut(0)?;
    let backend = &chosen.backend;
    let (key, value) = unsafe { (&mut (*s).key, &mut (*s).value) };
    // The reply's tuple: from the backend to the client.
    *key = CtKey::new(backend.addr, p.src, backend.port, p.sport, p.proto);
    *value = CtValue {
        last_seen_ns: now,
        addr: p.dst,
        port: p.dport,
        id: chosen.id,
        flags: CT_FLAG_REPLY | CT_FLAG_EGRESS,
        ..CtValue::default()
    };
    let mut nat_port = 0u16;
    if snat_from != 0 && backend.flags & BACKEND_FLAG_LOCAL == 0 {
        let node = NODE_ADDRS.get_ptr(&snat_from)?;
        key.dst = unsafe { if p.v4 { (*node).v4 } else { (*node).v6 } };
        if key.dst == [0; 4] {
            return None;
        }
        // Claim a node port for the reply, only in the NAT range: a port
        // the node's own sockets pick (its ephemeral range) would take
        // their replies. The client's own port first, if the range holds it.
        value.nat_addr = p.src;
        value.nat_port = p.sport;
        value.flags = CT_FLAG_REPLY | CT_FLAG_SNAT;
        let (min, max) = match LB_CONFIG.get(0) {
            Some(c) => c.nat_ports(),
            None => (NAT_PORT_MIN_DEFAULT, NAT_PORT_MAX_DEFAULT),
        };
        let span = u32::from(max.saturating_sub(min)) + 1;
        let client = u16::from_be(p.sport);
        let mut claimed = client >= min
            && client <= max
            && CONNTRACK.insert(&*key, &*value, BPF_NOEXIST).is_ok();
        let mut i = 0;
        while !claimed && i < NAT_PORT_TRIES {
            let seed = u32::from(client).wrapping_mul(2654435761) ^ (i * 40503);
            key.dport = ((u32::from(min) + seed % span) as u16).to_be();
            claimed = CONNTRACK.insert(&*key, &*value, BPF_NOEXIST).is_ok();
            i += 1;
        }
        if !claimed {
            return None;
        }
        nat_port = key.dport;
        // Toward the backend, from the node.
        value.nat_addr = key.dst;
        value.nat_port = nat_port;
        value.addr = [0; 4];
        value.port = 0;
        value.flags = CT_FLAG_SNAT | CT_FLAG_EGRESS;
        key.dst = backend.addr;
        key.src = p.src;
        key.sport = p.sport;
        key.dport = backend.port;
        CONNTRACK.insert(&*key, &*value, 0).ok()?;
    } else {
        // The reply leaves through a device's egress (the client pod's, or
        // the one toward an outside client): restore the source there.
        CONNTRACK.insert(&*key, &*value, 0).ok()?;
    }
    // The forward entry; `value.nat_addr` already holds the node address
    // when translating the source.
    *key = p.key();
    value.addr = backend.addr;
    value.port = backend.port;
    value.flags = if nat_port != 0 { CT_FLAG_SNAT } else { 0 };
    if nat_port == 0 {
        value.nat_addr = [0; 4];
    }
    value.nat_port = nat_port;
    CONNTRACK.insert(&*key, &*value, 0).ok()
}

/// Records a new flow sent by direct server return: one forward entry
/// (backend, and the backend's node as the tunnel's far end in
/// `nat_addr`), built in the scratch value and, with `keep`, stored; its
/// replies never pass this node.
#[inline(never)]
pub fn track_dsr(p: &Packet, chosen: &Chosen, node: &[u32; 4], now: u64, keep: bool) -> Option<()> {
    let s = SCRATCH.get_ptr_mut(0)?;
    let (key, value) = unsafe { (&mut (*s).key, &mut (*s).value) };
    *key = p.key();
    *value = CtValue {
        last_seen_ns: now,
        addr: chosen.backend.addr,
        port: chosen.backend.port,
        nat_addr: *node,
        id: chosen.id,
        flags: CT_FLAG_DSR,
        ..CtValue::default()
    };
    if !keep {
        return Some(());
    }
    CONNTRACK.insert(&*key, &*value, 0).ok()
}
