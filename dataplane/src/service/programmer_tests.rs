//! Tests for [`Programmer`] against an in-memory [`LbMaps`] that logs every
//! write. Most tests replay that log from the state before the call under
//! test and check, after every single map operation, what a BPF program
//! doing a lookup at that moment would have found.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use ferry_ebpf_common::{
    AffinityKey, AffinityValue, BACKEND_FLAG_LOCAL, Backend, BackendKey, LbConfig, MAGLEV_CHUNK,
    MaglevChunk, MaglevKey, SCOPE_EXTERNAL, SCOPE_INTERNAL, SVC_FLAG_AFFINITY, SVC_FLAG_MAGLEV,
    ServiceKey, ServiceValue, is_v4,
};

use super::model::{
    Backend as MBackend, Frontend, FrontendKind, Protocol, ServicePortEntries, ServicePortName,
};
use super::{
    ApplyStats, LbMaps, LbSettings, MapOpError, ProgramError, Programmer, ServiceName, addr_words,
    proto_number, words_addr,
};

use FrontendKind::{ClusterIp, ExternalIp, LoadBalancer};

const MAX_ID: u32 = 1024;

// ---------------------------------------------------------------------------
// The fake maps
// ---------------------------------------------------------------------------

/// One write to the maps, as the programmer issued it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    SetService(ServiceKey, ServiceValue),
    DelService(ServiceKey),
    SetBackend(BackendKey, Backend),
    DelBackend(BackendKey),
    /// A purge, with the keys it removed.
    PurgeAffinity(Vec<AffinityKey>),
    SetMaglev(MaglevKey, Box<MaglevChunk>),
    DelMaglev(MaglevKey),
}

/// What the three maps hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct State {
    services: HashMap<ServiceKey, ServiceValue>,
    backends: HashMap<BackendKey, Backend>,
    affinity: HashMap<AffinityKey, AffinityValue>,
    maglev: HashMap<MaglevKey, MaglevChunk>,
    config: LbConfig,
}

impl State {
    fn apply(&mut self, op: &Op) {
        match op {
            Op::SetService(k, v) => {
                self.services.insert(*k, *v);
            }
            Op::DelService(k) => {
                self.services.remove(k);
            }
            Op::SetBackend(k, v) => {
                self.backends.insert(*k, *v);
            }
            Op::DelBackend(k) => {
                self.backends.remove(k);
            }
            Op::PurgeAffinity(keys) => {
                for k in keys {
                    self.affinity.remove(k);
                }
            }
            Op::SetMaglev(k, c) => {
                self.maglev.insert(*k, **c);
            }
            Op::DelMaglev(k) => {
                self.maglev.remove(k);
            }
        }
    }

    /// No entry in any map (the settings aside).
    fn is_empty(&self) -> bool {
        self.services.is_empty()
            && self.backends.is_empty()
            && self.affinity.is_empty()
            && self.maglev.is_empty()
    }

    /// The Maglev table a service value points at, if it is whole.
    fn table(&self, v: &ServiceValue) -> Option<Vec<u16>> {
        let m = self.config.maglev_size as usize;
        let mut out = Vec::with_capacity(m);
        for chunk in 0..m.div_ceil(MAGLEV_CHUNK) {
            let key = MaglevKey {
                id: v.id,
                rev: v.rev,
                _pad: 0,
                chunk: chunk as u16,
            };
            let c = self.maglev.get(&key)?;
            let n = MAGLEV_CHUNK.min(m - chunk * MAGLEV_CHUNK);
            out.extend_from_slice(&c.slots[..n]);
        }
        Some(out)
    }
}

/// In-memory maps with a write log, optional capacities (a full hash map
/// refuses new keys but still takes updates of existing ones, as the
/// kernel's does) and injectable delete failures.
#[derive(Debug, Clone, Default)]
struct FakeMaps {
    state: State,
    log: Vec<Op>,
    service_cap: Option<usize>,
    backend_cap: Option<usize>,
    /// How many of the next service deletes fail.
    fail_service_dels: usize,
}

impl FakeMaps {
    fn record(&mut self, op: Op) {
        self.state.apply(&op);
        self.log.push(op);
    }

    fn full(op: &'static str) -> MapOpError {
        MapOpError {
            op,
            message: "map is full (E2BIG)".into(),
        }
    }
}

impl LbMaps for FakeMaps {
    fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>, MapOpError> {
        Ok(self.state.services.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn backend_keys(&self) -> Result<Vec<BackendKey>, MapOpError> {
        Ok(self.state.backends.keys().copied().collect())
    }

    fn set_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), MapOpError> {
        if !self.state.services.contains_key(key)
            && self
                .service_cap
                .is_some_and(|cap| self.state.services.len() >= cap)
        {
            return Err(Self::full("writing a service entry"));
        }
        self.record(Op::SetService(*key, *value));
        Ok(())
    }

    fn del_service(&mut self, key: &ServiceKey) -> Result<(), MapOpError> {
        if self.fail_service_dels > 0 {
            self.fail_service_dels -= 1;
            return Err(MapOpError {
                op: "deleting a service entry",
                message: "injected failure".into(),
            });
        }
        self.record(Op::DelService(*key));
        Ok(())
    }

    fn set_backend(&mut self, key: &BackendKey, value: &Backend) -> Result<(), MapOpError> {
        if !self.state.backends.contains_key(key)
            && self
                .backend_cap
                .is_some_and(|cap| self.state.backends.len() >= cap)
        {
            return Err(Self::full("writing a backend entry"));
        }
        self.record(Op::SetBackend(*key, *value));
        Ok(())
    }

    fn del_backend(&mut self, key: &BackendKey) -> Result<(), MapOpError> {
        self.record(Op::DelBackend(*key));
        Ok(())
    }

    fn purge_affinity(
        &mut self,
        dead: &mut dyn FnMut(&AffinityKey, &AffinityValue) -> bool,
    ) -> Result<usize, MapOpError> {
        let doomed: Vec<AffinityKey> = self
            .state
            .affinity
            .iter()
            .filter(|(k, v)| dead(k, v))
            .map(|(k, _)| *k)
            .collect();
        let n = doomed.len();
        self.record(Op::PurgeAffinity(doomed));
        Ok(n)
    }

    fn set_lb_config(&mut self, config: &LbConfig) -> Result<(), MapOpError> {
        self.state.config = *config;
        Ok(())
    }

    fn maglev_keys(&self) -> Result<Vec<MaglevKey>, MapOpError> {
        Ok(self.state.maglev.keys().copied().collect())
    }

    fn set_maglev(&mut self, key: &MaglevKey, chunk: &MaglevChunk) -> Result<(), MapOpError> {
        self.record(Op::SetMaglev(*key, Box::new(*chunk)));
        Ok(())
    }

    fn del_maglev(&mut self, key: &MaglevKey) -> Result<(), MapOpError> {
        self.record(Op::DelMaglev(*key));
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Stored forms, worked out independently of the code under test
// ---------------------------------------------------------------------------

type Sk = ([u32; 4], u16, u8, u8);
type Bt = ([u32; 4], u16, u8);

fn sk(k: &ServiceKey) -> Sk {
    (k.addr, k.port, k.proto, k.scope)
}

fn key_of(s: &Sk) -> ServiceKey {
    ServiceKey {
        addr: s.0,
        port: s.1,
        proto: s.2,
        scope: s.3,
    }
}

fn bt(b: &Backend) -> Bt {
    (b.addr, b.port, b.flags)
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an IP address")
}

/// The stored form of an address: 16 bytes in network order, IPv4 mapped.
fn stored(addr: IpAddr) -> [u32; 4] {
    let o = match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    std::array::from_fn(|i| {
        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
    })
}

fn proto(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

fn skey(addr: &str, port: u16, protocol: Protocol, scope: u8) -> ServiceKey {
    ServiceKey {
        addr: stored(ip(addr)),
        port: port.to_be(),
        proto: proto(protocol),
        scope,
    }
}

/// A remote (not node-local) backend as stored.
fn sbackend(addr: &str, port: u16) -> Backend {
    Backend {
        addr: stored(ip(addr)),
        port: port.to_be(),
        ..Backend::default()
    }
}

fn local_flag(local: bool) -> u8 {
    if local { BACKEND_FLAG_LOCAL } else { 0 }
}

fn bkey(id: u32, rev: u8, slot: u16) -> BackendKey {
    BackendKey {
        id,
        slot,
        rev,
        _pad: 0,
    }
}

// ---------------------------------------------------------------------------
// Building entries
// ---------------------------------------------------------------------------

fn name(ns: &str, n: &str) -> ServiceName {
    (ns.into(), n.into())
}

fn port(svc: &ServiceName, port_name: &str, protocol: Protocol) -> ServicePortEntries {
    ServicePortEntries {
        id: ServicePortName {
            namespace: svc.0.clone(),
            name: svc.1.clone(),
            port: port_name.into(),
        },
        protocol,
        frontends: Vec::new(),
        cluster_backends: Vec::new(),
        external_backends: Vec::new(),
        external_drop: false,
        affinity_timeout: None,
        source_ranges: Vec::new(),
        lb_algorithm: None,
    }
}

fn mb(list: &[(&str, u16)]) -> Vec<MBackend> {
    let mut v: Vec<MBackend> = list
        .iter()
        .map(|(a, p)| MBackend {
            addr: ip(a),
            port: *p,
            local: false,
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

trait Build: Sized {
    fn fe(self, addr: &str, port: u16, kind: FrontendKind) -> Self;
    fn cluster(self, backends: &[(&str, u16)]) -> Self;
    fn external(self, backends: &[(&str, u16)]) -> Self;
    fn affinity(self, timeout: Option<u32>) -> Self;
}

impl Build for ServicePortEntries {
    fn fe(mut self, addr: &str, port: u16, kind: FrontendKind) -> Self {
        self.frontends.push(Frontend {
            addr: ip(addr),
            port,
            protocol: self.protocol,
            kind,
        });
        self
    }

    fn cluster(mut self, backends: &[(&str, u16)]) -> Self {
        self.cluster_backends = mb(backends);
        self
    }

    fn external(mut self, backends: &[(&str, u16)]) -> Self {
        self.external_backends = mb(backends);
        self
    }

    fn affinity(mut self, timeout: Option<u32>) -> Self {
        self.affinity_timeout = timeout;
        self
    }
}

// ---------------------------------------------------------------------------
// The oracle: what each frontend should resolve to
// ---------------------------------------------------------------------------

/// Which backend group a frontend key belongs to: service, port name,
/// IPv6, external-policy group.
type Label = (ServiceName, String, bool, bool);
/// Per frontend key: the backends it resolves to (sorted), flags, timeout.
type View = BTreeMap<Sk, (Vec<Bt>, u8, u32)>;

fn expected_of(svc: &ServiceName, entries: &[ServicePortEntries]) -> (View, BTreeMap<Sk, Label>) {
    let mut view = View::new();
    let mut labels = BTreeMap::new();
    for e in entries {
        let (flags, timeout) = match e.affinity_timeout {
            Some(t) => (SVC_FLAG_AFFINITY, t),
            None => (0, 0),
        };
        for f in &e.frontends {
            let v6 = f.addr.is_ipv6();
            let pick = |list: &[MBackend]| {
                let mut v: Vec<Bt> = list
                    .iter()
                    .filter(|b| b.addr.is_ipv6() == v6)
                    .map(|b| (stored(b.addr), b.port.to_be(), local_flag(b.local)))
                    .collect();
                v.sort();
                v
            };
            let key = |scope: u8| (stored(f.addr), f.port.to_be(), proto(f.protocol), scope);
            view.insert(
                key(SCOPE_INTERNAL),
                (pick(&e.cluster_backends), flags, timeout),
            );
            labels.insert(
                key(SCOPE_INTERNAL),
                (svc.clone(), e.id.port.clone(), v6, false),
            );
            let external = f.kind != ClusterIp;
            let backends = if external {
                pick(&e.external_backends)
            } else {
                pick(&e.cluster_backends)
            };
            view.insert(key(SCOPE_EXTERNAL), (backends, flags, timeout));
            labels.insert(
                key(SCOPE_EXTERNAL),
                (svc.clone(), e.id.port.clone(), v6, external),
            );
        }
    }
    (view, labels)
}

fn expected(want: &BTreeMap<ServiceName, Vec<ServicePortEntries>>) -> (View, BTreeMap<Sk, Label>) {
    let mut view = View::new();
    let mut labels = BTreeMap::new();
    for (svc, entries) in want {
        let (v, l) = expected_of(svc, entries);
        view.extend(v);
        labels.extend(l);
    }
    (view, labels)
}

/// What each frontend in the maps resolves to (panics on a missing slot).
/// The Maglev flag is left out: whether a group has a table is the Maglev
/// tests' business, and the checks hold every flagged group's table whole.
fn actual(st: &State) -> View {
    st.services
        .iter()
        .map(|(k, v)| {
            let mut b: Vec<Bt> = slots(st, v).iter().map(bt).collect();
            b.sort();
            (sk(k), (b, v.flags & !SVC_FLAG_MAGLEV, v.affinity_timeout))
        })
        .collect()
}

/// The live slots a service value points at, in slot order.
fn slots(st: &State, v: &ServiceValue) -> Vec<Backend> {
    (0..v.count)
        .map(|slot| {
            *st.backends
                .get(&bkey(v.id, v.rev, slot))
                .unwrap_or_else(|| panic!("{v:?}: slot {slot} missing"))
        })
        .collect()
}

/// The first service entry whose live slots (and, for a Maglev group, its
/// table, naming only those slots) are not all there.
fn dangling(st: &State) -> Option<String> {
    let mut entries: Vec<_> = st.services.iter().collect();
    entries.sort_by_key(|(k, _)| sk(k));
    for (k, v) in entries {
        for slot in 0..v.count {
            if !st.backends.contains_key(&bkey(v.id, v.rev, slot)) {
                return Some(format!(
                    "frontend {k:?} points at {v:?} but slot {slot} of revision {} is missing",
                    v.rev
                ));
            }
        }
        if v.flags & SVC_FLAG_MAGLEV != 0 {
            match st.table(v) {
                None => {
                    return Some(format!(
                        "frontend {k:?} points at {v:?} but its Maglev table is not whole"
                    ));
                }
                Some(t) if t.iter().any(|s| *s >= v.count) => {
                    return Some(format!(
                        "frontend {k:?} points at {v:?} but its Maglev table names a slot >= {}",
                        v.count
                    ));
                }
                Some(_) => {}
            }
        }
    }
    None
}

/// Checks a state after a successful sync: every frontend resolves, the
/// frontends of one id agree, ids and groups correspond one to one, no
/// backend slot or affinity entry belongs to no group, the live revision
/// holds no slot above its count, and affinity entries name live backends
/// of groups with affinity on.
fn check_structure(st: &State, labels: &BTreeMap<Sk, Label>) {
    if let Some(d) = dangling(st) {
        panic!("{d}");
    }
    let mut by_id: HashMap<u32, ServiceValue> = HashMap::new();
    let mut id_of: BTreeMap<&Label, u32> = BTreeMap::new();
    let mut label_of: HashMap<u32, &Label> = HashMap::new();
    for (k, v) in &st.services {
        assert!(v.rev <= 1, "{k:?}: revision {} out of range", v.rev);
        if let Some(prev) = by_id.insert(v.id, *v) {
            assert_eq!(prev, *v, "frontends of group {} disagree ({k:?})", v.id);
        }
        let label = labels
            .get(&sk(k))
            .unwrap_or_else(|| panic!("frontend {k:?} in the maps that no Service wants"));
        if let Some(id) = id_of.insert(label, v.id) {
            assert_eq!(
                id, v.id,
                "group {label:?} spread over ids {id} and {}",
                v.id
            );
        }
        if let Some(l) = label_of.insert(v.id, label) {
            assert_eq!(l, label, "id {} shared by two groups", v.id);
        }
    }
    for k in st.backends.keys() {
        let v = by_id
            .get(&k.id)
            .unwrap_or_else(|| panic!("backend slot {k:?} of no group (leaked)"));
        assert!(k.rev <= 1, "{k:?}: revision out of range");
        if k.rev == v.rev {
            assert!(
                k.slot < v.count,
                "stale slot {k:?} above the live count {}",
                v.count
            );
        }
    }
    for k in st.maglev.keys() {
        let v = by_id
            .get(&k.id)
            .unwrap_or_else(|| panic!("Maglev chunk {k:?} of no group (leaked)"));
        assert!(
            v.flags & SVC_FLAG_MAGLEV != 0 && v.rev == k.rev,
            "Maglev chunk {k:?} is not the live table of {v:?} (leaked)"
        );
        assert!(
            usize::from(k.chunk) < (st.config.maglev_size as usize).div_ceil(MAGLEV_CHUNK),
            "Maglev chunk {k:?} beyond the table size {}",
            st.config.maglev_size
        );
    }
    for (k, a) in &st.affinity {
        let v = by_id
            .get(&k.id)
            .unwrap_or_else(|| panic!("affinity entry {k:?} of no group (leaked)"));
        assert!(
            v.flags & SVC_FLAG_AFFINITY != 0,
            "affinity entry {k:?} for group {} without affinity",
            k.id
        );
        assert!(
            slots(st, v).contains(&a.backend),
            "affinity entry {k:?} names {:?}, not a live backend of group {}",
            a.backend,
            k.id
        );
    }
}

// ---------------------------------------------------------------------------
// Replaying the log
// ---------------------------------------------------------------------------

/// What to check after every operation while replaying.
#[derive(Debug, Default)]
struct Checks {
    /// No slot a frontend currently points at is overwritten with a
    /// different backend (a lookup sees the old set or the new, never a mix).
    no_live_overwrite: bool,
    /// Frontends that must be in the map at every moment.
    stay: HashSet<ServiceKey>,
}

/// Replays `ops` from `start`; after each one every service entry must
/// resolve to existing slots (and `checks` hold).
fn replay(start: &State, ops: &[Op], checks: &Checks) -> Result<State, String> {
    let problem = |st: &State| -> Option<String> {
        if let Some(d) = dangling(st) {
            return Some(d);
        }
        let mut gone: Vec<_> = checks
            .stay
            .iter()
            .filter(|k| !st.services.contains_key(k))
            .collect();
        gone.sort_by_key(|k| sk(k));
        gone.first()
            .map(|k| format!("frontend {k:?} is absent from the service map"))
    };
    let mut st = start.clone();
    if let Some(p) = problem(&st) {
        return Err(format!("before the first operation: {p}"));
    }
    for (i, op) in ops.iter().enumerate() {
        if checks.no_live_overwrite
            && let Op::SetBackend(k, b) = op
            && st.backends.get(k).is_some_and(|old| old != b)
            && let Some((f, v)) = st
                .services
                .iter()
                .find(|(_, v)| v.id == k.id && v.rev == k.rev && k.slot < v.count)
        {
            return Err(format!(
                "operation {i} of {} ({op:?}) overwrites a slot frontend {f:?} ({v:?}) is using",
                ops.len()
            ));
        }
        st.apply(op);
        if let Some(p) = problem(&st) {
            return Err(format!(
                "after operation {i} of {} ({op:?}): {p}",
                ops.len()
            ));
        }
    }
    Ok(st)
}

/// A programmer over fake maps, with what each Service was last applied
/// with successfully (the oracle's input).
struct Harness {
    p: Programmer<FakeMaps>,
    want: BTreeMap<ServiceName, Vec<ServicePortEntries>>,
    lb: LbSettings,
}

impl Harness {
    fn new() -> Self {
        Self::over(FakeMaps::default())
    }

    fn over(maps: FakeMaps) -> Self {
        Self::with_lb(maps, LbSettings::default())
    }

    fn with_lb(maps: FakeMaps, lb: LbSettings) -> Self {
        Self {
            p: Programmer::new(maps, MAX_ID, lb).expect("a programmer over the maps"),
            want: BTreeMap::new(),
            lb,
        }
    }

    /// A programmer started over a copy of these maps (an agent restart).
    fn restarted(&self) -> Self {
        self.restarted_with(self.lb)
    }

    fn restarted_with(&self, lb: LbSettings) -> Self {
        let mut maps = self.p.maps().clone();
        maps.log.clear();
        Self::with_lb(maps, lb)
    }

    fn maps_mut(&mut self) -> &mut FakeMaps {
        self.p.maps_mut()
    }

    fn state(&self) -> &State {
        &self.p.maps().state
    }

    fn log_len(&self) -> usize {
        self.p.maps().log.len()
    }

    fn ops_since(&self, start: usize) -> Vec<Op> {
        self.p.maps().log[start..].to_vec()
    }

    fn value(&self, key: &ServiceKey) -> ServiceValue {
        *self
            .state()
            .services
            .get(key)
            .unwrap_or_else(|| panic!("no service entry for {key:?}"))
    }

    /// Runs `f` and replays what it wrote from the state before it.
    fn replayed<R>(
        &mut self,
        checks: &Checks,
        f: impl FnOnce(&mut Programmer<FakeMaps>) -> R,
    ) -> R {
        let before = self.state().clone();
        let start = self.log_len();
        let r = f(&mut self.p);
        let ops = self.ops_since(start);
        match replay(&before, &ops, checks) {
            Ok(end) => assert_eq!(&end, self.state(), "the log does not add up to the maps"),
            Err(e) => panic!("{e}"),
        }
        r
    }

    fn record(&mut self, svc: &ServiceName, entries: &[ServicePortEntries]) {
        if entries.is_empty() {
            self.want.remove(svc);
        } else {
            self.want.insert(svc.clone(), entries.to_vec());
        }
    }

    fn apply_with(
        &mut self,
        svc: &ServiceName,
        entries: &[ServicePortEntries],
        checks: &Checks,
    ) -> Result<ApplyStats, ProgramError> {
        let r = self.replayed(checks, |p| p.apply(svc, entries));
        if r.is_ok() {
            self.record(svc, entries);
        }
        r
    }

    /// Applies with the replay's resolvability check only.
    fn apply(
        &mut self,
        svc: &ServiceName,
        entries: &[ServicePortEntries],
    ) -> Result<ApplyStats, ProgramError> {
        self.apply_with(svc, entries, &Checks::default())
    }

    /// Applies, expecting success, and checks everything: no window (no
    /// dangling entry, no live slot overwritten, no frontend that stays in
    /// its group ever absent), only this Service's keys written, others'
    /// entries identical, and the end state matching the oracle.
    fn apply_ok(&mut self, svc: &ServiceName, entries: &[ServicePortEntries]) -> ApplyStats {
        let before = self.state().clone();
        let start = self.log_len();
        let old = self.want.get(svc).cloned().unwrap_or_default();
        let (_, old_labels) = expected_of(svc, &old);
        let (_, new_labels) = expected_of(svc, entries);
        let stay = old_labels
            .iter()
            .filter(|(k, l)| {
                new_labels.get(*k) == Some(l) && before.services.contains_key(&key_of(k))
            })
            .map(|(k, _)| key_of(k))
            .collect();
        let checks = Checks {
            no_live_overwrite: true,
            stay,
        };
        let stats = self
            .apply_with(svc, entries, &checks)
            .unwrap_or_else(|e| panic!("applying {svc:?}: {e}"));
        let after = self.state().clone();
        let own_keys: HashSet<Sk> = old_labels
            .keys()
            .chain(new_labels.keys())
            .copied()
            .collect();
        let own_ids: HashSet<u32> = [&before, &after]
            .iter()
            .flat_map(|st| {
                st.services
                    .iter()
                    .filter(|(k, _)| own_keys.contains(&sk(k)))
                    .map(|(_, v)| v.id)
            })
            .collect();
        for op in self.ops_since(start) {
            match &op {
                Op::SetService(k, _) | Op::DelService(k) => assert!(
                    own_keys.contains(&sk(k)),
                    "{svc:?} wrote another Service's frontend: {op:?}"
                ),
                Op::SetBackend(k, _) | Op::DelBackend(k) => assert!(
                    own_ids.contains(&k.id),
                    "{svc:?} wrote another group's slot: {op:?}"
                ),
                Op::PurgeAffinity(keys) => {
                    for k in keys {
                        assert!(
                            own_ids.contains(&k.id),
                            "{svc:?} purged another group's affinity: {k:?}"
                        );
                    }
                }
                Op::SetMaglev(k, _) | Op::DelMaglev(k) => assert!(
                    own_ids.contains(&k.id),
                    "{svc:?} wrote another group's Maglev table: {op:?}"
                ),
            }
        }
        for (k, v) in &before.services {
            if !own_keys.contains(&sk(k)) {
                assert_eq!(after.services.get(k), Some(v), "{k:?} changed");
            }
        }
        for (k, v) in &before.backends {
            if !own_ids.contains(&k.id) {
                assert_eq!(after.backends.get(k), Some(v), "{k:?} changed");
            }
        }
        for (k, v) in &before.affinity {
            if !own_ids.contains(&k.id) {
                assert_eq!(after.affinity.get(k), Some(v), "{k:?} changed");
            }
        }
        self.check();
        stats
    }

    /// The maps match the oracle for every Service applied.
    fn check(&self) {
        let (view, labels) = expected(&self.want);
        assert_eq!(actual(self.state()), view, "maps differ from the oracle");
        check_structure(self.state(), &labels);
        assert_eq!(self.p.frontends(), view.len(), "frontends()");
        let groups: BTreeSet<&Label> = labels.values().collect();
        assert_eq!(self.p.groups(), groups.len(), "groups()");
    }

    fn ids_of(&self, svc: &ServiceName) -> BTreeSet<u32> {
        let (_, labels) = expected_of(svc, self.want.get(svc).map_or(&[][..], |v| v));
        labels
            .keys()
            .filter_map(|k| self.state().services.get(&key_of(k)))
            .map(|v| v.id)
            .collect()
    }

    fn seed_affinity(&mut self, id: u32, cookie: u64, backend: Backend) -> AffinityKey {
        let k = AffinityKey {
            netns_cookie: cookie,
            client: [0; 4],
            id,
            _pad: 0,
        };
        self.maps_mut().state.affinity.insert(
            k,
            AffinityValue {
                last_used_ns: 1,
                backend,
                _pad: 0,
            },
        );
        k
    }
}

fn keys_of(svc: &ServiceName, entries: &[ServicePortEntries]) -> Vec<ServiceKey> {
    expected_of(svc, entries).1.keys().map(key_of).collect()
}

// ---------------------------------------------------------------------------
// Stored forms
// ---------------------------------------------------------------------------

#[test]
fn addresses_ports_and_protocols_are_stored_in_network_form() {
    for s in [
        "10.96.0.1",
        "0.0.0.0",
        "255.255.255.255",
        "fd00::1",
        "2001:db8::abcd:1",
        "::1",
    ] {
        let a = ip(s);
        assert_eq!(addr_words(a), stored(a), "{s}");
        assert_eq!(words_addr(&addr_words(a)), a, "{s}");
    }
    let v4 = addr_words(ip("10.96.0.1"));
    assert!(is_v4(&v4));
    let bytes: Vec<u8> = v4.iter().flat_map(|w| w.to_ne_bytes()).collect();
    assert_eq!(
        bytes,
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 96, 0, 1]
    );
    let v6 = addr_words(ip("fd00::1"));
    assert!(!is_v4(&v6));
    let bytes: Vec<u8> = v6.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let mut want = [0u8; 16];
    want[0] = 0xfd;
    want[15] = 1;
    assert_eq!(bytes, want);
    // An IPv4-mapped IPv6 address is the IPv4 address.
    assert_eq!(
        words_addr(&addr_words(ip("::ffff:10.0.0.1"))),
        ip("10.0.0.1")
    );
    assert_eq!(proto_number(Protocol::Tcp), 6);
    assert_eq!(proto_number(Protocol::Udp), 17);
    assert_eq!(proto_number(Protocol::Sctp), 132);
}

// ---------------------------------------------------------------------------
// 1. A new ClusterIP service
// ---------------------------------------------------------------------------

#[test]
fn new_cluster_ip_service_gets_a_group_per_port_and_family() {
    let mut h = Harness::new();
    let web = name("default", "web");
    let entries = vec![
        port(&web, "http", Protocol::Tcp)
            .fe("10.96.0.10", 80, ClusterIp)
            .fe("fd00::10", 80, ClusterIp)
            .cluster(&[("10.0.0.1", 8080), ("10.0.0.2", 8080), ("fd10::1", 8080)]),
        port(&web, "dns", Protocol::Udp)
            .fe("10.96.0.10", 53, ClusterIp)
            .fe("fd00::10", 53, ClusterIp)
            .cluster(&[("10.0.0.1", 5353), ("fd10::1", 5353), ("fd10::2", 5353)]),
        port(&web, "assoc", Protocol::Sctp)
            .fe("10.96.0.10", 9, ClusterIp)
            .cluster(&[("10.0.0.3", 9999), ("fd10::3", 9999)]),
    ];
    let stats = h.apply_ok(&web, &entries);
    assert_eq!(
        stats,
        ApplyStats {
            groups_written: 5,
            frontends_written: 10,
            frontends_removed: 0,
            affinity_purged: 0,
            ..ApplyStats::default()
        }
    );
    assert_eq!(h.p.groups(), 5);
    assert_eq!(h.p.frontends(), 10);
    assert_eq!(h.state().services.len(), 10);

    let st = h.state().clone();
    let check = |addr: &str, p: u16, protocol: Protocol, want: &[Backend]| -> u32 {
        let int = h.value(&skey(addr, p, protocol, SCOPE_INTERNAL));
        let ext = h.value(&skey(addr, p, protocol, SCOPE_EXTERNAL));
        assert_eq!(int, ext, "{addr}:{p}: both scopes share the cluster group");
        assert_eq!(usize::from(int.count), want.len(), "{addr}:{p} count");
        assert_eq!((int.flags, int.affinity_timeout), (0, 0));
        assert_eq!(slots(&st, &int), want, "{addr}:{p} backends");
        int.id
    };
    let ids = [
        check(
            "10.96.0.10",
            80,
            Protocol::Tcp,
            &[sbackend("10.0.0.1", 8080), sbackend("10.0.0.2", 8080)],
        ),
        check("fd00::10", 80, Protocol::Tcp, &[sbackend("fd10::1", 8080)]),
        check(
            "10.96.0.10",
            53,
            Protocol::Udp,
            &[sbackend("10.0.0.1", 5353)],
        ),
        check(
            "fd00::10",
            53,
            Protocol::Udp,
            &[sbackend("fd10::1", 5353), sbackend("fd10::2", 5353)],
        ),
        check(
            "10.96.0.10",
            9,
            Protocol::Sctp,
            &[sbackend("10.0.0.3", 9999)],
        ),
    ];
    assert_eq!(
        ids.iter().collect::<BTreeSet<_>>().len(),
        5,
        "distinct ids: {ids:?}"
    );
    assert!(ids.iter().all(|id| (1..=MAX_ID).contains(id)), "{ids:?}");

    // Raw forms: ports in network order, protocol numbers, v4-mapped
    // addresses only paired with v4 backends.
    for (k, v) in &st.services {
        let port = u16::from_be(k.port);
        let want_proto = match port {
            80 => 6,
            53 => 17,
            9 => 132,
            other => panic!("unexpected port {other}"),
        };
        assert_eq!(k.port.to_ne_bytes(), port.to_be_bytes());
        assert_eq!(k.proto, want_proto, "{k:?}");
        assert!(k.scope == SCOPE_INTERNAL || k.scope == SCOPE_EXTERNAL);
        for b in slots(&st, v) {
            assert_eq!(is_v4(&b.addr), is_v4(&k.addr), "{k:?} reaches {b:?}");
            assert!([8080u16, 5353, 9999].contains(&u16::from_be(b.port)));
            assert_eq!(b.flags, 0, "no backend is node-local");
        }
    }
    // The live revision's slots and nothing else: 2 + 1 + 1 + 2 + 1.
    assert_eq!(st.backends.len(), 7);
}

#[test]
fn a_port_without_backends_programs_count_zero() {
    let mut h = Harness::new();
    let web = name("default", "web");
    let entries = vec![
        port(&web, "http", Protocol::Tcp)
            .fe("10.96.0.10", 80, ClusterIp)
            .fe("fd00::10", 80, ClusterIp)
            // v4 backends only: the v6 frontend rejects.
            .cluster(&[("10.0.0.1", 8080)]),
    ];
    h.apply_ok(&web, &entries);
    let v6 = h.value(&skey("fd00::10", 80, Protocol::Tcp, SCOPE_INTERNAL));
    assert_eq!(v6.count, 0);
    assert!(h.state().backends.keys().all(|k| k.id != v6.id));
    let v4 = h.value(&skey("10.96.0.10", 80, Protocol::Tcp, SCOPE_INTERNAL));
    assert_eq!(v4.count, 1);
}

#[test]
fn node_local_backends_are_flagged_and_a_flag_change_is_a_new_set() {
    let mut h = Harness::new();
    let web = name("default", "web");
    let entries = |local: bool| {
        let mut e = port(&web, "http", Protocol::Tcp)
            .fe("10.96.0.10", 80, ClusterIp)
            .cluster(&[("10.0.0.1", 80), ("10.0.0.2", 80)]);
        e.cluster_backends[1].local = local;
        vec![e]
    };
    let key = skey("10.96.0.10", 80, Protocol::Tcp, SCOPE_INTERNAL);
    h.apply_ok(&web, &entries(true));
    let v = h.value(&key);
    let flags: Vec<u8> = slots(h.state(), &v).iter().map(|b| b.flags).collect();
    assert_eq!(flags, vec![0, BACKEND_FLAG_LOCAL]);
    let stats = h.apply_ok(&web, &entries(false));
    assert_eq!(stats.groups_written, 1);
    let now = h.value(&key);
    assert_eq!(now.rev, v.rev ^ 1);
    assert!(slots(h.state(), &now).iter().all(|b| b.flags == 0));
}

// ---------------------------------------------------------------------------
// 2. No window
// ---------------------------------------------------------------------------

#[test]
fn changed_backends_are_written_before_any_frontend_points_at_them() {
    let mut h = Harness::new();
    let web = name("default", "web");
    let entries = |backends: &[(&str, u16)]| {
        vec![
            port(&web, "http", Protocol::Tcp)
                .fe("10.96.0.10", 80, ClusterIp)
                .fe("192.0.2.10", 80, ExternalIp)
                .cluster(backends)
                .external(backends),
        ]
    };
    let int = skey("10.96.0.10", 80, Protocol::Tcp, SCOPE_INTERNAL);
    h.apply_ok(&web, &entries(&[("10.0.0.1", 80), ("10.0.0.2", 80)]));
    let v0 = h.value(&int);

    for (step, backends) in [
        &[("10.0.0.1", 80), ("10.0.0.3", 80), ("10.0.0.4", 80)][..],
        &[("10.0.0.4", 80)][..],
        &[][..],
        &[("10.0.0.5", 80), ("10.0.0.6", 80)][..],
    ]
    .into_iter()
    .enumerate()
    {
        let prev = h.value(&int);
        let start = h.log_len();
        let stats = h.apply_ok(&web, &entries(backends));
        let ops = h.ops_since(start);
        let now = h.value(&int);
        assert_eq!(now.id, v0.id, "step {step}: the group keeps its id");
        assert_eq!(
            now.rev,
            prev.rev ^ 1,
            "step {step}: a change flips the revision"
        );
        assert_eq!(usize::from(now.count), backends.len(), "step {step}");
        assert_eq!(
            stats.groups_written, 2,
            "step {step}: internal and external"
        );
        // Three keys in the cluster group, one in the external group.
        assert_eq!(stats.frontends_written, 4, "step {step}");
        let set_services: Vec<usize> = ops
            .iter()
            .enumerate()
            .filter(|(_, op)| matches!(op, Op::SetService(..)))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(
            set_services.len(),
            4,
            "step {step}: every frontend repointed"
        );
        // Each group's new slots come before any of its frontends moves.
        for (i, op) in ops.iter().enumerate() {
            let Op::SetService(k, v) = op else { continue };
            for slot in 0..v.count {
                let written = ops[..i]
                    .iter()
                    .any(|o| matches!(o, Op::SetBackend(b, _) if *b == bkey(v.id, v.rev, slot)));
                assert!(
                    written,
                    "step {step}: {k:?} pointed at {v:?} before slot {slot} was written"
                );
            }
            // The backends of the new revision are the ones wanted.
            let want: Vec<Backend> = mb(backends)
                .iter()
                .map(|b| sbackend(&b.addr.to_string(), b.port))
                .collect();
            assert_eq!(slots(h.state(), v), want, "step {step}");
        }
        // The old revision is never written or deleted during a change.
        for op in &ops {
            if let Op::SetBackend(k, _) | Op::DelBackend(k) = op {
                assert_ne!(
                    k.rev, prev.rev,
                    "step {step}: touched the live revision: {op:?}"
                );
            }
        }
        // A group's stale slots go only after all its frontends moved.
        for (i, op) in ops.iter().enumerate() {
            if let Op::DelBackend(k) = op {
                let last_set = ops
                    .iter()
                    .rposition(|o| matches!(o, Op::SetService(_, v) if v.id == k.id))
                    .expect("the group's frontends were written");
                assert!(
                    i > last_set,
                    "step {step}: deleted a slot before repointing: {op:?}"
                );
            }
        }
    }
    // The third step emptied both groups, the fourth wrote two slots into
    // the revision that once held three: its slot 2 must be gone.
    let now = h.value(&int);
    assert!(!h.state().backends.contains_key(&bkey(now.id, now.rev, 2)));
}

/// A deterministic pseudo-random sequence (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn subset<T: Ord + Clone>(&mut self, pool: &[T]) -> BTreeSet<T> {
        match self.below(8) {
            0 => BTreeSet::new(),
            1 => pool.iter().cloned().collect(),
            _ => pool.iter().filter(|_| self.chance(50)).cloned().collect(),
        }
    }
}

#[derive(Debug, Clone)]
struct PortSpec {
    number: u16,
    protocol: Protocol,
    cluster: BTreeSet<MBackend>,
    external: BTreeSet<MBackend>,
}

/// A Service as the random sequences change it.
#[derive(Debug, Clone)]
struct Spec {
    name: ServiceName,
    index: u8,
    addrs: BTreeSet<(IpAddr, FrontendKind)>,
    ports: BTreeMap<String, PortSpec>,
    affinity: Option<u32>,
    present: bool,
}

const PORTS: [(&str, u16, Protocol, u16); 4] = [
    ("http", 80, Protocol::Tcp, 8080),
    ("alt", 8080, Protocol::Tcp, 8443),
    ("dns", 53, Protocol::Udp, 5353),
    ("assoc", 9, Protocol::Sctp, 9999),
];

impl Spec {
    fn addr_pool(i: u8) -> Vec<(IpAddr, FrontendKind)> {
        vec![
            (ip(&format!("10.96.0.{i}")), ClusterIp),
            (ip(&format!("fd00::{i}")), ClusterIp),
            (ip(&format!("192.0.2.{i}")), ExternalIp),
            (ip(&format!("2001:db8::{i}")), ExternalIp),
            (ip(&format!("198.51.100.{i}")), LoadBalancer),
        ]
    }

    fn backend_pool(i: u8, target: u16) -> Vec<MBackend> {
        let mut v: Vec<MBackend> = (1..=6)
            .map(|j| ip(&format!("10.0.{i}.{j}")))
            .chain((1..=3).map(|j| ip(&format!("fd10::{i}:{j}"))))
            // Shared by every Service.
            .chain([ip("10.0.99.1"), ip("fd10::99")])
            .enumerate()
            // Some run on this node.
            .map(|(j, addr)| MBackend {
                addr,
                port: target,
                local: j % 3 == 0,
            })
            .collect();
        v.sort();
        v
    }

    fn random_port(rng: &mut Rng, i: u8, which: usize) -> PortSpec {
        let (_, number, protocol, target) = PORTS[which];
        let pool: Vec<MBackend> = Self::backend_pool(i, target);
        let cluster = rng.subset(&pool);
        let external = if rng.chance(50) {
            cluster.clone()
        } else {
            let c: Vec<MBackend> = cluster.iter().copied().collect();
            rng.subset(&c)
        };
        PortSpec {
            number,
            protocol,
            cluster,
            external,
        }
    }

    fn random(rng: &mut Rng, name: ServiceName, index: u8) -> Self {
        let pool = Self::addr_pool(index);
        let mut addrs = rng.subset(&pool);
        if addrs.is_empty() {
            addrs.insert(pool[rng.below(pool.len())]);
        }
        let mut ports = BTreeMap::new();
        for _ in 0..=rng.below(3) {
            let which = rng.below(PORTS.len());
            ports.insert(
                PORTS[which].0.to_string(),
                Self::random_port(rng, index, which),
            );
        }
        Self {
            name,
            index,
            addrs,
            ports,
            affinity: Self::random_affinity(rng),
            present: true,
        }
    }

    fn random_affinity(rng: &mut Rng) -> Option<u32> {
        [None, Some(10), Some(300), Some(10_800)][rng.below(4)]
    }

    fn entries(&self) -> Vec<ServicePortEntries> {
        if !self.present {
            return Vec::new();
        }
        self.ports
            .iter()
            .map(|(pn, ps)| ServicePortEntries {
                id: ServicePortName {
                    namespace: self.name.0.clone(),
                    name: self.name.1.clone(),
                    port: pn.clone(),
                },
                protocol: ps.protocol,
                frontends: self
                    .addrs
                    .iter()
                    .map(|(addr, kind)| Frontend {
                        addr: *addr,
                        port: ps.number,
                        protocol: ps.protocol,
                        kind: *kind,
                    })
                    .collect(),
                cluster_backends: ps.cluster.iter().copied().collect(),
                external_backends: ps.external.iter().copied().collect(),
                external_drop: false,
                affinity_timeout: self.affinity,
                source_ranges: Vec::new(),
                lb_algorithm: None,
            })
            .collect()
    }

    fn mutate(&mut self, rng: &mut Rng) {
        if !self.present {
            *self = Self::random(rng, self.name.clone(), self.index);
            return;
        }
        let i = self.index;
        match rng.below(14) {
            0 => self.present = false,
            1 => {
                self.affinity = match self.affinity {
                    None => Some(300),
                    Some(_) => None,
                }
            }
            2 => self.affinity = self.affinity.map(|t| t + 1),
            3 | 4 => {
                let pool = Self::addr_pool(i);
                let a = pool[rng.below(pool.len())];
                if !self.addrs.remove(&a) {
                    self.addrs.insert(a);
                }
            }
            5 => {
                let which = rng.below(PORTS.len());
                let pn = PORTS[which].0.to_string();
                if self.ports.remove(&pn).is_none() {
                    self.ports.insert(pn, Self::random_port(rng, i, which));
                }
            }
            6..=11 => {
                let Some(pn) = self
                    .ports
                    .keys()
                    .nth(rng.below(self.ports.len().max(1)))
                    .cloned()
                else {
                    return;
                };
                let which = PORTS.iter().position(|p| p.0 == pn).expect("known port");
                let fresh = Self::random_port(rng, i, which);
                let ps = self.ports.get_mut(&pn).expect("port");
                match rng.below(3) {
                    0 => ps.cluster = fresh.cluster,
                    1 => ps.external = fresh.external,
                    _ => *ps = fresh,
                }
            }
            // Unchanged.
            _ => {}
        }
    }
}

/// Seeds affinity entries as the BPF programs would: for a frontend of a
/// group with affinity on, a client stuck to one of its live backends.
fn seed_random_affinity(h: &mut Harness, rng: &mut Rng) {
    let mut candidates: Vec<(Sk, ServiceValue)> = h
        .state()
        .services
        .iter()
        .filter(|(_, v)| v.flags & SVC_FLAG_AFFINITY != 0 && v.count > 0)
        .map(|(k, v)| (sk(k), *v))
        .collect();
    candidates.sort_by_key(|(k, _)| *k);
    for _ in 0..2 {
        if candidates.is_empty() {
            return;
        }
        let (_, v) = candidates[rng.below(candidates.len())];
        let slot = rng.below(usize::from(v.count)) as u16;
        let backend = h.state().backends[&bkey(v.id, v.rev, slot)];
        let cookie = rng.next() % 16;
        h.seed_affinity(v.id, cookie, backend);
    }
}

/// Random sequences of changes to three Services (backends growing,
/// shrinking, emptying and refilling; affinity on, off and its timeout;
/// frontends and ports coming and going; Services removed and re-added;
/// agent restarts), each step checked by [`Harness::apply_ok`].
#[test]
fn random_update_sequences_keep_every_frontend_resolvable() {
    let mut steps = 0usize;
    let mut writes = 0usize;
    let mut restarts = 0usize;
    for seed in 0..24u64 {
        let mut rng = Rng(seed);
        let mut specs: Vec<Spec> = (1..=3u8)
            .map(|i| Spec::random(&mut rng, name("ns", &format!("svc{i}")), i))
            .collect();
        let mut h = Harness::new();
        for s in &specs {
            h.apply_ok(&s.name, &s.entries());
        }
        for _ in 0..120 {
            steps += 1;
            if rng.chance(3) {
                // A restart: some Services went while the agent was down,
                // the rest come back unchanged and keep their ids.
                restarts += 1;
                let old_ids: HashMap<ServiceKey, u32> =
                    h.state().services.iter().map(|(k, v)| (*k, v.id)).collect();
                let mut h2 = h.restarted();
                for s in &mut specs {
                    if rng.chance(25) {
                        s.present = false;
                        continue;
                    }
                    let entries = s.entries();
                    let checks = Checks {
                        no_live_overwrite: true,
                        stay: keys_of(&s.name, &entries).into_iter().collect(),
                    };
                    h2.apply_with(&s.name, &entries, &checks)
                        .unwrap_or_else(|e| panic!("seed {seed}: adopting {:?}: {e}", s.name));
                    for k in keys_of(&s.name, &entries) {
                        assert_eq!(
                            h2.value(&k).id,
                            old_ids[&k],
                            "seed {seed}: {k:?} kept its id"
                        );
                    }
                }
                h2.replayed(&Checks::default(), |p| p.finish_initial_sync())
                    .unwrap_or_else(|e| panic!("seed {seed}: finish: {e}"));
                h2.check();
                h = h2;
                continue;
            }
            let which = rng.below(specs.len());
            specs[which].mutate(&mut rng);
            let s = &specs[which];
            let entries = s.entries();
            let unchanged = h
                .want
                .get(&s.name)
                .map_or(entries.is_empty(), |w| *w == entries);
            let start = h.log_len();
            let stats = h.apply_ok(&s.name, &entries);
            writes += h.log_len() - start;
            if unchanged {
                assert_eq!(h.log_len(), start, "seed {seed}: an unchanged apply wrote");
                assert_eq!(stats, ApplyStats::default());
            }
            seed_random_affinity(&mut h, &mut rng);
        }
        // Emptying everything leaves nothing behind.
        for s in &specs {
            h.apply_ok(&s.name, &[]);
        }
        assert!(h.state().services.is_empty(), "seed {seed}");
        assert!(h.state().backends.is_empty(), "seed {seed}");
        assert!(h.state().affinity.is_empty(), "seed {seed}");
        assert_eq!(h.p.groups(), 0);
    }
    // The sequences did exercise something.
    assert!(
        steps > 2_500 && writes > 10_000 && restarts > 20,
        "{steps} {writes} {restarts}"
    );
}

// ---------------------------------------------------------------------------
// 3. Only the changed Service is touched
// ---------------------------------------------------------------------------

#[test]
fn only_the_changed_services_entries_are_touched() {
    let mut h = Harness::new();
    let web = name("default", "web");
    let db = name("default", "db");
    let web_entries = |backends: &[(&str, u16)], affinity| {
        vec![
            port(&web, "http", Protocol::Tcp)
                .fe("10.96.0.10", 80, ClusterIp)
                .fe("fd00::10", 80, ClusterIp)
                .fe("192.0.2.10", 80, ExternalIp)
                .cluster(backends)
                .external(backends)
                .affinity(affinity),
        ]
    };
    let db_entries = vec![
        port(&db, "pg", Protocol::Tcp)
            .fe("10.96.0.20", 5432, ClusterIp)
            .fe("192.0.2.20", 5432, LoadBalancer)
            // Shares a backend address with web.
            .cluster(&[("10.0.0.1", 5432), ("10.0.0.9", 5432)])
            .external(&[("10.0.0.1", 5432)])
            .affinity(Some(60)),
    ];
    h.apply_ok(
        &web,
        &web_entries(&[("10.0.0.1", 80), ("fd10::1", 80)], None),
    );
    h.apply_ok(&db, &db_entries);
    let db_id = h
        .value(&skey("10.96.0.20", 5432, Protocol::Tcp, SCOPE_INTERNAL))
        .id;
    h.seed_affinity(db_id, 7, sbackend("10.0.0.1", 5432));
    let db_keys = keys_of(&db, &db_entries);
    let db_ids = h.ids_of(&db);
    let snapshot = |st: &State| {
        let services: Vec<_> = db_keys
            .iter()
            .map(|k| (*k, st.services.get(k).copied()))
            .collect();
        let mut backends: Vec<_> = st
            .backends
            .iter()
            .filter(|(k, _)| db_ids.contains(&k.id))
            .map(|(k, v)| ((k.id, k.rev, k.slot), *v))
            .collect();
        backends.sort_by_key(|(k, _)| *k);
        let affinity: Vec<_> = st
            .affinity
            .iter()
            .filter(|(k, _)| db_ids.contains(&k.id))
            .map(|(k, v)| (*k, *v))
            .collect();
        (services, backends, affinity)
    };
    let db_before = snapshot(h.state());
    assert_eq!(db_before.0.iter().filter(|(_, v)| v.is_some()).count(), 4);

    let start = h.log_len();
    for (backends, affinity) in [
        (&[("10.0.0.1", 80), ("10.0.0.2", 80)][..], None),
        (&[("10.0.0.2", 80)][..], Some(30)),
        (&[][..], Some(30)),
        (&[("10.0.0.3", 80), ("fd10::2", 80)][..], None),
    ] {
        h.apply_ok(&web, &web_entries(backends, affinity));
    }
    // web loses its v6 frontend and gains a load balancer.
    let mut changed = web_entries(&[("10.0.0.3", 80)], None);
    changed[0].frontends.retain(|f| f.addr != ip("fd00::10"));
    let changed = vec![changed[0].clone().fe("198.51.100.10", 80, LoadBalancer)];
    h.apply_ok(&web, &changed);
    h.apply_ok(&web, &[]);
    let ops = h.ops_since(start);
    assert!(!ops.is_empty());
    for op in &ops {
        match op {
            Op::SetService(k, _) | Op::DelService(k) => {
                assert!(!db_keys.contains(k), "wrote db's frontend: {op:?}");
            }
            Op::SetBackend(k, _) | Op::DelBackend(k) => {
                assert!(!db_ids.contains(&k.id), "wrote db's slot: {op:?}");
            }
            Op::PurgeAffinity(keys) => {
                assert!(
                    keys.iter().all(|k| !db_ids.contains(&k.id)),
                    "purged db's: {op:?}"
                );
            }
            Op::SetMaglev(k, _) | Op::DelMaglev(k) => {
                assert!(!db_ids.contains(&k.id), "wrote db's table: {op:?}");
            }
        }
    }
    assert_eq!(snapshot(h.state()), db_before, "db's entries changed");
}

// ---------------------------------------------------------------------------
// 4. Unchanged apply
// ---------------------------------------------------------------------------

#[test]
fn an_unchanged_apply_writes_nothing() {
    let mut h = Harness::new();
    let web = name("default", "web");
    let entries = vec![
        port(&web, "http", Protocol::Tcp)
            .fe("10.96.0.10", 80, ClusterIp)
            .fe("fd00::10", 80, ClusterIp)
            .fe("192.0.2.10", 80, ExternalIp)
            .cluster(&[("10.0.0.1", 80), ("fd10::1", 80)])
            .external(&[("10.0.0.1", 80)])
            .affinity(Some(100)),
        port(&web, "dns", Protocol::Udp)
            .fe("10.96.0.10", 53, ClusterIp)
            .cluster(&[("10.0.0.1", 53)]),
    ];
    h.apply_ok(&web, &entries);
    let state = h.state().clone();
    let start = h.log_len();
    assert_eq!(h.apply_ok(&web, &entries), ApplyStats::default());
    // Ports and frontends in another order are the same Service.
    let mut shuffled = entries.clone();
    shuffled.reverse();
    for e in &mut shuffled {
        e.frontends.reverse();
    }
    assert_eq!(h.apply_ok(&web, &shuffled), ApplyStats::default());
    // Removing a Service that was never there.
    assert_eq!(
        h.apply_ok(&name("default", "ghost"), &[]),
        ApplyStats::default()
    );
    assert_eq!(h.ops_since(start), vec![], "no writes at all");
    assert_eq!(h.state(), &state);

    // And again after a change.
    let mut changed = entries.clone();
    changed[1].cluster_backends = mb(&[("10.0.0.2", 53)]);
    h.apply_ok(&web, &changed);
    let start = h.log_len();
    assert_eq!(h.apply_ok(&web, &changed), ApplyStats::default());
    assert_eq!(h.log_len(), start);
}

// ---------------------------------------------------------------------------
// 5. Removing a Service
// ---------------------------------------------------------------------------

#[test]
fn removing_a_service_deletes_its_frontends_slots_and_affinity_and_frees_ids() {
    let mut h = Harness::new();
    let web = name("default", "web");
    let other = name("default", "other");
    let web_entries = |backends: &[(&str, u16)]| {
        vec![
            port(&web, "http", Protocol::Tcp)
                .fe("10.96.0.10", 80, ClusterIp)
                .fe("fd00::10", 80, ClusterIp)
                .fe("192.0.2.10", 80, ExternalIp)
                .cluster(backends)
                .external(backends)
                .affinity(Some(100)),
        ]
    };
    let other_entries = vec![
        port(&other, "http", Protocol::Tcp)
            .fe("10.96.0.30", 80, ClusterIp)
            .cluster(&[("10.0.0.1", 80)])
            .affinity(Some(100)),
    ];
    h.apply_ok(&other, &other_entries);
    // Several changes, so both revisions hold slots.
    h.apply_ok(
        &web,
        &web_entries(&[("10.0.0.1", 80), ("10.0.0.2", 80), ("fd10::1", 80)]),
    );
    h.apply_ok(
        &web,
        &web_entries(&[("10.0.0.3", 80), ("fd10::2", 80), ("fd10::3", 80)]),
    );
    let web_ids = h.ids_of(&web);
    assert_eq!(web_ids.len(), 3, "v4 internal, v6 internal, v4 external");
    for id in &web_ids {
        let revs: BTreeSet<u8> = h
            .state()
            .backends
            .keys()
            .filter(|k| k.id == *id)
            .map(|k| k.rev)
            .collect();
        assert!(!revs.is_empty());
    }
    assert!(
        h.state()
            .backends
            .keys()
            .any(|k| web_ids.contains(&k.id) && k.rev == 0)
            && h.state()
                .backends
                .keys()
                .any(|k| web_ids.contains(&k.id) && k.rev == 1)
    );
    let v4 = h.value(&skey("10.96.0.10", 80, Protocol::Tcp, SCOPE_INTERNAL));
    let ext = h.value(&skey("192.0.2.10", 80, Protocol::Tcp, SCOPE_EXTERNAL));
    h.seed_affinity(v4.id, 1, sbackend("10.0.0.3", 80));
    h.seed_affinity(v4.id, 2, sbackend("10.0.0.3", 80));
    h.seed_affinity(ext.id, 3, sbackend("10.0.0.3", 80));
    let other_id = h
        .value(&skey("10.96.0.30", 80, Protocol::Tcp, SCOPE_INTERNAL))
        .id;
    let kept = h.seed_affinity(other_id, 1, sbackend("10.0.0.1", 80));

    let stats = h.apply_ok(&web, &[]);
    assert_eq!(stats.frontends_removed, 6);
    assert_eq!(stats.affinity_purged, 3);
    assert_eq!(stats.frontends_written, 0);
    let st = h.state();
    for k in keys_of(&web, &web_entries(&[])) {
        assert!(!st.services.contains_key(&k), "{k:?} left behind");
    }
    assert!(
        st.backends.keys().all(|k| !web_ids.contains(&k.id)),
        "slots left behind"
    );
    assert!(
        st.affinity.keys().all(|k| !web_ids.contains(&k.id)),
        "affinity left behind"
    );
    assert!(st.affinity.contains_key(&kept));
    assert_eq!(h.p.groups(), 1);
    assert_eq!(h.p.frontends(), 2);

    // The ids go to the next groups.
    let again = name("default", "again");
    h.apply_ok(
        &again,
        &[port(&again, "http", Protocol::Tcp)
            .fe("10.96.0.40", 80, ClusterIp)
            .fe("fd00::40", 80, ClusterIp)
            .fe("192.0.2.40", 80, LoadBalancer)
            .cluster(&[("10.0.0.5", 80)])
            .external(&[("10.0.0.5", 80)])],
    );
    assert_eq!(h.ids_of(&again), web_ids, "freed ids are reused");
}

// ---------------------------------------------------------------------------
// 6. Affinity
// ---------------------------------------------------------------------------

#[test]
fn affinity_flags_and_timeout_are_programmed() {
    let mut h = Harness::new();
    let web = name("default", "web");
    let entries = |affinity| {
        vec![
            port(&web, "http", Protocol::Tcp)
                .fe("10.96.0.10", 80, ClusterIp)
                .fe("192.0.2.10", 80, ExternalIp)
                .cluster(&[("10.0.0.1", 80)])
                .external(&[("10.0.0.1", 80)])
                .affinity(affinity),
        ]
    };
    let keys = keys_of(&web, &entries(None));
    h.apply_ok(&web, &entries(Some(10_800)));
    for k in &keys {
        let v = h.value(k);
        assert_eq!(
            (v.flags, v.affinity_timeout),
            (SVC_FLAG_AFFINITY, 10_800),
            "{k:?}"
        );
    }
    // A new timeout reaches every frontend.
    h.apply_ok(&web, &entries(Some(5)));
    for k in &keys {
        let v = h.value(k);
        assert_eq!(
            (v.flags, v.affinity_timeout),
            (SVC_FLAG_AFFINITY, 5),
            "{k:?}"
        );
    }
    h.apply_ok(&web, &entries(None));
    for k in &keys {
        let v = h.value(k);
        assert_eq!((v.flags, v.affinity_timeout), (0, 0), "{k:?}");
    }
}

#[test]
fn removing_a_backend_purges_only_that_groups_entries_for_it() {
    let mut h = Harness::new();
    let web = name("default", "web");
    let db = name("default", "db");
    let web_entries = |cluster: &[(&str, u16)]| {
        vec![
            port(&web, "http", Protocol::Tcp)
                .fe("10.96.0.10", 80, ClusterIp)
                .fe("192.0.2.10", 80, ExternalIp)
                .cluster(cluster)
                .external(&[("10.0.0.2", 80)])
                .affinity(Some(300)),
        ]
    };
    let db_entries = vec![
        port(&db, "http", Protocol::Tcp)
            .fe("10.96.0.20", 80, ClusterIp)
            .cluster(&[("10.0.0.2", 80)])
            .affinity(Some(300)),
    ];
    h.apply_ok(
        &web,
        &web_entries(&[("10.0.0.1", 80), ("10.0.0.2", 80), ("10.0.0.3", 80)]),
    );
    h.apply_ok(&db, &db_entries);
    let web_int = h
        .value(&skey("10.96.0.10", 80, Protocol::Tcp, SCOPE_INTERNAL))
        .id;
    let web_ext = h
        .value(&skey("192.0.2.10", 80, Protocol::Tcp, SCOPE_EXTERNAL))
        .id;
    let db_id = h
        .value(&skey("10.96.0.20", 80, Protocol::Tcp, SCOPE_INTERNAL))
        .id;
    assert_ne!(web_int, web_ext);
    let b1 = sbackend("10.0.0.1", 80);
    let b2 = sbackend("10.0.0.2", 80);
    let b3 = sbackend("10.0.0.3", 80);
    let gone1 = h.seed_affinity(web_int, 1, b2);
    let gone2 = h.seed_affinity(web_int, 2, b2);
    let stays = [
        h.seed_affinity(web_int, 3, b1),
        h.seed_affinity(web_int, 4, b3),
        // The same backend, other groups.
        h.seed_affinity(web_ext, 1, b2),
        h.seed_affinity(db_id, 1, b2),
    ];

    let stats = h.apply_ok(&web, &web_entries(&[("10.0.0.1", 80), ("10.0.0.3", 80)]));
    assert_eq!(stats.affinity_purged, 2);
    let aff = &h.state().affinity;
    assert!(!aff.contains_key(&gone1) && !aff.contains_key(&gone2));
    for k in &stays {
        assert!(aff.contains_key(k), "{k:?} purged");
    }

    // A change that removes no backend purges nothing.
    let stats = h.apply_ok(
        &web,
        &web_entries(&[("10.0.0.1", 80), ("10.0.0.3", 80), ("10.0.0.4", 80)]),
    );
    assert_eq!(stats.affinity_purged, 0);
    assert_eq!(h.state().affinity.len(), 4);
    // Nor does a new timeout.
    let mut longer = web_entries(&[("10.0.0.1", 80), ("10.0.0.3", 80), ("10.0.0.4", 80)]);
    longer[0].affinity_timeout = Some(301);
    let stats = h.apply_ok(&web, &longer);
    assert_eq!(stats.affinity_purged, 0);
    assert_eq!(h.state().affinity.len(), 4);
}

#[test]
fn toggling_affinity_purges_the_groups_entries() {
    let mut h = Harness::new();
    let web = name("default", "web");
    let db = name("default", "db");
    let web_entries = |affinity| {
        vec![
            port(&web, "http", Protocol::Tcp)
                .fe("10.96.0.10", 80, ClusterIp)
                .fe("192.0.2.10", 80, ExternalIp)
                .cluster(&[("10.0.0.1", 80), ("10.0.0.2", 80)])
                .external(&[("10.0.0.1", 80)])
                .affinity(affinity),
        ]
    };
    let db_entries = vec![
        port(&db, "http", Protocol::Tcp)
            .fe("10.96.0.20", 80, ClusterIp)
            .cluster(&[("10.0.0.1", 80)])
            .affinity(Some(300)),
    ];
    h.apply_ok(&web, &web_entries(Some(300)));
    h.apply_ok(&db, &db_entries);
    let int = h
        .value(&skey("10.96.0.10", 80, Protocol::Tcp, SCOPE_INTERNAL))
        .id;
    let ext = h
        .value(&skey("192.0.2.10", 80, Protocol::Tcp, SCOPE_EXTERNAL))
        .id;
    let db_id = h
        .value(&skey("10.96.0.20", 80, Protocol::Tcp, SCOPE_INTERNAL))
        .id;
    let b1 = sbackend("10.0.0.1", 80);
    h.seed_affinity(int, 1, b1);
    h.seed_affinity(int, 2, sbackend("10.0.0.2", 80));
    h.seed_affinity(ext, 1, b1);
    let kept = h.seed_affinity(db_id, 1, b1);

    // Off: every entry of both groups goes, though no backend changed.
    let stats = h.apply_ok(&web, &web_entries(None));
    assert_eq!(stats.affinity_purged, 3);
    assert_eq!(
        h.state().affinity.keys().copied().collect::<Vec<_>>(),
        vec![kept]
    );

    // On again: whatever was left starts afresh.
    h.seed_affinity(int, 9, b1);
    h.seed_affinity(ext, 9, b1);
    let stats = h.apply_ok(&web, &web_entries(Some(300)));
    assert_eq!(stats.affinity_purged, 2);
    assert_eq!(
        h.state().affinity.keys().copied().collect::<Vec<_>>(),
        vec![kept]
    );
    assert_eq!(
        h.value(&skey("10.96.0.10", 80, Protocol::Tcp, SCOPE_INTERNAL))
            .id,
        int
    );
}

// ---------------------------------------------------------------------------
// 7. External frontends
// ---------------------------------------------------------------------------

#[test]
fn external_frontends_use_the_external_backends_from_outside() {
    let mut h = Harness::new();
    let web = name("default", "web");
    let entries = |external: &[(&str, u16)]| {
        vec![
            port(&web, "http", Protocol::Tcp)
                .fe("10.96.0.10", 80, ClusterIp)
                .fe("192.0.2.10", 80, ExternalIp)
                .fe("198.51.100.10", 80, LoadBalancer)
                .fe("2001:db8::10", 80, ExternalIp)
                .cluster(&[
                    ("10.0.0.1", 80),
                    ("10.0.0.2", 80),
                    ("fd10::1", 80),
                    ("fd10::2", 80),
                ])
                .external(external),
        ]
    };
    let stats = h.apply_ok(&web, &entries(&[("10.0.0.2", 80), ("fd10::2", 80)]));
    // v4 internal, v4 external, v6 internal, v6 external.
    assert_eq!(stats.groups_written, 4);
    let tcp = Protocol::Tcp;
    let cluster_ip_int = h.value(&skey("10.96.0.10", 80, tcp, SCOPE_INTERNAL));
    let cluster_ip_ext = h.value(&skey("10.96.0.10", 80, tcp, SCOPE_EXTERNAL));
    let ext_ip_int = h.value(&skey("192.0.2.10", 80, tcp, SCOPE_INTERNAL));
    let ext_ip_ext = h.value(&skey("192.0.2.10", 80, tcp, SCOPE_EXTERNAL));
    let lb_int = h.value(&skey("198.51.100.10", 80, tcp, SCOPE_INTERNAL));
    let lb_ext = h.value(&skey("198.51.100.10", 80, tcp, SCOPE_EXTERNAL));
    let v6_int = h.value(&skey("2001:db8::10", 80, tcp, SCOPE_INTERNAL));
    let v6_ext = h.value(&skey("2001:db8::10", 80, tcp, SCOPE_EXTERNAL));
    // In-cluster clients of any frontend, and outside clients of the
    // cluster IP, use the cluster group.
    for v in [cluster_ip_ext, ext_ip_int, lb_int] {
        assert_eq!(v, cluster_ip_int);
    }
    assert_eq!(lb_ext, ext_ip_ext);
    assert_ne!(ext_ip_ext.id, cluster_ip_int.id);
    assert_ne!(v6_int.id, v6_ext.id);
    assert_ne!(v6_ext.id, ext_ip_ext.id);
    let st = h.state().clone();
    assert_eq!(
        slots(&st, &cluster_ip_int),
        vec![sbackend("10.0.0.1", 80), sbackend("10.0.0.2", 80)]
    );
    assert_eq!(slots(&st, &ext_ip_ext), vec![sbackend("10.0.0.2", 80)]);
    assert_eq!(
        slots(&st, &v6_int),
        vec![sbackend("fd10::1", 80), sbackend("fd10::2", 80)]
    );
    assert_eq!(slots(&st, &v6_ext), vec![sbackend("fd10::2", 80)]);

    // No local endpoints: outside traffic is rejected, inside still works.
    h.apply_ok(&web, &entries(&[]));
    assert_eq!(
        h.value(&skey("192.0.2.10", 80, tcp, SCOPE_EXTERNAL)).count,
        0
    );
    assert_eq!(
        h.value(&skey("198.51.100.10", 80, tcp, SCOPE_EXTERNAL))
            .count,
        0
    );
    assert_eq!(
        h.value(&skey("2001:db8::10", 80, tcp, SCOPE_EXTERNAL))
            .count,
        0
    );
    assert_eq!(
        h.value(&skey("192.0.2.10", 80, tcp, SCOPE_INTERNAL)).count,
        2
    );
    assert_eq!(
        h.value(&skey("10.96.0.10", 80, tcp, SCOPE_EXTERNAL)).count,
        2
    );

    // Without external frontends the external groups go.
    let only_cluster = vec![
        port(&web, "http", tcp)
            .fe("10.96.0.10", 80, ClusterIp)
            .cluster(&[("10.0.0.1", 80)]),
    ];
    let stats = h.apply_ok(&web, &only_cluster);
    assert_eq!(stats.frontends_removed, 6);
    assert_eq!(h.p.groups(), 1);
}

#[test]
fn frontends_added_and_removed_without_a_backend_change_reuse_the_live_revision() {
    let mut h = Harness::new();
    let web = name("default", "web");
    let base = port(&web, "http", Protocol::Tcp)
        .fe("10.96.0.10", 80, ClusterIp)
        .cluster(&[("10.0.0.1", 80), ("10.0.0.2", 80)])
        .external(&[("10.0.0.1", 80)]);
    h.apply_ok(&web, std::slice::from_ref(&base));
    let live = h.value(&skey("10.96.0.10", 80, Protocol::Tcp, SCOPE_INTERNAL));
    let start = h.log_len();
    let stats = h.apply_ok(&web, &[base.clone().fe("192.0.2.10", 80, ExternalIp)]);
    // Only the new frontend's keys, and the external group's slot.
    assert_eq!(stats.frontends_written, 2);
    assert_eq!(stats.groups_written, 1);
    assert_eq!(
        h.value(&skey("192.0.2.10", 80, Protocol::Tcp, SCOPE_INTERNAL)),
        live
    );
    let backend_writes = h
        .ops_since(start)
        .into_iter()
        .filter(|op| matches!(op, Op::SetBackend(k, _) if k.id == live.id))
        .count();
    assert_eq!(
        backend_writes, 0,
        "the cluster group's slots stay as they are"
    );
    let stats = h.apply_ok(&web, std::slice::from_ref(&base));
    assert_eq!(stats.frontends_removed, 2);
    assert_eq!(stats.frontends_written, 0);
    assert_eq!(
        h.value(&skey("10.96.0.10", 80, Protocol::Tcp, SCOPE_INTERNAL)),
        live
    );
}

// ---------------------------------------------------------------------------
// 8. Restart adoption
// ---------------------------------------------------------------------------

fn sample(svc: &ServiceName, n: u8, backends: &[(&str, u16)]) -> Vec<ServicePortEntries> {
    vec![
        port(svc, "http", Protocol::Tcp)
            .fe(&format!("10.96.0.{n}"), 80, ClusterIp)
            .fe(&format!("fd00::{n}"), 80, ClusterIp)
            .fe(&format!("192.0.2.{n}"), 80, ExternalIp)
            .cluster(backends)
            .external(backends)
            .affinity(Some(300)),
        port(svc, "dns", Protocol::Udp)
            .fe(&format!("10.96.0.{n}"), 53, ClusterIp)
            .cluster(&[("10.0.9.9", 53)]),
    ]
}

#[test]
fn a_restarted_agent_keeps_group_ids_and_finish_removes_the_rest() {
    let mut h = Harness::new();
    let (a, b, c) = (name("ns", "a"), name("ns", "b"), name("ns", "c"));
    let ea = sample(&a, 1, &[("10.0.0.1", 80), ("fd10::1", 80)]);
    let eb = sample(&b, 2, &[("10.0.0.2", 80), ("10.0.0.3", 80)]);
    let ec = sample(&c, 3, &[("10.0.0.4", 80), ("fd10::4", 80)]);
    h.apply_ok(&a, &ea);
    h.apply_ok(&b, &eb);
    h.apply_ok(&c, &ec);
    // b changed, so its revision is the other one.
    let eb = sample(
        &b,
        2,
        &[("10.0.0.2", 80), ("10.0.0.3", 80), ("10.0.0.5", 80)],
    );
    h.apply_ok(&b, &eb);
    let a_id = h
        .value(&skey("10.96.0.1", 80, Protocol::Tcp, SCOPE_INTERNAL))
        .id;
    let c_id = h
        .value(&skey("10.96.0.3", 80, Protocol::Tcp, SCOPE_INTERNAL))
        .id;
    let a_aff = h.seed_affinity(a_id, 1, sbackend("10.0.0.1", 80));
    h.seed_affinity(c_id, 1, sbackend("10.0.0.4", 80));
    let c_ids = h.ids_of(&c);
    let old = h.state().clone();

    let mut h2 = h.restarted();
    assert_eq!((h2.p.groups(), h2.p.frontends()), (0, 0));
    for (svc, entries) in [(&a, &ea), (&b, &eb)] {
        let keys = keys_of(svc, entries);
        let checks = Checks {
            no_live_overwrite: true,
            stay: keys.iter().copied().collect(),
        };
        h2.apply_with(svc, entries, &checks).expect("adopting");
        for k in &keys {
            assert_eq!(h2.value(k).id, old.services[k].id, "{k:?} keeps its id");
        }
    }
    // Until the first sync is over, c's entries stay as they were.
    for k in keys_of(&c, &ec) {
        assert_eq!(h2.state().services.get(&k), old.services.get(&k));
    }
    assert!(
        h2.state().affinity.contains_key(&a_aff),
        "adoption keeps affinity"
    );

    let removed = h2
        .replayed(&Checks::default(), |p| p.finish_initial_sync())
        .expect("finish");
    assert_eq!(removed, keys_of(&c, &ec).len());
    h2.check();
    let st = h2.state();
    assert!(
        st.backends.keys().all(|k| !c_ids.contains(&k.id)),
        "c's slots left"
    );
    assert!(
        st.affinity.keys().all(|k| !c_ids.contains(&k.id)),
        "c's affinity left"
    );
    assert!(st.affinity.contains_key(&a_aff));
    // A second finish has nothing left to do.
    let start = h2.log_len();
    assert_eq!(h2.p.finish_initial_sync().expect("finish again"), 0);
    assert!(
        h2.ops_since(start)
            .iter()
            .all(|op| matches!(op, Op::PurgeAffinity(k) if k.is_empty()))
    );

    // c's ids go to the next Service.
    let d = name("ns", "d");
    h2.apply_ok(&d, &sample(&d, 4, &[("10.0.0.6", 80)]));
    assert_eq!(h2.ids_of(&d), c_ids);
}

#[test]
fn a_restarted_agent_programs_changes_and_new_services_without_collisions() {
    let mut h = Harness::new();
    let (a, b) = (name("ns", "a"), name("ns", "b"));
    let ea = sample(
        &a,
        1,
        &[("10.0.0.1", 80), ("10.0.0.2", 80), ("fd10::1", 80)],
    );
    let eb = sample(&b, 2, &[("10.0.0.3", 80)]);
    h.apply_ok(&a, &ea);
    h.apply_ok(&b, &eb);
    let old = h.state().clone();
    let old_ids: BTreeSet<u32> = old.services.values().map(|v| v.id).collect();

    let mut h2 = h.restarted();
    // A Service new since the restart comes first: its ids must not be any
    // the maps hold, or it would overwrite a's and b's live slots.
    let d = name("ns", "d");
    let ed = sample(&d, 4, &[("10.0.0.9", 80)]);
    h2.apply_with(
        &d,
        &ed,
        &Checks {
            no_live_overwrite: true,
            stay: keys_of(&a, &ea)
                .into_iter()
                .chain(keys_of(&b, &eb))
                .collect(),
        },
    )
    .expect("new service");
    assert!(
        h2.ids_of(&d).is_disjoint(&old_ids),
        "{:?} vs {old_ids:?}",
        h2.ids_of(&d)
    );
    // a changed while the agent was down (a backend more, a frontend more).
    let mut ea2 = sample(
        &a,
        1,
        &[("10.0.0.1", 80), ("10.0.0.2", 80), ("10.0.0.7", 80)],
    );
    ea2[0] = ea2[0].clone().fe("198.51.100.1", 80, LoadBalancer);
    let checks = Checks {
        no_live_overwrite: true,
        stay: keys_of(&a, &ea).into_iter().collect(),
    };
    h2.apply_with(&a, &ea2, &checks).expect("changed service");
    for k in keys_of(&a, &ea) {
        assert_eq!(h2.value(&k).id, old.services[&k].id, "{k:?} keeps its id");
    }
    // Another new Service, after a's ids were adopted: still no collision
    // with any id in the maps (b's entries are still there too).
    let e = name("ns", "e");
    let ee = sample(&e, 5, &[("10.0.0.8", 80)]);
    let in_maps: BTreeSet<u32> = h2.state().services.values().map(|v| v.id).collect();
    h2.apply_with(
        &e,
        &ee,
        &Checks {
            no_live_overwrite: true,
            stay: h2.state().services.keys().copied().collect(),
        },
    )
    .expect("another new service");
    assert!(
        h2.ids_of(&e).is_disjoint(&in_maps),
        "{:?} vs {in_maps:?}",
        h2.ids_of(&e)
    );
    assert_eq!(
        h2.value(&skey("10.96.0.1", 80, Protocol::Tcp, SCOPE_INTERNAL))
            .count,
        3
    );
    // b went while the agent was down.
    let removed = h2
        .replayed(&Checks::default(), |p| p.finish_initial_sync())
        .expect("finish");
    assert_eq!(removed, keys_of(&b, &eb).len());
    h2.check();
    // After the sync, changes carry on as usual.
    h2.apply_ok(&a, &ea);
    h2.apply_ok(&d, &[]);
    h2.apply_ok(&e, &[]);
    h2.apply_ok(&a, &[]);
    assert!(h2.state().services.is_empty() && h2.state().backends.is_empty());
}

#[test]
fn finish_on_a_fresh_start_empties_the_maps() {
    let mut h = Harness::new();
    let a = name("ns", "a");
    h.apply_ok(&a, &sample(&a, 1, &[("10.0.0.1", 80)]));
    let id = h
        .value(&skey("10.96.0.1", 80, Protocol::Tcp, SCOPE_INTERNAL))
        .id;
    h.seed_affinity(id, 1, sbackend("10.0.0.1", 80));
    let mut h2 = h.restarted();
    let removed = h2
        .replayed(&Checks::default(), |p| p.finish_initial_sync())
        .expect("finish");
    assert_eq!(removed, 8);
    assert!(h2.state().is_empty(), "{:?}", h2.state());
}

// ---------------------------------------------------------------------------
// 9. Full maps
// ---------------------------------------------------------------------------

#[test]
fn a_full_backend_map_keeps_the_live_set_and_a_retry_succeeds() {
    let mut h = Harness::new();
    let web = name("default", "web");
    let entries = |backends: &[(&str, u16)]| {
        vec![
            port(&web, "http", Protocol::Tcp)
                .fe("10.96.0.10", 80, ClusterIp)
                .cluster(backends),
        ]
    };
    let old = entries(&[("10.0.0.1", 80), ("10.0.0.2", 80)]);
    let grown = entries(&[("10.0.0.1", 80), ("10.0.0.2", 80), ("10.0.0.3", 80)]);
    h.apply_ok(&web, &old);
    let live = h.value(&skey("10.96.0.10", 80, Protocol::Tcp, SCOPE_INTERNAL));
    h.maps_mut().backend_cap = Some(3);

    let err = h.apply(&web, &grown).expect_err("the map is full");
    assert!(
        matches!(err, ProgramError::Map(ref e) if e.op == "writing a backend entry"),
        "{err}"
    );
    // The frontends still point at the old, complete revision.
    for k in keys_of(&web, &old) {
        assert_eq!(h.value(&k), live, "{k:?}");
    }
    h.check();
    // Still full: still an error, still the old set.
    assert!(h.apply(&web, &grown).is_err());
    h.check();

    h.maps_mut().backend_cap = Some(5);
    h.apply_ok(&web, &grown);
    assert_eq!(
        h.value(&skey("10.96.0.10", 80, Protocol::Tcp, SCOPE_INTERNAL))
            .count,
        3
    );

    // A failure midway, then a smaller set: the half-written slots go.
    h.maps_mut().backend_cap = Some(5);
    let four = entries(&[
        ("10.0.0.4", 80),
        ("10.0.0.5", 80),
        ("10.0.0.6", 80),
        ("10.0.0.7", 80),
    ]);
    assert!(h.apply(&web, &four).is_err());
    h.check();
    h.apply_ok(&web, &entries(&[("10.0.0.8", 80)]));
    h.maps_mut().backend_cap = None;
    h.apply_ok(&web, &four);
}

#[test]
fn a_full_service_map_leaves_other_services_alone_and_a_retry_succeeds() {
    let mut h = Harness::new();
    let web = name("default", "web");
    let db = name("default", "db");
    let we = sample(&web, 1, &[("10.0.0.1", 80)]);
    let de = sample(&db, 2, &[("10.0.0.2", 80)]);
    h.apply_ok(&web, &we);
    let before = h.state().clone();
    h.maps_mut().service_cap = Some(before.services.len() + 3);
    let err = h.apply(&db, &de).expect_err("the service map is full");
    assert!(matches!(err, ProgramError::Map(_)), "{err}");
    for (k, v) in &before.services {
        assert_eq!(h.state().services.get(k), Some(v));
    }
    // db got some of its frontends in (each resolves: the replay checked
    // every step), web is as it was.
    let (web_view, _) = expected_of(&web, &we);
    let now = actual(h.state());
    for (k, v) in &web_view {
        assert_eq!(now.get(k), Some(v), "{k:?}");
    }
    let db_keys = keys_of(&db, &de);
    let got = db_keys
        .iter()
        .filter(|k| h.state().services.contains_key(k))
        .count();
    assert_eq!(got, 3, "as many as fitted");
    h.maps_mut().service_cap = None;
    h.apply_ok(&db, &de);
}

#[test]
fn running_out_of_group_ids_is_an_error_and_removal_frees_them() {
    let mut h = Harness {
        p: Programmer::new(FakeMaps::default(), 2, LbSettings::default()).expect("programmer"),
        want: BTreeMap::new(),
        lb: LbSettings::default(),
    };
    let a = name("ns", "a");
    let b = name("ns", "b");
    let two_groups = |svc: &ServiceName, n: u8| {
        vec![
            port(svc, "http", Protocol::Tcp)
                .fe(&format!("10.96.0.{n}"), 80, ClusterIp)
                .fe(&format!("fd00::{n}"), 80, ClusterIp)
                .cluster(&[("10.0.0.1", 80), ("fd10::1", 80)]),
        ]
    };
    h.apply_ok(&a, &two_groups(&a, 1));
    assert_eq!(h.ids_of(&a), BTreeSet::from([1, 2]));
    let start = h.log_len();
    let err = h.apply(&b, &two_groups(&b, 2)).expect_err("no ids left");
    assert!(matches!(err, ProgramError::IdsExhausted(2)), "{err}");
    assert_eq!(h.ops_since(start), vec![]);
    h.check();
    h.apply_ok(&a, &[]);
    h.apply_ok(&b, &two_groups(&b, 2));
    assert_eq!(h.ids_of(&b), BTreeSet::from([1, 2]));
}

// ---------------------------------------------------------------------------
// 10. Two Services claiming one frontend
// ---------------------------------------------------------------------------

fn claimant(svc: &ServiceName, n: u8, backend: &str) -> Vec<ServicePortEntries> {
    vec![
        port(svc, "http", Protocol::Tcp)
            .fe(&format!("10.96.0.{n}"), 80, ClusterIp)
            .fe("192.0.2.100", 80, ExternalIp)
            .cluster(&[(backend, 80)])
            .external(&[(backend, 80)]),
    ]
}

#[test]
fn a_shared_frontend_goes_to_the_latest_write_and_survives_the_losers_removal() {
    let mut h = Harness::new();
    let (a, b) = (name("ns", "a"), name("ns", "b"));
    let (ea, eb) = (claimant(&a, 1, "10.0.0.1"), claimant(&b, 2, "10.0.0.2"));
    let shared = [
        skey("192.0.2.100", 80, Protocol::Tcp, SCOPE_INTERNAL),
        skey("192.0.2.100", 80, Protocol::Tcp, SCOPE_EXTERNAL),
    ];
    let resolves = |h: &Harness, k: &ServiceKey| slots(h.state(), &h.value(k));
    h.apply(&a, &ea).expect("a");
    h.apply(&b, &eb).expect("b");
    for k in &shared {
        assert_eq!(
            resolves(&h, k),
            vec![sbackend("10.0.0.2", 80)],
            "b wrote last: {k:?}"
        );
    }
    assert_eq!(h.p.frontends(), 6);
    let b_values: Vec<ServiceValue> = shared.iter().map(|k| h.value(k)).collect();
    // Removing the loser leaves the winner's entries.
    let stats = h.apply(&a, &[]).expect("remove a");
    assert_eq!(stats.frontends_removed, 2, "only a's cluster IP keys");
    for (k, v) in shared.iter().zip(&b_values) {
        assert_eq!(h.value(k), *v, "{k:?}");
    }
    assert!(!h.state().services.contains_key(&skey(
        "10.96.0.1",
        80,
        Protocol::Tcp,
        SCOPE_INTERNAL
    )));
    h.check();

    // The other way round: a comes back and, writing later, wins.
    h.apply(&a, &ea).expect("a again");
    for k in &shared {
        assert_eq!(
            resolves(&h, k),
            vec![sbackend("10.0.0.1", 80)],
            "a wrote last: {k:?}"
        );
    }
    // b changing its backends is no new claim: a keeps the frontend, and
    // gets no write it did not ask for.
    let eb2 = claimant(&b, 2, "10.0.0.3");
    h.apply(&b, &eb2).expect("b changed");
    for k in &shared {
        assert_eq!(
            resolves(&h, k),
            vec![sbackend("10.0.0.1", 80)],
            "a claimed last: {k:?}"
        );
    }
    // When a lets go, the frontend goes back to b, with b's current set.
    h.apply(&a, &[]).expect("remove a");
    for k in &shared {
        assert_eq!(resolves(&h, k), vec![sbackend("10.0.0.3", 80)], "{k:?}");
    }
    h.check();
    // And the other way round.
    h.apply(&a, &ea).expect("a again");
    h.apply(&b, &[]).expect("remove b");
    for k in &shared {
        assert_eq!(resolves(&h, k), vec![sbackend("10.0.0.1", 80)], "{k:?}");
    }
    h.check();
    h.apply(&a, &[]).expect("remove a");
    assert!(h.state().is_empty(), "{:?}", h.state());
    assert_eq!((h.p.groups(), h.p.frontends()), (0, 0));
}

// ---------------------------------------------------------------------------
// Bugs a review found, each fixed in programmer.rs
// ---------------------------------------------------------------------------

#[test]
fn a_renamed_port_keeps_its_frontends_in_the_map() {
    let mut h = Harness::new();
    let web = name("default", "web");
    let named = |port_name: &str| {
        vec![
            port(&web, port_name, Protocol::Tcp)
                .fe("10.96.0.10", 80, ClusterIp)
                .fe("192.0.2.10", 80, ExternalIp)
                .cluster(&[("10.0.0.1", 8080), ("10.0.0.2", 8080)])
                .external(&[("10.0.0.1", 8080)]),
        ]
    };
    h.apply_ok(&web, &named(""));
    let checks = Checks {
        no_live_overwrite: true,
        stay: keys_of(&web, &named("")).into_iter().collect(),
    };
    h.apply_with(&web, &named("http"), &checks).expect("rename");
    h.check();
}

#[test]
fn a_restart_purges_affinity_to_backends_that_went_while_down() {
    let mut h = Harness::new();
    let web = name("default", "web");
    let entries = |backends: &[(&str, u16)]| {
        vec![
            port(&web, "http", Protocol::Tcp)
                .fe("10.96.0.10", 80, ClusterIp)
                .cluster(backends)
                .affinity(Some(10_800)),
        ]
    };
    h.apply_ok(&web, &entries(&[("10.0.0.1", 80), ("10.0.0.2", 80)]));
    let id = h
        .value(&skey("10.96.0.10", 80, Protocol::Tcp, SCOPE_INTERNAL))
        .id;
    let stays = h.seed_affinity(id, 1, sbackend("10.0.0.1", 80));
    let stuck = h.seed_affinity(id, 2, sbackend("10.0.0.2", 80));

    let mut h2 = h.restarted();
    // 10.0.0.2 went while the agent was down.
    h2.apply(&web, &entries(&[("10.0.0.1", 80)]))
        .expect("adopt");
    h2.p.finish_initial_sync().expect("finish");
    assert_eq!(
        h2.value(&skey("10.96.0.10", 80, Protocol::Tcp, SCOPE_INTERNAL))
            .id,
        id
    );
    assert!(
        h2.state().affinity.contains_key(&stays),
        "the live backend's entry stays"
    );
    assert!(
        !h2.state().affinity.contains_key(&stuck),
        "the entry for the gone backend 10.0.0.2 is still there"
    );
}

#[test]
fn an_unwanted_adopted_frontend_never_points_at_missing_slots() {
    let mut h = Harness::new();
    let web = name("default", "web");
    let three = [("10.0.0.1", 80), ("10.0.0.2", 80), ("10.0.0.3", 80)];
    let with_ext = vec![
        port(&web, "http", Protocol::Tcp)
            .fe("10.96.0.10", 80, ClusterIp)
            .fe("192.0.2.10", 80, ExternalIp)
            .cluster(&three)
            .external(&three),
    ];
    h.apply_ok(&web, &with_ext);
    let mut h2 = h.restarted();
    let without = |backends: &[(&str, u16)]| {
        vec![
            port(&web, "http", Protocol::Tcp)
                .fe("10.96.0.10", 80, ClusterIp)
                .cluster(backends),
        ]
    };
    h2.apply(&web, &without(&three)).expect("adopt");
    // The replay inside panics once the stale entry dangles.
    h2.apply(&web, &without(&[("10.0.0.1", 80)]))
        .expect("shrink");
    h2.replayed(&Checks::default(), |p| p.finish_initial_sync())
        .expect("finish");
    h2.check();
}

#[test]
fn a_failed_finish_is_retried_in_full() {
    let mut h = Harness::new();
    let (a, c) = (name("ns", "a"), name("ns", "c"));
    let ea = sample(&a, 1, &[("10.0.0.1", 80)]);
    let ec = sample(&c, 3, &[("10.0.0.3", 80)]);
    h.apply_ok(&a, &ea);
    h.apply_ok(&c, &ec);
    let mut h2 = h.restarted();
    h2.apply(&a, &ea).expect("adopt a");
    h2.maps_mut().fail_service_dels = 1;
    assert!(h2.p.finish_initial_sync().is_err(), "the injected failure");
    // The retry, as the proxy loop does it.
    h2.replayed(&Checks::default(), |p| p.finish_initial_sync())
        .expect("retry");
    for k in keys_of(&c, &ec) {
        assert!(!h2.state().services.contains_key(&k), "stale {k:?} left");
    }
    h2.check();
}

#[test]
fn a_failed_change_then_the_old_entries_restores_the_old_set() {
    let mut h = Harness::new();
    let web = name("default", "web");
    let old = vec![
        port(&web, "http", Protocol::Tcp)
            .fe("10.96.0.10", 80, ClusterIp)
            .cluster(&[("10.0.0.1", 80)]),
    ];
    // A backend more and an external IP more (its key sorts after the
    // cluster IP's, so the cluster IP's keys move first).
    let new = vec![
        old[0]
            .clone()
            .fe("10.96.0.200", 80, ExternalIp)
            .cluster(&[("10.0.0.1", 80), ("10.0.0.2", 80)]),
    ];
    h.apply_ok(&web, &old);
    h.maps_mut().service_cap = Some(2);
    assert!(h.apply(&web, &new).is_err(), "no room for the new frontend");
    // The endpoint went away again; the agent applies what is wanted now.
    h.maps_mut().service_cap = None;
    h.apply(&web, &old).expect("the old entries");
    h.check();
}

#[test]
fn removing_the_winner_of_a_shared_frontend_hands_it_back() {
    let mut h = Harness::new();
    let (a, b) = (name("ns", "a"), name("ns", "b"));
    h.apply(&a, &claimant(&a, 1, "10.0.0.1")).expect("a");
    h.apply(&b, &claimant(&b, 2, "10.0.0.2")).expect("b");
    h.apply(&b, &[]).expect("remove b");
    h.check();
}

// ---------------------------------------------------------------------------
// Maglev tables
// ---------------------------------------------------------------------------

fn maglev_lb(size: u32) -> LbSettings {
    LbSettings {
        algorithm: super::LbAlgorithm::Maglev,
        maglev_size: size,
        ..LbSettings::default()
    }
}

/// A Service with a ClusterIP and a LoadBalancer IP, `backends` behind both.
fn lb_service(svc: &ServiceName, backends: &[(&str, u16)]) -> Vec<ServicePortEntries> {
    vec![
        port(svc, "http", Protocol::Tcp)
            .fe("10.96.0.10", 80, ClusterIp)
            .fe("198.51.100.10", 80, LoadBalancer)
            .cluster(backends)
            .external(backends),
    ]
}

/// The table the frontend's group holds, as backends.
fn table_of(h: &Harness, key: &ServiceKey) -> Vec<Backend> {
    let v = h.value(key);
    let st = h.state();
    let slots = slots(st, &v);
    st.table(&v)
        .unwrap_or_else(|| panic!("{key:?}: no whole table"))
        .iter()
        .map(|s| slots[usize::from(*s)])
        .collect()
}

/// What [`super::maglev::Table`] builds for these backends, as backends.
fn reference_table(backends: &[(&str, u16)], lb: &LbSettings) -> Vec<Backend> {
    let list: Vec<Backend> = mb(backends)
        .iter()
        .map(|b| sbackend(&b.addr.to_string(), b.port))
        .collect();
    let ids: Vec<super::maglev::BackendId> = mb(backends)
        .iter()
        .map(|b| super::maglev::BackendId::new(b.addr, b.port))
        .collect();
    super::maglev::Table::build(&ids, lb.maglev_size, &lb.seed)
        .expect("table")
        .entries()
        .iter()
        .map(|i| list[usize::from(*i)])
        .collect()
}

#[test]
fn maglev_external_groups_get_a_table_before_their_frontends_and_keep_one() {
    let lb = maglev_lb(1021);
    let mut h = Harness::with_lb(FakeMaps::default(), lb);
    let web = name("default", "web");
    let three = [("10.0.0.1", 80), ("10.0.0.2", 80), ("10.0.0.3", 80)];
    // Every step is replayed: no moment where a frontend flagged Maglev
    // lacks a whole table naming live slots.
    h.apply_ok(&web, &lb_service(&web, &three));
    let ext = skey("198.51.100.10", 80, Protocol::Tcp, SCOPE_EXTERNAL);
    let internal = skey("10.96.0.10", 80, Protocol::Tcp, SCOPE_INTERNAL);
    assert_ne!(h.value(&ext).flags & SVC_FLAG_MAGLEV, 0);
    assert_eq!(
        h.value(&internal).flags & SVC_FLAG_MAGLEV,
        0,
        "in-cluster traffic stays random"
    );
    assert_eq!(table_of(&h, &ext), reference_table(&three, &lb));
    // 1021 entries: two chunks, one table.
    assert_eq!(h.state().maglev.len(), 2);

    let two = [("10.0.0.1", 80), ("10.0.0.3", 80)];
    h.apply_ok(&web, &lb_service(&web, &two));
    assert_eq!(table_of(&h, &ext), reference_table(&two, &lb));
    assert_eq!(h.state().maglev.len(), 2, "the old revision's table went");
    h.check();

    h.apply_ok(&web, &[]);
    assert!(h.state().is_empty(), "{:?}", h.state().maglev.keys());
}

#[test]
fn maglev_annotation_overrides_the_default_both_ways() {
    let web = name("default", "web");
    let two = [("10.0.0.1", 80), ("10.0.0.2", 80)];
    let ext = skey("198.51.100.10", 80, Protocol::Tcp, SCOPE_EXTERNAL);

    let mut h = Harness::with_lb(FakeMaps::default(), LbSettings::default());
    let mut entries = lb_service(&web, &two);
    entries[0].lb_algorithm = Some(super::LbAlgorithm::Maglev);
    h.apply_ok(&web, &entries);
    assert_ne!(h.value(&ext).flags & SVC_FLAG_MAGLEV, 0);
    // Back to the default (random): the table goes with the flag.
    h.apply_ok(&web, &lb_service(&web, &two));
    assert_eq!(h.value(&ext).flags & SVC_FLAG_MAGLEV, 0);
    assert!(h.state().maglev.is_empty());
    h.check();

    let mut h = Harness::with_lb(FakeMaps::default(), maglev_lb(251));
    let mut entries = lb_service(&web, &two);
    entries[0].lb_algorithm = Some(super::LbAlgorithm::Random);
    h.apply_ok(&web, &entries);
    assert_eq!(h.value(&ext).flags & SVC_FLAG_MAGLEV, 0);
    assert!(h.state().maglev.is_empty());
}

#[test]
fn maglev_more_backends_than_entries_fall_back_to_random() {
    let mut h = Harness::with_lb(FakeMaps::default(), maglev_lb(251));
    let web = name("default", "web");
    let many: Vec<(String, u16)> = (0..252)
        .map(|i| (format!("10.1.{}.{}", i / 200, i % 200 + 1), 80))
        .collect();
    let many: Vec<(&str, u16)> = many.iter().map(|(a, p)| (a.as_str(), *p)).collect();
    h.apply_ok(&web, &lb_service(&web, &many));
    let ext = skey("198.51.100.10", 80, Protocol::Tcp, SCOPE_EXTERNAL);
    assert_eq!(h.value(&ext).count, 252);
    assert_eq!(h.value(&ext).flags & SVC_FLAG_MAGLEV, 0);
    assert!(h.state().maglev.is_empty());
}

#[test]
fn maglev_a_restart_with_another_table_size_rewrites_and_sweeps() {
    let web = name("default", "web");
    let three = [("10.0.0.1", 80), ("10.0.0.2", 80), ("10.0.0.3", 80)];
    let mut h = Harness::with_lb(FakeMaps::default(), maglev_lb(1021));
    h.apply_ok(&web, &lb_service(&web, &three));
    // A second Service whose table the next agent finds but no one wants.
    let gone = name("default", "gone");
    let mut gone_entries = lb_service(&gone, &three);
    gone_entries[0].frontends = vec![Frontend {
        addr: ip("198.51.100.99"),
        port: 80,
        protocol: Protocol::Tcp,
        kind: LoadBalancer,
    }];
    h.apply_ok(&gone, &gone_entries);
    assert_eq!(h.state().maglev.len(), 4);

    let small = maglev_lb(251);
    let mut h2 = h.restarted_with(small);
    assert_eq!(
        h2.state().config.maglev_size,
        251,
        "the settings are written at start"
    );
    // Only web is applied (gone's leftovers stay until the sync ends).
    h2.apply(&web, &lb_service(&web, &three))
        .expect("apply web");
    h2.replayed(&Checks::default(), |p| p.finish_initial_sync())
        .expect("finish");
    let ext = skey("198.51.100.10", 80, Protocol::Tcp, SCOPE_EXTERNAL);
    assert_eq!(table_of(&h2, &ext), reference_table(&three, &small));
    assert_eq!(h2.state().maglev.len(), 1, "one chunk of 251, nothing else");
    h2.check();
}

#[test]
fn maglev_a_bad_table_size_is_refused_at_start() {
    let err =
        Programmer::new(FakeMaps::default(), MAX_ID, maglev_lb(1000)).expect_err("not a prime");
    assert!(err.to_string().contains("not a prime"), "{err}");
}
