//! The scheduler, the `pods/binding` subresource and node lifecycle against
//! the real ferry-apiserver, driven through kube-rs as a node agent and
//! kubectl would drive them.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{ApiServer, eventually, merge};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

fn obj<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("object")
}

/// A Ready node with `cpu`, 8Gi of memory and room for `pods` pods;
/// `extra` is merged into the object (labels, spec, conditions...).
async fn make_node(nodes: &Api<Node>, name: &str, cpu: &str, pods: &str, extra: Value) {
    let mut node = json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {
            "allocatable": {"cpu": cpu, "memory": "8Gi", "pods": pods},
            "capacity": {"cpu": cpu, "memory": "8Gi", "pods": pods},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                "lastHeartbeatTime": "2025-01-01T00:00:00Z"}],
        },
    });
    merge(&mut node, extra);
    nodes
        .create(&PostParams::default(), &obj(node))
        .await
        .expect("create node");
}

async fn make_pod(pods: &Api<Pod>, name: &str, spec: Value) {
    let mut pod = json!({"metadata": {"name": name, "labels": {"app": "web"}},
        "spec": {"terminationGracePeriodSeconds": 0,
            "containers": [{"name": "app", "image": "nginx"}]}});
    merge(&mut pod["spec"], spec);
    pods.create(&PostParams::default(), &obj(pod))
        .await
        .expect("create pod");
}

async fn node_of(pods: &Api<Pod>, name: &str) -> Option<String> {
    pods.get(name)
        .await
        .ok()?
        .spec?
        .node_name
        .filter(|n| !n.is_empty())
}

async fn bound(pods: &Api<Pod>, name: &str) -> String {
    eventually(10, || node_of(pods, name)).await
}

fn condition(pod: &Pod, ty: &str) -> Option<(String, Option<String>, Option<String>)> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == ty)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits for the pod's PodScheduled=False condition; returns its message.
async fn unschedulable(pods: &Api<Pod>, name: &str) -> String {
    eventually(10, || async {
        let pod = pods.get(name).await.ok()?;
        match condition(&pod, "PodScheduled")? {
            (st, Some(reason), Some(msg)) if st == "False" && reason == "Unschedulable" => {
                Some(msg)
            }
            _ => None,
        }
    })
    .await
}

/// The event about `object` with `reason`: (type, message, component).
async fn event(events: &Api<Event>, object: &str, reason: &str) -> (String, String, String) {
    eventually(10, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .into_iter()
            .find(|e| {
                e.involved_object.name.as_deref() == Some(object)
                    && e.reason.as_deref() == Some(reason)
            })
            .map(|e| {
                (
                    e.type_.unwrap_or_default(),
                    e.message.unwrap_or_default(),
                    e.source.and_then(|s| s.component).unwrap_or_default(),
                )
            })
    })
    .await
}

/// Spread of one controller's replicas, nodeSelector, required affinity
/// (matchExpressions and the matchFields DaemonSet pods use), another
/// scheduler's pods left alone, the Scheduled event and condition.
#[tokio::test]
async fn scheduler_spreads_and_honours_node_selection() {
    let api = ApiServer::start(&[]);
    let client = api.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let events: Api<Event> = Api::default_namespaced(client.clone());
    make_node(
        &nodes,
        "n1",
        "4",
        "110",
        json!({"metadata": {"labels": {"disk": "ssd"}}}),
    )
    .await;
    make_node(&nodes, "n2", "4", "110", json!({})).await;
    make_node(&nodes, "n3", "4", "110", json!({})).await;

    // Any kind will do as the controller (and the garbage collector
    // keeps pods whose owner exists).
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let cm = cms
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "web"}})),
        )
        .await
        .expect("owner");
    let owner = json!({"metadata": {"ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap",
        "name": "web", "uid": cm.metadata.uid, "controller": true}]}});
    for i in 0..3 {
        let mut pod = json!({"metadata": {"name": format!("web-{i}")},
            "spec": {"containers": [{"name": "app", "image": "nginx"}]}});
        merge(&mut pod, owner.clone());
        pods.create(&PostParams::default(), &obj(pod))
            .await
            .expect("replica");
    }
    let mut spread = BTreeSet::new();
    for i in 0..3 {
        spread.insert(bound(&pods, &format!("web-{i}")).await);
    }
    assert_eq!(spread.len(), 3, "three replicas on three nodes: {spread:?}");

    make_pod(&pods, "ssd", json!({"nodeSelector": {"disk": "ssd"}})).await;
    make_pod(&pods, "ds", json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n3"]}]}]}}}})).await;
    make_pod(
        &pods,
        "affine",
        json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "disk", "operator": "DoesNotExist"},
            {"key": "kubernetes.io/hostname", "operator": "NotIn", "values": ["n3"]}]}]}}}}),
    )
    .await;
    make_pod(&pods, "other", json!({"schedulerName": "other-scheduler"})).await;
    assert_eq!(bound(&pods, "ssd").await, "n1");
    assert_eq!(bound(&pods, "ds").await, "n3");
    assert_eq!(bound(&pods, "affine").await, "n2");

    let pod = pods.get("ssd").await.expect("pod");
    assert_eq!(
        condition(&pod, "PodScheduled").map(|c| c.0),
        Some("True".into())
    );
    let (ty, message, component) = event(&events, "ssd", "Scheduled").await;
    assert_eq!(
        (ty.as_str(), message.as_str(), component.as_str()),
        (
            "Normal",
            "Successfully assigned default/ssd to n1",
            "default-scheduler"
        )
    );
    // Everything else was placed after it; another scheduler's pod is not ours.
    assert_eq!(node_of(&pods, "other").await, None);
}

/// Taints against tolerations, a cordoned node and a node that is not
/// Ready: kube-scheduler's message and event, and the pod placed once a
/// node becomes Ready.
#[tokio::test]
async fn taints_cordons_and_readiness() {
    let api = ApiServer::start(&[]);
    let client = api.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let events: Api<Event> = Api::default_namespaced(client.clone());
    make_node(
        &nodes,
        "t1",
        "4",
        "110",
        json!({"spec": {"taints": [
        {"key": "dedicated", "value": "infra", "effect": "NoSchedule"},
        {"key": "ignored", "value": "x", "effect": "PreferNoSchedule"}]}}),
    )
    .await;
    make_node(
        &nodes,
        "t2",
        "4",
        "110",
        json!({"spec": {"unschedulable": true}}),
    )
    .await;
    make_node(
        &nodes,
        "t3",
        "4",
        "110",
        json!({"status": {"conditions": [
        {"type": "Ready", "status": "False", "reason": "KubeletNotReady"}]}}),
    )
    .await;

    make_pod(&pods, "plain", json!({})).await;
    let want = "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: infra}, \
        1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }, 1 node(s) were unschedulable. \
        preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling.";
    assert_eq!(unschedulable(&pods, "plain").await, want);
    let (ty, message, component) = event(&events, "plain", "FailedScheduling").await;
    assert_eq!(
        (ty.as_str(), message.as_str(), component.as_str()),
        ("Warning", want, "default-scheduler")
    );

    make_pod(
        &pods,
        "tolerant",
        json!({"tolerations": [
        {"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoSchedule"}]}),
    )
    .await;
    assert_eq!(bound(&pods, "tolerant").await, "t1");
    make_pod(
        &pods,
        "cordon-ok",
        json!({"tolerations": [
        {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"}]}),
    )
    .await;
    assert_eq!(bound(&pods, "cordon-ok").await, "t2");
    make_pod(
        &pods,
        "everything",
        json!({"tolerations": [{"operator": "Exists"}]}),
    )
    .await;
    bound(&pods, "everything").await;

    // The node turns Ready: the waiting pod goes there on that change.
    let ready = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}});
    nodes
        .patch_status("t3", &PatchParams::default(), &Patch::Merge(&ready))
        .await
        .expect("ready");
    assert_eq!(bound(&pods, "plain").await, "t3");
}

/// Requests against allocatable, pod count and host ports; a node that
/// arrives later takes every pod that waited.
#[tokio::test]
async fn resources_ports_and_a_late_node() {
    let api = ApiServer::start(&[]);
    let client = api.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let events: Api<Event> = Api::default_namespaced(client.clone());
    make_pod(&pods, "early", json!({})).await;
    assert_eq!(
        unschedulable(&pods, "early").await,
        "no nodes available to schedule pods"
    );
    make_node(&nodes, "r1", "1", "3", json!({})).await;
    assert_eq!(bound(&pods, "early").await, "r1");

    let port = |p: i32| {
        json!({"containers": [{"name": "app", "image": "nginx",
        "ports": [{"containerPort": 80, "hostPort": p}]}]})
    };
    make_pod(&pods, "hp1", port(8080)).await;
    assert_eq!(bound(&pods, "hp1").await, "r1");
    make_pod(&pods, "hp2", port(8080)).await;
    let preempt =
        "preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod.";
    assert_eq!(
        unschedulable(&pods, "hp2").await,
        format!(
            "0/1 nodes are available: 1 node(s) didn't have free ports for the requested pod ports. {preempt}"
        )
    );
    make_pod(
        &pods,
        "big",
        json!({"containers": [{"name": "app", "image": "nginx",
        "resources": {"requests": {"cpu": "1500m", "memory": "9Gi"}}}]}),
    )
    .await;
    let want =
        format!("0/1 nodes are available: 1 Insufficient cpu, 1 Insufficient memory. {preempt}");
    assert_eq!(unschedulable(&pods, "big").await, want);
    let (ty, message, _) = event(&events, "big", "FailedScheduling").await;
    assert_eq!((ty.as_str(), message.as_str()), ("Warning", want.as_str()));
    make_pod(&pods, "third", json!({})).await;
    assert_eq!(bound(&pods, "third").await, "r1");
    make_pod(&pods, "fourth", json!({})).await;
    assert_eq!(
        unschedulable(&pods, "fourth").await,
        format!("0/1 nodes are available: 1 Too many pods. {preempt}")
    );

    make_node(
        &nodes,
        "r2",
        "4",
        "10",
        json!({"status": {"allocatable": {"memory": "16Gi"}}}),
    )
    .await;
    for name in ["hp2", "big", "fourth"] {
        assert_eq!(bound(&pods, name).await, "r2", "{name}");
    }
}

/// `pods/binding` and the legacy `bindings`: bind once, then 409; bad
/// targets are 422.
#[tokio::test]
async fn binding_subresource() {
    let api = ApiServer::start(&["--controllers", "*,-scheduler"]);
    let client = api.client().await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    make_pod(&pods, "a", json!({})).await;
    make_pod(&pods, "b", json!({})).await;
    let binding = |pod: &str, node: &str| {
        json!({"apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": pod}, "target": {"apiVersion": "v1", "kind": "Node", "name": node}})
    };
    let status: Value = pods
        .create_subresource("binding", "a", &PostParams::default(), &binding("a", "n1"))
        .await
        .expect("bind");
    assert_eq!(status["status"], "Success");
    let a = pods.get("a").await.expect("pod");
    assert_eq!(a.spec.and_then(|s| s.node_name).as_deref(), Some("n1"));
    assert_eq!(
        condition(&pods.get("a").await.expect("pod"), "PodScheduled").map(|c| c.0),
        Some("True".into())
    );
    match pods
        .create_subresource::<_, Value>("binding", "a", &PostParams::default(), &binding("a", "n2"))
        .await
    {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 409);
            assert!(
                e.message
                    .contains("pod a is already assigned to node \"n1\""),
                "{}",
                e.message
            );
        }
        other => panic!("second binding: {other:?}"),
    }
    let bad = json!({"metadata": {"name": "b"}, "target": {"kind": "Pod", "name": "x"}});
    match pods
        .create_subresource::<_, Value>("binding", "b", &PostParams::default(), &bad)
        .await
    {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 422, "{}", e.message),
        other => panic!("bad target: {other:?}"),
    }
    let legacy = http::Request::post("/api/v1/namespaces/default/bindings")
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&binding("b", "n2")).expect("json"))
        .expect("request");
    let status: Value = client.request(legacy).await.expect("legacy binding");
    assert_eq!(status["code"], 201);
    assert_eq!(node_of(&pods, "b").await.as_deref(), Some("n2"));
}

async fn renew(leases: &Api<Lease>, name: &str) {
    let now = jiff::Timestamp::now().to_string();
    let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name}, "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now}});
    leases
        .patch(
            name,
            &PatchParams::apply("node").force(),
            &Patch::Apply(&lease),
        )
        .await
        .expect("renew lease");
}

fn ready_status(node: &Node) -> Option<(String, Option<String>, Option<String>)> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn unreachable_taints(node: &Node) -> Vec<String> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t.key == "node.kubernetes.io/unreachable")
        .map(|t| t.effect)
        .collect()
}

/// A node whose Lease stops being renewed goes Unknown and tainted, its
/// pods not ready and out of their Service's ready endpoints; a node that
/// keeps renewing, or that has no Lease at all, is left alone; renewing
/// again lifts the taints.
#[tokio::test]
async fn lease_expiry_marks_node_unreachable() {
    let api = ApiServer::start(&["--node-monitor-grace-period", "2s"]);
    let client = api.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let svcs: Api<Service> = Api::default_namespaced(client.clone());
    let slices: Api<EndpointSlice> = Api::default_namespaced(client.clone());
    make_node(&nodes, "l1", "4", "110", json!({})).await;
    make_node(&nodes, "static", "4", "110", json!({})).await;
    renew(&leases, "l1").await;
    make_pod(&pods, "web", json!({"nodeName": "l1"})).await;
    let running = json!({"status": {"phase": "Running", "podIP": "10.244.1.5", "podIPs": [{"ip": "10.244.1.5"}],
        "conditions": [{"type": "Ready", "status": "True"}]}});
    pods.patch_status("web", &PatchParams::default(), &Patch::Merge(&running))
        .await
        .expect("pod status");
    svcs.create(
        &PostParams::default(),
        &obj(json!({"metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}})),
    )
    .await
    .expect("service");
    let endpoint_ready = || async {
        let list = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
            .await
            .ok()?;
        let ep = list.items.into_iter().flat_map(|s| s.endpoints).next()?;
        ep.conditions?.ready
    };
    assert!(eventually(10, || async { endpoint_ready().await }).await);

    // Renewing keeps it Ready past the grace period.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        renew(&leases, "l1").await;
    }
    let l1 = nodes.get("l1").await.expect("node");
    assert_eq!(ready_status(&l1).map(|r| r.0), Some("True".into()));
    assert!(unreachable_taints(&l1).is_empty());

    // Silence: unreachable.
    let l1 = eventually(10, || async {
        let n = nodes.get("l1").await.ok()?;
        (unreachable_taints(&n).len() == 2).then_some(n)
    })
    .await;
    assert_eq!(
        ready_status(&l1),
        Some((
            "Unknown".into(),
            Some("NodeStatusUnknown".into()),
            Some("Kubelet stopped posting node status.".into())
        ))
    );
    let mut effects = unreachable_taints(&l1);
    effects.sort();
    assert_eq!(effects, ["NoExecute", "NoSchedule"]);
    let web = eventually(10, || async {
        let p = pods.get("web").await.ok()?;
        (condition(&p, "Ready")?.0 == "False").then_some(p)
    })
    .await;
    assert_eq!(web.spec.and_then(|s| s.node_name).as_deref(), Some("l1"));
    eventually(10, || async {
        (endpoint_ready().await == Some(false)).then_some(())
    })
    .await;
    // A node without a Lease is nobody's to judge.
    let st = nodes.get("static").await.expect("node");
    assert_eq!(ready_status(&st).map(|r| r.0), Some("True".into()));
    assert!(unreachable_taints(&st).is_empty());

    // Renewed: the taints go.
    renew(&leases, "l1").await;
    eventually(10, || async {
        let n = nodes.get("l1").await.ok()?;
        unreachable_taints(&n).is_empty().then_some(())
    })
    .await;
}
