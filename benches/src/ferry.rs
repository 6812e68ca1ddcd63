//! The workload against `ferry-apiserver`, through kube-rs with the admin
//! kubeconfig the server writes.

use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Endpoints, Namespace, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::ObjectMeta;

use crate::measure::{Watcher, check_count, collect, load_of, timed_writes};
use crate::objects::{self, BULK_NAMESPACE, Clock, WATCH_NAMESPACE};
use crate::process::{CpuMeter, CpuUse, Rss, ServerProcess, free_ports};
use crate::report::{Auth, AuthRow, Fanout, Lists, Load};
use crate::stats::Samples;
use crate::{BenchError, Result, Workload, bounded, run_bounded};

const READY_WITHIN: Duration = Duration::from_secs(30);

/// A running `ferry-apiserver` on 127.0.0.1 with a temporary data dir.
#[derive(Debug)]
pub struct Ferry {
    process: ServerProcess,
    kubeconfig: PathBuf,
    pub version: String,
}

/// The shape of a list response, without decoding the items.
#[derive(serde::Deserialize)]
struct ListShape {
    metadata: ListMeta,
    items: Vec<serde::de::IgnoredAny>,
}

impl Ferry {
    /// Starts `binary` on a free port and waits until `/readyz` answers.
    pub async fn start(binary: &Path, extra_args: &[String]) -> Result<Self> {
        let version = Command::new(binary)
            .arg("--version")
            .output()
            .map_err(|e| BenchError::io(format!("running {} --version", binary.display()), e))?;
        let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
        let dir = tempfile::Builder::new()
            .prefix("ferry-bench-apiserver-")
            .tempdir()
            .map_err(|e| BenchError::io("creating a temp dir", e))?;
        let port = free_ports(1)?
            .first()
            .copied()
            .ok_or_else(|| BenchError::Check("no free port".into()))?;
        let kubeconfig = dir.path().join("admin.kubeconfig");
        let mut cmd = Command::new(binary);
        cmd.arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--bind")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--kubeconfig-out")
            .arg(&kubeconfig)
            .args(extra_args)
            // Per-request logs are at debug: keep them off whatever the caller's env says.
            .env("RUST_LOG", "info");
        let mut process = ServerProcess::spawn("ferry-apiserver", cmd, dir)?;
        let kc = kubeconfig.clone();
        process
            .wait_ready(READY_WITHIN, || {
                let kc = kc.clone();
                async move {
                    // The file is written whole before the server answers,
                    // but read it to be sure it is complete.
                    Ok(TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok()
                        && Kubeconfig::read_from(&kc).is_ok())
                }
            })
            .await?;
        let client = client_for(&kubeconfig).await?;
        process
            .wait_ready(READY_WITHIN, || {
                let client = client.clone();
                async move {
                    let req = http_get("/readyz").map_err(|e| e.to_string())?;
                    match client.request_text(req).await {
                        Ok(body) => Ok(body.trim() == "ok"),
                        Err(e) => Err(format!("/readyz: {e}")),
                    }
                }
            })
            .await?;
        Ok(Self {
            process,
            kubeconfig,
            version,
        })
    }

    pub fn rss(&self) -> Result<Rss> {
        self.process.rss()
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// A new client with its own connection pool.
    pub async fn client(&self) -> Result<kube::Client> {
        client_for(&self.kubeconfig).await
    }

    /// Creates the Services, then the EndpointSlices, `w.concurrency` at a
    /// time. Returns both loads and the stored JSON of each object (what the
    /// etcd run puts).
    pub async fn load(
        &self,
        w: &Workload,
        client: &kube::Client,
    ) -> Result<(Load, Load, Vec<Vec<u8>>, Vec<Vec<u8>>)> {
        let services: Api<Service> = Api::namespaced(client.clone(), BULK_NAMESPACE);
        let cpu = CpuMeter::start(self.pid())?;
        let (wall, latency, stored) = bounded(
            "ferry: creating Services",
            w.phase_timeout,
            run_bounded(w.services, w.concurrency, |i| {
                let api = services.clone();
                async move {
                    let svc = objects::service(&objects::service_name(i), BULK_NAMESPACE);
                    let created = api.create(&PostParams::default(), &svc).await?;
                    Ok(serde_json::to_vec(&created)?)
                }
            }),
        )
        .await?;
        let mut svc_load = load_of(wall, latency, &stored);
        svc_load.cpu = cpu.stop()?;
        let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), BULK_NAMESPACE);
        let cpu = CpuMeter::start(self.pid())?;
        let (wall, latency, stored_slices) = bounded(
            "ferry: creating EndpointSlices",
            w.phase_timeout,
            run_bounded(w.services, w.concurrency, |i| {
                let api = slices.clone();
                async move {
                    let slice = objects::endpoint_slice(i, BULK_NAMESPACE);
                    let created = api.create(&PostParams::default(), &slice).await?;
                    Ok(serde_json::to_vec(&created)?)
                }
            }),
        )
        .await?;
        let mut slice_load = load_of(wall, latency, &stored_slices);
        slice_load.cpu = cpu.stop()?;
        Ok((svc_load, slice_load, stored, stored_slices))
    }

    /// Waits until the store's revision stops moving for a second (the
    /// server's controllers have caught up with the load), at most `within`.
    /// Returns how long that took and how many writes happened meanwhile.
    pub async fn settle(&self, client: &kube::Client, within: Duration) -> Result<(Duration, u64)> {
        let services: Api<Service> = Api::namespaced(client.clone(), BULK_NAMESPACE);
        let revision = || async {
            let rv = services
                .list_metadata(&ListParams::default().limit(1))
                .await?
                .metadata
                .resource_version
                .unwrap_or_default();
            rv.parse::<u64>()
                .map_err(|_| BenchError::Check(format!("resourceVersion {rv:?} is not a number")))
        };
        let started = Instant::now();
        let first = revision().await?;
        let mut last = first;
        let mut still_since = Instant::now();
        while still_since.elapsed() < Duration::from_secs(1) {
            if started.elapsed() > within {
                return Err(BenchError::Timeout {
                    phase: "ferry: waiting for the controllers to settle".into(),
                    after: within,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = revision().await?;
            if now != last {
                last = now;
                still_since = Instant::now();
            }
        }
        Ok((still_since.duration_since(started), last - first))
    }

    /// How many EndpointSlices and Endpoints the bulk namespace holds: the
    /// server's controllers add their own for Services with a selector.
    pub async fn derived_counts(&self, client: &kube::Client) -> Result<(usize, usize)> {
        let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), BULK_NAMESPACE);
        let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), BULK_NAMESPACE);
        let lp = ListParams::default();
        Ok((
            slices.list_metadata(&lp).await?.items.len(),
            endpoints.list_metadata(&lp).await?.items.len(),
        ))
    }

    /// Lists the bulk Services `w.list_runs` times whole and as many times in
    /// pages. Timed is the request up to the last body byte; scanning the
    /// body for the item count and the continue token is not.
    pub async fn lists(&self, w: &Workload, client: &kube::Client) -> Result<Lists> {
        bounded("ferry: lists", w.phase_timeout, async {
            let path = format!("/api/v1/namespaces/{BULK_NAMESPACE}/services");
            let request = kube::core::Request::new(&path);
            let mut out = Lists::default();
            let mut full = Samples::new();
            let cpu = CpuMeter::start(self.pid())?;
            for _ in 0..w.list_runs {
                let req = request.list(&ListParams::default())?;
                let t0 = Instant::now();
                let body = client.request_text(req).await?;
                full.push(t0.elapsed());
                let shape: ListShape = serde_json::from_str(&body)?;
                check_count("full list", shape.items.len(), w.services)?;
                out.items = shape.items.len();
                out.full_bytes = body.len();
            }
            out.full_cpu = cpu.stop()?;
            let mut paged = Samples::new();
            let cpu = CpuMeter::start(self.pid())?;
            let page_size = u32::try_from(w.page_size).unwrap_or(u32::MAX);
            for _ in 0..w.list_runs {
                let mut taken = Duration::ZERO;
                let mut items = 0;
                let mut pages = 0;
                let mut token: Option<String> = None;
                loop {
                    let mut lp = ListParams::default().limit(page_size);
                    if let Some(t) = token.take() {
                        lp = lp.continue_token(&t);
                    }
                    let req = request.list(&lp)?;
                    let t0 = Instant::now();
                    let body = client.request_text(req).await?;
                    taken += t0.elapsed();
                    let shape: ListShape = serde_json::from_str(&body)?;
                    items += shape.items.len();
                    pages += 1;
                    match shape.metadata.continue_.filter(|c| !c.is_empty()) {
                        Some(c) => token = Some(c),
                        None => break,
                    }
                }
                check_count("paged list", items, w.services)?;
                paged.push(taken);
                out.pages = pages;
            }
            out.paged_cpu = cpu.stop()?;
            out.runs = w.list_runs;
            out.full = full.summary();
            out.paged = paged.summary();
            Ok(out)
        })
        .await
    }

    /// Opens `w.watchers` watches on the Services of `bench-watch` from its
    /// current resourceVersion, spread over several clients, then creates
    /// `w.writes` Services there `w.write_interval` apart, each stamped with
    /// its send time, and measures when every watcher sees each one.
    pub async fn fanout(
        &self,
        w: &Workload,
        writer: &kube::Client,
        clock: Clock,
    ) -> Result<Fanout> {
        let namespaces: Api<Namespace> = Api::all(writer.clone());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(WATCH_NAMESPACE.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        namespaces.create(&PostParams::default(), &ns).await?;
        let services: Api<Service> = Api::namespaced(writer.clone(), WATCH_NAMESPACE);
        let rv = services
            .list_metadata(&ListParams::default().limit(1))
            .await?
            .metadata
            .resource_version
            .ok_or_else(|| BenchError::Check("the list had no resourceVersion".into()))?;

        let mut clients = Vec::with_capacity(w.watch_clients());
        for _ in 0..w.watch_clients() {
            clients.push(self.client().await?);
        }
        // The stream ends by itself if the run is killed before it does.
        let timeout = u32::try_from(w.phase_timeout.as_secs().clamp(60, 290)).unwrap_or(290);
        let per_client = w.watchers_per_client.max(1);
        let (open_wall, _, streams) = bounded(
            "ferry: opening watches",
            w.phase_timeout,
            run_bounded(w.watchers, 32, |k| {
                let api: Api<Service> = Api::namespaced(
                    clients[(k / per_client) % clients.len()].clone(),
                    WATCH_NAMESPACE,
                );
                let rv = rv.clone();
                async move {
                    let stream = api
                        .watch(&WatchParams::default().timeout(timeout), &rv)
                        .await?;
                    Ok(stream.boxed())
                }
            }),
        )
        .await?;
        let rss_with_watches = self.rss().ok();

        let deadline = tokio::time::Instant::now() + w.delivery_deadline();
        let mut watchers = tokio::task::JoinSet::new();
        for mut stream in streams {
            let writes = w.writes;
            watchers.spawn(async move {
                let mut out = Watcher::new(writes);
                while out.received < writes {
                    match tokio::time::timeout_at(deadline, stream.try_next()).await {
                        Err(_) => {
                            out.fail("timed out waiting for events".into());
                            break;
                        }
                        Ok(Err(e)) => {
                            out.fail(e.to_string());
                            break;
                        }
                        Ok(Ok(None)) => {
                            out.fail("the watch stream ended".into());
                            break;
                        }
                        Ok(Ok(Some(WatchEvent::Added(svc)))) => match objects::sent_ns(&svc) {
                            Some(sent) => out.record(clock.since(sent)),
                            None => out.fail("an event without the send time".into()),
                        },
                        Ok(Ok(Some(WatchEvent::Bookmark(_)))) => {}
                        Ok(Ok(Some(WatchEvent::Error(e)))) => {
                            out.fail(format!("watch error event: {e:?}"));
                            break;
                        }
                        Ok(Ok(Some(other))) => {
                            out.fail(format!("unexpected event {other:?}"));
                        }
                    }
                }
                out
            });
        }
        // Let every watcher reach its first poll before the first write.
        tokio::time::sleep(Duration::from_millis(200)).await;

        let cpu = CpuMeter::start(self.pid())?;
        let write_latency = bounded(
            "ferry: timed writes",
            w.delivery_deadline(),
            timed_writes(w, move |i| {
                let api = services.clone();
                async move {
                    let svc = objects::timed_service(i, &clock);
                    api.create(&PostParams::default(), &svc).await?;
                    Ok(())
                }
            }),
        )
        .await?;
        let mut fanout = collect(w, watchers).await?;
        fanout.cpu = cpu.stop()?;
        fanout.clients = clients.len();
        fanout.open_wall = open_wall;
        fanout.write_latency = write_latency.summary();
        fanout.rss_with_watches = rss_with_watches;
        Ok(fanout)
    }
}

/// GETs timed per identity in the authentication phase (in two blocks,
/// the identities taking turns).
pub const AUTH_GETS: usize = 2000;

impl Ferry {
    /// What authenticating and authorizing one request costs: the same GET
    /// of one bulk Service, [`AUTH_GETS`] times for each identity, taking
    /// turns in blocks: the admin (`system:masters`, which skips RBAC), a
    /// ServiceAccount token whose RoleBinding allows it (signature, claims,
    /// ServiceAccount lookup, RBAC), and a ServiceAccount token with no
    /// role (answered 403).
    pub async fn auth(&self, w: &Workload, admin: &kube::Client) -> Result<Auth> {
        bounded("ferry: authentication", w.phase_timeout, async {
            let ns = BULK_NAMESPACE;
            let services: Api<Service> = Api::namespaced(admin.clone(), ns);
            let target = services
                .list_metadata(&ListParams::default().limit(1))
                .await?
                .items
                .into_iter()
                .next()
                .and_then(|s| s.metadata.name)
                .ok_or_else(|| BenchError::Check("no bulk Service to get".into()))?;
            let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), ns);
            let pp = PostParams::default();
            for name in ["bench-reader", "bench-nobody"] {
                accounts
                    .create(
                        &pp,
                        &ServiceAccount {
                            metadata: ObjectMeta {
                                name: Some(name.into()),
                                ..Default::default()
                            },
                            ..Default::default()
                        },
                    )
                    .await?;
            }
            let role: Role = serde_json::from_value(serde_json::json!({
                "metadata": {"name": "bench-reader"},
                "rules": [{"apiGroups": [""], "resources": ["services"], "verbs": ["get"]}],
            }))?;
            Api::<Role>::namespaced(admin.clone(), ns)
                .create(&pp, &role)
                .await?;
            let binding: RoleBinding = serde_json::from_value(serde_json::json!({
                "metadata": {"name": "bench-reader"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "bench-reader"},
                "subjects": [{"kind": "ServiceAccount", "name": "bench-reader", "namespace": ns}],
            }))?;
            Api::<RoleBinding>::namespaced(admin.clone(), ns)
                .create(&pp, &binding)
                .await?;
            let mut identities = vec![(
                "admin (system:masters: no RBAC)".to_owned(),
                admin.clone(),
                true,
            )];
            for (name, who, allowed) in [
                ("bench-reader", "ServiceAccount token, RoleBinding allows", true),
                ("bench-nobody", "ServiceAccount token, no role: 403", false),
            ] {
                let token = accounts
                    .create_token_request(name, &pp, &TokenRequest::default())
                    .await?
                    .status
                    .map(|s| s.token)
                    .ok_or_else(|| BenchError::Check(format!("no token for {name}")))?;
                let kc = Kubeconfig::read_from(&self.kubeconfig)?;
                let mut config =
                    kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                        .await?;
                config.auth_info = kube::config::AuthInfo {
                    token: Some(token.into()),
                    ..Default::default()
                };
                identities.push((who.to_owned(), kube::Client::try_from(config)?, allowed));
            }
            let mut rows: Vec<(Samples, CpuUse)> = identities
                .iter()
                .map(|_| (Samples::with_capacity(AUTH_GETS), CpuUse::default()))
                .collect();
            let block = AUTH_GETS / 2;
            for _ in 0..2 {
                for ((_, client, allowed), (samples, cpu)) in identities.iter().zip(&mut rows) {
                    let api: Api<Service> = Api::namespaced(client.clone(), ns);
                    // One untimed GET opens the connection.
                    let _ = api.get_metadata(&target).await;
                    let meter = CpuMeter::start(self.pid())?;
                    for _ in 0..block {
                        let t0 = Instant::now();
                        let got = api.get_metadata(&target).await;
                        samples.push(t0.elapsed());
                        match (got, *allowed) {
                            (Ok(_), true) => {}
                            (Err(kube::Error::Api(e)), false) if e.code == 403 => {}
                            (other, _) => {
                                return Err(BenchError::Check(format!(
                                    "GET {target}: unexpected {:?}",
                                    other.map(drop)
                                )));
                            }
                        }
                    }
                    *cpu += meter.stop()?;
                }
            }
            Ok(Auth {
                rows: identities
                    .into_iter()
                    .zip(rows)
                    .map(|((who, _, _), (samples, cpu))| AuthRow {
                        who,
                        count: samples.len(),
                        latency: samples.summary(),
                        cpu,
                    })
                    .collect(),
            })
        })
        .await
    }
}

async fn client_for(kubeconfig: &Path) -> Result<kube::Client> {
    let kc = Kubeconfig::read_from(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

fn http_get(path: &str) -> Result<http::Request<Vec<u8>>> {
    http::Request::get(path)
        .body(Vec::new())
        .map_err(|e| BenchError::Check(format!("building GET {path}: {e}")))
}
