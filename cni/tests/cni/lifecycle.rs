//! ADD, CHECK, DEL, GC, STATUS and VERSION against the spec, per result
//! version, and the wiring they leave in the namespaces.

use serde_json::{Value, json};

use crate::common::{SUPPORTED, World, tcp_exchange};
use crate::require_root;

fn is_mac(s: &str) -> bool {
    s.len() == 17
        && s.split(':')
            .all(|b| b.len() == 2 && b.bytes().all(|c| c.is_ascii_hexdigit()))
}

/// The result's shape for `version`, per the spec.
pub fn assert_shape(v: &Value, version: &str, netns: &str) {
    let old = version.starts_with("0.");
    let v11 = version == "1.1.0";
    assert_eq!(v["cniVersion"], version, "{v}");
    let ifaces = v["interfaces"].as_array().expect("interfaces");
    assert_eq!(ifaces.len(), 2, "{v}");
    let host = &ifaces[0];
    let name = host["name"].as_str().expect("host name");
    assert!(name.starts_with("fer") && name.len() <= 15, "{name}");
    assert!(is_mac(host["mac"].as_str().expect("host mac")), "{host}");
    assert!(
        host.get("sandbox").is_none(),
        "host interface has a sandbox: {host}"
    );
    let pod = &ifaces[1];
    assert_eq!(pod["name"], "eth0");
    assert!(is_mac(pod["mac"].as_str().expect("pod mac")), "{pod}");
    assert_eq!(pod["sandbox"], netns);
    for i in ifaces {
        assert_eq!(
            i.get("mtu").is_some(),
            v11,
            "interface mtu only in 1.1.0: {i}"
        );
        if v11 {
            assert_eq!(i["mtu"], 1400);
        }
    }
    let ips = v["ips"].as_array().expect("ips");
    assert_eq!(ips.len(), 2, "{v}");
    for (ip, (family, prefix, gw)) in ips
        .iter()
        .zip([("4", "/32", "169.254.1.1"), ("6", "/128", "fe80::1")])
    {
        assert!(
            ip["address"].as_str().is_some_and(|a| a.ends_with(prefix)),
            "{ip}"
        );
        assert_eq!(ip["gateway"], gw);
        assert_eq!(ip["interface"], 1);
        if old {
            assert_eq!(
                ip["version"], family,
                "0.x results carry ips[].version: {ip}"
            );
        } else {
            assert!(
                ip.get("version").is_none(),
                "1.x results have no ips[].version: {ip}"
            );
        }
    }
    let routes = v["routes"].as_array().expect("routes");
    assert!(
        routes
            .iter()
            .any(|r| r["dst"] == "0.0.0.0/0" && r["gw"] == "169.254.1.1"),
        "{v}"
    );
    assert!(
        routes
            .iter()
            .any(|r| r["dst"] == "::/0" && r["gw"] == "fe80::1"),
        "{v}"
    );
    for r in routes {
        for k in ["mtu", "advmss", "priority", "table", "scope"] {
            if !v11 {
                assert!(r.get(k).is_none(), "route field {k} before 1.1.0: {r}");
            }
        }
    }
    assert_eq!(v["dns"]["nameservers"], json!(["10.96.0.10"]));
    assert_eq!(v["dns"]["search"], json!(["svc.cluster.local"]));
}

fn lifecycle(version: &str) {
    let mut w = World::new();
    let p = w.pod("pod1");
    let conf = w.conf(version);
    let a = w.add(&conf, p, "c-life");
    assert_shape(&a.result, version, &a.netns);

    // The wiring, as seen from both namespaces.
    let host = a.host_veth();
    assert_eq!(w.host_veths(), vec![host.clone()]);
    let v4 = a.ip(true).to_string();
    let v6 = a.ip(false).to_string();
    let node_routes = w.node.ip_json(&["route", "show"]);
    assert!(
        node_routes
            .as_array()
            .expect("routes")
            .iter()
            .any(|r| r["dst"] == v4.as_str() && r["dev"] == host.as_str()),
        "no host route to {v4}: {node_routes}"
    );
    let node_routes6 = w.node.ip_json(&["-6", "route", "show"]);
    assert!(
        node_routes6.to_string().contains(&v6),
        "no host route to {v6}: {node_routes6}"
    );
    let neigh = w.node.ip_json(&["neigh", "show", "dev", &host]).to_string();
    assert!(
        neigh.contains(&v4) && neigh.contains("PERMANENT"),
        "{neigh}"
    );
    let host_sysctl = std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{host}/proxy_arp"));
    // That sysctl belongs to the node namespace, not ours.
    assert!(
        host_sysctl.is_err(),
        "the host veth leaked into the test's namespace"
    );
    let pod = &w.pods[p];
    let addrs = pod.ip_json(&["addr", "show", "eth0"]).to_string();
    assert!(addrs.contains(&v4) && addrs.contains(&v6), "{addrs}");
    let link = pod.ip_json(&["link", "show", "eth0"]);
    assert_eq!(link[0]["mtu"], 1400);
    assert_eq!(link[0]["address"], a.result["interfaces"][1]["mac"]);
    let pod_neigh = pod.ip_json(&["neigh", "show"]).to_string();
    assert!(
        pod_neigh.contains("169.254.1.1") && pod_neigh.contains("fe80::1"),
        "{pod_neigh}"
    );

    // CHECK needs 0.4.0.
    let check = w.run(
        "CHECK",
        &World::with_prev(&conf, &a.result),
        "c-life",
        Some(&a.netns),
        "eth0",
    );
    if version.starts_with("0.3") {
        check.err(1);
    } else {
        assert_eq!(check.ok(), Value::Null, "CHECK prints nothing");
    }

    // DEL (with prevResult, as a runtime with a cached result sends it).
    let del = w.run(
        "DEL",
        &World::with_prev(&conf, &a.result),
        "c-life",
        Some(&a.netns),
        "eth0",
    );
    assert_eq!(del.ok(), Value::Null, "DEL prints nothing");
    w.assert_clean();
    assert_eq!(
        w.pods[p].links(),
        vec!["lo".to_string()],
        "pod end left behind"
    );
    // And again: DEL is idempotent.
    w.run("DEL", &conf, "c-life", Some(&a.netns), "eth0").ok();

    // GC and STATUS are 1.1.0 commands.
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    let gc = w.run_raw(
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/usr/lib/cni")],
        gc.to_string().as_bytes(),
    );
    let status = w.run_raw(
        &[("CNI_COMMAND", "STATUS"), ("CNI_PATH", "/usr/lib/cni")],
        conf.to_string().as_bytes(),
    );
    if version == "1.1.0" {
        assert_eq!(gc.ok(), Value::Null);
        assert_eq!(status.ok(), Value::Null);
    } else {
        gc.err(1);
        status.err(1);
    }
}

#[test]
fn lifecycle_0_3_0() {
    require_root!();
    lifecycle("0.3.0");
}

#[test]
fn lifecycle_0_3_1() {
    require_root!();
    lifecycle("0.3.1");
}

#[test]
fn lifecycle_0_4_0() {
    require_root!();
    lifecycle("0.4.0");
}

#[test]
fn lifecycle_1_0_0() {
    require_root!();
    lifecycle("1.0.0");
}

#[test]
fn lifecycle_1_1_0() {
    require_root!();
    lifecycle("1.1.0");
}

#[test]
fn version_command() {
    require_root!();
    let w = World::new();
    let env = [("CNI_COMMAND", "VERSION")];
    let v = w.run_raw(&env, b"").ok();
    assert_eq!(v["cniVersion"], "1.1.0");
    assert_eq!(v["supportedVersions"], json!(SUPPORTED));
    let v = w.run_raw(&env, br#"{"cniVersion":"0.4.0"}"#).ok();
    assert_eq!(v["cniVersion"], "0.4.0");
    assert_eq!(v["supportedVersions"], json!(SUPPORTED));
}

/// 1.1.0's route fields are applied and reported.
#[test]
fn route_fields_1_1_0() {
    require_root!();
    let mut w = World::new();
    let p = w.pod("pod1");
    let mut conf = w.conf("1.1.0");
    conf["ipam"]["routes"] = json!([
        {"dst": "0.0.0.0/0"},
        {"dst": "::/0"},
        {"dst": "10.99.0.0/16", "mtu": 1300, "advmss": 1260, "priority": 50, "table": 100},
    ]);
    let a = w.add(&conf, p, "c-routes");
    let r = a.result["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .find(|r| r["dst"] == "10.99.0.0/16")
        .cloned()
        .expect("the extra route");
    assert_eq!(
        r,
        json!({"dst": "10.99.0.0/16", "gw": "169.254.1.1", "mtu": 1300, "advmss": 1260, "priority": 50, "table": 100})
    );
    let table = w.pods[p].ip_json(&["route", "show", "table", "100"]);
    let t = &table[0];
    assert_eq!(t["dst"], "10.99.0.0/16", "{table}");
    assert_eq!(t["metric"], 50, "{table}");
    assert!(
        table.to_string().contains("1300"),
        "route mtu not applied: {table}"
    );
    w.run(
        "CHECK",
        &World::with_prev(&conf, &a.result),
        "c-routes",
        Some(&a.netns),
        "eth0",
    )
    .ok();
    w.run("DEL", &conf, "c-routes", Some(&a.netns), "eth0").ok();
    w.assert_clean();
}

/// Two pods on one node talk TCP over both families, through the node,
/// without NAT.
#[test]
fn pods_reach_each_other() {
    require_root!();
    let mut w = World::new();
    let p1 = w.pod("pod1");
    let p2 = w.pod("pod2");
    let conf = w.conf("1.0.0");
    let a1 = w.add(&conf, p1, "c-one");
    let a2 = w.add(&conf, p2, "c-two");
    w.enable_forwarding();
    for v4 in [true, false] {
        let (got, peer) = tcp_exchange(&w.pods[p2], &w.pods[p1], a2.ip(v4), 8080);
        assert_eq!(got, "hello from the pod\n");
        assert_eq!(
            peer,
            a1.ip(v4).to_string(),
            "the server saw the client's own address"
        );
        let (got, peer) = tcp_exchange(&w.pods[p1], &w.pods[p2], a1.ip(v4), 8081);
        assert_eq!(got, "hello from the pod\n");
        assert_eq!(peer, a2.ip(v4).to_string());
    }
    for a in [&a1, &a2] {
        w.run("DEL", &conf, &a.container_id, Some(&a.netns), "eth0")
            .ok();
    }
    w.assert_clean();
}

/// A single-stack IPv6 network: one /128, one default route, and pods
/// still reach each other.
#[test]
fn ipv6_only() {
    require_root!();
    let mut w = World::new();
    let p1 = w.pod("pod1");
    let p2 = w.pod("pod2");
    let mut conf = w.conf("1.1.0");
    conf["ipam"]["ranges"] = json!([[{"subnet": "fd77::/64"}]]);
    let a1 = w.add(&conf, p1, "c-six-1");
    let a2 = w.add(&conf, p2, "c-six-2");
    for a in [&a1, &a2] {
        assert_eq!(a.ips().len(), 1, "{}", a.result);
        assert_eq!(
            a.result["routes"],
            json!([{"dst": "::/0", "gw": "fe80::1"}])
        );
    }
    let pod_routes = w.pods[p1].ip_json(&["route", "show"]);
    assert_eq!(pod_routes, json!([]), "no IPv4 routes in an IPv6-only pod");
    w.enable_forwarding();
    let (got, peer) = tcp_exchange(&w.pods[p2], &w.pods[p1], a2.ip(false), 8080);
    assert_eq!(got, "hello from the pod\n");
    assert_eq!(peer, a1.ip(false).to_string());
    for a in [&a1, &a2] {
        w.run(
            "CHECK",
            &World::with_prev(&conf, &a.result),
            &a.container_id,
            Some(&a.netns),
            "eth0",
        )
        .ok();
        w.run("DEL", &conf, &a.container_id, Some(&a.netns), "eth0")
            .ok();
    }
    w.assert_clean();
}

/// DEL succeeds when the pod's namespace is already gone, and still frees
/// the addresses; also without CNI_NETNS at all.
#[test]
fn del_without_netns() {
    require_root!();
    let mut w = World::new();
    let p1 = w.pod("gone");
    let p2 = w.pod("unset");
    let conf = w.conf("1.1.0");
    let a1 = w.add(&conf, p1, "c-gone");
    let a2 = w.add(&conf, p2, "c-unset");
    assert_eq!(w.reservations().len(), 4);
    // Deleting the namespace also destroys the veth pair.
    let gone = w.pods.remove(p1);
    drop(gone);
    assert!(!std::path::Path::new(&a1.netns).exists());
    w.run(
        "DEL",
        &World::with_prev(&conf, &a1.result),
        "c-gone",
        Some(&a1.netns),
        "eth0",
    )
    .ok();
    w.run("DEL", &conf, "c-gone", Some(&a1.netns), "eth0").ok();
    assert_eq!(w.reservations().len(), 2);
    // Without CNI_NETNS the veth is still found (by its derived name).
    w.run("DEL", &conf, "c-unset", None, "eth0").ok();
    assert_eq!(w.pods[0].links(), vec!["lo".to_string()]);
    let _ = a2;
    w.assert_clean();
}

/// GC frees exactly the attachments not listed as valid.
#[test]
fn gc_frees_only_stale_attachments() {
    require_root!();
    let mut w = World::new();
    let p1 = w.pod("keep");
    let p2 = w.pod("stale");
    let conf = w.conf("1.1.0");
    let keep = w.add(&conf, p1, "c-keep");
    let stale = w.add(&conf, p2, "c-stale");
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "c-keep", "ifname": "eth0"}]);
    w.run_raw(
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/usr/lib/cni")],
        gc.to_string().as_bytes(),
    )
    .ok();
    assert_eq!(w.host_veths(), vec![keep.host_veth()]);
    let kept: Vec<String> = keep.ips().iter().map(ToString::to_string).collect();
    let mut want = kept.clone();
    want.sort();
    assert_eq!(w.reservations(), want);
    assert_eq!(w.cached_results(), 1);
    assert!(
        !w.pods[p2].links().contains(&"eth0".to_string()),
        "stale pod end not deleted"
    );
    let _ = stale;
    // The valid attachment is untouched.
    w.run(
        "CHECK",
        &World::with_prev(&conf, &keep.result),
        "c-keep",
        Some(&keep.netns),
        "eth0",
    )
    .ok();
    w.run("DEL", &conf, "c-keep", Some(&keep.netns), "eth0")
        .ok();
    w.assert_clean();
}

/// A main plugin called with a prevResult appends to it.
#[test]
fn add_with_prev_result_appends() {
    require_root!();
    let mut w = World::new();
    let p = w.pod("pod1");
    let conf = w.conf("1.0.0");
    let prev = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "other0", "mac": "02:00:00:00:00:01", "sandbox": w.pods[p].path_str()}],
        "ips": [{"address": "192.168.200.2/24", "interface": 0}],
        "routes": [],
        "dns": {},
    });
    let out = w
        .run(
            "ADD",
            &World::with_prev(&conf, &prev),
            "c-prev",
            Some(&w.pods[p].path_str()),
            "eth0",
        )
        .ok();
    let ifaces = out["interfaces"].as_array().expect("interfaces");
    assert_eq!(ifaces.len(), 3);
    assert_eq!(ifaces[0]["name"], "other0");
    assert_eq!(ifaces[2]["name"], "eth0");
    let ips = out["ips"].as_array().expect("ips");
    assert_eq!(ips[0]["interface"], 0);
    assert!(ips[1..].iter().all(|ip| ip["interface"] == 2), "{out}");
    w.run(
        "CHECK",
        &World::with_prev(&conf, &out),
        "c-prev",
        Some(&w.pods[p].path_str()),
        "eth0",
    )
    .ok();
    w.run("DEL", &conf, "c-prev", Some(&w.pods[p].path_str()), "eth0")
        .ok();
    w.assert_clean();
}
