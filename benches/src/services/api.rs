//! Talking to `ferry-apiserver` with kube-rs. Every call here must run on a
//! thread that entered the world's underlay namespace (the apiserver's
//! address exists only there): the bench runs a current-thread runtime on
//! such a thread, so every socket kube-rs opens is made inside it.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use futures_util::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{Namespace, Node as NodeObject};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::json;

use super::model::{self, NAMESPACE, Svc};
use crate::run_bounded;

pub async fn client(kubeconfig: &std::path::Path) -> Result<kube::Client> {
    let kc = Kubeconfig::read_from(kubeconfig).context("reading the kubeconfig")?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .context("loading the kubeconfig")?;
    kube::Client::try_from(config).context("building the API client")
}

/// Waits until `/readyz` answers `ok`.
pub async fn wait_ready(client: &kube::Client, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    let mut last = String::new();
    while Instant::now() < deadline {
        let req = http::Request::get("/readyz")
            .body(Vec::new())
            .context("building GET /readyz")?;
        match client.request_text(req).await {
            Ok(body) if body.trim() == "ok" => return Ok(()),
            Ok(body) => last = body,
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the apiserver was not ready within {within:?}: {last}")
}

/// The bench namespace and the Node object of the world's node.
pub async fn setup(client: &kube::Client, node: &ferry_testbed::Node) -> Result<()> {
    let ns: Namespace = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE},
    }))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .context("creating the bench namespace")?;
    let cidrs: Vec<String> = node.pod_cidrs.iter().map(ToString::to_string).collect();
    let obj: NodeObject = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": node.name},
        "spec": {"podCIDR": cidrs.first(), "podCIDRs": cidrs},
        "status": {"addresses": [
            {"type": "InternalIP", "address": node.ipv4.to_string()},
            {"type": "InternalIP", "address": node.ipv6.to_string()},
        ]},
    }))?;
    Api::<NodeObject>::all(client.clone())
        .create(&PostParams::default(), &obj)
        .await
        .context("creating the Node")?;
    Ok(())
}

/// Creates the Services, then their EndpointSlices, `concurrency` at a
/// time; returns the wall time.
pub async fn create(client: &kube::Client, svcs: &[Svc], concurrency: usize) -> Result<Duration> {
    let started = Instant::now();
    create_all(client, svcs, model::service_object, concurrency)
        .await
        .context("creating Services")?;
    create_all(client, svcs, model::slice_object, concurrency)
        .await
        .context("creating EndpointSlices")?;
    Ok(started.elapsed())
}

/// One object of kind `K` per Service, made by `make`, created with at most
/// `concurrency` requests in flight.
async fn create_all<K>(
    client: &kube::Client,
    svcs: &[Svc],
    make: fn(&Svc) -> serde_json::Result<K>,
    concurrency: usize,
) -> Result<()>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let api: Api<K> = Api::namespaced(client.clone(), NAMESPACE);
    let objects: Vec<K> = svcs.iter().map(make).collect::<serde_json::Result<_>>()?;
    run_bounded(objects.len(), concurrency, |i| {
        let api = api.clone();
        let obj = objects.get(i).cloned();
        async move {
            if let Some(obj) = obj {
                api.create(&PostParams::default(), &obj).await?;
            }
            Ok(())
        }
    })
    .await?;
    Ok(())
}

/// Replaces the endpoints of `svc`'s slice with `svc.endpoints` (a merge
/// patch replaces the whole list).
pub async fn patch_endpoints(client: &kube::Client, svc: &Svc) -> Result<()> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), NAMESPACE);
    let patch = json!({"endpoints": model::endpoints_json(svc)});
    api.patch(
        &svc.slice_name(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .with_context(|| format!("patching {}", svc.slice_name()))?;
    Ok(())
}

/// A slice change as a watcher saw it: name, addresses, arrival.
pub type SliceEvent = (String, Vec<String>, Instant);

/// Watches the bench namespace's EndpointSlices from now on, timestamping
/// each modification as it arrives (what any proxy waits for before it can
/// react). The task ends when the receiver goes or the watch ends.
pub async fn watch_slices(
    client: &kube::Client,
) -> Result<(
    tokio::sync::mpsc::UnboundedReceiver<SliceEvent>,
    tokio::task::JoinHandle<()>,
)> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), NAMESPACE);
    let rv = api
        .list_metadata(&ListParams::default().limit(1))
        .await
        .context("listing slices for a resourceVersion")?
        .metadata
        .resource_version
        .context("the list had no resourceVersion")?;
    let mut stream = api
        .watch(&WatchParams::default().timeout(290), &rv)
        .await
        .context("watching slices")?
        .boxed();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Ok(Some(ev)) = stream.try_next().await {
            let at = Instant::now();
            if let WatchEvent::Modified(slice) = ev {
                let name = slice.metadata.name.clone().unwrap_or_default();
                let addrs = slice
                    .endpoints
                    .iter()
                    .flat_map(|e| e.addresses.iter().cloned())
                    .collect();
                if tx.send((name, addrs, at)).is_err() {
                    return;
                }
            }
        }
    });
    Ok((rx, task))
}
