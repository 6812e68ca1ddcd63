//! The etcd storage backend against a real etcd (Debian's `etcd-server`) on
//! loopback: revisions, load contents, prefix isolation, pagination, restarts
//! and compaction. Skips when `/usr/bin/etcd` is not installed.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::etcd::{Etcd, etcd_missing};
use common::free_port;

const PREFIX: &str = "/registry";

use ferry_controlplane::storage::etcd::{EtcdBackend, EtcdError};
use ferry_controlplane::storage::{Backend, Snapshot, StorageError, Write};

fn put(key: &str, value: &str) -> Write {
    Write::Put {
        key: key.into(),
        value: value.as_bytes().to_vec(),
    }
}

fn delete(key: &str) -> Write {
    Write::Delete { key: key.into() }
}

/// The snapshot as key → (value, revision).
fn contents(snapshot: &Snapshot) -> BTreeMap<String, (String, u64)> {
    snapshot
        .objects
        .iter()
        .map(|o| {
            let value = String::from_utf8(o.value.clone()).expect("utf-8 value");
            (o.key.clone(), (value, o.revision))
        })
        .collect()
}

fn expected(entries: &[(&str, &str, u64)]) -> BTreeMap<String, (String, u64)> {
    entries
        .iter()
        .map(|(k, v, r)| (k.to_string(), (v.to_string(), *r)))
        .collect()
}

/// Retries `f` for a while: right after etcd restarts, the client's channel
/// may need a moment (and a failed request) to reconnect.
fn eventually<T>(mut f: impl FnMut() -> Result<T, StorageError>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() < deadline => {
                eprintln!("retrying after: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("still failing: {e}"),
        }
    }
}

#[test]
fn commits_load_and_survive_restart() {
    if etcd_missing() {
        return;
    }
    let mut etcd = Etcd::start(&[]);

    // A neighbour under another prefix must stay invisible to ours.
    let other = EtcdBackend::connect(&etcd.endpoints(), "/other").expect("connect /other");
    other
        .commit(&put("/core/pods/default/a", "neighbour"))
        .expect("neighbour put");

    let backend = EtcdBackend::connect(&etcd.endpoints(), PREFIX).expect("connect");
    let empty = backend.load().expect("initial load");
    assert!(empty.objects.is_empty(), "{:?}", empty.objects);
    let start = empty.revision;
    assert!(start >= 2, "the neighbour's put is a revision: {start}");

    let a = "/core/pods/default/a";
    let b = "/core/pods/default/b";
    let c = "/core/namespaces/c";
    let mut revisions = vec![start];
    for write in [
        put(a, "a1"),
        put(b, "b1"),
        put(c, "c1"),
        put(a, "a2"),
        delete(b),
    ] {
        revisions.push(backend.commit(&write).expect("commit"));
    }
    assert!(
        revisions.windows(2).all(|w| w[0] < w[1]),
        "revisions not increasing: {revisions:?}"
    );
    // Serialized single-key txns advance etcd's revision by exactly one each.
    assert_eq!(revisions[5], start + 5, "{revisions:?}");
    let (a2, c1, last) = (revisions[4], revisions[3], revisions[5]);

    let snapshot = backend.load().expect("load");
    assert_eq!(snapshot.revision, last);
    assert_eq!(
        contents(&snapshot),
        expected(&[(a, "a2", a2), (c, "c1", c1)])
    );

    // Deleting what is not there cannot produce a new revision: refused.
    let err = backend
        .commit(&delete(b))
        .expect_err("delete of absent key");
    assert!(
        matches!(err, StorageError::Etcd(EtcdError::DeleteAbsent { ref key }) if key == b),
        "{err:?}"
    );
    assert_eq!(backend.load().expect("load").revision, last);

    // The neighbour still sees only its own key, with its own prefix stripped.
    let theirs = other.load().expect("neighbour load");
    assert_eq!(theirs.revision, last);
    assert_eq!(
        contents(&theirs),
        expected(&[("/core/pods/default/a", "neighbour", start)])
    );

    // Kill etcd hard and start it on the same data dir: everything is there,
    // through the old connection (once it reconnects) and a new one.
    etcd.restart();
    let reloaded = eventually(|| backend.load());
    assert_eq!(reloaded.revision, last);
    assert_eq!(contents(&reloaded), contents(&snapshot));
    drop(backend);
    let backend = EtcdBackend::connect(&etcd.endpoints(), PREFIX).expect("reconnect");
    let reloaded = backend.load().expect("load after restart");
    assert_eq!(reloaded.revision, last);
    assert_eq!(contents(&reloaded), contents(&snapshot));

    let d = "/core/pods/default/d";
    let d1 = backend.commit(&put(d, "d1")).expect("commit after restart");
    assert_eq!(d1, last + 1);

    // Compaction drops history, not live objects; repeating it is fine.
    backend.compact(d1).expect("compact");
    backend.compact(d1).expect("compact again");
    backend.compact(0).expect("compact to 0");
    let compacted = backend.load().expect("load after compaction");
    assert_eq!(compacted.revision, d1);
    assert_eq!(
        contents(&compacted),
        expected(&[(a, "a2", a2), (c, "c1", c1), (d, "d1", d1)])
    );
    let err = backend
        .compact(d1 + 100)
        .expect_err("compact to a future revision");
    assert!(
        matches!(err, StorageError::Etcd(EtcdError::Client(_))),
        "{err:?}"
    );
}

/// The trait is sync but is called from async code and from blocking threads;
/// neither may hit "cannot block the current thread from within a runtime".
#[test]
fn usable_from_async_and_blocking_contexts() {
    if etcd_missing() {
        return;
    }
    let etcd = Etcd::start(&[]);
    for flavor in ["current_thread", "multi_thread"] {
        let runtime = match flavor {
            "current_thread" => tokio::runtime::Builder::new_current_thread(),
            _ => tokio::runtime::Builder::new_multi_thread(),
        }
        .enable_all()
        .build()
        .expect("runtime");
        let endpoints = etcd.endpoints();
        runtime.block_on(async move {
            let prefix = format!("/{flavor}");
            // Connect, load and commit directly on the runtime's thread.
            let backend = std::sync::Arc::new(
                EtcdBackend::connect(&endpoints, &prefix).expect("connect in async context"),
            );
            let first = backend
                .commit(&put("/x", "1"))
                .expect("commit in async context");
            assert_eq!(backend.load().expect("load").objects.len(), 1);
            let blocking = backend.clone();
            let second = tokio::task::spawn_blocking(move || {
                let rev = blocking.commit(&put("/y", "2")).expect("commit");
                let snapshot = blocking.load().expect("load");
                (rev, snapshot.objects.len())
            })
            .await
            .expect("blocking task");
            assert!(second.0 > first);
            assert_eq!(second.1, 2);
            // Dropping on the runtime thread stops the client thread.
            drop(backend);
        });
    }
}

/// More keys than one range page (10,000), and more bytes than tonic's
/// default 4 MiB message limit, all read at one revision.
#[test]
fn load_pages_through_a_large_store() {
    const KEYS: usize = 10_500;
    const PER_TXN: usize = 1_000;
    if etcd_missing() {
        return;
    }
    let etcd = Etcd::start(&["--max-txn-ops=1000"]);
    let value = "v".repeat(500);

    // Fill etcd directly, 1,000 keys per txn, to keep this quick.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut fill_revisions = Vec::new();
    runtime.block_on(async {
        let mut client = etcd_client::Client::connect(etcd.endpoints(), None)
            .await
            .expect("etcd client");
        let keys: Vec<String> = (0..KEYS)
            .map(|i| format!("{PREFIX}/core/configmaps/bulk/cm-{i:05}"))
            .collect();
        for chunk in keys.chunks(PER_TXN) {
            let ops: Vec<etcd_client::TxnOp> = chunk
                .iter()
                .map(|k| etcd_client::TxnOp::put(k.as_str(), value.as_str(), None))
                .collect();
            let resp = client
                .txn(etcd_client::Txn::new().and_then(ops))
                .await
                .expect("bulk txn");
            let revision = resp.header().expect("header").revision();
            fill_revisions.push(u64::try_from(revision).expect("revision"));
        }
    });
    let filled = *fill_revisions.last().expect("revisions");

    let backend = EtcdBackend::connect(&etcd.endpoints(), PREFIX).expect("connect");
    let snapshot = backend.load().expect("load");
    assert_eq!(snapshot.revision, filled);
    assert_eq!(snapshot.objects.len(), KEYS);
    for (i, object) in snapshot.objects.iter().enumerate() {
        assert_eq!(object.key, format!("/core/configmaps/bulk/cm-{i:05}"));
        assert_eq!(object.revision, fill_revisions[i / PER_TXN]);
        assert_eq!(object.value.len(), value.len());
    }

    // A later write does not leak into a load that started before it; a new
    // load sees it.
    let extra = backend
        .commit(&put("/core/configmaps/bulk/zz", "late"))
        .expect("commit");
    assert_eq!(extra, filled + 1);
    let again = backend.load().expect("load");
    assert_eq!(again.revision, extra);
    assert_eq!(again.objects.len(), KEYS + 1);
}

#[test]
fn connect_fails_without_etcd() {
    let port = free_port();
    let started = Instant::now();
    let err = EtcdBackend::connect(&[format!("http://127.0.0.1:{port}")], PREFIX)
        .expect_err("nothing listens there");
    assert!(
        matches!(err, StorageError::Etcd(EtcdError::Client(_))),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    let err = EtcdBackend::connect(&[], PREFIX).expect_err("no endpoints");
    assert!(
        matches!(err, StorageError::Etcd(EtcdError::NoEndpoints)),
        "{err:?}"
    );
}
