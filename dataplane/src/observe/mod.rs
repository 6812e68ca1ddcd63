//! Flow observability, as `hubble observe` gives it: the programs' flow
//! events (`ferry_ebpf_common::observe`) read from their ring buffer while
//! someone watches, named with the cluster's pods and policies, filtered,
//! and streamed to `ferry-agent observe` over a local socket.
//!
//! - [`event`]: one event decoded from the ring, the record a watcher gets
//!   (JSON), its one-line text form, and the filters.
//! - [`names`]: the addresses, policy numbers and policy sets the records
//!   name, published by the policy loop only while someone watches.
//! - [`server`]: the agent's side: the socket, the ring reader that runs
//!   only while a watcher is connected (and switches the programs' events
//!   on and off), and the limits on what one watcher can make it do.
//! - [`client`]: the command's side.
//!
//! Owns nothing in the maps but the switch (`FERRY_OBSERVE`); never writes
//! a map a verdict reads.

pub mod client;
pub mod event;
pub mod names;
pub mod server;
