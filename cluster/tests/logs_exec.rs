//! `kubectl logs` and `kubectl exec` against a `ferry up` cluster, with the
//! real kubectl: through ferry-apiserver (`pods/log`, `pods/exec`) to the
//! node API of ferry-node, and the node API refusing whoever lacks the
//! apiserver's token.

mod common;

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::TestCluster;
use ferry_cluster::components::Binaries;
use ferry_cluster::{Cluster, Settings};
use ferry_testbed::{Netns, skip_if_not_root};

const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: talker}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox
    command: ["sh", "-c", "echo one; echo two >&2; sleep 3600"]
---
apiVersion: v1
kind: Pod
metadata: {name: counter}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox
    command: ["sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.3; done"]
---
apiVersion: v1
kind: Pod
metadata: {name: crasher}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox
    command: ["sh", "-c", "echo started-at-$(date +%s%N); sleep 1; exit 1"]
---
apiVersion: v1
kind: Pod
metadata: {name: duo}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: a
    image: busybox
    command: ["sh", "-c", "echo from-a; sleep 3600"]
  - name: b
    image: busybox
    command: ["sh", "-c", "echo from-b; sleep 3600"]
---
apiVersion: v1
kind: Pod
metadata: {name: custom}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: registry.example/hello:1
    args: ["from", "images.yaml"]
"#;

/// The cluster's `images.yaml`: one image of the user's own.
const IMAGES: &str =
    "registry.example/hello:1: [\"sh\", \"-c\", \"echo hello \\\"$0 $1\\\"; sleep 3600\"]\n";

fn running(c: &TestCluster, pod: &str) -> bool {
    c.kubectl(&["get", "pod", pod, "-o", "jsonpath={.status.phase}"])
        .is_ok_and(|p| p == "Running")
}

/// kubectl with stdin from `input`; (exit code, stdout, stderr).
fn kubectl_with_input(c: &TestCluster, args: &[&str], input: &[u8]) -> (i32, String, String) {
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(c.cluster.kubeconfig())
        .args(["--request-timeout", "20s"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write stdin");
    let out = wait_bounded(child, Duration::from_secs(30));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits at most `limit` for `child`, killing it past that.
fn wait_bounded(mut child: std::process::Child, limit: Duration) -> std::process::Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

#[test]
fn kubectl_logs_and_exec_reach_the_pods_through_the_apiserver() {
    if skip_if_not_root() {
        return;
    }
    let c = TestCluster::up_settings(1, |s| {
        std::fs::create_dir_all(&s.data_dir).expect("data dir");
        std::fs::write(s.data_dir.join("images.yaml"), IMAGES).expect("images.yaml");
    });
    let manifest = c.data_dir.join("pods.yaml");
    std::fs::write(&manifest, PODS).expect("manifest");
    c.k(&["apply", "-f", manifest.to_str().expect("path")]);
    for pod in ["talker", "counter", "duo", "custom"] {
        c.eventually(&format!("{pod} running"), 60, || running(&c, pod));
    }
    // An image from the cluster's images.yaml runs its command line, the
    // container's args appended.
    c.eventually("the custom image's line", 20, || {
        c.kubectl(&["logs", "custom"])
            .is_ok_and(|l| l == "hello from images.yaml\n")
    });

    // logs: stdout and stderr; --tail; --timestamps. Their relative order
    // is not kept (two pipes, read apart, as with containerd), so the
    // order is whatever the log holds.
    c.eventually("both lines in the log", 20, || {
        c.kubectl(&["logs", "talker"]).is_ok_and(|l| {
            let mut lines: Vec<&str> = l.lines().collect();
            lines.sort_unstable();
            lines == ["one", "two"]
        })
    });
    let all = c.k(&["logs", "talker"]);
    let order: Vec<&str> = all.lines().collect();
    assert_eq!(
        c.k(&["logs", "talker", "--tail", "1"]),
        format!("{}\n", order[1])
    );
    let stamped = c.k(&["logs", "talker", "--timestamps"]);
    let lines: Vec<&str> = stamped.lines().collect();
    assert_eq!(lines.len(), 2, "{stamped}");
    for (line, text) in lines.iter().zip(order.iter().copied()) {
        let (ts, rest) = line.split_once(' ').expect("a timestamp first");
        // RFC 3339 in UTC: 2025-01-02T03:04:05.123456789Z
        let b = ts.as_bytes();
        assert!(
            b.len() >= 20
                && b.get(4) == Some(&b'-')
                && b.get(10) == Some(&b'T')
                && ts.ends_with('Z'),
            "not RFC 3339: {line}"
        );
        assert_eq!(rest, text);
    }
    assert_eq!(
        c.k(&["logs", "talker", "--since", "1h"]),
        all,
        "--since keeps recent lines"
    );
    assert_eq!(
        c.k(&["logs", "talker", "--since-time", "2999-01-01T00:00:00Z"]),
        "",
        "--since-time in the future keeps none"
    );
    assert_eq!(
        c.k(&["logs", "talker", "--limit-bytes", "5"]),
        all.get(..5).unwrap_or_default()
    );

    // logs -f: lines written after the request arrive on the stream.
    let mut follow = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(c.cluster.kubeconfig())
        .args(["logs", "-f", "counter"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl logs -f");
    let first_snapshot = c.k(&["logs", "counter"]);
    let seen_before: u64 = first_snapshot
        .lines()
        .filter_map(|l| l.strip_prefix("tick ")?.parse().ok())
        .max()
        .unwrap_or(0);
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = follow.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut newest = 0;
    while newest < seen_before + 3 {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("logs -f: no tick after {newest} (seen {seen_before})"));
        if let Some(n) = line.strip_prefix("tick ").and_then(|n| n.parse().ok()) {
            newest = n;
        }
    }
    assert!(
        follow.try_wait().expect("try_wait").is_none(),
        "logs -f keeps going while the container runs"
    );
    let _ = follow.kill();
    let _ = follow.wait();

    // --previous: the run before a crash; none before the first restart.
    let err = c
        .kubectl(&["logs", "talker", "--previous"])
        .expect_err("no previous run");
    assert!(
        err.contains("previous terminated container \"main\" in pod \"talker\" not found"),
        "{err}"
    );
    c.eventually("crasher restarted", 60, || {
        c.kubectl(&[
            "get",
            "pod",
            "crasher",
            "-o",
            "jsonpath={.status.containerStatuses[0].restartCount}",
        ])
        .ok()
        .and_then(|n| n.parse::<u32>().ok())
        .is_some_and(|n| n >= 1)
    });
    let previous = c.k(&["logs", "crasher", "--previous"]);
    assert!(previous.starts_with("started-at-"), "{previous:?}");
    assert_eq!(previous.lines().count(), 1, "{previous:?}");

    // Several containers: -c picks one; the API wants a name.
    assert_eq!(c.k(&["logs", "duo", "-c", "b"]), "from-b\n");
    let err = c
        .kubectl(&["get", "--raw", "/api/v1/namespaces/default/pods/duo/log"])
        .expect_err("a container must be named");
    assert!(
        err.contains("a container name must be specified for pod duo, choose one of: [a b]"),
        "{err}"
    );
    let err = c
        .kubectl(&["logs", "duo", "-c", "nope"])
        .expect_err("not a container of the pod");
    assert!(
        err.contains("container nope is not valid for pod duo"),
        "{err}"
    );
    let err = c.kubectl(&["logs", "nobody"]).expect_err("no such pod");
    assert!(err.contains("pods \"nobody\" not found"), "{err}");

    // exec: in the pod's mount and UTS namespaces, output and exit code.
    let resolv = c.k(&["exec", "talker", "--", "cat", "/etc/resolv.conf"]);
    assert!(resolv.contains("nameserver 10.96.0.10"), "{resolv}");
    assert!(
        resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local"),
        "{resolv}"
    );
    assert_eq!(c.k(&["exec", "talker", "--", "hostname"]), "talker\n");
    assert_eq!(
        c.k(&["exec", "duo", "-c", "b", "--", "echo", "in b"]),
        "in b\n"
    );
    let (code, _, stderr) =
        kubectl_with_input(&c, &["exec", "talker", "--", "sh", "-c", "exit 3"], b"");
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stderr.contains("command terminated with exit code 3"),
        "{stderr}"
    );
    let (code, out, stderr) = kubectl_with_input(
        &c,
        &["exec", "talker", "--", "sh", "-c", "echo out; echo err >&2"],
        b"",
    );
    assert_eq!((code, out.as_str()), (0, "out\n"), "{stderr}");
    assert!(
        stderr.contains("err"),
        "stderr on its own channel: {stderr}"
    );
    // stdin, ended by the client's close of the stream (v5).
    let (code, out, stderr) =
        kubectl_with_input(&c, &["exec", "-i", "talker", "--", "cat"], b"hello\n");
    assert_eq!((code, out.as_str()), (0, "hello\n"), "{stderr}");
    // A terminal: `script` gives kubectl one, the command sees a pty.
    let tty = wait_bounded(
        Command::new("script")
            .args(["-qec"])
            .arg(format!(
                "kubectl --kubeconfig {} exec -it talker -- sh -c 'tty; stty size'",
                c.cluster.kubeconfig().display()
            ))
            .arg("/dev/null")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("script"),
        Duration::from_secs(30),
    );
    let tty_out = String::from_utf8_lossy(&tty.stdout);
    assert!(tty_out.contains("/dev/pts/"), "{tty_out:?}");

    // The node API takes only the apiserver's token.
    let node = &c.cluster.nodes()[0];
    let netns = Netns::named(node.netns.clone());
    let url = format!("http://{}:10250/containerLogs/default/talker/main", node.ip);
    let token = std::fs::read_to_string(c.data_dir.join("apiserver").join("kubelet-token"))
        .expect("the kubelet token file");
    let mode = {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(c.data_dir.join("apiserver").join("kubelet-token"))
            .expect("stat")
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode, 0o600, "the token file is private");
    let curl = |auth: Option<&str>| -> String {
        let mut args = vec![
            "curl".to_owned(),
            "-sS".into(),
            "--max-time".into(),
            "5".into(),
            "-w".into(),
            " %{http_code}".into(),
        ];
        if let Some(a) = auth {
            args.push("-H".into());
            args.push(format!("Authorization: {a}"));
        }
        args.push(url.clone());
        netns
            .exec_timeout(&args, Duration::from_secs(10))
            .expect("curl in the node's namespace")
    };
    assert!(curl(None).ends_with(" 401"), "no token: refused");
    assert!(
        curl(Some("Bearer not-the-token-at-all-no")).ends_with(" 401"),
        "a wrong token: refused"
    );
    let ok = curl(Some(&format!("Bearer {}", token.trim())));
    assert_eq!(ok, format!("{all} 200"), "the apiserver's token: served");
}

/// A broken `images.yaml` stops `ferry up` at once, naming the file and
/// what is wrong, before anything is built.
#[test]
fn a_broken_images_file_stops_ferry_up_with_its_reason() {
    let name = common::unique_name();
    let data_dir = std::env::temp_dir().join(format!("ferry-cluster-test-{name}"));
    std::fs::create_dir_all(&data_dir).expect("data dir");
    std::fs::write(data_dir.join("images.yaml"), "registry.example/x: 42\n").expect("write");
    let bins = Binaries::in_dir(common::bin_dir()).expect("binaries");
    let result = Cluster::up(Settings::new(&name, 1, data_dir.clone(), bins));
    let _ = std::fs::remove_dir_all(&data_dir);
    let Err(err) = result else {
        panic!("a cluster came up with a broken images.yaml");
    };
    let msg = err.to_string();
    assert!(
        msg.contains("images.yaml") && msg.contains("fix or remove"),
        "{msg}"
    );
}
