//! The client: this bench's own binary re-run as `services-bench client`
//! inside the client pod's namespace (and, for Ferry, inside the agent's
//! cgroup, which a process must join itself). It prints one JSON
//! [`ClientSummary`] on stdout.
//!
//! Three phases, each bounded by a count and by time (bare connects dial the
//! Service of the backends' accept sinks, GETs the Service of their
//! `ferry-netexec`):
//! 1. sequential connects: `connect()` timed from the call to its return
//!    (the SYN / SYN-ACK round trip, through whatever translates the
//!    address), then closed with an RST (`SO_LINGER` 0) so the client leaves
//!    no TIME_WAIT behind and ports never run out;
//! 2. sequential HTTP GETs of `/hostname`: connect, request, response read to
//!    the server's close, timed whole (and the connect part on its own); the
//!    replies show which backend answered;
//! 3. a few workers connecting and resetting as fast as they can for a
//!    while: the new-connection rate under concurrency.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What the client is asked to do.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// The Service address the bare connects dial.
    #[arg(long)]
    pub addr: SocketAddr,
    /// The Service address the HTTP GETs go to.
    #[arg(long)]
    pub http_addr: SocketAddr,
    /// Join this cgroup (its directory) before opening any socket.
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    /// Untimed connects first.
    #[arg(long, default_value_t = 50)]
    pub warmup: usize,
    /// Sequential timed connects.
    #[arg(long, default_value_t = 2000)]
    pub connects: usize,
    /// Sequential timed HTTP GETs.
    #[arg(long, default_value_t = 1000)]
    pub http: usize,
    /// Workers of the concurrent phase (0 skips it).
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// How long the concurrent phase runs, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub rate_ms: u64,
    /// Upper bound, in milliseconds, on each sequential phase.
    #[arg(long, default_value_t = 30_000)]
    pub phase_ms: u64,
    /// Per-connection timeout, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
}

impl ClientArgs {
    /// The arguments that reproduce `self` on a command line.
    pub fn to_args(&self) -> Vec<String> {
        let mut v = vec![
            "--addr".into(),
            self.addr.to_string(),
            "--http-addr".into(),
            self.http_addr.to_string(),
            "--warmup".into(),
            self.warmup.to_string(),
            "--connects".into(),
            self.connects.to_string(),
            "--http".into(),
            self.http.to_string(),
            "--workers".into(),
            self.workers.to_string(),
            "--rate-ms".into(),
            self.rate_ms.to_string(),
            "--phase-ms".into(),
            self.phase_ms.to_string(),
            "--timeout-ms".into(),
            self.timeout_ms.to_string(),
        ];
        if let Some(cg) = &self.cgroup {
            v.push("--cgroup".into());
            v.push(cg.to_string_lossy().into_owned());
        }
        v
    }

    /// The longest the client can take, with some slack.
    pub fn limit(&self) -> Duration {
        Duration::from_millis(2 * self.phase_ms + self.rate_ms) + Duration::from_secs(30)
    }
}

/// The concurrent phase.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Concurrent {
    pub workers: usize,
    pub connections: u64,
    pub errors: u64,
    pub wall_ns: u64,
}

/// What the client measured (raw samples, so the harness computes the
/// percentiles).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClientSummary {
    /// Sequential connects, each connect() call in ns.
    pub connect_ns: Vec<u64>,
    /// Wall time of the sequential connect phase.
    pub connect_wall_ns: u64,
    /// HTTP GETs, each whole (connect to the end of the response) in ns.
    pub http_ns: Vec<u64>,
    /// The connect() part of each GET.
    pub http_connect_ns: Vec<u64>,
    pub http_wall_ns: u64,
    /// Which backend answered, counted.
    pub hostnames: BTreeMap<String, usize>,
    pub concurrent: Concurrent,
    /// Failed attempts over the sequential phases.
    pub errors: usize,
    pub first_error: Option<String>,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Connects, and resets the connection at once (no TIME_WAIT).
fn connect_reset(addr: &SocketAddr, timeout: Duration) -> std::io::Result<Duration> {
    let t0 = Instant::now();
    let stream = TcpStream::connect_timeout(addr, timeout)?;
    let took = t0.elapsed();
    rustix::net::sockopt::set_socket_linger(&stream, Some(Duration::ZERO))?;
    drop(stream);
    Ok(took)
}

/// One GET of /hostname; returns (whole, connect part, hostname).
fn get(addr: &SocketAddr, timeout: Duration) -> std::io::Result<(Duration, Duration, String)> {
    let t0 = Instant::now();
    let mut stream = TcpStream::connect_timeout(addr, timeout)?;
    let connected = t0.elapsed();
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(stream, "GET /hostname HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = Vec::with_capacity(256);
    stream.take(64 * 1024).read_to_end(&mut response)?;
    let whole = t0.elapsed();
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if !head.starts_with("HTTP/1.") || !head.contains(" 200 ") {
        return Err(std::io::Error::other(format!(
            "unexpected response: {}",
            head.lines().next().unwrap_or("")
        )));
    }
    Ok((whole, connected, body.trim().to_string()))
}

/// The client's whole run; errors are counted, not fatal (joining the
/// cgroup is).
pub fn run(args: &ClientArgs) -> Result<ClientSummary, String> {
    if let Some(cg) = &args.cgroup {
        let procs = cg.join("cgroup.procs");
        std::fs::write(&procs, std::process::id().to_string())
            .map_err(|e| format!("joining {}: {e}", procs.display()))?;
    }
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let phase = Duration::from_millis(args.phase_ms);
    let mut out = ClientSummary::default();
    let fail = |out: &mut ClientSummary, e: std::io::Error| {
        out.errors += 1;
        if out.first_error.is_none() {
            out.first_error = Some(format!("{:?}: {e}", e.kind()));
        }
    };
    for _ in 0..args.warmup {
        if let Err(e) = connect_reset(&args.addr, timeout) {
            fail(&mut out, e);
        }
    }
    if out.errors == args.warmup && args.warmup > 0 {
        // Nothing gets through: say so at once instead of timing failures.
        return Ok(out);
    }
    out.errors = 0;
    out.first_error = None;

    out.connect_ns.reserve(args.connects);
    let started = Instant::now();
    for _ in 0..args.connects {
        match connect_reset(&args.addr, timeout) {
            Ok(d) => out.connect_ns.push(nanos(d)),
            Err(e) => fail(&mut out, e),
        }
        if started.elapsed() > phase {
            break;
        }
    }
    out.connect_wall_ns = nanos(started.elapsed());

    let started = Instant::now();
    for _ in 0..args.http {
        match get(&args.http_addr, timeout) {
            Ok((whole, connect, host)) => {
                out.http_ns.push(nanos(whole));
                out.http_connect_ns.push(nanos(connect));
                *out.hostnames.entry(host).or_default() += 1;
            }
            Err(e) => fail(&mut out, e),
        }
        if started.elapsed() > phase {
            break;
        }
    }
    out.http_wall_ns = nanos(started.elapsed());

    if args.workers > 0 && args.rate_ms > 0 {
        let stop = AtomicBool::new(false);
        let ok = AtomicU64::new(0);
        let bad = AtomicU64::new(0);
        let started = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..args.workers {
                s.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        match connect_reset(&args.addr, timeout) {
                            Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(_) => bad.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                });
            }
            std::thread::sleep(Duration::from_millis(args.rate_ms));
            stop.store(true, Ordering::Relaxed);
        });
        out.concurrent = Concurrent {
            workers: args.workers,
            connections: ok.load(Ordering::Relaxed),
            errors: bad.load(Ordering::Relaxed),
            wall_ns: nanos(started.elapsed()),
        };
    }
    Ok(out)
}

/// The client as a harness binary's hidden subcommand: runs it and prints
/// its summary as one JSON line for the parent to read; `bench` names the
/// binary in error messages.
pub fn main(args: &ClientArgs, bench: &str) -> std::process::ExitCode {
    let summary = match run(args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{bench} client: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match serde_json::to_string(&summary) {
        Ok(json) => {
            println!("{json}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{bench} client: encoding the summary: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
