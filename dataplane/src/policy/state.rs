//! The cluster as NetworkPolicy sees it: namespaces, pods and policies in
//! their compact forms ([`super::model`]), updated per object, the
//! numbers given to policies, identities and policy sets, which stay the
//! same across compilations for as long as what they stand for exists,
//! and the label keys identities are made of ([`RelevantKeys`]).
//!
//! Owns that state and the per-object apply/delete. Must not hold API
//! objects; compilation lives in [`super::compile`].

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use ferry_ebpf_common::policy::{IDENTITY_CIDR_BIT, IDENTITY_FIRST_POD};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;

use super::identity::StableIds;
use super::model::{IpBlock, ModelError, NamedPort, Namespace, Peer, Pod, Policy, PolicyLimits};
use super::selector::{Labels, Requirement, Selector};

/// Bounds on what the policies can make the agent and the maps hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Per NetworkPolicy, checked when it is applied.
    pub policy: PolicyLimits,
    /// Rule entries one policy may add for one policy set.
    pub max_policy_entries: usize,
    /// Rule entries in all (the size of `FERRY_POL_RULES`).
    pub max_rule_entries: usize,
    /// ipBlock prefixes in all (the size of `FERRY_POL_CIDRS`).
    pub max_cidr_prefixes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            policy: PolicyLimits::default(),
            max_policy_entries: 65_536,
            max_rule_entries: 262_144,
            max_cidr_prefixes: 16_384,
        }
    }
}

/// What pods sharing a pod identity have in common: every selector sees
/// them alike, and so does every ipBlock (the CIDR identity of the
/// address; 0 when no ipBlock prefix holds it): (namespace, its labels
/// and the pod's labels, both kept to the [`RelevantKeys`], named ports,
/// CIDR identity).
pub(super) type IdentityKey = (String, Labels, Labels, Vec<NamedPort>, u32);

/// The label keys the peers' selectors of the policies mention
/// (`matchLabels` and `matchExpressions` of every operator): pod labels
/// under other keys (a ReplicaSet's `pod-template-hash`, a StatefulSet's
/// pod name) and namespace labels under other keys cannot make a selector
/// tell two pods apart, so identities ignore them. Pods that differ only
/// there share an identity, which keeps rule entries (per set, peer
/// identity and port) from growing with such labels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct RelevantKeys {
    /// Keys of peers' `podSelector`s.
    pub(super) pod: BTreeSet<String>,
    /// Keys of peers' `namespaceSelector`s.
    pub(super) namespace: BTreeSet<String>,
}

impl RelevantKeys {
    pub(super) fn of<'a>(policies: impl IntoIterator<Item = &'a Policy>) -> Self {
        let mut keys = RelevantKeys::default();
        let add = |to: &mut BTreeSet<String>, sel: &Option<Selector>| {
            for r in sel.iter().flat_map(|s| s.requirements()) {
                let (Requirement::In(k, _)
                | Requirement::NotIn(k, _)
                | Requirement::Exists(k)
                | Requirement::DoesNotExist(k)) = r;
                if !to.contains(k) {
                    to.insert(k.clone());
                }
            }
        };
        for p in policies {
            for rule in [false, true].into_iter().flat_map(|eg| p.rules(eg)) {
                for peer in &rule.peers {
                    if let Peer::Pods { namespaces, pods } = peer {
                        add(&mut keys.pod, pods);
                        add(&mut keys.namespace, namespaces);
                    }
                }
            }
        }
        keys
    }

    /// A pod's labels as identities see them.
    pub(super) fn pod_labels(&self, labels: &Labels) -> Labels {
        keep(labels, &self.pod)
    }

    /// A namespace's labels as identities see them.
    pub(super) fn namespace_labels(&self, labels: &Labels) -> Labels {
        keep(labels, &self.namespace)
    }
}

fn keep(labels: &Labels, keys: &BTreeSet<String>) -> Labels {
    labels.iter().filter(|(k, _)| keys.contains(*k)).collect()
}

/// Pods selected by the same policies, with the same own named ports when
/// an ingress rule of those policies names a port.
pub(super) type SetKey = (Vec<u32>, Vec<NamedPort>);

pub(super) struct Allocators {
    pub(super) identities: StableIds<IdentityKey>,
    pub(super) blocks: StableIds<IpBlock>,
    pub(super) cidrs: StableIds<Vec<u32>>,
    pub(super) sets: StableIds<SetKey>,
}

/// Namespaces, pods and policies, and the numbers given to them.
pub struct PolicyState {
    pub(super) limits: Limits,
    pub(super) namespaces: BTreeMap<String, Namespace>,
    pub(super) pods: BTreeMap<(String, String), Pod>,
    /// By (namespace, name): the policy's number and the policy.
    pub(super) policies: BTreeMap<(String, String), (u32, Policy)>,
    pub(super) policy_numbers: StableIds<(String, String)>,
    pub(super) ids: Allocators,
    /// The keys identities were made of by the last compilation: when
    /// they change, an identity whose key now stands for pods it did not
    /// stand for is given a new number (see `compile`).
    pub(super) relevant: Option<RelevantKeys>,
}

impl Default for PolicyState {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

impl PolicyState {
    pub fn new(limits: Limits) -> Self {
        PolicyState {
            limits,
            namespaces: BTreeMap::new(),
            pods: BTreeMap::new(),
            policies: BTreeMap::new(),
            policy_numbers: StableIds::new(1, u32::MAX),
            ids: Allocators {
                identities: StableIds::new(IDENTITY_FIRST_POD, IDENTITY_CIDR_BIT),
                blocks: StableIds::new(0, u32::MAX),
                cidrs: StableIds::new(1, IDENTITY_CIDR_BIT),
                sets: StableIds::new(1, u32::MAX),
            },
            relevant: None,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Adds or replaces a namespace. On error the state is unchanged.
    pub fn apply_namespace(&mut self, ns: &core::Namespace) -> Result<(), ModelError> {
        self.upsert_namespace(Namespace::from_api(ns)?);
        Ok(())
    }

    pub fn upsert_namespace(&mut self, ns: Namespace) {
        self.namespaces.insert(ns.name.clone(), ns);
    }

    pub fn delete_namespace(&mut self, name: &str) {
        self.namespaces.remove(name);
    }

    /// Adds or replaces a pod. On error the state is unchanged.
    pub fn apply_pod(&mut self, pod: &core::Pod) -> Result<(), ModelError> {
        self.upsert_pod(Pod::from_api(pod)?);
        Ok(())
    }

    pub fn upsert_pod(&mut self, pod: Pod) {
        self.pods
            .insert((pod.namespace.clone(), pod.name.clone()), pod);
    }

    pub fn delete_pod(&mut self, namespace: &str, name: &str) {
        self.pods.remove(&(namespace.to_string(), name.to_string()));
    }

    /// Adds or replaces a policy. An invalid policy or one over a limit is
    /// kept failed closed (it isolates what it selects, allows nothing) and
    /// its error returned; only a policy without namespace or name is not
    /// kept.
    pub fn apply_policy(&mut self, np: &net::NetworkPolicy) -> Result<(), ModelError> {
        let policy = Policy::from_api(np, &self.limits.policy)?;
        let error = policy.error.clone();
        self.upsert_policy(policy);
        error.map_or(Ok(()), Err)
    }

    /// Adds or replaces a policy; returns its number.
    pub fn upsert_policy(&mut self, policy: Policy) -> u32 {
        let key = (policy.namespace.clone(), policy.name.clone());
        // Exhausted only with four billion live policies; number 0 would
        // still isolate and allow.
        let number = self.policy_numbers.get_or_alloc(&key).unwrap_or_default();
        self.policies.insert(key, (number, policy));
        number
    }

    pub fn delete_policy(&mut self, namespace: &str, name: &str) {
        let key = (namespace.to_string(), name.to_string());
        if self.policies.remove(&key).is_some() {
            self.policy_numbers.release(&key);
        }
    }

    /// A namespace's labels; for a namespace not (yet) seen, only its
    /// name label.
    pub fn namespace_labels(&self, name: &str) -> Cow<'_, Labels> {
        match self.namespaces.get(name) {
            Some(ns) => Cow::Borrowed(&ns.labels),
            None => Cow::Owned(Namespace::new(name, Labels::new()).labels),
        }
    }

    pub fn namespaces(&self) -> impl Iterator<Item = &Namespace> {
        self.namespaces.values()
    }

    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.pods.values()
    }

    /// Every policy with its number.
    pub fn policies(&self) -> impl Iterator<Item = (u32, &Policy)> {
        self.policies.values().map(|(n, p)| (*n, p))
    }

    pub fn policy_number(&self, namespace: &str, name: &str) -> Option<u32> {
        self.policies
            .get(&(namespace.to_string(), name.to_string()))
            .map(|(n, _)| *n)
    }
}
