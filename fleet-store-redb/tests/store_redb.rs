//! The redb store: the core conformance suite, durability across reopen,
//! epoch fencing, CAS races, file locking and bad input.

use std::time::Duration;

use bytes::Bytes;
use fleet_core::ids::Epoch;
use fleet_core::protocol::{LeaderRecord, encode};
use fleet_core::store::{Key, Revision, Store, StoreError, Write};
use fleet_core::subjects::Subjects;
use fleet_store_redb::{JOURNAL_FILE_NAME, OpenError, RedbStore, STORE_FILE_NAME, StoreOptions};
use futures_util::StreamExt;
use futures_util::future::join_all;

fn key(s: &str) -> Key {
    Key::new(s).unwrap_or_else(|e| panic!("bad test key {s}: {e}"))
}

async fn last_revision(store: &RedbStore) -> Revision {
    store
        .last_revision()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

fn open(dir: &std::path::Path) -> RedbStore {
    RedbStore::open(dir).unwrap_or_else(|e| panic!("open {}: {e}", dir.display()))
}

fn leader(epoch: u64) -> Bytes {
    let record = LeaderRecord {
        holder: format!("daemon-{epoch}"),
        epoch: Epoch(epoch),
        expires_at: 1_000_000,
    };
    Bytes::from(encode(&record).unwrap_or_else(|e| panic!("encode: {e}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let store = open(dir.path());
    // The suite awaits watch events without a timeout of its own.
    tokio::time::timeout(
        Duration::from_secs(120),
        fleet_core::testkit::store::store_suite(&store, "conformance.redb"),
    )
    .await
    .unwrap_or_else(|_| panic!("the store suite stalled"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_survive_reopen_and_the_counter_continues() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let (a, b) = (key("claims.a"), key("claims.b"));
    let (ra, rb, rb2) = {
        let store = open(dir.path());
        let ra = store.create(&a, Bytes::from_static(b"A")).await;
        let rb = store.create(&b, Bytes::from_static(b"B")).await;
        let (ra, rb) = (
            ra.unwrap_or_else(|e| panic!("{e}")),
            rb.unwrap_or_else(|e| panic!("{e}")),
        );
        let rb2 = store
            .update(&b, Bytes::from_static(b"B2"), rb)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let gone = key("claims.gone");
        let rg = store
            .create(&gone, Bytes::from_static(b"x"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        store
            .delete(&gone, rg)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        (ra, rb, rb2)
    };
    assert_eq!((ra, rb, rb2), (Revision(1), Revision(2), Revision(3)));

    let store = open(dir.path());
    assert_eq!(
        last_revision(&store).await,
        Revision(5),
        "the delete took revision 5 and the counter must persist"
    );
    let listed = store
        .list("claims.")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let got: Vec<(&str, &[u8], Revision)> = listed
        .iter()
        .map(|(k, v)| (k.as_str(), v.value.as_ref(), v.revision))
        .collect();
    assert_eq!(
        got,
        vec![("claims.a", &b"A"[..], ra), ("claims.b", &b"B2"[..], rb2)]
    );
    let next = store
        .create(&key("claims.c"), Bytes::from_static(b"C"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(next, Revision(6), "revisions continue after a reopen");
    // A stale revision from before the reopen still conflicts.
    assert!(matches!(
        store.update(&b, Bytes::from_static(b"x"), rb).await,
        Err(StoreError::Conflict { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_writes_fail_after_a_newer_leader() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let store = open(dir.path());
    let lk = Subjects::leader_key();
    let lr = store
        .create(&lk, leader(1))
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let old = store.fenced(Epoch(1));
    let k = key("claims.x");
    let r1 = old
        .create(&k, Bytes::from_static(b"one"))
        .await
        .unwrap_or_else(|e| panic!("epoch 1 is the leader, its write must pass: {e}"));

    store
        .update(&lk, leader(2), lr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    match old.update(&k, Bytes::from_static(b"two"), r1).await {
        Err(StoreError::Fenced { writer, current }) => assert_eq!((writer, current), (1, 2)),
        other => panic!("a stale leader's update must be Fenced, got {other:?}"),
    }
    match old.create(&key("claims.y"), Bytes::from_static(b"y")).await {
        Err(StoreError::Fenced { .. }) => {}
        other => panic!("a stale leader's create must be Fenced, got {other:?}"),
    }
    match old.delete(&k, r1).await {
        Err(StoreError::Fenced { .. }) => {}
        other => panic!("a stale leader's delete must be Fenced, got {other:?}"),
    }
    let v = store.get(&k).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        v.map(|v| v.revision),
        Some(r1),
        "a fenced write changed the store"
    );
    assert_eq!(
        store
            .get(&key("claims.y"))
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        None
    );

    // Reads through the fenced handle still work; the new leader writes.
    assert!(
        old.get(&k)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .is_some()
    );
    let new = store.fenced(Epoch(2));
    new.update(&k, Bytes::from_static(b"two"), r1)
        .await
        .unwrap_or_else(|e| panic!("the current leader's write must pass: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_writes_refuse_a_corrupt_leader_record() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let store = open(dir.path());
    store
        .create(&Subjects::leader_key(), Bytes::from_static(b"{not json"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    match store
        .fenced(Epoch(5))
        .create(&key("claims.z"), Bytes::from_static(b"z"))
        .await
    {
        Err(StoreError::Corrupt(_)) => {}
        other => panic!("a corrupt leader record must refuse fenced writes, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_cas_has_one_winner_per_revision() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let store = open(dir.path());
    let k = key("race.k");
    let mut rev = store
        .create(&k, Bytes::from_static(b"0"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for round in 0..5 {
        let tasks = (0..8).map(|i| {
            let store = store.clone();
            let k = k.clone();
            tokio::spawn(async move {
                store
                    .update(&k, Bytes::from(format!("{round}-{i}")), rev)
                    .await
            })
        });
        let results: Vec<_> = join_all(tasks)
            .await
            .into_iter()
            .map(|r| r.unwrap_or_else(|e| panic!("task: {e}")))
            .collect();
        let wins: Vec<Revision> = results
            .iter()
            .filter_map(|r| r.as_ref().ok().copied())
            .collect();
        assert_eq!(wins.len(), 1, "round {round}: {results:?}");
        for r in &results {
            if let Err(e) = r {
                assert!(
                    matches!(e, StoreError::Conflict { current, .. } if *current == wins[0]),
                    "round {round}: loser got {e:?}"
                );
            }
        }
        rev = wins[0];
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_over_the_limit_are_refused() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let mut options = StoreOptions::default();
    options.max_value_bytes = 100;
    let store = RedbStore::open_with(dir.path(), options).unwrap_or_else(|e| panic!("{e}"));
    let k = key("big.k");
    match store.create(&k, Bytes::from(vec![0u8; 101])).await {
        Err(StoreError::TooLarge { len: 101, max: 100 }) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(last_revision(&store).await, Revision(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sees_only_later_commits_across_clones() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let store = open(dir.path());
    let other = store.clone();
    other
        .create(&key("w.before"), Bytes::from_static(b"b"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut events = store.watch("w.").await.unwrap_or_else(|e| panic!("{e}"));
    let r = other
        .fenced(Epoch(1))
        .create(&key("w.after"), Bytes::from_static(b"a"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let ev = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .unwrap_or_else(|_| panic!("no watch event"))
        .unwrap_or_else(|| panic!("watch ended"));
    assert_eq!(ev.key().as_str(), "w.after");
    assert!(matches!(ev, fleet_core::store::WatchEvent::Put { revision, .. } if revision == r));
}

#[test]
fn a_second_open_of_the_same_file_is_refused_while_the_first_lives() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let first = open(dir.path());
    match RedbStore::open(dir.path()) {
        Err(e @ OpenError::Locked { .. }) => {
            assert_eq!(e.path(), dir.path().join(STORE_FILE_NAME));
            assert!(e.to_string().contains(STORE_FILE_NAME), "{e}");
            assert!(e.is_retryable());
        }
        other => panic!("a second open must be Locked, got {other:?}"),
    }
    drop(first);
    open(dir.path());
}

#[test]
fn open_errors_name_the_path() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    // A file where the data directory should be.
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap_or_else(|e| panic!("{e}"));
    match RedbStore::open(&file) {
        Err(e @ OpenError::DataDir { .. }) => {
            assert_eq!(e.path(), file);
            assert!(e.to_string().contains("not-a-dir"), "{e}");
        }
        other => panic!("expected DataDir, got {other:?}"),
    }

    // A store file that is not a redb database.
    let bad = dir.path().join("bad");
    std::fs::create_dir(&bad).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(bad.join(STORE_FILE_NAME), vec![0x5a; 8192]).unwrap_or_else(|e| panic!("{e}"));
    match RedbStore::open(&bad) {
        Err(e @ OpenError::Corrupt { .. }) => {
            assert_eq!(e.path(), bad.join(STORE_FILE_NAME));
            assert!(!e.is_retryable(), "{e:?}");
        }
        other => panic!("garbage must be Corrupt, got {other:?}"),
    }
}

#[test]
fn the_data_dir_is_created_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let data = dir.path().join("data");
    open(&data);
    let mode = std::fs::metadata(&data)
        .unwrap_or_else(|e| panic!("{e}"))
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_file_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    {
        let store = open(dir.path());
        for i in 0..50 {
            store
                .create(&key(&format!("claims.c{i}")), Bytes::from(vec![b'v'; 2000]))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }
    let path = dir.path().join(STORE_FILE_NAME);
    let mut bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{e}"));
    // Flip every byte past the header region: checksums must catch it.
    for b in bytes.iter_mut().skip(4096) {
        *b ^= 0xff;
    }
    std::fs::write(&path, &bytes).unwrap_or_else(|e| panic!("{e}"));
    let opened = std::thread::spawn({
        let dir = dir.path().to_owned();
        move || RedbStore::open(&dir).map(|_| ())
    })
    .join();
    match opened {
        Ok(Err(e)) => assert_eq!(e.path(), path, "{e}"),
        Ok(Ok(())) => panic!("a damaged store opened"),
        Err(_) => panic!("opening a damaged store panicked"),
    }
}

/// Where `the_journal_child` writes, when it runs as the child of
/// `acknowledged_writes_survive_an_abort`.
const CHILD_DIR: &str = "FLEET_REDB_JOURNAL_CHILD_DIR";

/// The writes the child makes: `keys` created, every third updated, every
/// fifth deleted, a batch of 300 (more than the journal takes between
/// checkpoints, so the child crosses one), and the revision each left.
async fn journal_writes(store: &RedbStore) -> Vec<(Key, Option<(Bytes, Revision)>)> {
    let mut expect = Vec::new();
    for i in 0..40 {
        let k = key(&format!("claims.ws.c{i}"));
        let value = Bytes::from(format!("claim {i}"));
        let mut rev = store
            .create(&k, value.clone())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut state = Some((value, rev));
        if i % 3 == 0 {
            let value = Bytes::from(format!("claim {i}, granted"));
            rev = store
                .update(&k, value.clone(), rev)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            state = Some((value, rev));
        }
        if i % 5 == 0 {
            store
                .delete(&k, rev)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            state = None;
        }
        expect.push((k, state));
    }
    let batch: Vec<Write> = (0..300)
        .map(|i| Write::Create {
            key: key(&format!("nodes.pool.n{i}")),
            value: Bytes::from(vec![b'n'; 600]),
        })
        .collect();
    for (i, result) in store.write_all(batch).await.into_iter().enumerate() {
        let rev = result.unwrap_or_else(|e| panic!("{e}"));
        expect.push((
            key(&format!("nodes.pool.n{i}")),
            Some((Bytes::from(vec![b'n'; 600]), rev)),
        ));
    }
    for i in 0..300 {
        let k = key(&format!("runs.ws.r{i}"));
        let value = Bytes::from(format!("run {i}"));
        let rev = store
            .create(&k, value.clone())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        expect.push((k, Some((value, rev))));
    }
    expect
}

/// Not a test of its own: the child process of
/// `acknowledged_writes_survive_an_abort`. It makes its writes, each
/// acknowledged, then dies at once: no destructor runs, nothing is flushed
/// or checkpointed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else {
        return;
    };
    let store = open(std::path::Path::new(&dir));
    journal_writes(&store).await;
    std::process::abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_an_abort() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("{e}"));
    let status = std::process::Command::new(exe)
        .args([
            "the_journal_child",
            "--exact",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(CHILD_DIR, dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("child: {e}"));
    assert!(!status.success(), "the child must die by abort, not finish");
    let journal =
        std::fs::read(dir.path().join(JOURNAL_FILE_NAME)).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        journal.iter().take(64).any(|&b| b != 0),
        "the child's last writes are in the journal, not checkpointed"
    );

    // What the child was told is durable is there, at its revisions.
    let expect = {
        let scratch = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        journal_writes(&open(scratch.path())).await
    };
    let store = open(dir.path());
    let mut listed = store.list("").await.unwrap_or_else(|e| panic!("{e}"));
    listed.sort_by(|a, b| a.0.cmp(&b.0));
    let mut want: Vec<(Key, Bytes, Revision)> = expect
        .into_iter()
        .filter_map(|(k, state)| state.map(|(v, r)| (k, v, r)))
        .collect();
    want.sort_by(|a, b| a.0.cmp(&b.0));
    let got: Vec<(Key, Bytes, Revision)> = listed
        .into_iter()
        .map(|(k, v)| (k, v.value, v.revision))
        .collect();
    // Compared by hand: a failing assert_eq of 640 values is unreadable.
    let show = |e: &(Key, Bytes, Revision)| format!("{} at {:?}", e.0, e.2);
    if let Some((g, w)) = got.iter().zip(&want).find(|(g, w)| g != w) {
        panic!("found {}, expected {}", show(g), show(w));
    }
    assert_eq!(got.len(), want.len(), "records after the abort");
    let last = last_revision(&store).await;
    let next = store
        .create(&key("claims.after"), Bytes::from_static(b"x"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        next,
        Revision(last.0 + 1),
        "the counter continues after the replay"
    );
    // Writes are checked against the replayed records (the store's index
    // is rebuilt after the replay): a kept record updates at its revision
    // and conflicts at another, a deleted one can be created again.
    let (k, _, rev) = want.last().unwrap_or_else(|| panic!("no records"));
    assert!(matches!(
        store.create(k, Bytes::from_static(b"again")).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    assert!(matches!(
        store
            .update(k, Bytes::from_static(b"stale"), Revision(rev.0 - 1))
            .await,
        Err(StoreError::Conflict { .. })
    ));
    store
        .update(k, Bytes::from_static(b"updated"), *rev)
        .await
        .unwrap_or_else(|e| panic!("an update at the replayed revision: {e}"));
    store
        .create(&key("claims.ws.c0"), Bytes::from_static(b"anew"))
        .await
        .unwrap_or_else(|e| panic!("a key deleted before the abort: {e}"));
    let next = last_revision(&store).await;
    drop(store);
    // Replayed and checkpointed: a second open finds the same.
    let store = open(dir.path());
    assert_eq!(last_revision(&store).await, next);
}
