//! A volume mount as the container's own process makes it
//! ([`crate::process::container_init`]), in its own mount namespace: the
//! node's mount table never changes.
//!
//! The source is bind-mounted recursively on the mount path (a `subPath`
//! opened again here with [`super::subpath::open`], so a symlink swapped
//! in since ferry-node checked it fails instead of being followed), made
//! read-only with a bind remount (keeping the source's nosuid, nodev,
//! noexec; submounts of a recursive bind stay as they are), then given
//! its propagation: `None` → rprivate, `HostToContainer` → rslave (the
//! namespace is made with `unshare --propagation slave` then, so mounts
//! the node makes under the source later show up in the container).

use std::path::PathBuf;

use rustix::fs::StatVfsMountFlags;
use rustix::mount::{MountFlags, MountPropagationFlags};
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

/// Makes `m` in the calling process's mount namespace.
pub fn apply(m: &MountSpec) -> Result<(), MountError> {
    let sys = |what| {
        let target = m.target.clone();
        move |source| MountError::Sys {
            what,
            target,
            source,
        }
    };
    // The descriptor stays open until the bind is made.
    let opened = match &m.sub_path {
        Some(sub) => Some(super::subpath::open(&m.source, sub, false)?),
        None => None,
    };
    let source = opened
        .as_ref()
        .map_or_else(|| m.source.clone(), super::subpath::fd_path);
    rustix::mount::mount_bind_recursive(&source, &m.target).map_err(sys("bind-mounting on"))?;
    drop(opened);
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
