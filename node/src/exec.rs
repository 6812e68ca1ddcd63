//! `kubectl exec`: a command run inside a running container, as a
//! container runtime's exec does it: in the container's network, mount and
//! UTS namespaces (`nsenter --target <main pid>`), its cgroup and working
//! directory (the `container-init` mode of ferry-node, as a container's
//! own process), with its main process's environment; on a pseudo-terminal
//! when asked (util-linux `setsid --ctty` makes it the controlling
//! terminal), resized on request. [`session`] runs it over a WebSocket
//! with the channel protocol of [`crate::channel`].

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt as _;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::{SinkExt as _, StreamExt as _};
use rustix::fd::OwnedFd;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::channel::{self, Inbound, Outcome, Protocol};
use crate::process::{Tools, on_path};

/// After the command exits, how long its output may still be drained (a
/// background process may hold the pipes open).
const DRAIN_GRACE: Duration = Duration::from_secs(2);
/// Queued messages toward the client (backpressure on the output).
const OUTBOUND_QUEUE: usize = 16;

/// The container a command runs in.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its main process (namespaces, environment, working directory).
    pub pid: u32,
    /// Its cgroup, which the command joins.
    pub cgroup: PathBuf,
}

/// The container's main process: of the processes in its cgroup, the one
/// started first (`None`: nothing runs there).
pub fn main_pid(cgroup: &Path) -> Option<u32> {
    let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).ok()?;
    procs
        .lines()
        .filter_map(|l| l.trim().parse::<u32>().ok())
        .filter_map(|pid| Some((start_time(pid)?, pid)))
        .min()
        .map(|(_, pid)| pid)
}

/// Field 22 of `/proc/<pid>/stat`: when the process started.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count after its ')'.
    let after = stat.get(stat.rfind(')')? + 1..)?;
    after.split_whitespace().nth(19)?.parse().ok()
}

/// The process's environment (as it was started).
fn environ(pid: u32) -> Vec<(OsString, OsString)> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    raw.split(|b| *b == 0)
        .filter(|kv| !kv.is_empty())
        .filter_map(|kv| {
            let eq = kv.iter().position(|b| *b == b'=')?;
            let (k, v) = kv.split_at(eq);
            Some((
                OsString::from_vec(k.to_vec()),
                OsString::from_vec(v.get(1..).unwrap_or_default().to_vec()),
            ))
        })
        .collect()
}

/// Which streams the client attached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Streams {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// A started command and its ends of the streams.
pub struct Started {
    pub child: tokio::process::Child,
    pub io: Io,
}

pub enum Io {
    Pipes {
        stdin: Option<tokio::process::ChildStdin>,
        stdout: Option<tokio::process::ChildStdout>,
        stderr: Option<tokio::process::ChildStderr>,
    },
    Pty(Pty),
}

/// The master side of a pseudo-terminal.
pub struct Pty {
    master: AsyncFd<OwnedFd>,
}

impl Pty {
    /// A new pair: the master, and the path of the terminal to give the
    /// command.
    fn open() -> anyhow::Result<(Self, OwnedFd)> {
        use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
            .context("opening a pseudo-terminal")?;
        grantpt(&master).context("grantpt")?;
        unlockpt(&master).context("unlockpt")?;
        let name = ptsname(&master, Vec::new()).context("ptsname")?;
        let slave = rustix::fs::open(
            name.as_c_str(),
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .with_context(|| format!("opening {name:?}"))?;
        rustix::io::ioctl_fionbio(&master, true).context("making the pty non-blocking")?;
        // `AsyncFd::new` is deprecated for types that do not own their
        // descriptor; an `OwnedFd` does, and the `AsyncFd` owns it until
        // it is dropped, which is the safety `register` asks for.
        #[allow(deprecated)]
        let master = AsyncFd::new(master).context("registering the pty")?;
        Ok((Pty { master }, slave))
    }

    pub fn resize(&self, width: u16, height: u16) {
        let size = rustix::termios::Winsize {
            ws_row: height,
            ws_col: width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        if let Err(e) = rustix::termios::tcsetwinsize(self.master.get_ref(), size) {
            tracing::debug!(error = %e, "resizing a terminal");
        }
    }

    /// Reads some output; 0 at the end (the terminal's last holder gone:
    /// EIO).
    async fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let mut guard = self.master.readable().await?;
            match guard.try_io(|fd| rustix::io::read(fd.get_ref(), &mut *buf).map_err(Into::into)) {
                Ok(Ok(n)) => return Ok(n),
                Ok(Err(e)) if e.raw_os_error() == Some(rustix::io::Errno::IO.raw_os_error()) => {
                    return Ok(0);
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    async fn write_all(&self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.master.writable().await?;
            match guard.try_io(|fd| rustix::io::write(fd.get_ref(), data).map_err(Into::into)) {
                Ok(Ok(n)) => data = data.get(n..).unwrap_or_default(),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }
}

/// Starts `argv` in the container of `target`.
pub fn spawn(
    tools: &Tools,
    target: &Target,
    argv: &[String],
    streams: Streams,
) -> anyhow::Result<Started> {
    anyhow::ensure!(!argv.is_empty(), "an empty command");
    let mut env = environ(target.pid);
    let cwd = std::fs::read_link(format!("/proc/{}/cwd", target.pid)).ok();
    let mut inner: Vec<OsString> = vec![
        tools.nsenter.clone().into(),
        format!("--target={}", target.pid).into(),
        "--net".into(),
        "--mount".into(),
        "--uts".into(),
        "--".into(),
        tools.self_exe.clone().into(),
        "container-init".into(),
        "--cgroup".into(),
        target.cgroup.clone().into(),
    ];
    if let Some(dir) = cwd {
        inner.push("--workdir".into());
        inner.push(dir.into());
    }
    inner.push("--".into());
    inner.extend(argv.iter().map(OsString::from));
    if streams.tty {
        let setsid = on_path("setsid").context("util-linux `setsid` is not on PATH")?;
        if !env.iter().any(|(k, _)| k == "TERM") {
            env.push(("TERM".into(), "xterm".into()));
        }
        let (pty, slave) = Pty::open()?;
        let mut cmd = tokio::process::Command::new(setsid);
        cmd.arg("--ctty")
            .args(&inner)
            .env_clear()
            .envs(env)
            .kill_on_drop(true)
            .stdin(Stdio::from(slave.try_clone().context("dup of the pty")?))
            .stdout(Stdio::from(slave.try_clone().context("dup of the pty")?))
            .stderr(Stdio::from(slave));
        let child = cmd.spawn().with_context(|| format!("starting {argv:?}"))?;
        return Ok(Started {
            child,
            io: Io::Pty(pty),
        });
    }
    let pipe = |on: bool| if on { Stdio::piped() } else { Stdio::null() };
    let (program, rest) = inner.split_first().context("empty command")?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(rest)
        .env_clear()
        .envs(env)
        .kill_on_drop(true)
        .stdin(pipe(streams.stdin))
        .stdout(pipe(streams.stdout))
        .stderr(pipe(streams.stderr))
        // Away from ferry-node's process group (a ^C to it).
        .process_group(0);
    let mut child = cmd.spawn().with_context(|| format!("starting {argv:?}"))?;
    let io = Io::Pipes {
        stdin: child.stdin.take(),
        stdout: child.stdout.take(),
        stderr: child.stderr.take(),
    };
    Ok(Started { child, io })
}

/// Copies `from` to the client on `channel` until it ends.
async fn pump(mut from: impl AsyncRead + Unpin, channel: u8, tx: mpsc::Sender<Vec<u8>>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx
                    .send(channel::frame(channel, buf.get(..n).unwrap_or_default()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

/// Where the client's stdin goes.
enum StdinSink {
    Pipe(tokio::process::ChildStdin),
    Pty(std::sync::Arc<Pty>),
    None,
}

/// Runs one exec session over `ws` (already upgraded, `protocol`
/// negotiated): the command's output to the client, the client's stdin
/// and resizes to the command, and at the end its exit status on the error
/// channel. The command is killed if the client goes first.
pub async fn session<S>(ws: WebSocketStream<S>, protocol: Protocol, started: Started)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut incoming) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(OUTBOUND_QUEUE);
    // Everything toward the client goes through one task, then a close.
    let outbound = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            if sink.send(Message::binary(msg)).await.is_err() {
                return;
            }
        }
        // A normal closure (1000): kubectl reads anything else, even a
        // close without a code, as a broken stream.
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            })))
            .await;
        let _ = sink.close().await;
    });
    let Started { mut child, io } = started;
    let mut pumps = Vec::new();
    let (mut stdin, pty) = match io {
        Io::Pipes {
            stdin,
            stdout,
            stderr,
        } => {
            if let Some(out) = stdout {
                pumps.push(tokio::spawn(pump(out, channel::STDOUT, tx.clone())));
            }
            if let Some(err) = stderr {
                pumps.push(tokio::spawn(pump(err, channel::STDERR, tx.clone())));
            }
            (stdin.map_or(StdinSink::None, StdinSink::Pipe), None)
        }
        Io::Pty(pty) => {
            let pty = std::sync::Arc::new(pty);
            let reader = pty.clone();
            let out = tx.clone();
            pumps.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 32 * 1024];
                while let Ok(n) = reader.read(&mut buf).await {
                    if n == 0
                        || out
                            .send(channel::frame(
                                channel::STDOUT,
                                buf.get(..n).unwrap_or_default(),
                            ))
                            .await
                            .is_err()
                    {
                        return;
                    }
                }
            }));
            (StdinSink::Pty(pty.clone()), Some(pty))
        }
    };
    // The client's messages: stdin, resizes, close; ends when it goes.
    let inbound = async {
        while let Some(msg) = incoming.next().await {
            let data = match msg {
                Ok(Message::Binary(b)) => b,
                Ok(Message::Close(_)) | Err(_) => return,
                Ok(_) => continue,
            };
            match channel::decode(protocol, &data) {
                Ok(Inbound::Stdin(bytes)) => {
                    let ok = match &mut stdin {
                        StdinSink::Pipe(p) => p.write_all(bytes).await.is_ok(),
                        StdinSink::Pty(p) => p.write_all(bytes).await.is_ok(),
                        StdinSink::None => true,
                    };
                    if !ok {
                        stdin = StdinSink::None;
                    }
                }
                Ok(Inbound::Resize { width, height }) => {
                    if let Some(p) = &pty {
                        p.resize(width, height);
                    }
                }
                Ok(Inbound::CloseStdin) => {
                    // A pipe closes; a terminal gets its EOF character.
                    stdin = match std::mem::replace(&mut stdin, StdinSink::None) {
                        StdinSink::Pty(p) => {
                            let _ = p.write_all(&[4]).await;
                            StdinSink::Pty(p)
                        }
                        _ => StdinSink::None,
                    };
                }
                Ok(Inbound::Ignored) => {}
                Err(e) => tracing::debug!(error = %e, "exec: a bad message from the client"),
            }
        }
    };
    let outcome = tokio::select! {
        status = child.wait() => match status {
            Ok(s) => match (s.code(), s.signal()) {
                (Some(code), _) => Outcome::Exited(code),
                (None, Some(sig)) => Outcome::Signaled(sig),
                (None, None) => Outcome::Failed("the command ended without a status".into()),
            },
            Err(e) => Outcome::Failed(format!("waiting for the command: {e}")),
        },
        () = inbound => {
            // The client went: so does the command.
            let _ = child.start_kill();
            let _ = child.wait().await;
            for p in pumps {
                p.abort();
            }
            outbound.abort();
            return;
        }
    };
    drop(pty);
    let aborts: Vec<_> = pumps.iter().map(|p| p.abort_handle()).collect();
    let drained = async {
        for p in pumps {
            let _ = p.await;
        }
    };
    if tokio::time::timeout(DRAIN_GRACE, drained).await.is_err() {
        // Something the command left behind still holds its output.
        for a in aborts {
            a.abort();
        }
    }
    let status = channel::status(&outcome);
    let _ = tx
        .send(channel::frame(
            channel::ERROR,
            status.to_string().as_bytes(),
        ))
        .await;
    drop(tx);
    let _ = tokio::time::timeout(DRAIN_GRACE, outbound).await;
}
