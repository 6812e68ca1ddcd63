//! The suite's own truth-table model of networking.k8s.io/v1
//! NetworkPolicy, written from the API reference and independent of the
//! dataplane's compiler: plain loops over the policies, per direction.
//!
//! - A pod is isolated for a direction when a policy of its namespace
//!   selects it and has that direction in its (defaulted) policyTypes.
//! - Policies are additive: traffic is allowed in a direction when the pod
//!   is not isolated there or some rule of some selecting policy matches.
//! - A connection passes when the source's egress AND the destination's
//!   ingress allow it; a pod reaching itself always passes.
//! - Peers: several = OR; podSelector with namespaceSelector = AND; an
//!   absent namespaceSelector means the policy's own namespace; ipBlock
//!   matches any address in `cidr` outside every `except`, pods included.
//! - Ports: none = every port and protocol; protocol defaults to TCP; a
//!   port absent = every port of that protocol; `endPort` makes a range; a
//!   named port resolves on the destination pod's container ports (for
//!   egress too) and matches nothing when the name resolves to nothing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use serde_json::{Value, json};

pub type Labels = BTreeMap<String, String>;

/// `[("k", "v"), ...]` as labels.
pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    pub fn api(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
            Proto::Sctp => "SCTP",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expr {
    pub key: String,
    pub op: Op,
    pub values: Vec<String>,
}

/// A metav1.LabelSelector; the default (nothing) selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    pub match_labels: Labels,
    pub match_expressions: Vec<Expr>,
}

impl Selector {
    pub fn all() -> Self {
        Self::default()
    }

    pub fn labels(pairs: &[(&str, &str)]) -> Self {
        Self {
            match_labels: labels(pairs),
            match_expressions: Vec::new(),
        }
    }

    pub fn expr(key: &str, op: Op, values: &[&str]) -> Self {
        Self::default().and(key, op, values)
    }

    pub fn and(mut self, key: &str, op: Op, values: &[&str]) -> Self {
        self.match_expressions.push(Expr {
            key: key.to_owned(),
            op,
            values: values.iter().map(|v| (*v).to_owned()).collect(),
        });
        self
    }

    pub fn matches(&self, l: &Labels) -> bool {
        let labels_ok = self
            .match_labels
            .iter()
            .all(|(k, v)| l.get(k).is_some_and(|have| have == v));
        let exprs_ok = self.match_expressions.iter().all(|e| {
            let have = l.get(&e.key);
            match e.op {
                Op::In => have.is_some_and(|h| e.values.contains(h)),
                Op::NotIn => !have.is_some_and(|h| e.values.contains(h)),
                Op::Exists => have.is_some(),
                Op::DoesNotExist => have.is_none(),
            }
        });
        labels_ok && exprs_ok
    }

    pub fn to_json(&self) -> Value {
        let mut v = serde_json::Map::new();
        if !self.match_labels.is_empty() {
            v.insert("matchLabels".into(), json!(self.match_labels));
        }
        if !self.match_expressions.is_empty() {
            let exprs: Vec<Value> = self
                .match_expressions
                .iter()
                .map(|e| {
                    let op = match e.op {
                        Op::In => "In",
                        Op::NotIn => "NotIn",
                        Op::Exists => "Exists",
                        Op::DoesNotExist => "DoesNotExist",
                    };
                    if matches!(e.op, Op::In | Op::NotIn) {
                        json!({"key": e.key, "operator": op, "values": e.values})
                    } else {
                        json!({"key": e.key, "operator": op})
                    }
                })
                .collect();
            v.insert("matchExpressions".into(), Value::Array(exprs));
        }
        Value::Object(v)
    }
}

/// An IPv4 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Cidr {
    pub fn new(addr: Ipv4Addr, len: u8) -> Self {
        let mask = mask(len);
        Self {
            addr: Ipv4Addr::from(u32::from(addr) & mask),
            len,
        }
    }

    pub fn host(addr: Ipv4Addr) -> Self {
        Self::new(addr, 32)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.len) == u32::from(self.addr)
    }
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len.min(32)))
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// podSelector and/or namespaceSelector (at least one set).
    Pods {
        namespaces: Option<Selector>,
        pods: Option<Selector>,
    },
    IpBlock {
        cidr: Cidr,
        except: Vec<Cidr>,
    },
}

impl Peer {
    pub fn pods(sel: Selector) -> Self {
        Peer::Pods {
            namespaces: None,
            pods: Some(sel),
        }
    }

    pub fn namespaces(sel: Selector) -> Self {
        Peer::Pods {
            namespaces: Some(sel),
            pods: None,
        }
    }

    pub fn both(namespaces: Selector, pods: Selector) -> Self {
        Peer::Pods {
            namespaces: Some(namespaces),
            pods: Some(pods),
        }
    }

    pub fn to_json(&self) -> Value {
        match self {
            Peer::Pods { namespaces, pods } => {
                let mut v = serde_json::Map::new();
                if let Some(n) = namespaces {
                    v.insert("namespaceSelector".into(), n.to_json());
                }
                if let Some(p) = pods {
                    v.insert("podSelector".into(), p.to_json());
                }
                Value::Object(v)
            }
            Peer::IpBlock { cidr, except } => {
                let mut b = json!({"cidr": cidr.to_string()});
                if !except.is_empty() {
                    b["except"] = json!(except.iter().map(ToString::to_string).collect::<Vec<_>>());
                }
                json!({"ipBlock": b})
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

/// A NetworkPolicyPort.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PortSpec {
    pub protocol: Option<Proto>,
    pub port: Option<PortRef>,
    pub end_port: Option<u16>,
}

impl PortSpec {
    pub fn number(port: u16) -> Self {
        Self {
            port: Some(PortRef::Number(port)),
            ..Self::default()
        }
    }

    pub fn proto_number(protocol: Proto, port: u16) -> Self {
        Self {
            protocol: Some(protocol),
            port: Some(PortRef::Number(port)),
            end_port: None,
        }
    }

    pub fn named(name: &str) -> Self {
        Self {
            port: Some(PortRef::Name(name.to_owned())),
            ..Self::default()
        }
    }

    pub fn proto_named(protocol: Proto, name: &str) -> Self {
        Self {
            protocol: Some(protocol),
            port: Some(PortRef::Name(name.to_owned())),
            end_port: None,
        }
    }

    pub fn proto(protocol: Proto) -> Self {
        Self {
            protocol: Some(protocol),
            ..Self::default()
        }
    }

    pub fn range(protocol: Option<Proto>, port: u16, end: u16) -> Self {
        Self {
            protocol,
            port: Some(PortRef::Number(port)),
            end_port: Some(end),
        }
    }

    pub fn to_json(&self) -> Value {
        let mut v = serde_json::Map::new();
        if let Some(p) = self.protocol {
            v.insert("protocol".into(), json!(p.api()));
        }
        match &self.port {
            Some(PortRef::Number(n)) => {
                v.insert("port".into(), json!(n));
            }
            Some(PortRef::Name(s)) => {
                v.insert("port".into(), json!(s));
            }
            None => {}
        }
        if let Some(e) = self.end_port {
            v.insert("endPort".into(), json!(e));
        }
        Value::Object(v)
    }
}

/// An ingress or egress rule: `from`/`to` empty = every peer; `ports`
/// empty = every port and protocol.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rule {
    pub peers: Vec<Peer>,
    pub ports: Vec<PortSpec>,
}

impl Rule {
    pub fn all() -> Self {
        Self::default()
    }

    pub fn from(peers: Vec<Peer>) -> Self {
        Self {
            peers,
            ports: Vec::new(),
        }
    }

    pub fn ports(ports: Vec<PortSpec>) -> Self {
        Self {
            peers: Vec::new(),
            ports,
        }
    }

    pub fn new(peers: Vec<Peer>, ports: Vec<PortSpec>) -> Self {
        Self { peers, ports }
    }

    fn to_json(&self, peers_key: &str) -> Value {
        let mut v = serde_json::Map::new();
        if !self.peers.is_empty() {
            v.insert(
                peers_key.into(),
                Value::Array(self.peers.iter().map(Peer::to_json).collect()),
            );
        }
        if !self.ports.is_empty() {
            v.insert(
                "ports".into(),
                Value::Array(self.ports.iter().map(PortSpec::to_json).collect()),
            );
        }
        Value::Object(v)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Ingress,
    Egress,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    pub target: Selector,
    /// `policyTypes` as written; `None` = defaulted as the API does.
    pub types: Option<Vec<Dir>>,
    /// `None` = field absent.
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
}

impl Policy {
    pub fn new(namespace: &str, name: &str, target: Selector) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            target,
            types: None,
            ingress: None,
            egress: None,
        }
    }

    /// Ingress rules (none = deny all ingress for the selected pods), with
    /// policyTypes naming Ingress (as upstream's SetSpecIngressRules).
    pub fn ingress(mut self, rules: Vec<Rule>) -> Self {
        self.ingress = Some(rules);
        self.add_type(Dir::Ingress);
        self
    }

    /// Egress rules with policyTypes naming Egress (as upstream's
    /// SetSpecEgressRules: an empty list still isolates egress).
    pub fn egress(mut self, rules: Vec<Rule>) -> Self {
        self.egress = Some(rules);
        self.add_type(Dir::Egress);
        self
    }

    fn add_type(&mut self, d: Dir) {
        let t = self.types.get_or_insert_with(Vec::new);
        if !t.contains(&d) {
            t.push(d);
        }
    }

    /// The effective policyTypes: as written, else Ingress plus Egress when
    /// there are egress rules.
    pub fn effective_types(&self) -> Vec<Dir> {
        match &self.types {
            Some(t) => t.clone(),
            None => {
                let mut t = vec![Dir::Ingress];
                if self.egress.as_ref().is_some_and(|e| !e.is_empty()) {
                    t.push(Dir::Egress);
                }
                t
            }
        }
    }

    pub fn to_json(&self) -> Value {
        let mut spec = serde_json::Map::new();
        spec.insert("podSelector".into(), self.target.to_json());
        if let Some(t) = &self.types {
            let t: Vec<&str> = t
                .iter()
                .map(|d| match d {
                    Dir::Ingress => "Ingress",
                    Dir::Egress => "Egress",
                })
                .collect();
            spec.insert("policyTypes".into(), json!(t));
        }
        if let Some(r) = &self.ingress {
            spec.insert(
                "ingress".into(),
                Value::Array(r.iter().map(|r| r.to_json("from")).collect()),
            );
        }
        if let Some(r) = &self.egress {
            spec.insert(
                "egress".into(),
                Value::Array(r.iter().map(|r| r.to_json("to")).collect()),
            );
        }
        json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": spec,
        })
    }
}

/// A named container port of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPort {
    pub name: String,
    pub port: u16,
    pub protocol: Proto,
}

#[derive(Debug, Clone)]
pub struct ModelPod {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub ip: Ipv4Addr,
    pub ports: Vec<ContainerPort>,
}

impl ModelPod {
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// What the model judges: namespaces (with their labels, the immutable
/// `kubernetes.io/metadata.name` included), pods and policies.
#[derive(Debug, Clone, Default)]
pub struct Model {
    pub namespaces: BTreeMap<String, Labels>,
    pub pods: Vec<ModelPod>,
    pub policies: Vec<Policy>,
}

impl Model {
    pub fn pod_index(&self, id: &str) -> usize {
        self.pods
            .iter()
            .position(|p| p.id() == id)
            .unwrap_or_else(|| panic!("no pod {id} in the model"))
    }

    /// Creates or replaces a policy (by namespace and name).
    pub fn upsert(&mut self, p: Policy) {
        self.policies
            .retain(|q| !(q.namespace == p.namespace && q.name == p.name));
        self.policies.push(p);
    }

    pub fn delete(&mut self, namespace: &str, name: &str) {
        self.policies
            .retain(|q| !(q.namespace == namespace && q.name == name));
    }

    fn ns_labels(&self, ns: &str) -> Labels {
        self.namespaces.get(ns).cloned().unwrap_or_default()
    }

    fn peer_matches(&self, policy: &Policy, peer: &Peer, other: &ModelPod) -> bool {
        match peer {
            Peer::Pods { namespaces, pods } => {
                let ns_ok = match namespaces {
                    None => other.namespace == policy.namespace,
                    Some(s) => s.matches(&self.ns_labels(&other.namespace)),
                };
                let pod_ok = pods.as_ref().is_none_or(|s| s.matches(&other.labels));
                ns_ok && pod_ok
            }
            Peer::IpBlock { cidr, except } => {
                cidr.contains(other.ip) && !except.iter().any(|e| e.contains(other.ip))
            }
        }
    }

    fn port_matches(ports: &[PortSpec], port: u16, proto: Proto, dest: &ModelPod) -> bool {
        ports.is_empty()
            || ports.iter().any(|p| {
                p.protocol.unwrap_or(Proto::Tcp) == proto
                    && match &p.port {
                        None => true,
                        Some(PortRef::Number(n)) => match p.end_port {
                            None => *n == port,
                            Some(end) => (*n..=end).contains(&port),
                        },
                        Some(PortRef::Name(name)) => dest
                            .ports
                            .iter()
                            .any(|c| &c.name == name && c.protocol == proto && c.port == port),
                    }
            })
    }

    /// Whether `pod`'s policies let traffic with `peer` through in `dir`
    /// (`dest` is the pod receiving the traffic, whose ports named ports
    /// resolve on).
    fn direction_allows(
        &self,
        pod: &ModelPod,
        dir: Dir,
        peer: &ModelPod,
        dest: &ModelPod,
        port: u16,
        proto: Proto,
    ) -> bool {
        let mut isolated = false;
        for p in &self.policies {
            if p.namespace != pod.namespace
                || !p.target.matches(&pod.labels)
                || !p.effective_types().contains(&dir)
            {
                continue;
            }
            isolated = true;
            let rules = match dir {
                Dir::Ingress => p.ingress.as_deref(),
                Dir::Egress => p.egress.as_deref(),
            }
            .unwrap_or_default();
            for r in rules {
                let peer_ok =
                    r.peers.is_empty() || r.peers.iter().any(|x| self.peer_matches(p, x, peer));
                if peer_ok && Self::port_matches(&r.ports, port, proto, dest) {
                    return true;
                }
            }
        }
        !isolated
    }

    /// The verdict for a new connection from pod `src` to pod `dst` on
    /// `port`/`proto` (the same whether sent to the pod's address or to its
    /// Service: policies judge the endpoints after translation).
    pub fn allowed(&self, src: usize, dst: usize, port: u16, proto: Proto) -> bool {
        if src == dst {
            return true;
        }
        let (s, d) = (&self.pods[src], &self.pods[dst]);
        self.direction_allows(s, Dir::Egress, d, d, port, proto)
            && self.direction_allows(d, Dir::Ingress, s, d, port, proto)
    }

    pub fn table(&self, port: u16, proto: Proto) -> Table {
        let n = self.pods.len();
        Table {
            names: self.pods.iter().map(ModelPod::id).collect(),
            cells: (0..n)
                .map(|s| (0..n).map(|d| self.allowed(s, d, port, proto)).collect())
                .collect(),
        }
    }
}

/// A reachability truth table: `cells[from][to]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub names: Vec<String>,
    pub cells: Vec<Vec<bool>>,
}

impl Table {
    pub fn filled(names: &[String], v: bool) -> Self {
        Self {
            names: names.to_vec(),
            cells: vec![vec![v; names.len()]; names.len()],
        }
    }

    /// Renders a grid as upstream's reachability output does, one
    /// character per cell from `cell(from, to)`.
    pub fn render(names: &[String], cell: impl Fn(usize, usize) -> String) -> String {
        let mut out = String::from("-");
        for n in names {
            let _ = write!(out, "\t{n}");
        }
        out.push('\n');
        for (i, n) in names.iter().enumerate() {
            out.push_str(n);
            for j in 0..names.len() {
                let _ = write!(out, "\t{}", cell(i, j));
            }
            out.push('\n');
        }
        out
    }

    pub fn show(&self) -> String {
        Self::render(&self.names, |i, j| {
            if self.cells[i][j] { "." } else { "X" }.to_owned()
        })
    }
}
