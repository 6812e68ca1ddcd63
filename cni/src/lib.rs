//! `ferry-cni`: Ferry's CNI plugin (spec 1.1.0; results in 0.3.0, 0.3.1,
//! 0.4.0, 1.0.0 and 1.1.0). A container runtime runs it for every pod
//! attachment (ADD, DEL, CHECK) and for GC, STATUS and VERSION.
//!
//! What this crate owns, in the network namespace it runs in (the node's)
//! and in the pod's:
//! - one veth pair per attachment: the host end `fer<11 hex digits>` (see
//!   [`wiring::host_veth_name`]), with a `/32` and `/128` route and a
//!   permanent neighbour entry per pod address, and the per-interface
//!   sysctls of that host end; the pod end named `CNI_IFNAME` with the pod's
//!   addresses, link-local gateways (169.254.1.1, fe80::1) and routes
//!   ([`wiring`] documents the model);
//! - address reservations under the IPAM `dataDir` in host-local's format,
//!   and cached results under the plugin `dataDir` ([`ipam::store`],
//!   [`cache`]).
//!
//! What it must not touch: anything else in the node's namespace — no
//! addresses on node interfaces, no routes but its own per-pod ones, no
//! global sysctls (enabling `ip_forward` is the node's job), no iptables or
//! BPF state (the agent's, in `dataplane/`) — and it never writes to the
//! Kubernetes API (it only reads its Node's podCIDRs, and only when the IPAM
//! config has no ranges).
//!
//! Conventions: stdout carries exactly one JSON document (the result, the
//! VERSION answer or the error); logs go to stderr through `tracing`. The
//! binary stays small and fast: no async runtime except current-thread ones
//! for netlink and for the optional API lookup. Namespace work runs on
//! dedicated threads ([`netns`]); the main thread never calls setns(2).
//! Nothing a caller hands it is read without a bound or opened in a way
//! that can block ([`input`]), and every name is validated before anything
//! is reserved or wired ([`env`], [`config`]).

pub mod cache;
pub mod config;
pub mod env;
pub mod error;
pub mod input;
pub mod ipam;
pub mod netlink;
pub mod netns;
pub mod plugin;
pub mod types;
pub mod version;
pub mod wiring;

pub use error::{Error, Result};

/// Environment variable naming a point at which the plugin aborts, as if
/// killed there. Tests use it to leave the state a crash leaves
/// (`after-reserve`: addresses reserved, nothing wired; `after-veth`: the
/// veth pair exists, the pod end unconfigured).
pub const CRASH_AT_ENV: &str = "FERRY_CNI_CRASH_AT";

/// Aborts the process (no unwinding, no cleanup) when [`CRASH_AT_ENV`]
/// names `point`.
pub fn crash_point(point: &str) {
    if std::env::var(CRASH_AT_ENV).is_ok_and(|p| p == point) {
        eprintln!("ferry-cni: {CRASH_AT_ENV}={point}: aborting");
        std::process::abort();
    }
}
