//! Watches the pods bound to this node (`fieldSelector
//! spec.nodeName=<node>`) and hands each to its worker task; at the first
//! full list, cleans what earlier runs left of pods that no longer exist.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ferry_daemon::watch::Decoded;
use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Resource as _};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::Runtime;
use crate::cgroup;
use crate::pod::{self, PodMsg};
use crate::sandbox;

/// Queue of updates one worker may have waiting.
const WORKER_QUEUE: usize = 16;

struct Handle {
    tx: mpsc::Sender<PodMsg>,
    task: JoinHandle<()>,
}

/// Runs until the watch stream ends (it does not: the watcher retries with
/// back-off).
pub async fn run(rt: Arc<Runtime>) {
    let api: Api<Decoded<Pod>> = Api::all(rt.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", rt.node_name));
    let mut stream = watcher(api, config).default_backoff().boxed();
    let mut workers: HashMap<String, Handle> = HashMap::new();
    let mut listing: HashSet<String> = HashSet::new();
    let mut pending: Vec<Pod> = Vec::new();
    let mut cleaned = false;
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "pod watch (retrying with back-off)");
                continue;
            }
        };
        match event {
            watcher::Event::Init => {
                listing.clear();
                pending.clear();
            }
            watcher::Event::InitApply(obj) => {
                if let Some(uid) = obj.meta().uid.clone() {
                    listing.insert(uid);
                }
                match decoded(obj) {
                    Some(p) if cleaned => dispatch(&rt, &mut workers, p).await,
                    Some(p) => pending.push(p),
                    None => {}
                }
            }
            watcher::Event::InitDone => {
                if !cleaned {
                    cleanup_leftovers(&rt, &listing).await;
                    cleaned = true;
                }
                for p in pending.drain(..) {
                    dispatch(&rt, &mut workers, p).await;
                }
                let gone: Vec<String> = workers
                    .keys()
                    .filter(|uid| !listing.contains(*uid))
                    .cloned()
                    .collect();
                for uid in gone {
                    stop(&mut workers, &uid).await;
                }
            }
            watcher::Event::Apply(obj) => {
                if let Some(p) = decoded(obj) {
                    dispatch(&rt, &mut workers, p).await;
                }
            }
            watcher::Event::Delete(obj) => {
                if let Some(uid) = obj.meta().uid.clone() {
                    stop(&mut workers, &uid).await;
                }
            }
        }
        workers.retain(|_, h| !h.task.is_finished());
    }
}

/// A pod that decoded; a bad one is logged and treated as absent.
fn decoded(obj: Decoded<Pod>) -> Option<Pod> {
    match obj {
        Decoded::Ok(p) => Some(p),
        Decoded::Bad { meta, error } => {
            tracing::warn!(pod = ?meta.name, namespace = ?meta.namespace, %error, "skipping a pod that does not decode");
            None
        }
    }
}

async fn dispatch(rt: &Arc<Runtime>, workers: &mut HashMap<String, Handle>, pod: Pod) {
    let Some(uid) = pod.metadata.uid.clone() else {
        return;
    };
    if let Some(h) = workers.get(&uid)
        && !h.task.is_finished()
    {
        // A full queue waits for the worker (bounded by its queue).
        if h.tx.send(PodMsg::Update(Box::new(pod))).await.is_err() {
            workers.remove(&uid);
        }
        return;
    }
    let (tx, rx) = mpsc::channel(WORKER_QUEUE);
    let task = tokio::spawn(pod::run(Arc::clone(rt), pod, rx));
    workers.insert(uid, Handle { tx, task });
}

async fn stop(workers: &mut HashMap<String, Handle>, uid: &str) {
    if let Some(h) = workers.get(uid) {
        let _ = h.tx.send(PodMsg::Gone).await;
    }
}

/// What earlier runs left of pods that no longer exist: their containers
/// (cgroups), CNI attachments (DEL with the recorded config and result),
/// network namespaces and state; then CNI GC with the live pods'
/// attachments as the valid ones.
pub async fn cleanup_leftovers(rt: &Runtime, live: &HashSet<String>) {
    let mut valid = Vec::new();
    let mut live_netns = HashSet::new();
    for uid in rt.state.pod_uids() {
        let record = rt.state.read_sandbox(&uid);
        let is_live = record
            .as_ref()
            .map_or_else(|| live.contains(&uid), |r| live.contains(&r.uid));
        if is_live {
            if let Some(r) = record {
                if let Some(ns) = &r.netns {
                    live_netns.insert(ns.clone());
                }
                if r.netns.is_some() {
                    valid.push((r.id.clone(), r.ifname.clone()));
                }
            }
            continue;
        }
        let real_uid = record
            .as_ref()
            .map_or_else(|| uid.clone(), |r| r.uid.clone());
        tracing::info!(uid = %real_uid, "cleaning up after a pod that no longer exists");
        if let Err(e) = cgroup::remove(&cgroup::pod_dir(&rt.cgroup_root, &real_uid)).await {
            tracing::warn!(uid = %real_uid, error = %e, "removing a leftover cgroup");
        }
        if let Some(r) = record
            && let Err(e) = rt.network.destroy(&rt.state, &r).await
        {
            tracing::warn!(uid = %real_uid, error = %format!("{e:#}"), "removing a leftover sandbox");
        }
        if let Err(e) = rt.state.remove_pod(&uid) {
            tracing::warn!(uid = %real_uid, error = %format!("{e:#}"), "removing leftover state");
        }
    }
    for (uid, dir) in cgroup::pod_uids(&rt.cgroup_root) {
        if !live.contains(&uid) {
            tracing::info!(%uid, "removing a leftover pod cgroup");
            if let Err(e) = cgroup::remove(&dir).await {
                tracing::warn!(%uid, error = %e, "removing a leftover cgroup");
            }
        }
    }
    for path in rt.state.netns_files() {
        if !live_netns.contains(&path) {
            tracing::info!(netns = %path.display(), "removing a leftover network namespace");
            if let Err(e) = sandbox::remove_netns(&path) {
                tracing::warn!(error = %format!("{e:#}"), "removing a leftover network namespace");
            }
        }
    }
    if let Err(e) = rt.network.gc(valid).await {
        tracing::warn!(error = %format!("{e:#}"), "CNI GC");
    }
}
