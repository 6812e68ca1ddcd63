//! The object store: a durable backend plus the in-memory watch cache that
//! serves every read, list and watch.
//!
//! Objects are cached as their JSON bytes (with the resourceVersion) and the
//! few attributes selectors read, not as parsed trees: a parsed
//! `serde_json::Value` costs about twelve times the JSON, and lists and
//! watches only need the bytes. Readers that need the object parse it.
//!
//! Writes are serialized by one writer lock: the current object is read from
//! the cache, the caller's mutation decides the new state, the backend commits
//! it (and assigns the revision), then the cache and the event history are
//! updated together under the cache lock. Watchers wake on a revision signal
//! and read the events past the last one they sent from the history ring, so
//! a slow watcher never blocks a writer; one that falls behind the ring gets
//! `410 Gone` and re-lists, as with kube-apiserver.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::watch;

use crate::error::ApiError;
use crate::limits::Limits;
use crate::object;
use crate::resources::{RESOURCES, Resource};
use crate::selector::Attrs;
use crate::storage::{Backend, StorageError, Write};

/// Kind of change a watch event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One stored object version: its JSON and what selectors read of it.
#[derive(Debug)]
pub struct Entry {
    /// The object as JSON, resourceVersion included.
    pub json: Bytes,
    pub attrs: Attrs,
}

impl Entry {
    /// Serializes `obj` (which carries its resourceVersion).
    fn new(res: &Resource, obj: &Value) -> Result<Self, ApiError> {
        let json = serde_json::to_vec(obj).map_err(|e| ApiError::internal(e.to_string()))?;
        Ok(Self {
            json: Bytes::from(json),
            attrs: Attrs::of(res, obj),
        })
    }

    /// The object, parsed.
    pub fn value(&self) -> Result<Value, ApiError> {
        serde_json::from_slice(&self.json)
            .map_err(|e| ApiError::internal(format!("cached object is not valid JSON: {e}")))
    }
}

/// One committed change.
#[derive(Debug)]
pub struct Event {
    pub revision: u64,
    pub resource: &'static Resource,
    pub namespace: String,
    pub kind: EventType,
    /// The new state; for a deletion, the last state at the deletion revision.
    pub object: Arc<Entry>,
    /// The state before, so selector watches can turn a change that leaves
    /// the selection into DELETED and one that enters it into ADDED.
    pub previous: Option<Arc<Entry>>,
    /// The event as sent on a watch stream, framed once for all watchers.
    pub line: Bytes,
}

/// What a mutation decides.
#[derive(Debug)]
pub enum Mutation {
    /// Store this object (metadata.resourceVersion is ignored).
    Put(Value),
    /// Remove the object.
    Delete,
    /// Change nothing: the write would not alter the object.
    Keep,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Api(a) => a,
            other => ApiError::internal(other.to_string()),
        }
    }
}

type Objects = BTreeMap<(String, String), Arc<Entry>>;

#[derive(Debug, Default)]
struct Cache {
    revision: u64,
    /// Objects per kind, keyed by (namespace, name); cluster-scoped kinds use
    /// an empty namespace.
    objects: HashMap<&'static str, Objects>,
    history: VecDeque<Arc<Event>>,
    /// What `history` holds, by [`Event::cost`].
    history_bytes: usize,
    /// Highest revision no longer in `history`: a watch must start after it.
    compacted: u64,
}

/// How much watch history the store keeps: events beyond either bound are
/// compacted, and watchers still behind them get 410 and relist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct History {
    /// `--watch-history`: events.
    pub events: usize,
    /// `--watch-history-bytes`: bytes of the events' objects.
    pub bytes: usize,
}

impl Default for History {
    fn default() -> Self {
        Self {
            events: 20_000,
            bytes: crate::limits::DEFAULT_HISTORY_BYTES,
        }
    }
}

/// A stored object the loader could not take: it is kept out of the cache
/// (so it cannot stop the server, a list or a watch) and handed to the
/// caller to set aside.
#[derive(Debug, Clone)]
pub struct Quarantined {
    pub key: String,
    pub revision: u64,
    pub reason: String,
    pub value: Vec<u8>,
}

/// Locks are recovered after a panic elsewhere: the cache changes only in
/// one block after a successful commit, so a panic cannot leave it half
/// updated, and one bad request must not stop every later write.
pub struct Store {
    backend: Box<dyn Backend>,
    cache: RwLock<Cache>,
    writer: Mutex<()>,
    history: History,
    limits: Limits,
    quarantined: Vec<Quarantined>,
    revision_tx: watch::Sender<u64>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

/// A page of a list.
#[derive(Debug)]
pub struct Page {
    pub revision: u64,
    pub items: Vec<Arc<Entry>>,
    /// Key of the last item returned when more remain.
    pub next: Option<(String, String)>,
}

fn resource_for_key(key: &str) -> Option<(&'static Resource, String, String)> {
    RESOURCES.iter().find_map(|r| {
        let rest = key.strip_prefix(&r.prefix())?.strip_prefix('/')?;
        if r.namespaced {
            let (ns, name) = rest.split_once('/')?;
            Some((r, ns.to_string(), name.to_string()))
        } else {
            Some((r, String::new(), rest.to_string()))
        }
    })
}

/// `{"type":T,"object":O}\n`, the framing of a JSON watch stream.
pub fn event_line(kind: &str, object: &Value) -> Bytes {
    let json = serde_json::to_vec(object).unwrap_or_else(|_| b"null".to_vec());
    frame(kind, &json)
}

/// Frames already-serialized object JSON as a watch event line.
pub fn frame(kind: &str, json: &[u8]) -> Bytes {
    let mut line = Vec::with_capacity(json.len() + 32);
    line.extend_from_slice(b"{\"type\":\"");
    line.extend_from_slice(kind.as_bytes());
    line.extend_from_slice(b"\",\"object\":");
    line.extend_from_slice(json);
    line.extend_from_slice(b"}\n");
    Bytes::from(line)
}

/// The object JSON inside a line made by [`frame`], sharing its buffer.
fn object_of(line: &Bytes, kind: &str) -> Bytes {
    let start = b"{\"type\":\"".len() + kind.len() + b"\",\"object\":".len();
    line.slice(start..line.len().saturating_sub(2).max(start))
}

impl Event {
    /// Bytes this event keeps alive: its line, and the earlier state it
    /// holds (whose buffer is another event's line, or was).
    fn cost(&self) -> usize {
        self.line.len() + self.previous.as_ref().map_or(0, |p| p.json.len())
    }
}

/// The stored object, parsed, or why it cannot be served: it does not
/// parse, or nests deeper than readers accept.
fn servable(stored: &[u8], limits: &Limits) -> Result<Value, String> {
    let value: Value =
        serde_json::from_slice(stored).map_err(|e| format!("not valid JSON: {e}"))?;
    let depth = crate::limits::shape(&value).depth;
    if depth > limits.max_depth {
        return Err(format!(
            "nests {depth} levels, more than the limit of {} (--max-object-depth)",
            limits.max_depth
        ));
    }
    if !value.is_object() {
        return Err("not a JSON object".into());
    }
    Ok(value)
}

impl Store {
    /// Loads everything from `backend` into the cache. An object that cannot
    /// be served is left out and listed in [`Store::take_quarantined`]: one bad
    /// object must not stop the whole server.
    pub fn open(
        backend: Box<dyn Backend>,
        history: History,
        limits: Limits,
    ) -> Result<Self, StoreError> {
        let snapshot = backend.load()?;
        let mut cache = Cache {
            revision: snapshot.revision,
            compacted: snapshot.revision,
            ..Default::default()
        };
        let mut quarantined = Vec::new();
        for stored in snapshot.objects {
            let Some((res, ns, name)) = resource_for_key(&stored.key) else {
                tracing::warn!(key = %stored.key, "skipping stored object of an unknown kind");
                continue;
            };
            let mut value = match servable(&stored.value, &limits) {
                Ok(v) => v,
                Err(reason) => {
                    tracing::error!(key = %stored.key, revision = stored.revision, %reason, "stored object cannot be served: quarantining it");
                    quarantined.push(Quarantined {
                        key: stored.key,
                        revision: stored.revision,
                        reason,
                        value: stored.value,
                    });
                    continue;
                }
            };
            if stored.value.len() > limits.max_object_bytes {
                tracing::warn!(key = %stored.key, bytes = stored.value.len(), limit = limits.max_object_bytes, "stored object is larger than --max-object-size-bytes: it is served, but a write that keeps it this large will be refused");
            }
            object::set_resource_version(&mut value, stored.revision);
            cache
                .objects
                .entry(res.plural)
                .or_default()
                .insert((ns, name), Arc::new(Entry::new(res, &value)?));
        }
        let (revision_tx, _) = watch::channel(snapshot.revision);
        Ok(Self {
            backend,
            cache: RwLock::new(cache),
            writer: Mutex::new(()),
            history,
            limits,
            quarantined,
            revision_tx,
        })
    }

    /// Whether the backend answers a read.
    pub fn storage_health(&self) -> Result<(), StorageError> {
        self.backend.health()
    }

    /// The bounds writes are held to.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Objects the loader left out, handed over once (their bytes are not
    /// kept) for the caller to set aside and then remove with
    /// [`Store::drop_quarantined`].
    pub fn take_quarantined(&mut self) -> Vec<Quarantined> {
        std::mem::take(&mut self.quarantined)
    }

    /// Removes a quarantined object from the backend once it is saved
    /// elsewhere, so it does not come back at every start.
    pub fn drop_quarantined(&self, key: &str) -> Result<(), StoreError> {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let revision = self.backend.commit(&Write::Delete { key: key.into() })?;
        self.cache
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .revision = revision;
        self.revision_tx.send_replace(revision);
        Ok(())
    }

    pub fn revision(&self) -> u64 {
        *self.revision_tx.borrow()
    }

    /// The cached entry of one object.
    pub fn entry(
        &self,
        res: &Resource,
        ns: &str,
        name: &str,
    ) -> Result<Option<Arc<Entry>>, ApiError> {
        let cache = self.cache.read().unwrap_or_else(PoisonError::into_inner);
        Ok(cache
            .objects
            .get(res.plural)
            .and_then(|m| m.get(&(ns.to_string(), name.to_string())))
            .cloned())
    }

    /// One object, parsed.
    pub fn get(
        &self,
        res: &Resource,
        ns: &str,
        name: &str,
    ) -> Result<Option<Arc<Value>>, ApiError> {
        self.entry(res, ns, name)?
            .map(|e| e.value().map(Arc::new))
            .transpose()
    }

    /// Lists entries of `res` (in `ns` when given) after `after`, keeping
    /// those `keep` accepts, at most `limit` of them (0: all).
    pub fn list_entries(
        &self,
        res: &Resource,
        ns: Option<&str>,
        after: Option<&(String, String)>,
        limit: usize,
        keep: impl Fn(&Entry) -> bool,
    ) -> Result<Page, ApiError> {
        use std::ops::Bound;
        let cache = self.cache.read().unwrap_or_else(PoisonError::into_inner);
        let mut page = Page {
            revision: cache.revision,
            items: Vec::new(),
            next: None,
        };
        let Some(objects) = cache.objects.get(res.plural) else {
            return Ok(page);
        };
        let lower = match (after, ns) {
            (Some(k), _) => Bound::Excluded(k.clone()),
            (None, Some(ns)) => Bound::Included((ns.to_string(), String::new())),
            (None, None) => Bound::Unbounded,
        };
        let mut last_key = None;
        for ((ons, oname), obj) in objects.range((lower, Bound::Unbounded)) {
            if let Some(ns) = ns
                && ons != ns
            {
                break;
            }
            if !keep(obj) {
                continue;
            }
            if limit > 0 && page.items.len() == limit {
                // Only report a continuation when something is left to send.
                page.next = last_key;
                break;
            }
            page.items.push(obj.clone());
            last_key = Some((ons.clone(), oname.clone()));
        }
        Ok(page)
    }

    /// Every object of `res` (in `ns` when given) whose labels and fields
    /// `keep` accepts, parsed.
    pub fn list(
        &self,
        res: &Resource,
        ns: Option<&str>,
        keep: impl Fn(&Attrs) -> bool,
    ) -> Result<Vec<Arc<Value>>, ApiError> {
        self.list_entries(res, ns, None, 0, |e| keep(&e.attrs))?
            .items
            .iter()
            .map(|e| e.value().map(Arc::new))
            .collect()
    }

    /// Applies `decide` to the current object (None when absent) and commits
    /// what it returns. Returns the stored result (for a delete: the last
    /// state), or None when `decide` asked to delete an absent object.
    ///
    /// With `dry_run`, everything runs but nothing is committed.
    pub fn mutate(
        &self,
        res: &'static Resource,
        ns: &str,
        name: &str,
        dry_run: bool,
        decide: impl FnOnce(Option<&Value>) -> Result<Mutation, ApiError>,
    ) -> Result<Option<Arc<Entry>>, StoreError> {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let current_entry = self.entry(res, ns, name)?;
        let current = current_entry.as_ref().map(|e| e.value()).transpose()?;
        let mutation = decide(current.as_ref())?;
        let key = res.key(Some(ns), name);
        let (write, new_value) = match mutation {
            Mutation::Keep => return Ok(current_entry),
            Mutation::Put(mut value) => {
                object::clear_resource_version(&mut value);
                // Nothing is stored that a reader could not read back.
                self.limits.check_depth(res, &value)?;
                let bytes =
                    serde_json::to_vec(&value).map_err(|e| ApiError::internal(e.to_string()))?;
                self.limits.check_size(res, name, bytes.len())?;
                (Write::Put { key, value: bytes }, Some(value))
            }
            Mutation::Delete => {
                if current.is_none() {
                    return Ok(None);
                }
                (Write::Delete { key }, None)
            }
        };
        if dry_run {
            return Ok(match new_value {
                Some(mut v) => {
                    if let Some(c) = &current {
                        object::set_resource_version(&mut v, object::resource_version(c));
                    }
                    Some(Arc::new(Entry::new(res, &v)?))
                }
                None => current_entry,
            });
        }
        let revision = self.backend.commit(&write)?;
        let (kind, mut object) = match new_value {
            Some(v) => {
                let kind = if current.is_some() {
                    EventType::Modified
                } else {
                    EventType::Added
                };
                (kind, v)
            }
            None => (EventType::Deleted, current.unwrap_or(Value::Null)),
        };
        object::set_resource_version(&mut object, revision);
        // One buffer for the watch line, the cached object and the reply.
        let line = event_line(kind.as_str(), &object);
        let entry = Arc::new(Entry {
            json: object_of(&line, kind.as_str()),
            attrs: Attrs::of(res, &object),
        });
        let event = Arc::new(Event {
            revision,
            resource: res,
            namespace: ns.to_string(),
            kind,
            object: entry.clone(),
            previous: current_entry,
            line,
        });
        {
            let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
            let objects = cache.objects.entry(res.plural).or_default();
            let k = (ns.to_string(), name.to_string());
            match kind {
                EventType::Deleted => {
                    objects.remove(&k);
                }
                _ => {
                    objects.insert(k, entry.clone());
                }
            }
            cache.revision = revision;
            cache.history_bytes += event.cost();
            cache.history.push_back(event);
            while cache.history.len() > self.history.events
                || cache.history_bytes > self.history.bytes
            {
                let Some(old) = cache.history.pop_front() else {
                    break;
                };
                cache.history_bytes = cache.history_bytes.saturating_sub(old.cost());
                cache.compacted = old.revision;
            }
        }
        self.revision_tx.send_replace(revision);
        Ok(Some(entry))
    }

    /// Drops backend history older than `revision` (the watch cache serves
    /// watches; the backend's history only costs space).
    pub fn compact_backend(&self, revision: u64) -> Result<(), StorageError> {
        self.backend.compact(revision)
    }

    /// The highest revision the event history no longer holds.
    pub fn compacted(&self) -> u64 {
        self.cache
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .compacted
    }

    /// A receiver that changes whenever a write commits.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.revision_tx.subscribe()
    }

    /// The events after `revision`, or 410 when history no longer holds them.
    pub fn events_after(&self, revision: u64) -> Result<Vec<Arc<Event>>, ApiError> {
        let cache = self.cache.read().unwrap_or_else(PoisonError::into_inner);
        if revision < cache.compacted {
            return Err(ApiError::gone(format!(
                "too old resource version: {revision} ({})",
                cache.compacted + 1
            )));
        }
        let start = cache.history.partition_point(|e| e.revision <= revision);
        Ok(cache.history.range(start..).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn entries_share_the_event_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend =
            crate::storage::sqlite::SqliteBackend::open(&dir.path().join("s.db")).expect("open");
        let history = History {
            events: 10,
            ..History::default()
        };
        let store = Store::open(Box::new(backend), history, Limits::default()).expect("store");
        let res = &crate::resources::CONFIGMAPS;
        let obj = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "d", "labels": {"x": "y"}}});
        let e = store
            .mutate(res, "d", "a", false, |_| Ok(Mutation::Put(obj.clone())))
            .expect("put")
            .expect("entry");
        let v = e.value().expect("parse");
        assert_eq!(v["metadata"]["resourceVersion"], "1");
        assert_eq!(e.attrs.label("x"), Some("y"));
        let events = store.events_after(0).expect("events");
        assert_eq!(
            events[0].line.len(),
            e.json.len() + br#"{"type":"ADDED","object":}"#.len() + 1
        );
        let page = store
            .list_entries(res, Some("d"), None, 0, |_| true)
            .expect("list");
        assert_eq!(page.items.len(), 1);
    }
}
