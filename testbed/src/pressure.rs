//! Measuring a daemon under hostile load, for the robustness tests of
//! every Ferry daemon: a process's CPU time and open descriptors from /proc,
//! a flood of held connections, what it logs meanwhile.

use std::io::Read as _;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use std::time::Instant;

use crate::{Netns, Process};

/// User plus system CPU time of `pid`, seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the parenthesised command: state is the first, utime
    // the 12th and stime the 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    ticks as f64 / clock_ticks()
}

fn clock_ticks() -> f64 {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .expect("getconf");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(100.0)
}

/// Descriptors `pid` has open.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Connections to a listener, opened from inside a namespace on a thread
/// of their own and held until dropped: steady pressure, so the listener
/// stays out of descriptors however many it accepts and closes.
pub struct Flood {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl Flood {
    /// Keeps opening connections to each of `addrs` (at most `max` in all).
    pub fn start(netns: &Netns, addrs: Vec<SocketAddr>, max: usize) -> Self {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let netns = netns.clone();
        let thread = std::thread::spawn(move || {
            netns
                .in_netns(move || {
                    let mut held = Vec::new();
                    while !flag.load(Ordering::Relaxed) {
                        if held.len() >= max {
                            std::thread::sleep(Duration::from_millis(20));
                            continue;
                        }
                        for addr in &addrs {
                            // Beyond the backlog a connect waits; give up
                            // soon and try again.
                            if let Ok(s) =
                                TcpStream::connect_timeout(addr, Duration::from_millis(200))
                            {
                                held.push(s);
                            }
                        }
                    }
                    held.len()
                })
                .unwrap_or(0)
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops and closes every connection; how many were opened.
    pub fn end(mut self) -> usize {
        self.finish()
    }

    fn finish(&mut self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or(0)
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.finish();
    }
}

/// CPU seconds `process` burns over `window`, and what it logs meanwhile.
pub fn cost_over(process: &Process, window: Duration) -> (f64, String) {
    let before = process.output().len();
    let cpu = cpu_seconds(process.pid());
    std::thread::sleep(window);
    let cpu = cpu_seconds(process.pid()) - cpu;
    let output = process.output();
    // The capture keeps the newest output; a flood can only shorten it.
    let new = output.get(before.min(output.len())..).unwrap_or_default();
    (cpu, new.to_owned())
}

/// Log lines about failed accepts in `log`.
pub fn accept_failures(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("accepting a connection failed"))
        .count()
}

/// How long until the peer closes `s` (reading whatever it sends).
pub fn closed_after(mut s: TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    s.set_read_timeout(Some(limit)).expect("timeout");
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(started.elapsed());
            }
            Err(_) => return None,
        }
    }
}
