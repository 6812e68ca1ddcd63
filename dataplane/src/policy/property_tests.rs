//! Randomized agreement: cyclonus-like generated worlds (namespaces x, y,
//! z; pods a, b, c with random extra labels, some that selectors name only
//! sometimes and one none names, named ports, dual-stack addresses on two
//! nodes), generated policies (targets, peers of every kind incl. ipBlocks
//! with excepts around pod addresses, ports numbered, ranged, named, per
//! protocol) and actions (relabelling, policies added and deleted,
//! recompiled on the same state so stable numbers and changes of the label
//! keys identities count are exercised), with the simulated datapath over
//! the compiled maps compared to the reference evaluator on every probe,
//! and every map write between two compilations checked to open no
//! window. Seeded: a failure names the seed that reproduces it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ferry_ebpf_common::policy::{DIR_EGRESS, DIR_INGRESS};
use ferry_ebpf_common::{PROTO_SCTP, PROTO_TCP, PROTO_UDP};
use serde_json::{Value, json};

use super::compile::Desired;
use super::reference::Reference;
use super::selector::Labels;
use super::simulate::{Probe, simulate};
use super::state::PolicyState;
use super::testkit::*;
use crate::service::model::Protocol;
use crate::service::programmer::addr_words;

/// splitmix64: small, seedable, good enough to spread cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];

fn world(rng: &mut Rng) -> PolicyState {
    let mut s = PolicyState::default();
    for (ni, ns) in NAMESPACES.iter().enumerate() {
        let mut l = labels(&[("ns", ns)]);
        if rng.chance(50) {
            l.insert("team".into(), rng.pick(&["red", "blue"]).to_string());
        }
        if rng.chance(50) {
            l.insert("env".into(), rng.pick(&["prod", "dev"]).to_string());
        }
        // Namespace objects sometimes unknown: their name label remains.
        if rng.chance(90) {
            s.upsert_namespace(super::model::Namespace::new(ns, l));
        }
        for (pi, name) in PODS.iter().enumerate() {
            let mut ips = vec![format!("10.0.{}.{}", ni + 1, pi + 1)];
            if rng.chance(60) {
                ips.push(format!("fd10::{}:{}", ni + 1, pi + 1));
            }
            let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
            let node = if rng.chance(55) { NODE } else { OTHER_NODE };
            let mut p = pod(ns, name, &[("pod", name)], &ips, node);
            if rng.chance(50) {
                p.labels
                    .insert("app".into(), rng.pick(&["web", "db"]).to_string());
            }
            // Labels selectors name only sometimes (identities must count
            // them exactly then) and one none names (a label of its own).
            if rng.chance(60) {
                p.labels
                    .insert("hash".into(), rng.pick(&["h1", "h2", "h3"]).to_string());
            }
            if rng.chance(50) {
                p.labels
                    .insert("tier".into(), rng.pick(&["front", "back"]).to_string());
            }
            p.labels.insert("uid".into(), format!("{ns}-{name}"));
            for (n, proto, port) in [
                ("serve-80-tcp", Protocol::Tcp, 80),
                ("serve-81-udp", Protocol::Udp, 81),
                ("serve-81-tcp", Protocol::Tcp, 81),
                ("serve-80-sctp", Protocol::Sctp, 80),
                ("web", Protocol::Tcp, *rng.pick(&[80, 81, 8080])),
            ] {
                if rng.chance(60) {
                    p.named_ports.push(named(n, proto, port));
                }
            }
            p.named_ports.sort();
            s.upsert_pod(p);
        }
        // A replica of one of them: the same labels and ports but its own
        // `uid` and, sometimes, another `hash`.
        let pi = rng.below(PODS.len());
        let mut twin = s
            .pods()
            .find(|p| p.namespace == *ns && p.name == PODS[pi])
            .cloned()
            .expect("the pod just added");
        twin.name = format!("{}-r", PODS[pi]);
        twin.labels
            .insert("uid".into(), format!("{ns}-{}", twin.name));
        if rng.chance(50) {
            twin.labels
                .insert("hash".into(), rng.pick(&["h1", "h2", "h3"]).to_string());
        }
        twin.ips = twin
            .ips
            .iter()
            .map(|a| match a {
                IpAddr::V4(_) => ip(&format!("10.0.{}.{}", ni + 1, pi + 4)),
                IpAddr::V6(_) => ip(&format!("fd10::{}:{}", ni + 1, pi + 4)),
            })
            .collect();
        twin.node_name = if rng.chance(55) { NODE } else { OTHER_NODE }.into();
        s.upsert_pod(twin);
    }
    if rng.chance(20) {
        let mut h = pod("x", "host", &[("pod", "a")], &["192.168.0.1"], NODE);
        h.host_network = true;
        s.upsert_pod(h);
    }
    s
}

fn selector(rng: &mut Rng, key: &str, values: &[&str]) -> Value {
    match rng.below(8) {
        6 => json!({"matchLabels": {"tier": rng.pick(&["front", "back"])}}),
        7 => {
            let op = *rng.pick(&["In", "NotIn", "Exists", "DoesNotExist"]);
            let hash = *rng.pick(&["h1", "h2", "h3"]);
            match op {
                "In" | "NotIn" => {
                    json!({"matchExpressions": [{"key": "hash", "operator": op, "values": [hash]}]})
                }
                _ => json!({"matchExpressions": [{"key": "hash", "operator": op}]}),
            }
        }
        0 => json!({}),
        1 | 2 => json!({"matchLabels": {key: rng.pick(values)}}),
        3 => json!({"matchExpressions": [{"key": key, "operator": rng.pick(&["In", "NotIn"]),
                                          "values": [rng.pick(values), rng.pick(values)]}]}),
        4 => json!({"matchExpressions": [{"key": rng.pick(&["app", "team", key]),
                                          "operator": rng.pick(&["Exists", "DoesNotExist"])}]}),
        _ => json!({"matchLabels": {"app": rng.pick(&["web", "db"])}}),
    }
}

fn ns_selector(rng: &mut Rng) -> Value {
    if rng.chance(30) {
        json!({"matchLabels": {"kubernetes.io/metadata.name": rng.pick(&NAMESPACES)}})
    } else if rng.chance(30) {
        json!({"matchLabels": {"team": rng.pick(&["red", "blue"])}})
    } else if rng.chance(20) {
        json!({"matchExpressions": [{"key": "env", "operator": rng.pick(&["Exists", "DoesNotExist"])}]})
    } else {
        selector(rng, "ns", &NAMESPACES)
    }
}

fn ip_block(rng: &mut Rng) -> Value {
    let n = 1 + rng.below(3);
    let p = 1 + rng.below(3);
    let (cidr, excepts): (String, Vec<String>) = match rng.below(7) {
        0 => (
            "10.0.0.0/16".into(),
            vec![format!("10.0.{n}.0/24"), format!("10.0.{n}.{p}/32")],
        ),
        1 => (format!("10.0.{n}.0/24"), vec![format!("10.0.{n}.{p}/32")]),
        2 => (format!("10.0.{n}.{p}/32"), vec![]),
        3 => ("0.0.0.0/0".into(), vec![format!("10.0.{n}.0/24")]),
        4 => ("fd10::/64".into(), vec![format!("fd10::{n}:0/112")]),
        5 => ("::/0".into(), vec![format!("fd10::{n}:{p}/128")]),
        _ => (format!("fd10::{n}:{p}/127"), vec![]),
    };
    let keep: Vec<String> = excepts.into_iter().filter(|_| rng.chance(60)).collect();
    if keep.is_empty() {
        json!({"cidr": cidr})
    } else {
        json!({"cidr": cidr, "except": keep})
    }
}

fn peer(rng: &mut Rng) -> Value {
    match rng.below(5) {
        0 => json!({"podSelector": selector(rng, "pod", &PODS)}),
        1 => json!({"namespaceSelector": ns_selector(rng)}),
        2 => {
            json!({"namespaceSelector": ns_selector(rng), "podSelector": selector(rng, "pod", &PODS)})
        }
        _ => json!({"ipBlock": ip_block(rng)}),
    }
}

fn port(rng: &mut Rng) -> Value {
    let mut v = json!({});
    match rng.below(4) {
        0 => {}
        1 => v["protocol"] = json!("TCP"),
        2 => v["protocol"] = json!("UDP"),
        _ => v["protocol"] = json!("SCTP"),
    }
    match rng.below(6) {
        0 => {}
        1 => v["port"] = json!(rng.pick(&[80, 81])),
        2 => {
            v["port"] = json!(rng.pick(&[79, 80]));
            v["endPort"] = json!(rng.pick(&[80, 81, 8080]));
        }
        _ => {
            v["port"] = json!(rng.pick(&[
                "serve-80-tcp",
                "serve-81-udp",
                "serve-81-tcp",
                "serve-80-sctp",
                "web",
                "nothing"
            ]))
        }
    }
    v
}

fn rules(rng: &mut Rng, peers_field: &str) -> Value {
    let mut out = Vec::new();
    for _ in 0..rng.below(3) {
        let mut r = json!({});
        if rng.chance(75) {
            let peers: Vec<Value> = (0..rng.below(3)).map(|_| peer(rng)).collect();
            r[peers_field] = json!(peers);
        }
        if rng.chance(70) {
            let ports: Vec<Value> = (0..1 + rng.below(2)).map(|_| port(rng)).collect();
            r["ports"] = json!(ports);
        }
        out.push(r);
    }
    json!(out)
}

fn policy_json(rng: &mut Rng, name: &str) -> Value {
    let mut spec = json!({"podSelector": selector(rng, "pod", &PODS)});
    match rng.below(4) {
        0 => {}
        1 => spec["policyTypes"] = json!(["Ingress"]),
        2 => spec["policyTypes"] = json!(["Egress"]),
        _ => spec["policyTypes"] = json!(["Ingress", "Egress"]),
    }
    if rng.chance(80) {
        spec["ingress"] = rules(rng, "from");
    }
    if rng.chance(60) {
        spec["egress"] = rules(rng, "to");
    }
    json!({"metadata": {"namespace": rng.pick(&NAMESPACES), "name": name}, "spec": spec})
}

/// One action between compilations, as cyclonus's: relabel a pod or a
/// namespace (under a key selectors name or not), add or delete a policy.
fn act(rng: &mut Rng, s: &mut PolicyState, serial: &mut u32) {
    match rng.below(4) {
        0 => {
            let pods: Vec<_> = s.pods().filter(|p| !p.host_network).cloned().collect();
            let mut p = rng.pick(&pods).clone();
            let (key, values) = *rng.pick(&[
                ("app", &["web", "db", "other"][..]),
                ("hash", &["h1", "h2", "h3"][..]),
                ("tier", &["front", "back"][..]),
                ("uid", &["changed"][..]),
            ]);
            if rng.chance(20) {
                p.labels.remove(key);
            } else {
                p.labels.insert(key.into(), rng.pick(values).to_string());
            }
            s.upsert_pod(p);
        }
        1 => {
            let ns = *rng.pick(&NAMESPACES);
            let mut l = labels(&[("ns", ns)]);
            l.insert("team".into(), rng.pick(&["red", "blue"]).to_string());
            if rng.chance(50) {
                l.insert("env".into(), rng.pick(&["prod", "dev"]).to_string());
            }
            s.upsert_namespace(super::model::Namespace::new(ns, l));
        }
        2 => {
            let names: Vec<_> = s
                .policies()
                .map(|(_, p)| (p.namespace.clone(), p.name.clone()))
                .collect();
            if !names.is_empty() {
                let (ns, name) = rng.pick(&names).clone();
                s.delete_policy(&ns, &name);
            }
        }
        _ => {
            *serial += 1;
            s.upsert_policy(policy(policy_json(rng, &format!("p{serial}"))));
        }
    }
}

fn addresses(s: &PolicyState) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = s.pods().flat_map(|p| p.ips.clone()).collect();
    v.extend(
        [
            "10.0.9.9",
            "10.1.0.1",
            "192.168.0.1",
            "2001:db8::1",
            "fd10::9:9",
            "fd00::1",
        ]
        .map(ip),
    );
    v.sort();
    v.dedup();
    v
}

/// Compiles and compares every probe in both directions; returns the
/// number of comparisons and the compiled maps.
fn check(s: &mut PolicyState, rng: &mut Rng, seed: u64) -> (usize, Desired) {
    let desired = s.compile(NODE, &node_addrs()).expect("compile");
    assert!(
        desired.problems.is_empty(),
        "seed {seed}: {:?}",
        desired.problems
    );
    let reference = Reference::new(s, NODE, &node_addrs());
    let addrs = addresses(s);
    let mut n = 0;
    let protos = [PROTO_TCP, PROTO_UDP, PROTO_SCTP, 1];
    for src in &addrs {
        for dst in &addrs {
            if src.is_ipv4() != dst.is_ipv4() {
                continue;
            }
            // Every pair, with a few random protocol/port choices each.
            for _ in 0..3 {
                let proto = *rng.pick(&protos);
                let dport = if proto == 1 {
                    0
                } else {
                    *rng.pick(&[79, 80, 81, 8080, 9090])
                };
                let p = Probe {
                    src: *src,
                    dst: *dst,
                    proto,
                    dport,
                };
                for dir in [DIR_INGRESS, DIR_EGRESS] {
                    let sim = simulate(&desired, dir, &p);
                    let want = reference.allows(dir, &p);
                    assert_eq!(
                        sim.allows(),
                        want,
                        "seed {seed}: {p:?} dir {dir}: datapath {sim:?}, reference {want}\npolicies: {:#?}\npods: {:#?}",
                        s.policies().collect::<Vec<_>>(),
                        s.pods().collect::<Vec<_>>()
                    );
                    n += 1;
                }
            }
        }
    }
    (n, desired)
}

/// Whether two pods whose labels differ share an identity (labels no
/// selector names were ignored).
fn merged_identities(s: &PolicyState, d: &Desired) -> bool {
    let mut seen: BTreeMap<u32, &Labels> = BTreeMap::new();
    for p in s.pods().filter(|p| !p.host_network) {
        for a in &p.ips {
            let Some(id) = d.identities.get(&addr_words(*a)) else {
                continue;
            };
            match seen.get(id) {
                Some(l) if **l != p.labels => return true,
                _ => {
                    seen.insert(*id, &p.labels);
                }
            }
        }
    }
    false
}

/// Probes for the window check: every pair of addresses, one random
/// protocol and port each.
fn window_probes(s: &PolicyState, rng: &mut Rng) -> Vec<Probe> {
    let addrs = addresses(s);
    let mut out = Vec::new();
    for src in &addrs {
        for dst in &addrs {
            if src.is_ipv4() == dst.is_ipv4() {
                let proto = *rng.pick(&[PROTO_TCP, PROTO_UDP, PROTO_SCTP]);
                let dport = *rng.pick(&[80, 81, 8080]);
                out.push(Probe {
                    src: *src,
                    dst: *dst,
                    proto,
                    dport,
                });
            }
        }
    }
    out
}

#[test]
fn compiled_maps_agree_with_the_reference_on_generated_cases() {
    let mut comparisons = 0;
    let mut denied_somewhere = 0;
    let mut merged = 0;
    let mut writes = 0;
    for seed in 0..40u64 {
        let mut rng = Rng(seed);
        let mut s = world(&mut rng);
        let mut serial = 0;
        for _ in 0..1 + rng.below(4) {
            serial += 1;
            s.upsert_policy(policy(policy_json(&mut rng, &format!("p{serial}"))));
        }
        let (n, mut last) = check(&mut s, &mut rng, seed);
        comparisons += n;
        // Actions on the same state, recompiled: stable numbers in play,
        // and the label keys identities count changing; the programmer's
        // writes from one compilation to the next open no window.
        for _ in 0..5 {
            act(&mut rng, &mut s, &mut serial);
            let (n, d) = check(&mut s, &mut rng, seed);
            comparisons += n;
            let probes = window_probes(&s, &mut rng);
            writes += check_transition(&last, &d, &probes);
            last = d;
        }
        let d = s.compile(NODE, &node_addrs()).expect("compile");
        if !d.rules.is_empty() || d.endpoints.values().any(|e| e.flags != 0) {
            denied_somewhere += 1;
        }
        if merged_identities(&s, &d) {
            merged += 1;
        }
    }
    eprintln!(
        "{comparisons} comparisons, {denied_somewhere} worlds with isolation, {merged} with pods \
         of different labels sharing an identity, {writes} map writes checked for windows"
    );
    // The generator must exercise the compiler, not only empty maps, and
    // identities made of fewer labels than pods carry.
    assert!(comparisons > 100_000, "{comparisons}");
    assert!(denied_somewhere > 20, "{denied_somewhere}");
    assert!(merged > 20, "{merged}");
    assert!(writes > 400, "{writes}");
}
