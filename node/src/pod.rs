//! One pod's worker: a task that owns everything the pod has on this node
//! (sandbox, cgroups, processes, probes) and writes its status.
//!
//! The worker is level-triggered like the kubelet's `syncPod`: on every
//! update of the pod, container exit or tick it compares what runs with
//! what the spec asks and acts, then writes the status if it changed.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Service};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::Runtime;
use crate::cgroup;
use crate::env::{self, PodAddresses, References};
use crate::etc_files;
use crate::events::Type;
use crate::image_layer;
use crate::images::ImageError;
use crate::probe::{self, Change, Kind, ProbeState, Target};
use crate::process::{self, Launch};
use crate::sandbox::Sandbox;
use crate::status::{self, Summary, Transitions};
use crate::time;
use crate::volumes::{self, PodVolumes, SetUpContext};

/// What the supervisor tells a worker.
#[derive(Debug)]
pub enum PodMsg {
    /// The pod as the API has it now.
    Update(Box<Pod>),
    /// The pod is gone from the API (or no longer bound here): stop
    /// everything and clean up, without a final delete.
    Gone,
}

/// How often a worker looks at its pod without being woken.
const TICK: Duration = Duration::from_millis(500);
/// First restart back-off after the immediate first restart.
const BACKOFF_START: Duration = Duration::from_secs(10);
/// Longest restart back-off.
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A run at least this long resets the back-off.
const BACKOFF_RESET: Duration = Duration::from_secs(600);
/// Longest wait for killed processes to be reaped.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);
/// Time limit of one API request of a worker.
const API_TIMEOUT: Duration = Duration::from_secs(10);
/// Time limit of a postStart hook.
const POST_START_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Exit {
    container: String,
    run: u64,
    code: i32,
    signal: Option<i32>,
}

#[derive(Debug, Clone)]
enum CState {
    Waiting {
        reason: String,
        message: String,
    },
    Running {
        started_at: String,
    },
    Terminated {
        exit_code: i32,
        signal: Option<i32>,
        reason: String,
        started_at: String,
        finished_at: String,
        container_id: String,
    },
}

impl CState {
    fn to_json(&self) -> Value {
        match self {
            CState::Waiting { reason, message } => {
                let mut w = json!({"reason": reason});
                if !message.is_empty() {
                    w["message"] = json!(message);
                }
                json!({"waiting": w})
            }
            CState::Running { started_at } => json!({"running": {"startedAt": started_at}}),
            CState::Terminated {
                exit_code,
                signal,
                reason,
                started_at,
                finished_at,
                container_id,
            } => {
                let mut t = json!({"exitCode": exit_code, "reason": reason,
                    "startedAt": started_at, "finishedAt": finished_at, "containerID": container_id});
                if let Some(s) = signal {
                    t["signal"] = json!(s);
                }
                json!({"terminated": t})
            }
        }
    }
}

#[derive(Debug)]
struct Ctr {
    spec: Container,
    init: bool,
    restart_count: i32,
    /// Runs started by this worker (exits name their run).
    runs: u64,
    /// Whether an earlier ferry-node ran it (its first run here is a
    /// restart).
    ran_before: bool,
    state: CState,
    last_term: Option<Value>,
    backoff: Option<Duration>,
    /// When the container may (re)start; `None`: it does not restart.
    start_at: Option<Instant>,
    pid: Option<u32>,
    started: Option<Instant>,
    container_id: Option<String>,
    probes: Vec<ProbeState>,
    ready: bool,
    started_ok: bool,
    image_failures: u32,
}

impl Ctr {
    fn new(spec: Container, init: bool, prev: Option<&Value>) -> Self {
        let restart_count = prev
            .and_then(|p| p.get("restartCount"))
            .and_then(Value::as_i64)
            .and_then(|n| i32::try_from(n).ok())
            .unwrap_or(0);
        let ran_before = prev.and_then(|p| p.get("containerID")).is_some();
        Ctr {
            spec,
            init,
            restart_count,
            runs: 0,
            ran_before,
            state: CState::Waiting {
                reason: "ContainerCreating".into(),
                message: String::new(),
            },
            last_term: prev
                .and_then(|p| p.pointer("/lastState/terminated"))
                .cloned(),
            backoff: None,
            start_at: Some(Instant::now()),
            pid: None,
            started: None,
            container_id: None,
            probes: Vec::new(),
            ready: false,
            started_ok: false,
            image_failures: 0,
        }
    }

    fn running(&self) -> bool {
        matches!(self.state, CState::Running { .. })
    }

    fn succeeded(&self) -> bool {
        matches!(self.state, CState::Terminated { exit_code: 0, .. })
    }
}

/// Runs pod `pod` until it is deleted (or gone).
pub async fn run(rt: Arc<Runtime>, pod: Pod, mut rx: mpsc::Receiver<PodMsg>) {
    let (exit_tx, mut exit_rx) = mpsc::channel(64);
    let mut w = Worker::new(rt, pod, exit_tx);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(PodMsg::Update(p)) => w.update(*p),
                Some(PodMsg::Gone) | None => {
                    w.stop_all(Duration::from_secs(2), &mut exit_rx).await;
                    w.teardown(true).await;
                    tracing::info!(pod = %w.key, "pod gone: cleaned up");
                    return;
                }
            },
            Some(exit) = exit_rx.recv() => w.on_exit(exit).await,
            _ = tick.tick() => {}
        }
        if w.pod.metadata.deletion_timestamp.is_some() {
            w.terminate(&mut exit_rx).await;
            return;
        }
        w.sync().await;
        w.write_status().await;
    }
}

struct Worker {
    rt: Arc<Runtime>,
    pod: Pod,
    uid: String,
    namespace: String,
    name: String,
    key: String,
    containers: Vec<Ctr>,
    sandbox: Option<Sandbox>,
    ips: Vec<IpAddr>,
    sandbox_retry: Option<(Instant, Duration)>,
    sandbox_error: Option<String>,
    rejected: Option<(String, String)>,
    start_time: String,
    transitions: Transitions,
    written: Option<Value>,
    /// The phase once it is Succeeded or Failed: nothing runs again.
    finished: Option<&'static str>,
    /// Whether the pod had already ended when this worker took it over
    /// (a ferry-node restart): its recorded status is final and stays as
    /// the run that ended wrote it.
    settled: bool,
    torn_down: bool,
    /// Events already recorded, to say a repeated failure once.
    said: HashMap<(String, String), String>,
    exit_tx: mpsc::Sender<Exit>,
    volumes: PodVolumes,
    /// When the written volumes are brought up to date next.
    volumes_refresh: Option<Instant>,
    /// When a failed volume set-up is tried again, and the delay after.
    volumes_retry: Option<(Instant, Duration)>,
    /// The tokens of the pod's serviceAccountToken projections.
    tokens: volumes::token::PodTokens,
}

impl Worker {
    fn new(rt: Arc<Runtime>, pod: Pod, exit_tx: mpsc::Sender<Exit>) -> Self {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = pod.metadata.name.clone().unwrap_or_default();
        let status = pod.status.as_ref();
        let prev: BTreeMap<String, Value> = status
            .into_iter()
            .flat_map(|s| {
                s.container_statuses
                    .iter()
                    .flatten()
                    .chain(s.init_container_statuses.iter().flatten())
            })
            .filter_map(|cs| Some((cs.name.clone(), serde_json::to_value(cs).ok()?)))
            .collect();
        let mut rejected = None;
        let mut containers = Vec::new();
        match &pod.spec {
            None => rejected = Some(("InvalidPodSpec".into(), "the pod has no spec".into())),
            Some(spec) => {
                for (c, init) in spec
                    .init_containers
                    .iter()
                    .flatten()
                    .map(|c| (c, true))
                    .chain(spec.containers.iter().map(|c| (c, false)))
                {
                    containers.push(Ctr::new(c.clone(), init, prev.get(&c.name)));
                }
                let mut names: Vec<&str> =
                    containers.iter().map(|c| c.spec.name.as_str()).collect();
                names.sort_unstable();
                let dup = names.windows(2).any(|w| w.first() == w.get(1));
                if spec.containers.is_empty() {
                    rejected = Some(("InvalidPodSpec".into(), "the pod has no containers".into()));
                } else if dup || names.iter().any(|n| n.is_empty() || cgroup::safe(n) != *n) {
                    rejected = Some((
                        "InvalidPodSpec".into(),
                        "container names must be unique DNS labels".into(),
                    ));
                } else if let Err(e) = volumes::validate(spec) {
                    rejected = Some((e.reason().into(), e.to_string()));
                }
            }
        }
        let mut transitions = Transitions::default();
        if let Some(conds) = status.and_then(|s| s.conditions.as_ref()) {
            let values: Vec<Value> = conds
                .iter()
                .filter_map(|c| serde_json::to_value(c).ok())
                .collect();
            transitions.seed(&values);
        }
        let start_time = status
            .and_then(|s| s.start_time.as_ref())
            .map_or_else(time::now, |t| time::at(t.0));
        let finished = match status.and_then(|s| s.phase.as_deref()) {
            Some("Succeeded") => Some("Succeeded"),
            Some("Failed") => Some("Failed"),
            _ => None,
        };
        Worker {
            key: format!("{namespace}/{name}"),
            rt,
            pod,
            uid,
            namespace,
            name,
            containers,
            sandbox: None,
            ips: Vec::new(),
            sandbox_retry: None,
            sandbox_error: None,
            rejected,
            start_time,
            transitions,
            written: None,
            settled: finished.is_some(),
            finished,
            torn_down: false,
            said: HashMap::new(),
            exit_tx,
            volumes: PodVolumes::default(),
            volumes_refresh: None,
            volumes_retry: None,
            tokens: volumes::token::PodTokens::default(),
        }
    }

    fn update(&mut self, pod: Pod) {
        self.pod = pod;
    }

    fn restart_policy(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    }

    fn host_network(&self) -> bool {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false)
    }

    /// The pod's addresses (kept after a finished pod's sandbox is gone,
    /// as its status keeps them).
    fn pod_ips(&self) -> Vec<IpAddr> {
        self.ips.clone()
    }

    async fn event(&self, container: Option<&str>, kind: Type, reason: &str, message: &str) {
        self.rt
            .events
            .pod(&self.pod, container, kind, reason, message)
            .await;
    }

    /// An event said once for as long as its message stays the same.
    async fn event_once(&mut self, container: &str, kind: Type, reason: &str, message: &str) {
        let key = (container.to_owned(), reason.to_owned());
        if self.said.get(&key).is_some_and(|m| m == message) {
            return;
        }
        self.said.insert(key, message.to_owned());
        let c = (!container.is_empty()).then_some(container);
        self.event(c, kind, reason, message).await;
    }

    // ---- the sandbox ----

    async fn ensure_sandbox(&mut self) -> bool {
        if self.sandbox.is_some() {
            return true;
        }
        if let Some((at, _)) = self.sandbox_retry
            && Instant::now() < at
        {
            return false;
        }
        let made = if self.host_network() {
            Ok(Sandbox {
                uid: self.uid.clone(),
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                id: crate::sandbox::sandbox_id(&self.uid),
                netns: None,
                ifname: String::new(),
                netconf: Value::Null,
                result: None,
                ips: self.rt.node_ips.clone(),
            })
        } else if let Some(old) = self.adoptable() {
            tracing::info!(pod = %self.key, netns = ?old.netns, "adopting the sandbox of an earlier run");
            Ok(old)
        } else {
            self.rt
                .network
                .create(&self.rt.state, &self.uid, &self.namespace, &self.name)
                .await
        };
        match made {
            Ok(sandbox) => {
                // Whatever an earlier ferry-node left running is stopped:
                // its containers start again under this worker.
                for c in &self.containers {
                    let dir = cgroup::container_dir(&self.rt.cgroup_root, &self.uid, &c.spec.name);
                    if let Err(e) = cgroup::remove(&dir).await {
                        tracing::warn!(pod = %self.key, error = %e, "removing an old container cgroup");
                    }
                }
                tracing::info!(pod = %self.key, ips = ?sandbox.ips, "sandbox ready");
                self.ips = sandbox.ips.clone();
                self.sandbox = Some(sandbox);
                self.sandbox_error = None;
                self.sandbox_retry = None;
                true
            }
            Err(e) => {
                let msg = format!("{e:#}");
                tracing::warn!(pod = %self.key, error = %msg, "creating the pod sandbox");
                let delay = self.sandbox_retry.map_or(Duration::from_secs(1), |(_, d)| {
                    (d * 2).min(Duration::from_secs(30))
                });
                self.sandbox_retry = Some((Instant::now() + delay, delay));
                self.event_once(
                    "",
                    Type::Warning,
                    "FailedCreatePodSandBox",
                    &format!("Failed to create pod sandbox: {msg}"),
                )
                .await;
                self.sandbox_error = Some(msg);
                false
            }
        }
    }

    /// A sandbox an earlier ferry-node made for this pod, still whole.
    fn adoptable(&self) -> Option<Sandbox> {
        let old = self.rt.state.read_sandbox(&self.uid)?;
        let whole = old.result.is_some()
            && old.netns.as_deref().is_some_and(crate::sandbox::is_netns)
            && old.uid == self.uid;
        whole.then_some(old)
    }

    fn write_etc_files(&self) -> anyhow::Result<Vec<(PathBuf, PathBuf)>> {
        let resolv = etc_files::resolv_conf(&self.pod, &self.rt.dns);
        let hosts = if self.host_network() {
            std::fs::read_to_string("/etc/hosts").unwrap_or_default()
        } else {
            etc_files::hosts(&self.pod, &self.pod_ips(), &self.rt.dns.cluster_domain)
        };
        let r = self.rt.state.write_etc(&self.uid, "resolv.conf", &resolv)?;
        let h = self.rt.state.write_etc(&self.uid, "hosts", &hosts)?;
        Ok(vec![
            (r, PathBuf::from("/etc/resolv.conf")),
            (h, PathBuf::from("/etc/hosts")),
        ])
    }

    // ---- syncing ----

    async fn sync(&mut self) {
        if self.rejected.is_some() {
            if self.finished.is_none() {
                if let Some((reason, msg)) = self.rejected.clone() {
                    self.event_once("", Type::Warning, "Failed", &format!("{reason}: {msg}"))
                        .await;
                }
                self.finished = Some("Failed");
            }
            return;
        }
        if self.finished.is_some() {
            if !self.torn_down {
                self.teardown(false).await;
            }
            return;
        }
        if !self.ensure_sandbox().await {
            return;
        }
        if !self.ensure_volumes().await {
            return;
        }
        let now = Instant::now();
        // Init containers, in order: each must succeed before the next.
        let mut init_done = true;
        for i in 0..self.containers.len() {
            if !self.containers.get(i).is_some_and(|c| c.init) {
                continue;
            }
            let Some(c) = self.containers.get(i) else {
                continue;
            };
            if c.succeeded() {
                continue;
            }
            init_done = false;
            if !c.running() && c.start_at.is_some_and(|at| at <= now) {
                self.start(i).await;
            }
            break;
        }
        if !init_done {
            return;
        }
        for i in 0..self.containers.len() {
            let Some(c) = self.containers.get(i) else {
                continue;
            };
            if c.init {
                continue;
            }
            if c.running() {
                self.run_probes(i).await;
            } else if c.start_at.is_some_and(|at| at <= now) {
                self.start(i).await;
            }
        }
    }

    async fn references(&self, c: &Container) -> anyhow::Result<References> {
        let client = self.rt.client.clone();
        let (cms, secrets) = env::referenced(c);
        let mut refs = References::default();
        let ns = self.namespace.as_str();
        let fetch = async {
            fetch_objects(&client, ns, cms, secrets, &mut refs).await?;
            let links = self
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.enable_service_links)
                .unwrap_or(true);
            if links {
                let api: Api<Service> = Api::namespaced(client.clone(), ns);
                refs.services
                    .extend(api.list(&ListParams::default()).await?.items);
            }
            if !(links && ns == "default") {
                let api: Api<Service> = Api::namespaced(client.clone(), "default");
                refs.services.extend(api.get_opt("kubernetes").await?);
            }
            Ok::<_, kube::Error>(())
        };
        tokio::time::timeout(API_TIMEOUT, fetch)
            .await
            .map_err(|_| anyhow::anyhow!("reading the container's references timed out"))??;
        Ok(refs)
    }

    /// Sets the volumes up (a failure holds every container, with a
    /// `FailedMount` event, and is tried again with back-off) and brings
    /// the written ones up to date every [`volumes::REFRESH`].
    async fn ensure_volumes(&mut self) -> bool {
        let ready = self.volumes.all_ready(&self.pod);
        let now = Instant::now();
        if ready && self.volumes_refresh.is_some_and(|at| now < at) {
            return true;
        }
        if !ready
            && let Some((at, _)) = self.volumes_retry
            && now < at
        {
            return false;
        }
        let (cms, secrets) = volumes::sources::referenced(&self.pod);
        let mut refs = References::default();
        let fetched = tokio::time::timeout(
            API_TIMEOUT,
            fetch_objects(&self.rt.client, &self.namespace, cms, secrets, &mut refs),
        )
        .await;
        let fetched = match fetched {
            Ok(Ok(())) => {
                let now_unix = jiff::Timestamp::now().as_second();
                match self
                    .tokens
                    .refresh(&self.rt.client, &self.pod, now_unix)
                    .await
                {
                    Ok(tokens) => {
                        refs.tokens = tokens;
                        Ok(Ok(()))
                    }
                    Err(e) => Ok(Err(e.to_string())),
                }
            }
            Ok(Err(e)) => Ok(Err(format!(
                "reading the volumes' ConfigMaps and Secrets: {e}"
            ))),
            Err(e) => Err(e),
        };
        let outcome = match fetched {
            Ok(Ok(())) => {
                let addrs = PodAddresses {
                    pod_ips: self.pod_ips(),
                    host_ips: self.rt.node_ips.clone(),
                };
                let cx = SetUpContext {
                    state: &self.rt.state,
                    host: &self.rt.host_paths,
                    refs: &refs,
                    addrs: &addrs,
                };
                self.volumes
                    .set_up(&self.pod, &cx)
                    .map_err(|e| e.to_string())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err("reading the volumes' ConfigMaps and Secrets timed out".into()),
        };
        match outcome {
            Ok(()) => {
                self.volumes_retry = None;
                self.volumes_refresh = Some(now + volumes::REFRESH);
                self.said.remove(&(String::new(), "FailedMount".to_owned()));
                true
            }
            Err(msg) => {
                tracing::warn!(pod = %self.key, error = %msg, "setting up volumes");
                self.event_once("", Type::Warning, "FailedMount", &msg)
                    .await;
                if ready {
                    // What the volumes hold stays; tried again next period.
                    self.volumes_refresh = Some(now + volumes::REFRESH);
                    return true;
                }
                let delay = self
                    .volumes_retry
                    .map_or(Duration::from_millis(500), |(_, d)| {
                        (d * 2).min(Duration::from_secs(8))
                    });
                self.volumes_retry = Some((now + delay, delay));
                false
            }
        }
    }

    fn set_waiting(&mut self, i: usize, reason: &str, message: &str) {
        if let Some(c) = self.containers.get_mut(i) {
            c.state = CState::Waiting {
                reason: reason.into(),
                message: message.into(),
            };
        }
    }

    /// Starts run `runs + 1` of container `i`.
    async fn start(&mut self, i: usize) {
        let Some(c) = self.containers.get(i) else {
            return;
        };
        let spec = c.spec.clone();
        let name = spec.name.clone();
        let image = spec.image.clone().unwrap_or_default();
        let refs = match self.references(&spec).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(pod = %self.key, container = %name, error = %format!("{e:#}"), "reading env references");
                return;
            }
        };
        let hostname = if self.host_network() {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap_or_default()
                .trim()
                .to_owned()
        } else {
            etc_files::hostname(&self.pod)
        };
        let addrs = PodAddresses {
            pod_ips: self.pod_ips(),
            host_ips: self.rt.node_ips.clone(),
        };
        let env = match env::build(&self.pod, &spec, &refs, &addrs, &hostname) {
            Ok(env) => env,
            Err(e) => {
                let msg = e.to_string();
                self.set_waiting(i, "CreateContainerConfigError", &msg);
                self.event_once(&name, Type::Warning, "Failed", &format!("Error: {msg}"))
                    .await;
                return;
            }
        };
        // The command line, and the image's files over the node's when its
        // image has a root: either failing is the image's failure.
        let launched = self.rt.images.argv(&spec, |s| env.expand(s)).and_then(|argv| {
            let Some(root) = self.rt.images.root(&spec) else {
                return Ok((argv, Vec::new()));
            };
            let overlays = image_layer::plan(root).map_err(|source| ImageError::Layer {
                image: image.clone(),
                source,
            })?;
            tracing::debug!(
                pod = %self.key,
                container = %name,
                root = %root.display(),
                overlays = ?overlays.iter().map(|o| o.target.display().to_string()).collect::<Vec<_>>(),
                "image overlays"
            );
            Ok((argv, overlays))
        });
        let (argv, image_overlays) = match launched {
            Ok(launched) => launched,
            Err(e) => {
                let msg = e.to_string();
                let failures = self.containers.get(i).map_or(0, |c| c.image_failures);
                let reason = match e {
                    ImageError::Unknown { .. } | ImageError::Missing if failures > 0 => {
                        "ImagePullBackOff"
                    }
                    ImageError::Unknown { .. } | ImageError::Missing => "ErrImagePull",
                    _ => "RunContainerError",
                };
                self.set_waiting(i, reason, &msg);
                if let Some(c) = self.containers.get_mut(i) {
                    c.image_failures += 1;
                    // Images never appear later (no pulls): look again
                    // only after a while, as an image pull back-off would.
                    c.start_at = Some(Instant::now() + BACKOFF_START);
                }
                self.event_once(
                    &name,
                    Type::Warning,
                    "Failed",
                    &format!("Failed to pull image \"{image}\": {msg}"),
                )
                .await;
                if failures > 0 {
                    self.event_once(
                        &name,
                        Type::Normal,
                        "BackOff",
                        &format!("Back-off pulling image \"{image}\""),
                    )
                    .await;
                }
                return;
            }
        };
        let plan = match self.volumes.mounts(&spec, |s| env.expand(s)) {
            Ok(m) => m,
            Err(e) => {
                let msg = e.to_string();
                self.set_waiting(i, "CreateContainerConfigError", &msg);
                self.event_once(&name, Type::Warning, "Failed", &format!("Error: {msg}"))
                    .await;
                return;
            }
        };
        if spec
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.mount_propagation.as_deref() == Some("Bidirectional"))
        {
            self.event_once(
                &name,
                Type::Normal,
                "MountPropagation",
                "Bidirectional mount propagation is HostToContainer on ferry-node: mounts made in the container do not reach the node",
            )
            .await;
        }
        let binds = match self.write_etc_files() {
            Ok(b) => b,
            Err(e) => {
                self.set_waiting(i, "CreateContainerError", &format!("{e:#}"));
                return;
            }
        };
        // Where a container that covers `/` stages its new root.
        let stage = self.rt.state.stage_dir(&self.uid, &name);
        if !plan.shadows.is_empty()
            && let Err(e) = std::fs::create_dir_all(&stage)
        {
            let msg = format!("creating {}: {e}", stage.display());
            self.set_waiting(i, "CreateContainerError", &msg);
            return;
        }
        let cgroup_dir = cgroup::container_dir(&self.rt.cgroup_root, &self.uid, &name);
        if let Err(e) = cgroup::remove(&cgroup_dir)
            .await
            .and_then(|()| cgroup::create(&cgroup_dir))
        {
            let msg = format!("creating cgroup {}: {e}", cgroup_dir.display());
            self.set_waiting(i, "CreateContainerError", &msg);
            self.event_once(&name, Type::Warning, "Failed", &format!("Error: {msg}"))
                .await;
            return;
        }
        let Some(c) = self.containers.get_mut(i) else {
            return;
        };
        let restart_count = if c.runs > 0 || c.ran_before {
            c.restart_count + 1
        } else {
            c.restart_count
        };
        let launch = Launch {
            argv,
            env: env.vars().to_vec(),
            netns: self.sandbox.as_ref().and_then(|s| s.netns.clone()),
            hostname: (!self.host_network()).then(|| hostname.clone()),
            image_overlays,
            binds,
            stage: (!plan.shadows.is_empty()).then(|| stage.clone()),
            mounts: plan.mounts,
            shadows: plan.shadows,
            cgroup: cgroup_dir,
            workdir: spec.working_dir.clone(),
            log: self.rt.state.log_path(&self.uid, &name, restart_count),
        };
        self.rt
            .events
            .pod(
                &self.pod,
                Some(&name),
                Type::Normal,
                "Pulled",
                &format!("Container image \"{image}\" already present on machine"),
            )
            .await;
        let Some(c) = self.containers.get_mut(i) else {
            return;
        };
        let mut child = match process::spawn(&self.rt.tools, &launch) {
            Ok(child) => child,
            Err(e) => {
                let msg = format!("{e:#}");
                c.state = CState::Waiting {
                    reason: "RunContainerError".into(),
                    message: msg.clone(),
                };
                c.start_at = Some(Instant::now() + BACKOFF_START);
                self.event_once(&name, Type::Warning, "Failed", &format!("Error: {msg}"))
                    .await;
                return;
            }
        };
        c.runs += 1;
        c.restart_count = restart_count;
        c.image_failures = 0;
        let run = c.runs;
        let pid = child.id();
        let now = Instant::now();
        let container_id = format!(
            "ferry://{}-{name}-{restart_count}",
            crate::sandbox::sandbox_id(&self.uid)
        );
        c.pid = pid;
        c.started = Some(now);
        c.container_id = Some(container_id);
        c.state = CState::Running {
            started_at: time::now(),
        };
        c.start_at = None;
        c.probes = [
            (Kind::Startup, spec.startup_probe.clone()),
            (Kind::Liveness, spec.liveness_probe.clone()),
            (Kind::Readiness, spec.readiness_probe.clone()),
        ]
        .into_iter()
        .filter_map(|(k, p)| Some(ProbeState::new(k, p?, now)))
        .collect();
        // Init containers are never probed; without a probe a container is
        // started and ready once running.
        if c.init {
            c.probes.clear();
        }
        c.started_ok = !c.probes.iter().any(|p| p.kind == Kind::Startup);
        c.ready = !c.init && !c.probes.iter().any(|p| p.kind == Kind::Readiness);
        let tx = self.exit_tx.clone();
        let cname = name.clone();
        tokio::spawn(async move {
            let (code, signal) = match child.wait().await {
                Ok(status) => {
                    use std::os::unix::process::ExitStatusExt as _;
                    match (status.code(), status.signal()) {
                        (Some(code), _) => (code, None),
                        (None, Some(sig)) => (128 + sig, Some(sig)),
                        (None, None) => (-1, None),
                    }
                }
                Err(_) => (-1, None),
            };
            let _ = tx
                .send(Exit {
                    container: cname,
                    run,
                    code,
                    signal,
                })
                .await;
        });
        tracing::info!(pod = %self.key, container = %name, ?pid, restart_count, "container started");
        self.event(
            Some(&name),
            Type::Normal,
            "Created",
            &format!("Created container: {name}"),
        )
        .await;
        self.event(
            Some(&name),
            Type::Normal,
            "Started",
            &format!("Started container {name}"),
        )
        .await;
        if let Some(handler) = spec.lifecycle.as_ref().and_then(|l| l.post_start.as_ref())
            && let Some(pid) = pid
        {
            let target = Target {
                ip: self.pod_ips().first().copied(),
                pid,
                container: &spec,
                nsenter: &self.rt.tools.nsenter,
            };
            if let Err(msg) = probe::hook(target, handler, POST_START_TIMEOUT).await {
                self.event(Some(&name), Type::Warning, "FailedPostStartHook", &msg)
                    .await;
                self.kill(i, Duration::from_secs(2));
            }
        }
    }

    /// SIGTERM now, SIGKILL (the whole container cgroup) after `grace`.
    fn kill(&self, i: usize, grace: Duration) {
        let Some(c) = self.containers.get(i) else {
            return;
        };
        if let Some(pid) = c.pid {
            process::signal(pid, rustix::process::Signal::TERM);
        }
        let dir = cgroup::container_dir(&self.rt.cgroup_root, &self.uid, &c.spec.name);
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            cgroup::kill(&dir);
        });
    }

    fn grace(&self) -> Duration {
        let secs = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| {
                self.pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
            })
            .unwrap_or(30);
        Duration::from_secs(u64::try_from(secs).unwrap_or(0))
    }

    async fn run_probes(&mut self, i: usize) {
        let now = Instant::now();
        let ip = self.pod_ips().first().copied();
        let Some(c) = self.containers.get(i) else {
            return;
        };
        let Some(pid) = c.pid else { return };
        let name = c.spec.name.clone();
        let spec = c.spec.clone();
        let started_ok = c.started_ok;
        let pod_grace = self.grace();
        let due: Vec<usize> = c
            .probes
            .iter()
            .enumerate()
            .filter(|(_, p)| p.due(now) && ((p.kind == Kind::Startup) != started_ok))
            .map(|(j, _)| j)
            .collect();
        for j in due {
            let Some(state) = self.containers.get(i).and_then(|c| c.probes.get(j)) else {
                continue;
            };
            let kind = state.kind;
            let target = Target {
                ip,
                pid,
                container: &spec,
                nsenter: &self.rt.tools.nsenter,
            };
            let outcome = probe::run(target, &state.probe).await;
            if let Err(msg) = &outcome {
                self.event(
                    Some(&name),
                    Type::Warning,
                    "Unhealthy",
                    &format!("{} probe failed: {msg}", kind.name()),
                )
                .await;
            }
            let Some(c) = self.containers.get_mut(i) else {
                return;
            };
            if !c.running() || c.pid != Some(pid) {
                return;
            }
            let Some(state) = c.probes.get_mut(j) else {
                continue;
            };
            let change = state.record(Instant::now(), &outcome);
            match (kind, change) {
                (Kind::Readiness, Change::Flipped(ok)) => c.ready = ok,
                (Kind::Startup, Change::Flipped(true)) => c.started_ok = true,
                (Kind::Startup | Kind::Liveness, Change::Flipped(false)) => {
                    let grace = state
                        .probe
                        .termination_grace_period_seconds
                        .and_then(|s| u64::try_from(s).ok())
                        .map_or(pod_grace, Duration::from_secs);
                    c.ready = false;
                    let msg = format!(
                        "Container {name} failed {} probe, will be restarted",
                        kind.name().to_lowercase()
                    );
                    self.event(Some(&name), Type::Normal, "Killing", &msg).await;
                    self.kill(i, grace);
                    return;
                }
                _ => {}
            }
        }
    }

    async fn on_exit(&mut self, exit: Exit) {
        let policy = self.restart_policy();
        let pod_desc = format!("{}_{}({})", self.name, self.namespace, self.uid);
        let Some(i) = self
            .containers
            .iter()
            .position(|c| c.spec.name == exit.container)
        else {
            return;
        };
        let Some(c) = self.containers.get_mut(i) else {
            return;
        };
        if c.runs != exit.run || !c.running() {
            return;
        }
        let started_at = match &c.state {
            CState::Running { started_at } => started_at.clone(),
            _ => String::new(),
        };
        let ran = c.started.map_or(Duration::ZERO, |s| s.elapsed());
        let term = CState::Terminated {
            exit_code: exit.code,
            signal: exit.signal,
            reason: if exit.code == 0 {
                "Completed".into()
            } else {
                "Error".into()
            },
            started_at,
            finished_at: time::now(),
            container_id: c.container_id.clone().unwrap_or_default(),
        };
        tracing::info!(pod = %self.key, container = %c.spec.name, code = exit.code, "container exited");
        c.pid = None;
        c.ready = false;
        c.probes.clear();
        let restart = match policy.as_str() {
            // Init containers of an Always pod restart on failure only.
            "Always" if c.init => exit.code != 0,
            "Always" => true,
            "OnFailure" => exit.code != 0,
            _ => false,
        };
        // Remove the run's cgroup leftovers (forked children).
        cgroup::kill(&cgroup::container_dir(
            &self.rt.cgroup_root,
            &self.uid,
            &c.spec.name,
        ));
        if !restart {
            c.state = term;
            c.start_at = None;
            return;
        }
        c.last_term = term.to_json().get("terminated").cloned();
        if ran >= BACKOFF_RESET {
            c.backoff = None;
        }
        let delay = c.backoff.unwrap_or(Duration::ZERO);
        c.backoff = Some(match c.backoff {
            None => BACKOFF_START,
            Some(d) => (d * 2).min(BACKOFF_MAX),
        });
        c.start_at = Some(Instant::now() + delay);
        let name = c.spec.name.clone();
        if delay.is_zero() {
            c.state = term;
        } else {
            c.state = CState::Waiting {
                reason: "CrashLoopBackOff".into(),
                message: format!(
                    "back-off {}s restarting failed container={name} pod={pod_desc}",
                    delay.as_secs()
                ),
            };
            self.event(
                Some(&name),
                Type::Warning,
                "BackOff",
                &format!("Back-off restarting failed container {name} in pod {pod_desc}"),
            )
            .await;
        }
    }

    // ---- status ----

    fn status_json(&mut self) -> Value {
        let now = time::now();
        let policy = self.restart_policy();
        let inits: Vec<&Ctr> = self.containers.iter().filter(|c| c.init).collect();
        let mains: Vec<&Ctr> = self.containers.iter().filter(|c| !c.init).collect();
        let init_done = inits.iter().all(|c| c.succeeded());
        let init_failed = policy == "Never"
            && inits
                .iter()
                .any(|c| matches!(c.state, CState::Terminated { exit_code, .. } if exit_code != 0));
        let summaries: Vec<Summary> = mains
            .iter()
            .map(|c| Summary {
                name: c.spec.name.clone(),
                running: c.running(),
                terminated: match (&c.state, c.start_at) {
                    (CState::Terminated { exit_code, .. }, None) => Some(*exit_code),
                    _ => None,
                },
                restarting: c.start_at.is_some() && (c.last_term.is_some() || c.runs > 0),
                ready: c.ready && c.running(),
            })
            .collect();
        let mut phase = status::phase(&policy, init_done, init_failed, &summaries);
        if let Some(f) = self.finished {
            phase = f;
        } else if matches!(phase, "Succeeded" | "Failed") {
            self.finished = Some(phase);
        }
        let unready: Vec<String> = summaries
            .iter()
            .filter(|s| !s.ready)
            .map(|s| s.name.clone())
            .collect();
        let uninit: Vec<String> = inits
            .iter()
            .filter(|c| !c.succeeded())
            .map(|c| c.spec.name.clone())
            .collect();
        let terminal = matches!(phase, "Succeeded" | "Failed");
        let ready_reason = if terminal {
            "PodCompleted"
        } else {
            "ContainersNotReady"
        };
        let all_ready = unready.is_empty() && !terminal;
        let statuses = |list: &[&Ctr]| -> Vec<Value> {
            list.iter()
                .map(|c| {
                    let mut s = json!({
                        "name": c.spec.name,
                        "image": c.spec.image.clone().unwrap_or_default(),
                        "imageID": self.rt.images.image_id(&c.spec),
                        "ready": c.ready && c.running(),
                        "started": c.running() && c.started_ok,
                        "restartCount": c.restart_count,
                        "state": c.state.to_json(),
                        "lastState": c.last_term.as_ref().map_or_else(|| json!({}), |t| json!({"terminated": t})),
                    });
                    if let Some(id) = &c.container_id {
                        s["containerID"] = json!(id);
                    }
                    s
                })
                .collect()
        };
        let init_statuses = statuses(&inits);
        let main_statuses = statuses(&mains);
        let sandbox_ok = self.sandbox.is_some();
        let conditions = vec![
            self.transitions.condition(
                "PodReadyToStartContainers",
                sandbox_ok && !terminal,
                None,
                None,
                &now,
            ),
            self.transitions.condition(
                "Initialized",
                init_done,
                (!init_done).then_some("ContainersNotInitialized"),
                status::unready_message("incomplete", &uninit),
                &now,
            ),
            self.transitions.condition(
                "Ready",
                all_ready,
                (!all_ready).then_some(ready_reason),
                if all_ready {
                    None
                } else {
                    status::unready_message("unready", &unready)
                },
                &now,
            ),
            self.transitions.condition(
                "ContainersReady",
                all_ready,
                (!all_ready).then_some(ready_reason),
                if all_ready {
                    None
                } else {
                    status::unready_message("unready", &unready)
                },
                &now,
            ),
            self.transitions
                .condition("PodScheduled", true, None, None, &now),
        ];
        let host_ips: Vec<Value> = self
            .rt
            .node_ips
            .iter()
            .map(|ip| json!({"ip": ip.to_string()}))
            .collect();
        let mut status = json!({
            "phase": phase,
            "conditions": conditions,
            "hostIP": self.rt.node_ips.first().map(ToString::to_string),
            "hostIPs": host_ips,
            "startTime": self.start_time,
            "containerStatuses": main_statuses,
            "qosClass": "BestEffort",
        });
        if !inits.is_empty() {
            status["initContainerStatuses"] = json!(init_statuses);
        }
        let ips = self.pod_ips();
        if !ips.is_empty() {
            status["podIP"] = json!(ips.first().map(ToString::to_string));
            status["podIPs"] = json!(
                ips.iter()
                    .map(|ip| json!({"ip": ip.to_string()}))
                    .collect::<Vec<_>>()
            );
        }
        if let Some((reason, message)) = &self.rejected {
            status["reason"] = json!(reason);
            status["message"] = json!(message);
        } else if let Some(e) = &self.sandbox_error {
            status["message"] = json!(format!("pod sandbox: {e}"));
        }
        status
    }

    /// Writes the status if it changed since the last write.
    async fn write_status(&mut self) {
        if self.settled {
            return;
        }
        let status = self.status_json();
        let comparable = strip_times(&status);
        if self.written.as_ref() == Some(&comparable) {
            return;
        }
        let api: Api<Pod> = Api::namespaced(self.rt.client.clone(), &self.namespace);
        let patch = json!({"metadata": {"uid": self.uid}, "status": status});
        let sent = tokio::time::timeout(
            API_TIMEOUT,
            api.patch_status(&self.name, &PatchParams::default(), &Patch::Merge(patch)),
        )
        .await;
        match sent {
            Ok(Ok(_)) => self.written = Some(comparable),
            Ok(Err(e)) => tracing::warn!(pod = %self.key, error = %e, "writing the pod's status"),
            Err(_) => tracing::warn!(pod = %self.key, "writing the pod's status timed out"),
        }
    }

    // ---- stopping ----

    /// Graceful deletion: preStop hooks, SIGTERM, the grace period,
    /// SIGKILL, cleanup, then the final delete.
    async fn terminate(&mut self, exit_rx: &mut mpsc::Receiver<Exit>) {
        let grace = self.grace();
        tracing::info!(pod = %self.key, ?grace, "terminating");
        let deadline = Instant::now() + grace;
        let ip = self.pod_ips().first().copied();
        let nsenter = self.rt.tools.nsenter.clone();
        let running: Vec<(usize, u32, Container)> = self
            .containers
            .iter()
            .enumerate()
            .filter(|(_, c)| c.running())
            .filter_map(|(i, c)| Some((i, c.pid?, c.spec.clone())))
            .collect();
        for (_, _, spec) in &running {
            self.event(
                Some(&spec.name),
                Type::Normal,
                "Killing",
                &format!("Stopping container {}", spec.name),
            )
            .await;
        }
        let hooks = running.iter().map(|(_, pid, spec)| {
            let nsenter = nsenter.clone();
            async move {
                if let Some(h) = spec.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) {
                    let target = Target {
                        ip,
                        pid: *pid,
                        container: spec,
                        nsenter: &nsenter,
                    };
                    let left = deadline.saturating_duration_since(Instant::now());
                    if let Err(msg) = probe::hook(target, h, left).await {
                        tracing::warn!(container = %spec.name, error = %msg, "preStop hook");
                    }
                }
                process::signal(*pid, rustix::process::Signal::TERM);
            }
        });
        join_all(hooks).await;
        self.wait_exits(deadline, exit_rx).await;
        self.stop_all(Duration::ZERO, exit_rx).await;
        self.teardown(true).await;
        let api: Api<Pod> = Api::namespaced(self.rt.client.clone(), &self.namespace);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        for attempt in 0..5u32 {
            match tokio::time::timeout(API_TIMEOUT, api.delete(&self.name, &params)).await {
                Ok(Ok(_)) => break,
                Ok(Err(kube::Error::Api(e))) if e.code == 404 || e.code == 409 => break,
                Ok(Err(e)) => tracing::warn!(pod = %self.key, attempt, error = %e, "final delete"),
                Err(_) => tracing::warn!(pod = %self.key, attempt, "final delete timed out"),
            }
            tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
        }
        tracing::info!(pod = %self.key, "deleted");
    }

    /// Waits for the running containers' exits until `deadline`.
    async fn wait_exits(&mut self, deadline: Instant, exit_rx: &mut mpsc::Receiver<Exit>) {
        while self.containers.iter().any(Ctr::running) {
            match tokio::time::timeout_at(deadline, exit_rx.recv()).await {
                Ok(Some(exit)) => self.mark_exit(exit),
                Ok(None) | Err(_) => break,
            }
        }
    }

    /// Records an exit while stopping (no restart).
    fn mark_exit(&mut self, exit: Exit) {
        if let Some(c) = self
            .containers
            .iter_mut()
            .find(|c| c.spec.name == exit.container && c.runs == exit.run)
        {
            c.pid = None;
            c.state = CState::Terminated {
                exit_code: exit.code,
                signal: exit.signal,
                reason: if exit.code == 0 {
                    "Completed".into()
                } else {
                    "Error".into()
                },
                started_at: String::new(),
                finished_at: time::now(),
                container_id: c.container_id.clone().unwrap_or_default(),
            };
            c.start_at = None;
        }
    }

    /// SIGTERM what runs, SIGKILL it all after `grace`, reap (bounded).
    async fn stop_all(&mut self, grace: Duration, exit_rx: &mut mpsc::Receiver<Exit>) {
        for c in &self.containers {
            if let Some(pid) = c.pid {
                process::signal(pid, rustix::process::Signal::TERM);
            }
        }
        self.wait_exits(Instant::now() + grace, exit_rx).await;
        cgroup::kill(&cgroup::pod_dir(&self.rt.cgroup_root, &self.uid));
        self.wait_exits(Instant::now() + REAP_TIMEOUT, exit_rx)
            .await;
    }

    /// Removes the pod's cgroups and sandbox (and with `all` its state
    /// directory, logs included).
    async fn teardown(&mut self, all: bool) {
        self.torn_down = true;
        let dir = cgroup::pod_dir(&self.rt.cgroup_root, &self.uid);
        if let Err(e) = cgroup::remove(&dir).await {
            tracing::warn!(pod = %self.key, error = %e, "removing the pod's cgroup");
        }
        let sandbox = self
            .sandbox
            .take()
            .or_else(|| self.rt.state.read_sandbox(&self.uid));
        if let Some(sb) = sandbox
            && let Err(e) = self.rt.network.destroy(&self.rt.state, &sb).await
        {
            tracing::warn!(pod = %self.key, error = %format!("{e:#}"), "removing the pod's sandbox");
        }
        if all && let Err(e) = self.rt.state.remove_pod(&self.uid) {
            tracing::warn!(pod = %self.key, error = %format!("{e:#}"), "removing the pod's state");
        }
        if !all && let Err(e) = self.rt.state.remove_volumes(&self.uid) {
            tracing::warn!(pod = %self.key, error = %format!("{e:#}"), "removing the pod's volumes");
        }
    }
}

/// The status without the times that change on every computation.
fn strip_times(status: &Value) -> Value {
    let mut s = status.clone();
    if let Some(conds) = s.get_mut("conditions").and_then(Value::as_array_mut) {
        for c in conds {
            if let Some(o) = c.as_object_mut() {
                o.remove("lastProbeTime");
            }
        }
    }
    s
}

/// Reads ConfigMaps and Secrets of `ns` into `refs` (`None`: absent).
async fn fetch_objects(
    client: &kube::Client,
    ns: &str,
    cms: Vec<String>,
    secrets: Vec<String>,
    refs: &mut References,
) -> Result<(), kube::Error> {
    for name in cms {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        refs.config_maps
            .insert(name.clone(), api.get_opt(&name).await?);
    }
    for name in secrets {
        let api: Api<Secret> = Api::namespaced(client.clone(), ns);
        refs.secrets.insert(name.clone(), api.get_opt(&name).await?);
    }
    Ok(())
}
