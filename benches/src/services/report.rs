//! The markdown report: one table per phase, Ferry next to kube-proxy's
//! iptables and nftables modes, with Ferry / kube-proxy ratios and, per
//! row, what a ratio above 1 means.

use std::fmt::Write as _;
use std::time::Duration;

use super::memory::MemoryRun;
use super::{ControlPlane, DataplaneRun, EndToEnd, Results, Settings, Traffic};
use crate::process::Rss;
use crate::report::{RunInfo, fine_ratio as ratio};
use crate::stats::Summary;

const BETTER: &str = "Ferry better";
const WORSE: &str = "Ferry worse";
const NONE: &str = "–";

fn dur_ratio(a: Option<Duration>, b: Option<Duration>) -> String {
    ratio(a.map(|d| d.as_secs_f64()), b.map(|d| d.as_secs_f64()))
}

fn dur(d: Option<Duration>) -> String {
    match d {
        None => NONE.into(),
        Some(d) if d < Duration::from_millis(1) => format!("{} µs", d.as_micros()),
        Some(d) if d < Duration::from_secs(1) => format!("{:.2} ms", d.as_secs_f64() * 1e3),
        Some(d) if d < Duration::from_secs(100) => format!("{:.2} s", d.as_secs_f64()),
        Some(d) => format!("{:.0} s", d.as_secs_f64()),
    }
}

fn pair(s: &Summary) -> String {
    if s.count == 0 {
        return NONE.into();
    }
    format!("{} / {}", dur(s.p50), dur(s.p99))
}

fn pair_ratio(a: &Summary, b: &Summary) -> String {
    if a.count == 0 || b.count == 0 {
        return NONE.into();
    }
    format!("{} / {}", dur_ratio(a.p50, b.p50), dur_ratio(a.p99, b.p99))
}

fn rate(r: f64) -> String {
    if r > 0.0 {
        format!("{r:.0}/s")
    } else {
        NONE.into()
    }
}

fn mib_kib(kib: Option<i64>) -> String {
    kib.map_or_else(|| NONE.into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

fn rss(r: Option<Rss>) -> String {
    r.map_or_else(|| NONE.into(), |r| format!("{:.1} MiB", r.mib()))
}

struct Table {
    out: String,
}

impl Table {
    fn new(title: &str) -> Self {
        let mut out = String::new();
        let _ = writeln!(out, "{title}\n");
        let _ = writeln!(
            out,
            "| metric | Ferry | kube-proxy iptables | kube-proxy nftables | Ferry / iptables | \
             Ferry / nftables | ratio > 1 means |"
        );
        let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: | ---: | --- |");
        Self { out }
    }

    #[allow(clippy::too_many_arguments)]
    fn row(
        &mut self,
        label: &str,
        f: String,
        i: String,
        n: String,
        ri: String,
        rn: String,
        m: &str,
    ) {
        let _ = writeln!(
            self.out,
            "| {label} | {f} | {i} | {n} | {ri} | {rn} | {m} |"
        );
    }

    fn context(&mut self, label: &str, f: String, i: String, n: String) {
        self.row(label, f, i, n, NONE.into(), NONE.into(), NONE);
    }
}

/// A dataplane's cell: its value, or why there is none.
fn cell(run: &DataplaneRun, f: impl Fn(&Traffic) -> String) -> String {
    if run.error.is_some() {
        return "failed (see notes)".into();
    }
    run.traffic.as_ref().map_or_else(|| NONE.into(), f)
}

fn traffic_ratio(a: &DataplaneRun, b: &DataplaneRun, f: impl Fn(&Traffic) -> f64) -> String {
    match (&a.traffic, &b.traffic) {
        (Some(x), Some(y)) if a.error.is_none() && b.error.is_none() => {
            ratio(Some(f(x)), Some(f(y)))
        }
        _ => NONE.into(),
    }
}

fn traffic_pair_ratio(
    a: &DataplaneRun,
    b: &DataplaneRun,
    f: impl Fn(&Traffic) -> &Summary,
) -> String {
    match (&a.traffic, &b.traffic) {
        (Some(x), Some(y)) if a.error.is_none() && b.error.is_none() => pair_ratio(f(x), f(y)),
        _ => NONE.into(),
    }
}

fn e2e_rows(t: &mut Table, e: &EndToEnd, s: &Settings) {
    let n = e.services;
    let (fr, ip, nf) = (&e.ferry, &e.iptables, &e.nftables);
    t.row(
        &format!("**{n} Services**: new connections/s, one at a time"),
        cell(fr, |x| rate(x.connect_rate)),
        cell(ip, |x| rate(x.connect_rate)),
        cell(nf, |x| rate(x.connect_rate)),
        traffic_ratio(fr, ip, |x| x.connect_rate),
        traffic_ratio(fr, nf, |x| x.connect_rate),
        BETTER,
    );
    t.row(
        &format!("{n}: new connections/s, {} workers", s.workers),
        cell(fr, |x| rate(x.concurrent_rate)),
        cell(ip, |x| rate(x.concurrent_rate)),
        cell(nf, |x| rate(x.concurrent_rate)),
        traffic_ratio(fr, ip, |x| x.concurrent_rate),
        traffic_ratio(fr, nf, |x| x.concurrent_rate),
        BETTER,
    );
    t.row(
        &format!("{n}: connect() p50 / p99"),
        cell(fr, |x| pair(&x.connect)),
        cell(ip, |x| pair(&x.connect)),
        cell(nf, |x| pair(&x.connect)),
        traffic_pair_ratio(fr, ip, |x| &x.connect),
        traffic_pair_ratio(fr, nf, |x| &x.connect),
        WORSE,
    );
    t.row(
        &format!("{n}: HTTP GET, connect to last byte, p50 / p99"),
        cell(fr, |x| pair(&x.http)),
        cell(ip, |x| pair(&x.http)),
        cell(nf, |x| pair(&x.http)),
        traffic_pair_ratio(fr, ip, |x| &x.http),
        traffic_pair_ratio(fr, nf, |x| &x.http),
        WORSE,
    );
    t.row(
        &format!("{n}: HTTP GETs/s, one at a time"),
        cell(fr, |x| rate(x.http_rate)),
        cell(ip, |x| rate(x.http_rate)),
        cell(nf, |x| rate(x.http_rate)),
        traffic_ratio(fr, ip, |x| x.http_rate),
        traffic_ratio(fr, nf, |x| x.http_rate),
        BETTER,
    );
    let prog = |r: &DataplaneRun| {
        if !r.ran {
            NONE.into()
        } else if let Some(cpu) = r.program_cpu {
            format!("{} (agent CPU {})", dur(r.program), dur(Some(cpu)))
        } else {
            dur(r.program)
        }
    };
    t.row(
        &format!("{n}: programming all Services (Ferry: agent start to first full sync; kube-proxy: the one restore)"),
        prog(fr),
        prog(ip),
        prog(nf),
        dur_ratio(fr.program, ip.program),
        dur_ratio(fr.program, nf.program),
        WORSE,
    );
    t.context(
        &format!("{n}: kube-proxy ruleset text made in (this harness, Rust)"),
        NONE.into(),
        dur(ip.generate),
        dur(nf.generate),
    );
    let size = |r: &DataplaneRun| {
        if r.size.is_empty() {
            NONE.into()
        } else {
            r.size.clone()
        }
    };
    t.context(
        &format!("{n}: state programmed"),
        size(fr),
        size(ip),
        size(nf),
    );
    let fails = |r: &DataplaneRun| {
        cell(r, |x| {
            format!(
                "{} / {} (backends answering: {})",
                x.errors, x.concurrent_errors, x.backends_hit
            )
        })
    };
    t.context(
        &format!("{n}: failed attempts, sequential / concurrent"),
        fails(fr),
        fails(ip),
        fails(nf),
    );
    t.context(
        &format!("{n}: ferry-agent RSS after the sync"),
        rss(fr.agent_rss),
        NONE.into(),
        NONE.into(),
    );
}

fn cp_tables(out: &mut String, cp: &ControlPlane) {
    let (n, e) = (cp.services, cp.endpoints);
    let mut t = Table::new(&format!("## Control plane: {n} Services x {e} endpoints"));
    let load = |l: &Option<super::RulesLoad>| l.as_ref().map(|l| l.load);
    t.context(
        &format!("{n} Services + {n} EndpointSlices created in the apiserver in"),
        dur(cp.api_load),
        NONE.into(),
        NONE.into(),
    );
    t.row(
        "cold start: every Service programmed (Ferry: agent start to first full sync; kube-proxy: the one restore)",
        match cp.ferry_sync_cpu {
            Some(cpu) if cp.ferry_sync.is_some() => {
                format!("{} (agent CPU {})", dur(cp.ferry_sync), dur(Some(cpu)))
            }
            _ => dur(cp.ferry_sync),
        },
        dur(load(&cp.iptables)),
        dur(load(&cp.nftables)),
        dur_ratio(cp.ferry_sync, load(&cp.iptables)),
        dur_ratio(cp.ferry_sync, load(&cp.nftables)),
        WORSE,
    );
    let generate = |l: &Option<super::RulesLoad>| l.as_ref().map(|l| l.generate);
    t.context(
        "kube-proxy ruleset text made in (this harness, Rust)",
        NONE.into(),
        dur(generate(&cp.iptables)),
        dur(generate(&cp.nftables)),
    );
    let size = |l: &Option<super::RulesLoad>, what: &str| {
        l.as_ref().map_or_else(
            || NONE.into(),
            |l| {
                format!(
                    "{} rules, {} {what}, {:.1} MiB of text",
                    l.rules,
                    l.chains,
                    l.bytes as f64 / 1048576.0
                )
            },
        )
    };
    t.context(
        "state programmed",
        if cp.ferry_sync.is_some() {
            format!("{} frontends", cp.ferry_frontends)
        } else {
            NONE.into()
        },
        size(&cp.iptables, "chains"),
        size(&cp.nftables, "chains"),
    );
    let u = &cp.updates;
    t.row(
        &format!(
            "endpoint change, API write to dataplane updated, p50 / p99 ({} changes; kube-proxy: watch event + text + restore)",
            u.count
        ),
        pair(&u.ferry),
        pair(&u.ipt_total),
        pair(&u.nft_total),
        pair_ratio(&u.ferry, &u.ipt_total),
        pair_ratio(&u.ferry, &u.nft_total),
        WORSE,
    );
    t.row(
        "endpoint change: the partial-sync restore alone (`iptables-restore --noflush` / `nft -f`), p50 / p99",
        NONE.into(),
        pair(&u.ipt_restore),
        pair(&u.nft_tx),
        pair_ratio(&u.ferry, &u.ipt_restore),
        pair_ratio(&u.ferry, &u.nft_tx),
        WORSE,
    );
    t.context(
        "endpoint change: the PATCH call, p50 / p99 (shared by all)",
        pair(&u.api_write),
        "same".into(),
        "same".into(),
    );
    t.context(
        "endpoint change: API write to watch event in this process, p50 / p99",
        NONE.into(),
        pair(&u.event),
        pair(&u.event),
    );
    t.context(
        "endpoint change: kube-proxy text made, p50 / p99",
        NONE.into(),
        pair(&u.ipt_generate),
        pair(&u.nft_generate),
    );
    t.context(
        "endpoint change: `nft --json list chains` that knftables runs per sync, p50 / p99",
        NONE.into(),
        NONE.into(),
        pair(&u.nft_list),
    );
    out.push_str(&t.out);
    out.push('\n');

    let m = &cp.memory;
    let mut t = Table::new(&format!("## Memory with {n} Services x {e} endpoints"));
    t.context(
        "ferry-agent RSS (VmRSS), after the endpoint changes",
        rss(m.agent),
        NONE.into(),
        NONE.into(),
    );
    t.context(
        "ferry-agent peak RSS (VmHWM)",
        m.agent.map_or_else(
            || NONE.into(),
            |r| format!("{:.1} MiB", r.peak_kib as f64 / 1024.0),
        ),
        NONE.into(),
        NONE.into(),
    );
    let total: u64 = m.memlock.iter().map(|(_, b)| b).sum();
    let largest = m
        .memlock
        .iter()
        .take(3)
        .map(|(name, b)| format!("{name} {:.1}", *b as f64 / 1048576.0))
        .collect::<Vec<_>>()
        .join(", ");
    t.context(
        "BPF maps, memlock (bpftool), MiB: total (largest)",
        if m.memlock.is_empty() {
            NONE.into()
        } else {
            format!("{:.1} ({largest})", total as f64 / 1048576.0)
        },
        NONE.into(),
        NONE.into(),
    );
    let kernel = |l: &Option<super::RulesLoad>| l.as_ref().and_then(|l| l.kernel_kib);
    t.row(
        "kernel memory taken (Δ Slab + VmallocUsed + Percpu; Ferry: the agent's start)",
        mib_kib(m.agent_kernel_kib),
        mib_kib(kernel(&cp.iptables)),
        mib_kib(kernel(&cp.nftables)),
        ratio(
            m.agent_kernel_kib.map(|k| k as f64),
            kernel(&cp.iptables).map(|k| k as f64),
        ),
        ratio(
            m.agent_kernel_kib.map(|k| k as f64),
            kernel(&cp.nftables).map(|k| k as f64),
        ),
        WORSE,
    );
    out.push_str(&t.out);
    let _ = writeln!(
        out,
        "\nBPF hash and LRU maps are preallocated: Ferry's memlock and kernel memory follow the \
         agent's map sizes (at least its defaults: 65536 frontends, 262144 backend slots, and the \
         fixed-size affinity, socket and connection-tracking maps), not how many Services are \
         loaded; kube-proxy's rules grow with the Services."
    );
}

fn mib_bytes(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / 1048576.0)
}

/// The agent-memory phase: one column, issue 13's goal beside it.
fn memory_table(out: &mut String, m: &MemoryRun) {
    let Some(l) = m.settings else {
        return;
    };
    let _ = writeln!(
        out,
        "## ferry-agent memory: {} Services x {} endpoints, {} Pods in {} namespaces, {} \
         NetworkPolicies\n",
        l.services, l.endpoints, l.pods, l.namespaces, l.policies
    );
    let _ = writeln!(
        out,
        "A fresh apiserver holding the objects (selectorless Services, their EndpointSlices \
         as the controller writes them, Pods with a Running status, {} of them on the agent's \
         node, the rest 250 a node on other nodes, labelled namespaces, policies with pod and \
         namespace selectors, named ports, port ranges and ipBlocks), then a cold \
         `ferry-agent --pod-devices fer` (service proxy and NetworkPolicy). Read once its \
         service maps held every frontend and its policy loop had written its first \
         compilation, and again once its CPU went quiet. BPF map memory is the maps' memlock \
         (bpftool), apart from the process's.\n",
        l.local_pods
    );
    let _ = writeln!(out, "| metric | ferry-agent | issue 13 goal |");
    let _ = writeln!(out, "| --- | ---: | ---: |");
    let row = |out: &mut String, k: &str, v: String, goal: &str| {
        let _ = writeln!(out, "| {k} | {v} | {goal} |");
    };
    row(
        out,
        "objects created in the apiserver in",
        dur(m.load),
        NONE,
    );
    row(
        out,
        "agent start to service maps in sync / to policy maps written",
        format!("{} / {}", dur(m.services_synced), dur(m.policy_synced)),
        NONE,
    );
    row(
        out,
        "policy compilation (`ferry_policy_sync_duration_seconds`, first pass)",
        dur(m.policy_compile_secs.map(Duration::from_secs_f64)),
        NONE,
    );
    row(
        out,
        "frontends programmed; policy rule entries (failed closed)",
        format!(
            "{}; {} ({})",
            m.frontends,
            m.policy_rules
                .map_or_else(|| NONE.into(), |v| v.to_string()),
            m.policy_failed_closed
                .map_or_else(|| NONE.into(), |v| v.to_string())
        ),
        NONE,
    );
    row(
        out,
        "**RSS (VmRSS) once synced and quiet**",
        rss(m.rss),
        "≤ 64 MiB",
    );
    row(
        out,
        "of it anonymous (heap, stacks) / file-backed (the binary)",
        format!(
            "{} / {}",
            mib_kib(m.rss_anon_kib.and_then(|k| i64::try_from(k).ok())),
            mib_kib(m.rss_file_kib.and_then(|k| i64::try_from(k).ok()))
        ),
        NONE,
    );
    row(
        out,
        "RSS by mapping (`/proc/PID/smaps`, largest)",
        m.smaps
            .iter()
            .take(4)
            .map(|(n, k)| format!("{n} {:.1} MiB", *k as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join("; "),
        NONE,
    );
    row(out, "RSS right after both syncs", rss(m.rss_synced), NONE);
    row(
        out,
        "peak RSS (VmHWM)",
        m.rss.map_or_else(
            || NONE.into(),
            |r| format!("{:.1} MiB", r.peak_kib as f64 / 1024.0),
        ),
        NONE,
    );
    row(out, "agent CPU time until quiet", dur(m.agent_cpu), NONE);
    let total: u64 = m.memlock.iter().map(|(_, b)| b).sum();
    let policy: u64 = m
        .memlock
        .iter()
        .filter(|(n, _)| n.starts_with("FERRY_POL"))
        .map(|(_, b)| b)
        .sum();
    let largest = m
        .memlock
        .iter()
        .take(4)
        .map(|(name, b)| format!("{name} {:.1}", *b as f64 / 1048576.0))
        .collect::<Vec<_>>()
        .join(", ");
    row(
        out,
        "BPF maps, memlock (bpftool): total; of it NetworkPolicy's (largest, MiB)",
        if m.memlock.is_empty() {
            NONE.into()
        } else {
            format!("{}; {} ({largest})", mib_bytes(total), mib_bytes(policy))
        },
        "reported apart",
    );
    out.push('\n');
}

pub fn markdown(s: &Settings, info: &RunInfo, r: &Results) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Ferry vs kube-proxy: the service dataplane\n");
    let _ = writeln!(
        out,
        "One run of `services-bench` on this machine: {} cores, {} RAM, Linux {}, git {}, {:.1} s \
         wall. Everything ran in one testbed world: one node namespace, {} backend pods running \
         `ferry-netexec` and the bench's accept sink, and a client pod per dataplane (so none \
         meets TCP state another left in the backends), wired by `ferry-cni`; \
         `ferry-apiserver` in the world's underlay. Clients, servers and the dataplanes share \
         the cores.\n",
        info.cores,
        info.mem_total,
        info.kernel,
        info.git_rev,
        info.wall.as_secs_f64(),
        super::cluster::BACKENDS,
    );
    let _ = writeln!(
        out,
        "- **Ferry**: `{}` (socket-level load balancing; the client process joins the agent's \
         cgroup). Services without selectors and EndpointSlices the bench writes, created \
         through the apiserver; a fresh agent per measurement, started after the objects exist.",
        r.versions.agent
    );
    let _ = writeln!(
        out,
        "- **kube-proxy iptables**: its iptables-mode ruleset (KUBE-SERVICES from PREROUTING and \
         OUTPUT, one rule per Service with its comment, KUBE-SVC chains choosing an endpoint with \
         `-m statistic --mode random --probability 1/(n-i)`, KUBE-SEP chains with the hairpin \
         mark and `DNAT`, KUBE-MARK-MASQ, KUBE-POSTROUTING, the filter chains), loaded in the node \
         with one `{}` (`{}`). The two dialed Services' rules are the last Service \
         rules in KUBE-SERVICES (the worst case).",
        s.iptables.restore(),
        r.versions.iptables
    );
    let _ = writeln!(
        out,
        "- **kube-proxy nftables**: its nftables-mode transaction (table `ip kube-proxy`, the \
         `service-ips` verdict map keyed by `ipv4_addr . inet_proto . inet_service`, per-Service \
         chains with `numgen random mod N vmap`, per-endpoint chains with `dnat to`), loaded \
         with one `nft -f` (`{}`).",
        r.versions.nft
    );
    let _ = writeln!(
        out,
        "- **Traffic**: N Services in all: two targets whose endpoints are the {} backend pods, \
         last in KUBE-SERVICES (`{}` at {}:{} to each pod's accept sink on :{}, which the bare \
         connects dial; `{}` at {}:{} to `ferry-netexec` on :{}, which the GETs go to), and N-2 \
         fake Services with {} unroutable endpoints each, never dialed. Per dataplane and N: {} \
         untimed connects, then {} sequential `connect()`s (each closed with an RST, so no \
         TIME_WAIT builds up), {} sequential `GET /hostname` (connect to the server's close), \
         and {} workers connecting for {:.1} s. The kube-proxy clients run outside any cgroup: \
         their packets enter the node from the pod's veth (PREROUTING) and are NATed there; \
         Ferry's connect() is translated in the socket, in the agent's cgroup.",
        super::cluster::BACKENDS,
        super::model::CONNECT_NAME,
        super::model::CONNECT_IP,
        super::model::SERVICE_PORT,
        super::model::SINK_PORT,
        super::model::TARGET_NAME,
        super::model::TARGET_IP,
        super::model::SERVICE_PORT,
        super::model::TARGET_PORT,
        s.fake_endpoints,
        s.warmup,
        s.connects,
        s.http,
        s.workers,
        s.rate.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "- Order: Ferry for every N, then nftables, then iptables, each reset in between (nft \
         `flush ruleset`; legacy tables emptied): legacy iptables tables stay registered in a \
         namespace once made, so nothing measured on the data path runs after them.\n"
    );
    let _ = writeln!(
        out,
        "Ratios are Ferry / kube-proxy; the last column says what a ratio above 1 means on \
         that row (rates: Ferry higher; times and memory: Ferry slower or bigger). \
         \"p50 / p99\" ratios are per percentile.\n"
    );
    if !r.e2e.is_empty() {
        let mut t = Table::new("## End to end: client pod to a ClusterIP");
        for e in &r.e2e {
            e2e_rows(&mut t, e, s);
        }
        out.push_str(&t.out);
        out.push('\n');
    }
    if let Some(cp) = &r.cp {
        let _ = writeln!(
            out,
            "The control-plane phase starts a fresh apiserver holding only its {n} Services \
             (each with {e} endpoints). Ferry's cold start is the agent's whole start: loading \
             and attaching the programs, listing Services and EndpointSlices from the apiserver, \
             programming the maps. kube-proxy's is only its restore of the finished text (it \
             would also list the objects first). An endpoint change patches one slice (its \
             first endpoint gets a new address) and is timed from just before the PATCH until \
             Ferry's pinned map holds the new backend (polled from this process, ~1 ms steps); \
             for kube-proxy, until a watch in this process delivered the change, plus making \
             its partial-sync text and running it: `iptables-restore --noflush --counters` with \
             every top-level chain and all {n} KUBE-SERVICES rules plus the changed Service's \
             chains (as kube-proxy's partial sync writes them), and for nftables knftables' \
             `nft --json list chains` and a transaction recreating the Service's chains and \
             flushing the stale endpoint chain. Both kube-proxy rulesets stay loaded (with \
             Ferry's agent running) during the changes; kube-proxy's later clean-up of stale \
             chains is not timed.\n",
            n = cp.services,
            e = cp.endpoints,
        );
        cp_tables(&mut out, cp);
        out.push('\n');
    }
    if let Some(m) = &r.memory {
        memory_table(&mut out, m);
    }
    let mut notes = Vec::new();
    for e in &r.e2e {
        for (name, run) in [
            ("Ferry", &e.ferry),
            ("iptables", &e.iptables),
            ("nftables", &e.nftables),
        ] {
            if let Some(err) = &run.error {
                notes.push(format!("{} Services, {name}: {err}", e.services));
            }
            if let Some(first) = run.traffic.as_ref().and_then(|t| t.first_error.as_ref()) {
                notes.push(format!(
                    "{} Services, {name}: first failed attempt: {first}",
                    e.services
                ));
            }
        }
    }
    if let Some(cp) = &r.cp {
        notes.extend(cp.errors.iter().map(|e| format!("control plane: {e}")));
    }
    if let Some(m) = &r.memory {
        notes.extend(m.errors.iter().map(|e| format!("agent memory: {e}")));
    }
    if !notes.is_empty() {
        let _ = writeln!(out, "### Notes\n");
        for n in notes {
            let _ = writeln!(out, "- {n}");
        }
    }
    out
}
