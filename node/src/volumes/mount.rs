//! A volume mount as the container's own process makes it
//! ([`crate::process::container_init`]), in its own mount namespace: the
//! node's mount table never changes.
//!
//! The source is taken first, before anything is mounted in the
//! namespace ([`take_source`]: a detached recursive copy of its mounts,
//! `open_tree(2)`; a `subPath` opened again here with
//! [`super::subpath::open`], so a symlink swapped in since ferry-node
//! checked it fails instead of being followed): the node's source as it
//! is, whatever the container later mounts over its path (an image's
//! overlay, a covered directory, a new root). It is then attached on the
//! mount path (`move_mount(2)`: a recursive bind mount), made
//! read-only with a bind remount (keeping the source's nosuid, nodev,
//! noexec; submounts of a recursive bind stay as they are), then given
//! its propagation: `None` → rprivate, `HostToContainer` → rslave (the
//! namespace is made with `unshare --propagation slave` then, so mounts
//! the node makes under the source later show up in the container).

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use rustix::fs::{CWD, StatVfsMountFlags};
use rustix::mount::{MountFlags, MountPropagationFlags, MoveMountFlags, OpenTreeFlags};
use serde::{Deserialize, Serialize};

/// Mount propagation of one volume mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Propagation {
    /// `None`: nothing propagates either way.
    Private,
    /// `HostToContainer`: the node's later mounts under the source
    /// propagate in, never out.
    Slave,
}

/// One mount of a container, as `container-init --mount <JSON>` gets it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    /// The volume's directory or file on the node.
    pub source: PathBuf,
    /// A path inside `source` (checked: never outside it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_path: Option<String>,
    /// The mount path (it exists: ferry-node checked it).
    pub target: PathBuf,
    pub read_only: bool,
    pub propagation: Propagation,
    /// The mount point is missing on the node: made (a directory, or a
    /// file) once what is above it is covered ([`super::mount_points`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub make_point: Option<PointKind>,
}

/// What a missing mount point is made as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PointKind {
    Dir,
    File,
}

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error(transparent)]
    SubPath(#[from] super::subpath::SubPathError),
    #[error("{what} {target}: {source}")]
    Sys {
        what: &'static str,
        target: PathBuf,
        source: rustix::io::Errno,
    },
}

/// A detached copy of the source of `path` (a file or directory, symlinks
/// followed), with its submounts when `recursive`, to attach with
/// [`attach`] once whatever covers `path` is mounted.
pub fn take(path: &std::path::Path, recursive: bool) -> rustix::io::Result<OwnedFd> {
    let mut flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= OpenTreeFlags::AT_RECURSIVE;
    }
    rustix::mount::open_tree(CWD, path, flags)
}

/// Attaches a copy [`take`] made on `target` (symlinks followed, as
/// mount(2) follows them).
pub fn attach(tree: &OwnedFd, target: &std::path::Path) -> rustix::io::Result<()> {
    rustix::mount::move_mount(
        tree,
        "",
        CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_SYMLINKS,
    )
}

/// The source of `m` (its subPath checked again), taken as the node has
/// it now: a detached recursive copy for [`apply`].
pub fn take_source(m: &MountSpec) -> Result<OwnedFd, MountError> {
    let sys = |source| MountError::Sys {
        what: "taking the source of",
        target: m.target.clone(),
        source,
    };
    match &m.sub_path {
        Some(sub) => {
            let opened = super::subpath::open(&m.source, sub, false)?;
            rustix::mount::open_tree(
                &opened,
                "",
                OpenTreeFlags::OPEN_TREE_CLONE
                    | OpenTreeFlags::OPEN_TREE_CLOEXEC
                    | OpenTreeFlags::AT_RECURSIVE
                    | OpenTreeFlags::AT_EMPTY_PATH,
            )
            .map_err(sys)
        }
        None => take(&m.source, true).map_err(sys),
    }
}

/// Makes `m` in the calling process's mount namespace from its source as
/// [`take_source`] took it.
pub fn apply(m: &MountSpec, source: &OwnedFd) -> Result<(), MountError> {
    let sys = |what| {
        let target = m.target.clone();
        move |source| MountError::Sys {
            what,
            target,
            source,
        }
    };
    attach(source, &m.target).map_err(sys("bind-mounting on"))?;
    if m.read_only {
        let kept = rustix::fs::statvfs(&m.target)
            .map(|s| s.f_flag)
            .map_err(sys("reading the flags of"))?;
        let mut flags = MountFlags::BIND | MountFlags::RDONLY;
        for (have, keep) in [
            (StatVfsMountFlags::NOSUID, MountFlags::NOSUID),
            (StatVfsMountFlags::NODEV, MountFlags::NODEV),
            (StatVfsMountFlags::NOEXEC, MountFlags::NOEXEC),
            (StatVfsMountFlags::NOATIME, MountFlags::NOATIME),
            (StatVfsMountFlags::NODIRATIME, MountFlags::NODIRATIME),
            (StatVfsMountFlags::RELATIME, MountFlags::RELATIME),
        ] {
            if kept.contains(have) {
                flags |= keep;
            }
        }
        rustix::mount::mount_remount(&m.target, flags, "").map_err(sys("remounting read-only"))?;
    }
    let propagation = match m.propagation {
        Propagation::Private => MountPropagationFlags::PRIVATE,
        Propagation::Slave => MountPropagationFlags::DOWNSTREAM,
    };
    rustix::mount::mount_change(&m.target, propagation | MountPropagationFlags::REC)
        .map_err(sys("setting the propagation of"))?;
    Ok(())
}
