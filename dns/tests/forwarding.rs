//! Names outside the zone, forwarded to a Debian `unbound` serving a small
//! zone in the node's namespace: answers, negative answers, reverse names
//! the cluster does not know, TCP fallback for a large answer, the cache,
//! an ExternalName chased upstream, and a loop detected. Needs root.

mod common;

use std::time::Duration;

use common::{Cluster, NS, dig, eventually};
use ferry_testbed::{Process, skip_if_not_root};
use serde_json::json;

const UNBOUND_PORT: u16 = 5300;

/// unbound on 127.0.0.1:5300 in the node's namespace, authoritative for
/// `example.test.` and one reverse name, recursing nowhere.
fn start_unbound(c: &Cluster) -> Process {
    let dir = c.world.state_dir().join("unbound");
    std::fs::create_dir_all(&dir).expect("unbound dir");
    // More TXT data than fits in 1232 bytes: only TCP carries it whole.
    let big: String = (0..40)
        .map(|i| {
            format!(
                "    local-data: 'big.example.test. 300 IN TXT \"{i:02}-{}\"'\n",
                "x".repeat(40)
            )
        })
        .collect();
    let conf = format!(
        r#"server:
    interface: 127.0.0.1@{UNBOUND_PORT}
    do-ip6: no
    chroot: ""
    username: ""
    directory: "{dir}"
    pidfile: "{dir}/unbound.pid"
    use-syslog: no
    logfile: ""
    verbosity: 0
    module-config: "iterator"
    access-control: 127.0.0.0/8 allow
    access-control: 10.0.0.0/8 allow
    local-zone: "example.test." static
    local-data: "www.example.test. 300 IN A 192.0.2.10"
    local-data: "db.example.test. 300 IN A 192.0.2.20"
    local-zone: "2.0.192.in-addr.arpa." static
    local-data-ptr: "192.0.2.10 www.example.test."
{big}remote-control:
    control-enable: no
"#,
        dir = dir.display()
    );
    let path = dir.join("unbound.conf");
    std::fs::write(&path, conf).expect("unbound.conf");
    c.node_netns()
        .exec(["ip", "link", "set", "lo", "up"])
        .expect("lo up");
    let process = c
        .node_netns()
        .spawn(["unbound", "-d", "-c", &path.to_string_lossy()])
        .expect("start unbound");
    let upstream = format!("127.0.0.1:{UNBOUND_PORT}").parse().expect("addr");
    eventually("unbound answering", 20, || {
        common::try_dig(c.node_netns(), upstream, "www.example.test.", "A").is_some()
    });
    process
}

#[test]
fn forwarding_through_unbound() {
    if skip_if_not_root() {
        return;
    }
    let c = Cluster::new(0);
    let node = c.node_netns();
    let _unbound = start_unbound(&c);
    let dns = c.start_dns(&["--upstream", &format!("127.0.0.1:{UNBOUND_PORT}")]);
    dns.wait_ready(node);

    let a = dig(node, dns.addr, "www.example.test.", "A", &[]);
    assert_eq!(a.data(), ["192.0.2.10"]);
    assert!(dig(node, dns.addr, "nope.example.test.", "A", &[]).status == "NXDOMAIN");
    // A reverse name no service holds goes upstream too.
    let ptr = dig(node, dns.addr, "10.2.0.192.in-addr.arpa.", "PTR", &[]);
    assert_eq!(ptr.data(), ["www.example.test."]);

    // Cached: the second answer is a hit and its TTL has counted down.
    std::thread::sleep(Duration::from_millis(1100));
    let again = dig(node, dns.addr, "www.example.test.", "A", &[]);
    assert!(again.answer[0].ttl < 30, "{again:?}");
    let metrics = dns.metrics(node);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("coredns_cache_hits_total{") && !l.ends_with(" 0")),
        "{metrics}"
    );
    assert!(
        metrics.contains("coredns_proxy_request_duration_seconds_bucket{"),
        "{metrics}"
    );

    // A large answer: unbound truncates over UDP, ferry-dns fetches it
    // over TCP, and gives it whole over TCP (truncated over plain UDP).
    let tcp = dig(node, dns.addr, "big.example.test.", "TXT", &["+tcp"]);
    assert_eq!(tcp.answer.len(), 40, "{tcp:?}");
    let udp = dig(
        node,
        dns.addr,
        "big.example.test.",
        "TXT",
        &["+noedns", "+ignore"],
    );
    assert!(udp.flags.contains(&"tc".to_string()), "{udp:?}");

    // An ExternalName is chased upstream: CNAME, then the target's address.
    c.apply(&json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "ext", "namespace": NS},
        "spec": {"type": "ExternalName", "externalName": "db.example.test"}}));
    let name = format!("ext.{NS}.svc.cluster.local.");
    eventually("ExternalName chased", 20, || {
        let r = dig(node, dns.addr, &name, "A", &[]);
        r.answer.len() == 2 && r.answer[0].rtype == "CNAME" && r.answer[1].data == "192.0.2.20"
    });
}

#[test]
fn a_forwarding_loop_is_detected() {
    if skip_if_not_root() {
        return;
    }
    let c = Cluster::new(0);
    let node = c.node_netns();
    // Its upstream is itself: every forwarded query would come straight
    // back.
    let own = format!("{}:53", c.world.node(0).ipv4);
    let dns = c.start_dns(&["--upstream", &own]);
    dns.wait_ready(node);
    eventually("loop detected", 20, || {
        dns.metrics(node)
            .lines()
            .any(|l| l.starts_with("ferry_dns_forward_loop_detected") && l.ends_with(" 1"))
    });
    // Names outside the zone get an answer (SERVFAIL) instead of circling
    // until the client gives up.
    let r = dig(node, dns.addr, "www.example.test.", "A", &[]);
    assert_eq!(r.status, "SERVFAIL");
    // The cluster zone is unaffected.
    assert!(dig(node, dns.addr, "cluster.local.", "SOA", &[]).status == "NOERROR");
}
