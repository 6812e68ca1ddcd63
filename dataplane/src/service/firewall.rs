//! `loadBalancerSourceRanges`: which clients may reach a Service's
//! LoadBalancer IPs from outside the node. Per LoadBalancer frontend, the
//! LPM trie `FERRY_SRC_RANGES` holds a deny entry covering every source and
//! an allow entry per range of the frontend's family; the TC program looks
//! up the client once per new external flow and the longest match decides.
//! In-cluster traffic (internal scope) and NodePorts are not filtered, as
//! with kube-proxy.
//!
//! It owns that map's entries, kept per Service: an update writes the new
//! entries before it removes the old ones, so a change of ranges never lets
//! through a client both lists refuse. It touches no other map.

use std::collections::{BTreeSet, HashMap};

use aya::maps::MapData;
use aya::maps::lpm_trie::{Key, LpmTrie};
use ferry_ebpf_common::{
    MAP_SOURCE_RANGES, SOURCE_RANGE_ALLOW, SOURCE_RANGE_DENY, SOURCE_RANGE_FRONTEND_BITS,
    SourceRangeKey,
};
use ipnet::IpNet;

use super::model::{FrontendKind, ServicePortEntries};
use super::programmer::{ServiceName, addr_words, proto_number};
use crate::bpf::{BpfError, Layout};

/// One entry: prefix length, key data, verdict.
type Entry = (u32, SourceRangeKey, u8);

/// The entries `entries` want.
pub fn wanted(entries: &[ServicePortEntries]) -> BTreeSet<Entry> {
    let mut out = BTreeSet::new();
    for e in entries.iter().filter(|e| !e.source_ranges.is_empty()) {
        for f in e
            .frontends
            .iter()
            .filter(|f| f.kind == FrontendKind::LoadBalancer)
        {
            let key = |src: [u32; 4]| SourceRangeKey {
                frontend: addr_words(f.addr),
                port: f.port.to_be(),
                proto: proto_number(f.protocol),
                _pad: 0,
                src,
            };
            out.insert((SOURCE_RANGE_FRONTEND_BITS, key([0; 4]), SOURCE_RANGE_DENY));
            for range in &e.source_ranges {
                // A range of the other family allows nothing here.
                let bits = match (range, f.addr.is_ipv4()) {
                    (IpNet::V4(r), true) => 96 + u32::from(r.prefix_len()),
                    (IpNet::V6(r), false) => u32::from(r.prefix_len()),
                    _ => continue,
                };
                out.insert((
                    SOURCE_RANGE_FRONTEND_BITS + bits,
                    key(addr_words(range.network())),
                    SOURCE_RANGE_ALLOW,
                ));
            }
        }
    }
    out
}

/// The map and what each Service holds in it.
pub struct SourceRanges {
    map: LpmTrie<MapData, SourceRangeKey, u8>,
    held: HashMap<ServiceName, BTreeSet<Entry>>,
}

impl std::fmt::Debug for SourceRanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceRanges")
            .field("services", &self.held.len())
            .finish()
    }
}

impl SourceRanges {
    /// A handle on the pinned map. Entries a previous agent left are
    /// adopted by the first update of each Service or removed by
    /// [`SourceRanges::remove_unclaimed`].
    pub fn open(layout: &Layout) -> Result<Self, BpfError> {
        let data = MapData::from_pin(layout.maps_dir().join(MAP_SOURCE_RANGES)).map_err(|e| {
            BpfError::Map {
                name: MAP_SOURCE_RANGES,
                source: Box::new(e),
            }
        })?;
        let map = LpmTrie::try_from(aya::maps::Map::LpmTrie(data)).map_err(|e| BpfError::Map {
            name: MAP_SOURCE_RANGES,
            source: Box::new(e),
        })?;
        Ok(Self {
            map,
            held: HashMap::new(),
        })
    }

    /// Makes `service`'s entries what `entries` want: new ones first.
    pub fn update(
        &mut self,
        service: &ServiceName,
        entries: &[ServicePortEntries],
    ) -> Result<(), BpfError> {
        let err = |e| BpfError::Map {
            name: MAP_SOURCE_RANGES,
            source: Box::new(e),
        };
        let want = wanted(entries);
        let had = self.held.remove(service).unwrap_or_default();
        for (bits, data, verdict) in want.difference(&had) {
            self.map
                .insert(&Key::new(*bits, *data), verdict, 0)
                .map_err(err)?;
        }
        for (bits, data, verdict) in had.difference(&want) {
            // A shared frontend (two Services claiming one LB IP) may still
            // want the same entry with the other verdict: keep it then.
            if want.contains(&(*bits, *data, 1 - verdict)) {
                continue;
            }
            let _ = self.map.remove(&Key::new(*bits, *data));
        }
        if !want.is_empty() {
            self.held.insert(service.clone(), want);
        }
        Ok(())
    }

    /// Removes entries no Service claimed since the agent started: after
    /// the first full sync, what a previous agent left for Services that
    /// are gone.
    pub fn remove_unclaimed(&mut self) -> usize {
        let claimed: BTreeSet<(u32, SourceRangeKey)> = self
            .held
            .values()
            .flatten()
            .map(|(bits, data, _)| (*bits, *data))
            .collect();
        let stale: Vec<Key<SourceRangeKey>> = self
            .map
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !claimed.contains(&(k.prefix_len(), k.data())))
            .collect();
        for k in &stale {
            let _ = self.map.remove(k);
        }
        stale.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::model::{Frontend, Protocol, ServicePortName};

    fn entries(ranges: &[&str]) -> Vec<ServicePortEntries> {
        let fe = |addr: &str, kind| Frontend {
            addr: addr.parse().expect("ip"),
            port: 80,
            protocol: Protocol::Tcp,
            kind,
        };
        vec![ServicePortEntries {
            id: ServicePortName {
                namespace: "default".into(),
                name: "lb".into(),
                port: String::new(),
            },
            protocol: Protocol::Tcp,
            frontends: vec![
                fe("10.96.0.10", FrontendKind::ClusterIp),
                fe("192.0.2.10", FrontendKind::LoadBalancer),
                fe("2001:db8::10", FrontendKind::LoadBalancer),
                fe("0.0.0.0", FrontendKind::NodePort),
            ],
            cluster_backends: Vec::new(),
            external_backends: Vec::new(),
            external_drop: false,
            source_ranges: ranges.iter().map(|r| r.parse().expect("cidr")).collect(),
            lb_algorithm: None,
            affinity_timeout: None,
        }]
    }

    #[test]
    fn only_load_balancer_frontends_of_the_range_family() {
        assert!(wanted(&entries(&[])).is_empty());
        let w = wanted(&entries(&["198.51.100.0/24"]));
        // Both LB frontends get a deny-all; only the IPv4 one an allow.
        let denies = w.iter().filter(|e| e.2 == SOURCE_RANGE_DENY).count();
        let allows: Vec<_> = w.iter().filter(|e| e.2 == SOURCE_RANGE_ALLOW).collect();
        assert_eq!(denies, 2);
        assert_eq!(allows.len(), 1);
        assert_eq!(allows[0].0, SOURCE_RANGE_FRONTEND_BITS + 96 + 24);
        assert_eq!(
            allows[0].1.frontend,
            addr_words("192.0.2.10".parse().expect("ip"))
        );
    }
}
