//! The node API the apiserver proxies `kubectl logs` and `kubectl exec`
//! to, the kubelet's subset on `--kubelet-port` (10250) of the node's
//! address:
//!
//! - `GET /containerLogs/{namespace}/{pod}/{container}` with `follow`,
//!   `previous`, `tailLines`, `sinceSeconds`, `sinceTime`, `timestamps`,
//!   `limitBytes`: the container's log as plain text (see [`crate::logs`]);
//! - `GET|POST /exec/{namespace}/{pod}/{container}?command=..&stdin&stdout&stderr&tty`
//!   with a WebSocket upgrade (`v5.channel.k8s.io` or `v4.channel.k8s.io`):
//!   the command in the container (see [`crate::exec`]);
//! - `GET|POST /portForward/{namespace}/{pod}` upgraded to SPDY/3.1
//!   (`X-Stream-Protocol-Version: portforward.k8s.io`) or to a WebSocket
//!   tunnelling it (`SPDY/3.1+portforward.k8s.io`): TCP connections to the
//!   pod's ports (see [`crate::port_forward`]).
//!
//! Every request must carry `Authorization: Bearer <token>` with the token
//! of `--kubelet-token-file`, which the apiserver holds too; anything else
//! is 401. Bounds: connections ([`MAX_CONNECTIONS`], more wait in the
//! backlog), request heads (size and [`HEADER_TIMEOUT`]), concurrent exec
//! sessions ([`MAX_EXEC_SESSIONS`], more get 429) and port-forward
//! connections ([`MAX_PORT_FORWARDS`], more get 429), TCP keep-alive so a
//! vanished client is noticed; a log stream or exec session ends when its
//! client goes.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{AUTHORIZATION, CONNECTION, CONTENT_TYPE, HeaderValue, UPGRADE};
use hyper::server::conn::http1;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::Runtime;
use crate::cgroup;
use crate::channel;
use crate::exec::{self, Streams, Target};
use crate::logs::{self, LogOptions};
use crate::port_forward;

/// Connections open at once.
pub const MAX_CONNECTIONS: usize = 128;
/// Exec sessions running at once on this node.
pub const MAX_EXEC_SESSIONS: usize = 32;
/// Port-forward connections open at once on this node (each carries up to
/// [`port_forward::MAX_STREAMS`] streams).
pub const MAX_PORT_FORWARDS: usize = 32;
/// Time for a request head (each one on a kept-alive connection).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Request line and headers.
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Largest WebSocket message taken from a client (stdin, resize).
const MAX_MESSAGE: usize = 1024 * 1024;
/// TCP keep-alive: first probe after this much silence.
const KEEPALIVE: Duration = Duration::from_secs(30);
/// Log chunks queued toward a slow client.
const LOG_QUEUE: usize = 8;

type Body = BoxBody<Bytes, Infallible>;

/// The node API's state.
pub struct KubeletApi {
    rt: Arc<Runtime>,
    token: String,
    execs: Arc<Semaphore>,
    forwards: Arc<Semaphore>,
}

impl KubeletApi {
    /// `token`: what the apiserver must present (non-empty).
    pub fn new(rt: Arc<Runtime>, token: String) -> anyhow::Result<Self> {
        anyhow::ensure!(
            token.len() >= 16,
            "the kubelet token must be at least 16 characters"
        );
        Ok(Self {
            rt,
            token,
            execs: Arc::new(Semaphore::new(MAX_EXEC_SESSIONS)),
            forwards: Arc::new(Semaphore::new(MAX_PORT_FORWARDS)),
        })
    }
}

/// Reads a token file: its first line, trimmed.
pub fn read_token(path: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context as _;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the kubelet token file {}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_owned();
    anyhow::ensure!(
        !token.is_empty(),
        "the kubelet token file {} is empty",
        path.display()
    );
    Ok(token)
}

/// Whether `header` (an Authorization value) carries `token`, compared in
/// constant time.
pub fn authorized(header: Option<&str>, token: &str) -> bool {
    let Some(given) = header.and_then(|h| {
        let (scheme, rest) = h.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    }) else {
        return false;
    };
    if given.len() != token.len() {
        return false;
    }
    given
        .bytes()
        .zip(token.bytes())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

/// A plain-text answer, as the kubelet writes its errors.
fn text(code: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut msg = msg.into();
    if !msg.ends_with('\n') {
        msg.push('\n');
    }
    let mut r = Response::new(full(msg));
    *r.status_mut() = code;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Serves the node API on `listener` until the process ends.
pub async fn serve(listener: TcpListener, api: Arc<KubeletApi>) {
    let limit = ferry_daemon::ConnLimit::new(MAX_CONNECTIONS);
    let mut backoff = ferry_daemon::AcceptBackoff::new("kubelet-api");
    loop {
        let (stream, peer, permit) =
            ferry_daemon::accept_limited(&listener, &mut backoff, &limit).await;
        let _ = stream.set_nodelay(true);
        let _ = rustix::net::sockopt::set_socket_keepalive(&stream, true);
        let _ = rustix::net::sockopt::set_tcp_keepidle(&stream, KEEPALIVE);
        let _ = rustix::net::sockopt::set_tcp_keepintvl(&stream, KEEPALIVE);
        let api = api.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let api = api.clone();
                async move { Ok::<_, Infallible>(api.handle(req, peer).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEADER_BYTES)
                .max_header_size(MAX_HEADER_BYTES)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            if let Err(error) = conn.await {
                tracing::debug!(%peer, %error, "kubelet API connection ended");
            }
        });
    }
}

impl KubeletApi {
    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let auth = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if !authorized(auth, &self.token) {
            tracing::debug!(%peer, path = %req.uri().path(), "kubelet API: unauthorized");
            return text(StatusCode::UNAUTHORIZED, "Unauthorized");
        }
        let path = req.uri().path().to_owned();
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        let resp = match (req.method(), segs.as_slice()) {
            (&Method::GET, ["containerLogs", ns, pod, container]) => {
                let q = query(&req);
                self.container_logs(ns, pod, container, &q).await
            }
            (&Method::GET | &Method::POST, ["exec", ns, pod, container]) => {
                let (ns, pod, container) = (ns.to_string(), pod.to_string(), container.to_string());
                self.exec(req, &ns, &pod, &container).await
            }
            (&Method::GET | &Method::POST, ["portForward", ns, pod]) => {
                let (ns, pod) = (ns.to_string(), pod.to_string());
                self.port_forward(req, &ns, &pod).await
            }
            (_, ["containerLogs" | "exec" | "portForward", ..]) => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            }
            _ => text(StatusCode::NOT_FOUND, "404 page not found"),
        };
        tracing::debug!(%peer, %path, status = resp.status().as_u16(), "kubelet API request");
        resp
    }

    /// The pod `ns/name` if it is bound to this node; errors as kubelet
    /// answers them.
    async fn pod_here(&self, ns: &str, name: &str) -> Result<Pod, Response<Body>> {
        let api: kube::Api<Pod> = kube::Api::namespaced(self.rt.client.clone(), ns);
        match api.get_opt(name).await {
            Ok(Some(p))
                if p.spec.as_ref().and_then(|s| s.node_name.as_deref())
                    == Some(self.rt.node_name.as_str()) =>
            {
                Ok(p)
            }
            Ok(_) => Err(text(
                StatusCode::NOT_FOUND,
                format!("pod {name:?} does not exist"),
            )),
            Err(e) => Err(text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("reading pod {ns}/{name}: {e}"),
            )),
        }
    }

    /// The pod `ns/name` if it is bound to this node, and the container's
    /// status; errors as kubelet answers them.
    async fn pod_and_container(
        &self,
        ns: &str,
        name: &str,
        container: &str,
    ) -> Result<(Pod, Option<ContainerStatus>), Response<Body>> {
        let pod = self.pod_here(ns, name).await?;
        let spec = pod.spec.as_ref();
        let in_spec = spec.is_some_and(|s| {
            s.containers.iter().any(|c| c.name == container)
                || s.init_containers
                    .iter()
                    .flatten()
                    .any(|c| c.name == container)
        });
        if !in_spec {
            return Err(text(
                StatusCode::NOT_FOUND,
                format!("container {container:?} not found in pod {name:?}"),
            ));
        }
        let status = pod.status.as_ref().and_then(|s| {
            s.container_statuses
                .iter()
                .flatten()
                .chain(s.init_container_statuses.iter().flatten())
                .find(|c| c.name == container)
                .cloned()
        });
        Ok((pod, status))
    }

    async fn container_logs(
        &self,
        ns: &str,
        name: &str,
        container: &str,
        q: &Query,
    ) -> Response<Body> {
        let (opts, previous) = match log_options(q) {
            Ok(o) => o,
            Err(msg) => return text(StatusCode::BAD_REQUEST, msg),
        };
        let (pod, status) = match self.pod_and_container(ns, name, container).await {
            Ok(x) => x,
            Err(r) => return r,
        };
        let run = match status
            .ok_or_else(|| format!("container {container:?} in pod {name:?} is not available"))
            .and_then(|s| log_run(name, &s, previous))
        {
            Ok(run) => run,
            Err(msg) => return text(StatusCode::BAD_REQUEST, msg),
        };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let path = self.rt.state.log_path(&uid, container, run.number);
        if !path.exists() {
            return text(
                StatusCode::BAD_REQUEST,
                format!("the log of container {container:?} in pod {name:?} is gone"),
            );
        }
        let cg = cgroup::container_dir(&self.rt.cgroup_root, &uid, container);
        let next = self.rt.state.log_path(&uid, container, run.number + 1);
        let running = run.running;
        // The run is followed while it runs: its processes are there and
        // no later run has started.
        let live = move || running && cgroup::populated(&cg) && !next.exists();
        let (tx, rx) = mpsc::channel(LOG_QUEUE);
        tokio::spawn(async move {
            if let Err(e) = logs::stream(path, opts, live, tx).await {
                tracing::debug!(error = %e, "streaming a log");
            }
        });
        let body = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
        });
        let mut r = Response::new(StreamBody::new(body).boxed());
        r.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    }

    async fn exec(
        &self,
        req: Request<Incoming>,
        ns: &str,
        name: &str,
        container: &str,
    ) -> Response<Body> {
        let q = query(&req);
        let command: Vec<String> = q
            .iter()
            .filter(|(k, _)| k == "command")
            .map(|(_, v)| v.clone())
            .collect();
        let on = |k: &str| {
            q.iter()
                .any(|(key, v)| key == k && matches!(v.as_str(), "1" | "true"))
        };
        let streams = Streams {
            stdin: on("stdin"),
            stdout: on("stdout"),
            stderr: on("stderr") && !on("tty"),
            tty: on("tty"),
        };
        if command.is_empty() {
            return text(
                StatusCode::BAD_REQUEST,
                "you must specify at least 1 command",
            );
        }
        if !(streams.stdin || streams.stdout || on("stderr")) {
            return text(
                StatusCode::BAD_REQUEST,
                "you must specify at least 1 of stdin, stdout, stderr",
            );
        }
        let (pod, _) = match self.pod_and_container(ns, name, container).await {
            Ok(x) => x,
            Err(r) => return r,
        };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let cg = cgroup::container_dir(&self.rt.cgroup_root, &uid, container);
        let Some(pid) = exec::main_pid(&cg) else {
            return text(
                StatusCode::BAD_REQUEST,
                format!("container {container:?} in pod {name:?} is not running"),
            );
        };
        let headers = req.headers();
        let header = |h: &str| headers.get(h).and_then(|v| v.to_str().ok()).unwrap_or("");
        let websocket = header(UPGRADE.as_str()).eq_ignore_ascii_case("websocket")
            && header(CONNECTION.as_str())
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
        if !websocket {
            return text(
                StatusCode::BAD_REQUEST,
                "ferry-node serves exec over WebSocket only (v5.channel.k8s.io, v4.channel.k8s.io); SPDY is not supported",
            );
        }
        let key = header("sec-websocket-key").to_owned();
        if key.is_empty() || header("sec-websocket-version") != "13" {
            return text(
                StatusCode::BAD_REQUEST,
                "a WebSocket upgrade needs Sec-WebSocket-Key and Sec-WebSocket-Version 13",
            );
        }
        let Some(protocol) = channel::negotiate(header("sec-websocket-protocol")) else {
            return text(
                StatusCode::BAD_REQUEST,
                format!(
                    "requested protocol(s) are not supported: {:?}; supports [v5.channel.k8s.io v4.channel.k8s.io]",
                    header("sec-websocket-protocol")
                ),
            );
        };
        let Ok(permit) = self.execs.clone().try_acquire_owned() else {
            return text(
                StatusCode::TOO_MANY_REQUESTS,
                format!("too many exec sessions on this node (at most {MAX_EXEC_SESSIONS})"),
            );
        };
        let target = Target { pid, cgroup: cg };
        let started = match exec::spawn(&self.rt.tools, &target, &command, streams) {
            Ok(s) => s,
            Err(e) => {
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("starting {command:?} in container {container:?}: {e:#}"),
                );
            }
        };
        tracing::info!(pod = %format!("{ns}/{name}"), %container, ?command, tty = streams.tty, "exec");
        tokio::spawn(async move {
            let _permit = permit;
            match hyper::upgrade::on(req).await {
                Ok(upgraded) => {
                    let config = WebSocketConfig::default()
                        .max_message_size(Some(MAX_MESSAGE))
                        .max_frame_size(Some(MAX_MESSAGE));
                    let ws = WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        Role::Server,
                        Some(config),
                    )
                    .await;
                    exec::session(ws, protocol, started).await;
                }
                Err(e) => tracing::debug!(error = %e, "exec: the upgrade failed"),
            }
        });
        let mut r = Response::new(full(Bytes::new()));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = r.headers_mut();
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        if let Ok(v) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
            h.insert("sec-websocket-accept", v);
        }
        h.insert(
            "sec-websocket-protocol",
            HeaderValue::from_static(protocol.name()),
        );
        r
    }
}

impl KubeletApi {
    /// `kubectl port-forward`: the SPDY upgrade, plain or in a WebSocket.
    async fn port_forward(&self, req: Request<Incoming>, ns: &str, name: &str) -> Response<Body> {
        let pod = match self.pod_here(ns, name).await {
            Ok(p) => p,
            Err(r) => return r,
        };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let host_network = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        let netns = if host_network {
            None
        } else {
            match self.rt.state.read_sandbox(&uid).and_then(|s| s.netns) {
                Some(p) if p.exists() => Some(p),
                _ => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!("pod {name:?} has no network namespace yet"),
                    );
                }
            }
        };
        let headers = req.headers();
        let header = |h: &str| headers.get(h).and_then(|v| v.to_str().ok()).unwrap_or("");
        let upgrade = header(UPGRADE.as_str()).to_owned();
        let connection_upgrade = header(CONNECTION.as_str())
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
        let websocket = upgrade.eq_ignore_ascii_case("websocket") && connection_upgrade;
        let spdy = upgrade.eq_ignore_ascii_case("SPDY/3.1") && connection_upgrade;
        let mut key = String::new();
        if websocket {
            key = header("sec-websocket-key").to_owned();
            if key.is_empty() || header("sec-websocket-version") != "13" {
                return text(
                    StatusCode::BAD_REQUEST,
                    "a WebSocket upgrade needs Sec-WebSocket-Key and Sec-WebSocket-Version 13",
                );
            }
            let offered = header("sec-websocket-protocol");
            if !offered
                .split(',')
                .any(|p| p.trim() == port_forward::WEBSOCKET_PROTOCOL)
            {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "requested protocol(s) are not supported: {offered:?}; supports [{}]",
                        port_forward::WEBSOCKET_PROTOCOL
                    ),
                );
            }
        } else if spdy {
            // httpstream.Handshake: no version header is the legacy
            // protocol, which is this one.
            let offered: Vec<&str> = headers
                .get_all("x-stream-protocol-version")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .collect();
            if !offered.is_empty() && !offered.contains(&port_forward::PROTOCOL) {
                return text(
                    StatusCode::FORBIDDEN,
                    format!(
                        "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server supports [{}]",
                        port_forward::PROTOCOL
                    ),
                );
            }
        } else {
            return text(
                StatusCode::BAD_REQUEST,
                "Upgrade request required (SPDY/3.1, or a WebSocket with SPDY/3.1+portforward.k8s.io)",
            );
        }
        let Ok(permit) = self.forwards.clone().try_acquire_owned() else {
            return text(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many port-forward connections on this node (at most {MAX_PORT_FORWARDS})"
                ),
            );
        };
        let target = port_forward::Target {
            pod: format!("{name}_{ns}"),
            uid,
            netns,
        };
        tracing::info!(pod = %format!("{ns}/{name}"), websocket, "port-forward");
        tokio::spawn(async move {
            let _permit = permit;
            match hyper::upgrade::on(req).await {
                Ok(upgraded) if websocket => {
                    let config = WebSocketConfig::default()
                        .max_message_size(Some(MAX_MESSAGE))
                        .max_frame_size(Some(MAX_MESSAGE));
                    let ws = WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        Role::Server,
                        Some(config),
                    )
                    .await;
                    port_forward::serve(port_forward::websocket_bytes(ws), target).await;
                }
                Ok(upgraded) => port_forward::serve(TokioIo::new(upgraded), target).await,
                Err(e) => tracing::debug!(error = %e, "port-forward: the upgrade failed"),
            }
        });
        let mut r = Response::new(full(Bytes::new()));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = r.headers_mut();
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        if websocket {
            h.insert(UPGRADE, HeaderValue::from_static("websocket"));
            if let Ok(v) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
                h.insert("sec-websocket-accept", v);
            }
            h.insert(
                "sec-websocket-protocol",
                HeaderValue::from_static(port_forward::WEBSOCKET_PROTOCOL),
            );
        } else {
            h.insert(UPGRADE, HeaderValue::from_static("SPDY/3.1"));
            h.insert(
                "x-stream-protocol-version",
                HeaderValue::from_static(port_forward::PROTOCOL),
            );
        }
        r
    }
}

type Query = Vec<(String, String)>;

fn query(req: &Request<Incoming>) -> Query {
    url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// kubelet's reading of the log query; `previous` apart.
pub fn log_options(q: &Query) -> Result<(LogOptions, bool), String> {
    let map: HashMap<&str, &str> = q.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let flag = |k: &str| matches!(map.get(k), Some(&("true" | "1")));
    let num = |k: &str, min: i64| -> Result<Option<i64>, String> {
        match map.get(k) {
            None | Some(&"") => Ok(None),
            Some(v) => match v.parse::<i64>() {
                Ok(n) if n >= min => Ok(Some(n)),
                _ => Err(format!(
                    "{k}: Invalid value: {v:?}: must be an integer >= {min}"
                )),
            },
        }
    };
    let since_seconds = num("sinceSeconds", 1)?;
    let since_time = match map.get("sinceTime") {
        None | Some(&"") => None,
        Some(t) => Some(
            t.parse::<jiff::Timestamp>()
                .map_err(|e| format!("sinceTime: Invalid value: {t:?}: {e}"))?,
        ),
    };
    if since_seconds.is_some() && since_time.is_some() {
        return Err("at most one of sinceTime or sinceSeconds may be specified".into());
    }
    let since = match since_seconds {
        Some(s) => Some(
            jiff::Timestamp::now()
                .checked_sub(jiff::SignedDuration::from_secs(s))
                .unwrap_or(jiff::Timestamp::MIN),
        ),
        None => since_time,
    };
    let opts = LogOptions {
        follow: flag("follow"),
        tail_lines: num("tailLines", 0)?.and_then(|n| u64::try_from(n).ok()),
        since,
        timestamps: flag("timestamps"),
        limit_bytes: num("limitBytes", 1)?.and_then(|n| u64::try_from(n).ok()),
    };
    Ok((opts, flag("previous")))
}

/// Which run's log is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub number: i32,
    /// Whether it is the run going on now.
    pub running: bool,
}

/// The run number in a ferry container ID (`ferry://<sandbox>-<name>-<n>`).
fn run_of(container_id: &str) -> Option<i32> {
    container_id.rsplit_once('-')?.1.parse().ok()
}

/// Which run's log `kubectl logs [--previous]` reads, with kubelet's
/// answers when there is none (its `validateContainerLogStatus`).
pub fn log_run(pod: &str, s: &ContainerStatus, previous: bool) -> Result<Run, String> {
    let name = &s.name;
    let state = s.state.clone().unwrap_or_default();
    let last = s
        .last_state
        .as_ref()
        .and_then(|l| l.terminated.as_ref())
        .and_then(|t| t.container_id.as_deref())
        .filter(|id| !id.is_empty());
    let run = |id: &str, running: bool| {
        run_of(id)
            .map(|number| Run { number, running })
            .ok_or_else(|| {
                format!("container {name:?} in pod {pod:?} has an unknown container ID {id:?}")
            })
    };
    if previous {
        return match last {
            Some(id) => run(id, false),
            None => Err(format!(
                "previous terminated container {name:?} in pod {pod:?} not found"
            )),
        };
    }
    if state.running.is_some() {
        let id = s.container_id.as_deref().unwrap_or_default();
        return run(id, true);
    }
    if let Some(t) = &state.terminated {
        return match t
            .container_id
            .as_deref()
            .filter(|id| !id.is_empty())
            .or(last)
        {
            Some(id) => run(id, false),
            None => Err(format!("container {name:?} in pod {pod:?} is terminated")),
        };
    }
    if let Some(id) = last {
        return run(id, false);
    }
    match state.waiting.and_then(|w| w.reason) {
        Some(r) if r == "ErrImagePull" => Err(format!(
            "container {name:?} in pod {pod:?} is waiting to start: image can't be pulled"
        )),
        Some(r) if r == "ImagePullBackOff" => Err(format!(
            "container {name:?} in pod {pod:?} is waiting to start: trying and failing to pull image"
        )),
        Some(r) => Err(format!(
            "container {name:?} in pod {pod:?} is waiting to start: {r}"
        )),
        None => Err(format!(
            "container {name:?} in pod {pod:?} is waiting to start - no logs yet"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_the_token_is_let_in() {
        let token = "0123456789abcdef0123";
        assert!(authorized(Some("Bearer 0123456789abcdef0123"), token));
        assert!(authorized(Some("bearer  0123456789abcdef0123 "), token));
        assert!(!authorized(None, token));
        assert!(!authorized(Some(""), token));
        assert!(!authorized(Some("Bearer"), token));
        assert!(!authorized(Some("Bearer 0123456789abcdef012"), token));
        assert!(!authorized(Some("Bearer 0123456789abcdef0124"), token));
        assert!(!authorized(Some("Basic 0123456789abcdef0123"), token));
    }

    fn status(v: serde_json::Value) -> ContainerStatus {
        serde_json::from_value(v).expect("status")
    }

    #[test]
    fn the_run_read_follows_the_status_as_kubelet_does() {
        let running = status(json!({
            "name": "c", "image": "busybox", "imageID": "", "ready": true, "restartCount": 2,
            "containerID": "ferry://ferry-abc-c-2",
            "state": {"running": {"startedAt": "2025-01-01T00:00:00Z"}},
            "lastState": {"terminated": {"exitCode": 1, "containerID": "ferry://ferry-abc-c-1"}},
        }));
        assert_eq!(
            log_run("p", &running, false),
            Ok(Run {
                number: 2,
                running: true
            })
        );
        assert_eq!(
            log_run("p", &running, true),
            Ok(Run {
                number: 1,
                running: false
            })
        );
        let first = status(json!({
            "name": "c", "image": "busybox", "imageID": "", "ready": true, "restartCount": 0,
            "containerID": "ferry://ferry-abc-c-0",
            "state": {"running": {}},
        }));
        assert_eq!(
            log_run("p", &first, true),
            Err(r#"previous terminated container "c" in pod "p" not found"#.into())
        );
        let backoff = status(json!({
            "name": "c", "image": "busybox", "imageID": "", "ready": false, "restartCount": 1,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 1, "containerID": "ferry://ferry-abc-c-1"}},
        }));
        assert_eq!(log_run("p", &backoff, false).map(|r| r.number), Ok(1));
        let waiting = status(json!({
            "name": "c", "image": "busybox", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ContainerCreating"}},
        }));
        assert_eq!(
            log_run("p", &waiting, false),
            Err(r#"container "c" in pod "p" is waiting to start: ContainerCreating"#.into())
        );
    }

    #[test]
    fn log_queries_are_read_and_checked() {
        let q = |s: &str| -> Query {
            url::form_urlencoded::parse(s.as_bytes())
                .into_owned()
                .collect()
        };
        let (o, prev) = log_options(&q(
            "follow=true&tailLines=5&timestamps=1&limitBytes=10&previous=true",
        ))
        .expect("valid");
        assert!(o.follow && o.timestamps && prev);
        assert_eq!((o.tail_lines, o.limit_bytes), (Some(5), Some(10)));
        let (o, _) = log_options(&q("sinceTime=2025-01-01T00:00:00Z")).expect("valid");
        assert_eq!(o.since, Some("2025-01-01T00:00:00Z".parse().expect("ts")));
        let (o, _) = log_options(&q("sinceSeconds=60")).expect("valid");
        assert!(o.since.is_some_and(|t| t < jiff::Timestamp::now()));
        assert!(log_options(&q("tailLines=-1")).is_err());
        assert!(log_options(&q("limitBytes=0")).is_err());
        assert!(log_options(&q("sinceSeconds=1&sinceTime=2025-01-01T00:00:00Z")).is_err());
        assert!(log_options(&q("sinceTime=yesterday")).is_err());
    }
}
