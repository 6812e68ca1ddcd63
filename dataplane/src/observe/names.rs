//! The names a flow record carries: which pod holds an address, which
//! NetworkPolicy a number stands for, and which policies isolate the pods
//! of a policy set in each direction.
//!
//! The policy loop builds [`Names`] from its state after each compilation,
//! and only while a watcher is connected ([`Directory::wanted`]): an agent
//! nobody watches keeps no second copy of the cluster's pods.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::Notify;

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
/// observe server, which reads them and says when it wants them.
#[derive(Debug, Default)]
pub struct Directory {
    wanted: AtomicBool,
    current: RwLock<Arc<Names>>,
    refresh: Notify,
}

impl Directory {
    /// Whether a watcher is connected (the loop publishes names only then).
    pub fn wanted(&self) -> bool {
        self.wanted.load(Ordering::Relaxed)
    }

    /// A watcher came (the loop publishes at once) or the last one left
    /// (the names are dropped).
    pub fn want(&self, on: bool) {
        let was = self.wanted.swap(on, Ordering::Relaxed);
        if on && !was {
            self.refresh.notify_one();
        }
        if !on {
            self.publish(Names::default());
        }
    }

    /// Resolves when a watcher asks for names the loop has not published.
    pub async fn requested(&self) {
        self.refresh.notified().await;
    }

    pub fn publish(&self, names: Names) {
        if let Ok(mut current) = self.current.write() {
            *current = Arc::new(names);
        }
    }

    pub fn current(&self) -> Arc<Names> {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(_) => Arc::new(Names::default()),
        }
    }
}
