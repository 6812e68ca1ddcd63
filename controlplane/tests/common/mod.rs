//! Test support: runs the real `ferry-apiserver` binary on loopback with a
//! data dir of its own, and drives it with kubectl and kube-rs.
#![allow(dead_code)]

pub mod etcd;
pub mod kubelet;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct ApiServer {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    extra: Vec<String>,
    /// The etcd behind this apiserver, when it runs on etcd; dropped after
    /// the apiserver (fields drop in order, and Drop kills the server first).
    etcd: Option<etcd::Etcd>,
}

/// The storage a test's apiserver runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Etcd,
}

impl Backend {
    /// etcd, or None (with a skip message) when it is not installed.
    pub fn etcd() -> Option<Self> {
        (!etcd::etcd_missing()).then_some(Self::Etcd)
    }
}

/// Generates `NAME::sqlite` and `NAME::etcd` tests from `async fn NAME(Backend)`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name(super::common::Backend::Sqlite).await
            }
            #[tokio::test]
            async fn etcd() {
                if let Some(b) = super::common::Backend::etcd() {
                    super::$name(b).await
                }
            }
        }
    )*};
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The same for synchronous `fn NAME(Backend)` tests.
#[macro_export]
macro_rules! on_both_backends_sync {
($($name:ident),* $(,)?) => {$(
    mod $name {
        #[test]
        fn sqlite() {
            super::$name(super::common::Backend::Sqlite)
        }
        #[test]
        fn etcd() {
            if let Some(b) = super::common::Backend::etcd() {
                super::$name(b)
            }
        }
    }
)*};
}

impl ApiServer {
    /// Starts the apiserver on SQLite with `extra` flags and waits until it
    /// answers.
    pub fn start(extra: &[&str]) -> Self {
        Self::start_on(Backend::Sqlite, extra)
    }

    /// Starts the apiserver on `backend` (etcd: a fresh one of its own).
    pub fn start_on(backend: Backend, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let etcd = (backend == Backend::Etcd).then(|| etcd::Etcd::start(&[]));
        if let Some(e) = &etcd {
            extra.extend([
                "--storage".into(),
                "etcd".into(),
                "--etcd-endpoints".into(),
                e.endpoint(),
            ]);
        }
        let mut s = Self {
            child: None,
            dir,
            port: free_port(),
            extra,
            etcd,
        };
        s.spawn();
        s
    }

    /// The apiserver's log, appended across restarts.
    fn log_file(&self) -> Stdio {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("apiserver.log"))
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::null())
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn spawn(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_ferry-apiserver"))
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--bind")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--kubeconfig-out")
            .arg(self.kubeconfig())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(self.log_file())
            .spawn()
            .expect("start ferry-apiserver");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && self.kubeconfig().exists()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("ferry-apiserver did not come up on port {}", self.port);
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Kills the etcd behind this apiserver, if it runs on one.
    pub fn kill_etcd(&mut self) {
        if let Some(e) = self.etcd.as_mut() {
            e.kill();
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running")
    }

    /// Runs kubectl against this server; None when kubectl is not installed.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_stdin(args, None)
    }

    pub fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        self.kubectl_as(&self.kubeconfig(), args, stdin)
    }

    /// kubectl as the user of `kubeconfig`, fed `stdin`; killed after
    /// [`KUBECTL_TIMEOUT`].
    pub fn kubectl_as(&self, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
        use std::io::Write;
        let mut child = Command::new(kubectl_path())
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir.path().join("kubectl-cache"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(input.as_bytes())
                .expect("write stdin");
        }
        drop(child.stdin.take());
        // Read both pipes while waiting: a large answer fills them.
        let stdout = read_to_end(child.stdout.take());
        let stderr = read_to_end(child.stderr.take());
        let deadline = Instant::now() + KUBECTL_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for kubectl") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("kubectl {args:?} did not finish within {KUBECTL_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Output {
            status,
            stdout: stdout.join().expect("stdout reader"),
            stderr: stderr.join().expect("stderr reader"),
        }
    }

    /// kubectl that must succeed; returns stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        self.kubectl_apply_stdin(args, None)
    }

    pub fn kubectl_apply_stdin(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl_stdin(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// kubectl that must fail; returns stderr.
    pub fn kubectl_err(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl_stdin(args, stdin);
        assert!(
            !out.status.success(),
            "kubectl {args:?} unexpectedly succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub async fn client(&self) -> kube::Client {
        let kc = kube::config::Kubeconfig::read_from(self.kubeconfig()).expect("read kubeconfig");
        let cfg =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .expect("kube config");
        kube::Client::try_from(cfg).expect("kube client")
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// All of `pipe`, read on a thread of its own.
fn read_to_end<R: std::io::Read + Send + 'static>(
    pipe: Option<R>,
) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut b = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut b);
        }
        b
    })
}

/// How long one kubectl call may take.
pub const KUBECTL_TIMEOUT: Duration = Duration::from_secs(60);

pub fn kubectl_path() -> &'static Path {
    Path::new("/usr/bin/kubectl")
}

/// True when kubectl is present; tests that need it print a skip otherwise.
pub fn have_kubectl() -> bool {
    if kubectl_path().exists() {
        true
    } else {
        eprintln!("SKIP: /usr/bin/kubectl is not installed");
        false
    }
}

/// Polls `f` until it returns Some, for up to `secs` seconds.
pub async fn eventually<T, F, Fut>(secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "condition not met within {secs}s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `f` (blocking) for up to `secs` seconds, every 100 ms.
pub fn wait<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {secs}s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// [`wait`] from async code: `f` blocks (kubectl), the pauses do not.
pub async fn wait_async<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {secs}s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `kubectl ARGS -o json`, which must succeed, parsed.
pub fn json_of(api: &ApiServer, args: &[&str]) -> serde_json::Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&api.kubectl_ok(&a)).expect("kubectl json")
}

/// The `items` of a list.
pub fn items(list: &serde_json::Value) -> Vec<serde_json::Value> {
    list["items"].as_array().cloned().unwrap_or_default()
}

/// Merges `from` into `into`: objects key by key, anything else replaced.
pub fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
    use serde_json::Value;
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}
