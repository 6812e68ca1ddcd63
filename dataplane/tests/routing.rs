//! `ferry-agent` programming node routes in a netns world: three nodes on an
//! underlay, pods wired by the reference `ptp` plugin, ferry-apiserver on the
//! underlay, an agent in each node. Pods reach each other across nodes only
//! through the routes the agents install, in direct and VXLAN mode; a deleted
//! Node's routes go; an agent restart keeps forwarding.
//!
//! Needs root; prints `SKIP: needs root` otherwise.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

mod common;

use common::{ControlPlane, binary, ferry_cni, node_object, start_agent};
use ferry_testbed::{
    Cni, NETEXEC_UDP_PORT, Netns, Node, Process, REFERENCE_PLUGINS, World, skip_if_not_root,
    start_netexec, udp_request,
};
use serde_json::json;

const REQUEST: Duration = Duration::from_secs(2);

fn ptp() -> Cni {
    Cni::new([REFERENCE_PLUGINS], |node: &Node| {
        let ranges = ferry_testbed::host_local_ranges(node);
        json!({
            "cniVersion": "1.0.0",
            "name": "agent-routing",
            "type": "ptp",
            "ipMasq": false,
            "ipam": {"type": "host-local", "ranges": ranges,
                     "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
                     "dataDir": node.state_dir.join("ipam")},
        })
    })
}

fn ferry_routes(node: &Node) -> String {
    let v4 = node
        .netns
        .exec(["ip", "route", "show", "proto", "196"])
        .unwrap_or_default();
    let v6 = node
        .netns
        .exec(["ip", "-6", "route", "show", "proto", "196"])
        .unwrap_or_default();
    format!("{v4}{v6}")
}

/// UDP to a pod's netexec from another pod, with retries while routes settle.
fn reaches(from: &Netns, to: IpAddr, expect: &str, secs: u64) -> bool {
    let addr = SocketAddr::new(to, NETEXEC_UDP_PORT);
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let got = from
            .in_netns(|| udp_request(addr, b"hostname", REQUEST))
            .ok()
            .and_then(Result::ok);
        if got.as_deref().map(str::trim) == Some(expect) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn run(routing: &str, cni: Cni) {
    let world = World::builder()
        .nodes(3)
        .pods_per_node(1)
        .cni(cni)
        .route_pod_cidrs(false)
        .build()
        .expect("world");
    let cp = ControlPlane::start(&world);
    for node in world.nodes() {
        cp.apply(&node_object(node));
    }
    let servers: Vec<Process> = world
        .pods()
        .iter()
        .map(|p| start_netexec(&p.netns, &["--hostname", &p.name]).expect("netexec"))
        .collect();
    let (p0, p1, p2) = (world.pod(0, 0), world.pod(1, 0), world.pod(2, 0));
    // Without the agents, nothing joins the nodes' pod CIDRs.
    assert!(!reaches(
        &p0.netns,
        IpAddr::V4(p1.ipv4().expect("v4")),
        &p1.name,
        1
    ));

    let mut agents: Vec<Process> = world
        .nodes()
        .iter()
        .map(|n| start_agent(&cp, n, &["--routing", routing, "--no-service-proxy"]))
        .collect();
    for (from, to) in [(p0, p1), (p1, p2), (p2, p0)] {
        for ip in to.addrs() {
            assert!(
                reaches(&from.netns, ip, &to.name, 20),
                "{} -> {} ({ip}) over {routing}\nroutes on {}:\n{}\nagent:\n{}",
                from.name,
                to.name,
                world.node(from.node).name,
                ferry_routes(world.node(from.node)),
                agents[from.node].output()
            );
        }
    }
    for (from, to) in [(p0, p2), (p2, p1)] {
        for ip in to.addrs() {
            assert!(
                tcp_reaches(&from.netns, ip, &to.name),
                "TCP {} -> {} ({ip})",
                from.name,
                to.name
            );
        }
    }
    if routing == "vxlan" {
        let link = world
            .node(0)
            .netns
            .exec(["ip", "-d", "link", "show", "ferry.vxlan"])
            .expect("vxlan device");
        assert!(
            link.contains("vxlan id 1") && link.contains("dstport 8472"),
            "{link}"
        );
    }

    // A deleted Node's routes go from the others.
    let gone = world.node(2);
    cp.kubectl(&["delete", "node", &gone.name])
        .expect("delete node");
    let v4_cidr = gone.pod_cidrs[0].to_string();
    cp.eventually("stale route removed", 10, || {
        !ferry_routes(world.node(0)).contains(&v4_cidr)
    });
    assert!(ferry_routes(world.node(0)).contains(&world.node(1).pod_cidrs[0].to_string()));

    // An agent restart keeps the routes, so forwarding never stops.
    agents[0].kill().expect("stop agent");
    assert!(reaches(
        &p0.netns,
        IpAddr::V4(p1.ipv4().expect("v4")),
        &p1.name,
        5
    ));
    agents[0] = start_agent(
        &cp,
        world.node(0),
        &["--routing", routing, "--no-service-proxy"],
    );
    cp.apply(&node_object(gone));
    assert!(reaches(
        &p0.netns,
        IpAddr::V4(p2.ipv4().expect("v4")),
        &p2.name,
        20
    ));
    drop(servers);
    drop(agents);
    // Uninstall removes what the agent installed.
    let status = world
        .node(0)
        .netns
        .command(binary("ferry-dataplane", "ferry-agent"))
        .args([
            "--node-name",
            &world.node(0).name,
            "--routing",
            routing,
            "--no-service-proxy",
            "uninstall",
        ])
        .status()
        .expect("uninstall");
    assert!(status.success());
    assert_eq!(ferry_routes(world.node(0)).trim(), "");
}

/// TCP (HTTP /hostname) from one pod to another.
fn tcp_reaches(from: &Netns, to: IpAddr, expect: &str) -> bool {
    let addr = SocketAddr::new(to, ferry_testbed::NETEXEC_HTTP_PORT);
    from.in_netns(|| ferry_testbed::http_get(addr, "/hostname", REQUEST))
        .ok()
        .and_then(Result::ok)
        .is_some_and(|body| body.trim() == expect)
}

#[test]
fn direct_routing_between_nodes() {
    if skip_if_not_root() {
        return;
    }
    run("direct", ptp());
}

#[test]
fn vxlan_overlay_between_nodes() {
    if skip_if_not_root() {
        return;
    }
    run("vxlan", ptp());
}

/// Pods wired by ferry-cni on three nodes reach each other across nodes over
/// UDP and TCP, IPv4 and IPv6, through the agents' routes.
#[test]
fn ferry_cni_pods_across_nodes() {
    if skip_if_not_root() {
        return;
    }
    run("direct", ferry_cni());
}
