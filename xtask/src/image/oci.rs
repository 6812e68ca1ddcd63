//! The image itself: one gzip layer, its config, manifest and index, as an
//! OCI image layout directory and as one tarball that both OCI readers
//! (`ctr images import`, `kind load image-archive`, `podman load`, skopeo's
//! `oci-archive:`) and Docker-archive readers (`docker load`, through
//! `manifest.json`) accept, as Docker 25 itself writes.
//!
//! Every byte is a function of the inputs: tar members sorted with fixed
//! owners, modes and mtime (`ustar`), gzip with a pinned backend and level
//! and no name or time in its header, JSON with sorted keys and no
//! whitespace. Nothing goes through `oci-spec`, whose annotation maps are
//! `HashMap`s (random key order, so random digests).

use std::fs;
use std::io::Write as _;
use std::path::Path;

use anyhow::{Context as _, Result};
use flate2::{Compression, GzBuilder};
use serde_json::{Value, json};

use super::reference::Reference;
use super::ustar::{self, Entry};

pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";
pub const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// `gzip -9`; the level is part of the digest, so it never changes silently.
const GZIP_LEVEL: u32 = 9;

/// Where the binaries go in the image.
pub const AGENT_PATH: &str = "usr/bin/ferry-agent";
pub const DNS_PATH: &str = "usr/bin/ferry-dns";
/// Not on PATH: `ferry-agent install-cni` copies it onto the host's CNI
/// directory, which is where the container runtime runs it from.
pub const CNI_PATH: &str = "opt/ferry/cni/ferry-cni";

/// What goes into the image.
#[derive(Debug)]
pub struct Inputs<'a> {
    pub agent: &'a [u8],
    pub cni: &'a [u8],
    pub dns: &'a [u8],
    pub reference: &'a Reference,
    pub version: &'a str,
    /// The source revision (a commit id), when known.
    pub revision: Option<&'a str>,
    /// Seconds since the epoch: every mtime and every `created`.
    pub epoch: u64,
}

/// The assembled image: its blobs and the documents that point at them.
#[derive(Debug)]
pub struct Image {
    /// `(hex sha256, bytes)`: the layer, the config and the manifest.
    pub blobs: Vec<(String, Vec<u8>)>,
    pub manifest_digest: String,
    /// The gzip-compressed layer's size.
    pub layer_size: usize,
    /// The layer's size unpacked (its tar).
    pub tar_size: usize,
    pub index: Vec<u8>,
    /// Docker's `manifest.json`, only in the tarball.
    pub docker_manifest: Vec<u8>,
    pub epoch: u64,
}

impl Image {
    pub fn build(inputs: &Inputs<'_>) -> Result<Self> {
        let created = rfc3339(inputs.epoch);
        let layer_tar = ustar::archive(
            vec![
                Entry::dir("opt", 0o755),
                Entry::dir("opt/ferry", 0o755),
                Entry::dir("opt/ferry/cni", 0o755),
                Entry::file(CNI_PATH, 0o755, inputs.cni),
                Entry::dir("tmp", 0o1777),
                Entry::dir("usr", 0o755),
                Entry::dir("usr/bin", 0o755),
                Entry::file(AGENT_PATH, 0o755, inputs.agent),
                Entry::file(DNS_PATH, 0o755, inputs.dns),
                Entry::dir("var", 0o755),
                Entry::dir("var/run", 0o755),
                Entry::dir("var/run/ferry", 0o755),
            ],
            inputs.epoch,
        )?;
        let diff_id = sha256(&layer_tar);
        let layer = gzip(&layer_tar)?;
        let tar_size = layer_tar.len();
        drop(layer_tar);
        let layer_digest = sha256(&layer);

        let mut labels = serde_json::Map::new();
        labels.insert("org.opencontainers.image.created".into(), json!(created));
        labels.insert(
            "org.opencontainers.image.version".into(),
            json!(inputs.version),
        );
        if let Some(revision) = inputs.revision {
            labels.insert("org.opencontainers.image.revision".into(), json!(revision));
        }
        let config = canonical(json!({
            "architecture": "amd64",
            "os": "linux",
            "created": created,
            "config": {
                "Entrypoint": ["/usr/bin/ferry-agent"],
                "Env": ["PATH=/usr/bin"],
                "Labels": labels,
            },
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
            "history": [{
                "created": created,
                "created_by": "cargo xtask image",
                "comment": format!(
                    "{} {}, {} {}, {} {}",
                    AGENT_PATH, inputs.version, DNS_PATH, inputs.version, CNI_PATH, inputs.version
                ),
            }],
        }))?;
        let config_digest = sha256(&config);

        let manifest = canonical(json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": descriptor(CONFIG_TYPE, &config_digest, config.len()),
            "layers": [descriptor(LAYER_TYPE, &layer_digest, layer.len())],
            "annotations": labels,
        }))?;
        let manifest_digest = sha256(&manifest);

        let mut manifest_descriptor = descriptor(MANIFEST_TYPE, &manifest_digest, manifest.len());
        manifest_descriptor["platform"] = json!({"architecture": "amd64", "os": "linux"});
        manifest_descriptor["annotations"] = json!({
            "io.containerd.image.name": inputs.reference.full,
            "org.opencontainers.image.ref.name": inputs.reference.tag,
        });
        let index = canonical(json!({
            "schemaVersion": 2,
            "mediaType": INDEX_TYPE,
            "manifests": [manifest_descriptor],
        }))?;
        let docker_manifest = canonical(json!([{
            "Config": format!("blobs/sha256/{config_digest}"),
            "RepoTags": [inputs.reference.given],
            "Layers": [format!("blobs/sha256/{layer_digest}")],
        }]))?;

        Ok(Self {
            layer_size: layer.len(),
            tar_size,
            blobs: vec![
                (layer_digest, layer),
                (config_digest, config),
                (manifest_digest.clone(), manifest),
            ],
            manifest_digest,
            index,
            docker_manifest,
            epoch: inputs.epoch,
        })
    }

    /// What a registry would store: every blob.
    pub fn compressed_size(&self) -> usize {
        self.blobs.iter().map(|(_, b)| b.len()).sum()
    }

    /// The OCI image layout written into `dir`, which must not exist.
    pub fn write_layout(&self, dir: &Path) -> Result<()> {
        let blobs = dir.join("blobs/sha256");
        fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
        let mut files: Vec<(std::path::PathBuf, &[u8])> = vec![
            (dir.join("oci-layout"), OCI_LAYOUT),
            (dir.join("index.json"), &self.index),
        ];
        for (hex, bytes) in &self.blobs {
            files.push((blobs.join(hex), bytes));
        }
        for (path, bytes) in files {
            fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }

    /// The tarball: the OCI layout plus Docker's `manifest.json`.
    pub fn archive(&self) -> Result<Vec<u8>> {
        let mut entries = vec![
            Entry::dir("blobs", 0o755),
            Entry::dir("blobs/sha256", 0o755),
            Entry::file("oci-layout", 0o644, OCI_LAYOUT),
            Entry::file("index.json", 0o644, &self.index),
            Entry::file("manifest.json", 0o644, &self.docker_manifest),
        ];
        let names: Vec<String> = self
            .blobs
            .iter()
            .map(|(hex, _)| format!("blobs/sha256/{hex}"))
            .collect();
        for (name, (_, bytes)) in names.iter().zip(&self.blobs) {
            entries.push(Entry::file(name, 0o644, bytes));
        }
        ustar::archive(entries, self.epoch)
    }
}

const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

fn descriptor(media_type: &str, hex: &str, size: usize) -> Value {
    json!({"mediaType": media_type, "digest": format!("sha256:{hex}"), "size": size})
}

/// Compact JSON with every object's keys sorted, whatever serde_json's
/// features: the bytes hashed are the bytes written.
fn canonical(mut value: Value) -> Result<Vec<u8>> {
    value.sort_all_objects();
    Ok(serde_json::to_vec(&value)?)
}

/// gzip with no file name, mtime 0 and OS byte 255 (flate2's defaults for
/// reproducible streams), deflated by zlib-rs at `GZIP_LEVEL`.
fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut encoder = GzBuilder::new().write(
        Vec::with_capacity(bytes.len() / 2),
        Compression::new(GZIP_LEVEL),
    );
    encoder.write_all(bytes)?;
    Ok(encoder.finish()?)
}

pub fn sha256(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the epoch (UTC; the civil-date
/// conversion of Howard Hinnant's `civil_from_days`).
pub fn rfc3339(epoch: u64) -> String {
    let days = epoch / 86_400;
    let secs = epoch % 86_400;
    // Shift the epoch to 0000-03-01 so leap days fall at the end of a year.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_seconds_format_as_rfc3339_utc() {
        for (epoch, text) in [
            (0, "1970-01-01T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (951_868_799, "2000-02-29T23:59:59Z"),
            (951_868_800, "2000-03-01T00:00:00Z"),
            (1_709_164_800, "2024-02-29T00:00:00Z"),
            (4_102_444_800, "2100-01-01T00:00:00Z"),
            (1_796_334_989, "2026-12-03T21:56:29Z"),
        ] {
            assert_eq!(rfc3339(epoch), text, "{epoch}");
        }
    }

    #[test]
    fn sha256_matches_the_standard_vectors() {
        assert_eq!(
            sha256(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
