//! ferry-node against a real ferry-apiserver, inside a testbed world: the
//! node registers, runs pods as processes in network namespaces wired by
//! ferry-cni, writes their status, deletes them gracefully, and cleans up
//! after itself across restarts. Root only.

mod world;

use std::net::SocketAddr;
use std::time::Duration;

use ferry_testbed::skip_if_not_root;
use serde_json::json;
use world::*;

#[test]
fn node_registers_and_runs_pods() {
    if skip_if_not_root() {
        return;
    }
    let c = Cluster::new(1);
    let node = &c.world.node(0).name;

    // The Node: addresses, capacity, labels, nodeInfo, Ready (the CNI
    // config exists).
    let n = c.get(&["node", node]).expect("Node registered");
    assert!(cond_is(&n, "Ready", "True"), "{n:#}");
    assert!(cond_is(&n, "MemoryPressure", "False"));
    let addrs = n["status"]["addresses"].as_array().expect("addresses");
    assert!(
        addrs
            .iter()
            .any(|a| a["type"] == "InternalIP" && a["address"] == c.world.node(0).ipv4.to_string())
    );
    assert!(
        addrs
            .iter()
            .any(|a| a["type"] == "Hostname" && a["address"] == node.as_str())
    );
    assert_eq!(
        n["metadata"]["labels"]["kubernetes.io/hostname"],
        node.as_str()
    );
    assert_eq!(n["metadata"]["labels"]["kubernetes.io/os"], "linux");
    assert_eq!(n["status"]["capacity"]["pods"], "110");
    assert!(
        n["status"]["capacity"]["memory"]
            .as_str()
            .is_some_and(|m| m.ends_with("Ki"))
    );
    assert_eq!(n["status"]["nodeInfo"]["kubeletVersion"], "v1.32.0-ferry");
    assert!(
        n["status"]["nodeInfo"]["containerRuntimeVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("ferry://"))
    );
    let lease = c
        .get(&["lease", "-n", "kube-node-lease", node])
        .expect("Lease");
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 40);
    let first_renew = lease["spec"]["renewTime"].clone();

    // What the pods refer to.
    c.kubectl(&[
        "create",
        "configmap",
        "settings",
        "--from-literal=greeting=hello-from-cm",
        "--from-literal=COLOR=blue",
    ]);
    c.cp.apply(&json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "my-web", "namespace": "default"},
        "spec": {"selector": {"test": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 80}]}}));
    let sigterm_file = c.world.state_dir().join("got-term");

    c.create_pod(
        "web",
        0,
        json!({"containers": [{"name": "nginx", "image": "nginx:latest",
        "ports": [{"containerPort": 80}],
        "readinessProbe": {"httpGet": {"path": "/", "port": 80}, "periodSeconds": 1}}]}),
    );
    c.create_pod(
        "hi",
        0,
        json!({"containers": [busybox("echo hi; sleep 3600")]}),
    );
    let mut envpod = busybox(
        "env; echo ---; cat /etc/resolv.conf; echo ---; cat /etc/hosts; echo ---; cat /proc/sys/kernel/hostname; sleep 3600",
    );
    envpod["env"] = json!([
        {"name": "MY_POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "MY_NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "greeting"}}},
        {"name": "COMBINED", "value": "$(GREETING)@$(MY_POD)"},
    ]);
    envpod["envFrom"] = json!([{"configMapRef": {"name": "settings"}, "prefix": "CM_"}]);
    c.create_pod("envpod", 0, json!({"containers": [envpod]}));
    let mut unready = busybox("sleep 3600");
    unready["readinessProbe"] = json!({"tcpSocket": {"port": 9}, "periodSeconds": 1});
    c.create_pod("unready", 0, json!({"containers": [unready]}));
    c.create_pod(
        "crash",
        0,
        json!({"containers": [busybox("echo boom; exit 3")]}),
    );
    c.create_pod(
        "unknown",
        0,
        json!({"containers": [{"name": "app", "image": "quay.io/acme/app:v2"}]}),
    );
    let trap = format!(
        "trap 'echo got-term > {}; exit 0' TERM; echo ready; while true; do sleep 0.2; done",
        sigterm_file.display()
    );
    c.create_pod(
        "term",
        0,
        json!({"terminationGracePeriodSeconds": 10, "containers": [busybox(&trap)]}),
    );

    // nginx: Running and Ready with an IP from the node's pod CIDR, and its
    // welcome page from the node.
    let web = c.wait_pod("web", 30, "Running and Ready", |p| {
        p["status"]["phase"] == "Running" && cond_is(p, "Ready", "True")
    });
    let ip = pod_ip(&web);
    assert!(
        c.world
            .node(0)
            .pod_cidrs
            .iter()
            .any(|cidr| cidr.contains(&ip)),
        "{ip}"
    );
    assert_eq!(web["status"]["hostIP"], c.world.node(0).ipv4.to_string());
    let cs = container_status(&web, "nginx");
    assert_eq!(cs["ready"], true);
    assert_eq!(cs["started"], true);
    assert!(
        cs["containerID"]
            .as_str()
            .is_some_and(|id| id.starts_with("ferry://"))
    );
    assert!(cs["state"]["running"]["startedAt"].is_string());
    for kind in ["PodScheduled", "Initialized", "ContainersReady"] {
        assert!(cond_is(&web, kind, "True"), "{kind}: {web:#}");
    }
    let page = c
        .world
        .node(0)
        .netns
        .exec([
            "curl",
            "-s",
            "--max-time",
            "5",
            &format!("http://{}/", SocketAddr::new(ip, 80)),
        ])
        .expect("curl the pod");
    assert!(page.contains("Welcome to nginx!"), "{page}");
    let reasons: Vec<String> = c
        .events_for("web")
        .iter()
        .map(|e| e["reason"].as_str().unwrap_or_default().to_owned())
        .collect();
    for r in ["Pulled", "Created", "Started"] {
        assert!(reasons.iter().any(|x| x == r), "{r} in {reasons:?}");
    }

    // The container's process is in the pod's cgroup, in the pod's netns.
    let web_uid = uid(&web);
    let procs = std::fs::read_to_string(c.nodes[0].pod_cgroup(&web_uid).join("nginx/cgroup.procs"))
        .expect("cgroup");
    let pid: u32 = procs
        .lines()
        .next()
        .and_then(|l| l.parse().ok())
        .expect("a process in the cgroup");
    let netns_of = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/net")).expect("ns link");
    let node_ns = std::fs::metadata(c.nodes[0].netns_dir().join(format!("ferry-{web_uid}")))
        .expect("netns file");
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!(
        netns_of(&pid.to_string()).to_string_lossy(),
        format!("net:[{}]", node_ns.ino())
    );

    // busybox: `hi` in the log file.
    let hi = c.wait_pod("hi", 20, "Running", |p| p["status"]["phase"] == "Running");
    let hi_uid = uid(&hi);
    wait_until("hi in the log", 10, || {
        c.nodes[0].log(&hi_uid, "main", 0).contains("hi")
    });

    // The env pod: downward API, ConfigMap, $(VAR), service links;
    // resolv.conf, hosts, hostname.
    let envp = c.wait_pod("envpod", 20, "Running", |p| {
        p["status"]["phase"] == "Running"
    });
    let env_uid = uid(&envp);
    let env_ip = pod_ip(&envp);
    wait_until("env pod output", 10, || {
        c.nodes[0].log(&env_uid, "main", 0).matches("---").count() >= 3
    });
    let log = c.nodes[0].log(&env_uid, "main", 0);
    let mut parts = log.split("---\n");
    let env: Vec<&str> = parts.next().unwrap_or_default().lines().collect();
    let has = |kv: &str| env.contains(&kv);
    assert!(has("MY_POD=envpod"), "{log}");
    assert!(has(&format!("MY_IP={env_ip}")), "{log}");
    assert!(has(&format!("MY_NODE={node}")), "{log}");
    assert!(has("GREETING=hello-from-cm"), "{log}");
    assert!(has("COMBINED=hello-from-cm@envpod"), "{log}");
    assert!(has("CM_COLOR=blue"), "{log}");
    let svc = c.get(&["service", "my-web"]).expect("service");
    let svc_ip = svc["spec"]["clusterIP"].as_str().expect("cluster IP");
    assert!(has(&format!("MY_WEB_SERVICE_HOST={svc_ip}")), "{log}");
    assert!(has("MY_WEB_SERVICE_PORT=80"), "{log}");
    assert!(
        has(&format!("MY_WEB_PORT_80_TCP=tcp://{svc_ip}:80")),
        "{log}"
    );
    assert!(
        env.iter()
            .any(|l| l.starts_with("KUBERNETES_SERVICE_HOST=")),
        "{log}"
    );
    let resolv = parts.next().unwrap_or_default();
    assert!(resolv.contains("nameserver 10.96.0.10"), "{resolv}");
    assert!(
        resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local"),
        "{resolv}"
    );
    assert!(resolv.contains("options ndots:5"), "{resolv}");
    let hosts = parts.next().unwrap_or_default();
    assert!(hosts.contains(&format!("{env_ip}\tenvpod")), "{hosts}");
    assert_eq!(parts.next().unwrap_or_default().trim(), "envpod");
    // The node's own files are untouched.
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    assert!(
        !host_resolv.contains("10.96.0.10"),
        "the host's resolv.conf changed"
    );

    // A failing readiness probe keeps the pod Running but not Ready.
    let unready = c.wait_pod("unready", 20, "Running", |p| {
        p["status"]["phase"] == "Running"
    });
    std::thread::sleep(Duration::from_secs(3));
    let unready = c.pod("unready").unwrap_or(unready);
    assert!(cond_is(&unready, "Ready", "False"), "{unready:#}");
    assert_eq!(
        condition(&unready, "Ready").expect("Ready")["reason"],
        "ContainersNotReady"
    );
    assert!(c.events_for("unready").iter().any(|e| {
        e["reason"] == "Unhealthy"
            && e["message"]
                .as_str()
                .is_some_and(|m| m.contains("Readiness probe failed"))
    }));

    // An unknown image: a clear waiting reason, never Running.
    let unknown = c.wait_pod("unknown", 20, "waiting on its image", |p| {
        container_status(p, "app")["state"]["waiting"]["reason"]
            .as_str()
            .is_some_and(|r| r == "ErrImagePull" || r == "ImagePullBackOff")
    });
    let msg = container_status(&unknown, "app")["state"]["waiting"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        msg.contains("quay.io/acme/app:v2") && msg.contains("never pulls images"),
        "{msg}"
    );
    assert_eq!(unknown["status"]["phase"], "Pending");
    assert!(
        c.events_for("unknown")
            .iter()
            .any(|e| e["reason"] == "Failed" && e["type"] == "Warning")
    );

    // A crashing container restarts with back-off: at once, then after
    // 10 s, with its last state kept.
    let crash = c.wait_pod("crash", 40, "restarted twice", |p| {
        container_status(p, "main")["restartCount"]
            .as_i64()
            .is_some_and(|n| n >= 2)
    });
    let cs = container_status(&crash, "main");
    assert_eq!(cs["lastState"]["terminated"]["exitCode"], 3, "{cs:#}");
    let crash_uid = uid(&crash);
    assert!(c.nodes[0].log(&crash_uid, "main", 1).contains("boom"));
    c.wait_pod("crash", 15, "in CrashLoopBackOff", |p| {
        container_status(p, "main")["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    });
    assert!(
        c.events_for("crash")
            .iter()
            .any(|e| e["reason"] == "BackOff")
    );

    // The Lease was renewed meanwhile (every 10 s).
    wait_until("Lease renewed", 15, || {
        c.get(&["lease", "-n", "kube-node-lease", node])
            .is_some_and(|l| l["spec"]["renewTime"] != first_renew)
    });

    // Graceful deletion: SIGTERM reaches the process, then the pod's
    // cgroup, netns and veth go and the pod object disappears.
    let term = c.wait_pod("term", 20, "Running", |p| p["status"]["phase"] == "Running");
    let term_uid = uid(&term);
    wait_until("term ready", 10, || {
        c.nodes[0].log(&term_uid, "main", 0).contains("ready")
    });
    let netns_file = c.nodes[0].netns_dir().join(format!("ferry-{term_uid}"));
    assert!(netns_file.exists());
    let links_before = c
        .world
        .node(0)
        .netns
        .exec(["ip", "-o", "link"])
        .expect("links");
    c.kubectl(&["delete", "pod", "term", "--wait=false"]);
    wait_until("pod object gone", 20, || c.pod("term").is_none());
    assert_eq!(
        std::fs::read_to_string(&sigterm_file)
            .unwrap_or_default()
            .trim(),
        "got-term"
    );
    assert!(!netns_file.exists(), "netns file left");
    assert!(!c.nodes[0].pod_cgroup(&term_uid).exists(), "cgroup left");
    let links_after = c
        .world
        .node(0)
        .netns
        .exec(["ip", "-o", "link"])
        .expect("links");
    assert_eq!(
        links_after.lines().count() + 1,
        links_before.lines().count(),
        "one veth fewer:\n{links_before}\n{links_after}"
    );
    assert!(
        c.events_for("term")
            .iter()
            .any(|e| e["reason"] == "Killing")
    );
}

#[test]
fn restart_adopts_live_pods_and_cleans_leftovers() {
    if skip_if_not_root() {
        return;
    }
    let mut c = Cluster::new(1);
    c.create_pod(
        "keep",
        0,
        json!({"containers": [{"name": "main", "image": "nginx"}]}),
    );
    let mut doomed = busybox("sleep 3600");
    doomed["volumeMounts"] = json!([{"name": "scratch", "mountPath": c.world.state_dir()}]);
    c.create_pod(
        "doomed",
        0,
        json!({"containers": [doomed], "volumes": [{"name": "scratch", "emptyDir": {}}]}),
    );
    c.create_pod(
        "done",
        0,
        json!({"restartPolicy": "Never", "containers": [busybox("echo done")],
            "volumes": [{"name": "scratch", "emptyDir": {}}]}),
    );
    let done = c.wait_pod("done", 30, "Succeeded", |p| {
        p["status"]["phase"] == "Succeeded"
    });
    // A finished pod keeps its logs, not its volumes.
    let done_dir = c.nodes[0].state_dir.join(format!("pods/{}", uid(&done)));
    wait_until("the finished pod's volumes removed", 10, || {
        !done_dir.join("_volumes").exists()
    });
    assert!(done_dir.join("main/0.log").exists(), "the log is kept");
    let keep = c.wait_pod("keep", 30, "Running", |p| p["status"]["phase"] == "Running");
    let doomed = c.wait_pod("doomed", 30, "Running", |p| {
        p["status"]["phase"] == "Running"
    });
    let (keep_uid, keep_ip) = (uid(&keep), pod_ip(&keep));
    let (doomed_uid, doomed_ip) = (uid(&doomed), pod_ip(&doomed));
    let doomed_netns = c.nodes[0].netns_dir().join(format!("ferry-{doomed_uid}"));
    assert!(doomed_netns.exists());
    let doomed_volume = c.nodes[0]
        .state_dir
        .join(format!("pods/{doomed_uid}/_volumes/scratch"));
    assert!(doomed_volume.is_dir(), "the emptyDir exists");

    // ferry-node dies; the doomed pod is force-deleted while it is down.
    c.nodes[0].crash();
    c.kubectl(&["delete", "pod", "doomed", "--grace-period=0", "--force"]);
    assert!(c.pod("doomed").is_none());
    assert!(doomed_netns.exists(), "nothing cleaned it yet");
    let ipam_net = c.nodes[0].ipam_dir.join("ferry");
    assert!(
        ipam_net.join(doomed_ip.to_string()).exists(),
        "the doomed pod's address is reserved"
    );

    c.nodes[0].restart();
    wait_until("the leftover netns removed", 20, || !doomed_netns.exists());
    wait_until("the leftover cgroup removed", 10, || {
        !c.nodes[0].pod_cgroup(&doomed_uid).exists()
    });
    assert!(!doomed_volume.exists(), "the leftover emptyDir removed");
    assert!(
        !ipam_net.join(doomed_ip.to_string()).exists(),
        "the doomed pod's address was released (CNI DEL)"
    );

    // The live pod keeps its sandbox and address; its container runs
    // again (restartCount 1).
    let keep = c.wait_pod("keep", 30, "Running again", |p| {
        p["status"]["phase"] == "Running"
            && container_status(p, "main")["restartCount"] == 1
            && container_status(p, "main")["state"]["running"].is_object()
    });
    assert_eq!(pod_ip(&keep), keep_ip);
    assert!(ipam_net.join(keep_ip.to_string()).exists());
    // A pod that had ended stays as its run left it: never run again, its
    // status not rewritten as a fresh one.
    let after = c.pod("done").expect("the finished pod");
    assert_eq!(after["status"]["phase"], "Succeeded");
    assert!(container_status(&done, "main")["state"]["terminated"].is_object());
    assert_eq!(
        container_status(&after, "main"),
        container_status(&done, "main"),
        "the finished pod's container status is kept"
    );
    wait_until("second run logged", 10, || {
        c.nodes[0]
            .log(&keep_uid, "main", 1)
            .contains("ferry-netexec: listening")
    });
    let page = c.world.node(0).netns.exec([
        "curl",
        "-s",
        "--max-time",
        "5",
        &format!("http://{keep_ip}/"),
    ]);
    assert!(
        page.as_deref()
            .is_ok_and(|p| p.contains("Welcome to nginx!")),
        "the adopted sandbox serves again: {page:?}"
    );
}
