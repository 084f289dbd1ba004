//! What a batch of writes is checked against: each stored key's revision,
//! the last revision issued and the leader's epoch, kept in memory.
//!
//! Checking a batch in a redb write transaction (open the tables, read the
//! leader record and decode it, read the counter, read each key) took
//! about 20 µs of a small batch's ~170 µs commit, all of it before the
//! journal record could be written and the disk start on it (measured,
//! BENCHMARKS.md). Checked here, the batch is decided in a few
//! microseconds and its record goes to the disk first; redb's transaction
//! then runs while the disk works.
//!
//! The index is exact because this process is redb's only writer (redb
//! locks the file) and every write goes through one lock: a batch's changes
//! are made as it is checked and taken back ([`Index::undo`]) if its
//! commit fails, so the index always equals what redb committed.

use std::collections::HashMap;

use fleet_core::ids::Epoch;
use fleet_core::protocol::{LeaderRecord, decode};
use fleet_core::store::{StoreError, Write};
use fleet_core::subjects::Subjects;

/// The leader record's epoch, as the fence reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Leader {
    /// No leader was ever elected: nothing to fence.
    None,
    /// The stored record's epoch.
    Epoch(Epoch),
    /// The stored record does not decode: fenced writes are refused.
    Corrupt(String),
}

/// Each stored key's revision, the last revision issued and the leader.
#[derive(Debug)]
pub(crate) struct Index {
    revisions: HashMap<String, u64>,
    last: u64,
    leader_key: String,
    leader: Leader,
}

/// What a batch changed in the index, to take it back if its commit fails.
#[derive(Debug)]
pub(crate) struct Undo {
    revisions: Vec<(String, Option<u64>)>,
    last: u64,
    leader: Leader,
}

/// A write the index accepted: the revision it got (for a delete, the
/// deleted one) and the one it is written at.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Accepted {
    pub(crate) answer: u64,
    pub(crate) revision: u64,
}

impl Index {
    /// An index of `entries` (key, revision, value), with `last` the last
    /// revision issued.
    pub(crate) fn new<'a>(
        last: u64,
        entries: impl IntoIterator<Item = (&'a str, u64, &'a [u8])>,
    ) -> Index {
        let leader_key = Subjects::leader_key().as_str().to_owned();
        let mut index = Index {
            revisions: HashMap::new(),
            last,
            leader: Leader::None,
            leader_key,
        };
        for (key, revision, value) in entries {
            if key == index.leader_key {
                index.leader = leader_of(value);
            }
            index.revisions.insert(key.to_owned(), revision);
        }
        index
    }

    /// The last revision issued.
    pub(crate) fn last(&self) -> u64 {
        self.last
    }

    /// Refuses a write of `writer` if the stored leader's epoch is newer.
    pub(crate) fn check_fence(&self, writer: Epoch) -> Result<(), StoreError> {
        match &self.leader {
            Leader::None => Ok(()),
            Leader::Epoch(current) if *current > writer => Err(StoreError::Fenced {
                writer: writer.0,
                current: current.0,
            }),
            Leader::Epoch(_) => Ok(()),
            Leader::Corrupt(detail) => Err(StoreError::Corrupt(format!(
                "leader record {}: {detail}",
                self.leader_key
            ))),
        }
    }

    /// Starts a batch.
    pub(crate) fn begin(&self) -> Undo {
        Undo {
            revisions: Vec::new(),
            last: self.last,
            leader: self.leader.clone(),
        }
    }

    /// Checks `write` against the keys as the batch has left them so far
    /// and, if it holds, takes it into the index at the next revision.
    pub(crate) fn accept(
        &mut self,
        write: &Write,
        undo: &mut Undo,
    ) -> Result<Accepted, StoreError> {
        let key = write.key();
        let current = self.revisions.get(key.as_str()).copied();
        match (write, current) {
            (Write::Create { .. }, Some(current)) => {
                return Err(StoreError::AlreadyExists {
                    key: key.clone(),
                    current: fleet_core::store::Revision(current),
                });
            }
            (Write::Update { .. } | Write::Delete { .. }, None) => {
                return Err(StoreError::NotFound { key: key.clone() });
            }
            (Write::Update { expected, .. } | Write::Delete { expected, .. }, Some(current))
                if expected.0 != current =>
            {
                return Err(StoreError::Conflict {
                    key: key.clone(),
                    expected: *expected,
                    current: fleet_core::store::Revision(current),
                });
            }
            _ => {}
        }
        let revision = self
            .last
            .checked_add(1)
            .ok_or_else(|| StoreError::Corrupt("revision counter overflow".to_owned()))?;
        self.last = revision;
        undo.revisions.push((key.as_str().to_owned(), current));
        match write {
            Write::Create { value, .. } | Write::Update { value, .. } => {
                if key.as_str() == self.leader_key {
                    self.leader = leader_of(value);
                }
                match self.revisions.get_mut(key.as_str()) {
                    Some(stored) => *stored = revision,
                    None => {
                        self.revisions.insert(key.as_str().to_owned(), revision);
                    }
                }
                Ok(Accepted {
                    answer: revision,
                    revision,
                })
            }
            Write::Delete { expected, .. } => {
                if key.as_str() == self.leader_key {
                    self.leader = Leader::None;
                }
                self.revisions.remove(key.as_str());
                Ok(Accepted {
                    answer: expected.0,
                    revision,
                })
            }
        }
    }

    /// Takes back a batch whose commit failed.
    pub(crate) fn undo(&mut self, undo: Undo) {
        // Newest first: a key the batch wrote twice gets its first value back.
        for (key, before) in undo.revisions.into_iter().rev() {
            match before {
                Some(revision) => self.revisions.insert(key, revision),
                None => self.revisions.remove(&key),
            };
        }
        self.last = undo.last;
        self.leader = undo.leader;
    }
}

fn leader_of(value: &[u8]) -> Leader {
    match decode::<LeaderRecord>(value) {
        Ok(record) => Leader::Epoch(record.epoch),
        Err(e) => Leader::Corrupt(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use fleet_core::store::{Key, Revision};

    use super::*;

    fn key(s: &str) -> Key {
        Key::new(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn create(k: &str) -> Write {
        Write::Create {
            key: key(k),
            value: Bytes::from_static(b"v"),
        }
    }

    #[test]
    fn a_batch_sees_its_own_earlier_writes_and_undo_restores_the_index() {
        let mut index = Index::new(7, [("a", 3, b"x".as_slice())]);
        let mut undo = index.begin();
        let b = index.accept(&create("b"), &mut undo).map(|a| a.revision);
        assert_eq!(b.ok(), Some(8));
        let again = index.accept(&create("b"), &mut undo);
        assert!(
            matches!(again, Err(StoreError::AlreadyExists { .. })),
            "{again:?}"
        );
        let update = Write::Update {
            key: key("a"),
            value: Bytes::from_static(b"y"),
            expected: Revision(3),
        };
        assert_eq!(
            index.accept(&update, &mut undo).map(|a| a.revision).ok(),
            Some(9)
        );
        let delete = Write::Delete {
            key: key("a"),
            expected: Revision(9),
        };
        let deleted = index.accept(&delete, &mut undo).ok();
        assert_eq!(deleted.map(|a| (a.answer, a.revision)), Some((9, 10)));
        assert_eq!(index.last(), 10);

        index.undo(undo);
        assert_eq!(index.last(), 7);
        assert_eq!(index.revisions.get("a"), Some(&3));
        assert_eq!(index.revisions.get("b"), None);
    }

    #[test]
    fn the_fence_follows_the_leader_record() {
        let lk = Subjects::leader_key();
        let record = |epoch| {
            let r = LeaderRecord {
                holder: "d".to_owned(),
                epoch: Epoch(epoch),
                expires_at: 0,
            };
            Bytes::from(fleet_core::protocol::encode(&r).unwrap_or_else(|e| panic!("{e}")))
        };
        let mut index = Index::new(0, []);
        assert!(index.check_fence(Epoch(1)).is_ok());
        let mut undo = index.begin();
        let put = Write::Create {
            key: lk.clone(),
            value: record(2),
        };
        assert!(index.accept(&put, &mut undo).is_ok());
        assert!(matches!(
            index.check_fence(Epoch(1)),
            Err(StoreError::Fenced {
                writer: 1,
                current: 2
            })
        ));
        assert!(index.check_fence(Epoch(2)).is_ok());
        index.undo(undo);
        assert!(
            index.check_fence(Epoch(1)).is_ok(),
            "the undone leader still fences"
        );

        let garbage = Index::new(0, [(lk.as_str(), 1, b"{not json".as_slice())]);
        assert!(matches!(
            garbage.check_fence(Epoch(9)),
            Err(StoreError::Corrupt(_))
        ));
    }
}
