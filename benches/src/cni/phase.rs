//! A measured phase: `n` operations, one at a time or `c` at once, each
//! timing itself.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::exec::children_cpu;
use crate::stats::{Samples, Summary};
use crate::{BenchError, Result};

/// What a phase measured.
#[derive(Debug, Clone, Default)]
pub struct Phase {
    /// Every operation's own time (from [`run_timed`](super::exec::run_timed)).
    pub latency: Samples,
    /// First start to last end, summed over the passes pooled here.
    pub wall: Duration,
    /// CPU (user + system) of the commands run, summed likewise.
    pub cpu: Duration,
    pub ops: usize,
}

impl Phase {
    /// Pools another pass of the same phase into this one.
    pub fn absorb(&mut self, other: Phase) {
        self.latency.extend(other.latency);
        self.wall += other.wall;
        self.cpu += other.cpu;
        self.ops += other.ops;
    }

    pub fn summary(&self) -> Summary {
        self.latency.clone().summary()
    }

    /// Operations per second of wall time.
    pub fn rate(&self) -> f64 {
        self.ops as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// CPU per operation.
    pub fn cpu_per_op(&self) -> Option<Duration> {
        u32::try_from(self.ops)
            .ok()
            .filter(|&n| n > 0)
            .map(|n| self.cpu / n)
    }
}

/// Runs `op(0..n)` with `concurrency` worker threads (1: one at a time, in
/// order), each `op` returning its own measured time and a value. Returns
/// the phase and the values in index order. The first error stops the
/// workers (operations in flight finish) and is returned; so does `stop`.
pub fn run<T, F>(n: usize, concurrency: usize, stop: &AtomicBool, op: F) -> Result<(Phase, Vec<T>)>
where
    T: Send,
    F: Fn(usize) -> Result<(Duration, T)> + Sync,
{
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<BenchError>> = Mutex::new(None);
    let workers = concurrency.clamp(1, n.max(1));
    let cpu_before = children_cpu()?;
    let started = Instant::now();
    let per_worker: Vec<Vec<(usize, Duration, T)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        if failed.load(Ordering::Relaxed) || stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            break;
                        }
                        match op(i) {
                            Ok((took, value)) => done.push((i, took, value)),
                            Err(e) => {
                                failed.store(true, Ordering::Relaxed);
                                let mut slot =
                                    first_error.lock().unwrap_or_else(|p| p.into_inner());
                                slot.get_or_insert(e);
                                break;
                            }
                        }
                    }
                    done
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let wall = started.elapsed();
    let cpu = children_cpu()?.saturating_sub(cpu_before);
    if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    if stop.load(Ordering::Relaxed) {
        return Err(BenchError::Check("the run was stopped".into()));
    }
    let mut all: Vec<(usize, Duration, T)> = per_worker.into_iter().flatten().collect();
    all.sort_unstable_by_key(|(i, _, _)| *i);
    let mut latency = Samples::with_capacity(all.len());
    let mut values = Vec::with_capacity(all.len());
    for (_, took, value) in all {
        latency.push(took);
        values.push(value);
    }
    let phase = Phase {
        latency,
        wall,
        cpu,
        ops: values.len(),
    };
    Ok((phase, values))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_every_index_once_in_order() {
        let stop = AtomicBool::new(false);
        let (phase, values) =
            run(50, 7, &stop, |i| Ok((Duration::from_micros(i as u64), i))).expect("runs");
        assert_eq!(values, (0..50).collect::<Vec<_>>());
        assert_eq!(phase.ops, 50);
        assert_eq!(phase.latency.len(), 50);
    }

    #[test]
    fn stops_at_the_first_error() {
        let stop = AtomicBool::new(false);
        let r = run(100, 1, &stop, |i| {
            if i == 3 {
                Err(BenchError::Check("boom".into()))
            } else {
                Ok((Duration::ZERO, ()))
            }
        });
        assert!(matches!(r, Err(BenchError::Check(m)) if m == "boom"));
    }
}
