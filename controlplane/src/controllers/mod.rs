//! The controllers that run inside ferry-apiserver, each on a thread of its
//! own, fed by the store's event history the same way a watch is. Each can be
//! turned off with `--controllers` (kube-controller-manager's syntax:
//! `*,-nodeipam`).

pub mod aggregation;
pub mod claim;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub(crate) mod events;
pub mod gc;
pub mod history;
pub mod ipam;
pub mod namespace;
pub mod nodelifecycle;
pub(crate) mod owned;
pub(crate) mod pod_owners;
pub mod podgc;
pub(crate) mod queue;
pub mod replicaset;
pub mod scheduler;
pub mod serviceaccounts;
pub mod statefulset;
pub(crate) mod status;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::time::{Duration, Instant};

use serde_json::Value;
use thiserror::Error;

use crate::error::ApiError;
use crate::registry::{DeleteOptions, Registry, WriteOptions};
use crate::resources::{RESOURCES, Resource};
use crate::store::{Entry, Event, EventType};

pub(crate) use events::{record_event, record_keyed_event, warn_event};

/// One committed change as controllers see it. The object is parsed on
/// first use, in full or (cheaper) just its metadata, since most controllers
/// look at few of the events they are fed and at little of each.
#[derive(Debug)]
pub struct Change {
    pub resource: &'static Resource,
    pub namespace: String,
    pub kind: EventType,
    event: Arc<Event>,
    object: OnceLock<Value>,
    previous: OnceLock<Option<Value>>,
    meta: OnceLock<Value>,
    previous_meta: OnceLock<Option<Value>>,
}

/// An object with only its metadata parsed.
#[derive(serde::Deserialize)]
struct MetaOnly {
    #[serde(default)]
    metadata: Value,
}

fn parse(entry: &Entry) -> Value {
    entry.value().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "unreadable cached object");
        Value::Null
    })
}

fn parse_meta(entry: &Entry) -> Value {
    let meta = serde_json::from_slice::<MetaOnly>(&entry.json)
        .map(|m| m.metadata)
        .unwrap_or(Value::Null);
    serde_json::json!({ "metadata": meta })
}

impl Change {
    fn of(event: Arc<Event>) -> Self {
        Self {
            resource: event.resource,
            namespace: event.namespace.clone(),
            kind: event.kind,
            event,
            object: OnceLock::new(),
            previous: OnceLock::new(),
            meta: OnceLock::new(),
            previous_meta: OnceLock::new(),
        }
    }

    /// The new state (for a deletion, the last one).
    pub fn object(&self) -> &Value {
        self.object.get_or_init(|| parse(&self.event.object))
    }

    /// The state before the change.
    pub fn previous(&self) -> Option<&Value> {
        self.previous
            .get_or_init(|| self.event.previous.as_deref().map(parse))
            .as_ref()
    }

    /// `{"metadata": ...}` of the new state.
    pub fn object_meta(&self) -> &Value {
        self.meta.get_or_init(|| parse_meta(&self.event.object))
    }

    /// `{"metadata": ...}` of the state before.
    pub fn previous_meta(&self) -> Option<&Value> {
        self.previous_meta
            .get_or_init(|| self.event.previous.as_deref().map(parse_meta))
            .as_ref()
    }

    /// The changed object's key, (namespace, name).
    pub fn key(&self) -> (String, String) {
        (
            self.namespace.clone(),
            crate::object::name(self.object_meta()).to_string(),
        )
    }

    /// A label of the new state, without parsing it.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.event.object.attrs.label(key)
    }

    /// A selectable field of the new state (`status.phase` of a Pod),
    /// without parsing it.
    pub fn field(&self, name: &str) -> &str {
        self.event.object.attrs.field(name)
    }
}

/// A namespaced object's key, (namespace, name).
pub(crate) fn key_of(obj: &Value) -> (String, String) {
    (
        crate::object::namespace(obj).to_string(),
        crate::object::name(obj).to_string(),
    )
}

/// Events queued per controller before it is told to resync instead.
const QUEUE: usize = 50_000;

/// Every controller, by the name `--controllers` uses.
pub const ALL: &[&str] = &[
    "namespace",
    "garbagecollector",
    "endpointslice",
    "nodeipam",
    "lbipam",
    "podgc",
    "replicaset",
    "deployment",
    "daemonset",
    "statefulset",
    "scheduler",
    "nodelifecycle",
    "clusterrole-aggregation",
    "disruption",
    "serviceaccount",
    "root-ca-cert-publisher",
];

#[derive(Debug, Error, PartialEq, Eq)]
#[error("--controllers: unknown controller {0:?}; known: {known}", known = ALL.join(", "))]
pub struct UnknownController(pub String);

/// Parses `*`, `name`, `-name` lists into the enabled set.
pub fn parse_enabled(spec: &str) -> Result<BTreeSet<&'static str>, UnknownController> {
    let mut on = BTreeSet::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (enable, name) = match item.strip_prefix('-') {
            Some(n) => (false, n),
            None => (true, item),
        };
        if name == "*" {
            on.extend(ALL.iter().copied());
            continue;
        }
        let known = ALL
            .iter()
            .copied()
            .find(|k| *k == name)
            .ok_or_else(|| UnknownController(name.into()))?;
        if enable {
            on.insert(known);
        } else {
            on.remove(known);
        }
    }
    Ok(on)
}

/// A controller's logic; the runner feeds it events and calls reconcile.
pub trait Controller: Send {
    fn name(&self) -> &'static str;
    /// Whether events of `res` concern this controller.
    fn watches(&self, res: &Resource) -> bool;
    /// Rebuilds state from a full read (at start, and when events were lost).
    fn resync(&mut self, reg: &Registry);
    /// Takes note of one committed change.
    fn observe(&mut self, reg: &Registry, ev: &Change);
    /// Does the pending work.
    fn reconcile(&mut self, reg: &Registry);
    /// When the controller wants to run again without any event (timers).
    fn next_wakeup(&self) -> Option<Instant> {
        None
    }
}

/// What the event pump hands a controller.
enum Feed {
    /// Kept as the stored bytes while queued; parsed by the controller's own
    /// thread just before it looks at it, so a backlog costs little memory.
    Event(Arc<Event>),
    /// Events were lost (the history moved past the pump): rebuild.
    Resync,
}

/// A controller's queue, bounded at [`QUEUE`] feeds but holding memory only
/// for those queued: std's bounded channel allocates every slot up front,
/// which came to 12 MiB for an idle apiserver's sixteen controllers.
fn feed() -> (FeedSender, FeedReceiver) {
    let (tx, rx) = mpsc::channel();
    let queued = Arc::new(AtomicUsize::new(0));
    (
        FeedSender {
            tx,
            queued: queued.clone(),
        },
        FeedReceiver { rx, queued },
    )
}

/// The event pump's end of a controller's queue (the pump is its only
/// sender, so the count cannot pass the bound between check and add).
struct FeedSender {
    tx: mpsc::Sender<Feed>,
    queued: Arc<AtomicUsize>,
}

impl FeedSender {
    /// Queues `f`; false when the queue is full. A controller thread that is
    /// gone (it never returns while the process runs) takes nothing.
    fn try_send(&self, f: Feed) -> bool {
        if self.queued.load(Ordering::Acquire) >= QUEUE {
            return false;
        }
        self.queued.fetch_add(1, Ordering::AcqRel);
        if self.tx.send(f).is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
        }
        true
    }
}

struct FeedReceiver {
    rx: mpsc::Receiver<Feed>,
    queued: Arc<AtomicUsize>,
}

impl FeedReceiver {
    fn recv_timeout(&self, wait: Duration) -> Result<Feed, mpsc::RecvTimeoutError> {
        let f = self.rx.recv_timeout(wait)?;
        self.queued.fetch_sub(1, Ordering::AcqRel);
        Ok(f)
    }

    fn try_recv(&self) -> Option<Feed> {
        let f = self.rx.try_recv().ok()?;
        self.queued.fetch_sub(1, Ordering::AcqRel);
        Some(f)
    }
}

/// Runs `ctrl` on a thread of its own until the process ends, fed by `feed`.
fn run(
    reg: Arc<Registry>,
    mut ctrl: Box<dyn Controller>,
    feed: FeedReceiver,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(format!("ctrl-{}", ctrl.name()))
        .spawn(move || {
            let name = ctrl.name();
            // A panic in a controller is a bug; it must not end the thread
            // with the work undone. The step is abandoned, the state rebuilt
            // from a full read after a pause (1 s, doubling to a minute
            // while it keeps failing), and the loop goes on.
            let mut pause = Duration::from_secs(1);
            if !contained(name, || ctrl.resync(&reg)) {
                recover(name, &mut ctrl, &reg, &mut pause);
            }
            loop {
                if contained(name, || ctrl.reconcile(&reg)) {
                    pause = Duration::from_secs(1);
                } else {
                    recover(name, &mut ctrl, &reg, &mut pause);
                    continue;
                }
                let wait = ctrl
                    .next_wakeup()
                    .map(|t| t.saturating_duration_since(Instant::now()))
                    .unwrap_or(Duration::from_secs(300));
                let first = match feed.recv_timeout(wait) {
                    Ok(f) => Some(f),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                };
                // Take everything already queued before reconciling once.
                for f in first
                    .into_iter()
                    .chain(std::iter::from_fn(|| feed.try_recv()))
                {
                    let done = match f {
                        Feed::Event(ev) => contained(name, || ctrl.observe(&reg, &Change::of(ev))),
                        Feed::Resync => {
                            tracing::warn!(controller = name, "event history lost; resyncing");
                            contained(name, || ctrl.resync(&reg))
                        }
                    };
                    if !done {
                        recover(name, &mut ctrl, &reg, &mut pause);
                        break;
                    }
                }
            }
        })?;
    Ok(())
}

/// Runs one step of a controller, containing a panic: false when it
/// panicked (logged here; the panic hook has printed where).
fn contained(name: &'static str, step: impl FnOnce()) -> bool {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(step)) {
        Ok(()) => true,
        Err(_) => {
            tracing::error!(
                controller = name,
                "controller panicked (a bug); rebuilding its state from a full read"
            );
            false
        }
    }
}

/// After a panic: pauses (doubling up to a minute while it keeps failing),
/// then rebuilds the controller's state from a full read.
fn recover(
    name: &'static str,
    ctrl: &mut Box<dyn Controller>,
    reg: &Registry,
    pause: &mut Duration,
) {
    loop {
        std::thread::sleep(*pause);
        *pause = (*pause * 2).min(Duration::from_secs(60));
        if contained(name, || ctrl.resync(reg)) {
            return;
        }
    }
}

/// Starts the enabled controllers and the one thread that reads the event
/// history for all of them, handing each only the kinds it watches, so a
/// write wakes only the controllers it concerns.
pub fn start(
    reg: &Arc<Registry>,
    enabled: &BTreeSet<&'static str>,
    rt: &tokio::runtime::Handle,
    root_ca: Option<&str>,
) -> std::io::Result<()> {
    let mut changes = reg.store.subscribe();
    let mut last = reg.store.revision();
    let mut feeds: Vec<(Vec<&'static Resource>, FeedSender)> = Vec::new();
    for name in enabled {
        let ctrl: Box<dyn Controller> = match *name {
            "namespace" => Box::new(namespace::NamespaceController::default()),
            "garbagecollector" => Box::new(gc::GarbageCollector::default()),
            "endpointslice" => Box::new(endpoints::EndpointsController::default()),
            "nodeipam" => Box::new(ipam::NodeIpam::new(&reg.config)),
            "lbipam" => Box::new(ipam::LoadBalancerIpam::new(&reg.config)),
            "podgc" => Box::new(podgc::PodGc::default()),
            "replicaset" => Box::new(replicaset::ReplicaSetController::default()),
            "deployment" => Box::new(deployment::DeploymentController::default()),
            "daemonset" => Box::new(daemonset::DaemonSetController::default()),
            "statefulset" => Box::new(statefulset::StatefulSetController::default()),
            "scheduler" => Box::new(scheduler::Scheduler::default()),
            "nodelifecycle" => Box::new(nodelifecycle::NodeLifecycle::new(&reg.config)),
            "clusterrole-aggregation" => Box::new(aggregation::ClusterRoleAggregation::default()),
            "disruption" => Box::new(disruption::DisruptionController::default()),
            "serviceaccount" => Box::new(serviceaccounts::ServiceAccounts::default()),
            "root-ca-cert-publisher" => match root_ca {
                Some(ca) => Box::new(serviceaccounts::RootCaPublisher::new(ca.to_owned())),
                None => continue,
            },
            _ => continue,
        };
        tracing::info!(controller = name, "starting controller");
        let kinds = RESOURCES.iter().filter(|r| ctrl.watches(r)).collect();
        let (tx, rx) = feed();
        run(reg.clone(), ctrl, rx)?;
        feeds.push((kinds, tx));
    }
    let reg = reg.clone();
    let rt = rt.clone();
    std::thread::Builder::new()
        .name("ctrl-events".into())
        .spawn(move || {
            // Controllers whose queue was full: they get a resync (a full
            // read) as soon as there is room, instead of an unbounded queue.
            let mut lagging = vec![false; feeds.len()];
            loop {
                for (n, (_, tx)) in feeds.iter().enumerate() {
                    if lagging[n] && tx.try_send(Feed::Resync) {
                        lagging[n] = false;
                    }
                }
                if rt.block_on(changes.changed()).is_err() {
                    return;
                }
                match reg.store.events_after(last) {
                    Ok(events) => {
                        for ev in events {
                            last = ev.revision;
                            for (n, (kinds, tx)) in feeds.iter().enumerate() {
                                if kinds.contains(&ev.resource)
                                    && !lagging[n]
                                    && !tx.try_send(Feed::Event(ev.clone()))
                                {
                                    lagging[n] = true;
                                }
                            }
                        }
                    }
                    Err(_) => {
                        last = reg.store.revision();
                        lagging.iter_mut().for_each(|l| *l = true);
                    }
                }
            }
        })?;
    Ok(())
}

/// Controllers write as a system user: plain options.
pub(crate) fn write_opts() -> WriteOptions {
    WriteOptions {
        dry_run: false,
        field_manager: Some("ferry-controlplane".into()),
        force: false,
        guard: None,
    }
}

/// Logs a failed controller write; NotFound and Conflict are expected races
/// that the next event resolves.
pub(crate) fn log_failure(controller: &str, what: &str, err: &ApiError) {
    if matches!(err.code, 404 | 409) {
        tracing::debug!(controller, what, error = %err, "write raced; will retry on the next event");
    } else {
        tracing::warn!(controller, what, error = %err, "controller write failed");
    }
}

/// Deletes an object, ignoring "already gone".
pub(crate) fn delete(reg: &Registry, ctrl: &str, res: &'static Resource, ns: &str, name: &str) {
    if let Err(e) = reg.delete(res, ns, name, &DeleteOptions::default())
        && e.code != 404
    {
        log_failure(ctrl, name, &e);
    }
}

/// Every object of `res` (in `ns` when given).
pub(crate) fn list_all(reg: &Registry, res: &Resource, ns: Option<&str>) -> Vec<Arc<Value>> {
    reg.store.list(res, ns, |_| true).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The queue takes QUEUE feeds, then refuses until the controller takes
    /// one; a controller that is gone is not a full queue.
    #[test]
    fn a_feed_queue_is_bounded_and_frees_as_it_is_read() {
        let (tx, rx) = feed();
        for _ in 0..QUEUE {
            assert!(tx.try_send(Feed::Resync));
        }
        assert!(!tx.try_send(Feed::Resync));
        assert!(matches!(rx.try_recv(), Some(Feed::Resync)));
        assert!(tx.try_send(Feed::Resync));
        assert!(!tx.try_send(Feed::Resync));
        for _ in 0..QUEUE {
            assert!(rx.recv_timeout(Duration::from_millis(10)).is_ok());
        }
        assert!(rx.try_recv().is_none());
        assert_eq!(tx.queued.load(Ordering::Acquire), 0);
        drop(rx);
        for _ in 0..QUEUE + 1 {
            assert!(tx.try_send(Feed::Resync));
        }
    }

    #[test]
    fn enabled_sets() {
        assert_eq!(parse_enabled("*").expect("ok").len(), ALL.len());
        let s = parse_enabled("*,-nodeipam").expect("ok");
        assert!(!s.contains("nodeipam") && s.contains("lbipam"));
        assert_eq!(parse_enabled("namespace").expect("ok").len(), 1);
        assert!(parse_enabled("bogus").is_err());
    }
}
