//! The store trait: a revisioned key-value map with compare-and-swap.
//!
//! The revision is the only arbiter of races: `create` fails if the key
//! exists, `update` and `delete` fail unless the caller names the current
//! revision. Keys are dot-separated tokens (built in [`crate::subjects`]), so
//! they are valid NATS KV keys, redb keys and file names alike.

use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;
use futures_core::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::ids::{IdError, validate_token};

/// The longest key accepted.
pub const MAX_KEY_LEN: usize = 512;

/// A store key: one or more tokens joined by `.`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Key(String);

impl Key {
    /// Validates a key.
    pub fn new(s: impl Into<String>) -> Result<Key, IdError> {
        let s = s.into();
        if s.len() > MAX_KEY_LEN {
            return Err(IdError::TooLong {
                kind: "store key",
                len: s.len(),
                max: MAX_KEY_LEN,
            });
        }
        for part in s.split('.') {
            validate_token("store key segment", part)?;
        }
        Ok(Key(s))
    }

    /// Joins already-validated tokens (used by [`crate::subjects`]).
    pub(crate) fn from_tokens(tokens: &[&str]) -> Key {
        Key(tokens.join("."))
    }

    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the key starts with `prefix`.
    pub fn has_prefix(&self, prefix: &str) -> bool {
        self.0.starts_with(prefix)
    }
}

impl TryFrom<String> for Key {
    type Error = IdError;
    fn try_from(s: String) -> Result<Key, IdError> {
        Key::new(s)
    }
}

impl From<Key> for String {
    fn from(k: Key) -> String {
        k.0
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({:?})", self.0)
    }
}

/// A revision. Revisions of one key strictly increase; `0` is never issued.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Revision(pub u64);

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.0)
    }
}

/// A value with its revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The bytes.
    pub value: Bytes,
    /// Its revision.
    pub revision: Revision,
}

/// A change seen by a watcher.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WatchEvent {
    /// Created or updated.
    Put {
        /// Key.
        key: Key,
        /// New value.
        value: Bytes,
        /// New revision.
        revision: Revision,
    },
    /// Deleted.
    Delete {
        /// Key.
        key: Key,
        /// The revision of the delete.
        revision: Revision,
    },
}

impl WatchEvent {
    /// The key changed.
    pub fn key(&self) -> &Key {
        match self {
            WatchEvent::Put { key, .. } | WatchEvent::Delete { key, .. } => key,
        }
    }
}

/// A store failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// `update`/`delete` of a key that does not exist.
    #[error("key {key} not found")]
    NotFound {
        /// The key.
        key: Key,
    },
    /// `create` of a key that exists.
    #[error("key {key} already exists at {current}")]
    AlreadyExists {
        /// The key.
        key: Key,
        /// Its current revision.
        current: Revision,
    },
    /// The expected revision is not the current one: someone else wrote.
    #[error("key {key}: expected {expected}, found {current}")]
    Conflict {
        /// The key.
        key: Key,
        /// What the caller expected.
        expected: Revision,
        /// What is there.
        current: Revision,
    },
    /// The write carried an epoch older than the current leader's.
    #[error("fenced: write from epoch {writer} after leader epoch {current}")]
    Fenced {
        /// The writer's epoch.
        writer: u64,
        /// The current leader epoch.
        current: u64,
    },
    /// The writer's leader lease lapsed by its own clock: another process
    /// may lead by now, so it may not write (a lease-guarded shared store).
    #[error("the leader lease of epoch {writer} lapsed; this process may no longer write")]
    LeaseLapsed {
        /// The writer's epoch.
        writer: u64,
    },
    /// The value is larger than the store accepts.
    #[error("value of {len} bytes exceeds the store limit of {max}")]
    TooLarge {
        /// Value length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The backend could not be reached or timed out.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The backend returned data it should not have (corruption).
    #[error("store corrupt: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// A short stable name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::NotFound { .. } => "not_found",
            StoreError::AlreadyExists { .. } => "already_exists",
            StoreError::Conflict { .. } => "conflict",
            StoreError::Fenced { .. } => "fenced",
            StoreError::LeaseLapsed { .. } => "lease_lapsed",
            StoreError::TooLarge { .. } => "too_large",
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Corrupt(_) => "corrupt",
        }
    }

    /// Whether the same call may succeed later. A conflict is not retryable
    /// as is: the caller must re-read.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// One write of a [`Store::write_all`] batch. Exhaustive: these are the
/// store's three writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// [`Store::create`].
    Create {
        /// The key.
        key: Key,
        /// The value.
        value: Bytes,
    },
    /// [`Store::update`].
    Update {
        /// The key.
        key: Key,
        /// The value.
        value: Bytes,
        /// The revision the key must be at.
        expected: Revision,
    },
    /// [`Store::delete`].
    Delete {
        /// The key.
        key: Key,
        /// The revision the key must be at.
        expected: Revision,
    },
}

impl Write {
    /// The key written.
    pub fn key(&self) -> &Key {
        match self {
            Write::Create { key, .. } | Write::Update { key, .. } | Write::Delete { key, .. } => {
                key
            }
        }
    }

    /// Performs this write alone.
    pub async fn apply(self, store: &(impl Store + ?Sized)) -> Result<Revision, StoreError> {
        match self {
            Write::Create { key, value } => store.create(&key, value).await,
            Write::Update {
                key,
                value,
                expected,
            } => store.update(&key, value, expected).await,
            Write::Delete { key, expected } => {
                store.delete(&key, expected).await.map(|()| expected)
            }
        }
    }
}

/// A revisioned key-value store.
#[async_trait]
pub trait Store: Send + Sync {
    /// The current value, if any.
    async fn get(&self, key: &Key) -> Result<Option<Versioned>, StoreError>;
    /// Creates `key`; fails with [`StoreError::AlreadyExists`] if present.
    async fn create(&self, key: &Key, value: Bytes) -> Result<Revision, StoreError>;
    /// Replaces `key` if its revision is `expected`.
    async fn update(
        &self,
        key: &Key,
        value: Bytes,
        expected: Revision,
    ) -> Result<Revision, StoreError>;
    /// Deletes `key` if its revision is `expected`.
    async fn delete(&self, key: &Key, expected: Revision) -> Result<(), StoreError>;
    /// Every key starting with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<(Key, Versioned)>, StoreError>;
    /// Changes to keys starting with `prefix` from now on.
    async fn watch(&self, prefix: &str) -> Result<BoxStream<'static, WatchEvent>, StoreError>;

    /// Performs `writes` in order, each on its own terms: one refused
    /// (a conflict, a missing key) does not refuse the others. One result
    /// per write, in order; a delete answers the revision it deleted.
    ///
    /// The default performs them one by one. A store with transactions
    /// commits them together (group commit: one `fdatasync` for the
    /// batch); every result is then known only once the batch is durable.
    async fn write_all(&self, writes: Vec<Write>) -> Vec<Result<Revision, StoreError>> {
        let mut results = Vec::with_capacity(writes.len());
        for write in writes {
            results.push(write.apply(self).await);
        }
        results
    }
}
