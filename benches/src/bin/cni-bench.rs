//! `cni-bench`: ADD and DEL latency of `ferry-cni` against Debian's
//! reference `bridge` + `host-local` plugins, in one run on this machine,
//! written as a markdown table (see `ferry_benches::cni`).
//!
//! Run it as root through `cargo xtask bench cni`, which builds the release
//! `ferry-cni` first; `--pods 40 --concurrency 8` makes a quick check.
//! Everything happens in network namespaces named `fcb-<pid>-…`, deleted
//! at the end, on error, on ctrl-c and on SIGTERM (and swept by the next run
//! when this one was killed outright).

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, ValueEnum};
use ferry_benches::cni::lane::Binaries;
use ferry_benches::cni::{self, Settings, Stack, lab};
use ferry_benches::harness;
use ferry_benches::report::RunInfo;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StackArg {
    /// One IPv4 address per pod from a /16.
    V4,
    /// An IPv4 address from the /16 and an IPv6 address from a /64.
    Dual,
}

#[derive(Debug, Parser)]
#[command(
    name = "cni-bench",
    about = "ferry-cni against bridge + host-local: ADD and DEL latency, one at a time and concurrent",
    // A repeated option takes its last value, so `cargo xtask bench cni -- --out X` works.
    args_override_self = true
)]
struct Cli {
    /// The ferry-cni binary (default: target/release/ferry-cni next to this
    /// binary).
    #[arg(long)]
    ferry_cni: Option<PathBuf>,
    /// Where the reference plugins (`bridge`, `host-local`) are.
    #[arg(long, default_value = ferry_testbed::REFERENCE_PLUGINS)]
    reference_dir: PathBuf,
    /// Pods per phase.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pods: u32,
    /// Invocations in flight in the concurrent phases.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(2..=64))]
    concurrency: u32,
    /// Untimed ADD/DEL pairs per plugin before timing.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=100))]
    warmup: u32,
    /// Passes over every phase (samples are pooled; the plugins alternate
    /// going first).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10))]
    rounds: u32,
    /// Address setups to measure.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [StackArg::V4, StackArg::Dual])]
    stacks: Vec<StackArg>,
    /// `cniVersion` of both configs (Debian's plugins speak up to 1.0.0).
    #[arg(long, default_value = "1.0.0")]
    cni_version: String,
    /// Pause, in milliseconds, before each timed phase.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    settle_ms: u64,
    /// Time limit, in seconds, of one plugin invocation.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=600))]
    call_timeout_secs: u64,
    /// Time limit, in seconds, of the whole run.
    #[arg(long, default_value_t = 1800, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    timeout_secs: u64,
    /// Where the markdown table goes.
    #[arg(long, default_value = "target/bench/cni.md")]
    out: PathBuf,
}

fn say(msg: &str) {
    eprintln!("cni-bench: {msg}");
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("cni-bench: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// target/release/ferry-cni: this binary's own directory when it was built
/// there, else the workspace's.
fn default_ferry_cni() -> PathBuf {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("ferry-cni")));
    match beside {
        Some(p) if p.exists() => p,
        _ => PathBuf::from("target/release/ferry-cni"),
    }
}

fn settings(cli: &Cli) -> Settings {
    let n = |v: u32| usize::try_from(v).unwrap_or(usize::MAX);
    let mut stacks: Vec<Stack> = cli
        .stacks
        .iter()
        .map(|s| match s {
            StackArg::V4 => Stack::V4,
            StackArg::Dual => Stack::Dual,
        })
        .collect();
    stacks.sort();
    stacks.dedup();
    Settings {
        pods: n(cli.pods),
        concurrency: n(cli.concurrency),
        warmup: n(cli.warmup),
        rounds: n(cli.rounds),
        stacks,
        cni_version: cli.cni_version.clone(),
        call_timeout: Duration::from_secs(cli.call_timeout_secs),
        settle: Duration::from_millis(cli.settle_ms),
    }
}

fn run(cli: &Cli) -> Result<()> {
    let started = Instant::now();
    if !ferry_testbed::is_root() {
        bail!("needs root: it makes network namespaces and runs CNI plugins in them");
    }
    let ferry = std::path::absolute(cli.ferry_cni.clone().unwrap_or_else(default_ferry_cni))
        .context("resolving the ferry-cni path")?;
    let bin = Binaries {
        ferry,
        reference_dir: cli.reference_dir.clone(),
    };
    if !bin.ferry.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release -p ferry-cni` or pass --ferry-cni",
            bin.ferry.display()
        );
    }
    for p in [bin.bridge(), bin.host_local()] {
        if !p.is_file() {
            bail!(
                "{} not found: install Debian's containernetworking-plugins (`cargo xtask setup`) \
                 or pass --reference-dir",
                p.display()
            );
        }
    }
    let s = settings(cli);
    let limit = Duration::from_secs(cli.timeout_secs);
    let measured = {
        let (s, bin) = (s.clone(), bin.clone());
        harness::run_watched("cni-bench", limit, say, move |stop| {
            cni::run(&s, &bin, &stop, &say)
        })?
    };
    let result = measured.context("the benchmark")?;
    let left = lab::leftovers();
    if !left.is_empty() {
        bail!("namespaces left behind: {}", left.join(", "));
    }
    let info = RunInfo::gather(started.elapsed());
    let table = cni::report::markdown(&s, &bin, &info, &reference_version(), &result);
    harness::write_table(&cli.out, &table, say)?;
    Ok(())
}

/// The Debian package version of the reference plugins, best effort.
fn reference_version() -> String {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", "containernetworking-plugins"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "(version unknown)".into())
}
