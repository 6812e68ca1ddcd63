//! `kubectl port-forward`: the kubelet's SPDY port-forward protocol
//! (`portforward.k8s.io`) over one upgraded connection — plain
//! (`Upgrade: SPDY/3.1`) or tunnelled in a WebSocket (subprotocol
//! `SPDY/3.1+portforward.k8s.io`, each binary message a piece of the SPDY
//! byte stream; see [`websocket_bytes`]).
//!
//! The client opens, per local connection, two streams sharing a
//! `requestID` header: `streamType: error` (which it half-closes at once)
//! and `streamType: data`, both with a `port` header. Every stream gets a
//! SYN_REPLY at once (client-go waits for it). When both of a pair are
//! there, a TCP connection is made to `localhost:<port>` from a thread that
//! entered the pod's network namespace (`setns`; the socket stays in that
//! namespace), and bytes flow both ways: the client's FIN half-closes the
//! TCP connection, the pod's EOF becomes the data stream's FIN; once one
//! direction ends the other gets a second to finish (as containerd does),
//! then both streams are closed. A failed connection is reported on the
//! error stream as the kubelet writes it (`error forwarding port P to pod
//! NAME_NAMESPACE, uid UID: ...`), which kubectl prints.
//!
//! Flow control: what reaches the pod is given back to the client with
//! WINDOW_UPDATE (stream and session); the client's own windows are
//! honoured once it shows it keeps them (a WINDOW_UPDATE or a SETTINGS
//! initial window) — client-go's spdystream keeps none, never sends
//! WINDOW_UPDATE, so toward it the pace is TCP's backpressure alone.
//!
//! Bounds: [`MAX_STREAMS`] open streams per connection (more are refused
//! with RST_STREAM REFUSED_STREAM), [`MAX_BUFFERED`] bytes received and not
//! yet written to the pod per connection (past that the connection is not
//! read: backpressure), [`MAX_PAYLOAD`](spdy::MAX_PAYLOAD) per frame and
//! [`MAX_HEADER_BLOCK`](spdy::MAX_HEADER_BLOCK) per header block, a pair
//! must be complete within [`PAIR_TIMEOUT`], and a connection with no frame
//! either way for [`IDLE_TIMEOUT`] is closed (kubectl pings every few
//! seconds). A malformed frame ends the connection with GOAWAY
//! PROTOCOL_ERROR; it never panics the node.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsFd as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::spdy::{self, Frame, Headers};

/// The SPDY subprotocol (`X-Stream-Protocol-Version`).
pub const PROTOCOL: &str = "portforward.k8s.io";
/// The WebSocket subprotocol that tunnels it.
pub const WEBSOCKET_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
/// Streams open at once on one connection (two per forwarded connection).
pub const MAX_STREAMS: usize = 256;
/// Bytes received from the client and not yet written to the pod, per
/// connection.
pub const MAX_BUFFERED: usize = 4 * 1024 * 1024;
/// Time for the second stream of a pair.
pub const PAIR_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection with no frame read or written for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Time to connect to the port in the pod.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// After one direction ends, how long the other may still run.
const LINGER: Duration = Duration::from_secs(1);
/// Largest DATA frame sent (what one read gives, as Go's io.Copy).
const CHUNK: usize = 32 * 1024;
/// Frames queued toward the client.
const OUT_QUEUE: usize = 64;

/// The pod the connection forwards into.
#[derive(Debug, Clone)]
pub struct Target {
    /// As the kubelet names it in errors: `<name>_<namespace>`.
    pub pod: String,
    pub uid: String,
    /// The pod's network namespace file; `None` for a hostNetwork pod
    /// (the node's namespace, where ferry-node runs).
    pub netns: Option<PathBuf>,
}

/// The stream types of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Error,
    Data,
}

/// Send-side flow control, shared by the forwarders and the reader.
struct SendFlow {
    /// Whether the client keeps windows (see the module doc).
    enforced: bool,
    initial: u32,
    session: spdy::Window,
    streams: HashMap<u32, spdy::Window>,
}

struct Shared {
    out: mpsc::Sender<Frame>,
    flow: Mutex<SendFlow>,
    /// Bumped whenever a window grows or a stream goes.
    flow_changed: watch::Sender<u64>,
    /// The session receive window (SPDY/3.1).
    session_recv: Mutex<spdy::Receiver>,
    budget: Arc<Semaphore>,
    /// The last frame read or written (the writer holds this, not the
    /// rest: the queue must close when the forwarders and reader go).
    activity: Arc<Mutex<Instant>>,
    target: Target,
}

impl Shared {
    fn touch(&self) {
        if let Ok(mut a) = self.activity.lock() {
            *a = Instant::now();
        }
    }

    fn bump(&self) {
        self.flow_changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Up to `want` bytes the client's windows allow on `stream` (at least
    /// 1); `None` when the stream is gone.
    async fn reserve(&self, stream: u32, want: u32) -> Option<u32> {
        let mut changed = self.flow_changed.subscribe();
        loop {
            {
                let mut f = self.flow.lock().ok()?;
                let enforced = f.enforced;
                let session_avail = f.session.available();
                let w = f.streams.get_mut(&stream)?;
                if !enforced {
                    return Some(want);
                }
                let n = want.min(w.available()).min(session_avail);
                if n > 0 {
                    let _ = w.consume(n);
                    let _ = f.session.consume(n);
                    return Some(n);
                }
            }
            changed.changed().await.ok()?;
        }
    }

    async fn send(&self, frame: Frame) -> bool {
        self.out.send(frame).await.is_ok()
    }
}

/// What the reader hands a forwarder: the client's bytes (with their share
/// of the budget), or the end of them.
type Inbound = (Bytes, OwnedSemaphorePermit);

/// A stream the reader knows.
struct StreamEntry {
    kind: Kind,
    request: String,
    /// Toward the forwarder (data streams; dropped at the client's FIN).
    inbound: Option<mpsc::UnboundedSender<Inbound>>,
}

/// A pair being assembled, or running.
struct PairEntry {
    error: Option<u32>,
    data: Option<(u32, Headers, mpsc::UnboundedReceiver<Inbound>)>,
    started: bool,
    since: Instant,
    reset: watch::Sender<bool>,
}

/// Serves one port-forward connection until the client goes, the
/// connection idles out or breaks the protocol.
pub async fn serve<S>(io: S, target: Target)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let (out_tx, mut out_rx) = mpsc::channel::<Frame>(OUT_QUEUE);
    let (flow_changed, _) = watch::channel(0u64);
    let shared = Arc::new(Shared {
        out: out_tx,
        flow: Mutex::new(SendFlow {
            enforced: false,
            initial: spdy::INITIAL_WINDOW,
            session: spdy::Window::default(),
            streams: HashMap::new(),
        }),
        flow_changed,
        session_recv: Mutex::new(spdy::Receiver::default()),
        budget: Arc::new(Semaphore::new(MAX_BUFFERED)),
        activity: Arc::new(Mutex::new(Instant::now())),
        target,
    });
    // One writer: frames in order, one compression context.
    let activity = shared.activity.clone();
    let writer = tokio::spawn(async move {
        let mut enc = spdy::Encoder::default();
        let mut buf = Vec::with_capacity(CHUNK + 64);
        while let Some(frame) = out_rx.recv().await {
            buf.clear();
            enc.encode(&frame, &mut buf);
            // Whatever else is queued goes in the same write.
            while buf.len() < CHUNK {
                match out_rx.try_recv() {
                    Ok(f) => enc.encode(&f, &mut buf),
                    Err(_) => break,
                }
            }
            if wr.write_all(&buf).await.is_err() || wr.flush().await.is_err() {
                break;
            }
            if let Ok(mut a) = activity.lock() {
                *a = Instant::now();
            }
        }
        let _ = wr.shutdown().await;
    });
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
    let (closing_tx, closing_rx) = watch::channel(false);
    let mut conn = Conn {
        shared: shared.clone(),
        streams: HashMap::new(),
        pairs: HashMap::new(),
        last_stream: 0,
        going_away: false,
        done_tx,
        closing: closing_rx,
    };
    let mut dec = spdy::Decoder::default();
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let outcome: Result<(), spdy::SpdyError> = 'conn: loop {
        // Every whole frame buffered, then more bytes.
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    shared.touch();
                    conn.frame(frame).await;
                }
                Ok(None) => break,
                Err(e) => break 'conn Err(e),
            }
        }
        let idle_at = shared
            .activity
            .lock()
            .map(|a| *a + IDLE_TIMEOUT)
            .unwrap_or_else(|_| Instant::now());
        tokio::select! {
            read = rd.read_buf(&mut buf) => match read {
                Ok(0) | Err(_) => break Ok(()),
                Ok(_) => {}
            },
            Some(request) = done_rx.recv() => conn.finished(&request),
            _ = tick.tick() => conn.expire_pairs().await,
            () = tokio::time::sleep_until(idle_at) => {
                tracing::debug!(pod = %shared.target.pod, "port-forward: idle, closing");
                let _ = shared.send(Frame::GoAway { last_good: conn.last_stream, status: spdy::goaway::OK }).await;
                break Ok(());
            }
        }
    };
    if let Err(e) = &outcome {
        tracing::info!(pod = %shared.target.pod, error = %e, "port-forward: a malformed frame, closing");
        let _ = shared
            .send(Frame::GoAway {
                last_good: conn.last_stream,
                status: spdy::goaway::PROTOCOL_ERROR,
            })
            .await;
    }
    // Everything stops: forwarders see `closing`, drop their senders, and
    // the writer ends once the queue is empty.
    let _ = closing_tx.send(true);
    drop(conn);
    drop(shared);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
}

struct Conn {
    shared: Arc<Shared>,
    streams: HashMap<u32, StreamEntry>,
    pairs: HashMap<String, PairEntry>,
    last_stream: u32,
    going_away: bool,
    done_tx: mpsc::UnboundedSender<String>,
    closing: watch::Receiver<bool>,
}

impl Conn {
    async fn reset(&self, stream: u32, status: u32) {
        let _ = self.shared.send(Frame::RstStream { stream, status }).await;
    }

    async fn frame(&mut self, frame: Frame) {
        match frame {
            Frame::SynStream {
                stream,
                fin,
                unidirectional,
                headers,
                ..
            } => self.syn_stream(stream, fin, unidirectional, headers).await,
            Frame::Data { stream, fin, data } => {
                let Some(entry) = self.streams.get_mut(&stream) else {
                    // A stream already finished here: its last bytes are
                    // dropped, as spdystream drops them.
                    return;
                };
                if !data.is_empty()
                    && let Some(tx) = &entry.inbound
                {
                    let n = u32::try_from(data.len()).unwrap_or(u32::MAX);
                    // Backpressure: past the budget, the connection is
                    // not read until the pod takes what is queued.
                    if let Ok(permit) = self.shared.budget.clone().acquire_many_owned(n).await
                        && tx.send((data, permit)).is_err()
                    {
                        entry.inbound = None;
                    }
                }
                if fin {
                    entry.inbound = None;
                }
            }
            Frame::RstStream { stream, .. } => {
                if let Some(entry) = self.streams.remove(&stream) {
                    self.drop_flow(stream);
                    if let Some(pair) = self.pairs.get(&entry.request) {
                        pair.reset.send_replace(true);
                        if !pair.started {
                            self.forget_pair(&entry.request);
                        }
                    }
                }
            }
            Frame::Settings { entries } => {
                for (_, id, value) in entries {
                    if id == spdy::SETTINGS_INITIAL_WINDOW_SIZE
                        && i64::from(value) <= spdy::MAX_WINDOW
                        && let Ok(mut f) = self.shared.flow.lock()
                    {
                        let old = f.initial;
                        f.initial = value;
                        f.enforced = true;
                        for w in f.streams.values_mut() {
                            w.rebase(old, value);
                        }
                    }
                }
                self.shared.bump();
            }
            Frame::Ping { id } => {
                // The client's pings (odd ids) come back; this side sends
                // none.
                if id % 2 == 1 {
                    let _ = self.shared.send(Frame::Ping { id }).await;
                }
            }
            Frame::GoAway { .. } => self.going_away = true,
            Frame::WindowUpdate { stream, delta } => {
                let mut overflow = false;
                if let Ok(mut f) = self.shared.flow.lock() {
                    f.enforced = true;
                    let w = if stream == 0 {
                        Some(&mut f.session)
                    } else {
                        f.streams.get_mut(&stream)
                    };
                    if let Some(w) = w {
                        overflow = w.grant(delta).is_err();
                    }
                }
                if overflow && stream != 0 {
                    self.reset(stream, spdy::rst::FLOW_CONTROL_ERROR).await;
                }
                self.shared.bump();
            }
            Frame::SynReply { .. } | Frame::Headers { .. } | Frame::Unknown { .. } => {}
        }
    }

    async fn syn_stream(&mut self, stream: u32, fin: bool, uni: bool, headers: Headers) {
        if stream.is_multiple_of(2) || stream <= self.last_stream {
            self.reset(stream, spdy::rst::PROTOCOL_ERROR).await;
            return;
        }
        self.last_stream = stream;
        if self.going_away || self.streams.len() >= MAX_STREAMS {
            self.reset(stream, spdy::rst::REFUSED_STREAM).await;
            return;
        }
        let kind = match headers.get("streamtype") {
            Some("error") => Kind::Error,
            Some("data") => Kind::Data,
            other => {
                tracing::debug!(stream, kind = ?other, "port-forward: an unknown stream type");
                self.reset(stream, spdy::rst::PROTOCOL_ERROR).await;
                return;
            }
        };
        // Without a requestID (older clients) the pair is the error
        // stream and the data stream right after it.
        let request = headers.get("requestid").map_or_else(
            || match kind {
                Kind::Error => stream.to_string(),
                Kind::Data => stream.saturating_sub(2).to_string(),
            },
            str::to_owned,
        );
        let taken = self.pairs.get(&request).is_some_and(|p| match kind {
            Kind::Error => p.error.is_some(),
            Kind::Data => p.data.is_some() || p.started,
        });
        if taken {
            self.reset(stream, spdy::rst::PROTOCOL_ERROR).await;
            return;
        }
        if !uni {
            let _ = self
                .shared
                .send(Frame::SynReply {
                    stream,
                    fin: false,
                    headers: Headers::default(),
                })
                .await;
        }
        if let Ok(mut f) = self.shared.flow.lock() {
            let w = spdy::Window::new(f.initial);
            f.streams.insert(stream, w);
        }
        let pair = self
            .pairs
            .entry(request.clone())
            .or_insert_with(|| PairEntry {
                error: None,
                data: None,
                started: false,
                since: Instant::now(),
                reset: watch::channel(false).0,
            });
        let mut inbound = None;
        match kind {
            Kind::Error => pair.error = Some(stream),
            Kind::Data => {
                let (tx, rx) = mpsc::unbounded_channel();
                if !fin {
                    inbound = Some(tx);
                }
                pair.data = Some((stream, headers, rx));
            }
        }
        self.streams.insert(
            stream,
            StreamEntry {
                kind,
                request: request.clone(),
                inbound,
            },
        );
        self.start_if_complete(&request);
    }

    fn start_if_complete(&mut self, request: &str) {
        let Some(pair) = self.pairs.get_mut(request) else {
            return;
        };
        let (Some(error), Some(_)) = (pair.error, pair.data.as_ref()) else {
            return;
        };
        let Some((data, headers, inbound)) = pair.data.take() else {
            return;
        };
        pair.started = true;
        let job = Forward {
            shared: self.shared.clone(),
            error,
            data,
            port: headers.get("port").unwrap_or("").to_owned(),
            inbound,
            reset: pair.reset.subscribe(),
            closing: self.closing.clone(),
        };
        let done = self.done_tx.clone();
        let request = request.to_owned();
        tokio::spawn(async move {
            job.run().await;
            let _ = done.send(request);
        });
    }

    /// A forwarder finished: its streams are forgotten.
    fn finished(&mut self, request: &str) {
        self.forget_pair(request);
    }

    fn forget_pair(&mut self, request: &str) {
        let ids: Vec<u32> = self
            .streams
            .iter()
            .filter(|(_, e)| e.request == request)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.streams.remove(&id);
            self.drop_flow(id);
        }
        self.pairs.remove(request);
    }

    fn drop_flow(&self, stream: u32) {
        if let Ok(mut f) = self.shared.flow.lock() {
            f.streams.remove(&stream);
        }
        self.shared.bump();
    }

    /// Pairs still missing a stream after [`PAIR_TIMEOUT`]: the error is
    /// told on the error stream if there is one, and both are closed.
    async fn expire_pairs(&mut self) {
        let late: Vec<String> = self
            .pairs
            .iter()
            .filter(|(_, p)| !p.started && p.since.elapsed() > PAIR_TIMEOUT)
            .map(|(r, _)| r.clone())
            .collect();
        for request in late {
            let streams: Vec<(u32, Kind)> = self
                .streams
                .iter()
                .filter(|(_, e)| e.request == request)
                .map(|(id, e)| (*id, e.kind))
                .collect();
            for (id, kind) in streams {
                if kind == Kind::Error {
                    let msg = format!("timed out waiting for the data stream of request {request}");
                    let _ = self
                        .shared
                        .send(Frame::Data {
                            stream: id,
                            fin: false,
                            data: Bytes::from(msg),
                        })
                        .await;
                }
                let _ = self
                    .shared
                    .send(Frame::Data {
                        stream: id,
                        fin: true,
                        data: Bytes::new(),
                    })
                    .await;
            }
            self.forget_pair(&request);
        }
    }
}

/// One forwarded connection: a pair of streams and a TCP connection in the
/// pod.
struct Forward {
    shared: Arc<Shared>,
    error: u32,
    data: u32,
    port: String,
    inbound: mpsc::UnboundedReceiver<Inbound>,
    reset: watch::Receiver<bool>,
    closing: watch::Receiver<bool>,
}

async fn flag(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

impl Forward {
    async fn run(self) {
        let Forward {
            shared,
            error,
            data,
            port,
            inbound,
            reset,
            closing,
        } = self;
        let stop = async {
            tokio::select! {
                () = flag(reset.clone()) => {}
                () = flag(closing.clone()) => {}
            }
        };
        tokio::pin!(stop);
        let target = shared.target.clone();
        let port_num = port.parse::<u16>().ok().filter(|p| *p > 0);
        let connected = match port_num {
            None => Err(format!("invalid port {port:?}")),
            Some(p) => tokio::select! {
                r = connect_in(target.netns.clone(), p) => r,
                () = &mut stop => return,
            },
        };
        let mut data_fin_sent = false;
        match connected {
            Err(msg) => {
                let text = format!(
                    "error forwarding port {port} to pod {}, uid {}: {msg}",
                    target.pod, target.uid
                );
                tracing::info!(pod = %target.pod, %port, error = %msg, "port-forward: cannot connect");
                let _ = shared
                    .send(Frame::Data {
                        stream: error,
                        fin: false,
                        data: Bytes::from(text),
                    })
                    .await;
            }
            Ok(tcp) => {
                tracing::debug!(pod = %target.pod, %port, "port-forward: connected");
                let (mut tr, mut tw) = tcp.into_split();
                let mut inbound = inbound;
                let sh = shared.clone();
                let up = async move {
                    let mut recv = spdy::Receiver::default();
                    while let Some((bytes, permit)) = inbound.recv().await {
                        let n = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
                        let _ = recv.received(n);
                        if tw.write_all(&bytes).await.is_err() {
                            return;
                        }
                        drop(permit);
                        if let Some(delta) = recv.delivered(n) {
                            let _ = sh
                                .send(Frame::WindowUpdate {
                                    stream: data,
                                    delta,
                                })
                                .await;
                        }
                        let session = sh.session_recv.lock().ok().and_then(|mut s| {
                            let _ = s.received(n);
                            s.delivered(n)
                        });
                        if let Some(delta) = session {
                            let _ = sh.send(Frame::WindowUpdate { stream: 0, delta }).await;
                        }
                    }
                    // The client's FIN: the pod sees the end of input.
                    let _ = tw.shutdown().await;
                };
                let sh = shared.clone();
                let fin_sent = &mut data_fin_sent;
                let down = async move {
                    let mut buf = vec![0u8; CHUNK];
                    loop {
                        let n = match tr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let mut chunk = Bytes::copy_from_slice(buf.get(..n).unwrap_or_default());
                        while !chunk.is_empty() {
                            let want = u32::try_from(chunk.len()).unwrap_or(u32::MAX);
                            let Some(grant) = sh.reserve(data, want).await else {
                                return;
                            };
                            let piece = chunk.split_to((grant as usize).min(chunk.len()));
                            if !sh
                                .send(Frame::Data {
                                    stream: data,
                                    fin: false,
                                    data: piece,
                                })
                                .await
                            {
                                return;
                            }
                        }
                    }
                    *fin_sent = true;
                    let _ = sh
                        .send(Frame::Data {
                            stream: data,
                            fin: true,
                            data: Bytes::new(),
                        })
                        .await;
                };
                tokio::pin!(up, down);
                tokio::select! {
                    () = &mut up => {
                        let _ = tokio::time::timeout(LINGER, async {
                            tokio::select! { () = &mut down => {}, () = &mut stop => {} }
                        }).await;
                    }
                    () = &mut down => {
                        let _ = tokio::time::timeout(LINGER, async {
                            tokio::select! { () = &mut up => {}, () = &mut stop => {} }
                        }).await;
                    }
                    () = &mut stop => {}
                }
            }
        }
        if *closing.borrow() {
            return;
        }
        // Both streams closed from this side, unless the client reset
        // them (then the stream is gone and nothing more is sent on it).
        let gone = |id: u32| {
            shared
                .flow
                .lock()
                .map(|f| !f.streams.contains_key(&id))
                .unwrap_or(true)
        };
        if !data_fin_sent && !gone(data) {
            let _ = shared
                .send(Frame::Data {
                    stream: data,
                    fin: true,
                    data: Bytes::new(),
                })
                .await;
        }
        if !gone(error) {
            let _ = shared
                .send(Frame::Data {
                    stream: error,
                    fin: true,
                    data: Bytes::new(),
                })
                .await;
        }
    }
}

/// A TCP connection to `localhost:port` made inside `netns` (the node's
/// own namespace for `None`): IPv4 first, then IPv6, as containerd tries.
pub async fn connect_in(netns: Option<PathBuf>, port: u16) -> Result<TcpStream, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("port-forward".into())
        .spawn(move || {
            let r = (|| {
                if let Some(path) = &netns {
                    let f = std::fs::File::open(path).map_err(|e| {
                        format!("opening the network namespace {}: {e}", path.display())
                    })?;
                    rustix::thread::move_into_link_name_space(
                        f.as_fd(),
                        Some(rustix::thread::LinkNameSpaceType::Network),
                    )
                    .map_err(|e| {
                        format!("entering the network namespace {}: {e}", path.display())
                    })?;
                }
                connect_loopback(port)
            })();
            let _ = tx.send(r);
        });
    if let Err(e) = spawned {
        return Err(format!("starting a thread: {e}"));
    }
    let std = rx
        .await
        .map_err(|_| "the connecting thread died".to_owned())??;
    std.set_nonblocking(true)
        .map_err(|e| format!("making the connection non-blocking: {e}"))?;
    let tcp = TcpStream::from_std(std).map_err(|e| format!("registering the connection: {e}"))?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// Go's wording for a failed dial, so kubectl's output reads as with
/// containerd.
fn connect_loopback(port: u16) -> Result<std::net::TcpStream, String> {
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let e4 = match std::net::TcpStream::connect_timeout(&v4, CONNECT_TIMEOUT) {
        Ok(s) => return Ok(s),
        Err(e) => e,
    };
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    let e6 = match std::net::TcpStream::connect_timeout(&v6, CONNECT_TIMEOUT) {
        Ok(s) => return Ok(s),
        Err(e) => e,
    };
    let why = |e: &std::io::Error| match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
        std::io::ErrorKind::TimedOut => "i/o timeout".to_owned(),
        _ => e.to_string(),
    };
    Err(format!(
        "failed to connect to localhost:{port} inside the pod's network namespace: \
         IPv4: dial tcp4 {v4}: connect: {}, IPv6: dial tcp6 {v6}: connect: {}",
        why(&e4),
        why(&e6)
    ))
}

/// The byte stream a WebSocket tunnels (`SPDY/3.1+portforward.k8s.io`):
/// every binary message from the client is appended to it, every write to
/// it goes out as one binary message. The tunnel ends with a normal close
/// when the returned end is dropped.
pub fn websocket_bytes<S>(ws: WebSocketStream<S>) -> tokio::io::DuplexStream
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let (mut sink, mut stream) = ws.split();
        let (mut rd, mut wr) = tokio::io::split(theirs);
        let inbound = async move {
            while let Some(msg) = stream.next().await {
                match msg {
                    Ok(Message::Binary(b)) => {
                        if wr.write_all(&b).await.is_err() {
                            break;
                        }
                    }
                    Ok(Message::Close(_)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            let _ = wr.shutdown().await;
        };
        let outbound = async move {
            let mut buf = vec![0u8; CHUNK];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let msg = Message::binary(buf.get(..n).unwrap_or_default().to_vec());
                        if sink.send(msg).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = sink
                .send(Message::Close(Some(CloseFrame {
                    code: CloseCode::Normal,
                    reason: "".into(),
                })))
                .await;
            let _ = sink.close().await;
        };
        tokio::pin!(inbound, outbound);
        tokio::select! {
            () = &mut inbound => {
                // The client went or closed: whatever is still queued
                // toward it gets a moment.
                let _ = tokio::time::timeout(Duration::from_secs(5), &mut outbound).await;
            }
            () = &mut outbound => {
                let _ = tokio::time::timeout(Duration::from_secs(5), &mut inbound).await;
            }
        }
    });
    ours
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A client end of a session: frames in, frames out.
    struct Client {
        io: tokio::io::DuplexStream,
        enc: spdy::Encoder,
        dec: spdy::Decoder,
        buf: BytesMut,
    }

    impl Client {
        fn start(target: Target) -> Self {
            let (client, server) = tokio::io::duplex(256 * 1024);
            tokio::spawn(serve(server, target));
            Self {
                io: client,
                enc: spdy::Encoder::default(),
                dec: spdy::Decoder::default(),
                buf: BytesMut::new(),
            }
        }

        async fn send(&mut self, f: Frame) {
            let mut out = Vec::new();
            self.enc.encode(&f, &mut out);
            self.io.write_all(&out).await.expect("write");
        }

        async fn raw(&mut self, bytes: &[u8]) {
            self.io.write_all(bytes).await.expect("write");
        }

        /// The next frame, `None` at the end of the connection.
        async fn next(&mut self) -> Option<Frame> {
            loop {
                if let Some(f) = self.dec.decode(&mut self.buf).expect("valid frames") {
                    return Some(f);
                }
                let n =
                    tokio::time::timeout(Duration::from_secs(10), self.io.read_buf(&mut self.buf))
                        .await
                        .expect("a frame in time")
                        .expect("read");
                if n == 0 {
                    return None;
                }
            }
        }

        async fn open(&mut self, stream: u32, kind: &str, port: u16, request: &str) {
            self.send(Frame::SynStream {
                stream,
                associated: 0,
                priority: 0,
                fin: false,
                unidirectional: false,
                headers: Headers::default()
                    .with("streamType", kind)
                    .with("port", &port.to_string())
                    .with("requestID", request),
            })
            .await;
        }
    }

    fn here() -> Target {
        Target {
            pod: "web_default".into(),
            uid: "u-1".into(),
            netns: None,
        }
    }

    #[tokio::test]
    async fn a_pair_of_streams_forwards_bytes_both_ways() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.expect("read");
            s.write_all(&[b"echo:".as_slice(), &got].concat())
                .await
                .expect("write");
        });
        let mut c = Client::start(here());
        c.open(1, "error", port, "0").await;
        c.send(Frame::Data {
            stream: 1,
            fin: true,
            data: Bytes::new(),
        })
        .await;
        c.open(3, "data", port, "0").await;
        c.send(Frame::Data {
            stream: 3,
            fin: true,
            data: Bytes::from_static(b"hello"),
        })
        .await;
        let mut replies = Vec::new();
        let mut received = Vec::new();
        let mut data_fin = false;
        let mut error_fin = false;
        while !(data_fin && error_fin) {
            match c.next().await.expect("a frame") {
                Frame::SynReply { stream, .. } => replies.push(stream),
                Frame::Data {
                    stream: 3,
                    fin,
                    data,
                } => {
                    received.extend_from_slice(&data);
                    data_fin |= fin;
                }
                Frame::Data {
                    stream: 1,
                    fin,
                    data,
                } => {
                    assert!(data.is_empty(), "no error: {data:?}");
                    error_fin |= fin;
                }
                Frame::WindowUpdate { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(replies, [1, 3]);
        assert_eq!(received, b"echo:hello");
        server.await.expect("server");
    }

    #[tokio::test]
    async fn a_refused_connection_is_told_on_the_error_stream() {
        // A port nothing listens on: bind, note it, close.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let mut c = Client::start(here());
        c.open(1, "error", port, "7").await;
        c.open(3, "data", port, "7").await;
        let mut error = Vec::new();
        let (mut data_fin, mut error_fin) = (false, false);
        while !(data_fin && error_fin) {
            match c.next().await.expect("a frame") {
                Frame::Data {
                    stream: 1,
                    fin,
                    data,
                } => {
                    error.extend_from_slice(&data);
                    error_fin |= fin;
                }
                Frame::Data { stream: 3, fin, .. } => data_fin |= fin,
                _ => {}
            }
        }
        let error = String::from_utf8(error).expect("text");
        assert!(
            error.starts_with(&format!(
                "error forwarding port {port} to pod web_default, uid u-1: failed to connect to localhost:{port}"
            )),
            "{error}"
        );
        assert!(error.contains("connection refused"), "{error}");
        // The connection serves on: a ping is answered.
        c.send(Frame::Ping { id: 5 }).await;
        loop {
            if let Frame::Ping { id } = c.next().await.expect("pong") {
                assert_eq!(id, 5);
                break;
            }
        }
    }

    #[tokio::test]
    async fn bad_streams_are_refused_and_garbage_ends_the_connection() {
        let mut c = Client::start(here());
        // Unknown stream type, and an even (server-side) id.
        c.open(1, "bogus", 80, "0").await;
        c.open(4, "data", 80, "0").await;
        let mut resets = Vec::new();
        while resets.len() < 2 {
            if let Frame::RstStream { stream, status } = c.next().await.expect("a frame") {
                assert_eq!(status, spdy::rst::PROTOCOL_ERROR);
                resets.push(stream);
            }
        }
        assert_eq!(resets, [1, 4]);
        // A SPDY/2 frame: GOAWAY PROTOCOL_ERROR, then the end.
        c.raw(&[0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1]).await;
        let mut goaway = None;
        while let Some(f) = c.next().await {
            if let Frame::GoAway { status, .. } = f {
                goaway = Some(status);
            }
        }
        assert_eq!(goaway, Some(spdy::goaway::PROTOCOL_ERROR));
    }

    #[tokio::test]
    async fn streams_past_the_limit_are_refused() {
        let mut c = Client::start(here());
        // Error streams only: pairs that never complete stay open.
        for i in 0..=MAX_STREAMS as u32 {
            c.open(2 * i + 1, "error", 80, &i.to_string()).await;
        }
        let last = 2 * MAX_STREAMS as u32 + 1;
        loop {
            match c.next().await.expect("a frame") {
                Frame::RstStream { stream, status } => {
                    assert_eq!((stream, status), (last, spdy::rst::REFUSED_STREAM));
                    break;
                }
                Frame::SynReply { stream, .. } => assert!(stream < last),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn the_clients_window_is_kept_once_it_shows_it_keeps_one() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let big = vec![7u8; 200 * 1024];
        let payload = big.clone();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let _ = s.write_all(&payload).await;
        });
        let mut c = Client::start(here());
        // A 1 KiB initial window for every stream.
        c.send(Frame::Settings {
            entries: vec![(0, spdy::SETTINGS_INITIAL_WINDOW_SIZE, 1024)],
        })
        .await;
        c.open(1, "error", port, "0").await;
        c.open(3, "data", port, "0").await;
        let mut got = 0usize;
        // Without updates, no more than the window arrives.
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            let f = tokio::time::timeout(Duration::from_millis(100), c.next()).await;
            if let Ok(Some(Frame::Data {
                stream: 3, data, ..
            })) = f
            {
                got += data.len();
            }
        }
        assert_eq!(got, 1024);
        // Updates open it; everything arrives.
        let mut fin = false;
        for stream in [3, 0] {
            c.send(Frame::WindowUpdate {
                stream,
                delta: 1 << 20,
            })
            .await;
        }
        while !fin {
            if let Some(Frame::Data {
                stream: 3,
                data,
                fin: f,
            }) = c.next().await
            {
                got += data.len();
                fin = f;
            }
        }
        assert_eq!(got, big.len());
    }
}
