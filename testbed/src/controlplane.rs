//! ferry-apiserver in a world's underlay, kubectl against it, and
//! workspace binaries built on demand: what the integration tests of every
//! component that reads the API share.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Netns, Process, World, target_profile_dir};

/// A workspace binary, built on demand when a narrower `cargo test` did not.
pub fn binary(package: &str, name: &str) -> PathBuf {
    let dir = target_profile_dir().expect("target dir");
    let path = dir.join(name);
    if !path.exists() {
        let release = dir.ends_with("release");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "-p", package, "--bin", name]);
        if release {
            cmd.arg("--release");
        }
        assert!(
            cmd.status().expect("cargo build").success(),
            "building {name}"
        );
    }
    path
}

/// ferry-apiserver running in the underlay namespace, reachable by the nodes.
pub struct ControlPlane {
    server: Process,
    pub kubeconfig: PathBuf,
    underlay: Netns,
    /// Its data dir, kept across restarts.
    data_dir: PathBuf,
    /// The address it binds.
    bind: String,
    /// The flags it was started with beyond the usual ones.
    extra: Vec<String>,
}

impl ControlPlane {
    pub fn start(world: &World) -> Self {
        Self::start_with(world, &[])
    }

    /// [`start`](Self::start) with more apiserver flags.
    pub fn start_with(world: &World, extra: &[&str]) -> Self {
        let underlay = world.underlay().clone();
        let node = world.node(0);
        let ip = std::net::Ipv4Addr::from(u32::from(node.underlay_v4.network()) + 250);
        underlay
            .exec([
                "ip",
                "addr",
                "add",
                &format!("{ip}/{}", node.underlay_v4.prefix_len()),
                "dev",
                "br0",
            ])
            .expect("address the underlay bridge");
        let data_dir = world.state_dir().join("apiserver");
        let kubeconfig = data_dir.join("admin.kubeconfig");
        let bind = format!("{ip}:6443");
        let extra: Vec<String> = extra.iter().map(|a| (*a).to_owned()).collect();
        let server = spawn_apiserver(&underlay, &data_dir, &bind, &kubeconfig, &extra);
        let cp = Self {
            server,
            kubeconfig,
            underlay,
            data_dir,
            bind,
            extra,
        };
        cp.wait_up();
        cp
    }

    fn wait_up(&self) {
        self.eventually("apiserver up", 20, || {
            self.kubectl(&["get", "ns", "default"]).is_ok()
        });
    }

    /// Stops the apiserver (SIGTERM, as a rollout would), runs `offline`
    /// on its data dir (to change what it stored, say), and starts it again
    /// on the same data dir with the same flags.
    pub fn restart_with(&mut self, offline: impl FnOnce(&Path)) {
        let pid = self.pid().to_string();
        self.underlay
            .exec(["kill", "-TERM", &pid])
            .expect("stop apiserver");
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.server.try_wait().ok().flatten().is_none() {
            assert!(Instant::now() < deadline, "apiserver did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
        offline(&self.data_dir);
        self.server = spawn_apiserver(
            &self.underlay,
            &self.data_dir,
            &self.bind,
            &self.kubeconfig,
            &self.extra,
        );
        self.wait_up();
    }

    /// The apiserver's process id (to pause it, say).
    pub fn pid(&self) -> u32 {
        self.server.pid()
    }

    pub fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["kubectl", "--kubeconfig"];
        let kc = self.kubeconfig.to_string_lossy().into_owned();
        all.push(&kc);
        all.extend_from_slice(args);
        self.underlay.exec(all).map_err(|e| e.to_string())
    }

    pub fn apply(&self, obj: &Value) {
        let file = self.kubeconfig.with_file_name(format!(
            "obj-{}.json",
            obj["metadata"]["name"].as_str().unwrap_or("x")
        ));
        std::fs::write(&file, obj.to_string()).expect("write manifest");
        self.kubectl(&["apply", "-f", &file.to_string_lossy()])
            .expect("kubectl apply");
    }

    pub fn eventually(&self, what: &str, secs: u64, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !f() {
            assert!(Instant::now() < deadline, "{what}: not within {secs}s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn spawn_apiserver(
    underlay: &Netns,
    data_dir: &Path,
    bind: &str,
    kubeconfig: &Path,
    extra: &[String],
) -> Process {
    underlay
        .spawn(
            [
                binary("ferry-controlplane", "ferry-apiserver")
                    .to_string_lossy()
                    .into_owned(),
                "--data-dir".into(),
                data_dir.to_string_lossy().into_owned(),
                "--bind".into(),
                bind.to_owned(),
                "--kubeconfig-out".into(),
                kubeconfig.to_string_lossy().into_owned(),
                // The nodes' pod CIDRs are the world's, not allocated.
                "--controllers".into(),
                "*,-nodeipam".into(),
            ]
            .into_iter()
            .chain(extra.iter().cloned()),
        )
        .expect("start apiserver")
}

/// Writes a copy of the stored `kind` object `ns/good`, named `bad` and
/// changed by `spoil`, straight into a stopped apiserver's SQLite store in
/// `data_dir` (as a buggy or older apiserver, or a restore, could leave
/// it): for [`ControlPlane::restart_with`].
pub fn store_spoiled_copy(
    data_dir: &Path,
    plural: &str,
    ns: &str,
    good: &str,
    bad: &str,
    spoil: impl FnOnce(&mut Value),
) {
    let db = data_dir.join("state.db");
    let sql = |q: &str| -> String {
        let out = Command::new("sqlite3")
            .arg(&db)
            .arg(q)
            .output()
            .expect("sqlite3");
        assert!(
            out.status.success(),
            "sqlite3 {q}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let suffix = format!("/{plural}/{ns}/{good}");
    let key = sql(&format!(
        "SELECT key FROM objects WHERE key LIKE '%{suffix}'"
    ));
    assert!(
        key.ends_with(&suffix),
        "no stored {plural} {ns}/{good}: {key:?}"
    );
    let text = sql(&format!(
        "SELECT CAST(value AS TEXT) FROM objects WHERE key = '{key}'"
    ));
    let mut obj: Value = serde_json::from_str(&text).expect("stored JSON");
    obj["metadata"]["name"] = Value::from(bad);
    if let Some(meta) = obj["metadata"].as_object_mut() {
        meta.remove("uid");
    }
    spoil(&mut obj);
    let bad_key = format!("{}/{plural}/{ns}/{bad}", key.trim_end_matches(&suffix));
    let hex: String = obj
        .to_string()
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect();
    sql(&format!(
        "BEGIN; UPDATE meta SET value = value + 1 WHERE name = 'revision'; \
         INSERT INTO objects (key, value, revision) VALUES ('{bad_key}', X'{hex}', \
         (SELECT value FROM meta WHERE name = 'revision')); COMMIT;"
    ));
}
