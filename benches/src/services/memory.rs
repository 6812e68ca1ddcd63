//! The memory phase (issue 13, "the agent stays small"): a fresh apiserver
//! holding a cluster's worth of objects, then a cold `ferry-agent` with
//! NetworkPolicy on (`--pod-devices`), measured once it has synced.
//!
//! The objects, spread over `namespaces` namespaces (labelled `team`,
//! `env`):
//! - `services` selectorless ClusterIP Services, each with one
//!   EndpointSlice of `endpoints` ready endpoints written as the
//!   EndpointSlice controller writes them (the pods' addresses, `nodeName`,
//!   `targetRef`, the three conditions, the trigger-time annotation);
//! - `pods` Pods as a Deployment makes them (labels `app`, `tier`,
//!   `version`, `pod-template-hash`; one container with two named ports,
//!   resources, env, the service-account volume), each then given a
//!   Running status with its address; `local_pods` of them on the agent's
//!   node (addresses in its pod CIDR), the rest 250 to a node on 40 other
//!   nodes;
//! - `policies` NetworkPolicies, an equal share per namespace: a default
//!   deny of ingress, an egress policy (DNS to kube-system's pods, HTTPS to
//!   anywhere but 10.0.0.0/8 by ipBlock with `except`, the own namespace),
//!   and per-app policies with pod and namespace selectors (`matchLabels`,
//!   `matchExpressions` In / NotIn / Exists), named ports, `endPort`
//!   ranges, ipBlocks, and egress to the database tier.
//!
//! The agent is synced when its service maps are (its log line, and every
//! frontend in the pinned map) and its policy loop has compiled and written
//! the whole cluster once (`ferry_policy_sync_duration_seconds_count` on its
//! metrics endpoint); the readings come once its CPU has gone quiet. The
//! BPF maps' memory (memlock, per map, from bpftool) is reported apart from
//! the process's.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::cluster::{Agent, Binaries, Lab, MapSizes, bpf_memlock};
use super::{api, maps, model};
use crate::process::{Rss, cpu_time};
use crate::run_bounded;

/// What the phase loads (`services` 0 skips it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemorySettings {
    pub services: usize,
    pub endpoints: usize,
    pub pods: usize,
    pub namespaces: usize,
    pub policies: usize,
    /// Pods on the agent's own node.
    pub local_pods: usize,
    /// Seconds the synced agent is kept running after the readings, for
    /// a look at it (`heaptrack`, `/proc/PID/smaps`, gdb).
    pub hold_secs: u64,
}

impl MemorySettings {
    /// Issue 13's load: 10,000 Services x 10 endpoints, 10,000 Pods in 100
    /// namespaces, 1,000 NetworkPolicies.
    pub const ISSUE: MemorySettings = MemorySettings {
        services: 10_000,
        endpoints: 10,
        pods: 10_000,
        namespaces: 100,
        policies: 1000,
        local_pods: 20,
        hold_secs: 0,
    };

    /// Whether the address plan holds it.
    pub fn check(&self) -> Result<()> {
        model::check_sizes(self.services, 1).map_err(anyhow::Error::msg)?;
        if self.namespaces == 0 || self.namespaces > 1000 {
            bail!("--memory-namespaces must be within 1..=1000");
        }
        if self.pods == 0 || self.pods > REMOTE_PODS_MAX + self.local_pods {
            bail!("--memory-pods must be within 1..={}", REMOTE_PODS_MAX);
        }
        if self.local_pods > LOCAL_PODS_MAX {
            bail!("at most {LOCAL_PODS_MAX} local pods fit the node's pod CIDR plan");
        }
        if self.endpoints == 0 || self.endpoints > 100 {
            bail!("--memory-endpoints must be within 1..=100");
        }
        Ok(())
    }
}

/// Pods per remote node, and how many remote pods the plan (10.245.0.0/16
/// upwards, a /24 per node) holds.
const PODS_PER_NODE: usize = 250;
const REMOTE_PODS_MAX: usize = 250 * 255;
/// Local pods take 10.244.0.200 onwards in the node's 10.244.0.0/24 (the
/// world's real pods have the low addresses).
const LOCAL_POD_BASE: u8 = 200;
const LOCAL_PODS_MAX: usize = 50;
/// Apps per namespace (each a Deployment's worth of pods and one policy).
const APPS: usize = 10;
const TIERS: [&str; 3] = ["frontend", "backend", "db"];
const ENVS: [&str; 3] = ["prod", "staging", "dev"];
const TEAMS: usize = 10;

/// What the phase measured.
#[derive(Debug, Clone, Default)]
pub struct MemoryRun {
    pub settings: Option<MemorySettings>,
    /// Every object created (and every Pod's status written).
    pub load: Option<Duration>,
    /// Agent start to its service maps in sync.
    pub services_synced: Option<Duration>,
    /// Agent start to its first policy compilation written.
    pub policy_synced: Option<Duration>,
    /// That compilation (`ferry_policy_sync_duration_seconds`), seconds.
    pub policy_compile_secs: Option<f64>,
    /// `ferry_policy_rule_entries` and `ferry_policy_failed_closed`.
    pub policy_rules: Option<u64>,
    pub policy_failed_closed: Option<u64>,
    pub frontends: usize,
    /// Right after both syncs, and once the agent's CPU went quiet.
    pub rss_synced: Option<Rss>,
    pub rss: Option<Rss>,
    /// RssAnon and RssFile of `/proc/PID/status` (KiB) with `rss`.
    pub rss_anon_kib: Option<u64>,
    pub rss_file_kib: Option<u64>,
    /// The agent's resident memory by mapping kind (`/proc/PID/smaps`):
    /// name, KiB; largest first.
    pub smaps: Vec<(String, u64)>,
    /// Per pinned map: name, bytes locked; largest first.
    pub memlock: Vec<(String, u64)>,
    pub agent_cpu: Option<Duration>,
    pub errors: Vec<String>,
}

/// ferry-cni's host-side veth prefix (what `ferry up` gives its agents).
const POD_DEVICES: &str = "fer";
/// The agent's metrics endpoint (its default), in the node's namespace.
const METRICS: &str = "127.0.0.1:10249";

pub fn namespace_name(i: usize) -> String {
    format!("mem-{i:03}")
}

/// Pod `k`: its namespace index, app index and address.
fn pod_place(k: usize, s: &MemorySettings) -> (usize, usize, Ipv4Addr, String) {
    let ns = k % s.namespaces;
    let app = (k / s.namespaces) % APPS;
    if k < s.local_pods {
        let ip = Ipv4Addr::new(10, 244, 0, LOCAL_POD_BASE + k as u8);
        return (ns, app, ip, String::new());
    }
    let r = k - s.local_pods;
    let node = r / PODS_PER_NODE;
    let host = u8::try_from(r % PODS_PER_NODE + 1).unwrap_or(1);
    let third = u8::try_from(node).unwrap_or(u8::MAX);
    (
        ns,
        app,
        Ipv4Addr::new(10, 245, third, host),
        format!("mem-node-{:02}", node + 1),
    )
}

fn app_name(app: usize) -> String {
    format!("app-{app}")
}

/// A ReplicaSet's pod-template-hash for an app of a namespace.
fn template_hash(ns: usize, app: usize) -> String {
    format!(
        "{:010x}",
        (ns * 7919 + app * 104_729 + 12_345) % 0xff_ffff_ffff
    )
}

fn pod_name(k: usize, s: &MemorySettings) -> String {
    let (ns, app, _, _) = pod_place(k, s);
    format!("{}-{}-{k:05}", app_name(app), template_hash(ns, app))
}

fn uid(kind: u32, i: usize) -> String {
    format!("{kind:08x}-0000-4000-8000-{i:012x}")
}

fn namespace_object(i: usize) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": namespace_name(i), "labels": {
            "team": format!("t{}", i % TEAMS),
            "env": ENVS[i % ENVS.len()],
        }},
    })
}

/// Pod `k` as a Deployment's ReplicaSet creates it (status comes after).
fn pod_object(k: usize, s: &MemorySettings, node_name: &str) -> Value {
    let (ns, app, _, node) = pod_place(k, s);
    let node = if node.is_empty() {
        node_name.to_string()
    } else {
        node
    };
    let name = app_name(app);
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": pod_name(k, s), "namespace": namespace_name(ns),
            "labels": {
                "app": name, "tier": TIERS[app % TIERS.len()],
                "version": format!("v{}", k % 3),
                "pod-template-hash": template_hash(ns, app),
            },
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2025-01-01T00:00:00Z"},
        },
        "spec": {
            "nodeName": node,
            "containers": [{
                "name": name,
                "image": format!("registry.example.com/team/{name}:1.4.2"),
                "ports": [
                    {"name": "http", "containerPort": 8080, "protocol": "TCP"},
                    {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
                ],
                "env": [
                    {"name": "LOG_LEVEL", "value": "info"},
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                ],
                "resources": {
                    "requests": {"cpu": "100m", "memory": "128Mi"},
                    "limits": {"memory": "256Mi"},
                },
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10},
                "volumeMounts": [{
                    "name": "kube-api-access", "readOnly": true,
                    "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                }],
            }],
            "volumes": [{"name": "kube-api-access", "projected": {"sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            ]}}],
            "restartPolicy": "Always", "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default", "terminationGracePeriodSeconds": 30,
        },
    })
}

/// A Running pod's status with its address.
fn pod_status(k: usize, s: &MemorySettings, node_ip: Ipv4Addr) -> Value {
    let (_, app, ip, _) = pod_place(k, s);
    let ip = ip.to_string();
    let t = "2025-01-01T00:00:00Z";
    let cond = |ty: &str| json!({"type": ty, "status": "True", "lastTransitionTime": t});
    json!({"status": {
        "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
        "hostIP": node_ip.to_string(), "startTime": t, "qosClass": "Burstable",
        "conditions": [cond("PodReadyToStartContainers"), cond("Initialized"),
                       cond("Ready"), cond("ContainersReady"), cond("PodScheduled")],
        "containerStatuses": [{
            "name": app_name(app), "ready": true, "started": true, "restartCount": 0,
            "image": format!("registry.example.com/team/{}:1.4.2", app_name(app)),
            "imageID": "registry.example.com/team/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "containerID": format!("containerd://{:064x}", k),
            "state": {"running": {"startedAt": t}},
        }],
    }})
}

/// Service `i`: `svc-<i>` in namespace `i % namespaces`, the harness's
/// ClusterIP, selectorless (its slice is the bench's).
fn service_object(i: usize, s: &MemorySettings) -> Value {
    let svc = model::fake(i, 1);
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {
            "name": svc.name, "namespace": namespace_name(i % s.namespaces),
            "labels": {"app": svc.name},
            "annotations": {"meta.helm.sh/release-name": "platform"},
        },
        "spec": {
            "type": "ClusterIP", "clusterIP": svc.ip.to_string(),
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
            "sessionAffinity": "None", "internalTrafficPolicy": "Cluster",
        },
    })
}

/// Service `i`'s slice: `endpoints` pods, as the controller writes them.
fn slice_object(i: usize, s: &MemorySettings, node_name: &str) -> Value {
    let svc = model::fake(i, 1);
    let endpoints: Vec<Value> = (0..s.endpoints)
        .map(|j| {
            let k = (i * s.endpoints + j) % s.pods;
            let (ns, _, ip, node) = pod_place(k, s);
            let node = if node.is_empty() {
                node_name.to_string()
            } else {
                node
            };
            json!({
                "addresses": [ip.to_string()],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": node,
                "targetRef": {"kind": "Pod", "namespace": namespace_name(ns),
                              "name": pod_name(k, s), "uid": uid(2, k)},
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{}-{:05x}", svc.name, i % 0xfffff),
            "namespace": namespace_name(i % s.namespaces),
            "labels": {
                "kubernetes.io/service-name": svc.name,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
            "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "2025-01-01T00:00:00Z"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
    })
}

/// Policy `p` of namespace `ns` (the namespace's `p`-th).
fn policy_object(ns: usize, p: usize) -> Value {
    let namespace = namespace_name(ns);
    let meta = |name: String| json!({"name": name, "namespace": namespace});
    match p {
        0 => json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": meta("default-deny-ingress".into()),
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
        }),
        1 => json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": meta("egress-baseline".into()),
            "spec": {
                "podSelector": {}, "policyTypes": ["Egress"],
                "egress": [
                    {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                             "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
                     "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
                    {"to": [{"ipBlock": {"cidr": "0.0.0.0/0",
                                         "except": ["10.0.0.0/8", "169.254.169.254/32"]}}],
                     "ports": [{"protocol": "TCP", "port": 443}]},
                    {"to": [{"podSelector": {}}]},
                ],
            },
        }),
        _ => {
            let app = (p - 2) % APPS;
            let peer_apps = [app_name((app + 1) % APPS), app_name((app + 2) % APPS)];
            let mut ingress = vec![json!({
                "from": [
                    {"podSelector": {"matchLabels": {"tier": "frontend"}}},
                    {"namespaceSelector": {"matchLabels": {"team": format!("t{}", ns % TEAMS)}},
                     "podSelector": {"matchExpressions": [
                        {"key": "app", "operator": "In", "values": peer_apps},
                        {"key": "version", "operator": "NotIn", "values": ["v2"]}]}},
                    {"namespaceSelector": {"matchExpressions": [
                        {"key": "env", "operator": "In", "values": [ENVS[ns % ENVS.len()]]}]},
                     "podSelector": {"matchExpressions": [{"key": "monitoring", "operator": "Exists"}]}},
                ],
                "ports": [
                    {"protocol": "TCP", "port": "http"},
                    {"protocol": "TCP", "port": 8443, "endPort": 8450},
                ],
            })];
            if p.is_multiple_of(3) {
                ingress.push(json!({
                    "from": [{"ipBlock": {"cidr": format!("172.{}.0.0/16", 16 + ns % 16),
                                          "except": [format!("172.{}.1.0/24", 16 + ns % 16)]}}],
                    "ports": [{"protocol": "TCP", "port": "metrics"}],
                }));
            }
            let mut spec = json!({
                "podSelector": {"matchLabels": {"app": app_name(app)}},
                "ingress": ingress,
            });
            if p.is_multiple_of(2) {
                spec["policyTypes"] = json!(["Ingress", "Egress"]);
                spec["egress"] = json!([
                    {"to": [{"podSelector": {"matchLabels": {"tier": "db"}}}],
                     "ports": [{"protocol": "TCP", "port": 5432}]},
                    {"to": [{"ipBlock": {"cidr": format!("10.{}.0.0/16", 100 + ns % 100)}}],
                     "ports": [{"protocol": "UDP", "port": 8125}, {"protocol": "SCTP", "port": 3868}]},
                ]);
            }
            json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": meta(format!("{}-allow", app_name(app))),
                "spec": spec,
            })
        }
    }
}

/// The `i`-th policy over all namespaces (an equal share each).
fn policy_at(i: usize, s: &MemorySettings) -> Value {
    let per = s.policies.div_ceil(s.namespaces).max(1);
    let mut v = policy_object(i / per, i % per);
    // More than 2 + APPS policies in a namespace: numbered copies.
    if i % per >= 2 + APPS
        && let Some(name) = v.pointer_mut("/metadata/name")
    {
        *name = json!(format!("policy-{}", i % per));
    }
    v
}

/// Creates `n` objects made by `make`, `concurrency` at a time.
async fn create_n<K>(
    api: impl Fn(&Value) -> Api<K>,
    n: usize,
    concurrency: usize,
    make: impl Fn(usize) -> Value,
) -> Result<()>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned,
    K: Send + Sync + 'static,
{
    run_bounded(n, concurrency, |i| {
        let v = make(i);
        let api = api(&v);
        async move {
            let obj: K = serde_json::from_value(v)?;
            api.create(&PostParams::default(), &obj).await?;
            Ok(())
        }
    })
    .await?;
    Ok(())
}

fn ns_of(v: &Value) -> String {
    v.pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// Loads every object into the apiserver the lab runs.
async fn load(
    client: &kube::Client,
    s: &MemorySettings,
    node: &ferry_testbed::Node,
    concurrency: usize,
    say: fn(&str),
) -> Result<Duration> {
    let t0 = Instant::now();
    let c = client.clone();
    create_n::<Namespace>(
        move |_| Api::all(c.clone()),
        s.namespaces,
        8,
        namespace_object,
    )
    .await
    .context("creating Namespaces")?;
    let c = client.clone();
    create_n::<Service>(
        move |v| Api::namespaced(c.clone(), &ns_of(v)),
        s.services,
        concurrency,
        |i| service_object(i, s),
    )
    .await
    .context("creating Services")?;
    let c = client.clone();
    let node_name = node.name.clone();
    create_n::<EndpointSlice>(
        move |v| Api::namespaced(c.clone(), &ns_of(v)),
        s.services,
        concurrency,
        |i| slice_object(i, s, &node_name),
    )
    .await
    .context("creating EndpointSlices")?;
    say(&format!(
        "memory: {} Services + slices in {:.1} s",
        s.services,
        t0.elapsed().as_secs_f64()
    ));
    let node_ip = node.ipv4;
    let (name, s2) = (node.name.clone(), *s);
    run_bounded(s.pods, concurrency, |k| {
        let v = pod_object(k, &s2, &name);
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns_of(&v));
        let status = pod_status(k, &s2, node_ip);
        async move {
            let pod: Pod = serde_json::from_value(v)?;
            let pod = api.create(&PostParams::default(), &pod).await?;
            let name = pod.metadata.name.unwrap_or_default();
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await?;
            Ok(())
        }
    })
    .await
    .context("creating Pods")?;
    say(&format!(
        "memory: {} Pods (create + status) by {:.1} s",
        s.pods,
        t0.elapsed().as_secs_f64()
    ));
    let c = client.clone();
    create_n::<NetworkPolicy>(
        move |v| Api::namespaced(c.clone(), &ns_of(v)),
        s.policies,
        concurrency,
        |i| policy_at(i, s),
    )
    .await
    .context("creating NetworkPolicies")?;
    Ok(t0.elapsed())
}

/// The agent's `/metrics` text, fetched inside the node's namespace.
fn scrape(lab: &Lab) -> Result<String> {
    lab.node()
        .netns
        .in_netns(|| -> Result<String> {
            let addr: SocketAddr = METRICS.parse().context("the metrics address")?;
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                .context("connecting to the agent's metrics")?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
            let mut text = String::new();
            s.read_to_string(&mut text)
                .context("reading the agent's metrics")?;
            Ok(text)
        })
        .context("entering the node namespace")?
}

/// A sample's value from Prometheus text (`name` with no labels).
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let v = rest.strip_prefix(' ')?;
        v.split_whitespace().next()?.parse().ok()
    })
}

/// RssAnon and RssFile of a process, KiB.
fn rss_parts(pid: u32) -> (Option<u64>, Option<u64>) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().strip_suffix("kB"))
            .and_then(|n| n.trim().parse().ok())
    };
    (field("RssAnon:"), field("RssFile:"))
}

/// Resident KiB of a process by kind of mapping, from `/proc/PID/smaps`:
/// the brk heap, anonymous mappings by size class (malloc arenas are 64
/// MiB reservations; thread stacks and big allocations are smaller), BPF
/// maps and other anon inodes, files by name; largest first.
pub fn smaps_summary(pid: u32) -> Vec<(String, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut sums: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    let mut current = String::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let Some(first) = parts.next() else {
            continue;
        };
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header: range, perms, offset, dev, inode, [path].
            let (lo, hi) = first.split_once('-').unwrap_or(("0", "0"));
            let size = u64::from_str_radix(hi, 16)
                .unwrap_or(0)
                .saturating_sub(u64::from_str_radix(lo, 16).unwrap_or(0));
            let path: Vec<&str> = parts.skip(4).collect();
            current = match path.first() {
                None => {
                    if size >= 32 << 20 {
                        "anon, 32 MiB and over (malloc arenas)".into()
                    } else {
                        "anon, under 32 MiB (stacks, large allocations)".into()
                    }
                }
                Some(p) if p.starts_with("anon_inode:") => (*p).to_string(),
                Some(p) if p.starts_with('[') => (*p).to_string(),
                Some(p) => std::path::Path::new(p)
                    .file_name()
                    .map_or_else(|| (*p).to_string(), |f| f.to_string_lossy().into_owned()),
            };
        } else if first == "Rss:"
            && let Some(kib) = parts.next().and_then(|n| n.parse::<u64>().ok())
        {
            *sums.entry(current.clone()).or_default() += kib;
        }
    }
    let mut out: Vec<(String, u64)> = sums.into_iter().filter(|(_, k)| *k > 0).collect();
    out.sort_by_key(|e| std::cmp::Reverse(e.1));
    out
}

/// Waits until the agent's CPU stays under 3 % for two half-second windows.
fn quiet(pid: u32, within: Duration) -> Result<()> {
    let started = Instant::now();
    let window = Duration::from_millis(500);
    let mut calm = 0;
    let mut last = cpu_time(Some(pid))?;
    while calm < 2 {
        if started.elapsed() > within {
            bail!("the agent was still busy after {within:?}");
        }
        std::thread::sleep(window);
        let now = cpu_time(Some(pid))?;
        calm = if now.saturating_sub(last) < window * 3 / 100 {
            calm + 1
        } else {
            0
        };
        last = now;
    }
    Ok(())
}

/// Runs the phase: a fresh apiserver, the load, a cold agent.
pub async fn run(
    lab: &mut Lab,
    bins: &Binaries,
    settings: &super::Settings,
    stop: &AtomicBool,
    say: fn(&str),
    out: &mut MemoryRun,
) -> Result<()> {
    let s = &settings.memory;
    let (concurrency, sync_timeout) = (settings.concurrency, settings.sync_timeout);
    s.check()?;
    out.settings = Some(*s);
    say(&format!(
        "memory: a fresh apiserver with {} Services x {} endpoints, {} Pods in {} namespaces, {} NetworkPolicies",
        s.services, s.endpoints, s.pods, s.namespaces, s.policies
    ));
    lab.start_apiserver(bins)?;
    let client = api::client(&lab.kubeconfig).await?;
    api::wait_ready(&client, Duration::from_secs(30))
        .await
        .with_context(|| lab.apiserver_output())?;
    api::setup(&client, lab.node()).await?;
    let took = load(&client, s, lab.node(), concurrency, say).await?;
    out.load = Some(took);
    say(&format!(
        "memory: objects created in {:.1} s",
        took.as_secs_f64()
    ));
    if let Some(pid) = lab.apiserver_pid() {
        crate::dns::api::settle(pid, Duration::from_secs(300), stop)
            .context("waiting for the apiserver's controllers")?;
    }
    let lab: &Lab = lab;
    say("memory: ferry-agent cold start (NetworkPolicy on)");
    let extra = ["--pod-devices".to_string(), POD_DEVICES.to_string()];
    let mut agent = Agent::spawn(
        &lab.world,
        lab.node(),
        &lab.kubeconfig,
        bins,
        "mem",
        MapSizes::for_load(s.services, s.endpoints),
        &extra,
    )?;
    out.services_synced = Some(agent.wait_synced(sync_timeout)?);
    let deadline = Instant::now() + sync_timeout;
    let text = loop {
        super::stopped(stop)?;
        agent.check_running()?;
        let text = scrape(lab).unwrap_or_default();
        if metric(&text, "ferry_policy_sync_duration_seconds_count").unwrap_or(0.0) >= 1.0 {
            out.policy_synced = Some(agent.spawned().elapsed());
            break text;
        }
        if Instant::now() > deadline {
            bail!(
                "the agent compiled no policy within {sync_timeout:?}; its log:\n{}",
                agent.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    out.rss_synced = Rss::of(agent.pid()).ok();
    let maps = maps::Pinned::open(&agent.hooks.bpffs)?;
    let (internal, _) = maps.frontends()?;
    out.frontends = internal;
    if internal < s.services {
        bail!(
            "the agent programmed {internal} of {} frontends",
            s.services
        );
    }
    let count = metric(&text, "ferry_policy_sync_duration_seconds_count").unwrap_or(1.0);
    out.policy_compile_secs =
        metric(&text, "ferry_policy_sync_duration_seconds_sum").map(|sum| sum / count.max(1.0));
    quiet(agent.pid(), Duration::from_secs(120))?;
    agent.check_running()?;
    out.rss = Rss::of(agent.pid()).ok();
    (out.rss_anon_kib, out.rss_file_kib) = rss_parts(agent.pid());
    out.smaps = smaps_summary(agent.pid());
    say(&format!(
        "memory: agent RSS by mapping (KiB): {}",
        out.smaps
            .iter()
            .take(8)
            .map(|(n, k)| format!("{n} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    out.agent_cpu = cpu_time(Some(agent.pid())).ok();
    let text = scrape(lab)?;
    out.policy_rules = metric(&text, "ferry_policy_rule_entries").map(|v| v as u64);
    out.policy_failed_closed = metric(&text, "ferry_policy_failed_closed").map(|v| v as u64);
    if metric(&text, "ferry_policy_sync_duration_seconds_count").unwrap_or(0.0) > count {
        say("memory: the policy loop compiled again after its first pass");
    }
    out.memlock = bpf_memlock(&agent.hooks.bpffs, stop)?;
    agent.check_running()?;
    if s.hold_secs > 0 {
        say(&format!(
            "memory: holding the agent (pid {}) for {} s",
            agent.pid(),
            s.hold_secs
        ));
        let until = Instant::now() + Duration::from_secs(s.hold_secs);
        while Instant::now() < until {
            super::stopped(stop)?;
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    say(&format!(
        "memory: agent RSS {:.1} MiB (peak {:.1} MiB), BPF maps {:.1} MiB",
        out.rss.map_or(0.0, Rss::mib),
        out.rss.map_or(0.0, |r| r.peak_kib as f64 / 1024.0),
        out.memlock.iter().map(|(_, b)| *b).sum::<u64>() as f64 / 1048576.0
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const S: MemorySettings = MemorySettings::ISSUE;

    #[test]
    fn objects_decode_and_addresses_are_distinct() {
        S.check().expect("the issue's load fits");
        let mut ips = BTreeSet::new();
        for k in 0..S.pods {
            let (_, _, ip, node) = pod_place(k, &S);
            assert!(ips.insert(ip), "pod {k} reuses {ip}");
            assert_eq!(node.is_empty(), k < S.local_pods);
        }
        let pod: Pod = serde_json::from_value(pod_object(25, &S, "n")).expect("pod");
        assert_eq!(pod.metadata.namespace.as_deref(), Some("mem-025"));
        let status: Pod =
            serde_json::from_value(pod_status(25, &S, Ipv4Addr::LOCALHOST)).expect("status");
        assert_eq!(
            status.status.and_then(|s| s.pod_ip).as_deref(),
            Some("10.245.0.6")
        );
        let _: Service = serde_json::from_value(service_object(7, &S)).expect("service");
        let slice: EndpointSlice = serde_json::from_value(slice_object(7, &S, "n")).expect("slice");
        assert_eq!(slice.endpoints.len(), S.endpoints);
        let _: Namespace = serde_json::from_value(namespace_object(3)).expect("namespace");
    }

    #[test]
    fn policies_are_distinct_per_namespace_and_decode() {
        let mut names = BTreeSet::new();
        for i in 0..S.policies {
            let v = policy_at(i, &S);
            let np: NetworkPolicy = serde_json::from_value(v).expect("policy");
            let key = (np.metadata.namespace.clone(), np.metadata.name.clone());
            assert!(names.insert(key), "policy {i} repeats a name");
        }
        assert_eq!(names.len(), 1000);
    }

    #[test]
    fn metric_reads_unlabelled_samples() {
        let text = "# HELP x\nferry_policy_rule_entries 42\nferry_policy_sync_duration_seconds_count 3\nferry_policy_sync_duration_seconds_sum 0.5\n";
        assert_eq!(metric(text, "ferry_policy_rule_entries"), Some(42.0));
        assert_eq!(
            metric(text, "ferry_policy_sync_duration_seconds_count"),
            Some(3.0)
        );
        assert_eq!(metric(text, "ferry_policy"), None);
    }
}
