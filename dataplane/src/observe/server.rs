//! The agent's local socket (a Unix socket, mode 0600: flows are the
//! node's business). A client sends one line, a [`Request`] as JSON:
//! `{"observe": FILTER}` and then reads [`Line`]s, one JSON object a line,
//! until it hangs up; or `{"names": QUERY}` (for `inspect`) and reads one
//! [`Line::Names`].
//!
//! The ring reader runs only while a watcher is connected: it turns the
//! programs' events on with a lease of [`LEASE`] renewed every second (an
//! agent that dies mid-watch stops them within the lease), names each
//! event once and hands it to every watcher through a bounded broadcast.
//! When the last watcher leaves, the events stop and the names go.
//!
//! What one watcher can make the agent do is bounded: at most
//! [`Settings::max_watchers`] connected (more wait in the backlog), a
//! request line of at most [`MAX_REQUEST`] bytes within [`REQUEST_TIMEOUT`],
//! a filter of at most `event::MAX_FILTER_ENTRIES` entries, and a watcher
//! that does not read for [`WRITE_TIMEOUT`] is dropped; one that reads too
//! slowly loses events (told so in a `lost_events` line), never slows the
//! others or the reader. Accept errors back off (`ferry_daemon::listen`).

use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aya::maps::{Array, MapData, PerCpuArray, RingBuf};
use ferry_daemon::listen::{AcceptBackoff, ConnLimit};
use ferry_ebpf_common::observe::{ObserveConfig, ObserveStats};
use rustix::time::{ClockId, clock_gettime};
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Notify, broadcast};

use super::event::{Filter, Record, decode};
use super::names::{Directory, NameAnswer, NameQuery};
use crate::bpf::ObserveMaps;
use crate::metrics::Metrics;

/// How far ahead the events are switched on; renewed every second.
pub const LEASE: Duration = Duration::from_secs(5);
/// The longest request line.
pub const MAX_REQUEST: usize = 256 * 1024;
/// How long a names request waits for the policy loop to publish.
pub const NAMES_WAIT: Duration = Duration::from_secs(3);
/// How long a watcher has to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a write to a watcher may block before it is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Events held for watchers; a watcher further behind loses the oldest.
const BACKLOG: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error(
        "another process serves flows at {0}: give this agent a socket of its own (--observe-socket)"
    )]
    InUse(PathBuf),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// What the server needs besides the maps.
#[derive(Debug, Clone)]
pub struct Settings {
    pub path: PathBuf,
    /// The node's name, in every record.
    pub node: String,
    /// Events per second per CPU while watched.
    pub rate: u32,
    pub max_watchers: usize,
    pub metrics: Arc<Metrics>,
}

/// Events the programs or the agent could not deliver.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lost {
    /// Refused by the programs' rate limit.
    pub rate_limited: u64,
    /// Refused because the ring was full (the agent fell behind).
    pub ring_full: u64,
    /// Skipped because this watcher read too slowly.
    pub slow_watcher: u64,
}

/// What a client asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Flows matching the filter, until the client hangs up.
    Observe(Filter),
    /// Names of pods, policies and policy sets.
    Names(NameQuery),
}

/// One line a client reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Line {
    Flow(Box<Record>),
    Lost { lost_events: Lost },
    Names { names: NameAnswer },
    Error { error: String },
}

/// Binds the socket, replacing a stale one (nothing answers there) but
/// never a live one.
pub async fn bind(path: &Path) -> Result<UnixListener, ObserveError> {
    let io_err = |what: &'static str| {
        let path = path.to_owned();
        move |source| ObserveError::Io { what, path, source }
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err("creating the directory of"))?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(ObserveError::InUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(io_err("removing the stale socket"))?;
    }
    let listener = UnixListener::bind(path).map_err(io_err("binding"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err("restricting"))?;
    Ok(listener)
}

/// Serves watchers on `listener` until the agent stops.
pub async fn serve(
    listener: UnixListener,
    settings: Settings,
    maps: ObserveMaps,
    directory: Arc<Directory>,
) {
    let (tx, _) = broadcast::channel::<Arc<Line>>(BACKLOG);
    let joined = Arc::new(Notify::new());
    tokio::spawn(reader(
        maps,
        tx.clone(),
        joined.clone(),
        directory.clone(),
        settings.clone(),
    ));
    let limit = ConnLimit::new(settings.max_watchers.max(1));
    let mut backoff = AcceptBackoff::new("observe");
    loop {
        let permit = limit.acquire().await;
        match listener.accept().await {
            Ok((conn, _)) => {
                backoff.on_success();
                let rx = tx.subscribe();
                let joined = joined.clone();
                let directory = directory.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Err(e) = client(conn, rx, &joined, &directory).await {
                        tracing::debug!(error = %e, "observe client gone");
                    }
                });
            }
            Err(e) => backoff.failed(&e).await,
        }
    }
}

/// The nanoseconds to add to a `CLOCK_MONOTONIC` time to get the wall
/// clock's.
fn wall_offset() -> i128 {
    let ns =
        |t: rustix::time::Timespec| i128::from(t.tv_sec) * 1_000_000_000 + i128::from(t.tv_nsec);
    ns(clock_gettime(ClockId::Realtime)) - ns(clock_gettime(ClockId::Monotonic))
}

fn monotonic_ns() -> u64 {
    let t = clock_gettime(ClockId::Monotonic);
    u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec).unwrap_or(0)
}

/// RFC 3339 with nanoseconds, for a monotonic time.
fn rfc3339(monotonic: u64, offset: i128) -> String {
    match jiff::Timestamp::from_nanosecond(i128::from(monotonic) + offset) {
        Ok(t) => format!("{t:.9}"),
        Err(_) => String::new(),
    }
}

/// Switches the programs' events on until `until_ns` (0: off).
fn switch(config: &mut Array<MapData, ObserveConfig>, until_ns: u64, rate: u32) {
    let cfg = ObserveConfig {
        until_ns,
        rate,
        burst: rate,
    };
    if let Err(e) = config.set(0, cfg, 0) {
        tracing::warn!(error = %e, "switching flow events");
    }
}

fn refused(stats: &PerCpuArray<MapData, ObserveStats>) -> ObserveStats {
    let mut sum = ObserveStats::default();
    if let Ok(per_cpu) = stats.get(&0, 0) {
        for s in per_cpu.iter() {
            sum.written += s.written;
            sum.rate_limited += s.rate_limited;
            sum.ring_full += s.ring_full;
        }
    }
    sum
}

/// The ring and the switch, held by the reader.
struct Reader {
    config: Array<MapData, ObserveConfig>,
    stats: PerCpuArray<MapData, ObserveStats>,
    ring: AsyncFd<RingBuf<MapData>>,
    tx: broadcast::Sender<Arc<Line>>,
    directory: Arc<Directory>,
    settings: Settings,
}

/// Reads the ring while anyone watches.
async fn reader(
    maps: ObserveMaps,
    tx: broadcast::Sender<Arc<Line>>,
    joined: Arc<Notify>,
    directory: Arc<Directory>,
    settings: Settings,
) {
    // `AsyncFd::new` is deprecated for types whose descriptor may change
    // under it (its safe replacement, `register`, is `unsafe`); a ring
    // buffer owns one descriptor, the map's, for its whole life.
    #[allow(deprecated)]
    let ring = match AsyncFd::new(maps.events) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "watching the flow event ring; observe is off");
            return;
        }
    };
    let mut r = Reader {
        config: maps.config,
        stats: maps.stats,
        ring,
        tx,
        directory,
        settings,
    };
    // Off, whatever a previous agent left.
    switch(&mut r.config, 0, r.settings.rate);
    loop {
        while r.tx.receiver_count() == 0 {
            joined.notified().await;
        }
        let names = r.directory.hold();
        tracing::info!("a watcher connected: flow events on");
        if let Err(e) = r.spell().await {
            switch(&mut r.config, 0, r.settings.rate);
            tracing::error!(error = %e, "reading flow events stopped; observe is off");
            return;
        }
        drop(names);
        tracing::info!("no watcher left: flow events off");
    }
}

impl Reader {
    /// One watched spell: events on, the ring read and broadcast, until
    /// the last watcher leaves; events off again.
    async fn spell(&mut self) -> io::Result<()> {
        let lease = u64::try_from(LEASE.as_nanos()).unwrap_or(u64::MAX);
        let rate = self.settings.rate;
        switch(&mut self.config, monotonic_ns() + lease, rate);
        let mut last = refused(&self.stats);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                guard = self.ring.readable_mut() => {
                    let mut guard = guard?;
                    let names = self.directory.current();
                    let offset = wall_offset();
                    while let Some(item) = guard.get_inner_mut().next() {
                        if let Some(e) = decode(&item) {
                            let time = rfc3339(e.time_ns, offset);
                            let record = Record::new(&e, time, &self.settings.node, &names);
                            let _ = self.tx.send(Arc::new(Line::Flow(Box::new(record))));
                        }
                    }
                    guard.clear_ready();
                }
                _ = tick.tick() => {
                    if self.tx.receiver_count() == 0 {
                        self.settings.metrics.observe_watchers.set(0);
                        switch(&mut self.config, 0, rate);
                        // Leftovers are nobody's.
                        while self.ring.get_mut().next().is_some() {}
                        return Ok(());
                    }
                    switch(&mut self.config, monotonic_ns() + lease, rate);
                    let now = refused(&self.stats);
                    let metrics = &self.settings.metrics;
                    metrics.set_observe_events(now.written, now.rate_limited, now.ring_full);
                    metrics
                        .observe_watchers
                        .set(i64::try_from(self.tx.receiver_count()).unwrap_or(i64::MAX));
                    if now.rate_limited > last.rate_limited || now.ring_full > last.ring_full {
                        let lost = Lost {
                            rate_limited: now.rate_limited - last.rate_limited,
                            ring_full: now.ring_full - last.ring_full,
                            slow_watcher: 0,
                        };
                        let _ = self.tx.send(Arc::new(Line::Lost { lost_events: lost }));
                    }
                    last = now;
                }
            }
        }
    }
}

/// One client: its request, then the names it asked for, or matching
/// flows until it hangs up.
async fn client(
    conn: UnixStream,
    mut rx: broadcast::Receiver<Arc<Line>>,
    joined: &Notify,
    directory: &Arc<Directory>,
) -> io::Result<()> {
    let (read, mut write) = conn.into_split();
    let mut read = BufReader::new(read.take(MAX_REQUEST as u64));
    let mut request = String::new();
    let request = match tokio::time::timeout(REQUEST_TIMEOUT, read.read_line(&mut request)).await {
        Ok(Ok(_)) if request.ends_with('\n') => serde_json::from_str::<Request>(&request)
            .map_err(|e| format!("the request is not one the agent knows: {e}"))
            .and_then(|r| match &r {
                Request::Observe(f) => f.check().map(|()| r),
                Request::Names(q) => q.check().map(|()| r),
            }),
        Ok(Ok(_)) => Err(format!(
            "the request must be one line of JSON of at most {MAX_REQUEST} bytes"
        )),
        Ok(Err(e)) => return Err(e),
        Err(_) => Err(format!("no request within {}s", REQUEST_TIMEOUT.as_secs())),
    };
    let filter = match request {
        Ok(Request::Observe(f)) => f,
        Ok(Request::Names(q)) => {
            drop(rx);
            let _hold = directory.hold();
            let names = directory.fresh(NAMES_WAIT).await;
            let line = Line::Names {
                names: names.answer(&q),
            };
            return send(&mut write, &line).await;
        }
        Err(error) => {
            let line = Line::Error { error };
            let _ = send(&mut write, &line).await;
            return Ok(());
        }
    };
    joined.notify_one();
    let mut read = read.into_inner();
    let mut scratch = [0u8; 64];
    loop {
        tokio::select! {
            line = rx.recv() => {
                let line = match line {
                    Ok(l) => l,
                    Err(broadcast::error::RecvError::Lagged(n)) => Arc::new(Line::Lost {
                        lost_events: Lost { slow_watcher: n, ..Lost::default() },
                    }),
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                };
                if let Line::Flow(r) = &*line
                    && !filter.matches(r)
                {
                    continue;
                }
                send(&mut write, &line).await?;
            }
            // Anything the watcher sends after its request is ignored; its
            // hanging up ends the watch at once.
            n = read.read(&mut scratch) => {
                if n? == 0 {
                    return Ok(());
                }
            }
        }
    }
}

async fn send(write: &mut tokio::net::unix::OwnedWriteHalf, line: &Line) -> io::Result<()> {
    let mut bytes = serde_json::to_vec(line).map_err(io::Error::other)?;
    bytes.push(b'\n');
    match tokio::time::timeout(WRITE_TIMEOUT, write.write_all(&bytes)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the watcher stopped reading",
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_with_nanoseconds() {
        // 2026-12-03T20:00:00Z is 1796328000 s after the epoch.
        let t = rfc3339(5, 1_796_328_000 * 1_000_000_000);
        assert_eq!(t, "2026-12-03T20:00:00.000000005Z");
    }

    #[test]
    fn lines_round_trip() {
        let lost = Line::Lost {
            lost_events: Lost {
                rate_limited: 3,
                ..Lost::default()
            },
        };
        let s = serde_json::to_string(&lost).unwrap();
        assert_eq!(
            s,
            r#"{"lost_events":{"rate_limited":3,"ring_full":0,"slow_watcher":0}}"#
        );
        assert_eq!(serde_json::from_str::<Line>(&s).unwrap(), lost);
        let err = Line::Error { error: "x".into() };
        let s = serde_json::to_string(&err).unwrap();
        assert_eq!(serde_json::from_str::<Line>(&s).unwrap(), err);
    }
}
