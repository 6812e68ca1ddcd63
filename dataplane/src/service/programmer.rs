//! Turns a Service's entries ([`model`](super::model)) into BPF map writes,
//! incrementally and without a window in which a live frontend has no
//! backends.
//!
//! Each frontend (address, port, protocol, scope) points at a backend group
//! (one per service port, family and policy). A group has two revisions of
//! slots; a change writes the whole new set into the revision no frontend
//! uses, then points the frontends at it, so every lookup sees either the old
//! set or the new one. Only the changed Service's groups are touched.
//!
//! A group whose new flows pick backends by Maglev (traffic from outside,
//! `--lb-algorithm maglev` or the Service's annotation) also has a table per
//! revision, written with the revision's slots before frontends move to it;
//! the table of the revision no frontend uses any more is deleted after the
//! move, so a group keeps one table.
//!
//! Owns the service, backend and Maglev maps' contents and the backend group
//! ids; must not read the Kubernetes API or decide which endpoints count
//! (that is the model's job).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use ferry_ebpf_common::{
    AffinityKey, AffinityValue, BACKEND_FLAG_LOCAL, Backend, BackendKey, CtKey, CtValue,
    LB_MODE_DSR, LB_MODE_HYBRID, LB_MODE_SNAT, LbConfig, MAGLEV_CHUNK, MaglevChunk, MaglevKey,
    PROTO_SCTP, PROTO_TCP, PROTO_UDP, SCOPE_EXTERNAL, SCOPE_INTERNAL, SVC_FLAG_AFFINITY,
    SVC_FLAG_DROP, SVC_FLAG_MAGLEV, ServiceKey, ServiceStats, ServiceValue, v4_mapped,
};

use super::maglev::{self, BackendId, MaglevError, Seed, TableBuilder};
use super::model::{
    self, FrontendKind, LbAlgorithm, Protocol, ServicePortEntries, ServicePortName,
};
use super::nat_ports::NatPorts;

/// A failed map operation, with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {message}")]
pub struct MapOpError {
    pub op: &'static str,
    pub message: String,
}

/// The map operations the programmer needs; the agent's pinned maps
/// implement it, and tests use an in-memory one.
pub trait LbMaps {
    fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>, MapOpError>;
    fn backend_keys(&self) -> Result<Vec<BackendKey>, MapOpError>;
    fn set_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), MapOpError>;
    fn del_service(&mut self, key: &ServiceKey) -> Result<(), MapOpError>;
    fn set_backend(&mut self, key: &BackendKey, value: &Backend) -> Result<(), MapOpError>;
    fn del_backend(&mut self, key: &BackendKey) -> Result<(), MapOpError>;
    /// Removes the affinity entries `dead` picks; returns how many went.
    fn purge_affinity(
        &mut self,
        dead: &mut dyn FnMut(&AffinityKey, &AffinityValue) -> bool,
    ) -> Result<usize, MapOpError>;
    /// Removes the conntrack entries `dead` picks; returns how many went.
    /// Maps without per-packet translation have none.
    fn purge_flows(
        &mut self,
        dead: &mut dyn FnMut(&CtKey, &CtValue) -> bool,
    ) -> Result<usize, MapOpError> {
        let _ = dead;
        Ok(0)
    }
    /// Writes the settings every node shares.
    fn set_lb_config(&mut self, config: &LbConfig) -> Result<(), MapOpError>;
    /// Every Maglev table chunk present.
    fn maglev_keys(&self) -> Result<Vec<MaglevKey>, MapOpError>;
    fn set_maglev(&mut self, key: &MaglevKey, chunk: &MaglevChunk) -> Result<(), MapOpError>;
    fn del_maglev(&mut self, key: &MaglevKey) -> Result<(), MapOpError>;
    /// A backend group's counters summed over CPUs, where kept.
    fn read_stats(&self, id: u32) -> Result<Option<ServiceStats>, MapOpError> {
        let _ = id;
        Ok(None)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    #[error(transparent)]
    Map(#[from] MapOpError),
    #[error("no free backend group id (limit {0}); raise the service map size")]
    IdsExhausted(u32),
    #[error(transparent)]
    Maglev(#[from] MaglevError),
}

/// How traffic from outside reaches a backend on another node
/// (`--lb-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LbMode {
    /// Source NAT to the entry node, which the replies pass again
    /// (kube-proxy's way).
    Snat,
    /// Direct server return: to the backend's node in Geneve (UDP 6081,
    /// built by the programs) with the client's address intact; replies go
    /// straight to the client.
    Dsr,
    /// DSR for TCP, source NAT for UDP and SCTP.
    Hybrid,
}

/// How new flows from outside the cluster pick and reach their backend, the
/// same on every node (the agent's `--lb-algorithm`, `--maglev-table-size`,
/// `--maglev-seed` and `--lb-mode`), and the node's `--nat-port-range`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LbSettings {
    /// For Services without the `ferry.dev/lb-algorithm` annotation.
    pub algorithm: LbAlgorithm,
    /// Maglev table size `M`, a prime ([`maglev::check_size`]).
    pub maglev_size: u32,
    pub seed: Seed,
    pub mode: LbMode,
    /// The node ports source-translated flows take (`--nat-port-range`).
    pub nat_ports: NatPorts,
}

impl Default for LbSettings {
    fn default() -> Self {
        Self {
            algorithm: LbAlgorithm::Random,
            maglev_size: maglev::DEFAULT_SIZE,
            seed: Seed::default(),
            mode: LbMode::Snat,
            nat_ports: NatPorts::default(),
        }
    }
}

impl LbSettings {
    /// What the programs read ([`LbConfig`]).
    pub fn config(&self) -> LbConfig {
        let (k0, k1) = self.seed.keys();
        LbConfig {
            maglev_size: self.maglev_size,
            _pad0: 0,
            seed: [k0, k1],
            lb_mode: match self.mode {
                LbMode::Snat => LB_MODE_SNAT,
                LbMode::Dsr => LB_MODE_DSR,
                LbMode::Hybrid => LB_MODE_HYBRID,
            },
            _pad1: 0,
            nat_port_min: self.nat_ports.min,
            nat_port_max: self.nat_ports.max,
            _pad: [0; 2],
        }
    }

    /// Chunks in one table.
    fn chunks(&self) -> u16 {
        u16::try_from((self.maglev_size as usize).div_ceil(MAGLEV_CHUNK)).unwrap_or(u16::MAX)
    }
}

/// Which Service a group belongs to.
pub type ServiceName = (String, String);

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct GroupKey {
    port: ServicePortName,
    v6: bool,
    /// Serves ExternalIP/LoadBalancer traffic from outside the node.
    external: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Desired {
    frontends: Frontends,
    backends: Vec<Backend>,
    flags: u8,
    timeout: u32,
}

/// A group's frontends, sorted. Most groups have one or two: a `BTreeSet`
/// would spend a whole node on each, for ten thousand groups.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Frontends(Vec<KeyOrd>);

impl Frontends {
    fn insert(&mut self, key: KeyOrd) -> bool {
        match self.0.binary_search(&key) {
            Ok(_) => false,
            Err(i) => {
                self.0.insert(i, key);
                true
            }
        }
    }

    fn remove(&mut self, key: &KeyOrd) -> bool {
        match self.0.binary_search(key) {
            Ok(i) => {
                self.0.remove(i);
                true
            }
            Err(_) => false,
        }
    }

    fn contains(&self, key: &KeyOrd) -> bool {
        self.0.binary_search(key).is_ok()
    }

    fn iter(&self) -> std::slice::Iter<'_, KeyOrd> {
        self.0.iter()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Those of `self` not in `other`, in order.
    fn difference<'a>(&'a self, other: &'a Frontends) -> impl Iterator<Item = &'a KeyOrd> + 'a {
        self.0.iter().filter(|k| !other.contains(k))
    }
}

impl Extend<KeyOrd> for Frontends {
    fn extend<I: IntoIterator<Item = KeyOrd>>(&mut self, iter: I) {
        self.0.extend(iter);
        self.0.sort_unstable();
        self.0.dedup();
    }
}

impl FromIterator<KeyOrd> for Frontends {
    fn from_iter<I: IntoIterator<Item = KeyOrd>>(iter: I) -> Self {
        let mut set = Frontends::default();
        set.extend(iter);
        set.0.shrink_to_fit();
        set
    }
}

impl<'a> IntoIterator for &'a Frontends {
    type Item = &'a KeyOrd;
    type IntoIter = std::slice::Iter<'a, KeyOrd>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// `ServiceKey` ordered, so desired sets compare deterministically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct KeyOrd {
    addr: [u32; 4],
    port: u16,
    proto: u8,
    scope: u8,
}

impl From<KeyOrd> for ServiceKey {
    fn from(k: KeyOrd) -> Self {
        ServiceKey {
            addr: k.addr,
            port: k.port,
            proto: k.proto,
            scope: k.scope,
        }
    }
}

impl From<&ServiceKey> for KeyOrd {
    fn from(k: &ServiceKey) -> Self {
        KeyOrd {
            addr: k.addr,
            port: k.port,
            proto: k.proto,
            scope: k.scope,
        }
    }
}

#[derive(Debug, Clone)]
struct Group {
    id: u32,
    /// The revision frontends point at.
    rev: u8,
    /// Slots that may exist per revision (written, not yet deleted).
    slots: [u16; 2],
    /// What the live revision holds, the flags frontends carry, and every
    /// frontend the group wants (some may be served by another group that
    /// claimed them later).
    live: Desired,
    /// Taken over from a previous agent: its affinity entries and flows may
    /// point at backends that went while no agent ran.
    adopted: bool,
    /// Revisions that may have a Maglev table in the map.
    tables: [bool; 2],
}

impl Group {
    /// What this group's frontends hold in the service map.
    fn value(&self) -> ServiceValue {
        ServiceValue {
            id: self.id,
            count: u16::try_from(self.live.backends.len()).unwrap_or(u16::MAX),
            flags: if self.live.flags == UNWRITTEN {
                0
            } else {
                self.live.flags
            },
            rev: self.rev,
            affinity_timeout: self.live.timeout,
        }
    }
}

/// `Desired::flags` of a group whose first set is not written yet.
const UNWRITTEN: u8 = u8::MAX;

/// A previous agent's backend group, found in the maps at start.
#[derive(Debug, Clone, Default)]
struct AdoptedGroup {
    slots: [u16; 2],
    frontends: Vec<KeyOrd>,
}

/// What one [`Programmer::apply`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ApplyStats {
    pub groups_written: usize,
    pub frontends_written: usize,
    pub frontends_removed: usize,
    pub affinity_purged: usize,
    pub flows_purged: usize,
}

/// Stored form of an address (see `ferry-ebpf-common`).
pub fn addr_words(addr: IpAddr) -> [u32; 4] {
    match addr {
        IpAddr::V4(v4) => v4_mapped(u32::from_ne_bytes(v4.octets())),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            [w(0), w(4), w(8), w(12)]
        }
    }
}

/// The address a stored form stands for.
pub fn words_addr(words: &[u32; 4]) -> IpAddr {
    let mut o = [0u8; 16];
    for (i, w) in words.iter().enumerate() {
        o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    let v6 = std::net::Ipv6Addr::from(o);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

pub fn proto_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
        Protocol::Sctp => PROTO_SCTP,
    }
}

fn backend(b: &model::Backend) -> Backend {
    Backend {
        addr: addr_words(b.addr),
        port: b.port.to_be(),
        flags: if b.local { BACKEND_FLAG_LOCAL } else { 0 },
        _pad: 0,
    }
}

pub struct Programmer<M> {
    maps: M,
    groups: HashMap<GroupKey, Group>,
    /// Each Service's groups, sorted (a boxed slice: a Service has a few,
    /// and a set would take a node of eleven).
    by_service: HashMap<ServiceName, Box<[GroupKey]>>,
    /// Every frontend key and the group serving it, across all services.
    owners: HashMap<KeyOrd, GroupKey>,
    /// Frontends more than one group wants: the others, latest claim last,
    /// to hand the frontend to when its owner lets go.
    contested: HashMap<KeyOrd, Vec<GroupKey>>,
    free_ids: Vec<u32>,
    next_id: u32,
    max_id: u32,
    /// Map entries found at start (a previous agent's), until the first
    /// full sync claims or removes them.
    adopted: HashMap<KeyOrd, ServiceValue>,
    /// Ids of adopted entries: the slots each revision may hold, and the
    /// frontends pointing at each.
    adopted_slots: HashMap<u32, AdoptedGroup>,
    /// UDP backends that left a group, for the caller to end the sockets
    /// still connected to them ([`take_removed_udp`](Self::take_removed_udp)).
    removed_udp: Vec<SocketAddr>,
    lb: LbSettings,
    tables: TableBuilder,
    /// Scratch for the table being written.
    table: Vec<u16>,
}

impl<M> std::fmt::Debug for Programmer<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Programmer")
            .field("groups", &self.groups.len())
            .field("adopted", &self.adopted.len())
            .finish()
    }
}

impl<M: LbMaps> Programmer<M> {
    /// Starts from what the maps already hold, so a restarted agent keeps
    /// the same group ids (and with them affinity) for unchanged services.
    pub fn new(maps: M, max_id: u32, lb: LbSettings) -> Result<Self, ProgramError> {
        maglev::check_size(lb.maglev_size)?;
        let mut maps = maps;
        maps.set_lb_config(&lb.config())?;
        let mut adopted = HashMap::new();
        let mut adopted_slots: HashMap<u32, AdoptedGroup> = HashMap::new();
        for (key, value) in maps.services()? {
            adopted.insert(KeyOrd::from(&key), value);
            adopted_slots
                .entry(value.id)
                .or_default()
                .frontends
                .push(KeyOrd::from(&key));
        }
        for key in maps.backend_keys()? {
            let slots = &mut adopted_slots.entry(key.id).or_default().slots;
            let rev = usize::from(key.rev & 1);
            slots[rev] = slots[rev].max(key.slot.saturating_add(1));
        }
        let next_id = adopted_slots.keys().copied().max().unwrap_or(0) + 1;
        Ok(Self {
            maps,
            groups: HashMap::new(),
            by_service: HashMap::new(),
            owners: HashMap::new(),
            contested: HashMap::new(),
            free_ids: Vec::new(),
            next_id,
            max_id: max_id.max(1),
            adopted,
            adopted_slots,
            removed_udp: Vec::new(),
            lb,
            tables: TableBuilder::default(),
            table: Vec::new(),
        })
    }

    /// The UDP backends removed since the last call.
    pub fn take_removed_udp(&mut self) -> Vec<SocketAddr> {
        std::mem::take(&mut self.removed_udp)
    }

    fn note_removed(&mut self, want: &Desired, gone: impl IntoIterator<Item = Backend>) {
        if want.frontends.iter().any(|k| k.proto == PROTO_UDP) {
            self.removed_udp.extend(
                gone.into_iter()
                    .map(|b| SocketAddr::new(words_addr(&b.addr), u16::from_be(b.port))),
            );
        }
    }

    pub fn maps(&self) -> &M {
        &self.maps
    }

    pub fn maps_mut(&mut self) -> &mut M {
        &mut self.maps
    }

    /// Number of backend groups programmed.
    pub fn groups(&self) -> usize {
        self.groups.len()
    }

    /// Number of frontends programmed.
    pub fn frontends(&self) -> usize {
        self.owners.len()
    }

    /// Backend slots that may be in the map (both revisions).
    pub fn backend_slots(&self) -> usize {
        self.groups
            .values()
            .map(|g| usize::from(g.slots[0]) + usize::from(g.slots[1]))
            .sum()
    }

    /// Every group: id, service port, IPv6, serving external traffic.
    pub fn group_labels(&self) -> impl Iterator<Item = (u32, &ServicePortName, bool, bool)> {
        self.groups
            .iter()
            .map(|(k, g)| (g.id, &k.port, k.v6, k.external))
    }

    /// Brings the maps in line with `entries` for one Service (an empty
    /// slice removes it). Every wanted frontend is written before anything
    /// unwanted is removed, so a frontend moving between groups is never
    /// missing. On error what was live stays live and a later call retries.
    pub fn apply(
        &mut self,
        service: &ServiceName,
        entries: &[ServicePortEntries],
    ) -> Result<ApplyStats, ProgramError> {
        let desired = desired_groups(entries, &self.lb);
        let mut stats = ApplyStats::default();
        let mut first_err = None;
        let old: BTreeSet<GroupKey> = self
            .by_service
            .get(service)
            .map(|v| v.iter().cloned().collect())
            .unwrap_or_default();
        for (gk, want) in &desired {
            if let Err(e) = self.write_group(gk, want, &mut stats) {
                first_err.get_or_insert(e);
            }
        }
        // Then let go of what no group of this Service wants any more.
        let none = Frontends::default();
        for gk in old.iter().chain(desired.keys()) {
            let Some(group) = self.groups.get(gk) else {
                continue;
            };
            let wanted = desired.get(gk).map_or(&none, |d| &d.frontends);
            let stale: Vec<KeyOrd> = group.live.frontends.difference(wanted).copied().collect();
            for key in stale {
                match self.release(&key, gk, &mut stats) {
                    Ok(()) => {
                        if let Some(g) = self.groups.get_mut(gk) {
                            g.live.frontends.remove(&key);
                        }
                    }
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
        }
        for gk in old.difference(&desired.keys().cloned().collect()) {
            if let Err(e) = self.remove_group(gk, &mut stats) {
                first_err.get_or_insert(e);
            }
        }
        let now: BTreeSet<GroupKey> = old
            .iter()
            .chain(desired.keys())
            .filter(|gk| self.groups.contains_key(*gk))
            .cloned()
            .collect();
        if now.is_empty() {
            self.by_service.remove(service);
        } else {
            self.by_service
                .insert(service.clone(), now.into_iter().collect());
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(stats),
        }
    }

    /// After the first full sync: drops whatever a previous agent left that
    /// no current Service wants. Safe to call again after an error: what
    /// was not removed yet is still known.
    pub fn finish_initial_sync(&mut self) -> Result<usize, ProgramError> {
        let mut removed = 0;
        let leftovers: Vec<KeyOrd> = self
            .adopted
            .keys()
            .filter(|k| !self.owners.contains_key(*k))
            .copied()
            .collect();
        for key in leftovers {
            self.maps.del_service(&key.into())?;
            self.adopted.remove(&key);
            removed += 1;
        }
        self.adopted.clear();
        // No frontend points at a dead group any more: its slots can go.
        let live: HashSet<u32> = self.groups.values().map(|g| g.id).collect();
        for key in self.maps.backend_keys()? {
            if !live.contains(&key.id) {
                self.maps.del_backend(&key)?;
            }
        }
        self.maps
            .purge_affinity(&mut |k, _| !live.contains(&k.id))?;
        // Tables of dead groups, of revisions no frontend uses, or beyond
        // this table size (a previous agent's, with another size).
        let chunks = self.lb.chunks();
        let tables: HashSet<(u32, u8)> = self
            .groups
            .values()
            .flat_map(|g| {
                (0..2u8)
                    .filter(|r| g.tables[usize::from(*r)])
                    .map(|r| (g.id, r))
            })
            .collect();
        for key in self.maps.maglev_keys()? {
            if !tables.contains(&(key.id, key.rev)) || key.chunk >= chunks {
                self.maps.del_maglev(&key)?;
            }
        }
        let dead: Vec<u32> = self
            .adopted_slots
            .keys()
            .filter(|id| !live.contains(*id))
            .copied()
            .collect();
        self.free_ids.extend(dead);
        self.adopted_slots.clear();
        Ok(removed)
    }

    fn alloc_id(&mut self, want: &Desired) -> Result<(u32, u8, AdoptedGroup, bool), ProgramError> {
        // Adopt a previous agent's group for the same frontend, keeping its
        // id, revision and affinity entries.
        let adopted = want
            .frontends
            .iter()
            .filter_map(|k| self.adopted.get(k))
            .find(|v| self.adopted_slots.contains_key(&v.id))
            .copied();
        if let Some(v) = adopted {
            let theirs = self.adopted_slots.remove(&v.id).unwrap_or_default();
            return Ok((v.id, v.rev & 1, theirs, true));
        }
        if let Some(id) = self.free_ids.pop() {
            return Ok((id, 0, AdoptedGroup::default(), false));
        }
        while self.next_id <= self.max_id {
            let id = self.next_id;
            self.next_id += 1;
            if !self.adopted_slots.contains_key(&id) {
                return Ok((id, 0, AdoptedGroup::default(), false));
            }
        }
        Err(ProgramError::IdsExhausted(self.max_id))
    }

    /// The group for `gk`, made on first use. An adopted group also takes
    /// every frontend the previous agent pointed at it, so none is left
    /// pointing at slots this agent rewrites.
    fn group_for(&mut self, gk: &GroupKey, want: &Desired) -> Result<Group, ProgramError> {
        if let Some(g) = self.groups.get(gk) {
            return Ok(g.clone());
        }
        let (id, rev, theirs, adopted) = self.alloc_id(want)?;
        let mut group = Group {
            id,
            rev,
            slots: theirs.slots,
            live: Desired {
                flags: UNWRITTEN,
                ..Desired::default()
            },
            adopted,
            tables: [false; 2],
        };
        if adopted {
            for key in theirs.frontends {
                self.adopted.remove(&key);
                if let std::collections::hash_map::Entry::Vacant(e) = self.owners.entry(key) {
                    e.insert(gk.clone());
                    group.live.frontends.insert(key);
                }
            }
        }
        self.groups.insert(gk.clone(), group.clone());
        Ok(group)
    }

    fn write_group(
        &mut self,
        gk: &GroupKey,
        want: &Desired,
        stats: &mut ApplyStats,
    ) -> Result<(), ProgramError> {
        let mut group = self.group_for(gk, want)?;
        let set_changed = group.live.backends != want.backends
            || group.live.flags != want.flags
            || group.live.timeout != want.timeout;
        if !set_changed {
            // Only frontends this group did not want before.
            let value = group.value();
            for key in want.frontends.difference(&group.live.frontends) {
                self.maps.set_service(&(*key).into(), &value)?;
                self.claim(*key, gk);
                if let Some(g) = self.groups.get_mut(gk) {
                    g.live.frontends.insert(*key);
                }
                stats.frontends_written += 1;
            }
            return Ok(());
        }

        let next = group.rev ^ 1;
        let n = u16::try_from(want.backends.len()).unwrap_or(u16::MAX);
        // Record the slots before writing, so a failure midway still leaves
        // them known for deletion later.
        group.slots[usize::from(next)] = group.slots[usize::from(next)].max(n);
        self.groups.insert(gk.clone(), group.clone());
        for (slot, b) in want.backends.iter().take(usize::from(n)).enumerate() {
            let key = backend_key(group.id, next, slot as u16);
            self.maps.set_backend(&key, b)?;
        }
        if want.flags & SVC_FLAG_MAGLEV != 0 {
            group.tables[usize::from(next)] = true;
            self.groups.insert(gk.clone(), group.clone());
            self.write_table(group.id, next, &want.backends)?;
        }
        // Everything this group serves, and every frontend it newly wants
        // (the latest claim wins), now points at the new revision.
        let value = ServiceValue {
            id: group.id,
            count: n,
            flags: want.flags,
            rev: next,
            affinity_timeout: want.timeout,
        };
        let mut targets: Vec<KeyOrd> = group
            .live
            .frontends
            .iter()
            .filter(|k| self.owners.get(*k) == Some(gk))
            .copied()
            .collect();
        targets.extend(want.frontends.difference(&group.live.frontends).copied());
        let mut flipped: Vec<(KeyOrd, Option<GroupKey>)> = Vec::with_capacity(targets.len());
        for key in targets {
            if let Err(e) = self.maps.set_service(&key.into(), &value) {
                self.roll_back(&flipped, &group);
                return Err(e.into());
            }
            flipped.push((key, self.owners.get(&key).cloned()));
            self.claim(key, gk);
            stats.frontends_written += 1;
        }
        let removed: HashSet<Backend> = group
            .live
            .backends
            .iter()
            .filter(|b| !want.backends.contains(b))
            .copied()
            .collect();
        let toggled = group.live.flags != UNWRITTEN
            && (group.live.flags ^ want.flags) & SVC_FLAG_AFFINITY != 0;
        self.note_removed(want, removed.iter().copied());
        let adopted = std::mem::take(&mut group.adopted);
        group.rev = next;
        group.live.backends = want.backends.clone();
        group.live.flags = want.flags;
        group.live.timeout = want.timeout;
        group.live.frontends.extend(want.frontends.iter().copied());
        let id = group.id;
        self.groups.insert(gk.clone(), group.clone());
        stats.groups_written += 1;
        // Stale slots of the new revision, above the new count.
        for slot in n..group.slots[usize::from(next)] {
            self.maps.del_backend(&backend_key(id, next, slot))?;
        }
        // The table no frontend reads any more: a lookup still under way
        // that misses it picks at random once.
        let old = next ^ 1;
        if group.tables[usize::from(old)] {
            self.delete_table(id, old)?;
            if let Some(g) = self.groups.get_mut(gk) {
                g.tables[usize::from(old)] = false;
            }
        }
        if let Some(g) = self.groups.get_mut(gk) {
            g.slots[usize::from(next)] = n;
        }
        if !removed.is_empty() || toggled || adopted {
            // A client stuck to a gone backend must move at once (UDP has no
            // connection to fail); a toggle starts afresh; an adopted group
            // may remember backends that went while no agent ran.
            let live = &want.backends;
            stats.affinity_purged += self.maps.purge_affinity(&mut |k, v| {
                k.id == id
                    && (toggled
                        || removed.contains(&v.backend)
                        || (adopted && !live.contains(&v.backend)))
            })?;
            // Likewise a tracked UDP flow; TCP flows end on their own.
            stats.flows_purged += self.maps.purge_flows(&mut |k, v| {
                removed
                    .iter()
                    .any(|b| crate::conntrack::udp_flow_to(k, v, id, b))
                    || (adopted
                        && k.proto == PROTO_UDP
                        && v.id == id
                        && !live
                            .iter()
                            .any(|b| crate::conntrack::udp_flow_to(k, v, id, b)))
            })?;
        }
        Ok(())
    }

    /// Points frontends flipped by a failed write back where they were.
    /// Only keys that already existed change, which a full map allows.
    fn roll_back(&mut self, flipped: &[(KeyOrd, Option<GroupKey>)], group: &Group) {
        for (key, prev) in flipped.iter().rev() {
            let restored = match prev {
                Some(p) => match self.groups.get(p) {
                    Some(g) if g.id == group.id => Some(group.value()),
                    Some(g) => Some(g.value()),
                    None => None,
                },
                None => None,
            };
            let result = match restored {
                Some(v) => self.maps.set_service(&(*key).into(), &v),
                None => self.maps.del_service(&(*key).into()),
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "restoring a frontend after a failed write");
            }
            match prev {
                Some(p) => {
                    self.owners.insert(*key, p.clone());
                }
                None => {
                    self.owners.remove(key);
                }
            }
        }
    }

    /// `gk` now serves `key`; a previous owner still wants it back later.
    fn claim(&mut self, key: KeyOrd, gk: &GroupKey) {
        let prev = self.owners.insert(key, gk.clone());
        if let Some(others) = self.contested.get_mut(&key) {
            others.retain(|g| g != gk);
        }
        if let Some(p) = prev
            && &p != gk
        {
            self.contested.entry(key).or_default().push(p);
        }
    }

    /// `gk` no longer wants `key`: the latest other claimant gets it, or it
    /// goes from the map.
    fn release(
        &mut self,
        key: &KeyOrd,
        gk: &GroupKey,
        stats: &mut ApplyStats,
    ) -> Result<(), ProgramError> {
        if self.owners.get(key) != Some(gk) {
            if let Some(others) = self.contested.get_mut(key) {
                others.retain(|g| g != gk);
                if others.is_empty() {
                    self.contested.remove(key);
                }
            }
            return Ok(());
        }
        while let Some(next) = self.contested.get_mut(key).and_then(Vec::pop) {
            let Some(g) = self.groups.get(&next) else {
                continue;
            };
            if !g.live.frontends.contains(key) {
                continue;
            }
            let value = g.value();
            self.maps.set_service(&(*key).into(), &value)?;
            self.owners.insert(*key, next);
            if self.contested.get(key).is_some_and(Vec::is_empty) {
                self.contested.remove(key);
            }
            return Ok(());
        }
        self.contested.remove(key);
        self.maps.del_service(&(*key).into())?;
        self.owners.remove(key);
        stats.frontends_removed += 1;
        Ok(())
    }

    /// Deletes a group no desired state names (its frontends were released
    /// already): its slots, affinity entries and UDP flows, and its id.
    fn remove_group(&mut self, gk: &GroupKey, stats: &mut ApplyStats) -> Result<(), ProgramError> {
        let Some(group) = self.groups.get(gk).cloned() else {
            return Ok(());
        };
        for key in &group.live.frontends {
            self.release(key, gk, stats)?;
        }
        for rev in 0..2u8 {
            for slot in 0..group.slots[usize::from(rev)] {
                self.maps.del_backend(&backend_key(group.id, rev, slot))?;
            }
            if group.tables[usize::from(rev)] {
                self.delete_table(group.id, rev)?;
            }
        }
        self.note_removed(&group.live, group.live.backends.iter().copied());
        let id = group.id;
        stats.affinity_purged += self.maps.purge_affinity(&mut |k, _| k.id == id)?;
        stats.flows_purged += self
            .maps
            .purge_flows(&mut |k, v| v.id == id && k.proto == PROTO_UDP)?;
        self.groups.remove(gk);
        self.free_ids.push(id);
        Ok(())
    }
}

impl<M: LbMaps> Programmer<M> {
    /// Writes the Maglev table of `backends` (a revision's slots, in slot
    /// order) for group `id`, revision `rev`.
    fn write_table(&mut self, id: u32, rev: u8, backends: &[Backend]) -> Result<(), ProgramError> {
        let ids: Vec<BackendId> = backends
            .iter()
            .map(|b| BackendId::new(words_addr(&b.addr), u16::from_be(b.port)))
            .collect();
        self.tables
            .fill(&ids, self.lb.maglev_size, &self.lb.seed, &mut self.table)?;
        let mut chunk = MaglevChunk::default();
        for (i, part) in self.table.chunks(MAGLEV_CHUNK).enumerate() {
            chunk.slots[..part.len()].copy_from_slice(part);
            chunk.slots[part.len()..].fill(0);
            let key = maglev_key(id, rev, u16::try_from(i).unwrap_or(u16::MAX));
            self.maps.set_maglev(&key, &chunk)?;
        }
        Ok(())
    }

    fn delete_table(&mut self, id: u32, rev: u8) -> Result<(), ProgramError> {
        for chunk in 0..self.lb.chunks() {
            self.maps.del_maglev(&maglev_key(id, rev, chunk))?;
        }
        Ok(())
    }
}

fn maglev_key(id: u32, rev: u8, chunk: u16) -> MaglevKey {
    MaglevKey {
        id,
        rev,
        _pad: 0,
        chunk,
    }
}

fn backend_key(id: u32, rev: u8, slot: u16) -> BackendKey {
    BackendKey {
        id,
        slot,
        rev,
        _pad: 0,
    }
}

/// The groups a Service's entries need: per port and family, one for
/// in-cluster traffic (every frontend, socket hooks included) and, when it
/// has ExternalIP or LoadBalancer frontends, one for traffic arriving from
/// outside (externalTrafficPolicy's backends).
///
/// External groups pick by Maglev when the Service (or, without an
/// annotation, `lb`) asks for it and the table has room for the backends.
fn desired_groups(entries: &[ServicePortEntries], lb: &LbSettings) -> BTreeMap<GroupKey, Desired> {
    let mut out: BTreeMap<GroupKey, Desired> = BTreeMap::new();
    for e in entries {
        let (flags, timeout) = match e.affinity_timeout {
            Some(t) => (SVC_FLAG_AFFINITY, t),
            None => (0, 0),
        };
        for v6 in [false, true] {
            let of_family = |b: &&model::Backend| b.addr.is_ipv6() == v6;
            let frontends: Vec<_> = e
                .frontends
                .iter()
                .filter(|f| f.addr.is_ipv6() == v6)
                .collect();
            if frontends.is_empty() {
                continue;
            }
            let key = |f: &model::Frontend, scope: u8| KeyOrd {
                addr: addr_words(f.addr),
                port: f.port.to_be(),
                proto: proto_number(f.protocol),
                scope,
            };
            let internal = Desired {
                frontends: frontends
                    .iter()
                    .flat_map(|f| {
                        let mut keys = vec![key(f, SCOPE_INTERNAL)];
                        if f.kind == FrontendKind::ClusterIp {
                            keys.push(key(f, SCOPE_EXTERNAL));
                        }
                        keys
                    })
                    .collect(),
                backends: e
                    .cluster_backends
                    .iter()
                    .filter(of_family)
                    .map(backend)
                    .collect(),
                flags,
                timeout,
            };
            out.insert(
                GroupKey {
                    port: e.id.clone(),
                    v6,
                    external: false,
                },
                internal,
            );
            let external: Frontends = frontends
                .iter()
                .filter(|f| f.kind != FrontendKind::ClusterIp)
                .map(|f| key(f, SCOPE_EXTERNAL))
                .collect();
            if !external.is_empty() {
                let backends: Vec<Backend> = e
                    .external_backends
                    .iter()
                    .filter(of_family)
                    .map(backend)
                    .collect();
                let mut flags = flags;
                if e.external_drop {
                    flags |= SVC_FLAG_DROP;
                }
                if e.lb_algorithm.unwrap_or(lb.algorithm) == LbAlgorithm::Maglev
                    && !backends.is_empty()
                {
                    if backends.len() <= maglev::max_backends(lb.maglev_size) {
                        flags |= SVC_FLAG_MAGLEV;
                    } else {
                        tracing::warn!(service = %e.id, backends = backends.len(), table_size = lb.maglev_size, "too many backends for a Maglev table; picking at random (raise --maglev-table-size)");
                    }
                }
                out.insert(
                    GroupKey {
                        port: e.id.clone(),
                        v6,
                        external: true,
                    },
                    Desired {
                        frontends: external,
                        backends,
                        flags,
                        timeout,
                    },
                );
            }
        }
    }
    out
}

#[cfg(test)]
#[path = "programmer_tests.rs"]
mod tests;
