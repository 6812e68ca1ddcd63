//! A pod talks to the API as its ServiceAccount, with no kubeconfig: the
//! real kubectl in a pod of a `ferry up` cluster finds the in-cluster
//! config (`KUBERNETES_SERVICE_HOST`/`PORT` from ferry-node, the token,
//! `ca.crt` and `namespace` projected at
//! `/var/run/secrets/kubernetes.io/serviceaccount`), reaches the apiserver
//! through the `kubernetes` Service's ClusterIP (ferry-agent's dataplane),
//! verifies its certificate with the projected CA, and is authorized by
//! RBAC as `system:serviceaccount:default:reader`: Forbidden first, then,
//! once a RoleBinding grants it, the list of Services.

mod common;

use common::TestCluster;
use ferry_testbed::skip_if_not_root;

/// A pod running `kubectl get services -n default` as ServiceAccount
/// `reader`, once. Its HOME (kubectl's cache) is an emptyDir at `home`;
/// KUBECONFIG names no file, so only the in-cluster config is there.
fn kubectl_pod(name: &str, home: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  serviceAccountName: reader
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox
    command: ["kubectl", "get", "services", "-n", "default"]
    env:
    - {{name: KUBECONFIG, value: /nonexistent/ferry-test/kubeconfig}}
    - {{name: HOME, value: "{home}"}}
    volumeMounts:
    - {{name: home, mountPath: "{home}"}}
  volumes:
  - {{name: home, emptyDir: {{}}}}
"#
    )
}

fn phase(c: &TestCluster, pod: &str) -> String {
    c.kubectl(&["get", "pod", pod, "-o", "jsonpath={.status.phase}"])
        .unwrap_or_default()
}

/// Runs the pod to its end; its log and final phase.
fn run(c: &TestCluster, name: &str, home: &str) -> (String, String) {
    let manifest = c.data_dir.join(format!("{name}.yaml"));
    std::fs::write(&manifest, kubectl_pod(name, home)).expect("manifest");
    c.k(&["apply", "-f", manifest.to_str().expect("path")]);
    c.eventually(&format!("{name} finished"), 90, || {
        matches!(phase(c, name).as_str(), "Succeeded" | "Failed")
    });
    let mut log = String::new();
    c.eventually(&format!("{name}'s log"), 20, || {
        log = c.kubectl(&["logs", name]).unwrap_or_default();
        !log.is_empty()
    });
    (log, phase(c, name))
}

#[test]
fn a_pod_uses_its_service_account_token_through_the_kubernetes_service() {
    if skip_if_not_root() {
        return;
    }
    let c = TestCluster::up(1);
    let home = c.data_dir.join("sa-home");
    std::fs::create_dir_all(&home).expect("home mount point");
    let home = home.to_str().expect("path").to_owned();
    c.k(&["create", "serviceaccount", "reader"]);

    // No grant: the apiserver knows the pod's identity and refuses it.
    let (log, end) = run(&c, "denied", &home);
    assert!(
        log.contains(
            "Error from server (Forbidden): services is forbidden: User \"system:serviceaccount:default:reader\" cannot list resource \"services\" in API group \"\" in the namespace \"default\""
        ),
        "{log}"
    );
    assert_eq!(end, "Failed", "{log}");

    // A RoleBinding grants listing Services: the same pod lists them.
    c.k(&[
        "create",
        "role",
        "service-reader",
        "--verb=list",
        "--resource=services",
    ]);
    c.k(&[
        "create",
        "rolebinding",
        "reader-lists-services",
        "--role=service-reader",
        "--serviceaccount=default:reader",
    ]);
    let (log, end) = run(&c, "allowed", &home);
    assert_eq!(end, "Succeeded", "{log}");
    let kubernetes = log
        .lines()
        .find(|l| l.starts_with("kubernetes "))
        .unwrap_or_else(|| panic!("no kubernetes Service in:\n{log}"));
    let cluster_ip = c.k(&[
        "get",
        "service",
        "kubernetes",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    assert!(kubernetes.contains(&cluster_ip), "{log}");
    assert!(log.starts_with("NAME"), "{log}");
}
