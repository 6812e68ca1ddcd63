//! Connection attempts from inside a pod's namespace: one at a time to
//! check a verdict ([`reaches`]), and a paced stream of them whose outcomes
//! are timestamped ([`Prober`]) to see when a verdict changes.
//!
//! A probe is a TCP connect with a short timeout, reset at once when it
//! succeeds (`SO_LINGER` 0: no TIME_WAIT on either side). Both verdicts
//! show as what a client sees: an accepted connection, or none (a dropped
//! SYN times out, a rejected one is refused).

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use ferry_testbed::Netns;

/// Whether a connection from `netns` to `addr` is accepted within
/// `timeout`.
pub fn reaches(netns: &Netns, addr: SocketAddr, timeout: Duration) -> Result<bool> {
    netns
        .in_netns(move || match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                let _ = rustix::net::sockopt::set_socket_linger(&s, Some(Duration::ZERO));
                true
            }
            Err(_) => false,
        })
        .context("entering a pod's namespace")
}

/// One attempt's start and outcome.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    pub start: Instant,
    pub ok: bool,
}

type Log = Arc<Mutex<Vec<Attempt>>>;

/// Attempts started every `every` from a pod's namespace, each bounded by
/// `timeout`, overlapping while they wait (so a change is seen within
/// `every` whichever way it goes), logged until dropped.
pub struct Prober {
    stop: Arc<AtomicBool>,
    log: Log,
    thread: Option<std::thread::JoinHandle<ferry_testbed::Result<Result<()>>>>,
    pub every: Duration,
    pub timeout: Duration,
}

/// Attempts in flight at most (a dropped SYN holds one for `timeout`).
const MAX_IN_FLIGHT: usize = 512;

impl Prober {
    pub fn start(
        netns: &Netns,
        addr: SocketAddr,
        every: Duration,
        timeout: Duration,
    ) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let log: Log = Arc::new(Mutex::new(Vec::with_capacity(1 << 16)));
        let (s, l) = (Arc::clone(&stop), Arc::clone(&log));
        let thread = netns
            .thread(move || -> Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("the prober's runtime")?;
                rt.block_on(run(addr, every, timeout, s, l));
                Ok(())
            })
            .context("starting the prober in the pod")?;
        Ok(Self {
            stop,
            log,
            thread: Some(thread),
            every,
            timeout,
        })
    }

    /// The attempts that started at or after `since` and have ended, in
    /// start order.
    pub fn since(&self, since: Instant) -> Vec<Attempt> {
        let mut v: Vec<Attempt> = self
            .log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|a| a.start >= since)
            .copied()
            .collect();
        v.sort_by_key(|a| a.start);
        v
    }

    /// Forgets the attempts logged so far (keeps the log small).
    pub fn clear(&self) {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// When the verdict became `want` after `since`: the start of the first
    /// attempt from which every later ended one (at least `settle` of them)
    /// has that outcome, among attempts old enough that all their
    /// contemporaries have ended. None while not (yet) seen.
    pub fn changed(&self, since: Instant, want: bool, settle: usize) -> Option<Instant> {
        let ended_before = Instant::now().checked_sub(self.timeout + Duration::from_millis(20))?;
        let v: Vec<Attempt> = self
            .since(since)
            .into_iter()
            .filter(|a| a.start <= ended_before)
            .collect();
        let tail = v.iter().rev().take_while(|a| a.ok == want).count();
        if tail < settle.max(1) {
            return None;
        }
        v.get(v.len() - tail).map(|a| a.start)
    }

    fn stop_now(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop_now();
    }
}

async fn attempt(addr: SocketAddr, timeout: Duration) -> bool {
    let connect = async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        let stream = socket.connect(addr).await?;
        rustix::net::sockopt::set_socket_linger(&stream, Some(Duration::ZERO))?;
        Ok::<_, std::io::Error>(())
    };
    matches!(tokio::time::timeout(timeout, connect).await, Ok(Ok(())))
}

async fn run(
    addr: SocketAddr,
    every: Duration,
    timeout: Duration,
    stop: Arc<AtomicBool>,
    log: Log,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut tasks = tokio::task::JoinSet::new();
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        while tasks.try_join_next().is_some() {}
        if tasks.len() >= MAX_IN_FLIGHT {
            continue;
        }
        let log = Arc::clone(&log);
        tasks.spawn(async move {
            let start = Instant::now();
            let ok = attempt(addr, timeout).await;
            log.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Attempt { start, ok });
        });
    }
    tasks.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prober_with(log: Vec<(u64, bool)>, base: Instant) -> Prober {
        let log: Log = Arc::new(Mutex::new(
            log.into_iter()
                .map(|(ms, ok)| Attempt {
                    start: base + Duration::from_millis(ms),
                    ok,
                })
                .collect(),
        ));
        Prober {
            stop: Arc::new(AtomicBool::new(false)),
            log,
            thread: None,
            every: Duration::from_millis(2),
            timeout: Duration::from_millis(10),
        }
    }

    #[test]
    fn a_change_is_the_first_of_a_settled_run() {
        // Far enough in the past that every attempt counts as ended.
        let base = Instant::now() - Duration::from_secs(5);
        // A lone failure (noise) before the real change at 10 ms.
        let p = prober_with(
            vec![
                (0, true),
                (2, false),
                (4, true),
                (6, true),
                (8, true),
                (10, false),
                (12, false),
                (14, false),
            ],
            base,
        );
        assert_eq!(
            p.changed(base, false, 3),
            Some(base + Duration::from_millis(10))
        );
        assert_eq!(p.changed(base, false, 4), None);
        // Not yet changed the other way.
        assert_eq!(p.changed(base, true, 1), None);
        // Only attempts after `since` count.
        assert_eq!(
            p.changed(base + Duration::from_millis(11), false, 2),
            Some(base + Duration::from_millis(12))
        );
    }
}
