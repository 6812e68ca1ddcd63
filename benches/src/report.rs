//! What one server's run measured, and the markdown table comparing the two.

use std::fmt::Write as _;
use std::time::Duration;

use crate::Workload;
use crate::process::{CpuUse, Rss};
use crate::stats::Summary;

/// A bulk load of one kind.
#[derive(Debug, Clone, Default)]
pub struct Load {
    pub count: usize,
    pub wall: Duration,
    pub latency: Summary,
    /// Mean size of one stored value, in bytes.
    pub mean_bytes: usize,
    pub cpu: CpuUse,
}

impl Load {
    pub fn per_second(&self) -> f64 {
        self.count as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

/// Full and paged lists of the bulk Services.
#[derive(Debug, Clone, Default)]
pub struct Lists {
    pub full: Summary,
    pub paged: Summary,
    /// Items one full list returned.
    pub items: usize,
    /// Bytes one full list returned.
    pub full_bytes: usize,
    /// Pages one paged list took.
    pub pages: usize,
    /// CPU over all full lists, and over all paged ones.
    pub full_cpu: CpuUse,
    pub paged_cpu: CpuUse,
    pub runs: usize,
}

/// The watch fan-out.
#[derive(Debug, Clone, Default)]
pub struct Fanout {
    pub watchers: usize,
    pub clients: usize,
    pub writes: usize,
    /// Time to open every watch.
    pub open_wall: Duration,
    pub delivery: Summary,
    pub received: usize,
    pub expected: usize,
    /// Watch streams that ended or failed before their last event.
    pub failed_watchers: usize,
    pub first_error: Option<String>,
    pub write_latency: Summary,
    pub rss_with_watches: Option<Rss>,
    /// CPU from the first timed write until the last watcher finished.
    pub cpu: CpuUse,
}

/// The same GET as different identities (ferry only).
#[derive(Debug, Clone, Default)]
pub struct Auth {
    pub rows: Vec<AuthRow>,
}

#[derive(Debug, Clone, Default)]
pub struct AuthRow {
    pub who: String,
    pub count: usize,
    pub latency: Summary,
    pub cpu: CpuUse,
}

/// Everything measured against one server.
#[derive(Debug, Clone, Default)]
pub struct ServerRun {
    pub name: String,
    pub version: String,
    pub rss_idle: Option<Rss>,
    pub services: Load,
    pub slices: Load,
    pub rss_loaded: Option<Rss>,
    pub lists: Lists,
    pub fanout: Fanout,
    pub rss_end: Option<Rss>,
    /// EndpointSlices and Endpoints in the bulk namespace right after the
    /// load and at the end (ferry only: its controllers add their own).
    pub derived_after_load: Option<(usize, usize)>,
    pub derived_at_end: Option<(usize, usize)>,
    /// Time after the load until the store stopped changing, and the writes
    /// the server made meanwhile (ferry's controllers).
    pub settle: Option<(Duration, u64)>,
    pub rss_settled: Option<Rss>,
    pub auth: Option<Auth>,
}

/// Facts about the run printed above the table.
#[derive(Debug, Clone, Default)]
pub struct RunInfo {
    pub cores: usize,
    pub mem_total: String,
    pub kernel: String,
    pub git_rev: String,
    pub wall: Duration,
}

impl RunInfo {
    /// This machine's cores, memory and kernel, the checkout's git revision,
    /// and `wall`, the run's duration.
    pub fn gather(wall: Duration) -> Self {
        Self {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            mem_total: mem_total(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            git_rev: git_rev(),
            wall,
        }
    }
}

fn mem_total() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().strip_suffix("kB"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .map_or_else(
            || "?".into(),
            |kib| format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0),
        )
}

fn git_rev() -> String {
    let describe = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let rev = describe(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "?".into());
    let dirty =
        describe(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    if dirty {
        format!("{rev} (with uncommitted changes)")
    } else {
        rev
    }
}

pub(crate) fn ms(d: Option<Duration>) -> String {
    match d {
        Some(d) if d >= Duration::from_secs(10) => format!("{:.1} s", d.as_secs_f64()),
        Some(d) => format!("{:.2} ms", d.as_secs_f64() * 1e3),
        None => "–".into(),
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn mib(r: Option<Rss>) -> String {
    r.map_or_else(|| "–".into(), |r| format!("{:.1} MiB", r.mib()))
}

/// `total / n` as a short duration.
fn per(total: Duration, n: usize) -> Option<Duration> {
    u32::try_from(n).ok().filter(|&n| n > 0).map(|n| total / n)
}

fn short(d: Option<Duration>) -> String {
    match d {
        Some(d) if d < Duration::from_millis(1) => format!("{} µs", d.as_micros()),
        other => ms(other),
    }
}

/// Server and harness CPU per operation: "server / harness".
fn cpu_cell(c: CpuUse, n: usize) -> String {
    format!("{} / {}", short(per(c.server, n)), short(per(c.harness, n)))
}

fn cpu_ratio(a: CpuUse, b: CpuUse) -> String {
    dur_ratio(Some(a.server), Some(b.server))
}

/// `a / b` to two places, or a dash when either is missing.
pub(crate) fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "–".into(),
    }
}

/// `a / b`, with enough digits that a small ratio does not read as 0.
pub(crate) fn fine_ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => {
            let r = a / b;
            if r >= 100.0 {
                format!("{r:.0}")
            } else if r >= 10.0 {
                format!("{r:.1}")
            } else if r >= 0.1 {
                format!("{r:.2}")
            } else if r >= 0.01 {
                format!("{r:.3}")
            } else {
                format!("{r:.4}")
            }
        }
        _ => "–".into(),
    }
}

pub(crate) fn dur_ratio(a: Option<Duration>, b: Option<Duration>) -> String {
    ratio(a.map(|d| d.as_secs_f64()), b.map(|d| d.as_secs_f64()))
}

fn pair_ratio(a: &Summary, b: &Summary) -> String {
    format!("{} / {}", dur_ratio(a.p50, b.p50), dur_ratio(a.p99, b.p99))
}

fn p50_p99(s: &Summary) -> String {
    format!("{} / {}", ms(s.p50), ms(s.p99))
}

/// A table row: the label, then each server's cell, then the ratio.
struct Table {
    out: String,
    with_etcd: bool,
}

impl Table {
    fn row(&mut self, label: &str, ferry: String, etcd: String, ratio: String) {
        if self.with_etcd {
            let _ = writeln!(self.out, "| {label} | {ferry} | {etcd} | {ratio} |");
        } else {
            let _ = writeln!(self.out, "| {label} | {ferry} |");
        }
    }
}

/// The markdown report; `etcd` is None when it was skipped.
pub fn markdown(
    w: &Workload,
    info: &RunInfo,
    ferry: &ServerRun,
    etcd: Option<&ServerRun>,
) -> String {
    let empty = ServerRun::default();
    let e = etcd.unwrap_or(&empty);
    let mut t = Table {
        out: String::new(),
        with_etcd: etcd.is_some(),
    };
    let _ = writeln!(t.out, "# ferry-apiserver vs etcd\n");
    let _ = writeln!(
        t.out,
        "One run of `apiserver-bench` on this machine: {} cores, {} RAM, Linux {}, \
         git {}, {} wall. All traffic on 127.0.0.1; clients and servers share the cores.\n",
        info.cores,
        info.mem_total,
        info.kernel,
        info.git_rev,
        secs(info.wall)
    );
    let _ = writeln!(t.out, "- ferry: `{}`", ferry.version);
    if etcd.is_some() {
        let _ = writeln!(t.out, "- etcd: `{}`", e.version);
    }
    let _ = writeln!(
        t.out,
        "- Workload: {n} Services + {n} EndpointSlices (3 endpoints each), {c} in flight; \
         lists {r}x each (paged: limit={p}); {wa} watches over {cl} clients, {wr} timed writes \
         {iv:?} apart.",
        n = w.services,
        c = w.concurrency,
        r = w.list_runs,
        p = w.page_size,
        wa = w.watchers,
        cl = w.watch_clients(),
        wr = w.writes,
        iv = w.write_interval,
    );
    let _ = writeln!(
        t.out,
        "- ferry is driven with kube-rs over HTTPS (HTTP/1.1: one connection per request in \
         flight and per watch); etcd with etcd-client over plaintext gRPC (HTTP/2). ferry's \
         creates and watch events are decoded into typed objects; etcd's watch values are \
         decoded as the same Service JSON. Ratio = ferry / etcd: above 1 means ferry is \
         faster for rates, slower or bigger for times and memory.\n"
    );
    if t.with_etcd {
        let _ = writeln!(t.out, "| metric | ferry-apiserver | etcd | ferry/etcd |");
        let _ = writeln!(t.out, "| --- | ---: | ---: | ---: |");
    } else {
        let _ = writeln!(t.out, "| metric | ferry-apiserver |");
        let _ = writeln!(t.out, "| --- | ---: |");
    }
    let rate = |l: &Load| format!("{:.0}/s ({})", l.per_second(), secs(l.wall));
    t.row(
        &format!("create {} Services: rate (wall)", w.services),
        rate(&ferry.services),
        rate(&e.services),
        ratio(
            Some(ferry.services.per_second()),
            Some(e.services.per_second()),
        ),
    );
    t.row(
        &format!("create {} EndpointSlices: rate (wall)", w.services),
        rate(&ferry.slices),
        rate(&e.slices),
        ratio(Some(ferry.slices.per_second()), Some(e.slices.per_second())),
    );
    let total = |r: &ServerRun| r.services.wall + r.slices.wall;
    t.row(
        "load total wall time",
        secs(total(ferry)),
        secs(total(e)),
        ratio(
            Some(total(ferry).as_secs_f64()),
            Some(total(e).as_secs_f64()),
        ),
    );
    t.row(
        "Service create latency p50 / p99",
        p50_p99(&ferry.services.latency),
        p50_p99(&e.services.latency),
        pair_ratio(&ferry.services.latency, &e.services.latency),
    );
    t.row(
        "EndpointSlice create latency p50 / p99",
        p50_p99(&ferry.slices.latency),
        p50_p99(&e.slices.latency),
        pair_ratio(&ferry.slices.latency, &e.slices.latency),
    );
    t.row(
        "CPU per create, server / harness (Service)",
        cpu_cell(ferry.services.cpu, ferry.services.count),
        cpu_cell(e.services.cpu, e.services.count),
        cpu_ratio(ferry.services.cpu, e.services.cpu),
    );
    t.row(
        "CPU per create, server / harness (EndpointSlice)",
        cpu_cell(ferry.slices.cpu, ferry.slices.count),
        cpu_cell(e.slices.cpu, e.slices.count),
        cpu_ratio(ferry.slices.cpu, e.slices.cpu),
    );
    let sizes = |r: &ServerRun| format!("{} B / {} B", r.services.mean_bytes, r.slices.mean_bytes);
    t.row(
        "mean stored size Service / EndpointSlice",
        sizes(ferry),
        sizes(e),
        "–".into(),
    );
    let full = |r: &ServerRun| {
        format!(
            "{} ({} items, {:.1} MiB)",
            p50_p99(&r.lists.full),
            r.lists.items,
            r.lists.full_bytes as f64 / 1048576.0
        )
    };
    t.row(
        "list all Services, no limit: p50 / p99",
        full(ferry),
        full(e),
        pair_ratio(&ferry.lists.full, &e.lists.full),
    );
    let paged = |r: &ServerRun| format!("{} ({} pages)", p50_p99(&r.lists.paged), r.lists.pages);
    t.row(
        &format!("list all Services, limit={}: p50 / p99", w.page_size),
        paged(ferry),
        paged(e),
        pair_ratio(&ferry.lists.paged, &e.lists.paged),
    );
    t.row(
        "CPU per full list, server / harness",
        cpu_cell(ferry.lists.full_cpu, ferry.lists.runs),
        cpu_cell(e.lists.full_cpu, e.lists.runs),
        cpu_ratio(ferry.lists.full_cpu, e.lists.full_cpu),
    );
    t.row(
        "CPU per paged list, server / harness",
        cpu_cell(ferry.lists.paged_cpu, ferry.lists.runs),
        cpu_cell(e.lists.paged_cpu, e.lists.runs),
        cpu_ratio(ferry.lists.paged_cpu, e.lists.paged_cpu),
    );
    t.row(
        &format!("open {} watches", w.watchers),
        secs(ferry.fanout.open_wall),
        secs(e.fanout.open_wall),
        ratio(
            Some(ferry.fanout.open_wall.as_secs_f64()),
            Some(e.fanout.open_wall.as_secs_f64()),
        ),
    );
    t.row(
        "watch delivery delay p50 / p99",
        p50_p99(&ferry.fanout.delivery),
        p50_p99(&e.fanout.delivery),
        pair_ratio(&ferry.fanout.delivery, &e.fanout.delivery),
    );
    t.row(
        "watch delivery delay max",
        ms(ferry.fanout.delivery.max),
        ms(e.fanout.delivery.max),
        dur_ratio(ferry.fanout.delivery.max, e.fanout.delivery.max),
    );
    let got = |f: &Fanout| {
        let mut s = format!("{} / {}", f.received, f.expected);
        if f.failed_watchers > 0 {
            let _ = write!(s, " ({} watches failed)", f.failed_watchers);
        }
        s
    };
    t.row(
        "deliveries received / expected",
        got(&ferry.fanout),
        got(&e.fanout),
        "–".into(),
    );
    t.row(
        "timed write latency p50 / p99 (during fan-out)",
        p50_p99(&ferry.fanout.write_latency),
        p50_p99(&e.fanout.write_latency),
        pair_ratio(&ferry.fanout.write_latency, &e.fanout.write_latency),
    );
    t.row(
        "CPU during fan-out (writes to last delivery), server / harness",
        cpu_cell(ferry.fanout.cpu, 1),
        cpu_cell(e.fanout.cpu, 1),
        cpu_ratio(ferry.fanout.cpu, e.fanout.cpu),
    );
    let rss_ratio = |a: Option<Rss>, b: Option<Rss>| ratio(a.map(Rss::mib), b.map(Rss::mib));
    t.row(
        "RSS idle after start",
        mib(ferry.rss_idle),
        mib(e.rss_idle),
        rss_ratio(ferry.rss_idle, e.rss_idle),
    );
    t.row(
        &format!("RSS right after {} + {} objects", w.services, w.services),
        mib(ferry.rss_loaded),
        mib(e.rss_loaded),
        rss_ratio(ferry.rss_loaded, e.rss_loaded),
    );
    t.row(
        "RSS once ferry's controllers settled",
        mib(ferry.rss_settled),
        "–".into(),
        // ferry then holds its controllers' objects too: no like-for-like ratio.
        "–".into(),
    );
    t.row(
        &format!("RSS with {} watches open", w.watchers),
        mib(ferry.fanout.rss_with_watches),
        mib(e.fanout.rss_with_watches),
        rss_ratio(ferry.fanout.rss_with_watches, e.fanout.rss_with_watches),
    );
    let peak = |r: Option<Rss>| {
        r.map(|r| Rss {
            now_kib: r.peak_kib,
            peak_kib: r.peak_kib,
        })
    };
    t.row(
        "peak RSS (VmHWM) over the run",
        mib(peak(ferry.rss_end)),
        mib(peak(e.rss_end)),
        rss_ratio(peak(ferry.rss_end), peak(e.rss_end)),
    );
    if let (Some((s1, e1)), Some((s2, e2)), Some((settle, writes))) =
        (ferry.derived_after_load, ferry.derived_at_end, ferry.settle)
    {
        let _ = writeln!(
            t.out,
            "\nferry's own controllers write too: its namespace `{ns}` held {s1} EndpointSlices \
             ({n} of them the harness's) and {e1} Endpoints right after the load, {s2} and {e2} at \
             the end. The harness waited {settle} after the load, during which the server made \
             {writes} writes, until its revision stood still for 1 s; the lists, the fan-out and \
             the later RSS readings come after that.",
            ns = crate::objects::BULK_NAMESPACE,
            n = w.services,
            settle = secs(settle),
        );
    }
    if let Some(auth) = &ferry.auth {
        let _ = writeln!(
            t.out,
            "\nWho asks: the same GET of one Service, {} times per identity (the identities \
             taking turns in blocks, sequential, connection kept open). The admin is \
             `system:masters`, which skips RBAC; a ServiceAccount token is verified (ES256 \
             signature, claims, its ServiceAccount looked up) and authorized by RBAC each time.\n",
            auth.rows.first().map_or(0, |r| r.count)
        );
        let _ = writeln!(
            t.out,
            "| identity | GET p50 / p99 | CPU per GET, server / harness | p50 / p99 vs admin |"
        );
        let _ = writeln!(t.out, "| --- | ---: | ---: | ---: |");
        let base = auth.rows.first().map(|r| r.latency).unwrap_or_default();
        for r in &auth.rows {
            let _ = writeln!(
                t.out,
                "| {} | {} | {} | {} |",
                r.who,
                p50_p99(&r.latency),
                cpu_cell(r.cpu, r.count),
                pair_ratio(&r.latency, &base)
            );
        }
    }
    for r in std::iter::once(ferry).chain(etcd) {
        if let Some(err) = &r.fanout.first_error {
            let _ = writeln!(t.out, "\n{}: first watch error: {err}", r.name);
        }
    }
    t.out
}
