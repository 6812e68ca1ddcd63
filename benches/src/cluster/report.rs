//! The markdown table of a cluster-bench run.

use std::fmt::Write as _;
use std::time::Duration;

use super::startup::{MemRow, UpRun};
use super::{Results, Settings};
use crate::report::{RunInfo, fine_ratio, ms};
use crate::stats::{Samples, Summary};

/// Time to a usable cluster in minikube's time-to-k8s benchmark (v1.36,
/// one node), the figures issue 12 cites.
const KIND_S: f64 = 33.0;
const K3D_S: f64 = 19.9;
const MINIKUBE_S: f64 = 50.8;
/// A single kind node container's memory, as issue 12 states it.
const KIND_NODE_MIB: f64 = 460.0;

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Seconds, for the startup times.
fn secs(d: Option<Duration>) -> String {
    d.map_or_else(|| "–".into(), |d| format!("{:.2} s", d.as_secs_f64()))
}

/// An error on one line, cut to a readable length.
fn brief(e: &str) -> String {
    let one = e.replace('\n', " ");
    match one.char_indices().nth(400) {
        Some((i, _)) => format!("{}…", &one[..i]),
        None => one,
    }
}

fn s_of(d: Option<Duration>) -> Option<f64> {
    d.map(|d| d.as_secs_f64())
}

fn p50_p99(s: &Summary) -> String {
    format!("{} / {}", ms(s.p50), ms(s.p99))
}

/// Median and worst of `f` over the runs with `nodes` nodes.
fn median_worst(
    runs: &[&UpRun],
    f: fn(&UpRun) -> Option<Duration>,
) -> (Option<Duration>, Option<Duration>) {
    let mut s = Samples::new();
    for r in runs {
        if let Some(d) = f(r) {
            s.push(d);
        }
    }
    (s.p50(), s.max())
}

/// Ferry's time against kind's, k3d's and minikube's: on `usable` when
/// measured, else on `up` (marked so).
fn ratios(usable: Option<Duration>, up: Option<Duration>) -> String {
    let (t, mark) = match (usable, up) {
        (Some(u), _) => (Some(u), ""),
        (None, Some(u)) => (Some(u), " (up)"),
        (None, None) => (None, ""),
    };
    [KIND_S, K3D_S, MINIKUBE_S]
        .iter()
        .map(|&x| format!("{}{mark}", fine_ratio(s_of(t), Some(x))))
        .collect::<Vec<_>>()
        .join(" | ")
}

pub fn markdown(s: &Settings, info: &RunInfo, r: &Results) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# `ferry up`: the whole cluster\n");
    let _ = writeln!(
        o,
        "One run of `cluster-bench`{} on this machine: {} cores, {} RAM, Linux {}, git {}, {:.1} s wall. \
         Every cluster is built by `ferry_cluster::Cluster::up`, as `ferry up` builds it (testbed \
         world, ferry-apiserver and per node ferry-node; the agent DaemonSet and ferry-dns Deployment from `deploy/`), its data in a fresh \
         temporary directory, and dropped before the next. Components, kube clients and probes share \
         the cores.\n",
        if s.quick { " --quick" } else { "" },
        info.cores,
        info.mem_total,
        info.kernel,
        info.git_rev,
        info.wall.as_secs_f64(),
    );
    startup(&mut o, s, r);
    memory(&mut o, r);
    pods(&mut o, r);
    scale(&mut o, r);
    load(&mut o, r);
    attach(&mut o, r);
    if !r.failures.is_empty() {
        let _ = writeln!(o, "### Phases that did not complete\n");
        for f in &r.failures {
            let _ = writeln!(o, "- {}: {}", f.phase, brief(&f.error));
        }
        let _ = writeln!(o);
    }
    o
}

fn startup(o: &mut String, s: &Settings, r: &Results) {
    if r.ups.is_empty() && r.cli.is_none() {
        return;
    }
    let _ = writeln!(
        o,
        "### Startup: to a usable cluster\n\n\
         \"up\": `Cluster::up` returned (every node Ready, every agent's /healthz 200, ferry-dns \
         answering `kubernetes.default.svc.cluster.local`). \"usable\": from the same start until a \
         pod (busybox, the node's `sh` and `curl`) that retries `curl -k \
         https://kubernetes.default.svc.cluster.local/` every 50 ms has Succeeded: the kube client \
         made, the pod scheduled, its netns wired, cluster DNS and the ClusterIP translated by the \
         agent, the apiserver answering. Up to {} runs per node count; the last 3-node cluster stays \
         up for the memory and pod phases (its teardown is not timed). kind, k3d and minikube: \
         minikube's time-to-k8s benchmark (v1.36, one node), as issue 12 cites it; ratio = Ferry's \
         median usable / theirs (below 1: Ferry faster), or median up, marked \"(up)\", when \
         the first pod did not get through.\n",
        s.up_runs
    );
    let _ = writeln!(
        o,
        "| nodes | runs | up: median / worst | usable: median / worst | teardown: median | / kind {KIND_S} s | / k3d {K3D_S} s | / minikube {MINIKUBE_S} s |\n\
         | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let mut counts: Vec<usize> = r.ups.iter().map(|u| u.nodes).collect();
    counts.sort_unstable();
    counts.dedup();
    for n in counts {
        let runs: Vec<&UpRun> = r.ups.iter().filter(|u| u.nodes == n).collect();
        let (up, up_w) = median_worst(&runs, |u| Some(u.up));
        let (us, us_w) = median_worst(&runs, |u| u.usable);
        let (down, _) = median_worst(&runs, |u| Some(u.down).filter(|d| !d.is_zero()));
        let _ = writeln!(
            o,
            "| {n} | {} | {} / {} | {} / {} | {} | {} |",
            runs.len(),
            secs(up),
            secs(up_w),
            secs(us),
            secs(us_w),
            secs(down),
            ratios(us, up),
        );
    }
    if let Some(c) = &r.cli {
        let _ = writeln!(
            o,
            "| {} (`ferry up` CLI, once) | 1 | process {} | {} | `ferry down --purge` {} | {} |",
            c.nodes,
            secs(Some(c.process)),
            secs(c.usable),
            secs(Some(c.down)),
            ratios(c.usable, Some(c.process)),
        );
    }
    let _ = writeln!(
        o,
        "\nGoal (issue 12): usable in at most 5 s with 3 nodes.\n"
    );
}

fn memory(o: &mut String, r: &Results) {
    let Some(m) = &r.memory else { return };
    let _ = writeln!(
        o,
        "### Memory: a {}-node cluster idle\n\n\
         Read {:.0} s after the startup runs, before the pod phase (the first pod has exited or was deleted). Each row sums the \
         component's processes and everything below them (VmRSS, and PSS, which splits shared pages \
         among their users). The supervisor and loopback forwarder run in the harness process here \
         (in `ferry up`, in the `ferry supervise` process), so they are the last row, not in the \
         total. The kind figure is issue 12's (one kind node container, about 460 MiB); ratio = Ferry / \
         kind.\n",
        m.nodes,
        m.idle.as_secs_f64()
    );
    let _ = writeln!(
        o,
        "| component | processes | RSS | PSS |\n| --- | ---: | ---: | ---: |"
    );
    for (name, row) in &m.rows {
        let _ = writeln!(
            o,
            "| {name} | {} | {} | {} |",
            row.processes,
            mib(row.rss_kib),
            mib(row.pss_kib)
        );
    }
    let MemRow {
        processes,
        rss_kib,
        pss_kib,
    } = m.total();
    let _ = writeln!(
        o,
        "| **total** | {processes} | **{}** | {} |\n\
         | goal (issue 12) | | ≤ 150 MiB | |\n\
         | one kind node container | | ≈ {KIND_NODE_MIB:.0} MiB | |\n\
         | Ferry / kind | | {} | {} |\n\
         | harness process (supervisor + forwarder + bench client) | 1 | {} | |\n",
        mib(rss_kib),
        mib(pss_kib),
        fine_ratio(Some(rss_kib as f64 / 1024.0), Some(KIND_NODE_MIB)),
        fine_ratio(Some(pss_kib as f64 / 1024.0), Some(KIND_NODE_MIB)),
        mib(m.bench_rss_kib),
    );
}

fn pods(o: &mut String, r: &Results) {
    let Some(l) = &r.pods else { return };
    let _ = writeln!(
        o,
        "### Pod startup: create to reachable\n\n\
         {} pods (agnhost `netexec`) on the {}-node cluster, {} in flight at a time, each behind a \
         Service of its own (created beforehand). Times from the pod's create call, as this \
         process's watches saw them (Pods; EndpointSlices: the pod's endpoint ready), and until a \
         probe process in node 0's namespace and pods' cgroup, connecting to the Service's \
         ClusterIP every 5 ms from the create on, got through. {} pods missed a milestone within \
         60 s. Wall time {:.1} s.\n",
        l.pods,
        l.nodes,
        l.concurrency,
        l.incomplete,
        l.wall.as_secs_f64()
    );
    let _ = writeln!(
        o,
        "| from the create call to | p50 / p99 | max | pods |\n| --- | ---: | ---: | ---: |"
    );
    for (what, s) in [
        ("the create call returned", &l.create_call),
        ("Running", &l.running),
        ("Ready", &l.ready),
        ("ready in its Service's EndpointSlice", &l.sliced),
        ("reachable through the ClusterIP", &l.reachable),
    ] {
        let _ = writeln!(
            o,
            "| {what} | {} | {} | {} |",
            p50_p99(s),
            ms(s.max),
            s.count
        );
    }
    let _ = writeln!(
        o,
        "\nGoal (issue 12): p50 at most 200 ms (reachable: {}).\n",
        match l.reachable.p50 {
            Some(d) if d <= Duration::from_millis(200) => "met",
            Some(_) => "not met",
            None => "not measured",
        }
    );
    if let Some(e) = &l.first_error {
        let _ = writeln!(o, "First problem: {}\n", brief(e));
    }
}

fn scale(o: &mut String, r: &Results) {
    let Some(sc) = &r.scale else { return };
    let _ = writeln!(
        o,
        "### A Deployment from 0 to {} replicas on {} nodes\n\n\
         The cluster came up in {:.2} s. One merge patch of `spec.replicas`, then the pods (pause) as \
         a watch saw them, bounded at {:.0} s. \"Half\" and \"all\": from the patch until that many \
         replicas reached the stage. \"Step\": per pod, from the stage before (the first from the \
         patch). A stage reported at the same watch event as the next (one status write) shows a \
         step of ~0.\n",
        sc.replicas,
        sc.nodes,
        sc.cluster_up.as_secs_f64(),
        sc.limit.as_secs_f64()
    );
    let _ = writeln!(
        o,
        "| stage | reached | half | all | step p50 / p99 |\n| --- | ---: | ---: | ---: | ---: |"
    );
    for st in &sc.stages {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} |",
            st.name,
            st.reached,
            ms(st.half),
            ms(st.all),
            p50_p99(&st.step)
        );
    }
    let _ = writeln!(
        o,
        "\n**All {} Ready: {}** (goal, issue 12: at most 30 s).\n",
        sc.replicas,
        match sc.all_ready {
            Some(d) => format!("{:.1} s", d.as_secs_f64()),
            None => format!("not within {:.0} s", sc.window.as_secs_f64()),
        }
    );
    let _ = writeln!(
        o,
        "CPU over those {:.1} s ({} cores: at most {:.1} s of CPU):\n\n\
         | component | own CPU | helpers it ran to completion (CNI plugins, unshare, nsenter) |\n| --- | ---: | ---: |",
        sc.window.as_secs_f64(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        sc.window.as_secs_f64()
            * std::thread::available_parallelism().map_or(0, |n| n.get()) as f64
    );
    for c in &sc.cpu {
        let _ = writeln!(
            o,
            "| {} | {:.2} s | {:.2} s |",
            c.name,
            c.own.as_secs_f64(),
            c.children.as_secs_f64()
        );
    }
    let _ = writeln!(
        o,
        "| harness (watch, polling) | {:.2} s | |",
        sc.bench_cpu.as_secs_f64()
    );
    let _ = writeln!(
        o,
        "\nScaling back to 0: {}.\n",
        match sc.scale_down {
            Some(d) => format!("every pod gone after {:.1} s", d.as_secs_f64()),
            None => format!("{} pods still there after 120 s", sc.left),
        }
    );
    if let Some(e) = &sc.first_error {
        let _ = writeln!(o, "First failed pod: {}\n", brief(e));
    }
}

fn load(o: &mut String, r: &Results) {
    let Some(l) = &r.load else { return };
    let _ = writeln!(
        o,
        "### {} Services and {} Pods in ferry-apiserver (objects only)\n\n\
         A lone `{}` on 127.0.0.1 with its controllers; {} fake Nodes (no Lease), then the \
         Services (selector `app: s-<i>`), then the Pods ({} per Service, bound to the fake nodes \
         round-robin), each create followed by a status patch (Running, Ready, a distinct pod IP); \
         {} requests in flight. Times from the load's start. Idle: the apiserver used under 3% of a \
         core for 1 s (that second not counted).\n",
        l.services,
        l.pods,
        l.version,
        l.nodes,
        l.pods.checked_div(l.services).unwrap_or(0),
        l.concurrency
    );
    let _ = writeln!(o, "| metric | value |\n| --- | ---: |");
    let rows = [
        (
            "Services created in",
            format!("{:.2} s", l.services_wall.as_secs_f64()),
        ),
        (
            "Pods created + status written in",
            format!(
                "{:.2} s ({:.0} pods/s)",
                l.pods_wall.as_secs_f64(),
                l.pods as f64 / l.pods_wall.as_secs_f64().max(1e-9)
            ),
        ),
        ("whole load", format!("{:.2} s", l.load_wall.as_secs_f64())),
        (
            "last EndpointSlice event seen",
            l.last_slice_write
                .map_or_else(|| "–".into(), |d| format!("{:.2} s", d.as_secs_f64())),
        ),
        (
            "**controllers idle**",
            format!(
                "**{:.2} s** ({:.2} s after the load)",
                l.idle.as_secs_f64(),
                l.idle.saturating_sub(l.load_wall).as_secs_f64()
            ),
        ),
        ("EndpointSlice events seen", l.slice_events.to_string()),
        (
            "apiserver CPU, start to idle / harness CPU",
            format!(
                "{:.1} s / {:.1} s",
                l.apiserver_cpu.as_secs_f64(),
                l.harness_cpu.as_secs_f64()
            ),
        ),
        (
            "EndpointSlices / ready endpoints once idle",
            format!("{} / {} (expected {})", l.slices, l.ready_endpoints, l.pods),
        ),
        (
            "apiserver RSS once idle",
            format!("{:.1} MiB", l.rss_idle.mib()),
        ),
    ];
    for (k, v) in rows {
        let _ = writeln!(o, "| {k} | {v} |");
    }
    let _ = writeln!(o);
}

fn attach(o: &mut String, r: &Results) {
    let Some(a) = &r.attach else { return };
    let v = &a.veths;
    let goal = Duration::from_millis(50);
    let _ = writeln!(
        o,
        "### A pod's veth until the agent's programs are on it\n\n\
         `ferry up` runs its agents with `--pod-devices {1}` (NetworkPolicy and per-packet \
         translation at pods' veths), attaching classic TC filters (clsact; a TCX attach waits \
         for an RCU grace period under RTNL), and ferry-cni's ADD waits for them before the pod \
         runs. On a 1-node cluster, node {0}'s agent: {2} veth pairs, one \
         at a time, wired as ferry-cni wires a pod (host end `ferbench<i>` in the node, peer in a \
         namespace of the run's own, host end set up: one `ip -batch`), kept until the end (the \
         node holds {3} of them by the last). Each timed from the moment its link was visible in \
         the node (its name resolved; polled every 100 µs while `ip` ran) until the agent had \
         attached both programs: it pins each for the device under its bpffs `links/` as that \
         filter's attach returns (what ferry-cni waits for). The poll sleeps 100 µs between \
         rounds (≈0.1–0.2 ms resolution) and shares the cores with the agent. Wall {4:.1} s; the \
         agent used {5:.2} s of CPU.\n",
        a.node,
        super::attach::POD_PREFIX,
        v.count,
        v.count,
        v.wall.as_secs_f64(),
        v.agent_cpu.as_secs_f64(),
    );
    let _ = writeln!(
        o,
        "| from the link visible (or `ip` returned) to | p50 | p99 | max | veths |\n\
         | --- | ---: | ---: | ---: | ---: |"
    );
    for (what, s) in [
        ("ingress program attached (the agent's first)", &v.ingress),
        ("**both programs attached**", &v.attached),
        (
            "programs attached, from `ip` (add + up) returned",
            &v.after_ip,
        ),
    ] {
        let _ = writeln!(
            o,
            "| {what} | {} | {} | {} | {} |",
            ms(s.p50),
            ms(s.p99),
            ms(s.max),
            s.count
        );
    }
    let _ = writeln!(
        o,
        "\nGoal (issue 12): under 50 ms from the veth to the programs attached: **{}** \
         (p99 {}, max {}); {} of {} veths had no programs within 5 s.\n",
        match (v.attached.max, v.missed) {
            (Some(m), 0) if m < goal => "met",
            (Some(_), _) => "not met",
            (None, _) => "not measured",
        },
        ms(v.attached.p99),
        ms(v.attached.max),
        v.missed,
        v.count
    );
    if let Some(p) = &a.pods {
        let _ = writeln!(
            o,
            "Pods through the API on the same node (pause, created one at a time, each waited for \
             until Ready; ferry-node wires them with ferry-cni): each pod's veth (found by the \
             node's route to the pod's address) followed by a poller in the node (new interfaces \
             by index, the same pins, every 250 µs), Ready as this process's watch saw it \
             (after the status write: Ready's true time is a little earlier).\n\n\
             | pods | Ready | veth found | **Ready before the programs** | veth seen → attached p50 / max | attached → Ready seen p50 / min |\n\
             | ---: | ---: | ---: | ---: | ---: | ---: |\n\
             | {} | {} | {} | **{}** | {} / {} | {} / {} |\n",
            p.pods,
            p.ready,
            p.found,
            p.ready_first,
            ms(p.seen_to_attached.p50),
            ms(p.seen_to_attached.max),
            ms(p.lead.p50),
            ms(p.lead_min),
        );
    }
    if let Some(e) = &a.pods_error {
        let _ = writeln!(o, "Pods through the API: did not complete: {}\n", brief(e));
    }
}
