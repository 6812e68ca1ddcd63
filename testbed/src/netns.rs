//! Named network namespaces (`/var/run/netns/<name>`, as `ip netns` makes
//! them) and running things inside them.
//!
//! Commands run through `nsenter --net=<path>`, which switches only the
//! network namespace. `ip netns exec` is deliberately not used: it also
//! remounts `/sys` in a private mount namespace, which hides bpffs and the
//! cgroup mounts the Ferry agent needs.

use std::ffi::OsStr;
use std::fs;
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};
use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

use crate::cmd;
use crate::error::{Error, Result};

/// Where `ip netns` keeps its namespaces.
pub const NETNS_DIR: &str = "/var/run/netns";

/// Default time limit of [`Netns::exec`].
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the testbed's own `ip` invocations may take.
pub(crate) const IP_TIMEOUT: Duration = Duration::from_secs(30);

/// A named network namespace. This is only a name: creating and deleting
/// namespaces is the [`World`](crate::World)'s job, so a `Netns` can be
/// cloned and handed around freely.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    /// The namespace called `name` under [`NETNS_DIR`] (which need not exist
    /// yet).
    pub fn named(name: impl Into<String>) -> Self {
        let name = name.into();
        let path = Path::new(NETNS_DIR).join(&name);
        Netns { name, path }
    }

    /// Its name, as `ip netns list` shows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its bind-mount path: what `CNI_NETNS` and `nsenter --net=` take.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A [`Command`] that runs `program` inside this namespace (through
    /// `nsenter --net=`), to be given arguments and run by the caller.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path.display()))
            .arg("--")
            .arg(program);
        cmd
    }

    /// Runs `args` (program first) inside the namespace and returns its
    /// stdout; a non-zero exit is an error carrying stderr. Limited to
    /// [`EXEC_TIMEOUT`].
    pub fn exec<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.exec_timeout(args, EXEC_TIMEOUT)
    }

    /// [`exec`](Self::exec) with a chosen time limit.
    pub fn exec_timeout<I, S>(&self, args: I, timeout: Duration) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command_from(args)?;
        cmd::run(&mut cmd, None, timeout)
    }

    /// Runs `args` inside the namespace and returns its full output, whatever
    /// the exit status (for tests that expect a failure).
    pub fn exec_output<I, S>(&self, args: I, timeout: Duration) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command_from(args)?;
        cmd::output(&mut cmd, None, timeout)
    }

    /// Starts a long-running `args` inside the namespace. Its stdout and
    /// stderr are collected (see [`Process::wait_for_output`]); it is killed
    /// when the returned [`Process`] is dropped.
    pub fn spawn<I, S>(&self, args: I) -> Result<Process>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let cmd = self.command_from(args)?;
        Process::spawn(cmd, None)
    }

    /// [`spawn`](Self::spawn), also appending the output to the file `log`
    /// (a daemon's log, kept after it exits).
    pub fn spawn_logged<I, S>(&self, args: I, log: &Path) -> Result<Process>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| Error::io(format!("opening {}", log.display()), e))?;
        let cmd = self.command_from(args)?;
        Process::spawn(cmd, Some(file))
    }

    /// Runs `f` on a fresh thread that has entered this namespace with
    /// `setns(2)`, and returns what it returns. Sockets made inside `f` stay
    /// in the namespace even when they are used elsewhere afterwards. A
    /// panic in `f` is propagated to the caller.
    pub fn in_netns<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let ns = self.open()?;
        thread::scope(|scope| {
            let handle = scope.spawn(move || -> Result<R> {
                enter(&ns, &self.name)?;
                Ok(f())
            });
            match handle.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Like [`in_netns`](Self::in_netns) but detached: `f` runs on its own
    /// thread inside the namespace (a server loop, say) and the handle
    /// yields its result.
    pub fn thread<F, R>(&self, f: F) -> Result<thread::JoinHandle<Result<R>>>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let ns = self.open()?;
        let name = self.name.clone();
        thread::Builder::new()
            .name(format!("netns-{name}"))
            .spawn(move || -> Result<R> {
                enter(&ns, &name)?;
                Ok(f())
            })
            .map_err(|e| Error::io("spawning a netns thread", e))
    }

    /// Whether the namespace's bind mount exists.
    pub fn exists(&self) -> bool {
        self.path.exists()
    }

    fn open(&self) -> Result<File> {
        File::open(&self.path).map_err(|e| Error::io(format!("opening {}", self.path.display()), e))
    }

    fn command_from<I, S>(&self, args: I) -> Result<Command>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut args = args.into_iter();
        let program = args
            .next()
            .ok_or_else(|| Error::Config("empty command line".into()))?;
        let mut cmd = self.command(program);
        cmd.args(args);
        Ok(cmd)
    }
}

fn enter(ns: &File, name: &str) -> Result<()> {
    move_into_link_name_space(ns.as_fd(), Some(LinkNameSpaceType::Network))
        .map_err(|e| Error::io(format!("setns into netns {name}"), e.into()))
}

/// The names of all namespaces under [`NETNS_DIR`].
pub fn list() -> Vec<String> {
    std::fs::read_dir(NETNS_DIR)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Creates the named namespace (`ip netns add`). Never touches the root
/// namespace's links: the new namespace starts empty.
pub(crate) fn create(ns: &Netns) -> Result<()> {
    cmd::run(
        Command::new("ip").args(["netns", "add", ns.name()]),
        None,
        IP_TIMEOUT,
    )
    .map(drop)
}

/// Kills every process whose network namespace is `ns` (other than this
/// process), then deletes the namespace. Best-effort callers ignore the
/// error; a namespace that is already gone is not an error.
pub(crate) fn destroy(ns: &Netns) -> Result<()> {
    if !ns.exists() {
        return Ok(());
    }
    kill_all_in(ns);
    match cmd::output(
        Command::new("ip").args(["netns", "delete", ns.name()]),
        None,
        IP_TIMEOUT,
    ) {
        Ok(out) if out.status.success() || !ns.exists() => Ok(()),
        Ok(out) => Err(Error::CommandFailed {
            command: format!("ip netns delete {}", ns.name()),
            status: out.status.to_string(),
            stdout: String::new(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }),
        Err(e) => Err(e),
    }
}

/// SIGKILLs the processes living in `ns` (as `ip netns pids` finds them),
/// sparing this process.
pub(crate) fn kill_all_in(ns: &Netns) {
    let Ok(pids) = cmd::run(
        Command::new("ip").args(["netns", "pids", ns.name()]),
        None,
        IP_TIMEOUT,
    ) else {
        return;
    };
    let me = std::process::id();
    for pid in pids
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
    {
        if pid == me {
            continue;
        }
        if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
            let _ = kill_process(pid, Signal::KILL);
        }
    }
}

/// Output kept per process; beyond it the oldest half is dropped.
const OUTPUT_CAP: usize = 1 << 20;

#[derive(Default)]
struct OutputState {
    buf: Vec<u8>,
    /// Set when both stdout and stderr have reached end of file.
    closed: u8,
}

struct Shared {
    state: Mutex<OutputState>,
    changed: Condvar,
    /// Where the output is also appended, if anywhere.
    log: Option<Mutex<File>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, OutputState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A long-running process started by [`Netns::spawn`]. Killed (SIGKILL) and
/// reaped on drop.
pub struct Process {
    child: Child,
    command: String,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("pid", &self.child.id())
            .field("command", &self.command)
            .finish()
    }
}

impl Process {
    fn spawn(mut cmd: Command, log: Option<File>) -> Result<Self> {
        let command = cmd::display(&cmd);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| Error::Spawn {
            command: command.clone(),
            source,
        })?;
        let shared = Arc::new(Shared {
            state: Mutex::new(OutputState::default()),
            changed: Condvar::new(),
            log: log.map(Mutex::new),
        });
        let stdout = child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>);
        let stderr = child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>);
        for pipe in [stdout, stderr].into_iter().flatten() {
            let shared = Arc::clone(&shared);
            thread::spawn(move || collect(pipe, &shared));
        }
        Ok(Process {
            child,
            command,
            shared,
        })
    }

    /// The process id (nsenter execs the program, so this is the program's).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its stdout and stderr so far, interleaved as they arrived.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.shared.lock().buf).into_owned()
    }

    /// Waits until its output contains `needle` (a readiness line, say).
    /// Fails when the process closes its output first or `timeout` passes.
    pub fn wait_for_output(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        loop {
            if contains(&state.buf, needle.as_bytes()) {
                return Ok(());
            }
            if state.closed >= 2 {
                let output = String::from_utf8_lossy(&state.buf).into_owned();
                drop(state);
                let status = match self.child.try_wait() {
                    Ok(Some(status)) => status.to_string(),
                    _ => "unknown".into(),
                };
                return Err(Error::ProcessExited {
                    command: self.command.clone(),
                    what: format!("{needle:?} in its output"),
                    status,
                    output,
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::WaitTimeout {
                    what: format!("{needle:?} in the output of `{}`", self.command),
                    timeout,
                });
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Its exit status if it has exited, without blocking.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        self.child
            .try_wait()
            .map_err(|e| Error::io(format!("checking on `{}`", self.command), e))
    }

    /// Kills it (SIGKILL) and reaps it. Killing one that already exited is
    /// fine.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        let _ = self.child.kill();
        self.child
            .wait()
            .map_err(|e| Error::io(format!("reaping `{}`", self.command), e))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

fn collect(mut pipe: Box<dyn std::io::Read + Send>, shared: &Shared) {
    let mut chunk = [0u8; 8192];
    loop {
        let n = match pipe.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let bytes = chunk.get(..n).unwrap_or_default();
        if let Some(log) = &shared.log {
            let mut file = log.lock().unwrap_or_else(PoisonError::into_inner);
            // A full disk loses log lines, never the process.
            let _ = file.write_all(bytes);
        }
        let mut state = shared.lock();
        if state.buf.len() + n > OUTPUT_CAP {
            let keep = state.buf.len() / 2;
            let cut = state.buf.len() - keep;
            state.buf.drain(..cut);
        }
        state.buf.extend_from_slice(bytes);
        shared.changed.notify_all();
    }
    shared.lock().closed += 1;
    shared.changed.notify_all();
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}
