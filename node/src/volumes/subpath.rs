//! Paths resolved inside a directory without escaping it: a volume
//! mount's `subPath` (the kubelet's CVE-2017-1002101 class: a `..` or a
//! symlink in the volume pointing outside must not let a container bind
//! the node's files) and hostPath paths under a node-private `--host-root`.
//!
//! As the kubelet does: the path is resolved with symlinks followed and
//! must stay inside the base; then it is opened element by element with
//! `O_NOFOLLOW` from the base, so a symlink swapped in meanwhile fails
//! instead of being followed. The open `O_PATH` descriptor is what gets
//! bind-mounted (`/proc/self/fd/<n>`).

use std::os::fd::{AsFd as _, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{CWD, FileType, Mode, OFlags};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubPathError {
    #[error("subPath {0:?} must be a relative path without '..'")]
    Invalid(String),
    #[error("subPath {sub:?} resolves to {real}, outside the volume {base}")]
    Escape {
        sub: String,
        real: String,
        base: String,
    },
    #[error("subPath {sub:?}: {what}")]
    Io { sub: String, what: String },
}

/// Checks the form of a subPath: relative, no `..` element, no NUL.
pub fn validate(sub: &str) -> Result<(), SubPathError> {
    let ok = !sub.contains('\0')
        && !sub.starts_with('/')
        && Path::new(sub)
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if ok {
        Ok(())
    } else {
        Err(SubPathError::Invalid(sub.to_owned()))
    }
}

/// Opens `base/sub` (`O_PATH`) without leaving `base`; with `create`, the
/// missing directories of `sub` are made (mode 0755) first, each inside
/// the one opened before it.
pub fn open(base: &Path, sub: &str, create: bool) -> Result<OwnedFd, SubPathError> {
    validate(sub)?;
    let err = |what: String| SubPathError::Io {
        sub: sub.to_owned(),
        what,
    };
    let base = std::fs::canonicalize(base).map_err(|e| err(format!("{}: {e}", base.display())))?;
    let rel: PathBuf = match std::fs::canonicalize(base.join(sub)) {
        Ok(real) => real
            .strip_prefix(&base)
            .map(Path::to_path_buf)
            .map_err(|_| SubPathError::Escape {
                sub: sub.to_owned(),
                real: real.display().to_string(),
                base: base.display().to_string(),
            })?,
        // Not there (yet): walked as written; a symlink on the way is
        // refused by the walk.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Path::new(sub).to_path_buf(),
        Err(e) => return Err(err(e.to_string())),
    };
    open_beneath(&base, &rel, create).map_err(|e| match e {
        WalkError::Symlink(p) => SubPathError::Escape {
            sub: sub.to_owned(),
            real: format!("a symlink at {}", base.join(p).display()),
            base: base.display().to_string(),
        },
        WalkError::Io(p, e) => err(format!("{}: {e}", base.join(p).display())),
    })
}

enum WalkError {
    Symlink(PathBuf),
    Io(PathBuf, rustix::io::Errno),
}

/// Element by element from `base`, never following a symlink.
fn open_beneath(base: &Path, rel: &Path, create: bool) -> Result<OwnedFd, WalkError> {
    let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut cur = rustix::fs::openat(CWD, base, flags | OFlags::DIRECTORY, Mode::empty())
        .map_err(|e| WalkError::Io(PathBuf::new(), e))?;
    let mut done = PathBuf::new();
    for c in rel.components() {
        let Component::Normal(name) = c else {
            continue;
        };
        done.push(name);
        let next = match rustix::fs::openat(cur.as_fd(), name, flags, Mode::empty()) {
            Err(rustix::io::Errno::NOENT) if create => {
                // `cur` is an O_PATH descriptor: mkdirat needs a real one.
                let dir = rustix::fs::openat(
                    cur.as_fd(),
                    ".",
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| WalkError::Io(done.clone(), e))?;
                match rustix::fs::mkdirat(dir.as_fd(), name, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(WalkError::Io(done.clone(), e)),
                }
                rustix::fs::openat(cur.as_fd(), name, flags, Mode::empty())
                    .map_err(|e| WalkError::Io(done.clone(), e))?
            }
            Err(e) => return Err(WalkError::Io(done.clone(), e)),
            Ok(fd) => fd,
        };
        let stat = rustix::fs::fstat(next.as_fd()).map_err(|e| WalkError::Io(done.clone(), e))?;
        if FileType::from_raw_mode(stat.st_mode) == FileType::Symlink {
            return Err(WalkError::Symlink(done));
        }
        cur = next;
    }
    Ok(cur)
}

/// The path a bind mount of `fd` takes as its source.
pub fn fd_path(fd: &OwnedFd) -> PathBuf {
    use std::os::fd::AsRawFd as _;
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "ferry-node-sp-{name}-{}-{}",
            std::process::id(),
            jiff::Timestamp::now().as_nanosecond()
        ));
        fs::create_dir_all(&d).expect("tmp dir");
        d
    }

    /// What an open descriptor names.
    fn target(fd: &OwnedFd) -> PathBuf {
        fs::read_link(fd_path(fd)).expect("fd link")
    }

    #[test]
    fn forms_are_checked() {
        for bad in ["/etc", "..", "../x", "a/../../x", "a/..", "a\0"] {
            assert!(validate(bad).is_err(), "{bad:?}");
        }
        for good in ["a", "a/b", "./a", "a..b", ".hidden"] {
            assert!(validate(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn stays_inside_the_volume() {
        let root = tmpdir("inside");
        let vol = root.join("vol");
        let outside = root.join("outside");
        fs::create_dir_all(vol.join("data")).expect("vol");
        fs::create_dir_all(&outside).expect("outside");
        fs::write(vol.join("data/f"), "in").expect("f");
        fs::write(outside.join("secret"), "out").expect("secret");
        let vol_c = fs::canonicalize(&vol).expect("canon");

        // Plain paths and a symlink that stays inside (a configMap key).
        let fd = open(&vol, "data/f", false).expect("inside");
        assert_eq!(target(&fd), vol_c.join("data/f"));
        symlink("data/f", vol.join("inner")).expect("inner link");
        let fd = open(&vol, "inner", false).expect("inner link");
        assert_eq!(target(&fd), vol_c.join("data/f"));

        // Symlinks out: absolute, relative with .., and as a middle element.
        symlink(&outside, vol.join("abs")).expect("abs link");
        symlink("../outside/secret", vol.join("rel")).expect("rel link");
        for sub in ["abs", "abs/secret", "rel"] {
            let e = open(&vol, sub, false).expect_err(sub);
            assert!(matches!(e, SubPathError::Escape { .. }), "{sub}: {e}");
        }
        // A missing tail behind an escaping link is refused, never created.
        let e = open(&vol, "abs/new", true).expect_err("created through a link");
        assert!(matches!(e, SubPathError::Escape { .. }), "{e}");
        assert!(!outside.join("new").exists());
        // `..` in the form.
        assert!(matches!(
            open(&vol, "../outside", false),
            Err(SubPathError::Invalid(_))
        ));
        // Missing directories are made with `create`, only then.
        assert!(open(&vol, "made/deeper", false).is_err());
        let fd = open(&vol, "made/deeper", true).expect("created");
        assert_eq!(target(&fd), vol_c.join("made/deeper"));
        assert!(vol.join("made/deeper").is_dir());
        let _ = fs::remove_dir_all(&root);
    }
}
