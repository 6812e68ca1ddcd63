//! The forwarder's metrics, named and labelled as CoreDNS's `cache`,
//! `forward` and proxy packages export them, so existing dashboards work.
//! Counters are registered without `_total` and help texts without the final
//! period: prometheus-client appends both.

use std::net::SocketAddr;

use hickory_proto::op::ResponseCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::cache::EntryKind;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CacheTypeLabels {
    server: String,
    r#type: &'static str,
    zones: String,
    view: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CacheLabels {
    server: String,
    zones: String,
    view: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ProxyLabels {
    proxy_name: &'static str,
    to: String,
    rcode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ProxyConnLabels {
    proxy_name: &'static str,
    to: String,
    proto: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ToLabels {
    to: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ToRcodeLabels {
    to: String,
    rcode: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// CoreDNS's proxy buckets: 0.25 ms to about 8 s, doubling.
fn proxy_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.00025, 2.0, 16))
}

/// All the forwarder's metric families. Clones share their values, so the
/// registry gets clones while the forwarder keeps updating the originals.
pub(crate) struct ForwardMetrics {
    server: String,
    zone: String,
    cache_hits: Family<CacheTypeLabels, Counter>,
    cache_misses: Family<CacheLabels, Counter>,
    cache_requests: Family<CacheLabels, Counter>,
    cache_entries: Family<CacheTypeLabels, Gauge>,
    request_duration: HistogramFamily<ProxyLabels>,
    conn_cache_misses: Family<ProxyConnLabels, Counter>,
    requests: Family<ToLabels, Counter>,
    responses: Family<ToRcodeLabels, Counter>,
    looped: Gauge,
    max_concurrent_rejects: Counter,
}

impl ForwardMetrics {
    pub(crate) fn new(server: &str, zone: &str) -> Self {
        let metrics = Self {
            server: server.to_owned(),
            zone: zone.to_owned(),
            cache_hits: Family::default(),
            cache_misses: Family::default(),
            cache_requests: Family::default(),
            cache_entries: Family::default(),
            request_duration: Family::new_with_constructor(proxy_histogram),
            conn_cache_misses: Family::default(),
            requests: Family::default(),
            responses: Family::default(),
            looped: Gauge::default(),
            max_concurrent_rejects: Counter::default(),
        };
        // Create the fixed series up front so they are exported as 0 before
        // the first query, as CoreDNS's are.
        for kind in [EntryKind::Success, EntryKind::Denial] {
            metrics
                .cache_hits
                .get_or_create_owned(&metrics.type_labels(kind));
            metrics
                .cache_entries
                .get_or_create_owned(&metrics.type_labels(kind));
        }
        metrics
            .cache_misses
            .get_or_create_owned(&metrics.cache_labels());
        metrics
            .cache_requests
            .get_or_create_owned(&metrics.cache_labels());
        metrics
    }

    fn type_labels(&self, kind: EntryKind) -> CacheTypeLabels {
        CacheTypeLabels {
            server: self.server.clone(),
            r#type: kind.label(),
            zones: self.zone.clone(),
            view: String::new(),
        }
    }

    fn cache_labels(&self) -> CacheLabels {
        CacheLabels {
            server: self.server.clone(),
            zones: self.zone.clone(),
            view: String::new(),
        }
    }

    /// The entries gauge for one kind, handed to the cache.
    pub(crate) fn entries_gauge(&self, kind: EntryKind) -> Gauge {
        self.cache_entries
            .get_or_create_owned(&self.type_labels(kind))
    }

    pub(crate) fn cache_hit(&self, kind: EntryKind) {
        self.cache_requests
            .get_or_create(&self.cache_labels())
            .inc();
        self.cache_hits.get_or_create(&self.type_labels(kind)).inc();
    }

    pub(crate) fn cache_miss(&self) {
        self.cache_requests
            .get_or_create(&self.cache_labels())
            .inc();
        self.cache_misses.get_or_create(&self.cache_labels()).inc();
    }

    /// Every attempt dials a new socket, so each is a conn-cache miss.
    pub(crate) fn attempt(&self, to: SocketAddr) {
        let to = to.to_string();
        self.requests
            .get_or_create(&ToLabels { to: to.clone() })
            .inc();
        self.conn_cache_misses
            .get_or_create(&ProxyConnLabels {
                proxy_name: "forward",
                to,
                proto: "udp",
            })
            .inc();
    }

    pub(crate) fn tcp_retry(&self, to: SocketAddr) {
        self.conn_cache_misses
            .get_or_create(&ProxyConnLabels {
                proxy_name: "forward",
                to: to.to_string(),
                proto: "tcp",
            })
            .inc();
    }

    pub(crate) fn response(&self, to: SocketAddr, rcode: ResponseCode, seconds: f64) {
        let to = to.to_string();
        let rcode = rcode_label(rcode);
        self.request_duration
            .get_or_create(&ProxyLabels {
                proxy_name: "forward",
                to: to.clone(),
                rcode: rcode.clone(),
            })
            .observe(seconds);
        self.responses
            .get_or_create(&ToRcodeLabels { to, rcode })
            .inc();
    }

    /// A query refused because `max_concurrent` were already upstream.
    pub(crate) fn max_concurrent_reject(&self) {
        self.max_concurrent_rejects.inc();
    }

    pub(crate) fn set_looped(&self) {
        self.looped.set(1);
    }

    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "coredns_cache_entries",
            "The number of elements in the cache",
            self.cache_entries.clone(),
        );
        registry.register(
            "coredns_cache_hits",
            "The count of cache hits",
            self.cache_hits.clone(),
        );
        registry.register(
            "coredns_cache_misses",
            "The count of cache misses. Deprecated, derive misses from cache hits/requests counters",
            self.cache_misses.clone(),
        );
        registry.register(
            "coredns_cache_requests",
            "The count of cache requests",
            self.cache_requests.clone(),
        );
        registry.register(
            "coredns_proxy_request_duration_seconds",
            "Histogram of the time each request took",
            self.request_duration.clone(),
        );
        registry.register(
            "coredns_proxy_conn_cache_misses",
            "Counter of connection cache misses per upstream and protocol",
            self.conn_cache_misses.clone(),
        );
        registry.register(
            "coredns_forward_requests",
            "Counter of requests made per upstream",
            self.requests.clone(),
        );
        registry.register(
            "coredns_forward_responses",
            "Counter of responses received per upstream",
            self.responses.clone(),
        );
        registry.register(
            "coredns_forward_max_concurrent_rejects",
            "Counter of the number of queries rejected because the concurrent queries were at maximum",
            self.max_concurrent_rejects.clone(),
        );
        // CoreDNS's loop plugin exits instead; we keep serving the cluster
        // zone, so the condition needs to be visible.
        registry.register(
            "ferry_dns_forward_loop_detected",
            "1 if a forwarding loop through the upstreams was detected, else 0",
            self.looped.clone(),
        );
    }
}

/// The rcode as miekg/dns spells it (CoreDNS's label values); unknown codes
/// as their number, as CoreDNS's `rcode.ToString` does.
pub(crate) fn rcode_label(rcode: ResponseCode) -> String {
    let code = u16::from(rcode);
    let name = match code {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        9 => "NOTAUTH",
        10 => "NOTZONE",
        16 => "BADSIG",
        17 => "BADKEY",
        18 => "BADTIME",
        19 => "BADMODE",
        20 => "BADNAME",
        21 => "BADALG",
        22 => "BADTRUNC",
        23 => "BADCOOKIE",
        _ => return code.to_string(),
    };
    name.to_owned()
}
