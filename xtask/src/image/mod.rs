//! `cargo xtask image`: Ferry's container image, built without Docker or
//! any daemon, reproducibly (two builds of a commit give the same digest).
//!
//! It builds ferry-agent, ferry-cni and ferry-dns static (glibc's
//! `+crt-static`, the image holds no libc) in the `image-build` profile,
//! refuses any binary that still asks for a program interpreter, and writes
//! one image of one layer: `/usr/bin/ferry-agent` (the entrypoint; the init
//! steps are its subcommands, so there is no shell), `/usr/bin/ferry-dns`,
//! `/opt/ferry/cni/ferry-cni` (copied onto the host by the agent), `/tmp`
//! and `/var/run/ferry`. Output: an OCI image layout (`<out>/oci/`) and a
//! tarball (`<out>/ferry-<version>.tar`) for `podman load`, `ctr images
//! import`, `kind load image-archive` and `docker load`.
//!
//! `ustar` writes the tar archives, `oci` the image documents, `elf` checks
//! the binaries, `reference` parses the image name.

mod elf;
mod oci;
mod reference;
mod ustar;

#[cfg(test)]
mod tests;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

use crate::{cargo, target_dir, workspace_root};
use oci::{Image, Inputs};
use reference::Reference;

/// The cargo target the image's binaries are built for. Explicit, because
/// with `+crt-static` and no `--target` cargo would pass the flag to
/// proc-macro crates too, which cannot be static (rust-lang/rust#78210).
const TARGET: &str = "x86_64-unknown-linux-gnu";
/// The cargo profile (root Cargo.toml): release, stripped, one codegen
/// unit, thin LTO.
const PROFILE: &str = "image-build";
/// (package, binary) of everything in the image.
const BINARIES: [(&str, &str); 3] = [
    ("ferry-dataplane", "ferry-agent"),
    ("ferry-cni", "ferry-cni"),
    ("ferry-dns", "ferry-dns"),
];
/// Issue 14's budget for the compressed image.
const SIZE_GOAL: usize = 20 << 20;

#[derive(Debug)]
pub struct Args {
    /// `name:tag`; defaults to `localhost/ferry:<workspace version>`.
    pub name: Option<String>,
    /// Defaults to `<target dir>/image`.
    pub out: Option<PathBuf>,
    /// A directory holding ferry-agent, ferry-cni and ferry-dns to package
    /// instead of building them.
    pub binaries: Option<PathBuf>,
}

/// Where the image went and what it is.
#[derive(Debug)]
pub struct Written {
    pub manifest_digest: String,
    pub compressed_size: usize,
    pub layer_size: usize,
    pub tar_size: usize,
    pub layout: PathBuf,
    pub archive: PathBuf,
}

/// What the image says about its source, besides the binaries.
#[derive(Debug)]
pub struct Source<'a> {
    pub reference: &'a Reference,
    pub version: &'a str,
    pub revision: Option<&'a str>,
    pub epoch: u64,
}

/// The image `args` asks for, built and written.
struct Made {
    reference: Reference,
    epoch: u64,
    binaries: PathBuf,
    written: Written,
}

fn make(args: Args) -> Result<Made> {
    let version = env!("CARGO_PKG_VERSION");
    let name = args
        .name
        .unwrap_or_else(|| format!("localhost/ferry:{version}"));
    let reference = Reference::parse(&name)?;
    let root = workspace_root();
    let epoch = source_date_epoch(&root)?;
    let revision = revision(&root);
    let binaries = match args.binaries {
        Some(dir) => dir,
        None => build(&root)?,
    };
    let out = args.out.unwrap_or_else(|| target_dir().join("image"));
    let written = package(
        &binaries,
        &out,
        &Source {
            reference: &reference,
            version,
            revision: revision.as_deref(),
            epoch,
        },
    )?;
    Ok(Made {
        reference,
        epoch,
        binaries,
        written,
    })
}

fn mib(n: usize) -> f64 {
    n as f64 / f64::from(1 << 20)
}

pub fn run(args: Args) -> Result<()> {
    let Made {
        reference,
        epoch,
        written,
        ..
    } = make(args)?;
    println!("image {}", reference.full);
    println!("  manifest digest  sha256:{}", written.manifest_digest);
    println!(
        "  compressed size  {} bytes ({:.2} MiB; goal <= {} MiB), layer {} bytes, unpacked {} bytes",
        written.compressed_size,
        mib(written.compressed_size),
        SIZE_GOAL >> 20,
        written.layer_size,
        written.tar_size
    );
    println!("  created          {}", oci::rfc3339(epoch));
    println!("  OCI layout       {}", written.layout.display());
    println!("  archive          {}", written.archive.display());
    if written.compressed_size > SIZE_GOAL {
        eprintln!(
            "xtask: warning: the image is {:.2} MiB compressed, over the {} MiB goal",
            mib(written.compressed_size),
            SIZE_GOAL >> 20
        );
    }
    Ok(())
}

/// `cargo xtask bench image`: builds the image and writes its sizes, set
/// against issue 14's goal and the published sizes of the images Ferry
/// replaces, to `md`.
pub fn bench(md: &Path) -> Result<()> {
    let made = make(Args {
        name: None,
        out: None,
        binaries: None,
    })?;
    let w = &made.written;
    let ratio = |n: usize, of: f64| format!("x{:.3}", mib(n) / of);
    let mut t = String::new();
    t.push_str(&format!(
        "# The image: {} (sha256:{})\n\n",
        made.reference.full, w.manifest_digest
    ));
    t.push_str("| | size | against the goal (20 MiB compressed) |\n|---|---:|---:|\n");
    t.push_str(&format!(
        "| compressed (gzip, what a node pulls) | {:.2} MiB | {} |\n",
        mib(w.compressed_size),
        ratio(w.compressed_size, mib(SIZE_GOAL))
    ));
    t.push_str(&format!(
        "| unpacked (the layer's tar) | {:.2} MiB | |\n",
        mib(w.tar_size)
    ));
    for (_, bin) in BINARIES {
        let path = made.binaries.join(bin);
        let len = fs::metadata(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        t.push_str(&format!(
            "| {bin} (static, stripped) | {:.2} MiB | |\n",
            mib(usize::try_from(len).unwrap_or(usize::MAX))
        ));
    }
    // Published, not measured here: this machine reaches no image registry.
    t.push_str(&format!(
        "\nPublished compressed sizes of what it replaces (not measured here: no registry is reachable): \
         k3d's k3s image about 263 MB (Ferry {}), as issue 14 states.\n",
        ratio(w.compressed_size, 263.0 * 1e6 / f64::from(1 << 20))
    ));
    if let Some(dir) = md.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(md, &t).with_context(|| format!("writing {}", md.display()))?;
    print!("{t}");
    println!("\nwritten to {}", md.display());
    Ok(())
}

/// Builds the binaries static and returns the directory holding them.
fn build(root: &Path) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args([
        "build",
        "--locked",
        "--profile",
        PROFILE,
        "--target",
        TARGET,
    ]);
    for (package, bin) in BINARIES {
        cmd.args(["-p", package, "--bin", bin]);
    }
    // CARGO_ENCODED_RUSTFLAGS wins over every other source of flags, so the
    // binaries never depend on the caller's RUSTFLAGS; the unit separator
    // keeps paths with spaces whole. With `--target` given these reach only
    // the target's crates, not build scripts or proc macros, and ferry-agent's
    // build script sets its own for the eBPF build.
    cmd.env("CARGO_ENCODED_RUSTFLAGS", rustflags(root).join("\x1f"));
    crate::run(&mut cmd)?;
    Ok(target_dir().join(TARGET).join(PROFILE))
}

/// Static glibc, and source paths (ours and the registry's, both of which
/// panic messages name) that do not depend on where the checkout or the
/// cargo home is.
fn rustflags(root: &Path) -> Vec<String> {
    let mut flags = vec![
        "-Ctarget-feature=+crt-static".to_owned(),
        format!("--remap-path-prefix={}=/ferry", root.display()),
    ];
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    if let Some(home) = cargo_home {
        flags.push(format!("--remap-path-prefix={}=/cargo", home.display()));
    }
    flags
}

/// Packages the binaries in `binaries` into `out`: the layout replaces
/// `out/oci` and the tarball `out/ferry-<version>.tar`, each only once
/// complete, so a refused binary or a failed write leaves the previous image
/// as it was.
pub fn package(binaries: &Path, out: &Path, source: &Source<'_>) -> Result<Written> {
    let mut bytes = Vec::new();
    for (_, bin) in BINARIES {
        let path = binaries.join(bin);
        let b = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        elf::check_static(&path.display().to_string(), &b)?;
        bytes.push(b);
    }
    let image = Image::build(&Inputs {
        agent: &bytes[0],
        cni: &bytes[1],
        dns: &bytes[2],
        reference: source.reference,
        version: source.version,
        revision: source.revision,
        epoch: source.epoch,
    })?;
    drop(bytes);
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;

    let layout = out.join("oci");
    if layout.exists() && !layout.join("oci-layout").is_file() {
        bail!(
            "{} exists and is not an OCI layout; not replacing it",
            layout.display()
        );
    }
    let partial = out.join(".oci.partial");
    if partial.exists() {
        fs::remove_dir_all(&partial).with_context(|| format!("removing {}", partial.display()))?;
    }
    image.write_layout(&partial)?;
    if layout.exists() {
        fs::remove_dir_all(&layout).with_context(|| format!("removing {}", layout.display()))?;
    }
    fs::rename(&partial, &layout).with_context(|| format!("renaming to {}", layout.display()))?;

    let archive = out.join(format!("ferry-{}.tar", source.version));
    let partial = out.join(format!(".ferry-{}.tar.partial", source.version));
    fs::write(&partial, image.archive()?)
        .with_context(|| format!("writing {}", partial.display()))?;
    fs::rename(&partial, &archive).with_context(|| format!("renaming to {}", archive.display()))?;

    Ok(Written {
        compressed_size: image.compressed_size(),
        layer_size: image.layer_size,
        tar_size: image.tar_size,
        manifest_digest: image.manifest_digest,
        layout,
        archive,
    })
}

/// `SOURCE_DATE_EPOCH` when set (reproducible-builds.org), else the time of
/// the commit built, else the epoch itself.
fn source_date_epoch(root: &Path) -> Result<u64> {
    if let Some(value) = std::env::var_os("SOURCE_DATE_EPOCH") {
        let text = value.to_string_lossy();
        return text.trim().parse().with_context(|| {
            format!("SOURCE_DATE_EPOCH={text:?} is not a whole number of seconds")
        });
    }
    Ok(git(root, &["log", "-1", "--format=%ct"])
        .and_then(|t| t.parse().ok())
        .unwrap_or(0))
}

/// The commit built, `-dirty` appended when tracked files differ from it;
/// `None` outside a git checkout.
fn revision(root: &Path) -> Option<String> {
    let head = git(root, &["rev-parse", "HEAD"])?;
    let clean = git(root, &["diff", "--quiet", "HEAD", "--"]).is_some();
    Some(if clean { head } else { format!("{head}-dirty") })
}

/// Stdout of a git command in `root`, trimmed, or `None` if it fails (no
/// git, not a checkout).
fn git(root: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
