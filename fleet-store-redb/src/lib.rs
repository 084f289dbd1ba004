//! [`RedbStore`]: the daemon's durable [`Store`], one redb file in the data
//! directory, and [`FencedStore`], its leader-epoch-fenced write handle.
//!
//! Semantics follow the reference `fleet_core::memory::MemoryStore`: one
//! global revision counter, starting at 1, from which every write (create,
//! update and delete) takes the next number; list and watch prefixes match
//! text. Each batch of writes is one redb write transaction, durable
//! before the call returns, so a write the store acknowledged is on disk
//! (invariant 8): committed with [`redb::Durability::None`] and its effects
//! appended to a write-ahead journal synced with one `fdatasync`, or every
//! so often committed with [`redb::Durability::Immediate`], which
//! checkpoints the journal (see `journal.rs` for why and how).
//!
//! Layout of the data directory:
//! - `fleet.redb`, table `kv`: key (`&str`) → (revision `u64`, value bytes);
//! - `fleet.redb`, table `meta`: `"revision"` → the last revision issued
//!   (`u64`); `"journal"` → the journal record the last checkpoint covers;
//! - `fleet.journal`: the records since that checkpoint.
//!
//! Each batch is checked (compare-and-swap, fence, revision counter)
//! against an in-memory index of every key's revision before redb is
//! touched, so its journal record reaches the disk first (`index.rs`).
//!
//! redb calls block, so reads run on tokio's blocking pool; a batch of
//! writes on a multi-thread runtime blocks the calling worker instead (see
//! `write_batch`), elsewhere it goes to the blocking pool too.

mod index;
mod journal;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use async_trait::async_trait;
use bytes::Bytes;
use fleet_core::ids::Epoch;
use fleet_core::store::{Key, Revision, Store, StoreError, Versioned, WatchEvent, Write};
use futures_channel::mpsc::{UnboundedSender, unbounded};
use futures_core::stream::BoxStream;
use futures_util::StreamExt;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::index::{Index, Undo};
use crate::journal::{AppendError, Entry, Journal};

/// The file name of the store inside the data directory.
pub const STORE_FILE_NAME: &str = "fleet.redb";

/// The file name of the store's write-ahead journal inside the data
/// directory.
pub const JOURNAL_FILE_NAME: &str = "fleet.journal";

/// The default value size limit: 1 MiB, the same as a NATS message, so a
/// record that fits one backend fits the other.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1 << 20;

const KV: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("kv");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION_KEY: &str = "revision";
const JOURNAL_KEY: &str = "journal";

/// Why the store could not be opened. Every variant names the path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The data directory could not be created or secured.
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Another handle (this or another process) has the file open.
    #[error("store {path} is locked: another fleet-daemon has it open")]
    Locked {
        /// The file.
        path: PathBuf,
    },
    /// The file could not be read or written (missing permission, disk).
    #[error("cannot open store {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The file is not a redb database, or its checksums do not match.
    #[error("store {path} is corrupt: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What redb found.
        detail: String,
    },
    /// Any other failure redb reported.
    #[error("cannot open store {path}: {detail}")]
    Other {
        /// The file.
        path: PathBuf,
        /// What redb said.
        detail: String,
    },
}

impl OpenError {
    /// A short stable name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            OpenError::DataDir { .. } => "data_dir",
            OpenError::Locked { .. } => "locked",
            OpenError::Io { .. } => "io",
            OpenError::Corrupt { .. } => "corrupt",
            OpenError::Other { .. } => "other",
        }
    }

    /// Whether opening again later may succeed: only a lock held by another
    /// process goes away by itself.
    pub fn is_retryable(&self) -> bool {
        matches!(self, OpenError::Locked { .. })
    }

    /// The path the error is about.
    pub fn path(&self) -> &Path {
        match self {
            OpenError::DataDir { path, .. }
            | OpenError::Locked { path }
            | OpenError::Io { path, .. }
            | OpenError::Corrupt { path, .. }
            | OpenError::Other { path, .. } => path,
        }
    }
}

/// Options for [`RedbStore::open_with`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StoreOptions {
    /// Values longer than this are refused with [`StoreError::TooLarge`].
    pub max_value_bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
        }
    }
}

/// The durable store: a [`Store`] over one redb file.
///
/// Cloning is cheap; clones share the database and its watchers.
#[derive(Clone)]
pub struct RedbStore {
    shared: Arc<Shared>,
}

struct Shared {
    db: Database,
    path: PathBuf,
    max_value_bytes: usize,
    /// Held across each write transaction and its notifications: watchers
    /// see events in commit order, and a watch registered under this lock
    /// sees exactly the writes committed after it.
    watchers: Mutex<Vec<Watcher>>,
    /// The journal and the index a batch is checked against. Locked
    /// after `watchers`.
    writer: Mutex<Writer>,
    /// Held for writing from a batch's redb commit until it is durable
    /// (its journal record synced), and for reading while a read begins: a
    /// reader sees no write that a crash could still take back.
    durable: RwLock<()>,
}

/// What a batch of writes goes through, one batch at a time.
struct Writer {
    /// Where the next journal record goes.
    journal: Journal,
    /// What redb holds, as the batch is checked (`index.rs`).
    index: Index,
}

impl Drop for Shared {
    /// A clean close checkpoints, so that the next open replays nothing.
    fn drop(&mut self) {
        let journal = &mut self
            .writer
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .journal;
        if journal.unchecked() > 0
            && let Err(e) = checkpoint(&self.db, journal)
        {
            tracing::warn!(path = %self.path.display(), error = %e, "no checkpoint at close; the journal is replayed at the next open");
        }
    }
}

struct Watcher {
    prefix: String,
    tx: UnboundedSender<WatchEvent>,
}

impl fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.shared.path)
            .field("max_value_bytes", &self.shared.max_value_bytes)
            .finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens (or creates) `<data_dir>/fleet.redb` with default options.
    ///
    /// Blocks (it checks the file's integrity): call it at startup or from
    /// `spawn_blocking`. Creates `data_dir` with mode 0700 if missing.
    pub fn open(data_dir: &Path) -> Result<RedbStore, OpenError> {
        RedbStore::open_with(data_dir, StoreOptions::default())
    }

    /// Opens (or creates) `<data_dir>/fleet.redb`.
    pub fn open_with(data_dir: &Path, options: StoreOptions) -> Result<RedbStore, OpenError> {
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(data_dir)
            .map_err(|source| OpenError::DataDir {
                path: data_dir.to_owned(),
                source,
            })?;
        let path = data_dir.join(STORE_FILE_NAME);
        // Checking integrity on every open costs a read of the whole file,
        // which is small here; without it redb may panic on a file damaged
        // outside redb, and a corrupt store must be an error, not a crash.
        let db = Database::builder()
            .set_check_integrity_on_open(true)
            .create(&path)
            .map_err(|e| open_error(&path, e))?;
        // Create both tables up front so readers never meet a missing table.
        let init = || -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            {
                txn.open_table(KV)?;
                let meta = txn.open_table(META)?;
                // Reading the counter here makes a mistyped meta table fail
                // the open instead of the first write.
                meta.get(REVISION_KEY)?;
            }
            txn.commit()?;
            Ok(())
        };
        init().map_err(|e| open_error(&path, e))?;
        let journal = replay_journal(&db, &data_dir.join(JOURNAL_FILE_NAME), &path)?;
        let index = load_index(&db).map_err(|e| open_error(&path, e))?;
        tracing::debug!(path = %path.display(), "store opened");
        Ok(RedbStore {
            shared: Arc::new(Shared {
                db,
                path,
                max_value_bytes: options.max_value_bytes,
                watchers: Mutex::new(Vec::new()),
                writer: Mutex::new(Writer { journal, index }),
                durable: RwLock::new(()),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The last revision issued by any write; `Revision(0)` if none yet.
    pub async fn last_revision(&self) -> Result<Revision, StoreError> {
        let shared = Arc::clone(&self.shared);
        blocking(move || {
            let txn = shared.begin_read()?;
            let meta = txn.open_table(META).map_err(backend)?;
            let rev = meta.get(REVISION_KEY).map_err(backend)?;
            Ok(Revision(rev.map(|g| g.value()).unwrap_or(0)))
        })
        .await
    }

    /// A handle whose writes are fenced by `epoch`: each batch of creates,
    /// updates and deletes first checks the leader record (key
    /// `Subjects::leader_key`), as last committed, under the lock its
    /// commit holds, and fails with [`StoreError::Fenced`] if its epoch is
    /// newer than `epoch`. A stale leader therefore cannot write once a new
    /// leader's record is committed.
    pub fn fenced(&self, epoch: Epoch) -> FencedStore {
        FencedStore {
            store: self.clone(),
            epoch,
        }
    }

    /// One write, in a batch of its own.
    async fn write(&self, write: Write, fence: Option<Epoch>) -> Result<Revision, StoreError> {
        self.write_batch(vec![write], fence)
            .await
            .pop()
            .unwrap_or_else(|| Err(StoreError::Unavailable("no result for a write".to_owned())))
    }

    /// Every write of `writes` in one redb write transaction, one
    /// `fdatasync` (group commit); see [`Store::write_all`].
    async fn write_batch(
        &self,
        writes: Vec<Write>,
        fence: Option<Epoch>,
    ) -> Vec<Result<Revision, StoreError>> {
        let n = writes.len();
        let shared = Arc::clone(&self.shared);
        // On a multi-thread runtime the commit blocks this worker (one
        // sync, ~0.1-0.2 ms; the other workers steal its queued tasks): the
        // caller (the daemon's control loop, which polls its commit) waits
        // for it either way. Measured on the daemon's claim→grant, both
        // alternatives cost more: the blocking pool two thread wake-ups on
        // every acknowledged write; `block_in_place` leaves the caller
        // without its worker until it yields, so the answers it sends next
        // wake their connections through the shared queue (~40-60 µs of a
        // WebSocket release, ARCH.md).
        if tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
        {
            return shared.write_blocking(writes, fence);
        }
        blocking(move || Ok(shared.write_blocking(writes, fence)))
            .await
            .unwrap_or_else(|e| vec![Err(e); n])
    }
}

impl Shared {
    fn lock_watchers(&self) -> MutexGuard<'_, Vec<Watcher>> {
        // A panic while the lock was held left at worst an aborted redb
        // transaction and an unchanged watcher list: still consistent.
        self.watchers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        // The journal's position is updated only after its write succeeds,
        // and the index is taken back before a failed batch returns: a
        // panic in between leaves at worst a batch that was never answered.
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A read transaction that sees only durable writes.
    fn begin_read(&self) -> Result<redb::ReadTransaction, StoreError> {
        let _durable = self.durable.read().unwrap_or_else(PoisonError::into_inner);
        self.db.begin_read().map_err(backend)
    }

    /// Applies `writes` in one transaction: each is checked on its own
    /// (a refused one is left out, the others go on) and the transaction
    /// is committed once, durably. If the commit fails, none was written.
    ///
    /// The batch is checked against the [`Index`] first, so its journal
    /// record is written, and the disk starts on it, before redb's
    /// transaction begins: redb's work runs while the disk works.
    fn write_blocking(
        &self,
        writes: Vec<Write>,
        fence: Option<Epoch>,
    ) -> Vec<Result<Revision, StoreError>> {
        let n = writes.len();
        let mut watchers = self.lock_watchers();
        let mut writer = self.lock_writer();
        let Writer { journal, index } = &mut *writer;
        if let Some(epoch) = fence
            && let Err(e) = index.check_fence(epoch)
        {
            return vec![Err(e); n];
        }
        let mut undo = index.begin();
        let mut results = Vec::with_capacity(n);
        let mut events = Vec::with_capacity(n);
        let mut entries = Vec::with_capacity(n);
        for write in writes {
            match self.accept(index, &mut undo, write) {
                Ok((answer, event, entry)) => {
                    results.push(Ok(answer));
                    events.push(event);
                    entries.push(entry);
                }
                Err(e @ StoreError::Corrupt(_)) => {
                    index.undo(undo);
                    return vec![Err(e); n];
                }
                Err(refused) => results.push(Err(refused)),
            }
        }
        if events.is_empty() {
            return results;
        }
        let last = index.last();
        // Every so often, or when the record cannot be written, the batch
        // is committed Immediate instead: a checkpoint.
        let record = if journal.checkpoint_due() {
            None
        } else {
            match journal.write(last, &entries) {
                Ok(record) => Some(record),
                Err(AppendError::Full) => None,
                Err(AppendError::Io(e)) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "journal write failed; committing the batch to the store file instead");
                    None
                }
            }
        };
        let durable = self.durable.write().unwrap_or_else(PoisonError::into_inner);
        let checkpoint_seq = record.is_none().then(|| journal.seq());
        let committed = commit(&self.db, &entries, last, checkpoint_seq);
        let committed = match (committed, record) {
            (Ok(()), Some(record)) => journal.sync(record).or_else(|e| {
                tracing::warn!(path = %self.path.display(), error = ?e, "journal sync failed; committing the batch to the store file instead");
                checkpoint(&self.db, journal)
            }),
            (Ok(()), None) => {
                journal.restart();
                Ok(())
            }
            (Err(e), Some(record)) => {
                if let Err(d) = journal.discard(record) {
                    tracing::warn!(path = %self.path.display(), error = %d, "could not take back the journal record of a batch that failed");
                }
                Err(e)
            }
            (Err(e), None) => Err(e),
        };
        drop(durable);
        if let Err(e) = committed {
            // Nothing was written durably: every write of the batch fails
            // alike.
            index.undo(undo);
            return vec![Err(e); n];
        }
        // A failed send means the receiver was dropped: forget it.
        for event in events {
            watchers.retain(|w| {
                !event.key().has_prefix(&w.prefix) || w.tx.unbounded_send(event.clone()).is_ok()
            });
        }
        results
    }

    /// One write of the batch, checked against the index and taken into
    /// it; answers the new revision (for a delete: the deleted one, as
    /// [`Store::write_all`] says), the watch event and the journal entry.
    fn accept(
        &self,
        index: &mut Index,
        undo: &mut Undo,
        write: Write,
    ) -> Result<(Revision, WatchEvent, Entry), StoreError> {
        if let Write::Create { value, .. } | Write::Update { value, .. } = &write
            && value.len() > self.max_value_bytes
        {
            return Err(StoreError::TooLarge {
                len: value.len(),
                max: self.max_value_bytes,
            });
        }
        let accepted = index.accept(&write, undo)?;
        let revision = Revision(accepted.revision);
        let answer = Revision(accepted.answer);
        match write {
            Write::Create { key, value } | Write::Update { key, value, .. } => {
                let entry = Entry::Put {
                    key: key.as_str().to_owned(),
                    revision: revision.0,
                    value: value.clone(),
                };
                let event = WatchEvent::Put {
                    key,
                    value,
                    revision,
                };
                Ok((answer, event, entry))
            }
            Write::Delete { key, .. } => {
                let entry = Entry::Delete {
                    key: key.as_str().to_owned(),
                };
                Ok((answer, WatchEvent::Delete { key, revision }, entry))
            }
        }
    }
}

/// Commits a batch's `entries` to redb with the counter at `last`: not
/// durable (its journal record is), or, with `checkpoint` (the journal
/// sequence number it covers), `Immediate`.
fn commit(
    db: &Database,
    entries: &[Entry],
    last: u64,
    checkpoint: Option<u64>,
) -> Result<(), StoreError> {
    let mut txn = db.begin_write().map_err(backend)?;
    let durability = if checkpoint.is_some() {
        Durability::Immediate
    } else {
        Durability::None
    };
    txn.set_durability(durability)
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    {
        let mut kv = txn.open_table(KV).map_err(backend)?;
        put_entries(&mut kv, entries).map_err(backend)?;
        let mut meta = txn.open_table(META).map_err(backend)?;
        meta.insert(REVISION_KEY, last).map_err(backend)?;
        if let Some(seq) = checkpoint {
            meta.insert(JOURNAL_KEY, seq).map_err(backend)?;
        }
    }
    txn.commit().map_err(backend)
}

/// Writes journal entries into the `kv` table.
fn put_entries(
    kv: &mut redb::Table<'_, &'static str, (u64, &'static [u8])>,
    entries: &[Entry],
) -> Result<(), redb::StorageError> {
    for entry in entries {
        match entry {
            Entry::Put {
                key,
                revision,
                value,
            } => {
                kv.insert(key.as_str(), (*revision, value.as_ref()))?;
            }
            Entry::Delete { key } => {
                kv.remove(key.as_str())?;
            }
        }
    }
    Ok(())
}

/// Commits `Immediate` an empty transaction that records the journal's
/// number: everything committed before is durable, and the journal starts
/// again.
fn checkpoint(db: &Database, journal: &mut Journal) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(backend)?;
    {
        let mut meta = txn.open_table(META).map_err(backend)?;
        meta.insert(JOURNAL_KEY, journal.seq()).map_err(backend)?;
    }
    txn.commit().map_err(backend)?;
    journal.restart();
    Ok(())
}

/// Opens the journal and applies, in one `Immediate` commit, the records
/// the last checkpoint does not cover (the batches acknowledged before a
/// crash since it).
fn replay_journal(db: &Database, journal_path: &Path, path: &Path) -> Result<Journal, OpenError> {
    let journal_error = |e: redb::Error| open_error(path, e);
    let covered = (|| -> Result<u64, redb::Error> {
        let txn = db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get(JOURNAL_KEY)?.map_or(0, |g| g.value()))
    })()
    .map_err(journal_error)?;
    let (mut journal, batches) =
        Journal::open(journal_path, covered).map_err(|source| OpenError::Io {
            path: journal_path.to_owned(),
            source,
        })?;
    let Some(newest) = batches.last().map(|b| b.seq) else {
        return Ok(journal);
    };
    (|| -> Result<(), redb::Error> {
        let txn = db.begin_write()?;
        {
            let mut kv = txn.open_table(KV)?;
            let mut meta = txn.open_table(META)?;
            for batch in &batches {
                put_entries(&mut kv, &batch.entries)?;
                meta.insert(REVISION_KEY, batch.last_revision)?;
            }
            meta.insert(JOURNAL_KEY, newest)?;
        }
        txn.commit()?;
        Ok(())
    })()
    .map_err(journal_error)?;
    journal.restart();
    tracing::info!(path = %path.display(), records = batches.len(), through = newest, "store journal replayed");
    Ok(journal)
}

/// Reads every key's revision, the counter and the leader record.
fn load_index(db: &Database) -> Result<Index, redb::Error> {
    let txn = db.begin_read()?;
    let kv = txn.open_table(KV)?;
    let meta = txn.open_table(META)?;
    let last = meta.get(REVISION_KEY)?.map_or(0, |g| g.value());
    let mut rows = Vec::new();
    for row in kv.iter()? {
        let (k, v) = row?;
        rows.push((k, v));
    }
    Ok(Index::new(
        last,
        rows.iter().map(|(k, v)| {
            let (revision, value) = v.value();
            (k.value(), revision, value)
        }),
    ))
}

/// Runs blocking redb work off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
}

/// Maps a redb failure to the store contract: damaged data is `Corrupt`,
/// everything else (I/O, closed database) is `Unavailable`.
fn backend(e: impl Into<redb::Error>) -> StoreError {
    let e: redb::Error = e.into();
    match e {
        redb::Error::Corrupted(detail) => StoreError::Corrupt(detail),
        e @ (redb::Error::TableTypeMismatch { .. } | redb::Error::TypeDefinitionChanged { .. }) => {
            StoreError::Corrupt(e.to_string())
        }
        e => StoreError::Unavailable(e.to_string()),
    }
}

fn open_error(path: &Path, e: impl Into<redb::Error>) -> OpenError {
    let path = path.to_owned();
    match e.into() {
        redb::Error::DatabaseAlreadyOpen | redb::Error::LockProtocolMismatch => {
            OpenError::Locked { path }
        }
        // redb reports a file that is not a database as invalid data.
        redb::Error::Io(source) if source.kind() == io::ErrorKind::InvalidData => {
            OpenError::Corrupt {
                path,
                detail: source.to_string(),
            }
        }
        redb::Error::Io(source) => OpenError::Io { path, source },
        redb::Error::Corrupted(detail) => OpenError::Corrupt { path, detail },
        e @ (redb::Error::TableTypeMismatch { .. } | redb::Error::TypeDefinitionChanged { .. }) => {
            OpenError::Corrupt {
                path,
                detail: e.to_string(),
            }
        }
        e => OpenError::Other {
            path,
            detail: e.to_string(),
        },
    }
}

fn read_entry(k: &str, revision: u64, value: &[u8]) -> Result<(Key, Versioned), StoreError> {
    let key = Key::new(k).map_err(|e| StoreError::Corrupt(format!("stored key {k:?}: {e}")))?;
    Ok((
        key,
        Versioned {
            value: Bytes::copy_from_slice(value),
            revision: Revision(revision),
        },
    ))
}

#[async_trait]
impl Store for RedbStore {
    async fn get(&self, key: &Key) -> Result<Option<Versioned>, StoreError> {
        let shared = Arc::clone(&self.shared);
        let key = key.clone();
        blocking(move || {
            let txn = shared.begin_read()?;
            let kv = txn.open_table(KV).map_err(backend)?;
            let found = kv.get(key.as_str()).map_err(backend)?;
            Ok(found.map(|g| {
                let (revision, value) = g.value();
                Versioned {
                    value: Bytes::copy_from_slice(value),
                    revision: Revision(revision),
                }
            }))
        })
        .await
    }

    async fn create(&self, key: &Key, value: Bytes) -> Result<Revision, StoreError> {
        self.write(
            Write::Create {
                key: key.clone(),
                value,
            },
            None,
        )
        .await
    }

    async fn update(
        &self,
        key: &Key,
        value: Bytes,
        expected: Revision,
    ) -> Result<Revision, StoreError> {
        self.write(
            Write::Update {
                key: key.clone(),
                value,
                expected,
            },
            None,
        )
        .await
    }

    async fn delete(&self, key: &Key, expected: Revision) -> Result<(), StoreError> {
        self.write(
            Write::Delete {
                key: key.clone(),
                expected,
            },
            None,
        )
        .await
        .map(|_| ())
    }

    async fn write_all(&self, writes: Vec<Write>) -> Vec<Result<Revision, StoreError>> {
        self.write_batch(writes, None).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(Key, Versioned)>, StoreError> {
        let shared = Arc::clone(&self.shared);
        let prefix = prefix.to_owned();
        blocking(move || {
            let txn = shared.begin_read()?;
            let kv = txn.open_table(KV).map_err(backend)?;
            let mut out = Vec::new();
            // Keys sort bytewise, so every key with the prefix comes in one
            // run starting at the prefix itself.
            for entry in kv.range(prefix.as_str()..).map_err(backend)? {
                let (k, v) = entry.map_err(backend)?;
                let k = k.value();
                if !k.starts_with(prefix.as_str()) {
                    break;
                }
                let (revision, value) = v.value();
                out.push(read_entry(k, revision, value)?);
            }
            Ok(out)
        })
        .await
    }

    async fn watch(&self, prefix: &str) -> Result<BoxStream<'static, WatchEvent>, StoreError> {
        let shared = Arc::clone(&self.shared);
        let prefix = prefix.to_owned();
        // Registered on the blocking pool: the lock may be held by a write
        // waiting for its fsync.
        let rx = blocking(move || {
            let (tx, rx) = unbounded();
            let mut watchers = shared.lock_watchers();
            // Watchers of quiet prefixes are never pruned by a write.
            watchers.retain(|w| !w.tx.is_closed());
            watchers.push(Watcher { prefix, tx });
            Ok(rx)
        })
        .await?;
        Ok(rx.boxed())
    }
}

/// A [`RedbStore`] write handle fenced by a leader epoch; see
/// [`RedbStore::fenced`]. Reads and watches are not fenced.
#[derive(Debug, Clone)]
pub struct FencedStore {
    store: RedbStore,
    epoch: Epoch,
}

impl FencedStore {
    /// The writer's epoch.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The unfenced store underneath.
    pub fn inner(&self) -> &RedbStore {
        &self.store
    }
}

#[async_trait]
impl Store for FencedStore {
    async fn get(&self, key: &Key) -> Result<Option<Versioned>, StoreError> {
        self.store.get(key).await
    }

    async fn create(&self, key: &Key, value: Bytes) -> Result<Revision, StoreError> {
        self.store
            .write(
                Write::Create {
                    key: key.clone(),
                    value,
                },
                Some(self.epoch),
            )
            .await
    }

    async fn update(
        &self,
        key: &Key,
        value: Bytes,
        expected: Revision,
    ) -> Result<Revision, StoreError> {
        self.store
            .write(
                Write::Update {
                    key: key.clone(),
                    value,
                    expected,
                },
                Some(self.epoch),
            )
            .await
    }

    async fn delete(&self, key: &Key, expected: Revision) -> Result<(), StoreError> {
        self.store
            .write(
                Write::Delete {
                    key: key.clone(),
                    expected,
                },
                Some(self.epoch),
            )
            .await
            .map(|_| ())
    }

    async fn write_all(&self, writes: Vec<Write>) -> Vec<Result<Revision, StoreError>> {
        self.store.write_batch(writes, Some(self.epoch)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(Key, Versioned)>, StoreError> {
        self.store.list(prefix).await
    }

    async fn watch(&self, prefix: &str) -> Result<BoxStream<'static, WatchEvent>, StoreError> {
        self.store.watch(prefix).await
    }
}
