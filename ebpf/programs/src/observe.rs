//! Flow events for `ferry-agent observe` (see `ferry_ebpf_common::observe`):
//! written only while the agent says someone watches, at most the agent's
//! rate per CPU, never for a packet of a flow already decided.
//!
//! Callers check [`watched`] (one array lookup, and a clock read only while
//! the switch is on) before building anything, so an unwatched node pays
//! nothing more. The event is built in a per-CPU map slot, not on the
//! stack: the programs' call chains have none to spare.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use ferry_ebpf_common::observe::FlowEvent;

use crate::maps::{FLOW_EVENTS, OBS_EVENT, OBSERVE, OBSERVE_BUCKET, OBSERVE_STATS};

/// The event being built, off the stack: callers fill it through [`slot`]
/// and [`emit`] sends it.
#[inline(always)]
pub fn slot() -> Option<*mut FlowEvent> {
    OBS_EVENT.get_ptr_mut(0)
}

/// Whether someone watches now.
#[inline(always)]
pub fn watched() -> bool {
    match OBSERVE.get(0) {
        Some(c) if c.until_ns != 0 => (unsafe { bpf_ktime_get_ns() }) < c.until_ns,
        _ => false,
    }
}

/// One millionth of an event: the bucket's unit.
const TOKEN: u64 = 1_000_000;

/// Sends the event in [`slot`] (stamping its time), if this CPU's bucket
/// has a token and the ring has room; counts it either way.
#[inline(never)]
pub fn emit() {
    let Some(cfg) = OBSERVE.get(0) else {
        return;
    };
    let (Some(bucket), Some(stats), Some(event)) = (
        OBSERVE_BUCKET.get_ptr_mut(0),
        OBSERVE_STATS.get_ptr_mut(0),
        OBS_EVENT.get_ptr_mut(0),
    ) else {
        return;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let rate = u64::from(cfg.rate);
    let burst = u64::from(cfg.burst) * TOKEN;
    unsafe {
        // At most a second's refill: the bucket holds no more than a burst
        // anyway, and the product stays far from overflowing.
        let elapsed = now.saturating_sub((*bucket).last_ns).min(1_000_000_000);
        let tokens = ((*bucket).micro_tokens + elapsed * rate / 1000).min(burst);
        (*bucket).last_ns = now;
        if tokens < TOKEN {
            (*bucket).micro_tokens = tokens;
            (*stats).rate_limited += 1;
            return;
        }
        (*bucket).micro_tokens = tokens - TOKEN;
        (*event).time_ns = now;
        if FLOW_EVENTS.output::<FlowEvent>(&*event, 0).is_ok() {
            (*stats).written += 1;
        } else {
            (*stats).ring_full += 1;
        }
    }
}
