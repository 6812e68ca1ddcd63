//! kube-rs against the real ferry-apiserver: the verbs' semantics, watches,
//! allocation, and optimistic concurrency.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{ApiServer, Backend, eventually};
use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde_json::json;

fn svc(name: &str, spec: serde_json::Value) -> Service {
    serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}),
    )
    .expect("service")
}

fn cm(name: &str, labels: serde_json::Value) -> ConfigMap {
    serde_json::from_value(
        json!({"metadata": {"name": name, "labels": labels}, "data": {"k": "v"}}),
    )
    .expect("configmap")
}

fn status_code(e: &kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

async fn cluster_ips_are_allocated_honoured_rejected_and_released(backend: Backend) {
    let api = ApiServer::start_on(
        backend,
        &["--service-cluster-ip-range", "10.96.0.0/16,fd00:96::/112"],
    );
    let svcs: Api<Service> = Api::default_namespaced(api.client().await);
    let pp = PostParams::default();
    // Requested first, so no random allocation can have taken it.
    let fixed = json!({"clusterIP": "10.96.0.50", "ports": [{"port": 80}]});
    svcs.create(&pp, &svc("fixed", fixed.clone()))
        .await
        .expect("requested IP honoured");

    let a = svcs
        .create(&pp, &svc("a", json!({"ports": [{"port": 80}]})))
        .await
        .expect("create a");
    let spec = a.spec.expect("spec");
    assert_eq!(spec.ip_families.as_deref(), Some(&["IPv4".to_string()][..]));
    assert!(
        spec.cluster_ip
            .as_deref()
            .is_some_and(|ip| ip.starts_with("10.96."))
    );

    let dual = svcs
        .create(
            &pp,
            &svc(
                "dual",
                json!({"ipFamilyPolicy": "PreferDualStack", "ports": [{"port": 80}]}),
            ),
        )
        .await
        .expect("create dual");
    let ips = dual.spec.and_then(|s| s.cluster_ips).expect("clusterIPs");
    assert_eq!(ips.len(), 2, "{ips:?}");
    assert!(ips[1].starts_with("fd00:96::"), "{ips:?}");

    let v6 = svcs
        .create(
            &pp,
            &svc(
                "v6",
                json!({"ipFamilies": ["IPv6"], "ports": [{"port": 80}]}),
            ),
        )
        .await
        .expect("create v6");
    assert!(
        v6.spec
            .and_then(|s| s.cluster_ip)
            .is_some_and(|ip| ip.contains(':'))
    );

    let err = svcs
        .create(&pp, &svc("fixed2", fixed.clone()))
        .await
        .expect_err("duplicate IP");
    assert_eq!(status_code(&err), 422);
    assert!(
        err.to_string().contains("provided IP is already allocated"),
        "{err}"
    );
    let err = svcs
        .create(
            &pp,
            &svc(
                "outside",
                json!({"clusterIP": "10.97.0.1", "ports": [{"port": 80}]}),
            ),
        )
        .await
        .expect_err("out of range");
    assert_eq!(status_code(&err), 422);
    assert!(err.to_string().contains("not in the valid range"), "{err}");

    // Dry run allocates nothing and stores nothing.
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    svcs.create(
        &dry,
        &svc(
            "dry",
            json!({"clusterIP": "10.96.0.60", "ports": [{"port": 80}]}),
        ),
    )
    .await
    .expect("dry run");
    assert!(svcs.get_opt("dry").await.expect("get").is_none());
    svcs.create(
        &pp,
        &svc(
            "after-dry",
            json!({"clusterIP": "10.96.0.60", "ports": [{"port": 80}]}),
        ),
    )
    .await
    .expect("dry run released its IP");

    // Delete releases the IP; a restart rebuilds the allocator from storage.
    svcs.delete("fixed", &DeleteParams::default())
        .await
        .expect("delete");
    svcs.create(&pp, &svc("fixed3", fixed.clone()))
        .await
        .expect("IP released on delete");
    drop(svcs);
    let mut api = api;
    api.restart();
    let svcs: Api<Service> = Api::default_namespaced(api.client().await);
    let err = svcs
        .create(&pp, &svc("fixed4", fixed))
        .await
        .expect_err("still allocated after restart");
    assert_eq!(status_code(&err), 422);

    // Every allocated address is distinct.
    let all = svcs.list(&ListParams::default()).await.expect("list");
    let mut seen = BTreeSet::new();
    for s in &all.items {
        for ip in s
            .spec
            .as_ref()
            .and_then(|s| s.cluster_ips.clone())
            .unwrap_or_default()
        {
            assert!(seen.insert(ip.clone()), "{ip} handed out twice");
        }
    }
}

async fn node_ports_follow_type_changes(backend: Backend) {
    let api = ApiServer::start_on(backend, &["--service-node-port-range", "30000-30005"]);
    let svcs: Api<Service> = Api::default_namespaced(api.client().await);
    let pp = PostParams::default();
    let mut ports = BTreeSet::new();
    for i in 0..3 {
        let s = svcs
            .create(&pp, &svc(&format!("np{i}"), json!({"type": "NodePort", "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 81}]})))
            .await
            .expect("create");
        for p in s.spec.and_then(|s| s.ports).unwrap_or_default() {
            assert!(ports.insert(p.node_port.expect("node port")));
        }
    }
    let err = svcs
        .create(
            &pp,
            &svc("full", json!({"type": "NodePort", "ports": [{"port": 80}]})),
        )
        .await
        .expect_err("range exhausted");
    assert_eq!(status_code(&err), 422);
    // NodePort -> ClusterIP frees the ports of np0.
    let patch = json!({"spec": {"type": "ClusterIP"}});
    let s = svcs
        .patch("np0", &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .expect("to ClusterIP");
    assert!(
        s.spec
            .and_then(|s| s.ports)
            .unwrap_or_default()
            .iter()
            .all(|p| p.node_port.is_none())
    );
    svcs.create(
        &pp,
        &svc(
            "again",
            json!({"type": "NodePort", "ports": [{"port": 80}]}),
        ),
    )
    .await
    .expect("freed port reused");
}

async fn optimistic_concurrency_gives_409(backend: Backend) {
    let api = ApiServer::start_on(backend, &[]);
    let cms: Api<ConfigMap> = Api::default_namespaced(api.client().await);
    let created = cms
        .create(&PostParams::default(), &cm("c", json!({})))
        .await
        .expect("create");
    let mut first = created.clone();
    first.data = Some([("k".to_string(), "one".to_string())].into());
    let mut second = created.clone();
    second.data = Some([("k".to_string(), "two".to_string())].into());
    cms.replace("c", &PostParams::default(), &first)
        .await
        .expect("first update");
    let err = cms
        .replace("c", &PostParams::default(), &second)
        .await
        .expect_err("stale update");
    assert_eq!(status_code(&err), 409);
    assert!(
        err.to_string().contains("the object has been modified"),
        "{err}"
    );
    // A no-op update does not bump the resource version.
    let cur = cms.get("c").await.expect("get");
    let same = cms
        .replace("c", &PostParams::default(), &cur)
        .await
        .expect("no-op update");
    assert_eq!(
        cur.metadata.resource_version,
        same.metadata.resource_version
    );
}

async fn list_paging_and_selectors(backend: Backend) {
    let api = ApiServer::start_on(backend, &[]);
    let client = api.client().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    for i in 0..25 {
        let tier = if i % 2 == 0 { "even" } else { "odd" };
        cms.create(
            &PostParams::default(),
            &cm(&format!("c{i:02}"), json!({"tier": tier})),
        )
        .await
        .expect("create");
    }
    let mut names = Vec::new();
    let mut pages = 0;
    let mut lp = ListParams::default().limit(10);
    loop {
        let page = cms.list(&lp).await.expect("page");
        pages += 1;
        names.extend(page.items.iter().filter_map(|c| c.metadata.name.clone()));
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => break,
        }
    }
    // The 25 and the root-ca-cert-publisher's kube-root-ca.crt.
    assert_eq!(pages, 3);
    assert_eq!(names.len(), 26);
    assert!(names.iter().any(|n| n == "kube-root-ca.crt"));
    let even = cms
        .list(&ListParams::default().labels("tier=even"))
        .await
        .expect("labels");
    assert_eq!(even.items.len(), 13);
    let one = cms
        .list(&ListParams::default().fields("metadata.name=c03"))
        .await
        .expect("fields");
    assert_eq!(one.items.len(), 1);
    let err = cms
        .list(&ListParams::default().fields("spec.bogus=1"))
        .await
        .expect_err("bad field");
    assert_eq!(status_code(&err), 400);
    let all: Api<ConfigMap> = Api::all(client);
    assert!(
        all.list(&ListParams::default())
            .await
            .expect("all")
            .items
            .len()
            >= 25
    );
}

async fn watch_resumes_and_expired_versions_get_410(backend: Backend) {
    let api = ApiServer::start_on(backend, &["--watch-history", "10"]);
    let client = api.client().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    // The controllers' first writes (each namespace's default
    // ServiceAccount and kube-root-ca.crt) are done before the history
    // of 10 is counted.
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(client.clone(), ns);
        eventually(10, || {
            let (cms, sas) = (cms.clone(), sas.clone());
            async move {
                cms.get_opt("kube-root-ca.crt").await.ok().flatten()?;
                sas.get_opt("default").await.ok().flatten().map(drop)
            }
        })
        .await;
    }
    let first = cms
        .create(&PostParams::default(), &cm("w0", json!({})))
        .await
        .expect("create");
    let start_rv = first.metadata.resource_version.clone().expect("rv");
    for i in 1..4 {
        cms.create(&PostParams::default(), &cm(&format!("w{i}"), json!({})))
            .await
            .expect("create");
    }
    // Resuming from start_rv delivers exactly the later writes.
    let mut stream = cms
        .watch(&WatchParams::default().timeout(5), &start_rv)
        .await
        .expect("watch")
        .boxed();
    let mut got = Vec::new();
    while got.len() < 3 {
        match stream.try_next().await.expect("event") {
            Some(WatchEvent::Added(c)) => got.push(c.metadata.name.expect("name")),
            Some(other) => panic!("unexpected {other:?}"),
            None => break,
        }
    }
    assert_eq!(got, ["w1", "w2", "w3"]);

    // Selector transitions: an object leaving the selection is DELETED.
    let mut sel = cms
        .watch(&WatchParams::default().labels("pick=yes").timeout(5), "0")
        .await
        .expect("watch")
        .boxed();
    let patch = |v: &str| json!({"metadata": {"labels": {"pick": v}}});
    cms.patch("w1", &PatchParams::default(), &Patch::Merge(&patch("yes")))
        .await
        .expect("patch");
    cms.patch("w1", &PatchParams::default(), &Patch::Merge(&patch("no")))
        .await
        .expect("patch");
    assert!(matches!(
        sel.try_next().await.expect("ev"),
        Some(WatchEvent::Added(_))
    ));
    assert!(matches!(
        sel.try_next().await.expect("ev"),
        Some(WatchEvent::Deleted(_))
    ));

    // Push the start version out of the 10-event history.
    for i in 0..20 {
        cms.create(&PostParams::default(), &cm(&format!("x{i}"), json!({})))
            .await
            .expect("create");
    }
    let mut stale = cms
        .watch(&WatchParams::default().timeout(5), &start_rv)
        .await
        .expect("watch starts")
        .boxed();
    match stale.try_next().await.expect("event") {
        Some(WatchEvent::Error(e)) => {
            assert_eq!(e.code, 410);
            assert_eq!(e.reason, "Expired");
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }

    // The kube-runtime watcher re-lists after a 410 and converges.
    let (reader, writer) = reflector::store::<ConfigMap>();
    let rf = reflector(writer, watcher(cms.clone(), watcher::Config::default()))
        .applied_objects()
        .for_each(|_| async {});
    let handle = tokio::spawn(rf);
    eventually(10, || {
        let n = reader.state().len();
        // 24 and kube-root-ca.crt.
        async move { (n == 25).then_some(()) }
    })
    .await;
    cms.delete("x0", &DeleteParams::default())
        .await
        .expect("delete");
    eventually(10, || {
        let n = reader.state().len();
        async move { (n == 24).then_some(()) }
    })
    .await;
    handle.abort();
}

async fn streaming_list_watch_ends_initial_events_with_a_bookmark(backend: Backend) {
    let api = ApiServer::start_on(backend, &[]);
    let cms: Api<ConfigMap> = Api::default_namespaced(api.client().await);
    for i in 0..5 {
        cms.create(&PostParams::default(), &cm(&format!("s{i}"), json!({})))
            .await
            .expect("create");
    }
    let (reader, writer) = reflector::store::<ConfigMap>();
    let rf = reflector(
        writer,
        watcher(cms.clone(), watcher::Config::default().streaming_lists()),
    )
    .applied_objects()
    .for_each(|_| async {});
    let handle = tokio::spawn(rf);
    reader.wait_until_ready().await.expect("initial events end");
    // The five and kube-root-ca.crt (root-ca-cert-publisher's).
    assert_eq!(reader.state().len(), 6);
    cms.create(&PostParams::default(), &cm("s5", json!({})))
        .await
        .expect("create");
    eventually(10, || {
        let n = reader.state().len();
        async move { (n == 7).then_some(()) }
    })
    .await;
    handle.abort();
}

async fn finalizers_namespaces_and_errors(backend: Backend) {
    let api = ApiServer::start_on(backend, &[]);
    let client = api.client().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let held: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}}),
    )
    .expect("cm");
    cms.create(&PostParams::default(), &held)
        .await
        .expect("create");
    cms.delete("held", &DeleteParams::default())
        .await
        .expect("delete");
    let marked = cms.get("held").await.expect("still there");
    assert!(marked.metadata.deletion_timestamp.is_some());
    let clear = json!({"metadata": {"finalizers": null}});
    cms.patch("held", &PatchParams::default(), &Patch::Merge(&clear))
        .await
        .expect("clear finalizers");
    assert!(cms.get_opt("held").await.expect("get").is_none());

    let generated: ConfigMap =
        serde_json::from_value(json!({"metadata": {"generateName": "gen-"}})).expect("cm");
    let g = cms
        .create(&PostParams::default(), &generated)
        .await
        .expect("generateName");
    let name = g.metadata.name.expect("name");
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");
    assert!(g.metadata.uid.is_some() && g.metadata.creation_timestamp.is_some());

    let missing: Api<ConfigMap> = Api::namespaced(client.clone(), "nope");
    let err = missing
        .create(&PostParams::default(), &cm("x", json!({})))
        .await
        .expect_err("no namespace");
    assert_eq!(status_code(&err), 404);
    let err = cms
        .create(&PostParams::default(), &cm("Bad_Name", json!({})))
        .await
        .expect_err("bad name");
    assert_eq!(status_code(&err), 422);

    let nss: Api<Namespace> = Api::all(client);
    let ns = nss.get("default").await.expect("default ns");
    assert_eq!(
        ns.metadata
            .labels
            .and_then(|l| l.get("kubernetes.io/metadata.name").cloned())
            .as_deref(),
        Some("default")
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
}

async fn server_side_apply_with_kube_rs(backend: Backend) {
    let api = ApiServer::start_on(backend, &[]);
    let cms: Api<ConfigMap> = Api::default_namespaced(api.client().await);
    let config = |v: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"mode": v, "a": "1"}});
    let created = cms
        .patch(
            "ssa",
            &PatchParams::apply("operator-a"),
            &Patch::Apply(&config("fast")),
        )
        .await
        .expect("apply creates");
    let managers: Vec<String> = created
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert_eq!(managers, ["operator-a"]);
    let err = cms
        .patch(
            "ssa",
            &PatchParams::apply("operator-b"),
            &Patch::Apply(&config("slow")),
        )
        .await
        .expect_err("conflict");
    match &err {
        kube::Error::Api(s) => {
            assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
            let causes = s
                .details
                .as_ref()
                .map(|d| d.causes.clone())
                .unwrap_or_default();
            assert_eq!(causes.len(), 1, "{causes:?}");
            assert_eq!(
                (causes[0].reason.as_str(), causes[0].field.as_str()),
                ("FieldManagerConflict", ".data.mode")
            );
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let forced = cms
        .patch(
            "ssa",
            &PatchParams::apply("operator-b").force(),
            &Patch::Apply(&config("slow")),
        )
        .await
        .expect("forced");
    assert_eq!(
        forced
            .data
            .as_ref()
            .and_then(|d| d.get("mode"))
            .map(String::as_str),
        Some("slow")
    );
    let err = cms
        .patch("ssa", &PatchParams::default(), &Patch::Apply(&config("x")))
        .await
        .expect_err("no field manager");
    assert_eq!(status_code(&err), 422);
}

async fn network_policy_defaults_validation_and_deletecollection(backend: Backend) {
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    let api = ApiServer::start_on(backend, &[]);
    let client = api.client().await;
    let nps: Api<NetworkPolicy> = Api::default_namespaced(client.clone());
    let np = |name: &str, spec: serde_json::Value| -> NetworkPolicy {
        serde_json::from_value(
            json!({"metadata": {"name": name, "labels": {"set": "a"}}, "spec": spec}),
        )
        .expect("np")
    };
    let ingress_only = nps
        .create(
            &PostParams::default(),
            &np(
                "in",
                json!({"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]}),
            ),
        )
        .await
        .expect("create");
    let spec = ingress_only.spec.expect("spec");
    assert_eq!(
        spec.policy_types.as_deref(),
        Some(&["Ingress".to_string()][..])
    );
    let port = &spec.ingress.expect("ingress")[0]
        .ports
        .clone()
        .expect("ports")[0];
    assert_eq!(port.protocol.as_deref(), Some("TCP"));
    assert_eq!(ingress_only.metadata.generation, Some(1));
    let both = nps
        .create(&PostParams::default(), &np("both", json!({"podSelector": {"matchLabels": {"app": "db"}},
            "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}], "ports": [{"port": 5000, "endPort": 5100, "protocol": "UDP"}]}]})))
        .await
        .expect("create");
    assert_eq!(
        both.spec.and_then(|s| s.policy_types).as_deref(),
        Some(&["Ingress".to_string(), "Egress".to_string()][..])
    );
    for (name, spec, field) in [
        (
            "end-lt",
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": 90, "endPort": 80}]}]}),
            "spec.ingress[0].ports[0].endPort",
        ),
        (
            "end-named",
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": "http", "endPort": 80}]}]}),
            "spec.ingress[0].ports[0].endPort",
        ),
        (
            "proto",
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": 80, "protocol": "ICMP"}]}]}),
            "spec.ingress[0].ports[0].protocol",
        ),
        (
            "except",
            json!({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.1.0.0/24"]}}]}]}),
            "spec.egress[0].to[0].ipBlock.except[0]",
        ),
        (
            "types",
            json!({"podSelector": {}, "policyTypes": ["Sideways"]}),
            "spec.policyTypes[0]",
        ),
    ] {
        let err = nps
            .create(&PostParams::default(), &np(name, spec))
            .await
            .expect_err(name);
        assert_eq!(status_code(&err), 422, "{name}");
        match err {
            kube::Error::Api(s) => {
                let fields: Vec<String> = s
                    .details
                    .map(|d| d.causes.into_iter().map(|c| c.field).collect())
                    .unwrap_or_default();
                assert!(fields.iter().any(|f| f == field), "{name}: {fields:?}");
            }
            other => panic!("{other:?}"),
        }
    }
    // A spec change bumps the generation.
    let patch = json!({"spec": {"podSelector": {"matchLabels": {"app": "web"}}}});
    let patched = nps
        .patch("in", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch");
    assert_eq!(patched.metadata.generation, Some(2));

    let deleted = nps
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels("set=a"),
        )
        .await
        .expect("deletecollection");
    let n = deleted.left().map(|l| l.items.len()).unwrap_or(0);
    assert_eq!(n, 2);
    assert!(
        nps.list(&ListParams::default())
            .await
            .expect("list")
            .items
            .is_empty()
    );
}

async fn discovery_documents(backend: Backend) {
    let api = ApiServer::start_on(backend, &[]);
    let client = api.client().await;
    let get = |path: &str, accept: &str| {
        http::Request::get(path)
            .header("Accept", accept)
            .body(Vec::new())
            .expect("request")
    };
    let version: serde_json::Value = client
        .request(get("/version", "application/json"))
        .await
        .expect("version");
    assert_eq!(version["minor"], "32");
    let agg: serde_json::Value = client
        .request(get(
            "/apis",
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json",
        ))
        .await
        .expect("aggregated");
    assert_eq!(agg["kind"], "APIGroupDiscoveryList");
    let groups: Vec<&str> = agg["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|g| g["metadata"]["name"].as_str())
        .collect();
    assert_eq!(
        groups,
        [
            "apps",
            "discovery.k8s.io",
            "networking.k8s.io",
            "coordination.k8s.io",
            "policy",
            "rbac.authorization.k8s.io",
            "authorization.k8s.io",
            "authentication.k8s.io"
        ]
    );
    let legacy: serde_json::Value = client
        .request(get("/api/v1", "application/json"))
        .await
        .expect("resources");
    let names: Vec<&str> = legacy["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    for want in [
        "services",
        "services/status",
        "pods",
        "pods/status",
        "namespaces/finalize",
        "endpoints",
        "serviceaccounts/token",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let v3: serde_json::Value = client
        .request(get("/openapi/v3", "application/json"))
        .await
        .expect("v3 root");
    assert!(v3["paths"]["apis/discovery.k8s.io/v1"]["serverRelativeURL"].is_string());
    let v2: serde_json::Value = client
        .request(get("/openapi/v2", "application/json"))
        .await
        .expect("v2");
    assert_eq!(v2["swagger"], "2.0");
    let discovered = kube::Discovery::new(client)
        .run()
        .await
        .expect("kube-rs discovery");
    assert!(discovered.has_group("networking.k8s.io"));
}

async fn deletion_edge_cases(backend: Backend) {
    use k8s_openapi::api::core::v1::Pod;
    let api = ApiServer::start_on(backend, &[]);
    let client = api.client().await;
    // A pod in its grace period survives an update.
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let pod: Pod =
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n",
        "terminationGracePeriodSeconds": 30, "containers": [{"name": "c", "image": "x"}]}}))
        .expect("pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create");
    pods.delete("p", &DeleteParams::default())
        .await
        .expect("delete");
    let patch = json!({"metadata": {"labels": {"touched": "yes"}}});
    pods.patch("p", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch terminating pod");
    let p = pods
        .get("p")
        .await
        .expect("still there during its grace period");
    assert!(p.metadata.deletion_timestamp.is_some());
    assert_eq!(p.metadata.deletion_grace_period_seconds, Some(30));

    // A Service removed by dropping its last finalizer gives its IP back.
    let svcs: Api<Service> = Api::default_namespaced(client.clone());
    let held: Service = serde_json::from_value(
        json!({"metadata": {"name": "held", "finalizers": ["example.com/x"]},
        "spec": {"clusterIP": "10.96.0.77", "ports": [{"port": 80}]}}),
    )
    .expect("svc");
    svcs.create(&PostParams::default(), &held)
        .await
        .expect("create");
    svcs.delete("held", &DeleteParams::default())
        .await
        .expect("delete");
    let clear = json!({"metadata": {"finalizers": null}});
    svcs.patch("held", &PatchParams::default(), &Patch::Merge(&clear))
        .await
        .expect("clear finalizers");
    assert!(svcs.get_opt("held").await.expect("get").is_none());
    svcs.create(
        &PostParams::default(),
        &svc(
            "again",
            json!({"clusterIP": "10.96.0.77", "ports": [{"port": 80}]}),
        ),
    )
    .await
    .expect("the IP was released");

    // An owner of a kind this server does not serve is never taken for gone.
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let owned: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "owned", "ownerReferences": [
        {"apiVersion": "example.com/v1", "kind": "Widget", "name": "d", "uid": "6b5d3c1e-0000-4000-8000-000000000001"}]}}))
    .expect("cm");
    cms.create(&PostParams::default(), &owned)
        .await
        .expect("create");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(cms.get_opt("owned").await.expect("get").is_some());

    // A watch from a version the server has not reached ends with 410, so
    // clients relist; a huge timeout is capped rather than overflowing.
    let mut future = cms
        .watch(&WatchParams::default().timeout(5), "999999999")
        .await
        .expect("watch")
        .boxed();
    match future.try_next().await.expect("event") {
        Some(WatchEvent::Error(e)) => {
            assert_eq!(e.code, 410);
            assert!(
                e.message.contains("Too large resource version"),
                "{}",
                e.message
            );
        }
        other => panic!("future resourceVersion accepted: {other:?}"),
    }
    let req = http::Request::get("/api/v1/namespaces/default/configmaps?watch=true&timeoutSeconds=18446744073709551615&resourceVersion=0")
        .body(Vec::new())
        .expect("request");
    let mut stream = client
        .request_events::<ConfigMap>(req)
        .await
        .expect("watch with a huge timeout")
        .boxed();
    assert!(matches!(
        stream.try_next().await.expect("event"),
        Some(WatchEvent::Added(_))
    ));
}

on_both_backends!(
    deletion_edge_cases,
    network_policy_defaults_validation_and_deletecollection,
    discovery_documents,
    server_side_apply_with_kube_rs,
    cluster_ips_are_allocated_honoured_rejected_and_released,
    node_ports_follow_type_changes,
    optimistic_concurrency_gives_409,
    list_paging_and_selectors,
    watch_resumes_and_expired_versions_get_410,
    streaming_list_watch_ends_initial_events_with_a_bookmark,
    finalizers_namespaces_and_errors
);
