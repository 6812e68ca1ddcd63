//! Pods on a running cluster: each pod's way from its create call to
//! being reachable through its Service, and a Deployment scaled from 0.
//!
//! Milestones come from watches (kube-rs watchers on Pods and
//! EndpointSlices, the time an event arrived in this process), except
//! "reachable": a probe process ([`probe_main`], this binary re-run in
//! node 0's namespace and the pods' cgroup, so the agent translates its
//! ClusterIP connects as it does a pod's) connects to the pod's Service
//! every 5 ms from the create call on and says when one succeeds.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use ferry_cluster::Cluster;
use futures_util::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

use super::startup::{self, component_pids};
use super::{Settings, check_stop};
use crate::process::cpu_times;
use crate::stats::{Samples, Summary};
use crate::{BenchError, run_bounded};

/// How long one pod may take to become reachable.
const POD_WITHIN: Duration = Duration::from_secs(60);
/// The port the pods serve (agnhost netexec) and their Services' port.
const POD_PORT: u16 = 8080;
const SERVICE_PORT: u16 = 80;

/// What the watches (and the probe) saw of one pod.
#[derive(Debug, Clone)]
pub struct Marks {
    /// The create call was made (the latency phase), or the pod was first
    /// seen (the scale phase).
    pub created: Instant,
    pub scheduled: Option<Instant>,
    /// PodReadyToStartContainers: its network namespace is wired.
    pub sandbox: Option<Instant>,
    pub running: Option<Instant>,
    pub ready: Option<Instant>,
    /// Ready in an EndpointSlice.
    pub sliced: Option<Instant>,
    pub reachable: Option<Instant>,
    pub failed: Option<String>,
}

impl Marks {
    fn new(created: Instant) -> Self {
        Self {
            created,
            scheduled: None,
            sandbox: None,
            running: None,
            ready: None,
            sliced: None,
            reachable: None,
            failed: None,
        }
    }
}

/// Every tracked pod's marks, by name.
#[derive(Debug, Clone, Default)]
struct Book(Arc<Mutex<HashMap<String, Marks>>>);

impl Book {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Marks>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn with(&self, name: &str, f: impl FnOnce(&mut Marks)) {
        if let Some(m) = self.lock().get_mut(name) {
            f(m);
        }
    }
}

fn condition(pod: &Pod, kind: &str) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == kind && c.status == "True"))
}

/// Records a pod event; `adopt` tracks pods not in the book yet.
fn saw_pod(book: &Book, pod: &Pod, adopt: bool) {
    let now = Instant::now();
    let Some(name) = pod.metadata.name.as_deref() else {
        return;
    };
    let mut b = book.lock();
    if adopt && pod.metadata.deletion_timestamp.is_none() {
        b.entry(name.to_owned()).or_insert_with(|| Marks::new(now));
    }
    let Some(m) = b.get_mut(name) else {
        return;
    };
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_ref())
        .is_some()
    {
        m.scheduled.get_or_insert(now);
    }
    if condition(pod, "PodReadyToStartContainers") {
        m.sandbox.get_or_insert(now);
    }
    if phase == Some("Running") {
        m.running.get_or_insert(now);
    }
    if condition(pod, "Ready") {
        m.ready.get_or_insert(now);
    }
    if phase == Some("Failed") && m.failed.is_none() {
        m.failed = Some(format!(
            "pod failed: {}",
            serde_json::to_string(&pod.status).unwrap_or_default()
        ));
    }
}

/// Records the pods a slice holds as ready.
fn saw_slice(book: &Book, slice: &EndpointSlice) {
    let now = Instant::now();
    for ep in &slice.endpoints {
        let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
        let pod = ep
            .target_ref
            .as_ref()
            .filter(|r| r.kind.as_deref() == Some("Pod"))
            .and_then(|r| r.name.as_deref());
        if let (true, Some(pod)) = (ready, pod) {
            book.with(pod, |m| {
                m.sliced.get_or_insert(now);
            });
        }
    }
}

/// Starts a watcher on `api` that hands each object to `saw`; returns once
/// its first list is done (so nothing created after is missed).
pub(super) async fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    saw: impl Fn(&K) + Send + 'static,
) -> Result<tokio::task::JoinHandle<()>>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut tx = Some(tx);
        let mut stream = std::pin::pin!(watcher(api, config));
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => saw(&o),
                Ok(watcher::Event::InitDone) => {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("cluster-bench: watch: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(30), rx)
        .await
        .context("a watch did not start within 30 s")?
        .context("a watch ended before its first list")?;
    Ok(task)
}

/// Aborts the watch tasks when dropped.
pub(super) struct Watches(pub(super) Vec<tokio::task::JoinHandle<()>>);

impl Drop for Watches {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// `ferry-node --cgroup-root` of the node runtime on node 0: the cgroup
/// its pods live under, which the agent's programs cover.
fn pod_cgroup(cluster: &Cluster) -> Result<PathBuf> {
    let node0 = cluster
        .nodes()
        .first()
        .map(|n| n.name.clone())
        .context("the cluster has no nodes")?;
    let pid = cluster
        .info()
        .components
        .into_iter()
        .find(|c| c.name == "node" && c.node.as_deref() == Some(node0.as_str()))
        .and_then(|c| c.pid)
        .context("node 0's runtime is not running")?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.iter()
        .position(|a| *a == b"--cgroup-root")
        .and_then(|i| args.get(i + 1))
        .map(|a| PathBuf::from(String::from_utf8_lossy(a).into_owned()))
        .context("ferry-node on node 0 has no --cgroup-root")
}

/// The probe process: takes `NAME ADDR` lines, says `NAME ok` once a
/// connect to ADDR succeeds.
struct Probe {
    child: Child,
    stdin: Mutex<ChildStdin>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Probe {
    fn start(cluster: &Cluster, bench: &Path, book: &Book) -> Result<Self> {
        let cgroup = pod_cgroup(cluster)?;
        let mut child = cluster
            .world()
            .node(0)
            .netns
            .command(bench)
            .arg("probe")
            .arg("--cgroup")
            .arg(&cgroup)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the probe in node 0")?;
        let stdin = child.stdin.take().context("the probe's stdin")?;
        let stdout = child.stdout.take().context("the probe's stdout")?;
        let book = book.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let now = Instant::now();
                let mut words = line.splitn(3, ' ');
                match (words.next(), words.next(), words.next()) {
                    (Some(name), Some("ok"), _) => book.with(name, |m| {
                        m.reachable.get_or_insert(now);
                    }),
                    (Some(name), Some(_), why) => book.with(name, |m| {
                        m.failed
                            .get_or_insert_with(|| format!("probe: {}", why.unwrap_or("")));
                    }),
                    _ => {}
                }
            }
        });
        Ok(Self {
            child,
            stdin: Mutex::new(stdin),
            reader: Some(reader),
        })
    }

    fn target(&self, name: &str, addr: SocketAddr) -> Result<()> {
        let mut stdin = self.stdin.lock().unwrap_or_else(PoisonError::into_inner);
        writeln!(stdin, "{name} {addr}").context("writing to the probe")
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// The probe's side (`cluster-bench probe`): joins `cgroup`, then for each
/// `NAME ADDR` line on stdin connects to ADDR every 5 ms (200 ms timeout
/// each) for at most a minute and prints `NAME ok`, or `NAME fail WHY`.
pub fn probe_main(cgroup: Option<&Path>) -> Result<()> {
    if let Some(cg) = cgroup {
        let procs = cg.join("cgroup.procs");
        std::fs::write(&procs, std::process::id().to_string())
            .with_context(|| format!("joining {}", procs.display()))?;
    }
    for line in std::io::stdin().lines() {
        let line = line.context("reading stdin")?;
        let Some((name, addr)) = line.split_once(' ') else {
            continue;
        };
        let name = name.to_owned();
        let addr: SocketAddr = addr.trim().parse().context("a target address")?;
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut last = String::new();
            while started.elapsed() < POD_WITHIN {
                match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                    Ok(_) => {
                        println!("{name} ok");
                        return;
                    }
                    Err(e) => last = e.to_string(),
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            println!("{name} fail {last}");
        });
    }
    Ok(())
}

/// The latency phase's results.
#[derive(Debug, Clone, Default)]
pub struct Latency {
    pub nodes: usize,
    pub pods: usize,
    pub concurrency: usize,
    pub create_call: Summary,
    pub running: Summary,
    pub ready: Summary,
    pub sliced: Summary,
    pub reachable: Summary,
    /// Pods that missed a milestone within the limit.
    pub incomplete: usize,
    pub first_error: Option<String>,
    pub wall: Duration,
}

fn since(m: &Marks, at: Option<Instant>) -> Option<Duration> {
    at.map(|t| t.saturating_duration_since(m.created))
}

fn summary(marks: &[Marks], f: impl Fn(&Marks) -> Option<Duration>) -> Summary {
    let mut s = Samples::with_capacity(marks.len());
    for m in marks {
        if let Some(d) = f(m) {
            s.push(d);
        }
    }
    s.summary()
}

/// Each of `s.pods` pods (agnhost netexec) behind a Service of its own,
/// `s.pod_concurrency` in flight, timed from its create call.
pub fn latency(
    cluster: &mut Cluster,
    s: &Settings,
    rt: &tokio::runtime::Runtime,
    stop: &AtomicBool,
) -> Result<Latency> {
    const NS: &str = "latency";
    let book = Book::default();
    let client = rt.block_on(crate::services::api::client(cluster.kubeconfig()))?;
    let n = s.pods;
    let ips = rt.block_on(async {
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NS}}))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await?;
        let svcs: Api<Service> = Api::namespaced(client.clone(), NS);
        let (_, _, ips) = run_bounded(n, 16, |i| {
            let svcs = svcs.clone();
            async move {
                let svc: Service = serde_json::from_value(json!({
                    "metadata": {"name": format!("lat-{i}")},
                    "spec": {"selector": {"bench-pod": format!("lat-{i}")},
                             "ports": [{"port": SERVICE_PORT, "targetPort": POD_PORT}]},
                }))?;
                let made = svcs.create(&PostParams::default(), &svc).await?;
                Ok(made.spec.and_then(|s| s.cluster_ip).unwrap_or_default())
            }
        })
        .await?;
        anyhow::Ok(ips)
    })?;
    let addrs = ips
        .iter()
        .map(|ip| Ok(SocketAddr::new(ip.parse()?, SERVICE_PORT)))
        .collect::<Result<Vec<_>>>()
        .context("a Service's ClusterIP")?;
    let _watches = rt.block_on(async {
        let b = book.clone();
        let pods = watch(
            Api::<Pod>::namespaced(client.clone(), NS),
            watcher::Config::default(),
            move |p| saw_pod(&b, p, false),
        )
        .await?;
        let b = book.clone();
        let slices = watch(
            Api::<EndpointSlice>::namespaced(client.clone(), NS),
            watcher::Config::default(),
            move |sl| saw_slice(&b, sl),
        )
        .await?;
        anyhow::Ok(Watches(vec![pods, slices]))
    })?;
    let probe = Arc::new(Probe::start(cluster, &s.bench, &book)?);
    check_stop(stop)?;
    let pods: Api<Pod> = Api::namespaced(client, NS);
    let stopped = || check_stop(stop).is_err();
    let (wall, _, calls) = rt.block_on(run_bounded(n, s.pod_concurrency, |i| {
        let (pods, book, probe) = (pods.clone(), book.clone(), Arc::clone(&probe));
        let addr = addrs.get(i).copied();
        let name = format!("lat-{i}");
        let give_up = stopped();
        let task = async move {
            let addr = addr.context("no Service for this pod")?;
            if give_up {
                bail!("stopped");
            }
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": name, "labels": {"bench-pod": name}},
                "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                    "name": "netexec", "image": "registry.k8s.io/e2e-test-images/agnhost:2.53",
                    "args": ["netexec", format!("--http-port={POD_PORT}")],
                    "ports": [{"containerPort": POD_PORT}],
                }]},
            }))?;
            book.lock().insert(name.clone(), Marks::new(Instant::now()));
            probe.target(&name, addr)?;
            let call = Instant::now();
            pods.create(&PostParams::default(), &pod).await?;
            let call = call.elapsed();
            // The milestones are waited for here, bounded.
            let deadline = Instant::now() + POD_WITHIN;
            loop {
                let done = book.lock().get(&name).is_none_or(|m| {
                    m.failed.is_some()
                        || (m.running.is_some()
                            && m.ready.is_some()
                            && m.sliced.is_some()
                            && m.reachable.is_some())
                });
                if done || Instant::now() > deadline {
                    return anyhow::Ok(call);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        async move { task.await.map_err(|e| BenchError::Check(format!("{e:#}"))) }
    }))?;
    drop(probe);
    let marks: Vec<Marks> = book.lock().values().cloned().collect();
    let complete = |m: &Marks| {
        m.running.is_some() && m.ready.is_some() && m.sliced.is_some() && m.reachable.is_some()
    };
    let first_error = marks.iter().find_map(|m| m.failed.clone()).or_else(|| {
        marks
            .iter()
            .find(|m| !complete(m))
            .map(|m| format!("a pod still lacked a milestone after {POD_WITHIN:?}: {m:?}"))
    });
    Ok(Latency {
        nodes: cluster.nodes().len(),
        pods: n,
        concurrency: s.pod_concurrency,
        create_call: {
            let mut c = Samples::with_capacity(calls.len());
            calls.into_iter().for_each(|d| c.push(d));
            c.summary()
        },
        running: summary(&marks, |m| since(m, m.running)),
        ready: summary(&marks, |m| since(m, m.ready)),
        sliced: summary(&marks, |m| since(m, m.sliced)),
        reachable: summary(&marks, |m| since(m, m.reachable)),
        incomplete: marks.iter().filter(|m| !complete(m)).count(),
        first_error,
        wall,
    })
}

/// One stage of the scale-up across all pods.
#[derive(Debug, Clone, Default)]
pub struct Stage {
    pub name: &'static str,
    /// Pods that reached it.
    pub reached: usize,
    /// From the scale call until half, and all, of the replicas reached it.
    pub half: Option<Duration>,
    pub all: Option<Duration>,
    /// Per pod: from the previous stage to this one.
    pub step: Summary,
}

/// CPU a kind of component used during the scale-up.
#[derive(Debug, Clone, Default)]
pub struct CpuRow {
    pub name: String,
    /// The processes themselves.
    pub own: Duration,
    /// Helpers they ran to completion (CNI plugins, `unshare`, ...).
    pub children: Duration,
}

/// The scale phase's results.
#[derive(Debug, Clone, Default)]
pub struct Scale {
    pub nodes: usize,
    pub replicas: usize,
    pub limit: Duration,
    /// Building the cluster.
    pub cluster_up: Duration,
    pub stages: Vec<Stage>,
    /// Until every replica was Ready, when that happened within the limit.
    pub all_ready: Option<Duration>,
    /// The measured window: until all Ready, or the limit.
    pub window: Duration,
    pub cpu: Vec<CpuRow>,
    pub bench_cpu: Duration,
    /// Scaling back to 0: until no pod was left, or what was left.
    pub scale_down: Option<Duration>,
    pub left: usize,
    pub first_error: Option<String>,
}

fn cpu_by_component(cluster: &Cluster) -> HashMap<String, (Duration, Duration)> {
    let mut map: HashMap<String, (Duration, Duration)> = HashMap::new();
    for (name, pid) in component_pids(cluster) {
        if let Ok((own, children)) = cpu_times(Some(pid)) {
            let e = map.entry(name).or_default();
            e.0 += own;
            e.1 += children;
        }
    }
    map
}

/// A Deployment of `s.scale_replicas` pause pods, scaled from 0 on a
/// cluster of `s.scale_nodes` nodes; bounded by `s.scale_limit`.
pub fn scale(
    s: &Settings,
    rt: &tokio::runtime::Runtime,
    stop: &AtomicBool,
    say: fn(&str),
) -> Result<Scale> {
    let started = Instant::now();
    let (cluster, dir) = startup::build(s, s.scale_nodes)?;
    let cluster_up = started.elapsed();
    say(&format!(
        "scale: {} nodes up in {:.2} s",
        s.scale_nodes,
        cluster_up.as_secs_f64()
    ));
    let result = scale_on(&cluster, s, rt, stop, say).map(|mut r| {
        r.cluster_up = cluster_up;
        r
    });
    say("scale: taking the cluster down");
    drop(cluster);
    drop(dir);
    result
}

fn scale_on(
    cluster: &Cluster,
    s: &Settings,
    rt: &tokio::runtime::Runtime,
    stop: &AtomicBool,
    say: fn(&str),
) -> Result<Scale> {
    const NAME: &str = "scale";
    let n = s.scale_replicas;
    let book = Book::default();
    let client = rt.block_on(crate::services::api::client(cluster.kubeconfig()))?;
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let _watches = rt.block_on(async {
        let deploy: Deployment = serde_json::from_value(json!({
            "metadata": {"name": NAME},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": NAME}},
                "template": {"metadata": {"labels": {"app": NAME}}, "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.10"}],
                }}},
        }))?;
        deploys.create(&PostParams::default(), &deploy).await?;
        let b = book.clone();
        let w = watch(
            pods.clone(),
            watcher::Config::default().labels(&format!("app={NAME}")),
            move |p| saw_pod(&b, p, true),
        )
        .await?;
        anyhow::Ok(Watches(vec![w]))
    })?;
    let cpu0 = cpu_by_component(cluster);
    let bench0 = cpu_times(None)?.0;
    let t0 = Instant::now();
    rt.block_on(deploys.patch(
        NAME,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": n}})),
    ))?;
    let mut all_ready = None;
    let mut last_say = Instant::now();
    while t0.elapsed() < s.scale_limit && check_stop(stop).is_ok() {
        let ready = book.lock().values().filter(|m| m.ready.is_some()).count();
        if ready >= n {
            all_ready = Some(t0.elapsed());
            break;
        }
        if last_say.elapsed() > Duration::from_secs(10) {
            say(&format!(
                "scale: {ready} of {n} Ready after {:.0} s",
                t0.elapsed().as_secs_f64()
            ));
            last_say = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let window = t0.elapsed();
    let cpu1 = cpu_by_component(cluster);
    let bench_cpu = cpu_times(None)?.0.saturating_sub(bench0);
    let mut cpu: Vec<CpuRow> = cpu1
        .iter()
        .map(|(name, (own, ch))| {
            let (own0, ch0) = cpu0.get(name).copied().unwrap_or_default();
            CpuRow {
                name: name.clone(),
                own: own.saturating_sub(own0),
                children: ch.saturating_sub(ch0),
            }
        })
        .collect();
    cpu.sort_by(|a, b| a.name.cmp(&b.name));
    let marks: Vec<Marks> = book.lock().values().cloned().collect();
    let stages = stages(&marks, t0, n);
    let first_error = marks.iter().find_map(|m| m.failed.clone());

    say("scale: back to 0");
    rt.block_on(deploys.patch(
        NAME,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 0}})),
    ))?;
    let down0 = Instant::now();
    let limit = Duration::from_secs(120);
    let (scale_down, left) = rt.block_on(async {
        let lp = ListParams::default().labels(&format!("app={NAME}"));
        loop {
            let left = pods.list_metadata(&lp).await?.items.len();
            if left == 0 {
                return anyhow::Ok((Some(down0.elapsed()), 0));
            }
            if down0.elapsed() > limit || check_stop(stop).is_err() {
                return Ok((None, left));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })?;
    Ok(Scale {
        nodes: cluster.nodes().len(),
        replicas: n,
        limit: s.scale_limit,
        cluster_up: Duration::ZERO,
        stages,
        all_ready,
        window,
        cpu,
        bench_cpu,
        scale_down,
        left,
        first_error,
    })
}

/// The stages every replica goes through, in order, with when half and all
/// of `n` got there (from `t0`) and each pod's step from the one before.
fn stages(marks: &[Marks], t0: Instant, n: usize) -> Vec<Stage> {
    type Pick = fn(&Marks) -> Option<Instant>;
    let picks: [(&'static str, Pick); 5] = [
        ("created (ReplicaSet controller)", |m| Some(m.created)),
        ("scheduled (scheduler)", |m| m.scheduled),
        ("sandbox ready (netns + CNI ADD)", |m| m.sandbox),
        ("Running (containers started)", |m| m.running),
        ("Ready", |m| m.ready),
    ];
    let mut out = Vec::new();
    for (k, (name, pick)) in picks.iter().enumerate() {
        let mut at: Vec<Duration> = marks
            .iter()
            .filter_map(|m| pick(m).map(|t| t.saturating_duration_since(t0)))
            .collect();
        at.sort_unstable();
        let nth = |count: usize| {
            count
                .checked_sub(1)
                .and_then(|i| at.get(i))
                .copied()
                .filter(|_| at.len() >= count)
        };
        let mut step = Samples::with_capacity(marks.len());
        for m in marks {
            let prev = if k == 0 {
                Some(t0)
            } else {
                picks.get(k - 1).and_then(|(_, p)| p(m))
            };
            if let (Some(a), Some(b)) = (prev, pick(m)) {
                step.push(b.saturating_duration_since(a));
            }
        }
        out.push(Stage {
            name,
            reached: at.len(),
            half: nth(n.div_ceil(2)),
            all: nth(n),
            step: step.summary(),
        });
    }
    out
}
