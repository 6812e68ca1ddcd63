//! The topology every dataplane is measured in: a testbed [`World`] of one
//! node with backend pods running `ferry-netexec` (and the bench's connect
//! [`sink`](super::sink)) and a client pod per dataplane, all
//! wired by `ferry-cni`; `ferry-apiserver` in the world's underlay (as the
//! dataplane tests run it); `ferry-agent` in the node's namespace with a
//! child cgroup and a bpffs directory of its own ([`AgentHooks`]).
//!
//! Nothing here touches the root network namespace or the root cgroup:
//! iptables and nft run inside the node's namespace (spawned from a thread
//! that entered it, so no `nsenter` sits in their timings), and the world,
//! the hooks and every process are removed on drop, also when a phase fails.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use ferry_testbed::{AgentHooks, Cni, NETEXEC_READY, Node, Pod, Process, World};

use crate::cni::exec::{Timed, run_timed};

/// Backend pods behind the target Service.
pub const BACKENDS: usize = 3;
/// Client pods: one per dataplane, so none inherits another's TCP state
/// (the backends' TIME_WAIT sockets, whose timestamps a client reusing the
/// same ports through another dataplane would not match).
pub const CLIENTS: usize = 3;

/// The binaries a run needs.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub apiserver: PathBuf,
    pub agent: PathBuf,
    pub cni: PathBuf,
    pub netexec: PathBuf,
    /// This bench, re-run as the client inside the client pod.
    pub bench: PathBuf,
}

/// `ferry-cni` wired exactly as a runtime calls it.
fn ferry_cni(binary: &Path) -> Cni {
    Cni::ferry(binary.parent().map(Path::to_path_buf).unwrap_or_default())
}

/// The world, its servers and the control plane. Field order is drop order:
/// processes before the world they run in.
pub struct Lab {
    _servers: Vec<Process>,
    apiserver: Option<Process>,
    pub kubeconfig: PathBuf,
    api_ip: Ipv4Addr,
    generation: u16,
    pub world: World,
}

impl Lab {
    /// Builds the world (one node, the backends and the client pod) and
    /// starts `ferry-netexec` in each backend.
    pub fn build(bins: &Binaries) -> Result<Self> {
        let world = World::builder()
            .nodes(1)
            .pods_per_node(BACKENDS + CLIENTS)
            .cni(ferry_cni(&bins.cni))
            .build()
            .context("building the testbed world")?;
        let api_ip = apiserver_address(&world)?;
        let mut servers = Vec::new();
        for pod in world.pods().iter().take(BACKENDS) {
            let mut p = pod
                .netns
                .spawn([
                    bins.netexec.as_os_str(),
                    "--hostname".as_ref(),
                    pod.name.as_ref(),
                ])
                .with_context(|| format!("starting ferry-netexec in {}", pod.name))?;
            p.wait_for_output(NETEXEC_READY, Duration::from_secs(10))
                .with_context(|| format!("ferry-netexec in {}", pod.name))?;
            servers.push(p);
            let port = super::model::SINK_PORT.to_string();
            let mut sink = pod
                .netns
                .spawn([
                    bins.bench.as_os_str(),
                    "sink".as_ref(),
                    "--port".as_ref(),
                    port.as_ref(),
                ])
                .with_context(|| format!("starting the connect sink in {}", pod.name))?;
            sink.wait_for_output(super::sink::READY, Duration::from_secs(10))
                .with_context(|| format!("the connect sink in {}", pod.name))?;
            servers.push(sink);
        }
        Ok(Self {
            _servers: servers,
            apiserver: None,
            kubeconfig: PathBuf::new(),
            api_ip,
            generation: 0,
            world,
        })
    }

    pub fn node(&self) -> &Node {
        self.world.node(0)
    }

    /// The backend pods' names and IPv4 addresses.
    pub fn backends(&self) -> Result<Vec<(String, Ipv4Addr)>> {
        self.world
            .pods()
            .iter()
            .take(BACKENDS)
            .map(|p| {
                p.ipv4()
                    .map(|ip| (p.name.clone(), ip))
                    .with_context(|| format!("pod {} has no IPv4 address", p.name))
            })
            .collect()
    }

    /// Client pod `i` (0..[`CLIENTS`]).
    pub fn client_pod(&self, i: usize) -> &Pod {
        self.world.pod(0, BACKENDS + i.min(CLIENTS - 1))
    }

    /// Starts a fresh `ferry-apiserver` (a new data dir, a new port),
    /// stopping the previous one; waits until its kubeconfig is written.
    pub fn start_apiserver(&mut self, bins: &Binaries) -> Result<()> {
        self.apiserver = None;
        self.generation += 1;
        let (server, kubeconfig) = start_apiserver(
            &self.world,
            bins,
            self.api_ip,
            self.generation,
            &["--service-cluster-ip-range", super::model::SERVICE_CIDR],
        )?;
        self.kubeconfig = kubeconfig;
        self.apiserver = Some(server);
        Ok(())
    }

    /// The running apiserver's process id.
    pub fn apiserver_pid(&self) -> Option<u32> {
        self.apiserver.as_ref().map(Process::pid)
    }

    /// The apiserver's log so far.
    pub fn apiserver_output(&self) -> String {
        self.apiserver
            .as_ref()
            .map(Process::output)
            .unwrap_or_default()
    }

    /// Runs `cmd` inside the node's namespace (spawned from a thread that
    /// entered it), timed from spawn to reap.
    pub fn in_node(&self, mut cmd: Command, limit: Duration, stop: &AtomicBool) -> Result<Timed> {
        let shown = crate::cni::exec::display(&cmd);
        let timed = self
            .node()
            .netns
            .in_netns(move || run_timed(&mut cmd, &[], limit, stop))
            .context("entering the node namespace")?
            .with_context(|| format!("running `{shown}` in the node"))?;
        Ok(timed)
    }

    /// [`in_node`](Self::in_node), failing unless the command exits 0.
    pub fn in_node_ok(&self, cmd: Command, limit: Duration, stop: &AtomicBool) -> Result<Timed> {
        let shown = crate::cni::exec::display(&cmd);
        let timed = self.in_node(cmd, limit, stop)?;
        if !timed.status.success() {
            bail!(
                "`{shown}` failed ({}): {}",
                timed.status,
                timed.stderr_text()
            );
        }
        Ok(timed)
    }

    /// Runs `cmd` inside client pod `i`'s namespace.
    pub fn in_client(
        &self,
        i: usize,
        mut cmd: Command,
        limit: Duration,
        stop: &AtomicBool,
    ) -> Result<Timed> {
        self.client_pod(i)
            .netns
            .in_netns(move || run_timed(&mut cmd, &[], limit, stop))
            .context("entering the client namespace")?
            .context("running the client")
    }
}

/// Starts `ferry-apiserver` number `generation` of `world` in its underlay
/// at `api_ip` (a fresh data dir, port 6443 + `generation`, the node IPAM
/// controller off: the nodes' pod CIDRs are the world's), with `extra`
/// flags; waits until its kubeconfig is written and returns the server and
/// the kubeconfig's path.
pub fn start_apiserver(
    world: &World,
    bins: &Binaries,
    api_ip: Ipv4Addr,
    generation: u16,
    extra: &[&str],
) -> Result<(Process, PathBuf)> {
    let dir = world.state_dir().join(format!("apiserver-{generation}"));
    let kubeconfig = dir.join("admin.kubeconfig");
    let port = 6443 + generation;
    let mut argv: Vec<std::ffi::OsString> = vec![
        "env".into(),
        "RUST_LOG=info".into(),
        bins.apiserver.clone().into(),
        "--data-dir".into(),
        dir.clone().into(),
        "--bind".into(),
        format!("{api_ip}:{port}").into(),
        "--kubeconfig-out".into(),
        kubeconfig.clone().into(),
        "--controllers".into(),
        "*,-nodeipam".into(),
    ];
    argv.extend(extra.iter().map(Into::into));
    let mut server = world
        .underlay()
        .spawn(argv)
        .context("starting ferry-apiserver")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while kube::config::Kubeconfig::read_from(&kubeconfig).is_err() {
        if let Some(status) = server.try_wait()? {
            bail!("ferry-apiserver exited ({status}):\n{}", server.output());
        }
        if Instant::now() > deadline {
            bail!(
                "ferry-apiserver wrote no kubeconfig within 30 s:\n{}",
                server.output()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((server, kubeconfig))
}

/// Map sizes for an agent holding `services` Services with up to
/// `endpoints` each (with room for a second backend revision).
#[derive(Debug, Clone, Copy)]
pub struct MapSizes {
    pub services: u32,
    pub backends: u32,
    pub stats: u32,
}

impl MapSizes {
    pub fn for_load(services: usize, endpoints: usize) -> Self {
        let pow2 = |n: usize, floor: u32| {
            u32::try_from(n.next_power_of_two())
                .unwrap_or(1 << 30)
                .max(floor)
        };
        Self {
            // Two frontends per Service port (internal and external scope).
            services: pow2(services * 2 + services / 2 + 64, 65_536),
            backends: pow2(services * endpoints * 2 + 1024, 262_144),
            stats: pow2(services + 64, 16_384),
        }
    }
}

/// A running `ferry-agent` and its hooks. Field order is drop order: the
/// process is killed first, then the pins are removed (detaching the
/// programs) and the cgroup goes.
pub struct Agent {
    process: Process,
    pub hooks: AgentHooks,
    spawned: Instant,
}

impl Agent {
    /// Starts the agent for the lab's node with hooks named `<prefix>-<tag>`.
    pub fn start(lab: &Lab, bins: &Binaries, tag: &str, sizes: MapSizes) -> Result<Self> {
        Self::spawn(
            &lab.world,
            lab.node(),
            &lab.kubeconfig,
            bins,
            tag,
            sizes,
            &[],
        )
    }

    /// Starts the agent for `node` of `world` with hooks named
    /// `<prefix>-<tag>`, `--routing none` and `extra` flags after the rest.
    pub fn spawn(
        world: &World,
        node: &Node,
        kubeconfig: &Path,
        bins: &Binaries,
        tag: &str,
        sizes: MapSizes,
        extra: &[String],
    ) -> Result<Self> {
        let hooks = AgentHooks::create(&format!("{}-{tag}", world.prefix()))
            .context("creating the agent's cgroup and bpffs dir")?;
        let mut argv: Vec<std::ffi::OsString> = vec![
            "env".into(),
            "RUST_LOG=info".into(),
            bins.agent.clone().into(),
            "--kubeconfig".into(),
            kubeconfig.into(),
            "--node-name".into(),
            node.name.clone().into(),
            "--routing".into(),
            "none".into(),
            "--cgroup-root".into(),
            hooks.cgroup.clone().into(),
            "--bpffs-root".into(),
            hooks.bpffs.clone().into(),
            "--map-services".into(),
            sizes.services.to_string().into(),
            "--map-backends".into(),
            sizes.backends.to_string().into(),
            "--map-stats".into(),
            sizes.stats.to_string().into(),
        ];
        argv.extend(extra.iter().map(Into::into));
        let spawned = Instant::now();
        let process = node.netns.spawn(argv).context("starting ferry-agent")?;
        Ok(Self {
            process,
            hooks,
            spawned,
        })
    }

    /// Whether the agent has exited, and how.
    pub fn exited(&mut self) -> Result<Option<std::process::ExitStatus>> {
        Ok(self.process.try_wait()?)
    }

    /// Waits for the agent's first full sync; returns the time since spawn.
    pub fn wait_synced(&mut self, within: Duration) -> Result<Duration> {
        self.process
            .wait_for_output("service maps in sync", within)
            .with_context(|| format!("ferry-agent never synced; its log:\n{}", self.log_tail()))?;
        Ok(self.spawned.elapsed())
    }

    /// When the agent was started.
    pub fn spawned(&self) -> Instant {
        self.spawned
    }

    /// `nsenter` execs `env`, which execs the agent: the same pid.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn log_tail(&self) -> String {
        let out = self.process.output();
        let lines: Vec<&str> = out.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Fails when the agent has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.process.try_wait()? {
            bail!("ferry-agent exited ({status}):\n{}", self.log_tail());
        }
        Ok(())
    }
}

/// Kernel memory that rules and maps live in, from /proc/meminfo: Slab +
/// VmallocUsed + Percpu, in KiB. Differences of it are approximate (the
/// rest of the machine allocates too).
pub fn kernel_kib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().strip_suffix("kB"))
            .and_then(|n| n.trim().parse().ok())
    };
    Some(field("Slab:")? + field("VmallocUsed:")? + field("Percpu:").unwrap_or(0))
}

/// What `bpftool map show` says each pinned map of an agent locks, in
/// bytes: (map name, bytes), largest first.
pub fn bpf_memlock(bpffs: &Path, stop: &AtomicBool) -> Result<Vec<(String, u64)>> {
    let dir = bpffs.join("maps");
    let mut out = Vec::new();
    let entries = std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?;
    for entry in entries.flatten() {
        let mut cmd = Command::new("bpftool");
        cmd.args(["-j", "map", "show", "pinned"]).arg(entry.path());
        let timed =
            run_timed(&mut cmd, &[], Duration::from_secs(10), stop).context("running bpftool")?;
        if !timed.status.success() {
            bail!("bpftool map show: {}", timed.stderr_text());
        }
        let v: serde_json::Value =
            serde_json::from_slice(&timed.stdout).context("bpftool's JSON")?;
        let bytes = v
            .get("bytes_memlock")
            .and_then(|b| {
                b.as_u64()
                    .or_else(|| b.as_str().and_then(|s| s.parse().ok()))
            })
            .unwrap_or(0);
        out.push((entry.file_name().to_string_lossy().into_owned(), bytes));
    }
    out.sort_by_key(|b| std::cmp::Reverse(b.1));
    Ok(out)
}

/// Gives the world's underlay bridge an address of node 0's underlay
/// subnet (`.250`) for the apiserver to listen on, reachable from every
/// node; returns it.
pub fn apiserver_address(world: &World) -> Result<Ipv4Addr> {
    let node = world.node(0);
    let api_ip = Ipv4Addr::from(u32::from(node.underlay_v4.network()) + 250);
    world
        .underlay()
        .exec([
            "ip".to_string(),
            "addr".into(),
            "add".into(),
            format!("{api_ip}/{}", node.underlay_v4.prefix_len()),
            "dev".into(),
            ferry_testbed::UNDERLAY_BRIDGE.into(),
        ])
        .context("addressing the underlay bridge for the apiserver")?;
    Ok(api_ip)
}
