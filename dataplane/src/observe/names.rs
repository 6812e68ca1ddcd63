//! The names a flow record carries: which pod holds an address, which
//! NetworkPolicy a number stands for, and which policies isolate the pods
//! of a policy set in each direction.
//!
//! The policy loop builds [`Names`] from its state after each compilation,
//! and only while someone holds them ([`Directory::hold`]: a watcher, or an
//! `inspect` asking through the agent's socket with a [`NameQuery`]): an
//! agent nobody asks keeps no second copy of the cluster's pods.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use super::event::PolicyRef;
use crate::policy::PolicyState;

/// A pod's name (namespaces shared between the pods of one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodName {
    pub namespace: Arc<str>,
    pub name: String,
}

impl PodName {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.to_string(),
        }
    }
}

/// One policy of a set: its number, and whether it isolates ingress and
/// egress.
type Member = (u32, bool, bool);

#[derive(Debug, Default)]
pub struct Names {
    pods: HashMap<IpAddr, PodName>,
    policies: HashMap<u32, PolicyRef>,
    sets: HashMap<u32, Vec<Member>>,
}

impl Names {
    /// The names of `state`'s pods and policies, and the policies of each
    /// of `sets` (as the compiler numbered them).
    pub fn from_policy(state: &PolicyState, sets: &BTreeMap<u32, Vec<u32>>) -> Self {
        let mut names = Self::default();
        let mut namespaces: HashMap<&str, Arc<str>> = HashMap::new();
        for pod in state.pods() {
            let ns = namespaces
                .entry(pod.namespace.as_str())
                .or_insert_with(|| pod.namespace.as_str().into())
                .clone();
            for ip in &pod.ips {
                names.pods.insert(
                    *ip,
                    PodName {
                        namespace: ns.clone(),
                        name: pod.name.clone(),
                    },
                );
            }
        }
        let mut isolation = HashMap::new();
        for (number, policy) in state.policies() {
            names.insert_policy(number, &policy.namespace, &policy.name);
            isolation.insert(number, (policy.isolates(false), policy.isolates(true)));
        }
        for (set, numbers) in sets {
            let members: Vec<Member> = numbers
                .iter()
                .filter_map(|n| isolation.get(n).map(|(i, e)| (*n, *i, *e)))
                .collect();
            names.sets.insert(*set, members);
        }
        names
    }

    pub fn insert_pod(&mut self, ip: IpAddr, pod: PodName) {
        self.pods.insert(ip, pod);
    }

    pub fn insert_policy(&mut self, number: u32, namespace: &str, name: &str) {
        self.policies.insert(
            number,
            PolicyRef {
                namespace: namespace.to_string(),
                name: name.to_string(),
            },
        );
    }

    /// `members`: (policy number, isolates ingress, isolates egress).
    pub fn insert_set(&mut self, set: u32, members: &[(u32, bool, bool)]) {
        self.sets.insert(set, members.to_vec());
    }

    pub fn pod(&self, ip: IpAddr) -> Option<&PodName> {
        self.pods.get(&ip)
    }

    pub fn policy(&self, number: u32) -> Option<PolicyRef> {
        self.policies.get(&number).cloned()
    }

    /// The policies of `set` that isolate its pods for egress (`egress`)
    /// or ingress.
    pub fn isolating(&self, set: u32, egress: bool) -> Vec<PolicyRef> {
        self.sets
            .get(&set)
            .into_iter()
            .flatten()
            .filter(|(_, i, e)| if egress { *e } else { *i })
            .filter_map(|(n, _, _)| self.policy(*n))
            .collect()
    }
}

/// [`Names`] shared between the policy loop, which publishes them, and the
/// agent's socket, which reads them while someone holds them ([`hold`]).
///
/// [`hold`]: Directory::hold
#[derive(Debug)]
pub struct Directory {
    users: AtomicUsize,
    current: RwLock<Arc<Names>>,
    refresh: Notify,
    generation: watch::Sender<u64>,
}

impl Default for Directory {
    fn default() -> Self {
        Self {
            users: AtomicUsize::new(0),
            current: RwLock::new(Arc::new(Names::default())),
            refresh: Notify::new(),
            generation: watch::channel(0).0,
        }
    }
}

/// Names are kept up to date while one of these lives.
#[derive(Debug)]
pub struct Hold(Arc<Directory>);

impl Drop for Hold {
    fn drop(&mut self) {
        if self.0.users.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Nobody reads them: the cluster's pods are not kept twice.
            self.0.publish(Names::default());
        }
    }
}

impl Directory {
    /// Whether anyone holds the names (the loop publishes them only then).
    pub fn wanted(&self) -> bool {
        self.users.load(Ordering::Acquire) > 0
    }

    /// Keeps the names published until the [`Hold`] is dropped.
    pub fn hold(self: &Arc<Self>) -> Hold {
        if self.users.fetch_add(1, Ordering::AcqRel) == 0 {
            self.refresh.notify_one();
        }
        Hold(self.clone())
    }

    /// Resolves when a holder asks for names published afresh.
    pub async fn requested(&self) {
        self.refresh.notified().await;
    }

    pub fn publish(&self, names: Names) {
        if let Ok(mut current) = self.current.write() {
            *current = Arc::new(names);
        }
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn current(&self) -> Arc<Names> {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(_) => Arc::new(Names::default()),
        }
    }

    /// Names published after this call (the loop is asked for them), or
    /// the current ones after `limit` (an agent without the policy loop
    /// never publishes any).
    pub async fn fresh(&self, limit: Duration) -> Arc<Names> {
        let mut rx = self.generation.subscribe();
        let seen = *rx.borrow_and_update();
        self.refresh.notify_one();
        let _ = tokio::time::timeout(limit, rx.wait_for(|g| *g > seen)).await;
        self.current()
    }
}

/// A question to the agent about names: the addresses and policy sets it
/// will show, the policies it names by number, and pods by `NS/NAME`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameQuery {
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    #[serde(default)]
    pub pods: Vec<String>,
    #[serde(default)]
    pub policies: Vec<u32>,
    #[serde(default)]
    pub sets: Vec<u32>,
}

/// Most entries of each list of a [`NameQuery`].
pub const MAX_QUERY_ENTRIES: usize = 4096;

impl NameQuery {
    pub fn check(&self) -> Result<(), String> {
        let longest = [
            self.addresses.len(),
            self.pods.len(),
            self.policies.len(),
            self.sets.len(),
        ]
        .into_iter()
        .max()
        .unwrap_or(0);
        if longest > MAX_QUERY_ENTRIES {
            return Err(format!(
                "a list of {longest} names, more than the limit of {MAX_QUERY_ENTRIES}"
            ));
        }
        Ok(())
    }
}

/// A pod's address and name, on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodEntry {
    pub ip: IpAddr,
    pub namespace: String,
    pub name: String,
}

/// A policy's number and name, on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyEntry {
    pub number: u32,
    pub namespace: String,
    pub name: String,
}

/// A policy set's policies, on the wire: (number, isolates ingress,
/// isolates egress).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetEntry {
    pub set: u32,
    pub policies: Vec<(u32, bool, bool)>,
}

/// What the agent answers to a [`NameQuery`]: only what was asked (and,
/// for a set, its policies' names).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameAnswer {
    pub pods: Vec<PodEntry>,
    pub policies: Vec<PolicyEntry>,
    pub sets: Vec<SetEntry>,
}

impl Names {
    /// The part of these names `q` asks for.
    pub fn answer(&self, q: &NameQuery) -> NameAnswer {
        let mut a = NameAnswer::default();
        let entry = |ip: IpAddr, p: &PodName| PodEntry {
            ip,
            namespace: p.namespace.to_string(),
            name: p.name.clone(),
        };
        for ip in &q.addresses {
            if let Some(p) = self.pods.get(ip) {
                a.pods.push(entry(*ip, p));
            }
        }
        if !q.pods.is_empty() {
            let wanted: std::collections::HashSet<&str> =
                q.pods.iter().map(String::as_str).collect();
            for (ip, p) in &self.pods {
                if wanted.contains(format!("{}/{}", p.namespace, p.name).as_str()) {
                    a.pods.push(entry(*ip, p));
                }
            }
        }
        let mut numbers: Vec<u32> = q.policies.clone();
        for set in &q.sets {
            if let Some(members) = self.sets.get(set) {
                a.sets.push(SetEntry {
                    set: *set,
                    policies: members.clone(),
                });
                numbers.extend(members.iter().map(|(n, _, _)| *n));
            }
        }
        numbers.sort_unstable();
        numbers.dedup();
        for n in numbers {
            if let Some(p) = self.policies.get(&n) {
                a.policies.push(PolicyEntry {
                    number: n,
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                });
            }
        }
        a
    }

    /// Names from an agent's answer.
    pub fn from_answer(a: &NameAnswer) -> Self {
        let mut n = Self::default();
        for p in &a.pods {
            n.insert_pod(p.ip, PodName::new(&p.namespace, &p.name));
        }
        for p in &a.policies {
            n.insert_policy(p.number, &p.namespace, &p.name);
        }
        for s in &a.sets {
            n.insert_set(s.set, &s.policies);
        }
        n
    }

    /// The addresses of pod `namespace/name`.
    pub fn addresses_of(&self, namespace: &str, name: &str) -> Vec<IpAddr> {
        let mut ips: Vec<IpAddr> = self
            .pods
            .iter()
            .filter(|(_, p)| &*p.namespace == namespace && p.name == name)
            .map(|(ip, _)| *ip)
            .collect();
        ips.sort();
        ips
    }

    /// The policies of `set`, by name.
    pub fn set_policies(&self, set: u32) -> Vec<PolicyRef> {
        self.sets
            .get(&set)
            .into_iter()
            .flatten()
            .filter_map(|(n, _, _)| self.policy(*n))
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_answer_holds_what_was_asked_and_round_trips() {
        let mut n = Names::default();
        n.insert_pod(ip("10.0.0.1"), PodName::new("x", "a"));
        n.insert_pod(ip("fd00::1"), PodName::new("x", "a"));
        n.insert_pod(ip("10.0.0.2"), PodName::new("y", "b"));
        n.insert_policy(1, "x", "p1");
        n.insert_policy(2, "x", "p2");
        n.insert_policy(3, "y", "p3");
        n.insert_set(5, &[(2, true, false)]);
        let a = n.answer(&NameQuery {
            addresses: vec![ip("10.0.0.2"), ip("10.9.9.9")],
            pods: vec!["x/a".into()],
            policies: vec![1],
            sets: vec![5, 6],
        });
        assert_eq!(a.pods.len(), 3);
        let numbers: Vec<u32> = a.policies.iter().map(|p| p.number).collect();
        assert_eq!(numbers, [1, 2], "asked for, and the set's");
        let back =
            Names::from_answer(&serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap());
        assert_eq!(back.addresses_of("x", "a"), [ip("10.0.0.1"), ip("fd00::1")]);
        assert_eq!(back.pod(ip("10.0.0.2")).unwrap().name, "b");
        assert_eq!(back.set_policies(5)[0].name, "p2");
        assert_eq!(back.isolating(5, true), []);
        assert!(back.policy(3).is_none(), "not asked for");
    }

    #[tokio::test]
    async fn names_are_kept_only_while_held() {
        let d = Arc::new(Directory::default());
        assert!(!d.wanted());
        let h = d.hold();
        assert!(d.wanted());
        let mut n = Names::default();
        n.insert_policy(1, "x", "p");
        d.publish(n);
        assert!(d.current().policy(1).is_some());
        drop(h);
        assert!(!d.wanted());
        assert!(
            d.current().policy(1).is_none(),
            "dropped with the last holder"
        );
        // Nobody publishes: `fresh` gives up after its limit.
        let t = std::time::Instant::now();
        let _ = d.fresh(Duration::from_millis(50)).await;
        assert!(t.elapsed() >= Duration::from_millis(50));
    }
}
