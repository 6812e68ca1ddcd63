//! Per-packet cost of Ferry's TC ingress program, measured by the kernel
//! itself with BPF_PROG_TEST_RUN, with 1, 1,000 and 100,000 services in
//! the maps: a new flow's first packet (service lookup, backend choice,
//! conntrack entries, rewrite), a packet of an established flow (one
//! conntrack hit and a rewrite), and a packet for no service (two misses).
//! Nothing is attached anywhere: the programs run on crafted frames.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::Ebpf;
use aya::maps::{HashMap, MapData};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use ferry_dataplane::bpf::{MapSizes, TC_INGRESS, load_detached};
use ferry_dataplane::service::programmer::addr_words;
use ferry_ebpf_common::{
    BACKEND_FLAG_LOCAL, Backend, BackendKey, MAP_BACKENDS, MAP_SERVICES, PROTO_TCP, SCOPE_EXTERNAL,
    ServiceKey, ServiceValue,
};
use ferry_testbed::packet::frame;

use crate::stats::Samples;

#[derive(Debug, thiserror::Error)]
pub enum PacketBenchError {
    #[error("loading the programs: {0}")]
    Load(#[from] ferry_dataplane::bpf::BpfError),
    #[error("{what}: {message}")]
    Bpf { what: &'static str, message: String },
}

pub(crate) fn bpf_err<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> PacketBenchError {
    move |e| PacketBenchError::Bpf {
        what,
        message: e.to_string(),
    }
}

/// One row of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub services: usize,
    pub new_flow: (Duration, Duration),
    pub established: (Duration, Duration),
    /// Mean over one flow run `repeat` times in the kernel's loop.
    pub established_mean: Duration,
    pub miss_mean: Duration,
}

/// The agent's object loaded detached (`load_detached`), its maps pinned
/// in a bpffs directory of its own, removed on drop; the packet programs
/// timed on crafted frames. Shared with the NetworkPolicy bench
/// ([`crate::policy`]).
pub(crate) struct Detached {
    ebpf: Ebpf,
    dir: PathBuf,
}

impl Drop for Detached {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Detached {
    /// Loads the object with maps of `sizes` under
    /// `/sys/fs/bpf/ferry-bench-<pid>-<name>`.
    pub(crate) fn load(name: &str, sizes: &MapSizes) -> Result<Self, PacketBenchError> {
        let dir =
            PathBuf::from("/sys/fs/bpf").join(format!("ferry-bench-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        match load_detached(&dir, sizes) {
            Ok(ebpf) => Ok(Self { ebpf, dir }),
            Err(e) => {
                // Maps already pinned stay behind otherwise.
                let _ = std::fs::remove_dir_all(&dir);
                Err(e.into())
            }
        }
    }

    /// Where the maps are pinned.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The kernel's time for one run of `packet` through `program`,
    /// averaged over `repeat`, and the program's verdict.
    pub(crate) fn run(
        &mut self,
        program: &'static str,
        packet: &[u8],
        repeat: u32,
    ) -> Result<(Duration, u32), PacketBenchError> {
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(program)
            .ok_or(PacketBenchError::Bpf {
                what: program,
                message: "no such program".into(),
            })?
            .try_into()
            .map_err(bpf_err(program))?;
        let mut out = vec![0u8; packet.len() + 64];
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(packet),
                data_out: Some(&mut out),
                repeat,
                ..TestRunOptions::default()
            })
            .map_err(bpf_err("BPF_PROG_TEST_RUN"))?;
        Ok((r.duration, r.return_value))
    }
}

/// Services in the maps, on the detached object.
struct Bench {
    loaded: Detached,
}

/// The i-th service's frontend and backend addresses.
fn addrs(i: usize) -> (Ipv4Addr, Ipv4Addr) {
    let i = u32::try_from(i).unwrap_or(u32::MAX);
    (
        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i),
        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + i),
    )
}

impl Bench {
    fn new(services: usize, flows: usize) -> Result<Self, PacketBenchError> {
        let n = u32::try_from(services).unwrap_or(u32::MAX);
        let sizes = MapSizes {
            services: n.max(1024),
            backends: n.max(1024),
            conntrack: u32::try_from(flows * 4).unwrap_or(u32::MAX).max(1024),
            ..MapSizes::default()
        };
        let loaded = Detached::load("services", &sizes)?;
        let mut bench = Self { loaded };
        bench.fill(services)?;
        Ok(bench)
    }

    fn map<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<HashMap<&mut MapData, K, V>, PacketBenchError> {
        let map = self
            .loaded
            .ebpf
            .map_mut(name)
            .ok_or(PacketBenchError::Bpf {
                what: name,
                message: "no such map".into(),
            })?;
        HashMap::try_from(map).map_err(bpf_err(name))
    }

    /// `services` TCP services, one local backend each.
    fn fill(&mut self, services: usize) -> Result<(), PacketBenchError> {
        {
            let mut slots = self.map::<BackendKey, Backend>(MAP_BACKENDS)?;
            for i in 0..services {
                let id = u32::try_from(i + 1).unwrap_or(u32::MAX);
                let b = Backend {
                    addr: addr_words(IpAddr::V4(addrs(i).1)),
                    port: 8080u16.to_be(),
                    flags: BACKEND_FLAG_LOCAL,
                    _pad: 0,
                };
                let key = BackendKey {
                    id,
                    slot: 0,
                    rev: 0,
                    _pad: 0,
                };
                slots
                    .insert(key, b, 0)
                    .map_err(bpf_err("writing a backend"))?;
            }
        }
        let mut svcs = self.map::<ServiceKey, ServiceValue>(MAP_SERVICES)?;
        for i in 0..services {
            let key = ServiceKey {
                addr: addr_words(IpAddr::V4(addrs(i).0)),
                port: 80u16.to_be(),
                proto: PROTO_TCP,
                scope: SCOPE_EXTERNAL,
            };
            let value = ServiceValue {
                id: u32::try_from(i + 1).unwrap_or(u32::MAX),
                count: 1,
                ..ServiceValue::default()
            };
            svcs.insert(key, value, 0)
                .map_err(bpf_err("writing a service"))?;
        }
        Ok(())
    }

    /// The kernel's time for one run of `packet`, averaged over `repeat`.
    fn time(&mut self, packet: &[u8], repeat: u32) -> Result<Duration, PacketBenchError> {
        Ok(self.loaded.run(TC_INGRESS, packet, repeat)?.0)
    }
}

fn flow_packet(target: Ipv4Addr, k: usize, syn: bool) -> Vec<u8> {
    let k32 = u32::try_from(k).unwrap_or(0);
    let client = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + k32 / 50_000);
    let sport = 1024 + u16::try_from(k % 50_000).unwrap_or(0);
    frame(
        PROTO_TCP,
        (IpAddr::V4(client), sport),
        (IpAddr::V4(target), 80),
        syn,
    )
}

fn p50_p99(mut s: Samples) -> (Duration, Duration) {
    (s.p50().unwrap_or_default(), s.p99().unwrap_or_default())
}

/// Measures one table row: `flows` distinct new flows to the last service,
/// then one more packet of each (established), then `repeat` runs of one
/// established packet and of a packet for no service.
pub fn measure(services: usize, flows: usize, repeat: u32) -> Result<Row, PacketBenchError> {
    let mut bench = Bench::new(services, flows)?;
    let target = addrs(services.saturating_sub(1)).0;
    let mut new_flow = Samples::with_capacity(flows);
    for k in 0..flows {
        new_flow.push(bench.time(&flow_packet(target, k, true), 1)?);
    }
    let mut established = Samples::with_capacity(flows);
    for k in 0..flows {
        established.push(bench.time(&flow_packet(target, k, false), 1)?);
    }
    let established_mean = bench.time(&flow_packet(target, 0, false), repeat)?;
    let miss = frame(
        PROTO_TCP,
        (IpAddr::V4(Ipv4Addr::new(198, 19, 0, 1)), 1000),
        (IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1)), 80),
        true,
    );
    let miss_mean = bench.time(&miss, repeat)?;
    Ok(Row {
        services,
        new_flow: p50_p99(new_flow),
        established: p50_p99(established),
        established_mean,
        miss_mean,
    })
}

fn ns(d: Duration) -> String {
    format!("{}", d.as_nanos())
}

/// The markdown table of `rows`.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| services in the maps | new flow p50 / p99 (ns) | established p50 / p99 (ns) | established, mean of the kernel's loop (ns) | no service (ns) |\n|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} / {} | {} / {} | {} | {} |\n",
            r.services,
            ns(r.new_flow.0),
            ns(r.new_flow.1),
            ns(r.established.0),
            ns(r.established.1),
            ns(r.established_mean),
            ns(r.miss_mean),
        ));
    }
    if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
        let ratio = |a: Duration, b: Duration| {
            if b.is_zero() {
                f64::NAN
            } else {
                a.as_secs_f64() / b.as_secs_f64()
            }
        };
        out.push_str(&format!(
            "\n{} vs {} services: new flow p50 x{:.2}, established mean x{:.2} (1.00 = no growth).\n",
            last.services,
            first.services,
            ratio(last.new_flow.0, first.new_flow.0),
            ratio(last.established_mean, first.established_mean),
        ));
    }
    out
}
