//! Address ranges in host-local's model: a range set is a list of ranges of
//! one family, and an attachment gets one address from each range set.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::error::{Error, Result};

/// One range: `start..=end` inside `subnet`, never handing out `gateway`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Range {
    pub subnet: IpNet,
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: Option<IpAddr>,
}

/// The ranges one address is taken from, in order of preference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeSet(pub Vec<Range>);

pub(crate) fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

pub(crate) fn from_u128(n: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(n as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(n))
    }
}

impl Range {
    /// host-local's canonicalization: the subnet must be a network address
    /// with room for at least two hosts; the gateway defaults to the first
    /// address (and is then skipped), the range to the whole subnet less the
    /// network address (and, for IPv4, the broadcast address).
    pub fn canonicalize(
        subnet: IpNet,
        start: Option<IpAddr>,
        end: Option<IpAddr>,
        gateway: Option<IpAddr>,
    ) -> Result<Range> {
        let invalid = |m: String| Err(Error::InvalidConfig(m));
        if subnet.prefix_len() + 2 > subnet.max_prefix_len() {
            return invalid(format!("network {subnet} is too small to allocate from"));
        }
        if subnet.trunc() != subnet {
            return invalid(format!(
                "network {subnet} has host bits set: for a prefix of {} the network address is {}",
                subnet.prefix_len(),
                subnet.network()
            ));
        }
        let v4 = subnet.addr().is_ipv4();
        let network = to_u128(subnet.network());
        let last = to_u128(subnet.broadcast());
        let same_family = |ip: IpAddr| ip.is_ipv4() == v4;
        let gateway = match gateway {
            Some(gw) if !same_family(gw) => {
                return invalid(format!("gateway {gw} is not in the family of {subnet}"));
            }
            Some(gw) => gw,
            None => from_u128(network + 1, v4),
        };
        let start = match start {
            Some(s) if !subnet.contains(&s) || !same_family(s) => {
                return invalid(format!("rangeStart {s} not in network {subnet}"));
            }
            Some(s) => s,
            None => from_u128(network + 1, v4),
        };
        let end = match end {
            Some(e) if !subnet.contains(&e) || !same_family(e) => {
                return invalid(format!("rangeEnd {e} not in network {subnet}"));
            }
            Some(e) => e,
            None => from_u128(if v4 { last - 1 } else { last }, v4),
        };
        if to_u128(start) > to_u128(end) {
            return invalid(format!("rangeStart {start} is after rangeEnd {end}"));
        }
        Ok(Range {
            subnet,
            start,
            end,
            gateway: Some(gateway),
        })
    }

    pub fn is_v4(&self) -> bool {
        self.subnet.addr().is_ipv4()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.is_v4()
            && (to_u128(self.start)..=to_u128(self.end)).contains(&to_u128(ip))
    }

    fn gateway_inside(&self) -> bool {
        self.gateway.is_some_and(|gw| self.contains(gw))
    }

    /// How many addresses this range can hand out.
    pub fn capacity(&self) -> u128 {
        let size = to_u128(self.end) - to_u128(self.start) + 1;
        size - u128::from(self.gateway_inside())
    }

    fn overlaps(&self, other: &Range) -> bool {
        self.is_v4() == other.is_v4()
            && to_u128(self.start) <= to_u128(other.end)
            && to_u128(other.start) <= to_u128(self.end)
    }
}

impl RangeSet {
    pub fn is_v4(&self) -> bool {
        self.0.first().is_some_and(Range::is_v4)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|r| r.contains(ip))
    }

    /// The range an address belongs to.
    pub fn range_of(&self, ip: IpAddr) -> Option<&Range> {
        self.0.iter().find(|r| r.contains(ip))
    }

    pub fn capacity(&self) -> u128 {
        self.0
            .iter()
            .map(Range::capacity)
            .fold(0u128, u128::saturating_add)
    }

    /// Every address of the set once, starting right after `last` (when it
    /// belongs to the set) and wrapping around, as host-local does: a freed
    /// address is reused last, which keeps stale conntrack and ARP entries of
    /// a deleted pod away from a new one. Gateways are skipped.
    pub fn candidates(&self, last: Option<IpAddr>) -> impl Iterator<Item = IpAddr> + '_ {
        let (mut idx, mut next) = (
            0usize,
            self.0.first().map(|r| to_u128(r.start)).unwrap_or(0),
        );
        if let Some(last) = last
            && let Some(i) = self.0.iter().position(|r| r.contains(last))
        {
            if to_u128(last) == to_u128(self.0[i].end) {
                idx = (i + 1) % self.0.len();
                next = to_u128(self.0[idx].start);
            } else {
                idx = i;
                next = to_u128(last) + 1;
            }
        }
        let total: u128 = self
            .0
            .iter()
            .map(|r| to_u128(r.end) - to_u128(r.start) + 1)
            .fold(0u128, u128::saturating_add);
        let mut remaining = total;
        std::iter::from_fn(move || {
            while remaining > 0 {
                remaining -= 1;
                let r = &self.0[idx];
                let ip = from_u128(next, r.is_v4());
                if next >= to_u128(r.end) {
                    idx = (idx + 1) % self.0.len();
                    next = to_u128(self.0[idx].start);
                } else {
                    next += 1;
                }
                if r.gateway != Some(ip) {
                    return Some(ip);
                }
            }
            None
        })
    }
}

/// Range sets must each be of one family, and no two ranges anywhere may
/// overlap (host-local's rules).
pub fn validate_sets(sets: &[RangeSet]) -> Result<()> {
    let all: Vec<&Range> = sets.iter().flat_map(|s| s.0.iter()).collect();
    for set in sets {
        if set.0.iter().any(|r| r.is_v4() != set.is_v4()) {
            return Err(Error::InvalidConfig(
                "a range set mixes IPv4 and IPv6 ranges".into(),
            ));
        }
    }
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            if a.overlaps(b) {
                return Err(Error::InvalidConfig(format!(
                    "range {}-{} overlaps range {}-{}",
                    a.start, a.end, b.start, b.end
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn range(subnet: &str) -> Range {
        Range::canonicalize(subnet.parse().expect("test subnet"), None, None, None)
            .expect("valid range")
    }

    #[test]
    fn defaults_like_host_local() {
        let r = range("10.1.2.0/24");
        assert_eq!(
            (r.start, r.end, r.gateway),
            (ip("10.1.2.1"), ip("10.1.2.254"), Some(ip("10.1.2.1")))
        );
        assert_eq!(r.capacity(), 253);
        let r = range("fd00::/120");
        assert_eq!((r.start, r.end), (ip("fd00::1"), ip("fd00::ff")));
        assert_eq!(r.capacity(), 254);
    }

    #[test]
    fn candidates_wrap_and_skip_gateway() {
        let set = RangeSet(vec![range("10.0.0.0/30"), range("10.0.1.0/30")]);
        // /30: .1 (gateway, skipped) and .2.
        let all: Vec<IpAddr> = set.candidates(None).collect();
        assert_eq!(all, vec![ip("10.0.0.2"), ip("10.0.1.2")]);
        let after: Vec<IpAddr> = set.candidates(Some(ip("10.0.0.2"))).collect();
        assert_eq!(after, vec![ip("10.0.1.2"), ip("10.0.0.2")]);
        let after: Vec<IpAddr> = set.candidates(Some(ip("10.0.1.2"))).collect();
        assert_eq!(after, vec![ip("10.0.0.2"), ip("10.0.1.2")]);
        // An address outside the set restarts at the beginning.
        assert_eq!(
            set.candidates(Some(ip("192.0.2.1"))).next(),
            Some(ip("10.0.0.2"))
        );
        assert_eq!(set.capacity(), 2);
    }

    #[test]
    fn huge_v6_ranges_are_lazy() {
        let set = RangeSet(vec![range("fd00::/64")]);
        assert_eq!(
            set.candidates(None).take(2).collect::<Vec<_>>(),
            vec![ip("fd00::2"), ip("fd00::3")]
        );
        assert_eq!(set.capacity(), (1u128 << 64) - 2);
    }

    #[test]
    fn overlap_and_family_rules() {
        assert!(
            validate_sets(&[
                RangeSet(vec![range("10.0.0.0/24")]),
                RangeSet(vec![range("fd00::/64")])
            ])
            .is_ok()
        );
        assert!(
            validate_sets(&[RangeSet(vec![range("10.0.0.0/24"), range("10.0.0.0/25")])]).is_err()
        );
        assert!(
            validate_sets(&[RangeSet(vec![range("10.0.0.0/24"), range("fd00::/64")])]).is_err()
        );
    }
}
