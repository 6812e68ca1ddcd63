//! Building a cluster, watching over its processes, and taking it down.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_dataplane::bpf::XdpPass;
use ferry_testbed::{AgentHooks, BPFFS, Netns, Process, UNDERLAY_BRIDGE, World};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::ListParams;
use kube::{Api, Client};
use serde::{Deserialize, Serialize};

use crate::components::{self, Binaries, NodeRuntime, Spec};
use crate::forward::{Forwarder, Published};
use crate::host_route::{HostRoute, HostRouteInfo};
use crate::underlay::PodRoutes;
use crate::{Error, Result, addons, image};

/// Address families of the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum IpFamily {
    Ipv4,
    Ipv6,
    Dual,
}

impl IpFamily {
    fn has_v4(self) -> bool {
        self != IpFamily::Ipv6
    }

    fn has_v6(self) -> bool {
        self != IpFamily::Ipv4
    }

    /// `[v4, v6]` filtered to the cluster's families, the primary first
    /// (IPv4 for dual stack, as kind does).
    fn pick<T>(self, v4: T, v6: T) -> Vec<T> {
        let mut out = Vec::new();
        if self.has_v4() {
            out.push(v4);
        }
        if self.has_v6() {
            out.push(v6);
        }
        out
    }

    /// ferry-apiserver's range flags for the families.
    fn apiserver_args(self) -> Vec<String> {
        let [s4, s6] = components::SERVICE_CIDRS;
        let [c4, c6] = components::CLUSTER_CIDRS;
        vec![
            "--service-cluster-ip-range".into(),
            self.pick(s4, s6).join(","),
            "--cluster-cidr".into(),
            self.pick(c4, c6).join(","),
        ]
    }
}

/// Most nodes of a cluster: the underlay's /24 also holds the
/// LoadBalancer pool ([`LB_POOL_FIRST`]) and the apiserver (`.250`).
pub const MAX_NODES: usize = 200;
/// The LoadBalancer IP pool: 16 addresses of the underlay's subnets from
/// this host part on (`.224/28`, `::e0/124`), on-link for every node, so
/// the agents announce them (L2) and the forwarder and a `--host-access
/// route` host reach them.
const LB_POOL_FIRST: u8 = 224;

/// What [`Cluster::up`] builds.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The cluster's name: a DNS label of at most 20 characters; node names
    /// are `<name>-node<i>`.
    pub name: String,
    pub nodes: usize,
    /// Where the apiserver's store and the kubeconfig live; kept across
    /// `ferry down` and `ferry up`.
    pub data_dir: PathBuf,
    pub ip_family: IpFamily,
    pub binaries: Binaries,
    /// The host loopback port of the apiserver; `None`: 6443 when free,
    /// else any.
    pub api_port: Option<u16>,
    /// How the host reaches NodePorts.
    pub host_access: HostAccess,
    /// How long to wait for the cluster to become usable.
    pub ready_timeout: Duration,
    /// More ferry-apiserver flags (`--node-monitor-grace-period 5s`, say).
    pub apiserver_args: Vec<String>,
}

impl Settings {
    /// Defaults for cluster `name` with `nodes` nodes, data under
    /// `data_dir`.
    pub fn new(name: &str, nodes: usize, data_dir: PathBuf, binaries: Binaries) -> Self {
        Self {
            name: name.to_owned(),
            nodes,
            data_dir,
            ip_family: IpFamily::Ipv4,
            binaries,
            api_port: None,
            host_access: HostAccess::Loopback,
            ready_timeout: Duration::from_secs(60),
            apiserver_args: Vec::new(),
        }
    }

    fn check(&self) -> Result<()> {
        let valid = !self.name.is_empty()
            && self.name.len() <= 20
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !self.name.starts_with('-')
            && !self.name.ends_with('-');
        if !valid {
            return Err(Error::Config(format!(
                "--name {:?}: a cluster name is 1-20 lowercase letters, digits or '-', starting and ending with a letter or digit",
                self.name
            )));
        }
        if self.nodes == 0 || self.nodes > MAX_NODES {
            return Err(Error::Config(format!(
                "--nodes {}: a cluster has 1 to {} nodes",
                self.nodes, MAX_NODES
            )));
        }
        Ok(())
    }
}

/// One node of a running cluster, as `ferry status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The Kubernetes node name.
    pub name: String,
    /// Its network namespace (`ip netns exec <netns> ...`).
    pub netns: String,
    pub ip: IpAddr,
    /// Where its agent serves flow events (`ferry-agent observe
    /// --observe-socket <this>`).
    #[serde(default)]
    pub observe_socket: PathBuf,
    /// Its agent's pins (`ferry-agent inspect --bpffs-root <this>`).
    #[serde(default)]
    pub bpffs_root: PathBuf,
    /// Its cgroup: the node's pods' (each under `pod<uid>/<container>`),
    /// where its agent hooks sockets.
    #[serde(default)]
    pub cgroup: PathBuf,
}

/// One process of a running cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComponentInfo {
    pub name: String,
    pub node: Option<String>,
    pub pid: Option<u32>,
    pub restarts: u32,
    pub log: PathBuf,
}

/// How the host reaches the cluster's NodePorts (`ferry up --host-access`).
/// The apiserver is published on the host's loopback in every mode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum HostAccess {
    /// Published on the host's loopback by the cluster's own forwarder: the
    /// host's network is left untouched.
    #[default]
    Loopback,
    /// A link from `host` (`None`: the namespace `ferry up` runs in, the
    /// real host) onto the underlay, with routes to the pod CIDRs
    /// ([`crate::host_route`]): NodePorts answer at the nodes' addresses.
    Route { host: Option<Netns> },
    /// Neither: only the apiserver is reachable.
    None,
}

/// A running cluster, as `ferry status` and `ferry down` find it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub name: String,
    /// The world's prefix: every namespace, cgroup and pin of the cluster
    /// is named `<prefix>-...`.
    pub prefix: String,
    pub data_dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub api_port: u16,
    pub nodes: Vec<NodeInfo>,
    pub components: Vec<ComponentInfo>,
    #[serde(default)]
    pub published: Vec<PublishedInfo>,
    /// What `--host-access route` added to the host.
    #[serde(default)]
    pub host_route: Option<HostRouteInfo>,
}

/// A published port, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublishedInfo {
    pub port: u16,
    pub proto: String,
    pub what: String,
    pub error: Option<String>,
}

impl From<Published> for PublishedInfo {
    fn from(p: Published) -> Self {
        Self {
            port: p.port,
            proto: p.proto.to_string(),
            what: p.what,
            error: p.error,
        }
    }
}

/// A process the cluster keeps running: restarted with back-off (1 s
/// doubling to 30 s) when it exits.
struct Supervised {
    spec: Spec,
    process: Option<Process>,
    /// Stopped on purpose ([`Cluster::stop`]): not restarted.
    held: bool,
    restarts: u32,
    backoff: Duration,
    next_start: Option<Instant>,
    started: Instant,
}

impl Supervised {
    fn start(spec: Spec) -> Result<Self> {
        let process = spec.start()?;
        Ok(Self {
            spec,
            process: Some(process),
            held: false,
            restarts: 0,
            backoff: Duration::from_secs(1),
            next_start: None,
            started: Instant::now(),
        })
    }

    fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Process::pid)
    }

    /// Notices an exit and restarts when the back-off has passed.
    fn tend(&mut self) {
        if let Some(p) = &mut self.process
            && let Ok(Some(status)) = p.try_wait()
        {
            tracing::warn!(component = %self.spec.label(), %status, log = %self.spec.log.display(),
                "component exited; restarting in {:?}", self.backoff);
            self.process = None;
            // A process that ran for a while starts over with a short wait.
            if self.started.elapsed() > Duration::from_secs(60) {
                self.backoff = Duration::from_secs(1);
            }
            self.next_start = Some(Instant::now() + self.backoff);
            self.backoff = (self.backoff * 2).min(Duration::from_secs(30));
        }
        if self.process.is_none()
            && !self.held
            && self.next_start.is_some_and(|t| Instant::now() >= t)
        {
            match self.spec.start() {
                Ok(p) => {
                    self.process = Some(p);
                    self.restarts += 1;
                    self.next_start = None;
                    self.started = Instant::now();
                }
                Err(e) => {
                    tracing::warn!(component = %self.spec.label(), error = %e, "restart failed");
                    self.next_start = Some(Instant::now() + self.backoff);
                }
            }
        }
    }

    fn info(&self) -> ComponentInfo {
        ComponentInfo {
            name: self.spec.name.to_owned(),
            node: self.spec.node.clone(),
            pid: self.pid(),
            restarts: self.restarts,
            log: self.spec.log.clone(),
        }
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.spec.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

/// A running cluster. Dropping it stops every process and removes every
/// namespace, cgroup and pin it made; the data directory stays.
pub struct Cluster {
    // Fields drop in this order: the listeners first, the world last.
    /// Before the world in drop order: its link lives in the underlay.
    host_route: Option<HostRoute>,
    forwarder: Forwarder,
    pod_routes: PodRoutes,
    /// The node runtimes and the apiserver, stopped in that order.
    processes: Vec<Supervised>,
    runtime: tokio::runtime::Runtime,
    _xdp: Vec<XdpPass>,
    _hooks: Vec<AgentHooks>,
    world: World,
    name: String,
    data_dir: PathBuf,
    kubeconfig: PathBuf,
    api_port: u16,
    nodes: Vec<NodeInfo>,
    client: Client,
    plan: NodePlan,
    ready_timeout: Duration,
}

/// What starting a node's components takes: the same for the first nodes
/// and for nodes added later.
#[derive(Debug, Clone)]
struct NodePlan {
    cluster: String,
    prefix: String,
    family: IpFamily,
    bins: Binaries,
    kubeconfig: PathBuf,
    kubelet_token: PathBuf,
    cluster_dns: Vec<IpAddr>,
    logs: PathBuf,
    /// The image catalogues: the local Ferry image's, then the user's
    /// (`<data-dir>/images.yaml`).
    images: Vec<PathBuf>,
    /// The nodes' resolv.conf for `dnsPolicy: Default` pods, ferry-dns's
    /// among them (`<data-dir>/dns-upstreams.conf`).
    resolv_conf: PathBuf,
}

/// One node's share of the cluster.
struct StartedNode {
    xdp: XdpPass,
    hooks: AgentHooks,
    processes: Vec<Supervised>,
    info: NodeInfo,
}

impl NodePlan {
    /// Starts node `node`'s runtime, with its cgroup, pins directory and
    /// host root; the DaemonSet of `deploy/` puts the agent and ferry-cni
    /// on it.
    fn start(
        &self,
        underlay: &ferry_testbed::Netns,
        world: &World,
        node: &ferry_testbed::Node,
    ) -> Result<StartedNode> {
        // A veth hands frames sent back out by XDP (`XDP_TX`) only to a
        // peer with an XDP program: one that passes everything, on the
        // underlay's end of the node's link.
        let port = world.underlay_port(node.index);
        let xdp = underlay
            .in_netns(|| XdpPass::attach(&port))?
            .map_err(|e| Error::Config(format!("XDP on the underlay's {port}: {e}")))?;
        let node_ips = self
            .family
            .pick(IpAddr::V4(node.ipv4), IpAddr::V6(node.ipv6));
        let name = node_name(&self.cluster, node.index);
        // The node's cgroup root (the hostPath `/sys/fs/cgroup` of its
        // pods, the agent's among them) and its bpffs directory, where the
        // agent pins under `ferry/` (`addons::Render::bpffs_prefix`).
        let hooks = AgentHooks::create(&format!("{}-{name}", self.prefix))?;
        // Every other hostPath of the node's pods (the CNI directories
        // install-cni fills, the agent's `/run/ferry`) lands here.
        let host_root = node.state_dir.join("host");
        let (cni_bin, cni_conf) = components::cni_dirs(&host_root);
        let mut host_path_map = vec![
            ("/sys/fs/bpf".to_owned(), PathBuf::from("/sys/fs/bpf")),
            ("/sys/fs/cgroup".to_owned(), hooks.cgroup.clone()),
        ];
        // The agent reads the kernel's modules where the machine has them;
        // a machine without (a container, a kernel with everything built
        // in) gets an empty directory, as a runtime makes a missing one.
        let mut made = vec![cni_bin, cni_conf];
        let modules = Path::new("/lib/modules");
        if modules.is_dir() {
            host_path_map.push(("/lib/modules".to_owned(), modules.to_path_buf()));
        } else {
            made.push(host_root.join("lib/modules"));
        }
        for dir in &made {
            fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        let runtime = Supervised::start(components::node_runtime(
            &node.netns,
            &self.bins,
            &NodeRuntime {
                kubeconfig: &self.kubeconfig,
                node_name: &name,
                node_ips: &node_ips,
                cluster_dns: &self.cluster_dns,
                cgroup_root: &hooks.cgroup,
                kubelet_token: &self.kubelet_token,
                state_dir: &node.state_dir.join("runtime"),
                host_root: &host_root,
                host_path_map: &host_path_map,
                images: &self.images,
                resolv_conf: &self.resolv_conf,
            },
            &self.logs.join(format!("{name}-node.log")),
        ))?;
        let bpffs_root = hooks.bpffs.join("ferry");
        let cgroup = hooks.cgroup.clone();
        Ok(StartedNode {
            xdp,
            hooks,
            processes: vec![runtime],
            info: NodeInfo {
                name,
                netns: node.netns.name().to_owned(),
                ip: node_ips[0],
                observe_socket: host_root.join(components::OBSERVE_SOCKET),
                bpffs_root,
                cgroup,
            },
        })
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("name", &self.name)
            .field("prefix", &self.world.prefix())
            .field("api_port", &self.api_port)
            .finish_non_exhaustive()
    }
}

/// Creates `dir` (and parents) readable by root alone.
fn private_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io(format!("restricting {}", dir.display()), e))
}

fn node_name(cluster: &str, i: usize) -> String {
    format!("{cluster}-node{}", i + 1)
}

/// `<data-dir>/images.yaml`: the user's additions to ferry-node's image
/// catalogue, written with its explanation the first time and checked here,
/// so a broken file stops `ferry up` with its reason instead of leaving
/// every node runtime failing to start.
fn images_file(data_dir: &Path) -> Result<PathBuf> {
    let path = data_dir.join("images.yaml");
    if !path.exists() {
        fs::write(
            &path,
            "# Images that ferry-node runs, beyond its built-in catalogue (see\n\
             # node/README.md): a map of image to command line, used for containers\n\
             # with no `command` (their `args` are appended). Nodes read it when they\n\
             # start: `ferry down` and `ferry up` apply a change. For example:\n\
             #   registry.example/hello:1: [\"sh\", \"-c\", \"echo hello; sleep infinity\"]\n\
             {}\n",
        )
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    }
    ferry_node::images::Catalogue::load_extra(&path)
        .map_err(|e| Error::Config(format!("{e:#}; fix or remove the file")))?;
    Ok(path)
}

fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> std::result::Result<T, String>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match probe() {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(Error::NotReady {
                what: what.to_owned(),
                secs: timeout.as_secs(),
                detail: if last.is_empty() {
                    String::new()
                } else {
                    format!(": {last}")
                },
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Cluster {
    /// Builds the cluster and returns once it is usable: the apiserver
    /// answers, every node is Ready, every agent healthy, and the cluster
    /// DNS answers for `kubernetes.default`.
    pub fn up(settings: Settings) -> Result<Self> {
        settings.check()?;
        let started = Instant::now();
        let logs = settings.data_dir.join("logs");
        private_dir(&settings.data_dir)?;
        private_dir(&logs)?;
        let images = images_file(&settings.data_dir)?;
        let world = World::builder().nodes(settings.nodes).build()?;
        let underlay = world.underlay().clone();
        let first = world.node(0);
        let family = settings.ip_family;
        // The apiserver's own addresses on the underlay bridge; it serves
        // on the primary family's.
        let api_v4 = Ipv4Addr::from(u32::from(first.underlay_v4.network()) + 250);
        let api_v6 = Ipv6Addr::from(u128::from(first.underlay_v6.network()) + 250);
        underlay.exec([
            "ip",
            "addr",
            "add",
            &format!("{api_v4}/{}", first.underlay_v4.prefix_len()),
            "dev",
            UNDERLAY_BRIDGE,
        ])?;
        underlay.exec([
            "ip",
            "addr",
            "add",
            &format!("{api_v6}/{}", first.underlay_v6.prefix_len()),
            "dev",
            UNDERLAY_BRIDGE,
            "nodad",
        ])?;
        let api_ip = family.pick(IpAddr::V4(api_v4), IpAddr::V6(api_v6))[0];
        let bins = &settings.binaries;
        let api_dir = settings.data_dir.join("apiserver");
        let internal_kubeconfig = api_dir.join("admin.kubeconfig");
        let api_addr = SocketAddr::from((api_ip, components::API_PORT));
        let mut api_spec = components::apiserver(
            &underlay,
            bins,
            &api_dir,
            api_addr,
            &internal_kubeconfig,
            &logs.join("apiserver.log"),
        );
        api_spec.argv.extend(family.apiserver_args());
        let lb_v4 =
            Ipv4Addr::from(u32::from(first.underlay_v4.network()) + u32::from(LB_POOL_FIRST));
        let lb_v6 =
            Ipv6Addr::from(u128::from(first.underlay_v6.network()) + u128::from(LB_POOL_FIRST));
        api_spec.argv.extend([
            "--loadbalancer-ip-pool".to_owned(),
            family
                .pick(format!("{lb_v4}/28"), format!("{lb_v6}/124"))
                .join(","),
        ]);
        api_spec
            .argv
            .extend(settings.apiserver_args.iter().cloned());
        let mut apiserver = Supervised::start(api_spec)?;

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the async runtime", e))?;
        let forwarder = {
            let _guard = runtime.enter();
            Forwarder::new(&underlay, Ipv4Addr::LOCALHOST)?
        };
        let api_port = runtime.block_on(async {
            match settings.api_port {
                Some(port) => forwarder.publish_fixed(port, "apiserver", api_addr).await,
                None => match forwarder
                    .publish_fixed(components::API_PORT, "apiserver", api_addr)
                    .await
                {
                    Ok(port) => Ok(port),
                    Err(_) => forwarder.publish_fixed(0, "apiserver", api_addr).await,
                },
            }
        });
        let api_port = api_port.map_err(|e| {
            Error::io(
                format!(
                    "publishing the apiserver on 127.0.0.1:{} (another cluster or program holds it; choose --api-port)",
                    settings.api_port.unwrap_or(components::API_PORT)
                ),
                e,
            )
        })?;
        let kubeconfig = settings.data_dir.join("kubeconfig");
        wait_for("the apiserver's kubeconfig", settings.ready_timeout, || {
            apiserver.tend();
            if internal_kubeconfig.exists() {
                Ok(())
            } else {
                Err(apiserver.log_tail())
            }
        })?;
        components::rewrite_kubeconfig(
            &internal_kubeconfig,
            &kubeconfig,
            &format!("https://127.0.0.1:{api_port}"),
        )?;
        let client = runtime.block_on(client_for(&kubeconfig))?;
        wait_for("the apiserver", settings.ready_timeout, || {
            runtime
                .block_on(client.apiserver_version())
                .map(drop)
                .map_err(|e| format!("{e}; {}", apiserver.log_tail()))
        })?;

        let mut processes = Vec::new();
        let mut hooks = Vec::new();
        let mut nodes = Vec::new();
        let cluster_dns = family.pick(
            IpAddr::V4(components::CLUSTER_DNS),
            IpAddr::V6(components::CLUSTER_DNS_V6),
        );
        let upstreams = settings.data_dir.join("dns-upstreams.conf");
        if !upstreams.exists() {
            fs::write(
                &upstreams,
                "# The nodes' resolv.conf for `dnsPolicy: Default` pods: ferry-dns's\n\
             # upstream resolvers. None: the cluster is cut off from the outside\n\
             # and names outside its zone are refused at once. Add\n\
             # `nameserver ADDR` lines that the nodes can reach to forward them.\n",
            )
            .map_err(|e| Error::io(format!("writing {}", upstreams.display()), e))?;
        }
        let image = image::prepare(&settings.data_dir, bins)?;
        // Ferry's own components, from `deploy/`: created before the nodes
        // register, so each node's agent starts as soon as it can.
        let objects = addons::render(&addons::Render {
            apiserver: (api_ip, components::API_PORT),
            uplink: &first.underlay_if,
            bpffs_prefix: &format!("{BPFFS}/{}-", world.prefix()),
            cni_state_prefix: &format!("{}/cni-", world.state_dir().display()),
            cluster_dns: &cluster_dns,
        })?;
        runtime.block_on(addons::apply(&client, &objects))?;
        let plan = NodePlan {
            cluster: settings.name.clone(),
            prefix: world.prefix().to_owned(),
            family,
            bins: bins.clone(),
            kubeconfig: internal_kubeconfig.clone(),
            kubelet_token: api_dir.join(components::KUBELET_TOKEN_FILE),
            cluster_dns: cluster_dns.clone(),
            logs: logs.clone(),
            images: vec![image.catalogue, images],
            resolv_conf: upstreams,
        };
        let mut xdp = Vec::new();
        for node in world.nodes() {
            let started = plan.start(&underlay, &world, node)?;
            xdp.push(started.xdp);
            hooks.push(started.hooks);
            processes.extend(started.processes);
            nodes.push(started.info);
        }
        processes.push(apiserver);

        let pod_routes = {
            let _guard = runtime.enter();
            PodRoutes::start(client.clone(), underlay.name().to_owned())
        };
        let mut cluster = Cluster {
            host_route: None,
            forwarder,
            pod_routes,
            processes,
            runtime,
            _xdp: xdp,
            _hooks: hooks,
            world,
            name: settings.name.clone(),
            data_dir: settings.data_dir.clone(),
            kubeconfig,
            api_port,
            nodes,
            client,
            plan,
            ready_timeout: settings.ready_timeout,
        };
        match &settings.host_access {
            HostAccess::Loopback => {
                let ips = cluster.nodes.iter().map(|n| n.ip).collect::<Vec<_>>();
                let _guard = cluster.runtime.enter();
                cluster
                    .forwarder
                    .follow_services(cluster.client.clone(), ips);
            }
            HostAccess::Route { host } => {
                let via = family.pick(IpAddr::V4(api_v4), IpAddr::V6(api_v6));
                cluster.host_route = Some(HostRoute::add(&cluster.world, host.clone(), &via)?);
            }
            HostAccess::None => {}
        }
        cluster.wait_usable(settings.ready_timeout)?;
        tracing::info!(name = %cluster.name, nodes = cluster.nodes.len(), elapsed = ?started.elapsed(), "cluster up");
        Ok(cluster)
    }

    fn wait_usable(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let left = || deadline.saturating_duration_since(Instant::now());
        let want = self.nodes.len();
        let nodes_api: Api<Node> = Api::all(self.client.clone());
        wait_for("every node Ready", left(), || {
            self.tend();
            let list = self
                .runtime
                .block_on(nodes_api.list(&Default::default()))
                .map_err(|e| e.to_string())?;
            let ready = list.items.iter().filter(|n| node_ready(n)).count();
            if ready >= want {
                Ok(())
            } else {
                Err(format!(
                    "{ready} of {want} Ready; node runtime log: {}",
                    self.tail_of("node")
                ))
            }
        })?;
        wait_for(
            "the nodes' pod CIDRs routed in the underlay",
            left(),
            || {
                let routed = self.pod_routes.routed_nodes();
                if routed >= want {
                    Ok(())
                } else {
                    Err(format!("{routed} of {want} nodes routed"))
                }
            },
        )?;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), "kube-system");
        let agents: Vec<(Netns, Ipv4Addr, String)> = self
            .world
            .nodes()
            .iter()
            .zip(&self.nodes)
            .map(|(n, info)| (n.netns.clone(), n.ipv4, info.name.clone()))
            .collect();
        for (netns, ipv4, name) in agents {
            let addr = SocketAddr::from((ipv4, components::AGENT_HEALTHZ_PORT));
            wait_for(&format!("ferry-agent on {name}"), left(), || {
                self.tend();
                let got = netns
                    .in_netns(|| {
                        ferry_testbed::http_get_full(addr, "/healthz", Duration::from_secs(1))
                    })
                    .map_err(|e| e.to_string())?;
                match got {
                    Ok((200, _)) => Ok(()),
                    Ok((code, body)) => Err(format!("/healthz {code}: {body}")),
                    Err(e) => Err(format!(
                        "{e}; {}",
                        self.runtime
                            .block_on(pods_state(&pods, AGENT_PODS, Some(&name)))
                    )),
                }
            })?;
        }
        // The cluster DNS: a ready ferry-dns endpoint of the kube-dns
        // Service answers for `kubernetes.default` (asked from the first
        // node, which routes every pod CIDR).
        let first = self.world.node(0).netns.clone();
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), "kube-system");
        let v6 = self.nodes[0].ip.is_ipv6();
        let mut id = 0u16;
        wait_for("the cluster DNS", left(), || {
            self.tend();
            let listed = self
                .runtime
                .block_on(
                    slices
                        .list(&ListParams::default().labels("kubernetes.io/service-name=kube-dns")),
                )
                .map_err(|e| e.to_string())?;
            let ready: Vec<IpAddr> = listed
                .items
                .iter()
                .flat_map(|s| &s.endpoints)
                .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                .flat_map(|e| &e.addresses)
                .filter_map(|a| a.parse::<IpAddr>().ok())
                .filter(|ip| ip.is_ipv6() == v6)
                .collect();
            let Some(ip) = ready.first() else {
                return Err(format!(
                    "no ready kube-dns endpoint; {}",
                    self.runtime.block_on(pods_state(&pods, DNS_PODS, None))
                ));
            };
            id = id.wrapping_add(1);
            let dns = SocketAddr::new(*ip, 53);
            let query = components::dns_query(id, "kubernetes.default.svc.cluster.local", v6);
            let answer = first
                .in_netns(|| udp_exchange(dns, &query))
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("asking {dns}: {e}"))?;
            if components::dns_answered(id, &answer) {
                Ok(())
            } else {
                Err(format!("{dns} does not answer for kubernetes.default yet"))
            }
        })?;
        Ok(())
    }

    /// Adds a node (the next index) and returns once it is Ready and the
    /// DaemonSet's agent on it healthy: a cluster growing.
    pub fn add_node(&mut self) -> Result<NodeInfo> {
        let underlay = self.world.underlay().clone();
        let node = self.world.add_node()?.clone();
        let started = self.plan.start(&underlay, &self.world, &node)?;
        self._xdp.push(started.xdp);
        self._hooks.push(started.hooks);
        // Before DNS and the apiserver, which stop last.
        for (k, p) in started.processes.into_iter().enumerate() {
            self.processes.insert(k, p);
        }
        self.nodes.push(started.info.clone());
        self.wait_usable(self.ready_timeout)?;
        Ok(started.info)
    }

    fn tail_of(&self, component: &str) -> String {
        self.processes
            .iter()
            .find(|p| p.spec.name == component)
            .map(Supervised::log_tail)
            .unwrap_or_default()
    }

    /// Restarts what exited (with back-off); call periodically.
    pub fn tend(&mut self) {
        for p in &mut self.processes {
            p.tend();
        }
    }

    fn component(&mut self, name: &str, node: Option<&str>) -> Result<&mut Supervised> {
        self.processes
            .iter_mut()
            .find(|p| p.spec.name == name && p.spec.node.as_deref() == node)
            .ok_or_else(|| Error::Config(format!("no component {name} on {node:?}")))
    }

    /// Stops a component (`node` for the runtime of a node, `apiserver`
    /// with no node) until [`start`](Self::start): what a node failure or
    /// an operator looks like to the rest of the cluster. Ferry's own
    /// agent and DNS are pods: delete them, or roll their DaemonSet and
    /// Deployment, as on any cluster.
    pub fn stop(&mut self, name: &str, node: Option<&str>) -> Result<()> {
        let c = self.component(name, node)?;
        c.held = true;
        if let Some(mut p) = c.process.take() {
            p.kill()?;
        }
        Ok(())
    }

    /// Starts again a component [`stop`](Self::stop) stopped.
    pub fn start(&mut self, name: &str, node: Option<&str>) -> Result<()> {
        let c = self.component(name, node)?;
        c.held = false;
        if c.process.is_none() {
            c.process = Some(c.spec.start()?);
            c.restarts += 1;
        }
        Ok(())
    }

    /// What `ferry status` shows.
    pub fn info(&self) -> ClusterInfo {
        ClusterInfo {
            name: self.name.clone(),
            prefix: self.world.prefix().to_owned(),
            data_dir: self.data_dir.clone(),
            kubeconfig: self.kubeconfig.clone(),
            api_port: self.api_port,
            nodes: self.nodes.clone(),
            components: self.processes.iter().map(Supervised::info).collect(),
            published: self
                .forwarder
                .published()
                .into_iter()
                .map(PublishedInfo::from)
                .collect(),
            host_route: self.host_route.as_ref().map(|r| r.info().clone()),
        }
    }

    /// The kubeconfig for the host (the apiserver through the loopback).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The world the cluster lives in.
    pub fn world(&self) -> &World {
        &self.world
    }

    /// The nodes, in order.
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    /// A client for the cluster's apiserver.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Runs `f` on the cluster's async runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    /// What is published on the host's loopback.
    pub fn published(&self) -> Vec<Published> {
        self.forwarder.published()
    }
}

/// `deploy/`'s agent and DNS pods, by label.
const AGENT_PODS: &str = "k8s-app=ferry-agent";
const DNS_PODS: &str = "k8s-app=kube-dns";

/// What the pods of `selector` (on `node`) are doing, for a wait's error:
/// `ferry-agent-x7k2p Pending (ferry-agent: waiting, ContainerCreating: …)`.
async fn pods_state(pods: &Api<Pod>, selector: &str, node: Option<&str>) -> String {
    let mut params = ListParams::default().labels(selector);
    let field;
    if let Some(node) = node {
        field = format!("spec.nodeName={node}");
        params = params.fields(&field);
    }
    let list = match pods.list(&params).await {
        Ok(l) => l,
        Err(e) => return format!("listing pods {selector}: {e}"),
    };
    if list.items.is_empty() {
        return format!("no pod {selector} yet");
    }
    let mut out = Vec::new();
    for pod in &list.items {
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let status = pod.status.as_ref();
        let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
        let mut detail = Vec::new();
        let init = status.and_then(|s| s.init_container_statuses.as_ref());
        let main = status.and_then(|s| s.container_statuses.as_ref());
        for c in init.into_iter().chain(main).flatten() {
            let state = c.state.as_ref();
            if let Some(w) = state.and_then(|s| s.waiting.as_ref()) {
                detail.push(format!(
                    "{}: waiting, {}: {}",
                    c.name,
                    w.reason.as_deref().unwrap_or_default(),
                    w.message.as_deref().unwrap_or_default()
                ));
            } else if let Some(t) = state.and_then(|s| s.terminated.as_ref())
                && t.exit_code != 0
            {
                detail.push(format!(
                    "{}: exited {} {}",
                    c.name,
                    t.exit_code,
                    t.message.as_deref().unwrap_or_default()
                ));
            }
        }
        out.push(format!("{name} {phase} ({})", detail.join("; ")));
    }
    out.join(", ")
}

fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn client_for(kubeconfig: &Path) -> Result<Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .map_err(|e| Error::Config(format!("reading {}: {e}", kubeconfig.display())))?;
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .map_err(|e| Error::Config(format!("loading {}: {e}", kubeconfig.display())))?;
    Ok(Client::try_from(config)?)
}

/// Sends `query` to `to` over UDP and returns the answer (1 s timeout).
fn udp_exchange(to: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let any: IpAddr = if to.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let socket = std::net::UdpSocket::bind((any, 0))?;
    socket.set_read_timeout(Some(Duration::from_secs(1)))?;
    socket.send_to(query, to)?;
    let mut buf = vec![0u8; 1500];
    let n = socket.recv(&mut buf)?;
    buf.truncate(n);
    Ok(buf)
}
