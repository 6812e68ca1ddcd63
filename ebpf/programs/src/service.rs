//! Backend selection, shared by the socket hooks and the packet path:
//! kube-proxy's uniform random choice among the group's backends, or the
//! remembered one under ClientIP affinity.

use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns};
use ferry_ebpf_common::{
    AffinityKey, AffinityValue, Backend, BackendKey, SVC_FLAG_AFFINITY, ServiceKey, ServiceStats,
    ServiceValue,
};

use crate::maps::{AFFINITY, BACKENDS, SERVICES, STATS};

/// What a frontend lookup decided.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Verdict {
    /// Not a service address: leave it alone.
    Pass,
    /// A service with no usable endpoints: refuse the connection.
    Reject,
    /// Translate to the [`Chosen`] backend.
    To,
}

/// The backend picked, and its group.
#[derive(Clone, Copy, Default)]
pub struct Chosen {
    pub backend: Backend,
    pub id: u32,
}

/// Which statistic to count.
#[derive(Clone, Copy)]
pub enum Counter {
    Connection,
    Rejected,
}

/// Looks up `key` and picks a backend into `out`. `affinity` identifies the
/// client for ClientIP affinity (netns cookie for sockets, source address
/// for packets). A function of its own (a BPF subprogram) so its locals get
/// their own stack frame.
#[inline(never)]
pub fn select(key: &ServiceKey, affinity: &AffinityKey, out: &mut Chosen) -> Verdict {
    // Copy the value out at once: a preallocated hash element may be reused
    // after a concurrent delete.
    let svc: ServiceValue = match SERVICES.get_ptr(key) {
        Some(p) => unsafe { *p },
        None => return Verdict::Pass,
    };
    if svc.count == 0 {
        count(svc.id, Counter::Rejected);
        return Verdict::Reject;
    }
    let sticky = svc.flags & SVC_FLAG_AFFINITY != 0;
    let akey = AffinityKey {
        id: svc.id,
        ..*affinity
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
    let slot = (unsafe { bpf_get_prandom_u32() } % svc.count as u32) as u16;
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
    Verdict::To
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
