//! Every error code the spec lists that applies to this plugin (and
//! Ferry's own), each as JSON on stdout with a non-zero exit, and failed
//! ADDs leaving nothing behind.

use serde_json::{Value, json};

use crate::common::World;
use crate::require_root;

fn env<'a>(command: &'a str, netns: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "c-err"),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/usr/lib/cni"),
    ]
}

fn without<'a>(env: &[(&'a str, &'a str)], key: &str) -> Vec<(&'a str, &'a str)> {
    env.iter().copied().filter(|(k, _)| *k != key).collect()
}

fn with<'a>(env: &[(&'a str, &'a str)], key: &'a str, value: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut e = without(env, key);
    e.push((key, value));
    e
}

#[test]
fn code_1_incompatible_version() {
    require_root!();
    let mut w = World::new();
    let p = w.pod("pod");
    let ns = w.pods[p].path_str();
    let add = env("ADD", &ns);
    for version in [json!("0.2.0"), json!("0.1.0"), json!("2.0.0"), Value::Null] {
        let mut conf = w.conf("1.0.0");
        conf["cniVersion"] = version.clone();
        let e = w.run_raw(&add, conf.to_string().as_bytes()).err(1);
        if let Some(v) = version.as_str() {
            assert_eq!(e["cniVersion"], v, "the error speaks the config's version");
            assert!(e["details"].as_str().is_some_and(|d| d.contains(v)), "{e}");
        }
    }
    let mut conf = w.conf("1.1.0");
    conf.as_object_mut().expect("object").remove("cniVersion");
    w.run_raw(&add, conf.to_string().as_bytes()).err(1);
    let check = w.conf("0.3.1");
    w.run_raw(&env("CHECK", &ns), check.to_string().as_bytes())
        .err(1);
    w.assert_clean();
}

#[test]
fn code_2_unsupported_field() {
    require_root!();
    let mut w = World::new();
    let p = w.pod("pod");
    let ns = w.pods[p].path_str();
    let mut conf = w.conf("1.0.0");
    conf["ipMasq"] = json!(true);
    let e = w
        .run_raw(&env("ADD", &ns), conf.to_string().as_bytes())
        .err(2);
    assert!(
        e["msg"]
            .as_str()
            .is_some_and(|m| m.contains("ipMasq") && m.contains("true")),
        "{e}"
    );
    let mut conf = w.conf("1.0.0");
    conf["ipam"] = json!({"type": "dhcp"});
    let e = w
        .run_raw(&env("ADD", &ns), conf.to_string().as_bytes())
        .err(2);
    assert!(
        e["msg"]
            .as_str()
            .is_some_and(|m| m.contains("ipam.type") && m.contains("dhcp")),
        "{e}"
    );
    w.assert_clean();
}

#[test]
fn code_3_unknown_container() {
    require_root!();
    let w = World::new();
    let missing = format!("/var/run/netns/{}-never-created", w.prefix);
    let conf = w.conf("1.0.0");
    w.run_raw(&env("ADD", &missing), conf.to_string().as_bytes())
        .err(3);
    let prev = json!({"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": missing}], "ips": [{"address": "10.77.0.9/32", "interface": 0}]});
    w.run_raw(
        &env("CHECK", &missing),
        World::with_prev(&conf, &prev).to_string().as_bytes(),
    )
    .err(3);
    w.assert_clean();
}

#[test]
fn code_4_invalid_environment() {
    require_root!();
    let mut w = World::new();
    let p = w.pod("pod");
    let ns = w.pods[p].path_str();
    let conf = w.conf("1.0.0").to_string();
    let add = env("ADD", &ns);
    let node_path = w.node.path_str();
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (without(&add, "CNI_COMMAND"), "CNI_COMMAND"),
        (with(&add, "CNI_COMMAND", "FROBNICATE"), "FROBNICATE"),
        (without(&add, "CNI_CONTAINERID"), "CNI_CONTAINERID"),
        (without(&add, "CNI_NETNS"), "CNI_NETNS"),
        (without(&add, "CNI_IFNAME"), "CNI_IFNAME"),
        (without(&add, "CNI_PATH"), "CNI_PATH"),
        (
            with(&add, "CNI_CONTAINERID", "-starts-with-dash"),
            "CNI_CONTAINERID",
        ),
        (
            with(&add, "CNI_CONTAINERID", "has space"),
            "CNI_CONTAINERID",
        ),
        (
            with(&add, "CNI_CONTAINERID", "semi;colon"),
            "CNI_CONTAINERID",
        ),
        (with(&add, "CNI_IFNAME", "a-name-too-long0"), "CNI_IFNAME"),
        (with(&add, "CNI_IFNAME", "."), "CNI_IFNAME"),
        (with(&add, "CNI_IFNAME", ".."), "CNI_IFNAME"),
        (with(&add, "CNI_IFNAME", "eth/0"), "CNI_IFNAME"),
        (with(&add, "CNI_IFNAME", "eth:0"), "CNI_IFNAME"),
        (with(&add, "CNI_IFNAME", "eth 0"), "CNI_IFNAME"),
        (with(&add, "CNI_ARGS", "K8S_POD_NAME"), "CNI_ARGS"),
        // A file that is not a network namespace, and the plugin's own.
        (with(&add, "CNI_NETNS", "/etc/hostname"), "CNI_NETNS"),
        (with(&add, "CNI_NETNS", &node_path), "CNI_NETNS"),
    ];
    for (e, names) in &cases {
        let err = w.run_raw(e, conf.as_bytes()).err(4);
        assert!(
            err["msg"].as_str().is_some_and(|m| m.contains(names)),
            "{names}: {err}"
        );
    }
    // DEL needs no CNI_NETNS, but does need the rest.
    let del = env("DEL", &ns);
    w.run_raw(&without(&del, "CNI_NETNS"), conf.as_bytes()).ok();
    w.run_raw(&without(&del, "CNI_IFNAME"), conf.as_bytes())
        .err(4);
    w.run_raw(&[("CNI_COMMAND", "GC")], conf.as_bytes()).err(4);
    w.assert_clean();
}

#[test]
fn code_5_io_failure() {
    require_root!();
    let mut w = World::new();
    let p = w.pod("pod");
    let ns = w.pods[p].path_str();
    // The IPAM dataDir cannot be created: a regular file is in the way.
    let blocker = w.dir.path().join("not-a-dir");
    std::fs::write(&blocker, "x").expect("write");
    let mut conf = w.conf("1.0.0");
    conf["ipam"]["dataDir"] = json!(blocker.join("sub"));
    w.run_raw(&env("ADD", &ns), conf.to_string().as_bytes())
        .err(5);
    assert!(w.host_veths().is_empty());
    assert_eq!(w.pods[p].links(), vec!["lo".to_string()]);
}

#[test]
fn code_6_decode_failure() {
    require_root!();
    let mut w = World::new();
    let p = w.pod("pod");
    let ns = w.pods[p].path_str();
    let add = env("ADD", &ns);
    w.run_raw(&add, b"{ not json").err(6);
    w.run_raw(&add, b"").err(6);
    w.run_raw(&add, b"[1, 2]").err(6);
    let mut conf = w.conf("1.0.0");
    conf["cniVersion"] = json!("one.oh");
    w.run_raw(&add, conf.to_string().as_bytes()).err(6);
    let mut conf = w.conf("1.0.0");
    conf["mtu"] = json!("big");
    w.run_raw(&add, conf.to_string().as_bytes()).err(6);
    // A 0.2.0 prevResult cannot be read.
    let conf = World::with_prev(&w.conf("1.0.0"), &json!({"ip4": {"ip": "10.0.0.2/24"}}));
    w.run_raw(&add, conf.to_string().as_bytes()).err(6);
    w.assert_clean();
}

#[test]
fn code_7_invalid_config() {
    require_root!();
    let mut w = World::new();
    let p = w.pod("pod");
    let ns = w.pods[p].path_str();
    let add = env("ADD", &ns);
    let base = w.conf("1.1.0");
    let mut cases = Vec::new();
    let mut c = base.clone();
    c.as_object_mut().expect("object").remove("name");
    cases.push(c);
    let mut c = base.clone();
    c["name"] = json!("not a name!");
    cases.push(c);
    for ipam in [
        json!({"ranges": [[{"subnet": "10.77.0.1/24"}]]}),
        json!({"ranges": [[{"subnet": "10.77.0.0/24", "rangeStart": "10.78.0.1"}]]}),
        json!({"ranges": [[{"subnet": "10.77.0.0/31"}]]}),
        json!({"ranges": [[{"subnet": "nonsense"}]]}),
        json!({"ranges": []}),
        json!({"ranges": [[{"subnet": "10.77.0.0/24"}], [{"subnet": "10.77.0.0/25"}]]}),
    ] {
        let mut c = base.clone();
        c["ipam"] = ipam;
        c["ipam"]["dataDir"] = json!(w.ipam_dir());
        cases.push(c);
    }
    let mut c = base.clone();
    c["mtu"] = json!(20);
    cases.push(c);
    for c in &cases {
        w.run_raw(&add, c.to_string().as_bytes()).err(7);
    }
    // CHECK without prevResult, GC without valid attachments.
    w.run_raw(&env("CHECK", &ns), base.to_string().as_bytes())
        .err(7);
    w.run_raw(
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/x")],
        base.to_string().as_bytes(),
    )
    .err(7);
    w.assert_clean();
}

/// An interface that already exists (in the pod, or the host end of an
/// attachment ADDed twice) fails with 101 and reserves nothing.
#[test]
fn code_101_interface_exists() {
    require_root!();
    let mut w = World::new();
    let p1 = w.pod("taken");
    let p2 = w.pod("twice");
    let conf = w.conf("1.0.0");
    w.pods[p1].ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer",
    ]);
    let ns1 = w.pods[p1].path_str();
    let e = w.run("ADD", &conf, "c-taken", Some(&ns1), "eth0").err(101);
    assert!(e["msg"].as_str().is_some_and(|m| m.contains("eth0")), "{e}");
    w.assert_clean();
    let a = w.add(&conf, p2, "c-twice");
    let before = w.reservations();
    w.run("ADD", &conf, "c-twice", Some(&a.netns), "eth0")
        .err(101);
    assert_eq!(
        w.reservations(),
        before,
        "a failed ADD must not change reservations"
    );
    // The failed second ADD did not tear down the first one.
    w.run(
        "CHECK",
        &World::with_prev(&conf, &a.result),
        "c-twice",
        Some(&a.netns),
        "eth0",
    )
    .ok();
    w.run("DEL", &conf, "c-twice", Some(&a.netns), "eth0").ok();
    w.assert_clean();
}

/// CHECK reports a missing route or address with 103.
#[test]
fn code_103_check_failed() {
    require_root!();
    let mut w = World::new();
    let p = w.pod("pod");
    let conf = w.conf("1.1.0");
    let a = w.add(&conf, p, "c-check");
    let check = World::with_prev(&conf, &a.result);
    w.run("CHECK", &check, "c-check", Some(&a.netns), "eth0")
        .ok();
    w.pods[p].ip(&["-6", "route", "del", "default"]);
    let e = w
        .run("CHECK", &check, "c-check", Some(&a.netns), "eth0")
        .err(103);
    assert!(e["msg"].as_str().is_some_and(|m| m.contains("::/0")), "{e}");
    w.pods[p].ip(&["addr", "flush", "dev", "eth0"]);
    w.run("CHECK", &check, "c-check", Some(&a.netns), "eth0")
        .err(103);
    // A prevResult naming another address than the one reserved.
    let mut forged = a.result.clone();
    forged["ips"][0]["address"] = json!("10.77.0.200/32");
    w.run(
        "CHECK",
        &World::with_prev(&conf, &forged),
        "c-check",
        Some(&a.netns),
        "eth0",
    )
    .err(103);
    w.run("DEL", &conf, "c-check", Some(&a.netns), "eth0").ok();
    w.assert_clean();
}
