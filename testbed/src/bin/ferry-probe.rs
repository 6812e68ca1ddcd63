//! `ferry-probe`: the client side of the testbed, a process that tests run
//! inside a pod's namespace (and, with `--cgroup`, inside an agent's
//! cgroup, which an in-process thread cannot join on its own).
//!
//! Makes `--count` requests to `ADDR` against `ferry-netexec` and prints a
//! line per attempt:
//! - `ok <reply> peer=<addr>`: TCP (`GET /hostname`, or `--path`), where
//!   `peer` is what getpeername() says; UDP (`hostname`, or `--msg`), where
//!   `peer` is the address recvfrom() reports the reply came from;
//! - `err <kind> <message>`: the attempt failed (`kind` is the
//!   `std::io::ErrorKind`, e.g. `ConnectionRefused`, `TimedOut`).
//!
//! With `--udp --connected` one socket is connect()ed and reused until an
//! attempt fails, then replaced.
//!
//! `--bind` only binds a socket (TCP, or UDP with `--udp`) to `ADDR` and
//! prints `ok bound` or `err <kind> <message>`: what a local server would
//! get.
//!
//! `--hold FILE` (TCP) connects, prints `connected peer=<addr>`, waits until
//! FILE exists, then sends its request on that same connection: a test can
//! restart things in between and see the connection survive.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "ferry-probe", about = "Test client for ferry-netexec")]
struct Args {
    /// Server address.
    addr: SocketAddr,
    /// UDP instead of TCP.
    #[arg(long)]
    udp: bool,
    /// UDP: connect() the socket once and send() on it, instead of sendto().
    #[arg(long)]
    connected: bool,
    /// Number of requests.
    #[arg(long, default_value_t = 1)]
    count: u32,
    /// Pause between requests, milliseconds.
    #[arg(long, default_value_t = 0)]
    interval_ms: u64,
    /// Per-request timeout, milliseconds.
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
    /// HTTP path to GET.
    #[arg(long, default_value = "/hostname")]
    path: String,
    /// UDP payload.
    #[arg(long, default_value = "hostname")]
    msg: String,
    /// Join this cgroup (its directory) before doing anything.
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// TCP: connect, then wait for this file before sending.
    #[arg(long)]
    hold: Option<PathBuf>,
    /// Only bind a socket to ADDR (as a server would) and report.
    #[arg(long)]
    bind: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(cg) = &args.cgroup {
        let procs = cg.join("cgroup.procs");
        if let Err(e) = std::fs::write(&procs, std::process::id().to_string()) {
            eprintln!("ferry-probe: joining {}: {e}", procs.display());
            return ExitCode::FAILURE;
        }
    }
    if args.bind {
        let bound = if args.udp {
            UdpSocket::bind(args.addr).map(drop)
        } else {
            std::net::TcpListener::bind(args.addr).map(drop)
        };
        match bound {
            Ok(()) => println!("ok bound"),
            Err(e) => println!("err {:?} {e}", e.kind()),
        }
        return ExitCode::SUCCESS;
    }
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let mut udp_connected: Option<UdpSocket> = None;
    for i in 0..args.count {
        if i > 0 && args.interval_ms > 0 {
            std::thread::sleep(Duration::from_millis(args.interval_ms));
        }
        let result = if args.udp {
            udp(&args, timeout, &mut udp_connected)
        } else {
            tcp(&args, timeout)
        };
        match result {
            Ok(line) => println!("ok {line}"),
            Err(e) => {
                println!("err {:?} {e}", e.kind());
                // As an application would: a failed connected socket is
                // closed and the next attempt connects afresh.
                udp_connected = None;
            }
        }
    }
    ExitCode::SUCCESS
}

fn tcp(args: &Args, timeout: Duration) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&args.addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    let peer = stream.peer_addr()?;
    if let Some(file) = &args.hold {
        println!("connected peer={peer}");
        // Bounded: a test that never creates the file still ends.
        let deadline = Instant::now() + Duration::from_secs(120);
        while !file.exists() {
            if Instant::now() > deadline {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "hold file never appeared",
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    write!(
        stream,
        "GET {} HTTP/1.0\r\nHost: {}\r\n\r\n",
        args.path, args.addr
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    if !head.starts_with("HTTP/1.") || !head.contains(" 200 ") {
        return Err(std::io::Error::other(format!(
            "unexpected response: {}",
            head.lines().next().unwrap_or("")
        )));
    }
    Ok(format!("{} peer={peer}", body.trim()))
}

fn udp(
    args: &Args,
    timeout: Duration,
    connected: &mut Option<UdpSocket>,
) -> std::io::Result<String> {
    let bind: SocketAddr = if args.addr.is_ipv4() {
        "0.0.0.0:0".parse().map_err(std::io::Error::other)?
    } else {
        "[::]:0".parse().map_err(std::io::Error::other)?
    };
    let mut buf = [0u8; 2048];
    if args.connected {
        if connected.is_none() {
            let sock = UdpSocket::bind(bind)?;
            sock.set_read_timeout(Some(timeout))?;
            sock.connect(args.addr)?;
            *connected = Some(sock);
        }
        let Some(sock) = connected.as_ref() else {
            return Err(std::io::Error::other("no socket"));
        };
        sock.send(args.msg.as_bytes())?;
        let n = sock.recv(&mut buf)?;
        let peer = sock.peer_addr()?;
        return Ok(format!(
            "{} peer={peer}",
            String::from_utf8_lossy(&buf[..n]).trim()
        ));
    }
    let sock = UdpSocket::bind(bind)?;
    sock.set_read_timeout(Some(timeout))?;
    sock.send_to(args.msg.as_bytes(), args.addr)?;
    let (n, from) = sock.recv_from(&mut buf)?;
    Ok(format!(
        "{} peer={from}",
        String::from_utf8_lossy(&buf[..n]).trim()
    ))
}
