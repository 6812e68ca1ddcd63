//! The upstream e2e netpol cases (kubernetes test/e2e/network/netpol,
//! TCP and UDP ones, SCTP policies probed over TCP), written again for this
//! suite's model, with a few of our own (endPort, named ports that resolve
//! to nothing, ipBlock ingress, relabelling to lose access). Every check
//! carries the truth table as upstream writes it (`Reach`, the whole 9x9
//! world, loopback not judged) so the model itself is checked against
//! upstream's hand-written expectations without a cluster.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::model::{Cidr, Dir, Op, Peer, Policy, PortSpec, Proto, Rule, Selector, Table};

/// What a case does, in order.
#[derive(Debug, Clone)]
pub enum Step {
    /// Create or update (kubectl apply).
    Apply(Vec<Policy>),
    Delete {
        namespace: String,
        name: String,
    },
    /// Set (`Some`) or remove a pod label.
    LabelPod {
        namespace: String,
        pod: String,
        key: String,
        value: Option<String>,
    },
    LabelNs {
        namespace: String,
        key: String,
        value: Option<String>,
    },
    /// Probe these (port, protocol)s to every pod and every Service and
    /// compare with the model.
    Check(Vec<Expect>),
}

/// One (port, protocol) to probe, with upstream's expectation when the
/// case has one.
#[derive(Debug, Clone)]
pub struct Expect {
    pub port: u16,
    pub proto: Proto,
    pub upstream: Option<Reach>,
}

/// Upstream's way of writing a truth table: everything `base`, then edits
/// in order. Patterns: `*` every pod, `x` namespace x, `x/a` one pod.
#[derive(Debug, Clone)]
pub struct Reach {
    base: bool,
    edits: Vec<(String, String, bool)>,
}

impl Reach {
    pub fn all() -> Self {
        Self {
            base: true,
            edits: Vec::new(),
        }
    }

    pub fn peer(mut self, from: &str, to: &str, v: bool) -> Self {
        self.edits.push((from.to_owned(), to.to_owned(), v));
        self
    }

    pub fn table(&self, names: &[String]) -> Table {
        let mut t = Table::filled(names, self.base);
        let hit =
            |pat: &str, id: &str| pat == "*" || pat == id || id.split('/').next() == Some(pat);
        for (from, to, v) in &self.edits {
            for (i, a) in names.iter().enumerate() {
                for (j, b) in names.iter().enumerate() {
                    if hit(from, a) && hit(to, b) {
                        t.cells[i][j] = *v;
                    }
                }
            }
        }
        t
    }
}

pub fn expect(port: u16, proto: Proto, r: Reach) -> Expect {
    Expect {
        port,
        proto,
        upstream: Some(r),
    }
}

pub fn check(port: u16, proto: Proto, r: Reach) -> Step {
    Step::Check(vec![expect(port, proto, r)])
}

/// The pods' addresses, for ipBlocks.
#[derive(Debug, Clone)]
pub struct Env {
    pub ips: BTreeMap<String, Ipv4Addr>,
}

impl Env {
    pub fn ip(&self, id: &str) -> Ipv4Addr {
        *self
            .ips
            .get(id)
            .unwrap_or_else(|| panic!("no address for {id}"))
    }

    /// The longest prefix holding every pod of the world (upstream's
    /// "large CIDR" around a pod).
    pub fn large_cidr(&self) -> Cidr {
        let ips: Vec<u32> = self.ips.values().map(|&ip| u32::from(ip)).collect();
        let first = ips.first().copied().unwrap_or(0);
        let mut len = 32u8;
        while len > 0
            && !ips
                .iter()
                .all(|&ip| Cidr::new(ip.into(), len).contains(first.into()))
        {
            len -= 1;
        }
        Cidr::new(first.into(), len.min(24))
    }
}

#[derive(Clone)]
pub struct Case {
    pub name: &'static str,
    pub steps: fn(&Env) -> Vec<Step>,
}

const TCP: Proto = Proto::Tcp;
const UDP: Proto = Proto::Udp;
const NAME_LABEL: &str = "kubernetes.io/metadata.name";

fn pod(p: &str) -> Selector {
    Selector::labels(&[("pod", p)])
}

fn ns_named(n: &str) -> Selector {
    Selector::labels(&[(NAME_LABEL, n)])
}

fn apply(p: Policy) -> Step {
    Step::Apply(vec![p])
}

fn label_pod(ns: &str, p: &str, key: &str, value: Option<&str>) -> Step {
    Step::LabelPod {
        namespace: ns.into(),
        pod: p.into(),
        key: key.into(),
        value: value.map(Into::into),
    }
}

fn label_ns(ns: &str, key: &str, value: Option<&str>) -> Step {
    Step::LabelNs {
        namespace: ns.into(),
        key: key.into(),
        value: value.map(Into::into),
    }
}

fn deny_ingress(ns: &str) -> Policy {
    Policy::new(ns, "deny-ingress", Selector::all()).ingress(vec![])
}

/// The cases, in upstream's order, then our own.
pub fn upstream() -> Vec<Case> {
    vec![
        Case {
            name: "should support a 'default-deny-ingress' policy",
            steps: |_| {
                vec![
                    apply(deny_ingress("x")),
                    check(80, TCP, Reach::all().peer("*", "x", false)),
                ]
            },
        },
        Case {
            name: "should support a 'default-deny-all' policy",
            steps: |_| {
                vec![
                    apply(
                        Policy::new("x", "deny-all", Selector::all())
                            .ingress(vec![])
                            .egress(vec![]),
                    ),
                    check(
                        80,
                        TCP,
                        Reach::all().peer("*", "x", false).peer("x", "*", false),
                    ),
                ]
            },
        },
        Case {
            name: "should enforce policy to allow traffic from pods within server namespace based on PodSelector",
            steps: |_| {
                vec![
                    apply(
                        Policy::new("x", "x-a-allows-x-b", pod("a"))
                            .ingress(vec![Rule::from(vec![Peer::pods(pod("b"))])]),
                    ),
                    check(
                        80,
                        TCP,
                        Reach::all()
                            .peer("*", "x/a", false)
                            .peer("x/b", "x/a", true),
                    ),
                ]
            },
        },
        Case {
            name: "should enforce policy to allow ingress traffic for a target",
            steps: |_| {
                vec![
                    Step::Apply(vec![
                        Policy::new("x", "deny-all", Selector::all()).ingress(vec![]),
                        Policy::new("x", "allow-all-to-a", pod("a")).ingress(vec![Rule::from(
                            vec![Peer::both(Selector::all(), Selector::all())],
                        )]),
                    ]),
                    check(
                        80,
                        TCP,
                        Reach::all().peer("*", "x", false).peer("*", "x/a", true),
                    ),
                ]
            },
        },
        Case {
            name: "should enforce policy to allow ingress traffic from pods in all namespaces",
            steps: |_| {
                vec![
                    apply(
                        Policy::new("x", "allow-from-another-ns", pod("a"))
                            .ingress(vec![Rule::from(vec![Peer::namespaces(Selector::all())])]),
                    ),
                    check(80, TCP, Reach::all()),
                ]
            },
        },
        Case {
            name: "should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector",
            steps: |_| {
                vec![
                    // cyclonus's `ns: y` label rather than the immutable one
                    // (that one has its own case below).
                    apply(
                        Policy::new("x", "allow-client-a-via-ns-selector", pod("a")).ingress(vec![
                            Rule::from(vec![Peer::namespaces(Selector::labels(&[("ns", "y")]))]),
                        ]),
                    ),
                    check(
                        80,
                        TCP,
                        Reach::all().peer("x", "x/a", false).peer("z", "x/a", false),
                    ),
                ]
            },
        },
        Case {
            name: "should enforce policy based on PodSelector with MatchExpressions",
            steps: |_| {
                vec![
                    apply(
                        Policy::new("x", "x-a-allows-x-b", pod("a")).ingress(vec![Rule::from(
                            vec![Peer::pods(Selector::expr("pod", Op::In, &["b"]))],
                        )]),
                    ),
                    check(
                        80,
                        TCP,
                        Reach::all()
                            .peer("*", "x/a", false)
                            .peer("x/b", "x/a", true),
                    ),
                ]
            },
        },
        Case {
            name: "should enforce policy based on NamespaceSelector with MatchExpressions",
            steps: |_| {
                vec![
                    apply(
                        Policy::new("x", "allow-ns-y-match-selector", pod("a")).ingress(vec![
                            Rule::from(vec![Peer::namespaces(Selector::expr(
                                NAME_LABEL,
                                Op::In,
                                &["y"],
                            ))]),
                        ]),
                    ),
                    check(
                        80,
                        TCP,
                        Reach::all().peer("x", "x/a", false).peer("z", "x/a", false),
                    ),
                ]
            },
        },
        Case {
            name: "should enforce policy based on PodSelector or NamespaceSelector",
            steps: |_| {
                vec![
                    apply(
                        Policy::new("x", "allow-ns-y-match-selector", pod("a")).ingress(vec![
                            Rule::from(vec![
                                Peer::namespaces(Selector::expr(NAME_LABEL, Op::NotIn, &["x"])),
                                Peer::pods(pod("b")),
                            ]),
                        ]),
                    ),
                    check(80, TCP, Reach::all().peer("x/c", "x/a", false)),
                ]
            },
        },
        Case {
            name: "should enforce policy based on PodSelector and NamespaceSelector",
            steps: |_| {
                vec![
                    apply(
                        Policy::new("x", "allow-ns-y-podselector-and-nsselector", pod("a"))
                            .ingress(vec![Rule::from(vec![Peer::both(
                                Selector::expr(NAME_LABEL, Op::NotIn, &["x"]),
                                pod("b"),
                            )])]),
                    ),
                    check(
                        80,
                        TCP,
                        Reach::all()
                            .peer("*", "x/a", false)
                            .peer("y/b", "x/a", true)
                            .peer("z/b", "x/a", true),
                    ),
                ]
            },
        },
        Case {
            name: "should enforce policy based on Multiple PodSelectors and NamespaceSelectors",
            steps: |_| {
                vec![
                    apply(
                        Policy::new("x", "allow-ns-y-z-pod-b-c", pod("a")).ingress(vec![
                            Rule::from(vec![Peer::both(
                                Selector::expr(NAME_LABEL, Op::NotIn, &["x"]),
                                Selector::expr("pod", Op::In, &["b", "c"]),
                            )]),
                        ]),
                    ),
                    check(
                        80,
                        TCP,
                        Reach::all()
                            .peer("x", "x/a", false)
                            .peer("y/a", "x/a", false)
                            .peer("z/a", "x/a", false),
                    ),
                ]
            },
        },
        Case {
            name: "should enforce policy based on any PodSelectors",
            steps: |_| {
                vec![
                    apply(
                        Policy::new("x", "allow-ns-x-pod-b-c", pod("a")).ingress(vec![Rule::from(
                            vec![Peer::pods(pod("b")), Peer::pods(pod("c"))],
                        )]),
                    ),
                    check(
                        80,
                        TCP,
                        Reach::all()
                            .peer("*", "x/a", false)
                            .peer("x/b", "x/a", true)
                            .peer("x/c", "x/a", true),
                    ),
                ]
            },
        },
        Case {
            name: "should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector",
            steps: |_| {
                vec![
                    apply(
                        Policy::new("x", "allow-ns-y-pod-a-via-namespace-pod-selector", pod("a"))
                            .ingress(vec![Rule::from(vec![Peer::both(ns_named("y"), pod("a"))])]),
                    ),
                    check(
                        80,
                        TCP,
                        Reach::all()
                            .peer("*", "x/a", false)
                            .peer("y/a", "x/a", true),
                    ),
                ]
            },
        },
        Case {
            name: "should enforce policy based on Ports",
            steps: |_| {
                vec![
                    apply(
                        Policy::new("x", "allow-client-a-via-ns-selector", pod("a")).ingress(vec![
                            Rule::new(
                                vec![Peer::namespaces(ns_named("y"))],
                                vec![PortSpec::proto_number(TCP, 81)],
                            ),
                        ]),
                    ),
                    Step::Check(vec![
                        expect(
                            81,
                            TCP,
                            Reach::all()
                                .peer("x", "x/a", false)
                                .peer("y", "x/a", true)
                                .peer("z", "x/a", false),
                        ),
                        expect(80, TCP, Reach::all().peer("*", "x/a", false)),
                    ]),
                ]
            },
        },
        Case {
            name: "should enforce multiple, stacked policies with overlapping podSelectors",
            steps: |_| {
                let allow = |name: &str, port: u16| {
                    Policy::new("x", name, pod("a")).ingress(vec![Rule::new(
                        vec![Peer::namespaces(ns_named("y"))],
                        vec![PortSpec::proto_number(TCP, port)],
                    )])
                };
                let y_only = || {
                    Reach::all()
                        .peer("x", "x/a", false)
                        .peer("y", "x/a", true)
                        .peer("z", "x/a", false)
                };
                vec![
                    apply(allow("allow-client-a-via-ns-selector", 81)),
                    Step::Check(vec![
                        expect(81, TCP, y_only()),
                        expect(80, TCP, Reach::all().peer("*", "x/a", false)),
                    ]),
                    apply(allow("allow-client-a-via-ns-selector-80", 80)),
                    Step::Check(vec![expect(80, TCP, y_only()), expect(81, TCP, y_only())]),
                ]
            },
        },
        Case {
            name: "should support allow-all policy",
            steps: |_| {
                vec![
                    apply(
                        Policy::new("x", "allow-all", Selector::all()).ingress(vec![Rule::all()]),
                    ),
                    Step::Check(vec![
                        expect(80, TCP, Reach::all()),
                        expect(81, TCP, Reach::all()),
                    ]),
                ]
            },
        },
        Case {
            name: "should allow ingress access on one named port",
            steps: |_| {
                vec![
                    apply(
                        Policy::new("x", "allow-all", Selector::all())
                            .ingress(vec![Rule::ports(vec![PortSpec::named("serve-81-tcp")])]),
                    ),
                    Step::Check(vec![
                        expect(81, TCP, Reach::all()),
                        expect(80, TCP, Reach::all().peer("*", "x", false)),
                        // The name is TCP's: UDP 81 stays closed.
                        expect(81, UDP, Reach::all().peer("*", "x", false)),
                    ]),
                ]
            },
        },
        Case {
            name: "should allow ingress access from namespace on one named port",
            steps: |_| {
                vec![
                    apply(
                        Policy::new("x", "allow-client-a-via-ns-selector-80", pod("a")).ingress(
                            vec![Rule::new(
                                vec![Peer::namespaces(ns_named("y"))],
                                vec![PortSpec::proto_named(TCP, "serve-80-tcp")],
                            )],
                        ),
                    ),
                    Step::Check(vec![
                        expect(
                            80,
                            TCP,
                            Reach::all().peer("x", "x/a", false).peer("z", "x/a", false),
                        ),
                        expect(81, TCP, Reach::all().peer("*", "x/a", false)),
                    ]),
                ]
            },
        },
        Case {
            name: "should allow egress access on one named port",
            steps: |_| {
                vec![
                    apply(
                        Policy::new("x", "allow-egress", Selector::all())
                            .egress(vec![Rule::ports(vec![PortSpec::named("serve-80-tcp")])]),
                    ),
                    Step::Check(vec![
                        expect(80, TCP, Reach::all()),
                        expect(81, TCP, Reach::all().peer("x", "*", false)),
                    ]),
                ]
            },
        },
        Case {
            name: "should enforce updated policy",
            steps: |_| {
                let p = Policy::new("x", "allow-all-mutate-to-deny-all", Selector::all());
                vec![
                    apply(p.clone().ingress(vec![Rule::all()])),
                    check(81, TCP, Reach::all()),
                    apply(p.ingress(vec![])),
                    check(81, TCP, Reach::all().peer("*", "x", false)),
                ]
            },
        },
        Case {
            name: "should allow ingress access from updated namespace",
            steps: |_| {
                vec![
                    apply(
                        Policy::new("x", "allow-client-a-via-ns-selector", pod("a")).ingress(vec![
                            Rule::from(vec![Peer::namespaces(Selector::labels(&[(
                                "ns2", "updated",
                            )]))]),
                        ]),
                    ),
                    check(80, TCP, Reach::all().peer("*", "x/a", false)),
                    label_ns("y", "ns2", Some("updated")),
                    check(
                        80,
                        TCP,
                        Reach::all().peer("*", "x/a", false).peer("y", "*", true),
                    ),
                ]
            },
        },
        Case {
            name: "should allow ingress access from updated pod",
            steps: |_| {
                vec![
                    apply(
                        Policy::new("x", "allow-client-a-via-pod-selector", pod("a")).ingress(
                            vec![Rule::from(vec![Peer::pods(Selector::labels(&[
                                ("pod", "b"),
                                ("pod2", "updated"),
                            ]))])],
                        ),
                    ),
                    check(80, TCP, Reach::all().peer("*", "x/a", false)),
                    label_pod("x", "b", "pod2", Some("updated")),
                    check(
                        80,
                        TCP,
                        Reach::all()
                            .peer("*", "x/a", false)
                            .peer("x/b", "x/a", true),
                    ),
                ]
            },
        },
        Case {
            name: "should deny ingress from pods on other namespaces",
            steps: |_| {
                vec![
                    apply(
                        Policy::new("x", "deny-empty-policy", Selector::all())
                            .ingress(vec![Rule::from(vec![Peer::pods(Selector::all())])]),
                    ),
                    check(
                        80,
                        TCP,
                        Reach::all().peer("y", "x", false).peer("z", "x", false),
                    ),
                ]
            },
        },
        Case {
            name: "should deny ingress access to updated pod",
            steps: |_| {
                vec![
                    apply(
                        Policy::new(
                            "x",
                            "deny-ingress-via-label-selector",
                            Selector::labels(&[("target", "isolated")]),
                        )
                        .ingress(vec![]),
                    ),
                    check(80, TCP, Reach::all()),
                    label_pod("x", "a", "target", Some("isolated")),
                    check(80, TCP, Reach::all().peer("*", "x/a", false)),
                ]
            },
        },
        Case {
            name: "should deny egress from pods based on PodSelector",
            steps: |_| {
                vec![
                    apply(Policy::new("x", "deny-egress-pod-a", pod("a")).egress(vec![])),
                    check(80, TCP, Reach::all().peer("x/a", "*", false)),
                ]
            },
        },
        Case {
            name: "should deny egress from all pods in a namespace",
            steps: |_| {
                vec![
                    apply(Policy::new("x", "deny-egress-ns-x", Selector::all()).egress(vec![])),
                    check(80, TCP, Reach::all().peer("x", "*", false)),
                ]
            },
        },
        Case {
            name: "should work with Ingress, Egress specified together",
            steps: |_| {
                let mut p = Policy::new("x", "allow-client-a-via-pod-selector", pod("a"))
                    .ingress(vec![Rule::from(vec![Peer::pods(pod("b"))])]);
                p.egress = Some(vec![Rule::ports(vec![PortSpec::number(80)])]);
                p.types = Some(vec![Dir::Egress, Dir::Ingress]);
                vec![
                    apply(p),
                    Step::Check(vec![
                        expect(
                            80,
                            TCP,
                            Reach::all()
                                .peer("*", "x/a", false)
                                .peer("x/b", "x/a", true),
                        ),
                        expect(
                            81,
                            TCP,
                            Reach::all()
                                .peer("*", "x/a", false)
                                .peer("x/a", "*", false)
                                .peer("x/b", "x/a", true),
                        ),
                    ]),
                ]
            },
        },
        Case {
            name: "should support denying of egress traffic on the client side (even if the server explicitly allows this traffic)",
            steps: |_| {
                let from_xa = || vec![Rule::from(vec![Peer::both(ns_named("x"), pod("a"))])];
                vec![
                    Step::Apply(vec![
                        Policy::new("x", "allow-to-ns-y-pod-a", pod("a"))
                            .egress(vec![Rule::from(vec![Peer::both(ns_named("y"), pod("a"))])]),
                        Policy::new("y", "allow-from-xa-on-ya-match-selector", pod("a"))
                            .ingress(from_xa()),
                        Policy::new("y", "allow-from-xa-on-yb-match-selector", pod("b"))
                            .ingress(from_xa()),
                    ]),
                    check(
                        80,
                        TCP,
                        Reach::all()
                            .peer("x/a", "*", false)
                            .peer("*", "y/a", false)
                            .peer("x/a", "y/a", true)
                            .peer("*", "y/b", false),
                    ),
                ]
            },
        },
        Case {
            name: "should enforce egress policy allowing traffic to a server in a different namespace based on PodSelector and NamespaceSelector",
            steps: |_| {
                vec![
                    apply(
                        Policy::new("x", "allow-to-ns-y-pod-a", pod("a"))
                            .egress(vec![Rule::from(vec![Peer::both(ns_named("y"), pod("a"))])]),
                    ),
                    check(
                        80,
                        TCP,
                        Reach::all()
                            .peer("x/a", "*", false)
                            .peer("x/a", "y/a", true),
                    ),
                ]
            },
        },
        Case {
            name: "should enforce ingress policy allowing any port traffic to a server on a specific protocol",
            steps: |_| {
                vec![
                    apply(
                        Policy::new("x", "allow-ingress-by-proto", pod("a"))
                            .ingress(vec![Rule::ports(vec![PortSpec::proto(TCP)])]),
                    ),
                    Step::Check(vec![
                        expect(80, TCP, Reach::all()),
                        expect(81, TCP, Reach::all()),
                        expect(80, UDP, Reach::all().peer("*", "x/a", false)),
                    ]),
                ]
            },
        },
        Case {
            name: "should enforce multiple ingress policies with ingress allow-all policy taking precedence",
            steps: |_| {
                vec![
                    apply(
                        Policy::new("x", "allow-ingress-port-80", Selector::all())
                            .ingress(vec![Rule::ports(vec![PortSpec::number(80)])]),
                    ),
                    check(81, TCP, Reach::all().peer("*", "x", false)),
                    apply(
                        Policy::new("x", "allow-ingress", Selector::all())
                            .ingress(vec![Rule::all()]),
                    ),
                    check(81, TCP, Reach::all()),
                ]
            },
        },
        Case {
            name: "should enforce multiple egress policies with egress allow-all policy taking precedence",
            steps: |_| {
                vec![
                    apply(
                        Policy::new("x", "allow-egress-port-80", Selector::all())
                            .egress(vec![Rule::ports(vec![PortSpec::number(80)])]),
                    ),
                    check(81, TCP, Reach::all().peer("x", "*", false)),
                    apply(
                        Policy::new("x", "allow-egress", Selector::all()).egress(vec![Rule::all()]),
                    ),
                    check(81, TCP, Reach::all()),
                ]
            },
        },
        Case {
            name: "should stop enforcing policies after they are deleted",
            steps: |_| {
                vec![
                    apply(
                        Policy::new("x", "deny-all", Selector::all())
                            .ingress(vec![])
                            .egress(vec![]),
                    ),
                    check(
                        80,
                        TCP,
                        Reach::all().peer("x", "*", false).peer("*", "x", false),
                    ),
                    Step::Delete {
                        namespace: "x".into(),
                        name: "deny-all".into(),
                    },
                    check(80, TCP, Reach::all()),
                ]
            },
        },
        Case {
            name: "should allow egress access to server in CIDR block",
            steps: |env| {
                vec![
                    apply(
                        Policy::new("x", "allow-client-a-via-cidr-egress-rule", pod("a")).egress(
                            vec![Rule::from(vec![Peer::IpBlock {
                                cidr: Cidr::host(env.ip("y/b")),
                                except: vec![],
                            }])],
                        ),
                    ),
                    check(
                        80,
                        TCP,
                        Reach::all()
                            .peer("x/a", "*", false)
                            .peer("x/a", "y/b", true),
                    ),
                ]
            },
        },
        Case {
            name: "should enforce except clause while egress access to server in CIDR block",
            steps: |env| {
                vec![
                    apply(
                        Policy::new("x", "allow-client-a-via-cidr-egress-rule", pod("a")).egress(
                            vec![Rule::from(vec![Peer::IpBlock {
                                cidr: env.large_cidr(),
                                except: vec![Cidr::host(env.ip("x/b"))],
                            }])],
                        ),
                    ),
                    check(80, TCP, Reach::all().peer("x/a", "x/b", false)),
                ]
            },
        },
        Case {
            name: "should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed",
            steps: |env| {
                let block = |cidr, except| {
                    Policy::new("x", "allow-client-a-via-cidr-egress-rule", pod("a"))
                        .egress(vec![Rule::from(vec![Peer::IpBlock { cidr, except }])])
                };
                let xb = Cidr::host(env.ip("x/b"));
                vec![
                    apply(block(env.large_cidr(), vec![xb])),
                    check(80, TCP, Reach::all().peer("x/a", "x/b", false)),
                    // Additive: a second policy allowing the excepted /32.
                    apply(
                        Policy::new("x", "allow-client-a-to-x-b", pod("a")).egress(vec![
                            Rule::from(vec![Peer::IpBlock {
                                cidr: xb,
                                except: vec![],
                            }]),
                        ]),
                    ),
                    check(80, TCP, Reach::all()),
                    // Upstream's step: the first policy updated to the /32.
                    apply(block(xb, vec![])),
                    check(
                        80,
                        TCP,
                        Reach::all()
                            .peer("x/a", "*", false)
                            .peer("x/a", "x/b", true),
                    ),
                ]
            },
        },
        Case {
            name: "should enforce policies to check ingress and egress policies can be controlled independently based on PodSelector",
            steps: |_| {
                vec![
                    apply(
                        Policy::new("x", "allow-egress-for-target", pod("a"))
                            .egress(vec![Rule::all()]),
                    ),
                    check(80, TCP, Reach::all()),
                    apply(
                        Policy::new("x", "deny-ingress-via-label-selector", pod("a"))
                            .ingress(vec![]),
                    ),
                    check(80, TCP, Reach::all().peer("*", "x/a", false)),
                ]
            },
        },
        Case {
            name: "should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP', even if the plugin doesn't support SCTP",
            steps: |_| {
                vec![
                    Step::Apply(vec![
                        deny_ingress("x"),
                        Policy::new("x", "allow-only-sctp-ingress-on-port-81", pod("a")).ingress(
                            vec![Rule::ports(vec![PortSpec::proto_number(Proto::Sctp, 81)])],
                        ),
                    ]),
                    check(81, TCP, Reach::all().peer("*", "x", false)),
                ]
            },
        },
        Case {
            name: "should properly isolate pods that are selected by a policy allowing SCTP, even if the plugin doesn't support SCTP",
            steps: |_| {
                vec![
                    apply(
                        Policy::new("x", "allow-only-sctp-ingress-on-port-80", pod("a")).ingress(
                            vec![Rule::ports(vec![PortSpec::proto_number(Proto::Sctp, 80)])],
                        ),
                    ),
                    check(81, TCP, Reach::all().peer("*", "x/a", false)),
                ]
            },
        },
        Case {
            name: "should not allow access by TCP when a policy specifies only UDP",
            steps: |_| {
                vec![
                    apply(
                        Policy::new("x", "allow-only-udp-ingress-on-port-81", pod("a"))
                            .ingress(vec![Rule::ports(vec![PortSpec::proto_number(UDP, 81)])]),
                    ),
                    Step::Check(vec![
                        expect(81, TCP, Reach::all().peer("*", "x/a", false)),
                        expect(81, UDP, Reach::all()),
                    ]),
                ]
            },
        },
        Case {
            name: "should enforce policy to allow traffic based on NamespaceSelector with MatchLabels using default ns label",
            steps: |_| {
                vec![
                    apply(
                        Policy::new(
                            "x",
                            "allow-client-a-via-ns-selector-for-immutable-ns-label",
                            pod("a"),
                        )
                        .ingress(vec![Rule::from(vec![Peer::namespaces(ns_named("y"))])]),
                    ),
                    check(
                        80,
                        TCP,
                        Reach::all().peer("x", "x/a", false).peer("z", "x/a", false),
                    ),
                ]
            },
        },
        Case {
            name: "should enforce policy based on NamespaceSelector with MatchExpressions using default ns label",
            steps: |_| {
                vec![
                    apply(
                        Policy::new(
                            "x",
                            "allow-ns-y-match-selector-for-immutable-ns-label",
                            pod("a"),
                        )
                        .egress(vec![Rule::from(vec![Peer::namespaces(
                            Selector::expr(NAME_LABEL, Op::NotIn, &["y"]),
                        )])]),
                    ),
                    check(80, TCP, Reach::all().peer("x/a", "y", false)),
                ]
            },
        },
        Case {
            name: "UDP: should support a 'default-deny-ingress' policy",
            steps: |_| {
                vec![
                    apply(deny_ingress("x")),
                    check(80, UDP, Reach::all().peer("*", "x", false)),
                ]
            },
        },
        Case {
            name: "UDP: should enforce policy based on Ports",
            steps: |_| {
                vec![
                    apply(
                        Policy::new("x", "allow-ingress-on-port-81-ns-x", pod("a")).ingress(vec![
                            Rule::new(
                                vec![Peer::namespaces(ns_named("y"))],
                                vec![PortSpec::proto_number(UDP, 81)],
                            ),
                        ]),
                    ),
                    Step::Check(vec![
                        expect(
                            81,
                            UDP,
                            Reach::all().peer("x", "x/a", false).peer("z", "x/a", false),
                        ),
                        expect(81, TCP, Reach::all().peer("*", "x/a", false)),
                    ]),
                ]
            },
        },
        Case {
            name: "UDP: should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector",
            steps: |_| {
                vec![
                    apply(
                        Policy::new("x", "allow-ns-y-pod-a-via-namespace-pod-selector", pod("a"))
                            .ingress(vec![Rule::from(vec![Peer::both(ns_named("y"), pod("a"))])]),
                    ),
                    check(
                        80,
                        UDP,
                        Reach::all()
                            .peer("*", "x/a", false)
                            .peer("y/a", "x/a", true),
                    ),
                ]
            },
        },
    ]
}

/// Cases of our own, beyond upstream's list.
pub fn ours() -> Vec<Case> {
    vec![
        Case {
            name: "endPort: an ingress range opens exactly its ports, for its protocol",
            steps: |_| {
                vec![
                    apply(
                        Policy::new("x", "range-81-90", pod("a"))
                            .ingress(vec![Rule::ports(vec![PortSpec::range(Some(TCP), 81, 90)])]),
                    ),
                    Step::Check(vec![
                        expect(80, TCP, Reach::all().peer("*", "x/a", false)),
                        expect(81, TCP, Reach::all()),
                        expect(81, UDP, Reach::all().peer("*", "x/a", false)),
                    ]),
                ]
            },
        },
        Case {
            name: "endPort: an egress range to a namespace",
            steps: |_| {
                vec![
                    apply(
                        Policy::new("x", "egress-range", Selector::all()).egress(vec![Rule::new(
                            vec![Peer::namespaces(Selector::labels(&[("ns", "y")]))],
                            vec![PortSpec::range(None, 70, 80)],
                        )]),
                    ),
                    Step::Check(vec![
                        expect(
                            80,
                            TCP,
                            Reach::all().peer("x", "*", false).peer("x", "y", true),
                        ),
                        expect(81, TCP, Reach::all().peer("x", "*", false)),
                    ]),
                ]
            },
        },
        Case {
            name: "a named port that resolves to nothing isolates and allows nothing",
            steps: |_| {
                vec![
                    apply(
                        Policy::new("x", "no-such-port", pod("a"))
                            .ingress(vec![Rule::ports(vec![PortSpec::named("serve-82-tcp")])]),
                    ),
                    Step::Check(vec![
                        expect(80, TCP, Reach::all().peer("*", "x/a", false)),
                        expect(80, UDP, Reach::all().peer("*", "x/a", false)),
                    ]),
                ]
            },
        },
        Case {
            name: "egress on a UDP named port resolves on the destination",
            steps: |_| {
                vec![
                    apply(
                        Policy::new("x", "egress-serve-81-udp", pod("a")).egress(vec![
                            Rule::ports(vec![PortSpec::proto_named(UDP, "serve-81-udp")]),
                        ]),
                    ),
                    Step::Check(vec![
                        expect(81, UDP, Reach::all()),
                        expect(80, UDP, Reach::all().peer("x/a", "*", false)),
                        expect(81, TCP, Reach::all().peer("x/a", "*", false)),
                    ]),
                ]
            },
        },
        Case {
            name: "ingress from a pod's /32 ipBlock, reached through its Service too",
            steps: |env| {
                vec![
                    apply(
                        Policy::new("x", "from-y-b-by-address", pod("a")).ingress(vec![
                            Rule::from(vec![Peer::IpBlock {
                                cidr: Cidr::host(env.ip("y/b")),
                                except: vec![],
                            }]),
                        ]),
                    ),
                    check(
                        80,
                        TCP,
                        Reach::all()
                            .peer("*", "x/a", false)
                            .peer("y/b", "x/a", true),
                    ),
                ]
            },
        },
        Case {
            name: "egress allowed only to DNS (UDP 53) reaches none of the servers",
            steps: |_| {
                vec![
                    apply(
                        Policy::new("x", "allow-dns", Selector::all())
                            .egress(vec![Rule::ports(vec![PortSpec::proto_number(UDP, 53)])]),
                    ),
                    Step::Check(vec![
                        expect(80, TCP, Reach::all().peer("x", "*", false)),
                        expect(80, UDP, Reach::all().peer("x", "*", false)),
                    ]),
                ]
            },
        },
        Case {
            name: "a namespace relabelled away loses access",
            steps: |_| {
                vec![
                    apply(
                        Policy::new("x", "from-team-blue", pod("a")).ingress(vec![Rule::from(
                            vec![Peer::namespaces(Selector::labels(&[("team", "blue")]))],
                        )]),
                    ),
                    label_ns("y", "team", Some("blue")),
                    check(
                        80,
                        TCP,
                        Reach::all().peer("*", "x/a", false).peer("y", "x/a", true),
                    ),
                    label_ns("y", "team", None),
                    check(80, TCP, Reach::all().peer("*", "x/a", false)),
                ]
            },
        },
        Case {
            name: "a pod relabelled into and out of a policy's target",
            steps: |_| {
                vec![
                    apply(
                        Policy::new(
                            "x",
                            "isolate-servers",
                            Selector::labels(&[("role", "server")]),
                        )
                        .ingress(vec![]),
                    ),
                    label_pod("x", "b", "role", Some("server")),
                    check(80, TCP, Reach::all().peer("*", "x/b", false)),
                    label_pod("x", "b", "role", None),
                    check(80, TCP, Reach::all()),
                ]
            },
        },
    ]
}
