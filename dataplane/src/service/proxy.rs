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

/// Objects per page of the initial list (kube-rs's default is 500; a
/// page of 500 EndpointSlices of 100 endpoints is tens of megabytes once
/// decoded).
pub const LIST_PAGE: u32 = 100;

enum Change {
    Service(Box<watcher::Event<Decoded<Service>>>),
    Slice(Box<watcher::Event<Decoded<EndpointSlice>>>),
    Error(String),
}

/// A Service as the loop keeps it: the model's compact form (or why the
/// Service cannot be programmed), and the little else the loop reads.
#[derive(Debug)]
struct CachedService {
    info: Result<model::ServiceInfo, Box<model::ModelError>>,
    /// An unreadable `ferry.dev/lb-algorithm` annotation, reported when
    /// the Service is programmed.
    lb_error: Option<Box<model::ModelError>>,
    /// The health-check node port it wants served.
    health_port: Option<u16>,
    /// Events about the Service name it.
    uid: Option<Box<str>>,
}

impl CachedService {
    fn of(svc: &Service) -> Self {
        Self {
            info: model::ServiceInfo::from_service(svc).map_err(Box::new),
            lb_error: model::lb_algorithm(svc).err().map(Box::new),
            health_port: super::health::port_of(svc),
            uid: svc.metadata.uid.as_deref().map(Into::into),
        }
    }
}

/// One EndpointSlice as the loop keeps it.
#[derive(Debug)]
struct CachedSlice {
    name: Box<str>,
    info: model::SliceInfo,
    /// Its `endpoints.kubernetes.io/last-change-trigger-time`.
    trigger: Option<Box<str>>,
    /// That trigger time was measured already (each change is observed
    /// once).
    measured: bool,
}

impl CachedSlice {
    fn of(slice: &EndpointSlice, node_name: &str) -> Self {
        Self {
            name: slice.name_any().into(),
            info: model::SliceInfo::from_slice(slice, node_name),
            trigger: slice
                .annotations()
                .get(TRIGGER_TIME)
                .map(|t| t.as_str().into()),
            measured: false,
        }
    }

    /// Takes over `before`'s measurement when the trigger time is the same.
    fn after(mut self, before: Option<&CachedSlice>) -> Self {
        self.measured = before.is_some_and(|b| b.measured && b.trigger == self.trigger);
        self
    }
}

/// A Service's slices (few: a slice holds up to 100 endpoints by default).
type Slices = Vec<CachedSlice>;

fn slice_named<'a>(slices: &'a Slices, name: &str) -> Option<&'a CachedSlice> {
    slices.iter().find(|s| &*s.name == name)
}

/// Puts `slice` in place of the one of the same name; returns the old one.
fn upsert_slice(slices: &mut Slices, slice: CachedSlice) -> Option<CachedSlice> {
    match slices.iter_mut().find(|s| s.name == slice.name) {
        Some(old) => Some(std::mem::replace(old, slice)),
        None => {
            slices.push(slice);
            None
        }
    }
}

fn remove_slice(slices: &mut Slices, name: &str) -> Option<CachedSlice> {
    let i = slices.iter().position(|s| &*s.name == name)?;
    Some(slices.swap_remove(i))
}

/// Services and their slices as last seen, in the model's compact forms
/// (never the API objects), with what needs programming.
#[derive(Default)]
struct Cache {
    /// This node's name: whether an endpoint is local is decided when its
    /// slice arrives.
    node_name: String,
    services: HashMap<ServiceName, CachedService>,
    slices: HashMap<ServiceName, Slices>,
    /// Objects of a relist in progress; swapped in at its end.
    relist_services: Option<HashMap<ServiceName, CachedService>>,
    relist_slices: Option<HashMap<ServiceName, Slices>>,
    dirty: BTreeSet<ServiceName>,
    services_synced: bool,
    slices_synced: bool,
    /// Each slice's Service, to find it when a slice is relabelled.
    slice_owner: HashMap<(String, String), ServiceName>,
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
    fn new(node_name: &str) -> Self {
        Self {
            node_name: node_name.to_string(),
            ..Self::default()
        }
    }

    fn on_service(&mut self, ev: watcher::Event<Decoded<Service>>, errors: &DecodeErrors) {
        match ev {
            watcher::Event::Apply(obj) => {
                let key = service_name(&obj);
                self.dirty.insert(key.clone());
                match errors.check("Service", obj) {
                    Some(svc) => {
                        self.services.insert(key, CachedService::of(&svc));
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
                        .insert(service_name(&svc), CachedService::of(&svc));
                }
            }
            watcher::Event::InitDone => {
                let mut fresh = self.relist_services.take().unwrap_or_default();
                fresh.shrink_to_fit();
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
                let mut fresh = CachedSlice::of(&slice, &self.node_name);
                drop(slice);
                // A slice relabelled to another Service leaves the old one.
                if let Some(before) = self.slice_owner.insert(id, owner.clone())
                    && before != owner
                    && let Some(slices) = self.slices.get_mut(&before)
                {
                    let old = remove_slice(slices, &name);
                    fresh = fresh.after(old.as_ref());
                    if slices.is_empty() {
                        self.slices.remove(&before);
                    }
                    self.dirty.insert(before);
                }
                self.dirty.insert(owner.clone());
                let slices = self.slices.entry(owner).or_default();
                let measured = fresh.measured;
                let fresh = fresh.after(slice_named(slices, &name));
                let fresh = CachedSlice {
                    measured: fresh.measured || measured,
                    ..fresh
                };
                upsert_slice(slices, fresh);
            }
            watcher::Event::Delete(slice) => {
                // The owner as last seen; a bad object may not carry labels.
                let id = (slice.namespace().unwrap_or_default(), slice.name_any());
                let Some(owner) = self.slice_owner.remove(&id).or_else(|| owner_of(&slice)) else {
                    return;
                };
                if let Some(slices) = self.slices.get_mut(&owner) {
                    remove_slice(slices, &slice.name_any());
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
                let fresh = CachedSlice::of(&slice, &self.node_name);
                drop(slice);
                let before = self
                    .slices
                    .get(&owner)
                    .and_then(|s| slice_named(s, &fresh.name));
                let fresh = fresh.after(before);
                upsert_slice(
                    self.relist_slices
                        .get_or_insert_with(HashMap::new)
                        .entry(owner)
                        .or_default(),
                    fresh,
                );
            }
            watcher::Event::InitDone => {
                let mut fresh = self.relist_slices.take().unwrap_or_default();
                fresh.shrink_to_fit();
                self.dirty.extend(self.slices.keys().cloned());
                self.dirty.extend(fresh.keys().cloned());
                self.slice_owner = fresh
                    .iter_mut()
                    .flat_map(|(svc, slices)| {
                        slices.shrink_to_fit();
                        slices
                            .iter()
                            .map(move |s| ((svc.0.clone(), s.name.to_string()), svc.clone()))
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
        let Some(slices) = self.slices.get_mut(key) else {
            return;
        };
        let now = jiff::Timestamp::now();
        for slice in slices.iter_mut().filter(|s| !s.measured) {
            let Some(trigger) = slice.trigger.as_deref() else {
                continue;
            };
            if let Ok(at) = trigger.parse::<jiff::Timestamp>() {
                let secs = now.duration_since(at).as_secs_f64();
                if secs >= 0.0 {
                    metrics.programming_latency.observe(secs);
                }
            }
            slice.measured = true;
        }
    }

    fn entries(
        &self,
        key: &ServiceName,
    ) -> Result<Vec<model::ServicePortEntries>, &model::ModelError> {
        let Some(svc) = self.services.get(key) else {
            return Ok(Vec::new());
        };
        let info = svc.info.as_ref().map_err(AsRef::as_ref)?;
        let slices: Vec<&model::SliceInfo> = self
            .slices
            .get(key)
            .map(|v| v.iter().map(|s| &s.info).collect())
            .unwrap_or_default();
        Ok(info.entries(&key.0, &key.1, &slices))
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
        uid: cache
            .services
            .get(key)
            .and_then(|s| s.uid.as_deref().map(String::from)),
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
    // Lists come in pages of LIST_PAGE objects: each page is decoded whole
    // before its objects are reduced to the compact forms, so the page
    // bounds what the initial sync holds at once.
    let config = watcher::Config::default()
        .labels(PROXIED_SELECTOR)
        .page_size(LIST_PAGE);
    watch::<Decoded<Service>>(client.clone(), config.clone(), tx.clone(), |ev| {
        Change::Service(Box::new(ev))
    });
    watch::<Decoded<EndpointSlice>>(client, config, tx, |ev| Change::Slice(Box::new(ev)));

    let mut cache = Cache::new(&settings.node_name);
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
            let entries = match cache.entries(&key) {
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
            if let Some(e) = cache.services.get(&key).and_then(|s| s.lb_error.as_ref()) {
                tracing::warn!(namespace = %key.0, service = %key.1, error = %e, "ignoring an annotation");
                settings
                    .events
                    .warn(note(&cache, &key, "InvalidAnnotation", e.to_string()));
            }
            health.update(
                &key,
                cache.services.get(&key).and_then(|s| s.health_port),
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
        let mut seen = HashMap::with_capacity(self.last.len());
        for (id, port, v6, external) in programmer.group_labels() {
            let Ok(Some(now)) = programmer.maps().read_stats(id) else {
                continue;
            };
            // A Service nothing has reached gets no series: ten thousand
            // idle Services would otherwise hold forty thousand counters.
            if now == ServiceStats::default() && !self.last.contains_key(&id) {
                continue;
            }
            let labels = ServiceLabels {
                service: port.to_string().into(),
                family: if v6 { "IPv6" } else { "IPv4" },
                traffic: if external { "external" } else { "internal" },
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    const NODE: &str = "node-a";

    fn svc(name: &str, port: i64) -> Decoded<Service> {
        Decoded::Ok(
            serde_json::from_value(json!({
                "metadata": {"namespace": "ns", "name": name, "uid": "u-1"},
                "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": port}]},
            }))
            .unwrap(),
        )
    }

    fn slice(name: &str, owner: &str, ip: &str, trigger: &str) -> Decoded<EndpointSlice> {
        Decoded::Ok(
            serde_json::from_value(json!({
                "metadata": {"namespace": "ns", "name": name,
                             "labels": {LABEL_SERVICE_NAME: owner},
                             "annotations": {TRIGGER_TIME: trigger}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080}],
                "endpoints": [{"addresses": [ip], "nodeName": NODE, "conditions": {"ready": true}}],
            }))
            .unwrap(),
        )
    }

    fn key(name: &str) -> ServiceName {
        ("ns".into(), name.into())
    }

    fn backends(cache: &Cache, name: &str) -> Vec<String> {
        cache
            .entries(&key(name))
            .unwrap()
            .iter()
            .flat_map(|e| e.cluster_backends.iter())
            .map(|b| format!("{}:{}:{}", b.addr, b.port, b.local))
            .collect()
    }

    fn listed(cache: &mut Cache, errors: &DecodeErrors) {
        cache.on_service(watcher::Event::Init, errors);
        cache.on_service(watcher::Event::InitApply(svc("web", 80)), errors);
        cache.on_service(watcher::Event::InitApply(svc("api", 80)), errors);
        cache.on_service(watcher::Event::InitDone, errors);
        cache.on_slice(watcher::Event::Init, errors);
        cache.on_slice(
            watcher::Event::InitApply(slice("web-1", "web", "10.0.0.1", "2025-01-01T00:00:00Z")),
            errors,
        );
        cache.on_slice(watcher::Event::InitDone, errors);
    }

    #[test]
    fn compact_cache_programs_from_its_forms() {
        let metrics = Metrics::new();
        let errors = metrics.decode_errors.clone();
        let mut cache = Cache::new(NODE);
        listed(&mut cache, &errors);
        assert!(cache.services_synced && cache.slices_synced);
        assert_eq!(backends(&cache, "web"), ["10.0.0.1:8080:true"]);
        assert!(backends(&cache, "api").is_empty());
        // A slice relabelled to another Service moves, both are dirty.
        cache.dirty.clear();
        cache.on_slice(
            watcher::Event::Apply(slice("web-1", "api", "10.0.0.2", "2025-01-01T00:00:01Z")),
            &errors,
        );
        assert!(backends(&cache, "web").is_empty());
        assert_eq!(backends(&cache, "api"), ["10.0.0.2:8080:true"]);
        assert_eq!(cache.dirty, BTreeSet::from([key("web"), key("api")]));
        // Deleted by its last owner even when the object has no labels.
        let bare: EndpointSlice = serde_json::from_value(
            json!({"metadata": {"namespace": "ns", "name": "web-1"}, "endpoints": []}),
        )
        .unwrap();
        cache.on_slice(watcher::Event::Delete(Decoded::Ok(bare)), &errors);
        assert!(backends(&cache, "api").is_empty());
        assert!(!cache.slices.contains_key(&key("api")));
        // A Service that cannot be programmed reports why, and keeps the uid.
        cache.on_service(watcher::Event::Apply(svc("web", 70_000)), &errors);
        let err = cache.entries(&key("web")).unwrap_err();
        assert!(err.to_string().contains("spec.ports[0].port"), "{err}");
        assert_eq!(
            note(&cache, &key("web"), "x", String::new()).uid.as_deref(),
            Some("u-1")
        );
    }

    #[test]
    fn each_trigger_time_is_measured_once_also_across_relists() {
        let metrics = Metrics::new();
        let errors = metrics.decode_errors.clone();
        let mut cache = Cache::new(NODE);
        listed(&mut cache, &errors);
        let unmeasured = |c: &Cache| c.slices.values().flatten().filter(|s| !s.measured).count();
        assert_eq!(unmeasured(&cache), 1);
        cache.observe_programming(&key("web"), &metrics);
        assert_eq!(unmeasured(&cache), 0);
        // The same trigger again (a relist, or a resync of the same
        // object) is not measured again...
        listed(&mut cache, &errors);
        assert_eq!(unmeasured(&cache), 0);
        cache.on_slice(
            watcher::Event::Apply(slice("web-1", "web", "10.0.0.1", "2025-01-01T00:00:00Z")),
            &errors,
        );
        assert_eq!(unmeasured(&cache), 0);
        // ...a new one is.
        cache.on_slice(
            watcher::Event::Apply(slice("web-1", "web", "10.0.0.3", "2025-01-01T00:00:05Z")),
            &errors,
        );
        assert_eq!(unmeasured(&cache), 1);
    }
}
