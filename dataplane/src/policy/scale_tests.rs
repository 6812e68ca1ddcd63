//! The compiler at cluster size: 10,000 pods in 100 namespaces, 1,000
//! policies, 100 pods on this node. Checks a few verdicts against the
//! reference (no timing assertion: speed is measured, not asserted; the
//! time is printed for `--nocapture`).

use std::time::Instant;

use serde_json::json;

use super::reference::Reference;
use super::simulate::simulate;
use super::state::PolicyState;
use super::testkit::*;
use crate::service::model::Protocol;
use ferry_ebpf_common::policy::{DIR_EGRESS, DIR_INGRESS};

fn pod_ip(ns: usize, i: usize) -> String {
    format!("10.{}.{}.{}", 1 + ns / 100, ns % 100, 10 + i)
}

#[test]
fn ten_thousand_pods_and_a_thousand_policies() {
    let mut s = PolicyState::default();
    for ns in 0..100 {
        let name = format!("ns-{ns}");
        s.upsert_namespace(super::model::Namespace::new(
            &name,
            labels(&[("team", if ns % 2 == 0 { "red" } else { "blue" })]),
        ));
        for i in 0..100 {
            let app = format!("app-{}", i % 10);
            let pod_name = format!("{app}-{i}");
            let mut lbl = vec![
                ("app", app.as_str()),
                ("tier", if i % 3 == 0 { "front" } else { "back" }),
            ];
            // A fifth of the pods carry a label of their own (StatefulSets).
            if i % 5 == 0 {
                lbl.push(("statefulset.kubernetes.io/pod-name", pod_name.as_str()));
            }
            // Pod i == ns % 100 of each namespace is on this node: 100 local.
            let node = if i == ns % 100 { NODE } else { OTHER_NODE };
            let mut p = pod(&name, &pod_name, &lbl, &[&pod_ip(ns, i)], node);
            p.named_ports = vec![named("http", Protocol::Tcp, 8000 + (i % 10) as u16)];
            s.upsert_pod(p);
        }
    }
    for ns in 0..100 {
        let name = format!("ns-{ns}");
        for k in 0..10 {
            s.upsert_policy(policy(json!({
                "metadata": {"namespace": name, "name": format!("p-{k}")},
                "spec": {
                    "podSelector": {"matchLabels": {"app": format!("app-{k}")}},
                    "policyTypes": ["Ingress", "Egress"],
                    "ingress": [
                        {"from": [{"podSelector": {"matchLabels": {"app": format!("app-{}", (k + 1) % 10)}}},
                                  {"namespaceSelector": {"matchLabels": {"team": "red"}},
                                   "podSelector": {"matchLabels": {"tier": "front", "app": "app-0"}}}],
                         "ports": [{"port": 80}, {"port": 8080, "endPort": 8090}, {"port": "http"}]},
                        {"from": [{"ipBlock": {"cidr": format!("172.{}.0.0/16", 16 + k), "except": [format!("172.{}.1.0/24", 16 + k)]}}]}
                    ],
                    "egress": [
                        {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": format!("ns-{}", (ns + 1) % 100)}}}],
                         "ports": [{"port": "http"}, {"protocol": "UDP", "port": 53}]},
                        {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}]}
                    ]
                }
            })));
        }
    }
    let start = Instant::now();
    let desired = s.compile(NODE, &node_addrs()).expect("compile");
    let first = start.elapsed();
    let start = Instant::now();
    let again = s.compile(NODE, &node_addrs()).expect("compile");
    let second = start.elapsed();
    let distinct: std::collections::BTreeSet<u32> = desired.identities.values().copied().collect();
    eprintln!(
        "compile 10000 pods / 1000 policies / 100 local: {first:?} (again: {second:?}); \
         {} endpoints, {} addresses of {} identities, {} cidrs, {} rules, {} sets",
        desired.endpoints.len(),
        desired.identities.len(),
        distinct.len(),
        desired.cidrs.len(),
        desired.rules.len(),
        desired.sets.len()
    );
    assert_eq!(desired, again);
    assert!(desired.problems.is_empty(), "{:?}", desired.problems);
    assert_eq!(desired.endpoints.len(), 100);
    assert_eq!(desired.identities.len(), 10_000 + 2);

    let reference = Reference::new(&s, NODE, &node_addrs());
    // ns-7's local pod is app-7-7 (selected by p-7).
    let local = ip(&pod_ip(7, 7));
    let cases = [
        // app-8 of the same namespace, port 80 and the range: allowed.
        (tcp(ip(&pod_ip(7, 8)), local, 80), DIR_INGRESS, true),
        (tcp(ip(&pod_ip(7, 18)), local, 8085), DIR_INGRESS, true),
        (tcp(ip(&pod_ip(7, 18)), local, 8091), DIR_INGRESS, false),
        // Named port http resolves on the local pod: 8007.
        (tcp(ip(&pod_ip(7, 8)), local, 8007), DIR_INGRESS, true),
        (tcp(ip(&pod_ip(7, 8)), local, 8008), DIR_INGRESS, false),
        // app-9: not a peer; app-0 of the front tier in a red namespace is.
        (tcp(ip(&pod_ip(7, 9)), local, 80), DIR_INGRESS, false),
        (tcp(ip(&pod_ip(8, 30)), local, 80), DIR_INGRESS, true),
        (tcp(ip(&pod_ip(8, 10)), local, 80), DIR_INGRESS, false),
        (tcp(ip(&pod_ip(9, 30)), local, 80), DIR_INGRESS, false),
        // ipBlock with except.
        (tcp(ip("172.23.5.5"), local, 22), DIR_INGRESS, true),
        (tcp(ip("172.23.1.5"), local, 22), DIR_INGRESS, false),
        // Egress: next namespace's pods on their own http port.
        (tcp(local, ip(&pod_ip(8, 3)), 8003), DIR_EGRESS, true),
        (tcp(local, ip(&pod_ip(8, 3)), 8004), DIR_EGRESS, false),
        (udp(local, ip(&pod_ip(8, 3)), 53), DIR_EGRESS, true),
        (tcp(local, ip(&pod_ip(9, 3)), 8003), DIR_EGRESS, false),
        (tcp(local, ip("8.8.8.8"), 443), DIR_EGRESS, true),
        (tcp(local, ip("10.99.0.1"), 443), DIR_EGRESS, false),
    ];
    for (p, dir, want) in cases {
        let sim = simulate(&desired, dir, &p);
        assert_eq!(sim.allows(), want, "{p:?} dir {dir}: {sim:?}");
        assert_eq!(reference.allows(dir, &p), want, "{p:?} dir {dir}");
    }
}

/// Rule-map growth: a peer naming pods that differ only in labels no
/// selector mentions (a StatefulSet's per-pod name, a ReplicaSet's
/// template hash) adds one rule entry per namespace, not per pod. 100
/// namespaces of 100 pods, 100 on this node; 1,000 policies (10 per
/// namespace, each selecting the node's pod of its namespace) allow a
/// port of their own from the 850 `role: db` pods of the red namespaces,
/// every one with a label of its own. Were identities per label set, the
/// peer would name 850 identities, 10 × 850 entries per policy set and
/// 850,000 in all, more than the map holds (policies failed closed).
#[test]
fn a_peer_of_pods_with_labels_of_their_own_fits_the_rules_map() {
    let mut s = PolicyState::default();
    for ns in 0..100 {
        let name = format!("ns-{ns}");
        let team = if ns % 2 == 0 { "red" } else { "blue" };
        s.upsert_namespace(super::model::Namespace::new(
            &name,
            labels(&[("team", team)]),
        ));
        for i in 0..100 {
            let pod_name = format!("db-{i}");
            let hash = format!("{:x}", i * 7919);
            let role = if i < 17 { "db" } else { "web" };
            let lbl = [
                ("role", role),
                ("statefulset.kubernetes.io/pod-name", pod_name.as_str()),
                ("controller-revision-hash", hash.as_str()),
            ];
            let node = if i == 99 { NODE } else { OTHER_NODE };
            s.upsert_pod(pod(&name, &pod_name, &lbl, &[&pod_ip(ns, i)], node));
        }
        for k in 0..10 {
            s.upsert_policy(policy(json!({
                "metadata": {"namespace": name, "name": format!("p-{k}")},
                "spec": {
                    "podSelector": {"matchLabels": {"role": "web"}},
                    "ingress": [{
                        "from": [{"namespaceSelector": {"matchLabels": {"team": "red"}},
                                  "podSelector": {"matchExpressions": [
                                      {"key": "role", "operator": "In", "values": ["db"]}]}}],
                        "ports": [{"port": 5000 + k}]
                    }]
                }
            })));
        }
    }
    let desired = s.compile(NODE, &node_addrs()).expect("compile");
    let identities: std::collections::BTreeSet<u32> =
        desired.identities.values().copied().collect();
    eprintln!(
        "850-pod peer: {} rule entries, {} identities, {} sets, {} failed closed",
        desired.rules.len(),
        identities.len(),
        desired.sets.len(),
        desired.problems.len()
    );
    assert!(
        desired.problems.is_empty(),
        "{:?}",
        desired.problems.first()
    );
    // One identity per namespace and role (and the node's own): the
    // per-pod labels count for nothing.
    assert_eq!(identities.len(), 100 * 2 + 1);
    // 100 sets × 10 policies × 50 red namespaces' db identities.
    assert_eq!(desired.rules.len(), 100 * 10 * 50);

    let reference = Reference::new(&s, NODE, &node_addrs());
    let local = ip(&pod_ip(5, 99));
    let cases = [
        (tcp(ip(&pod_ip(8, 3)), local, 5004), true),
        (tcp(ip(&pod_ip(8, 16)), local, 5009), true),
        (tcp(ip(&pod_ip(8, 17)), local, 5004), false),
        (tcp(ip(&pod_ip(9, 3)), local, 5004), false),
        (tcp(ip(&pod_ip(8, 3)), local, 5010), false),
    ];
    for (p, want) in cases {
        let sim = simulate(&desired, DIR_INGRESS, &p);
        assert_eq!(sim.allows(), want, "{p:?}: {sim:?}");
        assert_eq!(reference.allows(DIR_INGRESS, &p), want, "{p:?}");
    }
}
