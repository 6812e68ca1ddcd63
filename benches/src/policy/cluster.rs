//! The synthetic cluster both policy benchmarks use: namespaces of pods
//! labelled as Deployments and StatefulSets label them, some on the
//! benchmark's node, and any number of NetworkPolicies in the product's
//! compact model (`ferry_dataplane::policy::model`), built into a
//! [`PolicyState`] the product compiles.
//!
//! - namespace `ns-N`: label `team` red (N even) or blue;
//! - pod `i` of a namespace: `app: app-(i % 10)`, `tier: front` (i % 3 == 0)
//!   or `back`, a `pod-template-hash` per app, and every fifth pod a
//!   StatefulSet's `statefulset.kubernetes.io/pod-name` (a label of its
//!   own); named port `http` on TCP 8000 + i % 10; address
//!   10.(1 + N / 100).(N % 100).(10 + i);
//! - on the node: pod 0 of every even namespace (app-0, which policies
//!   select) and pod 9 of every odd one (app-9, which none selects);
//! - policy `k` of a namespace (policies are dealt round-robin over the
//!   namespaces): selects `app-(k % 9)`; ingress from `app-((k + 1) % 10)`
//!   of its namespace and the front-tier app-0 pods of red namespaces on
//!   TCP 80, 8080 + k to 8090 + k and `http`, and from
//!   172.(16 + k % 16).0.0/16 except a /24; egress to the next namespace's
//!   pods on `http` and UDP 53, and to anywhere outside 10.0.0.0/8.

use std::net::{IpAddr, Ipv4Addr};

use ferry_dataplane::policy::PolicyState;
use ferry_dataplane::policy::model::{NamedPort, Namespace, Pod, Policy};
use ferry_dataplane::policy::selector::Labels;
use ferry_dataplane::service::model::Protocol;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::json;

/// The node the policies are compiled for.
pub const NODE: &str = "bench-node";

/// Apps per namespace; the last one is never selected by a policy.
const APPS: usize = 10;

/// Why the cluster could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("generated NetworkPolicy {name}: {message}")]
    Policy { name: String, message: String },
}

/// How big the cluster is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cluster {
    pub namespaces: usize,
    pub pods_per_namespace: usize,
}

impl Default for Cluster {
    /// 10,000 pods in 100 namespaces.
    fn default() -> Self {
        Cluster {
            namespaces: 100,
            pods_per_namespace: 100,
        }
    }
}

/// A pod of the cluster: (namespace index, pod index).
pub type PodRef = (usize, usize);

impl Cluster {
    pub fn pods(&self) -> usize {
        self.namespaces * self.pods_per_namespace
    }

    /// The node's own addresses.
    pub fn node_addrs(&self) -> Vec<IpAddr> {
        vec![IpAddr::V4(Ipv4Addr::new(192, 168, 0, 1))]
    }

    pub fn namespace_name(&self, ns: usize) -> String {
        format!("ns-{ns}")
    }

    pub fn pod_ip(&self, (ns, i): PodRef) -> Ipv4Addr {
        let hi = u8::try_from(1 + ns / 100).unwrap_or(u8::MAX);
        let mid = u8::try_from(ns % 100).unwrap_or(0);
        let lo = u8::try_from(10 + i).unwrap_or(u8::MAX);
        Ipv4Addr::new(10, hi, mid, lo)
    }

    /// Whether the pod runs on [`NODE`].
    pub fn is_local(&self, (ns, i): PodRef) -> bool {
        (ns.is_multiple_of(2) && i == 0) || (!ns.is_multiple_of(2) && i == APPS - 1)
    }

    /// This node's pods that policies select (pod 0 of even namespaces).
    pub fn local_selected(&self) -> Vec<PodRef> {
        (0..self.namespaces).step_by(2).map(|ns| (ns, 0)).collect()
    }

    /// This node's pods no policy selects (pod 9 of odd namespaces).
    pub fn local_unselected(&self) -> Vec<PodRef> {
        (1..self.namespaces)
            .step_by(2)
            .filter(|_| self.pods_per_namespace >= APPS)
            .map(|ns| (ns, APPS - 1))
            .collect()
    }

    /// The namespace whose pods policies of `ns` may reach (egress).
    pub fn next_namespace(&self, ns: usize) -> usize {
        (ns + 1) % self.namespaces
    }

    /// The named port `http` of pod `i`.
    pub fn http_port(&self, i: usize) -> u16 {
        8000 + u16::try_from(i % APPS).unwrap_or(0)
    }

    pub fn namespace(&self, ns: usize) -> Namespace {
        let team = if ns.is_multiple_of(2) { "red" } else { "blue" };
        Namespace::new(&self.namespace_name(ns), labels(&[("team", team)]))
    }

    /// Pod `i` of namespace `ns`, with `extra` labels added.
    pub fn pod(&self, (ns, i): PodRef, extra: &[(&str, &str)]) -> Pod {
        let app = format!("app-{}", i % APPS);
        let name = format!("{app}-{i}");
        let hash = format!("{:08x}", (ns * APPS + i % APPS) * 2_654_435_761 % (1 << 32));
        let mut l = labels(&[
            ("app", &app),
            ("tier", if i.is_multiple_of(3) { "front" } else { "back" }),
        ]);
        if i.is_multiple_of(5) {
            l.insert("statefulset.kubernetes.io/pod-name".into(), name.clone());
        } else {
            l.insert("pod-template-hash".into(), hash);
        }
        for (k, v) in extra {
            l.insert((*k).into(), (*v).into());
        }
        Pod {
            namespace: self.namespace_name(ns),
            name,
            labels: l,
            ips: vec![IpAddr::V4(self.pod_ip((ns, i)))],
            node_name: if self.is_local((ns, i)) {
                NODE.into()
            } else {
                "other-node".into()
            },
            host_network: false,
            named_ports: vec![NamedPort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: self.http_port(i),
            }],
        }
    }

    /// Policy `k` of namespace `ns` (see the module's doc).
    pub fn policy(&self, ns: usize, k: usize) -> Result<Policy, ClusterError> {
        let name = format!("p-{k}");
        let json = json!({
            "metadata": {"namespace": self.namespace_name(ns), "name": name},
            "spec": {
                "podSelector": {"matchLabels": {"app": format!("app-{}", k % (APPS - 1))}},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [
                    {"from": [{"podSelector": {"matchLabels": {"app": format!("app-{}", (k + 1) % APPS)}}},
                              {"namespaceSelector": {"matchLabels": {"team": "red"}},
                               "podSelector": {"matchLabels": {"tier": "front", "app": "app-0"}}}],
                     "ports": [{"port": 80}, {"port": 8080 + k, "endPort": 8090 + k}, {"port": "http"}]},
                    {"from": [{"ipBlock": {"cidr": format!("172.{}.0.0/16", 16 + k % 16),
                                           "except": [format!("172.{}.1.0/24", 16 + k % 16)]}}]}
                ],
                "egress": [
                    {"to": [{"namespaceSelector": {"matchLabels": {
                        "kubernetes.io/metadata.name": self.namespace_name(self.next_namespace(ns))}}}],
                     "ports": [{"port": "http"}, {"protocol": "UDP", "port": 53}]},
                    {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}]}
                ]
            }
        });
        let err = |message: String| ClusterError::Policy {
            name: format!("{}/{name}", self.namespace_name(ns)),
            message,
        };
        let np: NetworkPolicy = serde_json::from_value(json).map_err(|e| err(e.to_string()))?;
        let policy = Policy::from_api(&np, &Default::default()).map_err(|e| err(e.to_string()))?;
        match &policy.error {
            Some(e) => Err(err(e.to_string())),
            None => Ok(policy),
        }
    }

    /// The cluster's namespaces and pods with `policies` policies, dealt
    /// round-robin over the namespaces (policy `j` is policy `j / N` of
    /// namespace `j % N`).
    pub fn state(&self, policies: usize) -> Result<PolicyState, ClusterError> {
        let mut state = PolicyState::default();
        for ns in 0..self.namespaces {
            state.upsert_namespace(self.namespace(ns));
            for i in 0..self.pods_per_namespace {
                state.upsert_pod(self.pod((ns, i), &[]));
            }
        }
        for j in 0..policies {
            state.upsert_policy(self.policy(j % self.namespaces, j / self.namespaces)?);
        }
        Ok(state)
    }
}

fn labels(kv: &[(&str, &str)]) -> Labels {
    kv.iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_compiles_as_described() {
        let c = Cluster {
            namespaces: 10,
            pods_per_namespace: 20,
        };
        let mut s = c.state(30).unwrap();
        let d = s.compile(NODE, &c.node_addrs()).unwrap();
        assert!(d.problems.is_empty(), "{:?}", d.problems);
        // Every pod address has an identity; this node's pods are
        // endpoints, the selected ones isolated both ways.
        assert_eq!(d.identities.len(), c.pods() + 1);
        assert_eq!(
            d.endpoints.len(),
            c.local_selected().len() + c.local_unselected().len()
        );
        let isolated = d.endpoints.values().filter(|e| e.flags == 3).count();
        assert_eq!(isolated, c.local_selected().len());
        assert!(!d.rules.is_empty());
    }
}
