//! Server processes under test: started with their own temporary data dir and
//! log file, killed (SIGKILL) and reaped when the guard drops, including
//! during a panic's unwinding.

use std::fs::File;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::{BenchError, Result};

/// Free TCP ports on 127.0.0.1, all held until every one is picked so they
/// differ. Another process could still take one before the server binds it;
/// the server then fails to start and the harness says so.
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| BenchError::io("binding 127.0.0.1:0 to find a free port", e))?;
    listeners
        .iter()
        .map(|l| {
            l.local_addr()
                .map(|a| a.port())
                .map_err(|e| BenchError::io("reading a bound port", e))
        })
        .collect()
}

/// Resident set size of a process, from `/proc/PID/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rss {
    /// VmRSS: resident now, in KiB.
    pub now_kib: u64,
    /// VmHWM: the peak resident size so far, in KiB.
    pub peak_kib: u64,
}

impl Rss {
    pub fn of(pid: u32) -> Result<Self> {
        let path = format!("/proc/{pid}/status");
        let text = std::fs::read_to_string(&path).map_err(|e| BenchError::io(&path, e))?;
        let field = |name: &str| -> Result<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.trim().strip_suffix("kB"))
                .and_then(|n| n.trim().parse().ok())
                .ok_or_else(|| BenchError::Check(format!("{path} has no {name} line in kB")))
        };
        Ok(Self {
            now_kib: field("VmRSS:")?,
            peak_kib: field("VmHWM:")?,
        })
    }

    pub fn mib(self) -> f64 {
        self.now_kib as f64 / 1024.0
    }
}

/// CPU time (user + system, all threads) a process has used so far, from
/// `/proc/PID/stat`; `pid` None reads this process.
pub fn cpu_time(pid: Option<u32>) -> Result<Duration> {
    cpu_times(pid).map(|(own, _)| own)
}

/// CPU time a process has used so far (user + system, all threads), and
/// that of its children it has waited for (cutime + cstime: helpers it ran
/// to completion), from `/proc/PID/stat`; `pid` None reads this process.
pub fn cpu_times(pid: Option<u32>) -> Result<(Duration, Duration)> {
    // USER_HZ, the unit of /proc's tick counts, is 100 on every Linux ABI
    // this runs on (`getconf CLK_TCK`).
    const TICKS_PER_SECOND: u64 = 100;
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let text = std::fs::read_to_string(&path).map_err(|e| BenchError::io(&path, e))?;
    // The command name may hold spaces and parentheses: fields start after
    // the last ')'. utime, stime, cutime, cstime are fields 14-17; field 3 is first.
    let fields: Vec<&str> = text
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    let ms = |t: u64| Duration::from_millis(t * 1000 / TICKS_PER_SECOND);
    match (ticks(11), ticks(12), ticks(13), ticks(14)) {
        (Some(user), Some(system), Some(cuser), Some(csystem)) => {
            Ok((ms(user + system), ms(cuser + csystem)))
        }
        _ => Err(BenchError::Check(format!(
            "{path}: no utime/stime/cutime/cstime fields"
        ))),
    }
}

/// CPU used by a server and by this harness since it was started.
#[derive(Debug, Clone, Copy)]
pub struct CpuMeter {
    pid: u32,
    server: Duration,
    harness: Duration,
}

/// CPU time spent during a measured stretch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuUse {
    pub server: Duration,
    pub harness: Duration,
}

impl std::ops::AddAssign for CpuUse {
    fn add_assign(&mut self, other: Self) {
        self.server += other.server;
        self.harness += other.harness;
    }
}

impl CpuMeter {
    pub fn start(pid: u32) -> Result<Self> {
        Ok(Self {
            pid,
            server: cpu_time(Some(pid))?,
            harness: cpu_time(None)?,
        })
    }

    pub fn stop(&self) -> Result<CpuUse> {
        Ok(CpuUse {
            server: cpu_time(Some(self.pid))?.saturating_sub(self.server),
            harness: cpu_time(None)?.saturating_sub(self.harness),
        })
    }
}

/// A running server; dropping it kills the process, then removes its dir.
#[derive(Debug)]
pub struct ServerProcess {
    name: &'static str,
    child: Child,
    log: PathBuf,
    // Dropped after `Drop::drop` has killed the child.
    dir: TempDir,
}

impl ServerProcess {
    /// Starts `cmd` with stdout and stderr going to `log` inside `dir`.
    pub fn spawn(name: &'static str, mut cmd: Command, dir: TempDir) -> Result<Self> {
        let log = dir.path().join(format!("{name}.log"));
        let out = File::create(&log).map_err(|e| BenchError::io(log.display().to_string(), e))?;
        let err = out
            .try_clone()
            .map_err(|e| BenchError::io("duplicating the log file handle", e))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| BenchError::io(format!("starting {name} ({cmd:?})"), e))?;
        Ok(Self {
            name,
            child,
            log,
            dir,
        })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's own temporary directory (data dir, log, kubeconfig).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn rss(&self) -> Result<Rss> {
        Rss::of(self.pid())
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Fails when the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(BenchError::Exited {
                server: self.name,
                status,
                log: self.log_tail(),
            }),
            Err(e) => Err(BenchError::io(format!("polling {}", self.name), e)),
        }
    }

    /// Polls `ready` every 50ms until it returns true, the process exits, or
    /// `within` passes.
    pub async fn wait_ready<F, Fut>(&mut self, within: Duration, mut ready: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<bool, String>>,
    {
        let deadline = Instant::now() + within;
        let mut last = String::from("not polled yet");
        while Instant::now() < deadline {
            self.check_running()?;
            match ready().await {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(BenchError::NotReady {
            server: self.name,
            after: within,
            detail: format!("{last}; log:\n{}", self.log_tail()),
        })
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // SIGKILL: the data dir is thrown away, so nothing needs a clean stop.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
