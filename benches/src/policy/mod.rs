//! NetworkPolicy benchmarks over one synthetic cluster ([`cluster`]: 10,000
//! pods in 100 namespaces by default, any number of policies), compiled and
//! written by the product's own code:
//! - [`packet`]: the pod programs' per-packet cost by BPF_PROG_TEST_RUN
//!   with 0, 100 and 10,000 policies (new flow, established, denied, a pod
//!   no policy selects), the `policy-bench` binary drives it and [`table`]
//!   writes its markdown;
//! - the criterion benchmark `benches/policy_compile.rs`: compiling 1,000
//!   policies over the same cluster, from scratch and after one pod is
//!   relabelled.

pub mod cluster;
pub mod packet;
pub mod table;

use std::collections::BTreeSet;

use ferry_dataplane::policy::Desired;

use crate::packet::PacketBenchError;

/// Distinct pod identities in compiled maps (not the addresses holding
/// them; the node's own `IDENTITY_HOST` left out).
pub fn distinct_identities(desired: &Desired) -> usize {
    desired
        .identities
        .values()
        .filter(|id| **id != ferry_ebpf_common::policy::IDENTITY_HOST)
        .collect::<BTreeSet<_>>()
        .len()
}

/// What can stop the policy bench.
#[derive(Debug, thiserror::Error)]
pub enum PolicyBenchError {
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    #[error(transparent)]
    Bpf(#[from] PacketBenchError),
    #[error("compiling the policies: {0}")]
    Compile(#[from] ferry_dataplane::policy::identity::Exhausted),
    #[error("writing the policy maps: {failed} writes failed, the first: {message}")]
    Write { failed: usize, message: String },
    #[error("{policies} policies, {program}, {case}: the program returned {got}, expected {want}")]
    Verdict {
        policies: usize,
        program: &'static str,
        case: &'static str,
        got: u32,
        want: u32,
    },
    #[error(
        "{policies} policies: the programs counted {got} {what} flows in direction {dir}, \
         expected {want}"
    )]
    Counters {
        policies: usize,
        what: &'static str,
        dir: u8,
        got: u64,
        want: u64,
    },
}
