//! The network namespaces the CNI benchmark runs in, and nothing else.
//!
//! Every namespace is named `fcb-<pid>-…` (`fcb-<pid>-n-<lane>` for a node,
//! `fcb-<pid>-p<i>` for a pod) and every file lives under
//! `<tmp>/ferry-cni-bench/<pid>/`. The [`Lab`] deletes all of them on drop,
//! also while a panic unwinds; [`sweep`] removes what runs that died left
//! (their pid is gone, or now belongs to something other than `cni-bench`).
//! The host's root namespace is never changed: namespaces are made and
//! deleted with `ip netns`, and every link, address and route is made by a
//! plugin or by `ip -n <ns>` inside a namespace of the lab.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use ferry_testbed::{NETNS_DIR, Netns};

use super::exec::{display, run_timed};
use crate::{BenchError, Result};

/// First characters of every name the benchmark makes.
pub const PREFIX: &str = "fcb-";

/// The process name a live owner of a prefix has.
const OWNER_COMM: &str = "cni-bench";

/// Time limit of one `ip` command.
const IP_TIMEOUT: Duration = Duration::from_secs(30);

/// Root of the benchmark's state directories.
pub fn state_root() -> PathBuf {
    std::env::temp_dir().join("ferry-cni-bench")
}

/// Runs `ip <args>` (bounded in time) and returns its stdout; a non-zero
/// exit is an error carrying stderr.
pub fn ip(args: &[&str]) -> Result<String> {
    let never = AtomicBool::new(false);
    let mut cmd = Command::new("ip");
    cmd.args(args);
    let t = run_timed(&mut cmd, b"", IP_TIMEOUT, &never)?;
    if !t.status.success() {
        return Err(BenchError::Check(format!(
            "`{}` failed ({}): {}",
            display(&cmd),
            t.status,
            t.stderr_text()
        )));
    }
    Ok(String::from_utf8_lossy(&t.stdout).into_owned())
}

/// Whether the `cni-bench` that owns names with `pid` is still running (and
/// is not this process).
fn owner_alive(pid: u32) -> bool {
    pid != std::process::id()
        && fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == OWNER_COMM)
}

/// The pid in `fcb-<pid>-…`.
fn pid_of(name: &str) -> Option<u32> {
    name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

/// The namespaces whose names start with `prefix`.
fn namespaces_with(prefix: &str) -> Vec<String> {
    ferry_testbed::list_netns()
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// Deletes `names` (pods before nodes: longest first), best effort; returns
/// those that could not be deleted, with why.
fn delete_namespaces(mut names: Vec<String>) -> Vec<String> {
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    let mut failures = Vec::new();
    for name in names {
        if let Err(e) = ip(&["netns", "delete", &name])
            && Path::new(NETNS_DIR).join(&name).exists()
        {
            failures.push(format!("{name}: {e}"));
        }
    }
    failures
}

/// Namespaces of this process's runs that still exist (none, after a run).
pub fn leftovers() -> Vec<String> {
    namespaces_with(&format!("{PREFIX}{}-", std::process::id()))
}

/// Removes the namespaces and state directories of benchmark runs that are
/// no longer running; returns what it removed.
pub fn sweep() -> Vec<String> {
    let dead: Vec<String> = namespaces_with(PREFIX)
        .into_iter()
        .filter(|n| pid_of(n).is_some_and(|pid| !owner_alive(pid)))
        .collect();
    let mut removed = dead.clone();
    let failed = delete_namespaces(dead);
    removed.retain(|n| !failed.iter().any(|f| f.starts_with(n.as_str())));
    if let Ok(entries) = fs::read_dir(state_root()) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(pid) = name.parse::<u32>() else {
                continue;
            };
            if !owner_alive(pid) && fs::remove_dir_all(entry.path()).is_ok() {
                removed.push(entry.path().display().to_string());
            }
        }
    }
    removed
}

/// The namespaces and files of one run; all deleted on drop.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    state: PathBuf,
    nodes: Vec<Netns>,
    pods: Vec<Netns>,
}

impl Lab {
    /// Sweeps leftovers of dead runs, then claims this process's prefix and
    /// state directory.
    pub fn new() -> Result<Self> {
        for gone in sweep() {
            eprintln!("cni-bench: swept leftover {gone}");
        }
        let pid = std::process::id();
        let state = state_root().join(pid.to_string());
        // Anything under this pid is a leftover of a dead run that had it.
        match fs::remove_dir_all(&state) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(BenchError::io(format!("removing {}", state.display()), e)),
        }
        fs::create_dir_all(&state)
            .map_err(|e| BenchError::io(format!("creating {}", state.display()), e))?;
        let lab = Self {
            prefix: format!("{PREFIX}{pid}-"),
            state,
            nodes: Vec::new(),
            pods: Vec::new(),
        };
        let stale = namespaces_with(&lab.prefix);
        if let Some(failure) = delete_namespaces(stale).into_iter().next() {
            return Err(BenchError::Check(format!(
                "cannot delete a leftover namespace: {failure}"
            )));
        }
        Ok(lab)
    }

    /// This run's directory for plugin state (IPAM, result caches).
    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    /// Creates the node namespace `fcb-<pid>-n-<name>` with `lo` up.
    pub fn add_node(&mut self, name: &str) -> Result<Netns> {
        let ns = self.create(&format!("{}n-{name}", self.prefix))?;
        self.nodes.push(ns.clone());
        ip(&["-n", ns.name(), "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Makes sure pod namespaces `fcb-<pid>-p0` .. `p<n-1>` exist.
    pub fn ensure_pods(&mut self, n: usize) -> Result<()> {
        while self.pods.len() < n {
            let ns = self.create(&format!("{}p{}", self.prefix, self.pods.len()))?;
            self.pods.push(ns);
        }
        Ok(())
    }

    /// Pod namespace `i` (made by [`ensure_pods`](Self::ensure_pods)).
    pub fn pod(&self, i: usize) -> Result<&Netns> {
        self.pods
            .get(i)
            .ok_or_else(|| BenchError::Check(format!("no pod namespace {i}")))
    }

    fn create(&self, name: &str) -> Result<Netns> {
        ip(&["netns", "add", name])?;
        Ok(Netns::named(name))
    }

    /// Deletes everything; what could not be deleted is returned.
    fn teardown(&mut self) -> Vec<String> {
        self.pods.clear();
        self.nodes.clear();
        // Everything with the prefix, tracked or not (an `ip netns add` that
        // timed out may still have made its namespace).
        let mut failures = delete_namespaces(namespaces_with(&self.prefix));
        match fs::remove_dir_all(&self.state) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => failures.push(format!("{}: {e}", self.state.display())),
        }
        // The root too, unless another run still uses it.
        let _ = fs::remove_dir(state_root());
        failures
    }

    /// Deletes everything now and reports what could not be deleted.
    pub fn close(mut self) -> Result<()> {
        let failures = self.teardown();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(BenchError::Check(format!(
                "cleanup left {}",
                failures.join("; ")
            )))
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for failure in self.teardown() {
            eprintln!("cni-bench: cleanup: {failure}");
        }
    }
}

/// veth links in `ns`.
pub fn veth_count(ns: &Netns) -> Result<usize> {
    let out = ip(&["-n", ns.name(), "-o", "link", "show", "type", "veth"])?;
    Ok(out.lines().filter(|l| !l.trim().is_empty()).count())
}

/// Address reservations in a host-local style IPAM directory (one file named
/// after each reserved address); 0 when the directory does not exist.
pub fn reservations(dir: &Path) -> usize {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .parse::<std::net::IpAddr>()
                        .is_ok()
                })
                .count()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_of_names() {
        assert_eq!(pid_of("fcb-123-p7"), Some(123));
        assert_eq!(pid_of("fcb-123-n-ferry-v4"), Some(123));
        assert_eq!(pid_of("fcb-x-p7"), None);
        assert_eq!(pid_of("fcni-123-p7"), None);
    }

    #[test]
    fn this_process_is_never_a_live_other_owner() {
        assert!(!owner_alive(std::process::id()));
    }
}
