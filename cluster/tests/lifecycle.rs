//! The `ferry` command itself: two clusters up side by side, `ferry status`
//! showing both, `ferry down` leaving nothing behind (namespaces, cgroups,
//! pins, processes), data kept for a resume.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{bin_dir, kubectl, unique_name};
use ferry_testbed::skip_if_not_root;

fn ferry(args: &[&str]) -> (bool, String) {
    let out = Command::new(bin_dir().join("ferry"))
        .args(args)
        .env_remove("FERRY_CLUSTER")
        .output()
        .expect("running ferry");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Runs `ferry down --purge` for the cluster when dropped, also while a
/// failed assertion unwinds.
struct Down {
    name: String,
}

impl Drop for Down {
    fn drop(&mut self) {
        let _ = ferry(&["down", "--purge", "--name", &self.name]);
    }
}

/// Everything on the machine named with `prefix`: namespaces, cgroups,
/// bpffs directories.
fn leftovers(prefix: &str) -> Vec<PathBuf> {
    let cgroup = ferry_testbed::cgroup2_root().expect("cgroup2");
    [
        PathBuf::from(ferry_testbed::NETNS_DIR),
        cgroup,
        PathBuf::from(ferry_testbed::BPFFS),
    ]
    .iter()
    .flat_map(|dir| std::fs::read_dir(dir).into_iter().flatten().flatten())
    .map(|e| e.path())
    .filter(|p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
    })
    .collect()
}

/// Processes whose command line mentions `needle` (a data dir).
fn processes_mentioning(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(needle))
        .collect()
}

fn info(name: &str) -> serde_json::Value {
    let path = Path::new(ferry_cluster::state::RUN_ROOT)
        .join(name)
        .join("cluster.json");
    serde_json::from_slice(&std::fs::read(&path).expect("cluster.json")).expect("json")
}

/// `ferry up` of cluster `name` with its data in `dir`, on any free API
/// port.
fn up(name: &str, dir: &Path) -> (bool, String) {
    ferry(&[
        "up",
        "--name",
        name,
        "--data-dir",
        &dir.to_string_lossy(),
        "--api-port",
        "0",
        "--timeout",
        "90",
    ])
}

#[test]
fn two_clusters_side_by_side_then_down_leaves_nothing() {
    if skip_if_not_root() {
        return;
    }
    let names = [unique_name(), unique_name()];
    let dirs: Vec<PathBuf> = names
        .iter()
        .map(|n| std::env::temp_dir().join(format!("ferry-cluster-test-{n}")))
        .collect();
    let _downs: Vec<Down> = names.iter().map(|n| Down { name: n.clone() }).collect();
    for (name, dir) in names.iter().zip(&dirs) {
        let (ok, out) = up(name, dir);
        assert!(ok, "ferry up --name {name}: {out}");
        assert!(out.contains(&format!("Cluster {name:?} is up")), "{out}");
        assert!(out.contains("Kubeconfig: "), "{out}");
    }
    // A second `up` of a running cluster changes nothing.
    let (ok, out) = ferry(&[
        "up",
        "--name",
        &names[0],
        "--data-dir",
        &dirs[0].to_string_lossy(),
    ]);
    assert!(ok && out.contains("already running"), "{out}");

    let (ok, status) = ferry(&["status"]);
    assert!(ok, "{status}");
    for name in &names {
        assert!(status.contains(&format!("{name}: running")), "{status}");
        assert!(status.contains(&format!("{name}-node1")), "{status}");
        assert!(
            status.contains("observe.sock"),
            "each agent's socket: {status}"
        );
    }
    let infos: Vec<serde_json::Value> = names.iter().map(|n| info(n)).collect();
    for (i, inf) in infos.iter().enumerate() {
        let kc = PathBuf::from(inf["kubeconfig"].as_str().expect("kubeconfig"));
        let nodes = kubectl(&kc, &["get", "nodes", "-o", "name"]).expect("kubectl get nodes");
        // Each kubeconfig reaches its own cluster.
        assert_eq!(nodes.trim(), format!("node/{}-node1", names[i]));
    }

    let prefixes: Vec<String> = infos
        .iter()
        .map(|i| i["prefix"].as_str().expect("prefix").to_owned())
        .collect();
    let (ok, out) = ferry(&["down", "--name", &names[0]]);
    assert!(ok, "{out}");
    assert!(out.contains("its data stays in"), "{out}");
    assert!(
        dirs[0].join("apiserver").join("state.db").exists(),
        "data kept"
    );
    assert_eq!(leftovers(&prefixes[0]), Vec::<PathBuf>::new());
    assert_eq!(
        processes_mentioning(&dirs[0].to_string_lossy()),
        Vec::<String>::new()
    );
    // The other cluster is untouched.
    let kc = PathBuf::from(infos[1]["kubeconfig"].as_str().expect("kubeconfig"));
    kubectl(&kc, &["get", "nodes"]).expect("the second cluster still answers");
    assert!(!leftovers(&prefixes[1]).is_empty());

    // `ferry up` again resumes the first from its data: what it stored is
    // there, and Ferry's own pods (bound to its nodes, from deploy/) run
    // again, the DaemonSet rolled to the new world's pins.
    let kc0 = PathBuf::from(infos[0]["kubeconfig"].as_str().expect("kubeconfig"));
    let before = kubectl(
        &kc0,
        &[
            "-n",
            "kube-system",
            "get",
            "ds",
            "ferry-agent",
            "-o",
            "jsonpath={.metadata.uid}",
        ],
    );
    assert!(
        before.is_err(),
        "the stopped cluster still answers: {before:?}"
    );
    let (ok, out) = up(&names[0], &dirs[0]);
    assert!(ok, "ferry up again: {out}");
    let kc0 = PathBuf::from(info(&names[0])["kubeconfig"].as_str().expect("kubeconfig"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let ds = kubectl(
            &kc0,
            &[
                "-n",
                "kube-system",
                "get",
                "ds/ferry-agent",
                "deploy/ferry-dns",
                "-o",
                "jsonpath={.items[0].status.numberReady}/{.items[0].status.updatedNumberScheduled} {.items[1].status.readyReplicas}",
            ],
        );
        if ds.as_deref() == Ok("1/1 2") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Ferry's pods not back within 60 s: {ds:?}\n{:?}",
            kubectl(&kc0, &["get", "pods", "-A", "-o", "wide"])
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let (ok, out) = ferry(&["down", "--name", &names[0]]);
    assert!(ok, "{out}");

    let (ok, out) = ferry(&["down", "--purge", "--name", &names[1]]);
    assert!(ok, "{out}");
    assert!(!dirs[1].exists(), "--purge removes the data");
    assert_eq!(leftovers(&prefixes[1]), Vec::<PathBuf>::new());
    assert_eq!(
        processes_mentioning(&dirs[1].to_string_lossy()),
        Vec::<String>::new()
    );
    let (_, status) = ferry(&["status", "--name", &names[1]]);
    assert!(!status.contains("running"), "{status}");
}
