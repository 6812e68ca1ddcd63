//! The cluster DNS benchmark: `ferry-dns` answering from a
//! `ferry-apiserver` holding N Services and M Pods, against Debian's
//! `unbound` and `knot` serving the equivalent static zone, on the same
//! machine in the same run, each pinned to CPU 1 with dnsperf on CPU 0.
//!
//! - [`model`]: the cluster (namespaces, ClusterIP / dual-stack / headless
//!   Services, endpoints, Pods), its objects, the static zone, the query
//!   mix and the answer each query should get;
//! - [`api`]: loading it into the apiserver with kube-rs;
//! - [`servers`]: the processes (apiserver, ferry-dns, unbound, knotd) and
//!   `dig`;
//! - [`dnsperf`]: one dnsperf run and its output;
//! - [`report`]: the markdown table.
//!
//! Everything runs in the node namespace of a one-node testbed world (its
//! own prefix, `lo` up, removed on drop and swept by the next run when this
//! one was killed); every process is spawned in it through `nsenter`, and
//! every socket this process makes is made by a thread that entered it.
//! Nothing touches the root namespace.

pub mod api;
pub mod dnsperf;
pub mod model;
pub mod report;
pub mod servers;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use ferry_testbed::{Netns, Process, World};

use crate::process::Rss;
use api::LoadTimes;
use dnsperf::{Load, Perf};
use model::{Cluster, Query, QueryKind};
use servers::{Binaries, Which};

/// Everything a run is told.
#[derive(Debug, Clone)]
pub struct Settings {
    pub namespaces: usize,
    pub services: usize,
    pub pods: usize,
    /// API requests in flight during the load.
    pub concurrency: usize,
    /// Length of every dnsperf run.
    pub duration: Duration,
    /// Rounds: every server gets a full-speed and a fixed-rate run per round.
    pub rounds: usize,
    /// Rate of the fixed-rate (latency) runs.
    pub latency_qps: u32,
    /// Lines of the query file.
    pub queries: usize,
    /// dnsperf `-q` and `-c`.
    pub outstanding: usize,
    pub clients: usize,
    pub servers: Vec<Which>,
    /// The apiserver's `--controllers`.
    pub controllers: String,
    /// Bound on the load and on a server's readiness.
    pub load_timeout: Duration,
    pub ready_timeout: Duration,
    pub seed: u64,
}

/// One server's results.
#[derive(Debug, Clone)]
pub struct ServerRun {
    pub which: Which,
    pub version: String,
    pub error: Option<String>,
    /// Spawn until ready: ferry-dns's `/ready` answered 200; the others
    /// answered the probe query right (their zone loaded).
    pub ready: Option<Duration>,
    pub rss_ready: Option<Rss>,
    pub rss_end: Option<Rss>,
    /// Full-speed runs, one per round.
    pub full: Vec<Perf>,
    /// Fixed-rate runs, one per round.
    pub fixed: Vec<Perf>,
}

impl ServerRun {
    fn new(which: Which, version: String) -> Self {
        Self {
            which,
            version,
            error: None,
            ready: None,
            rss_ready: None,
            rss_end: None,
            full: Vec::new(),
            fixed: Vec::new(),
        }
    }

    /// The round with the most queries per second.
    pub fn best(&self) -> Option<&Perf> {
        self.full.iter().max_by(|a, b| a.qps.total_cmp(&b.qps))
    }

    /// Latencies of every fixed-rate round, pooled.
    pub fn fixed_latencies(&self) -> crate::stats::Summary {
        let mut all = crate::stats::Samples::new();
        for p in &self.fixed {
            all.extend(p.latencies.clone());
        }
        all.summary()
    }
}

/// The answer-agreement check before the measurements.
#[derive(Debug, Clone, Default)]
pub struct Sanity {
    pub names: usize,
    /// Queries where a server's answer differed from the model's.
    pub mismatches: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Results {
    pub apiserver_version: String,
    pub dnsperf_version: String,
    pub load: LoadTimes,
    pub settle: Duration,
    pub services_by_kind: [usize; 3],
    pub slices: usize,
    pub zone_records: usize,
    pub zone_bytes: usize,
    pub mix: BTreeMap<QueryKind, usize>,
    pub sanity: Sanity,
    pub servers: Vec<ServerRun>,
    pub started_at: Instant,
    /// /proc/loadavg's first three fields before the load and after the
    /// last dnsperf run (whatever else runs here shares the cores).
    pub loadavg: (String, String),
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// The whole run; `say` reports progress.
pub fn run(s: &Settings, bins: &Binaries, stop: &AtomicBool, say: fn(&str)) -> Result<Results> {
    let world = World::builder()
        .nodes(1)
        .build()
        .context("building the bench namespace (a one-node testbed world)")?;
    let netns = world.node(0).netns.clone();
    let dir = world.state_dir().join("dns");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    say(&format!("running in namespace {}", netns.name()));
    let result = netns
        .in_netns(|| inside(s, bins, &netns, &dir, stop, say))
        .context("entering the bench namespace")?;
    if let Err(e) = world.close() {
        say(&format!("cleanup: {e}"));
    }
    result
}

fn check_stop(stop: &AtomicBool) -> Result<()> {
    if stop.load(Ordering::Relaxed) {
        bail!("stopped");
    }
    Ok(())
}

/// A started DNS server.
struct Running {
    which: Which,
    process: Process,
}

fn inside(
    s: &Settings,
    bins: &Binaries,
    netns: &Netns,
    dir: &Path,
    stop: &AtomicBool,
    say: fn(&str),
) -> Result<Results> {
    let started_at = Instant::now();
    let load_before = loadavg();
    let mut cluster =
        Cluster::plan(s.namespaces, s.services, s.pods).map_err(anyhow::Error::msg)?;
    let (apiserver, kubeconfig) =
        servers::start_apiserver(netns, &bins.apiserver, dir, &s.controllers)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the client runtime")?;
    say(&format!(
        "loading {} namespaces, {} Services, {} Pods into the apiserver",
        s.namespaces, s.services, s.pods
    ));
    let load = runtime.block_on(async {
        let client = crate::services::api::client(&kubeconfig).await?;
        crate::services::api::wait_ready(&client, Duration::from_secs(30)).await?;
        api::load(&client, &mut cluster, s.concurrency, s.load_timeout, stop).await
    });
    drop(runtime);
    let load = load.with_context(|| format!("apiserver log:\n{}", servers::tail(&apiserver)))?;
    say(&format!(
        "loaded in {:.1} s ({} requests); waiting for the apiserver to settle",
        load.total.as_secs_f64(),
        load.requests
    ));
    let settle = match api::settle(apiserver.pid(), Duration::from_secs(120), stop) {
        Ok(d) => d,
        Err(e) => {
            check_stop(stop)?;
            say(&format!("{e:#}; going on"));
            Duration::from_secs(120)
        }
    };

    let zone = model::zone_file(&cluster);
    let zone_path = dir.join("cluster.local.zone");
    std::fs::write(&zone_path, &zone)
        .with_context(|| format!("writing {}", zone_path.display()))?;
    let queries = model::queries(&cluster, s.queries, s.seed);
    let query_path = dir.join("queries.txt");
    std::fs::write(&query_path, model::query_file(&queries))
        .with_context(|| format!("writing {}", query_path.display()))?;
    let probe = queries
        .iter()
        .find(|q| q.kind == QueryKind::ServiceA)
        .cloned()
        .context("the mix has no Service A query")?;

    let mut runs: Vec<ServerRun> = Vec::new();
    let mut running: Vec<Running> = Vec::new();
    // The static servers first: ferry-dns forwards to unbound.
    let order: Vec<Which> = [Which::Unbound, Which::Knot, Which::FerryDns]
        .into_iter()
        .filter(|w| s.servers.contains(w))
        .collect();
    for which in order {
        check_stop(stop)?;
        let version = match which {
            Which::FerryDns => bins.ferry_dns.as_deref().map_or_else(
                || "?".into(),
                |b| servers::version(b, &["--version"], "ferry-dns"),
            ),
            Which::Unbound => servers::version(&bins.unbound, &["-V"], "Version"),
            Which::Knot => servers::version(&bins.knotd, &["-V"], "version"),
        };
        let mut run = ServerRun::new(which, version);
        say(&format!("starting {}", which.name()));
        match start(
            which,
            bins,
            netns,
            dir,
            &zone_path,
            &kubeconfig,
            &probe,
            s,
            stop,
        ) {
            Ok((process, ready)) => {
                run.ready = Some(ready);
                run.rss_ready = Rss::of(process.pid()).ok();
                say(&format!(
                    "{} ready after {:.2} s",
                    which.name(),
                    ready.as_secs_f64()
                ));
                running.push(Running { which, process });
            }
            Err(e) => {
                say(&format!("{} did not start: {e:#}", which.name()));
                run.error = Some(format!("{e:#}"));
            }
        }
        runs.push(run);
    }

    let sanity = sanity_check(&queries, &running, bins, netns, stop)?;
    for m in &sanity.mismatches {
        say(&format!("answer check: {m}"));
    }

    for round in 0..s.rounds {
        let mut turn: Vec<usize> = (0..running.len()).collect();
        if round % 2 == 1 {
            turn.reverse();
        }
        for i in turn {
            check_stop(stop)?;
            let Some(r) = running.get_mut(i) else {
                continue;
            };
            let Some(run) = runs.iter_mut().find(|x| x.which == r.which) else {
                continue;
            };
            if run.error.is_some() {
                continue;
            }
            if let Some(status) = r.process.try_wait()? {
                run.error = Some(format!(
                    "exited ({status}) before round {}:\n{}",
                    round + 1,
                    servers::tail(&r.process)
                ));
                continue;
            }
            let mut load = Load {
                dnsperf: bins.dnsperf.clone(),
                port: r.which.port(),
                queries: query_path.clone(),
                duration: s.duration,
                outstanding: s.outstanding,
                clients: s.clients,
                rate: None,
            };
            let tag = format!("{}-{}", r.which.name(), round + 1);
            let pid = r.process.pid();
            match dnsperf::run(netns, &load, pid, dir, &format!("{tag}-full"), stop) {
                Ok(p) => {
                    say(&format!(
                        "round {}: {} {:.0} queries/s (server CPU {:.2}, dnsperf CPU {:.2}), {} lost",
                        round + 1,
                        r.which.name(),
                        p.qps,
                        p.server_cores(),
                        p.load_cores(),
                        p.lost
                    ));
                    run.full.push(p);
                }
                Err(e) => {
                    run.error = Some(format!("round {} full-speed run: {e:#}", round + 1));
                    continue;
                }
            }
            check_stop(stop)?;
            load.rate = Some(s.latency_qps);
            match dnsperf::run(netns, &load, pid, dir, &format!("{tag}-fixed"), stop) {
                Ok(mut p) => {
                    let (p50, p99) = (p.latencies.p50(), p.latencies.p99());
                    say(&format!(
                        "round {}: {} at {} queries/s: p50 {:?}, p99 {:?}",
                        round + 1,
                        r.which.name(),
                        s.latency_qps,
                        p50.unwrap_or_default(),
                        p99.unwrap_or_default()
                    ));
                    run.fixed.push(p);
                }
                Err(e) => {
                    run.error = Some(format!("round {} fixed-rate run: {e:#}", round + 1));
                }
            }
        }
    }
    let load_after = loadavg();
    for r in &running {
        if let Some(run) = runs.iter_mut().find(|x| x.which == r.which) {
            run.rss_end = Rss::of(r.process.pid()).ok();
        }
    }
    drop(running);
    drop(apiserver);
    let services_by_kind = [
        cluster.count(model::Kind::ClusterIp),
        cluster.count(model::Kind::DualStack),
        cluster.count(model::Kind::Headless),
    ];
    Ok(Results {
        apiserver_version: servers::version(&bins.apiserver, &["--version"], "ferry"),
        dnsperf_version: servers::version(&bins.dnsperf, &["-h"], "Version"),
        load,
        settle,
        services_by_kind,
        slices: services_by_kind[2],
        zone_records: zone
            .lines()
            .filter(|l| !l.starts_with('$') && !l.is_empty())
            .count(),
        zone_bytes: zone.len(),
        mix: model::mix(&queries),
        sanity,
        servers: runs,
        started_at,
        loadavg: (load_before, load_after),
    })
}

/// Starts one server and waits until it is ready; returns it and the time
/// from spawn to ready.
#[allow(clippy::too_many_arguments)]
fn start(
    which: Which,
    bins: &Binaries,
    netns: &Netns,
    dir: &Path,
    zone: &Path,
    kubeconfig: &Path,
    probe: &Query,
    s: &Settings,
    stop: &AtomicBool,
) -> Result<(Process, Duration)> {
    let spawned = Instant::now();
    let mut process = match which {
        Which::FerryDns => {
            let bin = bins
                .ferry_dns
                .as_deref()
                .context("no ferry-dns binary given")?;
            servers::start_ferry_dns(netns, bin, kubeconfig)?
        }
        Which::Unbound => servers::start_unbound(netns, &bins.unbound, dir, zone)?,
        Which::Knot => servers::start_knot(netns, &bins.knotd, dir, zone)?,
    };
    let deadline = spawned + s.ready_timeout;
    let mut last = String::from("not asked yet");
    loop {
        check_stop(stop)?;
        if let Some(status) = process.try_wait()? {
            bail!(
                "{} exited ({status}):\n{}",
                which.name(),
                servers::tail(&process)
            );
        }
        let ready = match which {
            Which::FerryDns => match servers::ready_status() {
                Ok(200) => true,
                Ok(code) => {
                    last = format!("/ready answered {code}");
                    false
                }
                Err(e) => {
                    last = format!("/ready: {e:#}");
                    false
                }
            },
            _ => match servers::ask(netns, &bins.dig, which.port(), probe, stop) {
                Ok(a) if servers::matches(probe, &a) => true,
                Ok(a) => {
                    last = format!("{} {} answered {a}", probe.name, probe.rtype);
                    false
                }
                Err(e) => {
                    last = format!("{e:#}");
                    false
                }
            },
        };
        if ready {
            let took = spawned.elapsed();
            // ferry-dns ready: it must also answer.
            if which == Which::FerryDns {
                let a = servers::ask(netns, &bins.dig, which.port(), probe, stop)?;
                if !servers::matches(probe, &a) {
                    bail!(
                        "ferry-dns was ready but answered {} {} with {a} (expected {:?})",
                        probe.name,
                        probe.rtype,
                        probe.answers
                    );
                }
            }
            return Ok((process, took));
        }
        if Instant::now() > deadline {
            bail!(
                "{} not ready within {:?}: {last}\n{}",
                which.name(),
                s.ready_timeout,
                servers::tail(&process)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asks every running server 3 queries of each kind and compares each
/// answer with the model's (and so with the other servers').
fn sanity_check(
    queries: &[Query],
    running: &[Running],
    bins: &Binaries,
    netns: &Netns,
    stop: &AtomicBool,
) -> Result<Sanity> {
    let sample = model::sample(queries, 3);
    let mut out = Sanity {
        names: sample.len(),
        mismatches: Vec::new(),
    };
    for q in &sample {
        for r in running {
            let a = servers::ask(netns, &bins.dig, r.which.port(), q, stop)?;
            if !servers::matches(q, &a) {
                out.mismatches.push(format!(
                    "{} {} {}: got {a} (TTLs {:?}), expected {} [{}]",
                    r.which.name(),
                    q.name,
                    q.rtype,
                    a.ttls,
                    q.rcode,
                    q.answers.join(", ")
                ));
            }
        }
    }
    Ok(out)
}
