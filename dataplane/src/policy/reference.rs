//! A naive evaluator of networking.k8s.io/v1 NetworkPolicy semantics over
//! the model: for one flow at one endpoint in one direction, loop over the
//! policies selecting the endpoint, their rules, peers and ports, as the
//! API reference words it. Slow and obviously right, to check the
//! compiler (through [`super::simulate`]) against.
//!
//! Owns nothing else; shares with the compiler only the model and label
//! matching (checked on their own). Must not use the compiler's
//! identities, sets or tries.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ferry_ebpf_common::policy::DIR_EGRESS;

use super::model::{Peer, Pod, Policy, PortMatch};
use super::simulate::Probe;
use super::state::PolicyState;
use crate::service::programmer::proto_number;

pub struct Reference<'a> {
    state: &'a PolicyState,
    node: &'a str,
    node_addrs: BTreeSet<IpAddr>,
    /// Policies treated as allowing nothing (failed closed by the
    /// compiler's limits), by (namespace, name).
    failed: BTreeSet<(String, String)>,
}

impl<'a> Reference<'a> {
    pub fn new(state: &'a PolicyState, node: &'a str, node_addrs: &[IpAddr]) -> Self {
        Reference {
            state,
            node,
            node_addrs: node_addrs.iter().map(|a| a.to_canonical()).collect(),
            failed: BTreeSet::new(),
        }
    }

    /// Treats these policies as allowing nothing.
    pub fn with_failed(mut self, failed: impl IntoIterator<Item = (String, String)>) -> Self {
        self.failed.extend(failed);
        self
    }

    /// The pod an address belongs to: not hostNetwork, first by
    /// (namespace, name); never one of this node's own addresses.
    fn pod_at(&self, addr: IpAddr) -> Option<&'a Pod> {
        if self.node_addrs.contains(&addr) {
            return None;
        }
        self.state
            .pods()
            .find(|p| !p.host_network && p.ips.contains(&addr))
    }

    /// Whether the flow passes at the endpoint of `dir`.
    pub fn allows(&self, dir: u8, p: &Probe) -> bool {
        let egress = dir == DIR_EGRESS;
        let (local, peer) = if egress {
            (p.src, p.dst)
        } else {
            (p.dst, p.src)
        };
        let Some(pod) = self.pod_at(local).filter(|pod| pod.node_name == self.node) else {
            return true;
        };
        let isolating: Vec<&Policy> = self
            .state
            .policies()
            .map(|(_, pol)| pol)
            .filter(|pol| {
                pol.namespace == pod.namespace
                    && pol.pod_selector.matches(&pod.labels)
                    && pol.isolates(egress)
            })
            .collect();
        if isolating.is_empty() {
            return true;
        }
        if p.src == p.dst || (!egress && self.node_addrs.contains(&p.src)) {
            return true;
        }
        let peer_pod = self.pod_at(peer);
        // Named ports are the destination pod's.
        let dst_pod = if egress { peer_pod } else { Some(pod) };
        isolating.iter().any(|pol| {
            pol.error.is_none()
                && !self
                    .failed
                    .contains(&(pol.namespace.clone(), pol.name.clone()))
                && pol.rules(egress).iter().any(|rule| {
                    let peer_ok = rule.peers.is_empty()
                        || rule
                            .peers
                            .iter()
                            .any(|pr| self.peer_matches(pol, pr, peer, peer_pod));
                    let port_ok = rule.ports.is_empty()
                        || rule.ports.iter().any(|pr| {
                            proto_number(pr.protocol) == p.proto
                                && match &pr.port {
                                    PortMatch::Any => true,
                                    PortMatch::Range(lo, hi) => (*lo..=*hi).contains(&p.dport),
                                    PortMatch::Named(name) => dst_pod.is_some_and(|d| {
                                        d.named_ports.iter().any(|np| {
                                            &np.name == name
                                                && np.protocol == pr.protocol
                                                && np.port == p.dport
                                        })
                                    }),
                                }
                        });
                    peer_ok && port_ok
                })
        })
    }

    fn peer_matches(&self, pol: &Policy, peer: &Peer, addr: IpAddr, pod: Option<&Pod>) -> bool {
        match peer {
            Peer::Block(b) => b.contains(addr),
            Peer::Pods { namespaces, pods } => pod.is_some_and(|pod| {
                let ns_ok = match namespaces {
                    None => pod.namespace == pol.namespace,
                    Some(sel) => sel.matches(&self.state.namespace_labels(&pod.namespace)),
                };
                ns_ok && pods.as_ref().is_none_or(|s| s.matches(&pod.labels))
            }),
        }
    }
}
