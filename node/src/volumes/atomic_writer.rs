//! The kubelet's atomic writer for configMap, secret, downwardAPI and
//! projected volumes: a reader never sees a half-written set of files.
//!
//! ```text
//! <dir>/..2026_12_04_03_10_00.123456789_1/   one complete set of files (the payload)
//! <dir>/..data -> ..2026_12_04_03_10_00.123456789_1
//! <dir>/<key>  -> ..data/<key>                one symlink per top-level payload name
//! ```
//!
//! An update writes a new timestamped directory, points `..data_tmp` at
//! it and renames that over `..data` (rename(2) is atomic), adds the
//! symlinks of new names, removes those of names gone, then removes the
//! old directory. A payload equal to what is there (contents and modes)
//! writes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The symlink naming the current set.
pub const DATA: &str = "..data";
const DATA_TMP: &str = "..data_tmp";
/// Longest payload path and path element (as the kubelet's validation).
const MAX_PATH: usize = 4096;
const MAX_ELEMENT: usize = 255;

/// One file of a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProjection {
    pub data: Vec<u8>,
    /// Permission bits (e.g. `0o644`).
    pub mode: u32,
}

/// Relative path (`a`, `dir/b`) to file.
pub type Payload = BTreeMap<String, FileProjection>;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("invalid path {path:?}: {reason}")]
    BadPath { path: String, reason: &'static str },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> WriteError {
    let path = path.to_path_buf();
    move |source| WriteError::Io { what, path, source }
}

/// Checks a payload path as the kubelet does: relative, no `..` element,
/// not starting with `..`, no NUL, bounded length.
pub fn validate_path(path: &str) -> Result<(), WriteError> {
    let bad = |reason| {
        Err(WriteError::BadPath {
            path: path.to_owned(),
            reason,
        })
    };
    if path.is_empty() {
        return bad("must not be empty");
    }
    if path.len() > MAX_PATH {
        return bad("longer than 4096 bytes");
    }
    if path.contains('\0') {
        return bad("must not contain NUL");
    }
    if path.starts_with('/') {
        return bad("must be relative");
    }
    if path.starts_with("..") {
        return bad("must not start with '..'");
    }
    for element in path.split('/') {
        if element == ".." {
            return bad("must not contain '..'");
        }
        if element.len() > MAX_ELEMENT {
            return bad("has an element longer than 255 bytes");
        }
    }
    Ok(())
}

/// The first element of a payload path (what gets a symlink in `dir`).
fn top(path: &str) -> &str {
    path.split('/')
        .find(|e| !e.is_empty() && *e != ".")
        .unwrap_or(path)
}

/// Makes `dir` hold exactly `payload`; returns whether anything changed.
pub fn write(dir: &Path, payload: &Payload) -> Result<bool, WriteError> {
    for path in payload.keys() {
        validate_path(path)?;
    }
    fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let data_link = dir.join(DATA);
    let old = fs::read_link(&data_link).ok();
    if let Some(old) = &old
        && read_set(&dir.join(old)).is_ok_and(|current| current == *payload)
    {
        return Ok(false);
    }
    let new_name = new_set_name();
    let new_dir = dir.join(&new_name);
    fs::create_dir(&new_dir).map_err(io("creating", &new_dir))?;
    let written = write_set(&new_dir, payload);
    if let Err(e) = written {
        let _ = fs::remove_dir_all(&new_dir);
        return Err(e);
    }
    let tmp = dir.join(DATA_TMP);
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&new_name, &tmp).map_err(io("linking", &tmp))?;
    fs::rename(&tmp, &data_link).map_err(io("renaming to", &data_link))?;
    // The user-visible names: one symlink per top-level element.
    let wanted: BTreeSet<&str> = payload.keys().map(|p| top(p)).collect();
    for name in &wanted {
        let link = dir.join(name);
        if fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new(DATA).join(name), &link)
                .map_err(io("linking", &link))?;
        }
    }
    // What is no longer in the payload, and every older set.
    for entry in fs::read_dir(dir).map_err(io("reading", dir))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.starts_with("..") {
            if name != DATA && name != new_name {
                let _ = fs::remove_dir_all(&path);
            }
        } else if !wanted.contains(name.as_str()) {
            let _ = fs::remove_file(&path);
        }
    }
    Ok(true)
}

/// `..<UTC time>.<nanoseconds>_<counter>`: unique within this process.
fn new_set_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = jiff::Timestamp::now();
    format!(
        "..{}.{:09}_{}",
        now.strftime("%Y_%m_%d_%H_%M_%S"),
        now.subsec_nanosecond(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn write_set(dir: &Path, payload: &Payload) -> Result<(), WriteError> {
    for (rel, file) in payload {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io("creating", parent))?;
        }
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(file.mode & 0o7777)
            .open(&path)
            .map_err(io("creating", &path))?;
        f.write_all(&file.data).map_err(io("writing", &path))?;
        // The umask may have taken bits away.
        f.set_permissions(fs::Permissions::from_mode(file.mode & 0o7777))
            .map_err(io("setting the mode of", &path))?;
    }
    Ok(())
}

/// The files of a set, as a payload (regular files only).
fn read_set(dir: &Path) -> std::io::Result<Payload> {
    let mut out = Payload::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in fs::read_dir(dir.join(&rel))? {
            let entry = entry?;
            let rel = rel.join(entry.file_name());
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push(rel);
            } else if meta.is_file() {
                let data = fs::read(dir.join(&rel))?;
                let key = rel
                    .components()
                    .filter_map(|c| match c {
                        Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
                        _ => None,
                    })
                    .collect::<Vec<_>>()
                    .join("/");
                out.insert(
                    key,
                    FileProjection {
                        data,
                        mode: meta.permissions().mode() & 0o7777,
                    },
                );
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "ferry-node-aw-{name}-{}-{}",
            std::process::id(),
            jiff::Timestamp::now().as_nanosecond()
        ));
        fs::create_dir_all(&d).expect("tmp dir");
        d
    }

    fn file(data: &str, mode: u32) -> FileProjection {
        FileProjection {
            data: data.as_bytes().to_vec(),
            mode,
        }
    }

    #[test]
    fn paths_are_validated_like_the_kubelet() {
        for bad in [
            "", "/abs", "..", "../x", "a/../b", "..hidden", "a\0b", "a/..",
        ] {
            assert!(validate_path(bad).is_err(), "{bad:?}");
        }
        assert!(validate_path(&"x".repeat(256)).is_err());
        for good in ["a", "a/b", "a..b", "dir/.x", "a/b/c.txt"] {
            assert!(validate_path(good).is_ok(), "{good:?}");
        }
        let d = tmpdir("bad");
        let mut p = Payload::new();
        p.insert("../escape".into(), file("x", 0o644));
        assert!(write(&d, &p).is_err());
        assert!(!d.parent().expect("parent").join("escape").exists());
        assert!(
            fs::read_dir(&d).expect("dir").next().is_none(),
            "nothing written"
        );
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn writes_swaps_and_cleans_atomically() {
        let d = tmpdir("swap");
        let mut p = Payload::new();
        p.insert("a".into(), file("one", 0o600));
        p.insert("sub/b".into(), file("two", 0o444));
        assert!(write(&d, &p).expect("first write"));
        assert_eq!(fs::read_to_string(d.join("a")).expect("a"), "one");
        assert_eq!(fs::read_to_string(d.join("sub/b")).expect("b"), "two");
        assert_eq!(fs::metadata(d.join("a")).expect("a").mode() & 0o7777, 0o600);
        assert_eq!(
            fs::metadata(d.join("sub/b")).expect("b").mode() & 0o7777,
            0o444
        );
        assert_eq!(
            fs::read_link(d.join("a")).expect("a is a link"),
            Path::new("..data/a")
        );
        let first = fs::read_link(d.join(DATA)).expect("..data");

        // The same payload: nothing written, the set stays.
        assert!(!write(&d, &p).expect("same"));
        assert_eq!(fs::read_link(d.join(DATA)).expect("..data"), first);

        // A mode change alone is a change.
        p.insert("a".into(), file("one", 0o640));
        assert!(write(&d, &p).expect("mode change"));
        assert_eq!(fs::metadata(d.join("a")).expect("a").mode() & 0o7777, 0o640);

        // New content, a name gone, a name added: a new set, the old one
        // and the stale link removed.
        let mut q = Payload::new();
        q.insert("a".into(), file("uno", 0o644));
        q.insert("c".into(), file("three", 0o644));
        assert!(write(&d, &q).expect("update"));
        let now = fs::read_link(d.join(DATA)).expect("..data");
        assert_ne!(now, first);
        assert_eq!(fs::read_to_string(d.join("a")).expect("a"), "uno");
        assert_eq!(fs::read_to_string(d.join("c")).expect("c"), "three");
        assert!(
            fs::symlink_metadata(d.join("sub")).is_err(),
            "stale link left"
        );
        let mut names: Vec<String> = fs::read_dir(&d)
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut want = vec![
            DATA.to_owned(),
            now.to_string_lossy().into_owned(),
            "a".into(),
            "c".into(),
        ];
        want.sort();
        assert_eq!(names, want);

        // An empty payload leaves an empty view.
        assert!(write(&d, &Payload::new()).expect("empty"));
        assert!(fs::symlink_metadata(d.join("a")).is_err());
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_reader_always_sees_a_whole_set() {
        // A reader racing the writer reads both files through `..data`
        // in one resolution of the link: they always belong together.
        let d = tmpdir("race");
        let payload = |n: usize| {
            let mut p = Payload::new();
            p.insert("x".into(), file(&n.to_string(), 0o644));
            p.insert("y".into(), file(&n.to_string(), 0o644));
            p
        };
        write(&d, &payload(0)).expect("first");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let d = d.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut seen = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let Ok(set) = fs::read_link(d.join(DATA)) else {
                        continue;
                    };
                    let x = fs::read_to_string(d.join(&set).join("x"));
                    let y = fs::read_to_string(d.join(&set).join("y"));
                    match (x, y) {
                        (Ok(x), Ok(y)) => {
                            assert_eq!(x, y, "a half-written set");
                            seen += 1;
                        }
                        // Only a set a later swap replaced (and that is
                        // being removed) may miss a file.
                        (Ok(_), Err(_)) | (Err(_), Ok(_)) => {
                            let current = fs::read_link(d.join(DATA)).ok();
                            assert_ne!(current, Some(set), "a set named before it was whole");
                        }
                        (Err(_), Err(_)) => {}
                    }
                }
                seen
            })
        };
        for n in 1..200 {
            write(&d, &payload(n)).expect("update");
        }
        stop.store(true, Ordering::Relaxed);
        assert!(reader.join().expect("reader") > 0);
        let _ = fs::remove_dir_all(&d);
    }
}
