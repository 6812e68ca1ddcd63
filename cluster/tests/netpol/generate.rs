//! A seeded generator of cases in the families cyclonus generates from:
//! targets (namespace and pod selectors), peers (podSelector and
//! namespaceSelector nil/empty/labels/expressions and their AND, ipBlock
//! with and without except), ports (none, protocol only, numbered,
//! named — also names of the wrong protocol or of no port —, endPort
//! ranges), policyTypes written or defaulted, several policies at once
//! (conflicts and additivity), then actions: a pod or a namespace
//! relabelled, a policy updated or deleted, each followed by a check of
//! the whole table in every port and protocol.

use super::cases::{Env, Expect, Step};
use super::model::{Cidr, Dir, Op, Peer, Policy, PortSpec, Proto, Rule, Selector};
use super::world::{NAMESPACES, PODS, PORTS, PROTOCOLS};

/// splitmix64: small, seeded, the same everywhere.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n.max(1) as u64).unwrap_or(0)
    }

    pub fn pick<T: Clone>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())].clone()
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

fn target(r: &mut Rng) -> Selector {
    match r.below(6) {
        0 => Selector::all(),
        1 => Selector::labels(&[("pod", "a")]),
        2 => Selector::expr("pod", Op::In, &["a", "b"]),
        3 => Selector::expr("pod", Op::NotIn, &["c"]),
        4 => Selector::expr("role", Op::Exists, &[]),
        _ => Selector::labels(&[("pod", "b")]).and("role", Op::DoesNotExist, &[]),
    }
}

fn ns_selector(r: &mut Rng) -> Option<Selector> {
    match r.below(7) {
        0 | 1 => None,
        2 => Some(Selector::all()),
        3 => Some(Selector::labels(&[("ns", "y")])),
        4 => Some(Selector::expr("ns", Op::In, &["x", "y"])),
        5 => Some(Selector::expr(
            "kubernetes.io/metadata.name",
            Op::NotIn,
            &["z"],
        )),
        _ => Some(Selector::labels(&[("team", "blue")])),
    }
}

fn pod_selector(r: &mut Rng) -> Option<Selector> {
    match r.below(7) {
        0 | 1 => None,
        2 => Some(Selector::all()),
        3 => Some(Selector::labels(&[("pod", "a")])),
        4 => Some(Selector::expr("pod", Op::In, &["b", "c"])),
        5 => Some(Selector::expr("role", Op::Exists, &[])),
        _ => Some(Selector::expr("pod", Op::NotIn, &["a"])),
    }
}

fn peer(r: &mut Rng, env: &Env) -> Peer {
    if r.chance(25) {
        let id = format!("{}/{}", r.pick(&NAMESPACES), r.pick(&PODS));
        let ip = env.ip(&id);
        return match r.below(3) {
            0 => Peer::IpBlock {
                cidr: Cidr::host(ip),
                except: vec![],
            },
            1 => Peer::IpBlock {
                cidr: env.large_cidr(),
                except: vec![Cidr::host(ip)],
            },
            _ => Peer::IpBlock {
                cidr: Cidr::new(ip, 24),
                except: vec![Cidr::new(ip, 28)],
            },
        };
    }
    loop {
        let (namespaces, pods) = (ns_selector(r), pod_selector(r));
        if namespaces.is_some() || pods.is_some() {
            return Peer::Pods { namespaces, pods };
        }
    }
}

fn port(r: &mut Rng) -> PortSpec {
    let tcp = Some(Proto::Tcp);
    let udp = Some(Proto::Udp);
    match r.below(12) {
        0 => PortSpec::default(),
        1 => PortSpec::proto(Proto::Tcp),
        2 => PortSpec::proto(Proto::Udp),
        3 => PortSpec::number(80),
        4 => PortSpec::proto_number(Proto::Udp, 81),
        5 => PortSpec::proto_number(Proto::Tcp, 81),
        6 => PortSpec::named("serve-80-tcp"),
        7 => PortSpec::proto_named(Proto::Udp, "serve-81-udp"),
        // A name of the other protocol: matches nothing.
        8 => PortSpec::proto_named(Proto::Tcp, "serve-80-udp"),
        9 => PortSpec::range(tcp, 80, 81),
        10 => PortSpec::range(udp, 81, 85),
        _ => PortSpec::range(None, 1, 80),
    }
}

fn rules(r: &mut Rng, env: &Env) -> Vec<Rule> {
    (0..r.below(3))
        .map(|_| Rule {
            peers: (0..r.below(3)).map(|_| peer(r, env)).collect(),
            ports: (0..r.below(3)).map(|_| port(r)).collect(),
        })
        .collect()
}

fn policy(r: &mut Rng, env: &Env, namespace: &str, name: &str) -> Policy {
    let mut p = Policy::new(namespace, name, target(r));
    p.types = match r.below(4) {
        0 => None,
        1 => Some(vec![Dir::Ingress]),
        2 => Some(vec![Dir::Egress]),
        _ => Some(vec![Dir::Ingress, Dir::Egress]),
    };
    if r.chance(80) {
        p.ingress = Some(rules(r, env));
    }
    if r.chance(60) {
        p.egress = Some(rules(r, env));
    }
    p
}

/// Every (port, protocol) of the world.
pub fn all_kinds() -> Vec<Expect> {
    let mut out = Vec::new();
    for port in PORTS {
        for proto in PROTOCOLS {
            out.push(Expect {
                port,
                proto,
                upstream: None,
            });
        }
    }
    out
}

/// One random case: 1 to 3 policies, a check, then up to two actions each
/// followed by a check.
pub fn case(r: &mut Rng, env: &Env) -> Vec<Step> {
    let mut policies: Vec<Policy> = (0..1 + r.below(3))
        .map(|i| {
            let ns = r.pick(&NAMESPACES);
            policy(r, env, ns, &format!("gen-{i}"))
        })
        .collect();
    let mut steps = vec![Step::Apply(policies.clone()), Step::Check(all_kinds())];
    for _ in 0..r.below(3) {
        let action = match r.below(4) {
            0 => Step::LabelPod {
                namespace: r.pick(&NAMESPACES).into(),
                pod: r.pick(&PODS).into(),
                key: "role".into(),
                value: Some("server".into()),
            },
            1 => Step::LabelNs {
                namespace: r.pick(&NAMESPACES).into(),
                key: "team".into(),
                value: Some("blue".into()),
            },
            2 if policies.len() > 1 => {
                let p = policies.remove(r.below(policies.len()));
                Step::Delete {
                    namespace: p.namespace,
                    name: p.name,
                }
            }
            _ => {
                let i = r.below(policies.len());
                let (ns, name) = (policies[i].namespace.clone(), policies[i].name.clone());
                policies[i] = policy(r, env, &ns, &name);
                Step::Apply(vec![policies[i].clone()])
            }
        };
        steps.push(action);
        steps.push(Step::Check(all_kinds()));
    }
    steps
}

/// A one-line account of a generated case, for the report.
pub fn describe(steps: &[Step]) -> String {
    let mut out = Vec::new();
    for s in steps {
        match s {
            Step::Apply(ps) => {
                for p in ps {
                    let spec = p.to_json()["spec"].to_string().replace('"', "");
                    out.push(format!("apply {}/{} {spec}", p.namespace, p.name));
                }
            }
            Step::Delete { namespace, name } => out.push(format!("delete {namespace}/{name}")),
            Step::LabelPod {
                namespace,
                pod,
                key,
                value,
            } => out.push(format!("label pod {namespace}/{pod} {key}={value:?}")),
            Step::LabelNs {
                namespace,
                key,
                value,
            } => out.push(format!("label ns {namespace} {key}={value:?}")),
            Step::Check(_) => out.push("check".into()),
        }
    }
    out.join("\n  ")
}
