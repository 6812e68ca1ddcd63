//! Running `dnsperf` (pinned to CPU 0, inside the namespace) against one
//! server and reading what it printed. Debian's dnsperf 2.10 has no
//! latency histogram option, so the percentiles come from its `-v`
//! output (one line per answered query with its latency), in a run at a
//! fixed rate: printing every query costs dnsperf enough CPU that it would
//! be the bottleneck of a full-speed run, which therefore runs without `-v`
//! and reports dnsperf's own average.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use ferry_testbed::Netns;

use super::servers::LOAD_CPU;
use crate::cni::exec::children_cpu;
use crate::process::cpu_time;
use crate::stats::Samples;

/// How one dnsperf run is told to load the server.
#[derive(Debug, Clone)]
pub struct Load {
    pub dnsperf: PathBuf,
    pub port: u16,
    pub queries: PathBuf,
    pub duration: Duration,
    /// `-q`: queries outstanding at most.
    pub outstanding: usize,
    /// `-c`: clients (sockets).
    pub clients: usize,
    /// `-Q` and `-v`: a fixed rate with every latency printed.
    pub rate: Option<u32>,
}

/// What one run measured.
#[derive(Debug, Clone, Default)]
pub struct Perf {
    pub sent: u64,
    pub completed: u64,
    pub lost: u64,
    pub qps: f64,
    pub run_time: f64,
    pub avg_latency: Option<Duration>,
    pub max_latency: Option<Duration>,
    /// Response codes and their counts.
    pub rcodes: Vec<(String, u64)>,
    /// CPU the server used during the run, and dnsperf's.
    pub server_cpu: Duration,
    pub load_cpu: Duration,
    pub wall: Duration,
    /// Per-query latencies (fixed-rate runs only).
    pub latencies: Samples,
}

impl Perf {
    /// Server CPU per second of the run: 1.0 is its whole core.
    pub fn server_cores(&self) -> f64 {
        self.server_cpu.as_secs_f64() / self.run_time.max(1e-9)
    }

    pub fn load_cores(&self) -> f64 {
        self.load_cpu.as_secs_f64() / self.wall.as_secs_f64().max(1e-9)
    }

    /// Queries answered per CPU-second of the server.
    pub fn per_core(&self) -> f64 {
        let cpu = self.server_cpu.as_secs_f64();
        if cpu > 0.0 {
            self.completed as f64 / cpu
        } else {
            0.0
        }
    }

    pub fn rcode_share(&self, code: &str) -> f64 {
        let n: u64 = self.rcodes.iter().map(|(_, n)| n).sum();
        let c = self
            .rcodes
            .iter()
            .find(|(k, _)| k == code)
            .map_or(0, |(_, n)| *n);
        if n == 0 { 0.0 } else { c as f64 / n as f64 }
    }
}

/// Runs dnsperf as `load` says against the server with pid `server_pid`,
/// writing its output to `out_dir`.
pub fn run(
    netns: &Netns,
    load: &Load,
    server_pid: u32,
    out_dir: &Path,
    tag: &str,
    stop: &AtomicBool,
) -> Result<Perf> {
    let secs = load.duration.as_secs().max(1).to_string();
    let mut cmd = netns.command("taskset");
    cmd.arg("-c")
        .arg(LOAD_CPU)
        .arg(&load.dnsperf)
        .args(["-s", "127.0.0.1", "-p", &load.port.to_string(), "-d"])
        .arg(&load.queries)
        .args(["-l", &secs, "-q", &load.outstanding.to_string()])
        .args(["-c", &load.clients.to_string(), "-T", "1", "-t", "2"]);
    if let Some(rate) = load.rate {
        cmd.args(["-Q", &rate.to_string(), "-v"]);
    }
    let stdout = out_dir.join(format!("dnsperf-{tag}.out"));
    let stderr = out_dir.join(format!("dnsperf-{tag}.err"));
    cmd.stdin(std::process::Stdio::null())
        .stdout(File::create(&stdout).with_context(|| format!("creating {}", stdout.display()))?)
        .stderr(File::create(&stderr).with_context(|| format!("creating {}", stderr.display()))?);
    let cpu0 = cpu_time(Some(server_pid))?;
    let children0 = children_cpu()?;
    let started = Instant::now();
    let mut child = cmd.spawn().context("starting dnsperf")?;
    let limit = load.duration + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for dnsperf")? {
            break status;
        }
        if stop.load(Ordering::Relaxed) || started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!("dnsperf was stopped (run stopped or past {limit:?})");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let wall = started.elapsed();
    let server_cpu = cpu_time(Some(server_pid))?.saturating_sub(cpu0);
    let load_cpu = children_cpu()?.saturating_sub(children0);
    let text = std::fs::read_to_string(&stdout)
        .with_context(|| format!("reading {}", stdout.display()))?;
    if !status.success() {
        let err = std::fs::read_to_string(&stderr).unwrap_or_default();
        bail!("dnsperf failed ({status}): {err}");
    }
    let mut perf =
        parse(&text).with_context(|| format!("parsing dnsperf's output ({})", stdout.display()))?;
    perf.server_cpu = server_cpu;
    perf.load_cpu = load_cpu;
    perf.wall = wall;
    // The per-query lines are large: keep only the statistics.
    if load.rate.is_some() {
        let _ = std::fs::remove_file(&stdout);
    }
    Ok(perf)
}

fn secs_to_duration(s: &str) -> Option<Duration> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(Duration::from_secs_f64)
}

/// The statistics block (and, with `-v`, the per-query lines).
pub fn parse(text: &str) -> Result<Perf> {
    let mut p = Perf::default();
    let mut saw_qps = false;
    let first_number = |rest: &str| -> Option<u64> { rest.split_whitespace().next()?.parse().ok() };
    for line in text.lines() {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("> ") {
            // `> NOERROR name type latency`
            if let Some(d) = rest.split_whitespace().last().and_then(secs_to_duration) {
                p.latencies.push(d);
            }
        } else if let Some(rest) = l.strip_prefix("Queries sent:") {
            p.sent = first_number(rest).unwrap_or(0);
        } else if let Some(rest) = l.strip_prefix("Queries completed:") {
            p.completed = first_number(rest).unwrap_or(0);
        } else if let Some(rest) = l.strip_prefix("Queries lost:") {
            p.lost = first_number(rest).unwrap_or(0);
        } else if let Some(rest) = l.strip_prefix("Run time (s):") {
            p.run_time = rest.trim().parse().unwrap_or(0.0);
        } else if let Some(rest) = l.strip_prefix("Queries per second:") {
            p.qps = rest.trim().parse().unwrap_or(0.0);
            saw_qps = true;
        } else if let Some(rest) = l.strip_prefix("Average Latency (s):") {
            // `0.000483 (min 0.000128, max 0.001295)`
            let mut parts = rest.split(['(', ',', ')']);
            p.avg_latency = parts.next().and_then(secs_to_duration);
            p.max_latency = rest
                .split("max ")
                .nth(1)
                .and_then(|m| m.split(')').next())
                .and_then(secs_to_duration);
        } else if let Some(rest) = l.strip_prefix("Response codes:") {
            // `NOERROR 3 (75.00%), NXDOMAIN 1 (25.00%)`
            for item in rest.split("),") {
                let mut f = item.split_whitespace();
                if let (Some(code), Some(n)) = (f.next(), f.next().and_then(|n| n.parse().ok())) {
                    p.rcodes.push((code.to_string(), n));
                }
            }
        }
    }
    if !saw_qps {
        bail!("no \"Queries per second\" line");
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "DNS Performance Testing Tool
Version 2.10.0

[Status] Command line: dnsperf -s 127.0.0.1 -p 5353 -d q.txt -n 1 -v
> NOERROR a.default.svc.cluster.local A 0.001295
> NXDOMAIN b.default.svc.cluster.local A 0.000269
> NOERROR _http._tcp.a.default.svc.cluster.local SRV 0.000241
> NOERROR a.default.svc.cluster.local AAAA 0.000128
[Status] Testing complete (end of file)

Statistics:

  Queries sent:         4
  Queries completed:    4 (100.00%)
  Queries lost:         0 (0.00%)

  Response codes:       NOERROR 3 (75.00%), NXDOMAIN 1 (25.00%)
  Average packet size:  request 47, response 90
  Run time (s):         0.003937
  Queries per second:   1016.002032

  Average Latency (s):  0.000483 (min 0.000128, max 0.001295)
  Latency StdDev (s):   0.000545
";

    #[test]
    fn parses_the_statistics_and_the_latencies() {
        let mut p = parse(OUT).expect("parses");
        assert_eq!((p.sent, p.completed, p.lost), (4, 4, 0));
        assert!((p.qps - 1016.002032).abs() < 1e-6);
        assert_eq!(p.avg_latency, Some(Duration::from_micros(483)));
        assert_eq!(p.max_latency, Some(Duration::from_micros(1295)));
        assert_eq!(
            p.rcodes,
            vec![("NOERROR".to_string(), 3), ("NXDOMAIN".to_string(), 1)]
        );
        assert!((p.rcode_share("NXDOMAIN") - 0.25).abs() < 1e-9);
        assert_eq!(p.latencies.len(), 4);
        assert_eq!(p.latencies.p50(), Some(Duration::from_micros(241)));
    }

    #[test]
    fn output_without_statistics_is_an_error() {
        assert!(parse("[Status] Sending queries").is_err());
    }
}
