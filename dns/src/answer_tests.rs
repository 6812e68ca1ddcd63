use super::*;
use crate::index::{ServiceRecord, SliceRecord};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).expect("name")
}

fn port(name: &str, port: u16) -> PortRecord {
    PortRecord {
        name: name.into(),
        protocol: "tcp",
        port,
    }
}

fn cluster(ips: &[&str], ports: Vec<PortRecord>) -> ServiceRecord {
    ServiceRecord {
        kind: ServiceKind::ClusterIp(ips.iter().map(|s| ip(s)).collect()),
        ports,
        publish_not_ready: false,
    }
}

fn ep(addr: &str, hostname: Option<&str>, ready: bool) -> EndpointRecord {
    EndpointRecord {
        addresses: vec![ip(addr)],
        hostname: hostname.map(Into::into),
        ready,
    }
}

/// The fixture: namespace `ns` with a ClusterIP service, a dual-stack one,
/// a headless one with three endpoints (one not ready), an empty headless
/// one, ExternalNames in and out of the zone, and a pod.
fn fixture() -> Index {
    let mut i = Index::new();
    i.upsert_namespace("ns");
    i.upsert_namespace("other");
    i.upsert_service(
        "ns",
        "web",
        cluster(&["10.96.0.10"], vec![port("http", 80)]),
    );
    i.upsert_service(
        "ns",
        "dual",
        cluster(&["10.96.0.11", "fd00::11"], vec![port("http", 80)]),
    );
    i.upsert_service(
        "ns",
        "db",
        ServiceRecord {
            kind: ServiceKind::Headless,
            ports: vec![port("pg", 5432)],
            publish_not_ready: false,
        },
    );
    i.upsert_slice(
        "ns",
        "db-1",
        Some("db"),
        SliceRecord {
            ports: vec![port("pg", 5432)],
            endpoints: vec![
                ep("10.0.0.1", Some("db-0"), true),
                ep("10.0.0.2", None, true),
                ep("10.0.0.3", Some("db-2"), false),
            ],
        },
    );
    i.upsert_service(
        "ns",
        "empty",
        ServiceRecord {
            kind: ServiceKind::Headless,
            ports: vec![],
            publish_not_ready: false,
        },
    );
    i.upsert_service(
        "ns",
        "ext",
        ServiceRecord {
            kind: ServiceKind::ExternalName("example.com".into()),
            ports: vec![],
            publish_not_ready: false,
        },
    );
    i.upsert_service(
        "ns",
        "alias",
        ServiceRecord {
            kind: ServiceKind::ExternalName("web.ns.svc.cluster.local".into()),
            ports: vec![],
            publish_not_ready: false,
        },
    );
    i.upsert_pod("ns", "p", vec![ip("10.0.0.9")]);
    i
}

fn zone(pods: PodsMode) -> Zone {
    Zone::new("cluster.local", 30, pods, None, vec![ip("10.96.0.53")]).expect("zone")
}

fn ask(index: &Index, q: &str, t: RecordType) -> Answer {
    match zone(PodsMode::Insecure).answer(index, true, &name(q), t) {
        Outcome::Zone(a) => a,
        Outcome::Forward => panic!("{q} {t} was forwarded"),
    }
}

fn data(a: &Answer) -> Vec<String> {
    let mut v: Vec<String> = a.answers.iter().map(|r| r.data.to_string()).collect();
    v.sort();
    v
}

fn nodata(a: &Answer) -> bool {
    a.rcode == ResponseCode::NoError
        && a.answers.is_empty()
        && a.authority.len() == 1
        && a.authority[0].record_type() == RecordType::SOA
}

fn nxdomain(a: &Answer) -> bool {
    a.rcode == ResponseCode::NXDomain && a.authority.len() == 1
}

#[test]
fn cluster_ip_services() {
    let i = fixture();
    let a = ask(&i, "web.ns.svc.cluster.local.", RecordType::A);
    assert_eq!(data(&a), ["10.96.0.10"]);
    assert_eq!(a.answers[0].ttl, 30);
    assert!(nodata(&ask(
        &i,
        "web.ns.svc.cluster.local.",
        RecordType::AAAA
    )));
    assert_eq!(
        data(&ask(&i, "dual.ns.svc.cluster.local.", RecordType::AAAA)),
        ["fd00::11"]
    );
    // Case-insensitive, owner as asked.
    let a = ask(&i, "WEB.Ns.svc.Cluster.Local.", RecordType::A);
    assert_eq!(data(&a), ["10.96.0.10"]);
    assert_eq!(a.answers[0].name.to_string(), "WEB.Ns.svc.Cluster.Local.");
    assert!(nodata(&ask(
        &i,
        "web.ns.svc.cluster.local.",
        RecordType::TXT
    )));
    assert!(nxdomain(&ask(
        &i,
        "nope.ns.svc.cluster.local.",
        RecordType::A
    )));
    assert!(nxdomain(&ask(
        &i,
        "web.nope.svc.cluster.local.",
        RecordType::A
    )));
}

#[test]
fn srv_records() {
    let i = fixture();
    let a = ask(&i, "_http._tcp.web.ns.svc.cluster.local.", RecordType::SRV);
    assert_eq!(data(&a), ["0 100 80 web.ns.svc.cluster.local."]);
    assert_eq!(a.additionals.len(), 1);
    assert!(nxdomain(&ask(
        &i,
        "_http._udp.web.ns.svc.cluster.local.",
        RecordType::SRV
    )));
    assert!(nxdomain(&ask(
        &i,
        "_grpc._tcp.web.ns.svc.cluster.local.",
        RecordType::SRV
    )));
    // Every port without a port and protocol; dual-stack halves the weight.
    let a = ask(&i, "dual.ns.svc.cluster.local.", RecordType::SRV);
    assert_eq!(data(&a), ["0 50 80 dual.ns.svc.cluster.local."]);
    assert_eq!(a.additionals.len(), 2);
    // A on an SRV name: the addresses behind it.
    assert_eq!(
        data(&ask(
            &i,
            "_http._tcp.web.ns.svc.cluster.local.",
            RecordType::A
        )),
        ["10.96.0.10"]
    );
    let a = ask(&i, "_pg._tcp.db.ns.svc.cluster.local.", RecordType::SRV);
    assert_eq!(
        data(&a),
        [
            "0 50 5432 10-0-0-2.db.ns.svc.cluster.local.",
            "0 50 5432 db-0.db.ns.svc.cluster.local."
        ]
    );
    assert_eq!(a.additionals.len(), 2);
}

#[test]
fn headless_services() {
    let i = fixture();
    assert_eq!(
        data(&ask(&i, "db.ns.svc.cluster.local.", RecordType::A)),
        ["10.0.0.1", "10.0.0.2"]
    );
    assert!(nodata(&ask(
        &i,
        "db.ns.svc.cluster.local.",
        RecordType::AAAA
    )));
    assert_eq!(
        data(&ask(&i, "db-0.db.ns.svc.cluster.local.", RecordType::A)),
        ["10.0.0.1"]
    );
    assert_eq!(
        data(&ask(&i, "10-0-0-2.db.ns.svc.cluster.local.", RecordType::A)),
        ["10.0.0.2"]
    );
    // Not ready: not published.
    assert!(nxdomain(&ask(
        &i,
        "db-2.db.ns.svc.cluster.local.",
        RecordType::A
    )));
    assert!(nxdomain(&ask(
        &i,
        "empty.ns.svc.cluster.local.",
        RecordType::A
    )));
}

#[test]
fn publish_not_ready_addresses() {
    let mut i = fixture();
    i.upsert_service(
        "ns",
        "db",
        ServiceRecord {
            kind: ServiceKind::Headless,
            ports: vec![port("pg", 5432)],
            publish_not_ready: true,
        },
    );
    assert_eq!(
        data(&ask(&i, "db.ns.svc.cluster.local.", RecordType::A)),
        ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    );
}

#[test]
fn external_names() {
    let i = fixture();
    let a = ask(&i, "ext.ns.svc.cluster.local.", RecordType::A);
    assert_eq!(data(&a), ["example.com."]);
    assert_eq!(a.chase, Some(name("example.com.")));
    let a = ask(&i, "ext.ns.svc.cluster.local.", RecordType::CNAME);
    assert_eq!(a.chase, None);
    assert!(nodata(&ask(
        &i,
        "ext.ns.svc.cluster.local.",
        RecordType::SRV
    )));
    // Inside the zone the target is followed here.
    let a = ask(&i, "alias.ns.svc.cluster.local.", RecordType::A);
    assert_eq!(a.answers.len(), 2);
    assert_eq!(a.chase, None);
    assert_eq!(a.answers[1].data.to_string(), "10.96.0.10");
}

#[test]
fn fixed_names_and_negative_answers() {
    let i = fixture();
    let a = ask(&i, "dns-version.cluster.local.", RecordType::TXT);
    assert_eq!(data(&a), ["1.1.0"]);
    for q in [
        "cluster.local.",
        "svc.cluster.local.",
        "ns.svc.cluster.local.",
        "dns-version.cluster.local.",
    ] {
        assert!(nodata(&ask(&i, q, RecordType::A)), "{q}");
    }
    let soa = ask(&i, "cluster.local.", RecordType::SOA);
    let text = soa.answers[0].data.to_string();
    assert!(
        text.starts_with("ns.dns.cluster.local. hostmaster.cluster.local. "),
        "{text}"
    );
    assert!(text.ends_with(" 7200 1800 86400 30"), "{text}");
    let ns = ask(&i, "cluster.local.", RecordType::NS);
    assert_eq!(data(&ns), ["ns.dns.cluster.local."]);
    assert_eq!(
        data(&ask(&i, "ns.dns.cluster.local.", RecordType::A)),
        ["10.96.0.53"]
    );
    assert!(nxdomain(&ask(&i, "nope.cluster.local.", RecordType::A)));
    assert!(nxdomain(&ask(
        &i,
        "a.b.c.d.ns.svc.cluster.local.",
        RecordType::A
    )));
}

#[test]
fn pod_records_by_mode() {
    let i = fixture();
    let q = |mode, qname: &str, t| match zone(mode).answer(&i, true, &name(qname), t) {
        Outcome::Zone(a) => a,
        Outcome::Forward => panic!("forwarded"),
    };
    let known = "10-0-0-9.ns.pod.cluster.local.";
    let unknown = "10-0-0-8.ns.pod.cluster.local.";
    assert_eq!(
        data(&q(PodsMode::Insecure, unknown, RecordType::A)),
        ["10.0.0.8"]
    );
    assert!(nodata(&q(PodsMode::Insecure, unknown, RecordType::AAAA)));
    assert!(nxdomain(&q(
        PodsMode::Insecure,
        "10-0-0-8.nope.pod.cluster.local.",
        RecordType::A
    )));
    assert!(nxdomain(&q(
        PodsMode::Insecure,
        "web.ns.pod.cluster.local.",
        RecordType::A
    )));
    assert_eq!(
        data(&q(PodsMode::Verified, known, RecordType::A)),
        ["10.0.0.9"]
    );
    assert!(nxdomain(&q(PodsMode::Verified, unknown, RecordType::A)));
    assert!(nxdomain(&q(
        PodsMode::Verified,
        "10-0-0-9.other.pod.cluster.local.",
        RecordType::A
    )));
    assert!(nxdomain(&q(PodsMode::Disabled, known, RecordType::A)));
    assert!(nxdomain(&q(
        PodsMode::Disabled,
        "ns.pod.cluster.local.",
        RecordType::A
    )));
    assert!(nodata(&q(
        PodsMode::Insecure,
        "ns.pod.cluster.local.",
        RecordType::A
    )));
    assert_eq!(
        data(&q(
            PodsMode::Insecure,
            "fd00--9.ns.pod.cluster.local.",
            RecordType::AAAA
        )),
        ["fd00::9"]
    );
}

#[test]
fn reverse_lookups() {
    let i = fixture();
    let a = ask(&i, "10.0.96.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(data(&a), ["web.ns.svc.cluster.local."]);
    let a = ask(&i, "1.0.0.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(data(&a), ["db-0.db.ns.svc.cluster.local."]);
    let v6 = names::reverse_name(ip("fd00::11"));
    assert_eq!(
        data(&ask(&i, &v6, RecordType::PTR)),
        ["dual.ns.svc.cluster.local."]
    );
    let z = zone(PodsMode::Insecure);
    assert_eq!(
        z.answer(&i, true, &name("77.0.0.10.in-addr.arpa."), RecordType::PTR),
        Outcome::Forward
    );
    assert_eq!(
        z.answer(&i, true, &name("example.com."), RecordType::A),
        Outcome::Forward
    );
}

#[test]
fn namespace_filter_and_sync() {
    let i = fixture();
    let z = Zone::new(
        "cluster.local",
        30,
        PodsMode::Insecure,
        Some(["other".to_string()].into()),
        vec![],
    )
    .expect("zone");
    let Outcome::Zone(a) = z.answer(&i, true, &name("web.ns.svc.cluster.local."), RecordType::A)
    else {
        panic!("forwarded")
    };
    assert!(nxdomain(&a));
    let Outcome::Zone(a) = zone(PodsMode::Insecure).answer(
        &i,
        false,
        &name("web.ns.svc.cluster.local."),
        RecordType::A,
    ) else {
        panic!("forwarded")
    };
    assert_eq!(a.rcode, ResponseCode::ServFail);
}
