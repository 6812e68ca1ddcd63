//! Service defaulting, validation and the allocation of cluster IPs and node
//! ports, with kube-apiserver's rules and error messages.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{ClientIPConfig, Service, ServiceSpec, SessionAffinityConfig};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

use super::Op;
use crate::alloc::{AllocError, IpAllocator, PortAllocator};
use crate::config::{ClusterConfig, family_of};
use crate::error::Cause;

const TYPES: &[&str] = &["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];
const PROTOCOLS: &[&str] = &["TCP", "UDP", "SCTP"];
const POLICIES: &[&str] = &["SingleStack", "PreferDualStack", "RequireDualStack"];

/// The allocators plus a journal of what the admission in progress took and
/// what its commit will free, so a failed or dry-run write gives everything
/// back and a successful one releases what the update dropped.
#[derive(Debug)]
pub struct ServiceAllocators {
    ips: Vec<IpAllocator>,
    ports: PortAllocator,
    taken_ips: Vec<IpAddr>,
    taken_ports: Vec<u16>,
    freed_ips: Vec<IpAddr>,
    freed_ports: Vec<u16>,
}

fn ip_family(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// Everything a stored Service holds from the allocators.
fn allocated(svc: &Value) -> (Vec<IpAddr>, Vec<u16>) {
    let spec = svc.get("spec");
    let ips = spec
        .and_then(|s| s.get("clusterIPs"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|v| v.as_str()?.parse().ok()).collect())
        .unwrap_or_default();
    let mut ports: Vec<u16> = spec
        .and_then(|s| s.get("ports"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|p| u16::try_from(p.get("nodePort")?.as_u64()?).ok())
                .collect()
        })
        .unwrap_or_default();
    if let Some(hc) = spec
        .and_then(|s| s.get("healthCheckNodePort"))
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
    {
        ports.push(hc);
    }
    ports.sort_unstable();
    ports.dedup();
    (ips, ports)
}

impl ServiceAllocators {
    pub fn new(config: &ClusterConfig) -> Self {
        Self {
            ips: config
                .service_cidrs
                .iter()
                .map(|n| IpAllocator::new(*n))
                .collect(),
            ports: PortAllocator::new(config.node_port_range.0, config.node_port_range.1),
            taken_ips: Vec::new(),
            taken_ports: Vec::new(),
            freed_ips: Vec::new(),
            freed_ports: Vec::new(),
        }
    }

    fn ip_allocator(&mut self, family: &str) -> Option<&mut IpAllocator> {
        self.ips.iter_mut().find(|a| family_of(&a.net()) == family)
    }

    /// Marks what a stored Service holds as in use (at start).
    pub fn seed(&mut self, svc: &Value) {
        let (ips, ports) = allocated(svc);
        for ip in ips {
            if let Some(a) = self.ip_allocator(ip_family(&ip)) {
                let _ = a.allocate(ip);
            }
        }
        for p in ports {
            let _ = self.ports.allocate(p);
        }
    }

    /// Frees what a deleted Service held.
    pub fn release_service(&mut self, svc: &Value) {
        let (ips, ports) = allocated(svc);
        for ip in ips {
            if let Some(a) = self.ip_allocator(ip_family(&ip)) {
                a.release(ip);
            }
        }
        for p in ports {
            self.ports.release(p);
        }
    }

    /// The address the `kubernetes` service takes in `family`'s range.
    pub fn first_ip(&self, family: &str) -> Option<IpAddr> {
        self.ips
            .iter()
            .find(|a| family_of(&a.net()) == family)
            .map(|a| a.nth(1))
    }

    fn take_ip(&mut self, family: &str, want: Option<IpAddr>) -> Result<IpAddr, AllocError> {
        let a = self.ip_allocator(family).ok_or(AllocError::Full)?;
        let ip = match want {
            Some(ip) => a.allocate(ip).map(|()| ip)?,
            None => a.allocate_next()?,
        };
        self.taken_ips.push(ip);
        Ok(ip)
    }

    fn take_port(&mut self, want: Option<u16>) -> Result<u16, AllocError> {
        let port = match want {
            Some(p) => self.ports.allocate(p).map(|()| p)?,
            None => self.ports.allocate_next()?,
        };
        self.taken_ports.push(port);
        Ok(port)
    }

    /// Keeps what the admission took and frees what it dropped.
    pub fn commit(&mut self) {
        self.taken_ips.clear();
        self.taken_ports.clear();
        for ip in std::mem::take(&mut self.freed_ips) {
            if let Some(a) = self.ip_allocator(ip_family(&ip)) {
                a.release(ip);
            }
        }
        for p in std::mem::take(&mut self.freed_ports) {
            self.ports.release(p);
        }
    }

    /// Gives back what the admission took; nothing it dropped is freed.
    pub fn rollback(&mut self) {
        self.freed_ips.clear();
        self.freed_ports.clear();
        for ip in std::mem::take(&mut self.taken_ips) {
            if let Some(a) = self.ip_allocator(ip_family(&ip)) {
                a.release(ip);
            }
        }
        for p in std::mem::take(&mut self.taken_ports) {
            self.ports.release(p);
        }
    }
}

fn type_of(spec: &ServiceSpec) -> &str {
    spec.type_.as_deref().unwrap_or("ClusterIP")
}

fn needs_node_ports(spec: &ServiceSpec) -> bool {
    match type_of(spec) {
        "NodePort" => true,
        "LoadBalancer" => spec.allocate_load_balancer_node_ports != Some(false),
        _ => false,
    }
}

fn is_headless(spec: &ServiceSpec) -> bool {
    spec.cluster_ip.as_deref() == Some("None")
        || spec
            .cluster_ips
            .as_ref()
            .is_some_and(|ips| ips.first().map(String::as_str) == Some("None"))
}

/// Fills defaults the way kube-apiserver's defaulting and the service REST
/// strategy do, carrying allocated values over from `old` on update.
fn default_spec(spec: &mut ServiceSpec, old: Option<&ServiceSpec>, config: &ClusterConfig) {
    let ty = type_of(spec).to_string();
    spec.type_ = Some(ty.clone());
    // A type change that no longer wants node ports drops the ones the old
    // spec held, as the REST strategy's dropTypeDependentFields does.
    if let Some(old) = old
        && matches!(type_of(old), "NodePort" | "LoadBalancer")
        && !matches!(ty.as_str(), "NodePort" | "LoadBalancer")
    {
        let held: BTreeSet<i32> = old
            .ports
            .iter()
            .flatten()
            .filter_map(|p| p.node_port)
            .collect();
        for p in spec.ports.iter_mut().flatten() {
            if p.node_port.is_some_and(|np| held.contains(&np)) {
                p.node_port = None;
            }
        }
        if spec.health_check_node_port == old.health_check_node_port {
            spec.health_check_node_port = None;
        }
        if spec.external_traffic_policy == old.external_traffic_policy {
            spec.external_traffic_policy = None;
        }
    }
    if let Some(old) = old
        && type_of(old) == "LoadBalancer"
        && ty != "LoadBalancer"
    {
        if spec.allocate_load_balancer_node_ports == old.allocate_load_balancer_node_ports {
            spec.allocate_load_balancer_node_ports = None;
        }
        if spec.load_balancer_class == old.load_balancer_class {
            spec.load_balancer_class = None;
        }
    }
    if spec.session_affinity.is_none() {
        spec.session_affinity = Some("None".into());
    }
    if spec.session_affinity.as_deref() == Some("ClientIP") {
        let cfg = spec
            .session_affinity_config
            .get_or_insert_with(SessionAffinityConfig::default);
        let cip = cfg.client_ip.get_or_insert_with(ClientIPConfig::default);
        cip.timeout_seconds.get_or_insert(10800);
    } else if spec.session_affinity.as_deref() == Some("None") {
        spec.session_affinity_config = None;
    }
    for port in spec.ports.iter_mut().flatten() {
        port.protocol.get_or_insert_with(|| "TCP".into());
        if port.target_port.is_none()
            || port.target_port == Some(IntOrString::Int(0))
            || port.target_port == Some(IntOrString::String(String::new()))
        {
            port.target_port = Some(IntOrString::Int(port.port));
        }
    }
    if ty == "ExternalName" {
        spec.cluster_ip = None;
        spec.cluster_ips = None;
        spec.ip_families = None;
        spec.ip_family_policy = None;
        return;
    }
    spec.internal_traffic_policy
        .get_or_insert_with(|| "Cluster".into());
    if matches!(ty.as_str(), "NodePort" | "LoadBalancer") {
        spec.external_traffic_policy
            .get_or_insert_with(|| "Cluster".into());
    }
    if ty == "LoadBalancer" {
        spec.allocate_load_balancer_node_ports.get_or_insert(true);
    }
    // A change to clusterIP alone (clusterIPs as stored) is a change of
    // clusterIPs[0], which validation then refuses as immutable.
    if let Some(old) = old
        && spec.cluster_ip != old.cluster_ip
        && spec.cluster_ips == old.cluster_ips
        && let Some(ip) = spec.cluster_ip.clone().filter(|ip| !ip.is_empty())
    {
        let mut ips = spec.cluster_ips.clone().unwrap_or_default();
        match ips.first_mut() {
            Some(first) => *first = ip,
            None => ips.push(ip),
        }
        spec.cluster_ips = Some(ips);
    }
    // clusterIP and clusterIPs[0] mirror each other.
    match (&spec.cluster_ip, &mut spec.cluster_ips) {
        (Some(ip), None) if !ip.is_empty() => spec.cluster_ips = Some(vec![ip.clone()]),
        (_, Some(ips)) if !ips.is_empty() => spec.cluster_ip = ips.first().cloned(),
        _ => {}
    }
    if let Some(old) = old
        && type_of(old) != "ExternalName"
        && spec.cluster_ips.as_ref().is_none_or(Vec::is_empty)
    {
        spec.cluster_ip = old.cluster_ip.clone();
        spec.cluster_ips = old.cluster_ips.clone();
        if spec.ip_families.as_ref().is_none_or(Vec::is_empty) {
            spec.ip_families = old.ip_families.clone();
        }
        if spec.ip_family_policy.is_none() {
            spec.ip_family_policy = old.ip_family_policy.clone();
        }
    }
    let headless = is_headless(spec);
    if spec.ip_families.as_ref().is_none_or(Vec::is_empty) {
        let from_ips: Vec<String> = spec
            .cluster_ips
            .iter()
            .flatten()
            .filter_map(|ip| ip.parse::<IpAddr>().ok())
            .map(|ip| ip_family(&ip).to_string())
            .collect();
        spec.ip_families = if from_ips.is_empty() {
            None
        } else {
            Some(from_ips)
        };
    }
    if spec.ip_family_policy.is_none() {
        let families = spec.ip_families.as_ref().map_or(0, Vec::len);
        spec.ip_family_policy = Some(
            if families == 2 || (headless && spec.selector.as_ref().is_none_or(BTreeMap::is_empty))
            {
                "RequireDualStack"
            } else {
                "SingleStack"
            }
            .into(),
        );
    }
    let families = spec.ip_families.get_or_insert_with(Vec::new);
    if families.is_empty() {
        families.push(config.primary_family().into());
    }
    let dual_policy = matches!(
        spec.ip_family_policy.as_deref(),
        Some("PreferDualStack" | "RequireDualStack")
    );
    if dual_policy && config.dual_stack() && families.len() == 1 {
        let other = if families[0] == "IPv4" {
            "IPv6"
        } else {
            "IPv4"
        };
        families.push(other.into());
    }
    if headless {
        spec.cluster_ip = Some("None".into());
        spec.cluster_ips = Some(vec!["None".into()]);
    }
}

fn validate_spec(
    spec: &ServiceSpec,
    old: Option<&ServiceSpec>,
    config: &ClusterConfig,
) -> Vec<Cause> {
    let mut causes = Vec::new();
    let ty = type_of(spec);
    if !TYPES.contains(&ty) {
        causes.push(Cause::unsupported("spec.type", ty, TYPES));
        return causes;
    }
    let ports = spec.ports.as_deref().unwrap_or_default();
    if ports.is_empty() && ty != "ExternalName" && !is_headless(spec) {
        causes.push(Cause::required("spec.ports"));
    }
    let mut names = BTreeSet::new();
    let mut port_proto = BTreeSet::new();
    let mut node_port_proto = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let f = |x: &str| format!("spec.ports[{i}].{x}");
        let name = p.name.as_deref().unwrap_or("");
        if ports.len() > 1 && name.is_empty() {
            causes.push(Cause::required(f("name")));
        }
        if !name.is_empty() {
            if !super::meta::is_dns1123_label(name) {
                causes.push(Cause::invalid(f("name"), format!("\"{name}\""), "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"));
            }
            if !names.insert(name) {
                causes.push(Cause::duplicate(f("name"), format!("\"{name}\"")));
            }
        }
        if !(1..=65535).contains(&p.port) {
            causes.push(Cause::invalid(
                f("port"),
                p.port,
                "must be between 1 and 65535, inclusive",
            ));
        }
        let proto = p.protocol.as_deref().unwrap_or("TCP");
        if !PROTOCOLS.contains(&proto) {
            causes.push(Cause::unsupported(f("protocol"), proto, PROTOCOLS));
        }
        if !port_proto.insert((p.port, proto)) {
            causes.push(
                Cause::duplicate(f(""), format!("{{Port:{} Protocol:{proto}}}", p.port))
                    .trim_field(),
            );
        }
        match &p.target_port {
            Some(IntOrString::Int(t)) if !(1..=65535).contains(t) => {
                causes.push(Cause::invalid(
                    f("targetPort"),
                    t,
                    "must be between 1 and 65535, inclusive",
                ));
            }
            Some(IntOrString::String(s))
                if s.len() > 15
                    || !s.chars().any(|c| c.is_ascii_lowercase())
                    || !super::meta::is_dns1123_label(s) =>
            {
                causes.push(Cause::invalid(f("targetPort"), format!("\"{s}\""), "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-), at most 15 characters, with at least one letter"));
            }
            _ => {}
        }
        if let Some(np) = p.node_port {
            if !matches!(ty, "NodePort" | "LoadBalancer") {
                causes.push(Cause::forbidden(
                    f("nodePort"),
                    &format!("may not be used when `type` is '{ty}'"),
                ));
            } else if !node_port_proto.insert((np, proto)) {
                causes.push(Cause::duplicate(f("nodePort"), np));
            }
        }
    }
    match spec.session_affinity.as_deref() {
        Some("None" | "ClientIP") | None => {}
        Some(other) => causes.push(Cause::unsupported(
            "spec.sessionAffinity",
            other,
            &["ClientIP", "None"],
        )),
    }
    if let Some(t) = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds)
        && !(1..=86400).contains(&t)
    {
        causes.push(Cause::invalid(
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            t,
            "must be greater than 0 and less than 86400",
        ));
    }
    for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
        if ip.parse::<IpAddr>().is_err() {
            causes.push(Cause::invalid(
                format!("spec.externalIPs[{i}]"),
                format!("\"{ip}\""),
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            ));
        }
    }
    // As kube-apiserver: whitespace around a range is allowed.
    for (i, r) in spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .enumerate()
    {
        if r.trim().parse::<ipnet::IpNet>().is_err() {
            causes.push(Cause::invalid(
                format!("spec.loadBalancerSourceRanges[{i}]"),
                format!("\"{r}\""),
                "must be a list of IP ranges. For example, 10.240.0.0/24,10.250.0.0/24 ",
            ));
        }
    }
    if ty == "ExternalName" {
        let en = spec.external_name.as_deref().unwrap_or("");
        if en.is_empty() {
            causes.push(Cause::required("spec.externalName"));
        } else if !super::meta::dns1123_subdomain(
            en.trim_end_matches('.').to_ascii_lowercase().as_str(),
        ) {
            causes.push(Cause::invalid(
                "spec.externalName",
                format!("\"{en}\""),
                "must be a valid DNS name",
            ));
        }
        return causes;
    }
    for (field, value, allowed) in [
        (
            "spec.internalTrafficPolicy",
            spec.internal_traffic_policy.as_deref(),
            &["Cluster", "Local"][..],
        ),
        (
            "spec.externalTrafficPolicy",
            spec.external_traffic_policy.as_deref(),
            &["Cluster", "Local"][..],
        ),
        (
            "spec.ipFamilyPolicy",
            spec.ip_family_policy.as_deref(),
            POLICIES,
        ),
    ] {
        if let Some(v) = value
            && !allowed.contains(&v)
        {
            causes.push(Cause::unsupported(field, v, allowed));
        }
    }
    if spec.external_traffic_policy.is_some() && !matches!(ty, "NodePort" | "LoadBalancer") {
        causes.push(Cause::invalid(
            "spec.externalTrafficPolicy",
            format!(
                "\"{}\"",
                spec.external_traffic_policy.as_deref().unwrap_or("")
            ),
            "may only be set for externally-accessible services",
        ));
    }
    if spec.load_balancer_ip.is_some() && ty != "LoadBalancer" {
        causes.push(Cause::forbidden(
            "spec.loadBalancerIP",
            "may only be used when `type` is 'LoadBalancer'",
        ));
    }
    let families = spec.ip_families.as_deref().unwrap_or_default();
    let policy = spec.ip_family_policy.as_deref().unwrap_or("SingleStack");
    if policy == "RequireDualStack" && !config.dual_stack() {
        causes.push(Cause::invalid(
            "spec.ipFamilyPolicy",
            "\"RequireDualStack\"",
            "this cluster is not configured for dual-stack services",
        ));
    }
    if families.len() > 1 && policy == "SingleStack" {
        causes.push(Cause::invalid("spec.ipFamilies", format!("{families:?}"), "when multiple IP families are specified, ipFamilyPolicy must be RequireDualStack or PreferDualStack"));
    }
    if families.len() == 2 && families[0] == families[1] {
        causes.push(Cause::duplicate(
            "spec.ipFamilies[1]",
            format!("\"{}\"", families[1]),
        ));
    }
    for (i, fam) in families.iter().enumerate() {
        if !matches!(fam.as_str(), "IPv4" | "IPv6") {
            causes.push(Cause::unsupported(
                format!("spec.ipFamilies[{i}]"),
                fam,
                &["IPv4", "IPv6"],
            ));
        } else if config.service_cidr(fam).is_none() {
            causes.push(Cause::invalid(
                format!("spec.ipFamilies[{i}]"),
                format!("\"{fam}\""),
                "not configured on this cluster",
            ));
        }
    }
    if !is_headless(spec) {
        for (i, ip) in spec.cluster_ips.iter().flatten().enumerate() {
            match ip.parse::<IpAddr>() {
                Err(_) => causes.push(Cause::invalid(
                    format!("spec.clusterIPs[{i}]"),
                    format!("\"{ip}\""),
                    "must be empty, 'None', or a valid IP address",
                )),
                Ok(addr) if families.get(i).map(String::as_str) != Some(ip_family(&addr)) => {
                    causes.push(Cause::invalid(
                        format!("spec.clusterIPs[{i}]"),
                        format!("\"{ip}\""),
                        "expected an IP of the family in spec.ipFamilies",
                    ));
                }
                Ok(_) => {}
            }
        }
    }
    if let Some(old) = old
        && type_of(old) != "ExternalName"
    {
        let old_ips = old.cluster_ips.as_deref().unwrap_or_default();
        let new_ips = spec.cluster_ips.as_deref().unwrap_or_default();
        if old_ips.first() != new_ips.first() {
            causes.push(Cause::invalid(
                "spec.clusterIPs[0]",
                format!("{new_ips:?}"),
                "may not change once set",
            ));
        }
        let old_fams = old.ip_families.as_deref().unwrap_or_default();
        if old_fams.first() != families.first() {
            causes.push(Cause::invalid(
                "spec.ipFamilies[0]",
                format!("\"{}\"", families.first().map_or("", String::as_str)),
                "may not change once set",
            ));
        }
    }
    causes
}

impl Cause {
    /// `spec.ports[i].` with nothing after the dot reads as `spec.ports[i]`.
    fn trim_field(mut self) -> Self {
        if self.field.ends_with('.') {
            self.field.pop();
        }
        self
    }
}

/// Allocates cluster IPs and node ports the spec needs; records causes for
/// requests that cannot be met.
fn allocate(
    spec: &mut ServiceSpec,
    old: Option<&ServiceSpec>,
    allocs: &mut ServiceAllocators,
    causes: &mut Vec<Cause>,
) {
    let old_ips: Vec<String> = old
        .and_then(|o| o.cluster_ips.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|ip| ip != "None")
        .collect();
    let mut new_ips = Vec::new();
    if type_of(spec) != "ExternalName" && !is_headless(spec) {
        let requested = spec.cluster_ips.clone().unwrap_or_default();
        for (i, fam) in spec
            .ip_families
            .clone()
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let want = requested.get(i).filter(|s| !s.is_empty()).cloned();
            if let Some(w) = &want
                && old_ips.contains(w)
            {
                new_ips.push(w.clone());
                continue;
            }
            let want_ip = want.as_deref().and_then(|s| s.parse::<IpAddr>().ok());
            match allocs.take_ip(fam, want_ip) {
                Ok(ip) => new_ips.push(ip.to_string()),
                Err(e) => {
                    let shown = want.clone().unwrap_or_default();
                    causes.push(Cause::invalid(
                        "spec.clusterIPs",
                        format!("[]string{{\"{shown}\"}}"),
                        &format!("failed to allocate IP {shown}: {e}"),
                    ));
                }
            }
        }
        spec.cluster_ip = new_ips.first().cloned();
        spec.cluster_ips = Some(new_ips.clone());
    }
    for ip in &old_ips {
        if !new_ips.contains(ip)
            && let Ok(addr) = ip.parse()
        {
            allocs.freed_ips.push(addr);
        }
    }

    let old_node_ports: BTreeMap<(i32, String), i32> = old
        .and_then(|o| o.ports.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                (p.port, p.protocol.clone().unwrap_or_default()),
                p.node_port?,
            ))
        })
        .collect();
    let owned: BTreeSet<i32> = old_node_ports.values().copied().collect();
    let mut kept = BTreeSet::new();
    if matches!(type_of(spec), "NodePort" | "LoadBalancer") {
        let auto = needs_node_ports(spec);
        let mut this_request: BTreeSet<i32> = BTreeSet::new();
        for (i, p) in spec.ports.iter_mut().flatten().enumerate() {
            let proto = p.protocol.clone().unwrap_or_default();
            if p.node_port.is_none() {
                p.node_port = old_node_ports.get(&(p.port, proto)).copied();
            }
            match p.node_port {
                None if !auto => {}
                Some(np) if owned.contains(&np) || this_request.contains(&np) => {
                    kept.insert(np);
                }
                want => {
                    let want = want.map(|np| u16::try_from(np).unwrap_or(0));
                    match allocs.take_port(want) {
                        Ok(np) => {
                            p.node_port = Some(i32::from(np));
                            this_request.insert(i32::from(np));
                            kept.insert(i32::from(np));
                        }
                        Err(e) => causes.push(Cause::invalid(
                            format!("spec.ports[{i}].nodePort"),
                            want.unwrap_or(0),
                            &e.to_string(),
                        )),
                    }
                }
            }
        }
    }
    let old_hc = old.and_then(|o| o.health_check_node_port);
    let wants_hc =
        type_of(spec) == "LoadBalancer" && spec.external_traffic_policy.as_deref() == Some("Local");
    if wants_hc {
        let want = spec.health_check_node_port.or(old_hc);
        if want.is_some() && want == old_hc {
            spec.health_check_node_port = want;
        } else {
            match allocs.take_port(want.map(|p| u16::try_from(p).unwrap_or(0))) {
                Ok(p) => spec.health_check_node_port = Some(i32::from(p)),
                Err(e) => causes.push(Cause::invalid(
                    "spec.healthCheckNodePort",
                    want.unwrap_or(0),
                    &e.to_string(),
                )),
            }
        }
    } else {
        spec.health_check_node_port = None;
    }
    if let Some(hc) = spec.health_check_node_port {
        kept.insert(hc);
    }
    for np in owned.iter().chain(old_hc.iter()) {
        if !kept.contains(np)
            && let Ok(p) = u16::try_from(*np)
        {
            allocs.freed_ports.push(p);
        }
    }
}

/// Defaults, validates and allocates for a Service being created or updated.
pub fn admit(
    op: Op,
    mut svc: Service,
    old: Option<&Service>,
    config: &ClusterConfig,
    allocs: &mut ServiceAllocators,
) -> Result<Service, Vec<Cause>> {
    let old_spec = match op {
        Op::Update => old.and_then(|o| o.spec.as_ref()),
        Op::Create => None,
    };
    let spec = svc.spec.get_or_insert_with(ServiceSpec::default);
    default_spec(spec, old_spec, config);
    let mut causes = validate_spec(spec, old_spec, config);
    causes.extend(super::external_ips::check(
        spec,
        svc.status.as_ref(),
        old_spec,
        config,
    ));
    if causes.is_empty() {
        allocate(spec, old_spec, allocs, &mut causes);
    }
    if svc.status.is_none() {
        svc.status = Some(Default::default());
    }
    if let Some(st) = svc.status.as_mut() {
        st.load_balancer.get_or_insert_with(Default::default);
    }
    if causes.is_empty() {
        Ok(svc)
    } else {
        Err(causes)
    }
}
