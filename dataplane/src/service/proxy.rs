//! The service proxy loop: watches Services and EndpointSlices (only those
//! kube-proxy would handle), keeps them indexed by Service, and hands each
//! changed Service's entries to the [`Programmer`]. One event touches one
//! Service's map entries and nothing else.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, ResourceExt as _};
use tokio::sync::mpsc;

use super::model::{self, LABEL_SERVICE_NAME, PROXIED_SELECTOR};
use super::programmer::{LbMaps, Programmer, ServiceName};

/// How often failed Services are retried.
const RETRY: Duration = Duration::from_secs(1);

enum Change {
    Service(Box<watcher::Event<Service>>),
    Slice(Box<watcher::Event<EndpointSlice>>),
    Error(String),
}

/// Services and their slices as last seen, with what needs programming.
#[derive(Default)]
struct Cache {
    services: HashMap<ServiceName, Service>,
    slices: HashMap<ServiceName, HashMap<String, EndpointSlice>>,
    /// Objects of a relist in progress; swapped in at its end.
    relist_services: Option<HashMap<ServiceName, Service>>,
    relist_slices: Option<HashMap<ServiceName, HashMap<String, EndpointSlice>>>,
    dirty: BTreeSet<ServiceName>,
    services_synced: bool,
    slices_synced: bool,
}

fn service_name(svc: &Service) -> ServiceName {
    (svc.namespace().unwrap_or_default(), svc.name_any())
}

/// The Service a slice belongs to, by its label.
fn owner_of(slice: &EndpointSlice) -> Option<ServiceName> {
    let svc = slice.labels().get(LABEL_SERVICE_NAME)?;
    Some((slice.namespace().unwrap_or_default(), svc.clone()))
}

impl Cache {
    fn on_service(&mut self, ev: watcher::Event<Service>) {
        match ev {
            watcher::Event::Apply(svc) => {
                let key = service_name(&svc);
                self.dirty.insert(key.clone());
                self.services.insert(key, svc);
            }
            watcher::Event::Delete(svc) => {
                let key = service_name(&svc);
                self.services.remove(&key);
                self.dirty.insert(key);
            }
            watcher::Event::Init => self.relist_services = Some(HashMap::new()),
            watcher::Event::InitApply(svc) => {
                self.relist_services
                    .get_or_insert_with(HashMap::new)
                    .insert(service_name(&svc), svc);
            }
            watcher::Event::InitDone => {
                let fresh = self.relist_services.take().unwrap_or_default();
                // Whatever was there or is there now may have changed.
                self.dirty.extend(self.services.keys().cloned());
                self.dirty.extend(fresh.keys().cloned());
                self.services = fresh;
                self.services_synced = true;
            }
        }
    }

    fn on_slice(&mut self, ev: watcher::Event<EndpointSlice>) {
        match ev {
            watcher::Event::Apply(slice) => {
                let Some(owner) = owner_of(&slice) else {
                    return;
                };
                // A slice relabelled to another Service leaves the old one.
                let name = slice.name_any();
                for (svc, slices) in &mut self.slices {
                    if svc != &owner && slices.remove(&name).is_some() {
                        self.dirty.insert(svc.clone());
                    }
                }
                self.dirty.insert(owner.clone());
                self.slices.entry(owner).or_default().insert(name, slice);
            }
            watcher::Event::Delete(slice) => {
                let Some(owner) = owner_of(&slice) else {
                    return;
                };
                if let Some(slices) = self.slices.get_mut(&owner) {
                    slices.remove(&slice.name_any());
                    if slices.is_empty() {
                        self.slices.remove(&owner);
                    }
                }
                self.dirty.insert(owner);
            }
            watcher::Event::Init => self.relist_slices = Some(HashMap::new()),
            watcher::Event::InitApply(slice) => {
                let Some(owner) = owner_of(&slice) else {
                    return;
                };
                self.relist_slices
                    .get_or_insert_with(HashMap::new)
                    .entry(owner)
                    .or_default()
                    .insert(slice.name_any(), slice);
            }
            watcher::Event::InitDone => {
                let fresh = self.relist_slices.take().unwrap_or_default();
                self.dirty.extend(self.slices.keys().cloned());
                self.dirty.extend(fresh.keys().cloned());
                self.slices = fresh;
                self.slices_synced = true;
            }
        }
    }

    fn entries(
        &self,
        key: &ServiceName,
        node_name: &str,
    ) -> Result<Vec<model::ServicePortEntries>, model::ModelError> {
        let Some(svc) = self.services.get(key) else {
            return Ok(Vec::new());
        };
        let slices: Vec<&EndpointSlice> = self
            .slices
            .get(key)
            .map(|m| m.values().collect())
            .unwrap_or_default();
        model::service_entries(svc, &slices, node_name)
    }
}

/// Watches the API and programs the maps until the watches end.
pub async fn run<M: LbMaps>(
    client: Client,
    node_name: String,
    mut programmer: Programmer<M>,
) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::channel::<Change>(1024);
    let config = watcher::Config::default().labels(PROXIED_SELECTOR);
    {
        let tx = tx.clone();
        let api: Api<Service> = Api::all(client.clone());
        let config = config.clone();
        tokio::spawn(async move {
            let mut stream = watcher(api, config).default_backoff().boxed();
            while let Some(ev) = stream.next().await {
                let msg = match ev {
                    Ok(ev) => Change::Service(Box::new(ev)),
                    Err(e) => Change::Error(format!("service watch: {e}")),
                };
                if tx.send(msg).await.is_err() {
                    return;
                }
            }
        });
    }
    {
        let api: Api<EndpointSlice> = Api::all(client);
        tokio::spawn(async move {
            let mut stream = watcher(api, config).default_backoff().boxed();
            while let Some(ev) = stream.next().await {
                let msg = match ev {
                    Ok(ev) => Change::Slice(Box::new(ev)),
                    Err(e) => Change::Error(format!("endpointslice watch: {e}")),
                };
                if tx.send(msg).await.is_err() {
                    return;
                }
            }
        });
    }

    let mut cache = Cache::default();
    let mut failed: HashSet<ServiceName> = HashSet::new();
    let mut initial_done = false;
    let mut retry = tokio::time::interval(RETRY);
    loop {
        tokio::select! {
            msg = rx.recv() => {
                let Some(msg) = msg else { anyhow::bail!("service watches ended") };
                handle(&mut cache, msg);
                // Take whatever else is queued, so a burst is one pass.
                while let Ok(msg) = rx.try_recv() {
                    handle(&mut cache, msg);
                }
            }
            _ = retry.tick() => {
                cache.dirty.extend(failed.drain());
            }
        }
        // Program nothing until both lists are in: a Service seen before its
        // slices would be written as having no endpoints and reject traffic.
        if !(cache.services_synced && cache.slices_synced) {
            continue;
        }
        let started = Instant::now();
        let dirty = std::mem::take(&mut cache.dirty);
        let count = dirty.len();
        for key in dirty {
            let entries = match cache.entries(&key, &node_name) {
                Ok(e) => e,
                Err(e) => {
                    // A Service we cannot read keeps whatever it had.
                    tracing::warn!(namespace = %key.0, service = %key.1, error = %e, "skipping service");
                    continue;
                }
            };
            if let Err(e) = programmer.apply(&key, &entries) {
                tracing::warn!(namespace = %key.0, service = %key.1, error = %e, "programming service failed; will retry");
                failed.insert(key);
            }
        }
        if !initial_done {
            match programmer.finish_initial_sync() {
                Ok(stale) => {
                    initial_done = true;
                    tracing::info!(
                        services = cache.services.len(),
                        frontends = programmer.frontends(),
                        stale_removed = stale,
                        "service maps in sync"
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, "removing stale map entries failed; will retry")
                }
            }
        }
        if count > 0 {
            tracing::debug!(
                services = count,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "services programmed"
            );
        }
    }
}

fn handle(cache: &mut Cache, msg: Change) {
    match msg {
        Change::Service(ev) => cache.on_service(*ev),
        Change::Slice(ev) => cache.on_slice(*ev),
        Change::Error(e) => tracing::warn!(error = %e, "watch error; retrying"),
    }
}
