//! `/health`, `/ready` and `/metrics` on one HTTP listener, with CoreDNS's
//! metric names and labels (`coredns_dns_requests_total`,
//! `coredns_dns_responses_total`, `coredns_dns_request_duration_seconds`,
//! ... and the forwarder's `coredns_cache_*` and `coredns_proxy_*`), so
//! dashboards built for CoreDNS work unchanged.
//!
//! Label values are `&'static str`: a query bumps its counters without
//! allocating.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use ferry_daemon::http::text;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tracing::warn;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub server: &'static str,
    pub zone: &'static str,
    pub view: &'static str,
    pub proto: &'static str,
    pub family: &'static str,
    pub r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabels {
    pub server: &'static str,
    pub zone: &'static str,
    pub view: &'static str,
    pub rcode: &'static str,
    pub plugin: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabels {
    pub server: &'static str,
    pub zone: &'static str,
    pub view: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SizeLabels {
    pub server: &'static str,
    pub zone: &'static str,
    pub view: &'static str,
    pub proto: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    revision: &'static str,
    goversion: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabels {
    server: &'static str,
    zone: &'static str,
    view: &'static str,
    name: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// CoreDNS's `plugin.TimeBuckets`: 0.25 ms doubling to 8.192 s.
fn time_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.00025, 2.0, 16))
}

/// CoreDNS's size buckets, in bytes.
fn size_histogram() -> Histogram {
    Histogram::new([
        0.0, 100.0, 200.0, 300.0, 400.0, 511.0, 1023.0, 2047.0, 4095.0, 8291.0, 16e3, 32e3, 48e3,
        64e3,
    ])
}

/// A family's metrics by a small index (a label combination), each taken
/// from the family once: the query path then bumps it without hashing
/// labels or taking the family's lock.
pub struct Slots<M> {
    slots: Box<[OnceLock<M>]>,
}

impl<M: Clone> Slots<M> {
    fn new(n: usize) -> Self {
        Self {
            slots: (0..n).map(|_| OnceLock::new()).collect(),
        }
    }

    /// The metric for slot `i`, made by `make` the first time.
    pub fn get(&self, i: usize, make: impl FnOnce() -> M) -> Option<&M> {
        Some(self.slots.get(i)?.get_or_init(make))
    }
}

/// Who answered, CoreDNS's `plugin` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plugin {
    /// The server itself (errors).
    Server = 0,
    Kubernetes = 1,
    Forward = 2,
}

impl Plugin {
    pub fn label(self) -> &'static str {
        match self {
            Plugin::Server => "",
            Plugin::Kubernetes => "kubernetes",
            Plugin::Forward => "forward",
        }
    }
}

/// CoreDNS's `type` label values; anything else is `other`, the last.
pub const TYPE_LABELS: [&str; 18] = [
    "A", "AAAA", "CNAME", "DNSKEY", "DS", "MX", "NSEC3", "NSEC", "NS", "PTR", "RRSIG", "SOA",
    "SRV", "TXT", "IXFR", "AXFR", "ANY", "other",
];
/// The rcodes given labels; anything else is `OTHER`, the last.
pub const RCODE_LABELS: [&str; 8] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "BADVERS", "OTHER",
];

/// The server's own metrics; the forwarder registers its own beside them.
pub struct DnsMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub responses: Family<ResponseLabels, Counter>,
    pub duration: HistogramFamily<ServerLabels>,
    pub request_size: HistogramFamily<SizeLabels>,
    pub do_requests: Family<ServerLabels, Counter>,
    /// By (proto, family, type).
    request_slots: Slots<Counter>,
    /// By (rcode, plugin).
    response_slots: Slots<Counter>,
    /// By proto.
    size_slots: Slots<Histogram>,
    duration_slot: Slots<Histogram>,
    do_slot: Slots<Counter>,
    /// The `server` label: `dns://<listen address>`, as CoreDNS writes it.
    pub server: &'static str,
}

impl std::fmt::Debug for DnsMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DnsMetrics")
    }
}

/// CoreDNS's `server` label for a listen address (`dns://:53` for every
/// address).
pub fn server_label(listen: SocketAddr) -> String {
    if listen.ip().is_unspecified() {
        format!("dns://:{}", listen.port())
    } else {
        format!("dns://{listen}")
    }
}

impl DnsMetrics {
    /// Registers everything in `registry`; `server` is kept for the life of
    /// the process (one label value, made once).
    pub fn register(registry: &mut Registry, server: String) -> Self {
        let server: &'static str = Box::leak(server.into_boxed_str());
        let m = Self {
            requests: Family::default(),
            responses: Family::default(),
            duration: Family::new_with_constructor(time_histogram),
            request_size: Family::new_with_constructor(size_histogram),
            do_requests: Family::default(),
            request_slots: Slots::new(2 * 2 * TYPE_LABELS.len()),
            response_slots: Slots::new(RCODE_LABELS.len() * 3),
            size_slots: Slots::new(2),
            duration_slot: Slots::new(1),
            do_slot: Slots::new(1),
            server,
        };
        // prometheus-client adds `_total` to counters itself.
        registry.register(
            "coredns_dns_requests",
            "Counter of DNS requests made per zone, protocol and family",
            m.requests.clone(),
        );
        registry.register(
            "coredns_dns_responses",
            "Counter of response status codes",
            m.responses.clone(),
        );
        registry.register(
            "coredns_dns_request_duration_seconds",
            "Histogram of the time (in seconds) each request took per zone",
            m.duration.clone(),
        );
        registry.register(
            "coredns_dns_request_size_bytes",
            "Size of the EDNS0 UDP buffer in bytes (64K for TCP) per zone and protocol",
            m.request_size.clone(),
        );
        registry.register(
            "coredns_dns_do_requests",
            "Counter of DNS requests with DO bit set per zone",
            m.do_requests.clone(),
        );
        let build: Family<BuildLabels, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                revision: "ferry-dns",
                goversion: "none",
            })
            .set(1);
        registry.register(
            "coredns_build_info",
            "A metric with a constant '1' value labeled by version, revision, and goversion from which CoreDNS was built",
            build,
        );
        let plugins: Family<PluginLabels, Gauge> = Family::default();
        for name in [
            "kubernetes",
            "forward",
            "cache",
            "loop",
            "health",
            "ready",
            "prometheus",
            "loadbalance",
        ] {
            plugins
                .get_or_create(&PluginLabels {
                    server,
                    zone: ".",
                    view: "",
                    name,
                })
                .set(1);
        }
        registry.register(
            "coredns_plugin_enabled",
            "A metric that indicates whether a plugin is enabled on per server and zone basis",
            plugins,
        );
        m
    }
}

fn proto_label(tcp: bool) -> &'static str {
    if tcp { "tcp" } else { "udp" }
}

impl DnsMetrics {
    fn server_labels(&self) -> ServerLabels {
        ServerLabels {
            server: self.server,
            zone: ".",
            view: "",
        }
    }

    /// A request: its transport, address family, type (an index of
    /// [`TYPE_LABELS`]), size and DO bit.
    pub fn request(&self, tcp: bool, ipv6: bool, qtype: usize, size: usize, dnssec_ok: bool) {
        let i = (usize::from(tcp) * 2 + usize::from(ipv6)) * TYPE_LABELS.len() + qtype;
        let labels = || RequestLabels {
            server: self.server,
            zone: ".",
            view: "",
            proto: proto_label(tcp),
            family: if ipv6 { "2" } else { "1" },
            r#type: TYPE_LABELS.get(qtype).copied().unwrap_or("other"),
        };
        if let Some(c) = self
            .request_slots
            .get(i, || self.requests.get_or_create(&labels()).clone())
        {
            c.inc();
        }
        let size_labels = || SizeLabels {
            server: self.server,
            zone: ".",
            view: "",
            proto: proto_label(tcp),
        };
        if let Some(h) = self.size_slots.get(usize::from(tcp), || {
            self.request_size.get_or_create(&size_labels()).clone()
        }) {
            h.observe(size as f64);
        }
        if dnssec_ok
            && let Some(c) = self.do_slot.get(0, || {
                self.do_requests
                    .get_or_create(&self.server_labels())
                    .clone()
            })
        {
            c.inc();
        }
    }

    /// A response: its rcode (an index of [`RCODE_LABELS`]), who wrote it,
    /// and how long the request took.
    pub fn response(&self, rcode: usize, plugin: Plugin, seconds: f64) {
        let i = rcode * 3 + plugin as usize;
        let labels = || ResponseLabels {
            server: self.server,
            zone: ".",
            view: "",
            rcode: RCODE_LABELS.get(rcode).copied().unwrap_or("OTHER"),
            plugin: plugin.label(),
        };
        if let Some(c) = self
            .response_slots
            .get(i, || self.responses.get_or_create(&labels()).clone())
        {
            c.inc();
        }
        if let Some(h) = self.duration_slot.get(0, || {
            self.duration.get_or_create(&self.server_labels()).clone()
        }) {
            h.observe(seconds);
        }
    }
}

/// What the HTTP endpoints read.
pub struct Endpoints {
    pub registry: Registry,
    /// `/ready`: the watches have listed once.
    pub ready: Box<dyn Fn() -> bool + Send + Sync>,
}

impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Endpoints")
    }
}

fn respond(endpoints: &Endpoints, path: &str) -> Response<Full<Bytes>> {
    match path {
        "/health" => text(StatusCode::OK, "OK"),
        "/ready" => {
            if (endpoints.ready)() {
                text(StatusCode::OK, "OK")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "kubernetes")
            }
        }
        "/metrics" => {
            let mut body = String::new();
            match encode(&mut body, &endpoints.registry) {
                Ok(()) => {
                    let mut r = text(StatusCode::OK, body);
                    r.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static(
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        ),
                    );
                    r
                }
                Err(error) => {
                    warn!(%error, "encoding metrics");
                    text(StatusCode::INTERNAL_SERVER_ERROR, "encoding metrics failed")
                }
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found"),
    }
}

/// Serves the endpoints on `listener` under `limits` until the process
/// ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    endpoints: Arc<Endpoints>,
    limits: ferry_daemon::http::HttpLimits,
) {
    ferry_daemon::http::serve(
        listener,
        "metrics",
        limits,
        move |req: Request<Incoming>| {
            let response = respond(&endpoints, req.uri().path());
            async move { response }
        },
    )
    .await;
}
