//! kube-rs watches of Services, EndpointSlices, Namespaces and (for `pods
//! verified`) Pods, each event converted and applied to the [`Index`] on its
//! own. A relist (the watch's first list, or one after its resource version
//! expired) upserts every object it sees and only then removes what it did
//! not see, so answers never go missing while it runs.
//!
//! An object that does not decode (a field of the wrong type, say) does not
//! stop its watch ([`Decoded`]): it is logged, counted in
//! `ferry_watch_decode_errors_total{kind}`, and treated as absent; if an
//! update turns a known object bad, what it contributed is removed, so the
//! index only ever holds objects as they are now.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use ferry_daemon::watch::{DecodeErrors, Decoded};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tracing::{info, warn};

use crate::index::{EndpointRecord, Index, PortRecord, ServiceKind, ServiceRecord, SliceRecord};

const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";

/// The index and whether each watch has listed once.
#[derive(Debug, Default)]
pub struct Shared {
    pub index: RwLock<Index>,
    synced: [AtomicBool; 4],
    /// Pods are only watched for `pods verified`; otherwise that watch
    /// counts as synced from the start.
    pods_watched: AtomicBool,
    /// Objects skipped because they did not decode.
    pub decode_errors: DecodeErrors,
}

impl Shared {
    pub fn new(watch_pods: bool) -> Self {
        let shared = Self::default();
        shared.pods_watched.store(watch_pods, Ordering::Relaxed);
        if !watch_pods {
            shared.synced[Pod::SLOT].store(true, Ordering::Relaxed);
        }
        shared
    }

    /// Every watch has completed its first list.
    pub fn synced(&self) -> bool {
        self.synced.iter().all(|s| s.load(Ordering::Acquire))
    }

    /// Marks everything listed, for tests that fill the index directly.
    pub fn mark_synced(&self) {
        for s in &self.synced {
            s.store(true, Ordering::Release);
        }
    }
}

/// What one watched kind contributes to the index.
trait Feed:
    kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static
{
    const SLOT: usize;
    const KIND: &'static str;
    fn apply(&self, index: &mut Index);
    fn remove(index: &mut Index, ns: &str, name: &str);
    fn keys(index: &Index) -> Vec<(String, String)>;
}

fn key<K: kube::Resource>(obj: &K) -> (String, String) {
    (obj.namespace().unwrap_or_default(), obj.name_any())
}

fn ip_list<'a>(texts: impl IntoIterator<Item = &'a String>) -> Vec<IpAddr> {
    texts.into_iter().filter_map(|t| t.parse().ok()).collect()
}

fn protocol(p: Option<&str>) -> &'static str {
    match p {
        Some("UDP") => "udp",
        Some("SCTP") => "sctp",
        _ => "tcp",
    }
}

/// A port of a Service or an EndpointSlice; `None` when out of range.
fn port_record(name: Option<&str>, proto: Option<&str>, port: i32) -> Option<PortRecord> {
    Some(PortRecord {
        name: name.unwrap_or_default().to_ascii_lowercase().into(),
        protocol: protocol(proto),
        port: u16::try_from(port).ok()?,
    })
}

/// A Service as DNS needs it.
pub fn service_record(svc: &Service) -> ServiceRecord {
    let spec = svc.spec.clone().unwrap_or_default();
    let kind = if spec.type_.as_deref() == Some("ExternalName") {
        let target = spec.external_name.unwrap_or_default();
        ServiceKind::ExternalName(target.trim_end_matches('.').to_ascii_lowercase())
    } else if spec.cluster_ip.as_deref() == Some("None") {
        ServiceKind::Headless
    } else {
        let mut ips = ip_list(spec.cluster_ips.iter().flatten());
        if ips.is_empty() {
            ips = ip_list(spec.cluster_ip.iter());
        }
        ServiceKind::ClusterIp(ips)
    };
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| port_record(p.name.as_deref(), p.protocol.as_deref(), p.port))
        .collect();
    ServiceRecord {
        kind,
        ports,
        publish_not_ready: spec.publish_not_ready_addresses.unwrap_or(false),
    }
}

/// An EndpointSlice as DNS needs it, with the service it belongs to.
pub fn slice_record(slice: &EndpointSlice) -> (Option<String>, SliceRecord) {
    let owner = slice.labels().get(LABEL_SERVICE_NAME).cloned();
    // FQDN slices hold names, not addresses: nothing for DNS.
    if slice.address_type == "FQDN" {
        return (owner, SliceRecord::default());
    }
    let ports = slice
        .ports
        .iter()
        .flatten()
        .filter_map(|p| port_record(p.name.as_deref(), p.protocol.as_deref(), p.port?))
        .collect();
    let endpoints = slice
        .endpoints
        .iter()
        .map(|e| EndpointRecord {
            addresses: ip_list(e.addresses.iter()),
            hostname: e
                .hostname
                .as_deref()
                .filter(|h| !h.is_empty())
                .map(|h| h.to_ascii_lowercase().into()),
            ready: e.conditions.as_ref().and_then(|c| c.ready) != Some(false),
        })
        .filter(|e| !e.addresses.is_empty())
        .collect();
    (owner, SliceRecord { ports, endpoints })
}

/// A pod's addresses.
pub fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    let mut ips: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    if ips.is_empty() {
        ips = ip_list(status.pod_ip.iter());
    }
    ips
}

impl Feed for Service {
    const SLOT: usize = 0;
    const KIND: &'static str = "Service";
    fn apply(&self, index: &mut Index) {
        let (ns, name) = key(self);
        index.upsert_service(&ns, &name, service_record(self));
    }
    fn remove(index: &mut Index, ns: &str, name: &str) {
        index.remove_service(ns, name);
    }
    fn keys(index: &Index) -> Vec<(String, String)> {
        index.service_names()
    }
}

impl Feed for EndpointSlice {
    const SLOT: usize = 1;
    const KIND: &'static str = "EndpointSlice";
    fn apply(&self, index: &mut Index) {
        let (ns, name) = key(self);
        let (owner, record) = slice_record(self);
        index.upsert_slice(&ns, &name, owner.as_deref(), record);
    }
    fn remove(index: &mut Index, ns: &str, name: &str) {
        index.remove_slice(ns, name);
    }
    fn keys(index: &Index) -> Vec<(String, String)> {
        index.slice_names()
    }
}

impl Feed for Namespace {
    const SLOT: usize = 2;
    const KIND: &'static str = "Namespace";
    fn apply(&self, index: &mut Index) {
        index.upsert_namespace(&self.name_any());
    }
    fn remove(index: &mut Index, _ns: &str, name: &str) {
        index.remove_namespace(name);
    }
    fn keys(index: &Index) -> Vec<(String, String)> {
        index
            .namespace_names()
            .into_iter()
            .map(|n| (String::new(), n))
            .collect()
    }
}

impl Feed for Pod {
    const SLOT: usize = 3;
    const KIND: &'static str = "Pod";
    fn apply(&self, index: &mut Index) {
        let (ns, name) = key(self);
        index.upsert_pod(&ns, &name, pod_ips(self));
    }
    fn remove(index: &mut Index, ns: &str, name: &str) {
        index.remove_pod(ns, name);
    }
    fn keys(index: &Index) -> Vec<(String, String)> {
        index.pod_names()
    }
}

/// Runs every watch until the process ends.
pub async fn run(client: Client, shared: Arc<Shared>) {
    let services = feed::<Service>(Api::all(client.clone()), shared.clone());
    let slices = feed::<EndpointSlice>(Api::all(client.clone()), shared.clone());
    let namespaces = feed::<Namespace>(Api::all(client.clone()), shared.clone());
    if shared.pods_watched.load(Ordering::Relaxed) {
        let pods = feed::<Pod>(Api::all(client), shared.clone());
        tokio::join!(services, slices, namespaces, pods);
    } else {
        tokio::join!(services, slices, namespaces);
    }
}

async fn feed<K: Feed>(api: Api<Decoded<K>>, shared: Arc<Shared>) {
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    futures_util::pin_mut!(stream);
    // Keys seen by the relist in progress.
    let mut relist: Option<HashSet<(String, String)>> = None;
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                // The backoff above retries; the index keeps its answers.
                warn!(kind = K::KIND, %error, "watch failed, retrying");
                continue;
            }
        };
        match event {
            watcher::Event::Apply(obj) => {
                let (ns, name) = key(&obj);
                match shared.decode_errors.check(K::KIND, obj) {
                    Some(obj) => write(&shared, |i| obj.apply(i)),
                    // Unreadable now: gone, not stale.
                    None => write(&shared, |i| K::remove(i, &ns, &name)),
                }
            }
            watcher::Event::Delete(obj) => {
                let (ns, name) = key(&obj);
                write(&shared, |i| K::remove(i, &ns, &name));
            }
            watcher::Event::Init => relist = Some(HashSet::new()),
            watcher::Event::InitApply(obj) => {
                // A bad object is left out of the relist, so its end removes
                // whatever an earlier version had put in.
                if let Some(obj) = shared.decode_errors.check(K::KIND, obj) {
                    relist.get_or_insert_with(HashSet::new).insert(key(&obj));
                    write(&shared, |i| obj.apply(i));
                }
            }
            watcher::Event::InitDone => {
                let seen = relist.take().unwrap_or_default();
                let count = seen.len();
                write(&shared, |i| {
                    for (ns, name) in K::keys(i) {
                        if !seen.contains(&(ns.clone(), name.clone())) {
                            K::remove(i, &ns, &name);
                        }
                    }
                });
                if !shared.synced[K::SLOT].swap(true, Ordering::AcqRel) {
                    info!(kind = K::KIND, objects = count, "first list done");
                }
            }
        }
    }
}

fn write(shared: &Shared, f: impl FnOnce(&mut Index)) {
    // A writer that panicked left the index consistent per object; keep
    // serving from it rather than failing every query.
    let mut index = shared.index.write().unwrap_or_else(|p| p.into_inner());
    f(&mut index);
}
