//! Runs cases: each step against the cluster (kubectl) and the model at
//! once; each check probes every pod from every pod, to its address and to
//! its Service, and compares with the model's table, re-probing only the
//! cells that differ (a bounded number of times: enforcement takes a
//! moment to land) before reporting expected, observed and their
//! difference as upstream's reachability output does.

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use super::cases::{Env, Expect, Step};
use super::model::{Model, Proto, Table};
use super::probe::{Outcome, Prober, Spec};
use super::world;
use crate::common::TestCluster;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    PodIp,
    Service,
}

impl Target {
    fn describe(self) -> &'static str {
        match self {
            Target::PodIp => "pod IPs",
            Target::Service => "Service ClusterIPs",
        }
    }
}

pub struct Runner<'a> {
    pub c: &'a TestCluster,
    pub prober: Prober,
    pub base: Model,
    pub env: Env,
    /// Re-probes of differing cells before a check fails.
    pub retries: usize,
    pub retry_pause: Duration,
    /// Probes run, for the report.
    pub probes: std::cell::Cell<usize>,
}

/// Whether an outcome is what the model says for a cell: allowed = the
/// destination pod answered; denied = no answer at all (a dropped SYN or
/// datagram, never an RST).
pub fn cell_ok(expected: bool, outcome: &Outcome, dst_name: &str) -> bool {
    match (expected, outcome) {
        (true, Outcome::Ok(reply)) => reply == dst_name,
        (false, Outcome::TimedOut) => true,
        _ => false,
    }
}

struct Tab {
    port: u16,
    proto: Proto,
    target: Target,
    expected: Table,
    observed: Vec<Vec<Outcome>>,
}

impl Runner<'_> {
    /// Runs a case from the world's base state; `Err` holds the report.
    pub fn run_case(&self, steps: &[Step]) -> Result<(), String> {
        self.run_steps(steps, true)
    }

    /// [`run_case`](Self::run_case), with the checks left out unless
    /// `probe`.
    pub fn run_steps(&self, steps: &[Step], probe: bool) -> Result<(), String> {
        let mut model = self.base.clone();
        for (i, step) in steps.iter().enumerate() {
            follow(&mut model, step);
            match step {
                Step::Apply(policies) => world::apply_list(
                    self.c,
                    policies.iter().map(|p| p.to_json()).collect(),
                    "netpol-policies.json",
                ),
                Step::Delete { namespace, name } => {
                    self.c
                        .k(&["delete", "networkpolicy", name, "-n", namespace]);
                }
                Step::LabelPod {
                    namespace,
                    pod,
                    key,
                    value,
                } => world::label_pod(self.c, namespace, pod, key, value.as_deref()),
                Step::LabelNs {
                    namespace,
                    key,
                    value,
                } => world::label_ns(self.c, namespace, key, value.as_deref()),
                Step::Check(exps) if probe => self
                    .check(&model, exps)
                    .map_err(|r| format!("step {} (check): {r}", i + 1))?,
                Step::Check(_) => {}
            }
        }
        Ok(())
    }

    fn specs(&self, tab: &Tab, cells: &[(usize, usize)]) -> Vec<Spec> {
        cells
            .iter()
            .map(|&(s, d)| {
                let pod = &self.prober.pods[d];
                let ip = match tab.target {
                    Target::PodIp => pod.ip,
                    Target::Service => pod.service_ip,
                };
                Spec {
                    src: s,
                    addr: SocketAddrV4::new(ip, tab.port),
                    udp: tab.proto == Proto::Udp,
                }
            })
            .collect()
    }

    /// Probes every (port, protocol) of `exps` to pods and Services and
    /// compares with `model`.
    pub fn check(&self, model: &Model, exps: &[Expect]) -> Result<(), String> {
        let n = self.prober.pods.len();
        let names: Vec<String> = self.prober.pods.iter().map(|p| p.name.clone()).collect();
        let mut tabs: Vec<Tab> = Vec::new();
        for e in exps {
            for target in [Target::PodIp, Target::Service] {
                tabs.push(Tab {
                    port: e.port,
                    proto: e.proto,
                    target,
                    expected: model.table(e.port, e.proto),
                    observed: vec![vec![Outcome::Failed("not probed".into()); n]; n],
                });
            }
        }
        let all: Vec<(usize, usize)> = (0..n).flat_map(|s| (0..n).map(move |d| (s, d))).collect();
        let mut todo: Vec<(usize, Vec<(usize, usize)>)> =
            (0..tabs.len()).map(|t| (t, all.clone())).collect();
        for round in 0..=self.retries {
            if round > 0 {
                std::thread::sleep(self.retry_pause);
            }
            let mut specs = Vec::new();
            let mut index = Vec::new();
            for (t, cells) in &todo {
                specs.extend(self.specs(&tabs[*t], cells));
                index.extend(cells.iter().map(|&c| (*t, c)));
            }
            self.probes.set(self.probes.get() + specs.len());
            let outcomes = self.prober.run(&specs);
            for ((t, (s, d)), o) in index.into_iter().zip(outcomes) {
                tabs[t].observed[s][d] = o;
            }
            todo = tabs
                .iter()
                .enumerate()
                .map(|(t, tab)| {
                    let bad: Vec<(usize, usize)> = all
                        .iter()
                        .copied()
                        .filter(|&(s, d)| {
                            !cell_ok(tab.expected.cells[s][d], &tab.observed[s][d], &names[d])
                        })
                        .collect();
                    (t, bad)
                })
                .filter(|(_, bad)| !bad.is_empty())
                .collect();
            if todo.is_empty() {
                return Ok(());
            }
        }
        let mut report = String::new();
        for (t, bad) in &todo {
            let tab = &tabs[*t];
            let ids = &tab.expected.names;
            let observed = Table::render(ids, |s, d| match &tab.observed[s][d] {
                Outcome::Ok(r) if *r != names[d] => "W".into(),
                o => o.short().into(),
            });
            let diff = Table::render(ids, |s, d| {
                if bad.contains(&(s, d)) { "X" } else { "." }.into()
            });
            let details: Vec<String> = bad
                .iter()
                .take(6)
                .map(|&(s, d)| format!("{} -> {}: {:?}", ids[s], ids[d], tab.observed[s][d]))
                .collect();
            report.push_str(&format!(
                "\n{}/{} to {}: {} of {} cells wrong\nexpected:\n{}observed (. answered, X timed out, R refused, W wrong pod, ? failed):\n{}comparison (X = wrong):\n{}{}\n",
                tab.proto.api(),
                tab.port,
                tab.target.describe(),
                bad.len(),
                n * n,
                tab.expected.show(),
                observed,
                diff,
                details.join("\n"),
            ));
        }
        Err(report)
    }

    /// Times a closure, for the suite's report.
    pub fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = f();
        eprintln!("netpol: {what}: {:.1?}", start.elapsed());
        out
    }
}

/// Runs a case on the model alone and compares every check that carries
/// upstream's table with the model's (loopback not judged, as upstream).
pub fn model_vs_upstream(base: &Model, steps: &[Step]) -> Result<(), String> {
    let mut model = base.clone();
    for (i, step) in steps.iter().enumerate() {
        follow(&mut model, step);
        if let Step::Check(exps) = step {
            for e in exps {
                let Some(r) = &e.upstream else { continue };
                let got = model.table(e.port, e.proto);
                let want = r.table(&got.names);
                let n = got.names.len();
                let same =
                    (0..n).all(|s| (0..n).all(|d| s == d || got.cells[s][d] == want.cells[s][d]));
                if !same {
                    return Err(format!(
                        "step {} {}/{}: upstream\n{}model\n{}",
                        i + 1,
                        e.proto.api(),
                        e.port,
                        want.show(),
                        got.show()
                    ));
                }
            }
        }
    }
    Ok(())
}

/// What `step` changes in the model (a check changes nothing).
fn follow(model: &mut Model, step: &Step) {
    match step {
        Step::Apply(ps) => ps.iter().for_each(|p| model.upsert(p.clone())),
        Step::Delete { namespace, name } => model.delete(namespace, name),
        Step::LabelPod {
            namespace,
            pod,
            key,
            value,
        } => {
            let idx = model.pod_index(&format!("{namespace}/{pod}"));
            match value {
                Some(v) => model.pods[idx].labels.insert(key.clone(), v.clone()),
                None => model.pods[idx].labels.remove(key),
            };
        }
        Step::LabelNs {
            namespace,
            key,
            value,
        } => {
            let l = model.namespaces.entry(namespace.clone()).or_default();
            match value {
                Some(v) => l.insert(key.clone(), v.clone()),
                None => l.remove(key),
            };
        }
        Step::Check(_) => {}
    }
}
