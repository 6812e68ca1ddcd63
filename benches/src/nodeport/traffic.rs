//! The packets of the forwarding phase and what they cost: `trafgen`
//! (netsniff-ng) sending crafted UDP frames from the world's underlay, the
//! backend pod's interface counter, and the machine's busy time.
//!
//! Where the work runs: the generator is pinned to CPU 0 and writes into
//! the underlay bridge, which hands each frame to the entry node's `ul0`
//! veth. With no XDP program on that veth, Receive Packet Steering on it
//! queues the frame to CPU 1's backlog, so what the entry node's stack does
//! (TC ingress, netfilter, routing, forwarding, the transmit back out of
//! `ul0`) runs in CPU 1's softirq. With an XDP program on it, the veth
//! runs the program in its NAPI poll on the CPU that transmitted into it
//! (the generator's CPU 0), before RPS steers anything: a frame the
//! program sends back out (XDP_TX) never reaches CPU 1. And with direct
//! server return part of the work moves to node 1 (decapsulation). No one
//! CPU holds "the entry node's work" for every dataplane, so a burst's cost
//! is the whole machine's: both CPUs' busy time over the burst, less what
//! they are busy with when nothing is sent, per delivered packet. The
//! generator, the bridge, node 1 and the backend's delivery are the same
//! for every row, so one row less the routing-only row (the floor) is what
//! its dataplane adds ([`Cost`]).

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use ferry_testbed::Netns;
use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};

use crate::cni::exec::run_timed;

/// USER_HZ: the unit of /proc/stat.
const TICK: Duration = Duration::from_millis(10);

/// Above this many CPU-seconds per second busy with nothing sent (summed
/// over the machine), a burst's cost is marked noisy: the subtraction of
/// the background is then a large share of what is left.
pub const NOISY: f64 = 0.10;

/// One CPU's times from /proc/stat, in ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTime {
    pub softirq: u64,
    /// Everything but idle and iowait.
    pub busy: u64,
}

/// Per online CPU (by number) times from /proc/stat.
#[derive(Debug, Clone, Default)]
pub struct CpuTimes {
    pub cpus: Vec<(usize, CpuTime)>,
}

impl CpuTimes {
    pub fn read() -> Result<Self> {
        let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        Ok(Self::parse(&text))
    }

    /// `cpuN user nice system idle iowait irq softirq steal ...` lines.
    pub fn parse(text: &str) -> Self {
        let mut cpus = Vec::new();
        for line in text.lines() {
            let mut f = line.split_whitespace();
            let Some(id) = f
                .next()
                .and_then(|name| name.strip_prefix("cpu"))
                .and_then(|n| n.parse::<usize>().ok())
            else {
                continue;
            };
            let v: Vec<u64> = f.filter_map(|x| x.parse().ok()).collect();
            let get = |i: usize| v.get(i).copied().unwrap_or(0);
            let (user, nice, system, irq, softirq, steal) =
                (get(0), get(1), get(2), get(5), get(6), get(7));
            cpus.push((
                id,
                CpuTime {
                    softirq,
                    busy: user + nice + system + irq + softirq + steal,
                },
            ));
        }
        Self { cpus }
    }

    /// The online CPUs' numbers.
    pub fn ids(&self) -> Vec<usize> {
        self.cpus.iter().map(|c| c.0).collect()
    }

    /// Busy time of each CPU since `before`.
    pub fn busy_since(&self, before: &Self) -> Vec<(usize, Duration)> {
        self.cpus
            .iter()
            .map(|&(id, now)| {
                let then = before
                    .cpus
                    .iter()
                    .find(|c| c.0 == id)
                    .map_or(0, |c| c.1.busy);
                let ticks = now.busy.saturating_sub(then);
                (id, TICK * u32::try_from(ticks).unwrap_or(u32::MAX))
            })
            .collect()
    }
}

/// Microseconds `cpu` has spent idle, summed over its cpuidle states
/// (`/sys/devices/system/cpu/cpuN/cpuidle/state*/time`): exact, where
/// /proc/stat counts in 10 ms ticks. Time in interrupts and softirqs that
/// interrupt the idle loop is not idle time. A state's time grows when the
/// CPU leaves it, so an idle period still running is not in it yet: see
/// [`idle_all`].
pub fn idle_us(cpu: usize) -> Option<u64> {
    let dir = format!("/sys/devices/system/cpu/cpu{cpu}/cpuidle");
    let mut total = 0u64;
    let mut any = false;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        if let Ok(t) = std::fs::read_to_string(entry.path().join("time"))
            && let Ok(us) = t.trim().parse::<u64>()
        {
            total += us;
            any = true;
        }
    }
    any.then_some(total)
}

/// Every CPU's idle microseconds, each read from a thread moved onto that
/// CPU: moving there wakes the CPU, which closes (and counts) the idle
/// period it was in, so no idle time before the read is left out of it
/// (a CPU idle for 500 ms before a burst would otherwise count those 500 ms
/// as idle time inside the burst). The thread's affinity is put back.
fn idle_all(cpus: &[usize]) -> Option<Vec<u64>> {
    let mask = sched_getaffinity(None).ok()?;
    let out = cpus
        .iter()
        .map(|&cpu| {
            let mut one = CpuSet::new();
            one.set(cpu);
            // Unpinned, the read may miss a running idle period; still
            // better than ticks.
            let _ = sched_setaffinity(None, &one);
            idle_us(cpu)
        })
        .collect();
    let _ = sched_setaffinity(None, &mask);
    out
}

/// Busy time of every CPU over a window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Busy {
    /// (CPU, busy time) per online CPU.
    pub cpus: Vec<(usize, Duration)>,
    pub window: Duration,
    /// How it was read.
    pub method: &'static str,
}

impl Busy {
    pub fn total(&self) -> Duration {
        self.cpus.iter().map(|c| c.1).sum()
    }

    /// CPU-seconds per second of the window, summed over the CPUs.
    pub fn rate(&self) -> f64 {
        self.total().as_secs_f64() / self.window.as_secs_f64().max(1e-9)
    }

    /// One CPU's busy seconds per second.
    pub fn cpu_rate(&self, cpu: usize) -> f64 {
        self.cpus.iter().find(|c| c.0 == cpu).map_or(0.0, |c| {
            c.1.as_secs_f64() / self.window.as_secs_f64().max(1e-9)
        })
    }

    /// "CPU 0 12.3 ms, CPU 1 4.5 ms" (or per second, with `per_s`).
    pub fn describe(&self, per_s: bool) -> String {
        self.cpus
            .iter()
            .map(|&(cpu, d)| {
                if per_s {
                    format!("CPU {cpu} {:.1} ms/s", self.cpu_rate(cpu) * 1e3)
                } else {
                    format!("CPU {cpu} {:.1} ms", d.as_secs_f64() * 1e3)
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Every CPU's busy time over `f`'s run: exact from cpuidle where the
/// machine has it (the window less each CPU's idle time), else the ticks
/// of /proc/stat.
fn busy_during<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, Busy)> {
    let stat0 = CpuTimes::read()?;
    let ids = stat0.ids();
    let idle0 = idle_all(&ids);
    let t0 = Instant::now();
    let out = f()?;
    let idle1 = idle_all(&ids);
    let window = t0.elapsed();
    let stat1 = CpuTimes::read()?;
    let busy = match (idle0, idle1) {
        (Some(a), Some(b)) => Busy {
            cpus: ids
                .iter()
                .zip(a.iter().zip(&b))
                .map(|(&id, (a, b))| {
                    let idle = Duration::from_micros(b.saturating_sub(*a));
                    (id, window.saturating_sub(idle))
                })
                .collect(),
            window,
            method: "the window less each CPU's cpuidle time",
        },
        _ => Busy {
            cpus: stat1.busy_since(&stat0),
            window,
            method: "busy ticks of /proc/stat",
        },
    };
    Ok((out, busy))
}

/// Packets dropped by the CPUs' backlogs (`/proc/net/softnet_stat`, second
/// column), summed.
pub fn backlog_drops() -> u64 {
    std::fs::read_to_string("/proc/net/softnet_stat")
        .map(|t| {
            t.lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter_map(|h| u64::from_str_radix(h, 16).ok())
                .sum()
        })
        .unwrap_or(0)
}

/// `ip -s -j link show dev <dev>` in `netns`: (rx packets, address).
pub fn link(netns: &Netns, dev: &str) -> Result<(u64, String)> {
    let out = netns
        .exec(["ip", "-s", "-j", "link", "show", "dev", dev])
        .with_context(|| format!("reading {dev} in {}", netns.name()))?;
    parse_link(&out).with_context(|| format!("ip -j link of {dev}: {out}"))
}

fn parse_link(json: &str) -> Option<(u64, String)> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let l = v.get(0)?;
    let rx = l.pointer("/stats64/rx/packets")?.as_u64()?;
    let mac = l.get("address")?.as_str()?.to_string();
    Some((rx, mac))
}

/// Writes `value` to `/sys/class/net/<dev>/queues/rx-0/rps_cpus` of
/// `netns` (through `ip netns exec`, which mounts that namespace's sysfs in
/// a mount namespace of its own).
pub fn set_rps(netns: &Netns, dev: &str, mask: &str) -> Result<()> {
    let out = Command::new("ip")
        .args(["netns", "exec", netns.name(), "sh", "-c"])
        .arg(format!(
            "echo {mask} > /sys/class/net/{dev}/queues/rx-0/rps_cpus"
        ))
        .output()
        .context("running ip netns exec")?;
    if !out.status.success() {
        bail!(
            "setting RPS of {dev} in {}: {}",
            netns.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The bridge ports of `bridge` in `netns`.
pub fn bridge_ports(netns: &Netns, bridge: &str) -> Result<Vec<String>> {
    let out = netns
        .exec(["ip", "-j", "link", "show", "master", bridge])
        .context("listing the bridge's ports")?;
    let v: serde_json::Value = serde_json::from_str(&out).context("ip -j link")?;
    Ok(v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| l.get("ifname").and_then(|n| n.as_str()))
                .map(|n| n.split('@').next().unwrap_or(n).to_string())
                .collect()
        })
        .unwrap_or_default())
}

/// One UDP stream: from `src` (the underlay) to `dst:port` through the
/// entry node's MAC, with `flows` source ports counted up from 1024
/// (`dinc`), each packet 60 bytes on the wire.
#[derive(Debug, Clone)]
pub struct Stream {
    pub src_mac: String,
    pub dst_mac: String,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub port: u16,
    pub flows: u32,
}

impl Stream {
    /// trafgen's packet configuration.
    pub fn config(&self) -> String {
        let last = 1024 + self.flows.clamp(1, 64_000) - 1;
        format!(
            "{{\n  eth(da={}, sa={}),\n  ipv4(saddr={}, daddr={}, ttl=64),\n  \
             udp(sp=dinc(1024, {last}), dp={}),\n  fill(0x00, 18)\n}}\n",
            self.dst_mac, self.src_mac, self.src, self.dst, self.port
        )
    }
}

/// What one bounded burst did.
#[derive(Debug, Clone, Default)]
pub struct Burst {
    pub sent: u64,
    /// The generator's run, spawn to exit.
    pub wall: Duration,
    /// Arrived at the backend pod's interface.
    pub delivered: u64,
    /// Every CPU's busy time over the burst and a short drain after it.
    pub busy: Busy,
    /// Every CPU's busy time over a window with nothing sent, just before:
    /// what the rest of the machine does anyway.
    pub background: Busy,
    /// Backlog drops on any CPU over the window.
    pub backlog_drops: u64,
}

impl Burst {
    pub fn offered_pps(&self) -> f64 {
        self.sent as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    pub fn delivered_pps(&self) -> f64 {
        self.delivered as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// The machine's busy seconds over the window less its background rate
    /// over the same window: what the burst cost, everywhere.
    pub fn added_busy_s(&self) -> f64 {
        self.busy.total().as_secs_f64() - self.background.rate() * self.busy.window.as_secs_f64()
    }

    /// Nanoseconds of the whole machine's time per delivered packet: the
    /// generator, the bridge, both nodes, the backend's delivery. None when
    /// nothing arrived or the background was larger than the burst.
    pub fn path_ns(&self) -> Option<f64> {
        let busy = self.added_busy_s();
        (self.delivered > 0 && busy > 0.0).then(|| busy * 1e9 / self.delivered as f64)
    }

    /// Whether the background was too busy for the subtraction to mean
    /// much.
    pub fn noisy(&self) -> bool {
        self.background.rate() > NOISY
    }
}

/// One row's per-packet cost in one mix, against the routing-only floor
/// at the same N and mix.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cost {
    /// Whole machine, per delivered packet.
    pub path_ns: f64,
    /// `path_ns` less the floor's: what this dataplane adds to plain
    /// routing. Negative when it does less than the kernel's forwarding
    /// (XDP sends the frame back out before the stack sees it). None
    /// without a floor.
    pub added_ns: Option<f64>,
    /// This row's background, or the floor's, above [`NOISY`].
    pub noisy: bool,
    /// The larger background rate of the two, CPU-seconds per second.
    pub background: f64,
}

impl Cost {
    /// `row`'s cost, less `floor`'s when there is one (the floor row
    /// itself adds 0).
    pub fn of(row: &Burst, floor: Option<&Burst>) -> Option<Self> {
        let path_ns = row.path_ns()?;
        let floor_ns = floor.and_then(Burst::path_ns);
        let mut background = row.background.rate();
        let mut noisy = row.noisy();
        if let Some(f) = floor {
            background = background.max(f.background.rate());
            noisy |= f.noisy();
        }
        Some(Self {
            path_ns,
            added_ns: floor_ns.map(|f| path_ns - f),
            noisy,
            background,
        })
    }

    /// Packets per second one core would carry doing only what this
    /// dataplane adds: 1e9 / added ns; None when it adds nothing (or less
    /// than nothing) or there is no floor.
    pub fn per_core(&self) -> Option<f64> {
        self.added_ns.filter(|&ns| ns > 0.0).map(|ns| 1e9 / ns)
    }
}

/// Where a burst goes and how it is counted.
pub struct Rig<'a> {
    pub underlay: &'a Netns,
    pub bridge: &'a str,
    /// The backend pod and its interface.
    pub backend: &'a Netns,
    pub backend_if: &'a str,
    /// CPU the generator is pinned to.
    pub gen_cpu: usize,
    pub dir: &'a Path,
    pub stop: &'a AtomicBool,
}

impl Rig<'_> {
    /// The machine's busy time with nothing sent, over `window`.
    fn background(&self, window: Duration) -> Result<Busy> {
        let ((), busy) = busy_during(|| {
            std::thread::sleep(window);
            Ok(())
        })?;
        Ok(busy)
    }

    /// Sends `count` packets of `stream` at `rate` packets/s and counts what
    /// arrived.
    pub fn burst(&self, stream: &Stream, count: u64, rate: u64, name: &str) -> Result<Burst> {
        let cfg = self.dir.join(format!("{name}.trafgen"));
        std::fs::write(&cfg, stream.config())
            .with_context(|| format!("writing {}", cfg.display()))?;
        let background = self.background(Duration::from_millis(1000))?;
        let (rx0, _) = link(self.backend, self.backend_if)?;
        let drops0 = backlog_drops();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.underlay.name()])
            .args(["taskset", "-c", &self.gen_cpu.to_string(), "trafgen"])
            .arg("--in")
            .arg(&cfg)
            .args(["--out", self.bridge])
            .args(["--num", &count.to_string()])
            .args(["--rate", &format!("{rate}pps")])
            // One process; leave IRQ affinity and socket memory sysctls
            // alone (they are the host's); no CPU summary.
            .args(["--cpus", "1", "--notouch-irq", "--no-sock-mem", "-C"]);
        let limit = Duration::from_secs_f64(count as f64 / rate.max(1) as f64 * 3.0 + 30.0);
        let stop = self.stop;
        let ((timed, wall), busy) = busy_during(|| {
            let t0 = Instant::now();
            let timed = run_timed(&mut cmd, &[], limit, stop).context("running trafgen")?;
            let wall = t0.elapsed();
            // Let the backlogs drain.
            std::thread::sleep(Duration::from_millis(300));
            Ok((timed, wall))
        })?;
        if !timed.status.success() {
            bail!(
                "trafgen failed ({}): {} {}",
                timed.status,
                timed.stdout_text(),
                timed.stderr_text()
            );
        }
        let (rx1, _) = link(self.backend, self.backend_if)?;
        let sent = parse_sent(&timed.stdout_text()).unwrap_or(count);
        Ok(Burst {
            sent,
            wall,
            delivered: rx1.saturating_sub(rx0),
            busy,
            background,
            backlog_drops: backlog_drops().saturating_sub(drops0),
        })
    }
}

/// trafgen's "N packets outgoing".
fn parse_sent(out: &str) -> Option<u64> {
    out.lines()
        .find(|l| l.contains("packets outgoing"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn proc_stat_and_trafgen_output() {
        let text = "cpu  10 0 5 100 0 0 3 0 0 0\n\
                    cpu0 4 0 2 50 0 0 1 0 0 0\n\
                    cpu2 6 0 3 50 0 0 2 0 0 0\n\
                    intr 1\n";
        let t = CpuTimes::parse(text);
        assert_eq!(
            t.cpus,
            vec![
                (
                    0,
                    CpuTime {
                        softirq: 1,
                        busy: 7
                    }
                ),
                (
                    2,
                    CpuTime {
                        softirq: 2,
                        busy: 11
                    }
                )
            ]
        );
        assert_eq!(t.ids(), vec![0, 2]);
        let later = CpuTimes {
            cpus: vec![
                (
                    0,
                    CpuTime {
                        softirq: 1,
                        busy: 7,
                    },
                ),
                (
                    2,
                    CpuTime {
                        softirq: 52,
                        busy: 61,
                    },
                ),
            ],
        };
        assert_eq!(
            later.busy_since(&t),
            vec![(0, Duration::ZERO), (2, Duration::from_millis(500))]
        );
        assert_eq!(
            parse_sent("\n           5 packets outgoing\n         300 bytes outgoing\n"),
            Some(5)
        );
        let (rx, mac) = parse_link(
            r#"[{"ifname":"eth0","address":"02:aa:bb:cc:dd:ee","stats64":{"rx":{"packets":42}}}]"#,
        )
        .expect("link");
        assert_eq!((rx, mac.as_str()), (42, "02:aa:bb:cc:dd:ee"));
    }

    #[test]
    fn trafgen_config() {
        let s = Stream {
            src_mac: "02:00:00:00:00:02".into(),
            dst_mac: "02:00:00:00:00:01".into(),
            src: Ipv4Addr::new(172, 31, 0, 250),
            dst: Ipv4Addr::new(172, 31, 0, 1),
            port: 30081,
            flows: 64,
        };
        let c = s.config();
        assert!(
            c.contains("eth(da=02:00:00:00:00:01, sa=02:00:00:00:00:02)"),
            "{c}"
        );
        assert!(c.contains("udp(sp=dinc(1024, 1087), dp=30081)"), "{c}");
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A burst over a 2 s window with `cpu0`/`cpu1` ms busy, after a 1 s
    /// background of `bg0`/`bg1` ms.
    pub(in crate::nodeport) fn burst(
        delivered: u64,
        cpu0: u64,
        cpu1: u64,
        bg0: u64,
        bg1: u64,
    ) -> Burst {
        let busy = |a, b, w| Busy {
            cpus: vec![(0, ms(a)), (1, ms(b))],
            window: w,
            method: "test",
        };
        Burst {
            sent: delivered,
            wall: ms(1700),
            delivered,
            busy: busy(cpu0, cpu1, ms(2000)),
            background: busy(bg0, bg1, ms(1000)),
            backlog_drops: 0,
        }
    }

    #[test]
    fn the_whole_machine_less_its_background() {
        // 300 + 500 ms busy over 2 s; 10 + 30 ms/s with nothing sent, so
        // 80 ms of the 800 are background: 720 ms for 100,000 packets.
        let b = burst(100_000, 300, 500, 10, 30);
        assert_eq!(b.busy.total(), ms(800));
        assert!((b.background.rate() - 0.04).abs() < 1e-9);
        let ns = b.path_ns().expect("a cost");
        assert!((ns - 7200.0).abs() < 1e-6, "{ns}");
        assert!(!b.noisy());
        // Work on CPU 0 counts as much as work on CPU 1 (XDP on a veth
        // runs on the sender's CPU).
        let moved = burst(100_000, 500, 300, 10, 30);
        assert_eq!(moved.path_ns(), b.path_ns());
        // Nothing delivered, or a background larger than the burst: no
        // cost rather than a made-up one.
        assert_eq!(burst(0, 300, 500, 10, 30).path_ns(), None);
        assert_eq!(burst(100, 30, 30, 100, 100).path_ns(), None);
        // Over 10 % of a CPU busy with nothing sent: noisy.
        assert!(burst(100_000, 300, 500, 20, 81).noisy());
        assert!(!burst(100_000, 300, 500, 20, 80).noisy());
    }

    #[test]
    fn a_rows_added_cost_is_less_the_floor() {
        // Floor: 400 ms for 100,000 packets (4000 ns). The row: 720 ms
        // (7200 ns), so it adds 3200 ns: 312,500 packets/s per core.
        let floor = burst(100_000, 200, 200, 0, 0);
        let row = burst(100_000, 300, 500, 10, 30);
        let c = Cost::of(&row, Some(&floor)).expect("a cost");
        assert!((c.path_ns - 7200.0).abs() < 1e-6);
        let added = c.added_ns.expect("added");
        assert!((added - 3200.0).abs() < 1e-6, "{added}");
        assert!((c.per_core().expect("per core") - 312_500.0).abs() < 1e-3);
        assert!(!c.noisy);
        // The floor against itself adds nothing, and nothing is not a rate.
        let f = Cost::of(&floor, Some(&floor)).expect("floor");
        assert_eq!(f.added_ns, Some(0.0));
        assert_eq!(f.per_core(), None);
        // A dataplane cheaper than routing (XDP_TX before the stack) adds
        // a negative cost and has no per-core rate.
        let cheap = burst(100_000, 150, 150, 0, 0);
        let c = Cost::of(&cheap, Some(&floor)).expect("cheap");
        assert!((c.added_ns.expect("added") + 1000.0).abs() < 1e-6);
        assert_eq!(c.per_core(), None);
        // Without a floor there is a whole-path cost and nothing added.
        let c = Cost::of(&row, None).expect("no floor");
        assert_eq!((c.added_ns, c.per_core()), (None, None));
        // A noisy floor makes every row's added cost noisy.
        let busy_floor = burst(100_000, 300, 300, 150, 0);
        let c = Cost::of(&row, Some(&busy_floor)).expect("cost");
        assert!(c.noisy);
        assert!((c.background - 0.15).abs() < 1e-9);
        // A floor that delivered nothing: no added cost.
        let dead = burst(0, 300, 300, 0, 0);
        assert_eq!(Cost::of(&row, Some(&dead)).expect("cost").added_ns, None);
    }
}
