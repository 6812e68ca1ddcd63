//! hostPath volumes on a node that may share its machine with other
//! nodes: `--host-root` (default `/`) is where a pod's hostPath paths
//! are resolved, `--host-path-map HOST_PATH=REAL_PATH` (repeatable, the
//! longest matching prefix wins) sends chosen paths elsewhere (e.g.
//! `/sys/fs/bpf=/sys/fs/bpf/ferry-node-1`).
//!
//! With the root `/` and no map a hostPath is the real path, as on a real
//! node (symlinks followed as the kubelet follows them). Under any other
//! root or map target the resolved path must stay inside it: a symlink
//! pointing out (which a pod could have planted in an earlier hostPath
//! volume) is refused.
//!
//! The `type` checks and their messages are the kubelet's.

use std::fs;
use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostPathError {
    #[error("invalid hostPath {0:?}: must be an absolute path without '..' or NUL")]
    Invalid(String),
    #[error("hostPath type check failed: {path} is not a {what}")]
    TypeCheck { path: String, what: &'static str },
    #[error("{0} is an invalid volume type")]
    UnknownType(String),
    #[error("hostPath {path} resolves to {real}, outside {base} (this node's host paths)")]
    Escape {
        path: String,
        real: String,
        base: String,
    },
    #[error("hostPath {path}: {what}")]
    Io { path: String, what: String },
}

/// Where this node's hostPath paths live.
#[derive(Debug, Clone)]
pub struct HostPaths {
    root: PathBuf,
    /// (host path, real path), most elements first.
    maps: Vec<(PathBuf, PathBuf)>,
}

impl Default for HostPaths {
    fn default() -> Self {
        HostPaths {
            root: PathBuf::from("/"),
            maps: Vec::new(),
        }
    }
}

/// `HOST_PATH=REAL_PATH` (both absolute): a `--host-path-map` value.
pub fn parse_map(s: &str) -> Result<(PathBuf, PathBuf), String> {
    let (host, real) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: want HOST_PATH=REAL_PATH"))?;
    let host =
        normalize(host).ok_or_else(|| format!("{host:?}: not an absolute path without '..'"))?;
    let real =
        normalize(real).ok_or_else(|| format!("{real:?}: not an absolute path without '..'"))?;
    Ok((host, real))
}

/// An absolute path without `..`, `.` and repeated slashes removed.
fn normalize(path: &str) -> Option<PathBuf> {
    if path.contains('\0') || !path.starts_with('/') {
        return None;
    }
    let mut out = PathBuf::from("/");
    for c in Path::new(path).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

impl HostPaths {
    pub fn new(root: PathBuf, maps: Vec<(PathBuf, PathBuf)>) -> Result<Self, HostPathError> {
        let root = normalize(&root.to_string_lossy())
            .ok_or_else(|| HostPathError::Invalid(root.display().to_string()))?;
        let mut maps = maps;
        maps.sort_by_key(|(host, _)| std::cmp::Reverse(host.components().count()));
        Ok(HostPaths { root, maps })
    }

    /// Where `path` is on this machine, and the directory it must stay in
    /// (`/`: anywhere).
    pub fn resolve(&self, path: &str) -> Result<(PathBuf, PathBuf), HostPathError> {
        let norm = normalize(path).ok_or_else(|| HostPathError::Invalid(path.to_owned()))?;
        for (host, real) in &self.maps {
            if let Ok(rest) = norm.strip_prefix(host) {
                return Ok((join(real, rest), real.clone()));
            }
        }
        let rest = norm.strip_prefix("/").unwrap_or(&norm);
        Ok((join(&self.root, rest), self.root.clone()))
    }

    /// Checks (and with the `...OrCreate` types makes) the hostPath of
    /// type `kind`; returns the real path to bind-mount.
    pub fn prepare(&self, path: &str, kind: &str) -> Result<PathBuf, HostPathError> {
        let (real, base) = self.resolve(path)?;
        let confined = base != Path::new("/");
        let io = |e: std::io::Error| HostPathError::Io {
            path: path.to_owned(),
            what: e.to_string(),
        };
        let check = |what: &'static str, ok: fn(&fs::FileType) -> bool| {
            let meta = fs::metadata(&real).map_err(io)?;
            if ok(&meta.file_type()) {
                Ok(())
            } else {
                Err(HostPathError::TypeCheck {
                    path: path.to_owned(),
                    what,
                })
            }
        };
        let exists = fs::symlink_metadata(&real).is_ok();
        if confined && exists {
            // Checked before anything is looked at or made through it.
            inside(path, &real, &base)?;
        }
        match kind {
            "" => {
                fs::metadata(&real).map_err(io)?;
            }
            "DirectoryOrCreate" | "Directory" => {
                if kind == "DirectoryOrCreate" && !exists {
                    make_dir(path, &real, &base, confined)?;
                }
                check("directory", fs::FileType::is_dir)?;
            }
            "FileOrCreate" | "File" => {
                if kind == "FileOrCreate" && !exists {
                    if confined && let Some(parent) = real.parent() {
                        inside(path, parent, &base)?;
                    }
                    // As the kubelet: the parent must exist.
                    fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(false)
                        .mode(0o644)
                        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                        .open(&real)
                        .map_err(io)?;
                }
                check("file", fs::FileType::is_file)?;
            }
            "Socket" => check("socket file", fs::FileType::is_socket)?,
            "CharDevice" => check("character device", fs::FileType::is_char_device)?,
            "BlockDevice" => check("block device", fs::FileType::is_block_device)?,
            other => return Err(HostPathError::UnknownType(other.to_owned())),
        }
        if confined {
            return inside(path, &real, &base);
        }
        Ok(real)
    }
}

fn join(base: &Path, rest: &Path) -> PathBuf {
    if rest.as_os_str().is_empty() {
        base.to_path_buf()
    } else {
        base.join(rest)
    }
}

/// `real` with symlinks resolved, which must be inside `base`.
fn inside(path: &str, real: &Path, base: &Path) -> Result<PathBuf, HostPathError> {
    let io = |e: std::io::Error| HostPathError::Io {
        path: path.to_owned(),
        what: e.to_string(),
    };
    let base_c = fs::canonicalize(base).map_err(io)?;
    let real_c = fs::canonicalize(real).map_err(io)?;
    if real_c.starts_with(&base_c) {
        Ok(real_c)
    } else {
        Err(HostPathError::Escape {
            path: path.to_owned(),
            real: real_c.display().to_string(),
            base: base_c.display().to_string(),
        })
    }
}

/// Makes directory `real` (mode 0755, as the kubelet): on a confined base
/// element by element below it, never through a symlink.
fn make_dir(path: &str, real: &Path, base: &Path, confined: bool) -> Result<(), HostPathError> {
    let io = |e: std::io::Error| HostPathError::Io {
        path: path.to_owned(),
        what: e.to_string(),
    };
    if !confined {
        use std::os::unix::fs::DirBuilderExt as _;
        return fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(real)
            .map_err(io);
    }
    fs::create_dir_all(base).map_err(io)?;
    let rel = real.strip_prefix(base).unwrap_or(real);
    super::subpath::open(base, &rel.to_string_lossy(), true)
        .map(drop)
        .map_err(|e| match e {
            super::subpath::SubPathError::Escape { real, base, .. } => HostPathError::Escape {
                path: path.to_owned(),
                real,
                base,
            },
            other => HostPathError::Io {
                path: path.to_owned(),
                what: other.to_string(),
            },
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "ferry-node-hp-{name}-{}-{}",
            std::process::id(),
            jiff::Timestamp::now().as_nanosecond()
        ));
        fs::create_dir_all(&d).expect("tmp dir");
        d
    }

    #[test]
    fn maps_and_root() {
        let maps = vec![
            parse_map("/sys/fs/bpf=/sys/fs/bpf/node-1").expect("map"),
            parse_map("/sys=/elsewhere/sys").expect("map"),
            parse_map("/run/ferry/cgroupv2=/sys/fs/cgroup/ferry/node-1").expect("map"),
        ];
        let hp = HostPaths::new(PathBuf::from("/var/lib/n1/host"), maps).expect("host paths");
        let r = |p: &str| hp.resolve(p).expect(p);
        // The longest prefix wins, by whole elements.
        assert_eq!(
            r("/sys/fs/bpf/x"),
            (
                PathBuf::from("/sys/fs/bpf/node-1/x"),
                PathBuf::from("/sys/fs/bpf/node-1")
            )
        );
        assert_eq!(r("/sys/fs/bpf").0, PathBuf::from("/sys/fs/bpf/node-1"));
        assert_eq!(
            r("/sys/fs/bpffs").0,
            PathBuf::from("/elsewhere/sys/fs/bpffs")
        );
        assert_eq!(
            r("/run/ferry/cgroupv2").0,
            PathBuf::from("/sys/fs/cgroup/ferry/node-1")
        );
        // Everything else under the root.
        assert_eq!(
            r("//opt/./cni/bin/").0,
            PathBuf::from("/var/lib/n1/host/opt/cni/bin")
        );
        assert_eq!(r("/").0, PathBuf::from("/var/lib/n1/host"));
        for bad in ["relative", "/a/../../etc", "/a\0b", ""] {
            assert!(
                matches!(hp.resolve(bad), Err(HostPathError::Invalid(_))),
                "{bad:?}"
            );
        }
        assert!(parse_map("/a").is_err());
        assert!(parse_map("a=/b").is_err());
        assert!(parse_map("/a=b").is_err());
        // The default is the real file system.
        assert_eq!(
            HostPaths::default()
                .resolve("/etc/hosts")
                .expect("default")
                .0,
            PathBuf::from("/etc/hosts")
        );
    }

    #[test]
    fn types_are_checked_with_the_kubelets_messages() {
        let root = tmpdir("types");
        let hp = HostPaths::new(root.clone(), Vec::new()).expect("host paths");
        let made = hp.prepare("/a/b/dir", "DirectoryOrCreate").expect("made");
        assert!(made.is_dir() && made.starts_with(fs::canonicalize(&root).expect("c")));
        assert_eq!(
            hp.prepare("/a/b/dir", "File")
                .expect_err("dir as file")
                .to_string(),
            "hostPath type check failed: /a/b/dir is not a file"
        );
        hp.prepare("/a/f", "FileOrCreate").expect("file made");
        assert!(root.join("a/f").is_file());
        assert_eq!(
            hp.prepare("/a/f", "DirectoryOrCreate")
                .expect_err("file as dir")
                .to_string(),
            "hostPath type check failed: /a/f is not a directory"
        );
        assert_eq!(
            hp.prepare("/a/f", "Socket")
                .expect_err("not a socket")
                .to_string(),
            "hostPath type check failed: /a/f is not a socket file"
        );
        assert_eq!(
            hp.prepare("/a/f", "CharDevice")
                .expect_err("not a char device")
                .to_string(),
            "hostPath type check failed: /a/f is not a character device"
        );
        assert_eq!(
            hp.prepare("/a/f", "BlockDevice")
                .expect_err("not a block device")
                .to_string(),
            "hostPath type check failed: /a/f is not a block device"
        );
        assert!(hp.prepare("/missing", "Directory").is_err());
        assert!(hp.prepare("/missing", "").is_err());
        assert!(
            hp.prepare("/nodir/f", "FileOrCreate").is_err(),
            "the parent must exist"
        );
        assert_eq!(
            hp.prepare("/a", "Weird").expect_err("bad type").to_string(),
            "Weird is an invalid volume type"
        );
        let sock = root.join("a/s.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("socket");
        hp.prepare("/a/s.sock", "Socket").expect("a socket");
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn symlinks_do_not_leave_a_private_root() {
        let top = tmpdir("escape");
        let root = top.join("host");
        let outside = top.join("outside");
        fs::create_dir_all(&root).expect("root");
        fs::create_dir_all(&outside).expect("outside");
        symlink(&outside, root.join("out")).expect("link");
        symlink("/", root.join("slash")).expect("link");
        let hp = HostPaths::new(root.clone(), Vec::new()).expect("host paths");
        for (p, kind) in [
            ("/out", "Directory"),
            ("/out/new", "DirectoryOrCreate"),
            ("/slash/etc", "Directory"),
            ("/out/f", "FileOrCreate"),
        ] {
            let e = hp.prepare(p, kind).expect_err(p);
            assert!(matches!(e, HostPathError::Escape { .. }), "{p}: {e}");
        }
        assert!(!outside.join("new").exists() && !outside.join("f").exists());
        // A symlink that stays inside is fine.
        fs::create_dir_all(root.join("real")).expect("real");
        symlink("real", root.join("alias")).expect("link");
        assert_eq!(
            hp.prepare("/alias", "Directory").expect("inside"),
            fs::canonicalize(root.join("real")).expect("c")
        );
        let _ = fs::remove_dir_all(&top);
    }
}
