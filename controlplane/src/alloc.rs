//! Allocators for Service cluster IPs and node ports.
//!
//! Their state is derived from the stored Services at start and kept in step
//! by the service admission, which runs under the store's writer lock, so an
//! IP or port is never handed out twice.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use rand::Rng;
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum AllocError {
    #[error("provided IP is already allocated")]
    IpAllocated,
    #[error("provided IP is not in the valid range. The range of valid IPs is {0}")]
    IpOutOfRange(IpNet),
    #[error("range is full")]
    Full,
    #[error("provided port is already allocated")]
    PortAllocated,
    #[error("provided port is not in the valid range. The range of valid ports is {0}-{1}")]
    PortOutOfRange(u16, u16),
}

/// Hands out addresses of one service CIDR.
#[derive(Debug, Clone)]
pub struct IpAllocator {
    net: IpNet,
    used: BTreeSet<IpAddr>,
    /// Whether the network and broadcast addresses may be given out (pools
    /// of routed addresses, not subnets).
    edges: bool,
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v) => u32::from(v).into(),
        IpAddr::V6(v) => v.into(),
    }
}

fn from_u128(v: u128, like: IpAddr) -> IpAddr {
    match like {
        // Truncation is intended: offsets stay inside the v4 network.
        IpAddr::V4(_) => IpAddr::V4((v as u32).into()),
        IpAddr::V6(_) => IpAddr::V6(v.into()),
    }
}

impl IpAllocator {
    pub fn new(net: IpNet) -> Self {
        Self {
            net: net.trunc(),
            used: BTreeSet::new(),
            edges: false,
        }
    }

    /// Lets the first and last address of the range be allocated too.
    pub fn include_edges(&mut self) {
        self.edges = true;
    }

    pub fn net(&self) -> IpNet {
        self.net
    }

    pub fn is_v4(&self) -> bool {
        matches!(self.net, IpNet::V4(_))
    }

    /// Usable offsets: the network address is never given out and, for
    /// IPv4, neither is the broadcast address.
    fn bounds(&self) -> (u128, u128) {
        let host_bits = u32::from(self.net.max_prefix_len() - self.net.prefix_len());
        let size: u128 = if host_bits >= 128 {
            u128::MAX
        } else {
            1u128 << host_bits
        };
        if self.edges {
            return (0, size.saturating_sub(1));
        }
        let last = if self.is_v4() {
            size.saturating_sub(2)
        } else {
            size.saturating_sub(1)
        };
        (1, last)
    }

    /// The n-th address of the range (1: the `kubernetes` service's).
    pub fn nth(&self, n: u128) -> IpAddr {
        from_u128(to_u128(self.net.network()) + n, self.net.network())
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let (lo, hi) = self.bounds();
        self.net.contains(&ip) && {
            let off = to_u128(ip) - to_u128(self.net.network());
            off >= lo && off <= hi
        }
    }

    pub fn allocate(&mut self, ip: IpAddr) -> Result<(), AllocError> {
        if !self.contains(ip) {
            return Err(AllocError::IpOutOfRange(self.net));
        }
        if !self.used.insert(ip) {
            return Err(AllocError::IpAllocated);
        }
        Ok(())
    }

    /// A random free address, probing upward from a random start.
    pub fn allocate_next(&mut self) -> Result<IpAddr, AllocError> {
        let (lo, hi) = self.bounds();
        if hi < lo || self.used.len() as u128 > hi - lo {
            return Err(AllocError::Full);
        }
        let span = hi - lo + 1;
        let start = rand::rng().random_range(0..span);
        let base = to_u128(self.net.network());
        // Bounded probe: the range is not full, so a free address exists; on
        // huge v6 ranges the first probe almost always succeeds.
        for i in 0..span.min(1 << 24) {
            let ip = from_u128(base + lo + (start + i) % span, self.net.network());
            if self.used.insert(ip) {
                return Ok(ip);
            }
        }
        Err(AllocError::Full)
    }

    pub fn release(&mut self, ip: IpAddr) {
        self.used.remove(&ip);
    }
}

/// Hands out node ports from one range.
#[derive(Debug, Clone)]
pub struct PortAllocator {
    lo: u16,
    hi: u16,
    used: BTreeSet<u16>,
}

impl PortAllocator {
    pub fn new(lo: u16, hi: u16) -> Self {
        Self {
            lo,
            hi,
            used: BTreeSet::new(),
        }
    }

    pub fn range(&self) -> (u16, u16) {
        (self.lo, self.hi)
    }

    pub fn allocate(&mut self, port: u16) -> Result<(), AllocError> {
        if port < self.lo || port > self.hi {
            return Err(AllocError::PortOutOfRange(self.lo, self.hi));
        }
        if !self.used.insert(port) {
            return Err(AllocError::PortAllocated);
        }
        Ok(())
    }

    pub fn allocate_next(&mut self) -> Result<u16, AllocError> {
        let span = u32::from(self.hi - self.lo) + 1;
        if self.used.len() as u32 >= span {
            return Err(AllocError::Full);
        }
        let start = rand::rng().random_range(0..span);
        for i in 0..span {
            // Fits in u16: the offset is below span, which fits the range.
            let port = self.lo + ((start + i) % span) as u16;
            if self.used.insert(port) {
                return Ok(port);
            }
        }
        Err(AllocError::Full)
    }

    pub fn release(&mut self, port: u16) {
        self.used.remove(&port);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_allocator_never_repeats_and_fills() {
        let mut a = IpAllocator::new("10.0.0.0/29".parse().expect("net"));
        // .1-.6 usable.
        let mut got = BTreeSet::new();
        for _ in 0..6 {
            assert!(got.insert(a.allocate_next().expect("free")));
        }
        assert_eq!(a.allocate_next(), Err(AllocError::Full));
        let ip: IpAddr = "10.0.0.3".parse().expect("ip");
        assert_eq!(a.allocate(ip), Err(AllocError::IpAllocated));
        a.release(ip);
        assert_eq!(a.allocate_next(), Ok(ip));
        assert!(matches!(
            a.allocate("10.0.0.7".parse().expect("ip")),
            Err(AllocError::IpOutOfRange(_))
        ));
        assert!(matches!(
            a.allocate("10.0.1.1".parse().expect("ip")),
            Err(AllocError::IpOutOfRange(_))
        ));
    }

    #[test]
    fn ip_allocator_v6() {
        let mut a = IpAllocator::new("fd00:10:96::/108".parse().expect("net"));
        let ip = a.allocate_next().expect("free");
        assert!(a.net().contains(&ip));
        assert_eq!(a.nth(1).to_string(), "fd00:10:96::1");
    }

    #[test]
    fn port_allocator() {
        let mut p = PortAllocator::new(30000, 30002);
        assert_eq!(p.allocate(30000), Ok(()));
        assert_eq!(p.allocate(30000), Err(AllocError::PortAllocated));
        assert_eq!(
            p.allocate(29999),
            Err(AllocError::PortOutOfRange(30000, 30002))
        );
        let a = p.allocate_next().expect("free");
        let b = p.allocate_next().expect("free");
        assert_ne!(a, b);
        assert_eq!(p.allocate_next(), Err(AllocError::Full));
    }
}
