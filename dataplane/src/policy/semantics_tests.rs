//! Every semantic point of networking.k8s.io/v1 NetworkPolicy (issue 13,
//! section 1), each checked three ways: the expected verdict, the
//! simulated datapath over the compiled maps, and the reference evaluator
//! (the testkit panics when the last two disagree).

use std::collections::BTreeSet;
use std::net::IpAddr;

use ferry_ebpf_common::policy::{DIR_EGRESS, DIR_INGRESS, IDENTITY_HOST};
use serde_json::json;

use super::compile::Desired;
use super::model::{Kind, Problem};
use super::simulate::{Probe, Verdict};
use super::state::{Limits, PolicyState};
use super::testkit::*;
use crate::service::programmer::addr_words;

fn deny_all(ns: &str, name: &str, types: &[&str]) -> serde_json::Value {
    json!({"metadata": {"namespace": ns, "name": name},
           "spec": {"podSelector": {}, "policyTypes": types}})
}

#[test]
fn without_policies_everything_passes_and_only_local_pods_are_endpoints() {
    let mut s = xyz();
    let w = compiled(&mut s);
    assert!(w.allowed(&tcp(at("y/b"), at("x/a"), 80)));
    assert_eq!(
        w.verdict(DIR_INGRESS, &tcp(at("y/b"), at("x/a"), 80)),
        Verdict::NotIsolated
    );
    assert_eq!(
        w.verdict(DIR_INGRESS, &tcp(at("x/a"), at("z/a"), 80)),
        Verdict::NotJudged
    );
    // x/a, x/b, x/c, y/a: two addresses each.
    assert_eq!(w.desired.endpoints.len(), 8);
    // Every pod address has an identity, and the node's are the host's.
    assert_eq!(w.desired.identities.len(), 18 + 2);
    assert_eq!(
        w.desired.identities[&addr_words(ip("192.168.0.1"))],
        IDENTITY_HOST
    );
    // Pods with equal labels in one namespace would share; here all differ.
    assert!(w.desired.rules.is_empty());
}

#[test]
fn deny_all_ingress_isolates_ingress_only_and_keeps_host_and_self() {
    let mut s = xyz();
    s.upsert_policy(policy(deny_all("x", "deny", &["Ingress"])));
    let w = compiled(&mut s);
    let p = tcp(at("y/b"), at("x/a"), 80);
    assert_eq!(w.verdict(DIR_INGRESS, &p), Verdict::Denied);
    assert!(!w.allowed(&p));
    // Egress from x is not isolated.
    assert!(w.allowed(&tcp(at("x/a"), at("y/b"), 80)));
    // The node (kubelet probes) and the pod itself.
    assert_eq!(
        w.verdict(DIR_INGRESS, &tcp(ip("192.168.0.1"), at("x/a"), 80)),
        Verdict::Host
    );
    assert_eq!(
        w.verdict(DIR_INGRESS, &tcp(at("x/a"), at("x/a"), 80)),
        Verdict::SelfTraffic
    );
    // Other namespaces are not selected.
    assert!(w.allowed(&tcp(at("x/a"), at("y/a"), 80)));
}

#[test]
fn deny_all_egress_isolates_egress_only_and_host_is_no_exception() {
    let mut s = xyz();
    s.upsert_policy(policy(deny_all("x", "deny", &["Egress"])));
    let w = compiled(&mut s);
    assert!(!w.allowed(&tcp(at("x/a"), at("y/a"), 80)));
    assert!(!w.egress(&tcp(at("x/a"), ip("192.168.0.1"), 10250)));
    assert!(w.allowed(&tcp(at("y/a"), at("x/a"), 80)));
}

#[test]
fn policy_types_default_and_ignore_rules_of_other_directions() {
    // No policyTypes, egress rules present: both directions isolated.
    let mut s = xyz();
    s.upsert_policy(policy(json!({
        "metadata": {"namespace": "x", "name": "p"},
        "spec": {"podSelector": {}, "egress": [{"to": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}
    })));
    let w = compiled(&mut s);
    assert!(!w.ingress(&tcp(at("x/b"), at("x/a"), 80)));
    assert!(w.egress(&tcp(at("x/a"), at("x/b"), 80)));
    assert!(!w.egress(&tcp(at("x/a"), at("x/c"), 80)));

    // policyTypes [Egress] with ingress rules: ingress not isolated, the
    // ingress rules ignored.
    let mut s = xyz();
    s.upsert_policy(policy(json!({
        "metadata": {"namespace": "x", "name": "p"},
        "spec": {"podSelector": {}, "policyTypes": ["Egress"],
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}
    })));
    let w = compiled(&mut s);
    assert_eq!(
        w.verdict(DIR_INGRESS, &tcp(at("x/c"), at("x/a"), 80)),
        Verdict::NotIsolated
    );
    assert!(!w.egress(&tcp(at("x/a"), at("x/b"), 80)));

    // policyTypes [Ingress] with egress rules: egress not isolated.
    let mut s = xyz();
    s.upsert_policy(policy(json!({
        "metadata": {"namespace": "x", "name": "p"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"],
                 "egress": [{"to": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}
    })));
    let w = compiled(&mut s);
    assert!(w.egress(&tcp(at("x/a"), at("x/c"), 80)));
    assert!(!w.ingress(&tcp(at("x/c"), at("x/a"), 80)));
}

#[test]
fn policies_are_additive() {
    let mut s = xyz();
    for (name, from) in [("from-b", "b"), ("from-c", "c")] {
        s.upsert_policy(policy(json!({
            "metadata": {"namespace": "x", "name": name},
            "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": from}}}]}]}
        })));
    }
    let w = compiled(&mut s);
    assert!(w.allowed(&tcp(at("x/b"), at("x/a"), 80)));
    assert!(w.allowed(&tcp(at("x/c"), at("x/a"), 80)));
    assert!(!w.allowed(&tcp(at("y/b"), at("x/a"), 80)));
    // x/b is selected by neither.
    assert!(w.allowed(&tcp(at("y/b"), at("x/b"), 80)));
    // Each allowing entry names its policy.
    let n = s_number(&w, "from-c");
    assert_eq!(
        w.verdict(DIR_INGRESS, &tcp(at("x/c"), at("x/a"), 80)),
        Verdict::Allowed { policy: n }
    );
}

fn s_number(w: &World<'_>, name: &str) -> u32 {
    w.desired
        .policies
        .iter()
        .find(|(_, p)| p.name == name)
        .map(|(n, _)| *n)
        .expect("policy number")
}

#[test]
fn selectors_in_one_peer_are_anded_peers_are_ored() {
    let mut s = xyz();
    s.upsert_policy(policy(json!({
        "metadata": {"namespace": "x", "name": "and"},
        "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
                 "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}},
                                        "podSelector": {"matchLabels": {"pod": "b"}}}]}]}
    })));
    s.upsert_policy(policy(json!({
        "metadata": {"namespace": "x", "name": "or"},
        "spec": {"podSelector": {"matchLabels": {"pod": "b"}},
                 "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}},
                                       {"podSelector": {"matchLabels": {"pod": "c"}}}]}]}
    })));
    let w = compiled(&mut s);
    assert!(w.allowed(&tcp(at("y/b"), at("x/a"), 80)));
    assert!(!w.allowed(&tcp(at("y/c"), at("x/a"), 80)));
    assert!(!w.allowed(&tcp(at("z/b"), at("x/a"), 80)));
    assert!(!w.allowed(&tcp(at("x/b"), at("x/a"), 80)));
    // OR: every pod of y, and c of the policy's own namespace only.
    assert!(w.allowed(&tcp(at("y/a"), at("x/b"), 80)));
    assert!(w.allowed(&tcp(at("y/c"), at("x/b"), 80)));
    assert!(w.allowed(&tcp(at("x/c"), at("x/b"), 80)));
    assert!(!w.allowed(&tcp(at("z/c"), at("x/b"), 80)));
    assert!(!w.allowed(&tcp(at("x/a"), at("x/b"), 80)));
}

#[test]
fn match_expressions_operators() {
    let mut s = xyz();
    s.upsert_policy(policy(json!({
        "metadata": {"namespace": "x", "name": "exprs"},
        "spec": {"podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["a"]}]},
                 "ingress": [
                    {"from": [{"namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "NotIn", "values": ["x", "y"]}]},
                               "podSelector": {"matchExpressions": [{"key": "pod", "operator": "Exists"}]}}]},
                    {"from": [{"podSelector": {"matchExpressions": [{"key": "pod", "operator": "NotIn", "values": ["b"]},
                                                                     {"key": "missing", "operator": "DoesNotExist"}]}}]}]}
    })));
    let w = compiled(&mut s);
    assert!(w.allowed(&tcp(at("z/b"), at("x/a"), 80)));
    assert!(!w.allowed(&tcp(at("y/b"), at("x/a"), 80)));
    assert!(w.allowed(&tcp(at("x/c"), at("x/a"), 80)));
    assert!(!w.allowed(&tcp(at("x/b"), at("x/a"), 80)));
}

#[test]
fn namespace_name_label_is_always_there() {
    let mut s = xyz();
    // Namespace z's object is not known yet: its name label still is.
    s.delete_namespace("z");
    s.upsert_policy(policy(json!({
        "metadata": {"namespace": "x", "name": "by-name"},
        "spec": {"podSelector": {},
                 "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}}},
                                       {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "z"}}}]}]}
    })));
    let w = compiled(&mut s);
    assert!(w.allowed(&tcp(at("y/c"), at("x/a"), 80)));
    assert!(w.allowed(&tcp(at("z/c"), at("x/a"), 80)));
    assert!(!w.allowed(&tcp(at("x/c"), at("x/a"), 80)));
}

#[test]
fn empty_namespace_selector_is_every_pod_but_not_other_addresses() {
    let mut s = xyz();
    s.upsert_policy(policy(json!({
        "metadata": {"namespace": "x", "name": "all-pods"},
        "spec": {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]}
    })));
    let w = compiled(&mut s);
    assert!(w.allowed(&tcp(at("z/c"), at("x/a"), 80)));
    assert!(w.allowed(&tcp(at6("z/c"), at6("x/a"), 80)));
    assert!(!w.allowed(&tcp(ip("10.9.9.9"), at("x/a"), 80)));
}

#[test]
fn empty_from_and_empty_peer_list_allow_everyone() {
    let mut s = xyz();
    s.upsert_policy(policy(json!({
        "metadata": {"namespace": "x", "name": "any"},
        "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]}
    })));
    let w = compiled(&mut s);
    assert!(w.allowed(&tcp(ip("203.0.113.7"), at("x/a"), 80)));
    assert!(w.allowed(&tcp(ip("2001:db8::7"), at6("x/a"), 80)));
    assert!(!w.allowed(&tcp(ip("203.0.113.7"), at("x/a"), 81)));
}

#[test]
fn ip_block_with_except_v4_includes_pod_addresses() {
    let mut s = xyz();
    s.upsert_policy(policy(json!({
        "metadata": {"namespace": "x", "name": "cidr"},
        "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
                 "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.2.0/24", "10.0.3.3/32"]}}]}]}
    })));
    let w = compiled(&mut s);
    // Pods reached by their own address are inside ipBlocks.
    assert!(w.allowed(&tcp(at("x/b"), at("x/a"), 80)));
    assert!(w.allowed(&tcp(at("z/a"), at("x/a"), 80)));
    assert!(!w.allowed(&tcp(at("z/c"), at("x/a"), 80)));
    assert!(!w.allowed(&tcp(at("y/b"), at("x/a"), 80)));
    assert!(w.allowed(&tcp(ip("10.0.77.1"), at("x/a"), 80)));
    assert!(!w.allowed(&tcp(ip("10.1.0.1"), at("x/a"), 80)));
    // A v4 block holds no v6 address.
    assert!(!w.allowed(&tcp(at6("x/b"), at6("x/a"), 80)));
}

#[test]
fn ip_block_with_except_v6_and_families_kept_apart() {
    let mut s = xyz();
    s.upsert_policy(policy(json!({
        "metadata": {"namespace": "x", "name": "cidr6"},
        "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
                 "ingress": [{"from": [{"ipBlock": {"cidr": "fd10::/64", "except": ["fd10::2:0/112"]}}]}]}
    })));
    s.upsert_policy(policy(json!({
        "metadata": {"namespace": "x", "name": "all6"},
        "spec": {"podSelector": {"matchLabels": {"pod": "b"}},
                 "ingress": [{"from": [{"ipBlock": {"cidr": "::/0"}}]}]}
    })));
    s.upsert_policy(policy(json!({
        "metadata": {"namespace": "x", "name": "all4"},
        "spec": {"podSelector": {"matchLabels": {"pod": "c"}},
                 "ingress": [{"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]}
    })));
    let w = compiled(&mut s);
    assert!(w.allowed(&tcp(at6("z/c"), at6("x/a"), 80)));
    assert!(!w.allowed(&tcp(at6("y/c"), at6("x/a"), 80)));
    assert!(!w.allowed(&tcp(ip("fd11::1"), at6("x/a"), 80)));
    // ::/0 holds every IPv6 address and no IPv4 one, though the maps
    // store IPv4 inside the IPv6 space.
    assert!(w.allowed(&tcp(ip("2001:db8::1"), at6("x/b"), 80)));
    assert!(!w.allowed(&tcp(ip("203.0.113.1"), at("x/b"), 80)));
    assert!(!w.allowed(&tcp(at("y/c"), at("x/b"), 80)));
    // 0.0.0.0/0 holds every IPv4 address and no IPv6 one.
    assert!(w.allowed(&tcp(ip("203.0.113.1"), at("x/c"), 80)));
    assert!(!w.allowed(&tcp(ip("2001:db8::1"), at6("x/c"), 80)));
}

#[test]
fn egress_ip_block_and_pod_peer_to_the_same_pod() {
    let mut s = xyz();
    s.upsert_policy(policy(json!({
        "metadata": {"namespace": "x", "name": "out"},
        "spec": {"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
                 "egress": [{"to": [{"ipBlock": {"cidr": "10.0.3.0/24", "except": ["10.0.3.2/32"]}}], "ports": [{"port": 80}]},
                            {"to": [{"podSelector": {"matchLabels": {"pod": "b"}}, "namespaceSelector": {}}], "ports": [{"port": 81}]}]}
    })));
    let w = compiled(&mut s);
    assert!(w.allowed(&tcp(at("x/a"), at("z/a"), 80)));
    assert!(!w.allowed(&tcp(at("x/a"), at("z/b"), 80)));
    assert!(w.allowed(&tcp(at("x/a"), at("z/b"), 81)));
    assert!(!w.allowed(&tcp(at("x/a"), at("z/a"), 81)));
    assert!(w.allowed(&tcp(at("x/a"), ip("10.0.3.200"), 80)));
}

#[test]
fn numbered_ports_and_protocols() {
    let mut s = xyz();
    s.upsert_policy(policy(json!({
        "metadata": {"namespace": "x", "name": "ports"},
        "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
                 "ingress": [{"ports": [{"port": 80}, {"protocol": "UDP", "port": 81}, {"protocol": "SCTP", "port": 82}]}]}
    })));
    let w = compiled(&mut s);
    let src = at("y/b");
    let dst = at("x/a");
    assert!(w.allowed(&tcp(src, dst, 80)));
    assert!(!w.allowed(&tcp(src, dst, 81)));
    assert!(!w.allowed(&udp(src, dst, 80)));
    assert!(w.allowed(&udp(src, dst, 81)));
    // A UDP or SCTP rule never opens TCP.
    assert!(!w.allowed(&tcp(src, dst, 82)));
    assert!(w.allowed(&sctp(src, dst, 82)));
    assert!(!w.allowed(&sctp(src, dst, 80)));
    // No rule here names ICMP.
    let icmp = Probe {
        proto: 1,
        ..tcp(src, dst, 0)
    };
    assert!(!w.allowed(&icmp));
}

#[test]
fn protocol_without_port_and_rule_without_ports() {
    let mut s = xyz();
    s.upsert_policy(policy(json!({
        "metadata": {"namespace": "x", "name": "udp-any"},
        "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
                 "ingress": [{"ports": [{"protocol": "UDP"}]}]}
    })));
    s.upsert_policy(policy(json!({
        "metadata": {"namespace": "x", "name": "all"},
        "spec": {"podSelector": {"matchLabels": {"pod": "b"}},
                 "ingress": [{"from": [{"podSelector": {}}]}]}
    })));
    let w = compiled(&mut s);
    assert!(w.allowed(&udp(at("z/a"), at("x/a"), 53)));
    assert!(w.allowed(&udp(at("z/a"), at("x/a"), 65535)));
    assert!(!w.allowed(&tcp(at("z/a"), at("x/a"), 53)));
    // No ports: every protocol, ICMP too.
    let icmp = Probe {
        proto: 1,
        ..tcp(at("x/c"), at("x/b"), 0)
    };
    assert!(w.allowed(&icmp));
    assert!(w.allowed(&sctp(at("x/c"), at("x/b"), 9)));
    assert!(!w.allowed(&icmp_from(at("y/c"), at("x/b"))));
}

fn icmp_from(src: std::net::IpAddr, dst: std::net::IpAddr) -> Probe {
    Probe {
        proto: 1,
        ..tcp(src, dst, 0)
    }
}

#[test]
fn end_port_ranges() {
    let mut s = xyz();
    s.upsert_policy(policy(json!({
        "metadata": {"namespace": "x", "name": "range"},
        "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
                 "ingress": [{"ports": [{"port": 80, "endPort": 81}, {"port": 1000, "endPort": 2047},
                                        {"protocol": "UDP", "port": 33333, "endPort": 65535}]}]}
    })));
    let w = compiled(&mut s);
    let (src, dst) = (at("y/b"), at("x/a"));
    for (port, want) in [
        (79, false),
        (80, true),
        (81, true),
        (82, false),
        (999, false),
        (1000, true),
        (1024, true),
        (2047, true),
        (2048, false),
    ] {
        assert_eq!(w.allowed(&tcp(src, dst, port)), want, "tcp {port}");
    }
    assert!(!w.allowed(&udp(src, dst, 33332)));
    assert!(w.allowed(&udp(src, dst, 33333)));
    assert!(w.allowed(&udp(src, dst, 65535)));
    assert!(!w.allowed(&tcp(src, dst, 40000)));
}

#[test]
fn named_ports_ingress_resolve_on_the_destination_itself() {
    let mut s = xyz();
    s.upsert_policy(policy(json!({
        "metadata": {"namespace": "x", "name": "named-in"},
        "spec": {"podSelector": {},
                 "ingress": [{"ports": [{"port": "web"}, {"protocol": "UDP", "port": "serve-81-udp"},
                                        {"protocol": "UDP", "port": "serve-80-tcp"}]}]}
    })));
    let w = compiled(&mut s);
    // b serves web on 8080, c on 9090, a has no `web`.
    assert!(w.allowed(&tcp(at("z/a"), at("x/b"), 8080)));
    assert!(!w.allowed(&tcp(at("z/a"), at("x/b"), 9090)));
    assert!(w.allowed(&tcp(at("z/a"), at("x/c"), 9090)));
    assert!(!w.allowed(&tcp(at("z/a"), at("x/c"), 8080)));
    assert!(!w.allowed(&tcp(at("z/a"), at("x/a"), 8080)));
    assert!(w.allowed(&udp(at("z/a"), at("x/a"), 81)));
    // The name exists only for TCP: a UDP rule with it opens nothing.
    assert!(!w.allowed(&udp(at("z/a"), at("x/a"), 80)));
    // Different own ports, different sets.
    let sets: std::collections::BTreeSet<u32> =
        w.desired.endpoints.values().map(|e| e.set).collect();
    assert!(sets.len() >= 3, "{sets:?}");
}

#[test]
fn named_ports_egress_resolve_on_each_destination() {
    let mut s = xyz();
    s.upsert_policy(policy(json!({
        "metadata": {"namespace": "x", "name": "named-out"},
        "spec": {"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
                 "egress": [{"to": [{"namespaceSelector": {}}], "ports": [{"port": "web"}]},
                            {"ports": [{"protocol": "SCTP", "port": "serve-80-sctp"}]},
                            {"to": [{"ipBlock": {"cidr": "10.0.2.0/24"}}], "ports": [{"protocol": "UDP", "port": "serve-81-udp"}]}]}
    })));
    let w = compiled(&mut s);
    assert!(w.allowed(&tcp(at("x/a"), at("z/b"), 8080)));
    assert!(!w.allowed(&tcp(at("x/a"), at("z/b"), 9090)));
    assert!(w.allowed(&tcp(at("x/a"), at("y/c"), 9090)));
    assert!(!w.allowed(&tcp(at("x/a"), at("y/a"), 8080)));
    // No peers, named port: only pods that have it.
    assert!(w.allowed(&sctp(at("x/a"), at("z/c"), 80)));
    assert!(!w.allowed(&sctp(at("x/a"), ip("10.9.9.9"), 80)));
    // ipBlock with a named port: pods inside the block, not other hosts.
    assert!(w.allowed(&udp(at("x/a"), at("y/c"), 81)));
    assert!(!w.allowed(&udp(at("x/a"), at("z/c"), 81)));
    assert!(!w.allowed(&udp(at("x/a"), ip("10.0.2.99"), 81)));
}

#[test]
fn named_port_resolving_to_nothing_isolates_and_allows_nothing() {
    let mut s = xyz();
    s.upsert_policy(policy(json!({
        "metadata": {"namespace": "x", "name": "nothing"},
        "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
                 "ingress": [{"ports": [{"port": "no-such-port"}]}]}
    })));
    let w = compiled(&mut s);
    assert_eq!(
        w.verdict(DIR_INGRESS, &tcp(at("z/a"), at("x/a"), 80)),
        Verdict::Denied
    );
    assert!(w.desired.rules.is_empty());
    assert!(w.desired.problems.is_empty());
}

#[test]
fn host_network_pods_are_neither_endpoints_nor_identities() {
    let mut s = xyz();
    let mut h = pod("x", "h", &[("pod", "a")], &["192.168.0.2"], NODE);
    h.host_network = true;
    s.upsert_pod(h);
    s.upsert_policy(policy(deny_all("x", "deny", &["Ingress", "Egress"])));
    s.upsert_policy(policy(json!({
        "metadata": {"namespace": "x", "name": "to-a"},
        "spec": {"podSelector": {},
                 "egress": [{"to": [{"podSelector": {"matchLabels": {"pod": "a"}}}]}]}
    })));
    let w = compiled(&mut s);
    let h_addr = ip("192.168.0.2");
    assert!(!w.desired.endpoints.contains_key(&addr_words(h_addr)));
    assert!(!w.desired.identities.contains_key(&addr_words(h_addr)));
    assert!(w.egress(&tcp(at("x/b"), at("x/a"), 80)));
    assert!(!w.egress(&tcp(at("x/b"), h_addr, 80)));
}

#[test]
fn remote_endpoints_are_judged_on_their_node() {
    let mut s = xyz();
    s.upsert_policy(policy(deny_all("z", "deny", &["Ingress"])));
    let w = compiled(&mut s);
    // z's pods are on the other node: not judged here (their node does).
    assert_eq!(
        w.verdict(DIR_INGRESS, &tcp(at("x/a"), at("z/a"), 80)),
        Verdict::NotJudged
    );
    let desired = s.compile(OTHER_NODE, &[ip("192.168.0.9")]).unwrap();
    assert_eq!(
        super::simulate::simulate(&desired, DIR_INGRESS, &tcp(at("x/a"), at("z/a"), 80)),
        Verdict::Denied
    );
}

#[test]
fn invalid_policy_fails_closed_and_is_reported() {
    let mut s = xyz();
    let np: k8s_openapi::api::networking::v1::NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"namespace": "x", "name": "bad"},
        "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
                 "ingress": [{"from": [{"podSelector": {"matchExpressions": [{"key": "pod", "operator": "Equals", "values": ["b"]}]}}]}]}
    }))
    .unwrap();
    let err = s.apply_policy(&np).unwrap_err();
    assert_eq!(err.kind, Kind::NetworkPolicy);
    assert_eq!(err.field, "spec.ingress[0].from[0].podSelector");
    assert!(err.to_string().contains("x/bad"), "{err}");
    let w = compiled(&mut s);
    assert!(!w.allowed(&tcp(at("x/b"), at("x/a"), 80)));
    assert!(w.allowed(&tcp(at("x/a"), at("x/b"), 80)));
    assert_eq!(w.desired.problems.len(), 1);
    assert_eq!(w.desired.problems[0].name, "bad");

    // An unreadable pod selector: the whole namespace is isolated.
    let mut s = xyz();
    let np: k8s_openapi::api::networking::v1::NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"namespace": "x", "name": "bad-target"},
        "spec": {"podSelector": {"matchExpressions": [{"key": "pod", "operator": "In"}]},
                 "ingress": [{}]}
    }))
    .unwrap();
    assert_eq!(s.apply_policy(&np).unwrap_err().field, "spec.podSelector");
    let w = compiled(&mut s);
    for dst in ["x/a", "x/b", "x/c"] {
        assert!(!w.allowed(&tcp(at("y/a"), at(dst), 80)), "{dst}");
    }
    assert!(w.allowed(&tcp(at("x/a"), at("y/a"), 80)));
}

#[test]
fn conversion_errors_name_the_field() {
    let cases = [
        (
            json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]}),
            "spec.ingress[0].from[0].ipBlock.cidr",
        ),
        (
            json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.1.0.0/24"]}}]}]}),
            "spec.ingress[0].from[0].ipBlock.except[0]",
        ),
        (
            json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.0.0/16"]}}]}]}),
            "spec.ingress[0].from[0].ipBlock.except[0]",
        ),
        (
            json!({"egress": [{"ports": [{"protocol": "ICMP"}]}]}),
            "spec.egress[0].ports[0].protocol",
        ),
        (
            json!({"egress": [{"ports": [{"port": 90, "endPort": 80}]}]}),
            "spec.egress[0].ports[0].endPort",
        ),
        (
            json!({"egress": [{"ports": [{"port": "web", "endPort": 80}]}]}),
            "spec.egress[0].ports[0].endPort",
        ),
        (
            json!({"egress": [{"ports": [{"port": 0}]}]}),
            "spec.egress[0].ports[0].port",
        ),
        (
            json!({"egress": [{"ports": [{"port": "Not_A_Name"}]}]}),
            "spec.egress[0].ports[0].port",
        ),
        (json!({"policyTypes": ["Sideways"]}), "spec.policyTypes[0]"),
        (
            json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]}),
            "spec.ingress[0].from[0]",
        ),
    ];
    for (spec, field) in cases {
        let mut spec = spec;
        spec["podSelector"] = json!({});
        let p = policy(json!({"metadata": {"namespace": "x", "name": "p"}, "spec": spec}));
        let err = p.error.expect("an error");
        assert_eq!(err.field, field, "{err}");
        assert!(p.ingress.is_empty() && p.egress.is_empty());
    }
    let p = policy(json!({"metadata": {"namespace": "x", "name": "p"},
        "spec": {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.9/16"}}]}]}}));
    assert!(
        p.error.is_none(),
        "host bits are cleared, as the API accepts them"
    );
}

#[test]
fn limits_fail_the_policy_closed_not_the_node() {
    // 10,000 ipBlocks: over the per-policy limit, failed closed.
    let mut s = xyz();
    let blocks: Vec<_> = (0..10_000u32)
        .map(|i| json!({"ipBlock": {"cidr": format!("172.{}.{}.0/24", 16 + i / 256, i % 256)}}))
        .collect();
    let np: k8s_openapi::api::networking::v1::NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"namespace": "x", "name": "huge"},
        "spec": {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": blocks}]}
    }))
    .unwrap();
    let err = s.apply_policy(&np).unwrap_err();
    assert!(
        matches!(err.problem, Problem::TooMany { what: "peers", .. }),
        "{err}"
    );
    s.upsert_policy(policy(json!({
        "metadata": {"namespace": "x", "name": "fine"},
        "spec": {"podSelector": {"matchLabels": {"pod": "b"}},
                 "ingress": [{"from": [{"podSelector": {}}]}]}
    })));
    let w = compiled(&mut s);
    assert!(!w.allowed(&tcp(ip("172.16.0.1"), at("x/a"), 80)));
    assert!(w.allowed(&tcp(at("x/c"), at("x/b"), 80)));
    assert_eq!(w.desired.problems.len(), 1);

    // The rules map's size: the policy that needs most is failed closed.
    let mut s = PolicyState::new(Limits {
        max_rule_entries: 20,
        ..Limits::default()
    });
    let xyz_state = xyz();
    for ns in xyz_state.namespaces() {
        s.upsert_namespace(ns.clone());
    }
    for p in xyz_state.pods() {
        s.upsert_pod(p.clone());
    }
    s.upsert_policy(policy(json!({
        "metadata": {"namespace": "x", "name": "wide"},
        "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
                 "ingress": [{"from": [{"namespaceSelector": {}}], "ports": [{"port": 1, "endPort": 65535}]}]}
    })));
    s.upsert_policy(policy(json!({
        "metadata": {"namespace": "x", "name": "narrow"},
        "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "c"}}}], "ports": [{"port": 80}]}]}
    })));
    let w = compiled(&mut s);
    assert!(w.desired.rules.len() <= 20);
    assert_eq!(w.desired.problems.len(), 1);
    assert_eq!(w.desired.problems[0].name, "wide");
    assert!(w.allowed(&tcp(at("x/c"), at("x/a"), 80)));
    assert!(!w.allowed(&tcp(at("x/b"), at("x/a"), 80)));
}

#[test]
fn selector_matching_nothing_is_fine() {
    let mut s = xyz();
    s.upsert_policy(policy(json!({
        "metadata": {"namespace": "x", "name": "nobody"},
        "spec": {"podSelector": {"matchLabels": {"pod": "nobody"}}, "ingress": []}
    })));
    s.upsert_policy(policy(json!({
        "metadata": {"namespace": "x", "name": "from-nobody"},
        "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "nobody"}}}]}]}
    })));
    let w = compiled(&mut s);
    assert!(w.desired.problems.is_empty());
    assert!(w.allowed(&tcp(at("y/a"), at("x/b"), 80)));
    assert!(!w.allowed(&tcp(at("x/b"), at("x/a"), 80)));
}

#[test]
fn numbers_stay_stable_across_compilations() {
    let mut s = xyz();
    s.upsert_policy(policy(json!({
        "metadata": {"namespace": "x", "name": "p"},
        "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
                 "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchExpressions": [
                                            {"key": "pod", "operator": "NotIn", "values": ["d"]}]}},
                                       {"ipBlock": {"cidr": "10.0.0.0/8"}}]}]}
    })));
    let first = s.compile(NODE, &node_addrs()).unwrap();
    let again = s.compile(NODE, &node_addrs()).unwrap();
    assert_eq!(first, again);

    // A label no selector names changes nothing.
    let mut b = s
        .pods()
        .find(|p| p.name == "b" && p.namespace == "z")
        .unwrap()
        .clone();
    b.labels.insert("extra".into(), "1".into());
    s.upsert_pod(b.clone());
    assert_eq!(s.compile(NODE, &node_addrs()).unwrap(), first);

    // Relabelling one pod under a key a selector names changes its
    // identity only.
    b.labels.insert("pod".into(), "d".into());
    s.upsert_pod(b);
    let after = s.compile(NODE, &node_addrs()).unwrap();
    let changed: Vec<_> = first
        .identities
        .iter()
        .filter(|(a, id)| after.identities.get(*a) != Some(id))
        .map(|(a, _)| crate::service::programmer::words_addr(a))
        .collect();
    assert_eq!(changed, vec![at("z/b"), at6("z/b")]);
    assert_eq!(first.endpoints, after.endpoints);
    assert_eq!(first.cidrs, after.cidrs);

    // A deleted policy's number is not given to a new one in the same
    // round; a later one may take it.
    let old = s.policy_number("x", "p").unwrap();
    s.delete_policy("x", "p");
    let np =
        policy(json!({"metadata": {"namespace": "x", "name": "q"}, "spec": {"podSelector": {}}}));
    let q = s.upsert_policy(np);
    assert_ne!(q, old);
    let d = s.compile(NODE, &node_addrs()).unwrap();
    assert_eq!(d.policies.len(), 1);
}

#[test]
fn pods_alike_share_identities_and_sets() {
    let mut s = PolicyState::default();
    for i in 0..4 {
        s.upsert_pod(pod(
            "x",
            &format!("web-{i}"),
            &[("app", "web")],
            &[&format!("10.0.0.{}", i + 1)],
            NODE,
        ));
    }
    s.upsert_policy(policy(deny_all("x", "deny", &["Ingress"])));
    let d = s.compile(NODE, &node_addrs()).unwrap();
    let ids: std::collections::BTreeSet<u32> = d
        .identities
        .values()
        .copied()
        .filter(|id| *id != IDENTITY_HOST)
        .collect();
    assert_eq!(ids.len(), 1);
    let sets: std::collections::BTreeSet<u32> = d.endpoints.values().map(|e| e.set).collect();
    assert_eq!(sets.len(), 1);
    assert_eq!(d.sets.len(), 1);
}

#[test]
fn a_pod_reaching_itself_passes_both_directions() {
    let mut s = xyz();
    s.upsert_policy(policy(deny_all("x", "deny", &["Ingress", "Egress"])));
    let w = compiled(&mut s);
    let p = tcp(at("x/a"), at("x/a"), 80);
    assert_eq!(w.verdict(DIR_INGRESS, &p), Verdict::SelfTraffic);
    assert_eq!(w.verdict(DIR_EGRESS, &p), Verdict::SelfTraffic);
    assert!(!w.egress(&tcp(at("x/a"), at("x/b"), 80)));
}

#[test]
fn pods_convert_with_named_ports_and_lose_addresses_when_finished() {
    let api = |phase: &str| -> k8s_openapi::api::core::v1::Pod {
        serde_json::from_value(json!({
            "metadata": {"namespace": "x", "name": "p", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [
                {"name": "c", "ports": [{"name": "http", "containerPort": 8080},
                                        {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                                        {"containerPort": 9000}]}]},
            "status": {"phase": phase, "podIPs": [{"ip": "::ffff:10.0.0.5"}, {"ip": "fd10::5"}]}
        }))
        .unwrap()
    };
    let p = super::model::Pod::from_api(&api("Running")).unwrap();
    assert_eq!(p.ips, vec![ip("10.0.0.5"), ip("fd10::5")]);
    assert_eq!(p.node_name, "n1");
    assert_eq!(
        p.named_ports,
        vec![
            named("dns", crate::service::model::Protocol::Udp, 53),
            named("http", crate::service::model::Protocol::Tcp, 8080)
        ]
    );
    assert!(
        super::model::Pod::from_api(&api("Succeeded"))
            .unwrap()
            .ips
            .is_empty()
    );

    let mut bad = api("Running");
    bad.status.as_mut().unwrap().pod_ips.as_mut().unwrap()[1].ip = "nope".into();
    let mut s = PolicyState::default();
    let err = s.apply_pod(&bad).unwrap_err();
    assert_eq!(err.field, "status.podIPs[1].ip");
    assert_eq!(s.pods().count(), 0);
}

/// Identities count only the label keys the peers' selectors name. When
/// a key becomes relevant, the pods holding it split off into new
/// identities while the rest keep theirs; when it stops being relevant,
/// the identity the pods merge into gets a new number, so rules written
/// for an old number are never read for pods they were not compiled for:
/// the programmer's writes between the compilations open no window.
#[test]
fn identities_follow_the_label_keys_selectors_name_without_opening_a_window() {
    let mut s = PolicyState::default();
    s.upsert_pod(pod("x", "t", &[("app", "target")], &["10.0.1.1"], NODE));
    let mut ips = Vec::new();
    for i in 1..=5 {
        let hash = format!("h{i}");
        let mut lbl = vec![("app", "web")];
        if i < 5 {
            lbl.push(("pod-template-hash", hash.as_str()));
        }
        let a = format!("10.0.2.{i}");
        s.upsert_pod(pod("x", &format!("w{i}"), &lbl, &[&a], OTHER_NODE));
        ips.push(ip(&a));
    }
    s.upsert_pod(pod("x", "d", &[("app", "db")], &["10.0.2.6"], OTHER_NODE));
    let web = policy(json!({
        "metadata": {"namespace": "x", "name": "web"},
        "spec": {"podSelector": {"matchLabels": {"app": "target"}},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                              "ports": [{"port": 80}]}]}
    }));
    // Allows only the web pod without a template hash, on 81.
    let unhashed = policy(json!({
        "metadata": {"namespace": "x", "name": "unhashed"},
        "spec": {"podSelector": {"matchLabels": {"app": "target"}},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"},
                     "matchExpressions": [{"key": "pod-template-hash", "operator": "DoesNotExist"}]}}],
                              "ports": [{"port": 81}]}]}
    }));
    s.upsert_policy(web);
    let target = ip("10.0.1.1");
    let mut all = ips.clone();
    all.extend([target, ip("10.0.2.6")]);
    let probes: Vec<Probe> = all
        .iter()
        .flat_map(|src| all.iter().map(move |dst| (*src, *dst)))
        .flat_map(|(src, dst)| [tcp(src, dst, 80), tcp(src, dst, 81)])
        .collect();
    let id = |d: &Desired, a: IpAddr| d.identities[&addr_words(a)];
    let compile = |s: &mut PolicyState| {
        let d = s.compile(NODE, &node_addrs()).unwrap();
        let w = World {
            state: s,
            desired: d,
        };
        for p in &probes {
            w.verdict(DIR_INGRESS, p);
            w.verdict(DIR_EGRESS, p);
        }
        w.desired
    };

    // No selector names the hash: the five web pods share one identity.
    let d1 = compile(&mut s);
    let x = id(&d1, ips[4]);
    assert!(ips.iter().all(|a| id(&d1, *a) == x));
    assert_ne!(id(&d1, ip("10.0.2.6")), x);

    // Now one does: the hashed pods split off, each on its own; the
    // unhashed one and the db pod keep their numbers.
    s.upsert_policy(unhashed);
    let d2 = compile(&mut s);
    assert!(check_transition(&d1, &d2, &probes) > 0);
    assert_eq!(id(&d2, ips[4]), x);
    assert_eq!(id(&d2, ip("10.0.2.6")), id(&d1, ip("10.0.2.6")));
    let split: BTreeSet<u32> = ips[..4].iter().map(|a| id(&d2, *a)).collect();
    assert_eq!(split.len(), 4);
    assert!(!split.contains(&x));
    let w = World {
        state: &s,
        desired: d2.clone(),
    };
    assert!(w.ingress(&tcp(ips[4], target, 81)));
    assert!(!w.ingress(&tcp(ips[0], target, 81)));

    // And then none does again: the pods merge into an identity that
    // stands for more than `x` did, so it gets a new number. Were it `x`,
    // w1 would pass on 81 by x's rule while the target is still in its
    // old set.
    s.delete_policy("x", "unhashed");
    let d3 = compile(&mut s);
    assert!(check_transition(&d2, &d3, &probes) > 0);
    let merged = id(&d3, ips[0]);
    assert!(ips.iter().all(|a| id(&d3, *a) == merged));
    assert_ne!(merged, x);
    assert!(!split.contains(&merged));
    // Stable again once the keys stay put.
    assert_eq!(compile(&mut s), d3);
}
