//! Results cached per attachment, so CHECK can compare against what ADD
//! built and GC can find the host interface of an attachment it removes:
//!
//! ```text
//! <dataDir>/results/<network>/<containerID>@<ifname>.json
//! ```
//!
//! The name is injective: `@` cannot occur in a container ID (the spec's
//! name rule allows only alphanumerics, `_`, `.` and `-`), so the first `@`
//! ends the container ID whatever the interface name holds. The first
//! release used `<containerID>-<ifname>.json`, where `x-y` + `z` and `x` +
//! `y-z` collide. Such legacy files are still read and removed, but only
//! for the attachment their content names (every entry records its
//! container ID and interface name), so a DEL never touches another
//! attachment's entry; new entries are always written under the new name.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::types::CniResult;

/// One cached attachment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
    pub host_veth: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// This plugin's own result (before any merge with a `prevResult`).
    pub result: CniResult,
}

/// The result cache of one network.
#[derive(Clone, Debug)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub fn new(data_dir: &Path, network: &str) -> Cache {
        Cache {
            dir: data_dir.join("results").join(network),
        }
    }

    fn path(&self, container_id: &str, ifname: &str) -> PathBuf {
        self.dir.join(format!("{container_id}@{ifname}.json"))
    }

    /// The first release's (ambiguous) name for the attachment.
    fn legacy_path(&self, container_id: &str, ifname: &str) -> PathBuf {
        self.dir.join(format!("{container_id}-{ifname}.json"))
    }

    /// The legacy-named entry of this attachment, if there is one whose
    /// content says it is this attachment's (an entry of a colliding
    /// attachment, or one that cannot be decoded, is not).
    fn read_legacy(&self, container_id: &str, ifname: &str) -> Result<Option<Entry>> {
        let path = self.legacy_path(container_id, ifname);
        let body = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        };
        match serde_json::from_slice::<Entry>(&body) {
            Ok(e) if e.container_id == container_id && e.ifname == ifname => Ok(Some(e)),
            Ok(_) => Ok(None),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring an undecodable legacy cached result");
                Ok(None)
            }
        }
    }

    pub fn write(&self, entry: &Entry) -> Result<()> {
        fs::create_dir_all(&self.dir)
            .map_err(|e| Error::io(format!("creating {}", self.dir.display()), e))?;
        let dst = self.path(&entry.container_id, &entry.ifname);
        let tmp = self.dir.join(format!(".tmp-{}", std::process::id()));
        let body = serde_json::to_vec_pretty(entry)
            .map_err(|e| Error::Internal(format!("encoding the cached result: {e}")))?;
        fs::write(&tmp, body)
            .and_then(|()| fs::rename(&tmp, &dst))
            .map_err(|e| {
                let _ = fs::remove_file(&tmp);
                Error::io(format!("writing {}", dst.display()), e)
            })
    }

    pub fn read(&self, container_id: &str, ifname: &str) -> Result<Option<Entry>> {
        let path = self.path(container_id, ifname);
        match fs::read(&path) {
            Ok(body) => serde_json::from_slice(&body)
                .map(Some)
                .map_err(|e| Error::Decode(format!("cached result {}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.read_legacy(container_id, ifname)
            }
            Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }

    /// Forgets the attachment's entry (and its legacy-named one, if the
    /// legacy file is this attachment's).
    pub fn remove(&self, container_id: &str, ifname: &str) -> Result<()> {
        remove_file(&self.path(container_id, ifname))?;
        if self.read_legacy(container_id, ifname)?.is_some() {
            remove_file(&self.legacy_path(container_id, ifname))?;
        }
        Ok(())
    }

    /// Every readable entry, under either name (unreadable ones are skipped
    /// with a warning).
    pub fn list(&self) -> Result<Vec<Entry>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("reading {}", self.dir.display()), e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            match fs::read(&path).map(|b| serde_json::from_slice::<Entry>(&b)) {
                Ok(Ok(e)) => out.push(e),
                Ok(Err(e)) => {
                    tracing::warn!(path = %path.display(), error = %e, "skipping an undecodable cached result")
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "skipping an unreadable cached result")
                }
            }
        }
        Ok(out)
    }
}

/// Removes a file; one that is already gone is not an error.
fn remove_file(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::{MAX_CONTAINER_ID_LEN, MAX_IFNAME_LEN};

    fn entry(container_id: &str, ifname: &str) -> Entry {
        Entry {
            container_id: container_id.into(),
            ifname: ifname.into(),
            netns: "/run/netns/x".into(),
            host_veth: crate::wiring::host_veth_name(container_id, ifname),
            pod_namespace: None,
            pod_name: None,
            result: CniResult::default(),
        }
    }

    /// `x-y`/`z` and `x`/`y-z` shared `x-y-z.json`: the second ADD
    /// overwrote the first one's entry and a DEL of either removed both.
    #[test]
    fn keys_do_not_collide() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cache = Cache::new(tmp.path(), "net");
        let a = entry("x-y", "z");
        let b = entry("x", "y-z");
        cache.write(&a).expect("write a");
        cache.write(&b).expect("write b");
        assert_eq!(cache.read("x-y", "z").expect("read a"), Some(a.clone()));
        assert_eq!(cache.read("x", "y-z").expect("read b"), Some(b.clone()));
        assert_eq!(cache.list().expect("list").len(), 2);
        cache.remove("x", "y-z").expect("remove b");
        assert_eq!(cache.read("x", "y-z").expect("read b"), None);
        assert_eq!(cache.read("x-y", "z").expect("a kept"), Some(a));
        // Injective over valid IDs, whatever the interface name holds.
        let ids = ["x", "x-y", "x-y-z", "x.y", "x_y"];
        let ifnames = ["z", "y-z", "-z", "@z", "y@z", "z.json", "y-z.json"];
        let mut names = std::collections::HashSet::new();
        for id in ids {
            assert!(crate::env::validate_container_id(id).is_ok());
            for ifname in ifnames {
                assert!(crate::env::validate_ifname(ifname).is_ok());
                assert!(names.insert(cache.path(id, ifname)), "{id}/{ifname}");
            }
        }
    }

    /// Entries the first release wrote are read, listed and removed, but
    /// only for the attachment their content names.
    #[test]
    fn legacy_names_read_only_for_their_own_attachment() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cache = Cache::new(tmp.path(), "net");
        fs::create_dir_all(&cache.dir).expect("dir");
        let a = entry("x-y", "z");
        let legacy = cache.dir.join("x-y-z.json");
        fs::write(&legacy, serde_json::to_vec(&a).expect("encode")).expect("write");
        assert_eq!(cache.read("x-y", "z").expect("read"), Some(a.clone()));
        // The colliding attachment neither sees nor removes it.
        assert_eq!(cache.read("x", "y-z").expect("read other"), None);
        cache.remove("x", "y-z").expect("remove other");
        assert!(legacy.exists());
        assert_eq!(cache.list().expect("list"), vec![a.clone()]);
        // A new-format entry wins over the legacy one.
        let mut newer = a.clone();
        newer.netns = "/run/netns/newer".into();
        cache.write(&newer).expect("write");
        assert_eq!(cache.read("x-y", "z").expect("read"), Some(newer));
        cache.remove("x-y", "z").expect("remove");
        assert!(!legacy.exists());
        assert_eq!(cache.read("x-y", "z").expect("read"), None);
        assert!(cache.list().expect("list").is_empty());
        // An undecodable legacy file is attributed to nobody.
        fs::write(&legacy, "{").expect("write");
        assert_eq!(cache.read("x-y", "z").expect("read"), None);
        cache.remove("x-y", "z").expect("remove");
        assert!(legacy.exists());
    }

    /// The longest valid container ID with the longest interface name still
    /// makes a file name.
    #[test]
    fn longest_names_fit() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cache = Cache::new(tmp.path(), "net");
        let e = entry(
            &"c".repeat(MAX_CONTAINER_ID_LEN),
            &"i".repeat(MAX_IFNAME_LEN),
        );
        cache.write(&e).expect("write");
        assert_eq!(
            cache.read(&e.container_id, &e.ifname).expect("read"),
            Some(e)
        );
    }
}
