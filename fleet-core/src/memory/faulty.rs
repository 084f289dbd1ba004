//! [`FaultyStore`]: a [`Store`] wrapper that makes calls fail on demand, for
//! the tests and the virtual world that exercise retry and crash paths.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures_core::stream::BoxStream;

use crate::store::{Key, Revision, Store, StoreError, Versioned, WatchEvent};

/// A [`Store`] wrapper that fails calls on demand, to test retry paths.
///
/// Clones share the fault counters, so a test keeps one clone to arm faults
/// while the code under test owns another.
#[derive(Debug, Clone)]
pub struct FaultyStore<S> {
    inner: S,
    faults: Arc<StoreFaults>,
}

#[derive(Debug, Default)]
struct StoreFaults {
    /// Calls left to refuse before touching the inner store.
    fail_before: AtomicU32,
    /// Writes left to apply and then report as failed.
    fail_after: AtomicU32,
    calls: AtomicU64,
}

/// Takes one from `counter` if it is positive; whether it did.
fn take_one(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

impl<S: Store> FaultyStore<S> {
    /// Wraps `inner` with no faults armed.
    pub fn new(inner: S) -> FaultyStore<S> {
        FaultyStore {
            inner,
            faults: Arc::default(),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The next `n` calls (of any method) fail with
    /// [`StoreError::Unavailable`] without reaching the inner store.
    pub fn fail_next(&self, n: u32) {
        self.faults.fail_before.store(n, Ordering::SeqCst);
    }

    /// The next `n` writes (`create`, `update`, `delete`) are applied to the
    /// inner store and then reported as [`StoreError::Unavailable`]: the
    /// caller cannot tell whether its write landed, as after a timeout.
    pub fn fail_next_after_apply(&self, n: u32) {
        self.faults.fail_after.store(n, Ordering::SeqCst);
    }

    /// How many calls were made, failed ones included.
    pub fn calls(&self) -> u64 {
        self.faults.calls.load(Ordering::SeqCst)
    }

    fn before(&self, op: &str) -> Result<(), StoreError> {
        self.faults.calls.fetch_add(1, Ordering::SeqCst);
        if take_one(&self.faults.fail_before) {
            return Err(StoreError::Unavailable(format!(
                "injected fault before {op}"
            )));
        }
        Ok(())
    }

    fn after<T>(&self, op: &str, result: Result<T, StoreError>) -> Result<T, StoreError> {
        // Only a write that landed is worth lying about.
        if result.is_ok() && take_one(&self.faults.fail_after) {
            return Err(StoreError::Unavailable(format!(
                "injected fault after {op}"
            )));
        }
        result
    }
}

#[async_trait]
impl<S: Store> Store for FaultyStore<S> {
    async fn get(&self, key: &Key) -> Result<Option<Versioned>, StoreError> {
        self.before("get")?;
        self.inner.get(key).await
    }

    async fn create(&self, key: &Key, value: Bytes) -> Result<Revision, StoreError> {
        self.before("create")?;
        let result = self.inner.create(key, value).await;
        self.after("create", result)
    }

    async fn update(
        &self,
        key: &Key,
        value: Bytes,
        expected: Revision,
    ) -> Result<Revision, StoreError> {
        self.before("update")?;
        let result = self.inner.update(key, value, expected).await;
        self.after("update", result)
    }

    async fn delete(&self, key: &Key, expected: Revision) -> Result<(), StoreError> {
        self.before("delete")?;
        let result = self.inner.delete(key, expected).await;
        self.after("delete", result)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(Key, Versioned)>, StoreError> {
        self.before("list")?;
        self.inner.list(prefix).await
    }

    async fn watch(&self, prefix: &str) -> Result<BoxStream<'static, WatchEvent>, StoreError> {
        self.before("watch")?;
        self.inner.watch(prefix).await
    }
}
