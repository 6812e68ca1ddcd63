//! `kubectl port-forward` against a `ferry up` cluster, with the real
//! kubectl: through ferry-apiserver (`pods/portforward`, the upgrade
//! spliced to the node) to ferry-node, which connects to the port inside
//! the pod's network namespace. Both of kubectl's transports: SPDY
//! tunnelled in a WebSocket (its default) and plain SPDY/3.1
//! (`KUBECTL_PORT_FORWARD_WEBSOCKETS=false`).

mod common;

use std::io::{BufRead as _, BufReader, Read as _};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{TestCluster, curl};
use ferry_testbed::skip_if_not_root;

const WEB: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: nginx
    image: nginx
    ports: [{containerPort: 80, name: http}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 8080, targetPort: http}]
"#;

/// A `kubectl port-forward` running in the background, killed on drop;
/// its stderr collected as it comes.
struct Forward {
    child: Child,
    stderr: mpsc::Receiver<String>,
    seen: String,
}

impl Forward {
    /// Starts it and waits (bounded) until it listens on `local`.
    fn start(c: &TestCluster, target: &str, local: u16, remote: u16, websockets: bool) -> Self {
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(c.cluster.kubeconfig())
            .args(["port-forward", target, &format!("{local}:{remote}")])
            .env(
                "KUBECTL_PORT_FORWARD_WEBSOCKETS",
                if websockets { "true" } else { "false" },
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl port-forward");
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        let out_tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if out_tx.send(format!("out: {line}")).is_err() {
                    return;
                }
            }
        });
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut f = Forward {
            child,
            stderr: rx,
            seen: String::new(),
        };
        // For a Service, kubectl shows the pod's port it resolved.
        let ready = format!("Forwarding from 127.0.0.1:{local} -> ");
        f.wait_for(&ready, Duration::from_secs(20));
        f
    }

    /// Waits (bounded) for a line holding `needle`.
    fn wait_for(&mut self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.seen.contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push_str(&line);
                    self.seen.push('\n');
                }
                Err(_) => panic!(
                    "kubectl port-forward: no {needle:?} within {limit:?}; exited: {:?}; output:\n{}",
                    self.child.try_wait(),
                    self.seen
                ),
            }
        }
    }

    /// Everything printed so far.
    fn output(&mut self) -> &str {
        while let Ok(line) = self.stderr.try_recv() {
            self.seen.push_str(&line);
            self.seen.push('\n');
        }
        &self.seen
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nobody listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn welcome(port: u16) -> Result<String, String> {
    curl(&format!("http://127.0.0.1:{port}/"))
}

#[test]
fn kubectl_port_forward_reaches_ports_inside_the_pod() {
    if skip_if_not_root() {
        return;
    }
    let c = TestCluster::up(1);
    let manifest = c.data_dir.join("web.yaml");
    std::fs::write(&manifest, WEB).expect("manifest");
    c.k(&["apply", "-f", manifest.to_str().expect("path")]);
    c.eventually("web ready", 60, || {
        c.kubectl(&[
            "get",
            "pod",
            "web",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ])
        .is_ok_and(|s| s == "True")
    });

    // The pod by name, over kubectl's default transport (SPDY in a
    // WebSocket): two connections, each a pair of streams.
    let first = free_port();
    let port = first;
    let mut fwd = Forward::start(&c, "pod/web", port, 80, true);
    for round in 0..2 {
        let page = welcome(port).unwrap_or_else(|e| panic!("curl {round}: {e}\n{}", fwd.seen));
        assert!(page.contains("Welcome to nginx!"), "{page}");
    }
    fwd.wait_for("Handling connection for", Duration::from_secs(5));
    assert!(fwd.running(), "still forwarding");

    // A Service: kubectl picks a pod behind it and maps 8080 to the
    // targetPort's container port (80, named http).
    let port = free_port();
    let mut svc = Forward::start(&c, "svc/web", port, 8080, true);
    svc.wait_for(&format!("127.0.0.1:{port} -> 80"), Duration::from_secs(1));
    let page = welcome(port).expect("through svc/web");
    assert!(page.contains("Welcome to nginx!"), "{page}");

    // Plain SPDY/3.1, kubectl's fallback transport.
    let port = free_port();
    let _spdy = Forward::start(&c, "pod/web", port, 80, false);
    for _ in 0..2 {
        let page = welcome(port).expect("over plain SPDY");
        assert!(page.contains("Welcome to nginx!"), "{page}");
    }

    // Nothing listens on 81 in the pod: the connection fails, and kubectl
    // prints the error the node wrote on the error stream. kubectl 1.32
    // then ends the whole forward ("lost connection to pod"), as it does
    // against a kubelet.
    let port = free_port();
    let mut refused = Forward::start(&c, "pod/web", port, 81, true);
    assert!(welcome(port).is_err(), "no page from a closed port");
    refused.wait_for(
        "error forwarding port 81 to pod web_default",
        Duration::from_secs(10),
    );
    assert!(
        refused.seen.contains("connection refused"),
        "{}",
        refused.seen
    );
    refused.wait_for("lost connection to pod", Duration::from_secs(10));
    // The other forwards (their own connections) are untouched, and the
    // node serves new ones.
    let page = welcome(first).expect("the first forward still serves");
    assert!(page.contains("Welcome to nginx!"), "{page}");
    assert!(fwd.running());
    let port = free_port();
    let _again = Forward::start(&c, "pod/web", port, 80, true);
    let page = welcome(port).expect("a new forward after the error");
    assert!(page.contains("Welcome to nginx!"), "{page}");
}

/// A server bound to 127.0.0.1 inside the pod (reachable only from the
/// pod's own network namespace) and a body far larger than SPDY's 64 KiB
/// windows, both ways of kubectl: every byte arrives.
#[test]
fn large_transfers_reach_a_server_on_the_pods_loopback() {
    if skip_if_not_root() {
        return;
    }
    let Some(python) = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    else {
        eprintln!("skipping: python3 (the pod's file server) is not installed");
        return;
    };
    let c = TestCluster::up(1);
    let root = c.data_dir.join("files");
    std::fs::create_dir_all(&root).expect("dir");
    // 3 MiB of varied bytes.
    let body: Vec<u8> = (0..3u32 * 1024 * 1024)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(root.join("blob"), &body).expect("blob");
    let pod = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: files}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox
    workingDir: {root}
    command: ["{python}", "-m", "http.server", "8000", "--bind", "127.0.0.1"]
    env: [{{name: PYTHONUNBUFFERED, value: "1"}}]
"#,
        root = root.display()
    );
    let manifest = c.data_dir.join("files.yaml");
    std::fs::write(&manifest, pod).expect("manifest");
    c.k(&["apply", "-f", manifest.to_str().expect("path")]);
    // Listening before any forward: kubectl ends a forward whose
    // connection is refused.
    c.eventually("the file server listening", 60, || {
        c.kubectl(&["logs", "files"])
            .is_ok_and(|l| l.contains("Serving HTTP on 127.0.0.1 port 8000"))
    });
    for websockets in [true, false] {
        let port = free_port();
        let mut fwd = Forward::start(&c, "pod/files", port, 8000, websockets);
        let url = format!("http://127.0.0.1:{port}/blob");
        let (status, got) = Command::new("curl")
            .args(["-sS", "--max-time", "30", &url])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .and_then(|mut ch| {
                let mut buf = Vec::new();
                ch.stdout.take().expect("stdout").read_to_end(&mut buf)?;
                Ok((ch.wait()?, buf))
            })
            .expect("curl");
        assert!(
            status.success(),
            "curl {url} (websockets {websockets}): {}",
            fwd.output()
        );
        assert_eq!(got.len(), body.len(), "websockets {websockets}");
        assert!(got == body, "the bytes differ (websockets {websockets})");
        assert!(fwd.running());
    }
}
