//! Running work inside a pod's network namespace.
//!
//! setns(2) switches only the calling thread, so the plugin never calls it on
//! the main thread: [`NetNs::run`] spawns a scoped thread that enters the
//! namespace, does its work (netlink sockets opened there belong to the pod's
//! namespace) and exits, taking the namespace switch with it.

use std::fs::{self, File};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sched::{CloneFlags, setns};
use nix::sys::statfs::{NSFS_MAGIC, fstatfs};

use crate::error::{Error, Result};
use crate::input;

/// An open network namespace (`CNI_NETNS`).
#[derive(Debug)]
pub struct NetNs {
    file: File,
    path: PathBuf,
}

impl NetNs {
    /// Opens `CNI_NETNS`. A path that does not exist is an unknown container
    /// (3). Anything but a network namespace other than the plugin's own is
    /// an invalid `CNI_NETNS` (4), found without blocking: the path is
    /// opened with `O_PATH` (a FIFO does not wait for a writer, a device is
    /// not opened), must be on nsfs (fstatfs(2) magic `NSFS_MAGIC`), and is
    /// reopened for reading only then; a namespace of another kind (mount,
    /// PID, …) is refused by a setns(2) on a throwaway thread.
    pub fn open(path: &Path) -> Result<NetNs> {
        let handle = match input::open_path(path) {
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
        let fs_type = fstatfs(&handle)
            .map_err(|errno| {
                Error::io(
                    format!("statfs of CNI_NETNS {}", path.display()),
                    errno.into(),
                )
            })?
            .filesystem_type();
        if fs_type != NSFS_MAGIC {
            return Err(Error::InvalidEnv(format!(
                "CNI_NETNS {} is not a network namespace (not a file of the nsfs filesystem)",
                path.display()
            )));
        }
        let md = handle
            .metadata()
            .map_err(|e| Error::io(format!("stat of CNI_NETNS {}", path.display()), e))?;
        let own = fs::metadata("/proc/self/ns/net")
            .map_err(|e| Error::io("stat of /proc/self/ns/net", e))?;
        if md.dev() == own.dev() && md.ino() == own.ino() {
            return Err(Error::InvalidEnv(format!(
                "CNI_NETNS {} is the plugin's own network namespace",
                path.display()
            )));
        }
        // setns(2) and IFLA_NET_NS_FD need a real open file, not O_PATH.
        let file = input::reopen(&handle)
            .map_err(|e| Error::io(format!("opening CNI_NETNS {}", path.display()), e))?;
        let ns = NetNs {
            file,
            path: path.to_path_buf(),
        };
        ns.run(|| Ok(()))?;
        Ok(ns)
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
                        let why = if errno == Errno::EINVAL {
                            "it is a namespace of another kind".to_string()
                        } else {
                            errno.to_string()
                        };
                        Error::InvalidEnv(format!(
                            "CNI_NETNS {} is not a network namespace that can be entered: {why}",
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
