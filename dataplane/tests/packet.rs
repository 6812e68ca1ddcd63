//! The TC programs run on crafted packets with BPF_PROG_TEST_RUN: the
//! kernel executes the real object on each packet and hands back the bytes
//! it left, which are checked field by field, checksums included.
//!
//! Needs root (loading BPF); prints `SKIP: needs root` otherwise.

use std::net::IpAddr;
use std::path::PathBuf;

use aya::Ebpf;
use aya::maps::lpm_trie::Key as LpmKey;
use aya::maps::{HashMap, MapData};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use ferry_dataplane::bpf::{
    self, MapSizes, ObserveMaps, POD_TC_EGRESS, POD_TC_INGRESS, PolicyMaps, TC_EGRESS, TC_INGRESS,
    load_detached,
};
use ferry_dataplane::observe::event::decode;
use ferry_dataplane::service::maglev::{BackendId, Seed, Table, flow_bytes};
use ferry_dataplane::service::model::{
    Backend as ModelBackend, Frontend, FrontendKind, LbAlgorithm, Protocol, ServicePortEntries,
    ServicePortName,
};
use ferry_dataplane::service::nat_ports::NatPorts;
use ferry_dataplane::service::programmer::{LbSettings, Programmer, addr_words};
use ferry_ebpf_common::observe::{
    FLOW_DIR_NONE, FLOW_DROPPED, FLOW_FORWARDED, FLOW_TRANSLATED, FlowEvent, ObserveConfig,
    REASON_NOT_ISOLATED, REASON_POLICY_ALLOWED, REASON_POLICY_DENIED, REASON_SERVICE,
    REASON_SPOOFED,
};
use ferry_ebpf_common::policy::{
    DIR_EGRESS, DIR_INGRESS, EP_ISOLATED_EGRESS, EP_ISOLATED_INGRESS, IDENTITY_ANY,
    IDENTITY_CIDR_BIT, IDENTITY_HOST, PolicyCidrKey, PolicyEndpoint, PolicyRuleKey,
    PolicyRuleValue, PolicyStats, RULE_PREFIX_ANY_PORT, RULE_PREFIX_ANY_PROTO,
};
use ferry_ebpf_common::{
    BACKEND_FLAG_LOCAL, Backend, BackendKey, CtKey, CtValue, MAP_BACKENDS, MAP_CONNTRACK,
    MAP_NODE_ADDRS, MAP_SERVICES, NodeAddrs, PROTO_TCP, PROTO_UDP, SCOPE_EXTERNAL, SCOPE_INTERNAL,
    ServiceKey, ServiceValue,
};
use ferry_testbed::packet::{PROTO_SCTP, endpoints, frame, icmp};
use ferry_testbed::{BPFFS, skip_if_not_root};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
/// BPF_PROG_TEST_RUN gives skbs the loopback device unless told otherwise.
const LOOPBACK: u32 = 1;

/// The object loaded with its maps pinned in a bpffs directory of the
/// test's own, removed on drop.
struct Loaded {
    ebpf: Ebpf,
    dir: PathBuf,
}

impl Loaded {
    fn new(name: &str) -> Self {
        let dir = PathBuf::from(BPFFS).join(format!("ferry-unit-{}-{name}", std::process::id()));
        sweep_dead_dirs();
        let _ = std::fs::remove_dir_all(&dir);
        let ebpf =
            load_detached(&dir, &MapSizes::default()).expect("the verifier accepts the programs");
        let mut l = Self { ebpf, dir };
        // The test device is a node device (`--devices`), so far without
        // addresses; `pod_device` makes it a pod's.
        l.node_addrs(NodeAddrs::default());
        l
    }

    fn node_addrs(&mut self, addrs: NodeAddrs) {
        self.map::<u32, NodeAddrs>(MAP_NODE_ADDRS)
            .insert(LOOPBACK, addrs, 0)
            .expect("node addrs");
    }

    fn pod_device(&mut self) {
        self.map::<u32, NodeAddrs>(MAP_NODE_ADDRS)
            .remove(&LOOPBACK)
            .expect("node addrs");
    }

    fn map<K: aya::Pod, V: aya::Pod>(&mut self, name: &str) -> HashMap<&mut MapData, K, V> {
        HashMap::try_from(self.ebpf.map_mut(name).expect("map")).expect("hash map")
    }

    /// A service with `backends` at frontend `front:port`, for traffic
    /// from outside the node.
    fn service(&mut self, front: IpAddr, port: u16, proto: u8, id: u32, backends: &[Backend]) {
        self.service_in(SCOPE_EXTERNAL, front, port, proto, id, backends);
    }

    fn service_in(
        &mut self,
        scope: u8,
        front: IpAddr,
        port: u16,
        proto: u8,
        id: u32,
        backends: &[Backend],
    ) {
        let key = ServiceKey {
            addr: addr_words(front),
            port: port.to_be(),
            proto,
            scope,
        };
        let value = ServiceValue {
            id,
            count: u16::try_from(backends.len()).expect("count"),
            ..ServiceValue::default()
        };
        let mut slots = self.map::<BackendKey, Backend>(MAP_BACKENDS);
        for (i, b) in backends.iter().enumerate() {
            let k = BackendKey {
                id,
                slot: u16::try_from(i).expect("slot"),
                rev: 0,
                _pad: 0,
            };
            slots.insert(k, b, 0).expect("backend");
        }
        self.map::<ServiceKey, ServiceValue>(MAP_SERVICES)
            .insert(key, value, 0)
            .expect("service");
    }

    fn run(&mut self, program: &str, packet: &[u8]) -> (u32, Vec<u8>) {
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(program)
            .expect("program")
            .try_into()
            .expect("classifier");
        let mut out = vec![0u8; packet.len() + 256];
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(packet),
                data_out: Some(&mut out),
                ..TestRunOptions::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    fn flows(&mut self) -> Vec<(CtKey, CtValue)> {
        self.map::<CtKey, CtValue>(MAP_CONNTRACK)
            .iter()
            .map(|e| e.expect("conntrack entry"))
            .collect()
    }
}

impl Drop for Loaded {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Pin directories of test processes that died before their drop ran.
fn sweep_dead_dirs() {
    let Ok(entries) = std::fs::read_dir(BPFFS) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("ferry-unit-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !PathBuf::from(format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn backend(addr: &str, port: u16, local: bool) -> Backend {
    Backend {
        addr: addr_words(addr.parse().expect("ip")),
        port: port.to_be(),
        flags: if local { BACKEND_FLAG_LOCAL } else { 0 },
        _pad: 0,
    }
}

fn packet(proto: u8, src: (IpAddr, u16), dst: (IpAddr, u16), syn: bool) -> Vec<u8> {
    frame(proto, src, dst, syn)
}

/// The addresses and ports of a packet, after checking every checksum.
fn read(p: &[u8]) -> ((IpAddr, u16), (IpAddr, u16)) {
    endpoints(p).unwrap_or_else(|e| panic!("{e}: {p:02x?}"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

// --- tests ----------------------------------------------------------------

/// A new TCP flow to an ExternalIP goes to a local backend; its reply
/// leaving through egress comes from the ExternalIP again.
#[test]
fn dnat_to_local_backend_and_reverse_on_egress() {
    if skip_if_not_root() {
        return;
    }
    let mut l = Loaded::new("local");
    let (ext, client, pod) = (ip("192.0.2.80"), ip("198.51.100.7"), ip("10.244.0.5"));
    l.service(ext, 80, PROTO_TCP, 1, &[backend("10.244.0.5", 8080, true)]);

    let syn = packet(PROTO_TCP, (client, 40000), (ext, 80), true);
    let (rc, out) = l.run(TC_INGRESS, &syn);
    assert_eq!(rc, TC_ACT_OK);
    assert_eq!(read(&out), ((client, 40000), (pod, 8080)));

    let reply = packet(PROTO_TCP, (pod, 8080), (client, 40000), false);
    let (rc, out) = l.run(TC_EGRESS, &reply);
    assert_eq!(rc, TC_ACT_OK);
    assert_eq!(
        read(&out),
        ((ext, 80), (client, 40000)),
        "reply from the frontend"
    );
    // Ingress never applies the egress entry, and vice versa.
    let (_, out) = l.run(TC_INGRESS, &reply);
    assert_eq!(out, reply);
    assert_eq!(l.flows().len(), 2, "forward and reply entries");
}

/// Every packet of a tracked flow keeps its backend; new flows spread.
#[test]
fn established_flows_keep_their_backend() {
    if skip_if_not_root() {
        return;
    }
    let mut l = Loaded::new("sticky");
    let ext = ip("192.0.2.81");
    let backends = [
        backend("10.244.0.5", 8080, true),
        backend("10.244.0.6", 8080, true),
        backend("10.244.0.7", 8080, true),
    ];
    l.service(ext, 80, PROTO_TCP, 2, &backends);
    let mut chosen = std::collections::BTreeSet::new();
    for sport in 41000..41030u16 {
        let client = ip("198.51.100.8");
        let (_, out) = l.run(
            TC_INGRESS,
            &packet(PROTO_TCP, (client, sport), (ext, 80), true),
        );
        let first = read(&out).1;
        chosen.insert(first.0);
        for _ in 0..10 {
            let (_, out) = l.run(
                TC_INGRESS,
                &packet(PROTO_TCP, (client, sport), (ext, 80), false),
            );
            assert_eq!(read(&out).1, first, "flow {sport} changed backend");
        }
    }
    assert!(
        chosen.len() >= 2,
        "30 flows spread over the backends: {chosen:?}"
    );
}

/// A backend on another node: the flow leaves from the node's address so
/// the reply comes back, and the reply is restored to frontend → client.
#[test]
fn remote_backend_is_source_translated_both_ways() {
    if skip_if_not_root() {
        return;
    }
    let mut l = Loaded::new("snat");
    let (ext, client, node, pod) = (
        ip("192.0.2.82"),
        ip("198.51.100.9"),
        ip("172.31.0.1"),
        ip("10.244.1.5"),
    );
    l.service(ext, 53, PROTO_UDP, 3, &[backend("10.244.1.5", 5353, false)]);
    // No node address on the device: the flow cannot be source-translated,
    // so it is dropped rather than sent where its reply would be lost.
    let dgram = packet(PROTO_UDP, (client, 50000), (ext, 53), false);
    let (rc, out) = l.run(TC_INGRESS, &dgram);
    assert_eq!((rc, read(&out)), (TC_ACT_SHOT, read(&dgram)));

    l.node_addrs(NodeAddrs {
        v4: addr_words(node),
        v6: [0; 4],
    });
    let (rc, out) = l.run(TC_INGRESS, &dgram);
    assert_eq!(rc, TC_ACT_OK);
    assert_eq!(read(&out), ((client, 50000), (pod, 5353)));
    let (rc, out) = l.run(TC_EGRESS, &out);
    assert_eq!(rc, TC_ACT_OK);
    let ((src, nat_port), dst) = read(&out);
    assert_eq!(
        (src, dst),
        (node, (pod, 5353)),
        "from the node toward the backend"
    );
    // The client's port is in the kernel's ephemeral range, where the
    // node's own sockets take theirs: the flow gets a port of the NAT range.
    let nat = NatPorts::default();
    assert!(
        (nat.min..=nat.max).contains(&nat_port),
        "{nat_port} outside the NAT range {nat}"
    );

    let reply = packet(PROTO_UDP, (pod, 5353), (node, nat_port), false);
    let (rc, out) = l.run(TC_INGRESS, &reply);
    assert_eq!(rc, TC_ACT_OK);
    assert_eq!(read(&out), ((ext, 53), (client, 50000)));

    // A client port inside the NAT range is kept when free; a second client
    // with the same port gets another port of the range.
    let mut translated = |client: IpAddr| {
        let (_, out) = l.run(
            TC_INGRESS,
            &packet(PROTO_UDP, (client, 62000), (ext, 53), false),
        );
        let (_, out) = l.run(TC_EGRESS, &out);
        let ((src, port), _) = read(&out);
        assert_eq!(src, node);
        port
    };
    assert_eq!(translated(ip("198.51.100.10")), 62000, "the client's own");
    let port = translated(ip("198.51.100.11"));
    assert!(
        port != 62000 && (nat.min..=nat.max).contains(&port),
        "clash resolved in the range: {port}"
    );
}

/// IPv6 has no header checksum, but TCP's covers the addresses.
#[test]
fn ipv6_dnat_keeps_checksums() {
    if skip_if_not_root() {
        return;
    }
    let mut l = Loaded::new("v6");
    let (ext, client, pod) = (
        ip("2001:db8::80"),
        ip("2001:db8:1::7"),
        ip("fd00:10:244::5"),
    );
    l.service(
        ext,
        443,
        PROTO_TCP,
        4,
        &[backend("fd00:10:244::5", 8443, true)],
    );
    let (rc, out) = l.run(
        TC_INGRESS,
        &packet(PROTO_TCP, (client, 40001), (ext, 443), true),
    );
    assert_eq!(rc, TC_ACT_OK);
    assert_eq!(read(&out), ((client, 40001), (pod, 8443)));
    let (_, out) = l.run(
        TC_EGRESS,
        &packet(PROTO_TCP, (pod, 8443), (client, 40001), false),
    );
    assert_eq!(read(&out), ((ext, 443), (client, 40001)));
}

/// Same address and port on TCP and UDP are different services; a
/// service without endpoints drops; everything else passes untouched.
#[test]
fn protocols_kept_apart_and_others_untouched() {
    if skip_if_not_root() {
        return;
    }
    let mut l = Loaded::new("misc");
    let (ext, client) = (ip("192.0.2.83"), ip("198.51.100.11"));
    l.service(ext, 80, PROTO_TCP, 5, &[backend("10.244.0.5", 8080, true)]);
    l.service(ext, 80, PROTO_UDP, 6, &[backend("10.244.0.6", 8081, true)]);
    let (_, out) = l.run(TC_INGRESS, &packet(PROTO_TCP, (client, 1), (ext, 80), true));
    assert_eq!(read(&out).1, (ip("10.244.0.5"), 8080));
    let (_, out) = l.run(
        TC_INGRESS,
        &packet(PROTO_UDP, (client, 1), (ext, 80), false),
    );
    assert_eq!(read(&out).1, (ip("10.244.0.6"), 8081));

    // No endpoints: anything but a SYN drops; a SYN is answered with a RST
    // (see `no_endpoints_refuses_with_a_reset`).
    l.service(ip("192.0.2.84"), 80, PROTO_TCP, 7, &[]);
    let ack = packet(PROTO_TCP, (client, 2), (ip("192.0.2.84"), 80), false);
    assert_eq!(l.run(TC_INGRESS, &ack).0, TC_ACT_SHOT, "no endpoints");

    for p in [
        packet(PROTO_TCP, (client, 3), (ip("192.0.2.85"), 80), true),
        packet(PROTO_TCP, (client, 3), (ext, 81), true),
        // ARP and a runt frame.
        [vec![0u8; 12], vec![0x08, 0x06], vec![0u8; 28]].concat(),
        vec![0u8; 20],
    ] {
        let (rc, out) = l.run(TC_INGRESS, &p);
        assert_eq!((rc, &out), (TC_ACT_OK, &p));
        let (rc, out) = l.run(TC_EGRESS, &p);
        assert_eq!((rc, &out), (TC_ACT_OK, &p));
    }
}

/// A SYN for a Service without endpoints comes back as the RST that
/// refuses it, on both families, with valid checksums, so the client gets
/// "connection refused" at once, as with kube-proxy's REJECT.
#[test]
fn no_endpoints_refuses_with_a_reset() {
    if skip_if_not_root() {
        return;
    }
    let mut l = Loaded::new("reject");
    for (front, client) in [
        (ip("192.0.2.86"), ip("198.51.100.12")),
        (ip("2001:db8::86"), ip("2001:db8:1::12")),
    ] {
        l.service(front, 80, PROTO_TCP, 8, &[]);
        let mut syn = packet(PROTO_TCP, (client, 40002), (front, 80), true);
        syn[..12].copy_from_slice(&[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2]);
        let (rc, out) = l.run(TC_INGRESS, &syn);
        assert_eq!(rc, TC_ACT_REDIRECT, "sent back out");
        assert_eq!(read(&out), ((front, 80), (client, 40002)));
        assert_eq!(&out[..6], &syn[6..12], "to the sender's MAC");
        assert_eq!(&out[6..12], &syn[..6], "from ours");
        // A bare TCP header: RST+ACK, acknowledging the SYN.
        let l4 = out.len() - 20;
        assert_eq!(out[l4 + 13], 0x14, "RST and ACK");
        assert_eq!(&out[l4 + 8..l4 + 12], &2u32.to_be_bytes(), "acks the SYN");
        assert_eq!(out[l4 + 12] >> 4, 5, "no options");
    }
}

/// A datagram for a Service without endpoints is answered with an ICMP
/// port unreachable quoting it (ICMPv6 on IPv6), sent back out.
#[test]
fn no_endpoints_answers_udp_with_port_unreachable() {
    if skip_if_not_root() {
        return;
    }
    let mut l = Loaded::new("unreach");
    for (front, client) in [
        (ip("192.0.2.87"), ip("198.51.100.13")),
        (ip("2001:db8::87"), ip("2001:db8:1::13")),
    ] {
        l.service(front, 53, PROTO_UDP, 9, &[]);
        let dgram = packet(PROTO_UDP, (client, 40003), (front, 53), false);
        let (rc, out) = l.run(TC_INGRESS, &dgram);
        assert_eq!(rc, TC_ACT_REDIRECT, "sent back out");
        let v4 = front.is_ipv4();
        let ip_len = if v4 { 20 } else { 40 };
        let ip = &out[14..14 + ip_len];
        let icmp = &out[14 + ip_len..];
        let sum = |bytes: &[u8], init: u32| -> u16 {
            let mut s = bytes
                .chunks(2)
                .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
                .sum::<u32>()
                + init;
            while s > 0xffff {
                s = (s & 0xffff) + (s >> 16);
            }
            s as u16
        };
        let pseudo = if v4 {
            assert_eq!(sum(ip, 0), 0xffff, "IPv4 header checksum");
            assert_eq!(ip[9], 1, "ICMP");
            assert_eq!((&ip[12..16], &ip[16..20]), (&dgram[30..34], &dgram[26..30]));
            assert_eq!((icmp[0], icmp[1]), (3, 3), "port unreachable");
            0
        } else {
            assert_eq!(ip[6], 58, "ICMPv6");
            assert_eq!((&ip[8..24], &ip[24..40]), (&dgram[38..54], &dgram[22..38]));
            assert_eq!((icmp[0], icmp[1]), (1, 4), "port unreachable");
            let addrs: u32 = ip[8..40]
                .chunks(2)
                .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
                .sum();
            addrs + icmp.len() as u32 + 58
        };
        assert_eq!(sum(icmp, pseudo), 0xffff, "ICMP checksum");
        // The quote: the datagram's own IP header and UDP header.
        assert_eq!(&icmp[8..], &dgram[14..14 + ip_len + 8], "quoted headers");
    }
}

/// On a pod's device (no node addresses) traffic is in-cluster: the
/// internal-scope entry applies and a remote backend gets the client's own
/// address, its reply restored where it leaves toward the client pod.
#[test]
fn pod_devices_use_internal_scope_without_source_nat() {
    if skip_if_not_root() {
        return;
    }
    let mut l = Loaded::new("poddev");
    l.pod_device();
    let (vip, client, pod) = (ip("10.96.0.10"), ip("10.244.0.9"), ip("10.244.1.5"));
    // Only an external-scope entry: a pod's traffic does not use it.
    l.service(
        vip,
        80,
        PROTO_TCP,
        10,
        &[backend("10.244.1.6", 8080, false)],
    );
    let syn = packet(PROTO_TCP, (client, 40004), (vip, 80), true);
    assert_eq!(l.run(TC_INGRESS, &syn), (TC_ACT_OK, syn.clone()));
    l.service_in(
        SCOPE_INTERNAL,
        vip,
        80,
        PROTO_TCP,
        11,
        &[backend("10.244.1.5", 8080, false)],
    );
    let (rc, out) = l.run(TC_INGRESS, &syn);
    assert_eq!(rc, TC_ACT_OK);
    assert_eq!(read(&out), ((client, 40004), (pod, 8080)), "no source NAT");
    let reply = packet(PROTO_TCP, (pod, 8080), (client, 40004), false);
    let (_, out) = l.run(TC_EGRESS, &reply);
    assert_eq!(read(&out), ((vip, 80), (client, 40004)));
}

/// A pod's UDP flow from port P to a Service was translated to backend B;
/// later the pod sends from the same port P straight to B. B's reply to
/// that direct flow must not be rewritten to come from the Service (the
/// client would drop it): the direct flow supersedes the stale entries,
/// and a later flow to the Service is translated afresh.
#[test]
fn a_direct_flow_supersedes_a_stale_translation_of_its_tuple() {
    if skip_if_not_root() {
        return;
    }
    let mut l = Loaded::new("superseded");
    l.pod_device();
    let (vip, client, pod) = (ip("10.96.0.53"), ip("10.244.0.9"), ip("10.244.1.7"));
    l.service_in(
        SCOPE_INTERNAL,
        vip,
        53,
        PROTO_UDP,
        12,
        &[backend("10.244.1.7", 5353, false)],
    );
    let to_vip = packet(PROTO_UDP, (client, 41234), (vip, 53), false);
    let (_, out) = l.run(TC_INGRESS, &to_vip);
    assert_eq!(read(&out), ((client, 41234), (pod, 5353)));
    let reply = packet(PROTO_UDP, (pod, 5353), (client, 41234), false);
    let (_, out) = l.run(TC_EGRESS, &reply);
    assert_eq!(read(&out), ((vip, 53), (client, 41234)), "translated reply");

    // The same source port, straight to the backend.
    let direct = packet(PROTO_UDP, (client, 41234), (pod, 5353), false);
    assert_eq!(l.run(TC_INGRESS, &direct), (TC_ACT_OK, direct.clone()));
    let (rc, out) = l.run(TC_EGRESS, &reply);
    assert_eq!(
        (rc, read(&out)),
        (TC_ACT_OK, ((pod, 5353), (client, 41234))),
        "the direct flow's reply comes from the backend itself"
    );
    assert!(
        l.flows().is_empty(),
        "stale entries removed: {:?}",
        l.flows()
    );

    // Back to the Service: a new translation, replies from the frontend.
    let (_, out) = l.run(TC_INGRESS, &to_vip);
    assert_eq!(read(&out), ((client, 41234), (pod, 5353)));
    let (_, out) = l.run(TC_EGRESS, &reply);
    assert_eq!(read(&out), ((vip, 53), (client, 41234)));
}

/// Maglev through the real programs and the agent's programmer: two nodes
/// (two loaded objects with maps of their own) given the same Service and
/// seed send each of 10,000 flows to the same backend, the one the
/// user-space reference table names; removing one of 10 backends moves
/// about a tenth of the flows, and only the removed backend's flows are
/// bound to move.
#[test]
fn maglev_same_backend_on_every_node_and_a_tenth_moves_on_a_removal() {
    if skip_if_not_root() {
        return;
    }
    let lb = LbSettings {
        algorithm: LbAlgorithm::Maglev,
        seed: Seed::from_setting("packet-test"),
        ..LbSettings::default()
    };
    let lb_ip = ip("192.0.2.80");
    let svc = ("default".to_owned(), "web".to_owned());
    let entries = |n: u8| {
        let backends: Vec<ModelBackend> = (1..=n)
            .map(|i| ModelBackend {
                addr: IpAddr::from([10, 244, 0, i]),
                port: 8080,
                local: true,
            })
            .collect();
        vec![ServicePortEntries {
            id: ServicePortName {
                namespace: svc.0.clone(),
                name: svc.1.clone(),
                port: "http".into(),
            },
            protocol: Protocol::Tcp,
            frontends: vec![Frontend {
                addr: lb_ip,
                port: 80,
                protocol: Protocol::Tcp,
                kind: FrontendKind::LoadBalancer,
            }],
            cluster_backends: backends.clone(),
            external_backends: backends,
            external_drop: false,
            source_ranges: Vec::new(),
            affinity_timeout: None,
            lb_algorithm: None,
        }]
    };
    let mut nodes = [Loaded::new("maglev-a"), Loaded::new("maglev-b")];
    let mut programmers: Vec<_> = nodes
        .iter()
        .map(|n| {
            let maps = bpf::open_maps(&n.dir).expect("pinned maps");
            Programmer::new(maps, MapSizes::default().stats, lb).expect("programmer")
        })
        .collect();
    for p in &mut programmers {
        p.apply(&svc, &entries(10)).expect("ten backends");
    }
    let flows: Vec<(IpAddr, u16)> = (0..10_000u32)
        .map(|i| {
            (
                IpAddr::from([198, 51, (i >> 8) as u8 % 4, i as u8]),
                20_000 + (i % 40_000) as u16,
            )
        })
        .collect();
    let backend_of = |l: &mut Loaded, client: (IpAddr, u16)| {
        let (rc, out) = l.run(TC_INGRESS, &packet(PROTO_TCP, client, (lb_ip, 80), true));
        assert_eq!(rc, TC_ACT_OK);
        read(&out).1
    };
    let ten: Vec<BackendId> = (1..=10u8)
        .map(|i| BackendId::new(IpAddr::from([10, 244, 0, i]), 8080))
        .collect();
    let reference = Table::build(&ten, lb.maglev_size, &lb.seed).expect("table");
    let mut before = Vec::with_capacity(flows.len());
    for &client in &flows {
        let a = backend_of(&mut nodes[0], client);
        let b = backend_of(&mut nodes[1], client);
        assert_eq!(a, b, "{client:?}: the nodes disagree");
        let hash = lb.seed.flow_hash(&flow_bytes(
            std::net::SocketAddr::from(client),
            std::net::SocketAddr::new(lb_ip, 80),
            PROTO_TCP,
        ));
        let want = ten[usize::from(reference.lookup(hash).expect("entry"))];
        assert_eq!(
            a,
            (want.addr, want.port),
            "{client:?}: not the reference's backend"
        );
        before.push(a);
    }
    let used: std::collections::BTreeSet<_> = before.iter().collect();
    assert_eq!(used.len(), 10, "every backend gets flows");

    // Backend 10.244.0.4 goes; the flows are replayed as new ones.
    programmers[0]
        .apply(
            &svc,
            &entries(10)
                .into_iter()
                .map(|mut e| {
                    e.external_backends
                        .retain(|b| b.addr != IpAddr::from([10, 244, 0, 4]));
                    e.cluster_backends = e.external_backends.clone();
                    e
                })
                .collect::<Vec<_>>(),
        )
        .expect("nine backends");
    let mut ct = nodes[0].map::<CtKey, CtValue>(MAP_CONNTRACK);
    let keys: Vec<CtKey> = ct.keys().map(|k| k.expect("key")).collect();
    for k in keys {
        let _ = ct.remove(&k);
    }
    let gone = (IpAddr::from([10, 244, 0, 4]), 8080);
    let (mut moved, mut moved_needlessly) = (0, 0);
    for (client, was) in flows.iter().zip(&before) {
        let now = backend_of(&mut nodes[0], *client);
        assert_ne!(now, gone, "a flow still goes to the removed backend");
        if now != *was {
            moved += 1;
            if *was != gone {
                moved_needlessly += 1;
            }
        }
    }
    let share = f64::from(moved) / flows.len() as f64;
    eprintln!(
        "moved {moved} of {} flows ({:.1} %), {moved_needlessly} off surviving backends",
        flows.len(),
        share * 100.0
    );
    assert!(
        (0.05..=0.15).contains(&share),
        "{:.1} % of flows moved",
        share * 100.0
    );
    assert!(
        moved_needlessly * 100 < flows.len(),
        "{moved_needlessly} flows left surviving backends"
    );
}

/// SCTP NodePort and externalIP traffic from outside is translated like
/// TCP and UDP, with SCTP's CRC32c (no IP pseudo-header; ports only)
/// updated on every port rewrite: to a local backend and back at egress,
/// and to a remote backend through source NAT both ways, IPv4 and IPv6.
/// `endpoints` recomputes the CRC32c of every packet it reads.
#[test]
fn sctp_is_translated_with_its_crc32c_kept_right() {
    if skip_if_not_root() {
        return;
    }
    let mut l = Loaded::new("sctp");
    let (ext, client, pod) = (ip("192.0.2.84"), ip("198.51.100.20"), ip("10.244.0.9"));
    l.service(
        ext,
        9000,
        PROTO_SCTP,
        5,
        &[backend("10.244.0.9", 9999, true)],
    );
    let init = packet(PROTO_SCTP, (client, 40000), (ext, 9000), true);
    let (rc, out) = l.run(TC_INGRESS, &init);
    assert_eq!(rc, TC_ACT_OK);
    assert_eq!(read(&out), ((client, 40000), (pod, 9999)));
    let reply = packet(PROTO_SCTP, (pod, 9999), (client, 40000), false);
    let (rc, out) = l.run(TC_EGRESS, &reply);
    assert_eq!(rc, TC_ACT_OK);
    assert_eq!(read(&out), ((ext, 9000), (client, 40000)));

    // A remote backend: source NAT to the node, both ways.
    let node = ip("172.31.0.1");
    let remote = ip("10.244.1.7");
    l.node_addrs(NodeAddrs {
        v4: addr_words(node),
        v6: [0; 4],
    });
    l.service(
        ext,
        9001,
        PROTO_SCTP,
        6,
        &[backend("10.244.1.7", 7777, false)],
    );
    let data = packet(PROTO_SCTP, (client, 40001), (ext, 9001), false);
    let (_, out) = l.run(TC_INGRESS, &data);
    assert_eq!(read(&out), ((client, 40001), (remote, 7777)));
    let (_, out) = l.run(TC_EGRESS, &out);
    let ((src, nat_port), dst) = read(&out);
    assert_eq!((src, dst), (node, (remote, 7777)));
    let back = packet(PROTO_SCTP, (remote, 7777), (node, nat_port), false);
    let (_, out) = l.run(TC_INGRESS, &back);
    assert_eq!(read(&out), ((ext, 9001), (client, 40001)));

    // IPv6.
    let (ext6, client6, pod6) = (
        ip("2001:db8::84"),
        ip("2001:db8:1::20"),
        ip("fd00:10:244::9"),
    );
    l.service(
        ext6,
        9000,
        PROTO_SCTP,
        7,
        &[backend("fd00:10:244::9", 9999, true)],
    );
    let init6 = packet(PROTO_SCTP, (client6, 40000), (ext6, 9000), true);
    let (rc, out) = l.run(TC_INGRESS, &init6);
    assert_eq!(rc, TC_ACT_OK);
    assert_eq!(read(&out), ((client6, 40000), (pod6, 9999)));
}

// --- NetworkPolicy at pod devices --------------------------------------------

/// A rule of set `set` allowing `peer` in `dir`: `proto` 0 for every
/// protocol; `port` 0 for every port, else its first `bits` bits.
fn allow(maps: &mut PolicyMaps, set: u32, peer: u32, dir: u8, proto: u8, port: u16, bits: u32) {
    let prefix = match (proto, port) {
        (0, _) => RULE_PREFIX_ANY_PROTO,
        (_, 0) => RULE_PREFIX_ANY_PORT,
        _ => RULE_PREFIX_ANY_PORT + bits,
    };
    let key = PolicyRuleKey {
        set,
        peer,
        dir,
        proto,
        port: port.to_be(),
    };
    maps.rules
        .insert(&LpmKey::new(prefix, key), PolicyRuleValue { policy: 1 }, 0)
        .expect("rule");
}

fn endpoint(maps: &mut PolicyMaps, addr: &str, set: u32, flags: u32) {
    let ep = PolicyEndpoint {
        set,
        flags,
        ..PolicyEndpoint::default()
    };
    maps.endpoints
        .insert(addr_words(ip(addr)), ep, 0)
        .expect("endpoint");
}

fn cidr(maps: &mut PolicyMaps, net: &str, identity: u32) {
    let net: ferry_testbed::ipnet::IpNet = net.parse().expect("cidr");
    let bits = u32::from(net.prefix_len()) + if net.addr().is_ipv4() { 96 } else { 0 };
    let key = PolicyCidrKey {
        addr: addr_words(net.addr()),
    };
    maps.cidrs
        .insert(&LpmKey::new(bits, key), identity, 0)
        .expect("cidr");
}

/// What the pod device's programs say: `to_pod` on its egress (the pod's
/// ingress), else on its ingress (the pod's egress).
fn verdict(l: &mut Loaded, to_pod: bool, packet: &[u8]) -> u32 {
    let program = if to_pod {
        POD_TC_EGRESS
    } else {
        POD_TC_INGRESS
    };
    l.run(program, packet).0
}

/// Isolation, identities, protocols, ports and port ranges, the node's
/// own addresses, and state: an allowed flow's replies pass a direction
/// that allows nothing new.
#[test]
fn policy_allows_only_what_a_rule_names_and_the_replies_of_allowed_flows() {
    if skip_if_not_root() {
        return;
    }
    let mut l = Loaded::new("policy");
    l.pod_device();
    let mut maps = PolicyMaps::open_in(&l.dir).expect("policy maps");
    let (pod, peer, stranger, node) = ("10.244.0.5", "10.244.1.7", "10.244.2.9", "10.244.0.1");
    // A pod nobody isolates passes everything.
    let syn = |src: &str, sport, dst: &str, dport| {
        packet(PROTO_TCP, (ip(src), sport), (ip(dst), dport), true)
    };
    assert_eq!(
        verdict(&mut l, true, &syn(stranger, 1000, pod, 22)),
        TC_ACT_OK
    );

    endpoint(&mut maps, pod, 7, EP_ISOLATED_INGRESS | EP_ISOLATED_EGRESS);
    maps.identities
        .insert(addr_words(ip(peer)), 100, 0)
        .expect("id");
    maps.identities
        .insert(addr_words(ip(node)), IDENTITY_HOST, 0)
        .expect("id");
    allow(&mut maps, 7, 100, DIR_INGRESS, PROTO_TCP, 80, 16);
    // UDP 5300-5303: a 14-bit prefix of the port.
    allow(&mut maps, 7, 100, DIR_INGRESS, PROTO_UDP, 5300, 14);
    // From 172.16.0.0/12, any TCP port.
    cidr(&mut maps, "172.16.0.0/12", IDENTITY_CIDR_BIT | 1);
    allow(
        &mut maps,
        7,
        IDENTITY_CIDR_BIT | 1,
        DIR_INGRESS,
        PROTO_TCP,
        0,
        0,
    );

    let udp =
        |src: &str, dst: &str, dport| packet(PROTO_UDP, (ip(src), 999), (ip(dst), dport), false);
    for (what, p, want) in [
        ("peer, TCP 80", syn(peer, 40000, pod, 80), TC_ACT_OK),
        ("peer, TCP 81", syn(peer, 40001, pod, 81), TC_ACT_SHOT),
        (
            "peer, UDP 80: a TCP rule opens no UDP",
            udp(peer, pod, 80),
            TC_ACT_SHOT,
        ),
        (
            "peer, UDP 5302 in the range",
            udp(peer, pod, 5302),
            TC_ACT_OK,
        ),
        ("peer, UDP 5304 past it", udp(peer, pod, 5304), TC_ACT_SHOT),
        (
            "a pod without a rule",
            syn(stranger, 40002, pod, 80),
            TC_ACT_SHOT,
        ),
        (
            "the node itself, any port",
            syn(node, 40003, pod, 9999),
            TC_ACT_OK,
        ),
        (
            "an address in the block",
            syn("172.20.1.1", 40004, pod, 8443),
            TC_ACT_OK,
        ),
        (
            "an address outside it",
            syn("172.32.0.1", 40005, pod, 8443),
            TC_ACT_SHOT,
        ),
        (
            "ping: no rule for every protocol",
            icmp(ip(peer), ip(pod), 8, 7),
            TC_ACT_SHOT,
        ),
        // Egress is isolated and allows nothing new...
        (
            "the pod's own new flow",
            syn(pod, 5555, peer, 80),
            TC_ACT_SHOT,
        ),
    ] {
        assert_eq!(
            verdict(&mut l, !what.starts_with("the pod's"), &p),
            want,
            "{what}"
        );
    }
    // ...but the replies of the flows allowed in pass it.
    let reply = packet(PROTO_TCP, (ip(pod), 80), (ip(peer), 40000), false);
    assert_eq!(verdict(&mut l, false, &reply), TC_ACT_OK, "the reply");
    let reply = packet(PROTO_UDP, (ip(pod), 5302), (ip(peer), 999), false);
    assert_eq!(verdict(&mut l, false, &reply), TC_ACT_OK, "the UDP reply");

    // A rule for every protocol and port from anyone.
    allow(&mut maps, 7, IDENTITY_ANY, DIR_INGRESS, 0, 0, 0);
    assert_eq!(
        verdict(&mut l, true, &icmp(ip(stranger), ip(pod), 8, 9)),
        TC_ACT_OK
    );
    assert_eq!(verdict(&mut l, true, &udp(stranger, pod, 1)), TC_ACT_OK);
    // Its echo reply is the reverse of the request's tuple.
    assert_eq!(
        verdict(&mut l, false, &icmp(ip(pod), ip(stranger), 0, 9)),
        TC_ACT_OK
    );

    // Another device claiming the pod's address is not the pod.
    endpoint(&mut maps, pod, 7, EP_ISOLATED_INGRESS | EP_ISOLATED_EGRESS);
    let mut ep = maps.endpoints.get(&addr_words(ip(pod)), 0).expect("ep");
    ep.ifindex = LOOPBACK + 100;
    maps.endpoints
        .insert(addr_words(ip(pod)), ep, 0)
        .expect("ep");
    assert_eq!(
        verdict(&mut l, true, &syn(peer, 41000, pod, 80)),
        TC_ACT_SHOT
    );

    let mut sum = PolicyStats::default();
    for s in maps.stats.get(&0, 0).expect("stats").iter() {
        sum.add(s);
    }
    let [_, _, denied_in, denied_out] = sum.verdicts();
    assert!(denied_in + denied_out >= 8, "{sum:?}: denials counted");
    let spoofed = sum.counts[usize::from(REASON_SPOOFED) * 2 + usize::from(DIR_INGRESS)];
    assert_eq!(spoofed, 1, "the spoofed address counted by its reason");
}

/// IPv6: ipBlocks with an except (a longer prefix without the rule), and
/// neighbour discovery passing an isolated pod while ping does not.
#[test]
fn policy_ip_blocks_with_excepts_and_ipv6_neighbour_discovery() {
    if skip_if_not_root() {
        return;
    }
    let mut l = Loaded::new("policy6");
    l.pod_device();
    let mut maps = PolicyMaps::open_in(&l.dir).expect("policy maps");
    let pod = "fd00:10:244::5";
    endpoint(&mut maps, pod, 3, EP_ISOLATED_INGRESS | EP_ISOLATED_EGRESS);
    cidr(&mut maps, "fd00:99::/32", IDENTITY_CIDR_BIT | 1);
    cidr(&mut maps, "fd00:99:1::/48", IDENTITY_CIDR_BIT | 2);
    allow(
        &mut maps,
        3,
        IDENTITY_CIDR_BIT | 1,
        DIR_EGRESS,
        PROTO_TCP,
        443,
        16,
    );
    let syn = |dst: &str| packet(PROTO_TCP, (ip(pod), 50000), (ip(dst), 443), true);
    assert_eq!(verdict(&mut l, false, &syn("fd00:99:5::1")), TC_ACT_OK);
    assert_eq!(
        verdict(&mut l, false, &syn("fd00:99:1::9")),
        TC_ACT_SHOT,
        "the except"
    );
    assert_eq!(verdict(&mut l, false, &syn("fd00:98::1")), TC_ACT_SHOT);
    let router = ip("fe80::1");
    assert_eq!(
        verdict(&mut l, false, &icmp(ip(pod), router, 135, 0)),
        TC_ACT_OK,
        "NS"
    );
    assert_eq!(
        verdict(&mut l, true, &icmp(router, ip(pod), 136, 0)),
        TC_ACT_OK,
        "NA"
    );
    assert_eq!(
        verdict(&mut l, false, &icmp(ip(pod), router, 128, 1)),
        TC_ACT_SHOT,
        "ping"
    );
}

/// Two pods of one node share the policy conntrack: the source's egress
/// hook passing a flow (the source is not isolated for egress) must not
/// let it through the destination's ingress hook unjudged; and the replies
/// of a flow the destination let in pass both hooks on their way back.
#[test]
fn policy_judges_both_ends_of_a_flow_between_pods_of_one_node() {
    if skip_if_not_root() {
        return;
    }
    let mut l = Loaded::new("policy-node");
    l.pod_device();
    let mut maps = PolicyMaps::open_in(&l.dir).expect("policy maps");
    let (a, c) = ("10.244.0.5", "10.244.0.6");
    // Both isolated for ingress only (a default-deny-ingress namespace).
    endpoint(&mut maps, a, 1, EP_ISOLATED_INGRESS);
    endpoint(&mut maps, c, 1, EP_ISOLATED_INGRESS);
    maps.identities
        .insert(addr_words(ip(a)), 100, 0)
        .expect("id");
    maps.identities
        .insert(addr_words(ip(c)), 100, 0)
        .expect("id");
    let syn = packet(PROTO_TCP, (ip(a), 40000), (ip(c), 80), true);
    assert_eq!(
        verdict(&mut l, false, &syn),
        TC_ACT_OK,
        "a's egress: not isolated"
    );
    assert_eq!(
        verdict(&mut l, true, &syn),
        TC_ACT_SHOT,
        "c's ingress: isolated, no rule"
    );

    // Now c lets a in: the flow passes both hooks, and so do its replies.
    allow(&mut maps, 1, 100, DIR_INGRESS, PROTO_TCP, 81, 16);
    let syn = packet(PROTO_TCP, (ip(a), 40001), (ip(c), 81), true);
    assert_eq!(verdict(&mut l, false, &syn), TC_ACT_OK);
    assert_eq!(verdict(&mut l, true, &syn), TC_ACT_OK);
    let reply = packet(PROTO_TCP, (ip(c), 81), (ip(a), 40001), false);
    assert_eq!(
        verdict(&mut l, false, &reply),
        TC_ACT_OK,
        "c's egress, the reply"
    );
    assert_eq!(
        verdict(&mut l, true, &reply),
        TC_ACT_OK,
        "a's ingress, the reply"
    );
    // But the reply's tuple is no way in for c's own new flow to a.
    let back = packet(PROTO_TCP, (ip(c), 40002), (ip(a), 81), true);
    assert_eq!(
        verdict(&mut l, true, &back),
        TC_ACT_OK,
        "a allows 100 on 81 too"
    );
    let back = packet(PROTO_TCP, (ip(c), 40003), (ip(a), 22), true);
    assert_eq!(verdict(&mut l, true, &back), TC_ACT_SHOT);
}

// --- Flow events --------------------------------------------------------------

/// The events waiting in the ring, decoded.
fn drain(obs: &mut ObserveMaps) -> Vec<FlowEvent> {
    let mut out = Vec::new();
    while let Some(item) = obs.events.next() {
        out.push(decode(&item).expect("an event"));
    }
    out
}

fn watch(obs: &mut ObserveMaps, until_ns: u64, rate: u32) {
    let cfg = ObserveConfig {
        until_ns,
        rate,
        burst: rate,
    };
    obs.config.set(0, cfg, 0).expect("observe switch");
}

/// Flow events: none while the switch is off; while on, one per judged new
/// flow (forwarded with the allowing policy, dropped with the pod's policy
/// set), one per hook for a flow of a pod no policy judges (never for its
/// replies or later packets), one per translated flow, and none past the
/// rate, which counts what it refuses.
#[test]
fn flow_events_only_while_watched_one_per_new_flow_and_rate_limited() {
    if skip_if_not_root() {
        return;
    }
    let mut l = Loaded::new("observe");
    l.pod_device();
    let mut maps = PolicyMaps::open_in(&l.dir).expect("policy maps");
    let mut obs = ObserveMaps::open_in(&l.dir).expect("observe maps");
    let (pod, peer, stranger, free) = ("10.244.0.5", "10.244.1.7", "10.244.2.9", "10.244.0.6");
    endpoint(&mut maps, pod, 7, EP_ISOLATED_INGRESS);
    endpoint(&mut maps, free, 0, 0);
    maps.identities
        .insert(addr_words(ip(peer)), 100, 0)
        .expect("id");
    allow(&mut maps, 7, 100, DIR_INGRESS, PROTO_TCP, 80, 16);
    let syn = |src: &str, sport, dst: &str, dport| {
        packet(PROTO_TCP, (ip(src), sport), (ip(dst), dport), true)
    };
    let ack = |src: &str, sport, dst: &str, dport| {
        packet(PROTO_TCP, (ip(src), sport), (ip(dst), dport), false)
    };

    // Off: verdicts as ever, no event.
    assert_eq!(verdict(&mut l, true, &syn(peer, 40000, pod, 80)), TC_ACT_OK);
    assert_eq!(
        verdict(&mut l, true, &syn(stranger, 40000, pod, 80)),
        TC_ACT_SHOT
    );
    assert_eq!(
        verdict(&mut l, true, &syn(stranger, 40000, free, 80)),
        TC_ACT_OK
    );
    assert!(drain(&mut obs).is_empty(), "no event while nobody watches");

    watch(&mut obs, u64::MAX, 1000);
    // Allowed by a rule: the policy's number and the pod's set.
    assert_eq!(verdict(&mut l, true, &syn(peer, 40001, pod, 80)), TC_ACT_OK);
    assert_eq!(verdict(&mut l, true, &ack(peer, 40001, pod, 80)), TC_ACT_OK);
    assert_eq!(
        verdict(&mut l, false, &ack(pod, 80, peer, 40001)),
        TC_ACT_OK
    );
    let ev = drain(&mut obs);
    assert_eq!(
        ev.len(),
        1,
        "one event for the flow, none for its later packets or replies: {ev:?}"
    );
    let e = ev[0];
    assert_eq!(
        (e.kind, e.dir, e.reason),
        (FLOW_FORWARDED, DIR_INGRESS, REASON_POLICY_ALLOWED)
    );
    assert_eq!((e.policy, e.set), (1, 7));
    assert_eq!((e.src, e.dst), (addr_words(ip(peer)), addr_words(ip(pod))));
    assert_eq!(
        (u16::from_be(e.sport), u16::from_be(e.dport), e.proto),
        (40001, 80, PROTO_TCP)
    );
    assert!(e.time_ns > 0);

    // Denied: every dropped packet is an event (a retransmitted SYN too).
    for _ in 0..2 {
        assert_eq!(
            verdict(&mut l, true, &syn(stranger, 40002, pod, 80)),
            TC_ACT_SHOT
        );
    }
    let ev = drain(&mut obs);
    assert_eq!(ev.len(), 2, "{ev:?}");
    for e in ev {
        assert_eq!(
            (e.kind, e.dir, e.reason),
            (FLOW_DROPPED, DIR_INGRESS, REASON_POLICY_DENIED)
        );
        assert_eq!((e.policy, e.set), (0, 7));
    }

    // A pod no policy selects: its new flow once per hook, not its reply.
    assert_eq!(
        verdict(&mut l, true, &syn(stranger, 40003, free, 22)),
        TC_ACT_OK
    );
    assert_eq!(
        verdict(&mut l, true, &ack(stranger, 40003, free, 22)),
        TC_ACT_OK
    );
    assert_eq!(
        verdict(&mut l, false, &ack(free, 22, stranger, 40003)),
        TC_ACT_OK
    );
    let ev = drain(&mut obs);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(
        (ev[0].kind, ev[0].reason, ev[0].set),
        (FLOW_FORWARDED, REASON_NOT_ISOLATED, 0)
    );

    // A Service's frontend translated at the pod's device: the translation,
    // then the pod's egress verdict on the real backend.
    let vip = ip("10.96.0.10");
    l.service_in(
        SCOPE_INTERNAL,
        vip,
        80,
        PROTO_TCP,
        11,
        &[backend(peer, 8080, false)],
    );
    let to_vip = packet(PROTO_TCP, (ip(free), 40004), (vip, 80), true);
    assert_eq!(verdict(&mut l, false, &to_vip), TC_ACT_OK);
    let ev = drain(&mut obs);
    assert_eq!(ev.len(), 2, "{ev:?}");
    let (t, v) = (ev[0], ev[1]);
    assert_eq!(
        (t.kind, t.dir, t.reason),
        (FLOW_TRANSLATED, FLOW_DIR_NONE, REASON_SERVICE)
    );
    assert_eq!(
        (t.orig_dst, u16::from_be(t.orig_dport)),
        (addr_words(vip), 80)
    );
    assert_eq!((t.dst, u16::from_be(t.dport)), (addr_words(ip(peer)), 8080));
    assert_eq!(
        (v.kind, v.dir, v.dst),
        (FLOW_FORWARDED, DIR_EGRESS, addr_words(ip(peer)))
    );

    // One event a second at most: the second is refused, and counted.
    watch(&mut obs, u64::MAX, 1);
    let refused = |obs: &ObserveMaps| -> u64 {
        obs.stats
            .get(&0, 0)
            .expect("stats")
            .iter()
            .map(|s| s.rate_limited)
            .sum()
    };
    let before = refused(&obs);
    for sport in [40005, 40006, 40007] {
        assert_eq!(
            verdict(&mut l, true, &syn(stranger, sport, pod, 80)),
            TC_ACT_SHOT
        );
    }
    let ev = drain(&mut obs);
    assert!(ev.len() <= 1, "at most the burst: {ev:?}");
    assert!(refused(&obs) >= before + 2, "refused events are counted");

    // A lapsed lease is off: the agent that set it is gone.
    watch(&mut obs, 1, 1000);
    assert_eq!(
        verdict(&mut l, true, &syn(stranger, 40008, pod, 80)),
        TC_ACT_SHOT
    );
    assert!(drain(&mut obs).is_empty());
}
