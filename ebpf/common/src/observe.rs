//! Flow events: what the programs tell `ferry-agent observe` about the
//! flows they judge and translate, through a ring buffer the agent reads.
//!
//! Observation costs nothing when nobody watches: the programs read
//! [`ObserveConfig::until_ns`] (one array lookup) and write no event while
//! it is 0 or past. The agent sets it a few seconds ahead and renews it
//! while someone watches, so an agent that dies mid-watch stops the events
//! on its own. While watched, each CPU writes at most
//! [`ObserveConfig::rate`] events a second (a token bucket, up to
//! [`ObserveConfig::burst`] at once); what the bucket or a full ring
//! refuses is counted in [`ObserveStats`].
//!
//! One event per judged new flow (each hook, each direction), per denied
//! packet, and per translated new flow: never per packet of a flow already
//! decided.

/// The agent's switch and limits (`FERRY_OBSERVE`, one entry).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ObserveConfig {
    /// `bpf_ktime_get_ns()` until which events are written; 0: never.
    pub until_ns: u64,
    /// Events per second per CPU.
    pub rate: u32,
    /// The most events a CPU writes at once after a quiet spell.
    pub burst: u32,
}

/// One CPU's token bucket (`FERRY_OBSERVE_BUCKET`, per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ObserveBucket {
    /// Tokens, in millionths of an event.
    pub micro_tokens: u64,
    pub last_ns: u64,
}

/// Events written, and refused by the rate limit or a full ring (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ObserveStats {
    pub written: u64,
    pub rate_limited: u64,
    pub ring_full: u64,
}

/// [`FlowEvent::kind`]: the packet goes on (policy allowed it, or none
/// applies).
pub const FLOW_FORWARDED: u8 = 1;
/// The packet was dropped.
pub const FLOW_DROPPED: u8 = 2;
/// A new flow's destination was translated to a backend
/// ([`FlowEvent::orig_dst`] is the frontend).
pub const FLOW_TRANSLATED: u8 = 3;

/// [`FlowEvent::dir`] of a translation: no policy direction.
pub const FLOW_DIR_NONE: u8 = 0xff;

/// [`FlowEvent::reason`]: the pod's policies allow the flow
/// ([`FlowEvent::policy`] is the allowing policy's number).
pub const REASON_POLICY_ALLOWED: u8 = 1;
/// No policy isolates the pod in this direction.
pub const REASON_NOT_ISOLATED: u8 = 2;
/// From the pod's own node (always allowed).
pub const REASON_FROM_HOST: u8 = 3;
/// A pod reaching itself (always allowed).
pub const REASON_SELF: u8 = 4;
/// Isolated, and no rule of the pod's policies allows the flow
/// ([`FlowEvent::set`] names the policies that isolate it).
pub const REASON_POLICY_DENIED: u8 = 5;
/// The pod's address, from another device than the pod's.
pub const REASON_SPOOFED: u8 = 6;
/// A Service's frontend to one of its backends.
pub const REASON_SERVICE: u8 = 7;

/// One event (addresses in the maps' form, ports in network order).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowEvent {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC).
    pub time_ns: u64,
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// A translation's frontend; zero otherwise.
    pub orig_dst: [u32; 4],
    pub sport: u16,
    pub dport: u16,
    pub orig_dport: u16,
    pub proto: u8,
    /// `FLOW_*`.
    pub kind: u8,
    /// `policy::DIR_*` (the pod's direction) or [`FLOW_DIR_NONE`].
    pub dir: u8,
    /// `REASON_*`.
    pub reason: u8,
    pub _pad: u16,
    /// The allowing policy's number ([`REASON_POLICY_ALLOWED`]), else 0.
    pub policy: u32,
    /// The judged pod's policy set (0: none).
    pub set: u32,
    pub ifindex: u32,
}

pub const MAP_OBSERVE: &str = "FERRY_OBSERVE";
pub const MAP_OBSERVE_STATS: &str = "FERRY_OBSERVE_STATS";
pub const MAP_FLOW_EVENTS: &str = "FERRY_FLOW_EVENTS";
