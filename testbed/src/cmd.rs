//! Running external commands with a time limit.

use std::io::Write as _;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process};

use crate::error::{Error, Result};

/// How long a stuck command's pipes are given to close after it was killed.
const GRACE: Duration = Duration::from_secs(2);

/// The command line as text, for error messages.
pub(crate) fn display(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Runs `cmd` to completion, feeding it `stdin`, and returns its output
/// whatever the exit status. Past `timeout` the command is killed
/// (SIGKILL) and [`Error::Timeout`] returned.
pub fn output(cmd: &mut Command, stdin: Option<&[u8]>, timeout: Duration) -> Result<Output> {
    let command = display(cmd);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| Error::Spawn {
        command: command.clone(),
        source,
    })?;
    let pid = child.id();
    let input = stdin.map(<[u8]>::to_vec);
    let pipe = child.stdin.take();
    let (tx, rx) = mpsc::channel();
    // The waiting happens on a thread so that we can give up on it: a
    // command whose grandchildren keep its pipes open would otherwise block
    // us forever.
    thread::spawn(move || {
        if let (Some(mut pipe), Some(input)) = (pipe, input) {
            // A plugin may exit without reading its stdin: EPIPE is fine.
            let _ = pipe.write_all(&input);
        }
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(result) => result.map_err(|e| Error::io(format!("waiting for `{command}`"), e)),
        Err(_) => {
            if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
                let _ = kill_process(pid, Signal::KILL);
            }
            // Reap it if its pipes close; if they don't, the thread leaks
            // until they do, which is the least bad option.
            let _ = rx.recv_timeout(GRACE);
            Err(Error::Timeout { command, timeout })
        }
    }
}

/// `out`'s exit status, stdout and stderr as text, for assertion messages.
pub fn output_text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Like [`output`], but a non-zero exit is an [`Error::CommandFailed`];
/// returns stdout (lossily decoded).
pub(crate) fn run(cmd: &mut Command, stdin: Option<&[u8]>, timeout: Duration) -> Result<String> {
    let out = output(cmd, stdin, timeout)?;
    if !out.status.success() {
        return Err(Error::CommandFailed {
            command: display(cmd),
            status: out.status.to_string(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
