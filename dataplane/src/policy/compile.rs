//! Compiles the [`PolicyState`] for one node into the exact contents of the
//! policy maps (`ferry_ebpf_common::policy`): [`Desired`].
//!
//! How a verdict is reached (the datapath's side is in the eBPF programs):
//! - every pod address of the cluster has a pod identity, shared by the
//!   addresses whose namespace, named ports, CIDR identity, and namespace
//!   and pod labels under the keys the peers' selectors mention are equal
//!   (no selector or ipBlock can tell them apart: labels no selector names,
//!   such as a pod's `pod-template-hash`, do not split identities); this
//!   node's own addresses are `IDENTITY_HOST`;
//! - the prefixes of the ipBlocks of the policies that select a local pod
//!   form an LPM trie whose entry for prefix `p` is the CIDR identity of
//!   S(p), the set of ipBlocks holding `p` (inside the cidr, outside every
//!   except). S(address) = S(longest prefix holding it), so one lookup
//!   says which ipBlocks hold any address. An IPv6 block never holds an
//!   IPv4(-mapped) address;
//! - local pods selected by the same policies (and, where an ingress rule
//!   names a port, with the same named ports) share a policy set; the
//!   rules trie holds, per set, direction, peer identity, protocol and
//!   port prefix, what the set's policies allow.
//!
//! Owns that translation and the limits on its output (a policy whose
//! output would not fit is failed closed and reported). Must not touch
//! maps: the agent writes the [`Desired`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::rc::Rc;

use ferry_ebpf_common::policy::{
    DIR_EGRESS, DIR_INGRESS, EP_ISOLATED_EGRESS, EP_ISOLATED_INGRESS, IDENTITY_ANY, IDENTITY_HOST,
    PolicyCidrKey, PolicyEndpoint, PolicyRuleKey, PolicyRuleValue, RULE_PREFIX_ANY_PORT,
    RULE_PREFIX_ANY_PROTO,
};
use ipnet::IpNet;

use super::identity::Exhausted;
use super::model::{IpBlock, ModelError, NamedPort, Peer, Policy, PortMatch, resolve_named};
use super::selector::{Labels, Selector};
use super::state::{IdentityKey, PolicyState, RelevantKeys, SetKey};
use crate::service::model::Protocol;
use crate::service::programmer::{addr_words, proto_number};

/// A NetworkPolicy's name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PolicyName {
    pub namespace: String,
    pub name: String,
}

/// Why a policy is failed closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProblemKind {
    #[error(transparent)]
    Invalid(#[from] ModelError),
    #[error("{what}: {count} needed, more than the limit of {limit}")]
    OverLimit {
        what: &'static str,
        count: usize,
        limit: usize,
    },
}

/// A policy that isolates the pods it selects but allows nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("NetworkPolicy {namespace}/{name} (#{number}) allows nothing: {kind}")]
pub struct PolicyProblem {
    pub namespace: String,
    pub name: String,
    pub number: u32,
    pub kind: ProblemKind,
}

/// The contents of the policy maps for one node, and what explains them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// `FERRY_POL_EP`: every address of this node's pods (hostNetwork ones
    /// aside). A pod no policy selects has set 0 and no flags. `ifindex`
    /// is left 0 for the agent to fill.
    pub endpoints: BTreeMap<[u32; 4], PolicyEndpoint>,
    /// `FERRY_POL_IDS`.
    pub identities: BTreeMap<[u32; 4], u32>,
    /// `FERRY_POL_CIDRS`: (prefix length, key) to CIDR identity (0: no
    /// ipBlock holds the prefix; the entry is a hole in a shorter one).
    pub cidrs: BTreeMap<(u32, PolicyCidrKey), u32>,
    /// `FERRY_POL_RULES`: (prefix length, key), bits past the prefix zero.
    pub rules: BTreeMap<(u32, PolicyRuleKey), PolicyRuleValue>,
    /// Every policy's number.
    pub policies: BTreeMap<u32, PolicyName>,
    /// The policies (numbers) that select the pods of each set.
    pub sets: BTreeMap<u32, Vec<u32>>,
    /// Failed-closed policies, in number order.
    pub problems: Vec<PolicyProblem>,
}

/// A prefix in the maps' address form: 16 bytes (IPv4 mapped), bits past
/// `len` zero. Ordered by (bytes, len): a pre-order walk of the trie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Prefix {
    bytes: [u8; 16],
    len: u8,
}

/// `::ffff:0:0/96`: IPv4 addresses as the maps hold them.
const MAPPED: Prefix = Prefix {
    bytes: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0],
    len: 96,
};

impl Prefix {
    fn new(bytes: [u8; 16], len: u8) -> Self {
        let mut bytes = bytes;
        for (i, b) in bytes.iter_mut().enumerate() {
            let keep = (usize::from(len)).saturating_sub(i * 8).min(8);
            *b &= if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
        }
        Prefix { bytes, len }
    }

    fn of_net(net: &IpNet) -> Self {
        match net {
            IpNet::V4(n) => Prefix::new(n.addr().to_ipv6_mapped().octets(), 96 + n.prefix_len()),
            IpNet::V6(n) => Prefix::new(n.addr().octets(), n.prefix_len()),
        }
    }

    fn contains(&self, other: &Prefix) -> bool {
        other.len >= self.len && Prefix::new(other.bytes, self.len).bytes == self.bytes
    }

    fn key(&self) -> (u32, PolicyCidrKey) {
        let o = &self.bytes;
        let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
        (
            u32::from(self.len),
            PolicyCidrKey {
                addr: [w(0), w(4), w(8), w(12)],
            },
        )
    }
}

fn addr_bytes(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The fewest port prefixes covering `lo..=hi`: (first port, prefix bits).
pub fn port_prefixes(lo: u16, hi: u16) -> Vec<(u16, u32)> {
    let mut out = Vec::new();
    let (mut lo, hi) = (u32::from(lo), u32::from(hi));
    while lo <= hi {
        let mut size = 1u32;
        while size < 65_536 && lo % (size * 2) == 0 && lo + size * 2 - 1 <= hi {
            size *= 2;
        }
        // `lo` <= 65535 here.
        out.push((lo as u16, 16 - size.trailing_zeros()));
        lo += size;
    }
    out
}

/// One rule entry of a policy, before its set is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    peer: u32,
    dir: u8,
    proto: u8,
    port: u16,
    len: u32,
}

/// A policy's output, shared by every set holding it.
#[derive(Default)]
struct Compiled<'a> {
    entries: Vec<Entry>,
    /// Ingress rules naming a port: resolved on the set's own ports.
    own_named: Vec<(u32, Protocol, &'a str)>,
}

impl Compiled<'_> {
    fn count(&self) -> usize {
        self.entries.len() + self.own_named.len()
    }
}

struct Pol<'a> {
    number: u32,
    policy: &'a Policy,
    failed: Option<ProblemKind>,
}

/// Pods alike to every selector: (namespace, labels under the keys
/// selectors name, named ports).
struct Group<'a> {
    namespace: &'a str,
    labels: &'a Labels,
    ports: &'a [NamedPort],
}

struct OverLimit(usize);

impl PolicyState {
    /// The maps' contents for node `node` whose own addresses are
    /// `node_addrs`. Numbers stay those of the previous compilation for
    /// whatever is unchanged. Fails only when a number range is used up
    /// (more live identities than 2^31), leaving the numbers as they were.
    pub fn compile(&mut self, node: &str, node_addrs: &[IpAddr]) -> Result<Desired, Exhausted> {
        let limits = self.limits;
        let PolicyState {
            namespaces,
            pods,
            policies,
            ids,
            relevant: last_relevant,
            ..
        } = self;
        let mut desired = Desired::default();
        let node_addrs: BTreeSet<IpAddr> = node_addrs.iter().map(|a| a.to_canonical()).collect();

        let mut pols: Vec<Pol> = policies
            .values()
            .map(|(number, policy)| Pol {
                number: *number,
                policy,
                failed: policy.error.clone().map(ProblemKind::Invalid),
            })
            .collect();
        pols.sort_by_key(|p| p.number);
        let mut pols_by_ns: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, p) in pols.iter().enumerate() {
            desired.policies.insert(
                p.number,
                PolicyName {
                    namespace: p.policy.namespace.clone(),
                    name: p.policy.name.clone(),
                },
            );
            pols_by_ns.entry(&p.policy.namespace).or_default().push(i);
        }

        // Namespace labels, also of namespaces known only from their pods.
        let default_ns: BTreeMap<&str, Labels> = pods
            .values()
            .map(|p| p.namespace.as_str())
            .filter(|ns| !namespaces.contains_key(*ns))
            .map(|ns| (ns, super::model::Namespace::new(ns, Labels::new()).labels))
            .collect();
        let ns_labels: BTreeMap<&str, &Labels> = namespaces
            .values()
            .map(|n| (n.name.as_str(), &n.labels))
            .chain(default_ns.iter().map(|(k, v)| (*k, v)))
            .collect();

        // Each address's pod: the first by (namespace, name) claiming it;
        // this node's own addresses are the host's.
        let with_ips: Vec<&super::model::Pod> = pods
            .values()
            .filter(|p| !p.host_network && !p.ips.is_empty())
            .collect();
        let mut owner: BTreeMap<IpAddr, usize> = BTreeMap::new();
        for (i, p) in with_ips.iter().enumerate() {
            for a in &p.ips {
                if !node_addrs.contains(a) {
                    owner.entry(*a).or_insert(i);
                }
            }
        }
        let mut local_addrs: BTreeMap<usize, Vec<IpAddr>> = BTreeMap::new();
        for (a, i) in &owner {
            if with_ips[*i].node_name == node {
                local_addrs.entry(*i).or_default().push(*a);
            }
        }

        // Which policies select each local pod.
        let mut selecting: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        let mut relevant = vec![false; pols.len()];
        for i in local_addrs.keys() {
            let pod = with_ips[*i];
            let sel: Vec<usize> = pols_by_ns
                .get(pod.namespace.as_str())
                .into_iter()
                .flatten()
                .copied()
                .filter(|pi| pols[*pi].policy.pod_selector.matches(&pod.labels))
                .collect();
            for pi in &sel {
                relevant[*pi] = true;
            }
            selecting.insert(*i, sel);
        }

        // ipBlocks of the relevant policies and the prefixes they name.
        let mut block_index: BTreeMap<&IpBlock, usize> = BTreeMap::new();
        let mut blocks: Vec<&IpBlock> = Vec::new();
        let mut marks: BTreeMap<Prefix, (Vec<usize>, Vec<usize>)> = BTreeMap::new();
        for (pi, p) in pols.iter_mut().enumerate() {
            if !relevant[pi] || p.failed.is_some() {
                continue;
            }
            let mine: BTreeSet<&IpBlock> = [false, true]
                .into_iter()
                .flat_map(|eg| p.policy.rules(eg))
                .flat_map(|r| &r.peers)
                .filter_map(|peer| match peer {
                    Peer::Block(b) if !block_index.contains_key(b) => Some(b),
                    _ => None,
                })
                .collect();
            let new: BTreeSet<Prefix> = mine
                .iter()
                .flat_map(|b| std::iter::once(&b.cidr).chain(&b.except))
                .map(Prefix::of_net)
                .chain(std::iter::once(MAPPED))
                .filter(|pre| !marks.contains_key(pre))
                .collect();
            if marks.len() + new.len() > limits.max_cidr_prefixes {
                p.failed = Some(ProblemKind::OverLimit {
                    what: "ipBlock prefixes of all policies",
                    count: marks.len() + new.len(),
                    limit: limits.max_cidr_prefixes,
                });
                continue;
            }
            for b in mine {
                let bi = blocks.len();
                block_index.insert(b, bi);
                blocks.push(b);
                let cidr = Prefix::of_net(&b.cidr);
                if matches!(b.cidr, IpNet::V6(_)) && MAPPED.contains(&cidr) {
                    // An IPv6 block inside the IPv4-mapped range holds no
                    // address a packet carries.
                    continue;
                }
                marks.entry(cidr).or_default().0.push(bi);
                for e in &b.except {
                    marks.entry(Prefix::of_net(e)).or_default().1.push(bi);
                }
                if matches!(b.cidr, IpNet::V6(_)) && cidr.contains(&MAPPED) {
                    marks.entry(MAPPED).or_default().1.push(bi);
                }
            }
        }

        // S(p) for every prefix, walking the trie in pre-order; a prefix
        // whose S is its parent's adds nothing and is left out.
        let mut block_ids = ids.blocks.round();
        let mut cidr_ids = ids.cidrs.round();
        let mut stack: Vec<(Prefix, Rc<Vec<usize>>)> = Vec::new();
        let mut cidr_of_set: BTreeMap<Rc<Vec<usize>>, u32> = BTreeMap::new();
        let mut cidr_lookup: HashMap<Prefix, u32> = HashMap::new();
        let mut cidr_lens: BTreeSet<u8> = BTreeSet::new();
        let mut block_cidrs: Vec<Vec<u32>> = vec![Vec::new(); blocks.len()];
        for (pre, (adds, removes)) in &marks {
            while stack.last().is_some_and(|(top, _)| !top.contains(pre)) {
                stack.pop();
            }
            let parent = stack.last().map(|(_, s)| s.clone()).unwrap_or_default();
            let mut set: BTreeSet<usize> = parent.iter().copied().collect();
            set.extend(adds);
            for r in removes {
                set.remove(r);
            }
            let set: Rc<Vec<usize>> = Rc::new(set.into_iter().collect());
            if set != parent {
                let cid = match cidr_of_set.get(&set) {
                    Some(c) => *c,
                    None if set.is_empty() => IDENTITY_ANY,
                    None => {
                        let mut key = Vec::with_capacity(set.len());
                        for b in set.iter() {
                            key.push(block_ids.id(blocks[*b])?);
                        }
                        key.sort_unstable();
                        let cid = cidr_ids.id(&key)? | ferry_ebpf_common::policy::IDENTITY_CIDR_BIT;
                        for b in set.iter() {
                            block_cidrs[*b].push(cid);
                        }
                        cid
                    }
                };
                cidr_of_set.insert(set.clone(), cid);
                cidr_lookup.insert(*pre, cid);
                cidr_lens.insert(pre.len);
                desired.cidrs.insert(pre.key(), cid);
            }
            stack.push((*pre, set));
        }
        let cidr_of = |addr: IpAddr| -> u32 {
            let bytes = addr_bytes(addr);
            cidr_lens
                .iter()
                .rev()
                .find_map(|len| cidr_lookup.get(&Prefix::new(bytes, *len)).copied())
                .unwrap_or(IDENTITY_ANY)
        };

        // Pod identities, per address: pods alike to every selector (same
        // namespace, same labels under the keys selectors name), with the
        // same named ports and CIDR identity share one.
        let label_keys = RelevantKeys::of(pols.iter().map(|p| p.policy));
        let seen_labels: Vec<Labels> = with_ips
            .iter()
            .map(|p| label_keys.pod_labels(&p.labels))
            .collect();
        let seen_ns: BTreeMap<&str, Labels> = ns_labels
            .iter()
            .map(|(ns, l)| (*ns, label_keys.namespace_labels(l)))
            .collect();
        // When the keys changed since the last compilation, a key may now
        // stand for pods it did not (a label no longer relevant merges
        // pods the previous maps told apart): such identities get new
        // numbers, so the rules written for an old number are never read
        // for pods they were not compiled for. A key that only lost pods
        // (a label newly relevant splits them off) keeps its number.
        let keys_changed = last_relevant.as_ref().filter(|r| **r != label_keys);
        let no_labels = Labels::new();
        let mut groups: Vec<Group> = Vec::new();
        let mut group_of: BTreeMap<(&str, &Labels, &[NamedPort]), usize> = BTreeMap::new();
        let mut per_addr: Vec<(IpAddr, usize, u32)> = Vec::with_capacity(owner.len());
        let mut renew: BTreeSet<(usize, u32)> = BTreeSet::new();
        for (addr, i) in &owner {
            let pod = with_ips[*i];
            let gkey = (
                pod.namespace.as_str(),
                &seen_labels[*i],
                pod.named_ports.as_slice(),
            );
            let g = *group_of.entry(gkey).or_insert_with(|| {
                groups.push(Group {
                    namespace: &pod.namespace,
                    labels: &seen_labels[*i],
                    ports: &pod.named_ports,
                });
                groups.len() - 1
            });
            let cid = cidr_of(*addr);
            if let Some(last) = keys_changed {
                let nsl = ns_labels.get(pod.namespace.as_str()).copied();
                let seen = seen_ns.get(pod.namespace.as_str()).unwrap_or(&no_labels);
                if last.pod_labels(&pod.labels) != seen_labels[*i]
                    || nsl.is_some_and(|l| last.namespace_labels(l) != *seen)
                {
                    renew.insert((g, cid));
                }
            }
            per_addr.push((*addr, g, cid));
        }
        let mut identity_of: BTreeMap<(usize, u32), u32> = BTreeMap::new();
        let mut group_idents: Vec<BTreeSet<u32>> = vec![BTreeSet::new(); groups.len()];
        let mut ident_group: HashMap<u32, usize> = HashMap::new();
        let mut cidr_idents: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        let mut identity_ids = ids.identities.round();
        for (addr, g, cid) in per_addr {
            let id = match identity_of.get(&(g, cid)) {
                Some(id) => *id,
                None => {
                    let grp = &groups[g];
                    let key: IdentityKey = (
                        grp.namespace.to_string(),
                        seen_ns.get(grp.namespace).cloned().unwrap_or_default(),
                        grp.labels.clone(),
                        grp.ports.to_vec(),
                        cid,
                    );
                    let id = if renew.contains(&(g, cid)) {
                        identity_ids.renew(&key)?
                    } else {
                        identity_ids.id(&key)?
                    };
                    identity_of.insert((g, cid), id);
                    group_idents[g].insert(id);
                    ident_group.insert(id, g);
                    if cid != IDENTITY_ANY {
                        cidr_idents.entry(cid).or_default().push(id);
                    }
                    id
                }
            };
            desired.identities.insert(addr_words(addr), id);
        }
        for a in &node_addrs {
            desired.identities.insert(addr_words(*a), IDENTITY_HOST);
        }
        let all_idents: Vec<u32> = {
            let mut v: Vec<u32> = identity_of.values().copied().collect();
            v.sort_unstable();
            v
        };
        let mut groups_by_ns: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (g, grp) in groups.iter().enumerate() {
            groups_by_ns.entry(grp.namespace).or_default().push(g);
        }

        // What each relevant policy allows.
        let mut peer_memo: PeerMemo = BTreeMap::new();
        let mut compiled: Vec<Compiled> = Vec::with_capacity(pols.len());
        for (pi, p) in pols.iter_mut().enumerate() {
            let mut out = Compiled::default();
            if relevant[pi] && p.failed.is_none() {
                let ctx = PeerCtx {
                    ns_labels: &ns_labels,
                    groups: &groups,
                    groups_by_ns: &groups_by_ns,
                    group_idents: &group_idents,
                };
                let limit = limits.max_policy_entries;
                let res = compile_policy(
                    p.policy,
                    &ctx,
                    &mut peer_memo,
                    &block_index,
                    &block_cidrs,
                    &cidr_idents,
                    &all_idents,
                    &ident_group,
                    limit,
                    &mut out,
                );
                if let Err(OverLimit(count)) = res {
                    p.failed = Some(ProblemKind::OverLimit {
                        what: "rule entries of one policy",
                        count,
                        limit,
                    });
                    out = Compiled::default();
                }
            }
            compiled.push(out);
        }

        // Policy sets; policies whose entries would overflow the rules map
        // are failed closed, the largest first.
        let set_keys = |pols: &[Pol], compiled: &[Compiled]| -> BTreeMap<usize, SetKey> {
            selecting
                .iter()
                .filter(|(_, sel)| !sel.is_empty())
                .map(|(i, sel)| {
                    let numbers = sel.iter().map(|pi| pols[*pi].number).collect();
                    let own = sel.iter().any(|pi| !compiled[*pi].own_named.is_empty());
                    let ports = if own {
                        with_ips[*i].named_ports.clone()
                    } else {
                        Vec::new()
                    };
                    (*i, (numbers, ports))
                })
                .collect()
        };
        let keys = set_keys(&pols, &compiled);
        let mut distinct: BTreeMap<&SetKey, usize> = BTreeMap::new();
        for (i, k) in &keys {
            distinct.entry(k).or_insert(*i);
        }
        let mut share: BTreeMap<usize, usize> = BTreeMap::new();
        for pod in distinct.values() {
            for pi in &selecting[pod] {
                *share.entry(*pi).or_default() += compiled[*pi].count();
            }
        }
        let mut total: usize = share.values().sum();
        if total > limits.max_rule_entries {
            let mut by_size: Vec<(usize, usize)> = share.iter().map(|(pi, n)| (*n, *pi)).collect();
            by_size.sort_by(|a, b| b.0.cmp(&a.0).then(pols[a.1].number.cmp(&pols[b.1].number)));
            for (n, pi) in by_size {
                if total <= limits.max_rule_entries {
                    break;
                }
                pols[pi].failed = Some(ProblemKind::OverLimit {
                    what: "rule entries of all policies",
                    count: total,
                    limit: limits.max_rule_entries,
                });
                compiled[pi] = Compiled::default();
                total -= n;
            }
        }
        let keys = set_keys(&pols, &compiled);

        let mut set_ids = ids.sets.round();
        let mut done: BTreeSet<u32> = BTreeSet::new();
        for (i, addrs) in &local_addrs {
            let sel = &selecting[i];
            let (set, flags) = match keys.get(i) {
                None => (0, 0),
                Some(key) => {
                    let set = set_ids.id(key)?;
                    let mut flags = 0;
                    for pi in sel {
                        if pols[*pi].policy.isolates_ingress {
                            flags |= EP_ISOLATED_INGRESS;
                        }
                        if pols[*pi].policy.isolates_egress {
                            flags |= EP_ISOLATED_EGRESS;
                        }
                    }
                    if done.insert(set) {
                        desired.sets.insert(set, key.0.clone());
                        for pi in sel {
                            let c = &compiled[*pi];
                            let value = PolicyRuleValue {
                                policy: pols[*pi].number,
                            };
                            for e in &c.entries {
                                insert_rule(&mut desired.rules, set, e, value);
                            }
                            for (peer, proto, name) in &c.own_named {
                                for port in resolve_named(&key.1, name, *proto) {
                                    let e = Entry {
                                        peer: *peer,
                                        dir: DIR_INGRESS,
                                        proto: proto_number(*proto),
                                        port,
                                        len: ferry_ebpf_common::policy::RULE_PREFIX_FULL,
                                    };
                                    insert_rule(&mut desired.rules, set, &e, value);
                                }
                            }
                        }
                    }
                    (set, flags)
                }
            };
            for a in addrs {
                desired.endpoints.insert(
                    addr_words(*a),
                    PolicyEndpoint {
                        set,
                        flags,
                        ifindex: 0,
                        _pad: 0,
                    },
                );
            }
        }

        for p in &pols {
            if let Some(kind) = &p.failed {
                desired.problems.push(PolicyProblem {
                    namespace: p.policy.namespace.clone(),
                    name: p.policy.name.clone(),
                    number: p.number,
                    kind: kind.clone(),
                });
            }
        }
        block_ids.finish();
        cidr_ids.finish();
        identity_ids.finish();
        set_ids.finish();
        *last_relevant = Some(label_keys);
        Ok(desired)
    }
}

fn insert_rule(
    rules: &mut BTreeMap<(u32, PolicyRuleKey), PolicyRuleValue>,
    set: u32,
    e: &Entry,
    value: PolicyRuleValue,
) {
    let key = PolicyRuleKey {
        set,
        peer: e.peer,
        dir: e.dir,
        proto: e.proto,
        port: e.port.to_be(),
    };
    rules.entry((e.len, key)).or_insert(value);
}

struct PeerCtx<'a, 'b> {
    ns_labels: &'b BTreeMap<&'a str, &'a Labels>,
    groups: &'b [Group<'a>],
    groups_by_ns: &'b BTreeMap<&'a str, Vec<usize>>,
    group_idents: &'b [BTreeSet<u32>],
}

impl<'a> PeerCtx<'a, '_> {
    /// The pod identities a pod peer of a policy in `own_ns` matches.
    fn pods(
        &self,
        own_ns: &str,
        namespaces: Option<&Selector>,
        pods: Option<&Selector>,
    ) -> Vec<u32> {
        let mut out = BTreeSet::new();
        let mut add_ns = |ns: &str| {
            for g in self.groups_by_ns.get(ns).into_iter().flatten() {
                if pods.is_none_or(|s| s.matches(self.groups[*g].labels)) {
                    out.extend(self.group_idents[*g].iter().copied());
                }
            }
        };
        match namespaces {
            None => add_ns(own_ns),
            Some(sel) => {
                for (ns, labels) in self.ns_labels {
                    if sel.matches(labels) {
                        add_ns(ns);
                    }
                }
            }
        }
        out.into_iter().collect()
    }
}

/// Pod identities per pod peer: (the policy's namespace when the peer has
/// no namespace selector, namespace selector, pod selector).
type PeerMemo<'a> = BTreeMap<(&'a str, Option<&'a Selector>, Option<&'a Selector>), Rc<Vec<u32>>>;

enum PeerIds {
    Any,
    Pods(Rc<Vec<u32>>),
    Block(usize),
}

#[allow(clippy::too_many_arguments)]
fn compile_policy<'a>(
    policy: &'a Policy,
    ctx: &PeerCtx<'a, '_>,
    memo: &mut PeerMemo<'a>,
    block_index: &BTreeMap<&IpBlock, usize>,
    block_cidrs: &[Vec<u32>],
    cidr_idents: &BTreeMap<u32, Vec<u32>>,
    all_idents: &[u32],
    ident_group: &HashMap<u32, usize>,
    limit: usize,
    out: &mut Compiled<'a>,
) -> Result<(), OverLimit> {
    let check = |out: &Compiled| {
        if out.count() > limit {
            Err(OverLimit(out.count()))
        } else {
            Ok(())
        }
    };
    for egress in [false, true] {
        let dir = if egress { DIR_EGRESS } else { DIR_INGRESS };
        for rule in policy.rules(egress) {
            let mut peers = Vec::new();
            if rule.peers.is_empty() {
                peers.push(PeerIds::Any);
            }
            for peer in &rule.peers {
                match peer {
                    Peer::Pods { namespaces, pods } => {
                        let own = if namespaces.is_none() {
                            policy.namespace.as_str()
                        } else {
                            ""
                        };
                        let key = (own, namespaces.as_ref(), pods.as_ref());
                        let ids = memo
                            .entry(key)
                            .or_insert_with(|| {
                                Rc::new(ctx.pods(own, namespaces.as_ref(), pods.as_ref()))
                            })
                            .clone();
                        peers.push(PeerIds::Pods(ids));
                    }
                    Peer::Block(b) => {
                        if let Some(bi) = block_index.get(b) {
                            peers.push(PeerIds::Block(*bi));
                        }
                    }
                }
            }
            // The identities a rule entry names for a peer.
            let ids_of = |p: &PeerIds| -> Vec<u32> {
                match p {
                    PeerIds::Any => vec![IDENTITY_ANY],
                    PeerIds::Pods(ids) => ids.to_vec(),
                    PeerIds::Block(b) => block_cidrs[*b].clone(),
                }
            };
            // The pod identities a peer holds (egress named ports).
            let pods_of = |p: &PeerIds| -> Vec<u32> {
                match p {
                    PeerIds::Any => all_idents.to_vec(),
                    PeerIds::Pods(ids) => ids.to_vec(),
                    PeerIds::Block(b) => block_cidrs[*b]
                        .iter()
                        .flat_map(|c| cidr_idents.get(c).into_iter().flatten().copied())
                        .collect(),
                }
            };
            for p in &peers {
                if rule.ports.is_empty() {
                    for peer in ids_of(p) {
                        out.entries.push(Entry {
                            peer,
                            dir,
                            proto: 0,
                            port: 0,
                            len: RULE_PREFIX_ANY_PROTO,
                        });
                    }
                    check(out)?;
                    continue;
                }
                for port in &rule.ports {
                    let proto = proto_number(port.protocol);
                    match &port.port {
                        PortMatch::Any => {
                            for peer in ids_of(p) {
                                out.entries.push(Entry {
                                    peer,
                                    dir,
                                    proto,
                                    port: 0,
                                    len: RULE_PREFIX_ANY_PORT,
                                });
                            }
                        }
                        PortMatch::Range(lo, hi) => {
                            let cover = port_prefixes(*lo, *hi);
                            for peer in ids_of(p) {
                                for (port, bits) in &cover {
                                    out.entries.push(Entry {
                                        peer,
                                        dir,
                                        proto,
                                        port: *port,
                                        len: RULE_PREFIX_ANY_PORT + bits,
                                    });
                                }
                                check(out)?;
                            }
                        }
                        PortMatch::Named(name) if !egress => {
                            for peer in ids_of(p) {
                                out.own_named.push((peer, port.protocol, name.as_str()));
                            }
                        }
                        PortMatch::Named(name) => {
                            for peer in pods_of(p) {
                                let Some(g) = ident_group.get(&peer) else {
                                    continue;
                                };
                                for n in resolve_named(ctx.groups[*g].ports, name, port.protocol) {
                                    out.entries.push(Entry {
                                        peer,
                                        dir,
                                        proto,
                                        port: n,
                                        len: ferry_ebpf_common::policy::RULE_PREFIX_FULL,
                                    });
                                }
                            }
                        }
                    }
                    check(out)?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn port_prefix_cover_is_minimal_and_exact() {
        assert_eq!(port_prefixes(80, 80), vec![(80, 16)]);
        assert_eq!(port_prefixes(0, 65535), vec![(0, 0)]);
        assert_eq!(port_prefixes(80, 81), vec![(80, 15)]);
        assert_eq!(port_prefixes(81, 82), vec![(81, 16), (82, 16)]);
        assert_eq!(port_prefixes(1, 65535).len(), 16);
        assert_eq!(port_prefixes(65535, 65535), vec![(65535, 16)]);
        // Exactness over many ranges.
        for (lo, hi) in [(1u16, 1000u16), (32000, 32768), (443, 8443), (1024, 65535)] {
            let cover = port_prefixes(lo, hi);
            for port in 0..=65535u16 {
                let hits = cover
                    .iter()
                    .filter(|(first, bits)| {
                        let mask = if *bits == 0 {
                            0
                        } else {
                            u16::MAX << (16 - bits)
                        };
                        port & mask == *first
                    })
                    .count();
                assert_eq!(
                    hits,
                    usize::from((lo..=hi).contains(&port)),
                    "{lo}-{hi} {port}"
                );
            }
        }
    }

    #[test]
    fn prefixes_mask_and_contain() {
        let p = Prefix::of_net(&"10.1.2.3/8".parse::<IpNet>().unwrap().trunc());
        assert_eq!(p.len, 104);
        assert!(MAPPED.contains(&p));
        let q = Prefix::of_net(&"10.1.0.0/16".parse().unwrap());
        assert!(p.contains(&q));
        assert!(!q.contains(&p));
        let v6 = Prefix::of_net(&"::/0".parse().unwrap());
        assert!(v6.contains(&MAPPED));
        let (len, key) = p.key();
        assert_eq!(len, 104);
        assert_eq!(key.addr, addr_words("10.0.0.0".parse().unwrap()));
    }
}
