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
//! Owns the service and backend maps' contents and the backend group ids;
//! must not read the Kubernetes API or decide which endpoints count (that is
//! the model's job).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use ferry_ebpf_common::{
    AffinityKey, AffinityValue, BACKEND_FLAG_LOCAL, Backend, BackendKey, CtKey, CtValue,
    PROTO_SCTP, PROTO_TCP, PROTO_UDP, SCOPE_EXTERNAL, SCOPE_INTERNAL, SVC_FLAG_AFFINITY,
    ServiceKey, ServiceStats, ServiceValue, v4_mapped,
};

use super::model::{self, FrontendKind, Protocol, ServicePortEntries, ServicePortName};

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
    frontends: BTreeSet<KeyOrd>,
    backends: Vec<Backend>,
    flags: u8,
    timeout: u32,
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
    /// What the live revision holds, and the flags frontends carry.
    live: Desired,
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
    by_service: HashMap<ServiceName, BTreeSet<GroupKey>>,
    /// Every frontend key and the group serving it, across all services.
    owners: HashMap<KeyOrd, GroupKey>,
    free_ids: Vec<u32>,
    next_id: u32,
    max_id: u32,
    /// Map entries found at start (a previous agent's), until the first
    /// full sync claims or removes them.
    adopted: HashMap<KeyOrd, ServiceValue>,
    /// Ids of adopted entries, and the slots each revision may hold.
    adopted_slots: HashMap<u32, [u16; 2]>,
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
    pub fn new(maps: M, max_id: u32) -> Result<Self, ProgramError> {
        let mut adopted = HashMap::new();
        let mut adopted_slots: HashMap<u32, [u16; 2]> = HashMap::new();
        for (key, value) in maps.services()? {
            adopted.insert(KeyOrd::from(&key), value);
            adopted_slots.entry(value.id).or_default();
        }
        for key in maps.backend_keys()? {
            let slots = adopted_slots.entry(key.id).or_default();
            let rev = usize::from(key.rev & 1);
            slots[rev] = slots[rev].max(key.slot.saturating_add(1));
        }
        let next_id = adopted_slots.keys().copied().max().unwrap_or(0) + 1;
        Ok(Self {
            maps,
            groups: HashMap::new(),
            by_service: HashMap::new(),
            owners: HashMap::new(),
            free_ids: Vec::new(),
            next_id,
            max_id: max_id.max(1),
            adopted,
            adopted_slots,
        })
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
    /// slice removes it). On error the old state of the failed group stays
    /// live and a later call retries.
    pub fn apply(
        &mut self,
        service: &ServiceName,
        entries: &[ServicePortEntries],
    ) -> Result<ApplyStats, ProgramError> {
        let desired = desired_groups(entries);
        let mut stats = ApplyStats::default();
        let mut first_err = None;
        // Frontends leaving a group first (they may move to another one).
        let old: BTreeSet<GroupKey> = self.by_service.get(service).cloned().unwrap_or_default();
        for gk in &old {
            if !desired.contains_key(gk)
                && let Err(e) = self.remove_group(gk, &mut stats)
            {
                first_err.get_or_insert(e);
            }
        }
        for (gk, want) in &desired {
            if let Err(e) = self.write_group(gk, want, &mut stats) {
                first_err.get_or_insert(e);
            }
        }
        let now: BTreeSet<GroupKey> = self
            .groups
            .keys()
            .filter(|gk| desired.contains_key(*gk) || old.contains(*gk))
            .cloned()
            .collect();
        if now.is_empty() {
            self.by_service.remove(service);
        } else {
            self.by_service.insert(service.clone(), now);
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(stats),
        }
    }

    /// After the first full sync: drops whatever a previous agent left that
    /// no current Service wants.
    pub fn finish_initial_sync(&mut self) -> Result<usize, ProgramError> {
        let mut removed = 0;
        for key in std::mem::take(&mut self.adopted).into_keys() {
            if !self.owners.contains_key(&key) {
                self.maps.del_service(&key.into())?;
                removed += 1;
            }
        }
        let live: HashSet<u32> = self.groups.values().map(|g| g.id).collect();
        for key in self.maps.backend_keys()? {
            if !live.contains(&key.id) {
                self.maps.del_backend(&key)?;
            }
        }
        for (id, _) in std::mem::take(&mut self.adopted_slots) {
            if !live.contains(&id) {
                self.free_ids.push(id);
            }
        }
        self.maps
            .purge_affinity(&mut |k, _| !live.contains(&k.id))?;
        Ok(removed)
    }

    fn alloc_id(&mut self, want: &Desired) -> Result<(u32, u8, [u16; 2]), ProgramError> {
        // Adopt a previous agent's group for the same frontend, keeping its
        // id, revision and affinity entries.
        let adopted = want
            .frontends
            .iter()
            .filter_map(|k| self.adopted.get(k))
            .find(|v| self.adopted_slots.contains_key(&v.id))
            .copied();
        if let Some(v) = adopted {
            let slots = self.adopted_slots.remove(&v.id).unwrap_or_default();
            return Ok((v.id, v.rev & 1, slots));
        }
        if let Some(id) = self.free_ids.pop() {
            return Ok((id, 0, [0, 0]));
        }
        while self.next_id <= self.max_id {
            let id = self.next_id;
            self.next_id += 1;
            if !self.adopted_slots.contains_key(&id) {
                return Ok((id, 0, [0, 0]));
            }
        }
        Err(ProgramError::IdsExhausted(self.max_id))
    }

    fn write_group(
        &mut self,
        gk: &GroupKey,
        want: &Desired,
        stats: &mut ApplyStats,
    ) -> Result<(), ProgramError> {
        let mut group = match self.groups.get(gk) {
            Some(g) => g.clone(),
            None => {
                let (id, rev, slots) = self.alloc_id(want)?;
                let group = Group {
                    id,
                    rev,
                    slots,
                    live: Desired {
                        // Forces a write of the first set.
                        flags: u8::MAX,
                        ..Desired::default()
                    },
                };
                self.groups.insert(gk.clone(), group.clone());
                group
            }
        };
        let set_changed = group.live.backends != want.backends
            || group.live.flags != want.flags
            || group.live.timeout != want.timeout;
        if set_changed {
            let next = group.rev ^ 1;
            let n = u16::try_from(want.backends.len()).unwrap_or(u16::MAX);
            // Record the slots before writing, so a failure midway still
            // leaves them known for deletion later.
            group.slots[usize::from(next)] = group.slots[usize::from(next)].max(n);
            self.groups.insert(gk.clone(), group.clone());
            for (slot, b) in want.backends.iter().take(usize::from(n)).enumerate() {
                let key = backend_key(group.id, next, slot as u16);
                self.maps.set_backend(&key, b)?;
            }
            // Everything live now points at the new revision.
            let value = ServiceValue {
                id: group.id,
                count: n,
                flags: want.flags,
                rev: next,
                affinity_timeout: want.timeout,
            };
            for key in &want.frontends {
                self.set_frontend(key, gk, &value)?;
                stats.frontends_written += 1;
            }
            group.rev = next;
            let removed: HashSet<Backend> = group
                .live
                .backends
                .iter()
                .filter(|b| !want.backends.contains(b))
                .copied()
                .collect();
            let affinity_toggled = group.live.flags != u8::MAX
                && (group.live.flags ^ want.flags) & SVC_FLAG_AFFINITY != 0;
            // Stale slots of the new revision, above the new count.
            for slot in n..group.slots[usize::from(next)] {
                self.maps.del_backend(&backend_key(group.id, next, slot))?;
            }
            group.slots[usize::from(next)] = n;
            // Frontends this group no longer serves.
            for key in group.live.frontends.difference(&want.frontends) {
                if self.owners.get(key) == Some(gk) {
                    self.maps.del_service(&(*key).into())?;
                    self.owners.remove(key);
                    stats.frontends_removed += 1;
                }
            }
            group.live = want.clone();
            let id = group.id;
            self.groups.insert(gk.clone(), group);
            stats.groups_written += 1;
            if !removed.is_empty() || affinity_toggled {
                // A client stuck to a gone backend must move at once (UDP
                // has no connection to fail); a toggle starts afresh.
                stats.affinity_purged += self.maps.purge_affinity(&mut |k, v| {
                    k.id == id && (affinity_toggled || removed.contains(&v.backend))
                })?;
            }
            if !removed.is_empty() {
                // Likewise a tracked UDP flow; TCP flows end on their own.
                stats.flows_purged += self.maps.purge_flows(&mut |k, v| {
                    removed
                        .iter()
                        .any(|b| crate::conntrack::udp_flow_to(k, v, id, b))
                })?;
            }
        } else {
            let value = ServiceValue {
                id: group.id,
                count: u16::try_from(group.live.backends.len()).unwrap_or(u16::MAX),
                flags: group.live.flags,
                rev: group.rev,
                affinity_timeout: group.live.timeout,
            };
            for key in want.frontends.difference(&group.live.frontends) {
                self.set_frontend(key, gk, &value)?;
                stats.frontends_written += 1;
            }
            for key in group.live.frontends.difference(&want.frontends) {
                if self.owners.get(key) == Some(gk) {
                    self.maps.del_service(&(*key).into())?;
                    self.owners.remove(key);
                    stats.frontends_removed += 1;
                }
            }
            group.live.frontends = want.frontends.clone();
            self.groups.insert(gk.clone(), group);
        }
        Ok(())
    }

    fn set_frontend(
        &mut self,
        key: &KeyOrd,
        gk: &GroupKey,
        value: &ServiceValue,
    ) -> Result<(), ProgramError> {
        self.maps.set_service(&(*key).into(), value)?;
        // Two Services claiming one frontend: the latest write wins, as in
        // kube-proxy's rule order, and the other loses it.
        if let Some(prev) = self.owners.insert(*key, gk.clone())
            && &prev != gk
            && let Some(g) = self.groups.get_mut(&prev)
        {
            g.live.frontends.remove(key);
        }
        Ok(())
    }

    fn remove_group(&mut self, gk: &GroupKey, stats: &mut ApplyStats) -> Result<(), ProgramError> {
        let Some(group) = self.groups.get(gk).cloned() else {
            return Ok(());
        };
        for key in &group.live.frontends {
            if self.owners.get(key) == Some(gk) {
                self.maps.del_service(&(*key).into())?;
                self.owners.remove(key);
                stats.frontends_removed += 1;
            }
        }
        for rev in 0..2u8 {
            for slot in 0..group.slots[usize::from(rev)] {
                self.maps.del_backend(&backend_key(group.id, rev, slot))?;
            }
        }
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
fn desired_groups(entries: &[ServicePortEntries]) -> BTreeMap<GroupKey, Desired> {
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
            let external: BTreeSet<KeyOrd> = frontends
                .iter()
                .filter(|f| f.kind != FrontendKind::ClusterIp)
                .map(|f| key(f, SCOPE_EXTERNAL))
                .collect();
            if !external.is_empty() {
                out.insert(
                    GroupKey {
                        port: e.id.clone(),
                        v6,
                        external: true,
                    },
                    Desired {
                        frontends: external,
                        backends: e
                            .external_backends
                            .iter()
                            .filter(of_family)
                            .map(backend)
                            .collect(),
                        flags,
                        timeout,
                    },
                );
            }
        }
    }
    out
}

