//! `ferry-dns`: the cluster DNS server. Watches the API, answers the
//! cluster zone, forwards the rest; see the crate docs of `ferry_dns`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use ferry_daemon::http::HttpLimits;
use ferry_dns::answer::Zone;
use ferry_dns::config::{File, Flags, PodsMode, Settings};
use ferry_dns::forward::{ForwardSettings, Forwarder};
use ferry_dns::metrics::{self, DnsMetrics, Endpoints};
use ferry_dns::server::Handler;
use ferry_dns::tcp::{self, TcpLimits};
use ferry_dns::watch::{self, Shared};
use kube::Client;
use prometheus_client::registry::Registry;
use tracing::{info, warn};

#[derive(Debug, Parser)]
#[command(name = "ferry-dns", version, about = "Ferry's cluster DNS server")]
struct Cli {
    /// Kubeconfig to reach the API; in-cluster configuration when unset.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Settings file (TOML); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Threads answering queries [default: one per CPU].
    #[arg(long)]
    workers: Option<usize>,
    #[command(flatten)]
    flags: Flags,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                // hickory-server logs every request at info.
                tracing_subscriber::EnvFilter::new("info,hickory_server=warn,hickory_proto=warn")
            }),
        )
        .init();
    let cli = Cli::parse();
    let file = match &cli.config {
        Some(path) => File::read(path)?,
        None => File::default(),
    };
    let settings = Settings::resolve(file, cli.flags)?;
    // Every query upstream holds a socket: make room for max-concurrent of
    // them beside the connections, as Go's runtime does for CoreDNS.
    match ferry_daemon::raise_nofile_limit() {
        Ok(limit) => info!(open_files = ?limit, "open-file limit"),
        Err(error) => warn!(%error, "raising the open-file limit"),
    }
    let mut runtime = match cli.workers {
        Some(0) => anyhow::bail!("--workers must be at least 1"),
        // One thread: tokio's single-threaded scheduler, which wakes and
        // spawns without the multi-threaded one's synchronisation.
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(workers) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(workers);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    runtime
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(run(cli.kubeconfig, settings))
}

async fn client(kubeconfig: Option<&PathBuf>) -> anyhow::Result<Client> {
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
    Client::try_from(config).context("building the API client")
}

async fn run(kubeconfig: Option<PathBuf>, settings: Settings) -> anyhow::Result<()> {
    let client = client(kubeconfig.as_ref()).await?;
    let shared = Arc::new(Shared::new(settings.pods == PodsMode::Verified));
    let first = settings
        .listen
        .first()
        .copied()
        .context("no listen address")?;
    let server_label = metrics::server_label(first);
    let forwarder = Arc::new(Forwarder::new(ForwardSettings {
        upstreams: settings.upstreams.clone(),
        timeout: Duration::from_secs(2),
        cache_capacity: settings.cache_size,
        cache_max_ttl: settings.cache_ttl,
        cache_max_denial_ttl: settings.cache_ttl,
        server: server_label.clone(),
        zone: ".".into(),
        max_concurrent: settings.max_concurrent,
    }));
    let mut registry = Registry::default();
    let dns_metrics = Arc::new(DnsMetrics::register(&mut registry, server_label));
    forwarder.register_metrics(&mut registry);
    shared.decode_errors.register(&mut registry);
    let nameserver_ips = settings
        .listen
        .iter()
        .map(|a| a.ip())
        .filter(|ip| !ip.is_unspecified())
        .collect();
    let zone = Zone::new(
        &settings.zone,
        settings.ttl,
        settings.pods,
        settings.namespaces.clone(),
        nameserver_ips,
    )
    .with_context(|| format!("zone {}", settings.zone))?;

    let handler = Handler {
        zone,
        shared: shared.clone(),
        forwarder: forwarder.clone(),
        metrics: dns_metrics,
    };
    let tcp_handler = Arc::new(handler.clone());
    let tcp_limits = TcpLimits {
        idle: settings.tcp_idle_timeout,
        max_connections: settings.tcp_max_connections,
    };
    // UDP through hickory-server; TCP through our own accept loop (see
    // `ferry_dns::tcp`).
    let mut server = hickory_server::Server::new(handler);
    for addr in &settings.listen {
        let udp = bind_any(*addr, tokio::net::UdpSocket::bind)
            .await
            .with_context(|| format!("listening on udp {addr}"))?;
        let tcp = bind_any(*addr, tokio::net::TcpListener::bind)
            .await
            .with_context(|| format!("listening on tcp {addr}"))?;
        server.register_socket(udp);
        tokio::spawn(tcp::serve(tcp, tcp_handler.clone(), tcp_limits));
    }
    let http = bind_any(settings.metrics_listen, tokio::net::TcpListener::bind)
        .await
        .with_context(|| format!("listening on {}", settings.metrics_listen))?;
    let ready_state = shared.clone();
    let endpoints = Arc::new(Endpoints {
        registry,
        ready: Box::new(move || ready_state.synced()),
    });
    let http_limits = HttpLimits {
        header_timeout: settings.http_header_timeout,
        max_connections: settings.http_max_connections,
        ..HttpLimits::default()
    };
    tokio::spawn(metrics::serve(http, endpoints, http_limits));
    tokio::spawn(watch::run(client, shared.clone()));
    if !settings.upstreams.is_empty() {
        tokio::spawn(forwarder.clone().probe_for_loops());
    } else {
        warn!("no upstream resolvers: names outside the zone are refused");
    }
    info!(
        zone = %settings.zone,
        listen = ?settings.listen,
        upstreams = ?settings.upstreams,
        pods = ?settings.pods,
        metrics = %settings.metrics_listen,
        "serving"
    );

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        done = server.block_until_done() => done.context("DNS server stopped")?,
        _ = tokio::signal::ctrl_c() => info!("interrupted"),
        _ = term.recv() => info!("terminated"),
    }
    server
        .shutdown_gracefully()
        .await
        .context("shutting down")?;
    Ok(())
}

/// Binds `addr`. `[::]` takes both families (as CoreDNS's `:53`), and on a
/// host without IPv6 falls back to `0.0.0.0` on the same port, so one
/// config serves IPv4, IPv6 and dual-stack clusters.
async fn bind_any<T, F, Fut>(addr: SocketAddr, bind: F) -> std::io::Result<T>
where
    F: Fn(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<T>>,
{
    /// EAFNOSUPPORT, EADDRNOTAVAIL: IPv6 is off in the kernel or the
    /// namespace.
    const NO_IPV6: [i32; 2] = [97, 99];
    match bind(addr).await {
        Err(e)
            if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED)
                && e.raw_os_error().is_some_and(|c| NO_IPV6.contains(&c)) =>
        {
            let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), addr.port());
            warn!(%addr, fallback = %v4, error = %e, "no IPv6 here; listening on IPv4 only");
            bind(v4).await
        }
        other => other,
    }
}
