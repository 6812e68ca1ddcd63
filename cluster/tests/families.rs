//! `ferry up --ip-family ipv6` and `dual`: pods, Services and the cluster
//! DNS get the families' addresses, and a NodePort answers on localhost
//! through the nodes' addresses of the primary family.

mod common;

use std::sync::{Mutex, MutexGuard, PoisonError};

use common::{TestCluster, curl};
use ferry_cluster::IpFamily;
use ferry_testbed::skip_if_not_root;

const NGINX_YAML: &str = include_str!("seeds/nginx.yaml");

/// Both tests publish NodePort 30000 on the host: one at a time.
static LOCALHOST_30000: Mutex<()> = Mutex::new(());

/// A cluster and the right to localhost:30000, given back after the
/// cluster is gone (fields drop in order).
struct Serving {
    c: TestCluster,
    _held: MutexGuard<'static, ()>,
}

fn serve_and_check(family: IpFamily) -> Serving {
    let held = LOCALHOST_30000
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let c = TestCluster::up_family(2, family);
    let manifest = c.data_dir.join("nginx.yaml");
    std::fs::write(&manifest, NGINX_YAML).expect("write nginx.yaml");
    c.k(&["create", "-f", &manifest.to_string_lossy()]);
    c.k(&["rollout", "status", "deploy/nginx-test", "--timeout=60s"]);
    c.eventually("curl http://localhost:30000/", 30, || {
        curl("http://localhost:30000/").is_ok_and(|p| p.contains("Welcome to nginx!"))
    });
    // Published by this cluster, not answered by another's.
    assert!(
        c.cluster
            .published()
            .iter()
            .any(|p| p.port == 30000 && p.error.is_none() && p.what == "default/service-test"),
        "{:?}",
        c.cluster.published()
    );
    Serving { c, _held: held }
}

fn jsonpath(c: &TestCluster, args: &[&str], path: &str) -> String {
    let mut all = args.to_vec();
    let expr = format!("jsonpath={path}");
    all.extend_from_slice(&["-o", &expr]);
    c.k(&all)
}

#[test]
fn ipv6_cluster_serves_on_v6_addresses() {
    if skip_if_not_root() {
        return;
    }
    let serving = serve_and_check(IpFamily::Ipv6);
    let c = &serving.c;
    let pod_ips = jsonpath(
        c,
        &["get", "pods", "-l", "app=nginx"],
        "{.items[*].status.podIP}",
    );
    let ips: Vec<&str> = pod_ips.split_whitespace().collect();
    assert_eq!(ips.len(), 3, "{pod_ips}");
    assert!(
        ips.iter().all(|ip| ip.starts_with("fd00:10:244:")),
        "{pod_ips}"
    );
    let dns = jsonpath(
        c,
        &["get", "svc", "-n", "kube-system", "kube-dns"],
        "{.spec.clusterIPs}",
    );
    assert_eq!(dns, r#"["fd00:10:96::a"]"#);
    let node_ips = jsonpath(
        c,
        &["get", "nodes"],
        "{.items[*].status.addresses[?(@.type==\"InternalIP\")].address}",
    );
    assert!(
        node_ips.split_whitespace().all(|ip| ip.contains(':')),
        "{node_ips}"
    );
}

#[test]
fn dual_stack_cluster_gives_both_families() {
    if skip_if_not_root() {
        return;
    }
    let serving = serve_and_check(IpFamily::Dual);
    let c = &serving.c;
    let pod_ips = jsonpath(
        c,
        &["get", "pods", "-l", "app=nginx"],
        "{.items[0].status.podIPs[*].ip}",
    );
    let ips: Vec<&str> = pod_ips.split_whitespace().collect();
    assert_eq!(ips.len(), 2, "{pod_ips}");
    assert!(
        ips[0].starts_with("10.244.") && ips[1].starts_with("fd00:10:244:"),
        "{pod_ips}"
    );
    let dns = jsonpath(
        c,
        &["get", "svc", "-n", "kube-system", "kube-dns"],
        "{.spec.clusterIPs}",
    );
    assert_eq!(dns, r#"["10.96.0.10","fd00:10:96::a"]"#);
    c.k(&[
        "patch",
        "svc",
        "service-test",
        "-p",
        r#"{"spec":{"ipFamilyPolicy":"PreferDualStack"}}"#,
    ]);
    let svc = jsonpath(c, &["get", "svc", "service-test"], "{.spec.clusterIPs}");
    assert!(svc.contains("fd00:10:96::"), "{svc}");
}
