//! Running one command the way the benchmark times it: spawned with its
//! input on stdin, its output read until both pipes close, reaped, and timed
//! from just before the spawn to just after the reap. No helper thread sits
//! in the timed path; the time limit and the stop flag are checked between
//! `poll(2)` wake-ups, and a command past either is killed (SIGKILL) before
//! it is reaped, so the pid cannot have been reused.

use std::io::{ErrorKind, Write as _};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};

use crate::{BenchError, Result};

/// Output kept per stream; the rest is read and dropped.
const OUTPUT_CAP: usize = 1 << 20;

/// How often a waiting command looks at the stop flag.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// What one timed command did.
#[derive(Debug)]
pub struct Timed {
    /// Spawn to reap.
    pub wall: Duration,
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Timed {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).trim().to_string()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).trim().to_string()
    }
}

/// The command line, for messages.
pub fn display(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Runs `cmd` to completion with `stdin` as its input (which must fit a pipe
/// buffer, 64 KiB: it is written before the output is read) and returns what
/// it did, whatever its exit status. Past `limit`, or once `stop` is set, the
/// command is killed and an error returned.
pub fn run_timed(
    cmd: &mut Command,
    stdin: &[u8],
    limit: Duration,
    stop: &AtomicBool,
) -> Result<Timed> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| BenchError::io(format!("starting `{}`", display(cmd)), e))?;
    if let Some(mut pipe) = child.stdin.take() {
        // A command may exit without reading its input: EPIPE is its business.
        match pipe.write_all(stdin) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::BrokenPipe => {}
            Err(e) => {
                kill(&mut child);
                return Err(BenchError::io(format!("writing to `{}`", display(cmd)), e));
            }
        }
    }
    let mut out = Stream::new(child.stdout.take());
    let mut err = Stream::new(child.stderr.take());
    let deadline = started + limit;
    while out.open() || err.open() {
        let now = Instant::now();
        let why = if stop.load(Ordering::Relaxed) {
            Some("the run was stopped".to_string())
        } else if now >= deadline {
            Some(format!("it did not finish within {limit:?}"))
        } else {
            None
        };
        if let Some(why) = why {
            kill(&mut child);
            return Err(BenchError::Check(format!(
                "`{}` was killed: {why}",
                display(cmd)
            )));
        }
        let wait = (deadline - now).min(STOP_CHECK);
        let (out_ready, err_ready) = wait_readable(&out, &err, wait)
            .map_err(|e| BenchError::io(format!("polling `{}`", display(cmd)), e))?;
        if out_ready {
            out.read_some()
                .map_err(|e| BenchError::io(format!("reading `{}`", display(cmd)), e))?;
        }
        if err_ready {
            err.read_some()
                .map_err(|e| BenchError::io(format!("reading `{}`", display(cmd)), e))?;
        }
    }
    let status = child
        .wait()
        .map_err(|e| BenchError::io(format!("reaping `{}`", display(cmd)), e))?;
    let wall = started.elapsed();
    Ok(Timed {
        wall,
        status,
        stdout: out.buf,
        stderr: err.buf,
    })
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// One output pipe and what came out of it.
struct Stream<R> {
    pipe: Option<R>,
    buf: Vec<u8>,
}

impl<R: std::io::Read> Stream<R> {
    fn new(pipe: Option<R>) -> Self {
        Self {
            pipe,
            buf: Vec::new(),
        }
    }

    fn open(&self) -> bool {
        self.pipe.is_some()
    }

    /// One read(2): poll said it will not block. End of file closes it.
    fn read_some(&mut self) -> std::io::Result<()> {
        let Some(pipe) = self.pipe.as_mut() else {
            return Ok(());
        };
        let mut chunk = [0u8; 16 * 1024];
        match pipe.read(&mut chunk) {
            Ok(0) => self.pipe = None,
            Ok(n) => {
                let room = OUTPUT_CAP.saturating_sub(self.buf.len());
                self.buf
                    .extend_from_slice(chunk.get(..n.min(room)).unwrap_or_default());
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        Ok(())
    }
}

/// Waits up to `wait` for either open pipe to be readable (data, end of
/// file or an error all count: the read that follows sorts them out).
fn wait_readable(
    out: &Stream<ChildStdout>,
    err: &Stream<ChildStderr>,
    wait: Duration,
) -> std::io::Result<(bool, bool)> {
    let timeout = Timespec::try_from(wait).unwrap_or(Timespec {
        tv_sec: 0,
        tv_nsec: 100_000_000,
    });
    let mut fds = Vec::with_capacity(2);
    if let Some(p) = &out.pipe {
        fds.push(PollFd::new(p, PollFlags::IN));
    }
    if let Some(p) = &err.pipe {
        fds.push(PollFd::new(p, PollFlags::IN));
    }
    match poll(&mut fds, Some(&timeout)) {
        Ok(_) => {}
        Err(rustix::io::Errno::INTR) => return Ok((false, false)),
        Err(e) => return Err(e.into()),
    }
    let ready = |fd: &PollFd<'_>| !fd.revents().is_empty();
    let mut it = fds.iter();
    let out_ready = out.pipe.is_some() && it.next().is_some_and(ready);
    let err_ready = err.pipe.is_some() && it.next().is_some_and(ready);
    Ok((out_ready, err_ready))
}

/// CPU time (user + system) of this process's reaped children so far, from
/// `/proc/self/stat` (`cutime`, `cstime`; 10 ms ticks). A plugin's own
/// children (bridge's host-local) count once the plugin has reaped them.
pub fn children_cpu() -> Result<Duration> {
    const TICKS_PER_SECOND: u64 = 100;
    let path = "/proc/self/stat";
    let text = std::fs::read_to_string(path).map_err(|e| BenchError::io(path, e))?;
    // Fields start after the command name's closing parenthesis; cutime
    // and cstime are fields 16 and 17, field 3 being the first here.
    let fields: Vec<&str> = text
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    match (ticks(13), ticks(14)) {
        (Some(user), Some(system)) => Ok(Duration::from_millis(
            (user + system) * 1000 / TICKS_PER_SECOND,
        )),
        _ => Err(BenchError::Check(format!(
            "{path}: no cutime/cstime fields"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feeds_stdin_and_collects_both_streams() {
        let stop = AtomicBool::new(false);
        let t = run_timed(
            Command::new("sh").args(["-c", "cat; echo oops >&2; exit 3"]),
            b"hello",
            Duration::from_secs(10),
            &stop,
        )
        .expect("sh runs");
        assert_eq!(t.stdout_text(), "hello");
        assert_eq!(t.stderr_text(), "oops");
        assert_eq!(t.status.code(), Some(3));
        assert!(t.wall > Duration::ZERO);
    }

    #[test]
    fn kills_what_runs_too_long() {
        let stop = AtomicBool::new(false);
        let started = Instant::now();
        let r = run_timed(
            Command::new("sleep").arg("10"),
            b"",
            Duration::from_millis(200),
            &stop,
        );
        assert!(r.is_err());
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn children_cpu_reads() {
        assert!(children_cpu().is_ok());
    }
}
