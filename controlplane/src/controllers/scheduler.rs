//! The scheduler: binds pending pods of `default-scheduler` to nodes, with
//! kube-scheduler's default filters and a spreading score.
//!
//! Filters, in kube-scheduler's order (the first a node fails is its
//! reason): NodeUnschedulable, TaintToleration (NoSchedule and NoExecute
//! taints; a node whose Ready condition is not True carries
//! `node.kubernetes.io/not-ready` or `/unreachable` as the node lifecycle
//! controller would taint it), NodeAffinity (nodeSelector and required
//! nodeSelectorTerms, `matchFields metadata.name` included), NodePorts
//! (hostIP/protocol/hostPort clashes) and NodeResourcesFit (requests
//! against `status.allocatable` less the requests of the pods bound there,
//! and the pod count). Among the nodes that fit, the one with the fewest
//! pods of the same controller wins, then the least requested (with
//! kube's non-zero defaults for pods that request nothing), then a random
//! one. Binding goes through [`crate::binding`], as the `pods/binding`
//! subresource does.
//!
//! State is indexed: nodes with what their pods request, bound pods by
//! key, pending pods in a FIFO queue. A pod event costs parsing that pod; a
//! node event, parsing that node. Pods that fit nowhere get
//! `PodScheduled=False, Unschedulable` with kube-scheduler's message and a
//! `FailedScheduling` event, and wait: a change that could make room (a
//! node added or changed, a bound pod gone or finished, the pod itself
//! changed) retries them after their back-off (1 s doubling to 10 s), and
//! every pod is retried at least once a minute.

use super::key_of;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::{Value, json};

use super::{
    Change, Controller, list_all, log_failure, record_keyed_event, warn_event, write_opts,
};
use crate::binding::{self, Binding};
use crate::object;
use crate::quantity;
use crate::registry::Registry;
use crate::resources::{NODES, PODS, Resource};
use crate::store::EventType;

/// The schedulerName this scheduler serves.
pub const SCHEDULER_NAME: &str = "default-scheduler";
/// Taints the node lifecycle controller puts on nodes by their Ready
/// condition.
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";

const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Every unschedulable pod is tried again at least this often.
const PERIODIC_RETRY: Duration = Duration::from_secs(60);
/// What a container that requests nothing counts as when spreading
/// (kube-scheduler's non-zero defaults).
const DEFAULT_MILLI_CPU: i64 = 100;
const DEFAULT_MEMORY: i64 = 200 << 20;

type Key = (String, String);

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn items<'a>(v: &'a Value, ptr: &str) -> impl Iterator<Item = &'a Value> {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// Amounts of resources: cpu in millicores, the rest in units.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Resources {
    cpu: i64,
    memory: i64,
    ephemeral: i64,
    /// Extended resources (`nvidia.com/gpu`, hugepages...).
    scalar: BTreeMap<String, i64>,
}

impl Resources {
    /// A ResourceList; quantities that do not parse count as zero.
    fn from_list(list: Option<&Value>) -> Self {
        let mut r = Self::default();
        for (name, q) in list.and_then(Value::as_object).into_iter().flatten() {
            let q = match q {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            match name.as_str() {
                "cpu" => r.cpu = quantity::milli(&q).unwrap_or(0),
                "memory" => r.memory = quantity::value(&q).unwrap_or(0),
                "ephemeral-storage" => r.ephemeral = quantity::value(&q).unwrap_or(0),
                "pods" => {}
                other => {
                    r.scalar
                        .insert(other.to_string(), quantity::value(&q).unwrap_or(0));
                }
            }
        }
        r
    }

    fn add(&mut self, o: &Self, sign: i64) {
        self.cpu = self.cpu.saturating_add(sign.saturating_mul(o.cpu));
        self.memory = self.memory.saturating_add(sign.saturating_mul(o.memory));
        self.ephemeral = self
            .ephemeral
            .saturating_add(sign.saturating_mul(o.ephemeral));
        for (k, v) in &o.scalar {
            let e = self.scalar.entry(k.clone()).or_default();
            *e = e.saturating_add(sign.saturating_mul(*v));
            if *e == 0 {
                self.scalar.remove(k);
            }
        }
    }

    fn max(&mut self, o: &Self) {
        self.cpu = self.cpu.max(o.cpu);
        self.memory = self.memory.max(o.memory);
        self.ephemeral = self.ephemeral.max(o.ephemeral);
        for (k, v) in &o.scalar {
            let e = self.scalar.entry(k.clone()).or_default();
            *e = (*e).max(*v);
        }
    }

    fn is_zero(&self) -> bool {
        self.cpu == 0 && self.memory == 0 && self.ephemeral == 0 && self.scalar.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Taint {
    key: String,
    value: String,
    effect: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Toleration {
    key: String,
    /// `Exists` (else `Equal`; an unknown operator tolerates nothing).
    operator: String,
    value: String,
    /// Empty: every effect.
    effect: String,
}

impl Toleration {
    fn parse(t: &Value) -> Self {
        Self {
            key: s(t, "/key").into(),
            operator: match s(t, "/operator") {
                "" => "Equal".into(),
                op => op.into(),
            },
            value: s(t, "/value").into(),
            effect: s(t, "/effect").into(),
        }
    }

    /// kube's ToleratesTaint.
    fn tolerates(&self, t: &Taint) -> bool {
        if !self.effect.is_empty() && self.effect != t.effect {
            return false;
        }
        if !self.key.is_empty() && self.key != t.key {
            return false;
        }
        match self.operator.as_str() {
            "Exists" => true,
            "Equal" => self.value == t.value,
            _ => false,
        }
    }
}

/// One node selector requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    operator: String,
    values: Vec<String>,
}

impl Requirement {
    fn parse(r: &Value) -> Self {
        Self {
            key: s(r, "/key").into(),
            operator: s(r, "/operator").into(),
            values: items(r, "/values")
                .filter_map(|v| v.as_str().map(String::from))
                .collect(),
        }
    }

    fn matches(&self, value: Option<&str>) -> bool {
        let int = |v: &str| v.parse::<i64>().ok();
        let bound = || match self.values.as_slice() {
            [one] => int(one),
            _ => None,
        };
        match self.operator.as_str() {
            "In" => value.is_some_and(|v| self.values.iter().any(|x| x == v)),
            "NotIn" => !value.is_some_and(|v| self.values.iter().any(|x| x == v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            "Gt" => matches!((value.and_then(int), bound()), (Some(v), Some(b)) if v > b),
            "Lt" => matches!((value.and_then(int), bound()), (Some(v), Some(b)) if v < b),
            _ => false,
        }
    }
}

/// A nodeSelectorTerm: all its expressions and fields must match.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Term {
    expressions: Vec<Requirement>,
    fields: Vec<Requirement>,
}

impl Term {
    fn matches(&self, name: &str, labels: &HashMap<String, String>) -> bool {
        // An empty term matches no node, as in kube.
        (!self.expressions.is_empty() || !self.fields.is_empty())
            && self
                .expressions
                .iter()
                .all(|r| r.matches(labels.get(&r.key).map(String::as_str)))
            && self
                .fields
                .iter()
                .all(|r| r.key == "metadata.name" && r.matches(Some(name)))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct HostPort {
    ip: String,
    protocol: String,
    port: i64,
}

/// What scheduling needs of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PodInfo {
    uid: String,
    /// The controller owner's UID, for spreading.
    owner: Option<String>,
    requests: Resources,
    /// cpu, memory with kube's defaults for containers without requests.
    nonzero: (i64, i64),
    node_selector: Vec<(String, String)>,
    /// The required node affinity terms (any may match), when set.
    affinity: Option<Vec<Term>>,
    tolerations: Vec<Toleration>,
    ports: Vec<HostPort>,
}

/// A container's requests, limits standing in for requests that are not
/// set (as the API's defaulting does), and its non-zero cpu and memory.
fn container_requests(c: &Value) -> (Resources, (i64, i64)) {
    let requests = c.pointer("/resources/requests").and_then(Value::as_object);
    let limits = c.pointer("/resources/limits").and_then(Value::as_object);
    let mut list = limits.cloned().unwrap_or_default();
    list.extend(requests.cloned().unwrap_or_default());
    let set = |k: &str| list.contains_key(k);
    let (cpu_set, mem_set) = (set("cpu"), set("memory"));
    let r = Resources::from_list(Some(&Value::Object(list.clone())));
    let nonzero = (
        if cpu_set { r.cpu } else { DEFAULT_MILLI_CPU },
        if mem_set { r.memory } else { DEFAULT_MEMORY },
    );
    (r, nonzero)
}

impl PodInfo {
    fn parse(pod: &Value) -> Self {
        let owner = items(pod, "/metadata/ownerReferences")
            .find(|o| o.get("controller").and_then(Value::as_bool) == Some(true))
            .map(|o| s(o, "/uid").to_string());
        // kube's pod requests: containers and sidecars add up; each other
        // init container needs its own amount plus the sidecars started
        // before it; the larger of the two, plus the pod's overhead.
        let (mut sum, mut nonzero) = (Resources::default(), (0i64, 0i64));
        let (mut sidecars, mut sidecar_nz) = (Resources::default(), (0i64, 0i64));
        let (mut init, mut init_nz) = (Resources::default(), (0i64, 0i64));
        for c in items(pod, "/spec/initContainers") {
            let (r, nz) = container_requests(c);
            if s(c, "/restartPolicy") == "Always" {
                sidecars.add(&r, 1);
                sidecar_nz = (sidecar_nz.0 + nz.0, sidecar_nz.1 + nz.1);
            } else {
                let mut need = r;
                need.add(&sidecars, 1);
                init.max(&need);
                init_nz = (
                    init_nz.0.max(nz.0 + sidecar_nz.0),
                    init_nz.1.max(nz.1 + sidecar_nz.1),
                );
            }
        }
        for c in items(pod, "/spec/containers") {
            let (r, nz) = container_requests(c);
            sum.add(&r, 1);
            nonzero = (nonzero.0 + nz.0, nonzero.1 + nz.1);
        }
        sum.add(&sidecars, 1);
        nonzero = (nonzero.0 + sidecar_nz.0, nonzero.1 + sidecar_nz.1);
        sum.max(&init);
        nonzero = (nonzero.0.max(init_nz.0), nonzero.1.max(init_nz.1));
        let overhead = Resources::from_list(pod.pointer("/spec/overhead"));
        sum.add(&overhead, 1);
        nonzero = (nonzero.0 + overhead.cpu, nonzero.1 + overhead.memory);

        let host_network = pod.pointer("/spec/hostNetwork").and_then(Value::as_bool) == Some(true);
        let sidecar_containers =
            items(pod, "/spec/initContainers").filter(|c| s(c, "/restartPolicy") == "Always");
        let ports = items(pod, "/spec/containers")
            .chain(sidecar_containers)
            .flat_map(|c| items(c, "/ports"))
            .filter_map(|p| {
                let host_port = p.get("hostPort").and_then(Value::as_i64).or_else(|| {
                    host_network
                        .then(|| p.get("containerPort").and_then(Value::as_i64))
                        .flatten()
                })?;
                (host_port > 0).then(|| HostPort {
                    ip: match s(p, "/hostIP") {
                        "" => "0.0.0.0".into(),
                        ip => ip.into(),
                    },
                    protocol: match s(p, "/protocol") {
                        "" => "TCP".into(),
                        proto => proto.into(),
                    },
                    port: host_port,
                })
            })
            .collect();
        let affinity = pod
            .pointer("/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution")
            .filter(|v| v.is_object())
            .map(|sel| {
                items(sel, "/nodeSelectorTerms")
                    .map(|t| Term {
                        expressions: items(t, "/matchExpressions")
                            .map(Requirement::parse)
                            .collect(),
                        fields: items(t, "/matchFields").map(Requirement::parse).collect(),
                    })
                    .collect()
            });
        Self {
            uid: object::uid(pod).to_string(),
            owner,
            requests: sum,
            nonzero,
            node_selector: pod
                .pointer("/spec/nodeSelector")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect(),
            affinity,
            tolerations: items(pod, "/spec/tolerations")
                .map(Toleration::parse)
                .collect(),
            ports,
        }
    }

    fn tolerates(&self, t: &Taint) -> bool {
        self.tolerations.iter().any(|tol| tol.tolerates(t))
    }
}

/// What scheduling needs of a node object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct NodeSpec {
    labels: HashMap<String, String>,
    unschedulable: bool,
    /// NoSchedule and NoExecute taints, with the implied not-ready or
    /// unreachable taint when the node is not Ready.
    taints: Vec<Taint>,
    allocatable: Resources,
    max_pods: i64,
}

impl NodeSpec {
    fn parse(node: &Value) -> Self {
        let mut taints: Vec<Taint> = items(node, "/spec/taints")
            .map(|t| Taint {
                key: s(t, "/key").into(),
                value: s(t, "/value").into(),
                effect: s(t, "/effect").into(),
            })
            .filter(|t| matches!(t.effect.as_str(), "NoSchedule" | "NoExecute"))
            .collect();
        let ready = items(node, "/status/conditions")
            .find(|c| s(c, "/type") == "Ready")
            .map(|c| s(c, "/status"))
            .unwrap_or("");
        if ready != "True" {
            let key = if ready == "Unknown" {
                TAINT_UNREACHABLE
            } else {
                TAINT_NOT_READY
            };
            if !taints
                .iter()
                .any(|t| t.key == key && t.effect == "NoSchedule")
            {
                taints.push(Taint {
                    key: key.into(),
                    value: String::new(),
                    effect: "NoSchedule".into(),
                });
            }
        }
        // The API defaults allocatable to capacity.
        let list = node
            .pointer("/status/allocatable")
            .filter(|a| a.as_object().is_some_and(|m| !m.is_empty()))
            .or_else(|| node.pointer("/status/capacity"));
        Self {
            labels: object::labels(node)
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect(),
            unschedulable: node.pointer("/spec/unschedulable").and_then(Value::as_bool)
                == Some(true),
            taints,
            allocatable: Resources::from_list(list),
            max_pods: list
                .and_then(|l| l.get("pods"))
                .and_then(Value::as_str)
                .and_then(quantity::value)
                .unwrap_or(0),
        }
    }
}

/// A node: its spec (None once the object is gone while pods still count
/// against it) and what the pods bound to it hold.
#[derive(Debug, Default)]
struct NodeInfo {
    spec: Option<NodeSpec>,
    requested: Resources,
    nonzero: (i64, i64),
    pods: i64,
    /// (protocol, port) -> host IP -> pods using it.
    ports: HashMap<(String, i64), HashMap<String, u32>>,
    /// Controller UID -> pods of it here.
    owners: HashMap<String, u32>,
}

impl NodeInfo {
    fn apply(&mut self, pod: &PodInfo, sign: i64) {
        self.requested.add(&pod.requests, sign);
        self.nonzero = (
            self.nonzero.0 + sign * pod.nonzero.0,
            self.nonzero.1 + sign * pod.nonzero.1,
        );
        self.pods += sign;
        for p in &pod.ports {
            let ips = self.ports.entry((p.protocol.clone(), p.port)).or_default();
            let n = ips.entry(p.ip.clone()).or_default();
            if sign > 0 {
                *n += 1;
            } else {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    ips.remove(&p.ip);
                    if ips.is_empty() {
                        self.ports.remove(&(p.protocol.clone(), p.port));
                    }
                }
            }
        }
        if let Some(owner) = &pod.owner {
            let n = self.owners.entry(owner.clone()).or_default();
            if sign > 0 {
                *n += 1;
            } else {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.owners.remove(owner);
                }
            }
        }
    }

    fn port_clash(&self, want: &HostPort) -> bool {
        let Some(ips) = self.ports.get(&(want.protocol.clone(), want.port)) else {
            return false;
        };
        want.ip == "0.0.0.0" || ips.contains_key("0.0.0.0") || ips.contains_key(&want.ip)
    }

    fn is_empty(&self) -> bool {
        self.spec.is_none() && self.pods == 0
    }
}

/// Why a node does not fit: kube-scheduler's reasons, and whether
/// preemption could help (it cannot for taints, affinity, cordons).
struct Misfit {
    reasons: Vec<String>,
    resolvable: bool,
}

fn fits(pod: &PodInfo, name: &str, spec: &NodeSpec, node: &NodeInfo) -> Result<(), Misfit> {
    let unresolvable = |r: String| {
        Err(Misfit {
            reasons: vec![r],
            resolvable: false,
        })
    };
    if spec.unschedulable
        && !pod.tolerates(&Taint {
            key: TAINT_UNSCHEDULABLE.into(),
            value: String::new(),
            effect: "NoSchedule".into(),
        })
    {
        return unresolvable("node(s) were unschedulable".into());
    }
    if let Some(t) = spec.taints.iter().find(|t| !pod.tolerates(t)) {
        return unresolvable(format!(
            "node(s) had untolerated taint {{{}: {}}}",
            t.key, t.value
        ));
    }
    let selector_ok = pod
        .node_selector
        .iter()
        .all(|(k, v)| spec.labels.get(k) == Some(v));
    let affinity_ok = pod
        .affinity
        .as_ref()
        .is_none_or(|terms| terms.iter().any(|t| t.matches(name, &spec.labels)));
    if !selector_ok || !affinity_ok {
        return unresolvable("node(s) didn't match Pod's node affinity/selector".into());
    }
    if pod.ports.iter().any(|p| node.port_clash(p)) {
        return Err(Misfit {
            reasons: vec!["node(s) didn't have free ports for the requested pod ports".into()],
            resolvable: true,
        });
    }
    let mut reasons = Vec::new();
    if node.pods + 1 > spec.max_pods {
        reasons.push("Too many pods".to_string());
    }
    let (want, have, used) = (&pod.requests, &spec.allocatable, &node.requested);
    if !want.is_zero() {
        let short = |w: i64, h: i64, u: i64| w > 0 && w > h.saturating_sub(u);
        if short(want.cpu, have.cpu, used.cpu) {
            reasons.push("Insufficient cpu".into());
        }
        if short(want.memory, have.memory, used.memory) {
            reasons.push("Insufficient memory".into());
        }
        if short(want.ephemeral, have.ephemeral, used.ephemeral) {
            reasons.push("Insufficient ephemeral-storage".into());
        }
        for (r, w) in &want.scalar {
            let h = have.scalar.get(r).copied().unwrap_or(0);
            let u = used.scalar.get(r).copied().unwrap_or(0);
            if short(*w, h, u) {
                reasons.push(format!("Insufficient {r}"));
            }
        }
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(Misfit {
            reasons,
            resolvable: true,
        })
    }
}

/// The DaemonSet controller's question of a node (upstream's
/// NodeShouldRunDaemonPod), answered with the scheduler's own filters so
/// the two never disagree: whether a daemon pod should run there (node
/// selector and required affinity match; every `NoSchedule` and `NoExecute`
/// taint tolerated, `unschedulable` and the not-ready taint included), and
/// whether one already there may keep running (affinity, and `NoExecute`
/// taints only).
pub(crate) struct DaemonFit(PodInfo);

impl DaemonFit {
    pub(crate) fn new(pod: &Value) -> Self {
        Self(PodInfo::parse(pod))
    }

    pub(crate) fn check(&self, node: &Value) -> (bool, bool) {
        let name = object::name(node);
        let spec = NodeSpec::parse(node);
        let pod = &self.0;
        let placed = pod
            .node_selector
            .iter()
            .all(|(k, v)| spec.labels.get(k) == Some(v))
            && pod
                .affinity
                .as_ref()
                .is_none_or(|terms| terms.iter().any(|t| t.matches(name, &spec.labels)));
        let unschedulable = spec.unschedulable.then(|| Taint {
            key: TAINT_UNSCHEDULABLE.into(),
            value: String::new(),
            effect: "NoSchedule".into(),
        });
        let taints: Vec<&Taint> = spec.taints.iter().chain(unschedulable.as_ref()).collect();
        let run = placed && taints.iter().all(|t| pod.tolerates(t));
        let keep = placed
            && taints
                .iter()
                .all(|t| t.effect != "NoExecute" || pod.tolerates(t));
        (run, keep)
    }
}

/// kube's LeastAllocated score (0-100) over cpu and memory, counting what
/// the pod adds.
fn least_allocated(pod: &PodInfo, spec: &NodeSpec, node: &NodeInfo) -> i64 {
    let part = |cap: i64, used: i64| {
        if cap <= 0 {
            0
        } else {
            (cap.saturating_sub(used).max(0)).saturating_mul(100) / cap
        }
    };
    (part(spec.allocatable.cpu, node.nonzero.0 + pod.nonzero.0)
        + part(spec.allocatable.memory, node.nonzero.1 + pod.nonzero.1))
        / 2
}

/// kube-scheduler's FitError message, with the preemption post-filter's.
fn fit_error(total: usize, reasons: &BTreeMap<String, usize>, unresolvable: usize) -> String {
    if total == 0 {
        return "no nodes available to schedule pods".into();
    }
    let mut parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    let mut post = Vec::new();
    if unresolvable > 0 {
        post.push(format!(
            "{unresolvable} Preemption is not helpful for scheduling"
        ));
    }
    if total > unresolvable {
        post.push(format!(
            "{} No preemption victims found for incoming pod",
            total - unresolvable
        ));
    }
    post.sort();
    format!(
        "0/{total} nodes are available: {}. preemption: 0/{total} nodes are available: {}.",
        parts.join(", "),
        post.join(", ")
    )
}

/// Whether this scheduler should place the pod.
fn wants_scheduling(pod: &Value) -> bool {
    matches!(s(pod, "/spec/schedulerName"), "" | SCHEDULER_NAME)
        && s(pod, "/spec/nodeName").is_empty()
        && object::deletion_timestamp(pod).is_none()
        && !matches!(s(pod, "/status/phase"), "Succeeded" | "Failed")
        && items(pod, "/spec/schedulingGates").next().is_none()
}

/// A pod that fit nowhere: when it is tried next.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    attempts: u32,
    last: Instant,
    due: Instant,
}

fn backoff(attempts: u32) -> Duration {
    INITIAL_BACKOFF
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(8))
        .min(MAX_BACKOFF)
}

#[derive(Debug, Default)]
pub struct Scheduler {
    nodes: HashMap<String, NodeInfo>,
    /// Pods counted against a node (bound, or bound by us and not yet seen).
    bound: HashMap<Key, (String, Arc<PodInfo>)>,
    /// Pods to place.
    pending: HashMap<Key, Arc<PodInfo>>,
    /// Pending pods to try now, in arrival order.
    active: VecDeque<Key>,
    queued: HashSet<Key>,
    /// Pending pods that fit nowhere, and when each is tried again.
    waiting: HashMap<Key, Waiting>,
    due: BTreeSet<(Instant, Key)>,
    /// A pod left a node: room that may let any waiting pod fit.
    moved: bool,
    /// Nodes whose spec changed since the last reconcile: a waiting pod is
    /// tried again only if one of them now takes it (as kube-scheduler's
    /// queueing hints requeue a pod only for an event that can make it
    /// schedulable), so a node's start-up updates do not pile attempts,
    /// and back-off, onto pods waiting for it to be Ready.
    touched: HashSet<String>,
}

impl Scheduler {
    fn account(&mut self, key: Key, node: String, pod: Arc<PodInfo>) {
        self.unaccount(&key);
        let info = self.nodes.entry(node.clone()).or_default();
        info.apply(&pod, 1);
        self.bound.insert(key, (node, pod));
    }

    /// Stops counting a pod against its node; whether it was counted.
    fn unaccount(&mut self, key: &Key) -> bool {
        let Some((node, pod)) = self.bound.remove(key) else {
            return false;
        };
        if let Some(info) = self.nodes.get_mut(&node) {
            info.apply(&pod, -1);
            if info.is_empty() {
                self.nodes.remove(&node);
            }
        }
        true
    }

    fn enqueue(&mut self, key: Key) {
        if self.queued.insert(key.clone()) {
            self.active.push_back(key);
        }
    }

    fn park(&mut self, key: &Key, attempts: u32, due: Instant) {
        self.unpark(key);
        self.due.insert((due, key.clone()));
        self.waiting.insert(
            key.clone(),
            Waiting {
                attempts,
                last: Instant::now(),
                due,
            },
        );
    }

    fn unpark(&mut self, key: &Key) {
        if let Some(w) = self.waiting.remove(key) {
            self.due.remove(&(w.due, key.clone()));
        }
    }

    fn forget_pending(&mut self, key: &Key) {
        self.pending.remove(key);
        self.unpark(key);
    }

    fn pod_changed(&mut self, key: Key, pod: &Value) {
        let node = s(pod, "/spec/nodeName");
        if !node.is_empty() {
            self.forget_pending(&key);
            if matches!(s(pod, "/status/phase"), "Succeeded" | "Failed") {
                self.moved |= self.unaccount(&key);
            } else if self
                .bound
                .get(&key)
                .is_none_or(|(n, p)| n != node || p.uid != object::uid(pod))
            {
                self.account(key, node.to_string(), Arc::new(PodInfo::parse(pod)));
            }
            return;
        }
        self.moved |= self.unaccount(&key);
        if !wants_scheduling(pod) {
            self.forget_pending(&key);
            return;
        }
        let info = Arc::new(PodInfo::parse(pod));
        let changed = self.pending.get(&key).is_none_or(|old| *old != info);
        self.pending.insert(key.clone(), info);
        // Our own status write on a waiting pod changes nothing it asks for.
        if !self.waiting.contains_key(&key) || changed {
            self.unpark(&key);
            self.enqueue(key);
        }
    }

    fn pod_deleted(&mut self, key: &Key) {
        self.forget_pending(key);
        self.moved |= self.unaccount(key);
    }

    fn node_changed(&mut self, name: &str, node: &Value) {
        let spec = NodeSpec::parse(node);
        let info = self.nodes.entry(name.to_string()).or_default();
        if info.spec.as_ref() != Some(&spec) {
            info.spec = Some(spec);
            self.touched.insert(name.to_string());
        }
    }

    /// Whether waiting pod `key` fits one of `nodes` now.
    fn fits_one_of(&self, key: &Key, nodes: &HashSet<String>) -> bool {
        let Some(pod) = self.pending.get(key) else {
            return false;
        };
        nodes.iter().any(|name| {
            self.nodes.get(name).is_some_and(|node| {
                node.spec
                    .as_ref()
                    .is_some_and(|spec| fits(pod, name, spec, node).is_ok())
            })
        })
    }

    fn node_deleted(&mut self, name: &str) {
        if let Some(info) = self.nodes.get_mut(name) {
            info.spec = None;
            if info.is_empty() {
                self.nodes.remove(name);
            }
        }
    }

    /// Picks a node for `pod`, or says why none fits.
    fn place(&self, pod: &PodInfo) -> Result<String, String> {
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let (mut total, mut unresolvable) = (0usize, 0usize);
        let mut best: Option<((u32, i64, i64), &str)> = None;
        let mut ties = 0u32;
        let mut rng = rand::rng();
        for (name, node) in &self.nodes {
            let Some(spec) = &node.spec else { continue };
            total += 1;
            match fits(pod, name, spec, node) {
                Ok(()) => {
                    let same_owner = pod
                        .owner
                        .as_ref()
                        .and_then(|o| node.owners.get(o))
                        .copied()
                        .unwrap_or(0);
                    let rank = (same_owner, -least_allocated(pod, spec, node), node.pods);
                    match &best {
                        Some((b, _)) if rank > *b => {}
                        Some((b, _)) if rank == *b => {
                            // Reservoir sampling: each tied node equally likely.
                            ties += 1;
                            if rng.random_range(0..ties) == 0 {
                                best = Some((rank, name));
                            }
                        }
                        _ => {
                            best = Some((rank, name));
                            ties = 1;
                        }
                    }
                }
                Err(m) => {
                    for r in m.reasons {
                        *reasons.entry(r).or_default() += 1;
                    }
                    if !m.resolvable {
                        unresolvable += 1;
                    }
                }
            }
        }
        best.map(|(_, n)| n.to_string())
            .ok_or_else(|| fit_error(total, &reasons, unresolvable))
    }

    fn schedule(&mut self, reg: &Registry, key: &Key, pod: Arc<PodInfo>) {
        match self.place(&pod) {
            Ok(node) => self.bind(reg, key, pod, node),
            Err(message) => self.unschedulable(reg, key, &pod, &message),
        }
    }

    fn bind(&mut self, reg: &Registry, key: &Key, pod: Arc<PodInfo>, node: String) {
        let (ns, name) = (key.0.as_str(), key.1.as_str());
        match binding::bind(reg, ns, &Binding::new(name, &node, Some(&pod.uid)), false) {
            Ok(_) => {
                self.forget_pending(key);
                // Counted at once: the next pod must see it before its event.
                self.account(key.clone(), node.clone(), pod.clone());
                tracing::debug!(pod = name, namespace = ns, %node, "scheduled");
                let obj = json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": name, "namespace": ns, "uid": pod.uid}});
                // One event per pod (by UID) and node.
                record_keyed_event(
                    reg,
                    SCHEDULER_NAME,
                    &obj,
                    "Normal",
                    "Scheduled",
                    &format!("Successfully assigned {ns}/{name} to {node}"),
                    &node,
                );
            }
            Err(e) => {
                // Bound or deleted meanwhile (its event will say), or a
                // failed write: either way, try again after a back-off.
                log_failure(self.name(), name, &e);
                let attempts = self.waiting.get(key).map_or(0, |w| w.attempts) + 1;
                self.park(key, attempts, Instant::now() + backoff(attempts));
            }
        }
    }

    fn unschedulable(&mut self, reg: &Registry, key: &Key, pod: &PodInfo, message: &str) {
        let (ns, name) = (key.0.as_str(), key.1.as_str());
        let attempts = self.waiting.get(key).map_or(0, |w| w.attempts) + 1;
        self.park(key, attempts, Instant::now() + PERIODIC_RETRY);
        tracing::debug!(pod = name, namespace = ns, %message, "unschedulable");
        let current = match reg.store.get(&PODS, ns, name) {
            Ok(Some(p)) if object::uid(&p) == pod.uid => p,
            _ => return,
        };
        let mut next = (*current).clone();
        if binding::set_condition(
            &mut next,
            "PodScheduled",
            "False",
            Some("Unschedulable"),
            Some(message),
        ) && let Err(e) = reg.update(&PODS, ns, name, Some("status"), next, &write_opts())
        {
            log_failure(self.name(), name, &e);
        }
        warn_event(reg, SCHEDULER_NAME, &current, "FailedScheduling", message);
    }
}

impl Controller for Scheduler {
    fn name(&self) -> &'static str {
        "scheduler"
    }

    fn watches(&self, res: &Resource) -> bool {
        matches!(res.kind, "Pod" | "Node")
    }

    fn resync(&mut self, reg: &Registry) {
        *self = Self::default();
        for node in list_all(reg, &NODES, None) {
            self.node_changed(object::name(&node), &node);
        }
        for pod in list_all(reg, &PODS, None) {
            let key = key_of(&pod);
            self.pod_changed(key, &pod);
        }
    }

    fn observe(&mut self, _reg: &Registry, ev: &Change) {
        let name = object::name(ev.object_meta()).to_string();
        match (ev.resource.kind, ev.kind) {
            ("Node", EventType::Deleted) => self.node_deleted(&name),
            ("Node", _) => self.node_changed(&name, ev.object()),
            ("Pod", EventType::Deleted) => self.pod_deleted(&(ev.namespace.clone(), name)),
            ("Pod", _) => self.pod_changed((ev.namespace.clone(), name), ev.object()),
            _ => {}
        }
    }

    fn reconcile(&mut self, reg: &Registry) {
        let now = Instant::now();
        let moved = std::mem::take(&mut self.moved);
        let touched = std::mem::take(&mut self.touched);
        if moved || !touched.is_empty() {
            let sooner: Vec<(Key, Instant)> = self
                .waiting
                .iter()
                .filter(|(k, _)| moved || self.fits_one_of(k, &touched))
                .map(|(k, w)| (k.clone(), w, (w.last + backoff(w.attempts)).max(now)))
                .filter(|(_, w, retry)| *retry < w.due)
                .map(|(k, _, retry)| (k, retry))
                .collect();
            for (key, retry) in sooner {
                if let Some(w) = self.waiting.get_mut(&key) {
                    self.due.remove(&(w.due, key.clone()));
                    w.due = retry;
                    self.due.insert((retry, key));
                }
            }
        }
        while let Some((t, _)) = self.due.first()
            && *t <= now
        {
            if let Some((_, key)) = self.due.pop_first() {
                self.waiting.remove(&key);
                self.enqueue(key);
            }
        }
        while let Some(key) = self.active.pop_front() {
            self.queued.remove(&key);
            if let Some(pod) = self.pending.get(&key).cloned() {
                self.schedule(reg, &key, pod);
            }
        }
    }

    fn next_wakeup(&self) -> Option<Instant> {
        self.due.first().map(|(t, _)| *t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::WriteOptions;

    fn node(name: &str, cpu: &str, pods: &str, extra: Value) -> Value {
        let mut n = json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {"allocatable": {"cpu": cpu, "memory": "8Gi", "pods": pods},
                "conditions": [{"type": "Ready", "status": "True"}]}});
        if let (Some(n), Some(e)) = (n.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                n.insert(k.clone(), v.clone());
            }
        }
        n
    }

    fn pod_info(spec: Value) -> PodInfo {
        PodInfo::parse(&json!({"metadata": {"uid": "u"}, "spec": spec}))
    }

    #[test]
    fn requests_sum_and_init_max() {
        let p = pod_info(json!({
        "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "2"}}}],
        "containers": [
            {"name": "a", "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}},
            {"name": "b", "resources": {"limits": {"cpu": "250m", "nvidia.com/gpu": "1"}}},
            {"name": "c"}
        ]}));
        assert_eq!(p.requests.cpu, 2000, "the init container needs more");
        assert_eq!(p.requests.memory, 1 << 30);
        assert_eq!(p.requests.scalar.get("nvidia.com/gpu"), Some(&1));
        assert_eq!(
            p.nonzero,
            (2000, (1 << 30) + 2 * DEFAULT_MEMORY),
            "defaults stand in for what containers leave out"
        );
    }

    #[test]
    fn tolerations_and_affinity() {
        let taint = |k: &str, v: &str, e: &str| Taint {
            key: k.into(),
            value: v.into(),
            effect: e.into(),
        };
        let p = pod_info(json!({"containers": [], "tolerations": [
            {"key": "a", "operator": "Equal", "value": "1", "effect": "NoSchedule"},
            {"key": "b", "operator": "Exists"}]}));
        assert!(p.tolerates(&taint("a", "1", "NoSchedule")));
        assert!(!p.tolerates(&taint("a", "2", "NoSchedule")));
        assert!(!p.tolerates(&taint("a", "1", "NoExecute")));
        assert!(p.tolerates(&taint("b", "x", "NoExecute")));
        let all = pod_info(json!({"tolerations": [{"operator": "Exists"}]}));
        assert!(all.tolerates(&taint("anything", "v", "NoExecute")));

        let labels: HashMap<String, String> = [("zone", "a"), ("gen", "5")]
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        let req = |k: &str, op: &str, vals: &[&str]| Requirement {
            key: k.into(),
            operator: op.into(),
            values: vals.iter().map(|v| v.to_string()).collect(),
        };
        for (r, want) in [
            (req("zone", "In", &["a", "b"]), true),
            (req("zone", "NotIn", &["a"]), false),
            (req("missing", "NotIn", &["a"]), true),
            (req("zone", "Exists", &[]), true),
            (req("zone", "DoesNotExist", &[]), false),
            (req("gen", "Gt", &["4"]), true),
            (req("gen", "Lt", &["5"]), false),
            (req("zone", "Gt", &["1"]), false),
            (req("zone", "Bogus", &[]), false),
        ] {
            assert_eq!(
                r.matches(labels.get(&r.key).map(String::as_str)),
                want,
                "{r:?}"
            );
        }
        let by_name = Term {
            expressions: vec![],
            fields: vec![req("metadata.name", "In", &["n1"])],
        };
        assert!(by_name.matches("n1", &labels));
        assert!(!by_name.matches("n2", &labels));
        let empty = Term {
            expressions: vec![],
            fields: vec![],
        };
        assert!(
            !empty.matches("n1", &labels),
            "an empty term matches nothing"
        );
    }

    #[test]
    fn fit_error_reads_as_kube_scheduler_writes_it() {
        let reasons: BTreeMap<String, usize> = [
            (
                "node(s) didn't match Pod's node affinity/selector".to_string(),
                1,
            ),
            ("node(s) had untolerated taint {k: v}".to_string(), 2),
        ]
        .into();
        assert_eq!(
            fit_error(3, &reasons, 3),
            "0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 2 node(s) had untolerated taint {k: v}. preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."
        );
        let reasons: BTreeMap<String, usize> = [("Insufficient cpu".to_string(), 2)].into();
        assert_eq!(
            fit_error(3, &reasons, 1),
            "0/3 nodes are available: 2 Insufficient cpu. preemption: 0/3 nodes are available: 1 Preemption is not helpful for scheduling, 2 No preemption victims found for incoming pod."
        );
        assert_eq!(
            fit_error(0, &BTreeMap::new(), 0),
            "no nodes available to schedule pods"
        );
    }

    #[test]
    fn host_ports_clash_on_same_ip_or_wildcard() {
        let mut n = NodeInfo::default();
        let hp = |ip: &str, port| HostPort {
            ip: ip.into(),
            protocol: "TCP".into(),
            port,
        };
        let mut pod = pod_info(json!({"containers": []}));
        pod.ports = vec![hp("10.0.0.1", 80)];
        n.apply(&pod, 1);
        assert!(n.port_clash(&hp("10.0.0.1", 80)));
        assert!(n.port_clash(&hp("0.0.0.0", 80)));
        assert!(!n.port_clash(&hp("10.0.0.2", 80)));
        assert!(!n.port_clash(&hp("10.0.0.1", 81)));
        n.apply(&pod, -1);
        assert!(!n.port_clash(&hp("0.0.0.0", 80)));
        assert!(n.ports.is_empty());
    }

    /// A burst of pending pods, one owner, on three nodes: every pod bound,
    /// spread evenly, and the scheduler's own time printed.
    #[test]
    fn a_thousand_pods_spread_over_three_nodes() {
        let reg = Registry::in_memory().expect("registry");
        let opts = WriteOptions::default();
        for n in ["n1", "n2", "n3"] {
            reg.create(&NODES, "", node(n, "64", "1000", json!({})), &opts)
                .expect("node");
        }
        let owner = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "rs-uid", "controller": true}]);
        for i in 0..1000 {
            let p = json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("p{i}"), "ownerReferences": owner},
                "spec": {"containers": [{"name": "c", "image": "nginx",
                    "resources": {"requests": {"cpu": "10m", "memory": "1Mi"}}}]}});
            reg.create(&PODS, "default", p, &opts).expect("pod");
        }
        let mut sched = Scheduler::default();
        sched.resync(&reg);
        let started = std::time::Instant::now();
        sched.reconcile(&reg);
        eprintln!("scheduled 1000 pods in {:?}", started.elapsed());
        let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
        for p in list_all(&reg, &PODS, Some("default")) {
            *per_node
                .entry(s(&p, "/spec/nodeName").to_string())
                .or_default() += 1;
        }
        assert_eq!(per_node.len(), 3, "{per_node:?}");
        assert!(
            per_node.values().all(|n| (333..=334).contains(n)),
            "{per_node:?}"
        );
    }

    #[test]
    fn cpu_exhaustion_then_room() {
        let reg = Registry::in_memory().expect("registry");
        let opts = WriteOptions::default();
        reg.create(&NODES, "", node("n1", "1", "10", json!({})), &opts)
            .expect("node");
        for name in ["a", "b"] {
            let p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                "spec": {"containers": [{"name": "c", "image": "nginx",
                    "resources": {"requests": {"cpu": "600m"}}}]}});
            reg.create(&PODS, "default", p, &opts).expect("pod");
        }
        let mut sched = Scheduler::default();
        sched.resync(&reg);
        sched.reconcile(&reg);
        let get = |n: &str| {
            reg.store
                .get(&PODS, "default", n)
                .expect("get")
                .expect("pod")
        };
        let bound: Vec<_> = ["a", "b"]
            .into_iter()
            .filter(|n| !s(&get(n), "/spec/nodeName").is_empty())
            .collect();
        assert_eq!(bound.len(), 1, "only one fits in one cpu");
        let waiting = if bound[0] == "a" { "b" } else { "a" };
        let cond = items(&get(waiting), "/status/conditions")
            .find(|c| s(c, "/type") == "PodScheduled")
            .cloned()
            .expect("condition");
        assert_eq!(cond["reason"], "Unschedulable");
        assert_eq!(
            cond["message"],
            "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod."
        );
        assert!(sched.next_wakeup().is_some(), "a retry is due");
        // The bound pod goes: the waiting one fits after its back-off.
        reg.delete(
            &PODS,
            "default",
            bound[0],
            &crate::registry::DeleteOptions {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        )
        .expect("delete");
        sched.pod_deleted(&("default".into(), bound[0].into()));
        sched.reconcile(&reg);
        let due = sched.next_wakeup().expect("due");
        assert!(
            due <= Instant::now() + INITIAL_BACKOFF,
            "retried after the back-off, not the periodic retry"
        );
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        sched.reconcile(&reg);
        assert_eq!(s(&get(waiting), "/spec/nodeName"), "n1");
    }

    /// A pod waiting for a node to be Ready is not tried again for each of
    /// the node's start-up updates (which would pile up its back-off), and
    /// is tried once the node takes it.
    #[test]
    fn a_node_that_turns_ready_takes_its_waiting_pod_at_once() {
        let reg = Registry::in_memory().expect("registry");
        let opts = WriteOptions::default();
        let not_ready = |labels: Value| {
            node(
                "n1",
                "4",
                "10",
                json!({"metadata": {"name": "n1", "labels": labels},
                    "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "10"},
                        "conditions": [{"type": "Ready", "status": "False"}]}}),
            )
        };
        reg.create(&NODES, "", not_ready(json!({"a": "1"})), &opts)
            .expect("node");
        let p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "dns"},
            "spec": {"containers": [{"name": "c", "image": "x"}]}});
        reg.create(&PODS, "default", p, &opts).expect("pod");
        let mut sched = Scheduler::default();
        sched.resync(&reg);
        sched.reconcile(&reg);
        let key: Key = ("default".into(), "dns".into());
        assert_eq!(sched.waiting.get(&key).map(|w| w.attempts), Some(1));
        // Start-up updates that leave the node not Ready: no new attempt.
        for i in 2..6 {
            sched.node_changed("n1", &not_ready(json!({"a": i.to_string()})));
            sched.reconcile(&reg);
        }
        let w = sched.waiting.get(&key).copied().expect("waiting");
        assert!(
            w.due > w.last + PERIODIC_RETRY / 2,
            "retried for updates that could not help"
        );
        assert_eq!(w.attempts, 1);
        // Ready: tried after the first back-off, not the periodic retry.
        sched.node_changed("n1", &node("n1", "4", "10", json!({})));
        sched.reconcile(&reg);
        let due = sched.next_wakeup().expect("due");
        assert!(due <= w.last + INITIAL_BACKOFF, "{due:?} vs {:?}", w.last);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        sched.reconcile(&reg);
        let bound = reg
            .store
            .get(&PODS, "default", "dns")
            .expect("get")
            .expect("pod");
        assert_eq!(s(&bound, "/spec/nodeName"), "n1");
    }
}
