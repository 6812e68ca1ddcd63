//! Workloads against the real ferry-apiserver with kubectl v1.32: the
//! shared/seeds 003 walkthrough (a Deployment of three nginx replicas)
//! byte for byte, `get -o wide` columns, self-healing, scaling, rollouts
//! and undo, Recreate, adoption and release, and Secrets.
//!
//! Nothing runs pods here (no node runtime): where readiness matters, a
//! stand-in kubelet marks pods Running and Ready by writing their status.

mod common;

use std::collections::BTreeSet;

use common::kubelet::StandInKubelet;
use common::{ApiServer, have_kubectl, json_of, wait};
use serde_json::{Value, json};

/// The manifest of shared/seeds 003, as written there.
const SEED_003: &str = r#"apiVersion: apps/v1 # APIバージョン
kind: Deployment #リソースの種類
metadata:
  name: nginx-test
spec:
  selector:
    matchLabels:
      app: nginx #テンプレートを指定
  replicas: 3 #レプリカ数(Podの数)
  template:
    metadata:
      labels:
        app: nginx #「nginx」というLabelを付ける
    spec:
      containers:
      - name: nginx
        image: nginx:latest
        ports:
        - containerPort: 80 #ポート番号
---
apiVersion: v1
kind: Service #リソースの種類
metadata:
  name: service-test
spec:
  type: NodePort
  ports:
    - port: 80
      nodePort: 30000
  selector: #下記のLabel(ラベル)を指定したPodに伝送
    app: nginx
"#;

fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect()
}

fn row(table: &str, name: &str) -> Vec<String> {
    rows(table)
        .into_iter()
        .find(|r| r.first().map(String::as_str) == Some(name))
        .unwrap_or_else(|| panic!("no row {name} in:\n{table}"))
}

fn header(table: &str) -> Vec<String> {
    rows(table).into_iter().next().unwrap_or_default()
}

/// Live pods (not being deleted) matching `selector`: name -> object.
fn pods(api: &ApiServer, selector: &str) -> Vec<Value> {
    json_of(api, &["get", "pods", "-l", selector])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.pointer("/metadata/deletionTimestamp").is_none())
        .collect()
}

fn names(items: &[Value]) -> BTreeSet<String> {
    items
        .iter()
        .filter_map(|p| p.pointer("/metadata/name")?.as_str().map(String::from))
        .collect()
}

fn replica_sets(api: &ApiServer, selector: &str) -> Vec<Value> {
    let mut rs = json_of(api, &["get", "rs", "-l", selector])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    rs.sort_by_key(|r| {
        r["metadata"]["creationTimestamp"]
            .as_str()
            .map(String::from)
    });
    rs
}

fn rs_of(api: &ApiServer, deploy: &str) -> Vec<Value> {
    replica_sets(api, "app")
        .into_iter()
        .filter(|r| {
            r.pointer("/metadata/ownerReferences/0/name")
                .and_then(Value::as_str)
                == Some(deploy)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_003_deployment_walkthrough_scale_rollout_and_undo() {
    if !have_kubectl() {
        return;
    }
    let api = ApiServer::start(&[]);
    let out = api.kubectl_apply_stdin(&["create", "-f", "-"], Some(SEED_003));
    assert!(out.contains("deployment.apps/nginx-test created"), "{out}");
    assert!(out.contains("service/service-test created"), "{out}");

    // Three pods named <rs>-<5 chars>, controlled by the ReplicaSet
    // <deployment>-<pod-template-hash>.
    let first = wait(20, "3 pods", || {
        Some(pods(&api, "app=nginx")).filter(|p| p.len() == 3)
    });
    let rs = wait(10, "one rs", || {
        Some(rs_of(&api, "nginx-test")).filter(|r| r.len() == 1)
    })
    .remove(0);
    let rs_name = rs["metadata"]["name"]
        .as_str()
        .expect("rs name")
        .to_string();
    let hash = rs["metadata"]["labels"]["pod-template-hash"]
        .as_str()
        .expect("hash")
        .to_string();
    assert_eq!(rs_name, format!("nginx-test-{hash}"));
    for p in &first {
        let name = p["metadata"]["name"].as_str().expect("name");
        let suffix = name
            .strip_prefix(&format!("{rs_name}-"))
            .expect("pod named after its rs");
        assert_eq!(suffix.len(), 5, "{name}");
        assert_eq!(p["metadata"]["labels"]["pod-template-hash"], json!(hash));
        assert_eq!(p["metadata"]["ownerReferences"][0]["kind"], "ReplicaSet");
        assert_eq!(p["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(p["spec"]["containers"][0]["imagePullPolicy"], "Always");
    }
    let deploy = json_of(&api, &["get", "deploy", "nginx-test"]);
    assert_eq!(
        deploy["spec"]["strategy"]["rollingUpdate"],
        json!({"maxSurge": "25%", "maxUnavailable": "25%"})
    );
    assert_eq!(deploy["spec"]["revisionHistoryLimit"], 10);
    assert_eq!(deploy["spec"]["progressDeadlineSeconds"], 600);
    assert_eq!(
        deploy["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
        30
    );

    // Not ready yet: 0/3, nothing available.
    let table = api.kubectl_ok(&["get", "deploy", "-o", "wide"]);
    assert_eq!(
        header(&table),
        [
            "NAME",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "AGE",
            "CONTAINERS",
            "IMAGES",
            "SELECTOR"
        ]
    );

    let kubelet = StandInKubelet {
        container_statuses: true,
        ..Default::default()
    }
    .start(api.client().await);
    wait(20, "3/3 available", || {
        let r = row(
            &api.kubectl_ok(&["get", "deploy", "-o", "wide"]),
            "nginx-test",
        );
        (r[1] == "3/3" && r[3] == "3").then_some(())
    });
    let r = row(
        &api.kubectl_ok(&["get", "deploy", "-o", "wide"]),
        "nginx-test",
    );
    assert_eq!(
        (r[1].as_str(), r[2].as_str(), r[3].as_str()),
        ("3/3", "3", "3")
    );
    assert_eq!(&r[5..], ["nginx", "nginx:latest", "app=nginx"]);
    let table = api.kubectl_ok(&["get", "rs", "-o", "wide"]);
    assert_eq!(
        header(&table),
        [
            "NAME",
            "DESIRED",
            "CURRENT",
            "READY",
            "AGE",
            "CONTAINERS",
            "IMAGES",
            "SELECTOR"
        ]
    );
    let r = wait(10, "rs 3 ready", || {
        Some(row(&api.kubectl_ok(&["get", "rs", "-o", "wide"]), &rs_name)).filter(|r| r[3] == "3")
    });
    assert_eq!((r[1].as_str(), r[2].as_str()), ("3", "3"));
    assert_eq!(
        &r[5..],
        [
            "nginx",
            "nginx:latest",
            &format!("app=nginx,pod-template-hash={hash}")
        ]
    );

    let described = wait(10, "described complete", || {
        let d = api.kubectl_ok(&["describe", "deploy", "nginx-test"]);
        d.contains("NewReplicaSetAvailable").then_some(d)
    });
    for line in [
        "deployment.kubernetes.io/revision: 1",
        "Selector:               app=nginx",
        "Replicas:               3 desired | 3 updated | 3 total | 3 available | 0 unavailable",
        "StrategyType:           RollingUpdate",
        "RollingUpdateStrategy:  25% max unavailable, 25% max surge",
        "Image:         nginx:latest",
        "OldReplicaSets:  <none>",
    ] {
        assert!(
            described.contains(line),
            "{line:?} missing in:\n{described}"
        );
    }
    assert!(
        described.contains(&format!(
            "NewReplicaSet:   {rs_name} (3/3 replicas created)"
        )),
        "{described}"
    );
    let lines: Vec<Vec<&str>> = described
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(
        lines.contains(&vec!["Available", "True", "MinimumReplicasAvailable"]),
        "{described}"
    );
    assert!(
        lines.contains(&vec!["Progressing", "True", "NewReplicaSetAvailable"]),
        "{described}"
    );
    assert!(
        described.lines().any(|l| l.contains("ScalingReplicaSet")
            && l.contains("deployment-controller")
            && l.ends_with(&format!("Scaled up replica set {rs_name} from 0 to 3"))),
        "{described}"
    );
    let rs_described = api.kubectl_ok(&["describe", "rs", &rs_name]);
    assert!(
        rs_described.contains("Controlled By:  Deployment/nginx-test"),
        "{rs_described}"
    );
    assert!(rs_described.contains("SuccessfulCreate"), "{rs_described}");
    let pod_described = api.kubectl_ok(&[
        "describe",
        "pod",
        first[0]["metadata"]["name"].as_str().expect("name"),
    ]);
    assert!(
        pod_described
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["Controlled", "By:", &format!("ReplicaSet/{rs_name}")]),
        "{pod_described}"
    );

    let all = api.kubectl_ok(&["get", "all"]);
    assert!(all.contains("deployment.apps/nginx-test"), "{all}");
    assert!(all.contains(&format!("replicaset.apps/{rs_name}")), "{all}");

    // Self-healing: a deleted pod is replaced.
    let victim = first[0]["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_string();
    let out = api.kubectl_ok(&["delete", "pod", &victim]);
    assert!(out.contains(&format!("pod \"{victim}\" deleted")), "{out}");
    let healed = wait(20, "replacement pod", || {
        let now = names(&pods(&api, "app=nginx"));
        (now.len() == 3 && !now.contains(&victim)).then_some(now)
    });
    assert_eq!(healed.intersection(&names(&first)).count(), 2);

    // kubectl scale goes through the scale subresource.
    let raw: Value = serde_json::from_str(&api.kubectl_ok(&[
        "get",
        "--raw",
        "/apis/apps/v1/namespaces/default/deployments/nginx-test/scale",
    ]))
    .expect("scale");
    assert_eq!(raw["kind"], "Scale");
    assert_eq!(raw["apiVersion"], "autoscaling/v1");
    assert_eq!(raw["spec"]["replicas"], 3);
    assert_eq!(raw["status"]["selector"], "app=nginx");
    let out = api.kubectl_ok(&["scale", "deploy/nginx-test", "--replicas=5"]);
    assert!(out.contains("deployment.apps/nginx-test scaled"), "{out}");
    wait(20, "5 pods", || {
        Some(()).filter(|_| pods(&api, "app=nginx").len() == 5)
    });
    wait(20, "5/5", || {
        Some(()).filter(|_| row(&api.kubectl_ok(&["get", "deploy"]), "nginx-test")[1] == "5/5")
    });
    api.kubectl_ok(&["scale", "deploy/nginx-test", "--replicas=2"]);
    wait(20, "2 pods", || {
        Some(()).filter(|_| pods(&api, "app=nginx").len() == 2)
    });
    let d = wait(20, "2/2", || {
        let d = api.kubectl_ok(&["describe", "deploy", "nginx-test"]);
        d.contains("2 desired | 2 updated | 2 total | 2 available")
            .then_some(d)
    });
    assert!(
        d.contains(&format!("Scaled up replica set {rs_name} from 3 to 5")),
        "{d}"
    );
    assert!(
        d.contains(&format!("Scaled down replica set {rs_name} from 5 to 2")),
        "{d}"
    );
    let rs_events = api.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={rs_name}"),
    ]);
    assert!(rs_events.contains("SuccessfulDelete"), "{rs_events}");

    // A new image rolls out to a second ReplicaSet, then undo brings the
    // first back as revision 3.
    api.kubectl_ok(&["set", "image", "deploy/nginx-test", "nginx=nginx:1.25"]);
    let out = api.kubectl_ok(&["rollout", "status", "deploy/nginx-test", "--timeout=60s"]);
    assert!(
        out.contains("deployment \"nginx-test\" successfully rolled out"),
        "{out}"
    );
    let sets = rs_of(&api, "nginx-test");
    assert_eq!(sets.len(), 2, "{sets:?}");
    let new_rs = sets
        .iter()
        .find(|r| r["metadata"]["name"] != json!(rs_name))
        .expect("new rs");
    assert_eq!(
        new_rs["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.25"
    );
    assert_eq!(
        new_rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "2"
    );
    let new_name = new_rs["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_string();
    wait(20, "old rs drained", || {
        let live = pods(&api, "app=nginx");
        (live.len() == 2
            && live
                .iter()
                .all(|p| p["spec"]["containers"][0]["image"] == "nginx:1.25"))
        .then_some(())
    });
    let history = api.kubectl_ok(&["rollout", "history", "deploy/nginx-test"]);
    let revs: Vec<String> = rows(&history)
        .into_iter()
        .filter_map(|r| r.first().cloned())
        .filter(|c| c.parse::<u32>().is_ok())
        .collect();
    assert_eq!(revs, ["1", "2"], "{history}");
    let out = api.kubectl_ok(&["rollout", "undo", "deploy/nginx-test"]);
    assert!(out.contains("rolled back"), "{out}");
    let out = api.kubectl_ok(&["rollout", "status", "deploy/nginx-test", "--timeout=60s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    let sets = rs_of(&api, "nginx-test");
    assert_eq!(sets.len(), 2, "undo reuses the first ReplicaSet: {sets:?}");
    let back = sets
        .iter()
        .find(|r| r["metadata"]["name"] == json!(rs_name))
        .expect("first rs");
    assert_eq!(
        back["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "3"
    );
    assert_eq!(
        back["metadata"]["annotations"]["deployment.kubernetes.io/revision-history"],
        "1"
    );
    assert_eq!(back["spec"]["replicas"], 2);
    wait(20, "new rs scaled down", || {
        let r = row(&api.kubectl_ok(&["get", "rs"]), &new_name);
        (r[1] == "0" && r[2] == "0").then_some(())
    });
    let history = api.kubectl_ok(&["rollout", "history", "deploy/nginx-test"]);
    let revs: Vec<String> = rows(&history)
        .into_iter()
        .filter_map(|r| r.first().cloned())
        .filter(|c| c.parse::<u32>().is_ok())
        .collect();
    assert_eq!(revs, ["2", "3"], "{history}");
    let r = row(
        &api.kubectl_ok(&["get", "deploy", "-o", "wide"]),
        "nginx-test",
    );
    assert_eq!(r[6], "nginx:latest");
    let deploy = json_of(&api, &["get", "deploy", "nginx-test"]);
    assert_eq!(
        deploy["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "3"
    );
    assert!(
        deploy["status"]["observedGeneration"].as_i64()
            >= deploy["metadata"]["generation"].as_i64()
    );

    // Deleting the Deployment takes its ReplicaSets and pods with it.
    api.kubectl_ok(&["delete", "deploy", "nginx-test"]);
    wait(20, "cascade", || {
        (rs_of(&api, "nginx-test").is_empty() && pods(&api, "app=nginx").is_empty()).then_some(())
    });
    kubelet.abort();
}

const RECREATE: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  strategy:
    type: Recreate
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: web
        image: httpd:2.4
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreate_adoption_release_validation_and_secrets() {
    if !have_kubectl() {
        return;
    }
    let api = ApiServer::start(&[]);
    let kubelet = StandInKubelet {
        container_statuses: true,
        ..Default::default()
    }
    .start(api.client().await);

    // Recreate: the old ReplicaSet goes to 0 and its pods are gone before
    // the new one is scaled up.
    api.kubectl_apply_stdin(&["create", "-f", "-"], Some(RECREATE));
    let out = api.kubectl_ok(&["rollout", "status", "deploy/web", "--timeout=30s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    let first = names(&pods(&api, "app=web"));
    assert_eq!(first.len(), 2);
    api.kubectl_ok(&["set", "image", "deploy/web", "web=httpd:2.4.62"]);
    let out = api.kubectl_ok(&["rollout", "status", "deploy/web", "--timeout=30s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    let sets = rs_of(&api, "web");
    assert_eq!(sets.len(), 2);
    let (old, new) = (&sets[0], &sets[1]);
    assert_eq!(
        (
            old["spec"]["replicas"].clone(),
            new["spec"]["replicas"].clone()
        ),
        (json!(0), json!(2))
    );
    // Lists come in name order; the store's revisions give the order the
    // events were written in (their timestamps have whole seconds).
    let mut listed = json_of(
        &api,
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=web,reason=ScalingReplicaSet",
        ],
    )["items"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    listed.sort_by_key(|e| {
        e["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    });
    let events: Vec<String> = listed
        .iter()
        .map(|e| e["message"].as_str().unwrap_or("").to_string())
        .collect();
    let down = format!(
        "Scaled down replica set {} from 2 to 0",
        old["metadata"]["name"].as_str().unwrap_or("")
    );
    let up = format!(
        "Scaled up replica set {} from 0 to 2",
        new["metadata"]["name"].as_str().unwrap_or("")
    );
    let (d, u) = (
        events
            .iter()
            .position(|m| *m == down)
            .unwrap_or_else(|| panic!("{down} in {events:?}")),
        events
            .iter()
            .position(|m| *m == up)
            .unwrap_or_else(|| panic!("{up} in {events:?}")),
    );
    assert!(d < u, "scaled up before scaling down: {events:?}");
    let now = names(&pods(&api, "app=web"));
    assert!(now.is_disjoint(&first), "{now:?} {first:?}");

    // Adoption: an orphan pod matching a new ReplicaSet's selector is
    // adopted and counted; release: a pod relabelled out of the selector
    // loses its controller and is replaced.
    let orphan = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"stray","labels":{"app":"cache"}},"spec":{"containers":[{"name":"c","image":"redis:7"}]}}"#;
    api.kubectl_apply_stdin(&["create", "-f", "-"], Some(orphan));
    let rs = r#"{"apiVersion":"apps/v1","kind":"ReplicaSet","metadata":{"name":"cache"},"spec":{"replicas":2,"selector":{"matchLabels":{"app":"cache"}},"template":{"metadata":{"labels":{"app":"cache"}},"spec":{"containers":[{"name":"c","image":"redis:7"}]}}}}"#;
    api.kubectl_apply_stdin(&["create", "-f", "-"], Some(rs));
    let rs_uid = json_of(&api, &["get", "rs", "cache"])["metadata"]["uid"].clone();
    let cache = wait(20, "2 cache pods", || {
        Some(pods(&api, "app=cache")).filter(|p| p.len() == 2)
    });
    let stray = cache
        .iter()
        .find(|p| p["metadata"]["name"] == "stray")
        .expect("stray kept");
    assert_eq!(stray["metadata"]["ownerReferences"][0]["uid"], rs_uid);
    assert_eq!(stray["metadata"]["ownerReferences"][0]["controller"], true);
    api.kubectl_ok(&["label", "pod", "stray", "app=loose", "--overwrite"]);
    let released = wait(20, "released", || {
        let p = json_of(&api, &["get", "pod", "stray"]);
        p.pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
            .then_some(p)
    });
    assert_eq!(released["metadata"]["labels"]["app"], "loose");
    wait(20, "replacement", || {
        let p = names(&pods(&api, "app=cache"));
        (p.len() == 2 && !p.contains("stray")).then_some(())
    });
    let table = api.kubectl_ok(&["scale", "rs", "cache", "--replicas=1"]);
    assert!(table.contains("replicaset.apps/cache scaled"), "{table}");
    wait(20, "1 cache pod", || {
        Some(()).filter(|_| pods(&api, "app=cache").len() == 1)
    });

    // Validation as kube-apiserver words it.
    let bad = RECREATE
        .replace("name: web\nspec", "name: bad\nspec")
        .replace(
            "      labels:\n        app: web",
            "      labels:\n        app: other",
        );
    let err = api.kubectl_err(&["create", "-f", "-"], Some(&bad));
    assert!(
        err.contains("`selector` does not match template `labels`"),
        "{err}"
    );
    let err = api.kubectl_err(&["patch", "deploy", "web", "-p", r#"{"spec":{"selector":{"matchLabels":{"app":"web","x":"y"}},"template":{"metadata":{"labels":{"x":"y"}}}}}"#], None);
    assert!(err.contains("field is immutable"), "{err}");
    let err = api.kubectl_err(&["scale", "deploy/web", "--replicas=-1"], None);
    assert!(!err.is_empty());

    // Secrets: from literals (protobuf from kubectl's typed client) and
    // stringData merged into data.
    let out = api.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "creds",
        "--from-literal=user=admin",
        "--from-literal=pass=s3cret",
    ]);
    assert!(out.contains("secret/creds created"), "{out}");
    let s = json_of(&api, &["get", "secret", "creds"]);
    assert_eq!(s["type"], "Opaque");
    assert_eq!(s["data"], json!({"user": "YWRtaW4=", "pass": "czNjcmV0"}));
    let string_data = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: app\ntype: Opaque\ndata:\n  a: eA==\nstringData:\n  b: hello\n";
    api.kubectl_apply_stdin(&["apply", "-f", "-"], Some(string_data));
    let s = json_of(&api, &["get", "secret", "app"]);
    assert_eq!(s["data"], json!({"a": "eA==", "b": "aGVsbG8="}));
    assert!(s.get("stringData").is_none());
    let table = api.kubectl_ok(&["get", "secrets"]);
    assert_eq!(header(&table), ["NAME", "TYPE", "DATA", "AGE"]);
    assert_eq!(&row(&table, "creds")[1..3], ["Opaque", "2"]);
    let err = api.kubectl_err(
        &[
            "create",
            "secret",
            "tls",
            "t",
            "--cert=/dev/null",
            "--key=/dev/null",
        ],
        None,
    );
    assert!(!err.is_empty());

    // The other apps kinds are served, with their columns.
    let ds = r#"{"apiVersion":"apps/v1","kind":"DaemonSet","metadata":{"name":"agent"},"spec":{"selector":{"matchLabels":{"app":"agent"}},"template":{"metadata":{"labels":{"app":"agent"}},"spec":{"nodeSelector":{"kubernetes.io/os":"linux"},"containers":[{"name":"a","image":"busybox"}]}}}}"#;
    let sts = r#"{"apiVersion":"apps/v1","kind":"StatefulSet","metadata":{"name":"db"},"spec":{"serviceName":"db","replicas":2,"selector":{"matchLabels":{"app":"db"}},"template":{"metadata":{"labels":{"app":"db"}},"spec":{"containers":[{"name":"pg","image":"postgres:16"}]}}}}"#;
    let cr = r#"{"apiVersion":"apps/v1","kind":"ControllerRevision","metadata":{"name":"db-1"},"revision":1,"data":{"spec":{}}}"#;
    for m in [ds, sts, cr] {
        api.kubectl_apply_stdin(&["create", "-f", "-"], Some(m));
    }
    let table = api.kubectl_ok(&["get", "ds", "-o", "wide"]);
    assert_eq!(
        header(&table),
        [
            "NAME",
            "DESIRED",
            "CURRENT",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "NODE",
            "SELECTOR",
            "AGE",
            "CONTAINERS",
            "IMAGES",
            "SELECTOR"
        ]
    );
    assert_eq!(row(&table, "agent")[6], "kubernetes.io/os=linux");
    let table = api.kubectl_ok(&["get", "sts", "-o", "wide"]);
    assert_eq!(
        header(&table),
        ["NAME", "READY", "AGE", "CONTAINERS", "IMAGES"]
    );
    // READY is `<ready>/<desired>`; how many are ready yet depends on how
    // far the StatefulSet controller and the stand-in kubelet have come.
    let ready = row(&table, "db")[1].to_owned();
    assert!(["0/2", "1/2", "2/2"].contains(&ready.as_str()), "{table}");
    let table = api.kubectl_ok(&["get", "controllerrevisions"]);
    assert_eq!(header(&table), ["NAME", "CONTROLLER", "REVISION", "AGE"]);
    let sts = json_of(&api, &["get", "sts", "db"]);
    assert_eq!(sts["spec"]["podManagementPolicy"], "OrderedReady");
    assert_eq!(
        sts["spec"]["updateStrategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}})
    );
    api.kubectl_ok(&["scale", "sts", "db", "--replicas=3"]);
    assert_eq!(json_of(&api, &["get", "sts", "db"])["spec"]["replicas"], 3);
    let all = api.kubectl_ok(&["get", "all"]);
    for name in [
        "daemonset.apps/agent",
        "statefulset.apps/db",
        "deployment.apps/web",
        "replicaset.apps/cache",
    ] {
        assert!(all.contains(name), "{name} in {all}");
    }

    // Nodes print as kubectl's wide columns.
    let node = r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"n1","labels":{"node-role.kubernetes.io/control-plane":""}},"status":{"addresses":[{"type":"InternalIP","address":"192.0.2.10"}],"nodeInfo":{"kubeletVersion":"v1.32.0","osImage":"Debian","kernelVersion":"6.1","containerRuntimeVersion":"ferry://0.1","machineID":"","systemUUID":"","bootID":"","kubeProxyVersion":"","operatingSystem":"linux","architecture":"amd64"}}}"#;
    api.kubectl_apply_stdin(&["create", "-f", "-"], Some(node));
    let table = api.kubectl_ok(&["get", "nodes", "-o", "wide"]);
    assert_eq!(
        header(&table),
        [
            "NAME",
            "STATUS",
            "ROLES",
            "AGE",
            "VERSION",
            "INTERNAL-IP",
            "EXTERNAL-IP",
            "OS-IMAGE",
            "KERNEL-VERSION",
            "CONTAINER-RUNTIME"
        ]
    );
    kubelet.abort();
}
