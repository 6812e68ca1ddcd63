//! Loop probes, after CoreDNS's `loop` plugin: one random name per upstream,
//! queried a few times at startup. If our own probe comes back to us as an
//! incoming query, the upstream forwards to us: a loop.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};

use hickory_proto::rr::{LowerName, Name};
use rand::Rng;

/// The suffix of every probe name: outside any cluster zone, and not a real
/// TLD, so a healthy upstream answers NXDOMAIN quickly.
pub(crate) const PROBE_SUFFIX: &str = "ferry-loop-probe.";

/// Sightings of one probe name beyond which we call it a loop (CoreDNS: 2).
pub(crate) const MAX_SIGHTINGS: u32 = 2;

pub(crate) struct Probe {
    pub(crate) name: Name,
    pub(crate) upstream: SocketAddr,
    sightings: AtomicU32,
}

impl Probe {
    /// Counts one sighting and returns the total so far.
    pub(crate) fn sighted(&self) -> u32 {
        self.sightings
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1)
    }
}

/// The probe names of this process, fixed at construction so lookups need no lock.
pub(crate) struct Probes {
    by_name: HashMap<LowerName, Probe>,
}

impl Probes {
    pub(crate) fn new(upstreams: &[SocketAddr]) -> Self {
        let mut rng = rand::rng();
        let mut by_name = HashMap::with_capacity(upstreams.len());
        for &upstream in upstreams {
            let text = format!(
                "{}.{}.{PROBE_SUFFIX}",
                rng.random::<u64>(),
                rng.random::<u64>()
            );
            // Two decimal labels and a fixed suffix always parse; skipping
            // on the impossible error only loses loop detection for one upstream.
            let Ok(name) = Name::from_ascii(&text) else {
                continue;
            };
            by_name.insert(
                LowerName::new(&name),
                Probe {
                    name,
                    upstream,
                    sightings: AtomicU32::new(0),
                },
            );
        }
        Self { by_name }
    }

    pub(crate) fn get(&self, name: &LowerName) -> Option<&Probe> {
        self.by_name.get(name)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Probe> {
        self.by_name.values()
    }
}
