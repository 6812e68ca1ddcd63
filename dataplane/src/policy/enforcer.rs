//! The NetworkPolicy loop: watches Namespaces, Pods and NetworkPolicies
//! (every namespace: peers on other nodes matter too), keeps them in a
//! [`PolicyState`], and after a change (a burst is one pass: the loop waits
//! until the changes pause for [`QUIET`], at most [`BATCH_LIMIT`]) compiles
//! this node's maps and hands them to the [`PolicyProgrammer`].
//!
//! Nothing is compiled before all three kinds have been listed once, so a
//! restarted agent never judges with half the cluster (the maps keep the
//! previous agent's entries meanwhile). An object that does not decode or
//! convert is logged and counted; a policy that cannot be honoured is
//! failed closed by the compiler (it isolates its pods and allows nothing)
//! and logged once, with the reason, until it changes.
//!
//! Owns the watches and the loop; the translation is [`PolicyState`]'s and
//! the writes the programmer's.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_daemon::watch::{DecodeErrors, Decoded};
use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::serde::de::DeserializeOwned;
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, ResourceExt as _};
use tokio::sync::mpsc;

use super::programmer::{PolicyProgrammer, PolicyTables};
use super::state::PolicyState;
use crate::metrics::Metrics;
use crate::observe::names::{Directory, Names};

/// A burst of changes is one compilation: the loop waits this long after
/// the last change...
pub const QUIET: Duration = Duration::from_millis(20);
/// ...but no longer than this after the first.
pub const BATCH_LIMIT: Duration = Duration::from_millis(200);
/// How often the node's own addresses are read again.
const ADDR_CHECK: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum EnforcerError {
    #[error("the {0} watch ended")]
    WatchEnded(&'static str),
}

enum Change {
    Namespace(watcher::Event<Decoded<Namespace>>),
    Pod(Box<watcher::Event<Decoded<Pod>>>),
    Policy(watcher::Event<Decoded<NetworkPolicy>>),
    Error(&'static str, String),
}

/// What the loop needs besides the API.
pub struct Settings {
    pub node_name: String,
    /// The node's own addresses now (its pods' host identity).
    pub node_addrs:
        Box<dyn FnMut() -> futures_util::future::BoxFuture<'static, Vec<IpAddr>> + Send>,
    /// Where flow observation reads pod and policy names; published after
    /// each compilation while someone watches.
    pub names: Option<Arc<Directory>>,
}

/// Objects of a relist in progress, to drop those it did not list.
#[derive(Default)]
struct Relist {
    namespaces: Option<HashSet<String>>,
    pods: Option<HashSet<(String, String)>>,
    policies: Option<HashSet<(String, String)>>,
    listed: [bool; 3],
}

fn key<K: kube::Resource>(o: &K) -> (String, String) {
    (o.namespace().unwrap_or_default(), o.name_any())
}

/// Runs until a watch ends.
pub async fn run<T: PolicyTables>(
    client: Client,
    mut settings: Settings,
    mut programmer: PolicyProgrammer<T>,
    metrics: std::sync::Arc<Metrics>,
) -> Result<(), EnforcerError> {
    let (tx, mut rx) = mpsc::channel::<Change>(1024);
    spawn_watch(
        Api::<Decoded<Namespace>>::all(client.clone()),
        tx.clone(),
        "Namespace",
        Change::Namespace,
    );
    spawn_watch(
        Api::<Decoded<Pod>>::all(client.clone()),
        tx.clone(),
        "Pod",
        |ev| Change::Pod(Box::new(ev)),
    );
    spawn_watch(
        Api::<Decoded<NetworkPolicy>>::all(client),
        tx,
        "NetworkPolicy",
        Change::Policy,
    );

    let errors = metrics.decode_errors.clone();
    let mut state = PolicyState::default();
    let mut relist = Relist::default();
    let mut dirty_since: Option<Instant> = None;
    let mut last_change = Instant::now();
    let mut addrs: Vec<IpAddr> = (settings.node_addrs)().await;
    let mut reported: BTreeSet<String> = BTreeSet::new();
    let mut addr_tick = tokio::time::interval(ADDR_CHECK);
    // The last compilation's policy sets, for names asked between two.
    let mut sets: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    let names = settings.names.clone();
    loop {
        let wait = match dirty_since {
            Some(first) => {
                let quiet = last_change + QUIET;
                let limit = first + BATCH_LIMIT;
                tokio::time::Instant::from_std(quiet.min(limit))
            }
            None => tokio::time::Instant::now() + Duration::from_secs(3600),
        };
        tokio::select! {
            change = rx.recv() => {
                let Some(change) = change else {
                    return Err(EnforcerError::WatchEnded("policy"));
                };
                if apply(&mut state, &mut relist, change, &errors) {
                    last_change = Instant::now();
                    dirty_since.get_or_insert(last_change);
                }
                continue;
            }
            _ = addr_tick.tick() => {
                let now = (settings.node_addrs)().await;
                if now != addrs {
                    addrs = now;
                    last_change = Instant::now();
                    dirty_since.get_or_insert(last_change);
                }
                continue;
            }
            () = tokio::time::sleep_until(wait) => {}
            () = requested(names.as_deref()) => {
                if let Some(dir) = &names {
                    dir.publish(Names::from_policy(&state, &sets));
                }
                continue;
            }
        }
        if !relist.listed.iter().all(|l| *l) {
            continue;
        }
        let started = dirty_since.take().unwrap_or_else(Instant::now);
        let desired = match state.compile(&settings.node_name, &addrs) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "compiling the network policies");
                continue;
            }
        };
        let now: BTreeSet<String> = desired.problems.iter().map(|p| p.to_string()).collect();
        for p in now.difference(&reported) {
            tracing::warn!(problem = %p, "NetworkPolicy failed closed");
        }
        reported = now;
        let pass = programmer.apply(&desired);
        if let Some(dir) = names.as_deref().filter(|d| d.wanted()) {
            dir.publish(Names::from_policy(&state, &desired.sets));
        }
        sets.clone_from(&desired.sets);
        if let Some(e) = &pass.first_error {
            tracing::warn!(failed = pass.failed, error = %e, "writing the policy maps; retried at the next change");
            // Retry soon even if nothing else changes.
            last_change = Instant::now();
            dirty_since.get_or_insert(last_change);
        }
        metrics.policy_synced(
            started.elapsed(),
            desired.problems.len(),
            desired.rules.len(),
        );
        tracing::debug!(
            written = pass.written,
            removed = pass.removed,
            endpoints = desired.endpoints.len(),
            rules = desired.rules.len(),
            took = ?started.elapsed(),
            "network policies programmed"
        );
    }
}

/// Resolves when observation asks for names (never without it).
async fn requested(names: Option<&Directory>) {
    match names {
        Some(d) => d.requested().await,
        None => std::future::pending().await,
    }
}

fn spawn_watch<K>(
    api: Api<Decoded<K>>,
    tx: mpsc::Sender<Change>,
    kind: &'static str,
    wrap: fn(watcher::Event<Decoded<K>>) -> Change,
) where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    tokio::spawn(async move {
        // Lists in small pages, as the service proxy's: a page is decoded
        // whole, and big pages leave the allocator fragmented for good.
        let config = watcher::Config::default().page_size(crate::service::proxy::LIST_PAGE);
        let mut stream = watcher(api, config).default_backoff().boxed();
        while let Some(ev) = stream.next().await {
            let change = match ev {
                Ok(ev) => wrap(ev),
                Err(e) => Change::Error(kind, e.to_string()),
            };
            if tx.send(change).await.is_err() {
                return;
            }
        }
    });
}

/// Applies one change; whether the state may have changed.
fn apply(
    state: &mut PolicyState,
    relist: &mut Relist,
    change: Change,
    errors: &DecodeErrors,
) -> bool {
    match change {
        Change::Error(kind, e) => {
            tracing::warn!(kind, error = %e, "policy watch error; retrying");
            false
        }
        Change::Namespace(ev) => match ev {
            watcher::Event::Init => {
                relist.namespaces = Some(HashSet::new());
                false
            }
            watcher::Event::InitApply(obj) | watcher::Event::Apply(obj) => {
                let name = obj.name_any();
                if let Some(seen) = relist.namespaces.as_mut() {
                    seen.insert(name.clone());
                }
                match decoded(obj, "Namespace", errors) {
                    Some(ns) => log_err(state.apply_namespace(&ns)),
                    None => state.delete_namespace(&name),
                }
                true
            }
            watcher::Event::Delete(obj) => {
                state.delete_namespace(&obj.name_any());
                true
            }
            watcher::Event::InitDone => {
                if let Some(seen) = relist.namespaces.take() {
                    let gone: Vec<String> = state
                        .namespaces()
                        .map(|n| n.name.clone())
                        .filter(|n| !seen.contains(n))
                        .collect();
                    for n in gone {
                        state.delete_namespace(&n);
                    }
                }
                relist.listed[0] = true;
                true
            }
        },
        Change::Pod(ev) => match *ev {
            watcher::Event::Init => {
                relist.pods = Some(HashSet::new());
                false
            }
            watcher::Event::InitApply(obj) | watcher::Event::Apply(obj) => {
                let k = key(&obj);
                if let Some(seen) = relist.pods.as_mut() {
                    seen.insert(k.clone());
                }
                match decoded(obj, "Pod", errors) {
                    Some(pod) => log_err(state.apply_pod(&pod)),
                    None => state.delete_pod(&k.0, &k.1),
                }
                true
            }
            watcher::Event::Delete(obj) => {
                let (ns, name) = key(&obj);
                state.delete_pod(&ns, &name);
                true
            }
            watcher::Event::InitDone => {
                if let Some(seen) = relist.pods.take() {
                    let gone: Vec<(String, String)> = state
                        .pods()
                        .map(|p| (p.namespace.clone(), p.name.clone()))
                        .filter(|k| !seen.contains(k))
                        .collect();
                    for (ns, name) in gone {
                        state.delete_pod(&ns, &name);
                    }
                }
                relist.listed[1] = true;
                true
            }
        },
        Change::Policy(ev) => match ev {
            watcher::Event::Init => {
                relist.policies = Some(HashSet::new());
                false
            }
            watcher::Event::InitApply(obj) | watcher::Event::Apply(obj) => {
                let k = key(&obj);
                if let Some(seen) = relist.policies.as_mut() {
                    seen.insert(k.clone());
                }
                match decoded(obj, "NetworkPolicy", errors) {
                    // A policy that does not convert is kept failed closed
                    // by the state, with its error.
                    Some(np) => log_err(state.apply_policy(&np)),
                    None => state.delete_policy(&k.0, &k.1),
                }
                true
            }
            watcher::Event::Delete(obj) => {
                let (ns, name) = key(&obj);
                state.delete_policy(&ns, &name);
                true
            }
            watcher::Event::InitDone => {
                if let Some(seen) = relist.policies.take() {
                    let gone: Vec<(String, String)> = state
                        .policies()
                        .map(|(_, p)| (p.namespace.clone(), p.name.clone()))
                        .filter(|k| !seen.contains(k))
                        .collect();
                    for (ns, name) in gone {
                        state.delete_policy(&ns, &name);
                    }
                }
                relist.listed[2] = true;
                true
            }
        },
    }
}

fn decoded<K>(obj: Decoded<K>, kind: &'static str, errors: &DecodeErrors) -> Option<K> {
    errors.check(kind, obj)
}

fn log_err(r: Result<(), super::ModelError>) {
    if let Err(e) = r {
        tracing::warn!(error = %e, "an object NetworkPolicy cannot use");
    }
}
