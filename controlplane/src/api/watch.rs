//! The watch verb: a newline-delimited JSON event stream fed from the store's
//! event history, with resourceVersion semantics, selector transitions,
//! bookmarks, streaming initial lists and timeouts.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use hyper::body::Frame;
use tokio::time::Sleep;
use tokio_stream::wrappers::WatchStream;

use super::table::{self, Include};
use crate::error::ApiError;
use crate::registry::Registry;
use crate::resources::Resource;
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{Entry, Event, EventType, event_line, frame};

/// Where a watch starts.
#[derive(Debug, Clone)]
pub enum Start {
    /// Synthetic ADDED events for the current state, then changes.
    Current,
    /// Changes after this resource version.
    After(u64),
    /// Nothing: the stream carries this error (as 410, so clients relist).
    Refused(ApiError),
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
    fn selects(&self, entry: &Entry) -> bool {
        self.labels.matches(&entry.attrs) && self.fields.matches(&entry.attrs)
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

    fn frame(&self, kind: EventType, entry: &Entry, first: &mut bool) -> Bytes {
        match self.table {
            Some(include) => {
                let obj = entry.value().unwrap_or(Value::Null);
                let t = table::table(self.resource, [&obj], json!({}), include, *first);
                *first = false;
                event_line(kind.as_str(), &t)
            }
            None => frame(kind.as_str(), &entry.json),
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

/// Largest frame a watch writes at once when it has a backlog.
const MAX_BATCH: usize = 256 * 1024;

/// A watch as the response body: polled directly by the connection, so an
/// event goes from the store's history to the socket without a task hop.
/// It ends at the timeout, after an in-stream error (e.g. 410 Expired), or
/// when the client goes away and the body is dropped.
pub struct WatchBody {
    registry: Arc<Registry>,
    req: WatchRequest,
    /// Lines ready to send (initial state, bookmarks).
    pending: VecDeque<Bytes>,
    last: u64,
    first_table: bool,
    changes: WatchStream<u64>,
    deadline: Pin<Box<Sleep>>,
    bookmark: Pin<Box<Sleep>>,
    done: bool,
}

impl std::fmt::Debug for WatchBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchBody")
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}

impl WatchBody {
    /// Prepares the stream: for a watch from the current state, the
    /// synthetic ADDED events (and the initial-events bookmark) are queued.
    pub fn new(registry: Arc<Registry>, req: WatchRequest) -> Self {
        let changes = WatchStream::from_changes(registry.store.subscribe());
        let now = tokio::time::Instant::now();
        let mut body = Self {
            deadline: Box::pin(tokio::time::sleep_until(now + req.timeout)),
            bookmark: Box::pin(tokio::time::sleep_until(now + BOOKMARK_INTERVAL)),
            registry,
            pending: VecDeque::new(),
            last: 0,
            first_table: true,
            changes,
            done: false,
            req,
        };
        match body.req.start.clone() {
            Start::After(rv) => body.last = rv,
            Start::Refused(mut err) => {
                err.code = 410;
                err.reason = "Expired";
                body.pending.push_back(error_line(&err));
                body.done = true;
            }
            Start::Current => {
                let req = &body.req;
                match body.registry.store.list_entries(
                    req.resource,
                    req.namespace.as_deref(),
                    None,
                    0,
                    |e| req.selects(e),
                ) {
                    Ok(page) => {
                        for obj in &page.items {
                            let line = body.req.frame(EventType::Added, obj, &mut body.first_table);
                            body.pending.push_back(line);
                        }
                        body.last = page.revision;
                    }
                    Err(e) => {
                        body.pending.push_back(error_line(&e));
                        body.done = true;
                    }
                }
            }
        }
        if body.req.send_initial_events && !body.done {
            body.pending.push_back(body.req.bookmark(body.last, true));
        }
        body
    }

    /// Moves visible events after `last` into `pending`.
    fn collect(&mut self) -> Result<(), Bytes> {
        let events = self
            .registry
            .store
            .events_after(self.last)
            .map_err(|e| error_line(&e))?;
        for ev in events {
            self.last = ev.revision;
            let Some(kind) = self.req.visible(&ev) else {
                continue;
            };
            let line = if kind == ev.kind && self.req.table.is_none() {
                ev.line.clone()
            } else {
                self.req.frame(kind, &ev.object, &mut self.first_table)
            };
            self.pending.push_back(line);
        }
        Ok(())
    }

    /// Everything pending, in one frame of at most [`MAX_BATCH`] (or one
    /// larger line).
    fn batch(&mut self) -> Option<Bytes> {
        let first = self.pending.pop_front()?;
        if self.pending.is_empty() {
            return Some(first);
        }
        let mut buf = bytes::BytesMut::from(&first[..]);
        while let Some(next) = self.pending.front() {
            if buf.len() + next.len() > MAX_BATCH {
                break;
            }
            if let Some(next) = self.pending.pop_front() {
                buf.extend_from_slice(&next);
            }
        }
        Some(buf.freeze())
    }
}

impl Stream for WatchBody {
    type Item = Result<Frame<Bytes>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(b) = this.batch() {
                return Poll::Ready(Some(Ok(Frame::data(b))));
            }
            if this.done {
                return Poll::Ready(None);
            }
            if let Err(line) = this.collect() {
                this.done = true;
                this.pending.push_back(line);
                continue;
            }
            if !this.pending.is_empty() {
                continue;
            }
            if this.deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            if this.req.bookmarks && this.bookmark.as_mut().poll(cx).is_ready() {
                let next = tokio::time::Instant::now() + BOOKMARK_INTERVAL;
                this.bookmark.as_mut().reset(next);
                this.pending.push_back(this.req.bookmark(this.last, false));
                continue;
            }
            match Pin::new(&mut this.changes).poll_next(cx) {
                Poll::Ready(Some(_)) => continue,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
