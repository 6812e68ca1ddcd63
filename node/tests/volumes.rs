//! Pod volumes through a real ferry-node and ferry-apiserver: configMap,
//! secret, downwardAPI, projected, emptyDir and hostPath volumes as a
//! container sees them (read back from its log), updates, readOnly,
//! subPath escapes, a missing ConfigMap holding the pod, ServiceAccount
//! tokens (a projection's and the one admission mounts, with the CA and
//! the namespace) that the apiserver's TokenReview accepts, the node's
//! mount table untouched, cleanup on deletion. Root only.

mod world;

use std::path::{Path, PathBuf};

use ferry_testbed::skip_if_not_root;
use serde_json::{Value, json};
use world::*;

/// The node's mount points under `dir` (the pods' network namespace files
/// aside: ferry-node mounts those in the node's namespace by design).
fn mounts_under(dir: &Path, netns: &Path) -> Vec<String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let mut out: Vec<String> = table
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| Path::new(p).starts_with(dir) && !Path::new(p).starts_with(netns))
        .map(str::to_owned)
        .collect();
    out.sort();
    out
}

/// `key=value` lines of a log, before the first `---`.
fn values(log: &str) -> std::collections::BTreeMap<String, String> {
    log.split("---\n")
        .next()
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn mount(name: &str, path: &Path) -> Value {
    json!({"name": name, "mountPath": path})
}

#[test]
fn volumes_as_containers_see_them() {
    if skip_if_not_root() {
        return;
    }
    let c = Cluster::with_flags(1, |world, _| {
        let sd = world.state_dir();
        vec![
            "--host-root".into(),
            sd.join("node0-host").to_string_lossy().into_owned(),
            "--host-path-map".into(),
            format!("/shared={}", sd.join("shared-real").display()),
        ]
    });
    let sd = c.world.state_dir().to_path_buf();
    let host_root = sd.join("node0-host");
    let shared_real = sd.join("shared-real");
    // The mount points: directories of the test's own (a process
    // container sees the node's file system).
    let m = sd.join("mnt");
    for d in [
        "cfg", "sec", "down", "proj", "data", "host", "shared", "ro", "x", "y", "late",
    ] {
        std::fs::create_dir_all(m.join(d)).expect("mount point");
    }
    let p = |d: &str| -> PathBuf { m.join(d) };
    let netns = c.nodes[0].netns_dir();
    let mounts_before = mounts_under(&sd, &netns);

    c.kubectl(&[
        "create",
        "configmap",
        "cfg",
        "--from-literal=a=one",
        "--from-literal=b=bee",
    ]);
    c.kubectl(&[
        "create",
        "secret",
        "generic",
        "sec",
        "--from-literal=pw=hunter2",
    ]);

    // One pod with every kind of volume.
    let script = format!(
        r#"M={m}
echo "cfg-a=$(cat $M/cfg/a.txt)"
echo "cfg-a-mode=$(stat -L -c %a $M/cfg/a.txt)"
echo "cfg-b=$(cat $M/cfg/dir/b.txt)"
echo "cfg-b-mode=$(stat -L -c %a $M/cfg/dir/b.txt)"
echo "sec=$(cat $M/sec/pw)"
echo "down-name=$(cat $M/down/name)"
echo "down-labels=$(tr '\n' ';' < $M/down/labels)"
echo "down-node=$(cat $M/down/node)"
echo "down-ip=$(cat $M/down/ip)"
echo "proj=$(cat $M/proj/a.txt),$(cat $M/proj/pw),$(cat $M/proj/ns)"
echo "data=$(cat $M/data/f)"
echo "nested=$(cat $M/data/cfg/a.txt)"
echo "covered=$(cat $M/missing/deeper/a.txt)"
echo "host=$(cat $M/host/h)"
echo "shared=$(cat $M/shared/s)"
if echo x > $M/ro/w 2>/dev/null; then echo ro-write=ok; else echo ro-write=failed; fi
if echo x > $M/cfg/new 2>/dev/null; then echo cfg-write=ok; else echo cfg-write=failed; fi
echo ---
while true; do echo "now-a=$(cat $M/cfg/a.txt)"; sleep 1; done"#,
        m = m.display()
    );
    let mut main = busybox(&script);
    main["volumeMounts"] = json!([
        mount("cfg", &p("cfg")),
        mount("sec", &p("sec")),
        mount("down", &p("down")),
        mount("proj", &p("proj")),
        mount("data", &p("data")),
        // Inside the emptyDir: the mount point is made there, not on the node.
        mount("cfg", &p("data/cfg")),
        // Missing on the node: made in a tmpfs covering `m`, in the
        // container's namespace only.
        mount("cfg", &p("missing/deeper")),
        mount("host", &p("host")),
        mount("shared", &p("shared")),
        {"name": "host", "mountPath": p("ro"), "readOnly": true},
    ]);
    let init = json!({"name": "init", "image": "busybox", "command": ["sh", "-c",
        format!("echo from-init > {0}/data/f && echo on-host > {0}/host/h && echo mapped > {0}/shared/s", m.display())],
        "volumeMounts": [mount("data", &p("data")), mount("host", &p("host")), mount("shared", &p("shared"))]});
    c.create_pod(
        "vols",
        0,
        json!({
            "initContainers": [init],
            "containers": [main],
            "volumes": [
                {"name": "cfg", "configMap": {"name": "cfg", "defaultMode": 0o640,
                    "items": [{"key": "a", "path": "a.txt", "mode": 0o400}, {"key": "b", "path": "dir/b.txt"}]}},
                {"name": "sec", "secret": {"secretName": "sec"}},
                {"name": "down", "downwardAPI": {"items": [
                    {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
                    {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                    {"path": "node", "fieldRef": {"fieldPath": "spec.nodeName"}},
                    {"path": "ip", "fieldRef": {"fieldPath": "status.podIP"}}]}},
                {"name": "proj", "projected": {"sources": [
                    {"configMap": {"name": "cfg", "items": [{"key": "a", "path": "a.txt"}]}},
                    {"secret": {"name": "sec"}},
                    {"downwardAPI": {"items": [{"path": "ns", "fieldRef": {"fieldPath": "metadata.namespace"}}]}}]}},
                {"name": "data", "emptyDir": {"medium": "Memory"}},
                {"name": "host", "hostPath": {"path": "/node-data", "type": "DirectoryOrCreate"}},
                {"name": "shared", "hostPath": {"path": "/shared/x", "type": "DirectoryOrCreate"}},
            ],
        }),
    );

    // subPath escapes: a symlink to / and one with `..`, planted by the
    // init container in the emptyDir.
    let plant = json!({"name": "plant", "image": "busybox", "command": ["sh", "-c",
        format!("ln -s / {0}/data/evil && ln -s ../../../.. {0}/data/up", m.display())],
        "volumeMounts": [mount("data", &p("data"))]});
    c.create_pod(
        "escape",
        0,
        json!({
            "initContainers": [plant],
            "containers": [
                {"name": "abs", "image": "busybox", "command": ["sleep", "3600"],
                    "volumeMounts": [{"name": "data", "mountPath": p("x"), "subPath": "evil"}]},
                {"name": "rel", "image": "busybox", "command": ["sleep", "3600"],
                    "volumeMounts": [{"name": "data", "mountPath": p("y"), "subPath": "up/etc"}]},
            ],
            "volumes": [{"name": "data", "emptyDir": {}}],
        }),
    );
    // `..` in a subPath: rejected.
    let mut dotdot = busybox("sleep 3600");
    dotdot["volumeMounts"] = json!([{"name": "data", "mountPath": p("x"), "subPath": "../x"}]);
    c.create_pod(
        "dotdot",
        0,
        json!({"containers": [dotdot], "volumes": [{"name": "data", "emptyDir": {}}]}),
    );
    // ServiceAccount tokens: one the pod asks for (audience vault, mode
    // 0400) and the one admission mounted at the standard path, with the
    // cluster CA and the namespace.
    let sa = "/var/run/secrets/kubernetes.io/serviceaccount";
    let mut token = busybox(&format!(
        r#"echo "vault=$(cat {x}/vault-token)"
echo "vault-mode=$(stat -L -c %a {x}/vault-token)"
echo "api=$(cat {sa}/token)"
echo "api-mode=$(stat -L -c %a {sa}/token)"
echo "ns=$(cat {sa}/namespace)"
echo "ca=$(tr -d '\n-' < {sa}/ca.crt)"
echo ---
sleep 3600"#,
        x = p("x").display()
    ));
    token["volumeMounts"] = json!([mount("tok", &p("x"))]);
    c.create_pod(
        "token",
        0,
        json!({"containers": [token], "volumes": [{"name": "tok", "projected": {"defaultMode": 0o400, "sources": [
            {"serviceAccountToken": {"path": "vault-token", "audience": "vault", "expirationSeconds": 600}}]}}]}),
    );
    // A mount path under `/` that does not exist: the container gets a
    // new root (a tmpfs with the node's entries bound back), exec probes
    // see it too, and nothing appears on the node.
    let top = PathBuf::from(format!("/{}-vol", c.world.prefix()));
    let mut rooted = busybox(&format!(
        "echo \"top=$(cat {0}/a)\"; echo \"hosts=$(grep -c rooted /etc/hosts)\"; echo ---; sleep 3600",
        top.display()
    ));
    rooted["volumeMounts"] = json!([mount("cfg", &top)]);
    rooted["readinessProbe"] =
        json!({"exec": {"command": ["cat", top.join("a")]}, "periodSeconds": 1});
    c.create_pod(
        "rooted",
        0,
        json!({"containers": [rooted], "volumes": [{"name": "cfg", "configMap": {"name": "cfg"}}]}),
    );
    // A ConfigMap that does not exist yet.
    let mut late = busybox(&format!(
        "echo \"late=$(cat {}/k)\"; sleep 3600",
        p("late").display()
    ));
    late["volumeMounts"] = json!([mount("late", &p("late"))]);
    c.create_pod(
        "late",
        0,
        json!({"containers": [late], "volumes": [{"name": "late", "configMap": {"name": "late"}}]}),
    );

    // Everything the main container saw.
    let vols = c.wait_pod("vols", 40, "Running", |p| p["status"]["phase"] == "Running");
    let vols_uid = uid(&vols);
    let ip = pod_ip(&vols);
    wait_until("the main container's report", 15, || {
        c.nodes[0].log(&vols_uid, "main", 0).contains("---")
    });
    let log = c.nodes[0].log(&vols_uid, "main", 0);
    let v = values(&log);
    let want = [
        ("cfg-a", "one".to_owned()),
        ("cfg-a-mode", "400".into()),
        ("cfg-b", "bee".into()),
        ("cfg-b-mode", "640".into()),
        ("sec", "hunter2".into()),
        ("down-name", "vols".into()),
        ("down-labels", "test=\"vols\"".into()),
        ("down-node", c.world.node(0).name.clone()),
        ("down-ip", ip.to_string()),
        ("proj", "one,hunter2,default".into()),
        ("data", "from-init".into()),
        ("nested", "one".into()),
        ("covered", "one".into()),
        ("host", "on-host".into()),
        ("shared", "mapped".into()),
        ("ro-write", "failed".into()),
        ("cfg-write", "failed".into()),
    ];
    for (k, val) in &want {
        assert_eq!(v.get(*k), Some(val), "{k} in:\n{log}");
    }
    // hostPath volumes are under --host-root and through the map, on the
    // node; the readOnly mount refused the write.
    assert_eq!(
        std::fs::read_to_string(host_root.join("node-data/h"))
            .expect("under --host-root")
            .trim(),
        "on-host"
    );
    assert_eq!(
        std::fs::read_to_string(shared_real.join("x/s"))
            .expect("through --host-path-map")
            .trim(),
        "mapped"
    );
    assert!(!host_root.join("node-data/w").exists());
    // The mount point inside the emptyDir was made there, not on the node.
    assert!(!p("data").join("cfg").exists(), "made on the node");
    let volumes_dir = c.nodes[0]
        .state_dir
        .join(format!("pods/{vols_uid}/_volumes"));
    assert!(volumes_dir.join("data/cfg").is_dir());

    // An update of the ConfigMap reaches the file (the refresh period is
    // 10 s).
    c.kubectl(&[
        "patch",
        "configmap",
        "cfg",
        "--type=merge",
        "-p",
        r#"{"data":{"a":"two"}}"#,
    ]);
    wait_until("the update in the container", 30, || {
        c.nodes[0].log(&vols_uid, "main", 0).contains("now-a=two")
    });

    // subPath escapes: the containers wait, nothing of / is mounted.
    let esc = c.wait_pod("escape", 30, "both containers refused", |p| {
        ["abs", "rel"].iter().all(|n| {
            container_status(p, n)["state"]["waiting"]["reason"] == "CreateContainerConfigError"
        })
    });
    for n in ["abs", "rel"] {
        let msg = container_status(&esc, n)["state"]["waiting"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            msg.contains("failed to prepare subPath") && msg.contains("outside the volume"),
            "{n}: {msg}"
        );
    }
    assert_eq!(esc["status"]["phase"], "Pending");

    let pod = c.wait_pod("dotdot", 20, "rejected", |p| {
        p["status"]["phase"] == "Failed"
    });
    assert_eq!(pod["status"]["reason"], "InvalidVolume", "{pod:#}");

    // The tokens: the apiserver's TokenReview accepts each for its
    // audience, bound to this pod; the CA is the cluster's.
    let token = c.wait_pod("token", 40, "Running", |p| {
        p["status"]["phase"] == "Running"
    });
    let token_uid = uid(&token);
    wait_until("the token pod's report", 15, || {
        c.nodes[0].log(&token_uid, "main", 0).contains("---")
    });
    let log = c.nodes[0].log(&token_uid, "main", 0);
    let v = values(&log);
    assert_eq!(
        v.get("vault-mode").map(String::as_str),
        Some("400"),
        "{log}"
    );
    assert_eq!(v.get("api-mode").map(String::as_str), Some("644"), "{log}");
    assert_eq!(v.get("ns").map(String::as_str), Some("default"), "{log}");
    let ca = c.kubectl(&[
        "get",
        "configmap",
        "kube-root-ca.crt",
        "-o",
        "jsonpath={.data.ca\\.crt}",
    ]);
    assert!(ca.contains("BEGIN CERTIFICATE"), "{ca}");
    assert_eq!(
        v.get("ca").map(String::as_str),
        Some(ca.replace(['\n', '-'], "").as_str()),
        "the CA without newlines and dashes (`---` ends the report)"
    );
    for (key, audience) in [("api", ""), ("vault", "vault")] {
        let t = v.get(key).unwrap_or_else(|| panic!("{key} in {log}"));
        let mut spec = json!({"token": t});
        if !audience.is_empty() {
            spec["audiences"] = json!([audience]);
        }
        let review =
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec});
        let file = c.world.state_dir().join(format!("review-{key}.json"));
        std::fs::write(&file, review.to_string()).expect("write review");
        let answer: Value = serde_json::from_str(&c.kubectl(&[
            "create",
            "-o",
            "json",
            "-f",
            &file.to_string_lossy(),
        ]))
        .expect("json");
        let status = &answer["status"];
        assert_eq!(status["authenticated"], true, "{key}: {answer:#}");
        assert_eq!(
            status["user"]["username"],
            "system:serviceaccount:default:default"
        );
        assert_eq!(
            status["user"]["extra"]["authentication.kubernetes.io/pod-uid"],
            json!([token_uid])
        );
    }

    // The missing ConfigMap holds the pod, with an event naming it, until
    // it exists.
    let held = c.wait_pod("late", 20, "held with an event", |_| {
        c.events_for("late").iter().any(|e| {
            e["reason"] == "FailedMount"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("configmap \"late\" not found"))
        })
    });
    assert_eq!(held["status"]["phase"], "Pending");
    assert_eq!(
        container_status(&held, "main")["state"]["waiting"]["reason"],
        "ContainerCreating"
    );
    c.kubectl(&["create", "configmap", "late", "--from-literal=k=at-last"]);
    let late = c.wait_pod("late", 30, "Running", |p| p["status"]["phase"] == "Running");
    let late_uid = uid(&late);
    wait_until("late's output", 10, || {
        c.nodes[0]
            .log(&late_uid, "main", 0)
            .contains("late=at-last")
    });

    let rooted = c.wait_pod("rooted", 30, "Ready", |p| cond_is(p, "Ready", "True"));
    let rooted_uid = uid(&rooted);
    wait_until("rooted's output", 10, || {
        c.nodes[0].log(&rooted_uid, "main", 0).contains("---")
    });
    let log = c.nodes[0].log(&rooted_uid, "main", 0);
    let v = values(&log);
    assert_eq!(v.get("top").map(String::as_str), Some("one"), "{log}");
    assert!(
        v.get("hosts").is_some_and(|n| n != "0"),
        "the pod's /etc/hosts over the new root: {log}"
    );
    assert!(!top.exists(), "{} made on the node", top.display());
    assert!(!p("missing").exists(), "made on the node");

    // The node's mount table never changed.
    assert_eq!(mounts_under(&sd, &netns), mounts_before);
    let table = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !table.contains(&*top.to_string_lossy()),
        "a container's mount in the node's table"
    );

    // Deleting the pod removes its volumes (the hostPath stays: it is the
    // node's).
    assert!(volumes_dir.join("cfg/..data").exists());
    c.kubectl(&["delete", "pod", "vols", "--wait=false"]);
    wait_until("the pod gone", 30, || c.pod("vols").is_none());
    assert!(!volumes_dir.exists(), "volumes left");
    assert!(host_root.join("node-data/h").exists());
}
