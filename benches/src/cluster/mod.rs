//! The whole-cluster benchmark of `ferry up` (issue 12, section 5), on
//! clusters built by [`ferry_cluster::Cluster`] exactly as `ferry up`
//! builds them:
//! 1. [`startup`]: `Cluster::up` with 1 and 3 nodes until usable (nodes
//!    Ready, agents healthy, DNS answering, which `up` waits for, then a
//!    pod that reaches `kubernetes.default` through its ClusterIP has
//!    Succeeded), several runs each; once through the `ferry` CLI (the
//!    process time of `ferry up`); the idle RSS of a 3-node cluster's
//!    processes.
//! 2. [`pods`]: on that 3-node cluster, each of N pods timed from its
//!    create call to Running, Ready, ready in its Service's EndpointSlice
//!    (watch events) and reachable through the Service's ClusterIP (a probe
//!    process in node 0's namespace and its pods' cgroup, so the agent's
//!    connect-time balancing applies); then a Deployment scaled from 0 on a
//!    10-node cluster, with where the time went.
//! 3. [`load`]: Services and Pods (objects only, on fake nodes, ready
//!    status written directly) loaded into a lone `ferry-apiserver`, and
//!    the time until its controllers are idle.
//! 4. [`attach`]: on a 1-node cluster whose agent runs with
//!    `--pod-devices`, veths made one at a time, each timed until the
//!    kernel lists the agent's TC programs on it; then pods created through
//!    the API, each one's veth programs against its Ready.
//!
//! A phase that fails is reported as such and the next one runs. Every
//! wait is bounded; every cluster is dropped (all its namespaces, cgroups
//! and processes removed) before the next is built.

pub mod attach;
pub mod load;
pub mod pods;
pub mod report;
pub mod startup;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};

/// The phases, by the key `--phases` names them.
pub const PHASES: &[&str] = &["up", "cli", "pods", "scale", "load", "attach"];

/// Everything a run is told.
#[derive(Debug, Clone)]
pub struct Settings {
    pub quick: bool,
    pub phases: Vec<String>,
    /// Directory of `ferry` and the component binaries.
    pub bin_dir: PathBuf,
    /// This binary (re-run as the in-node probe).
    pub bench: PathBuf,
    /// Node counts of the startup runs, and runs of each.
    pub up_nodes: Vec<usize>,
    pub up_runs: usize,
    /// How long the 3-node cluster idles before its RSS is read.
    pub idle: Duration,
    /// Pods timed one by one, and how many are in flight at once.
    pub pods: usize,
    pub pod_concurrency: usize,
    /// The Deployment scale-up: nodes, replicas, time limit.
    pub scale_nodes: usize,
    pub scale_replicas: usize,
    pub scale_limit: Duration,
    /// The object load: Services, Pods (spread evenly over the Services
    /// and over the fake nodes), fake Nodes, requests in flight, limit.
    pub load_services: usize,
    pub load_pods: usize,
    pub load_nodes: usize,
    pub load_concurrency: usize,
    pub load_limit: Duration,
    /// The attach phase: veths timed one by one, then pods created through
    /// the API (0: none).
    pub attach_veths: usize,
    pub attach_pods: usize,
}

impl Settings {
    pub fn runs(&self, phase: &str) -> bool {
        self.phases.iter().any(|p| p == phase)
    }
}

/// How a phase ended when it did not complete.
#[derive(Debug, Clone)]
pub struct Failure {
    pub phase: &'static str,
    pub error: String,
}

/// Everything measured.
#[derive(Debug, Default)]
pub struct Results {
    pub ups: Vec<startup::UpRun>,
    pub cli: Option<startup::CliRun>,
    pub memory: Option<startup::Memory>,
    pub pods: Option<pods::Latency>,
    pub scale: Option<pods::Scale>,
    pub load: Option<load::LoadRun>,
    pub attach: Option<attach::Attach>,
    pub failures: Vec<Failure>,
}

impl Results {
    fn record<T>(&mut self, phase: &'static str, r: Result<T>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                eprintln!("cluster-bench: {phase}: {e:#}");
                self.failures.push(Failure {
                    phase,
                    error: format!("{e:#}"),
                });
                None
            }
        }
    }
}

/// Fails once `stop` is set (ctrl-c, SIGTERM, the run's time limit).
pub fn check_stop(stop: &AtomicBool) -> Result<()> {
    if stop.load(Ordering::Relaxed) {
        bail!("stopped");
    }
    Ok(())
}

/// A multi-threaded runtime for the harness's own API calls and watches
/// (never the cluster's: `Cluster::up` and its drop run outside it).
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Runs every phase asked for, in order.
pub fn run(s: &Settings, stop: &AtomicBool, say: fn(&str)) -> Result<Results> {
    let rt = runtime()?;
    let mut r = Results::default();
    if s.runs("up") || s.runs("pods") {
        let kept = startup::ups(s, &rt, stop, say, &mut r);
        if let Some((mut cluster, dir)) = kept {
            if s.runs("up") {
                let m = startup::memory(&cluster, s.idle, stop);
                r.memory = r.record("memory", m);
            }
            if s.runs("pods") {
                say(&format!(
                    "pods: {} pods, {} at a time",
                    s.pods, s.pod_concurrency
                ));
                let l = pods::latency(&mut cluster, s, &rt, stop);
                r.pods = r.record("pods", l);
            }
            say("taking the 3-node cluster down");
            // The cluster before its data directory.
            drop(cluster);
            drop(dir);
        }
    }
    if s.runs("cli") && check_stop(stop).is_ok() {
        say("cli: ferry up --nodes 3");
        let try_reach = !r.failures.iter().any(|f| f.phase == "first pod");
        let c = startup::cli(s, &rt, stop, try_reach);
        r.cli = r.record("cli", c);
    }
    if s.runs("scale") && check_stop(stop).is_ok() {
        say(&format!(
            "scale: a Deployment from 0 to {} on {} nodes",
            s.scale_replicas, s.scale_nodes
        ));
        let sc = pods::scale(s, &rt, stop, say);
        r.scale = r.record("scale", sc);
    }
    if s.runs("load") && check_stop(stop).is_ok() {
        say(&format!(
            "load: {} Services and {} Pods into ferry-apiserver",
            s.load_services, s.load_pods
        ));
        let l = load::run(s, &rt, stop, say);
        r.load = r.record("load", l);
    }
    if s.runs("attach") && check_stop(stop).is_ok() {
        say(&format!(
            "attach: {} veths and {} pods on a 1-node cluster",
            s.attach_veths, s.attach_pods
        ));
        let a = attach::run(s, &rt, stop, say);
        r.attach = r.record("attach", a);
    }
    Ok(r)
}
