//! The etcd v3 store: objects live under one key prefix in an etcd cluster and
//! etcd's own store revision is the resource version, as in kube-apiserver.
//!
//! This module owns the connection to etcd and the thread it runs on. The
//! [`Backend`] trait is synchronous and is called both from async code (store
//! start-up) and from `spawn_blocking` threads, so the client cannot be driven
//! with `Handle::block_on` on the caller's thread. Instead [`EtcdBackend`]
//! starts one dedicated thread with a current-thread tokio runtime that owns
//! the `etcd_client::Client`; callers send it requests over a channel and wait
//! for the reply on a std channel. The thread handles one request at a time,
//! which matches the backend contract (the caller serializes writes) and keeps
//! the returned revisions in commit order. It stops when the backend is
//! dropped.
//!
//! Keys are stored as `prefix + key`. The prefix is matched as a plain byte
//! prefix, like kube-apiserver's `--etcd-prefix`: give each store a prefix that
//! is not itself a prefix of another store's (`/registry` and `/registry-b`
//! overlap; `/a/registry` and `/b/registry` do not).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, KvClient, Txn, TxnOp};
use thiserror::Error;
use tokio::sync::mpsc;

use super::{Backend, Snapshot, StorageError, StoredObject, Write};

/// Keys fetched per range request while loading.
const PAGE_SIZE: i64 = 10_000;
/// A page holds whole objects, so it can exceed tonic's 4 MiB default; etcd
/// itself caps what it sends at 2 GiB.
const MAX_RESPONSE_BYTES: usize = i32::MAX as usize;
/// Limit on each gRPC request, so a dead etcd surfaces as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a load restarts when history it was paging through was compacted
/// underneath it.
const LOAD_ATTEMPTS: usize = 3;

/// What can go wrong talking to etcd.
#[derive(Debug, Error)]
pub enum EtcdError {
    #[error("no etcd endpoints given")]
    NoEndpoints,
    #[error("etcd client: {0}")]
    Client(#[from] etcd_client::Error),
    #[error("could not start the etcd client thread: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("could not build the etcd client runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("the etcd client thread has stopped")]
    WorkerGone,
    #[error("etcd {op} response has no header")]
    MissingHeader { op: &'static str },
    #[error("etcd returned a negative revision {0}")]
    NegativeRevision(i64),
    #[error("revision {0} does not fit etcd's signed 64-bit revisions")]
    RevisionOutOfRange(u64),
    #[error(
        "etcd revision went back from {previous} to {got}: was etcd restored from an older copy?"
    )]
    RevisionWentBack { previous: u64, got: u64 },
    #[error("deleting {key}: not in etcd, so the store revision did not advance")]
    DeleteAbsent { key: String },
}

type Reply<T> = std_mpsc::SyncSender<Result<T, EtcdError>>;

enum Request {
    Load { reply: Reply<Snapshot> },
    Commit { write: Write, reply: Reply<u64> },
    Compact { revision: u64, reply: Reply<()> },
    Health { reply: Reply<()> },
}

/// A [`Backend`] over etcd v3, driven from its own thread.
pub struct EtcdBackend {
    prefix: String,
    endpoints: Vec<String>,
    /// `None` only while dropping, so the worker sees the channel close.
    requests: Option<mpsc::UnboundedSender<Request>>,
    worker: Option<JoinHandle<()>>,
    /// Highest revision seen, to catch revisions going backwards.
    last_revision: AtomicU64,
}

impl std::fmt::Debug for EtcdBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdBackend")
            .field("prefix", &self.prefix)
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

impl EtcdBackend {
    /// Connects to etcd at `endpoints` (e.g. `http://127.0.0.1:2379`) and
    /// checks it answers. Objects are kept under `prefix` (e.g. `/registry`).
    ///
    /// # Errors
    ///
    /// [`EtcdError::NoEndpoints`] for an empty list, [`EtcdError::Client`]
    /// when etcd cannot be reached or refuses the probe read, and the other
    /// [`EtcdError`]s when the client thread cannot be started.
    pub fn connect(endpoints: &[String], prefix: &str) -> Result<Self, StorageError> {
        if endpoints.is_empty() {
            return Err(EtcdError::NoEndpoints.into());
        }
        let (requests, inbox) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = std_mpsc::sync_channel(1);
        let worker = {
            let endpoints = endpoints.to_vec();
            let prefix = prefix.to_owned();
            std::thread::Builder::new()
                .name("ferry-etcd".into())
                .spawn(move || worker_main(endpoints, prefix, inbox, ready_tx))
                .map_err(EtcdError::Spawn)?
        };
        let revision = match ready_rx.recv() {
            Ok(Ok(revision)) => revision,
            Ok(Err(e)) => {
                // The worker has returned after reporting the error.
                let _ = worker.join();
                return Err(e.into());
            }
            Err(_) => {
                let _ = worker.join();
                return Err(EtcdError::WorkerGone.into());
            }
        };
        tracing::info!(endpoints = ?endpoints, prefix, revision, "connected to etcd");
        Ok(Self {
            prefix: prefix.to_owned(),
            endpoints: endpoints.to_vec(),
            requests: Some(requests),
            worker: Some(worker),
            last_revision: AtomicU64::new(revision),
        })
    }

    /// Compacts etcd's history up to `revision`: older versions of keys and
    /// their events are dropped, so watches and reads cannot start before it.
    /// Compacting to a revision that is already compacted is not an error;
    /// revision 0 does nothing.
    ///
    /// # Errors
    ///
    /// [`EtcdError::Client`] when etcd refuses, e.g. for a revision it has
    /// not reached yet, or cannot be reached.
    pub fn compact(&self, revision: u64) -> Result<(), StorageError> {
        if revision == 0 {
            return Ok(());
        }
        self.call(|reply| Request::Compact { revision, reply })?;
        Ok(())
    }

    /// Sends a request to the worker and waits for its answer.
    fn call<T>(&self, request: impl FnOnce(Reply<T>) -> Request) -> Result<T, EtcdError> {
        let (reply, answer) = std_mpsc::sync_channel(1);
        self.requests
            .as_ref()
            .ok_or(EtcdError::WorkerGone)?
            .send(request(reply))
            .map_err(|_| EtcdError::WorkerGone)?;
        answer.recv().map_err(|_| EtcdError::WorkerGone)?
    }

    /// Records `revision` as seen, failing if it is older than one seen before
    /// (or, for a commit, not newer).
    fn advance(&self, revision: u64, strictly: bool) -> Result<(), EtcdError> {
        let previous = self.last_revision.fetch_max(revision, Ordering::AcqRel);
        if revision < previous || (strictly && revision == previous) {
            return Err(EtcdError::RevisionWentBack {
                previous,
                got: revision,
            });
        }
        Ok(())
    }
}

impl Backend for EtcdBackend {
    fn load(&self) -> Result<Snapshot, StorageError> {
        let snapshot = self.call(|reply| Request::Load { reply })?;
        self.advance(snapshot.revision, false)?;
        Ok(snapshot)
    }

    fn commit(&self, write: &Write) -> Result<u64, StorageError> {
        let write = write.clone();
        let revision = self.call(|reply| Request::Commit { write, reply })?;
        self.advance(revision, true)?;
        Ok(revision)
    }

    fn compact(&self, revision: u64) -> Result<(), StorageError> {
        EtcdBackend::compact(self, revision)
    }

    fn health(&self) -> Result<(), StorageError> {
        Ok(self.call(|reply| Request::Health { reply })?)
    }
}

impl Drop for EtcdBackend {
    fn drop(&mut self) {
        // Closing the channel ends the worker's loop once it has answered the
        // request in flight, if any.
        self.requests = None;
        if let Some(worker) = self.worker.take()
            && worker.join().is_err()
        {
            tracing::error!(prefix = %self.prefix, "etcd client thread panicked");
        }
    }
}

/// The worker thread: builds the runtime and the client, reports the
/// connection outcome on `ready`, then serves requests until the channel
/// closes.
fn worker_main(
    endpoints: Vec<String>,
    prefix: String,
    mut inbox: mpsc::UnboundedReceiver<Request>,
    ready: std_mpsc::SyncSender<Result<u64, EtcdError>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = ready.send(Err(EtcdError::Runtime(e)));
            return;
        }
    };
    runtime.block_on(async move {
        let mut worker = match Worker::connect(&endpoints, prefix).await {
            Ok((worker, revision)) => {
                if ready.send(Ok(revision)).is_err() {
                    return;
                }
                worker
            }
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        while let Some(request) = inbox.recv().await {
            worker.handle(request).await;
        }
        tracing::debug!(prefix = %worker.prefix_str(), "etcd client thread stopping");
    });
}

/// The etcd client and what it needs, living on the worker thread.
struct Worker {
    kv: KvClient,
    prefix: Vec<u8>,
}

impl Worker {
    async fn connect(endpoints: &[String], prefix: String) -> Result<(Self, u64), EtcdError> {
        let options = ConnectOptions::new()
            .with_timeout(REQUEST_TIMEOUT)
            .with_connect_timeout(CONNECT_TIMEOUT);
        let client = Client::connect(endpoints, Some(options)).await?;
        let kv = client
            .kv_client()
            .max_decoding_message_size(MAX_RESPONSE_BYTES);
        let mut worker = Self {
            kv,
            prefix: prefix.into_bytes(),
        };
        // The channel connects lazily: a count-only read proves etcd answers
        // and gives the current revision.
        let (start, end) = worker.range();
        let probe = worker
            .kv
            .get(
                start,
                Some(GetOptions::new().with_range(end).with_count_only()),
            )
            .await?;
        let revision = header_revision(probe.header(), "range")?;
        Ok((worker, revision))
    }

    fn prefix_str(&self) -> String {
        String::from_utf8_lossy(&self.prefix).into_owned()
    }

    async fn handle(&mut self, request: Request) {
        // A caller that gave up waiting has dropped its receiver; the send
        // failing then is of no concern.
        match request {
            Request::Load { reply } => {
                let _ = reply.send(self.load().await);
            }
            Request::Commit { write, reply } => {
                let _ = reply.send(self.commit(write).await);
            }
            Request::Compact { revision, reply } => {
                let _ = reply.send(self.compact(revision).await);
            }
            Request::Health { reply } => {
                // As kube-apiserver's check: a read of a key nobody writes.
                let key = self.full_key("health");
                let _ = reply.send(self.kv.get(key, None).await.map(drop).map_err(Into::into));
            }
        }
    }

    /// The key range `[start, end)` holding every key under the prefix.
    fn range(&self) -> (Vec<u8>, Vec<u8>) {
        if self.prefix.is_empty() {
            // etcd's spelling of "every key".
            return (vec![0], vec![0]);
        }
        (self.prefix.clone(), prefix_range_end(&self.prefix))
    }

    async fn load(&mut self) -> Result<Snapshot, EtcdError> {
        let mut attempt = 1;
        loop {
            match self.load_once().await {
                Err(EtcdError::Client(e)) if is_compacted(&e) && attempt < LOAD_ATTEMPTS => {
                    tracing::warn!(
                        prefix = %self.prefix_str(),
                        attempt,
                        "etcd history compacted while loading; starting over"
                    );
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    /// Reads everything under the prefix page by page, every page at the
    /// revision of the first.
    async fn load_once(&mut self) -> Result<Snapshot, EtcdError> {
        let started = Instant::now();
        let (mut start, end) = self.range();
        let mut at: Option<i64> = None;
        let mut snapshot = Snapshot::default();
        let mut pages = 0usize;
        let mut skipped = 0usize;
        loop {
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(PAGE_SIZE);
            if let Some(revision) = at {
                options = options.with_revision(revision);
            }
            let mut page = self.kv.get(start.clone(), Some(options)).await?;
            pages += 1;
            let revision = match at {
                Some(revision) => revision,
                None => {
                    let revision = page
                        .header()
                        .ok_or(EtcdError::MissingHeader { op: "range" })?
                        .revision();
                    snapshot.revision = to_u64(revision)?;
                    at = Some(revision);
                    revision
                }
            };
            let more = page.more();
            let kvs = page.take_kvs();
            if let Some(last) = kvs.last() {
                // The next page starts just after the last key of this one.
                start = last.key().to_vec();
                start.push(0);
            }
            let fetched = kvs.len();
            for kv in kvs {
                let mod_revision = to_u64(kv.mod_revision())?;
                let (full_key, value) = kv.into_key_value();
                let key = full_key
                    .strip_prefix(self.prefix.as_slice())
                    .map(|k| String::from_utf8(k.to_vec()));
                match key {
                    Some(Ok(key)) => snapshot.objects.push(StoredObject {
                        key,
                        value,
                        revision: mod_revision,
                    }),
                    _ => {
                        skipped += 1;
                        tracing::warn!(
                            key = %String::from_utf8_lossy(&full_key),
                            "skipping etcd key that is not UTF-8"
                        );
                    }
                }
            }
            tracing::debug!(revision, page = pages, fetched, more, "etcd load page");
            if !more || fetched == 0 {
                break;
            }
        }
        tracing::info!(
            prefix = %self.prefix_str(),
            revision = snapshot.revision,
            objects = snapshot.objects.len(),
            skipped,
            pages,
            elapsed = ?started.elapsed(),
            "loaded objects from etcd"
        );
        Ok(snapshot)
    }

    async fn commit(&mut self, write: Write) -> Result<u64, EtcdError> {
        match write {
            Write::Put { key, value } => {
                let full = self.full_key(&key);
                let len = value.len();
                let response = self
                    .kv
                    .txn(Txn::new().and_then([TxnOp::put(full, value, None)]))
                    .await?;
                let revision = header_revision(response.header(), "txn")?;
                tracing::debug!(%key, revision, bytes = len, "etcd put");
                Ok(revision)
            }
            Write::Delete { key } => {
                let full = self.full_key(&key);
                // Only delete when present: deleting an absent key would not
                // advance etcd's revision, and the returned revision must be
                // a new one.
                let response = self
                    .kv
                    .txn(
                        Txn::new()
                            .when([Compare::version(full.clone(), CompareOp::Greater, 0)])
                            .and_then([TxnOp::delete(full, None)]),
                    )
                    .await?;
                let revision = header_revision(response.header(), "txn")?;
                if !response.succeeded() {
                    tracing::warn!(%key, revision, "etcd delete of an absent key");
                    return Err(EtcdError::DeleteAbsent { key });
                }
                tracing::debug!(%key, revision, "etcd delete");
                Ok(revision)
            }
        }
    }

    async fn compact(&mut self, revision: u64) -> Result<(), EtcdError> {
        let at = i64::try_from(revision).map_err(|_| EtcdError::RevisionOutOfRange(revision))?;
        match self.kv.compact(at, None).await {
            Ok(_) => {
                tracing::info!(revision, "compacted etcd history");
                Ok(())
            }
            Err(e) if is_compacted(&e) => {
                tracing::debug!(
                    revision,
                    "etcd history already compacted past this revision"
                );
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn full_key(&self, key: &str) -> Vec<u8> {
        let mut full = Vec::with_capacity(self.prefix.len() + key.len());
        full.extend_from_slice(&self.prefix);
        full.extend_from_slice(key.as_bytes());
        full
    }
}

fn header_revision(
    header: Option<&etcd_client::ResponseHeader>,
    op: &'static str,
) -> Result<u64, EtcdError> {
    to_u64(header.ok_or(EtcdError::MissingHeader { op })?.revision())
}

fn to_u64(revision: i64) -> Result<u64, EtcdError> {
    u64::try_from(revision).map_err(|_| EtcdError::NegativeRevision(revision))
}

/// The smallest key greater than every key starting with `prefix`: the prefix
/// with its last byte below 0xff incremented and what follows dropped.
fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff: every key from the prefix on.
    vec![0]
}

/// Whether etcd refused because the revision asked for is compacted away.
fn is_compacted(error: &etcd_client::Error) -> bool {
    matches!(error, etcd_client::Error::GRpcStatus(status)
        if status.message().contains("required revision has been compacted"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_end_of_prefix() {
        assert_eq!(prefix_range_end(b"/registry"), b"/registrz".to_vec());
        assert_eq!(prefix_range_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_range_end(b"\xff\xff"), vec![0]);
    }
}
