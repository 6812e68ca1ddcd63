//! `cargo xtask`: the project's own developer commands.
//!
//! This crate owns these commands and nothing else:
//! - `setup`: turning a fresh Debian machine (as root) into one that can build
//!   and test Ferry — Debian packages, the nightly `rust-src`, a `bpf-linker`
//!   built against the nightly's own LLVM, and a mounted bpffs. Every step
//!   checks first, so a rerun on a ready machine takes well under a second.
//! - `test`: the single entry point that runs every test, so the README, CI and
//!   developers all run the same thing.
//! - `bench`: building the release binaries a benchmark harness needs and
//!   running it (the harnesses themselves live in `benches/`).
//! - `up`: building the release binaries of a local cluster and running
//!   `ferry up` with them (the README's first command).
//! - `fuzz`: running a cargo-fuzz target for a while (installing cargo-fuzz
//!   first if it is missing).
//! - `image`: building ferry-agent, ferry-cni and ferry-dns static and
//!   packaging them as a reproducible OCI image, written as an image layout
//!   and a tarball for `podman load`, `ctr images import` and `kind load
//!   image-archive`, with no daemon (`image/`).
//! - `gen-api`: regenerating ferry-apiserver's protobuf tables and vendored
//!   OpenAPI definitions from upstream Kubernetes sources (`apigen.rs`).
//!
//! It shells out with `std::process::Command` rather than pulling in crates, so
//! it builds quickly on a machine that has nothing yet; the image writer's
//! gzip (flate2 on zlib-rs) and SHA-256 (ring) are the exceptions, both
//! already in the workspace's tree.

mod apigen;
mod image;
mod setup;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Ferry developer commands")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Install everything the project needs (idempotent; run as root on Debian).
    Setup,
    /// Build the release binaries of a cluster and run `ferry up` with them;
    /// extra arguments go to `ferry up` (e.g. `-- --nodes 3`). `ferry
    /// status` and `ferry down` are then `target/release/ferry status|down`.
    Up {
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Run every test in the workspace; extra arguments go to `cargo test`.
    Test {
        /// Passed on unchanged, e.g. `-p ferry-controlplane -- --nocapture`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Build release binaries and run a benchmark; extra arguments after `--`
    /// go to the harness.
    Bench {
        /// Which benchmark.
        #[arg(value_enum, default_value_t = Bench::Apiserver)]
        which: Bench,
        /// Passed on unchanged, e.g. `-- --services 1000 --watchers 100`
        /// (apiserver), `-- --pods 40 --stacks v4` (cni) or `-- --quick`
        /// (services, dns, nodeport).
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Fuzz a target with the nightly toolchain for SECONDS; a crash leaves
    /// its input in the fuzz crate's artifacts/ and fails the command.
    Fuzz {
        /// Which target.
        #[arg(long, value_enum, default_value_t = FuzzTarget::DnsQuery)]
        target: FuzzTarget,
        #[arg(default_value_t = 60)]
        seconds: u64,
    },
    /// Build ferry-agent, ferry-cni and ferry-dns static and package them,
    /// without any daemon, as a reproducible OCI image: an image layout
    /// (`<out>/oci/`) and a tarball (`<out>/ferry-<version>.tar`) for
    /// `podman load`, `ctr images import` and `kind load image-archive`.
    Image {
        /// Image name with its tag [default: localhost/ferry:<workspace version>].
        #[arg(long)]
        name: Option<String>,
        /// Output directory [default: target/image].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Package ferry-agent, ferry-cni and ferry-dns from this directory
        /// instead of building them (they must still be static).
        #[arg(long, value_name = "DIR")]
        binaries: Option<PathBuf>,
    },
    /// Regenerate `controlplane/src/api/protobuf/schema.rs` and
    /// `controlplane/openapi/definitions.json` from upstream checkouts.
    GenApi {
        /// A kubernetes/api checkout at the release followed.
        #[arg(long)]
        k8s_api: PathBuf,
        /// A kubernetes/apimachinery checkout at the same release.
        #[arg(long)]
        apimachinery: PathBuf,
        /// kubernetes/kubernetes `api/openapi-spec/swagger.json` of that release.
        #[arg(long)]
        swagger: PathBuf,
        /// The k8s.io/api tag recorded in the outputs.
        #[arg(long, default_value = "v0.33.13")]
        k8s_api_version: String,
        /// The Kubernetes release recorded in the outputs.
        #[arg(long, default_value = "v1.33")]
        kubernetes_version: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FuzzTarget {
    /// ferry-dns's query path (dns/fuzz, `query`).
    DnsQuery,
    /// ferry-apiserver's patch paths: JSON, merge, strategic merge and
    /// apply (controlplane/fuzz, `patch`).
    ApiserverPatch,
    /// ferry-apiserver's object decoders, JSON and protobuf, through create
    /// (controlplane/fuzz, `decode`).
    ApiserverDecode,
}

impl FuzzTarget {
    /// The fuzz crate's directory and the target's name in it.
    fn location(self) -> (&'static str, &'static str) {
        match self {
            Self::DnsQuery => ("dns/fuzz", "query"),
            Self::ApiserverPatch => ("controlplane/fuzz", "patch"),
            Self::ApiserverDecode => ("controlplane/fuzz", "decode"),
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Bench {
    /// ferry-apiserver against etcd: bulk creates, lists, watch fan-out and
    /// memory; writes target/bench/apiserver.md.
    Apiserver,
    /// ferry-cni against Debian's bridge + host-local: ADD and DEL latency,
    /// one at a time and concurrent, in network namespaces (root); writes
    /// target/bench/cni.md.
    Cni,
    /// Ferry's eBPF service dataplane against kube-proxy's iptables and
    /// nftables rulesets: connection rate and latency to a ClusterIP with
    /// 1k-30k Services, programming time, endpoint-change delay and agent
    /// memory, in a testbed world (root); writes target/bench/services.md.
    /// Then the TC program's per-packet cost by BPF_PROG_TEST_RUN with 1,
    /// 1,000 and 100,000 services; writes target/bench/packet.md.
    Services,
    /// A NodePort from outside, backend on the other node: forwarding
    /// packets per second per core of the entry node (trafgen bursts,
    /// established and new flows), new-connection rate and latency, for
    /// Ferry's variants (TC; XDP and DSR once the agent has them) against
    /// kube-proxy's nftables and iptables NodePort rulesets, with 1, 1,000
    /// and 100,000 Services, in a testbed world (root); writes
    /// target/bench/nodeport.md.
    Nodeport,
    /// `ferry up` measured whole: time to a usable cluster with 1 and 3
    /// nodes (library and CLI) against kind/k3d/minikube's published
    /// figures, idle memory, pod create to reachable through its Service,
    /// a Deployment scaled from 0 to 1,000 on 10 nodes, 10,000 Services
    /// with 100,000 Pods loaded into ferry-apiserver, and a pod's veth to
    /// the agent's programs attached (root); writes target/bench/cluster.md.
    Cluster,
    /// ferry-dns against Debian's unbound and knot serving the equivalent
    /// static zone: dnsperf queries/s and latency for a mix of cluster names
    /// with 10,000 Services and 100,000 Pods in the API, time to ready and
    /// memory against CoreDNS's formula, in a network namespace (root);
    /// writes target/bench/dns.md.
    Dns,
    /// NetworkPolicy: the pod programs' per-packet cost by BPF_PROG_TEST_RUN
    /// with 0, 100 and 10,000 policies over 10,000 pods (writes
    /// target/bench/policy.md), then new-connection rate and latency between
    /// pods under 1,000 policies against a kube-router-style iptables+ipset
    /// ruleset, and policy change to enforcement, in a testbed world (root);
    /// writes target/bench/netpol.md.
    Policy,
    /// The container image (`cargo xtask image`): compressed and unpacked
    /// size and each binary's, against issue 14's 20 MiB goal; writes
    /// target/bench/image.md.
    Image,
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Cmd::Setup => setup::all(),
        Cmd::Up { args } => up(&args),
        Cmd::Test { .. } => test(&raw_args_after("test")),
        Cmd::Bench { which, args } => bench(which, &args),
        Cmd::Fuzz { target, seconds } => fuzz(target, seconds),
        Cmd::Image {
            name,
            out,
            binaries,
        } => image::run(image::Args {
            name,
            out,
            binaries,
        }),
        Cmd::GenApi {
            k8s_api,
            apimachinery,
            swagger,
            k8s_api_version,
            kubernetes_version,
        } => apigen::generate(
            &apigen::Inputs {
                k8s_api,
                apimachinery,
                swagger,
                k8s_api_version,
                kubernetes_version,
            },
            &workspace_root(),
        ),
    };
    // Print the error chain ourselves: anyhow's `Debug` adds a backtrace
    // whenever RUST_BACKTRACE is set, which buries a failed command's message.
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The arguments after the subcommand exactly as given. clap drops the first
/// `--`, which would turn `cargo xtask test -- --nocapture` into a cargo flag.
fn raw_args_after(subcommand: &str) -> Vec<OsString> {
    std::env::args_os()
        .skip(1)
        .skip_while(|arg| arg != subcommand)
        .skip(1)
        .collect()
}

/// The packages whose binaries a `ferry up` cluster runs.
const CLUSTER_PACKAGES: &[&str] = &[
    "ferry-cluster",
    "ferry-controlplane",
    "ferry-dataplane",
    "ferry-node",
    "ferry-cni",
    "ferry-dns",
    "ferry-testbed",
];

fn up(args: &[OsString]) -> Result<()> {
    let mut build = cargo();
    build.args(["build", "--release", "--bins"]);
    for p in CLUSTER_PACKAGES {
        build.args(["-p", p]);
    }
    run(&mut build)?;
    let ferry = target_dir().join("release").join("ferry");
    run(Command::new(ferry).arg("up").args(args))
}

fn test(args: &[OsString]) -> Result<()> {
    // Later this also builds the eBPF programs first, so the userspace tests
    // that load them find fresh objects.
    let mut cmd = cargo();
    cmd.arg("test");
    // Cargo ignores `-p` next to `--workspace`, so only test everything when
    // no package was named.
    let names_package = args
        .iter()
        .take_while(|a| *a != "--")
        .any(|a| a == "-p" || a == "--package" || a.to_string_lossy().starts_with("--package="));
    if !names_package {
        cmd.arg("--workspace");
    }
    run(cmd.args(args))
}

fn bench(which: Bench, args: &[OsString]) -> Result<()> {
    match which {
        Bench::Image => image::bench(&target_dir().join("bench/image.md")),
        Bench::Apiserver => run_bench(
            &[("ferry-controlplane", "ferry-apiserver")],
            "apiserver-bench",
            &[("--apiserver", "ferry-apiserver")],
            "apiserver.md",
            args,
        ),
        Bench::Cni => run_bench(
            &[("ferry-cni", "ferry-cni")],
            "cni-bench",
            &[("--ferry-cni", "ferry-cni")],
            "cni.md",
            args,
        ),
        Bench::Services => {
            run_bench(
                &[
                    ("ferry-controlplane", "ferry-apiserver"),
                    ("ferry-dataplane", "ferry-agent"),
                    ("ferry-cni", "ferry-cni"),
                    ("ferry-testbed", "ferry-netexec"),
                    ("ferry-benches", "packet-bench"),
                ],
                "services-bench",
                &[
                    ("--apiserver", "ferry-apiserver"),
                    ("--agent", "ferry-agent"),
                    ("--cni", "ferry-cni"),
                    ("--netexec", "ferry-netexec"),
                ],
                "services.md",
                args,
            )?;
            run_bench(&[], "packet-bench", &[], "packet.md", &[])
        }
        Bench::Nodeport => run_bench(
            &[
                ("ferry-controlplane", "ferry-apiserver"),
                ("ferry-dataplane", "ferry-agent"),
                ("ferry-cni", "ferry-cni"),
                ("ferry-testbed", "ferry-netexec"),
            ],
            "nodeport-bench",
            &[
                ("--apiserver", "ferry-apiserver"),
                ("--agent", "ferry-agent"),
                ("--cni", "ferry-cni"),
                ("--netexec", "ferry-netexec"),
            ],
            "nodeport.md",
            args,
        ),
        Bench::Cluster => run_bench(
            &[
                ("ferry-cluster", "ferry"),
                ("ferry-controlplane", "ferry-apiserver"),
                ("ferry-dataplane", "ferry-agent"),
                ("ferry-node", "ferry-node"),
                ("ferry-cni", "ferry-cni"),
                ("ferry-dns", "ferry-dns"),
                ("ferry-testbed", "ferry-netexec"),
            ],
            "cluster-bench",
            &[("--ferry", "ferry")],
            "cluster.md",
            args,
        ),
        Bench::Dns => run_bench(
            &[
                ("ferry-controlplane", "ferry-apiserver"),
                ("ferry-dns", "ferry-dns"),
            ],
            "dns-bench",
            &[
                ("--apiserver", "ferry-apiserver"),
                ("--ferry-dns", "ferry-dns"),
            ],
            "dns.md",
            args,
        ),
        Bench::Policy => {
            run_bench(&[], "policy-bench", &[], "policy.md", args)?;
            run_bench(
                &[
                    ("ferry-controlplane", "ferry-apiserver"),
                    ("ferry-dataplane", "ferry-agent"),
                    ("ferry-cni", "ferry-cni"),
                    ("ferry-testbed", "ferry-netexec"),
                ],
                "netpol-bench",
                &[
                    ("--apiserver", "ferry-apiserver"),
                    ("--agent", "ferry-agent"),
                    ("--cni", "ferry-cni"),
                    ("--netexec", "ferry-netexec"),
                ],
                "netpol.md",
                args,
            )
        }
    }
}

fn fuzz(target: FuzzTarget, seconds: u64) -> Result<()> {
    if !succeeds(Command::new("cargo").args(["fuzz", "--version"])) {
        run(cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let (dir, name) = target.location();
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root().join(dir))
        .args(["+nightly", "fuzz", "run", name, "--"])
        .arg(format!("-max_total_time={seconds}"));
    run(&mut cmd)
}

/// Builds `harness` (of ferry-benches) and the `binaries` (package, bin)
/// it drives in release mode (debug builds would measure the compiler's
/// choices, not the servers'), then runs it with each `flags` flag naming
/// a built binary, `--out target/bench/<out>` and `args`.
fn run_bench(
    binaries: &[(&str, &str)],
    harness: &str,
    flags: &[(&str, &str)],
    out: &str,
    args: &[OsString],
) -> Result<()> {
    let mut build = cargo();
    build.args([
        "build",
        "--release",
        "-p",
        "ferry-benches",
        "--bin",
        harness,
    ]);
    for (package, bin) in binaries {
        build.args(["-p", package, "--bin", bin]);
    }
    run(&mut build)?;
    let release = target_dir().join("release");
    let mut cmd = Command::new(release.join(harness));
    cmd.current_dir(workspace_root());
    for (flag, bin) in flags {
        cmd.arg(flag).arg(release.join(bin));
    }
    cmd.arg("--out")
        .arg(target_dir().join("bench").join(out))
        .args(args);
    run(&mut cmd)
}

/// Where cargo puts build output: `CARGO_TARGET_DIR` when set, else the
/// workspace's `target/`.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// The workspace root, so commands behave the same from any directory.
fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// The cargo that launched us (cargo sets `CARGO` for `cargo run`), so nested
/// builds use the same toolchain as the outer one.
fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// Runs a command with inherited stdio after echoing it, failing on non-zero exit.
fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {}", display(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{}`", display(cmd)))?;
    if !status.success() {
        bail!("`{}` failed: {status}", display(cmd));
    }
    Ok(())
}

/// Whether a command exits 0, with its output discarded: used for the
/// "is it already there?" checks, which should stay silent.
fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Stdout of a command that must succeed, trimmed.
fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("could not start `{}`", display(cmd)))?;
    if !out.status.success() {
        bail!("`{}` failed: {}", display(cmd), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn display(cmd: &Command) -> String {
    let mut parts = Vec::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            parts.push(format!(
                "{}={}",
                key.to_string_lossy(),
                value.to_string_lossy()
            ));
        }
    }
    parts.push(cmd.get_program().to_string_lossy().into_owned());
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}
