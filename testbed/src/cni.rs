//! Calling a CNI plugin the way a container runtime does.
//!
//! The network config is either a single plugin config or a conflist (an
//! object with a `plugins` array). [`Cni::call`] and [`Cni::gc_valid`] are
//! the runtime's side with everything explicit (network config, command,
//! netns path, container id, interface name, `CNI_ARGS`): the world's pods
//! go through them, and so does `ferry-node`, the node runtime. For a conflist the plugins run in order
//! on ADD, each given the list's `name` and `cniVersion` and the previous
//! plugin's result as `prevResult`, and in reverse order on DEL with the
//! cached final result, like libcni. Each binary is found by its `type` in
//! the `CNI_PATH` directories and run inside the node's namespace with
//! `nsenter --net=`, the pod namespace passed as `CNI_NETNS`.

use std::ffi::OsString;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde_json::{Map, Value};

use crate::cmd;
use crate::error::{Error, Result};
use crate::netns::Netns;
use crate::world::Node;

/// Where Debian's containernetworking-plugins installs the reference
/// plugins (`bridge`, `ptp`, `host-local`, `portmap`, ...).
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// Default time limit of one plugin invocation.
pub const CNI_TIMEOUT: Duration = Duration::from_secs(60);

type ConfigFn = dyn Fn(&Node) -> Value + Send + Sync;

/// How pods of a world are wired: which plugins, with which network
/// config. Cheap to clone.
#[derive(Clone)]
pub struct Cni {
    path: Vec<PathBuf>,
    config: Arc<ConfigFn>,
    env: Vec<(OsString, OsString)>,
    timeout: Duration,
}

impl fmt::Debug for Cni {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cni")
            .field("path", &self.path)
            .field("env", &self.env)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The CNI operations (`CNI_COMMAND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CniCommand {
    /// Wire the pod.
    Add,
    /// Check the wiring against the cached result.
    Check,
    /// Unwire the pod.
    Del,
    /// Release whatever belongs to no valid attachment ([`Cni::gc`]).
    Gc,
    /// Whether the plugin is ready for ADDs ([`Cni::status`]).
    Status,
    /// Which result versions the plugin speaks ([`Cni::version`]).
    Version,
}

impl CniCommand {
    /// The `CNI_COMMAND` value.
    pub fn as_str(self) -> &'static str {
        match self {
            CniCommand::Add => "ADD",
            CniCommand::Check => "CHECK",
            CniCommand::Del => "DEL",
            CniCommand::Gc => "GC",
            CniCommand::Status => "STATUS",
            CniCommand::Version => "VERSION",
        }
    }
}

impl fmt::Display for CniCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One attachment of a pod to the network: what the runtime passes in the
/// environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS` is this namespace's path.
    pub netns: Netns,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `K8S_POD_NAMESPACE` in `CNI_ARGS`.
    pub pod_namespace: String,
    /// `K8S_POD_NAME` in `CNI_ARGS`.
    pub pod_name: String,
}

impl Attachment {
    /// The `CNI_ARGS` a Kubernetes runtime passes for this attachment.
    pub fn cni_args(&self) -> String {
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
            self.pod_namespace, self.pod_name, self.container_id
        )
    }
}

/// What a runtime passes a plugin in the environment for one attachment,
/// spelled out: for callers that manage their own namespaces (a node
/// runtime keeps its pods' namespaces under its own state directory).
#[derive(Debug, Clone, Copy)]
pub struct CniCall<'a> {
    /// `CNI_CONTAINERID`.
    pub container_id: &'a str,
    /// `CNI_NETNS`: the path of the pod's network namespace.
    pub netns: &'a Path,
    /// `CNI_IFNAME`.
    pub ifname: &'a str,
    /// `CNI_ARGS` (`IgnoreUnknown=1;K8S_POD_NAMESPACE=...;...`).
    pub args: &'a str,
}

/// host-local range sets for a node: one per pod CIDR.
pub fn host_local_ranges(node: &Node) -> Vec<Value> {
    node.pod_cidrs
        .iter()
        .map(|c| serde_json::json!([{ "subnet": c.to_string() }]))
        .collect()
}

impl Cni {
    /// Plugins found in the `path` directories (`CNI_PATH`, searched in
    /// order), with the network config for each node made by `config` (a
    /// single plugin config or a conflist; it typically puts the node's pod
    /// CIDRs into the IPAM ranges and an IPAM `dataDir` under the world's
    /// state directory).
    pub fn new<P, F>(path: impl IntoIterator<Item = P>, config: F) -> Self
    where
        P: Into<PathBuf>,
        F: Fn(&Node) -> Value + Send + Sync + 'static,
    {
        Cni {
            path: path.into_iter().map(Into::into).collect(),
            config: Arc::new(config),
            env: Vec::new(),
            timeout: CNI_TIMEOUT,
        }
    }

    /// Plugins found in the `path` directories, for a caller that passes
    /// the network config with each call ([`call`](Self::call),
    /// [`gc_valid`](Self::gc_valid)): a node runtime reading its config
    /// directory. [`config_for`](Self::config_for) gives `null`.
    pub fn plugins<P: Into<PathBuf>>(path: impl IntoIterator<Item = P>) -> Self {
        Cni::new(path, |_: &Node| Value::Null)
    }

    /// Ferry's own plugin (the `ferry-cni` binary in `plugin_dir`), wired
    /// as a runtime calls it: CNI 1.1, host-local IPAM over the node's pod
    /// CIDRs, state under the node's state directory.
    pub fn ferry(plugin_dir: impl Into<PathBuf>) -> Self {
        Cni::new([plugin_dir.into()], |node: &Node| {
            serde_json::json!({
                "cniVersion": "1.1.0",
                "name": "ferry",
                "type": "ferry-cni",
                "dataDir": node.state_dir.join("ferry-cni"),
                "ipam": {"type": "host-local", "ranges": host_local_ranges(node),
                         "dataDir": node.state_dir.join("ipam")},
            })
        })
    }

    /// Adds an environment variable for the plugins (a kubeconfig path,
    /// say). They otherwise get only `PATH` and the `CNI_*` variables.
    #[must_use]
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Sets the time limit of one plugin invocation.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The `CNI_PATH` directories.
    pub fn path(&self) -> &[PathBuf] {
        &self.path
    }

    /// The network config for `node`.
    pub fn config_for(&self, node: &Node) -> Value {
        (self.config)(node)
    }

    /// Finds a plugin binary by its `type` in the `CNI_PATH` directories.
    pub fn find_plugin(&self, kind: &str) -> Result<PathBuf> {
        if kind.is_empty() || kind.contains('/') {
            return Err(Error::Config(format!("bad plugin type {kind:?}")));
        }
        self.path
            .iter()
            .map(|dir| dir.join(kind))
            .find(|p| p.is_file())
            .ok_or_else(|| Error::MissingBinary {
                name: kind.to_owned(),
                hint: format!("searched CNI_PATH {:?}", self.path),
            })
    }

    /// Runs `command` for `attachment` with the network config `netconf`
    /// inside `node_netns`, the way a runtime does. For ADD returns the
    /// final result; for CHECK and DEL pass the cached ADD result as
    /// `cached` (it becomes `prevResult`) and get `None` back. DEL runs
    /// every plugin of a conflist even after one failed (libcni stops at
    /// the first failure; a test's teardown should not) and reports the
    /// first error.
    pub fn invoke(
        &self,
        command: CniCommand,
        node_netns: &Netns,
        attachment: &Attachment,
        netconf: &Value,
        cached: Option<&Value>,
    ) -> Result<Option<Value>> {
        let args = attachment.cni_args();
        let call = CniCall {
            container_id: &attachment.container_id,
            netns: attachment.netns.path(),
            ifname: &attachment.ifname,
            args: &args,
        };
        self.call(command, Some(node_netns), netconf, &call, cached)
    }

    /// [`invoke`](Self::invoke) with the attachment spelled out: runs
    /// `command` for `call` with the network config `netconf`, the plugins
    /// inside `host` (through `nsenter --net=`) or, when `None`, in this
    /// process's own network namespace (a runtime running in its node's).
    pub fn call(
        &self,
        command: CniCommand,
        host: Option<&Netns>,
        netconf: &Value,
        call: &CniCall<'_>,
        cached: Option<&Value>,
    ) -> Result<Option<Value>> {
        let confs = plugin_configs(netconf)?;
        match command {
            CniCommand::Add => {
                let mut prev: Option<Value> = None;
                for conf in confs {
                    let conf = with_prev_result(conf, prev.as_ref());
                    let result = self.exec(command, host, Some(call), &conf)?;
                    prev = Some(result.ok_or_else(|| Error::CniResult {
                        plugin: self.plugin_of(&conf),
                        reason: "ADD printed no result".into(),
                    })?);
                }
                Ok(prev)
            }
            CniCommand::Check => {
                for conf in confs {
                    let conf = with_prev_result(conf, cached);
                    self.exec(command, host, Some(call), &conf)?;
                }
                Ok(None)
            }
            CniCommand::Del => {
                // Every plugin gets its DEL even when an earlier one failed;
                // the first error is reported.
                let mut first_err = None;
                for conf in confs.into_iter().rev() {
                    let conf = with_prev_result(conf, cached);
                    if let Err(e) = self.exec(command, host, Some(call), &conf) {
                        first_err.get_or_insert(e);
                    }
                }
                first_err.map_or(Ok(None), Err)
            }
            CniCommand::Gc | CniCommand::Status | CniCommand::Version => Err(Error::Config(
                format!("{command} takes no attachment: use Cni::gc, status or version"),
            )),
        }
    }

    /// CNI GC (spec 1.1): every plugin of `netconf`, in order, is told the
    /// attachments that are still valid (`cni.dev/valid-attachments`) and
    /// releases everything else.
    pub fn gc(&self, node_netns: &Netns, netconf: &Value, valid: &[Attachment]) -> Result<()> {
        let valid: Vec<(&str, &str)> = valid
            .iter()
            .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
            .collect();
        self.gc_valid(Some(node_netns), netconf, &valid)
    }

    /// [`gc`](Self::gc) with the valid attachments as `(container id,
    /// ifname)` pairs, the plugins run inside `host` or, when `None`, in
    /// this process's network namespace.
    pub fn gc_valid(
        &self,
        host: Option<&Netns>,
        netconf: &Value,
        valid: &[(&str, &str)],
    ) -> Result<()> {
        let valid: Vec<Value> = valid
            .iter()
            .map(|(id, ifname)| serde_json::json!({ "containerID": id, "ifname": ifname }))
            .collect();
        for mut conf in plugin_configs(netconf)? {
            if let Some(obj) = conf.as_object_mut() {
                obj.insert(
                    "cni.dev/valid-attachments".into(),
                    Value::Array(valid.clone()),
                );
            }
            self.exec(CniCommand::Gc, host, None, &conf)?;
        }
        Ok(())
    }

    /// CNI STATUS (spec 1.1) for every plugin of `netconf`, in order.
    pub fn status(&self, node_netns: &Netns, netconf: &Value) -> Result<()> {
        for conf in plugin_configs(netconf)? {
            self.exec(CniCommand::Status, Some(node_netns), None, &conf)?;
        }
        Ok(())
    }

    /// CNI VERSION of every plugin of `netconf`: their answers, in order.
    pub fn version(&self, node_netns: &Netns, netconf: &Value) -> Result<Vec<Value>> {
        plugin_configs(netconf)?
            .iter()
            .map(|conf| {
                let version = conf.get("cniVersion").cloned().unwrap_or(Value::Null);
                let input = serde_json::json!({
                    "cniVersion": version,
                    "type": conf.get("type").cloned().unwrap_or(Value::Null),
                });
                self.exec(CniCommand::Version, Some(node_netns), None, &input)?
                    .ok_or_else(|| Error::CniResult {
                        plugin: self.plugin_of(conf),
                        reason: "VERSION printed nothing".into(),
                    })
            })
            .collect()
    }

    fn plugin_of(&self, conf: &Value) -> PathBuf {
        let kind = conf.get("type").and_then(Value::as_str).unwrap_or("?");
        self.find_plugin(kind)
            .unwrap_or_else(|_| PathBuf::from(kind))
    }

    /// One plugin invocation. Returns the parsed stdout when there is one.
    fn exec(
        &self,
        command: CniCommand,
        node_netns: Option<&Netns>,
        attachment: Option<&CniCall<'_>>,
        conf: &Value,
    ) -> Result<Option<Value>> {
        let kind = conf
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::Config(format!("plugin config without a type: {conf}")))?;
        let plugin = self.find_plugin(kind)?;
        let cni_path = std::env::join_paths(&self.path)
            .map_err(|e| Error::Config(format!("bad CNI_PATH: {e}")))?;
        let mut cmd = match node_netns {
            Some(ns) => ns.command(&plugin),
            None => std::process::Command::new(&plugin),
        };
        cmd.env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("CNI_COMMAND", command.as_str());
        if command != CniCommand::Version {
            cmd.env("CNI_PATH", cni_path);
        }
        if let Some(a) = attachment {
            cmd.env("CNI_CONTAINERID", a.container_id)
                .env("CNI_NETNS", a.netns)
                .env("CNI_IFNAME", a.ifname)
                .env("CNI_ARGS", a.args);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let stdin = serde_json::to_vec(conf)
            .map_err(|e| Error::Config(format!("unserializable network config: {e}")))?;
        let out = cmd::output(&mut cmd, Some(&stdin), self.timeout)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if !out.status.success() {
            let parsed: Option<Value> = serde_json::from_str(stdout.trim()).ok();
            let field = |k: &str| {
                parsed
                    .as_ref()
                    .and_then(|v| v.get(k))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            };
            return Err(Error::Cni {
                plugin,
                command,
                code: parsed
                    .as_ref()
                    .and_then(|v| v.get("code"))
                    .and_then(Value::as_u64),
                msg: field("msg").unwrap_or_else(|| format!("{} {}", out.status, stdout.trim())),
                details: field("details").unwrap_or_default(),
                stderr,
            });
        }
        if stdout.trim().is_empty() {
            return Ok(None);
        }
        serde_json::from_str(stdout.trim())
            .map(Some)
            .map_err(|e| Error::CniResult {
                plugin,
                reason: format!("not JSON ({e}): {stdout}"),
            })
    }
}

/// The per-plugin configs of a network config: itself for a single config,
/// each member (with the list's name and cniVersion) for a conflist.
fn plugin_configs(netconf: &Value) -> Result<Vec<Value>> {
    let Some(obj) = netconf.as_object() else {
        return Err(Error::Config(format!(
            "network config is not an object: {netconf}"
        )));
    };
    let Some(plugins) = obj.get("plugins") else {
        return Ok(vec![netconf.clone()]);
    };
    let plugins = plugins
        .as_array()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| Error::Config("conflist `plugins` must be a non-empty array".into()))?;
    plugins
        .iter()
        .map(|p| {
            let mut conf: Map<String, Value> = p
                .as_object()
                .cloned()
                .ok_or_else(|| Error::Config(format!("conflist member is not an object: {p}")))?;
            for key in ["name", "cniVersion"] {
                if let Some(v) = obj.get(key) {
                    conf.insert(key.into(), v.clone());
                }
            }
            Ok(Value::Object(conf))
        })
        .collect()
}

fn with_prev_result(mut conf: Value, prev: Option<&Value>) -> Value {
    if let (Some(obj), Some(prev)) = (conf.as_object_mut(), prev) {
        obj.insert("prevResult".into(), prev.clone());
    }
    conf
}

/// The addresses a CNI result gives the pod, with their prefix lengths:
/// `ips[].address` (results 0.3.0 and later) or `ip4.ip`/`ip6.ip` (0.2.0).
pub fn result_ips(result: &Value) -> Result<Vec<IpNet>, String> {
    let mut out = Vec::new();
    if let Some(ips) = result.get("ips").and_then(Value::as_array) {
        for ip in ips {
            let addr = ip
                .get("address")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("ips entry without an address: {ip}"))?;
            out.push(
                addr.parse()
                    .map_err(|e| format!("bad address {addr:?}: {e}"))?,
            );
        }
    }
    for key in ["ip4", "ip6"] {
        if let Some(addr) = result
            .get(key)
            .and_then(|v| v.get("ip"))
            .and_then(Value::as_str)
        {
            out.push(
                addr.parse()
                    .map_err(|e| format!("bad address {addr:?}: {e}"))?,
            );
        }
    }
    Ok(out)
}

/// The first IPv4 address among `ips`.
pub(crate) fn first_v4(ips: &[IpNet]) -> Option<Ipv4Addr> {
    ips.iter().find_map(|n| match n.addr() {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    })
}

/// The first IPv6 address among `ips`.
pub(crate) fn first_v6(ips: &[IpNet]) -> Option<Ipv6Addr> {
    ips.iter().find_map(|n| match n.addr() {
        IpAddr::V6(a) => Some(a),
        IpAddr::V4(_) => None,
    })
}

/// The directory holding the binaries of the cargo profile this process was
/// built with (`target/debug` for a test binary in `target/debug/deps`),
/// where `ferry-cni` and `ferry-netexec` are built.
pub fn target_profile_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().map(Path::to_path_buf)
    } else {
        Some(dir.to_path_buf())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn conflist_members_inherit_name_and_version() {
        let list = json!({"cniVersion": "1.0.0", "name": "n", "plugins": [
            {"type": "bridge", "bridge": "cni0"}, {"type": "portmap"}]});
        let confs = plugin_configs(&list).expect("valid conflist");
        assert_eq!(confs.len(), 2);
        assert_eq!(confs[1]["name"], "n");
        assert_eq!(confs[1]["cniVersion"], "1.0.0");
        assert_eq!(confs[0]["bridge"], "cni0");
        let single = json!({"cniVersion": "0.4.0", "name": "x", "type": "ptp"});
        assert_eq!(plugin_configs(&single).expect("single"), vec![single]);
        assert!(plugin_configs(&json!({"plugins": []})).is_err());
    }

    #[test]
    fn parses_result_addresses() {
        let r = json!({"cniVersion": "1.0.0", "ips": [
            {"address": "10.1.0.5/24", "interface": 1},
            {"address": "fd00::5/64", "interface": 1}]});
        let ips = result_ips(&r).expect("valid");
        assert_eq!(first_v4(&ips), Some(Ipv4Addr::new(10, 1, 0, 5)));
        assert_eq!(first_v6(&ips), Some("fd00::5".parse().expect("v6")));
        let old = json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.2.0.3/16"}});
        assert_eq!(result_ips(&old).expect("valid").len(), 1);
    }
}
