//! The markdown report: ferry-dns next to unbound and knot, with
//! ferry-dns / unbound and ferry-dns / knot ratios and, per row, what a
//! ratio above 1 means; then ferry-dns's memory against CoreDNS's formula.

use std::fmt::Write as _;
use std::time::Duration;

use super::model::{self, QueryKind};
use super::servers::Which;
use super::{Results, ServerRun, Settings, dnsperf};
use crate::process::Rss;
use crate::report::{RunInfo, fine_ratio as ratio};
use crate::stats::Summary;

const NONE: &str = "–";
const BETTER: &str = "ferry-dns better";
const WORSE: &str = "ferry-dns worse";
/// CoreDNS's published throughput per core (its kubernetes plugin).
pub const COREDNS_QPS_PER_CORE: f64 = 16_800.0;

/// CoreDNS's published memory formula, in MiB: (pods + services) × 0.86 KB
/// + 49 MB (KB and MB read as KiB and MiB).
pub fn coredns_mib(objects: usize) -> f64 {
    objects as f64 * 0.86 / 1024.0 + 49.0
}

fn dur(d: Option<Duration>) -> String {
    match d {
        None => NONE.into(),
        Some(d) if d < Duration::from_millis(1) => format!("{} µs", d.as_micros()),
        Some(d) if d < Duration::from_secs(1) => format!("{:.2} ms", d.as_secs_f64() * 1e3),
        Some(d) => format!("{:.2} s", d.as_secs_f64()),
    }
}

fn secs(d: Option<Duration>) -> Option<f64> {
    d.map(|d| d.as_secs_f64())
}

fn mib(r: Option<Rss>) -> String {
    r.map_or_else(|| NONE.into(), |r| format!("{:.1} MiB", r.mib()))
}

fn peak(r: Option<Rss>) -> Option<Rss> {
    r.map(|r| Rss {
        now_kib: r.peak_kib,
        peak_kib: r.peak_kib,
    })
}

fn pair(s: &Summary) -> String {
    if s.count == 0 {
        return NONE.into();
    }
    format!("{} / {}", dur(s.p50), dur(s.p99))
}

struct Table {
    out: String,
}

impl Table {
    #[allow(clippy::too_many_arguments)]
    fn row(&mut self, label: &str, cells: [String; 3], ru: String, rk: String, means: &str) {
        let [f, u, k] = cells;
        let _ = writeln!(
            self.out,
            "| {label} | {f} | {u} | {k} | {ru} | {rk} | {means} |"
        );
    }

    fn context(&mut self, label: &str, cells: [String; 3]) {
        self.row(label, cells, NONE.into(), NONE.into(), NONE);
    }

    /// A row of one number per server, with both ratios.
    fn numbers(
        &mut self,
        label: &str,
        runs: &[Option<&ServerRun>; 3],
        value: impl Fn(&ServerRun) -> Option<f64>,
        show: impl Fn(f64) -> String,
        means: &str,
    ) {
        let v: Vec<Option<f64>> = runs.iter().map(|r| r.and_then(&value)).collect();
        let get = |i: usize| v.get(i).copied().flatten();
        let cell = |i: usize| get(i).map_or_else(|| NONE.into(), &show);
        self.row(
            label,
            [cell(0), cell(1), cell(2)],
            ratio(get(0), get(1)),
            ratio(get(0), get(2)),
            means,
        );
    }
}

fn rate(r: f64) -> String {
    format!("{r:.0}/s")
}

fn mix_line(r: &Results) -> String {
    let total: usize = r.mix.values().sum();
    let parts: Vec<String> = QueryKind::ALL
        .iter()
        .map(|k| {
            let n = r.mix.get(k).copied().unwrap_or(0);
            format!(
                "{} {:.0}%",
                k.describe(),
                100.0 * n as f64 / total.max(1) as f64
            )
        })
        .collect();
    format!("{total} queries: {}", parts.join(", "))
}

/// The whole report.
pub fn markdown(s: &Settings, info: &RunInfo, r: &Results) -> String {
    let by = |w: Which| r.servers.iter().find(|x| x.which == w && x.error.is_none());
    let any = |w: Which| r.servers.iter().find(|x| x.which == w);
    let runs = [by(Which::FerryDns), by(Which::Unbound), by(Which::Knot)];
    let mut t = Table { out: String::new() };
    let o = &mut t.out;
    let _ = writeln!(o, "# ferry-dns vs unbound and knot\n");
    let _ = writeln!(
        o,
        "One run of `dns-bench` on this machine: {} cores, {} RAM, Linux {}, git {}, {:.1} s wall. \
         Load average {} before, {} after (whatever else runs here shares the cores). \
         Everything ran inside one network namespace of the bench's own (loopback only): the \
         apiserver, the three servers (each pinned to CPU 1 with `taskset -c 1`) and dnsperf \
         (pinned to CPU 0). The servers not being measured sat idle on CPU 1 meanwhile.\n",
        info.cores,
        info.mem_total,
        info.kernel,
        info.git_rev,
        info.wall.as_secs_f64(),
        r.loadavg.0,
        r.loadavg.1,
    );
    let version = |w: Which| any(w).map_or_else(|| "not run".into(), |x| x.version.clone());
    let _ = writeln!(
        o,
        "- **ferry-dns**: `{}`, `--zone {} --ttl {} --pods verified --workers 1`, reading Services, \
         EndpointSlices and Pods from `ferry-apiserver` (`{}`) through watches; ready is its \
         `/ready` answering 200 (then checked with one query).",
        version(Which::FerryDns),
        model::ZONE,
        model::TTL,
        r.apiserver_version
    );
    let _ = writeln!(
        o,
        "- **unbound**: `{}`, the static zone as an `auth-zone` (for-downstream, no fallback), \
         `num-threads: 1`, iterator module only, no chroot, no remote control.",
        version(Which::Unbound)
    );
    let _ = writeln!(
        o,
        "- **knot**: `{}`, the same zone file, `udp-workers: 1`, `tcp-workers: 1`, \
         `background-workers: 1`, zone loaded whole, no journal.",
        version(Which::Knot)
    );
    let [v4, dual, headless] = r.services_by_kind;
    let _ = writeln!(
        o,
        "- **Cluster** (in `ferry-apiserver`, Service CIDRs `{}`): {} namespaces; {} Services \
         without selectors, each with the named TCP port `{}` {}: {v4} IPv4 ClusterIP, {dual} \
         `RequireDualStack` (an IPv4 and an IPv6 cluster IP), {headless} headless (`clusterIP: \
         None`) with an EndpointSlice of {} ready IPv4 endpoints written by the bench ({} of them \
         with a `hostname`); {} Pods spread over the namespaces, each with `status.podIP` / \
         `podIPs` (the apiserver drops a Pod's status on create, so each Pod is created and then \
         given its status through the `status` subresource, as a kubelet does).",
        model::SERVICE_CIDRS,
        s.namespaces,
        s.services,
        model::PORT_NAME,
        model::PORT,
        model::HEADLESS_ENDPOINTS,
        2,
        s.pods,
    );
    let l = &r.load;
    let _ = writeln!(
        o,
        "- **Load** through kube-rs, {} requests in flight: {} requests in {:.1} s (namespaces \
         {:.2} s, Services {:.1} s, EndpointSlices {:.1} s, Pods with their status {:.1} s); the \
         apiserver's CPU was quiet {:.1} s later. The servers start after that. The apiserver \
         runs with `--controllers {}`: every Service is selector-less, so its EndpointSlice \
         controller has nothing to write, but re-evaluating the Services on every Pod event kept \
         it busy for minutes after the load (on the servers' core too: it is not pinned).",
        l.concurrency,
        l.requests,
        l.total.as_secs_f64(),
        l.namespaces.as_secs_f64(),
        l.services.as_secs_f64(),
        l.slices.as_secs_f64(),
        l.pods.as_secs_f64(),
        r.settle.as_secs_f64(),
        s.controllers,
    );
    let _ = writeln!(
        o,
        "- **Static zone** for `{}.`, generated from the same objects (with the cluster IPs the \
         apiserver assigned): {} records, {:.1} MiB — SOA and NS at the apex, A/AAAA and \
         `_http._tcp` SRV per ClusterIP Service, per headless Service an A per endpoint plus \
         each endpoint's own A (hostname or dashed IP) and SRV, and `a-b-c-d.<ns>.pod` A per Pod.",
        model::ZONE,
        r.zone_records,
        r.zone_bytes as f64 / 1048576.0
    );
    let _ = writeln!(
        o,
        "- **Queries**: one file shared by all three, shuffled with a fixed seed: {}.",
        mix_line(r)
    );
    let _ = writeln!(
        o,
        "- **dnsperf** (`{}`) over UDP, `-T 1 -c {} -q {}`, {} rounds, the servers taking turns \
         (the order reversed every other round); per turn a full-speed run of {} s (the table \
         shows the round with the most queries/s) and a run at a fixed {} queries/s with `-v`, \
         whose per-query latencies give p50/p99 (pooled over the rounds). This dnsperf has no \
         latency histogram, and printing every query costs it enough CPU that it would be the \
         limit of a full-speed run.",
        r.dnsperf_version,
        s.clients,
        s.outstanding,
        s.rounds,
        s.duration.as_secs(),
        s.latency_qps
    );
    let checked: Vec<&str> = r
        .servers
        .iter()
        .filter(|x| x.ready.is_some())
        .map(|x| x.which.name())
        .collect();
    if r.sanity.mismatches.is_empty() {
        let _ = writeln!(
            o,
            "- **Answer check** before measuring: {} names (3 of each kind) asked with `dig` of \
             {}: every answer (rcode, records, TTL {}) matched the model, so the servers agree.",
            r.sanity.names,
            checked.join(", "),
            model::TTL
        );
    } else {
        let _ = writeln!(
            o,
            "- **Answer check** before measuring: {} names (3 of each kind) asked with `dig` of \
             {}: {} answers differed from the model (listed below the tables).",
            r.sanity.names,
            checked.join(", "),
            r.sanity.mismatches.len()
        );
    }
    let _ = writeln!(
        o,
        "- Ratios are ferry-dns / unbound and ferry-dns / knot; the last column says what a \
         ratio above 1 means. \"qps per core\" divides answered queries by the server's own CPU \
         time during the run (user + system, all threads), so a server that did not fill its \
         core is not penalised (a server well below 1.0 core in the CPU row was held back by \
         the load generator or by loopback wake-ups, not by its own work); CoreDNS publishes about {:.0} queries/s per core for its \
         kubernetes plugin.\n",
        COREDNS_QPS_PER_CORE
    );

    let _ = writeln!(
        t.out,
        "| metric | ferry-dns | unbound | knot | ferry-dns / unbound | ferry-dns / knot | ratio > 1 means |"
    );
    let _ = writeln!(t.out, "| --- | ---: | ---: | ---: | ---: | ---: | --- |");
    let best = |x: &ServerRun| x.best().cloned();
    t.numbers(
        &format!("queries/s, full speed (best of {} rounds)", s.rounds),
        &runs,
        |x| best(x).map(|p| p.qps),
        rate,
        BETTER,
    );
    let each = |x: Option<&ServerRun>| {
        x.map_or_else(
            || NONE.into(),
            |x| {
                x.full
                    .iter()
                    .map(|p| format!("{:.0}", p.qps))
                    .collect::<Vec<_>>()
                    .join(" / ")
            },
        )
    };
    t.context(
        "queries/s of each round",
        [each(runs[0]), each(runs[1]), each(runs[2])],
    );
    t.numbers(
        "queries per second of server CPU (\"qps per core\")",
        &runs,
        |x| best(x).map(|p| p.per_core()),
        rate,
        BETTER,
    );
    t.numbers(
        &format!(
            "qps per core / CoreDNS's published {:.0}",
            COREDNS_QPS_PER_CORE
        ),
        &runs,
        |x| best(x).map(|p| p.per_core() / COREDNS_QPS_PER_CORE),
        |v| format!("{v:.2}"),
        BETTER,
    );
    let cores = |x: Option<&ServerRun>, f: fn(&dnsperf::Perf) -> f64| {
        x.and_then(|x| x.best().map(f))
            .map_or_else(|| NONE.into(), |v| format!("{v:.2}"))
    };
    t.context(
        "server CPU during that run (cores; pinned to CPU 1)",
        [
            cores(runs[0], dnsperf::Perf::server_cores),
            cores(runs[1], dnsperf::Perf::server_cores),
            cores(runs[2], dnsperf::Perf::server_cores),
        ],
    );
    t.context(
        "dnsperf CPU during that run (cores; pinned to CPU 0)",
        [
            cores(runs[0], dnsperf::Perf::load_cores),
            cores(runs[1], dnsperf::Perf::load_cores),
            cores(runs[2], dnsperf::Perf::load_cores),
        ],
    );
    let lost = |x: Option<&ServerRun>, fixed: bool| {
        x.and_then(|x| {
            if fixed {
                x.fixed.first().map(|_| {
                    let (c, l) = x
                        .fixed
                        .iter()
                        .fold((0, 0), |(c, l), p| (c + p.completed, l + p.lost));
                    (c, l)
                })
            } else {
                x.best().map(|p| (p.completed, p.lost))
            }
        })
        .map_or_else(|| NONE.into(), |(c, l)| format!("{c} / {l}"))
    };
    t.context(
        "answered / lost, full speed",
        [
            lost(runs[0], false),
            lost(runs[1], false),
            lost(runs[2], false),
        ],
    );
    t.numbers(
        &format!(
            "average latency at full speed (dnsperf, {} outstanding)",
            s.outstanding
        ),
        &runs,
        |x| secs(best(x).and_then(|p| p.avg_latency)),
        |v| dur(Some(Duration::from_secs_f64(v))),
        WORSE,
    );
    let fixed: Vec<Summary> = runs
        .iter()
        .map(|x| x.map(ServerRun::fixed_latencies).unwrap_or_default())
        .collect();
    let f = |i: usize| fixed.get(i).cloned().unwrap_or_default();
    let pr = |a: &Summary, b: &Summary| {
        if a.count == 0 || b.count == 0 {
            return NONE.to_string();
        }
        format!(
            "{} / {}",
            ratio(secs(a.p50), secs(b.p50)),
            ratio(secs(a.p99), secs(b.p99))
        )
    };
    t.row(
        &format!("latency p50 / p99 at {} queries/s", s.latency_qps),
        [pair(&f(0)), pair(&f(1)), pair(&f(2))],
        pr(&f(0), &f(1)),
        pr(&f(0), &f(2)),
        WORSE,
    );
    t.row(
        &format!("latency max at {} queries/s", s.latency_qps),
        [dur(f(0).max), dur(f(1).max), dur(f(2).max)],
        ratio(secs(f(0).max), secs(f(1).max)),
        ratio(secs(f(0).max), secs(f(2).max)),
        WORSE,
    );
    t.context(
        &format!(
            "answered / lost at {} queries/s (all rounds)",
            s.latency_qps
        ),
        [
            lost(runs[0], true),
            lost(runs[1], true),
            lost(runs[2], true),
        ],
    );
    let expected_nx = r.mix.get(&QueryKind::Nxdomain).copied().unwrap_or(0) as f64
        / r.mix.values().sum::<usize>().max(1) as f64;
    let share = |x: Option<&ServerRun>| {
        x.and_then(ServerRun::best).map_or_else(
            || NONE.into(),
            |p| format!("{:.1}%", 100.0 * p.rcode_share("NXDOMAIN")),
        )
    };
    t.context(
        &format!(
            "NXDOMAIN share of answers (the mix has {:.1}%)",
            100.0 * expected_nx
        ),
        [share(runs[0]), share(runs[1]), share(runs[2])],
    );
    t.numbers(
        "start to ready (ferry-dns: spawn to `/ready` 200 with every object synced; others: zone loaded and answering)",
        &runs,
        |x| secs(x.ready),
        |v| dur(Some(Duration::from_secs_f64(v))),
        WORSE,
    );
    t.numbers(
        "RSS when ready",
        &runs,
        |x| x.rss_ready.map(Rss::mib),
        |v| format!("{v:.1} MiB"),
        WORSE,
    );
    t.numbers(
        "RSS after the runs",
        &runs,
        |x| x.rss_end.map(Rss::mib),
        |v| format!("{v:.1} MiB"),
        WORSE,
    );
    t.numbers(
        "peak RSS (VmHWM)",
        &runs,
        |x| peak(x.rss_end).map(Rss::mib),
        |v| format!("{v:.1} MiB"),
        WORSE,
    );

    let objects = s.pods + s.services;
    let formula = coredns_mib(objects);
    let o = &mut t.out;
    let _ = writeln!(
        o,
        "\nunbound and knot hold only the finished zone; ferry-dns holds what it derives from \
         the watched objects, so their memory rows compare different work.\n"
    );
    let _ = writeln!(o, "### ferry-dns memory against CoreDNS's formula\n");
    let _ = writeln!(
        o,
        "| pods + services | CoreDNS: (pods + services) × 0.86 KB + 49 MB | ferry-dns RSS when ready | after the runs | peak (VmHWM) | ferry-dns peak / CoreDNS |"
    );
    let _ = writeln!(o, "| ---: | ---: | ---: | ---: | ---: | ---: |");
    let fd = runs[0];
    let fd_peak = fd.and_then(|x| peak(x.rss_end));
    let _ = writeln!(
        o,
        "| {objects} | {formula:.1} MiB | {} | {} | {} | {} |",
        mib(fd.and_then(|x| x.rss_ready)),
        mib(fd.and_then(|x| x.rss_end)),
        mib(fd_peak),
        ratio(fd_peak.map(Rss::mib), Some(formula)),
    );
    let _ = writeln!(
        o,
        "\nKB and MB read as KiB and MiB. CoreDNS's own memory for these objects was not measured \
         here (no CoreDNS in this run); the formula is its published sizing guide."
    );
    for x in &r.servers {
        if let Some(e) = &x.error {
            let _ = writeln!(o, "\n**{}** was not measured (fully): {e}", x.which.name());
        }
    }
    if !r.sanity.mismatches.is_empty() {
        let _ = writeln!(o, "\nAnswers that differed from the model:\n");
        for m in &r.sanity.mismatches {
            let _ = writeln!(o, "- {m}");
        }
    }
    t.out
}
