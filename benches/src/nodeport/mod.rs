//! The north-south benchmark: a NodePort Service reached from outside the
//! cluster, its backend on another node, through each dataplane in turn, in
//! one testbed world (issue 11, section 5).
//!
//! The world: two nodes on the underlay bridge, routes between their pod
//! CIDRs, one pod per node (node 1's is the backend: `ferry-netexec`, the
//! services bench's TCP accept sink and a UDP discard sink), and the
//! underlay namespace as the outside client (`ferry-apiserver` runs there
//! too). The entry node is node 0. Every dataplane is given the same
//! Services: three targets (UDP, TCP to the accept sink, TCP to
//! `ferry-netexec`, each a NodePort with `externalTrafficPolicy: Cluster`),
//! written last, plus N-3 fake NodePort Services (one unroutable endpoint
//! each, TCP and UDP in turn, node ports across 1024-59999; node 0's own
//! ephemeral ports are moved to 60000-65535 so none collides).
//!
//! The dataplanes ([`Variant`]): plain routing to the pod (no Service, no
//! NAT: the floor), Ferry variants (the agent with `--devices ul0` plus
//! flags of their own: TC today; XDP and DSR once the agent takes
//! `--xdp native` / `--lb-mode dsr` — an agent that refuses a flag makes
//! its row "not available"), and kube-proxy's nftables and iptables
//! rulesets with their NodePort chains and masquerading
//! ([`crate::services::nftables`], [`crate::services::iptables`]).
//!
//! Per dataplane and N, every phase bounded in count and time:
//! 1. **Forwarding**: [`traffic`] bursts of UDP from `trafgen` in the
//!    underlay to `<node0>:<nodePort>`: an established mix (64 flows, so
//!    every packet after a flow's first is a conntrack hit) and a new-flow
//!    mix (every packet a new source port, so every packet is a new
//!    connection to program). Counted at the backend pod's interface; the
//!    cost is the whole machine's busy time per delivered packet, and a
//!    dataplane's own cost that less the routing-only row's (see
//!    [`traffic`]: with XDP on a veth the entry node's work runs on the
//!    generator's CPU, so no one CPU holds it for every row).
//! 2. **Connections**: the services bench's client from the underlay:
//!    sequential `connect()`s, sequential `GET /hostname` (connect, request,
//!    response, close), and a few workers connecting for a while.

pub mod report;
pub mod traffic;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use ferry_dataplane::bpf::XdpPass;
use ferry_testbed::{Cni, NETEXEC_READY, Process, UNDERLAY_BRIDGE, UNDERLAY_IF, World};

use crate::services::Traffic;
use crate::services::api;
use crate::services::client::{ClientArgs, ClientSummary};
use crate::services::cluster::{Agent, Binaries, MapSizes, start_apiserver};
use crate::services::iptables::{self, Backend};
use crate::services::model::{self, Proto, Svc};
use crate::services::nftables;
use traffic::{Burst, Rig, Stream};

/// The apiserver's Service range: room for 100,000 ClusterIPs.
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
/// The apiserver's node-port range (fakes take most of it).
pub const NODE_PORT_RANGE: &str = "1024-59999";
/// Node 0's ephemeral ports, above every node port.
const EPHEMERAL_PORTS: &str = "60000 65535";
/// The targets' node ports and backend ports.
pub const UDP_NODE_PORT: u16 = 30081;
pub const TCP_NODE_PORT: u16 = 30080;
pub const HTTP_NODE_PORT: u16 = 30082;
pub const UDP_SINK_PORT: u16 = 9001;
/// The target Services' ClusterIPs: at the top of the range, apart from
/// the fakes.
const TARGET_IPS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(10, 111, 255, 250),
    Ipv4Addr::new(10, 111, 255, 251),
    Ipv4Addr::new(10, 111, 255, 252),
];
/// First fake ClusterIP.
const FAKE_IP_BASE: u32 = u32::from_be_bytes([10, 96, 0, 20]);
/// The CPU node 0's stack is steered to (RPS), and the generator's.
const ENTRY_CPU: usize = 1;
const GEN_CPU: usize = 0;

/// One dataplane row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// No Service: the generator sends to the backend pod's address, node 0
    /// only routes it.
    Route,
    /// The Ferry agent with `--devices ul0` and these flags.
    Ferry(Vec<String>),
    Nftables,
    Iptables,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variant {
    /// What `--variants` names it.
    pub key: String,
    /// The table's name for it.
    pub label: String,
    pub kind: Kind,
}

/// Every known row, in run order: the floor, Ferry's, then the rulesets
/// (legacy iptables last: its tables stay registered in a namespace once
/// made).
pub fn known_variants() -> Vec<Variant> {
    let ferry = |key: &str, label: &str, flags: &[&str]| Variant {
        key: key.into(),
        label: label.into(),
        kind: Kind::Ferry(flags.iter().map(|f| (*f).to_string()).collect()),
    };
    vec![
        Variant {
            key: "route".into(),
            label: "routing only (no Service, no NAT)".into(),
            kind: Kind::Route,
        },
        // Ferry's XDP path is on by default where the driver has XDP (veth
        // does): TC alone needs `--xdp off` (an agent without `--xdp` is TC
        // alone already, see `ferry_run`).
        ferry("ferry-tc", "Ferry TC", &["--xdp", "off"]),
        ferry("ferry-xdp", "Ferry XDP", &["--xdp", "native"]),
        ferry("ferry-dsr", "Ferry DSR", &["--lb-mode", "dsr"]),
        Variant {
            key: "nftables".into(),
            label: "kube-proxy nftables".into(),
            kind: Kind::Nftables,
        },
        Variant {
            key: "iptables".into(),
            label: "kube-proxy iptables".into(),
            kind: Kind::Iptables,
        },
    ]
}

/// Everything a run is told.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Service counts, ascending.
    pub sizes: Vec<usize>,
    pub variants: Vec<Variant>,
    /// Established mix: packets per second offered and for how long.
    pub rate: u64,
    pub duration: Duration,
    /// New-flow mix: packets per second, and how many (each a new source
    /// port, at most 64,000).
    pub new_flow_rate: u64,
    pub new_flow_packets: u64,
    /// TCP phase (the services client).
    pub connects: usize,
    pub http: usize,
    pub workers: usize,
    pub rate_window: Duration,
    /// Largest N each ruleset is loaded with (their loads grow faster than
    /// linearly: nft -f of 30,000 Services took 6 minutes here).
    pub nft_max: usize,
    pub iptables_max: usize,
    pub iptables: Backend,
    pub concurrency: usize,
    pub sync_timeout: Duration,
}

/// How one row at one N ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Status {
    #[default]
    NotRun,
    Ran,
    /// The agent refused the variant's flags: the feature is not there yet.
    NotAvailable(String),
    /// Left out on purpose (above the ruleset's size limit).
    Skipped(String),
    Failed(String),
}

/// One dataplane at one N.
#[derive(Debug, Clone, Default)]
pub struct Run {
    pub status: Status,
    /// Programming every Service: the agent's start to its first full sync,
    /// or the one restore.
    pub program: Option<Duration>,
    pub size: String,
    pub established: Option<Burst>,
    pub new_flows: Option<Burst>,
    pub tcp: Option<Traffic>,
    /// A Ferry row's paths and XDP counters on node 0 after its traffic
    /// (`ferry-agent inspect devices`, one line).
    pub devices: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Versions {
    pub agent: String,
    pub trafgen: String,
    pub iptables: String,
    pub nft: String,
}

#[derive(Debug, Clone, Default)]
pub struct Results {
    /// (N, per variant in `Settings::variants` order).
    pub sizes: Vec<(usize, Vec<Run>)>,
    pub versions: Versions,
    /// How the softirq work was split, for the notes.
    pub steering: String,
}

fn stopped(stop: &AtomicBool) -> Result<()> {
    if stop.load(Ordering::Relaxed) {
        bail!("the run was stopped");
    }
    Ok(())
}

/// The target Services: UDP to the discard sink, TCP to the accept sink,
/// TCP to `ferry-netexec`; all on the one backend.
pub fn targets(backend: Ipv4Addr) -> [Svc; 3] {
    let svc = |name: &str, ip, protocol, target_port, node_port| Svc {
        name: name.into(),
        ip,
        endpoints: vec![backend],
        target_port,
        protocol,
        node_port: Some(node_port),
    };
    [
        svc(
            "np-udp",
            TARGET_IPS[0],
            Proto::Udp,
            UDP_SINK_PORT,
            UDP_NODE_PORT,
        ),
        svc(
            "np-tcp",
            TARGET_IPS[1],
            Proto::Tcp,
            model::SINK_PORT,
            TCP_NODE_PORT,
        ),
        svc(
            "np-http",
            TARGET_IPS[2],
            Proto::Tcp,
            model::TARGET_PORT,
            HTTP_NODE_PORT,
        ),
    ]
}

/// Node ports the fakes may take: the apiserver's range less the targets'
/// and the agent's own listening ports.
fn fake_port(k: usize) -> Option<u16> {
    // Ascending, so one pass steps over each that the count reaches.
    const SKIP: [u16; 5] = [10249, 10256, TCP_NODE_PORT, UDP_NODE_PORT, HTTP_NODE_PORT];
    let mut p = 1024 + u32::try_from(k).ok()?;
    for skip in SKIP {
        if p >= u32::from(skip) {
            p += 1;
        }
    }
    u16::try_from(p).ok().filter(|&p| p <= 59_999)
}

/// Fake Service `i`: TCP and UDP in turn, one unroutable endpoint, a
/// NodePort while the range has ports left (a node port is taken whatever
/// the protocol, as Kubernetes allocates them: 58,971 fit), a ClusterIP
/// Service after that.
pub fn fake(i: usize) -> Result<Svc> {
    let mut s = model::fake(i, 1);
    let idx = u32::try_from(i).context("too many Services")?;
    s.ip = Ipv4Addr::from(FAKE_IP_BASE + idx);
    if s.ip >= TARGET_IPS[0] {
        bail!("{i} fake Services do not fit {SERVICE_CIDR}");
    }
    s.protocol = if i.is_multiple_of(2) {
        Proto::Tcp
    } else {
        Proto::Udp
    };
    s.node_port = fake_port(i);
    Ok(s)
}

/// How many fake Services get a node port.
pub fn fake_node_ports() -> usize {
    (59_999 - 1024 + 1) - 5
}

/// N Services: N-3 fakes, then the targets (last: the worst case for
/// kube-proxy's linear `KUBE-SERVICES` and `KUBE-NODEPORTS`).
fn service_set(fakes: &[Svc], targets: &[Svc], n: usize) -> Vec<Svc> {
    let mut v: Vec<Svc> = fakes
        .iter()
        .take(n.saturating_sub(targets.len()))
        .cloned()
        .collect();
    v.extend(targets.iter().cloned());
    v
}

/// The world and what runs in it. Field order is drop order: processes
/// before the world.
pub struct Lab {
    _servers: Vec<Process>,
    apiserver: Option<Process>,
    kubeconfig: PathBuf,
    api_ip: Ipv4Addr,
    node0_mac: String,
    client_mac: String,
    backend_ip: Ipv4Addr,
    /// The underlay's ends of the node links take XDP_TX frames only with
    /// an XDP program of their own ([`XdpPass`]).
    _xdp_peers: Vec<XdpPass>,
    pub world: World,
}

impl Lab {
    pub fn build(bins: &Binaries) -> Result<Self> {
        let world = World::builder()
            .nodes(2)
            .pods_per_node(1)
            .cni(Cni::ferry(
                bins.cni.parent().map(Path::to_path_buf).unwrap_or_default(),
            ))
            .route_pod_cidrs(true)
            .build()
            .context("building the testbed world")?;
        let node0 = world.node(0);
        let api_ip = crate::services::cluster::apiserver_address(&world)?;
        // The floor row's packets go to the backend pod through node 0.
        let node1_v4 = world
            .node(1)
            .pod_cidrs
            .iter()
            .find(|c| c.addr().is_ipv4())
            .context("node 1 has no IPv4 pod CIDR")?
            .to_string();
        world
            .underlay()
            .exec([
                "ip",
                "route",
                "add",
                &node1_v4,
                "via",
                &node0.ipv4.to_string(),
            ])
            .context("routing node 1's pods through node 0 in the underlay")?;
        node0
            .netns
            .in_netns(|| std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", EPHEMERAL_PORTS))
            .context("entering node 0")?
            .context("moving node 0's ephemeral ports")?;
        let backend = world.pod(1, 0);
        let backend_ip = backend.ipv4().context("the backend pod has no IPv4")?;
        let mut servers = Vec::new();
        let mut start = |argv: Vec<std::ffi::OsString>, ready: &str, what: &str| -> Result<()> {
            let mut p = backend
                .netns
                .spawn(argv)
                .with_context(|| format!("starting {what}"))?;
            p.wait_for_output(ready, Duration::from_secs(10))
                .with_context(|| what.to_string())?;
            servers.push(p);
            Ok(())
        };
        start(
            vec![
                bins.netexec.clone().into(),
                "--hostname".into(),
                backend.name.clone().into(),
            ],
            NETEXEC_READY,
            "ferry-netexec",
        )?;
        start(
            vec![
                bins.bench.clone().into(),
                "sink".into(),
                "--port".into(),
                model::SINK_PORT.to_string().into(),
            ],
            crate::services::sink::READY,
            "the TCP sink",
        )?;
        start(
            vec![
                bins.bench.clone().into(),
                "udp-sink".into(),
                "--port".into(),
                UDP_SINK_PORT.to_string().into(),
            ],
            UDP_SINK_READY,
            "the UDP sink",
        )?;
        let xdp_peers = (0..world.nodes().len())
            .map(|i| {
                let port = world.underlay_port(i);
                world
                    .underlay()
                    .in_netns(|| XdpPass::attach(&port))
                    .context("entering the underlay")?
                    .with_context(|| format!("XDP on the underlay's {port}"))
            })
            .collect::<Result<Vec<_>>>()?;
        let (_, node0_mac) = traffic::link(&node0.netns, UNDERLAY_IF)?;
        let (_, client_mac) = traffic::link(world.underlay(), UNDERLAY_BRIDGE)?;
        Ok(Self {
            _servers: servers,
            apiserver: None,
            kubeconfig: PathBuf::new(),
            api_ip,
            node0_mac,
            client_mac,
            backend_ip,
            _xdp_peers: xdp_peers,
            world,
        })
    }

    fn node0_ip(&self) -> Ipv4Addr {
        self.world.node(0).ipv4
    }

    fn backend_netns(&self) -> &ferry_testbed::Netns {
        &self.world.pod(1, 0).netns
    }

    /// Steers the entry node's receive work to [`ENTRY_CPU`] and the
    /// underlay's to [`GEN_CPU`]; says what it did.
    fn steer(&self) -> Result<String> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cores < 2 {
            return Ok("one CPU: nothing steered, every softirq shares it".into());
        }
        traffic::set_rps(&self.world.node(0).netns, UNDERLAY_IF, "2")?;
        let ports = traffic::bridge_ports(self.world.underlay(), UNDERLAY_BRIDGE)?;
        for p in &ports {
            traffic::set_rps(self.world.underlay(), p, "1")?;
        }
        Ok(format!(
            "RPS: node 0's {UNDERLAY_IF} to CPU {ENTRY_CPU}; the underlay's bridge ports ({}) to \
             CPU {GEN_CPU}; trafgen pinned to CPU {GEN_CPU}",
            ports.join(", ")
        ))
    }

    fn start_apiserver(&mut self, bins: &Binaries) -> Result<()> {
        self.apiserver = None;
        let (server, kubeconfig) = start_apiserver(
            &self.world,
            bins,
            self.api_ip,
            1,
            &[
                "--service-cluster-ip-range",
                SERVICE_CIDR,
                "--service-node-port-range",
                NODE_PORT_RANGE,
            ],
        )?;
        self.kubeconfig = kubeconfig;
        self.apiserver = Some(server);
        Ok(())
    }

    fn rig<'a>(&'a self, stop: &'a AtomicBool) -> Rig<'a> {
        Rig {
            underlay: self.world.underlay(),
            bridge: UNDERLAY_BRIDGE,
            backend: self.backend_netns(),
            backend_if: "eth0",
            gen_cpu: GEN_CPU,
            dir: self.world.state_dir(),
            stop,
        }
    }

    fn stream(&self, kind: &Kind, flows: u32) -> Stream {
        let (dst, port) = if *kind == Kind::Route {
            (self.backend_ip, UDP_SINK_PORT)
        } else {
            (self.node0_ip(), UDP_NODE_PORT)
        };
        Stream {
            src_mac: self.client_mac.clone(),
            dst_mac: self.node0_mac.clone(),
            src: self.api_ip,
            dst,
            port,
            flows,
        }
    }
}

/// What the UDP sink prints once it listens.
pub const UDP_SINK_READY: &str = "nodeport-bench udp-sink: listening";

/// Binds `0.0.0.0:port` and reads datagrams forever, answering none (a
/// listener, so the backend sends no ICMP port-unreachable back through
/// the entry node).
pub fn udp_sink(port: u16) -> Result<()> {
    let sock = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))
        .with_context(|| format!("binding udp :{port}"))?;
    println!("{UDP_SINK_READY} port={port}");
    let mut buf = [0u8; 2048];
    loop {
        // Errors (none expected on a bound UDP socket) are not fatal.
        let _ = sock.recv_from(&mut buf);
    }
}

/// Fails early when a tool the run needs is missing.
fn check_tools(s: &Settings) -> Result<()> {
    let mut tools = vec!["nsenter", "ip", "taskset", "trafgen"];
    if s.variants.iter().any(|v| v.kind == Kind::Iptables) {
        tools.push(s.iptables.restore());
    }
    if s.variants
        .iter()
        .any(|v| matches!(v.kind, Kind::Nftables | Kind::Iptables))
    {
        tools.push("nft");
    }
    Ok(crate::harness::require_tools(&tools)?)
}

/// Runs every phase; `say` reports progress.
pub fn run(s: &Settings, bins: &Binaries, stop: &AtomicBool, say: fn(&str)) -> Result<Results> {
    check_tools(s)?;
    let versions = Versions {
        agent: crate::harness::version_of(&bins.agent, "--version"),
        trafgen: crate::harness::version_of(Path::new("trafgen"), "--version"),
        iptables: crate::harness::version_of(Path::new(s.iptables.restore()), "--version"),
        nft: crate::harness::version_of(Path::new("nft"), "--version"),
    };
    let max = s.sizes.iter().copied().max().unwrap_or(1);
    let fakes: Vec<Svc> = (0..max.saturating_sub(3))
        .map(fake)
        .collect::<Result<_>>()?;
    say("building the world (2 nodes, a backend pod on node 1, the underlay as the client)");
    let mut lab = Lab::build(bins)?;
    let steering = lab.steer()?;
    say(&steering);
    let underlay = lab.world.underlay().clone();
    let mut results = underlay
        .in_netns(|| -> Result<Results> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?;
            rt.block_on(measure(&mut lab, bins, s, &fakes, stop, say))
        })
        .context("entering the underlay namespace")??;
    results.versions = versions;
    results.steering = steering;
    say("tearing the world down");
    drop(lab);
    Ok(results)
}

async fn measure(
    lab: &mut Lab,
    bins: &Binaries,
    s: &Settings,
    fakes: &[Svc],
    stop: &AtomicBool,
    say: fn(&str),
) -> Result<Results> {
    let targets = targets(lab.backend_ip);
    let mut results = Results {
        sizes: s
            .sizes
            .iter()
            .map(|&n| (n, vec![Run::default(); s.variants.len()]))
            .collect(),
        ..Results::default()
    };
    let index = |k: &Kind| s.variants.iter().position(|v| &v.kind == k);

    if let Some(i) = index(&Kind::Route) {
        stopped(stop)?;
        say("routing only: the floor");
        let mut run = Run::default();
        let r = forward_and_connect(lab, bins, s, &Kind::Route, &mut run, stop);
        contain(&mut run, r, "routing", say);
        // It does not depend on N: the same row for every N.
        for (_, runs) in &mut results.sizes {
            runs[i] = run.clone();
        }
    }

    let ferry: Vec<usize> = s
        .variants
        .iter()
        .enumerate()
        .filter(|(_, v)| matches!(v.kind, Kind::Ferry(_)))
        .map(|(i, _)| i)
        .collect();
    if !ferry.is_empty() {
        lab.start_apiserver(bins)?;
        let client = api::client(&lab.kubeconfig).await?;
        api::wait_ready(&client, Duration::from_secs(30)).await?;
        api::setup(&client, lab.world.node(0)).await?;
        api::create(&client, &targets, 1).await?;
        let mut created = 0;
        // Variants that refused their flags once are not tried again.
        let mut refused: Vec<Option<String>> = vec![None; s.variants.len()];
        for (n, runs) in &mut results.sizes {
            stopped(stop)?;
            let want = n.saturating_sub(targets.len());
            if want > created {
                say(&format!(
                    "ferry: creating {} more NodePort Services + EndpointSlices (to {n})",
                    want - created
                ));
                let took = api::create(&client, &fakes[created..want], s.concurrency).await?;
                say(&format!("ferry: created in {:.1} s", took.as_secs_f64()));
                created = want;
            }
            for &i in &ferry {
                let v = &s.variants[i];
                if let Some(why) = &refused[i] {
                    runs[i].status = Status::NotAvailable(why.clone());
                    continue;
                }
                stopped(stop)?;
                say(&format!("{}: {n} Services", v.label));
                let r = ferry_run(lab, bins, s, v, *n, &mut runs[i], stop);
                contain(&mut runs[i], r, &v.label, say);
                if let Status::NotAvailable(why) = &runs[i].status {
                    say(&format!("{}: not available: {why}", v.label));
                    refused[i] = Some(why.clone());
                }
            }
        }
        lab.apiserver = None;
    }

    let node0 = lab.world.node(0).netns.clone();
    let dir = lab.world.state_dir().join("rules");
    let mut rules = crate::services::Rules::in_node(&node0, &dir, s.iptables, stop)?;
    rules.reset()?;
    for (kind, max) in [
        (Kind::Nftables, s.nft_max),
        (Kind::Iptables, s.iptables_max),
    ] {
        let Some(i) = index(&kind) else { continue };
        for (n, runs) in &mut results.sizes {
            stopped(stop)?;
            let label = &s.variants[i].label;
            if *n > max {
                runs[i].status = Status::Skipped(format!(
                    "not loaded above {max} Services (--{}-max)",
                    if kind == Kind::Nftables {
                        "nft"
                    } else {
                        "iptables"
                    }
                ));
                continue;
            }
            say(&format!("{label}: {n} Services"));
            let set = service_set(fakes, &targets, *n);
            let r = rules_run(lab, &mut rules, bins, s, &kind, &set, &mut runs[i], stop);
            let reset = rules.reset();
            contain(&mut runs[i], r.and(reset), label, say);
        }
    }
    Ok(results)
}

/// Records a failed run instead of ending the benchmark.
fn contain(run: &mut Run, r: Result<()>, what: &str, say: fn(&str)) {
    match r {
        Ok(()) => {
            if run.status == Status::NotRun {
                run.status = Status::Ran;
            }
        }
        Err(e) => {
            say(&format!("{what} failed: {e:#}"));
            run.status = Status::Failed(format!("{e:#}"));
        }
    }
}

/// Whether the agent's exit says it does not know a flag.
fn refused_flag(log: &str) -> Option<String> {
    log.lines()
        .find(|l| {
            l.contains("unexpected argument")
                || l.contains("invalid value")
                || l.contains("unrecognized")
        })
        .map(|l| l.trim().trim_start_matches("error: ").to_string())
}

fn ferry_run(
    lab: &Lab,
    bins: &Binaries,
    s: &Settings,
    v: &Variant,
    n: usize,
    run: &mut Run,
    stop: &AtomicBool,
) -> Result<()> {
    let Kind::Ferry(flags) = &v.kind else {
        bail!("not a Ferry variant");
    };
    let mut flags = flags.clone();
    loop {
        match ferry_try(lab, bins, s, v, &flags, n, run, stop)? {
            Some(why) if flags == ["--xdp", "off"] => {
                // An agent from before `--xdp`: TC is all it has.
                note_refused(run, &why);
                flags.clear();
            }
            Some(why) => {
                run.status = Status::NotAvailable(why);
                return Ok(());
            }
            None => return Ok(()),
        }
    }
}

/// Keeps why the first choice of flags was refused in the row's size cell.
fn note_refused(run: &mut Run, why: &str) {
    run.size = format!("(without --xdp off: {why}) ");
}

/// One agent with `flags`: `Some(reason)` when it refused them.
#[allow(clippy::too_many_arguments)]
fn ferry_try(
    lab: &Lab,
    bins: &Binaries,
    s: &Settings,
    v: &Variant,
    flags: &[String],
    n: usize,
    run: &mut Run,
    stop: &AtomicBool,
) -> Result<Option<String>> {
    let mut extra = vec!["--devices".to_string(), UNDERLAY_IF.to_string()];
    extra.extend(flags.iter().cloned());
    let pow2 = |n: usize, floor: u32| {
        u32::try_from(n.next_power_of_two())
            .unwrap_or(1 << 30)
            .max(floor)
    };
    // Per NodePort Service: the ClusterIP and the node port, each with an
    // internal and an external entry; two backend groups (internal and
    // external), each with its endpoint in two revisions.
    let sizes = MapSizes {
        services: pow2(n * 4 + 1024, 65_536),
        backends: pow2(n * 4 + 1024, 262_144),
        stats: pow2(n * 2 + 64, 16_384),
    };
    // Direct server return needs the backend's node to decapsulate and
    // answer for the frontend: an agent there too, with the same mode.
    let mut backend_agent = if direct_return(flags) {
        Some(Agent::spawn(
            &lab.world,
            lab.world.node(1),
            &lab.kubeconfig,
            bins,
            &format!("{}-{n}-n1", v.key),
            sizes,
            &extra,
        )?)
    } else {
        None
    };
    let mut agent = Agent::spawn(
        &lab.world,
        lab.world.node(0),
        &lab.kubeconfig,
        bins,
        &format!("{}-{n}", v.key),
        sizes,
        &extra,
    )?;
    if let Some(a) = &mut backend_agent {
        a.wait_synced(s.sync_timeout)
            .context("node 1's agent (direct server return)")?;
    }
    match agent.wait_synced(s.sync_timeout) {
        Ok(synced) => run.program = Some(synced),
        Err(e) => {
            if let Some(status) = agent.exited()?
                && let Some(why) = refused_flag(&agent.log_tail())
            {
                return Ok(Some(format!("ferry-agent {status}: {why}")));
            }
            return Err(e);
        }
    }
    let maps = crate::services::maps::Pinned::open(&agent.hooks.bpffs)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let (internal, all) = loop {
        let (internal, all) = maps.frontends()?;
        if internal >= n * 2 || Instant::now() > deadline {
            break (internal, all);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    run.size
        .push_str(&format!("{all} frontend entries ({internal} internal)"));
    let traffic = forward_and_connect(lab, bins, s, &v.kind, run, stop);
    run.devices = inspect_devices(lab, bins, &agent.hooks.bpffs, stop);
    traffic?;
    agent.check_running()?;
    if let Some(a) = &mut backend_agent {
        a.check_running().context("node 1's agent")?;
    }
    Ok(None)
}

/// Whether `flags` ask for direct server return (all of it or TCP's).
fn direct_return(flags: &[String]) -> bool {
    flags
        .windows(2)
        .any(|w| w[0] == "--lb-mode" && matches!(w[1].as_str(), "dsr" | "hybrid"))
        || flags
            .iter()
            .any(|f| matches!(f.as_str(), "--lb-mode=dsr" | "--lb-mode=hybrid"))
}

/// `ferry-agent inspect devices` on node 0, joined into one line; None
/// when it fails (the row's numbers stand without it).
fn inspect_devices(lab: &Lab, bins: &Binaries, bpffs: &Path, stop: &AtomicBool) -> Option<String> {
    let mut cmd = lab.world.node(0).netns.command(&bins.agent);
    cmd.arg("--bpffs-root")
        .arg(bpffs)
        .args(["inspect", "devices"]);
    let out = crate::cni::exec::run_timed(&mut cmd, &[], Duration::from_secs(10), stop)
        .ok()
        .filter(|o| o.status.success())?;
    let text = out.stdout_text();
    Some(
        text.lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; "),
    )
}

#[allow(clippy::too_many_arguments)]
fn rules_run(
    lab: &Lab,
    rules: &mut crate::services::Rules<'_>,
    bins: &Binaries,
    s: &Settings,
    kind: &Kind,
    set: &[Svc],
    run: &mut Run,
    stop: &AtomicBool,
) -> Result<()> {
    let n = set.len();
    if *kind == Kind::Nftables {
        let node_ips = [lab.node0_ip()];
        let tx = nftables::full_with(
            set,
            &nftables::Options {
                service_cidr: SERVICE_CIDR,
                nodeport_addrs: nftables::NodePortAddrs::Only(&node_ips),
            },
        );
        run.size = format!(
            "{} rules, {} chains, {} elements",
            tx.rules, tx.chains, tx.elements
        );
        run.program = Some(rules.nft(&format!("nodeport-nft-{n}.nft"), &tx.text)?);
    } else {
        let rs = iptables::full(set);
        run.size = format!("{} rules, {} chains", rs.rules, rs.chains);
        run.program = Some(rules.iptables_restore(
            &format!("nodeport-iptables-{n}.rules"),
            &rs.text,
            false,
        )?);
    }
    forward_and_connect(lab, bins, s, kind, run, stop)
}

/// Waits until a UDP datagram and a TCP connection get through `kind`'s
/// path, then measures both traffic phases.
fn forward_and_connect(
    lab: &Lab,
    bins: &Binaries,
    s: &Settings,
    kind: &Kind,
    run: &mut Run,
    stop: &AtomicBool,
) -> Result<()> {
    warm(lab, kind)?;
    let rig = lab.rig(stop);
    let tag = match kind {
        Kind::Route => "route".to_string(),
        Kind::Ferry(f) => format!("ferry{}", f.join("")),
        Kind::Nftables => "nft".into(),
        Kind::Iptables => "ipt".into(),
    };
    stopped(stop)?;
    let count = (s.rate as f64 * s.duration.as_secs_f64()) as u64;
    run.established = Some(rig.burst(
        &lab.stream(kind, 64),
        count.max(1),
        s.rate,
        &format!("{tag}-est"),
    )?);
    stopped(stop)?;
    let packets = s.new_flow_packets.clamp(1, 64_000);
    run.new_flows = Some(rig.burst(
        &lab.stream(kind, u32::try_from(packets).unwrap_or(64_000)),
        packets,
        s.new_flow_rate,
        &format!("{tag}-new"),
    )?);
    stopped(stop)?;
    if *kind != Kind::Route {
        run.tcp = Some(tcp_client(lab, bins, s, stop)?);
    }
    Ok(())
}

/// Bounded: until one datagram reaches the backend and one connect
/// succeeds.
fn warm(lab: &Lab, kind: &Kind) -> Result<()> {
    let (udp_dst, tcp_dst) = if *kind == Kind::Route {
        (
            SocketAddr::new(IpAddr::V4(lab.backend_ip), UDP_SINK_PORT),
            SocketAddr::new(IpAddr::V4(lab.backend_ip), model::SINK_PORT),
        )
    } else {
        (
            SocketAddr::new(IpAddr::V4(lab.node0_ip()), UDP_NODE_PORT),
            SocketAddr::new(IpAddr::V4(lab.node0_ip()), TCP_NODE_PORT),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (rx0, _) = traffic::link(lab.backend_netns(), "eth0")?;
        let sent = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
            .and_then(|u| u.send_to(b"warm", udp_dst));
        let tcp = std::net::TcpStream::connect_timeout(&tcp_dst, Duration::from_millis(500));
        std::thread::sleep(Duration::from_millis(100));
        let (rx1, _) = traffic::link(lab.backend_netns(), "eth0")?;
        let last = match (sent, tcp) {
            (Ok(_), Ok(_)) if rx1 > rx0 => return Ok(()),
            (Err(e), _) => format!("udp: {e}"),
            (_, Err(e)) => format!("tcp {tcp_dst}: {e}"),
            _ => format!("no datagram to {udp_dst} reached the backend"),
        };
        if Instant::now() > deadline {
            bail!("the path never carried traffic within 20 s: {last}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The services bench's client, run from this (underlay) thread's
/// namespace.
fn tcp_client(lab: &Lab, bins: &Binaries, s: &Settings, stop: &AtomicBool) -> Result<Traffic> {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let node0 = IpAddr::V4(lab.node0_ip());
    let args = ClientArgs {
        addr: SocketAddr::new(node0, TCP_NODE_PORT),
        http_addr: SocketAddr::new(node0, HTTP_NODE_PORT),
        cgroup: None,
        warmup: 20,
        connects: s.connects,
        http: s.http,
        workers: s.workers,
        rate_ms: ms(s.rate_window),
        phase_ms: 30_000,
        timeout_ms: 1000,
    };
    let mut cmd = Command::new(&bins.bench);
    cmd.arg("client").args(args.to_args());
    let timed = lab
        .world
        .underlay()
        .in_netns(move || crate::cni::exec::run_timed(&mut cmd, &[], args.limit(), stop))
        .context("entering the underlay")?
        .context("running the client")?;
    if !timed.status.success() {
        bail!(
            "the client failed ({}): {}",
            timed.status,
            timed.stderr_text()
        );
    }
    let summary: ClientSummary =
        serde_json::from_slice(&timed.stdout).context("decoding the client's summary")?;
    Ok(Traffic::of(summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fakes_fit_100k_and_stay_apart() {
        let first = fake(0).expect("fake 0");
        let second = fake(1).expect("fake 1");
        assert_eq!(first.node_port, Some(1024));
        assert_eq!(first.protocol, Proto::Tcp);
        assert_eq!(second.node_port, Some(1025));
        assert_eq!(second.protocol, Proto::Udp);
        assert_eq!(fake_node_ports(), 58_971);
        assert!(fake_port(58_970).is_some() && fake_port(58_971).is_none());
        assert_eq!(fake_port(10249 - 1024), Some(10250));
        let last_np = fake(58_970).expect("fake");
        assert_eq!(last_np.node_port, Some(59_999));
        let last = fake(99_996).expect("fake 99,996");
        assert!(last.ip < TARGET_IPS[0]);
        assert_eq!(last.node_port, None);
        // No fake takes a target's node port or the agent's ports.
        let mut ports: Vec<u16> = (0..58_971).filter_map(fake_port).collect();
        assert!(
            ports
                .iter()
                .all(|p| ![10249, 10256, 30080, 30081, 30082].contains(p))
        );
        ports.dedup();
        assert_eq!(ports.len(), 58_971);
        let t = targets(Ipv4Addr::new(10, 244, 1, 2));
        let set = service_set(&[first, second], &t, 4);
        assert_eq!(set.len(), 4);
        assert_eq!(set[3].name, "np-http");
    }

    #[test]
    fn refused_flags_are_recognised() {
        let log = "error: unexpected argument '--xdp' found\n\nUsage: ferry-agent [OPTIONS]";
        assert_eq!(
            refused_flag(log).as_deref(),
            Some("unexpected argument '--xdp' found")
        );
        assert_eq!(refused_flag("thread main panicked"), None);
        let flags = |f: &[&str]| f.iter().map(|x| (*x).to_string()).collect::<Vec<_>>();
        assert!(direct_return(&flags(&["--lb-mode", "dsr"])));
        assert!(direct_return(&flags(&["--xdp", "off", "--lb-mode=hybrid"])));
        assert!(!direct_return(&flags(&["--lb-mode", "snat"])));
        assert!(!direct_return(&flags(&["--xdp", "native"])));
        let keys: Vec<String> = known_variants().into_iter().map(|v| v.key).collect();
        assert_eq!(
            keys,
            [
                "route",
                "ferry-tc",
                "ferry-xdp",
                "ferry-dsr",
                "nftables",
                "iptables"
            ]
        );
    }
}
