//! Address reservations on disk, in host-local's layout so state written by
//! host-local (or by this plugin) reads the same either way:
//!
//! ```text
//! <ipam dataDir>/<network name>/
//!     lock                  flock(2)ed exclusively around every read-modify-write
//!     10.244.1.7            one file per reserved address: "<containerID>\r\n<ifname>"
//!     fd00:10:244:1::7
//!     last_reserved_ip.0    the address last handed out from range set 0
//! ```
//!
//! A reservation is written (temp file, then rename) before any network
//! change is made, so a plugin killed at any point leaves either no
//! reservation or one keyed by its attachment, which DEL (by key) or GC
//! (anything not in `cni.dev/valid-attachments`) removes. The flock is
//! released by the kernel when a holder dies, so a crash never wedges it.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::range::RangeSet;
use crate::error::{Error, Result};

const LOCK_FILE: &str = "lock";
const LAST_RESERVED_PREFIX: &str = "last_reserved_ip.";
const TMP_PREFIX: &str = ".tmp-";

/// The key a reservation is stored under: one attachment.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub container_id: String,
    pub ifname: String,
}

impl Key {
    pub fn new(container_id: &str, ifname: &str) -> Key {
        Key {
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
        }
    }

    /// host-local's file content.
    fn encode(&self) -> String {
        format!("{}\r\n{}", self.container_id, self.ifname)
    }

    /// Reads a reservation file; host-local before 0.8 wrote only the
    /// container ID, which then matches any interface of that container.
    fn decode(content: &str) -> (String, Option<String>) {
        let mut lines = content.lines().map(str::trim);
        let id = lines.next().unwrap_or_default().to_string();
        let ifname = lines.next().filter(|s| !s.is_empty()).map(str::to_string);
        (id, ifname)
    }
}

/// The reservations of one network.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

/// One reservation file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    pub ip: IpAddr,
    pub container_id: String,
    pub ifname: Option<String>,
}

impl Reservation {
    /// Whether this reservation belongs to `key` (an ID-only legacy file
    /// belongs to every interface of its container).
    pub fn held_by(&self, key: &Key) -> bool {
        self.container_id == key.container_id
            && self.ifname.as_deref().is_none_or(|i| i == key.ifname)
    }
}

impl Store {
    pub fn new(data_dir: &Path, network: &str) -> Store {
        Store {
            dir: data_dir.join(network),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> Result<Flock<File>> {
        fs::create_dir_all(&self.dir)
            .map_err(|e| Error::io(format!("creating {}", self.dir.display()), e))?;
        let path = self.dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| Error::io(format!("locking {}", path.display()), errno.into()))
    }

    /// Every reservation file of the network (without taking the lock).
    fn scan(&self) -> Result<Vec<Reservation>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("reading {}", self.dir.display()), e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry =
                entry.map_err(|e| Error::io(format!("reading {}", self.dir.display()), e))?;
            let name = entry.file_name();
            let Some(ip) = name.to_str().and_then(|n| n.parse::<IpAddr>().ok()) else {
                continue;
            };
            let content = match fs::read_to_string(entry.path()) {
                Ok(c) => c,
                // Released by a racing DEL between read_dir and here.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(format!("reading {}", entry.path().display()), e)),
            };
            let (container_id, ifname) = Key::decode(&content);
            out.push(Reservation {
                ip,
                container_id,
                ifname,
            });
        }
        out.sort_by_key(|r| r.ip);
        Ok(out)
    }

    fn write_atomic(&self, name: &str, content: &str) -> Result<()> {
        let tmp = self
            .dir
            .join(format!("{TMP_PREFIX}{name}-{}", std::process::id()));
        let dst = self.dir.join(name);
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(content.as_bytes())?;
            fs::rename(&tmp, &dst)
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            Error::io(format!("writing {}", dst.display()), e)
        })
    }

    fn remove(&self, ip: IpAddr) -> Result<()> {
        let path = self.dir.join(ip.to_string());
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
        }
    }

    /// Reserves one address from each range set for `key`. Addresses the key
    /// already holds are kept (an ADD retried after a crash gets the same
    /// ones); on failure nothing new stays reserved.
    pub fn allocate(&self, key: &Key, sets: &[RangeSet]) -> Result<Vec<IpAddr>> {
        let _lock = self.lock()?;
        let existing: Vec<Reservation> = self.scan()?;
        let taken: HashSet<IpAddr> = existing.iter().map(|r| r.ip).collect();
        let mut out = Vec::with_capacity(sets.len());
        let mut new = Vec::new();
        for (idx, set) in sets.iter().enumerate() {
            let mine = existing
                .iter()
                .find(|r| set.contains(r.ip) && r.held_by(key));
            if let Some(r) = mine {
                out.push(r.ip);
                continue;
            }
            let last_file = format!("{LAST_RESERVED_PREFIX}{idx}");
            let last = fs::read_to_string(self.dir.join(&last_file))
                .ok()
                .and_then(|s| s.trim().parse::<IpAddr>().ok());
            let Some(ip) = set.candidates(last).find(|ip| !taken.contains(ip)) else {
                for ip in new {
                    let _ = self.remove(ip);
                }
                let ranges: Vec<String> = set
                    .0
                    .iter()
                    .map(|r| format!("{}-{}", r.start, r.end))
                    .collect();
                return Err(Error::NoAddresses(format!(
                    "no IP addresses available in range set {}",
                    ranges.join(",")
                )));
            };
            if let Err(e) = self.write_atomic(&ip.to_string(), &key.encode()) {
                for ip in new {
                    let _ = self.remove(ip);
                }
                return Err(e);
            }
            new.push(ip);
            // Only a hint for where to continue: losing it costs nothing.
            let _ = self.write_atomic(&last_file, &ip.to_string());
            out.push(ip);
        }
        Ok(out)
    }

    /// The addresses `key` holds.
    pub fn find(&self, key: &Key) -> Result<Vec<IpAddr>> {
        let _lock = self.lock()?;
        Ok(self
            .scan()?
            .into_iter()
            .filter(|r| r.held_by(key))
            .map(|r| r.ip)
            .collect())
    }

    /// Frees everything `key` holds; freeing nothing is not an error.
    pub fn release(&self, key: &Key) -> Result<Vec<IpAddr>> {
        if !self.dir.exists() {
            return Ok(Vec::new());
        }
        let _lock = self.lock()?;
        let mut freed = Vec::new();
        for r in self.scan()? {
            if r.held_by(key) {
                self.remove(r.ip)?;
                freed.push(r.ip);
            }
        }
        Ok(freed)
    }

    /// Frees every reservation whose attachment is not in `valid` (and
    /// temp files a killed writer left), returning what was freed.
    pub fn gc(&self, valid: &HashSet<Key>) -> Result<Vec<Reservation>> {
        if !self.dir.exists() {
            return Ok(Vec::new());
        }
        let _lock = self.lock()?;
        let mut freed = Vec::new();
        for r in self.scan()? {
            let keep = valid.iter().any(|k| r.held_by(k));
            if !keep {
                self.remove(r.ip)?;
                freed.push(r);
            }
        }
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                if entry
                    .file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with(TMP_PREFIX))
                {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        Ok(freed)
    }

    /// How many addresses of `set` are reserved.
    pub fn reserved_in(&self, set: &RangeSet) -> Result<u128> {
        Ok(self.scan()?.iter().filter(|r| set.contains(r.ip)).count() as u128)
    }

    /// Checks that the store can be locked (STATUS).
    pub fn probe(&self) -> Result<()> {
        self.lock().map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::range::Range;

    fn set(subnet: &str) -> RangeSet {
        RangeSet(vec![
            Range::canonicalize(subnet.parse().expect("subnet"), None, None, None).expect("range"),
        ])
    }

    #[test]
    fn allocate_release_gc() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = Store::new(tmp.path(), "net");
        let sets = [set("10.0.0.0/29"), set("fd00::/125")];
        let a = Key::new("a", "eth0");
        let b = Key::new("b", "eth0");
        let ips_a = store.allocate(&a, &sets).expect("a");
        assert_eq!(
            ips_a,
            vec![
                "10.0.0.2".parse::<IpAddr>().expect("ip"),
                "fd00::2".parse().expect("ip")
            ]
        );
        // host-local's content format.
        let content = fs::read_to_string(tmp.path().join("net/10.0.0.2")).expect("file");
        assert_eq!(content, "a\r\neth0");
        // Same key again: same addresses.
        assert_eq!(store.allocate(&a, &sets).expect("again"), ips_a);
        let ips_b = store.allocate(&b, &sets).expect("b");
        assert_eq!(ips_b[0].to_string(), "10.0.0.3");
        assert_eq!(store.find(&b).expect("find"), ips_b);
        assert_eq!(store.release(&a).expect("release").len(), 2);
        assert!(store.release(&a).expect("release twice").is_empty());
        // Round robin: the next address is after the last handed out.
        let c = store.allocate(&Key::new("c", "eth0"), &sets).expect("c");
        assert_eq!(c[0].to_string(), "10.0.0.4");
        let valid: HashSet<Key> = [b.clone()].into_iter().collect();
        let freed = store.gc(&valid).expect("gc");
        assert_eq!(freed.len(), 2);
        assert!(freed.iter().all(|r| r.container_id == "c"));
        assert_eq!(store.find(&b).expect("b kept"), ips_b);
    }

    #[test]
    fn exhaustion_rolls_back() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = Store::new(tmp.path(), "net");
        // /30: one usable address besides the gateway.
        let sets = [set("fd00::/64"), set("10.0.0.0/30")];
        store.allocate(&Key::new("a", "eth0"), &sets).expect("a");
        let err = store.allocate(&Key::new("b", "eth0"), &sets).err();
        assert_eq!(err.map(|e| e.code()), Some(102));
        // b's IPv6 address was rolled back.
        assert!(store.find(&Key::new("b", "eth0")).expect("find").is_empty());
        assert_eq!(store.reserved_in(&sets[0]).expect("count"), 1);
    }

    #[test]
    fn legacy_id_only_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = Store::new(tmp.path(), "net");
        fs::create_dir_all(store.dir()).expect("dir");
        fs::write(store.dir().join("10.0.0.9"), "old-id").expect("write");
        assert_eq!(
            store
                .release(&Key::new("old-id", "eth0"))
                .expect("release")
                .len(),
            1
        );
    }
}
