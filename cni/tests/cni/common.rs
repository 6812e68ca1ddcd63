//! The test world: a node network namespace and pod namespaces, all named
//! `fcni-<pid>-<n>-…`, with `ferry-cni` run inside the node namespace exactly
//! as a runtime runs it (`nsenter --net=<node> ferry-cni`, env and stdin).
//! Nothing is ever created in the namespace the tests run in: every link,
//! address and route lives in a namespace a [`World`] made, and dropping the
//! world (also while unwinding from a panic) deletes those namespaces and
//! everything in them. Leftovers of killed runs are swept at first use.

use std::io::{Read as _, Write as _};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

pub const BIN: &str = env!("CARGO_BIN_EXE_ferry-cni");
pub const NETNS_DIR: &str = "/var/run/netns";
pub const PREFIX: &str = "fcni-";
pub const SUPPORTED: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Skips the test (with a message) unless running as root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::common::is_root() {
            eprintln!("skipping: this test needs root (network namespaces)");
            return;
        }
    };
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn sh(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("running a command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Deletes `fcni-<pid>-*` namespaces whose test process is gone.
fn sweep() {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        if pid == std::process::id().to_string() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        eprintln!("sweeping leftover netns {name}");
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
    }
}

/// A named network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create(name: &str) -> Netns {
        sh(Command::new("ip").args(["netns", "add", name]));
        Netns {
            name: name.to_string(),
        }
    }

    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    pub fn path_str(&self) -> String {
        self.path().display().to_string()
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        sh(Command::new("ip").args(&full))
    }

    /// `ip -n <ns> -j <args>` as JSON.
    pub fn ip_json(&self, args: &[&str]) -> Value {
        let mut full = vec!["-j"];
        full.extend_from_slice(args);
        let out = self.ip(&full);
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Array(Vec::new()))
    }

    pub fn sysctl(&self, key: &str, value: &str) {
        sh(Command::new("ip").args([
            "netns",
            "exec",
            &self.name,
            "sysctl",
            "-qw",
            &format!("{key}={value}"),
        ]));
    }

    /// Link names in this namespace.
    pub fn links(&self) -> Vec<String> {
        self.ip_json(&["link", "show"])
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|l| l["ifname"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Runs `f` on a thread inside this namespace.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let file = std::fs::File::open(self.path()).expect("open netns");
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .join()
            .expect("netns thread")
        })
    }

    /// Spawns a long-lived thread inside this namespace.
    pub fn spawn<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> std::thread::JoinHandle<R> {
        let file = std::fs::File::open(self.path()).expect("open netns");
        std::thread::spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// What one plugin run produced.
#[derive(Debug)]
pub struct Run {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {:?}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    /// Asserts success and returns the result (or Null for empty stdout).
    pub fn ok(&self) -> Value {
        assert!(
            self.success,
            "plugin failed: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        if self.stdout.trim().is_empty() {
            Value::Null
        } else {
            self.json()
        }
    }

    /// Asserts an error with `code` in the spec's shape; returns it.
    pub fn err(&self, code: u64) -> Value {
        assert!(
            !self.success,
            "expected error {code}, got success: {}",
            self.stdout
        );
        let v = self.json();
        assert_eq!(
            v["code"].as_u64(),
            Some(code),
            "wrong error: {v}\nstderr: {}",
            self.stderr
        );
        assert!(
            v["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "error without msg: {v}"
        );
        assert!(
            v["cniVersion"].as_str().is_some(),
            "error without cniVersion: {v}"
        );
        v
    }
}

static SWEEP: Once = Once::new();
static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// One test's world: a node namespace, pods, and temp dirs for plugin state.
pub struct World {
    pub prefix: String,
    pub dir: tempfile::TempDir,
    pub pods: Vec<Netns>,
    // Declared last: dropped after the pods.
    pub node: Netns,
}

/// A pod attachment made by [`World::add`].
#[derive(Debug, Clone)]
pub struct Attached {
    pub container_id: String,
    pub netns: String,
    pub result: Value,
}

impl Attached {
    /// The pod's addresses from the result.
    pub fn ips(&self) -> Vec<IpAddr> {
        self.result["ips"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn ip(&self, v4: bool) -> IpAddr {
        self.ips()
            .into_iter()
            .find(|ip| ip.is_ipv4() == v4)
            .expect("address of the family")
    }

    pub fn host_veth(&self) -> String {
        self.result["interfaces"][0]["name"]
            .as_str()
            .expect("host veth")
            .to_string()
    }
}

impl World {
    pub fn new() -> World {
        SWEEP.call_once(sweep);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("{PREFIX}{}-{n}", std::process::id());
        let node = Netns::create(&format!("{prefix}-node"));
        World {
            prefix,
            dir: tempfile::tempdir().expect("tempdir"),
            pods: Vec::new(),
            node,
        }
    }

    /// A new pod namespace `<prefix>-<name>`; returns its index.
    pub fn pod(&mut self, name: &str) -> usize {
        self.pods
            .push(Netns::create(&format!("{}-{name}", self.prefix)));
        self.pods.len() - 1
    }

    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// A dual-stack config of `version` with this world's state dirs.
    pub fn conf(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": "fnet",
            "type": "ferry-cni",
            "mtu": 1400,
            "dataDir": self.cache_dir(),
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": "10.77.0.0/24"}], [{"subnet": "fd77::/120"}]],
                "dataDir": self.ipam_dir(),
            },
            "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]},
        })
    }

    /// Runs the plugin in the node namespace with exactly `env` and `stdin`.
    pub fn run_raw(&self, env: &[(&str, &str)], stdin: &[u8]) -> Run {
        run_in(&self.node, env, stdin)
    }

    /// Runs `command` for one attachment like a runtime does.
    pub fn run(
        &self,
        command: &str,
        conf: &Value,
        container_id: &str,
        netns: Option<&str>,
        ifname: &str,
    ) -> Run {
        self.run_with(command, conf, container_id, netns, ifname, &[])
    }

    /// [`World::run`] with extra environment variables.
    pub fn run_with(
        &self,
        command: &str,
        conf: &Value,
        container_id: &str,
        netns: Option<&str>,
        ifname: &str,
        extra: &[(&str, &str)],
    ) -> Run {
        let mut env = vec![
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", container_id),
            ("CNI_IFNAME", ifname),
            ("CNI_PATH", "/usr/lib/cni"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod",
            ),
        ];
        if let Some(ns) = netns {
            env.push(("CNI_NETNS", ns));
        }
        env.extend_from_slice(extra);
        self.run_raw(&env, conf.to_string().as_bytes())
    }

    /// ADD of pod `pod` as `container_id`/eth0; asserts success.
    pub fn add(&self, conf: &Value, pod: usize, container_id: &str) -> Attached {
        let netns = self.pods[pod].path_str();
        let result = self
            .run("ADD", conf, container_id, Some(&netns), "eth0")
            .ok();
        Attached {
            container_id: container_id.to_string(),
            netns,
            result,
        }
    }

    /// `conf` with `prevResult` set.
    pub fn with_prev(conf: &Value, prev: &Value) -> Value {
        let mut c = conf.clone();
        c["prevResult"] = prev.clone();
        c
    }

    /// Names of Ferry host veths in the node.
    pub fn host_veths(&self) -> Vec<String> {
        self.node
            .links()
            .into_iter()
            .filter(|l| l.starts_with("fer"))
            .collect()
    }

    /// Reserved addresses (host-local files) of network `fnet`.
    pub fn reservations(&self) -> Vec<String> {
        let dir = self.ipam_dir().join("fnet");
        let mut out: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .filter(|n| n.parse::<IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    pub fn cached_results(&self) -> usize {
        std::fs::read_dir(self.cache_dir().join("results/fnet"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                    .count()
            })
            .unwrap_or(0)
    }

    /// Asserts that nothing of any attachment is left in the node or on disk.
    pub fn assert_clean(&self) {
        assert_eq!(self.host_veths(), Vec::<String>::new(), "host veths left");
        assert_eq!(
            self.reservations(),
            Vec::<String>::new(),
            "reservations left"
        );
        assert_eq!(self.cached_results(), 0, "cached results left");
    }

    /// GC with these valid attachments (container ID, eth0).
    pub fn gc(&self, conf: &Value, valid: &[&str]) -> Run {
        let mut c = conf.clone();
        c["cni.dev/valid-attachments"] = Value::Array(
            valid
                .iter()
                .map(|id| json!({"containerID": id, "ifname": "eth0"}))
                .collect(),
        );
        self.run_raw(
            &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/usr/lib/cni")],
            c.to_string().as_bytes(),
        )
    }

    pub fn status(&self, conf: &Value) -> Run {
        self.run_raw(
            &[("CNI_COMMAND", "STATUS"), ("CNI_PATH", "/usr/lib/cni")],
            conf.to_string().as_bytes(),
        )
    }

    /// Lets the node forward between pods.
    pub fn enable_forwarding(&self) {
        self.node.sysctl("net.ipv4.ip_forward", "1");
        self.node.sysctl("net.ipv6.conf.all.forwarding", "1");
    }
}

/// Runs the plugin inside `node` via nsenter.
pub fn run_in(node: &Netns, env: &[(&str, &str)], stdin: &[u8]) -> Run {
    run_bin_in(node, BIN, env, stdin)
}

/// How long one plugin run may take before the test kills it and fails.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs any CNI plugin binary inside `node` via nsenter; fails the test if
/// it does not finish within [`RUN_TIMEOUT`].
pub fn run_bin_in(node: &Netns, bin: &str, env: &[(&str, &str)], stdin: &[u8]) -> Run {
    let stdin = stdin.to_vec();
    run_bounded(
        node,
        bin,
        env,
        move |pipe| {
            let _ = pipe.write_all(&stdin);
        },
        RUN_TIMEOUT,
    )
    .unwrap_or_else(|| panic!("{bin} did not finish within {RUN_TIMEOUT:?}"))
}

/// Runs `bin` inside `node` with `feed` writing its stdin on a thread of
/// its own (write errors are the feeder's business: a plugin may exit
/// without reading everything). Returns `None`, after killing the plugin,
/// if it has not exited within `timeout`.
pub fn run_bounded(
    node: &Netns,
    bin: &str,
    env: &[(&str, &str)],
    feed: impl FnOnce(&mut std::process::ChildStdin) + Send + 'static,
    timeout: Duration,
) -> Option<Run> {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", node.path_str()))
        .arg(bin)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn nsenter");
    let mut stdin_pipe = child.stdin.take().expect("stdin pipe");
    let feeder = std::thread::spawn(move || feed(&mut stdin_pipe));
    let mut stdout_pipe = child.stdout.take().expect("stdout pipe");
    let mut stderr_pipe = child.stderr.take().expect("stderr pipe");
    let stdout = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stdout_pipe.read_to_end(&mut b);
        b
    });
    let stderr = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stderr_pipe.read_to_end(&mut b);
        b
    });
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = feeder.join();
    let stdout = stdout.join().expect("stdout reader");
    let stderr = stderr.join().expect("stderr reader");
    status.map(|status| Run {
        success: status.success(),
        stdout: String::from_utf8_lossy(&stdout).to_string(),
        stderr: String::from_utf8_lossy(&stderr).to_string(),
    })
}

/// Serves one line over TCP from `server` (a pod namespace) to a client in
/// `client`, returning what the client read and the peer address the server
/// saw.
pub fn tcp_exchange(server: &Netns, client: &Netns, ip: IpAddr, port: u16) -> (String, String) {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = server.spawn(move || {
        let listener = std::net::TcpListener::bind((ip, port)).expect("bind in pod");
        listener.set_nonblocking(true).expect("nonblocking");
        tx.send(()).expect("ready");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match listener.accept() {
                Ok((mut conn, peer)) => {
                    conn.set_nonblocking(false).expect("blocking");
                    conn.write_all(b"hello from the pod\n").expect("write");
                    return Some(peer.ip().to_string());
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(_) => return None,
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("listener ready");
    let got = client.run(move || {
        let mut s =
            std::net::TcpStream::connect_timeout(&(ip, port).into(), Duration::from_secs(5))
                .expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = String::new();
        s.read_to_string(&mut buf).expect("read");
        buf
    });
    let peer = handle
        .join()
        .expect("server thread")
        .expect("no connection reached the server");
    (got, peer)
}
