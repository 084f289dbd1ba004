//! Group commit through the real driver on the durable redb store: a burst
//! of claims is written in few transactions, and each grant reaches its
//! caller only once its record is on disk.

#![expect(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_core::memory::provider::MemoryProvider;
use fleet_core::protocol::{ClaimState, Record, decode};
use fleet_core::store::{Key, Revision, Store, StoreError, Versioned, WatchEvent, Write};
use fleet_core::subjects::Subjects;
use fleet_core::transport::ClaimClient;
use fleet_runtime::Fleet;
use fleet_store_redb::RedbStore;
use futures_core::stream::BoxStream;
use futures_util::future::join_all;
use support::*;

/// A store that notes the size of every batch it commits; each commit
/// waits while `held` is set (as a store across the network, NATS KV, waits
/// for its server) and takes `delay` more (as a slow disk's `fdatasync`).
struct Batches<S> {
    inner: S,
    sizes: Mutex<Vec<usize>>,
    delay: Duration,
    held: tokio::sync::watch::Receiver<bool>,
    /// Commits that found `held` set.
    waiting: tokio::sync::watch::Sender<usize>,
}

impl<S> Batches<S> {
    /// `inner`, and the sender that holds its commits.
    fn new(inner: S, delay: Duration) -> (Batches<S>, tokio::sync::watch::Sender<bool>) {
        let (hold, held) = tokio::sync::watch::channel(false);
        let store = Batches {
            inner,
            sizes: Mutex::new(Vec::new()),
            delay,
            held,
            waiting: tokio::sync::watch::Sender::new(0),
        };
        (store, hold)
    }
}

#[async_trait::async_trait]
impl<S: Store> Store for Batches<S> {
    async fn get(&self, key: &Key) -> Result<Option<Versioned>, StoreError> {
        self.inner.get(key).await
    }
    async fn create(&self, key: &Key, value: bytes::Bytes) -> Result<Revision, StoreError> {
        self.inner.create(key, value).await
    }
    async fn update(
        &self,
        key: &Key,
        value: bytes::Bytes,
        expected: Revision,
    ) -> Result<Revision, StoreError> {
        self.inner.update(key, value, expected).await
    }
    async fn delete(&self, key: &Key, expected: Revision) -> Result<(), StoreError> {
        self.inner.delete(key, expected).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<(Key, Versioned)>, StoreError> {
        self.inner.list(prefix).await
    }
    async fn watch(&self, prefix: &str) -> Result<BoxStream<'static, WatchEvent>, StoreError> {
        self.inner.watch(prefix).await
    }
    async fn write_all(&self, writes: Vec<Write>) -> Vec<Result<Revision, StoreError>> {
        self.sizes.lock().unwrap().push(writes.len());
        let mut held = self.held.clone();
        if *held.borrow() {
            self.waiting.send_modify(|n| *n += 1);
            let _ = held.wait_for(|h| !*h).await;
        }
        let results = self.inner.write_all(writes).await;
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        results
    }
}

/// A fleet on `store` whose one node (of `slots` slots) is up: a first
/// claim brought it up and was released.
async fn warm_fleet(
    store: Arc<dyn Store>,
    slots: u32,
) -> (Arc<Fleet>, fleet_core::memory::transport::InProcClaimClient) {
    let provider = MemoryProvider::ec2_like();
    let fleet = Arc::new(
        Fleet::builder()
            .store(store)
            .provider(Arc::new(provider.clone()))
            .pool(pool(slots, 1))
            .start()
            .await
            .unwrap(),
    );
    boot_agents(&fleet, provider);
    let client = fleet.client();
    let first = tokio::time::timeout(
        Duration::from_secs(30),
        client.claim(request_for("warm", 600_000)),
    )
    .await
    .expect("the node came up")
    .unwrap();
    client
        .release(&first.workspace, &first.claim_id)
        .await
        .unwrap();
    (fleet, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_committed_in_few_batches_and_each_grant_is_durable_first() {
    const CLAIMS: usize = 60;
    let dir = tempfile::tempdir().unwrap();
    let (store, _hold) = Batches::new(
        RedbStore::open(dir.path()).unwrap(),
        Duration::from_millis(5),
    );
    let store = Arc::new(store);
    let (_fleet, client) = warm_fleet(store.clone(), CLAIMS as u32).await;
    let before = store.sizes.lock().unwrap().len();

    let grants = join_all((0..CLAIMS).map(|i| {
        let client = client.clone();
        let store = store.clone();
        async move {
            let grant = client
                .claim(request_for(&format!("b{i}"), 600_000))
                .await
                .unwrap();
            // Read straight from the file: what a restart would find.
            let key = Subjects::claim_key(&grant.workspace, &grant.claim_id);
            let stored = store.inner.get(&key).await.unwrap().expect("stored");
            let Record::Claim(rec) = decode::<Record>(&stored.value).unwrap() else {
                panic!("{key} is not a claim record");
            };
            (grant, rec)
        }
    }))
    .await;
    for (grant, rec) in &grants {
        assert_eq!(
            rec.state,
            ClaimState::Granted,
            "{}: its grant reached the caller before it was stored",
            grant.claim_id
        );
        assert_eq!(rec.node.as_ref(), Some(&grant.node));
    }
    let sizes = store.sizes.lock().unwrap()[before..].to_vec();
    let writes: usize = sizes.iter().sum();
    assert!(
        writes >= CLAIMS,
        "each claim is written (granted at once: one write): {writes}"
    );
    assert!(
        sizes.len() * 4 <= writes,
        "a burst of {CLAIMS} claims ({writes} writes) took {} commits: {sizes:?}",
        sizes.len()
    );
}

/// The driver polls its commit in its own loop: while a store that awaits
/// holds a commit, the loop still answers, and the claim waiting on that
/// commit is granted only once it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_waits_holds_its_answers_but_not_the_loop() {
    let (store, hold) = Batches::new(
        fleet_core::memory::store::MemoryStore::new(),
        Duration::ZERO,
    );
    let mut waits = store.waiting.subscribe();
    let store = Arc::new(store);
    let (fleet, client) = warm_fleet(store.clone(), 4).await;

    hold.send_replace(true);
    let claim = tokio::spawn({
        let client = client.clone();
        async move { client.claim(request_for("held", 600_000)).await }
    });
    tokio::time::timeout(Duration::from_secs(10), waits.wait_for(|n| *n > 0))
        .await
        .expect("the claim's write reached the store")
        .unwrap();
    for _ in 0..3 {
        let status = tokio::time::timeout(Duration::from_secs(5), fleet.status())
            .await
            .expect("the loop answers while a commit waits")
            .unwrap();
        assert!(
            status.claims.iter().all(|c| c.state != ClaimState::Granted),
            "nothing is granted before its record is stored: {:?}",
            status.claims
        );
    }
    assert!(!claim.is_finished(), "answered before its write was stored");
    hold.send_replace(false);
    let grant = tokio::time::timeout(Duration::from_secs(10), claim)
        .await
        .expect("granted once the commit ends")
        .unwrap()
        .unwrap();
    assert_eq!(grant.claim_id.as_str(), "held");
}
