//! Per-world name prefixes, the owner markers that tie them to a live
//! process, and the sweep of leftovers from runs that died.
//!
//! A prefix is `ft` and six base-36 characters (`ft3k9x0a`). Every
//! namespace of a world is named `<prefix>-...`, and the world's state
//! directory `/run/ferry-testbed/<prefix>/` holds an `owner` file with the
//! creating process's pid and start time. A namespace whose prefix has no
//! live owner is a leftover.

use std::collections::BTreeMap;
use std::fs;
use std::hash::{BuildHasher as _, Hasher as _};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use crate::netns::{self, NETNS_DIR, Netns};

/// Where world state directories (owner markers, IPAM data, scratch
/// files) live. On tmpfs, so a reboot clears it along with the namespaces.
pub const STATE_ROOT: &str = "/run/ferry-testbed";

/// First characters of every testbed prefix.
pub const PREFIX_TAG: &str = "ft";

const PREFIX_RANDOM_LEN: usize = 6;

/// A state directory without a readable owner file younger than this is
/// taken to be one being created right now.
const OWNERLESS_GRACE: Duration = Duration::from_secs(30);

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh prefix candidate, mixing pid, a process-wide counter and the
/// time. Uniqueness among live worlds is guaranteed by
/// [`claim_prefix`], which creates its state directory exclusively.
pub fn unique_prefix() -> String {
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u64(count);
    hasher.write_u128(nanos);
    let mut n = hasher.finish();
    let mut out = String::from(PREFIX_TAG);
    for _ in 0..PREFIX_RANDOM_LEN {
        let digit = u32::try_from(n % 36).unwrap_or(0);
        out.push(char::from_digit(digit, 36).unwrap_or('0'));
        n /= 36;
    }
    out
}

/// The prefix of a testbed-made name (`ft3k9x0a-n0-p1` → `ft3k9x0a`), or
/// `None` for a name the testbed did not make.
pub fn prefix_of(name: &str) -> Option<&str> {
    let len = PREFIX_TAG.len() + PREFIX_RANDOM_LEN;
    let prefix = name.get(..len)?;
    let rest = name.get(len..)?;
    let random = prefix.strip_prefix(PREFIX_TAG)?;
    let valid = random
        .bytes()
        .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase());
    (valid && (rest.is_empty() || rest.starts_with('-'))).then_some(prefix)
}

/// Claims a fresh prefix: creates its state directory exclusively and
/// writes the owner marker. Returns the prefix and the directory.
pub(crate) fn claim_prefix() -> Result<(String, PathBuf)> {
    fs::create_dir_all(STATE_ROOT).map_err(|e| Error::io(format!("creating {STATE_ROOT}"), e))?;
    for _ in 0..100 {
        let prefix = unique_prefix();
        let dir = Path::new(STATE_ROOT).join(&prefix);
        // A namespace with this prefix and no directory is a leftover the
        // sweep has not reached: don't reuse its prefix.
        let clash = Path::new(NETNS_DIR).join(format!("{prefix}-ul")).exists();
        if clash {
            continue;
        }
        match fs::create_dir(&dir) {
            Ok(()) => {
                write_owner(&dir)?;
                return Ok((prefix, dir));
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(format!("creating {}", dir.display()), e)),
        }
    }
    Err(Error::Config(
        "could not find a free testbed prefix after 100 tries".into(),
    ))
}

/// A prefix claimed for this process (its state directory and owner
/// marker), for tests that make prefixed things (an [`AgentHooks`](crate::AgentHooks)
/// of their own) without a [`World`](crate::World): sweeps by other tests
/// leave them alone while this lives. Dropping it removes the directory.
#[derive(Debug)]
pub struct Claimed {
    pub prefix: String,
    dir: PathBuf,
}

impl Claimed {
    pub fn new() -> Result<Self> {
        let (prefix, dir) = claim_prefix()?;
        Ok(Self { prefix, dir })
    }
}

impl Drop for Claimed {
    fn drop(&mut self) {
        let _ = remove_state_dir(&self.dir);
    }
}

/// The owner marker: `<pid> <start time in clock ticks since boot>`.
fn write_owner(dir: &Path) -> Result<()> {
    let pid = std::process::id();
    let start = start_time(pid).unwrap_or(0);
    let path = dir.join("owner");
    fs::write(&path, format!("{pid} {start}\n"))
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// Writes an owner marker for `prefix` naming an arbitrary pid, so that tests
/// can fake the leftovers of a crashed run. Returns the state directory.
pub fn write_fake_owner(prefix: &str, pid: u32, start_time: u64) -> Result<PathBuf> {
    let dir = Path::new(STATE_ROOT).join(prefix);
    fs::create_dir_all(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let path = dir.join("owner");
    fs::write(&path, format!("{pid} {start_time}\n"))
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    Ok(dir)
}

/// A process's start time (field 22 of `/proc/<pid>/stat`), which tells a
/// live owner from an unrelated process that got its pid later.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces;
    // fields after it start at field 3.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// Whether the world owning `prefix` is still alive.
fn owner_alive(prefix: &str) -> bool {
    let dir = Path::new(STATE_ROOT).join(prefix);
    let owner = fs::read_to_string(dir.join("owner")).ok();
    let parsed = owner.as_deref().and_then(|text| {
        let mut fields = text.split_whitespace();
        let pid: u32 = fields.next()?.parse().ok()?;
        let start: u64 = fields.next()?.parse().ok()?;
        Some((pid, start))
    });
    match parsed {
        Some((pid, start)) => start_time(pid).is_some_and(|now| now == start),
        // No readable marker: alive only if the directory was made moments
        // ago (its owner is still writing the marker).
        None => fs::metadata(&dir)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < OWNERLESS_GRACE),
    }
}

/// What [`sweep`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// Namespaces deleted (after killing the processes inside them).
    pub namespaces: Vec<String>,
    /// State directories removed.
    pub state_dirs: Vec<PathBuf>,
    /// Agent cgroups and bpffs pin directories removed.
    pub hooks: Vec<PathBuf>,
    /// Things that could not be removed, with why.
    pub failures: Vec<String>,
}

/// Removes what crashed runs left behind: every namespace whose name has a
/// testbed prefix whose owner process is dead (killing the processes inside
/// it first; deleting a namespace removes its veths), and the dead owners'
/// state directories. Worlds of live processes, including this one, are
/// never touched. [`World`](crate::World) calls this on creation.
pub fn sweep() -> SweepReport {
    let mut report = SweepReport::default();
    let mut by_prefix: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if let Ok(entries) = fs::read_dir(NETNS_DIR) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(prefix) = prefix_of(&name) {
                by_prefix.entry(prefix.to_owned()).or_default().push(name);
            }
        }
    }
    for (prefix, mut names) in by_prefix {
        if owner_alive(&prefix) {
            continue;
        }
        // Pods first, then nodes, then the underlay: longest names first.
        names.sort_by_key(|n| std::cmp::Reverse(n.len()));
        for name in names {
            let ns = Netns::named(&name);
            match netns::destroy(&ns) {
                Ok(()) => report.namespaces.push(name),
                Err(e) => report.failures.push(format!("netns {name}: {e}")),
            }
        }
    }
    // Agents' cgroups and pins (see `hooks`), named `<prefix>-...`.
    for (name, path, is_cgroup) in crate::hooks::prefixed_entries() {
        let Some(prefix) = prefix_of(&name) else {
            continue;
        };
        if owner_alive(prefix) {
            continue;
        }
        if is_cgroup {
            crate::hooks::remove_cgroup(&path);
        } else {
            crate::hooks::remove_pins(&path);
        }
        report.hooks.push(path);
    }
    if let Ok(entries) = fs::read_dir(STATE_ROOT) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if prefix_of(&name) != Some(name.as_str()) || owner_alive(&name) {
                continue;
            }
            let path = entry.path();
            match remove_state_dir(&path) {
                Ok(()) => report.state_dirs.push(path),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => report.failures.push(format!("{}: {e}", path.display())),
            }
        }
    }
    report
}

/// Removes a world's state directory, unmounting first whatever is mounted
/// under it (a node runtime's pod namespaces are bind mounts there; a
/// mount point cannot be removed, and it would keep its namespace alive).
pub(crate) fn remove_state_dir(dir: &Path) -> std::io::Result<()> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split_whitespace().nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    // Deepest first, so no mount hides another.
    mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for mount in mounts {
        let _ = rustix::mount::unmount(&mount, rustix::mount::UnmountFlags::DETACH);
    }
    fs::remove_dir_all(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_short_and_recognised() {
        let p = unique_prefix();
        assert_eq!(p.len(), 8);
        assert_eq!(prefix_of(&p), Some(p.as_str()));
        assert_eq!(prefix_of(&format!("{p}-n0-p1")), Some(p.as_str()));
        assert_eq!(prefix_of(&format!("{p}x")), None);
        assert_eq!(prefix_of("ftABCDEF-n0"), None);
        assert_eq!(prefix_of("ft12"), None);
        assert_eq!(prefix_of("cni-1234"), None);
        assert_ne!(unique_prefix(), unique_prefix());
    }

    #[test]
    fn start_time_of_self() {
        assert!(start_time(std::process::id()).is_some());
    }
}
