//! Ferry's network-namespace testbed: the world every integration test of
//! the project runs in.
//!
//! A [`World`] is N nodes with M pods each, all network namespaces made by
//! the test:
//! - an **underlay**: a bridge in a namespace of its own (`<prefix>-ul`),
//!   each node namespace (`<prefix>-n<i>`) joined to it by a veth with a
//!   node address per family;
//! - **nodes** with forwarding on, `lo` up, and a *sink* veth pair holding the
//!   default routes, so unrouted traffic times out inside the node;
//! - **pods** (`<prefix>-n<i>-p<j>`), each wired by a CNI plugin run exactly
//!   as a runtime runs it ([`Cni`]), from inside its node's namespace;
//! - optional routes between nodes' pod CIDRs ([`World::route_pod_cidrs`]),
//!   which the Ferry agent will later program itself.
//!
//! [`Netns`] runs commands ([`Netns::exec`]), long-running processes
//! ([`Netns::spawn`], killed on drop) and Rust closures on a thread that
//! entered the namespace ([`Netns::in_netns`]). `ferry-netexec`, the test
//! server shipped as a binary of this crate, is started with
//! [`start_netexec`] and queried with [`http_get`] and [`udp_request`].
//!
//! Every world has a unique prefix (`ft` + 6 characters, so interface and
//! namespace names stay short) and a state directory under
//! [`STATE_ROOT`] naming its owner process. Agents under test get a child
//! cgroup and a bpffs directory of their own ([`AgentHooks`]). Dropping the world, also during
//! a panic, runs CNI DEL for its pods and deletes everything it made;
//! [`sweep`] (run whenever a world is created) removes what dead runs left.
//!
//! **What it owns:** the namespaces named with its prefixes (and the links,
//! addresses, routes and processes inside them) and its directories under
//! [`STATE_ROOT`]. **What it must never touch:** the host's root network
//! namespace — no links, addresses, routes, sysctls or firewall rules are
//! ever created or changed there (veths are created inside the underlay
//! namespace with their peer made directly in the node's), and no
//! namespace or process it did not make, except leftovers of its own dead
//! runs. It needs root; tests call [`skip_if_not_root`] first.

mod client;
mod cmd;
mod cni;
mod controlplane;
mod error;
mod hooks;
mod names;
mod netns;
pub mod packet;
pub mod pressure;
mod world;

pub use client::{
    NETEXEC_HTTP_PORT, NETEXEC_READY, NETEXEC_UDP_PORT, http_get, http_get_full, netexec_binary,
    retry, start_netexec, udp_request,
};
pub use cmd::{output as command_output, output_text};
pub use cni::{
    Attachment, CNI_TIMEOUT, Cni, CniCall, CniCommand, REFERENCE_PLUGINS, host_local_ranges,
    result_ips, target_profile_dir,
};
pub use controlplane::{ControlPlane, binary, store_spoiled_copy};
pub use error::{Error, Result};
pub use hooks::{AgentHooks, BPFFS, cgroup2_root};
pub use names::{
    Claimed, PREFIX_TAG, STATE_ROOT, SweepReport, prefix_of, sweep, unique_prefix, write_fake_owner,
};
pub use netns::{EXEC_TIMEOUT, NETNS_DIR, Netns, Process, list as list_netns};
pub use world::{
    MAX_NODES, Node, Pod, SINK_IFS, UNDERLAY_BRIDGE, UNDERLAY_IF, World, WorldBuilder,
    default_pod_cidrs,
};

/// Re-exported so that tests can name CIDRs without their own dependency.
pub use ipnet;

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// For the first line of a test that needs root: prints `SKIP: needs root`
/// and returns true when not root.
///
/// ```no_run
/// if ferry_testbed::skip_if_not_root() {
///     return;
/// }
/// ```
pub fn skip_if_not_root() -> bool {
    if is_root() {
        false
    } else {
        eprintln!("SKIP: needs root");
        true
    }
}

#[cfg(test)]
mod tests {
    fn send_sync<T: Send + Sync>() {}

    #[test]
    fn handles_are_send_and_sync() {
        send_sync::<crate::World>();
        send_sync::<crate::Cni>();
        send_sync::<crate::Netns>();
        send_sync::<crate::Process>();
        send_sync::<crate::Error>();
    }
}
