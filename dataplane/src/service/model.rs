//! The kube-proxy semantics of a Service: which frontends (cluster IPs,
//! external IPs, load-balancer ingress IPs) a Service port gets on this node,
//! and which backends each kind of frontend sends traffic to, from the
//! Service and the EndpointSlices labelled `kubernetes.io/service-name` with
//! its name (readiness, serving-terminating fallback, internal and external
//! traffic policy, session affinity).
//!
//! This is a pure translation: it owns the rules, not the state. It must not
//! touch BPF maps, the kernel or the Kubernetes API; callers hand it the
//! objects and program what it returns.
//!
//! Where kube-proxy itself is the reference (pkg/proxy: the service change
//! tracker, the EndpointSlice cache and `CategorizeEndpoints`), this module
//! follows it, without topology hints. Two differences are deliberate:
//! both IP families are handled in one pass (kube-proxy runs one proxier per
//! family), so backends of both families share one list; and a Service
//! without a cluster IP still gets its external-IP and load-balancer
//! frontends.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::core::v1::{Service, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The EndpointSlice label naming the Service a slice belongs to.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// A Service (and its slices) with this label, whatever its value, belongs to
/// another proxy.
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// Put on headless Services' slices by the EndpointSlice controller.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";

/// The label selector string to use for watching both Services and
/// EndpointSlices so the API server filters out what kube-proxy ignores.
pub const PROXIED_SELECTOR: &str =
    "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

/// Picks how a Service's traffic from outside the cluster chooses its
/// backend ([`LbAlgorithm`]), over the agent's `--lb-algorithm`.
pub const ANNOTATION_LB_ALGORITHM: &str = "ferry.dev/lb-algorithm";

/// How traffic from outside (NodePort, LoadBalancer, externalIPs) picks a
/// backend. In-cluster traffic is always balanced at random, as kube-proxy
/// does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum LbAlgorithm {
    /// Uniformly at random per new flow, as kube-proxy.
    Random,
    /// Maglev consistent hashing of the flow: every node given the same
    /// seed and table size picks the same backend, and a backend change
    /// moves few flows.
    Maglev,
}

impl LbAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Random => "random",
            Self::Maglev => "maglev",
        }
    }
}

/// `sessionAffinityConfig.clientIP.timeoutSeconds` when it is absent (the API
/// server's default: 3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT_SECS: u32 = 10_800;

/// A Service or EndpointSlice port protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The protocol of a Kubernetes `protocol` field: absent means TCP;
    /// `None` for anything but `TCP`, `UDP` and `SCTP` (case-sensitive, as
    /// the API server validates it).
    pub fn from_k8s(value: Option<&str>) -> Option<Self> {
        match value {
            None | Some("TCP") => Some(Self::Tcp),
            Some("UDP") => Some(Self::Udp),
            Some("SCTP") => Some(Self::Sctp),
            Some(_) => None,
        }
    }

    /// The Kubernetes spelling: `TCP`, `UDP` or `SCTP`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which Service field a frontend comes from, and so which backends it uses:
/// ClusterIp frontends use `cluster_backends`, the others `external_backends`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FrontendKind {
    /// `spec.clusterIPs` (or `spec.clusterIP`).
    ClusterIp,
    /// `spec.externalIPs`.
    ExternalIp,
    /// `status.loadBalancer.ingress[].ip` (VIP mode only).
    LoadBalancer,
    /// `spec.ports[].nodePort` at any of the node's addresses: the
    /// frontend's address is the family's unspecified address.
    NodePort,
}

/// One address:port:protocol the dataplane must translate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    pub addr: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub kind: FrontendKind,
}

/// One endpoint address and the port to send to (the matching EndpointSlice
/// port's number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    pub addr: IpAddr,
    pub port: u16,
    /// The endpoint runs on this node (its `nodeName` is ours), so packets
    /// translated to it need no source NAT for the reply to come back.
    pub local: bool,
}

/// `namespace/name:portname` identity of one service port (port name may be empty).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePortName {
    pub namespace: String,
    pub name: String,
    pub port: String,
}

impl fmt::Display for ServicePortName {
    /// `namespace/name:port`, or `namespace/name` for an unnamed port (as
    /// kube-proxy prints it).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        if !self.port.is_empty() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

/// Everything one service port needs on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePortEntries {
    pub id: ServicePortName,
    pub protocol: Protocol,
    /// ClusterIP frontends (one per cluster IP family) and ExternalIP / LB-ingress frontends.
    pub frontends: Vec<Frontend>,
    /// Backends for ClusterIP frontends (after internalTrafficPolicy), sorted, deduplicated, mixed families.
    pub cluster_backends: Vec<Backend>,
    /// Backends for ExternalIP/LoadBalancer/NodePort frontends (after externalTrafficPolicy), sorted, deduplicated.
    pub external_backends: Vec<Backend>,
    /// External traffic is dropped, not refused, when it has no backend:
    /// `externalTrafficPolicy: Local` on a node without a local endpoint
    /// of a Service that has endpoints elsewhere (kube-proxy's DROP).
    pub external_drop: bool,
    /// `spec.loadBalancerSourceRanges`: the clients that may reach the
    /// LoadBalancer frontends from outside (empty: any).
    pub source_ranges: Vec<ipnet::IpNet>,
    /// ClientIP affinity timeout in seconds, None when sessionAffinity is None.
    pub affinity_timeout: Option<u32>,
    /// The Service's [`ANNOTATION_LB_ALGORITHM`]; None: the agent's default
    /// (also when the annotation is unreadable: [`lb_algorithm`] says why).
    pub lb_algorithm: Option<LbAlgorithm>,
}

/// The algorithm `service`'s annotation asks for, if any.
pub fn lb_algorithm(service: &Service) -> Result<Option<LbAlgorithm>, ModelError> {
    let Some(value) = service
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_LB_ALGORITHM))
    else {
        return Ok(None);
    };
    match value.trim() {
        "random" => Ok(Some(LbAlgorithm::Random)),
        "maglev" => Ok(Some(LbAlgorithm::Maglev)),
        _ => Err(ModelError::BadLbAlgorithm {
            service: format!(
                "{}/{}",
                service.metadata.namespace.as_deref().unwrap_or_default(),
                service.metadata.name.as_deref().unwrap_or_default()
            ),
            value: value.clone(),
        }),
    }
}

/// A Service field this module cannot translate. Each names the Service
/// (`namespace/name`), the field and the offending value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModelError {
    #[error("service {service}: {field}: {value:?} is not an IP address")]
    BadIp {
        service: String,
        field: String,
        value: String,
    },
    #[error("service {service}: {field}: unsupported protocol {value:?} (want TCP, UDP or SCTP)")]
    BadProtocol {
        service: String,
        field: String,
        value: String,
    },
    #[error("service {service}: {field}: port {value} is not in 1-65535")]
    BadPort {
        service: String,
        field: String,
        value: i32,
    },
    #[error("service {service}: {field}: {value:?} is not a CIDR")]
    BadCidr {
        service: String,
        field: String,
        value: String,
    },
    #[error(
        "service {service}: annotation {ANNOTATION_LB_ALGORITHM}: {value:?} is neither \"random\" nor \"maglev\"; using the agent's --lb-algorithm"
    )]
    BadLbAlgorithm { service: String, value: String },
    #[error(
        "service {service}: spec.sessionAffinityConfig.clientIP.timeoutSeconds: {value} is not a positive number of seconds"
    )]
    BadAffinityTimeout { service: String, value: i32 },
}

/// Whether this proxy handles the Service at all (labels): not when it has
/// `service.kubernetes.io/service-proxy-name` (any value) or
/// `service.kubernetes.io/headless`.
pub fn is_proxied(service: &Service) -> bool {
    labels_proxied(&service.metadata)
}

/// The entries for every port of `service`, from `slices` (only those whose
/// `kubernetes.io/service-name` label names this service in the same namespace are used;
/// others are ignored), as seen from node `node_name`.
///
/// Empty for a Service this proxy does not handle: one [`is_proxied`] rejects,
/// `type: ExternalName`, headless (`clusterIP: None`), or without ports.
/// Ports come in spec order; frontends and backends are sorted and
/// deduplicated, so the result does not depend on the order of `slices`.
///
/// The same as converting each object to its compact form
/// ([`ServiceInfo::from_service`], [`SliceInfo::from_slice`]) and asking
/// [`ServiceInfo::entries`], which is what the proxy loop does.
pub fn service_entries(
    service: &Service,
    slices: &[&EndpointSlice],
    node_name: &str,
) -> Result<Vec<ServicePortEntries>, ModelError> {
    let info = ServiceInfo::from_service(service)?;
    let namespace = service.metadata.namespace.as_deref().unwrap_or_default();
    let name = service.metadata.name.as_deref().unwrap_or_default();
    let own: Vec<SliceInfo> = slices
        .iter()
        .filter(|s| slice_belongs_to(s, namespace, name))
        .map(|s| SliceInfo::from_slice(s, node_name))
        .collect();
    let refs: Vec<&SliceInfo> = own.iter().collect();
    Ok(info.entries(namespace, name, &refs))
}

/// One Service port as the model reads it, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PortInfo {
    /// `""` for an unnamed port.
    name: Box<str>,
    protocol: Protocol,
    port: u16,
    /// `spec.ports[].nodePort` of a NodePort or LoadBalancer Service.
    node_port: Option<u16>,
}

/// What the model needs of a Service, converted (and checked) once when it
/// arrives, so the proxy keeps this instead of the API object: its ports,
/// addresses, source ranges, traffic policies, affinity and algorithm.
/// About 150 bytes plus its addresses, where a Service object takes
/// kilobytes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceInfo {
    /// Empty for a Service this proxy does not handle (see
    /// [`service_entries`]): it gets no entries.
    ports: Box<[PortInfo]>,
    cluster_ips: Box<[IpAddr]>,
    external_ips: Box<[IpAddr]>,
    lb_ips: Box<[IpAddr]>,
    source_ranges: Box<[ipnet::IpNet]>,
    affinity_timeout: Option<u32>,
    lb_algorithm: Option<LbAlgorithm>,
    internal_local: bool,
    external_local: bool,
}

impl ServiceInfo {
    /// Converts a Service; the error names the first field that cannot be
    /// translated (the same one [`service_entries`] reports).
    pub fn from_service(service: &Service) -> Result<Self, ModelError> {
        if !is_proxied(service) {
            return Ok(Self::default());
        }
        let Some(spec) = service.spec.as_ref() else {
            return Ok(Self::default());
        };
        if spec.type_.as_deref() == Some("ExternalName") || is_headless(spec) {
            return Ok(Self::default());
        }
        let ports = spec.ports.as_deref().unwrap_or_default();
        if ports.is_empty() {
            return Ok(Self::default());
        }
        let namespace = service.metadata.namespace.as_deref().unwrap_or_default();
        let name = service.metadata.name.as_deref().unwrap_or_default();
        let svc = format!("{namespace}/{name}");

        let cluster_ips = cluster_ips(spec, &svc)?;
        let external_ips = spec
            .external_ips
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, ip)| parse_field_ip(ip, &svc, || format!("spec.externalIPs[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let lb_ips = load_balancer_ips(service, &svc)?;
        let affinity_timeout = affinity_timeout(spec, &svc)?;
        let lb_algorithm = lb_algorithm(service).ok().flatten();
        let source_ranges = spec
            .load_balancer_source_ranges
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, r)| {
                r.trim()
                    .parse::<ipnet::IpNet>()
                    .map(|n| n.trunc())
                    .map_err(|_| ModelError::BadCidr {
                        service: svc.clone(),
                        field: format!("spec.loadBalancerSourceRanges[{i}]"),
                        value: r.clone(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut infos = Vec::with_capacity(ports.len());
        for (i, sp) in ports.iter().enumerate() {
            let protocol = Protocol::from_k8s(sp.protocol.as_deref()).ok_or_else(|| {
                ModelError::BadProtocol {
                    service: svc.clone(),
                    field: format!("spec.ports[{i}].protocol"),
                    value: sp.protocol.clone().unwrap_or_default(),
                }
            })?;
            let port = u16::try_from(sp.port)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| ModelError::BadPort {
                    service: svc.clone(),
                    field: format!("spec.ports[{i}].port"),
                    value: sp.port,
                })?;
            // NodePort and LoadBalancer Services answer on their node port at
            // the node's addresses, in each of the Service's families.
            let node_port = match spec.type_.as_deref() {
                Some("NodePort" | "LoadBalancer") => sp.node_port.filter(|p| *p != 0),
                _ => None,
            };
            let node_port = node_port
                .map(|p| {
                    u16::try_from(p).map_err(|_| ModelError::BadPort {
                        service: svc.clone(),
                        field: format!("spec.ports[{i}].nodePort"),
                        value: p,
                    })
                })
                .transpose()?;
            infos.push(PortInfo {
                name: sp.name.as_deref().unwrap_or_default().into(),
                protocol,
                port,
                node_port,
            });
        }
        Ok(Self {
            ports: infos.into(),
            cluster_ips: cluster_ips.into(),
            external_ips: external_ips.into(),
            lb_ips: lb_ips.into(),
            source_ranges: source_ranges.into(),
            affinity_timeout,
            lb_algorithm,
            internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
            external_local: spec.external_traffic_policy.as_deref() == Some("Local"),
        })
    }

    /// The entries for every port of Service `namespace/name` from `slices`
    /// (all of them its own), in spec order (see [`service_entries`]).
    pub fn entries(
        &self,
        namespace: &str,
        name: &str,
        slices: &[&SliceInfo],
    ) -> Vec<ServicePortEntries> {
        let mut out = Vec::with_capacity(self.ports.len());
        for sp in self.ports.iter() {
            let (port, protocol) = (sp.port, sp.protocol);
            let frontend = |addr: IpAddr, kind| Frontend {
                addr,
                port,
                protocol,
                kind,
            };
            let node_port_frontends = sp.node_port.into_iter().flat_map(|np| {
                self.cluster_ips.iter().map(move |ip| Frontend {
                    addr: if ip.is_ipv4() {
                        IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
                    } else {
                        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
                    },
                    port: np,
                    protocol,
                    kind: FrontendKind::NodePort,
                })
            });
            let mut frontends: Vec<Frontend> = self
                .cluster_ips
                .iter()
                .map(|ip| frontend(*ip, FrontendKind::ClusterIp))
                .chain(
                    self.external_ips
                        .iter()
                        .map(|ip| frontend(*ip, FrontendKind::ExternalIp)),
                )
                .chain(
                    self.lb_ips
                        .iter()
                        .map(|ip| frontend(*ip, FrontendKind::LoadBalancer)),
                )
                .chain(node_port_frontends)
                .collect();
            // One frontend per address:port:protocol; the smallest kind wins
            // (ClusterIp over ExternalIp over LoadBalancer; the last two share
            // their backends, so nothing is lost between them).
            frontends.sort();
            frontends.dedup_by(|later, first| {
                later.addr == first.addr
                    && later.port == first.port
                    && later.protocol == first.protocol
            });

            let endpoints = port_endpoints(slices, &sp.name, protocol);
            out.push(ServicePortEntries {
                id: ServicePortName {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    port: sp.name.to_string(),
                },
                protocol,
                frontends,
                cluster_backends: usable_backends(&endpoints, self.internal_local),
                external_backends: usable_backends(&endpoints, self.external_local),
                external_drop: self.external_local
                    && usable_backends(&endpoints, true).is_empty()
                    && !usable_backends(&endpoints, false).is_empty(),
                affinity_timeout: self.affinity_timeout,
                source_ranges: self.source_ranges.to_vec(),
                lb_algorithm: self.lb_algorithm,
            });
        }
        out
    }
}

/// One EndpointSlice port the model can use: named as a Service port
/// (`""` unnamed), a known protocol, a number in 1-65535.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SlicePort {
    name: Box<str>,
    protocol: Protocol,
    port: u16,
}

/// One endpoint: its first address (the one kube-proxy uses) and what
/// backend selection needs (conditions, and whether it is on this node).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EndpointInfo {
    addr: IpAddr,
    state: EndpointState,
}

/// What the model needs of an EndpointSlice, converted once when it
/// arrives (for the node the agent runs on): its usable ports and
/// endpoints, about 24 bytes each, where the object takes hundreds a
/// endpoint. A slice the proxy must ignore (another proxy's, a headless
/// Service's, FQDN-typed) has neither.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SliceInfo {
    ports: Box<[SlicePort]>,
    endpoints: Box<[EndpointInfo]>,
}

impl SliceInfo {
    /// Converts a slice as seen from node `node_name`. Ports without a
    /// known protocol or a valid number, and endpoints whose first address
    /// does not parse, are left out (they program nothing).
    pub fn from_slice(slice: &EndpointSlice, node_name: &str) -> Self {
        if !labels_proxied(&slice.metadata) || slice.address_type == "FQDN" {
            return Self::default();
        }
        let ports: Vec<SlicePort> = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|sp| {
                Some(SlicePort {
                    name: sp.name.as_deref().unwrap_or_default().into(),
                    protocol: Protocol::from_k8s(sp.protocol.as_deref())?,
                    port: sp
                        .port
                        .and_then(|p| u16::try_from(p).ok())
                        .filter(|p| *p != 0)?,
                })
            })
            .collect();
        let endpoints: Vec<EndpointInfo> = if ports.is_empty() {
            Vec::new()
        } else {
            slice
                .endpoints
                .iter()
                .filter_map(|endpoint| {
                    // kube-proxy uses the first address only.
                    let first = endpoint.addresses.first()?;
                    let Some(addr) = parse_ip(first) else {
                        tracing::debug!(
                            slice = slice.metadata.name.as_deref().unwrap_or_default(),
                            address = first.as_str(),
                            "skipping endpoint with an unparsable address"
                        );
                        return None;
                    };
                    Some(EndpointInfo {
                        addr,
                        state: EndpointState::of(endpoint, node_name),
                    })
                })
                .collect()
        };
        Self {
            ports: ports.into(),
            endpoints: endpoints.into(),
        }
    }

    /// Endpoints the slice holds (for tests and gauges).
    pub fn endpoint_count(&self) -> usize {
        self.endpoints.len()
    }
}

/// Neither the service-proxy-name nor the headless label.
fn labels_proxied(meta: &ObjectMeta) -> bool {
    meta.labels.as_ref().is_none_or(|l| {
        !l.contains_key(LABEL_SERVICE_PROXY_NAME) && !l.contains_key(LABEL_HEADLESS)
    })
}

fn is_headless(spec: &ServiceSpec) -> bool {
    spec.cluster_ip.as_deref() == Some("None")
        || spec
            .cluster_ips
            .as_ref()
            .and_then(|ips| ips.first())
            .is_some_and(|ip| ip == "None")
}

/// `spec.clusterIPs` (or `spec.clusterIP` when that is empty), the first of
/// each family; empty when neither is set.
fn cluster_ips(spec: &ServiceSpec, svc: &str) -> Result<Vec<IpAddr>, ModelError> {
    let listed: Vec<(String, &str)> = match spec.cluster_ips.as_deref() {
        Some(ips) if !ips.is_empty() => ips
            .iter()
            .enumerate()
            .map(|(i, ip)| (format!("spec.clusterIPs[{i}]"), ip.as_str()))
            .collect(),
        _ => spec
            .cluster_ip
            .iter()
            .map(|ip| ("spec.clusterIP".to_owned(), ip.as_str()))
            .collect(),
    };
    let mut out: Vec<IpAddr> = Vec::new();
    for (field, value) in listed {
        if value.is_empty() {
            continue;
        }
        let ip = parse_field_ip(value, svc, || field)?;
        if !out.iter().any(|seen| seen.is_ipv4() == ip.is_ipv4()) {
            out.push(ip);
        }
    }
    Ok(out)
}

/// `status.loadBalancer.ingress[].ip` of VIP-mode ingresses (an absent
/// `ipMode` is VIP); hostname-only ingresses have nothing to program.
fn load_balancer_ips(service: &Service, svc: &str) -> Result<Vec<IpAddr>, ModelError> {
    let ingress = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    let mut out = Vec::new();
    for (i, ing) in ingress.into_iter().flatten().enumerate() {
        let Some(ip) = ing.ip.as_deref().filter(|ip| !ip.is_empty()) else {
            continue;
        };
        if ing.ip_mode.as_deref().is_some_and(|mode| mode != "VIP") {
            continue;
        }
        out.push(parse_field_ip(ip, svc, || {
            format!("status.loadBalancer.ingress[{i}].ip")
        })?);
    }
    Ok(out)
}

fn affinity_timeout(spec: &ServiceSpec, svc: &str) -> Result<Option<u32>, ModelError> {
    if spec.session_affinity.as_deref() != Some("ClientIP") {
        return Ok(None);
    }
    let configured = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds);
    match configured {
        None => Ok(Some(DEFAULT_AFFINITY_TIMEOUT_SECS)),
        Some(secs) => u32::try_from(secs)
            .ok()
            .filter(|s| *s > 0)
            .map(Some)
            .ok_or_else(|| ModelError::BadAffinityTimeout {
                service: svc.to_owned(),
                value: secs,
            }),
    }
}

/// A slice of Service `namespace/name` that this proxy reads: right label
/// and namespace, not excluded by the proxy labels, and not FQDN-typed.
fn slice_belongs_to(slice: &EndpointSlice, namespace: &str, name: &str) -> bool {
    let meta = &slice.metadata;
    meta.namespace.as_deref().unwrap_or_default() == namespace
        && meta
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_SERVICE_NAME))
            .is_some_and(|n| n == name)
        && labels_proxied(meta)
        && slice.address_type != "FQDN"
}

/// What backend selection needs to know about one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EndpointState {
    local: bool,
    ready: bool,
    serving: bool,
    terminating: bool,
}

impl EndpointState {
    fn of(endpoint: &Endpoint, node_name: &str) -> Self {
        let c = endpoint.conditions.as_ref();
        // As kube-proxy reads them (and as the v1 API documents them): an
        // absent `ready` or `serving` is true, an absent `terminating` false.
        let ready = c.and_then(|c| c.ready).unwrap_or(true);
        let serving = c.and_then(|c| c.serving).unwrap_or(true);
        let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
        Self {
            // kube-proxy: no node is local when the proxy has no node name.
            local: !node_name.is_empty() && endpoint.node_name.as_deref() == Some(node_name),
            ready,
            serving,
            terminating,
        }
    }

    fn serving_terminating(self) -> bool {
        self.serving && self.terminating
    }

    /// Which of two copies of one endpoint to keep: local first (as
    /// kube-proxy), then the more usable. Copies of equal rank select alike.
    fn rank(self) -> (bool, bool, bool) {
        (self.local, self.ready, self.serving_terminating())
    }
}

/// Every endpoint of `slices` for the service port `port_name`/`protocol`,
/// keyed (and so sorted and deduplicated) by backend address:port.
fn port_endpoints(
    slices: &[&SliceInfo],
    port_name: &str,
    protocol: Protocol,
) -> BTreeMap<Backend, EndpointState> {
    let mut out: BTreeMap<Backend, EndpointState> = BTreeMap::new();
    for slice in slices {
        for sp in slice.ports.iter() {
            if &*sp.name != port_name || sp.protocol != protocol {
                continue;
            }
            for e in slice.endpoints.iter() {
                let state = e.state;
                out.entry(Backend {
                    addr: e.addr,
                    port: sp.port,
                    local: false,
                })
                .and_modify(|kept| {
                    if state.rank() > kept.rank() {
                        *kept = state;
                    }
                })
                .or_insert(state);
            }
        }
    }
    out
}

/// kube-proxy's `CategorizeEndpoints` for one traffic policy, without
/// topology: the candidates are every endpoint, or only this node's when the
/// policy is Local; the ready candidates are used, else the serving and
/// terminating ones, else none (the dataplane rejects).
fn usable_backends(endpoints: &BTreeMap<Backend, EndpointState>, local_only: bool) -> Vec<Backend> {
    let pick = |want: fn(EndpointState) -> bool| -> Vec<Backend> {
        endpoints
            .iter()
            .filter(|(_, s)| (!local_only || s.local) && want(**s))
            .map(|(b, s)| Backend {
                local: s.local,
                ..*b
            })
            .collect()
    };
    let ready = pick(|s| s.ready);
    if ready.is_empty() {
        pick(EndpointState::serving_terminating)
    } else {
        ready
    }
}

/// An address as kube-proxy reads one (Go's sloppy parser): IPv4 octets may
/// have leading zeros (read as decimal), and an IPv4-mapped IPv6 address is
/// the IPv4 address.
fn parse_ip(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    let mut octets = [0u8; 4];
    let mut parts = s.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *octet = part.parse().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(IpAddr::V4(Ipv4Addr::from(octets)))
}

fn parse_field_ip(
    value: &str,
    svc: &str,
    field: impl FnOnce() -> String,
) -> Result<IpAddr, ModelError> {
    parse_ip(value).ok_or_else(|| ModelError::BadIp {
        service: svc.to_owned(),
        field: field(),
        value: value.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use std::net::SocketAddr;

    const NODE: &str = "node-a";

    fn service(v: Value) -> Service {
        serde_json::from_value(v).expect("service")
    }

    /// Service `default/web` with the given spec.
    fn web(spec: Value) -> Service {
        service(json!({"metadata": {"namespace": "default", "name": "web"}, "spec": spec}))
    }

    fn slice(v: Value) -> EndpointSlice {
        serde_json::from_value(v).expect("slice")
    }

    /// A slice of `default/web`.
    fn web_slice(name: &str, address_type: &str, ports: Value, endpoints: Value) -> EndpointSlice {
        slice(json!({
            "metadata": {
                "namespace": "default",
                "name": name,
                "labels": {LABEL_SERVICE_NAME: "web"}
            },
            "addressType": address_type,
            "ports": ports,
            "endpoints": endpoints
        }))
    }

    /// A ready endpoint on `node`.
    fn ep(addr: &str, node: &str) -> Value {
        json!({"addresses": [addr], "nodeName": node, "conditions": {"ready": true}})
    }

    fn ep_cond(addr: &str, node: &str, conditions: Value) -> Value {
        json!({"addresses": [addr], "nodeName": node, "conditions": conditions})
    }

    fn be(s: &str) -> Backend {
        let sa: SocketAddr = s.parse().expect("socket address");
        Backend {
            addr: sa.ip(),
            port: sa.port(),
            local: false,
        }
    }

    fn bes(list: &[&str]) -> Vec<Backend> {
        list.iter().map(|s| be(s)).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn fe(addr: &str, port: u16, protocol: Protocol, kind: FrontendKind) -> Frontend {
        Frontend {
            addr: ip(addr),
            port,
            protocol,
            kind,
        }
    }

    /// The entries with `local` cleared, so tests compare selections;
    /// `backends_know_whether_they_are_local` checks the flag itself.
    fn entries(svc: &Service, slices: &[EndpointSlice], node: &str) -> Vec<ServicePortEntries> {
        let refs: Vec<&EndpointSlice> = slices.iter().collect();
        let mut out = service_entries(svc, &refs, node).expect("entries");
        for e in &mut out {
            for b in e
                .cluster_backends
                .iter_mut()
                .chain(e.external_backends.iter_mut())
            {
                b.local = false;
            }
        }
        out
    }

    #[test]
    fn backends_know_whether_they_are_local() {
        let svc = web(json!({"clusterIP": "10.96.0.1", "ports": [{"port": 80}]}));
        let s = web_slice(
            "web-1",
            "IPv4",
            json!([{"port": 8080}]),
            json!([
                {"addresses": ["10.244.0.5"], "nodeName": NODE, "conditions": {"ready": true}},
                {"addresses": ["10.244.1.5"], "nodeName": "node-b", "conditions": {"ready": true}},
            ]),
        );
        let got = service_entries(&svc, &[&s], NODE).expect("entries");
        let local: Vec<(String, bool)> = got[0]
            .cluster_backends
            .iter()
            .map(|b| (b.addr.to_string(), b.local))
            .collect();
        assert_eq!(
            local,
            vec![
                ("10.244.0.5".to_owned(), true),
                ("10.244.1.5".to_owned(), false)
            ]
        );
    }

    fn only(mut list: Vec<ServicePortEntries>) -> ServicePortEntries {
        assert_eq!(list.len(), 1, "{list:?}");
        list.remove(0)
    }

    fn http_slice(name: &str, endpoints: Value) -> EndpointSlice {
        web_slice(
            name,
            "IPv4",
            json!([{"name": "http", "port": 8080, "protocol": "TCP"}]),
            endpoints,
        )
    }

    fn http_service(extra: Value) -> Service {
        let mut spec = json!({
            "type": "ClusterIP",
            "clusterIP": "10.96.0.10",
            "clusterIPs": ["10.96.0.10"],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]
        });
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                spec.insert(k.clone(), v.clone());
            }
        }
        web(spec)
    }

    #[test]
    fn cluster_ip_single_stack() {
        let svc = http_service(json!({}));
        let slices = [http_slice(
            "web-1",
            json!([ep("10.244.2.7", "node-b"), ep("10.244.1.5", NODE)]),
        )];
        let e = only(entries(&svc, &slices, NODE));
        assert_eq!(
            e.id,
            ServicePortName {
                namespace: "default".into(),
                name: "web".into(),
                port: "http".into()
            }
        );
        assert_eq!(e.protocol, Protocol::Tcp);
        assert_eq!(
            e.frontends,
            vec![fe("10.96.0.10", 80, Protocol::Tcp, FrontendKind::ClusterIp)]
        );
        assert_eq!(
            e.cluster_backends,
            bes(&["10.244.1.5:8080", "10.244.2.7:8080"])
        );
        assert_eq!(e.external_backends, e.cluster_backends);
        assert_eq!(e.affinity_timeout, None);
    }

    #[test]
    fn cluster_ip_field_used_without_cluster_ips() {
        let svc = web(json!({
            "clusterIP": "10.96.0.11",
            "ports": [{"port": 443}]
        }));
        let e = only(entries(&svc, &[], NODE));
        assert_eq!(
            e.frontends,
            vec![fe(
                "10.96.0.11",
                443,
                Protocol::Tcp,
                FrontendKind::ClusterIp
            )]
        );
        assert!(e.cluster_backends.is_empty());
    }

    #[test]
    fn cluster_ips_preferred_over_cluster_ip() {
        let svc = web(json!({
            "clusterIP": "10.96.0.1",
            "clusterIPs": ["10.96.0.2"],
            "ports": [{"port": 80}]
        }));
        let e = only(entries(&svc, &[], NODE));
        assert_eq!(
            e.frontends,
            vec![fe("10.96.0.2", 80, Protocol::Tcp, FrontendKind::ClusterIp)]
        );
    }

    #[test]
    fn dual_stack() {
        let svc = web(json!({
            "clusterIP": "fd00:96::10",
            "clusterIPs": ["fd00:96::10", "10.96.0.10"],
            "ipFamilies": ["IPv6", "IPv4"],
            "ipFamilyPolicy": "RequireDualStack",
            "ports": [{"name": "http", "port": 80}]
        }));
        let slices = [
            http_slice("web-v4", json!([ep("10.244.1.5", NODE)])),
            web_slice(
                "web-v6",
                "IPv6",
                json!([{"name": "http", "port": 8080}]),
                json!([ep("fd00:244:1::5", NODE)]),
            ),
        ];
        let e = only(entries(&svc, &slices, NODE));
        assert_eq!(
            e.frontends,
            vec![
                fe("10.96.0.10", 80, Protocol::Tcp, FrontendKind::ClusterIp),
                fe("fd00:96::10", 80, Protocol::Tcp, FrontendKind::ClusterIp),
            ]
        );
        assert_eq!(
            e.cluster_backends,
            bes(&["10.244.1.5:8080", "[fd00:244:1::5]:8080"])
        );
    }

    #[test]
    fn one_cluster_ip_per_family() {
        let svc = web(json!({
            "clusterIPs": ["10.96.0.10", "10.96.0.11"],
            "ports": [{"port": 80}]
        }));
        let e = only(entries(&svc, &[], NODE));
        assert_eq!(
            e.frontends,
            vec![fe("10.96.0.10", 80, Protocol::Tcp, FrontendKind::ClusterIp)]
        );
    }

    #[test]
    fn named_ports_map_to_their_slice_ports_in_spec_order() {
        let svc = web(json!({
            "clusterIP": "10.96.0.10",
            "ports": [
                {"name": "metrics", "port": 9090, "protocol": "TCP"},
                {"name": "http", "port": 80, "protocol": "TCP"}
            ]
        }));
        let slices = [web_slice(
            "web-1",
            "IPv4",
            json!([
                {"name": "http", "port": 8080, "protocol": "TCP"},
                {"name": "metrics", "port": 9100, "protocol": "TCP"}
            ]),
            json!([ep("10.244.1.5", NODE)]),
        )];
        let list = entries(&svc, &slices, NODE);
        let names: Vec<&str> = list.iter().map(|e| e.id.port.as_str()).collect();
        assert_eq!(names, ["metrics", "http"]);
        assert_eq!(list[0].frontends[0].port, 9090);
        assert_eq!(list[0].cluster_backends, bes(&["10.244.1.5:9100"]));
        assert_eq!(list[1].frontends[0].port, 80);
        assert_eq!(list[1].cluster_backends, bes(&["10.244.1.5:8080"]));
    }

    #[test]
    fn unnamed_port_matches_empty_or_absent_slice_port_name() {
        let svc = web(json!({"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}));
        let slices = [
            web_slice(
                "web-1",
                "IPv4",
                json!([{"name": "", "port": 8080}]),
                json!([ep("10.244.1.5", NODE)]),
            ),
            web_slice(
                "web-2",
                "IPv4",
                json!([{"port": 8080}]),
                json!([ep("10.244.1.6", NODE)]),
            ),
            web_slice(
                "web-3",
                "IPv4",
                json!([{"name": "http", "port": 8080}]),
                json!([ep("10.244.1.7", NODE)]),
            ),
        ];
        let e = only(entries(&svc, &slices, NODE));
        assert_eq!(e.id.port, "");
        assert_eq!(e.id.to_string(), "default/web");
        assert_eq!(
            e.cluster_backends,
            bes(&["10.244.1.5:8080", "10.244.1.6:8080"])
        );
    }

    #[test]
    fn named_port_does_not_match_unnamed_slice_port() {
        let svc = http_service(json!({}));
        let slices = [web_slice(
            "web-1",
            "IPv4",
            json!([{"port": 8080}]),
            json!([ep("10.244.1.5", NODE)]),
        )];
        let e = only(entries(&svc, &slices, NODE));
        assert!(e.cluster_backends.is_empty());
    }

    #[test]
    fn same_port_number_tcp_and_udp_kept_apart() {
        let svc = web(json!({
            "clusterIP": "10.96.0.10",
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP"}
            ]
        }));
        let slices = [web_slice(
            "web-1",
            "IPv4",
            json!([
                {"name": "dns-tcp", "port": 5354, "protocol": "TCP"},
                {"name": "dns", "port": 5353, "protocol": "UDP"}
            ]),
            json!([ep("10.244.1.5", NODE)]),
        )];
        let list = entries(&svc, &slices, NODE);
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].protocol, Protocol::Udp);
        assert_eq!(
            list[0].frontends,
            vec![fe("10.96.0.10", 53, Protocol::Udp, FrontendKind::ClusterIp)]
        );
        assert_eq!(list[0].cluster_backends, bes(&["10.244.1.5:5353"]));
        assert_eq!(list[1].protocol, Protocol::Tcp);
        assert_eq!(
            list[1].frontends,
            vec![fe("10.96.0.10", 53, Protocol::Tcp, FrontendKind::ClusterIp)]
        );
        assert_eq!(list[1].cluster_backends, bes(&["10.244.1.5:5354"]));
    }

    #[test]
    fn slice_port_of_other_protocol_does_not_match() {
        let svc = web(json!({
            "clusterIP": "10.96.0.10",
            "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]
        }));
        let slices = [web_slice(
            "web-1",
            "IPv4",
            json!([{"name": "dns", "port": 5353, "protocol": "TCP"}]),
            json!([ep("10.244.1.5", NODE)]),
        )];
        let e = only(entries(&svc, &slices, NODE));
        assert!(e.cluster_backends.is_empty());
    }

    #[test]
    fn absent_protocol_is_tcp_on_both_sides() {
        let svc = web(json!({"clusterIP": "10.96.0.10", "ports": [{"name": "p", "port": 80}]}));
        let slices = [
            web_slice(
                "web-1",
                "IPv4",
                json!([{"name": "p", "port": 8080}]),
                json!([ep("10.244.1.5", NODE)]),
            ),
            web_slice(
                "web-2",
                "IPv4",
                json!([{"name": "p", "port": 8080, "protocol": "UDP"}]),
                json!([ep("10.244.1.6", NODE)]),
            ),
        ];
        let e = only(entries(&svc, &slices, NODE));
        assert_eq!(e.protocol, Protocol::Tcp);
        assert_eq!(e.cluster_backends, bes(&["10.244.1.5:8080"]));
    }

    #[test]
    fn sctp_port() {
        let svc = web(json!({
            "clusterIP": "10.96.0.10",
            "ports": [{"port": 3868, "protocol": "SCTP"}]
        }));
        let slices = [web_slice(
            "web-1",
            "IPv4",
            json!([{"port": 3868, "protocol": "SCTP"}]),
            json!([ep("10.244.1.5", NODE)]),
        )];
        let e = only(entries(&svc, &slices, NODE));
        assert_eq!(e.protocol, Protocol::Sctp);
        assert_eq!(e.frontends[0].protocol, Protocol::Sctp);
        assert_eq!(e.cluster_backends, bes(&["10.244.1.5:3868"]));
    }

    #[test]
    fn only_ready_endpoints_when_any_are_ready() {
        let svc = http_service(json!({}));
        let slices = [http_slice(
            "web-1",
            json!([
                ep("10.244.1.5", NODE),
                ep_cond("10.244.1.6", NODE, json!({"ready": false, "serving": false})),
                ep_cond(
                    "10.244.1.7",
                    NODE,
                    json!({"ready": false, "serving": true, "terminating": true})
                ),
                // Absent conditions: ready.
                {"addresses": ["10.244.1.8"]},
                ep_cond("10.244.1.9", NODE, json!({})),
            ]),
        )];
        let e = only(entries(&svc, &slices, NODE));
        assert_eq!(
            e.cluster_backends,
            bes(&["10.244.1.5:8080", "10.244.1.8:8080", "10.244.1.9:8080"])
        );
    }

    #[test]
    fn serving_terminating_fallback_when_none_ready() {
        let svc = http_service(json!({}));
        let slices = [http_slice(
            "web-1",
            json!([
                ep_cond(
                    "10.244.1.7",
                    NODE,
                    json!({"ready": false, "serving": true, "terminating": true})
                ),
                ep_cond(
                    "10.244.2.7",
                    "node-b",
                    json!({"ready": false, "serving": true, "terminating": true})
                ),
                // Terminating but no longer serving.
                ep_cond(
                    "10.244.1.8",
                    NODE,
                    json!({"ready": false, "serving": false, "terminating": true})
                ),
                // Serving but not terminating (not ready for another reason).
                ep_cond(
                    "10.244.1.9",
                    NODE,
                    json!({"ready": false, "serving": true, "terminating": false})
                ),
            ]),
        )];
        let e = only(entries(&svc, &slices, NODE));
        assert_eq!(
            e.cluster_backends,
            bes(&["10.244.1.7:8080", "10.244.2.7:8080"])
        );
        assert_eq!(e.external_backends, e.cluster_backends);
    }

    #[test]
    fn absent_serving_counts_as_serving() {
        let svc = http_service(json!({}));
        let slices = [http_slice(
            "web-1",
            json!([ep_cond(
                "10.244.1.7",
                NODE,
                json!({"ready": false, "terminating": true})
            )]),
        )];
        let e = only(entries(&svc, &slices, NODE));
        assert_eq!(e.cluster_backends, bes(&["10.244.1.7:8080"]));
    }

    #[test]
    fn no_usable_endpoints_gives_no_backends() {
        let svc = http_service(json!({}));
        let slices = [http_slice(
            "web-1",
            json!([
                ep_cond("10.244.1.5", NODE, json!({"ready": false})),
                ep_cond(
                    "10.244.1.6",
                    NODE,
                    json!({"ready": false, "serving": false, "terminating": true})
                ),
            ]),
        )];
        let e = only(entries(&svc, &slices, NODE));
        assert!(e.cluster_backends.is_empty());
        assert!(e.external_backends.is_empty());
        assert_eq!(e.frontends.len(), 1);
    }

    #[test]
    fn internal_traffic_policy_local_with_local_endpoints() {
        let svc = http_service(json!({
            "internalTrafficPolicy": "Local",
            "externalIPs": ["192.0.2.10"]
        }));
        let slices = [http_slice(
            "web-1",
            json!([
                ep("10.244.1.5", NODE),
                ep("10.244.2.5", "node-b"),
                ep("10.244.1.6", NODE)
            ]),
        )];
        let e = only(entries(&svc, &slices, NODE));
        assert_eq!(
            e.cluster_backends,
            bes(&["10.244.1.5:8080", "10.244.1.6:8080"])
        );
        // External traffic policy is Cluster: every ready endpoint.
        assert_eq!(
            e.external_backends,
            bes(&["10.244.1.5:8080", "10.244.1.6:8080", "10.244.2.5:8080"])
        );
    }

    #[test]
    fn internal_traffic_policy_local_without_local_endpoints() {
        let svc = http_service(json!({"internalTrafficPolicy": "Local"}));
        let slices = [http_slice(
            "web-1",
            json!([ep("10.244.2.5", "node-b"), {"addresses": ["10.244.3.5"]}]),
        )];
        let e = only(entries(&svc, &slices, NODE));
        assert!(e.cluster_backends.is_empty());
        assert_eq!(
            e.external_backends,
            bes(&["10.244.2.5:8080", "10.244.3.5:8080"])
        );
    }

    #[test]
    fn internal_traffic_policy_local_falls_back_to_local_terminating() {
        let svc = http_service(json!({"internalTrafficPolicy": "Local"}));
        let slices = [http_slice(
            "web-1",
            json!([
                ep("10.244.2.5", "node-b"),
                ep_cond(
                    "10.244.1.5",
                    NODE,
                    json!({"ready": false, "serving": true, "terminating": true})
                ),
            ]),
        )];
        let e = only(entries(&svc, &slices, NODE));
        assert_eq!(e.cluster_backends, bes(&["10.244.1.5:8080"]));
        assert_eq!(e.external_backends, bes(&["10.244.2.5:8080"]));
    }

    #[test]
    fn internal_traffic_policy_cluster_uses_all() {
        let svc = http_service(json!({"internalTrafficPolicy": "Cluster"}));
        let slices = [http_slice(
            "web-1",
            json!([ep("10.244.2.5", "node-b"), ep("10.244.1.5", NODE)]),
        )];
        let e = only(entries(&svc, &slices, NODE));
        assert_eq!(
            e.cluster_backends,
            bes(&["10.244.1.5:8080", "10.244.2.5:8080"])
        );
    }

    #[test]
    fn empty_node_name_has_no_local_endpoints() {
        let svc = http_service(json!({"internalTrafficPolicy": "Local"}));
        let slices = [http_slice(
            "web-1",
            json!([{"addresses": ["10.244.1.5"], "nodeName": "", "conditions": {"ready": true}}]),
        )];
        let e = only(entries(&svc, &slices, ""));
        assert!(e.cluster_backends.is_empty());
    }

    #[test]
    fn external_traffic_policy_local_for_external_ips() {
        let svc = http_service(json!({
            "type": "LoadBalancer",
            "externalIPs": ["192.0.2.10"],
            "externalTrafficPolicy": "Local"
        }));
        let slices = [http_slice(
            "web-1",
            json!([ep("10.244.1.5", NODE), ep("10.244.2.5", "node-b")]),
        )];
        let e = only(entries(&svc, &slices, NODE));
        assert_eq!(
            e.frontends,
            vec![
                fe("10.96.0.10", 80, Protocol::Tcp, FrontendKind::ClusterIp),
                fe("192.0.2.10", 80, Protocol::Tcp, FrontendKind::ExternalIp),
            ]
        );
        assert_eq!(e.external_backends, bes(&["10.244.1.5:8080"]));
        assert_eq!(
            e.cluster_backends,
            bes(&["10.244.1.5:8080", "10.244.2.5:8080"])
        );
    }

    #[test]
    fn external_traffic_policy_local_without_local_endpoints() {
        let svc = http_service(json!({
            "externalIPs": ["192.0.2.10"],
            "externalTrafficPolicy": "Local"
        }));
        let slices = [http_slice("web-1", json!([ep("10.244.2.5", "node-b")]))];
        let e = only(entries(&svc, &slices, NODE));
        assert!(e.external_backends.is_empty());
        assert_eq!(e.cluster_backends, bes(&["10.244.2.5:8080"]));
    }

    #[test]
    fn node_ports_answer_in_each_family_of_the_service() {
        let svc = service(json!({
            "metadata": {"namespace": "default", "name": "web"},
            "spec": {
                "type": "NodePort",
                "clusterIPs": ["10.96.0.10", "fd00::10"],
                "ports": [{"name": "http", "port": 80, "nodePort": 30080}]
            }
        }));
        let slices = [http_slice("web-1", json!([ep("10.244.1.5", NODE)]))];
        let e = only(entries(&svc, &slices, NODE));
        assert_eq!(
            e.frontends,
            // Sorted by address.
            vec![
                fe("0.0.0.0", 30080, Protocol::Tcp, FrontendKind::NodePort),
                fe("10.96.0.10", 80, Protocol::Tcp, FrontendKind::ClusterIp),
                fe("::", 30080, Protocol::Tcp, FrontendKind::NodePort),
                fe("fd00::10", 80, Protocol::Tcp, FrontendKind::ClusterIp),
            ]
        );
        // A ClusterIP Service has no node port, whatever its spec says.
        let svc = service(json!({
            "metadata": {"namespace": "default", "name": "web"},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}
        }));
        let e = only(entries(&svc, &slices, NODE));
        assert!(e.frontends.iter().all(|f| f.kind != FrontendKind::NodePort));
    }

    #[test]
    fn local_policy_drops_only_when_endpoints_are_elsewhere() {
        let svc = http_service(json!({"type": "NodePort", "externalTrafficPolicy": "Local"}));
        let elsewhere = [http_slice("web-1", json!([ep("10.244.2.5", "node-b")]))];
        assert!(only(entries(&svc, &elsewhere, NODE)).external_drop);
        let here = [http_slice("web-1", json!([ep("10.244.1.5", NODE)]))];
        assert!(!only(entries(&svc, &here, NODE)).external_drop);
        // No endpoints at all: refused, as for any Service.
        let none = [http_slice("web-1", json!([]))];
        assert!(!only(entries(&svc, &none, NODE)).external_drop);
        let cluster = http_service(json!({"type": "NodePort"}));
        assert!(!only(entries(&cluster, &elsewhere, NODE)).external_drop);
    }

    #[test]
    fn external_traffic_policy_local_falls_back_to_local_terminating() {
        let svc = http_service(json!({
            "externalIPs": ["192.0.2.10"],
            "externalTrafficPolicy": "Local"
        }));
        let slices = [http_slice(
            "web-1",
            json!([
                ep("10.244.2.5", "node-b"),
                ep_cond(
                    "10.244.1.5",
                    NODE,
                    json!({"ready": false, "serving": true, "terminating": true})
                ),
                ep_cond(
                    "10.244.1.6",
                    NODE,
                    json!({"ready": false, "serving": false, "terminating": true})
                ),
            ]),
        )];
        let e = only(entries(&svc, &slices, NODE));
        // Remote ready endpoints exist, yet Local uses the local terminating one.
        assert_eq!(e.external_backends, bes(&["10.244.1.5:8080"]));
        assert_eq!(e.cluster_backends, bes(&["10.244.2.5:8080"]));
    }

    #[test]
    fn external_traffic_policy_cluster_uses_all() {
        let svc = http_service(json!({
            "externalIPs": ["192.0.2.10"],
            "externalTrafficPolicy": "Cluster"
        }));
        let slices = [http_slice(
            "web-1",
            json!([ep("10.244.1.5", NODE), ep("10.244.2.5", "node-b")]),
        )];
        let e = only(entries(&svc, &slices, NODE));
        assert_eq!(
            e.external_backends,
            bes(&["10.244.1.5:8080", "10.244.2.5:8080"])
        );
    }

    #[test]
    fn load_balancer_ingress_frontends() {
        let svc = service(json!({
            "metadata": {"namespace": "default", "name": "web"},
            "spec": {
                "type": "LoadBalancer",
                "clusterIP": "10.96.0.10",
                "ports": [{"name": "http", "port": 80}],
                "externalTrafficPolicy": "Local"
            },
            "status": {"loadBalancer": {"ingress": [
                {"ip": "203.0.113.5"},
                {"hostname": "lb.example.com"},
                {"ip": "203.0.113.6", "ipMode": "Proxy"},
                {"ip": "2001:db8::5", "ipMode": "VIP"}
            ]}}
        }));
        let slices = [http_slice(
            "web-1",
            json!([ep("10.244.1.5", NODE), ep("10.244.2.5", "node-b")]),
        )];
        let e = only(entries(&svc, &slices, NODE));
        assert_eq!(
            e.frontends,
            vec![
                fe("10.96.0.10", 80, Protocol::Tcp, FrontendKind::ClusterIp),
                fe("203.0.113.5", 80, Protocol::Tcp, FrontendKind::LoadBalancer),
                fe("2001:db8::5", 80, Protocol::Tcp, FrontendKind::LoadBalancer),
            ]
        );
        assert_eq!(e.external_backends, bes(&["10.244.1.5:8080"]));
    }

    #[test]
    fn frontends_sorted_and_deduplicated() {
        let svc = service(json!({
            "metadata": {"namespace": "default", "name": "web"},
            "spec": {
                "clusterIP": "10.96.0.10",
                "externalIPs": ["198.51.100.9", "192.0.2.10", "198.51.100.9"],
                "ports": [{"port": 80}]
            },
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}, {"ip": "192.0.2.1"}]}}
        }));
        let e = only(entries(&svc, &[], NODE));
        assert_eq!(
            e.frontends,
            vec![
                fe("10.96.0.10", 80, Protocol::Tcp, FrontendKind::ClusterIp),
                fe("192.0.2.1", 80, Protocol::Tcp, FrontendKind::LoadBalancer),
                fe("192.0.2.10", 80, Protocol::Tcp, FrontendKind::ExternalIp),
                fe("198.51.100.9", 80, Protocol::Tcp, FrontendKind::ExternalIp),
            ]
        );
    }

    #[test]
    fn missing_cluster_ip_keeps_external_ips() {
        let svc = web(json!({
            "externalIPs": ["192.0.2.10"],
            "ports": [{"name": "http", "port": 80}]
        }));
        let slices = [http_slice("web-1", json!([ep("10.244.1.5", NODE)]))];
        let e = only(entries(&svc, &slices, NODE));
        assert_eq!(
            e.frontends,
            vec![fe(
                "192.0.2.10",
                80,
                Protocol::Tcp,
                FrontendKind::ExternalIp
            )]
        );
        assert_eq!(e.external_backends, bes(&["10.244.1.5:8080"]));

        let empty = web(json!({"clusterIP": "", "clusterIPs": [], "ports": [{"port": 80}]}));
        let e = only(entries(&empty, &[], NODE));
        assert!(e.frontends.is_empty());
    }

    #[test]
    fn session_affinity() {
        let default = http_service(json!({"sessionAffinity": "ClientIP"}));
        assert_eq!(
            only(entries(&default, &[], NODE)).affinity_timeout,
            Some(DEFAULT_AFFINITY_TIMEOUT_SECS)
        );
        assert_eq!(DEFAULT_AFFINITY_TIMEOUT_SECS, 10800);

        let explicit = http_service(json!({
            "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}
        }));
        assert_eq!(
            only(entries(&explicit, &[], NODE)).affinity_timeout,
            Some(60)
        );

        let none = http_service(json!({
            "sessionAffinity": "None",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}
        }));
        assert_eq!(only(entries(&none, &[], NODE)).affinity_timeout, None);
    }

    #[test]
    fn bad_affinity_timeout_is_an_error() {
        let svc = http_service(json!({
            "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}
        }));
        let err = service_entries(&svc, &[], NODE).expect_err("zero timeout");
        assert_eq!(
            err,
            ModelError::BadAffinityTimeout {
                service: "default/web".into(),
                value: 0
            }
        );
    }

    #[test]
    fn affinity_applies_to_every_port() {
        let svc = web(json!({
            "clusterIP": "10.96.0.10",
            "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 30}},
            "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 81}]
        }));
        let list = entries(&svc, &[], NODE);
        assert_eq!(list.len(), 2);
        assert!(list.iter().all(|e| e.affinity_timeout == Some(30)));
    }

    #[test]
    fn external_name_has_no_entries() {
        let svc = web(json!({
            "type": "ExternalName",
            "externalName": "example.com",
            "clusterIP": "10.96.0.10",
            "ports": [{"port": 80}]
        }));
        let slices = [http_slice("web-1", json!([ep("10.244.1.5", NODE)]))];
        assert!(entries(&svc, &slices, NODE).is_empty());
        assert!(is_proxied(&svc));
    }

    #[test]
    fn headless_has_no_entries() {
        let svc = web(json!({
            "clusterIP": "None",
            "clusterIPs": ["None"],
            "externalIPs": ["192.0.2.10"],
            "ports": [{"name": "http", "port": 80}]
        }));
        let slices = [http_slice("web-1", json!([ep("10.244.1.5", NODE)]))];
        assert!(entries(&svc, &slices, NODE).is_empty());

        let only_ips = web(json!({"clusterIPs": ["None"], "ports": [{"port": 80}]}));
        assert!(entries(&only_ips, &[], NODE).is_empty());
    }

    #[test]
    fn service_proxy_name_label_excludes() {
        let svc = service(json!({
            "metadata": {
                "namespace": "default",
                "name": "web",
                "labels": {LABEL_SERVICE_PROXY_NAME: "other-proxy"}
            },
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}]}
        }));
        assert!(!is_proxied(&svc));
        let slices = [http_slice("web-1", json!([ep("10.244.1.5", NODE)]))];
        assert!(entries(&svc, &slices, NODE).is_empty());

        let empty_value = service(json!({
            "metadata": {"namespace": "default", "name": "web", "labels": {LABEL_SERVICE_PROXY_NAME: ""}},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}
        }));
        assert!(!is_proxied(&empty_value));
    }

    #[test]
    fn headless_label_excludes() {
        let svc = service(json!({
            "metadata": {"namespace": "default", "name": "web", "labels": {LABEL_HEADLESS: ""}},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}
        }));
        assert!(!is_proxied(&svc));
        assert!(entries(&svc, &[], NODE).is_empty());
    }

    #[test]
    fn other_labels_are_proxied() {
        let svc = service(json!({
            "metadata": {"namespace": "default", "name": "web", "labels": {"app": "web"}},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}
        }));
        assert!(is_proxied(&svc));
        assert!(is_proxied(&http_service(json!({}))));
        assert_eq!(entries(&svc, &[], NODE).len(), 1);
    }

    #[test]
    fn proxied_selector_names_both_labels() {
        assert_eq!(
            PROXIED_SELECTOR,
            format!("!{LABEL_SERVICE_PROXY_NAME},!{LABEL_HEADLESS}")
        );
    }

    #[test]
    fn slices_of_other_services_ignored() {
        let svc = http_service(json!({}));
        let ports = json!([{"name": "http", "port": 8080}]);
        let endpoints = |addr: &str| json!([ep(addr, NODE)]);
        let slices = [
            http_slice("web-1", endpoints("10.244.1.5")),
            // Another service in the same namespace.
            slice(json!({
                "metadata": {"namespace": "default", "name": "api-1", "labels": {LABEL_SERVICE_NAME: "api"}},
                "addressType": "IPv4", "ports": ports, "endpoints": endpoints("10.244.1.6")
            })),
            // Same service name, other namespace.
            slice(json!({
                "metadata": {"namespace": "prod", "name": "web-1", "labels": {LABEL_SERVICE_NAME: "web"}},
                "addressType": "IPv4", "ports": ports, "endpoints": endpoints("10.244.1.7")
            })),
            // No service-name label at all.
            slice(json!({
                "metadata": {"namespace": "default", "name": "web-x"},
                "addressType": "IPv4", "ports": ports, "endpoints": endpoints("10.244.1.8")
            })),
            // Belongs to another proxy.
            slice(json!({
                "metadata": {"namespace": "default", "name": "web-y", "labels": {
                    LABEL_SERVICE_NAME: "web", LABEL_SERVICE_PROXY_NAME: "other"
                }},
                "addressType": "IPv4", "ports": ports, "endpoints": endpoints("10.244.1.9")
            })),
        ];
        let e = only(entries(&svc, &slices, NODE));
        assert_eq!(e.cluster_backends, bes(&["10.244.1.5:8080"]));
    }

    #[test]
    fn fqdn_slices_ignored() {
        let svc = http_service(json!({}));
        let slices = [
            web_slice(
                "web-fqdn",
                "FQDN",
                json!([{"name": "http", "port": 8080}]),
                json!([ep("10.244.1.6", NODE), ep("example.com", NODE)]),
            ),
            http_slice("web-1", json!([ep("10.244.1.5", NODE)])),
        ];
        let e = only(entries(&svc, &slices, NODE));
        assert_eq!(e.cluster_backends, bes(&["10.244.1.5:8080"]));
    }

    #[test]
    fn duplicates_across_slices_collapse() {
        let svc = http_service(json!({}));
        let slices = [
            http_slice(
                "web-1",
                json!([ep("10.244.1.5", NODE), ep("10.244.2.5", "node-b")]),
            ),
            http_slice(
                "web-2",
                json!([ep("10.244.1.5", NODE), ep("10.244.3.5", "node-c")]),
            ),
        ];
        let e = only(entries(&svc, &slices, NODE));
        assert_eq!(
            e.cluster_backends,
            bes(&["10.244.1.5:8080", "10.244.2.5:8080", "10.244.3.5:8080"])
        );
    }

    #[test]
    fn duplicate_with_different_conditions_is_order_independent() {
        let svc = http_service(json!({"internalTrafficPolicy": "Local"}));
        // The endpoint moved between slices: stale copy not ready and remote,
        // fresh copy ready and local.
        let stale = http_slice(
            "web-1",
            json!([ep_cond("10.244.1.5", "node-b", json!({"ready": false}))]),
        );
        let fresh = http_slice("web-2", json!([ep("10.244.1.5", NODE)]));
        let forward = entries(&svc, &[stale.clone(), fresh.clone()], NODE);
        let backward = entries(&svc, &[fresh, stale], NODE);
        assert_eq!(forward, backward);
        assert_eq!(only(forward).cluster_backends, bes(&["10.244.1.5:8080"]));
    }

    #[test]
    fn same_address_on_different_ports_is_not_a_duplicate() {
        let svc = http_service(json!({}));
        let slices = [
            http_slice("web-1", json!([ep("10.244.1.5", NODE)])),
            web_slice(
                "web-2",
                "IPv4",
                json!([{"name": "http", "port": 8081}]),
                json!([ep("10.244.1.5", NODE)]),
            ),
        ];
        let e = only(entries(&svc, &slices, NODE));
        assert_eq!(
            e.cluster_backends,
            bes(&["10.244.1.5:8080", "10.244.1.5:8081"])
        );
    }

    #[test]
    fn output_does_not_depend_on_slice_order() {
        let svc = http_service(json!({"externalIPs": ["192.0.2.10"]}));
        let a = http_slice(
            "web-1",
            json!([ep("10.244.3.5", "node-c"), ep("10.244.1.5", NODE)]),
        );
        let b = http_slice("web-2", json!([ep("10.244.2.5", "node-b")]));
        assert_eq!(
            entries(&svc, &[a.clone(), b.clone()], NODE),
            entries(&svc, &[b, a], NODE)
        );
    }

    #[test]
    fn only_first_address_used() {
        let svc = http_service(json!({}));
        let slices = [http_slice(
            "web-1",
            json!([
                {"addresses": ["10.244.1.5", "10.244.1.99"], "conditions": {"ready": true}},
                {"addresses": [], "conditions": {"ready": true}}
            ]),
        )];
        let e = only(entries(&svc, &slices, NODE));
        assert_eq!(e.cluster_backends, bes(&["10.244.1.5:8080"]));
    }

    #[test]
    fn slice_ports_without_number_skipped() {
        let svc = http_service(json!({}));
        let slices = [
            web_slice(
                "web-1",
                "IPv4",
                json!([{"name": "http"}]),
                json!([ep("10.244.1.5", NODE)]),
            ),
            web_slice(
                "web-2",
                "IPv4",
                json!([{"name": "http", "port": 0}]),
                json!([ep("10.244.1.6", NODE)]),
            ),
            web_slice(
                "web-3",
                "IPv4",
                json!(null),
                json!([ep("10.244.1.7", NODE)]),
            ),
            http_slice("web-4", json!([ep("10.244.1.8", NODE)])),
        ];
        let e = only(entries(&svc, &slices, NODE));
        assert_eq!(e.cluster_backends, bes(&["10.244.1.8:8080"]));
    }

    #[test]
    fn unparsable_endpoint_address_skipped() {
        let svc = http_service(json!({}));
        let slices = [http_slice(
            "web-1",
            json!([ep("not-an-ip", NODE), ep("10.244.1.5", NODE)]),
        )];
        let e = only(entries(&svc, &slices, NODE));
        assert_eq!(e.cluster_backends, bes(&["10.244.1.5:8080"]));
    }

    #[test]
    fn addresses_read_as_kube_proxy_reads_them() {
        assert_eq!(parse_ip("010.001.0.9"), Some(ip("10.1.0.9")));
        assert_eq!(parse_ip("::ffff:10.1.0.9"), Some(ip("10.1.0.9")));
        assert_eq!(parse_ip("fd00::1"), Some(ip("fd00::1")));
        assert_eq!(parse_ip("10.1.0.256"), None);
        assert_eq!(parse_ip("10.1.0"), None);
        assert_eq!(parse_ip("10.1.0.9.1"), None);
        assert_eq!(parse_ip("10.1.+0.9"), None);
        assert_eq!(parse_ip(""), None);
        let svc = web(json!({"clusterIP": "010.096.000.010", "ports": [{"port": 80}]}));
        assert_eq!(
            only(entries(&svc, &[], NODE)).frontends,
            vec![fe("10.96.0.10", 80, Protocol::Tcp, FrontendKind::ClusterIp)]
        );
    }

    #[test]
    fn bad_cluster_ip_is_an_error() {
        let svc = web(json!({"clusterIP": "10.96.0.300", "ports": [{"port": 80}]}));
        let err = service_entries(&svc, &[], NODE).expect_err("bad clusterIP");
        assert_eq!(
            err,
            ModelError::BadIp {
                service: "default/web".into(),
                field: "spec.clusterIP".into(),
                value: "10.96.0.300".into()
            }
        );
        let msg = err.to_string();
        assert!(
            msg.contains("spec.clusterIP") && msg.contains("10.96.0.300"),
            "{msg}"
        );
    }

    #[test]
    fn bad_cluster_ips_entry_is_an_error() {
        let svc = web(json!({
            "clusterIP": "10.96.0.10",
            "clusterIPs": ["10.96.0.10", "fd00::zz"],
            "ports": [{"port": 80}]
        }));
        let err = service_entries(&svc, &[], NODE).expect_err("bad clusterIPs");
        assert_eq!(
            err,
            ModelError::BadIp {
                service: "default/web".into(),
                field: "spec.clusterIPs[1]".into(),
                value: "fd00::zz".into()
            }
        );
    }

    #[test]
    fn bad_external_ip_is_an_error() {
        let svc = http_service(json!({"externalIPs": ["192.0.2.10", "example.com"]}));
        let err = service_entries(&svc, &[], NODE).expect_err("bad externalIP");
        assert_eq!(
            err,
            ModelError::BadIp {
                service: "default/web".into(),
                field: "spec.externalIPs[1]".into(),
                value: "example.com".into()
            }
        );
    }

    #[test]
    fn bad_load_balancer_ip_is_an_error() {
        let svc = service(json!({
            "metadata": {"namespace": "default", "name": "web"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10", "ports": [{"port": 80}]},
            "status": {"loadBalancer": {"ingress": [{"hostname": "lb"}, {"ip": "1.2.3"}]}}
        }));
        let err = service_entries(&svc, &[], NODE).expect_err("bad LB IP");
        assert_eq!(
            err,
            ModelError::BadIp {
                service: "default/web".into(),
                field: "status.loadBalancer.ingress[1].ip".into(),
                value: "1.2.3".into()
            }
        );
    }

    #[test]
    fn bad_protocol_is_an_error() {
        let svc = web(json!({
            "clusterIP": "10.96.0.10",
            "ports": [{"port": 80}, {"port": 81, "protocol": "tcp"}]
        }));
        let err = service_entries(&svc, &[], NODE).expect_err("bad protocol");
        assert_eq!(
            err,
            ModelError::BadProtocol {
                service: "default/web".into(),
                field: "spec.ports[1].protocol".into(),
                value: "tcp".into()
            }
        );
        assert!(err.to_string().contains("\"tcp\""), "{err}");
    }

    #[test]
    fn bad_port_is_an_error() {
        for bad in [0, 65536, -1] {
            let svc = web(json!({"clusterIP": "10.96.0.10", "ports": [{"port": bad}]}));
            let err = service_entries(&svc, &[], NODE).expect_err("bad port");
            assert_eq!(
                err,
                ModelError::BadPort {
                    service: "default/web".into(),
                    field: "spec.ports[0].port".into(),
                    value: bad
                }
            );
        }
    }

    #[test]
    fn service_without_ports_or_spec_has_no_entries() {
        let no_ports = web(json!({"clusterIP": "10.96.0.10"}));
        assert!(entries(&no_ports, &[], NODE).is_empty());
        let no_spec = service(json!({"metadata": {"namespace": "default", "name": "web"}}));
        assert!(entries(&no_spec, &[], NODE).is_empty());
    }

    #[test]
    fn service_port_name_display() {
        let id = ServicePortName {
            namespace: "kube-system".into(),
            name: "kube-dns".into(),
            port: "dns-tcp".into(),
        };
        assert_eq!(id.to_string(), "kube-system/kube-dns:dns-tcp");
    }

    #[test]
    fn protocol_spellings() {
        assert_eq!(Protocol::from_k8s(None), Some(Protocol::Tcp));
        assert_eq!(Protocol::from_k8s(Some("UDP")), Some(Protocol::Udp));
        assert_eq!(Protocol::from_k8s(Some("SCTP")), Some(Protocol::Sctp));
        assert_eq!(Protocol::from_k8s(Some("udp")), None);
        for p in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
            assert_eq!(Protocol::from_k8s(Some(p.as_str())), Some(p));
            assert_eq!(p.to_string(), p.as_str());
        }
    }

    #[test]
    fn slice_info_keeps_only_what_programs() {
        let s = web_slice(
            "web-1",
            "IPv4",
            json!([
                {"name": "http", "port": 8080, "protocol": "TCP"},
                {"name": "odd", "port": 9, "protocol": "QUIC"},
                {"name": "none"},
                {"name": "zero", "port": 0}
            ]),
            json!([
                ep("10.0.0.1", NODE),
                ep("10.0.0.2", "node-b"),
                {"addresses": ["not-an-ip"], "conditions": {"ready": true}},
                {"addresses": [], "conditions": {"ready": true}},
                ep_cond("10.0.0.3", NODE, json!({"ready": false, "serving": true, "terminating": true}))
            ]),
        );
        let info = SliceInfo::from_slice(&s, NODE);
        assert_eq!(info.ports.len(), 1, "only the TCP port with a number");
        assert_eq!(&*info.ports[0].name, "http");
        assert_eq!(info.ports[0].port, 8080);
        let addrs: Vec<String> = info.endpoints.iter().map(|e| e.addr.to_string()).collect();
        assert_eq!(addrs, ["10.0.0.1", "10.0.0.2", "10.0.0.3"]);
        assert!(info.endpoints[0].state.local && !info.endpoints[1].state.local);
        assert!(info.endpoints[2].state.serving_terminating() && !info.endpoints[2].state.ready);
        // No node name: nothing is local (as kube-proxy).
        assert!(
            SliceInfo::from_slice(&s, "")
                .endpoints
                .iter()
                .all(|e| !e.state.local)
        );
        // FQDN slices and other proxies' slices program nothing.
        let fqdn = web_slice(
            "web-2",
            "FQDN",
            json!([{"name": "http", "port": 80}]),
            json!([ep("a.example", NODE)]),
        );
        assert_eq!(SliceInfo::from_slice(&fqdn, NODE), SliceInfo::default());
        let mut other = s.clone();
        other
            .metadata
            .labels
            .get_or_insert_default()
            .insert(LABEL_SERVICE_PROXY_NAME.into(), "else".into());
        assert_eq!(SliceInfo::from_slice(&other, NODE).endpoint_count(), 0);
    }

    #[test]
    fn compact_forms_give_the_entries_of_the_objects() {
        let svc = web(json!({
            "type": "LoadBalancer", "clusterIPs": ["10.96.0.10", "fd00::10"],
            "externalIPs": ["192.0.2.7"], "externalTrafficPolicy": "Local",
            "sessionAffinity": "ClientIP",
            "loadBalancerSourceRanges": ["198.51.100.0/24"],
            "ports": [
                {"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080},
                {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053}
            ]
        }));
        let a = web_slice(
            "web-a",
            "IPv4",
            json!([{"name": "http", "port": 8080}, {"name": "dns", "port": 5353, "protocol": "UDP"}]),
            json!([ep("10.0.0.1", NODE), ep("10.0.0.2", "node-b")]),
        );
        let b = web_slice(
            "web-b",
            "IPv6",
            json!([{"name": "http", "port": 8080}]),
            json!([
                ep("fd00::1", "node-b"),
                ep_cond("10.0.0.1", "node-b", json!({"ready": false}))
            ]),
        );
        let objects = service_entries(&svc, &[&a, &b], NODE).expect("entries");
        let info = ServiceInfo::from_service(&svc).expect("info");
        let (sa, sb) = (
            SliceInfo::from_slice(&a, NODE),
            SliceInfo::from_slice(&b, NODE),
        );
        assert_eq!(info.entries("default", "web", &[&sa, &sb]), objects);
        assert_eq!(info.entries("default", "web", &[&sb, &sa]), objects);
        assert_eq!(objects.len(), 2);
        // Local policy: the external backends are this node's only.
        assert_eq!(
            objects[0].external_backends,
            vec![Backend {
                local: true,
                ..be("10.0.0.1:8080")
            }]
        );
        // The compact form is far smaller than the object it stands for.
        assert!(std::mem::size_of::<EndpointInfo>() <= 24);
        assert!(std::mem::size_of::<ServiceInfo>() < std::mem::size_of::<Service>() / 4);
    }

    #[test]
    fn compact_service_reports_the_first_bad_field() {
        let svc = web(json!({
            "clusterIP": "10.96.0.10",
            "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 70000}]
        }));
        let err = ServiceInfo::from_service(&svc).expect_err("bad port");
        assert_eq!(err, service_entries(&svc, &[], NODE).expect_err("bad port"));
        assert!(err.to_string().contains("spec.ports[1].port"), "{err}");
        // Nothing to program for what the proxy does not handle.
        let headless = web(json!({"clusterIP": "None", "ports": [{"port": 80}]}));
        assert_eq!(
            ServiceInfo::from_service(&headless),
            Ok(ServiceInfo::default())
        );
        let external = web(json!({"type": "ExternalName", "externalName": "x.example"}));
        assert!(
            ServiceInfo::from_service(&external)
                .expect("info")
                .entries("default", "web", &[])
                .is_empty()
        );
    }
}
