//! The connections of the HTTPS front door, bounded so that no client can
//! hold the server or lock others out:
//!
//! - **Caps.** A connection is *pending* until one of its requests
//!   authenticates. At most `max_pending_connections` are pending: a new
//!   connection over that evicts the *oldest* pending one, so a flood of
//!   slow or half-open handshakes never locks out a real client, which
//!   completes its handshake in milliseconds. All connections together are
//!   capped at `max_connections` (pending ones are evicted first; when every
//!   slot is held by an authenticated client, new connections are refused).
//!   Both caps are lowered to what the open-file limit allows.
//! - **Timeouts** (kube-apiserver's `http.Server`: ReadHeaderTimeout 32 s,
//!   IdleTimeout 90 s). The TLS handshake, and then the first request's
//!   head, must each complete within `read_header_timeout`. With no request
//!   in flight a connection is closed after `idle_timeout`; on HTTP/1.1,
//!   once the first byte of a next request arrives, its head must complete
//!   within `read_header_timeout` (as Go's server does). A connection with a
//!   request in flight — a watch stream above all — is never cut by these.
//!   HTTP/2 connections get keep-alive pings, and idle ones a GOAWAY.
//!   hyper's own `header_read_timeout` is not used: it also times the wait
//!   for the next request on a kept-alive connection, which would close
//!   idle connections after the header timeout instead of the idle one.
//! - **Sizes.** Request heads (HTTP/1.1 buffer, HTTP/2 header list) are
//!   capped at `max_header_bytes` (kube-apiserver: 1 MiB), which also bounds
//!   the query string; HTTP/2 streams per connection at
//!   `http2_max_streams_per_connection`.
//! - **Plain HTTP** on the TLS port gets kube-apiserver's answer, 400
//!   "Client sent an HTTP request to an HTTPS server.", then the close.
//! - **Accept errors** (`EMFILE`...) back off 5 ms doubling to 1 s with
//!   rate-limited logs ([`ferry_daemon::accept`]).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_daemon::logging::LogLimit;
use ferry_daemon::stream::{Observed, Observer};
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;

use super::{Api, Body};

/// Connections open at once, pending and authenticated.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Connections that have not yet made an authenticated request.
pub const DEFAULT_MAX_PENDING_CONNECTIONS: usize = 512;
/// kube-apiserver's ReadHeaderTimeout.
pub const DEFAULT_READ_HEADER_TIMEOUT: Duration = Duration::from_secs(32);
/// kube-apiserver's IdleTimeout.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Go's HTTP/2 server default, which kube-apiserver keeps unless
/// `--http2-max-streams-per-connection` says otherwise.
pub const DEFAULT_HTTP2_MAX_STREAMS: u32 = 250;
/// kube-apiserver's MaxHeaderBytes.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 1024 * 1024;
/// Descriptors kept for everything but client connections (the store,
/// etcd clients, the token file, logs) when fitting the caps to the
/// open-file limit.
pub const RESERVED_FILES: u64 = 128;
/// The smallest read buffer hyper's HTTP/1 accepts.
const MIN_HEADER_BYTES: usize = 8 * 1024;
/// HTTP/2 keep-alive pings on a connection that received nothing for this
/// long; no answer within [`PING_TIMEOUT`] closes it.
const PING_INTERVAL: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(20);
/// TCP keep-alive probes, as Go's listeners (15 s).
const TCP_KEEPALIVE: Duration = Duration::from_secs(15);
/// How long an idle connection told to close (HTTP/2 GOAWAY) may take.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Go's answer to a plain HTTP request on a TLS port.
pub const PLAIN_HTTP_REPLY: &[u8] =
    b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

/// What one client may make the front door hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnLimits {
    /// `--max-connections`.
    pub max_connections: usize,
    /// `--max-pending-connections`.
    pub max_pending_connections: usize,
    /// `--read-header-timeout`: TLS handshake, then a request head.
    pub read_header_timeout: Duration,
    /// `--idle-timeout`: a connection with no request in flight.
    pub idle_timeout: Duration,
    /// `--http2-max-streams-per-connection`.
    pub http2_max_streams_per_connection: u32,
    /// Request line and headers (HTTP/2: the header list), bytes.
    pub max_header_bytes: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_pending_connections: DEFAULT_MAX_PENDING_CONNECTIONS,
            read_header_timeout: DEFAULT_READ_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            http2_max_streams_per_connection: DEFAULT_HTTP2_MAX_STREAMS,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
        }
    }
}

impl ConnLimits {
    /// Lowers the caps so connections never exhaust `open_files` (the
    /// soft RLIMIT_NOFILE, `None`: unlimited), keeping [`RESERVED_FILES`]
    /// for the rest; the pending cap never exceeds the total.
    pub fn fit_open_files(mut self, open_files: Option<u64>) -> Self {
        if let Some(limit) = open_files {
            let room = usize::try_from(limit.saturating_sub(RESERVED_FILES))
                .unwrap_or(usize::MAX)
                .max(1);
            if self.max_connections > room {
                tracing::warn!(
                    max_connections = self.max_connections,
                    open_files = limit,
                    lowered_to = room,
                    "--max-connections is above what the open-file limit allows; lowered"
                );
                self.max_connections = room;
            }
        }
        self.max_connections = self.max_connections.max(1);
        self.max_pending_connections = self.max_pending_connections.clamp(1, self.max_connections);
        self
    }
}

/// Parses a duration as kube flags take them: `32s`, `1m30s`, `500ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d: jiff::SignedDuration = s
        .trim()
        .parse()
        .map_err(|e| format!("{s:?} is not a duration such as 32s, 1m30s or 500ms: {e}"))?;
    let d = Duration::try_from(d).map_err(|_| format!("{s:?}: must not be negative"))?;
    if d.is_zero() {
        return Err(format!("{s:?}: must be more than zero"));
    }
    Ok(d)
}

/// At most one line a second about evictions or refusals, with how many
/// were left out.
fn log_limit() -> Mutex<LogLimit> {
    Mutex::new(LogLimit::new(Duration::from_secs(1)))
}

fn due(limit: &Mutex<LogLimit>) -> Option<u64> {
    limit
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .due(Instant::now())
}

/// Which connections hold a slot.
#[derive(Debug, Default)]
struct Slots {
    next_id: u64,
    /// Pending connections, oldest first.
    pending: BTreeMap<u64, Arc<Shared>>,
    authenticated: usize,
}

/// The caps, shared by the accept loop and every connection.
#[derive(Debug)]
struct Tracker {
    limits: ConnLimits,
    slots: Mutex<Slots>,
    evictions: Mutex<LogLimit>,
    refusals: Mutex<LogLimit>,
}

impl Tracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives a new connection a pending slot, evicting the oldest pending
    /// connection at a cap; `None`: refused, every slot is authenticated.
    fn admit(self: &Arc<Self>, make: impl FnOnce(u64) -> Arc<Shared>) -> Option<Registration> {
        let (shared, evicted) = {
            let mut s = self.lock();
            let total = s.pending.len() + s.authenticated;
            let mut evicted = None;
            if total >= self.limits.max_connections
                || s.pending.len() >= self.limits.max_pending_connections
            {
                match s.pending.pop_first() {
                    Some((_, oldest)) => evicted = Some(oldest),
                    None => {
                        drop(s);
                        if let Some(suppressed) = due(&self.refusals) {
                            tracing::warn!(
                                max_connections = self.limits.max_connections,
                                suppressed,
                                "every connection slot is held by an authenticated client; refusing new connections"
                            );
                        }
                        return None;
                    }
                }
            }
            let id = s.next_id;
            s.next_id += 1;
            let shared = make(id);
            s.pending.insert(id, shared.clone());
            (shared, evicted)
        };
        if let Some(old) = evicted {
            old.evict.notify_one();
            if let Some(suppressed) = due(&self.evictions) {
                tracing::warn!(
                    max_pending_connections = self.limits.max_pending_connections,
                    max_connections = self.limits.max_connections,
                    suppressed,
                    "connection cap reached: closing the oldest connection that has not authenticated"
                );
            }
        }
        Some(Registration {
            tracker: self.clone(),
            shared,
        })
    }

    /// Moves a pending connection to the authenticated ones.
    fn promote(&self, shared: &Shared) {
        let mut s = self.lock();
        if s.pending.remove(&shared.id).is_some() {
            s.authenticated += 1;
            shared.counted_authenticated.store(true, Ordering::Relaxed);
        }
    }
}

/// A connection's slot; dropping it frees the slot.
#[derive(Debug)]
struct Registration {
    tracker: Arc<Tracker>,
    shared: Arc<Shared>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut s = self.tracker.lock();
        if self.shared.counted_authenticated.load(Ordering::Relaxed) {
            s.authenticated = s.authenticated.saturating_sub(1);
        } else {
            s.pending.remove(&self.shared.id);
        }
    }
}

/// One connection's state, seen by its requests, its I/O and its watchdog.
#[derive(Debug)]
struct Shared {
    id: u64,
    tracker: std::sync::Weak<Tracker>,
    start: Instant,
    promoted: AtomicBool,
    counted_authenticated: AtomicBool,
    http1: AtomicBool,
    /// Requests whose response is not yet fully sent.
    in_flight: AtomicUsize,
    /// Requests that reached the handler.
    served: AtomicU64,
    /// When the connection last became idle (ms after `start`).
    idle_since: AtomicU64,
    /// When the first byte arrived after that, plus one (0: none yet);
    /// HTTP/1 only.
    first_read: AtomicU64,
    /// Wakes the watchdog when any of the above changes.
    changed: Notify,
    /// Fired when the cap evicts this connection.
    evict: Notify,
}

impl Shared {
    /// A new connection's state, counted by `tracker`, accepted at `start`.
    fn new(id: u64, tracker: &Arc<Tracker>, start: Instant, http1: bool) -> Arc<Self> {
        Arc::new(Self {
            id,
            tracker: Arc::downgrade(tracker),
            start,
            promoted: AtomicBool::new(false),
            counted_authenticated: AtomicBool::new(false),
            http1: AtomicBool::new(http1),
            in_flight: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            first_read: AtomicU64::new(0),
            changed: Notify::new(),
            evict: Notify::new(),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn becomes_idle(&self) {
        self.idle_since.store(self.now_ms(), Ordering::SeqCst);
        self.first_read.store(0, Ordering::SeqCst);
    }

    fn on_read(&self) {
        if self.http1.load(Ordering::Relaxed)
            && self.in_flight.load(Ordering::SeqCst) == 0
            && self
                .first_read
                .compare_exchange(0, self.now_ms() + 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            self.changed.notify_one();
        }
    }

    fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.served.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_one();
        InFlight(self.clone())
    }

    /// Resolves when the connection should close: no request in flight
    /// for the timeout that applies; returns why.
    async fn watchdog(&self, limits: &ConnLimits) -> Close {
        let header = u64::try_from(limits.read_header_timeout.as_millis()).unwrap_or(u64::MAX);
        let idle = u64::try_from(limits.idle_timeout.as_millis()).unwrap_or(u64::MAX);
        loop {
            if self.in_flight.load(Ordering::SeqCst) > 0 {
                self.changed.notified().await;
                continue;
            }
            let since = self.idle_since.load(Ordering::SeqCst);
            let (deadline, why) = if self.served.load(Ordering::SeqCst) == 0 {
                (since.saturating_add(header), Close::NoRequest)
            } else {
                match self.first_read.load(Ordering::SeqCst) {
                    0 => (since.saturating_add(idle), Close::Idle),
                    first => ((first - 1).saturating_add(header), Close::SlowHead),
                }
            };
            let now = self.now_ms();
            if now >= deadline {
                return why;
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(deadline - now)) => {}
                () = self.changed.notified() => {}
            }
        }
    }
}

/// Why the watchdog closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    NoRequest,
    SlowHead,
    Idle,
}

impl Close {
    fn reason(self) -> &'static str {
        match self {
            Self::NoRequest => "no request within the read-header timeout of the handshake",
            Self::SlowHead => "request head not completed within the read-header timeout",
            Self::Idle => "idle timeout",
        }
    }
}

/// A request in flight; dropped when its response is sent (or abandoned).
#[derive(Debug)]
struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        // Idle time is stamped before the count can reach zero, so the
        // watchdog never measures from a stale stamp.
        self.0.becomes_idle();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_one();
    }
}

/// The connection a request came on, in the request's extensions: the
/// authenticator marks it once a request authenticates.
#[derive(Debug, Clone)]
pub struct Conn(Arc<Shared>);

impl Conn {
    /// A request on this connection authenticated: it leaves the pending
    /// ones (it can no longer be evicted).
    pub fn authenticated(&self) {
        if !self.0.promoted.swap(true, Ordering::Relaxed)
            && let Some(tracker) = self.0.tracker.upgrade()
        {
            tracker.promote(&self.0);
        }
    }
}

/// A response body that keeps its request in flight until it is sent.
struct Tracked {
    inner: Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The TLS stream notes when bytes arrive (for the HTTP/1 header timeout
/// of a kept-alive connection's next request).
struct Arrivals(Arc<Shared>);

impl Observer for Arrivals {
    fn read(&self) {
        self.0.on_read();
    }
}

/// Whether the first bytes of a connection are an HTTP request line (the
/// prefixes Go's TLS server recognizes, and the other methods).
fn looks_like_http(head: &[u8; 5]) -> bool {
    matches!(
        head,
        b"GET /"
            | b"HEAD "
            | b"POST "
            | b"PUT /"
            | b"OPTIO"
            | b"PATCH"
            | b"DELET"
            | b"CONNE"
            | b"TRACE"
    )
}

/// Answers a plain HTTP request as kube-apiserver does, then closes
/// lingering briefly so the reply is not lost to a reset.
async fn answer_plain_http(mut tcp: TcpStream, deadline: tokio::time::Instant) {
    let mut head = [0u8; 5];
    if !matches!(
        tokio::time::timeout_at(deadline, tcp.read_exact(&mut head)).await,
        Ok(Ok(_))
    ) || !looks_like_http(&head)
    {
        return;
    }
    let linger = async {
        tcp.write_all(PLAIN_HTTP_REPLY).await?;
        tcp.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut drained = 0usize;
        while drained < 64 * 1024 {
            match tcp.read(&mut sink).await? {
                0 => break,
                n => drained += n,
            }
        }
        Ok::<_, io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), linger).await;
}

impl Api {
    /// Serves HTTPS on `listener` under `limits` until the task is dropped.
    pub(super) async fn serve_connections(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Arc<rustls::ServerConfig>,
        limits: ConnLimits,
    ) {
        let acceptor = TlsAcceptor::from(tls);
        let limits = Arc::new(limits);
        let tracker = Arc::new(Tracker {
            limits: (*limits).clone(),
            slots: Mutex::new(Slots::default()),
            evictions: log_limit(),
            refusals: log_limit(),
        });
        tracing::info!(
            max_connections = limits.max_connections,
            max_pending_connections = limits.max_pending_connections,
            read_header_timeout_ms = limits.read_header_timeout.as_millis() as u64,
            idle_timeout_ms = limits.idle_timeout.as_millis() as u64,
            http2_max_streams_per_connection = limits.http2_max_streams_per_connection,
            max_header_bytes = limits.max_header_bytes,
            "connection limits"
        );
        let mut backoff = ferry_daemon::AcceptBackoff::new("apiserver-https");
        loop {
            let (tcp, peer) = ferry_daemon::accept(&listener, &mut backoff).await;
            let start = Instant::now();
            let Some(registration) = tracker.admit(|id| Shared::new(id, &tracker, start, false))
            else {
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(
                &socket2::TcpKeepalive::new()
                    .with_time(TCP_KEEPALIVE)
                    .with_interval(TCP_KEEPALIVE),
            );
            let api = self.clone();
            let acceptor = acceptor.clone();
            let limits = limits.clone();
            tokio::spawn(async move {
                let shared = registration.shared.clone();
                tokio::select! {
                    () = shared.evict.notified() => {
                        tracing::debug!(%peer, "closing a connection that had not authenticated: connection cap reached");
                    }
                    () = api.connection(tcp, peer, acceptor, shared.clone(), &limits) => {}
                }
                drop(registration);
            });
        }
    }

    async fn connection(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        acceptor: TlsAcceptor,
        shared: Arc<Shared>,
        limits: &ConnLimits,
    ) {
        let deadline = tokio::time::Instant::now() + limits.read_header_timeout;
        // A TLS connection starts with a handshake record (0x16).
        let mut first = [0u8; 1];
        match tokio::time::timeout_at(deadline, tcp.peek(&mut first)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return,
            Err(_) => {
                tracing::debug!(%peer, "closed: nothing sent within the read-header timeout");
                return;
            }
        }
        if first[0] != 0x16 {
            answer_plain_http(tcp, deadline).await;
            return;
        }
        let stream = match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "tls handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "closed: tls handshake not completed within the read-header timeout");
                return;
            }
        };
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        shared.http1.store(!h2, Ordering::Relaxed);
        shared.becomes_idle();

        let conn_handle = Conn(shared.clone());
        let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
            let api = self.clone();
            let conn = conn_handle.clone();
            async move {
                let in_flight = conn.0.request_started();
                req.extensions_mut().insert(conn);
                let resp = api.handle(req, peer).await;
                Ok::<_, Infallible>(resp.map(|inner| {
                    Tracked {
                        inner,
                        _in_flight: in_flight,
                    }
                    .boxed()
                }))
            }
        });
        let io = TokioIo::new(Observed {
            inner: stream,
            observer: Arrivals(shared.clone()),
        });
        if h2 {
            let conn = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_concurrent_streams(limits.http2_max_streams_per_connection)
                .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
                .keep_alive_interval(PING_INTERVAL)
                .keep_alive_timeout(PING_TIMEOUT)
                .serve_connection(io, service);
            drive(conn, &shared, limits, peer, |c| c.graceful_shutdown()).await;
        } else {
            // hyper's buffer bound alone lets a head reach twice the
            // buffer; `max_header_size` is exact.
            let conn = http1::Builder::new()
                .header_read_timeout(None)
                .max_buf_size(limits.max_header_bytes.max(MIN_HEADER_BYTES))
                .max_header_size(limits.max_header_bytes)
                .serve_connection(io, service)
                // `pods/exec`'s WebSocket (see `node_proxy`).
                .with_upgrades();
            drive(conn, &shared, limits, peer, |c| c.graceful_shutdown()).await;
        }
    }
}

/// Runs a connection until it ends or its watchdog fires; an idle one is
/// shut down gracefully (HTTP/2: GOAWAY, so the client opens a new
/// connection rather than seeing a reset; HTTP/1: closed at once), a slow
/// one dropped.
async fn drive<C>(
    conn: C,
    shared: &Shared,
    limits: &ConnLimits,
    peer: SocketAddr,
    shutdown: impl FnOnce(Pin<&mut C>),
) where
    C: std::future::Future<Output = Result<(), hyper::Error>>,
{
    tokio::pin!(conn);
    let why = tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            return;
        }
        why = shared.watchdog(limits) => why,
    };
    tracing::debug!(%peer, reason = why.reason(), "closing connection");
    if why == Close::Idle {
        shutdown(conn.as_mut());
        let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker(max: usize, pending: usize) -> Arc<Tracker> {
        Arc::new(Tracker {
            limits: ConnLimits {
                max_connections: max,
                max_pending_connections: pending,
                ..ConnLimits::default()
            },
            slots: Mutex::new(Slots::default()),
            evictions: log_limit(),
            refusals: log_limit(),
        })
    }

    fn shared(t: &Arc<Tracker>, id: u64) -> Arc<Shared> {
        Shared::new(id, t, Instant::now(), true)
    }

    fn evicted(s: &Arc<Shared>) -> bool {
        let n = s.evict.notified();
        tokio::pin!(n);
        n.as_mut().enable()
    }

    #[test]
    fn the_oldest_pending_connection_is_evicted_and_authenticated_ones_never() {
        let t = tracker(4, 2);
        let a = t.admit(|id| shared(&t, id)).expect("a");
        let b = t.admit(|id| shared(&t, id)).expect("b");
        Conn(b.shared.clone()).authenticated();
        let c = t.admit(|id| shared(&t, id)).expect("c");
        assert!(!evicted(&a.shared), "under both caps: nobody evicted");
        // Pending cap (2): a third pending one evicts the oldest pending, a.
        let d = t.admit(|id| shared(&t, id)).expect("d");
        assert!(evicted(&a.shared));
        assert!(!evicted(&b.shared), "authenticated: never evicted");
        drop(a);
        assert_eq!(t.lock().pending.len(), 2);
        Conn(c.shared.clone()).authenticated();
        Conn(d.shared.clone()).authenticated();
        // Total cap (4): three authenticated, one pending slot left.
        let e = t.admit(|id| shared(&t, id)).expect("e");
        let f = t.admit(|id| shared(&t, id)).expect("f evicts e");
        assert!(evicted(&e.shared));
        drop(e);
        Conn(f.shared.clone()).authenticated();
        assert!(
            t.admit(|id| shared(&t, id)).is_none(),
            "every slot authenticated: refused"
        );
        drop(f);
        assert_eq!(t.lock().authenticated, 3);
        assert!(t.admit(|id| shared(&t, id)).is_some(), "a slot freed");
    }

    #[test]
    fn caps_fit_the_open_file_limit() {
        let l = ConnLimits::default().fit_open_files(Some(1024));
        assert_eq!(l.max_connections, 1024 - RESERVED_FILES as usize);
        assert_eq!(l.max_pending_connections, DEFAULT_MAX_PENDING_CONNECTIONS);
        let l = ConnLimits::default().fit_open_files(Some(200));
        assert_eq!((l.max_connections, l.max_pending_connections), (72, 72));
        assert_eq!(
            ConnLimits::default().fit_open_files(None),
            ConnLimits::default()
        );
    }

    #[test]
    fn durations_parse_as_kube_flags_do() {
        assert_eq!(parse_duration("32s"), Ok(Duration::from_secs(32)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn http_request_lines_are_recognized() {
        assert!(looks_like_http(b"GET /"));
        assert!(looks_like_http(b"POST "));
        assert!(!looks_like_http(b"\x16\x03\x01\x02\x00"));
        assert!(!looks_like_http(b"SSH-2"));
    }
}
