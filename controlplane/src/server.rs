//! Assembles the apiserver from its settings: storage, registry, PKI,
//! tokens, the admin kubeconfig and the HTTPS listener.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::api::Api;
use crate::auth::{TokenAuth, write_kubeconfig};
use crate::config::ClusterConfig;
use crate::registry::Registry;
use crate::storage::sqlite::SqliteBackend;
use crate::store::Store;
use crate::tls::Pki;

/// Events kept for watches to resume from; older resource versions get 410.
pub const DEFAULT_HISTORY: usize = 20_000;

/// Where objects are stored.
#[derive(Debug, Clone)]
pub enum Storage {
    /// The embedded SQLite store in the data dir.
    Sqlite,
    /// etcd v3 at these endpoints, keys under `prefix`.
    Etcd {
        endpoints: Vec<String>,
        prefix: String,
    },
}

/// How often etcd's history is compacted, as kube-apiserver's default.
const COMPACTION_INTERVAL: std::time::Duration = std::time::Duration::from_secs(300);

#[derive(Debug, Clone)]
pub struct Settings {
    pub storage: Storage,
    pub data_dir: PathBuf,
    pub bind: SocketAddr,
    pub kubeconfig_out: Option<PathBuf>,
    pub cluster: ClusterConfig,
    pub history: usize,
    /// Controllers to run (names from [`crate::controllers::ALL`]).
    pub controllers: std::collections::BTreeSet<&'static str>,
}

/// A running apiserver.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    pub registry: Arc<Registry>,
    pub serve: tokio::task::JoinHandle<()>,
}

fn server_url(addr: SocketAddr) -> String {
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else if addr.is_ipv6() {
        format!("[{}]", addr.ip())
    } else {
        addr.ip().to_string()
    };
    format!("https://{host}:{}", addr.port())
}

/// Opens storage, prepares PKI and tokens, binds and starts serving.
pub async fn start(settings: Settings) -> anyhow::Result<Running> {
    settings
        .cluster
        .validate()
        .context("invalid cluster settings")?;
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("creating data dir {}", settings.data_dir.display()))?;
    let backend: Box<dyn crate::storage::Backend> = match &settings.storage {
        Storage::Sqlite => Box::new(
            SqliteBackend::open(&settings.data_dir.join("state.db"))
                .context("opening the sqlite store")?,
        ),
        Storage::Etcd { endpoints, prefix } => Box::new(
            crate::storage::etcd::EtcdBackend::connect(endpoints, prefix)
                .with_context(|| format!("connecting to etcd at {}", endpoints.join(",")))?,
        ),
    };
    let store = Store::open(backend, settings.history).context("loading the object store")?;
    let registry =
        Arc::new(Registry::new(store, settings.cluster.clone()).context("seeding allocators")?);
    registry
        .bootstrap()
        .context("creating the default namespaces and the kubernetes service")?;

    let listener = TcpListener::bind(settings.bind)
        .await
        .with_context(|| format!("binding {}", settings.bind))?;
    let addr = listener.local_addr().context("reading the bound address")?;

    let pki = Pki::new(&settings.data_dir);
    let mut sans: Vec<String> = vec![
        "localhost".into(),
        "127.0.0.1".into(),
        "::1".into(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        "kubernetes.default.svc.cluster.local".into(),
    ];
    if !addr.ip().is_unspecified() {
        sans.push(addr.ip().to_string());
    }
    for cidr in &settings.cluster.service_cidrs {
        let first = crate::alloc::IpAllocator::new(*cidr).nth(1);
        sans.push(first.to_string());
    }
    pki.ensure(&sans)
        .context("preparing the cluster CA and serving certificate")?;
    let tls = pki
        .server_config()
        .context("loading the serving certificate")?;
    let auth = Arc::new(TokenAuth::open(&settings.data_dir).context("opening the token file")?);

    let url = server_url(addr);
    if let Some(out) = &settings.kubeconfig_out {
        let token = auth
            .token_for("admin", &["system:masters"])
            .context("reading the admin token")?;
        let ca = std::fs::read_to_string(&pki.ca_cert).context("reading the CA certificate")?;
        write_kubeconfig(out, &url, &ca, "admin", &token)
            .context("writing the admin kubeconfig")?;
    }
    let api = Arc::new(Api {
        registry: registry.clone(),
        auth,
        advertise: addr.to_string(),
    });
    let serve = tokio::spawn(api.serve(listener, tls));
    if matches!(settings.storage, Storage::Etcd { .. }) {
        let reg = registry.clone();
        tokio::spawn(async move {
            // Each tick compacts to the revision seen at the tick before, so
            // the last interval of history always remains.
            let mut previous = 0;
            loop {
                tokio::time::sleep(COMPACTION_INTERVAL).await;
                let reg = reg.clone();
                let target = previous;
                previous = reg.store.revision();
                let done =
                    tokio::task::spawn_blocking(move || reg.store.compact_backend(target)).await;
                if let Ok(Err(e)) = done {
                    tracing::warn!(revision = target, error = %e, "etcd compaction failed");
                }
            }
        });
    }
    crate::controllers::start(
        &registry,
        &settings.controllers,
        &tokio::runtime::Handle::current(),
    )
    .context("starting controllers")?;
    tracing::info!(%url, "ferry-apiserver serving");
    Ok(Running {
        addr,
        registry,
        serve,
    })
}

/// Writes a kubeconfig for `user` (a node: `system:node:NAME`), creating
/// its token when missing.
pub fn node_kubeconfig(
    data_dir: &std::path::Path,
    server: &str,
    user: &str,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    let auth = TokenAuth::open(data_dir).context("opening the token file")?;
    let token = auth
        .token_for(user, &["system:nodes"])
        .context("creating the token")?;
    let ca = std::fs::read_to_string(Pki::new(data_dir).ca_cert)
        .context("reading the CA certificate; start the apiserver once first")?;
    write_kubeconfig(out, server, &ca, user, &token).context("writing the kubeconfig")?;
    Ok(())
}
