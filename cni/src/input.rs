//! Bounded reading of what the plugin is handed: the network config on
//! stdin and the files a config or the environment names (`CNI_NETNS`,
//! `ipam.resolvConf`, the kubeconfig).
//!
//! Nothing is read without a limit, and a named file is first opened with
//! `O_PATH`, which never blocks and has no side effect whatever the file is
//! (a FIFO, a device, a directory): its type is checked on that handle, and
//! only then is the very same inode reopened for reading through
//! `/proc/self/fd`, so nothing can swap the file in between.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use nix::fcntl::OFlag;

use crate::error::{Error, Result};

/// The most the plugin reads from stdin: 1 MiB. A conflist entry is a few
/// hundred bytes; the largest legitimate input is GC's
/// `cni.dev/valid-attachments`, about 100 bytes per attachment, so this
/// holds some 10,000 attachments on one node.
pub const STDIN_LIMIT: u64 = 1 << 20;
/// The most read of `ipam.resolvConf` (glibc reads only the first few
/// nameservers and search domains anyway).
pub const RESOLV_CONF_LIMIT: u64 = 64 << 10;
/// The most a kubeconfig may hold (embedded certificates included).
pub const KUBECONFIG_LIMIT: u64 = 1 << 20;

/// Reads the network config from `r`, at most [`STDIN_LIMIT`] bytes.
/// Larger input is refused as an invalid config (7) after reading one byte
/// past the limit: the rest is never read.
pub fn read_stdin(r: impl Read) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    r.take(STDIN_LIMIT + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io("reading the network config from stdin", e))?;
    if buf.len() as u64 > STDIN_LIMIT {
        return Err(Error::InvalidConfig(format!(
            "the network config on stdin is larger than {STDIN_LIMIT} bytes"
        )));
    }
    Ok(buf)
}

/// Opens `path` with `O_PATH`: no read or write access, no open(2) side
/// effect (a FIFO does not wait for a writer, a device driver is not
/// called), but enough for fstat(2), fstatfs(2) and [`reopen`].
pub fn open_path(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(OFlag::O_PATH.bits())
        .open(path)
}

/// Opens the inode an [`open_path`] handle refers to, read-only.
pub fn reopen(handle: &File) -> io::Result<File> {
    File::open(format!("/proc/self/fd/{}", handle.as_raw_fd()))
}

/// Opens `path` for reading if it is a regular file of at most `limit`
/// bytes; `what` names it in errors ("ipam.resolvConf"). A missing or
/// unreadable file is an I/O error (5, `NotFound` kept as the source); any
/// other kind of file, or a larger one, an invalid config (7).
pub fn open_regular_file(path: &Path, what: &str, limit: u64) -> Result<File> {
    let handle =
        open_path(path).map_err(|e| Error::io(format!("opening {what} {}", path.display()), e))?;
    let md = handle
        .metadata()
        .map_err(|e| Error::io(format!("stat of {what} {}", path.display()), e))?;
    if !md.is_file() {
        return Err(Error::InvalidConfig(format!(
            "{what} {} is not a regular file",
            path.display()
        )));
    }
    if md.len() > limit {
        return Err(too_large(what, path, limit));
    }
    reopen(&handle).map_err(|e| Error::io(format!("opening {what} {}", path.display()), e))
}

/// Reads a regular file of at most `limit` bytes (see
/// [`open_regular_file`]); a file that grows past the limit while being
/// read is refused too.
pub fn read_regular_file(path: &Path, what: &str, limit: u64) -> Result<Vec<u8>> {
    let file = open_regular_file(path, what, limit)?;
    let mut buf = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io(format!("reading {what} {}", path.display()), e))?;
    if buf.len() as u64 > limit {
        return Err(too_large(what, path, limit));
    }
    Ok(buf)
}

fn too_large(what: &str, path: &Path, limit: u64) -> Error {
    Error::InvalidConfig(format!(
        "{what} {} is larger than {limit} bytes",
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    /// An endless stream of spaces that counts what was taken from it.
    struct Endless {
        taken: u64,
    }

    impl Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            buf.fill(b' ');
            self.taken += buf.len() as u64;
            Ok(buf.len())
        }
    }

    #[test]
    fn stdin_is_bounded_and_the_rest_not_read() {
        let mut src = Endless { taken: 0 };
        let err = read_stdin(&mut src).err();
        assert_eq!(err.as_ref().map(Error::code), Some(7));
        assert!(
            err.is_some_and(|e| e.to_string().contains("larger than 1048576 bytes")),
            "names the limit"
        );
        assert_eq!(src.taken, STDIN_LIMIT + 1, "reads one byte past the limit");
        let exact = vec![b' '; STDIN_LIMIT as usize];
        assert_eq!(
            read_stdin(exact.as_slice()).map(|b| b.len()).ok(),
            Some(STDIN_LIMIT as usize)
        );
    }

    /// Runs `f` on a thread and fails the test if it does not return in
    /// time (a blocked open would otherwise hang the suite).
    fn bounded<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the call blocked for 10 s")
    }

    #[test]
    fn named_files_must_be_regular_and_small() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let fifo = tmp.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let code = bounded(move || {
            read_regular_file(&fifo, "test file", 10)
                .err()
                .map(|e| e.code())
        });
        assert_eq!(code, Some(7));
        let dir = tmp.path().to_path_buf();
        assert_eq!(
            read_regular_file(&dir, "test file", 10)
                .err()
                .map(|e| e.code()),
            Some(7)
        );
        let big = tmp.path().join("big");
        std::fs::write(&big, [b'x'; 11]).expect("write");
        let e = read_regular_file(&big, "test file", 10).err();
        assert_eq!(e.as_ref().map(Error::code), Some(7));
        assert!(e.is_some_and(|e| e.to_string().contains("larger than 10 bytes")));
        assert_eq!(
            read_regular_file(&big, "test file", 11).ok(),
            Some(vec![b'x'; 11])
        );
        let missing = tmp.path().join("missing");
        assert_eq!(
            read_regular_file(&missing, "test file", 10)
                .err()
                .map(|e| e.code()),
            Some(5)
        );
    }
}
