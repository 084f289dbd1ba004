//! Group commit: the driver's store writes, committed together.
//!
//! One task writes for the driver. It takes every write queued since its
//! last commit and hands them to [`Store::write_all`] as one batch — one
//! transaction and one `fdatasync` on redb — then answers each with
//! [`Input::Persisted`], in order. While a commit waits for the disk, the
//! writes of the next rounds queue up and go out together in the next
//! one, so a burst of claims costs a few syncs, not one per record. A
//! write is still answered only once it is durable (write-ahead holds: the
//! controller acts on a record only after its answer).
//!
//! One writer keeps the driver's writes in the order it issued them;
//! the controller has at most one write per key in flight, so no write
//! waits for another of its own key inside a batch.

use std::sync::Arc;

use bytes::Bytes;
use fleet_core::ids::{Epoch, NodeId};
use fleet_core::protocol::{Record, decode, encode};
use fleet_core::store::{Key, Revision, Store, StoreError, Versioned, Write};
use fleet_core::subjects::Subjects;
use tokio::sync::{mpsc, oneshot};

use crate::driver::{BootstrapTokens, Input};

/// A write the controller asked for ([`fleet_core::controller::Command::Persist`]).
pub(crate) struct Persist {
    pub(crate) key: Key,
    pub(crate) value: Option<Record>,
    pub(crate) expected: Option<Revision>,
}

/// Every stored entry at one point of the writer's order.
pub(crate) type Snapshot = Result<Vec<(Key, Versioned)>, StoreError>;

/// What the driver hands the writer.
pub(crate) enum ToWriter {
    /// Writes to commit, in order.
    Writes(Vec<Persist>),
    /// Read every stored entry once all writes before this are committed,
    /// and before any after it: the writer is the only writer of records,
    /// so the read is a state the control loop was in.
    Snapshot(oneshot::Sender<Snapshot>),
}

/// Starts the writer; batches sent to the returned queue are committed in
/// order and answered on `tx`. It stops when the queue or `tx` closes.
pub(crate) fn spawn_writer(
    store: Arc<dyn Store>,
    tokens: Option<Arc<dyn BootstrapTokens>>,
    epoch: Epoch,
    tx: mpsc::UnboundedSender<Input>,
) -> mpsc::UnboundedSender<ToWriter> {
    let (queue, mut rx) = mpsc::unbounded_channel::<ToWriter>();
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut batch = Vec::new();
            let mut snapshot = None;
            let mut next = Some(first);
            // Everything queued joins one commit, up to a snapshot request.
            while let Some(msg) = next.take() {
                match msg {
                    ToWriter::Writes(more) => batch.extend(more),
                    ToWriter::Snapshot(reply) => {
                        snapshot = Some(reply);
                        break;
                    }
                }
                next = rx.try_recv().ok();
            }
            if !batch.is_empty() {
                for (key, result) in commit(&*store, batch, epoch, tokens.as_deref()).await {
                    if tx.send(Input::Persisted { key, result }).is_err() {
                        return;
                    }
                }
            }
            if let Some(reply) = snapshot {
                let _ = reply.send(snapshot_of(&*store).await);
            }
        }
    });
    queue
}

/// Every entry of `store` but the followers' notes (they are about the
/// processes running now, not the fleet).
async fn snapshot_of(store: &dyn Store) -> Snapshot {
    let mut entries = store.list("").await?;
    entries.retain(|(k, _)| !k.has_prefix(Subjects::FOLLOWERS_PREFIX));
    Ok(entries)
}

/// One write prepared for the store: the encoded value and what to do.
struct Prepared {
    key: Key,
    bytes: Option<Bytes>,
    expected: Option<Revision>,
    /// Set when the record could not be encoded, or nothing is to be done.
    settled: Option<Result<Revision, StoreError>>,
}

/// Commits `batch` as one [`Store::write_all`] and settles each result.
async fn commit(
    store: &dyn Store,
    batch: Vec<Persist>,
    epoch: Epoch,
    tokens: Option<&dyn BootstrapTokens>,
) -> Vec<(Key, Result<Revision, StoreError>)> {
    let mut prepared: Vec<Prepared> = batch.into_iter().map(prepare).collect();
    let writes: Vec<Write> = prepared
        .iter()
        .filter(|p| p.settled.is_none())
        .filter_map(|p| to_write(&p.key, p.bytes.clone(), p.expected))
        .collect();
    let mut results = store.write_all(writes).await.into_iter();
    let mut answers = Vec::with_capacity(prepared.len());
    for p in &mut prepared {
        let result = match p.settled.take() {
            Some(done) => done,
            None => {
                let first = results.next().unwrap_or_else(|| {
                    Err(StoreError::Unavailable(
                        "the store answered fewer writes than it was given".to_owned(),
                    ))
                });
                settle(store, p, epoch, first).await
            }
        };
        if result.is_ok()
            && p.bytes.is_none()
            && let Some(tokens) = tokens
            && let Some(node) = deleted_node(&p.key)
            && let Err(e) = tokens.forget(&node).await
        {
            // A node record deleted: the node is gone, so are its unused
            // bootstrap tokens.
            tracing::warn!(%node, error = %e, "bootstrap tokens of a deleted node kept; dropped at the next start");
        }
        answers.push((p.key.clone(), result));
    }
    answers
}

fn prepare(p: Persist) -> Prepared {
    let bytes = match &p.value {
        Some(record) => match encode(record) {
            Ok(b) => Some(Bytes::from(b)),
            Err(e) => {
                return Prepared {
                    key: p.key,
                    bytes: None,
                    expected: p.expected,
                    settled: Some(Err(StoreError::Corrupt(e.to_string()))),
                };
            }
        },
        None => None,
    };
    // A delete of a record never written: nothing to do.
    let settled = (bytes.is_none() && p.expected.is_none()).then_some(Ok(Revision(0)));
    Prepared {
        key: p.key,
        bytes,
        expected: p.expected,
        settled,
    }
}

/// The node whose record `key` is, if it is a node record.
fn deleted_node(key: &Key) -> Option<NodeId> {
    key.as_str()
        .strip_prefix(Subjects::NODES_PREFIX)
        .and_then(|rest| rest.rsplit('.').next())
        .and_then(|n| NodeId::new(n).ok())
}

/// Settles one write's first result.
///
/// A write that failed as unavailable (a timeout) may have landed anyway;
/// the controller retries it on the revision it knew, and the retry meets
/// the landed write: `Conflict` or `AlreadyExists`, or `NotFound` for a
/// delete. Taken at face value that reads as another leader's write and
/// stops the control loop for good. So a conflicting record is read back:
/// one carrying this leader's epoch was written by this leader (another
/// leader has another epoch, and the store fences stale ones), and the
/// write is applied on top of it; when the read fails as unavailable the
/// write fails so too (and is retried); a delete that finds nothing is done.
async fn settle(
    store: &dyn Store,
    p: &Prepared,
    epoch: Epoch,
    first: Result<Revision, StoreError>,
) -> Result<Revision, StoreError> {
    match first {
        Err(StoreError::Conflict { .. } | StoreError::AlreadyExists { .. }) => {
            match store.get(&p.key).await {
                Ok(Some(current)) if written_in(&current.value, epoch) => {
                    tracing::info!(key = %p.key, "a timed-out write of this leader had landed; writing on top of it");
                    match to_write(&p.key, p.bytes.clone(), Some(current.revision)) {
                        Some(write) => write.apply(store).await,
                        None => first,
                    }
                }
                // Whose record it is cannot be told yet: try again later.
                Err(e @ StoreError::Unavailable(_)) => Err(e),
                _ => first,
            }
        }
        Err(StoreError::NotFound { .. }) if p.bytes.is_none() => {
            Ok(p.expected.unwrap_or(Revision(0)))
        }
        other => other,
    }
}

/// Whether a stored value is a record written in `epoch`.
fn written_in(bytes: &[u8], epoch: Epoch) -> bool {
    decode::<Record>(bytes).is_ok_and(|r| r.epoch() == epoch)
}

fn to_write(key: &Key, bytes: Option<Bytes>, expected: Option<Revision>) -> Option<Write> {
    let key = key.clone();
    match (bytes, expected) {
        (Some(value), None) => Some(Write::Create { key, value }),
        (Some(value), Some(expected)) => Some(Write::Update {
            key,
            value,
            expected,
        }),
        (None, Some(expected)) => Some(Write::Delete { key, expected }),
        (None, None) => None,
    }
}
