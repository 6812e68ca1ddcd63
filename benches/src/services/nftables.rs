//! kube-proxy's nftables-mode ruleset (pkg/proxy/nftables/proxier.go), as
//! the `nft -f` transaction its knftables library writes, for the same
//! Services as [`iptables`](super::iptables):
//!
//! - table `ip kube-proxy` with the base chains `filter-prerouting`,
//!   `filter-input`, `filter-forward`, `filter-output` (priority dstnat-10),
//!   `filter-output-post-dnat` (dstnat+10), `nat-prerouting`, `nat-output`
//!   (dstnat) and `nat-postrouting` (srcnat), and kube-proxy's jumps from them
//!   into `services`, `masquerading`, `service-endpoints-check`,
//!   `nodeport-endpoints-check`, `firewall-check` and `cluster-ips-check`;
//! - the `service-ips` verdict map keyed by `ipv4_addr . inet_proto .
//!   inet_service`, looked up once by `services` (`ip daddr . meta l4proto .
//!   th dport vmap @service-ips`), plus the `cluster-ips` set and the other
//!   maps kube-proxy keeps (empty here);
//! - per NodePort (externalTrafficPolicy Cluster) an `external-<hash>-…`
//!   chain (masquerade mark, then `goto` the Service's chain) and a
//!   `service-nodeports` element `proto . nodePort : goto external-…`,
//!   looked up by `services` at the node-port addresses: every local address
//!   (`fib daddr type local`), or the `nodeport-ips` set that nftables mode's
//!   default `--nodeport-addresses primary` fills ([`NodePortAddrs`]);
//! - per Service a `service-<hash>-ns/name/proto/port` chain: masquerade mark
//!   for traffic from outside the cluster CIDR, then `numgen random mod N
//!   vmap { i : goto endpoint-… }`; per endpoint an
//!   `endpoint-<hash>-ns/name/tcp/port__ip/port` chain: hairpin mark, then
//!   `meta l4proto tcp dnat to ip:port`.
//!
//! Priorities are written as numbers (dstnat is -100, srcnat 100): this
//! nft (1.0.6) takes the named forms only on the hooks they belong to.
//! A partial sync (an endpoint change) is kube-proxy's: the changed
//! Service's chains recreated and flushed, the stale endpoint chain flushed
//! (kube-proxy deletes it in a later transaction), map elements untouched.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use super::hash::hash_prefix;
use super::model::{CLUSTER_CIDR, NAMESPACE, PORT_NAME, SERVICE_CIDR, SERVICE_PORT, Svc};

/// The table every line names.
const TABLE: &str = "ip kube-proxy";
/// `%#08x` of 1 << 14.
const MASQ_MARK: &str = "0x004000";
/// knftables' `NameLengthMax` less the longest chain prefix.
const CHAIN_BASE_MAX: usize = 256 - 16;

/// An `nft -f` transaction and what it holds.
#[derive(Debug, Clone, Default)]
pub struct Transaction {
    pub text: String,
    /// `add rule` lines.
    pub rules: usize,
    /// Chains created.
    pub chains: usize,
    /// Set and map elements added.
    pub elements: usize,
}

/// kube-proxy's `hashAndTruncate`.
fn hash_and_truncate(name: &str) -> String {
    let mut s = format!("{}-{name}", hash_prefix(name, 8));
    if s.len() > CHAIN_BASE_MAX {
        s.truncate(CHAIN_BASE_MAX - 3);
        s.push_str("...");
    }
    s
}

/// `ns/name/proto/port`: what kube-proxy's chain names are made from.
fn port_name(svc: &Svc) -> String {
    format!(
        "{NAMESPACE}/{}/{}/{PORT_NAME}",
        svc.name,
        svc.protocol.lower()
    )
}

pub fn svc_chain(svc: &Svc) -> String {
    format!("service-{}", hash_and_truncate(&port_name(svc)))
}

/// The chain a Service port's external traffic (here: its NodePort) goes
/// to.
pub fn ext_chain(svc: &Svc) -> String {
    format!("external-{}", hash_and_truncate(&port_name(svc)))
}

pub fn ep_chain(svc: &Svc, ep: Ipv4Addr) -> String {
    format!(
        "endpoint-{}",
        hash_and_truncate(&format!("{}__{ep}/{}", port_name(svc), svc.target_port))
    )
}

/// Which node addresses accept NodePort traffic (kube-proxy's
/// `--nodeport-addresses`).
#[derive(Debug, Clone, Copy, Default)]
pub enum NodePortAddrs<'a> {
    /// Every local address: `fib daddr type local` (no `nodeport-ips` set).
    #[default]
    All,
    /// Only these: the `nodeport-ips` set, as nftables mode's default
    /// (`primary`: the node's primary addresses) writes it.
    Only(&'a [Ipv4Addr]),
}

/// What the whole ruleset depends on besides the Services.
#[derive(Debug, Clone, Copy)]
pub struct Options<'a> {
    /// The Service CIDR (the "unallocated ClusterIPs" drop rule).
    pub service_cidr: &'a str,
    pub nodeport_addrs: NodePortAddrs<'a>,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Self {
            service_cidr: SERVICE_CIDR,
            nodeport_addrs: NodePortAddrs::All,
        }
    }
}

struct Tx {
    t: Transaction,
}

impl Tx {
    fn new(capacity: usize) -> Self {
        Self {
            t: Transaction {
                text: String::with_capacity(capacity),
                ..Transaction::default()
            },
        }
    }

    fn op(&mut self, args: std::fmt::Arguments<'_>) {
        let _ = self.t.text.write_fmt(args);
        self.t.text.push('\n');
    }

    /// knftables' `ensureChain`: add, then flush.
    fn ensure_chain(&mut self, name: &str) {
        self.op(format_args!("add chain {TABLE} {name}"));
        self.op(format_args!("flush chain {TABLE} {name}"));
        self.t.chains += 1;
    }

    fn rule(&mut self, chain: &str, rule: std::fmt::Arguments<'_>) {
        let _ = write!(self.t.text, "add rule {TABLE} {chain} ");
        let _ = self.t.text.write_fmt(rule);
        self.t.text.push('\n');
        self.t.rules += 1;
    }

    fn element(&mut self, container: &str, elem: std::fmt::Arguments<'_>) {
        let _ = write!(self.t.text, "add element {TABLE} {container} {{ ");
        let _ = self.t.text.write_fmt(elem);
        self.t.text.push_str(" }\n");
        self.t.elements += 1;
    }
}

/// (name, type, hook, priority) of kube-proxy's base chains.
const BASE_CHAINS: [(&str, &str, &str, i32); 8] = [
    ("filter-prerouting", "filter", "prerouting", -110),
    ("filter-input", "filter", "input", -110),
    ("filter-forward", "filter", "forward", -110),
    ("filter-output", "filter", "output", -110),
    ("filter-output-post-dnat", "filter", "output", -90),
    ("nat-prerouting", "nat", "prerouting", -100),
    ("nat-output", "nat", "output", -100),
    ("nat-postrouting", "nat", "postrouting", 100),
];

/// kube-proxy's `nftablesJumpChains`: (to, from, extra match).
const JUMP_CHAINS: [(&str, &str, &str); 11] = [
    ("nodeport-endpoints-check", "filter-input", "ct state new "),
    ("service-endpoints-check", "filter-input", "ct state new "),
    ("service-endpoints-check", "filter-forward", "ct state new "),
    ("service-endpoints-check", "filter-output", "ct state new "),
    ("firewall-check", "filter-prerouting", "ct state new "),
    ("firewall-check", "filter-output", "ct state new "),
    ("services", "nat-output", ""),
    ("services", "nat-prerouting", ""),
    ("masquerading", "nat-postrouting", ""),
    ("cluster-ips-check", "filter-forward", "ct state new "),
    (
        "cluster-ips-check",
        "filter-output-post-dnat",
        "ct state new ",
    ),
];

/// kube-proxy's `setupNFTables`, as on its first sync.
fn setup(tx: &mut Tx, opts: &Options<'_>) {
    let service_cidr = opts.service_cidr;
    tx.op(format_args!(
        "add table {TABLE} {{ comment \"rules for kube-proxy\" ; }}"
    ));
    for (name, ..) in BASE_CHAINS {
        tx.op(format_args!("add chain {TABLE} {name}"));
        tx.op(format_args!("delete chain {TABLE} {name}"));
    }
    for (name, kind, hook, prio) in BASE_CHAINS {
        tx.op(format_args!(
            "add chain {TABLE} {name} {{ type {kind} hook {hook} priority {prio} ; }}"
        ));
        tx.op(format_args!("flush chain {TABLE} {name}"));
        tx.t.chains += 1;
    }
    let mut created: Vec<&str> = Vec::new();
    for (to, from, extra) in JUMP_CHAINS {
        if !created.contains(&to) {
            tx.ensure_chain(to);
            created.push(to);
        }
        tx.rule(from, format_args!("{extra}jump {to}"));
    }
    for c in [
        "services",
        "cluster-ips-check",
        "masquerading",
        "mark-for-masquerade",
    ] {
        if !created.contains(&c) {
            tx.ensure_chain(c);
            created.push(c);
        }
    }
    tx.rule(
        "mark-for-masquerade",
        format_args!("mark set mark or {MASQ_MARK}"),
    );
    tx.rule(
        "masquerading",
        format_args!("mark and {MASQ_MARK} == 0 return"),
    );
    tx.rule(
        "masquerading",
        format_args!("mark set mark xor {MASQ_MARK}"),
    );
    tx.rule("masquerading", format_args!("masquerade fully-random"));
    tx.op(format_args!(
        "add set {TABLE} cluster-ips {{ type ipv4_addr ; comment \"Active ClusterIPs\" ; }}"
    ));
    tx.rule(
        "cluster-ips-check",
        format_args!(
            "ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\""
        ),
    );
    tx.rule(
        "cluster-ips-check",
        format_args!(
            "ip daddr {{ {service_cidr} }} drop comment \"Drop traffic to unallocated ClusterIPs\""
        ),
    );
    tx.op(format_args!(
        "add set {TABLE} nodeport-ips {{ type ipv4_addr ; comment \"IPs that accept NodePort traffic\" ; }}"
    ));
    let only = match opts.nodeport_addrs {
        NodePortAddrs::All => {
            tx.op(format_args!("delete set {TABLE} nodeport-ips"));
            None
        }
        NodePortAddrs::Only(ips) => Some(ips),
    };
    // Where a node port is matched: at the listed addresses, or at any
    // local one.
    let nodeport_match = if only.is_some() {
        "ip daddr @nodeport-ips"
    } else {
        "fib daddr type local ip daddr != 127.0.0.0/8"
    };
    tx.op(format_args!(
        "add map {TABLE} no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict ; \
         comment \"vmap to drop or reject packets to services with no endpoints\" ; }}"
    ));
    tx.op(format_args!(
        "add map {TABLE} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; \
         comment \"vmap to drop or reject packets to service nodeports with no endpoints\" ; }}"
    ));
    tx.op(format_args!(
        "add chain {TABLE} reject-chain {{ comment \"helper for @no-endpoint-services / @no-endpoint-nodeports\" ; }}"
    ));
    tx.op(format_args!("flush chain {TABLE} reject-chain"));
    tx.t.chains += 1;
    tx.rule("reject-chain", format_args!("reject"));
    tx.rule(
        "service-endpoints-check",
        format_args!("ip daddr . meta l4proto . th dport vmap @no-endpoint-services"),
    );
    if only.is_some() {
        tx.rule(
            "nodeport-endpoints-check",
            format_args!("{nodeport_match} meta l4proto . th dport vmap @no-endpoint-nodeports"),
        );
    } else {
        tx.rule(
            "nodeport-endpoints-check",
            format_args!(
                "ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports"
            ),
        );
    }
    tx.op(format_args!(
        "add map {TABLE} firewall-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; \
         comment \"destinations that are subject to LoadBalancerSourceRanges\" ; }}"
    ));
    tx.rule(
        "firewall-check",
        format_args!("ip daddr . meta l4proto . th dport vmap @firewall-ips"),
    );
    tx.op(format_args!(
        "add map {TABLE} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; \
         comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}"
    ));
    tx.op(format_args!(
        "add map {TABLE} service-nodeports {{ type inet_proto . inet_service : verdict ; \
         comment \"NodePort traffic\" ; }}"
    ));
    tx.rule(
        "services",
        format_args!("ip daddr . meta l4proto . th dport vmap @service-ips"),
    );
    tx.rule(
        "services",
        format_args!("{nodeport_match} meta l4proto . th dport vmap @service-nodeports"),
    );
    tx.op(format_args!("flush set {TABLE} cluster-ips"));
    if let Some(ips) = only {
        tx.op(format_args!("flush set {TABLE} nodeport-ips"));
        for ip in ips {
            tx.element("nodeport-ips", format_args!("{ip}"));
        }
    }
    for m in [
        "service-ips",
        "firewall-ips",
        "no-endpoint-services",
        "no-endpoint-nodeports",
        "service-nodeports",
    ] {
        tx.op(format_args!("flush map {TABLE} {m}"));
    }
}

/// One Service's chains and rules (kube-proxy's loop body when the Service
/// is not skipped); `elements` adds its set and map elements too.
fn service(tx: &mut Tx, svc: &Svc, elements: bool) {
    if svc.endpoints.is_empty() {
        return;
    }
    let chain = svc_chain(svc);
    let p = svc.protocol.lower();
    let eps: Vec<String> = svc.endpoints.iter().map(|ep| ep_chain(svc, *ep)).collect();
    for ep in &eps {
        tx.ensure_chain(ep);
    }
    tx.ensure_chain(&chain);
    let ext = svc.node_port.map(|np| (np, ext_chain(svc)));
    if let Some((_, ext)) = &ext {
        tx.ensure_chain(ext);
    }
    if elements {
        tx.element("cluster-ips", format_args!("{}", svc.ip));
        tx.element(
            "service-ips",
            format_args!("{} . {p} . {SERVICE_PORT} : goto {chain}", svc.ip),
        );
        if let Some((np, ext)) = &ext {
            tx.element("service-nodeports", format_args!("{p} . {np} : goto {ext}"));
        }
    }
    tx.rule(
        &chain,
        format_args!(
            "ip daddr {} {p} dport {SERVICE_PORT} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade",
            svc.ip
        ),
    );
    if let Some((_, ext)) = &ext {
        // externalTrafficPolicy Cluster: masquerade, then the Service.
        tx.rule(ext, format_args!("jump mark-for-masquerade"));
        tx.rule(ext, format_args!("goto {chain}"));
    }
    let mut vmap = String::new();
    for (i, ep) in eps.iter().enumerate() {
        if i > 0 {
            vmap.push_str(" , ");
        }
        let _ = write!(vmap, "{i} : goto {ep}");
    }
    tx.rule(
        &chain,
        format_args!("numgen random mod {} vmap {{ {vmap} }}", eps.len()),
    );
    for (ip, ep) in svc.endpoints.iter().zip(&eps) {
        tx.rule(ep, format_args!("ip saddr {ip} jump mark-for-masquerade"));
        tx.rule(
            ep,
            format_args!("meta l4proto {p} dnat to {ip}:{}", svc.target_port),
        );
    }
}

/// The first (full) sync, with the default [`Options`].
pub fn full(svcs: &[Svc]) -> Transaction {
    full_with(svcs, &Options::default())
}

/// The first (full) sync.
pub fn full_with(svcs: &[Svc], opts: &Options<'_>) -> Transaction {
    let mut tx = Tx::new(svcs.len() * 900 + 8192);
    setup(&mut tx, opts);
    for svc in svcs {
        service(&mut tx, svc, true);
    }
    tx.t
}

/// kube-proxy's partial sync after `svc`'s endpoints changed from `old`
/// (whose endpoint chains that are gone get flushed).
pub fn partial(svc: &Svc, old: &Svc) -> Transaction {
    let mut tx = Tx::new(4096);
    service(&mut tx, svc, false);
    for ep in &old.endpoints {
        if !svc.endpoints.contains(ep) {
            let stale = ep_chain(old, *ep);
            tx.op(format_args!("flush chain {TABLE} {stale}"));
        }
    }
    tx.t
}

/// Removes everything kube-proxy made (its `CleanupLeftovers`).
pub const RESET: &str = "add table ip kube-proxy\ndelete table ip kube-proxy\n";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::model;

    #[test]
    fn shapes() {
        let svcs = model::fakes(2, 3);
        let t = full(&svcs);
        let chain = svc_chain(&svcs[1]);
        assert!(chain.starts_with("service-") && chain.ends_with("-bench/svc-1/tcp/http"));
        assert!(t.text.contains(&format!(
            "add element ip kube-proxy service-ips {{ 10.96.0.21 . tcp . 80 : goto {chain} }}"
        )));
        assert!(
            t.text
                .contains("numgen random mod 3 vmap { 0 : goto endpoint-")
        );
        assert!(t.text.contains("meta l4proto tcp dnat to 10.248.0.4:8080"));
        assert_eq!(t.elements, 4);
        let mut changed = svcs[1].clone();
        changed.endpoints[0] = model::changed_endpoint(0);
        let p = partial(&changed, &svcs[1]);
        assert!(p.text.contains(&format!(
            "flush chain ip kube-proxy {}",
            ep_chain(&svcs[1], svcs[1].endpoints[0])
        )));
        assert!(!p.text.contains("add element"));
    }

    #[test]
    fn nodeports_as_kube_proxy_writes_them() {
        let svc = Svc {
            name: "np-udp".into(),
            ip: Ipv4Addr::new(10, 111, 255, 250),
            endpoints: vec![Ipv4Addr::new(10, 244, 1, 2)],
            target_port: 9001,
            protocol: model::Proto::Udp,
            node_port: Some(30081),
        };
        let node = [Ipv4Addr::new(172, 31, 0, 1)];
        let t = full_with(
            std::slice::from_ref(&svc),
            &Options {
                service_cidr: "10.96.0.0/12",
                nodeport_addrs: NodePortAddrs::Only(&node),
            },
        )
        .text;
        let chain = svc_chain(&svc);
        let ext = ext_chain(&svc);
        assert!(ext.starts_with("external-") && ext.ends_with("-bench/np-udp/udp/http"));
        assert_eq!(&ext["external-".len()..], &chain["service-".len()..]);
        for line in [
            "add rule ip kube-proxy services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports".to_string(),
            "add rule ip kube-proxy nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports".to_string(),
            "add element ip kube-proxy nodeport-ips { 172.31.0.1 }".to_string(),
            format!("add element ip kube-proxy service-nodeports {{ udp . 30081 : goto {ext} }}"),
            format!("add element ip kube-proxy service-ips {{ 10.111.255.250 . udp . 80 : goto {chain} }}"),
            format!("add rule ip kube-proxy {ext} jump mark-for-masquerade"),
            format!("add rule ip kube-proxy {ext} goto {chain}"),
            "add rule ip kube-proxy cluster-ips-check ip daddr { 10.96.0.0/12 } drop comment \"Drop traffic to unallocated ClusterIPs\"".to_string(),
        ] {
            assert!(t.lines().any(|l| l == line), "missing {line}\n{t}");
        }
        assert!(t.contains("meta l4proto udp dnat to 10.244.1.2:9001"));
        assert!(!t.contains("delete set ip kube-proxy nodeport-ips"));
        assert!(!t.contains("fib daddr type local"));
        // The external chain's rules follow its creation.
        let add = t
            .find(&format!("add chain ip kube-proxy {ext}"))
            .expect("chain");
        let rule = t
            .find(&format!("add rule ip kube-proxy {ext} "))
            .expect("rule");
        assert!(add < rule);
        // Every local address (the default here): fib, no set.
        let all = full(std::slice::from_ref(&svc)).text;
        assert!(all.contains("delete set ip kube-proxy nodeport-ips"));
        assert!(all.contains(
            "services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports"
        ));
        // A ClusterIP Service has no external chain or node port element.
        let clusterip = full(&model::fakes(1, 1)).text;
        assert!(!clusterip.contains("external-"));
        assert!(!clusterip.contains("add element ip kube-proxy service-nodeports"));
    }
}
