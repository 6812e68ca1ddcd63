//! The maps, pinned by name under the agent's bpffs root so a restarted
//! agent finds the same ones and forwarding never stops. Sizes here are
//! defaults; the agent sets the real ones at load time.

use aya_ebpf::macros::map;
use aya_ebpf::maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf};
use ferry_ebpf_common::CtKey as Key;
use ferry_ebpf_common::observe::{FlowEvent, ObserveBucket, ObserveConfig, ObserveStats};
use ferry_ebpf_common::policy::{
    PolicyCidrKey, PolicyCtValue, PolicyEndpoint, PolicyRuleKey, PolicyRuleValue, PolicyStats,
};
use ferry_ebpf_common::{
    AffinityKey, AffinityValue, Backend, BackendKey, CtKey, CtValue, LbConfig, MaglevChunk,
    MaglevKey, NodeAddrs, ServiceKey, ServiceStats, ServiceValue, SockRevNatKey, SockRevNatValue,
    SourceRangeKey, XdpStats,
};

/// Entries are allocated as written, not up front: only Maglev groups
/// have tables, and a full preallocation would be every chunk at once.
const BPF_F_NO_PREALLOC: u32 = 1;

#[map(name = "FERRY_SERVICES")]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::pinned(65536, 0);

#[map(name = "FERRY_BACKENDS")]
pub static BACKENDS: HashMap<BackendKey, Backend> = HashMap::pinned(262144, 0);

#[map(name = "FERRY_AFFINITY")]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue> = LruHashMap::pinned(65536, 0);

#[map(name = "FERRY_SOCK_RNAT")]
pub static SOCK_REVNAT: LruHashMap<SockRevNatKey, SockRevNatValue> = LruHashMap::pinned(262144, 0);

#[map(name = "FERRY_STATS")]
pub static STATS: PerCpuArray<ServiceStats> = PerCpuArray::pinned(16384, 0);

#[map(name = "FERRY_CT")]
pub static CONNTRACK: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(262144, 0);

/// ifindex to the node's addresses on that device.
#[map(name = "FERRY_NODE_ADDRS")]
pub static NODE_ADDRS: HashMap<u32, NodeAddrs> = HashMap::pinned(64, 0);

/// Which clients may reach each LoadBalancer frontend from outside.
#[map(name = "FERRY_SRC_RANGES")]
pub static SOURCE_RANGES: LpmTrie<SourceRangeKey, u8> = LpmTrie::pinned(16384, 0);

/// The node's addresses where NodePorts answer.
#[map(name = "FERRY_NODEPORT_ADDRS")]
pub static NODEPORT_ADDRS: HashMap<[u32; 4], u8> = HashMap::pinned(256, 0);

/// Maglev tables of the groups that use them.
#[map(name = "FERRY_MAGLEV")]
pub static MAGLEV: HashMap<MaglevKey, MaglevChunk> = HashMap::pinned(65536, BPF_F_NO_PREALLOC);

/// The settings every node shares.
#[map(name = "FERRY_LB_CONFIG")]
pub static LB_CONFIG: Array<LbConfig> = Array::pinned(1, 0);

/// What the XDP program did (one entry, per CPU).
#[map(name = "FERRY_XDP_STATS")]
pub static XDP_STATS: PerCpuArray<XdpStats> = PerCpuArray::pinned(1, 0);

/// NetworkPolicy (see `ferry_ebpf_common::policy`): this node's pods.
#[map(name = "FERRY_POL_EP")]
pub static POL_EP: HashMap<[u32; 4], PolicyEndpoint> = HashMap::pinned(4096, 0);

/// Every pod address of the cluster, and this node's, to its identity.
#[map(name = "FERRY_POL_IDS")]
pub static POL_IDS: HashMap<[u32; 4], u32> = HashMap::pinned(131072, 0);

/// The prefixes of the policies' ipBlocks to their CIDR identities.
#[map(name = "FERRY_POL_CIDRS")]
pub static POL_CIDRS: LpmTrie<PolicyCidrKey, u32> = LpmTrie::pinned(16384, 0);

/// What each policy set allows.
#[map(name = "FERRY_POL_RULES")]
pub static POL_RULES: LpmTrie<PolicyRuleKey, PolicyRuleValue> = LpmTrie::pinned(262144, 0);

/// Flows already judged, both directions.
#[map(name = "FERRY_POL_CT")]
pub static POL_CT: LruHashMap<CtKey, PolicyCtValue> = LruHashMap::pinned(262144, 0);

/// New flows allowed and denied (one entry, per CPU).
#[map(name = "FERRY_POL_VERDICTS")]
pub static POL_STATS: PerCpuArray<PolicyStats> = PerCpuArray::pinned(1, 0);

/// Flow events (see `ferry_ebpf_common::observe`): the agent's switch and
/// rate.
#[map(name = "FERRY_OBSERVE")]
pub static OBSERVE: Array<ObserveConfig> = Array::pinned(1, 0);

/// The events, for the agent to read (1 MiB: about 12,000 events).
#[map(name = "FERRY_FLOW_EVENTS")]
pub static FLOW_EVENTS: RingBuf = RingBuf::pinned(1 << 20, 0);

/// Events written and refused (one entry, per CPU).
#[map(name = "FERRY_OBSERVE_STATS")]
pub static OBSERVE_STATS: PerCpuArray<ObserveStats> = PerCpuArray::pinned(1, 0);

/// Each CPU's token bucket of events (never pinned).
#[map(name = "FERRY_OBSERVE_BUCKET")]
pub static OBSERVE_BUCKET: PerCpuArray<ObserveBucket> = PerCpuArray::with_max_entries(1, 0);

/// The flow event being built (per CPU, never pinned).
#[map(name = "FERRY_OBS_EVENT")]
pub static OBS_EVENT: PerCpuArray<FlowEvent> = PerCpuArray::with_max_entries(1, 0);

/// Flows of pods no policy judges, reported once while watched (a flow's
/// tuple both ways, the hooks it was seen at, as in [`POL_CT`]). Only
/// written while someone watches; never consulted for a verdict.
#[map(name = "FERRY_OBS_SEEN")]
pub static OBS_SEEN: LruHashMap<CtKey, PolicyCtValue> = LruHashMap::with_max_entries(65536, 0);

/// Room for building conntrack entries: the BPF stack (512 bytes for a
/// whole call chain) cannot hold several of them. Per CPU and never pinned.
#[repr(C)]
pub struct Scratch {
    pub key: Key,
    pub value: CtValue,
}

#[map(name = "FERRY_SCRATCH")]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// A DSR packet's outer headers being built (IPv6, UDP, Geneve and its
/// option at most) and an arriving one's option, off the stack.
#[repr(C)]
pub struct TunnelScratch {
    pub headers: [u8; 88],
    pub opt: ferry_ebpf_common::DsrOpt,
}

#[map(name = "FERRY_TUNNEL_SCRATCH")]
pub static TUNNEL_SCRATCH: PerCpuArray<TunnelScratch> = PerCpuArray::with_max_entries(1, 0);

/// The XDP path's FIB lookup parameters (64 bytes), off the stack too.
#[map(name = "FERRY_FIB_SCRATCH")]
pub static FIB_SCRATCH: PerCpuArray<aya_ebpf::bindings::bpf_fib_lookup> =
    PerCpuArray::with_max_entries(1, 0);
