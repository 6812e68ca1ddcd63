//! `ferry-node`: the node runtime. See the library's documentation
//! (`ferry_node`) for what it owns and what it must never touch.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use ferry_node::etc_files::DnsSettings;
use ferry_node::events::Recorder;
use ferry_node::images::Catalogue;
use ferry_node::process::{InitArgs, Tools};
use ferry_node::registration::{self, NodeSettings, Registration};
use ferry_node::sandbox::Network;
use ferry_node::state::StateDir;
use ferry_node::volumes::host_path::HostPaths;
use ferry_node::{Runtime, supervisor};

#[derive(Debug, Parser)]
#[command(
    name = "ferry-node",
    version,
    about = "Ferry's node runtime: runs the pods bound to this node as processes",
    after_help = "Run it inside the node's network namespace:\n  nsenter --net=/var/run/netns/node-1 ferry-node --kubeconfig node-1.kubeconfig --node-name node-1 --node-ip 172.31.0.2 --cgroup-root /sys/fs/cgroup/ferry-node-1 --state-dir /var/lib/ferry-node/node-1 --host-root /var/lib/ferry-node/node-1/host --host-path-map /sys/fs/bpf=/sys/fs/bpf/node-1"
)]
struct Cli {
    /// Kubeconfig to reach the API; in-cluster configuration when unset.
    #[arg(long, global = true, env = "FERRY_NODE_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// This node's name (its Node object).
    #[arg(long, global = true, env = "FERRY_NODE_NODE_NAME", default_value = "")]
    node_name: String,
    /// The node's addresses (InternalIP), one per family.
    #[arg(long, global = true, env = "FERRY_NODE_NODE_IP", value_delimiter = ',')]
    node_ip: Vec<IpAddr>,
    /// Where the CNI network configs are (the first in lexical order is used).
    #[arg(
        long,
        global = true,
        env = "FERRY_NODE_CNI_CONF_DIR",
        default_value = "/etc/cni/net.d"
    )]
    cni_conf_dir: PathBuf,
    /// Where the CNI plugins are (`CNI_PATH`), colon-separated.
    #[arg(
        long,
        global = true,
        env = "FERRY_NODE_CNI_BIN_DIR",
        value_delimiter = ':',
        default_value = "/opt/cni/bin"
    )]
    cni_bin_dir: Vec<PathBuf>,
    /// The cgroup (v2) under which the pods' cgroups are made; never the root cgroup.
    #[arg(long, global = true, env = "FERRY_NODE_CGROUP_ROOT")]
    cgroup_root: Option<PathBuf>,
    /// Network namespaces, pod state and container logs.
    #[arg(
        long,
        global = true,
        env = "FERRY_NODE_STATE_DIR",
        default_value = "/var/lib/ferry-node"
    )]
    state_dir: PathBuf,
    /// The cluster's DNS server(s) for pods with dnsPolicy ClusterFirst.
    #[arg(
        long,
        global = true,
        env = "FERRY_NODE_CLUSTER_DNS",
        value_delimiter = ','
    )]
    cluster_dns: Vec<IpAddr>,
    /// The cluster's DNS domain.
    #[arg(
        long,
        global = true,
        env = "FERRY_NODE_CLUSTER_DOMAIN",
        default_value = "cluster.local"
    )]
    cluster_domain: String,
    /// More images: a YAML or JSON map of image to a command line or to
    /// `{root: /abs/dir, command: [...]}`; repeatable, an image in a later
    /// file replaces an earlier one's entry (the env names one file).
    #[arg(long, global = true, env = "FERRY_NODE_IMAGES")]
    images: Vec<PathBuf>,
    /// Pods this node takes (its `pods` capacity).
    #[arg(
        long,
        global = true,
        env = "FERRY_NODE_MAX_PODS",
        default_value_t = 110
    )]
    max_pods: u32,
    /// Port of `/healthz` on 127.0.0.1 (0: off).
    #[arg(
        long,
        global = true,
        env = "FERRY_NODE_HEALTH_PORT",
        default_value_t = 10248
    )]
    health_port: u16,
    /// Port of the node API (`kubectl logs`/`exec` through the apiserver)
    /// on each --node-ip (0: off).
    #[arg(
        long,
        global = true,
        env = "FERRY_NODE_KUBELET_PORT",
        default_value_t = 10250
    )]
    kubelet_port: u16,
    /// A file whose first line is the bearer token the apiserver presents
    /// to the node API; without it the node API is off.
    #[arg(long, global = true, env = "FERRY_NODE_KUBELET_TOKEN_FILE")]
    kubelet_token_file: Option<PathBuf>,
    /// Where pods' hostPath volumes are resolved: `/` (the default) is the
    /// real file system, as on a real node; a node sharing its machine
    /// with other nodes gets a private directory, e.g.
    /// `--host-root /var/lib/ferry/node-1/host` (a hostPath `/opt/cni/bin`
    /// is then `/var/lib/ferry/node-1/host/opt/cni/bin`).
    #[arg(long, global = true, env = "FERRY_NODE_HOST_ROOT", default_value = "/")]
    host_root: PathBuf,
    /// A hostPath prefix resolved to a chosen real path instead of under
    /// --host-root, as HOST_PATH=REAL_PATH; repeatable (comma-separated in
    /// the env), the longest matching prefix wins. E.g.
    /// `--host-path-map /sys/fs/bpf=/sys/fs/bpf/node-1`.
    #[arg(
        long,
        global = true,
        env = "FERRY_NODE_HOST_PATH_MAP",
        value_delimiter = ',',
        value_parser = ferry_node::volumes::host_path::parse_map
    )]
    host_path_map: Vec<(PathBuf, PathBuf)>,
    /// The resolv.conf whose nameservers and search list `dnsPolicy:
    /// Default` pods get (kubelet's flag).
    #[arg(
        long,
        global = true,
        env = "FERRY_NODE_RESOLV_CONF",
        default_value = "/etc/resolv.conf"
    )]
    resolv_conf: PathBuf,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Internal: sets a container's process up and execs its command.
    #[command(hide = true)]
    ContainerInit(InitArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Some(Cmd::ContainerInit(args)) = &cli.command {
        // Runs in the container's process: no runtime, no threads; the
        // error goes to the container's log.
        let err = match ferry_node::process::container_init(args) {
            Ok(never) => match never {},
            Err(e) => e,
        };
        eprintln!("ferry-node container-init: {err:#}");
        return std::process::ExitCode::from(128);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FERRY_NODE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferry-node: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "ferry-node failed");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn client(kubeconfig: Option<&PathBuf>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .context("loading kubeconfig")?
        }
        None => kube::Config::incluster()
            .context("in-cluster configuration (pass --kubeconfig outside a cluster)")?,
    };
    kube::Client::try_from(config).context("building the API client")
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    anyhow::ensure!(!cli.node_name.is_empty(), "--node-name is required");
    anyhow::ensure!(!cli.node_ip.is_empty(), "--node-ip is required");
    let cgroup_root = cli
        .cgroup_root
        .clone()
        .context("--cgroup-root is required (a child cgroup; never the root cgroup)")?;
    let mounted = ferry_testbed::cgroup2_root().context("finding the cgroup2 mount")?;
    anyhow::ensure!(
        cgroup_root.starts_with(&mounted) && cgroup_root != mounted,
        "--cgroup-root {} must be a cgroup below the cgroup2 mount {} (never the root cgroup)",
        cgroup_root.display(),
        mounted.display()
    );
    std::fs::create_dir_all(&cgroup_root)
        .with_context(|| format!("creating {}", cgroup_root.display()))?;
    let state = StateDir::new(cli.state_dir.clone())?;
    let host_paths =
        HostPaths::new(cli.host_root.clone(), cli.host_path_map.clone()).context("--host-root")?;
    if cli.host_root != std::path::Path::new("/") {
        std::fs::create_dir_all(&cli.host_root)
            .with_context(|| format!("creating {}", cli.host_root.display()))?;
    }
    let tools = Tools::find()?;
    let exe_dir = tools.self_exe.parent().map(PathBuf::from);
    let extra = Catalogue::load_files(&cli.images)?;
    let images = Catalogue::new(extra, exe_dir);
    let client = client(cli.kubeconfig.as_ref()).await?;
    let network = Network::new(cli.cni_conf_dir.clone(), cli.cni_bin_dir.clone());
    let dns = DnsSettings {
        cluster_dns: cli.cluster_dns.clone(),
        cluster_domain: cli.cluster_domain.clone(),
        node_resolv_conf: read_resolv_conf(&cli.resolv_conf)?,
    };
    // The node API's listeners and token, bound before the Node says
    // where it is.
    let node_api = match (&cli.kubelet_token_file, cli.kubelet_port) {
        (Some(path), port) if port != 0 => {
            let token = ferry_node::kubelet_api::read_token(path)?;
            let mut listeners = Vec::new();
            for ip in &cli.node_ip {
                let addr = std::net::SocketAddr::new(*ip, port);
                listeners.push(
                    tokio::net::TcpListener::bind(addr)
                        .await
                        .with_context(|| format!("binding the node API on {addr}"))?,
                );
            }
            Some((token, listeners))
        }
        (None, port) if port != 0 => {
            tracing::warn!(
                "no --kubelet-token-file: the node API is off (kubectl logs and exec will not reach this node)"
            );
            None
        }
        _ => None,
    };
    let mut registration = Registration::new(
        client.clone(),
        NodeSettings {
            name: cli.node_name.clone(),
            ips: cli.node_ip.clone(),
            max_pods: cli.max_pods,
            health_port: cli.health_port,
            kubelet_port: if node_api.is_some() {
                cli.kubelet_port
            } else {
                0
            },
        },
        network.clone(),
    );
    // Registration is retried until it works: the apiserver may come up
    // after the node.
    let mut delay = Duration::from_millis(200);
    loop {
        match registration.register().await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), ?delay, "registering the Node");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
    tokio::spawn(async move {
        let mut lease = tokio::time::interval(registration::LEASE_RENEW);
        lease.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut status = tokio::time::interval(registration::STATUS_CHECK);
        status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = lease.tick() => {
                    if let Err(e) = registration.renew_lease().await {
                        tracing::warn!(error = %format!("{e:#}"), "renewing the Lease");
                    }
                }
                _ = status.tick() => {
                    if let Err(e) = registration.post_status(false).await {
                        tracing::warn!(error = %format!("{e:#}"), "posting the Node's status");
                    }
                }
            }
        }
    });
    if cli.health_port != 0 {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", cli.health_port))
            .await
            .with_context(|| format!("binding 127.0.0.1:{}", cli.health_port))?;
        tokio::spawn(ferry_daemon::http::serve(
            listener,
            "healthz",
            ferry_daemon::http::HttpLimits::default(),
            |_req| async { ferry_daemon::http::text(hyper::StatusCode::OK, "ok") },
        ));
    }
    let runtime = Arc::new(Runtime {
        events: Recorder::new(client.clone(), cli.node_name.clone()),
        client,
        node_name: cli.node_name.clone(),
        node_ips: cli.node_ip.clone(),
        network,
        state,
        cgroup_root,
        dns,
        images,
        tools,
        host_paths,
    });
    if let Some((token, listeners)) = node_api {
        let api = Arc::new(ferry_node::kubelet_api::KubeletApi::new(
            runtime.clone(),
            token,
        )?);
        for listener in listeners {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "serving the node API");
            }
            tokio::spawn(ferry_node::kubelet_api::serve(listener, api.clone()));
        }
    }
    tracing::info!(node = %cli.node_name, "running pods bound to this node");
    let watch = tokio::spawn(supervisor::run(runtime));
    tokio::select! {
        r = watch => r.context("the pod watch ended")?,
        r = tokio::signal::ctrl_c() => r.context("waiting for a signal")?,
    }
    Ok(())
}

/// `--resolv-conf`'s text: bounded, and a file that is not there is an
/// error naming the flag, save the default on a machine without one
/// (pods then get no nameserver, as kubelet gives them).
fn read_resolv_conf(path: &Path) -> anyhow::Result<String> {
    const MAX: u64 = 64 << 10;
    match std::fs::metadata(path) {
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                && path == Path::new("/etc/resolv.conf") =>
        {
            tracing::warn!(path = %path.display(), "no resolv.conf: dnsPolicy Default pods get no nameserver");
            Ok(String::new())
        }
        Err(e) => Err(e).with_context(|| format!("--resolv-conf {}", path.display())),
        Ok(m) if m.len() > MAX => {
            anyhow::bail!("--resolv-conf {}: larger than {MAX} bytes", path.display())
        }
        Ok(_) => std::fs::read_to_string(path)
            .with_context(|| format!("--resolv-conf {}: reading", path.display())),
    }
}
