//! What the dataplane's integration tests share: Node and Pod objects, the
//! agent, the two-node world and `ferry-probe`, beside the testbed's
//! control plane and binaries.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ferry_testbed::{Cni, NETEXEC_HTTP_PORT, NETEXEC_UDP_PORT, Netns, Node, Process, World};
pub use ferry_testbed::{ControlPlane, binary};
use serde_json::{Value, json};

/// Ferry's own plugin, wired exactly as a runtime would call it.
pub fn ferry_cni() -> Cni {
    let dir = binary("ferry-cni", "ferry-cni");
    Cni::ferry(dir.parent().map(Path::to_path_buf).unwrap_or_default())
}

pub fn node_object(node: &Node) -> Value {
    let cidrs: Vec<String> = node.pod_cidrs.iter().map(ToString::to_string).collect();
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": node.name},
        "spec": {"podCIDR": cidrs[0], "podCIDRs": cidrs},
        "status": {"addresses": [
            {"type": "InternalIP", "address": node.ipv4.to_string()},
            {"type": "InternalIP", "address": node.ipv6.to_string()},
        ]},
    })
}

/// `ferry-agent` for `node`, in its namespace, with `args` after the
/// kubeconfig and node name.
pub fn start_agent(cp: &ControlPlane, node: &Node, args: &[&str]) -> Process {
    start_agent_under(cp, node, &[], args)
}

/// [`start_agent`] run by `wrapper` (`prlimit ...`, which execs it, so the
/// pid stays the agent's).
pub fn start_agent_under(
    cp: &ControlPlane,
    node: &Node,
    wrapper: &[&str],
    args: &[&str],
) -> Process {
    let mut argv: Vec<String> = wrapper.iter().map(|a| (*a).to_owned()).collect();
    argv.extend([
        binary("ferry-dataplane", "ferry-agent")
            .to_string_lossy()
            .into_owned(),
        "--kubeconfig".into(),
        cp.kubeconfig.to_string_lossy().into_owned(),
        "--node-name".into(),
        node.name.clone(),
    ]);
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    node.netns.spawn(argv).expect("start agent")
}

/// The Pod object for pod `j` of node `node`, labelled `app`, Running and
/// Ready, so the EndpointSlice controller lists it.
pub fn add_pod(cp: &ControlPlane, world: &World, node: usize, j: usize, app: &str) {
    let pod = world.pod(node, j);
    let ips: Vec<Value> = pod
        .addrs()
        .iter()
        .map(|ip| json!({"ip": ip.to_string()}))
        .collect();
    cp.apply(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod.name, "namespace": "default",
                     "labels": {"app": app, "tier": "any"}},
        "spec": {"nodeName": world.node(node).name, "containers": [{
            "name": "netexec", "image": "ferry-netexec",
            "ports": [
                {"name": "http", "containerPort": NETEXEC_HTTP_PORT, "protocol": "TCP"},
                {"name": "udp", "containerPort": NETEXEC_UDP_PORT, "protocol": "UDP"},
            ],
        }]},
    }));
    let status = json!({"status": {
        "phase": "Running",
        "podIP": ips[0]["ip"], "podIPs": ips,
        "conditions": [{"type": "Ready", "status": "True"}],
    }});
    cp.kubectl(&[
        "patch",
        "pod",
        &pod.name,
        "--subresource=status",
        "--type=merge",
        "-p",
        &status.to_string(),
    ])
    .expect("pod status");
}

/// `ferry-probe`'s command line: to `addr`, in `cgroup` if given.
pub fn probe_argv(addr: SocketAddr, cgroup: Option<&Path>, args: &[&str]) -> Vec<String> {
    let mut argv = vec![
        binary("ferry-testbed", "ferry-probe")
            .to_string_lossy()
            .into_owned(),
        addr.to_string(),
    ];
    if let Some(cg) = cgroup {
        argv.push("--cgroup".into());
        argv.push(cg.to_string_lossy().into_owned());
    }
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    argv
}

/// Runs `ferry-probe` in `netns` and returns its lines.
pub fn probe(netns: &Netns, addr: SocketAddr, cgroup: Option<&Path>, args: &[&str]) -> Vec<String> {
    netns
        .exec_timeout(probe_argv(addr, cgroup, args), Duration::from_secs(120))
        .expect("ferry-probe")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Two nodes of two ferry-cni pods each, routed to each other's pods.
pub fn two_nodes() -> World {
    World::builder()
        .nodes(2)
        .pods_per_node(2)
        .cni(ferry_cni())
        .route_pod_cidrs(true)
        .build()
        .expect("world")
}

/// The underlay's own IPv4 address: the client outside the cluster.
pub fn underlay_v4(underlay: &Netns) -> String {
    underlay
        .exec(["ip", "-4", "-o", "addr", "show", "dev", "br0"])
        .expect("underlay address")
        .split_whitespace()
        .nth(3)
        .and_then(|a| a.split('/').next())
        .expect("br0 address")
        .to_owned()
}

/// The names replies came from, counted; panics on a failed attempt.
pub fn replies(lines: &[String]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for line in lines {
        let rest = line
            .strip_prefix("ok ")
            .unwrap_or_else(|| panic!("attempt failed: {line}\nall: {lines:#?}"));
        let name = rest.split_whitespace().next().unwrap_or_default();
        *out.entry(name.to_owned()).or_default() += 1;
    }
    out
}

/// The XDP pass program on the underlay's end of every node link, for as
/// long as the value lives: a veth delivers the frames the node's XDP fast
/// path sends back (`XDP_TX`) only to an end with an XDP program.
pub fn xdp_peers(world: &World) -> Vec<ferry_dataplane::bpf::XdpPass> {
    (0..world.nodes().len())
        .map(|i| {
            let port = world.underlay_port(i);
            world
                .underlay()
                .in_netns(|| ferry_dataplane::bpf::XdpPass::attach(&port))
                .expect("entering the underlay")
                .unwrap_or_else(|e| panic!("XDP on the underlay's {port}: {e}"))
        })
        .collect()
}

/// Probes `addr` from `netns` until a whole run of `count` attempts
/// succeeds (the first contact over a fresh neighbour entry may cost a
/// retransmission), for at most `within`; panics with `context()` after.
pub fn warm(
    netns: &Netns,
    addr: SocketAddr,
    count: u32,
    within: Duration,
    context: impl Fn() -> String,
) {
    let deadline = std::time::Instant::now() + within;
    let count = count.to_string();
    while !probe(
        netns,
        addr,
        None,
        &["--count", &count, "--timeout-ms", "1000"],
    )
    .iter()
    .all(|l| l.starts_with("ok "))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{addr} never answered\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Gives the underlay (the outside client) an IPv6 address on the nodes'
/// link, next to its IPv4 one, and returns it.
pub fn underlay_v6_client(world: &World) -> std::net::Ipv6Addr {
    let node0 = world.node(0);
    let v6 = std::net::Ipv6Addr::from(u128::from(node0.underlay_v6.network()) + 250);
    world
        .underlay()
        .exec([
            "ip",
            "addr",
            "add",
            &format!("{v6}/{}", node0.underlay_v6.prefix_len()),
            "dev",
            "br0",
            "nodad",
        ])
        .expect("client IPv6 address");
    v6
}

/// `ferry-agent inspect <what>` of the agent whose pins are in `bpffs`,
/// run in its node's namespace: the table it prints.
pub fn inspect(netns: &Netns, bpffs: &Path, what: &str) -> String {
    let out = netns
        .command(binary("ferry-dataplane", "ferry-agent"))
        .arg("--bpffs-root")
        .arg(bpffs)
        .args(["inspect", what])
        .output()
        .expect("ferry-agent inspect");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
