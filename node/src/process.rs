//! A container as a process.
//!
//! ferry-node starts `unshare --mount --propagation private [--uts] --
//! ferry-node container-init ... -- <argv>` with the container's
//! environment and pipes as stdout and stderr, which ferry-node copies into
//! the run's log file as CRI records ([`crate::logs`]). util-linux `unshare`
//! gives the process a mount namespace (and a UTS namespace) of its own and
//! execs the hidden `container-init` mode of ferry-node, which, still as the
//! same process:
//! 1. joins the container's cgroup (writes its pid to `cgroup.procs`);
//! 2. enters the pod's network namespace (`setns`);
//! 3. takes the sources of its bind mounts and volumes as the node has
//!    them (detached copies, [`crate::volumes::mount::take_source`]);
//!    mounts its image's overlays first when its image has a root
//!    ([`crate::image_layer`]), covers the directories above missing
//!    mount points ([`crate::volumes::mount_points`]), then bind-mounts
//!    the pod's `resolv.conf` and `hosts` over `/etc/...` and the
//!    container's volumes ([`crate::volumes::mount`]), only in its own
//!    mount namespace (`--propagation slave` instead of `private` when a
//!    volume mount asks for HostToContainer propagation);
//! 4. sets the hostname (in its own UTS namespace);
//! 5. changes to the working directory and execs the command.
//!
//! Every step is the same process, so the pid ferry-node holds is the
//! container's main process from the start.

use std::convert::Infallible;
use std::fs::OpenOptions;
use std::os::fd::AsFd as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context as _, bail};
use clap::Args;

use crate::image_layer::{self, Overlay};
use crate::logs;
use crate::volumes::mount::{self, MountSpec, PointKind, Propagation};
use crate::volumes::mount_points;

/// What `container-init` is told (the hidden subcommand's flags).
#[derive(Debug, Clone, Args)]
pub struct InitArgs {
    /// The cgroup to join.
    #[arg(long)]
    pub cgroup: PathBuf,
    /// The network namespace file to enter (none: stay in the node's).
    #[arg(long)]
    pub netns: Option<PathBuf>,
    /// The hostname to set (needs a UTS namespace of its own).
    #[arg(long)]
    pub hostname: Option<String>,
    /// `IMAGE_DIR:TARGET`: a read-only overlayfs on TARGET with
    /// `lowerdir=IMAGE_DIR:TARGET` (the image's files win), mounted before
    /// anything else, in order; mounts below TARGET are hidden by it.
    #[arg(long = "image-overlay")]
    pub image_overlays: Vec<String>,
    /// `SRC:DST` bind mounts, made in the container's mount namespace.
    #[arg(long = "bind")]
    pub binds: Vec<String>,
    /// Volume mounts (JSON [`MountSpec`]), made after the binds, in order.
    #[arg(long = "mount")]
    pub mounts: Vec<String>,
    /// Directories covered (tmpfs with the same entries) before anything
    /// is mounted, to make missing mount points; shallowest first.
    #[arg(long = "shadow")]
    pub shadows: Vec<PathBuf>,
    /// An empty directory of the pod's on which a new root is staged when
    /// `/` is covered.
    #[arg(long)]
    pub stage: Option<PathBuf>,
    /// Working directory.
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// The command, program first.
    #[arg(last = true, required = true)]
    pub argv: Vec<String>,
}

/// Everything needed to start one run of a container.
#[derive(Debug, Clone)]
pub struct Launch {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub netns: Option<PathBuf>,
    pub hostname: Option<String>,
    /// The image's files over the node's directories, mounted first.
    pub image_overlays: Vec<Overlay>,
    pub binds: Vec<(PathBuf, PathBuf)>,
    pub mounts: Vec<MountSpec>,
    pub shadows: Vec<PathBuf>,
    pub stage: Option<PathBuf>,
    pub cgroup: PathBuf,
    pub workdir: Option<String>,
    pub log: PathBuf,
}

/// Programs ferry-node runs, resolved once at start.
#[derive(Debug, Clone)]
pub struct Tools {
    pub self_exe: PathBuf,
    pub unshare: PathBuf,
    pub nsenter: PathBuf,
}

impl Tools {
    pub fn find() -> anyhow::Result<Self> {
        Ok(Tools {
            self_exe: std::env::current_exe().context("finding ferry-node's own executable")?,
            unshare: on_path("unshare").context("util-linux `unshare` is not on PATH")?,
            nsenter: on_path("nsenter").context("util-linux `nsenter` is not on PATH")?,
        })
    }
}

/// `program` on this process's PATH.
pub fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Starts a run of a container; its stdout and stderr go to `launch.log`
/// (created, appended to) as CRI log records.
pub fn spawn(tools: &Tools, launch: &Launch) -> anyhow::Result<tokio::process::Child> {
    if launch.argv.is_empty() {
        bail!("empty command line");
    }
    if let Some(dir) = launch.log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&launch.log)
        .with_context(|| format!("opening {}", launch.log.display()))?;
    let log2 = log.try_clone().context("duplicating the log file")?;
    let mut cmd = tokio::process::Command::new(&tools.unshare);
    // A HostToContainer mount needs the namespace's mounts to stay
    // downstream of the node's; nothing ever propagates back either way.
    let slave = launch
        .mounts
        .iter()
        .any(|m| m.propagation == Propagation::Slave);
    cmd.args([
        "--mount",
        "--propagation",
        if slave { "slave" } else { "private" },
    ]);
    if launch.hostname.is_some() {
        cmd.arg("--uts");
    }
    cmd.arg("--")
        .arg(&tools.self_exe)
        .arg("container-init")
        .arg("--cgroup")
        .arg(&launch.cgroup);
    if let Some(ns) = &launch.netns {
        cmd.arg("--netns").arg(ns);
    }
    if let Some(h) = &launch.hostname {
        cmd.arg("--hostname").arg(h);
    }
    for o in &launch.image_overlays {
        cmd.arg("--image-overlay").arg(o.to_arg());
    }
    for (src, dst) in &launch.binds {
        cmd.arg("--bind")
            .arg(format!("{}:{}", src.display(), dst.display()));
    }
    for dir in &launch.shadows {
        cmd.arg("--shadow").arg(dir);
    }
    if let Some(stage) = &launch.stage {
        cmd.arg("--stage").arg(stage);
    }
    for m in &launch.mounts {
        cmd.arg("--mount")
            .arg(serde_json::to_string(m).context("encoding a mount")?);
    }
    if let Some(w) = launch.workdir.as_deref().filter(|w| !w.is_empty()) {
        cmd.arg("--workdir").arg(w);
    }
    cmd.arg("--").args(&launch.argv);
    cmd.env_clear()
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a signal to ferry-node's group (a ^C)
        // does not reach the pods.
        .process_group(0);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {:?}", launch.argv))?;
    // The output reaches the log through ferry-node, which stamps each
    // line (see [`crate::logs`]); the pipes end with the last process
    // holding them.
    if let Some(out) = child.stdout.take() {
        tokio::spawn(logs::copy_into(out, logs::Stream::Stdout, log));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(logs::copy_into(err, logs::Stream::Stderr, log2));
    }
    Ok(child)
}

/// The hidden `container-init` mode: sets the process up as its container
/// and execs the command. Returns only on failure.
pub fn container_init(args: &InitArgs) -> anyhow::Result<Infallible> {
    // Everything below mounts: never in the namespace of whoever started
    // this (ferry-node starts it through `unshare --mount`).
    let own = std::fs::read_link("/proc/self/ns/mnt").context("reading the mount namespace")?;
    let parent = std::fs::read_link(format!(
        "/proc/{}/ns/mnt",
        std::os::unix::process::parent_id()
    ))
    .context("reading the parent's mount namespace")?;
    if own == parent {
        bail!(
            "container-init must run in a mount namespace of its own (ferry-node starts it with `unshare --mount`)"
        );
    }
    let procs = args.cgroup.join("cgroup.procs");
    std::fs::write(&procs, std::process::id().to_string())
        .with_context(|| format!("joining cgroup {}", args.cgroup.display()))?;
    if let Some(ns) = &args.netns {
        let file = std::fs::File::open(ns).with_context(|| format!("opening {}", ns.display()))?;
        rustix::thread::move_into_link_name_space(
            file.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .with_context(|| format!("entering network namespace {}", ns.display()))?;
    }
    let mounts = args
        .mounts
        .iter()
        .map(|m| serde_json::from_str::<MountSpec>(m).with_context(|| format!("bad --mount {m:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let overlays = args
        .image_overlays
        .iter()
        .map(|o| Overlay::parse_arg(o))
        .collect::<Result<Vec<_>, _>>()?;
    // What is bound in, as the node has it: nothing mounted below can
    // change it (an overlay on a directory above a source would show it
    // read-only and without its submounts).
    let mut binds = Vec::with_capacity(args.binds.len());
    for bind in &args.binds {
        let (src, dst) = bind
            .split_once(':')
            .with_context(|| format!("bad --bind {bind:?}: want SRC:DST"))?;
        let tree = mount::take(Path::new(src), false)
            .with_context(|| format!("taking {src} to bind-mount on {dst}"))?;
        binds.push((tree, src, dst));
    }
    let sources = mounts
        .iter()
        .map(|m| mount::take_source(m).with_context(|| format!("mounting {}", m.target.display())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for o in &overlays {
        image_layer::mount(o)?;
    }
    if !args.shadows.is_empty() {
        let stage = args.stage.as_deref().context("--shadow needs --stage")?;
        for dir in &args.shadows {
            mount_points::shadow(dir, stage)?;
        }
        for m in &mounts {
            if let Some(kind) = m.make_point {
                mount_points::make_point(&m.target, kind == PointKind::Dir)
                    .with_context(|| format!("making mount point {}", m.target.display()))?;
            }
        }
    }
    for (tree, src, dst) in &binds {
        mount::attach(tree, Path::new(dst))
            .with_context(|| format!("bind-mounting {src} on {dst}"))?;
    }
    for (m, source) in mounts.iter().zip(&sources) {
        mount::apply(m, source).with_context(|| format!("mounting {}", m.target.display()))?;
    }
    if let Some(h) = &args.hostname {
        rustix::system::sethostname(h.as_bytes())
            .with_context(|| format!("setting hostname {h:?}"))?;
    }
    if let Some(dir) = &args.workdir {
        std::env::set_current_dir(dir)
            .with_context(|| format!("changing to working directory {}", dir.display()))?;
    }
    let (program, rest) = args.argv.split_first().context("empty command line")?;
    let err = std::process::Command::new(program).args(rest).exec();
    Err(err).with_context(|| format!("executing {program:?}"))
}

/// Sends `signal` to `pid`; a process already gone is fine.
pub fn signal(pid: u32, signal: rustix::process::Signal) {
    if let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, signal);
    }
}
