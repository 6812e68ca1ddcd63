//! Objects indexed by their controller, as the workload controllers keep
//! them (client-go's informer indexers): each by namespace and name, by the
//! uid of the object that controls it, and, with no controller, among its
//! namespace's orphans; so an event costs the owner it concerns, never a
//! scan of every object.

use std::collections::{BTreeSet, HashMap};

/// (namespace, name).
pub(crate) type Key = (String, String);

/// What an indexed object says of its controller.
pub(crate) trait Controlled {
    /// The uid of the ownerReference marked `controller`.
    fn controller(&self) -> Option<&str>;
}

/// Objects by key, by controller uid, and orphans by namespace.
#[derive(Debug)]
pub(crate) struct ByController<V> {
    objects: HashMap<Key, V>,
    by_owner: HashMap<String, BTreeSet<Key>>,
    orphans: HashMap<String, BTreeSet<String>>,
}

impl<V> Default for ByController<V> {
    fn default() -> Self {
        Self {
            objects: HashMap::new(),
            by_owner: HashMap::new(),
            orphans: HashMap::new(),
        }
    }
}

impl<V: Controlled> ByController<V> {
    /// Indexes `v` under `key`, in place of what was there.
    pub fn insert(&mut self, key: Key, v: V) {
        self.remove(&key);
        match v.controller() {
            Some(owner) => {
                self.by_owner
                    .entry(owner.to_string())
                    .or_default()
                    .insert(key.clone());
            }
            None => {
                self.orphans
                    .entry(key.0.clone())
                    .or_default()
                    .insert(key.1.clone());
            }
        }
        self.objects.insert(key, v);
    }

    /// Drops `key` from every index; returns what it held.
    pub fn remove(&mut self, key: &Key) -> Option<V> {
        let old = self.objects.remove(key)?;
        match old.controller() {
            Some(owner) => {
                if let Some(set) = self.by_owner.get_mut(owner) {
                    set.remove(key);
                    if set.is_empty() {
                        self.by_owner.remove(owner);
                    }
                }
            }
            None => {
                if let Some(set) = self.orphans.get_mut(&key.0) {
                    set.remove(&key.1);
                    if set.is_empty() {
                        self.orphans.remove(&key.0);
                    }
                }
            }
        }
        Some(old)
    }

    pub fn get(&self, key: &Key) -> Option<&V> {
        self.objects.get(key)
    }

    /// The object under `key`, to change what it holds besides its
    /// controller (which [`ByController::insert`] alone may change).
    pub fn get_mut(&mut self, key: &Key) -> Option<&mut V> {
        self.objects.get_mut(key)
    }

    /// The keys of the objects `owner` (a uid) controls, in key order.
    pub fn owned_keys(&self, owner: &str) -> impl Iterator<Item = &Key> {
        self.by_owner.get(owner).into_iter().flatten()
    }

    /// The objects `owner` (a uid) controls, in key order.
    pub fn owned(&self, owner: &str) -> impl Iterator<Item = (&Key, &V)> {
        self.owned_keys(owner)
            .filter_map(|k| Some((k, self.objects.get(k)?)))
    }

    /// The names of the objects of `ns` without a controller, in order.
    pub fn orphans(&self, ns: &str) -> impl Iterator<Item = &String> {
        self.orphans.get(ns).into_iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Controlled for Option<&'static str> {
        fn controller(&self) -> Option<&str> {
            *self
        }
    }

    fn key(ns: &str, name: &str) -> Key {
        (ns.into(), name.into())
    }

    #[test]
    fn indexes_follow_a_change_of_controller_and_removal() {
        let mut idx = ByController::default();
        idx.insert(key("a", "p1"), Some("rs1"));
        idx.insert(key("a", "p2"), None);
        idx.insert(key("b", "p3"), Some("rs1"));
        assert_eq!(
            idx.owned_keys("rs1").cloned().collect::<Vec<_>>(),
            [key("a", "p1"), key("b", "p3")]
        );
        assert_eq!(idx.orphans("a").collect::<Vec<_>>(), ["p2"]);
        // Adopted: no longer an orphan.
        idx.insert(key("a", "p2"), Some("rs2"));
        assert_eq!(idx.orphans("a").count(), 0);
        assert_eq!(idx.owned("rs2").count(), 1);
        // Released.
        idx.insert(key("a", "p1"), None);
        assert_eq!(idx.owned_keys("rs1").count(), 1);
        assert_eq!(idx.remove(&key("b", "p3")), Some(Some("rs1")));
        assert_eq!(idx.owned_keys("rs1").count(), 0);
        assert!(!idx.by_owner.contains_key("rs1"), "empty sets are dropped");
        assert_eq!(idx.remove(&key("b", "p3")), None);
    }
}
