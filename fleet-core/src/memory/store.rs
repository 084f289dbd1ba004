//! An in-memory [`Store`]: the reference implementation of the store
//! contract (the fault-injecting wrapper is [`super::faulty`], feature
//! `harness`).
//!
//! Revisions come from one counter shared by every key, the way NATS KV
//! numbers a bucket's stream: each write (create, update or delete) takes the
//! next number, starting at 1. So revisions of one key strictly increase, even
//! across a delete and a re-create, and a caller holding a revision from before
//! a delete can never overwrite the re-created key by accident.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use bytes::Bytes;
use futures_channel::mpsc::{UnboundedSender, unbounded};
use futures_core::stream::BoxStream;
use futures_util::StreamExt;

use crate::store::{Key, Revision, Store, StoreError, Versioned, WatchEvent};

/// A revisioned key-value map held in memory.
///
/// Cloning is cheap and the clones share one map, so a test can keep a handle
/// while the code under test owns another.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
    max_value_bytes: Option<usize>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: BTreeMap<Key, Versioned>,
    /// The last revision issued; 0 before the first write.
    revision: u64,
    watchers: Vec<Watcher>,
}

#[derive(Debug)]
struct Watcher {
    prefix: String,
    tx: UnboundedSender<WatchEvent>,
}

impl Inner {
    /// Stores `value` under `key` at the next revision and tells watchers.
    fn put(&mut self, key: &Key, value: Bytes) -> Revision {
        let revision = self.next_revision();
        self.entries.insert(
            key.clone(),
            Versioned {
                value: value.clone(),
                revision,
            },
        );
        self.notify(&WatchEvent::Put {
            key: key.clone(),
            value,
            revision,
        });
        revision
    }

    fn next_revision(&mut self) -> Revision {
        self.revision = self.revision.saturating_add(1);
        Revision(self.revision)
    }

    /// Sends `event` to every watcher of its key. Called with the lock held,
    /// so watchers see events in commit order; an unbounded send never blocks.
    fn notify(&mut self, event: &WatchEvent) {
        // A failed send means the receiver was dropped: forget that watcher.
        self.watchers.retain(|w| {
            !event.key().has_prefix(&w.prefix) || w.tx.unbounded_send(event.clone()).is_ok()
        });
    }
}

impl MemoryStore {
    /// An empty store without a value size limit.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// An empty store refusing values longer than `max` bytes with
    /// [`StoreError::TooLarge`] (NATS defaults to 1 MiB per message).
    pub fn with_max_value_bytes(max: usize) -> MemoryStore {
        MemoryStore {
            inner: Arc::default(),
            max_value_bytes: Some(max),
        }
    }

    /// The last revision issued by any write; `Revision(0)` if none yet.
    pub fn last_revision(&self) -> Revision {
        Revision(self.lock().revision)
    }

    /// How many keys the store holds.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether the store holds no keys.
    pub fn is_empty(&self) -> bool {
        self.lock().entries.is_empty()
    }

    /// How many watchers are still open (closed ones are noticed at the next
    /// write to their prefix or the next `watch` call).
    pub fn watcher_count(&self) -> usize {
        self.lock().watchers.len()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every mutation completes before the guard drops and nothing in it
        // can panic midway, so a poisoned map is still consistent.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn check_size(&self, value: &Bytes) -> Result<(), StoreError> {
        match self.max_value_bytes {
            Some(max) if value.len() > max => Err(StoreError::TooLarge {
                len: value.len(),
                max,
            }),
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn get(&self, key: &Key) -> Result<Option<Versioned>, StoreError> {
        Ok(self.lock().entries.get(key).cloned())
    }

    async fn create(&self, key: &Key, value: Bytes) -> Result<Revision, StoreError> {
        self.check_size(&value)?;
        let mut inner = self.lock();
        if let Some(existing) = inner.entries.get(key) {
            return Err(StoreError::AlreadyExists {
                key: key.clone(),
                current: existing.revision,
            });
        }
        Ok(inner.put(key, value))
    }

    async fn update(
        &self,
        key: &Key,
        value: Bytes,
        expected: Revision,
    ) -> Result<Revision, StoreError> {
        self.check_size(&value)?;
        let mut inner = self.lock();
        let current = match inner.entries.get(key) {
            Some(v) => v.revision,
            None => return Err(StoreError::NotFound { key: key.clone() }),
        };
        if current != expected {
            return Err(StoreError::Conflict {
                key: key.clone(),
                expected,
                current,
            });
        }
        Ok(inner.put(key, value))
    }

    async fn delete(&self, key: &Key, expected: Revision) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let current = match inner.entries.get(key) {
            Some(v) => v.revision,
            None => return Err(StoreError::NotFound { key: key.clone() }),
        };
        if current != expected {
            return Err(StoreError::Conflict {
                key: key.clone(),
                expected,
                current,
            });
        }
        inner.entries.remove(key);
        // The delete takes a revision of its own, as a NATS KV tombstone does,
        // so watchers can order it against the puts around it.
        let revision = inner.next_revision();
        inner.notify(&WatchEvent::Delete {
            key: key.clone(),
            revision,
        });
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(Key, Versioned)>, StoreError> {
        // A linear scan: `Key` cannot be built from an arbitrary prefix to
        // seek with, and in-memory maps in tests are small.
        Ok(self
            .lock()
            .entries
            .iter()
            .filter(|(k, _)| k.has_prefix(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    async fn watch(&self, prefix: &str) -> Result<BoxStream<'static, WatchEvent>, StoreError> {
        let (tx, rx) = unbounded();
        let mut inner = self.lock();
        // Watchers of quiet prefixes are never pruned by `notify`; do it here
        // so a long-lived store does not collect dead senders.
        inner.watchers.retain(|w| !w.tx.is_closed());
        inner.watchers.push(Watcher {
            prefix: prefix.to_owned(),
            tx,
        });
        Ok(rx.boxed())
    }
}
