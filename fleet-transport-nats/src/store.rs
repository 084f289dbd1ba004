//! The [`Store`] on a JetStream key-value bucket.
//!
//! Revisions are KV revisions (the bucket stream's sequence numbers), so they
//! rise across every key and never repeat, also across a delete and
//! re-create. Every write is conditional on the server
//! (`Nats-Expected-Last-Subject-Sequence`): `create` expects no live value,
//! `update` and `delete` expect the caller's revision. A lease is never
//! written as delete + create, and the bucket has no TTL: leases expire by
//! the controller's clock, not the server's.

use std::fmt;

use async_nats::jetstream::kv::{self, Entry, Operation};
use async_nats::jetstream::{self, stream::StorageType};
use async_trait::async_trait;
use bytes::Bytes;
use fleet_core::protocol::MAX_MESSAGE_BYTES;
use fleet_core::store::{Key, Revision, Store, StoreError, Versioned, WatchEvent};
use fleet_core::subjects::Subjects;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

use crate::conn::Connection;

/// Bucket settings (`[store.nats]` in the daemon configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvConfig {
    /// Bucket name; default [`Subjects::kv_bucket`] of the namespace.
    pub bucket: Option<String>,
    /// Copies of the bucket in a cluster: 1 for a single server, 3
    /// recommended in production (survives one server's loss).
    pub replicas: usize,
    /// Revisions kept per key (1–64); older ones are dropped. Only the latest
    /// is read; more history helps debugging.
    pub history: i64,
    /// The largest value accepted, in bytes; larger writes fail with
    /// [`StoreError::TooLarge`] before reaching the server. Keep it within
    /// the server's `max_payload` (1 MiB by default).
    pub max_value_bytes: usize,
    /// Keep the bucket in memory instead of on disk (tests only: a
    /// restart loses everything).
    pub memory_storage: bool,
}

impl Default for KvConfig {
    fn default() -> Self {
        KvConfig {
            bucket: None,
            replicas: 1,
            history: 5,
            max_value_bytes: MAX_MESSAGE_BYTES,
            memory_storage: false,
        }
    }
}

/// A [`Store`] on one JetStream KV bucket.
#[derive(Clone)]
pub struct NatsKvStore {
    kv: kv::Store,
    max_value_bytes: usize,
}

impl fmt::Debug for NatsKvStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsKvStore")
            .field("bucket", &self.kv.name)
            .field("max_value_bytes", &self.max_value_bytes)
            .finish_non_exhaustive()
    }
}

fn unavailable(what: &str, e: impl fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("{what}: {e}"))
}

impl NatsKvStore {
    /// Opens the bucket, creating it with `config` if it does not exist. An
    /// existing bucket is used as it is (its settings are not changed).
    pub async fn open(
        conn: &Connection,
        subjects: &Subjects,
        config: &KvConfig,
    ) -> Result<NatsKvStore, StoreError> {
        let js = jetstream::new(conn.client().clone());
        let bucket = config
            .bucket
            .clone()
            .unwrap_or_else(|| subjects.kv_bucket());
        let max_value_bytes = config.max_value_bytes.max(1);
        let kv = match js.get_key_value(bucket.clone()).await {
            Ok(kv) => kv,
            Err(_) => {
                let cfg = kv::Config {
                    bucket: bucket.clone(),
                    description: "fleet state (claims, nodes, jobs, pools, leader)".to_owned(),
                    max_value_size: i32::try_from(max_value_bytes).unwrap_or(i32::MAX),
                    history: config.history.clamp(1, 64),
                    // No TTL: leases are the controller's business.
                    max_age: std::time::Duration::ZERO,
                    storage: if config.memory_storage {
                        StorageType::Memory
                    } else {
                        StorageType::File
                    },
                    num_replicas: config.replicas.max(1),
                    ..kv::Config::default()
                };
                js.create_key_value(cfg)
                    .await
                    .map_err(|e| unavailable(&format!("create bucket {bucket}"), e))?
            }
        };
        Ok(NatsKvStore {
            kv,
            max_value_bytes,
        })
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        &self.kv.name
    }

    /// The latest entry of `key`, deleted or not.
    async fn entry(&self, key: &Key) -> Result<Option<Entry>, StoreError> {
        self.kv
            .entry(key.as_str())
            .await
            .map_err(|e| unavailable(&format!("get {key}"), e))
    }

    /// The live revision of `key`, if any.
    async fn live(&self, key: &Key) -> Result<Option<Entry>, StoreError> {
        Ok(self.entry(key).await?.filter(is_live))
    }

    fn check_size(&self, value: &Bytes) -> Result<(), StoreError> {
        if value.len() > self.max_value_bytes {
            return Err(StoreError::TooLarge {
                len: value.len(),
                max: self.max_value_bytes,
            });
        }
        Ok(())
    }

    /// Reads the key again after a refused conditional write and says why
    /// it was refused.
    async fn explain(&self, key: &Key, expected: Revision, err: impl fmt::Display) -> StoreError {
        match self.live(key).await {
            Ok(None) => StoreError::NotFound { key: key.clone() },
            Ok(Some(e)) if e.revision != expected.0 => StoreError::Conflict {
                key: key.clone(),
                expected,
                current: Revision(e.revision),
            },
            Ok(Some(_)) => unavailable(&format!("write {key}"), err),
            Err(e) => e,
        }
    }

    /// Checks before a conditional write that `expected` is the live
    /// revision: the server's check alone would also accept the revision of
    /// a delete marker and resurrect a deleted key.
    async fn precheck(&self, key: &Key, expected: Revision) -> Result<(), StoreError> {
        match self.live(key).await? {
            None => Err(StoreError::NotFound { key: key.clone() }),
            Some(e) if e.revision != expected.0 => Err(StoreError::Conflict {
                key: key.clone(),
                expected,
                current: Revision(e.revision),
            }),
            Some(_) => Ok(()),
        }
    }
}

fn is_live(e: &Entry) -> bool {
    e.operation == Operation::Put
}

fn parse_key(raw: &str) -> Option<Key> {
    match Key::new(raw) {
        Ok(k) => Some(k),
        Err(e) => {
            tracing::warn!(key = raw, error = %e, "ignored a bucket key that is not a fleet key");
            None
        }
    }
}

#[async_trait]
impl Store for NatsKvStore {
    async fn get(&self, key: &Key) -> Result<Option<Versioned>, StoreError> {
        Ok(self.live(key).await?.map(|e| Versioned {
            value: e.value,
            revision: Revision(e.revision),
        }))
    }

    async fn create(&self, key: &Key, value: Bytes) -> Result<Revision, StoreError> {
        self.check_size(&value)?;
        // Expected last sequence 0: no message for this key at all.
        let first = match self.kv.update(key.as_str(), value.clone(), 0).await {
            Ok(rev) => return Ok(Revision(rev)),
            Err(e) => e,
        };
        match self.entry(key).await? {
            Some(e) if !is_live(&e) => {
                // Deleted before: create on top of its delete marker.
                match self.kv.update(key.as_str(), value, e.revision).await {
                    Ok(rev) => Ok(Revision(rev)),
                    Err(err) => match self.live(key).await? {
                        Some(now) => Err(StoreError::AlreadyExists {
                            key: key.clone(),
                            current: Revision(now.revision),
                        }),
                        None => Err(unavailable(&format!("create {key}"), err)),
                    },
                }
            }
            Some(e) => Err(StoreError::AlreadyExists {
                key: key.clone(),
                current: Revision(e.revision),
            }),
            None => Err(unavailable(&format!("create {key}"), first)),
        }
    }

    async fn update(
        &self,
        key: &Key,
        value: Bytes,
        expected: Revision,
    ) -> Result<Revision, StoreError> {
        self.check_size(&value)?;
        self.precheck(key, expected).await?;
        match self.kv.update(key.as_str(), value, expected.0).await {
            Ok(rev) => Ok(Revision(rev)),
            Err(e) => Err(self.explain(key, expected, e).await),
        }
    }

    async fn delete(&self, key: &Key, expected: Revision) -> Result<(), StoreError> {
        self.precheck(key, expected).await?;
        // Purge leaves one marker (with a new, higher revision) and drops
        // the key's history.
        match self
            .kv
            .purge_expect_revision(key.as_str(), Some(expected.0))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) => Err(self.explain(key, expected, e).await),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(Key, Versioned)>, StoreError> {
        let mut keys = self
            .kv
            .keys()
            .await
            .map_err(|e| unavailable("list keys", e))?;
        let mut names = Vec::new();
        while let Some(k) = keys.next().await {
            let k = k.map_err(|e| unavailable("list keys", e))?;
            if k.starts_with(prefix)
                && let Some(key) = parse_key(&k)
            {
                names.push(key);
            }
        }
        names.sort();
        names.dedup();
        let mut out = Vec::with_capacity(names.len());
        for key in names {
            // Deleted since the listing: skip it.
            if let Some(v) = self.get(&key).await? {
                out.push((key, v));
            }
        }
        Ok(out)
    }

    async fn watch(&self, prefix: &str) -> Result<BoxStream<'static, WatchEvent>, StoreError> {
        // The server filters by subject tokens; a prefix ending in `.` is a
        // token boundary, anything else is filtered here, textually.
        let watch = if !prefix.is_empty() && prefix.ends_with('.') {
            self.kv.watch(format!("{prefix}>")).await
        } else {
            self.kv.watch_all().await
        }
        .map_err(|e| unavailable(&format!("watch {prefix}"), e))?;
        let prefix = prefix.to_owned();
        Ok(watch
            .filter_map(move |item| {
                let out = match item {
                    Ok(e) if e.key.starts_with(&prefix) => {
                        parse_key(&e.key).map(|key| match e.operation {
                            Operation::Put => WatchEvent::Put {
                                key,
                                value: e.value,
                                revision: Revision(e.revision),
                            },
                            Operation::Delete | Operation::Purge => WatchEvent::Delete {
                                key,
                                revision: Revision(e.revision),
                            },
                        })
                    }
                    Ok(_) => None,
                    Err(e) => {
                        tracing::warn!(error = %e, "kv watch error");
                        None
                    }
                };
                std::future::ready(out)
            })
            .boxed())
    }
}
