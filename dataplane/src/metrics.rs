//! `/healthz`, `/readyz` and `/metrics` (Prometheus text format) for the
//! agent. Metric names follow kube-proxy's where one exists, so existing
//! dashboards and alerts keep working; per-service counters and map fill
//! levels come from the maps.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_daemon::http::HttpLimits;
use ferry_daemon::watch::DecodeErrors;
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
use tokio::sync::{mpsc, oneshot};

use crate::observe::event::reason_name;
use ferry_ebpf_common::policy::{PolicyStats, denies};

/// A service port's counters (`namespace/name:port`), per family. Kept
/// for every service port in four families: the name is shared between
/// them, the rest is static.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub service: std::sync::Arc<str>,
    /// `IPv4` or `IPv6`.
    pub family: &'static str,
    /// `internal` (in-cluster and socket-level) or `external` traffic.
    pub traffic: &'static str,
}

/// `ferry_policy_flows{direction, verdict, reason}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyFlowLabels {
    /// `ingress` or `egress`, the pod's.
    pub direction: &'static str,
    /// `allowed` or `denied`.
    pub verdict: &'static str,
    /// As `ferry-agent observe` says it: `policy-allowed`,
    /// `not-isolated`, `from-node`, `to-self`, `policy-denied`,
    /// `spoofed-address`.
    pub reason: &'static str,
}

/// `ferry_observe_events{outcome}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `written`, `rate_limited` or `ring_full`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabels {
    pub map: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FamilyLabels {
    pub family: String,
}

/// Everything the agent reports, shared by the proxy loop and the server.
pub struct Metrics {
    registry: Registry,
    pub sync_duration: Histogram,
    pub programming_latency: Histogram,
    pub last_sync: Gauge<f64, AtomicU64>,
    pub sync_errors: Counter,
    pub connections: Family<ServiceLabels, Counter>,
    pub rejected: Family<ServiceLabels, Counter>,
    pub packets: Family<ServiceLabels, Counter>,
    pub bytes: Family<ServiceLabels, Counter>,
    pub map_entries: Family<MapLabels, Gauge>,
    pub map_capacity: Family<MapLabels, Gauge>,
    pub flows_expired: Counter,
    /// L2 announcement: LoadBalancer IPs this node answers ARP/NDP for.
    pub l2_held: Gauge,
    /// L2 announcement: frames that did not parse (dropped).
    pub l2_malformed: Counter,
    /// L2 announcement: socket reads and writes that failed.
    pub l2_errors: Counter,
    l2_replies_v4: Counter,
    l2_replies_v6: Counter,
    /// Objects from the API skipped because they did not decode.
    pub decode_errors: DecodeErrors,
    /// NetworkPolicy: from a change to the maps written.
    pub policy_sync_duration: Histogram,
    /// NetworkPolicy: policies failed closed (isolating, allowing nothing).
    pub policy_failed_closed: Gauge,
    /// NetworkPolicy: allow entries programmed.
    pub policy_rules: Gauge,
    /// NetworkPolicy: new flows judged at this node's pods.
    pub policy_flows: Family<PolicyFlowLabels, Counter>,
    /// Flow events written and refused while watched.
    pub observe_events: Family<OutcomeLabels, Counter>,
    /// Clients connected to the observe socket.
    pub observe_watchers: Gauge,
    ready: AtomicBool,
    /// Unix seconds of the proxy loop's last pass, for `/healthz`.
    heartbeat: AtomicU64,
    /// Asks the proxy loop to read the maps' counters into the metrics, so
    /// a scrape sees current values without the loop polling every group.
    refresh: OnceLock<mpsc::Sender<oneshot::Sender<()>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        // kube-proxy's buckets: 1 ms doubling to ~16 s.
        let sync_duration = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        let programming_latency = Histogram::new(exponential_buckets(0.001, 2.0, 20));
        let last_sync = Gauge::<f64, AtomicU64>::default();
        let sync_errors = Counter::default();
        let connections = Family::<ServiceLabels, Counter>::default();
        let rejected = Family::<ServiceLabels, Counter>::default();
        let packets = Family::<ServiceLabels, Counter>::default();
        let bytes = Family::<ServiceLabels, Counter>::default();
        let map_entries = Family::<MapLabels, Gauge>::default();
        let map_capacity = Family::<MapLabels, Gauge>::default();
        let flows_expired = Counter::default();
        let l2_held = Gauge::default();
        let l2_malformed = Counter::default();
        let l2_errors = Counter::default();
        let l2_replies = Family::<FamilyLabels, Counter>::default();
        let family = |f: &str| FamilyLabels {
            family: f.to_owned(),
        };
        let l2_replies_v4 = l2_replies.get_or_create(&family("IPv4")).clone();
        let l2_replies_v6 = l2_replies.get_or_create(&family("IPv6")).clone();
        registry.register(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            sync_duration.clone(),
        );
        registry.register(
            "kubeproxy_network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            programming_latency.clone(),
        );
        registry.register(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            last_sync.clone(),
        );
        registry.register(
            "ferry_sync_errors",
            "Service programming attempts that failed and will be retried",
            sync_errors.clone(),
        );
        registry.register(
            "ferry_service_connections",
            "New connections translated to a backend (socket-level and per-packet)",
            connections.clone(),
        );
        registry.register(
            "ferry_service_rejected",
            "Connections refused or dropped because the service had no endpoints",
            rejected.clone(),
        );
        registry.register(
            "ferry_service_packets",
            "Packets translated per-packet at TC",
            packets.clone(),
        );
        registry.register(
            "ferry_service_bytes",
            "Bytes translated per-packet at TC",
            bytes.clone(),
        );
        registry.register(
            "ferry_bpf_map_entries",
            "Entries in each BPF map",
            map_entries.clone(),
        );
        registry.register(
            "ferry_bpf_map_capacity",
            "Maximum entries of each BPF map",
            map_capacity.clone(),
        );
        registry.register(
            "ferry_conntrack_expired",
            "Conntrack entries removed for idleness",
            flows_expired.clone(),
        );
        registry.register(
            "ferry_l2_announced_ips",
            "LoadBalancer IPs this node holds the L2 lease of and answers ARP/NDP for",
            l2_held.clone(),
        );
        registry.register(
            "ferry_l2_replies",
            "ARP replies (IPv4) and Neighbor Advertisements (IPv6) sent for held IPs",
            l2_replies,
        );
        registry.register(
            "ferry_l2_malformed_frames",
            "ARP and Neighbor Solicitation frames dropped as malformed",
            l2_malformed.clone(),
        );
        registry.register(
            "ferry_l2_socket_errors",
            "Failed reads and writes on the L2 announcement sockets",
            l2_errors.clone(),
        );
        let decode_errors = DecodeErrors::default();
        decode_errors.register(&mut registry);
        let policy_sync_duration = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        let policy_failed_closed = Gauge::default();
        let policy_rules = Gauge::default();
        let policy_flows = Family::<PolicyFlowLabels, Counter>::default();
        registry.register(
            "ferry_policy_sync_duration_seconds",
            "NetworkPolicy: from a change to this node's policy maps written",
            policy_sync_duration.clone(),
        );
        registry.register(
            "ferry_policy_failed_closed",
            "NetworkPolicies that isolate their pods but allow nothing (invalid or over a limit; the agent logs why)",
            policy_failed_closed.clone(),
        );
        registry.register(
            "ferry_policy_rule_entries",
            "NetworkPolicy allow entries programmed for this node's pods",
            policy_rules.clone(),
        );
        registry.register(
            "ferry_policy_flows",
            "New flows judged by NetworkPolicy at this node's pods, by direction, verdict and reason",
            policy_flows.clone(),
        );
        let observe_events = Family::<OutcomeLabels, Counter>::default();
        let observe_watchers = Gauge::default();
        registry.register(
            "ferry_observe_events",
            "Flow events the programs wrote for `ferry-agent observe`, or refused (over the rate, ring full)",
            observe_events.clone(),
        );
        registry.register(
            "ferry_observe_watchers",
            "Clients connected to the agent's observe socket",
            observe_watchers.clone(),
        );
        Self {
            decode_errors,
            observe_events,
            observe_watchers,
            policy_sync_duration,
            policy_failed_closed,
            policy_rules,
            policy_flows,
            registry,
            sync_duration,
            programming_latency,
            last_sync,
            sync_errors,
            connections,
            rejected,
            packets,
            bytes,
            map_entries,
            map_capacity,
            flows_expired,
            l2_held,
            l2_malformed,
            l2_errors,
            l2_replies_v4,
            l2_replies_v6,
            ready: AtomicBool::new(false),
            heartbeat: AtomicU64::new(0),
            refresh: OnceLock::new(),
        }
    }

    /// Where scrapes ask for fresh counters (the proxy loop's side).
    pub fn refresh_requests(&self) -> mpsc::Receiver<oneshot::Sender<()>> {
        let (tx, rx) = mpsc::channel(8);
        let _ = self.refresh.set(tx);
        rx
    }

    /// Has the proxy loop read the counters; gives up after a second.
    async fn refreshed(&self) {
        let Some(tx) = self.refresh.get() else { return };
        let (done, wait) = oneshot::channel();
        if tx.try_send(done).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(1), wait).await;
        }
    }

    /// The L2 reply counter of `family` (`IPv4`: ARP, `IPv6`: NDP).
    pub fn l2_replies(&self, family: &str) -> &Counter {
        if family == "IPv6" {
            &self.l2_replies_v6
        } else {
            &self.l2_replies_v4
        }
    }

    /// The first full sync is done: `/readyz` turns 200.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// The proxy loop is alive.
    pub fn beat(&self) {
        self.heartbeat.store(unix_now() as u64, Ordering::Relaxed);
    }

    /// A NetworkPolicy pass is done.
    pub fn policy_synced(&self, took: Duration, failed_closed: usize, rules: usize) {
        self.policy_sync_duration.observe(took.as_secs_f64());
        self.policy_failed_closed
            .set(i64::try_from(failed_closed).unwrap_or(i64::MAX));
        self.policy_rules
            .set(i64::try_from(rules).unwrap_or(i64::MAX));
    }

    /// Brings `ferry_policy_flows` up to the programs' counts (summed over
    /// CPUs).
    pub fn set_policy_flows(&self, stats: &PolicyStats) {
        for (i, &total) in stats.counts.iter().enumerate() {
            let reason = u8::try_from(i / 2).unwrap_or(u8::MAX);
            if total == 0 && reason_name(reason) == "unknown" {
                continue;
            }
            let labels = PolicyFlowLabels {
                direction: if i % 2 == 0 { "ingress" } else { "egress" },
                verdict: if denies(reason) { "denied" } else { "allowed" },
                reason: reason_name(reason),
            };
            let c = self.policy_flows.get_or_create(&labels);
            let have = c.get();
            if total > have {
                c.inc_by(total - have);
            }
        }
    }

    /// Brings `ferry_observe_events` up to the programs' totals.
    pub fn set_observe_events(&self, written: u64, rate_limited: u64, ring_full: u64) {
        for (outcome, total) in [
            ("written", written),
            ("rate_limited", rate_limited),
            ("ring_full", ring_full),
        ] {
            let c = self.observe_events.get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            });
            let have = c.get();
            if total > have {
                c.inc_by(total - have);
            }
        }
    }

    pub fn synced(&self, took: Duration) {
        self.sync_duration.observe(took.as_secs_f64());
        self.last_sync.set(unix_now());
    }

    pub fn set_map(&self, map: &str, entries: usize, capacity: u32) {
        let labels = MapLabels {
            map: map.to_owned(),
        };
        self.map_entries
            .get_or_create(&labels)
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
        self.map_capacity
            .get_or_create(&labels)
            .set(i64::from(capacity));
    }

    pub(crate) fn healthy(&self) -> bool {
        // The loop wakes at least every second; a minute of silence means
        // it is stuck.
        let last = self.heartbeat.load(Ordering::Relaxed) as f64;
        last > 0.0 && unix_now() - last < 60.0
    }

    fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

fn reply(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp
}

async fn route(metrics: &Metrics, path: &str) -> Response<Full<Bytes>> {
    let ok = |good: bool, what: &str| {
        if good {
            reply(StatusCode::OK, "ok\n".into())
        } else {
            reply(StatusCode::SERVICE_UNAVAILABLE, format!("{what}\n"))
        }
    };
    match path {
        "/healthz" | "/livez" => ok(metrics.healthy(), "proxy loop not running"),
        "/readyz" => ok(
            metrics.ready.load(Ordering::Relaxed) && metrics.healthy(),
            "service maps not synced yet",
        ),
        "/metrics" => {
            metrics.refreshed().await;
            let mut resp = reply(StatusCode::OK, metrics.render());
            resp.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            resp
        }
        _ => reply(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

/// kube-proxy's own health answer (its `--healthz-bind-address`, port
/// 10256, which load balancers and kubelet probes read): 200 while the
/// proxy loop runs, 503 once it has been silent for a minute, with when it
/// last ran.
fn proxy_health(metrics: &Metrics, path: &str) -> Response<Full<Bytes>> {
    let stamp = |secs: u64| {
        jiff::Timestamp::from_second(i64::try_from(secs).unwrap_or(0))
            .map(|t| t.to_string())
            .unwrap_or_default()
    };
    let last = metrics.heartbeat.load(Ordering::Relaxed);
    let now = unix_now() as u64;
    let mut body = serde_json::json!({"lastUpdated": stamp(last), "currentTime": stamp(now)});
    match path {
        "/healthz" => body["nodeEligible"] = serde_json::json!(true),
        "/livez" => {}
        _ => return reply(StatusCode::NOT_FOUND, "not found\n".into()),
    }
    let code = if metrics.healthy() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut resp = reply(code, body.to_string());
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Serves kube-proxy's `/healthz` and `/livez` on `addr` until the process
/// ends.
pub async fn serve_proxy_health(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    limits: HttpLimits,
) -> anyhow::Result<()> {
    serve_on(
        addr,
        "--healthz-bind-address",
        "proxy health",
        limits,
        move |path| {
            let resp = proxy_health(&metrics, &path);
            async move { resp }
        },
    )
    .await
}

/// Serves the endpoints on `addr` under `limits` until the process ends.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    limits: HttpLimits,
) -> anyhow::Result<()> {
    serve_on(
        addr,
        "--metrics-bind-address",
        "metrics",
        limits,
        move |path| {
            let metrics = metrics.clone();
            async move { route(&metrics, &path).await }
        },
    )
    .await
}

/// Binds `addr` (set by `flag`) and answers each request by its path.
async fn serve_on<F, Fut>(
    addr: SocketAddr,
    flag: &str,
    what: &'static str,
    limits: HttpLimits,
    answer: F,
) -> anyhow::Result<()>
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    use anyhow::Context as _;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {flag} {addr}"))?;
    tracing::info!(%addr, server = what, "serving");
    ferry_daemon::http::serve(listener, what, limits, move |req: Request<Incoming>| {
        answer(req.uri().path().to_owned())
    })
    .await;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ferry_ebpf_common::observe::{REASON_POLICY_ALLOWED, REASON_POLICY_DENIED, REASON_SPOOFED};

    #[test]
    fn counters_follow_the_programs_totals_and_never_go_back() {
        let m = Metrics::new();
        m.set_observe_events(5, 2, 0);
        m.set_observe_events(7, 2, 1);
        // A total lower than seen (a restarted map) moves nothing.
        m.set_observe_events(3, 0, 0);
        let mut stats = PolicyStats::default();
        stats.counts[usize::from(REASON_POLICY_ALLOWED) * 2] = 4;
        stats.counts[usize::from(REASON_POLICY_DENIED) * 2] = 1;
        stats.counts[usize::from(REASON_SPOOFED) * 2 + 1] = 2;
        m.set_policy_flows(&stats);
        let text = m.render();
        for line in [
            "ferry_observe_events_total{outcome=\"written\"} 7",
            "ferry_observe_events_total{outcome=\"rate_limited\"} 2",
            "ferry_observe_events_total{outcome=\"ring_full\"} 1",
            "ferry_policy_flows_total{direction=\"ingress\",verdict=\"allowed\",reason=\"policy-allowed\"} 4",
            "ferry_policy_flows_total{direction=\"ingress\",verdict=\"denied\",reason=\"policy-denied\"} 1",
            "ferry_policy_flows_total{direction=\"egress\",verdict=\"denied\",reason=\"spoofed-address\"} 2",
        ] {
            assert!(text.contains(line), "{line} in:\n{text}");
        }
    }
}
