//! `ferry-netexec`: a tiny test server for pods, like Kubernetes' agnhost
//! `netexec`.
//!
//! - HTTP on `--http-port` (default 8080): `GET /hostname` answers the
//!   hostname, `GET /clientip` the peer's `ip:port` as the server sees it
//!   (v4-mapped addresses shown as IPv4), `GET /echo?msg=...` the decoded
//!   `msg`, `GET /healthz` `ok`, `GET /` a line naming the host (a web
//!   server's front page, for walkthroughs that `curl` it).
//! - UDP echo on `--udp-port` (default 8081): any datagram is answered with
//!   the hostname, except, as agnhost does, `clientip` (answered with the
//!   peer's `ip:port`) and `echo <text>` (answered with `<text>`).
//!
//! The hostname is `--hostname` if given (the testbed passes the pod name),
//! else the system's. Both listeners are dual-stack when the namespace has
//! IPv6. Once listening it prints `ferry-netexec: listening ...` on stdout.
//! Plain std threads, one per connection: it serves tests, not traffic.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "ferry-netexec", about = "HTTP and UDP test server for pods")]
struct Args {
    /// HTTP port; 0 disables HTTP.
    #[arg(long, default_value_t = 8080)]
    http_port: u16,
    /// UDP echo port; 0 disables UDP.
    #[arg(long, default_value_t = 8081)]
    udp_port: u16,
    /// Name to answer with (default: the system hostname).
    #[arg(long)]
    hostname: Option<String>,
}

/// Longest request head read from a client.
const MAX_HEAD: usize = 16 * 1024;
/// How long a client may take to send its request.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let args = Args::parse();
    let hostname: Arc<str> = args
        .hostname
        .unwrap_or_else(system_hostname)
        .trim()
        .to_owned()
        .into();
    let mut bound = Vec::new();
    let mut threads = Vec::new();
    if args.http_port != 0 {
        let listener = match bind_dual(args.http_port, TcpListener::bind) {
            Ok(l) => l,
            Err(e) => return fail(&format!("binding HTTP port {}: {e}", args.http_port)),
        };
        bound.push(format!(
            "http={}",
            listener
                .local_addr()
                .map_or_else(|e| e.to_string(), |a| a.to_string())
        ));
        let hostname = Arc::clone(&hostname);
        threads.push(thread::spawn(move || serve_http(&listener, &hostname)));
    }
    if args.udp_port != 0 {
        let socket = match bind_dual(args.udp_port, UdpSocket::bind) {
            Ok(s) => s,
            Err(e) => return fail(&format!("binding UDP port {}: {e}", args.udp_port)),
        };
        bound.push(format!(
            "udp={}",
            socket
                .local_addr()
                .map_or_else(|e| e.to_string(), |a| a.to_string())
        ));
        let hostname = Arc::clone(&hostname);
        threads.push(thread::spawn(move || serve_udp(&socket, &hostname)));
    }
    if threads.is_empty() {
        return fail("both --http-port and --udp-port are 0: nothing to serve");
    }
    println!(
        "ferry-netexec: listening {} hostname={hostname}",
        bound.join(" ")
    );
    let _ = std::io::stdout().flush();
    for t in threads {
        let _ = t.join();
    }
    ExitCode::SUCCESS
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("ferry-netexec: {msg}");
    ExitCode::FAILURE
}

fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "localhost".into())
}

/// Binds `[::]:port` (dual-stack on Linux by default), falling back to
/// `0.0.0.0:port` where the namespace has no IPv6.
fn bind_dual<T>(port: u16, bind: impl Fn(SocketAddr) -> std::io::Result<T>) -> std::io::Result<T> {
    bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))
        .or_else(|_| bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))))
}

/// The peer as a client would name it: v4-mapped IPv6 shown as IPv4.
fn peer(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, addr.port())),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

fn serve_http(listener: &TcpListener, hostname: &Arc<str>) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let hostname = Arc::clone(hostname);
        thread::spawn(move || {
            let _ = handle_http(stream, &hostname);
        });
    }
}

fn handle_http(stream: TcpStream, hostname: &str) -> std::io::Result<()> {
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let client = peer(stream.peer_addr()?);
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Skip the headers: nothing here needs them.
    let mut total = request_line.len();
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line)?;
        total += n;
        if n == 0 || line == "\r\n" || line == "\n" || total > MAX_HEAD {
            break;
        }
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (status, body) = match (method, path) {
        // A web server's front page, for walkthroughs that curl `/`.
        ("GET", "/") => ("200 OK", format!("ferry-netexec on {hostname}\n")),
        ("GET", "/hostname") => ("200 OK", hostname.to_owned()),
        ("GET", "/clientip") => ("200 OK", client.to_string()),
        ("GET", "/echo") => ("200 OK", query_param(query, "msg").unwrap_or_default()),
        ("GET", "/healthz") => ("200 OK", "ok".to_owned()),
        ("GET", _) => ("404 Not Found", format!("no such path {path}\n")),
        _ => ("405 Method Not Allowed", "only GET\n".to_owned()),
    };
    let mut stream = reader.into_inner();
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

/// The percent-decoded value of `key` in a query string.
fn query_param(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| percent_decode(v))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(v) = hex {
                    out.push(v);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            _ => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn serve_udp(socket: &UdpSocket, hostname: &str) {
    let mut buf = [0u8; 65536];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let text = String::from_utf8_lossy(buf.get(..n).unwrap_or_default());
        let text = text.trim();
        let reply = if text == "clientip" {
            peer(from).to_string()
        } else if let Some(rest) = text.strip_prefix("echo ") {
            rest.to_owned()
        } else {
            hostname.to_owned()
        };
        let _ = socket.send_to(reply.as_bytes(), from);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_queries() {
        assert_eq!(query_param("msg=a%20b+c", "msg").as_deref(), Some("a b c"));
        assert_eq!(query_param("x=1&msg=hi", "msg").as_deref(), Some("hi"));
        assert_eq!(query_param("x=1", "msg"), None);
        assert_eq!(percent_decode("100%"), "100%");
    }

    #[test]
    fn unmaps_v4() {
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:5".parse().expect("addr");
        assert_eq!(peer(mapped).to_string(), "10.0.0.1:5");
    }
}
