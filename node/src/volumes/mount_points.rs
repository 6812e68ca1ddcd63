//! Mount points that do not exist on the node, made without touching the
//! node's file system: the container's process (in its own mount
//! namespace) covers the deepest directory that does exist with a tmpfs
//! holding what the directory held (each entry bind-mounted back,
//! recursively; symlinks copied), then makes the missing directories in
//! that tmpfs. For `/` itself the covered tree is a tmpfs on a staging
//! directory of the pod's that becomes the container's root
//! (`pivot_root`), as container runtimes do.
//!
//! What the container sees in a covered directory is what it held when
//! the container started: entries the node adds later do not show (those
//! bound back do follow the node, their mounts are recursive binds). New
//! files the container writes there land in the tmpfs and go with it.

use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

use rustix::fs::{CWD, Mode, OFlags};
use rustix::mount::{MountFlags, UnmountFlags};

#[derive(Debug, thiserror::Error)]
#[error("covering {dir} for missing mount points: {what}")]
pub struct ShadowError {
    pub dir: PathBuf,
    pub what: String,
}

/// Covers `dir` (an existing directory) with a tmpfs holding its
/// entries; `/` becomes a new root made on `stage` (an empty directory of
/// the pod's).
pub fn shadow(dir: &Path, stage: &Path) -> Result<(), ShadowError> {
    let fail = |what: String| ShadowError {
        dir: dir.to_path_buf(),
        what,
    };
    // The directory as it is, reachable after it is covered.
    let original: OwnedFd = rustix::fs::openat(
        CWD,
        dir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| fail(format!("opening: {e}")))?;
    let mode = std::fs::metadata(dir)
        .map(|m| m.mode() & 0o7777)
        .map_err(|e| fail(e.to_string()))?;
    let is_root = dir == Path::new("/");
    let cover = if is_root { stage } else { dir };
    let opts = std::ffi::CString::new(format!("mode={mode:o}")).map_err(|e| fail(e.to_string()))?;
    rustix::mount::mount(
        "tmpfs",
        cover,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        opts.as_c_str(),
    )
    .map_err(|e| fail(format!("mounting a tmpfs on {}: {e}", cover.display())))?;
    populate(cover, &original).map_err(fail)?;
    drop(original);
    if is_root {
        // The staged tree becomes the root; the old one is detached (it
        // stays as it is in every other namespace).
        rustix::process::chdir(stage).map_err(|e| fail(format!("chdir: {e}")))?;
        rustix::process::pivot_root(".", ".").map_err(|e| fail(format!("pivot_root: {e}")))?;
        rustix::mount::unmount(".", UnmountFlags::DETACH)
            .map_err(|e| fail(format!("detaching the old root: {e}")))?;
        rustix::process::chdir("/").map_err(|e| fail(format!("chdir /: {e}")))?;
    }
    Ok(())
}

/// Each entry of `original` again in `cover`: directories and files bound
/// back (recursively), symlinks copied.
fn populate(cover: &Path, original: &OwnedFd) -> Result<(), String> {
    let from = PathBuf::from(format!("/proc/self/fd/{}", original.as_fd().as_raw_fd()));
    let entries = std::fs::read_dir(&from).map_err(|e| format!("reading: {e}"))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let src = from.join(&name);
        let dst = cover.join(&name);
        let Ok(meta) = std::fs::symlink_metadata(&src) else {
            continue;
        };
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = std::fs::read_link(&src).map_err(|e| format!("{name:?}: {e}"))?;
            std::os::unix::fs::symlink(&target, &dst).map_err(|e| format!("{name:?}: {e}"))?;
            continue;
        }
        if ft.is_dir() {
            std::fs::DirBuilder::new()
                .mode(meta.mode() & 0o7777)
                .create(&dst)
                .map_err(|e| format!("{name:?}: {e}"))?;
        } else {
            std::fs::File::create(&dst).map_err(|e| format!("{name:?}: {e}"))?;
        }
        rustix::mount::mount_bind_recursive(&src, &dst)
            .map_err(|e| format!("binding {name:?} back: {e}"))?;
    }
    Ok(())
}

/// Makes a missing mount point (a directory, or an empty file for a
/// source that is not a directory) once what is above it is covered.
pub fn make_point(target: &Path, dir: bool) -> std::io::Result<()> {
    if std::fs::symlink_metadata(target).is_ok() {
        return Ok(());
    }
    if dir {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(target)
    } else {
        if let Some(parent) = target.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)?;
        }
        std::fs::File::create(target).map(drop)
    }
}

/// The deepest existing directory above `path` (on the node), which a
/// container covers to make `path`.
pub fn deepest_existing(path: &Path) -> PathBuf {
    let mut cur = path.to_path_buf();
    while !cur.is_dir() {
        if !cur.pop() {
            return PathBuf::from("/");
        }
    }
    cur
}
