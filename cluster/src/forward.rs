//! Publishing the cluster on the host's loopback without touching the host's
//! network: a listener on `127.0.0.1:<port>` per published port, whose
//! connections (TCP) and datagrams (UDP) are relayed through sockets made
//! inside the cluster's underlay namespace — from where the nodes are
//! reached as from any machine on their network.
//!
//! The apiserver's port is published for the cluster's life; NodePorts
//! follow the Services as they come, change and go. A port the host already
//! uses is reported (logged, and in [`Forwarder::published`]) and skipped.
//!
//! Bounds: at most [`MAX_CONNECTIONS`] relayed connections per port (more
//! are closed at once), a connect timeout per node tried, at most
//! [`MAX_UDP_SESSIONS`] UDP clients per port, each forgotten after
//! [`UDP_IDLE`]; accept errors back off from 5 ms to 1 s.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};

use ferry_testbed::Netns;
use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Service;
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};
use serde::Serialize;
use socket2::{Domain, Protocol as SockProtocol, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;

/// Relayed connections open at once per published port.
pub const MAX_CONNECTIONS: usize = 1024;
/// UDP clients remembered at once per published port.
pub const MAX_UDP_SESSIONS: usize = 1024;
/// A UDP client silent for this long is forgotten (and its socket closed).
pub const UDP_IDLE: Duration = Duration::from_secs(60);
/// Time to connect to one node before trying the next.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Transport of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Proto {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        })
    }
}

/// One published port, as `ferry status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Published {
    pub port: u16,
    pub proto: Proto,
    /// What it leads to (`apiserver`, `default/service-test`).
    pub what: String,
    /// Why it is not served on the host, if it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

type SocketReply = oneshot::Sender<io::Result<Socket>>;

/// Makes sockets inside a namespace: a thread that entered it serves
/// requests for fresh sockets, which keep the namespace wherever they are
/// used afterwards.
#[derive(Debug, Clone)]
pub struct Dialer {
    requests: mpsc::Sender<(Domain, Type, SocketReply)>,
}

impl Dialer {
    /// Starts the socket-making thread inside `netns`.
    pub fn new(netns: &Netns) -> crate::Result<Self> {
        let (tx, rx) = mpsc::channel::<(Domain, Type, SocketReply)>();
        netns.thread(move || {
            while let Ok((domain, ty, reply)) = rx.recv() {
                let proto = if ty == Type::STREAM {
                    SockProtocol::TCP
                } else {
                    SockProtocol::UDP
                };
                let socket = Socket::new(domain, ty, Some(proto)).and_then(|s| {
                    s.set_nonblocking(true)?;
                    s.set_cloexec(true)?;
                    Ok(s)
                });
                let _ = reply.send(socket);
            }
        })?;
        Ok(Self { requests: tx })
    }

    async fn socket(&self, to: SocketAddr, ty: Type) -> io::Result<Socket> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send((Domain::for_address(to), ty, tx))
            .map_err(|_| io::Error::other("the namespace's socket thread is gone"))?;
        rx.await
            .map_err(|_| io::Error::other("the namespace's socket thread is gone"))?
    }

    /// A TCP connection to `addr`, from inside the namespace.
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let socket = self.socket(addr, Type::STREAM).await?;
        let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
        tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("connecting to {addr}")))?
    }

    /// A UDP socket connected to `addr`, from inside the namespace.
    pub async fn udp(&self, addr: SocketAddr) -> io::Result<UdpSocket> {
        let socket = self.socket(addr, Type::DGRAM).await?;
        let any: std::net::IpAddr = if addr.is_ipv4() {
            Ipv4Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        };
        socket.bind(&SocketAddr::new(any, 0).into())?;
        let socket = UdpSocket::from_std(std::net::UdpSocket::from(socket))?;
        socket.connect(addr).await?;
        Ok(socket)
    }
}

/// Where a published port leads: the same port on one of the nodes (tried
/// in order), or a fixed address (the apiserver).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    what: String,
    addrs: Vec<SocketAddr>,
}

type Key = (u16, Proto);

struct Listening {
    target: Target,
    /// Published for the cluster's life, not for a Service.
    fixed: bool,
    task: JoinHandle<()>,
}

/// The host-side listeners of one cluster. Dropping it closes them all.
pub struct Forwarder {
    dialer: Dialer,
    host: Ipv4Addr,
    listening: Arc<Mutex<BTreeMap<Key, Listening>>>,
    published: Arc<Mutex<BTreeMap<Key, Published>>>,
    watch: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("host", &self.host)
            .field("published", &self.published())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Forwarder {
    /// A forwarder listening on `host` (the loopback address), relaying
    /// through sockets made in `underlay`. Must be called inside a tokio
    /// runtime.
    pub fn new(underlay: &Netns, host: Ipv4Addr) -> crate::Result<Self> {
        Ok(Self {
            dialer: Dialer::new(underlay)?,
            host,
            listening: Arc::default(),
            published: Arc::default(),
            watch: None,
        })
    }

    /// Publishes `port` (TCP) on the host, relayed to `to`, for as long as
    /// the forwarder lives. Fails when the port is taken.
    pub async fn publish_fixed(&self, port: u16, what: &str, to: SocketAddr) -> io::Result<u16> {
        let target = Target {
            what: what.to_owned(),
            addrs: vec![to],
        };
        let listener = TcpListener::bind(SocketAddrV4::new(self.host, port)).await?;
        let port = listener.local_addr()?.port();
        let task = tokio::spawn(serve_tcp(listener, target.clone(), self.dialer.clone()));
        lock(&self.listening).insert(
            (port, Proto::Tcp),
            Listening {
                target,
                fixed: true,
                task,
            },
        );
        lock(&self.published).insert(
            (port, Proto::Tcp),
            Published {
                port,
                proto: Proto::Tcp,
                what: what.to_owned(),
                error: None,
            },
        );
        Ok(port)
    }

    /// Follows the cluster's Services: every NodePort is published on the
    /// same port of the host, relayed to that port on `nodes` (first
    /// reachable wins).
    pub fn follow_services(&mut self, client: Client, nodes: Vec<std::net::IpAddr>) {
        let api: Api<Service> = Api::all(client);
        let dialer = self.dialer.clone();
        let host = self.host;
        let listening = Arc::clone(&self.listening);
        let published = Arc::clone(&self.published);
        self.watch = Some(tokio::spawn(async move {
            let mut services: BTreeMap<String, Service> = BTreeMap::new();
            let mut stream = watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            loop {
                let event = match stream.next().await {
                    Some(Ok(ev)) => ev,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "watching services for NodePorts");
                        continue;
                    }
                    None => return,
                };
                let settled = match event {
                    watcher::Event::Apply(svc) | watcher::Event::InitApply(svc) => {
                        services.insert(key_of(&svc), svc);
                        true
                    }
                    watcher::Event::Delete(svc) => {
                        services.remove(&key_of(&svc));
                        true
                    }
                    watcher::Event::Init => {
                        services.clear();
                        false
                    }
                    watcher::Event::InitDone => true,
                };
                if settled {
                    let wanted = node_ports(&services, &nodes);
                    sync(&wanted, host, &dialer, &listening, &published).await;
                }
            }
        }));
    }

    /// What is published, and what could not be.
    pub fn published(&self) -> Vec<Published> {
        lock(&self.published).values().cloned().collect()
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        if let Some(w) = self.watch.take() {
            w.abort();
        }
        for (_, l) in std::mem::take(&mut *lock(&self.listening)) {
            l.task.abort();
        }
    }
}

fn key_of(svc: &Service) -> String {
    format!(
        "{}/{}",
        svc.metadata.namespace.as_deref().unwrap_or_default(),
        svc.metadata.name.as_deref().unwrap_or_default()
    )
}

/// What the Services ask for: every NodePort, toward the nodes; then
/// every port of a LoadBalancer's ingress IPs, toward those IPs (as a
/// local cloud provider publishes them), where no NodePort holds it. Two
/// Services cannot hold one NodePort (the apiserver allocates them); of
/// LoadBalancers sharing a port, the first by name wins.
fn node_ports(
    services: &BTreeMap<String, Service>,
    nodes: &[std::net::IpAddr],
) -> BTreeMap<Key, Target> {
    let mut wanted = BTreeMap::new();
    for (name, svc) in services {
        let Some(spec) = &svc.spec else { continue };
        for port in spec.ports.iter().flatten() {
            let Some(node_port) = port.node_port.and_then(|p| u16::try_from(p).ok()) else {
                continue;
            };
            let proto = match port.protocol.as_deref().unwrap_or("TCP") {
                "TCP" => Proto::Tcp,
                "UDP" => Proto::Udp,
                // SCTP: the host's loopback has no SCTP to offer.
                _ => continue,
            };
            wanted.insert(
                (node_port, proto),
                Target {
                    what: name.clone(),
                    addrs: nodes
                        .iter()
                        .map(|ip| SocketAddr::new(*ip, node_port))
                        .collect(),
                },
            );
        }
    }
    for (name, svc) in services {
        let ingress: Vec<std::net::IpAddr> = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|i| i.ip.as_deref()?.parse().ok())
            .collect();
        if ingress.is_empty() {
            continue;
        }
        let Some(spec) = &svc.spec else { continue };
        for port in spec.ports.iter().flatten() {
            let Ok(number) = u16::try_from(port.port) else {
                continue;
            };
            let proto = match port.protocol.as_deref().unwrap_or("TCP") {
                "TCP" => Proto::Tcp,
                "UDP" => Proto::Udp,
                _ => continue,
            };
            wanted.entry((number, proto)).or_insert_with(|| Target {
                what: format!("{name} (LoadBalancer)"),
                addrs: ingress
                    .iter()
                    .map(|ip| SocketAddr::new(*ip, number))
                    .collect(),
            });
        }
    }
    wanted
}

/// Starts listeners for new keys, stops those no longer wanted (the fixed
/// ones, whose targets are not Services, are kept).
async fn sync(
    wanted: &BTreeMap<Key, Target>,
    host: Ipv4Addr,
    dialer: &Dialer,
    listening: &Mutex<BTreeMap<Key, Listening>>,
    published: &Mutex<BTreeMap<Key, Published>>,
) {
    let stale: Vec<Key> = lock(listening)
        .iter()
        .filter(|(k, l)| !l.fixed && wanted.get(k) != Some(&l.target))
        .map(|(k, _)| *k)
        .collect();
    for key in stale {
        if let Some(l) = lock(listening).remove(&key) {
            l.task.abort();
            tracing::info!(port = key.0, proto = %key.1, what = %l.target.what, "unpublished");
        }
        lock(published).remove(&key);
    }
    lock(published).retain(|k, p| p.error.is_none() || wanted.contains_key(k));
    for (key, target) in wanted {
        if lock(listening).contains_key(key) {
            continue;
        }
        let (port, proto) = *key;
        let addr = SocketAddrV4::new(host, port);
        let started = match proto {
            Proto::Tcp => TcpListener::bind(addr)
                .await
                .map(|l| tokio::spawn(serve_tcp(l, target.clone(), dialer.clone()))),
            Proto::Udp => UdpSocket::bind(addr)
                .await
                .map(|s| tokio::spawn(serve_udp(s, target.clone(), dialer.clone()))),
        };
        let error = match started {
            Ok(task) => {
                tracing::info!(port, proto = %proto, what = %target.what, "published on {addr}");
                lock(listening).insert(
                    *key,
                    Listening {
                        target: target.clone(),
                        fixed: false,
                        task,
                    },
                );
                None
            }
            Err(e) => {
                tracing::warn!(port, proto = %proto, what = %target.what, error = %e,
                    "NodePort not published on the host: {addr} is taken; reach it through a node address instead");
                Some(format!("{addr}: {e}"))
            }
        };
        lock(published).insert(
            *key,
            Published {
                port,
                proto,
                what: target.what.clone(),
                error,
            },
        );
    }
}

/// Accept errors (`EMFILE`...): pause 5 ms doubling to 1 s, at most one log
/// line a second.
struct Backoff {
    delay: Duration,
    logged: Option<Instant>,
}

impl Backoff {
    fn new() -> Self {
        Self {
            delay: Duration::from_millis(5),
            logged: None,
        }
    }

    async fn failed(&mut self, what: &str, e: &io::Error) {
        if self
            .logged
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            tracing::warn!(what, error = %e, "accept failed; backing off");
            self.logged = Some(Instant::now());
        }
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(Duration::from_secs(1));
    }

    fn reset(&mut self) {
        self.delay = Duration::from_millis(5);
    }
}

async fn serve_tcp(listener: TcpListener, target: Target, dialer: Dialer) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut backoff = Backoff::new();
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => {
                backoff.reset();
                client
            }
            Err(e) => {
                backoff.failed(&target.what, &e).await;
                continue;
            }
        };
        // Over the limit the client is closed at once, never queued.
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            continue;
        };
        let (target, dialer) = (target.clone(), dialer.clone());
        tokio::spawn(async move {
            let _slot = slot;
            relay_tcp(client, &target, &dialer).await;
        });
    }
}

async fn relay_tcp(mut client: TcpStream, target: &Target, dialer: &Dialer) {
    for addr in &target.addrs {
        match dialer.connect(*addr).await {
            Ok(mut upstream) => {
                let _ = client.set_nodelay(true);
                let _ = upstream.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                return;
            }
            Err(e) => {
                tracing::debug!(to = %addr, what = %target.what, error = %e, "relay: connect failed");
            }
        }
    }
}

struct UdpSession {
    upstream: Arc<UdpSocket>,
    last: Arc<Mutex<Instant>>,
    task: JoinHandle<()>,
}

type Sessions = Arc<Mutex<HashMap<SocketAddr, UdpSession>>>;

/// Ends every session's reply relay when the port is unpublished (its
/// serving task dropped).
struct SessionsGuard(Sessions);

impl Drop for SessionsGuard {
    fn drop(&mut self) {
        for (_, s) in lock(&self.0).drain() {
            s.task.abort();
        }
    }
}

async fn serve_udp(socket: UdpSocket, target: Target, dialer: Dialer) {
    let socket = Arc::new(socket);
    let sessions: Sessions = Arc::default();
    let _guard = SessionsGuard(Arc::clone(&sessions));
    let mut buf = vec![0u8; 65_536];
    let mut backoff = Backoff::new();
    loop {
        let (n, client) = match socket.recv_from(&mut buf).await {
            Ok(got) => {
                backoff.reset();
                got
            }
            Err(e) => {
                backoff.failed(&target.what, &e).await;
                continue;
            }
        };
        let Some(payload) = buf.get(..n) else {
            continue;
        };
        let existing = lock(&sessions).get(&client).map(|s| {
            *lock(&s.last) = Instant::now();
            Arc::clone(&s.upstream)
        });
        let upstream = match existing {
            Some(up) => up,
            None => {
                if lock(&sessions).len() >= MAX_UDP_SESSIONS {
                    continue;
                }
                let Some(addr) = target.addrs.first() else {
                    continue;
                };
                let up = match dialer.udp(*addr).await {
                    Ok(up) => Arc::new(up),
                    Err(e) => {
                        tracing::debug!(to = %addr, error = %e, "relay: udp socket");
                        continue;
                    }
                };
                let last = Arc::new(Mutex::new(Instant::now()));
                let task = tokio::spawn(udp_replies(
                    Arc::clone(&up),
                    Arc::clone(&socket),
                    client,
                    Arc::clone(&last),
                    Arc::clone(&sessions),
                ));
                lock(&sessions).insert(
                    client,
                    UdpSession {
                        upstream: Arc::clone(&up),
                        last,
                        task,
                    },
                );
                up
            }
        };
        let _ = upstream.send(payload).await;
    }
}

/// Relays one UDP client's replies until it has been idle for [`UDP_IDLE`].
async fn udp_replies(
    upstream: Arc<UdpSocket>,
    host: Arc<UdpSocket>,
    client: SocketAddr,
    last: Arc<Mutex<Instant>>,
    sessions: Sessions,
) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let idle_left = UDP_IDLE.saturating_sub(lock(&last).elapsed());
        if idle_left.is_zero() {
            break;
        }
        match tokio::time::timeout(idle_left, upstream.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                *lock(&last) = Instant::now();
                if let Some(payload) = buf.get(..n) {
                    let _ = host.send_to(payload, client).await;
                }
            }
            Ok(Err(_)) => break,
            Err(_) => {}
        }
    }
    // Removing our own entry drops its handle, not this running task.
    lock(&sessions).remove(&client);
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};

    fn svc(name: &str, ports: &[(i32, &str, Option<i32>)]) -> Service {
        Service {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                ports: Some(
                    ports
                        .iter()
                        .map(|(port, proto, node_port)| ServicePort {
                            port: *port,
                            protocol: Some((*proto).into()),
                            node_port: *node_port,
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn node_ports_are_wanted_per_port_and_protocol_on_every_node() {
        let nodes = [
            std::net::IpAddr::V4(Ipv4Addr::new(172, 31, 0, 1)),
            std::net::IpAddr::V4(Ipv4Addr::new(172, 31, 0, 2)),
        ];
        let mut services = BTreeMap::new();
        services.insert(
            "default/a".into(),
            svc("a", &[(80, "TCP", Some(30000)), (53, "UDP", Some(30000))]),
        );
        services.insert("default/b".into(), svc("b", &[(80, "TCP", None)]));
        services.insert("default/c".into(), svc("c", &[(9, "SCTP", Some(30001))]));
        let wanted = node_ports(&services, &nodes);
        assert_eq!(
            wanted.keys().copied().collect::<Vec<_>>(),
            vec![(30000, Proto::Tcp), (30000, Proto::Udp)]
        );
        let tcp = &wanted[&(30000, Proto::Tcp)];
        assert_eq!(tcp.what, "default/a");
        assert_eq!(
            tcp.addrs,
            vec![
                SocketAddr::new(nodes[0], 30000),
                SocketAddr::new(nodes[1], 30000)
            ]
        );
    }
}
