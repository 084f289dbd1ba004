//! The leader lease over the in-memory and the redb store: one leader at a
//! time, takeover only after expiry and with a higher epoch, and a stale
//! leader's renewals and fenced writes refused.

use std::sync::Arc;

use bytes::Bytes;
use fleet_core::ids::Epoch;
use fleet_core::memory::store::MemoryStore;
use fleet_core::store::{Key, Store, StoreError};
use fleet_core::subjects::Subjects;
use fleet_runtime::lease::{LeaderLease, LeaseError, read_leader};
use fleet_store_redb::RedbStore;
use futures_util::future::join_all;

const TTL: u64 = 10_000;
const T0: u64 = 1_000_000;

fn key(s: &str) -> Key {
    Key::new(s).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `check` against a fresh store of each kind.
async fn each_store<F, Fut>(check: F)
where
    F: Fn(Arc<dyn Store>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    check(Arc::new(MemoryStore::new())).await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let redb = RedbStore::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    check(Arc::new(redb)).await;
}

async fn acquire(lease: &mut LeaderLease, store: &dyn Store, now: u64) -> Option<Epoch> {
    lease
        .try_acquire(store, now)
        .await
        .unwrap_or_else(|e| panic!("try_acquire: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_contenders_one_leader_then_takeover_after_expiry() {
    each_store(|store| async move {
        let store = &*store;
        let mut a = LeaderLease::new("a", TTL);
        let mut b = LeaderLease::new("b", TTL);
        let (ra, rb) = tokio::join!(a.try_acquire(store, T0), b.try_acquire(store, T0));
        let (ra, rb) = (
            ra.unwrap_or_else(|e| panic!("{e}")),
            rb.unwrap_or_else(|e| panic!("{e}")),
        );
        assert_eq!(
            [ra, rb].iter().filter(|r| r.is_some()).count(),
            1,
            "exactly one leader: {ra:?} {rb:?}"
        );
        let (leader, follower) = if ra.is_some() {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        assert_eq!(leader.epoch(), Some(Epoch(1)));
        assert!(leader.is_leader(T0));

        // Not before expiry, even just before it.
        assert_eq!(acquire(follower, store, T0 + TTL - 1).await, None);
        assert!(!follower.is_leader(T0 + TTL - 1));

        // At expiry the follower takes over with a higher epoch.
        assert_eq!(acquire(follower, store, T0 + TTL).await, Some(Epoch(2)));
        let (record, _) = read_leader(store)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("no leader record"));
        assert_eq!(record.holder, follower.holder());
        assert_eq!(record.epoch, Epoch(2));
        assert_eq!(record.expires_at, T0 + 2 * TTL);

        // The old leader's renewal fails: leadership lost.
        match leader.renew(store, T0 + TTL + 1).await {
            Err(e @ LeaseError::Lost(_)) => assert!(!e.is_retryable()),
            other => panic!("a stale leader's renew must be Lost, got {other:?}"),
        }
        assert_eq!(leader.held(), None);
        assert!(!leader.is_leader(T0 + TTL + 1));
        assert!(matches!(
            leader.renew(store, T0 + TTL + 2).await,
            Err(LeaseError::NotHeld)
        ));
        // And it cannot get back in while the new lease lives.
        assert_eq!(acquire(leader, store, T0 + TTL + 2).await, None);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_keeps_the_epoch_and_extends() {
    each_store(|store| async move {
        let store = &*store;
        let mut a = LeaderLease::new("a", TTL);
        let mut b = LeaderLease::new("b", TTL);
        assert_eq!(acquire(&mut a, store, T0).await, Some(Epoch(1)));
        // Renewing well before expiry, twice, through both entry points.
        let e = a
            .renew(store, T0 + TTL / 2)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e, Epoch(1));
        assert_eq!(acquire(&mut a, store, T0 + TTL).await, Some(Epoch(1)));
        assert_eq!(a.held().map(|h| h.expires_at), Some(T0 + 2 * TTL));
        // The original expiry has passed but the renewed lease holds.
        assert_eq!(acquire(&mut b, store, T0 + TTL + 1).await, None);
        assert_eq!(acquire(&mut b, store, T0 + 2 * TTL).await, Some(Epoch(2)));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_hands_over_at_once_with_a_higher_epoch() {
    each_store(|store| async move {
        let store = &*store;
        let mut a = LeaderLease::new("a", TTL);
        let mut b = LeaderLease::new("b", TTL);
        assert_eq!(acquire(&mut a, store, T0).await, Some(Epoch(1)));
        assert!(
            a.release(store, T0 + 1)
                .await
                .unwrap_or_else(|e| panic!("{e}"))
        );
        assert_eq!(a.held(), None);
        assert!(
            !a.release(store, T0 + 2)
                .await
                .unwrap_or_else(|e| panic!("{e}"))
        );
        // Released, not deleted: the epoch still grows.
        assert_eq!(acquire(&mut b, store, T0 + 2).await, Some(Epoch(2)));
        // A restarted `a` (same name, no memory) waits like anyone else.
        let mut a2 = LeaderLease::new("a", TTL);
        assert_eq!(acquire(&mut a2, store, T0 + 3).await, None);
        assert_eq!(acquire(&mut a2, store, T0 + 2 + TTL).await, Some(Epoch(3)));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_leader_record_is_an_error() {
    each_store(|store| async move {
        let store = &*store;
        store
            .create(&Subjects::leader_key(), Bytes::from_static(b"\xff\xfe"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut a = LeaderLease::new("a", TTL);
        assert!(matches!(
            a.try_acquire(store, T0).await,
            Err(StoreError::Corrupt(_))
        ));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_racing_contenders_on_redb_elect_one() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let store = RedbStore::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    for (round, now) in [T0, T0 + TTL, T0 + 2 * TTL].into_iter().enumerate() {
        let tasks = (0..8).map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut lease = LeaderLease::new(format!("r{round}-c{i}"), TTL);
                lease.try_acquire(&store, now).await
            })
        });
        let results: Vec<_> = join_all(tasks)
            .await
            .into_iter()
            .map(|r| r.unwrap_or_else(|e| panic!("task: {e}")))
            .map(|r| r.unwrap_or_else(|e| panic!("try_acquire: {e}")))
            .collect();
        let winners: Vec<Epoch> = results.iter().flatten().copied().collect();
        assert_eq!(
            winners,
            vec![Epoch(round as u64 + 1)],
            "round {round}: exactly one winner, with the next epoch"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_leaders_fenced_writes_are_rejected() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let store = RedbStore::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let mut a = LeaderLease::new("a", TTL);
    let mut b = LeaderLease::new("b", TTL);
    let ea = acquire(&mut a, &store, T0)
        .await
        .unwrap_or_else(|| panic!("a must lead"));
    let a_writes = store.fenced(ea);
    let k = key("claims.c1");
    let r1 = a_writes
        .create(&k, Bytes::from_static(b"by a"))
        .await
        .unwrap_or_else(|e| panic!("the leader's write: {e}"));

    // `a` stalls past its lease; `b` takes over.
    let eb = acquire(&mut b, &store, T0 + TTL)
        .await
        .unwrap_or_else(|| panic!("b must take over"));
    assert!(eb > ea);

    // `a` wakes up and, not yet knowing, writes: refused.
    match a_writes.update(&k, Bytes::from_static(b"late a"), r1).await {
        Err(StoreError::Fenced { writer, current }) => assert_eq!((writer, current), (ea.0, eb.0)),
        other => panic!("expected Fenced, got {other:?}"),
    }
    let b_writes = store.fenced(eb);
    b_writes
        .update(&k, Bytes::from_static(b"by b"), r1)
        .await
        .unwrap_or_else(|e| panic!("the new leader's write: {e}"));
}

/// A restart that proved its predecessor dead (it holds the data dir's OS
/// lock) takes the lease at once, with the next epoch, instead of waiting
/// out the dead holder's unexpired lease; the dead epoch's writes stay
/// fenced. `try_acquire` at the same instant still waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn take_over_leads_at_once_over_a_dead_holders_live_lease() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let store = RedbStore::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let mut dead = LeaderLease::new("host-1", TTL);
    let e1 = acquire(&mut dead, &store, T0)
        .await
        .unwrap_or_else(|| panic!("first leader"));
    let k = key("claims.w.c1");
    let r1 = store
        .fenced(e1)
        .create(&k, Bytes::from_static(b"by the dead one"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let mut waiting = LeaderLease::new("host-2", TTL);
    assert_eq!(acquire(&mut waiting, &store, T0 + 1).await, None);
    let mut restarted = LeaderLease::new("host-2", TTL);
    let e2 = restarted
        .take_over(&store, T0 + 1)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("take_over must lead over a live record"));
    assert_eq!(e2, e1.next());
    let (record, _) = read_leader(&store)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("no leader record"));
    assert_eq!((record.holder.as_str(), record.epoch), ("host-2", e2));
    assert!(matches!(
        store
            .fenced(e1)
            .update(&k, Bytes::from_static(b"late"), r1)
            .await,
        Err(StoreError::Fenced { .. })
    ));
    // Renewing what it took is an ordinary renewal.
    assert_eq!(acquire(&mut restarted, &store, T0 + 2).await, Some(e2));
}

/// On a store that cannot check the epoch in the write's transaction (a
/// shared KV bucket), the lease's own clock fences: writes go through while
/// the lease holds, stop once it lapses unrenewed (a paused leader that
/// wakes up after another took over), resume after a renewal, and stop for
/// good once the lease is lost or released.
#[tokio::test]
async fn a_lapsed_lease_fences_writes_to_a_shared_store() {
    use fleet_runtime::lease::LeaseFencedStore;
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let ttl = 1_000; // ms of real time: the guard runs on this process's clock
    let mut a = LeaderLease::new("a", ttl);
    let epoch = acquire(&mut a, &*store, T0)
        .await
        .unwrap_or_else(|| panic!("leads"));
    let fenced = LeaseFencedStore::new(store.clone(), a.guard(), epoch);
    assert!(a.guard().remaining().is_some());
    fenced
        .create(&key("claims.w.c1"), Bytes::from_static(b"1"))
        .await
        .unwrap_or_else(|e| panic!("a write while the lease holds: {e}"));

    // Paused past the lease: 9/10 of the TTL is all the guard allows.
    tokio::time::sleep(std::time::Duration::from_millis(950)).await;
    assert_eq!(a.guard().remaining(), None);
    let refused = fenced
        .create(&key("claims.w.c2"), Bytes::from_static(b"2"))
        .await;
    assert_eq!(refused, Err(StoreError::LeaseLapsed { writer: epoch.0 }));
    assert!(
        refused.is_err_and(|e| !e.is_retryable()),
        "the controller stops on it"
    );
    assert_eq!(
        store.get(&key("claims.w.c2")).await,
        Ok(None),
        "nothing written"
    );
    // Reads still work.
    assert!(
        fenced
            .get(&key("claims.w.c1"))
            .await
            .is_ok_and(|v| v.is_some())
    );

    // A renewal (nobody took over meanwhile) opens writes again ...
    a.renew(&*store, T0 + 100)
        .await
        .unwrap_or_else(|e| panic!("renew: {e}"));
    fenced
        .create(&key("claims.w.c2"), Bytes::from_static(b"2"))
        .await
        .unwrap_or_else(|e| panic!("a write after the renewal: {e}"));
    // ... and giving the lease up closes them for good.
    a.release(&*store, T0 + 200)
        .await
        .unwrap_or_else(|e| panic!("release: {e}"));
    assert!(matches!(
        fenced
            .create(&key("claims.w.c3"), Bytes::from_static(b"3"))
            .await,
        Err(StoreError::LeaseLapsed { .. })
    ));
}
