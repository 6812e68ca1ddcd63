//! The image as its readers see it: byte-for-byte reproducible, every digest,
//! size and diff_id right, members as promised, and (where installed) skopeo,
//! which verifies every blob, reading the tarball (as an OCI archive and as
//! a Docker archive) and the layout.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;

use super::elf::fake_executable;
use super::oci::{self, sha256};
use super::reference::Reference;
use super::ustar::read::{self, Member};
use super::{BINARIES, Source, Written, package};

const EPOCH: u64 = 1_700_000_000;
const REVISION: &str = "0123456789abcdef0123456789abcdef01234567";

/// Pseudo-random bytes (xorshift), so gzip has real work and each binary
/// differs.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Half noise, half runs, like code next to zeroed data.
            if i % 4096 < 2048 { x as u8 } else { 0 }
        })
        .collect()
}

/// Writes fake static executables for the image's three binaries into a
/// fresh directory; `seed` changes their contents.
fn fake_binaries(seed: u64) -> Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    for (i, (_, bin)) in BINARIES.iter().enumerate() {
        let payload = noise(seed * 10 + i as u64, 200_000 + i * 1000);
        fs::write(dir.path().join(bin), fake_executable(&payload, None))?;
    }
    Ok(dir)
}

fn package_at(binaries: &Path, out: &Path, name: &str, epoch: u64) -> Result<Written> {
    let reference = Reference::parse(name)?;
    package(
        binaries,
        out,
        &Source {
            reference: &reference,
            version: "0.1.0",
            revision: Some(REVISION),
            epoch,
        },
    )
}

/// Every file under `dir` by relative path.
fn files(dir: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(dir)?.to_string_lossy().into_owned();
                out.insert(rel, fs::read(&path)?);
            }
        }
    }
    Ok(out)
}

fn gunzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes).read_to_end(&mut out)?;
    Ok(out)
}

fn json(bytes: &[u8]) -> Result<Value> {
    Ok(serde_json::from_slice(bytes)?)
}

/// Checks a descriptor against the blobs: media type, and digest and size
/// recomputed from the blob's bytes. Returns the blob.
fn resolve<'a>(
    blobs: &'a BTreeMap<String, Vec<u8>>,
    descriptor: &Value,
    media_type: &str,
) -> Result<&'a [u8]> {
    ensure!(descriptor["mediaType"] == media_type, "{descriptor}");
    let digest = descriptor["digest"].as_str().context("digest")?;
    let hex = digest.strip_prefix("sha256:").context("not sha256")?;
    let blob = blobs.get(hex).with_context(|| format!("no blob {hex}"))?;
    ensure!(sha256(blob) == hex, "blob {hex} has another digest");
    ensure!(
        descriptor["size"] == blob.len(),
        "size of {hex}: {descriptor}"
    );
    Ok(blob)
}

fn by_name(members: &[Member]) -> BTreeMap<String, &Member> {
    members.iter().map(|m| (m.name.clone(), m)).collect()
}

#[test]
fn packaging_the_same_binaries_twice_gives_identical_bytes() -> Result<()> {
    let bins = fake_binaries(1)?;
    let (a, b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let first = package_at(bins.path(), a.path(), "localhost/ferry:0.1.0", EPOCH)?;
    let second = package_at(bins.path(), b.path(), "localhost/ferry:0.1.0", EPOCH)?;
    assert_eq!(first.manifest_digest, second.manifest_digest);
    assert_eq!(fs::read(&first.archive)?, fs::read(&second.archive)?);
    assert_eq!(files(&first.layout)?, files(&second.layout)?);
    // Repackaging over the old output replaces it with the same bytes and
    // leaves no partial files behind.
    let again = package_at(bins.path(), a.path(), "localhost/ferry:0.1.0", EPOCH)?;
    assert_eq!(again.manifest_digest, first.manifest_digest);
    assert_eq!(fs::read(&again.archive)?, fs::read(&second.archive)?);
    let left: Vec<_> = fs::read_dir(a.path())?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    assert_eq!(left.len(), 2, "{left:?}");
    Ok(())
}

#[test]
fn binaries_time_and_name_each_change_the_digest() -> Result<()> {
    let out = tempfile::tempdir()?;
    let bins = fake_binaries(1)?;
    let base = package_at(bins.path(), out.path(), "localhost/ferry:0.1.0", EPOCH)?;
    let other_bins = fake_binaries(2)?;
    let digests = [
        package_at(
            other_bins.path(),
            out.path(),
            "localhost/ferry:0.1.0",
            EPOCH,
        )?,
        package_at(bins.path(), out.path(), "localhost/ferry:0.1.0", EPOCH + 1)?,
    ]
    .map(|w| w.manifest_digest);
    for d in &digests {
        assert_ne!(d, &base.manifest_digest);
    }
    // The name lives in index.json only: same manifest, other tarball.
    let renamed = package_at(bins.path(), out.path(), "localhost/ferry:dev", EPOCH)?;
    assert_eq!(renamed.manifest_digest, base.manifest_digest);
    Ok(())
}

#[test]
fn every_digest_size_and_diff_id_recomputes_from_the_archive() -> Result<()> {
    let bins = fake_binaries(3)?;
    let out = tempfile::tempdir()?;
    let written = package_at(bins.path(), out.path(), "ferry:0.1.0", EPOCH)?;
    let members = read::members(&fs::read(&written.archive)?)?;
    let mut blobs = BTreeMap::new();
    let mut docs = BTreeMap::new();
    for m in &members {
        match m.name.strip_prefix("blobs/sha256/") {
            Some("") => {}
            Some(hex) => {
                blobs.insert(hex.to_owned(), m.data.clone());
            }
            None => {
                docs.insert(m.name.clone(), m.data.clone());
            }
        }
    }
    let doc_names: Vec<_> = docs.keys().map(String::as_str).collect();
    assert_eq!(
        doc_names,
        ["blobs/", "index.json", "manifest.json", "oci-layout"]
    );
    assert_eq!(
        json(&docs["oci-layout"])?,
        serde_json::json!({"imageLayoutVersion": "1.0.0"})
    );

    let index = json(&docs["index.json"])?;
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["mediaType"], oci::INDEX_TYPE);
    let manifests = index["manifests"].as_array().context("manifests")?;
    assert_eq!(manifests.len(), 1);
    let descriptor = &manifests[0];
    assert_eq!(
        descriptor["annotations"],
        serde_json::json!({
            "io.containerd.image.name": "docker.io/library/ferry:0.1.0",
            "org.opencontainers.image.ref.name": "0.1.0",
        })
    );
    assert_eq!(
        descriptor["platform"],
        serde_json::json!({"architecture": "amd64", "os": "linux"})
    );
    assert_eq!(
        descriptor["digest"],
        format!("sha256:{}", written.manifest_digest)
    );
    let manifest = json(resolve(&blobs, descriptor, oci::MANIFEST_TYPE)?)?;

    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["mediaType"], oci::MANIFEST_TYPE);
    let config = json(resolve(&blobs, &manifest["config"], oci::CONFIG_TYPE)?)?;
    let layers = manifest["layers"].as_array().context("layers")?;
    assert_eq!(layers.len(), 1);
    let layer = resolve(&blobs, &layers[0], oci::LAYER_TYPE)?;
    assert_eq!(blobs.len(), 3, "a blob nothing points at");
    assert_eq!(
        written.compressed_size,
        blobs.values().map(Vec::len).sum::<usize>()
    );
    assert_eq!(written.layer_size, layer.len());

    // diff_id: the digest of the uncompressed layer.
    let tar = gunzip(layer)?;
    assert_eq!(written.tar_size, tar.len());
    assert_eq!(
        config["rootfs"],
        serde_json::json!({"type": "layers", "diff_ids": [format!("sha256:{}", sha256(&tar))]})
    );
    let created = "2023-11-14T22:13:20Z";
    assert_eq!(
        (config["architecture"].as_str(), config["os"].as_str()),
        (Some("amd64"), Some("linux"))
    );
    assert_eq!(config["created"], created);
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/usr/bin/ferry-agent"])
    );
    assert_eq!(
        config["config"]["Env"],
        serde_json::json!(["PATH=/usr/bin"])
    );
    let labels = serde_json::json!({
        "org.opencontainers.image.created": created,
        "org.opencontainers.image.revision": REVISION,
        "org.opencontainers.image.version": "0.1.0",
    });
    assert_eq!(config["config"]["Labels"], labels);
    assert_eq!(manifest["annotations"], labels);
    let history = config["history"].as_array().context("history")?;
    assert_eq!(history.len(), layers.len());
    assert_eq!(history[0]["created"], created);

    // Docker's view: manifest.json naming the same config and layer.
    let docker = json(&docs["manifest.json"])?;
    assert_eq!(
        docker,
        serde_json::json!([{
            "Config": format!("blobs/sha256/{}", manifest["config"]["digest"].as_str().context("d")?.trim_start_matches("sha256:")),
            "Layers": [format!("blobs/sha256/{}", layers[0]["digest"].as_str().context("d")?.trim_start_matches("sha256:"))],
            "RepoTags": ["ferry:0.1.0"],
        }])
    );

    // The layout directory holds exactly the archive's OCI files.
    let mut expected: BTreeMap<String, Vec<u8>> = blobs
        .into_iter()
        .map(|(hex, b)| (format!("blobs/sha256/{hex}"), b))
        .collect();
    expected.insert("index.json".into(), docs["index.json"].clone());
    expected.insert("oci-layout".into(), docs["oci-layout"].clone());
    assert_eq!(files(&written.layout)?, expected);
    Ok(())
}

#[test]
fn members_have_the_promised_order_modes_owners_and_times() -> Result<()> {
    let bins = fake_binaries(4)?;
    let out = tempfile::tempdir()?;
    let written = package_at(bins.path(), out.path(), "localhost/ferry:0.1.0", EPOCH)?;
    let archive = read::members(&fs::read(&written.archive)?)?;
    let layer_blob = fs::read(
        written.layout.join("blobs/sha256").join(
            json(&fs::read(
                written
                    .layout
                    .join("blobs/sha256")
                    .join(&written.manifest_digest),
            )?)?["layers"][0]["digest"]
                .as_str()
                .context("layer digest")?
                .trim_start_matches("sha256:"),
        ),
    )?;
    let layer = read::members(&gunzip(&layer_blob)?)?;

    let shape = |members: &[Member]| -> Vec<(String, u8, u32)> {
        members
            .iter()
            .map(|m| (m.name.clone(), m.typeflag, m.mode))
            .collect()
    };
    let expected_layer: Vec<(String, u8, u32)> = [
        ("opt/", b'5', 0o755),
        ("opt/ferry/", b'5', 0o755),
        ("opt/ferry/cni/", b'5', 0o755),
        ("opt/ferry/cni/ferry-cni", b'0', 0o755),
        ("tmp/", b'5', 0o1777),
        ("usr/", b'5', 0o755),
        ("usr/bin/", b'5', 0o755),
        ("usr/bin/ferry-agent", b'0', 0o755),
        ("usr/bin/ferry-dns", b'0', 0o755),
        ("var/", b'5', 0o755),
        ("var/run/", b'5', 0o755),
        ("var/run/ferry/", b'5', 0o755),
    ]
    .map(|(n, t, m)| (n.to_owned(), t, m))
    .into();
    assert_eq!(shape(&layer), expected_layer);

    let mut expected_archive = vec![
        ("blobs/".to_owned(), b'5', 0o755),
        ("blobs/sha256/".to_owned(), b'5', 0o755),
    ];
    let mut blob_names: Vec<String> = archive
        .iter()
        .filter(|m| m.name.starts_with("blobs/sha256/") && m.name.len() > 13)
        .map(|m| m.name.clone())
        .collect();
    blob_names.sort();
    expected_archive.extend(blob_names.into_iter().map(|n| (n, b'0', 0o644)));
    for name in ["index.json", "manifest.json", "oci-layout"] {
        expected_archive.push((name.to_owned(), b'0', 0o644));
    }
    assert_eq!(shape(&archive), expected_archive);

    for m in layer.iter().chain(&archive) {
        assert_eq!((m.uid, m.gid, m.mtime), (0, 0, EPOCH), "{}", m.name);
        assert!(m.uname.is_empty() && m.gname.is_empty(), "{}", m.name);
        if m.typeflag == b'5' {
            assert!(m.data.is_empty(), "{}", m.name);
        }
    }
    // The binaries are stored byte for byte.
    let layer = by_name(&layer);
    for (path, bin) in [
        ("usr/bin/ferry-agent", "ferry-agent"),
        ("opt/ferry/cni/ferry-cni", "ferry-cni"),
        ("usr/bin/ferry-dns", "ferry-dns"),
    ] {
        assert_eq!(layer[path].data, fs::read(bins.path().join(bin))?, "{path}");
    }
    Ok(())
}

#[test]
fn dynamic_or_missing_binaries_are_refused_and_the_old_image_kept() -> Result<()> {
    let bins = fake_binaries(5)?;
    let out = tempfile::tempdir()?;
    let good = package_at(bins.path(), out.path(), "localhost/ferry:0.1.0", EPOCH)?;
    let before = (fs::read(&good.archive)?, files(&good.layout)?);

    let dynamic = fake_executable(b"code", Some("/lib64/ld-linux-x86-64.so.2"));
    fs::write(bins.path().join("ferry-dns"), dynamic)?;
    let err = package_at(bins.path(), out.path(), "localhost/ferry:0.1.0", EPOCH + 5)
        .expect_err("a dynamic ferry-dns was packaged");
    assert!(
        format!("{err:#}").contains("ferry-dns is dynamically linked"),
        "{err:#}"
    );

    fs::remove_file(bins.path().join("ferry-dns"))?;
    let err = package_at(bins.path(), out.path(), "localhost/ferry:0.1.0", EPOCH + 5)
        .expect_err("a missing ferry-dns was not noticed");
    assert!(format!("{err:#}").contains("ferry-dns"), "{err:#}");

    assert_eq!((fs::read(&good.archive)?, files(&good.layout)?), before);
    Ok(())
}

#[test]
fn an_out_dir_whose_oci_is_not_a_layout_is_left_alone() -> Result<()> {
    let bins = fake_binaries(6)?;
    let out = tempfile::tempdir()?;
    fs::create_dir(out.path().join("oci"))?;
    fs::write(out.path().join("oci/notes.txt"), "mine")?;
    let err = package_at(bins.path(), out.path(), "localhost/ferry:0.1.0", EPOCH)
        .expect_err("replaced a directory that was not an OCI layout");
    assert!(format!("{err:#}").contains("not an OCI layout"), "{err:#}");
    assert_eq!(
        fs::read_to_string(out.path().join("oci/notes.txt"))?,
        "mine"
    );
    Ok(())
}

fn skopeo(args: &[&str]) -> Result<String> {
    let out = Command::new("skopeo").args(args).output()?;
    ensure!(
        out.status.success(),
        "skopeo {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

#[test]
fn skopeo_reads_the_archive_and_the_layout() -> Result<()> {
    if Command::new("skopeo").arg("--version").output().is_err() {
        println!("SKIP: skopeo is not installed (`cargo xtask setup` installs it)");
        return Ok(());
    }
    let bins = fake_binaries(7)?;
    let out = tempfile::tempdir()?;
    let written = package_at(bins.path(), out.path(), "localhost/ferry:0.1.0", EPOCH)?;
    let archive = format!("oci-archive:{}", written.archive.display());
    let layout = format!("oci:{}", written.layout.display());
    let digest = format!("sha256:{}", written.manifest_digest);
    for source in [&archive, &layout] {
        let inspect = json(skopeo(&["inspect", source])?.as_bytes())?;
        assert_eq!(inspect["Digest"], digest.as_str(), "{source}: {inspect}");
        assert_eq!(inspect["Architecture"], "amd64");
        assert_eq!(inspect["Os"], "linux");
        assert_eq!(
            inspect["Labels"]["org.opencontainers.image.version"],
            "0.1.0"
        );
    }
    // copy reads every blob and checks its digest and size.
    let copied: PathBuf = out.path().join("copied");
    let dest = format!("dir:{}", copied.display());
    skopeo(&["--insecure-policy", "copy", "--quiet", &archive, &dest])?;
    let manifest = fs::read(copied.join("manifest.json"))?;
    assert_eq!(sha256(&manifest), written.manifest_digest);

    // Docker's view of the same tarball, through manifest.json: skopeo
    // lists the layers by diff_id, which it checks as it copies them.
    let config = json(&fs::read(
        copied.join(
            json(&manifest)?["config"]["digest"]
                .as_str()
                .context("config digest")?
                .trim_start_matches("sha256:"),
        ),
    )?)?;
    let docker = format!("docker-archive:{}", written.archive.display());
    let inspect = json(skopeo(&["inspect", &docker])?.as_bytes())?;
    assert_eq!(inspect["Layers"], config["rootfs"]["diff_ids"], "{inspect}");
    let dest = format!("dir:{}", out.path().join("from-docker").display());
    skopeo(&["--insecure-policy", "copy", "--quiet", &docker, &dest])?;
    Ok(())
}
