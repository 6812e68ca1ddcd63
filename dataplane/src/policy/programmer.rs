//! Writes a compiled [`Desired`] into the policy maps, touching only the
//! entries that differ from what it wrote last, in an order that never
//! opens a window for traffic:
//!
//! 1. rules are added first (a new set's, a new identity's), then the CIDR
//!    prefixes, then the identities that refer to them: nothing points at
//!    an identity before its rules exist;
//! 2. endpoints are written next, so a pod changes set, or becomes
//!    isolated, only once its set's rules are in place, and stops being
//!    isolated before its rules go;
//! 3. removals last, in the reverse order.
//!
//! A write that fails (a full map) is counted and logged by the caller;
//! the next pass retries it, since the programmer records only what was
//! written. A failed rule never opens anything: its endpoint is still
//! isolated, so the flow is denied (fail closed).
//!
//! Owns only the map writes; the maps themselves are [`PolicyTables`] (the
//! agent's pinned maps, or a test's in-memory ones).

use std::collections::BTreeMap;

use ferry_ebpf_common::policy::{PolicyCidrKey, PolicyEndpoint, PolicyRuleKey, PolicyRuleValue};

use super::compile::Desired;
use crate::service::programmer::MapOpError;

/// The map operations the programmer needs.
pub trait PolicyTables {
    fn set_rule(
        &mut self,
        prefix: u32,
        key: &PolicyRuleKey,
        value: &PolicyRuleValue,
    ) -> Result<(), MapOpError>;
    fn del_rule(&mut self, prefix: u32, key: &PolicyRuleKey) -> Result<(), MapOpError>;
    fn set_cidr(
        &mut self,
        prefix: u32,
        key: &PolicyCidrKey,
        identity: u32,
    ) -> Result<(), MapOpError>;
    fn del_cidr(&mut self, prefix: u32, key: &PolicyCidrKey) -> Result<(), MapOpError>;
    fn set_identity(&mut self, addr: &[u32; 4], identity: u32) -> Result<(), MapOpError>;
    fn del_identity(&mut self, addr: &[u32; 4]) -> Result<(), MapOpError>;
    fn set_endpoint(&mut self, addr: &[u32; 4], ep: &PolicyEndpoint) -> Result<(), MapOpError>;
    fn del_endpoint(&mut self, addr: &[u32; 4]) -> Result<(), MapOpError>;
    /// Everything in the maps now (what a restarted agent finds).
    fn read_all(&self) -> Result<Written, MapOpError>;
}

/// What is in the maps, as far as the programmer knows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    pub rules: BTreeMap<(u32, PolicyRuleKey), PolicyRuleValue>,
    pub cidrs: BTreeMap<(u32, PolicyCidrKey), u32>,
    pub identities: BTreeMap<[u32; 4], u32>,
    pub endpoints: BTreeMap<[u32; 4], PolicyEndpoint>,
}

/// What one pass changed, and its first error.
#[derive(Debug, Default)]
pub struct Pass {
    pub written: usize,
    pub removed: usize,
    pub failed: usize,
    pub first_error: Option<MapOpError>,
}

impl Pass {
    fn note(&mut self, r: Result<(), MapOpError>, removal: bool) -> bool {
        match r {
            Ok(()) => {
                if removal {
                    self.removed += 1;
                } else {
                    self.written += 1;
                }
                true
            }
            Err(e) => {
                self.failed += 1;
                self.first_error.get_or_insert(e);
                false
            }
        }
    }
}

/// Keeps the maps equal to the last [`Desired`] it was given.
#[derive(Debug)]
pub struct PolicyProgrammer<T> {
    tables: T,
    written: Written,
}

/// Adds or updates every entry of `want` that `have` lacks or holds
/// otherwise, recording each success in `have`.
fn upsert<K: Ord + Clone, V: PartialEq + Clone>(
    want: &BTreeMap<K, V>,
    have: &mut BTreeMap<K, V>,
    pass: &mut Pass,
    mut set: impl FnMut(&K, &V) -> Result<(), MapOpError>,
) {
    for (k, v) in want {
        if have.get(k) != Some(v) && pass.note(set(k, v), false) {
            have.insert(k.clone(), v.clone());
        }
    }
}

/// Removes every entry of `have` that `want` lacks.
fn prune<K: Ord + Clone, V>(
    want: &BTreeMap<K, V>,
    have: &mut BTreeMap<K, V>,
    pass: &mut Pass,
    mut del: impl FnMut(&K) -> Result<(), MapOpError>,
) {
    let gone: Vec<K> = have
        .keys()
        .filter(|k| !want.contains_key(*k))
        .cloned()
        .collect();
    for k in gone {
        if pass.note(del(&k), true) {
            have.remove(&k);
        }
    }
}

impl<T: PolicyTables> PolicyProgrammer<T> {
    /// Starts from what the maps hold (a previous agent's entries are
    /// kept until the first pass replaces them: traffic is judged as
    /// before meanwhile).
    pub fn new(tables: T) -> Result<Self, MapOpError> {
        let written = tables.read_all()?;
        Ok(Self { tables, written })
    }

    pub fn written(&self) -> &Written {
        &self.written
    }

    pub fn tables(&self) -> &T {
        &self.tables
    }

    /// Makes the maps hold `desired`.
    pub fn apply(&mut self, desired: &Desired) -> Pass {
        let mut pass = Pass::default();
        let t = &mut self.tables;
        let w = &mut self.written;
        upsert(&desired.rules, &mut w.rules, &mut pass, |(p, k), v| {
            t.set_rule(*p, k, v)
        });
        upsert(&desired.cidrs, &mut w.cidrs, &mut pass, |(p, k), v| {
            t.set_cidr(*p, k, *v)
        });
        upsert(&desired.identities, &mut w.identities, &mut pass, |a, v| {
            t.set_identity(a, *v)
        });
        upsert(&desired.endpoints, &mut w.endpoints, &mut pass, |a, ep| {
            t.set_endpoint(a, ep)
        });
        prune(&desired.endpoints, &mut w.endpoints, &mut pass, |a| {
            t.del_endpoint(a)
        });
        prune(&desired.identities, &mut w.identities, &mut pass, |a| {
            t.del_identity(a)
        });
        prune(&desired.cidrs, &mut w.cidrs, &mut pass, |(p, k)| {
            t.del_cidr(*p, k)
        });
        prune(&desired.rules, &mut w.rules, &mut pass, |(p, k)| {
            t.del_rule(*p, k)
        });
        pass
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ferry_ebpf_common::policy::{DIR_INGRESS, EP_ISOLATED_INGRESS};

    /// In-memory maps that log every operation, and can refuse rules.
    #[derive(Default)]
    struct Log {
        now: Written,
        ops: Vec<String>,
        rules_full: bool,
    }

    impl PolicyTables for Log {
        fn set_rule(
            &mut self,
            prefix: u32,
            key: &PolicyRuleKey,
            value: &PolicyRuleValue,
        ) -> Result<(), MapOpError> {
            if self.rules_full {
                return Err(MapOpError {
                    op: "rule",
                    message: "full".into(),
                });
            }
            self.ops
                .push(format!("+rule set{} peer{}", key.set, key.peer));
            self.now.rules.insert((prefix, *key), *value);
            Ok(())
        }
        fn del_rule(&mut self, prefix: u32, key: &PolicyRuleKey) -> Result<(), MapOpError> {
            self.ops
                .push(format!("-rule set{} peer{}", key.set, key.peer));
            self.now.rules.remove(&(prefix, *key));
            Ok(())
        }
        fn set_cidr(&mut self, p: u32, k: &PolicyCidrKey, id: u32) -> Result<(), MapOpError> {
            self.ops.push(format!("+cidr {id}"));
            self.now.cidrs.insert((p, *k), id);
            Ok(())
        }
        fn del_cidr(&mut self, p: u32, k: &PolicyCidrKey) -> Result<(), MapOpError> {
            self.ops.push("-cidr".into());
            self.now.cidrs.remove(&(p, *k));
            Ok(())
        }
        fn set_identity(&mut self, a: &[u32; 4], id: u32) -> Result<(), MapOpError> {
            self.ops.push(format!("+id {} {id}", a[3]));
            self.now.identities.insert(*a, id);
            Ok(())
        }
        fn del_identity(&mut self, a: &[u32; 4]) -> Result<(), MapOpError> {
            self.ops.push(format!("-id {}", a[3]));
            self.now.identities.remove(a);
            Ok(())
        }
        fn set_endpoint(&mut self, a: &[u32; 4], ep: &PolicyEndpoint) -> Result<(), MapOpError> {
            self.ops.push(format!("+ep {} set{}", a[3], ep.set));
            self.now.endpoints.insert(*a, *ep);
            Ok(())
        }
        fn del_endpoint(&mut self, a: &[u32; 4]) -> Result<(), MapOpError> {
            self.ops.push(format!("-ep {}", a[3]));
            self.now.endpoints.remove(a);
            Ok(())
        }
        fn read_all(&self) -> Result<Written, MapOpError> {
            Ok(self.now.clone())
        }
    }

    fn rule(set: u32, peer: u32) -> ((u32, PolicyRuleKey), PolicyRuleValue) {
        let key = PolicyRuleKey {
            set,
            peer,
            dir: DIR_INGRESS,
            proto: 6,
            port: 80u16.to_be(),
        };
        ((96, key), PolicyRuleValue { policy: 1 })
    }

    fn desired(set: u32, peer: u32) -> Desired {
        let mut d = Desired::default();
        let (k, v) = rule(set, peer);
        d.rules.insert(k, v);
        d.identities.insert([0, 0, 0, 7], peer);
        d.endpoints.insert(
            [0, 0, 0, 5],
            PolicyEndpoint {
                set,
                flags: EP_ISOLATED_INGRESS,
                ..PolicyEndpoint::default()
            },
        );
        d
    }

    #[test]
    fn rules_before_the_identities_and_endpoints_that_use_them_removals_last() {
        let mut p = PolicyProgrammer::new(Log::default()).unwrap();
        let pass = p.apply(&desired(1, 100));
        assert_eq!(pass.written, 3);
        assert_eq!(
            p.tables.ops,
            ["+rule set1 peer100", "+id 7 100", "+ep 5 set1"]
        );

        // The pod moves to set 2 and its peer to identity 200: the new
        // rule first, then the identity and the endpoint, then the old
        // rule goes.
        p.tables.ops.clear();
        let pass = p.apply(&desired(2, 200));
        assert_eq!((pass.written, pass.removed), (3, 1));
        assert_eq!(
            p.tables.ops,
            [
                "+rule set2 peer200",
                "+id 7 200",
                "+ep 5 set2",
                "-rule set1 peer100"
            ]
        );
        // Nothing changed: nothing written.
        p.tables.ops.clear();
        let pass = p.apply(&desired(2, 200));
        assert_eq!((pass.written, pass.removed), (0, 0));
        assert!(p.tables.ops.is_empty());
    }

    #[test]
    fn a_failed_rule_is_retried_and_its_endpoint_stays_isolated() {
        let mut p = PolicyProgrammer::new(Log {
            rules_full: true,
            ..Log::default()
        })
        .unwrap();
        let want = desired(1, 100);
        let pass = p.apply(&want);
        assert_eq!(pass.failed, 1);
        assert!(pass.first_error.is_some());
        // The endpoint is written isolated anyway: the flow is denied, not
        // let through.
        assert_eq!(
            p.tables.now.endpoints[&[0, 0, 0, 5]].flags,
            EP_ISOLATED_INGRESS
        );
        p.tables.rules_full = false;
        let pass = p.apply(&want);
        assert_eq!((pass.written, pass.failed), (1, 0));
        assert_eq!(p.tables.now, p.written);
    }

    #[test]
    fn a_restarted_agent_starts_from_the_maps() {
        let mut log = Log::default();
        let (k, v) = rule(9, 900);
        log.now.rules.insert(k, v);
        let mut p = PolicyProgrammer::new(log).unwrap();
        let pass = p.apply(&desired(1, 100));
        assert_eq!((pass.written, pass.removed), (3, 1));
        assert_eq!(p.tables.now, p.written);
        assert!(!p.tables.now.rules.contains_key(&k));
    }
}
