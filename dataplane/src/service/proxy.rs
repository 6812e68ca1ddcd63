//! The service proxy loop: watches Services and EndpointSlices (only those
//! kube-proxy would handle), keeps them indexed by Service, and hands each
//! changed Service's entries to the [`Programmer`]. One event touches one
//! Service's map entries and nothing else.
//!
//! An object the agent cannot decode (a field of the wrong type) does not
//! stop its watch ([`Decoded`]): it is logged, counted in
//! `ferry_watch_decode_errors_total{kind}` and treated as deleted, so the
//! maps never keep an old version of an object whose current one is
//! unreadable, and every other Service is programmed as usual.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_ebpf_common::ServiceStats;

use ferry_daemon::watch::{DecodeErrors, Decoded};
use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, ResourceExt as _};
use tokio::sync::mpsc;

use super::model::{self, LABEL_SERVICE_NAME, PROXIED_SELECTOR};
use super::programmer::{LbMaps, Programmer, ServiceName};
use crate::bpf::MapSizes;
use crate::metrics::{Metrics, ServiceLabels};

/// How often failed Services are retried.
const RETRY: Duration = Duration::from_secs(1);

enum Change {
    Service(Box<watcher::Event<Decoded<Service>>>),
    Slice(Box<watcher::Event<Decoded<EndpointSlice>>>),
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
    /// The trigger time last measured per slice, so each change is
    /// observed once.
    observed: HashMap<(String, String), String>,
    /// Each slice's Service, to find it when a slice is relabelled.
    slice_owner: HashMap<(String, String), ServiceName>,
}

/// A Service as the model reads it: no managed fields or annotations (but
/// Ferry's own), which are most of an object's memory.
fn slim_service(mut svc: Service) -> Service {
    // The uid stays: Events about the Service name it.
    let uid = svc.metadata.uid.take();
    slim_meta(&mut svc.metadata);
    svc.metadata.uid = uid;
    if let Some(a) = svc.metadata.annotations.as_mut() {
        a.retain(|k, _| k == model::ANNOTATION_LB_ALGORITHM);
    }
    if svc
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.is_empty())
    {
        svc.metadata.annotations = None;
    }
    if let Some(spec) = svc.spec.as_mut() {
        // Endpoints come from the slices; the selector is the controller's.
        spec.selector = None;
    }
    if let Some(status) = svc.status.as_mut() {
        status.conditions = None;
    }
    svc
}

fn slim_meta(m: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) {
    m.managed_fields = None;
    m.owner_references = None;
    m.uid = None;
    m.generate_name = None;
    m.resource_version = None;
    m.creation_timestamp = None;
    m.finalizers = None;
}

/// An EndpointSlice as the model reads it (addresses, conditions, node,
/// ports), keeping only the trigger-time annotation.
fn slim_slice(mut slice: EndpointSlice) -> EndpointSlice {
    let m = &mut slice.metadata;
    slim_meta(m);
    if let Some(a) = m.annotations.as_mut() {
        a.retain(|k, _| k == TRIGGER_TIME);
    }
    for e in &mut slice.endpoints {
        e.target_ref = None;
        e.hints = None;
        e.hostname = None;
        e.deprecated_topology = None;
        e.zone = None;
        // kube-proxy (and the model) use the first address only.
        e.addresses.truncate(1);
        e.addresses.shrink_to_fit();
    }
    slice.endpoints.shrink_to_fit();
    slice
}

fn service_name<K: kube::Resource>(svc: &K) -> ServiceName {
    (svc.namespace().unwrap_or_default(), svc.name_any())
}

/// The Service a slice belongs to, by its label.
fn owner_of<K: kube::Resource>(slice: &K) -> Option<ServiceName> {
    let svc = slice.labels().get(LABEL_SERVICE_NAME)?;
    Some((slice.namespace().unwrap_or_default(), svc.clone()))
}

impl Cache {
    fn on_service(&mut self, ev: watcher::Event<Decoded<Service>>, errors: &DecodeErrors) {
        match ev {
            watcher::Event::Apply(obj) => {
                let key = service_name(&obj);
                self.dirty.insert(key.clone());
                match errors.check("Service", obj) {
                    Some(svc) => {
                        self.services.insert(key, slim_service(svc));
                    }
                    // Unreadable now: deleted, not kept as it was.
                    None => {
                        self.services.remove(&key);
                    }
                }
            }
            watcher::Event::Delete(obj) => {
                let key = service_name(&obj);
                self.services.remove(&key);
                self.dirty.insert(key);
            }
            watcher::Event::Init => self.relist_services = Some(HashMap::new()),
            watcher::Event::InitApply(obj) => {
                // Left out of the relist: its end drops an older version.
                if let Some(svc) = errors.check("Service", obj) {
                    self.relist_services
                        .get_or_insert_with(HashMap::new)
                        .insert(service_name(&svc), slim_service(svc));
                }
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

    fn on_slice(&mut self, ev: watcher::Event<Decoded<EndpointSlice>>, errors: &DecodeErrors) {
        match ev {
            watcher::Event::Apply(obj) => {
                if !errors.observe("EndpointSlice", &obj) {
                    // Unreadable now: deleted (its metadata says which).
                    self.on_slice(watcher::Event::Delete(obj), errors);
                    return;
                }
                let Some(slice) = obj.ok() else {
                    return;
                };
                let Some(owner) = owner_of(&slice) else {
                    return;
                };
                let name = slice.name_any();
                let id = (owner.0.clone(), name.clone());
                // A slice relabelled to another Service leaves the old one.
                if let Some(before) = self.slice_owner.insert(id, owner.clone())
                    && before != owner
                    && let Some(slices) = self.slices.get_mut(&before)
                {
                    slices.remove(&name);
                    if slices.is_empty() {
                        self.slices.remove(&before);
                    }
                    self.dirty.insert(before);
                }
                self.dirty.insert(owner.clone());
                self.slices
                    .entry(owner)
                    .or_default()
                    .insert(name, slim_slice(slice));
            }
            watcher::Event::Delete(slice) => {
                // The owner as last seen; a bad object may not carry labels.
                let id = (slice.namespace().unwrap_or_default(), slice.name_any());
                let Some(owner) = self.slice_owner.remove(&id).or_else(|| owner_of(&slice)) else {
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
            watcher::Event::InitApply(obj) => {
                let Some(slice) = errors.check("EndpointSlice", obj) else {
                    return;
                };
                let Some(owner) = owner_of(&slice) else {
                    return;
                };
                self.relist_slices
                    .get_or_insert_with(HashMap::new)
                    .entry(owner)
                    .or_default()
                    .insert(slice.name_any(), slim_slice(slice));
            }
            watcher::Event::InitDone => {
                let fresh = self.relist_slices.take().unwrap_or_default();
                self.dirty.extend(self.slices.keys().cloned());
                self.dirty.extend(fresh.keys().cloned());
                self.slice_owner = fresh
                    .iter()
                    .flat_map(|(svc, slices)| {
                        slices
                            .keys()
                            .map(move |name| ((svc.0.clone(), name.clone()), svc.clone()))
                    })
                    .collect();
                self.slices = fresh;
                self.slices_synced = true;
            }
        }
    }

    /// Programming latency for every slice of `key` whose trigger time is
    /// new: from the change in the API to the maps holding it.
    fn observe_programming(&mut self, key: &ServiceName, metrics: &Metrics) {
        let Some(slices) = self.slices.get(key) else {
            return;
        };
        let now = jiff::Timestamp::now();
        for (name, slice) in slices {
            let Some(trigger) = slice.annotations().get(TRIGGER_TIME) else {
                continue;
            };
            let id = (key.0.clone(), name.clone());
            if self.observed.get(&id) == Some(trigger) {
                continue;
            }
            if let Ok(at) = trigger.parse::<jiff::Timestamp>() {
                let secs = now.duration_since(at).as_secs_f64();
                if secs >= 0.0 {
                    metrics.programming_latency.observe(secs);
                }
            }
            self.observed.insert(id, trigger.clone());
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

/// What the proxy loop needs besides the API and the maps.
#[derive(Debug, Clone)]
pub struct Settings {
    pub node_name: String,
    /// Map capacities, for the fill-level gauges.
    pub sizes: MapSizes,
    /// The cgroup whose processes' UDP sockets to a gone backend are ended.
    pub cgroup_root: PathBuf,
    /// Where Events about Services the agent cannot program go.
    pub events: crate::events::Recorder,
}

/// An Event's note about Service `key`.
fn note(
    cache: &Cache,
    key: &ServiceName,
    reason: &'static str,
    message: String,
) -> crate::events::Note {
    crate::events::Note {
        namespace: key.0.clone(),
        name: key.1.clone(),
        uid: cache.services.get(key).and_then(|s| s.metadata.uid.clone()),
        reason,
        message,
    }
}

/// The EndpointSlice annotation kube-proxy measures programming latency
/// from: when the change that produced the slice happened.
const TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// Watches the API and programs the maps until the watches end.
pub async fn run<M: LbMaps>(
    client: Client,
    settings: Settings,
    mut programmer: Programmer<M>,
    mut firewall: super::firewall::SourceRanges,
    announcer: crate::announce::Announcer,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::channel::<Change>(1024);
    let config = watcher::Config::default().labels(PROXIED_SELECTOR);
    watch::<Decoded<Service>>(client.clone(), config.clone(), tx.clone(), |ev| {
        Change::Service(Box::new(ev))
    });
    watch::<Decoded<EndpointSlice>>(client, config, tx, |ev| Change::Slice(Box::new(ev)));

    let mut cache = Cache::default();
    let mut failed: HashSet<ServiceName> = HashSet::new();
    let mut initial_done = false;
    let mut retry = tokio::time::interval(RETRY);
    let mut counters = Counters::default();
    let mut health = super::health::HealthServers::new(metrics.clone());
    let mut scrapes = metrics.refresh_requests();
    loop {
        tokio::select! {
            msg = rx.recv() => {
                let Some(msg) = msg else { anyhow::bail!("service watches ended") };
                handle(&mut cache, msg, &metrics.decode_errors);
                // Take whatever else is queued, so a burst is one pass.
                while let Ok(msg) = rx.try_recv() {
                    handle(&mut cache, msg, &metrics.decode_errors);
                }
            }
            _ = retry.tick() => {
                cache.dirty.extend(failed.drain());
                metrics.beat();
            }
            Some(done) = scrapes.recv() => {
                counters.update(&programmer, &metrics);
                let _ = done.send(());
                continue;
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
            let entries = match cache.entries(&key, &settings.node_name) {
                Ok(e) => e,
                Err(e) => {
                    // A Service we cannot read keeps whatever it had.
                    tracing::warn!(namespace = %key.0, service = %key.1, error = %e, "skipping service");
                    settings.events.warn(note(
                        &cache,
                        &key,
                        "InvalidService",
                        format!("not programmed on this node (it keeps what it had): {e}"),
                    ));
                    continue;
                }
            };
            if let Some(Err(e)) = cache.services.get(&key).map(model::lb_algorithm) {
                tracing::warn!(namespace = %key.0, service = %key.1, error = %e, "ignoring an annotation");
                settings
                    .events
                    .warn(note(&cache, &key, "InvalidAnnotation", e.to_string()));
            }
            health.update(
                &key,
                cache.services.get(&key).and_then(super::health::port_of),
                super::health::local_endpoints(&entries),
            );
            announcer.update(&key, crate::announce::eligible_ips(&entries));
            if let Err(e) = firewall.update(&key, &entries) {
                tracing::warn!(namespace = %key.0, service = %key.1, error = %e, "writing source ranges failed; will retry");
                failed.insert(key.clone());
            }
            match programmer.apply(&key, &entries) {
                Ok(_) => cache.observe_programming(&key, &metrics),
                Err(e) => {
                    tracing::warn!(namespace = %key.0, service = %key.1, error = %e, "programming service failed; will retry");
                    metrics.sync_errors.inc();
                    failed.insert(key);
                }
            }
        }
        let gone = programmer.take_removed_udp();
        if !gone.is_empty() {
            let cgroup = settings.cgroup_root.clone();
            // Walking the cgroup's namespaces is slow next to a map write:
            // off the loop.
            tokio::task::spawn_blocking(move || {
                match crate::sockets::destroy_udp_to(&cgroup, &gone) {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(
                        sockets = n,
                        "ended UDP sockets connected to removed backends"
                    ),
                    Err(e) => tracing::warn!(error = %e, "ending UDP sockets of removed backends"),
                }
            });
        }
        if !initial_done {
            match programmer.finish_initial_sync() {
                Ok(stale) => {
                    initial_done = true;
                    let n = firewall.remove_unclaimed();
                    if n > 0 {
                        tracing::info!(entries = n, "removed source ranges of gone Services");
                    }
                    metrics.set_ready();
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
            metrics.synced(started.elapsed());
            metrics.set_map("services", programmer.frontends(), settings.sizes.services);
            metrics.set_map(
                "backends",
                programmer.backend_slots(),
                settings.sizes.backends,
            );
            tracing::debug!(
                services = count,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "services programmed"
            );
        }
    }
}

/// Streams one kind's watch events into the loop's channel, on a task of
/// its own (kube-rs relists and backs off by itself).
fn watch<K>(
    client: Client,
    config: watcher::Config,
    tx: mpsc::Sender<Change>,
    wrap: fn(watcher::Event<K>) -> Change,
) where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + k8s_openapi::serde::de::DeserializeOwned
        + Send
        + 'static,
{
    let api: Api<K> = Api::all(client);
    tokio::spawn(async move {
        let mut stream = watcher(api, config).default_backoff().boxed();
        while let Some(ev) = stream.next().await {
            let msg = match ev {
                Ok(ev) => wrap(ev),
                Err(e) => Change::Error(format!("{} watch: {e}", K::kind(&()))),
            };
            if tx.send(msg).await.is_err() {
                return;
            }
        }
    });
}

/// The last counter values read per group, to turn the maps' absolute
/// counts into Prometheus increments.
#[derive(Default)]
struct Counters {
    last: HashMap<u32, ServiceStats>,
}

impl Counters {
    fn update<M: LbMaps>(&mut self, programmer: &Programmer<M>, metrics: &Metrics) {
        let mut seen = HashMap::new();
        for (id, port, v6, external) in programmer.group_labels() {
            let Ok(Some(now)) = programmer.maps().read_stats(id) else {
                continue;
            };
            let labels = ServiceLabels {
                service: port.to_string(),
                family: if v6 { "IPv6" } else { "IPv4" }.to_owned(),
                traffic: if external { "external" } else { "internal" }.to_owned(),
            };
            // A reused id starts below the last reading: count from zero.
            let before = self
                .last
                .get(&id)
                .copied()
                .filter(|b| b.connections <= now.connections && b.packets <= now.packets)
                .unwrap_or_default();
            metrics
                .connections
                .get_or_create(&labels)
                .inc_by(now.connections - before.connections);
            metrics
                .rejected
                .get_or_create(&labels)
                .inc_by(now.rejected.saturating_sub(before.rejected));
            metrics
                .packets
                .get_or_create(&labels)
                .inc_by(now.packets - before.packets);
            metrics
                .bytes
                .get_or_create(&labels)
                .inc_by(now.bytes.saturating_sub(before.bytes));
            seen.insert(id, now);
        }
        self.last = seen;
    }
}

fn handle(cache: &mut Cache, msg: Change, errors: &DecodeErrors) {
    match msg {
        Change::Service(ev) => cache.on_service(*ev, errors),
        Change::Slice(ev) => cache.on_slice(*ev, errors),
        Change::Error(e) => tracing::warn!(error = %e, "watch error; retrying"),
    }
}
