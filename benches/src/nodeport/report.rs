//! The markdown report: per N, one row per dataplane, with ratios to
//! kube-proxy's nftables ruleset and to Ferry's TC path; then how the
//! per-packet cost grows with N.

use std::fmt::Write as _;
use std::time::Duration;

use super::traffic::{Burst, Cost};
use super::{Kind, Results, Run, Settings, Status};
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

fn pair(s: &Summary) -> String {
    if s.count == 0 {
        return NONE.into();
    }
    format!("{} / {}", dur(s.p50), dur(s.p99))
}

fn count(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2} M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1} k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

/// Why a row has no numbers.
fn why(run: &Run) -> Option<String> {
    match &run.status {
        Status::Ran => None,
        Status::NotRun => Some("not run".into()),
        Status::NotAvailable(_) => Some("not available (see notes)".into()),
        Status::Skipped(w) => Some(format!("skipped: {w}")),
        Status::Failed(_) => Some("failed (see notes)".into()),
    }
}

/// The two packet mixes of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mix {
    Established,
    NewFlows,
}

impl Mix {
    const BOTH: [Mix; 2] = [Mix::Established, Mix::NewFlows];

    fn name(self) -> &'static str {
        match self {
            Mix::Established => "established",
            Mix::NewFlows => "new flows",
        }
    }

    fn of(self, run: &Run) -> Option<&Burst> {
        match self {
            Mix::Established => run.established.as_ref(),
            Mix::NewFlows => run.new_flows.as_ref(),
        }
    }
}

/// The routing-only row's index, when it ran.
fn floor_index(s: &Settings) -> Option<usize> {
    s.variants.iter().position(|v| v.kind == Kind::Route)
}

/// Every row's cost at one N in one mix, against the floor row at the
/// same N and mix.
fn costs(s: &Settings, runs: &[Run], mix: Mix) -> Vec<Option<Cost>> {
    let floor = floor_index(s)
        .and_then(|i| runs.get(i))
        .filter(|r| r.status == Status::Ran)
        .and_then(|r| mix.of(r));
    runs.iter()
        .map(|r| {
            if r.status != Status::Ran {
                return None;
            }
            mix.of(r).and_then(|b| Cost::of(b, floor))
        })
        .collect()
}

fn noisy(background: f64) -> String {
    format!(" (noisy: {:.0} % of a CPU busy idle)", background * 100.0)
}

/// delivered, whole-path ns, added ns, pps per core.
fn burst_cells(b: Option<&Burst>, cost: Option<&Cost>, is_floor: bool) -> [String; 4] {
    let Some(b) = b else {
        return [NONE.into(), NONE.into(), NONE.into(), NONE.into()];
    };
    let delivered = format!(
        "{} / {} ({:.1}%)",
        count(b.offered_pps()),
        count(b.delivered_pps()),
        100.0 * b.delivered as f64 / b.sent.max(1) as f64
    );
    let Some(c) = cost else {
        // Nothing delivered, or a background larger than the burst.
        return [delivered, NONE.into(), NONE.into(), NONE.into()];
    };
    let path = format!(
        "{:.0} ns{}",
        c.path_ns,
        if b.noisy() {
            noisy(b.background.rate())
        } else {
            String::new()
        }
    );
    if is_floor {
        return [delivered, path, "0 (the floor)".into(), NONE.into()];
    }
    let added = match c.added_ns {
        None => format!("{NONE} (no floor)"),
        Some(ns) => format!(
            "{ns:.0} ns{}",
            if c.noisy {
                noisy(c.background)
            } else {
                String::new()
            }
        ),
    };
    let per_core = match (c.per_core(), c.added_ns) {
        (Some(pps), _) => count(pps),
        (None, Some(_)) => "below the floor".into(),
        (None, None) => NONE.into(),
    };
    [delivered, path, added, per_core]
}

pub fn markdown(s: &Settings, info: &RunInfo, r: &Results) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# NodePort from outside: the north-south dataplane\n");
    let _ = writeln!(
        out,
        "One run of `nodeport-bench` on this machine: {} cores, {} RAM, Linux {}, git {}, \
         {:.1} s wall. One testbed world: two nodes on the underlay bridge with routes between \
         their pod CIDRs, the backend pod on node 1 (`ferry-netexec`, a TCP accept sink, a UDP \
         discard sink), the underlay namespace as the outside client, node 0 the entry node. \
         Every dataplane gets the same Services: N in all, the three targets (UDP, TCP to the \
         accept sink, TCP to `ferry-netexec`; NodePorts {}, {}, {}, `externalTrafficPolicy: \
         Cluster`) last, the other N-3 fake Services with one unroutable endpoint, TCP and UDP \
         in turn, NodePorts across {} while ports last ({} of them: Kubernetes allocates a node \
         port whatever the protocol), ClusterIP-only after that. Node 0's ephemeral ports are \
         moved above the range.\n",
        info.cores,
        info.mem_total,
        info.kernel,
        info.git_rev,
        info.wall.as_secs_f64(),
        super::UDP_NODE_PORT,
        super::TCP_NODE_PORT,
        super::HTTP_NODE_PORT,
        super::NODE_PORT_RANGE,
        super::fake_node_ports(),
    );
    let _ = writeln!(out, "- Dataplanes:");
    for v in &s.variants {
        let what = match &v.kind {
            Kind::Route => "no Service: the same packets addressed to the backend pod, which \
                            node 0 only routes (the floor of the path)"
                .to_string(),
            Kind::Ferry(flags) => format!(
                "`{}` with `--devices ul0{}{}`{}",
                r.versions.agent,
                if flags.is_empty() { "" } else { " " },
                flags.join(" "),
                if super::direct_return(flags) {
                    "; node 1 runs one too, with the same flags (its TC ingress decapsulates                      and answers for the frontend; in the other rows node 1 runs no dataplane)"
                } else {
                    ""
                }
            ),
            Kind::Nftables => format!(
                "kube-proxy's nftables-mode transaction (table `ip kube-proxy`, the `nodeport-ips` \
                 set holding node 0's address as nftables mode's default `--nodeport-addresses \
                 primary` writes it, the `service-nodeports` verdict map into per-Service \
                 `external-…` chains that mark for masquerade and go to the `service-…` chain), \
                 loaded with one `nft -f` (`{}`)",
                r.versions.nft
            ),
            Kind::Iptables => format!(
                "kube-proxy's iptables-mode ruleset (KUBE-SERVICES ending in `-m addrtype \
                 --dst-type LOCAL -j KUBE-NODEPORTS`, one KUBE-NODEPORTS rule per node port into \
                 KUBE-EXT-<hash> → KUBE-MARK-MASQ and KUBE-SVC-<hash>, KUBE-POSTROUTING's \
                 `MASQUERADE --random-fully`), loaded with one `{}` (`{}`); the targets' rules \
                 are the last of both linear chains",
                s.iptables.restore(),
                r.versions.iptables
            ),
        };
        let _ = writeln!(out, "  - **{}**: {what}.", v.label);
    }
    let _ = writeln!(
        out,
        "- **Forwarding**: `{}` in the underlay sends 60-byte UDP frames to \
         `<node 0>:{}`: first {} packets at {}/s over 64 flows (after each flow's first packet, \
         conntrack hits: the steady per-packet cost), then {} packets at {}/s each from a new \
         source port (every packet a new connection to translate: for kube-proxy a walk of its \
         nat chains). Delivered = packets arriving at the backend pod's interface. {}.",
        r.versions.trafgen,
        super::UDP_NODE_PORT,
        (s.rate as f64 * s.duration.as_secs_f64()) as u64,
        count(s.rate as f64),
        s.new_flow_packets.min(64_000),
        count(s.new_flow_rate as f64),
        r.steering,
    );
    let _ = writeln!(
        out,
        "- **What a packet costs**: no one CPU holds the entry node's work for every row. \
         RPS puts node 0's stack (TC, netfilter, routing) on CPU {entry}, but native XDP on a \
         veth runs in the veth's NAPI poll on the CPU that transmitted into it (the \
         generator's CPU {gen}) before RPS steers anything, so a frame the XDP program sends \
         straight back out never reaches CPU {entry}; with DSR, node 1 decapsulates. So \
         every row is measured the same way: \"ns per packet, whole path\" is the machine's \
         busy time over the burst and a 300 ms drain, every CPU (the window less each CPU's \
         cpuidle residency, read from that CPU so no idle period running at the read is left \
         out; the busy ticks of /proc/stat where cpuidle is missing), less the machine's busy \
         rate with nothing sent over 1 s just before times the window, divided by the packets \
         delivered. It includes the generator, the bridge, node 1 and the backend's delivery, \
         which are the same for every row, so \"entry node's added ns\" is that less the \
         routing-only row's at the same N and mix: what the dataplane adds to plain \
         forwarding (negative when it does less than the kernel's routing, which XDP_TX can: \
         the frame never enters node 0's stack). \"pps per core\" is 1e9 / added ns: the \
         packets one core doing only that extra work would carry; \"below the floor\" when \
         the dataplane adds nothing. Both are differences of busy times, so a cell is marked \
         noisy when the machine was more than {:.0} % of a CPU busy with nothing sent (for the \
         added cost: in this row's window or the floor's). The per-CPU split is in the notes.",
        super::traffic::NOISY * 100.0,
        entry = super::ENTRY_CPU,
        gen = super::GEN_CPU,
    );
    let _ = writeln!(
        out,
        "- **Connections**: the services bench's client in the underlay: 20 untimed connects, \
         {} sequential `connect()`s to `<node 0>:{}` (each closed with an RST), {} sequential \
         `GET /hostname` to `<node 0>:{}` (connect, request, response, close), then {} workers \
         connecting for {:.1} s. Its CPU and the backend's are not steered.",
        s.connects,
        super::TCP_NODE_PORT,
        s.http,
        super::HTTP_NODE_PORT,
        s.workers,
        s.rate_window.as_secs_f64(),
    );
    let _ = writeln!(
        out,
        "- Ratios: \"/ nft\" is this row / kube-proxy nftables, \"/ TC\" this row / Ferry TC, at \
         the same N (above 1: this row forwards more per core, or connects faster). Goals \
         (issue 11): Ferry XDP ≥ 3× nftables and ≥ 1.5× Ferry TC per core; per-packet cost \
         within 10 % from 1 to 100,000 Services.\n"
    );

    let col = |k: &Kind| s.variants.iter().position(|v| &v.kind == k);
    let nft = col(&Kind::Nftables);
    let tc = s.variants.iter().position(|v| v.key == "ferry-tc");
    let floor = floor_index(s);

    let _ = writeln!(
        out,
        "## Forwarding: UDP to a NodePort, backend on the other node\n"
    );
    let mut head = String::from("| Services | dataplane |");
    let mut rule = String::from("| ---: | --- |");
    for mix in Mix::BOTH {
        let _ = write!(
            head,
            " {}: offered / delivered pps | ns per packet, whole path | entry node's added ns | \
             pps per core | / nft | / TC |",
            mix.name()
        );
        rule.push_str(" ---: | ---: | ---: | ---: | ---: | ---: |");
    }
    let _ = writeln!(out, "{head}\n{rule}");
    for (n, runs) in &r.sizes {
        let per_mix: Vec<Vec<Option<Cost>>> =
            Mix::BOTH.iter().map(|&m| costs(s, runs, m)).collect();
        for (i, (v, run)) in s.variants.iter().zip(runs).enumerate() {
            if let Some(w) = why(run) {
                let _ = writeln!(out, "| {n} | {} | {w} |{}", v.label, " |".repeat(11));
                continue;
            }
            let mut line = format!("| {n} | {} |", v.label);
            for (mix, c) in Mix::BOTH.iter().zip(&per_mix) {
                let pps = |j: Option<usize>| {
                    j.and_then(|j| c.get(j))
                        .and_then(|c| c.as_ref()?.per_core())
                };
                let rel = |j: Option<usize>| ratio(pps(Some(i)), pps(j));
                let cells = burst_cells(
                    mix.of(run),
                    c.get(i).and_then(Option::as_ref),
                    Some(i) == floor,
                );
                for cell in cells {
                    let _ = write!(line, " {cell} |");
                }
                let _ = write!(line, " {} | {} |", rel(nft), rel(tc));
            }
            let _ = writeln!(out, "{line}");
        }
    }

    let _ = writeln!(
        out,
        "\n## Connections: TCP from the outside client to a NodePort\n"
    );
    let _ = writeln!(
        out,
        "| Services | dataplane | new connections/s, one at a time | / nft | / TC | {} workers | \
         connect() p50 / p99 | GET (connect+request+close) p50 / p99 | failed (sequential / \
         concurrent) | programmed in | state |",
        s.workers
    );
    let _ = writeln!(
        out,
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    );
    for (n, runs) in &r.sizes {
        for (v, run) in s.variants.iter().zip(runs) {
            if v.kind == Kind::Route {
                continue;
            }
            if let Some(w) = why(run) {
                let _ = writeln!(out, "| {n} | {} | {w} | | | | | | | | |", v.label);
                continue;
            }
            let Some(t) = &run.tcp else { continue };
            let rel = |i: Option<usize>| -> String {
                match i
                    .and_then(|i| runs.get(i))
                    .filter(|o| o.status == Status::Ran)
                    .and_then(|o| o.tcp.as_ref())
                {
                    Some(o) => ratio(Some(t.connect_rate), Some(o.connect_rate)),
                    None => NONE.into(),
                }
            };
            let _ = writeln!(
                out,
                "| {n} | {} | {:.0}/s | {} | {} | {:.0}/s | {} | {} | {} / {} | {} | {} |",
                v.label,
                t.connect_rate,
                rel(nft),
                rel(tc),
                t.concurrent_rate,
                pair(&t.connect),
                pair(&t.http),
                t.errors,
                t.concurrent_errors,
                dur(run.program),
                if run.size.is_empty() { NONE } else { &run.size },
            );
        }
    }

    if r.sizes.len() > 1 {
        let _ = writeln!(
            out,
            "\n## Per-packet cost against the number of Services\n\nThe entry node's added ns per \
             packet at each N / at the smallest N (1.00: flat; the goal is within 1.10).\n"
        );
        let _ = writeln!(out, "| dataplane | mix | {} |", {
            r.sizes
                .iter()
                .map(|(n, _)| format!("{n}"))
                .collect::<Vec<_>>()
                .join(" | ")
        });
        let _ = writeln!(
            out,
            "| --- | --- | {} |",
            vec!["---:"; r.sizes.len()].join(" | ")
        );
        for (i, v) in s.variants.iter().enumerate() {
            if v.kind == Kind::Route {
                continue;
            }
            for mix in Mix::BOTH {
                let added: Vec<Option<f64>> = r
                    .sizes
                    .iter()
                    .map(|(_, runs)| {
                        costs(s, runs, mix)
                            .get(i)
                            .copied()
                            .flatten()
                            .and_then(|c| c.added_ns)
                    })
                    .collect();
                let base = added.first().copied().flatten().filter(|&ns| ns > 0.0);
                let cells: Vec<String> = added
                    .iter()
                    .map(|a| match a {
                        Some(ns) if *ns > 0.0 => format!("{ns:.0} ns ({})", ratio(Some(*ns), base)),
                        Some(ns) => format!("{ns:.0} ns (below the floor)"),
                        None => NONE.into(),
                    })
                    .collect();
                let _ = writeln!(
                    out,
                    "| {} | {} | {} |",
                    v.label,
                    mix.name(),
                    cells.join(" | ")
                );
            }
        }
    }

    let mut notes = Vec::new();
    for (n, runs) in &r.sizes {
        for (v, run) in s.variants.iter().zip(runs) {
            match &run.status {
                Status::Failed(e) => notes.push(format!("{n} Services, {}: {e}", v.label)),
                Status::NotAvailable(e) => {
                    notes.push(format!("{n} Services, {}: not available: {e}", v.label));
                }
                _ => {}
            }
            if let Some(d) = &run.devices {
                notes.push(format!(
                    "{n} Services, {}: node 0 after the traffic (`ferry-agent inspect devices`): {d}",
                    v.label
                ));
            }
            if let Some(first) = run.tcp.as_ref().and_then(|t| t.first_error.as_ref()) {
                notes.push(format!(
                    "{n} Services, {}: first failed connection: {first}",
                    v.label
                ));
            }
            for mix in Mix::BOTH {
                if let Some(b) = mix.of(run) {
                    notes.push(format!(
                        "{n} Services, {} ({}): sent {}, delivered {}, backlog drops {}; busy \
                         over the {} window: {} ({}); with nothing sent: {}",
                        v.label,
                        mix.name(),
                        b.sent,
                        b.delivered,
                        b.backlog_drops,
                        dur(Some(b.busy.window)),
                        b.busy.describe(false),
                        b.busy.method,
                        b.background.describe(true),
                    ));
                }
            }
        }
    }
    if !notes.is_empty() {
        let _ = writeln!(out, "\n### Notes\n");
        for n in notes {
            let _ = writeln!(out, "- {n}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::traffic::tests::burst;
    use super::super::{Results, Run, Settings, Status, known_variants};
    use super::*;
    use crate::services::iptables::Backend;

    fn settings(keys: &[&str]) -> Settings {
        Settings {
            sizes: vec![1],
            variants: known_variants()
                .into_iter()
                .filter(|v| keys.contains(&v.key.as_str()))
                .collect(),
            rate: 100_000,
            duration: Duration::from_secs(1),
            new_flow_rate: 20_000,
            new_flow_packets: 20_000,
            connects: 1,
            http: 1,
            workers: 0,
            rate_window: Duration::from_secs(1),
            nft_max: 10,
            iptables_max: 10,
            iptables: Backend::Legacy,
            concurrency: 1,
            sync_timeout: Duration::from_secs(1),
        }
    }

    fn ran(b: Burst) -> Run {
        Run {
            status: Status::Ran,
            established: Some(b.clone()),
            new_flows: Some(b),
            ..Run::default()
        }
    }

    fn info() -> RunInfo {
        RunInfo {
            cores: 2,
            mem_total: "1 GiB".into(),
            kernel: "test".into(),
            git_rev: "test".into(),
            wall: Duration::from_secs(1),
        }
    }

    /// The forwarding table's row for `label`, split into cells.
    fn row(md: &str, label: &str) -> Vec<String> {
        let line = md
            .lines()
            .find(|l| l.starts_with(&format!("| 1 | {label} | ")) && l.contains(" ns"))
            .unwrap_or_else(|| panic!("no row {label} in\n{md}"));
        line.split('|').map(|c| c.trim().to_string()).collect()
    }

    #[test]
    fn rows_are_costed_against_the_floor() {
        let s = settings(&["route", "ferry-tc", "ferry-xdp", "nftables"]);
        let r = Results {
            sizes: vec![(
                1,
                vec![
                    // 4000 ns per packet, whole path.
                    ran(burst(100_000, 200, 200, 0, 0)),
                    // 7200 ns: adds 3200.
                    ran(burst(100_000, 300, 500, 10, 30)),
                    // 3000 ns: less than routing.
                    ran(burst(100_000, 150, 150, 0, 0)),
                    // 1000 ms less 15 % of a CPU over 2 s: 7000 ns, adds
                    // 3000, with a busy background.
                    ran(burst(100_000, 400, 600, 150, 0)),
                ],
            )],
            ..Results::default()
        };
        let md = markdown(&s, &info(), &r);
        // Cells: "", N, label, then per mix: delivered, whole path, added,
        // per core, / nft, / TC.
        let floor = row(&md, "routing only (no Service, no NAT)");
        assert_eq!(floor[4..8], ["4000 ns", "0 (the floor)", "–", "–"]);
        let tc = row(&md, "Ferry TC");
        assert_eq!(
            tc[4..10],
            [
                "7200 ns",
                "3200 ns",
                "312.5 k",
                "0.94",
                "1.00",
                "58.8 k / 58.8 k (100.0%)"
            ]
        );
        let xdp = row(&md, "Ferry XDP");
        assert_eq!(
            xdp[4..9],
            ["3000 ns", "-1000 ns", "below the floor", "–", "–"]
        );
        let nft = row(&md, "kube-proxy nftables");
        assert_eq!(
            nft[4..9],
            [
                "7000 ns (noisy: 15 % of a CPU busy idle)",
                "3000 ns (noisy: 15 % of a CPU busy idle)",
                "333.3 k",
                "1.00",
                "1.07"
            ]
        );
        // The new-flow half is costed the same way.
        assert_eq!(tc[11..15], ["3200 ns", "312.5 k", "0.94", "1.00"]);
        assert!(md.contains("CPU 0 300.0 ms, CPU 1 500.0 ms"), "{md}");
    }

    #[test]
    fn a_noisy_floor_marks_every_added_cost_and_no_floor_leaves_it_out() {
        let s = settings(&["route", "ferry-tc"]);
        let r = Results {
            sizes: vec![(
                1,
                vec![
                    // 800 ms less 20 % of a CPU over 2 s: 4000 ns.
                    ran(burst(100_000, 300, 500, 0, 200)),
                    ran(burst(100_000, 300, 500, 10, 30)),
                ],
            )],
            ..Results::default()
        };
        let md = markdown(&s, &info(), &r);
        let tc = row(&md, "Ferry TC");
        // Its own background was quiet: the whole-path cost is clean, the
        // added one carries the floor's noise.
        assert_eq!(tc[4], "7200 ns");
        assert_eq!(tc[5], "3200 ns (noisy: 20 % of a CPU busy idle)");

        let s = settings(&["ferry-tc"]);
        let r = Results {
            sizes: vec![(1, vec![ran(burst(100_000, 300, 500, 10, 30))])],
            ..Results::default()
        };
        let tc = row(&markdown(&s, &info(), &r), "Ferry TC");
        assert_eq!(tc[4..7], ["7200 ns", "– (no floor)", "–"]);
    }
}
