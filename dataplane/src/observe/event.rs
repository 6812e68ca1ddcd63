//! One flow event: decoded from the ring's bytes (safe code, field by
//! field at the offsets of `#[repr(C)]` [`FlowEvent`]), turned into the
//! [`Record`] a watcher gets, and matched against a watcher's [`Filter`].

use std::fmt::Write as _;
use std::net::IpAddr;

use ferry_ebpf_common::observe::{
    FLOW_DIR_NONE, FLOW_DROPPED, FLOW_FORWARDED, FLOW_TRANSLATED, FlowEvent, REASON_FROM_HOST,
    REASON_NOT_ISOLATED, REASON_POLICY_ALLOWED, REASON_POLICY_DENIED, REASON_SELF, REASON_SERVICE,
    REASON_SPOOFED,
};
use ferry_ebpf_common::policy::{DIR_EGRESS, DIR_INGRESS};
use serde::{Deserialize, Serialize};

use super::names::Names;
use crate::service::programmer::words_addr;

/// Reads a [`FlowEvent`] from the ring's bytes; `None` when too short.
pub fn decode(bytes: &[u8]) -> Option<FlowEvent> {
    if bytes.len() < size_of::<FlowEvent>() {
        return None;
    }
    let u16_at = |o: usize| u16::from_ne_bytes([bytes[o], bytes[o + 1]]);
    let u32_at =
        |o: usize| u32::from_ne_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
    let addr_at = |o: usize| [u32_at(o), u32_at(o + 4), u32_at(o + 8), u32_at(o + 12)];
    let mut time = [0u8; 8];
    time.copy_from_slice(&bytes[0..8]);
    Some(FlowEvent {
        time_ns: u64::from_ne_bytes(time),
        src: addr_at(8),
        dst: addr_at(24),
        orig_dst: addr_at(40),
        sport: u16_at(56),
        dport: u16_at(58),
        orig_dport: u16_at(60),
        proto: bytes[62],
        kind: bytes[63],
        dir: bytes[64],
        reason: bytes[65],
        _pad: 0,
        policy: u32_at(68),
        set: u32_at(72),
        ifindex: u32_at(76),
    })
}

/// One end of a flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub ip: IpAddr,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pod: Option<String>,
}

/// A NetworkPolicy a record names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRef {
    pub namespace: String,
    pub name: String,
}

/// What a watcher gets for one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// RFC 3339, nanoseconds.
    pub time: String,
    /// The agent's node.
    pub node: String,
    /// `FORWARDED`, `DROPPED` or `TRANSLATED`.
    pub verdict: String,
    /// Why: `policy-allowed`, `not-isolated`, `from-node`, `to-self`,
    /// `policy-denied`, `spoofed-address` or `service`.
    pub reason: String,
    /// The judged pod's direction: `ingress` or `egress` (none for a
    /// translation).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub direction: Option<String>,
    /// `TCP`, `UDP`, `SCTP`, `ICMP`, `ICMPv6` or the protocol's number.
    pub protocol: String,
    pub source: Endpoint,
    pub destination: Endpoint,
    /// A translation's frontend (the Service's address and port).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub service: Option<Endpoint>,
    /// Forwarded by policy: the policy that allows. Dropped by policy: the
    /// policies that isolate the pod in this direction.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub policies: Vec<PolicyRef>,
}

/// How records and metrics name a `REASON_*`.
pub fn reason_name(reason: u8) -> &'static str {
    match reason {
        REASON_POLICY_ALLOWED => "policy-allowed",
        REASON_NOT_ISOLATED => "not-isolated",
        REASON_FROM_HOST => "from-node",
        REASON_SELF => "to-self",
        REASON_POLICY_DENIED => "policy-denied",
        REASON_SPOOFED => "spoofed-address",
        REASON_SERVICE => "service",
        _ => "unknown",
    }
}

fn protocol(p: u8) -> String {
    match p {
        1 => "ICMP".into(),
        6 => "TCP".into(),
        17 => "UDP".into(),
        58 => "ICMPv6".into(),
        132 => "SCTP".into(),
        n => n.to_string(),
    }
}

fn has_ports(p: u8) -> bool {
    matches!(p, 6 | 17 | 132)
}

impl Record {
    /// The record of `e`, written at `time` (RFC 3339) on `node`, named
    /// with `names`.
    pub fn new(e: &FlowEvent, time: String, node: &str, names: &Names) -> Self {
        let ports = has_ports(e.proto);
        let end = |words: &[u32; 4], port: u16| {
            let ip = words_addr(words);
            let pod = names.pod(ip);
            Endpoint {
                ip,
                port: ports.then_some(u16::from_be(port)),
                namespace: pod.map(|p| p.namespace.to_string()),
                pod: pod.map(|p| p.name.clone()),
            }
        };
        let verdict = match e.kind {
            FLOW_FORWARDED => "FORWARDED",
            FLOW_DROPPED => "DROPPED",
            FLOW_TRANSLATED => "TRANSLATED",
            _ => "UNKNOWN",
        };
        let direction = match e.dir {
            DIR_INGRESS => Some("ingress".to_string()),
            DIR_EGRESS => Some("egress".to_string()),
            FLOW_DIR_NONE => None,
            _ => None,
        };
        let policies = match e.reason {
            REASON_POLICY_ALLOWED => names.policy(e.policy).into_iter().collect(),
            REASON_POLICY_DENIED => names.isolating(e.set, e.dir == DIR_EGRESS),
            _ => Vec::new(),
        };
        Self {
            time,
            node: node.to_string(),
            verdict: verdict.into(),
            reason: reason_name(e.reason).into(),
            direction,
            protocol: protocol(e.proto),
            source: end(&e.src, e.sport),
            destination: end(&e.dst, e.dport),
            service: (e.kind == FLOW_TRANSLATED).then(|| Endpoint {
                ip: words_addr(&e.orig_dst),
                port: ports.then_some(u16::from_be(e.orig_dport)),
                namespace: None,
                pod: None,
            }),
            policies,
        }
    }

    /// One line, as `hubble observe` prints a flow.
    pub fn line(&self) -> String {
        let mut s = String::new();
        // The time of day, to the microsecond.
        let clock = self.time.get(11..26).unwrap_or(&self.time);
        let _ = write!(
            s,
            "{clock} {}: {} -> {} {} {}",
            self.node,
            show(&self.source),
            show(&self.destination),
            self.protocol,
            self.verdict,
        );
        if let Some(d) = &self.direction {
            let _ = write!(s, " {d}");
        }
        let _ = write!(s, " ({})", self.reason);
        if let Some(svc) = &self.service {
            let _ = write!(s, " via service {}", show(svc));
        }
        if !self.policies.is_empty() {
            let names: Vec<String> = self
                .policies
                .iter()
                .map(|p| format!("{}/{}", p.namespace, p.name))
                .collect();
            let _ = write!(s, " policy {}", names.join(","));
        }
        s
    }
}

fn show(e: &Endpoint) -> String {
    let addr = match (e.ip, e.port) {
        (IpAddr::V6(ip), Some(port)) => format!("[{ip}]:{port}"),
        (ip, Some(port)) => format!("{ip}:{port}"),
        (ip, None) => ip.to_string(),
    };
    match (&e.namespace, &e.pod) {
        (Some(ns), Some(pod)) => format!("{ns}/{pod} ({addr})"),
        _ => addr,
    }
}

/// What a watcher asks for: every list empty matches everything; a record
/// must match each non-empty list (one entry of it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// `[NAMESPACE/]POD-NAME-PREFIX`: either end is such a pod (no
    /// namespace: any namespace).
    #[serde(default)]
    pub pods: Vec<String>,
    /// Either end is a pod of one of these namespaces.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// `forwarded`, `dropped`, `translated` (any case).
    #[serde(default)]
    pub verdicts: Vec<String>,
}

/// Most entries of a filter's lists, all together.
pub const MAX_FILTER_ENTRIES: usize = 64;

impl Filter {
    /// Refuses what no record could match and oversized filters.
    pub fn check(&self) -> Result<(), String> {
        let n = self.pods.len() + self.namespaces.len() + self.verdicts.len();
        if n > MAX_FILTER_ENTRIES {
            return Err(format!(
                "{n} filter entries, more than the limit of {MAX_FILTER_ENTRIES}"
            ));
        }
        for v in &self.verdicts {
            if !["forwarded", "dropped", "translated"].contains(&v.to_ascii_lowercase().as_str()) {
                return Err(format!(
                    "unknown verdict {v:?}: use forwarded, dropped or translated"
                ));
            }
        }
        Ok(())
    }

    pub fn matches(&self, r: &Record) -> bool {
        let ends = [&r.source, &r.destination];
        let pod_ok = self.pods.is_empty()
            || self.pods.iter().any(|want| {
                let (ns, prefix) = match want.split_once('/') {
                    Some((ns, p)) => (Some(ns), p),
                    None => (None, want.as_str()),
                };
                ends.iter().any(|e| {
                    e.pod.as_deref().is_some_and(|p| p.starts_with(prefix))
                        && ns.is_none_or(|ns| e.namespace.as_deref() == Some(ns))
                })
            });
        let ns_ok = self.namespaces.is_empty()
            || ends.iter().any(|e| {
                e.namespace
                    .as_deref()
                    .is_some_and(|ns| self.namespaces.iter().any(|w| w == ns))
            });
        let verdict_ok = self.verdicts.is_empty()
            || self
                .verdicts
                .iter()
                .any(|v| v.eq_ignore_ascii_case(&r.verdict));
        pod_ok && ns_ok && verdict_ok
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::observe::names::{Names, PodName};
    use crate::service::programmer::addr_words;

    /// The event's bytes as the kernel lays the `#[repr(C)]` struct out.
    fn bytes_of(e: &FlowEvent) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&e.time_ns.to_ne_bytes());
        for a in [e.src, e.dst, e.orig_dst] {
            for w in a {
                b.extend_from_slice(&w.to_ne_bytes());
            }
        }
        for p in [e.sport, e.dport, e.orig_dport] {
            b.extend_from_slice(&p.to_ne_bytes());
        }
        b.extend_from_slice(&[e.proto, e.kind, e.dir, e.reason, 0, 0]);
        for w in [e.policy, e.set, e.ifindex] {
            b.extend_from_slice(&w.to_ne_bytes());
        }
        b
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn sample() -> FlowEvent {
        FlowEvent {
            time_ns: 123_456_789,
            src: addr_words(ip("10.244.1.5")),
            dst: addr_words(ip("10.244.2.7")),
            orig_dst: [0; 4],
            sport: 43210u16.to_be(),
            dport: 80u16.to_be(),
            orig_dport: 0,
            proto: 6,
            kind: FLOW_DROPPED,
            dir: DIR_INGRESS,
            reason: REASON_POLICY_DENIED,
            _pad: 0,
            policy: 0,
            set: 3,
            ifindex: 9,
        }
    }

    #[test]
    fn decodes_the_kernel_layout() {
        let e = sample();
        let b = bytes_of(&e);
        assert_eq!(b.len(), size_of::<FlowEvent>());
        assert_eq!(decode(&b), Some(e));
        assert_eq!(decode(&b[..79]), None);
    }

    fn names() -> Names {
        let mut n = Names::default();
        n.insert_pod(ip("10.244.1.5"), PodName::new("x", "a-1"));
        n.insert_pod(ip("10.244.2.7"), PodName::new("y", "b-1"));
        n.insert_policy(4, "y", "deny-all");
        n.insert_policy(5, "y", "allow-x");
        n.insert_set(3, &[(4, true, false), (5, true, true)]);
        n
    }

    #[test]
    fn a_denied_flow_names_its_pods_and_the_isolating_policies() {
        let r = Record::new(
            &sample(),
            "2026-12-03T20:01:02.123456789Z".into(),
            "n1",
            &names(),
        );
        assert_eq!(r.verdict, "DROPPED");
        assert_eq!(r.reason, "policy-denied");
        assert_eq!(r.direction.as_deref(), Some("ingress"));
        assert_eq!(r.source.pod.as_deref(), Some("a-1"));
        assert_eq!(r.source.port, Some(43210));
        assert_eq!(r.destination.namespace.as_deref(), Some("y"));
        // Both policies isolate ingress.
        let isolating: Vec<&str> = r.policies.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(isolating, ["deny-all", "allow-x"]);
        assert_eq!(
            r.line(),
            "20:01:02.123456 n1: x/a-1 (10.244.1.5:43210) -> y/b-1 (10.244.2.7:80) TCP DROPPED ingress (policy-denied) policy y/deny-all,y/allow-x"
        );
        // Egress: only the policy isolating egress.
        let mut e = sample();
        e.dir = DIR_EGRESS;
        let r = Record::new(&e, "t".into(), "n1", &names());
        assert_eq!(r.policies.len(), 1);
        assert_eq!(r.policies[0].name, "allow-x");
    }

    #[test]
    fn a_translation_names_the_service_frontend() {
        let mut e = sample();
        e.kind = FLOW_TRANSLATED;
        e.reason = REASON_SERVICE;
        e.dir = FLOW_DIR_NONE;
        e.orig_dst = addr_words(ip("10.96.0.10"));
        e.orig_dport = 53u16.to_be();
        e.proto = 17;
        let r = Record::new(&e, "t".into(), "n1", &Names::default());
        assert_eq!(r.direction, None);
        assert_eq!(r.protocol, "UDP");
        let svc = r.service.unwrap();
        assert_eq!((svc.ip, svc.port), (ip("10.96.0.10"), Some(53)));
        assert_eq!(r.source.pod, None);
    }

    #[test]
    fn filters_match_either_end() {
        let r = Record::new(&sample(), "t".into(), "n1", &names());
        let f = |pods: &[&str], nss: &[&str], vs: &[&str]| Filter {
            pods: pods.iter().map(|s| s.to_string()).collect(),
            namespaces: nss.iter().map(|s| s.to_string()).collect(),
            verdicts: vs.iter().map(|s| s.to_string()).collect(),
        };
        assert!(f(&[], &[], &[]).matches(&r));
        assert!(f(&["x/a"], &[], &[]).matches(&r));
        assert!(f(&["b-"], &[], &[]).matches(&r));
        assert!(!f(&["y/a"], &[], &[]).matches(&r));
        assert!(f(&[], &["y"], &["dropped"]).matches(&r));
        assert!(!f(&[], &["z"], &[]).matches(&r));
        assert!(!f(&["x/a"], &[], &["FORWARDED"]).matches(&r));
        assert!(f(&[], &[], &["bogus"]).check().is_err());
        let many = vec!["p".to_string(); MAX_FILTER_ENTRIES + 1];
        assert!(
            Filter {
                pods: many,
                ..Filter::default()
            }
            .check()
            .is_err()
        );
    }
}
