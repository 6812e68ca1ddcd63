//! L2 announcement of LoadBalancer IPs (MetalLB's L2 mode, Cilium's L2
//! announcements): for each LoadBalancer IP one node answers ARP (IPv4) and
//! NDP (IPv6) for it on its `--devices`, so a client on the same link with
//! only an on-link route for the pool sends its traffic to that node, where
//! the TC program translates it like any LoadBalancer traffic.
//!
//! Which node: per Service, the holder of the coordination.k8s.io Lease
//! `ferry-l2.<namespace>.<name>` in `--l2-lease-namespace` ([`lease`]).
//! Only nodes that may serve the Service's external traffic compete: the
//! proxy loop hands the [`Announcer`] each changed Service's LoadBalancer
//! IPs that have external backends here ([`eligible_ips`]); with
//! `externalTrafficPolicy: Local` those are local endpoints, so only nodes
//! with one hold the Lease. A node that stops being eligible gives the Lease
//! up at once; one whose agent stops renewing is replaced when the Lease
//! expires, and the new holder's gratuitous ARP / unsolicited Neighbor
//! Advertisement moves the clients ([`responder`], built from [`frame`]).
//!
//! It owns those Leases (labelled `app.kubernetes.io/managed-by:
//! ferry-agent`) and its packet sockets on the devices. It must not touch
//! the node's addresses, routes, neighbour tables or sysctls, the BPF maps,
//! or any other Lease.

pub mod frame;
pub mod lease;
pub mod responder;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use ferry_daemon::logging::LogLimit;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;
use crate::service::model::{FrontendKind, ServicePortEntries};
use crate::service::programmer::ServiceName;
pub use lease::Timings;
use lease::{Elector, Outcome};
use responder::{Responder, ResponderError};

/// The longest Lease name (a DNS subdomain).
const NAME_MAX: usize = 253;

/// What the announcer needs besides the API and the devices.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the Leases live.
    pub namespace: String,
    /// This node's name: the holder identity.
    pub identity: String,
    pub timings: Timings,
}

/// The Lease of Service `key`: `ferry-l2.<namespace>.<name>`. Neither part
/// can hold a dot (both are DNS labels), so no two Services share a name;
/// a name too long for a Lease (only from names the API would refuse) is
/// cut and given a hash of the whole.
pub fn lease_name(key: &ServiceName) -> String {
    let name = format!("ferry-l2.{}.{}", key.0, key.1);
    if name.len() <= NAME_MAX {
        return name;
    }
    // FNV-1a: stable across builds and platforms.
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut cut = NAME_MAX - 17;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}.{hash:016x}", name[..cut].trim_end_matches(['.', '-']))
}

/// The LoadBalancer IPs of a Service this node may announce: those with a
/// backend of their family for external traffic here (after
/// `externalTrafficPolicy`). Sorted, without duplicates.
pub fn eligible_ips(entries: &[ServicePortEntries]) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = entries
        .iter()
        .flat_map(|e| {
            e.frontends
                .iter()
                .filter(|f| f.kind == FrontendKind::LoadBalancer)
                .filter(|f| {
                    e.external_backends
                        .iter()
                        .any(|b| b.addr.is_ipv4() == f.addr.is_ipv4())
                })
                .map(|f| f.addr)
        })
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// Which IPs this node holds (answers for), shared by the elections that
/// take and drop them and the responders that answer.
#[derive(Debug)]
pub struct Held {
    ips: RwLock<HashMap<IpAddr, Claim>>,
    /// Bumped whenever an IP is to be announced (again).
    rounds: AtomicU64,
    changed: watch::Sender<()>,
    metrics: Arc<Metrics>,
}

#[derive(Debug, Clone)]
struct Claim {
    service: ServiceName,
    round: u64,
}

impl Held {
    fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            ips: RwLock::default(),
            rounds: AtomicU64::new(0),
            changed: watch::Sender::new(()),
            metrics,
        }
    }

    /// Whether this node answers for `ip`: one hash lookup.
    pub fn holds(&self, ip: IpAddr) -> bool {
        self.ips
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&ip)
    }

    fn subscribe(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }

    /// Each held IP with its announcement round.
    fn rounds(&self) -> HashMap<IpAddr, u64> {
        self.ips
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(ip, c)| (*ip, c.round))
            .collect()
    }

    fn next_round(&self) -> u64 {
        self.rounds.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn edit(&self, f: impl FnOnce(&mut HashMap<IpAddr, Claim>) -> bool) {
        let mut ips = self.ips.write().unwrap_or_else(PoisonError::into_inner);
        let changed = f(&mut ips);
        self.metrics
            .l2_held
            .set(i64::try_from(ips.len()).unwrap_or(i64::MAX));
        drop(ips);
        if changed {
            self.changed.send_replace(());
        }
    }

    /// `service` holds exactly `want`: new IPs are announced.
    fn set(&self, service: &ServiceName, want: &[IpAddr]) {
        self.edit(|ips| {
            let before = ips.len();
            ips.retain(|ip, c| c.service != *service || want.contains(ip));
            let mut changed = ips.len() != before;
            for ip in want {
                if ips.get(ip).is_none_or(|c| c.service != *service) {
                    let round = self.next_round();
                    ips.insert(
                        *ip,
                        Claim {
                            service: service.clone(),
                            round,
                        },
                    );
                    changed = true;
                }
            }
            changed
        });
    }

    /// Announces `service`'s IPs once more.
    fn reannounce(&self, service: &ServiceName) {
        self.edit(|ips| {
            let mut changed = false;
            for c in ips.values_mut().filter(|c| c.service == *service) {
                c.round = self.next_round();
                changed = true;
            }
            changed
        });
    }

    /// Stops answering for `service`'s IPs.
    fn clear(&self, service: &ServiceName) {
        self.edit(|ips| {
            let before = ips.len();
            ips.retain(|_, c| c.service != *service);
            ips.len() != before
        });
    }

    fn clear_all(&self) {
        self.edit(|ips| {
            let changed = !ips.is_empty();
            ips.clear();
            changed
        });
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    #[error(transparent)]
    Device(#[from] ResponderError),
    #[error("L2 lease timings: {0}")]
    Timings(String),
}

/// The handle the proxy loop (and `main`, at shutdown) holds. Cheap to
/// clone; a disabled one does nothing.
#[derive(Debug, Clone, Default)]
pub struct Announcer {
    inner: Option<Arc<Inner>>,
}

#[derive(Debug)]
struct Inner {
    api: Api<Lease>,
    settings: Settings,
    held: Arc<Held>,
    elections: Mutex<Elections>,
    closed: AtomicBool,
}

#[derive(Debug, Default)]
struct Elections {
    running: HashMap<ServiceName, Running>,
    /// Elections ending (giving their Lease up); a new one for the same
    /// Service waits for its predecessor, so the two never overlap.
    ending: HashMap<ServiceName, JoinHandle<()>>,
}

#[derive(Debug)]
struct Running {
    /// The IPs the election announces while it holds the Lease; dropping
    /// it ends the election.
    want: watch::Sender<Vec<IpAddr>>,
    task: JoinHandle<()>,
}

impl Announcer {
    /// Announces nothing (`--l2-announce=false`, or no devices).
    pub fn disabled() -> Self {
        Self::default()
    }

    /// Opens the responders on `devices` and returns the handle elections
    /// start from. Needs a Tokio runtime.
    pub fn start(
        client: Client,
        settings: Settings,
        devices: &[String],
        metrics: Arc<Metrics>,
    ) -> Result<Self, AnnounceError> {
        settings
            .timings
            .validate()
            .map_err(AnnounceError::Timings)?;
        let held = Arc::new(Held::new(metrics.clone()));
        let responders = devices
            .iter()
            .map(|d| responder::find_device(d).and_then(Responder::open))
            .collect::<Result<Vec<_>, _>>()?;
        for r in responders {
            tokio::spawn(r.run(held.clone(), metrics.clone()));
        }
        Ok(Self {
            inner: Some(Arc::new(Inner {
                api: Api::namespaced(client, &settings.namespace),
                settings,
                held,
                elections: Mutex::default(),
                closed: AtomicBool::new(false),
            })),
        })
    }

    /// Whether this node answers for `ip` now.
    pub fn holds(&self, ip: IpAddr) -> bool {
        self.inner.as_ref().is_some_and(|i| i.held.holds(ip))
    }

    /// Service `key` wants `ips` announced from this node (those it may
    /// serve, [`eligible_ips`]; empty: none, or the Service is gone). Never
    /// blocks: elections run on their own tasks.
    pub fn update(&self, key: &ServiceName, ips: Vec<IpAddr>) {
        let Some(inner) = &self.inner else { return };
        if inner.closed.load(Ordering::Relaxed) {
            return;
        }
        let mut elections = inner.lock();
        elections.ending.retain(|_, task| !task.is_finished());
        if ips.is_empty() {
            if let Some(run) = elections.running.remove(key) {
                // Dropping `want` ends it: it gives the Lease up.
                elections.ending.insert(key.clone(), run.task);
            }
            return;
        }
        if let Some(run) = elections.running.get(key)
            && !run.task.is_finished()
        {
            run.want.send_if_modified(|v| {
                let changed = *v != ips;
                *v = ips;
                changed
            });
            return;
        }
        let before = elections.ending.remove(key);
        let (want, rx) = watch::channel(ips);
        let task = tokio::spawn(elect(inner.clone(), key.clone(), rx, before));
        elections
            .running
            .insert(key.clone(), Running { want, task });
    }

    /// Stops answering and gives up every Lease held, waiting at most
    /// `within` for the API (a clean shutdown: the other nodes take over at
    /// their next attempt instead of waiting for expiry).
    pub async fn release_all(&self, within: Duration) {
        let Some(inner) = &self.inner else { return };
        inner.closed.store(true, Ordering::Relaxed);
        inner.held.clear_all();
        let tasks: Vec<JoinHandle<()>> = {
            let mut elections = inner.lock();
            let running = std::mem::take(&mut elections.running);
            let mut tasks: Vec<_> = running.into_values().map(|r| r.task).collect();
            tasks.extend(elections.ending.drain().map(|(_, t)| t));
            tasks
        };
        if tokio::time::timeout(within, futures_util::future::join_all(tasks))
            .await
            .is_err()
        {
            tracing::warn!(
                "not every L2 lease was released in time; others take over when they expire"
            );
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Elections> {
        self.elections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// One Service's election: takes and renews its Lease while `want` is
/// open, answering for the wanted IPs while it holds it; gives the Lease
/// up when `want` closes.
async fn elect(
    inner: Arc<Inner>,
    key: ServiceName,
    mut want: watch::Receiver<Vec<IpAddr>>,
    before: Option<JoinHandle<()>>,
) {
    if let Some(before) = before {
        let _ = before.await;
    }
    let timings = inner.settings.timings;
    let held = &inner.held;
    let mut elector = Elector::new(
        inner.api.clone(),
        lease_name(&key),
        inner.settings.identity.clone(),
        timings,
    );
    let mut holding = false;
    let mut renewed = Instant::now();
    // Announce once more at the renewal after taking over, in case the
    // first announcement was lost.
    let mut again = false;
    let mut errors = LogLimit::new(Duration::from_secs(30));
    loop {
        let ips = want.borrow_and_update().clone();
        // A holder's attempt must end by its deadline.
        let limit = if holding {
            timings
                .renew_deadline
                .saturating_sub(renewed.elapsed())
                .max(Duration::from_millis(50))
        } else {
            timings.renew_deadline
        };
        match tokio::time::timeout(limit, elector.try_acquire_or_renew()).await {
            Ok(Ok(Outcome::Held)) => {
                renewed = Instant::now();
                if !holding {
                    holding = true;
                    again = true;
                    tracing::info!(namespace = %key.0, service = %key.1, lease = elector.lease_name(), ips = ?ips, "holding the L2 lease; answering ARP/NDP");
                } else if std::mem::take(&mut again) {
                    held.reannounce(&key);
                }
                held.set(&key, &ips);
            }
            Ok(Ok(Outcome::HeldBy(holder))) => {
                if holding {
                    holding = false;
                    held.clear(&key);
                    tracing::warn!(namespace = %key.0, service = %key.1, %holder, "L2 lease taken by another node; stopped answering");
                }
            }
            Ok(Ok(Outcome::Contended)) => {}
            Ok(Err(e)) => {
                if let Some(left_out) = errors.due(Instant::now()) {
                    tracing::warn!(namespace = %key.0, service = %key.1, error = %e, left_out, "L2 lease attempt failed");
                }
            }
            Err(_) => {
                if let Some(left_out) = errors.due(Instant::now()) {
                    tracing::warn!(namespace = %key.0, service = %key.1, left_out, "L2 lease attempt timed out");
                }
            }
        }
        if holding && renewed.elapsed() >= timings.renew_deadline {
            holding = false;
            held.clear(&key);
            tracing::warn!(namespace = %key.0, service = %key.1, "L2 lease not renewed within the deadline; stopped answering");
        }
        tokio::select! {
            () = tokio::time::sleep(timings.retry_period) => {}
            r = want.changed() => {
                if r.is_err() {
                    break;
                }
            }
        }
    }
    held.clear(&key);
    if holding {
        match tokio::time::timeout(timings.renew_deadline, elector.release()).await {
            Ok(Ok(true)) => {
                tracing::info!(namespace = %key.0, service = %key.1, "released the L2 lease")
            }
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                tracing::warn!(namespace = %key.0, service = %key.1, error = %e, "releasing the L2 lease; it expires by itself")
            }
            Err(_) => {
                tracing::warn!(namespace = %key.0, service = %key.1, "releasing the L2 lease timed out; it expires by itself")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use serde_json::json;

    const NODE: &str = "node-a";

    /// `default/web`, a dual-stack LoadBalancer with an externalIP, one
    /// LB IP per family and `policy`, as the model reads it for node-a with
    /// endpoints `(address, node)`.
    fn entries(policy: &str, endpoints: &[(&str, &str)]) -> Vec<ServicePortEntries> {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"namespace": "default", "name": "web"},
            "spec": {
                "type": "LoadBalancer",
                "clusterIPs": ["10.96.0.10", "fd00:10:96::10"],
                "externalIPs": ["192.0.2.7"],
                "externalTrafficPolicy": policy,
                "ports": [
                    {"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080},
                    {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053},
                ],
            },
            "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.7"}, {"ip": "2001:db8::7"}]}},
        }))
        .expect("service");
        let slices: Vec<EndpointSlice> = ["IPv4", "IPv6"]
            .iter()
            .map(|family| {
                let eps: Vec<_> = endpoints
                    .iter()
                    .filter(|(a, _)| a.contains(':') == (*family == "IPv6"))
                    .map(|(a, node)| json!({"addresses": [a], "nodeName": node, "conditions": {"ready": true}}))
                    .collect();
                serde_json::from_value(json!({
                    "metadata": {"namespace": "default", "name": format!("web-{family}"),
                                 "labels": {"kubernetes.io/service-name": "web"}},
                    "addressType": family,
                    "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                              {"name": "dns", "port": 5353, "protocol": "UDP"}],
                    "endpoints": eps,
                }))
                .expect("slice")
            })
            .collect();
        let refs: Vec<&EndpointSlice> = slices.iter().collect();
        crate::service::model::service_entries(&svc, &refs, NODE).expect("entries")
    }

    #[test]
    fn only_load_balancer_ips_with_backends_of_their_family() {
        let ip = |s: &str| -> IpAddr { s.parse().expect("ip") };
        let both = [("10.244.0.5", NODE), ("fd00:10:244::5", NODE)];
        // Each LB IP once over both ports; not the externalIP, cluster IPs
        // or node ports.
        assert_eq!(
            eligible_ips(&entries("Cluster", &both)),
            vec![ip("198.51.100.7"), ip("2001:db8::7")]
        );
        // An IPv4 endpoint only: the IPv6 LB IP has nothing to go to.
        assert_eq!(
            eligible_ips(&entries("Cluster", &[("10.244.1.5", "node-b")])),
            vec![ip("198.51.100.7")]
        );
        // Local: only a node with a local endpoint may announce.
        assert!(eligible_ips(&entries("Local", &[("10.244.1.5", "node-b")])).is_empty());
        assert_eq!(
            eligible_ips(&entries(
                "Local",
                &[("10.244.1.5", "node-b"), ("10.244.0.5", NODE)]
            )),
            vec![ip("198.51.100.7")]
        );
        assert!(eligible_ips(&entries("Cluster", &[])).is_empty());
    }

    #[test]
    fn lease_names_are_distinct_and_valid() {
        let k = |ns: &str, n: &str| (ns.to_owned(), n.to_owned());
        assert_eq!(lease_name(&k("default", "web")), "ferry-l2.default.web");
        // With dashes, "a-b"/"c" and "a"/"b-c" would collide.
        assert_ne!(lease_name(&k("a-b", "c")), lease_name(&k("a", "b-c")));
        let long = "x".repeat(300);
        let name = lease_name(&k("default", &long));
        assert_eq!(name.len(), NAME_MAX);
        assert_eq!(name, lease_name(&k("default", &long)), "deterministic");
        assert_ne!(name, lease_name(&k("default", &format!("{long}y"))));
    }

    #[test]
    fn held_ips_follow_their_service_and_are_announced_once_per_round() {
        let held = Held::new(Arc::new(Metrics::new()));
        let (a, b) = (
            ("default".to_owned(), "a".to_owned()),
            ("default".to_owned(), "b".to_owned()),
        );
        let ip = |s: &str| -> IpAddr { s.parse().expect("ip") };
        let mut rx = held.subscribe();
        held.set(&a, &[ip("198.51.100.1"), ip("2001:db8::1")]);
        held.set(&b, &[ip("198.51.100.2")]);
        assert!(rx.has_changed().expect("open"));
        rx.mark_unchanged();
        assert!(held.holds(ip("198.51.100.1")) && held.holds(ip("2001:db8::1")));
        let rounds = held.rounds();
        // The same set again changes nothing: no new announcement.
        held.set(&a, &[ip("198.51.100.1"), ip("2001:db8::1")]);
        assert!(!rx.has_changed().expect("open"));
        assert_eq!(held.rounds(), rounds);
        // Asked again: a new round for a's IPs only.
        held.reannounce(&a);
        let again = held.rounds();
        assert_ne!(again[&ip("198.51.100.1")], rounds[&ip("198.51.100.1")]);
        assert_eq!(again[&ip("198.51.100.2")], rounds[&ip("198.51.100.2")]);
        // An IP dropped from a's set goes; b's stay.
        held.set(&a, &[ip("198.51.100.1")]);
        assert!(!held.holds(ip("2001:db8::1")));
        held.clear(&a);
        assert!(!held.holds(ip("198.51.100.1")) && held.holds(ip("198.51.100.2")));
        held.clear_all();
        assert!(held.rounds().is_empty());
    }
}
