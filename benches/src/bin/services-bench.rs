//! `services-bench`: Ferry's service dataplane against kube-proxy's
//! iptables and nftables rulesets, in one run on this machine, written as a
//! markdown table (see `ferry_benches::services`).
//!
//! Run it as root through `cargo xtask bench services`, which builds the
//! release binaries first; `-- --quick` makes a small check (1000 Services,
//! fewer connections, a 1000-Service control-plane phase). Everything
//! happens inside a testbed world (namespaces `ft…`, a child cgroup and a
//! bpffs directory of its own), removed at the end, on error, on ctrl-c and
//! on SIGTERM, and swept by the next run when this one was killed outright.
//!
//! `services-bench client …` is the in-pod client the run starts itself.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use ferry_benches::harness;
use ferry_benches::report::RunInfo;
use ferry_benches::services::client::{self, ClientArgs};
use ferry_benches::services::cluster::Binaries;
use ferry_benches::services::iptables::Backend;
use ferry_benches::services::memory::MemorySettings;
use ferry_benches::services::{self, Modes, Settings};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum IptablesArg {
    /// iptables-legacy (x_tables).
    Legacy,
    /// iptables-nft (the same rules in nf_tables).
    Nft,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ModeArg {
    Ferry,
    Iptables,
    Nftables,
}

#[derive(Debug, Parser)]
#[command(
    name = "services-bench",
    about = "Ferry's eBPF service dataplane against kube-proxy's iptables and nftables modes",
    // A repeated option takes its last value, so `cargo xtask bench services -- --out X` works.
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
    /// ferry-netexec (default: beside this binary).
    #[arg(long)]
    netexec: Option<PathBuf>,
    /// Service counts of the end-to-end phase.
    #[arg(long, value_delimiter = ',')]
    services: Option<Vec<usize>>,
    /// Endpoints of each fake Service in the end-to-end phase.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=16))]
    fake_endpoints: u32,
    /// Sequential timed connects per client run.
    #[arg(long)]
    connects: Option<usize>,
    /// Sequential timed HTTP GETs per client run.
    #[arg(long)]
    http_requests: Option<usize>,
    /// Workers of the concurrent-connect phase (0 skips it).
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Seconds the concurrent-connect phase runs.
    #[arg(long)]
    rate_secs: Option<f64>,
    /// Services of the control-plane phase (0 skips it).
    #[arg(long)]
    cp_services: Option<usize>,
    /// Endpoints per Service in the control-plane phase.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=64))]
    cp_endpoints: u32,
    /// Endpoint changes timed in the control-plane phase.
    #[arg(long)]
    changes: Option<usize>,
    /// Services of the agent-memory phase (0 skips it; Ferry only): a
    /// cluster's load of Services, Pods and NetworkPolicies, the agent's RSS
    /// once synced.
    #[arg(long)]
    memory_services: Option<usize>,
    /// Endpoints per Service there.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100))]
    memory_endpoints: u32,
    /// Pods there (a few on the agent's node, the rest on 40 others).
    #[arg(long)]
    memory_pods: Option<usize>,
    /// Namespaces the objects are spread over.
    #[arg(long)]
    memory_namespaces: Option<usize>,
    /// NetworkPolicies there.
    #[arg(long)]
    memory_policies: Option<usize>,
    /// Seconds the memory phase keeps the synced agent running after its
    /// readings (to profile it).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=3600))]
    memory_hold_secs: u64,
    /// Which iptables loads the iptables-mode rules.
    #[arg(long, value_enum, default_value_t = IptablesArg::Legacy)]
    iptables: IptablesArg,
    /// Dataplanes to run.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [ModeArg::Ferry, ModeArg::Iptables, ModeArg::Nftables])]
    modes: Vec<ModeArg>,
    /// A small run: 1000 Services, 500 connects, 200 GETs, 1 s of
    /// concurrency, a 1000-Service control-plane phase with 10 changes, a
    /// memory phase a tenth of issue 13's (explicit options still win).
    #[arg(long)]
    quick: bool,
    /// Creates in flight against the apiserver.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Time limit, in seconds, of the whole run.
    #[arg(long, default_value_t = 1800, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    timeout_secs: u64,
    /// Where the markdown table goes.
    #[arg(long, default_value = "target/bench/services.md")]
    out: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// The in-pod client (started by the run itself).
    #[command(hide = true)]
    Client(ClientArgs),
    /// The connect sink in the backend pods (started by the run itself).
    #[command(hide = true)]
    Sink {
        #[arg(long)]
        port: u16,
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
}

fn say(msg: &str) {
    eprintln!("services-bench: {msg}");
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Sub::Sink { port, threads }) = &cli.command {
        return match services::sink::serve(*port, *threads) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("services-bench sink: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Sub::Client(args)) = &cli.command {
        return client::main(args, "services-bench");
    }
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("services-bench: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn settings(cli: &Cli) -> Result<Settings> {
    let q = cli.quick;
    let mut services = cli.services.clone().unwrap_or_else(|| {
        if q {
            vec![1000]
        } else {
            vec![1000, 10_000, 30_000]
        }
    });
    services.retain(|&n| n > 0);
    services.sort_unstable();
    services.dedup();
    let rate = cli.rate_secs.unwrap_or(if q { 1.0 } else { 2.0 });
    if !(0.0..=60.0).contains(&rate) {
        bail!("--rate-secs must be within 0..=60");
    }
    let has = |m| cli.modes.contains(&m);
    Ok(Settings {
        services,
        fake_endpoints: usize::try_from(cli.fake_endpoints).unwrap_or(2),
        warmup: 50,
        connects: cli
            .connects
            .unwrap_or(if q { 500 } else { 2000 })
            .min(100_000),
        http: cli
            .http_requests
            .unwrap_or(if q { 200 } else { 1000 })
            .min(100_000),
        workers: cli.workers.min(64),
        rate: Duration::from_secs_f64(rate),
        phase: Duration::from_secs(30),
        cp_services: cli.cp_services.unwrap_or(if q { 1000 } else { 10_000 }),
        cp_endpoints: usize::try_from(cli.cp_endpoints).unwrap_or(10),
        changes: cli.changes.unwrap_or(if q { 10 } else { 30 }).min(1000),
        iptables: match cli.iptables {
            IptablesArg::Legacy => Backend::Legacy,
            IptablesArg::Nft => Backend::Nft,
        },
        modes: Modes {
            ferry: has(ModeArg::Ferry),
            iptables: has(ModeArg::Iptables),
            nftables: has(ModeArg::Nftables),
        },
        concurrency: cli.concurrency.clamp(1, 256),
        sync_timeout: Duration::from_secs(300),
        memory: {
            let issue = MemorySettings::ISSUE;
            let tenth =
                |n: usize, explicit: Option<usize>| explicit.unwrap_or(if q { n / 10 } else { n });
            MemorySettings {
                services: tenth(issue.services, cli.memory_services),
                endpoints: usize::try_from(cli.memory_endpoints).unwrap_or(issue.endpoints),
                pods: tenth(issue.pods, cli.memory_pods),
                namespaces: tenth(issue.namespaces, cli.memory_namespaces),
                policies: tenth(issue.policies, cli.memory_policies),
                local_pods: issue.local_pods,
                hold_secs: cli.memory_hold_secs,
            }
        },
    })
}

fn run(cli: &Cli) -> Result<()> {
    let started = Instant::now();
    if !ferry_testbed::is_root() {
        bail!("needs root: it makes network namespaces, cgroups, BPF pins and netfilter rules");
    }
    let bins = Binaries {
        apiserver: ferry_benches::harness::beside(
            "ferry-apiserver",
            "apiserver",
            cli.apiserver.as_ref(),
            "services",
        )?,
        agent: ferry_benches::harness::beside(
            "ferry-agent",
            "agent",
            cli.agent.as_ref(),
            "services",
        )?,
        cni: ferry_benches::harness::beside("ferry-cni", "cni", cli.cni.as_ref(), "services")?,
        netexec: ferry_benches::harness::beside(
            "ferry-netexec",
            "netexec",
            cli.netexec.as_ref(),
            "services",
        )?,
        bench: std::env::current_exe().context("finding this binary")?,
    };
    let s = settings(cli)?;
    let limit = Duration::from_secs(cli.timeout_secs);
    let results = {
        let (s, bins) = (s.clone(), bins.clone());
        harness::run_watched("services-bench", limit, say, move |stop| {
            services::run(&s, &bins, &stop, say)
        })?
    };
    let results = results.context("the benchmark")?;
    let info = RunInfo::gather(started.elapsed());
    let table = services::report::markdown(&s, &info, &results);
    harness::write_table(&cli.out, &table, say)?;
    Ok(())
}
