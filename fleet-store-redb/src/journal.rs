//! The write-ahead journal that makes a commit durable with one
//! `fdatasync` of one contiguous write.
//!
//! A redb commit with [`redb::Durability::Immediate`] writes every page the
//! transaction touched (the table's leaf, the table tree, the freed-page
//! tree, the header: seven scattered 4 KiB writes for one small record,
//! measured) and syncs them: 2–2.5 × a single `fdatasync` on this
//! project's disks. So the store commits each batch to redb with
//! [`redb::Durability::None`] (visible at once, durable at the next
//! checkpoint) and appends the batch's effects to this journal, one record,
//! synced before the batch is answered. The record is written, and its
//! write-back started, before the redb commit, so the disk works while
//! redb commits; a crash between the two replays a batch nobody was
//! answered, as a crash between a commit and its answer always could, and
//! a commit that fails takes its record back ([`Journal::discard`]). Every [`CHECKPOINT_EVERY`] batches,
//! or when a record would not fit, a batch is committed `Immediate` instead:
//! that commit makes every earlier one durable, records the journal's
//! sequence number it covers (`meta` `"journal"`), and the journal starts
//! again from its first byte.
//!
//! On open, the records after the checkpoint's sequence number are applied
//! again, in order, in one `Immediate` commit.
//!
//! The file is `<data dir>/fleet.journal`, [`JOURNAL_BYTES`] long, written
//! with zeros when created so that later writes overwrite allocated blocks
//! (an append that grows a file or fills a hole also syncs the file's
//! metadata). A record:
//!
//! ```text
//! magic u32 | payload length u32 | seq u64 | crc32(seq ‖ payload) u32 | payload
//! payload: last revision u64 | count u32 | entries
//! entry:   1 u8 | key length u32 | key | revision u64 | value length u32 | value   (put)
//!          0 u8 | key length u32 | key                                            (delete)
//! ```
//!
//! Integers are little-endian. Replay takes records while each is whole
//! (its checksum holds) and carries the next sequence number; a torn write,
//! the zeros of a fresh file or a record of an earlier pass (a lower
//! number) ends it.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use bytes::Bytes;

/// The journal's size in bytes.
pub(crate) const JOURNAL_BYTES: u64 = 4 << 20;

/// Batches journaled between two `Immediate` commits. Each costs redb pages
/// it cannot reuse until the checkpoint (about six 4 KiB pages per small
/// batch), and one in this many batches pays a full redb commit.
pub(crate) const CHECKPOINT_EVERY: u32 = 256;

const MAGIC: u32 = 0x4E52_4A46; // "FJRN" little-endian
const HEADER: usize = 4 + 4 + 8 + 4;

/// One write's effect, as committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    /// The key now holds `value` at `revision`.
    Put {
        key: String,
        revision: u64,
        value: Bytes,
    },
    /// The key is gone.
    Delete { key: String },
}

/// One batch's effects and the store's revision counter after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Batch {
    pub(crate) seq: u64,
    pub(crate) last_revision: u64,
    pub(crate) entries: Vec<Entry>,
}

/// The open journal: where the next record goes and its number.
pub(crate) struct Journal {
    file: File,
    /// The byte offset of the next record.
    pos: u64,
    /// The number of the last record written or covered by a checkpoint.
    seq: u64,
    /// Records written since the last checkpoint.
    since_checkpoint: u32,
}

/// A record written and not yet synced.
#[derive(Debug)]
pub(crate) struct Unsynced {
    seq: u64,
    end: u64,
}

/// Why a record was not journaled: the caller commits `Immediate` instead.
#[derive(Debug)]
pub(crate) enum AppendError {
    /// The record does not fit in what is left of the file.
    Full,
    /// Writing or syncing failed.
    Io(io::Error),
}

impl Journal {
    /// Opens (or creates, zero-filled) the journal at `path`, and reads the
    /// records after `checkpoint`. The journal continues from the last of
    /// them; the caller applies them and checkpoints ([`Journal::restart`]).
    pub(crate) fn open(path: &Path, checkpoint: u64) -> io::Result<(Journal, Vec<Batch>)> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let len = file.metadata()?.len();
        if len < JOURNAL_BYTES {
            // Zeros, written: overwriting them later allocates nothing.
            let zeros = vec![0u8; usize::try_from(JOURNAL_BYTES - len).unwrap_or(0)];
            file.write_all_at(&zeros, len)?;
            file.sync_all()?;
            if let Some(dir) = path.parent() {
                File::open(dir)?.sync_all()?;
            }
        }
        let mut bytes = Vec::new();
        io::Read::read_to_end(&mut &file, &mut bytes)?;
        let batches = replay(&bytes, checkpoint);
        let seq = batches.last().map_or(checkpoint, |b| b.seq);
        Ok((
            Journal {
                file,
                pos: 0,
                seq,
                since_checkpoint: 0,
            },
            batches,
        ))
    }

    /// The number the next checkpoint records: every batch up to it is in
    /// redb (journaled or not).
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    /// Records written since the last checkpoint.
    pub(crate) fn unchecked(&self) -> u32 {
        self.since_checkpoint
    }

    /// Whether the next batch should be committed `Immediate` (a
    /// checkpoint) rather than journaled.
    pub(crate) fn checkpoint_due(&self) -> bool {
        self.since_checkpoint >= CHECKPOINT_EVERY
    }

    /// Writes `entries` as the next record, not yet synced, and starts its
    /// write-back to the disk: the caller commits the batch to redb while
    /// the disk works, then [`Journal::sync`]s (measured on this project's
    /// disk: 101 µs for a record, 36 µs of other work and the sync, against
    /// 128 µs when the write-back waits for the sync).
    pub(crate) fn write(
        &mut self,
        last_revision: u64,
        entries: &[Entry],
    ) -> Result<Unsynced, AppendError> {
        let seq = self.seq + 1;
        let record = encode(seq, last_revision, entries);
        let end = self.pos + record.len() as u64;
        if end > JOURNAL_BYTES {
            return Err(AppendError::Full);
        }
        self.file
            .write_all_at(&record, self.pos)
            .map_err(AppendError::Io)?;
        // Only a hint: a refusal leaves the write-back to the sync.
        let (Ok(offset), Ok(len)) = (
            nix::libc::off_t::try_from(self.pos),
            nix::libc::off_t::try_from(record.len()),
        ) else {
            return Ok(Unsynced { seq, end });
        };
        let _ = nix::fcntl::posix_fadvise(
            &self.file,
            offset,
            len,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        );
        Ok(Unsynced { seq, end })
    }

    /// Makes the record [`Journal::write`] wrote durable: the batch is.
    pub(crate) fn sync(&mut self, record: Unsynced) -> Result<(), AppendError> {
        self.file.sync_data().map_err(AppendError::Io)?;
        self.pos = record.end;
        self.seq = record.seq;
        self.since_checkpoint += 1;
        Ok(())
    }

    /// Takes back a record [`Journal::write`] wrote for a batch that was
    /// not committed: its first bytes are zeroed, so no replay takes it
    /// (nor, as it ends the replay, anything after it).
    pub(crate) fn discard(&mut self, _record: Unsynced) -> io::Result<()> {
        self.file.write_all_at(&[0u8; 4], self.pos)?;
        self.file.sync_data()
    }

    /// [`Journal::write`] and [`Journal::sync`] in one.
    #[cfg(test)]
    pub(crate) fn append(
        &mut self,
        last_revision: u64,
        entries: &[Entry],
    ) -> Result<(), AppendError> {
        let record = self.write(last_revision, entries)?;
        self.sync(record)
    }

    /// A checkpoint recording [`Journal::seq`] is durable: what the journal
    /// holds is in redb, and the next record goes to the file's start.
    pub(crate) fn restart(&mut self) {
        self.pos = 0;
        self.since_checkpoint = 0;
    }
}

fn encode(seq: u64, last_revision: u64, entries: &[Entry]) -> Vec<u8> {
    // One buffer: the header's length and checksum are filled in once the
    // payload behind them is written (a batch of a burst runs to MBs).
    let mut record = Vec::with_capacity(
        HEADER
            + 12
            + entries
                .iter()
                .map(|e| match e {
                    Entry::Put { key, value, .. } => 17 + key.len() + value.len(),
                    Entry::Delete { key } => 5 + key.len(),
                })
                .sum::<usize>(),
    );
    record.extend_from_slice(&MAGIC.to_le_bytes());
    record.extend_from_slice(&[0; 4]);
    record.extend_from_slice(&seq.to_le_bytes());
    record.extend_from_slice(&[0; 4]);
    record.extend_from_slice(&last_revision.to_le_bytes());
    record.extend_from_slice(&len32(entries.len()).to_le_bytes());
    for entry in entries {
        match entry {
            Entry::Put {
                key,
                revision,
                value,
            } => {
                record.push(1);
                record.extend_from_slice(&len32(key.len()).to_le_bytes());
                record.extend_from_slice(key.as_bytes());
                record.extend_from_slice(&revision.to_le_bytes());
                record.extend_from_slice(&len32(value.len()).to_le_bytes());
                record.extend_from_slice(value);
            }
            Entry::Delete { key } => {
                record.push(0);
                record.extend_from_slice(&len32(key.len()).to_le_bytes());
                record.extend_from_slice(key.as_bytes());
            }
        }
    }
    let payload_len = len32(record.len() - HEADER).to_le_bytes();
    record[4..8].copy_from_slice(&payload_len);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&seq.to_le_bytes());
    crc.update(&record[HEADER..]);
    record[16..20].copy_from_slice(&crc.finalize().to_le_bytes());
    record
}

/// A length as the record stores it. Nothing the store accepts comes near
/// 4 GiB (values are capped far lower, and a record that large would not
/// fit the journal and is committed `Immediate` instead).
fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The whole records of `bytes` numbered `checkpoint + 1`, `+ 2`, … in a
/// row from its start.
fn replay(bytes: &[u8], checkpoint: u64) -> Vec<Batch> {
    let mut batches = Vec::new();
    let mut at = 0usize;
    let mut want = checkpoint + 1;
    while let Some((batch, next)) = record_at(bytes, at, want) {
        batches.push(batch);
        at = next;
        want += 1;
    }
    batches
}

/// The record at `at` if it is whole and numbered `want`, and where the
/// next one starts.
fn record_at(bytes: &[u8], at: usize, want: u64) -> Option<(Batch, usize)> {
    let mut r = Reader {
        bytes: bytes.get(at..)?,
    };
    if r.u32()? != MAGIC {
        return None;
    }
    let len = usize::try_from(r.u32()?).ok()?;
    let seq = r.u64()?;
    let crc = r.u32()?;
    let payload = r.take(len)?;
    if seq != want {
        return None;
    }
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&seq.to_le_bytes());
    hasher.update(payload);
    if hasher.finalize() != crc {
        return None;
    }
    let mut p = Reader { bytes: payload };
    let last_revision = p.u64()?;
    let count = p.u32()?;
    let mut entries = Vec::new();
    for _ in 0..count {
        let tag = p.take(1)?[0];
        let key_len = usize::try_from(p.u32()?).ok()?;
        let key = String::from_utf8(p.take(key_len)?.to_vec()).ok()?;
        entries.push(match tag {
            1 => {
                let revision = p.u64()?;
                let value_len = usize::try_from(p.u32()?).ok()?;
                Entry::Put {
                    key,
                    revision,
                    value: Bytes::copy_from_slice(p.take(value_len)?),
                }
            }
            0 => Entry::Delete { key },
            _ => return None,
        });
    }
    Some((
        Batch {
            seq,
            last_revision,
            entries,
        },
        at + HEADER + len,
    ))
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, revision: u64, value: &[u8]) -> Entry {
        Entry::Put {
            key: key.to_owned(),
            revision,
            value: Bytes::copy_from_slice(value),
        }
    }

    fn open(path: &Path, checkpoint: u64) -> (Journal, Vec<Batch>) {
        Journal::open(path, checkpoint).unwrap_or_else(|e| panic!("{e}"))
    }

    fn append(j: &mut Journal, last_revision: u64, entries: &[Entry]) {
        j.append(last_revision, entries)
            .unwrap_or_else(|e| panic!("{e:?}"));
    }

    fn del(key: &str) -> Entry {
        Entry::Delete {
            key: key.to_owned(),
        }
    }

    fn batch(seq: u64, last_revision: u64, entries: Vec<Entry>) -> Batch {
        Batch {
            seq,
            last_revision,
            entries,
        }
    }

    #[test]
    fn records_read_back_in_order_and_stop_at_the_zeros() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("j");
        let (mut j, found) = open(&path, 7);
        assert!(found.is_empty());
        assert_eq!(
            std::fs::metadata(&path).map(|m| m.len()).ok(),
            Some(JOURNAL_BYTES)
        );
        let first = vec![put("claims.a", 3, b"A"), del("claims.b")];
        let second = vec![put("nodes.n", 4, &[0u8; 700])];
        append(&mut j, 3, &first);
        append(&mut j, 4, &second);
        drop(j);
        let (j, found) = open(&path, 7);
        assert_eq!(j.seq(), 9);
        assert_eq!(found, vec![batch(8, 3, first), batch(9, 4, second)]);
        // A checkpoint covers every record written (it records the last
        // number): after it, nothing is replayed.
        let (j, found) = open(&path, 9);
        assert!(found.is_empty());
        assert_eq!(j.seq(), 9);
    }

    #[test]
    fn a_torn_record_ends_the_replay() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("j");
        let (mut j, _) = open(&path, 0);
        append(&mut j, 1, &[put("a", 1, b"one")]);
        let second_at = j.pos;
        append(&mut j, 2, &[put("b", 2, b"two")]);
        append(&mut j, 3, &[put("c", 3, b"three")]);
        drop(j);
        // One flipped byte inside the second record's payload.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("{e}"));
        file.write_all_at(b"X", second_at + HEADER as u64 + 20)
            .unwrap_or_else(|e| panic!("{e}"));
        let (j, found) = open(&path, 0);
        assert_eq!(found.iter().map(|b| b.seq).collect::<Vec<_>>(), vec![1]);
        assert_eq!(j.seq(), 1);
    }

    #[test]
    fn records_of_an_earlier_pass_are_not_replayed() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("j");
        let (mut j, _) = open(&path, 0);
        for i in 1..=3 {
            append(
                &mut j,
                i,
                &[put("k", i, b"an older pass, longer than the next")],
            );
        }
        // A checkpoint at 3; the next pass writes 4 over the start.
        j.restart();
        append(&mut j, 4, &[del("k")]);
        drop(j);
        let (j, found) = open(&path, 3);
        assert_eq!(found, vec![batch(4, 4, vec![del("k")])]);
        assert_eq!(j.seq(), 4);
    }

    #[test]
    fn a_record_larger_than_what_is_left_is_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (mut j, _) = open(&dir.path().join("j"), 0);
        let huge = vec![0u8; usize::try_from(JOURNAL_BYTES).unwrap_or(usize::MAX)];
        assert!(matches!(
            j.append(1, &[put("k", 1, &huge)]),
            Err(AppendError::Full)
        ));
        assert_eq!(j.seq(), 0, "a refused record takes no number");
        append(&mut j, 1, &[put("k", 1, b"small")]);
        assert_eq!(j.seq(), 1);
    }

    #[test]
    fn a_discarded_record_is_not_replayed() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("j");
        let (mut j, _) = open(&path, 0);
        append(&mut j, 1, &[put("a", 1, b"kept")]);
        let record = j
            .write(2, &[put("b", 2, b"never committed")])
            .unwrap_or_else(|e| panic!("{e:?}"));
        j.discard(record).unwrap_or_else(|e| panic!("{e}"));
        // The next record takes the discarded one's number and place.
        append(&mut j, 2, &[put("c", 2, b"committed")]);
        drop(j);
        let (_, found) = open(&path, 0);
        assert_eq!(
            found,
            vec![
                batch(1, 1, vec![put("a", 1, b"kept")]),
                batch(2, 2, vec![put("c", 2, b"committed")]),
            ]
        );
        let mut j = open(&path, 2).0;
        j.restart();
        let record = j.write(3, &[del("c")]).unwrap_or_else(|e| panic!("{e:?}"));
        j.discard(record).unwrap_or_else(|e| panic!("{e}"));
        drop(j);
        assert!(open(&path, 2).1.is_empty());
    }

    #[test]
    fn garbage_never_panics() {
        for len in 0..64 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 % 251) as u8).collect();
            assert!(replay(&bytes, 0).is_empty());
        }
        let mut bytes = encode(1, 1, &[put("k", 1, b"v")]);
        bytes.truncate(bytes.len() - 1);
        assert!(replay(&bytes, 0).is_empty());
    }
}
