//! `netpol-bench`: new connections between pods with 1,000 NetworkPolicies
//! in place, through Ferry's eBPF enforcement and through a
//! kube-router-style iptables + ipset ruleset made from the same policies,
//! against no policy; and how long a policy change takes to be enforced
//! (see `ferry_benches::netpol`). Writes a markdown table.
//!
//! Run it as root through `cargo xtask bench policy`, which builds the
//! release binaries first; `-- --quick` makes a small check. Everything
//! happens inside a testbed world (namespaces `ft…`, a child cgroup and a
//! bpffs directory per agent), removed at the end, on error, on ctrl-c and
//! on SIGTERM, and swept by the next run when this one was killed outright.
//!
//! `netpol-bench client …` and `netpol-bench sink …` are the in-pod client
//! and connect sink the run starts itself.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use ferry_benches::harness;
use ferry_benches::netpol::population::Shape;
use ferry_benches::netpol::{self, Settings};
use ferry_benches::report::RunInfo;
use ferry_benches::services::client::{self, ClientArgs};
use ferry_benches::services::cluster::Binaries;
use ferry_benches::services::iptables::Backend;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum IptablesArg {
    /// iptables-legacy (x_tables).
    Legacy,
    /// iptables-nft (the same rules in nf_tables).
    Nft,
}

#[derive(Debug, Parser)]
#[command(
    name = "netpol-bench",
    about = "Connections under 1,000 NetworkPolicies: Ferry's eBPF against kube-router's iptables + ipset, and policy change to enforcement",
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    /// ferry-apiserver (default: beside this binary).
    #[arg(long)]
    apiserver: Option<PathBuf>,
    /// ferry-agent (default: beside this binary).
    #[arg(long)]
    agent: Option<PathBuf>,
    /// ferry-cni (default: beside this binary).
    #[arg(long)]
    cni: Option<PathBuf>,
    /// ferry-netexec (default: beside this binary; unused, accepted as the
    /// other benches are given it).
    #[arg(long)]
    netexec: Option<PathBuf>,
    /// NetworkPolicies in all.
    #[arg(long)]
    policies: Option<usize>,
    /// Of those, the ones selecting the server.
    #[arg(long)]
    server_policies: Option<usize>,
    /// Of those, the egress ones selecting the client.
    #[arg(long, default_value_t = 10)]
    client_policies: usize,
    /// Pods on other nodes (API objects only).
    #[arg(long)]
    remote_pods: Option<usize>,
    /// Namespaces.
    #[arg(long)]
    namespaces: Option<usize>,
    /// Real pods on the node besides server, client, open and prober.
    #[arg(long, default_value_t = 12)]
    idle_pods: usize,
    /// Sequential timed connects per client run.
    #[arg(long)]
    connects: Option<usize>,
    /// Client runs per dataplane and target (rates: the median run's;
    /// latencies: pooled).
    #[arg(long)]
    rounds: Option<usize>,
    /// Workers of the concurrent part.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Seconds the concurrent part runs.
    #[arg(long)]
    rate_secs: Option<f64>,
    /// Policy changes timed each way (0 skips them).
    #[arg(long)]
    changes: Option<usize>,
    /// Milliseconds between the prober's attempts.
    #[arg(long, default_value_t = 2)]
    probe_every_ms: u64,
    /// Milliseconds each attempt waits for an answer.
    #[arg(long, default_value_t = 50)]
    probe_timeout_ms: u64,
    /// Which iptables loads kube-router's rules.
    #[arg(long, value_enum, default_value_t = IptablesArg::Legacy)]
    iptables: IptablesArg,
    /// A small run: 100 policies, 100 remote pods, 500 connects, 1 round,
    /// 10 changes
    /// (explicit options still win).
    #[arg(long)]
    quick: bool,
    /// Creates in flight against the apiserver.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Time limit, in seconds, of the whole run.
    #[arg(long, default_value_t = 1800, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    timeout_secs: u64,
    /// Where the markdown table goes.
    #[arg(long, default_value = "target/bench/netpol.md")]
    out: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// The in-pod client (started by the run itself).
    #[command(hide = true)]
    Client(ClientArgs),
    /// The connect sink in the server pods (started by the run itself).
    #[command(hide = true)]
    Sink {
        #[arg(long)]
        port: u16,
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
}

fn say(msg: &str) {
    eprintln!("netpol-bench: {msg}");
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Sub::Sink { port, threads }) => {
            return match ferry_benches::services::sink::serve(*port, *threads) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("netpol-bench sink: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Sub::Client(args)) => return client::main(args, "netpol-bench"),
        None => {}
    }
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("netpol-bench: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn settings(cli: &Cli) -> Result<Settings> {
    let q = cli.quick;
    let rate = cli.rate_secs.unwrap_or(if q { 1.0 } else { 3.0 });
    if !(0.0..=60.0).contains(&rate) {
        bail!("--rate-secs must be within 0..=60");
    }
    let policies = cli.policies.unwrap_or(if q { 100 } else { 1000 });
    let shape = Shape {
        namespaces: cli.namespaces.unwrap_or(if q { 20 } else { 100 }),
        remote_pods: cli.remote_pods.unwrap_or(if q { 100 } else { 1000 }),
        policies,
        server_policies: cli.server_policies.unwrap_or(policies / 10),
        client_policies: cli.client_policies,
        idle_pods: cli.idle_pods,
    };
    shape.check().map_err(anyhow::Error::msg)?;
    if cli.probe_every_ms == 0 || cli.probe_timeout_ms == 0 {
        bail!("--probe-every-ms and --probe-timeout-ms must be above 0");
    }
    Ok(Settings {
        shape,
        warmup: 50,
        connects: cli
            .connects
            .unwrap_or(if q { 500 } else { 3000 })
            .min(100_000),
        rounds: cli.rounds.unwrap_or(if q { 1 } else { 3 }).clamp(1, 20),
        workers: cli.workers.min(64),
        rate: Duration::from_secs_f64(rate),
        changes: cli.changes.unwrap_or(if q { 10 } else { 50 }).min(1000),
        probe_every: Duration::from_millis(cli.probe_every_ms),
        probe_timeout: Duration::from_millis(cli.probe_timeout_ms),
        iptables: match cli.iptables {
            IptablesArg::Legacy => Backend::Legacy,
            IptablesArg::Nft => Backend::Nft,
        },
        concurrency: cli.concurrency.clamp(1, 256),
    })
}

fn run(cli: &Cli) -> Result<()> {
    let started = Instant::now();
    if !ferry_testbed::is_root() {
        bail!(
            "needs root: it makes network namespaces, cgroups, BPF pins, iptables rules and ipsets"
        );
    }
    let bin = |name: &str, flag: &str, given: Option<&PathBuf>| {
        harness::beside(name, flag, given, "policy")
    };
    let bins = Binaries {
        apiserver: bin("ferry-apiserver", "apiserver", cli.apiserver.as_ref())?,
        agent: bin("ferry-agent", "agent", cli.agent.as_ref())?,
        cni: bin("ferry-cni", "cni", cli.cni.as_ref())?,
        netexec: bin("ferry-netexec", "netexec", cli.netexec.as_ref())?,
        bench: std::env::current_exe().context("finding this binary")?,
    };
    let s = settings(cli)?;
    let limit = Duration::from_secs(cli.timeout_secs);
    let results = {
        let (s, bins) = (s.clone(), bins.clone());
        harness::run_watched("netpol-bench", limit, say, move |stop| {
            netpol::run(&s, &bins, &stop, say)
        })?
    };
    let results = results.context("the benchmark")?;
    let info = RunInfo::gather(started.elapsed());
    let table = netpol::report::markdown(&s, &info, &results);
    harness::write_table(&cli.out, &table, say)?;
    Ok(())
}
