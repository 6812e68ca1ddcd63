//! Which addresses outside the cluster's own ranges a Service may claim: its
//! `spec.externalIPs` and its `status.loadBalancer.ingress` IPs, which every
//! node's agent then balances for every process on the node (the
//! CVE-2020-8554 class of attack: claim the address of something else and
//! receive its traffic).
//!
//! Always refused: an address inside a service or pod CIDR (a Service could
//! shadow another's ClusterIP, the `kubernetes` Service's included, or a
//! pod), and special addresses (unspecified, loopback, link-local,
//! multicast), as kube-apiserver refuses them for endpoints. By setting:
//! kube's `DenyServiceExternalIPs` admission (no new externalIPs at all) and
//! a list of CIDRs externalIPs must fall in.

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{ServiceSpec, ServiceStatus};

use crate::config::ClusterConfig;
use crate::error::Cause;

/// The cluster's policy for external IPs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExternalIpPolicy {
    /// `--deny-service-external-ips`: refuse externalIPs a Service did not
    /// already have, as kube's DenyServiceExternalIPs admission plugin.
    pub deny_new: bool,
    /// `--service-external-ip-cidrs`: when set, externalIPs must fall in one
    /// of these.
    pub allowed: Vec<IpNet>,
}

/// Why `ip` is special, as apimachinery's ValidateNonSpecialIP says it.
fn special(ip: &IpAddr) -> Option<&'static str> {
    let canonical = ip.to_canonical();
    if canonical.is_unspecified() {
        return Some("may not be unspecified (0.0.0.0 or ::)");
    }
    if canonical.is_loopback() {
        return Some("may not be in the loopback range (127.0.0.0/8, ::1/128)");
    }
    if canonical.is_multicast() {
        return Some("may not be in the multicast range (224.0.0.0/4, ff00::/8)");
    }
    let link_local = match canonical {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    };
    link_local.then_some("may not be in the link-local range (169.254.0.0/16, fe80::/10)")
}

/// Why the cluster's ranges forbid `ip`, if they do.
fn in_cluster_range(ip: &IpAddr, config: &ClusterConfig) -> Option<String> {
    let ip = ip.to_canonical();
    if let Some(net) = config.service_cidrs.iter().find(|n| n.contains(&ip)) {
        return Some(format!(
            "may not be in the service CIDR {net} (--service-cluster-ip-range)"
        ));
    }
    config
        .cluster_cidrs
        .iter()
        .find(|n| n.contains(&ip))
        .map(|net| format!("may not be in the pod CIDR {net} (--cluster-cidr)"))
}

/// Checks the addresses a Service claims; `old` is the stored spec on update.
pub fn check(
    spec: &ServiceSpec,
    status: Option<&ServiceStatus>,
    old: Option<&ServiceSpec>,
    config: &ClusterConfig,
) -> Vec<Cause> {
    let mut causes = Vec::new();
    let policy = &config.external_ips;
    let before: &[String] = old
        .and_then(|o| o.external_ips.as_deref())
        .unwrap_or_default();
    for (i, raw) in spec.external_ips.iter().flatten().enumerate() {
        let field = format!("spec.externalIPs[{i}]");
        // Unparsable addresses are reported by the spec's validation.
        let Ok(ip) = raw.parse::<IpAddr>() else {
            continue;
        };
        if policy.deny_new && !before.contains(raw) {
            causes.push(Cause::forbidden(
                field,
                "externalIPs have been disabled (--deny-service-external-ips)",
            ));
            continue;
        }
        if let Some(why) = special(&ip) {
            causes.push(Cause::invalid(field, format!("\"{raw}\""), why));
        } else if let Some(why) = in_cluster_range(&ip, config) {
            causes.push(Cause::invalid(field, format!("\"{raw}\""), &why));
        } else if !policy.allowed.is_empty()
            && !policy
                .allowed
                .iter()
                .any(|n| n.contains(&ip.to_canonical()))
        {
            causes.push(Cause::forbidden(
                field,
                &format!(
                    "externalIP {raw} is not in the allowed CIDRs (--service-external-ip-cidrs)"
                ),
            ));
        }
    }
    let ingress = status
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or_default();
    for (i, ing) in ingress.iter().enumerate() {
        let Some(raw) = ing.ip.as_deref() else {
            continue;
        };
        let field = format!("status.loadBalancer.ingress[{i}].ip");
        let Ok(ip) = raw.parse::<IpAddr>() else {
            causes.push(Cause::invalid(
                field,
                format!("\"{raw}\""),
                "must be a valid IP address",
            ));
            continue;
        };
        if let Some(why) = special(&ip) {
            causes.push(Cause::invalid(field, format!("\"{raw}\""), why));
        } else if let Some(why) = in_cluster_range(&ip, config) {
            causes.push(Cause::invalid(field, format!("\"{raw}\""), &why));
        }
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus};

    fn spec(ips: &[&str]) -> ServiceSpec {
        ServiceSpec {
            external_ips: Some(ips.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        }
    }

    fn fields(causes: &[Cause]) -> Vec<&str> {
        causes.iter().map(|c| c.field.as_str()).collect()
    }

    #[test]
    fn cluster_ranges_and_special_addresses_are_refused() {
        let config = ClusterConfig::default();
        let causes = check(
            &spec(&[
                "10.96.0.1",
                "10.244.1.5",
                "127.0.0.1",
                "0.0.0.0",
                "169.254.1.1",
                "203.0.113.7",
            ]),
            None,
            None,
            &config,
        );
        assert_eq!(
            fields(&causes),
            [
                "spec.externalIPs[0]",
                "spec.externalIPs[1]",
                "spec.externalIPs[2]",
                "spec.externalIPs[3]",
                "spec.externalIPs[4]"
            ]
        );
        assert!(causes[0].message.contains("service CIDR"));
        let status = ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(vec![LoadBalancerIngress {
                    ip: Some("10.96.0.1".into()),
                    ..Default::default()
                }]),
            }),
            ..Default::default()
        };
        let causes = check(&spec(&[]), Some(&status), None, &config);
        assert_eq!(fields(&causes), ["status.loadBalancer.ingress[0].ip"]);
    }

    #[test]
    fn deny_new_keeps_old_ones_and_allowed_cidrs_bound_the_rest() {
        let mut config = ClusterConfig::default();
        config.external_ips.deny_new = true;
        let old = spec(&["203.0.113.7"]);
        assert!(check(&spec(&["203.0.113.7"]), None, Some(&old), &config).is_empty());
        let causes = check(
            &spec(&["203.0.113.7", "203.0.113.8"]),
            None,
            Some(&old),
            &config,
        );
        assert_eq!(fields(&causes), ["spec.externalIPs[1]"]);
        assert!(causes[0].message.contains("disabled"));

        let mut config = ClusterConfig::default();
        config.external_ips.allowed = vec!["203.0.113.0/24".parse().expect("cidr")];
        assert!(check(&spec(&["203.0.113.9"]), None, None, &config).is_empty());
        let causes = check(&spec(&["198.51.100.1"]), None, None, &config);
        assert_eq!(fields(&causes), ["spec.externalIPs[0]"]);
    }
}
