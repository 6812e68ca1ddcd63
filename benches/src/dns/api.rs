//! Loading the cluster into `ferry-apiserver` with kube-rs, a bounded
//! number of requests in flight. Runs on a runtime built on a thread inside
//! the bench's namespace (its worker threads inherit it), where the
//! apiserver's 127.0.0.1 is.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams, PostParams};

use super::model::{self, Cluster, Kind};
use crate::process::cpu_time;
use crate::run_bounded;

/// How long each part of the load took.
#[derive(Debug, Clone, Default)]
pub struct LoadTimes {
    pub namespaces: Duration,
    pub services: Duration,
    pub slices: Duration,
    /// Creates and their status patches.
    pub pods: Duration,
    pub total: Duration,
    /// API requests made.
    pub requests: usize,
    pub concurrency: usize,
}

/// Runs `fut`, failing soon after `stop` is set.
async fn unless_stopped<T>(
    stop: &AtomicBool,
    what: &str,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::pin!(fut);
    loop {
        tokio::select! {
            r = &mut fut => return r,
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                if stop.load(Ordering::Relaxed) {
                    bail!("stopped while {what}");
                }
            }
        }
    }
}

/// Creates the namespaces, the Services (recording the cluster IPs the
/// apiserver gave them in `cluster`), the headless Services' EndpointSlices
/// and the Pods, each Pod followed by its status (the apiserver drops a
/// Pod's status on create, as kube-apiserver does).
pub async fn load(
    client: &kube::Client,
    cluster: &mut Cluster,
    concurrency: usize,
    limit: Duration,
    stop: &AtomicBool,
) -> Result<LoadTimes> {
    let mut t = LoadTimes {
        concurrency,
        ..Default::default()
    };
    let started = Instant::now();
    let work = async {
        let ns_api: Api<Namespace> = Api::all(client.clone());
        let names = cluster.namespaces.clone();
        let (wall, _, _) = run_bounded(names.len(), concurrency, |i| {
            let api = ns_api.clone();
            let obj = names.get(i).map(|n| model::namespace_object(n));
            async move {
                if let Some(obj) = obj {
                    api.create(&PostParams::default(), &obj?).await?;
                }
                Ok(())
            }
        })
        .await
        .context("creating namespaces")?;
        t.namespaces = wall;
        t.requests += names.len();

        let objects: Vec<Service> = cluster
            .services
            .iter()
            .map(model::service_object)
            .collect::<serde_json::Result<_>>()?;
        let (wall, _, ips) = run_bounded(objects.len(), concurrency, |i| {
            let obj = objects.get(i).cloned();
            let client = client.clone();
            async move {
                let Some(obj) = obj else {
                    return Ok(Vec::new());
                };
                let ns = obj.metadata.namespace.clone().unwrap_or_default();
                let api: Api<Service> = Api::namespaced(client, &ns);
                let created = api.create(&PostParams::default(), &obj).await?;
                Ok(created
                    .spec
                    .and_then(|s| s.cluster_ips)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|ip| ip.parse::<IpAddr>().ok())
                    .collect::<Vec<_>>())
            }
        })
        .await
        .context("creating Services")?;
        t.services = wall;
        t.requests += objects.len();
        for (svc, ips) in cluster.services.iter_mut().zip(ips) {
            svc.cluster_ips = ips;
            let ok = match svc.kind {
                Kind::ClusterIp => svc.v4().is_some() && svc.v6().is_none(),
                Kind::DualStack => svc.v4().is_some() && svc.v6().is_some(),
                Kind::Headless => svc.cluster_ips.is_empty(),
            };
            if !ok {
                bail!(
                    "Service {}/{} ({:?}) got cluster IPs {:?}",
                    svc.namespace,
                    svc.name,
                    svc.kind,
                    svc.cluster_ips
                );
            }
        }

        let slices: Vec<EndpointSlice> = cluster
            .headless()
            .map(model::slice_object)
            .collect::<serde_json::Result<_>>()?;
        let (wall, _, _) = run_bounded(slices.len(), concurrency, |i| {
            let obj = slices.get(i).cloned();
            let client = client.clone();
            async move {
                if let Some(obj) = obj {
                    let ns = obj.metadata.namespace.clone().unwrap_or_default();
                    let api: Api<EndpointSlice> = Api::namespaced(client, &ns);
                    api.create(&PostParams::default(), &obj).await?;
                }
                Ok(())
            }
        })
        .await
        .context("creating EndpointSlices")?;
        t.slices = wall;
        t.requests += slices.len();

        let pods = cluster.pods.clone();
        let (wall, _, _) = run_bounded(pods.len(), concurrency, |i| {
            let pod = pods.get(i).cloned();
            let client = client.clone();
            async move {
                if let Some(pod) = pod {
                    let api: Api<Pod> = Api::namespaced(client, &pod.namespace);
                    api.create(&PostParams::default(), &model::pod_object(&pod)?)
                        .await?;
                    api.patch_status(
                        &pod.name,
                        &PatchParams::default(),
                        &Patch::Merge(&model::pod_status(&pod)),
                    )
                    .await?;
                }
                Ok(())
            }
        })
        .await
        .context("creating Pods")?;
        t.pods = wall;
        t.requests += 2 * pods.len();
        Ok(())
    };
    let bounded = async {
        tokio::time::timeout(limit, work)
            .await
            .map_err(|_| anyhow::anyhow!("the load did not finish within {limit:?}"))?
    };
    unless_stopped(stop, "loading the apiserver", bounded).await?;
    t.total = started.elapsed();
    Ok(t)
}

/// Waits until process `pid` has used under 3% of a CPU for two half-second
/// windows in a row (the apiserver's controllers have caught up), at most
/// `within`; returns how long that took.
pub fn settle(pid: u32, within: Duration, stop: &AtomicBool) -> Result<Duration> {
    let started = Instant::now();
    let window = Duration::from_millis(500);
    let mut quiet = 0;
    let mut last = cpu_time(Some(pid))?;
    while quiet < 2 {
        if started.elapsed() > within {
            bail!("the apiserver was still busy after {within:?}");
        }
        if stop.load(Ordering::Relaxed) {
            bail!("stopped while waiting for the apiserver to settle");
        }
        std::thread::sleep(window);
        let now = cpu_time(Some(pid))?;
        if now.saturating_sub(last) < window * 3 / 100 {
            quiet += 1;
        } else {
            quiet = 0;
        }
        last = now;
    }
    Ok(started.elapsed())
}
