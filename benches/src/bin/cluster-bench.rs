//! `cluster-bench`: `ferry up` measured whole (issue 12, section 5): time
//! to a usable cluster with 1 and 3 nodes (library and CLI), idle memory,
//! pod create to reachable, a Deployment scaled from 0, Services and
//! Pods loaded into ferry-apiserver, and pods' veths until the agent's
//! programs are on them; written as a markdown table (see
//! `ferry_benches::cluster`).
//!
//! Run it as root through `cargo xtask bench cluster`, which builds the
//! release binaries first; `-- --quick` runs every phase at small sizes.
//! Every cluster lives in a testbed world (namespaces, a child cgroup and
//! bpffs directory per node), removed at the end, on error, on ctrl-c and
//! on SIGTERM.
//!
//! `cluster-bench probe` is the in-node helper the run starts itself.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use ferry_benches::cluster::{self, PHASES, Settings};
use ferry_benches::harness;
use ferry_benches::report::RunInfo;

#[derive(Debug, Parser)]
#[command(
    name = "cluster-bench",
    about = "ferry up measured whole: startup, memory, pod latency, scale, object load, veth attach",
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    /// The `ferry` binary; the components are taken from its directory.
    #[arg(long)]
    ferry: Option<PathBuf>,
    /// Phases to run (up, cli, pods, scale, load, attach; default: all).
    #[arg(long, value_delimiter = ',')]
    phases: Option<Vec<String>>,
    /// Startup runs per node count (default 5; --quick: 2).
    #[arg(long)]
    runs: Option<usize>,
    /// Pods timed create to reachable (default 200; --quick: 30).
    #[arg(long)]
    pods: Option<usize>,
    #[arg(long, default_value_t = 10)]
    pod_concurrency: usize,
    /// Nodes and replicas of the scale-up (default 10 and 1000; --quick: 3
    /// and 60).
    #[arg(long)]
    scale_nodes: Option<usize>,
    #[arg(long)]
    scale_replicas: Option<usize>,
    /// Seconds the scale-up may take (default 300; --quick: 60).
    #[arg(long)]
    scale_limit_secs: Option<u64>,
    /// Services and Pods of the object load (default 10000 and 100000;
    /// --quick: 200 and 2000).
    #[arg(long)]
    load_services: Option<usize>,
    #[arg(long)]
    load_pods: Option<usize>,
    /// Veths timed until the agent's programs are on them (default 100;
    /// --quick: 20), then pods created through the API, Ready against
    /// their veth's programs (default 20; --quick: 5; 0: none).
    #[arg(long)]
    attach_veths: Option<usize>,
    #[arg(long)]
    attach_pods: Option<usize>,
    /// Small sizes everywhere: a smoke run of a couple of minutes.
    #[arg(long)]
    quick: bool,
    /// Time limit, in seconds, of the whole run.
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    timeout_secs: u64,
    #[arg(long, default_value = "target/bench/cluster.md")]
    out: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Sub {
    #[command(hide = true)]
    Probe {
        #[arg(long)]
        cgroup: Option<PathBuf>,
    },
}

fn say(msg: &str) {
    eprintln!("cluster-bench: {msg}");
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Some(Sub::Probe { cgroup }) => cluster::pods::probe_main(cgroup.as_deref()),
        None => run(&cli),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("cluster-bench: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn settings(cli: &Cli) -> Result<Settings> {
    let q = cli.quick;
    let ferry = harness::beside("ferry", "ferry", cli.ferry.as_ref(), "cluster")?;
    let phases = cli
        .phases
        .clone()
        .unwrap_or_else(|| PHASES.iter().map(|p| (*p).to_string()).collect());
    if let Some(p) = phases.iter().find(|p| !PHASES.contains(&p.as_str())) {
        bail!("unknown phase {p:?} (known: {})", PHASES.join(", "));
    }
    let pick = |given: Option<usize>, full: usize, quick: usize| {
        given.unwrap_or(if q { quick } else { full })
    };
    let scale_nodes = pick(cli.scale_nodes, 10, 3);
    if !(1..=ferry_testbed::MAX_NODES).contains(&scale_nodes) {
        bail!(
            "--scale-nodes must be within 1..={}",
            ferry_testbed::MAX_NODES
        );
    }
    Ok(Settings {
        quick: q,
        phases,
        bin_dir: ferry
            .parent()
            .context("the ferry binary has no directory")?
            .to_path_buf(),
        bench: std::env::current_exe().context("finding this binary")?,
        up_nodes: vec![1, 3],
        up_runs: pick(cli.runs, 5, 2).clamp(1, 50),
        idle: Duration::from_secs(if q { 2 } else { 5 }),
        pods: pick(cli.pods, 200, 30).clamp(1, 300),
        pod_concurrency: cli.pod_concurrency.clamp(1, 100),
        scale_nodes,
        scale_replicas: pick(cli.scale_replicas, 1000, 60).clamp(1, scale_nodes * 110),
        scale_limit: Duration::from_secs(cli.scale_limit_secs.unwrap_or(if q { 60 } else { 300 })),
        load_services: pick(cli.load_services, 10_000, 200).max(1),
        load_pods: pick(cli.load_pods, 100_000, 2000),
        load_nodes: if q { 10 } else { 100 },
        load_concurrency: 64,
        load_limit: Duration::from_secs(if q { 120 } else { 900 }),
        attach_veths: pick(cli.attach_veths, 100, 20).clamp(1, 500),
        attach_pods: pick(cli.attach_pods, 20, 5).min(100),
    })
}

fn run(cli: &Cli) -> Result<()> {
    let started = Instant::now();
    if !ferry_testbed::is_root() {
        bail!("needs root: it builds clusters in network namespaces with eBPF and cgroups");
    }
    let s = settings(cli)?;
    let limit = Duration::from_secs(cli.timeout_secs);
    let results = {
        let s = s.clone();
        harness::run_watched("cluster-bench", limit, say, move |stop| {
            cluster::run(&s, &stop, say)
        })?
    };
    let results = results.context("the benchmark")?;
    let info = RunInfo::gather(started.elapsed());
    let table = cluster::report::markdown(&s, &info, &results);
    harness::write_table(&cli.out, &table, say)?;
    Ok(())
}
