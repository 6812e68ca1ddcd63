//! The pods' cgroups (v2): `<cgroup-root>/pod<uid>/<container>`, made,
//! killed (`cgroup.kill`) and removed here. Only directories under
//! `--cgroup-root` are ever touched.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Prefix of a pod's cgroup under the root.
pub const POD_PREFIX: &str = "pod";

/// The pod's cgroup.
pub fn pod_dir(root: &Path, uid: &str) -> PathBuf {
    root.join(format!("{POD_PREFIX}{}", safe(uid)))
}

/// A container's cgroup.
pub fn container_dir(root: &Path, uid: &str, container: &str) -> PathBuf {
    pod_dir(root, uid).join(safe(container))
}

/// A name fit for a path component (uids and container names already are;
/// this keeps a bad one from escaping the root).
pub fn safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect::<String>()
        .trim_start_matches('.')
        .to_owned()
}

/// Makes `dir` and its parents up to (not including) the root.
pub fn create(dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dir)
}

/// Whether any process is in `dir` or below.
pub fn populated(dir: &Path) -> bool {
    match fs::read_to_string(dir.join("cgroup.events")) {
        Ok(events) => events.lines().any(|l| l.trim() == "populated 1"),
        Err(_) => false,
    }
}

/// SIGKILLs every process in `dir` and below (`cgroup.kill`).
pub fn kill(dir: &Path) {
    if dir.exists() {
        let _ = fs::write(dir.join("cgroup.kill"), "1");
    }
}

/// Kills what runs in `dir`, waits (bounded) for it to go, and removes
/// `dir` and its child cgroups, deepest first.
pub async fn remove(dir: &Path) -> std::io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    kill(dir);
    for _ in 0..100 {
        if !populated(dir) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    remove_tree(dir)
}

fn remove_tree(dir: &Path) -> std::io::Result<()> {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path())?;
            }
        }
    }
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The uids of the pod cgroups under `root`.
pub fn pod_uids(root: &Path) -> Vec<(String, PathBuf)> {
    fs::read_dir(root)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.strip_prefix(POD_PREFIX)
                        .map(|uid| (uid.to_owned(), e.path()))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_under_the_root() {
        let root = Path::new("/sys/fs/cgroup/x");
        assert_eq!(
            container_dir(root, "1234-ab", "web"),
            Path::new("/sys/fs/cgroup/x/pod1234-ab/web")
        );
        assert_eq!(
            pod_dir(root, "../../etc"),
            Path::new("/sys/fs/cgroup/x/pod_.._etc")
        );
        assert_eq!(safe("../x"), "_x");
    }
}
