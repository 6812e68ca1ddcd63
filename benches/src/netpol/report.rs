//! The markdown report: the connection table (baseline, Ferry,
//! kube-router-style rules, with Ferry / kube-router and each / baseline
//! ratios) and the policy-change table.

use std::fmt::Write as _;
use std::time::Duration;

use super::population::{Role, client_allow_index, server_allow_index};
use super::{Changes, Results, Run, Settings, Traffic};
use crate::report::{RunInfo, fine_ratio as ratio};
use crate::stats::Summary;

const NONE: &str = "–";

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

fn rate(r: f64) -> String {
    if r > 0.0 {
        format!("{r:.0}/s")
    } else {
        NONE.into()
    }
}

/// What a run shows for one metric: its value, or why there is none.
fn cell(run: &Run, t: Option<&Traffic>, f: impl Fn(&Traffic) -> String) -> String {
    match (t, &run.error) {
        (Some(t), _) => f(t),
        (None, Some(_)) => "failed".into(),
        (None, None) => NONE.into(),
    }
}

struct Row<'a> {
    label: String,
    runs: [(&'a Run, Option<&'a Traffic>); 3],
}

impl Row<'_> {
    fn write(
        &self,
        out: &mut String,
        show: impl Fn(&Traffic) -> String,
        num: impl Fn(&Traffic) -> [Option<f64>; 2],
        means: &str,
    ) {
        let [(b, bt), (f, ft), (k, kt)] = self.runs;
        let vals = |t: Option<&Traffic>| t.map(&num).unwrap_or([None, None]);
        let (bv, fv, kv) = (vals(bt), vals(ft), vals(kt));
        let r = |a: [Option<f64>; 2], c: [Option<f64>; 2]| {
            if a[1].is_some() || c[1].is_some() {
                format!("{} / {}", ratio(a[0], c[0]), ratio(a[1], c[1]))
            } else {
                ratio(a[0], c[0])
            }
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {means} |",
            self.label,
            cell(b, bt, &show),
            cell(f, ft, &show),
            cell(k, kt, &show),
            r(fv, kv),
            r(fv, bv),
            r(kv, bv),
        );
    }
}

fn p50_p99(s: &Summary) -> String {
    format!("{} / {}", dur(s.p50), dur(s.p99))
}

fn connection_rows(out: &mut String, r: &Results, s: &Settings) {
    for (what, pick) in [
        (
            "pod IP",
            (|run: &Run| run.pod_ip.as_ref()) as fn(&Run) -> Option<&Traffic>,
        ),
        ("ClusterIP", |run: &Run| run.cluster_ip.as_ref()),
    ] {
        let runs = |label: String| Row {
            label,
            runs: [
                (&r.baseline, pick(&r.baseline)),
                (&r.ferry, pick(&r.ferry)),
                (&r.kube_router, pick(&r.kube_router)),
            ],
        };
        runs(format!(
            "**to the server's {what}**: new connections/s, one at a time"
        ))
        .write(
            out,
            |t| rate(t.connect_rate),
            |t| [Some(t.connect_rate), None],
            "more connections",
        );
        runs(format!("{what}: new connections/s, {} workers", s.workers)).write(
            out,
            |t| rate(t.concurrent_rate),
            |t| [Some(t.concurrent_rate), None],
            "more connections",
        );
        runs(format!("{what}: connect() p50 / p99")).write(
            out,
            |t| p50_p99(&t.connect),
            |t| [secs(t.connect.p50), secs(t.connect.p99)],
            "slower",
        );
        runs(format!(
            "{what}: timed connects / failed / failed concurrently"
        ))
        .write(
            out,
            |t| {
                format!(
                    "{} / {} / {}",
                    t.connect.count, t.errors, t.concurrent_errors
                )
            },
            |_| [None, None],
            NONE,
        );
    }
}

fn changes_table(out: &mut String, c: &Changes, s: &Settings) {
    let _ = writeln!(
        out,
        "\n### Policy change to enforcement (Ferry, {} policies in place)\n",
        s.shape.policies
    );
    let _ = writeln!(
        out,
        "The prober pod connects to `open`'s sink every {} (each attempt given {}), while a \
         deny-all ingress policy selecting `open` is created, then deleted, {} times each. A \
         sample runs from the API's answer to the create or delete until the start of the first \
         attempt of the settled new verdict (it and every later attempt, at least 5, refused or \
         accepted); the resolution is the attempt spacing. kube-router's side is not modelled: its \
         controller answers an event with a full sync (list, rebuild every chain and set, \
         `ipset restore`, `iptables-save` + `iptables-restore`) of this whole ruleset, plus its \
         periodic resync.\n",
        dur(Some(s.probe_every)),
        dur(Some(s.probe_timeout)),
        c.count
    );
    let _ = writeln!(out, "| change | samples | p50 | p99 | max |");
    let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: |");
    for (label, sum) in [
        (
            "deny-all created: API answer to the first refused connection",
            &c.deny,
        ),
        (
            "deny-all deleted: API answer to the first accepted connection",
            &c.allow,
        ),
        ("the API call itself (create or delete)", &c.api_write),
    ] {
        let _ = writeln!(
            out,
            "| {label} | {} | {} | {} | {} |",
            sum.count,
            dur(sum.p50),
            dur(sum.p99),
            dur(sum.max)
        );
    }
    for e in &c.errors {
        let _ = writeln!(out, "\nError: {e}");
    }
}

pub fn markdown(s: &Settings, info: &RunInfo, r: &Results) -> String {
    let sh = &s.shape;
    let mut out = String::new();
    let _ = writeln!(out, "## NetworkPolicy: connections and enforcement delay\n");
    let _ = writeln!(
        out,
        "One run of `netpol-bench` on this machine: {} cores, {} RAM, Linux {}, git {}, {:.1} s \
         wall. One testbed world: one node namespace, {} pods wired by `ferry-cni`, \
         `ferry-apiserver` in the world's underlay; clients, servers and the dataplanes share the \
         cores. Load average {} before, {} after (whatever else runs here shares the cores).\n",
        info.cores,
        info.mem_total,
        info.kernel,
        info.git_rev,
        info.wall.as_secs_f64(),
        Role::all(sh).len(),
        r.load.0,
        r.load.1,
    );
    let _ = writeln!(
        out,
        "- **Cluster in the API** ({} objects, loaded in {:.1} s): {} namespaces (`team`, `env` \
         labels), {} pods on {} other nodes (objects only; `app`, `tier` labels, named ports \
         `http` and `metrics`) and {} on this node: `server` (a connect sink on :9000), \
         `client`, `open` (a sink), `prober`, and {} idle pods labelled like the others. **{} \
         NetworkPolicies**: {} select the server (ingress; #{} admits the client on TCP 9000, the \
         others name other namespaces or labels, ipBlocks elsewhere, or the client on other \
         ports, with numbered, ranged and named ports), {} isolate the client's egress (#{} \
         allows the server on 9000), {} select remote and idle pods across the namespaces \
         (ingress, egress, both; pod, namespace and ipBlock peers with `except`).",
        r.loaded.objects,
        r.loaded.wall.as_secs_f64(),
        sh.namespaces,
        sh.remote_pods,
        super::population::REMOTE_NODES,
        Role::all(sh).len(),
        sh.idle_pods,
        sh.policies,
        sh.server_policies,
        server_allow_index(sh),
        sh.client_policies,
        client_allow_index(sh),
        sh.background_policies(),
    );
    let _ = writeln!(
        out,
        "- **baseline**: `{}` with `--pod-devices fer --no-network-policy` and no rules (the same \
         programs on every veth, with nothing to enforce).",
        r.versions.agent
    );
    let _ = writeln!(
        out,
        "- **Ferry**: a fresh agent with `--pod-devices fer` enforcing NetworkPolicy at TC on \
         the pods' veths (one verdict per new flow: identity and LPM lookups, then its \
         conntrack)."
    );
    let _ = writeln!(
        out,
        "- **kube-router**: the agent with `--no-network-policy` again, plus kube-router's \
         iptables-mode ruleset for this node made from a list of the API's Namespaces, Pods and \
         NetworkPolicies (`KUBE-ROUTER-INPUT/FORWARD/OUTPUT`, a `KUBE-POD-FW-*` chain per local \
         pod starting with the conntrack ESTABLISHED,RELATED accept of `KUBE-NWPLCY-COMMON`, a \
         jump per selecting policy into its `KUBE-NWPLCY-*` chain of mark/RETURN rule pairs \
         matching `hash:ip` sets of pod addresses per selector and `hash:net` sets per ipBlock, \
         then NFLOG and REJECT of unmarked packets and the 0x20000 accept mark), loaded with \
         `ipset restore -exist` (`{}`) and one `{}` (`{}`) in the node's namespace. IPv4 only.",
        r.versions.ipset,
        s.iptables.restore(),
        r.versions.iptables
    );
    let _ = writeln!(
        out,
        "- **Traffic**, per run and target (the server's pod address, then its ClusterIP \
         10.96.255.251:80, translated by Ferry in the client's socket in every run): {} untimed \
         connects, {} sequential `connect()`s (each closed with an RST), then {} workers \
         connecting for {:.1} s; {} such client runs, latencies pooled over them, rates the \
         median run's. The client joins the running agent's cgroup. Before each run \
         the bench checks that the client reaches the server (both addresses), the prober does \
         not (policy runs), the prober reaches `open`, and the client does not (its egress is \
         isolated).",
        s.warmup,
        s.connects,
        s.workers,
        s.rate.as_secs_f64(),
        s.rounds
    );
    let _ = writeln!(
        out,
        "- Order: baseline, Ferry (then the change phase), kube-router last: legacy iptables \
         tables stay registered in a namespace once made.\n"
    );
    let _ = writeln!(
        out,
        "Ratios are per column pair (rates: above 1 is more connections; times: above 1 is \
         slower); \"p50 / p99\" ratios are per percentile.\n"
    );
    let _ = writeln!(
        out,
        "| metric | baseline (no policy) | Ferry (eBPF) | kube-router (iptables + ipset) | \
         Ferry / kube-router | Ferry / baseline | kube-router / baseline | ratio > 1 means |"
    );
    let _ = writeln!(
        out,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    );
    connection_rows(&mut out, r, s);
    let (ferry_prog, kr_prog) = (r.ferry.program, r.kube_router.program);
    // Not a ratio: Ferry's side is a whole agent start (programs loaded and
    // attached, objects listed, compiled, written), kube-router's only the
    // ruleset made from objects in hand and restored.
    let _ = writeln!(
        out,
        "| enforcing the {} policies (Ferry: agent start, with loading its programs and listing \
         the objects, until the checked verdicts hold; kube-router: ruleset made from the listed \
         objects, sets and rules restored, verdicts hold) | – | {} | {} | – | – | – | – |",
        sh.policies,
        dur(ferry_prog),
        dur(kr_prog),
    );
    if let Some(k) = &r.rules {
        let _ = writeln!(
            out,
            "| kube-router state | – | – | {} rules, {} chains, {} sets ({} entries), {:.1} KiB \
             of restore input; made in {} (this harness, Rust), `ipset restore` {}, \
             `iptables-restore` {} | – | – | – | – |",
            k.rules,
            k.chains,
            k.sets,
            k.set_entries,
            k.bytes as f64 / 1024.0,
            dur(Some(k.generate)),
            dur(Some(k.ipset_restore)),
            dur(Some(k.iptables_restore)),
        );
        let _ = writeln!(
            out,
            "| kube-router: the server's / client's pod chain | – | – | {} / {} policy jumps, {} \
             / {} rules in it and the policy chains it jumps to ({} local pod chains) | – | – | \
             – | – |",
            k.server.policy_jumps,
            k.client.policy_jumps,
            k.server.rules_behind,
            k.client.rules_behind,
            k.local_pods,
        );
    }
    for (what, run) in [
        ("baseline", &r.baseline),
        ("Ferry", &r.ferry),
        ("kube-router", &r.kube_router),
    ] {
        if let Some(e) = &run.error {
            let _ = writeln!(out, "\n{what} failed: {e}");
        }
    }
    if let Some(c) = &r.changes {
        changes_table(&mut out, c, s);
    }
    out
}
