//! Per-packet cost of the pod devices' programs under NetworkPolicy,
//! measured by the kernel with BPF_PROG_TEST_RUN: the agent's object loaded
//! detached, its policy maps written by the product's compiler
//! (`PolicyState::compile`) and programmer (`PolicyProgrammer` over
//! `bpf::PolicyMaps`), one such object per policy count.
//!
//! Per program (`ferry_pod_tc_egress`: packets to the pod, its ingress
//! policy; `ferry_pod_tc_ingress`: packets from the pod, service
//! translation then its egress policy) and case:
//! - new flow, allowed: a SYN of a flow never seen (policy CT miss,
//!   identity and rule lookups, two CT inserts);
//! - established: a later packet of one of those flows (a policy CT hit);
//! - denied: a SYN no rule allows (every lookup misses; dropped);
//! - no policy: a SYN at a pod of the node no policy selects.
//!
//! The worlds are measured in interleaved rounds, so a change in the
//! machine's load falls on every policy count alike. Every verdict is
//! checked, and so are the programs' own counters of judged flows at the
//! end: an established packet that was judged again, or a new flow that
//! was not, fails the run.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use ferry_dataplane::bpf::{MapSizes, POD_TC_EGRESS, POD_TC_INGRESS, PolicyMaps};
use ferry_dataplane::policy::programmer::PolicyProgrammer;
use ferry_ebpf_common::PROTO_TCP;
use ferry_ebpf_common::policy::{
    DIR_EGRESS, DIR_INGRESS, POLICY_STAT_ALLOWED, POLICY_STAT_DENIED, PolicyStats,
};
use ferry_testbed::packet::frame;

use super::PolicyBenchError;
use super::cluster::{Cluster, NODE, PodRef};
use crate::packet::{Detached, bpf_err};
use crate::stats::{Samples, Summary};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;

/// The pod programs, in table order: (program, what it judges).
pub const PROGRAMS: [(&str, &str); 2] = [
    (POD_TC_EGRESS, "packets to the pod (its ingress policy)"),
    (
        POD_TC_INGRESS,
        "packets from the pod (translation, then its egress policy)",
    ),
];

/// The cases, in table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    NewFlow,
    Established,
    Denied,
    NoPolicy,
}

impl Case {
    pub const ALL: [Case; 4] = [
        Case::NewFlow,
        Case::Established,
        Case::Denied,
        Case::NoPolicy,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Case::NewFlow => "new flow, allowed",
            Case::Established => "established flow",
            Case::Denied => "denied",
            Case::NoPolicy => "pod no policy selects",
        }
    }

    fn verdict(self) -> u32 {
        match self {
            Case::Denied => TC_ACT_SHOT,
            _ => TC_ACT_OK,
        }
    }
}

/// What a run measures.
#[derive(Debug, Clone)]
pub struct Options {
    pub cluster: Cluster,
    /// Policy counts, one world each.
    pub policies: Vec<usize>,
    /// Packets timed per world, program and case (each new flow a flow of
    /// its own).
    pub packets: usize,
    /// Interleaved rounds the packets are split into.
    pub rounds: usize,
}

/// What the compiler made of one world.
#[derive(Debug, Clone, Default)]
pub struct Contents {
    pub policies: usize,
    pub identities: usize,
    pub endpoints: usize,
    pub sets: usize,
    pub cidrs: usize,
    pub rules: usize,
    /// Policies failed closed (each would deny more than it should).
    pub failed_closed: usize,
    pub compile: Duration,
    pub write: Duration,
}

/// One world's measurements: per program (in [`PROGRAMS`] order), per case
/// (in [`Case::ALL`] order).
#[derive(Debug, Clone)]
pub struct World {
    pub contents: Contents,
    pub timings: Vec<Vec<Summary>>,
}

/// One policy count's object, maps and flows so far.
struct Loaded {
    detached: Detached,
    contents: Contents,
    samples: Vec<Vec<Samples>>,
    /// New flows opened per program.
    opened: [usize; 2],
    /// Established packets sent per program (the next one re-sends flow
    /// `established % opened`).
    established: [usize; 2],
    /// Packets sent per program and case, for the unselected and denied
    /// cases' varying ports.
    sent: [[usize; 4]; 2],
}

fn v4(a: Ipv4Addr) -> IpAddr {
    IpAddr::V4(a)
}

impl Loaded {
    fn new(o: &Options, policies: usize) -> Result<Self, PolicyBenchError> {
        let mut state = o.cluster.state(policies)?;
        let start = std::time::Instant::now();
        let desired = state.compile(NODE, &o.cluster.node_addrs())?;
        let compile = start.elapsed();
        eprintln!(
            "policy-bench: {policies} policies compiled in {compile:?}: {} rule entries, {} pod \
             identities, {} sets, {} CIDR prefixes, {} failed closed",
            desired.rules.len(),
            super::distinct_identities(&desired),
            desired.sets.len(),
            desired.cidrs.len(),
            desired.problems.len()
        );
        let detached = Detached::load(&format!("policy-{policies}"), &map_sizes())?;
        let maps =
            PolicyMaps::open_in(detached.dir()).map_err(crate::packet::PacketBenchError::from)?;
        let start = std::time::Instant::now();
        let mut programmer =
            PolicyProgrammer::new(maps).map_err(bpf_err("reading the policy maps"))?;
        let pass = programmer.apply(&desired);
        let write = start.elapsed();
        if let Some(e) = pass.first_error {
            return Err(PolicyBenchError::Write {
                failed: pass.failed,
                message: e.to_string(),
            });
        }
        let contents = Contents {
            policies,
            identities: super::distinct_identities(&desired),
            endpoints: desired.endpoints.len(),
            sets: desired.sets.len(),
            cidrs: desired.cidrs.len(),
            rules: desired.rules.len(),
            failed_closed: desired.problems.len(),
            compile,
            write,
        };
        let samples = PROGRAMS
            .iter()
            .map(|_| Case::ALL.iter().map(|_| Samples::new()).collect())
            .collect();
        Ok(Loaded {
            detached,
            contents,
            samples,
            opened: [0; 2],
            established: [0; 2],
            sent: [[0; 4]; 2],
        })
    }

    /// The packet of `case` number `n` through program `prog`.
    fn packet(&self, c: &Cluster, prog: usize, case: Case, n: usize) -> Vec<u8> {
        let selected = c.local_selected();
        let unselected = c.local_unselected();
        // Flow n: the n-th local pod round-robin, the source port after
        // that, then the next peer pod of the same app.
        let pick = |pods: &[PodRef]| {
            let pod = pods[n % pods.len()];
            let m = n / pods.len();
            let sport = 1024 + u16::try_from(m % 60_000).unwrap_or(0);
            (pod, sport, m / 60_000)
        };
        let syn = case != Case::Established;
        let tcp = |src: PodRef, sport: u16, dst: PodRef, dport: u16| {
            frame(
                PROTO_TCP,
                (v4(c.pod_ip(src)), sport),
                (v4(c.pod_ip(dst)), dport),
                syn,
            )
        };
        let pods = if case == Case::NoPolicy {
            &unselected
        } else {
            &selected
        };
        let ((ns, local), sport, peer) = pick(pods);
        if prog == 0 {
            // To the pod: from app-1 of its namespace (allowed on 80,
            // not on 22).
            let src = (ns, 1 + 10 * (peer % (c.pods_per_namespace / 10).max(1)));
            let dport = if case == Case::Denied { 22 } else { 80 };
            tcp(src, sport, (ns, local), dport)
        } else {
            // From the pod: to pod 3 of the next namespace on its `http`
            // port (allowed), or of the one after (denied).
            let hop = if case == Case::Denied { 2 } else { 1 };
            let dst_ns = (ns + hop) % c.namespaces;
            let dst = (dst_ns, 3 + 10 * (peer % (c.pods_per_namespace / 10).max(1)));
            tcp((ns, local), sport, dst, c.http_port(3))
        }
    }

    /// Times `count` packets of `case` through program `prog`.
    fn round(
        &mut self,
        c: &Cluster,
        prog: usize,
        case: Case,
        count: usize,
    ) -> Result<(), PolicyBenchError> {
        let program = PROGRAMS[prog].0;
        let ci = case as usize;
        for _ in 0..count {
            let n = match case {
                Case::NewFlow => {
                    self.opened[prog] += 1;
                    self.opened[prog] - 1
                }
                Case::Established => {
                    let opened = self.opened[prog].max(1);
                    self.established[prog] += 1;
                    (self.established[prog] - 1) % opened
                }
                _ => self.sent[prog][ci],
            };
            self.sent[prog][ci] += 1;
            let packet = self.packet(c, prog, case, n);
            let (took, verdict) = self.detached.run(program, &packet, 1)?;
            // With no policy nothing is isolated: every packet passes.
            let want = if self.contents.policies == 0 {
                TC_ACT_OK
            } else {
                case.verdict()
            };
            if verdict != want {
                return Err(PolicyBenchError::Verdict {
                    policies: self.contents.policies,
                    program,
                    case: case.label(),
                    got: verdict,
                    want,
                });
            }
            self.samples[prog][ci].push(took);
        }
        Ok(())
    }

    /// Checks the programs' counters of judged flows against what was
    /// sent: every new flow allowed once, every denied SYN denied, nothing
    /// else judged (an established packet hit the policy conntrack).
    fn check_counters(&self) -> Result<(), PolicyBenchError> {
        let maps = PolicyMaps::open_in(self.detached.dir())
            .map_err(crate::packet::PacketBenchError::from)?;
        let per_cpu = maps
            .stats
            .get(&0, 0)
            .map_err(bpf_err("reading the policy counters"))?;
        let mut sum = PolicyStats::default();
        for cpu in per_cpu.iter() {
            sum.add(cpu);
        }
        let counts = sum.verdicts();
        let isolated = self.contents.policies > 0;
        let want = |prog: usize, case: Case| {
            if isolated {
                self.sent[prog][case as usize] as u64
            } else {
                0
            }
        };
        // `what * 2 + dir`; program 0 judges the ingress direction.
        let expected = [
            (POLICY_STAT_ALLOWED, DIR_INGRESS, want(0, Case::NewFlow)),
            (POLICY_STAT_ALLOWED, DIR_EGRESS, want(1, Case::NewFlow)),
            (POLICY_STAT_DENIED, DIR_INGRESS, want(0, Case::Denied)),
            (POLICY_STAT_DENIED, DIR_EGRESS, want(1, Case::Denied)),
        ];
        for (what, dir, want) in expected {
            let got = counts[what * 2 + usize::from(dir)];
            if got != want {
                return Err(PolicyBenchError::Counters {
                    policies: self.contents.policies,
                    what: if what == POLICY_STAT_ALLOWED {
                        "allowed"
                    } else {
                        "denied"
                    },
                    dir,
                    got,
                    want,
                });
            }
        }
        Ok(())
    }
}

/// The policy maps at the agent's default sizes; the service maps, which
/// these packets only miss in, small.
fn map_sizes() -> MapSizes {
    MapSizes {
        services: 1024,
        backends: 1024,
        affinity: 1024,
        sock_revnat: 1024,
        stats: 1024,
        conntrack: 1024,
        maglev: 1024,
        ..MapSizes::default()
    }
}

/// Builds one world per policy count and measures them in interleaved
/// rounds.
pub fn measure(o: &Options) -> Result<Vec<World>, PolicyBenchError> {
    let mut loaded = Vec::new();
    for &n in &o.policies {
        eprintln!("policy-bench: compiling and writing {n} policies");
        let l = Loaded::new(o, n)?;
        eprintln!(
            "policy-bench: {n} policies written in {:?}",
            l.contents.write
        );
        loaded.push(l);
    }
    let rounds = o.rounds.max(1);
    for r in 0..rounds {
        // This round's share of the packets.
        let count = o.packets * (r + 1) / rounds - o.packets * r / rounds;
        // Rotate which world goes first.
        let worlds = loaded.len();
        for w in 0..worlds {
            let l = &mut loaded[(w + r) % worlds];
            for prog in 0..PROGRAMS.len() {
                for case in Case::ALL {
                    l.round(&o.cluster, prog, case, count)?;
                }
            }
        }
    }
    loaded
        .into_iter()
        .map(|l| {
            l.check_counters()?;
            Ok(World {
                timings: l
                    .samples
                    .into_iter()
                    .map(|cases| cases.into_iter().map(Samples::summary).collect())
                    .collect(),
                contents: l.contents,
            })
        })
        .collect()
}
