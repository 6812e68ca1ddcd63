//! ferry-daemon: what Ferry's node daemons (`ferry-dns`, `ferry-agent`) share
//! so that no client, careless or hostile, can stop them.
//!
//! It owns:
//! - [`listen`]: accepting connections without ever spinning
//!   ([`AcceptBackoff`], [`accept`]: on an error such as `EMFILE`, sleep 5 ms
//!   doubling to 1 s as Go's net/http does, log at most once a second with a
//!   count of what was suppressed), a cap on open connections
//!   ([`ConnLimit`]), and raising the soft open-file limit to the hard one
//!   as Go's runtime does ([`raise_nofile_limit`]).
//! - [`logging`]: [`LogLimit`](logging::LogLimit), at most one line per
//!   interval for an event a client can repeat at will.
//! - [`http`]: the daemons' small HTTP/1 servers (health, readiness,
//!   metrics) with a header-read timeout, an idle timeout, a connection cap
//!   and a cap on request size.
//! - [`stream`]: [`Observed`](stream::Observed), a stream that tells when
//!   bytes move, for timeouts timed from the last traffic.
//! - `watch` (cargo feature `watch`): [`Decoded`](watch::Decoded), a wrapper
//!   that lets kube-rs's watcher keep going past an object it cannot decode,
//!   and the counter of such objects.
//! - `allocator` (cargo feature `jemalloc`): [`jemalloc!`], which makes
//!   jemalloc, with settings that hand memory back, a daemon's allocator.
//!
//! It must not touch anything a daemon owns: no routes, no BPF state, no
//! writes to the API, no process-wide state other than the open-file limit
//! and the allocator when asked. Everything here is plain tokio and hyper
//! (kube only behind `watch`), so any server, the apiserver's TLS listener
//! included, can reuse the accept back-off and the cap.

#[cfg(feature = "jemalloc")]
pub mod allocator;
pub mod http;
pub mod listen;
pub mod logging;
pub mod stream;
#[cfg(feature = "watch")]
pub mod watch;

pub use listen::{
    AcceptBackoff, ConnLimit, ConnPermit, accept, accept_limited, raise_nofile_limit,
};
