//! ferry-node: Ferry's node runtime, a kubelet for pods as processes.
//!
//! **What it owns:** the pods bound to its node (`spec.nodeName`): their
//! network namespaces (files under `--state-dir/netns`, wired by the CNI
//! plugins of `--cni-conf-dir`), their processes, their cgroups (under
//! `--cgroup-root`, `pod<uid>/<container>`), their mount and UTS
//! namespaces, their logs, state and volumes (emptyDir, configMap, secret,
//! downwardAPI, projected with ServiceAccount tokens it requests and
//! renews) under `--state-dir`, their status; the
//! hostPath paths pods ask for, under `--host-root` or a `--host-path-map`
//! target (made with the `...OrCreate` types, never removed); its own
//! Node object and its Lease `kube-node-lease/<node>`.
//!
//! **What it must never touch:** other nodes' pods; routes between nodes
//! and BPF programs and maps (ferry-agent's); the host's root namespaces
//! (a pod's mounts, volumes included, happen only in the container's own
//! mount namespace: the node's mount table never changes, and a missing
//! mount point is made in a tmpfs of the container's, never on the node;
//! an image root's files are overlays there too, the image root only
//! read; its hostname only in its own UTS namespace); host paths outside
//! `--host-root` and the maps (a symlink leading out is refused); the root
//! cgroup or any cgroup outside `--cgroup-root`.
//!
//! Modules: [`registration`] (Node, Lease), [`supervisor`] (the pod watch
//! and cleanup at start), [`pod`] (one pod's worker: lifecycle, probes,
//! status), [`sandbox`] (netns + CNI), [`process`] (a container as a
//! process; the hidden `container-init` mode), [`cgroup`], [`env`],
//! [`etc_files`], [`images`] (the catalogue), [`image_layer`] (an image
//! root's files over the node's), [`probe`], [`status`],
//! [`events`], [`state`] (the state directory's layout), [`time`];
//! [`kubelet_api`] (the node API the apiserver proxies `kubectl logs` and
//! `exec` to), [`logs`] (CRI-format container logs, written and read),
//! [`exec`] (a command in a running container) and [`channel`] (exec's
//! WebSocket channel protocol), [`port_forward`] (`kubectl port-forward`:
//! TCP into a pod's network namespace) over [`spdy`] (SPDY/3.1 framing);
//! [`volumes`] (a pod's volumes: [`volumes::host_path`],
//! [`volumes::sources`] (what configMap, secret, downwardAPI and projected
//! volumes hold), [`volumes::token`] (ServiceAccount tokens: TokenRequest
//! and the kubelet's renewal rule), [`volumes::atomic_writer`], [`volumes::subpath`] (paths
//! that cannot leave their volume), [`volumes::mount`] and
//! [`volumes::mount_points`] (what the container's process mounts)).

pub mod cgroup;
pub mod channel;
pub mod env;
pub mod etc_files;
pub mod events;
pub mod exec;
pub mod image_layer;
pub mod images;
pub mod kubelet_api;
pub mod logs;
pub mod pod;
pub mod port_forward;
pub mod probe;
pub mod process;
pub mod registration;
pub mod sandbox;
pub mod spdy;
pub mod state;
pub mod status;
pub mod supervisor;
pub mod time;
pub mod volumes;

use std::net::IpAddr;
use std::path::PathBuf;

/// What every pod worker shares.
pub struct Runtime {
    pub client: kube::Client,
    pub node_name: String,
    pub node_ips: Vec<IpAddr>,
    pub network: sandbox::Network,
    pub state: state::StateDir,
    pub cgroup_root: PathBuf,
    pub dns: etc_files::DnsSettings,
    pub images: images::Catalogue,
    pub tools: process::Tools,
    pub events: events::Recorder,
    /// Where hostPath volumes are (`--host-root`, `--host-path-map`).
    pub host_paths: volumes::host_path::HostPaths,
}
