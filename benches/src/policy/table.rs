//! The markdown the per-packet policy bench writes: what each world's maps
//! hold, then per pod program a row per case with mean, p50 and p99 per
//! policy count and the ratios to the first count (and, when that is 0,
//! of the last to the second: growth between counts that both judge).

use std::fmt::Write as _;
use std::time::Duration;

use super::packet::{Case, Options, PROGRAMS, World};
use crate::stats::Summary;

fn ns(d: Option<Duration>) -> String {
    d.map_or_else(|| "–".into(), |d| d.as_nanos().to_string())
}

fn ratio(a: Option<Duration>, b: Option<Duration>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if !b.is_zero() => {
            format!("x{:.2}", a.as_secs_f64() / b.as_secs_f64())
        }
        _ => "–".into(),
    }
}

fn cell(s: &Summary) -> String {
    format!("{} / {} / {}", ns(s.mean), ns(s.p50), ns(s.p99))
}

fn ratios(a: &Summary, b: &Summary) -> String {
    format!("{} / {}", ratio(a.mean, b.mean), ratio(a.p50, b.p50))
}

/// The section for `worlds` (in `o.policies` order).
pub fn table(o: &Options, worlds: &[World]) -> String {
    let mut out = String::from("## NetworkPolicy per-packet cost (BPF_PROG_TEST_RUN)\n\n");
    let c = &o.cluster;
    let _ = writeln!(
        out,
        "{} pods in {} namespaces, {} of them on this node ({} selected by policies, {} by none); \
         policies as `benches/src/policy/cluster.rs` makes them, compiled by `PolicyState::compile` \
         and written by `PolicyProgrammer` into the detached object's maps. {} packets per program, \
         case and policy count, each timed alone by the kernel, in {} rounds interleaving the policy \
         counts; every verdict and the programs' counters of judged flows checked.\n",
        c.pods(),
        c.namespaces,
        c.local_selected().len() + c.local_unselected().len(),
        c.local_selected().len(),
        c.local_unselected().len(),
        o.packets,
        o.rounds,
    );
    out.push_str(
        "| policies | rule entries | pod identities | policy sets | CIDR prefixes | failed closed | compile | map writes |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for w in worlds {
        let k = &w.contents;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {:.1} ms | {:.1} ms |",
            k.policies,
            k.rules,
            k.identities,
            k.sets,
            k.cidrs,
            k.failed_closed,
            k.compile.as_secs_f64() * 1e3,
            k.write.as_secs_f64() * 1e3,
        );
    }
    let Some(first) = worlds.first() else {
        return out;
    };
    let between = (first.contents.policies == 0 && worlds.len() >= 3)
        .then(|| (&worlds[1], &worlds[worlds.len() - 1]));
    for (pi, (program, what)) in PROGRAMS.iter().enumerate() {
        let _ = write!(
            out,
            "\n### {what}: `{program}`\n\nmean / p50 / p99 in ns; ratios mean / p50.\n\n| case |"
        );
        for w in worlds {
            let _ = write!(out, " {} policies |", w.contents.policies);
        }
        for w in &worlds[1..] {
            let _ = write!(
                out,
                " {} vs {} |",
                w.contents.policies, first.contents.policies
            );
        }
        if let Some((a, b)) = between {
            let _ = write!(out, " {} vs {} |", b.contents.policies, a.contents.policies);
        }
        out.push_str("\n|---|");
        let columns = worlds.len() * 2 - 1 + usize::from(between.is_some());
        out.push_str(&"---:|".repeat(columns));
        out.push('\n');
        for (ci, case) in Case::ALL.iter().enumerate() {
            let _ = write!(out, "| {} |", case.label());
            for w in worlds {
                let _ = write!(out, " {} |", cell(&w.timings[pi][ci]));
            }
            for w in &worlds[1..] {
                let _ = write!(
                    out,
                    " {} |",
                    ratios(&w.timings[pi][ci], &first.timings[pi][ci])
                );
            }
            if let Some((a, b)) = between {
                let _ = write!(out, " {} |", ratios(&b.timings[pi][ci], &a.timings[pi][ci]));
            }
            out.push('\n');
        }
    }
    if first.contents.policies == 0 {
        out.push_str(
            "\nWith 0 policies no pod is isolated: the new-flow, established and denied packets \
             are the same packets passing an endpoint no policy selects (one hash lookup), so \
             their ratio to 0 is the price of being judged at all, not growth with the number \
             of policies; the last ratio column compares two counts that both judge.\n",
        );
    }
    out
}
