//! Cluster-wide settings the API semantics depend on: service and pod CIDRs,
//! the node-port range and load-balancer pools.

use ipnet::IpNet;
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{flag}: {value:?} is not a CIDR: {detail}")]
    Cidr {
        flag: &'static str,
        value: String,
        detail: String,
    },
    #[error("{flag}: at most one IPv4 and one IPv6 CIDR, got {value:?}")]
    Families { flag: &'static str, value: String },
    #[error("--service-node-port-range: {0:?} is not a range like 30000-32767")]
    PortRange(String),
    #[error("--node-cidr-mask-size: {mask} does not fit the cluster CIDR {cidr}")]
    NodeMask { mask: u8, cidr: IpNet },
}

/// Settings shared by admission and the controllers.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Service CIDRs, the primary family first.
    pub service_cidrs: Vec<IpNet>,
    pub node_port_range: (u16, u16),
    /// Pod CIDRs, the primary family first.
    pub cluster_cidrs: Vec<IpNet>,
    /// Node podCIDR prefix length for IPv4; IPv6 uses 64 unless the cluster
    /// CIDR is longer.
    pub node_cidr_mask_size: u8,
    pub loadbalancer_pools: Vec<IpNet>,
    /// Which external IPs Services may claim.
    pub external_ips: crate::admission::external_ips::ExternalIpPolicy,
    /// How long a node with a Lease may go without renewing it or posting
    /// its Ready condition before it is marked unreachable
    /// (`--node-monitor-grace-period`).
    pub node_monitor_grace_period: std::time::Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            service_cidrs: parse_cidrs("--service-cluster-ip-range", "10.96.0.0/16")
                .unwrap_or_default(),
            node_port_range: (30000, 32767),
            cluster_cidrs: parse_cidrs("--cluster-cidr", "10.244.0.0/16").unwrap_or_default(),
            node_cidr_mask_size: 24,
            loadbalancer_pools: Vec::new(),
            external_ips: Default::default(),
            node_monitor_grace_period: std::time::Duration::from_secs(40),
        }
    }
}

/// Parses `CIDR[,CIDR]` with at most one CIDR per family.
pub fn parse_cidrs(flag: &'static str, value: &str) -> Result<Vec<IpNet>, ConfigError> {
    let nets = parse_pools(flag, value)?;
    let v4 = nets.iter().filter(|n| matches!(n, IpNet::V4(_))).count();
    if v4 > 1 || nets.len() - v4 > 1 {
        return Err(ConfigError::Families {
            flag,
            value: value.into(),
        });
    }
    Ok(nets)
}

/// Parses a pool list: any number of CIDRs of either family.
pub fn parse_pools(flag: &'static str, value: &str) -> Result<Vec<IpNet>, ConfigError> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<IpNet>()
                .map(|n| n.trunc())
                .map_err(|e| ConfigError::Cidr {
                    flag,
                    value: s.into(),
                    detail: e.to_string(),
                })
        })
        .collect()
}

pub fn parse_port_range(value: &str) -> Result<(u16, u16), ConfigError> {
    let err = || ConfigError::PortRange(value.into());
    let (lo, hi) = value.split_once('-').ok_or_else(err)?;
    let lo: u16 = lo.trim().parse().map_err(|_| err())?;
    let hi: u16 = hi.trim().parse().map_err(|_| err())?;
    if lo == 0 || lo > hi {
        return Err(err());
    }
    Ok((lo, hi))
}

impl ClusterConfig {
    pub fn primary_family(&self) -> &'static str {
        match self.service_cidrs.first() {
            Some(IpNet::V6(_)) => "IPv6",
            _ => "IPv4",
        }
    }

    pub fn dual_stack(&self) -> bool {
        self.service_cidrs.len() == 2
    }

    /// The service CIDR of one family (`IPv4` or `IPv6`).
    pub fn service_cidr(&self, family: &str) -> Option<IpNet> {
        self.service_cidrs
            .iter()
            .copied()
            .find(|n| family_of(n) == family)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        for cidr in &self.cluster_cidrs {
            let mask = match cidr {
                IpNet::V4(_) => self.node_cidr_mask_size,
                IpNet::V6(_) => self.node_mask_v6(cidr),
            };
            if mask < cidr.prefix_len() || mask > cidr.max_prefix_len() {
                return Err(ConfigError::NodeMask { mask, cidr: *cidr });
            }
        }
        Ok(())
    }

    /// Node CIDR size for an IPv6 cluster CIDR: /64 per node (as
    /// kube-controller-manager's default), or 8 bits below a cluster CIDR of
    /// /64 or longer.
    pub fn node_mask_v6(&self, cidr: &IpNet) -> u8 {
        if cidr.prefix_len() < 64 {
            64
        } else {
            cidr.prefix_len().saturating_add(8).min(128)
        }
    }
}

pub fn family_of(net: &IpNet) -> &'static str {
    match net {
        IpNet::V4(_) => "IPv4",
        IpNet::V6(_) => "IPv6",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_lists() {
        assert_eq!(
            parse_cidrs("f", "10.96.0.0/12,fd00::/108")
                .expect("ok")
                .len(),
            2
        );
        assert!(matches!(
            parse_cidrs("f", "10.0.0.0/8,10.1.0.0/16"),
            Err(ConfigError::Families { .. })
        ));
        assert!(matches!(
            parse_cidrs("f", "10.0.0.0/33"),
            Err(ConfigError::Cidr { .. })
        ));
        assert_eq!(parse_port_range("30000-32767"), Ok((30000, 32767)));
        assert!(parse_port_range("3-2").is_err());
    }
}
