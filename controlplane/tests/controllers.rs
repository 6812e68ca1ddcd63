//! The in-process controllers against the real ferry-apiserver, observed
//! through kube-rs as the dataplane would see them.

mod common;

use std::collections::BTreeSet;

use common::{ApiServer, Backend, eventually};
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

fn obj<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("object")
}

async fn make_pod(pods: &Api<Pod>, name: &str, ip: &str, ready: bool, extra: Value) {
    let mut spec = json!({
        "nodeName": "node-a",
        "terminationGracePeriodSeconds": 2,
        "containers": [{"name": "app", "image": "agnhost", "ports": [{"name": "http", "containerPort": 8080}]}],
    });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    let pod = json!({"metadata": {"name": name, "labels": {"app": "web"}}, "spec": spec});
    pods.create(&PostParams::default(), &obj(pod))
        .await
        .expect("create pod");
    set_ready(pods, name, ip, ready).await;
}

async fn set_ready(pods: &Api<Pod>, name: &str, ip: &str, ready: bool) {
    let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("pod status");
}

async fn slices_of(slices: &Api<EndpointSlice>, svc: &str) -> Vec<EndpointSlice> {
    slices
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={svc}")))
        .await
        .expect("list slices")
        .items
}

fn endpoint_states(slices: &[EndpointSlice]) -> Vec<(String, bool, bool, bool)> {
    let mut out: Vec<_> = slices
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .map(|e| {
            let c = e.conditions.clone().unwrap_or_default();
            (
                e.addresses[0].clone(),
                c.ready.unwrap_or(false),
                c.serving.unwrap_or(false),
                c.terminating.unwrap_or(false),
            )
        })
        .collect();
    out.sort();
    out
}

async fn endpointslices_follow_pods(backend: Backend) {
    let api = ApiServer::start_on(backend, &[]);
    let client = api.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .create(&PostParams::default(), &obj(json!({"metadata": {"name": "node-a", "labels": {"topology.kubernetes.io/zone": "zone-1"}}})))
        .await
        .expect("node");
    let svcs: Api<Service> = Api::default_namespaced(client.clone());
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let slices: Api<EndpointSlice> = Api::default_namespaced(client.clone());
    let eps: Api<Endpoints> = Api::default_namespaced(client.clone());
    svcs.create(&PostParams::default(), &obj(json!({"metadata": {"name": "web"}, "spec": {
        "selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}, {"name": "raw", "port": 81, "targetPort": 9090, "protocol": "UDP"}]}})))
        .await
        .expect("service");

    // No pods yet: one empty slice.
    let empty = eventually(10, || async {
        Some(slices_of(&slices, "web").await).filter(|s| s.len() == 1)
    })
    .await;
    assert!(empty[0].endpoints.is_empty());
    assert_eq!(empty[0].address_type, "IPv4");

    make_pod(
        &pods,
        "web-1",
        "10.244.0.11",
        true,
        json!({"hostname": "one", "subdomain": "web"}),
    )
    .await;
    make_pod(&pods, "web-2", "10.244.0.12", false, json!({})).await;
    let got = eventually(10, || async {
        let s = slices_of(&slices, "web").await;
        (endpoint_states(&s).len() == 2).then_some(s)
    })
    .await;
    assert_eq!(
        endpoint_states(&got),
        [
            ("10.244.0.11".into(), true, true, false),
            ("10.244.0.12".into(), false, false, false)
        ]
    );
    let slice = &got[0];
    let labels = slice.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels
            .get("endpointslice.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("endpointslice-controller.k8s.io")
    );
    let ports: BTreeSet<(String, i32, String)> = slice
        .ports
        .iter()
        .flatten()
        .map(|p| {
            (
                p.name.clone().unwrap_or_default(),
                p.port.unwrap_or(0),
                p.protocol.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        [
            ("http".into(), 8080, "TCP".into()),
            ("raw".into(), 9090, "UDP".into())
        ]
        .into()
    );
    let one = slice
        .endpoints
        .iter()
        .find(|e| e.addresses[0] == "10.244.0.11")
        .expect("web-1");
    assert_eq!(one.hostname.as_deref(), Some("one"));
    assert_eq!(one.node_name.as_deref(), Some("node-a"));
    assert_eq!(one.zone.as_deref(), Some("zone-1"));
    assert_eq!(
        one.target_ref.as_ref().and_then(|r| r.name.as_deref()),
        Some("web-1")
    );
    let owner = &slice.metadata.owner_references.as_ref().expect("owner")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Service", "web")
    );

    // The legacy Endpoints object splits ready from not-ready.
    let ep = eventually(10, || async {
        eps.get_opt("web")
            .await
            .ok()
            .flatten()
            // Both pods in: one ready, one not.
            .filter(|e| {
                e.subsets.as_ref().is_some_and(|s| {
                    s.len() == 1
                        && s[0].addresses.as_ref().is_some_and(|a| a.len() == 1)
                        && s[0]
                            .not_ready_addresses
                            .as_ref()
                            .is_some_and(|a| a.len() == 1)
                })
            })
    })
    .await;
    let subset = &ep.subsets.expect("subsets")[0];
    assert_eq!(
        subset
            .addresses
            .as_ref()
            .map(|a| a[0].ip.clone())
            .as_deref(),
        Some("10.244.0.11")
    );
    assert_eq!(
        subset
            .not_ready_addresses
            .as_ref()
            .map(|a| a[0].ip.clone())
            .as_deref(),
        Some("10.244.0.12")
    );

    // Readiness flips are reflected.
    set_ready(&pods, "web-2", "10.244.0.12", true).await;
    eventually(10, || async {
        let s = endpoint_states(&slices_of(&slices, "web").await);
        s.iter().all(|e| e.1).then_some(())
    })
    .await;

    // Deleting a pod: terminating (still serving) for its grace period, then gone.
    pods.delete("web-1", &DeleteParams::default())
        .await
        .expect("delete pod");
    eventually(10, || async {
        let s = endpoint_states(&slices_of(&slices, "web").await);
        s.contains(&("10.244.0.11".into(), false, true, true))
            .then_some(())
    })
    .await;
    eventually(15, || async {
        let s = endpoint_states(&slices_of(&slices, "web").await);
        (s == [("10.244.0.12".to_string(), true, true, false)]).then_some(())
    })
    .await;
    assert!(pods.get_opt("web-1").await.expect("get").is_none());

    // A pod without the named port is left out.
    let bare = json!({"metadata": {"name": "bare", "labels": {"app": "web"}}, "spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": "x"}]}});
    pods.create(&PostParams::default(), &obj(bare))
        .await
        .expect("bare pod");
    set_ready(&pods, "bare", "10.244.0.13", true).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(endpoint_states(&slices_of(&slices, "web").await).len(), 1);

    // Deleting the service removes its slices and Endpoints.
    svcs.delete("web", &DeleteParams::default())
        .await
        .expect("delete service");
    eventually(10, || async {
        slices_of(&slices, "web").await.is_empty().then_some(())
    })
    .await;
    eventually(10, || async {
        eps.get_opt("web")
            .await
            .ok()
            .flatten()
            .is_none()
            .then_some(())
    })
    .await;
}

async fn large_services_split_into_slices_of_100_and_user_slices_are_kept(backend: Backend) {
    let api = ApiServer::start_on(backend, &[]);
    let client = api.client().await;
    let svcs: Api<Service> = Api::default_namespaced(client.clone());
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let slices: Api<EndpointSlice> = Api::default_namespaced(client.clone());
    svcs.create(&PostParams::default(), &obj(json!({"metadata": {"name": "big"}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}})))
        .await
        .expect("service");
    for i in 0..130 {
        make_pod(
            &pods,
            &format!("p{i}"),
            &format!("10.244.1.{}", i + 1),
            true,
            json!({}),
        )
        .await;
    }
    let got = eventually(20, || async {
        let s = slices_of(&slices, "big").await;
        (endpoint_states(&s).len() == 130).then_some(s)
    })
    .await;
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|s| s.endpoints.len() <= 100));

    // A selectorless service with a user-managed slice: left alone.
    svcs.create(
        &PostParams::default(),
        &obj(json!({"metadata": {"name": "manual"}, "spec": {"ports": [{"port": 80}]}})),
    )
    .await
    .expect("service");
    let user = json!({"metadata": {"name": "manual-1", "labels": {"kubernetes.io/service-name": "manual"}},
        "addressType": "IPv4", "endpoints": [{"addresses": ["192.0.2.1"]}], "ports": [{"port": 80}]});
    slices
        .create(&PostParams::default(), &obj(user))
        .await
        .expect("user slice");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let manual = slices_of(&slices, "manual").await;
    assert_eq!(manual.len(), 1);
    assert_eq!(manual[0].endpoints[0].addresses, ["192.0.2.1"]);
}

async fn node_and_loadbalancer_ipam(backend: Backend) {
    let api = ApiServer::start_on(
        backend,
        &[
            "--cluster-cidr",
            "10.244.0.0/22,fd00:244::/56",
            "--loadbalancer-ip-pool",
            "192.0.2.0/30,2001:db8::/126",
        ],
    );
    let client = api.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let mut cidrs = BTreeSet::new();
    for n in ["n1", "n2", "n3", "n4"] {
        nodes
            .create(
                &PostParams::default(),
                &obj(json!({"metadata": {"name": n}})),
            )
            .await
            .expect("node");
    }
    for n in ["n1", "n2", "n3", "n4"] {
        let got = eventually(10, || async {
            nodes.get(n).await.ok().and_then(|x| x.spec?.pod_cidrs)
        })
        .await;
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(
            got[0].ends_with("/24") && got[1].ends_with("/64"),
            "{got:?}"
        );
        assert!(cidrs.insert(got[0].clone()));
    }
    nodes
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "n5"}})),
        )
        .await
        .expect("node");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        nodes
            .get("n5")
            .await
            .expect("n5")
            .spec
            .and_then(|s| s.pod_cidrs)
            .is_none(),
        "the /22 holds four /24s"
    );
    let freed = nodes
        .get("n2")
        .await
        .expect("n2")
        .spec
        .and_then(|s| s.pod_cidr)
        .expect("cidr");
    nodes
        .delete("n2", &DeleteParams::default())
        .await
        .expect("delete");
    nodes
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "n6"}})),
        )
        .await
        .expect("node");
    let got = eventually(10, || async {
        let a = nodes.get("n5").await.ok().and_then(|x| x.spec?.pod_cidr);
        let b = nodes.get("n6").await.ok().and_then(|x| x.spec?.pod_cidr);
        a.or(b)
    })
    .await;
    assert_eq!(got, freed);

    let svcs: Api<Service> = Api::default_namespaced(client.clone());
    let lb = |name: &str, extra: Value| {
        let mut spec = json!({"type": "LoadBalancer", "ports": [{"port": 80}]});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        obj::<Service>(json!({"metadata": {"name": name}, "spec": spec}))
    };
    let ingress = |svc: &str| {
        let svcs = svcs.clone();
        let svc = svc.to_string();
        async move {
            svcs.get(&svc)
                .await
                .ok()
                .and_then(|s| s.status?.load_balancer?.ingress)
                .map(|i| i.into_iter().filter_map(|x| x.ip).collect::<Vec<_>>())
        }
    };
    svcs.create(
        &PostParams::default(),
        &lb("pinned", json!({"loadBalancerIP": "192.0.2.2"})),
    )
    .await
    .expect("lb");
    assert_eq!(eventually(10, || ingress("pinned")).await, ["192.0.2.2"]);
    svcs.create(
        &PostParams::default(),
        &lb("dual", json!({"ipFamilyPolicy": "PreferDualStack"})),
    )
    .await
    .expect("lb");
    let dual = eventually(10, || ingress("dual")).await;
    assert_eq!(
        dual.len(),
        1,
        "single-stack service CIDR: one family: {dual:?}"
    );
    svcs.create(
        &PostParams::default(),
        &lb("other", json!({"loadBalancerClass": "example.com/other"})),
    )
    .await
    .expect("lb");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(ingress("other").await, None);
    let table = api.kubectl_ok(&["get", "svc", "pinned"]);
    assert!(table.contains("192.0.2.2"), "{table}");
    svcs.delete("pinned", &DeleteParams::default())
        .await
        .expect("delete");
    svcs.create(
        &PostParams::default(),
        &lb("again", json!({"loadBalancerIP": "192.0.2.2"})),
    )
    .await
    .expect("lb");
    assert_eq!(eventually(10, || ingress("again")).await, ["192.0.2.2"]);
    // An IP outside every pool: no ingress, a Warning Event naming the
    // pools, and the other Services keep theirs.
    svcs.create(
        &PostParams::default(),
        &lb("outside", json!({"loadBalancerIP": "203.0.113.9"})),
    )
    .await
    .expect("lb");
    let events = eventually(10, || {
        let out = api.kubectl_ok(&["get", "events", "-o", "json"]);
        async move {
            let list: Value = serde_json::from_str(&out).ok()?;
            let found: Vec<Value> = list["items"]
                .as_array()?
                .iter()
                .filter(|e| e["involvedObject"]["name"] == "outside")
                .cloned()
                .collect();
            (!found.is_empty()).then_some(found)
        }
    })
    .await;
    assert_eq!(events[0]["reason"], "AllocationFailed", "{events:?}");
    assert_eq!(events[0]["type"], "Warning");
    let message = events[0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("203.0.113.9") && message.contains("outside every pool"),
        "{message}"
    );
    assert_eq!(ingress("outside").await, None);
    assert_eq!(ingress("again").await, Some(vec!["192.0.2.2".to_string()]));
}

async fn namespace_deletion_and_owner_garbage_collection(backend: Backend) {
    let api = ApiServer::start_on(backend, &[]);
    let client = api.client().await;
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &obj(json!({"metadata": {"name": "doomed"}})),
    )
    .await
    .expect("ns");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "doomed");
    for i in 0..5 {
        cms.create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": format!("c{i}")}})),
        )
        .await
        .expect("cm");
    }
    nss.delete("doomed", &DeleteParams::default())
        .await
        .expect("delete ns");
    let err = cms
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "late"}})),
        )
        .await;
    assert!(err.is_err() || nss.get_opt("doomed").await.expect("get").is_none());
    eventually(10, || async {
        nss.get_opt("doomed")
            .await
            .ok()
            .flatten()
            .is_none()
            .then_some(())
    })
    .await;
    assert!(
        cms.list(&ListParams::default())
            .await
            .expect("list")
            .items
            .is_empty()
    );

    let owners: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let owner = owners
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "owner"}})),
        )
        .await
        .expect("owner");
    let uid = owner.metadata.uid.expect("uid");
    for i in 0..3 {
        let dep = json!({"metadata": {"name": format!("dep{i}"), "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}]}});
        owners
            .create(&PostParams::default(), &obj(dep))
            .await
            .expect("dependent");
    }
    owners
        .delete("owner", &DeleteParams::default())
        .await
        .expect("delete owner");
    eventually(10, || async {
        let left = owners.list(&ListParams::default()).await.ok()?.items;
        left.iter()
            .all(|c| !c.metadata.name.as_deref().unwrap_or("").starts_with("dep"))
            .then_some(())
    })
    .await;

    // Orphan propagation keeps dependents and drops their owner reference.
    let owner = owners
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "owner2"}})),
        )
        .await
        .expect("owner");
    let uid = owner.metadata.uid.expect("uid");
    let dep = json!({"metadata": {"name": "kept", "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner2", "uid": uid}]}});
    owners
        .create(&PostParams::default(), &obj(dep))
        .await
        .expect("dependent");
    owners
        .delete("owner2", &DeleteParams::orphan())
        .await
        .expect("orphan delete");
    eventually(10, || async {
        owners
            .get_opt("owner2")
            .await
            .ok()
            .flatten()
            .is_none()
            .then_some(())
    })
    .await;
    let kept = owners.get("kept").await.expect("dependent kept");
    assert!(
        kept.metadata
            .owner_references
            .unwrap_or_default()
            .is_empty()
    );
}

async fn dual_stack_services_get_a_slice_per_family(backend: Backend) {
    let api = ApiServer::start_on(
        backend,
        &["--service-cluster-ip-range", "10.96.0.0/16,fd00:96::/108"],
    );
    let client = api.client().await;
    let svcs: Api<Service> = Api::default_namespaced(client.clone());
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let slices: Api<EndpointSlice> = Api::default_namespaced(client.clone());
    svcs.create(&PostParams::default(), &obj(json!({"metadata": {"name": "dual"}, "spec": {
        "ipFamilyPolicy": "RequireDualStack", "selector": {"app": "web"}, "ports": [{"port": 80}]}})))
        .await
        .expect("service");
    let pod = json!({"metadata": {"name": "p", "labels": {"app": "web"}}, "spec": {"nodeName": "n", "containers": [{"name": "c", "image": "x"}]}});
    pods.create(&PostParams::default(), &obj(pod))
        .await
        .expect("pod");
    let status = json!({"status": {"podIP": "10.244.0.5", "podIPs": [{"ip": "10.244.0.5"}, {"ip": "fd00:244::5"}],
        "conditions": [{"type": "Ready", "status": "True"}]}});
    pods.patch_status("p", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("status");
    let got = eventually(10, || async {
        let s = slices_of(&slices, "dual").await;
        (s.len() == 2 && s.iter().all(|x| !x.endpoints.is_empty())).then_some(s)
    })
    .await;
    let mut by_family: Vec<(String, String)> = got
        .iter()
        .map(|s| (s.address_type.clone(), s.endpoints[0].addresses[0].clone()))
        .collect();
    by_family.sort();
    assert_eq!(
        by_family,
        [
            ("IPv4".into(), "10.244.0.5".into()),
            ("IPv6".into(), "fd00:244::5".into())
        ]
    );
}

on_both_backends!(
    dual_stack_services_get_a_slice_per_family,
    endpointslices_follow_pods,
    large_services_split_into_slices_of_100_and_user_slices_are_kept,
    node_and_loadbalancer_ipam,
    namespace_deletion_and_owner_garbage_collection
);
