//! Probes and lifecycle hooks, run from the node as the kubelet runs them:
//! `httpGet` and `tcpSocket` connect to the pod's IP (the node's for a
//! hostNetwork pod); `exec` runs inside the container's namespaces
//! (`nsenter --target <pid> --net --mount --uts`). Each is bounded by its
//! timeout. The thresholds and periods are applied by [`ProbeState`].

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container, ExecAction, HTTPGetAction, LifecycleHandler, Probe, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The most of a response (or exec output) kept for a message.
const MAX_OUTPUT: usize = 10 * 1024;

/// Where a probe runs: the container's address and main process.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub ip: Option<IpAddr>,
    pub pid: u32,
    pub container: &'a Container,
    pub nsenter: &'a Path,
}

/// One probe's outcome: `Err` carries the message of a failure.
pub type Outcome = Result<(), String>;

/// Runs the handler parts a probe and a hook share.
async fn run_handler(
    target: Target<'_>,
    http: Option<&HTTPGetAction>,
    tcp: Option<&TCPSocketAction>,
    exec: Option<&ExecAction>,
    timeout: Duration,
) -> Outcome {
    let work = async {
        if let Some(h) = http {
            http_get(target, h).await
        } else if let Some(t) = tcp {
            let port = port(target.container, &t.port)?;
            let ip = t
                .host
                .as_deref()
                .and_then(|h| h.parse().ok())
                .or(target.ip)
                .ok_or("the pod has no IP yet")?;
            TcpStream::connect(SocketAddr::new(ip, port))
                .await
                .map(drop)
                .map_err(|e| format!("dial tcp {}: {e}", SocketAddr::new(ip, port)))
        } else if let Some(e) = exec {
            exec_in(target, e.command.as_deref().unwrap_or_default()).await
        } else {
            Err("no handler (httpGet, tcpSocket or exec) set; grpc is not supported by ferry-node yet".into())
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("timeout after {timeout:?}")),
    }
}

/// Runs `probe` once.
pub async fn run(target: Target<'_>, probe: &Probe) -> Outcome {
    let timeout = Duration::from_secs(positive(probe.timeout_seconds, 1));
    run_handler(
        target,
        probe.http_get.as_ref(),
        probe.tcp_socket.as_ref(),
        probe.exec.as_ref(),
        timeout,
    )
    .await
}

/// Runs a preStop/postStart hook, bounded by `timeout`.
pub async fn hook(target: Target<'_>, handler: &LifecycleHandler, timeout: Duration) -> Outcome {
    if let Some(s) = &handler.sleep {
        tokio::time::sleep(Duration::from_secs(u64::try_from(s.seconds).unwrap_or(0)).min(timeout))
            .await;
        return Ok(());
    }
    run_handler(
        target,
        handler.http_get.as_ref(),
        handler.tcp_socket.as_ref(),
        handler.exec.as_ref(),
        timeout,
    )
    .await
}

fn positive(v: Option<i32>, default: u64) -> u64 {
    v.and_then(|v| u64::try_from(v).ok())
        .filter(|v| *v > 0)
        .unwrap_or(default)
}

/// A port by number or by the name of one of the container's ports.
fn port(container: &Container, p: &IntOrString) -> Result<u16, String> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("invalid port {n}")),
        IntOrString::String(name) => {
            if let Ok(n) = name.parse::<u16>() {
                return Ok(n);
            }
            container
                .ports
                .iter()
                .flatten()
                .find(|cp| cp.name.as_deref() == Some(name.as_str()))
                .and_then(|cp| u16::try_from(cp.container_port).ok())
                .ok_or_else(|| format!("no port named {name:?} in the container"))
        }
    }
}

async fn http_get(target: Target<'_>, h: &HTTPGetAction) -> Outcome {
    if h.scheme
        .as_deref()
        .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"))
    {
        return Err("HTTPS probes are not supported by ferry-node yet".into());
    }
    let port = port(target.container, &h.port)?;
    let ip = h
        .host
        .as_deref()
        .filter(|h| !h.is_empty())
        .and_then(|h| h.parse().ok())
        .or(target.ip)
        .ok_or("the pod has no IP yet")?;
    let addr = SocketAddr::new(ip, port);
    let path = h.path.as_deref().filter(|p| !p.is_empty()).unwrap_or("/");
    let mut host_header = addr.to_string();
    let mut extra = String::new();
    for hdr in h.http_headers.iter().flatten() {
        if hdr.name.contains(['\r', '\n']) || hdr.value.contains(['\r', '\n']) {
            return Err(format!("bad header {:?}", hdr.name));
        }
        if hdr.name.eq_ignore_ascii_case("host") {
            host_header = hdr.value.clone();
        } else {
            extra.push_str(&format!("{}: {}\r\n", hdr.name, hdr.value));
        }
    }
    if path.contains(['\r', '\n', ' ']) {
        return Err(format!("bad path {path:?}"));
    }
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("Get \"http://{addr}{path}\": dial tcp {addr}: {e}"))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: kube-probe/1.32\r\nAccept: */*\r\n{extra}Connection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("writing the request to {addr}: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while buf.len() < MAX_OUTPUT {
        match stream.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            Err(e) => return Err(format!("reading from {addr}: {e}")),
        }
        if buf.windows(2).any(|w| w == b"\r\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let code: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP response from {addr}"))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

async fn exec_in(target: Target<'_>, command: &[String]) -> Outcome {
    if command.is_empty() {
        return Err("exec with an empty command".into());
    }
    let mut cmd = tokio::process::Command::new(target.nsenter);
    cmd.arg(format!("--target={}", target.pid))
        .args(["--net", "--mount", "--uts", "--"])
        .args(command)
        .env_clear()
        .env("PATH", crate::env::DEFAULT_PATH)
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let out = cmd
        .output()
        .await
        .map_err(|e| format!("running {command:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        text.truncate(MAX_OUTPUT.min(1024));
        Err(format!(
            "command {command:?} exited with {}: {}",
            out.status,
            text.trim()
        ))
    }
}

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Startup,
    Liveness,
    Readiness,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
        }
    }
}

/// A probe's schedule and counters for one run of a container.
#[derive(Debug, Clone)]
pub struct ProbeState {
    pub kind: Kind,
    pub probe: Probe,
    /// The current result (readiness and startup start false, liveness
    /// true, as upstream).
    pub ok: bool,
    next_at: Instant,
    successes: u32,
    failures: u32,
}

/// What a probe's result changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    None,
    /// The result flipped to `ok`.
    Flipped(bool),
}

impl ProbeState {
    pub fn new(kind: Kind, probe: Probe, started: Instant) -> Self {
        let delay = Duration::from_secs(positive(probe.initial_delay_seconds, 0));
        ProbeState {
            kind,
            ok: kind == Kind::Liveness,
            probe,
            next_at: started + delay,
            successes: 0,
            failures: 0,
        }
    }

    pub fn due(&self, now: Instant) -> bool {
        now >= self.next_at
    }

    fn period(&self) -> Duration {
        Duration::from_secs(positive(self.probe.period_seconds, 10))
    }

    /// Records a result; the next run is one period from `now`.
    pub fn record(&mut self, now: Instant, outcome: &Outcome) -> Change {
        self.next_at = now + self.period();
        let success_threshold =
            u32::try_from(positive(self.probe.success_threshold, 1)).unwrap_or(1);
        let failure_threshold =
            u32::try_from(positive(self.probe.failure_threshold, 3)).unwrap_or(3);
        match outcome {
            Ok(()) => {
                self.failures = 0;
                self.successes = self.successes.saturating_add(1);
                if !self.ok && self.successes >= success_threshold {
                    self.ok = true;
                    return Change::Flipped(true);
                }
            }
            Err(_) => {
                self.successes = 0;
                self.failures = self.failures.saturating_add(1);
                if self.ok && self.failures >= failure_threshold {
                    self.ok = false;
                    return Change::Flipped(false);
                }
                // Startup probes fail the container from their initial
                // (false) state too.
                if self.kind == Kind::Startup && self.failures >= failure_threshold {
                    self.failures = 0;
                    return Change::Flipped(false);
                }
            }
        }
        Change::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(success: i32, failure: i32) -> Probe {
        Probe {
            period_seconds: Some(1),
            success_threshold: Some(success),
            failure_threshold: Some(failure),
            ..Probe::default()
        }
    }

    #[test]
    fn thresholds() {
        let t0 = Instant::now();
        let mut r = ProbeState::new(Kind::Readiness, probe(2, 3), t0);
        assert!(!r.ok && r.due(t0));
        assert_eq!(r.record(t0, &Ok(())), Change::None);
        assert!(!r.due(t0));
        assert_eq!(r.record(t0, &Ok(())), Change::Flipped(true));
        assert_eq!(r.record(t0, &Err("x".into())), Change::None);
        assert_eq!(r.record(t0, &Err("x".into())), Change::None);
        assert_eq!(r.record(t0, &Err("x".into())), Change::Flipped(false));
        let mut l = ProbeState::new(Kind::Liveness, probe(1, 1), t0);
        assert!(l.ok);
        assert_eq!(l.record(t0, &Err("x".into())), Change::Flipped(false));
        let mut s = ProbeState::new(Kind::Startup, probe(1, 2), t0);
        assert_eq!(s.record(t0, &Err("x".into())), Change::None);
        assert_eq!(s.record(t0, &Err("x".into())), Change::Flipped(false));
    }

    #[test]
    fn named_ports() {
        let c: Container = serde_json::from_value(serde_json::json!(
            {"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}))
        .expect("container");
        assert_eq!(port(&c, &IntOrString::String("http".into())), Ok(8080));
        assert_eq!(port(&c, &IntOrString::Int(80)), Ok(80));
        assert!(port(&c, &IntOrString::String("nope".into())).is_err());
        assert!(port(&c, &IntOrString::Int(0)).is_err());
    }
}
