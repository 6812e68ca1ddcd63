//! `dns-bench`: ferry-dns, answering from a `ferry-apiserver` holding
//! 10,000 Services and 100,000 Pods, against Debian's unbound and knot
//! serving the equivalent static zone, in one run on this machine, written
//! as a markdown table (see `ferry_benches::dns`).
//!
//! Run it as root through `cargo xtask bench dns`, which builds the release
//! binaries first; `-- --quick` makes a small check (1,000 Services, 10,000
//! Pods, 3 s runs). Everything happens inside a network namespace of a
//! one-node testbed world (`ft…`), removed at the end, on error, on ctrl-c
//! and on SIGTERM, and swept by the next run when this one was killed
//! outright.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, ValueEnum};
use ferry_benches::dns::servers::{Binaries, Which};
use ferry_benches::dns::{self, Settings};
use ferry_benches::harness;
use ferry_benches::report::RunInfo;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ServerArg {
    FerryDns,
    Unbound,
    Knot,
}

#[derive(Debug, Parser)]
#[command(
    name = "dns-bench",
    about = "ferry-dns against unbound and knot serving the equivalent static zone",
    // A repeated option takes its last value, so `cargo xtask bench dns -- --out X` works.
    args_override_self = true
)]
struct Cli {
    /// ferry-apiserver (default: beside this binary).
    #[arg(long)]
    apiserver: Option<PathBuf>,
    /// ferry-dns (default: beside this binary).
    #[arg(long)]
    ferry_dns: Option<PathBuf>,
    #[arg(long, default_value = "/usr/sbin/unbound")]
    unbound: PathBuf,
    #[arg(long, default_value = "/usr/sbin/knotd")]
    knotd: PathBuf,
    #[arg(long, default_value = "/usr/bin/dnsperf")]
    dnsperf: PathBuf,
    #[arg(long, default_value = "/usr/bin/dig")]
    dig: PathBuf,
    /// Servers to measure.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [ServerArg::FerryDns, ServerArg::Unbound, ServerArg::Knot])]
    servers: Vec<ServerArg>,
    /// The apiserver's `--controllers`. Its EndpointSlice controller is
    /// off by default: every Service here is selector-less, so it has
    /// nothing to write, yet re-evaluating the Services on every Pod event
    /// keeps the apiserver busy for minutes after the load.
    #[arg(long, default_value = "*,-endpointslice")]
    apiserver_controllers: String,
    /// Namespaces the objects spread over.
    #[arg(long)]
    namespaces: Option<usize>,
    /// Services (every tenth headless, every tenth dual-stack).
    #[arg(long)]
    services: Option<usize>,
    /// Pods.
    #[arg(long)]
    pods: Option<usize>,
    /// API requests in flight during the load.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds of every dnsperf run.
    #[arg(long)]
    duration_secs: Option<u64>,
    /// Rounds (each server: a full-speed and a fixed-rate run per round).
    #[arg(long)]
    rounds: Option<usize>,
    /// Rate of the fixed-rate runs that give the latency percentiles.
    #[arg(long, default_value_t = 10_000)]
    latency_qps: u32,
    /// Lines of the query file.
    #[arg(long, default_value_t = 100_000)]
    queries: usize,
    /// dnsperf `-q`: queries outstanding.
    #[arg(long, default_value_t = 100)]
    outstanding: usize,
    /// dnsperf `-c`: clients.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// A small run: 10 namespaces, 1,000 Services, 10,000 Pods, 3 s runs,
    /// 2 rounds (explicit options still win).
    #[arg(long)]
    quick: bool,
    /// Time limit, in seconds, of the whole run.
    #[arg(long, default_value_t = 1800, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    timeout_secs: u64,
    /// Where the markdown table goes.
    #[arg(long, default_value = "target/bench/dns.md")]
    out: PathBuf,
}

fn say(msg: &str) {
    eprintln!("dns-bench: {msg}");
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("dns-bench: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn tool(path: &Path, package: &str) -> Result<PathBuf> {
    if !path.is_file() {
        bail!(
            "{} not found: install Debian's {package} (`cargo xtask setup` or `apt-get install {package}`)",
            path.display()
        );
    }
    Ok(path.to_path_buf())
}

fn settings(cli: &Cli) -> Result<Settings> {
    let q = cli.quick;
    let mut servers: Vec<Which> = cli
        .servers
        .iter()
        .map(|s| match s {
            ServerArg::FerryDns => Which::FerryDns,
            ServerArg::Unbound => Which::Unbound,
            ServerArg::Knot => Which::Knot,
        })
        .collect();
    servers.sort_unstable();
    servers.dedup();
    if servers.is_empty() {
        bail!("--servers names none");
    }
    let duration = cli.duration_secs.unwrap_or(if q { 3 } else { 10 });
    if !(1..=600).contains(&duration) {
        bail!("--duration-secs must be within 1..=600");
    }
    if cli.latency_qps == 0 {
        bail!("--latency-qps must be above 0");
    }
    Ok(Settings {
        namespaces: cli
            .namespaces
            .unwrap_or(if q { 10 } else { 20 })
            .clamp(1, 1000),
        services: cli.services.unwrap_or(if q { 1000 } else { 10_000 }),
        pods: cli.pods.unwrap_or(if q { 10_000 } else { 100_000 }),
        concurrency: cli.concurrency.clamp(1, 256),
        duration: Duration::from_secs(duration),
        rounds: cli.rounds.unwrap_or(2).clamp(1, 10),
        latency_qps: cli.latency_qps,
        queries: cli.queries.clamp(1000, 2_000_000),
        outstanding: cli.outstanding.clamp(1, 10_000),
        clients: cli.clients.clamp(1, 256),
        servers,
        controllers: cli.apiserver_controllers.clone(),
        load_timeout: Duration::from_secs(900),
        ready_timeout: Duration::from_secs(if q { 60 } else { 300 }),
        seed: 0x5eed_d0e5,
    })
}

fn run(cli: &Cli) -> Result<()> {
    let started = Instant::now();
    if !ferry_testbed::is_root() {
        bail!("needs root: it makes a network namespace and runs the servers inside it");
    }
    let s = settings(cli)?;
    let bins = Binaries {
        apiserver: ferry_benches::harness::beside(
            "ferry-apiserver",
            "apiserver",
            cli.apiserver.as_ref(),
            "dns",
        )?,
        ferry_dns: if s.servers.contains(&Which::FerryDns) {
            Some(ferry_benches::harness::beside(
                "ferry-dns",
                "ferry-dns",
                cli.ferry_dns.as_ref(),
                "dns",
            )?)
        } else {
            None
        },
        unbound: tool(&cli.unbound, "unbound")?,
        knotd: tool(&cli.knotd, "knot")?,
        dnsperf: tool(&cli.dnsperf, "dnsperf")?,
        dig: tool(&cli.dig, "bind9-dnsutils")?,
    };
    let limit = Duration::from_secs(cli.timeout_secs);
    let results = {
        let (s, bins) = (s.clone(), bins.clone());
        harness::run_watched("dns-bench", limit, say, move |stop| {
            dns::run(&s, &bins, &stop, say)
        })?
    };
    let results = results.context("the benchmark")?;
    let info = RunInfo::gather(started.elapsed());
    let table = dns::report::markdown(&s, &info, &results);
    harness::write_table(&cli.out, &table, say)?;
    Ok(())
}
