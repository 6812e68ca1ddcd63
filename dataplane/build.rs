//! Builds the eBPF object (`ebpf/programs`) with the nightly toolchain and
//! bpf-linker, into `OUT_DIR/ferry-ebpf`, which the agent embeds with
//! `aya::include_bytes_aligned!`. `cargo xtask setup` installs both tools.
//!
//! aya-build does the same for a crate inside the calling workspace; ours is
//! a workspace of its own (it cannot build for the host), hence this script.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let ebpf = manifest_dir.join("../ebpf");
    for dir in [
        "Cargo.toml",
        "Cargo.lock",
        "programs/src",
        "programs/Cargo.toml",
        "common/src",
        "common/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", ebpf.join(dir).display());
    }
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let target_dir = out_dir.join("ebpf-target");

    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "build", "--release", "--locked"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--manifest-path")
        .arg(ebpf.join("programs/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        // BTF for the maps and programs; the unit separator is cargo's
        // encoding for a flag list.
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            rustflags(&manifest_dir).join("\x1f"),
        );
    // The outer build's toolchain and wrappers (clippy's, say) must not leak
    // into the nightly BPF build.
    for key in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "RUSTUP_TOOLCHAIN",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
    ] {
        cmd.env_remove(key);
    }
    let status = match cmd.status() {
        Ok(s) => s,
        Err(e) => panic!(
            "running `rustup run nightly cargo` for the eBPF programs: {e}; run `cargo xtask setup` first"
        ),
    };
    assert!(
        status.success(),
        "building the eBPF programs failed ({status}); `cargo xtask setup` installs the nightly rust-src and bpf-linker they need"
    );
    for name in ["ferry-ebpf", "ferry-xdp-pass"] {
        let object = target_dir.join("bpfel-unknown-none/release").join(name);
        std::fs::copy(&object, out_dir.join(name))
            .unwrap_or_else(|e| panic!("copying {}: {e}", object.display()));
    }
}

/// The BPF build's flags: BTF, and source paths (kept in the BTF's line
/// info) made independent of where the checkout and cargo's home are, so
/// the object, and the image holding the agent, are the same bytes from any
/// directory.
fn rustflags(manifest_dir: &std::path::Path) -> Vec<String> {
    let mut flags = vec!["-Cdebuginfo=2".to_owned(), "-Clink-arg=--btf".to_owned()];
    let workspace = manifest_dir.parent().unwrap_or(manifest_dir);
    let mut remaps = vec![(workspace.to_path_buf(), "/ferry")];
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    remaps.extend(cargo_home.map(|c| (c, "/cargo")));
    let rustup_home = env::var_os("RUSTUP_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".rustup")));
    remaps.extend(rustup_home.map(|r| (r, "/rustup")));
    for (from, to) in remaps {
        flags.push(format!("--remap-path-prefix={}={to}", from.display()));
    }
    flags
}
