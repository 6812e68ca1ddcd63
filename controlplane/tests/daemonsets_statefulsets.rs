//! DaemonSets and StatefulSets against the real ferry-apiserver with
//! kubectl v1.32: the pods each controller makes, where the scheduler puts
//! them, how they follow nodes, templates and scale, and what
//! `kubectl rollout status` reads of their status.
//!
//! Nothing runs pods here (no node runtime): a stand-in kubelet marks bound
//! pods Running and Ready and finishes their graceful deletion, except
//! where a test holds a pod back (`ready:<pod>`, `delete:<pod>`), so it can
//! see what a controller does while a pod is not ready or not gone yet.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use common::kubelet::{Held, StandInKubelet, hold, release};
use common::{ApiServer, have_kubectl, items, json_of, merge, wait_async};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// A Ready node; `extra` is merged into the object.
async fn make_node(nodes: &Api<Node>, name: &str, extra: Value) {
    let mut node = json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {
            "allocatable": {"cpu": "8", "memory": "8Gi", "pods": "110"},
            "capacity": {"cpu": "8", "memory": "8Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
        },
    });
    merge(&mut node, extra);
    nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(node).expect("node"),
        )
        .await
        .expect("create node");
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

/// Live pods (not being deleted) of `selector`.
fn live_pods(api: &ApiServer, selector: &str) -> Vec<Value> {
    items(&json_of(api, &["get", "pods", "-l", selector]))
        .into_iter()
        .filter(|p| p.pointer("/metadata/deletionTimestamp").is_none())
        .collect()
}

/// node -> controller-revision-hash of the live, bound pods of `selector`.
fn pods_by_node(api: &ApiServer, selector: &str) -> BTreeMap<String, String> {
    live_pods(api, selector)
        .iter()
        .filter(|p| !s(p, "/spec/nodeName").is_empty())
        .map(|p| {
            (
                s(p, "/spec/nodeName").to_string(),
                s(p, "/metadata/labels/controller-revision-hash").to_string(),
            )
        })
        .collect()
}

fn names(pods: &[Value]) -> BTreeSet<String> {
    pods.iter()
        .map(|p| s(p, "/metadata/name").to_string())
        .collect()
}

fn node_set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

const DAEMONSET: &str = r#"apiVersion: apps/v1
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
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonset_follows_nodes_labels_taints_and_rolls_out() {
    if !have_kubectl() {
        return;
    }
    let api = ApiServer::start(&[]);
    let client = api.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    make_node(&nodes, "n1", json!({})).await;
    make_node(&nodes, "n2", json!({})).await;
    // Tainted: no daemon pod unless tolerated.
    make_node(
        &nodes,
        "n3",
        json!({"spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}}),
    )
    .await;
    // Not Ready: no daemon pod until it is.
    make_node(&nodes, "n4", json!({"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "KubeletNotReady"}]}})).await;
    let held: Held = Arc::default();
    let kubelet = StandInKubelet {
        bound_only: true,
        finish_deletion: true,
        held: held.clone(),
        ..Default::default()
    }
    .start(client.clone());

    let out = api.kubectl_apply_stdin(&["create", "-f", "-"], Some(DAEMONSET));
    assert!(out.contains("daemonset.apps/agent created"), "{out}");

    // One pod on each Ready, untainted node, bound by the scheduler through
    // the pod's node affinity.
    let placed = wait_async(20, "a pod on n1 and n2", || {
        Some(pods_by_node(&api, "app=agent")).filter(|m| m.len() == 2)
    })
    .await;
    assert_eq!(
        placed.keys().cloned().collect::<BTreeSet<_>>(),
        node_set(&["n1", "n2"])
    );
    let first_hash = placed["n1"].clone();
    let pod = live_pods(&api, "app=agent")
        .into_iter()
        .find(|p| s(p, "/spec/nodeName") == "n1")
        .expect("pod on n1");
    assert!(s(&pod, "/metadata/name").starts_with("agent-"));
    assert_eq!(
        pod.pointer("/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms/0/matchFields/0"),
        Some(&json!({"key": "metadata.name", "operator": "In", "values": ["n1"]}))
    );
    let tolerations: BTreeSet<String> = pod["spec"]["tolerations"]
        .as_array()
        .expect("tolerations")
        .iter()
        .map(|t| format!("{}:{}", s(t, "/key"), s(t, "/effect")))
        .collect();
    for t in [
        "node.kubernetes.io/not-ready:NoExecute",
        "node.kubernetes.io/unreachable:NoExecute",
        "node.kubernetes.io/disk-pressure:NoSchedule",
        "node.kubernetes.io/memory-pressure:NoSchedule",
        "node.kubernetes.io/pid-pressure:NoSchedule",
        "node.kubernetes.io/unschedulable:NoSchedule",
    ] {
        assert!(tolerations.contains(t), "{t} missing from {tolerations:?}");
    }
    assert_eq!(s(&pod, "/metadata/ownerReferences/0/kind"), "DaemonSet");
    // The template is recorded as a ControllerRevision named by its hash.
    let revs = items(&json_of(
        &api,
        &["get", "controllerrevisions", "-l", "app=agent"],
    ));
    assert_eq!(revs.len(), 1);
    assert_eq!(s(&revs[0], "/metadata/name"), format!("agent-{first_hash}"));
    assert_eq!(revs[0]["revision"], 1);

    let out = api.kubectl_ok(&["rollout", "status", "ds/agent", "--timeout=30s"]);
    assert!(
        out.contains("daemon set \"agent\" successfully rolled out"),
        "{out}"
    );
    let ds = json_of(&api, &["get", "ds", "agent"]);
    for (field, want) in [
        ("desiredNumberScheduled", 2),
        ("currentNumberScheduled", 2),
        ("numberReady", 2),
        ("numberAvailable", 2),
        ("updatedNumberScheduled", 2),
        ("numberMisscheduled", 0),
        ("observedGeneration", 1),
    ] {
        assert_eq!(ds["status"][field], want, "{field} in {}", ds["status"]);
    }
    let events = api.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=agent",
    ]);
    assert!(events.contains("SuccessfulCreate"), "{events}");

    // A node that turns Ready gets its pod; so does a new node.
    nodes
        .patch_status(
            "n4",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}})),
        )
        .await
        .expect("n4 ready");
    make_node(&nodes, "n5", json!({})).await;
    wait_async(20, "pods on n4 and n5", || {
        Some(pods_by_node(&api, "app=agent")).filter(|m| {
            m.keys().cloned().collect::<BTreeSet<_>>() == node_set(&["n1", "n2", "n4", "n5"])
        })
    })
    .await;
    // A node that goes takes its pod with it.
    nodes
        .delete("n5", &DeleteParams::default())
        .await
        .expect("delete n5");
    wait_async(20, "n5's pod gone", || {
        Some(live_pods(&api, "app=agent")).filter(|p| p.len() == 3)
    })
    .await;

    // Tolerating the taint: a rolling update (a new template) that also
    // lands on n3. Every pod ends with the new hash.
    let patch = json!({"spec": {"template": {"spec": {"tolerations": [
        {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]}}}});
    api.kubectl_ok(&[
        "patch",
        "ds",
        "agent",
        "--type=merge",
        "-p",
        &patch.to_string(),
    ]);
    let out = api.kubectl_ok(&["rollout", "status", "ds/agent", "--timeout=60s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    let placed = wait_async(20, "new pods everywhere", || {
        Some(pods_by_node(&api, "app=agent"))
            .filter(|m| m.len() == 4 && m.values().all(|h| *h != first_hash))
    })
    .await;
    assert_eq!(
        placed.keys().cloned().collect::<BTreeSet<_>>(),
        node_set(&["n1", "n2", "n3", "n4"])
    );
    let revs = items(&json_of(
        &api,
        &["get", "controllerrevisions", "-l", "app=agent"],
    ));
    assert_eq!(revs.len(), 2, "the old revision is kept as history");
    let events = api.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=agent",
    ]);
    assert!(events.contains("SuccessfulDelete"), "{events}");

    // A node selector: only labelled nodes, following relabels.
    let selective = DAEMONSET
        .replace("name: agent", "name: ssd")
        .replace("app: agent", "app: ssd")
        .replace(
            "    spec:\n      containers:",
            "    spec:\n      nodeSelector:\n        disk: ssd\n      containers:",
        );
    api.kubectl_apply_stdin(&["create", "-f", "-"], Some(&selective));
    api.kubectl_ok(&["label", "node", "n2", "disk=ssd"]);
    wait_async(20, "the ssd pod on n2", || {
        Some(pods_by_node(&api, "app=ssd"))
            .filter(|m| m.keys().cloned().collect::<BTreeSet<_>>() == node_set(&["n2"]))
    })
    .await;
    api.kubectl_ok(&["label", "node", "n1", "disk=ssd"]);
    api.kubectl_ok(&["label", "node", "n2", "disk-"]);
    wait_async(20, "the ssd pod moved to n1", || {
        Some(live_pods(&api, "app=ssd"))
            .filter(|p| p.len() == 1 && s(&p[0], "/spec/nodeName") == "n1")
    })
    .await;
    let ds = json_of(&api, &["get", "ds", "ssd"]);
    assert_eq!(
        ds["status"]["desiredNumberScheduled"], 1,
        "{}",
        ds["status"]
    );

    // A NoExecute taint the pods do not tolerate evicts them; a
    // NoSchedule one does not.
    api.kubectl_ok(&["taint", "node", "n4", "maintenance=yes:NoSchedule"]);
    api.kubectl_ok(&["taint", "node", "n1", "maintenance=yes:NoExecute"]);
    wait_async(20, "n1's agent pod evicted", || {
        Some(pods_by_node(&api, "app=agent")).filter(|m| !m.contains_key("n1"))
    })
    .await;
    assert!(
        pods_by_node(&api, "app=agent").contains_key("n4"),
        "NoSchedule leaves a running pod"
    );
    kubelet.abort();
}

const STATEFULSET: &str = r#"apiVersion: v1
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
  replicas: 3
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
        image: nginx:1.27
        ports:
        - containerPort: 80
          name: web
        volumeMounts:
        - name: www
          mountPath: /usr/share/nginx/html
  volumeClaimTemplates:
  - metadata:
      name: www
    spec:
      accessModes: [ReadWriteOnce]
      resources:
        requests:
          storage: 1Gi
"#;

fn pod_of(api: &ApiServer, name: &str) -> Option<Value> {
    live_pods(api, "app=nginx")
        .into_iter()
        .find(|p| s(p, "/metadata/name") == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_orders_pods_names_them_and_rolls_back_to_front() {
    if !have_kubectl() {
        return;
    }
    let api = ApiServer::start(&[]);
    let client = api.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    make_node(&nodes, "n1", json!({})).await;
    let held: Held = Arc::default();
    hold(&held, &["ready:web-0", "ready:web-1"]);
    let kubelet = StandInKubelet {
        bound_only: true,
        finish_deletion: true,
        held: held.clone(),
        ..Default::default()
    }
    .start(client.clone());

    let out = api.kubectl_apply_stdin(&["create", "-f", "-"], Some(STATEFULSET));
    assert!(out.contains("statefulset.apps/web created"), "{out}");

    // OrderedReady: web-0 alone while it is not Ready.
    let web0 = wait_async(20, "web-0", || pod_of(&api, "web-0")).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(names(&live_pods(&api, "app=nginx")), node_set(&["web-0"]));
    assert_eq!(s(&web0, "/spec/hostname"), "web-0");
    assert_eq!(s(&web0, "/spec/subdomain"), "nginx");
    assert_eq!(
        s(
            &web0,
            "/metadata/labels/statefulset.kubernetes.io~1pod-name"
        ),
        "web-0"
    );
    assert_eq!(
        s(&web0, "/metadata/labels/apps.kubernetes.io~1pod-index"),
        "0"
    );
    let rev1 = s(&web0, "/metadata/labels/controller-revision-hash").to_string();
    assert!(rev1.starts_with("web-"), "{rev1}");
    assert_eq!(s(&web0, "/metadata/ownerReferences/0/kind"), "StatefulSet");
    // The claim template becomes an emptyDir of its name, with a warning
    // (beside the ServiceAccount token volume admission adds).
    assert_eq!(
        web0["spec"]["volumes"][0],
        json!({"name": "www", "emptyDir": {}})
    );
    assert!(
        web0["spec"]["volumes"][1]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("kube-api-access-"))
    );
    let events = api.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=web",
    ]);
    assert!(events.contains("VolumeClaimTemplatesIgnored"), "{events}");

    release(&held, "ready:web-0");
    wait_async(20, "web-1", || pod_of(&api, "web-1")).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        names(&live_pods(&api, "app=nginx")),
        node_set(&["web-0", "web-1"]),
        "web-2 waits for web-1"
    );
    release(&held, "ready:web-1");
    wait_async(20, "web-2", || pod_of(&api, "web-2")).await;
    // kube-apiserver defaults rollingUpdate.partition to 0, so kubectl
    // reports a (whole) partitioned roll-out, as it does against kube.
    let out = api.kubectl_ok(&["rollout", "status", "sts/web", "--timeout=30s"]);
    assert!(
        out.contains("partitioned roll out complete: 3 new pods have been updated"),
        "{out}"
    );

    // The headless Service's slice names each pod by its hostname, which is
    // what DNS answers `web-0.nginx.default.svc.cluster.local` from.
    let hostnames = wait_async(20, "slice hostnames", || {
        let slices = json_of(
            &api,
            &[
                "get",
                "endpointslices",
                "-l",
                "kubernetes.io/service-name=nginx",
            ],
        );
        let h: BTreeSet<String> = items(&slices)
            .iter()
            .flat_map(|sl| sl["endpoints"].as_array().cloned().unwrap_or_default())
            .map(|e| s(&e, "/hostname").to_string())
            .collect();
        Some(h).filter(|h| h.len() == 3)
    })
    .await;
    assert_eq!(hostnames, node_set(&["web-0", "web-1", "web-2"]));

    // Rolling update: highest ordinal first, each after the one above is
    // Ready again.
    hold(&held, &["ready:web-2"]);
    api.kubectl_ok(&["set", "image", "sts/web", "nginx=nginx:1.28"]);
    let new_rev = wait_async(20, "web-2 replaced", || {
        pod_of(&api, "web-2")
            .map(|p| s(&p, "/metadata/labels/controller-revision-hash").to_string())
            .filter(|r| *r != rev1)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for lower in ["web-0", "web-1"] {
        let p = pod_of(&api, lower).expect("lower pod");
        assert_eq!(
            s(&p, "/metadata/labels/controller-revision-hash"),
            rev1,
            "{lower} waits for web-2"
        );
    }
    release(&held, "ready:web-2");
    // web-1 is replaced before web-0.
    let mut order = Vec::new();
    wait_async(30, "all pods at the new revision", || {
        for n in ["web-1", "web-0"] {
            let updated = pod_of(&api, n)
                .is_some_and(|p| s(&p, "/metadata/labels/controller-revision-hash") == new_rev);
            if updated && !order.contains(&n) {
                order.push(n);
            }
        }
        (order.len() == 2).then_some(())
    })
    .await;
    assert_eq!(order, ["web-1", "web-0"]);
    let out = api.kubectl_ok(&["rollout", "status", "sts/web", "--timeout=30s"]);
    assert!(
        out.contains("partitioned roll out complete: 3 new pods have been updated"),
        "{out}"
    );
    let sts = json_of(&api, &["get", "sts", "web"]);
    assert_eq!(sts["status"]["currentRevision"], json!(new_rev));
    assert_eq!(sts["status"]["updateRevision"], json!(new_rev));
    assert_eq!(sts["status"]["readyReplicas"], 3);

    // Scale down: the highest ordinal goes first, and the next waits for it
    // to be gone.
    hold(&held, &["delete:web-2"]);
    api.kubectl_ok(&["scale", "sts/web", "--replicas=1"]);
    wait_async(20, "web-2 terminating", || {
        let all = items(&json_of(&api, &["get", "pods", "-l", "app=nginx"]));
        all.iter()
            .any(|p| {
                s(p, "/metadata/name") == "web-2"
                    && p.pointer("/metadata/deletionTimestamp").is_some()
            })
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        pod_of(&api, "web-1").is_some(),
        "web-1 waits for web-2 to go"
    );
    release(&held, "delete:web-2");
    wait_async(30, "only web-0 left", || {
        let all = items(&json_of(&api, &["get", "pods", "-l", "app=nginx"]));
        (names(&all) == node_set(&["web-0"])).then_some(())
    })
    .await;
    let events = api.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=web",
    ]);
    assert!(
        events.contains("delete Pod web-2 in StatefulSet web successful"),
        "{events}"
    );
    kubelet.abort();
}
