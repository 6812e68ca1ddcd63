//! The cluster zone's answers, from the [`Index`]: records, NODATA (the
//! zone's SOA in the authority section) and NXDOMAIN as the Kubernetes DNS
//! specification and CoreDNS's `kubernetes` plugin give them.
//!
//! Deliberate differences from CoreDNS, where it contradicts the
//! specification or DNS itself: a name that exists answers NODATA for every
//! type it lacks (CoreDNS gives TXT NODATA even for names that do not exist,
//! and NXDOMAIN for `dns-version.<zone>` A); an ExternalName keeps its CNAME
//! when the target cannot be chased.

use std::collections::HashSet;
use std::net::IpAddr;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use rand::seq::SliceRandom;

use crate::config::PodsMode;
use crate::index::{EndpointRecord, Index, PortRecord, PtrTarget, ServiceKind, ServiceRecord};
use crate::names::{self, Parsed, ZoneName};

/// The schema version `dns-version.<zone>` answers.
pub const SCHEMA_VERSION: &str = "1.1.0";
/// CoreDNS's fixed TTL for the `dns-version` record.
const VERSION_TTL: u32 = 28800;
/// CoreDNS caps the SOA's own TTL here.
const MAX_SOA_TTL: u32 = 300;
/// How many CNAMEs are followed inside the zone.
const MAX_CHASE: usize = 8;

/// What the zone answers with.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    pub authority: Vec<Record>,
    pub additionals: Vec<Record>,
    /// An ExternalName's target outside the zone, for the server to resolve
    /// upstream and append.
    pub chase: Option<Name>,
}

/// Whether a name is the zone's to answer.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Zone(Answer),
    /// Outside the zone, or a reverse name the cluster does not know.
    Forward,
}

/// The zone's settings, with its fixed names spelt once.
#[derive(Clone, Debug)]
pub struct Zone {
    zone: String,
    origin: Name,
    mname: Name,
    rname: Name,
    ttl: u32,
    pods: PodsMode,
    namespaces: Option<std::collections::BTreeSet<String>>,
    /// Addresses `ns.dns.<zone>` answers with: the specific listen addresses.
    nameserver_ips: Vec<IpAddr>,
}

/// A lookup before it becomes an answer.
enum Found {
    Records {
        answers: Vec<Record>,
        additionals: Vec<Record>,
        chase: Option<Name>,
    },
    NoData,
    NxDomain,
}

fn records(answers: Vec<Record>) -> Found {
    if answers.is_empty() {
        Found::NoData
    } else {
        Found::Records {
            answers,
            additionals: Vec::new(),
            chase: None,
        }
    }
}

fn is_address(t: RecordType) -> bool {
    matches!(t, RecordType::A | RecordType::AAAA)
}

/// The family a query type asks for.
fn family_matches(t: RecordType, ip: &IpAddr) -> bool {
    match t {
        RecordType::A => ip.is_ipv4(),
        RecordType::AAAA => ip.is_ipv6(),
        _ => false,
    }
}

/// An address record of the family `ip` is in.
fn address(owner: &Name, ttl: u32, ip: IpAddr) -> Record {
    let data = match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(owner.clone(), ttl, data)
}

/// SRV weights as CoreDNS computes them: an equal share of 100 over every
/// candidate before duplicates are dropped, at least 1.
fn srv_weight(candidates: usize) -> u16 {
    (100 / candidates.max(1)).max(1) as u16
}

impl Zone {
    pub fn new(
        zone: &str,
        ttl: u32,
        pods: PodsMode,
        namespaces: Option<std::collections::BTreeSet<String>>,
        nameserver_ips: Vec<IpAddr>,
    ) -> Result<Self, hickory_proto::ProtoError> {
        let fqdn = |prefix: &str| Name::from_ascii(format!("{prefix}{zone}."));
        Ok(Self {
            zone: zone.to_string(),
            origin: fqdn("")?,
            mname: fqdn("ns.dns.")?,
            rname: fqdn("hostmaster.")?,
            ttl,
            pods,
            namespaces,
            nameserver_ips,
        })
    }

    pub fn origin(&self) -> &Name {
        &self.origin
    }

    fn exposed(&self, index: &Index, ns: &str) -> bool {
        self.namespaces.as_ref().is_none_or(|n| n.contains(ns)) && index.namespace_exists(ns)
    }

    /// The zone's SOA, as negative answers carry it.
    pub fn soa(&self, index: &Index) -> Record {
        Record::from_rdata(
            self.origin.clone(),
            self.ttl.min(MAX_SOA_TTL),
            RData::SOA(SOA::new(
                self.mname.clone(),
                self.rname.clone(),
                index.serial(),
                7200,
                1800,
                86400,
                self.ttl,
            )),
        )
    }

    /// `<label>.<svc>.<ns>.svc.<zone>.`, or `<svc>.<ns>.svc.<zone>.`.
    fn service_name(&self, ns: &str, svc: &str, endpoint: Option<&str>) -> Option<Name> {
        let text = match endpoint {
            Some(e) => format!("{e}.{svc}.{ns}.svc.{}.", self.zone),
            None => format!("{svc}.{ns}.svc.{}.", self.zone),
        };
        Name::from_ascii(text).ok()
    }

    /// Answers `qname`/`qtype`; `synced` is whether every watch has listed
    /// once (until then the zone answers SERVFAIL).
    pub fn answer(&self, index: &Index, synced: bool, qname: &Name, qtype: RecordType) -> Outcome {
        self.answer_depth(index, synced, qname, qtype, 0)
    }

    fn answer_depth(
        &self,
        index: &Index,
        synced: bool,
        qname: &Name,
        qtype: RecordType,
        depth: usize,
    ) -> Outcome {
        let Some(text) = names::lower_text(qname) else {
            // A label no Kubernetes name can have: nothing of ours.
            return if self.origin.zone_of(qname) {
                Outcome::Zone(self.finish(index, Found::NxDomain))
            } else {
                Outcome::Forward
            };
        };
        let name = match names::parse(&text, &self.zone) {
            Parsed::Outside => return Outcome::Forward,
            Parsed::Reverse(ip) => {
                if !synced || qtype != RecordType::PTR {
                    return Outcome::Forward;
                }
                return match self.reverse(index, qname, ip) {
                    Some(found) => Outcome::Zone(self.finish(index, found)),
                    None => Outcome::Forward,
                };
            }
            Parsed::Zone(name) => name,
        };
        if !synced {
            let mut answer = self.finish(index, Found::NoData);
            answer.rcode = ResponseCode::ServFail;
            return Outcome::Zone(answer);
        }
        let mut found = self.lookup(index, qname, qtype, &name);
        // An ExternalName pointing back into the zone is followed here.
        if let Found::Records {
            answers,
            chase: chase @ Some(_),
            ..
        } = &mut found
            && let Some(target) = chase.as_ref()
            && self.origin.zone_of(target)
        {
            let target = target.clone();
            *chase = None;
            if depth < MAX_CHASE
                && target != *qname
                && let Outcome::Zone(inner) =
                    self.answer_depth(index, synced, &target, qtype, depth + 1)
                && inner.rcode == ResponseCode::NoError
            {
                answers.extend(inner.answers);
            }
        }
        Outcome::Zone(self.finish(index, found))
    }

    fn finish(&self, index: &Index, found: Found) -> Answer {
        match found {
            Found::Records {
                mut answers,
                additionals,
                chase,
            } => {
                // The default Corefile's `loadbalance`: address records in
                // a random order, so clients that take the first spread out.
                if answers.len() > 1 && answers.iter().all(|r| is_address(r.record_type())) {
                    answers.shuffle(&mut rand::rng());
                }
                Answer {
                    rcode: ResponseCode::NoError,
                    answers,
                    authority: Vec::new(),
                    additionals,
                    chase,
                }
            }
            Found::NoData => Answer {
                rcode: ResponseCode::NoError,
                answers: Vec::new(),
                authority: vec![self.soa(index)],
                additionals: Vec::new(),
                chase: None,
            },
            Found::NxDomain => Answer {
                rcode: ResponseCode::NXDomain,
                answers: Vec::new(),
                authority: vec![self.soa(index)],
                additionals: Vec::new(),
                chase: None,
            },
        }
    }

    fn reverse(&self, index: &Index, qname: &Name, ip: IpAddr) -> Option<Found> {
        let targets = index.ptr(ip, |ns| self.exposed(index, ns));
        let answers: Vec<Record> = targets
            .iter()
            .filter_map(|t| match t {
                PtrTarget::Service { namespace, service } => {
                    self.service_name(namespace, service, None)
                }
                PtrTarget::Endpoint {
                    namespace,
                    service,
                    endpoint,
                } => self.service_name(namespace, service, Some(endpoint)),
            })
            .map(|target| Record::from_rdata(qname.clone(), self.ttl, RData::PTR(PTR(target))))
            .collect();
        (!answers.is_empty()).then(|| records(answers))
    }

    fn lookup(&self, index: &Index, qname: &Name, qtype: RecordType, name: &ZoneName<'_>) -> Found {
        let ttl = self.ttl;
        match *name {
            ZoneName::Apex => match qtype {
                RecordType::SOA => records(vec![self.soa(index)]),
                RecordType::NS => Found::Records {
                    answers: vec![Record::from_rdata(
                        qname.clone(),
                        ttl,
                        RData::NS(NS(self.mname.clone())),
                    )],
                    additionals: self
                        .nameserver_ips
                        .iter()
                        .map(|ip| address(&self.mname, ttl, *ip))
                        .collect(),
                    chase: None,
                },
                _ => Found::NoData,
            },
            ZoneName::DnsVersion => match qtype {
                RecordType::TXT => records(vec![Record::from_rdata(
                    qname.clone(),
                    VERSION_TTL,
                    RData::TXT(TXT::new(vec![SCHEMA_VERSION.to_string()])),
                )]),
                _ => Found::NoData,
            },
            ZoneName::NameServer => records(
                self.nameserver_ips
                    .iter()
                    .filter(|ip| family_matches(qtype, ip))
                    .map(|ip| address(qname, ttl, *ip))
                    .collect(),
            ),
            ZoneName::Services | ZoneName::Pods => Found::NoData,
            ZoneName::ServiceNamespace { namespace } => {
                if self.exposed(index, namespace) {
                    Found::NoData
                } else {
                    Found::NxDomain
                }
            }
            ZoneName::PodNamespace { namespace } => {
                if self.pods != PodsMode::Disabled && self.exposed(index, namespace) {
                    Found::NoData
                } else {
                    Found::NxDomain
                }
            }
            ZoneName::Pod { namespace, ip } => {
                let Some(ip) = ip else {
                    return Found::NxDomain;
                };
                let known = match self.pods {
                    PodsMode::Disabled => false,
                    PodsMode::Insecure => self.exposed(index, namespace),
                    PodsMode::Verified => {
                        self.exposed(index, namespace) && index.pod_has_ip(namespace, ip)
                    }
                };
                if !known {
                    Found::NxDomain
                } else if family_matches(qtype, &ip) {
                    records(vec![address(qname, ttl, ip)])
                } else {
                    Found::NoData
                }
            }
            ZoneName::Service { namespace, service } => {
                match self.exposed_service(index, namespace, service) {
                    Some(svc) => self.service(index, qname, qtype, svc),
                    None => Found::NxDomain,
                }
            }
            ZoneName::Endpoint {
                namespace,
                service,
                endpoint,
            } => match self.exposed_service(index, namespace, service) {
                Some(svc) if !matches!(svc.record.kind, ServiceKind::ExternalName(_)) => {
                    // Matched without spelling every endpoint's label.
                    let dashed = names::undash(endpoint);
                    let addrs: Vec<IpAddr> = svc
                        .endpoints(index)
                        .filter(|(ep, ip)| match &ep.hostname {
                            Some(h) => **h == *endpoint,
                            None => dashed == Some(*ip),
                        })
                        .map(|(_, ip)| ip)
                        .collect();
                    if addrs.is_empty() {
                        return Found::NxDomain;
                    }
                    records(dedup_addresses(qname, ttl, qtype, addrs))
                }
                _ => Found::NxDomain,
            },
            ZoneName::Srv {
                namespace,
                service,
                port,
                protocol,
            } => match self.exposed_service(index, namespace, service) {
                Some(svc) => self.srv(index, qname, qtype, svc, Some((port, protocol))),
                None => Found::NxDomain,
            },
            ZoneName::Unknown => Found::NxDomain,
        }
    }

    fn exposed_service<'a>(&self, index: &'a Index, ns: &'a str, name: &'a str) -> Option<Svc<'a>> {
        if !self.exposed(index, ns) {
            return None;
        }
        Some(Svc {
            ns,
            name,
            record: index.service(ns, name)?,
        })
    }

    /// `<svc>.<ns>.svc.<zone>`.
    fn service(&self, index: &Index, qname: &Name, qtype: RecordType, svc: Svc<'_>) -> Found {
        let ttl = self.ttl;
        match &svc.record.kind {
            ServiceKind::ExternalName(target) => {
                // An IP written as an external name is not an alias.
                if target.parse::<IpAddr>().is_ok() {
                    return Found::NxDomain;
                }
                let Ok(target) = Name::from_ascii(format!("{target}.")) else {
                    return Found::NxDomain;
                };
                match qtype {
                    RecordType::A | RecordType::AAAA | RecordType::CNAME => Found::Records {
                        answers: vec![Record::from_rdata(
                            qname.clone(),
                            ttl,
                            RData::CNAME(CNAME(target.clone())),
                        )],
                        additionals: Vec::new(),
                        chase: (qtype != RecordType::CNAME).then_some(target),
                    },
                    _ => Found::NoData,
                }
            }
            ServiceKind::ClusterIp(ips) => match qtype {
                RecordType::A | RecordType::AAAA => records(
                    ips.iter()
                        .filter(|ip| family_matches(qtype, ip))
                        .map(|ip| address(qname, ttl, *ip))
                        .collect(),
                ),
                RecordType::SRV => self.srv(index, qname, qtype, svc, None),
                _ => Found::NoData,
            },
            ServiceKind::Headless => {
                let addrs: Vec<IpAddr> = svc.endpoints(index).map(|(_, ip)| ip).collect();
                // No ready endpoint: the name does not exist (spec 2.4.1).
                if addrs.is_empty() {
                    return Found::NxDomain;
                }
                match qtype {
                    RecordType::A | RecordType::AAAA => {
                        records(dedup_addresses(qname, ttl, qtype, addrs))
                    }
                    RecordType::SRV => self.srv(index, qname, qtype, svc, None),
                    _ => Found::NoData,
                }
            }
        }
    }

    /// SRV (or, for `_port._proto` names, A/AAAA) for a service's ports;
    /// `filter` is the port name and protocol asked for, `None` for all.
    fn srv(
        &self,
        index: &Index,
        qname: &Name,
        qtype: RecordType,
        svc: Svc<'_>,
        filter: Option<(&str, &str)>,
    ) -> Found {
        let Svc { ns, name, record } = svc;
        let ttl = self.ttl;
        let wanted = |p: &PortRecord| match filter {
            Some((port, proto)) => *p.name == *port && p.protocol == proto,
            None => true,
        };
        // (target label, address, port): one candidate per address and port.
        let mut candidates: Vec<(Option<String>, IpAddr, u16)> = Vec::new();
        match &record.kind {
            ServiceKind::ExternalName(_) => {
                return if filter.is_some() && !record.ports.iter().any(wanted) {
                    Found::NxDomain
                } else {
                    Found::NoData
                };
            }
            ServiceKind::ClusterIp(ips) => {
                for p in record.ports.iter().filter(|p| wanted(p)) {
                    for ip in ips {
                        candidates.push((None, *ip, p.port));
                    }
                }
                if filter.is_some() && !record.ports.iter().any(wanted) {
                    return Found::NxDomain;
                }
            }
            ServiceKind::Headless => {
                for slice in index.slices(ns, name) {
                    for p in slice.ports.iter().filter(|p| wanted(p)) {
                        for ep in slice.endpoints.iter().filter(|e| svc.publishes(e)) {
                            for ip in &ep.addresses {
                                candidates.push((Some(ep.label(*ip)), *ip, p.port));
                            }
                        }
                    }
                }
                if filter.is_some() && candidates.is_empty() {
                    return Found::NxDomain;
                }
            }
        }
        if qtype != RecordType::SRV {
            // `_port._proto` names also answer the addresses behind them.
            if !is_address(qtype) {
                return Found::NoData;
            }
            let addrs = candidates.iter().map(|(_, ip, _)| *ip).collect();
            return records(dedup_addresses(qname, ttl, qtype, addrs));
        }
        let weight = srv_weight(candidates.len());
        let mut answers: Vec<Record> = Vec::new();
        let mut additionals: Vec<Record> = Vec::new();
        // Sets, not lists: a headless service may have thousands of
        // endpoints.
        let mut seen_srv: HashSet<(Option<&str>, u16)> = HashSet::new();
        let mut seen_extra: HashSet<(Option<&str>, IpAddr)> = HashSet::new();
        for (label, ip, port) in &candidates {
            let Some(target) = self.service_name(ns, name, label.as_deref()) else {
                continue;
            };
            if seen_srv.insert((label.as_deref(), *port)) {
                answers.push(Record::from_rdata(
                    qname.clone(),
                    ttl,
                    RData::SRV(SRV::new(0, weight, *port, target.clone())),
                ));
            }
            if seen_extra.insert((label.as_deref(), *ip)) {
                additionals.push(address(&target, ttl, *ip));
            }
        }
        if answers.is_empty() {
            return Found::NoData;
        }
        Found::Records {
            answers,
            additionals,
            chase: None,
        }
    }
}

/// A service in an exposed namespace, with where it is.
#[derive(Clone, Copy)]
struct Svc<'a> {
    ns: &'a str,
    name: &'a str,
    record: &'a ServiceRecord,
}

impl<'a> Svc<'a> {
    /// Published: ready, or any with `publishNotReadyAddresses`.
    fn publishes(&self, ep: &EndpointRecord) -> bool {
        ep.ready || self.record.publish_not_ready
    }

    /// The published endpoint addresses.
    fn endpoints(self, index: &'a Index) -> impl Iterator<Item = (&'a EndpointRecord, IpAddr)> {
        index
            .slices(self.ns, self.name)
            .flat_map(|s| s.endpoints.iter())
            .filter(move |e| self.publishes(e))
            .flat_map(|e| e.addresses.iter().map(move |ip| (e, *ip)))
    }
}

/// One record per distinct address of the asked family.
fn dedup_addresses(
    owner: &Name,
    ttl: u32,
    qtype: RecordType,
    mut addrs: Vec<IpAddr>,
) -> Vec<Record> {
    if !is_address(qtype) {
        return Vec::new();
    }
    addrs.retain(|ip| family_matches(qtype, ip));
    addrs.sort_unstable();
    addrs.dedup();
    addrs
        .into_iter()
        .map(|ip| address(owner, ttl, ip))
        .collect()
}

#[cfg(test)]
#[path = "answer_tests.rs"]
mod tests;
