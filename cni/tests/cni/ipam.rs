//! IPAM under concurrency and crashes, its host-local compatibility, and
//! the podCIDR lookup through the Kubernetes API.

use std::collections::HashSet;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{IpAddr, TcpListener};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{Attached, BIN, World};
use crate::require_root;

const PODS: usize = 100;

/// 100 ADDs at once into one node: distinct addresses, every reservation
/// on disk; then 100 DELs at once: nothing left. Bounded in time.
#[test]
fn hundred_parallel_adds_then_dels() {
    require_root!();
    let started = Instant::now();
    let mut w = World::new();
    for i in 0..PODS {
        w.pod(&format!("p{i}"));
    }
    let conf = w.conf("1.0.0");
    let barrier = Barrier::new(PODS);
    let attached: Vec<Attached> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..PODS)
            .map(|i| {
                let (w, conf, barrier) = (&w, &conf, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    w.add(conf, i, &format!("c-par-{i}"))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("ADD thread"))
            .collect()
    });
    let adds = started.elapsed();
    let v4: HashSet<IpAddr> = attached.iter().map(|a| a.ip(true)).collect();
    let v6: HashSet<IpAddr> = attached.iter().map(|a| a.ip(false)).collect();
    assert_eq!(v4.len(), PODS, "IPv4 addresses collided");
    assert_eq!(v6.len(), PODS, "IPv6 addresses collided");
    assert_eq!(w.reservations().len(), 2 * PODS);
    assert_eq!(w.host_veths().len(), PODS);
    for a in &attached {
        let file = w.ipam_dir().join("fnet").join(a.ip(true).to_string());
        let content = std::fs::read_to_string(file).expect("reservation");
        assert_eq!(content, format!("{}\r\neth0", a.container_id));
    }
    let barrier = Barrier::new(PODS);
    std::thread::scope(|s| {
        for a in &attached {
            let (w, conf, barrier) = (&w, &conf, &barrier);
            s.spawn(move || {
                barrier.wait();
                w.run("DEL", conf, &a.container_id, Some(&a.netns), "eth0")
                    .ok();
            });
        }
    });
    w.assert_clean();
    for p in &w.pods {
        assert_eq!(p.links(), vec!["lo".to_string()]);
    }
    let total = started.elapsed();
    eprintln!("{PODS} parallel ADDs took {adds:?}; with the DELs {total:?}");
    assert!(total < Duration::from_secs(180), "took {total:?}");
}

/// A v4-only config with a single usable address (a /30 less its gateway).
fn one_address_conf(w: &World) -> Value {
    let mut conf = w.conf("1.1.0");
    conf["ipam"]["ranges"] = json!([[{"subnet": "10.77.0.0/30"}]]);
    conf
}

/// Killed right after reserving: the address is held by the dead
/// attachment, GC frees it, and the next pod gets it.
#[test]
fn crash_after_reserve_then_gc() {
    require_root!();
    let mut w = World::new();
    let p1 = w.pod("crash");
    let p2 = w.pod("next");
    let conf = one_address_conf(&w);
    let crash = [("FERRY_CNI_CRASH_AT", "after-reserve")];
    let r = w.run_with(
        "ADD",
        &conf,
        "c-crash",
        Some(&w.pods[p1].path_str()),
        "eth0",
        &crash,
    );
    assert!(!r.success, "the plugin should have died");
    assert_eq!(w.reservations(), vec!["10.77.0.2".to_string()]);
    // The pool is exhausted until the leak is collected.
    w.run("ADD", &conf, "c-next", Some(&w.pods[p2].path_str()), "eth0")
        .err(102);
    w.status(&conf).err(50);
    w.gc(&conf, &[]).ok();
    assert!(w.reservations().is_empty());
    w.status(&conf).ok();
    let a = w.add(&conf, p2, "c-next");
    assert_eq!(
        a.ip(true).to_string(),
        "10.77.0.2",
        "the freed address is handed out again"
    );
    w.run("DEL", &conf, "c-next", Some(&a.netns), "eth0").ok();
    w.assert_clean();
}

/// Killed with the veth pair made but the pod end unconfigured: GC deletes
/// the pair and frees the addresses; so does a DEL.
#[test]
fn crash_after_veth_then_gc_or_del() {
    require_root!();
    let mut w = World::new();
    let p1 = w.pod("gc");
    let p2 = w.pod("del");
    let p3 = w.pod("live");
    let conf = w.conf("1.1.0");
    let live = w.add(&conf, p3, "c-live");
    let crash = [("FERRY_CNI_CRASH_AT", "after-veth")];
    for (p, id) in [(p1, "c-crash-gc"), (p2, "c-crash-del")] {
        let r = w.run_with(
            "ADD",
            &conf,
            id,
            Some(&w.pods[p].path_str()),
            "eth0",
            &crash,
        );
        assert!(!r.success, "the plugin should have died");
        assert!(
            w.pods[p].links().contains(&"eth0".to_string()),
            "the pod end exists"
        );
    }
    assert_eq!(w.host_veths().len(), 3);
    assert_eq!(w.reservations().len(), 6);
    w.gc(&conf, &["c-live", "c-crash-del"]).ok();
    assert_eq!(w.reservations().len(), 4);
    assert_eq!(w.pods[p1].links(), vec!["lo".to_string()]);
    w.run(
        "DEL",
        &conf,
        "c-crash-del",
        Some(&w.pods[p2].path_str()),
        "eth0",
    )
    .ok();
    assert_eq!(w.pods[p2].links(), vec!["lo".to_string()]);
    assert_eq!(w.host_veths(), vec![live.host_veth()]);
    assert_eq!(w.reservations().len(), 2);
    w.run(
        "CHECK",
        &World::with_prev(&conf, &live.result),
        "c-live",
        Some(&live.netns),
        "eth0",
    )
    .ok();
    w.run("DEL", &conf, "c-live", Some(&live.netns), "eth0")
        .ok();
    w.assert_clean();
}

/// SIGKILLed while waiting for the IPAM lock: nothing reserved, nothing
/// created, and the lock is not wedged.
#[test]
fn killed_while_waiting_for_the_lock() {
    require_root!();
    let mut w = World::new();
    let p = w.pod("pod");
    let conf = w.conf("1.0.0");
    let dir = w.ipam_dir().join("fnet");
    std::fs::create_dir_all(&dir).expect("dir");
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))
        .expect("lock file");
    let lock =
        nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive).expect("flock");
    let netns = w.pods[p].path_str();
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", w.node.path_str()))
        .arg(BIN)
        .env_clear()
        .envs([
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c-killed"),
            ("CNI_NETNS", netns.as_str()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/usr/lib/cni"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf.to_string().as_bytes())
        .expect("stdin");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "the ADD should be waiting for the lock"
    );
    child.kill().expect("kill");
    child.wait().expect("wait");
    drop(lock);
    w.assert_clean();
    assert_eq!(w.pods[p].links(), vec!["lo".to_string()]);
    let a = w.add(&conf, p, "c-after");
    w.run("DEL", &conf, "c-after", Some(&a.netns), "eth0").ok();
    w.assert_clean();
}

/// A range set without free addresses: ADD fails with 102 and reserves
/// nothing of the other family; STATUS says 50 until an address is freed.
#[test]
fn exhaustion() {
    require_root!();
    let mut w = World::new();
    let p1 = w.pod("one");
    let p2 = w.pod("two");
    let mut conf = one_address_conf(&w);
    conf["ipam"]["ranges"] = json!([[{"subnet": "fd77::/64"}], [{"subnet": "10.77.0.0/30"}]]);
    w.status(&conf).ok();
    let a = w.add(&conf, p1, "c-one");
    let e = w.status(&conf).err(50);
    assert!(
        e["msg"]
            .as_str()
            .is_some_and(|m| m.contains("10.77.0.1-10.77.0.2")),
        "{e}"
    );
    w.run("ADD", &conf, "c-two", Some(&w.pods[p2].path_str()), "eth0")
        .err(102);
    assert_eq!(
        w.reservations().len(),
        2,
        "the failed ADD's IPv6 address was rolled back"
    );
    assert_eq!(w.pods[p2].links(), vec!["lo".to_string()]);
    w.run("DEL", &conf, "c-one", Some(&a.netns), "eth0").ok();
    w.status(&conf).ok();
    w.assert_clean();
}

/// host-local and ferry-cni share one config and one on-disk state: each
/// honours the other's reservations.
#[test]
fn shares_state_with_host_local() {
    require_root!();
    let mut w = World::new();
    let p = w.pod("pod");
    let conf = w.conf("1.0.0");
    let mut hl = conf.clone();
    hl["type"] = json!("host-local");
    let pod_ns = w.pods[p].path_str();
    let hl_env = |cmd: &'static str| {
        vec![
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", "c-hostlocal"),
            ("CNI_NETNS", pod_ns.as_str()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/usr/lib/cni"),
        ]
    };
    // host-local is an IPAM plugin: its own stdin is the whole config.
    let run_hl = |cmd: &'static str| {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", w.node.path_str()))
            .arg("/usr/lib/cni/host-local")
            .env_clear()
            .envs(hl_env(cmd))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                c.stdin
                    .take()
                    .expect("stdin")
                    .write_all(hl.to_string().as_bytes())?;
                c.wait_with_output()
            })
            .expect("host-local");
        assert!(
            out.status.success(),
            "host-local {cmd}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        out.stdout
    };
    let hl_result: Value = serde_json::from_slice(&run_hl("ADD")).expect("host-local result");
    assert_eq!(hl_result["ips"][0]["address"], "10.77.0.2/24");
    let a = w.add(&conf, p, "c-ferry");
    assert_eq!(
        a.ip(true).to_string(),
        "10.77.0.3",
        "host-local's reservation was honoured"
    );
    assert_eq!(a.ip(false).to_string(), "fd77::3");
    run_hl("DEL");
    let mut left = w.reservations();
    left.sort();
    assert_eq!(left, vec!["10.77.0.3".to_string(), "fd77::3".to_string()]);
    w.run("DEL", &conf, "c-ferry", Some(&a.netns), "eth0").ok();
    w.assert_clean();
}

/// A minimal Kubernetes API inside the node namespace (on its loopback):
/// GET /api/v1/nodes/<name> for the nodes given, 404 otherwise.
struct FakeApi {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeApi {
    fn start(w: &World, nodes: Vec<(&'static str, Value)>) -> FakeApi {
        w.node.ip(&["link", "set", "lo", "up"]);
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = w.node.spawn(move || {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.set_nonblocking(true).expect("nonblocking");
            tx.send(listener.local_addr().expect("addr").port()).expect("port");
            while !stop2.load(Ordering::SeqCst) {
                let Ok((conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                conn.set_nonblocking(false).expect("blocking");
                let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                loop {
                    let mut line = String::new();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) if line == "\r\n" => break,
                        Ok(_) => {}
                    }
                }
                let path = request_line.split_whitespace().nth(1).unwrap_or_default().to_string();
                let name = path.strip_prefix("/api/v1/nodes/").unwrap_or_default();
                let (status, body) = match nodes.iter().find(|(n, _)| *n == name) {
                    Some((n, spec)) => (
                        "200 OK",
                        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}, "spec": spec}),
                    ),
                    None => (
                        "404 Not Found",
                        json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": "NotFound",
                               "message": format!("nodes \"{name}\" not found"), "code": 404}),
                    ),
                };
                let body = body.to_string();
                let mut conn = conn;
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("fake API up");
        FakeApi {
            port,
            stop,
            thread: Some(thread),
        }
    }

    fn kubeconfig(&self, w: &World) -> std::path::PathBuf {
        let path = w.dir.path().join("kubeconfig");
        let body = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:{}\n\
             users:\n- name: u\n  user:\n    token: test-token\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\n\
             current-context: x\n",
            self.port
        );
        std::fs::write(&path, body).expect("kubeconfig");
        path
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Without `ranges`, the addresses come from the Node's podCIDRs; a node
/// without one (or an unreachable API) is "try again later" (11) for ADD
/// and "not available" (50) for STATUS.
#[test]
fn pod_cidrs_from_the_api() {
    require_root!();
    let mut w = World::new();
    let p1 = w.pod("pod1");
    let p2 = w.pod("pod2");
    let api = FakeApi::start(
        &w,
        vec![
            (
                "node-a",
                json!({"podCIDR": "10.88.1.0/24", "podCIDRs": ["10.88.1.0/24", "fd88:1::/64"]}),
            ),
            ("node-b", json!({})),
        ],
    );
    let kubeconfig = api.kubeconfig(&w);
    let node_conf = |node: &str, kubeconfig: &std::path::Path| {
        let mut c = w.conf("1.1.0");
        c["ipam"] = json!({"kubeconfig": kubeconfig, "nodeName": node, "dataDir": w.ipam_dir()});
        c
    };
    let conf_a = node_conf("node-a", &kubeconfig);
    w.status(&conf_a).ok();
    let a = w.add(&conf_a, p1, "c-api");
    assert_eq!(a.ip(true).to_string(), "10.88.1.2");
    assert_eq!(a.ip(false).to_string(), "fd88:1::2");
    let ns2 = w.pods[p2].path_str();
    for conf in [
        node_conf("node-b", &kubeconfig),
        node_conf("node-missing", &kubeconfig),
    ] {
        w.run("ADD", &conf, "c-none", Some(&ns2), "eth0").err(11);
        w.status(&conf).err(50);
    }
    let nowhere = node_conf("node-a", &w.dir.path().join("no-such-kubeconfig"));
    w.run("ADD", &nowhere, "c-none", Some(&ns2), "eth0").err(11);
    drop(api);
    // The API is gone: ADD cannot proceed, STATUS says so, DEL needs no API.
    w.run("ADD", &conf_a, "c-none", Some(&ns2), "eth0").err(11);
    w.status(&conf_a).err(50);
    w.run("DEL", &conf_a, "c-api", Some(&a.netns), "eth0").ok();
    w.assert_clean();
    assert_eq!(w.pods[p2].links(), vec!["lo".to_string()]);
}
