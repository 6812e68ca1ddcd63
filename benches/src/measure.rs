//! The measuring pieces both workloads share: a bulk load's summary, the
//! timed writes of the fan-out, and gathering what every watcher saw.

use std::time::{Duration, Instant};

use crate::report::{Fanout, Load};
use crate::stats::Samples;
use crate::{BenchError, Result, Workload};

pub(crate) fn load_of(wall: Duration, latency: Samples, stored: &[Vec<u8>]) -> Load {
    let bytes: usize = stored.iter().map(Vec::len).sum();
    Load {
        count: stored.len(),
        wall,
        latency: latency.summary(),
        mean_bytes: bytes.checked_div(stored.len()).unwrap_or(0),
        ..Default::default()
    }
}

/// The bulk namespace also holds the `kubernetes` Service.
pub(crate) fn check_count(what: &str, got: usize, want: usize) -> Result<()> {
    if got < want {
        return Err(BenchError::Check(format!(
            "{what} returned {got} items, expected at least {want}"
        )));
    }
    Ok(())
}

/// What one watcher saw.
#[derive(Debug)]
pub(crate) struct Watcher {
    pub delays: Samples,
    pub received: usize,
    pub error: Option<String>,
}

impl Watcher {
    pub fn new(expected: usize) -> Self {
        Self {
            delays: Samples::with_capacity(expected),
            received: 0,
            error: None,
        }
    }

    pub fn record(&mut self, delay: Duration) {
        self.delays.push(delay);
        self.received += 1;
    }

    pub fn fail(&mut self, error: String) {
        self.error.get_or_insert(error);
    }
}

/// Runs `write(i)` for each timed write, one every `w.write_interval`, each
/// in its own task so a slow write does not delay the next; returns their
/// latencies.
pub(crate) async fn timed_writes<F, Fut>(w: &Workload, write: F) -> Result<Samples>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<()>> + Send + 'static,
{
    let mut tick = tokio::time::interval(w.write_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..w.writes {
        tick.tick().await;
        let fut = write(i);
        tasks.spawn(async move {
            let t0 = Instant::now();
            fut.await.map(|()| t0.elapsed())
        });
    }
    let mut latency = Samples::with_capacity(w.writes);
    while let Some(done) = tasks.join_next().await {
        latency.push(done??);
    }
    Ok(latency)
}

/// Gathers every watcher's outcome into the fan-out result.
pub(crate) async fn collect(
    w: &Workload,
    mut watchers: tokio::task::JoinSet<Watcher>,
) -> Result<Fanout> {
    let mut delivery = Samples::with_capacity(w.watchers * w.writes);
    let mut fanout = Fanout {
        watchers: w.watchers,
        writes: w.writes,
        expected: w.watchers * w.writes,
        ..Default::default()
    };
    while let Some(done) = watchers.join_next().await {
        let watcher = done?;
        fanout.received += watcher.received;
        delivery.extend(watcher.delays);
        if let Some(e) = watcher.error {
            fanout.failed_watchers += 1;
            fanout.first_error.get_or_insert(e);
        }
    }
    fanout.delivery = delivery.summary();
    Ok(fanout)
}
