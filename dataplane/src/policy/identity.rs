//! Stable small numbers for keys that come and go between compilations:
//! pod identities, CIDR identities, policy sets and policies.
//!
//! Owns only the allocation: a key keeps its number for as long as it is in
//! use; a number freed by one round is not handed out again before the next
//! round begins, so the maps written from one compilation never give an old
//! number a new meaning while entries of the previous one may remain. Must
//! not know what the keys mean.

use std::collections::{BTreeMap, BTreeSet};

/// The range is used up (more live keys than numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no free number left in {first}..{end}")]
pub struct Exhausted {
    pub first: u32,
    pub end: u32,
}

#[derive(Debug, Clone)]
pub struct StableIds<K: Ord> {
    ids: BTreeMap<K, u32>,
    free: BTreeSet<u32>,
    /// Freed in the last round: reusable from the next one.
    quarantine: Vec<u32>,
    next: u32,
    first: u32,
    end: u32,
}

impl<K: Ord + Clone> StableIds<K> {
    /// Numbers in `first..end`.
    pub fn new(first: u32, end: u32) -> Self {
        StableIds {
            ids: BTreeMap::new(),
            free: BTreeSet::new(),
            quarantine: Vec::new(),
            next: first,
            first,
            end,
        }
    }

    pub fn get(&self, key: &K) -> Option<u32> {
        self.ids.get(key).copied()
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Starts a round: what the previous round freed becomes reusable, and
    /// `round.finish` frees every key the round did not ask for.
    pub fn round(&mut self) -> Round<'_, K> {
        self.free.extend(self.quarantine.drain(..));
        Round {
            ids: self,
            used: BTreeMap::new(),
        }
    }

    fn alloc(&mut self) -> Result<u32, Exhausted> {
        if let Some(id) = self.free.pop_first() {
            return Ok(id);
        }
        if self.next >= self.end {
            return Err(Exhausted {
                first: self.first,
                end: self.end,
            });
        }
        self.next += 1;
        Ok(self.next - 1)
    }

    /// Outside rounds: the key's number, allocated if new.
    pub fn get_or_alloc(&mut self, key: &K) -> Result<u32, Exhausted> {
        if let Some(id) = self.ids.get(key) {
            return Ok(*id);
        }
        let id = self.alloc()?;
        self.ids.insert(key.clone(), id);
        Ok(id)
    }

    /// Outside rounds: frees a key's number (reusable after the next
    /// [`StableIds::round`] begins).
    pub fn release(&mut self, key: &K) {
        if let Some(id) = self.ids.remove(key) {
            self.quarantine.push(id);
        }
    }
}

/// One compilation's use of a [`StableIds`].
pub struct Round<'a, K: Ord> {
    ids: &'a mut StableIds<K>,
    used: BTreeMap<K, u32>,
}

impl<K: Ord + Clone> Round<'_, K> {
    /// The key's number: the one it had, or a new one.
    pub fn id(&mut self, key: &K) -> Result<u32, Exhausted> {
        if let Some(id) = self.used.get(key) {
            return Ok(*id);
        }
        let id = match self.ids.ids.get(key) {
            Some(id) => *id,
            None => self.ids.alloc()?,
        };
        self.used.insert(key.clone(), id);
        Ok(id)
    }

    /// The key's number, a new one if the key had one before this round
    /// (whose old number is freed as if the key were gone): for a key
    /// that now stands for more than it did, so no entry written for its
    /// old meaning is read with the new one. Later calls for the key in
    /// this round, [`Round::id`] included, return the same new number.
    pub fn renew(&mut self, key: &K) -> Result<u32, Exhausted> {
        if let Some(id) = self.used.get(key) {
            return Ok(*id);
        }
        let id = self.ids.alloc()?;
        self.used.insert(key.clone(), id);
        Ok(id)
    }

    /// Ends the round: keys not asked for lose their numbers, and so do
    /// renewed keys their old ones.
    pub fn finish(self) {
        let Round { ids, used } = self;
        let old = std::mem::replace(&mut ids.ids, used);
        for (k, id) in old {
            if ids.ids.get(&k) != Some(&id) {
                ids.quarantine.push(id);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn kept_across_rounds_and_freed_numbers_wait_one_round() {
        let mut ids = StableIds::<&str>::new(16, 100);
        let mut r = ids.round();
        assert_eq!(r.id(&"a").unwrap(), 16);
        assert_eq!(r.id(&"b").unwrap(), 17);
        assert_eq!(r.id(&"a").unwrap(), 16);
        r.finish();
        // "a" gone, "c" new: it must not get 16 in the round that freed it.
        let mut r = ids.round();
        assert_eq!(r.id(&"b").unwrap(), 17);
        assert_eq!(r.id(&"c").unwrap(), 18);
        r.finish();
        let mut r = ids.round();
        assert_eq!(r.id(&"b").unwrap(), 17);
        assert_eq!(r.id(&"c").unwrap(), 18);
        assert_eq!(r.id(&"d").unwrap(), 16);
        r.finish();
        assert_eq!(ids.len(), 3);
    }

    #[test]
    fn a_renewed_key_gets_a_new_number_and_its_old_one_waits_a_round() {
        let mut ids = StableIds::<&str>::new(16, 100);
        let mut r = ids.round();
        assert_eq!(r.id(&"a").unwrap(), 16);
        assert_eq!(r.id(&"b").unwrap(), 17);
        r.finish();
        let mut r = ids.round();
        assert_eq!(r.renew(&"a").unwrap(), 18);
        // Asked again, by either call: the renewed number.
        assert_eq!(r.renew(&"a").unwrap(), 18);
        assert_eq!(r.id(&"a").unwrap(), 18);
        assert_eq!(r.id(&"b").unwrap(), 17);
        // A key renewed on its first appearance is simply new; a's old
        // number is not handed out in the round that freed it.
        assert_eq!(r.renew(&"c").unwrap(), 19);
        r.finish();
        assert_eq!(ids.get(&"a"), Some(18));
        // From the next round on, it is.
        let mut r = ids.round();
        assert_eq!(r.id(&"a").unwrap(), 18);
        assert_eq!(r.id(&"d").unwrap(), 16);
        r.finish();
        assert_eq!(ids.len(), 2);
    }

    #[test]
    fn exhaustion_is_an_error() {
        let mut ids = StableIds::<u8>::new(1, 3);
        let mut r = ids.round();
        assert!(r.id(&1).is_ok());
        assert!(r.id(&2).is_ok());
        assert_eq!(r.id(&3), Err(Exhausted { first: 1, end: 3 }));
    }

    #[test]
    fn release_outside_rounds() {
        let mut ids = StableIds::<u8>::new(1, 10);
        assert_eq!(ids.get_or_alloc(&7).unwrap(), 1);
        ids.release(&7);
        assert_eq!(ids.get_or_alloc(&8).unwrap(), 2);
        drop(ids.round());
        assert_eq!(ids.get_or_alloc(&9).unwrap(), 1);
    }
}
