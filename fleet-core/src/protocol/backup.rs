//! Backups: the whole state of a daemon in one document, for another data
//! dir or another host.
//!
//! `POST /v1/backup` with a [`BackupRequest`] answers a [`Backup`]
//! encrypted with age to the request's recipients: every stored entry
//! (records, the fleet identity, the leader lease, bootstrap token digests)
//! read at one point of the leader's commit order, and the data dir's trust
//! files (the pool CA, the sealing key, the hashed API tokens). `fleetctl
//! restore` decrypts it, checks it with [`Backup::check`], lays the files
//! into an empty data dir and leaves the entries in [`RESTORE_PENDING_FILE`];
//! the daemon started there writes them into its store (redb or a JetStream
//! KV bucket) before it takes the lease, and only into an empty one.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{FleetRecord, Record, decode};
use crate::ids::{Epoch, FleetId, Millis};
use crate::store::Key;
use crate::subjects::Subjects;

/// Where `POST` with a [`BackupRequest`] answers an age-encrypted [`Backup`].
pub const API_BACKUP_PATH: &str = "/v1/backup";

/// The format this build writes and reads.
pub const BACKUP_FORMAT: u32 = 1;

/// The data dir's files a backup carries, by name. The admin token file is
/// not among them: it is the token itself, and the backup holds its digest.
pub const BACKUP_FILES: [&str; 5] = [
    "ca.cert.pem",
    "ca.key.pem",
    "seal.ed25519.key",
    "seal.ed25519.pub",
    "tokens.json",
];

/// The files without which a restored daemon could not serve the nodes
/// and claims of the backup (its agents trust this CA; sealed credentials
/// are signed with this key).
pub const BACKUP_REQUIRED_FILES: [&str; 3] = ["ca.cert.pem", "ca.key.pem", "seal.ed25519.key"];

/// In a restored data dir until the daemon wrote its entries into the store.
pub const RESTORE_PENDING_FILE: &str = "restore.pending.json";

/// In a restored data dir once the daemon wrote the entries: where they
/// came from (a [`BackupOrigin`]).
pub const RESTORED_FILE: &str = "restored.json";

/// What `POST /v1/backup` takes: the age recipients (`age1…`) to encrypt to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct BackupRequest {
    /// At least one X25519 recipient.
    pub recipients: Vec<String>,
}

/// One stored entry, as the store held it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct BackupEntry {
    /// The store key.
    pub key: String,
    /// The stored value (a versioned envelope).
    pub value: serde_json::Value,
}

/// One file of the data dir.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct BackupFile {
    /// Its name (one of [`BACKUP_FILES`]).
    pub name: String,
    /// Its contents (all of them are text).
    pub contents: String,
}

/// The whole state of a daemon (encrypted on the wire and on disk).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Backup {
    /// [`BACKUP_FORMAT`].
    pub format: u32,
    /// The fleet.
    pub fleet_id: FleetId,
    /// Its namespace.
    pub namespace: String,
    /// The epoch of the leader that took it.
    pub epoch: Epoch,
    /// When.
    pub taken_at: Millis,
    /// The daemon's version.
    pub daemon_version: String,
    /// Every stored entry, by key.
    pub entries: Vec<BackupEntry>,
    /// The data dir's trust files (none in [`RESTORE_PENDING_FILE`]).
    #[serde(default)]
    pub files: Vec<BackupFile>,
}

/// Where a restored daemon's state came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct BackupOrigin {
    /// The fleet.
    pub fleet_id: FleetId,
    /// Its namespace.
    pub namespace: String,
    /// The epoch of the leader that took the backup.
    pub epoch: Epoch,
    /// When it was taken.
    pub taken_at: Millis,
    /// By which daemon version.
    pub daemon_version: String,
    /// Records by kind (`claim`, `node`, …).
    pub records: BTreeMap<String, u64>,
    /// When the entries were written into this daemon's store (0 until then).
    #[serde(default)]
    pub restored_at: Millis,
}

/// Why a backup cannot be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// Written by a build with another format.
    #[error("backup format {got}; this build reads format {expected}")]
    Format {
        /// The backup's.
        got: u32,
        /// [`BACKUP_FORMAT`].
        expected: u32,
    },
    /// A file this build does not restore, or one named twice.
    #[error("backup carries an unexpected file {0:?}")]
    UnexpectedFile(String),
    /// A file the restored daemon needs is not there.
    #[error("backup lacks {0}")]
    MissingFile(&'static str),
    /// An entry's key is not a store key, or is there twice.
    #[error("backup entry {key:?}: {error}")]
    Entry {
        /// The key.
        key: String,
        /// What is wrong.
        error: String,
    },
    /// The fleet identity entry is missing or names another fleet.
    #[error("backup's fleet identity: {0}")]
    Identity(String),
}

impl Backup {
    /// Checks everything a restore relies on — format, files, that every
    /// entry's key is a key and every record decodes, the fleet identity —
    /// and says where the backup came from.
    pub fn check(&self) -> Result<BackupOrigin, BackupError> {
        if self.format != BACKUP_FORMAT {
            return Err(BackupError::Format {
                got: self.format,
                expected: BACKUP_FORMAT,
            });
        }
        let mut names = BTreeSet::new();
        for f in &self.files {
            if !BACKUP_FILES.contains(&f.name.as_str()) || !names.insert(f.name.as_str()) {
                return Err(BackupError::UnexpectedFile(f.name.clone()));
            }
        }
        // A pending file has none: its files were laid out already.
        if !self.files.is_empty()
            && let Some(missing) = BACKUP_REQUIRED_FILES.iter().find(|n| !names.contains(*n))
        {
            return Err(BackupError::MissingFile(missing));
        }
        let mut keys = BTreeSet::new();
        let mut records = BTreeMap::<String, u64>::new();
        let mut identity = None;
        for e in &self.entries {
            let bad = |error: String| BackupError::Entry {
                key: e.key.clone(),
                error,
            };
            let key = Key::new(e.key.as_str()).map_err(|err| bad(err.to_string()))?;
            if !keys.insert(e.key.as_str()) {
                return Err(bad("listed twice".to_owned()));
            }
            let bytes = serde_json::to_vec(&e.value).map_err(|err| bad(err.to_string()))?;
            if key == Subjects::fleet_key() {
                let r: FleetRecord = decode(&bytes).map_err(|err| bad(err.to_string()))?;
                identity = Some(r.fleet_id);
            } else if Subjects::RECORD_PREFIXES.iter().any(|p| key.has_prefix(p)) {
                let r: Record = decode(&bytes).map_err(|err| bad(err.to_string()))?;
                *records.entry(r.kind().to_owned()).or_default() += 1;
            }
        }
        match identity {
            None => Err(BackupError::Identity(format!(
                "no {} entry",
                Subjects::fleet_key()
            ))),
            Some(id) if id != self.fleet_id => Err(BackupError::Identity(format!(
                "the entry names fleet {id}, the backup {}",
                self.fleet_id
            ))),
            Some(_) => Ok(BackupOrigin {
                fleet_id: self.fleet_id.clone(),
                namespace: self.namespace.clone(),
                epoch: self.epoch,
                taken_at: self.taken_at,
                daemon_version: self.daemon_version.clone(),
                records,
                restored_at: 0,
            }),
        }
    }

    /// The entries, in the order a restore writes them: the fleet identity
    /// last, so a store holding it holds the whole backup.
    pub fn entries_in_restore_order(&self) -> impl Iterator<Item = &BackupEntry> {
        let fleet = Subjects::fleet_key();
        let (identity, rest): (Vec<&BackupEntry>, Vec<&BackupEntry>) =
            self.entries.iter().partition(|e| e.key == fleet.as_str());
        rest.into_iter().chain(identity)
    }
}
