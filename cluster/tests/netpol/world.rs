//! The upstream netpol world in a `ferry up` cluster: namespaces x, y, z
//! (labelled `ns: <name>`), pods a, b, c in each (labelled `pod: <name>`)
//! serving TCP (HTTP) and UDP on 80 and 81 with upstream's named container
//! ports, a Service per pod, the pods spread over the nodes; and what the
//! prober needs of each pod: its address, its Service's ClusterIP, its
//! network namespace file and its container's cgroup, found in ferry-node's
//! state (`<node state>/runtime/netns/ferry-<uid>`, the node cgroup's
//! `pod<uid>/<container>`).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::model::{ContainerPort, Labels, Model, ModelPod, Proto, labels};
use crate::common::TestCluster;

pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const PODS: [&str; 3] = ["a", "b", "c"];
pub const PORTS: [u16; 2] = [80, 81];
pub const PROTOCOLS: [Proto; 2] = [Proto::Tcp, Proto::Udp];
/// The container every probe joins the cgroup of.
pub const PROBE_CONTAINER: &str = "cont-80";

/// Upstream's port names: `serve-80-tcp`, `serve-81-udp`, ...
pub fn port_name(port: u16, proto: Proto) -> String {
    format!("serve-{port}-{}", proto.api().to_ascii_lowercase())
}

/// The container ports every pod of the world has.
pub fn container_ports() -> Vec<ContainerPort> {
    let mut out = Vec::new();
    for port in PORTS {
        for proto in PROTOCOLS {
            out.push(ContainerPort {
                name: port_name(port, proto),
                port,
                protocol: proto,
            });
        }
    }
    out
}

/// The labels a namespace starts with (`kubernetes.io/metadata.name` is
/// the apiserver's, immutable).
pub fn base_ns_labels(ns: &str) -> Labels {
    labels(&[("ns", ns), ("kubernetes.io/metadata.name", ns)])
}

pub fn base_pod_labels(pod: &str) -> Labels {
    labels(&[("pod", pod)])
}

/// The model of the world with no policies, pods at `ips` (by `ns/pod`).
pub fn base_model(ips: &BTreeMap<String, Ipv4Addr>) -> Model {
    let mut m = Model::default();
    for ns in NAMESPACES {
        m.namespaces.insert(ns.to_owned(), base_ns_labels(ns));
        for pod in PODS {
            let id = format!("{ns}/{pod}");
            m.pods.push(ModelPod {
                namespace: ns.to_owned(),
                name: pod.to_owned(),
                labels: base_pod_labels(pod),
                ip: ips.get(&id).copied().unwrap_or(Ipv4Addr::UNSPECIFIED),
                ports: container_ports(),
            });
        }
    }
    m
}

/// One pod of the world, as the prober reaches it.
#[derive(Debug, Clone)]
pub struct WorldPod {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub ip: Ipv4Addr,
    pub service_ip: Ipv4Addr,
    /// The pod's network namespace (an nsfs bind mount).
    pub netns: PathBuf,
    /// The cgroup of its [`PROBE_CONTAINER`], under the node's agent
    /// cgroup (so the agent's socket-level translation applies).
    pub cgroup: PathBuf,
}

impl WorldPod {
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

fn pod_manifest(ns: &str, pod: &str, node: &str) -> Value {
    let containers: Vec<Value> = PORTS
        .iter()
        .map(|&port| {
            json!({
                "name": format!("cont-{port}"),
                "image": "registry.k8s.io/e2e-test-images/agnhost:2.53",
                // HTTP on TCP and the hostname over UDP, both on `port`.
                "args": ["serve-hostname", "--http", "--udp", "--port", port.to_string()],
                "ports": PROTOCOLS.iter().map(|&proto| json!({
                    "name": port_name(port, proto),
                    "containerPort": port,
                    "protocol": proto.api(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod, "namespace": ns, "labels": base_pod_labels(pod)},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 1,
            "containers": containers,
        },
    })
}

fn service_manifest(ns: &str, pod: &str) -> Value {
    let mut ports = Vec::new();
    for port in PORTS {
        for proto in PROTOCOLS {
            ports.push(json!({
                "name": format!("service-port-{port}-{}", proto.api().to_ascii_lowercase()),
                "port": port,
                "targetPort": port,
                "protocol": proto.api(),
            }));
        }
    }
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("s-{ns}-{pod}"), "namespace": ns},
        "spec": {"selector": {"pod": pod}, "ports": ports},
    })
}

/// `kubectl apply -f` of `items` as one `kind: List`.
pub fn apply_list(c: &TestCluster, items: Vec<Value>, file: &str) {
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
    let path = c.data_dir.join(file);
    std::fs::write(&path, list.to_string()).expect("write manifest");
    c.k(&["apply", "-f", &path.to_string_lossy()]);
}

/// Creates the namespaces, pods and Services, and waits (bounded) until
/// every pod runs with an address, its sandbox and cgroup in place.
pub fn build(c: &TestCluster) -> Vec<WorldPod> {
    let nodes: Vec<String> = c.cluster.nodes().iter().map(|n| n.name.clone()).collect();
    assert!(!nodes.is_empty(), "a cluster without nodes");
    let mut items = Vec::new();
    for ns in NAMESPACES {
        items.push(json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "labels": {"ns": ns}},
        }));
    }
    let mut k = 0;
    for ns in NAMESPACES {
        for pod in PODS {
            // Spread over the nodes: every pair of namespaces and every
            // pair of pods meets across nodes somewhere.
            items.push(pod_manifest(ns, pod, &nodes[k % nodes.len()]));
            items.push(service_manifest(ns, pod));
            k += 1;
        }
    }
    apply_list(c, items, "netpol-world.json");

    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match find_pods(c) {
            Ok(pods) => return pods,
            Err(why) if Instant::now() > deadline => {
                let pods = c.kubectl(&["get", "pods", "-A", "-o", "wide"]);
                panic!("the netpol world is not up within 120s: {why}\n{pods:?}");
            }
            Err(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    }
}

/// The world's pods once every one runs, is ready and has its sandbox.
fn find_pods(c: &TestCluster) -> Result<Vec<WorldPod>, String> {
    let mut out = Vec::new();
    for ns in NAMESPACES {
        let pods = c.get_json(&["pods", "-n", ns]);
        let services = c.get_json(&["services", "-n", ns]);
        for name in PODS {
            let pod = pods["items"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["metadata"]["name"] == name)
                .ok_or(format!("{ns}/{name}: not listed"))?;
            if pod["status"]["phase"] != "Running" {
                return Err(format!("{ns}/{name}: {}", pod["status"]["phase"]));
            }
            let ready = pod["status"]["containerStatuses"]
                .as_array()
                .is_some_and(|s| s.len() == PORTS.len() && s.iter().all(|c| c["ready"] == true));
            if !ready {
                return Err(format!("{ns}/{name}: containers not ready"));
            }
            let ip: Ipv4Addr = pod["status"]["podIP"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .ok_or(format!("{ns}/{name}: no IPv4 podIP"))?;
            let uid = pod["metadata"]["uid"].as_str().ok_or("no uid")?;
            let node = pod["spec"]["nodeName"]
                .as_str()
                .ok_or("no node")?
                .to_owned();
            let svc_name = format!("s-{ns}-{name}");
            let service_ip: Ipv4Addr = services["items"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|s| s["metadata"]["name"] == svc_name.as_str())
                .and_then(|s| s["spec"]["clusterIP"].as_str())
                .and_then(|s| s.parse().ok())
                .ok_or(format!("{svc_name}: no clusterIP"))?;
            // The node's runtime state: ferry up gives node i's runtime
            // `<world node i state>/runtime`, and the node a cgroup
            // (`NodeInfo::cgroup`) where ferry-node makes
            // `pod<uid>/<container>`.
            let info = c
                .cluster
                .nodes()
                .iter()
                .find(|n| n.name == node)
                .ok_or(format!("{node}: not a node of the cluster"))?;
            let wnode = c
                .cluster
                .world()
                .nodes()
                .iter()
                .find(|n| n.netns.name() == info.netns)
                .ok_or(format!("{node}: no world node"))?;
            let netns = wnode
                .state_dir
                .join("runtime")
                .join("netns")
                .join(format!("ferry-{uid}"));
            if !netns.exists() {
                return Err(format!("{}: no netns file", netns.display()));
            }
            let cgroup = info.cgroup.join(format!("pod{uid}")).join(PROBE_CONTAINER);
            if !cgroup.join("cgroup.procs").exists() {
                return Err(format!("{}: no cgroup", cgroup.display()));
            }
            out.push(WorldPod {
                namespace: ns.to_owned(),
                name: name.to_owned(),
                node,
                ip,
                service_ip,
                netns,
                cgroup,
            });
        }
    }
    Ok(out)
}

/// Sets (`Some`) or removes (`None`) a pod label.
pub fn label_pod(c: &TestCluster, ns: &str, pod: &str, key: &str, value: Option<&str>) {
    let arg = match value {
        Some(v) => format!("{key}={v}"),
        None => format!("{key}-"),
    };
    c.k(&["label", "--overwrite", "-n", ns, "pod", pod, &arg]);
}

pub fn label_ns(c: &TestCluster, ns: &str, key: &str, value: Option<&str>) {
    let arg = match value {
        Some(v) => format!("{key}={v}"),
        None => format!("{key}-"),
    };
    c.k(&["label", "--overwrite", "namespace", ns, &arg]);
}

/// Deletes every NetworkPolicy of the world's namespaces and puts every
/// label back as the world started (three kubectl calls when nothing was
/// relabelled).
pub fn reset(c: &TestCluster) {
    // The cluster is the suite's own: no policy anywhere else.
    c.k(&[
        "delete",
        "networkpolicies",
        "--all",
        "--all-namespaces",
        "--wait=false",
    ]);
    let namespaces = c.get_json(&["namespaces"]);
    for n in namespaces["items"].as_array().into_iter().flatten() {
        let name = n["metadata"]["name"].as_str().unwrap_or_default();
        if NAMESPACES.contains(&name) {
            for key in extra_labels(&n["metadata"]["labels"], &base_ns_labels(name)) {
                label_ns(c, name, &key, None);
            }
        }
    }
    let pods = c.get_json(&["pods", "-A"]);
    for p in pods["items"].as_array().into_iter().flatten() {
        let ns = p["metadata"]["namespace"].as_str().unwrap_or_default();
        let name = p["metadata"]["name"].as_str().unwrap_or_default();
        if NAMESPACES.contains(&ns) {
            for key in extra_labels(&p["metadata"]["labels"], &base_pod_labels(name)) {
                label_pod(c, ns, name, &key, None);
            }
        }
    }
}

fn extra_labels(have: &Value, base: &Labels) -> Vec<String> {
    have.as_object()
        .into_iter()
        .flatten()
        .filter(|(k, v)| base.get(*k).map(String::as_str) != v.as_str())
        .map(|(k, _)| k.clone())
        .collect()
}
