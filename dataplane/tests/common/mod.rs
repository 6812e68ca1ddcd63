//! What the dataplane's integration tests share: ferry-apiserver in a
//! world's underlay, kubectl against it, Node objects, the agent, and
//! workspace binaries built on demand.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ferry_testbed::{Cni, Netns, Node, Process, World, target_profile_dir};
use serde_json::{Value, json};

/// Ferry's own plugin, wired exactly as a runtime would call it.
pub fn ferry_cni() -> Cni {
    let dir = binary("ferry-cni", "ferry-cni");
    Cni::ferry(dir.parent().map(Path::to_path_buf).unwrap_or_default())
}

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
    _server: Process,
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
            _server: server,
            kubeconfig,
            underlay,
        };
        cp.eventually("apiserver up", 20, || {
            cp.kubectl(&["get", "ns", "default"]).is_ok()
        });
        cp
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

pub fn node_object(node: &Node) -> Value {
    let cidrs: Vec<String> = node.pod_cidrs.iter().map(ToString::to_string).collect();
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": node.name},
        "spec": {"podCIDR": cidrs[0], "podCIDRs": cidrs},
        "status": {"addresses": [
            {"type": "InternalIP", "address": node.ipv4.to_string()},
            {"type": "InternalIP", "address": node.ipv6.to_string()},
        ]},
    })
}

/// `ferry-agent` for `node`, in its namespace, with `args` after the
/// kubeconfig and node name.
pub fn start_agent(cp: &ControlPlane, node: &Node, args: &[&str]) -> Process {
    let mut argv = vec![
        binary("ferry-dataplane", "ferry-agent")
            .to_string_lossy()
            .into_owned(),
        "--kubeconfig".into(),
        cp.kubeconfig.to_string_lossy().into_owned(),
        "--node-name".into(),
        node.name.clone(),
    ];
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    node.netns.spawn(argv).expect("start agent")
}
