//! A cluster that grows: a DaemonSet follows a node added to a running
//! `ferry up` cluster, and a StatefulSet's pods get their stable names in
//! the cluster DNS.

mod common;

use common::{TestCluster, pod_serving};
use ferry_testbed::skip_if_not_root;
use serde_json::{Value, json};

/// Node names of the DaemonSet's Running, Ready pods.
fn daemon_nodes(c: &TestCluster) -> Vec<String> {
    let out = c
        .kubectl(&["get", "pods", "-l", "app=probe", "-o", "json"])
        .unwrap_or_default();
    let list: Value = serde_json::from_str(&out).unwrap_or_default();
    let mut nodes: Vec<String> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| pod_serving(p))
        .filter_map(|p| p["spec"]["nodeName"].as_str().map(str::to_owned))
        .collect();
    nodes.sort();
    nodes
}

#[test]
fn a_daemon_set_follows_a_new_node_and_stateful_pods_resolve_by_name() {
    if skip_if_not_root() {
        return;
    }
    let mut c = TestCluster::up(2);
    c.apply(&json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "probe"},
        "spec": {
            "selector": {"matchLabels": {"app": "probe"}},
            "template": {
                "metadata": {"labels": {"app": "probe"}},
                "spec": {"containers": [{
                    "name": "netexec",
                    "image": "registry.k8s.io/e2e-test-images/agnhost:2.53",
                    "args": ["netexec", "--http-port=8080"],
                }]},
            },
        },
    }));
    let mut want: Vec<String> = c.cluster.nodes().iter().map(|n| n.name.clone()).collect();
    want.sort();
    c.eventually("a probe pod Ready on every node", 60, || {
        daemon_nodes(&c) == want
    });

    let added = c.cluster.add_node().expect("add a node");
    want.push(added.name.clone());
    want.sort();
    c.eventually("the DaemonSet on the new node too", 60, || {
        daemon_nodes(&c) == want
    });
    c.k(&["rollout", "status", "ds/probe", "--timeout=60s"]);

    // A StatefulSet behind a headless Service: web-0, web-1 in order, each
    // resolvable as <pod>.<service>.<namespace>.svc.cluster.local.
    c.apply(&json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "nginx"},
            "spec": {"clusterIP": "None", "selector": {"app": "web"}, "ports": [{"port": 80, "name": "web"}]},
        }),
    );
    c.apply(&json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "web"},
            "spec": {
                "serviceName": "nginx",
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "nginx", "image": "nginx", "ports": [{"containerPort": 80, "name": "web"}]}]},
                },
            },
        }),
    );
    c.k(&["rollout", "status", "sts/web", "--timeout=90s"]);
    let ip0 = c.k(&["get", "pod", "web-0", "-o", "jsonpath={.status.podIP}"]);
    assert!(ip0.starts_with("10.244."), "{ip0}");
    c.apply(&json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "resolver"},
            "spec": {"restartPolicy": "Never", "containers": [{
                "name": "c", "image": "busybox",
                "command": ["sh", "-c", "getent hosts web-0.nginx.default.svc.cluster.local && getent hosts web-1.nginx"],
            }]},
        }),
    );
    c.eventually("the resolver pod done", 60, || {
        c.kubectl(&["get", "pod", "resolver", "-o", "jsonpath={.status.phase}"])
            .is_ok_and(|p| p == "Succeeded" || p == "Failed")
    });
    let logs = c.k(&["logs", "resolver"]);
    let ip1 = c.k(&["get", "pod", "web-1", "-o", "jsonpath={.status.podIP}"]);
    assert!(
        logs.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == [ip0.as_str(), "web-0.nginx.default.svc.cluster.local"]),
        "web-0 resolves to its pod: {logs}"
    );
    assert!(
        logs.contains(&ip1),
        "web-1 resolves by its short name: {logs}"
    );
}
