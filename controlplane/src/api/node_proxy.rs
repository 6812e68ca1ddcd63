//! `pods/log`, `pods/exec` and `pods/portforward`: proxied to the node the
//! pod runs on, as kube-apiserver proxies them to the kubelet.
//!
//! The pod and its container are checked here with kube-apiserver's
//! answers (404 for a missing pod, 400 "container X is not valid for pod
//! Y", 400 "a container name must be specified for pod Y, choose one of:
//! [...]", 400 "pod Y does not have a host assigned" for exec); the node is
//! reached at its InternalIP (else ExternalIP) on the port its Node posts in
//! `status.daemonEndpoints.kubeletEndpoint`, with the bearer token of
//! `--kubelet-token-file` (see [`KubeletToken`]). A log is streamed back as
//! the node sends it (a follow ends when either side goes); the upgrade of
//! an exec (WebSocket) or a port-forward (SPDY/3.1, or a WebSocket
//! tunnelling it) is forwarded, and once the node answers `101` the two
//! connections are spliced byte for byte, so the protocol runs end to end
//! between kubectl and the node.
//! An answer other than success from the node becomes a Status with its
//! code and text, as kube-apiserver's response checker does.
//!
//! Bounds: connecting and the node's response head are timed
//! ([`CONNECT_TIMEOUT`], [`HEAD_TIMEOUT`]); an error body read from a node
//! is capped ([`MAX_ERROR_BODY`]); exec and port-forward sessions through
//! this apiserver are capped ([`MAX_SESSIONS`], more get 429): an upgraded connection leaves
//! the front door's connection accounting, so it is counted here.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited, StreamBody};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONNECTION, CONTENT_TYPE, HOST, HeaderName, UPGRADE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use super::Body;
use crate::error::ApiError;
use crate::registry::Registry;
use crate::resources::{NODES, PODS};

/// Time to connect to a node.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for a node's response head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Most of a node's error body read.
pub const MAX_ERROR_BODY: usize = 64 * 1024;
/// Exec and port-forward sessions proxied at once.
pub const MAX_SESSIONS: usize = 1024;
/// The kubelet's port when a Node does not say.
const DEFAULT_KUBELET_PORT: u16 = 10250;

/// A query string's pairs, repeated keys kept (exec's `command`).
type Query = Vec<(String, String)>;

/// The log query parameters passed on to the node (kubelet's names).
const LOG_PARAMS: &[&str] = &[
    "follow",
    "previous",
    "tailLines",
    "sinceSeconds",
    "sinceTime",
    "timestamps",
    "limitBytes",
    "insecureSkipTLSVerifyBackend",
];
/// The exec query parameters passed on.
const EXEC_PARAMS: &[&str] = &["command", "stdin", "stdout", "stderr", "tty"];
/// The port-forward query parameter passed on (kube-apiserver renames
/// `ports` to the kubelet's `port`).
const PORT_FORWARD_PARAMS: &[&str] = &["ports"];
/// Headers of an upgrade passed to the node, and back from it.
const UPGRADE_HEADERS: &[&str] = &[
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-accept",
    "x-stream-protocol-version",
];

/// The token the apiserver presents to the nodes' API: the first line of
/// `--kubelet-token-file`, which is created (mode 0600, 32 random bytes)
/// when missing; the nodes are given the same file.
#[derive(Debug, Clone)]
pub struct KubeletToken(String);

impl KubeletToken {
    pub fn load_or_create(path: &Path) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        if !path.exists() {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            crate::data_dir::private_file(path)?;
            std::fs::write(path, format!("{}\n", crate::auth::new_token()))
                .with_context(|| format!("writing {}", path.display()))?;
            tracing::info!(path = %path.display(), "created the kubelet token file");
        }
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let token = text.lines().next().unwrap_or("").trim().to_owned();
        anyhow::ensure!(
            token.len() >= 16,
            "{}: the kubelet token must be at least 16 characters",
            path.display()
        );
        Ok(Self(token))
    }
}

/// What the proxy holds.
#[derive(Debug)]
pub struct NodeProxy {
    token: Option<KubeletToken>,
    sessions: Arc<Semaphore>,
}

impl NodeProxy {
    pub fn new(token: Option<KubeletToken>) -> Self {
        Self {
            token,
            sessions: Arc::new(Semaphore::new(MAX_SESSIONS)),
        }
    }
}

/// The container a request names, checked as kube-apiserver's
/// `validateContainer`: the only one when there is one, else it must be
/// named, and a named one must be the pod's (containers, init containers,
/// ephemeral containers).
pub fn pick_container(pod: &Value, asked: Option<&str>) -> Result<String, ApiError> {
    let name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let names = |field: &str| -> Vec<String> {
        pod.pointer(&format!("/spec/{field}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c.get("name").and_then(Value::as_str).map(String::from))
            .collect()
    };
    let containers = names("containers");
    match asked.filter(|c| !c.is_empty()) {
        None => match containers.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}"
            ))),
            many => Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                many.join(" ")
            ))),
        },
        Some(c) => {
            let known = containers
                .iter()
                .chain(names("initContainers").iter())
                .chain(names("ephemeralContainers").iter())
                .any(|n| n == c);
            if known {
                Ok(c.to_owned())
            } else {
                Err(ApiError::bad_request(format!(
                    "container {c} is not valid for pod {name}"
                )))
            }
        }
    }
}

/// Where a node's API is: its InternalIP (else ExternalIP) and the port of
/// `status.daemonEndpoints.kubeletEndpoint`.
pub fn node_address(node: &Value) -> Option<SocketAddr> {
    let addresses = node
        .pointer("/status/addresses")
        .and_then(Value::as_array)?;
    let ip = ["InternalIP", "ExternalIP"].iter().find_map(|ty| {
        addresses
            .iter()
            .filter(|a| a.get("type").and_then(Value::as_str) == Some(ty))
            .find_map(|a| a.get("address")?.as_str()?.parse::<IpAddr>().ok())
    })?;
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .unwrap_or(DEFAULT_KUBELET_PORT);
    Some(SocketAddr::new(ip, port))
}

/// The Status for a node's answer other than success (kube-apiserver's
/// `GenericHttpResponseChecker`).
pub fn upstream_error(code: u16, body: &[u8], pod: &str) -> ApiError {
    let text = String::from_utf8_lossy(body).trim().to_owned();
    match code {
        400 => ApiError::bad_request(text),
        404 => ApiError::not_found(&PODS, pod).with_message(text),
        _ => ApiError::generic(code, text),
    }
}

/// The query string for the node: the parameters in `keep`, in order.
fn forward_query(q: &Query, keep: &[&str]) -> String {
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in q {
        if keep.contains(&k.as_str()) {
            out.append_pair(k, v);
        }
    }
    out.finish()
}

/// The port-forward query for the node: each `ports` as the kubelet's
/// `port` (kube-apiserver's `PortForwardLocation`).
fn port_forward_query(q: &Query) -> String {
    let ports: Query = q
        .iter()
        .filter(|(k, _)| PORT_FORWARD_PARAMS.contains(&k.as_str()))
        .map(|(_, v)| ("port".to_owned(), v.clone()))
        .collect();
    forward_query(&ports, &["port"])
}

fn segment(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

impl NodeProxy {
    /// Serves `pods/{name}/log`, `pods/{name}/exec` or
    /// `pods/{name}/portforward` in `ns`.
    pub async fn serve(
        &self,
        registry: &Registry,
        mut req: Request<Incoming>,
        ns: &str,
        name: &str,
        sub: &str,
    ) -> Result<Response<Body>, ApiError> {
        // exec and portforward take the connection over (an upgrade).
        let exec = matches!(sub, "exec" | "portforward");
        let forward = sub == "portforward";
        match (req.method(), exec) {
            (&Method::GET, _) | (&Method::POST, true) => {}
            (m, _) => return Err(ApiError::method_not_allowed(m.as_str())),
        }
        let q: Query = url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
        let pod = registry
            .store
            .entry(&PODS, ns, name)?
            .ok_or_else(|| ApiError::not_found(&PODS, name))?
            .value()?;
        let asked = q
            .iter()
            .find(|(k, _)| k == "container")
            .map(|(_, v)| v.as_str());
        let container = if forward {
            String::new()
        } else {
            pick_container(&pod, asked)?
        };
        let node_name = pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .unwrap_or("");
        if node_name.is_empty() {
            if exec {
                return Err(ApiError::bad_request(format!(
                    "pod {name} does not have a host assigned"
                )));
            }
            // kube-apiserver: no host, no location, an empty log.
            return Ok(Response::new(Empty::new().boxed()));
        }
        let node = registry
            .store
            .entry(&NODES, "", node_name)?
            .ok_or_else(|| ApiError::not_found(&NODES, node_name))?
            .value()?;
        let addr = node_address(&node).ok_or_else(|| {
            ApiError::internal(format!("node {node_name} has no InternalIP or ExternalIP"))
        })?;
        let token = self.token.as_ref().ok_or_else(|| {
            ApiError::generic(
                503,
                "ferry-apiserver was started without --kubelet-token-file: it cannot reach the nodes' API",
            )
        })?;
        let (kind, params) = match sub {
            "portforward" => ("portForward", PORT_FORWARD_PARAMS),
            "exec" => ("exec", EXEC_PARAMS),
            _ => ("containerLogs", LOG_PARAMS),
        };
        let mut path = format!("/{kind}/{}/{}", segment(ns), segment(name));
        if !forward {
            path.push('/');
            path.push_str(&segment(&container));
        }
        let query = if forward {
            port_forward_query(&q)
        } else {
            forward_query(&q, params)
        };
        if !query.is_empty() {
            path.push('?');
            path.push_str(&query);
        }
        let mut up = Request::builder()
            .method(req.method().clone())
            .uri(&path)
            .header(HOST, addr.to_string())
            .header(AUTHORIZATION, format!("Bearer {}", token.0));
        let mut permit = None;
        let client_upgrade = if exec {
            for h in [UPGRADE, CONNECTION] {
                if let Some(v) = req.headers().get(&h) {
                    up = up.header(h, v.clone());
                }
            }
            // Every value: SPDY clients offer several protocol versions.
            for h in UPGRADE_HEADERS {
                for v in req.headers().get_all(*h) {
                    up = up.header(*h, v.clone());
                }
            }
            permit = Some(self.sessions.clone().try_acquire_owned().map_err(|_| {
                ApiError::generic(
                    429,
                    format!(
                        "too many exec and port-forward sessions through this apiserver (at most {MAX_SESSIONS})"
                    ),
                )
            })?);
            Some(hyper::upgrade::on(&mut req))
        } else {
            None
        };
        let up = up
            .body(Empty::<Bytes>::new())
            .map_err(|e| ApiError::internal(format!("building the node request: {e}")))?;
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                ApiError::generic(
                    503,
                    format!("connecting to node {node_name} at {addr}: timed out"),
                )
            })?
            .map_err(|e| {
                ApiError::generic(
                    503,
                    format!("connecting to node {node_name} at {addr}: {e}"),
                )
            })?;
        let _ = tcp.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| ApiError::generic(503, format!("node {node_name} at {addr}: {e}")))?;
        let conn = conn.with_upgrades();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "node connection ended");
            }
        });
        let resp = tokio::time::timeout(HEAD_TIMEOUT, sender.send_request(up))
            .await
            .map_err(|_| {
                ApiError::generic(
                    504,
                    format!("node {node_name} at {addr} did not answer in time"),
                )
            })?
            .map_err(|e| ApiError::generic(503, format!("node {node_name} at {addr}: {e}")))?;
        let status = resp.status();
        if exec && status == StatusCode::SWITCHING_PROTOCOLS {
            let Some(client) = client_upgrade else {
                return Err(ApiError::internal("no upgrade to hand over"));
            };
            let mut out = Response::new(Empty::new().boxed());
            *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            for h in [UPGRADE, CONNECTION] {
                if let Some(v) = resp.headers().get(&h) {
                    out.headers_mut().insert(h, v.clone());
                }
            }
            for h in UPGRADE_HEADERS {
                if let Some(v) = resp.headers().get(*h) {
                    out.headers_mut()
                        .insert(HeaderName::from_static(h), v.clone());
                }
            }
            let pod_key = format!("{ns}/{name}");
            tokio::spawn(async move {
                let _permit = permit;
                let (node_io, client_io) = match (hyper::upgrade::on(resp).await, client.await) {
                    (Ok(n), Ok(c)) => (n, c),
                    (Err(e), _) | (_, Err(e)) => {
                        tracing::debug!(pod = %pod_key, error = %e, "an upgrade failed");
                        return;
                    }
                };
                let mut node_io = TokioIo::new(node_io);
                let mut client_io = TokioIo::new(client_io);
                match tokio::io::copy_bidirectional(&mut client_io, &mut node_io).await {
                    Ok((up, down)) => {
                        tracing::debug!(pod = %pod_key, up, down, "upgraded session ended")
                    }
                    Err(e) => tracing::debug!(pod = %pod_key, error = %e, "upgraded session ended"),
                }
            });
            return Ok(out);
        }
        if !status.is_success() {
            let body = tokio::time::timeout(
                HEAD_TIMEOUT,
                Limited::new(resp.into_body(), MAX_ERROR_BODY).collect(),
            )
            .await
            .ok()
            .and_then(Result::ok)
            .map(|b| b.to_bytes())
            .unwrap_or_default();
            return Err(upstream_error(status.as_u16(), &body, name));
        }
        if forward {
            return Err(ApiError::bad_request(
                "port-forward needs a connection upgrade (SPDY/3.1, or a WebSocket with SPDY/3.1+portforward.k8s.io)",
            ));
        }
        if exec {
            return Err(ApiError::bad_request(
                "exec needs a connection upgrade (WebSocket, v5.channel.k8s.io)",
            ));
        }
        // The log as the node sends it, frame by frame, until either side
        // goes.
        let body = futures_util::stream::unfold(resp.into_body(), |mut b| async move {
            match b.frame().await {
                Some(Ok(f)) => Some((Ok::<_, Infallible>(f), b)),
                _ => None,
            }
        });
        let mut out = Response::new(StreamBody::new(body).boxed());
        out.headers_mut().insert(
            CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain"),
        );
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containers_are_picked_as_kube_apiserver_does() {
        let one = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}});
        assert_eq!(pick_container(&one, None).expect("only one"), "a");
        assert_eq!(pick_container(&one, Some("")).expect("only one"), "a");
        let e = pick_container(&one, Some("b")).expect_err("not the pod's");
        assert_eq!(
            (e.code, e.message.as_str()),
            (400, "container b is not valid for pod p")
        );
        let two = json!({"metadata": {"name": "p"}, "spec": {
            "containers": [{"name": "a"}, {"name": "b"}],
            "initContainers": [{"name": "setup"}],
        }});
        let e = pick_container(&two, None).expect_err("must be named");
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                400,
                "a container name must be specified for pod p, choose one of: [a b]"
            )
        );
        assert_eq!(pick_container(&two, Some("b")).expect("named"), "b");
        assert_eq!(pick_container(&two, Some("setup")).expect("init"), "setup");
    }

    #[test]
    fn the_node_is_reached_at_its_internal_ip_and_posted_port() {
        let node = json!({"status": {
            "addresses": [
                {"type": "Hostname", "address": "n1"},
                {"type": "ExternalIP", "address": "192.0.2.1"},
                {"type": "InternalIP", "address": "172.31.0.2"},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10251}},
        }});
        assert_eq!(
            node_address(&node),
            Some("172.31.0.2:10251".parse().expect("addr"))
        );
        let bare =
            json!({"status": {"addresses": [{"type": "ExternalIP", "address": "192.0.2.1"}]}});
        assert_eq!(
            node_address(&bare),
            Some("192.0.2.1:10250".parse().expect("addr"))
        );
        assert_eq!(node_address(&json!({"status": {}})), None);
    }

    #[test]
    fn node_errors_become_statuses() {
        let e = upstream_error(
            400,
            b"container \"c\" in pod \"p\" is waiting to start: ContainerCreating\n",
            "p",
        );
        assert_eq!(e.code, 400);
        assert_eq!(e.reason, "BadRequest");
        assert_eq!(
            e.message,
            "container \"c\" in pod \"p\" is waiting to start: ContainerCreating"
        );
        assert_eq!(upstream_error(404, b"gone", "p").reason, "NotFound");
        assert_eq!(upstream_error(401, b"Unauthorized", "p").code, 401);
    }

    #[test]
    fn only_the_kubelets_parameters_are_passed_on() {
        let q: Query = vec![
            ("container".into(), "c".into()),
            ("command".into(), "sh".into()),
            ("command".into(), "-c".into()),
            ("command".into(), "echo a&b".into()),
            ("stdout".into(), "true".into()),
            ("pretty".into(), "1".into()),
        ];
        assert_eq!(
            forward_query(&q, EXEC_PARAMS),
            "command=sh&command=-c&command=echo+a%26b&stdout=true"
        );
        assert_eq!(forward_query(&q, LOG_PARAMS), "");
        let pf: Query = vec![
            ("ports".into(), "80".into()),
            ("ports".into(), "8080".into()),
            ("container".into(), "c".into()),
        ];
        assert_eq!(port_forward_query(&pf), "port=80&port=8080");
    }
}
