//! ferry-dns against ferry-apiserver with real objects, queried with
//! Debian's `dig` and hickory's message types over real sockets, inside a
//! world's namespaces: every record kind, the negative answers, updates,
//! UDP/TCP/EDNS0/truncation, and a query from inside a pod. Needs root.

mod common;

use std::net::IpAddr;

use common::{Cluster, NS, dig, eventually, hickory_query, raw_exchange};
use ferry_dns::names::{dash, reverse_name};
use ferry_testbed::skip_if_not_root;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use serde_json::json;

fn fq(name: &str) -> String {
    format!("{name}.{NS}.svc.cluster.local.")
}

#[test]
fn cluster_records_and_negative_answers() {
    if skip_if_not_root() {
        return;
    }
    let c = Cluster::new(3);
    let node = c.node_netns();

    // Until the watches have listed, the zone is SERVFAIL and not ready:
    // hold the apiserver still while ferry-dns starts.
    let server_pid = c.cp.pid().to_string();
    node.exec(["kill", "-STOP", &server_pid])
        .expect("stop apiserver");
    let dns = c.start_dns(&["--pods", "verified"]);
    eventually("ferry-dns answering", 20, || {
        common::try_dig(node, dns.addr, &fq("kubernetes"), "A").is_some()
    });
    let early = dig(node, dns.addr, &fq("kubernetes"), "A", &[]);
    assert_eq!(early.status, "SERVFAIL");
    assert_eq!(early.authority.len(), 1, "SOA with the SERVFAIL: {early:?}");
    assert_eq!(
        common::http(node, &format!("http://{}/ready", dns.http)).0,
        503
    );
    assert_eq!(
        common::http(node, &format!("http://{}/health", dns.http)).0,
        200
    );
    node.exec(["kill", "-CONT", &server_pid])
        .expect("resume apiserver");
    dns.wait_ready(node);

    c.apply(&json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": NS},
        "spec": {"selector": {"app": "web"}, "ports": [
            {"name": "http", "port": 80, "protocol": "TCP"},
            {"name": "syslog", "port": 514, "protocol": "UDP"}]}}));
    c.apply(&json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "dual", "namespace": NS},
        "spec": {"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv4", "IPv6"],
                 "ports": [{"name": "http", "port": 80}]}}));
    c.apply(&json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "db", "namespace": NS},
        "spec": {"clusterIP": "None", "selector": {"app": "db"},
                 "ports": [{"name": "pg", "port": 5432, "targetPort": 5432}]}}));
    c.apply(&json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "lonely", "namespace": NS},
        "spec": {"clusterIP": "None", "selector": {"app": "nobody"},
                 "ports": [{"name": "pg", "port": 5432}]}}));
    c.apply(&json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "ext", "namespace": NS},
        "spec": {"type": "ExternalName", "externalName": "db.example.test"}}));
    // pod 0 names itself in the headless service; pod 1 does not.
    c.pod_object(
        0,
        json!({"app": "db"}),
        json!({"hostname": "db-0", "subdomain": "db"}),
        true,
    );
    c.pod_object(1, json!({"app": "db"}), json!({}), true);
    c.pod_object(2, json!({"app": "client"}), json!({}), true);

    let web_ip = c.cluster_ips("web")[0];
    let dual = c.cluster_ips("dual");
    assert_eq!(dual.len(), 2, "dual-stack service: {dual:?}");
    let db0 = IpAddr::V4(c.pod(0).ipv4().expect("pod v4"));
    let db1 = IpAddr::V4(c.pod(1).ipv4().expect("pod v4"));
    eventually("headless endpoints in DNS", 20, || {
        dig(node, dns.addr, &fq("db"), "A", &[]).answer.len() == 2
    });

    // ClusterIP: A, NODATA for the missing family, TTL, authority flag.
    let a = dig(node, dns.addr, &fq("web"), "A", &[]);
    assert_eq!(a.data(), [web_ip.to_string()]);
    assert_eq!(a.answer[0].ttl, 30);
    assert!(a.flags.contains(&"aa".to_string()), "{a:?}");
    assert!(dig(node, dns.addr, &fq("web"), "AAAA", &[]).is_nodata());
    assert_eq!(
        dig(node, dns.addr, &fq("dual"), "A", &[]).data(),
        [dual[0].to_string()]
    );
    assert_eq!(
        dig(node, dns.addr, &fq("dual"), "AAAA", &[]).data(),
        [dual[1].to_string()]
    );
    // Case does not matter; the owner comes back as asked.
    let upper = dig(
        node,
        dns.addr,
        &format!("WEB.{}.SVC.Cluster.Local.", NS.to_uppercase()),
        "A",
        &[],
    );
    assert_eq!(upper.data(), [web_ip.to_string()]);

    // SRV per named port, with the target's address as additional data.
    let srv = dig(
        node,
        dns.addr,
        &format!("_http._tcp.{}", fq("web")),
        "SRV",
        &[],
    );
    assert_eq!(srv.data(), [format!("0 100 80 {}", fq("web"))]);
    assert_eq!(srv.additional.iter().filter(|r| r.rtype == "A").count(), 1);
    let srv = dig(
        node,
        dns.addr,
        &format!("_syslog._udp.{}", fq("web")),
        "SRV",
        &[],
    );
    assert_eq!(srv.data(), [format!("0 100 514 {}", fq("web"))]);
    assert!(
        dig(
            node,
            dns.addr,
            &format!("_syslog._tcp.{}", fq("web")),
            "SRV",
            &[]
        )
        .is_nxdomain()
    );

    // PTR for cluster IPs, both families, and for endpoint addresses.
    for (ip, target) in [
        (web_ip, fq("web")),
        (dual[1], fq("dual")),
        (db0, format!("db-0.{}", fq("db"))),
    ] {
        let ptr = dig(node, dns.addr, &reverse_name(ip), "PTR", &[]);
        assert_eq!(ptr.data(), [target], "PTR {ip}");
    }

    // Headless: every ready endpoint, names per endpoint, SRV to them.
    let mut both = vec![db0.to_string(), db1.to_string()];
    both.sort();
    assert_eq!(dig(node, dns.addr, &fq("db"), "A", &[]).data(), both);
    assert_eq!(
        dig(node, dns.addr, &format!("db-0.{}", fq("db")), "A", &[]).data(),
        [db0.to_string()]
    );
    let dashed = format!("{}.{}", dash(db1), fq("db"));
    assert_eq!(
        dig(node, dns.addr, &dashed, "A", &[]).data(),
        [db1.to_string()]
    );
    let srv = dig(
        node,
        dns.addr,
        &format!("_pg._tcp.{}", fq("db")),
        "SRV",
        &[],
    );
    let mut targets = vec![
        format!("0 50 5432 db-0.{}", fq("db")),
        format!("0 50 5432 {dashed}"),
    ];
    targets.sort();
    assert_eq!(srv.data(), targets);
    assert_eq!(srv.additional.iter().filter(|r| r.rtype == "A").count(), 2);
    assert!(dig(node, dns.addr, &fq("lonely"), "A", &[]).is_nxdomain());
    assert!(dig(node, dns.addr, &format!("nobody.{}", fq("db")), "A", &[]).is_nxdomain());

    // ExternalName: the alias.
    let cname = dig(node, dns.addr, &fq("ext"), "CNAME", &[]);
    assert_eq!(cname.data(), ["db.example.test."]);
    assert_eq!(cname.answer[0].rtype, "CNAME");

    // Pod records, verified: only an address a pod in the namespace has.
    let client = c.pod(2).ipv4().expect("pod v4");
    let pod_name = format!("{}.{NS}.pod.cluster.local.", dash(IpAddr::V4(client)));
    assert_eq!(
        dig(node, dns.addr, &pod_name, "A", &[]).data(),
        [client.to_string()]
    );
    assert!(
        dig(
            node,
            dns.addr,
            &format!("10-99-99-99.{NS}.pod.cluster.local."),
            "A",
            &[]
        )
        .is_nxdomain()
    );
    assert!(
        dig(
            node,
            dns.addr,
            &format!("{}.default.pod.cluster.local.", dash(IpAddr::V4(client))),
            "A",
            &[]
        )
        .is_nxdomain()
    );

    // The zone's own names and the negative answers.
    assert_eq!(
        dig(node, dns.addr, "dns-version.cluster.local.", "TXT", &[]).data(),
        ["\"1.1.0\""]
    );
    for name in [
        "cluster.local.",
        "svc.cluster.local.",
        &format!("{NS}.svc.cluster.local."),
    ] {
        assert!(dig(node, dns.addr, name, "A", &[]).is_nodata(), "{name}");
    }
    let soa = dig(node, dns.addr, "cluster.local.", "SOA", &[]);
    assert!(
        soa.data()[0].starts_with("ns.dns.cluster.local. hostmaster.cluster.local. "),
        "{soa:?}"
    );
    for name in [
        fq("nope"),
        "web.nope.svc.cluster.local.".to_string(),
        "what.cluster.local.".to_string(),
    ] {
        let r = dig(node, dns.addr, &name, "A", &[]);
        assert!(r.is_nxdomain(), "{name}: {r:?}");
        assert_eq!(r.authority[0].name, "cluster.local.");
    }

    // TCP, EDNS0 and zone transfers, through hickory's message types.
    let tcp = hickory_query(node, dns.addr, &fq("web"), RecordType::A, true);
    assert_eq!(tcp.answers.len(), 1);
    let edns = dig(node, dns.addr, &fq("web"), "A", &["+bufsize=4096"]);
    assert_eq!(edns.edns_udp, Some(1232));
    assert_eq!(
        dig(node, dns.addr, &fq("web"), "A", &["+noedns"]).edns_udp,
        None
    );
    let axfr = hickory_query(node, dns.addr, "cluster.local.", RecordType::AXFR, true);
    assert_eq!(axfr.metadata.response_code, ResponseCode::Refused);

    // From inside a pod, through the pod's own network.
    let from_pod = dig(&c.pod(2).netns, dns.addr, &fq("web"), "A", &[]);
    assert_eq!(from_pod.data(), [web_ip.to_string()]);

    // CoreDNS's metric names.
    let metrics = dns.metrics(node);
    for needle in [
        "coredns_dns_requests_total{server=\"dns://",
        "type=\"SRV\"",
        "coredns_dns_responses_total{",
        "rcode=\"NXDOMAIN\",plugin=\"kubernetes\"",
        "coredns_dns_request_duration_seconds_bucket{",
        "coredns_cache_hits_total",
    ] {
        assert!(
            metrics.contains(needle),
            "metrics lack {needle}:\n{metrics}"
        );
    }
}

#[test]
fn truncation_and_hostile_packets() {
    if skip_if_not_root() {
        return;
    }
    let c = Cluster::new(0);
    let node = c.node_netns();
    let mut dns = c.start_dns(&[]);
    dns.wait_ready(node);
    // A headless service with 60 endpoints: more than 512 bytes of A records.
    c.apply(&json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "big", "namespace": NS},
        "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 80}]}}));
    let endpoints: Vec<_> = (1..=60)
        .map(|i| json!({"addresses": [format!("10.77.0.{i}")], "conditions": {"ready": true}}))
        .collect();
    c.apply(
        &json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "big-1", "namespace": NS,
                     "labels": {"kubernetes.io/service-name": "big"}},
        "addressType": "IPv4", "endpoints": endpoints,
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}),
    );
    eventually("big service", 20, || {
        dig(node, dns.addr, &fq("big"), "A", &["+tcp"]).answer.len() == 60
    });
    let udp = dig(node, dns.addr, &fq("big"), "A", &["+noedns", "+ignore"]);
    assert!(udp.flags.contains(&"tc".to_string()), "{udp:?}");
    let tcp = dig(node, dns.addr, &fq("big"), "A", &["+tcp"]);
    assert!(!tcp.flags.contains(&"tc".to_string()));
    // dig retries over TCP on its own when truncated.
    assert_eq!(
        dig(node, dns.addr, &fq("big"), "A", &["+noedns"])
            .answer
            .len(),
        60
    );

    // Garbage: too short (dropped), a header and junk (FORMERR), random
    // bytes; the server keeps answering.
    let addr = dns.addr;
    let replies = node
        .in_netns(move || {
            let mut out = Vec::new();
            let mut seed = 0x9e37_79b9_u32;
            for n in 0..300usize {
                let len = 12 + n % 80;
                let mut pkt: Vec<u8> = (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 17;
                        seed ^= seed << 5;
                        seed as u8
                    })
                    .collect();
                pkt[2] &= 0x7f; // a query, not a response
                out.push(raw_exchange(addr, &pkt, n % 2 == 0).ok());
            }
            out.push(raw_exchange(addr, &[1, 2, 3], false).ok());
            out
        })
        .expect("netns");
    assert!(
        replies.last().is_some_and(Option::is_none),
        "a 3-byte packet is dropped"
    );
    let formerr = replies
        .iter()
        .flatten()
        .filter(|r| r.len() >= 4 && r[3] & 0x0f == 1)
        .count();
    assert!(
        formerr > 0,
        "no FORMERR among {} replies",
        replies.iter().flatten().count()
    );
    assert!(dns.process_alive());
    assert_eq!(
        dig(node, dns.addr, &fq("big"), "A", &["+tcp"]).answer.len(),
        60
    );
}

#[test]
fn updates_follow_the_api() {
    if skip_if_not_root() {
        return;
    }
    let c = Cluster::new(1);
    let node = c.node_netns();
    // Settings from a file this time.
    let config = c.world.state_dir().join("ferry-dns.toml");
    std::fs::write(
        &config,
        "pods = \"insecure\"\nttl = 5\nzone = \"cluster.local\"\n",
    )
    .expect("config");
    let dns = c.start_dns(&["--config", &config.to_string_lossy()]);
    dns.wait_ready(node);

    // An endpoint that becomes ready appears; a headless service with none
    // is NXDOMAIN until then.
    c.apply(&json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "db", "namespace": NS},
        "spec": {"clusterIP": "None", "selector": {"app": "db"},
                 "ports": [{"name": "pg", "port": 5432}]}}));
    c.pod_object(0, json!({"app": "db"}), json!({}), false);
    let pod_ip = c.pod(0).ipv4().expect("v4").to_string();
    eventually("service known", 20, || {
        dig(node, dns.addr, &fq("db"), "A", &[]).status == "NXDOMAIN"
    });
    c.set_ready(0, true);
    eventually("endpoint ready", 20, || {
        dig(node, dns.addr, &fq("db"), "A", &[]).data() == [pod_ip.clone()]
    });
    c.set_ready(0, false);
    eventually("endpoint not ready", 20, || {
        dig(node, dns.addr, &fq("db"), "A", &[]).is_nxdomain()
    });

    // ExternalName, then switched to ClusterIP, then deleted.
    c.apply(&json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "moving", "namespace": NS},
        "spec": {"type": "ExternalName", "externalName": "old.example.test"}}));
    eventually("ExternalName", 20, || {
        dig(node, dns.addr, &fq("moving"), "CNAME", &[]).data() == ["old.example.test."]
    });
    c.apply(&json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "moving", "namespace": NS},
        "spec": {"type": "ExternalName", "externalName": "new.example.test"}}));
    eventually("ExternalName changed", 20, || {
        dig(node, dns.addr, &fq("moving"), "CNAME", &[]).data() == ["new.example.test."]
    });
    c.cp.kubectl(&[
        "patch",
        "svc",
        "moving",
        "-n",
        NS,
        "--type=merge",
        "-p",
        r#"{"spec":{"type":"ClusterIP","externalName":null,"ports":[{"name":"http","port":80}]}}"#,
    ])
    .expect("switch to ClusterIP");
    let ip = c.cluster_ips("moving");
    assert_eq!(ip.len(), 1, "{ip:?}");
    eventually("ClusterIP now", 20, || {
        let r = dig(node, dns.addr, &fq("moving"), "A", &[]);
        r.data() == [ip[0].to_string()] && r.answer[0].rtype == "A" && r.answer[0].ttl == 5
    });
    c.cp.kubectl(&["delete", "svc", "moving", "-n", NS])
        .expect("delete");
    eventually("deleted", 20, || {
        dig(node, dns.addr, &fq("moving"), "A", &[]).is_nxdomain()
    });

    // Insecure pod records: any address in a namespace that exists, until
    // the namespace goes.
    let r = dig(
        node,
        dns.addr,
        &format!("10-1-2-3.{NS}.pod.cluster.local."),
        "A",
        &[],
    );
    assert_eq!(r.data(), ["10.1.2.3"]);
    assert!(
        dig(
            node,
            dns.addr,
            "10-1-2-3.ghost.pod.cluster.local.",
            "A",
            &[]
        )
        .is_nxdomain()
    );
    c.apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "short-lived"}}));
    eventually("namespace", 20, || {
        dig(node, dns.addr, "short-lived.svc.cluster.local.", "A", &[]).is_nodata()
    });
    c.cp.kubectl(&["delete", "ns", "short-lived", "--wait=false"])
        .expect("delete ns");
    eventually("namespace gone", 30, || {
        dig(node, dns.addr, "short-lived.svc.cluster.local.", "A", &[]).is_nxdomain()
    });
}
