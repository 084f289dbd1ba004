//! Backups out of a running daemon, and a restored backup into its store.
//!
//! [`take`] reads every stored entry at one point of the leader's commit
//! order ([`Fleet::snapshot`]) and the data dir's trust files, and encrypts
//! the [`Backup`] with age to the operator's recipients in this process:
//! the pool CA key never crosses the API in clear text.
//!
//! [`import_pending`] is the other half: `fleetctl restore` left the
//! entries in [`RESTORE_PENDING_FILE`]; before the daemon takes the lease
//! it writes them into its store — redb or a JetStream KV bucket alike —
//! and only into one that holds no fleet yet.

use std::io::Write as _;
use std::path::Path;

use bytes::Bytes;
use fleet_core::protocol::{
    BACKUP_FILES, BACKUP_FORMAT, Backup, BackupEntry, BackupFile, BackupOrigin,
    RESTORE_PENDING_FILE, RESTORED_FILE,
};
use fleet_core::store::{Key, Store, StoreError};
use fleet_core::subjects::Subjects;
use fleet_runtime::Fleet;
use fleet_runtime::tokens::write_private;

use crate::auth::TOKENS_FILE;

/// Why a backup could not be taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupFailure {
    /// The request named no recipient, or one that is not `age1…`.
    #[error("{0}")]
    Recipients(String),
    /// The control loop or the store could not be read.
    #[error("reading the store: {0}")]
    Store(String),
    /// A file of the data dir could not be read.
    #[error("reading {name}: {error}")]
    File {
        /// The file.
        name: &'static str,
        /// Why.
        error: std::io::Error,
    },
    /// Encoding or encrypting failed.
    #[error("encrypting the backup: {0}")]
    Encrypt(String),
}

/// The age recipients of a request, each checked.
pub fn recipients(given: &[String]) -> Result<Vec<age::x25519::Recipient>, BackupFailure> {
    if given.is_empty() {
        return Err(BackupFailure::Recipients(
            "name at least one age recipient (age1…) to encrypt the backup to".to_owned(),
        ));
    }
    given
        .iter()
        .map(|r| {
            r.trim().parse::<age::x25519::Recipient>().map_err(|e| {
                BackupFailure::Recipients(format!(
                    "recipient {r:?} is not an age X25519 recipient: {e}"
                ))
            })
        })
        .collect()
}

/// A backup of `fleet` and `data_dir`, encrypted to `to`.
pub async fn take(
    fleet: &Fleet,
    data_dir: &Path,
    namespace: &str,
    now: u64,
    to: &[age::x25519::Recipient],
) -> Result<(Vec<u8>, BackupOrigin), BackupFailure> {
    let entries = fleet
        .snapshot()
        .await
        .map_err(|e| BackupFailure::Store(e.to_string()))?;
    let mut backup = Backup {
        format: BACKUP_FORMAT,
        fleet_id: fleet.fleet_id().clone(),
        namespace: namespace.to_owned(),
        epoch: fleet.epoch(),
        taken_at: now,
        daemon_version: env!("CARGO_PKG_VERSION").to_owned(),
        entries: Vec::with_capacity(entries.len()),
        files: Vec::new(),
    };
    for (key, v) in entries {
        let value = serde_json::from_slice(&v.value).map_err(|e| {
            BackupFailure::Store(format!("{key} holds a value that is not JSON: {e}"))
        })?;
        backup.entries.push(BackupEntry {
            key: key.to_string(),
            value,
        });
    }
    for name in BACKUP_FILES {
        match std::fs::read_to_string(data_dir.join(name)) {
            Ok(contents) => backup.files.push(BackupFile {
                name: name.to_owned(),
                contents,
            }),
            // No API token made yet: nothing to carry.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && name == TOKENS_FILE => {}
            Err(error) => return Err(BackupFailure::File { name, error }),
        }
    }
    // What restore checks, checked here too: a backup that cannot be
    // restored is refused now, not found out on the day it is needed.
    let origin = backup
        .check()
        .map_err(|e| BackupFailure::Store(e.to_string()))?;
    let plain = serde_json::to_vec(&backup).map_err(|e| BackupFailure::Encrypt(e.to_string()))?;
    let encrypt = |e: &dyn std::fmt::Display| BackupFailure::Encrypt(e.to_string());
    let encryptor = age::Encryptor::with_recipients(to.iter().map(|r| r as &dyn age::Recipient))
        .map_err(|e| encrypt(&e))?;
    let mut out = Vec::with_capacity(plain.len() + 1024);
    let mut w = encryptor.wrap_output(&mut out).map_err(|e| encrypt(&e))?;
    w.write_all(&plain).map_err(|e| encrypt(&e))?;
    w.finish().map_err(|e| encrypt(&e))?;
    Ok((out, origin))
}

/// Writes a restored backup's entries into `store` if `data_dir` has one
/// pending; returns where they came from. Refuses a store that holds
/// another fleet's, or any, records: a restore never merges.
///
/// The fleet identity goes last, so a store that has it has the whole
/// backup; a start interrupted half-way finds the pending file again and
/// writes the rest (entries already there with the backup's value count
/// as written).
pub async fn import_pending(
    data_dir: &Path,
    store: &dyn Store,
    now: u64,
) -> Result<Option<BackupOrigin>, String> {
    let pending = data_dir.join(RESTORE_PENDING_FILE);
    let bytes = match std::fs::read(&pending) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", pending.display())),
    };
    let backup: Backup = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{}: not a restored backup: {e}", pending.display()))?;
    let mut origin = backup
        .check()
        .map_err(|e| format!("{}: {e}", pending.display()))?;
    let ours = |v: &fleet_core::store::Versioned, e: &BackupEntry| {
        serde_json::from_slice::<serde_json::Value>(&v.value).is_ok_and(|have| have == e.value)
    };
    let by_key: std::collections::BTreeMap<&str, &BackupEntry> =
        backup.entries.iter().map(|e| (e.key.as_str(), e)).collect();
    for prefix in Subjects::RECORD_PREFIXES {
        let held = store.list(prefix).await.map_err(|e| e.to_string())?;
        if let Some((key, _)) = held
            .iter()
            .find(|(k, v)| !by_key.get(k.as_str()).is_some_and(|e| ours(v, e)))
        {
            return Err(format!(
                "the store already holds {key}, which the backup in {} does not: a backup is restored only into an empty store",
                pending.display()
            ));
        }
    }
    if let Some(v) = store
        .get(&Subjects::fleet_key())
        .await
        .map_err(|e| e.to_string())?
    {
        let entry = by_key.get(Subjects::fleet_key().as_str());
        if !entry.is_some_and(|e| ours(&v, e)) {
            return Err(format!(
                "the store already holds another fleet's identity; the backup in {} is of fleet {}",
                pending.display(),
                backup.fleet_id
            ));
        }
    }
    let mut written = 0_usize;
    for e in backup.entries_in_restore_order() {
        let key = Key::new(e.key.as_str()).map_err(|err| err.to_string())?;
        let value = serde_json::to_vec(&e.value).map_err(|err| err.to_string())?;
        match store.create(&key, Bytes::from(value)).await {
            Ok(_) => written += 1,
            Err(StoreError::AlreadyExists { .. }) => {
                let same = store
                    .get(&key)
                    .await
                    .map_err(|err| err.to_string())?
                    .is_some_and(|v| ours(&v, e));
                if !same {
                    return Err(format!(
                        "{key} is in the store with another value than the backup's"
                    ));
                }
            }
            Err(err) => return Err(format!("writing {key}: {err}")),
        }
    }
    origin.restored_at = now;
    let json = serde_json::to_vec_pretty(&origin).map_err(|e| e.to_string())?;
    write_private(&data_dir.join(RESTORED_FILE), &json)
        .map_err(|e| format!("writing {RESTORED_FILE}: {e}"))?;
    std::fs::remove_file(&pending).map_err(|e| format!("{}: {e}", pending.display()))?;
    tracing::info!(
        fleet_id = %origin.fleet_id,
        taken_at = origin.taken_at,
        entries = written,
        "restored the backup's entries into the store"
    );
    Ok(Some(origin))
}

#[cfg(test)]
mod tests {
    use fleet_core::protocol::{BACKUP_FILES, BACKUP_REQUIRED_FILES};
    use fleet_runtime::ca::{CA_CERT_FILE, CA_KEY_FILE};
    use fleet_runtime::seal::{SEAL_KEY_FILE, SEAL_PUB_FILE};

    use crate::auth::TOKENS_FILE;

    #[test]
    fn a_backup_carries_the_files_the_daemon_writes_under_their_names() {
        assert_eq!(
            BACKUP_FILES,
            [
                CA_CERT_FILE,
                CA_KEY_FILE,
                SEAL_KEY_FILE,
                SEAL_PUB_FILE,
                TOKENS_FILE
            ]
        );
        assert_eq!(
            BACKUP_REQUIRED_FILES,
            [CA_CERT_FILE, CA_KEY_FILE, SEAL_KEY_FILE]
        );
    }
}
