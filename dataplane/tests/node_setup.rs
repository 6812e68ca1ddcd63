//! `ferry-agent install-cni`, `check` and `init`: what a node needs before
//! the agent runs. Everything happens in temporary directories, the test's
//! own network namespaces and private mount namespaces (`unshare --mount
//! --propagation private`): the host's /opt/cni, /etc/cni, /sys/fs/bpf and
//! mount table are only read.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{ControlPlane, binary, node_object};
use ferry_dataplane::node_setup;
use ferry_testbed::{
    AgentHooks, Cni, World, command_output, output_text as text, skip_if_not_root,
};
use serde_json::{Value, json};

fn agent_bin() -> PathBuf {
    binary("ferry-dataplane", "ferry-agent")
}

/// Runs `cmd`, bounded in time, without a backtrace in its errors.
fn run(cmd: &mut Command) -> Output {
    command_output(
        cmd.env_remove("RUST_BACKTRACE"),
        None,
        Duration::from_secs(60),
    )
    .expect("run a command")
}

/// Runs the shell `script` in a private mount namespace: its mounts never
/// reach the host.
fn in_private_mounts(script: &str) -> Output {
    run(Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(script))
}

/// `ferry-agent install-cni` into `bin`/`conf` with the given pod CIDRs.
fn install(source: &Path, bin: &Path, conf: &Path, extra: &[&str]) -> Output {
    run(Command::new(agent_bin())
        .arg("install-cni")
        .arg("--source")
        .arg(source)
        .arg("--cni-bin-dir")
        .arg(bin)
        .arg("--cni-conf-dir")
        .arg(conf)
        .args(extra))
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o7777
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn install_cni_writes_the_plugin_and_conflist_once() {
    let tmp = tempfile::tempdir().expect("tmp");
    let source = binary("ferry-cni", "ferry-cni");
    // Directories that do not exist yet are created, as on a fresh node.
    let (bin, conf) = (
        tmp.path().join("opt/cni/bin"),
        tmp.path().join("etc/cni/net.d"),
    );
    let cidrs = ["--pod-cidrs", "10.244.1.0/24,fd00:10:244:1::/64"];
    let out = install(&source, &bin, &conf, &cidrs);
    assert!(out.status.success(), "{}", text(&out));
    let plugin = bin.join("ferry-cni");
    let conflist = conf.join("05-ferry.conflist");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("installed {}", plugin.display())),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("installed {}", conflist.display())),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read(&plugin).expect("plugin"),
        std::fs::read(&source).expect("source")
    );
    assert_eq!(mode(&plugin), 0o755);
    assert_eq!(mode(&conflist), 0o644);
    let list: Value =
        serde_json::from_slice(&std::fs::read(&conflist).expect("conflist")).expect("json");
    assert_eq!(list["cniVersion"], "1.1.0");
    assert_eq!(list["plugins"][0]["type"], "ferry-cni");
    assert_eq!(
        list["plugins"][0]["ipam"]["ranges"],
        json!([[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:10:244:1::/64"}]])
    );
    // Without --pod-devices the plugin does not wait for the agent.
    assert!(list["plugins"][0].get("dataplane").is_none(), "{list}");
    // Nothing else is left in the directories (no temporary files).
    assert_eq!(names(&bin), ["ferry-cni"]);
    assert_eq!(names(&conf), ["05-ferry.conflist"]);

    // Again: nothing rewritten (same inodes), said so.
    let inodes = (
        std::fs::metadata(&plugin).expect("m").ino(),
        std::fs::metadata(&conflist).expect("m").ino(),
    );
    let out = install(&source, &bin, &conf, &cidrs);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("unchanged ").count(), 2, "{stdout}");
    assert_eq!(
        inodes,
        (
            std::fs::metadata(&plugin).expect("m").ino(),
            std::fs::metadata(&conflist).expect("m").ino(),
        )
    );

    // With --pod-devices the plugin waits for the agent's pins under its
    // --bpffs-root (the same flags the agent itself takes).
    let out = install(
        &source,
        &bin,
        &conf,
        &[
            &cidrs[..],
            &["--pod-devices", "fer", "--bpffs-root", "/sys/fs/bpf/ferry"],
        ]
        .concat(),
    );
    assert!(out.status.success(), "{}", text(&out));
    let list: Value =
        serde_json::from_slice(&std::fs::read(&conflist).expect("conflist")).expect("json");
    let wait = list["plugins"][0]["dataplane"]["waitFor"]
        .as_array()
        .expect("waitFor");
    assert!(
        wait.iter().all(|p| p
            .as_str()
            .is_some_and(|p| p.starts_with("/sys/fs/bpf/ferry/links/"))),
        "{list}"
    );

    // A missing source: the error names it and the flag.
    let out = install(&tmp.path().join("none"), &bin, &conf, &cidrs);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&*tmp.path().join("none").to_string_lossy()),
        "{err}"
    );
}

/// A reader that opens the target over and over while installs replace it
/// never sees anything but one whole version or the other.
#[test]
fn install_cni_never_shows_a_partial_plugin() {
    let tmp = tempfile::tempdir().expect("tmp");
    let real = binary("ferry-cni", "ferry-cni");
    let a = std::fs::read(&real).expect("plugin");
    let mut b = a.clone();
    b.extend_from_slice(&[0x5a; 4096]);
    let (src_a, src_b) = (tmp.path().join("a"), tmp.path().join("b"));
    std::fs::write(&src_a, &a).expect("a");
    std::fs::write(&src_b, &b).expect("b");
    let (bin, conf) = (tmp.path().join("bin"), tmp.path().join("conf"));
    let cidrs = ["--pod-cidrs", "10.244.1.0/24"];
    let out = install(&src_a, &bin, &conf, &cidrs);
    assert!(out.status.success(), "{}", text(&out));
    let target = bin.join("ferry-cni");
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, target, a, b) = (stop.clone(), target.clone(), a.clone(), b.clone());
        std::thread::spawn(move || {
            let mut reads = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let got = std::fs::read(&target).expect("the plugin is always there");
                assert!(
                    got == a || got == b,
                    "a partial plugin: {} bytes (versions have {} and {})",
                    got.len(),
                    a.len(),
                    b.len()
                );
                reads += 1;
            }
            reads
        })
    };
    for i in 0..8 {
        let src = if i % 2 == 0 { &src_b } else { &src_a };
        let out = install(src, &bin, &conf, &cidrs);
        assert!(out.status.success(), "{}", text(&out));
    }
    stop.store(true, Ordering::Relaxed);
    let reads = reader.join().expect("reader");
    assert!(reads > 0);
    assert_eq!(std::fs::read(&target).expect("plugin"), a);
    assert_eq!(names(&bin), ["ferry-cni"]);
}

/// A read-only target directory (mounted read-only in a private mount
/// namespace): the error names the path and says what to change.
#[test]
fn install_cni_into_a_read_only_dir_says_so() {
    if skip_if_not_root() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let source = binary("ferry-cni", "ferry-cni");
    let (bin, conf) = (tmp.path().join("bin"), tmp.path().join("conf"));
    std::fs::create_dir_all(&bin).expect("bin");
    std::fs::create_dir_all(&conf).expect("conf");
    let script = format!(
        "mount --bind -o ro {conf} {conf} && exec {agent} install-cni --source {src} --cni-bin-dir {bin} --cni-conf-dir {conf} --pod-cidrs 10.244.1.0/24",
        conf = conf.display(),
        bin = bin.display(),
        src = source.display(),
        agent = agent_bin().display(),
    );
    let out = in_private_mounts(&script);
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&*conf.to_string_lossy()), "{err}");
    assert!(
        err.contains("read-only") && err.contains("writable hostPath"),
        "{err}"
    );
    // The host's view of the directory was never read-only, and nothing
    // was left in it.
    assert!(names(&conf).is_empty(), "{:?}", names(&conf));
}

/// The conflist install-cni writes is one ferry-cni takes: a runtime's ADD
/// through the installed plugin wires a pod from the node's pod CIDRs.
#[test]
fn installed_conflist_wires_a_pod() {
    if skip_if_not_root() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let source = binary("ferry-cni", "ferry-cni");
    let (bin, conf) = (tmp.path().join("bin"), tmp.path().join("conf"));
    let (b, c) = (bin.clone(), conf.clone());
    let cni = Cni::new([bin.clone()], move |node: &ferry_testbed::Node| {
        let cidrs: Vec<String> = node.pod_cidrs.iter().map(ToString::to_string).collect();
        let state = node.state_dir.join("cni");
        let out = install(
            &source,
            &b,
            &c,
            &[
                "--pod-cidrs",
                &cidrs.join(","),
                "--cni-state-dir",
                &state.to_string_lossy(),
            ],
        );
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&std::fs::read(c.join("05-ferry.conflist")).expect("conflist"))
            .expect("json")
    });
    let world = World::builder()
        .nodes(1)
        .pods_per_node(1)
        .cni(cni)
        .build()
        .expect("a pod wired with the installed conflist");
    let node = world.node(0);
    let pod = world.pod(0, 0);
    assert_eq!(pod.ips.len(), node.pod_cidrs.len(), "{:?}", pod.ips);
    for ip in &pod.ips {
        assert!(
            node.pod_cidrs.iter().any(|c| c.contains(&ip.addr())),
            "{ip} outside {:?}",
            node.pod_cidrs
        );
    }
    // Its state is where --cni-state-dir put it.
    assert!(node.state_dir.join("cni/cni-networks/ferry").is_dir());
}

/// Without --pod-cidrs the ranges are the Node's spec.podCIDRs, read
/// through the API; a Node without them is waited for, then named in the
/// error with the fix.
#[test]
fn install_cni_reads_the_nodes_pod_cidrs() {
    if skip_if_not_root() {
        return;
    }
    let world = World::builder()
        .nodes(1)
        .pods_per_node(0)
        .build()
        .expect("world");
    let cp = ControlPlane::start(&world);
    let node = world.node(0);
    cp.apply(&node_object(node));
    cp.apply(&json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "no-cidrs"}}));
    let tmp = tempfile::tempdir().expect("tmp");
    let (bin, conf) = (tmp.path().join("bin"), tmp.path().join("conf"));
    let source = binary("ferry-cni", "ferry-cni");
    let args = |name: &str| -> Vec<String> {
        [
            agent_bin().to_string_lossy().into_owned(),
            "install-cni".into(),
            "--kubeconfig".into(),
            cp.kubeconfig.to_string_lossy().into_owned(),
            "--node-name".into(),
            name.into(),
            "--pod-cidrs-wait".into(),
            "2s".into(),
            "--source".into(),
            source.to_string_lossy().into_owned(),
            "--cni-bin-dir".into(),
            bin.to_string_lossy().into_owned(),
            "--cni-conf-dir".into(),
            conf.to_string_lossy().into_owned(),
        ]
        .into()
    };
    node.netns.exec(args(&node.name)).expect("install-cni");
    let list: Value =
        serde_json::from_slice(&std::fs::read(conf.join("05-ferry.conflist")).expect("conflist"))
            .expect("json");
    let want: Vec<Value> = node
        .pod_cidrs
        .iter()
        .map(|c| json!([{"subnet": c.to_string()}]))
        .collect();
    assert_eq!(list["plugins"][0]["ipam"]["ranges"], Value::Array(want));

    let out = node
        .netns
        .exec_output(args("no-cidrs"), Duration::from_secs(30))
        .expect("run");
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no-cidrs") && err.contains("--allocate-node-cidrs"),
        "{err}"
    );
}

fn check_line<'a>(stdout: &'a str, check: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| {
            l.split_once(": ")
                .is_some_and(|(head, _)| head.ends_with(check))
        })
        .unwrap_or_else(|| panic!("no {check} line in\n{stdout}"))
}

/// This machine has BTF, cgroup v2 and bpffs: every check passes.
#[test]
fn check_passes_on_this_machine() {
    if skip_if_not_root() {
        return;
    }
    let out = run(Command::new(agent_bin()).arg("check"));
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for check in ["kernel BTF", "cgroup v2", "bpffs"] {
        assert!(check_line(&stdout, check).starts_with("ok "), "{stdout}");
    }
}

/// A fake root where BTF, cgroup2 and bpffs are missing: a warning and two
/// errors, each naming the fix, and a non-zero exit.
#[test]
fn check_names_the_fix_for_what_is_missing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = run(Command::new(agent_bin())
        .arg("check")
        .arg("--kernel-btf")
        .arg(tmp.path().join("sys/kernel/btf/vmlinux"))
        .arg("--cgroup-root")
        .arg(tmp.path())
        .arg("--bpffs-root")
        .arg(tmp.path().join("sys/fs/bpf/ferry")));
    assert!(!out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let btf = check_line(&stdout, "kernel BTF");
    assert!(
        btf.starts_with("warning ") && btf.contains("CONFIG_DEBUG_INFO_BTF"),
        "{btf}"
    );
    let cg = check_line(&stdout, "cgroup v2");
    assert!(
        cg.starts_with("error ") && cg.contains("--cgroup-root"),
        "{cg}"
    );
    let bpf = check_line(&stdout, "bpffs");
    assert!(
        bpf.starts_with("error ") && bpf.contains("ferry-agent init"),
        "{bpf}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 check(s) failed"));
    // The agent itself refuses to start on the same node, with the same
    // message (before it reaches the API).
    let out = run(Command::new(agent_bin())
        .args(["--node-name", "n", "--kubeconfig", "/nonexistent"])
        .arg("--cgroup-root")
        .arg(tmp.path())
        .arg("--bpffs-root")
        .arg(tmp.path().join("sys/fs/bpf/ferry")));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is not a cgroup2 file system") && err.contains("ferry-agent init"),
        "{err}"
    );
}

/// The container case (the bug: the first cgroup2 mount was taken, which
/// inside a pod is the pod's own cgroup): a child cgroup mounted first and
/// the hierarchy's root after it, in a private mount namespace where the
/// host's own mount is gone. The root is chosen; `--cgroup-root` is
/// honoured as given; with the child alone the error says what to mount.
#[test]
fn cgroup_auto_detection_takes_the_hierarchy_root() {
    if skip_if_not_root() {
        return;
    }
    let root = node_setup::cgroup_root_here(None).expect("this machine's cgroup2 root");
    // A claimed prefix: other tests' sweeps take an unclaimed one for a
    // crashed run's leftovers and remove the cgroup under our feet.
    let claimed = ferry_testbed::Claimed::new().expect("a prefix");
    let hooks = AgentHooks::create(&claimed.prefix).expect("a child cgroup");
    let tmp = tempfile::tempdir().expect("tmp");
    let (own, host) = (tmp.path().join("own"), tmp.path().join("host"));
    std::fs::create_dir_all(&own).expect("own");
    std::fs::create_dir_all(&host).expect("host");
    let agent = agent_bin();
    let in_container = |host_mount: bool, extra: &str| -> Output {
        let script = format!(
            "mount --bind {child} {own} && {host_bind} umount -l {root} && exec {agent} check {extra}",
            child = hooks.cgroup.display(),
            own = own.display(),
            host_bind = if host_mount {
                format!("mount --bind {} {} &&", root.display(), host.display())
            } else {
                String::new()
            },
            root = root.display(),
            agent = agent.display(),
        );
        in_private_mounts(&script)
    };
    let out = in_container(true, "");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = check_line(&stdout, "cgroup v2");
    assert!(
        line.starts_with("ok ") && line.contains(&format!("{} is the root", host.display())),
        "{}",
        text(&out)
    );
    let out = in_container(true, &format!("--cgroup-root {}", own.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = check_line(&stdout, "cgroup v2");
    assert!(
        line.starts_with("warning ")
            && line.contains(&format!("{} is a child cgroup", own.display())),
        "{}",
        text(&out)
    );
    let out = in_container(false, "");
    assert!(!out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = check_line(&stdout, "cgroup v2");
    assert!(
        line.starts_with("error ")
            && line.contains(&own.display().to_string())
            && line.contains("--cgroup-root"),
        "{}",
        text(&out)
    );
    // The host's mount table is as it was.
    assert!(node_setup::cgroup_root_here(None).expect("root") == root);
}

/// kube-proxy's rules in the node's network namespace (the test's own):
/// its nftables table, then its iptables chain, each reported with the fix.
#[test]
fn check_reports_kube_proxy_rules() {
    if skip_if_not_root() {
        return;
    }
    let world = World::builder()
        .nodes(1)
        .pods_per_node(0)
        .build()
        .expect("world");
    let netns = &world.node(0).netns;
    let check = || -> String {
        let out = netns
            .exec_output(
                [agent_bin().to_string_lossy().as_ref(), "check"],
                Duration::from_secs(30),
            )
            .expect("check");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        check_line(&stdout, "kube-proxy").to_owned()
    };
    let line = check();
    assert!(line.starts_with("ok "), "{line}");
    netns
        .exec(["nft", "add", "table", "ip", "kube-proxy"])
        .expect("nft");
    let line = check();
    assert!(
        line.starts_with("warning ")
            && line.contains("nftables ip kube-proxy")
            && line.contains("kube-proxy --cleanup"),
        "{line}"
    );
    netns
        .exec(["nft", "delete", "table", "ip", "kube-proxy"])
        .expect("nft");
    netns
        .exec(["iptables", "-t", "nat", "-N", "KUBE-SERVICES"])
        .expect("iptables");
    let line = check();
    assert!(
        line.starts_with("warning ") && line.contains("KUBE-SERVICES"),
        "{line}"
    );
}

/// `init` mounts bpffs where there is none, in a private mount namespace:
/// the mount is there (and a second `init` leaves it), the checks then
/// pass, and the host never sees it.
#[test]
fn init_mounts_bpffs_in_its_own_mount_namespace_only() {
    if skip_if_not_root() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let target = tmp.path().join("bpf");
    let agent = agent_bin();
    let init = format!(
        "{agent} init --bpffs-mount {t} --bpffs-root {t}/ferry",
        agent = agent.display(),
        t = target.display()
    );
    let script = format!(
        "{init} && stat -f -c %T {t} && {init}",
        t = target.display()
    );
    let out = in_private_mounts(&script);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines();
    assert_eq!(
        lines.next(),
        Some(&*format!("bpffs mounted at {}", target.display()))
    );
    assert!(stdout.contains("\nbpf_fs\n"), "{stdout}");
    assert!(
        stdout.contains(&format!("bpffs already mounted at {}", target.display())),
        "{stdout}"
    );
    assert!(check_line(&stdout, "bpffs").starts_with("ok "), "{stdout}");
    // Not on the host: the directory is plain, and the mount table does
    // not name it.
    let fs_type = run(Command::new("stat").args(["-f", "-c", "%T"]).arg(&target));
    assert_ne!(String::from_utf8_lossy(&fs_type.stdout).trim(), "bpf_fs");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mountinfo.contains(&*target.to_string_lossy()),
        "{mountinfo}"
    );
}
