//! Durable storage behind one trait: the embedded SQLite store and etcd v3.
//!
//! Backends hold objects as opaque JSON bytes keyed by a path-like string and
//! assign the global revision. They never hold `metadata.resourceVersion`: the
//! revision a backend returns *is* the resource version, injected on read, as
//! the real apiserver does with etcd's `mod_revision`.

pub mod etcd;
pub mod sqlite;

use thiserror::Error;

/// One stored object as a backend returns it.
#[derive(Debug, Clone)]
pub struct StoredObject {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the write that produced this value.
    pub revision: u64,
}

/// Everything a backend holds, read at one revision.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub revision: u64,
    pub objects: Vec<StoredObject>,
}

/// One write, applied atomically with the revision it is given.
#[derive(Debug, Clone)]
pub enum Write {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
}

#[derive(Debug, Error)]
pub enum StorageError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("etcd: {0}")]
    Etcd(#[from] etcd::EtcdError),
    #[error("storage backend: {0}")]
    Backend(String),
}

/// A durable, linearizable key-value store with one global revision.
///
/// Writes are serialized by the caller (the object store holds a writer lock),
/// so a backend only has to make each commit atomic and durable before it
/// returns.
pub trait Backend: Send + Sync {
    /// Reads every object and the current revision.
    fn load(&self) -> Result<Snapshot, StorageError>;
    /// Commits `write` as the next revision and returns that revision.
    fn commit(&self, write: &Write) -> Result<u64, StorageError>;
    /// Answers a read: for the apiserver's `etcd` health check.
    fn health(&self) -> Result<(), StorageError>;
    /// Drops history older than `revision`, for backends that keep it.
    fn compact(&self, _revision: u64) -> Result<(), StorageError> {
        Ok(())
    }
}
