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
use crate::limits::Limits;
use crate::registry::Registry;
use crate::storage::sqlite::SqliteBackend;
use crate::store::{History, Store};
use crate::tls::Pki;

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
    /// Watch events kept for resuming watches; older versions get 410.
    pub history: History,
    /// Bounds on stored objects and on writes.
    pub limits: Limits,
    /// The address the `kubernetes` Service's endpoints point at.
    pub advertise_address: Option<std::net::IpAddr>,
    /// Controllers to run (names from [`crate::controllers::ALL`]).
    pub controllers: std::collections::BTreeSet<&'static str>,
    /// Connection caps and timeouts of the HTTPS front door.
    pub connections: crate::api::conn::ConnLimits,
    /// The bearer token for the nodes' API (`pods/log`, `pods/exec`);
    /// created when missing. `None`: those subresources answer 503.
    pub kubelet_token_file: Option<PathBuf>,
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
    crate::data_dir::prepare(&settings.data_dir).context("preparing the data dir")?;
    let backend: Box<dyn crate::storage::Backend> = match &settings.storage {
        Storage::Sqlite => Box::new({
            let db = settings.data_dir.join("state.db");
            crate::data_dir::private_file(&db).context("creating the sqlite store")?;
            SqliteBackend::open(&db).context("opening the sqlite store")?
        }),
        Storage::Etcd { endpoints, prefix } => Box::new(
            crate::storage::etcd::EtcdBackend::connect(endpoints, prefix)
                .with_context(|| format!("connecting to etcd at {}", endpoints.join(",")))?,
        ),
    };
    let mut store = Store::open(backend, settings.history, settings.limits)
        .context("loading the object store")?;
    set_aside_quarantined(&mut store, &settings.data_dir)?;
    let registry =
        Arc::new(Registry::new(store, settings.cluster.clone()).context("seeding allocators")?);
    let listener = TcpListener::bind(settings.bind)
        .await
        .with_context(|| format!("binding {}", settings.bind))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    // The address pods reach the apiserver at, as kube-apiserver's
    // --advertise-address: given, or the bound one when that is routable.
    let endpoint = settings
        .advertise_address
        .or_else(|| Some(addr.ip()).filter(|ip| !ip.is_unspecified() && !ip.is_loopback()))
        .map(|ip| SocketAddr::new(ip, addr.port()));
    // Stored state can stand in the way (another Service holding the
    // `kubernetes` Service's address, say): the server still starts, and
    // the reconciler keeps trying and saying why.
    if let Err(e) = registry.bootstrap(endpoint) {
        tracing::error!(error = %e, "creating the system namespaces and the kubernetes service; retrying in the background");
    }
    tokio::spawn(reconcile_system_objects(registry.clone(), endpoint));
    // The default roles, then the policy, all before the first request.
    crate::rbac::bootstrap::run(&registry);
    let authorizer = Arc::new(crate::rbac::Authorizer::new(&registry.store));

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
    // In-cluster clients dial the advertised address when they are told
    // it instead of the ClusterIP (a dataplane's own agent does).
    if let Some(ip) = settings.advertise_address
        && !sans.contains(&ip.to_string())
    {
        sans.push(ip.to_string());
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
    let tokens = Arc::new(
        crate::serviceaccount::Tokens::open(&settings.data_dir.join("pki").join("sa.key"))
            .context("preparing the service account token key")?,
    );
    let root_ca = std::fs::read_to_string(&pki.ca_cert).context("reading the CA certificate")?;
    registry.enable_service_account_admission();
    // Before the kubeconfig is written: whoever waits for that (`ferry
    // up`) then finds the nodes' token too.
    let kubelet_token = match &settings.kubelet_token_file {
        Some(path) => Some(
            crate::api::node_proxy::KubeletToken::load_or_create(path)
                .context("preparing the kubelet token")?,
        ),
        None => None,
    };

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
        node_proxy: crate::api::node_proxy::NodeProxy::new(kubelet_token),
        authorizer,
        tokens,
    });
    let serve = tokio::spawn(api.serve(listener, tls, settings.connections.clone()));
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
        Some(&root_ca),
    )
    .context("starting controllers")?;
    tracing::info!(%url, "ferry-apiserver serving");
    Ok(Running {
        addr,
        registry,
        serve,
    })
}

/// How often the system objects are checked even when nothing was
/// deleted, as kube-apiserver's endpoint reconciler.
const RECONCILE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Keeps the system namespaces, the `kubernetes` Service and its endpoints
/// in place: at once after a write removes one, and every
/// [`RECONCILE_INTERVAL`] for changes to them.
async fn reconcile_system_objects(registry: Arc<Registry>, endpoint: Option<SocketAddr>) {
    let mut changes = registry.store.subscribe();
    let mut tick = tokio::time::interval(RECONCILE_INTERVAL);
    loop {
        let periodic = tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                false
            }
            _ = tick.tick() => true,
        };
        let missing = || -> bool {
            let store = &registry.store;
            let gone = |res, ns, name| !matches!(store.entry(res, ns, name), Ok(Some(_)));
            ["default", "kube-system", "kube-public", "kube-node-lease"]
                .iter()
                .any(|ns| gone(&crate::resources::NAMESPACES, "", ns))
                || gone(&crate::resources::SERVICES, "default", "kubernetes")
                || (endpoint.is_some()
                    && (gone(&crate::resources::ENDPOINTS, "default", "kubernetes")
                        || gone(&crate::resources::ENDPOINTSLICES, "default", "kubernetes")))
        };
        if !periodic && !missing() {
            continue;
        }
        let reg = registry.clone();
        match tokio::task::spawn_blocking(move || reg.bootstrap(endpoint)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "restoring the system namespaces and the kubernetes service")
            }
            Err(e) => tracing::warn!(error = %e, "the system object reconciler failed"),
        }
        // A burst of writes is one check, not one per write.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Saves each object the loader could not serve under
/// `<data-dir>/quarantine/` and removes it from the store, with an error
/// naming both, so the server starts with everything else.
fn set_aside_quarantined(store: &mut Store, data_dir: &std::path::Path) -> anyhow::Result<()> {
    let quarantined = store.take_quarantined();
    if quarantined.is_empty() {
        return Ok(());
    }
    let dir = data_dir.join("quarantine");
    crate::data_dir::prepare(&dir)?;
    for q in quarantined {
        let file: String = q
            .key
            .trim_start_matches('/')
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = dir.join(format!("{file}@{}.json", q.revision));
        crate::data_dir::private_file(&path)?;
        std::fs::write(&path, &q.value).with_context(|| format!("saving {}", path.display()))?;
        store
            .drop_quarantined(&q.key)
            .with_context(|| format!("removing quarantined {} from the store", q.key))?;
        tracing::error!(key = %q.key, reason = %q.reason, saved = %path.display(), "QUARANTINED a stored object that cannot be served; it was removed from the store and its last bytes saved");
    }
    Ok(())
}

/// Writes a kubeconfig for `user` in `groups`, creating its token when
/// missing. Without groups, a node (`system:node:NAME`) is in
/// `system:nodes`, anyone else in none.
pub fn user_kubeconfig(
    data_dir: &std::path::Path,
    server: &str,
    user: &str,
    groups: &[String],
    out: &std::path::Path,
) -> anyhow::Result<()> {
    crate::auth::validate_user_name(user).context("invalid --user")?;
    for g in groups {
        crate::auth::validate_user_name(g)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("invalid --group {g:?}"))?;
    }
    let mut groups: Vec<&str> = groups.iter().map(String::as_str).collect();
    if groups.is_empty() && user.starts_with("system:node:") {
        groups.push(crate::rbac::node::NODES_GROUP);
    }
    crate::data_dir::prepare(data_dir).context("preparing the data dir")?;
    let auth = TokenAuth::open(data_dir).context("opening the token file")?;
    let token = auth
        .token_for(user, &groups)
        .context("creating the token")?;
    let ca = std::fs::read_to_string(Pki::new(data_dir).ca_cert)
        .context("reading the CA certificate; start the apiserver once first")?;
    write_kubeconfig(out, server, &ca, user, &token).context("writing the kubeconfig")?;
    Ok(())
}
