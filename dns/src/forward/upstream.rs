//! One exchange with one upstream: UDP from a fresh ephemeral socket, TCP
//! when the UDP answer is truncated. Everything the upstream sends is
//! untrusted; anything that does not parse or match is a failed attempt (or,
//! on UDP, ignored until the deadline), never a panic.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{Instant, timeout_at};
use tracing::debug;

use super::QueryFlags;

/// The EDNS payload size we advertise: the DNS flag day 2020 value, small
/// enough to avoid IP fragmentation on any common path.
pub(crate) const EDNS_PAYLOAD: u16 = 1232;

/// Large enough for any UDP datagram, so an upstream that ignores our
/// advertised size still parses rather than being cut off.
const UDP_BUFFER: usize = 65_535;

/// Why a single attempt against one upstream failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AttemptError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("network error: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot encode the query: {0}")]
    Encode(String),
    #[error("invalid response over TCP: {0}")]
    BadTcpResponse(Reject),
}

/// Why a received message was not accepted as the answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Reject {
    #[error("unparseable message: {0}")]
    Parse(String),
    #[error("not a response")]
    NotResponse,
    #[error("id {got} does not match {want}")]
    Id { got: u16, want: u16 },
    #[error("question does not match")]
    Question,
}

/// The transport an exchange ended with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Proto {
    Udp,
    Tcp,
}

/// Builds the wire query: a random id, RD/CD as asked, EDNS with our payload
/// size and DO as asked.
pub(crate) fn build_query(
    query: &Query,
    flags: QueryFlags,
) -> Result<(u16, Vec<u8>), AttemptError> {
    let id: u16 = rand::random();
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = flags.recursion_desired;
    message.metadata.checking_disabled = flags.checking_disabled;
    message.add_query(query.clone());
    let mut edns = Edns::new();
    edns.set_max_payload(EDNS_PAYLOAD);
    edns.set_dnssec_ok(flags.dnssec_ok);
    message.set_edns(edns);
    let bytes = message
        .to_vec()
        .map_err(|e| AttemptError::Encode(e.to_string()))?;
    Ok((id, bytes))
}

/// Parses `bytes` and accepts it only as the response to our `id` and `query`.
pub(crate) fn check_response(bytes: &[u8], id: u16, query: &Query) -> Result<Message, Reject> {
    let message = Message::from_vec(bytes).map_err(|e| Reject::Parse(e.to_string()))?;
    if message.metadata.message_type != MessageType::Response
        || message.metadata.op_code != OpCode::Query
    {
        return Err(Reject::NotResponse);
    }
    if message.metadata.id != id {
        return Err(Reject::Id {
            got: message.metadata.id,
            want: id,
        });
    }
    let matches = match message.queries.as_slice() {
        [q] => {
            q.query_type == query.query_type
                && q.query_class == query.query_class
                && q.name.eq_ignore_root(&query.name)
        }
        // Some servers drop the question from error responses; accept those
        // (they only make us fail over) but never an answer without one.
        [] => !matches!(
            message.metadata.response_code,
            ResponseCode::NoError | ResponseCode::NXDomain
        ),
        _ => false,
    };
    if !matches {
        return Err(Reject::Question);
    }
    Ok(message)
}

/// One complete exchange with `upstream`: UDP, then TCP on truncation.
/// Each transport gets its own `timeout`. Returns the last transport tried
/// along with the outcome, so the caller can count TCP dials that failed.
pub(crate) async fn exchange(
    upstream: SocketAddr,
    query: &Query,
    flags: QueryFlags,
    timeout: Duration,
) -> (Proto, Result<Message, AttemptError>) {
    let udp = async {
        let (id, bytes) = build_query(query, flags)?;
        exchange_udp(upstream, id, &bytes, query, timeout).await
    };
    match udp.await {
        Ok(response) if response.metadata.truncation => {}
        other => return (Proto::Udp, other),
    }
    debug!(%upstream, "truncated UDP response, retrying over TCP");
    let tcp = async {
        let (id, bytes) = build_query(query, flags)?;
        exchange_tcp(upstream, id, &bytes, query, timeout).await
    };
    (Proto::Tcp, tcp.await)
}

async fn exchange_udp(
    upstream: SocketAddr,
    id: u16,
    bytes: &[u8],
    query: &Query,
    timeout: Duration,
) -> Result<Message, AttemptError> {
    let deadline = Instant::now() + timeout;
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    // A fresh socket per query gives a random source port, and connecting it
    // makes the kernel drop datagrams from any other address.
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    socket.send(bytes).await?;
    let mut buf = vec![0u8; UDP_BUFFER];
    loop {
        let len = match timeout_at(deadline, socket.recv(&mut buf)).await {
            Ok(received) => received?,
            Err(_) => return Err(AttemptError::Timeout(timeout)),
        };
        let datagram = buf.get(..len).unwrap_or_default();
        match check_response(datagram, id, query) {
            Ok(message) => return Ok(message),
            // Spoofed, stale or garbage datagrams are ignored: the real
            // answer may still arrive before the deadline.
            Err(reject) => debug!(%upstream, %reject, "ignoring UDP datagram"),
        }
    }
}

async fn exchange_tcp(
    upstream: SocketAddr,
    id: u16,
    bytes: &[u8],
    query: &Query,
    timeout: Duration,
) -> Result<Message, AttemptError> {
    let deadline = Instant::now() + timeout;
    let work = async {
        let len = u16::try_from(bytes.len())
            .map_err(|_| AttemptError::Encode("query longer than 65535 bytes".to_owned()))?;
        let mut stream = TcpStream::connect(upstream).await?;
        let mut framed = Vec::with_capacity(bytes.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(bytes);
        stream.write_all(&framed).await?;
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await?;
        let mut response = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut response).await?;
        check_response(&response, id, query).map_err(AttemptError::BadTcpResponse)
    };
    match timeout_at(deadline, work).await {
        Ok(result) => result,
        Err(_) => Err(AttemptError::Timeout(timeout)),
    }
}
