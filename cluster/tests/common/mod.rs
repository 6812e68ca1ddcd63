//! What the cluster tests share: clusters with unique names and private
//! data, kubectl and curl on the host, bounded waits.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ferry_cluster::components::Binaries;
use ferry_cluster::{Cluster, IpFamily, Settings};

/// Every binary a cluster runs, built on demand when a narrower `cargo test`
/// did not build them; their directory.
pub fn bin_dir() -> PathBuf {
    let mut dir = PathBuf::new();
    for (package, name) in [
        ("ferry-controlplane", "ferry-apiserver"),
        ("ferry-dataplane", "ferry-agent"),
        ("ferry-node", "ferry-node"),
        ("ferry-cni", "ferry-cni"),
        ("ferry-dns", "ferry-dns"),
        ("ferry-testbed", "ferry-netexec"),
        ("ferry-cluster", "ferry"),
    ] {
        let path = ferry_testbed::binary(package, name);
        dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    }
    dir
}

static COUNT: AtomicUsize = AtomicUsize::new(0);

/// A name no other test run uses: `t<pid>x<n>`.
pub fn unique_name() -> String {
    format!(
        "t{}x{}",
        std::process::id(),
        COUNT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A cluster with `nodes` nodes, its data under a directory removed with
/// it, the apiserver on any free loopback port.
pub struct TestCluster {
    pub cluster: Cluster,
    pub data_dir: PathBuf,
}

impl TestCluster {
    pub fn up(nodes: usize) -> Self {
        Self::up_with(nodes, &[])
    }

    /// [`up`](Self::up) with more ferry-apiserver flags.
    pub fn up_with(nodes: usize, apiserver_args: &[&str]) -> Self {
        Self::build(nodes, IpFamily::Ipv4, apiserver_args)
    }

    /// A cluster of the address families `family`.
    pub fn up_family(nodes: usize, family: IpFamily) -> Self {
        Self::build(nodes, family, &[])
    }

    fn build(nodes: usize, family: IpFamily, apiserver_args: &[&str]) -> Self {
        Self::up_settings(nodes, |s| {
            s.ip_family = family;
            s.apiserver_args = apiserver_args.iter().map(|a| (*a).to_owned()).collect();
        })
    }

    /// A cluster with `nodes` nodes and the test's own `settings`.
    pub fn up_settings(nodes: usize, settings: impl FnOnce(&mut Settings)) -> Self {
        let name = unique_name();
        let data_dir = std::env::temp_dir().join(format!("ferry-cluster-test-{name}"));
        let _ = std::fs::remove_dir_all(&data_dir);
        let bins = Binaries::in_dir(bin_dir()).expect("component binaries");
        let mut s = Settings::new(&name, nodes, data_dir.clone(), bins);
        s.api_port = Some(0);
        s.ready_timeout = Duration::from_secs(90);
        settings(&mut s);
        let cluster = Cluster::up(s).expect("ferry up");
        Self { cluster, data_dir }
    }

    pub fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        kubectl(self.cluster.kubeconfig(), args)
    }

    /// `kubectl get ARGS -o json`, or null when it fails.
    pub fn get_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        self.kubectl(&all)
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    /// `kubectl apply -f` of one object (written to the data directory).
    pub fn apply(&self, obj: &serde_json::Value) {
        let name = obj["metadata"]["name"].as_str().unwrap_or("obj");
        let kind = obj["kind"].as_str().unwrap_or("obj");
        let file = self.data_dir.join(format!("{kind}-{name}.json"));
        std::fs::write(&file, obj.to_string()).expect("write manifest");
        self.k(&["apply", "-f", &file.to_string_lossy()]);
    }

    /// `kubectl ...` that must succeed.
    pub fn k(&self, args: &[&str]) -> String {
        self.kubectl(args)
            .unwrap_or_else(|e| panic!("kubectl {}: {e}", args.join(" ")))
    }

    /// Waits (at most `secs`) until `f` holds, printing the cluster's pods
    /// when it does not.
    pub fn eventually(&self, what: &str, secs: u64, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !f() {
            if Instant::now() > deadline {
                let pods = self.kubectl(&["get", "pods", "-A", "-o", "wide"]);
                let events = self.kubectl(&["get", "events", "-A"]);
                panic!("{what}: not within {secs}s\npods: {pods:?}\nevents: {events:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

pub fn kubectl(kubeconfig: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--request-timeout", "20s"])
        .args(args)
        .output()
        .map_err(|e| format!("running kubectl: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// `curl -sS --max-time 5 URL` on the host.
pub fn curl(url: &str) -> Result<String, String> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", url])
        .output()
        .map_err(|e| format!("running curl: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Whether a pod (as kubectl's JSON) is Running, Ready and not going away.
pub fn pod_serving(p: &serde_json::Value) -> bool {
    p["metadata"]["deletionTimestamp"].is_null()
        && p["status"]["phase"] == "Running"
        && p["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
}
