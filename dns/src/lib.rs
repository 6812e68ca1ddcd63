//! ferry-dns: the cluster DNS server.
//!
//! It owns the answers for the cluster zone, built from Services,
//! EndpointSlices, Pods and Namespaces exactly as the Kubernetes DNS-based
//! service discovery specification (schema 1.1.0) and CoreDNS's `kubernetes`
//! plugin give them, and the forwarding of every other name to upstream
//! resolvers, with a cache and loop detection. It only reads the API: it never
//! writes objects, and it never touches the node's network configuration.
//! Every client-facing part is bounded (connections, timeouts, concurrent
//! upstream queries) through `ferry_daemon`, and an object from the API it
//! cannot decode is skipped, never a reason to stop syncing.
//!
//! - [`config`]: settings from a file and flags, validated.
//! - [`names`]: what a query name means inside the zone.
//! - [`index`]: the in-memory records, updated incrementally from watches.
//! - [`answer`]: the cluster zone's answers, from the index.
//! - [`watch`]: kube-rs watches feeding the index.
//! - [`forward`]: upstream forwarding, its cache and loop detection.
//! - [`server`]: the hickory-server request handler tying them together.
//! - [`tcp`]: DNS over TCP, accepted with a back-off and a connection cap.
//! - [`metrics`]: `/health`, `/ready` and `/metrics` with CoreDNS's names.

pub mod answer;
pub mod config;
pub mod forward;
pub mod index;
pub mod metrics;
pub mod names;
pub mod server;
pub mod tcp;
pub mod watch;
