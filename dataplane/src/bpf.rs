//! Loading, attaching and pinning Ferry's eBPF object.
//!
//! Everything lives under one bpffs directory (`--bpffs-root`): the maps in
//! `maps/`, the cgroup and TC links in `links/`. Pins outlive the agent, so a
//! restart or upgrade keeps every map entry and keeps the hooks attached; a
//! new agent reuses the pinned maps by name and swaps each link for its own
//! (new link first, then the old one goes), so no connect() ever runs
//! without a hook. [`uninstall`] removes it all.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::Key as LpmKey;
use aya::maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, RingBuf};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle};
use aya::programs::xdp::XdpLink;
use aya::programs::{
    CgroupAttachMode, CgroupSockAddr, SchedClassifier, TcAttachType, Xdp, XdpMode,
};
use aya::{Ebpf, EbpfLoader};

use crate::policy::programmer::{PolicyTables, Written};
use crate::service::programmer::{LbMaps, MapOpError, addr_words};
use ferry_ebpf_common::observe::{
    MAP_FLOW_EVENTS, MAP_OBSERVE, MAP_OBSERVE_STATS, ObserveConfig, ObserveStats,
};
use ferry_ebpf_common::policy::{
    MAP_POLICY_CIDRS, MAP_POLICY_CT, MAP_POLICY_ENDPOINTS, MAP_POLICY_IDENTITIES, MAP_POLICY_RULES,
    MAP_POLICY_STATS, PolicyCidrKey, PolicyCtValue, PolicyEndpoint, PolicyRuleKey, PolicyRuleValue,
    PolicyStats,
};
use ferry_ebpf_common::{
    AffinityKey, AffinityValue, Backend, BackendKey, CtKey, CtValue, LbConfig, MAP_AFFINITY,
    MAP_BACKENDS, MAP_CONNTRACK, MAP_LB_CONFIG, MAP_MAGLEV, MAP_NODE_ADDRS, MAP_NODEPORT_ADDRS,
    MAP_SERVICES, MAP_SOCK_REVNAT, MAP_STATS, MAP_XDP_STATS, MaglevChunk, MaglevKey, NodeAddrs,
    ServiceKey, ServiceStats, ServiceValue, SockRevNatKey, SockRevNatValue, XdpStats,
};

use crate::devices::Device;

/// The object built from `ebpf/programs` by this crate's build script.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ferry-ebpf"));

/// `ferry_xdp_pass`, in an object of its own: see [`XdpPass`].
static XDP_PASS_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ferry-xdp-pass"));

/// The socket-level programs, each attached to the cgroup root.
pub const SOCK_PROGRAMS: &[&str] = &[
    "ferry_bind4",
    "ferry_bind6",
    "ferry_connect4",
    "ferry_connect6",
    "ferry_sendmsg4",
    "ferry_sendmsg6",
    "ferry_recvmsg4",
    "ferry_recvmsg6",
    "ferry_getpeername4",
    "ferry_getpeername6",
];

/// The per-packet programs, attached to each of `--devices`.
pub const TC_INGRESS: &str = "ferry_tc_ingress";
pub const TC_EGRESS: &str = "ferry_tc_egress";
/// The per-packet programs of pods' devices (`--pod-devices`): the same
/// translation, and NetworkPolicy's verdicts.
pub const POD_TC_INGRESS: &str = "ferry_pod_tc_ingress";
pub const POD_TC_EGRESS: &str = "ferry_pod_tc_egress";
/// The fast path for traffic from outside, at XDP on `--devices`.
pub const XDP: &str = "ferry_xdp";

/// Whether `--devices` get the XDP fast path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpSetting {
    /// In the driver, or the agent fails to start.
    Native,
    /// In the driver where it supports XDP (veth does), else TC alone.
    BestEffort,
    /// TC alone.
    Off,
}

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("loading the eBPF object (maps pinned under {pins}): {source}")]
    Load {
        pins: PathBuf,
        source: Box<aya::EbpfError>,
    },
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: Box<aya::programs::ProgramError>,
    },
    #[error("the eBPF object has no program {0}")]
    MissingProgram(&'static str),
    #[error("the eBPF object has no map {0}")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: Box<aya::maps::MapError>,
    },
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        source: Box<aya::pin::PinError>,
    },
    #[error("link {path}: {source}")]
    Link {
        path: PathBuf,
        source: Box<aya::programs::links::LinkError>,
    },
}

/// Map sizes (entries). Changing one on a live node means `uninstall`
/// first: a pinned map keeps the size it was made with.
#[derive(Debug, Clone, Copy)]
pub struct MapSizes {
    pub services: u32,
    pub backends: u32,
    pub affinity: u32,
    pub sock_revnat: u32,
    /// Backend groups that get counters.
    pub stats: u32,
    /// Tracked flows of per-packet translation (LRU), two to three each.
    pub conntrack: u32,
    /// Maglev table chunks of 512 entries (32 per table of the default
    /// 16381 entries); allocated as written, not up front.
    pub maglev: u32,
    /// NetworkPolicy: this node's pods.
    pub policy_endpoints: u32,
    /// NetworkPolicy: the cluster's pod addresses (and this node's).
    pub policy_identities: u32,
    /// NetworkPolicy: ipBlock prefixes (allocated as written).
    pub policy_cidrs: u32,
    /// NetworkPolicy: allow entries of this node's policy sets (allocated
    /// as written).
    pub policy_rules: u32,
    /// NetworkPolicy: judged flows (LRU), two entries each.
    pub policy_conntrack: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            services: 65536,
            backends: 262144,
            affinity: 65536,
            sock_revnat: 262144,
            stats: 16384,
            conntrack: 262144,
            maglev: 65536,
            policy_endpoints: 4096,
            policy_identities: 131072,
            policy_cidrs: 16384,
            policy_rules: 262144,
            policy_conntrack: 262144,
        }
    }
}

/// Where the agent keeps its pins and which cgroup it hooks.
#[derive(Debug, Clone)]
pub struct Layout {
    pub bpffs_root: PathBuf,
    pub cgroup_root: PathBuf,
}

impl Layout {
    pub fn maps_dir(&self) -> PathBuf {
        self.bpffs_root.join("maps")
    }

    pub fn links_dir(&self) -> PathBuf {
        self.bpffs_root.join("links")
    }
}

/// The maps the agent writes and reads.
pub struct Maps {
    pub services: HashMap<MapData, ServiceKey, ServiceValue>,
    pub backends: HashMap<MapData, BackendKey, Backend>,
    pub affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    pub sock_revnat: HashMap<MapData, SockRevNatKey, SockRevNatValue>,
    pub stats: PerCpuArray<MapData, ServiceStats>,
    pub conntrack: HashMap<MapData, CtKey, CtValue>,
    pub node_addrs: HashMap<MapData, u32, NodeAddrs>,
    pub maglev: HashMap<MapData, MaglevKey, MaglevChunk>,
    pub lb_config: Array<MapData, LbConfig>,
    pub xdp_stats: PerCpuArray<MapData, XdpStats>,
}

impl std::fmt::Debug for Maps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Maps")
    }
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BpfError {
    let path = path.to_owned();
    move |source| BpfError::Io { what, path, source }
}

/// Loads the object with its maps pinned under `maps_dir` and the packet
/// programs loaded but attached nowhere: for running them on crafted
/// packets (BPF_PROG_TEST_RUN) in tests and benchmarks.
pub fn load_detached(maps_dir: &Path, sizes: &MapSizes) -> Result<Ebpf, BpfError> {
    std::fs::create_dir_all(maps_dir).map_err(io_err("creating", maps_dir))?;
    let mut ebpf = loader(maps_dir, sizes)
        .load(OBJECT)
        .map_err(|source| BpfError::Load {
            pins: maps_dir.to_owned(),
            source: Box::new(source),
        })?;
    for name in [TC_INGRESS, TC_EGRESS, POD_TC_INGRESS, POD_TC_EGRESS] {
        let prog: &mut SchedClassifier = program(&mut ebpf, name)?;
        prog.load().map_err(prog_err(name))?;
    }
    let prog: &mut Xdp = program(&mut ebpf, XDP)?;
    prog.load().map_err(prog_err(XDP))?;
    Ok(ebpf)
}

fn loader<'a>(maps_dir: &'a Path, sizes: &MapSizes) -> EbpfLoader<'a> {
    let mut loader = EbpfLoader::new();
    loader
        .default_map_pin_directory(maps_dir)
        .map_max_entries(MAP_SERVICES, sizes.services)
        .map_max_entries(MAP_BACKENDS, sizes.backends)
        .map_max_entries(MAP_AFFINITY, sizes.affinity)
        .map_max_entries(MAP_SOCK_REVNAT, sizes.sock_revnat)
        .map_max_entries(MAP_STATS, sizes.stats)
        .map_max_entries(MAP_CONNTRACK, sizes.conntrack)
        .map_max_entries(MAP_MAGLEV, sizes.maglev)
        .map_max_entries(MAP_POLICY_ENDPOINTS, sizes.policy_endpoints)
        .map_max_entries(MAP_POLICY_IDENTITIES, sizes.policy_identities)
        .map_max_entries(MAP_POLICY_CIDRS, sizes.policy_cidrs)
        .map_max_entries(MAP_POLICY_RULES, sizes.policy_rules)
        .map_max_entries(MAP_POLICY_CT, sizes.policy_conntrack);
    loader
}

/// Loads the object (reusing pinned maps), attaches every socket program to
/// the cgroup and the packet programs to `devices` (with `xdp`, the XDP
/// fast path too), and pins the links, replacing those of a previous agent
/// (and dropping its links to devices no longer listed).
pub fn install(
    layout: &Layout,
    sizes: &MapSizes,
    devices: &[Device],
    pod_prefix: Option<&str>,
    xdp: XdpSetting,
) -> Result<(Maps, PacketHooks), BpfError> {
    let maps_dir = layout.maps_dir();
    let links_dir = layout.links_dir();
    for dir in [&maps_dir, &links_dir] {
        std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    }
    let cgroup =
        File::open(&layout.cgroup_root).map_err(io_err("opening cgroup", &layout.cgroup_root))?;
    let mut ebpf = loader(&maps_dir, sizes)
        .load(OBJECT)
        .map_err(|source| BpfError::Load {
            pins: maps_dir.clone(),
            source: Box::new(source),
        })?;
    let mut pinned = Vec::new();
    for &name in SOCK_PROGRAMS {
        let link = attach_sock(&mut ebpf, name, &cgroup)?;
        pinned.push(swap_pin(link, &links_dir, name)?);
    }
    for (name, _) in TC_PROGRAMS.iter().chain(&POD_TC_PROGRAMS) {
        let prog: &mut SchedClassifier = program(&mut ebpf, name)?;
        prog.load().map_err(prog_err(name))?;
    }
    if xdp != XdpSetting::Off {
        let prog: &mut Xdp = program(&mut ebpf, XDP)?;
        prog.load().map_err(prog_err(XDP))?;
    }
    let mut hooks = PacketHooks {
        ebpf,
        links_dir: links_dir.clone(),
        attached: Vec::new(),
    };
    for dev in devices {
        pinned.extend(hooks.attach(&dev.name)?);
        if xdp == XdpSetting::Off {
            continue;
        }
        match hooks.attach_xdp(&dev.name) {
            Ok(pin) => {
                tracing::info!(device = %dev.name, "XDP fast path attached (native)");
                pinned.push(pin);
            }
            Err(e) if xdp == XdpSetting::BestEffort => tracing::warn!(
                device = %dev.name,
                error = %e,
                "no native XDP on this device; its traffic is handled at TC (--xdp native would refuse to start)"
            ),
            Err(e) => return Err(e),
        }
    }
    // Links of a previous agent this one did not replace: devices no
    // longer listed, or programs renamed by an upgrade.
    // Pod devices' links stay until the pod-device loop swaps them.
    // (Under either program name: an agent before NetworkPolicy attached
    // the plain ones to pods' devices too.)
    let pod_pins: Vec<String> = pod_prefix
        .map(|p| {
            TC_PROGRAMS
                .iter()
                .chain(&POD_TC_PROGRAMS)
                .map(|(n, _)| pin_name(n, p))
                .collect()
        })
        .unwrap_or_default();
    if let Ok(entries) = std::fs::read_dir(&links_dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pod = pod_pins.iter().any(|p| name.starts_with(p.as_str()));
            if !pinned.contains(&entry.path()) && !pod {
                remove_link(&entry.path())?;
            }
        }
    }
    let mut maps = take_maps(&mut hooks.ebpf)?;
    for dev in devices {
        let addrs = NodeAddrs {
            v4: dev.v4.map_or([0; 4], |a| addr_words(a.into())),
            v6: dev.v6.map_or([0; 4], |a| addr_words(a.into())),
        };
        maps.node_addrs
            .insert(dev.index, addrs, 0)
            .map_err(|source| BpfError::Map {
                name: MAP_NODE_ADDRS,
                source: Box::new(source),
            })?;
    }
    Ok((maps, hooks))
}

/// The packet programs and how each is attached.
const TC_PROGRAMS: [(&str, TcAttachType); 2] = [
    (TC_INGRESS, TcAttachType::Ingress),
    (TC_EGRESS, TcAttachType::Egress),
];

/// The classic TC filter priority and handle of the pod programs on pods'
/// devices: fixed, so a restarted agent finds and replaces its own filter.
pub const POD_TC_PRIORITY: u16 = 1;
const POD_TC_HANDLE: TcHandle = TcHandle::new(0, 1);

/// The same for pods' devices.
const POD_TC_PROGRAMS: [(&str, TcAttachType); 2] = [
    (POD_TC_INGRESS, TcAttachType::Ingress),
    (POD_TC_EGRESS, TcAttachType::Egress),
];

/// The pins of the links the agent makes once it has attached to pod
/// device `device` (`--pod-devices`), in its bpffs `links_dir`: what a CNI
/// plugin waits for before a new pod runs (ferry-cni's `dataplane.waitFor`).
pub fn pod_device_pins(links_dir: &Path, device: &str) -> Vec<PathBuf> {
    POD_TC_PROGRAMS
        .iter()
        .map(|(name, _)| links_dir.join(pin_name(name, device)))
        .collect()
}

/// bpffs refuses dots, which device names may have.
fn pin_name(program: &str, device: &str) -> String {
    format!("{program}_{}", device.replace('.', "_"))
}

/// The loaded packet programs, attachable to more devices while the agent
/// runs (pods' veths come and go).
pub struct PacketHooks {
    ebpf: Ebpf,
    links_dir: PathBuf,
    attached: Vec<String>,
}

impl std::fmt::Debug for PacketHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketHooks")
            .field("attached", &self.attached)
            .finish()
    }
}

impl PacketHooks {
    /// Attaches ingress and egress to `device` (replacing a previous
    /// agent's links there); returns the pins.
    pub fn attach(&mut self, device: &str) -> Result<Vec<PathBuf>, BpfError> {
        let mut pins = Vec::new();
        for (name, kind) in TC_PROGRAMS {
            pins.push(self.attach_one(name, kind, device)?);
        }
        self.attached.push(device.to_owned());
        Ok(pins)
    }

    /// Attaches the pod programs to pod device `device` as classic TC
    /// filters (clsact, [`POD_TC_PRIORITY`]): a TCX attach waits for an RCU
    /// grace period while holding RTNL (12-30 ms here, serialising every
    /// netlink writer on the machine, pods' CNI ADDs among them), a netlink
    /// filter does not. A previous agent's filter there is replaced in
    /// place, never removed first. The filter lives with the device, not
    /// with this process, so an agent restart changes nothing for the pod.
    /// Once attached, each program is pinned per device in the links
    /// directory ([`pod_device_pins`]): what ferry-cni waits for before the
    /// pod runs. Returns the pins.
    pub fn attach_pod(&mut self, device: &str) -> Result<Vec<PathBuf>, BpfError> {
        // Already there when a previous agent attached, or a pod device
        // had it: fine either way; a missing qdisc fails the attach below.
        let _ = aya::programs::tc::qdisc_add_clsact(device);
        let mut pins = Vec::new();
        for (name, kind) in POD_TC_PROGRAMS {
            let prog: &mut SchedClassifier = program(&mut self.ebpf, name)?;
            let options = || {
                TcAttachOptions::Netlink(NlOptions {
                    priority: POD_TC_PRIORITY,
                    handle: POD_TC_HANDLE,
                    classid: None,
                })
            };
            let id = match prog.attach_with_options(device, kind, options()) {
                Ok(id) => id,
                // Our filter is there (a previous agent's): swap the
                // program in it.
                Err(first) => {
                    let link = SchedClassifierLink::attached(
                        device,
                        kind,
                        POD_TC_PRIORITY,
                        POD_TC_HANDLE,
                        None,
                    )
                    .map_err(|_| prog_err(name)(first))?;
                    prog.attach_to_link(link).map_err(prog_err(name))?
                }
            };
            // The filter must outlive this process: never detach it on drop.
            std::mem::forget(prog.take_link(id).map_err(prog_err(name))?);
            let path = self.links_dir.join(pin_name(name, device));
            // A previous agent's pin here (a TCX link, before filters) goes
            // only now that the filter runs.
            remove_link(&path)?;
            prog.pin(&path).map_err(|source| BpfError::Pin {
                path: path.clone(),
                source: Box::new(source),
            })?;
            pins.push(path);
        }
        for (name, _) in TC_PROGRAMS {
            remove_link(&self.links_dir.join(pin_name(name, device)))?;
        }
        self.attached.push(device.to_owned());
        Ok(pins)
    }

    /// Attaches TC program `name` to `device`, pinned (replacing a previous
    /// agent's link there); returns the pin.
    fn attach_one(
        &mut self,
        name: &'static str,
        kind: TcAttachType,
        device: &str,
    ) -> Result<PathBuf, BpfError> {
        let prog: &mut SchedClassifier = program(&mut self.ebpf, name)?;
        let id = prog.attach(device, kind).map_err(prog_err(name))?;
        let link: FdLink = prog
            .take_link(id)
            .map_err(prog_err(name))?
            .try_into()
            .map_err(|source| BpfError::Link {
                path: self.links_dir.join(name),
                source: Box::new(source),
            })?;
        swap_pin(link, &self.links_dir, &pin_name(name, device))
    }

    /// Attaches the XDP fast path to `device` in its driver, pinned: a
    /// previous agent's link there gets this program atomically (an XDP
    /// link cannot be swapped as TC's are: one per device).
    pub fn attach_xdp(&mut self, device: &str) -> Result<PathBuf, BpfError> {
        let path = self.links_dir.join(pin_name(XDP, device));
        let link_err = |path: &Path| {
            let path = path.to_owned();
            move |source| BpfError::Link {
                path,
                source: Box::new(source),
            }
        };
        let prog: &mut Xdp = program(&mut self.ebpf, XDP)?;
        if path.exists() {
            let pinned = PinnedLink::from_pin(&path).map_err(link_err(&path))?;
            let link = XdpLink::try_from(FdLink::from(pinned)).map_err(link_err(&path))?;
            prog.attach_to_link(link).map_err(prog_err(XDP))?;
            return Ok(path);
        }
        let id = prog
            .attach(device, XdpMode::Driver)
            .map_err(prog_err(XDP))?;
        let link: FdLink = prog
            .take_link(id)
            .map_err(prog_err(XDP))?
            .try_into()
            .map_err(link_err(&path))?;
        link.pin(&path).map_err(|source| BpfError::Pin {
            path: path.clone(),
            source: Box::new(source),
        })?;
        Ok(path)
    }

    /// Keeps the programs on exactly the devices named `prefix*` in
    /// `present`: attaches new ones, drops the pins of gone ones (their
    /// links went with the device). Returns how many were attached.
    pub fn sync_prefixed(&mut self, prefix: &str, present: &[String]) -> Result<usize, BpfError> {
        let mut added = 0;
        let mut first_err = None;
        for dev in present.iter().filter(|d| d.starts_with(prefix)) {
            if !self.attached.contains(dev) {
                // One device failing (gone since the listing) must not keep
                // the others unattached.
                match self.attach_pod(dev) {
                    Ok(_) => added += 1,
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
        }
        let gone: Vec<String> = self
            .attached
            .iter()
            .filter(|d| d.starts_with(prefix) && !present.contains(d))
            .cloned()
            .collect();
        for dev in gone {
            for (name, _) in POD_TC_PROGRAMS.iter().chain(&TC_PROGRAMS) {
                remove_link(&self.links_dir.join(pin_name(name, &dev)))?;
            }
            self.attached.retain(|d| d != &dev);
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(added),
        }
    }
}

fn prog_err(name: &'static str) -> impl Fn(aya::programs::ProgramError) -> BpfError {
    move |source| BpfError::Program {
        name,
        source: Box::new(source),
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, BpfError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(BpfError::MissingProgram(name))?
        .try_into()
        .map_err(prog_err(name))
}

fn attach_sock(ebpf: &mut Ebpf, name: &'static str, cgroup: &File) -> Result<FdLink, BpfError> {
    let prog_err = prog_err(name);
    let prog: &mut CgroupSockAddr = program(ebpf, name)?;
    prog.load().map_err(&prog_err)?;
    // A bpf_link (what aya makes on 5.7+) always shares the hook with other
    // links and takes no flags, so the old agent's link keeps translating
    // until the new one is in place.
    let id = prog
        .attach(cgroup, CgroupAttachMode::Single)
        .map_err(&prog_err)?;
    prog.take_link(id)
        .map_err(&prog_err)?
        .try_into()
        .map_err(|source| BpfError::Link {
            path: PathBuf::from(name),
            source: Box::new(source),
        })
}

/// Pins `link` as `name`, then removes the link pinned there before (which
/// detaches it): the new program runs before the old one stops.
fn swap_pin(link: FdLink, links_dir: &Path, name: &str) -> Result<PathBuf, BpfError> {
    let path = links_dir.join(name);
    // bpffs refuses names with a dot.
    let staged = links_dir.join(format!("{name}_new"));
    remove_link(&staged)?;
    link.pin(&staged).map_err(|source| BpfError::Pin {
        path: staged.clone(),
        source: Box::new(source),
    })?;
    remove_link(&path)?;
    std::fs::rename(&staged, &path).map_err(io_err("renaming link pin", &staged))?;
    Ok(path)
}

/// Unpins (and so detaches) the link pinned at `path`, if any; a pinned
/// program there (a pod device's marker, [`PacketHooks::attach_pod`]) is
/// only unpinned: its filter goes with its device.
fn remove_link(path: &Path) -> Result<(), BpfError> {
    if !path.exists() {
        return Ok(());
    }
    match PinnedLink::from_pin(path) {
        // Dropping the unpinned link closes the last reference: detached.
        Ok(pinned) => drop(pinned.unpin().map_err(io_err("unpinning", path))?),
        Err(_) => match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("unpinning", path)(e)),
        },
    }
    Ok(())
}

fn take_maps(ebpf: &mut Ebpf) -> Result<Maps, BpfError> {
    fn map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, BpfError>
    where
        T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
    {
        let m = ebpf.take_map(name).ok_or(BpfError::MissingMap(name))?;
        T::try_from(m).map_err(|source| BpfError::Map {
            name,
            source: Box::new(source),
        })
    }
    Ok(Maps {
        services: map(ebpf, MAP_SERVICES)?,
        backends: map(ebpf, MAP_BACKENDS)?,
        affinity: map(ebpf, MAP_AFFINITY)?,
        sock_revnat: map(ebpf, MAP_SOCK_REVNAT)?,
        stats: map(ebpf, MAP_STATS)?,
        conntrack: map(ebpf, MAP_CONNTRACK)?,
        node_addrs: map(ebpf, MAP_NODE_ADDRS)?,
        maglev: map(ebpf, MAP_MAGLEV)?,
        lb_config: map(ebpf, MAP_LB_CONFIG)?,
        xdp_stats: map(ebpf, MAP_XDP_STATS)?,
    })
}

/// An XDP program that passes everything, attached (in its driver) to a
/// device for as long as this value lives. On the far end of a veth that a
/// node uses as its uplink it turns on that end's XDP receive path: a veth
/// delivers the frames its peer sends back with `XDP_TX` (the node's fast
/// path) only to an end with an XDP program. Test worlds and `ferry up`
/// put one on their underlay's side of every node link.
pub struct XdpPass {
    _ebpf: Ebpf,
}

impl std::fmt::Debug for XdpPass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("XdpPass")
    }
}

impl XdpPass {
    /// Attaches to `device` in the calling thread's network namespace.
    pub fn attach(device: &str) -> Result<Self, BpfError> {
        const NAME: &str = "ferry_xdp_pass";
        let mut ebpf = Ebpf::load(XDP_PASS_OBJECT).map_err(|source| BpfError::Load {
            pins: PathBuf::new(),
            source: Box::new(source),
        })?;
        let prog: &mut Xdp = program(&mut ebpf, NAME)?;
        prog.load().map_err(prog_err(NAME))?;
        prog.attach(device, XdpMode::Driver)
            .map_err(prog_err(NAME))?;
        Ok(Self { _ebpf: ebpf })
    }
}

/// Opens the pinned maps without loading anything (for `inspect`).
pub fn open_pinned(layout: &Layout) -> Result<Maps, BpfError> {
    open_maps(&layout.maps_dir())
}

/// Opens the maps pinned in `dir` (as [`load_detached`] pins them).
pub fn open_maps(dir: &Path) -> Result<Maps, BpfError> {
    let dir = dir.to_owned();
    Ok(Maps {
        services: open(&dir, MAP_SERVICES)?,
        backends: open(&dir, MAP_BACKENDS)?,
        affinity: open(&dir, MAP_AFFINITY)?,
        sock_revnat: open(&dir, MAP_SOCK_REVNAT)?,
        stats: open(&dir, MAP_STATS)?,
        conntrack: open(&dir, MAP_CONNTRACK)?,
        node_addrs: open(&dir, MAP_NODE_ADDRS)?,
        maglev: open(&dir, MAP_MAGLEV)?,
        lb_config: open(&dir, MAP_LB_CONFIG)?,
        xdp_stats: open(&dir, MAP_XDP_STATS)?,
    })
}

/// NetworkPolicy's maps (see `ferry_ebpf_common::policy`), as the agent
/// writes them and `inspect` reads them.
pub struct PolicyMaps {
    pub endpoints: HashMap<MapData, [u32; 4], PolicyEndpoint>,
    pub identities: HashMap<MapData, [u32; 4], u32>,
    pub cidrs: LpmTrie<MapData, PolicyCidrKey, u32>,
    pub rules: LpmTrie<MapData, PolicyRuleKey, PolicyRuleValue>,
    pub conntrack: HashMap<MapData, CtKey, PolicyCtValue>,
    pub stats: PerCpuArray<MapData, PolicyStats>,
}

impl std::fmt::Debug for PolicyMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PolicyMaps")
    }
}

impl PolicyMaps {
    /// Handles on the pinned maps.
    pub fn open(layout: &Layout) -> Result<Self, BpfError> {
        Self::open_in(&layout.maps_dir())
    }

    /// Handles on the maps pinned in `dir` (as [`load_detached`] pins them).
    pub fn open_in(dir: &Path) -> Result<Self, BpfError> {
        Ok(Self {
            endpoints: open(dir, MAP_POLICY_ENDPOINTS)?,
            identities: open(dir, MAP_POLICY_IDENTITIES)?,
            cidrs: open(dir, MAP_POLICY_CIDRS)?,
            rules: open(dir, MAP_POLICY_RULES)?,
            conntrack: open(dir, MAP_POLICY_CT)?,
            stats: open(dir, MAP_POLICY_STATS)?,
        })
    }
}

/// Flow events' maps (see `ferry_ebpf_common::observe`): the switch the
/// agent turns on while someone watches, the ring it reads, and the
/// counters of events refused.
pub struct ObserveMaps {
    pub config: Array<MapData, ObserveConfig>,
    pub stats: PerCpuArray<MapData, ObserveStats>,
    pub events: RingBuf<MapData>,
}

impl std::fmt::Debug for ObserveMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ObserveMaps")
    }
}

impl ObserveMaps {
    /// Handles on the pinned maps.
    pub fn open(layout: &Layout) -> Result<Self, BpfError> {
        Self::open_in(&layout.maps_dir())
    }

    /// Handles on the maps pinned in `dir` (as [`load_detached`] pins them).
    pub fn open_in(dir: &Path) -> Result<Self, BpfError> {
        Ok(Self {
            config: open(dir, MAP_OBSERVE)?,
            stats: open(dir, MAP_OBSERVE_STATS)?,
            events: open(dir, MAP_FLOW_EVENTS)?,
        })
    }
}

/// The node's addresses where NodePorts answer, kept equal to what the node
/// holds: new ones are added before gone ones are removed.
pub struct NodePortAddrs(HashMap<MapData, [u32; 4], u8>);

impl std::fmt::Debug for NodePortAddrs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodePortAddrs")
    }
}

impl NodePortAddrs {
    /// A handle on the pinned map.
    pub fn open(layout: &Layout) -> Result<Self, BpfError> {
        open(&layout.maps_dir(), MAP_NODEPORT_ADDRS).map(Self)
    }

    /// Makes the map hold exactly `addrs`; returns how many changed.
    pub fn sync(&mut self, addrs: &[std::net::IpAddr]) -> Result<usize, BpfError> {
        let err = |source| BpfError::Map {
            name: MAP_NODEPORT_ADDRS,
            source: Box::new(source),
        };
        let wanted: std::collections::BTreeSet<[u32; 4]> =
            addrs.iter().map(|a| addr_words(*a)).collect();
        let held: std::collections::BTreeSet<[u32; 4]> =
            self.0.keys().filter_map(Result::ok).collect();
        let mut changed = 0;
        for a in wanted.difference(&held) {
            self.0.insert(a, 1, 0).map_err(err)?;
            changed += 1;
        }
        for a in held.difference(&wanted) {
            self.0.remove(a).map_err(err)?;
            changed += 1;
        }
        Ok(changed)
    }
}

/// A second handle on the pinned conntrack map, for collecting idle flows
/// away from the proxy loop.
pub fn open_conntrack(layout: &Layout) -> Result<HashMap<MapData, CtKey, CtValue>, BpfError> {
    open(&layout.maps_dir(), MAP_CONNTRACK)
}

fn open<T>(dir: &Path, name: &'static str) -> Result<T, BpfError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let err = |source| BpfError::Map {
        name,
        source: Box::new(source),
    };
    let data = MapData::from_pin(dir.join(name)).map_err(err)?;
    let m = aya::maps::Map::from_map_data(data).map_err(err)?;
    T::try_from(m).map_err(err)
}

/// Detaches every program and removes every pin under the bpffs root.
pub fn uninstall(layout: &Layout) -> Result<(), BpfError> {
    let links_dir = layout.links_dir();
    if let Ok(entries) = std::fs::read_dir(&links_dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // A pod device's filter, named by its marker pin (devices gone
            // since took theirs with them).
            for (program, kind) in POD_TC_PROGRAMS {
                if let Some(device) = name.strip_prefix(&format!("{program}_"))
                    && let Ok(link) = SchedClassifierLink::attached(
                        device,
                        kind,
                        POD_TC_PRIORITY,
                        POD_TC_HANDLE,
                        None,
                    )
                {
                    let _ = aya::programs::links::Link::detach(link);
                }
            }
            remove_link(&entry.path())?;
        }
    }
    for dir in [links_dir, layout.maps_dir()] {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                std::fs::remove_file(&path).map_err(io_err("removing pin", &path))?;
            }
        }
        match std::fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("removing", &dir)(e)),
        }
    }
    match std::fs::remove_dir(&layout.bpffs_root) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("removing", &layout.bpffs_root)(e)),
    }
}

fn op_err(op: &'static str) -> impl Fn(aya::maps::MapError) -> MapOpError {
    move |e| MapOpError {
        op,
        message: e.to_string(),
    }
}

impl LbMaps for Maps {
    fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>, MapOpError> {
        self.services
            .iter()
            .collect::<Result<_, _>>()
            .map_err(op_err("reading the service map"))
    }

    fn backend_keys(&self) -> Result<Vec<BackendKey>, MapOpError> {
        self.backends
            .keys()
            .collect::<Result<_, _>>()
            .map_err(op_err("reading the backend map"))
    }

    fn set_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), MapOpError> {
        self.services
            .insert(key, value, 0)
            .map_err(op_err("writing a service entry"))
    }

    fn del_service(&mut self, key: &ServiceKey) -> Result<(), MapOpError> {
        match self.services.remove(key) {
            Err(aya::maps::MapError::KeyNotFound) | Ok(()) => Ok(()),
            Err(e) => Err(op_err("deleting a service entry")(e)),
        }
    }

    fn set_backend(&mut self, key: &BackendKey, value: &Backend) -> Result<(), MapOpError> {
        self.backends
            .insert(key, value, 0)
            .map_err(op_err("writing a backend entry"))
    }

    fn del_backend(&mut self, key: &BackendKey) -> Result<(), MapOpError> {
        match self.backends.remove(key) {
            Err(aya::maps::MapError::KeyNotFound) | Ok(()) => Ok(()),
            Err(e) => Err(op_err("deleting a backend entry")(e)),
        }
    }

    fn purge_affinity(
        &mut self,
        dead: &mut dyn FnMut(&AffinityKey, &AffinityValue) -> bool,
    ) -> Result<usize, MapOpError> {
        purge(&mut self.affinity, dead, "an affinity entry")
    }

    fn set_lb_config(&mut self, config: &LbConfig) -> Result<(), MapOpError> {
        self.lb_config
            .set(0, config, 0)
            .map_err(op_err("writing the load-balancing settings"))
    }

    fn maglev_keys(&self) -> Result<Vec<MaglevKey>, MapOpError> {
        self.maglev
            .keys()
            .collect::<Result<_, _>>()
            .map_err(op_err("reading the Maglev map"))
    }

    fn set_maglev(&mut self, key: &MaglevKey, chunk: &MaglevChunk) -> Result<(), MapOpError> {
        self.maglev
            .insert(key, chunk, 0)
            .map_err(op_err("writing a Maglev table chunk (raise --map-maglev)"))
    }

    fn del_maglev(&mut self, key: &MaglevKey) -> Result<(), MapOpError> {
        match self.maglev.remove(key) {
            Err(aya::maps::MapError::KeyNotFound) | Ok(()) => Ok(()),
            Err(e) => Err(op_err("deleting a Maglev table chunk")(e)),
        }
    }

    fn read_stats(&self, id: u32) -> Result<Option<ServiceStats>, MapOpError> {
        match self.stats.get(&id, 0) {
            Ok(per_cpu) => {
                let mut sum = ServiceStats::default();
                for s in per_cpu.iter() {
                    sum.connections += s.connections;
                    sum.rejected += s.rejected;
                    sum.packets += s.packets;
                    sum.bytes += s.bytes;
                }
                Ok(Some(sum))
            }
            // Ids past the array have no counters.
            Err(aya::maps::MapError::OutOfBounds { .. }) => Ok(None),
            Err(e) => Err(op_err("reading service counters")(e)),
        }
    }

    fn purge_flows(
        &mut self,
        dead: &mut dyn FnMut(&CtKey, &CtValue) -> bool,
    ) -> Result<usize, MapOpError> {
        purge(&mut self.conntrack, dead, "a conntrack entry")
    }
}

/// Deletes the entries of an (LRU) hash map that `dead` picks.
pub fn purge<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    dead: &mut dyn FnMut(&K, &V) -> bool,
    what: &'static str,
) -> Result<usize, MapOpError> {
    let mut doomed = Vec::new();
    for entry in map.iter() {
        // An LRU entry evicted mid-walk ends the walk early; the next pass
        // catches the rest.
        let Ok((k, v)) = entry else { break };
        if dead(&k, &v) {
            doomed.push(k);
        }
    }
    let n = doomed.len();
    for k in doomed {
        match map.remove(&k) {
            Err(aya::maps::MapError::KeyNotFound) | Ok(()) => {}
            Err(e) => {
                return Err(MapOpError {
                    op: "deleting a map entry",
                    message: format!("{what}: {e}"),
                });
            }
        }
    }
    Ok(n)
}

/// A removal of what is not there is done.
fn removed(r: Result<(), aya::maps::MapError>, what: &'static str) -> Result<(), MapOpError> {
    match r {
        Err(aya::maps::MapError::KeyNotFound) | Ok(()) => Ok(()),
        Err(e) => Err(op_err(what)(e)),
    }
}

impl PolicyTables for PolicyMaps {
    fn set_rule(
        &mut self,
        prefix: u32,
        key: &PolicyRuleKey,
        value: &PolicyRuleValue,
    ) -> Result<(), MapOpError> {
        self.rules
            .insert(&LpmKey::new(prefix, *key), value, 0)
            .map_err(op_err("writing a policy rule"))
    }

    fn del_rule(&mut self, prefix: u32, key: &PolicyRuleKey) -> Result<(), MapOpError> {
        removed(
            self.rules.remove(&LpmKey::new(prefix, *key)),
            "deleting a policy rule",
        )
    }

    fn set_cidr(
        &mut self,
        prefix: u32,
        key: &PolicyCidrKey,
        identity: u32,
    ) -> Result<(), MapOpError> {
        self.cidrs
            .insert(&LpmKey::new(prefix, *key), identity, 0)
            .map_err(op_err("writing a policy CIDR"))
    }

    fn del_cidr(&mut self, prefix: u32, key: &PolicyCidrKey) -> Result<(), MapOpError> {
        removed(
            self.cidrs.remove(&LpmKey::new(prefix, *key)),
            "deleting a policy CIDR",
        )
    }

    fn set_identity(&mut self, addr: &[u32; 4], identity: u32) -> Result<(), MapOpError> {
        self.identities
            .insert(addr, identity, 0)
            .map_err(op_err("writing a policy identity"))
    }

    fn del_identity(&mut self, addr: &[u32; 4]) -> Result<(), MapOpError> {
        removed(self.identities.remove(addr), "deleting a policy identity")
    }

    fn set_endpoint(&mut self, addr: &[u32; 4], ep: &PolicyEndpoint) -> Result<(), MapOpError> {
        self.endpoints
            .insert(addr, ep, 0)
            .map_err(op_err("writing a policy endpoint"))
    }

    fn del_endpoint(&mut self, addr: &[u32; 4]) -> Result<(), MapOpError> {
        removed(self.endpoints.remove(addr), "deleting a policy endpoint")
    }

    fn read_all(&self) -> Result<Written, MapOpError> {
        let mut w = Written::default();
        for entry in self.rules.iter() {
            let (k, v) = entry.map_err(op_err("reading the policy rules"))?;
            w.rules.insert((k.prefix_len(), k.data()), v);
        }
        for entry in self.cidrs.iter() {
            let (k, v) = entry.map_err(op_err("reading the policy CIDRs"))?;
            w.cidrs.insert((k.prefix_len(), k.data()), v);
        }
        for entry in self.identities.iter() {
            let (k, v) = entry.map_err(op_err("reading the policy identities"))?;
            w.identities.insert(k, v);
        }
        for entry in self.endpoints.iter() {
            let (k, v) = entry.map_err(op_err("reading the policy endpoints"))?;
            w.endpoints.insert(k, v);
        }
        Ok(w)
    }
}
