//! Where an agent under test hangs its eBPF programs: a child cgroup of its
//! own (never the root cgroup) and a bpffs directory for its pins, both
//! named with the world's prefix so a sweep finds what a dead run left.
//!
//! Processes that should get socket-level load balancing join the cgroup
//! ([`AgentHooks::cgroup_procs`]); everything else on the machine stays
//! untouched.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Where bpffs is mounted (`cargo xtask setup` mounts it).
pub const BPFFS: &str = "/sys/fs/bpf";

/// The cgroup2 mount point, from `/proc/self/mountinfo`.
pub fn cgroup2_root() -> Result<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::io("reading /proc/self/mountinfo", e))?;
    info.lines()
        .find_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2")
                .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .ok_or_else(|| Error::Config("no cgroup2 file system is mounted".into()))
}

/// A child cgroup and a bpffs directory for one agent; removed on drop
/// (pins first, which detaches the programs, then the cgroup, after killing
/// whatever is still in it).
#[derive(Debug)]
pub struct AgentHooks {
    pub cgroup: PathBuf,
    pub bpffs: PathBuf,
}

impl AgentHooks {
    /// Creates `<cgroup2>/<name>` and `/sys/fs/bpf/<name>`, removing
    /// leftovers of the same name first. `name` should start with a world
    /// prefix.
    pub fn create(name: &str) -> Result<Self> {
        let hooks = Self {
            cgroup: cgroup2_root()?.join(name),
            bpffs: Path::new(BPFFS).join(name),
        };
        hooks.remove();
        fs::create_dir(&hooks.cgroup)
            .map_err(|e| Error::io(format!("creating {}", hooks.cgroup.display()), e))?;
        Ok(hooks)
    }

    /// The file a process writes its pid to, to join the cgroup.
    pub fn cgroup_procs(&self) -> PathBuf {
        self.cgroup.join("cgroup.procs")
    }

    fn remove(&self) {
        remove_pins(&self.bpffs);
        remove_cgroup(&self.cgroup);
    }
}

impl Drop for AgentHooks {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Removes a pin tree; unlinking a link's last pin detaches its program.
pub(crate) fn remove_pins(dir: &Path) {
    match fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => eprintln!("testbed: removing {}: {e}", dir.display()),
    }
}

/// Kills the cgroup's processes, then removes it.
pub(crate) fn remove_cgroup(dir: &Path) {
    if !dir.exists() {
        return;
    }
    // cgroup.kill (5.14+) kills every member at once, in child cgroups too
    // (a node runtime's pods live in cgroups under its agent's).
    let _ = fs::write(dir.join("cgroup.kill"), "1");
    // A cgroup with children cannot be removed: the deepest go first.
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&entry.path());
            }
        }
    }
    for _ in 0..50 {
        match fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == ErrorKind::NotFound => return,
            // Busy until the killed processes are reaped.
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
    eprintln!("testbed: could not remove cgroup {}", dir.display());
}

/// Names under the cgroup2 root and bpffs that carry a testbed prefix.
pub(crate) fn prefixed_entries() -> Vec<(String, PathBuf, bool)> {
    let mut out = Vec::new();
    let roots = [
        (cgroup2_root().ok(), true),
        (Some(PathBuf::from(BPFFS)), false),
    ];
    for (root, is_cgroup) in roots {
        let Some(root) = root else { continue };
        if let Ok(entries) = fs::read_dir(&root) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if entry.path().is_dir() {
                    out.push((name, entry.path(), is_cgroup));
                }
            }
        }
    }
    out
}
