//! What a node needs before the agent runs, and the checks that say whether
//! it has it: ferry-cni and its network config installed into the
//! runtime's CNI directories (`ferry-agent install-cni`), bpffs mounted
//! (`ferry-agent init`), and the kernel and environment checks
//! (`ferry-agent check`, also run at every agent start): kernel BTF, the
//! cgroup2 hierarchy's root, bpffs under `--bpffs-root`, and a kube-proxy
//! still programming the node.
//!
//! Files are replaced atomically (a temporary file in the target
//! directory, fsync, mode, rename, fsync of the directory), so a runtime
//! reading the directory sees the old file or the new one, never a part.

use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use nix::sys::statfs::{BPF_FS_MAGIC, CGROUP2_SUPER_MAGIC, statfs};
use serde_json::{Value, json};

/// Ferry's network config file: `05-` sorts before the `10-` of most
/// plugins, and runtimes take the first file of the directory.
pub const CONFLIST_NAME: &str = "05-ferry.conflist";
/// The plugin's file name in the CNI bin directory (its `type`).
pub const PLUGIN_NAME: &str = "ferry-cni";
/// Where the image keeps the plugin to copy onto the host.
pub const PLUGIN_SOURCE: &str = "/opt/ferry/cni/ferry-cni";
/// Where the kernel publishes its BTF.
pub const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";
/// Where bpffs is usually mounted.
pub const BPFFS_MOUNT: &str = "/sys/fs/bpf";

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{action} {}: {error}{}", path.display(), io_hint(error))]
    Io {
        action: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    #[error(
        "{} is not a regular file: install-cni copies the ferry-cni binary from it (the image has it at {PLUGIN_SOURCE}; pass --source)",
        .0.display()
    )]
    SourceNotAFile(PathBuf),
    #[error("reading Node {node} for its spec.podCIDRs: {error}")]
    Api { node: String, error: kube::Error },
    #[error(
        "Node {node} has no spec.podCIDRs after {waited:?}: let the control plane allocate them (kube-controller-manager --allocate-node-cidrs) or pass --pod-cidrs"
    )]
    NoPodCidrs { node: String, waited: Duration },
    #[error("Node {node}: spec.podCIDRs entry {value:?} is not a CIDR")]
    BadPodCidr { node: String, value: String },
    #[error("--node-name (or NODE_NAME) is required to read the node's spec.podCIDRs")]
    NoNodeName,
    #[error(
        "mounting bpffs at {}: {error} (mounting needs CAP_SYS_ADMIN: run `ferry-agent init` in a privileged init container with the host's /sys/fs/bpf mounted Bidirectional)",
        path.display()
    )]
    Mount { path: PathBuf, error: nix::Error },
    #[error("{}", cgroup_message(.0))]
    NoCgroupRoot(Vec<PathBuf>),
}

fn io_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::ReadOnlyFilesystem => {
            " (the directory is on a read-only mount: give this container the host directory as a writable hostPath)"
        }
        io::ErrorKind::PermissionDenied => {
            " (run as uid 0 with write access to the host directory)"
        }
        io::ErrorKind::NotFound => " (does the path exist? check the hostPath mounts and flags)",
        _ => "",
    }
}

fn cgroup_message(mounts: &[PathBuf]) -> String {
    if mounts.is_empty() {
        return "no cgroup2 file system is mounted: Ferry needs cgroup v2 (a cgroup v1-only host is not supported); mount the host's cgroup2 and pass --cgroup-root".into();
    }
    let list: Vec<String> = mounts.iter().map(|m| m.display().to_string()).collect();
    format!(
        "no cgroup2 mount is the hierarchy's root (every one has cgroup.type, so it shows a child cgroup: {}); inside a container /sys/fs/cgroup is the container's own cgroup. Mount the host's /sys/fs/cgroup (hostPath, e.g. at /run/ferry/cgroupv2) and pass --cgroup-root",
        list.join(", ")
    )
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SetupError {
    let path = path.to_owned();
    move |error| SetupError::Io {
        action,
        path,
        error,
    }
}

// ---------------------------------------------------------------------------
// The CNI network config

/// Where ferry-cni takes a pod's addresses from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodRanges {
    /// These CIDRs (the node's `spec.podCIDRs`, immutable once set), in
    /// host-local's `ranges` form.
    Cidrs(Vec<IpNet>),
    /// Looked up by the plugin at every ADD with this kubeconfig.
    FromApi {
        kubeconfig: PathBuf,
        node_name: String,
    },
}

/// Ferry's network config for one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniNetwork {
    pub ranges: PodRanges,
    /// ferry-cni's state: results under `cni-results`, address
    /// reservations under `cni-networks`; `None` keeps the plugin's
    /// defaults (`/var/lib/cni/ferry`, `/var/lib/cni/networks`).
    pub state_dir: Option<PathBuf>,
    /// The agent's bpffs root, when it attaches to pods' devices
    /// (`--pod-devices`): ADD then returns only once the agent's programs
    /// (NetworkPolicy among them) are on the pod's veth.
    pub wait_for_agent: Option<PathBuf>,
}

impl CniNetwork {
    /// The conflist ferry-cni reads (see `cni/README.md`).
    pub fn conflist(&self) -> Value {
        let mut ipam = json!({"type": "ferry"});
        match &self.ranges {
            PodRanges::Cidrs(cidrs) => {
                let sets: Vec<Value> = cidrs
                    .iter()
                    .map(|c| json!([{ "subnet": c.to_string() }]))
                    .collect();
                ipam["ranges"] = Value::Array(sets);
            }
            PodRanges::FromApi {
                kubeconfig,
                node_name,
            } => {
                ipam["kubeconfig"] = json!(kubeconfig);
                ipam["nodeName"] = json!(node_name);
            }
        }
        let mut plugin = json!({"type": PLUGIN_NAME});
        if let Some(dir) = &self.state_dir {
            plugin["dataDir"] = json!(dir.join("cni-results"));
            ipam["dataDir"] = json!(dir.join("cni-networks"));
        }
        plugin["ipam"] = ipam;
        if let Some(bpffs) = &self.wait_for_agent {
            let links = crate::bpf::Layout {
                bpffs_root: bpffs.clone(),
                cgroup_root: PathBuf::new(),
            }
            .links_dir();
            let wait_for: Vec<Value> = crate::bpf::pod_device_pins(&links, "{hostVeth}")
                .iter()
                .map(|p| json!(p))
                .collect();
            plugin["dataplane"] = json!({"waitFor": wait_for, "timeoutMs": 10000});
        }
        json!({"cniVersion": "1.1.0", "name": "ferry", "plugins": [plugin]})
    }
}

/// The node's `spec.podCIDRs` (or `spec.podCIDR`), waiting up to `wait`
/// for the control plane to allocate them.
pub async fn node_pod_cidrs(
    client: kube::Client,
    node: &str,
    wait: Duration,
) -> Result<Vec<IpNet>, SetupError> {
    if node.is_empty() {
        return Err(SetupError::NoNodeName);
    }
    let api: kube::Api<Node> = kube::Api::all(client);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let got = api.get(node).await;
        match got {
            Ok(n) => {
                let spec = n.spec.unwrap_or_default();
                let mut raw = spec.pod_cidrs.unwrap_or_default();
                if raw.is_empty() {
                    raw.extend(spec.pod_cidr);
                }
                if !raw.is_empty() {
                    return raw
                        .into_iter()
                        .map(|v| {
                            v.parse().map_err(|_| SetupError::BadPodCidr {
                                node: node.to_owned(),
                                value: v,
                            })
                        })
                        .collect();
                }
                tracing::info!(node, "waiting for the node's spec.podCIDRs");
            }
            Err(error) if tokio::time::Instant::now() >= deadline => {
                return Err(SetupError::Api {
                    node: node.to_owned(),
                    error,
                });
            }
            Err(error) => tracing::warn!(node, %error, "reading the Node; retrying"),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(SetupError::NoPodCidrs {
                node: node.to_owned(),
                waited: wait,
            });
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

// ---------------------------------------------------------------------------
// Atomic installation

/// What an install did to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It was absent or different and has been replaced.
    Written,
    /// It already had this content and mode; left alone.
    Unchanged,
}

/// Where `install-cni` puts things.
#[derive(Debug, Clone)]
pub struct CniInstall {
    /// The host's CNI bin directory (as mounted here).
    pub bin_dir: PathBuf,
    /// The host's CNI config directory (as mounted here).
    pub conf_dir: PathBuf,
    /// The ferry-cni binary to copy.
    pub source: PathBuf,
}

/// The result of [`install_cni`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub plugin: PathBuf,
    pub plugin_outcome: Outcome,
    pub conflist: PathBuf,
    pub conflist_outcome: Outcome,
}

/// Installs ferry-cni (mode 0755) and `network`'s conflist (0644) under
/// `to`, each atomically; files already right are left alone. The plugin
/// goes first, so a runtime never finds the config without its plugin.
pub fn install_cni(to: &CniInstall, network: &CniNetwork) -> Result<Installed, SetupError> {
    let meta = fs::metadata(&to.source).map_err(io("reading", &to.source))?;
    if !meta.is_file() {
        return Err(SetupError::SourceNotAFile(to.source.clone()));
    }
    let mut source = fs::File::open(&to.source).map_err(io("opening", &to.source))?;
    let plugin = to.bin_dir.join(PLUGIN_NAME);
    let plugin_outcome = install_file(&to.bin_dir, PLUGIN_NAME, 0o755, || {
        let mut bytes = Vec::with_capacity(meta.len().try_into().unwrap_or(0));
        source.read_to_end(&mut bytes)?;
        Ok(bytes)
    })
    .map_err(|(action, path, error)| SetupError::Io {
        action,
        path,
        error,
    })?;
    let (conflist, conflist_outcome) = write_conflist(&to.conf_dir, network)?;
    Ok(Installed {
        plugin,
        plugin_outcome,
        conflist,
        conflist_outcome,
    })
}

/// Writes `network`'s conflist as `conf_dir/`[`CONFLIST_NAME`] (0644),
/// atomically; a file already right is left alone. `install-cni` and
/// `ferry up`'s nodes both write it this way.
pub fn write_conflist(
    conf_dir: &Path,
    network: &CniNetwork,
) -> Result<(PathBuf, Outcome), SetupError> {
    let text = format!("{:#}\n", network.conflist());
    let outcome = install_file(conf_dir, CONFLIST_NAME, 0o644, || Ok(text.into_bytes())).map_err(
        |(action, path, error)| SetupError::Io {
            action,
            path,
            error,
        },
    )?;
    Ok((conf_dir.join(CONFLIST_NAME), outcome))
}

type InstallError = (&'static str, PathBuf, io::Error);

/// Makes `dir/name` hold `content()` with `mode`, atomically: a hidden
/// temporary file in `dir` is written, synced, given its mode and renamed
/// over the target, then the directory is synced. An interrupted install
/// leaves at most the temporary file, which the next one replaces.
fn install_file(
    dir: &Path,
    name: &str,
    mode: u32,
    content: impl FnOnce() -> io::Result<Vec<u8>>,
) -> Result<Outcome, InstallError> {
    let target = dir.join(name);
    let bytes = content().map_err(|e| ("reading the content of", target.clone(), e))?;
    if let Ok(meta) = fs::symlink_metadata(&target)
        && meta.is_file()
        && meta.permissions().mode() & 0o7777 == mode
        && meta.len() == bytes.len() as u64
        && fs::read(&target).is_ok_and(|old| old == bytes)
    {
        return Ok(Outcome::Unchanged);
    }
    fs::create_dir_all(dir).map_err(|e| ("creating", dir.to_owned(), e))?;
    let staged = dir.join(format!(".{name}.ferry-tmp"));
    // A temporary file an interrupted install left behind.
    match fs::remove_file(&staged) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(("removing", staged, e)),
    }
    let written = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&staged)?;
        f.write_all(&bytes)?;
        // The umask narrowed the creation mode; set it exactly.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&staged);
        return Err(("writing", staged, e));
    }
    if let Err(e) = fs::rename(&staged, &target) {
        let _ = fs::remove_file(&staged);
        return Err(("replacing", target, e));
    }
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ("syncing", dir.to_owned(), e))?;
    Ok(Outcome::Written)
}

// ---------------------------------------------------------------------------
// bpffs

/// What [`mount_bpffs`] found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mounted {
    Already,
    Now,
}

/// Mounts bpffs at `path` (created if absent) unless it is one already.
pub fn mount_bpffs(path: &Path) -> Result<Mounted, SetupError> {
    fs::create_dir_all(path).map_err(io("creating", path))?;
    if is_bpffs(path) {
        return Ok(Mounted::Already);
    }
    nix::mount::mount(
        Some("bpf"),
        path,
        Some("bpf"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(|error| SetupError::Mount {
        path: path.to_owned(),
        error,
    })?;
    Ok(Mounted::Now)
}

fn is_bpffs(path: &Path) -> bool {
    statfs(path).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC)
}

// ---------------------------------------------------------------------------
// cgroup2

/// The cgroup whose processes the agent balances: `explicit` as given
/// (`--cgroup-root`; tests give a child cgroup of their own), else the
/// first cgroup2 mount that shows the hierarchy's root.
///
/// A cgroup2 mount made inside a container's cgroup namespace (what
/// `/sys/fs/cgroup` is in a pod) shows the container's own cgroup, and
/// programs attached there see only the container's sockets. Only
/// non-root cgroups have a `cgroup.type` file, so a mount point without
/// one is the real root; `/proc/self/cgroup` cannot tell (it reads `0::/`
/// inside the namespace).
pub fn cgroup_root(explicit: Option<&Path>, mountinfo: &str) -> Result<PathBuf, SetupError> {
    if let Some(p) = explicit {
        return Ok(p.to_owned());
    }
    let mounts = cgroup2_mounts(mountinfo);
    mounts
        .iter()
        .find(|m| !m.join("cgroup.type").exists() && m.join("cgroup.procs").exists())
        .cloned()
        .ok_or(SetupError::NoCgroupRoot(mounts))
}

/// [`cgroup_root`] with this process's mount table.
pub fn cgroup_root_here(explicit: Option<&Path>) -> Result<PathBuf, SetupError> {
    if let Some(p) = explicit {
        return Ok(p.to_owned());
    }
    let path = Path::new("/proc/self/mountinfo");
    let info = fs::read_to_string(path).map_err(io("reading", path))?;
    cgroup_root(None, &info)
}

/// The mount points of cgroup2 file systems, in mount order.
fn cgroup2_mounts(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let fstype = post.split_whitespace().next()?;
            let point = pre.split_whitespace().nth(4)?;
            (fstype == "cgroup2").then(|| PathBuf::from(unescape_mountinfo(point)))
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------
// Checks

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    /// Not checked here (the tools are missing); says so.
    Skipped,
    Warning,
    Error,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Level::Ok => "ok",
            Level::Skipped => "skipped",
            Level::Warning => "warning",
            Level::Error => "error",
        })
    }
}

/// One check's verdict; warnings and errors say how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub check: &'static str,
    pub level: Level,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<8}{}: {}", self.level, self.check, self.message)
    }
}

/// What the checks look at.
#[derive(Debug, Clone)]
pub struct CheckSettings {
    pub kernel_btf: PathBuf,
    /// `--cgroup-root`, or `None` to find the hierarchy's root.
    pub cgroup_root: Option<PathBuf>,
    /// `--bpffs-root`: must be on bpffs (or be created on it).
    pub bpffs_root: PathBuf,
    /// Whether the cgroup and bpffs matter (not with `--no-service-proxy`).
    pub service_proxy: bool,
    /// Where `nft` and `iptables` are looked for (`PATH`).
    pub tool_path: Option<std::ffi::OsString>,
}

impl CheckSettings {
    pub fn new(bpffs_root: PathBuf, cgroup_root: Option<PathBuf>) -> Self {
        CheckSettings {
            kernel_btf: KERNEL_BTF.into(),
            cgroup_root,
            bpffs_root,
            service_proxy: true,
            tool_path: std::env::var_os("PATH"),
        }
    }
}

/// Runs every check, in a fixed order.
pub fn run_checks(s: &CheckSettings) -> Vec<Finding> {
    let mut out = vec![check_btf(&s.kernel_btf)];
    if s.service_proxy {
        out.push(check_cgroup(s.cgroup_root.as_deref()));
        out.push(check_bpffs(&s.bpffs_root));
    }
    out.push(check_kube_proxy(s.tool_path.as_deref()));
    out
}

fn check_btf(path: &Path) -> Finding {
    let check = "kernel BTF";
    if path.is_file() {
        Finding {
            check,
            level: Level::Ok,
            message: format!("{} present", path.display()),
        }
    } else {
        Finding {
            check,
            level: Level::Warning,
            message: format!(
                "{} is missing (a kernel built without CONFIG_DEBUG_INFO_BTF): Ferry's programs carry their own BTF and load without it, but a program that fails to load on this kernel cannot be diagnosed; use a kernel with CONFIG_DEBUG_INFO_BTF=y",
                path.display()
            ),
        }
    }
}

fn check_cgroup(explicit: Option<&Path>) -> Finding {
    let check = "cgroup v2";
    let root = match cgroup_root_here(explicit) {
        Ok(r) => r,
        Err(e) => {
            return Finding {
                check,
                level: Level::Error,
                message: e.to_string(),
            };
        }
    };
    match statfs(&root) {
        Ok(s) if s.filesystem_type() == CGROUP2_SUPER_MAGIC => {}
        Ok(_) => {
            return Finding {
                check,
                level: Level::Error,
                message: format!(
                    "{} is not a cgroup2 file system: pass --cgroup-root with the host's cgroup2 mount (Ferry needs cgroup v2; v1-only hosts are not supported)",
                    root.display()
                ),
            };
        }
        Err(e) => {
            return Finding {
                check,
                level: Level::Error,
                message: format!(
                    "{}: {e}: pass --cgroup-root with the host's cgroup2 mount",
                    root.display()
                ),
            };
        }
    }
    if root.join("cgroup.type").exists() {
        Finding {
            check,
            level: Level::Warning,
            message: format!(
                "{} is a child cgroup, not the hierarchy's root: only its processes get socket-level load balancing; give the host's cgroup2 root as --cgroup-root unless that is meant",
                root.display()
            ),
        }
    } else {
        Finding {
            check,
            level: Level::Ok,
            message: format!("{} is the root of the cgroup2 hierarchy", root.display()),
        }
    }
}

fn check_bpffs(root: &Path) -> Finding {
    let check = "bpffs";
    // The root may not exist yet: the agent creates it on the bpffs above.
    let existing = root.ancestors().find(|p| p.exists()).unwrap_or(root);
    match statfs(existing) {
        Ok(s) if s.filesystem_type() == BPF_FS_MAGIC => Finding {
            check,
            level: Level::Ok,
            message: format!("{} is on bpffs", root.display()),
        },
        Ok(_) => Finding {
            check,
            level: Level::Error,
            message: format!(
                "{} is not on a bpf file system: run `ferry-agent init` (a privileged init container with the host's {BPFFS_MOUNT} mounted Bidirectional) or `mount -t bpf bpf {BPFFS_MOUNT}` on the host, or pass a --bpffs-root on bpffs",
                root.display()
            ),
        },
        Err(e) => Finding {
            check,
            level: Level::Error,
            message: format!("{}: {e}", existing.display()),
        },
    }
}

fn find_tool(path: Option<&OsStr>, name: &str) -> Option<PathBuf> {
    std::env::split_paths(path?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Whether kube-proxy (iptables or nftables mode) has rules in this
/// network namespace, read with the `nft` and `iptables` tools where they
/// are installed. Legacy iptables is read only when its `nat` table
/// already exists (listing it would otherwise create it).
fn check_kube_proxy(path: Option<&OsStr>) -> Finding {
    let check = "kube-proxy";
    let mut seen = Vec::new();
    let mut read = Vec::new();
    if let Some(nft) = find_tool(path, "nft") {
        read.push("nft");
        if let Ok(out) = Command::new(&nft).args(["list", "tables"]).output()
            && out.status.success()
        {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let line = line.trim();
                if line == "table ip kube-proxy" || line == "table ip6 kube-proxy" {
                    seen.push(format!("nftables {}", line.trim_start_matches("table ")));
                }
            }
        }
        let chain = Command::new(&nft)
            .args(["list", "chain", "ip", "nat", "KUBE-SERVICES"])
            .output();
        if chain.is_ok_and(|o| o.status.success()) {
            seen.push("iptables-nft chain KUBE-SERVICES in table nat".into());
        }
    }
    let legacy_nat = fs::read_to_string("/proc/net/ip_tables_names")
        .is_ok_and(|t| t.lines().any(|l| l.trim() == "nat"));
    for tool in ["iptables-legacy", "iptables"] {
        let Some(bin) = find_tool(path, tool) else {
            continue;
        };
        let version = Command::new(&bin).arg("--version").output();
        let is_legacy = version
            .as_ref()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("legacy"));
        if is_legacy && !legacy_nat {
            read.push(tool);
            continue;
        }
        if !is_legacy && read.contains(&"nft") {
            // iptables-nft's tables are nft's; already read.
            continue;
        }
        read.push(tool);
        let listed = Command::new(&bin)
            .args(["-w", "5", "-t", "nat", "-S", "KUBE-SERVICES"])
            .output();
        if listed.is_ok_and(|o| o.status.success()) {
            let what = format!("{tool} chain KUBE-SERVICES in table nat");
            if !seen.contains(&what) {
                seen.push(what);
            }
        }
    }
    if !seen.is_empty() {
        return Finding {
            check,
            level: Level::Warning,
            message: format!(
                "kube-proxy is programming this node ({}): remove it (kubectl -n kube-system delete daemonset kube-proxy) and clear its rules on each node (kube-proxy --cleanup), or both translate Services",
                seen.join(", ")
            ),
        };
    }
    if read.is_empty() {
        return Finding {
            check,
            level: Level::Skipped,
            message: "neither nft nor iptables is installed here: not checked".into(),
        };
    }
    Finding {
        check,
        level: Level::Ok,
        message: format!("no kube-proxy rules (read with {})", read.join(", ")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn line(point: &str, fstype: &str) -> String {
        format!("30 25 0:26 / {point} rw,nosuid - {fstype} {fstype} rw\n")
    }

    /// The container case: the first cgroup2 mount shows a child cgroup
    /// (it has `cgroup.type`), the host's hierarchy is mounted later. The
    /// old code took the first.
    #[test]
    fn the_hierarchy_root_wins_over_a_containers_own_cgroup() {
        let tmp = tempfile::tempdir().unwrap();
        let own = tmp.path().join("own");
        let host = tmp.path().join("host");
        for d in [&own, &host] {
            fs::create_dir(d).unwrap();
            fs::write(d.join("cgroup.procs"), "").unwrap();
        }
        fs::write(own.join("cgroup.type"), "domain\n").unwrap();
        let info = line(own.to_str().unwrap(), "cgroup2")
            + &line("/proc", "proc")
            + &line(host.to_str().unwrap(), "cgroup2");
        assert_eq!(cgroup_root(None, &info).unwrap(), host);
        // Given explicitly, a child cgroup is honoured.
        assert_eq!(cgroup_root(Some(&own), &info).unwrap(), own);
        // Only the container's own: an error naming it and the fix.
        let only = line(own.to_str().unwrap(), "cgroup2");
        let e = cgroup_root(None, &only).unwrap_err().to_string();
        assert!(
            e.contains(own.to_str().unwrap()) && e.contains("--cgroup-root"),
            "{e}"
        );
        let e = cgroup_root(None, &line("/sys", "sysfs"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no cgroup2 file system"), "{e}");
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo(r"/a\040b\134c"), r"/a b\c");
        assert_eq!(unescape_mountinfo(r"/x\04"), r"/x\04");
    }

    #[test]
    fn conflist_ranges_and_wait_for() {
        let net = CniNetwork {
            ranges: PodRanges::Cidrs(vec![
                "10.244.1.0/24".parse().unwrap(),
                "fd00:10:244:1::/64".parse().unwrap(),
            ]),
            state_dir: None,
            wait_for_agent: Some("/sys/fs/bpf/ferry".into()),
        };
        let c = net.conflist();
        assert_eq!(c["plugins"][0]["type"], "ferry-cni");
        assert_eq!(
            c["plugins"][0]["ipam"]["ranges"],
            json!([[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:10:244:1::/64"}]])
        );
        assert!(c["plugins"][0].get("dataDir").is_none());
        let wait = c["plugins"][0]["dataplane"]["waitFor"].as_array().unwrap();
        assert!(!wait.is_empty());
        for p in wait {
            let p = p.as_str().unwrap();
            assert!(
                p.starts_with("/sys/fs/bpf/ferry/links/") && p.contains("{hostVeth}"),
                "{p}"
            );
        }
    }

    #[test]
    fn checks_name_the_fix_for_what_is_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let s = CheckSettings {
            kernel_btf: tmp.path().join("vmlinux"),
            cgroup_root: Some(tmp.path().to_owned()),
            bpffs_root: tmp.path().join("bpf/ferry"),
            service_proxy: true,
            tool_path: Some(tmp.path().into()),
        };
        let f = run_checks(&s);
        let by = |name: &str| f.iter().find(|x| x.check == name).unwrap().clone();
        assert_eq!(by("kernel BTF").level, Level::Warning);
        assert!(by("kernel BTF").message.contains("CONFIG_DEBUG_INFO_BTF"));
        assert_eq!(by("cgroup v2").level, Level::Error);
        assert!(by("cgroup v2").message.contains("--cgroup-root"));
        assert_eq!(by("bpffs").level, Level::Error);
        assert!(by("bpffs").message.contains("ferry-agent init"));
        assert_eq!(by("kube-proxy").level, Level::Skipped);
        // Without the service proxy, cgroup and bpffs do not matter.
        let f = run_checks(&CheckSettings {
            service_proxy: false,
            ..s
        });
        assert!(
            f.iter()
                .all(|x| x.check != "bpffs" && x.check != "cgroup v2")
        );
    }

    #[test]
    fn install_is_atomic_idempotent_and_exact() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        let out = install_file(&dir, "f", 0o755, || Ok(b"one".to_vec())).unwrap();
        assert_eq!(out, Outcome::Written);
        let meta = fs::metadata(dir.join("f")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o755);
        let out = install_file(&dir, "f", 0o755, || Ok(b"one".to_vec())).unwrap();
        assert_eq!(out, Outcome::Unchanged);
        // A mode changed behind its back is repaired.
        fs::set_permissions(dir.join("f"), fs::Permissions::from_mode(0o700)).unwrap();
        let out = install_file(&dir, "f", 0o755, || Ok(b"one".to_vec())).unwrap();
        assert_eq!(out, Outcome::Written);
        // A leftover temporary file from an interrupted run is replaced.
        fs::write(dir.join(".f.ferry-tmp"), "partial").unwrap();
        install_file(&dir, "f", 0o755, || Ok(b"two".to_vec())).unwrap();
        assert_eq!(fs::read(dir.join("f")).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("f")]);
    }
}
