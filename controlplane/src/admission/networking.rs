//! NetworkPolicy and EndpointSlice defaulting and validation.

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::meta;
use crate::error::Cause;

const PROTOCOLS: &[&str] = &["TCP", "UDP", "SCTP"];

fn check_ports(ports: &mut [NetworkPolicyPort], field: &str, causes: &mut Vec<Cause>) {
    for (i, p) in ports.iter_mut().enumerate() {
        let f = |x: &str| format!("{field}[{i}].{x}");
        let proto = p.protocol.get_or_insert_with(|| "TCP".into());
        if !PROTOCOLS.contains(&proto.as_str()) {
            causes.push(Cause::unsupported(f("protocol"), proto.clone(), PROTOCOLS));
        }
        match (&p.port, p.end_port) {
            (Some(IntOrString::Int(port)), end) => {
                if !(1..=65535).contains(port) {
                    causes.push(Cause::invalid(
                        f("port"),
                        port,
                        "must be between 1 and 65535, inclusive",
                    ));
                }
                if let Some(end) = end {
                    if !(1..=65535).contains(&end) {
                        causes.push(Cause::invalid(
                            f("endPort"),
                            end,
                            "must be between 1 and 65535, inclusive",
                        ));
                    } else if end < *port {
                        causes.push(Cause::invalid(
                            f("endPort"),
                            end,
                            "must be greater than or equal to `port`",
                        ));
                    }
                }
            }
            (Some(IntOrString::String(name)), end) => {
                if !meta::is_dns1123_label(name) || name.len() > 15 {
                    causes.push(Cause::invalid(f("port"), format!("\"{name}\""), "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-), at most 15 characters"));
                }
                if end.is_some() {
                    causes.push(Cause::invalid(
                        f("endPort"),
                        end.unwrap_or(0),
                        "may not be specified when `port` is non-numeric",
                    ));
                }
            }
            (None, Some(end)) => {
                causes.push(Cause::invalid(
                    f("endPort"),
                    end,
                    "may not be specified when `port` is not specified",
                ));
            }
            (None, None) => {}
        }
    }
}

fn check_peers(peers: &[NetworkPolicyPeer], field: &str, causes: &mut Vec<Cause>) {
    for (i, peer) in peers.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let selectors = usize::from(peer.pod_selector.is_some())
            + usize::from(peer.namespace_selector.is_some());
        match &peer.ip_block {
            Some(_) if selectors > 0 => causes.push(Cause::forbidden(
                f.clone(),
                "may not specify more than 1 peer type",
            )),
            None if selectors == 0 => causes.push(Cause::required(f.clone())),
            _ => {}
        }
        if let Some(block) = &peer.ip_block {
            match block.cidr.parse::<IpNet>() {
                Err(_) => causes.push(Cause::invalid(
                    format!("{f}.ipBlock.cidr"),
                    format!("\"{}\"", block.cidr),
                    "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
                )),
                Ok(cidr) => {
                    for (j, ex) in block.except.iter().flatten().enumerate() {
                        let field = format!("{f}.ipBlock.except[{j}]");
                        match ex.parse::<IpNet>() {
                            Err(_) => causes.push(Cause::invalid(
                                field,
                                format!("\"{ex}\""),
                                "must be a valid CIDR value",
                            )),
                            Ok(e) if !(cidr.contains(&e) && e.prefix_len() > cidr.prefix_len()) => {
                                causes.push(Cause::invalid(
                                    field,
                                    format!("\"{ex}\""),
                                    "must be a strict subset of `cidr`",
                                ));
                            }
                            Ok(_) => {}
                        }
                    }
                }
            }
        }
    }
}

/// Defaults policyTypes and port protocols; returns field errors.
pub fn admit_network_policy(np: &mut NetworkPolicy) -> Vec<Cause> {
    let mut causes = Vec::new();
    let spec = np.spec.get_or_insert_with(Default::default);
    for (i, rule) in spec.ingress.iter_mut().flatten().enumerate() {
        check_ports(
            rule.ports.as_deref_mut().unwrap_or_default(),
            &format!("spec.ingress[{i}].ports"),
            &mut causes,
        );
        check_peers(
            rule.from.as_deref().unwrap_or_default(),
            &format!("spec.ingress[{i}].from"),
            &mut causes,
        );
    }
    for (i, rule) in spec.egress.iter_mut().flatten().enumerate() {
        check_ports(
            rule.ports.as_deref_mut().unwrap_or_default(),
            &format!("spec.egress[{i}].ports"),
            &mut causes,
        );
        check_peers(
            rule.to.as_deref().unwrap_or_default(),
            &format!("spec.egress[{i}].to"),
            &mut causes,
        );
    }
    let types = spec.policy_types.get_or_insert_with(Vec::new);
    if types.is_empty() {
        types.push("Ingress".into());
        if spec.egress.as_ref().is_some_and(|e| !e.is_empty()) {
            types.push("Egress".into());
        }
    }
    if types.len() > 2 {
        causes.push(Cause::invalid(
            "spec.policyTypes",
            format!("{types:?}"),
            "may not specify more than two policyTypes",
        ));
    }
    for (i, t) in types.iter().enumerate() {
        if !matches!(t.as_str(), "Ingress" | "Egress") {
            causes.push(Cause::unsupported(
                format!("spec.policyTypes[{i}]"),
                t,
                &["Ingress", "Egress"],
            ));
        }
    }
    causes
}

/// Defaults port protocols; validates address types, addresses and ports.
pub fn admit_endpoint_slice(slice: &mut EndpointSlice) -> Vec<Cause> {
    let mut causes = Vec::new();
    let ty = slice.address_type.as_str();
    if !matches!(ty, "IPv4" | "IPv6" | "FQDN") {
        causes.push(Cause::unsupported(
            "addressType",
            ty,
            &["IPv4", "IPv6", "FQDN"],
        ));
    }
    if slice.endpoints.len() > 1000 {
        causes.push(Cause {
            reason: "FieldValueTooMany",
            field: "endpoints".into(),
            message: format!(
                "Too many: {}: must have at most 1000 items",
                slice.endpoints.len()
            ),
        });
    }
    for (i, ep) in slice.endpoints.iter().enumerate() {
        if ep.addresses.is_empty() || ep.addresses.len() > 100 {
            causes.push(Cause::invalid(
                format!("endpoints[{i}].addresses"),
                ep.addresses.len(),
                "must contain at least 1 and at most 100 addresses",
            ));
        }
        for (j, addr) in ep.addresses.iter().enumerate() {
            let ok = match ty {
                "IPv4" => addr.parse::<IpAddr>().is_ok_and(|a| a.is_ipv4()),
                "IPv6" => addr.parse::<IpAddr>().is_ok_and(|a| a.is_ipv6()),
                _ => meta::dns1123_subdomain(addr),
            };
            if !ok {
                causes.push(Cause::invalid(
                    format!("endpoints[{i}].addresses[{j}]"),
                    format!("\"{addr}\""),
                    &format!("must be a valid {ty} address"),
                ));
            }
        }
        if let Some(h) = &ep.hostname
            && !meta::is_dns1123_label(h)
        {
            causes.push(Cause::invalid(
                format!("endpoints[{i}].hostname"),
                format!("\"{h}\""),
                "must be a valid DNS label",
            ));
        }
    }
    for (i, p) in slice.ports.iter_mut().flatten().enumerate() {
        let proto = p.protocol.get_or_insert_with(|| "TCP".into());
        if !PROTOCOLS.contains(&proto.as_str()) {
            causes.push(Cause::unsupported(
                format!("ports[{i}].protocol"),
                proto.clone(),
                PROTOCOLS,
            ));
        }
        if let Some(name) = &p.name
            && !name.is_empty()
            && !meta::is_dns1123_label(name)
        {
            causes.push(Cause::invalid(
                format!("ports[{i}].name"),
                format!("\"{name}\""),
                "must be a valid DNS label",
            ));
        }
        if let Some(port) = p.port
            && !(0..=65535).contains(&port)
        {
            causes.push(Cause::invalid(
                format!("ports[{i}].port"),
                port,
                "must be between 0 and 65535, inclusive",
            ));
        }
    }
    causes
}
