//! Running work inside a pod's network namespace.
//!
//! setns(2) switches only the calling thread, so the plugin never calls it on
//! the main thread: [`NetNs::run`] spawns a scoped thread that enters the
//! namespace, does its work (netlink sockets opened there belong to the pod's
//! namespace) and exits, taking the namespace switch with it.

use std::fs::{self, File};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

use crate::error::{Error, Result};

/// An open network namespace (`CNI_NETNS`).
#[derive(Debug)]
pub struct NetNs {
    file: File,
    path: PathBuf,
}

impl NetNs {
    /// Opens `CNI_NETNS`. A path that does not exist is an unknown container
    /// (3); one that is not a network namespace other than the plugin's own is
    /// an invalid `CNI_NETNS` (4).
    pub fn open(path: &Path) -> Result<NetNs> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::UnknownContainer(format!(
                    "network namespace {} (CNI_NETNS) does not exist",
                    path.display()
                )));
            }
            Err(e) => {
                return Err(Error::io(
                    format!("opening CNI_NETNS {}", path.display()),
                    e,
                ));
            }
        };
        let md = file
            .metadata()
            .map_err(|e| Error::io(format!("stat of CNI_NETNS {}", path.display()), e))?;
        let own = fs::metadata("/proc/self/ns/net")
            .map_err(|e| Error::io("stat of /proc/self/ns/net", e))?;
        // Every namespace file lives on the nsfs pseudo filesystem.
        if md.dev() != own.dev() {
            return Err(Error::InvalidEnv(format!(
                "CNI_NETNS {} is not a network namespace",
                path.display()
            )));
        }
        if md.ino() == own.ino() {
            return Err(Error::InvalidEnv(format!(
                "CNI_NETNS {} is the plugin's own network namespace",
                path.display()
            )));
        }
        Ok(NetNs {
            file,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Runs `f` on a dedicated thread inside this namespace.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> Result<R> + Send) -> Result<R> {
        std::thread::scope(|s| {
            let worker = std::thread::Builder::new()
                .name("netns".into())
                .spawn_scoped(s, || {
                    setns(&self.file, CloneFlags::CLONE_NEWNET).map_err(|errno| {
                        Error::InvalidEnv(format!(
                            "CNI_NETNS {} cannot be entered: {errno}",
                            self.path.display()
                        ))
                    })?;
                    f()
                })
                .map_err(|e| Error::io("spawning the netns thread", e))?;
            worker
                .join()
                .unwrap_or_else(|_| Err(Error::Internal("the netns thread panicked".into())))
        })
    }
}
