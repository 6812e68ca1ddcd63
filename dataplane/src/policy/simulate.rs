//! The datapath's verdict for a new flow, computed in user space from a
//! [`Desired`] the way the pod devices' TC programs compute it from the
//! maps: endpoint lookup, then (isolated) host and self exceptions, then at
//! most three lookups in the rules trie (the peer's pod identity, its CIDR
//! identity, `IDENTITY_ANY`). LPM tries are emulated exactly as the
//! kernel's: the longest entry whose first `prefixlen` bits of key data
//! (in memory order) equal the looked-up key's.
//!
//! Owns only that emulation, for tests, `inspect` and explaining verdicts.
//! Must not share code with the compiler it checks. Connection tracking
//! (replies of allowed flows) is not modelled: one probe is one new flow.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ferry_ebpf_common::policy::{
    DIR_EGRESS, DIR_INGRESS, EP_ISOLATED_EGRESS, EP_ISOLATED_INGRESS, IDENTITY_ANY, IDENTITY_HOST,
    PolicyCidrKey, PolicyRuleKey, PolicyRuleValue, RULE_PREFIX_FULL,
};

use super::compile::Desired;
use crate::service::programmer::addr_words;

/// A new flow's first packet, as the datapath sees it after service
/// translation: addresses, IP protocol number and destination port (0 for
/// protocols without ports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub dport: u16,
}

/// Why a flow passes or not at one endpoint in one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The local address is not one of this node's pods.
    NotJudged,
    /// The pod is not isolated in this direction.
    NotIsolated,
    /// Ingress from this node's own addresses.
    Host,
    /// A pod reaching itself.
    SelfTraffic,
    /// An entry of this policy allows it.
    Allowed {
        policy: u32,
    },
    Denied,
}

impl Verdict {
    pub fn allows(self) -> bool {
        !matches!(self, Verdict::Denied)
    }
}

/// The kernel LPM trie's match: `data`'s first `len` bits equal `key`'s.
fn prefix_matches(data: &[u8], key: &[u8], len: u32) -> bool {
    let full = (len / 8) as usize;
    let rest = len % 8;
    if data.len() < full || key.len() < full || data[..full] != key[..full] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    match (data.get(full), key.get(full)) {
        (Some(a), Some(b)) => a & mask == b & mask,
        _ => false,
    }
}

/// The longest entry holding `key` (looked up with the full length).
fn lpm<'m, K, V, B: AsRef<[u8]>>(
    map: &'m BTreeMap<(u32, K), V>,
    bytes: impl Fn(&K) -> B,
    key: &K,
) -> Option<&'m V> {
    let want = bytes(key);
    let want = want.as_ref();
    let max = (want.len() * 8) as u32;
    map.iter()
        .filter(|((len, k), _)| *len <= max && prefix_matches(bytes(k).as_ref(), want, *len))
        .max_by_key(|((len, _), _)| *len)
        .map(|(_, v)| v)
}

/// A rules key's data as the kernel sees it (the struct's memory).
fn rule_bytes(k: &PolicyRuleKey) -> [u8; 12] {
    let mut v = [0u8; 12];
    v[0..4].copy_from_slice(&k.set.to_ne_bytes());
    v[4..8].copy_from_slice(&k.peer.to_ne_bytes());
    v[8] = k.dir;
    v[9] = k.proto;
    v[10..12].copy_from_slice(&k.port.to_ne_bytes());
    v
}

fn cidr_bytes(k: &PolicyCidrKey) -> [u8; 16] {
    let mut v = [0u8; 16];
    for (i, w) in k.addr.iter().enumerate() {
        v[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    v
}

/// The rules entry the datapath would find for (set, peer identity).
pub fn rule_lookup(
    d: &Desired,
    set: u32,
    peer: u32,
    dir: u8,
    proto: u8,
    dport: u16,
) -> Option<PolicyRuleValue> {
    let key = PolicyRuleKey {
        set,
        peer,
        dir,
        proto,
        port: dport.to_be(),
    };
    const _: () = assert!(std::mem::size_of::<PolicyRuleKey>() * 8 == RULE_PREFIX_FULL as usize);
    lpm(&d.rules, rule_bytes, &key).copied()
}

/// The CIDR identity of an address (none: no entry holds it).
pub fn cidr_lookup(d: &Desired, addr: IpAddr) -> Option<u32> {
    lpm(
        &d.cidrs,
        cidr_bytes,
        &PolicyCidrKey {
            addr: addr_words(addr),
        },
    )
    .copied()
}

/// The verdict at the endpoint of `dir` (`DIR_EGRESS`: the source pod's
/// egress; `DIR_INGRESS`: the destination pod's ingress).
pub fn simulate(d: &Desired, dir: u8, p: &Probe) -> Verdict {
    let (local, peer) = if dir == DIR_EGRESS {
        (p.src, p.dst)
    } else {
        (p.dst, p.src)
    };
    let Some(ep) = d.endpoints.get(&addr_words(local)) else {
        return Verdict::NotJudged;
    };
    let bit = if dir == DIR_INGRESS {
        EP_ISOLATED_INGRESS
    } else {
        EP_ISOLATED_EGRESS
    };
    if ep.flags & bit == 0 {
        return Verdict::NotIsolated;
    }
    // Both directions: the API allows a pod to reach itself (through its
    // Service, translated back to itself, the packet crosses its device).
    if addr_words(p.src) == addr_words(p.dst) {
        return Verdict::SelfTraffic;
    }
    let pod = d.identities.get(&addr_words(peer)).copied();
    if dir == DIR_INGRESS && pod == Some(IDENTITY_HOST) {
        return Verdict::Host;
    }
    let cidr = cidr_lookup(d, peer);
    let tries = [pod, cidr]
        .into_iter()
        .flatten()
        .filter(|id| *id != IDENTITY_ANY)
        .chain([IDENTITY_ANY]);
    for id in tries {
        if let Some(v) = rule_lookup(d, ep.set, id, dir, p.proto, p.dport) {
            return Verdict::Allowed { policy: v.policy };
        }
    }
    Verdict::Denied
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn lpm_takes_the_longest_matching_prefix() {
        let mut m = BTreeMap::new();
        let k = |a: [u8; 4]| PolicyCidrKey {
            addr: addr_words(IpAddr::from(a)),
        };
        m.insert((104u32, k([10, 0, 0, 0])), 1u32);
        m.insert((120u32, k([10, 1, 2, 0])), 2u32);
        m.insert((0u32, PolicyCidrKey::default()), 3u32);
        let look = |a: [u8; 4]| *lpm(&m, cidr_bytes, &k(a)).unwrap();
        assert_eq!(look([10, 1, 2, 9]), 2);
        assert_eq!(look([10, 1, 3, 9]), 1);
        assert_eq!(look([11, 0, 0, 1]), 3);
        assert!(prefix_matches(&[0b1010_0000], &[0b1011_1111], 3));
        assert!(!prefix_matches(&[0b1010_0000], &[0b1011_1111], 4));
    }
}
