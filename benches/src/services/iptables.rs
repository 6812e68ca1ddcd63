//! kube-proxy's iptables-mode ruleset (pkg/proxy/iptables/proxier.go,
//! `syncProxyRules`) for a set of ClusterIP and NodePort Services (TCP or
//! UDP) with Cluster traffic policies and no session affinity, as kube-proxy
//! writes it with `--cluster-cidr` set (its local-traffic detector), the
//! default `--nodeport-addresses` (every local address) and the default
//! masquerade bit 14:
//!
//! - filter: `KUBE-SERVICES`, `KUBE-EXTERNAL-SERVICES`, `KUBE-FORWARD`,
//!   `KUBE-NODEPORTS`, `KUBE-PROXY-FIREWALL` and kubelet's `KUBE-FIREWALL`,
//!   jumped to from INPUT, FORWARD and OUTPUT as kube-proxy's
//!   `iptablesJumpChains` prepend them;
//! - nat: PREROUTING and OUTPUT jump to `KUBE-SERVICES`, POSTROUTING to
//!   `KUBE-POSTROUTING` (mark check, mark clear, `MASQUERADE
//!   --random-fully`); `KUBE-MARK-MASQ` sets mark 0x4000;
//! - per Service: one `KUBE-SERVICES` rule matching ClusterIP and port with
//!   the `"ns/svc:port cluster IP"` comment, jumping to `KUBE-SVC-<hash>`,
//!   which first marks traffic from outside the cluster CIDR for masquerade,
//!   then picks endpoint i of n with `-m statistic --mode random
//!   --probability 1/(n-i)` (the last one unconditionally) into
//!   `KUBE-SEP-<hash>`: hairpin masquerade mark, then `DNAT
//!   --to-destination`;
//! - per NodePort: one `KUBE-NODEPORTS` rule matching protocol and node
//!   port with the `ns/svc:port` comment, jumping to `KUBE-EXT-<hash>`, which
//!   marks the packet for masquerade ("masquerade traffic for ... external
//!   destinations": the endpoint may be on another node) and jumps to the
//!   Service's `KUBE-SVC-<hash>`;
//! - `KUBE-SERVICES` ends with the NodePorts rule ("this must be the last
//!   rule in this chain", `-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS`):
//!   a packet to a node port walks every `KUBE-SERVICES` rule, then
//!   `KUBE-NODEPORTS` up to its own.
//!
//! Chain names are kube-proxy's: `KUBE-SVC-` and `KUBE-EXT-` +
//! base32(sha256(port name + protocol))[:16], `KUBE-SEP-` the same over port
//! name + protocol + "ip:port".
//! Above 1000 endpoints kube-proxy drops the per-endpoint comments ("large
//! cluster mode"); so does this. The Services go into `KUBE-SERVICES` in the
//! order given: the caller puts the one it dials last (the worst case; real
//! kube-proxy follows Go's random map order).
//!
//! The first load is a whole-table `iptables-restore` that also holds the
//! jump rules (kube-proxy adds those with `iptables -I` before its first
//! `iptables-restore --noflush`; on an empty namespace the result is the
//! same). An endpoint change is kube-proxy's partial sync: every top-level
//! chain and all `KUBE-SERVICES` rules again, plus the changed Service's
//! chains only, restored with `--noflush --counters`.

use std::fmt::Write as _;

use super::hash::hash_prefix;
use super::model::{CLUSTER_CIDR, SERVICE_PORT, Svc};

/// Which iptables the rules are loaded with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `iptables-legacy`: x_tables, one blob per table.
    Legacy,
    /// `iptables-nft`: the same rules translated into nf_tables.
    Nft,
}

impl Backend {
    pub fn restore(self) -> &'static str {
        match self {
            Backend::Legacy => "iptables-legacy-restore",
            Backend::Nft => "iptables-nft-restore",
        }
    }

    pub fn iptables(self) -> &'static str {
        match self {
            Backend::Legacy => "iptables-legacy",
            Backend::Nft => "iptables-nft",
        }
    }

    pub fn save(self) -> &'static str {
        match self {
            Backend::Legacy => "iptables-legacy-save",
            Backend::Nft => "iptables-nft-save",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Legacy => "iptables-legacy",
            Backend::Nft => "iptables-nft",
        }
    }
}

/// Restore input and what it holds.
#[derive(Debug, Clone, Default)]
pub struct Ruleset {
    pub text: String,
    /// `-A` lines.
    pub rules: usize,
    /// Chain lines (`:NAME ...`).
    pub chains: usize,
}

/// The mark kube-proxy uses for masquerade (`%#08x` of 1 << 14).
const MASQ_MARK: &str = "0x004000";
/// kube-proxy's `largeClusterEndpointsThreshold`.
const LARGE_CLUSTER_ENDPOINTS: usize = 1000;

/// kube-proxy's `portProtoHash`: the chain-name hash of a Service port.
fn port_proto_hash(svc: &Svc) -> String {
    hash_prefix(&format!("{}{}", svc.port_name(), svc.protocol.lower()), 16)
}

/// `KUBE-SVC-<hash>` of a Service's port.
pub fn svc_chain(svc: &Svc) -> String {
    format!("KUBE-SVC-{}", port_proto_hash(svc))
}

/// `KUBE-EXT-<hash>` of a Service's port: where its external traffic
/// (here: its NodePort) goes.
pub fn ext_chain(svc: &Svc) -> String {
    format!("KUBE-EXT-{}", port_proto_hash(svc))
}

/// `KUBE-SEP-<hash>` of one of its endpoints.
pub fn sep_chain(svc: &Svc, ep: std::net::Ipv4Addr) -> String {
    format!(
        "KUBE-SEP-{}",
        hash_prefix(
            &format!(
                "{}{}{ep}:{}",
                svc.port_name(),
                svc.protocol.lower(),
                svc.target_port
            ),
            16
        )
    )
}

/// kube-proxy's `computeProbability`: `%0.10f` of 1/n.
fn probability(n: usize) -> String {
    format!("{:.10}", 1.0 / n as f64)
}

struct Writer {
    text: String,
    rules: usize,
    chains: usize,
}

impl Writer {
    fn new(capacity: usize) -> Self {
        Self {
            text: String::with_capacity(capacity),
            rules: 0,
            chains: 0,
        }
    }

    fn line(&mut self, s: &str) {
        self.text.push_str(s);
        self.text.push('\n');
    }

    fn builtin(&mut self, name: &str) {
        let _ = writeln!(self.text, ":{name} ACCEPT [0:0]");
    }

    fn chain(&mut self, name: &str) {
        let _ = writeln!(self.text, ":{name} - [0:0]");
        self.chains += 1;
    }

    fn rule(&mut self, args: std::fmt::Arguments<'_>) {
        self.text.push_str("-A ");
        let _ = self.text.write_fmt(args);
        self.text.push('\n');
        self.rules += 1;
    }

    fn done(self) -> Ruleset {
        Ruleset {
            text: self.text,
            rules: self.rules,
            chains: self.chains,
        }
    }
}

const FILTER_CHAINS: [&str; 6] = [
    "KUBE-SERVICES",
    "KUBE-EXTERNAL-SERVICES",
    "KUBE-FORWARD",
    "KUBE-NODEPORTS",
    "KUBE-PROXY-FIREWALL",
    "KUBE-FIREWALL",
];
const NAT_CHAINS: [&str; 4] = [
    "KUBE-SERVICES",
    "KUBE-NODEPORTS",
    "KUBE-POSTROUTING",
    "KUBE-MARK-MASQ",
];

/// The jump rules in the order kube-proxy's prepends leave them (its list
/// reversed, per built-in chain), then kubelet's.
const FILTER_JUMPS: [(&str, &str, &str, &str); 11] = [
    ("INPUT", "", "", "KUBE-FIREWALL"),
    (
        "INPUT",
        "-m conntrack --ctstate NEW ",
        "kubernetes load balancer firewall",
        "KUBE-PROXY-FIREWALL",
    ),
    (
        "INPUT",
        "",
        "kubernetes health check service ports",
        "KUBE-NODEPORTS",
    ),
    (
        "INPUT",
        "-m conntrack --ctstate NEW ",
        "kubernetes externally-visible service portals",
        "KUBE-EXTERNAL-SERVICES",
    ),
    (
        "FORWARD",
        "-m conntrack --ctstate NEW ",
        "kubernetes load balancer firewall",
        "KUBE-PROXY-FIREWALL",
    ),
    ("FORWARD", "", "kubernetes forwarding rules", "KUBE-FORWARD"),
    (
        "FORWARD",
        "-m conntrack --ctstate NEW ",
        "kubernetes service portals",
        "KUBE-SERVICES",
    ),
    (
        "FORWARD",
        "-m conntrack --ctstate NEW ",
        "kubernetes externally-visible service portals",
        "KUBE-EXTERNAL-SERVICES",
    ),
    ("OUTPUT", "", "", "KUBE-FIREWALL"),
    (
        "OUTPUT",
        "-m conntrack --ctstate NEW ",
        "kubernetes load balancer firewall",
        "KUBE-PROXY-FIREWALL",
    ),
    (
        "OUTPUT",
        "-m conntrack --ctstate NEW ",
        "kubernetes service portals",
        "KUBE-SERVICES",
    ),
];
const NAT_JUMPS: [(&str, &str, &str); 3] = [
    ("PREROUTING", "kubernetes service portals", "KUBE-SERVICES"),
    ("OUTPUT", "kubernetes service portals", "KUBE-SERVICES"),
    (
        "POSTROUTING",
        "kubernetes postrouting rules",
        "KUBE-POSTROUTING",
    ),
];

fn filter_table(w: &mut Writer, first: bool) {
    w.line("*filter");
    if first {
        for b in ["INPUT", "FORWARD", "OUTPUT"] {
            w.builtin(b);
        }
    }
    for c in FILTER_CHAINS {
        w.chain(c);
    }
    if first {
        for (from, extra, comment, to) in FILTER_JUMPS {
            if comment.is_empty() {
                w.rule(format_args!("{from} {extra}-j {to}"));
            } else {
                w.rule(format_args!(
                    "{from} {extra}-m comment --comment \"{comment}\" -j {to}"
                ));
            }
        }
    }
    // Only Services without endpoints get filter rules; every one here has
    // endpoints.
    w.rule(format_args!(
        "KUBE-FIREWALL -m comment --comment \"block incoming localnet connections\" \
         -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"
    ));
    w.rule(format_args!(
        "KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP"
    ));
    w.rule(format_args!(
        "KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" \
         -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT"
    ));
    w.rule(format_args!(
        "KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" \
         -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    ));
    w.line("COMMIT");
}

/// The per-Service chains and rules of `svc` (everything but its
/// `KUBE-SERVICES` rule).
fn service_rules(w: &mut Writer, svc: &Svc, large: bool) {
    let name = svc.port_name();
    let chain = svc_chain(svc);
    let ip = svc.ip;
    let p = svc.protocol.lower();
    w.rule(format_args!(
        "{chain} -m comment --comment \"{name} cluster IP\" -m {p} -p {p} -d {ip} \
         --dport {SERVICE_PORT} ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ"
    ));
    if svc.node_port.is_some() {
        // externalTrafficPolicy Cluster: masquerade (the endpoint may be on
        // another node), then the Service's own chain.
        let ext = ext_chain(svc);
        w.rule(format_args!(
            "{ext} -m comment --comment \"masquerade traffic for {name} external destinations\" \
             -j KUBE-MARK-MASQ"
        ));
        w.rule(format_args!("{ext} -j {chain}"));
    }
    let n = svc.endpoints.len();
    for (i, ep) in svc.endpoints.iter().enumerate() {
        let sep = sep_chain(svc, *ep);
        let comment = if large {
            String::new()
        } else {
            format!(
                "-m comment --comment \"{name} -> {ep}:{}\" ",
                svc.target_port
            )
        };
        if i + 1 < n {
            w.rule(format_args!(
                "{chain} {comment}-m statistic --mode random --probability {} -j {sep}",
                probability(n - i)
            ));
        } else {
            w.rule(format_args!("{chain} {comment}-j {sep}"));
        }
    }
    for ep in &svc.endpoints {
        let sep = sep_chain(svc, *ep);
        let comment = if large {
            String::new()
        } else {
            format!("-m comment --comment {name} ")
        };
        w.rule(format_args!("{sep} {comment}-s {ep} -j KUBE-MARK-MASQ"));
        w.rule(format_args!(
            "{sep} {comment}-m {p} -p {p} -j DNAT --to-destination {ep}:{}",
            svc.target_port
        ));
    }
}

fn services_rule(w: &mut Writer, svc: &Svc) {
    let p = svc.protocol.lower();
    w.rule(format_args!(
        "KUBE-SERVICES -m comment --comment \"{} cluster IP\" -m {p} -p {p} -d {} \
         --dport {SERVICE_PORT} -j {}",
        svc.port_name(),
        svc.ip,
        svc_chain(svc)
    ));
}

/// A NodePort's rule in `KUBE-NODEPORTS` (a linear chain, like
/// `KUBE-SERVICES`: one rule per node port, rewritten on every sync).
fn nodeport_rule(w: &mut Writer, svc: &Svc, node_port: u16) {
    let p = svc.protocol.lower();
    w.rule(format_args!(
        "KUBE-NODEPORTS -m comment --comment {} -m {p} -p {p} --dport {node_port} -j {}",
        svc.port_name(),
        ext_chain(svc)
    ));
}

/// The nat table; `write_chains(i)` says whether Service `i`'s own chains
/// are part of this restore (all on a full sync, the changed ones on a
/// partial sync).
fn nat_table(w: &mut Writer, svcs: &[Svc], first: bool, write_chains: &dyn Fn(usize) -> bool) {
    let endpoints: usize = svcs.iter().map(|s| s.endpoints.len()).sum();
    let large = endpoints > LARGE_CLUSTER_ENDPOINTS;
    w.line("*nat");
    if first {
        for b in ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"] {
            w.builtin(b);
        }
    }
    for c in NAT_CHAINS {
        w.chain(c);
    }
    for (i, svc) in svcs.iter().enumerate() {
        if write_chains(i) && !svc.endpoints.is_empty() {
            w.chain(&svc_chain(svc));
            if svc.node_port.is_some() {
                w.chain(&ext_chain(svc));
            }
            for ep in &svc.endpoints {
                w.chain(&sep_chain(svc, *ep));
            }
        }
    }
    if first {
        for (from, comment, to) in NAT_JUMPS {
            w.rule(format_args!(
                "{from} -m comment --comment \"{comment}\" -j {to}"
            ));
        }
    }
    w.rule(format_args!(
        "KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN"
    ));
    w.rule(format_args!(
        "KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}"
    ));
    w.rule(format_args!(
        "KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" \
         -j MASQUERADE --random-fully"
    ));
    w.rule(format_args!("KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}"));
    for (i, svc) in svcs.iter().enumerate() {
        if svc.endpoints.is_empty() {
            continue;
        }
        services_rule(w, svc);
        if let Some(np) = svc.node_port {
            nodeport_rule(w, svc, np);
        }
        if write_chains(i) {
            service_rules(w, svc, large);
        }
    }
    w.rule(format_args!(
        "KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be \
         the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
    ));
    w.line("COMMIT");
}

/// The first (full) load: both tables whole, built-in chains included.
pub fn full(svcs: &[Svc]) -> Ruleset {
    let mut w = Writer::new(svcs.len() * 700 + 4096);
    filter_table(&mut w, true);
    nat_table(&mut w, svcs, true, &|_| true);
    w.done()
}

/// kube-proxy's partial sync after the endpoints of `changed` (indexes
/// into `svcs`) changed: load with `--noflush --counters`.
pub fn partial(svcs: &[Svc], changed: &[usize]) -> Ruleset {
    let mut w = Writer::new(svcs.len() * 160 + 4096);
    filter_table(&mut w, false);
    nat_table(&mut w, svcs, false, &|i| changed.contains(&i));
    w.done()
}

/// Input that empties both tables (flushes every chain, deletes the user
/// chains): the reset between runs.
pub const RESET: &str = "*filter\nCOMMIT\n*nat\nCOMMIT\n";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::model;

    #[test]
    fn probabilities_follow_kube_proxy() {
        assert_eq!(probability(3), "0.3333333333");
        assert_eq!(probability(2), "0.5000000000");
    }

    #[test]
    fn full_and_partial_shapes() {
        let mut svcs = model::fakes(3, 2);
        svcs.push(model::target(&[
            std::net::Ipv4Addr::new(10, 244, 0, 2),
            std::net::Ipv4Addr::new(10, 244, 0, 3),
            std::net::Ipv4Addr::new(10, 244, 0, 4),
        ]));
        let full = full(&svcs);
        let t = &full.text;
        let target_rule = format!(
            "-A KUBE-SERVICES -m comment --comment \"bench/target:http cluster IP\" -m tcp -p tcp \
             -d 10.96.255.250 --dport 80 -j {}",
            svc_chain(&svcs[3])
        );
        assert!(t.contains(&target_rule), "{t}");
        // The target's is the last Service rule, then the NodePorts rule.
        let services: Vec<&str> = t
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SERVICES"))
            .collect();
        assert_eq!(services.len(), 5);
        assert_eq!(services[3], target_rule);
        assert!(services[4].contains("KUBE-NODEPORTS"));
        assert!(t.contains("--probability 0.3333333333 -j KUBE-SEP-"));
        assert!(t.contains("-j DNAT --to-destination 10.244.0.4:8080"));
        assert!(t.contains(":PREROUTING ACCEPT"));
        assert!(svc_chain(&svcs[0]).len() <= 28);
        // Partial: all KUBE-SERVICES rules, one Service's chains.
        let p = partial(&svcs, &[1]);
        assert!(!p.text.contains(":PREROUTING"));
        assert_eq!(
            p.text
                .lines()
                .filter(|l| l.starts_with("-A KUBE-SERVICES"))
                .count(),
            5
        );
        assert!(p.text.contains(&format!(":{} -", svc_chain(&svcs[1]))));
        assert!(!p.text.contains(&format!(":{} -", svc_chain(&svcs[0]))));
    }

    #[test]
    fn nodeports_as_kube_proxy_writes_them() {
        let mut svcs = model::fakes(2, 1);
        svcs[0].node_port = Some(31000);
        let udp = Svc {
            name: "np-udp".into(),
            ip: std::net::Ipv4Addr::new(10, 96, 9, 9),
            endpoints: vec![std::net::Ipv4Addr::new(10, 244, 1, 2)],
            target_port: 9001,
            protocol: model::Proto::Udp,
            node_port: Some(30081),
        };
        svcs.push(udp.clone());
        let t = full(&svcs).text;
        // The chain hashes cover the protocol, as kube-proxy's portProtoHash.
        let svc = svc_chain(&udp);
        let ext = ext_chain(&udp);
        assert_eq!(
            svc,
            format!("KUBE-SVC-{}", hash_prefix("bench/np-udp:httpudp", 16))
        );
        assert_eq!(&ext[9..], &svc[9..]);
        assert_ne!(svc_chain(&svcs[0]), svc);
        assert!(t.contains(&format!(":{ext} - [0:0]")), "{t}");
        // KUBE-NODEPORTS: one rule per node port, in Service order, the
        // UDP target's last.
        let nodeports: Vec<&str> = t
            .lines()
            .filter(|l| l.starts_with("-A KUBE-NODEPORTS"))
            .collect();
        assert_eq!(
            nodeports,
            [
                format!(
                    "-A KUBE-NODEPORTS -m comment --comment bench/svc-0:http -m tcp -p tcp \
                     --dport 31000 -j {}",
                    ext_chain(&svcs[0])
                ),
                format!(
                    "-A KUBE-NODEPORTS -m comment --comment bench/np-udp:http -m udp -p udp \
                     --dport 30081 -j {ext}"
                ),
            ]
        );
        // KUBE-EXT: masquerade (Cluster policy), then the Service chain.
        let ext_rules: Vec<&str> = t
            .lines()
            .filter(|l| l.starts_with(&format!("-A {ext} ")))
            .collect();
        assert_eq!(
            ext_rules,
            [
                format!(
                    "-A {ext} -m comment --comment \"masquerade traffic for bench/np-udp:http \
                     external destinations\" -j KUBE-MARK-MASQ"
                ),
                format!("-A {ext} -j {svc}"),
            ]
        );
        assert!(t.contains("-m udp -p udp -j DNAT --to-destination 10.244.1.2:9001"));
        assert!(t.contains("-j MASQUERADE --random-fully"));
        // A ClusterIP-only Service has no KUBE-EXT chain.
        assert!(!t.contains(&ext_chain(&svcs[1])));
        // Partial syncs rewrite every node port rule too.
        let p = partial(&svcs, &[0]);
        assert_eq!(
            p.text
                .lines()
                .filter(|l| l.starts_with("-A KUBE-NODEPORTS"))
                .count(),
            2
        );
        assert!(!p.text.contains(&format!(":{ext} -")));
    }
}
