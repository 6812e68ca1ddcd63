//! The keys and values of the BPF maps that Ferry's eBPF programs read and
//! the node agent writes, defined once for both sides.
//!
//! Owns the byte layout of every map entry (all `#[repr(C)]`, padding
//! explicit, so the kernel, the programs and user space agree), the map
//! names, and the one computation both sides must agree on bit for bit: the
//! Maglev flow hash ([`maglev`]). Must not hold other logic: choosing
//! backends, building tables, parsing Kubernetes objects and touching maps
//! belong to the programs and the agent.
//!
//! Addresses are 16 bytes as four `u32` words holding the address bytes in
//! network order (the way the kernel's `bpf_sock_addr` and IPv6 headers hold
//! them); an IPv4 address is stored IPv4-mapped (`::ffff:a.b.c.d`), so one map
//! serves both families and a v4-mapped connect() from an IPv6 socket finds
//! the v4 service. Ports are in network byte order.

#![no_std]

pub mod maglev;
pub mod observe;
pub mod policy;
pub mod sctp;

/// IP protocol numbers as the kernel reports them.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_SCTP: u8 = 132;

/// Who the entry serves. Socket hooks and pod-originated packets look up
/// [`SCOPE_INTERNAL`]; packets arriving at a node from outside look up
/// [`SCOPE_EXTERNAL`] (externalTrafficPolicy may give them other backends).
pub const SCOPE_INTERNAL: u8 = 0;
pub const SCOPE_EXTERNAL: u8 = 1;

/// The address of a NodePort frontend's key: the Service answers on its
/// node port at any address in [`MAP_NODEPORT_ADDRS`] (IPv4, stored
/// IPv4-mapped as every address is, and IPv6). No real frontend has
/// either: `0.0.0.0` and `::` are never a Service's address.
pub const NODEPORT_ANY_V4: [u32; 4] = [0, 0, V4_MAPPED_WORD, 0];
pub const NODEPORT_ANY_V6: [u32; 4] = [0; 4];

/// [`ServiceValue::flags`]: ClientIP session affinity is on.
pub const SVC_FLAG_AFFINITY: u8 = 1;
/// [`ServiceValue::flags`]: no backend here, but the Service has endpoints
/// elsewhere (`externalTrafficPolicy: Local` on a node without a local
/// one): its packets are dropped, as kube-proxy does, not refused, so an
/// external load balancer's health check moves traffic to another node.
pub const SVC_FLAG_DROP: u8 = 2;

/// [`ServiceValue::flags`]: new flows pick their backend from the group's
/// Maglev table ([`MAP_MAGLEV`]) by [`maglev::flow_hash`] rather than at
/// random, so every node picks the same backend for a flow.
pub const SVC_FLAG_MAGLEV: u8 = 4;

/// [`Backend::flags`]: the backend runs on this node, so per-packet
/// translation needs no source NAT to bring its replies back.
pub const BACKEND_FLAG_LOCAL: u8 = 1;

/// [`CtValue::flags`]: the entry is a reply direction (reverse NAT).
pub const CT_FLAG_REPLY: u8 = 1;
/// The flow was source-translated to the node's address.
pub const CT_FLAG_SNAT: u8 = 2;
/// A FIN or RST was seen: the entry ages out quickly.
pub const CT_FLAG_CLOSING: u8 = 4;
/// Used by the egress program (the others by ingress).
pub const CT_FLAG_EGRESS: u8 = 8;
/// A forward entry whose packets go to the backend's node by direct
/// server return: encapsulated toward `nat_addr`, the frontend carried in a
/// Geneve option, replies straight from that node to the client.
pub const CT_FLAG_DSR: u8 = 16;

/// [`LbConfig::lb_mode`]: how traffic from outside reaches a backend on
/// another node. Source NAT to the entry node (replies come back through
/// it), as kube-proxy does.
pub const LB_MODE_SNAT: u8 = 0;
/// Direct server return for every protocol.
pub const LB_MODE_DSR: u8 = 1;
/// Direct server return for TCP, source NAT for the rest.
pub const LB_MODE_HYBRID: u8 = 2;

/// The Geneve option (UDP port 6081, inner IP) that carries a DSR flow's
/// frontend to the backend's node: class (experimental range), type, and
/// length in 4-byte words.
pub const DSR_OPT_CLASS: u16 = 0xff66;
pub const DSR_OPT_TYPE: u8 = 1;
pub const DSR_OPT_WORDS: u8 = 5;

/// The Geneve option a DSR packet carries (network order throughout):
/// header, then the frontend the client dialled.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DsrOpt {
    pub class: u16,
    pub kind: u8,
    /// Length of what follows in 4-byte words ([`DSR_OPT_WORDS`]).
    pub words: u8,
    pub addr: [u32; 4],
    pub port: u16,
    pub _pad: u16,
}

/// Pinned map names, shared by the programs' definitions and the agent.
pub const MAP_SERVICES: &str = "FERRY_SERVICES";
pub const MAP_BACKENDS: &str = "FERRY_BACKENDS";
pub const MAP_AFFINITY: &str = "FERRY_AFFINITY";
pub const MAP_SOCK_REVNAT: &str = "FERRY_SOCK_RNAT";
pub const MAP_STATS: &str = "FERRY_STATS";
pub const MAP_CONNTRACK: &str = "FERRY_CT";
pub const MAP_NODE_ADDRS: &str = "FERRY_NODE_ADDRS";
/// `loadBalancerSourceRanges` (an LPM trie of [`SourceRangeKey`]): per
/// LoadBalancer frontend, a deny entry covering every source and an allow
/// entry per range, so the longest match decides.
pub const MAP_SOURCE_RANGES: &str = "FERRY_SRC_RANGES";
/// The node's addresses where NodePorts answer (key: the address in the
/// stored form; value: unused).
pub const MAP_NODEPORT_ADDRS: &str = "FERRY_NODEPORT_ADDRS";

/// Maglev lookup tables, in chunks of [`MAGLEV_CHUNK`] entries
/// ([`MaglevKey`] to [`MaglevChunk`]).
pub const MAP_MAGLEV: &str = "FERRY_MAGLEV";
/// Settings every node must share (one [`LbConfig`] at index 0).
pub const MAP_LB_CONFIG: &str = "FERRY_LB_CONFIG";

/// Counters of the XDP fast path (a per-CPU array of [`XdpStats`], one
/// entry).
pub const MAP_XDP_STATS: &str = "FERRY_XDP_STATS";

/// What the XDP program did with packets, summed over its devices.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct XdpStats {
    /// Not for a frontend nor a tracked flow: left to the stack untouched.
    pub passed: u64,
    /// Translated and sent back out of the device they came in on.
    pub tx: u64,
    /// Translated and sent out of another of the node's devices.
    pub redirected: u64,
    /// Dropped (source ranges, `Local` policy without a local endpoint).
    pub dropped: u64,
    /// Translated toward a backend on this node, then left to the stack.
    pub local: u64,
    /// For a frontend or tracked flow, but left to TC: no neighbour entry
    /// or route yet, options, fragments, a TTL about to expire.
    pub to_tc: u64,
}

/// The word that marks an IPv4-mapped address (`::ffff:0:0/96`), as stored.
pub const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// A service frontend: address, port and protocol (what a client dials).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ServiceKey {
    pub addr: [u32; 4],
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    pub scope: u8,
}

/// What a frontend translates to: a group of backends, by `id`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceValue {
    /// The backend group (one per service port, family and scope).
    pub id: u32,
    /// Backends in the active revision; 0 means reject (no endpoints).
    pub count: u16,
    pub flags: u8,
    /// Which of the two backend revisions is live, so the agent can write
    /// a whole new set before pointing the service at it.
    pub rev: u8,
    /// ClientIP affinity timeout, seconds.
    pub affinity_timeout: u32,
}

/// One slot of a backend group's revision.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct BackendKey {
    pub id: u32,
    pub slot: u16,
    pub rev: u8,
    pub _pad: u8,
}

/// A backend address and port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Backend {
    pub addr: [u32; 4],
    /// Network byte order.
    pub port: u16,
    pub flags: u8,
    pub _pad: u8,
}

/// Whose choice an affinity entry remembers: socket hooks know the client's
/// network namespace (its source address is not chosen yet at connect time),
/// packet hooks know the source address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct AffinityKey {
    /// The client's netns cookie; 0 for packet-level entries.
    pub netns_cookie: u64,
    /// The client's address; zero for socket-level entries.
    pub client: [u32; 4],
    pub id: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AffinityValue {
    /// `bpf_ktime_get_ns()` of the last use (CLOCK_MONOTONIC).
    pub last_used_ns: u64,
    pub backend: Backend,
    pub _pad: u32,
}

/// A socket's translated peer, so replies and getpeername() show the
/// service address the application asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SockRevNatKey {
    pub cookie: u64,
    pub backend: Backend,
    pub _pad: u32,
}

/// The frontend a socket asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockRevNatValue {
    pub addr: [u32; 4],
    pub port: u16,
    pub _pad: [u8; 2],
}

/// A flow as one direction of its packets shows it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CtKey {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// Network byte order.
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

impl CtKey {
    /// The key of a packet from `src:sport` to `dst:dport` (ports in
    /// network order).
    #[inline(always)]
    pub const fn new(src: [u32; 4], dst: [u32; 4], sport: u16, dport: u16, proto: u8) -> Self {
        Self {
            src,
            dst,
            sport,
            dport,
            proto,
            _pad: [0; 3],
        }
    }

    /// The key of the packets going the other way.
    #[inline(always)]
    pub const fn reverse(&self) -> Self {
        Self::new(self.dst, self.src, self.dport, self.sport, self.proto)
    }
}

/// What to do with a tracked flow's packets. Forward entries (client to
/// frontend) say where the packet goes; reply entries (backend to client)
/// say what its source becomes again.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtValue {
    /// `bpf_ktime_get_ns()` when last refreshed (at most once a second).
    pub last_seen_ns: u64,
    /// Forward: the backend. Reply: the frontend (new source).
    pub addr: [u32; 4],
    /// With [`CT_FLAG_SNAT`]. Forward: the node address and port the
    /// source becomes. Reply: the client the destination becomes.
    pub nat_addr: [u32; 4],
    /// The backend group, so the agent can find a gone backend's flows.
    pub id: u32,
    pub port: u16,
    pub nat_port: u16,
    pub flags: u8,
    pub _pad: [u8; 7],
}

/// The node's own addresses on a device (keyed by ifindex), for source
/// NAT toward backends on other nodes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NodeAddrs {
    /// IPv4-mapped; zero when the device has none.
    pub v4: [u32; 4],
    /// Zero when the device has none.
    pub v6: [u32; 4],
}

/// Per backend group counters (a per-CPU array indexed by group id).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceStats {
    /// New connections translated (socket connect/sendmsg, and new flows
    /// at TC).
    pub connections: u64,
    /// Connections refused because the service had no endpoints.
    pub rejected: u64,
    /// Packets translated at TC.
    pub packets: u64,
    pub bytes: u64,
}

/// Entries per [`MaglevChunk`]: a table of `M` entries is `ceil(M / 512)`
/// chunks, so any table size up to the largest fits one map of fixed value
/// size.
pub const MAGLEV_CHUNK: usize = 512;

/// One chunk of a backend group's Maglev table, for one revision of its
/// backend slots (the table is written with the slots it indexes, before
/// frontends move to them).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MaglevKey {
    pub id: u32,
    pub rev: u8,
    pub _pad: u8,
    /// Entry `i` of the table is in chunk `i / MAGLEV_CHUNK`.
    pub chunk: u16,
}

/// Table entries: backend slots of the revision ([`BackendKey::slot`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevChunk {
    pub slots: [u16; MAGLEV_CHUNK],
}

impl Default for MaglevChunk {
    fn default() -> Self {
        Self {
            slots: [0; MAGLEV_CHUNK],
        }
    }
}

/// Load-balancing settings the agent writes once at start.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LbConfig {
    /// Maglev table size `M` (a prime); 0: no tables (random choice).
    pub maglev_size: u32,
    pub _pad0: u32,
    /// The flow hash's two seed keys, the same on every node.
    pub seed: [u64; 2],
    /// `LB_MODE_*`.
    pub lb_mode: u8,
    pub _pad1: u8,
    /// The node ports a source-translated flow from outside may take
    /// (inclusive, host order); outside the kernel's ephemeral range, so a
    /// reply can never be taken for a local socket's. Zero: the defaults.
    pub nat_port_min: u16,
    pub nat_port_max: u16,
    pub _pad: [u8; 2],
}

/// The default [`LbConfig::nat_port_min`]..=[`LbConfig::nat_port_max`]:
/// above Linux's default ephemeral range (`ip_local_port_range` 32768-60999),
/// where the kernel's own masquerading once took its ports.
pub const NAT_PORT_MIN_DEFAULT: u16 = 61000;
pub const NAT_PORT_MAX_DEFAULT: u16 = 65535;

impl LbConfig {
    /// The source-NAT port range, the defaults for an unset or inverted one.
    #[inline(always)]
    pub fn nat_ports(&self) -> (u16, u16) {
        if self.nat_port_min == 0 || self.nat_port_max < self.nat_port_min {
            (NAT_PORT_MIN_DEFAULT, NAT_PORT_MAX_DEFAULT)
        } else {
            (self.nat_port_min, self.nat_port_max)
        }
    }
}

/// Whether a stored address is IPv4-mapped, i.e. an IPv4 address.
#[inline(always)]
pub fn is_v4(addr: &[u32; 4]) -> bool {
    addr[0] == 0 && addr[1] == 0 && addr[2] == V4_MAPPED_WORD
}

/// The stored form of an IPv4 address given as the kernel holds it.
#[inline(always)]
pub fn v4_mapped(ip4: u32) -> [u32; 4] {
    [0, 0, V4_MAPPED_WORD, ip4]
}

/// Key data of [`MAP_SOURCE_RANGES`]: the frontend a packet is for, then
/// the client's address; an entry's prefix length covers the frontend
/// ([`SOURCE_RANGE_FRONTEND_BITS`]) and the range's bits of `src`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct SourceRangeKey {
    pub frontend: [u32; 4],
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
    pub src: [u32; 4],
}

/// Bits of a [`SourceRangeKey`] before `src`.
pub const SOURCE_RANGE_FRONTEND_BITS: u32 = 160;
/// [`MAP_SOURCE_RANGES`] values.
pub const SOURCE_RANGE_DENY: u8 = 0;
pub const SOURCE_RANGE_ALLOW: u8 = 1;

#[cfg(feature = "user")]
mod user {
    // SAFETY: every type is `#[repr(C)]`, `Copy`, made only of integers with
    // explicit padding fields, so any byte pattern is a valid value and none
    // has uninitialised padding.
    #![allow(unsafe_code)]
    use super::*;
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for SourceRangeKey {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for BackendKey {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for AffinityValue {}
    unsafe impl aya::Pod for SockRevNatKey {}
    unsafe impl aya::Pod for SockRevNatValue {}
    unsafe impl aya::Pod for ServiceStats {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtValue {}
    unsafe impl aya::Pod for NodeAddrs {}
    unsafe impl aya::Pod for MaglevKey {}
    unsafe impl aya::Pod for MaglevChunk {}
    unsafe impl aya::Pod for LbConfig {}
    unsafe impl aya::Pod for XdpStats {}
    unsafe impl aya::Pod for policy::PolicyEndpoint {}
    unsafe impl aya::Pod for policy::PolicyRuleKey {}
    unsafe impl aya::Pod for policy::PolicyRuleValue {}
    unsafe impl aya::Pod for policy::PolicyCidrKey {}
    unsafe impl aya::Pod for policy::PolicyCtValue {}
    unsafe impl aya::Pod for policy::PolicyStats {}
    unsafe impl aya::Pod for observe::ObserveConfig {}
    unsafe impl aya::Pod for observe::ObserveStats {}
    unsafe impl aya::Pod for observe::FlowEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    /// The kernel sees raw bytes: sizes must have no implicit padding.
    #[test]
    fn layouts_have_no_hidden_padding() {
        assert_eq!(size_of::<ServiceKey>(), 20);
        assert_eq!(size_of::<ServiceValue>(), 12);
        assert_eq!(size_of::<BackendKey>(), 8);
        assert_eq!(size_of::<Backend>(), 20);
        assert_eq!(size_of::<AffinityKey>(), 32);
        assert_eq!(size_of::<AffinityValue>(), 32);
        assert_eq!(size_of::<SockRevNatKey>(), 32);
        assert_eq!(size_of::<SockRevNatValue>(), 20);
        assert_eq!(size_of::<ServiceStats>(), 32);
        assert_eq!(size_of::<CtKey>(), 40);
        assert_eq!(size_of::<CtValue>(), 56);
        assert_eq!(size_of::<NodeAddrs>(), 32);
        assert_eq!(size_of::<MaglevKey>(), 8);
        assert_eq!(size_of::<MaglevChunk>(), 2 * MAGLEV_CHUNK);
        assert_eq!(size_of::<LbConfig>(), 32);
        assert_eq!(size_of::<DsrOpt>(), 24);
        assert_eq!(size_of::<XdpStats>(), 48);
        assert_eq!(size_of::<policy::PolicyEndpoint>(), 16);
        assert_eq!(size_of::<policy::PolicyRuleKey>(), 12);
        assert_eq!(size_of::<policy::PolicyRuleValue>(), 4);
        assert_eq!(size_of::<policy::PolicyCidrKey>(), 16);
        assert_eq!(size_of::<policy::PolicyCtValue>(), 16);
        assert_eq!(size_of::<policy::PolicyStats>(), 128);
        assert_eq!(size_of::<observe::ObserveConfig>(), 16);
        assert_eq!(size_of::<observe::ObserveStats>(), 24);
        assert_eq!(size_of::<observe::FlowEvent>(), 80);
        assert_eq!(
            policy::RULE_PREFIX_FULL as usize,
            8 * size_of::<policy::PolicyRuleKey>()
        );
    }

    #[test]
    fn v4_mapping_round_trips() {
        let ip = u32::from_ne_bytes([10, 96, 0, 1]);
        let stored = v4_mapped(ip);
        assert!(is_v4(&stored));
        assert!(!is_v4(&[u32::from_ne_bytes([0xfd, 0, 0, 0]), 0, 0, 1]));
    }
}
