//! What NetworkPolicy needs of the API's Namespaces, Pods and
//! NetworkPolicies, in compact forms converted once from the k8s-openapi
//! objects (none of which is kept): a namespace's name and labels; a pod's
//! place, labels, addresses and named container ports; a policy's selector,
//! isolated directions (with the API's `policyTypes` defaulting) and rules.
//!
//! Owns the conversion and its validation (what the API server's
//! `ValidateNetworkPolicy` rejects is rejected here too, with a typed error
//! naming the object and the field) and the per-policy input limits. Must
//! not decide verdicts or allocate identities ([`super::compile`] does).
//!
//! A policy that fails validation or exceeds a limit is not dropped: it is
//! kept *failed closed* ([`Policy::error`] set): it isolates the pods it
//! selects in the directions it names and allows nothing. When even its pod
//! selector is unreadable it selects every pod of its namespace.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::selector::{Labels, Selector, SelectorError};
use crate::service::model::Protocol;

/// The label the API server puts on every namespace (immutable, its name).
pub const LABEL_NAMESPACE_NAME: &str = "kubernetes.io/metadata.name";

/// Bounds on one NetworkPolicy (hostile or mistaken input). A policy over
/// one of them is kept failed closed and reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyLimits {
    /// Ingress plus egress rules.
    pub max_rules: usize,
    /// Peers over all rules.
    pub max_peers: usize,
    /// Port entries over all rules.
    pub max_ports: usize,
    /// ipBlock prefixes (each `cidr` and each `except`) over all rules.
    pub max_ip_block_prefixes: usize,
}

impl Default for PolicyLimits {
    fn default() -> Self {
        PolicyLimits {
            max_rules: 256,
            max_peers: 1024,
            max_ports: 256,
            max_ip_block_prefixes: 1024,
        }
    }
}

/// Which kind of object a [`ModelError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Namespace,
    Pod,
    NetworkPolicy,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::NetworkPolicy => "NetworkPolicy",
        })
    }
}

/// What is wrong with a field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("missing")]
    Missing,
    #[error(transparent)]
    Selector(#[from] SelectorError),
    #[error("invalid CIDR {0:?}")]
    InvalidCidr(String),
    #[error("{except} is not strictly inside {cidr}")]
    ExceptNotInside { cidr: IpNet, except: IpNet },
    #[error("invalid IP address {0:?}")]
    InvalidIp(String),
    #[error("unsupported protocol {0:?} (TCP, UDP or SCTP)")]
    InvalidProtocol(String),
    #[error("port {0} out of range 1-65535")]
    InvalidPort(i32),
    #[error("invalid port name {0:?}")]
    InvalidPortName(String),
    #[error("endPort needs a numbered port")]
    EndPortWithoutNumber,
    #[error("endPort {end} below port {port}")]
    EndPortBelowPort { port: u16, end: i32 },
    #[error("ipBlock together with a selector")]
    IpBlockWithSelector,
    #[error("unknown policy type {0:?} (Ingress or Egress)")]
    InvalidPolicyType(String),
    #[error("{count} {what}, more than the limit of {limit}")]
    TooMany {
        what: &'static str,
        count: usize,
        limit: usize,
    },
}

/// A conversion error: which object, which field, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {namespace}/{name}: {field}: {problem}")]
pub struct ModelError {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    /// The field's path, as the API server words it (`spec.ingress[0].from[1].ipBlock.cidr`).
    pub field: String,
    pub problem: Problem,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    /// Including [`LABEL_NAMESPACE_NAME`] (added when absent, as the API
    /// server does).
    pub labels: Labels,
}

impl Namespace {
    pub fn new(name: &str, labels: Labels) -> Self {
        let mut labels = labels;
        labels.insert(LABEL_NAMESPACE_NAME.to_string(), name.to_string());
        Namespace {
            name: name.to_string(),
            labels,
        }
    }

    pub fn from_api(ns: &core::Namespace) -> Result<Self, ModelError> {
        let name = ns.metadata.name.clone().unwrap_or_default();
        if name.is_empty() {
            return Err(ModelError {
                kind: Kind::Namespace,
                namespace: String::new(),
                name,
                field: "metadata.name".into(),
                problem: Problem::Missing,
            });
        }
        Ok(Namespace::new(
            &name,
            ns.metadata
                .labels
                .as_ref()
                .map(Labels::from)
                .unwrap_or_default(),
        ))
    }
}

/// A named container port (the only ports policy cares about: numbered
/// ones need no pod).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamedPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    /// `status.podIPs`, IPv4-mapped IPv6 written as IPv4; empty once the pod
    /// has finished (Succeeded or Failed: its addresses may be reused).
    pub ips: Vec<IpAddr>,
    pub node_name: String,
    pub host_network: bool,
    /// Sorted, without duplicates.
    pub named_ports: Vec<NamedPort>,
}

impl Pod {
    /// The numbers `name` resolves to for `protocol` on this pod.
    pub fn resolve<'a>(
        &'a self,
        name: &'a str,
        protocol: Protocol,
    ) -> impl Iterator<Item = u16> + 'a {
        resolve_named(&self.named_ports, name, protocol)
    }

    pub fn from_api(pod: &core::Pod) -> Result<Self, ModelError> {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let err = |field: String, problem: Problem| ModelError {
            kind: Kind::Pod,
            namespace: namespace.clone(),
            name: name.clone(),
            field,
            problem,
        };
        if namespace.is_empty() {
            return Err(err("metadata.namespace".into(), Problem::Missing));
        }
        if name.is_empty() {
            return Err(err("metadata.name".into(), Problem::Missing));
        }
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let finished = matches!(
            status.and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        );
        let mut ips = Vec::new();
        if !finished {
            let listed: Vec<(String, &str)> = match status.and_then(|s| s.pod_ips.as_ref()) {
                Some(list) if !list.is_empty() => list
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (format!("status.podIPs[{i}].ip"), p.ip.as_str()))
                    .collect(),
                _ => status
                    .and_then(|s| s.pod_ip.as_deref())
                    .filter(|ip| !ip.is_empty())
                    .map(|ip| vec![("status.podIP".to_string(), ip)])
                    .unwrap_or_default(),
            };
            for (field, ip) in listed {
                let addr: IpAddr = ip
                    .parse()
                    .map_err(|_| err(field, Problem::InvalidIp(ip.to_string())))?;
                let addr = addr.to_canonical();
                if !ips.contains(&addr) {
                    ips.push(addr);
                }
            }
        }
        let mut named_ports = Vec::new();
        for (ci, c) in spec
            .map(|s| s.containers.as_slice())
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            for (pi, p) in c.ports.iter().flatten().enumerate() {
                let Some(pname) = p.name.as_ref().filter(|n| !n.is_empty()) else {
                    continue;
                };
                let field = |f: &str| format!("spec.containers[{ci}].ports[{pi}].{f}");
                let protocol = Protocol::from_k8s(p.protocol.as_deref()).ok_or_else(|| {
                    err(
                        field("protocol"),
                        Problem::InvalidProtocol(p.protocol.clone().unwrap_or_default()),
                    )
                })?;
                let port = port_number(p.container_port).ok_or_else(|| {
                    err(
                        field("containerPort"),
                        Problem::InvalidPort(p.container_port),
                    )
                })?;
                named_ports.push(NamedPort {
                    name: pname.clone(),
                    protocol,
                    port,
                });
            }
        }
        named_ports.sort();
        named_ports.dedup();
        // Kept for every pod of the cluster: no spare capacity.
        named_ports.shrink_to_fit();
        ips.shrink_to_fit();
        Ok(Pod {
            labels: pod
                .metadata
                .labels
                .as_ref()
                .map(Labels::from)
                .unwrap_or_default(),
            ips,
            node_name: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            named_ports,
            namespace,
            name,
        })
    }
}

/// The numbers `name` resolves to for `protocol` among `ports`.
pub fn resolve_named<'a>(
    ports: &'a [NamedPort],
    name: &'a str,
    protocol: Protocol,
) -> impl Iterator<Item = u16> + 'a {
    ports
        .iter()
        .filter(move |p| p.name == name && p.protocol == protocol)
        .map(|p| p.port)
}

fn port_number(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|p| *p != 0)
}

/// An `ipBlock`: `cidr` minus its `except`s, all of one family, each except
/// strictly inside the cidr (host bits cleared).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpBlock {
    pub cidr: IpNet,
    pub except: Vec<IpNet>,
}

impl IpBlock {
    /// Whether `addr` is in the block (an address of the other family never is).
    pub fn contains(&self, addr: IpAddr) -> bool {
        self.cidr.contains(&addr) && !self.except.iter().any(|e| e.contains(&addr))
    }
}

/// A rule's peer (`from` / `to` entry).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    /// Pods: `namespaces` `None` is the policy's own namespace; `pods`
    /// `None` is every pod of the selected namespaces.
    Pods {
        namespaces: Option<Selector>,
        pods: Option<Selector>,
    },
    Block(IpBlock),
}

/// A rule's port entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortMatch {
    /// Every port of the protocol.
    Any,
    /// `port` to `end` inclusive (one port: `end == port`).
    Range(u16, u16),
    /// A named container port of the destination pod.
    Named(String),
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRule {
    pub protocol: Protocol,
    pub port: PortMatch,
}

/// One ingress or egress rule: traffic matching any peer (none: anyone) on
/// any port entry (none: every port of every protocol).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    pub peers: Vec<Peer>,
    pub ports: Vec<PortRule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    pub pod_selector: Selector,
    /// `policyTypes` after defaulting.
    pub isolates_ingress: bool,
    pub isolates_egress: bool,
    /// Empty when failed closed.
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
    /// Set when the policy is failed closed.
    pub error: Option<ModelError>,
}

impl Policy {
    /// The rules of a direction (`false`: ingress), empty when the policy
    /// does not isolate that direction (rules of a direction not in
    /// `policyTypes` are ignored, as the API says).
    pub fn rules(&self, egress: bool) -> &[Rule] {
        match (egress, self.isolates_ingress, self.isolates_egress) {
            (false, true, _) => &self.ingress,
            (true, _, true) => &self.egress,
            _ => &[],
        }
    }

    pub fn isolates(&self, egress: bool) -> bool {
        if egress {
            self.isolates_egress
        } else {
            self.isolates_ingress
        }
    }

    /// Converts a NetworkPolicy. `Err` only when the object has no
    /// namespace or name; any other problem gives a failed-closed policy
    /// carrying its error.
    pub fn from_api(np: &net::NetworkPolicy, limits: &PolicyLimits) -> Result<Self, ModelError> {
        let namespace = np.metadata.namespace.clone().unwrap_or_default();
        let name = np.metadata.name.clone().unwrap_or_default();
        let err = |field: String, problem: Problem| ModelError {
            kind: Kind::NetworkPolicy,
            namespace: namespace.clone(),
            name: name.clone(),
            field,
            problem,
        };
        if namespace.is_empty() {
            return Err(err("metadata.namespace".into(), Problem::Missing));
        }
        if name.is_empty() {
            return Err(err("metadata.name".into(), Problem::Missing));
        }
        let spec = np.spec.clone().unwrap_or_default();
        let has_egress = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
        let mut policy = Policy {
            namespace: namespace.clone(),
            name: name.clone(),
            pod_selector: Selector::everything(),
            isolates_ingress: true,
            isolates_egress: has_egress,
            ingress: Vec::new(),
            egress: Vec::new(),
            error: None,
        };
        // Types first: a failed-closed policy still needs them.
        match &spec.policy_types {
            Some(types) if !types.is_empty() => {
                policy.isolates_ingress = false;
                policy.isolates_egress = false;
                for (i, t) in types.iter().enumerate() {
                    match t.as_str() {
                        "Ingress" => policy.isolates_ingress = true,
                        "Egress" => policy.isolates_egress = true,
                        other => {
                            policy.isolates_ingress = true;
                            policy.isolates_egress = true;
                            policy.error = Some(err(
                                format!("spec.policyTypes[{i}]"),
                                Problem::InvalidPolicyType(other.to_string()),
                            ));
                            return Ok(policy);
                        }
                    }
                }
            }
            _ => {}
        }
        if let Some(sel) = &spec.pod_selector {
            match Selector::parse(sel) {
                Ok(s) => policy.pod_selector = s,
                Err(e) => {
                    policy.error = Some(err("spec.podSelector".into(), e.into()));
                    return Ok(policy);
                }
            }
        }
        let ingress_rules = spec.ingress.unwrap_or_default();
        let egress_rules = spec.egress.unwrap_or_default();
        let converted = convert_rules(
            ingress_rules
                .iter()
                .map(|r| (r.from.as_deref(), r.ports.as_deref())),
            egress_rules
                .iter()
                .map(|r| (r.to.as_deref(), r.ports.as_deref())),
            limits,
        );
        match converted {
            Ok((ingress, egress)) => {
                policy.ingress = ingress;
                policy.egress = egress;
            }
            Err((field, problem)) => policy.error = Some(err(field, problem)),
        }
        Ok(policy)
    }

    /// Fails the policy closed with `error` (keeps selector and types).
    pub fn fail_closed(&mut self, error: ModelError) {
        self.ingress.clear();
        self.egress.clear();
        self.error = Some(error);
    }
}

type RawRule<'a> = (
    Option<&'a [net::NetworkPolicyPeer]>,
    Option<&'a [net::NetworkPolicyPort]>,
);
type FieldError = (String, Problem);

fn convert_rules<'a>(
    ingress: impl ExactSizeIterator<Item = RawRule<'a>>,
    egress: impl ExactSizeIterator<Item = RawRule<'a>>,
    limits: &PolicyLimits,
) -> Result<(Vec<Rule>, Vec<Rule>), FieldError> {
    let rules = ingress.len() + egress.len();
    if rules > limits.max_rules {
        return Err((
            "spec".into(),
            Problem::TooMany {
                what: "rules",
                count: rules,
                limit: limits.max_rules,
            },
        ));
    }
    let mut counts = Counts::default();
    let mut out_in = Vec::new();
    for (i, (peers, ports)) in ingress.enumerate() {
        out_in.push(convert_rule(
            &format!("spec.ingress[{i}]"),
            "from",
            peers,
            ports,
            &mut counts,
            limits,
        )?);
    }
    let mut out_eg = Vec::new();
    for (i, (peers, ports)) in egress.enumerate() {
        out_eg.push(convert_rule(
            &format!("spec.egress[{i}]"),
            "to",
            peers,
            ports,
            &mut counts,
            limits,
        )?);
    }
    Ok((out_in, out_eg))
}

#[derive(Default)]
struct Counts {
    peers: usize,
    ports: usize,
    prefixes: usize,
}

fn too_many(field: &str, what: &'static str, count: usize, limit: usize) -> Result<(), FieldError> {
    if count > limit {
        Err((field.to_string(), Problem::TooMany { what, count, limit }))
    } else {
        Ok(())
    }
}

fn convert_rule(
    at: &str,
    peers_name: &str,
    peers: Option<&[net::NetworkPolicyPeer]>,
    ports: Option<&[net::NetworkPolicyPort]>,
    counts: &mut Counts,
    limits: &PolicyLimits,
) -> Result<Rule, FieldError> {
    let peers = peers.unwrap_or_default();
    let ports = ports.unwrap_or_default();
    counts.peers += peers.len();
    too_many(at, "peers", counts.peers, limits.max_peers)?;
    counts.ports += ports.len();
    too_many(at, "ports", counts.ports, limits.max_ports)?;
    let mut rule = Rule::default();
    for (i, p) in peers.iter().enumerate() {
        let field = format!("{at}.{peers_name}[{i}]");
        let peer = match (&p.ip_block, &p.namespace_selector, &p.pod_selector) {
            (Some(block), None, None) => {
                counts.prefixes += 1 + block.except.as_ref().map_or(0, Vec::len);
                too_many(
                    &field,
                    "ipBlock prefixes",
                    counts.prefixes,
                    limits.max_ip_block_prefixes,
                )?;
                Peer::Block(convert_block(&format!("{field}.ipBlock"), block)?)
            }
            (Some(_), _, _) => {
                return Err((field, Problem::IpBlockWithSelector));
            }
            (None, None, None) => return Err((field, Problem::Missing)),
            (None, ns, pods) => {
                let parse = |s: &Option<_>, f: &str| {
                    s.as_ref()
                        .map(Selector::parse)
                        .transpose()
                        .map_err(|e| (format!("{field}.{f}"), Problem::Selector(e)))
                };
                Peer::Pods {
                    namespaces: parse(ns, "namespaceSelector")?,
                    pods: parse(pods, "podSelector")?,
                }
            }
        };
        rule.peers.push(peer);
    }
    for (i, p) in ports.iter().enumerate() {
        let field = |f: &str| format!("{at}.ports[{i}]{f}");
        let protocol = Protocol::from_k8s(p.protocol.as_deref()).ok_or_else(|| {
            (
                field(".protocol"),
                Problem::InvalidProtocol(p.protocol.clone().unwrap_or_default()),
            )
        })?;
        let port = match (&p.port, p.end_port) {
            (None, None) => PortMatch::Any,
            (None, Some(_)) | (Some(IntOrString::String(_)), Some(_)) => {
                return Err((field(".endPort"), Problem::EndPortWithoutNumber));
            }
            (Some(IntOrString::Int(n)), end) => {
                let port = port_number(*n).ok_or((field(".port"), Problem::InvalidPort(*n)))?;
                let end = match end {
                    None => port,
                    Some(e) => {
                        let end =
                            port_number(e).ok_or((field(".endPort"), Problem::InvalidPort(e)))?;
                        if end < port {
                            return Err((
                                field(".endPort"),
                                Problem::EndPortBelowPort { port, end: e },
                            ));
                        }
                        end
                    }
                };
                PortMatch::Range(port, end)
            }
            (Some(IntOrString::String(s)), None) => {
                if !valid_port_name(s) {
                    return Err((field(".port"), Problem::InvalidPortName(s.clone())));
                }
                PortMatch::Named(s.clone())
            }
        };
        rule.ports.push(PortRule { protocol, port });
    }
    Ok(rule)
}

/// IANA_SVC_NAME as the API validates it: 1-15 lowercase letters, digits
/// and inner single hyphens, at least one letter.
fn valid_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

fn parse_cidr(field: String, s: &str) -> Result<IpNet, FieldError> {
    let net: IpNet = s
        .parse()
        .map_err(|_| (field.clone(), Problem::InvalidCidr(s.to_string())))?;
    // An IPv4-mapped IPv6 prefix stays IPv6: it matches IPv6 packets only,
    // and those never carry mapped addresses, so such a block matches
    // nothing (as it would with the API's families kept apart).
    Ok(net.trunc())
}

fn convert_block(at: &str, b: &net::IPBlock) -> Result<IpBlock, FieldError> {
    let cidr = parse_cidr(format!("{at}.cidr"), &b.cidr)?;
    let mut except = BTreeSet::new();
    for (i, e) in b.except.iter().flatten().enumerate() {
        let field = format!("{at}.except[{i}]");
        let e = parse_cidr(field.clone(), e)?;
        if !cidr.contains(&e) || e.prefix_len() <= cidr.prefix_len() {
            return Err((field, Problem::ExceptNotInside { cidr, except: e }));
        }
        except.insert(e);
    }
    Ok(IpBlock {
        cidr,
        except: except.into_iter().collect(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_keeps_no_spare_capacity() {
        // Kept for every pod of the cluster (10,000 and more): lists grown
        // by push would hold room for four of each.
        let pod: core::Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "x", "name": "a", "labels": {"app": "a"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [
                {"name": "http", "containerPort": 80},
                {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                {"containerPort": 9000}
            ]}]},
            "status": {"phase": "Running", "podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}]}
        }))
        .unwrap();
        let p = Pod::from_api(&pod).unwrap();
        assert_eq!(p.ips.len(), 2);
        assert_eq!(p.ips.capacity(), p.ips.len());
        assert_eq!(p.named_ports.len(), 2);
        assert_eq!(p.named_ports.capacity(), p.named_ports.len());
        assert_eq!(p.resolve("dns", Protocol::Udp).collect::<Vec<_>>(), [53]);
    }
}
