//! The CNI benchmark: `ferry-cni` against Debian's reference `bridge` +
//! `host-local` plugins, on the same machine in the same run. ADD and DEL
//! latency over N pods done one at a time and over N pods done C at once,
//! for an IPv4 /16 range and for dual-stack.
//!
//! - [`exec`]: one command, timed from spawn to reap, bounded in time;
//! - [`lab`]: the namespaces (`fcb-<pid>-…`): a node per lane, a pool of pod
//!   namespaces, deleted on drop and swept when a run died;
//! - [`lane`]: one plugin with one address setup in its node, invoked as a
//!   runtime invokes it;
//! - [`phase`]: a measured phase (sequential, or with worker threads);
//! - [`report`]: the markdown table.
//!
//! The pods' namespaces are made before anything is timed and reused by
//! every lane (a DEL leaves them empty, which the run checks). The same
//! commands are also timed with `/bin/true` and with `VERSION` in place of
//! the plugin's work: the floor that process start-up and `nsenter` put
//! under every number.

pub mod exec;
pub mod lab;
pub mod lane;
pub mod phase;
pub mod report;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lab::{Lab, veth_count};
use lane::{Binaries, Lane, check_unique};
use phase::Phase;

use crate::{BenchError, Result};

/// The plugins compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plugin {
    Ferry,
    /// `bridge` with `host-local` IPAM.
    Reference,
}

impl Plugin {
    pub const ALL: [Plugin; 2] = [Plugin::Ferry, Plugin::Reference];

    pub fn name(self) -> &'static str {
        match self {
            Plugin::Ferry => "ferry-cni",
            Plugin::Reference => "bridge + host-local",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Plugin::Ferry => "ferry",
            Plugin::Reference => "ref",
        }
    }
}

/// The address families pods get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stack {
    /// One IPv4 address from a /16.
    V4,
    /// One IPv4 address from the /16 and one IPv6 address from a /64.
    Dual,
}

impl Stack {
    pub fn name(self) -> &'static str {
        match self {
            Stack::V4 => "IPv4",
            Stack::Dual => "dual-stack",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Stack::V4 => "v4",
            Stack::Dual => "dual",
        }
    }

    /// Addresses per pod.
    pub fn families(self) -> usize {
        match self {
            Stack::V4 => 1,
            Stack::Dual => 2,
        }
    }
}

/// The CNI operations timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Add,
    Del,
}

impl Op {
    /// `CNI_COMMAND`.
    pub fn command(self) -> &'static str {
        match self {
            Op::Add => "ADD",
            Op::Del => "DEL",
        }
    }
}

/// What the benchmark does.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Pods per phase.
    pub pods: usize,
    /// Operations in flight in the concurrent phases.
    pub concurrency: usize,
    /// Untimed ADD/DEL pairs per lane first.
    pub warmup: usize,
    /// Passes over every phase; their samples are pooled.
    pub rounds: usize,
    pub stacks: Vec<Stack>,
    /// `cniVersion` of both configs.
    pub cni_version: String,
    /// Time limit of one invocation.
    pub call_timeout: Duration,
    /// Pause before each timed phase, so one phase's aftermath (the kernel
    /// finishing deletions) does not land in the next.
    pub settle: Duration,
}

/// Everything measured for one lane.
#[derive(Debug, Clone)]
pub struct LaneRun {
    pub plugin: Plugin,
    pub stack: Stack,
    pub add_seq: Phase,
    pub del_seq: Phase,
    pub add_par: Phase,
    pub del_par: Phase,
}

/// A floor command timed one at a time and C at once.
#[derive(Debug, Clone)]
pub struct Floor {
    pub label: String,
    pub seq: Phase,
    pub par: Phase,
}

/// The whole run's measurements.
#[derive(Debug, Clone, Default)]
pub struct CniRun {
    pub lanes: Vec<LaneRun>,
    pub floors: Vec<Floor>,
    /// `/proc/loadavg`'s first three fields before and after.
    pub load_before: String,
    pub load_after: String,
}

impl CniRun {
    pub fn lane(&self, plugin: Plugin, stack: Stack) -> Option<&LaneRun> {
        self.lanes
            .iter()
            .find(|l| l.plugin == plugin && l.stack == stack)
    }
}

/// The load averages, for the report.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Runs the benchmark: makes the lab, warms up, times the floors and every
/// lane's phases, checks that nothing leaked, and deletes the lab (also on
/// error or panic). `stop` ends it early (with an error) at the next
/// operation; `say` gets progress lines.
pub fn run(s: &Settings, bin: &Binaries, stop: &AtomicBool, say: &dyn Fn(&str)) -> Result<CniRun> {
    if s.pods == 0 || s.concurrency == 0 || s.rounds == 0 || s.stacks.is_empty() {
        return Err(BenchError::Check(
            "pods, concurrency, rounds and stacks must not be empty".into(),
        ));
    }
    let mut lab = Lab::new()?;
    let measured = measure(s, bin, stop, say, &mut lab);
    // Deleting the namespaces is part of the run: a leftover is an error.
    let closed = lab.close();
    let run = measured?;
    closed?;
    Ok(run)
}

fn measure(
    s: &Settings,
    bin: &Binaries,
    stop: &AtomicBool,
    say: &dyn Fn(&str),
    lab: &mut Lab,
) -> Result<CniRun> {
    let mut out = CniRun {
        load_before: load_average(),
        ..Default::default()
    };
    let mut lanes = Vec::new();
    for &stack in &s.stacks {
        for plugin in Plugin::ALL {
            let slug = format!("{}-{}", plugin.slug(), stack.slug());
            let node = lab.add_node(&slug)?;
            let dir = lab.state_dir().join(&slug);
            lanes.push(Lane::new(
                plugin,
                stack,
                node,
                bin,
                &s.cni_version,
                &dir,
                s.call_timeout,
            )?);
        }
    }
    say(&format!(
        "{} node namespaces ready; making {} pod namespaces",
        lanes.len(),
        s.pods
    ));
    lab.ensure_pods(s.pods.max(s.warmup))?;
    let mut pass: u32 = 0;

    for lane in &lanes {
        say(&format!(
            "{}: warming up ({} ADD/DEL)",
            lane.label(),
            s.warmup
        ));
        pass += 1;
        for i in 0..s.warmup {
            let pod = lab.pod(i)?;
            lane.invoke(Op::Add, pod, pass, i, stop)?;
            lane.invoke(Op::Del, pod, pass, i, stop)?;
        }
        check_clean(lane)?;
    }

    let floor_node = lanes
        .first()
        .map(|l| l.node.clone())
        .ok_or_else(|| BenchError::Check("no lanes".into()))?;
    out.floors = floors(s, bin, &floor_node, stop, say)?;

    let mut runs: Vec<LaneRun> = lanes
        .iter()
        .map(|l| LaneRun {
            plugin: l.plugin,
            stack: l.stack,
            add_seq: Phase::default(),
            del_seq: Phase::default(),
            add_par: Phase::default(),
            del_par: Phase::default(),
        })
        .collect();
    for round in 0..s.rounds {
        // Alternate which plugin goes first (and, round by round, which
        // address setup), so neither always inherits the other's aftermath
        // or meets the machine in the same state.
        let mut stacks = s.stacks.clone();
        if round % 2 == 1 {
            stacks.reverse();
        }
        for (k, &stack) in stacks.iter().enumerate() {
            for (m, concurrency) in [1, s.concurrency].into_iter().enumerate() {
                let mut order = Plugin::ALL;
                if (round + k + m) % 2 == 1 {
                    order.reverse();
                }
                for plugin in order {
                    let (idx, lane) = lanes
                        .iter()
                        .enumerate()
                        .find(|(_, l)| l.plugin == plugin && l.stack == stack)
                        .ok_or_else(|| BenchError::Check("lane missing".into()))?;
                    pass += 1;
                    say(&format!(
                        "round {}/{}: {}: {} pods, {} at once",
                        round + 1,
                        s.rounds,
                        lane.label(),
                        s.pods,
                        concurrency
                    ));
                    let (add, del) = add_then_del(s, lab, lane, concurrency, pass, stop)?;
                    let p50 = |p: &Phase| {
                        p.summary().p50.map_or_else(
                            || "–".into(),
                            |d| format!("{:.2} ms", d.as_secs_f64() * 1e3),
                        )
                    };
                    say(&format!(
                        "  ADD p50 {}, DEL p50 {} (load {})",
                        p50(&add),
                        p50(&del),
                        load_average()
                    ));
                    let r = runs
                        .get_mut(idx)
                        .ok_or_else(|| BenchError::Check("lane run missing".into()))?;
                    if concurrency == 1 {
                        r.add_seq.absorb(add);
                        r.del_seq.absorb(del);
                    } else {
                        r.add_par.absorb(add);
                        r.del_par.absorb(del);
                    }
                }
            }
        }
    }
    out.lanes = runs;
    out.load_after = load_average();
    Ok(out)
}

/// One timed pass of a lane: ADD every pod, check, DEL every pod, check.
fn add_then_del(
    s: &Settings,
    lab: &Lab,
    lane: &Lane,
    concurrency: usize,
    pass: u32,
    stop: &AtomicBool,
) -> Result<(Phase, Phase)> {
    std::thread::sleep(s.settle);
    let (add, ips) = phase::run(s.pods, concurrency, stop, |i| {
        lane.invoke(Op::Add, lab.pod(i)?, pass, i, stop)
    })?;
    check_unique(&lane.label(), &ips)?;
    let veths = veth_count(&lane.node)?;
    let reserved = lane.reserved();
    let want = s.pods * lane.stack.families();
    if veths != s.pods || reserved != want {
        return Err(BenchError::Check(format!(
            "{} after {} ADDs: {veths} veths in the node (expected {}), {reserved} addresses \
             reserved (expected {want})",
            lane.label(),
            s.pods,
            s.pods
        )));
    }
    std::thread::sleep(s.settle);
    let (del, _) = phase::run(s.pods, concurrency, stop, |i| {
        lane.invoke(Op::Del, lab.pod(i)?, pass, i, stop)
    })?;
    check_clean(lane)?;
    Ok((add, del))
}

/// No veth left in the lane's node and no address reserved.
fn check_clean(lane: &Lane) -> Result<()> {
    let veths = veth_count(&lane.node)?;
    let reserved = lane.reserved();
    if veths != 0 || reserved != 0 {
        return Err(BenchError::Check(format!(
            "{} after DEL: {veths} veths left in the node, {reserved} addresses still reserved",
            lane.label()
        )));
    }
    Ok(())
}

/// Times the floor commands in `node`: `nsenter … /bin/true`, and each
/// plugin binary's `VERSION` (process start-up, config parsing, no
/// netlink).
fn floors(
    s: &Settings,
    bin: &Binaries,
    node: &ferry_testbed::Netns,
    stop: &AtomicBool,
    say: &dyn Fn(&str),
) -> Result<Vec<Floor>> {
    let truth = ["/bin/true", "/usr/bin/true"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("true");
    let version_input = serde_json::to_vec(&serde_json::json!({ "cniVersion": s.cni_version }))?;
    let mut specs: Vec<(String, std::path::PathBuf, bool)> =
        vec![(format!("nsenter + {truth}"), truth.into(), false)];
    for (name, path) in [
        ("ferry-cni", bin.ferry.clone()),
        ("bridge", bin.bridge()),
        ("host-local", bin.host_local()),
    ] {
        specs.push((format!("nsenter + {name} VERSION"), path, true));
    }
    let mut out = Vec::new();
    for (label, program, version) in specs {
        say(&format!("floor: {label}"));
        let once = |_: usize| -> Result<(Duration, ())> {
            let mut cmd: Command = node.command(&program);
            if version {
                cmd.env_clear().env("CNI_COMMAND", "VERSION");
            }
            let input: &[u8] = if version { &version_input } else { b"" };
            let t = exec::run_timed(&mut cmd, input, s.call_timeout, stop)?;
            if !t.status.success() {
                return Err(BenchError::Check(format!(
                    "{label} failed ({}): {} {}",
                    t.status,
                    t.stdout_text(),
                    t.stderr_text()
                )));
            }
            Ok((t.wall, ()))
        };
        phase::run(s.warmup.max(1), 1, stop, once)?;
        let (seq, _) = phase::run(s.pods, 1, stop, once)?;
        let (par, _) = phase::run(s.pods, s.concurrency, stop, once)?;
        out.push(Floor { label, seq, par });
    }
    if stop.load(Ordering::Relaxed) {
        return Err(BenchError::Check("the run was stopped".into()));
    }
    Ok(out)
}
