//! DaemonSets and StatefulSets on a real `ferry up` cluster: a DaemonSet
//! runs a pod on every node, and a StatefulSet's pods resolve by their
//! stable names under a headless Service, from another pod, through
//! ferry-dns.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::TestCluster;
use ferry_testbed::skip_if_not_root;
use serde_json::Value;

const MANIFEST: &str = r#"apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: agent
spec:
  selector:
    matchLabels:
      app: agent
  template:
    metadata:
      labels:
        app: agent
    spec:
      containers:
      - name: agent
        image: registry.k8s.io/e2e-test-images/agnhost:2.39
        args: [netexec]
---
apiVersion: v1
kind: Service
metadata:
  name: nginx
spec:
  clusterIP: None
  selector:
    app: nginx
  ports:
  - port: 80
    name: web
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: web
spec:
  serviceName: nginx
  replicas: 2
  selector:
    matchLabels:
      app: nginx
  template:
    metadata:
      labels:
        app: nginx
    spec:
      containers:
      - name: nginx
        image: nginx
        ports:
        - containerPort: 80
          name: web
"#;

const CLIENT: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: client
spec:
  containers:
  - name: client
    image: busybox
    command: ["sh", "-c", "for i in $(seq 1 60); do getent hosts web-0.nginx.default.svc.cluster.local && getent hosts web-1.nginx && break; sleep 1; done; sleep 3600"]
"#;

fn pods(c: &TestCluster, selector: &str) -> Vec<Value> {
    let Ok(out) = c.kubectl(&["get", "pods", "-l", selector, "-o", "json"]) else {
        return Vec::new();
    };
    serde_json::from_str::<Value>(&out).unwrap_or_default()["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn running_ready(p: &Value) -> bool {
    p["metadata"]["deletionTimestamp"].is_null()
        && p["status"]["phase"] == "Running"
        && p["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// The files under `dir` named `name`.
fn find(dir: &Path, name: &str, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            find(&path, name, out);
        } else if path.file_name().is_some_and(|n| n == name) {
            out.push(path);
        }
    }
}

/// What the pod with `uid` wrote, from the node runtime's log files
/// (`<node state-dir>/pods/<uid>/<container>/<n>.log`, under the world's
/// state directory).
fn log_of(c: &TestCluster, uid: &str) -> String {
    let mut files = Vec::new();
    find(c.cluster.world().state_dir(), "0.log", &mut files);
    files
        .iter()
        .filter(|f| f.components().any(|part| part.as_os_str() == uid))
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .collect()
}

#[test]
fn daemonset_on_every_node_and_statefulset_names_resolve() {
    if skip_if_not_root() {
        return;
    }
    let c = TestCluster::up(2);
    let manifest = c.data_dir.join("workloads.yaml");
    std::fs::write(&manifest, MANIFEST).expect("write manifest");
    c.k(&["create", "-f", &manifest.to_string_lossy()]);

    // The DaemonSet: a running pod on each of the two nodes.
    c.eventually("an agent pod Running on each node", 90, || {
        let nodes: std::collections::BTreeSet<String> = pods(&c, "app=agent")
            .iter()
            .filter(|p| running_ready(p))
            .filter_map(|p| p["spec"]["nodeName"].as_str().map(String::from))
            .collect();
        nodes.len() == 2
    });
    let out = c.k(&["rollout", "status", "ds/agent", "--timeout=60s"]);
    assert!(out.contains("successfully rolled out"), "{out}");

    // The StatefulSet: web-0 then web-1, both Ready.
    c.eventually("web-0 and web-1 Running and Ready", 90, || {
        pods(&c, "app=nginx")
            .iter()
            .filter(|p| running_ready(p))
            .count()
            == 2
    });

    // From a busybox pod: the pods' stable names through cluster DNS.
    let client = c.data_dir.join("client.yaml");
    std::fs::write(&client, CLIENT).expect("write client");
    c.k(&["create", "-f", &client.to_string_lossy()]);
    let uid = {
        let mut uid = String::new();
        c.eventually("the client pod", 30, || {
            uid = c
                .kubectl(&["get", "pod", "client", "-o", "jsonpath={.metadata.uid}"])
                .unwrap_or_default();
            !uid.is_empty()
        });
        uid
    };
    let ip = |name: &str| c.k(&["get", "pod", name, "-o", "jsonpath={.status.podIP}"]);
    let (ip0, ip1) = (ip("web-0"), ip("web-1"));
    // getent's lines, `<ip> <name>`, in the runtime's CRI log format
    // (`<time> stdout F <line>`).
    let answers = |log: &str| -> Vec<(String, String)> {
        log.lines()
            .filter_map(|l| {
                let line = l.split_once(" F ").map_or(l, |(_, rest)| rest);
                let mut words = line.split_whitespace();
                Some((words.next()?.to_string(), words.next()?.to_string()))
            })
            .collect()
    };
    let resolved = |log: &str| {
        let got = answers(log);
        got.contains(&(ip0.clone(), "web-0.nginx.default.svc.cluster.local".into()))
            && got
                .iter()
                .any(|(ip, name)| *ip == ip1 && name.starts_with("web-1.nginx."))
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let log = log_of(&c, &uid);
        if resolved(&log) {
            break;
        }
        if Instant::now() > deadline {
            let mut files = Vec::new();
            find(c.cluster.world().state_dir(), "0.log", &mut files);
            let slices = c.kubectl(&["get", "endpointslices", "-o", "yaml"]);
            panic!(
                "web-0 and web-1 not resolved within 90s; client log {log:?}; logs {files:?}; slices {slices:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
