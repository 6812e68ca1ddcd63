//! The cluster every DNS server answers for, planned once: namespaces,
//! Services (ClusterIP, dual-stack, headless), the headless Services'
//! endpoints and the Pods; their Kubernetes objects; the equivalent static
//! zone; the dnsperf query file; and what each query should get back.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;

/// The cluster domain.
pub const ZONE: &str = "cluster.local";
/// Record TTL, the same for every server (`ferry-dns --ttl`).
pub const TTL: u32 = 30;
/// The apiserver's Service CIDRs (dual-stack).
pub const SERVICE_CIDRS: &str = "10.96.0.0/16,fd00:10:96::/108";
/// The apiserver's cluster CIDR: room for 100,000 pod IPs.
pub const CLUSTER_CIDR: &str = "10.240.0.0/12";
/// First pod IP (pod `j` gets this + `j`).
const POD_BASE: Ipv4Addr = Ipv4Addr::new(10, 240, 0, 1);
/// The one named port every Service has.
pub const PORT_NAME: &str = "http";
pub const PORT: u16 = 80;
/// Endpoints of each headless Service; the first [`HOSTNAMED`] carry a
/// `hostname`.
pub const HEADLESS_ENDPOINTS: usize = 3;
const HOSTNAMED: usize = 2;
/// The label tying an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// ClusterIP, IPv4 only.
    ClusterIp,
    /// ClusterIP, `RequireDualStack` (an IPv4 and an IPv6 cluster IP).
    DualStack,
    /// `clusterIP: None`, with an EndpointSlice the bench writes.
    Headless,
}

/// One endpoint of a headless Service (a pod of its namespace).
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub hostname: Option<String>,
}

impl Endpoint {
    /// The label its own name has under the Service: the hostname, else the
    /// dashed IP (as CoreDNS names it).
    pub fn label(&self) -> String {
        self.hostname.clone().unwrap_or_else(|| dashed(self.ip))
    }
}

#[derive(Debug, Clone)]
pub struct Svc {
    pub name: String,
    pub namespace: String,
    pub kind: Kind,
    /// The cluster IPs the apiserver gave it (filled in after the create).
    pub cluster_ips: Vec<IpAddr>,
    /// Headless Services only.
    pub endpoints: Vec<Endpoint>,
}

impl Svc {
    pub fn fqdn(&self) -> String {
        format!("{}.{}.svc.{ZONE}.", self.name, self.namespace)
    }

    pub fn srv_name(&self) -> String {
        format!("_{PORT_NAME}._tcp.{}", self.fqdn())
    }

    pub fn v4(&self) -> Option<IpAddr> {
        self.cluster_ips.iter().copied().find(IpAddr::is_ipv4)
    }

    pub fn v6(&self) -> Option<IpAddr> {
        self.cluster_ips.iter().copied().find(IpAddr::is_ipv6)
    }
}

#[derive(Debug, Clone)]
pub struct PodRec {
    pub name: String,
    pub namespace: String,
    pub ip: Ipv4Addr,
}

impl PodRec {
    pub fn fqdn(&self) -> String {
        format!("{}.{}.pod.{ZONE}.", dashed(self.ip), self.namespace)
    }
}

/// `10.240.0.5` as `10-240-0-5`.
pub fn dashed(ip: Ipv4Addr) -> String {
    ip.to_string().replace('.', "-")
}

/// The whole cluster, in creation order.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub namespaces: Vec<String>,
    pub services: Vec<Svc>,
    pub pods: Vec<PodRec>,
}

impl Cluster {
    /// `services` Services and `pods` Pods over `namespaces` namespaces
    /// (round robin): every tenth Service headless, every tenth dual-stack,
    /// the rest IPv4 ClusterIP. Needs at least one pod per namespace (the
    /// headless endpoints are pods of their Service's namespace).
    pub fn plan(namespaces: usize, services: usize, pods: usize) -> Result<Self, String> {
        if namespaces == 0 || pods < namespaces {
            return Err(format!(
                "need at least one namespace and a pod per namespace ({namespaces} namespaces, {pods} pods)"
            ));
        }
        if pods > (1 << 20) - 2 {
            return Err(format!("at most {} pods fit {CLUSTER_CIDR}", (1 << 20) - 2));
        }
        if services > 60_000 {
            return Err("at most 60000 Services fit 10.96.0.0/16".into());
        }
        let ns_names: Vec<String> = (0..namespaces).map(|k| format!("ns-{k:02}")).collect();
        let ns = |i: usize| ns_names.get(i % namespaces).cloned().unwrap_or_default();
        let pod_ip = |j: usize| {
            Ipv4Addr::from(u32::from(POD_BASE) + u32::try_from(j).unwrap_or(u32::MAX >> 12))
        };
        let pod_list: Vec<PodRec> = (0..pods)
            .map(|j| PodRec {
                name: format!("pod-{j:06}"),
                namespace: ns(j),
                ip: pod_ip(j),
            })
            .collect();
        let svc_list = (0..services)
            .map(|i| {
                let kind = match i % 10 {
                    9 => Kind::Headless,
                    4 => Kind::DualStack,
                    _ => Kind::ClusterIp,
                };
                let k = i % namespaces;
                // Pods of namespace k are k, k + N, k + 2N, ...
                let in_ns = (pods - k).div_ceil(namespaces);
                let endpoints = if kind == Kind::Headless {
                    (0..HEADLESS_ENDPOINTS)
                        .map(|e| {
                            let m = ((i / namespaces) * HEADLESS_ENDPOINTS + e) % in_ns;
                            Endpoint {
                                ip: pod_ip(k + namespaces * m),
                                hostname: (e < HOSTNAMED).then(|| format!("web-{e}")),
                            }
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                Svc {
                    name: format!("svc-{i:05}"),
                    namespace: ns(i),
                    kind,
                    cluster_ips: Vec::new(),
                    endpoints,
                }
            })
            .collect();
        Ok(Self {
            namespaces: ns_names,
            services: svc_list,
            pods: pod_list,
        })
    }

    pub fn count(&self, kind: Kind) -> usize {
        self.services.iter().filter(|s| s.kind == kind).count()
    }

    pub fn headless(&self) -> impl Iterator<Item = &Svc> {
        self.services.iter().filter(|s| s.kind == Kind::Headless)
    }
}

pub fn namespace_object(name: &str) -> serde_json::Result<Namespace> {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name},
    }))
}

/// A Service without a selector, one named TCP port.
pub fn service_object(svc: &Svc) -> serde_json::Result<Service> {
    let mut spec = json!({
        "type": "ClusterIP",
        "ports": [{"name": PORT_NAME, "port": PORT, "targetPort": 8080, "protocol": "TCP"}],
    });
    match svc.kind {
        Kind::ClusterIp => {}
        Kind::DualStack => {
            spec["ipFamilyPolicy"] = json!("RequireDualStack");
            spec["ipFamilies"] = json!(["IPv4", "IPv6"]);
        }
        Kind::Headless => spec["clusterIP"] = json!("None"),
    }
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": svc.name, "namespace": svc.namespace},
        "spec": spec,
    }))
}

/// The EndpointSlice of a headless Service: its ready IPv4 endpoints.
pub fn slice_object(svc: &Svc) -> serde_json::Result<EndpointSlice> {
    let endpoints: Vec<serde_json::Value> = svc
        .endpoints
        .iter()
        .map(|e| {
            let mut ep = json!({
                "addresses": [e.ip.to_string()],
                "conditions": {"ready": true, "serving": true, "terminating": false},
            });
            if let Some(h) = &e.hostname {
                ep["hostname"] = json!(h);
            }
            ep
        })
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{}-bench", svc.name),
            "namespace": svc.namespace,
            "labels": {SERVICE_NAME_LABEL: svc.name},
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": PORT_NAME, "port": 8080, "protocol": "TCP"}],
    }))
}

pub fn pod_object(pod: &PodRec) -> serde_json::Result<Pod> {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod.name, "namespace": pod.namespace, "labels": {"app": "dns-bench"}},
        "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]},
    }))
}

/// The status a kubelet would write: running, ready, with its IP.
pub fn pod_status(pod: &PodRec) -> serde_json::Value {
    let ip = pod.ip.to_string();
    json!({"status": {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": "True"}],
    }})
}

/// The static zone equivalent to what a Kubernetes DNS server derives from
/// the cluster: SOA and NS at the apex; per ClusterIP Service its A (and
/// AAAA) and the SRV of its named port; per headless Service an A per
/// endpoint, each endpoint's own A (hostname or dashed IP) and an SRV per
/// endpoint; per Pod its dashed-IP A under `<ns>.pod`.
pub fn zone_file(c: &Cluster) -> String {
    let mut z = String::with_capacity(c.pods.len() * 64 + c.services.len() * 200);
    let _ = writeln!(z, "$ORIGIN {ZONE}.\n$TTL {TTL}");
    let _ = writeln!(
        z,
        "{ZONE}. {TTL} IN SOA ns.dns.{ZONE}. hostmaster.{ZONE}. 1 7200 1800 86400 {TTL}"
    );
    let _ = writeln!(z, "{ZONE}. {TTL} IN NS ns.dns.{ZONE}.");
    let _ = writeln!(z, "ns.dns.{ZONE}. {TTL} IN A 10.96.0.10");
    for s in &c.services {
        let name = s.fqdn();
        match s.kind {
            Kind::ClusterIp | Kind::DualStack => {
                for ip in &s.cluster_ips {
                    let t = if ip.is_ipv4() { "A" } else { "AAAA" };
                    let _ = writeln!(z, "{name} {TTL} IN {t} {ip}");
                }
                let _ = writeln!(z, "{} {TTL} IN SRV 0 100 {PORT} {name}", s.srv_name());
            }
            Kind::Headless => {
                let weight = 100 / s.endpoints.len().max(1);
                for e in &s.endpoints {
                    let _ = writeln!(z, "{name} {TTL} IN A {}", e.ip);
                    let host = format!("{}.{name}", e.label());
                    let _ = writeln!(z, "{host} {TTL} IN A {}", e.ip);
                    let _ = writeln!(z, "{} {TTL} IN SRV 0 {weight} {PORT} {host}", s.srv_name());
                }
            }
        }
    }
    for p in &c.pods {
        let _ = writeln!(z, "{} {TTL} IN A {}", p.fqdn(), p.ip);
    }
    z
}

/// The kinds of query in the mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum QueryKind {
    ServiceA,
    DualStackAaaa,
    /// AAAA of an IPv4-only Service: NOERROR without answers.
    V4OnlyAaaa,
    Srv,
    HeadlessA,
    PodA,
    /// An unknown Service in a known namespace.
    Nxdomain,
}

impl QueryKind {
    pub const ALL: [QueryKind; 7] = [
        QueryKind::ServiceA,
        QueryKind::DualStackAaaa,
        QueryKind::V4OnlyAaaa,
        QueryKind::Srv,
        QueryKind::HeadlessA,
        QueryKind::PodA,
        QueryKind::Nxdomain,
    ];

    /// Share of the mix, in twentieths.
    fn weight(self) -> usize {
        match self {
            QueryKind::ServiceA => 6,
            QueryKind::DualStackAaaa | QueryKind::V4OnlyAaaa => 2,
            QueryKind::Srv | QueryKind::PodA => 3,
            QueryKind::HeadlessA | QueryKind::Nxdomain => 2,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            QueryKind::ServiceA => "A of a ClusterIP Service",
            QueryKind::DualStackAaaa => "AAAA of a dual-stack Service",
            QueryKind::V4OnlyAaaa => "AAAA of an IPv4-only Service (NODATA)",
            QueryKind::Srv => "SRV `_http._tcp.<svc>.<ns>.svc`",
            QueryKind::HeadlessA => "A of a headless Service (3 endpoints)",
            QueryKind::PodA => "A of a pod `a-b-c-d.<ns>.pod`",
            QueryKind::Nxdomain => "an unknown Service in a known namespace (NXDOMAIN)",
        }
    }
}

/// One query and the answer it should get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub kind: QueryKind,
    pub name: String,
    pub rtype: &'static str,
    /// NOERROR or NXDOMAIN.
    pub rcode: &'static str,
    /// The answer's rdata, sorted (empty for NODATA and NXDOMAIN).
    pub answers: Vec<String>,
}

/// splitmix64: a small, fixed-seed generator so every run (and every
/// server) gets the same mix in the same order.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; the modulo bias is negligible here).
    pub fn below(&mut self, n: usize) -> usize {
        let n = u64::try_from(n.max(1)).unwrap_or(u64::MAX);
        usize::try_from(self.next_u64() % n).unwrap_or(0)
    }
}

/// `n` queries in the mix's proportions (exactly, up to rounding), each
/// naming a random object of its kind, shuffled with a fixed seed.
pub fn queries(c: &Cluster, n: usize, seed: u64) -> Vec<Query> {
    let mut rng = Rng::new(seed);
    let by_kind = |k: Kind| -> Vec<&Svc> { c.services.iter().filter(|s| s.kind == k).collect() };
    let v4 = by_kind(Kind::ClusterIp);
    let dual = by_kind(Kind::DualStack);
    let headless = by_kind(Kind::Headless);
    let with_ip: Vec<&Svc> = c
        .services
        .iter()
        .filter(|s| s.kind != Kind::Headless)
        .collect();
    let total: usize = QueryKind::ALL.iter().map(|k| k.weight()).sum();
    let mut out = Vec::with_capacity(n);
    for kind in QueryKind::ALL {
        let want = n * kind.weight() / total;
        for _ in 0..want {
            let pick = |list: &[&Svc], rng: &mut Rng| -> Option<Svc> {
                list.get(rng.below(list.len())).map(|s| (*s).clone())
            };
            let q = match kind {
                QueryKind::ServiceA => pick(&with_ip, &mut rng).map(|s| Query {
                    kind,
                    name: s.fqdn(),
                    rtype: "A",
                    rcode: "NOERROR",
                    answers: s.v4().map(|ip| ip.to_string()).into_iter().collect(),
                }),
                QueryKind::DualStackAaaa => pick(&dual, &mut rng).map(|s| Query {
                    kind,
                    name: s.fqdn(),
                    rtype: "AAAA",
                    rcode: "NOERROR",
                    answers: s.v6().map(|ip| ip.to_string()).into_iter().collect(),
                }),
                QueryKind::V4OnlyAaaa => pick(&v4, &mut rng).map(|s| Query {
                    kind,
                    name: s.fqdn(),
                    rtype: "AAAA",
                    rcode: "NOERROR",
                    answers: Vec::new(),
                }),
                QueryKind::Srv => pick(&with_ip, &mut rng).map(|s| Query {
                    kind,
                    name: s.srv_name(),
                    rtype: "SRV",
                    rcode: "NOERROR",
                    answers: vec![format!("0 100 {PORT} {}", s.fqdn())],
                }),
                QueryKind::HeadlessA => pick(&headless, &mut rng).map(|s| {
                    let mut answers: Vec<String> =
                        s.endpoints.iter().map(|e| e.ip.to_string()).collect();
                    answers.sort();
                    answers.dedup();
                    Query {
                        kind,
                        name: s.fqdn(),
                        rtype: "A",
                        rcode: "NOERROR",
                        answers,
                    }
                }),
                QueryKind::PodA => c.pods.get(rng.below(c.pods.len())).map(|p| Query {
                    kind,
                    name: p.fqdn(),
                    rtype: "A",
                    rcode: "NOERROR",
                    answers: vec![p.ip.to_string()],
                }),
                QueryKind::Nxdomain => {
                    let ns = c.namespaces.get(rng.below(c.namespaces.len()));
                    ns.map(|ns| Query {
                        kind,
                        name: format!("nosuch-{:06}.{ns}.svc.{ZONE}.", rng.below(1_000_000)),
                        rtype: "A",
                        rcode: "NXDOMAIN",
                        answers: Vec::new(),
                    })
                }
            };
            out.extend(q);
        }
    }
    // Fisher-Yates.
    for i in (1..out.len()).rev() {
        let j = rng.below(i + 1);
        out.swap(i, j);
    }
    out
}

/// The dnsperf input: `name type` per line.
pub fn query_file(qs: &[Query]) -> String {
    let mut s = String::with_capacity(qs.len() * 48);
    for q in qs {
        let _ = writeln!(s, "{} {}", q.name, q.rtype);
    }
    s
}

/// How many of each kind the mix holds.
pub fn mix(qs: &[Query]) -> BTreeMap<QueryKind, usize> {
    let mut m = BTreeMap::new();
    for q in qs {
        *m.entry(q.kind).or_insert(0) += 1;
    }
    m
}

/// The first `per_kind` queries of each kind: the sanity-check sample.
pub fn sample(qs: &[Query], per_kind: usize) -> Vec<Query> {
    let mut out = Vec::new();
    for kind in QueryKind::ALL {
        out.extend(qs.iter().filter(|q| q.kind == kind).take(per_kind).cloned());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planned() -> Cluster {
        let mut c = Cluster::plan(4, 40, 100).expect("plan");
        for (i, s) in c.services.iter_mut().enumerate() {
            let k = u8::try_from(i).expect("small");
            if s.kind != Kind::Headless {
                s.cluster_ips.push(IpAddr::V4(Ipv4Addr::new(10, 96, 0, k)));
            }
            if s.kind == Kind::DualStack {
                s.cluster_ips.push(IpAddr::V6(std::net::Ipv6Addr::new(
                    0xfd00,
                    0x10,
                    0x96,
                    0,
                    0,
                    0,
                    0,
                    u16::from(k),
                )));
            }
        }
        c
    }

    #[test]
    fn headless_endpoints_are_pods_of_their_namespace() {
        let c = planned();
        assert_eq!(c.count(Kind::Headless), 4);
        assert_eq!(c.count(Kind::DualStack), 4);
        for s in c.headless() {
            assert_eq!(s.endpoints.len(), HEADLESS_ENDPOINTS);
            for e in &s.endpoints {
                let pod = c.pods.iter().find(|p| p.ip == e.ip).expect("a pod");
                assert_eq!(pod.namespace, s.namespace);
            }
        }
    }

    #[test]
    fn the_mix_is_deterministic_and_in_proportion() {
        let c = planned();
        let a = queries(&c, 2000, 7);
        assert_eq!(a, queries(&c, 2000, 7));
        let m = mix(&a);
        assert_eq!(m.get(&QueryKind::ServiceA), Some(&600));
        assert_eq!(m.get(&QueryKind::Nxdomain), Some(&200));
        assert!(a.iter().all(|q| q.rcode == "NXDOMAIN"
            || q.kind == QueryKind::V4OnlyAaaa
            || !q.answers.is_empty()));
    }

    #[test]
    fn the_zone_has_every_name_the_queries_expect_answers_for() {
        let c = planned();
        let zone = zone_file(&c);
        for q in queries(&c, 500, 1) {
            for a in &q.answers {
                assert!(
                    zone.contains(&format!("{} {TTL} IN {} {a}", q.name, q.rtype)),
                    "{} {} {a}",
                    q.name,
                    q.rtype
                );
            }
        }
        assert!(zone.contains("10-240-0-1.ns-00.pod.cluster.local. 30 IN A 10.240.0.1"));
    }
}
