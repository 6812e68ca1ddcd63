//! The forwarder's answer cache: an LRU of upstream responses, keyed by the
//! question and the DNSSEC-relevant flags, with TTLs counting down on hits.

use std::num::NonZeroUsize;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, LowerName, RData, RecordType};
use lru::LruCache;
use prometheus_client::metrics::gauge::Gauge;

use super::QueryFlags;

/// What the cache is keyed by. The DO and CD bits are part of the key because
/// the upstream's answer differs with them (RRSIGs present, validation skipped).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct CacheKey {
    name: LowerName,
    query_type: RecordType,
    query_class: DNSClass,
    dnssec_ok: bool,
    checking_disabled: bool,
}

impl CacheKey {
    pub(crate) fn new(query: &Query, flags: QueryFlags) -> Self {
        Self {
            name: LowerName::new(&query.name),
            query_type: query.query_type,
            query_class: query.query_class,
            dnssec_ok: flags.dnssec_ok,
            checking_disabled: flags.checking_disabled,
        }
    }
}

/// CoreDNS's two cache kinds, the `type` label of the cache metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EntryKind {
    Success,
    Denial,
}

impl EntryKind {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Denial => "denial",
        }
    }
}

struct Entry {
    message: Message,
    stored: Instant,
    ttl: u32,
    kind: EntryKind,
}

/// The cache proper. The mutex is only held for map operations and a clone,
/// never across an await.
pub(crate) struct Cache {
    entries: Mutex<LruCache<CacheKey, Entry>>,
    max_ttl: u32,
    max_denial_ttl: u32,
    success_entries: Gauge,
    denial_entries: Gauge,
}

impl Cache {
    /// `None` when the capacity is 0: caching disabled.
    pub(crate) fn new(
        capacity: usize,
        max_ttl: Duration,
        max_denial_ttl: Duration,
        success_entries: Gauge,
        denial_entries: Gauge,
    ) -> Option<Self> {
        let capacity = NonZeroUsize::new(capacity)?;
        Some(Self {
            entries: Mutex::new(LruCache::new(capacity)),
            max_ttl: secs_u32(max_ttl),
            max_denial_ttl: secs_u32(max_denial_ttl),
            success_entries,
            denial_entries,
        })
    }

    fn gauge(&self, kind: EntryKind) -> &Gauge {
        match kind {
            EntryKind::Success => &self.success_entries,
            EntryKind::Denial => &self.denial_entries,
        }
    }

    /// A live entry's message with every TTL reduced by the entry's age, and
    /// its kind. Expired entries are dropped and reported as a miss.
    pub(crate) fn get(&self, key: &CacheKey, now: Instant) -> Option<(Message, EntryKind)> {
        // A poisoned lock only means another thread panicked mid-operation;
        // the LRU itself is still structurally sound, so keep using it.
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = entries.get(key)?;
        let age = secs_u32(now.saturating_duration_since(entry.stored));
        if age >= entry.ttl {
            let kind = entry.kind;
            entries.pop(key);
            drop(entries);
            self.gauge(kind).dec();
            return None;
        }
        let mut message = entry.message.clone();
        let kind = entry.kind;
        drop(entries);
        for record in message
            .answers
            .iter_mut()
            .chain(message.authorities.iter_mut())
            .chain(message.additionals.iter_mut())
        {
            record.decrement_ttl(age);
        }
        Some((message, kind))
    }

    /// Stores `message` if it is cacheable, capping its record TTLs at the
    /// cache TTL (as CoreDNS does, so a client never sees a TTL longer than we
    /// keep the answer). Returns the message to hand out either way.
    pub(crate) fn insert(&self, key: CacheKey, mut message: Message, now: Instant) -> Message {
        let Some((kind, ttl)) = cacheability(&message, self.max_ttl, self.max_denial_ttl) else {
            return message;
        };
        for record in message
            .answers
            .iter_mut()
            .chain(message.authorities.iter_mut())
            .chain(message.additionals.iter_mut())
        {
            record.ttl = record.ttl.min(ttl);
        }
        let entry = Entry {
            message: message.clone(),
            stored: now,
            ttl,
            kind,
        };
        let displaced = {
            let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
            entries.push(key, entry)
        };
        self.gauge(kind).inc();
        // `push` hands back either the entry it replaced for the same key or
        // the least recently used one it evicted; either way it left the cache.
        if let Some((_, old)) = displaced {
            self.gauge(old.kind).dec();
        }
        message
    }
}

/// Whether and for how long (seconds) a response may be cached:
/// positive answers for their smallest TTL, NXDOMAIN/NODATA for the SOA's
/// negative TTL; errors, truncated answers and SOA-less denials never.
pub(crate) fn cacheability(
    message: &Message,
    max_ttl: u32,
    max_denial_ttl: u32,
) -> Option<(EntryKind, u32)> {
    if message.metadata.truncation {
        return None;
    }
    let (kind, ttl) = match message.metadata.response_code {
        ResponseCode::NoError if !message.answers.is_empty() => {
            let ttl = message
                .answers
                .iter()
                .chain(message.authorities.iter())
                .chain(message.additionals.iter())
                .map(|r| r.ttl)
                .min()?;
            (EntryKind::Success, ttl.min(max_ttl))
        }
        ResponseCode::NoError | ResponseCode::NXDomain => {
            // RFC 2308: the negative TTL is the lesser of the SOA's own TTL
            // and its MINIMUM field; without an SOA it must not be cached.
            let ttl = message
                .authorities
                .iter()
                .filter_map(|r| match &r.data {
                    RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                    _ => None,
                })
                .min()?;
            (EntryKind::Denial, ttl.min(max_denial_ttl))
        }
        _ => return None,
    };
    (ttl > 0).then_some((kind, ttl))
}

fn secs_u32(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}
