//! The kube-proxy replacement through the kernel: ferry-agent attaches its
//! socket programs to a child cgroup of the test's own, clients in pods
//! (ferry-cni wired) join that cgroup and dial Services created through
//! ferry-apiserver, whose EndpointSlice controller supplies the endpoints.
//!
//! Needs root; prints `SKIP: needs root` otherwise.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{
    ControlPlane, binary, ferry_cni, node_object, probe, probe_argv, replies, start_agent,
    start_agent_under, two_nodes, underlay_v4,
};
use ferry_testbed::{
    AgentHooks, NETEXEC_HTTP_PORT, Netns, Pod, Process, UNDERLAY_IF, World, pressure,
    skip_if_not_root, start_netexec, store_spoiled_copy,
};
use serde_json::{Value, json};

/// Backends the tests spread over.
const BACKENDS: usize = 3;

/// A world of one node: `BACKENDS` pods running ferry-netexec, one client
/// pod, the control plane and an agent hooked to the node's own cgroup.
struct Cluster {
    // Field order is drop order: processes before the world they run in.
    agent: Option<Process>,
    _servers: Vec<Process>,
    hooks: AgentHooks,
    cp: ControlPlane,
    _xdp_peers: Vec<ferry_dataplane::bpf::XdpPass>,
    world: World,
    /// More agent flags.
    extra: Vec<String>,
}

impl Cluster {
    /// One node: `BACKENDS` pods labelled `app: web`, and a client pod.
    fn start() -> Self {
        let world = World::builder()
            .nodes(1)
            .pods_per_node(BACKENDS + 1)
            .cni(ferry_cni())
            .build()
            .expect("world");
        let c = Self::with_world(world, &[]);
        for i in 0..BACKENDS {
            c.add_pod(0, i, "web");
        }
        c.started()
    }

    /// The control plane, every Node object, ferry-netexec in every pod,
    /// and the hooks of node 0, whose agent `started` runs with `extra`.
    fn with_world(world: World, extra: &[&str]) -> Self {
        let cp = ControlPlane::start_with(
            &world,
            &[
                "--service-cluster-ip-range",
                "10.96.0.0/16,fd00:10:96::/108",
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
        let hooks = AgentHooks::create(&format!("{}-n0", world.prefix())).expect("agent hooks");
        Self {
            agent: None,
            _servers: servers,
            hooks,
            cp,
            _xdp_peers: common::xdp_peers(&world),
            world,
            extra: extra.iter().map(|a| (*a).to_owned()).collect(),
        }
    }

    fn started(mut self) -> Self {
        self.start_agent();
        self
    }

    fn agent_args(&self) -> Vec<String> {
        let mut args = vec![
            "--routing".into(),
            "none".into(),
            "--cgroup-root".into(),
            self.hooks.cgroup.to_string_lossy().into_owned(),
            "--bpffs-root".into(),
            self.hooks.bpffs.to_string_lossy().into_owned(),
        ];
        args.extend(self.extra.iter().cloned());
        args
    }

    fn start_agent(&mut self) {
        let args = self.agent_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut agent = start_agent(&self.cp, self.world.node(0), &args);
        agent
            .wait_for_output("service maps in sync", Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("agent not in sync: {e}\n{}", agent.output()));
        self.agent = Some(agent);
    }

    fn agent_output(&self) -> String {
        self.agent.as_ref().map(Process::output).unwrap_or_default()
    }

    fn pod(&self, i: usize) -> &Pod {
        self.world.pod(0, i)
    }

    fn client(&self) -> &Pod {
        self.world.pod(0, BACKENDS)
    }

    /// The Pod object for pod `j` of node `node` ([`common::add_pod`]).
    fn add_pod(&self, node: usize, j: usize, app: &str) {
        common::add_pod(&self.cp, &self.world, node, j, app);
    }

    fn delete_pod(&self, name: &str) {
        self.cp
            .kubectl(&["delete", "pod", name, "--grace-period=0", "--force"])
            .expect("delete pod");
    }

    /// A dual-stack Service `name` selecting `selector`, port 80 on both
    /// TCP (to the HTTP port) and UDP (to the echo port); returns its
    /// cluster IPs once allocated.
    fn service(&self, name: &str, selector: &str, extra: Value) -> Vec<IpAddr> {
        let mut svc = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "selector": {"app": selector},
                "ipFamilyPolicy": "RequireDualStack",
                "ports": [
                    {"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"},
                    {"name": "udp", "port": 80, "protocol": "UDP", "targetPort": "udp"},
                ],
            },
        });
        if let (Some(spec), Some(more)) = (svc["spec"].as_object_mut(), extra.as_object()) {
            spec.extend(more.clone());
        }
        self.cp.apply(&svc);
        let out = self
            .cp
            .kubectl(&["get", "svc", name, "-o", "json"])
            .expect("get svc");
        let obj: Value = serde_json::from_str(&out).expect("svc json");
        obj["spec"]["clusterIPs"]
            .as_array()
            .expect("clusterIPs")
            .iter()
            .map(|ip| ip.as_str().expect("ip").parse().expect("parse ip"))
            .collect()
    }

    fn patch_service(&self, name: &str, patch: Value) {
        self.cp
            .kubectl(&[
                "patch",
                "svc",
                name,
                "--type=merge",
                "-p",
                &patch.to_string(),
            ])
            .expect("patch svc");
    }

    /// `ferry-probe` from `netns`, inside the agent's cgroup.
    fn probe(&self, netns: &Netns, addr: SocketAddr, args: &[&str]) -> Vec<String> {
        probe(netns, addr, Some(&self.hooks.cgroup), args)
    }

    fn inspect(&self, what: &str) -> String {
        common::inspect(&self.world.node(0).netns, &self.hooks.bpffs, what)
    }

    /// Waits until the maps show `addr` with `backends` backends.
    fn wait_backends(&self, addr: SocketAddr, proto: &str, backends: usize) {
        let front = format!("{addr} {proto}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let table = self.inspect("services");
            let count = table
                .lines()
                .find(|l| l.starts_with(&format!("{front} ")))
                .map(|l| {
                    if l.contains("no endpoints") {
                        0
                    } else {
                        l.split("-> ").nth(1).map_or(0, |b| b.split(", ").count())
                    }
                });
            if count == Some(backends) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{front}: want {backends} backends\n{table}\nagent:\n{}",
                self.agent_output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("agent output:\n{}", self.agent_output());
        }
    }
}

fn peers(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| l.split("peer=").nth(1).map(str::to_owned))
        .collect()
}

fn vip(ips: &[IpAddr], v6: bool) -> IpAddr {
    *ips.iter()
        .find(|ip| ip.is_ipv6() == v6)
        .expect("cluster IP of the family")
}

/// TCP and UDP on the same port, v4 and v6, spread over every backend;
/// replies and getpeername() show the service address; the backend sees
/// the client pod's own address; a pod reaches itself through its Service;
/// a Service without endpoints refuses at once.
#[test]
fn cluster_ip_reachability() {
    if skip_if_not_root() {
        return;
    }
    let c = Cluster::start();
    let ips = c.service("web", "web", json!({}));
    let names: Vec<String> = (0..BACKENDS).map(|i| c.pod(i).name.clone()).collect();
    for v6 in [false, true] {
        let addr = SocketAddr::new(vip(&ips, v6), 80);
        c.wait_backends(addr, "TCP", BACKENDS);
        c.wait_backends(addr, "UDP", BACKENDS);
        for udp in [false, true] {
            let mut args = vec!["--count", "30"];
            if udp {
                args.push("--udp");
            }
            let lines = c.probe(&c.client().netns, addr, &args);
            let got = replies(&lines);
            assert!(
                got.keys().all(|k| names.contains(k)) && got.len() >= 2,
                "{addr} udp={udp}: spread over {got:?}"
            );
            assert!(
                peers(&lines).iter().all(|p| p == &addr.to_string()),
                "{addr} udp={udp}: replies must come from the service address: {lines:#?}"
            );
        }
        // Connected UDP: the socket's peer is the service too.
        let lines = c.probe(
            &c.client().netns,
            addr,
            &["--udp", "--connected", "--count", "3"],
        );
        assert_eq!(replies(&lines).values().sum::<usize>(), 3);
        assert!(
            peers(&lines).iter().all(|p| p == &addr.to_string()),
            "{lines:#?}"
        );

        // The client's own address reaches the backend: no SNAT.
        let lines = c.probe(&c.client().netns, addr, &["--path", "/clientip"]);
        let own = c
            .client()
            .addrs()
            .into_iter()
            .find(|a| a.is_ipv6() == v6)
            .expect("client address");
        let seen = lines[0]
            .strip_prefix("ok ")
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_default();
        let seen_ip: IpAddr = seen
            .parse::<SocketAddr>()
            .map(|s| s.ip())
            .unwrap_or_else(|_| panic!("clientip reply {lines:?}"));
        assert_eq!(seen_ip, own, "source address preserved");

        // Hairpin: backend 0 through its own Service, sometimes to itself.
        let lines = c.probe(&c.pod(0).netns, addr, &["--count", "30"]);
        let got = replies(&lines);
        assert!(got.contains_key(&names[0]), "hairpin {addr}: {got:?}");
    }

    // No endpoints: refused at once, on both protocols and families.
    let empty = c.service("empty", "nothing", json!({}));
    for v6 in [false, true] {
        let addr = SocketAddr::new(vip(&empty, v6), 80);
        c.wait_backends(addr, "TCP", 0);
        for udp in [false, true] {
            let mut args = vec!["--timeout-ms", "1000"];
            if udp {
                args.push("--udp");
            }
            let started = Instant::now();
            let lines = c.probe(&c.client().netns, addr, &args);
            assert!(
                lines[0].starts_with("err ConnectionRefused"),
                "{addr} udp={udp}: {lines:?}"
            );
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "refused at once"
            );
        }
    }
    // Services kube-proxy would not handle get no frontends.
    for (name, label) in [
        ("other-proxy", "service.kubernetes.io/service-proxy-name"),
        ("headless-label", "service.kubernetes.io/headless"),
    ] {
        let mut svc = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default", "labels": {label: "x"}},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]},
        });
        c.cp.apply(&svc);
        svc = serde_json::from_str(
            &c.cp
                .kubectl(&["get", "svc", name, "-o", "json"])
                .expect("get svc"),
        )
        .expect("json");
        let ip = svc["spec"]["clusterIP"]
            .as_str()
            .expect("cluster ip")
            .to_owned();
        // The "web" change after it is programmed, so this one was seen.
        c.patch_service("web", json!({"metadata": {"labels": {"touched": name}}}));
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !c.inspect("services").contains(&format!("{ip}:80 ")),
            "{name} must be ignored"
        );
    }

    // Metrics with kube-proxy's names and per-service counters; ready.
    let metrics_addr: SocketAddr = "127.0.0.1:10249".parse().expect("addr");
    let get = |path: &str| {
        c.world
            .node(0)
            .netns
            .in_netns(|| ferry_testbed::http_get_full(metrics_addr, path, Duration::from_secs(2)))
            .expect("netns")
            .expect("metrics endpoint")
    };
    assert_eq!(get("/readyz").0, 200);
    assert_eq!(get("/healthz").0, 200);
    let (status, text) = get("/metrics");
    assert_eq!(status, 200);
    for name in [
        "kubeproxy_sync_proxy_rules_duration_seconds_count",
        "kubeproxy_network_programming_duration_seconds_count",
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
        "ferry_bpf_map_entries{map=\"services\"}",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    let connections: u64 = text
        .lines()
        .filter(|l| {
            l.starts_with("ferry_service_connections_total{")
                && l.contains("service=\"default/web:http\"")
                && l.contains("family=\"IPv4\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    // 30 spread + 1 /clientip + 30 hairpin connections over IPv4 TCP.
    assert!(
        connections >= 61,
        "connection counter: {connections}\n{text}"
    );
    let rejected = text
        .lines()
        .any(|l| l.starts_with("ferry_service_rejected_total{") && l.contains("default/empty"));
    assert!(rejected, "rejections counted:\n{text}");

    // Outside the cgroup nothing is translated: the hooks are the test's own.
    let plain = probe(
        &c.client().netns,
        SocketAddr::new(vip(&ips, false), 80),
        None,
        &["--timeout-ms", "300"],
    );
    assert!(
        plain[0].starts_with("err "),
        "a process outside the agent's cgroup is not load balanced"
    );
}

/// ClientIP affinity: sticks, expires after its timeout, switches off and
/// on live; a UDP client stuck to a deleted backend moves within a second;
/// backends come and go under continuous traffic with no failed request.
#[test]
fn affinity_and_endpoint_changes() {
    if skip_if_not_root() {
        return;
    }
    let c = Cluster::start();
    let ips = c.service(
        "web",
        "web",
        json!({"sessionAffinity": "ClientIP",
               "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 1}}}),
    );
    let addr = SocketAddr::new(vip(&ips, false), 80);
    c.wait_backends(addr, "TCP", BACKENDS);
    c.wait_backends(addr, "UDP", BACKENDS);
    for udp in [false, true] {
        let mut args = vec!["--count", "15"];
        if udp {
            args.push("--udp");
        }
        let got = replies(&c.probe(&c.client().netns, addr, &args));
        assert_eq!(got.len(), 1, "udp={udp}: 15 hits on one backend: {got:?}");
    }
    // Past the 1 s timeout every request chooses afresh.
    let got = replies(&c.probe(
        &c.client().netns,
        addr,
        &["--count", "10", "--interval-ms", "1300"],
    ));
    assert!(got.len() >= 2, "affinity expires: {got:?}");

    // Off: spread; on again (long timeout): sticky.
    c.patch_service("web", json!({"spec": {"sessionAffinity": "None"}}));
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.inspect("services").contains("affinity=") {
        assert!(Instant::now() < deadline, "affinity off not programmed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let got = replies(&c.probe(&c.client().netns, addr, &["--count", "30"]));
    assert!(got.len() >= 2, "affinity off spreads: {got:?}");
    c.patch_service(
        "web",
        json!({"spec": {"sessionAffinity": "ClientIP",
                        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}}}}),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !c.inspect("services").contains("affinity=600s") {
        assert!(Instant::now() < deadline, "affinity on not programmed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let got = replies(&c.probe(&c.client().netns, addr, &["--udp", "--count", "15"]));
    assert_eq!(got.len(), 1, "affinity back on: {got:?}");
    let stuck = got.keys().next().cloned().unwrap_or_default();

    // Delete the pod the UDP client sticks to: within a second of the
    // deletion the client reaches another backend.
    let idx = (0..BACKENDS)
        .find(|&i| c.pod(i).name == stuck)
        .expect("stuck backend");
    c.delete_pod(&c.pod(idx).name);
    let lines = c.probe(
        &c.client().netns,
        addr,
        &[
            "--udp",
            "--count",
            "40",
            "--interval-ms",
            "50",
            "--timeout-ms",
            "200",
        ],
    );
    // ~2.5 s of traffic: everything after the first second avoids the gone pod.
    let late: Vec<String> = lines[20..].to_vec();
    let got = replies(&late);
    assert!(!got.contains_key(&stuck), "moved off {stuck}: {lines:#?}");
    c.wait_backends(addr, "UDP", BACKENDS - 1);

    // Churn under continuous TCP traffic: add the pod back and remove
    // another while a client connects every 20 ms; no request fails.
    let other = (idx + 1) % BACKENDS;
    let lines = std::thread::scope(|s| {
        let traffic = s.spawn(|| {
            c.probe(
                &c.client().netns,
                addr,
                &["--count", "150", "--interval-ms", "20"],
            )
        });
        std::thread::sleep(Duration::from_millis(300));
        c.add_pod(0, idx, "web");
        c.wait_backends(addr, "TCP", BACKENDS);
        c.delete_pod(&c.pod(other).name);
        c.wait_backends(addr, "TCP", BACKENDS - 1);
        traffic.join().expect("traffic thread")
    });
    let got = replies(&lines);
    assert_eq!(got.values().sum::<usize>(), 150, "{got:?}");

    // A connected UDP socket was translated once, at connect(): when its
    // backend goes, the agent ends the socket and the client's next socket
    // reaches a live backend, within a second.
    let flow = c
        .client()
        .netns
        .spawn(probe_argv(
            addr,
            Some(&c.hooks.cgroup),
            &[
                "--udp",
                "--connected",
                "--count",
                "60",
                "--interval-ms",
                "50",
                "--timeout-ms",
                "200",
            ],
        ))
        .expect("connected UDP client");
    std::thread::sleep(Duration::from_millis(800));
    let early = replies(&flow.output().lines().map(str::to_owned).collect::<Vec<_>>());
    assert_eq!(
        early.len(),
        1,
        "one connected socket, one backend: {early:?}"
    );
    let stuck = early.keys().next().cloned().unwrap_or_default();
    c.delete_pod(&stuck);
    let mut flow = flow;
    let deadline = Instant::now() + Duration::from_secs(15);
    while flow.try_wait().expect("probe status").is_none() {
        assert!(Instant::now() < deadline, "probe did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    let lines: Vec<String> = flow.output().lines().map(str::to_owned).collect();
    // 16 attempts ran before the deletion; 20 more (at least a second) may
    // still fail or reach the gone pod, the rest must not.
    let late = &lines[36..];
    assert!(
        !late.is_empty()
            && late
                .iter()
                .all(|l| l.starts_with("ok ") && !l.contains(&stuck)),
        "moved off {stuck}: {lines:#?}\nagent:\n{}",
        c.agent_output()
    );
}

/// An open TCP connection survives an agent restart, new connections work
/// after it, and uninstall removes every pin.
#[test]
fn agent_restart_keeps_connections() {
    if skip_if_not_root() {
        return;
    }
    let mut c = Cluster::start();
    let ips = c.service("web", "web", json!({}));
    let addr = SocketAddr::new(vip(&ips, false), 80);
    c.wait_backends(addr, "TCP", BACKENDS);
    let hold: PathBuf = c.world.state_dir().join("release-hold");
    let hold_arg = hold.to_string_lossy().into_owned();
    let argv = probe_argv(
        addr,
        Some(&c.hooks.cgroup),
        &["--hold", &hold_arg, "--timeout-ms", "5000"],
    );
    let mut held = c.client().netns.spawn(argv).expect("held connection");
    held.wait_for_output("connected", Duration::from_secs(10))
        .expect("connected");

    // SIGKILL: the agent gets no chance to tidy anything.
    if let Some(mut agent) = c.agent.take() {
        agent.kill().expect("kill agent");
    }
    // While it is down, the pinned programs and maps keep serving.
    let got = replies(&c.probe(&c.client().netns, addr, &["--count", "5"]));
    assert_eq!(got.values().sum::<usize>(), 5);
    c.start_agent();
    let got = replies(&c.probe(&c.client().netns, addr, &["--count", "10"]));
    assert_eq!(
        got.values().sum::<usize>(),
        10,
        "new connections after restart"
    );

    std::fs::write(&hold, "go").expect("release the held connection");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !held
        .output()
        .lines()
        .any(|l| l.starts_with("ok ") || l.starts_with("err "))
    {
        assert!(
            Instant::now() < deadline,
            "held connection: {}",
            held.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        held.output().lines().any(|l| l.starts_with("ok ")),
        "the connection opened before the restart still works: {}",
        held.output()
    );

    // Uninstall: the hooks and pins go; the service address is plain again.
    if let Some(mut agent) = c.agent.take() {
        agent.kill().expect("stop agent");
    }
    let status = c
        .world
        .node(0)
        .netns
        .command(binary("ferry-dataplane", "ferry-agent"))
        .arg("--bpffs-root")
        .arg(&c.hooks.bpffs)
        .arg("--cgroup-root")
        .arg(&c.hooks.cgroup)
        .args(["--routing", "none", "uninstall"])
        .status()
        .expect("uninstall");
    assert!(status.success());
    assert!(!c.hooks.bpffs.exists(), "pins removed");
    let lines = c.probe(&c.client().netns, addr, &["--timeout-ms", "300"]);
    assert!(
        lines[0].starts_with("err "),
        "no translation after uninstall: {lines:?}"
    );
}

/// internalTrafficPolicy: Local at socket level, then per-packet
/// translation at TC for traffic arriving from outside the node: a client in the underlay (no cgroup, no socket hooks) reaches an
/// ExternalIP whose backends run on the other node (source-translated to
/// the node, replies restored), an ExternalIP with a local backend (the
/// client's address preserved) and a ClusterIP routed to the node; a
/// tracked UDP flow keeps its backend until that backend is deleted, then
/// moves within a second.
#[test]
fn external_traffic_through_tc() {
    if skip_if_not_root() {
        return;
    }
    let world = two_nodes();
    let c = Cluster::with_world(
        world,
        &[
            "--devices",
            UNDERLAY_IF,
            "--pod-devices",
            "fer",
            // The TC path alone (the NodePort test covers XDP).
            "--xdp",
            "off",
            // Idle UDP flows go after 2 s, so the test sees them collected.
            "--conntrack-udp-timeout",
            "2",
            "--conntrack-gc-interval",
            "1",
        ],
    );
    c.add_pod(0, 0, "local");
    c.add_pod(1, 0, "remote");
    c.add_pod(1, 1, "remote");
    let c = c.started();
    let node0 = c.world.node(0);
    let (remote_ip, local_ip) = ("192.0.2.100", "192.0.2.101");
    let remote = c.service("remote", "remote", json!({"externalIPs": [remote_ip]}));
    c.service("local", "local", json!({"externalIPs": [local_ip]}));
    // The underlay reaches the service addresses through node 0.
    let underlay = c.world.underlay();
    for dst in [
        format!("{remote_ip}/32"),
        format!("{local_ip}/32"),
        "10.96.0.0/16".to_owned(),
    ] {
        underlay
            .exec(["ip", "route", "add", &dst, "via", &node0.ipv4.to_string()])
            .expect("route via node 0");
    }
    let client_ip = underlay_v4(underlay);
    let ext = |ip: &str| SocketAddr::new(ip.parse().expect("ip"), 80);
    c.wait_backends(ext(remote_ip), "TCP", 2);
    c.wait_backends(ext(local_ip), "TCP", 1);
    let names =
        |node: usize| -> Vec<String> { c.world.pods_on(node).map(|p| p.name.clone()).collect() };
    let plain_probe = |addr: SocketAddr, args: &[&str]| probe(underlay, addr, None, args);

    // Remote backends, TCP and UDP, replies from the ExternalIP.
    for udp in [false, true] {
        let mut args = vec!["--count", "20"];
        if udp {
            args.push("--udp");
        }
        let lines = plain_probe(ext(remote_ip), &args);
        let got = replies(&lines);
        assert!(
            got.keys().all(|k| names(1).contains(k)) && got.len() == 2,
            "udp={udp}: {got:?}\n{}",
            c.inspect("conntrack")
        );
        assert!(
            peers(&lines)
                .iter()
                .all(|p| p == &ext(remote_ip).to_string())
        );
    }
    // The remote backend sees node 0 (as kube-proxy masquerades)...
    let lines = plain_probe(ext(remote_ip), &["--path", "/clientip"]);
    assert!(
        lines[0].starts_with(&format!("ok {}:", node0.ipv4)),
        "remote backend sees the node: {lines:?}"
    );
    // ...a local one sees the client itself.
    let lines = plain_probe(ext(local_ip), &["--path", "/clientip"]);
    assert!(
        lines[0].starts_with(&format!("ok {client_ip}:")),
        "local backend sees the client {client_ip}: {lines:?}"
    );
    let got = replies(&plain_probe(ext(local_ip), &["--count", "5"]));
    assert_eq!(
        got.keys().cloned().collect::<Vec<_>>(),
        names(0)[..1].to_vec()
    );

    // internalTrafficPolicy: Local, from a pod of node 0 (socket level):
    // only node 0's endpoint, and refused when node 0 has none.
    let pod_client = c.world.pod(0, 1);
    let local_only = c.service(
        "itp-any",
        "ignored",
        json!({"selector": {"tier": "any"}, "internalTrafficPolicy": "Local"}),
    );
    let addr = SocketAddr::new(vip(&local_only, false), 80);
    c.wait_backends(addr, "TCP", 1);
    let got = replies(&c.probe(&pod_client.netns, addr, &["--count", "20"]));
    assert_eq!(
        got.keys().cloned().collect::<Vec<_>>(),
        names(0)[..1].to_vec(),
        "only the local endpoint"
    );
    let remote_only = c.service(
        "itp-remote",
        "remote",
        json!({"internalTrafficPolicy": "Local"}),
    );
    let addr = SocketAddr::new(vip(&remote_only, false), 80);
    c.wait_backends(addr, "TCP", 0);
    let lines = c.probe(&pod_client.netns, addr, &["--timeout-ms", "1000"]);
    assert!(lines[0].starts_with("err ConnectionRefused"), "{lines:?}");
    // The same endpoints without the policy: both remote ones.
    let cluster = c.service("cluster-remote", "remote", json!({}));
    let addr = SocketAddr::new(vip(&cluster, false), 80);
    c.wait_backends(addr, "TCP", 2);
    let got = replies(&c.probe(&pod_client.netns, addr, &["--count", "20"]));
    assert!(
        got.len() == 2 && got.keys().all(|k| names(1).contains(k)),
        "{got:?}"
    );

    // A pod whose processes are outside the cgroup: translated per packet
    // on its veth, keeping its own address, backends local or remote.
    let outside = |addr: SocketAddr, args: &[&str]| probe(&pod_client.netns, addr, None, args);
    let remote_vip = SocketAddr::new(vip(&remote, false), 80);
    for udp in [false, true] {
        let mut args = vec!["--count", "20"];
        if udp {
            args.push("--udp");
        }
        let lines = outside(remote_vip, &args);
        let got = replies(&lines);
        assert!(
            got.len() == 2 && got.keys().all(|k| names(1).contains(k)),
            "udp={udp}: {got:?}\n{}",
            c.inspect("conntrack")
        );
        assert!(peers(&lines).iter().all(|p| p == &remote_vip.to_string()));
    }
    let lines = outside(remote_vip, &["--path", "/clientip"]);
    let own = pod_client.ipv4().expect("pod address");
    assert!(
        lines[0].starts_with(&format!("ok {own}:")),
        "the pod's own address reaches the remote backend: {lines:?}"
    );

    // No endpoints: the SYN is answered with a RST, a datagram with an
    // ICMP port unreachable: both refused at once.
    let none_ip = "192.0.2.102";
    c.service("none", "nothing", json!({"externalIPs": [none_ip]}));
    underlay
        .exec([
            "ip",
            "route",
            "add",
            &format!("{none_ip}/32"),
            "via",
            &node0.ipv4.to_string(),
        ])
        .expect("route via node 0");
    c.wait_backends(ext(none_ip), "TCP", 0);
    let started = Instant::now();
    let lines = plain_probe(ext(none_ip), &["--timeout-ms", "1000"]);
    assert!(lines[0].starts_with("err ConnectionRefused"), "{lines:?}");
    // UDP: an ICMP port unreachable, which a connected socket reports.
    let lines = plain_probe(
        ext(none_ip),
        &["--udp", "--connected", "--timeout-ms", "1000"],
    );
    assert!(
        lines[0].starts_with("err ConnectionRefused"),
        "UDP: {lines:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused at once"
    );

    // The ClusterIP, arriving from another node's network.
    let cluster = SocketAddr::new(vip(&remote, false), 80);
    let got = replies(&plain_probe(cluster, &["--count", "10"]));
    assert!(got.keys().all(|k| names(1).contains(k)), "{got:?}");

    // A connected UDP socket is one tracked flow: one backend...
    let flow = underlay
        .spawn(probe_argv(
            ext(remote_ip),
            None,
            &[
                "--udp",
                "--connected",
                "--count",
                "80",
                "--interval-ms",
                "50",
                "--timeout-ms",
                "200",
            ],
        ))
        .expect("udp flow");
    std::thread::sleep(Duration::from_millis(1000));
    let early = replies(&flow.output().lines().map(str::to_owned).collect::<Vec<_>>());
    assert_eq!(early.len(), 1, "one flow, one backend: {early:?}");
    let stuck = early.keys().next().cloned().unwrap_or_default();
    // ...until that backend goes: then the next datagrams find another.
    c.delete_pod(&stuck);
    let deleted = Instant::now();
    let mut flow = flow;
    let deadline = Instant::now() + Duration::from_secs(10);
    while flow.try_wait().expect("probe status").is_none() {
        assert!(Instant::now() < deadline, "probe did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    let lines: Vec<String> = flow.output().lines().map(str::to_owned).collect();
    let after: Vec<&String> = lines.iter().skip(20 + 20).collect();
    assert!(
        !after.is_empty()
            && after
                .iter()
                .all(|l| l.starts_with("ok ") && !l.contains(&stuck)),
        "moved off {stuck} within a second of the deletion ({:?} ago): {lines:#?}",
        deleted.elapsed()
    );

    // Idle UDP flows are collected; TCP flows stay.
    assert!(c.inspect("conntrack").lines().any(|l| l.starts_with("UDP")));
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.inspect("conntrack").lines().any(|l| l.starts_with("UDP")) {
        assert!(Instant::now() < deadline, "idle UDP flows not collected");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(c.inspect("conntrack").lines().any(|l| l.starts_with("TCP")));
}

/// The agent's metrics server against hostile clients: a partial request
/// head is cut off at the header timeout, and out of descriptors its accept
/// loop backs off (bounded CPU and log lines) instead of spinning, and
/// serves again once the clients go.
#[test]
fn metrics_server_survives_emfile_and_slow_clients() {
    if skip_if_not_root() {
        return;
    }
    let world = World::builder()
        .nodes(1)
        .pods_per_node(0)
        .cni(ferry_cni())
        .build()
        .expect("world");
    let c = Cluster::with_world(world, &[]);
    let mut args = c.agent_args();
    args.extend(
        [
            "--metrics-header-timeout",
            "1",
            "--metrics-max-connections",
            "1000",
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let node = c.world.node(0);
    let mut agent = start_agent_under(&c.cp, node, &["prlimit", "--nofile=160:160"], &args);
    agent
        .wait_for_output("service maps in sync", Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("agent not in sync: {e}\n{}", agent.output()));
    let metrics_addr: SocketAddr = "127.0.0.1:10249".parse().expect("addr");
    let get = |path: &str| {
        node.netns
            .in_netns(|| ferry_testbed::http_get_full(metrics_addr, path, Duration::from_secs(2)))
            .expect("netns")
    };
    assert_eq!(get("/readyz").expect("readyz").0, 200);

    // Slowloris: half a head, then nothing.
    let closed = node
        .netns
        .in_netns(move || {
            use std::io::Write;
            let mut s = std::net::TcpStream::connect(metrics_addr).expect("connect");
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                .expect("write");
            pressure::closed_after(s, Duration::from_secs(8))
        })
        .expect("netns");
    let after = closed.expect("a partial head was not cut off in 8 s");
    assert!(after < Duration::from_secs(4), "cut off after {after:?}");

    // EMFILE: connections opened for as long as the window lasts (the 1 s
    // header timeout frees some every second).
    let flood = pressure::Flood::start(&node.netns, vec![metrics_addr], 3000);
    std::thread::sleep(Duration::from_millis(1000));
    let (cpu, log) = pressure::cost_over(&agent, Duration::from_secs(3));
    let lines = log.lines().count();
    let failures = pressure::accept_failures(&log);
    eprintln!(
        "at EMFILE for 3 s: {cpu:.2} CPU-seconds, {lines} log lines, {failures} about accepts"
    );
    assert!(
        failures >= 2 && log.contains("Too many open files"),
        "not at EMFILE throughout the window:\n{log}\nall:\n{}",
        agent.output()
    );
    // The bug burnt ~3 CPU-seconds and 1.2 million log lines here.
    assert!(cpu < 0.5, "{cpu:.2} CPU-seconds in 3 s at EMFILE");
    assert!(lines <= 6, "{lines} log lines in 3 s at EMFILE:\n{log}");
    flood.end();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !get("/healthz").is_ok_and(|r| r.0 == 200) {
        assert!(Instant::now() < deadline, "metrics not served after EMFILE");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A stored Service kube-rs cannot decode (a field of the wrong type) does
/// not keep the proxy from syncing: it is skipped, counted, and every
/// other Service is balanced.
#[test]
fn an_undecodable_service_does_not_stop_the_proxy() {
    if skip_if_not_root() {
        return;
    }
    let world = World::builder()
        .nodes(1)
        .pods_per_node(BACKENDS + 1)
        .cni(ferry_cni())
        .build()
        .expect("world");
    let mut c = Cluster::with_world(world, &[]);
    for i in 0..BACKENDS {
        c.add_pod(0, i, "web");
    }
    let ips = c.service("web", "web", json!({}));
    // An annotation value the agent does not know: the Service is still
    // programmed (at random), and an Event says why the annotation is not.
    c.cp.apply(&json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "odd", "namespace": "default",
                     "annotations": {"ferry.dev/lb-algorithm": "roulette"}},
        "spec": {"selector": {"app": "web"},
                 "ports": [{"port": 81, "protocol": "TCP", "targetPort": "http"}]},
    }));
    c.cp.restart_with(|dir| {
        store_spoiled_copy(dir, "services", "default", "web", "broken", |o| {
            o["spec"]["clusterIP"] = json!(5)
        });
        // Stored before validation refused it: an absurd source range.
        store_spoiled_copy(dir, "services", "default", "web", "absurd", |o| {
            o["spec"]["clusterIP"] = json!("10.96.200.200");
            o["spec"]["clusterIPs"] = json!(["10.96.200.200"]);
            o["spec"]["ipFamilies"] = json!(["IPv4"]);
            o["spec"]["ipFamilyPolicy"] = json!("SingleStack");
            o["spec"]["loadBalancerSourceRanges"] = json!(["10.0.0.0/40"]);
        });
    });
    let c = c.started();
    let addr = SocketAddr::new(vip(&ips, false), 80);
    c.wait_backends(addr, "TCP", BACKENDS);
    let odd =
        c.cp.kubectl(&["get", "svc", "odd", "-o", "jsonpath={.spec.clusterIP}"])
            .expect("odd's cluster IP");
    c.wait_backends(
        SocketAddr::new(odd.trim().parse().expect("ip"), 81),
        "TCP",
        BACKENDS,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let events = loop {
        let out =
            c.cp.kubectl(&["get", "events", "-o", "json"])
                .expect("events");
        let list: Value = serde_json::from_str(&out).expect("events json");
        let found: Vec<(String, String, String)> = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                let s = |p: &str| {
                    e.pointer(p)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned()
                };
                (s("/involvedObject/name"), s("/reason"), s("/message"))
            })
            .collect();
        if found.iter().any(|e| e.0 == "absurd") && found.iter().any(|e| e.0 == "odd") {
            break found;
        }
        assert!(
            Instant::now() < deadline,
            "no Events: {found:?}\n{}",
            c.agent_output()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let absurd = events.iter().find(|e| e.0 == "absurd").expect("absurd");
    assert_eq!(absurd.1, "InvalidService");
    assert!(
        absurd.2.contains("10.0.0.0/40") && absurd.2.contains("loadBalancerSourceRanges"),
        "{absurd:?}"
    );
    let odd = events.iter().find(|e| e.0 == "odd").expect("odd");
    assert_eq!(odd.1, "InvalidAnnotation");
    assert!(odd.2.contains("roulette"), "{odd:?}");
    assert!(
        !c.inspect("services").contains("10.96.200.200"),
        "the absurd Service is not programmed"
    );
    let lines = c.probe(&c.client().netns, addr, &["--count", "20"]);
    assert!(replies(&lines).len() >= 2, "not balanced: {lines:#?}");
    let metrics_addr: SocketAddr = "127.0.0.1:10249".parse().expect("addr");
    let get = |path: &str| {
        c.world
            .node(0)
            .netns
            .in_netns(|| ferry_testbed::http_get_full(metrics_addr, path, Duration::from_secs(2)))
            .expect("netns")
            .expect("metrics endpoint")
    };
    assert_eq!(get("/readyz").0, 200);
    let (_, text) = get("/metrics");
    assert!(
        text.lines().any(
            |l| l.starts_with("ferry_watch_decode_errors_total{kind=\"Service\"} ")
                && !l.ends_with(" 0")
        ),
        "decode error not counted:\n{text}"
    );
    assert!(c.agent_output().contains("cannot be decoded"));
}

/// NodePort: a client outside the cluster (the underlay, not a node)
/// reaches `<node-ip>:<nodePort>` over TCP and UDP, IPv4 and IPv6, spread
/// over backends on both nodes; the node's own processes reach it at
/// `127.0.0.1`, `::1` and the node's address, and so do its pods;
/// `externalTrafficPolicy: Local` keeps external traffic on this node's
/// endpoints with the client's address, while the node's own traffic
/// still reaches every endpoint.
#[test]
fn node_ports_from_outside_and_inside_the_node() {
    if skip_if_not_root() {
        return;
    }
    let world = two_nodes();
    let c = Cluster::with_world(world, &["--devices", UNDERLAY_IF]);
    c.add_pod(0, 0, "web");
    c.add_pod(1, 0, "web");
    c.add_pod(1, 1, "web");
    let c = c.started();
    let node0 = c.world.node(0);
    let underlay = c.world.underlay();
    // The client: the underlay's own addresses, on-link to the nodes only.
    common::underlay_v6_client(&c.world);
    let ports = |policy: &str| {
        json!({
            "type": "NodePort",
            "externalTrafficPolicy": policy,
            "ports": [
                {"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http", "nodePort": 30080},
                {"name": "udp", "port": 80, "protocol": "UDP", "targetPort": "udp", "nodePort": 30080},
            ],
        })
    };
    c.service("np", "web", ports("Cluster"));
    let any4 = SocketAddr::new(IpAddr::from([0, 0, 0, 0]), 30080);
    c.wait_backends(any4, "TCP", 3);
    c.wait_backends(any4, "UDP", 3);
    let names =
        |node: usize| -> Vec<String> { c.world.pods_on(node).map(|p| p.name.clone()).collect() };
    let web: Vec<String> = [
        names(0)[0].clone(),
        names(1)[0].clone(),
        names(1)[1].clone(),
    ]
    .to_vec();
    let v4 = SocketAddr::new(IpAddr::V4(node0.ipv4), 30080);
    let v6 = SocketAddr::new(IpAddr::V6(node0.ipv6), 30080);
    // Wait until the agent has written the node's addresses and the
    // underlay's neighbours (the client's, the other node's) are resolved:
    // a first contact may cost a retransmission. Warm until a run of
    // attempts, spread over local and remote backends, all succeed.
    for addr in [v4, v6] {
        common::warm(underlay, addr, 10, Duration::from_secs(15), || {
            c.agent_output()
        });
    }
    for addr in [v4, v6] {
        for udp in [false, true] {
            let mut args = vec!["--count", "30"];
            if udp {
                args.push("--udp");
            }
            let lines = probe(underlay, addr, None, &args);
            let got = replies(&lines);
            assert!(
                got.len() >= 2 && got.keys().all(|k| web.contains(k)),
                "{addr} udp={udp}: {got:?}\n{}",
                c.inspect("conntrack")
            );
            assert!(
                peers(&lines).iter().all(|p| p == &addr.to_string()),
                "replies come from the node port: {lines:?}"
            );
        }
    }
    // From the node itself (socket level), at loopback and its address.
    for addr in [
        SocketAddr::new(IpAddr::from([127, 0, 0, 1]), 30080),
        SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), 30080),
        v4,
    ] {
        let got = replies(&c.probe(&node0.netns, addr, &["--count", "20"]));
        assert!(
            got.len() >= 2 && got.keys().all(|k| web.contains(k)),
            "{addr} from the node: {got:?}"
        );
    }
    // Bind protection: on the node, a server cannot take a node port at the
    // node's addresses or the wildcard; other ports stay free.
    let bind = |addr: SocketAddr, udp: bool| {
        let mut args = vec!["--bind"];
        if udp {
            args.push("--udp");
        }
        c.probe(&node0.netns, addr, &args)[0].clone()
    };
    for (addr, udp) in [
        (SocketAddr::new(IpAddr::from([0, 0, 0, 0]), 30080), false),
        (SocketAddr::new(IpAddr::from([0, 0, 0, 0]), 30080), true),
        (v4, false),
        (
            SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 30080),
            false,
        ),
    ] {
        let got = bind(addr, udp);
        assert!(
            got.starts_with("err AddrInUse"),
            "bind {addr} udp={udp}: {got}"
        );
    }
    assert_eq!(
        bind(SocketAddr::new(IpAddr::from([0, 0, 0, 0]), 30090), false),
        "ok bound"
    );

    // From a pod on the node.
    let pod = c.world.pod(0, 1);
    let got = replies(&c.probe(&pod.netns, v4, &["--count", "20"]));
    assert!(got.len() >= 2, "from a pod: {got:?}");

    // The device runs the XDP fast path, and it forwarded (XDP_TX) the
    // flows to the other node's backends and their replies.
    let devices = c.inspect("devices");
    let ul0 = devices
        .lines()
        .find(|l| l.starts_with(UNDERLAY_IF))
        .unwrap_or_default();
    assert!(
        ul0.contains(" xdp ") && ul0.contains("xdp(native)"),
        "{devices}"
    );
    let tx: u64 = devices
        .split("tx=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no XDP counters: {devices}"));
    assert!(tx >= 20, "XDP forwarded {tx} packets\n{devices}");

    // Local: outside traffic only to this node's endpoint, with the
    // client's own address; the node's own traffic still reaches all.
    c.patch_service("np", json!({"spec": {"externalTrafficPolicy": "Local"}}));
    c.wait_backends(any4, "TCP", 3);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = replies(&probe(underlay, v4, None, &["--count", "20"]));
        if got.keys().all(|k| *k == names(0)[0]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Local policy not applied: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let client_v4 = underlay_v4(underlay);
    let lines = probe(underlay, v4, None, &["--path", "/clientip"]);
    assert!(
        lines[0].starts_with(&format!("ok {client_v4}:")),
        "the client's address is kept: {lines:?}"
    );
    let got = replies(&c.probe(&node0.netns, v4, &["--count", "20"]));
    assert!(
        got.len() >= 2,
        "the node's own traffic reaches every endpoint: {got:?}"
    );

    // A Local LoadBalancer's health check node port, as kube-proxy
    // answers it: this node has one local endpoint.
    c.service(
        "lb",
        "web",
        json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local"}),
    );
    let svc: Value = serde_json::from_str(
        &c.cp
            .kubectl(&["get", "svc", "lb", "-o", "json"])
            .expect("get svc"),
    )
    .expect("svc json");
    let hc_port = u16::try_from(
        svc["spec"]["healthCheckNodePort"]
            .as_u64()
            .expect("allocated"),
    )
    .expect("port");
    let health = |want: u16| -> Value {
        let addr = SocketAddr::new(IpAddr::V4(node0.ipv4), hc_port);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = underlay
                .in_netns(move || ferry_testbed::http_get_full(addr, "/", Duration::from_secs(2)))
                .expect("netns");
            if let Ok((code, body)) = &got
                && *code == want
            {
                return serde_json::from_str(body).expect("health JSON");
            }
            assert!(Instant::now() < deadline, "health check: {got:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let answer = health(200);
    assert_eq!(answer["localEndpoints"], 1, "{answer}");
    // kube-proxy's own health endpoint, on the node's address.
    let proxy = SocketAddr::new(IpAddr::V4(node0.ipv4), 10256);
    let (code, body) = underlay
        .in_netns(move || ferry_testbed::http_get_full(proxy, "/healthz", Duration::from_secs(2)))
        .expect("netns")
        .expect("proxy healthz");
    let body: Value = serde_json::from_str(&body).expect("healthz JSON");
    assert_eq!(code, 200, "{body}");
    assert!(body["lastUpdated"].as_str().is_some_and(|t| !t.is_empty()));
    assert_eq!(answer["service"]["name"], "lb");
    assert_eq!(answer["serviceProxyHealthy"], true);

    // The local endpoint goes: outside traffic to this node is dropped (as
    // kube-proxy drops it: a load balancer's health check moves on), not
    // refused, while the node's own traffic reaches the remote endpoints.
    c.delete_pod(&names(0)[0]);
    c.wait_backends(any4, "TCP", 2);
    assert_eq!(health(503)["localEndpoints"], 0);
    let lines = probe(underlay, v4, None, &["--timeout-ms", "1000"]);
    assert!(lines[0].starts_with("err TimedOut"), "{lines:?}");
    let lines = probe(underlay, v4, None, &["--udp", "--timeout-ms", "1000"]);
    assert!(lines[0].starts_with("err "), "{lines:?}");
    let got = replies(&c.probe(&node0.netns, v4, &["--count", "10"]));
    assert!(got.keys().all(|k| names(1).contains(k)), "{got:?}");
}

/// A NodePort flow from outside to another node's backend leaves the entry
/// node from a port of the agent's NAT range, never from the client's own
/// port: a port the node's own sockets may pick (the kernel's ephemeral
/// range, where outside clients' ports are too) would take the replies of
/// the node's own connection from that port to the same backend. The old
/// programs reused the client's port, and handed such a connection's SYN-ACK
/// to the outside client.
#[test]
fn node_port_source_nat_leaves_the_nodes_own_ports_alone() {
    if skip_if_not_root() {
        return;
    }
    let c = Cluster::with_world(two_nodes(), &["--devices", UNDERLAY_IF]);
    c.add_pod(1, 0, "web");
    let c = c.started();
    let node0 = c.world.node(0);
    let underlay = c.world.underlay();
    c.service(
        "np",
        "web",
        json!({"type": "NodePort", "ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv4"], "ports": [
            {"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http", "nodePort": 30080},
        ]}),
    );
    let node_port = SocketAddr::new(IpAddr::V4(node0.ipv4), 30080);
    c.wait_backends(SocketAddr::new(IpAddr::from([0, 0, 0, 0]), 30080), "TCP", 1);
    common::warm(underlay, node_port, 3, Duration::from_secs(15), || {
        c.agent_output()
    });
    let backend = c.world.pod(1, 0);
    let direct = format!(
        "http://{}:{NETEXEC_HTTP_PORT}/hostname",
        backend.ipv4().expect("backend IPv4")
    );
    let curl = |netns: &Netns, url: &str, port: u16| -> String {
        let port = port.to_string();
        netns
            .exec(["curl", "-sS", "--max-time", "3", "--local-port", &port, url])
            .map(|body| body.trim().to_owned())
            .unwrap_or_else(|e| format!("failed: {e}"))
    };
    for port in [40001u16, 40002, 40003] {
        assert_eq!(
            curl(underlay, &format!("http://{node_port}/hostname"), port),
            backend.name,
            "from outside, from port {port}"
        );
        // At once, while that flow's entries live: the node's own
        // connection from the same port to the same backend.
        assert_eq!(
            curl(&node0.netns, &direct, port),
            backend.name,
            "from the node, from port {port}\n{}",
            c.inspect("conntrack")
        );
    }
}

/// `loadBalancerSourceRanges`: from outside, only clients in the ranges
/// reach the LoadBalancer IP (others are dropped); the node's own traffic
/// and the node port are not filtered; changing the ranges takes effect.
#[test]
fn load_balancer_source_ranges() {
    if skip_if_not_root() {
        return;
    }
    let world = World::builder()
        .nodes(1)
        .pods_per_node(2)
        .cni(ferry_cni())
        .build()
        .expect("world");
    let c = Cluster::with_world(world, &["--devices", UNDERLAY_IF]);
    c.add_pod(0, 0, "web");
    let c = c.started();
    let node0 = c.world.node(0);
    let underlay = c.world.underlay();
    let client = underlay_v4(underlay);
    let lb_ip = "192.0.2.120";
    underlay
        .exec([
            "ip",
            "route",
            "add",
            &format!("{lb_ip}/32"),
            "via",
            &node0.ipv4.to_string(),
        ])
        .expect("route to the LB IP via the node");
    c.service(
        "lb",
        "web",
        json!({
            "type": "LoadBalancer",
            "loadBalancerSourceRanges": [format!("{client}/32")],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http", "nodePort": 30180}],
        }),
    );
    let status = json!({"status": {"loadBalancer": {"ingress": [{"ip": lb_ip}]}}});
    c.cp.kubectl(&[
        "patch",
        "svc",
        "lb",
        "--subresource=status",
        "--type=merge",
        "-p",
        &status.to_string(),
    ])
    .expect("LB status");
    let lb = SocketAddr::new(lb_ip.parse().expect("ip"), 80);
    c.wait_backends(lb, "TCP", 1);
    let outside = |addr: SocketAddr| probe(underlay, addr, None, &["--timeout-ms", "1000"]);
    let answered = |addr: SocketAddr, want: bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let lines = outside(addr);
            if lines[0].starts_with("ok ") == want {
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "{addr}: want answered={want}: {lines:?}\n{}",
                c.agent_output()
            );
        }
    };
    answered(lb, true);
    // A second client on the same link, outside the range, at the same
    // time: dropped, while the first is still answered.
    let other = std::net::Ipv4Addr::from(u32::from(node0.underlay_v4.network()) + 251);
    underlay
        .exec([
            "ip",
            "addr",
            "add",
            &format!("{other}/{}", node0.underlay_v4.prefix_len()),
            "dev",
            "br0",
        ])
        .expect("a second client address");
    let curl_from = |src: &str| {
        underlay
            .exec_output(
                [
                    "curl",
                    "-sS",
                    "-m",
                    "2",
                    "--interface",
                    src,
                    &format!("http://{lb_ip}/hostname"),
                ],
                Duration::from_secs(10),
            )
            .expect("curl")
    };
    let allowed = curl_from(&client);
    assert!(allowed.status.success(), "{allowed:?}");
    let refused = curl_from(&other.to_string());
    // 28: curl's timeout (dropped, not refused).
    assert_eq!(refused.status.code(), Some(28), "{refused:?}");
    // Ranges without the client: dropped (a timeout, not a refusal).
    c.patch_service(
        "lb",
        json!({"spec": {"loadBalancerSourceRanges": ["198.51.100.0/24", "2001:db8::/64"]}}),
    );
    let lines = answered(lb, false);
    assert!(lines[0].starts_with("err TimedOut"), "{lines:?}");
    // The node port and the node's own traffic are not filtered.
    answered(SocketAddr::new(IpAddr::V4(node0.ipv4), 30180), true);
    let got = replies(&c.probe(&node0.netns, lb, &["--count", "3"]));
    assert_eq!(got.values().sum::<usize>(), 3, "{got:?}");
    // No ranges: everyone again.
    c.patch_service("lb", json!({"spec": {"loadBalancerSourceRanges": null}}));
    answered(lb, true);
}

/// The walkthrough in shared/seeds (003, "a Deployment behind NodePort
/// 30000"): its Service manifest, unchanged, in front of pods labelled
/// `app: nginx` serving HTTP on port 80, answers `curl http://<node-ip>:30000/`
/// from outside the cluster and `curl http://localhost:30000/` on the node,
/// and `kubectl get svc -o wide` shows it as the walkthrough does.
#[test]
fn seed_walkthrough_node_port_30000_answers_curl() {
    if skip_if_not_root() {
        return;
    }
    const SEED_SERVICE: &str = "apiVersion: v1
kind: Service #リソースの種類
metadata:
  name: service-test
spec:
  type: NodePort
  ports:
    - port: 80
      nodePort: 30000
  selector: #下記のLabel(ラベル)を指定したPodに伝送
    app: nginx
";
    let c = Cluster::with_world(two_nodes(), &["--devices", UNDERLAY_IF]);
    // "nginx": a web server on port 80 in one pod per node.
    let mut web = Vec::new();
    for node in 0..2 {
        let pod = c.world.pod(node, 0);
        web.push(
            start_netexec(
                &pod.netns,
                &[
                    "--hostname",
                    &pod.name,
                    "--http-port",
                    "80",
                    "--udp-port",
                    "0",
                ],
            )
            .expect("web server on port 80"),
        );
        c.add_pod(node, 0, "nginx");
    }
    let manifest = c.world.state_dir().join("nginx.yaml");
    std::fs::write(&manifest, SEED_SERVICE).expect("manifest");
    c.cp.kubectl(&["create", "-f", &manifest.to_string_lossy()])
        .expect("kubectl create -f nginx.yaml");
    let c = c.started();
    let wide =
        c.cp.kubectl(&["get", "svc", "service-test", "-o", "wide"])
            .expect("get svc");
    assert!(
        wide.contains("NodePort") && wide.contains("80:30000/TCP") && wide.contains("app=nginx"),
        "{wide}"
    );
    let node0 = c.world.node(0);
    let curl = |netns: &Netns, url: &str, cgroup: Option<&std::path::Path>| -> Option<String> {
        let script = match cgroup {
            Some(cg) => format!(
                "echo $$ > {}/cgroup.procs && exec curl -sS -m 3 {url}",
                cg.display()
            ),
            None => format!("exec curl -sS -m 3 {url}"),
        };
        netns.exec(["sh", "-c", &script]).ok()
    };
    let pods: Vec<String> = (0..2).map(|n| c.world.pod(n, 0).name.clone()).collect();
    let answered = |got: &Option<String>| {
        got.as_deref().is_some_and(|body| {
            pods.iter()
                .any(|p| body.trim() == format!("ferry-netexec on {p}"))
        })
    };
    let from_outside = format!("http://{}:30000/", node0.ipv4);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = curl(c.world.underlay(), &from_outside, None);
        if answered(&got) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "curl {from_outside} never answered: {got:?}\n{}\n{}",
            c.inspect("services"),
            c.agent_output()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let got = curl(c.world.underlay(), &from_outside, None);
        assert!(answered(&got), "curl {from_outside}: {got:?}");
        seen.insert(got.unwrap_or_default());
    }
    assert_eq!(seen.len(), 2, "both pods answer: {seen:?}");
    for _ in 0..5 {
        let got = curl(
            &node0.netns,
            "http://localhost:30000/",
            Some(&c.hooks.cgroup),
        );
        assert!(answered(&got), "curl localhost:30000 on the node: {got:?}");
    }
    drop(web);
}
