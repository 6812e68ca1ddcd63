//! The testbed proven with Debian's reference CNI plugins (`ptp`, `bridge`,
//! `host-local`, `tuning` from /usr/lib/cni): pod-to-pod traffic on one
//! node and across nodes over TCP and UDP, v4 and v6, with `ferry-netexec`
//! in the pods; cleanup on drop and on panic; the sweep of dead runs.
//!
//! Every test needs root and prints `SKIP: needs root` otherwise.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_testbed::{
    Cni, Error, NETEXEC_HTTP_PORT, NETEXEC_UDP_PORT, Netns, Node, Pod, REFERENCE_PLUGINS, World,
    http_get, list_netns, prefix_of, retry, skip_if_not_root, start_netexec, sweep, udp_request,
    unique_prefix, write_fake_owner,
};
use serde_json::{Value, json};

/// Per request.
const REQUEST: Duration = Duration::from_secs(2);
/// Per pair of pods, to allow for neighbour discovery and DAD.
const REACH: Duration = Duration::from_secs(15);

fn host_local(node: &Node) -> Value {
    let ranges: Vec<Value> = node
        .pod_cidrs
        .iter()
        .map(|cidr| json!([{ "subnet": cidr.to_string() }]))
        .collect();
    json!({
        "type": "host-local",
        "ranges": ranges,
        "routes": [{ "dst": "0.0.0.0/0" }, { "dst": "::/0" }],
        "dataDir": node.state_dir.join("ipam"),
    })
}

/// `ptp` + `host-local`: a veth per pod, routed by the node.
fn ptp() -> Cni {
    Cni::new([REFERENCE_PLUGINS], |node: &Node| {
        json!({
            "cniVersion": "1.0.0",
            "name": "testbed-ptp",
            "type": "ptp",
            "ipMasq": false,
            "ipam": host_local(node),
        })
    })
}

/// A conflist: `bridge` + `host-local`, then `tuning` chained after it.
fn bridge_conflist() -> Cni {
    Cni::new([REFERENCE_PLUGINS], |node: &Node| {
        json!({
            "cniVersion": "1.0.0",
            "name": "testbed-bridge",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": true,
                    "ipMasq": false,
                    "ipam": host_local(node),
                },
                { "type": "tuning", "sysctl": { "net.core.somaxconn": "777" } },
            ],
        })
    })
}

/// Checks that `client` reaches `server` (running ferry-netexec) at `ip`
/// over TCP (/hostname, /clientip) and UDP.
fn check_reach(client: &Pod, server: &Pod, ip: IpAddr, client_ip: IpAddr) {
    let http = SocketAddr::new(ip, NETEXEC_HTTP_PORT);
    let udp = SocketAddr::new(ip, NETEXEC_UDP_PORT);
    let (name, clientip, udp_name) = client
        .netns
        .in_netns(|| {
            let name = retry(REACH, Duration::from_millis(100), || {
                http_get(http, "/hostname", REQUEST)
            })?;
            let clientip = http_get(http, "/clientip", REQUEST)?;
            let udp_name = retry(REACH, Duration::from_millis(100), || {
                udp_request(udp, b"hostname", REQUEST)
            })?;
            Ok::<_, Error>((name, clientip, udp_name))
        })
        .expect("setns")
        .unwrap_or_else(|e| panic!("{} -> {} at {ip}: {e}", client.name, server.name));
    assert_eq!(name, server.name, "TCP {} -> {ip}", client.name);
    assert_eq!(udp_name, server.name, "UDP {} -> {ip}", client.name);
    let seen: SocketAddr = clientip.parse().expect("clientip is ip:port");
    assert_eq!(seen.ip(), client_ip, "no NAT between pods");
}

fn ours(prefix: &str) -> Vec<String> {
    list_netns()
        .into_iter()
        .filter(|n| prefix_of(n) == Some(prefix))
        .collect()
}

fn root_links() -> BTreeSet<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip link");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .collect()
}

/// Whether a link name is one the testbed or the reference plugins in it
/// would create.
fn looks_like_ours(name: &str) -> bool {
    ["br0", "ul0", "sink0", "sink1", "cni0"].contains(&name)
        || name.starts_with("veth")
        || name.starts_with(ferry_testbed::PREFIX_TAG)
        || (name.starts_with('n') && name[1..].chars().all(|c| c.is_ascii_digit()))
}

#[test]
fn pod_to_pod_across_nodes_with_ptp() {
    if skip_if_not_root() {
        return;
    }
    let started = Instant::now();
    let world = World::builder()
        .nodes(2)
        .pods_per_node(2)
        .cni(ptp())
        .route_pod_cidrs(true)
        .build()
        .expect("world");
    eprintln!("built in {:?}", started.elapsed());
    for pod in world.pods() {
        let node = world.node(pod.node);
        let v4 = pod.ipv4().expect("pod has IPv4");
        let v6 = pod.ipv6().expect("pod has IPv6");
        assert!(node.pod_cidrs.iter().any(|c| c.contains(&IpAddr::V4(v4))));
        assert!(node.pod_cidrs.iter().any(|c| c.contains(&IpAddr::V6(v6))));
        let addrs = pod
            .netns
            .exec(["ip", "-o", "addr", "show", "dev", "eth0"])
            .expect("ip addr in pod");
        assert!(addrs.contains(&v4.to_string()), "{addrs}");
        world.check_pod(&pod.name).expect("CNI CHECK");
    }
    let _servers: Vec<_> = world
        .pods()
        .iter()
        .map(|p| start_netexec(&p.netns, &["--hostname", &p.name]).expect("netexec"))
        .collect();
    for client in world.pods() {
        for server in world.pods().iter().filter(|s| s.name != client.name) {
            for (ip, from) in [
                (server.ipv4().map(IpAddr::V4), client.ipv4().map(IpAddr::V4)),
                (server.ipv6().map(IpAddr::V6), client.ipv6().map(IpAddr::V6)),
            ] {
                check_reach(client, server, ip.expect("ip"), from.expect("ip"));
            }
        }
    }
    eprintln!("2 nodes x 2 pods (ptp), 24 checks: {:?}", started.elapsed());
}

#[test]
fn pod_to_pod_with_bridge_conflist_and_chained_tuning() {
    if skip_if_not_root() {
        return;
    }
    let world = World::builder()
        .nodes(2)
        .pods_per_node(2)
        .cni(bridge_conflist())
        .route_pod_cidrs(true)
        .build()
        .expect("world");
    let somaxconn = world
        .pod(1, 0)
        .netns
        .exec(["cat", "/proc/sys/net/core/somaxconn"])
        .expect("read sysctl");
    assert_eq!(
        somaxconn.trim(),
        "777",
        "tuning ran after bridge, in the pod"
    );
    // VERSION of each conflist member, run the way a runtime runs it.
    let cni = world.cni_setup().expect("cni");
    let node = world.node(0);
    let versions = cni
        .version(&node.netns, &cni.config_for(node))
        .expect("VERSION");
    assert_eq!(versions.len(), 2);
    for v in &versions {
        let supported = v["supportedVersions"].as_array().expect("list");
        assert!(supported.contains(&json!("1.0.0")), "{v}");
    }
    for pod in world.pods() {
        world.check_pod(&pod.name).expect("CHECK of the conflist");
    }
    let _servers: Vec<_> = world
        .pods()
        .iter()
        .map(|p| start_netexec(&p.netns, &["--hostname", &p.name]).expect("netexec"))
        .collect();
    let a = world.pod(0, 0);
    for server in [world.pod(0, 1), world.pod(1, 0), world.pod(1, 1)] {
        for (ip, from) in [
            (server.ipv4().map(IpAddr::V4), a.ipv4().map(IpAddr::V4)),
            (server.ipv6().map(IpAddr::V6), a.ipv6().map(IpAddr::V6)),
        ] {
            check_reach(a, server, ip.expect("ip"), from.expect("ip"));
        }
    }
}

#[test]
fn nodes_forward_and_sink_unrouted_traffic() {
    if skip_if_not_root() {
        return;
    }
    let world = World::builder().nodes(2).build().expect("world");
    let (n0, n1) = (world.node(0), world.node(1));
    for node in world.nodes() {
        let ns = &node.netns;
        assert_eq!(
            ns.exec(["cat", "/proc/sys/net/ipv4/ip_forward"])
                .expect("cat")
                .trim(),
            "1"
        );
        let v6 = ns
            .exec(["cat", "/proc/sys/net/ipv6/conf/all/forwarding"])
            .expect("cat");
        assert_eq!(v6.trim(), "1");
        // Routes are only looked up, never used: nothing is sent.
        for dst in ["192.0.2.1", "2001:db8::1"] {
            let route = ns.exec(["ip", "route", "get", dst]).expect("route get");
            assert!(route.contains("dev sink0"), "{dst}: {route}");
        }
        let lo = ns.exec(["ip", "-o", "link", "show", "lo"]).expect("lo");
        assert!(lo.contains("UP"), "{lo}");
    }
    // Node to node over the underlay, both families, from a setns thread to
    // a server spawned in the other node.
    let _server = start_netexec(&n1.netns, &["--hostname", &n1.name]).expect("netexec");
    for ip in [IpAddr::V4(n1.ipv4), IpAddr::V6(n1.ipv6)] {
        let addr = SocketAddr::new(ip, NETEXEC_HTTP_PORT);
        let name = n0
            .netns
            .in_netns(|| {
                retry(REACH, Duration::from_millis(100), || {
                    http_get(addr, "/hostname", REQUEST)
                })
            })
            .expect("setns")
            .expect("node to node");
        assert_eq!(name, n1.name);
        let echo = n0
            .netns
            .in_netns(|| http_get(addr, "/echo?msg=hello%20ferry", REQUEST))
            .expect("setns")
            .expect("echo");
        assert_eq!(echo, "hello ferry");
    }
}

#[test]
fn netns_helpers_report_failures() {
    if skip_if_not_root() {
        return;
    }
    let world = World::builder().nodes(1).build().expect("world");
    let ns = &world.node(0).netns;
    // A failing command carries its stderr.
    let err = ns
        .exec(["ip", "link", "show", "nosuchlink"])
        .expect_err("no such link");
    assert!(matches!(err, Error::CommandFailed { .. }), "{err}");
    // A command running past its limit is killed.
    let started = Instant::now();
    let err = ns
        .exec_timeout(["sleep", "30"], Duration::from_millis(300))
        .expect_err("timeout");
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // A spawned process that exits while awaited is reported with its output.
    let mut p = ns.spawn(["sh", "-c", "echo bye; exit 3"]).expect("spawn");
    let err = p
        .wait_for_output("never", Duration::from_secs(10))
        .expect_err("exited");
    assert!(
        matches!(err, Error::ProcessExited { ref output, .. } if output.contains("bye")),
        "{err}"
    );
    // A panic inside in_netns reaches the caller.
    let caught = std::panic::catch_unwind(|| ns.in_netns(|| panic!("inside")));
    assert!(caught.is_err());
    // The setns thread really is in the node: binding the node's underlay
    // address only works there.
    let node_ip = IpAddr::V4(world.node(0).ipv4);
    let bound = ns
        .in_netns(|| std::net::UdpSocket::bind((node_ip, 0)).and_then(|s| s.local_addr()))
        .expect("setns")
        .expect("bind inside the node");
    assert_eq!(bound.ip(), node_ip);
    assert!(
        std::net::UdpSocket::bind((node_ip, 0)).is_err(),
        "not in the root namespace"
    );
}

#[test]
fn failed_add_and_removed_pods_leave_nothing() {
    if skip_if_not_root() {
        return;
    }
    let mut world = World::builder()
        .nodes(1)
        .pods_per_node(1)
        .cni(ptp())
        .build()
        .expect("world");
    let name = world.pod(0, 0).name.clone();
    let pod_ns = world.pod(0, 0).netns.clone();
    world.remove_pod(&name).expect("DEL");
    assert!(!pod_ns.exists());
    assert!(world.pods().is_empty());
    let added = world
        .add_pod_named(0, "web-1")
        .expect("second ADD")
        .name
        .clone();
    assert_eq!(added, "web-1");
    assert_eq!(world.pods().len(), 1);

    // A plugin that is not in CNI_PATH, and a plugin error with its code.
    let missing = Cni::new(
        [REFERENCE_PLUGINS],
        |_: &Node| json!({"cniVersion": "1.0.0", "name": "x", "type": "no-such-plugin"}),
    );
    let bad_ipam = Cni::new([REFERENCE_PLUGINS], |_: &Node| {
        json!({"cniVersion": "1.0.0", "name": "x", "type": "ptp",
               "ipam": {"type": "host-local", "ranges": []}})
    });
    for (cni, expect_code) in [(missing, false), (bad_ipam, true)] {
        let mut world = World::builder().nodes(1).cni(cni).build().expect("world");
        let before = ours(world.prefix()).len();
        let err = world.add_pod(0).expect_err("ADD must fail");
        match &err {
            Error::MissingBinary { .. } => assert!(!expect_code),
            Error::Cni { code, .. } => assert!(expect_code && code.is_some(), "{err}"),
            other => panic!("unexpected error {other}"),
        }
        assert_eq!(
            ours(world.prefix()).len(),
            before,
            "failed ADD left its netns"
        );
        world.close().expect("clean teardown");
    }
}

#[test]
fn drop_removes_namespaces_processes_and_state() {
    if skip_if_not_root() {
        return;
    }
    let links_before = root_links();
    let world = World::builder()
        .nodes(2)
        .pods_per_node(1)
        .cni(ptp())
        .route_pod_cidrs(true)
        .build()
        .expect("world");
    let prefix = world.prefix().to_owned();
    let state = world.state_dir().to_owned();
    assert_eq!(ours(&prefix).len(), 1 + 2 + 2);
    assert!(
        state.join("n0/ipam").exists(),
        "host-local kept its state there"
    );
    // A process the test forgot about (not even dropped): teardown kills it.
    let leaked = start_netexec(&world.pod(1, 0).netns, &[]).expect("netexec");
    let pid = leaked.pid();
    std::mem::forget(leaked);
    drop(world);
    assert!(ours(&prefix).is_empty(), "left {:?}", ours(&prefix));
    assert!(!state.exists());
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state_char = stat
        .rsplit_once(')')
        .map(|(_, r)| r.trim_start().chars().next());
    assert!(
        matches!(state_char, None | Some(Some('Z' | 'X'))),
        "forgotten process still running: {stat}"
    );
    let new_links: Vec<_> = root_links()
        .difference(&links_before)
        .filter(|n| looks_like_ours(n))
        .cloned()
        .collect();
    assert!(
        new_links.is_empty(),
        "links appeared in the root namespace: {new_links:?}"
    );
}

#[test]
fn panic_inside_a_test_still_cleans_up() {
    if skip_if_not_root() {
        return;
    }
    let seen: Arc<Mutex<Option<(String, std::path::PathBuf)>>> = Arc::default();
    let inner = Arc::clone(&seen);
    let result = std::panic::catch_unwind(move || {
        let world = World::new(1, 1, ptp()).expect("world");
        let _server = start_netexec(&world.pod(0, 0).netns, &[]).expect("netexec");
        *inner.lock().expect("lock") =
            Some((world.prefix().to_owned(), world.state_dir().to_owned()));
        panic!("deliberate panic with a live world");
    });
    assert!(result.is_err());
    let (prefix, state) = seen.lock().expect("lock").clone().expect("world was built");
    assert!(ours(&prefix).is_empty(), "left {:?}", ours(&prefix));
    assert!(!state.exists());
}

#[test]
fn sweep_removes_leftovers_of_dead_runs_only() {
    if skip_if_not_root() {
        return;
    }
    // A live world of this process must survive the sweep.
    let live = World::builder().nodes(1).build().expect("world");

    // A "crashed run": owner marker naming a dead pid, two namespaces, a
    // process still running inside one.
    let mut child = Command::new("true").spawn().expect("spawn true");
    let dead_pid = child.id();
    child.wait().expect("wait");
    let dead = unique_prefix();
    let dead_dir = write_fake_owner(&dead, dead_pid, 1).expect("marker");
    let mut leaked_ns = Vec::new();
    for suffix in ["n0", "n0-p0"] {
        let ns = Netns::named(format!("{dead}-{suffix}"));
        let out = Command::new("ip")
            .args(["netns", "add", ns.name()])
            .output()
            .expect("ip netns add");
        assert!(out.status.success(), "{out:?}");
        leaked_ns.push(ns);
    }
    let mut orphan = leaked_ns[1]
        .spawn(["sleep", "60"])
        .expect("spawn in leaked ns");
    // And one without any marker at all.
    let unmarked = Netns::named(format!("{}-ul", unique_prefix()));
    let out = Command::new("ip")
        .args(["netns", "add", unmarked.name()])
        .output()
        .expect("ip netns add");
    assert!(out.status.success(), "{out:?}");

    // Tests running in parallel sweep too (every new world does), so the
    // leftovers may be gone by another sweep first: check the outcome.
    let report = sweep();
    assert!(report.failures.is_empty(), "{report:?}");
    for ns in leaked_ns.iter().chain([&unmarked]) {
        assert!(!ns.exists(), "{} survived: {report:?}", ns.name());
    }
    assert!(!dead_dir.exists(), "{report:?}");
    // The orphan was killed.
    let deadline = Instant::now() + Duration::from_secs(5);
    while orphan.try_wait().expect("try_wait").is_none() {
        assert!(
            Instant::now() < deadline,
            "orphan in a leaked ns still runs"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(ours(live.prefix()).len(), 2, "live world untouched");
    assert!(live.node(0).netns.exists());
    assert!(Path::new(live.state_dir()).join("owner").exists());
}
