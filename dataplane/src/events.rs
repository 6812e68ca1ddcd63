//! Kubernetes Events the agent writes about a Service it cannot program as
//! asked (a field it cannot translate, an annotation value it does not
//! know), so `kubectl get events` and `kubectl describe service` say why,
//! not only the agent's log.
//!
//! Owns its Events (one per Service, reason and node; their `count` and
//! `lastTimestamp` go up when the problem recurs, as kube's recorder does);
//! must not block the proxy loop: notes go through a bounded queue to a task
//! of their own, a full queue drops the note (counted in the log), and the
//! same note is written again at most once per [`REPEAT`].

use std::collections::HashMap;
use std::hash::{Hash, Hasher as _};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::mpsc;

/// The least time between two writes of the same note.
pub const REPEAT: Duration = Duration::from_secs(300);
/// Notes waiting to be written; more are dropped.
const QUEUE: usize = 256;
/// Notes remembered for [`REPEAT`]; past this the oldest half is forgotten.
const REMEMBERED: usize = 4096;

/// Something wrong with a Service, as an Event says it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Note {
    pub namespace: String,
    pub name: String,
    /// The Service's uid, so `kubectl describe` finds the Event.
    pub uid: Option<String>,
    /// CamelCase, as Event reasons are.
    pub reason: &'static str,
    pub message: String,
}

/// Where the proxy loop hands its notes.
#[derive(Debug, Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Note>,
}

impl Recorder {
    /// Starts the writer task for this node's agent.
    pub fn start(client: Client, node: &str) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_events(client, node.to_owned(), rx));
        Self { tx }
    }

    /// Queues a Warning Event; never waits.
    pub fn warn(&self, note: Note) {
        if let Err(e) = self.tx.try_send(note) {
            tracing::debug!(error = %e, "event queue full; note dropped");
        }
    }
}

async fn write_events(client: Client, node: String, mut rx: mpsc::Receiver<Note>) {
    let mut written: HashMap<Note, (Instant, i32)> = HashMap::new();
    while let Some(note) = rx.recv().await {
        let now = Instant::now();
        let count = match written.get(&note) {
            Some((at, _)) if now.duration_since(*at) < REPEAT => continue,
            Some((_, n)) => n.saturating_add(1),
            None => 1,
        };
        if written.len() >= REMEMBERED {
            let mut ages: Vec<Instant> = written.values().map(|(at, _)| *at).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            written.retain(|_, (at, _)| *at > cut);
        }
        match write(&client, &node, &note, count).await {
            Ok(()) => {
                written.insert(note, (now, count));
            }
            Err(e) => tracing::warn!(
                namespace = %note.namespace, service = %note.name, reason = note.reason,
                error = %e, "writing an Event"
            ),
        }
    }
}

/// Creates the note's Event, or bumps the existing one's count.
async fn write(client: &Client, node: &str, note: &Note, count: i32) -> Result<(), kube::Error> {
    let api: Api<Event> = Api::namespaced(client.clone(), &note.namespace);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (node, note.reason, &note.message).hash(&mut h);
    // A Service name is a DNS label: this stays a valid, bounded name.
    let name = format!("{}.{:016x}", note.name, h.finish());
    let now = jiff::Timestamp::now();
    let time = Time(now);
    let mut event = Event {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(note.namespace.clone()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Service".into()),
            namespace: Some(note.namespace.clone()),
            name: Some(note.name.clone()),
            uid: note.uid.clone(),
            ..ObjectReference::default()
        },
        reason: Some(note.reason.into()),
        message: Some(note.message.clone()),
        type_: Some("Warning".into()),
        count: Some(count),
        first_timestamp: Some(time.clone()),
        last_timestamp: Some(time),
        event_time: None,
        source: Some(EventSource {
            component: Some("ferry-agent".into()),
            host: Some(node.into()),
        }),
        reporting_component: Some("ferry-agent".into()),
        reporting_instance: Some(node.into()),
        ..Event::default()
    };
    match api.create(&PostParams::default(), &event).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let current = api.get(&name).await?;
            event.metadata.resource_version = current.metadata.resource_version;
            event.first_timestamp = current.first_timestamp;
            event.count = Some(current.count.unwrap_or(1).saturating_add(1));
            api.replace(&name, &PostParams::default(), &event)
                .await
                .map(|_| ())
        }
        Err(e) => Err(e),
    }
}
