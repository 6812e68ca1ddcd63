//! Forwarding of names outside the cluster zone to upstream resolvers, with
//! an answer cache and loop detection: the work of CoreDNS's `forward`,
//! `cache` and `loop` plugins in the default Corefile, with their metrics.
//!
//! - Upstreams are tried in order. Each attempt uses a fresh UDP socket on an
//!   ephemeral port with a random id, and retries the same upstream over TCP
//!   when the answer is truncated. A timeout, a network error, or a SERVFAIL
//!   or REFUSED answer moves on to the next upstream.
//! - If every upstream fails and at least one of them answered with SERVFAIL
//!   or REFUSED, the last such answer is returned (uncached), so the client
//!   sees the upstream's rcode; if none answered at all,
//!   [`ForwardError::AllFailed`] carries the last error.
//! - The cache is keyed by (lowercased name, type, class, DO, CD); positive
//!   answers live for their smallest TTL, NXDOMAIN/NODATA for the SOA's
//!   negative TTL, each capped by the settings. Unlike CoreDNS there is no
//!   minimum TTL, prefetch or serve-stale.
//! - At most `max_concurrent` questions are upstream at once (CoreDNS's
//!   `max_concurrent`); one more is refused at once
//!   ([`ForwardError::Overloaded`], which the server answers REFUSED) and
//!   counted in `coredns_forward_max_concurrent_rejects_total`. Each question
//!   upstream holds one socket at a time, so the sockets the forwarder opens
//!   are bounded by the same number, whatever the upstreams do. Cache hits
//!   and the cluster zone never wait for it.
//! - Loop detection: [`Forwarder::probe_for_loops`] queries each upstream for
//!   a random probe name; the server reports incoming queries for that name
//!   through [`Forwarder::is_probe`], and more than two sightings mean an
//!   upstream forwards back to us. From then on [`Forwarder::forward`] fails
//!   at once instead of feeding the loop.

mod cache;
mod metrics;
mod probe;
mod upstream;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_daemon::logging::LogLimit;
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{LowerName, RecordType};
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;
use tracing::{debug, error, info, warn};

use self::cache::{Cache, CacheKey, EntryKind};
use self::metrics::ForwardMetrics;
use self::probe::{MAX_SIGHTINGS, Probes};
use self::upstream::{AttemptError, Proto};

/// How many times each upstream is probed at startup. More than
/// [`MAX_SIGHTINGS`] so a loop is seen even if one probe is lost.
const PROBE_ROUNDS: u32 = 4;

/// Pause between probe rounds.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// How the forwarder reaches upstreams and caches their answers.
#[derive(Clone, Debug)]
pub struct ForwardSettings {
    /// Tried in order, failing over.
    pub upstreams: Vec<SocketAddr>,
    /// Per upstream attempt (each of UDP and the TCP retry).
    pub timeout: Duration,
    /// Cache entries; 0 disables the cache.
    pub cache_capacity: usize,
    /// Cap on how long a positive answer is cached.
    pub cache_max_ttl: Duration,
    /// Cap on how long an NXDOMAIN/NODATA answer is cached.
    pub cache_max_denial_ttl: Duration,
    /// The metric label `server`, e.g. `dns://:53`.
    pub server: String,
    /// The metric label `zones` of the cache metrics.
    pub zone: String,
    /// Questions upstream at once; more are refused.
    pub max_concurrent: usize,
}

impl Default for ForwardSettings {
    /// CoreDNS's defaults: 2 s per attempt, 9984 entries, 3600 s / 30 s caps.
    fn default() -> Self {
        Self {
            upstreams: Vec::new(),
            timeout: Duration::from_secs(2),
            cache_capacity: 9984,
            cache_max_ttl: Duration::from_secs(3600),
            cache_max_denial_ttl: Duration::from_secs(30),
            server: "dns://:53".to_owned(),
            zone: ".".to_owned(),
            max_concurrent: DEFAULT_MAX_CONCURRENT,
        }
    }
}

/// Why a question could not be answered by forwarding.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no upstream resolvers are configured")]
    NoUpstreams,
    #[error("every upstream failed, the last with: {last}")]
    AllFailed { last: String },
    #[error("a forwarding loop through the upstreams was detected; not forwarding")]
    Looped,
    #[error("the query cannot be forwarded: {0}")]
    Malformed(String),
    #[error("{0} queries are already upstream")]
    Overloaded(usize),
}

/// CoreDNS's recommended `max_concurrent`.
pub const DEFAULT_MAX_CONCURRENT: usize = 1000;

/// The header bits of the client's query that matter upstream.
#[derive(Clone, Copy, Debug, Default)]
pub struct QueryFlags {
    pub recursion_desired: bool,
    pub checking_disabled: bool,
    pub dnssec_ok: bool,
}

/// Forwards questions upstream through a shared cache. `Send + Sync`; share
/// it through an `Arc`.
pub struct Forwarder {
    settings: ForwardSettings,
    cache: Option<Cache>,
    metrics: ForwardMetrics,
    probes: Probes,
    looped: AtomicBool,
    /// One permit per question upstream.
    upstream_slots: Semaphore,
    failures_log: Mutex<LogLimit>,
}

impl Forwarder {
    pub fn new(settings: ForwardSettings) -> Self {
        let metrics = ForwardMetrics::new(&settings.server, &settings.zone);
        let cache = Cache::new(
            settings.cache_capacity,
            settings.cache_max_ttl,
            settings.cache_max_denial_ttl,
            metrics.entries_gauge(EntryKind::Success),
            metrics.entries_gauge(EntryKind::Denial),
        );
        let probes = Probes::new(&settings.upstreams);
        Self {
            cache,
            metrics,
            upstream_slots: Semaphore::new(
                settings.max_concurrent.clamp(1, Semaphore::MAX_PERMITS),
            ),
            probes,
            looped: AtomicBool::new(false),
            failures_log: Mutex::new(LogLimit::new(Duration::from_secs(1))),
            settings,
        }
    }

    pub fn register_metrics(&self, registry: &mut Registry) {
        self.metrics.register(registry);
    }

    /// One question answered from the cache or the upstreams: the upstream's
    /// response without OPT (the server adds its own), TTLs counted down for
    /// cached entries. The id is meaningless; the caller sets it.
    pub async fn forward(&self, query: &Query, flags: QueryFlags) -> Result<Message, ForwardError> {
        if self.looped() {
            return Err(ForwardError::Looped);
        }
        if self.settings.upstreams.is_empty() {
            return Err(ForwardError::NoUpstreams);
        }
        let key = CacheKey::new(query, flags);
        if let Some(cache) = &self.cache {
            if let Some((message, kind)) = cache.get(&key, Instant::now()) {
                self.metrics.cache_hit(kind);
                return Ok(with_question(message, query));
            }
            self.metrics.cache_miss();
        }

        let Ok(_slot) = self.upstream_slots.try_acquire() else {
            self.metrics.max_concurrent_reject();
            return Err(ForwardError::Overloaded(self.settings.max_concurrent));
        };
        let mut last_error = String::new();
        let mut last_failure_response = None;
        for &upstream in &self.settings.upstreams {
            // A loop may be detected while we wait on a slow upstream.
            if self.looped() {
                return Err(ForwardError::Looped);
            }
            let response = match self.attempt(upstream, query, flags).await {
                Ok(response) => response,
                Err(AttemptError::Encode(reason)) => return Err(ForwardError::Malformed(reason)),
                Err(e) => {
                    // Per attempt only at debug: a dead first upstream would
                    // otherwise log on every query; the metrics show it.
                    debug!(%upstream, name = %query.name, qtype = %query.query_type, error = %e, "upstream attempt failed, trying the next");
                    last_error = format!("{upstream}: {e}");
                    continue;
                }
            };
            let rcode = response.metadata.response_code;
            if matches!(rcode, ResponseCode::ServFail | ResponseCode::Refused) {
                debug!(%upstream, name = %query.name, qtype = %query.query_type, %rcode, "upstream answered with an error, trying the next");
                last_error = format!("{upstream}: answered {rcode}");
                last_failure_response = Some(response);
                continue;
            }
            let response = clean(response, flags);
            let response = match &self.cache {
                Some(cache) => cache.insert(key, response, Instant::now()),
                None => response,
            };
            return Ok(with_question(response, query));
        }
        // Once a second at most: a dead upstream fails every query.
        let due = self
            .failures_log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .due(Instant::now());
        if let Some(suppressed) = due {
            warn!(name = %query.name, qtype = %query.query_type, upstreams = ?self.settings.upstreams, last_error = %last_error, suppressed, "every upstream failed");
        }
        match last_failure_response {
            Some(response) => Ok(with_question(clean(response, flags), query)),
            None => Err(ForwardError::AllFailed { last: last_error }),
        }
    }

    /// One upstream exchange, with its metrics.
    async fn attempt(
        &self,
        upstream: SocketAddr,
        query: &Query,
        flags: QueryFlags,
    ) -> Result<Message, AttemptError> {
        self.metrics.attempt(upstream);
        let started = tokio::time::Instant::now();
        let (proto, result) =
            upstream::exchange(upstream, query, flags, self.settings.timeout).await;
        if proto == Proto::Tcp {
            self.metrics.tcp_retry(upstream);
        }
        let response = result?;
        self.metrics.response(
            upstream,
            response.metadata.response_code,
            started.elapsed().as_secs_f64(),
        );
        Ok(response)
    }

    /// Sends each upstream its probe a few times, stopping early once a loop
    /// is seen. Spawn once, after the server's sockets are listening, since a
    /// looping upstream sends the probe back to them.
    pub async fn probe_for_loops(self: Arc<Self>) {
        let flags = QueryFlags {
            recursion_desired: true,
            ..QueryFlags::default()
        };
        for round in 0..PROBE_ROUNDS {
            if round > 0 {
                tokio::time::sleep(PROBE_INTERVAL).await;
            }
            for probe in self.probes.iter() {
                if self.looped() {
                    return;
                }
                let query = Query::query(probe.name.clone(), RecordType::HINFO);
                // The answer is irrelevant: only whether the probe comes back
                // to us matters, which `is_probe` counts.
                let (_, result) =
                    upstream::exchange(probe.upstream, &query, flags, self.settings.timeout).await;
                match result {
                    Ok(response) => {
                        debug!(upstream = %probe.upstream, round, rcode = %response.metadata.response_code, "loop probe answered")
                    }
                    Err(e) => {
                        debug!(upstream = %probe.upstream, round, error = %e, "loop probe failed")
                    }
                }
            }
        }
        if !self.looped() {
            info!(upstreams = ?self.settings.upstreams, "no forwarding loop detected");
        }
    }

    /// Whether `name` is one of this process's loop probes; counts the
    /// sighting. The server calls it before forwarding any name outside its
    /// zone and answers SERVFAIL when it is true.
    pub fn is_probe(&self, name: &LowerName) -> bool {
        let Some(probe) = self.probes.get(name) else {
            return false;
        };
        let sightings = probe.sighted();
        debug!(upstream = %probe.upstream, sightings, "loop probe came back to us");
        if sightings > MAX_SIGHTINGS && !self.looped.swap(true, Ordering::SeqCst) {
            self.metrics.set_looped();
            error!(
                upstream = %probe.upstream,
                upstreams = ?self.settings.upstreams,
                probe = %probe.name,
                sightings,
                "forwarding loop detected: the upstream sends our queries back to us; forwarded queries now fail with SERVFAIL"
            );
        }
        true
    }

    /// Whether a forwarding loop was detected.
    pub fn looped(&self) -> bool {
        self.looped.load(Ordering::SeqCst)
    }
}

/// The question section as the client spelled it: a cached entry carries the
/// first asker's case, and error answers may carry no question at all.
fn with_question(mut response: Message, query: &Query) -> Message {
    response.queries = vec![query.clone()];
    response
}

/// The upstream's message as we hand it out: no OPT or signature (the
/// server adds its own), no DNSSEC records the client did not ask for.
fn clean(mut response: Message, flags: QueryFlags) -> Message {
    response.edns = None;
    response.signature = None;
    response.maybe_strip_dnssec_records(flags.dnssec_ok)
}
