//! One plugin under test with one address setup: its node namespace, its
//! network config, its state directories, and its invocations, made exactly
//! as a runtime makes them (`nsenter --net=<node> <plugin>`, the `CNI_*`
//! environment, the config on stdin).

use std::collections::HashSet;
use std::ffi::OsString;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use ferry_testbed::Netns;
use serde_json::{Value, json};

use super::exec::{Timed, run_timed};
use super::{Op, Plugin, Stack};
use crate::{BenchError, Result};

/// The network name in both configs.
pub const NETWORK: &str = "bench";

/// The pod-side interface name.
pub const IFNAME: &str = "eth0";

/// The reference plugin's bridge, inside its node namespace.
pub const BRIDGE: &str = "fcb0";

/// The pod ranges, the same for both plugins (each in its own node).
pub const POD_RANGE_V4: &str = "10.240.0.0/16";
pub const POD_RANGE_V6: &str = "fd00:fcb::/64";

/// The `PATH` plugins get (the runtime's is no business of theirs).
const PLUGIN_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where the binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `ferry-cni`.
    pub ferry: PathBuf,
    /// The reference plugins' directory (`bridge`, `host-local`).
    pub reference_dir: PathBuf,
}

impl Binaries {
    pub fn bridge(&self) -> PathBuf {
        self.reference_dir.join("bridge")
    }

    pub fn host_local(&self) -> PathBuf {
        self.reference_dir.join("host-local")
    }

    /// The binary `plugin` runs, and its `CNI_PATH`.
    fn of(&self, plugin: Plugin) -> (PathBuf, OsString) {
        match plugin {
            Plugin::Ferry => {
                let dir = self.ferry.parent().unwrap_or(Path::new("/"));
                (self.ferry.clone(), dir.as_os_str().to_owned())
            }
            Plugin::Reference => (self.bridge(), self.reference_dir.as_os_str().to_owned()),
        }
    }
}

/// The host-local `ipam` section both plugins get.
fn ipam(stack: Stack, data_dir: &Path) -> Value {
    let (ranges, routes) = match stack {
        Stack::V4 => (
            json!([[{ "subnet": POD_RANGE_V4 }]]),
            json!([{ "dst": "0.0.0.0/0" }]),
        ),
        Stack::Dual => (
            json!([[{ "subnet": POD_RANGE_V4 }], [{ "subnet": POD_RANGE_V6 }]]),
            json!([{ "dst": "0.0.0.0/0" }, { "dst": "::/0" }]),
        ),
    };
    json!({
        "type": "host-local",
        "ranges": ranges,
        "routes": routes,
        "dataDir": data_dir,
    })
}

/// The network config `plugin` gets for `stack`, with its state under `dir`.
pub fn netconf(plugin: Plugin, stack: Stack, cni_version: &str, dir: &Path) -> Value {
    let ipam = ipam(stack, &dir.join("ipam"));
    match plugin {
        Plugin::Ferry => json!({
            "cniVersion": cni_version,
            "name": NETWORK,
            "type": "ferry-cni",
            "dataDir": dir.join("results"),
            "ipam": ipam,
        }),
        Plugin::Reference => json!({
            "cniVersion": cni_version,
            "name": NETWORK,
            "type": "bridge",
            "bridge": BRIDGE,
            "isGateway": true,
            "ipMasq": false,
            "ipam": ipam,
        }),
    }
}

/// A 64-hex-digit container ID, as runtimes make them, unique per
/// (run, pass, pod).
pub fn container_id(pass: u32, pod: usize) -> String {
    format!("{:08x}{pass:08x}{pod:048x}", std::process::id())
}

/// One plugin with one address setup in its own node namespace.
#[derive(Debug)]
pub struct Lane {
    pub plugin: Plugin,
    pub stack: Stack,
    pub node: Netns,
    binary: PathBuf,
    cni_path: OsString,
    netconf: Vec<u8>,
    /// `<ipam dataDir>/<network>`: host-local's reservations.
    reservations: PathBuf,
    limit: Duration,
}

impl Lane {
    /// The lane's config, with its state in `dir` (created here).
    pub fn new(
        plugin: Plugin,
        stack: Stack,
        node: Netns,
        binaries: &Binaries,
        cni_version: &str,
        dir: &Path,
        limit: Duration,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| BenchError::io(format!("creating {}", dir.display()), e))?;
        let conf = netconf(plugin, stack, cni_version, dir);
        let (binary, cni_path) = binaries.of(plugin);
        Ok(Self {
            plugin,
            stack,
            node,
            binary,
            cni_path,
            netconf: serde_json::to_vec(&conf)?,
            reservations: dir.join("ipam").join(NETWORK),
            limit,
        })
    }

    /// "ferry-cni, IPv4" and the like.
    pub fn label(&self) -> String {
        format!("{}, {}", self.plugin.name(), self.stack.name())
    }

    /// Addresses currently reserved in the lane's IPAM store.
    pub fn reserved(&self) -> usize {
        super::lab::reservations(&self.reservations)
    }

    /// Runs `op` for the pod in `pod_ns` (pod number `pod` of pass `pass`)
    /// and returns the invocation's wall time, with the addresses an ADD
    /// handed out. A failure (non-zero exit, or an ADD result without the
    /// addresses the stack asks for) is an error.
    pub fn invoke(
        &self,
        op: Op,
        pod_ns: &Netns,
        pass: u32,
        pod: usize,
        stop: &AtomicBool,
    ) -> Result<(Duration, Vec<IpAddr>)> {
        let id = container_id(pass, pod);
        let mut cmd = self.node.command(&self.binary);
        cmd.env_clear()
            .env("PATH", PLUGIN_PATH)
            .env("CNI_COMMAND", op.command())
            .env("CNI_CONTAINERID", &id)
            .env("CNI_NETNS", pod_ns.path())
            .env("CNI_IFNAME", IFNAME)
            .env(
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=pod-{pod};\
                     K8S_POD_INFRA_CONTAINER_ID={id}"
                ),
            )
            .env("CNI_PATH", &self.cni_path);
        let t = run_timed(&mut cmd, &self.netconf, self.limit, stop)?;
        let fail = |why: String| {
            BenchError::Check(format!(
                "{} {} of pod {pod} ({}): {why}; stdout: {}; stderr: {}",
                self.label(),
                op.command(),
                pod_ns.name(),
                t.stdout_text(),
                t.stderr_text()
            ))
        };
        if !t.status.success() {
            return Err(fail(t.status.to_string()));
        }
        let ips = match op {
            Op::Add => self.added(&t).map_err(fail)?,
            Op::Del => Vec::new(),
        };
        Ok((t.wall, ips))
    }

    /// The pod addresses of an ADD result, one per family the stack has.
    fn added(&self, t: &Timed) -> std::result::Result<Vec<IpAddr>, String> {
        let result: Value =
            serde_json::from_slice(&t.stdout).map_err(|e| format!("result is not JSON: {e}"))?;
        let ips: Vec<IpAddr> = result
            .get("ips")
            .and_then(Value::as_array)
            .map(|ips| {
                ips.iter()
                    .filter_map(|ip| ip.get("address").and_then(Value::as_str))
                    .filter_map(|a| a.split('/').next()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        let v4 = ips.iter().filter(|ip| ip.is_ipv4()).count();
        let v6 = ips.len() - v4;
        let want_v6 = usize::from(self.stack == Stack::Dual);
        if v4 != 1 || v6 != want_v6 {
            return Err(format!(
                "result has {v4} IPv4 and {v6} IPv6 addresses, expected 1 and {want_v6}"
            ));
        }
        Ok(ips)
    }
}

/// Fails unless the addresses handed out are all different.
pub fn check_unique(label: &str, added: &[Vec<IpAddr>]) -> Result<()> {
    let mut seen = HashSet::new();
    for ip in added.iter().flatten() {
        if !seen.insert(*ip) {
            return Err(BenchError::Check(format!(
                "{label}: address {ip} was handed out twice"
            )));
        }
    }
    Ok(())
}
