//! `ferry-agent observe`: sends a filter to the agent's socket and prints
//! what comes back, one flow a line (`hubble observe`'s form) or as JSON
//! for tools, until interrupted or `count` flows have been printed.

use std::io::Write;
use std::path::Path;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;

use super::event::Filter;
use super::server::Line;

/// The longest line accepted from the agent.
const MAX_LINE: usize = 64 * 1024;

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
    let conn = UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Connect {
            path: socket.display().to_string(),
            source,
        })?;
    let (read, mut write) = conn.into_split();
    let mut request = serde_json::to_vec(filter).map_err(std::io::Error::other)?;
    request.push(b'\n');
    write.write_all(&request).await?;
    let mut lines = BufReader::new(read);
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
