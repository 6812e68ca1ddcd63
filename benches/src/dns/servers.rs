//! The processes of a run, all inside the bench's namespace: the
//! apiserver, `ferry-dns` and the two static-zone servers (each pinned to
//! one CPU with `taskset`), and `dig` to ask any of them one question.

use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use ferry_testbed::{Netns, Process};

use super::model::{self, Query};
use crate::cni::exec::run_timed;

/// The CPU the DNS servers are pinned to (dnsperf gets CPU 0).
pub const SERVER_CPU: &str = "1";
pub const LOAD_CPU: &str = "0";

/// Fixed ports: the namespace is the bench's own, nothing else binds there.
pub const APISERVER_PORT: u16 = 6443;
pub const METRICS_PORT: u16 = 9153;

/// The binaries a run uses.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub apiserver: PathBuf,
    /// None when ferry-dns is not measured.
    pub ferry_dns: Option<PathBuf>,
    pub unbound: PathBuf,
    pub knotd: PathBuf,
    pub dnsperf: PathBuf,
    pub dig: PathBuf,
}

/// The DNS servers compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Which {
    FerryDns,
    Unbound,
    Knot,
}

impl Which {
    pub const ALL: [Which; 3] = [Which::FerryDns, Which::Unbound, Which::Knot];

    pub fn name(self) -> &'static str {
        match self {
            Which::FerryDns => "ferry-dns",
            Which::Unbound => "unbound",
            Which::Knot => "knot",
        }
    }

    /// The UDP/TCP port it serves DNS on.
    pub fn port(self) -> u16 {
        match self {
            Which::FerryDns => 5301,
            Which::Unbound => 5302,
            Which::Knot => 5303,
        }
    }
}

/// First line of `binary args` (stdout, else stderr) holding `needle`, or the
/// first line.
pub fn version(binary: &Path, args: &[&str], needle: &str) -> String {
    let Ok(out) = Command::new(binary).args(args).output() else {
        return "?".into();
    };
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines
        .iter()
        .find(|l| l.contains(needle))
        .or(lines.first())
        .map_or_else(|| "?".into(), |l| (*l).to_string())
}

/// Starts `ferry-apiserver` on 127.0.0.1 in `netns` with a dual-stack
/// Service range; returns it once its kubeconfig is written.
pub fn start_apiserver(
    netns: &Netns,
    binary: &Path,
    dir: &Path,
    controllers: &str,
) -> Result<(Process, PathBuf)> {
    let kubeconfig = dir.join("admin.kubeconfig");
    let argv: Vec<std::ffi::OsString> = vec![
        "env".into(),
        "RUST_LOG=info".into(),
        binary.into(),
        "--data-dir".into(),
        dir.join("apiserver").into(),
        "--bind".into(),
        format!("127.0.0.1:{APISERVER_PORT}").into(),
        "--kubeconfig-out".into(),
        kubeconfig.clone().into(),
        "--service-cluster-ip-range".into(),
        model::SERVICE_CIDRS.into(),
        "--cluster-cidr".into(),
        model::CLUSTER_CIDR.into(),
        "--controllers".into(),
        controllers.into(),
    ];
    let mut server = netns.spawn(argv).context("starting ferry-apiserver")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while kube::config::Kubeconfig::read_from(&kubeconfig).is_err() {
        if let Some(status) = server.try_wait()? {
            bail!("ferry-apiserver exited ({status}):\n{}", tail(&server));
        }
        if Instant::now() > deadline {
            bail!(
                "ferry-apiserver wrote no kubeconfig within 30 s:\n{}",
                tail(&server)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((server, kubeconfig))
}

/// The last lines of a process's output.
pub fn tail(p: &Process) -> String {
    let out = p.output();
    let lines: Vec<&str> = out.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// `taskset -c <SERVER_CPU> argv...` inside `netns` (taskset execs the
/// server, so the process's pid is the server's).
fn spawn_pinned(netns: &Netns, argv: Vec<std::ffi::OsString>) -> Result<Process> {
    let mut full: Vec<std::ffi::OsString> = vec!["taskset".into(), "-c".into(), SERVER_CPU.into()];
    full.extend(argv);
    netns.spawn(full).context("spawning a server")
}

pub fn start_ferry_dns(netns: &Netns, binary: &Path, kubeconfig: &Path) -> Result<Process> {
    let argv: Vec<std::ffi::OsString> = vec![
        "env".into(),
        "RUST_LOG=info".into(),
        "taskset".into(),
        "-c".into(),
        SERVER_CPU.into(),
        binary.into(),
        "--kubeconfig".into(),
        kubeconfig.into(),
        "--listen".into(),
        format!("127.0.0.1:{}", Which::FerryDns.port()).into(),
        "--zone".into(),
        model::ZONE.into(),
        "--ttl".into(),
        model::TTL.to_string().into(),
        "--pods".into(),
        "verified".into(),
        // Nothing in the mix leaves the zone; unbound would take the rest.
        "--upstream".into(),
        format!("127.0.0.1:{}", Which::Unbound.port()).into(),
        "--metrics-listen".into(),
        format!("127.0.0.1:{METRICS_PORT}").into(),
        "--workers".into(),
        "1".into(),
    ];
    netns.spawn(argv).context("starting ferry-dns")
}

/// unbound serving the zone file as an auth-zone for downstream clients,
/// one thread, in the foreground, no chroot, no privilege drop, no remote
/// control, only the iterator module (nothing it answers needs more).
pub fn start_unbound(netns: &Netns, binary: &Path, dir: &Path, zone: &Path) -> Result<Process> {
    let port = Which::Unbound.port();
    let conf = dir.join("unbound.conf");
    let text = format!(
        r#"server:
  interface: 127.0.0.1@{port}
  port: {port}
  do-ip4: yes
  do-ip6: no
  do-udp: yes
  do-tcp: yes
  num-threads: 1
  so-reuseport: no
  chroot: ""
  username: ""
  directory: "{dir}"
  pidfile: ""
  use-syslog: no
  logfile: ""
  verbosity: 1
  do-daemonize: no
  access-control: 127.0.0.0/8 allow
  module-config: "iterator"
auth-zone:
  name: "{zone_name}."
  zonefile: "{zone}"
  for-downstream: yes
  for-upstream: no
  fallback-enabled: no
remote-control:
  control-enable: no
"#,
        dir = dir.display(),
        zone_name = model::ZONE,
        zone = zone.display(),
    );
    std::fs::write(&conf, text).with_context(|| format!("writing {}", conf.display()))?;
    spawn_pinned(
        netns,
        vec![binary.into(), "-d".into(), "-c".into(), conf.into()],
    )
    .context("starting unbound")
}

/// knotd with one UDP and one TCP worker, its run and database dirs in
/// `dir`, the zone loaded whole and never written back.
pub fn start_knot(netns: &Netns, binary: &Path, dir: &Path, zone: &Path) -> Result<Process> {
    let port = Which::Knot.port();
    let run = dir.join("knot-run");
    let db = dir.join("knot-db");
    for d in [&run, &db] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let conf = dir.join("knot.conf");
    let text = format!(
        r#"server:
    rundir: "{run}"
    listen: 127.0.0.1@{port}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1

database:
    storage: "{db}"

log:
  - target: stderr
    any: info

zone:
  - domain: {zone_name}.
    file: "{zone}"
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
"#,
        run = run.display(),
        db = db.display(),
        zone_name = model::ZONE,
        zone = zone.display(),
    );
    std::fs::write(&conf, text).with_context(|| format!("writing {}", conf.display()))?;
    spawn_pinned(netns, vec![binary.into(), "-c".into(), conf.into()]).context("starting knotd")
}

/// `GET /ready` on ferry-dns's metrics port: the HTTP status, from a socket
/// made on this thread (inside the namespace).
pub fn ready_status() -> Result<u16> {
    use std::io::{Read as _, Write as _};
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, METRICS_PORT))
        .context("connecting to the metrics port")?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET /ready HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    // The status line is all that is needed.
    while !buf.contains(&b'\n') {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
    let line = String::from_utf8_lossy(&buf);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no HTTP status in {line:?}"))
}

/// What a server answered to one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub rcode: String,
    /// rdata of the answer records of the asked type, sorted.
    pub rdata: Vec<String>,
    /// TTLs seen on those records.
    pub ttls: Vec<u32>,
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} [{}]", self.rcode, self.rdata.join(", "))
    }
}

/// Asks the server on `port` `q` over UDP with `dig`, run in `netns`.
pub fn ask(netns: &Netns, dig: &Path, port: u16, q: &Query, stop: &AtomicBool) -> Result<Answer> {
    let mut cmd = netns.command(dig);
    cmd.args([
        "@127.0.0.1",
        "-p",
        &port.to_string(),
        "+tries=1",
        "+time=2",
        "+noall",
        "+comments",
        "+answer",
        &q.name,
        q.rtype,
    ]);
    let t = run_timed(&mut cmd, b"", Duration::from_secs(10), stop)?;
    let out = t.stdout_text();
    let rcode = out
        .split("status: ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .map(str::to_string)
        .with_context(|| format!("no status in dig's answer: {out}"))?;
    let mut rdata = Vec::new();
    let mut ttls = Vec::new();
    for line in out.lines().map(str::trim) {
        if line.is_empty() || line.starts_with(';') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let [_, ttl, _class, rtype, rest @ ..] = fields.as_slice()
            && rtype.eq_ignore_ascii_case(q.rtype)
        {
            rdata.push(rest.join(" ").to_ascii_lowercase());
            ttls.extend(ttl.parse::<u32>().ok());
        }
    }
    rdata.sort();
    Ok(Answer { rcode, rdata, ttls })
}

/// Whether `a` is what the model says `q` should get.
pub fn matches(q: &Query, a: &Answer) -> bool {
    a.rcode == q.rcode && a.rdata == q.answers && a.ttls.iter().all(|&t| t == model::TTL)
}
