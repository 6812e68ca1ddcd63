//! The prober: `ferry-probe` run in the source pod's network namespace
//! (`nsenter --net=<pod netns>`) and cgroup (`--cgroup`, under the node
//! agent's cgroup, so connect()/sendmsg() to a ClusterIP is translated at
//! the socket as for the pod's own processes), many at once from a pool
//! of threads, every one bounded.

use std::io::Read as _;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::world::WorldPod;

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Connected and answered: the reply (the server's hostname).
    Ok(String),
    /// No answer within the timeout (a dropped SYN or datagram).
    TimedOut,
    /// Refused (an RST, or ICMP port unreachable).
    Refused,
    /// Anything else: the line ferry-probe printed, or why it did not run.
    Failed(String),
}

impl Outcome {
    pub fn short(&self) -> &'static str {
        match self {
            Outcome::Ok(_) => ".",
            Outcome::TimedOut => "X",
            Outcome::Refused => "R",
            Outcome::Failed(_) => "?",
        }
    }
}

/// One probe: from pod `src` (an index into the world's pods) to `addr`.
#[derive(Debug, Clone)]
pub struct Spec {
    pub src: usize,
    pub addr: SocketAddrV4,
    pub udp: bool,
}

pub struct Prober {
    pub bin: PathBuf,
    pub pods: Vec<WorldPod>,
    /// Concurrent probes at most.
    pub workers: usize,
    /// Per attempt.
    pub timeout: Duration,
}

impl Prober {
    pub fn new(pods: Vec<WorldPod>) -> Self {
        Self {
            bin: ferry_testbed::binary("ferry-testbed", "ferry-probe"),
            pods,
            workers: 160,
            timeout: Duration::from_millis(1000),
        }
    }

    /// The `ferry-probe` command for one attempt from `src`.
    pub fn command(&self, src: usize, addr: SocketAddr, extra: &[&str]) -> Command {
        let pod = &self.pods[src];
        command(
            &self.bin,
            &pod.netns,
            &pod.cgroup,
            addr,
            self.timeout,
            extra,
        )
    }

    /// Runs every probe, `workers` at a time; outcomes in the order given.
    pub fn run(&self, specs: &[Spec]) -> Vec<Outcome> {
        let next = Mutex::new(0usize);
        let results: Vec<Mutex<Option<Outcome>>> = specs.iter().map(|_| Mutex::new(None)).collect();
        std::thread::scope(|s| {
            for _ in 0..self.workers.min(specs.len()) {
                s.spawn(|| {
                    loop {
                        let i = {
                            let mut n = next.lock().expect("queue");
                            let i = *n;
                            *n += 1;
                            i
                        };
                        let Some(spec) = specs.get(i) else { break };
                        let extra: &[&str] = if spec.udp { &["--udp"] } else { &[] };
                        let out = run_one(
                            self.command(spec.src, SocketAddr::V4(spec.addr), extra),
                            self.timeout,
                        );
                        *results[i].lock().expect("result") = Some(out);
                    }
                });
            }
        });
        results
            .into_iter()
            .map(|r| {
                r.into_inner()
                    .ok()
                    .flatten()
                    .unwrap_or(Outcome::Failed("never ran".into()))
            })
            .collect()
    }
}

pub fn command(
    bin: &Path,
    netns: &Path,
    cgroup: &Path,
    addr: SocketAddr,
    timeout: Duration,
    extra: &[&str],
) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns.display()))
        .arg("--")
        .arg(bin)
        .arg(addr.to_string())
        .arg("--timeout-ms")
        .arg(timeout.as_millis().to_string())
        .arg("--cgroup")
        .arg(cgroup)
        .args(extra);
    cmd
}

/// Runs one ferry-probe attempt, killed if it outlives its own timeout by
/// far.
fn run_one(mut cmd: Command, timeout: Duration) -> Outcome {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(format!("spawning nsenter: {e}")),
    };
    let deadline = Instant::now() + timeout + Duration::from_secs(10);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Outcome::Failed("ferry-probe did not end".into());
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Outcome::Failed(format!("waiting: {e}")),
        }
    }
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    parse(out.lines().next().unwrap_or_default(), &err)
}

/// One line of ferry-probe's output.
pub fn parse(line: &str, stderr: &str) -> Outcome {
    if let Some(rest) = line.strip_prefix("ok ") {
        let reply = rest.rsplit_once(" peer=").map_or(rest, |(r, _)| r);
        return Outcome::Ok(reply.trim().to_owned());
    }
    let kind = line
        .strip_prefix("err ")
        .and_then(|r| r.split_whitespace().next());
    match kind {
        // UDP: recv() past SO_RCVTIMEO is EAGAIN.
        Some("TimedOut" | "WouldBlock") => Outcome::TimedOut,
        Some("ConnectionRefused") => Outcome::Refused,
        _ => Outcome::Failed(format!("{line} {}", stderr.trim())),
    }
}
