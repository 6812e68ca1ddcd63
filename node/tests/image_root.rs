//! A container of an image root (an `--images` entry with `root`) through
//! a real ferry-node and ferry-apiserver: the image's files at their paths
//! over the node's, the node's own files still there, the command resolved
//! inside the container (the container's, or the entry's), volumes (a
//! subPath too) and the pod's `/etc` files bound from the node, writable,
//! even under an overlaid directory, with mount points that cover `/`
//! (a staged root); a broken image root as a waiting reason; the node's
//! `/usr/bin` and mount table untouched. Root only.

mod world;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use ferry_testbed::skip_if_not_root;
use serde_json::json;
use world::*;

/// The test process's mount table, without the pods' network namespace
/// files (ferry-node mounts those in the node's namespace by design).
fn mount_table(netns: &Path) -> BTreeSet<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter(|l| {
            l.split(' ')
                .nth(4)
                .is_none_or(|p| !Path::new(p).starts_with(netns))
        })
        .map(str::to_owned)
        .collect()
}

fn names_in(dir: &str) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .expect("read_dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

fn write(path: &Path, text: &str, mode: u32) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("dirs");
    std::fs::write(path, text).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// `key=value` lines of a log.
fn values(log: &str) -> std::collections::BTreeMap<String, String> {
    log.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn containers_of_an_image_root() {
    if skip_if_not_root() {
        return;
    }
    // Where the image's data file goes: a directory every node has.
    let top = if Path::new("/opt").is_dir() {
        "opt"
    } else {
        "var"
    };
    let c = Cluster::with_flags(1, |world, i| {
        let u = world.prefix();
        let sd = world.state_dir();
        let root = sd.join("image-root");
        let program = format!("ferry-image-{u}");
        // Into the node's state directory (pods' `/etc` files, volumes):
        // overlaid too, so those must come from the node.
        let node_state = world.node(i).state_dir.join("ferry-node");
        let extra = node_state.join(format!("{u}-extra/note.txt"));
        let rel = |p: &Path| -> PathBuf { p.strip_prefix("/").expect("absolute").to_path_buf() };
        let script = format!(
            r#"#!/bin/sh
echo "args=$*"
echo "data=$(cat /{top}/{u}/data.txt)"
echo "extra=$(cat {extra})"
if [ -x /usr/bin/env ] && /usr/bin/env true; then echo env=ok; else echo env=missing; fi
echo "resolv=$(grep -c 10.96.0.10 /etc/resolv.conf)"
if [ -d /{u}-top/scratch ]; then
  if echo w > /{u}-top/scratch/w; then echo scratch=ok; else echo scratch=failed; fi
  echo s > /{u}-top/sub/f && echo "subpath=$(cat /{u}-top/scratch/sub/f)"
fi
if {{ echo x > /usr/bin/{program}-w; }} 2>/dev/null; then echo usr-write=ok; else echo usr-write=refused; fi
echo end=1
"#,
            extra = extra.display()
        );
        write(&root.join("usr/bin").join(&program), &script, 0o755);
        write(
            &root.join(format!("{top}/{u}/data.txt")),
            "from-the-image\n",
            0o644,
        );
        write(&root.join(rel(&extra)), "image-note\n", 0o644);
        // Broken: a top-level directory no node has.
        let broken = sd.join("broken-root");
        write(&broken.join(format!("nowhere-{u}/x")), "x", 0o644);
        let images = sd.join("images.yaml");
        write(
            &images,
            &format!(
                "localhost/imgtest-{u}:0.1.0:\n  root: {root}\n  command: [/usr/bin/{program}, from-entry]\n\
                 localhost/broken-{u}: {{root: {broken}}}\n",
                root = root.display(),
                broken = broken.display()
            ),
            0o644,
        );
        vec!["--images".into(), images.to_string_lossy().into_owned()]
    });
    let u = c.world.prefix().to_owned();
    let program = format!("ferry-image-{u}");
    let netns = c.nodes[0].netns_dir();
    let usr_bin_before = names_in("/usr/bin");
    let mounts_before = mount_table(&netns);

    let image = format!("localhost/imgtest-{u}:0.1.0");
    c.create_pod(
        "img",
        0,
        json!({
            "restartPolicy": "Never",
            "containers": [
                // Its own command, found among the image's files; an
                // emptyDir whose mount point is missing under `/` (a new
                // root is staged).
                {"name": "main", "image": image, "command": [format!("/usr/bin/{program}")],
                    "args": ["own"],
                    "volumeMounts": [
                        {"name": "scratch", "mountPath": format!("/{u}-top/scratch")},
                        {"name": "scratch", "mountPath": format!("/{u}-top/sub"), "subPath": "sub"},
                    ]},
                // The entry's command.
                {"name": "entry", "image": image},
            ],
            "volumes": [{"name": "scratch", "emptyDir": {}}],
        }),
    );
    c.create_pod(
        "broken",
        0,
        json!({"containers": [{"name": "app", "image": format!("localhost/broken-{u}"),
            "command": ["/bin/true"]}]}),
    );

    let pod = c.wait_pod("img", 30, "Succeeded", |p| {
        p["status"]["phase"] == "Succeeded" || p["status"]["phase"] == "Failed"
    });
    let pod_uid = uid(&pod);
    let main = c.nodes[0].log(&pod_uid, "main", 0);
    let entry = c.nodes[0].log(&pod_uid, "entry", 0);
    assert_eq!(
        pod["status"]["phase"], "Succeeded",
        "{pod:#}\n{main}\n{entry}"
    );
    for (log, args) in [(&main, "own"), (&entry, "from-entry")] {
        let v = values(log);
        let get = |k: &str| v.get(k).map(String::as_str).unwrap_or_default();
        assert_eq!(get("args"), args, "{log}");
        assert_eq!(get("data"), "from-the-image", "{log}");
        assert_eq!(get("extra"), "image-note", "{log}");
        assert_eq!(get("env"), "ok", "the node's /usr/bin/env: {log}");
        assert_eq!(get("resolv"), "1", "the pod's resolv.conf: {log}");
        assert_eq!(get("usr-write"), "refused", "overlays are read-only: {log}");
        assert_eq!(get("end"), "1", "{log}");
    }
    assert_eq!(
        values(&main).get("scratch").map(String::as_str),
        Some("ok"),
        "the emptyDir is the node's, writable: {main}"
    );
    assert_eq!(
        values(&main).get("subpath").map(String::as_str),
        Some("s"),
        "a subPath of it: {main}"
    );
    assert_eq!(
        container_status(&pod, "main")["imageID"],
        format!("ferry://root/localhost/imgtest-{u}"),
        "{pod:#}"
    );

    // A broken image root: the container waits, saying why.
    let broken = c.wait_pod("broken", 20, "waiting with a reason", |p| {
        container_status(p, "app")["state"]["waiting"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("does not exist on the node"))
    });
    let waiting = &container_status(&broken, "app")["state"]["waiting"];
    assert_eq!(waiting["reason"], "RunContainerError", "{waiting:#}");
    let msg = waiting["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains(&format!("top-level directory /nowhere-{u}")),
        "{msg}"
    );

    // The node: no image file, no overlay, the same mount table.
    assert!(!Path::new("/usr/bin").join(&program).exists());
    assert!(!Path::new("/").join(top).join(&u).exists());
    assert_eq!(names_in("/usr/bin"), usr_bin_before);
    assert_eq!(mount_table(&netns), mounts_before);
}
