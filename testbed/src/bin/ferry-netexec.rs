//! `ferry-netexec`: a tiny test server for pods, like Kubernetes' agnhost,
//! and the built-in behaviour of the images `ferry-node` runs without
//! pulling them.
//!
//! Without a subcommand (or with `netexec`, as agnhost's):
//! - HTTP on `--http-port` (default 8080): `GET /hostname` answers the
//!   hostname, `GET /clientip` the peer's `ip:port` as the server sees it
//!   (v4-mapped addresses shown as IPv4), `GET /echo?msg=...` the decoded
//!   `msg`, `GET /healthz` `ok`, `GET /` a line naming the host (a web
//!   server's front page, for walkthroughs that `curl` it).
//! - UDP echo on `--udp-port` (default 8081): any datagram is answered with
//!   the hostname, except, as agnhost does, `clientip` (answered with the
//!   peer's `ip:port`) and `echo <text>` (answered with `<text>`).
//!
//! Subcommands, each a behaviour of agnhost or of a catalogued image:
//! - `serve-hostname [--http] [--udp] [--tcp] [--port 9376]`: the hostname
//!   over HTTP (every path), UDP (every datagram) or TCP (on connect), as
//!   agnhost's `serve-hostname`.
//! - `pause`: sleeps until killed (agnhost's and the pause image's).
//! - `web --port 80 [--port ...] [--server nginx|httpd]`: a web server's
//!   welcome page on `GET /` (and `/index.html`), 404 elsewhere: what the
//!   `nginx` and `httpd` images serve out of the box.
//!
//! The hostname is `--hostname` if given (the testbed passes the pod name),
//! else the system's. Listeners are dual-stack when the namespace has
//! IPv6. Once listening it prints `ferry-netexec: listening ...` on stdout.
//! Plain std threads, one per connection: it serves tests, not traffic.
//!
//! SIGTERM, SIGINT or SIGQUIT end it gracefully, as nginx's image does
//! (its stop signal is SIGQUIT): requests already read are answered (for
//! at most [`DRAIN`]) before it exits, so a pod being replaced never cuts
//! a reply in half.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};

use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "ferry-netexec",
    about = "HTTP and UDP test server for pods",
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(flatten)]
    netexec: NetexecArgs,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Debug, ClapArgs)]
struct NetexecArgs {
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

#[derive(Debug, Subcommand)]
enum Cmd {
    /// agnhost's `netexec`: the default server.
    Netexec(NetexecArgs),
    /// agnhost's `serve-hostname`: answers the hostname.
    ServeHostname {
        /// Serve HTTP (`--http=false` turns it off).
        #[arg(long, default_value_t = true, num_args = 0..=1, require_equals = true,
              default_missing_value = "true", action = clap::ArgAction::Set)]
        http: bool,
        /// Serve UDP.
        #[arg(long, default_value_t = false, num_args = 0..=1, require_equals = true,
              default_missing_value = "true", action = clap::ArgAction::Set)]
        udp: bool,
        /// Serve plain TCP (the hostname on connect).
        #[arg(long, default_value_t = false, num_args = 0..=1, require_equals = true,
              default_missing_value = "true", action = clap::ArgAction::Set)]
        tcp: bool,
        /// The port of every protocol served.
        #[arg(long, default_value_t = 9376)]
        port: u16,
        /// Name to answer with (default: the system hostname).
        #[arg(long)]
        hostname: Option<String>,
    },
    /// Sleeps until killed.
    Pause,
    /// A web server's welcome page.
    Web {
        /// Ports to serve (repeat or comma-separate).
        #[arg(long = "port", value_delimiter = ',', default_value = "80")]
        ports: Vec<u16>,
        /// Whose welcome page.
        #[arg(long, value_enum, default_value = "nginx")]
        server: WebServer,
    },
}

/// Whose welcome page `web` serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum WebServer {
    Nginx,
    Httpd,
}

/// What an HTTP listener answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HttpMode {
    /// The netexec paths.
    Netexec,
    /// The hostname on every path (serve-hostname).
    Hostname,
    /// A welcome page.
    Web(WebServer),
}

/// Longest request head read from a client.
const MAX_HEAD: usize = 16 * 1024;
/// How long a client may take to send its request.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long requests in flight at a stop signal are given to finish.
const DRAIN: Duration = Duration::from_secs(10);

/// HTTP requests being handled now.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Counts one request in [`IN_FLIGHT`] while it lives.
struct InFlight;

impl InFlight {
    fn start() -> Self {
        IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The signals that stop the server.
fn stop_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGQUIT] {
        set.add(s);
    }
    set
}

/// Waits for a stop signal (blocked in every thread, see `main`), then for
/// the requests in flight, at most [`DRAIN`].
fn wait_for_stop() -> ExitCode {
    match stop_signals().wait() {
        Ok(signal) => eprintln!("ferry-netexec: {signal}, finishing requests in flight"),
        Err(e) => return fail(&format!("waiting for a stop signal: {e}")),
    }
    let deadline = Instant::now() + DRAIN;
    while IN_FLIGHT.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Blocked before any thread starts, so every thread inherits the mask
    // and the signals wait for `wait_for_stop` instead of killing us.
    if let Err(e) = stop_signals().thread_block() {
        return fail(&format!("blocking the stop signals: {e}"));
    }
    match args.command {
        None => netexec(args.netexec),
        Some(Cmd::Netexec(a)) => netexec(a),
        Some(Cmd::ServeHostname {
            http,
            udp,
            tcp,
            port,
            hostname,
        }) => serve_hostname(http, udp, tcp, port, hostname),
        Some(Cmd::Pause) => wait_for_stop(),
        Some(Cmd::Web { ports, server }) => web(&ports, server),
    }
}

fn hostname_or_system(hostname: Option<String>) -> Arc<str> {
    hostname
        .unwrap_or_else(system_hostname)
        .trim()
        .to_owned()
        .into()
}

/// What the servers started: their bound addresses and threads.
#[derive(Default)]
struct Servers {
    bound: Vec<String>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Servers {
    fn http(&mut self, port: u16, mode: HttpMode, hostname: &Arc<str>) -> Result<(), String> {
        let listener = bind_dual(port, TcpListener::bind)
            .map_err(|e| format!("binding HTTP port {port}: {e}"))?;
        self.bound
            .push(format!("http={}", local(listener.local_addr())));
        let hostname = Arc::clone(hostname);
        self.threads.push(thread::spawn(move || {
            serve_http(&listener, mode, &hostname)
        }));
        Ok(())
    }

    fn udp(&mut self, port: u16, echo: bool, hostname: &Arc<str>) -> Result<(), String> {
        let socket = bind_dual(port, UdpSocket::bind)
            .map_err(|e| format!("binding UDP port {port}: {e}"))?;
        self.bound
            .push(format!("udp={}", local(socket.local_addr())));
        let hostname = Arc::clone(hostname);
        self.threads
            .push(thread::spawn(move || serve_udp(&socket, echo, &hostname)));
        Ok(())
    }

    fn tcp_hostname(&mut self, port: u16, hostname: &Arc<str>) -> Result<(), String> {
        let listener = bind_dual(port, TcpListener::bind)
            .map_err(|e| format!("binding TCP port {port}: {e}"))?;
        self.bound
            .push(format!("tcp={}", local(listener.local_addr())));
        let hostname = Arc::clone(hostname);
        self.threads.push(thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_write_timeout(Some(CLIENT_TIMEOUT));
                let _ = stream.write_all(hostname.as_bytes());
            }
        }));
        Ok(())
    }

    /// Announces what listens, then serves until a stop signal.
    fn run(self, hostname: &str) -> ExitCode {
        if self.threads.is_empty() {
            return fail("nothing to serve: every port is 0 or every protocol off");
        }
        println!(
            "ferry-netexec: listening {} hostname={hostname}",
            self.bound.join(" ")
        );
        let _ = std::io::stdout().flush();
        // The listeners' threads never end by themselves; a stop signal
        // ends the process.
        wait_for_stop()
    }
}

fn local(addr: std::io::Result<SocketAddr>) -> String {
    addr.map_or_else(|e| e.to_string(), |a| a.to_string())
}

fn netexec(args: NetexecArgs) -> ExitCode {
    let hostname = hostname_or_system(args.hostname);
    let mut servers = Servers::default();
    let started = (|| {
        if args.http_port != 0 {
            servers.http(args.http_port, HttpMode::Netexec, &hostname)?;
        }
        if args.udp_port != 0 {
            servers.udp(args.udp_port, true, &hostname)?;
        }
        Ok::<(), String>(())
    })();
    match started {
        Ok(()) => servers.run(&hostname),
        Err(e) => fail(&e),
    }
}

fn serve_hostname(http: bool, udp: bool, tcp: bool, port: u16, name: Option<String>) -> ExitCode {
    let hostname = hostname_or_system(name);
    let mut servers = Servers::default();
    let started = (|| {
        if http {
            servers.http(port, HttpMode::Hostname, &hostname)?;
        }
        if udp {
            servers.udp(port, false, &hostname)?;
        }
        if tcp {
            servers.tcp_hostname(port, &hostname)?;
        }
        Ok::<(), String>(())
    })();
    match started {
        Ok(()) => servers.run(&hostname),
        Err(e) => fail(&e),
    }
}

fn web(ports: &[u16], server: WebServer) -> ExitCode {
    let hostname = hostname_or_system(None);
    let mut servers = Servers::default();
    for &port in ports {
        if let Err(e) = servers.http(port, HttpMode::Web(server), &hostname) {
            return fail(&e);
        }
    }
    servers.run(&hostname)
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

fn serve_http(listener: &TcpListener, mode: HttpMode, hostname: &Arc<str>) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else {
            // EMFILE and the like: do not spin.
            thread::sleep(Duration::from_millis(5));
            continue;
        };
        let hostname = Arc::clone(hostname);
        let in_flight = InFlight::start();
        thread::spawn(move || {
            let _ = handle_http(stream, mode, &hostname);
            drop(in_flight);
        });
    }
}

fn handle_http(stream: TcpStream, mode: HttpMode, hostname: &str) -> std::io::Result<()> {
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
    let mut content_type = "text/plain; charset=utf-8";
    let (status, body) = match (mode, method, path) {
        // A web server's front page, for walkthroughs that curl `/`.
        (HttpMode::Netexec, "GET", "/") => ("200 OK", format!("ferry-netexec on {hostname}\n")),
        (HttpMode::Netexec, "GET", "/hostname") => ("200 OK", hostname.to_owned()),
        (HttpMode::Netexec, "GET", "/clientip") => ("200 OK", client.to_string()),
        (HttpMode::Netexec, "GET", "/echo") => {
            ("200 OK", query_param(query, "msg").unwrap_or_default())
        }
        (HttpMode::Netexec, "GET", "/healthz") => ("200 OK", "ok".to_owned()),
        (HttpMode::Hostname, "GET", _) => ("200 OK", hostname.to_owned()),
        (HttpMode::Web(server), "GET" | "HEAD", "/" | "/index.html") => {
            content_type = "text/html";
            ("200 OK", welcome_page(server).to_owned())
        }
        (HttpMode::Web(_), "GET" | "HEAD", _) => {
            content_type = "text/html";
            ("404 Not Found", NOT_FOUND_PAGE.to_owned())
        }
        (_, "GET", _) => ("404 Not Found", format!("no such path {path}\n")),
        _ => ("405 Method Not Allowed", "only GET\n".to_owned()),
    };
    let mut stream = reader.into_inner();
    write!(
        stream,
        "HTTP/1.1 {status}\r\nServer: ferry-netexec\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    if method != "HEAD" {
        stream.write_all(body.as_bytes())?;
    }
    stream.flush()
}

/// The welcome page a freshly installed web server shows.
fn welcome_page(server: WebServer) -> &'static str {
    match server {
        WebServer::Nginx => NGINX_PAGE,
        WebServer::Httpd => HTTPD_PAGE,
    }
}

const NGINX_PAGE: &str = "<!DOCTYPE html>
<html>
<head>
<title>Welcome to nginx!</title>
</head>
<body>
<h1>Welcome to nginx!</h1>
<p>If you see this page, the nginx web server is successfully installed and
working. (Served by Ferry's built-in nginx image: ferry-netexec web.)</p>
</body>
</html>
";

const HTTPD_PAGE: &str = "<html><body><h1>It works!</h1></body></html>\n";

const NOT_FOUND_PAGE: &str = "<html>
<head><title>404 Not Found</title></head>
<body>
<center><h1>404 Not Found</h1></center>
</body>
</html>
";

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

fn serve_udp(socket: &UdpSocket, echo: bool, hostname: &str) {
    let mut buf = [0u8; 65536];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let text = String::from_utf8_lossy(buf.get(..n).unwrap_or_default());
        let text = text.trim();
        let reply = if !echo {
            hostname.to_owned()
        } else if text == "clientip" {
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
    fn agnhost_command_lines_parse() {
        let a = Args::try_parse_from(["x", "netexec", "--http-port=8080", "--udp-port=8081"])
            .expect("netexec");
        assert!(matches!(
            a.command,
            Some(Cmd::Netexec(NetexecArgs {
                http_port: 8080,
                ..
            }))
        ));
        let a = Args::try_parse_from(["x", "serve-hostname", "--udp", "--http=false"])
            .expect("serve-hostname");
        assert!(matches!(
            a.command,
            Some(Cmd::ServeHostname {
                http: false,
                udp: true,
                tcp: false,
                port: 9376,
                ..
            })
        ));
        let a = Args::try_parse_from(["x", "web", "--port", "80,8080", "--server", "httpd"])
            .expect("web");
        match a.command {
            Some(Cmd::Web { ports, server }) => {
                assert_eq!(ports, [80, 8080]);
                assert_eq!(server, WebServer::Httpd);
            }
            other => panic!("not web: {other:?}"),
        }
        let a = Args::try_parse_from(["x", "--http-port", "9000"]).expect("bare flags");
        assert!(a.command.is_none());
        assert_eq!(a.netexec.http_port, 9000);
    }

    #[test]
    fn unmaps_v4() {
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:5".parse().expect("addr");
        assert_eq!(peer(mapped).to_string(), "10.0.0.1:5");
    }
}
