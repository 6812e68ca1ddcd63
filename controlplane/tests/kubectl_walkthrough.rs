//! The study notes' kubectl walkthroughs (shared/seeds 002 and 003) with
//! kubectl v1.32 against the real ferry-apiserver: the typed generators
//! that speak protobuf (`run`, `create deployment|namespace|configmap|
//! secret|serviceaccount`, `expose`, `scale`, `set image`), `rollout
//! status`, `replace -f`, `get -o yaml` then `create -f`, namespaces and
//! `--namespace`, `explain`, field validation (strict, warn, client-side
//! for List items) and `apply -f` of a `kind: List`.
//!
//! Nothing runs pods here: a stand-in kubelet marks pods Running and Ready
//! by writing their status, so rollouts complete.

mod common;

use common::kubelet::StandInKubelet;
use common::{ApiServer, have_kubectl, json_of, wait};
use serde_json::json;

/// kubectl that must succeed, with its stdout and stderr.
fn both(api: &ApiServer, args: &[&str], stdin: Option<&str>) -> (String, String) {
    let out = api.kubectl_stdin(args, stdin);
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "kubectl {args:?} failed: {o}{e}");
    (o, e)
}

/// replicaset-definition.yml of the notes (with `matchLabels` spelled as
/// the API has it).
const REPLICASET: &str = r#"apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: myapp-replicaset
  labels:
    app: myapp
    type: front-end
spec:
  template:
    metadata:
      name: myapp-pod
      labels:
        app: myapp
        type: front-end
    spec:
      containers:
      - name: nginx-container
        image: nginx
  replicas: 3
  selector:
    matchLabels:
      type: front-end
"#;

const POD_DEFINITION: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: myapp-pod
  labels:
    app: myapp
    type: front-end
spec:
  containers:
  - name: nginx-container
    image: nginx
"#;

const NAMESPACE_DEFINITION: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: prod\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_002_walkthrough_with_typed_generators_replace_and_namespaces() {
    if !have_kubectl() {
        return;
    }
    let api = ApiServer::start(&[]);
    let kubelet = StandInKubelet {
        all_namespaces: true,
        ..Default::default()
    }
    .start(api.client().await);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write manifest");
        p.to_string_lossy().into_owned()
    };

    // kubectl run, and the notes' `--dry-run=client -o yaml > pod.yaml`.
    assert_eq!(
        api.kubectl_ok(&["run", "nginx", "--image", "nginx"]),
        "pod/nginx created\n"
    );
    let pods = api.kubectl_ok(&["get", "po"]);
    assert!(pods.lines().any(|l| l.starts_with("nginx ")), "{pods}");
    let yaml = api.kubectl_ok(&[
        "run",
        "redis",
        "--image=redis123",
        "--dry-run=client",
        "-o",
        "yaml",
    ]);
    let pod_yaml = file("pod.yaml", &yaml);
    assert_eq!(
        api.kubectl_ok(&["create", "-f", &pod_yaml]),
        "pod/redis created\n"
    );

    // The typed generators send protobuf; every field arrives.
    assert_eq!(
        api.kubectl_ok(&["create", "deployment", "web", "--image=nginx", "--port=80"]),
        "deployment.apps/web created\n"
    );
    let d = json_of(&api, &["get", "deploy", "web"]);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"],
        80
    );
    assert_eq!(d["spec"]["selector"]["matchLabels"]["app"], "web");
    assert_eq!(
        api.kubectl_ok(&[
            "expose",
            "deployment",
            "web",
            "--port=80",
            "--type=NodePort"
        ]),
        "service/web exposed\n"
    );
    let svc = json_of(&api, &["get", "svc", "web"]);
    assert_eq!(svc["spec"]["selector"], json!({"app": "web"}));
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 80);
    assert!(
        svc["spec"]["ports"][0]["nodePort"]
            .as_i64()
            .is_some_and(|p| p >= 30000)
    );

    assert_eq!(
        api.kubectl_ok(&["scale", "deployment", "web", "--replicas=3"]),
        "deployment.apps/web scaled\n"
    );
    wait(30, "three ready replicas", || {
        (json_of(&api, &["get", "deploy", "web"])["status"]["readyReplicas"] == 3).then_some(())
    });
    assert_eq!(
        api.kubectl_ok(&["set", "image", "deployment/web", "nginx=nginx:1.27"]),
        "deployment.apps/web image updated\n"
    );
    let out = api.kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    assert!(
        out.ends_with("deployment \"web\" successfully rolled out\n"),
        "{out}"
    );
    let d = json_of(&api, &["get", "deploy", "web"]);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.27"
    );
    assert_eq!(d["status"]["updatedReplicas"], 3);

    // `--replicas=0` through protobuf is a set pointer, not "unset" (1).
    assert_eq!(
        api.kubectl_ok(&[
            "create",
            "deployment",
            "idle",
            "--image=nginx",
            "--replicas=0"
        ]),
        "deployment.apps/idle created\n"
    );
    assert_eq!(
        json_of(&api, &["get", "deploy", "idle"])["spec"]["replicas"],
        0
    );
    for (args, want) in [
        (
            &["create", "configmap", "cfg", "--from-literal=a=1"][..],
            "configmap/cfg created\n",
        ),
        (
            &[
                "create",
                "secret",
                "generic",
                "sec",
                "--from-literal=pw=s3cr3t",
            ],
            "secret/sec created\n",
        ),
        (
            &["create", "serviceaccount", "robot"],
            "serviceaccount/robot created\n",
        ),
    ] {
        assert_eq!(api.kubectl_ok(args), want);
    }
    assert_eq!(
        json_of(&api, &["get", "secret", "sec"])["data"]["pw"],
        "czNjcjN0"
    );

    // ReplicaSets: create -f, replace -f with 6 replicas, scale -f and by name.
    let rs = file("replicaset-definition.yml", REPLICASET);
    assert_eq!(
        api.kubectl_ok(&["create", "-f", &rs]),
        "replicaset.apps/myapp-replicaset created\n"
    );
    // `replace` reads the object and writes it back with the version it
    // read, as kubectl does: wait until the controller has stopped writing
    // its status, or the write races it (409, as with kube-apiserver).
    wait(30, "the ReplicaSet settled at 3 ready", || {
        let rs = json_of(&api, &["get", "rs", "myapp-replicaset"]);
        (rs["status"]["readyReplicas"] == 3
            && rs["status"]["availableReplicas"] == 3
            && rs["status"]["observedGeneration"] == rs["metadata"]["generation"])
            .then_some(())
    });
    let rs6 = file(
        "replicaset-6.yml",
        &REPLICASET.replace("replicas: 3", "replicas: 6"),
    );
    assert_eq!(
        api.kubectl_ok(&["replace", "-f", &rs6]),
        "replicaset.apps/myapp-replicaset replaced\n"
    );
    assert_eq!(
        json_of(&api, &["get", "rs", "myapp-replicaset"])["spec"]["replicas"],
        6
    );
    assert_eq!(
        api.kubectl_ok(&["scale", "--replicas=2", "-f", &rs]),
        "replicaset.apps/myapp-replicaset scaled\n"
    );
    assert_eq!(
        api.kubectl_ok(&["scale", "--replicas=4", "replicaset", "myapp-replicaset"]),
        "replicaset.apps/myapp-replicaset scaled\n"
    );
    assert_eq!(
        json_of(&api, &["get", "rs", "myapp-replicaset"])["spec"]["replicas"],
        4
    );

    // Namespaces: by generator, by file, and --namespace.
    assert_eq!(
        api.kubectl_ok(&["create", "namespace", "dev"]),
        "namespace/dev created\n"
    );
    let ns = file("namespace-definition.yml", NAMESPACE_DEFINITION);
    assert_eq!(
        api.kubectl_ok(&["create", "-f", &ns]),
        "namespace/prod created\n"
    );
    let pod = file("pod-definition.yaml", POD_DEFINITION);
    assert_eq!(
        api.kubectl_ok(&["create", "-f", &pod, "--namespace=dev"]),
        "pod/myapp-pod created\n"
    );
    let dev = api.kubectl_ok(&["get", "pods", "--namespace=dev"]);
    assert!(dev.lines().any(|l| l.starts_with("myapp-pod ")), "{dev}");
    let (_, err) = both(&api, &["get", "pods", "--namespace=kube-system"], None);
    assert_eq!(err, "No resources found in kube-system namespace.\n");

    // `get -o yaml` then `create -f` of that file in another namespace
    // (without the server-set resourceVersion and uid, as kube requires).
    let yaml = api.kubectl_ok(&["get", "deploy", "web", "-o", "yaml"]);
    let copy: String = yaml
        .lines()
        .filter(|l| !l.starts_with("  resourceVersion:") && !l.starts_with("  uid:"))
        .map(|l| {
            if l == "  namespace: default" {
                "  namespace: prod"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let copied = file("web.yaml", &copy);
    assert_eq!(
        api.kubectl_ok(&["create", "-f", &copied]),
        "deployment.apps/web created\n"
    );
    let a = json_of(&api, &["get", "deploy", "web"]);
    let b = json_of(&api, &["get", "deploy", "web", "-n", "prod"]);
    assert_eq!(a["spec"], b["spec"]);
    assert_ne!(a["metadata"]["uid"], b["metadata"]["uid"]);
    kubelet.abort();
}

const LIST: &str = r#"apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: settings}
  data: {mode: "fast"}
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: app}
  spec:
    replicas: 2
    selector: {matchLabels: {app: app}}
    strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 1, maxUnavailable: 0}}
    template:
      metadata: {labels: {app: app}}
      spec:
        containers:
        - name: c
          image: nginx
          ports: [{containerPort: 80}]
          readinessProbe: {httpGet: {path: /, port: 80}}
- apiVersion: v1
  kind: Service
  metadata: {name: app}
  spec:
    selector: {app: app}
    ports: [{port: 80}]
"#;

const BAD_DEPLOYMENT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: bad
spec:
  foo: 1
  selector:
    matchLabels: {app: bad}
  template:
    metadata:
      labels: {app: bad}
    spec:
      containers:
      - name: c
        image: nginx
        imagePull: Always
"#;

#[test]
fn explain_field_validation_and_list_apply() {
    if !have_kubectl() {
        return;
    }
    let api = ApiServer::start(&[]);

    // explain reads the OpenAPI v3 schemas.
    let out = api.kubectl_ok(&["explain", "deployment.spec.strategy"]);
    assert!(
        out.starts_with("GROUP:      apps\nKIND:       Deployment\nVERSION:    v1\n"),
        "{out}"
    );
    assert!(
        out.contains("The deployment strategy to use to replace existing pods with new ones."),
        "{out}"
    );
    assert!(
        out.contains("rollingUpdate\t<RollingUpdateDeployment>"),
        "{out}"
    );
    let out = api.kubectl_ok(&["explain", "pods.spec.containers.readinessProbe.httpGet"]);
    assert!(
        out.contains("HTTPGet specifies an HTTP GET request to perform."),
        "{out}"
    );

    // kubectl defaults to --validate=strict: the server refuses unknown fields.
    let err = api.kubectl_err(&["create", "-f", "-"], Some(BAD_DEPLOYMENT));
    assert!(
        err.contains(r#"Deployment in version "v1" cannot be handled as a Deployment: strict decoding error: unknown field "spec.foo", unknown field "spec.template.spec.containers[0].imagePull""#),
        "{err}"
    );
    assert!(api.kubectl(&["get", "deploy", "bad"]).status.code() != Some(0));
    // Warn: created, each dropped field reported.
    let (out, err) = both(
        &api,
        &["create", "-f", "-", "--validate=warn"],
        Some(BAD_DEPLOYMENT),
    );
    assert_eq!(out, "deployment.apps/bad created\n");
    assert!(
        err.contains("Warning: unknown field \"spec.foo\"\n"),
        "{err}"
    );
    assert!(
        err.contains("Warning: unknown field \"spec.template.spec.containers[0].imagePull\"\n"),
        "{err}"
    );
    // Ignore: silent.
    api.kubectl_ok(&["delete", "deploy", "bad"]);
    let (_, err) = both(
        &api,
        &["create", "-f", "-", "--validate=false"],
        Some(BAD_DEPLOYMENT),
    );
    assert!(!err.contains("unknown field"), "{err}");

    // apply -f of a List: items expanded, created, then unchanged.
    let out = api.kubectl_apply_stdin(&["apply", "-f", "-"], Some(LIST));
    assert_eq!(
        out,
        "configmap/settings created\ndeployment.apps/app created\nservice/app created\n"
    );
    let out = api.kubectl_apply_stdin(&["apply", "-f", "-"], Some(LIST));
    assert_eq!(
        out,
        "configmap/settings unchanged\ndeployment.apps/app unchanged\nservice/app unchanged\n"
    );
    let changed = LIST.replace("mode: \"fast\"", "mode: \"slow\"");
    let out = api.kubectl_apply_stdin(&["apply", "-f", "-"], Some(&changed));
    assert!(out.starts_with("configmap/settings configured\n"), "{out}");
    // An unknown field in a List item is caught by kubectl's own validation
    // against the OpenAPI v2 document (served in protobuf, as it asks).
    let bad = LIST.replace(
        "data: {mode: \"fast\"}",
        "data: {mode: \"fast\"}\n  colour: red",
    );
    let err = api.kubectl_err(&["apply", "-f", "-"], Some(&bad));
    assert!(
        err.contains(
            r#"ValidationError(ConfigMap): unknown field "colour" in io.k8s.api.core.v1.ConfigMap"#
        ),
        "{err}"
    );

    // `get -o yaml` of several kinds is a List; created again elsewhere.
    api.kubectl_ok(&["create", "namespace", "copy"]);
    let yaml = api.kubectl_ok(&["get", "configmap/settings", "deployment/app", "-o", "yaml"]);
    assert!(yaml.starts_with("apiVersion: v1\nitems:\n"), "{yaml}");
    let copy: String = yaml
        .lines()
        .filter(|l| !l.starts_with("    resourceVersion:") && !l.starts_with("    uid:"))
        .map(|l| {
            if l == "    namespace: default" {
                "    namespace: copy"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let out = api.kubectl_apply_stdin(&["create", "-f", "-"], Some(&copy));
    assert_eq!(
        out,
        "configmap/settings created\ndeployment.apps/app created\n"
    );
    let cm = json_of(&api, &["get", "cm", "settings", "-n", "copy"]);
    assert_eq!(cm["data"], json!({"mode": "slow"}));
}
