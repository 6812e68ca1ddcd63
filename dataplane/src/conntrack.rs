//! Conntrack policy for per-packet translation: when a tracked flow is
//! stale, and which flows a gone backend leaves behind, and the collector
//! that removes idle flows on a thread of its own. The TC programs create
//! and refresh entries; the agent only deletes them.

use std::time::Duration;

use ferry_ebpf_common::{Backend, CT_FLAG_CLOSING, CtKey, CtValue, PROTO_TCP, PROTO_UDP};

/// How long an idle flow is kept.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub tcp: Duration,
    /// After a FIN or RST.
    pub tcp_closing: Duration,
    pub udp: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        // Cilium's defaults: a long-lived idle TCP connection survives,
        // UDP "connections" and closed TCP ones go soon.
        Self {
            tcp: Duration::from_secs(6 * 3600),
            tcp_closing: Duration::from_secs(10),
            udp: Duration::from_secs(60),
        }
    }
}

/// Removes idle flows every `interval`, forever, reporting to `metrics`.
/// Runs on its own thread with its own map handle: a walk of a full map
/// takes long enough that the proxy loop should not wait for it.
pub fn collect_forever(
    mut map: aya::maps::HashMap<aya::maps::MapData, CtKey, CtValue>,
    timeouts: Timeouts,
    interval: Duration,
    capacity: u32,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
) {
    loop {
        std::thread::sleep(interval);
        let now = now_ns();
        let mut live = 0usize;
        let result = crate::bpf::purge(
            &mut map,
            &mut |k, v| {
                let dead = expired(k, v, now, &timeouts);
                live += usize::from(!dead);
                dead
            },
            "an idle flow",
        );
        match result {
            Ok(gone) => {
                metrics.flows_expired.inc_by(gone as u64);
                metrics.set_map("conntrack", live, capacity);
            }
            Err(e) => tracing::warn!(error = %e, "conntrack garbage collection failed"),
        }
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns()`.
pub fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec).unwrap_or(0)
}

/// Whether a flow idle since `value.last_seen_ns` is past its timeout.
pub fn expired(key: &CtKey, value: &CtValue, now_ns: u64, t: &Timeouts) -> bool {
    let idle = Duration::from_nanos(now_ns.saturating_sub(value.last_seen_ns));
    let limit = match key.proto {
        PROTO_TCP if value.flags & CT_FLAG_CLOSING != 0 => t.tcp_closing,
        PROTO_TCP => t.tcp,
        _ => t.udp,
    };
    idle > limit
}

/// Whether an entry of group `id` belongs to a UDP flow to `backend`, in
/// any of its directions (forward, reply, source-translated).
pub fn udp_flow_to(key: &CtKey, value: &CtValue, id: u32, backend: &Backend) -> bool {
    key.proto == PROTO_UDP
        && value.id == id
        && ((value.addr == backend.addr && value.port == backend.port)
            || (key.src == backend.addr && key.sport == backend.port)
            || (key.dst == backend.addr && key.dport == backend.port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_ebpf_common::v4_mapped;

    fn key(proto: u8) -> CtKey {
        CtKey {
            src: v4_mapped(1),
            dst: v4_mapped(2),
            sport: 1000u16.to_be(),
            dport: 80u16.to_be(),
            proto,
            _pad: [0; 3],
        }
    }

    #[test]
    fn timeouts_by_protocol_and_state() {
        let t = Timeouts::default();
        let s = 1_000_000_000u64;
        let v = CtValue {
            last_seen_ns: 100 * s,
            ..CtValue::default()
        };
        assert!(!expired(&key(PROTO_UDP), &v, 150 * s, &t));
        assert!(expired(&key(PROTO_UDP), &v, 170 * s, &t));
        assert!(!expired(&key(PROTO_TCP), &v, 170 * s, &t));
        let closing = CtValue {
            flags: CT_FLAG_CLOSING,
            ..v
        };
        assert!(expired(&key(PROTO_TCP), &closing, 120 * s, &t));
        // A clock reading before the entry (never in practice) is not stale.
        assert!(!expired(&key(PROTO_UDP), &v, 0, &t));
    }

    #[test]
    fn udp_flows_of_a_backend_in_every_direction() {
        let b = Backend {
            addr: v4_mapped(9),
            port: 53u16.to_be(),
            ..Backend::default()
        };
        let forward = CtValue {
            addr: b.addr,
            port: b.port,
            id: 7,
            ..CtValue::default()
        };
        assert!(udp_flow_to(&key(PROTO_UDP), &forward, 7, &b));
        assert!(
            !udp_flow_to(&key(PROTO_UDP), &forward, 8, &b),
            "other group"
        );
        assert!(
            !udp_flow_to(&key(PROTO_TCP), &forward, 7, &b),
            "TCP is left alone"
        );
        let reply_key = CtKey {
            src: b.addr,
            sport: b.port,
            ..key(PROTO_UDP)
        };
        let reply = CtValue {
            id: 7,
            ..CtValue::default()
        };
        assert!(udp_flow_to(&reply_key, &reply, 7, &b));
        let other = Backend {
            port: 54u16.to_be(),
            ..b
        };
        assert!(!udp_flow_to(&reply_key, &reply, 7, &other));
    }
}
