//! Starting a fleet: what the builder refuses, and how the provider's
//! offerings and an unavailable store are waited for (the retry comes from
//! `Timing`).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use fleet_core::memory::store::MemoryStore;
use fleet_core::store::{Key, Revision, Store, StoreError, Versioned, WatchEvent};
use futures_core::stream::BoxStream;

use fleet_core::controller::Timing;
use fleet_core::memory::provider::{MemoryProvider, OpKind};
use fleet_core::provider::ProviderError;
use fleet_runtime::{Fleet, RuntimeError};

fn pool() -> fleet_core::strategy::PoolSpec {
    support::pool(1, 2)
}

fn fast(attempts: u32) -> Timing {
    Timing {
        provider_retry_initial_ms: 5,
        provider_retry_max_ms: 20,
        startup_attempts: attempts,
        ..Timing::default()
    }
}

async fn start(provider: &MemoryProvider, timing: Timing) -> Result<Fleet, RuntimeError> {
    Fleet::builder()
        .provider(Arc::new(provider.clone()))
        .pool(pool())
        .timing(timing)
        .start()
        .await
}

#[tokio::test]
async fn passing_provider_failures_are_waited_out_as_timing_says() {
    let provider = MemoryProvider::ec2_like();
    provider.fail_next(
        OpKind::Offerings,
        ProviderError::RateLimited("slow down".into()),
        2,
    );
    let fleet = start(&provider, fast(3)).await;
    assert!(fleet.is_ok(), "third attempt succeeds: {:?}", fleet.err());
}

#[tokio::test]
async fn the_last_attempt_fails_with_the_providers_words() {
    let provider = MemoryProvider::ec2_like();
    provider.fail_next(
        OpKind::Offerings,
        ProviderError::Transient("api down".into()),
        3,
    );
    let err = start(&provider, fast(3)).await.err().map(|e| e.to_string());
    let err = err.unwrap_or_default();
    assert!(
        err.contains("after 3 attempt(s)") && err.contains("api down"),
        "{err}"
    );
}

#[tokio::test]
async fn a_permanent_failure_is_not_retried() {
    let provider = MemoryProvider::ec2_like();
    provider.fail_next(
        OpKind::Offerings,
        ProviderError::Permanent("bad credentials".into()),
        1,
    );
    let err = start(&provider, fast(5)).await.err().map(|e| e.to_string());
    let err = err.unwrap_or_default();
    assert!(
        err.contains("after 1 attempt(s)") && err.contains("bad credentials"),
        "{err}"
    );
}

#[tokio::test]
async fn a_fleet_needs_a_provider_and_a_pool() {
    let err = Fleet::builder().pool(pool()).start().await.err();
    assert_eq!(err.map(|e| e.kind()), Some("config"));
    let provider = MemoryProvider::ec2_like();
    let err = Fleet::builder()
        .provider(Arc::new(provider))
        .start()
        .await
        .err();
    assert_eq!(err.map(|e| e.kind()), Some("config"));
}

/// A store whose first `failing` reads (gets and lists) are refused as
/// unavailable, as a JetStream stream is while it elects a new leader.
struct Electing {
    inner: MemoryStore,
    failing: AtomicU32,
    reads: AtomicU32,
}

impl Electing {
    fn new(failing: u32) -> Electing {
        Electing {
            inner: MemoryStore::new(),
            failing: AtomicU32::new(failing),
            reads: AtomicU32::new(0),
        }
    }

    fn read(&self) -> Result<(), StoreError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        let left = self
            .failing
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        match left {
            Ok(_) => Err(StoreError::Unavailable("503 no responders".into())),
            Err(_) => Ok(()),
        }
    }
}

#[async_trait::async_trait]
impl Store for Electing {
    async fn get(&self, key: &Key) -> Result<Option<Versioned>, StoreError> {
        self.read()?;
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
        self.read()?;
        self.inner.list(prefix).await
    }
    async fn watch(&self, prefix: &str) -> Result<BoxStream<'static, WatchEvent>, StoreError> {
        self.inner.watch(prefix).await
    }
}

async fn start_on(store: Arc<Electing>, timing: Timing) -> Result<Fleet, RuntimeError> {
    Fleet::builder()
        .store(store)
        .provider(Arc::new(MemoryProvider::ec2_like()))
        .pool(pool())
        .timing(timing)
        .start()
        .await
}

#[tokio::test]
async fn a_store_that_is_briefly_unavailable_is_waited_for() {
    // The identity read fails twice; the third of three attempts succeeds.
    let store = Arc::new(Electing::new(2));
    let fleet = start_on(store.clone(), fast(3)).await;
    assert!(fleet.is_ok(), "{:?}", fleet.err());
    // The records' lists, too, are retried, each step with its own attempts.
    let store = Arc::new(Electing::new(2));
    let fleet = Fleet::builder()
        .store(store.clone())
        .provider(Arc::new(MemoryProvider::ec2_like()))
        .pool(pool())
        .fleet_id(fleet_core::FleetId::new("fixed").unwrap_or_else(|e| panic!("{e}")))
        .timing(fast(3))
        .start()
        .await;
    assert!(fleet.is_ok(), "{:?}", fleet.err());
    assert!(
        store.reads.load(Ordering::SeqCst) >= 2 + 4,
        "two refused lists, then four"
    );
}

#[tokio::test]
async fn a_store_unavailable_for_every_attempt_stops_the_start_with_its_words() {
    let store = Arc::new(Electing::new(u32::MAX));
    let err = start_on(store.clone(), fast(4)).await.err();
    assert_eq!(err.as_ref().map(RuntimeError::kind), Some("store"));
    let err = err.map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("503 no responders"), "{err}");
    assert_eq!(
        store.reads.load(Ordering::SeqCst),
        4,
        "one read per attempt"
    );
}
