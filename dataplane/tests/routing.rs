//! `ferry-agent` programming node routes in a netns world: three nodes on an
//! underlay, pods wired by the reference `ptp` plugin, ferry-apiserver on the
//! underlay, an agent in each node. Pods reach each other across nodes only
//! through the routes the agents install, in direct and VXLAN mode; a deleted
//! Node's routes go; an agent restart keeps forwarding.
//!
//! Needs root; prints `SKIP: needs root` otherwise.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ferry_testbed::{
    Cni, NETEXEC_UDP_PORT, Netns, Node, Process, REFERENCE_PLUGINS, World, skip_if_not_root,
    start_netexec, target_profile_dir, udp_request,
};
use serde_json::{Value, json};

const REQUEST: Duration = Duration::from_secs(2);

/// host-local range sets: one per pod CIDR of the node.
fn ranges(node: &Node) -> Vec<Value> {
    node.pod_cidrs
        .iter()
        .map(|c| json!([{ "subnet": c.to_string() }]))
        .collect()
}

fn ptp() -> Cni {
    Cni::new([REFERENCE_PLUGINS], |node: &Node| {
        let ranges = ranges(node);
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

/// Ferry's own plugin, wired exactly as a runtime would call it.
fn ferry_cni() -> Cni {
    let dir = binary("ferry-cni", "ferry-cni");
    let dir = dir.parent().map(Path::to_path_buf).unwrap_or_default();
    Cni::new([dir], |node: &Node| {
        let ranges = ranges(node);
        json!({
            "cniVersion": "1.1.0",
            "name": "ferry",
            "type": "ferry-cni",
            "dataDir": node.state_dir.join("ferry-cni"),
            "ipam": {"type": "host-local", "ranges": ranges, "dataDir": node.state_dir.join("ipam")},
        })
    })
}

/// A workspace binary, built on demand when a narrower `cargo test` did not.
fn binary(package: &str, name: &str) -> PathBuf {
    let dir = target_profile_dir().expect("target dir");
    let path = dir.join(name);
    if !path.exists() {
        let release = dir.ends_with("release");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "-p", package, "--bin", name]);
        if release {
            cmd.arg("--release");
        }
        assert!(
            cmd.status().expect("cargo build").success(),
            "building {name}"
        );
    }
    path
}

/// ferry-apiserver running in the underlay namespace, reachable by the nodes.
struct ControlPlane {
    _server: Process,
    kubeconfig: PathBuf,
    underlay: Netns,
}

impl ControlPlane {
    fn start(world: &World) -> Self {
        let underlay = world.underlay().clone();
        let node = world.node(0);
        let ip = std::net::Ipv4Addr::from(u32::from(node.underlay_v4.network()) + 250);
        underlay
            .exec([
                "ip",
                "addr",
                "add",
                &format!("{ip}/{}", node.underlay_v4.prefix_len()),
                "dev",
                "br0",
            ])
            .expect("address the underlay bridge");
        let dir = world.state_dir().join("apiserver");
        let kubeconfig = dir.join("admin.kubeconfig");
        let server = underlay
            .spawn([
                binary("ferry-controlplane", "ferry-apiserver")
                    .to_string_lossy()
                    .into_owned(),
                "--data-dir".into(),
                dir.to_string_lossy().into_owned(),
                "--bind".into(),
                format!("{ip}:6443"),
                "--kubeconfig-out".into(),
                kubeconfig.to_string_lossy().into_owned(),
                // The nodes' pod CIDRs are the world's, not allocated.
                "--controllers".into(),
                "*,-nodeipam".into(),
            ])
            .expect("start apiserver");
        let cp = Self {
            _server: server,
            kubeconfig,
            underlay,
        };
        cp.eventually("apiserver up", 20, || {
            cp.kubectl(&["get", "ns", "default"]).is_ok()
        });
        cp
    }

    fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["kubectl", "--kubeconfig"];
        let kc = self.kubeconfig.to_string_lossy().into_owned();
        all.push(&kc);
        all.extend_from_slice(args);
        self.underlay.exec(all).map_err(|e| e.to_string())
    }

    fn apply(&self, obj: &Value) {
        let file = self.kubeconfig.with_file_name(format!(
            "obj-{}.json",
            obj["metadata"]["name"].as_str().unwrap_or("x")
        ));
        std::fs::write(&file, obj.to_string()).expect("write manifest");
        self.kubectl(&["apply", "-f", &file.to_string_lossy()])
            .expect("kubectl apply");
    }

    fn eventually(&self, what: &str, secs: u64, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !f() {
            assert!(Instant::now() < deadline, "{what}: not within {secs}s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn node_object(node: &Node) -> Value {
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

fn start_agent(cp: &ControlPlane, node: &Node, routing: &str) -> Process {
    node.netns
        .spawn([
            binary("ferry-dataplane", "ferry-agent")
                .to_string_lossy()
                .into_owned(),
            "--kubeconfig".into(),
            cp.kubeconfig.to_string_lossy().into_owned(),
            "--node-name".into(),
            node.name.clone(),
            "--routing".into(),
            routing.into(),
        ])
        .expect("start agent")
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
        .map(|n| start_agent(&cp, n, routing))
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
    agents[0] = start_agent(&cp, world.node(0), routing);
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
