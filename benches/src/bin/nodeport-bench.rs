//! `nodeport-bench`: a NodePort reached from outside the cluster, its
//! backend on the other node, through Ferry's variants and kube-proxy's
//! nftables and iptables rulesets, in one run on this machine, written as
//! a markdown table (see `ferry_benches::nodeport`).
//!
//! Run it as root through `cargo xtask bench nodeport`, which builds the
//! release binaries first; `-- --quick` makes a small check (1 and 1,000
//! Services, shorter bursts). Everything happens inside a testbed world
//! (namespaces `ft…`, a child cgroup and bpffs directory per agent), removed
//! at the end, on error, on ctrl-c and on SIGTERM, and swept by the next run
//! when this one was killed outright.
//!
//! `nodeport-bench client|sink|udp-sink …` are the helpers the run starts
//! itself.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use ferry_benches::harness;
use ferry_benches::nodeport::{self, Settings};
use ferry_benches::report::RunInfo;
use ferry_benches::services::client::{self, ClientArgs};
use ferry_benches::services::cluster::Binaries;
use ferry_benches::services::iptables::Backend;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum IptablesArg {
    Legacy,
    Nft,
}

#[derive(Debug, Parser)]
#[command(
    name = "nodeport-bench",
    about = "NodePort from outside: Ferry's variants against kube-proxy's nftables and iptables",
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    #[arg(long)]
    apiserver: Option<PathBuf>,
    #[arg(long)]
    agent: Option<PathBuf>,
    #[arg(long)]
    cni: Option<PathBuf>,
    #[arg(long)]
    netexec: Option<PathBuf>,
    /// Service counts (default 1,1000,100000; --quick: 1,1000).
    #[arg(long, value_delimiter = ',')]
    services: Option<Vec<usize>>,
    /// Rows to run, by key: route, ferry-tc, ferry-xdp, ferry-dsr,
    /// nftables, iptables (default: all; a Ferry variant whose flags the
    /// agent refuses is reported as not available).
    #[arg(long, value_delimiter = ',')]
    variants: Option<Vec<String>>,
    /// Packets per second of the established mix.
    #[arg(long)]
    rate: Option<u64>,
    /// Seconds of the established mix.
    #[arg(long)]
    secs: Option<f64>,
    /// Packets per second of the new-flow mix.
    #[arg(long)]
    new_flow_rate: Option<u64>,
    /// Packets of the new-flow mix (each a new source port; at most 64000).
    #[arg(long)]
    new_flow_packets: Option<u64>,
    /// Sequential timed connects.
    #[arg(long)]
    connects: Option<usize>,
    /// Sequential timed HTTP GETs.
    #[arg(long)]
    http_requests: Option<usize>,
    /// Workers of the concurrent-connect phase (0 skips it).
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Largest N the nftables ruleset is loaded with.
    #[arg(long, default_value_t = 10_000)]
    nft_max: usize,
    /// Largest N the iptables ruleset is loaded with.
    #[arg(long, default_value_t = 100_000)]
    iptables_max: usize,
    #[arg(long, value_enum, default_value_t = IptablesArg::Legacy)]
    iptables: IptablesArg,
    /// A small run: 1 and 1,000 Services, 1 s bursts, fewer connections.
    #[arg(long)]
    quick: bool,
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Time limit, in seconds, of the whole run.
    #[arg(long, default_value_t = 2400, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    timeout_secs: u64,
    #[arg(long, default_value = "target/bench/nodeport.md")]
    out: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Sub {
    #[command(hide = true)]
    Client(ClientArgs),
    #[command(hide = true)]
    Sink {
        #[arg(long)]
        port: u16,
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    #[command(hide = true)]
    UdpSink {
        #[arg(long)]
        port: u16,
    },
}

fn say(msg: &str) {
    eprintln!("nodeport-bench: {msg}");
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Sub::Sink { port, threads }) => {
            return match ferry_benches::services::sink::serve(*port, *threads) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("nodeport-bench sink: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Sub::UdpSink { port }) => {
            return match nodeport::udp_sink(*port) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("nodeport-bench udp-sink: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Sub::Client(args)) => return client::main(args, "nodeport-bench"),
        None => {}
    }
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("nodeport-bench: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn settings(cli: &Cli) -> Result<Settings> {
    let q = cli.quick;
    let mut sizes = cli.services.clone().unwrap_or_else(|| {
        if q {
            vec![1, 1000]
        } else {
            vec![1, 1000, 100_000]
        }
    });
    sizes.retain(|&n| n > 0);
    sizes.sort_unstable();
    sizes.dedup();
    if sizes.iter().any(|&n| n > 110_000) {
        bail!("at most 110000 Services (the node-port range holds that many)");
    }
    let known = nodeport::known_variants();
    let variants = match &cli.variants {
        None => known,
        Some(keys) => {
            for k in keys {
                if !known.iter().any(|v| &v.key == k) {
                    let names: Vec<&str> = known.iter().map(|v| v.key.as_str()).collect();
                    bail!("unknown variant {k:?} (known: {})", names.join(", "));
                }
            }
            known
                .into_iter()
                .filter(|v| keys.contains(&v.key))
                .collect()
        }
    };
    let secs = cli.secs.unwrap_or(if q { 1.0 } else { 2.0 });
    if !(0.1..=30.0).contains(&secs) {
        bail!("--secs must be within 0.1..=30");
    }
    Ok(Settings {
        sizes,
        variants,
        rate: cli.rate.unwrap_or(100_000).clamp(1, 5_000_000),
        duration: Duration::from_secs_f64(secs),
        new_flow_rate: cli.new_flow_rate.unwrap_or(20_000).clamp(1, 5_000_000),
        new_flow_packets: cli
            .new_flow_packets
            .unwrap_or(if q { 20_000 } else { 60_000 })
            .clamp(1, 64_000),
        connects: cli
            .connects
            .unwrap_or(if q { 500 } else { 2000 })
            .min(100_000),
        http: cli
            .http_requests
            .unwrap_or(if q { 200 } else { 1000 })
            .min(100_000),
        workers: cli.workers.min(64),
        rate_window: Duration::from_secs(if q { 1 } else { 2 }),
        nft_max: cli.nft_max,
        iptables_max: cli.iptables_max,
        iptables: match cli.iptables {
            IptablesArg::Legacy => Backend::Legacy,
            IptablesArg::Nft => Backend::Nft,
        },
        concurrency: cli.concurrency.clamp(1, 256),
        sync_timeout: Duration::from_secs(300),
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
            "nodeport",
        )?,
        agent: ferry_benches::harness::beside(
            "ferry-agent",
            "agent",
            cli.agent.as_ref(),
            "nodeport",
        )?,
        cni: ferry_benches::harness::beside("ferry-cni", "cni", cli.cni.as_ref(), "nodeport")?,
        netexec: ferry_benches::harness::beside(
            "ferry-netexec",
            "netexec",
            cli.netexec.as_ref(),
            "nodeport",
        )?,
        bench: std::env::current_exe().context("finding this binary")?,
    };
    let s = settings(cli)?;
    let limit = Duration::from_secs(cli.timeout_secs);
    let results = {
        let (s, bins) = (s.clone(), bins.clone());
        harness::run_watched("nodeport-bench", limit, say, move |stop| {
            nodeport::run(&s, &bins, &stop, say)
        })?
    };
    let results = results.context("the benchmark")?;
    let info = RunInfo::gather(started.elapsed());
    let table = nodeport::report::markdown(&s, &info, &results);
    harness::write_table(&cli.out, &table, say)?;
    Ok(())
}
