//! The service dataplane benchmark: Ferry's eBPF socket-level load
//! balancing against faithful kube-proxy rulesets (iptables mode and
//! nftables mode), side by side in one run, in one testbed topology.
//!
//! - [`cluster`]: the world (one node, backend pods running
//!   `ferry-netexec` and the connect [`sink`], a client pod per dataplane,
//!   all wired by `ferry-cni`), `ferry-apiserver` in its underlay,
//!   `ferry-agent` with hooks of its own;
//! - [`model`]: the Services (the same ClusterIPs for every dataplane) and
//!   their Kubernetes objects; [`api`]: creating and patching them;
//! - [`iptables`] and [`nftables`]: kube-proxy's rulesets, whole and as its
//!   partial syncs; [`hash`]: its chain-name hashing;
//! - [`client`]: the in-pod client (this binary re-run inside the pod);
//!   [`maps`]: reading the agent's pinned maps;
//! - [`report`]: the markdown table.
//!
//! Phases, each cleaning up after itself (rules flushed, agent stopped, pins
//! and cgroup removed) also when it fails:
//! 1. **End to end**, for each N: two target Services (the real backends:
//!    their accept sinks for bare connects, their `ferry-netexec` for HTTP)
//!    last, plus N-2 fake Services (unroutable endpoints, never dialed). Ferry:
//!    the Services go through the apiserver, a fresh agent syncs them, the
//!    client joins its cgroup. iptables / nftables: the N Services as
//!    kube-proxy writes them, loaded into the node's namespace with one
//!    `iptables-restore` / `nft -f`, the client outside any cgroup (its
//!    packets enter the node from its veth, so PREROUTING applies). Ferry
//!    runs first for every N, then nftables, then iptables: legacy iptables
//!    tables cannot be removed from a namespace once made, so nothing after
//!    them is measured on the data path.
//! 2. **Control plane**: a fresh apiserver with M Services of E endpoints;
//!    the time a cold agent takes to program them against `iptables-restore`
//!    and `nft -f` of the same rulesets; then endpoint changes (one slice
//!    patched each), timed from the API write until Ferry's map holds the new
//!    backend, against kube-proxy's reaction (the watch event, then its
//!    partial-sync `iptables-restore --noflush` / `nft -f`).
//! 3. **Memory** with the M Services: the agent's RSS, its maps' memlock,
//!    and the kernel memory each dataplane's state took.
//! 4. **Agent memory with a cluster's load** ([`memory`], Ferry only): a
//!    fresh apiserver with Services, EndpointSlices, Pods, Namespaces and
//!    NetworkPolicies; a cold agent with NetworkPolicy on, its RSS once both
//!    its service maps and its policy maps are in sync, the BPF maps'
//!    memlock apart. Alone: `--services 0 --cp-services 0 --modes ferry`.

pub mod api;
pub mod client;
pub mod cluster;
pub mod hash;
pub mod iptables;
pub mod maps;
pub mod memory;
pub mod model;
pub mod nftables;
pub mod report;
pub mod sink;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::process::Rss;
use crate::stats::{Samples, Summary};
use client::{ClientArgs, ClientSummary};
use cluster::{Agent, Binaries, Lab, MapSizes, bpf_memlock, kernel_kib};
use iptables::Backend;
use model::{CONNECT_IP, SERVICE_PORT, Svc, TARGET_IP};

/// Which dataplanes run.
#[derive(Debug, Clone, Copy)]
pub struct Modes {
    pub ferry: bool,
    pub iptables: bool,
    pub nftables: bool,
}

/// Everything a run is told.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Service counts of the end-to-end phase, ascending.
    pub services: Vec<usize>,
    /// Endpoints of each fake Service there.
    pub fake_endpoints: usize,
    pub warmup: usize,
    /// Sequential timed connects per client run.
    pub connects: usize,
    /// Sequential timed HTTP GETs per client run.
    pub http: usize,
    /// Workers and duration of the concurrent-connect phase.
    pub workers: usize,
    pub rate: Duration,
    /// Bound on each sequential client phase.
    pub phase: Duration,
    /// Services and endpoints of the control-plane phase (0 skips it).
    pub cp_services: usize,
    pub cp_endpoints: usize,
    /// Endpoint changes timed there.
    pub changes: usize,
    pub iptables: Backend,
    pub modes: Modes,
    /// Creates in flight against the apiserver.
    pub concurrency: usize,
    /// Bound on an agent's first sync.
    pub sync_timeout: Duration,
    /// The agent-memory phase's load (`services` 0 skips it).
    pub memory: memory::MemorySettings,
}

/// What one client run measured.
#[derive(Debug, Clone, Default)]
pub struct Traffic {
    pub connect: Summary,
    /// Sequential connects per second.
    pub connect_rate: f64,
    pub http: Summary,
    pub http_connect: Summary,
    /// Sequential GETs per second.
    pub http_rate: f64,
    pub concurrent_workers: usize,
    /// Connects per second with the workers.
    pub concurrent_rate: f64,
    pub concurrent_errors: u64,
    /// Failed sequential attempts.
    pub errors: usize,
    pub first_error: Option<String>,
    /// Distinct backends that answered the GETs.
    pub backends_hit: usize,
}

impl Traffic {
    pub fn of(c: ClientSummary) -> Self {
        let samples = |v: &[u64]| {
            let mut s = Samples::with_capacity(v.len());
            for &n in v {
                s.push_nanos(n);
            }
            s.summary()
        };
        let per_s = |n: usize, wall_ns: u64| {
            if wall_ns == 0 {
                0.0
            } else {
                n as f64 / (wall_ns as f64 / 1e9)
            }
        };
        Self {
            connect_rate: per_s(c.connect_ns.len(), c.connect_wall_ns),
            connect: samples(&c.connect_ns),
            http_rate: per_s(c.http_ns.len(), c.http_wall_ns),
            http: samples(&c.http_ns),
            http_connect: samples(&c.http_connect_ns),
            concurrent_workers: c.concurrent.workers,
            concurrent_rate: per_s(
                usize::try_from(c.concurrent.connections).unwrap_or(usize::MAX),
                c.concurrent.wall_ns,
            ),
            concurrent_errors: c.concurrent.errors,
            errors: c.errors,
            first_error: c.first_error,
            backends_hit: c.hostnames.len(),
        }
    }
}

/// One dataplane at one N.
#[derive(Debug, Clone, Default)]
pub struct DataplaneRun {
    pub ran: bool,
    pub error: Option<String>,
    /// Making the ruleset text (kube-proxy's side only).
    pub generate: Option<Duration>,
    /// Programming the N Services: the agent's start to its first full
    /// sync, or the one restore.
    pub program: Option<Duration>,
    /// The agent's CPU time (user + system) until then.
    pub program_cpu: Option<Duration>,
    /// What got programmed, for the table.
    pub size: String,
    pub traffic: Option<Traffic>,
    pub agent_rss: Option<Rss>,
}

#[derive(Debug, Clone, Default)]
pub struct EndToEnd {
    pub services: usize,
    pub ferry: DataplaneRun,
    pub iptables: DataplaneRun,
    pub nftables: DataplaneRun,
}

/// A kube-proxy ruleset's whole load.
#[derive(Debug, Clone, Default)]
pub struct RulesLoad {
    pub generate: Duration,
    pub load: Duration,
    pub rules: usize,
    pub chains: usize,
    pub bytes: usize,
    /// Kernel memory taken, KiB (approximate).
    pub kernel_kib: Option<i64>,
}

/// The endpoint-change phase.
#[derive(Debug, Clone, Default)]
pub struct Updates {
    pub count: usize,
    /// API write until Ferry's map holds the new backend.
    pub ferry: Summary,
    /// The PATCH call itself.
    pub api_write: Summary,
    /// API write until a watcher in this process saw the change.
    pub event: Summary,
    pub ipt_generate: Summary,
    pub ipt_restore: Summary,
    /// event + generate + restore: kube-proxy's reaction, emulated.
    pub ipt_total: Summary,
    pub nft_list: Summary,
    pub nft_generate: Summary,
    pub nft_tx: Summary,
    /// event + list + generate + transaction.
    pub nft_total: Summary,
}

#[derive(Debug, Clone, Default)]
pub struct Memory {
    pub agent: Option<Rss>,
    /// Per pinned map: name, bytes locked; largest first.
    pub memlock: Vec<(String, u64)>,
    /// Kernel memory the agent's start took, KiB (approximate).
    pub agent_kernel_kib: Option<i64>,
}

#[derive(Debug, Clone, Default)]
pub struct ControlPlane {
    pub services: usize,
    pub endpoints: usize,
    pub api_load: Option<Duration>,
    pub ferry_sync: Option<Duration>,
    pub ferry_sync_cpu: Option<Duration>,
    pub ferry_frontends: usize,
    pub iptables: Option<RulesLoad>,
    pub nftables: Option<RulesLoad>,
    pub updates: Updates,
    pub memory: Memory,
    pub errors: Vec<String>,
}

/// Tool versions for the report.
#[derive(Debug, Clone, Default)]
pub struct Versions {
    pub agent: String,
    pub iptables: String,
    pub nft: String,
}

#[derive(Debug, Clone, Default)]
pub struct Results {
    pub e2e: Vec<EndToEnd>,
    pub cp: Option<ControlPlane>,
    pub memory: Option<memory::MemoryRun>,
    pub versions: Versions,
}

fn stopped(stop: &AtomicBool) -> Result<()> {
    if stop.load(Ordering::Relaxed) {
        bail!("the run was stopped");
    }
    Ok(())
}

/// Fails early when a tool the run needs is missing.
fn check_tools(s: &Settings) -> Result<()> {
    let mut tools = vec!["nsenter", "ip", "bpftool"];
    if s.modes.iptables {
        tools.push(s.iptables.restore());
        tools.push(s.iptables.iptables());
    }
    if s.modes.nftables || s.modes.iptables {
        tools.push("nft");
    }
    Ok(crate::harness::require_tools(&tools)?)
}

/// Runs every phase; `say` reports progress.
pub fn run(s: &Settings, bins: &Binaries, stop: &AtomicBool, say: fn(&str)) -> Result<Results> {
    check_tools(s)?;
    let versions = Versions {
        agent: crate::harness::version_of(&bins.agent, "--version"),
        iptables: crate::harness::version_of(Path::new(s.iptables.restore()), "--version"),
        nft: crate::harness::version_of(Path::new("nft"), "--version"),
    };
    say("building the world (1 node, 3 backend pods, 3 client pods)");
    let mut lab = Lab::build(bins)?;
    let underlay = lab.world.underlay().clone();
    let mut results = underlay
        .in_netns(|| -> Result<Results> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?;
            rt.block_on(measure(&mut lab, bins, s, stop, say))
        })
        .context("entering the underlay namespace")??;
    results.versions = versions;
    say("tearing the world down");
    drop(lab);
    Ok(results)
}

/// A node's rules, reset between runs.
pub(crate) struct Rules<'a> {
    node: &'a ferry_testbed::Netns,
    dir: PathBuf,
    pub(crate) backend: Backend,
    /// Legacy tables were made in the node (they stay, empty, once reset).
    legacy_used: bool,
    pub(crate) stop: &'a AtomicBool,
}

const RESTORE_LIMIT: Duration = Duration::from_secs(600);

impl<'a> Rules<'a> {
    fn new(lab: &'a Lab, backend: Backend, stop: &'a AtomicBool) -> Result<Self> {
        Self::in_node(
            &lab.node().netns,
            &lab.world.state_dir().join("rules"),
            backend,
            stop,
        )
    }

    /// The rules of the node namespace `node`, their files kept in `dir`.
    pub(crate) fn in_node(
        node: &'a ferry_testbed::Netns,
        dir: &Path,
        backend: Backend,
        stop: &'a AtomicBool,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self {
            node,
            dir: dir.to_path_buf(),
            backend,
            legacy_used: false,
            stop,
        })
    }

    /// Runs `cmd` in the node (spawned from a thread that entered it),
    /// failing unless it exits 0.
    fn run_ok(&self, mut cmd: Command) -> Result<crate::cni::exec::Timed> {
        let shown = crate::cni::exec::display(&cmd);
        let stop = self.stop;
        let timed = self
            .node
            .in_netns(move || crate::cni::exec::run_timed(&mut cmd, &[], RESTORE_LIMIT, stop))
            .context("entering the node namespace")?
            .with_context(|| format!("running `{shown}` in the node"))?;
        if !timed.status.success() {
            bail!(
                "`{shown}` failed ({}): {}",
                timed.status,
                timed.stderr_text()
            );
        }
        Ok(timed)
    }

    fn write(&self, name: &str, text: &str) -> Result<PathBuf> {
        let path = self.dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Empties the node's netfilter state: every nf_tables table (kube-proxy's
    /// and iptables-nft's), and the legacy tables if they were used.
    pub(crate) fn reset(&mut self) -> Result<()> {
        let mut nft = Command::new("nft");
        nft.args(["flush", "ruleset"]);
        self.run_ok(nft)?;
        if self.legacy_used {
            let path = self.write("reset.rules", iptables::RESET)?;
            let mut cmd = Command::new(Backend::Legacy.restore());
            cmd.arg(path);
            self.run_ok(cmd)?;
        }
        Ok(())
    }

    /// `iptables-restore` of a whole ruleset (`partial`: `--noflush
    /// --counters`, as kube-proxy's syncs).
    pub(crate) fn iptables_restore(
        &mut self,
        name: &str,
        text: &str,
        partial: bool,
    ) -> Result<Duration> {
        let path = self.write(name, text)?;
        let mut cmd = Command::new(self.backend.restore());
        cmd.args(["-w", "5", "-W", "100000"]);
        if partial {
            cmd.args(["--noflush", "--counters"]);
        }
        cmd.arg(path);
        if self.backend == Backend::Legacy {
            self.legacy_used = true;
        }
        Ok(self.run_ok(cmd)?.wall)
    }

    pub(crate) fn nft(&self, name: &str, text: &str) -> Result<Duration> {
        let path = self.write(name, text)?;
        let mut cmd = Command::new("nft");
        cmd.arg("-f").arg(path);
        Ok(self.run_ok(cmd)?.wall)
    }

    /// What knftables runs before each sync to find stale chains.
    fn nft_list_chains(&self) -> Result<Duration> {
        let mut cmd = Command::new("nft");
        cmd.args(["--json", "list", "chains", "ip"]);
        Ok(self.run_ok(cmd)?.wall)
    }

    pub(crate) fn output(&self, args: &[&str]) -> Result<String> {
        let program = args.first().context("empty command")?;
        let mut cmd = Command::new(program);
        cmd.args(args.get(1..).unwrap_or_default());
        Ok(self.run_ok(cmd)?.stdout_text())
    }
}

fn client_args(s: &Settings, cgroup: Option<PathBuf>) -> ClientArgs {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    ClientArgs {
        addr: SocketAddr::new(IpAddr::V4(CONNECT_IP), SERVICE_PORT),
        http_addr: SocketAddr::new(IpAddr::V4(TARGET_IP), SERVICE_PORT),
        cgroup,
        warmup: s.warmup,
        connects: s.connects,
        http: s.http,
        workers: s.workers,
        rate_ms: ms(s.rate),
        phase_ms: ms(s.phase),
        timeout_ms: 1000,
    }
}

/// Client pods by dataplane.
const FERRY_CLIENT: usize = 0;
const IPTABLES_CLIENT: usize = 1;
const NFTABLES_CLIENT: usize = 2;

/// Runs the client in client pod `pod`; fails when nothing got through.
fn run_client(
    lab: &Lab,
    pod: usize,
    bins: &Binaries,
    s: &Settings,
    cgroup: Option<PathBuf>,
    stop: &AtomicBool,
) -> Result<Traffic> {
    let args = client_args(s, cgroup);
    let mut cmd = Command::new(&bins.bench);
    cmd.arg("client").args(args.to_args());
    let timed = lab.in_client(pod, cmd, args.limit(), stop)?;
    if !timed.status.success() {
        bail!(
            "the client failed ({}): {}",
            timed.status,
            timed.stderr_text()
        );
    }
    let summary: ClientSummary =
        serde_json::from_slice(&timed.stdout).context("decoding the client's summary")?;
    let traffic = Traffic::of(summary);
    if traffic.connect.count == 0 {
        bail!(
            "no connection to {CONNECT_IP}:{SERVICE_PORT} succeeded: {}",
            traffic.first_error.as_deref().unwrap_or("?")
        );
    }
    Ok(traffic)
}

/// Records a failed phase instead of ending the run.
fn contain(run: &mut DataplaneRun, r: Result<()>, what: &str, say: fn(&str)) {
    run.ran = true;
    if let Err(e) = r {
        say(&format!("{what} failed: {e:#}"));
        run.error = Some(format!("{e:#}"));
    }
}

async fn measure(
    lab: &mut Lab,
    bins: &Binaries,
    s: &Settings,
    stop: &AtomicBool,
    say: fn(&str),
) -> Result<Results> {
    let mut results = Results::default();
    if !s.services.is_empty() {
        results.e2e = end_to_end(lab, bins, s, stop, say).await?;
    }
    if s.cp_services > 0 {
        stopped(stop)?;
        let mut cp = ControlPlane {
            services: s.cp_services,
            endpoints: s.cp_endpoints,
            ..ControlPlane::default()
        };
        if let Err(e) = control_plane(lab, bins, s, stop, say, &mut cp).await {
            say(&format!("control-plane phase failed: {e:#}"));
            cp.errors.push(format!("{e:#}"));
        }
        results.cp = Some(cp);
    }
    if s.memory.services > 0 && s.modes.ferry {
        stopped(stop)?;
        let mut run = memory::MemoryRun::default();
        let r = memory::run(lab, bins, s, stop, say, &mut run).await;
        if let Err(e) = r {
            say(&format!("memory phase failed: {e:#}"));
            run.errors.push(format!("{e:#}"));
        }
        results.memory = Some(run);
    }
    Ok(results)
}

async fn end_to_end(
    lab: &mut Lab,
    bins: &Binaries,
    s: &Settings,
    stop: &AtomicBool,
    say: fn(&str),
) -> Result<Vec<EndToEnd>> {
    let max = s.services.iter().copied().max().unwrap_or(1).max(1);
    model::check_sizes(max, s.fake_endpoints).map_err(anyhow::Error::msg)?;
    let backends = lab.backends()?;
    let ips: Vec<_> = backends.iter().map(|(_, ip)| *ip).collect();
    let targets = [model::target(&ips), model::connect_target(&ips)];
    let fakes = model::fakes(max.saturating_sub(targets.len()), s.fake_endpoints);
    let set = |n: usize| -> Vec<Svc> {
        let mut v: Vec<Svc> = fakes
            .iter()
            .take(n.saturating_sub(targets.len()))
            .cloned()
            .collect();
        // Last: the worst case for the linear KUBE-SERVICES chain.
        v.extend(targets.iter().cloned());
        v
    };
    let mut out: Vec<EndToEnd> = s
        .services
        .iter()
        .map(|&n| EndToEnd {
            services: n,
            ..EndToEnd::default()
        })
        .collect();

    if s.modes.ferry {
        lab.start_apiserver(bins)?;
        let client = api::client(&lab.kubeconfig).await?;
        api::wait_ready(&client, Duration::from_secs(30))
            .await
            .with_context(|| lab.apiserver_output())?;
        api::setup(&client, lab.node()).await?;
        api::create(&client, &targets, 1).await?;
        let mut created = 0;
        for e in &mut out {
            stopped(stop)?;
            let want = e.services.saturating_sub(targets.len());
            if want > created {
                say(&format!(
                    "ferry: creating {} more Services + EndpointSlices (to {})",
                    want - created,
                    e.services
                ));
                let took = api::create(&client, &fakes[created..want], s.concurrency).await?;
                say(&format!("ferry: created in {:.1} s", took.as_secs_f64()));
                created = want;
            }
            say(&format!("ferry: {} Services", e.services));
            let r = ferry_e2e(lab, bins, s, &set(e.services), &mut e.ferry, stop);
            contain(&mut e.ferry, r, "ferry", say);
        }
    }
    let mut rules = Rules::new(lab, s.iptables, stop)?;
    rules.reset()?;
    if s.modes.nftables {
        for e in &mut out {
            stopped(stop)?;
            say(&format!("nftables: {} Services", e.services));
            let r = nft_e2e(&mut rules, lab, bins, s, &set(e.services), &mut e.nftables);
            let reset = rules.reset();
            contain(&mut e.nftables, r.and(reset), "nftables", say);
        }
    }
    if s.modes.iptables {
        for e in &mut out {
            stopped(stop)?;
            say(&format!("iptables: {} Services", e.services));
            let r = iptables_e2e(&mut rules, lab, bins, s, &set(e.services), &mut e.iptables);
            let reset = rules.reset();
            contain(&mut e.iptables, r.and(reset), "iptables", say);
        }
    }
    Ok(out)
}

fn ferry_e2e(
    lab: &Lab,
    bins: &Binaries,
    s: &Settings,
    set: &[Svc],
    run: &mut DataplaneRun,
    stop: &AtomicBool,
) -> Result<()> {
    let eps = set.iter().map(|v| v.endpoints.len()).max().unwrap_or(1);
    let mut agent = Agent::start(
        lab,
        bins,
        &format!("e{}", set.len()),
        MapSizes::for_load(set.len(), eps),
    )?;
    let synced = agent.wait_synced(s.sync_timeout)?;
    run.program_cpu = crate::process::cpu_time(Some(agent.pid())).ok();
    let maps = maps::Pinned::open(&agent.hooks.bpffs)?;
    // The first full sync is done; every frontend must be there.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (internal, all) = loop {
        let (internal, all) = maps.frontends()?;
        if internal >= set.len() || Instant::now() > deadline {
            break (internal, all);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    run.program = Some(synced);
    // One more than the bench's: the apiserver's own default/kubernetes.
    run.size = format!("{internal} frontends, incl. default/kubernetes ({all} map entries)");
    if internal < set.len() {
        bail!("the agent programmed {internal} of {} frontends", set.len());
    }
    for ip in [TARGET_IP, CONNECT_IP] {
        let backends = maps
            .frontend(ip, SERVICE_PORT)
            .map(|v| maps.backends(&v))
            .unwrap_or_default();
        if backends.len() != cluster::BACKENDS {
            bail!("the frontend {ip}:{SERVICE_PORT} has backends {backends:?}");
        }
    }
    agent.check_running()?;
    run.agent_rss = Rss::of(agent.pid()).ok();
    run.traffic = Some(run_client(
        lab,
        FERRY_CLIENT,
        bins,
        s,
        Some(agent.hooks.cgroup.clone()),
        stop,
    )?);
    agent.check_running()?;
    Ok(())
}

fn nft_e2e(
    rules: &mut Rules<'_>,
    lab: &Lab,
    bins: &Binaries,
    s: &Settings,
    set: &[Svc],
    run: &mut DataplaneRun,
) -> Result<()> {
    let t0 = Instant::now();
    let tx = nftables::full(set);
    run.generate = Some(t0.elapsed());
    run.size = format!(
        "{} rules, {} chains, {} elements",
        tx.rules, tx.chains, tx.elements
    );
    run.program = Some(rules.nft(&format!("nft-{}.nft", set.len()), &tx.text)?);
    drop(tx);
    run.traffic = Some(run_client(lab, NFTABLES_CLIENT, bins, s, None, rules.stop)?);
    Ok(())
}

fn iptables_e2e(
    rules: &mut Rules<'_>,
    lab: &Lab,
    bins: &Binaries,
    s: &Settings,
    set: &[Svc],
    run: &mut DataplaneRun,
) -> Result<()> {
    let t0 = Instant::now();
    let rs = iptables::full(set);
    run.generate = Some(t0.elapsed());
    run.size = format!("{} rules, {} chains", rs.rules, rs.chains);
    run.program =
        Some(rules.iptables_restore(&format!("iptables-{}.rules", set.len()), &rs.text, false)?);
    drop(rs);
    run.traffic = Some(run_client(lab, IPTABLES_CLIENT, bins, s, None, rules.stop)?);
    Ok(())
}

fn kernel_delta(before: Option<u64>, after: Option<u64>) -> Option<i64> {
    let (b, a) = (i64::try_from(before?).ok()?, i64::try_from(after?).ok()?);
    Some(a - b)
}

async fn control_plane(
    lab: &mut Lab,
    bins: &Binaries,
    s: &Settings,
    stop: &AtomicBool,
    say: fn(&str),
    cp: &mut ControlPlane,
) -> Result<()> {
    let n = s.cp_services;
    let e = s.cp_endpoints.max(1);
    model::check_sizes(n, e).map_err(anyhow::Error::msg)?;
    say(&format!(
        "control plane: a fresh apiserver with {n} Services x {e} endpoints"
    ));
    lab.start_apiserver(bins)?;
    let client = api::client(&lab.kubeconfig).await?;
    api::wait_ready(&client, Duration::from_secs(30))
        .await
        .with_context(|| lab.apiserver_output())?;
    api::setup(&client, lab.node()).await?;
    let mut svcs = model::fakes(n, e);
    cp.api_load = Some(api::create(&client, &svcs, s.concurrency).await?);
    say(&format!(
        "control plane: objects created in {:.1} s",
        cp.api_load.unwrap_or_default().as_secs_f64()
    ));
    let lab: &Lab = lab;
    let mut rules = Rules::new(lab, s.iptables, stop)?;
    rules.reset()?;
    // Settle: the apiserver's writes done, page cache warm.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut agent = None;
    if s.modes.ferry {
        stopped(stop)?;
        say("control plane: ferry-agent cold start");
        let k0 = kernel_kib();
        let mut a = Agent::start(lab, bins, "cp", MapSizes::for_load(n, e))?;
        let synced = a.wait_synced(s.sync_timeout)?;
        cp.ferry_sync_cpu = crate::process::cpu_time(Some(a.pid())).ok();
        let maps = maps::Pinned::open(&a.hooks.bpffs)?;
        let (internal, _) = maps.frontends()?;
        cp.ferry_sync = Some(synced);
        cp.ferry_frontends = internal;
        if internal < n {
            bail!("the agent programmed {internal} of {n} frontends");
        }
        cp.memory.agent_kernel_kib = kernel_delta(k0, kernel_kib());
        cp.memory.agent = Rss::of(a.pid()).ok();
        cp.memory.memlock = bpf_memlock(&a.hooks.bpffs, stop)?;
        agent = Some((a, maps));
    }
    if s.modes.iptables {
        stopped(stop)?;
        say("control plane: iptables-restore of the whole ruleset");
        let t0 = Instant::now();
        let rs = iptables::full(&svcs);
        let generate = t0.elapsed();
        let k0 = kernel_kib();
        let load = rules.iptables_restore("cp-iptables.rules", &rs.text, false)?;
        cp.iptables = Some(RulesLoad {
            generate,
            load,
            rules: rs.rules,
            chains: rs.chains,
            bytes: rs.text.len(),
            kernel_kib: kernel_delta(k0, kernel_kib()),
        });
    }
    if s.modes.nftables {
        stopped(stop)?;
        say("control plane: nft -f of the whole ruleset");
        let t0 = Instant::now();
        let tx = nftables::full(&svcs);
        let generate = t0.elapsed();
        let k0 = kernel_kib();
        let load = rules.nft("cp-nft.nft", &tx.text)?;
        cp.nftables = Some(RulesLoad {
            generate,
            load,
            rules: tx.rules,
            chains: tx.chains,
            bytes: tx.text.len(),
            kernel_kib: kernel_delta(k0, kernel_kib()),
        });
    }
    if s.changes > 0 {
        say(&format!("control plane: {} endpoint changes", s.changes));
        let maps = agent.as_ref().map(|(_, m)| m);
        let r = updates(&client, &mut rules, s, &mut svcs, maps, cp, stop).await;
        if let Err(e) = r {
            cp.errors.push(format!("endpoint changes: {e:#}"));
        }
    }
    if let Some((a, _)) = agent.as_mut() {
        a.check_running()?;
        // After the changes: what a steady agent holds.
        if let Ok(rss) = Rss::of(a.pid()) {
            cp.memory.agent = Some(rss);
        }
    }
    drop(agent);
    rules.reset()?;
    Ok(())
}

/// Endpoint changes, one slice patched at a time.
async fn updates(
    client: &kube::Client,
    rules: &mut Rules<'_>,
    s: &Settings,
    svcs: &mut [Svc],
    maps: Option<&maps::Pinned>,
    cp: &mut ControlPlane,
    stop: &AtomicBool,
) -> Result<()> {
    let (mut events, watcher) = api::watch_slices(client).await?;
    let mut ferry = Samples::new();
    let mut api_write = Samples::new();
    let mut event = Samples::new();
    let (mut ipt_gen, mut ipt_restore, mut ipt_total) =
        (Samples::new(), Samples::new(), Samples::new());
    let (mut nft_list, mut nft_gen, mut nft_tx, mut nft_total) = (
        Samples::new(),
        Samples::new(),
        Samples::new(),
        Samples::new(),
    );
    let mut last: Option<(usize, std::net::Ipv4Addr)> = None;
    let n = svcs.len();
    for c in 0..s.changes {
        stopped(stop)?;
        let idx = (c * 7919 + 11) % n;
        let Some(svc) = svcs.get_mut(idx) else {
            continue;
        };
        let old = svc.clone();
        let new_ip = model::changed_endpoint(c);
        if let Some(first) = svc.endpoints.first_mut() {
            *first = new_ip;
        }
        let svc = svc.clone();
        let want = SocketAddr::new(IpAddr::V4(new_ip), svc.target_port);
        let t0 = Instant::now();
        api::patch_endpoints(client, &svc).await?;
        api_write.push(t0.elapsed());
        let deadline = t0 + Duration::from_secs(10);
        if let Some(maps) = maps {
            loop {
                let seen = maps
                    .frontend(svc.ip, SERVICE_PORT)
                    .is_some_and(|v| maps.backends(&v).contains(&want));
                if seen {
                    ferry.push(t0.elapsed());
                    break;
                }
                if Instant::now() > deadline {
                    cp.errors.push(format!(
                        "change {c}: Ferry's map never showed {want} for {}",
                        svc.name
                    ));
                    break;
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
        let seen_at = loop {
            match tokio::time::timeout_at(deadline.into(), events.recv()).await {
                Ok(Some((name, addrs, at))) => {
                    if name == svc.slice_name() && addrs.contains(&new_ip.to_string()) {
                        break Some(at.saturating_duration_since(t0));
                    }
                }
                _ => break None,
            }
        };
        match seen_at {
            Some(d) => event.push(d),
            None => cp
                .errors
                .push(format!("change {c}: the watch never delivered it")),
        }
        let ev = seen_at.unwrap_or_default();
        if cp.iptables.is_some() {
            let g0 = Instant::now();
            let rs = iptables::partial(svcs, &[idx]);
            let generate = g0.elapsed();
            let restore = rules.iptables_restore("cp-iptables-partial.rules", &rs.text, true)?;
            ipt_gen.push(generate);
            ipt_restore.push(restore);
            ipt_total.push(ev + generate + restore);
        }
        if cp.nftables.is_some() {
            let list = rules.nft_list_chains()?;
            let g0 = Instant::now();
            let tx = nftables::partial(&svc, &old);
            let generate = g0.elapsed();
            let took = rules.nft("cp-nft-partial.nft", &tx.text)?;
            nft_list.push(list);
            nft_gen.push(generate);
            nft_tx.push(took);
            nft_total.push(ev + list + generate + took);
        }
        last = Some((idx, new_ip));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(events);
    watcher.abort();
    // The last change must be in the loaded rules too.
    if let Some((idx, ip)) = last
        && let Some(svc) = svcs.get(idx)
    {
        if cp.iptables.is_some() {
            let sep = iptables::sep_chain(svc, ip);
            let listed =
                rules.output(&[rules.backend.iptables(), "-w", "-t", "nat", "-S", &sep])?;
            let dnat = format!("--to-destination {ip}:{}", svc.target_port);
            if !listed.contains(&dnat) {
                cp.errors.push(format!(
                    "iptables: the last change ({dnat}) is not in the rules"
                ));
            }
        }
        if cp.nftables.is_some() {
            let chain = nftables::svc_chain(svc);
            let listed = rules.output(&["nft", "list", "chain", "ip", "kube-proxy", &chain])?;
            if !listed.contains(&nftables::ep_chain(svc, ip)) {
                cp.errors.push(format!(
                    "nftables: the last change ({ip}) is not in {chain}"
                ));
            }
        }
    }
    cp.updates = Updates {
        count: s.changes,
        ferry: ferry.summary(),
        api_write: api_write.summary(),
        event: event.summary(),
        ipt_generate: ipt_gen.summary(),
        ipt_restore: ipt_restore.summary(),
        ipt_total: ipt_total.summary(),
        nft_list: nft_list.summary(),
        nft_generate: nft_gen.summary(),
        nft_tx: nft_tx.summary(),
        nft_total: nft_total.summary(),
    };
    Ok(())
}
