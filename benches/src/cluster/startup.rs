//! Bringing clusters up: through the library several times per node
//! count, once through the `ferry` CLI, and the idle memory of the
//! processes a 3-node cluster runs.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use ferry_cluster::components::Binaries;
use ferry_cluster::{Cluster, Settings as ClusterSettings};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use tempfile::TempDir;

use super::{Results, Settings, check_stop};
use crate::process::Rss;

/// How long a cluster may take to become usable.
const READY_WITHIN: Duration = Duration::from_secs(120);
/// How long the first pod may take to reach the apiserver.
const REACH_WITHIN: Duration = Duration::from_secs(30);
/// The pod that proves the cluster usable: DNS, the agent's ClusterIP
/// translation and the apiserver's answer, from inside a pod. The
/// container runs the node's own `sh` and `curl`; any HTTP answer (401
/// included) makes curl exit 0.
const REACH_POD: &str = "reach-kubernetes";
const REACH_SCRIPT: &str = "until curl -sk -o /dev/null --max-time 1 \
     https://kubernetes.default.svc.cluster.local/; do sleep 0.05; done";

/// One `Cluster::up` run.
#[derive(Debug, Clone)]
pub struct UpRun {
    pub nodes: usize,
    /// `Cluster::up` returned: nodes Ready, agents healthy, DNS answering.
    pub up: Duration,
    /// The first pod reached `kubernetes.default` (from the same start);
    /// None when it did not (or an earlier run's did not, so it was not
    /// tried again).
    pub usable: Option<Duration>,
    /// Dropping the cluster (everything stopped and removed).
    pub down: Duration,
}

/// One `ferry up` through the CLI.
#[derive(Debug, Clone)]
pub struct CliRun {
    pub nodes: usize,
    /// `ferry up` from spawn to exit.
    pub process: Duration,
    /// The first pod reached `kubernetes.default` (from the same start).
    pub usable: Option<Duration>,
    /// `ferry down --purge` from spawn to exit.
    pub down: Duration,
}

/// Resident memory of one kind of component, its descendants included.
#[derive(Debug, Clone, Default)]
pub struct MemRow {
    pub processes: usize,
    pub rss_kib: u64,
    pub pss_kib: u64,
}

/// The idle memory of a cluster's processes.
#[derive(Debug, Clone, Default)]
pub struct Memory {
    pub nodes: usize,
    pub idle: Duration,
    /// By component name (`apiserver`, `agent`, `node`, `dns`).
    pub rows: BTreeMap<String, MemRow>,
    /// This process: the cluster's supervisor and loopback forwarder when
    /// run as `ferry up`, plus the harness.
    pub bench_rss_kib: u64,
}

impl Memory {
    pub fn total(&self) -> MemRow {
        self.rows.values().fold(MemRow::default(), |a, r| MemRow {
            processes: a.processes + r.processes,
            rss_kib: a.rss_kib + r.rss_kib,
            pss_kib: a.pss_kib + r.pss_kib,
        })
    }
}

static COUNT: AtomicUsize = AtomicUsize::new(0);

/// A cluster name no other run uses (at most 20 characters).
pub fn unique_name() -> String {
    format!(
        "cb{}x{}",
        std::process::id() % 1_000_000,
        COUNT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Builds a cluster of `nodes` nodes with its data in a temporary
/// directory and the apiserver on a free loopback port.
pub fn build(s: &Settings, nodes: usize) -> Result<(Cluster, TempDir)> {
    let dir = tempfile::Builder::new()
        .prefix("ferry-cluster-bench-")
        .tempdir()
        .context("creating a data directory")?;
    let bins = Binaries::in_dir(&s.bin_dir)?;
    let mut settings = ClusterSettings::new(&unique_name(), nodes, dir.path().join("data"), bins);
    settings.api_port = Some(0);
    settings.ready_timeout = READY_WITHIN;
    let cluster = Cluster::up(settings).context("Cluster::up")?;
    Ok((cluster, dir))
}

/// Creates the pod that reaches `kubernetes.default` and waits until it
/// Succeeded.
pub async fn reach_kubernetes(client: kube::Client) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": REACH_POD},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "curl", "image": "busybox",
                            "command": ["sh", "-c", REACH_SCRIPT]}],
        },
    }))?;
    pods.create(&PostParams::default(), &pod)
        .await
        .context("creating the first pod")?;
    let done = |p: Option<&Pod>| {
        p.and_then(|p| p.status.as_ref())
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|ph| ph == "Succeeded" || ph == "Failed")
    };
    let waited = tokio::time::timeout(
        REACH_WITHIN,
        kube::runtime::wait::await_condition(pods.clone(), REACH_POD, done),
    )
    .await;
    let pod = match waited {
        Ok(r) => r.context("watching the first pod")?,
        Err(_) => {
            let now = pods.get_opt(REACH_POD).await.ok().flatten();
            // Its retry loop would keep running: stop it.
            let _ = pods
                .delete(REACH_POD, &DeleteParams::default().grace_period(0))
                .await;
            bail!(
                "the first pod did not reach kubernetes.default within {REACH_WITHIN:?}; its status: {}",
                status_of(now.as_ref())
            );
        }
    };
    let phase = pod
        .as_ref()
        .and_then(|p| p.status.as_ref())
        .and_then(|s| s.phase.as_deref());
    if phase != Some("Succeeded") {
        bail!("the first pod ended {phase:?}: {}", status_of(pod.as_ref()));
    }
    Ok(())
}

fn status_of(pod: Option<&Pod>) -> String {
    pod.and_then(|p| p.status.as_ref())
        .and_then(|s| serde_json::to_string(s).ok())
        .unwrap_or_else(|| "(none)".into())
}

/// The startup runs; returns the last cluster of the largest node count,
/// still up, for the memory and pod phases, with its data directory (drop
/// the cluster first).
pub fn ups(
    s: &Settings,
    rt: &tokio::runtime::Runtime,
    stop: &AtomicBool,
    say: fn(&str),
    r: &mut Results,
) -> Option<(Cluster, TempDir)> {
    let largest = s.up_nodes.iter().copied().max().unwrap_or(0);
    let mut kept = None;
    // Once the first pod failed to get through, later runs do not wait
    // for it again (the failure is reported once).
    let mut reach_failed = false;
    for &nodes in &s.up_nodes {
        for run in 0..s.up_runs {
            if check_stop(stop).is_err() {
                return None;
            }
            let keep = nodes == largest && run + 1 == s.up_runs;
            let started = Instant::now();
            let Some((cluster, dir)) = r.record("up", build(s, nodes)) else {
                continue;
            };
            let up = started.elapsed();
            let usable = if reach_failed {
                None
            } else {
                let kc = cluster.kubeconfig().to_path_buf();
                let reached = rt.block_on(async {
                    let client = crate::services::api::client(&kc).await?;
                    reach_kubernetes(client).await
                });
                let usable = started.elapsed();
                reach_failed = r.record("first pod", reached).is_none();
                (!reach_failed).then_some(usable)
            };
            say(&format!(
                "up: {nodes} node(s), run {}: up {:.2} s, usable {}",
                run + 1,
                up.as_secs_f64(),
                usable.map_or_else(|| "–".into(), |u| format!("{:.2} s", u.as_secs_f64()))
            ));
            if keep {
                kept = Some((cluster, dir, up, usable));
                continue;
            }
            let t = Instant::now();
            drop(cluster);
            r.ups.push(UpRun {
                nodes,
                up,
                usable,
                down: t.elapsed(),
            });
            drop(dir);
        }
    }
    kept.map(|(cluster, dir, up, usable)| {
        // Its teardown time is not measured: it runs the later phases.
        r.ups.push(UpRun {
            nodes: largest,
            up,
            usable,
            down: Duration::ZERO,
        });
        (cluster, dir)
    })
}

/// Every process's parent, from `/proc`.
fn parents() -> HashMap<u32, u32> {
    let mut map = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return map;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name: state, then ppid.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok());
        if let Some(ppid) = ppid {
            map.insert(pid, ppid);
        }
    }
    map
}

/// `root` and every process below it.
pub fn tree(root: u32, parents: &HashMap<u32, u32>) -> Vec<u32> {
    let mut out = vec![root];
    let mut i = 0;
    while let Some(&p) = out.get(i) {
        out.extend(parents.iter().filter(|(_, pp)| **pp == p).map(|(c, _)| *c));
        i += 1;
    }
    out
}

/// Proportional set size (shared pages split among their users), in KiB.
fn pss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
}

/// The cluster's processes by name: its own as it reports them
/// (`apiserver`, `node`), and Ferry's pods (`agent`, `dns`: `deploy/`'s,
/// found among the node runtimes' descendants by the binary they run).
pub fn component_pids(cluster: &Cluster) -> Vec<(String, u32)> {
    let mut out: Vec<(String, u32)> = cluster
        .info()
        .components
        .into_iter()
        .filter_map(|c| c.pid.map(|pid| (c.name, pid)))
        .collect();
    let parents = parents();
    let runtimes: Vec<u32> = out
        .iter()
        .filter(|(n, _)| n == "node")
        .map(|(_, p)| *p)
        .collect();
    for runtime in runtimes {
        for pid in tree(runtime, &parents) {
            if let Some(name) = ferry_pod(pid) {
                out.push((name.to_owned(), pid));
            }
        }
    }
    out
}

/// `agent` or `dns` when `pid` runs the image's ferry-agent (not one of
/// its short-lived subcommands) or ferry-dns.
fn ferry_pod(pid: u32) -> Option<&'static str> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let mut args = cmdline.split(|b| *b == 0).filter(|a| !a.is_empty());
    match args.next()? {
        b"/usr/bin/ferry-agent" if args.next().is_none() => Some("agent"),
        b"/usr/bin/ferry-dns" => Some("dns"),
        _ => None,
    }
}

/// The pid of `node`'s agent (the DaemonSet's pod).
pub fn agent_pid(cluster: &Cluster, node: &str) -> Option<u32> {
    let runtime = cluster
        .info()
        .components
        .into_iter()
        .find(|c| c.name == "node" && c.node.as_deref() == Some(node))?
        .pid?;
    tree(runtime, &parents())
        .into_iter()
        .find(|p| ferry_pod(*p) == Some("agent"))
}

/// Reads every component's RSS and PSS (with its descendants) after the
/// cluster idled for `idle`.
pub fn memory(cluster: &Cluster, idle: Duration, stop: &AtomicBool) -> Result<Memory> {
    let deadline = Instant::now() + idle;
    while Instant::now() < deadline {
        check_stop(stop)?;
        std::thread::sleep(Duration::from_millis(100));
    }
    let parents = parents();
    let mut m = Memory {
        nodes: cluster.nodes().len(),
        idle,
        ..Default::default()
    };
    let pids = component_pids(cluster);
    // Ferry's pods descend from their node's runtime: counted once, in
    // their own rows.
    let pods: std::collections::HashSet<u32> = pids
        .iter()
        .filter(|(n, _)| n == "agent" || n == "dns")
        .flat_map(|(_, p)| tree(*p, &parents))
        .collect();
    for (name, pid) in pids {
        let own = name == "agent" || name == "dns";
        let row = m.rows.entry(name).or_default();
        for p in tree(pid, &parents) {
            if !own && pods.contains(&p) {
                continue;
            }
            // A process may exit between the listing and the read.
            if let Ok(rss) = Rss::of(p) {
                row.processes += 1;
                row.rss_kib += rss.now_kib;
                row.pss_kib += pss_kib(p).unwrap_or(0);
            }
        }
    }
    m.bench_rss_kib = Rss::of(std::process::id())?.now_kib;
    Ok(m)
}

/// Runs `ferry` with `args`, timed from spawn to exit; fails unless it
/// exits 0 within `limit`.
fn ferry(bin_dir: &Path, args: &[&str], limit: Duration) -> Result<Duration> {
    let exe = bin_dir.join("ferry");
    let started = Instant::now();
    let mut child = Command::new(&exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    loop {
        if let Some(status) = child.try_wait()? {
            let took = started.elapsed();
            let out = child.wait_with_output()?;
            if !status.success() {
                bail!(
                    "`ferry {}` failed ({status}): {}{}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            return Ok(took);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`ferry {}` did not finish within {limit:?}", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A cluster started by `ferry up`, taken down (with its data) on drop.
struct CliCluster {
    bin_dir: PathBuf,
    name: String,
    /// Cleared once the run took it down itself.
    armed: bool,
}

impl Drop for CliCluster {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let args = ["down", "--name", &self.name, "--purge"];
        if let Err(e) = ferry(&self.bin_dir, &args, Duration::from_secs(120)) {
            eprintln!("cluster-bench: {e:#}");
        }
    }
}

/// `ferry up --nodes 3` through the CLI, then the first pod, then `ferry
/// down --purge`.
/// `try_reach` false skips the first pod (it failed in the library runs).
pub fn cli(
    s: &Settings,
    rt: &tokio::runtime::Runtime,
    stop: &AtomicBool,
    try_reach: bool,
) -> Result<CliRun> {
    check_stop(stop)?;
    let nodes = 3;
    let dir = tempfile::Builder::new()
        .prefix("ferry-cluster-bench-cli-")
        .tempdir()
        .context("creating a data directory")?;
    let data = dir.path().join("data");
    let name = unique_name();
    let nodes_arg = nodes.to_string();
    let bin_dir = s.bin_dir.to_string_lossy().into_owned();
    let data_arg = data.to_string_lossy().into_owned();
    let args = [
        "up",
        "--name",
        &name,
        "--nodes",
        &nodes_arg,
        "--data-dir",
        &data_arg,
        "--api-port",
        "0",
        "--bin-dir",
        &bin_dir,
    ];
    let mut guard = CliCluster {
        bin_dir: s.bin_dir.clone(),
        name: name.clone(),
        armed: true,
    };
    let started = Instant::now();
    let process = ferry(&s.bin_dir, &args, READY_WITHIN + Duration::from_secs(30))?;
    let reached = rt.block_on(async {
        if !try_reach {
            bail!("not tried: the first pod failed in the library runs");
        }
        let client = crate::services::api::client(&data.join("kubeconfig")).await?;
        reach_kubernetes(client).await
    });
    let usable = match reached {
        Ok(()) => Some(started.elapsed()),
        Err(e) => {
            eprintln!("cluster-bench: cli: {e:#}");
            None
        }
    };
    // Taken down here, timed, rather than by the guard.
    guard.armed = false;
    let down = ferry(
        &s.bin_dir,
        &["down", "--name", &name, "--purge"],
        Duration::from_secs(120),
    );
    let down = down?;
    drop(dir);
    Ok(CliRun {
        nodes,
        process,
        usable,
        down,
    })
}
