//! The data dir's permissions: it holds every object (secrets of the
//! cluster's users among them), the token file and the CA key, so as etcd
//! does with its own, the dir is created 0700 and every file in it 0600. An
//! existing dir with looser modes is tightened at start, with a warning.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Mode of the data dir and of every dir in it.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file in the data dir.
pub const FILE_MODE: u32 = 0o600;
/// How deep the start-up walk goes (the layout is two levels deep).
const MAX_DEPTH: usize = 8;

#[derive(Debug, Error)]
#[error("{path}: {source}")]
pub struct DataDirError {
    pub path: PathBuf,
    pub source: io::Error,
}

fn err(path: &Path) -> impl FnOnce(io::Error) -> DataDirError + '_ {
    move |source| DataDirError {
        path: path.into(),
        source,
    }
}

/// Writes `contents` to `path` readable by its owner alone (0600): written
/// aside, synced and renamed into place, so a reader (or a crash) sees the
/// old file or the new one, never half of either.
pub fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    let mut staged = path.as_os_str().to_owned();
    staged.push(".tmp");
    let staged = PathBuf::from(staged);
    // A file a crash left keeps its mode when reopened: start anew.
    let _ = fs::remove_file(&staged);
    let mut f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(FILE_MODE)
        .open(&staged)?;
    f.write_all(contents)?;
    f.sync_all()?;
    fs::rename(&staged, path)
}

/// Creates `dir` (0700) or tightens an existing one: the dir and the dirs
/// in it to 0700, its files to 0600. Symbolic links are left alone.
pub fn prepare(dir: &Path) -> Result<(), DataDirError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(err(dir))?;
    tighten(dir, 0)
}

fn tighten(path: &Path, depth: usize) -> Result<(), DataDirError> {
    let meta = fs::symlink_metadata(path).map_err(err(path))?;
    let want = if meta.is_dir() {
        DIR_MODE
    } else if meta.is_file() {
        FILE_MODE
    } else {
        return Ok(());
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & !want != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(want)).map_err(err(path))?;
        tracing::warn!(
            path = %path.display(),
            was = format!("{mode:o}"),
            now = format!("{want:o}"),
            "the data dir was readable by other users; tightened its mode"
        );
    }
    if meta.is_dir() && depth < MAX_DEPTH {
        for entry in fs::read_dir(path).map_err(err(path))? {
            let entry = entry.map_err(err(path))?;
            tighten(&entry.path(), depth + 1)?;
        }
    }
    Ok(())
}

/// Creates `path` empty with mode 0600 when missing, so a file another
/// library then opens (SQLite's database, whose `-wal` and `-shm` files
/// take its mode) is never readable by other users.
pub fn private_file(path: &Path) -> Result<(), DataDirError> {
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(FILE_MODE)
        .open(path)
        .map(drop)
        .map_err(err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn a_loose_data_dir_is_tightened() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("data");
        fs::create_dir_all(dir.join("pki")).expect("mkdir");
        fs::write(dir.join("state.db"), b"").expect("write");
        fs::write(dir.join("pki/ca.key"), b"").expect("write");
        for p in [&dir, &dir.join("pki")] {
            fs::set_permissions(p, fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        fs::set_permissions(dir.join("state.db"), fs::Permissions::from_mode(0o644))
            .expect("chmod");
        prepare(&dir).expect("prepare");
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("pki")), 0o700);
        assert_eq!(mode(&dir.join("state.db")), 0o600);
        assert_eq!(mode(&dir.join("pki/ca.key")), 0o600);
    }

    #[test]
    fn a_new_data_dir_and_its_files_are_private() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("a/b");
        prepare(&dir).expect("prepare");
        assert_eq!(mode(&dir), 0o700);
        private_file(&dir.join("state.db")).expect("create");
        assert_eq!(mode(&dir.join("state.db")), 0o600);
    }
}
