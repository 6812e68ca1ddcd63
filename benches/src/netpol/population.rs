//! The cluster the bench loads into the API: namespaces, pods on other
//! nodes (objects only), the pods the world really runs on its node, and
//! the NetworkPolicies, all made deterministically from a [`Shape`].
//!
//! The real pods, by [`Role`]:
//! - **server** (`np-0`, `app=server,tier=backend`, container port `sink`
//!   9000): the connect sink every measured connection goes to, selected by
//!   [`Shape::server_policies`] ingress policies of which exactly one
//!   (`server-allow`) admits the client on 9000; the others name peers
//!   that are not the client (other namespaces, other labels, ipBlocks
//!   elsewhere) or the client on other ports;
//! - **client** (`np-1`, `app=client`): egress-isolated by
//!   [`Shape::client_policies`] policies, of which one (`client-allow`)
//!   allows the server on 9000;
//! - **open** (`np-2`, `app=open`, a sink): selected by no policy, the
//!   target of the change phase's deny-all policy ([`deny_open`]);
//! - **prober** (`np-3`, `app=prober`): selected by no policy, so it can
//!   reach `open`, and is refused by the server (it is no allowed peer);
//! - **idle** pods (`np-4`…): labelled like the remote pods, so the
//!   background policies select some of them, as on a real node.
//!
//! The remaining policies live in `np-4`…, select remote pods (and some
//! idle ones) by `app`/`tier` labels with matchLabels and matchExpressions
//! (never an empty selector, so `open` and `prober` stay unselected), and
//! mix ingress, egress and both, pod and namespace peers, ipBlocks with
//! `except`, numbered ports, `endPort` ranges and named ports.

use std::net::{IpAddr, Ipv4Addr};

use serde_json::{Value, json};

/// Where the sinks listen (the services bench's sink port).
pub const SINK_PORT: u16 = crate::services::model::SINK_PORT;
/// The `tier` label values.
pub const TIERS: [&str; 3] = ["frontend", "backend", "db"];
/// Nodes the remote pods are spread over (names only: no such nodes run).
pub const REMOTE_NODES: usize = 10;
/// Namespaces before the idle pods' (server, client, open, prober).
const FIXED_NAMESPACES: usize = 4;
/// The label the apiserver puts on every namespace.
pub const NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// How big the loaded cluster is.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub namespaces: usize,
    /// Pods on other nodes (API objects only).
    pub remote_pods: usize,
    /// NetworkPolicies in all.
    pub policies: usize,
    /// Of those, the ones selecting the server (one allows the client).
    pub server_policies: usize,
    /// Of those, the egress ones selecting the client (one allows the
    /// server).
    pub client_policies: usize,
    /// Real pods on the node besides the four with roles.
    pub idle_pods: usize,
}

impl Shape {
    pub fn check(&self) -> Result<(), String> {
        if self.namespaces < FIXED_NAMESPACES + 1 {
            return Err(format!("at least {} namespaces", FIXED_NAMESPACES + 1));
        }
        if self.server_policies == 0 || self.client_policies == 0 {
            return Err("the server and the client need a policy each (the allowing ones)".into());
        }
        if self.policies < self.server_policies + self.client_policies {
            return Err(format!(
                "{} policies cannot hold {} for the server and {} for the client",
                self.policies, self.server_policies, self.client_policies
            ));
        }
        if self.remote_pods > 60_000 {
            return Err("at most 60000 remote pods (10.245.0.0/16)".into());
        }
        if self.idle_pods > self.namespaces - FIXED_NAMESPACES {
            return Err(format!(
                "at most {} idle pods (one per namespace after np-3)",
                self.namespaces - FIXED_NAMESPACES
            ));
        }
        Ok(())
    }

    /// Policies in the background namespaces.
    pub fn background_policies(&self) -> usize {
        self.policies - self.server_policies - self.client_policies
    }
}

/// A real pod's part in the bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
    Open,
    Prober,
    Idle(usize),
}

impl Role {
    /// Every real pod of `shape`, the four roles first.
    pub fn all(shape: &Shape) -> Vec<Role> {
        let mut v = vec![Role::Server, Role::Client, Role::Open, Role::Prober];
        v.extend((0..shape.idle_pods).map(Role::Idle));
        v
    }

    pub fn namespace(self) -> String {
        namespace_name(match self {
            Role::Server => 0,
            Role::Client => 1,
            Role::Open => 2,
            Role::Prober => 3,
            Role::Idle(k) => FIXED_NAMESPACES + k,
        })
    }

    pub fn name(self) -> String {
        match self {
            Role::Server => "server".into(),
            Role::Client => "client".into(),
            Role::Open => "open".into(),
            Role::Prober => "prober".into(),
            Role::Idle(k) => format!("idle-{k}"),
        }
    }

    fn labels(self) -> Value {
        match self {
            Role::Server => json!({"app": "server", "tier": "backend"}),
            Role::Client => json!({"app": "client", "tier": "frontend"}),
            Role::Open => json!({"app": "open"}),
            Role::Prober => json!({"app": "prober"}),
            Role::Idle(k) => json!({"app": format!("app-{}", k % 10), "tier": TIERS[k % 3]}),
        }
    }

    /// Whether a sink runs in it.
    pub fn serves(self) -> bool {
        matches!(self, Role::Server | Role::Open)
    }
}

pub fn namespace_name(i: usize) -> String {
    format!("np-{i}")
}

/// Namespace `i`: `team=team-<i%10>`, `env=prod|dev` (even/odd).
pub fn namespace_object(i: usize) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": namespace_name(i), "labels": {
            "team": format!("team-{}", i % 10),
            "env": if i.is_multiple_of(2) { "prod" } else { "dev" },
        }},
    })
}

fn containers(ports: Value) -> Value {
    json!([{"name": "main", "image": "bench", "ports": ports}])
}

/// Remote pod `i`'s address: 10.245.0.0/16, outside the world's pod CIDRs.
pub fn remote_ip(i: usize) -> Ipv4Addr {
    let i = u32::try_from(i).unwrap_or(u32::MAX);
    Ipv4Addr::from(u32::from_be_bytes([10, 245, 0, 0]) + (i / 250) * 256 + i % 250 + 1)
}

/// Remote pod `i` (`w-<i>` in `np-<i % namespaces>`) and its address.
pub fn remote_pod(i: usize, shape: &Shape) -> (Value, Vec<IpAddr>) {
    let ns = namespace_name(i % shape.namespaces);
    let obj = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("w-{i}"), "namespace": ns, "labels": {
            "app": format!("app-{}", (i / shape.namespaces) % 10),
            "tier": TIERS[i % 3],
        }},
        "spec": {
            "nodeName": format!("remote-{}", i % REMOTE_NODES),
            "containers": containers(json!([
                {"name": "http", "containerPort": 8080, "protocol": "TCP"},
                {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
            ])),
        },
    });
    (obj, vec![IpAddr::V4(remote_ip(i))])
}

/// A real pod's object, on `node`.
pub fn local_pod(role: Role, node: &str) -> Value {
    let ports = if role.serves() {
        json!([{"name": "sink", "containerPort": SINK_PORT, "protocol": "TCP"}])
    } else {
        json!([])
    };
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": role.name(), "namespace": role.namespace(), "labels": role.labels()},
        "spec": {"nodeName": node, "containers": containers(ports)},
    })
}

/// The status a running pod with `ips` reports.
pub fn pod_status(ips: &[IpAddr]) -> Value {
    let ips: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect();
    json!({"status": {
        "phase": "Running",
        "podIP": ips.first().and_then(|v| v.get("ip")).cloned().unwrap_or(Value::Null),
        "podIPs": ips,
        "conditions": [{"type": "Ready", "status": "True"}],
    }})
}

fn policy(ns: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    })
}

fn tcp(port: u16) -> Value {
    json!({"protocol": "TCP", "port": port})
}

fn ns_is(ns: &str) -> Value {
    json!({"matchLabels": {NAME_LABEL: ns}})
}

/// Index of the allowing policy among the server's (in the middle).
pub fn server_allow_index(shape: &Shape) -> usize {
    shape.server_policies / 2
}

/// Policy `j` of the server's.
fn server_policy(j: usize, shape: &Shape) -> Value {
    let ns = Role::Server.namespace();
    if j == server_allow_index(shape) {
        return policy(
            &ns,
            "server-allow",
            json!({
                "podSelector": {"matchLabels": {"app": "server"}},
                "policyTypes": ["Ingress"],
                "ingress": [{
                    "from": [{"namespaceSelector": ns_is(&Role::Client.namespace()),
                              "podSelector": {"matchLabels": {"app": "client"}}}],
                    "ports": [tcp(SINK_PORT)],
                }],
            }),
        );
    }
    let selector = match j % 4 {
        0 => json!({"matchLabels": {"app": "server"}}),
        1 => json!({"matchLabels": {"tier": "backend"}}),
        2 => json!({"matchExpressions": [
            {"key": "app", "operator": "In", "values": ["server", format!("app-{}", j % 10)]}]}),
        _ => json!({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}),
    };
    let jj = u16::try_from(j % 1000).unwrap_or(0);
    // Peers that are never the client (np-1, team-1, env=dev), or the
    // client on ports it does not use.
    let ingress = match j % 5 {
        0 => json!([{
            "from": [{"podSelector": {"matchLabels": {"app": format!("app-{}", j % 10)}}}],
            "ports": [tcp(SINK_PORT)],
        }]),
        1 => json!([{
            "from": [{"namespaceSelector": {"matchLabels": {"team": format!("team-{}", 2 + j % 8)}},
                      "podSelector": {"matchLabels": {"tier": "frontend"}}}],
            "ports": [tcp(SINK_PORT), tcp(8080)],
        }]),
        2 => json!([{
            "from": [{"namespaceSelector": ns_is(&Role::Client.namespace()),
                      "podSelector": {"matchLabels": {"app": "client"}}}],
            "ports": [tcp(8000 + jj)],
        }]),
        3 => json!([{
            "from": [{"ipBlock": {"cidr": format!("172.16.{}.0/24", j % 256),
                                  "except": [format!("172.16.{}.128/25", j % 256)]}}],
            "ports": [tcp(SINK_PORT)],
        }]),
        _ => json!([
            {
                "from": [{"namespaceSelector": {"matchLabels": {"env": "prod"}},
                          "podSelector": {"matchExpressions": [
                              {"key": "app", "operator": "In", "values": ["app-1", "app-2"]}]}}],
                "ports": [{"protocol": "TCP", "port": "sink"}],
            },
            {
                "from": [{"podSelector": {"matchLabels": {"tier": "db"}}}],
                "ports": [{"protocol": "TCP", "port": 7000, "endPort": 7999}],
            },
        ]),
    };
    policy(
        &ns,
        &format!("server-{j}"),
        json!({"podSelector": selector, "policyTypes": ["Ingress"], "ingress": ingress}),
    )
}

/// Index of the allowing policy among the client's.
pub fn client_allow_index(shape: &Shape) -> usize {
    shape.client_policies / 2
}

/// Policy `k` of the client's (egress).
fn client_policy(k: usize, shape: &Shape) -> Value {
    let ns = Role::Client.namespace();
    if k == client_allow_index(shape) {
        return policy(
            &ns,
            "client-allow",
            json!({
                "podSelector": {"matchLabels": {"app": "client"}},
                "policyTypes": ["Egress"],
                "egress": [{
                    "to": [{"namespaceSelector": ns_is(&Role::Server.namespace()),
                            "podSelector": {"matchLabels": {"app": "server"}}}],
                    "ports": [tcp(SINK_PORT)],
                }],
            }),
        );
    }
    let egress = match k % 3 {
        0 => json!([{
            "to": [{"namespaceSelector": {"matchLabels": {"team": format!("team-{}", 2 + k % 8)}}}],
            "ports": [tcp(5432)],
        }]),
        1 => json!([{
            "to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.244.0.0/16"]}}],
            "ports": [{"protocol": "UDP", "port": 53}, tcp(53)],
        }]),
        _ => json!([{
            "to": [{"podSelector": {"matchLabels": {"app": format!("app-{}", k % 10)}}}],
            "ports": [{"protocol": "TCP", "port": "http"}],
        }]),
    };
    policy(
        &ns,
        &format!("client-{k}"),
        json!({
            "podSelector": {"matchLabels": {"app": "client"}},
            "policyTypes": ["Egress"],
            "egress": egress,
        }),
    )
}

/// Background policy `m`, in `np-4`… .
fn background_policy(m: usize, shape: &Shape) -> Value {
    let ns_index = FIXED_NAMESPACES + m % (shape.namespaces - FIXED_NAMESPACES);
    let ns = namespace_name(ns_index);
    let selector = match m % 3 {
        0 => json!({"matchLabels": {"app": format!("app-{}", m % 10)}}),
        1 => json!({"matchLabels": {"tier": TIERS[(m / 3) % 3]}}),
        _ => json!({"matchExpressions": [
            {"key": "app", "operator": "In",
             "values": [format!("app-{}", m % 10), format!("app-{}", (m + 3) % 10)]},
            {"key": "tier", "operator": "NotIn", "values": ["db"]},
        ]}),
    };
    let (ingress, egress) = match m % 4 {
        0 | 3 => (true, false),
        1 => (false, true),
        _ => (true, true),
    };
    let mut spec = json!({"podSelector": selector});
    let mut types = Vec::new();
    if ingress {
        types.push("Ingress");
        let mut rules = vec![
            json!({
                "from": [{"podSelector": {"matchLabels": {"app": format!("app-{}", (m + 1) % 10)}}}],
                "ports": [tcp(8080)],
            }),
            json!({
                "from": [{"namespaceSelector": {"matchLabels": {"team": format!("team-{}", m % 10)}},
                          "podSelector": {"matchLabels": {"tier": "frontend"}}}],
                "ports": [{"protocol": "TCP", "port": "http"}],
            }),
        ];
        if m.is_multiple_of(5) {
            rules.push(json!({
                "from": [{"ipBlock": {"cidr": format!("192.168.{}.0/24", m % 256),
                                      "except": [format!("192.168.{}.0/28", m % 256)]}}],
                "ports": [{"protocol": "TCP", "port": 7000, "endPort": 7999}],
            }));
        }
        spec["ingress"] = json!(rules);
    }
    if egress {
        types.push("Egress");
        spec["egress"] = json!([
            {
                "to": [{"namespaceSelector": {"matchLabels": {"env": "prod"}},
                        "podSelector": {"matchLabels": {"tier": "db"}}}],
                "ports": [tcp(5432)],
            },
            {
                "to": [{"ipBlock": {"cidr": format!("10.250.{}.0/24", m % 256)}}],
                "ports": [{"protocol": "UDP", "port": 53}],
            },
        ]);
    }
    spec["policyTypes"] = json!(types);
    policy(&ns, &format!("bg-{m}"), spec)
}

/// Every policy of `shape`: the server's, the client's, the background.
pub fn policies(shape: &Shape) -> Vec<Value> {
    let mut v = Vec::with_capacity(shape.policies);
    v.extend((0..shape.server_policies).map(|j| server_policy(j, shape)));
    v.extend((0..shape.client_policies).map(|k| client_policy(k, shape)));
    v.extend((0..shape.background_policies()).map(|m| background_policy(m, shape)));
    v
}

/// The change phase's policy: isolates `open` for ingress, allows nothing.
pub fn deny_open() -> Value {
    policy(
        &Role::Open.namespace(),
        "deny-open",
        json!({
            "podSelector": {"matchLabels": {"app": "open"}},
            "policyTypes": ["Ingress"],
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Namespace, Pod};
    use k8s_openapi::api::networking::v1::NetworkPolicy;

    pub(crate) fn small() -> Shape {
        Shape {
            namespaces: 20,
            remote_pods: 100,
            policies: 60,
            server_policies: 10,
            client_policies: 4,
            idle_pods: 3,
        }
    }

    #[test]
    fn objects_decode_and_names_are_unique() {
        let s = small();
        s.check().expect("shape");
        let pols = policies(&s);
        assert_eq!(pols.len(), s.policies);
        let mut names = std::collections::BTreeSet::new();
        for p in &pols {
            let np: NetworkPolicy = serde_json::from_value(p.clone()).expect("policy");
            let key = (np.metadata.namespace.clone(), np.metadata.name.clone());
            assert!(names.insert(key), "duplicate {:?}", np.metadata.name);
        }
        assert_eq!(
            pols.iter()
                .filter(|p| p["metadata"]["name"] == "server-allow")
                .count(),
            1
        );
        let _: NetworkPolicy = serde_json::from_value(deny_open()).expect("deny");
        let _: Namespace = serde_json::from_value(namespace_object(3)).expect("ns");
        let (pod, ips) = remote_pod(7, &s);
        let _: Pod = serde_json::from_value(pod).expect("pod");
        assert_eq!(ips, [IpAddr::V4(Ipv4Addr::new(10, 245, 0, 8))]);
        assert_eq!(remote_ip(250), Ipv4Addr::new(10, 245, 1, 1));
        for r in Role::all(&s) {
            let _: Pod = serde_json::from_value(local_pod(r, "n0")).expect("local pod");
        }
    }

    #[test]
    fn shapes_are_checked() {
        let mut s = small();
        s.policies = 5;
        assert!(s.check().is_err());
        let mut s = small();
        s.idle_pods = 40;
        assert!(s.check().is_err());
    }
}
