//! How fast a pod's veth gets the agent's packet programs (issue 12: a new
//! pod is fully served by the dataplane before it is reported Ready; goal:
//! under 50 ms from the veth to the programs attached, driven by netlink
//! events).
//!
//! `ferry up` starts its agents with `--pod-devices fer` (ferry-cni's host
//! veth prefix: NetworkPolicy and per-packet translation at pods' veths),
//! and ferry-cni's ADD waits for the agent's pins before the pod runs. On
//! a 1-node cluster built by [`Cluster::up`] (an agent without the flag is
//! restarted with it), in node 0's namespace:
//! 1. N veth pairs, one at a time, as ferry-cni wires a pod: the host end
//!    (`ferbench<i>`) in the node, the peer in a namespace of the run's
//!    own, then the host end set up (one `ip -batch` per pair). Each is
//!    timed from the moment the link is visible in the node (its name
//!    resolves, polled every 100 µs while `ip` runs) until the agent has
//!    attached both programs (it pins each on the device's behalf as its
//!    classic TC filter's attach returns: from then on it runs on the
//!    device's packets; the ingress one comes first).
//! 2. Pods created through the API one at a time (ferry-node wires them
//!    with ferry-cni): when was each pod's veth first seen, when were the
//!    programs on it (the same pins, every 250 µs), and when did a watch
//!    see the pod Ready; the pods whose Ready came first (none, since ADD
//!    waits for the pins).
//!
//! Everything is bounded; the veths, the spare namespace, the replacement
//! agent and the pods go on drop (the cluster with them).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use ferry_cluster::Cluster;
use ferry_dataplane::bpf::{POD_TC_EGRESS, POD_TC_INGRESS};
use ferry_testbed::Netns;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::watcher;
use rustix::fd::OwnedFd;
use rustix::net::{AddressFamily, SocketType, netdevice};
use serde_json::json;

use super::pods::{Watches, watch};
use super::startup;
use super::{Settings, check_stop};
use crate::process::cpu_times;
use crate::stats::{Samples, Summary};

/// ferry-cni's host veth prefix (`ferry_cni::wiring::HOST_VETH_PREFIX`):
/// what a production agent is given as `--pod-devices`.
pub const POD_PREFIX: &str = "fer";
/// The bench's own veths: the prefix, then an index (no hex digit after
/// it, so never a ferry-cni name).
const VETH_NAME: &str = "ferbench";
/// How long one veth may wait for its programs.
const ATTACH_WITHIN: Duration = Duration::from_secs(5);
/// How often the kernel is asked, for the bench's veths and for pods'.
const VETH_POLL: Duration = Duration::from_micros(100);
const POD_POLL: Duration = Duration::from_micros(250);
/// How long one pod may take to be Ready.
const POD_WITHIN: Duration = Duration::from_secs(30);
const NS: &str = "attach";

/// The bench's veths, timed.
#[derive(Debug, Clone, Default)]
pub struct Veths {
    pub count: usize,
    /// Link visible → both programs attached (the kernel's view), and the
    /// ingress one alone (the agent attaches it first).
    pub attached: Summary,
    pub ingress: Summary,
    /// Link visible → both links pinned by the agent.
    pub pinned: Summary,
    /// `ip` (add + set up) returned → attached; 0 when attached first.
    pub after_ip: Summary,
    /// Veths without both programs within [`ATTACH_WITHIN`].
    pub missed: usize,
    /// CPU the agent used over the run, and the run's wall time.
    pub agent_cpu: Duration,
    pub wall: Duration,
}

/// Pods created through the API: their veth's programs against Ready.
#[derive(Debug, Clone, Default)]
pub struct PodsReady {
    pub pods: usize,
    /// Pods seen Ready, and whose veth was found (by the pod's route).
    pub ready: usize,
    pub found: usize,
    /// Ready seen before the programs were on the pod's veth (or never).
    pub ready_first: usize,
    /// The pod's veth first seen → programs attached.
    pub seen_to_attached: Summary,
    /// Programs attached → Ready seen, for the pods attached first.
    pub lead: Summary,
    pub lead_min: Option<Duration>,
}

/// The phase's results.
#[derive(Debug, Clone, Default)]
pub struct Attach {
    pub node: String,
    pub veths: Veths,
    pub pods: Option<PodsReady>,
    pub pods_error: Option<String>,
}

/// Builds a 1-node cluster, runs both measurements on it, takes it down.
pub fn run(
    s: &Settings,
    rt: &tokio::runtime::Runtime,
    stop: &AtomicBool,
    say: fn(&str),
) -> Result<Attach> {
    let (mut cluster, dir) = startup::build(s, 1)?;
    let result = run_on(&mut cluster, s, rt, stop, say);
    say("attach: taking the cluster down");
    drop(cluster);
    drop(dir);
    result
}

fn run_on(
    cluster: &mut Cluster,
    s: &Settings,
    rt: &tokio::runtime::Runtime,
    stop: &AtomicBool,
    say: fn(&str),
) -> Result<Attach> {
    let node = cluster
        .nodes()
        .first()
        .map(|n| n.name.clone())
        .context("the cluster has no nodes")?;
    let netns = cluster.world().node(0).netns.clone();
    let prefix = cluster.world().prefix().to_owned();
    let agent = Agent::find(cluster)?;
    say(&format!(
        "attach: node {node}'s agent with --pod-devices {POD_PREFIX}; {} veths",
        s.attach_veths
    ));
    let spare = Spare::create(&netns, &format!("{prefix}-attach"))?;
    let cpu0 = cpu_times(Some(agent.pid))?.0;
    let started = Instant::now();
    let timed = netns
        .in_netns(|| time_veths(s.attach_veths, &spare, &agent.links_dir, stop))
        .context("entering the node's namespace")??;
    let mut veths = summarize(&timed);
    veths.wall = started.elapsed();
    veths.agent_cpu = cpu_times(Some(agent.pid))?.0.saturating_sub(cpu0);
    say(&format!(
        "attach: {} veths, visible → attached p50 {:?}, max {:?}, {} missed",
        veths.count, veths.attached.p50, veths.attached.max, veths.missed
    ));
    // The pods' veths come after the bench's, which are gone by then.
    let after = timed.iter().filter_map(|t| t.index).max().unwrap_or(0);
    drop(spare);
    let (pods, pods_error) = if s.attach_pods == 0 {
        (None, None)
    } else {
        say(&format!(
            "attach: {} pods through the API, Ready against attached",
            s.attach_pods
        ));
        match pods_ready(
            cluster,
            &netns,
            &agent.links_dir,
            s.attach_pods,
            after,
            rt,
            stop,
        ) {
            Ok(p) => (Some(p), None),
            Err(e) => (None, Some(format!("{e:#}"))),
        }
    };
    Ok(Attach {
        node,
        veths,
        pods,
        pods_error,
    })
}

/// Node 0's agent: the DaemonSet's pod, which takes the pods' devices
/// (`FERRY_AGENT_POD_DEVICES` in `deploy/`).
struct Agent {
    pid: u32,
    links_dir: PathBuf,
}

impl Agent {
    fn find(cluster: &Cluster) -> Result<Self> {
        let node = cluster
            .nodes()
            .first()
            .context("the cluster has no nodes")?;
        let pid = startup::agent_pid(cluster, &node.name)
            .with_context(|| format!("{}'s agent is not running", node.name))?;
        Ok(Self {
            pid,
            // `ferry_dataplane::bpf::Layout::links_dir`.
            links_dir: ferry_dataplane::bpf::Layout {
                bpffs_root: node.bpffs_root.clone(),
                cgroup_root: PathBuf::new(),
            }
            .links_dir(),
        })
    }
}

/// A namespace of the run's own for the veths' peers (as a pod's), named
/// with the cluster's prefix (so a sweep finds it); deleted on drop with
/// the veths (a veth goes with its peer).
struct Spare {
    node: Netns,
    name: String,
    /// The bench's veths made so far (host ends, in the node).
    made: Mutex<Vec<String>>,
}

impl Spare {
    fn create(node: &Netns, name: &str) -> Result<Self> {
        let out = Command::new("ip")
            .args(["netns", "add", name])
            .output()
            .context("running ip netns add")?;
        if !out.status.success() {
            bail!(
                "ip netns add {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Self {
            node: node.clone(),
            name: name.to_owned(),
            made: Mutex::new(Vec::new()),
        })
    }
}

impl Drop for Spare {
    fn drop(&mut self) {
        let made = std::mem::take(&mut *self.made.lock().unwrap_or_else(PoisonError::into_inner));
        if !made.is_empty() {
            let batch: String = made.iter().map(|n| format!("link del {n}\n")).collect();
            // `-force`: past the ones already gone.
            let deleted = self
                .node
                .command("ip")
                .args(["-force", "-batch", "-"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .and_then(|mut c| {
                    if let Some(mut stdin) = c.stdin.take() {
                        use std::io::Write as _;
                        stdin.write_all(batch.as_bytes())?;
                    }
                    c.wait()
                });
            if let Err(e) = deleted {
                eprintln!("cluster-bench: attach: deleting the veths: {e}");
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// One veth's marks, from the moment its link was visible.
#[derive(Debug, Clone, Default)]
struct Timed {
    index: Option<u32>,
    /// The ingress program (attached first).
    ingress: Option<Duration>,
    attached: Option<Duration>,
    pinned: Option<Duration>,
    /// `ip` returned (may be after the attach: then 0).
    after_ip: Option<Duration>,
}

/// Whether the agent has attached `program` to `dev`: its pin for the
/// device (`ferry_dataplane::bpf::pod_device_pins`), made as the attach
/// returns.
fn has_program(links_dir: &Path, dev: &str, program: &str) -> bool {
    links_dir.join(format!("{program}_{dev}")).exists()
}

fn attached(links_dir: &Path, dev: &str) -> bool {
    has_program(links_dir, dev, POD_TC_INGRESS) && has_program(links_dir, dev, POD_TC_EGRESS)
}

fn pinned(links_dir: &Path, dev: &str) -> bool {
    attached(links_dir, dev)
}

fn socket() -> Result<OwnedFd> {
    rustix::net::socket(AddressFamily::INET, SocketType::DGRAM, None)
        .context("a socket for interface lookups")
}

/// Makes and times `n` veths, one at a time; runs in the node's namespace
/// (`ip` inherits it).
fn time_veths(n: usize, spare: &Spare, links_dir: &Path, stop: &AtomicBool) -> Result<Vec<Timed>> {
    let sock = socket()?;
    // One warm-up pair, not counted: the task is up and attaching.
    let mut out = Vec::with_capacity(n);
    for i in 0..=n {
        check_stop(stop)?;
        let name = format!("{VETH_NAME}{i}");
        let batch = format!(
            "link add {name} type veth peer name p{i} netns {}\nlink set {name} up\n",
            spare.name
        );
        spare
            .made
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(name.clone());
        let mut ip = Command::new("ip")
            .args(["-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("running ip")?;
        {
            use std::io::Write as _;
            let mut stdin = ip.stdin.take().context("ip's stdin")?;
            stdin.write_all(batch.as_bytes())?;
        }
        let began = Instant::now();
        let mut visible: Option<Instant> = None;
        let mut returned: Option<Instant> = None;
        let mut t = Timed::default();
        loop {
            let now = Instant::now();
            if returned.is_none()
                && let Some(status) = ip.try_wait()?
            {
                returned = Some(now);
                if !status.success() {
                    let err = ip
                        .wait_with_output()
                        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                        .unwrap_or_default();
                    bail!("ip: {batch}: {status}: {err}");
                }
            }
            if visible.is_none()
                && let Ok(index) = netdevice::name_to_index(&sock, &name)
            {
                visible = Some(now);
                t.index = Some(index);
            }
            // Each mark is taken when its check returned: a query waits
            // for RTNL, which an attach holds through its RCU grace period.
            if let Some(v) = visible {
                if t.ingress.is_none() && has_program(links_dir, &name, POD_TC_INGRESS) {
                    t.ingress = Some(v.elapsed());
                }
                if t.ingress.is_some() && t.attached.is_none() && attached(links_dir, &name) {
                    t.attached = Some(v.elapsed());
                }
                if t.pinned.is_none() && pinned(links_dir, &name) {
                    t.pinned = Some(v.elapsed());
                }
            }
            if let (Some(r), Some(v), Some(a)) = (returned, visible, t.attached) {
                t.after_ip = Some((v + a).saturating_duration_since(r));
                if t.pinned.is_some() {
                    break;
                }
            }
            let waited = visible.unwrap_or(began);
            if now.saturating_duration_since(waited) > ATTACH_WITHIN {
                if visible.is_none() {
                    let _ = ip.kill();
                    bail!("{name} was not visible within {ATTACH_WITHIN:?}");
                }
                // The agent missed this one: counted, not waited for.
                while returned.is_none() && began.elapsed() < ATTACH_WITHIN * 2 {
                    if ip.try_wait()?.is_some() {
                        returned = Some(Instant::now());
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                break;
            }
            std::thread::sleep(VETH_POLL);
        }
        if i == 0 {
            if t.attached.is_none() {
                bail!(
                    "the agent did not attach to the first veth within {ATTACH_WITHIN:?}: --pod-devices is not working"
                );
            }
            continue;
        }
        out.push(t);
    }
    Ok(out)
}

fn summarize(timed: &[Timed]) -> Veths {
    let pick = |f: fn(&Timed) -> Option<Duration>| {
        let mut s = Samples::with_capacity(timed.len());
        timed.iter().filter_map(f).for_each(|d| s.push(d));
        s.summary()
    };
    Veths {
        count: timed.len(),
        attached: pick(|t| t.attached),
        ingress: pick(|t| t.ingress),
        pinned: pick(|t| t.pinned),
        after_ip: pick(|t| t.after_ip),
        missed: timed.iter().filter(|t| t.attached.is_none()).count(),
        ..Veths::default()
    }
}

/// What the pod poller saw of one `fer...` link.
#[derive(Debug, Clone, Copy)]
struct Seen {
    first: Instant,
    attached: Option<Instant>,
}

/// Follows the node's new `fer...` links (by interface index, which the
/// kernel hands out increasing, from `after` on) until `done`; notes when
/// each was first seen and when both programs were on it.
fn follow_pod_links(
    after: u32,
    links_dir: &Path,
    done: &AtomicBool,
) -> Result<HashMap<String, Seen>> {
    const WINDOW: u32 = 8;
    let sock = socket()?;
    let mut next = after + 1;
    // Past the links there already are (lo, the uplink, ...).
    let mut gap = 0;
    let mut probe = 1;
    while gap < 256 {
        if netdevice::index_to_name(&sock, probe).is_ok() {
            next = next.max(probe + 1);
            gap = 0;
        } else {
            gap += 1;
        }
        probe += 1;
    }
    let mut seen: HashMap<String, Seen> = HashMap::new();
    let mut pending: Vec<String> = Vec::new();
    while !done.load(Ordering::Relaxed) {
        let now = Instant::now();
        let mut k = 0;
        while k < WINDOW {
            if let Ok(name) = netdevice::index_to_name(&sock, next + k) {
                next += k + 1;
                k = 0;
                if name.starts_with(POD_PREFIX) && !name.starts_with(VETH_NAME) {
                    seen.insert(
                        name.clone(),
                        Seen {
                            first: now,
                            attached: None,
                        },
                    );
                    pending.push(name);
                }
                continue;
            }
            k += 1;
        }
        pending.retain(|name| {
            if !attached(links_dir, name) {
                return true;
            }
            if let Some(s) = seen.get_mut(name) {
                s.attached = Some(Instant::now());
            }
            false
        });
        std::thread::sleep(POD_POLL);
    }
    Ok(seen)
}

/// Per pod: when a watch first saw it Ready, and its address.
type Marks = Arc<Mutex<HashMap<String, (Option<Instant>, Option<String>)>>>;

/// Sets `flag` on drop (stops the poller on every way out).
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Creates `n` pause pods one at a time, each waited for until Ready;
/// compares each one's Ready with its veth's programs.
fn pods_ready(
    cluster: &Cluster,
    netns: &Netns,
    links_dir: &Path,
    n: usize,
    after: u32,
    rt: &tokio::runtime::Runtime,
    stop: &AtomicBool,
) -> Result<PodsReady> {
    let marks: Marks = Arc::default();
    let client = rt.block_on(crate::services::api::client(cluster.kubeconfig()))?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let _watches = rt.block_on(async {
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NS}}))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await?;
        let m = Arc::clone(&marks);
        let w = watch(pods.clone(), watcher::Config::default(), move |p: &Pod| {
            let now = Instant::now();
            let Some(name) = p.metadata.name.clone() else {
                return;
            };
            let status = p.status.as_ref();
            let ready = status
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            let ip = status.and_then(|s| s.pod_ip.clone());
            let mut m = m.lock().unwrap_or_else(PoisonError::into_inner);
            let e = m.entry(name).or_default();
            if ready {
                e.0.get_or_insert(now);
            }
            if e.1.is_none() {
                e.1 = ip;
            }
        })
        .await?;
        anyhow::Ok(Watches(vec![w]))
    })?;
    let done = Arc::new(AtomicBool::new(false));
    let poller = {
        let done = Arc::clone(&done);
        let links_dir = links_dir.to_owned();
        netns
            .thread(move || follow_pod_links(after, &links_dir, &done))
            .context("starting the link poller")?
    };
    let created = {
        let _stop_poller = SetOnDrop(&done);
        create_pods(&pods, &marks, n, rt, stop)
    };
    let seen = poller
        .join()
        .map_err(|_| anyhow::anyhow!("the link poller panicked"))?
        .context("entering the node's namespace")??;
    created?;
    // Which veth is whose: the node routes each pod address to its veth.
    let routes = netns
        .exec(["ip", "-o", "route", "show"])
        .context("listing node 0's routes")?;
    let dev_of = |ip: &str| {
        routes.lines().find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some(ip) && w.next() == Some("dev"))
                .then(|| w.next().map(str::to_owned))
                .flatten()
        })
    };
    let mut out = PodsReady {
        pods: n,
        ..PodsReady::default()
    };
    let (mut seen_to_attached, mut lead) = (Samples::new(), Samples::new());
    let marks = marks.lock().unwrap_or_else(PoisonError::into_inner).clone();
    for (ready, ip) in marks.values() {
        let Some(ready) = *ready else { continue };
        out.ready += 1;
        let link = ip.as_deref().and_then(dev_of).and_then(|d| seen.get(&d));
        let Some(link) = link else { continue };
        out.found += 1;
        match link.attached {
            Some(a) if a <= ready => {
                lead.push(ready - a);
                seen_to_attached.push(a.saturating_duration_since(link.first));
            }
            Some(a) => {
                out.ready_first += 1;
                seen_to_attached.push(a.saturating_duration_since(link.first));
            }
            None => out.ready_first += 1,
        }
    }
    out.seen_to_attached = seen_to_attached.summary();
    out.lead_min = lead.percentile(0.0);
    out.lead = lead.summary();
    let _ = rt.block_on(pods.delete_collection(
        &DeleteParams::default().grace_period(0),
        &Default::default(),
    ));
    Ok(out)
}

fn create_pods(
    pods: &Api<Pod>,
    marks: &Marks,
    n: usize,
    rt: &tokio::runtime::Runtime,
    stop: &AtomicBool,
) -> Result<()> {
    for i in 0..n {
        check_stop(stop)?;
        let name = format!("att-{i}");
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"terminationGracePeriodSeconds": 0,
                     "containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.10"}]},
        }))?;
        rt.block_on(pods.create(&PostParams::default(), &pod))
            .with_context(|| format!("creating pod {name}"))?;
        let deadline = Instant::now() + POD_WITHIN;
        loop {
            let ready = marks
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&name)
                .is_some_and(|m| m.0.is_some());
            if ready {
                break;
            }
            if Instant::now() > deadline {
                bail!("pod {name} was not Ready within {POD_WITHIN:?}");
            }
            check_stop(stop)?;
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    Ok(())
}
