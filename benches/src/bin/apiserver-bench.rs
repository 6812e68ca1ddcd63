//! `apiserver-bench`: measures `ferry-apiserver` and etcd under the same
//! workload in one run and writes a markdown table (see `ferry_benches`).
//!
//! Run it through `cargo xtask bench apiserver`, which builds the release
//! binaries first; `--services 1000 --watchers 100` makes a quick check.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use ferry_benches::Workload;
use ferry_benches::etcd::Etcd;
use ferry_benches::ferry::Ferry;
use ferry_benches::objects::Clock;
use ferry_benches::report::{self, RunInfo, ServerRun};
use k8s_openapi::api::core::v1::Service;

#[derive(Debug, Parser)]
#[command(
    name = "apiserver-bench",
    about = "ferry-apiserver against etcd: bulk creates, lists, watch fan-out, memory",
    // A repeated option takes its last value, so `cargo xtask bench -- --out X` works.
    args_override_self = true
)]
struct Cli {
    /// The ferry-apiserver binary (default: target/release/ferry-apiserver
    /// next to this binary).
    #[arg(long)]
    apiserver: Option<PathBuf>,
    /// An extra ferry-apiserver flag (repeatable), e.g.
    /// `--apiserver-arg=--controllers=*,-endpointslice`.
    #[arg(long, allow_hyphen_values = true)]
    apiserver_arg: Vec<String>,
    /// The etcd binary.
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd: PathBuf,
    /// Skip the etcd half (no ratios).
    #[arg(long)]
    skip_etcd: bool,
    /// Services to create, and as many EndpointSlices.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    services: u32,
    /// Creates in flight at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    concurrency: u32,
    /// Runs of each list.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    list_runs: u32,
    /// Page size of the paged list.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    page_size: u32,
    /// Concurrent watches in the fan-out.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=5000))]
    watchers: u32,
    /// Watches per client.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=5000))]
    watchers_per_client: u32,
    /// Timed writes in the fan-out.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    writes: u32,
    /// Milliseconds between timed writes.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    write_interval_ms: u64,
    /// Upper bound, in seconds, on any one phase.
    #[arg(long, default_value_t = 600)]
    phase_timeout_secs: u64,
    /// Upper bound, in seconds, on the whole run.
    #[arg(long, default_value_t = 2400)]
    timeout_secs: u64,
    /// Where the markdown table goes.
    #[arg(long, default_value = "target/bench/apiserver.md")]
    out: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("apiserver-bench: error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let limit = Duration::from_secs(cli.timeout_secs);
        // Returning early drops the run, and its server guards kill both servers.
        tokio::select! {
            r = tokio::time::timeout(limit, run(&cli)) => {
                r.unwrap_or_else(|_| bail!("the run did not finish within {limit:?}"))
            }
            r = tokio::signal::ctrl_c() => {
                r.context("waiting for ctrl-c")?;
                bail!("interrupted")
            }
        }
    });
    // Watch streams' tasks may still hold connections: don't wait for them.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("apiserver-bench: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn say(msg: &str) {
    eprintln!("apiserver-bench: {msg}");
}

fn workload(cli: &Cli) -> Workload {
    let n = |v: u32| usize::try_from(v).unwrap_or(usize::MAX);
    Workload {
        services: n(cli.services),
        concurrency: n(cli.concurrency),
        list_runs: n(cli.list_runs),
        page_size: n(cli.page_size),
        watchers: n(cli.watchers),
        watchers_per_client: n(cli.watchers_per_client),
        writes: n(cli.writes),
        write_interval: Duration::from_millis(cli.write_interval_ms),
        phase_timeout: Duration::from_secs(cli.phase_timeout_secs),
    }
}

/// target/release/ferry-apiserver: this binary's own directory when it was
/// built there, else the workspace's.
fn default_apiserver() -> PathBuf {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("ferry-apiserver")));
    match beside {
        Some(p) if p.exists() => p,
        _ => PathBuf::from("target/release/ferry-apiserver"),
    }
}

async fn run(cli: &Cli) -> Result<()> {
    let started = Instant::now();
    let w = workload(cli);
    let apiserver = cli.apiserver.clone().unwrap_or_else(default_apiserver);
    if !apiserver.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p ferry-controlplane` or pass --apiserver",
            apiserver.display()
        );
    }
    if !cli.skip_etcd && !cli.etcd.exists() {
        bail!(
            "{} not found: install Debian's etcd-server (`cargo xtask setup`) or pass --skip-etcd",
            cli.etcd.display()
        );
    }
    check_open_files(&w)?;
    let clock = Clock::new();

    let (ferry, template, services, slices) =
        run_ferry(&w, &apiserver, &cli.apiserver_arg, clock).await?;
    let etcd = if cli.skip_etcd {
        None
    } else {
        Some(run_etcd(&w, &cli.etcd, clock, template, services, slices).await?)
    };

    let info = RunInfo::gather(started.elapsed());
    let table = report::markdown(&w, &info, &ferry, etcd.as_ref());
    if let Some(dir) = cli.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&cli.out, &table).with_context(|| format!("writing {}", cli.out.display()))?;
    println!("{table}");
    say(&format!("wrote {}", cli.out.display()));
    Ok(())
}

type FerryOutcome = (ServerRun, Option<Service>, Vec<Vec<u8>>, Vec<Vec<u8>>);

async fn run_ferry(
    w: &Workload,
    binary: &Path,
    extra_args: &[String],
    clock: Clock,
) -> Result<FerryOutcome> {
    say(&format!(
        "starting {} {}",
        binary.display(),
        extra_args.join(" ")
    ));
    let ferry = Ferry::start(binary, extra_args)
        .await
        .context("starting ferry-apiserver")?;
    // Let start-up settle before the idle reading.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut run = ServerRun {
        name: "ferry-apiserver".into(),
        version: ferry.version.clone(),
        rss_idle: Some(ferry.rss()?),
        ..Default::default()
    };
    let client = ferry.client().await?;
    say(&format!(
        "ferry: creating {0} Services and {0} EndpointSlices",
        w.services
    ));
    let (services, slices, stored_services, stored_slices) =
        ferry.load(w, &client).await.context("ferry: bulk load")?;
    run.services = services;
    run.slices = slices;
    run.rss_loaded = Some(ferry.rss()?);
    run.derived_after_load = Some(ferry.derived_counts(&client).await?);
    say("ferry: waiting for its controllers to settle");
    run.settle = Some(
        ferry
            .settle(&client, w.phase_timeout)
            .await
            .context("ferry: settling")?,
    );
    run.rss_settled = Some(ferry.rss()?);
    say(&format!(
        "ferry: loaded in {:.1?} + {:.1?}; listing",
        run.services.wall, run.slices.wall
    ));
    run.lists = ferry.lists(w, &client).await.context("ferry: lists")?;
    say("ferry: the same GET as the admin and as ServiceAccounts");
    run.auth = Some(
        ferry
            .auth(w, &client)
            .await
            .context("ferry: authentication")?,
    );
    say(&format!("ferry: watch fan-out, {} watches", w.watchers));
    run.fanout = ferry
        .fanout(w, &client, clock)
        .await
        .context("ferry: watch fan-out")?;
    run.rss_end = Some(ferry.rss()?);
    run.derived_at_end = Some(ferry.derived_counts(&client).await?);
    let template = stored_services
        .first()
        .and_then(|b| serde_json::from_slice::<Service>(b).ok());
    Ok((run, template, stored_services, stored_slices))
}

async fn run_etcd(
    w: &Workload,
    binary: &Path,
    clock: Clock,
    template: Option<Service>,
    services: Vec<Vec<u8>>,
    slices: Vec<Vec<u8>>,
) -> Result<ServerRun> {
    say(&format!("starting {}", binary.display()));
    let etcd = Etcd::start(binary).await.context("starting etcd")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut run = ServerRun {
        name: "etcd".into(),
        version: etcd.version.clone(),
        rss_idle: Some(etcd.rss()?),
        ..Default::default()
    };
    let client = etcd.client().await?;
    say(&format!("etcd: putting {0} + {0} keys", w.services));
    let (s, e) = etcd
        .load(w, &client, services, slices)
        .await
        .context("etcd: bulk load")?;
    run.services = s;
    run.slices = e;
    run.rss_loaded = Some(etcd.rss()?);
    say("etcd: range gets");
    run.lists = etcd.lists(w, &client).await.context("etcd: range gets")?;
    say(&format!("etcd: watch fan-out, {} watches", w.watchers));
    run.fanout = etcd
        .fanout(w, &client, clock, template)
        .await
        .context("etcd: watch fan-out")?;
    run.rss_end = Some(etcd.rss()?);
    Ok(run)
}

/// Every watch and every create in flight is a socket in this process and in
/// the server (which inherits the limit): fail early with a clear message
/// rather than with EMFILE halfway through.
fn check_open_files(w: &Workload) -> Result<()> {
    let limits =
        std::fs::read_to_string("/proc/self/limits").context("reading /proc/self/limits")?;
    let soft = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse::<usize>().ok());
    let need = w.watchers + w.concurrency + 256;
    if let Some(soft) = soft
        && soft < need
    {
        bail!(
            "the open-file limit is {soft}, the run needs about {need}: raise it with `ulimit -n {need}`"
        );
    }
    Ok(())
}
