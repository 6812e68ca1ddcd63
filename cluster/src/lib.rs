//! `ferry up`: a whole Ferry cluster on one machine, in network namespaces,
//! with no container engine and no VM.
//!
//! A cluster is a testbed [`World`](ferry_testbed::World) (the same netns
//! topology every integration test builds: an underlay bridge in a namespace
//! of its own, N node namespaces on it) with the real components started in
//! it: `ferry-apiserver` (and its controllers) in the underlay namespace, and
//! on every node `ferry-node` (the node runtime: pods as processes in network
//! namespaces, with a child cgroup, bpffs directory and host root of the
//! node's own). Ferry's own components are installed as on any cluster
//! ([`addons`]): `deploy/`'s DaemonSet runs `ferry-agent` (routes and the
//! eBPF service proxy) on every node and installs `ferry-cni`, and its
//! Deployment runs `ferry-dns` behind the cluster DNS address, all from the
//! local image ([`image`]). [`Cluster::up`] builds it and returns once it is
//! usable; dropping the [`Cluster`] takes everything down again.
//!
//! The host reaches the cluster through [`forward`]: the apiserver and every
//! NodePort are published on the host's loopback by plain sockets, so
//! `kubectl` and `curl http://localhost:30000/` work with no address, route
//! or link added to the host; `--host-access route` opts into a link and
//! routes instead ([`host_route`]). Inside, [`underlay`] routes each node's pod
//! CIDRs via the node in the underlay namespace, so pods reach the
//! apiserver and its answers find them.
//!
//! The `ferry` binary runs a cluster in a detached supervisor process
//! ([`state`] holds what `ferry status` and `ferry down` find of it).
//!
//! **What it owns:** the world's namespaces and everything in them, the
//! nodes' cgroups and bpffs directories (named with the world's prefix), the
//! cluster's data directory and its state directory under [`state::RUN_ROOT`],
//! and the loopback listeners it publishes. **What it must never touch:**
//! the host's network configuration (no address, route, link, sysctl or
//! firewall rule in the root namespace, save the one link and its routes
//! that `--host-access route` asks for), the root cgroup, and anything of
//! another cluster.

pub mod addons;
mod cluster;
pub mod components;
pub mod forward;
pub mod host_route;
pub mod image;
pub mod state;
pub mod underlay;

pub use cluster::{Cluster, ClusterInfo, HostAccess, IpFamily, NodeInfo, Settings};

/// Errors of building and running a cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Testbed(#[from] ferry_testbed::Error),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
    #[error("{what} not ready within {secs} s{detail}")]
    NotReady {
        what: String,
        secs: u64,
        detail: String,
    },
    #[error("talking to the apiserver: {0}")]
    Api(#[from] kube::Error),
}

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
