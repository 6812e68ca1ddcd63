//! The maps, pinned by name under the agent's bpffs root so a restarted
//! agent finds the same ones and forwarding never stops. Sizes here are
//! defaults; the agent sets the real ones at load time.

use aya_ebpf::macros::map;
use aya_ebpf::maps::{HashMap, LpmTrie, LruHashMap, PerCpuArray};
use ferry_ebpf_common::CtKey as Key;
use ferry_ebpf_common::{
    AffinityKey, AffinityValue, Backend, BackendKey, CtKey, CtValue, NodeAddrs, ServiceKey,
    ServiceStats, ServiceValue, SockRevNatKey, SockRevNatValue, SourceRangeKey,
};

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

/// Room for building conntrack entries: the BPF stack (512 bytes for a
/// whole call chain) cannot hold several of them. Per CPU and never pinned.
#[repr(C)]
pub struct Scratch {
    pub key: Key,
    pub value: CtValue,
}

#[map(name = "FERRY_SCRATCH")]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);
