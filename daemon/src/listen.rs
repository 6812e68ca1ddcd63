//! Accepting connections without spinning, capping how many are open, and
//! the open-file limit.
//!
//! `accept(2)` fails for reasons that persist, `EMFILE` and `ENFILE` above
//! all: the listener stays readable, so a loop that only logs and retries
//! burns a CPU and writes a log line per turn. [`accept`] sleeps instead, 5 ms
//! doubling to 1 s while errors repeat (Go's net/http), back to nothing after
//! a success, and logs at most once a second with the count of errors it did
//! not log.
//!
//! [`ConnLimit`] caps open connections. A server at its cap *waits* for a
//! connection to end before accepting the next (as Go's
//! `netutil.LimitListener` does): new clients queue in the kernel's listen
//! backlog, none is accepted only to be closed, and the server never spends a
//! descriptor or an accept on a connection it cannot serve. Every connection
//! a server holds is bounded by its own timeouts, so the wait is bounded too.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::warn;

use crate::logging::LogLimit;

/// The first pause after a failed accept.
pub const BACKOFF_MIN: Duration = Duration::from_millis(5);
/// The longest pause between failed accepts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one log line per this long about failed accepts.
pub const LOG_EVERY: Duration = Duration::from_secs(1);

/// The state of one accept loop: the current pause and the rate-limited log.
#[derive(Debug)]
pub struct AcceptBackoff {
    /// What accepts (a log field): "dns-tcp", "metrics", ...
    what: &'static str,
    delay: Option<Duration>,
    log: LogLimit,
}

/// What to do after a failed accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OnError {
    /// How long to sleep before accepting again.
    pub sleep: Duration,
    /// Whether to log this error, and how many were not logged before it.
    pub log: Option<u64>,
}

impl AcceptBackoff {
    pub fn new(what: &'static str) -> Self {
        Self {
            what,
            delay: None,
            log: LogLimit::new(LOG_EVERY),
        }
    }

    /// An accept succeeded: the next error starts from the shortest pause.
    pub fn on_success(&mut self) {
        self.delay = None;
    }

    /// An accept failed at `now`: the pause (doubling from [`BACKOFF_MIN`] to
    /// [`BACKOFF_MAX`]) and whether to log.
    pub fn on_error(&mut self, now: Instant) -> OnError {
        let sleep = match self.delay {
            None => BACKOFF_MIN,
            Some(d) => (d * 2).min(BACKOFF_MAX),
        };
        self.delay = Some(sleep);
        OnError {
            sleep,
            log: self.log.due(now),
        }
    }

    /// Logs (if due) and sleeps after `error`.
    pub async fn failed(&mut self, error: &io::Error) {
        let OnError { sleep, log } = self.on_error(Instant::now());
        if let Some(suppressed) = log {
            warn!(
                what = self.what,
                %error,
                suppressed,
                retry_in_ms = sleep.as_millis() as u64,
                "accepting a connection failed; backing off"
            );
        }
        tokio::time::sleep(sleep).await;
    }
}

/// Accepts the next connection; never fails and never spins: errors are
/// logged (rate-limited) and retried after `backoff`'s pause.
pub async fn accept(
    listener: &TcpListener,
    backoff: &mut AcceptBackoff,
) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(conn) => {
                backoff.on_success();
                return conn;
            }
            Err(error) => backoff.failed(&error).await,
        }
    }
}

/// A cap on open connections, shared by the accept loop and the
/// connections (which hold a [`ConnPermit`] until they end).
#[derive(Debug, Clone)]
pub struct ConnLimit {
    slots: Arc<Semaphore>,
    max: usize,
}

/// One open connection's slot; dropping it frees the slot.
#[derive(Debug)]
pub struct ConnPermit(#[allow(dead_code)] OwnedSemaphorePermit);

impl ConnLimit {
    /// At most `max` connections (at least one).
    pub fn new(max: usize) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            slots: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Connections open now.
    pub fn in_use(&self) -> usize {
        self.max - self.slots.available_permits()
    }

    /// Waits for a free slot.
    pub async fn acquire(&self) -> ConnPermit {
        // The semaphore is never closed, so this cannot fail; if it ever
        // were, waiting forever is the safe reading of "no slot".
        match self.slots.clone().acquire_owned().await {
            Ok(permit) => ConnPermit(permit),
            Err(_) => std::future::pending().await,
        }
    }

    /// A free slot now, or `None` at the cap.
    pub fn try_acquire(&self) -> Option<ConnPermit> {
        self.slots.clone().try_acquire_owned().ok().map(ConnPermit)
    }
}

/// Waits for a slot under `limit`, then accepts (see [`accept`]): at the cap
/// nothing is accepted until a connection ends.
pub async fn accept_limited(
    listener: &TcpListener,
    backoff: &mut AcceptBackoff,
    limit: &ConnLimit,
) -> (TcpStream, SocketAddr, ConnPermit) {
    let permit = limit.acquire().await;
    let (stream, peer) = accept(listener, backoff).await;
    (stream, peer, permit)
}

/// Raises the soft limit on open files to the hard one, as Go's runtime does
/// at startup; returns the limit now in force (`None`: unlimited).
pub fn raise_nofile_limit() -> io::Result<Option<u64>> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        setrlimit(Resource::Nofile, limit).map_err(io::Error::from)?;
    }
    Ok(limit.current)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_second_and_resets_on_success() {
        let mut b = AcceptBackoff::new("test");
        let t = Instant::now();
        let sleeps: Vec<u64> = (0..10)
            .map(|_| b.on_error(t).sleep.as_millis() as u64)
            .collect();
        assert_eq!(sleeps, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.on_success();
        assert_eq!(b.on_error(t).sleep, BACKOFF_MIN);
    }

    #[test]
    fn errors_are_logged_once_a_second_with_the_suppressed_count() {
        let mut b = AcceptBackoff::new("test");
        let t0 = Instant::now();
        assert_eq!(b.on_error(t0).log, Some(0), "the first error is logged");
        for i in 1..=99 {
            let at = t0 + Duration::from_millis(i * 10 / 2);
            assert_eq!(b.on_error(at).log, None, "error {i} within the second");
        }
        // A success does not reset the rate limit: a flapping listener
        // still logs once a second.
        b.on_success();
        assert_eq!(b.on_error(t0 + Duration::from_millis(900)).log, None);
        assert_eq!(
            b.on_error(t0 + Duration::from_millis(1001)).log,
            Some(100),
            "the next line carries what was not logged"
        );
        assert_eq!(b.on_error(t0 + Duration::from_millis(1500)).log, None);
    }

    #[tokio::test]
    async fn accept_waits_at_the_cap() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let limit = ConnLimit::new(2);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let l = limit.clone();
        tokio::spawn(async move {
            let mut backoff = AcceptBackoff::new("test");
            loop {
                let (s, _, permit) = accept_limited(&listener, &mut backoff, &l).await;
                if tx.send((s, permit)).is_err() {
                    return;
                }
            }
        });
        let _c: Vec<_> = futures_join(addr, 3).await;
        let first = rx.recv().await.expect("first");
        let _second = rx.recv().await.expect("second");
        assert_eq!(limit.in_use(), 2);
        // The third waits in the backlog...
        assert!(
            tokio::time::timeout(Duration::from_millis(300), rx.recv())
                .await
                .is_err(),
            "a third connection was accepted over the cap"
        );
        // ...until one ends.
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert!(matches!(third, Ok(Some(_))));
        assert_eq!(limit.in_use(), 2);
    }

    async fn futures_join(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(TcpStream::connect(addr).await.expect("connect"));
        }
        out
    }
}
