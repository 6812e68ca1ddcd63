//! ferry-apiserver in a world's underlay, kubectl against it, and
//! workspace binaries built on demand: what the integration tests of every
//! component that reads the API share.

use std::path::PathBuf;
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
        let dir = world.state_dir().join("apiserver");
        let kubeconfig = dir.join("admin.kubeconfig");
        let server = underlay
            .spawn(
                [
                    binary("ferry-controlplane", "ferry-apiserver")
                        .to_string_lossy()
                        .into_owned(),
                    "--data-dir".into(),
                    dir.to_string_lossy().into_owned(),
                    "--bind".into(),
                    format!("{ip}:6443"),
                    "--kubeconfig-out".into(),
                    kubeconfig.to_string_lossy().into_owned(),
                    // The nodes' pod CIDRs are the world's, not allocated.
                    "--controllers".into(),
                    "*,-nodeipam".into(),
                ]
                .into_iter()
                .chain(extra.iter().map(|a| (*a).to_owned())),
            )
            .expect("start apiserver");
        let cp = Self {
            server,
            kubeconfig,
            underlay,
        };
        cp.eventually("apiserver up", 20, || {
            cp.kubectl(&["get", "ns", "default"]).is_ok()
        });
        cp
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
