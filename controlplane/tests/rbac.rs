//! RBAC served and enforced: real kubectl with per-user kubeconfigs
//! (`ferry-apiserver kubeconfig --user U --group G`) against the real
//! binary. Each test shares one apiserver across its steps.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{ApiServer, have_kubectl};

/// A user's kubeconfig, minted by the binary as an operator would.
fn mint(api: &ApiServer, user: &str, groups: &[&str]) -> PathBuf {
    let out = api
        .dir
        .path()
        .join(format!("{}.kubeconfig", user.replace(':', "_")));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry-apiserver"));
    cmd.arg("--data-dir")
        .arg(api.data_dir())
        .args(["kubeconfig", "--user", user, "--server"])
        .arg(format!("https://127.0.0.1:{}", api.port))
        .arg("--out")
        .arg(&out);
    for g in groups {
        cmd.args(["--group", g]);
    }
    let o = cmd.output().expect("run ferry-apiserver kubeconfig");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

fn kubectl_as(api: &ApiServer, kc: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    api.kubectl_as(kc, args, stdin)
}

fn ok(api: &ApiServer, kc: &Path, args: &[&str]) -> String {
    let o = kubectl_as(api, kc, args, None);
    assert!(
        o.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// kubectl that must fail; its stderr, trimmed.
fn err(api: &ApiServer, kc: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let o = kubectl_as(api, kc, args, stdin);
    assert!(
        !o.status.success(),
        "kubectl {args:?} unexpectedly succeeded: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).trim().to_string()
}

/// `kubectl auth can-i ARGS`: "yes" or "no" (without the reason kubectl
/// prints after a "no").
fn can_i(api: &ApiServer, kc: &Path, args: &[&str]) -> String {
    let mut a = vec!["auth", "can-i"];
    a.extend(args);
    let o = kubectl_as(api, kc, &a, None);
    let out = String::from_utf8_lossy(&o.stdout);
    out.split_whitespace().next().unwrap_or("").to_string()
}

fn forbidden(msg: &str) -> String {
    format!("Error from server (Forbidden): {msg}")
}

/// The body of the server's answer to `kubectl get --raw PATH`, read from
/// kubectl's `-v=8` log (where Go quotes it).
fn response_body(api: &ApiServer, kc: &Path, path: &str) -> serde_json::Value {
    let o = kubectl_as(api, kc, &["get", "--raw", path, "-v=8"], None);
    let log = String::from_utf8_lossy(&o.stderr);
    let quoted = log
        .lines()
        .find_map(|l| l.split_once("\"Response Body\" body=\"").map(|(_, b)| b))
        .and_then(|b| b.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no response body in {log}"));
    let mut body = String::new();
    let mut chars = quoted.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            body.extend(chars.next());
        } else {
            body.push(c);
        }
    }
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// GET `path` without credentials: (code, message or body).
fn anonymous_get(api: &ApiServer, path: &str) -> (u16, String) {
    let text = std::fs::read_to_string(api.kubeconfig()).expect("kubeconfig");
    let without_token: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("token:"))
        .map(|l| format!("{l}\n"))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let kc = kube::config::Kubeconfig::from_yaml(&without_token).expect("kubeconfig");
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .expect("config");
        let client = kube::Client::try_from(cfg).expect("client");
        let req = http::Request::get(path).body(Vec::new()).expect("request");
        match client.request_text(req).await {
            Ok(body) => (200, body),
            Err(kube::Error::Api(e)) => (e.code, e.message),
            Err(e) => panic!("{path}: {e}"),
        }
    })
}

const CM: &str = r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "y"}, "data": {"a": "b"}}"#;

#[test]
fn a_user_without_roles_gets_kube_apiserver_s_403s() {
    if !have_kubectl() {
        return;
    }
    let api = ApiServer::start(&[]);
    let admin = api.kubeconfig();
    ok(&api, &admin, &["create", "namespace", "y"]);
    let o = kubectl_as(&api, &admin, &["create", "-f", "-"], Some(CM));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let alice = mint(&api, "alice", &[]);
    let cases: &[(&[&str], &str)] = &[
        (
            &["get", "pods", "-n", "y"],
            r#"pods is forbidden: User "alice" cannot list resource "pods" in API group "" in the namespace "y""#,
        ),
        (
            &["get", "pod", "p", "-n", "y"],
            r#"pods "p" is forbidden: User "alice" cannot get resource "pods" in API group "" in the namespace "y""#,
        ),
        (
            &["get", "--raw", "/api/v1/namespaces/y/pods?watch=true"],
            r#"pods is forbidden: User "alice" cannot watch resource "pods" in API group "" in the namespace "y""#,
        ),
        (
            &["create", "configmap", "d", "-n", "y", "--from-literal=a=b"],
            r#"configmaps is forbidden: User "alice" cannot create resource "configmaps" in API group "" in the namespace "y""#,
        ),
        (
            &["delete", "configmap", "c", "-n", "y"],
            r#"configmaps "c" is forbidden: User "alice" cannot delete resource "configmaps" in API group "" in the namespace "y""#,
        ),
        (
            &["delete", "configmaps", "--all", "-n", "y"],
            r#"configmaps is forbidden: User "alice" cannot list resource "configmaps" in API group "" in the namespace "y""#,
        ),
        (
            &["get", "nodes"],
            r#"nodes is forbidden: User "alice" cannot list resource "nodes" in API group "" at the cluster scope"#,
        ),
        (
            &["get", "namespace", "y"],
            r#"namespaces "y" is forbidden: User "alice" cannot get resource "namespaces" in API group "" in the namespace "y""#,
        ),
        (
            &["get", "deployments", "-n", "y"],
            r#"deployments.apps is forbidden: User "alice" cannot list resource "deployments" in API group "apps" in the namespace "y""#,
        ),
        (
            &["get", "clusterroles"],
            r#"clusterroles.rbac.authorization.k8s.io is forbidden: User "alice" cannot list resource "clusterroles" in API group "rbac.authorization.k8s.io" at the cluster scope"#,
        ),
        (
            &["get", "--raw", "/api/v1/namespaces/y/pods/p/log"],
            r#"pods "p" is forbidden: User "alice" cannot get resource "pods/log" in API group "" in the namespace "y""#,
        ),
        (
            &["get", "--raw", "/metrics"],
            r#"forbidden: User "alice" cannot get path "/metrics""#,
        ),
    ];
    for (args, want) in cases {
        // kubectl's own wording around the server's message, as upstream.
        let want = if args[..2] == ["create", "configmap"] {
            format!("error: failed to create configmap: {want}")
        } else {
            forbidden(want)
        };
        assert_eq!(err(&api, &alice, args, None), want, "{args:?}");
    }
    // PUT: kubectl replace.
    let replaced = CM.replace(r#""b""#, r#""c""#);
    assert_eq!(
        err(&api, &alice, &["replace", "-f", "-"], Some(&replaced)),
        forbidden(
            r#"error when replacing "STDIN": configmaps "c" is forbidden: User "alice" cannot update resource "configmaps" in API group "" in the namespace "y""#
        )
    );
    // kubectl patch reads the object first: with `get` granted, the patch
    // itself is what is refused.
    ok(
        &api,
        &admin,
        &[
            "create",
            "role",
            "cm-get",
            "--verb=get",
            "--resource=configmaps",
            "-n",
            "y",
        ],
    );
    ok(
        &api,
        &admin,
        &[
            "create",
            "rolebinding",
            "alice-cm-get",
            "--role=cm-get",
            "--user=alice",
            "-n",
            "y",
        ],
    );
    assert_eq!(
        err(
            &api,
            &alice,
            &[
                "patch",
                "configmap",
                "c",
                "-n",
                "y",
                "-p",
                r#"{"data":{"x":"y"}}"#
            ],
            None
        ),
        forbidden(
            r#"configmaps "c" is forbidden: User "alice" cannot patch resource "configmaps" in API group "" in the namespace "y""#
        )
    );
    // The body of a 403 is kube-apiserver's Status.
    let status = response_body(&api, &alice, "/api/v1/namespaces/y/secrets/s");
    assert_eq!(
        status,
        serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "secrets \"s\" is forbidden: User \"alice\" cannot get resource \"secrets\" in API group \"\" in the namespace \"y\"",
            "reason": "Forbidden", "details": {"name": "s", "kind": "secrets"}, "code": 403,
        })
    );
    let status = response_body(&api, &alice, "/apis/apps/v1/namespaces/y/deployments");
    assert_eq!(
        status["details"],
        serde_json::json!({"group": "apps", "kind": "deployments"})
    );
    // What every authenticated user may read.
    for path in [
        "/api",
        "/apis",
        "/version",
        "/api/v1",
        "/apis/apps/v1",
        "/healthz",
        "/openapi/v2",
    ] {
        ok(&api, &alice, &["get", "--raw", path]);
    }
    // Without a token: the public health and version paths, nothing else
    // (401 there, as before); the individual checks are for monitoring.
    let anonymous = |path: &str| anonymous_get(&api, path);
    for path in ["/version", "/healthz", "/livez", "/readyz"] {
        assert_eq!(anonymous(path).0, 200, "{path}");
    }
    assert_eq!(
        anonymous("/readyz/etcd"),
        (
            403,
            r#"forbidden: User "system:anonymous" cannot get path "/readyz/etcd""#.to_string()
        )
    );
    assert_eq!(anonymous("/api").0, 401);
    assert_eq!(anonymous("/api/v1/namespaces/y/pods").0, 401);
    let monitor = mint(&api, "prometheus", &["system:monitoring"]);
    ok(&api, &monitor, &["get", "--raw", "/readyz/etcd"]);
    // The admin is untouched: it still does everything.
    // (for whom an unknown path is 404, not 403)
    let e = err(&api, &admin, &["get", "--raw", "/metrics"], None);
    assert!(e.contains("NotFound") && !e.contains("Forbidden"), "{e}");
    ok(&api, &admin, &["delete", "configmap", "c", "-n", "y"]);
    // An unknown token is 401, never 403.
    let o = kubectl_as(
        &api,
        &alice,
        &["get", "pods", "--token", "not-a-token"],
        None,
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stderr).trim(),
        "error: You must be logged in to the server (Unauthorized)"
    );
}

#[test]
fn roles_and_bindings_grant_exactly_what_they_say() {
    if !have_kubectl() {
        return;
    }
    let api = ApiServer::start(&[]);
    let admin = api.kubeconfig();
    for ns in ["y", "z"] {
        ok(&api, &admin, &["create", "namespace", ns]);
        ok(
            &api,
            &admin,
            &["create", "configmap", "one", "-n", ns, "--from-literal=a=b"],
        );
        ok(
            &api,
            &admin,
            &["create", "configmap", "two", "-n", ns, "--from-literal=a=b"],
        );
        ok(
            &api,
            &admin,
            &[
                "create",
                "secret",
                "generic",
                "s",
                "-n",
                ns,
                "--from-literal=a=b",
            ],
        );
    }
    let alice = mint(&api, "alice", &[]);
    let bob = mint(&api, "bob", &["devs"]);
    let robot = mint(&api, "system:serviceaccount:y:robot", &[]);

    // A Role and a RoleBinding: in that namespace only.
    ok(
        &api,
        &admin,
        &[
            "create",
            "role",
            "pod-reader",
            "--verb=get,list,watch",
            "--resource=pods",
            "-n",
            "y",
        ],
    );
    ok(
        &api,
        &admin,
        &[
            "create",
            "rolebinding",
            "alice-pods",
            "--role=pod-reader",
            "--user=alice",
            "-n",
            "y",
        ],
    );
    ok(&api, &alice, &["get", "pods", "-n", "y"]);
    assert_eq!(can_i(&api, &alice, &["list", "pods", "-n", "y"]), "yes");
    assert_eq!(can_i(&api, &alice, &["watch", "pods", "-n", "y"]), "yes");
    assert_eq!(can_i(&api, &alice, &["delete", "pods", "-n", "y"]), "no");
    assert_eq!(can_i(&api, &alice, &["list", "pods", "-n", "z"]), "no");
    assert!(
        err(&api, &alice, &["get", "pods", "-n", "z"], None)
            .contains("cannot list resource \"pods\"")
    );
    assert!(
        err(&api, &alice, &["get", "services", "-n", "y"], None)
            .contains("cannot list resource \"services\"")
    );

    // SubjectAccessReview: the same question about someone else, for
    // whoever may create reviews (the admin; not alice).
    let sar = |ns: &str| {
        format!(
            r#"{{"apiVersion":"authorization.k8s.io/v1","kind":"SubjectAccessReview","spec":{{"user":"alice","resourceAttributes":{{"verb":"list","resource":"pods","namespace":"{ns}"}}}}}}"#
        )
    };
    for (ns, want) in [("y", "true"), ("z", "false")] {
        let o = kubectl_as(
            &api,
            &admin,
            &["create", "-f", "-", "-o", "jsonpath={.status.allowed}"],
            Some(&sar(ns)),
        );
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            want,
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    assert!(err(&api, &alice, &["create", "-f", "-"], Some(&sar("y"))).contains(
        r#"subjectaccessreviews.authorization.k8s.io is forbidden: User "alice" cannot create resource "subjectaccessreviews" in API group "authorization.k8s.io" at the cluster scope"#
    ));
    // resourceNames: that name only, and never a list.
    ok(
        &api,
        &admin,
        &[
            "create",
            "role",
            "cm-one",
            "--verb=get",
            "--resource=configmaps",
            "--resource-name=one",
            "-n",
            "y",
        ],
    );
    ok(
        &api,
        &admin,
        &[
            "create",
            "rolebinding",
            "alice-cm",
            "--role=cm-one",
            "--user=alice",
            "-n",
            "y",
        ],
    );
    ok(&api, &alice, &["get", "configmap", "one", "-n", "y"]);
    assert!(
        err(&api, &alice, &["get", "configmap", "two", "-n", "y"], None)
            .contains(r#"configmaps "two" is forbidden"#)
    );
    assert!(err(&api, &alice, &["get", "configmaps", "-n", "y"], None).contains("cannot list"));
    assert_eq!(
        can_i(&api, &alice, &["get", "configmap/one", "-n", "y"]),
        "yes"
    );
    assert_eq!(
        can_i(&api, &alice, &["get", "configmap/two", "-n", "y"]),
        "no"
    );

    // A ClusterRole through a ClusterRoleBinding: everywhere.
    ok(
        &api,
        &admin,
        &[
            "create",
            "clusterrole",
            "node-reader",
            "--verb=get,list",
            "--resource=nodes",
        ],
    );
    ok(
        &api,
        &admin,
        &[
            "create",
            "clusterrolebinding",
            "alice-nodes",
            "--clusterrole=node-reader",
            "--user=alice",
        ],
    );
    ok(&api, &alice, &["get", "nodes"]);
    assert_eq!(can_i(&api, &alice, &["list", "nodes"]), "yes");
    assert_eq!(can_i(&api, &alice, &["delete", "nodes"]), "no");

    // A ClusterRole through a RoleBinding, to a group: in that namespace.
    ok(
        &api,
        &admin,
        &[
            "create",
            "clusterrole",
            "secret-reader",
            "--verb=get,list",
            "--resource=secrets",
        ],
    );
    ok(
        &api,
        &admin,
        &[
            "create",
            "rolebinding",
            "devs-secrets",
            "--clusterrole=secret-reader",
            "--group=devs",
            "-n",
            "y",
        ],
    );
    ok(&api, &bob, &["get", "secrets", "-n", "y"]);
    assert!(
        err(&api, &bob, &["get", "secrets", "-n", "z"], None)
            .contains(r#"User "bob" cannot list resource "secrets""#)
    );
    assert!(err(&api, &alice, &["get", "secrets", "-n", "y"], None).contains("cannot list"));

    // A service account, by its user name.
    ok(
        &api,
        &admin,
        &[
            "create",
            "rolebinding",
            "robot",
            "--clusterrole=secret-reader",
            "--serviceaccount=y:robot",
            "-n",
            "y",
        ],
    );
    ok(&api, &robot, &["get", "secret", "s", "-n", "y"]);
    assert_eq!(can_i(&api, &robot, &["get", "secrets", "-n", "z"]), "no");

    // `*/sub` and subresources.
    ok(
        &api,
        &admin,
        &[
            "create",
            "role",
            "logs",
            "--verb=get",
            "--resource=pods/log",
            "-n",
            "y",
        ],
    );
    ok(
        &api,
        &admin,
        &[
            "create",
            "rolebinding",
            "alice-logs",
            "--role=logs",
            "--user=alice",
            "-n",
            "y",
        ],
    );
    assert_eq!(
        can_i(
            &api,
            &alice,
            &["get", "pods", "--subresource=log", "-n", "y"]
        ),
        "yes"
    );
    assert_eq!(
        can_i(
            &api,
            &alice,
            &["get", "pods", "--subresource=exec", "-n", "y"]
        ),
        "no"
    );

    // A binding to a missing role breaks nothing else, and says so.
    ok(
        &api,
        &admin,
        &[
            "create",
            "rolebinding",
            "ghost",
            "--role=ghost",
            "--user=alice",
            "-n",
            "y",
        ],
    );
    ok(&api, &alice, &["get", "pods", "-n", "y"]);
    assert!(
        err(&api, &alice, &["get", "services", "-n", "y"], None).ends_with(
            r#"in the namespace "y": RBAC: role.rbac.authorization.k8s.io "ghost" not found"#
        )
    );

    // `can-i --list` reads the same rules.
    let list = ok(&api, &alice, &["auth", "can-i", "--list", "-n", "y"]);
    assert!(
        list.contains("pods/log") && list.contains("[one]") && list.contains("nodes"),
        "{list}"
    );

    // roleRef is immutable.
    let e = err(
        &api,
        &admin,
        &[
            "patch",
            "rolebinding",
            "alice-pods",
            "-n",
            "y",
            "--type=merge",
            "-p",
            r#"{"roleRef":{"name":"cm-one"}}"#,
        ],
        None,
    );
    assert!(
        e.contains("roleRef: Invalid value") && e.contains("cannot change roleRef"),
        "{e}"
    );
    // Validation as upstream.
    let e = err(
        &api,
        &admin,
        &["create", "-f", "-"],
        Some(
            r#"{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"Role","metadata":{"name":"bad","namespace":"y"},"rules":[{"apiGroups":[""],"resources":["pods"]}]}"#,
        ),
    );
    assert!(
        e.contains("rules[0].verbs: Required value: verbs must contain at least one value"),
        "{e}"
    );
    let e = err(
        &api,
        &admin,
        &["create", "-f", "-"],
        Some(
            r#"{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRoleBinding","metadata":{"name":"bad"},"roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"x"},"subjects":[{"kind":"ServiceAccount","name":"sa"}]}"#,
        ),
    );
    assert!(e.contains("subjects[0].namespace: Required value"), "{e}");

    // Tables as kubectl prints them.
    let wide = ok(
        &api,
        &admin,
        &["get", "rolebindings", "-n", "y", "-o", "wide"],
    );
    let header: Vec<&str> = wide
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "ROLE", "AGE", "USERS", "GROUPS", "SERVICEACCOUNTS"]
    );
    assert!(
        wide.lines().any(|l| l.starts_with("devs-secrets")
            && l.contains("ClusterRole/secret-reader")
            && l.contains("devs")),
        "{wide}"
    );
    assert!(
        wide.lines()
            .any(|l| l.starts_with("robot") && l.contains("y/robot")),
        "{wide}"
    );
    let roles = ok(&api, &admin, &["get", "roles", "-n", "y"]);
    assert!(
        roles.starts_with("NAME") && roles.contains("CREATED AT"),
        "{roles}"
    );

    // Revocation: the next request is denied.
    ok(&api, &admin, &["delete", "role", "pod-reader", "-n", "y"]);
    common::wait(5, "revocation", || {
        (can_i(&api, &alice, &["list", "pods", "-n", "y"]) == "no").then_some(())
    });
    assert!(
        err(&api, &alice, &["get", "pods", "-n", "y"], None)
            .contains("cannot list resource \"pods\"")
    );
    ok(
        &api,
        &admin,
        &["delete", "clusterrolebinding", "alice-nodes"],
    );
    assert_eq!(can_i(&api, &alice, &["list", "nodes"]), "no");
}

#[test]
fn writing_roles_and_bindings_cannot_escalate() {
    if !have_kubectl() {
        return;
    }
    let api = ApiServer::start(&[]);
    let admin = api.kubeconfig();
    ok(&api, &admin, &["create", "namespace", "y"]);
    let carol = mint(&api, "carol", &[]);
    // Carol manages roles and bindings in y and reads configmaps; no pods.
    ok(
        &api,
        &admin,
        &[
            "create",
            "role",
            "rbac-manager",
            "--verb=create,get,list,update,patch,delete",
            "--resource=roles.rbac.authorization.k8s.io,rolebindings.rbac.authorization.k8s.io",
            "-n",
            "y",
        ],
    );
    ok(
        &api,
        &admin,
        &[
            "create",
            "role",
            "cm-reader",
            "--verb=get,list",
            "--resource=configmaps",
            "-n",
            "y",
        ],
    );
    ok(
        &api,
        &admin,
        &[
            "create",
            "rolebinding",
            "carol-rbac",
            "--role=rbac-manager",
            "--user=carol",
            "-n",
            "y",
        ],
    );
    ok(
        &api,
        &admin,
        &[
            "create",
            "rolebinding",
            "carol-cm",
            "--role=cm-reader",
            "--user=carol",
            "-n",
            "y",
        ],
    );

    // Granting what she holds is fine; granting pods is not.
    ok(
        &api,
        &carol,
        &[
            "create",
            "role",
            "cm-get",
            "--verb=get",
            "--resource=configmaps",
            "-n",
            "y",
        ],
    );
    let e = err(
        &api,
        &carol,
        &[
            "create",
            "role",
            "pods-get",
            "--verb=get,list",
            "--resource=pods",
            "-n",
            "y",
        ],
        None,
    );
    assert_eq!(
        e,
        forbidden(
            "roles.rbac.authorization.k8s.io \"pods-get\" is forbidden: user \"carol\" (groups=[\"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"\"], Resources:[\"pods\"], Verbs:[\"get\" \"list\"]}"
        )
    );
    // Nor by widening a role she may update.
    let e = err(
        &api,
        &carol,
        &[
            "patch",
            "role",
            "cm-get",
            "-n",
            "y",
            "--type=json",
            "-p",
            r#"[{"op":"add","path":"/rules/0/verbs/-","value":"delete"}]"#,
        ],
        None,
    );
    assert!(
        e.contains("attempting to grant RBAC permissions not currently held")
            && e.contains(r#"Verbs:["delete"]"#),
        "{e}"
    );
    // Binding a role she fully holds needs no `bind`.
    ok(
        &api,
        &carol,
        &[
            "create",
            "rolebinding",
            "dave-cm",
            "--role=cm-get",
            "--user=dave",
            "-n",
            "y",
        ],
    );
    // `escalate` lets her write the role...
    ok(
        &api,
        &admin,
        &[
            "create",
            "role",
            "escalator",
            "--verb=escalate",
            "--resource=roles.rbac.authorization.k8s.io",
            "-n",
            "y",
        ],
    );
    ok(
        &api,
        &admin,
        &[
            "create",
            "rolebinding",
            "carol-escalate",
            "--role=escalator",
            "--user=carol",
            "-n",
            "y",
        ],
    );
    ok(
        &api,
        &carol,
        &[
            "create",
            "role",
            "pods-get",
            "--verb=get,list",
            "--resource=pods",
            "-n",
            "y",
        ],
    );
    // ...but binding it needs `bind` on it (or its rights).
    let e = err(
        &api,
        &carol,
        &[
            "create",
            "rolebinding",
            "dave-pods",
            "--role=pods-get",
            "--user=dave",
            "-n",
            "y",
        ],
        None,
    );
    assert!(
        e.starts_with(r#"error: failed to create rolebinding: rolebindings.rbac.authorization.k8s.io "dave-pods" is forbidden: user "carol" (groups=["system:authenticated"]) is attempting to grant RBAC permissions not currently held:"#),
        "{e}"
    );
    ok(
        &api,
        &admin,
        &[
            "create",
            "role",
            "binder",
            "--verb=bind",
            "--resource=roles.rbac.authorization.k8s.io",
            "--resource-name=pods-get",
            "-n",
            "y",
        ],
    );
    ok(
        &api,
        &admin,
        &[
            "create",
            "rolebinding",
            "carol-bind",
            "--role=binder",
            "--user=carol",
            "-n",
            "y",
        ],
    );
    ok(
        &api,
        &carol,
        &[
            "create",
            "rolebinding",
            "dave-pods",
            "--role=pods-get",
            "--user=dave",
            "-n",
            "y",
        ],
    );
    // `bind` is per role name: another role she does not hold stays out.
    ok(
        &api,
        &admin,
        &[
            "create",
            "role",
            "secrets-get",
            "--verb=get",
            "--resource=secrets",
            "-n",
            "y",
        ],
    );
    assert!(
        err(
            &api,
            &carol,
            &[
                "create",
                "rolebinding",
                "dave-secrets",
                "--role=secrets-get",
                "--user=dave",
                "-n",
                "y"
            ],
            None
        )
        .contains("not currently held")
    );
    // A ClusterRole she does not hold, bound in her namespace: refused.
    assert!(
        err(
            &api,
            &carol,
            &[
                "create",
                "rolebinding",
                "dave-admin",
                "--clusterrole=cluster-admin",
                "--user=dave",
                "-n",
                "y"
            ],
            None
        )
        .contains("not currently held")
    );
    // The admin is never held back.
    ok(
        &api,
        &admin,
        &[
            "create",
            "rolebinding",
            "dave-admin",
            "--clusterrole=cluster-admin",
            "--user=dave",
            "-n",
            "y",
        ],
    );
    // An aggregated ClusterRole can come to hold anything: `escalate` only.
    ok(
        &api,
        &admin,
        &[
            "create",
            "clusterrole",
            "cr-writer",
            "--verb=create",
            "--resource=clusterroles.rbac.authorization.k8s.io",
        ],
    );
    ok(
        &api,
        &admin,
        &[
            "create",
            "clusterrolebinding",
            "carol-cr",
            "--clusterrole=cr-writer",
            "--user=carol",
        ],
    );
    let e = err(
        &api,
        &carol,
        &["create", "clusterrole", "sneaky", "--aggregation-rule=x=y"],
        None,
    );
    assert!(
        e.contains("must have cluster-admin privileges to use the aggregationRule"),
        "{e}"
    );
    ok(
        &api,
        &admin,
        &["create", "clusterrole", "sneaky", "--aggregation-rule=x=y"],
    );
}

fn pod_on(node: &str, secret: &str) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"p","namespace":"default"}},
        "spec":{{"nodeName":"{node}","containers":[{{"name":"c","image":"busybox"}}],
        "volumes":[{{"name":"v","secret":{{"secretName":"{secret}"}}}}]}}}}"#
    )
}

fn node_json(name: &str) -> String {
    format!(r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"{name}"}}}}"#)
}

fn lease_json(name: &str) -> String {
    format!(
        r#"{{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{{"name":"{name}","namespace":"kube-node-lease"}},"spec":{{"holderIdentity":"{name}"}}}}"#
    )
}

#[test]
fn a_node_reaches_its_own_objects_and_its_pods_secrets_only() {
    if !have_kubectl() {
        return;
    }
    let api = ApiServer::start(&[]);
    let admin = api.kubeconfig();
    let n1 = mint(&api, "system:node:n1", &[]);
    // Its own Node and Lease: created, updated.
    let o = kubectl_as(&api, &n1, &["create", "-f", "-"], Some(&node_json("n1")));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = kubectl_as(&api, &n1, &["create", "-f", "-"], Some(&lease_json("n1")));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    ok(&api, &n1, &["label", "node", "n1", "x=y"]);
    ok(
        &api,
        &n1,
        &["annotate", "lease", "n1", "-n", "kube-node-lease", "x=y"],
    );
    ok(&api, &n1, &["get", "nodes"]);
    // Not another node's.
    assert_eq!(
        err(&api, &n1, &["create", "-f", "-"], Some(&node_json("n2"))),
        forbidden(
            r#"error when creating "STDIN": nodes "n2" is forbidden: node "n1" is not allowed to modify Node "n2""#
        )
    );
    let o = kubectl_as(&api, &admin, &["create", "-f", "-"], Some(&node_json("n2")));
    assert!(o.status.success());
    let o = kubectl_as(
        &api,
        &admin,
        &["create", "-f", "-"],
        Some(&lease_json("n2")),
    );
    assert!(o.status.success());
    assert_eq!(
        err(&api, &n1, &["label", "node", "n2", "x=y"], None),
        forbidden(
            r#"nodes "n2" is forbidden: User "system:node:n1" cannot patch resource "nodes" in API group "" at the cluster scope: node "n1" is not allowed to modify node "n2""#
        )
    );
    assert!(
        err(
            &api,
            &n1,
            &["annotate", "lease", "n2", "-n", "kube-node-lease", "x=y"],
            None
        )
        .contains("can only access node lease with the same name as the requesting node")
    );
    assert!(
        err(&api, &n1, &["create", "-f", "-"], Some(&lease_json("n3")))
            .contains(r#"node "n1" is not allowed to modify Lease "n3""#)
    );

    // Secrets: the one its pod uses, no other, and nothing before the pod.
    ok(
        &api,
        &admin,
        &["create", "secret", "generic", "used", "--from-literal=a=b"],
    );
    ok(
        &api,
        &admin,
        &["create", "secret", "generic", "other", "--from-literal=a=b"],
    );
    assert_eq!(
        err(&api, &n1, &["get", "secret", "used"], None),
        forbidden(
            r#"secrets "used" is forbidden: User "system:node:n1" cannot get resource "secrets" in API group "" in the namespace "default": no relationship found between node 'n1' and this object"#
        )
    );
    let o = kubectl_as(
        &api,
        &admin,
        &["create", "-f", "-"],
        Some(&pod_on("n1", "used")),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    ok(&api, &n1, &["get", "secret", "used"]);
    assert!(
        err(&api, &n1, &["get", "secret", "other"], None)
            .contains("no relationship found between node 'n1'")
    );
    assert!(err(&api, &n1, &["get", "secrets"], None).contains("cannot list resource \"secrets\""));
    let n2 = mint(&api, "system:node:n2", &[]);
    assert!(
        err(&api, &n2, &["get", "secret", "used"], None)
            .contains("no relationship found between node 'n2'")
    );
    // Pods: it reads all, writes the status of its own.
    ok(
        &api,
        &n1,
        &["get", "pods", "-A", "--field-selector", "spec.nodeName=n1"],
    );
    assert!(
        err(&api, &n2, &["delete", "pod", "p"], None)
            .contains("no relationship found between node 'n2'")
    );
    // A node is not an admin: no roles, no namespaces.
    assert!(
        err(&api, &n1, &["get", "namespaces"], None)
            .contains("cannot list resource \"namespaces\"")
    );
    // The pod goes: so does the node's access to its secret.
    ok(
        &api,
        &admin,
        &["delete", "pod", "p", "--grace-period=0", "--force"],
    );
    common::wait(5, "secret access to end with the pod", || {
        (!kubectl_as(&api, &n1, &["get", "secret", "used"], None)
            .status
            .success())
        .then_some(())
    });
}

#[test]
fn default_roles_exist_and_come_back_after_a_restart() {
    if !have_kubectl() {
        return;
    }
    let mut api = ApiServer::start(&[]);
    let admin = api.kubeconfig();
    let names = ok(&api, &admin, &["get", "clusterroles", "-o", "name"]);
    for want in [
        "cluster-admin",
        "system:discovery",
        "system:basic-user",
        "system:public-info-viewer",
        "system:monitoring",
        "system:node",
        "system:node-proxier",
    ] {
        assert!(
            names
                .lines()
                .any(|l| l == format!("clusterrole.rbac.authorization.k8s.io/{want}")),
            "{want}: {names}"
        );
    }
    let b = ok(
        &api,
        &admin,
        &["get", "clusterrolebinding", "cluster-admin", "-o", "wide"],
    );
    assert!(
        b.contains("ClusterRole/cluster-admin") && b.contains("system:masters"),
        "{b}"
    );
    let label = ok(
        &api,
        &admin,
        &[
            "get",
            "clusterrole",
            "system:discovery",
            "-o",
            "jsonpath={.metadata.labels.kubernetes\\.io/bootstrapping}",
        ],
    );
    assert_eq!(label, "rbac-defaults");
    // A user's own role, a default one removed, another stripped but
    // marked as the user's.
    ok(
        &api,
        &admin,
        &[
            "create",
            "clusterrole",
            "mine",
            "--verb=get",
            "--resource=pods",
        ],
    );
    ok(
        &api,
        &admin,
        &["delete", "clusterrole", "system:basic-user"],
    );
    ok(
        &api,
        &admin,
        &[
            "annotate",
            "clusterrole",
            "system:node-proxier",
            "--overwrite",
            "rbac.authorization.kubernetes.io/autoupdate=false",
        ],
    );
    ok(
        &api,
        &admin,
        &[
            "patch",
            "clusterrole",
            "system:node-proxier",
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/rules","value":[]}]"#,
        ],
    );
    api.restart();
    let names = ok(&api, &admin, &["get", "clusterroles", "-o", "name"]);
    assert!(
        names.contains("clusterrole.rbac.authorization.k8s.io/mine"),
        "{names}"
    );
    assert!(
        names.contains("clusterrole.rbac.authorization.k8s.io/system:basic-user"),
        "{names}"
    );
    let rules = ok(
        &api,
        &admin,
        &[
            "get",
            "clusterrole",
            "system:node-proxier",
            "-o",
            "jsonpath={.rules}",
        ],
    );
    assert!(rules.is_empty() || rules == "[]", "{rules}");
    // Aggregation: the role follows the roles its selector matches.
    ok(
        &api,
        &admin,
        &[
            "create",
            "clusterrole",
            "agg",
            "--aggregation-rule=x-agg=true",
        ],
    );
    ok(
        &api,
        &admin,
        &[
            "create",
            "clusterrole",
            "part",
            "--verb=get,list",
            "--resource=configmaps",
        ],
    );
    ok(
        &api,
        &admin,
        &["label", "clusterrole", "part", "x-agg=true"],
    );
    let rules = |api: &ApiServer| {
        ok(
            api,
            &admin,
            &["get", "clusterrole", "agg", "-o", "jsonpath={.rules}"],
        )
    };
    common::wait(10, "aggregated rules", || {
        rules(&api).contains("configmaps").then_some(())
    });
    let frank = mint(&api, "frank", &[]);
    ok(
        &api,
        &admin,
        &[
            "create",
            "clusterrolebinding",
            "frank-agg",
            "--clusterrole=agg",
            "--user=frank",
        ],
    );
    ok(&api, &frank, &["get", "configmaps", "-A"]);
    ok(&api, &admin, &["delete", "clusterrole", "part"]);
    common::wait(10, "aggregated rules to go", || {
        (!rules(&api).contains("configmaps")).then_some(())
    });
    assert_eq!(can_i(&api, &frank, &["list", "configmaps"]), "no");
    // admin, edit and view, aggregated from their parts.
    ok(&api, &admin, &["create", "namespace", "team"]);
    let gina = mint(&api, "gina", &[]);
    let hank = mint(&api, "hank", &[]);
    ok(
        &api,
        &admin,
        &[
            "create",
            "rolebinding",
            "gina-edit",
            "--clusterrole=edit",
            "--user=gina",
            "-n",
            "team",
        ],
    );
    ok(
        &api,
        &admin,
        &[
            "create",
            "rolebinding",
            "hank-view",
            "--clusterrole=view",
            "--user=hank",
            "-n",
            "team",
        ],
    );
    common::wait(10, "edit to be aggregated", || {
        (can_i(&api, &gina, &["create", "deployments.apps", "-n", "team"]) == "yes").then_some(())
    });
    assert_eq!(can_i(&api, &gina, &["get", "secrets", "-n", "team"]), "yes");
    assert_eq!(can_i(&api, &gina, &["list", "pods", "-n", "team"]), "yes");
    assert_eq!(
        can_i(
            &api,
            &gina,
            &["create", "roles.rbac.authorization.k8s.io", "-n", "team"]
        ),
        "no"
    );
    assert_eq!(can_i(&api, &gina, &["list", "pods", "-n", "default"]), "no");
    assert_eq!(can_i(&api, &hank, &["list", "pods", "-n", "team"]), "yes");
    assert_eq!(can_i(&api, &hank, &["get", "secrets", "-n", "team"]), "no");
    assert_eq!(can_i(&api, &hank, &["delete", "pods", "-n", "team"]), "no");
    let admin_rules = ok(
        &api,
        &admin,
        &["get", "clusterrole", "admin", "-o", "jsonpath={.rules}"],
    );
    assert!(
        admin_rules.contains("rolebindings") && admin_rules.contains("deployments"),
        "{admin_rules}"
    );
    // A user with no roles can still ask what it may do.
    let erin = mint(&api, "erin", &[]);
    assert_eq!(
        can_i(
            &api,
            &erin,
            &["create", "selfsubjectaccessreviews.authorization.k8s.io"]
        ),
        "yes"
    );
    assert_eq!(can_i(&api, &erin, &["get", "pods"]), "no");
    assert_eq!(can_i(&api, &admin, &["delete", "nodes"]), "yes");
    ok(&api, &erin, &["get", "--raw", "/version"]);
}
