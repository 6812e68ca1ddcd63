//! What a running cluster leaves for `ferry status` and `ferry down`: a
//! directory per cluster under [`RUN_ROOT`] (tmpfs, so a reboot clears it
//! along with the namespaces) holding the supervisor's pid and start time,
//! its log, and the cluster's description once it is up.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{ClusterInfo, Error, Result};

/// Where clusters' state directories live.
pub const RUN_ROOT: &str = "/run/ferry/clusters";

/// The state directory of cluster `name`.
pub fn dir(name: &str) -> PathBuf {
    Path::new(RUN_ROOT).join(name)
}

/// The supervisor's log.
pub fn log_path(name: &str) -> PathBuf {
    dir(name).join("supervisor.log")
}

fn info_path(name: &str) -> PathBuf {
    dir(name).join("cluster.json")
}

fn owner_path(name: &str) -> PathBuf {
    dir(name).join("supervisor.json")
}

/// The process that runs a cluster: pid and start time (a recycled pid
/// has another).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub pid: u32,
    pub start_time: u64,
    /// The cluster's data directory, so `ferry down --purge` finds it even
    /// when the cluster never came up.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
}

impl Owner {
    /// This process.
    pub fn current() -> Result<Self> {
        let pid = std::process::id();
        let start_time = start_time(pid)
            .ok_or_else(|| Error::Config(format!("cannot read /proc/{pid}/stat")))?;
        Ok(Self {
            pid,
            start_time,
            data_dir: None,
        })
    }

    /// Whether that very process still runs.
    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start_time)
    }
}

/// Field 22 of `/proc/<pid>/stat`: the start time in clock ticks.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; it ends at the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::Config(format!("encoding {}: {e}", path.display())))?;
    let staged = path.with_extension("tmp");
    fs::write(&staged, text).map_err(|e| Error::io(format!("writing {}", staged.display()), e))?;
    fs::rename(&staged, path).map_err(|e| Error::io(format!("renaming {}", staged.display()), e))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let text = fs::read(path).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Claims cluster `name` for this process: fails when a live supervisor
/// holds it.
pub fn claim(name: &str, data_dir: &Path) -> Result<()> {
    let dir = dir(name);
    fs::create_dir_all(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    if let Some(owner) = owner(name)
        && owner.alive()
        && owner.pid != std::process::id()
    {
        return Err(Error::Config(format!(
            "cluster {name:?} is already running (supervisor pid {}); `ferry down --name {name}` stops it",
            owner.pid
        )));
    }
    let _ = fs::remove_file(info_path(name));
    let owner = Owner {
        data_dir: Some(data_dir.to_owned()),
        ..Owner::current()?
    };
    write_json(&owner_path(name), &owner)
}

/// The supervisor recorded for `name`, alive or not.
pub fn owner(name: &str) -> Option<Owner> {
    read_json(&owner_path(name))
}

/// Records the cluster's description (it is up).
pub fn save_info(info: &ClusterInfo) -> Result<()> {
    write_json(&info_path(&info.name), info)
}

/// The description of cluster `name`, once it was up.
pub fn info(name: &str) -> Option<ClusterInfo> {
    read_json(&info_path(name))
}

/// Removes the state directory of `name` (the cluster is gone).
pub fn forget(name: &str) -> Result<()> {
    match fs::remove_dir_all(dir(name)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", dir(name).display()), e)),
    }
}

/// Names of the clusters with a state directory.
pub fn names() -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(RUN_ROOT)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_changed_start_time_is_not() {
        let me = Owner::current().expect("own stat");
        assert!(me.alive());
        let other = Owner {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!other.alive());
    }
}
