//! `ferry-agent`: the node agent. Watches Nodes and keeps this node's routes
//! to every other node's pod CIDRs in step, and, as the kube-proxy
//! replacement, keeps the eBPF service maps in step with Services and
//! EndpointSlices.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use ferry_daemon::http::HttpLimits;
use ferry_daemon::watch::{DecodeErrors, Decoded};
use ferry_dataplane::announce::{self, Announcer};
use ferry_dataplane::bpf::{self, Layout, MapSizes};
use ferry_dataplane::conntrack::Timeouts;
use ferry_dataplane::devices;
use ferry_dataplane::inspect;
use ferry_dataplane::metrics::{self, Metrics};
use ferry_dataplane::node_setup;
use ferry_dataplane::nodes::NodeInfo;
use ferry_dataplane::observe::event::Filter;
use ferry_dataplane::observe::names::{Directory, Names};
use ferry_dataplane::observe::{client, server};
use ferry_dataplane::policy::enforcer;
use ferry_dataplane::policy::programmer::PolicyProgrammer;
use ferry_dataplane::routing::{Mode, Router};
use ferry_dataplane::service::maglev::{self, Seed};
use ferry_dataplane::service::model::LbAlgorithm;
use ferry_dataplane::service::nat_ports::NatPorts;
use ferry_dataplane::service::programmer::{LbMode, LbSettings, Programmer};
use ferry_dataplane::service::proxy;
use ferry_ebpf_common::policy::PolicyStats;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Routing {
    /// Routes via the other nodes' addresses (nodes share L2).
    Direct,
    /// A VXLAN overlay between nodes.
    Vxlan,
    /// No inter-node routes (something else provides them).
    None,
}

#[derive(Debug, Parser)]
#[command(
    name = "ferry-agent",
    version,
    about = "Ferry's node agent",
    after_help = "Settings go before or after a subcommand, as with kubectl:\n  ferry-agent --kubeconfig node-1.kubeconfig --node-name node-1 --devices eth0\n  ferry-agent inspect services --bpffs-root /sys/fs/bpf/ferry"
)]
struct Cli {
    /// Kubeconfig to reach the API; in-cluster configuration when unset.
    #[arg(long, global = true, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// This node's name (its Node object).
    #[arg(long, global = true, env = "NODE_NAME", default_value = "")]
    node_name: String,
    /// How pod traffic crosses between nodes.
    #[arg(
        long,
        global = true,
        env = "FERRY_AGENT_ROUTING",
        value_enum,
        default_value = "direct"
    )]
    routing: Routing,
    /// VXLAN network identifier.
    #[arg(
        long,
        global = true,
        env = "FERRY_AGENT_VXLAN_VNI",
        default_value_t = 1
    )]
    vxlan_vni: u32,
    /// VXLAN UDP port (8472, as flannel and Cilium use on Linux).
    #[arg(
        long,
        global = true,
        env = "FERRY_AGENT_VXLAN_PORT",
        default_value_t = 8472
    )]
    vxlan_port: u16,
    /// Seconds between full re-syncs, repairing anything changed behind the
    /// agent's back.
    #[arg(long, global = true, default_value_t = 60)]
    resync_seconds: u64,
    /// Where the maps and program links are pinned (a bpffs directory).
    #[arg(
        long,
        global = true,
        env = "FERRY_AGENT_BPFFS_ROOT",
        default_value = "/sys/fs/bpf/ferry"
    )]
    bpffs_root: PathBuf,
    /// The cgroup (v2) whose processes get socket-level load balancing:
    /// the hierarchy's root in production (in a pod: the host's
    /// /sys/fs/cgroup mounted by hostPath, since the pod's own
    /// /sys/fs/cgroup is its own cgroup); tests give a child cgroup of
    /// their own. Default: the first cgroup2 mount that is the hierarchy's
    /// root (one without `cgroup.type`).
    #[arg(long, global = true, env = "FERRY_AGENT_CGROUP_ROOT")]
    cgroup_root: Option<PathBuf>,
    /// Run without the service proxy (routes only).
    #[arg(long, global = true)]
    no_service_proxy: bool,
    /// Devices whose traffic gets per-packet service translation (TC),
    /// e.g. the node's uplink; none: socket-level balancing only.
    #[arg(
        long,
        global = true,
        env = "FERRY_AGENT_DEVICES",
        value_delimiter = ','
    )]
    devices: Vec<String>,
    /// The XDP fast path for traffic from outside on `--devices`: `native`
    /// (in the driver, or fail), `best-effort` (native where the driver
    /// supports it, TC alone elsewhere) or `off`.
    #[arg(
        long,
        global = true,
        env = "FERRY_AGENT_XDP",
        value_enum,
        default_value = "best-effort"
    )]
    xdp: bpf::XdpSetting,
    /// NodePorts answer only at the node's addresses in these CIDRs
    /// (kube-proxy's flag); empty: at every address but loopback and
    /// link-local ones (and, from the node's own processes, at 127.0.0.1
    /// and ::1).
    #[arg(
        long,
        global = true,
        env = "FERRY_AGENT_NODEPORT_ADDRESSES",
        value_delimiter = ','
    )]
    nodeport_addresses: Vec<ipnet::IpNet>,
    /// Also translate per packet on every device named with this prefix,
    /// attached as they appear: the node side of pods' veths (ferry-cni's
    /// are `fer...`), for pods whose processes are outside the cgroup; and
    /// enforce NetworkPolicy there.
    #[arg(long, global = true, env = "FERRY_AGENT_POD_DEVICES")]
    pod_devices: Option<String>,
    /// With `--pod-devices`: do not enforce NetworkPolicy (every pod can
    /// reach every other, whatever the policies say).
    #[arg(long, global = true)]
    no_network_policy: bool,
    /// Answer ARP and NDP for LoadBalancer IPs on `--devices`, one node
    /// per Service, elected through a Lease (L2 announcement, for bare
    /// metal and local clusters); `--l2-announce=false` turns it off.
    #[arg(long, global = true, env = "FERRY_AGENT_L2_ANNOUNCE", default_value_t = true,
          num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    l2_announce: bool,
    /// Namespace of the L2 announcement Leases
    /// (`ferry-l2.<namespace>.<service>`).
    #[arg(long, global = true, default_value = "kube-system")]
    l2_lease_namespace: String,
    /// How long the other nodes wait, from when they last saw a Lease
    /// change, before taking it over (`5s`, `1500ms`).
    #[arg(long, global = true, default_value = "5s", value_parser = parse_duration)]
    l2_lease_duration: Duration,
    /// A holder that could not renew its Lease for this long stops
    /// answering (below the lease duration).
    #[arg(long, global = true, default_value = "3s", value_parser = parse_duration)]
    l2_lease_renew_deadline: Duration,
    /// Between attempts to take or renew a Lease.
    #[arg(long, global = true, default_value = "1s", value_parser = parse_duration)]
    l2_lease_retry_period: Duration,
    /// Where `/healthz`, `/readyz` and `/metrics` are served (kube-proxy's
    /// metrics port); empty to turn them off.
    #[arg(
        long,
        global = true,
        env = "FERRY_AGENT_METRICS_BIND_ADDRESS",
        default_value = "127.0.0.1:10249"
    )]
    metrics_bind_address: String,
    /// Where kube-proxy's own `/healthz` and `/livez` are served (load
    /// balancers and probes read them); empty to turn them off.
    #[arg(
        long,
        global = true,
        env = "FERRY_AGENT_HEALTHZ_BIND_ADDRESS",
        default_value = "0.0.0.0:10256"
    )]
    healthz_bind_address: String,
    /// Seconds a metrics client has to send a request head.
    #[arg(long, global = true, default_value_t = HttpLimits::default().header_timeout.as_secs())]
    metrics_header_timeout: u64,
    /// Seconds a metrics connection may move nothing before it is closed.
    #[arg(long, global = true, default_value_t = HttpLimits::default().idle_timeout.as_secs())]
    metrics_idle_timeout: u64,
    /// Metrics connections open at once; more wait in the listen backlog.
    #[arg(long, global = true, default_value_t = HttpLimits::default().max_connections)]
    metrics_max_connections: usize,
    /// Idle TCP flows are forgotten after this many seconds.
    #[arg(long, global = true, default_value_t = Timeouts::default().tcp.as_secs())]
    conntrack_tcp_timeout: u64,
    /// Idle UDP flows are forgotten after this many seconds.
    #[arg(long, global = true, default_value_t = Timeouts::default().udp.as_secs())]
    conntrack_udp_timeout: u64,
    /// Conntrack garbage collection interval, seconds.
    #[arg(long, global = true, default_value_t = 10)]
    conntrack_gc_interval: u64,
    /// Service frontend map entries.
    #[arg(long, global = true, default_value_t = MapSizes::default().services)]
    map_services: u32,
    /// Backend slot map entries (two per backend while a set is replaced).
    #[arg(long, global = true, default_value_t = MapSizes::default().backends)]
    map_backends: u32,
    /// Session affinity map entries (LRU).
    #[arg(long, global = true, default_value_t = MapSizes::default().affinity)]
    map_affinity: u32,
    /// Socket reverse-translation map entries (LRU).
    #[arg(long, global = true, default_value_t = MapSizes::default().sock_revnat)]
    map_sock_revnat: u32,
    /// Backend groups with counters (and the most groups programmed).
    #[arg(long, global = true, default_value_t = MapSizes::default().stats)]
    map_stats: u32,
    /// Conntrack entries for per-packet translation (LRU).
    #[arg(long, global = true, default_value_t = MapSizes::default().conntrack)]
    map_conntrack: u32,
    /// Maglev table chunks of 512 entries (a table of the default size
    /// takes 32); allocated as used.
    #[arg(long, global = true, default_value_t = MapSizes::default().maglev)]
    map_maglev: u32,
    /// NetworkPolicy allow entries of this node's pods (allocated as used).
    #[arg(long, global = true, default_value_t = MapSizes::default().policy_rules)]
    map_policy_rules: u32,
    /// NetworkPolicy's judged flows (LRU; two entries a flow).
    #[arg(long, global = true, default_value_t = MapSizes::default().policy_conntrack)]
    map_policy_conntrack: u32,
    /// NetworkPolicy: pod addresses of the whole cluster.
    #[arg(long, global = true, default_value_t = MapSizes::default().policy_identities)]
    map_policy_identities: u32,
    /// How new flows from outside the cluster (NodePort, LoadBalancer,
    /// externalIPs) pick a backend; a Service's `ferry.dev/lb-algorithm`
    /// annotation overrides it. In-cluster traffic is always random.
    #[arg(
        long,
        global = true,
        env = "FERRY_AGENT_LB_ALGORITHM",
        value_enum,
        default_value = "random"
    )]
    lb_algorithm: LbAlgorithm,
    /// How traffic from outside reaches a backend on another node: `snat`
    /// (through the entry node both ways, as kube-proxy), `dsr` (to the
    /// backend's node in Geneve, UDP port 6081, replies straight to the
    /// client) or `hybrid` (DSR for TCP only). The same on every node: a
    /// node takes DSR packets only when it runs DSR itself.
    #[arg(
        long,
        global = true,
        env = "FERRY_AGENT_LB_MODE",
        value_enum,
        default_value = "snat"
    )]
    lb_mode: LbMode,
    /// Entries per Maglev table: a prime (251, 509, 1021, 2039, 4093, 8191,
    /// 16381, 32749, 65521 or 131071); the same on every node.
    #[arg(long, global = true, default_value_t = maglev::DEFAULT_SIZE)]
    maglev_table_size: u32,
    /// The cluster-wide Maglev hash seed (any string); every node must be
    /// given the same one, or they pick different backends for a flow.
    #[arg(long, global = true, env = "FERRY_MAGLEV_SEED", default_value = maglev::DEFAULT_SEED)]
    maglev_seed: String,
    /// The node ports a source-translated flow from outside takes (`snat`
    /// mode), MIN-MAX: kept out of the kernel's ephemeral range
    /// (`net.ipv4.ip_local_port_range`) so replies to the node's own
    /// connections are never taken for them; where the two meet, the agent
    /// adds this range to `net.ipv4.ip_local_reserved_ports`.
    #[arg(
        long,
        global = true,
        env = "FERRY_AGENT_NAT_PORT_RANGE",
        default_value = "61000-65535"
    )]
    nat_port_range: NatPorts,
    /// Where flow events are served to `ferry-agent observe` (a Unix
    /// socket, mode 0600); empty to turn observation off.
    #[arg(long, global = true, default_value = "/run/ferry/observe.sock")]
    observe_socket: PathBuf,
    /// Flow events a second each CPU may write while someone watches (more
    /// are counted as lost, not written).
    #[arg(long, global = true, default_value_t = 1000)]
    observe_rate: u32,
    /// Watchers connected at once; more wait.
    #[arg(long, global = true, default_value_t = 16)]
    observe_max_watchers: usize,
    #[command(subcommand)]
    command: Option<Command>,
}

impl Cli {
    fn sizes(&self) -> MapSizes {
        MapSizes {
            services: self.map_services,
            backends: self.map_backends,
            affinity: self.map_affinity,
            sock_revnat: self.map_sock_revnat,
            stats: self.map_stats,
            conntrack: self.map_conntrack,
            maglev: self.map_maglev,
            policy_rules: self.map_policy_rules,
            policy_conntrack: self.map_policy_conntrack,
            policy_identities: self.map_policy_identities,
            ..MapSizes::default()
        }
    }

    fn layout(&self) -> anyhow::Result<Layout> {
        let cgroup_root = node_setup::cgroup_root_here(self.cgroup_root.as_deref())?;
        Ok(Layout {
            bpffs_root: self.bpffs_root.clone(),
            cgroup_root,
        })
    }
}

/// A duration as `5s`, `1500ms`, `1m` (or ISO 8601).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let d: jiff::SignedDuration = s.parse().map_err(|e| format!("{e}"))?;
    Duration::try_from(d).map_err(|_| format!("{s}: a duration cannot be negative"))
}

/// The L2 announcer: off without the service proxy, with
/// `--l2-announce=false`, or without `--devices` to answer on.
fn announcer(cli: &Cli, client: Client, metrics: Arc<Metrics>) -> anyhow::Result<Announcer> {
    if cli.no_service_proxy || !cli.l2_announce {
        return Ok(Announcer::disabled());
    }
    if cli.devices.is_empty() {
        tracing::info!(
            "L2 announcement needs --devices to answer on; no LoadBalancer IP is announced"
        );
        return Ok(Announcer::disabled());
    }
    let settings = announce::Settings {
        namespace: cli.l2_lease_namespace.clone(),
        identity: cli.node_name.clone(),
        timings: announce::Timings {
            lease_duration: cli.l2_lease_duration,
            renew_deadline: cli.l2_lease_renew_deadline,
            retry_period: cli.l2_lease_retry_period,
        },
    };
    Announcer::start(client, settings, &cli.devices, metrics)
        .context("starting L2 announcement (--l2-announce=false turns it off)")
}

impl Cli {
    fn checks(&self, kernel_btf: &std::path::Path) -> node_setup::CheckSettings {
        node_setup::CheckSettings {
            kernel_btf: kernel_btf.to_owned(),
            service_proxy: !self.no_service_proxy,
            ..node_setup::CheckSettings::new(self.bpffs_root.clone(), self.cgroup_root.clone())
        }
    }
}

/// Prints one line a check; an error if any check failed.
fn print_checks(findings: &[node_setup::Finding]) -> anyhow::Result<()> {
    for f in findings {
        println!("{f}");
    }
    let failed = findings
        .iter()
        .filter(|f| f.level == node_setup::Level::Error)
        .count();
    anyhow::ensure!(
        failed == 0,
        "{failed} check(s) failed: see the lines marked error"
    );
    Ok(())
}

/// The checks at agent start: logged; errors stop the agent.
fn startup_checks(cli: &Cli) -> anyhow::Result<()> {
    use node_setup::Level;
    let findings =
        node_setup::run_checks(&cli.checks(std::path::Path::new(node_setup::KERNEL_BTF)));
    let mut errors = Vec::new();
    for f in &findings {
        match f.level {
            Level::Ok | Level::Skipped => tracing::info!(check = f.check, "{}", f.message),
            Level::Warning => tracing::warn!(check = f.check, "{}", f.message),
            Level::Error => {
                tracing::error!(check = f.check, "{}", f.message);
                errors.push(format!("{}: {}", f.check, f.message));
            }
        }
    }
    anyhow::ensure!(errors.is_empty(), "{}", errors.join("; "));
    Ok(())
}

/// `install-cni`: the plugin and its network config onto the host.
async fn install_cni(cli: &Cli, args: &InstallCni) -> anyhow::Result<()> {
    let cidrs = if args.pod_cidrs.is_empty() {
        let client = client(cli.kubeconfig.as_ref()).await?;
        node_setup::node_pod_cidrs(client, &cli.node_name, args.pod_cidrs_wait).await?
    } else {
        args.pod_cidrs.clone()
    };
    let network = node_setup::CniNetwork {
        ranges: node_setup::PodRanges::Cidrs(cidrs),
        state_dir: args.cni_state_dir.clone(),
        wait_for_agent: (cli.pod_devices.is_some() && !cli.no_service_proxy)
            .then(|| cli.bpffs_root.clone()),
    };
    let to = node_setup::CniInstall {
        bin_dir: args.cni_bin_dir.clone(),
        conf_dir: args.cni_conf_dir.clone(),
        source: args.source.clone(),
    };
    let done = node_setup::install_cni(&to, &network)?;
    for (path, outcome) in [
        (&done.plugin, done.plugin_outcome),
        (&done.conflist, done.conflist_outcome),
    ] {
        let what = match outcome {
            node_setup::Outcome::Written => "installed",
            node_setup::Outcome::Unchanged => "unchanged",
        };
        println!("{what} {}", path.display());
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
struct InstallCni {
    /// The host's CNI bin directory, as mounted here.
    #[arg(long)]
    cni_bin_dir: PathBuf,
    /// The host's CNI config directory, as mounted here.
    #[arg(long)]
    cni_conf_dir: PathBuf,
    /// The ferry-cni binary to copy.
    #[arg(long, default_value = node_setup::PLUGIN_SOURCE)]
    source: PathBuf,
    /// The node's pod CIDRs; default: its Node's `spec.podCIDRs` (immutable
    /// once set), read through the API for `--node-name`.
    #[arg(long, value_delimiter = ',')]
    pod_cidrs: Vec<ipnet::IpNet>,
    /// How long to wait for the Node's `spec.podCIDRs` to be allocated.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pod_cidrs_wait: Duration,
    /// ferry-cni's state directory (results and address reservations)
    /// [default: the plugin's, /var/lib/cni/ferry and /var/lib/cni/networks].
    #[arg(long)]
    cni_state_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Copy ferry-cni into the host's CNI bin directory and write Ferry's
    /// network config (05-ferry.conflist) into its config directory, each
    /// atomically; files already right are left alone.
    #[command(
        after_help = "Example (the DaemonSet's init container):\n  ferry-agent install-cni --cni-bin-dir /host/opt/cni/bin --cni-conf-dir /host/etc/cni/net.d"
    )]
    InstallCni(InstallCni),
    /// Check the kernel and the node: kernel BTF, the cgroup2 root, bpffs
    /// under --bpffs-root, and a kube-proxy still programming the node.
    /// One line a check; exits non-zero when one fails.
    Check {
        /// Where the kernel's BTF is read.
        #[arg(long, default_value = node_setup::KERNEL_BTF)]
        kernel_btf: PathBuf,
    },
    /// Mount bpffs at --bpffs-mount unless it is one already (needs
    /// CAP_SYS_ADMIN), then run the checks.
    Init {
        /// Where bpffs is mounted (--bpffs-root must be on it).
        #[arg(long, default_value = node_setup::BPFFS_MOUNT)]
        bpffs_mount: PathBuf,
        /// Where the kernel's BTF is read.
        #[arg(long, default_value = node_setup::KERNEL_BTF)]
        kernel_btf: PathBuf,
    },
    /// Remove every route, device, program and pin the agent installed, then
    /// exit.
    Uninstall,
    /// Print what the pinned maps hold.
    Inspect {
        #[arg(value_enum)]
        what: inspect::What,
        /// With `policy`: only this pod (`NAMESPACE/NAME` or an address).
        target: Option<String>,
    },
    /// Stream this node's flows as the programs judge and translate them
    /// (new flows, drops, Service translations), like `hubble observe`,
    /// until interrupted.
    #[command(
        after_help = "Examples:\n  ferry-agent observe --verdict dropped\n  ferry-agent observe --pod web/frontend- --count 10 -o json"
    )]
    Observe {
        /// `[NAMESPACE/]POD-NAME-PREFIX`: flows from or to such a pod
        /// (repeat for any of several).
        #[arg(long)]
        pod: Vec<String>,
        /// Flows from or to pods of this namespace (repeatable).
        #[arg(long)]
        namespace: Vec<String>,
        /// `forwarded`, `dropped` or `translated` (repeatable).
        #[arg(long)]
        verdict: Vec<String>,
        /// `text` (one line a flow) or `json` (one object a line).
        #[arg(long, short = 'o', default_value = "text")]
        output: ObserveOutput,
        /// Stop after this many flows.
        #[arg(long)]
        count: Option<usize>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ObserveOutput {
    Text,
    Json,
}

async fn client(kubeconfig: Option<&PathBuf>) -> anyhow::Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .context("loading kubeconfig")?
        }
        None => kube::Config::incluster()
            .context("in-cluster configuration (pass --kubeconfig outside a cluster)")?,
    };
    Client::try_from(config).context("building the API client")
}

// jemalloc, with settings that hand memory back (issue 13: RSS 94 MiB with
// glibc's malloc, under 64 MiB with jemalloc).
ferry_daemon::jemalloc!();

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let mode = match cli.routing {
        Routing::Vxlan => Some(Mode::Vxlan {
            vni: cli.vxlan_vni,
            port: cli.vxlan_port,
        }),
        Routing::Direct => Some(Mode::Direct),
        Routing::None => None,
    };
    match &cli.command {
        Some(Command::InstallCni(args)) => return install_cni(&cli, args).await,
        Some(Command::Check { kernel_btf }) => {
            return print_checks(&node_setup::run_checks(&cli.checks(kernel_btf)));
        }
        Some(Command::Init {
            bpffs_mount,
            kernel_btf,
        }) => {
            match node_setup::mount_bpffs(bpffs_mount)? {
                node_setup::Mounted::Already => {
                    println!("bpffs already mounted at {}", bpffs_mount.display())
                }
                node_setup::Mounted::Now => {
                    println!("bpffs mounted at {}", bpffs_mount.display())
                }
            }
            return print_checks(&node_setup::run_checks(&cli.checks(kernel_btf)));
        }
        Some(Command::Inspect {
            what: inspect::What::Policy,
            target,
        }) => {
            use ferry_dataplane::policy::programmer::PolicyTables as _;
            let layout = cli.layout()?;
            let maps = bpf::PolicyMaps::open(&layout).with_context(|| {
                format!(
                    "opening the policy maps under {} (is ferry-agent running with this --bpffs-root and --pod-devices?)",
                    cli.bpffs_root.display()
                )
            })?;
            let written = maps.read_all().context("reading the policy maps")?;
            let by_name = target.as_deref().filter(|t| t.parse::<IpAddr>().is_err());
            let query = inspect::policy_query(&written, by_name);
            let names = match client::names(&cli.observe_socket, &query).await {
                Ok(answer) => Names::from_answer(&answer),
                Err(e) => {
                    eprintln!("names unavailable, showing addresses and numbers: {e}");
                    Names::default()
                }
            };
            let only: Vec<IpAddr> = match (target, by_name) {
                (None, _) => Vec::new(),
                (Some(pod), Some(_)) => {
                    let (ns, name) = pod.split_once('/').with_context(|| {
                        format!("{pod:?}: give the pod as NAMESPACE/NAME or an address")
                    })?;
                    let ips = names.addresses_of(ns, name);
                    anyhow::ensure!(
                        !ips.is_empty(),
                        "the agent knows no pod {pod} (is it in the cluster, and is --observe-socket this agent's?)"
                    );
                    ips
                }
                (Some(ip), None) => vec![ip.parse().context("the pod's address")?],
            };
            let mut out = std::io::stdout().lock();
            return inspect::policy(&written, &names, &only, &mut out)
                .context("printing the policy maps");
        }
        Some(Command::Inspect { what, .. }) => {
            let layout = cli.layout()?;
            let maps = bpf::open_pinned(&layout).with_context(|| {
                format!(
                    "opening the pinned maps under {} (is ferry-agent running with this --bpffs-root?)",
                    cli.bpffs_root.display()
                )
            })?;
            let mut out = std::io::stdout().lock();
            return inspect::print(&maps, &layout.links_dir(), *what, &mut out)
                .context("printing the maps");
        }
        Some(Command::Observe {
            pod,
            namespace,
            verdict,
            output,
            count,
        }) => {
            let filter = Filter {
                pods: pod.clone(),
                namespaces: namespace.clone(),
                verdicts: verdict.clone(),
            };
            let output = match output {
                ObserveOutput::Text => client::Output::Text,
                ObserveOutput::Json => client::Output::Json,
            };
            let mut out = std::io::stdout();
            let mut notes = std::io::stderr();
            tokio::select! {
                r = client::observe(&cli.observe_socket, &filter, output, *count, &mut out, &mut notes) => r?,
                _ = tokio::signal::ctrl_c() => {}
            }
            return Ok(());
        }
        Some(Command::Uninstall) => {
            let router = router(mode)?;
            router.uninstall().await.context("removing routes")?;
            if !cli.no_service_proxy {
                bpf::uninstall(&cli.layout()?).context("removing programs and pins")?;
            }
            tracing::info!("uninstalled");
            return Ok(());
        }
        None => {}
    }
    anyhow::ensure!(
        !cli.node_name.is_empty(),
        "--node-name (or NODE_NAME) is required"
    );
    anyhow::ensure!(
        cli.metrics_header_timeout > 0 && cli.metrics_idle_timeout > 0,
        "--metrics-header-timeout and --metrics-idle-timeout must be at least 1 second"
    );
    startup_checks(&cli)?;
    match ferry_daemon::raise_nofile_limit() {
        Ok(limit) => tracing::debug!(open_files = ?limit, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "raising the open-file limit"),
    }
    let client = client(cli.kubeconfig.as_ref()).await?;
    let metrics = Arc::new(Metrics::new());
    let routes = routes(&cli, mode, client.clone(), metrics.decode_errors.clone());
    let announcer = announcer(&cli, client.clone(), metrics.clone())?;
    let services = async {
        if cli.no_service_proxy {
            return std::future::pending().await;
        }
        let layout = cli.layout()?;
        let sizes = cli.sizes();
        let lb = LbSettings {
            algorithm: cli.lb_algorithm,
            maglev_size: maglev::check_size(cli.maglev_table_size)
                .context("--maglev-table-size")?,
            seed: Seed::from_setting(&cli.maglev_seed),
            mode: cli.lb_mode,
            nat_ports: cli.nat_port_range,
        };
        match cli.nat_port_range.keep_from_local_sockets() {
            Ok(false) => {}
            Ok(true) => tracing::info!(
                range = %cli.nat_port_range,
                "--nat-port-range meets net.ipv4.ip_local_port_range: reserved it in net.ipv4.ip_local_reserved_ports"
            ),
            Err(e) => tracing::warn!(
                error = %e,
                "--nat-port-range may meet the node's ephemeral ports: the node's own connections can lose replies to NodePort flows"
            ),
        }
        let (connection, handle, _) = rtnetlink::new_connection().context("opening netlink")?;
        tokio::spawn(connection);
        let devices = devices::lookup(&handle, &cli.devices)
            .await
            .context("looking up --devices")?;
        let (maps, mut hooks) = bpf::install(
            &layout,
            &sizes,
            &devices,
            cli.pod_devices.as_deref(),
            cli.xdp,
        )
        .context("installing the eBPF programs")?;
        let mut node_port_addrs =
            bpf::NodePortAddrs::open(&layout).context("opening the NodePort address map")?;
        let (np_handle, only) = (handle.clone(), cli.nodeport_addresses.clone());
        tokio::spawn(async move {
            // Addresses come and go with the node's links: follow them.
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                tick.tick().await;
                let addrs = match devices::node_port_addresses(&np_handle, &only).await {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "listing the node's addresses for NodePorts");
                        continue;
                    }
                };
                match node_port_addrs.sync(&addrs) {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(changed = n, addresses = ?addrs, "NodePort addresses"),
                    Err(e) => tracing::warn!(error = %e, "writing the NodePort addresses"),
                }
            }
        });
        let names = Arc::new(Directory::default());
        if !cli.observe_socket.as_os_str().is_empty() {
            observe(&cli, &layout, names.clone(), metrics.clone()).await;
        }
        if cli.pod_devices.is_some() && !cli.no_network_policy {
            network_policy(
                &cli,
                &layout,
                client.clone(),
                handle.clone(),
                metrics.clone(),
                names,
            )?;
        }
        if let Some(prefix) = cli.pod_devices.clone() {
            tokio::spawn(async move {
                // Link notifications (what `ip monitor link` shows) wake the
                // sync as a pod's veth appears; the one-second tick retries
                // what failed (a veth still coming up) and repairs whatever a
                // lost notification missed.
                let mut links = match rtnetlink::new_multicast_connection(&[
                    rtnetlink::MulticastGroup::Link,
                ]) {
                    Ok((conn, _, rx)) => {
                        tokio::spawn(conn);
                        Some(rx)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "link notifications for --pod-devices; polling every second only");
                        None
                    }
                };
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    match links.as_mut() {
                        Some(rx) => {
                            tokio::select! {
                                msg = rx.next() => if msg.is_none() {
                                    tracing::warn!("link notifications ended; polling every second");
                                    links = None;
                                },
                                _ = tick.tick() => {}
                            }
                            // One sync for a burst of notifications.
                            if let Some(rx) = links.as_mut() {
                                while rx.try_recv().is_ok() {}
                            }
                        }
                        None => {
                            tick.tick().await;
                        }
                    }
                    let names = match devices::link_names(&handle).await {
                        Ok(n) => n,
                        Err(e) => {
                            tracing::warn!(error = %e, "listing links for --pod-devices");
                            continue;
                        }
                    };
                    match hooks.sync_prefixed(&prefix, &names) {
                        Ok(0) => {}
                        Ok(n) => {
                            tracing::debug!(devices = n, "packet programs attached to pod devices")
                        }
                        // A veth can vanish between the listing and the attach.
                        Err(e) => tracing::debug!(error = %e, "attaching to a pod device"),
                    }
                }
            });
        }
        tracing::info!(
            bpffs = %layout.bpffs_root.display(),
            cgroup = %layout.cgroup_root.display(),
            devices = ?cli.devices,
            "service load balancing attached"
        );
        let programmer =
            Programmer::new(maps, sizes.stats, lb).context("reading the pinned maps")?;
        if !cli.metrics_bind_address.is_empty() {
            let addr: SocketAddr = cli
                .metrics_bind_address
                .parse()
                .context("--metrics-bind-address must be ADDRESS:PORT")?;
            let m = metrics.clone();
            let limits = HttpLimits {
                header_timeout: Duration::from_secs(cli.metrics_header_timeout),
                idle_timeout: Duration::from_secs(cli.metrics_idle_timeout),
                max_connections: cli.metrics_max_connections,
                ..HttpLimits::default()
            };
            tokio::spawn(async move {
                if let Err(e) = metrics::serve(addr, m, limits).await {
                    tracing::error!(error = %e, "metrics server stopped");
                }
            });
        }
        if !cli.healthz_bind_address.is_empty() {
            let addr: SocketAddr = cli
                .healthz_bind_address
                .parse()
                .context("--healthz-bind-address must be ADDRESS:PORT")?;
            let m = metrics.clone();
            tokio::spawn(async move {
                if let Err(e) = metrics::serve_proxy_health(addr, m, HttpLimits::default()).await {
                    tracing::error!(error = %e, "proxy health server stopped");
                }
            });
        }
        let flows = bpf::open_conntrack(&layout).context("opening the conntrack map")?;
        let timeouts = Timeouts {
            tcp: Duration::from_secs(cli.conntrack_tcp_timeout),
            udp: Duration::from_secs(cli.conntrack_udp_timeout),
            ..Timeouts::default()
        };
        let interval = Duration::from_secs(cli.conntrack_gc_interval.max(1));
        let m = metrics.clone();
        std::thread::Builder::new()
            .name("conntrack-gc".into())
            .spawn(move || {
                ferry_dataplane::conntrack::collect_forever(
                    flows,
                    timeouts,
                    interval,
                    sizes.conntrack,
                    m,
                )
            })
            .context("starting the conntrack collector")?;
        let settings = proxy::Settings {
            events: ferry_dataplane::events::Recorder::start(client.clone(), &cli.node_name),
            node_name: cli.node_name.clone(),
            sizes,
            cgroup_root: layout.cgroup_root.clone(),
        };
        let firewall = ferry_dataplane::service::firewall::SourceRanges::open(&layout)
            .context("opening the source range map")?;
        proxy::run(
            client.clone(),
            settings,
            programmer,
            firewall,
            announcer.clone(),
            metrics.clone(),
        )
        .await
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = routes => r,
        r = services => r,
        r = tokio::signal::ctrl_c() => {
            r.context("waiting for a signal")?;
            stopping();
            announcer.release_all(cli.l2_lease_renew_deadline).await;
            Ok(())
        }
        _ = term.recv() => {
            stopping();
            announcer.release_all(cli.l2_lease_renew_deadline).await;
            Ok(())
        }
    }
}

/// Starts NetworkPolicy enforcement: the policy loop, and the reading of
/// the verdict counters into the metrics.
fn network_policy(
    cli: &Cli,
    layout: &Layout,
    client: Client,
    handle: rtnetlink::Handle,
    metrics: Arc<Metrics>,
    names: Arc<Directory>,
) -> anyhow::Result<()> {
    let maps = bpf::PolicyMaps::open(layout).context("opening the policy maps")?;
    let programmer =
        PolicyProgrammer::new(maps).context("reading the policy maps a previous agent left")?;
    let counters = bpf::PolicyMaps::open(layout).context("opening the policy maps")?;
    let settings = enforcer::Settings {
        node_name: cli.node_name.clone(),
        node_addrs: Box::new(move || {
            let h = handle.clone();
            Box::pin(async move {
                match devices::node_port_addresses(&h, &[]).await {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "listing the node's addresses for NetworkPolicy");
                        Vec::new()
                    }
                }
            })
        }),
        names: Some(names),
    };
    let m = metrics.clone();
    tokio::spawn(async move {
        if let Err(e) = enforcer::run(client, settings, programmer, m).await {
            tracing::error!(error = %e, "NetworkPolicy enforcement stopped");
        }
    });
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            match counters.stats.get(&0, 0) {
                Ok(per_cpu) => {
                    let mut sum = PolicyStats::default();
                    for s in per_cpu.iter() {
                        sum.add(s);
                    }
                    metrics.set_policy_flows(&sum);
                }
                Err(e) => tracing::debug!(error = %e, "reading the policy counters"),
            }
        }
    });
    Ok(())
}

/// Serves flow events on `--observe-socket`. Observation is not worth
/// stopping the dataplane for: a socket that cannot be served is logged and
/// the agent goes on without it.
async fn observe(cli: &Cli, layout: &Layout, names: Arc<Directory>, metrics: Arc<Metrics>) {
    let maps = match bpf::ObserveMaps::open(layout) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "opening the flow event maps; observe is off");
            return;
        }
    };
    let listener = match server::bind(&cli.observe_socket).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "observe is off");
            return;
        }
    };
    let settings = server::Settings {
        path: cli.observe_socket.clone(),
        node: cli.node_name.clone(),
        rate: cli.observe_rate.max(1),
        max_watchers: cli.observe_max_watchers,
        metrics,
    };
    tracing::info!(socket = %cli.observe_socket.display(), "serving flow events");
    tokio::spawn(server::serve(listener, settings, maps, names));
}

fn stopping() {
    // Routes, programs and maps stay: pods keep talking while the agent
    // restarts or upgrades.
    tracing::info!("stopping; routes, programs and maps stay in place");
}

fn router(mode: Option<Mode>) -> anyhow::Result<Router> {
    let (connection, handle, _) = rtnetlink::new_connection().context("opening netlink")?;
    tokio::spawn(connection);
    Ok(Router::new(handle, mode.unwrap_or(Mode::Direct)))
}

/// Keeps the routes to the other nodes' pod CIDRs; never returns unless the
/// Node watch ends. A Node that does not decode is logged, counted, and
/// treated as absent (its routes go), never a reason to stop syncing.
async fn routes(
    cli: &Cli,
    mode: Option<Mode>,
    client: Client,
    decode_errors: DecodeErrors,
) -> anyhow::Result<()> {
    let Some(mode) = mode else {
        return std::future::pending().await;
    };
    let router = router(Some(mode))?;
    let nodes: Api<Decoded<Node>> = Api::all(client);
    let (reader, writer) = reflector::store();
    let mut events = reflector(writer, watcher(nodes, watcher::Config::default()))
        .default_backoff()
        .touched_objects()
        .boxed();
    // The stream is driven on its own task; the loop below only needs to
    // know that something changed.
    let (changed_tx, mut changed) = tokio::sync::mpsc::channel::<()>(1);
    tokio::spawn(async move {
        while let Some(ev) = events.next().await {
            match ev {
                Err(e) => {
                    tracing::warn!(error = %e, "node watch error");
                    continue;
                }
                Ok(node) => {
                    decode_errors.observe("Node", &node);
                }
            }
            let _ = changed_tx.try_send(());
        }
    });
    reader
        .wait_until_ready()
        .await
        .context("waiting for the initial list of Nodes")?;
    let mut resync = tokio::time::interval(Duration::from_secs(cli.resync_seconds.max(1)));
    loop {
        let infos: Vec<NodeInfo> = reader
            .state()
            .iter()
            .filter_map(|n| match n.as_ref() {
                Decoded::Ok(node) => Some(NodeInfo::from_node(node)),
                Decoded::Bad { .. } => None,
            })
            .collect();
        match infos.iter().find(|n| n.name == cli.node_name) {
            None => tracing::warn!(node = %cli.node_name, "this node has no Node object yet"),
            Some(local) => match router.sync(local, &infos).await {
                Ok(stats) => tracing::debug!(
                    routes = stats.routes,
                    removed = stats.removed,
                    "routes synced"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "route sync failed; retrying on the next event")
                }
            },
        }
        tokio::select! {
            c = changed.recv() => {
                if c.is_none() {
                    anyhow::bail!("node watch ended");
                }
                // Coalesce a burst of node events into one sync.
                tokio::time::sleep(Duration::from_millis(50)).await;
                while changed.try_recv().is_ok() {}
            }
            _ = resync.tick() => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    /// jemalloc found the settings under the name it reads them from (a
    /// misspelt symbol is silently ignored, and the agent grows again).
    #[test]
    fn jemalloc_runs_with_the_agents_settings() {
        assert_eq!(tikv_jemalloc_ctl::opt::narenas::read().unwrap(), 1);
        assert!(tikv_jemalloc_ctl::opt::background_thread::read().unwrap());
    }
}
