//! The testbed's error type.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while building, using or tearing down a world.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The testbed creates network namespaces, which needs root.
    #[error("the netns testbed needs root (effective uid 0)")]
    NotRoot,

    /// A builder parameter or a CNI network config is unusable.
    #[error("invalid testbed config: {0}")]
    Config(String),

    /// A command could not be started at all (missing binary, bad path).
    #[error("could not start `{command}`: {source}")]
    Spawn {
        /// The command line, for the message.
        command: String,
        /// Why `exec` failed.
        #[source]
        source: io::Error,
    },

    /// A command ran and exited non-zero.
    #[error("`{command}` failed ({status}): {stderr}{stdout}")]
    CommandFailed {
        /// The command line, for the message.
        command: String,
        /// Its exit status, as printed by std.
        status: String,
        /// What it printed on stdout.
        stdout: String,
        /// What it printed on stderr.
        stderr: String,
    },

    /// A command did not finish in time and was killed.
    #[error("`{command}` did not finish within {timeout:?} and was killed")]
    Timeout {
        /// The command line, for the message.
        command: String,
        /// The limit it ran into.
        timeout: Duration,
    },

    /// Waiting for a condition (a process's output, a server answer) ran out
    /// of time.
    #[error("timed out after {timeout:?} waiting for {what}")]
    WaitTimeout {
        /// What was awaited.
        what: String,
        /// How long we waited.
        timeout: Duration,
    },

    /// A spawned process exited while something was waiting for it.
    #[error("`{command}` exited ({status}) while waiting for {what}; output so far:\n{output}")]
    ProcessExited {
        /// The command line, for the message.
        command: String,
        /// What was awaited.
        what: String,
        /// Its exit status, or "unknown" when it could not be read.
        status: String,
        /// Its combined stdout and stderr so far.
        output: String,
    },

    /// An I/O operation of the testbed itself failed.
    #[error("{what}: {source}")]
    Io {
        /// What the testbed was doing.
        what: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A CNI plugin answered an error (per the spec: non-zero exit, JSON
    /// error on stdout).
    #[error("CNI {command} by {plugin} failed: code {code:?}: {msg} {details} (stderr: {stderr})")]
    Cni {
        /// Path of the plugin binary.
        plugin: PathBuf,
        /// The operation.
        command: crate::CniCommand,
        /// The spec's error code, when the plugin printed one.
        code: Option<u64>,
        /// The error message (or raw stdout when it was not JSON).
        msg: String,
        /// The `details` field, empty when absent.
        details: String,
        /// What the plugin printed on stderr.
        stderr: String,
    },

    /// A CNI plugin succeeded but its result was not what the spec says.
    #[error("invalid CNI result from {plugin}: {reason}")]
    CniResult {
        /// Path of the plugin binary.
        plugin: PathBuf,
        /// What was wrong with it.
        reason: String,
    },

    /// A binary the testbed needs (a CNI plugin, `ferry-netexec`) was not
    /// found.
    #[error("binary `{name}` not found ({hint})")]
    MissingBinary {
        /// The binary's name.
        name: String,
        /// Where we looked and how to get it.
        hint: String,
    },

    /// [`World::close`](crate::World::close) could not remove everything.
    #[error("teardown left problems: {}", .0.join("; "))]
    Teardown(Vec<String>),

    /// A network request made by one of the client helpers failed.
    #[error("{what} {addr}: {source}")]
    Net {
        /// What was attempted (`HTTP GET /hostname from`, `UDP to`, ...).
        what: String,
        /// The peer.
        addr: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// The testbed's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}
