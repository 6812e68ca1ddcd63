//! The processes `ferry up` runs itself and what they are started with:
//! where the binaries are, the apiserver's and each node runtime's command
//! line, and the host's kubeconfig. Ferry's own node components (the agent,
//! ferry-cni, ferry-dns) are not among them: the nodes run them from
//! `deploy/` ([`crate::addons`]).

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use ferry_testbed::{Netns, Process};

use crate::{Error, Result};

/// The cluster DNS address, kube's conventional one in the default service
/// range.
pub const CLUSTER_DNS: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The cluster DNS address in the IPv6 service range.
pub const CLUSTER_DNS_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0xa);
/// The service ranges per family (the second: kind's IPv6 default shape).
pub const SERVICE_CIDRS: [&str; 2] = ["10.96.0.0/16", "fd00:10:96::/112"];
/// The cluster (pod) CIDRs per family: a /24 and a /64 per node.
pub const CLUSTER_CIDRS: [&str; 2] = ["10.244.0.0/16", "fd00:10:244::/56"];
/// The cluster's DNS zone.
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// The port the apiserver serves on, inside the cluster.
pub const API_PORT: u16 = 6443;
/// Where each agent serves kube-proxy's `/healthz`.
pub const AGENT_HEALTHZ_PORT: u16 = 10256;
/// The token file the apiserver presents to the nodes' API (`kubectl
/// logs`/`exec`), in the apiserver's data dir; the apiserver creates it
/// (mode 0600) before it writes its kubeconfig, which the nodes use.
pub const KUBELET_TOKEN_FILE: &str = "kubelet-token";

/// Where the component binaries are: one directory (cargo's target
/// directory, or wherever they were installed together).
#[derive(Debug, Clone)]
pub struct Binaries {
    dir: PathBuf,
}

/// Every binary a cluster runs.
pub const COMPONENTS: &[&str] = &[
    "ferry-apiserver",
    "ferry-agent",
    "ferry-node",
    "ferry-cni",
    "ferry-dns",
];

impl Binaries {
    /// The binaries in `dir`; fails naming the first one missing.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Result<Self> {
        let bins = Self { dir: dir.into() };
        for name in COMPONENTS {
            let path = bins.path(name);
            if !path.is_file() {
                return Err(Error::Config(format!(
                    "{} is missing: build the workspace's binaries (`cargo build --release`) or set --bin-dir to where they are",
                    path.display()
                )));
            }
        }
        Ok(bins)
    }

    /// The directory of the running executable (cargo puts every binary of
    /// the workspace there).
    pub fn beside_current_exe() -> Result<Self> {
        let exe = std::env::current_exe().map_err(|e| Error::io("finding this executable", e))?;
        let dir = exe
            .parent()
            .ok_or_else(|| Error::Config(format!("{} has no directory", exe.display())))?;
        Self::in_dir(dir)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).to_string_lossy().into_owned()
    }
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn join(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// One process of the cluster: what runs where, and its log.
#[derive(Debug, Clone)]
pub struct Spec {
    /// `apiserver`, `agent`, `node`, `dns`.
    pub name: &'static str,
    /// The Kubernetes node it serves, if any.
    pub node: Option<String>,
    pub netns: Netns,
    pub argv: Vec<String>,
    pub log: PathBuf,
}

impl Spec {
    /// Starts it in its namespace, its output appended to its log.
    pub fn start(&self) -> Result<Process> {
        Ok(self.netns.spawn_logged(&self.argv, &self.log)?)
    }

    /// `agent on ferry-node1`.
    pub fn label(&self) -> String {
        match &self.node {
            Some(n) => format!("{} on {n}", self.name),
            None => self.name.to_owned(),
        }
    }
}

/// ferry-apiserver in the underlay namespace, all controllers on (node IPAM
/// hands out the nodes' pod CIDRs).
pub fn apiserver(
    underlay: &Netns,
    bins: &Binaries,
    data_dir: &Path,
    bind: SocketAddr,
    kubeconfig_out: &Path,
    log: &Path,
) -> Spec {
    Spec {
        name: "apiserver",
        node: None,
        netns: underlay.clone(),
        log: log.to_owned(),
        argv: vec![
            bins.arg("ferry-apiserver"),
            "--data-dir".into(),
            s(data_dir),
            "--bind".into(),
            bind.to_string(),
            "--kubeconfig-out".into(),
            s(kubeconfig_out),
            "--kubelet-token-file".into(),
            s(&data_dir.join(KUBELET_TOKEN_FILE)),
        ],
    }
}

/// The name prefix of the pods' host-side veths, as ferry-cni names them
/// (`ferry_cni::wiring::HOST_VETH_PREFIX`): `deploy/`'s
/// `FERRY_AGENT_POD_DEVICES`.
pub const POD_DEVICE_PREFIX: &str = "fer";

/// Where the agent serves flow events, under its node's host root
/// (`deploy/`'s agent mounts the node's `/run/ferry`; the agent's default
/// `--observe-socket`).
pub const OBSERVE_SOCKET: &str = "run/ferry/observe.sock";

/// What the node runtime of one node is started with.
#[derive(Debug, Clone)]
pub struct NodeRuntime<'a> {
    pub kubeconfig: &'a Path,
    pub node_name: &'a str,
    /// One per family, the primary first.
    pub node_ips: &'a [IpAddr],
    /// The cluster DNS addresses, the primary family first.
    pub cluster_dns: &'a [IpAddr],
    pub cgroup_root: &'a Path,
    /// The token the apiserver presents to the node's API.
    pub kubelet_token: &'a Path,
    pub state_dir: &'a Path,
    /// The node's own file system for hostPath volumes (`--host-root`):
    /// the CNI directories the DaemonSet installs into live there.
    pub host_root: &'a Path,
    /// hostPaths that are real paths instead (`--host-path-map`).
    pub host_path_map: &'a [(String, PathBuf)],
    /// The image catalogues (`--images`), later ones winning.
    pub images: &'a [PathBuf],
    /// The resolv.conf of `dnsPolicy: Default` pods (`--resolv-conf`).
    pub resolv_conf: &'a Path,
}

/// The CNI directories under a node's host root, as `deploy/`'s
/// `install-cni` fills them.
pub fn cni_dirs(host_root: &Path) -> (PathBuf, PathBuf) {
    (
        host_root.join("opt/cni/bin"),
        host_root.join("etc/cni/net.d"),
    )
}

/// ferry-node in its node's namespace.
pub fn node_runtime(node: &Netns, bins: &Binaries, rt: &NodeRuntime<'_>, log: &Path) -> Spec {
    let (cni_bin, cni_conf) = cni_dirs(rt.host_root);
    let mut more = Vec::new();
    for (host, real) in rt.host_path_map {
        more.push("--host-path-map".to_owned());
        more.push(format!("{host}={}", real.display()));
    }
    for file in rt.images {
        more.push("--images".to_owned());
        more.push(s(file));
    }
    Spec {
        name: "node",
        node: Some(rt.node_name.to_owned()),
        netns: node.clone(),
        log: log.to_owned(),
        argv: vec![
            bins.arg("ferry-node"),
            "--kubeconfig".into(),
            s(rt.kubeconfig),
            "--node-name".into(),
            rt.node_name.into(),
            "--node-ip".into(),
            join(rt.node_ips),
            "--cni-conf-dir".into(),
            s(&cni_conf),
            "--cni-bin-dir".into(),
            s(&cni_bin),
            "--cgroup-root".into(),
            s(rt.cgroup_root),
            "--state-dir".into(),
            s(rt.state_dir),
            "--cluster-dns".into(),
            join(rt.cluster_dns),
            "--cluster-domain".into(),
            CLUSTER_DOMAIN.into(),
            "--kubelet-token-file".into(),
            s(rt.kubelet_token),
            "--host-root".into(),
            s(rt.host_root),
            "--resolv-conf".into(),
            s(rt.resolv_conf),
        ]
        .into_iter()
        .chain(more)
        .collect(),
    }
}

/// A copy of the apiserver's kubeconfig pointing at `server` instead (the
/// apiserver's certificate holds 127.0.0.1 and localhost).
pub fn rewrite_kubeconfig(from: &Path, to: &Path, server: &str) -> Result<()> {
    let text = fs::read_to_string(from)
        .map_err(|e| Error::io(format!("reading {}", from.display()), e))?;
    let mut replaced = false;
    let out: Vec<String> = text
        .lines()
        .map(|line| match line.trim_start().strip_prefix("server:") {
            Some(_) => {
                replaced = true;
                let indent = &line[..line.len() - line.trim_start().len()];
                format!("{indent}server: {server}")
            }
            None => line.to_owned(),
        })
        .collect();
    if !replaced {
        return Err(Error::Config(format!(
            "{} names no server to rewrite",
            from.display()
        )));
    }
    let staged = to.with_extension("tmp");
    fs::write(&staged, out.join("\n") + "\n")
        .map_err(|e| Error::io(format!("writing {}", staged.display()), e))?;
    fs::rename(&staged, to).map_err(|e| Error::io(format!("writing {}", to.display()), e))
}

/// A DNS query for `name` (recursion desired) with id `id`: type A, or
/// AAAA when `v6`.
pub fn dns_query(id: u16, name: &str, v6: bool) -> Vec<u8> {
    let mut q = Vec::with_capacity(name.len() + 18);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        let len = u8::try_from(label.len()).unwrap_or(63).min(63);
        q.push(len);
        q.extend_from_slice(label.as_bytes().get(..usize::from(len)).unwrap_or_default());
    }
    q.extend_from_slice(&[0, 0, if v6 { 28 } else { 1 }, 0, 1]);
    q
}

/// Whether `answer` answers query `id` with NOERROR and at least one record.
pub fn dns_answered(id: u16, answer: &[u8]) -> bool {
    answer.len() >= 12
        && answer[..2] == id.to_be_bytes()
        && answer[2] & 0x80 != 0
        && answer[3] & 0x0f == 0
        && u16::from_be_bytes([answer[6], answer[7]]) > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_device_prefix_is_ferry_cnis() {
        assert_eq!(POD_DEVICE_PREFIX, ferry_cni::wiring::HOST_VETH_PREFIX);
    }

    #[test]
    fn kubeconfig_server_is_rewritten_and_nothing_else() {
        let dir = std::env::temp_dir().join(format!("ferry-cluster-kc-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        let from = dir.join("in");
        let to = dir.join("out");
        fs::write(
            &from,
            "clusters:\n- name: ferry\n  cluster:\n    server: https://172.31.0.250:6443\n    certificate-authority-data: QQ==\n",
        )
        .expect("write");
        rewrite_kubeconfig(&from, &to, "https://127.0.0.1:7443").expect("rewrite");
        let out = fs::read_to_string(&to).expect("read");
        assert!(
            out.contains("    server: https://127.0.0.1:7443\n"),
            "{out}"
        );
        assert!(out.contains("certificate-authority-data: QQ=="));
        assert!(!out.contains("172.31.0.250"));
        fs::write(&from, "nothing: here\n").expect("write");
        assert!(rewrite_kubeconfig(&from, &to, "x").is_err());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn dns_query_encodes_labels_and_answers_are_checked() {
        let q = dns_query(0x1234, "kubernetes.default.svc.cluster.local.", false);
        assert_eq!(
            &dns_query(1, "a.b", true)[..][dns_query(1, "a.b", true).len() - 4..],
            &[0, 28, 0, 1]
        );
        assert_eq!(&q[..2], &[0x12, 0x34]);
        assert_eq!(q[12], 10);
        assert_eq!(&q[13..23], b"kubernetes");
        assert_eq!(&q[q.len() - 5..], &[0, 0, 1, 0, 1]);
        let mut answer = q.clone();
        answer[2] |= 0x80;
        answer[7] = 1;
        assert!(dns_answered(0x1234, &answer));
        assert!(!dns_answered(0x1235, &answer));
        answer[3] |= 3; // NXDOMAIN
        assert!(!dns_answered(0x1234, &answer));
    }
}
