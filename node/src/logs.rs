//! Container logs, in the CRI log format the kubelet reads from containerd
//! and CRI-O: one record per line,
//!
//! ```text
//! 2025-01-02T03:04:05.123456789Z stdout F hello
//! 2025-01-02T03:04:05.2Z stderr P a line longer than 16 KiB is cut into P records...
//! ```
//!
//! `F` ends a line of the container's output, `P` is part of one (a line
//! longer than [`MAX_RECORD`], or what was left without a newline when the
//! stream ended). ferry-node reads each container's stdout and stderr
//! through pipes and writes the records ([`copy_into`]); the node API
//! serves them back as `kubectl logs` wants them ([`stream`]): with or
//! without timestamps, the last N lines, since a time, at most N bytes,
//! and following the file while the container runs.

use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use jiff::Timestamp;
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::sync::mpsc;

/// The longest piece of a line one record holds (containerd's and CRI-O's
/// default); a longer line becomes several `P` records and an `F`.
pub const MAX_RECORD: usize = 16 * 1024;
/// How often a followed log is checked for more.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// Bytes read from a log file at a time.
const CHUNK: usize = 64 * 1024;

/// Which of the container's outputs a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// One record's bytes, newline included.
pub fn record(ts: Timestamp, stream: Stream, partial: bool, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 48);
    // RFC 3339 with nanoseconds, trailing zeros dropped (Go's RFC3339Nano).
    let _ = write!(
        out,
        "{} {} {} ",
        ts,
        stream.name(),
        if partial { 'P' } else { 'F' }
    );
    out.extend_from_slice(content);
    out.push(b'\n');
    out
}

/// Cuts a byte stream into record contents: whole lines (`false`) and
/// parts of lines longer than [`MAX_RECORD`] (`true`).
#[derive(Debug, Default)]
pub struct Splitter {
    pending: Vec<u8>,
}

impl Splitter {
    /// Takes `data`; returns the records it completes.
    pub fn push(&mut self, data: &[u8]) -> Vec<(bool, Vec<u8>)> {
        let mut out = Vec::new();
        for &b in data {
            if b == b'\n' {
                out.push((false, std::mem::take(&mut self.pending)));
            } else {
                self.pending.push(b);
                if self.pending.len() >= MAX_RECORD {
                    out.push((true, std::mem::take(&mut self.pending)));
                }
            }
        }
        out
    }

    /// What was left without a newline when the stream ended.
    pub fn finish(self) -> Option<Vec<u8>> {
        (!self.pending.is_empty()).then_some(self.pending)
    }
}

/// Copies `pipe` (a container's stdout or stderr) into `file` as records
/// until the pipe closes. Each record is one `write` on a file opened for
/// appending, so stdout's and stderr's records never interleave within a
/// line.
pub async fn copy_into(mut pipe: impl AsyncRead + Unpin, stream: Stream, mut file: File) {
    let mut splitter = Splitter::default();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::debug!(error = %e, "reading a container's output");
                break;
            }
        };
        let now = Timestamp::now();
        for (partial, content) in splitter.push(buf.get(..n).unwrap_or_default()) {
            if let Err(e) = file.write_all(&record(now, stream, partial, &content)) {
                tracing::warn!(error = %e, "writing a container's log");
            }
        }
    }
    if let Some(rest) = splitter.finish()
        && let Err(e) = file.write_all(&record(Timestamp::now(), stream, true, &rest))
    {
        tracing::warn!(error = %e, "writing a container's log");
    }
}

/// One parsed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// The timestamp as written (none for a line that is not a record).
    pub ts_text: &'a str,
    pub ts: Option<Timestamp>,
    pub partial: bool,
    pub content: &'a [u8],
}

/// Reads one line of a log file (without its newline). A line that is not
/// a record (a file written before ferry-node wrote records) is taken as a
/// whole line of output with no timestamp.
pub fn parse(line: &[u8]) -> Record<'_> {
    let whole = Record {
        ts_text: "",
        ts: None,
        partial: false,
        content: line,
    };
    let mut parts = line.splitn(4, |b| *b == b' ');
    let (Some(ts), Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
        return whole;
    };
    let content = parts.next().unwrap_or_default();
    let Ok(ts_text) = std::str::from_utf8(ts) else {
        return whole;
    };
    let Ok(parsed) = ts_text.parse::<Timestamp>() else {
        return whole;
    };
    if !matches!(stream, b"stdout" | b"stderr") || !matches!(tag, b"F" | b"P") {
        return whole;
    }
    Record {
        ts_text,
        ts: Some(parsed),
        partial: tag == b"P",
        content,
    }
}

/// What `kubectl logs` asked for (kubelet's PodLogOptions, less the
/// container and `previous`, which pick the file).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    pub follow: bool,
    /// The last N lines only.
    pub tail_lines: Option<u64>,
    /// Records at or after this time only.
    pub since: Option<Timestamp>,
    /// Each line prefixed with its RFC 3339 timestamp.
    pub timestamps: bool,
    /// At most this many bytes in all.
    pub limit_bytes: Option<u64>,
}

/// How a record is written out: content, newline unless partial, the
/// timestamp first when asked.
fn render(rec: &Record<'_>, opts: &LogOptions, out: &mut Vec<u8>) {
    if opts.timestamps {
        let ts = if rec.ts_text.is_empty() {
            "0001-01-01T00:00:00Z"
        } else {
            rec.ts_text
        };
        out.extend_from_slice(ts.as_bytes());
        out.push(b' ');
    }
    out.extend_from_slice(rec.content);
    if !rec.partial {
        out.push(b'\n');
    }
}

/// Where the last `n` lines of `file` start (0 when it has fewer).
pub fn tail_start(file: &mut File, n: u64) -> std::io::Result<u64> {
    let len = file.metadata()?.len();
    if n == 0 {
        return Ok(len);
    }
    let mut end = len;
    // The file ends with a newline: the last line's own does not count.
    let mut seen: u64 = 0;
    let mut skip_last_newline = true;
    let mut buf = vec![0u8; CHUNK];
    while end > 0 {
        let start = end.saturating_sub(CHUNK as u64);
        let size = usize::try_from(end - start).unwrap_or(CHUNK);
        let chunk = buf.get_mut(..size).unwrap_or_default();
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        for i in (0..chunk.len()).rev() {
            if chunk.get(i) != Some(&b'\n') {
                skip_last_newline = false;
                continue;
            }
            if skip_last_newline {
                skip_last_newline = false;
                continue;
            }
            seen += 1;
            if seen == n {
                return Ok(start + i as u64 + 1);
            }
        }
        end = start;
    }
    Ok(0)
}

/// Whether the run whose log is read may still write to it.
pub trait Liveness: Send + 'static {
    fn live(&self) -> bool;
}

impl<F: Fn() -> bool + Send + 'static> Liveness for F {
    fn live(&self) -> bool {
        self()
    }
}

/// Sends the log at `path` to `tx` as `opts` say, following it while
/// `live` holds when asked to. Ends when the log (or the limit) is done, or
/// when the receiver goes.
pub async fn stream(
    path: PathBuf,
    opts: LogOptions,
    live: impl Liveness,
    tx: mpsc::Sender<Bytes>,
) -> std::io::Result<()> {
    let (file, mut offset) = {
        let path = path.clone();
        let tail = opts.tail_lines;
        tokio::task::spawn_blocking(move || open_at(&path, tail))
            .await
            .map_err(std::io::Error::other)??
    };
    let mut file = tokio::fs::File::from_std(file);
    let mut left = opts.limit_bytes.unwrap_or(u64::MAX);
    let mut carry: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    let mut last_look = false;
    loop {
        use tokio::io::AsyncSeekExt as _;
        file.seek(SeekFrom::Start(offset)).await?;
        let n = file.read(&mut buf).await?;
        if n == 0 {
            if !opts.follow || last_look {
                return Ok(());
            }
            // One more read once the run has ended: what it wrote last.
            if !live.live() {
                last_look = true;
                tokio::time::sleep(FOLLOW_POLL / 4).await;
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep(FOLLOW_POLL) => {}
                () = tx.closed() => return Ok(()),
            }
            continue;
        }
        offset += n as u64;
        carry.extend_from_slice(buf.get(..n).unwrap_or_default());
        // Only whole lines: a record being written is read next time.
        let Some(cut) = carry.iter().rposition(|b| *b == b'\n') else {
            continue;
        };
        let rest = carry.split_off(cut + 1);
        let mut out = Vec::with_capacity(carry.len());
        let whole = carry.strip_suffix(b"\n").unwrap_or_default();
        for line in whole.split(|b| *b == b'\n') {
            let rec = parse(line);
            if let (Some(since), Some(ts)) = (opts.since, rec.ts)
                && ts < since
            {
                continue;
            }
            render(&rec, &opts, &mut out);
        }
        carry = rest;
        if out.is_empty() {
            continue;
        }
        let take = u64::try_from(out.len()).unwrap_or(u64::MAX).min(left);
        out.truncate(usize::try_from(take).unwrap_or(usize::MAX));
        left -= take;
        if tx.send(Bytes::from(out)).await.is_err() {
            return Ok(());
        }
        if left == 0 {
            return Ok(());
        }
    }
}

fn open_at(path: &Path, tail: Option<u64>) -> std::io::Result<(File, u64)> {
    let mut file = File::open(path)?;
    let offset = match tail {
        Some(n) => tail_start(&mut file, n)?,
        None => 0,
    };
    Ok((file, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_records_and_long_ones_are_cut() {
        let mut s = Splitter::default();
        assert_eq!(
            s.push(b"one\ntw"),
            vec![(false, b"one".to_vec())],
            "a line without its newline waits"
        );
        assert_eq!(
            s.push(b"o\n\n"),
            vec![(false, b"two".to_vec()), (false, vec![])]
        );
        let long = vec![b'x'; MAX_RECORD + 10];
        let recs = s.push(&long);
        assert_eq!(recs.len(), 1);
        assert!(recs[0].0, "a full record of a longer line is partial");
        assert_eq!(recs[0].1.len(), MAX_RECORD);
        assert_eq!(s.push(b"\n"), vec![(false, vec![b'x'; 10])]);
        s.push(b"no newline");
        assert_eq!(s.finish(), Some(b"no newline".to_vec()));
    }

    #[test]
    fn records_parse_back() {
        let ts: Timestamp = "2025-01-02T03:04:05.5Z".parse().expect("ts");
        let line = record(ts, Stream::Stderr, false, b"two words");
        assert_eq!(line, b"2025-01-02T03:04:05.5Z stderr F two words\n");
        let rec = parse(line.strip_suffix(b"\n").expect("newline"));
        assert_eq!(rec.ts, Some(ts));
        assert_eq!(rec.ts_text, "2025-01-02T03:04:05.5Z");
        assert!(!rec.partial);
        assert_eq!(rec.content, b"two words");
        let rec = parse(b"2025-01-02T03:04:05Z stdout P ");
        assert!(rec.partial);
        assert_eq!(rec.content, b"");
        // Not a record: a whole line as it is.
        for raw in [
            &b"plain output"[..],
            b"",
            b"2025-99 stdout F x",
            b"2025-01-02T03:04:05Z tty F x",
        ] {
            let rec = parse(raw);
            assert_eq!((rec.ts, rec.partial, rec.content), (None, false, raw));
        }
    }

    fn temp_log(name: &str, text: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ferry-node-logs-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("0.log");
        std::fs::write(&path, text).expect("write");
        path
    }

    async fn collect(path: &Path, opts: LogOptions) -> String {
        let (tx, mut rx) = mpsc::channel(16);
        let task = tokio::spawn(stream(path.to_owned(), opts, || false, tx));
        let mut out = Vec::new();
        while let Some(b) = rx.recv().await {
            out.extend_from_slice(&b);
        }
        task.await.expect("task").expect("stream");
        String::from_utf8(out).expect("utf-8")
    }

    const LOG: &str = "2025-01-01T00:00:01Z stdout F one\n\
                       2025-01-01T00:00:02Z stderr F two\n\
                       2025-01-01T00:00:03Z stdout P thr\n\
                       2025-01-01T00:00:03.5Z stdout F ee\n\
                       2025-01-01T00:00:04Z stdout F four\n";

    #[tokio::test]
    async fn options_pick_and_shape_the_lines() {
        let path = temp_log("opts", LOG);
        assert_eq!(
            collect(&path, LogOptions::default()).await,
            "one\ntwo\nthree\nfour\n"
        );
        let tail = |n| LogOptions {
            tail_lines: Some(n),
            ..LogOptions::default()
        };
        assert_eq!(collect(&path, tail(1)).await, "four\n");
        assert_eq!(
            collect(&path, tail(2)).await,
            "ee\nfour\n",
            "records count as lines, as kubelet's tail"
        );
        assert_eq!(collect(&path, tail(0)).await, "");
        assert_eq!(collect(&path, tail(99)).await, "one\ntwo\nthree\nfour\n");
        let since = LogOptions {
            since: Some("2025-01-01T00:00:02Z".parse().expect("ts")),
            ..LogOptions::default()
        };
        assert_eq!(collect(&path, since).await, "two\nthree\nfour\n");
        let ts = LogOptions {
            timestamps: true,
            tail_lines: Some(2),
            ..LogOptions::default()
        };
        assert_eq!(
            collect(&path, ts).await,
            "2025-01-01T00:00:03.5Z ee\n2025-01-01T00:00:04Z four\n"
        );
        let limit = LogOptions {
            limit_bytes: Some(6),
            ..LogOptions::default()
        };
        assert_eq!(collect(&path, limit).await, "one\ntw");
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    #[tokio::test]
    async fn follow_streams_what_is_appended_and_ends_with_the_run() {
        let path = temp_log("follow", "2025-01-01T00:00:01Z stdout F first\n");
        let live = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (tx, mut rx) = mpsc::channel(16);
        let flag = live.clone();
        let task = tokio::spawn(stream(
            path.clone(),
            LogOptions {
                follow: true,
                ..LogOptions::default()
            },
            move || flag.load(std::sync::atomic::Ordering::SeqCst),
            tx,
        ));
        assert_eq!(rx.recv().await.as_deref(), Some(&b"first\n"[..]));
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        // Half a record first: nothing is sent until its newline.
        f.write_all(b"2025-01-01T00:00:02Z stdout F sec")
            .expect("write");
        tokio::time::sleep(FOLLOW_POLL * 2).await;
        f.write_all(b"ond\n").expect("write");
        assert_eq!(rx.recv().await.as_deref(), Some(&b"second\n"[..]));
        live.store(false, std::sync::atomic::Ordering::SeqCst);
        f.write_all(b"2025-01-01T00:00:03Z stdout F last words\n")
            .expect("write");
        assert_eq!(rx.recv().await.as_deref(), Some(&b"last words\n"[..]));
        assert_eq!(rx.recv().await, None, "the stream ends with the run");
        task.await.expect("task").expect("stream");
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }
}
