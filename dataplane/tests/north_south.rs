//! Traffic entering the cluster from outside, with a ferry-agent on each
//! of two nodes on the underlay bridge (answering on its underlay device):
//!
//! - L2 announcement of LoadBalancer IPs from ferry-apiserver's LB IPAM in
//!   pools outside the underlay's subnets. The client (the underlay
//!   namespace) has only on-link routes for the pools, so nothing but an
//!   ARP or NDP answer from a node brings its traffic anywhere.
//! - Direct server return: a NodePort reached at one node, served by a
//!   backend on the other, whose replies go straight to the client.
//!
//! Needs root; prints `SKIP: needs root` otherwise.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::{ControlPlane, add_pod, node_object, probe, replies, start_agent, two_nodes};
use ferry_testbed::{
    AgentHooks, Netns, Process, UNDERLAY_IF, World, skip_if_not_root, start_netexec,
};
use serde_json::{Value, json};

const POOL_V4: &str = "198.51.100.16/28";
const POOL_V6: &str = "2001:db8:100::10/124";
const LEASE_NS: &str = "kube-system";
/// A shorter lease than the default (5s/3s/1s), to keep the test short;
/// the default renew deadline, so a loaded machine does not lose leases.
const TIMINGS: [&str; 3] = [
    "--l2-lease-duration=4s",
    "--l2-lease-renew-deadline=3s",
    "--l2-lease-retry-period=500ms",
];

struct Cluster {
    // Field order is drop order: processes before the world they run in.
    agents: Vec<Option<Process>>,
    _servers: Vec<Process>,
    hooks: Vec<AgentHooks>,
    cp: ControlPlane,
    _xdp_peers: Vec<ferry_dataplane::bpf::XdpPass>,
    world: World,
}

impl Cluster {
    fn start() -> Self {
        let world = two_nodes();
        let cp = ControlPlane::start_with(
            &world,
            &[
                "--service-cluster-ip-range",
                "10.96.0.0/16,fd00:10:96::/108",
                "--loadbalancer-ip-pool",
                &format!("{POOL_V4},{POOL_V6}"),
            ],
        );
        for node in world.nodes() {
            cp.apply(&node_object(node));
        }
        let servers = world
            .pods()
            .iter()
            .map(|p| start_netexec(&p.netns, &["--hostname", &p.name]).expect("netexec"))
            .collect();
        let hooks = (0..2)
            .map(|i| AgentHooks::create(&format!("{}-n{i}", world.prefix())).expect("agent hooks"))
            .collect();
        Self {
            agents: vec![None, None],
            _servers: servers,
            hooks,
            cp,
            _xdp_peers: common::xdp_peers(&world),
            world,
        }
    }

    fn start_agent(&mut self, i: usize, extra: &[&str]) {
        let hooks = &self.hooks[i];
        let cgroup = hooks.cgroup.to_string_lossy().into_owned();
        let bpffs = hooks.bpffs.to_string_lossy().into_owned();
        let mut args = vec![
            "--routing",
            "none",
            "--cgroup-root",
            &cgroup,
            "--bpffs-root",
            &bpffs,
            "--devices",
            UNDERLAY_IF,
        ];
        args.extend(TIMINGS);
        args.extend(extra);
        let mut agent = start_agent(&self.cp, self.world.node(i), &args);
        agent
            .wait_for_output("service maps in sync", Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("agent {i} not in sync: {e}\n{}", agent.output()));
        self.agents[i] = Some(agent);
    }

    fn kill_agent(&mut self, i: usize) {
        if let Some(mut a) = self.agents[i].take() {
            a.kill().expect("kill agent");
        }
    }

    fn outputs(&self) -> String {
        self.agents
            .iter()
            .enumerate()
            .map(|(i, a)| {
                format!(
                    "--- agent {i}:\n{}",
                    a.as_ref().map(Process::output).unwrap_or_default()
                )
            })
            .collect()
    }

    /// `ferry-agent inspect <what>` of node `i`'s agent.
    fn inspect(&self, i: usize, what: &str) -> String {
        common::inspect(&self.world.node(i).netns, &self.hooks[i].bpffs, what)
    }

    fn underlay(&self) -> &Netns {
        self.world.underlay()
    }

    fn node_name(&self, i: usize) -> &str {
        &self.world.node(i).name
    }

    /// A dual-stack LoadBalancer Service selecting `app`, port 80 to the
    /// pods' HTTP port; returns its LB IPs (v4, v6) once LB IPAM gave them.
    fn load_balancer(&self, name: &str, app: &str, policy: &str) -> (IpAddr, IpAddr) {
        self.cp.apply(&json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "type": "LoadBalancer",
                "externalTrafficPolicy": policy,
                "selector": {"app": app},
                "ipFamilyPolicy": "RequireDualStack",
                "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}],
            },
        }));
        let mut ips = Vec::new();
        self.cp.eventually("LoadBalancer IPs from LB IPAM", 10, || {
            let out = self
                .cp
                .kubectl(&["get", "svc", name, "-o", "json"])
                .expect("get svc");
            let svc: Value = serde_json::from_str(&out).expect("svc json");
            ips = svc["status"]["loadBalancer"]["ingress"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|i| i["ip"].as_str()?.parse().ok())
                        .collect()
                })
                .unwrap_or_default();
            ips.len() == 2
        });
        let v4 = *ips.iter().find(|ip: &&IpAddr| ip.is_ipv4()).expect("v4");
        let v6 = *ips.iter().find(|ip: &&IpAddr| ip.is_ipv6()).expect("v6");
        (v4, v6)
    }

    /// The holder of `service`'s Lease ("" when released, None when there
    /// is no Lease).
    fn holder(&self, service: &str) -> Option<String> {
        self.cp
            .kubectl(&[
                "get",
                "lease",
                "-n",
                LEASE_NS,
                &format!("ferry-l2.default.{service}"),
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ])
            .ok()
            .map(|s| s.trim().to_owned())
    }

    /// The MAC of node `i`'s underlay device.
    fn mac(&self, i: usize) -> String {
        self.world
            .node(i)
            .netns
            .exec(["ip", "-br", "link", "show", "dev", UNDERLAY_IF])
            .expect("ip link")
            .split_whitespace()
            .nth(2)
            .expect("MAC")
            .to_owned()
    }

    /// The client's neighbour entry for `ip`: (MAC, state), MAC empty when
    /// unresolved.
    fn neighbour(&self, ip: IpAddr) -> (String, String) {
        let out = self
            .underlay()
            .exec(["ip", "neigh", "show", "to", &ip.to_string(), "dev", "br0"])
            .expect("ip neigh");
        let words: Vec<&str> = out.split_whitespace().collect();
        let mac = words
            .iter()
            .position(|w| *w == "lladdr")
            .and_then(|i| words.get(i + 1))
            .map_or(String::new(), |m| (*m).to_owned());
        (mac, words.last().map_or(String::new(), |s| (*s).to_owned()))
    }

    /// `ferry_l2_announced_ips` of node `i`'s agent.
    fn announced(&self, i: usize) -> Option<u64> {
        let addr = SocketAddr::from(([127, 0, 0, 1], 10249));
        let body = self
            .world
            .node(i)
            .netns
            .in_netns(move || ferry_testbed::http_get(addr, "/metrics", Duration::from_secs(2)))
            .expect("netns")
            .ok()?;
        body.lines()
            .find_map(|l| l.strip_prefix("ferry_l2_announced_ips "))
            .and_then(|v| v.trim().parse().ok())
    }

    /// `tries` attempts from the client to `ip`:80, all answered.
    fn answered(&self, ip: IpAddr, tries: &str) -> Option<Vec<String>> {
        let lines = probe(
            self.underlay(),
            SocketAddr::new(ip, 80),
            None,
            &["--count", tries, "--timeout-ms", "1000"],
        );
        lines.iter().all(|l| l.starts_with("ok ")).then_some(lines)
    }

    fn wait_answered(&self, ip: IpAddr, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(lines) = self.answered(ip, "5") {
                return lines;
            }

            assert!(
                Instant::now() < deadline,
                "{ip} never answered through L2 announcement; neighbour {:?}\n{}",
                self.neighbour(ip),
                self.outputs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The node holding `service`'s Lease once the client's neighbour
    /// entries for `ips` point at its MAC.
    fn settled_holder(&self, service: &str, ips: &[IpAddr]) -> usize {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let holder = self.holder(service).unwrap_or_default();
            if let Some(i) = (0..2).find(|i| self.node_name(*i) == holder) {
                let mac = self.mac(i);
                if ips.iter().all(|ip| self.neighbour(*ip).0 == mac) {
                    return i;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{service}: holder {holder:?}, neighbours {:?}\n{}",
                ips.iter().map(|ip| self.neighbour(*ip)).collect::<Vec<_>>(),
                self.outputs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `service`'s Lease is held by node `i` and the client's
    /// neighbour entries for `ips` point at its MAC, asserting on the way
    /// that no node in `never` holds it. Returns how long it took.
    fn wait_holder(&self, service: &str, i: usize, ips: &[IpAddr], never: &[usize]) -> Duration {
        let started = Instant::now();
        let deadline = started + Duration::from_secs(15);
        let (want, mac) = (self.node_name(i).to_owned(), self.mac(i));
        loop {
            let holder = self.holder(service).unwrap_or_default();
            for n in never {
                assert_ne!(
                    holder,
                    self.node_name(*n),
                    "{service}: a node that may not serve it holds its Lease\n{}",
                    self.outputs()
                );
            }
            if holder == want && ips.iter().all(|ip| self.neighbour(*ip).0 == mac) {
                return started.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "{service}: want holder {want} at {mac}; holder {holder:?}, neighbours {:?}\n{}",
                ips.iter().map(|ip| self.neighbour(*ip)).collect::<Vec<_>>(),
                self.outputs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.outputs());
        }
    }
}

/// A LoadBalancer IP (v4 and v6) is reached by a client with only on-link
/// routes for the pools, through exactly one node (the Lease holder, whose
/// MAC the client resolved); when that node's agent is killed the other
/// takes the Lease and the client's neighbour entries within seconds, and
/// the IP answers again. With `externalTrafficPolicy: Local` only a node
/// with a local endpoint holds the Lease, and it moves with the endpoint.
/// An agent with `--l2-announce=false` answers nothing and takes nothing.
#[test]
fn load_balancer_ips_announced_and_taken_over() {
    if skip_if_not_root() {
        return;
    }
    let mut c = Cluster::start();
    add_pod(&c.cp, &c.world, 0, 0, "web");
    add_pod(&c.cp, &c.world, 1, 0, "web");
    add_pod(&c.cp, &c.world, 1, 1, "solo");
    c.start_agent(0, &[]);
    c.start_agent(1, &[]);
    // The client: an IPv6 address of the underlay's, and only on-link
    // routes for the pools (no route via any node).
    common::underlay_v6_client(&c.world);
    for cmd in [
        vec!["ip", "route", "add", POOL_V4, "dev", "br0"],
        vec!["ip", "-6", "route", "add", POOL_V6, "dev", "br0"],
    ] {
        c.underlay().exec(cmd).expect("client setup");
    }

    // Reached through the announcement alone, both families.
    let (v4, v6) = c.load_balancer("lb", "web", "Cluster");
    let web: Vec<String> = [c.world.pod(0, 0), c.world.pod(1, 0)]
        .iter()
        .map(|p| p.name.clone())
        .collect();
    for ip in [v4, v6] {
        let got = replies(&c.wait_answered(ip, Duration::from_secs(20)));
        assert!(got.keys().all(|k| web.contains(k)), "{ip}: {got:?}");
    }
    // One node holds the Lease and the client resolved both IPs to it.
    let held = c.settled_holder("lb", &[v4, v6]);
    let other = 1 - held;
    assert_eq!(c.announced(held), Some(2), "{}", c.outputs());
    assert_eq!(c.announced(other), Some(0), "{}", c.outputs());

    // Local: only the node with the endpoint (node 1) may hold the Lease;
    // the endpoint moves to node 0, and so does the Lease.
    let (solo4, solo6) = c.load_balancer("solo", "solo", "Local");
    c.wait_holder("solo", 1, &[], &[0]);
    let got = replies(&c.wait_answered(solo4, Duration::from_secs(10)));
    assert!(got.keys().all(|k| *k == c.world.pod(1, 1).name), "{got:?}");
    c.cp.kubectl(&[
        "delete",
        "pod",
        &c.world.pod(1, 1).name,
        "--grace-period=0",
        "--force",
    ])
    .expect("delete pod");
    add_pod(&c.cp, &c.world, 0, 1, "solo");
    // Node 1 gives the Lease up as it loses its endpoint (it held it until
    // then), and node 0 takes it.
    c.wait_holder("solo", 0, &[solo4], &[]);
    let got = replies(&c.wait_answered(solo4, Duration::from_secs(10)));
    assert!(got.keys().all(|k| *k == c.world.pod(0, 1).name), "{got:?}");
    // The IPv6 LB IP moved with it.
    c.wait_answered(solo6, Duration::from_secs(10));

    // The holder of "lb" dies (its programs stay pinned and would still
    // translate): the other takes the Lease and the client's neighbour
    // entries, and the IPs answer through it.
    c.kill_agent(held);
    let took = c.wait_holder("lb", other, &[v4, v6], &[]);
    eprintln!("takeover after the holder's agent stopped: {took:?}");
    for ip in [v4, v6] {
        c.wait_answered(ip, Duration::from_secs(10));
    }

    // --l2-announce=false: the restarted agent answers nothing and never
    // takes a Lease, even once the only announcing agent is gone.
    c.start_agent(held, &["--l2-announce=false"]);
    c.kill_agent(other);
    let dead_holder = c.node_name(other).to_owned();
    for ip in [v4, v6] {
        c.underlay()
            .exec(["ip", "neigh", "flush", "to", &ip.to_string(), "dev", "br0"])
            .expect("flush neighbour");
    }
    // Longer than an announcing agent needs to take over (lease 4s).
    std::thread::sleep(Duration::from_secs(6));
    for ip in [v4, v6] {
        let lines = probe(
            c.underlay(),
            SocketAddr::new(ip, 80),
            None,
            &["--timeout-ms", "1000"],
        );
        assert!(lines[0].starts_with("err "), "{ip} answered: {lines:?}");
        let (mac, state) = c.neighbour(ip);
        assert!(mac.is_empty(), "{ip} resolved to {mac} ({state})");
    }
    assert_eq!(c.holder("lb"), Some(dead_holder));
    assert_eq!(c.announced(held), Some(0), "{}", c.outputs());
}

/// `--lb-mode dsr`: the client reaches node 0's NodePort (TCP and UDP, v4
/// and v6) whose only backend runs on node 1. Node 0 sends the packets to
/// node 1 in Geneve with the client's address intact; node 1's replies,
/// from node 0's address and the node port, reach the client without
/// crossing node 0 (a capture on the underlay's port of each node shows
/// them leaving node 1 only), and node 0 keeps one forward entry per flow
/// and no reply entries.
#[test]
fn direct_server_return_replies_skip_the_entry_node() {
    if skip_if_not_root() {
        return;
    }
    let mut c = Cluster::start();
    add_pod(&c.cp, &c.world, 1, 0, "web");
    let dsr = ["--lb-mode", "dsr", "--l2-announce=false"];
    c.start_agent(0, &dsr);
    c.start_agent(1, &dsr);
    let node0 = c.world.node(0);
    common::underlay_v6_client(&c.world);
    c.cp.apply(&json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "dsr", "namespace": "default"},
        "spec": {
            "type": "NodePort",
            "selector": {"app": "web"},
            "ipFamilyPolicy": "RequireDualStack",
            "ports": [
                {"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http", "nodePort": 30070},
                {"name": "udp", "port": 80, "protocol": "UDP", "targetPort": "udp", "nodePort": 30070},
            ],
        },
    }));
    let backend = c.world.pod(1, 0).name.clone();
    let v4 = SocketAddr::new(IpAddr::V4(node0.ipv4), 30070);
    let v6 = SocketAddr::new(IpAddr::V6(node0.ipv6), 30070);
    for addr in [v4, v6] {
        common::warm(c.underlay(), addr, 5, Duration::from_secs(20), || {
            c.outputs()
        });
    }
    // Replies leaving each node for the client, as the underlay sees them.
    let capture = |port: &str| {
        let mut p = c
            .underlay()
            .spawn([
                "tcpdump",
                "-i",
                port,
                "-n",
                "-l",
                "-Q",
                "in",
                "src port 30070",
            ])
            .expect("tcpdump");
        p.wait_for_output("listening on", Duration::from_secs(10))
            .expect("tcpdump started");
        p
    };
    let (via0, via1) = (
        capture(&c.world.underlay_port(0)),
        capture(&c.world.underlay_port(1)),
    );
    for addr in [v4, v6] {
        for udp in [false, true] {
            let mut args = vec!["--count", "10"];
            if udp {
                args.push("--udp");
            }
            let lines = probe(c.underlay(), addr, None, &args);
            let got = replies(&lines);
            assert_eq!(
                got.keys().collect::<Vec<_>>(),
                vec![&backend],
                "{addr} udp={udp}"
            );
            assert!(
                lines.iter().all(|l| l.ends_with(&format!("peer={addr}"))),
                "replies come from the node port: {lines:?}"
            );
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let count = |p: &Process| {
        p.output()
            .lines()
            .filter(|l| l.contains(".30070 >"))
            .count()
    };
    let (n0, n1) = (count(&via0), count(&via1));
    assert_eq!(n0, 0, "replies crossed the entry node:\n{}", via0.output());
    assert!(
        n1 >= 40,
        "{n1} replies seen leaving node 1:\n{}",
        via1.output()
    );
    let flows = c.inspect(0, "conntrack");
    assert!(flows.contains("forward(dsr)"), "{flows}");
    assert!(
        !flows.lines().any(|l| l.contains("reply")),
        "the entry node tracks no replies:\n{flows}"
    );

    // With Maglev the entry node keeps no state at all for DSR flows: every
    // packet hashes to the same backend again.
    let forward_entries = || {
        c.inspect(0, "conntrack")
            .lines()
            .filter(|l| l.contains("forward(dsr)"))
            .count()
    };
    c.cp.kubectl(&["annotate", "svc", "dsr", "ferry.dev/lb-algorithm=maglev"])
        .expect("annotate");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !c
        .inspect(0, "services")
        .lines()
        .any(|l| l.contains(":30070 TCP (external)") && l.contains("lb=maglev"))
    {
        assert!(
            Instant::now() < deadline,
            "no Maglev table\n{}",
            c.outputs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let before = forward_entries();
    for addr in [v4, v6] {
        for udp in [false, true] {
            let mut args = vec!["--count", "10"];
            if udp {
                args.push("--udp");
            }
            let got = replies(&probe(c.underlay(), addr, None, &args));
            assert_eq!(got.values().sum::<usize>(), 10, "{addr} udp={udp}: {got:?}");
        }
    }
    let after = forward_entries();
    assert!(
        after <= before,
        "Maglev DSR flows were tracked: {before} -> {after}"
    );
}
