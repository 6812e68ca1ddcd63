//! A `ferry up` cluster under the things that happen to real ones: a
//! rolling update while clients keep asking, a readiness probe that starts
//! failing, bad input (an image nobody has, a pod nothing can take, a
//! container that crashes), and a node whose runtime stops.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{TestCluster, curl};
use ferry_testbed::skip_if_not_root;
use serde_json::{Value, json};

fn deployment(name: &str, replicas: u32, image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "nginx", "image": image, "ports": [{"containerPort": 80}]}]},
            },
        },
    })
}

fn node_port_service(name: &str, target: u16) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name},
        "spec": {"type": "NodePort", "selector": {"app": name}, "ports": [{"port": 80, "targetPort": target}]},
    })
}

fn node_port(c: &TestCluster, svc: &str) -> u16 {
    c.get_json(&["svc", svc])["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .expect("a node port")
}

/// The addresses of a Service's ready endpoints.
fn ready_endpoints(c: &TestCluster, svc: &str) -> Vec<String> {
    let label = format!("kubernetes.io/service-name={svc}");
    let slices = c.get_json(&["endpointslices", "-l", &label]);
    slices["items"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["conditions"]["ready"] == true)
        .filter_map(|e| e["addresses"][0].as_str().map(str::to_owned))
        .collect()
}

fn has_event(c: &TestCluster, object: &str, reason: &str) -> bool {
    let events = c.get_json(&[
        "events",
        "--field-selector",
        &format!("involvedObject.name={object}"),
    ]);
    events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e["reason"] == reason)
}

#[test]
fn rolling_update_under_traffic_loses_no_request_and_a_failing_probe_removes_a_pod() {
    if skip_if_not_root() {
        return;
    }
    let c = TestCluster::up(2);
    // As Kubernetes' docs advise for rollouts without errors: the old pod
    // keeps serving while its endpoint leaves every node's Service maps,
    // which starts at the same moment as its termination. Without it a
    // connection can reach a listener that has just closed.
    let mut web = deployment("web", 3, "nginx:1.24");
    web["spec"]["template"]["spec"]["containers"][0]["lifecycle"] =
        json!({"preStop": {"exec": {"command": ["sleep", "2"]}}});
    c.apply(&web);
    c.apply(&node_port_service("web", 80));
    c.k(&["rollout", "status", "deploy/web", "--timeout=60s"]);
    let url = format!("http://localhost:{}/", node_port(&c, "web"));
    c.eventually("the NodePort answers on localhost", 30, || {
        curl(&url).is_ok_and(|p| p.contains("Welcome to nginx!"))
    });

    // Clients keep asking, one after another, while every pod is replaced.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, url) = (Arc::clone(&stop), url.clone());
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) && ok < 100_000 {
                match curl(&url) {
                    Ok(p) if p.contains("Welcome to nginx!") => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            (ok, failed)
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    c.k(&["set", "image", "deploy/web", "nginx=nginx:1.25"]);
    c.k(&["rollout", "status", "deploy/web", "--timeout=90s"]);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = load.join().expect("the load thread");
    assert!(
        failed.is_empty(),
        "{} failed of {}: {failed:?}",
        failed.len(),
        ok as usize + failed.len()
    );
    assert!(ok >= 20, "only {ok} requests during the rollout");
    let pods = c.get_json(&["pods", "-l", "app=web"]);
    let images: Vec<&str> = pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter_map(|p| p["spec"]["containers"][0]["image"].as_str())
        .collect();
    assert_eq!(images, ["nginx:1.25"; 3], "every pod replaced");

    // A paused Deployment takes template changes without rolling them out;
    // resumed, it rolls them out.
    let out = c.k(&["rollout", "pause", "deploy/web"]);
    assert!(out.contains("paused"), "{out}");
    c.k(&["set", "image", "deploy/web", "nginx=nginx:1.26"]);
    c.eventually("the paused Deployment's change observed", 30, || {
        let d = c.get_json(&["deploy", "web"]);
        d["status"]["observedGeneration"] == d["metadata"]["generation"]
            && d["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Progressing" && c["reason"] == "DeploymentPaused")
    });
    let rs_images = |c: &TestCluster| -> Vec<String> {
        let mut images: Vec<String> = c.get_json(&["rs", "-l", "app=web"])["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["spec"]["template"]["spec"]["containers"][0]["image"].as_str())
            .map(str::to_owned)
            .collect();
        images.sort();
        images
    };
    assert_eq!(
        rs_images(&c),
        ["nginx:1.24", "nginx:1.25"],
        "no rollout while paused"
    );
    let out = c.k(&["rollout", "resume", "deploy/web"]);
    assert!(out.contains("resumed"), "{out}");
    c.k(&["rollout", "status", "deploy/web", "--timeout=90s"]);
    assert_eq!(rs_images(&c), ["nginx:1.24", "nginx:1.25", "nginx:1.26"]);
    let history = c.k(&["rollout", "history", "deploy/web"]);
    assert_eq!(
        history
            .lines()
            .filter(|l| l.trim_start().starts_with(char::is_numeric))
            .count(),
        3,
        "{history}"
    );

    // A readiness probe that starts failing takes the pod out of its
    // Service: the file it checks is on the host's file system, which the
    // container shares.
    let marker = c.data_dir.join("probe-ready");
    std::fs::write(&marker, "").expect("marker");
    c.apply(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "probed", "labels": {"app": "probed"}},
        "spec": {"containers": [{
            "name": "web", "image": "nginx",
            "ports": [{"containerPort": 80}],
            "readinessProbe": {
                "exec": {"command": ["test", "-e", marker.to_string_lossy()]},
                "periodSeconds": 1, "failureThreshold": 1,
            },
        }]},
    }));
    c.apply(&node_port_service("probed", 80));
    c.eventually("the probed pod ready in its Service", 30, || {
        ready_endpoints(&c, "probed").len() == 1
    });
    let probed_url = format!("http://localhost:{}/", node_port(&c, "probed"));
    c.eventually("the probed pod answers", 30, || {
        curl(&probed_url).is_ok_and(|p| p.contains("Welcome to nginx!"))
    });
    std::fs::remove_file(&marker).expect("remove marker");
    c.eventually("the failing pod out of its Service", 30, || {
        ready_endpoints(&c, "probed").is_empty()
    });
    c.eventually("no answer without a ready endpoint", 30, || {
        curl(&probed_url).is_err()
    });
    let pod = c.get_json(&["pod", "probed"]);
    assert_eq!(pod["status"]["phase"], "Running");
    assert!(has_event(&c, "probed", "Unhealthy"));
}

#[test]
fn bad_input_gets_clear_statuses_and_a_lost_node_goes_not_ready() {
    if skip_if_not_root() {
        return;
    }
    let mut c = TestCluster::up_with(2, &["--node-monitor-grace-period", "15s"]);
    c.apply(&deployment("web", 2, "nginx"));
    c.apply(&node_port_service("web", 80));
    c.k(&["rollout", "status", "deploy/web", "--timeout=60s"]);
    let url = format!("http://localhost:{}/", node_port(&c, "web"));
    c.eventually("the NodePort answers on localhost", 30, || {
        curl(&url).is_ok_and(|p| p.contains("Welcome to nginx!"))
    });

    let pod = |name: &str, spec: Value| json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec});
    c.apply(&pod(
        "unknown-image",
        json!({"containers": [{"name": "c", "image": "registry.example/nothing:1"}]}),
    ));
    c.apply(&pod(
            "nowhere",
            json!({"nodeSelector": {"disktype": "none"}, "containers": [{"name": "c", "image": "nginx"}]}),
        ),
    );
    c.apply(&pod(
            "crasher",
            json!({"containers": [{"name": "c", "image": "busybox", "command": ["sh", "-c", "echo bye; exit 3"]}]}),
        ),
    );
    c.eventually("the unknown image explained", 30, || {
        let p = c.get_json(&["pod", "unknown-image"]);
        let reason = &p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"];
        (reason == "ErrImagePull" || reason == "ImagePullBackOff")
            && p["status"]["phase"] == "Pending"
            && has_event(&c, "unknown-image", "Failed")
    });
    c.eventually("the unschedulable pod explained", 30, || {
        let p = c.get_json(&["pod", "nowhere"]);
        p["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|cond| {
                cond["type"] == "PodScheduled"
                    && cond["status"] == "False"
                    && cond["reason"] == "Unschedulable"
                    && cond["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("0/2 nodes are available"))
            })
            && has_event(&c, "nowhere", "FailedScheduling")
    });
    c.eventually("the crashing container restarted with back-off", 40, || {
        let p = c.get_json(&["pod", "crasher"]);
        let st = &p["status"]["containerStatuses"][0];
        st["restartCount"].as_u64().is_some_and(|n| n >= 1)
            && st["lastState"]["terminated"]["exitCode"] == 3
            && has_event(&c, "crasher", "BackOff")
    });
    // None of it disturbed the rest.
    let page = curl(&url);
    assert!(
        page.as_ref().is_ok_and(|p| p.contains("Welcome to nginx!")),
        "{url}: {page:?}\n{}",
        c.k(&["get", "pods,endpointslices", "-o", "wide"])
    );
    assert_eq!(ready_endpoints(&c, "web").len(), 2);

    // A node whose runtime stops renewing its Lease (every 10 s) goes
    // NotReady after the grace period (15 s here, 40 s by default), and its
    // pods leave the Service; the other node's keep serving.
    let lost = c.cluster.nodes()[1].name.clone();
    c.cluster
        .stop("node", Some(&lost))
        .expect("stop the runtime");
    c.eventually("the lost node NotReady", 45, || {
        c.kubectl(&["get", "node", &lost, "--no-headers"])
            .is_ok_and(|l| l.split_whitespace().nth(1) == Some("NotReady"))
    });
    let on_lost = c.get_json(&[
        "pods",
        "-l",
        "app=web",
        "--field-selector",
        &format!("spec.nodeName={lost}"),
    ]);
    let lost_ips: Vec<String> = on_lost["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["status"]["podIP"].as_str().map(str::to_owned))
        .collect();
    c.eventually("the lost node's pods out of the Service", 30, || {
        let ready = ready_endpoints(&c, "web");
        !ready.is_empty() && ready.iter().all(|ip| !lost_ips.contains(ip))
    });
    c.eventually("still served", 30, || {
        curl(&url).is_ok_and(|p| p.contains("Welcome to nginx!"))
    });
    c.cluster
        .start("node", Some(&lost))
        .expect("start the runtime");
    c.eventually("the node Ready again", 40, || {
        c.kubectl(&["get", "node", &lost, "--no-headers"])
            .is_ok_and(|l| l.split_whitespace().nth(1) == Some("Ready"))
    });
}

/// A LoadBalancer Service gets an ingress IP from the cluster's pool (on
/// the underlay, announced by a node's agent) and answers on the host's
/// loopback at its own port, as a local cloud provider publishes it; gone
/// with the Service.
#[test]
fn a_load_balancer_gets_an_address_and_answers_on_localhost() {
    if skip_if_not_root() {
        return;
    }
    let c = TestCluster::up(2);
    c.apply(&deployment("lb", 2, "nginx"));
    c.apply(&json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "lb"},
        "spec": {"type": "LoadBalancer", "selector": {"app": "lb"},
                 "ports": [{"port": 18080, "targetPort": 80}]},
    }));
    c.k(&["rollout", "status", "deploy/lb", "--timeout=60s"]);
    c.eventually("an ingress IP", 30, || {
        c.get_json(&["svc", "lb"])["status"]["loadBalancer"]["ingress"][0]["ip"]
            .as_str()
            .is_some_and(|ip| ip.starts_with("172.31."))
    });
    c.eventually("the LoadBalancer answers on localhost:18080", 30, || {
        curl("http://localhost:18080/").is_ok_and(|p| p.contains("Welcome to nginx!"))
    });
    let published: Vec<String> = c
        .cluster
        .published()
        .iter()
        .map(|p| p.what.clone())
        .collect();
    assert!(
        published.iter().any(|w| w == "default/lb (LoadBalancer)"),
        "{published:?}"
    );
    c.k(&["delete", "svc", "lb"]);
    c.eventually("the port closed with the Service", 30, || {
        curl("http://localhost:18080/").is_err()
    });
}
