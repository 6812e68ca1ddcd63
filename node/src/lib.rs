//! ferry-node: Ferry's node runtime, a kubelet for pods as processes.
//!
//! **What it owns:** the pods bound to its node (`spec.nodeName`): their
//! network namespaces (files under `--state-dir/netns`, wired by the CNI
//! plugins of `--cni-conf-dir`), their processes, their cgroups (under
//! `--cgroup-root`, `pod<uid>/<container>`), their mount and UTS
//! namespaces, their logs and state under `--state-dir`, their status; its
//! own Node object and its Lease `kube-node-lease/<node>`.
//!
//! **What it must never touch:** other nodes' pods; routes between nodes
//! and BPF programs and maps (ferry-agent's); the host's root namespaces
//! (a pod's mounts happen only in the pod's own mount namespace, its
//! hostname only in its own UTS namespace); the root cgroup or any cgroup
//! outside `--cgroup-root`.
//!
//! Modules: [`registration`] (Node, Lease), [`supervisor`] (the pod watch
//! and cleanup at start), [`pod`] (one pod's worker: lifecycle, probes,
//! status), [`sandbox`] (netns + CNI), [`process`] (a container as a
//! process; the hidden `container-init` mode), [`cgroup`], [`env`],
//! [`etc_files`], [`images`] (the catalogue), [`probe`], [`status`],
//! [`events`], [`state`] (the state directory's layout), [`time`];
//! [`kubelet_api`] (the node API the apiserver proxies `kubectl logs` and
//! `exec` to), [`logs`] (CRI-format container logs, written and read),
//! [`exec`] (a command in a running container) and [`channel`] (exec's
//! WebSocket channel protocol), [`port_forward`] (`kubectl port-forward`:
//! TCP into a pod's network namespace) over [`spdy`] (SPDY/3.1 framing).

pub mod cgroup;
pub mod channel;
pub mod env;
pub mod etc_files;
pub mod events;
pub mod exec;
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
}
