//! ferry-node's state directory (`--state-dir`):
//!
//! ```text
//! <state-dir>/netns/<sandbox-id>                  a pod's network namespace (nsfs bind mount)
//! <state-dir>/pods/<uid>/_pod/sandbox.json        the sandbox record (CNI config, result, IPs)
//! <state-dir>/pods/<uid>/_pod/resolv.conf         what the containers see at /etc/resolv.conf
//! <state-dir>/pods/<uid>/_pod/hosts               ... and at /etc/hosts
//! <state-dir>/pods/<uid>/_pod/root-<container>    where a container stages its root (stays empty on the node)
//! <state-dir>/pods/<uid>/<container>/<restart>.log  stdout and stderr of each run
//! <state-dir>/pods/<uid>/_volumes/<volume>          an emptyDir, or the files of a configMap,
//!                                                   secret, downwardAPI or projected volume
//! ```
//!
//! `_pod` and `_volumes` cannot clash with a container name (a DNS label
//! has no `_`). Everything of a pod is under its directory, so removing it
//! removes its volumes too.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::cgroup::safe;
use crate::sandbox::Sandbox;

const META: &str = "_pod";
const VOLUMES: &str = "_volumes";

#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: PathBuf) -> anyhow::Result<Self> {
        for dir in [root.join("netns"), root.join("pods")] {
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(StateDir { root })
    }

    pub fn netns_dir(&self) -> PathBuf {
        self.root.join("netns")
    }

    pub fn pods_dir(&self) -> PathBuf {
        self.root.join("pods")
    }

    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.pods_dir().join(safe(uid))
    }

    pub fn meta_dir(&self, uid: &str) -> PathBuf {
        self.pod_dir(uid).join(META)
    }

    /// The directory of volume `name` (emptyDir, or written files).
    pub fn volume_dir(&self, uid: &str, name: &str) -> PathBuf {
        self.pod_dir(uid).join(VOLUMES).join(safe(name))
    }

    /// An empty directory on which `container`'s process may stage its
    /// root ([`crate::volumes::mount_points`]).
    pub fn stage_dir(&self, uid: &str, container: &str) -> PathBuf {
        self.meta_dir(uid).join(format!("root-{}", safe(container)))
    }

    /// The log file of run `restart` of `container`.
    pub fn log_path(&self, uid: &str, container: &str, restart: i32) -> PathBuf {
        self.pod_dir(uid)
            .join(safe(container))
            .join(format!("{restart}.log"))
    }

    fn sandbox_path(&self, uid: &str) -> PathBuf {
        self.meta_dir(uid).join("sandbox.json")
    }

    /// Writes the record atomically (temporary file, then rename).
    pub fn write_sandbox(&self, sandbox: &Sandbox) -> anyhow::Result<()> {
        let path = self.sandbox_path(&sandbox.uid);
        write_atomic(&path, &serde_json::to_vec_pretty(sandbox)?)
    }

    pub fn read_sandbox(&self, uid: &str) -> Option<Sandbox> {
        let text = fs::read(self.sandbox_path(uid)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    pub fn remove_sandbox(&self, uid: &str) {
        let _ = fs::remove_file(self.sandbox_path(uid));
    }

    /// Writes one of the pod's `/etc` files; returns its path.
    pub fn write_etc(&self, uid: &str, name: &str, text: &str) -> anyhow::Result<PathBuf> {
        let path = self.meta_dir(uid).join(name);
        write_atomic(&path, text.as_bytes())?;
        Ok(path)
    }

    /// Removes the pod's volumes (emptyDirs, written files); a finished
    /// pod keeps its logs until it is deleted, not its volumes.
    pub fn remove_volumes(&self, uid: &str) -> anyhow::Result<()> {
        let dir = self.pod_dir(uid).join(VOLUMES);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
        }
    }

    /// Removes everything of the pod (logs included).
    pub fn remove_pod(&self, uid: &str) -> anyhow::Result<()> {
        let dir = self.pod_dir(uid);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
        }
    }

    /// The uids with a pod directory.
    pub fn pod_uids(&self) -> Vec<String> {
        names(&self.pods_dir())
    }

    /// The namespace files.
    pub fn netns_files(&self) -> Vec<PathBuf> {
        names(&self.netns_dir())
            .into_iter()
            .map(|n| self.netns_dir().join(n))
            .collect()
    }
}

fn names(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().context("a path without a directory")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}
