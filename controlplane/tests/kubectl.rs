//! kubectl v1.32 against the real ferry-apiserver: the manifests and
//! walkthroughs users try first.

mod common;

use common::{ApiServer, Backend, have_kubectl};

const SEED_SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: service-test
spec:
  type: NodePort
  ports:
    - port: 80
      nodePort: 30000
  selector:
    app: nginx
---
apiVersion: v1
kind: Service
metadata:
  name: back-end
spec:
  type: ClusterIP
  ports:
  - targetPort: 80
    port: 80
  selector:
    app: myapp
    type: back-end
---
apiVersion: v1
kind: Service
metadata:
  name: myapp-service
spec:
  type: LoadBalancer
  ports:
  - targetPort: 80
    port: 80
    nodePort: 30008
  selector:
    app: myapp
    type: back-end
---
apiVersion: v1
kind: Service
metadata:
  name: db
spec:
  clusterIP: None
  selector:
    app: db
  ports:
  - name: pg
    port: 5432
---
apiVersion: v1
kind: Service
metadata:
  name: external
spec:
  type: ExternalName
  externalName: example.com
"#;

fn row<'a>(table: &'a str, name: &str) -> Vec<&'a str> {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no row {name} in:\n{table}"))
        .split_whitespace()
        .collect()
}

fn seed_service_manifests_with_create_get_describe_delete(backend: Backend) {
    if !have_kubectl() {
        return;
    }
    let api = ApiServer::start_on(backend, &[]);
    let out = api.kubectl_apply_stdin(&["create", "-f", "-"], Some(SEED_SERVICES));
    for name in [
        "service-test",
        "back-end",
        "myapp-service",
        "db",
        "external",
    ] {
        assert!(out.contains(&format!("service/{name} created")), "{out}");
    }
    let table = api.kubectl_ok(&["get", "services", "-o", "wide"]);
    let header: Vec<&str> = table
        .lines()
        .next()
        .expect("header")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE",
            "SELECTOR"
        ]
    );
    let np = row(&table, "service-test");
    assert_eq!(np[1], "NodePort");
    assert!(np[2].starts_with("10.96."), "{np:?}");
    assert_eq!(np[3], "<none>");
    assert_eq!(np[4], "80:30000/TCP");
    assert_eq!(np[6], "app=nginx");
    let lb = row(&table, "myapp-service");
    assert_eq!(
        (lb[1], lb[3], lb[4]),
        ("LoadBalancer", "<pending>", "80:30008/TCP")
    );
    let ci = row(&table, "back-end");
    assert_eq!(
        (ci[1], ci[4], ci[6]),
        ("ClusterIP", "80/TCP", "app=myapp,type=back-end")
    );
    let hl = row(&table, "db");
    assert_eq!((hl[2], hl[4]), ("None", "5432/TCP"));
    let en = row(&table, "external");
    assert_eq!(
        (en[1], en[2], en[3]),
        ("ExternalName", "<none>", "example.com")
    );
    let k = row(&table, "kubernetes");
    assert_eq!((k[2], k[4]), ("10.96.0.1", "443/TCP"));

    // The same NodePort again is a 422 with the real message.
    let dup = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"dup"},"spec":{"type":"NodePort","ports":[{"port":80,"nodePort":30000}]}}"#;
    let err = api.kubectl_err(&["create", "-f", "-"], Some(dup));
    assert!(
        err.contains(
            "spec.ports[0].nodePort: Invalid value: 30000: provided port is already allocated"
        ),
        "{err}"
    );
    // An absurd loadBalancerSourceRanges entry is refused the same way.
    let ranges = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"ranges"},"spec":{"type":"LoadBalancer","ports":[{"port":80}],"loadBalancerSourceRanges":["10.0.0.0/8"," 192.0.2.0/24 ","10.0.0.0/40"]}}"#;
    let err = api.kubectl_err(&["create", "-f", "-"], Some(ranges));
    assert!(
        err.contains("spec.loadBalancerSourceRanges[2]: Invalid value: \"10.0.0.0/40\": must be a list of IP ranges"),
        "{err}"
    );
    assert!(
        !err.contains("loadBalancerSourceRanges[1]"),
        "whitespace is allowed: {err}"
    );
    let out_of_range = dup.replace("30000", "40000");
    let err = api.kubectl_err(&["create", "-f", "-"], Some(&out_of_range));
    assert!(
        err.contains(
            "provided port is not in the valid range. The range of valid ports is 30000-32767"
        ),
        "{err}"
    );
    let err = api.kubectl_err(&["create", "-f", "-"], Some(SEED_SERVICES));
    assert!(
        err.contains("AlreadyExists") || err.contains("already exists"),
        "{err}"
    );

    let desc = api.kubectl_ok(&["describe", "service", "service-test"]);
    assert!(
        desc.contains("NodePort:                 <unset>  30000/TCP"),
        "{desc}"
    );
    assert!(
        desc.contains("Selector:                 app=nginx"),
        "{desc}"
    );

    let yaml = api.kubectl_ok(&["get", "svc", "myapp-service", "-o", "yaml"]);
    assert!(yaml.contains("externalTrafficPolicy: Cluster"), "{yaml}");
    assert!(
        yaml.contains("allocateLoadBalancerNodePorts: true"),
        "{yaml}"
    );

    api.kubectl_ok(&["delete", "service", "service-test"]);
    let err = api.kubectl_err(&["get", "service", "service-test"], None);
    assert!(
        err.contains("NotFound") || err.contains("not found"),
        "{err}"
    );
    // Node port 30000 was released with the service.
    api.kubectl_apply_stdin(&["create", "-f", "-"], Some(dup));
    assert!(
        api.kubectl_ok(&["get", "svc", "dup"])
            .contains("80:30000/TCP")
    );
}

fn generators_apply_label_annotate_patch_and_wait(backend: Backend) {
    if !have_kubectl() {
        return;
    }
    let api = ApiServer::start_on(backend, &[]);
    // Typed generators send protobuf bodies.
    api.kubectl_ok(&["create", "namespace", "team-a"]);
    api.kubectl_ok(&[
        "-n",
        "team-a",
        "create",
        "configmap",
        "settings",
        "--from-literal=mode=fast",
    ]);
    api.kubectl_ok(&[
        "-n",
        "team-a",
        "create",
        "service",
        "clusterip",
        "web",
        "--tcp=80:8080",
    ]);
    api.kubectl_ok(&[
        "-n",
        "team-a",
        "create",
        "service",
        "nodeport",
        "np",
        "--tcp=81",
        "--node-port=30081",
    ]);
    api.kubectl_ok(&["-n", "team-a", "create", "serviceaccount", "robot"]);
    let ns = api.kubectl_ok(&["get", "ns", "team-a", "--show-labels"]);
    assert!(ns.contains("kubernetes.io/metadata.name=team-a"), "{ns}");
    let svc = api.kubectl_ok(&[
        "-n",
        "team-a",
        "get",
        "svc",
        "web",
        "-o",
        "jsonpath={.spec.ports[0].targetPort}",
    ]);
    assert_eq!(svc, "8080");

    // apply: create, then a change patches the live object (strategic merge).
    let manifest = |port: u16, label: &str| {
        format!(
            r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"app","namespace":"team-a","labels":{{"tier":"{label}"}}}},"spec":{{"selector":{{"app":"app"}},"ports":[{{"name":"http","port":{port}}}]}}}}"#
        )
    };
    let out = api.kubectl_apply_stdin(&["apply", "-f", "-"], Some(&manifest(80, "web")));
    assert!(out.contains("service/app created"), "{out}");
    let ip_before = api.kubectl_ok(&[
        "-n",
        "team-a",
        "get",
        "svc",
        "app",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    let out = api.kubectl_apply_stdin(&["apply", "-f", "-"], Some(&manifest(8080, "api")));
    assert!(out.contains("service/app configured"), "{out}");
    let out = api.kubectl_apply_stdin(&["apply", "-f", "-"], Some(&manifest(8080, "api")));
    assert!(out.contains("service/app unchanged"), "{out}");
    let ports = api.kubectl_ok(&[
        "-n",
        "team-a",
        "get",
        "svc",
        "app",
        "-o",
        "jsonpath={.spec.ports[*].port} {.metadata.labels.tier} {.spec.clusterIP}",
    ]);
    assert_eq!(ports, format!("8080 api {ip_before}"));

    api.kubectl_ok(&["-n", "team-a", "label", "svc", "app", "owner=me"]);
    api.kubectl_ok(&["-n", "team-a", "annotate", "svc", "app", "note=hello"]);
    let sel = api.kubectl_ok(&["-n", "team-a", "get", "svc", "-l", "owner=me", "-o", "name"]);
    assert_eq!(sel.trim(), "service/app");
    api.kubectl_ok(&[
        "-n",
        "team-a",
        "patch",
        "svc",
        "app",
        "-p",
        r#"{"spec":{"sessionAffinity":"ClientIP"}}"#,
    ]);
    api.kubectl_ok(&[
        "-n",
        "team-a",
        "patch",
        "svc",
        "app",
        "--type=merge",
        "-p",
        r#"{"metadata":{"labels":{"owner":null}}}"#,
    ]);
    api.kubectl_ok(&[
        "-n",
        "team-a",
        "patch",
        "svc",
        "app",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/spec/externalIPs","value":["192.0.2.10"]}]"#,
    ]);
    let got = api.kubectl_ok(&["-n", "team-a", "get", "svc", "app", "-o", "jsonpath={.spec.sessionAffinity} {.spec.sessionAffinityConfig.clientIP.timeoutSeconds} {.metadata.labels.owner}|{.spec.externalIPs[0]}"]);
    assert_eq!(got, "ClientIP 10800 |192.0.2.10");
    let err = api.kubectl_err(
        &[
            "-n",
            "team-a",
            "patch",
            "svc",
            "app",
            "-p",
            r#"{"spec":{"clusterIP":"10.96.0.99"}}"#,
        ],
        None,
    );
    assert!(
        err.contains("may not change once set") || err.contains("immutable"),
        "{err}"
    );

    api.kubectl_ok(&[
        "-n",
        "team-a",
        "wait",
        "--for=jsonpath={.spec.type}=ClusterIP",
        "svc/app",
        "--timeout=10s",
    ]);
    api.kubectl_ok(&["-n", "team-a", "delete", "svc", "app", "--wait=true"]);
    api.kubectl_ok(&[
        "-n",
        "team-a",
        "wait",
        "--for=delete",
        "svc/app",
        "--timeout=5s",
    ]);
}

#[test]
fn unauthenticated_requests_get_401_status() {
    if !have_kubectl() {
        return;
    }
    let api = ApiServer::start(&[]);
    let out = std::process::Command::new(common::kubectl_path())
        .args([
            "--server",
            &format!("https://127.0.0.1:{}", api.port),
            "--insecure-skip-tls-verify",
            "--token",
            "wrong",
            "get",
            "svc",
        ])
        .output()
        .expect("kubectl");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Unauthorized") || err.contains("must be logged in"),
        "{err}"
    );
}

/// The server-side apply walkthrough from the study notes: a client-side
/// apply, an imperative change by another manager, then server-side applies
/// that conflict, are forced, and conflict again under another manager name.
fn server_side_apply_field_managers_and_conflicts(backend: Backend) {
    if !have_kubectl() {
        return;
    }
    let api = ApiServer::start_on(backend, &[]);
    let pod = |image: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: sample-pod\nspec:\n  containers:\n  - name: nginx-container\n    image: {image}\n"
        )
    };
    let out = api.kubectl_apply_stdin(&["apply", "-f", "-"], Some(&pod("nginx:1.16")));
    assert!(out.contains("pod/sample-pod created"), "{out}");
    api.kubectl_ok(&[
        "set",
        "image",
        "pod",
        "sample-pod",
        "nginx-container=nginx:1.17",
    ]);
    let err = api.kubectl_err(
        &["apply", "--server-side", "-f", "-"],
        Some(&pod("nginx:1.16")),
    );
    assert!(
        err.contains(r#"conflict with "kubectl-set" using v1: .spec.containers[name="nginx-container"].image"#),
        "{err}"
    );
    let image = |api: &ApiServer| {
        api.kubectl_ok(&[
            "get",
            "pod",
            "sample-pod",
            "-o",
            "jsonpath={.spec.containers[0].image}",
        ])
    };
    assert_eq!(image(&api), "nginx:1.17");
    let out = api.kubectl_apply_stdin(
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        Some(&pod("nginx:1.16")),
    );
    assert!(out.contains("serverside-applied"), "{out}");
    assert_eq!(image(&api), "nginx:1.16");
    let err = api.kubectl_err(
        &[
            "apply",
            "--server-side",
            "--field-manager",
            "ci-tool",
            "-f",
            "-",
        ],
        Some(&pod("nginx:1.18")),
    );
    assert!(err.contains(r#"conflict with "kubectl""#), "{err}");
    // The same value is shared ownership, not a conflict.
    api.kubectl_apply_stdin(
        &[
            "apply",
            "--server-side",
            "--field-manager",
            "ci-tool",
            "-f",
            "-",
        ],
        Some(&pod("nginx:1.16")),
    );
    let fields = api.kubectl_ok(&[
        "get",
        "pod",
        "sample-pod",
        "--show-managed-fields",
        "-o",
        "jsonpath={.metadata.managedFields[*].manager}",
    ]);
    assert!(
        fields.contains("ci-tool") && fields.contains("kubectl"),
        "{fields}"
    );

    // Server-side apply creates, and dropping a field from the applied
    // configuration removes it.
    let svc = |extra: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: ssa\n{extra}spec:\n  ports:\n  - port: 80\n  selector:\n    app: x\n"
        )
    };
    let out = api.kubectl_apply_stdin(
        &["apply", "--server-side", "-f", "-"],
        Some(&svc("  labels:\n    team: a\n")),
    );
    assert!(out.contains("service/ssa serverside-applied"), "{out}");
    api.kubectl_apply_stdin(&["apply", "--server-side", "-f", "-"], Some(&svc("")));
    let labels = api.kubectl_ok(&["get", "svc", "ssa", "-o", "jsonpath={.metadata.labels}"]);
    assert!(!labels.contains("team"), "{labels}");
    let ports = api.kubectl_ok(&["get", "svc", "ssa", "-o", "jsonpath={.spec.ports[*].port}"]);
    assert_eq!(ports, "80");
}

on_both_backends_sync!(
    seed_service_manifests_with_create_get_describe_delete,
    generators_apply_label_annotate_patch_and_wait,
    server_side_apply_field_managers_and_conflicts,
);
