//! Results cached per attachment, so CHECK can compare against what ADD
//! built and GC can find the host interface of an attachment it removes:
//!
//! ```text
//! <dataDir>/results/<network>/<containerID>-<ifname>.json
//! ```

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
        self.dir.join(format!("{container_id}-{ifname}.json"))
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
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }

    pub fn remove(&self, container_id: &str, ifname: &str) -> Result<()> {
        let path = self.path(container_id, ifname);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
        }
    }

    /// Every readable entry (unreadable ones are skipped with a warning).
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
