//! `ferry-apiserver`: the compact Kubernetes-compatible apiserver.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use ferry_controlplane::admission::external_ips::ExternalIpPolicy;
use ferry_controlplane::api::conn;
use ferry_controlplane::config::{self, ClusterConfig};
use ferry_controlplane::limits::{self, Limits};
use ferry_controlplane::server::{self, Settings, Storage};
use ferry_controlplane::store::History;

// jemalloc, with settings that hand memory back: each controller runs on a
// thread of its own, and glibc's malloc kept an arena for each (with a few
// workloads and watches: 12.4 MiB of heap instead of 17.4).
ferry_daemon::jemalloc!();

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
    /// The address pods reach this apiserver at, written into the
    /// `kubernetes` Service's endpoints (default: the bind address when it
    /// is neither loopback nor unspecified).
    #[arg(long)]
    advertise_address: Option<std::net::IpAddr>,
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
    /// Refuse externalIPs a Service did not already have (kube's
    /// DenyServiceExternalIPs admission plugin).
    #[arg(long)]
    deny_service_external_ips: bool,
    /// CIDRs Services' externalIPs must fall in, comma-separated (empty: any
    /// address outside the cluster's own ranges).
    #[arg(long, default_value = "")]
    service_external_ip_cidrs: String,
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
    /// (namespace, garbagecollector, endpointslice, nodeipam, lbipam, podgc,
    /// scheduler, nodelifecycle, clusterrole-aggregation).
    #[arg(long, default_value = "*")]
    controllers: String,
    /// A node with a Lease that neither renews it nor posts its Ready
    /// condition for this long is marked unreachable (Ready=Unknown, tainted,
    /// its pods not ready).
    #[arg(long, default_value = "40s", value_parser = conn::parse_duration)]
    node_monitor_grace_period: std::time::Duration,
    /// Watch events kept for resuming watches (older versions get 410).
    #[arg(long, default_value_t = History::default().events)]
    watch_history: usize,
    /// Bytes of watch events kept for resuming watches.
    #[arg(long, default_value_t = limits::DEFAULT_HISTORY_BYTES)]
    watch_history_bytes: usize,
    /// Largest object stored, as JSON (etcd's default request limit).
    #[arg(long, default_value_t = limits::DEFAULT_MAX_OBJECT_BYTES)]
    max_object_size_bytes: usize,
    /// Deepest nesting of maps and lists in an object (below the 128 levels
    /// JSON clients such as kube-rs accept, with room for list wrappers).
    #[arg(long, default_value_t = limits::DEFAULT_MAX_DEPTH, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(8..=120))]
    max_object_depth: usize,
    /// Most operations in one JSON patch.
    #[arg(long, default_value_t = limits::DEFAULT_MAX_PATCH_OPERATIONS)]
    max_json_patch_operations: usize,
    /// Most bytes the `copy` operations of one JSON patch may copy.
    #[arg(long, default_value_t = limits::DEFAULT_MAX_PATCH_COPY_BYTES)]
    max_json_patch_copy_bytes: usize,
    /// Connections open at once; when every one is held by an
    /// authenticated client, new ones are refused (lowered to fit the
    /// open-file limit).
    #[arg(long, default_value_t = conn::DEFAULT_MAX_CONNECTIONS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    max_connections: usize,
    /// Connections that have not yet made an authenticated request; over
    /// it, the oldest of them is closed for a new one.
    #[arg(long, default_value_t = conn::DEFAULT_MAX_PENDING_CONNECTIONS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    max_pending_connections: usize,
    /// Time for the TLS handshake, then for a request's head (kube-apiserver's
    /// ReadHeaderTimeout).
    #[arg(long, default_value = "32s", value_parser = conn::parse_duration)]
    read_header_timeout: std::time::Duration,
    /// A connection with no request in flight is closed after this long
    /// (kube-apiserver's IdleTimeout); watches are never cut.
    #[arg(long, default_value = "90s", value_parser = conn::parse_duration)]
    idle_timeout: std::time::Duration,
    /// Concurrent HTTP/2 streams per connection.
    #[arg(long, default_value_t = conn::DEFAULT_HTTP2_MAX_STREAMS, value_parser = clap::value_parser!(u32).range(1..))]
    http2_max_streams_per_connection: u32,
    /// The bearer token the apiserver presents to the nodes' API for
    /// `kubectl logs` and `exec` (its first line; created, mode 0600, when
    /// missing). Give ferry-node the same file.
    #[arg(long)]
    kubelet_token_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a kubeconfig for a user (e.g. `system:node:NAME`), creating its
    /// token. A user that already has a token keeps it and its groups.
    Kubeconfig {
        #[arg(long)]
        user: String,
        /// A group the user is in (repeatable). Without any, a
        /// `system:node:NAME` user is in `system:nodes` and any other user in
        /// none (every authenticated user is also in `system:authenticated`).
        #[arg(long = "group")]
        groups: Vec<String>,
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
    if let Some(Command::Kubeconfig {
        user,
        groups,
        server,
        out,
    }) = &cli.command
    {
        return server::user_kubeconfig(&cli.data_dir, server, user, groups, out);
    }
    // As Go's runtime: the soft open-file limit up to the hard one.
    let open_files = match ferry_daemon::raise_nofile_limit() {
        Ok(limit) => {
            tracing::info!(open_files = ?limit, "open-file limit");
            limit
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the open-file limit");
            None
        }
    };
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
        external_ips: ExternalIpPolicy {
            deny_new: cli.deny_service_external_ips,
            allowed: config::parse_pools(
                "--service-external-ip-cidrs",
                &cli.service_external_ip_cidrs,
            )?,
        },
        node_monitor_grace_period: cli.node_monitor_grace_period,
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
        advertise_address: cli.advertise_address,
        cluster,
        history: History {
            events: cli.watch_history,
            bytes: cli.watch_history_bytes,
        },
        limits: Limits {
            max_depth: cli.max_object_depth,
            max_object_bytes: cli.max_object_size_bytes,
            max_patch_operations: cli.max_json_patch_operations,
            max_patch_copy_bytes: cli.max_json_patch_copy_bytes,
        },
        controllers: ferry_controlplane::controllers::parse_enabled(&cli.controllers)?,
        connections: conn::ConnLimits {
            max_connections: cli.max_connections,
            max_pending_connections: cli.max_pending_connections,
            read_header_timeout: cli.read_header_timeout,
            idle_timeout: cli.idle_timeout,
            http2_max_streams_per_connection: cli.http2_max_streams_per_connection,
            ..conn::ConnLimits::default()
        }
        .fit_open_files(open_files),
        kubelet_token_file: cli.kubelet_token_file.clone(),
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
