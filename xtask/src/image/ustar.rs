//! A deterministic POSIX ustar writer: the bytes depend only on the entries
//! given, never on the machine, the clock or the file system.
//!
//! Entries are sorted by path (a parent directory, being a prefix of its
//! children, comes first), every header carries the one mtime given, uid and
//! gid 0 with empty owner names, the mode given, and nothing else: no PAX or
//! GNU extension records, no atime/ctime, no xattrs. This is the
//! reproducible-builds.org recipe (`tar --sort=name --mtime=@N --owner=0
//! --group=0 --numeric-owner`) without depending on the local tar.

use anyhow::{Result, bail};

const BLOCK: usize = 512;

/// One archive member: a directory when `data` is `None`, else a regular file.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    /// Relative path without a leading `/`; directories without the trailing
    /// `/`, which the writer adds.
    pub path: String,
    /// Permission bits, including set-id and sticky (`0o1777` for /tmp).
    pub mode: u32,
    pub data: Option<&'a [u8]>,
}

impl<'a> Entry<'a> {
    pub fn dir(path: &str, mode: u32) -> Self {
        Self {
            path: path.to_owned(),
            mode,
            data: None,
        }
    }

    pub fn file(path: &str, mode: u32, data: &'a [u8]) -> Self {
        Self {
            path: path.to_owned(),
            mode,
            data: Some(data),
        }
    }

    /// The name as stored: directories end in `/`, as GNU tar and Docker
    /// write them.
    fn stored_name(&self) -> String {
        match self.data {
            None => format!("{}/", self.path),
            Some(_) => self.path.clone(),
        }
    }
}

/// The archive of `entries`, sorted by path, every member stamped `mtime`
/// (seconds since the epoch), closed by the two zero blocks of the format.
pub fn archive(mut entries: Vec<Entry<'_>>, mtime: u64) -> Result<Vec<u8>> {
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    for pair in entries.windows(2) {
        if pair[0].path == pair[1].path {
            bail!("two archive entries named {:?}", pair[0].path);
        }
    }
    let total: usize = entries
        .iter()
        .map(|e| BLOCK + e.data.map_or(0, |d| d.len().div_ceil(BLOCK) * BLOCK))
        .sum();
    let mut out = Vec::with_capacity(total + 2 * BLOCK);
    for entry in &entries {
        out.extend_from_slice(&header(entry, mtime)?);
        if let Some(data) = entry.data {
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
        }
    }
    out.resize(out.len() + 2 * BLOCK, 0);
    Ok(out)
}

fn header(entry: &Entry<'_>, mtime: u64) -> Result<[u8; BLOCK]> {
    let name = entry.stored_name();
    if entry.path.is_empty() || entry.path.starts_with('/') || entry.path.ends_with('/') {
        bail!(
            "archive path {:?} must be relative, without a trailing /",
            entry.path
        );
    }
    if !name.is_ascii() || name.len() > 100 {
        bail!("archive path {name:?} is not ASCII of at most 100 bytes (ustar's name field)");
    }
    if entry.mode > 0o7777 {
        bail!("mode {:o} of {name:?} has bits beyond 07777", entry.mode);
    }
    let size = entry.data.map_or(0, <[u8]>::len) as u64;
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut h[100..108], u64::from(entry.mode))?; // mode
    octal(&mut h[108..116], 0)?; // uid
    octal(&mut h[116..124], 0)?; // gid
    octal(&mut h[124..136], size)?;
    octal(&mut h[136..148], mtime)?;
    h[156] = if entry.data.is_some() { b'0' } else { b'5' };
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    // uname, gname: left empty (numeric owners only); devmajor/devminor:
    // zero, as GNU tar writes them for files.
    octal(&mut h[329..337], 0)?;
    octal(&mut h[337..345], 0)?;
    // The checksum is the byte sum with its own field read as spaces,
    // stored as six octal digits, NUL, space.
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    octal(&mut h[148..155], sum)?;
    h[155] = b' ';
    Ok(h)
}

/// Zero-padded octal filling `field` but for a trailing NUL.
fn octal(field: &mut [u8], value: u64) -> Result<()> {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    if text.len() > digits {
        bail!("{value} does not fit a {digits}-digit ustar field");
    }
    field[..digits].copy_from_slice(text.as_bytes());
    field[digits] = 0;
    Ok(())
}

#[cfg(test)]
pub mod read {
    //! A strict reader for the tests: it checks every header's checksum and
    //! magic and returns the fields the writer promises to control.

    use anyhow::{Context as _, Result, bail, ensure};

    use super::BLOCK;

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Member {
        pub name: String,
        pub typeflag: u8,
        pub mode: u32,
        pub uid: u64,
        pub gid: u64,
        pub uname: String,
        pub gname: String,
        pub mtime: u64,
        pub data: Vec<u8>,
    }

    pub fn members(bytes: &[u8]) -> Result<Vec<Member>> {
        ensure!(
            bytes.len().is_multiple_of(BLOCK),
            "archive is not whole blocks"
        );
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            let h = bytes
                .get(at..at + BLOCK)
                .context("archive ends without its end blocks")?;
            if h.iter().all(|&b| b == 0) {
                let end = bytes
                    .get(at + BLOCK..at + 2 * BLOCK)
                    .context("one end block only")?;
                ensure!(end.iter().all(|&b| b == 0), "second end block is not zero");
                ensure!(bytes.len() == at + 2 * BLOCK, "bytes after the end blocks");
                return Ok(out);
            }
            ensure!(
                &h[257..263] == b"ustar\0" && &h[263..265] == b"00",
                "not a ustar header"
            );
            let stored = number(&h[148..156])?;
            let sum: u64 = h
                .iter()
                .enumerate()
                .map(|(i, &b)| {
                    if (148..156).contains(&i) {
                        32
                    } else {
                        u64::from(b)
                    }
                })
                .sum();
            ensure!(stored == sum, "header checksum {stored} != {sum}");
            let size = usize::try_from(number(&h[124..136])?)?;
            let data_at = at + BLOCK;
            let data = bytes
                .get(data_at..data_at + size)
                .context("member data runs past the end")?
                .to_vec();
            out.push(Member {
                name: text(&h[..100])?,
                typeflag: h[156],
                mode: u32::try_from(number(&h[100..108])?)?,
                uid: number(&h[108..116])?,
                gid: number(&h[116..124])?,
                uname: text(&h[265..297])?,
                gname: text(&h[297..329])?,
                mtime: number(&h[136..148])?,
                data,
            });
            ensure!(h[345..500].iter().all(|&b| b == 0), "prefix field used");
            at = data_at + size.div_ceil(BLOCK) * BLOCK;
        }
    }

    fn number(field: &[u8]) -> Result<u64> {
        let digits = text(field)?;
        let digits = digits.trim();
        if digits.is_empty() || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            bail!("bad octal field {field:?}");
        }
        Ok(u64::from_str_radix(digits, 8)?)
    }

    fn text(field: &[u8]) -> Result<String> {
        let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
        Ok(String::from_utf8(field[..end].to_vec())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_sorted_parents_first_with_fixed_owner_time_and_mode() -> Result<()> {
        let data = b"hello";
        let bytes = archive(
            vec![
                Entry::file("usr/bin/b", 0o755, data),
                Entry::dir("usr/bin", 0o755),
                Entry::dir("tmp", 0o1777),
                Entry::dir("usr", 0o755),
            ],
            1_700_000_000,
        )?;
        let members = read::members(&bytes)?;
        let names: Vec<_> = members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["tmp/", "usr/", "usr/bin/", "usr/bin/b"]);
        let modes: Vec<_> = members.iter().map(|m| m.mode).collect();
        assert_eq!(modes, [0o1777, 0o755, 0o755, 0o755]);
        for m in &members {
            assert_eq!((m.uid, m.gid, m.mtime), (0, 0, 1_700_000_000), "{m:?}");
            assert_eq!((m.uname.as_str(), m.gname.as_str()), ("", ""));
        }
        assert_eq!(members[3].data, data);
        assert_eq!(members[3].typeflag, b'0');
        assert_eq!(members[0].typeflag, b'5');
        Ok(())
    }

    #[test]
    fn gnu_tar_lists_the_archive_as_written() -> Result<()> {
        let bytes = archive(
            vec![
                Entry::dir("tmp", 0o1777),
                Entry::file("usr/bin/x", 0o755, &[7u8; 1000]),
                Entry::dir("usr", 0o755),
                Entry::dir("usr/bin", 0o755),
            ],
            86_400,
        )?;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("a.tar");
        std::fs::write(&path, &bytes)?;
        let out = std::process::Command::new("tar")
            .args(["--list", "--verbose", "--numeric-owner", "--utc", "--file"])
            .arg(&path)
            .output();
        let Ok(out) = out else {
            println!("SKIP: no tar on PATH");
            return Ok(());
        };
        assert!(out.status.success(), "{out:?}");
        assert!(
            out.stderr.is_empty(),
            "tar warned: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = String::from_utf8(out.stdout)?;
        let lines: Vec<_> = listing
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .collect();
        let expected = [
            ["drwxrwxrwt", "0/0", "0", "1970-01-02", "00:00", "tmp/"],
            ["drwxr-xr-x", "0/0", "0", "1970-01-02", "00:00", "usr/"],
            ["drwxr-xr-x", "0/0", "0", "1970-01-02", "00:00", "usr/bin/"],
            [
                "-rwxr-xr-x",
                "0/0",
                "1000",
                "1970-01-02",
                "00:00",
                "usr/bin/x",
            ],
        ];
        assert_eq!(lines, expected);
        Ok(())
    }

    #[test]
    fn bad_entries_are_refused() {
        let long = "a".repeat(101);
        for (entries, what) in [
            (vec![Entry::dir("/abs", 0o755)], "absolute"),
            (
                vec![Entry::dir("x", 0o755), Entry::file("x", 0o644, b"")],
                "duplicate",
            ),
            (vec![Entry::file(&long, 0o644, b"")], "long"),
            (vec![Entry::file("x", 0o10000, b"")], "mode"),
        ] {
            assert!(archive(entries, 0).is_err(), "{what} accepted");
        }
    }
}
