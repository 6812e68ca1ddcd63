//! Reading the agent's pinned service maps from this process (bpf(2)
//! lookups, microseconds each), to know when a change reached the
//! dataplane without spawning `ferry-agent inspect` per poll.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use anyhow::{Context as _, Result};
use aya::maps::{HashMap, Map, MapData};
use ferry_ebpf_common::{
    Backend, BackendKey, MAP_BACKENDS, MAP_SERVICES, PROTO_TCP, SCOPE_INTERNAL, ServiceKey,
    ServiceValue, v4_mapped,
};

/// The frontend and backend maps under an agent's bpffs root.
pub struct Pinned {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, BackendKey, Backend>,
}

fn open<T>(path: &Path) -> Result<T>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let data = MapData::from_pin(path).with_context(|| format!("opening {}", path.display()))?;
    let map = Map::from_map_data(data).with_context(|| format!("reading {}", path.display()))?;
    T::try_from(map).with_context(|| format!("typing {}", path.display()))
}

/// The key of a TCP frontend as socket hooks look it up.
pub fn frontend_key(ip: Ipv4Addr, port: u16) -> ServiceKey {
    ServiceKey {
        addr: v4_mapped(u32::from_ne_bytes(ip.octets())),
        port: port.to_be(),
        proto: PROTO_TCP,
        scope: SCOPE_INTERNAL,
    }
}

fn backend_addr(b: &Backend) -> Option<SocketAddr> {
    let mut o = [0u8; 16];
    for (i, w) in b.addr.iter().enumerate() {
        o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    let v6 = std::net::Ipv6Addr::from(o);
    v6.to_ipv4_mapped()
        .map(|v4| SocketAddr::new(IpAddr::V4(v4), u16::from_be(b.port)))
}

impl Pinned {
    pub fn open(bpffs_root: &Path) -> Result<Self> {
        let dir = bpffs_root.join("maps");
        Ok(Self {
            services: open(&dir.join(MAP_SERVICES))?,
            backends: open(&dir.join(MAP_BACKENDS))?,
        })
    }

    /// Frontend entries: (internal scope, every scope).
    pub fn frontends(&self) -> Result<(usize, usize)> {
        let (mut internal, mut all) = (0, 0);
        for k in self.services.keys() {
            let k = k.context("iterating the service map")?;
            all += 1;
            if k.scope == SCOPE_INTERNAL {
                internal += 1;
            }
        }
        Ok((internal, all))
    }

    /// The frontend's entry, if any.
    pub fn frontend(&self, ip: Ipv4Addr, port: u16) -> Option<ServiceValue> {
        self.services.get(&frontend_key(ip, port), 0).ok()
    }

    /// The live backends of a frontend entry.
    pub fn backends(&self, v: &ServiceValue) -> Vec<SocketAddr> {
        (0..v.count)
            .filter_map(|slot| {
                let key = BackendKey {
                    id: v.id,
                    slot,
                    rev: v.rev,
                    _pad: 0,
                };
                self.backends
                    .get(&key, 0)
                    .ok()
                    .as_ref()
                    .and_then(backend_addr)
            })
            .collect()
    }
}
