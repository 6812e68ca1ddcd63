//! The daemons' small HTTP/1 servers (health, readiness, metrics), bounded:
//!
//! - a connection cap ([`ConnLimit`]: at the cap, the next connection waits
//!   in the listen backlog);
//! - a header-read timeout: a client must send a whole request head within
//!   it, the first as well as each next one on a kept-alive connection
//!   (hyper's `header_read_timeout`, timed by tokio);
//! - an idle timeout: a connection on which nothing is read or written for
//!   that long is closed, whatever state it is in (a client that does not
//!   read its response, a body trickled in);
//! - request size: a head larger than `max_header_bytes` gets 431, a body
//!   announced larger than `max_body_bytes` 413; the handlers never read a
//!   body, so nothing else is buffered.
//!
//! Accept errors back off (see [`crate::listen`]).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tracing::debug;

use crate::listen::{AcceptBackoff, ConnLimit, accept_limited};
use crate::stream::{Observed, Observer};

/// What one client may make a small HTTP server do.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Time to send a request head (each one on a kept-alive connection).
    pub header_timeout: Duration,
    /// A connection with nothing read or written for this long is closed.
    pub idle_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
    /// Request line and headers, bytes (at least 8 KiB, hyper's minimum
    /// read buffer).
    pub max_header_bytes: usize,
    /// Largest request body announced with `Content-Length`.
    pub max_body_bytes: u64,
}

impl Default for HttpLimits {
    /// 10 s for a head, 60 s idle, 64 connections, 16 KiB heads, 64 KiB
    /// bodies: ample for health probes and Prometheus.
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 64,
            max_header_bytes: 16 * 1024,
            max_body_bytes: 64 * 1024,
        }
    }
}

/// The smallest `max_header_bytes` hyper accepts.
const MIN_BUF: usize = 8 * 1024;

/// Serves `handler` on `listener` under `limits` until the process ends.
/// `what` names the server in logs.
pub async fn serve<H, F>(listener: TcpListener, what: &'static str, limits: HttpLimits, handler: H)
where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let handler = Arc::new(handler);
    let limit = ConnLimit::new(limits.max_connections);
    let mut backoff = AcceptBackoff::new(what);
    let limits = Arc::new(limits);
    loop {
        let (stream, peer, permit) = accept_limited(&listener, &mut backoff, &limit).await;
        let handler = handler.clone();
        let limits = limits.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let activity = Activity::new();
            let io = TokioIo::new(Observed {
                inner: stream,
                observer: activity.clone(),
            });
            let max_body = limits.max_body_bytes;
            let service = service_fn(move |req: Request<Incoming>| {
                let handler = handler.clone();
                async move {
                    if announced_body(&req) > max_body {
                        let mut r = Response::new(Full::new(Bytes::from_static(
                            b"request body too large\n",
                        )));
                        *r.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
                        r.headers_mut().insert(
                            hyper::header::CONNECTION,
                            hyper::header::HeaderValue::from_static("close"),
                        );
                        return Ok::<_, Infallible>(r);
                    }
                    Ok(handler(req).await)
                }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(limits.max_header_bytes.max(MIN_BUF))
                .max_header_size(limits.max_header_bytes.max(MIN_BUF));
            let conn = builder.serve_connection(io, service);
            tokio::select! {
                r = conn => if let Err(error) = r {
                    debug!(what, %peer, %error, "connection ended");
                },
                () = activity.idle(limits.idle_timeout) => {
                    debug!(what, %peer, "idle connection closed");
                }
            }
        });
    }
}

/// The body size a request announces (`Content-Length`); a chunked body
/// counts as unbounded.
fn announced_body(req: &Request<Incoming>) -> u64 {
    use hyper::body::Body as _;
    req.body().size_hint().upper().unwrap_or(u64::MAX)
}

/// When a connection last moved a byte, for the idle timeout.
#[derive(Clone)]
struct Activity {
    start: Instant,
    /// Milliseconds after `start`.
    last: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last.store(ms, Ordering::Relaxed);
    }

    /// Resolves once nothing moved for `timeout`.
    async fn idle(&self, timeout: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last.load(Ordering::Relaxed));
            let due = last + timeout;
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due).await;
        }
    }
}

impl Observer for Activity {
    fn read(&self) {
        self.touch();
    }

    fn wrote(&self) {
        self.touch();
    }
}

/// A plain-text response.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn server(limits: HttpLimits) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(serve(listener, "test", limits, |_req| async {
            text(StatusCode::OK, "ok\n")
        }));
        addr
    }

    /// Reads until the peer closes; `None` when that takes over `within`.
    async fn read_to_close(s: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        match tokio::time::timeout(within, s.read_to_end(&mut out)).await {
            Ok(_) => Some(out),
            Err(_) => None,
        }
    }

    fn short(header: u64, idle: u64) -> HttpLimits {
        HttpLimits {
            header_timeout: Duration::from_millis(header),
            idle_timeout: Duration::from_millis(idle),
            ..HttpLimits::default()
        }
    }

    #[tokio::test]
    async fn a_partial_head_is_cut_off_at_the_header_timeout() {
        let addr = server(short(300, 10_000)).await;
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        let started = std::time::Instant::now();
        // Trickling more header bytes does not extend the deadline.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = s.write_all(b"X-A: b\r\n").await;
        }
        let closed = read_to_close(&mut s, Duration::from_secs(5)).await;
        assert!(closed.is_some(), "still open after 5 s");
        assert!(started.elapsed() < Duration::from_secs(2));
        // A whole request is still served.
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let reply = read_to_close(&mut s, Duration::from_secs(5))
            .await
            .expect("reply");
        assert!(reply.starts_with(b"HTTP/1.1 200"), "{reply:?}");
    }

    #[tokio::test]
    async fn a_kept_alive_connection_is_closed_when_idle() {
        let addr = server(short(300, 10_000)).await;
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).await.expect("read");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        // No next request: the header timeout runs from here.
        assert!(
            read_to_close(&mut s, Duration::from_secs(5))
                .await
                .is_some()
        );
    }

    #[tokio::test]
    async fn a_stalled_connection_is_closed_at_the_idle_timeout() {
        // A request that announces a small body it never sends: the head
        // is complete, so only the idle timeout can end it.
        let addr = server(short(10_000, 300)).await;
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
            .await
            .expect("write");
        let started = std::time::Instant::now();
        assert!(
            read_to_close(&mut s, Duration::from_secs(5))
                .await
                .is_some()
        );
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn oversized_requests_are_refused() {
        let addr = server(HttpLimits::default()).await;
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n")
            .await
            .expect("write");
        let reply = read_to_close(&mut s, Duration::from_secs(5))
            .await
            .expect("closed");
        assert!(reply.starts_with(b"HTTP/1.1 413"), "{reply:?}");
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let mut head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
        head.extend(std::iter::repeat_n(b'a', 64 * 1024));
        head.extend_from_slice(b"\r\n\r\n");
        let _ = s.write_all(&head).await;
        let reply = read_to_close(&mut s, Duration::from_secs(5))
            .await
            .expect("closed");
        assert!(
            reply.starts_with(b"HTTP/1.1 431"),
            "{:?}",
            String::from_utf8_lossy(&reply)
        );
    }

    #[tokio::test]
    async fn connections_over_the_cap_wait_for_a_slot() {
        let addr = server(HttpLimits {
            max_connections: 2,
            ..HttpLimits::default()
        })
        .await;
        let a = TcpStream::connect(addr).await.expect("connect");
        let _b = TcpStream::connect(addr).await.expect("connect");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut c = TcpStream::connect(addr).await.expect("connect (backlog)");
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        assert!(
            read_to_close(&mut c, Duration::from_millis(500))
                .await
                .is_none(),
            "served over the cap"
        );
        drop(a);
        let reply = read_to_close(&mut c, Duration::from_secs(5))
            .await
            .expect("served once a slot is free");
        assert!(reply.starts_with(b"HTTP/1.1 200"));
    }
}
