//! Ferry's node agent (`ferry-agent`): everything a node does with what the
//! Kubernetes API says. It programs the routes that join the nodes' pod
//! CIDRs (direct routing or a VXLAN overlay), and it is the kube-proxy
//! replacement: it loads Ferry's eBPF programs, attaches them to its cgroup
//! and keeps their service maps in step with Services and EndpointSlices.
//!
//! It enforces NetworkPolicy on the pods' devices ([`policy`]) and streams
//! flow events to `ferry-agent observe` over a local socket ([`observe`]).
//!
//! Before it runs on a node ([`node_setup`]): `ferry-agent init` mounts
//! bpffs, `ferry-agent install-cni` puts ferry-cni and its network config
//! (`05-ferry.conflist`) into the host's CNI directories, and the checks of
//! `ferry-agent check` (kernel BTF, the cgroup2 hierarchy's root, bpffs, a
//! kube-proxy still programming the node) run at every start; a failed one
//! stops the agent with the fix. The manifests that run it on a cluster are
//! in `deploy/`.
//!
//! It owns the routes it installs (marked with its own route protocol), the
//! `ferry.vxlan` device, every pin under its bpffs root, its TC filters on
//! the pods' devices and its observe socket. It must not create, address or
//! remove pod interfaces (the CNI plugin's), touch routes it did not
//! install, or cgroups other than the one it is given. For L2 announcement it owns its
//! `ferry-l2.*` Leases and packet sockets on `--devices` ([`announce`]).
//! `install-cni` owns `ferry-cni` in the CNI bin directory and
//! `05-ferry.conflist` in the config directory, nothing else there; `init`
//! mounts bpffs and no other file system.

pub mod announce;
pub mod bpf;
pub mod conntrack;
pub mod devices;
pub mod events;
pub mod inspect;
pub mod metrics;
pub mod node_setup;
pub mod nodes;
pub mod observe;
pub mod policy;
pub mod routing;
pub mod service;
pub mod sockets;
