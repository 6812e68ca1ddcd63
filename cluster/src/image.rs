//! The local Ferry image: the layout `cargo xtask image` gives its single
//! layer (`/usr/bin/ferry-agent`, `/usr/bin/ferry-dns`,
//! `/opt/ferry/cni/ferry-cni`), made from this build's binaries, and the
//! ferry-node catalogue entry that runs `deploy/`'s containers of
//! `localhost/ferry` from it. A `ferry up` node never pulls: its runtime
//! lays this root over the node's files in each such container, so the
//! DaemonSet's `command: [/usr/bin/ferry-agent]` runs the binary the user
//! just built.
//!
//! **Owns:** `<data-dir>/image/` and `<data-dir>/ferry-images.yaml`, made
//! afresh on every `ferry up`. **Must not touch:** the binaries it takes
//! (linked or copied, never moved) and the user's own `images.yaml`.

use std::fs;
use std::path::{Path, PathBuf};

use crate::components::Binaries;
use crate::{Error, Result};

/// The image `deploy/` names (its tag is the kustomization's).
pub const IMAGE: &str = "localhost/ferry";

/// The image's files: (binary, path in the image), as
/// `xtask/src/image/oci.rs` lays them out.
pub const LAYOUT: &[(&str, &str)] = &[
    ("ferry-agent", "usr/bin/ferry-agent"),
    ("ferry-dns", "usr/bin/ferry-dns"),
    ("ferry-cni", "opt/ferry/cni/ferry-cni"),
];

/// The image root and the catalogue file naming it.
#[derive(Debug, Clone)]
pub struct LocalImage {
    pub root: PathBuf,
    pub catalogue: PathBuf,
}

/// Lays `bins` out as the image under `<data_dir>/image` and writes the
/// catalogue entry for [`IMAGE`].
pub fn prepare(data_dir: &Path, bins: &Binaries) -> Result<LocalImage> {
    let root = data_dir.join("image");
    if root.exists() {
        fs::remove_dir_all(&root)
            .map_err(|e| Error::io(format!("removing the old {}", root.display()), e))?;
    }
    for (binary, at) in LAYOUT {
        let to = root.join(at);
        if let Some(dir) = to.parent() {
            fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        let from = bins.path(binary);
        // A hard link costs nothing; across file systems, a copy.
        if fs::hard_link(&from, &to).is_err() {
            fs::copy(&from, &to).map_err(|e| {
                Error::io(format!("copying {} to {}", from.display(), to.display()), e)
            })?;
        }
    }
    let catalogue = data_dir.join("ferry-images.yaml");
    let entry = serde_json::json!({ IMAGE: { "root": root } });
    let text = format!(
        "# Written by `ferry up` on every start: the local Ferry image, from the\n\
         # binaries in {}. Your own entries go in images.yaml.\n{}\n",
        bins.dir().display(),
        serde_json::to_string(&entry)
            .map_err(|e| Error::Config(format!("encoding the image catalogue: {e}")))?
    );
    fs::write(&catalogue, text)
        .map_err(|e| Error::io(format!("writing {}", catalogue.display()), e))?;
    Ok(LocalImage { root, catalogue })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every program `deploy/` runs from the image is in the layout, so a
    /// `ferry up` node runs what a real node would.
    #[test]
    fn deploy_runs_only_files_the_layout_has() {
        let mut named = Vec::new();
        for (_, text) in crate::addons::MANIFESTS {
            for line in text.lines() {
                for word in line.split(|c: char| c.is_whitespace() || "[]\",".contains(c)) {
                    if word.starts_with("/usr/bin/ferry") || word.starts_with("/opt/ferry/") {
                        named.push(word.to_owned());
                    }
                }
            }
        }
        assert!(named.len() >= 4, "{named:?}");
        for path in named {
            assert!(
                LAYOUT.iter().any(|(_, at)| path == format!("/{at}")),
                "deploy/ runs {path}, not in the image's layout"
            );
        }
        assert!(
            LAYOUT
                .iter()
                .any(|(_, at)| format!("/{at}") == ferry_dataplane::node_setup::PLUGIN_SOURCE)
        );
    }

    #[test]
    fn the_image_is_laid_out_and_catalogued() {
        let dir = std::env::temp_dir().join(format!("ferry-cluster-image-{}", std::process::id()));
        let bins_dir = dir.join("bins");
        fs::create_dir_all(&bins_dir).expect("dir");
        for name in crate::components::COMPONENTS {
            fs::write(bins_dir.join(name), name.as_bytes()).expect("bin");
        }
        let bins = Binaries::in_dir(&bins_dir).expect("bins");
        let data = dir.join("data");
        fs::create_dir_all(&data).expect("data");
        for _ in 0..2 {
            let image = prepare(&data, &bins).expect("prepare");
            assert_eq!(
                fs::read_to_string(image.root.join("opt/ferry/cni/ferry-cni")).expect("cni"),
                "ferry-cni"
            );
            assert_eq!(
                fs::read_to_string(image.root.join("usr/bin/ferry-agent")).expect("agent"),
                "ferry-agent"
            );
            let text = fs::read_to_string(&image.catalogue).expect("catalogue");
            let parsed: serde_json::Value = serde_saphyr::from_str(&text).expect("yaml");
            assert_eq!(parsed[IMAGE]["root"], image.root.display().to_string());
        }
        let _ = fs::remove_dir_all(&dir);
    }
}
