//! An image's files over the node's: a container "of an image root" (an
//! `--images` entry with `root`, e.g. an unpacked OCI layer) sees each file
//! of the root at its path, over the node's own files, and the rest of the
//! node's file system as every process container does.
//!
//! Planned by ferry-node when it starts the container ([`plan`]): the root
//! is walked (at most [`MAX_ENTRIES`] entries, [`MAX_DEPTH`] levels deep,
//! symlinks never followed) and each file (regular file or symlink, by its
//! path in the image; directories only hold them, an empty one is ignored)
//! goes on the deepest directory above its path that exists on the node.
//! Those directories, minus any below another of them, are the overlays:
//! the container's process mounts on each, first, before anything else it
//! mounts ([`mount`], from [`crate::process::container_init`]), a
//! read-only overlayfs with `lowerdir=<root>/<dir>:<dir>`, the image's
//! layer first so its files win. Overlays go on shallower directories
//! first, so one on a directory below another (through a symlink of the
//! node's, e.g. `/bin` to `usr/bin`) stacks on it.
//!
//! What the container sees in an overlaid directory is the node's
//! directory as one file system: mounts the node has below it (submounts)
//! are hidden there, and all of it is read-only in the container.
//! Volumes are unaffected: their sources are taken before the overlays
//! are mounted ([`crate::volumes::mount::take_source`]).
//!
//! Refused, with a message naming the file or directory: a file that would
//! need an overlay on `/` itself (a top-level file, or a top-level
//! directory the node does not have), or on `/proc`, `/sys` or `/dev`; a
//! device, FIFO or socket in the image; a root or an overlaid directory
//! whose path overlayfs options cannot hold (`:` `,` `\` or a newline, or
//! not UTF-8); an image root inside a directory it overlays (overlayfs
//! refuses layers inside one another).
//!
//! **What it owns:** nothing on the node. **What it must not touch:** the
//! image root (only read: never written, its symlinks never followed) and
//! the node's directories (only looked at; the overlays are mounted in
//! the container's own mount namespace, never the node's).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use rustix::mount::MountFlags;

/// Most entries (files, symlinks and directories) an image root may hold.
pub const MAX_ENTRIES: usize = 10_000;
/// Most levels of directories in an image root.
pub const MAX_DEPTH: usize = 32;

/// Top-level directories of the node's never overlaid: kernel file systems
/// and their submounts.
const NEVER: &[&str] = &["proc", "sys", "dev"];

/// One overlay: the image's directory over the node's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlay {
    /// `<root>/<target>`: the image's files for `target`.
    pub image_dir: PathBuf,
    /// The node's directory (absolute) the overlay is mounted on.
    pub target: PathBuf,
}

/// Why an image's files cannot be laid over the node's.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageLayerError {
    #[error("image root {root}: {what}")]
    Root { root: PathBuf, what: String },
    #[error(
        "image root {root} holds more than {limit} entries (ferry-node's limit): keep the image's \
         files fewer"
    )]
    TooManyEntries { root: PathBuf, limit: usize },
    #[error("image root {root}: {path} is more than {limit} directories deep (ferry-node's limit)")]
    TooDeep {
        root: PathBuf,
        path: PathBuf,
        limit: usize,
    },
    #[error(
        "the image's file {file} is at the top level: an image's files go only into directories \
         the node has, never on / itself; move it into a directory"
    )]
    TopLevelFile { file: PathBuf },
    #[error(
        "the image's top-level directory {dir} does not exist on the node (needed by the \
         image's file {file}): an image's files go only into directories the node has, never on \
         / itself; make {dir} on the node, or move the file in the image"
    )]
    TopLevelDir { dir: PathBuf, file: PathBuf },
    #[error(
        "the image's file {file} would go into {dir}, a kernel file system ferry-node never \
         overlays; remove it from the image"
    )]
    KernelDir { dir: PathBuf, file: PathBuf },
    #[error(
        "the image's file {file} is a {kind}: an image root holds only regular files, symlinks \
         and directories"
    )]
    Special { file: PathBuf, kind: &'static str },
    #[error(
        "{path:?} cannot be named in overlayfs mount options (it holds ':', ',', '\\', a newline \
         or bytes that are not UTF-8): rename it"
    )]
    BadPath { path: PathBuf },
    #[error(
        "the image root {root} is inside {target}, which the image overlays: overlayfs refuses \
         a layer inside another; keep the image root outside the node's directories the image \
         has files in"
    )]
    Overlapping { root: PathBuf, target: PathBuf },
    #[error("bad --image-overlay {0:?}: want IMAGE_DIR:TARGET, both absolute")]
    BadArg(String),
    #[error("mounting the image's overlay on {target} (lowerdir={image_dir}:{target}): {source}")]
    Mount {
        image_dir: PathBuf,
        target: PathBuf,
        source: rustix::io::Errno,
    },
}

impl Overlay {
    /// `IMAGE_DIR:TARGET`, as `container-init --image-overlay` takes it.
    pub fn to_arg(&self) -> String {
        format!("{}:{}", self.image_dir.display(), self.target.display())
    }

    /// Reads an `IMAGE_DIR:TARGET` argument (neither part may hold what
    /// overlayfs options cannot).
    pub fn parse_arg(arg: &str) -> Result<Overlay, ImageLayerError> {
        let bad = || ImageLayerError::BadArg(arg.to_owned());
        let (image_dir, target) = arg.split_once(':').ok_or_else(bad)?;
        let o = Overlay {
            image_dir: PathBuf::from(image_dir),
            target: PathBuf::from(target),
        };
        if !o.image_dir.is_absolute() || !o.target.is_absolute() {
            return Err(bad());
        }
        nameable(&o.image_dir)?;
        nameable(&o.target)?;
        Ok(o)
    }

    /// The overlayfs options: the image's layer over the node's directory.
    pub fn options(&self) -> String {
        format!(
            "lowerdir={}:{}",
            self.image_dir.display(),
            self.target.display()
        )
    }
}

/// Checks an image root as an `--images` file names it: an absolute,
/// existing directory that overlayfs options can name.
pub fn check_root(root: &Path) -> Result<(), ImageLayerError> {
    let fail = |what: String| ImageLayerError::Root {
        root: root.to_path_buf(),
        what,
    };
    if !root.is_absolute() {
        return Err(fail(
            "must be an absolute path (e.g. /var/lib/ferry/images/app)".into(),
        ));
    }
    nameable(root)?;
    match std::fs::metadata(root) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(fail(
            "is not a directory: unpack the image's files into a directory and name it".into(),
        )),
        Err(e) => Err(fail(format!(
            "{e}: unpack the image's files there, or fix the path"
        ))),
    }
}

/// The overlays that show the files of the image root `root` over the
/// node's, in the order they are mounted.
pub fn plan(root: &Path) -> Result<Vec<Overlay>, ImageLayerError> {
    plan_on(root, Path::new("/"), MAX_ENTRIES, MAX_DEPTH)
}

/// [`plan`] with the node's file system at `node` (tests use a directory)
/// and the limits given.
fn plan_on(
    root: &Path,
    node: &Path,
    max_entries: usize,
    max_depth: usize,
) -> Result<Vec<Overlay>, ImageLayerError> {
    check_root(root)?;
    let files = walk(root, max_entries, max_depth)?;
    // Image-relative directory → the deepest directory above it the node
    // has (image-relative too), looked up once per directory.
    let mut deepest: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
    let mut targets: BTreeSet<PathBuf> = BTreeSet::new();
    for file in &files {
        let shown = Path::new("/").join(file);
        let parent = file.parent().unwrap_or(Path::new(""));
        if parent.as_os_str().is_empty() {
            return Err(ImageLayerError::TopLevelFile { file: shown });
        }
        let target = match deepest.get(parent) {
            Some(t) => t.clone(),
            None => {
                let mut cur = parent.to_path_buf();
                while !node.join(&cur).is_dir() {
                    if !cur.pop() || cur.as_os_str().is_empty() {
                        let top: PathBuf = file.components().take(1).collect();
                        return Err(ImageLayerError::TopLevelDir {
                            dir: Path::new("/").join(top),
                            file: shown,
                        });
                    }
                }
                deepest.insert(parent.to_path_buf(), cur.clone());
                cur
            }
        };
        if let Some(Component::Normal(top)) = target.components().next()
            && NEVER.iter().any(|n| top == *n)
        {
            return Err(ImageLayerError::KernelDir {
                dir: Path::new("/").join(top),
                file: shown,
            });
        }
        targets.insert(target);
    }
    // A directory below another is in that one's overlay already. (Paths
    // order by components: an ancestor comes before its descendants.)
    let mut kept: Vec<PathBuf> = Vec::new();
    for t in targets {
        if !kept.iter().any(|k| t.starts_with(k)) {
            kept.push(t);
        }
    }
    let root_real = std::fs::canonicalize(root).map_err(|e| ImageLayerError::Root {
        root: root.to_path_buf(),
        what: e.to_string(),
    })?;
    let mut out = Vec::with_capacity(kept.len());
    for rel in kept {
        let target = Path::new("/").join(&rel);
        let image_dir = root.join(&rel);
        nameable(&target)?;
        nameable(&image_dir)?;
        // As the kernel sees it: through the node's symlinks.
        let real = std::fs::canonicalize(node.join(&rel)).map_err(|e| ImageLayerError::Root {
            root: root.to_path_buf(),
            what: format!("{}: {e}", target.display()),
        })?;
        if root_real.starts_with(&real) {
            return Err(ImageLayerError::Overlapping {
                root: root.to_path_buf(),
                target,
            });
        }
        out.push((real.components().count(), Overlay { image_dir, target }));
    }
    // Shallower first: an overlay mounted later on a directory below an
    // earlier one stacks on it, one mounted earlier would be hidden.
    out.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.target.cmp(&b.1.target)));
    let out: Vec<Overlay> = out.into_iter().map(|(_, o)| o).collect();
    tracing::debug!(
        root = %root.display(),
        files = files.len(),
        overlays = out.len(),
        "image overlays planned"
    );
    Ok(out)
}

/// Every file (not directory) of the image root, by its image-relative
/// path, sorted; symlinks are files, never followed.
fn walk(
    root: &Path,
    max_entries: usize,
    max_depth: usize,
) -> Result<Vec<PathBuf>, ImageLayerError> {
    let read = |dir: &Path, e: std::io::Error| ImageLayerError::Root {
        root: root.to_path_buf(),
        what: format!("reading {}: {e}", dir.display()),
    };
    let mut files = Vec::new();
    let mut seen = 0usize;
    // (image-relative directory, its depth)
    let mut stack: Vec<(PathBuf, usize)> = vec![(PathBuf::new(), 0)];
    while let Some((rel, depth)) = stack.pop() {
        let dir = root.join(&rel);
        for entry in std::fs::read_dir(&dir).map_err(|e| read(&dir, e))? {
            let entry = entry.map_err(|e| read(&dir, e))?;
            seen += 1;
            if seen > max_entries {
                return Err(ImageLayerError::TooManyEntries {
                    root: root.to_path_buf(),
                    limit: max_entries,
                });
            }
            let path = rel.join(entry.file_name());
            let ft = entry.file_type().map_err(|e| read(&dir, e))?;
            if ft.is_dir() {
                if depth + 1 > max_depth {
                    return Err(ImageLayerError::TooDeep {
                        root: root.to_path_buf(),
                        path: Path::new("/").join(path),
                        limit: max_depth,
                    });
                }
                stack.push((path, depth + 1));
            } else if ft.is_file() || ft.is_symlink() {
                files.push(path);
            } else {
                use std::os::unix::fs::FileTypeExt as _;
                let kind = if ft.is_char_device() {
                    "character device (an overlayfs whiteout, if 0/0)"
                } else if ft.is_block_device() {
                    "block device"
                } else if ft.is_fifo() {
                    "FIFO"
                } else {
                    "socket"
                };
                return Err(ImageLayerError::Special {
                    file: Path::new("/").join(path),
                    kind,
                });
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Refuses a path that overlayfs mount options cannot name.
fn nameable(path: &Path) -> Result<(), ImageLayerError> {
    match path.to_str() {
        Some(s) if !s.contains([':', ',', '\\', '\n']) => Ok(()),
        _ => Err(ImageLayerError::BadPath {
            path: path.to_path_buf(),
        }),
    }
}

/// Mounts `overlay` in the calling process's mount namespace (the
/// container's: [`crate::process::container_init`] refuses to run in its
/// parent's): a read-only overlayfs on the target with the image's
/// directory over the target's own contents. Mounts below the target are
/// hidden by it.
pub fn mount(overlay: &Overlay) -> Result<(), ImageLayerError> {
    let fail = |source| ImageLayerError::Mount {
        image_dir: overlay.image_dir.clone(),
        target: overlay.target.clone(),
        source,
    };
    // The paths were checked: they hold no NUL (they are UTF-8 without
    // the separators overlayfs uses; a NUL cannot be in a path).
    let options =
        std::ffi::CString::new(overlay.options()).map_err(|_| fail(rustix::io::Errno::INVAL))?;
    rustix::mount::mount(
        "overlay",
        &overlay.target,
        "overlay",
        MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV,
        options.as_c_str(),
    )
    .map_err(fail)?;
    tracing::debug!(
        image_dir = %overlay.image_dir.display(),
        target = %overlay.target.display(),
        "image overlay mounted"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// A fresh directory for one test: `image` (the image root) and `node`
    /// (the node's file system) inside.
    fn world(name: &str) -> (PathBuf, PathBuf) {
        let base = std::env::temp_dir().join(format!(
            "ferry-node-image-layer-{}-{name}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&base);
        let (image, node) = (base.join("image"), base.join("node"));
        fs::create_dir_all(&image).expect("image dir");
        fs::create_dir_all(&node).expect("node dir");
        (image, node)
    }

    fn file(root: &Path, rel: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().expect("parent")).expect("dirs");
        fs::write(p, rel).expect("file");
    }

    fn dirs(root: &Path, rels: &[&str]) {
        for r in rels {
            fs::create_dir_all(root.join(r)).expect("dir");
        }
    }

    fn plan_in(image: &Path, node: &Path) -> Result<Vec<(String, String)>, ImageLayerError> {
        plan_on(image, node, MAX_ENTRIES, MAX_DEPTH).map(|v| {
            v.into_iter()
                .map(|o| {
                    let img = o
                        .image_dir
                        .strip_prefix(image)
                        .expect("under the image")
                        .display()
                        .to_string();
                    (img, o.target.display().to_string())
                })
                .collect()
        })
    }

    #[test]
    fn files_go_on_the_deepest_existing_directories() {
        let (image, node) = world("group");
        dirs(&node, &["usr/bin", "usr/lib", "opt", "etc"]);
        file(&image, "usr/bin/app");
        file(&image, "usr/bin/tool");
        std::os::unix::fs::symlink("app", image.join("usr/bin/app-link")).expect("symlink");
        file(&image, "opt/ferry/cni/ferry-cni");
        file(&image, "opt/ferry/cni/README");
        file(&image, "etc/app/config.yaml");
        // Empty directories are no files: nothing to show.
        dirs(&image, &["var/empty/deeper", "srv"]);
        assert_eq!(
            plan_in(&image, &node).expect("plan"),
            [
                ("etc".into(), "/etc".into()),
                ("opt".into(), "/opt".into()),
                ("usr/bin".into(), "/usr/bin".into()),
            ]
        );
    }

    #[test]
    fn nested_directories_collapse_into_the_shallowest() {
        let (image, node) = world("nested");
        dirs(&node, &["usr/bin", "usr/share/doc"]);
        file(&image, "usr/bin/app");
        file(&image, "usr/share/doc/app/README");
        // /usr/local does not exist on the node: /usr takes it, and with
        // it usr/bin and usr/share/doc.
        file(&image, "usr/local/bin/helper");
        assert_eq!(
            plan_in(&image, &node).expect("plan"),
            [("usr".into(), "/usr".into())]
        );
    }

    #[test]
    fn a_file_over_a_node_directory_goes_on_its_parent() {
        let (image, node) = world("file-over-dir");
        dirs(&node, &["usr/bin/app"]);
        file(&image, "usr/bin/app");
        assert_eq!(
            plan_in(&image, &node).expect("plan"),
            [("usr/bin".into(), "/usr/bin".into())]
        );
    }

    #[test]
    fn the_root_is_never_overlaid() {
        let (image, node) = world("slash");
        dirs(&node, &["usr/bin"]);
        file(&image, "usr/bin/app");
        file(&image, "nowhere/deeper/file");
        let err = plan_in(&image, &node).expect_err("no /nowhere on the node");
        assert_eq!(
            err,
            ImageLayerError::TopLevelDir {
                dir: "/nowhere".into(),
                file: "/nowhere/deeper/file".into()
            }
        );
        let msg = err.to_string();
        assert!(
            msg.contains("top-level directory /nowhere does not exist on the node"),
            "{msg}"
        );
        let (image, node) = world("slash-file");
        file(&image, "hello.txt");
        assert_eq!(
            plan_in(&image, &node),
            Err(ImageLayerError::TopLevelFile {
                file: "/hello.txt".into()
            })
        );
    }

    #[test]
    fn kernel_file_systems_are_refused() {
        let (image, node) = world("kernel");
        dirs(&node, &["dev", "proc"]);
        file(&image, "dev/null-ish");
        assert!(matches!(
            plan_in(&image, &node),
            Err(ImageLayerError::KernelDir { dir, .. }) if dir == Path::new("/dev")
        ));
    }

    #[test]
    fn limits() {
        let (image, node) = world("limits");
        dirs(&node, &["usr"]);
        for i in 0..5 {
            file(&image, &format!("usr/f{i}"));
        }
        // usr and its 5 files: 6 entries.
        assert!(plan_on(&image, &node, 6, MAX_DEPTH).is_ok());
        let err = plan_on(&image, &node, 5, MAX_DEPTH).expect_err("too many");
        assert_eq!(
            err,
            ImageLayerError::TooManyEntries {
                root: image.clone(),
                limit: 5
            }
        );
        assert!(err.to_string().contains("more than 5 entries"), "{err}");

        let (image, node) = world("depth");
        dirs(&node, &["usr"]);
        file(&image, "usr/a/b/c/file");
        // usr/a/b/c is four levels.
        assert!(plan_on(&image, &node, MAX_ENTRIES, 4).is_ok());
        let err = plan_on(&image, &node, MAX_ENTRIES, 3).expect_err("too deep");
        assert!(
            matches!(&err, ImageLayerError::TooDeep { path, limit: 3, .. } if path == Path::new("/usr/a/b/c")),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("more than 3 directories deep"),
            "{err}"
        );
    }

    #[test]
    fn paths_overlayfs_cannot_name_are_refused() {
        let (image, node) = world("chars");
        dirs(&node, &["odd:dir"]);
        file(&image, "odd:dir/file");
        assert_eq!(
            plan_in(&image, &node),
            Err(ImageLayerError::BadPath {
                path: "/odd:dir".into()
            })
        );
        for bad in ["a,b", "a:b", "a\\b", "a\nb"] {
            let (base, _) = world("chars-root");
            let root = base.join(bad);
            fs::create_dir_all(&root).expect("root");
            assert_eq!(
                check_root(&root),
                Err(ImageLayerError::BadPath { path: root.clone() }),
                "{bad:?}"
            );
        }
        // A file's own name is not in the options.
        let (image, node) = world("chars-file");
        dirs(&node, &["usr"]);
        file(&image, "usr/a,b:c");
        assert_eq!(
            plan_in(&image, &node).expect("plan"),
            [("usr".into(), "/usr".into())]
        );
    }

    #[test]
    fn special_files_and_bad_roots_are_refused() {
        let (image, node) = world("special");
        dirs(&node, &["run"]);
        fs::create_dir_all(image.join("run")).expect("dir");
        let sock = image.join("run/app.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("socket");
        assert!(matches!(
            plan_in(&image, &node),
            Err(ImageLayerError::Special { kind: "socket", .. })
        ));
        assert!(matches!(
            check_root(Path::new("relative/dir")),
            Err(ImageLayerError::Root { what, .. }) if what.contains("absolute")
        ));
        assert!(matches!(
            check_root(&node.join("missing")),
            Err(ImageLayerError::Root { .. })
        ));
    }

    #[test]
    fn an_image_root_inside_its_target_is_refused() {
        let (image, _) = world("overlap");
        // The node's file system is the test's directory, which holds the
        // image root at /image; the image's file image/x/file goes on the
        // node's /image (there is no /image/x), the root's own directory.
        let base = image.parent().expect("base").to_path_buf();
        file(&image, "image/x/file");
        assert_eq!(
            plan_on(&image, &base, MAX_ENTRIES, MAX_DEPTH),
            Err(ImageLayerError::Overlapping {
                root: image.clone(),
                target: "/image".into()
            })
        );
    }

    #[test]
    fn symlinked_targets_go_shallowest_first() {
        let (image, node) = world("symlinked");
        dirs(&node, &["usr/lib/modules", "usr/bin"]);
        std::os::unix::fs::symlink("usr/lib", node.join("lib")).expect("symlink");
        file(&image, "lib/modules/a.ko");
        file(&image, "usr/lib/libx.so");
        // /lib/modules is /usr/lib/modules on the node: after /usr/lib.
        assert_eq!(
            plan_in(&image, &node).expect("plan"),
            [
                ("usr/lib".into(), "/usr/lib".into()),
                ("lib/modules".into(), "/lib/modules".into()),
            ]
        );
    }

    #[test]
    fn overlay_arguments() {
        let o = Overlay {
            image_dir: "/img/usr".into(),
            target: "/usr".into(),
        };
        assert_eq!(o.to_arg(), "/img/usr:/usr");
        assert_eq!(o.options(), "lowerdir=/img/usr:/usr");
        assert_eq!(Overlay::parse_arg(&o.to_arg()), Ok(o));
        for bad in ["/img", "img:/usr", "/img:usr", "/a:/b:/c", "/a,b:/c"] {
            assert!(Overlay::parse_arg(bad).is_err(), "{bad}");
        }
    }
}
