//! The study notes' first walkthrough (shared/seeds 003), typed as written
//! there, against a `ferry up` cluster: a Deployment of three nginx
//! replicas behind NodePort 30000, `curl http://localhost:30000/` from the
//! host, the `-o wide` listings, and self-healing after `kubectl delete pod`.

mod common;

use common::{TestCluster, curl};
use ferry_testbed::skip_if_not_root;

/// The manifest of the notes, byte for byte (Japanese comments included).
const NGINX_YAML: &str = include_str!("seeds/nginx.yaml");

/// Names of the nginx pods that are Running and Ready and not going away.
fn running_pods(c: &TestCluster) -> Vec<String> {
    let Ok(out) = c.kubectl(&["get", "pods", "-l", "app=nginx", "-o", "json"]) else {
        return Vec::new();
    };
    let list: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| common::pod_serving(p))
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn seed_003_deployment_behind_node_port_30000_heals_and_answers_on_localhost() {
    if skip_if_not_root() {
        return;
    }
    let c = TestCluster::up(2);
    let manifest = c.data_dir.join("nginx.yaml");
    std::fs::write(&manifest, NGINX_YAML).expect("write nginx.yaml");

    let created = c.k(&["create", "-f", &manifest.to_string_lossy()]);
    assert_eq!(
        created,
        "deployment.apps/nginx-test created\nservice/service-test created\n"
    );
    c.eventually("3 nginx pods Running and Ready", 90, || {
        running_pods(&c).len() == 3
    });
    // The page, from the host, through the loopback publisher, a node's
    // NodePort and the eBPF dataplane.
    c.eventually("curl http://localhost:30000/", 30, || {
        curl("http://localhost:30000/").is_ok_and(|page| page.contains("Welcome to nginx!"))
    });

    let deploy = c.k(&["get", "deploy", "-o", "wide"]);
    let mut lines = deploy.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "AGE",
            "CONTAINERS",
            "IMAGES",
            "SELECTOR"
        ],
        "{deploy}"
    );
    let row: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(row[..4], ["nginx-test", "3/3", "3", "3"], "{deploy}");
    assert_eq!(row[5..], ["nginx", "nginx:latest", "app=nginx"], "{deploy}");

    let pods = c.k(&["get", "pods", "-o", "wide"]);
    let nodes: Vec<String> = c.cluster.nodes().iter().map(|n| n.name.clone()).collect();
    let running: Vec<&str> = pods.lines().skip(1).collect();
    assert_eq!(running.len(), 3, "{pods}");
    for line in &running {
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert!(cols[0].starts_with("nginx-test-"), "{pods}");
        assert_eq!(cols[1..4], ["1/1", "Running", "0"], "{pods}");
        assert!(
            cols[5].starts_with("10.244."),
            "pod IP from the node's pod CIDR: {pods}"
        );
        assert!(nodes.iter().any(|n| n == cols[6]), "NODE column: {pods}");
    }

    let rs = c.k(&["get", "rs", "-o", "wide"]);
    let row: Vec<&str> = rs
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert!(row[0].starts_with("nginx-test-"), "{rs}");
    assert_eq!(row[1..4], ["3", "3", "3"], "{rs}");
    assert!(row[7].starts_with("app=nginx,pod-template-hash="), "{rs}");

    let svc = c.k(&["get", "svc", "-o", "wide"]);
    let row = svc
        .lines()
        .find(|l| l.starts_with("service-test "))
        .unwrap_or_default();
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[1], "NodePort", "{svc}");
    assert_eq!(cols[4], "80:30000/TCP", "{svc}");
    assert_eq!(cols[6], "app=nginx", "{svc}");

    let victim = running_pods(&c).remove(0);
    let described = c.k(&["describe", "pod", &victim]);
    assert!(
        described.contains("Controlled By:  ReplicaSet/nginx-test-"),
        "{described}"
    );
    assert!(
        described
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["Status:", "Running"]),
        "{described}"
    );

    // Self-healing: the ReplicaSet replaces a deleted pod.
    let deleted = c.k(&["delete", "pod", &victim]);
    assert_eq!(deleted, format!("pod \"{victim}\" deleted\n"));
    c.eventually("a replacement pod Running and Ready", 60, || {
        let now = running_pods(&c);
        now.len() == 3 && !now.contains(&victim)
    });
    c.eventually("curl after the replacement", 30, || {
        curl("http://localhost:30000/").is_ok_and(|page| page.contains("Welcome to nginx!"))
    });
}

#[test]
fn a_pod_reaches_the_apiserver_through_the_kubernetes_service() {
    if skip_if_not_root() {
        return;
    }
    let c = TestCluster::up(2);
    let manifest = c.data_dir.join("client.yaml");
    // The host's curl, run in the pod (the container shares the host's
    // file system): through the cluster DNS, the `kubernetes` Service and
    // the underlay's route back to the pod.
    std::fs::write(
        &manifest,
        r#"apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: busybox
    command: ["sh", "-c", "curl -sk --max-time 10 -o /dev/null -w 'code=%{http_code}' https://kubernetes.default.svc.cluster.local/version"]
"#,
    )
    .expect("manifest");
    c.k(&["create", "-f", &manifest.to_string_lossy()]);
    c.eventually("the client done", 60, || {
        c.kubectl(&["get", "pod", "client", "-o", "jsonpath={.status.phase}"])
            .is_ok_and(|p| p == "Succeeded" || p == "Failed")
    });
    let out = c.k(&["logs", "client"]);
    // Any HTTP answer (the apiserver may want a token for /version) proves
    // the round trip; 000 is no answer.
    assert!(
        out.starts_with("code=") && out != "code=000",
        "the apiserver answered the pod: {out}"
    );
}
