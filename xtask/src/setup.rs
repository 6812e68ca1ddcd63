//! `cargo xtask setup`: each step checks whether its result is already there
//! and says what it found or did, so reruns are quick and the log explains
//! itself.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use crate::{cargo, output, run, succeeds, workspace_root};

/// Debian packages the build, the dataplane, its tests and the benchmarks use.
const DEBIAN_PACKAGES: &[&str] = &[
    "iproute2",
    // Test worlds turn checksum offload off on their underlay, as on a wire.
    "ethtool",
    "iptables",
    "nftables",
    // The NetworkPolicy bench's kube-router-style ruleset (ipsets of pods).
    "ipset",
    "bpftool",
    "tcpdump",
    "conntrack",
    "iperf3",
    "wrk",
    "hping3",
    // trafgen: the packet generator of the NodePort forwarding bench.
    "netsniff-ng",
    "dnsutils",
    "knot-dnsutils",
    "dnsperf",
    "unbound",
    "knot",
    "etcd-server",
    "etcd-client",
    "containernetworking-plugins",
    "sqlite3",
    // `protoc`: etcd-client generates its gRPC code from .proto files at build time.
    "protobuf-compiler",
    // ...and the well-known types (google/protobuf/*.proto) it imports.
    "libprotobuf-dev",
    "jq",
    // The DNS tests read ferry-dns's /ready and /metrics.
    "curl",
    // The image tests read `cargo xtask image`'s archive and layout back with
    // it (it checks every blob's digest and size); it never builds images.
    "skopeo",
    // The venv that holds PyPI's kubernetes-validate (the manifests' schema
    // check); Debian does not package it.
    "python3-venv",
];

/// Packages whose postinst enables a daemon, with the systemd units it enables.
/// Tests start their own instances on loopback, so a system-wide one would only
/// hold the ports they want.
const DAEMON_UNITS: &[(&str, &[&str])] = &[
    (
        "unbound",
        &["unbound.service", "unbound-resolvconf.service"],
    ),
    ("knot", &["knot.service"]),
    ("etcd-server", &["etcd.service"]),
];

const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";
const POLICY_RC_D_BACKUP: &str = "/usr/sbin/policy-rc.d.ferry-backup";
const BPFFS: &str = "/sys/fs/bpf";

/// PyPI's `kubernetes-validate`, which ships Kubernetes' JSON schemas: the
/// deploy tests check `deploy/` against 1.32's, offline.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
const KUBERNETES_VALIDATE_VENV: &str = "/usr/local/lib/kubernetes-validate";
const KUBERNETES_VALIDATE_BIN: &str = "/usr/local/bin/kubernetes-validate";

pub fn all() -> Result<()> {
    let started = Instant::now();
    debian_packages()?;
    let sysroot = nightly_sysroot()?;
    rust_src(&sysroot)?;
    bpf_linker(&sysroot)?;
    bpffs()?;
    kubernetes_validate()?;
    say(&format!("done in {:.1?}", started.elapsed()));
    Ok(())
}

fn say(msg: &str) {
    eprintln!("setup: {msg}");
}

fn debian_packages() -> Result<()> {
    let missing = missing_packages()?;
    if missing.is_empty() {
        say(&format!(
            "debian packages: all {} present",
            DEBIAN_PACKAGES.len()
        ));
        return Ok(());
    }
    say(&format!(
        "debian packages: installing {}",
        missing.join(" ")
    ));
    if output(Command::new("id").arg("-u"))? != "0" {
        bail!("installing Debian packages needs root; rerun `cargo xtask setup` as root");
    }
    {
        // Keep postinst scripts from starting daemons: on a machine without an
        // init system starting them fails the install, and with one they would
        // grab the loopback ports the tests use.
        let _guard = NoDaemonStart::install()?;
        // Only refresh the index when something is missing, so a ready
        // machine never touches the network.
        run(apt_get().args(["update", "-q"]))?;
        run(apt_get()
            .args(["install", "-y", "-q", "--no-install-recommends"])
            // Keep existing config files untouched instead of prompting.
            .args([
                "-o",
                "Dpkg::Options::=--force-confdef",
                "-o",
                "Dpkg::Options::=--force-confold",
            ])
            .args(&missing))?;
    }
    disable_new_daemons(&missing)
}

fn apt_get() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

/// Asks dpkg about all packages in one call; anything not reported as
/// "install ok installed" (absent, removed, half-configured) counts as missing.
fn missing_packages() -> Result<Vec<String>> {
    // dpkg-query exits 1 when some package is unknown to it but still prints
    // the others, so read stdout whatever the status.
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${Status}\n"])
        .args(DEBIAN_PACKAGES)
        .stderr(std::process::Stdio::null())
        .output()
        .context("could not run dpkg-query; is this a Debian machine?")?;
    let listing = String::from_utf8_lossy(&out.stdout);
    let installed: Vec<&str> = listing
        .lines()
        .filter_map(|line| line.strip_suffix(" install ok installed"))
        // Multi-arch packages may be reported as `name:arch`.
        .map(|name| name.split(':').next().unwrap_or(name))
        .collect();
    Ok(DEBIAN_PACKAGES
        .iter()
        .filter(|pkg| !installed.contains(pkg))
        .map(|pkg| (*pkg).to_owned())
        .collect())
}

/// Postinst enables the daemons' units even when policy-rc.d keeps them from
/// starting, so on a systemd machine they would come up at next boot. Only
/// packages installed by this run are touched: one that was already there may
/// be serving the host (unbound as its resolver, say) and is left alone.
fn disable_new_daemons(newly_installed: &[String]) -> Result<()> {
    if !Path::new("/run/systemd/system").exists() {
        // No systemd: policy-rc.d already kept the daemons down and nothing
        // will start them at boot.
        return Ok(());
    }
    for (package, units) in DAEMON_UNITS {
        if !newly_installed.iter().any(|p| p == package) {
            continue;
        }
        for unit in *units {
            let enabled = succeeds(Command::new("systemctl").args(["is-enabled", "--quiet", unit]));
            let active = succeeds(Command::new("systemctl").args(["is-active", "--quiet", unit]));
            if enabled || active {
                say(&format!(
                    "{unit}: disabling; tests run their own instance on loopback"
                ));
                run(Command::new("systemctl").args(["disable", "--now", unit]))?;
            }
        }
    }
    Ok(())
}

/// Replaces /usr/sbin/policy-rc.d with one that forbids starting services and
/// puts back whatever was there (e.g. Docker's own) when dropped.
struct NoDaemonStart {
    had_original: bool,
}

impl NoDaemonStart {
    fn install() -> Result<Self> {
        let path = Path::new(POLICY_RC_D);
        let backup = Path::new(POLICY_RC_D_BACKUP);
        // A leftover backup means an earlier run was killed before restoring:
        // the file in place is ours and the backup is the real original.
        let had_original = if backup.exists() {
            true
        } else if path.exists() {
            fs::rename(path, backup)
                .with_context(|| format!("could not move {POLICY_RC_D} aside"))?;
            true
        } else {
            false
        };
        let guard = Self { had_original };
        fs::write(
            path,
            "#!/bin/sh\n# Written by `cargo xtask setup` during apt-get install.\nexit 101\n",
        )
        .with_context(|| format!("could not write {POLICY_RC_D}"))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("could not make {POLICY_RC_D} executable"))?;
        Ok(guard)
    }
}

impl Drop for NoDaemonStart {
    fn drop(&mut self) {
        let restored = if self.had_original {
            fs::rename(POLICY_RC_D_BACKUP, POLICY_RC_D)
        } else {
            fs::remove_file(POLICY_RC_D)
        };
        if let Err(err) = restored {
            eprintln!("setup: warning: could not restore {POLICY_RC_D}: {err}");
        }
    }
}

/// The nightly toolchain builds the eBPF programs (`-Z build-std`), and its
/// LLVM is the one bpf-linker must link, so install it if absent.
fn nightly_sysroot() -> Result<PathBuf> {
    let print_sysroot = || {
        let mut cmd = Command::new("rustc");
        cmd.args(["+nightly", "--print", "sysroot"]);
        cmd
    };
    if !succeeds(&mut print_sysroot()) {
        say("nightly toolchain: installing");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    Ok(PathBuf::from(output(&mut print_sysroot())?))
}

fn rust_src(sysroot: &Path) -> Result<()> {
    if sysroot.join("lib/rustlib/src/rust/library").is_dir() {
        say("nightly rust-src: present");
        return Ok(());
    }
    say("nightly rust-src: installing");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn bpf_linker(sysroot: &Path) -> Result<()> {
    // `--version` loads libLLVM, so this also catches a bpf-linker whose LLVM
    // went away when rustup updated the nightly.
    if let Ok(version) = output(Command::new("bpf-linker").arg("--version")) {
        say(&format!("bpf-linker: present ({version})"));
        return Ok(());
    }
    let lib_dir = sysroot.join("lib");
    let (libllvm, major) = nightly_libllvm(&lib_dir)?;
    say(&format!(
        "bpf-linker: installing against {} (LLVM {major})",
        libllvm.display()
    ));

    // bpf-linker's build script links `-lLLVM` from `$LLVM_PREFIX/lib`, but the
    // nightly ships only the versioned file, so give it a prefix whose
    // libLLVM.so points there. The prefix is only needed while building.
    let prefix = workspace_root().join("target/llvm-prefix");
    let link = prefix.join("lib/libLLVM.so");
    fs::create_dir_all(prefix.join("lib"))
        .with_context(|| format!("could not create {}", prefix.display()))?;
    if link.symlink_metadata().is_ok() {
        fs::remove_file(&link).with_context(|| format!("could not replace {}", link.display()))?;
    }
    std::os::unix::fs::symlink(&libllvm, &link)
        .with_context(|| format!("could not link {}", link.display()))?;

    // The binary needs the library's soname (libLLVM.so.N-rust-...), which
    // lives only in the sysroot; the build script's own rpath points at the
    // prefix. Adding the sysroot's lib dir as rpath lets it run without
    // LD_LIBRARY_PATH and survive `cargo clean`.
    let mut rustflags = std::env::var("RUSTFLAGS").unwrap_or_default();
    if !rustflags.is_empty() {
        rustflags.push(' ');
    }
    rustflags.push_str(&format!("-C link-arg=-Wl,-rpath,{}", lib_dir.display()));

    let started = Instant::now();
    run(cargo()
        .env("LLVM_PREFIX", &prefix)
        .env("RUSTFLAGS", rustflags)
        // Would override RUSTFLAGS if inherited from an outer cargo.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .args(["install", "bpf-linker", "--locked", "--force"])
        .args(["--no-default-features", "--features"])
        .arg(format!("llvm-{major}")))?;
    let version = output(Command::new("bpf-linker").arg("--version"))
        .context("bpf-linker was installed but does not run; is ~/.cargo/bin on PATH?")?;
    say(&format!(
        "bpf-linker: installed {version} in {:.0?}",
        started.elapsed()
    ));
    Ok(())
}

/// Finds the nightly's `libLLVM.so.<major>.<minor>-rust-<version>` and its
/// major version, which picks bpf-linker's `llvm-<major>` feature.
fn nightly_libllvm(lib_dir: &Path) -> Result<(PathBuf, u32)> {
    let entries =
        fs::read_dir(lib_dir).with_context(|| format!("could not read {}", lib_dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("could not read {}", lib_dir.display()))?;
        let name = entry.file_name();
        let Some(version) = name
            .to_str()
            .and_then(|n| n.strip_prefix("libLLVM.so."))
            .filter(|v| v.contains("-rust-"))
        else {
            continue;
        };
        let major = version
            .split(['.', '-'])
            .next()
            .and_then(|m| m.parse().ok())
            .with_context(|| format!("unexpected LLVM library name {version}"))?;
        return Ok((entry.path(), major));
    }
    bail!(
        "no libLLVM.so.*-rust-* in {}; the nightly toolchain looks incomplete",
        lib_dir.display()
    )
}

fn bpffs() -> Result<()> {
    let mounts = fs::read_to_string("/proc/mounts").context("could not read /proc/mounts")?;
    let mounted = mounts.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let (_source, target, fstype) = (fields.next(), fields.next(), fields.next());
        target == Some(BPFFS) && fstype == Some("bpf")
    });
    if mounted {
        say(&format!("bpffs: mounted at {BPFFS}"));
        return Ok(());
    }
    say(&format!("bpffs: mounting at {BPFFS}"));
    run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))
}

/// Installs `kubernetes-validate` in a venv of its own (Debian's python
/// refuses system-wide pip installs) and links it onto PATH.
fn kubernetes_validate() -> Result<()> {
    let pinned = KUBERNETES_VALIDATE.rsplit("==").next().unwrap_or_default();
    if let Ok(version) = output(Command::new(KUBERNETES_VALIDATE_BIN).arg("--version"))
        && version == pinned
    {
        say(&format!("kubernetes-validate: present ({version})"));
        return Ok(());
    }
    say(&format!(
        "kubernetes-validate: installing {KUBERNETES_VALIDATE} in {KUBERNETES_VALIDATE_VENV}"
    ));
    // Debian's interpreter, not whichever python3 comes first on PATH: the
    // venv module is the Debian package installed above.
    run(Command::new("/usr/bin/python3").args([
        "-m",
        "venv",
        "--clear",
        KUBERNETES_VALIDATE_VENV,
    ]))?;
    run(
        Command::new(format!("{KUBERNETES_VALIDATE_VENV}/bin/pip")).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            KUBERNETES_VALIDATE,
        ]),
    )?;
    let link = Path::new(KUBERNETES_VALIDATE_BIN);
    if link.symlink_metadata().is_ok() {
        fs::remove_file(link)
            .with_context(|| format!("could not replace {KUBERNETES_VALIDATE_BIN}"))?;
    }
    std::os::unix::fs::symlink(
        format!("{KUBERNETES_VALIDATE_VENV}/bin/kubernetes-validate"),
        link,
    )
    .with_context(|| format!("could not link {KUBERNETES_VALIDATE_BIN}"))?;
    let version = output(Command::new(KUBERNETES_VALIDATE_BIN).arg("--version"))
        .context("kubernetes-validate was installed but does not run")?;
    say(&format!("kubernetes-validate: installed {version}"));
    Ok(())
}
