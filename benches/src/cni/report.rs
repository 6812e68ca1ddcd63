//! The CNI benchmark's markdown report.

use std::fmt::Write as _;
use std::time::Duration;

use super::lane::{BRIDGE, Binaries, POD_RANGE_V4, POD_RANGE_V6};
use super::phase::Phase;
use super::{CniRun, Floor, LaneRun, Plugin, Settings, Stack};
use crate::report::{RunInfo, dur_ratio};
use crate::stats::Summary;

fn msf(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

/// "p50 / p99 / mean ms".
fn triple(s: &Summary) -> String {
    match (s.p50, s.p99, s.mean) {
        (Some(a), Some(b), Some(c)) => format!("{} / {} / {} ms", msf(a), msf(b), msf(c)),
        _ => "–".into(),
    }
}

fn triple_ratio(a: &Summary, b: &Summary) -> String {
    format!(
        "{} / {} / {}",
        dur_ratio(a.p50, b.p50),
        dur_ratio(a.p99, b.p99),
        dur_ratio(a.mean, b.mean)
    )
}

fn wall_rate(p: &Phase) -> String {
    format!("{:.2} s ({:.0}/s)", p.wall.as_secs_f64(), p.rate())
}

fn opt_ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "–".into(), msf)
}

/// The markdown report of `run`.
pub fn markdown(
    s: &Settings,
    bin: &Binaries,
    info: &RunInfo,
    reference_version: &str,
    run: &CniRun,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# ferry-cni vs bridge + host-local\n");
    let _ = writeln!(
        out,
        "One run of `cni-bench` on this machine: {} cores, {} RAM, Linux {}, git {}, {:.1} s wall. \
         Load average {} before, {} after (whatever else runs here shares the cores).\n",
        info.cores,
        info.mem_total,
        info.kernel,
        info.git_rev,
        info.wall.as_secs_f64(),
        run.load_before,
        run.load_after,
    );
    let _ = writeln!(out, "- ferry-cni: `{}`", bin.ferry.display());
    let _ = writeln!(
        out,
        "- reference: `{}` (bridge `{BRIDGE}`, isGateway true, ipMasq false) with `{}`, \
         containernetworking-plugins {reference_version}",
        bin.bridge().display(),
        bin.host_local().display()
    );
    let per = if s.rounds > 1 {
        format!(
            "; {} rounds, samples pooled ({} per cell)",
            s.rounds,
            s.pods * s.rounds
        )
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "- Workload per plugin and address setup: {n} pods ADDed one at a time, then DELed one \
         at a time; then {n} pods ADDed {c} at once, then DELed {c} at once{per}. {w} untimed \
         ADD/DEL pairs per plugin first; the plugins take turns going first (the \
         address setups too, round by round).",
        n = s.pods,
        c = s.concurrency,
        w = s.warmup,
    );
    let _ = writeln!(
        out,
        "- Each plugin runs inside its own node namespace as a runtime runs it, \
         `nsenter --net=/var/run/netns/<node> <plugin>` with the `CNI_*` environment and the \
         config on stdin (cniVersion {v}; the same host-local `ipam` section for both: ranges \
         {v4} (dual-stack: + {v6}), default routes, a fresh dataDir). Pod namespaces exist \
         before the clock starts. A time is one invocation's wall time, spawn to exit, \
         `nsenter` included (its floor is the last table). After every ADD phase the harness \
         checks the addresses are distinct and every pod has its veth and reservation; after \
         every DEL phase that nothing is left.",
        v = s.cni_version,
        v4 = POD_RANGE_V4,
        v6 = POD_RANGE_V6,
    );
    let _ = writeln!(
        out,
        "- Ratio = ferry-cni / reference: below 1 means ferry-cni is faster (or cheaper).\n"
    );
    let floor = run.floors.first();
    for &stack in &s.stacks {
        let (Some(f), Some(r)) = (
            run.lane(Plugin::Ferry, stack),
            run.lane(Plugin::Reference, stack),
        ) else {
            continue;
        };
        lane_table(&mut out, s, stack, f, r, floor);
    }
    floor_table(&mut out, s, &run.floors);
    out
}

fn lane_table(
    out: &mut String,
    s: &Settings,
    stack: Stack,
    f: &LaneRun,
    r: &LaneRun,
    floor: Option<&Floor>,
) {
    let range = match stack {
        Stack::V4 => POD_RANGE_V4.to_string(),
        Stack::Dual => format!("{POD_RANGE_V4} + {POD_RANGE_V6}"),
    };
    let heading = match stack {
        Stack::V4 => "IPv4",
        Stack::Dual => "Dual-stack",
    };
    let _ = writeln!(out, "## {heading} ({range})\n");
    let _ = writeln!(
        out,
        "| {} pods, {} | ferry-cni | bridge + host-local | ferry / reference |",
        s.pods,
        stack.name()
    );
    let _ = writeln!(out, "| --- | ---: | ---: | ---: |");
    let mut row = |label: String, a: String, b: String, q: String| {
        let _ = writeln!(out, "| {label} | {a} | {b} | {q} |");
    };
    let c = s.concurrency;
    for (label, fp, rp) in [
        ("ADD one at a time".to_string(), &f.add_seq, &r.add_seq),
        ("DEL one at a time".to_string(), &f.del_seq, &r.del_seq),
        (format!("ADD {c} at once"), &f.add_par, &r.add_par),
        (format!("DEL {c} at once"), &f.del_par, &r.del_par),
    ] {
        let (fs, rs) = (fp.summary(), rp.summary());
        row(
            format!("{label}: p50 / p99 / mean"),
            triple(&fs),
            triple(&rs),
            triple_ratio(&fs, &rs),
        );
    }
    for (label, fp, rp) in [
        (
            format!("{} ADDs {c} at once: wall (rate)", s.pods),
            &f.add_par,
            &r.add_par,
        ),
        (
            format!("{} DELs {c} at once: wall (rate)", s.pods),
            &f.del_par,
            &r.del_par,
        ),
    ] {
        row(
            label,
            wall_rate(fp),
            wall_rate(rp),
            dur_ratio(Some(fp.wall), Some(rp.wall)),
        );
    }
    let cpu = |l: &LaneRun| {
        format!(
            "{} / {} ms",
            opt_ms(l.add_seq.cpu_per_op()),
            opt_ms(l.del_seq.cpu_per_op())
        )
    };
    row(
        "CPU per ADD / DEL, one at a time (user + system of the processes)".into(),
        cpu(f),
        cpu(r),
        format!(
            "{} / {}",
            dur_ratio(f.add_seq.cpu_per_op(), r.add_seq.cpu_per_op()),
            dur_ratio(f.del_seq.cpu_per_op(), r.del_seq.cpu_per_op())
        ),
    );
    if let Some(floor) = floor.and_then(|fl| fl.seq.summary().p50) {
        let net = |p: &Phase| p.summary().p50.map(|d| d.saturating_sub(floor));
        let cell = |l: &LaneRun| {
            format!(
                "{} / {} ms",
                opt_ms(net(&l.add_seq)),
                opt_ms(net(&l.del_seq))
            )
        };
        row(
            "ADD / DEL one at a time, p50 less the nsenter floor's p50".into(),
            cell(f),
            cell(r),
            format!(
                "{} / {}",
                dur_ratio(net(&f.add_seq), net(&r.add_seq)),
                dur_ratio(net(&f.del_seq), net(&r.del_seq))
            ),
        );
    }
    let _ = writeln!(out);
}

fn floor_table(out: &mut String, s: &Settings, floors: &[Floor]) {
    if floors.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "## Floors (inside a node namespace, {} runs each)\n",
        s.pods
    );
    let _ = writeln!(
        out,
        "| command | one at a time: p50 / p99 / mean | {} at once: p50 / p99 / mean | CPU per run |",
        s.concurrency
    );
    let _ = writeln!(out, "| --- | ---: | ---: | ---: |");
    for f in floors {
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} ms |",
            f.label,
            triple(&f.seq.summary()),
            triple(&f.par.summary()),
            opt_ms(f.seq.cpu_per_op())
        );
    }
}
