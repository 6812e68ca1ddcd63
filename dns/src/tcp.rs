//! DNS over TCP (RFC 7766 framing), served here rather than by
//! hickory-server: hickory's TCP accept loop retries a failed accept at
//! once, so on `EMFILE` it spins a CPU, and it has no connection cap. This
//! one accepts through `ferry_daemon` (back-off, rate-limited logs, a cap
//! at which new connections wait in the backlog) and answers through the
//! same [`Handler`] path as UDP.
//!
//! A connection's queries are answered one after another, as hickory does,
//! so one client holds at most one query's work. Each query must arrive
//! whole, and each answer be taken, within the idle timeout, else the
//! connection is closed.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferry_daemon::listen::{AcceptBackoff, ConnLimit, accept_limited};
use hickory_server::net::xfer::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tracing::debug;

use crate::server::Handler;

/// What one DNS-over-TCP client may hold.
#[derive(Clone, Copy, Debug)]
pub struct TcpLimits {
    /// Time to send each query (and to take each answer).
    pub idle: Duration,
    /// Connections open at once.
    pub max_connections: usize,
}

/// Serves `handler` on `listener` until the process ends.
pub async fn serve(listener: TcpListener, handler: Arc<Handler>, limits: TcpLimits) {
    let limit = ConnLimit::new(limits.max_connections);
    let mut backoff = AcceptBackoff::new("dns-tcp");
    loop {
        let (stream, peer, permit) = accept_limited(&listener, &mut backoff, &limit).await;
        let handler = handler.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(error) = connection(stream, peer, &handler, limits.idle).await {
                debug!(%peer, %error, "DNS-over-TCP connection ended");
            }
        });
    }
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what.to_owned())
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    handler: &Handler,
    idle: Duration,
) -> io::Result<()> {
    let mut query = Vec::new();
    loop {
        let mut len = [0u8; 2];
        match timeout(idle, stream.read_exact(&mut len)).await {
            // Idle between queries, or closed: a normal end.
            Err(_) => return Ok(()),
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(r) => r?,
        };
        query.resize(usize::from(u16::from_be_bytes(len)), 0);
        timeout(idle, stream.read_exact(&mut query))
            .await
            .map_err(|_| timed_out("query not received in time"))??;
        // Nothing for a message that is not a query (hickory drops those).
        let Some(reply) = handler.answer_packet(&query, peer, Protocol::Tcp).await else {
            continue;
        };
        let Ok(n) = u16::try_from(reply.len()) else {
            // Cannot happen (the encoder caps at 65535); close rather than
            // send a wrong frame.
            return Ok(());
        };
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&n.to_be_bytes());
        framed.extend_from_slice(&reply);
        timeout(idle, stream.write_all(&framed))
            .await
            .map_err(|_| timed_out("answer not taken in time"))??;
    }
}
