//! The command side of the agent's socket: `ferry-agent observe` sends a
//! filter and prints what comes back, one flow a line (`hubble observe`'s
//! form) or as JSON for tools, until interrupted or `count` flows have been
//! printed; `inspect` asks for names ([`names`]).

use std::io::Write;
use std::path::Path;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;

use super::event::Filter;
use super::names::{NameAnswer, NameQuery};
use super::server::{Line, Request};

/// The longest line accepted from the agent (a names answer is the
/// longest).
const MAX_LINE: usize = 4 * 1024 * 1024;
/// How long a names answer may take.
const NAMES_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "connecting to {path}: {source} (is ferry-agent running on this node, and is --observe-socket the path it serves?)"
    )]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("the agent refused the request: {0}")]
    Refused(String),
    #[error("talking to the agent: {0}")]
    Io(#[from] std::io::Error),
    #[error("the agent sent a line that is not a flow: {0}")]
    Garbled(String),
    #[error("{0}")]
    Filter(String),
}

/// How to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
}

/// Streams flows matching `filter` from the agent at `socket` to `out`
/// (notes about lost events to `notes`), until `count` flows (if given) or
/// the agent hangs up.
pub async fn observe(
    socket: &Path,
    filter: &Filter,
    output: Output,
    count: Option<usize>,
    out: &mut (dyn Write + Send),
    notes: &mut (dyn Write + Send),
) -> Result<(), ClientError> {
    filter.check().map_err(ClientError::Filter)?;
    let (mut lines, _write) = ask(socket, &Request::Observe(filter.clone())).await?;
    let mut printed = 0usize;
    let mut line = String::new();
    while count.is_none_or(|c| printed < c) {
        line.clear();
        let n = (&mut lines)
            .take(MAX_LINE as u64)
            .read_line(&mut line)
            .await?;
        if n == 0 {
            break;
        }
        let parsed: Line = serde_json::from_str(line.trim_end())
            .map_err(|e| ClientError::Garbled(format!("{e}: {}", line.trim_end())))?;
        match parsed {
            Line::Error { error } => return Err(ClientError::Refused(error)),
            Line::Lost { lost_events } => {
                let _ = writeln!(
                    notes,
                    "lost events: {} over the rate limit, {} for a full ring, {} while this watcher was behind",
                    lost_events.rate_limited, lost_events.ring_full, lost_events.slow_watcher
                );
            }
            Line::Names { .. } => {
                return Err(ClientError::Garbled("names, not flows".into()));
            }
            Line::Flow(record) => {
                match output {
                    Output::Json => out.write_all(line.as_bytes())?,
                    Output::Text => writeln!(out, "{}", record.line())?,
                }
                out.flush()?;
                printed += 1;
            }
        }
    }
    Ok(())
}

/// The agent's lines, and the open write half: dropping it tells the
/// agent the client left.
type Conversation = (
    BufReader<tokio::net::unix::OwnedReadHalf>,
    tokio::net::unix::OwnedWriteHalf,
);

/// Connects and sends `request`; the agent's lines follow.
async fn ask(socket: &Path, request: &Request) -> Result<Conversation, ClientError> {
    let conn = UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Connect {
            path: socket.display().to_string(),
            source,
        })?;
    let (read, mut write) = conn.into_split();
    let mut bytes = serde_json::to_vec(request).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    write.write_all(&bytes).await?;
    Ok((BufReader::new(read), write))
}

/// The names the agent at `socket` has for `query`.
pub async fn names(socket: &Path, query: &NameQuery) -> Result<NameAnswer, ClientError> {
    query.check().map_err(ClientError::Filter)?;
    let (mut lines, _write) = ask(socket, &Request::Names(query.clone())).await?;
    let mut line = String::new();
    let mut limited = (&mut lines).take(MAX_LINE as u64);
    match tokio::time::timeout(NAMES_TIMEOUT, limited.read_line(&mut line)).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(ClientError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no answer from the agent",
            )));
        }
    };
    match serde_json::from_str::<Line>(line.trim_end()) {
        Ok(Line::Names { names }) => Ok(names),
        Ok(Line::Error { error }) => Err(ClientError::Refused(error)),
        Ok(_) => Err(ClientError::Garbled(line)),
        Err(e) => Err(ClientError::Garbled(format!("{e}: {}", line.trim_end()))),
    }
}
