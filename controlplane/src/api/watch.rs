//! The watch verb: a newline-delimited JSON event stream fed from the store's
//! event history, with resourceVersion semantics, selector transitions,
//! bookmarks, streaming initial lists and timeouts.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::table::{self, Include};
use crate::error::ApiError;
use crate::registry::Registry;
use crate::resources::Resource;
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{Event, EventType, event_line};

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Synthetic ADDED events for the current state, then changes.
    Current,
    /// Changes after this resource version.
    After(u64),
}

/// What one watch selects and how it is framed.
#[derive(Debug, Clone)]
pub struct WatchRequest {
    pub resource: &'static Resource,
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub start: Start,
    pub send_initial_events: bool,
    pub bookmarks: bool,
    pub timeout: Duration,
    /// Frame each object as a one-row Table (kubectl get -w).
    pub table: Option<Include>,
}

const BOOKMARK_INTERVAL: Duration = Duration::from_secs(60);

impl WatchRequest {
    fn selects(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }

    fn plain_selectors(&self) -> bool {
        self.labels.is_empty() && self.fields == FieldSelector::default()
    }

    /// The type this watcher sees for `ev`, if any: a change that moves an
    /// object in or out of the selection reads as ADDED or DELETED.
    fn visible(&self, ev: &Event) -> Option<EventType> {
        if ev.resource != self.resource {
            return None;
        }
        if let Some(ns) = &self.namespace
            && *ns != ev.namespace
        {
            return None;
        }
        if self.plain_selectors() {
            return Some(ev.kind);
        }
        let now = self.selects(&ev.object);
        let before = ev.previous.as_deref().is_some_and(|p| self.selects(p));
        match (ev.kind, before, now) {
            (EventType::Added, _, true) => Some(EventType::Added),
            (EventType::Modified, true, true) => Some(EventType::Modified),
            (EventType::Modified, false, true) => Some(EventType::Added),
            (EventType::Modified, true, false) => Some(EventType::Deleted),
            (EventType::Deleted, true, _) => Some(EventType::Deleted),
            _ => None,
        }
    }

    fn frame(&self, kind: EventType, obj: &Value, first: &mut bool) -> Bytes {
        match self.table {
            Some(include) => {
                let t = table::table(self.resource, [obj], json!({}), include, *first);
                *first = false;
                event_line(kind.as_str(), &t)
            }
            None => event_line(kind.as_str(), obj),
        }
    }

    fn bookmark(&self, revision: u64, initial_end: bool) -> Bytes {
        let mut meta = json!({ "resourceVersion": revision.to_string() });
        if initial_end {
            meta["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
        }
        let obj = json!({
            "kind": self.resource.kind,
            "apiVersion": self.resource.api_version(),
            "metadata": meta,
        });
        event_line("BOOKMARK", &obj)
    }
}

/// The in-stream error event a watch ends with, e.g. 410 Expired.
pub fn error_line(err: &ApiError) -> Bytes {
    event_line("ERROR", &err.status())
}

/// Starts the stream; the returned receiver yields framed events until the
/// timeout, a compaction past the watcher, or the client going away.
pub fn start(registry: Arc<Registry>, req: WatchRequest) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        if let Err(line) = run(&registry, &req, &tx).await
            && let Some(line) = line
        {
            let _ = tx.send(line).await;
        }
    });
    rx
}

/// Streams events; Err carries the final line to send (if any).
async fn run(
    registry: &Registry,
    req: &WatchRequest,
    tx: &mpsc::Sender<Bytes>,
) -> Result<(), Option<Bytes>> {
    let store = &registry.store;
    let mut changes = store.subscribe();
    let mut first_table = true;
    let deadline = tokio::time::Instant::now() + req.timeout;
    let send = |b: Bytes| async move { tx.send(b).await.map_err(|_| None::<Bytes>) };

    let mut last = match req.start {
        Start::After(rv) => rv,
        Start::Current => {
            let page = store
                .list(req.resource, req.namespace.as_deref(), None, 0, |o| {
                    req.selects(o)
                })
                .map_err(|e| Some(error_line(&e)))?;
            for obj in &page.items {
                send(req.frame(EventType::Added, obj, &mut first_table)).await?;
            }
            page.revision
        }
    };
    if req.send_initial_events {
        send(req.bookmark(last, true)).await?;
    }
    let mut bookmark_at = tokio::time::Instant::now() + BOOKMARK_INTERVAL;
    loop {
        let events = store.events_after(last).map_err(|e| Some(error_line(&e)))?;
        for ev in events {
            last = ev.revision;
            let Some(kind) = req.visible(&ev) else {
                continue;
            };
            let line = if kind == ev.kind && req.table.is_none() {
                ev.line.clone()
            } else {
                req.frame(kind, &ev.object, &mut first_table)
            };
            send(line).await?;
        }
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
            () = tokio::time::sleep_until(deadline) => return Ok(()),
            () = tokio::time::sleep_until(bookmark_at), if req.bookmarks => {
                bookmark_at = tokio::time::Instant::now() + BOOKMARK_INTERVAL;
                send(req.bookmark(last, false)).await?;
            }
            () = tx.closed() => return Ok(()),
        }
    }
}
