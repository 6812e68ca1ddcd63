//! `ferry`: start, inspect and stop local Ferry clusters.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use ferry_cluster::components::Binaries;
use ferry_cluster::{Cluster, HostAccess, IpFamily, Settings, state};
use k8s_openapi::api::core::v1::Node;
use kube::Api;

#[derive(Debug, Parser)]
#[command(
    name = "ferry",
    version,
    about = "Local Kubernetes clusters in network namespaces: no container engine, no VM",
    after_help = "Examples:\n  ferry up --nodes 3\n  kubectl --kubeconfig /var/lib/ferry/clusters/ferry/kubeconfig get nodes -o wide\n  ferry status\n  ferry down"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    /// The cluster's name (several can run side by side).
    #[arg(long, global = true, env = "FERRY_CLUSTER", default_value = "ferry")]
    name: String,
    /// Nodes to build.
    #[arg(long, global = true, default_value_t = 1)]
    nodes: usize,
    /// Where the cluster's store, kubeconfig and logs live
    /// [default: /var/lib/ferry/clusters/<name>].
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Address families of the cluster.
    #[arg(long, global = true, value_enum, default_value = "ipv4")]
    ip_family: IpFamily,
    /// The host loopback port of the apiserver [default: 6443, or any free
    /// port when 6443 is taken].
    #[arg(long, global = true)]
    api_port: Option<u16>,
    /// Where the component binaries are [default: beside this one].
    #[arg(long, global = true)]
    bin_dir: Option<PathBuf>,
    /// Seconds `ferry up` waits for the cluster to become usable.
    #[arg(long, global = true, default_value_t = 120)]
    timeout: u64,
    /// With `down`: also remove the cluster's data directory.
    #[arg(long, global = true)]
    purge: bool,
    /// How the host reaches NodePorts: `loopback` publishes them on
    /// 127.0.0.1 and leaves the host's network alone; `route` gives the host
    /// a link onto the cluster's underlay and routes to the pod CIDRs, so
    /// NodePorts answer at the nodes' addresses (it changes the host's
    /// network: opt in knowingly).
    #[arg(long, global = true, value_enum, default_value = "loopback")]
    host_access: HostAccessArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum HostAccessArg {
    Loopback,
    Route,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Build the cluster (or resume it with its data) and return once it is
    /// usable.
    Up,
    /// Stop the cluster, removing every namespace, cgroup, pin and process
    /// it made; its data stays unless --purge.
    Down,
    /// Show the clusters, their nodes, components and published ports.
    Status,
    /// Run the cluster in the foreground until SIGTERM (what `up` starts in
    /// the background).
    #[command(hide = true)]
    Supervise,
}

impl Cli {
    fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/var/lib/ferry/clusters").join(&self.name))
    }

    fn settings(&self) -> anyhow::Result<Settings> {
        let binaries = match &self.bin_dir {
            Some(dir) => Binaries::in_dir(dir),
            None => Binaries::beside_current_exe(),
        }
        .context("finding the component binaries (--bin-dir)")?;
        let mut s = Settings::new(&self.name, self.nodes, self.data_dir(), binaries);
        s.ip_family = self.ip_family;
        s.api_port = self.api_port;
        s.ready_timeout = Duration::from_secs(self.timeout);
        s.host_access = match self.host_access {
            HostAccessArg::Loopback => HostAccess::Loopback,
            HostAccessArg::Route => HostAccess::Route { host: None },
        };
        Ok(s)
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Up => up(&cli),
        Cmd::Down => down(&cli),
        Cmd::Status => status(&cli),
        Cmd::Supervise => supervise(&cli),
    }
}

fn up(cli: &Cli) -> anyhow::Result<()> {
    if !ferry_testbed::is_root() {
        bail!("ferry up needs root (network namespaces, eBPF and cgroups): run it with sudo");
    }
    // Refuse bad settings here, before anything runs in the background.
    cli.settings()?;
    if let Some(owner) = state::owner(&cli.name)
        && owner.alive()
    {
        println!("Cluster {:?} is already running.", cli.name);
        if let Some(info) = state::info(&cli.name) {
            print_next_steps(&info);
        }
        return Ok(());
    }
    let started = Instant::now();
    std::fs::create_dir_all(state::dir(&cli.name))
        .with_context(|| format!("creating {}", state::dir(&cli.name).display()))?;
    let log_path = state::log_path(&cli.name);
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let exe = std::env::current_exe().context("finding this executable")?;
    let mut args: Vec<String> = vec![
        "supervise".into(),
        "--name".into(),
        cli.name.clone(),
        "--nodes".into(),
        cli.nodes.to_string(),
        "--data-dir".into(),
        cli.data_dir().to_string_lossy().into_owned(),
        "--ip-family".into(),
        format!("{:?}", cli.ip_family).to_lowercase(),
        "--timeout".into(),
        cli.timeout.to_string(),
        "--host-access".into(),
        format!("{:?}", cli.host_access).to_lowercase(),
    ];
    if let Some(port) = cli.api_port {
        args.extend(["--api-port".into(), port.to_string()]);
    }
    if let Some(dir) = &cli.bin_dir {
        args.extend(["--bin-dir".into(), dir.to_string_lossy().into_owned()]);
    }
    let mut child = Command::new(exe)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("duplicating the log file")?)
        .stderr(log)
        .spawn()
        .context("starting the cluster's supervisor")?;
    let deadline = started + Duration::from_secs(cli.timeout + 30);
    loop {
        if let Some(info) = state::info(&cli.name)
            && state::owner(&cli.name).is_some_and(|o| o.pid == child.id())
        {
            println!(
                "Cluster {:?} is up ({} node{}) in {:.1} s.",
                info.name,
                info.nodes.len(),
                if info.nodes.len() == 1 { "" } else { "s" },
                started.elapsed().as_secs_f64()
            );
            print_next_steps(&info);
            return Ok(());
        }
        if let Some(status) = child.try_wait().context("waiting for the supervisor")? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "the cluster did not come up ({status}); the supervisor's log ({}) ends with:\n{}",
                log_path.display(),
                tail.join("\n")
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!(
                "the cluster was not up within {} s; see {}",
                cli.timeout,
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn print_next_steps(info: &ferry_cluster::ClusterInfo) {
    println!("Kubeconfig: {}", info.kubeconfig.display());
    println!();
    println!("  export KUBECONFIG={}", info.kubeconfig.display());
    println!("  kubectl get nodes -o wide");
    println!("  kubectl -n kube-system get ds,deploy,pods -o wide   # Ferry itself, from deploy/");
    println!("  kubectl create deployment web --image=nginx --replicas=3");
    match &info.host_route {
        None => println!(
            "  kubectl expose deployment web --type=NodePort --port=80   # NodePorts answer on localhost"
        ),
        Some(route) => {
            println!(
                "  kubectl expose deployment web --type=NodePort --port=80   # NodePorts answer at the nodes' addresses"
            );
            println!(
                "  # the host's link {} ({}) reaches the nodes; routes: {}",
                route.link,
                route.addrs.join(", "),
                route.routes.join(", ")
            );
        }
    }
    println!("  ferry status --name {}", info.name);
    println!("  ferry down --name {}", info.name);
}

fn supervise(cli: &Cli) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(false)
        .init();
    // Outlive the terminal and the `ferry up` that started us.
    let _ = rustix::process::setsid();
    state::claim(&cli.name, &cli.data_dir())?;
    let settings = cli.settings()?;
    let mut cluster = Cluster::up(settings).context("building the cluster")?;
    state::save_info(&cluster.info())?;
    let stop = cluster.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        let hup = signal(SignalKind::hangup());
        (term, int, hup)
    });
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = stop else {
        bail!("installing signal handlers");
    };
    loop {
        let stop = cluster.block_on(async {
            tokio::select! {
                _ = term.recv() => true,
                _ = int.recv() => true,
                // A hangup (the terminal went away) is no reason to stop.
                _ = hup.recv() => false,
                () = tokio::time::sleep(Duration::from_secs(1)) => false,
            }
        });
        if stop {
            break;
        }
        cluster.tend();
        if let Err(e) = state::save_info(&cluster.info()) {
            tracing::warn!(error = %e, "saving the cluster's state");
        }
    }
    tracing::info!("stopping the cluster");
    drop(cluster);
    state::forget(&cli.name)?;
    Ok(())
}

fn down(cli: &Cli) -> anyhow::Result<()> {
    let data_dir = state::info(&cli.name)
        .map(|i| i.data_dir)
        .or_else(|| state::owner(&cli.name).and_then(|o| o.data_dir))
        .unwrap_or_else(|| cli.data_dir());
    match state::owner(&cli.name) {
        Some(owner) if owner.alive() => {
            let pid = rustix::process::Pid::from_raw(i32::try_from(owner.pid)?)
                .context("supervisor pid")?;
            rustix::process::kill_process(pid, rustix::process::Signal::TERM)
                .context("signalling the cluster's supervisor")?;
            let deadline = Instant::now() + Duration::from_secs(60);
            while owner.alive() {
                if Instant::now() > deadline {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Some(_) => {}
        None if !data_dir.exists() => {
            println!("No cluster named {:?}.", cli.name);
            return Ok(());
        }
        None => {}
    }
    // Whatever a dead supervisor left: worlds whose owner is gone.
    let swept = ferry_testbed::sweep();
    if !swept.failures.is_empty() {
        eprintln!("could not remove everything: {:?}", swept.failures);
    }
    state::forget(&cli.name)?;
    if cli.purge {
        match std::fs::remove_dir_all(&data_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", data_dir.display())),
        }
        println!("Cluster {:?} removed with its data.", cli.name);
    } else {
        println!(
            "Cluster {:?} stopped; its data stays in {} (`ferry up --name {}` resumes it, `ferry down --purge` removes it).",
            cli.name,
            data_dir.display(),
            cli.name
        );
    }
    Ok(())
}

fn status(cli: &Cli) -> anyhow::Result<()> {
    let names = if std::env::args().any(|a| a == "--name" || a.starts_with("--name=")) {
        vec![cli.name.clone()]
    } else {
        state::names()
    };
    if names.is_empty() {
        println!("No clusters. `ferry up` starts one.");
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    for name in names {
        let alive = state::owner(&name).is_some_and(|o| o.alive());
        let Some(info) = state::info(&name).filter(|_| alive) else {
            println!("{name}: {}", if alive { "starting" } else { "stopped" });
            continue;
        };
        println!(
            "{name}: running, apiserver on https://127.0.0.1:{}, kubeconfig {}",
            info.api_port,
            info.kubeconfig.display()
        );
        let ready = runtime.block_on(node_conditions(&info.kubeconfig));
        println!("  {:<24} {:<10} {:<16} NETNS", "NODE", "STATUS", "IP");
        for node in &info.nodes {
            let st = match &ready {
                Ok(map) => map
                    .get(&node.name)
                    .cloned()
                    .unwrap_or_else(|| "Unknown".into()),
                Err(_) => "Unknown".into(),
            };
            println!(
                "  {:<24} {:<10} {:<16} {}",
                node.name, st, node.ip, node.netns
            );
        }
        if let Err(e) = ready {
            println!("  (the apiserver did not answer: {e})");
        }
        if info
            .nodes
            .iter()
            .any(|n| !n.observe_socket.as_os_str().is_empty())
        {
            println!(
                "  FLOWS: ferry-agent observe --observe-socket <SOCKET> (inspect: --bpffs-root <PINS> too)"
            );
            println!("  {:<24} {:<40} PINS", "NODE", "SOCKET");
            for node in &info.nodes {
                println!(
                    "  {:<24} {:<40} {}",
                    node.name,
                    node.observe_socket.display(),
                    node.bpffs_root.display()
                );
            }
        }
        println!("  {:<28} {:<8} {:<9} LOG", "COMPONENT", "PID", "RESTARTS");
        for c in &info.components {
            let label = match &c.node {
                Some(n) => format!("{} ({n})", c.name),
                None => c.name.clone(),
            };
            let pid = c.pid.map_or_else(|| "-".into(), |p| p.to_string());
            println!(
                "  {label:<28} {pid:<8} {:<9} {}",
                c.restarts,
                c.log.display()
            );
        }
        if let Some(route) = &info.host_route {
            println!(
                "  HOST ROUTE (--host-access route): link {} with {}; {}",
                route.link,
                route.addrs.join(", "),
                route.routes.join(", ")
            );
        }
        if !info.published.is_empty() {
            println!("  PUBLISHED ON 127.0.0.1");
            for p in &info.published {
                match &p.error {
                    None => println!("  {:>5}/{:<4} {}", p.port, p.proto, p.what),
                    Some(e) => println!(
                        "  {:>5}/{:<4} {} NOT PUBLISHED: {e}",
                        p.port, p.proto, p.what
                    ),
                }
            }
        }
    }
    Ok(())
}

async fn node_conditions(
    kubeconfig: &std::path::Path,
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    let client = kube::Client::try_from(config)?;
    let nodes: Api<Node> = Api::all(client);
    let list = tokio::time::timeout(Duration::from_secs(5), nodes.list(&Default::default()))
        .await
        .context("timed out")??;
    Ok(list
        .items
        .into_iter()
        .map(|n| {
            let ready = n
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
                .map(|c| {
                    if c.status == "True" {
                        "Ready"
                    } else {
                        "NotReady"
                    }
                })
                .unwrap_or("Unknown");
            (n.metadata.name.unwrap_or_default(), ready.to_owned())
        })
        .collect())
}
