//! `ferry-benches`: Ferry's benchmark harnesses, run on purpose and never by
//! `cargo test`.
//!
//! [`cluster`] measures whole `ferry up` clusters: time to usable, idle
//! memory, pod create to reachable, a Deployment scaled from 0, and an
//! object load into ferry-apiserver; the `cluster-bench` binary drives it.
//!
//! [`cni`] measures `ferry-cni` against Debian's reference `bridge` +
//! `host-local` plugins (ADD and DEL latency, one at a time and concurrent)
//! in network namespaces of its own; the `cni-bench` binary drives it.
//!
//! [`dns`] measures `ferry-dns` against Debian's `unbound` and `knot`
//! serving the equivalent static zone (dnsperf throughput and latency,
//! memory) in a network namespace of its own; the `dns-bench` binary
//! drives it.
//!
//! [`nodeport`] measures a NodePort reached from outside (forwarding cost
//! per core of the entry node, new connections and their latency) through
//! Ferry's variants against kube-proxy's nftables and iptables rulesets;
//! the `nodeport-bench` binary drives it.
//!
//! [`packet`] times the TC program per packet with BPF_PROG_TEST_RUN; the
//! `packet-bench` binary drives it.
//!
//! [`policy`] times the pod programs per packet under NetworkPolicy with
//! BPF_PROG_TEST_RUN (0, 100 and 10,000 policies over 10,000 pods, maps
//! written by the agent's compiler and programmer); the `policy-bench`
//! binary drives it, and the criterion benchmark `policy_compile` times
//! the compiler over the same synthetic cluster.
//!
//! [`services`] measures Ferry's eBPF service dataplane against kube-proxy's
//! iptables and nftables rulesets in a testbed world; the `services-bench`
//! binary drives it.
//!
//! The rest measures `ferry-apiserver` against etcd on the
//! same machine, in one run, so the two are compared under the same load:
//! - [`process`]: starting each server on loopback with free ports and a
//!   temporary data dir, reading its RSS, and killing it on drop or panic;
//! - [`objects`]: the Services and EndpointSlices both servers store, and
//!   the send timestamp a timed write carries;
//! - [`ferry`] and [`etcd`]: the same workload against each (bulk creates
//!   with bounded concurrency, full and paged lists, watch fan-out with timed
//!   writes);
//! - [`measure`]: the pieces both workloads share (timed writes, watchers);
//! - [`stats`] and [`report`]: percentiles and the markdown table.
//!
//! The `apiserver-bench` binary drives it; `cargo xtask bench` builds the
//! release binaries and runs that. Everything talks to 127.0.0.1 only and
//! every phase is bounded in count and time.

pub mod cluster;
pub mod cni;
pub mod dns;
pub mod etcd;
pub mod ferry;
pub mod harness;
pub mod measure;
pub mod netpol;
pub mod nodeport;
pub mod objects;
pub mod packet;
pub mod policy;
pub mod process;
pub mod report;
pub mod services;
pub mod stats;

use std::time::{Duration, Instant};

use stats::Samples;

/// What can stop a benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{server} did not become ready within {after:?}: {detail}")]
    NotReady {
        server: &'static str,
        after: Duration,
        detail: String,
    },
    #[error("{server} exited early ({status}); its log:\n{log}")]
    Exited {
        server: &'static str,
        status: std::process::ExitStatus,
        log: String,
    },
    #[error("reading the kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error("kubernetes API: {0}")]
    Kube(Box<kube::Error>),
    #[error("etcd: {0}")]
    Etcd(Box<etcd_client::Error>),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{phase} did not finish within {after:?}")]
    Timeout { phase: String, after: Duration },
    #[error("building a request: {0}")]
    Request(#[from] kube::core::request::Error),
    #[error("a benchmark task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("{0}")]
    Check(String),
}

// Boxed: the client errors are large and every Result here carries them.
impl From<kube::Error> for BenchError {
    fn from(e: kube::Error) -> Self {
        Self::Kube(Box::new(e))
    }
}

impl From<etcd_client::Error> for BenchError {
    fn from(e: etcd_client::Error) -> Self {
        Self::Etcd(Box::new(e))
    }
}

impl BenchError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}

pub type Result<T, E = BenchError> = std::result::Result<T, E>;

/// Runs `fut` with a time limit, naming the phase when it runs out.
pub async fn bounded<T>(
    phase: &str,
    after: Duration,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(after, fut)
        .await
        .map_err(|_| BenchError::Timeout {
            phase: phase.to_string(),
            after,
        })?
}

/// The workload, the same for both servers.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Services created in `default`, and as many EndpointSlices.
    pub services: usize,
    /// Creates (or puts) in flight at once.
    pub concurrency: usize,
    /// Runs of each list, for the percentiles.
    pub list_runs: usize,
    /// Page size of the paged list.
    pub page_size: usize,
    /// Concurrent watches during the fan-out.
    pub watchers: usize,
    /// Watches per client (connection pool for ferry, HTTP/2 channel for etcd).
    pub watchers_per_client: usize,
    /// Timed writes every watcher should see.
    pub writes: usize,
    /// Spacing of the timed writes.
    pub write_interval: Duration,
    /// Upper bound on any one phase.
    pub phase_timeout: Duration,
}

impl Workload {
    /// Clients the fan-out spreads its watches over.
    pub fn watch_clients(&self) -> usize {
        self.watchers
            .div_ceil(self.watchers_per_client.max(1))
            .max(1)
    }

    /// How long watchers wait for their last event once writes start.
    pub fn delivery_deadline(&self) -> Duration {
        let writes = u32::try_from(self.writes).unwrap_or(u32::MAX);
        self.write_interval.saturating_mul(writes) + Duration::from_secs(60)
    }
}

/// Runs `op(0..n)` with at most `concurrency` in flight, each as its own task
/// so client-side encoding spreads over the cores. Returns the wall time,
/// each call's latency, and the results in index order; the first error
/// stops the run (the tasks still in flight are aborted).
pub async fn run_bounded<F, Fut, T>(
    n: usize,
    concurrency: usize,
    op: F,
) -> Result<(Duration, Samples, Vec<T>)>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let started = Instant::now();
    let mut latencies = Samples::with_capacity(n);
    let mut results: Vec<(usize, T)> = Vec::with_capacity(n);
    let mut tasks = tokio::task::JoinSet::new();
    let mut next = 0;
    loop {
        while next < n && tasks.len() < concurrency.max(1) {
            let fut = op(next);
            let i = next;
            tasks.spawn(async move {
                let t0 = Instant::now();
                let r = fut.await;
                (i, t0.elapsed(), r)
            });
            next += 1;
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        let (i, took, r) = joined?;
        latencies.push(took);
        results.push((i, r?));
    }
    let wall = started.elapsed();
    results.sort_unstable_by_key(|(i, _)| *i);
    Ok((
        wall,
        latencies,
        results.into_iter().map(|(_, t)| t).collect(),
    ))
}
