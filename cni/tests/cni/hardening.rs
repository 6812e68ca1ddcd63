//! Defence in depth (issue 10, section 5): input that used to collide, hang,
//! take over a route or fail late with an undocumented code, each answered
//! at once with a documented error and nothing left behind.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{BIN, World, run_bounded, tcp_exchange};
use crate::require_root;

fn add_env<'a>(container_id: &'a str, netns: &'a str, ifname: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", container_id),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", ifname),
        ("CNI_PATH", "/usr/lib/cni"),
    ]
}

fn msg(e: &Value) -> &str {
    e["msg"].as_str().unwrap_or_default()
}

/// `x-y`+`z` and `x`+`y-z` used to share one cached result: the second ADD
/// overwrote the first's (so CHECK of the first failed with 103), and a DEL
/// of either forgot both.
#[test]
fn colliding_attachments_keep_their_own_cached_results() {
    require_root!();
    let mut w = World::new();
    let p1 = w.pod("a");
    let p2 = w.pod("b");
    let conf = w.conf("1.0.0");
    let ns1 = w.pods[p1].path_str();
    let ns2 = w.pods[p2].path_str();
    let a = w.run("ADD", &conf, "x-y", Some(&ns1), "z").ok();
    let b = w.run("ADD", &conf, "x", Some(&ns2), "y-z").ok();
    assert_eq!(w.cached_results(), 2);
    let check_a = World::with_prev(&conf, &a);
    w.run("CHECK", &check_a, "x-y", Some(&ns1), "z").ok();
    w.run(
        "CHECK",
        &World::with_prev(&conf, &b),
        "x",
        Some(&ns2),
        "y-z",
    )
    .ok();
    w.run("DEL", &conf, "x", Some(&ns2), "y-z").ok();
    assert_eq!(w.cached_results(), 1, "DEL of x/y-z kept x-y/z's entry");
    w.run("CHECK", &check_a, "x-y", Some(&ns1), "z").ok();
    w.run("DEL", &conf, "x-y", Some(&ns1), "z").ok();
    w.assert_clean();
}

/// The pod's routes, as `ip -j route` lists them.
fn routes(w: &World, pod: usize, family: &str) -> Value {
    w.pods[pod].ip_json(&[family, "route", "show", "table", "all"])
}

fn defaults(w: &World, pod: usize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for family in ["-4", "-6"] {
        for r in routes(w, pod, family).as_array().into_iter().flatten() {
            if r["dst"] == "default" {
                out.push((
                    r["gateway"].as_str().unwrap_or_default().to_string(),
                    r["dev"].as_str().unwrap_or_default().to_string(),
                ));
            }
        }
    }
    out.sort();
    out
}

/// A second interface into a pod used to replace the pod's default routes
/// silently (NLM_F_REPLACE). Now its ADD fails with 104 naming the route
/// and its holder, and rolls back: no interface, host veth, reservation or
/// cached result of the second attachment is left, and the first one is
/// untouched. A second interface with routes of its own still works, over
/// `onlink` routes, also after the first interface is gone.
#[test]
fn second_interface_cannot_take_over_the_default_route() {
    require_root!();
    let mut w = World::new();
    let p = w.pod("pod");
    let q = w.pod("peer");
    w.enable_forwarding();
    let conf = w.conf("1.1.0");
    let first = w.add(&conf, p, "c-multi");
    let before = defaults(&w, p);
    assert_eq!(
        before,
        vec![
            ("169.254.1.1".to_string(), "eth0".to_string()),
            ("fe80::1".to_string(), "eth0".to_string())
        ]
    );
    let reservations = w.reservations();
    let e = w
        .run("ADD", &conf, "c-multi", Some(&first.netns), "eth1")
        .err(104);
    assert!(
        msg(&e).contains("0.0.0.0/0") && msg(&e).contains("dev eth0") && msg(&e).contains("eth1"),
        "{e}"
    );
    assert_eq!(
        w.pods[p].links(),
        vec!["lo".to_string(), "eth0".to_string()]
    );
    assert_eq!(w.host_veths(), vec![first.host_veth()]);
    assert_eq!(
        w.reservations(),
        reservations,
        "the failed ADD released its addresses"
    );
    assert_eq!(w.cached_results(), 1);
    assert_eq!(defaults(&w, p), before, "the default routes are untouched");
    w.run(
        "CHECK",
        &World::with_prev(&conf, &first.result),
        "c-multi",
        Some(&first.netns),
        "eth0",
    )
    .ok();

    // Another network with routes of its own: the gateway's host route
    // stays eth0's, eth1's route through the gateway is onlink.
    let mut conf2 = conf.clone();
    conf2["name"] = json!("fnet2");
    conf2["ipam"]["ranges"] = json!([[{"subnet": "10.78.0.0/24"}]]);
    conf2["ipam"]["routes"] = json!([{"dst": "10.78.0.0/24"}]);
    let second = w
        .run("ADD", &conf2, "c-multi", Some(&first.netns), "eth1")
        .ok();
    let peer = w.add(&conf2, q, "c-peer");
    assert_eq!(defaults(&w, p), before);
    let eth1_route = routes(&w, p, "-4")
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["dst"] == "10.78.0.0/24")
        .cloned()
        .expect("eth1's route");
    assert_eq!(eth1_route["dev"], "eth1", "{eth1_route}");
    assert!(
        eth1_route["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == "onlink")),
        "{eth1_route}"
    );
    w.run(
        "CHECK",
        &World::with_prev(&conf2, &second),
        "c-multi",
        Some(&first.netns),
        "eth1",
    )
    .ok();
    let eth1_ip = second["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .expect("eth1 address")
        .to_string();
    let (got, seen) = tcp_exchange(&w.pods[q], &w.pods[p], peer.ip(true), 8081);
    assert_eq!(got, "hello from the pod\n");
    assert_eq!(seen, eth1_ip, "the peer is reached over eth1");
    // Without eth0 (and its gateway host route), eth1 still works.
    w.run("DEL", &conf, "c-multi", Some(&first.netns), "eth0")
        .ok();
    let (got, _) = tcp_exchange(&w.pods[q], &w.pods[p], peer.ip(true), 8082);
    assert_eq!(got, "hello from the pod\n");
    w.run("DEL", &conf2, "c-multi", Some(&first.netns), "eth1")
        .ok();
    w.run("DEL", &conf2, "c-peer", Some(&peer.netns), "eth0")
        .ok();
    w.assert_clean();
}

/// `CNI_NETNS` naming a FIFO used to block the plugin for ever in open(2).
/// A FIFO, a regular file, a directory, a device and a namespace of another
/// kind are each refused at once with 4.
#[test]
fn netns_that_is_no_network_namespace_refused_without_blocking() {
    require_root!();
    let w = World::new();
    let conf = w.conf("1.0.0");
    let fifo = w.dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    let file = w.dir.path().join("regular");
    std::fs::write(&file, "not a namespace").expect("write");
    let paths = [
        fifo.display().to_string(),
        file.display().to_string(),
        w.dir.path().display().to_string(),
        "/dev/null".to_string(),
        "/proc/self/ns/mnt".to_string(),
    ];
    let check = World::with_prev(
        &conf,
        &json!({"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "x"}],
                "ips": [{"address": "10.77.0.9/32", "interface": 0}]}),
    );
    for path in &paths {
        for (command, stdin) in [("ADD", &conf), ("CHECK", &check)] {
            let mut env = add_env("c-ns", path, "eth0");
            env[0].1 = command;
            let stdin = stdin.to_string().into_bytes();
            let run = run_bounded(
                &w.node,
                BIN,
                &env,
                move |pipe| {
                    let _ = pipe.write_all(&stdin);
                },
                Duration::from_secs(20),
            )
            .unwrap_or_else(|| panic!("{command} with CNI_NETNS={path} blocked"));
            let e = run.err(4);
            assert!(msg(&e).contains("CNI_NETNS"), "{path}: {e}");
        }
    }
    w.assert_clean();
}

/// stdin used to be read to the end, however large. Now 1 MiB is the limit:
/// beyond it the plugin answers 7 after reading one byte past the limit,
/// and the rest is never read (the writer sees the pipe close). A config
/// just under the limit still works.
#[test]
fn oversized_stdin_refused_without_reading_it() {
    require_root!();
    let mut w = World::new();
    let p = w.pod("pod");
    let ns = w.pods[p].path_str();
    const TOTAL: u64 = 64 << 20;
    let written = Arc::new(AtomicU64::new(0));
    let counter = written.clone();
    let run = run_bounded(
        &w.node,
        BIN,
        &add_env("c-big", &ns, "eth0"),
        move |pipe| {
            let head = br#"{"cniVersion":"1.0.0","name":"fnet","pad":""#;
            if pipe.write_all(head).is_err() {
                return;
            }
            counter.fetch_add(head.len() as u64, Ordering::SeqCst);
            let chunk = vec![b'x'; 64 << 10];
            while counter.load(Ordering::SeqCst) < TOTAL {
                if pipe.write_all(&chunk).is_err() {
                    return;
                }
                counter.fetch_add(chunk.len() as u64, Ordering::SeqCst);
            }
        },
        Duration::from_secs(60),
    )
    .expect("the plugin finished");
    let e = run.err(7);
    assert!(msg(&e).contains("1048576"), "{e}");
    let written = written.load(Ordering::SeqCst);
    assert!(
        written < 4 << 20,
        "the plugin read {written} bytes of an oversized config"
    );
    w.assert_clean();
    // 1,000,000 bytes of config (an unknown key) are fine.
    let mut conf = w.conf("1.0.0");
    let len = conf.to_string().len();
    conf["pad"] = json!("x".repeat(1_000_000 - len - 10));
    assert!(conf.to_string().len() <= 1_000_000);
    let a = w.add(&conf, p, "c-big");
    w.run("DEL", &conf, "c-big", Some(&a.netns), "eth0").ok();
    w.assert_clean();
}

/// Interface names the kernel renames (`%` is a template: `eth%d` became
/// `eth0`, then 999) or refuses (0xA0 is a kernel space byte: 100) are 4
/// naming CNI_IFNAME before anything happens; a container ID too long for
/// a file name (it failed with 5 after wiring, and DEL never succeeded) is
/// 4 naming CNI_CONTAINERID, for DEL too.
#[test]
fn names_refused_before_anything_happens() {
    require_root!();
    let mut w = World::new();
    let p = w.pod("pod");
    let ns = w.pods[p].path_str();
    let conf = w.conf("1.0.0");
    for ifname in ["eth%d", "\u{e0}"] {
        let e = w.run("ADD", &conf, "c-name", Some(&ns), ifname).err(4);
        assert!(msg(&e).contains("CNI_IFNAME"), "{ifname:?}: {e}");
    }
    let long = "c".repeat(300);
    for command in ["ADD", "DEL"] {
        let e = w.run(command, &conf, &long, Some(&ns), "eth0").err(4);
        assert!(msg(&e).contains("CNI_CONTAINERID"), "{command}: {e}");
    }
    assert_eq!(w.pods[p].links(), vec!["lo".to_string()]);
    w.assert_clean();
}

/// A route to the pod's address that already exists in the node (here a
/// blackhole someone else put there) used to be replaced, hijacking its
/// traffic. Now the ADD fails with 104 naming it, rolls back, and leaves
/// the route as it was.
#[test]
fn existing_node_route_to_the_pod_address_is_not_taken_over() {
    require_root!();
    let mut w = World::new();
    let p = w.pod("pod");
    let ns = w.pods[p].path_str();
    let mut conf = w.conf("1.0.0");
    // One address only, so the ADD must take 10.77.0.2.
    conf["ipam"]["ranges"] = json!([[{"subnet": "10.77.0.0/30"}]]);
    w.node.ip(&["route", "add", "blackhole", "10.77.0.2/32"]);
    let e = w.run("ADD", &conf, "c-node", Some(&ns), "eth0").err(104);
    assert!(
        msg(&e).contains("10.77.0.2/32") && msg(&e).contains("node"),
        "{e}"
    );
    let kept = w.node.ip_json(&["route", "show", "10.77.0.2/32"]);
    assert_eq!(kept[0]["type"], "blackhole", "{kept}");
    assert_eq!(w.pods[p].links(), vec!["lo".to_string()]);
    w.assert_clean();
}

/// With `dataplane.waitFor`, ADD returns only once the node's dataplane has
/// taken the pod's host veth (ferry-agent pins its programs' links there),
/// so nothing in the pod runs unguarded; without it in time, ADD fails
/// with 11 (try again later), naming the file, and leaves nothing behind.
#[test]
fn add_waits_for_the_dataplane_to_take_the_host_veth() {
    require_root!();
    let mut w = World::new();
    let p = w.pod("dp");
    let pins = w.dir.path().join("pins");
    std::fs::create_dir_all(&pins).expect("pins dir");
    let template = format!("{}/link_{{hostVeth}}", pins.display());
    let mut conf = w.conf("1.1.0");
    conf["dataplane"] = json!({"waitFor": [template], "timeoutMs": 300});
    let ns = w.pods[p].path_str();

    let started = std::time::Instant::now();
    let e = w.run("ADD", &conf, "c-dp", Some(&ns), "eth0").err(11);
    assert!(
        msg(&e).contains("did not take") && msg(&e).contains("link_fer"),
        "{e}"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    w.assert_clean();

    // The "agent" takes the veth 150 ms after it appears.
    let node = w.node.name.clone();
    let dir = pins.clone();
    let agent = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let veth = || -> Option<String> {
            let out = std::process::Command::new("ip")
                .args(["-n", &node, "-o", "link", "show"])
                .output()
                .ok()?;
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.split(": ").nth(1))
                .map(|n| n.split('@').next().unwrap_or(n).to_owned())
                .find(|n| n.starts_with("fer"))
        };
        while std::time::Instant::now() < deadline {
            if let Some(veth) = veth() {
                std::thread::sleep(Duration::from_millis(150));
                std::fs::write(dir.join(format!("link_{veth}")), "").expect("pin");
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    });
    conf["dataplane"]["timeoutMs"] = json!(5000);
    let started = std::time::Instant::now();
    w.run("ADD", &conf, "c-dp", Some(&ns), "eth0").ok();
    assert!(agent.join().expect("agent thread"), "no veth appeared");
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "ADD returned before the dataplane took the veth"
    );
    w.run("DEL", &conf, "c-dp", Some(&ns), "eth0").ok();
    w.assert_clean();
}
