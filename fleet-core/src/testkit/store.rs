//! The [`Store`] conformance suite.
//!
//! Every store backend runs it against itself from its own tests:
//!
//! ```ignore
//! #[tokio::test]
//! async fn conformance() {
//!     let store = MyStore::connect(/* a fresh bucket or a shared server */).await?;
//!     // A prefix unique to this run, so runs can share one server.
//!     fleet_core::testkit::store::store_suite(&store, "conformance.run42").await;
//! }
//! ```
//!
//! Each check is also public, for a backend that must skip one and say why.
//! The checks panic with a message naming the broken rule. They await watch
//! events without a timeout (this crate has no timers), so a backend whose
//! watch can stall should wrap the suite in its runtime's timeout.
//!
//! Only keys under the given prefix are touched, and every key a check
//! creates is deleted again on success.

use bytes::Bytes;
use futures_core::stream::BoxStream;
use futures_util::StreamExt;
use futures_util::future::join_all;

use crate::store::{Key, Revision, Store, StoreError, WatchEvent, Write};

/// Runs every store check under `prefix` (one or more key tokens joined by
/// `.`, e.g. `conformance.run42`; no trailing dot).
pub async fn store_suite(store: &dyn Store, prefix: &str) {
    crud(store, &format!("{prefix}.crud")).await;
    revisions(store, &format!("{prefix}.rev")).await;
    list_prefix(store, &format!("{prefix}.list")).await;
    watch_prefix(store, &format!("{prefix}.watch")).await;
    concurrent_cas(store, &format!("{prefix}.cas")).await;
    large_value(store, &format!("{prefix}.large")).await;
    write_all(store, &format!("{prefix}.batch")).await;
}

fn key(s: String) -> Key {
    Key::new(s.as_str()).unwrap_or_else(|e| panic!("suite key {s:?} is not a valid key: {e}"))
}

async fn get_rev(store: &dyn Store, k: &Key) -> Option<Revision> {
    match store.get(k).await {
        Ok(v) => v.map(|v| v.revision),
        Err(e) => panic!("get({k}) failed: {e}"),
    }
}

async fn must_create(store: &dyn Store, k: &Key, value: &'static [u8]) -> Revision {
    store
        .create(k, Bytes::from_static(value))
        .await
        .unwrap_or_else(|e| panic!("create({k}) of a new key failed: {e}"))
}

async fn must_update(store: &dyn Store, k: &Key, value: &'static [u8], rev: Revision) -> Revision {
    store
        .update(k, Bytes::from_static(value), rev)
        .await
        .unwrap_or_else(|e| panic!("update({k}) at its current revision {rev} failed: {e}"))
}

async fn must_delete(store: &dyn Store, k: &Key, rev: Revision) {
    store
        .delete(k, rev)
        .await
        .unwrap_or_else(|e| panic!("delete({k}) at its current revision {rev} failed: {e}"));
}

/// Get, create, update and delete, with their refusals: a missing key reads
/// as `None`; `create` of an existing key is `AlreadyExists` carrying the
/// current revision; `update`/`delete` at a stale revision is `Conflict`
/// carrying both; of a missing key, `NotFound`.
pub async fn crud(store: &dyn Store, prefix: &str) {
    let k = key(format!("{prefix}.k"));
    match store.get(&k).await {
        Ok(None) => {}
        Ok(Some(v)) => {
            panic!("get({k}) of a key never written returned {v:?}; is the prefix reused?")
        }
        Err(e) => panic!("get({k}) of a missing key must be Ok(None), got {e}"),
    }

    let r1 = must_create(store, &k, b"one").await;
    assert!(
        r1 > Revision(0),
        "create({k}) returned {r1}; revision 0 is never issued"
    );
    match store.get(&k).await {
        Ok(Some(v)) => {
            assert_eq!(
                v.value,
                Bytes::from_static(b"one"),
                "get({k}) after create: wrong value"
            );
            assert_eq!(
                v.revision, r1,
                "get({k}) after create: revision differs from create's"
            );
        }
        other => panic!("get({k}) after create must return the value, got {other:?}"),
    }

    match store.create(&k, Bytes::from_static(b"two")).await {
        Err(StoreError::AlreadyExists { key: ek, current }) => {
            assert_eq!(ek, k, "AlreadyExists names the wrong key");
            assert_eq!(current, r1, "AlreadyExists must carry the current revision");
        }
        other => panic!("create({k}) of an existing key must be AlreadyExists, got {other:?}"),
    }

    let stale = Revision(r1.0.saturating_add(1_000_000));
    match store.update(&k, Bytes::from_static(b"x"), stale).await {
        Err(StoreError::Conflict {
            key: ek,
            expected,
            current,
        }) => {
            assert_eq!(ek, k, "Conflict names the wrong key");
            assert_eq!(
                expected, stale,
                "Conflict must carry the caller's expected revision"
            );
            assert_eq!(current, r1, "Conflict must carry the current revision");
        }
        other => panic!("update({k}) at a wrong revision must be Conflict, got {other:?}"),
    }
    assert_eq!(
        get_rev(store, &k).await,
        Some(r1),
        "a refused update changed {k}"
    );

    let r2 = must_update(store, &k, b"two", r1).await;
    assert!(r2 > r1, "update({k}) returned {r2}, not after {r1}");
    match store.get(&k).await {
        Ok(Some(v)) => {
            assert_eq!(
                v.value,
                Bytes::from_static(b"two"),
                "get({k}) after update: wrong value"
            );
            assert_eq!(
                v.revision, r2,
                "get({k}) after update: revision differs from update's"
            );
        }
        other => panic!("get({k}) after update must return the value, got {other:?}"),
    }

    match store.delete(&k, r1).await {
        Err(StoreError::Conflict {
            expected, current, ..
        }) => {
            assert_eq!(
                expected, r1,
                "Conflict must carry the caller's expected revision"
            );
            assert_eq!(current, r2, "Conflict must carry the current revision");
        }
        other => panic!("delete({k}) at a stale revision must be Conflict, got {other:?}"),
    }
    assert_eq!(
        get_rev(store, &k).await,
        Some(r2),
        "a refused delete removed {k}"
    );

    must_delete(store, &k, r2).await;
    assert_eq!(
        get_rev(store, &k).await,
        None,
        "get({k}) after delete must be None"
    );

    match store.delete(&k, r2).await {
        Err(StoreError::NotFound { key: ek }) => assert_eq!(ek, k, "NotFound names the wrong key"),
        other => panic!("delete({k}) of a missing key must be NotFound, got {other:?}"),
    }
    match store.update(&k, Bytes::from_static(b"x"), r2).await {
        Err(StoreError::NotFound { .. }) => {}
        other => panic!("update({k}) of a missing key must be NotFound, got {other:?}"),
    }
}

/// Revisions of one key strictly increase, across a delete and re-create
/// too: otherwise a writer holding a revision from before the delete could
/// overwrite the new key (ABA).
pub async fn revisions(store: &dyn Store, prefix: &str) {
    let k = key(format!("{prefix}.k"));
    let mut last = must_create(store, &k, b"v").await;
    for _ in 0..5 {
        let next = must_update(store, &k, b"v", last).await;
        assert!(
            next > last,
            "update({k}) returned {next} after {last}; revisions must increase"
        );
        last = next;
    }
    must_delete(store, &k, last).await;
    let again = must_create(store, &k, b"v").await;
    assert!(
        again > last,
        "re-created {k} got {again}, not after its deleted revision {last} (ABA hazard)"
    );
    match store.update(&k, Bytes::from_static(b"old"), last).await {
        Err(StoreError::Conflict { .. }) => {}
        other => panic!(
            "update({k}) with a revision from before its delete must be Conflict, got {other:?}"
        ),
    }
    must_delete(store, &k, again).await;
}

/// `list(prefix)` returns exactly the keys that start with `prefix`, in key
/// order, with their current revisions. The match is textual: `a.b` matches
/// `a.bc`, which is why callers list `a.b.` for the children of `a.b`.
pub async fn list_prefix(store: &dyn Store, prefix: &str) {
    let names = [
        format!("{prefix}.a.b"),
        format!("{prefix}.a.b.z"),
        format!("{prefix}.a.b.c"),
        format!("{prefix}.a.bc.d"),
        format!("{prefix}.a.bc"),
        format!("{prefix}.b.a"),
    ];
    let mut written = Vec::new();
    for name in &names {
        let k = key(name.clone());
        let rev = must_create(store, &k, b"v").await;
        written.push((k, rev));
    }

    let check = async |p: String, expect: &[&str]| {
        let got = store
            .list(&p)
            .await
            .unwrap_or_else(|e| panic!("list({p:?}) failed: {e}"));
        let got_keys: Vec<String> = got.iter().map(|(k, _)| k.as_str().to_owned()).collect();
        let want: Vec<String> = expect.iter().map(|s| format!("{prefix}.{s}")).collect();
        assert_eq!(
            got_keys, want,
            "list({p:?}) must return exactly these keys, in key order"
        );
        for (k, v) in &got {
            let rev = written.iter().find(|(w, _)| w == k).map(|(_, r)| *r);
            assert_eq!(
                Some(v.revision),
                rev,
                "list({p:?}) returned a stale revision for {k}"
            );
            assert_eq!(
                v.value,
                Bytes::from_static(b"v"),
                "list({p:?}) returned a wrong value"
            );
        }
    };
    check(format!("{prefix}.a.b."), &["a.b.c", "a.b.z"]).await;
    check(format!("{prefix}.a.bc."), &["a.bc.d"]).await;
    check(
        format!("{prefix}.a.b"),
        &["a.b", "a.b.c", "a.b.z", "a.bc", "a.bc.d"],
    )
    .await;
    check(format!("{prefix}.b."), &["b.a"]).await;
    check(format!("{prefix}.none."), &[]).await;

    for (k, rev) in &written {
        must_delete(store, k, *rev).await;
    }
    check(format!("{prefix}."), &[]).await;
}

async fn next_event(stream: &mut BoxStream<'static, WatchEvent>, what: &str) -> WatchEvent {
    match stream.next().await {
        Some(ev) => ev,
        None => panic!("watch stream ended while waiting for {what}"),
    }
}

fn expect_put(ev: WatchEvent, k: &Key, value: &'static [u8], rev: Revision, what: &str) {
    match ev {
        WatchEvent::Put {
            key: ek,
            value: v,
            revision,
        } => {
            assert_eq!(
                &ek, k,
                "watch: {what}: event for the wrong key (order or prefix broken)"
            );
            assert_eq!(v, Bytes::from_static(value), "watch: {what}: wrong value");
            assert_eq!(
                revision, rev,
                "watch: {what}: revision differs from the write's"
            );
        }
        other => panic!("watch: {what}: expected a put of {k}, got {other:?}"),
    }
}

/// A watch sees, in commit order, every put and delete under its prefix made
/// after it was opened, and nothing else: not keys written before it, not
/// keys under a textually different prefix.
pub async fn watch_prefix(store: &dyn Store, prefix: &str) {
    let before = key(format!("{prefix}.w.before"));
    let rb = must_create(store, &before, b"old").await;

    let mut stream = store
        .watch(&format!("{prefix}.w."))
        .await
        .unwrap_or_else(|e| panic!("watch({prefix}.w.) failed: {e}"));

    let k1 = key(format!("{prefix}.w.k1"));
    let k2 = key(format!("{prefix}.w.k2"));
    let outside = key(format!("{prefix}.wx.k"));
    let r1 = must_create(store, &k1, b"a").await;
    let r2 = must_update(store, &k1, b"b", r1).await;
    let ro = must_create(store, &outside, b"x").await;
    let r3 = must_create(store, &k2, b"c").await;
    must_delete(store, &k1, r2).await;
    must_delete(store, &outside, ro).await;
    must_delete(store, &before, rb).await;

    let ev = next_event(&mut stream, "the create of k1").await;
    expect_put(
        ev,
        &k1,
        b"a",
        r1,
        "create of k1 (a key written before the watch must not show)",
    );
    let ev = next_event(&mut stream, "the update of k1").await;
    expect_put(ev, &k1, b"b", r2, "update of k1");
    let ev = next_event(&mut stream, "the create of k2").await;
    expect_put(
        ev,
        &k2,
        b"c",
        r3,
        "create of k2 (keys outside the prefix must not show)",
    );
    let delete_rev = match next_event(&mut stream, "the delete of k1").await {
        WatchEvent::Delete { key: ek, revision } => {
            assert_eq!(ek, k1, "watch: the delete event names the wrong key");
            assert!(
                revision > r3,
                "watch: the delete of k1 ({revision}) is not after {r3}"
            );
            revision
        }
        other => panic!("watch: expected the delete of {k1}, got {other:?}"),
    };
    match next_event(&mut stream, "the delete of `before`").await {
        WatchEvent::Delete { key: ek, revision } => {
            assert_eq!(ek, before, "watch: expected the delete of {before}");
            assert!(revision > delete_rev, "watch: deletes out of order");
        }
        other => panic!("watch: expected the delete of {before}, got {other:?}"),
    }
    drop(stream);
    must_delete(store, &k2, r3).await;
}

/// Eight writers race `update` from the same revision: exactly one wins, the
/// others get `Conflict` naming the winner's revision, and the stored value
/// is the winner's.
pub async fn concurrent_cas(store: &dyn Store, prefix: &str) {
    const RACERS: usize = 8;
    let k = key(format!("{prefix}.k"));
    let base = must_create(store, &k, b"base").await;
    let values: Vec<Bytes> = (0..RACERS)
        .map(|i| Bytes::from(format!("writer-{i}")))
        .collect();
    let results = join_all(values.iter().map(|v| store.update(&k, v.clone(), base))).await;

    let winners: Vec<(usize, Revision)> = results
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.as_ref().ok().map(|rev| (i, *rev)))
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "{RACERS} updates of {k} from {base}: exactly one must win, got {results:?}"
    );
    let (winner, win_rev) = winners[0];
    for r in &results {
        match r {
            Ok(_) => {}
            Err(StoreError::Conflict {
                expected, current, ..
            }) => {
                assert_eq!(
                    *expected, base,
                    "a losing racer's Conflict has the wrong expected"
                );
                assert_eq!(
                    *current, win_rev,
                    "a losing racer's Conflict must name the winner"
                );
            }
            Err(e) => panic!("a losing racer must get Conflict, got {e}"),
        }
    }
    match store.get(&k).await {
        Ok(Some(v)) => {
            assert_eq!(
                v.value, values[winner],
                "the stored value is not the winner's"
            );
            assert_eq!(
                v.revision, win_rev,
                "the stored revision is not the winner's"
            );
        }
        other => panic!("get({k}) after the race failed: {other:?}"),
    }
    must_delete(store, &k, win_rev).await;
}

/// A 64 KiB value round-trips byte for byte (records with many claims grow
/// this large).
pub async fn large_value(store: &dyn Store, prefix: &str) {
    const LEN: usize = 64 * 1024;
    let k = key(format!("{prefix}.k"));
    // Every byte differs from its neighbours so a truncation or shift shows.
    let value: Bytes = (0..LEN)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    let rev = store
        .create(&k, value.clone())
        .await
        .unwrap_or_else(|e| panic!("create({k}) of a {LEN}-byte value failed: {e}"));
    match store.get(&k).await {
        Ok(Some(v)) => {
            assert_eq!(
                v.value.len(),
                LEN,
                "the {LEN}-byte value came back truncated"
            );
            assert!(v.value == value, "the {LEN}-byte value came back altered");
        }
        other => panic!("get({k}) of a {LEN}-byte value failed: {other:?}"),
    }
    must_delete(store, &k, rev).await;
}

/// A batch ([`Store::write_all`]): one result per write, in order; a
/// refused write (a create of a key that exists, a stale update, a delete
/// of a missing key) leaves the others applied; later writes of the batch
/// see the earlier ones (an update at the revision a create of the same
/// batch returned cannot be named in advance, so the batch creates, and a
/// second batch updates and deletes); revisions increase in batch order;
/// watchers see each applied write.
pub async fn write_all(store: &dyn Store, prefix: &str) {
    let a = key(format!("{prefix}.a"));
    let b = key(format!("{prefix}.b"));
    let c = key(format!("{prefix}.c"));
    let mut watch = store
        .watch(&format!("{prefix}."))
        .await
        .unwrap_or_else(|e| panic!("watch({prefix}.) failed: {e}"));
    let existing = must_create(store, &a, b"a0").await;
    assert_eq!(next_event(&mut watch, "the first create").await.key(), &a);

    let results = store
        .write_all(vec![
            Write::Create {
                key: a.clone(),
                value: Bytes::from_static(b"again"),
            },
            Write::Create {
                key: b.clone(),
                value: Bytes::from_static(b"b1"),
            },
            Write::Update {
                key: a.clone(),
                value: Bytes::from_static(b"a1"),
                expected: existing,
            },
            Write::Delete {
                key: c.clone(),
                expected: Revision(1),
            },
        ])
        .await;
    assert_eq!(
        results.len(),
        4,
        "write_all: one result per write: {results:?}"
    );
    assert!(
        matches!(&results[0], Err(StoreError::AlreadyExists { key, .. }) if key == &a),
        "write_all: a create of an existing key is refused alone: {:?}",
        results[0]
    );
    let rev_b = match &results[1] {
        Ok(r) => *r,
        Err(e) => panic!("write_all: a create of a new key beside a refused one failed: {e}"),
    };
    let rev_a = match &results[2] {
        Ok(r) => *r,
        Err(e) => panic!("write_all: an update at the current revision failed: {e}"),
    };
    assert!(
        matches!(&results[3], Err(StoreError::NotFound { key }) if key == &c),
        "write_all: a delete of a missing key is refused alone: {:?}",
        results[3]
    );
    assert!(
        existing < rev_b && rev_b < rev_a,
        "write_all: revisions follow batch order ({existing}, {rev_b}, {rev_a})"
    );
    assert_eq!(
        get_rev(store, &b).await,
        Some(rev_b),
        "write_all: b is stored"
    );
    assert_eq!(
        get_rev(store, &a).await,
        Some(rev_a),
        "write_all: a is updated"
    );
    for (k, what) in [(&b, "the batch's create"), (&a, "the batch's update")] {
        assert_eq!(next_event(&mut watch, what).await.key(), k, "{what}");
    }

    let results = store
        .write_all(vec![
            Write::Update {
                key: b.clone(),
                value: Bytes::from_static(b"stale"),
                expected: existing,
            },
            Write::Delete {
                key: a.clone(),
                expected: rev_a,
            },
            Write::Delete {
                key: b.clone(),
                expected: rev_b,
            },
        ])
        .await;
    assert!(
        matches!(&results[0], Err(StoreError::Conflict { .. })),
        "write_all: a stale update is a conflict: {:?}",
        results[0]
    );
    assert_eq!(
        results[1],
        Ok(rev_a),
        "write_all: a delete answers the deleted revision"
    );
    assert_eq!(
        results[2],
        Ok(rev_b),
        "write_all: a delete answers the deleted revision"
    );
    assert_eq!(get_rev(store, &a).await, None, "write_all: a is deleted");
    assert_eq!(get_rev(store, &b).await, None, "write_all: b is deleted");
}
