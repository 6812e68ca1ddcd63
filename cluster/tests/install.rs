//! Ferry installed from `deploy/` on a 3-node `ferry up` cluster, as on any
//! cluster: the DaemonSet's agent on every node, ferry-dns's Deployment
//! behind `kube-dns`, kubectl's view of them, and `kubectl rollout restart
//! ds/ferry-agent` under traffic keeping the connections open through it
//! (the agent's programs and maps are pinned: a new agent takes them over).

mod common;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{TestCluster, pod_serving};
use ferry_testbed::skip_if_not_root;
use serde_json::json;

/// A TCP echo server (the host's python3: a process container with a
/// `command` runs it).
const ECHO_SERVER: &str = r#"
import socket, threading
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7000))
s.listen(64)
def serve(c):
    while True:
        d = c.recv(4096)
        if not d:
            break
        c.sendall(d)
    c.close()
print("listening", flush=True)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// A client that holds one connection to `argv[1]:argv[2]` and has a line
/// echoed every 100 ms, logging every tenth; any failure ends it (its pod
/// never restarts, so it ends Failed).
const ECHO_CLIENT: &str = r#"
import socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
i = 0
while True:
    m = b"ping %d\n" % i
    c.sendall(m)
    got = b""
    while len(got) < len(m):
        d = c.recv(4096)
        if not d:
            print("closed by the peer", flush=True)
            sys.exit(1)
        got += d
    if got != m:
        print("wrong echo", got, flush=True)
        sys.exit(1)
    i += 1
    if i % 10 == 0:
        print("echoed", i, flush=True)
    time.sleep(0.1)
"#;

/// The agent pods: name to node.
fn agent_pods(c: &TestCluster) -> Vec<(String, String)> {
    let pods = c.get_json(&["pods", "-n", "kube-system", "-l", "k8s-app=ferry-agent"]);
    let mut out: Vec<(String, String)> = pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| pod_serving(p))
        .map(|p| {
            (
                p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                p["spec"]["nodeName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out
}

/// One echoed line on `conn`.
fn echo(conn: &mut TcpStream, i: u32) -> Result<(), String> {
    let m = format!("ping {i}\n");
    conn.write_all(m.as_bytes())
        .map_err(|e| format!("sending: {e}"))?;
    let mut got = vec![0u8; m.len()];
    conn.read_exact(&mut got)
        .map_err(|e| format!("reading the echo: {e}"))?;
    if got == m.as_bytes() {
        Ok(())
    } else {
        Err(format!("wrong echo {:?}", String::from_utf8_lossy(&got)))
    }
}

#[test]
fn the_daemonset_runs_ferry_everywhere_and_a_rollout_keeps_connections() {
    if skip_if_not_root() {
        return;
    }
    let c = TestCluster::up(3);
    let nodes: Vec<String> = c.cluster.nodes().iter().map(|n| n.name.clone()).collect();

    // kubectl's view: the DaemonSet on every node, ferry-dns's two
    // replicas, every pod of theirs Running with its node.
    // `ferry up` returns once every agent answers and DNS resolves; the
    // pods' Ready conditions and the controllers' status follow.
    let ds_row = |out: &str| -> Option<Vec<String>> {
        out.lines()
            .find(|l| l.starts_with("daemonset.apps/ferry-agent"))
            .map(|l| l.split_whitespace().map(str::to_owned).collect())
    };
    c.eventually("the DaemonSet 3/3 ready, ferry-dns 2/2", 60, || {
        let out = c.kubectl(&["-n", "kube-system", "get", "ds,deploy", "-o", "wide"]);
        out.is_ok_and(|out| {
            ds_row(&out).is_some_and(|cols| cols[1..6] == ["3", "3", "3", "3", "3"])
                && out
                    .lines()
                    .any(|l| l.starts_with("deployment.apps/ferry-dns") && l.contains("2/2"))
        })
    });
    let out = c.k(&["-n", "kube-system", "get", "ds,deploy,pods", "-o", "wide"]);
    let ds = ds_row(&out).unwrap_or_else(|| panic!("no DaemonSet row:\n{out}"));
    assert!(
        ds.iter().any(|w| w.starts_with("localhost/ferry:")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("deployment.apps/ferry-dns") && l.contains("2/2")),
        "{out}"
    );
    for node in &nodes {
        assert!(
            out.lines().any(|l| l.starts_with("pod/ferry-agent-")
                && l.contains("Running")
                && l.split_whitespace().any(|w| w == node)),
            "no running agent on {node}:\n{out}"
        );
    }
    let before = agent_pods(&c);
    assert_eq!(
        before.iter().map(|(_, n)| n.clone()).collect::<Vec<_>>(),
        nodes
    );

    // An echo server on the last node, behind a NodePort Service; a client
    // pod on the first node holding a connection to its ClusterIP.
    c.apply(&json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "echo"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "echo"}},
            "template": {
                "metadata": {"labels": {"app": "echo"}},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": nodes[2]},
                    "containers": [{
                        "name": "echo", "image": "python:3",
                        "command": ["python3", "-c", ECHO_SERVER],
                        "ports": [{"containerPort": 7000}],
                        "readinessProbe": {"tcpSocket": {"port": 7000}, "periodSeconds": 1},
                    }],
                },
            },
        },
    }));
    c.apply(&json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "echo"},
        "spec": {"type": "NodePort", "selector": {"app": "echo"},
                 "ports": [{"port": 7000, "targetPort": 7000}]},
    }));
    c.k(&["rollout", "status", "deploy/echo", "--timeout=60s"]);
    let svc = c.get_json(&["svc", "echo"]);
    let cluster_ip = svc["spec"]["clusterIP"]
        .as_str()
        .expect("clusterIP")
        .to_owned();
    let node_port = svc["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .expect("nodePort");
    c.apply(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "holder"},
        "spec": {
            "nodeName": nodes[0],
            "restartPolicy": "Never",
            "containers": [{
                "name": "holder", "image": "python:3",
                "command": ["python3", "-c", ECHO_CLIENT, &cluster_ip, "7000"],
            }],
        },
    }));
    let echoed = |c: &TestCluster| -> u32 {
        c.kubectl(&["logs", "holder"])
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix("echoed "))
            .filter_map(|n| n.trim().parse().ok())
            .max()
            .unwrap_or(0)
    };
    c.eventually("the in-cluster client echoing", 30, || echoed(&c) >= 10);

    // From the host: one connection held through the NodePort, and new
    // requests one after another, while every agent is replaced.
    let addr = format!("127.0.0.1:{node_port}");
    let mut held = None;
    c.eventually("the NodePort echoes on localhost", 30, || {
        let Ok(mut conn) = TcpStream::connect(&addr) else {
            return false;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
        let ok = echo(&mut conn, 0).is_ok();
        held = Some(conn);
        ok
    });
    let mut held = held.expect("a held connection");
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, addr) = (Arc::clone(&stop), addr.clone());
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, Vec::new());
            let mut i = 1;
            while !stop.load(Ordering::Relaxed) && ok < 100_000 {
                match echo(&mut held, i) {
                    Ok(()) => ok += 1,
                    Err(e) => {
                        failed.push(format!("held connection, line {i}: {e}"));
                        break;
                    }
                }
                match TcpStream::connect(&addr).and_then(|mut fresh| {
                    fresh.set_read_timeout(Some(Duration::from_secs(5)))?;
                    echo(&mut fresh, i).map_err(std::io::Error::other)
                }) {
                    Ok(()) => ok += 1,
                    Err(e) => failed.push(format!("new connection {i}: {e}")),
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            (ok, failed, held)
        })
    };
    let echoed_before = echoed(&c);
    let started = Instant::now();
    c.k(&["-n", "kube-system", "rollout", "restart", "ds/ferry-agent"]);
    c.k(&[
        "-n",
        "kube-system",
        "rollout",
        "status",
        "ds/ferry-agent",
        "--timeout=120s",
    ]);
    let rolled_in = started.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let (ok, failed, _held) = load.join().expect("the load thread");

    // Every agent replaced, one node at a time, with nothing lost.
    let after = agent_pods(&c);
    assert_eq!(after.len(), 3, "{after:?}");
    for ((old, node), (new, new_node)) in before.iter().zip(&after) {
        assert_eq!(node, new_node);
        assert_ne!(old, new, "the agent on {node} was not replaced");
    }
    assert!(
        failed.is_empty(),
        "{} failed of {} during the rollout ({rolled_in:?}): {failed:?}",
        failed.len(),
        ok as usize + failed.len()
    );
    assert!(ok >= 20, "only {ok} exchanges during the rollout");
    println!(
        "rollout restart ds/ferry-agent: 3 agents replaced in {rolled_in:.1?}; {ok} echoes, \
         on the held connection and on new ones, none failed"
    );
    c.eventually("the in-cluster client still echoing", 30, || {
        echoed(&c) >= echoed_before + 20
    });
    let holder = c.get_json(&["pod", "holder"]);
    assert_eq!(
        holder["status"]["phase"],
        "Running",
        "the held in-cluster connection broke: {}",
        c.kubectl(&["logs", "holder"]).unwrap_or_default()
    );

    // The cluster DNS still answers through the rolled agents, from a pod.
    let host = nodes[0].clone();
    let resolved = {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "resolver"},
            "spec": {
                "nodeName": host,
                "restartPolicy": "Never",
                "containers": [{
                    "name": "r", "image": "python:3",
                    "command": ["python3", "-c",
                        "import socket; print(socket.gethostbyname('echo.default.svc.cluster.local'))"],
                }],
            },
        });
        c.apply(&pod);
        c.eventually("the resolver done", 60, || {
            c.get_json(&["pod", "resolver"])["status"]["phase"] == "Succeeded"
        });
        c.k(&["logs", "resolver"])
    };
    assert_eq!(resolved.trim(), cluster_ip, "resolved through kube-dns");
}
