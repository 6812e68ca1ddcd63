//! Latency samples and their percentiles.

use std::time::Duration;

/// A set of latencies, in nanoseconds.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    nanos: Vec<u64>,
    sorted: bool,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Samples {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_capacity(n: usize) -> Self {
        Self {
            nanos: Vec::with_capacity(n),
            sorted: false,
        }
    }

    pub fn push(&mut self, d: Duration) {
        self.push_nanos(nanos(d));
    }

    pub fn push_nanos(&mut self, n: u64) {
        self.nanos.push(n);
        self.sorted = false;
    }

    pub fn extend(&mut self, other: Samples) {
        self.nanos.extend(other.nanos);
        self.sorted = false;
    }

    pub fn len(&self) -> usize {
        self.nanos.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nanos.is_empty()
    }

    fn sort(&mut self) {
        if !self.sorted {
            self.nanos.sort_unstable();
            self.sorted = true;
        }
    }

    /// The nearest-rank percentile `p` (0..=100); None without samples.
    pub fn percentile(&mut self, p: f64) -> Option<Duration> {
        if self.nanos.is_empty() {
            return None;
        }
        self.sort();
        let n = self.nanos.len();
        // Nearest rank: the smallest value with at least p% of samples <= it.
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        let idx = rank.clamp(1, n) - 1;
        self.nanos.get(idx).map(|&v| Duration::from_nanos(v))
    }

    pub fn p50(&mut self) -> Option<Duration> {
        self.percentile(50.0)
    }

    pub fn p99(&mut self) -> Option<Duration> {
        self.percentile(99.0)
    }

    pub fn max(&mut self) -> Option<Duration> {
        self.percentile(100.0)
    }

    /// The arithmetic mean; None without samples.
    pub fn mean(&self) -> Option<Duration> {
        let n = u128::try_from(self.nanos.len()).ok().filter(|&n| n > 0)?;
        let total: u128 = self.nanos.iter().map(|&v| u128::from(v)).sum();
        u64::try_from(total / n).ok().map(Duration::from_nanos)
    }

    /// The percentiles a report shows.
    pub fn summary(mut self) -> Summary {
        Summary {
            count: self.len(),
            mean: self.mean(),
            p50: self.p50(),
            p99: self.p99(),
            max: self.max(),
        }
    }
}

/// p50, p99, max and mean of a set of samples (None when there were none).
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub count: usize,
    pub mean: Option<Duration>,
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
    pub max: Option<Duration>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut s = Samples::new();
        for ms in (1..=100).rev() {
            s.push(Duration::from_millis(ms));
        }
        assert_eq!(s.p50(), Some(Duration::from_millis(50)));
        assert_eq!(s.p99(), Some(Duration::from_millis(99)));
        assert_eq!(s.max(), Some(Duration::from_millis(100)));
        assert_eq!(s.percentile(0.0), Some(Duration::from_millis(1)));
        assert_eq!(s.mean(), Some(Duration::from_micros(50_500)));
    }

    #[test]
    fn empty_has_no_percentiles() {
        assert_eq!(Samples::new().p50(), None);
        assert_eq!(Samples::new().mean(), None);
    }
}
