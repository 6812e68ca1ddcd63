//! Test worlds for the policy compiler: namespaces, pods and policies built
//! tersely, and the check that the simulated datapath and the reference
//! evaluator agree (and with an expected truth, where a test gives one).

use std::net::IpAddr;

use ferry_ebpf_common::policy::{DIR_EGRESS, DIR_INGRESS};
use ferry_ebpf_common::{PROTO_SCTP, PROTO_TCP, PROTO_UDP};
use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::compile::Desired;
use super::model::{NamedPort, Namespace, Pod, Policy};
use super::programmer::{PolicyProgrammer, PolicyTables, Written};
use super::reference::Reference;
use super::selector::Labels;
use super::simulate::{Probe, Verdict, simulate};
use super::state::PolicyState;
use crate::service::model::Protocol;
use crate::service::programmer::MapOpError;

pub const NODE: &str = "n1";
pub const OTHER_NODE: &str = "n2";

pub fn node_addrs() -> Vec<IpAddr> {
    vec![ip("192.168.0.1"), ip("fd00::1")]
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

pub fn labels(kv: &[(&str, &str)]) -> Labels {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn named(name: &str, protocol: Protocol, port: u16) -> NamedPort {
    NamedPort {
        name: name.into(),
        protocol,
        port,
    }
}

pub fn pod(ns: &str, name: &str, lbl: &[(&str, &str)], ips: &[&str], node: &str) -> Pod {
    Pod {
        namespace: ns.into(),
        name: name.into(),
        labels: labels(lbl),
        ips: ips.iter().map(|s| ip(s)).collect(),
        node_name: node.into(),
        host_network: false,
        named_ports: Vec::new(),
    }
}

/// A policy from its JSON (metadata and spec as in YAML manifests).
pub fn policy(json: serde_json::Value) -> Policy {
    let np: NetworkPolicy = serde_json::from_value(json).expect("test policy JSON");
    Policy::from_api(&np, &Default::default()).expect("test policy has a name")
}

/// Namespaces x, y, z (label `ns`), pods a, b, c in each (label `pod`)
/// at 10.0.N.P and fd10::N:P (N, P = 1, 2, 3); x and y/a on this node, the
/// rest on another; every pod serves `serve-80-tcp`, `serve-81-udp` and
/// `serve-80-sctp`, and pod b also `web` on TCP 8080 (c: `web` on 9090).
pub fn xyz() -> PolicyState {
    let mut s = PolicyState::default();
    for (ni, ns) in ["x", "y", "z"].iter().enumerate() {
        s.upsert_namespace(Namespace::new(ns, labels(&[("ns", ns)])));
        for (pi, name) in ["a", "b", "c"].iter().enumerate() {
            let local = *ns == "x" || (*ns == "y" && *name == "a");
            let mut p = pod(
                ns,
                name,
                &[("pod", name)],
                &[
                    &format!("10.0.{}.{}", ni + 1, pi + 1),
                    &format!("fd10::{}:{}", ni + 1, pi + 1),
                ],
                if local { NODE } else { OTHER_NODE },
            );
            p.named_ports = vec![
                named("serve-80-tcp", Protocol::Tcp, 80),
                named("serve-81-udp", Protocol::Udp, 81),
                named("serve-80-sctp", Protocol::Sctp, 80),
            ];
            match *name {
                "b" => p.named_ports.push(named("web", Protocol::Tcp, 8080)),
                "c" => p.named_ports.push(named("web", Protocol::Tcp, 9090)),
                _ => {}
            }
            p.named_ports.sort();
            s.upsert_pod(p);
        }
    }
    s
}

/// The v4 address of pod `ns/name` in [`xyz`].
pub fn at(pod: &str) -> IpAddr {
    let (ns, name) = pod.split_once('/').expect("ns/name");
    let n = " xyz".find(ns).expect("x, y or z");
    let p = " abc".find(name).expect("a, b or c");
    ip(&format!("10.0.{n}.{p}"))
}

pub fn at6(pod: &str) -> IpAddr {
    let IpAddr::V4(v4) = at(pod) else {
        unreachable!()
    };
    let o = v4.octets();
    ip(&format!("fd10::{}:{}", o[2], o[3]))
}

pub fn tcp(src: IpAddr, dst: IpAddr, port: u16) -> Probe {
    Probe {
        src,
        dst,
        proto: PROTO_TCP,
        dport: port,
    }
}

pub fn udp(src: IpAddr, dst: IpAddr, port: u16) -> Probe {
    Probe {
        proto: PROTO_UDP,
        ..tcp(src, dst, port)
    }
}

pub fn sctp(src: IpAddr, dst: IpAddr, port: u16) -> Probe {
    Probe {
        proto: PROTO_SCTP,
        ..tcp(src, dst, port)
    }
}

/// Compiles the state for [`NODE`] and returns a checker.
pub fn compiled(state: &mut PolicyState) -> World<'_> {
    let desired = state.compile(NODE, &node_addrs()).expect("compile");
    World { state, desired }
}

pub struct World<'a> {
    pub state: &'a PolicyState,
    pub desired: Desired,
}

impl World<'_> {
    fn reference(&self) -> Reference<'_> {
        Reference::new(self.state, NODE, &node_addrs()).with_failed(
            self.desired
                .problems
                .iter()
                .map(|p| (p.namespace.clone(), p.name.clone())),
        )
    }

    /// The verdict of one direction; panics when the simulated datapath
    /// and the reference evaluator disagree.
    pub fn verdict(&self, dir: u8, p: &Probe) -> Verdict {
        let v = simulate(&self.desired, dir, p);
        let r = self.reference().allows(dir, p);
        assert_eq!(
            v.allows(),
            r,
            "datapath {v:?} vs reference {r} for {p:?} dir {dir}"
        );
        v
    }

    /// Whether the flow passes both the source's egress and the
    /// destination's ingress.
    pub fn allowed(&self, p: &Probe) -> bool {
        let e = self.verdict(DIR_EGRESS, p).allows();
        let i = self.verdict(DIR_INGRESS, p).allows();
        e && i
    }

    pub fn ingress(&self, p: &Probe) -> bool {
        self.verdict(DIR_INGRESS, p).allows()
    }

    pub fn egress(&self, p: &Probe) -> bool {
        self.verdict(DIR_EGRESS, p).allows()
    }
}

/// In-memory policy maps that, after every single write the programmer
/// makes, check that they allow nothing that neither the maps before nor
/// the maps after allow: the programmer's order never opens a window.
struct WindowCheck<'a> {
    now: Written,
    probes: &'a [(Probe, u8, bool)],
    writes: usize,
}

impl WindowCheck<'_> {
    fn check(&mut self) -> Result<(), MapOpError> {
        self.writes += 1;
        let mid = Desired {
            endpoints: self.now.endpoints.clone(),
            identities: self.now.identities.clone(),
            cidrs: self.now.cidrs.clone(),
            rules: self.now.rules.clone(),
            ..Desired::default()
        };
        for (p, dir, either) in self.probes {
            let v = simulate(&mid, *dir, p);
            assert!(
                *either || !v.allows(),
                "write {}: {p:?} dir {dir} allowed ({v:?}) between two maps that both deny it",
                self.writes
            );
        }
        Ok(())
    }
}

impl PolicyTables for WindowCheck<'_> {
    fn set_rule(
        &mut self,
        prefix: u32,
        key: &ferry_ebpf_common::policy::PolicyRuleKey,
        value: &ferry_ebpf_common::policy::PolicyRuleValue,
    ) -> Result<(), MapOpError> {
        self.now.rules.insert((prefix, *key), *value);
        self.check()
    }
    fn del_rule(
        &mut self,
        prefix: u32,
        key: &ferry_ebpf_common::policy::PolicyRuleKey,
    ) -> Result<(), MapOpError> {
        self.now.rules.remove(&(prefix, *key));
        self.check()
    }
    fn set_cidr(
        &mut self,
        prefix: u32,
        key: &ferry_ebpf_common::policy::PolicyCidrKey,
        id: u32,
    ) -> Result<(), MapOpError> {
        self.now.cidrs.insert((prefix, *key), id);
        self.check()
    }
    fn del_cidr(
        &mut self,
        prefix: u32,
        key: &ferry_ebpf_common::policy::PolicyCidrKey,
    ) -> Result<(), MapOpError> {
        self.now.cidrs.remove(&(prefix, *key));
        self.check()
    }
    fn set_identity(&mut self, a: &[u32; 4], id: u32) -> Result<(), MapOpError> {
        self.now.identities.insert(*a, id);
        self.check()
    }
    fn del_identity(&mut self, a: &[u32; 4]) -> Result<(), MapOpError> {
        self.now.identities.remove(a);
        self.check()
    }
    fn set_endpoint(
        &mut self,
        a: &[u32; 4],
        ep: &ferry_ebpf_common::policy::PolicyEndpoint,
    ) -> Result<(), MapOpError> {
        self.now.endpoints.insert(*a, *ep);
        self.check()
    }
    fn del_endpoint(&mut self, a: &[u32; 4]) -> Result<(), MapOpError> {
        self.now.endpoints.remove(a);
        self.check()
    }
    fn read_all(&self) -> Result<Written, MapOpError> {
        Ok(self.now.clone())
    }
}

/// Writes `to` over maps holding `from` with the programmer and checks,
/// after every write, that no probe (in both directions) is allowed that
/// `from` and `to` both deny. Returns the number of writes.
pub fn check_transition(from: &Desired, to: &Desired, probes: &[Probe]) -> usize {
    let judged: Vec<(Probe, u8, bool)> = probes
        .iter()
        .flat_map(|p| [DIR_INGRESS, DIR_EGRESS].map(|dir| (*p, dir)))
        .map(|(p, dir)| {
            let either = simulate(from, dir, &p).allows() || simulate(to, dir, &p).allows();
            (p, dir, either)
        })
        .collect();
    let tables = WindowCheck {
        now: Written {
            rules: from.rules.clone(),
            cidrs: from.cidrs.clone(),
            identities: from.identities.clone(),
            endpoints: from.endpoints.clone(),
        },
        probes: &judged,
        writes: 0,
    };
    let mut programmer = PolicyProgrammer::new(tables).expect("in-memory maps");
    let pass = programmer.apply(to);
    assert_eq!(pass.failed, 0);
    let t = programmer.tables();
    assert_eq!(t.now, *programmer.written());
    t.writes
}
