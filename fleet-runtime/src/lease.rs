//! [`LeaderLease`]: who leads, decided by compare-and-swap on the leader
//! record in any [`Store`].
//!
//! The record ([`LeaderRecord`] at [`Subjects::leader_key`], encoded with
//! `fleet_core::protocol::encode`) names the holder, its fencing epoch and
//! when it lapses. A contender creates it with epoch 1, or replaces an
//! expired one with the next epoch by updating at the revision it read; the
//! store's CAS lets exactly one contender win each race. Epochs only grow:
//! release marks the record expired instead of deleting it, so the next
//! leader still takes a higher epoch and the old one's writes stay fenced
//! (see `fleet_store_redb::RedbStore::fenced`).
//!
//! Time is passed in (milliseconds since the Unix epoch); clocks of the
//! contenders are assumed to agree within a tenth of the TTL. Each
//! contender's holder name must be unique (e.g. host and pid): a restarted
//! process waits for its old lease to lapse like anyone else.
//!
//! A store that cannot check the epoch in the same transaction as a write
//! (JetStream KV) is wrapped in a [`LeaseFencedStore`]: it refuses writes
//! once the holder's [`LeaseGuard`] says the lease has lapsed by this
//! process's own monotonic clock — a leader paused past its lease (and
//! possibly replaced) wakes up unable to write.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use fleet_core::ids::{Epoch, Millis};
use fleet_core::protocol::{LeaderRecord, decode, encode};
use fleet_core::store::{Key, Revision, Store, StoreError, Versioned, WatchEvent, Write};
use fleet_core::subjects::Subjects;
use futures_core::stream::BoxStream;

/// A lease this process holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// The fencing epoch: pass it to every write (`RedbStore::fenced`).
    pub epoch: Epoch,
    /// The revision of the leader record we wrote last.
    pub revision: Revision,
    /// When the lease lapses unless renewed.
    pub expires_at: Millis,
}

/// A renewal failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LeaseError {
    /// `renew` without holding the lease.
    #[error("the lease is not held")]
    NotHeld,
    /// Someone else wrote the leader record: leadership is lost; stop
    /// leading at once.
    #[error("leadership lost: {0}")]
    Lost(StoreError),
    /// The store failed; the lease is still ours until it expires, and the
    /// renewal may be retried.
    #[error("store failed while renewing the lease: {0}")]
    Store(StoreError),
}

impl LeaseError {
    /// A short stable name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            LeaseError::NotHeld => "not_held",
            LeaseError::Lost(_) => "lost",
            LeaseError::Store(_) => "store",
        }
    }

    /// Whether renewing again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            LeaseError::NotHeld | LeaseError::Lost(_) => false,
            LeaseError::Store(e) => e.is_retryable(),
        }
    }
}

/// One contender for leadership.
#[derive(Debug, Clone)]
pub struct LeaderLease {
    holder: String,
    ttl_ms: Millis,
    held: Option<Held>,
    guard: LeaseGuard,
}

/// Until when this process may act as leader, by its own monotonic clock:
/// the start of its last successful acquire or renew plus nine tenths of
/// the TTL (the tenth covers clock disagreement with the contenders, which
/// judge expiry by their wall clocks). Clones share the deadline.
#[derive(Debug, Clone, Default)]
pub struct LeaseGuard(Arc<Mutex<Option<Instant>>>);

impl LeaseGuard {
    fn set(&self, until: Option<Instant>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = until;
    }

    /// How long the lease still holds; `None` once it lapsed (or was never
    /// held, or was lost or released).
    pub fn remaining(&self) -> Option<Duration> {
        let until = (*self.0.lock().unwrap_or_else(|e| e.into_inner()))?;
        until
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    }
}

/// A [`Store`] whose writes go through only while the writer's lease
/// holds ([`LeaseGuard`]); otherwise [`StoreError::LeaseLapsed`], which
/// stops the controller like a fence. Reads and watches pass through.
#[derive(Clone)]
pub struct LeaseFencedStore {
    inner: Arc<dyn Store>,
    guard: LeaseGuard,
    epoch: Epoch,
}

impl std::fmt::Debug for LeaseFencedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseFencedStore")
            .field("epoch", &self.epoch)
            .field("remaining", &self.guard.remaining())
            .finish_non_exhaustive()
    }
}

impl LeaseFencedStore {
    /// Writes to `inner` as the leader of `epoch`, while `guard` holds.
    pub fn new(inner: Arc<dyn Store>, guard: LeaseGuard, epoch: Epoch) -> LeaseFencedStore {
        LeaseFencedStore {
            inner,
            guard,
            epoch,
        }
    }

    fn check(&self) -> Result<(), StoreError> {
        match self.guard.remaining() {
            Some(_) => Ok(()),
            None => {
                tracing::warn!(epoch = %self.epoch, "write refused: the leader lease lapsed");
                Err(StoreError::LeaseLapsed {
                    writer: self.epoch.0,
                })
            }
        }
    }
}

#[async_trait]
impl Store for LeaseFencedStore {
    async fn get(&self, key: &Key) -> Result<Option<Versioned>, StoreError> {
        self.inner.get(key).await
    }

    async fn create(&self, key: &Key, value: Bytes) -> Result<Revision, StoreError> {
        self.check()?;
        self.inner.create(key, value).await
    }

    async fn update(
        &self,
        key: &Key,
        value: Bytes,
        expected: Revision,
    ) -> Result<Revision, StoreError> {
        self.check()?;
        self.inner.update(key, value, expected).await
    }

    async fn delete(&self, key: &Key, expected: Revision) -> Result<(), StoreError> {
        self.check()?;
        self.inner.delete(key, expected).await
    }

    async fn write_all(&self, writes: Vec<Write>) -> Vec<Result<Revision, StoreError>> {
        if let Err(e) = self.check() {
            return vec![Err(e); writes.len()];
        }
        self.inner.write_all(writes).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(Key, Versioned)>, StoreError> {
        self.inner.list(prefix).await
    }

    async fn watch(&self, prefix: &str) -> Result<BoxStream<'static, WatchEvent>, StoreError> {
        self.inner.watch(prefix).await
    }
}

/// Reads the leader record and its revision.
pub async fn read_leader(
    store: &dyn Store,
) -> Result<Option<(LeaderRecord, Revision)>, StoreError> {
    let key = Subjects::leader_key();
    let Some(v) = store.get(&key).await? else {
        return Ok(None);
    };
    let record: LeaderRecord =
        decode(&v.value).map_err(|e| StoreError::Corrupt(format!("leader record {key}: {e}")))?;
    Ok(Some((record, v.revision)))
}

/// Notes that follower `holder` looked at the lease at `now` (its
/// `followers.<holder>` record, created or replaced).
pub async fn note_follower(store: &dyn Store, holder: &str, now: Millis) -> Result<(), StoreError> {
    let key = Subjects::follower_key(holder);
    let record = fleet_core::protocol::FollowerRecord {
        holder: holder.to_owned(),
        seen_at: now,
    };
    let value = encode(&record)
        .map(Bytes::from)
        .map_err(|e| StoreError::Corrupt(format!("encoding a follower record: {e}")))?;
    match store.get(&key).await? {
        Some(v) => store.update(&key, value, v.revision).await.map(drop),
        None => store.create(&key, value).await.map(drop),
    }
}

/// Deletes follower `holder`'s record (it leads now, or leaves).
pub async fn forget_follower(store: &dyn Store, holder: &str) -> Result<(), StoreError> {
    let key = Subjects::follower_key(holder);
    match store.get(&key).await? {
        Some(v) => store.delete(&key, v.revision).await,
        None => Ok(()),
    }
}

/// The followers that looked at the lease since `since`, oldest name
/// first; records that do not decode are skipped.
pub async fn followers(
    store: &dyn Store,
    since: Millis,
) -> Result<Vec<fleet_core::protocol::FollowerRecord>, StoreError> {
    let mut out: Vec<fleet_core::protocol::FollowerRecord> = store
        .list(Subjects::FOLLOWERS_PREFIX)
        .await?
        .into_iter()
        .filter_map(|(_, v)| decode(&v.value).ok())
        .filter(|f: &fleet_core::protocol::FollowerRecord| f.seen_at >= since)
        .collect();
    out.sort_by(|a, b| a.holder.cmp(&b.holder));
    Ok(out)
}

fn encode_record(record: &LeaderRecord) -> Result<Bytes, StoreError> {
    encode(record)
        .map(Bytes::from)
        .map_err(|e| StoreError::Corrupt(format!("encoding the leader record: {e}")))
}

impl LeaderLease {
    /// A contender named `holder` taking leases of `ttl_ms`.
    pub fn new(holder: impl Into<String>, ttl_ms: Millis) -> LeaderLease {
        LeaderLease {
            holder: holder.into(),
            ttl_ms,
            held: None,
            guard: LeaseGuard::default(),
        }
    }

    /// The guard that follows this contender's lease (for
    /// [`LeaseFencedStore`]).
    pub fn guard(&self) -> LeaseGuard {
        self.guard.clone()
    }

    /// The guard's deadline for a lease won or renewed by a call that
    /// started at `began`.
    fn guard_until(&self, began: Instant) -> Instant {
        began + Duration::from_millis(self.ttl_ms - self.ttl_ms / 10)
    }

    /// This contender's name.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The lease, if this contender believes it holds one (it may have
    /// expired; see [`LeaderLease::is_leader`]).
    pub fn held(&self) -> Option<Held> {
        self.held
    }

    /// The epoch held, if any.
    pub fn epoch(&self) -> Option<Epoch> {
        self.held.map(|h| h.epoch)
    }

    /// Whether this contender holds an unexpired lease at `now`. A leader
    /// should stop acting on its own once this turns false, before another
    /// can take over.
    pub fn is_leader(&self, now: Millis) -> bool {
        self.held.is_some_and(|h| now < h.expires_at)
    }

    /// Tries to become (or stay) leader at `now`.
    ///
    /// Returns the epoch when this contender holds the lease afterwards:
    /// a new record gets epoch 1, an expired or released one is taken over
    /// with its epoch + 1, our own current record is renewed with the same
    /// epoch. Returns `None` while another holder's lease is unexpired, or
    /// when another contender won the race for it.
    pub async fn try_acquire(
        &mut self,
        store: &dyn Store,
        now: Millis,
    ) -> Result<Option<Epoch>, StoreError> {
        self.acquire(store, now, false).await
    }

    /// Takes the lease at `now` even if the record says another holder's
    /// lease is still live, with the next epoch — for a contender that
    /// *knows* every earlier holder is dead, because it holds an exclusive
    /// OS lock that each of them held for its whole life (a local redb
    /// store: the file lock the kernel drops when its owner dies). A dead
    /// holder makes no more writes, so there is nothing to wait out; the
    /// new epoch still fences any write of it a store has not applied yet.
    ///
    /// Never use it on a store shared between hosts (JetStream KV): there a
    /// holder's death cannot be proven, and [`LeaderLease::try_acquire`]
    /// must wait for the lease to lapse.
    pub async fn take_over(
        &mut self,
        store: &dyn Store,
        now: Millis,
    ) -> Result<Option<Epoch>, StoreError> {
        self.acquire(store, now, true).await
    }

    async fn acquire(
        &mut self,
        store: &dyn Store,
        now: Millis,
        holders_dead: bool,
    ) -> Result<Option<Epoch>, StoreError> {
        let began = Instant::now();
        let key = Subjects::leader_key();
        let expires_at = now.saturating_add(self.ttl_ms);
        let current = read_leader(store).await?;
        let (epoch, result) = match current {
            None => {
                let epoch = Epoch(1);
                let value = encode_record(&self.record(epoch, expires_at))?;
                (epoch, store.create(&key, value).await)
            }
            Some((_, revision)) if self.held.is_some_and(|h| h.revision == revision) => {
                return match self.renew(store, now).await {
                    Ok(epoch) => Ok(Some(epoch)),
                    Err(LeaseError::Lost(_) | LeaseError::NotHeld) => Ok(None),
                    Err(LeaseError::Store(e)) => Err(e),
                };
            }
            Some((record, _)) if now < record.expires_at && !holders_dead => {
                // Someone else's live lease (or ours from an earlier life,
                // which must lapse first so its writes stay fenced).
                self.held = None;
                self.guard.set(None);
                return Ok(None);
            }
            Some((record, revision)) => {
                let epoch = record.epoch.next();
                let value = encode_record(&self.record(epoch, expires_at))?;
                (epoch, store.update(&key, value, revision).await)
            }
        };
        match result {
            Ok(revision) => {
                self.held = Some(Held {
                    epoch,
                    revision,
                    expires_at,
                });
                self.guard.set(Some(self.guard_until(began)));
                tracing::info!(holder = %self.holder, %epoch, "acquired the leader lease");
                Ok(Some(epoch))
            }
            // Another contender wrote between our read and our write.
            Err(
                StoreError::AlreadyExists { .. }
                | StoreError::Conflict { .. }
                | StoreError::NotFound { .. },
            ) => {
                self.held = None;
                self.guard.set(None);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Extends the held lease to `now + ttl` by CAS on the revision we
    /// wrote last. A conflict means another contender took over:
    /// [`LeaseError::Lost`], and this contender no longer holds anything.
    pub async fn renew(&mut self, store: &dyn Store, now: Millis) -> Result<Epoch, LeaseError> {
        let Some(held) = self.held else {
            return Err(LeaseError::NotHeld);
        };
        let began = Instant::now();
        let expires_at = now.saturating_add(self.ttl_ms);
        let value =
            encode_record(&self.record(held.epoch, expires_at)).map_err(LeaseError::Store)?;
        match store
            .update(&Subjects::leader_key(), value, held.revision)
            .await
        {
            Ok(revision) => {
                self.held = Some(Held {
                    epoch: held.epoch,
                    revision,
                    expires_at,
                });
                self.guard.set(Some(self.guard_until(began)));
                Ok(held.epoch)
            }
            Err(e @ (StoreError::Conflict { .. } | StoreError::NotFound { .. })) => {
                self.held = None;
                self.guard.set(None);
                tracing::warn!(holder = %self.holder, epoch = %held.epoch, "lost the leader lease");
                Err(LeaseError::Lost(e))
            }
            Err(e) => Err(LeaseError::Store(e)),
        }
    }

    /// Gives the lease up at `now` so another contender need not wait for
    /// it to expire. The record stays, marked expired, keeping its epoch.
    /// Returns whether we still held it; either way we hold nothing after.
    pub async fn release(&mut self, store: &dyn Store, now: Millis) -> Result<bool, StoreError> {
        let Some(held) = self.held.take() else {
            return Ok(false);
        };
        self.guard.set(None);
        let value = encode_record(&self.record(held.epoch, now))?;
        match store
            .update(&Subjects::leader_key(), value, held.revision)
            .await
        {
            Ok(_) => {
                tracing::info!(holder = %self.holder, epoch = %held.epoch, "released the leader lease");
                Ok(true)
            }
            Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn record(&self, epoch: Epoch, expires_at: Millis) -> LeaderRecord {
        LeaderRecord {
            holder: self.holder.clone(),
            epoch,
            expires_at,
        }
    }
}
