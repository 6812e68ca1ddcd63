//! `ferry-apiserver`: the compact Kubernetes-compatible apiserver.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use ferry_controlplane::config::{self, ClusterConfig};
use ferry_controlplane::server::{self, DEFAULT_HISTORY, Settings, Storage};

#[derive(Debug, Parser)]
#[command(
    name = "ferry-apiserver",
    version,
    about = "Ferry's compact Kubernetes-compatible apiserver"
)]
struct Cli {
    /// Where state, PKI and tokens live.
    #[arg(long, default_value = "/var/lib/ferry")]
    data_dir: PathBuf,
    /// Address to serve HTTPS on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    bind: SocketAddr,
    /// Write an admin kubeconfig here.
    #[arg(long)]
    kubeconfig_out: Option<PathBuf>,
    /// Service CIDRs, primary family first (dual-stack: one per family).
    #[arg(long, default_value = "10.96.0.0/16")]
    service_cluster_ip_range: String,
    /// Range of ports NodePort services are given.
    #[arg(long, default_value = "30000-32767")]
    service_node_port_range: String,
    /// Pod CIDRs, primary family first.
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: String,
    /// Prefix length of each node's IPv4 podCIDR.
    #[arg(long, default_value_t = 24)]
    node_cidr_mask_size: u8,
    /// Pools LoadBalancer services take ingress IPs from.
    #[arg(long, default_value = "")]
    loadbalancer_ip_pool: String,
    /// Storage backend: the embedded SQLite store, or etcd.
    #[arg(long, value_parser = ["sqlite", "etcd"], default_value = "sqlite")]
    storage: String,
    /// etcd client URLs, comma-separated (with --storage etcd).
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    etcd_endpoints: String,
    /// Key prefix in etcd.
    #[arg(long, default_value = "/registry")]
    etcd_prefix: String,
    /// Controllers to run: `*` for all, `name` to add, `-name` to remove
    /// (namespace, garbagecollector, endpointslice, nodeipam, lbipam, podgc).
    #[arg(long, default_value = "*")]
    controllers: String,
    /// Watch events kept for resuming watches.
    #[arg(long, default_value_t = DEFAULT_HISTORY)]
    watch_history: usize,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a kubeconfig for a user (e.g. `system:node:NAME`), creating its token.
    Kubeconfig {
        #[arg(long)]
        user: String,
        /// Server URL written into the kubeconfig.
        #[arg(long, default_value = "https://127.0.0.1:6443")]
        server: String,
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    // Writes run on the blocking pool and serialize on the store's writer
    // lock: a few threads keep the cores busy, hundreds only contend.
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(8)
        .build()
        .context("starting the runtime")?
        .block_on(serve())
}

async fn serve() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Some(Command::Kubeconfig { user, server, out }) = &cli.command {
        return server::node_kubeconfig(&cli.data_dir, server, user, out);
    }
    let cluster = ClusterConfig {
        service_cidrs: config::parse_cidrs(
            "--service-cluster-ip-range",
            &cli.service_cluster_ip_range,
        )?,
        node_port_range: config::parse_port_range(&cli.service_node_port_range)?,
        cluster_cidrs: config::parse_cidrs("--cluster-cidr", &cli.cluster_cidr)?,
        node_cidr_mask_size: cli.node_cidr_mask_size,
        loadbalancer_pools: config::parse_pools(
            "--loadbalancer-ip-pool",
            &cli.loadbalancer_ip_pool,
        )?,
    };
    anyhow::ensure!(
        !cluster.service_cidrs.is_empty(),
        "--service-cluster-ip-range: at least one CIDR is required"
    );
    let storage = match cli.storage.as_str() {
        "etcd" => Storage::Etcd {
            endpoints: cli
                .etcd_endpoints
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            prefix: cli.etcd_prefix.clone(),
        },
        _ => Storage::Sqlite,
    };
    let running = server::start(Settings {
        storage,
        data_dir: cli.data_dir.clone(),
        bind: cli.bind,
        kubeconfig_out: cli.kubeconfig_out.clone(),
        cluster,
        history: cli.watch_history,
        controllers: ferry_controlplane::controllers::parse_enabled(&cli.controllers)?,
    })
    .await?;
    if let Some(k) = &cli.kubeconfig_out {
        eprintln!(
            "ferry-apiserver is up at {}. Point kubectl at it:\n  export KUBECONFIG={}\n  kubectl get namespaces",
            running.addr,
            k.display()
        );
    }
    tokio::select! {
        r = running.serve => r.context("server task failed")?,
        r = tokio::signal::ctrl_c() => r.context("waiting for ctrl-c")?,
    }
    Ok(())
}
