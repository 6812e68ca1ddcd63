//! Health-check node ports: for each LoadBalancer Service with
//! `externalTrafficPolicy: Local`, an HTTP server on its
//! `spec.healthCheckNodePort` answering as kube-proxy does, so an external
//! load balancer sends traffic only to nodes with a local endpoint: 200 with
//! `{"service":{"namespace":..,"name":..},"localEndpoints":N,"serviceProxyHealthy":true}`
//! when N > 0, 503 otherwise.
//!
//! It owns the listeners on those ports in the node's namespace (bound on
//! `[::]`, which takes IPv4 too) and the counts they report; it reads nothing
//! from the API and touches no map.

use std::collections::HashMap;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::{Arc, PoisonError, RwLock};

use ferry_daemon::http::{HttpLimits, text};
use hyper::StatusCode;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use k8s_openapi::api::core::v1::Service;
use tokio::task::JoinHandle;

use super::model::ServicePortEntries;
use super::programmer::ServiceName;
use crate::metrics::Metrics;

/// The health-check node port `svc` wants served, if any.
pub fn port_of(svc: &Service) -> Option<u16> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() != Some("LoadBalancer")
        || spec.external_traffic_policy.as_deref() != Some("Local")
    {
        return None;
    }
    spec.health_check_node_port
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
}

/// This node's endpoints of a Service, counted once across its ports and
/// families (a dual-stack pod is one endpoint, as each of kube-proxy's
/// per-family proxiers counts it): with Local policy its external backends
/// are exactly the local ones.
pub fn local_endpoints(entries: &[ServicePortEntries]) -> usize {
    let mut addrs: Vec<_> = entries
        .iter()
        .flat_map(|e| e.external_backends.iter().map(|b| b.addr))
        .collect();
    addrs.sort();
    addrs.dedup();
    let v4 = addrs.iter().filter(|a| a.is_ipv4()).count();
    v4.max(addrs.len() - v4)
}

#[derive(Debug, Clone)]
struct Answer {
    service: ServiceName,
    local: usize,
}

/// The servers, one per port, and what each reports.
pub struct HealthServers {
    answers: Arc<RwLock<HashMap<u16, Answer>>>,
    servers: HashMap<u16, JoinHandle<()>>,
    by_service: HashMap<ServiceName, u16>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for HealthServers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthServers")
            .field("ports", &self.servers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl HealthServers {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            answers: Arc::default(),
            servers: HashMap::new(),
            by_service: HashMap::new(),
            metrics,
        }
    }

    /// Serves `port` for `service` with `local` endpoints, or, with `None`,
    /// stops serving what `service` had. A port that cannot be bound (in
    /// use by something else) is logged and tried again at the next update.
    pub fn update(&mut self, service: &ServiceName, port: Option<u16>, local: usize) {
        if let Some(old) = self.by_service.get(service).copied()
            && Some(old) != port
        {
            self.by_service.remove(service);
            self.write().remove(&old);
            if let Some(task) = self.servers.remove(&old) {
                task.abort();
            }
        }
        let Some(port) = port else {
            return;
        };
        self.by_service.insert(service.clone(), port);
        self.write().insert(
            port,
            Answer {
                service: service.clone(),
                local,
            },
        );
        if self.servers.contains_key(&port) {
            return;
        }
        let addr = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
        let listener = match std::net::TcpListener::bind(addr).and_then(|l| {
            l.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(l)
        }) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(namespace = %service.0, service = %service.1, port, error = %e, "cannot serve the health check node port");
                return;
            }
        };
        tracing::info!(namespace = %service.0, service = %service.1, port, "serving the health check node port");
        let (answers, metrics) = (self.answers.clone(), self.metrics.clone());
        self.servers.insert(
            port,
            tokio::spawn(ferry_daemon::http::serve(
                listener,
                "health check node port",
                HttpLimits::default(),
                move |_req| {
                    let answer = answers
                        .read()
                        .unwrap_or_else(PoisonError::into_inner)
                        .get(&port)
                        .cloned();
                    let healthy = metrics.healthy();
                    async move { respond(answer, healthy) }
                },
            )),
        );
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<u16, Answer>> {
        self.answers.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// kube-proxy's answer.
fn respond(
    answer: Option<Answer>,
    proxy_healthy: bool,
) -> hyper::Response<http_body_util::Full<hyper::body::Bytes>> {
    let Some(a) = answer else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "no service\n");
    };
    let body = serde_json::json!({
        "service": {"namespace": a.service.0, "name": a.service.1},
        "localEndpoints": a.local,
        "serviceProxyHealthy": proxy_healthy,
    })
    .to_string();
    let code = if a.local > 0 && proxy_healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut r = text(code, body);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut().insert(
        "X-Content-Type-Options",
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(v) = HeaderValue::from_str(&a.local.to_string()) {
        r.headers_mut()
            .insert("X-Load-Balancing-Endpoint-Weight", v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_load_balancers_have_one() {
        let svc = |spec: serde_json::Value| -> Service {
            serde_json::from_value(serde_json::json!({"metadata": {"name": "x"}, "spec": spec}))
                .expect("service")
        };
        assert_eq!(
            port_of(&svc(
                serde_json::json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": 31000})
            )),
            Some(31000)
        );
        assert_eq!(
            port_of(&svc(
                serde_json::json!({"type": "LoadBalancer", "healthCheckNodePort": 31000})
            )),
            None
        );
        assert_eq!(
            port_of(&svc(
                serde_json::json!({"type": "NodePort", "externalTrafficPolicy": "Local"})
            )),
            None
        );
    }

    #[test]
    fn the_answer_follows_the_count() {
        let a = |local| {
            Some(Answer {
                service: ("default".into(), "web".into()),
                local,
            })
        };
        assert_eq!(respond(a(2), true).status(), StatusCode::OK);
        assert_eq!(
            respond(a(0), true).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            respond(a(2), false).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            respond(a(2), true).headers()["X-Load-Balancing-Endpoint-Weight"],
            "2"
        );
    }
}
