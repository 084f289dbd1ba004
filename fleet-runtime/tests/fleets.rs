//! Fleet identity: generated at a fleet's first start, kept in its store,
//! reused on restart; and two fleets sharing a cloud account and a
//! namespace, each with its own store, never touch each other's instances.

#![expect(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use fleet_core::FleetId;
use fleet_core::controller::Timing;
use fleet_core::memory::provider::MemoryProvider;
use fleet_core::memory::store::MemoryStore;
use fleet_core::protocol::{ClaimRequest, FleetRecord, decode};
use fleet_core::provider::{InstanceState, TAG_FLEET, TAG_NAMESPACE};
use fleet_core::store::{Key, Revision, Store, StoreError, Versioned, WatchEvent};
use fleet_core::subjects::Subjects;
use fleet_core::transport::ClaimClient;
use fleet_runtime::Fleet;
use fleet_runtime::driver::fleet_identity;
use fleet_store_redb::RedbStore;
use futures_core::stream::BoxStream;
use futures_util::future::join_all;
use support::*;

fn request(id: &str) -> ClaimRequest {
    request_for(id, 600_000)
}

async fn start(store: Arc<dyn Store>, provider: &MemoryProvider, timing: Timing) -> Arc<Fleet> {
    Arc::new(
        Fleet::builder()
            .store(store)
            .provider(Arc::new(provider.clone()))
            .pool(pool(1, 2))
            .timing(timing)
            .inventory_every(Duration::from_millis(50))
            .start()
            .await
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_identity_is_generated_once_and_kept_in_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(dir.path()).unwrap());
    let provider = MemoryProvider::ec2_like();

    let first = start(store.clone(), &provider, Timing::default()).await;
    let id = first.fleet_id().clone();
    assert_eq!(id.as_str().len(), 8, "8 hex digits: {id}");
    assert!(id.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(first.status().await.unwrap().fleet_id, id);
    let stored = store.get(&Subjects::fleet_key()).await.unwrap().unwrap();
    assert_eq!(decode::<FleetRecord>(&stored.value).unwrap().fleet_id, id);
    Arc::try_unwrap(first).unwrap().shutdown().await;

    // A restart on the same store is the same fleet.
    let again = start(store.clone(), &provider, Timing::default()).await;
    assert_eq!(again.fleet_id(), &id);
    Arc::try_unwrap(again).unwrap().shutdown().await;

    // Another store is another fleet.
    let other = start(Arc::new(MemoryStore::new()), &provider, Timing::default()).await;
    assert_ne!(other.fleet_id(), &id);

    // An override is used as given and not stored.
    let fixed = FleetId::new("fixed").unwrap();
    let store2 = MemoryStore::new();
    let f = Fleet::builder()
        .store(Arc::new(store2.clone()))
        .provider(Arc::new(provider.clone()))
        .pool(pool(1, 2))
        .fleet_id(fixed.clone())
        .start()
        .await
        .unwrap();
    assert_eq!(f.fleet_id(), &fixed);
    assert!(store2.get(&Subjects::fleet_key()).await.unwrap().is_none());
}

/// A store whose reads yield after reading, so concurrent first starts
/// all find no identity and race to create one.
struct SlowReads(MemoryStore, std::sync::atomic::AtomicU32);

#[async_trait::async_trait]
impl Store for SlowReads {
    async fn get(&self, key: &Key) -> Result<Option<Versioned>, StoreError> {
        let v = self.0.get(key).await;
        tokio::task::yield_now().await;
        v
    }
    async fn create(&self, key: &Key, value: bytes::Bytes) -> Result<Revision, StoreError> {
        self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.0.create(key, value).await
    }
    async fn update(
        &self,
        key: &Key,
        value: bytes::Bytes,
        expected: Revision,
    ) -> Result<Revision, StoreError> {
        self.0.update(key, value, expected).await
    }
    async fn delete(&self, key: &Key, expected: Revision) -> Result<(), StoreError> {
        self.0.delete(key, expected).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<(Key, Versioned)>, StoreError> {
        self.0.list(prefix).await
    }
    async fn watch(&self, prefix: &str) -> Result<BoxStream<'static, WatchEvent>, StoreError> {
        self.0.watch(prefix).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_first_starts_agree_on_one_identity() {
    let store = SlowReads(MemoryStore::new(), Default::default());
    let ids = join_all((0..8).map(|_| fleet_identity(&store, 1))).await;
    let ids: Vec<FleetId> = ids.into_iter().map(Result::unwrap).collect();
    assert!(ids.iter().all(|i| i == &ids[0]), "{ids:?}");
    let creates = store.1.load(std::sync::atomic::Ordering::SeqCst);
    assert!(creates > 1, "the starters raced ({creates} creates)");
    let stored = store.get(&Subjects::fleet_key()).await.unwrap().unwrap();
    assert_eq!(
        decode::<FleetRecord>(&stored.value).unwrap().fleet_id,
        ids[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_identity_stops_the_start() {
    let store = MemoryStore::new();
    store
        .create(
            &Subjects::fleet_key(),
            bytes::Bytes::from_static(b"{\"v\":1,\"msg\":{}}"),
        )
        .await
        .unwrap();
    let err = fleet_identity(&store, 1).await.err().map(|e| e.kind());
    assert_eq!(err, Some("corrupt_record"));
}

/// Two daemons, one account, one namespace, the same pool: each fleet's
/// node carries its fleet id, and inventory (every 50 ms) with orphan
/// collection after 100 ms never deletes the other's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleets_sharing_an_account_and_a_namespace_keep_apart() {
    let provider = MemoryProvider::ec2_like();
    let timing = Timing {
        orphan_min_age_ms: 100,
        ..Timing::default()
    };
    let a = start(Arc::new(MemoryStore::new()), &provider, timing.clone()).await;
    let b = start(Arc::new(MemoryStore::new()), &provider, timing).await;
    assert_ne!(a.fleet_id(), b.fleet_id());
    boot_agents(&a, provider.clone());
    boot_agents(&b, provider.clone());

    let claim = |f: &Arc<Fleet>, id: &str| {
        let client = f.client();
        let req = request(id);
        async move {
            tokio::time::timeout(Duration::from_secs(10), client.claim(req))
                .await
                .expect("granted in time")
                .unwrap()
        }
    };
    let ga = claim(&a, "ca").await;
    let gb = claim(&b, "cb").await;
    assert_ne!(ga.node, gb.node);
    assert!(
        ga.node.as_str().contains(a.fleet_id().as_str()),
        "{}",
        ga.node
    );
    assert!(
        gb.node.as_str().contains(b.fleet_id().as_str()),
        "{}",
        gb.node
    );

    // Many inventories and orphan ages later, both nodes still run, each
    // tagged with its own fleet and known only to it.
    tokio::time::sleep(Duration::from_millis(600)).await;
    for (f, g) in [(&a, &ga), (&b, &gb)] {
        let i = provider.instance(&g.node).unwrap();
        assert_eq!(i.state, InstanceState::Running, "{} was deleted", g.node);
        assert_eq!(
            i.tags.get(TAG_FLEET).map(String::as_str),
            Some(f.fleet_id().as_str())
        );
        assert_eq!(i.tags.get(TAG_NAMESPACE).map(String::as_str), Some("fleet"));
        let nodes: Vec<_> = f
            .status()
            .await
            .unwrap()
            .nodes
            .into_iter()
            .map(|n| n.record.node)
            .collect();
        assert_eq!(
            nodes,
            std::slice::from_ref(&g.node),
            "a fleet knows its own node only"
        );
    }
    assert_eq!(
        provider
            .instances()
            .iter()
            .filter(|i| i.state != InstanceState::Terminated)
            .count(),
        2
    );
}
