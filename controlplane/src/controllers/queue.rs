//! The work queue of the workload controllers (client-go's delaying
//! workqueue, as a controller thread needs it): keys to sync now, each held
//! once however often it is added, and keys to sync at a later time. A
//! reconcile takes every key that is due, in key order; the controller's
//! runner sleeps until the first timer.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Keys waiting to be synced, now or at a time.
#[derive(Debug)]
pub(crate) struct WorkQueue<K> {
    ready: BTreeSet<K>,
    timers: BTreeMap<Instant, BTreeSet<K>>,
}

impl<K> Default for WorkQueue<K> {
    fn default() -> Self {
        Self {
            ready: BTreeSet::new(),
            timers: BTreeMap::new(),
        }
    }
}

impl<K: Ord> WorkQueue<K> {
    /// Queues `key` for the next reconcile.
    pub fn add(&mut self, key: K) {
        self.ready.insert(key);
    }

    /// Queues `key` for the first reconcile at or after `at`.
    pub fn add_at(&mut self, at: Instant, key: K) {
        self.timers.entry(at).or_default().insert(key);
    }

    /// Queues `key` for when `secs` whole seconds have passed, and one more
    /// so that a time kept to the second (a condition's
    /// `lastTransitionTime`) is surely behind.
    pub fn add_after_seconds(&mut self, secs: i64, key: K) {
        let wait = Duration::from_secs(u64::try_from(secs).unwrap_or(0).saturating_add(1));
        self.add_at(Instant::now() + wait, key);
    }

    /// Every key due now (queued, or its time come), in key order; the
    /// queue keeps only those for later.
    pub fn take_due(&mut self) -> BTreeSet<K> {
        let now = Instant::now();
        while let Some(entry) = self.timers.first_entry() {
            if *entry.key() > now {
                break;
            }
            let keys = entry.remove();
            self.ready.extend(keys);
        }
        std::mem::take(&mut self.ready)
    }

    /// When the first key held for later is due.
    pub fn next_wakeup(&self) -> Option<Instant> {
        self.timers.keys().next().copied()
    }
}

impl<K: Ord> Extend<K> for WorkQueue<K> {
    fn extend<I: IntoIterator<Item = K>>(&mut self, keys: I) {
        self.ready.extend(keys);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_keys_come_once_in_order_and_later_ones_wait() {
        let mut q = WorkQueue::default();
        q.add("b");
        q.add("a");
        q.add("b");
        let later = Instant::now() + Duration::from_secs(3600);
        q.add_at(later, "c");
        q.add_at(Instant::now(), "d");
        assert_eq!(
            q.take_due().into_iter().collect::<Vec<_>>(),
            ["a", "b", "d"]
        );
        assert!(q.take_due().is_empty());
        assert_eq!(q.next_wakeup(), Some(later));
        q.add_after_seconds(-5, "e");
        assert!(q.next_wakeup().is_some_and(|t| t < later));
    }
}
