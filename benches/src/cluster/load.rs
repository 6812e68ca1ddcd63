//! Objects only: Services and Pods loaded into a lone `ferry-apiserver`
//! (on 127.0.0.1, its controllers on, no node runtime), and the time until
//! its controllers are idle.
//!
//! Fake Nodes exist as objects (no Lease, so node lifecycle leaves them
//! alone); each Pod is bound to one (`nodeName`), labelled for one Service
//! (the Pods spread evenly over the Services), and given a Running, Ready
//! status with a distinct pod IP right after its create (the apiserver
//! drops a create's status, as kube-apiserver does). The Services come
//! first, so every Pod event is work for the EndpointSlice controller.

use std::net::Ipv4Addr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

use super::Settings;
use super::pods::{Watches, watch};
use crate::ferry::Ferry;
use crate::process::{Rss, cpu_time};
use crate::run_bounded;

const NS: &str = "load";

/// The load phase's results.
#[derive(Debug, Clone)]
pub struct LoadRun {
    pub services: usize,
    pub pods: usize,
    pub nodes: usize,
    pub concurrency: usize,
    pub version: String,
    pub services_wall: Duration,
    /// Pod creates and their status patches.
    pub pods_wall: Duration,
    /// The whole load, Nodes to the last Pod status.
    pub load_wall: Duration,
    /// From the load's start: the last EndpointSlice event this process's
    /// watch received, and how many it received.
    pub last_slice_write: Option<Duration>,
    pub slice_events: usize,
    /// From the load's start until the apiserver's CPU went quiet (under
    /// 3% of a core for 1 s, that second not counted).
    pub idle: Duration,
    /// The apiserver's CPU from the load's start until idle, and this
    /// process's.
    pub apiserver_cpu: Duration,
    pub harness_cpu: Duration,
    /// Once idle: EndpointSlices in the namespace, and ready endpoints in
    /// them.
    pub slices: usize,
    pub ready_endpoints: usize,
    pub rss_idle: Rss,
}

fn pod_ip(i: usize) -> Ipv4Addr {
    // 10.128.0.1 onward: room for 8 million pods.
    let n = u32::try_from(i).unwrap_or(u32::MAX - 1);
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 1)).saturating_add(n))
}

/// Creates `n` objects with `make(i)`, `concurrency` in flight.
async fn create_all<K>(
    api: &Api<K>,
    n: usize,
    concurrency: usize,
    make: fn(usize, &Settings) -> serde_json::Value,
    s: &Settings,
) -> Result<Duration>
where
    K: kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (wall, _, _) = run_bounded(n, concurrency, |i| {
        let api = api.clone();
        let obj = serde_json::from_value::<K>(make(i, s));
        async move {
            api.create(&PostParams::default(), &obj?).await?;
            Ok(())
        }
    })
    .await?;
    Ok(wall)
}

fn node_object(i: usize, _: &Settings) -> serde_json::Value {
    json!({"metadata": {"name": format!("fake-{i}"),
                        "labels": {"kubernetes.io/hostname": format!("fake-{i}")}}})
}

fn service_object(i: usize, _: &Settings) -> serde_json::Value {
    json!({"metadata": {"name": format!("s-{i}")},
           "spec": {"selector": {"app": format!("s-{i}")},
                    "ports": [{"port": 80, "targetPort": 8080}]}})
}

fn pod_object(i: usize, s: &Settings) -> serde_json::Value {
    json!({"metadata": {"name": format!("p-{i}"),
                        "labels": {"app": format!("s-{}", i % s.load_services.max(1))}},
           "spec": {"nodeName": format!("fake-{}", i % s.load_nodes.max(1)),
                    "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10",
                                    "ports": [{"containerPort": 8080}]}]}})
}

/// Loads the objects into a fresh `ferry-apiserver` and waits until its
/// controllers are idle.
pub fn run(
    s: &Settings,
    rt: &tokio::runtime::Runtime,
    stop: &AtomicBool,
    say: fn(&str),
) -> Result<LoadRun> {
    let apiserver = s.bin_dir.join("ferry-apiserver");
    let ferry = rt.block_on(Ferry::start(&apiserver, &[]))?;
    let client = rt.block_on(ferry.client())?;
    let slice_seen: Arc<Mutex<(usize, Option<Instant>)>> = Arc::default();
    let _watches = rt.block_on(async {
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NS}}))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await?;
        let seen = Arc::clone(&slice_seen);
        let w = watch(
            Api::<EndpointSlice>::namespaced(client.clone(), NS),
            watcher::Config::default(),
            move |_| {
                let mut g = seen.lock().unwrap_or_else(PoisonError::into_inner);
                g.0 += 1;
                g.1 = Some(Instant::now());
            },
        )
        .await?;
        anyhow::Ok(Watches(vec![w]))
    })?;
    let pid = ferry.pid();
    let cpu0 = cpu_time(Some(pid))?;
    let harness0 = cpu_time(None)?;
    let c = s.load_concurrency;
    let t0 = Instant::now();
    let (services_wall, pods_wall) = rt.block_on(async {
        let load = async {
            create_all(
                &Api::<Node>::all(client.clone()),
                s.load_nodes,
                c,
                node_object,
                s,
            )
            .await
            .context("creating Nodes")?;
            let services_wall = create_all(
                &Api::<Service>::namespaced(client.clone(), NS),
                s.load_services,
                c,
                service_object,
                s,
            )
            .await
            .context("creating Services")?;
            say(&format!(
                "load: {} Services in {:.1} s",
                s.load_services,
                services_wall.as_secs_f64()
            ));
            let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
            let (pods_wall, _, _) = run_bounded(s.load_pods, c, |i| {
                let pods = pods.clone();
                let obj = serde_json::from_value::<Pod>(pod_object(i, s));
                let ip = pod_ip(i).to_string();
                async move {
                    let pod = pods.create(&PostParams::default(), &obj?).await?;
                    let name = pod.metadata.name.unwrap_or_default();
                    let status = json!({"status": {
                        "phase": "Running", "podIP": ip,
                        "podIPs": [{"ip": ip}],
                        "conditions": [{"type": "PodScheduled", "status": "True"},
                                       {"type": "Initialized", "status": "True"},
                                       {"type": "ContainersReady", "status": "True"},
                                       {"type": "Ready", "status": "True"}],
                    }});
                    pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                        .await?;
                    Ok(())
                }
            })
            .await
            .context("creating Pods")?;
            anyhow::Ok((services_wall, pods_wall))
        };
        tokio::time::timeout(s.load_limit, load)
            .await
            .map_err(|_| anyhow::anyhow!("the load did not finish within {:?}", s.load_limit))?
    })?;
    let load_wall = t0.elapsed();
    say(&format!(
        "load: {} Pods (create + status) in {:.1} s; waiting for the controllers",
        s.load_pods,
        pods_wall.as_secs_f64()
    ));
    let settle = crate::dns::api::settle(pid, s.load_limit, stop)?;
    // `settle` ends with its two quiet half-second windows.
    let idle = (load_wall + settle).saturating_sub(Duration::from_secs(1));
    let apiserver_cpu = cpu_time(Some(pid))?.saturating_sub(cpu0);
    let harness_cpu = cpu_time(None)?.saturating_sub(harness0);
    let (slice_events, last) = *slice_seen.lock().unwrap_or_else(PoisonError::into_inner);
    let (slices, ready_endpoints) = rt.block_on(async {
        let list = Api::<EndpointSlice>::namespaced(client.clone(), NS)
            .list(&ListParams::default())
            .await?;
        let ready = list
            .items
            .iter()
            .flat_map(|sl| &sl.endpoints)
            .filter(|ep| ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
            .count();
        anyhow::Ok((list.items.len(), ready))
    })?;
    Ok(LoadRun {
        services: s.load_services,
        pods: s.load_pods,
        nodes: s.load_nodes,
        concurrency: c,
        version: ferry.version.clone(),
        services_wall,
        pods_wall,
        load_wall,
        last_slice_write: last.map(|t| t.saturating_duration_since(t0)),
        slice_events,
        idle,
        apiserver_cpu,
        harness_cpu,
        slices,
        ready_endpoints,
        rss_idle: ferry.rss()?,
    })
}
