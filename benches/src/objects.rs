//! The objects both servers store: ClusterIP Services with one port and a
//! selector, EndpointSlices of three IPv4 endpoints, and the timed Services
//! of the watch fan-out, which carry their send time in an annotation.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Namespace of the bulk objects.
pub const BULK_NAMESPACE: &str = "default";
/// Namespace of the fan-out's timed writes, watched by every watcher.
pub const WATCH_NAMESPACE: &str = "bench-watch";
/// Annotation holding a timed write's send time, in nanoseconds since the
/// run's [`Clock`] origin.
pub const SENT_ANNOTATION: &str = "bench.ferry.dev/sent-ns";
/// The label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A monotonic clock shared by writers and watchers of one process, so a
/// delivery delay is one subtraction with no wall-clock steps in it.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }

    /// Nanoseconds since the origin.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Time from `sent_ns` (a [`Clock::now_ns`] reading) to now.
    pub fn since(&self, sent_ns: u64) -> Duration {
        Duration::from_nanos(self.now_ns().saturating_sub(sent_ns))
    }
}

pub fn service_name(i: usize) -> String {
    format!("svc-{i:05}")
}

pub fn timed_name(i: usize) -> String {
    format!("timed-{i:04}")
}

/// A ClusterIP Service with one port, selecting `app: NAME`.
pub fn service(name: &str, namespace: &str) -> Service {
    let selector = BTreeMap::from([("app".to_string(), name.to_string())]);
    Service {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(selector.clone()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(IntOrString::Int(8080)),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

/// A Service for the fan-out, stamped with the send time now.
pub fn timed_service(i: usize, clock: &Clock) -> Service {
    let mut svc = service(&timed_name(i), WATCH_NAMESPACE);
    svc.metadata.annotations = Some(BTreeMap::from([(
        SENT_ANNOTATION.to_string(),
        clock.now_ns().to_string(),
    )]));
    svc
}

/// The send time a timed Service carries.
pub fn sent_ns(svc: &Service) -> Option<u64> {
    svc.metadata
        .annotations
        .as_ref()?
        .get(SENT_ANNOTATION)?
        .parse()
        .ok()
}

/// The EndpointSlice of Service `i`: three ready IPv4 endpoints on port 8080.
pub fn endpoint_slice(i: usize, namespace: &str) -> EndpointSlice {
    let svc = service_name(i);
    let endpoints = (0..3)
        .map(|j| {
            let k = 3 * i + j;
            Endpoint {
                addresses: vec![format!("10.244.{}.{}", (k / 256) % 256, k % 256)],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    serving: Some(true),
                    terminating: Some(false),
                }),
                node_name: Some(format!("node-{}", k % 16)),
                ..Default::default()
            }
        })
        .collect();
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("{svc}-bench")),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([(SERVICE_NAME_LABEL.to_string(), svc)])),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints,
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    }
}
