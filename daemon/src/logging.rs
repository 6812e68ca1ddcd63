//! Logging that a client cannot turn into a flood: at most one line per
//! interval, the next one carrying how many were left out.

use std::time::{Duration, Instant};

/// Decides which of a repeating event's occurrences to log.
#[derive(Debug)]
pub struct LogLimit {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimit {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// An occurrence at `now`: `Some(left out since the last line)` when it
    /// is to be logged, `None` when it is left out.
    pub fn due(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(at) if now.saturating_duration_since(at) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}
