//! Small clients for `ferry-netexec`, and a retry helper. They use plain
//! sockets of whatever namespace the calling thread is in: call them inside
//! [`Netns::in_netns`](crate::Netns::in_netns) to talk from a pod.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::cmd;
use crate::cni::target_profile_dir;
use crate::error::{Error, Result};
use crate::netns::{Netns, Process};

/// `ferry-netexec`'s default HTTP port.
pub const NETEXEC_HTTP_PORT: u16 = 8080;
/// `ferry-netexec`'s default UDP port.
pub const NETEXEC_UDP_PORT: u16 = 8081;
/// What `ferry-netexec` prints once it listens.
pub const NETEXEC_READY: &str = "ferry-netexec: listening";

/// Largest HTTP response the client reads.
const MAX_RESPONSE: u64 = 1 << 20;

/// An HTTP/1.1 GET of `path` from `addr`; returns the status code and body.
/// Connect, write and read are each limited by `timeout`.
pub fn http_get_full(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String)> {
    let net = |what: &str, source| Error::Net {
        what: format!("HTTP GET {path}: {what}"),
        addr: addr.to_string(),
        source,
    };
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| net("connect", e))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| net("socket options", e))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| net("write", e))?;
    let mut response = Vec::new();
    stream
        .take(MAX_RESPONSE)
        .read_to_end(&mut response)
        .map_err(|e| net("read", e))?;
    let text = String::from_utf8_lossy(&response);
    let bad = |why: &str| Error::Net {
        what: format!("HTTP GET {path}: {why}"),
        addr: addr.to_string(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, text.to_string()),
    };
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status code"))?;
    Ok((status, body.to_owned()))
}

/// An HTTP GET that must answer 200; returns the body.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<String> {
    let (status, body) = http_get_full(addr, path, timeout)?;
    if status != 200 {
        return Err(Error::Net {
            what: format!("HTTP GET {path}: status {status}"),
            addr: addr.to_string(),
            source: std::io::Error::other(body),
        });
    }
    Ok(body)
}

/// Sends one datagram to `addr` from an ephemeral port and returns the
/// first reply (for `ferry-netexec`, its hostname).
pub fn udp_request(addr: SocketAddr, payload: &[u8], timeout: Duration) -> Result<String> {
    let net = |what: &str, source| Error::Net {
        what: format!("UDP {what}"),
        addr: addr.to_string(),
        source,
    };
    let local: SocketAddr = match addr.ip() {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).map_err(|e| net("bind", e))?;
    socket
        .set_read_timeout(Some(timeout))
        .map_err(|e| net("socket options", e))?;
    socket.connect(addr).map_err(|e| net("connect", e))?;
    socket.send(payload).map_err(|e| net("send", e))?;
    let mut buf = [0u8; 65536];
    let n = socket.recv(&mut buf).map_err(|e| net("receive", e))?;
    Ok(String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned())
}

/// Calls `f` until it succeeds or `timeout` has passed, sleeping
/// `interval` in between; returns the last error on timeout.
pub fn retry<T>(
    timeout: Duration,
    interval: Duration,
    mut f: impl FnMut() -> Result<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() + interval >= deadline => return Err(e),
            Err(_) => thread::sleep(interval),
        }
    }
}

/// The `ferry-netexec` binary: `$FERRY_NETEXEC` if set, else the one in
/// the running binary's cargo profile directory (cargo builds it there
/// whenever it tests this package or the whole workspace). When it is not
/// there and this process runs under cargo (`cargo test -p <another
/// crate>`), it is built once with `cargo build -p ferry-testbed --bin
/// ferry-netexec` into the same target directory and profile. An existing
/// binary is used as is.
pub fn netexec_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("FERRY_NETEXEC") {
        return Ok(path.into());
    }
    let missing = |hint: String| Error::MissingBinary {
        name: "ferry-netexec".into(),
        hint,
    };
    let profile_dir = target_profile_dir()
        .ok_or_else(|| missing("cannot tell where this binary was built".into()))?;
    let path = profile_dir.join("ferry-netexec");
    if path.is_file() {
        return Ok(path);
    }
    static BUILD: Mutex<()> = Mutex::new(());
    let _once = BUILD.lock().unwrap_or_else(PoisonError::into_inner);
    if path.is_file() {
        return Ok(path);
    }
    let Some(cargo) = std::env::var_os("CARGO") else {
        return Err(missing(
            "build it with `cargo build -p ferry-testbed --bin ferry-netexec` \
             or point FERRY_NETEXEC at it"
                .into(),
        ));
    };
    let target_dir = profile_dir
        .parent()
        .ok_or_else(|| missing("no target directory".into()))?;
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--quiet",
        "-p",
        "ferry-testbed",
        "--bin",
        "ferry-netexec",
    ])
    .arg("--target-dir")
    .arg(target_dir);
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(other) => {
            cmd.args(["--profile", other]);
        }
    }
    cmd::run(&mut cmd, None, NETEXEC_BUILD_TIMEOUT)?;
    if path.is_file() {
        Ok(path)
    } else {
        Err(missing(format!(
            "`cargo build` did not produce {}",
            path.display()
        )))
    }
}

/// How long building `ferry-netexec` on demand may take.
const NETEXEC_BUILD_TIMEOUT: Duration = Duration::from_secs(600);

/// Starts `ferry-netexec` with `args` inside `netns` and waits (up to 10 s)
/// until it listens. Typical: `start_netexec(&pod.netns, &["--hostname",
/// &pod.name])`.
pub fn start_netexec(netns: &Netns, args: &[&str]) -> Result<Process> {
    let binary = netexec_binary()?;
    let mut argv = vec![binary.into_os_string()];
    argv.extend(args.iter().map(Into::into));
    let mut process = netns.spawn(argv)?;
    process.wait_for_output(NETEXEC_READY, Duration::from_secs(10))?;
    Ok(process)
}
