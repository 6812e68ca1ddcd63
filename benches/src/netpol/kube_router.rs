//! kube-router's NetworkPolicy ruleset (iptables mode:
//! `pkg/controllers/netpol`, `fullPolicySync`) for a set of Namespaces, Pods
//! and NetworkPolicies as the API holds them, for IPv4, as the `ipset
//! restore` and `iptables-restore` input its full sync feeds the kernel.
//!
//! What it builds, as kube-router does:
//! - top-level `KUBE-ROUTER-INPUT`, `-FORWARD`, `-OUTPUT`, jumped to first
//!   from INPUT, FORWARD and OUTPUT (`"kube-router netpol - <uuid>"`);
//!   `KUBE-ROUTER-INPUT` starts with the RETURNs for the service ClusterIP
//!   range and the TCP/UDP/SCTP node ports;
//! - `KUBE-NWPLCY-COMMON` (INVALID dropped, RELATED/ESTABLISHED accepted,
//!   ICMP echo-request, destination-unreachable, time-exceeded accepted),
//!   `KUBE-NWPLCY-DEFAULT` (marks 0x10000: "allowed") and
//!   `KUBE-NWPLCY-TAIL` (accepts mark 0x20000; `--netpol-default-deny` off);
//! - per policy a `KUBE-NWPLCY-<hash>` chain; the pods its podSelector
//!   selects (on any node) in a `KUBE-DST-<hash>` (ingress) and/or
//!   `KUBE-SRC-<hash>` (egress) `hash:ip` set; per rule and peer kind a set
//!   of the peer pods' addresses (`hash:ip`), of its ipBlocks (`hash:net`,
//!   `except` as `nomatch` entries, `/0` split in two halves) or of the pods
//!   holding a named port; per port (or once, for all ports) the rule pair
//!   `... -j MARK --set-xmark 0x10000/0x10000` and `... -m mark --mark
//!   0x10000/0x10000 -j RETURN`, with `-p` and `--dport port[:endPort]`;
//!   its quirks kept (a rule whose only ports are named ports resolving to
//!   nothing matches every port, as in kube-router);
//! - per local pod (not finished, with an IP, not hostNetwork) a
//!   `KUBE-POD-FW-<hash>` chain: the COMMON jump, `from local node` accept
//!   (`-m addrtype --src-type LOCAL`), the DEFAULT jump for a direction no
//!   policy isolates, a jump to every policy selecting the pod (`-d ip` for
//!   ingress, `-s ip` egress, none for both; the last listed first, as its
//!   `-I 1` inserts leave them), then the rate-limited NFLOG and REJECT of
//!   unmarked packets, the mark reset and the 0x20000 "netpol-ok" mark; and
//!   jumps to it from `KUBE-ROUTER-FORWARD` (`-d ip`, physdev `-d ip`, `-s
//!   ip`, physdev `-s ip`), `KUBE-ROUTER-OUTPUT` (`-d`, `-s`) and
//!   `KUBE-ROUTER-INPUT` (`-s`);
//! - the TAIL jump and the explicit ACCEPT of mark 0x20000 at the end of
//!   each top-level chain.
//!
//! Sets are loaded as its `BuildIPSetRestore` writes them (a `TMP-` set per
//! set type, filled, swapped in, flushed; `timeout 0` on sets and entries),
//! with `ipset restore -exist`, before the `iptables-restore` of the filter
//! table. Chain and set names hash what kube-router hashes (namespace,
//! name, rule index, the sync version, the family), so they have its shape.
//!
//! Not modelled: IPv6 (`ip6tables`, `inet6:` sets), the local-pods set of
//! `--netpol-default-deny`, external and LoadBalancer IP ranges, and Go's
//! random map order (pods, policies and named ports go in a fixed order).
//! Local pods are told by `spec.nodeName` (kube-router compares
//! `status.hostIP` with the node's addresses).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use ferry_dataplane::policy::selector::{Labels, Selector};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::services::hash::hash_prefix;

const FAMILY: &str = "IPv4";
const INPUT: &str = "KUBE-ROUTER-INPUT";
const FORWARD: &str = "KUBE-ROUTER-FORWARD";
const OUTPUT: &str = "KUBE-ROUTER-OUTPUT";
const DEFAULT: &str = "KUBE-NWPLCY-DEFAULT";
const COMMON: &str = "KUBE-NWPLCY-COMMON";
const TAIL: &str = "KUBE-NWPLCY-TAIL";
/// Top-level chains by built-in chain, in the order they are written.
const TOP: [(&str, &str); 3] = [("INPUT", INPUT), ("FORWARD", FORWARD), ("OUTPUT", OUTPUT)];

/// What the ruleset is made for besides the objects.
#[derive(Debug, Clone)]
pub struct Node {
    /// This node's name: pods with this `spec.nodeName` are local.
    pub name: String,
    /// `--service-cluster-ip-range`.
    pub service_cidr: String,
    /// `--service-node-port-range`, as `min:max`.
    pub node_ports: String,
    /// The sync version hashed into chain names (kube-router: the sync's
    /// start in Unix nanoseconds).
    pub version: String,
}

/// The generated input for `ipset restore` and `iptables-restore`.
#[derive(Debug, Clone, Default)]
pub struct Ruleset {
    pub ipset: String,
    pub iptables: String,
    /// Rules in the filter table (`-A` lines).
    pub rules: usize,
    pub chains: usize,
    pub sets: usize,
    pub set_entries: usize,
    /// Per local pod (`namespace/name`): the policy chains its pod chain
    /// jumps to, and the rules in them plus its own.
    pub pod_chains: BTreeMap<String, PodChain>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PodChain {
    pub policy_jumps: usize,
    pub rules_behind: usize,
}

/// Why the objects cannot be turned into rules.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {namespace}/{name}: {detail}")]
    Object {
        what: &'static str,
        namespace: String,
        name: String,
        detail: String,
    },
}

#[derive(Debug)]
struct PodInfo {
    namespace: String,
    name: String,
    labels: Labels,
    ip: Option<Ipv4Addr>,
    actionable: bool,
    local: bool,
    /// (port name, protocol, container port)
    ports: Vec<(String, String, i32)>,
}

/// A rule's peers: pod addresses, and ipBlock entries (cidr, nomatch).
type Peers = (Vec<Ipv4Addr>, Vec<(String, bool)>);

/// Named port -> protocol -> container port -> pod addresses.
type NamedPorts = BTreeMap<String, BTreeMap<String, BTreeMap<i32, Vec<Ipv4Addr>>>>;

#[derive(Debug, Clone)]
struct PortProto {
    protocol: String,
    port: String,
    end_port: String,
}

#[derive(Debug, Clone)]
struct NamedEps {
    protocol: String,
    port: String,
    ips: Vec<Ipv4Addr>,
}

/// One ingress or egress rule as kube-router reduces it.
#[derive(Debug, Default)]
struct Rule {
    /// `from`/`to` absent or empty.
    match_all_peers: bool,
    /// `ports` absent or empty.
    match_all_ports: bool,
    peer_pods: Vec<Ipv4Addr>,
    /// (cidr, nomatch)
    ip_blocks: Vec<(String, bool)>,
    ports: Vec<PortProto>,
    named: Vec<NamedEps>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ingress,
    Egress,
    Both,
}

struct PolicyInfo {
    namespace: String,
    name: String,
    kind: Kind,
    targets: Vec<usize>,
    ingress: Option<Vec<Rule>>,
    egress: Option<Vec<Rule>>,
}

fn object_error(what: &'static str, ns: &str, name: &str, detail: impl ToString) -> Error {
    Error::Object {
        what,
        namespace: ns.to_string(),
        name: name.to_string(),
        detail: detail.to_string(),
    }
}

fn first_v4(pod: &Pod) -> Option<Ipv4Addr> {
    let status = pod.status.as_ref()?;
    let from_list = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|p| p.ip.parse::<Ipv4Addr>().ok())
        .next();
    from_list.or_else(|| status.pod_ip.as_deref()?.parse().ok())
}

fn pod_info(pod: &Pod, node: &str) -> PodInfo {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("");
    let has_ip = status
        .and_then(|s| s.pod_ip.as_deref())
        .is_some_and(|ip| !ip.is_empty());
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    // isNetPolActionable: not finished, an IP, not hostNetwork.
    let finished = matches!(phase, "Failed" | "Succeeded" | "Completed");
    let ports = spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .map(|p| {
            (
                p.name.clone().unwrap_or_default(),
                p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                p.container_port,
            )
        })
        .collect();
    PodInfo {
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        labels: meta.labels.as_ref().map(Labels::from).unwrap_or_default(),
        ip: first_v4(pod),
        actionable: !finished && has_ip && !host_network,
        local: spec.and_then(|s| s.node_name.as_deref()) == Some(node),
        ports,
    }
}

/// The objects, indexed as kube-router's listers serve them.
struct Cluster {
    pods: Vec<PodInfo>,
    by_namespace: BTreeMap<String, Vec<usize>>,
    namespaces: Vec<(String, Labels)>,
}

impl Cluster {
    fn new(namespaces: &[Namespace], pods: &[Pod], node: &str) -> Self {
        let mut infos: Vec<PodInfo> = pods.iter().map(|p| pod_info(p, node)).collect();
        infos.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let mut by_namespace: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, p) in infos.iter().enumerate() {
            by_namespace.entry(p.namespace.clone()).or_default().push(i);
        }
        let mut namespaces: Vec<(String, Labels)> = namespaces
            .iter()
            .map(|n| {
                (
                    n.metadata.name.clone().unwrap_or_default(),
                    n.metadata
                        .labels
                        .as_ref()
                        .map(Labels::from)
                        .unwrap_or_default(),
                )
            })
            .collect();
        namespaces.sort();
        Self {
            pods: infos,
            by_namespace,
            namespaces,
        }
    }

    /// ListPodsByNamespaceAndLabels (every pod, actionable or not).
    fn pods_in<'a>(&'a self, ns: &str, sel: &'a Selector) -> impl Iterator<Item = usize> + 'a {
        self.by_namespace
            .get(ns)
            .into_iter()
            .flatten()
            .copied()
            .filter(move |&i| self.pods.get(i).is_some_and(|p| sel.matches(&p.labels)))
    }

    fn actionable_ip(&self, i: usize) -> Option<Ipv4Addr> {
        self.pods.get(i).filter(|p| p.actionable).and_then(|p| p.ip)
    }

    /// evalPodPeer: the pods a peer's selectors name.
    fn peer_pods(&self, policy_ns: &str, peer: &NetworkPolicyPeer) -> Result<Vec<usize>, String> {
        let parse = |s: &LabelSelector| Selector::parse(s).map_err(|e| e.to_string());
        let mut out = Vec::new();
        if let Some(ns_sel) = &peer.namespace_selector {
            let ns_sel = parse(ns_sel)?;
            let pod_sel = match &peer.pod_selector {
                Some(s) => parse(s)?,
                None => Selector::everything(),
            };
            for (ns, labels) in &self.namespaces {
                if ns_sel.matches(labels) {
                    out.extend(self.pods_in(ns, &pod_sel));
                }
            }
        } else if let Some(s) = &peer.pod_selector {
            let sel = parse(s)?;
            out.extend(self.pods_in(policy_ns, &sel));
        }
        Ok(out)
    }

    /// grabNamedPortFromPod.
    fn grab_named_ports(&self, i: usize, into: &mut NamedPorts) {
        let Some(p) = self.pods.get(i) else { return };
        let ips: Vec<Ipv4Addr> = p.ip.into_iter().collect();
        for (name, proto, port) in &p.ports {
            into.entry(name.clone())
                .or_default()
                .entry(proto.clone())
                .or_default()
                .entry(*port)
                .or_default()
                .extend(ips.iter().copied());
        }
    }
}

/// evalIPBlockPeer, IPv4 entries only.
fn ip_block_entries(peer: &NetworkPolicyPeer) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let (None, None, Some(block)) = (&peer.pod_selector, &peer.namespace_selector, &peer.ip_block)
    else {
        return out;
    };
    let v4 = |c: &str| c.contains('.');
    let mut push = |cidr: &str, nomatch: bool| {
        if cidr.ends_with("/0") {
            out.push(("0.0.0.0/1".to_string(), nomatch));
            out.push(("128.0.0.0/1".to_string(), nomatch));
        } else {
            out.push((cidr.to_string(), nomatch));
        }
    };
    if v4(&block.cidr) {
        push(&block.cidr, false);
        for e in block.except.iter().flatten() {
            push(e, true);
        }
    }
    out
}

/// processNetworkPolicyPorts.
fn process_ports(
    ports: &[NetworkPolicyPort],
    named: &NamedPorts,
) -> (Vec<PortProto>, Vec<NamedEps>) {
    let mut numeric = Vec::new();
    let mut eps = Vec::new();
    for p in ports {
        let protocol = p.protocol.clone().unwrap_or_default();
        match &p.port {
            None => numeric.push(PortProto {
                protocol,
                port: String::new(),
                end_port: String::new(),
            }),
            Some(IntOrString::Int(port)) => {
                let end_port = match p.end_port {
                    Some(end) if end >= *port => end.to_string(),
                    _ => String::new(),
                };
                numeric.push(PortProto {
                    protocol,
                    port: port.to_string(),
                    end_port,
                });
            }
            Some(IntOrString::String(name)) => {
                if let Some(by_port) = named.get(name).and_then(|m| m.get(&protocol)) {
                    for (port, ips) in by_port {
                        eps.push(NamedEps {
                            protocol: protocol.clone(),
                            port: port.to_string(),
                            ips: ips.clone(),
                        });
                    }
                }
            }
        }
    }
    (numeric, eps)
}

fn build_policies(cluster: &Cluster, policies: &[NetworkPolicy]) -> Result<Vec<PolicyInfo>, Error> {
    let mut sorted: Vec<&NetworkPolicy> = policies.iter().collect();
    sorted.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    let mut out = Vec::with_capacity(sorted.len());
    for np in sorted {
        let ns = np.metadata.namespace.clone().unwrap_or_default();
        let name = np.metadata.name.clone().unwrap_or_default();
        let err = |d: String| object_error("NetworkPolicy", &ns, &name, d);
        let spec = np.spec.clone().unwrap_or_default();
        let pod_sel = Selector::parse(&spec.pod_selector.clone().unwrap_or_default())
            .map_err(|e| err(format!("podSelector: {e}")))?;
        let types = spec.policy_types.clone().unwrap_or_default();
        let has = |t: &str| types.iter().any(|x| x == t);
        let kind = match (has("Ingress"), has("Egress")) {
            (true, true) => Kind::Both,
            (false, true) => Kind::Egress,
            // No policyTypes: kube-router's default (the API always sets them).
            _ => Kind::Ingress,
        };
        let mut targets = Vec::new();
        let mut ingress_named = NamedPorts::new();
        for i in cluster.pods_in(&ns, &pod_sel) {
            if cluster.actionable_ip(i).is_some() {
                targets.push(i);
                cluster.grab_named_ports(i, &mut ingress_named);
            }
        }
        let peers = |list: &Option<Vec<NetworkPolicyPeer>>,
                     named: Option<&mut NamedPorts>|
         -> Result<Peers, Error> {
            let mut pods = Vec::new();
            let mut blocks = Vec::new();
            let mut named = named;
            for peer in list.iter().flatten() {
                for i in cluster.peer_pods(&ns, peer).map_err(&err)? {
                    if let Some(ip) = cluster.actionable_ip(i) {
                        pods.push(ip);
                        if let Some(n) = named.as_deref_mut() {
                            cluster.grab_named_ports(i, n);
                        }
                    }
                }
                blocks.extend(ip_block_entries(peer));
            }
            Ok((pods, blocks))
        };
        let ingress = match &spec.ingress {
            None => None,
            Some(rules) => {
                let mut v = Vec::with_capacity(rules.len());
                for r in rules {
                    let (peer_pods, ip_blocks) = peers(&r.from, None)?;
                    let ports = r.ports.as_deref().unwrap_or_default();
                    let (ports_v, named) = process_ports(ports, &ingress_named);
                    v.push(Rule {
                        match_all_peers: r.from.as_ref().is_none_or(Vec::is_empty),
                        match_all_ports: ports.is_empty(),
                        peer_pods,
                        ip_blocks,
                        ports: ports_v,
                        named,
                    });
                }
                Some(v)
            }
        };
        let egress = match &spec.egress {
            None => None,
            Some(rules) => {
                let mut v = Vec::with_capacity(rules.len());
                for r in rules {
                    let mut egress_named = NamedPorts::new();
                    let ports = r.ports.as_deref().unwrap_or_default();
                    let match_all_peers = r.to.as_ref().is_none_or(Vec::is_empty);
                    if match_all_peers
                        && ports
                            .iter()
                            .any(|p| matches!(p.port, Some(IntOrString::String(_))))
                    {
                        // "match all dst but some named dst-port": the
                        // policy namespace's pods name the ports.
                        let all = Selector::everything();
                        for i in cluster.pods_in(&ns, &all).collect::<Vec<_>>() {
                            if cluster.actionable_ip(i).is_some() {
                                cluster.grab_named_ports(i, &mut egress_named);
                            }
                        }
                    }
                    let (peer_pods, ip_blocks) = peers(&r.to, Some(&mut egress_named))?;
                    let (ports_v, named) = process_ports(ports, &egress_named);
                    v.push(Rule {
                        match_all_peers,
                        match_all_ports: ports.is_empty(),
                        peer_pods,
                        ip_blocks,
                        ports: ports_v,
                        named,
                    });
                }
                Some(v)
            }
        };
        out.push(PolicyInfo {
            namespace: ns,
            name,
            kind,
            targets,
            ingress,
            egress,
        });
    }
    Ok(out)
}

/// base32(sha256(`input`))[:16], as every kube-router name.
fn h16(input: &str) -> String {
    hash_prefix(input, 16)
}

fn policy_chain(p: &PolicyInfo, version: &str) -> String {
    format!(
        "KUBE-NWPLCY-{}",
        h16(&format!("{}{}{version}{FAMILY}", p.namespace, p.name))
    )
}

fn pod_chain(p: &PodInfo, version: &str) -> String {
    format!(
        "KUBE-POD-FW-{}",
        h16(&format!("{}{}{version}", p.namespace, p.name))
    )
}

fn indexed_set(prefix: &str, p: &PolicyInfo, dir: &str, idx: usize, tail: &str) -> String {
    format!(
        "{prefix}{}",
        h16(&format!(
            "{}{}{dir}rule{idx}{FAMILY}{tail}",
            p.namespace, p.name
        ))
    )
}

fn named_port_set(p: &PolicyInfo, dir: &str, idx: usize, ep: usize) -> String {
    format!(
        "KUBE-DST-{}",
        h16(&format!(
            "{}{}{dir}rule{idx}{ep}{FAMILY}namedport",
            p.namespace, p.name
        ))
    )
}

/// The ipsets, in the order kube-router's restore writes them.
#[derive(Default)]
struct Sets {
    /// name -> (type, entries with options)
    sets: BTreeMap<String, (&'static str, Vec<String>)>,
}

impl Sets {
    /// RefreshSet: the type sticks from the set's first refresh.
    fn refresh(&mut self, name: &str, kind: &'static str, entries: Vec<String>) {
        let e = self
            .sets
            .entry(name.to_string())
            .or_insert((kind, Vec::new()));
        e.1 = entries;
    }

    fn ips(&mut self, name: &str, ips: &[Ipv4Addr]) {
        let entries = ips.iter().map(|ip| format!("{ip} timeout 0")).collect();
        self.refresh(name, "hash:ip", entries);
    }

    fn nets(&mut self, name: &str, blocks: &[(String, bool)]) {
        let entries = blocks
            .iter()
            .map(|(c, nomatch)| {
                if *nomatch {
                    format!("{c} timeout 0 nomatch")
                } else {
                    format!("{c} timeout 0")
                }
            })
            .collect();
        self.refresh(name, "hash:net", entries);
    }

    /// BuildIPSetRestore: per type a TMP set filled then swapped in.
    fn restore_text(&self) -> (String, usize) {
        let mut out = String::new();
        let mut tmp: BTreeMap<&str, String> = BTreeMap::new();
        let mut entries = 0;
        for (name, (kind, list)) in &self.sets {
            let options = format!("{kind} timeout 0");
            let tmp_name = tmp.entry(kind).or_insert_with(|| {
                let t = format!("TMP-{}", &h16(&format!("tmp:{options}")));
                let _ = writeln!(out, "create {t} {options}");
                let _ = writeln!(out, "flush {t}");
                t
            });
            let tmp_name = tmp_name.clone();
            for e in list {
                let _ = writeln!(out, "add {tmp_name} {e}");
            }
            entries += list.len();
            let _ = writeln!(out, "create {name} {options}");
            let _ = writeln!(out, "swap {tmp_name} {name}");
            let _ = writeln!(out, "flush {tmp_name}");
        }
        for t in tmp.values() {
            let _ = writeln!(out, "destroy {t}");
        }
        (out, entries)
    }
}

/// The filter table being written: chain declarations, then rules.
#[derive(Default)]
struct Filter {
    chains: Vec<String>,
    rules: String,
    count: usize,
    per_chain: BTreeMap<String, usize>,
}

impl Filter {
    fn chain(&mut self, name: &str) {
        self.chains.push(name.to_string());
    }

    fn rule(&mut self, chain: &str, spec: &str) {
        let _ = writeln!(self.rules, "-A {chain} {spec}");
        self.count += 1;
        *self.per_chain.entry(chain.to_string()).or_default() += 1;
    }

    /// appendRuleToPolicyChain: the mark rule and the RETURN rule.
    #[allow(clippy::too_many_arguments)]
    fn policy_rule(
        &mut self,
        chain: &str,
        comment: &str,
        src_set: &str,
        dst_set: &str,
        protocol: &str,
        port: &str,
        end_port: &str,
    ) {
        let mut m = format!("-m comment --comment \"{comment}\"");
        if !src_set.is_empty() {
            let _ = write!(m, " -m set --match-set {src_set} src");
        }
        if !dst_set.is_empty() {
            let _ = write!(m, " -m set --match-set {dst_set} dst");
        }
        if !protocol.is_empty() {
            let _ = write!(m, " -p {protocol}");
        }
        if !port.is_empty() {
            if end_port.is_empty() {
                let _ = write!(m, " --dport {port}");
            } else {
                let _ = write!(m, " --dport {port}:{end_port}");
            }
        }
        self.rule(chain, &format!("{m} -j MARK --set-xmark 0x10000/0x10000"));
        self.rule(
            chain,
            &format!("{m} -m mark --mark 0x10000/0x10000 -j RETURN"),
        );
    }
}

/// The uuid kube-router appends to the comments of the rules it keeps in
/// place: base32(sha256(chain + the rule's words))[:16].
fn uuid(chain: &str, words: &[&str]) -> String {
    h16(&format!("{chain}{}", words.concat()))
}

fn comment_id(ns: &str, name: &str, kind: &str) -> String {
    let mut s: String = format!("{ns}/{name} {kind}")
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    s.truncate(120);
    s
}

fn ingress_rules(f: &mut Filter, sets: &mut Sets, p: &PolicyInfo, chain: &str, dst: &str) {
    let Some(rules) = &p.ingress else { return };
    let c = |kind: &str| comment_id(&p.namespace, &p.name, kind);
    for (idx, r) in rules.iter().enumerate() {
        let named_sets = |sets: &mut Sets, kind: &'static str| -> Vec<(String, &NamedEps)> {
            r.named
                .iter()
                .enumerate()
                .map(|(ep, eps)| {
                    let name = named_port_set(p, "ingress", idx, ep);
                    let entries = eps.ips.iter().map(|ip| format!("{ip} timeout 0")).collect();
                    sets.refresh(&name, kind, entries);
                    (name, eps)
                })
                .collect()
        };
        if !r.peer_pods.is_empty() {
            let src = indexed_set("KUBE-SRC-", p, "ingress", idx, "pod");
            sets.ips(&src, &r.peer_pods);
            for pp in &r.ports {
                f.policy_rule(
                    chain,
                    &c("ingress pods"),
                    &src,
                    dst,
                    &pp.protocol,
                    &pp.port,
                    &pp.end_port,
                );
            }
            for (set, eps) in named_sets(sets, "hash:ip") {
                f.policy_rule(
                    chain,
                    &c("ingress pods np"),
                    &src,
                    &set,
                    &eps.protocol,
                    &eps.port,
                    "",
                );
            }
            if r.ports.is_empty() && r.named.is_empty() {
                f.policy_rule(chain, &c("ingress pods"), &src, dst, "", "", "");
            }
        }
        if r.match_all_peers && !r.match_all_ports {
            for pp in &r.ports {
                f.policy_rule(
                    chain,
                    &c("ingress any"),
                    "",
                    dst,
                    &pp.protocol,
                    &pp.port,
                    &pp.end_port,
                );
            }
            for (set, eps) in named_sets(sets, "hash:ip") {
                f.policy_rule(
                    chain,
                    &c("ingress any np"),
                    "",
                    &set,
                    &eps.protocol,
                    &eps.port,
                    "",
                );
            }
        }
        if r.match_all_peers && r.match_all_ports {
            f.policy_rule(chain, &c("ingress any"), "", dst, "", "", "");
        }
        if !r.ip_blocks.is_empty() {
            let src = indexed_set("KUBE-SRC-", p, "ingress", idx, "ipblock");
            sets.nets(&src, &r.ip_blocks);
            if r.match_all_ports {
                f.policy_rule(chain, &c("ingress cidr"), &src, dst, "", "", "");
            } else {
                for pp in &r.ports {
                    f.policy_rule(
                        chain,
                        &c("ingress cidr"),
                        &src,
                        dst,
                        &pp.protocol,
                        &pp.port,
                        &pp.end_port,
                    );
                }
                for (set, eps) in named_sets(sets, "hash:net") {
                    f.policy_rule(
                        chain,
                        &c("ingress cidr np"),
                        &src,
                        &set,
                        &eps.protocol,
                        &eps.port,
                        "",
                    );
                }
            }
        }
    }
}

fn egress_rules(f: &mut Filter, sets: &mut Sets, p: &PolicyInfo, chain: &str, src: &str) {
    let Some(rules) = &p.egress else { return };
    let c = |kind: &str| comment_id(&p.namespace, &p.name, kind);
    for (idx, r) in rules.iter().enumerate() {
        if !r.peer_pods.is_empty() {
            let dst = indexed_set("KUBE-DST-", p, "egress", idx, "pod");
            sets.ips(&dst, &r.peer_pods);
            for pp in &r.ports {
                f.policy_rule(
                    chain,
                    &c("egress pods"),
                    src,
                    &dst,
                    &pp.protocol,
                    &pp.port,
                    &pp.end_port,
                );
            }
            for (ep, eps) in r.named.iter().enumerate() {
                let set = named_port_set(p, "egress", idx, ep);
                sets.ips(&set, &eps.ips);
                f.policy_rule(
                    chain,
                    &c("egress pods np"),
                    src,
                    &set,
                    &eps.protocol,
                    &eps.port,
                    "",
                );
            }
            if r.ports.is_empty() && r.named.is_empty() {
                f.policy_rule(chain, &c("egress pods"), src, &dst, "", "", "");
            }
        }
        if r.match_all_peers && !r.match_all_ports {
            for pp in &r.ports {
                f.policy_rule(
                    chain,
                    &c("egress any"),
                    src,
                    "",
                    &pp.protocol,
                    &pp.port,
                    &pp.end_port,
                );
            }
            for eps in &r.named {
                f.policy_rule(
                    chain,
                    &c("egress any np"),
                    src,
                    "",
                    &eps.protocol,
                    &eps.port,
                    "",
                );
            }
        }
        if r.match_all_peers && r.match_all_ports {
            f.policy_rule(chain, &c("egress any"), src, "", "", "", "");
        }
        if !r.ip_blocks.is_empty() {
            let dst = indexed_set("KUBE-DST-", p, "egress", idx, "ipblock");
            sets.nets(&dst, &r.ip_blocks);
            if r.match_all_ports {
                f.policy_rule(chain, &c("egress cidr"), src, &dst, "", "", "");
            } else {
                for pp in &r.ports {
                    f.policy_rule(
                        chain,
                        &c("egress cidr"),
                        src,
                        &dst,
                        &pp.protocol,
                        &pp.port,
                        &pp.end_port,
                    );
                }
            }
        }
    }
}

/// The whole ruleset for `node` from the objects.
pub fn generate(
    namespaces: &[Namespace],
    pods: &[Pod],
    policies: &[NetworkPolicy],
    node: &Node,
) -> Result<Ruleset, Error> {
    let cluster = Cluster::new(namespaces, pods, &node.name);
    let infos = build_policies(&cluster, policies)?;
    let v = node.version.as_str();
    let mut f = Filter::default();
    let mut sets = Sets::default();
    for (_, c) in TOP {
        f.chain(c);
    }
    for c in [DEFAULT, COMMON, TAIL] {
        f.chain(c);
    }

    // ensureTopLevelChains: the jumps at position 1, then INPUT's RETURNs.
    for (builtin, custom) in TOP {
        let comment = "kube-router netpol";
        let id = uuid(
            builtin,
            &["-m", "comment", "--comment", comment, "-j", custom],
        );
        f.rule(
            builtin,
            &format!("-m comment --comment \"{comment} - {id}\" -j {custom}"),
        );
    }
    let cidr_comment = "allow traffic to primary/secondary cluster IP range";
    let id = uuid(
        INPUT,
        &[
            "-m",
            "comment",
            "--comment",
            cidr_comment,
            "-d",
            &node.service_cidr,
            "-j",
            "RETURN",
        ],
    );
    f.rule(
        INPUT,
        &format!(
            "-d {} -m comment --comment \"{cidr_comment} - {id}\" -j RETURN",
            node.service_cidr
        ),
    );
    for (proto, upper) in [("tcp", "TCP"), ("udp", "UDP"), ("sctp", "SCTP")] {
        let comment = format!("allow LOCAL {upper} traffic to node ports");
        let id = uuid(
            INPUT,
            &[
                "-p",
                proto,
                "-m",
                "comment",
                "--comment",
                &comment,
                "-m",
                "addrtype",
                "--dst-type",
                "LOCAL",
                "-m",
                "multiport",
                "--dports",
                &node.node_ports,
                "-j",
                "RETURN",
            ],
        );
        f.rule(
            INPUT,
            &format!(
                "-p {proto} -m comment --comment \"{comment} - {id}\" -m addrtype --dst-type LOCAL \
                 -m multiport --dports {} -j RETURN",
                node.node_ports
            ),
        );
    }
    f.rule(
        DEFAULT,
        "-m comment --comment \"rule to mark traffic matching a network policy\" -j MARK --set-xmark 0x10000/0x10000",
    );
    f.rule(
        COMMON,
        "-m comment --comment \"rule to drop invalid state for pod\" -m conntrack --ctstate INVALID -j DROP",
    );
    f.rule(
        COMMON,
        "-m comment --comment \"rule for stateful firewall for pod\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    );
    for (ty, comment) in [
        ("echo-request", "allow icmp echo requests"),
        (
            "destination-unreachable",
            "allow icmp destination unreachable messages",
        ),
        ("time-exceeded", "allow icmp time exceeded messages"),
    ] {
        f.rule(
            COMMON,
            &format!("-m comment --comment \"{comment}\" -p icmp --icmp-type {ty} -j ACCEPT"),
        );
    }
    f.rule(
        TAIL,
        "-m comment --comment \"accept netpol-ok\" -m mark --mark 0x20000/0x20000 -j ACCEPT",
    );

    // syncNetworkPolicyChains.
    let mut chain_of: Vec<String> = Vec::with_capacity(infos.len());
    for p in &infos {
        let chain = policy_chain(p, v);
        f.chain(&chain);
        let ips: Vec<Ipv4Addr> = p
            .targets
            .iter()
            .filter_map(|&i| cluster.actionable_ip(i))
            .collect();
        let h = h16(&format!("{}{}{FAMILY}", p.namespace, p.name));
        if matches!(p.kind, Kind::Both | Kind::Ingress) {
            let dst = format!("KUBE-DST-{h}");
            sets.ips(&dst, &ips);
            ingress_rules(&mut f, &mut sets, p, &chain, &dst);
        }
        if matches!(p.kind, Kind::Both | Kind::Egress) {
            let src = format!("KUBE-SRC-{h}");
            sets.ips(&src, &ips);
            egress_rules(&mut f, &mut sets, p, &chain, &src);
        }
        chain_of.push(chain);
    }

    // syncPodFirewallChains, for the local pods.
    let mut pod_chains = BTreeMap::new();
    let mut tops: Vec<(&str, String)> = Vec::new();
    for pod in cluster.pods.iter().filter(|p| p.local && p.actionable) {
        let Some(ip) = pod.ip else { continue };
        let chain = pod_chain(pod, v);
        f.chain(&chain);
        let me = (pod.namespace.as_str(), pod.name.as_str());
        let selecting: Vec<usize> = infos
            .iter()
            .enumerate()
            .filter(|(_, p)| {
                p.targets.iter().any(|&i| {
                    cluster
                        .pods
                        .get(i)
                        .is_some_and(|t| (t.namespace.as_str(), t.name.as_str()) == me)
                })
            })
            .map(|(k, _)| k)
            .collect();
        let has_ingress = selecting
            .iter()
            .any(|&k| infos.get(k).is_some_and(|p| p.kind != Kind::Egress));
        let has_egress = selecting
            .iter()
            .any(|&k| infos.get(k).is_some_and(|p| p.kind != Kind::Ingress));
        let before = f.count;
        f.rule(
            &chain,
            &format!("-m comment --comment \"common netpol rules\" -j {COMMON}"),
        );
        f.rule(
            &chain,
            &format!("-d {ip} -m comment --comment \"from local node\" -m addrtype --src-type LOCAL -j ACCEPT"),
        );
        if !has_egress {
            f.rule(
                &chain,
                &format!("-s {ip} -m comment --comment \"default egress\" -j {DEFAULT}"),
            );
        }
        if !has_ingress {
            f.rule(
                &chain,
                &format!("-d {ip} -m comment --comment \"default ingress\" -j {DEFAULT}"),
            );
        }
        let mut behind = 0;
        // Inserted at position 1 one after another: the last listed first.
        for &k in selecting.iter().rev() {
            let (Some(p), Some(pchain)) = (infos.get(k), chain_of.get(k)) else {
                continue;
            };
            let comment = comment_id(&p.namespace, &p.name, "policy");
            let addr = match p.kind {
                Kind::Both => String::new(),
                Kind::Ingress => format!("-d {ip} "),
                Kind::Egress => format!("-s {ip} "),
            };
            f.rule(
                &chain,
                &format!("{addr}-m comment --comment \"{comment}\" -j {pchain}"),
            );
            behind += f.per_chain.get(pchain).copied().unwrap_or(0);
        }
        let (ns, name) = me;
        f.rule(
            &chain,
            &format!(
                "-m comment --comment \"{}\" -m mark ! --mark 0x10000/0x10000 -m limit --limit 10/minute --limit-burst 10 -j NFLOG --nflog-group 100",
                comment_id(ns, name, "log-drop")
            ),
        );
        f.rule(
            &chain,
            &format!(
                "-m comment --comment \"{}\" -m mark ! --mark 0x10000/0x10000 -j REJECT",
                comment_id(ns, name, "reject")
            ),
        );
        f.rule(&chain, "-j MARK --set-mark 0/0x10000");
        f.rule(
            &chain,
            "-m comment --comment \"set netpol-ok mark\" -j MARK --set-mark 0x20000/0x20000",
        );
        pod_chains.insert(
            format!("{ns}/{name}"),
            PodChain {
                policy_jumps: selecting.len(),
                rules_behind: behind + (f.count - before),
            },
        );
        let jin = comment_id(ns, name, "in");
        let jout = comment_id(ns, name, "out");
        tops.push((
            FORWARD,
            format!("-d {ip} -m comment --comment \"{jin}\" -j {chain}"),
        ));
        tops.push((
            OUTPUT,
            format!("-d {ip} -m comment --comment \"{jin}\" -j {chain}"),
        ));
        tops.push((
            FORWARD,
            format!(
                "-d {ip} -m physdev --physdev-is-bridged -m comment --comment \"{jin}\" -j {chain}"
            ),
        ));
        for (_, top) in TOP {
            tops.push((
                top,
                format!("-s {ip} -m comment --comment \"{jout}\" -j {chain}"),
            ));
        }
        tops.push((
            FORWARD,
            format!(
                "-s {ip} -m physdev --physdev-is-bridged -m comment --comment \"{jout}\" -j {chain}"
            ),
        ));
    }
    for (chain, spec) in &tops {
        f.rule(chain, spec);
    }
    // ensureTailChainPosition, then ensureExplicitAccept.
    for (_, top) in TOP {
        f.rule(
            top,
            &format!(
                "-m comment --comment \"rule to explicitly handle traffic for network policies ACCEPT/REJECT decision\" -j {TAIL}"
            ),
        );
    }
    for (_, top) in TOP {
        f.rule(
            top,
            "-m comment --comment \"rule to explicitly ACCEPT traffic that comply to network policies\" -m mark --mark 0x20000/0x20000 -j ACCEPT",
        );
    }

    let mut iptables = String::with_capacity(f.rules.len() + f.chains.len() * 40 + 64);
    iptables
        .push_str("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    let mut declared = BTreeSet::new();
    for c in &f.chains {
        if declared.insert(c.as_str()) {
            let _ = writeln!(iptables, ":{c} - [0:0]");
        }
    }
    iptables.push_str(&f.rules);
    iptables.push_str("COMMIT\n");
    let (ipset, set_entries) = sets.restore_text();
    Ok(Ruleset {
        ipset,
        iptables,
        rules: f.count,
        chains: declared.len(),
        sets: sets.sets.len(),
        set_entries,
        pod_chains,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ns(name: &str, labels: serde_json::Value) -> Namespace {
        let mut l = labels;
        l["kubernetes.io/metadata.name"] = json!(name);
        serde_json::from_value(json!({"metadata": {"name": name, "labels": l}})).expect("ns")
    }

    fn pod(ns: &str, name: &str, node: &str, ip: &str, labels: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [
                {"name": "http", "containerPort": 8080, "protocol": "TCP"}]}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
        }))
        .expect("pod")
    }

    fn netpol(v: serde_json::Value) -> NetworkPolicy {
        serde_json::from_value(v).expect("policy")
    }

    fn node() -> Node {
        Node {
            name: "n0".into(),
            service_cidr: "10.96.0.0/16".into(),
            node_ports: "30000:32767".into(),
            version: "1".into(),
        }
    }

    #[test]
    fn a_policy_becomes_sets_chains_and_jumps() {
        let nss = [ns("a", json!({"team": "x"})), ns("b", json!({"team": "y"}))];
        let pods = [
            pod("a", "server", "n0", "10.244.0.2", json!({"app": "server"})),
            pod("b", "client", "n0", "10.244.0.3", json!({"app": "client"})),
            pod("b", "far", "n9", "10.245.0.9", json!({"app": "client"})),
        ];
        let pols = [netpol(json!({
            "metadata": {"name": "allow", "namespace": "a"},
            "spec": {"podSelector": {"matchLabels": {"app": "server"}}, "policyTypes": ["Ingress"],
                     "ingress": [
                        {"from": [{"namespaceSelector": {"matchLabels": {"team": "y"}}}],
                         "ports": [{"protocol": "TCP", "port": 80}, {"protocol": "TCP", "port": "http"}]},
                        {"from": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}],
                         "ports": [{"protocol": "TCP", "port": 7000, "endPort": 7100}]}]},
        }))];
        let r = generate(&nss, &pods, &pols, &node()).expect("generate");
        let chain = policy_chain(
            &PolicyInfo {
                namespace: "a".into(),
                name: "allow".into(),
                kind: Kind::Ingress,
                targets: vec![],
                ingress: None,
                egress: None,
            },
            "1",
        );
        // The peers (both client pods, any node) in one hash:ip set.
        let src = r
            .ipset
            .lines()
            .find(|l| l.starts_with("create KUBE-SRC-") && l.ends_with("hash:ip timeout 0"))
            .expect("source set");
        let src_name = src.split_whitespace().nth(1).expect("name");
        assert!(r.ipset.contains("add TMP-"), "{}", r.ipset);
        assert!(r.ipset.contains(" 10.245.0.9 timeout 0"), "{}", r.ipset);
        assert!(r.ipset.contains(" 0.0.0.0/1 timeout 0\n"), "{}", r.ipset);
        assert!(
            r.ipset.contains(" 10.0.0.0/8 timeout 0 nomatch"),
            "{}",
            r.ipset
        );
        assert!(r.ipset.contains("swap "));
        // The numbered port: a mark rule and a return rule.
        let mark = format!("-m set --match-set {src_name} src");
        let lines: Vec<&str> = r
            .iptables
            .lines()
            .filter(|l| l.starts_with(&format!("-A {chain} ")) && l.contains(&mark))
            .collect();
        assert_eq!(lines.len(), 4, "{lines:#?}");
        assert!(lines[0].contains("-p TCP --dport 80 -j MARK --set-xmark 0x10000/0x10000"));
        assert!(lines[1].ends_with("-p TCP --dport 80 -m mark --mark 0x10000/0x10000 -j RETURN"));
        // The named port resolves on the server (8080) into a set of its own.
        assert!(lines[2].contains("--dport 8080 -j MARK"), "{}", lines[2]);
        assert!(r.iptables.contains("--dport 7000:7100 -j MARK"));
        // Both local pods have a pod chain; only the server jumps to the policy.
        assert_eq!(r.pod_chains.len(), 2);
        assert_eq!(r.pod_chains["a/server"].policy_jumps, 1);
        assert_eq!(r.pod_chains["b/client"].policy_jumps, 0);
        assert!(r.iptables.contains(&format!(
            "-d 10.244.0.2 -m comment --comment \"a/allow policy\" -j {chain}"
        )));
        assert!(r.iptables.contains(
            "-s 10.244.0.3 -m comment --comment \"default egress\" -j KUBE-NWPLCY-DEFAULT"
        ));
        assert!(
            !r.iptables
                .contains("-d 10.244.0.2 -m comment --comment \"default ingress\"")
        );
        assert!(r.iptables.starts_with("*filter\n"));
        assert!(r.iptables.ends_with("COMMIT\n"));
        assert!(r.chains >= 6 + 1 + 2);
    }

    #[test]
    fn a_named_port_resolving_to_nothing_opens_all_ports_as_kube_router_does() {
        let nss = [ns("a", json!({}))];
        let pods = [
            pod("a", "server", "n0", "10.244.0.2", json!({"app": "server"})),
            pod("a", "peer", "n0", "10.244.0.3", json!({"app": "peer"})),
        ];
        let pols = [netpol(json!({
            "metadata": {"name": "p", "namespace": "a"},
            "spec": {"podSelector": {"matchLabels": {"app": "server"}}, "policyTypes": ["Ingress"],
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "peer"}}}],
                                  "ports": [{"protocol": "TCP", "port": "nope"}]}]},
        }))];
        let r = generate(&nss, &pods, &pols, &node()).expect("generate");
        let rules: Vec<&str> = r
            .iptables
            .lines()
            .filter(|l| l.contains("a/p ingress pods"))
            .collect();
        assert_eq!(rules.len(), 2);
        assert!(!rules[0].contains("--dport"), "{}", rules[0]);
    }

    #[test]
    fn policy_without_ingress_isolates_with_no_rules() {
        let nss = [ns("a", json!({}))];
        let pods = [pod(
            "a",
            "server",
            "n0",
            "10.244.0.2",
            json!({"app": "server"}),
        )];
        let pols = [netpol(json!({
            "metadata": {"name": "deny", "namespace": "a"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
        }))];
        let r = generate(&nss, &pods, &pols, &node()).expect("generate");
        let pc = r.pod_chains["a/server"];
        assert_eq!(pc.policy_jumps, 1);
        assert!(!r.iptables.contains("default ingress"));
        assert!(!r.iptables.contains("default egress"));
        // Both directions: a jump without an address.
        assert!(r.iptables.lines().any(|l| l.contains("\"a/deny policy\"")
            && !l.contains(" -d ")
            && !l.contains(" -s ")));
    }
}

#[cfg(test)]
mod population_tests {
    use super::*;
    use crate::netpol::population::{self, Role, Shape};
    use std::net::{IpAddr, Ipv4Addr};

    /// The bench's own objects: the server's chain jumps to each of its
    /// policies, the client's to each of its egress ones, and only local
    /// pods get chains.
    #[test]
    fn the_bench_population_gives_the_expected_chains() {
        let shape = Shape {
            namespaces: 20,
            remote_pods: 200,
            policies: 120,
            server_policies: 12,
            client_policies: 6,
            idle_pods: 5,
        };
        let namespaces: Vec<Namespace> = (0..shape.namespaces)
            .map(|i| {
                let mut v = population::namespace_object(i);
                v["metadata"]["labels"][population::NAME_LABEL] =
                    serde_json::json!(population::namespace_name(i));
                serde_json::from_value(v).expect("ns")
            })
            .collect();
        let with_status = |mut obj: serde_json::Value, ips: &[IpAddr]| -> Pod {
            obj["status"] = population::pod_status(ips)["status"].clone();
            serde_json::from_value(obj).expect("pod")
        };
        let mut pods: Vec<Pod> = (0..shape.remote_pods)
            .map(|i| {
                let (obj, ips) = population::remote_pod(i, &shape);
                with_status(obj, &ips)
            })
            .collect();
        for (k, role) in Role::all(&shape).into_iter().enumerate() {
            let ip = IpAddr::V4(Ipv4Addr::new(10, 244, 0, 2 + u8::try_from(k).expect("few")));
            pods.push(with_status(population::local_pod(role, "n0"), &[ip]));
        }
        let policies: Vec<NetworkPolicy> = population::policies(&shape)
            .into_iter()
            .map(|v| serde_json::from_value(v).expect("policy"))
            .collect();
        let node = Node {
            name: "n0".into(),
            service_cidr: "10.96.0.0/16".into(),
            node_ports: "30000:32767".into(),
            version: "7".into(),
        };
        let r = generate(&namespaces, &pods, &policies, &node).expect("generate");
        let key = |r: Role| format!("{}/{}", r.namespace(), r.name());
        assert_eq!(r.pod_chains.len(), Role::all(&shape).len());
        assert_eq!(
            r.pod_chains[&key(Role::Server)].policy_jumps,
            shape.server_policies
        );
        assert_eq!(
            r.pod_chains[&key(Role::Client)].policy_jumps,
            shape.client_policies
        );
        assert_eq!(r.pod_chains[&key(Role::Open)].policy_jumps, 0);
        assert_eq!(r.pod_chains[&key(Role::Prober)].policy_jumps, 0);
        // One policy chain per policy, whatever it selects.
        let policy_chains = r
            .iptables
            .lines()
            .filter(|l| l.starts_with(":KUBE-NWPLCY-") && l.len() > 30)
            .count();
        assert_eq!(policy_chains, shape.policies);
        // The allow rule: the client's address in a source set, port 9000.
        assert!(
            r.iptables
                .lines()
                .any(|l| l.contains("np-0/server-allow ingress pods")
                    && l.contains("--dport 9000 -j MARK")),
        );
        assert!(
            r.ipset
                .lines()
                .any(|l| l.ends_with(" 10.244.0.3 timeout 0"))
        );
    }
}
