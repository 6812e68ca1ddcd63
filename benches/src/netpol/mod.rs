//! The NetworkPolicy connection benchmark (issue 13, section 6): new TCP
//! connections between pods with 1,000 policies in place, through Ferry's
//! eBPF enforcement and through a kube-router-style iptables + ipset
//! ruleset made from the same policies, against no policy at all; and how
//! long a policy change takes to be enforced.
//!
//! - [`population`]: the objects (namespaces, remote pods, the real pods
//!   by role, the policies); [`lab`]: the world, the apiserver and the
//!   agent; [`kube_router`]: kube-router's ruleset from the API's objects;
//!   [`probe`]: connection attempts from inside pods; [`report`]: the
//!   markdown.
//!
//! One world, one apiserver holding every object for the whole run, and in
//! order (legacy iptables tables stay registered in a namespace once made,
//! so the iptables run goes last):
//! 1. **baseline**: `ferry-agent --pod-devices fer --no-network-policy`;
//! 2. **Ferry**: a fresh agent enforcing NetworkPolicy, timed from its
//!    start until every verdict the bench checks holds; then the **change
//!    phase**: a prober pod connects to the `open` pod every few
//!    milliseconds while a deny-all policy selecting `open` is created and
//!    deleted, each timed from the API's answer to the first attempt of the
//!    settled new verdict;
//! 3. **kube-router**: an agent with `--no-network-policy` again (its
//!    programs replace the enforcing ones on every veth, checked by the
//!    verdicts opening up), then kube-router's ruleset for this node made
//!    from a list of the API's Namespaces, Pods and NetworkPolicies, loaded
//!    with `ipset restore -exist` and one `iptables-restore` in the node's
//!    namespace; reset (tables emptied, sets destroyed) afterwards.
//!
//! In each run the client (in the agent's cgroup, as every pod is in
//! production) makes sequential timed connects and then connects from
//! several workers for a while, to the server's pod address and to its
//! ClusterIP; the same checks before each measure that the client reaches
//! the server, the prober does not (policy runs), the prober reaches
//! `open`, and the client does not (its egress is isolated).

pub mod kube_router;
pub mod lab;
pub mod population;
pub mod probe;
pub mod report;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::services::Traffic;
use crate::services::client::{ClientArgs, ClientSummary};
use crate::services::cluster::Binaries;
use crate::services::iptables::Backend;
use crate::stats::{Samples, Summary};
use lab::{Lab, Loaded};
use population::{Role, Shape};
use probe::{Prober, reaches};

/// Everything a run is told.
#[derive(Debug, Clone)]
pub struct Settings {
    pub shape: Shape,
    /// Untimed connects before each client run.
    pub warmup: usize,
    /// Sequential timed connects per client run.
    pub connects: usize,
    /// Client runs per dataplane and target.
    pub rounds: usize,
    /// Workers and duration of the concurrent part.
    pub workers: usize,
    pub rate: Duration,
    /// Policy changes timed each way (0 skips the phase).
    pub changes: usize,
    /// The prober's spacing and per-attempt timeout.
    pub probe_every: Duration,
    pub probe_timeout: Duration,
    pub iptables: Backend,
    /// Creates in flight against the apiserver.
    pub concurrency: usize,
}

/// One dataplane's measurement.
#[derive(Debug, Clone, Default)]
pub struct Run {
    pub ran: bool,
    pub error: Option<String>,
    /// To the server's pod address, and to its ClusterIP.
    pub pod_ip: Option<Traffic>,
    pub cluster_ip: Option<Traffic>,
    /// From the agent's start (Ferry) or the ruleset's generation
    /// (kube-router) until the checked verdicts held.
    pub program: Option<Duration>,
}

/// kube-router's ruleset and its load.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub generate: Duration,
    pub ipset_restore: Duration,
    pub iptables_restore: Duration,
    pub rules: usize,
    pub chains: usize,
    pub sets: usize,
    pub set_entries: usize,
    pub bytes: usize,
    pub server: kube_router::PodChain,
    pub client: kube_router::PodChain,
    pub local_pods: usize,
    pub objects: (usize, usize, usize),
}

/// The change phase.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    pub count: usize,
    /// Deny-all created: API answer until the first refused attempt.
    pub deny: Summary,
    /// Deleted again: API answer until the first accepted attempt.
    pub allow: Summary,
    /// The create and delete calls themselves.
    pub api_write: Summary,
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Results {
    /// The machine's load average (1, 5, 15 min) before and after.
    pub load: (String, String),
    pub loaded: Loaded,
    pub baseline: Run,
    pub ferry: Run,
    pub kube_router: Run,
    pub rules: Option<Rules>,
    pub changes: Option<Changes>,
    pub versions: Versions,
}

#[derive(Debug, Clone, Default)]
pub struct Versions {
    pub agent: String,
    pub iptables: String,
    pub ipset: String,
}

fn stopped(stop: &AtomicBool) -> Result<()> {
    if stop.load(Ordering::Relaxed) {
        bail!("the run was stopped");
    }
    Ok(())
}

/// Runs every phase; `say` reports progress.
pub fn run(s: &Settings, bins: &Binaries, stop: &AtomicBool, say: fn(&str)) -> Result<Results> {
    s.shape.check().map_err(anyhow::Error::msg)?;
    crate::harness::require_tools(&["nsenter", "ip", "nft", "ipset", s.iptables.restore()])?;
    let versions = Versions {
        agent: crate::harness::version_of(&bins.agent, "--version"),
        iptables: crate::harness::version_of(Path::new(s.iptables.restore()), "--version"),
        ipset: crate::harness::version_of(Path::new("ipset"), "--version"),
    };
    let load_before = load_average();
    say(&format!(
        "building the world (1 node, {} pods)",
        Role::all(&s.shape).len()
    ));
    let mut lab = Lab::build(bins, &s.shape)?;
    lab.start_apiserver(bins)?;
    let underlay = lab.world.underlay().clone();
    let mut results = underlay
        .in_netns(|| -> Result<Results> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?;
            rt.block_on(measure(&lab, bins, s, stop, say))
        })
        .context("entering the underlay namespace")??;
    results.versions = versions;
    results.load.0 = load_before;
    results.load.1 = load_average();
    say("tearing the world down");
    drop(lab);
    Ok(results)
}

/// The first three fields of /proc/loadavg.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Records a failed run instead of ending the bench.
fn contain(run: &mut Run, r: Result<()>, what: &str, say: fn(&str)) {
    run.ran = true;
    if let Err(e) = r {
        say(&format!("{what} failed: {e:#}"));
        run.error = Some(format!("{e:#}"));
    }
}

async fn measure(
    lab: &Lab,
    bins: &Binaries,
    s: &Settings,
    stop: &AtomicBool,
    say: fn(&str),
) -> Result<Results> {
    let client = crate::services::api::client(&lab.kubeconfig).await?;
    crate::services::api::wait_ready(&client, Duration::from_secs(30))
        .await
        .with_context(|| lab.apiserver_output())?;
    say(&format!(
        "loading {} namespaces, {} remote + {} local pods, {} NetworkPolicies",
        s.shape.namespaces,
        s.shape.remote_pods,
        Role::all(&s.shape).len(),
        s.shape.policies
    ));
    let mut results = Results {
        loaded: crate::bounded("loading the API", Duration::from_secs(600), async {
            lab::load(&client, lab, &s.shape, s.concurrency)
                .await
                .map_err(|e| crate::BenchError::Check(format!("{e:#}")))
        })
        .await?,
        ..Results::default()
    };
    say(&format!(
        "loaded {} objects in {:.1} s",
        results.loaded.objects,
        results.loaded.wall.as_secs_f64()
    ));

    stopped(stop)?;
    say("baseline: agent without NetworkPolicy, no rules");
    let r = baseline(lab, bins, s, stop, &mut results.baseline);
    contain(&mut results.baseline, r, "baseline", say);

    stopped(stop)?;
    say("ferry: agent enforcing NetworkPolicy");
    let mut changes = None;
    let r = ferry(
        lab,
        bins,
        s,
        stop,
        say,
        &client,
        &mut results.ferry,
        &mut changes,
    )
    .await;
    contain(&mut results.ferry, r, "ferry", say);
    results.changes = changes;

    stopped(stop)?;
    say("kube-router: agent without NetworkPolicy + iptables/ipset ruleset");
    let dir = lab.world.state_dir().join("rules");
    let mut rules = crate::services::Rules::in_node(&lab.node().netns, &dir, s.iptables, stop)?;
    let r = kube_router_run(lab, bins, s, stop, &client, &mut rules, &mut results).await;
    let reset = reset_rules(&mut rules);
    contain(&mut results.kube_router, r.and(reset), "kube-router", say);
    Ok(results)
}

/// Empties the node's tables, then destroys its sets.
fn reset_rules(rules: &mut crate::services::Rules<'_>) -> Result<()> {
    rules.reset()?;
    rules.output(&["ipset", "destroy"])?;
    Ok(())
}

/// The verdicts every run checks: (from, to, what, allowed with policy).
fn checks(lab: &Lab) -> Result<Vec<(Role, SocketAddr, String, bool)>> {
    let server = lab.sink(Role::Server)?;
    let svc = SocketAddr::new(IpAddr::V4(lab::SERVER_SERVICE_IP), lab::SERVICE_PORT);
    let open = lab.sink(Role::Open)?;
    Ok(vec![
        (Role::Client, server, "client to server".into(), true),
        (
            Role::Client,
            svc,
            "client to the server's ClusterIP".into(),
            true,
        ),
        (Role::Prober, server, "prober to server".into(), false),
        (Role::Prober, open, "prober to open".into(), true),
        (Role::Client, open, "client to open".into(), false),
    ])
}

/// Waits until every check gives what `policy` says (no policy: all
/// connect); returns how long that took.
fn wait_verdicts(lab: &Lab, policy: bool, within: Duration, stop: &AtomicBool) -> Result<Duration> {
    let t0 = Instant::now();
    let checks = checks(lab)?;
    let timeout = Duration::from_millis(200);
    loop {
        let mut wrong = Vec::new();
        for (from, to, what, allowed) in &checks {
            let want = *allowed || !policy;
            if reaches(&lab.pod(*from)?.netns, *to, timeout)? != want {
                wrong.push(format!(
                    "{what} ({to}) {}",
                    if want { "refused" } else { "connected" }
                ));
            }
        }
        if wrong.is_empty() {
            return Ok(t0.elapsed());
        }
        stopped(stop)?;
        if t0.elapsed() > within {
            bail!("after {within:?}: {}", wrong.join("; "));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn client_args(s: &Settings, addr: SocketAddr, cgroup: PathBuf) -> ClientArgs {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    ClientArgs {
        addr,
        http_addr: addr,
        cgroup: Some(cgroup),
        warmup: s.warmup,
        connects: s.connects,
        http: 0,
        workers: s.workers,
        rate_ms: ms(s.rate),
        phase_ms: 30_000,
        timeout_ms: 1000,
    }
}

/// The client, run `s.rounds` times: latencies and failures pooled over
/// the rounds, each rate the median round's (a burst of other work on the
/// machine moves one round, not the result).
fn run_client(
    lab: &Lab,
    bins: &Binaries,
    s: &Settings,
    addr: SocketAddr,
    cgroup: &Path,
    stop: &AtomicBool,
) -> Result<Traffic> {
    let mut pooled = ClientSummary::default();
    let (mut seq, mut conc) = (Vec::new(), Vec::new());
    for _ in 0..s.rounds.max(1) {
        stopped(stop)?;
        let one = client_round(lab, bins, s, addr, cgroup, stop)?;
        let t = Traffic::of(one.clone());
        seq.push(t.connect_rate);
        conc.push(t.concurrent_rate);
        pooled.connect_ns.extend(one.connect_ns);
        pooled.connect_wall_ns += one.connect_wall_ns;
        pooled.errors += one.errors;
        pooled.first_error = pooled.first_error.or(one.first_error);
        pooled.concurrent.workers = one.concurrent.workers;
        pooled.concurrent.connections += one.concurrent.connections;
        pooled.concurrent.errors += one.concurrent.errors;
        pooled.concurrent.wall_ns += one.concurrent.wall_ns;
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let mut t = Traffic::of(pooled);
    t.connect_rate = median(seq);
    t.concurrent_rate = median(conc);
    Ok(t)
}

/// One run of the client in the client pod (this binary's `client`), to
/// `addr`.
fn client_round(
    lab: &Lab,
    bins: &Binaries,
    s: &Settings,
    addr: SocketAddr,
    cgroup: &Path,
    stop: &AtomicBool,
) -> Result<ClientSummary> {
    let args = client_args(s, addr, cgroup.to_path_buf());
    let mut cmd = Command::new(&bins.bench);
    cmd.arg("client").args(args.to_args());
    let limit = args.limit();
    let timed = lab
        .pod(Role::Client)?
        .netns
        .in_netns(move || crate::cni::exec::run_timed(&mut cmd, &[], limit, stop))
        .context("entering the client pod")?
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
    if summary.connect_ns.is_empty() || summary.errors > 0 {
        bail!(
            "{} of the client's connects to {addr} failed: {}",
            summary.errors,
            summary.first_error.as_deref().unwrap_or("none got through")
        );
    }
    Ok(summary)
}

/// Both client runs (pod address, ClusterIP) with the agent's cgroup.
fn traffic(
    lab: &Lab,
    bins: &Binaries,
    s: &Settings,
    cgroup: &Path,
    run: &mut Run,
    stop: &AtomicBool,
) -> Result<()> {
    let server = lab.sink(Role::Server)?;
    run.pod_ip = Some(run_client(lab, bins, s, server, cgroup, stop)?);
    stopped(stop)?;
    let svc = SocketAddr::new(IpAddr::V4(lab::SERVER_SERVICE_IP), lab::SERVICE_PORT);
    run.cluster_ip = Some(run_client(lab, bins, s, svc, cgroup, stop)?);
    Ok(())
}

fn baseline(
    lab: &Lab,
    bins: &Binaries,
    s: &Settings,
    stop: &AtomicBool,
    run: &mut Run,
) -> Result<()> {
    let (mut agent, _) = lab.start_agent(bins, "base", false)?;
    wait_verdicts(lab, false, Duration::from_secs(30), stop)?;
    traffic(lab, bins, s, &agent.hooks.cgroup, run, stop)?;
    agent.check_running()
}

#[allow(clippy::too_many_arguments)]
async fn ferry(
    lab: &Lab,
    bins: &Binaries,
    s: &Settings,
    stop: &AtomicBool,
    say: fn(&str),
    client: &kube::Client,
    run: &mut Run,
    changes: &mut Option<Changes>,
) -> Result<()> {
    let t0 = Instant::now();
    let (mut agent, _) = lab.start_agent(bins, "ferry", true)?;
    wait_verdicts(lab, true, Duration::from_secs(60), stop)
        .with_context(|| format!("Ferry's verdicts; the agent's log:\n{}", agent.log_tail()))?;
    run.program = Some(t0.elapsed());
    traffic(lab, bins, s, &agent.hooks.cgroup, run, stop)?;
    agent.check_running()?;
    if s.changes > 0 {
        stopped(stop)?;
        say(&format!("ferry: {} policy changes each way", s.changes));
        let mut c = Changes::default();
        if let Err(e) = change_phase(lab, s, client, &mut c, stop).await {
            c.errors.push(format!("{e:#}"));
        }
        *changes = Some(c);
        agent.check_running()?;
    }
    Ok(())
}

/// Creates and deletes the deny-all policy of `open` `s.changes` times,
/// timing each until the prober's attempts settle on the new verdict.
async fn change_phase(
    lab: &Lab,
    s: &Settings,
    client: &kube::Client,
    c: &mut Changes,
    stop: &AtomicBool,
) -> Result<()> {
    let prober = Prober::start(
        &lab.pod(Role::Prober)?.netns,
        lab.sink(Role::Open)?,
        s.probe_every,
        s.probe_timeout,
    )?;
    let policy = population::deny_open();
    let ns = Role::Open.namespace();
    let name = policy["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (mut deny, mut allow, mut write) = (Samples::new(), Samples::new(), Samples::new());
    // Every attempt from here on must have the verdict; 5 in a row settle it.
    let settle = 5;
    let within = Duration::from_secs(10);
    let until = |want: bool, since: Instant| {
        let prober = &prober;
        async move {
            let deadline = since + within;
            loop {
                if let Some(at) = prober.changed(since, want, settle) {
                    return Some(at.saturating_duration_since(since));
                }
                if Instant::now() > deadline {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    };
    // Open to begin with.
    if until(true, Instant::now()).await.is_none() {
        bail!("the prober never reached open before the changes");
    }
    for i in 0..s.changes {
        stopped(stop)?;
        prober.clear();
        let t = Instant::now();
        lab::create_policy(client, &policy).await?;
        let answered = Instant::now();
        write.push(answered - t);
        match until(false, answered).await {
            Some(d) => deny.push(d),
            None => {
                c.errors.push(format!(
                    "change {i}: deny-all never enforced within {within:?}"
                ));
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let t = Instant::now();
        lab::delete_policy(client, &ns, &name).await?;
        let answered = Instant::now();
        write.push(answered - t);
        match until(true, answered).await {
            Some(d) => allow.push(d),
            None => {
                c.errors.push(format!(
                    "change {i}: deletion never enforced within {within:?}"
                ));
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.count = s.changes;
    c.deny = deny.summary();
    c.allow = allow.summary();
    c.api_write = write.summary();
    Ok(())
}

async fn kube_router_run(
    lab: &Lab,
    bins: &Binaries,
    s: &Settings,
    stop: &AtomicBool,
    client: &kube::Client,
    rules: &mut crate::services::Rules<'_>,
    results: &mut Results,
) -> Result<()> {
    let (mut agent, _) = lab.start_agent(bins, "kr", false)?;
    // Ferry's enforcing programs are gone from every veth: all open.
    wait_verdicts(lab, false, Duration::from_secs(30), stop)
        .context("the verdicts without NetworkPolicy before loading the rules")?;
    rules.reset()?;
    let (namespaces, pods, policies) = lab::snapshot(client).await?;
    let t0 = Instant::now();
    let node = kube_router::Node {
        name: lab.node().name.clone(),
        service_cidr: crate::services::model::SERVICE_CIDR.into(),
        node_ports: "30000:32767".into(),
        version: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos().to_string())
            .unwrap_or_default(),
    };
    let rs = kube_router::generate(&namespaces, &pods, &policies, &node)?;
    let generate = t0.elapsed();
    let dir = lab.world.state_dir().join("rules");
    let set_file = dir.join("kube-router.ipset");
    std::fs::write(&set_file, &rs.ipset)
        .with_context(|| format!("writing {}", set_file.display()))?;
    let i0 = Instant::now();
    rules.output(&[
        "ipset",
        "restore",
        "-exist",
        "-file",
        &set_file.to_string_lossy(),
    ])?;
    let ipset_restore = i0.elapsed();
    let iptables_restore = rules.iptables_restore("kube-router.rules", &rs.iptables, false)?;
    let key = |r: Role| format!("{}/{}", r.namespace(), r.name());
    results.rules = Some(Rules {
        generate,
        ipset_restore,
        iptables_restore,
        rules: rs.rules,
        chains: rs.chains,
        sets: rs.sets,
        set_entries: rs.set_entries,
        bytes: rs.iptables.len() + rs.ipset.len(),
        server: rs
            .pod_chains
            .get(&key(Role::Server))
            .copied()
            .unwrap_or_default(),
        client: rs
            .pod_chains
            .get(&key(Role::Client))
            .copied()
            .unwrap_or_default(),
        local_pods: rs.pod_chains.len(),
        objects: (namespaces.len(), pods.len(), policies.len()),
    });
    drop(rs);
    wait_verdicts(lab, true, Duration::from_secs(10), stop).context("kube-router's verdicts")?;
    let run = &mut results.kube_router;
    run.program = Some(t0.elapsed());
    traffic(lab, bins, s, &agent.hooks.cgroup, run, stop)?;
    agent.check_running()
}
