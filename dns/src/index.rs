//! The in-memory records the cluster zone is answered from: Services, their
//! EndpointSlices, Pod addresses (for `pods verified`) and Namespaces, each
//! updated one object at a time, with the reverse indexes PTR answers need.
//!
//! Only what answers need is kept, in plain strings and addresses, so the
//! index costs a few hundred bytes per object; the API objects themselves are
//! dropped once converted.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

/// A Service as DNS sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRecord {
    pub kind: ServiceKind,
    pub ports: Vec<PortRecord>,
    /// Endpoints are published whether ready or not.
    pub publish_not_ready: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceKind {
    /// A virtual IP per family (empty until one is allocated).
    ClusterIp(Vec<IpAddr>),
    /// `clusterIP: None`: the endpoints' own addresses.
    Headless,
    /// An alias: lowercase, without the trailing dot.
    ExternalName(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortRecord {
    /// Empty for an unnamed port (no SRV record).
    pub name: Box<str>,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: &'static str,
    pub port: u16,
}

/// One EndpointSlice's addresses and ports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SliceRecord {
    pub ports: Vec<PortRecord>,
    pub endpoints: Vec<EndpointRecord>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointRecord {
    pub addresses: Vec<IpAddr>,
    /// The endpoint's `hostname` (the pod's hostname when its subdomain
    /// names the service).
    pub hostname: Option<Box<str>>,
    /// `conditions.ready`, unset counting as ready.
    pub ready: bool,
}

#[derive(Debug, Default)]
struct Namespace {
    /// A Namespace object exists.
    exists: bool,
    services: HashMap<Box<str>, ServiceRecord>,
    /// Slices by owning service, then by slice name.
    slices: HashMap<Box<str>, HashMap<Box<str>, SliceRecord>>,
    /// Which service each slice belongs to, for moves and deletes.
    slice_owner: HashMap<Box<str>, Box<str>>,
    /// Pod addresses by pod name (verified pod records).
    pods: HashMap<Box<str>, Vec<IpAddr>>,
    /// How many of the namespace's pods have each address.
    pod_ips: HashMap<IpAddr, u32>,
}

impl Namespace {
    fn is_empty(&self) -> bool {
        !self.exists && self.services.is_empty() && self.slices.is_empty() && self.pods.is_empty()
    }
}

/// A PTR target before it is spelt as a name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PtrTarget {
    Service {
        namespace: Box<str>,
        service: Box<str>,
    },
    Endpoint {
        namespace: Box<str>,
        service: Box<str>,
        /// The endpoint's label: its hostname or dashed address.
        endpoint: Box<str>,
    },
}

/// (namespace, service).
type ServiceKey = (Box<str>, Box<str>);
/// (namespace, service, slice).
type SliceKey = (Box<str>, Box<str>, Box<str>);

/// Every record of the cluster zone.
#[derive(Debug, Default)]
pub struct Index {
    namespaces: HashMap<Box<str>, Namespace>,
    /// Cluster IP → the services holding it.
    cluster_ips: HashMap<IpAddr, Vec<ServiceKey>>,
    /// Endpoint address → (namespace, service, slice) holding it.
    endpoint_ips: HashMap<IpAddr, Vec<SliceKey>>,
    /// Unix seconds of the last change, the SOA serial.
    serial: u32,
}

fn now_serial() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u32)
}

fn remove_from<K: std::hash::Hash + Eq, V: PartialEq>(map: &mut HashMap<K, Vec<V>>, key: K, v: &V) {
    if let Some(list) = map.get_mut(&key) {
        list.retain(|x| x != v);
        if list.is_empty() {
            map.remove(&key);
        }
    }
}

impl ServiceRecord {
    fn cluster_ips(&self) -> &[IpAddr] {
        match &self.kind {
            ServiceKind::ClusterIp(ips) => ips,
            _ => &[],
        }
    }
}

impl EndpointRecord {
    /// The label the endpoint's own name starts with.
    pub fn label(&self, address: IpAddr) -> String {
        match &self.hostname {
            Some(h) => h.to_string(),
            None => crate::names::dash(address),
        }
    }
}

impl Index {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn serial(&self) -> u32 {
        self.serial
    }

    fn touch(&mut self) {
        self.serial = now_serial().max(self.serial);
    }

    fn ns_mut(&mut self, ns: &str) -> &mut Namespace {
        if !self.namespaces.contains_key(ns) {
            self.namespaces.insert(ns.into(), Namespace::default());
        }
        // Inserted just above when missing.
        self.namespaces
            .get_mut(ns)
            .unwrap_or_else(|| unreachable!("namespace entry exists"))
    }

    fn gc_ns(&mut self, ns: &str) {
        if self.namespaces.get(ns).is_some_and(Namespace::is_empty) {
            self.namespaces.remove(ns);
        }
    }

    // --- Namespaces ---

    pub fn upsert_namespace(&mut self, name: &str) {
        let entry = self.ns_mut(name);
        if !entry.exists {
            entry.exists = true;
            self.touch();
        }
    }

    pub fn remove_namespace(&mut self, name: &str) {
        if let Some(entry) = self.namespaces.get_mut(name) {
            entry.exists = false;
            self.touch();
        }
        self.gc_ns(name);
    }

    pub fn namespace_names(&self) -> Vec<String> {
        self.namespaces
            .iter()
            .filter(|(_, n)| n.exists)
            .map(|(k, _)| k.to_string())
            .collect()
    }

    pub fn namespace_exists(&self, name: &str) -> bool {
        self.namespaces.get(name).is_some_and(|n| n.exists)
    }

    // --- Services ---

    pub fn upsert_service(&mut self, ns: &str, name: &str, record: ServiceRecord) {
        let services = &mut self.ns_mut(ns).services;
        // A resync or an unrelated field's change: nothing to redo.
        if services.get(name) == Some(&record) {
            return;
        }
        let key = (Box::<str>::from(ns), Box::<str>::from(name));
        // The old addresses go first: an address kept by the update is
        // then added back.
        if let Some(old) = services.insert(name.into(), record) {
            for ip in old.cluster_ips() {
                remove_from(&mut self.cluster_ips, *ip, &key);
            }
        }
        if let Some(new) = self.namespaces.get(ns).and_then(|n| n.services.get(name)) {
            for ip in new.cluster_ips() {
                self.cluster_ips.entry(*ip).or_default().push(key.clone());
            }
        }
        self.touch();
    }

    pub fn remove_service(&mut self, ns: &str, name: &str) {
        let Some(old) = self
            .namespaces
            .get_mut(ns)
            .and_then(|n| n.services.remove(name))
        else {
            return;
        };
        let key = (Box::<str>::from(ns), Box::<str>::from(name));
        for ip in old.cluster_ips() {
            remove_from(&mut self.cluster_ips, *ip, &key);
        }
        self.touch();
        self.gc_ns(ns);
    }

    pub fn service_names(&self) -> Vec<(String, String)> {
        self.namespaces
            .iter()
            .flat_map(|(ns, n)| n.services.keys().map(|s| (ns.to_string(), s.to_string())))
            .collect()
    }

    pub fn service(&self, ns: &str, name: &str) -> Option<&ServiceRecord> {
        self.namespaces.get(ns)?.services.get(name)
    }

    // --- EndpointSlices ---

    /// A slice, owned by `service` (its `kubernetes.io/service-name`
    /// label); a slice without that label belongs to nothing and is
    /// removed.
    pub fn upsert_slice(
        &mut self,
        ns: &str,
        slice: &str,
        service: Option<&str>,
        record: SliceRecord,
    ) {
        let Some(service) = service else {
            self.remove_slice(ns, slice);
            return;
        };
        let entry = self.ns_mut(ns);
        let before = entry.slice_owner.get(slice).cloned();
        if before.as_deref() == Some(service)
            && entry.slices.get(service).and_then(|s| s.get(slice)) == Some(&record)
        {
            return;
        }
        if before.is_some() {
            self.remove_slice(ns, slice);
        }
        for ep in &record.endpoints {
            for ip in &ep.addresses {
                self.endpoint_ips.entry(*ip).or_default().push((
                    ns.into(),
                    service.into(),
                    slice.into(),
                ));
            }
        }
        let entry = self.ns_mut(ns);
        entry.slice_owner.insert(slice.into(), service.into());
        entry
            .slices
            .entry(service.into())
            .or_default()
            .insert(slice.into(), record);
        self.touch();
    }

    pub fn remove_slice(&mut self, ns: &str, slice: &str) {
        let Some(entry) = self.namespaces.get_mut(ns) else {
            return;
        };
        let Some(service) = entry.slice_owner.remove(slice) else {
            return;
        };
        let Some(by_name) = entry.slices.get_mut(&service) else {
            return;
        };
        let old = by_name.remove(slice);
        if by_name.is_empty() {
            entry.slices.remove(&service);
        }
        if let Some(old) = old {
            let key = (
                Box::<str>::from(ns),
                service.clone(),
                Box::<str>::from(slice),
            );
            for ep in &old.endpoints {
                for ip in &ep.addresses {
                    remove_from(&mut self.endpoint_ips, *ip, &key);
                }
            }
        }
        self.touch();
        self.gc_ns(ns);
    }

    pub fn slice_names(&self) -> Vec<(String, String)> {
        self.namespaces
            .iter()
            .flat_map(|(ns, n)| {
                n.slice_owner
                    .keys()
                    .map(|s| (ns.to_string(), s.to_string()))
            })
            .collect()
    }

    /// The slices of a service, in no particular order.
    pub fn slices(&self, ns: &str, service: &str) -> impl Iterator<Item = &SliceRecord> {
        self.namespaces
            .get(ns)
            .and_then(|n| n.slices.get(service))
            .into_iter()
            .flat_map(|m| m.values())
    }

    // --- Pods ---

    pub fn upsert_pod(&mut self, ns: &str, name: &str, ips: Vec<IpAddr>) {
        let entry = self.ns_mut(ns);
        if entry.pods.get(name) == Some(&ips) {
            return;
        }
        if let Some(old) = entry.pods.remove(name) {
            release_pod_ips(&mut entry.pod_ips, &old);
        }
        if ips.is_empty() {
            self.gc_ns(ns);
            return;
        }
        for ip in &ips {
            *entry.pod_ips.entry(*ip).or_default() += 1;
        }
        entry.pods.insert(name.into(), ips);
    }

    pub fn remove_pod(&mut self, ns: &str, name: &str) {
        if let Some(entry) = self.namespaces.get_mut(ns)
            && let Some(old) = entry.pods.remove(name)
        {
            release_pod_ips(&mut entry.pod_ips, &old);
        }
        self.gc_ns(ns);
    }

    pub fn pod_names(&self) -> Vec<(String, String)> {
        self.namespaces
            .iter()
            .flat_map(|(ns, n)| n.pods.keys().map(|p| (ns.to_string(), p.to_string())))
            .collect()
    }

    /// A pod in `ns` has address `ip`.
    pub fn pod_has_ip(&self, ns: &str, ip: IpAddr) -> bool {
        self.namespaces
            .get(ns)
            .is_some_and(|n| n.pod_ips.contains_key(&ip))
    }

    // --- Reverse ---

    /// What `ip` is the address of: the first service holding it as a
    /// cluster IP, else every endpoint with it (one per distinct name).
    pub fn ptr(&self, ip: IpAddr, exposed: impl Fn(&str) -> bool) -> Vec<PtrTarget> {
        if let Some((ns, svc)) = self
            .cluster_ips
            .get(&ip)
            .and_then(|l| l.iter().find(|(ns, _)| exposed(ns)))
        {
            return vec![PtrTarget::Service {
                namespace: ns.clone(),
                service: svc.clone(),
            }];
        }
        let mut out: Vec<PtrTarget> = Vec::new();
        for (ns, svc, slice) in self.endpoint_ips.get(&ip).into_iter().flatten() {
            if !exposed(ns) {
                continue;
            }
            let Some(record) = self
                .namespaces
                .get(ns)
                .and_then(|n| n.slices.get(svc))
                .and_then(|s| s.get(slice))
            else {
                continue;
            };
            for ep in record
                .endpoints
                .iter()
                .filter(|e| e.addresses.contains(&ip))
            {
                let target = PtrTarget::Endpoint {
                    namespace: ns.clone(),
                    service: svc.clone(),
                    endpoint: ep.label(ip).into(),
                };
                if !out.contains(&target) {
                    out.push(target);
                }
            }
        }
        out
    }

    /// Counts for logs and tests: (namespaces, services, slices, pods).
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let mut c = (0, 0, 0, 0);
        for n in self.namespaces.values() {
            c.0 += usize::from(n.exists);
            c.1 += n.services.len();
            c.2 += n.slice_owner.len();
            c.3 += n.pods.len();
        }
        c
    }
}

fn release_pod_ips(counts: &mut HashMap<IpAddr, u32>, ips: &[IpAddr]) {
    let unique: HashSet<&IpAddr> = ips.iter().collect();
    for ip in unique {
        if let Some(c) = counts.get_mut(ip) {
            *c = c.saturating_sub(1);
            if *c == 0 {
                counts.remove(ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn svc(ips: &[&str]) -> ServiceRecord {
        ServiceRecord {
            kind: ServiceKind::ClusterIp(ips.iter().map(|s| ip(s)).collect()),
            ports: vec![],
            publish_not_ready: false,
        }
    }

    fn slice(addrs: &[&str]) -> SliceRecord {
        SliceRecord {
            ports: vec![],
            endpoints: addrs
                .iter()
                .map(|a| EndpointRecord {
                    addresses: vec![ip(a)],
                    hostname: None,
                    ready: true,
                })
                .collect(),
        }
    }

    #[test]
    fn cluster_ip_reverse_follows_updates() {
        let mut index = Index::new();
        index.upsert_service("default", "web", svc(&["10.96.0.10"]));
        assert_eq!(index.ptr(ip("10.96.0.10"), |_| true).len(), 1);
        index.upsert_service("default", "web", svc(&["10.96.0.11"]));
        assert!(index.ptr(ip("10.96.0.10"), |_| true).is_empty());
        // A change that keeps the address keeps its reverse entry.
        let mut ported = svc(&["10.96.0.11"]);
        ported.publish_not_ready = true;
        index.upsert_service("default", "web", ported);
        assert_eq!(index.ptr(ip("10.96.0.11"), |_| true).len(), 1);
        assert!(index.ptr(ip("10.96.0.11"), |ns| ns != "default").is_empty());
        index.remove_service("default", "web");
        assert!(index.ptr(ip("10.96.0.11"), |_| true).is_empty());
        assert_eq!(index.counts(), (0, 0, 0, 0));
    }

    #[test]
    fn slices_move_between_services_and_leave_no_trace() {
        let mut index = Index::new();
        index.upsert_slice("ns", "s1", Some("a"), slice(&["10.0.0.1", "10.0.0.2"]));
        assert_eq!(index.slices("ns", "a").count(), 1);
        index.upsert_slice("ns", "s1", Some("b"), slice(&["10.0.0.1"]));
        assert_eq!(index.slices("ns", "a").count(), 0);
        assert_eq!(index.slices("ns", "b").count(), 1);
        assert!(index.ptr(ip("10.0.0.2"), |_| true).is_empty());
        assert_eq!(
            index.ptr(ip("10.0.0.1"), |_| true),
            vec![PtrTarget::Endpoint {
                namespace: "ns".into(),
                service: "b".into(),
                endpoint: "10-0-0-1".into()
            }]
        );
        index.upsert_slice("ns", "s1", None, slice(&["10.0.0.1"]));
        assert!(index.ptr(ip("10.0.0.1"), |_| true).is_empty());
        assert_eq!(index.counts(), (0, 0, 0, 0));
    }

    #[test]
    fn pod_addresses_are_counted_per_namespace() {
        let mut index = Index::new();
        index.upsert_pod("ns", "p1", vec![ip("10.0.0.5")]);
        index.upsert_pod("ns", "p2", vec![ip("10.0.0.5")]);
        index.remove_pod("ns", "p1");
        assert!(index.pod_has_ip("ns", ip("10.0.0.5")));
        assert!(!index.pod_has_ip("other", ip("10.0.0.5")));
        index.upsert_pod("ns", "p2", vec![ip("10.0.0.6")]);
        assert!(!index.pod_has_ip("ns", ip("10.0.0.5")));
        index.remove_pod("ns", "p2");
        assert_eq!(index.counts(), (0, 0, 0, 0));
    }

    #[test]
    fn namespaces_outlive_their_objects_only_while_they_exist() {
        let mut index = Index::new();
        index.upsert_namespace("ns");
        index.upsert_service("ns", "web", svc(&[]));
        index.remove_namespace("ns");
        assert!(!index.namespace_exists("ns"));
        assert!(index.service("ns", "web").is_some());
        index.remove_service("ns", "web");
        assert_eq!(index.counts(), (0, 0, 0, 0));
    }
}
