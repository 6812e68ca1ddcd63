//! Backend selection, shared by the socket hooks and the packet path:
//! kube-proxy's uniform random choice among the group's backends, the
//! remembered one under ClientIP affinity, or, for groups with a Maglev
//! table (external traffic only), the table's entry for the flow's hash.

use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns};
use ferry_ebpf_common::{
    AffinityKey, AffinityValue, Backend, BackendKey, CtKey, MAGLEV_CHUNK, MaglevKey,
    NODEPORT_ANY_V4, NODEPORT_ANY_V6, SVC_FLAG_AFFINITY, SVC_FLAG_DROP, SVC_FLAG_MAGLEV,
    ServiceKey, ServiceStats, ServiceValue, is_v4, maglev,
};

use crate::maps::{AFFINITY, BACKENDS, LB_CONFIG, MAGLEV, NODEPORT_ADDRS, SERVICES, STATS};

/// What a frontend lookup decided.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Verdict {
    /// Not a service address: leave it alone.
    Pass,
    /// A service with no usable endpoints: refuse the connection.
    Reject,
    /// A service with endpoints, none of them usable here: drop.
    Drop,
    /// Translate to the [`Chosen`] backend.
    To,
}

/// The backend picked, and its group.
#[derive(Clone, Copy, Default)]
pub struct Chosen {
    pub backend: Backend,
    pub id: u32,
    /// Picked by the group's Maglev table: any packet of the flow would
    /// pick the same backend again, on any node.
    pub maglev: bool,
}

/// Which statistic to count.
#[derive(Clone, Copy)]
pub enum Counter {
    Connection,
    Rejected,
}

/// Turns `key` into its NodePort frontend's when its address is one of the
/// node's (or, with `loopback`, a loopback address: from the node's own
/// processes, as kube-proxy allows `127.0.0.1:<nodePort>`) and no frontend
/// has that exact address (an externalIP may be a node's address).
/// Returns whether the address is the node's own.
#[inline(always)]
pub fn node_port(key: &mut ServiceKey, loopback: bool) -> bool {
    let v4 = is_v4(&key.addr);
    let is_loopback = loopback
        && if v4 {
            u32::from_be(key.addr[3]) >> 24 == 127
        } else {
            key.addr[0] == 0
                && key.addr[1] == 0
                && key.addr[2] == 0
                && u32::from_be(key.addr[3]) == 1
        };
    if !is_loopback && NODEPORT_ADDRS.get_ptr(&key.addr).is_none() {
        return false;
    }
    if SERVICES.get_ptr(&*key).is_none() {
        key.addr = if v4 { NODEPORT_ANY_V4 } else { NODEPORT_ANY_V6 };
    }
    true
}

/// Looks up `key` and picks a backend into `out`. The packet path gives
/// the packet's tuple as `flow`: ClientIP affinity remembers its source
/// address, and a group with a Maglev table hashes it. The socket hooks
/// give none (their groups have no table): affinity remembers the client's
/// `netns_cookie`. A function of its own (a BPF subprogram) so its locals
/// get their own stack frame.
#[inline(never)]
pub fn select(
    key: &ServiceKey,
    netns_cookie: u64,
    flow: Option<&CtKey>,
    out: &mut Chosen,
) -> Verdict {
    // Copy the value out at once: a preallocated hash element may be reused
    // after a concurrent delete.
    let svc: ServiceValue = match SERVICES.get_ptr(key) {
        Some(p) => unsafe { *p },
        None => return Verdict::Pass,
    };
    if svc.count == 0 {
        count(svc.id, Counter::Rejected);
        if svc.flags & SVC_FLAG_DROP != 0 {
            return Verdict::Drop;
        }
        return Verdict::Reject;
    }
    let sticky = svc.flags & SVC_FLAG_AFFINITY != 0;
    let akey = AffinityKey {
        netns_cookie,
        client: match flow {
            Some(f) => f.src,
            None => [0; 4],
        },
        id: svc.id,
        _pad: 0,
    };
    let now = unsafe { bpf_ktime_get_ns() };
    if sticky {
        if let Some(p) = AFFINITY.get_ptr(&akey) {
            let remembered: AffinityValue = unsafe { *p };
            let timeout_ns = (svc.affinity_timeout as u64).saturating_mul(1_000_000_000);
            if now.saturating_sub(remembered.last_used_ns) <= timeout_ns {
                let value = AffinityValue {
                    last_used_ns: now,
                    ..remembered
                };
                let _ = AFFINITY.insert(&akey, &value, 0);
                count(svc.id, Counter::Connection);
                out.backend = remembered.backend;
                out.id = svc.id;
                return Verdict::To;
            }
        }
    }
    let maglev = match flow {
        Some(flow) if svc.flags & SVC_FLAG_MAGLEV != 0 => maglev_slot(&svc, flow),
        _ => None,
    };
    let slot = match maglev {
        Some(slot) => slot,
        None => (unsafe { bpf_get_prandom_u32() } % svc.count as u32) as u16,
    };
    let bkey = BackendKey {
        id: svc.id,
        slot,
        rev: svc.rev,
        _pad: 0,
    };
    let backend: Backend = match BACKENDS.get_ptr(&bkey) {
        Some(p) => unsafe { *p },
        // Only while the agent is mid-way through replacing a set; the
        // caller leaves the address as it is.
        None => return Verdict::Pass,
    };
    if sticky {
        let value = AffinityValue {
            last_used_ns: now,
            backend,
            _pad: 0,
        };
        let _ = AFFINITY.insert(&akey, &value, 0);
    }
    count(svc.id, Counter::Connection);
    out.backend = backend;
    out.id = svc.id;
    out.maglev = maglev.is_some();
    Verdict::To
}

/// The slot a Maglev group's table gives the flow: entry `hash % M` of
/// the live revision's table. `None` (random choice) when the entry is not
/// there (the agent is between writes).
#[inline(never)]
fn maglev_slot(svc: &ServiceValue, flow: &CtKey) -> Option<u16> {
    let config = LB_CONFIG.get(0)?;
    let m = u64::from(config.maglev_size);
    if m == 0 {
        return None;
    }
    let hash = maglev::flow_hash(
        &flow.src,
        &flow.dst,
        flow.sport,
        flow.dport,
        flow.proto,
        &config.seed,
    );
    let index = hash % m;
    let key = MaglevKey {
        id: svc.id,
        rev: svc.rev,
        _pad: 0,
        chunk: (index / MAGLEV_CHUNK as u64) as u16,
    };
    let chunk = MAGLEV.get_ptr(&key)?;
    let at = (index % MAGLEV_CHUNK as u64) as usize & (MAGLEV_CHUNK - 1);
    let slot = unsafe { (*chunk).slots[at] };
    (slot < svc.count).then_some(slot)
}

#[inline(always)]
pub fn count(id: u32, which: Counter) {
    // Per CPU, so a plain add is exact; the agent sums the CPUs.
    if let Some(p) = STATS.get_ptr_mut(id) {
        let p: *mut ServiceStats = p;
        unsafe {
            match which {
                Counter::Connection => (*p).connections += 1,
                Counter::Rejected => (*p).rejected += 1,
            }
        }
    }
}
