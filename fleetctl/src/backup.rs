//! `fleetctl backup-key`, `backup` and `restore`: a daemon's whole state,
//! encrypted with age, into an empty data dir on this or another host.
//!
//! The daemon encrypts (the pool CA key never crosses the API in clear
//! text); `restore` decrypts with the operator's identity, checks the
//! backup, lays the trust files into the new data dir and leaves the
//! stored entries for the daemon, which writes them into its store — redb
//! or a JetStream KV bucket — before it takes the lease.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use fleet_core::protocol::{Backup, BackupOrigin, BackupRequest, RESTORE_PENDING_FILE};
use serde_json::json;

use crate::claimdir::{age_identities, create_dir, new_age_key_text, write_file};
use crate::{Context, CtlError, fail};

/// The largest backup `restore` reads.
pub const MAX_BACKUP_BYTES: u64 = 1 << 30;

/// `fleetctl backup-key FILE`: a new age identity, written owner-only;
/// prints its recipient (what `backup --recipient` takes).
pub fn keygen(ctx: &Context, out: &Path) -> Result<i32, CtlError> {
    let (dir, name) = split(out)?;
    if out.exists() {
        return Err(fail(format!(
            "{} exists; refusing to overwrite a key",
            out.display()
        )));
    }
    let (identity, text) = new_age_key_text();
    write_file(&dir, &name, text.as_bytes(), 0o600)?;
    let recipient = identity.to_public().to_string();
    if ctx.global.json {
        println!(
            "{}",
            json!({ "identity_file": out, "recipient": recipient })
        );
    } else {
        eprintln!(
            "age identity written to {} (keep it apart from the backups); its recipient:",
            out.display()
        );
        println!("{recipient}");
    }
    Ok(0)
}

/// `fleetctl backup --recipient R… --out FILE`.
pub async fn backup(
    ctx: &Context,
    mut recipients: Vec<String>,
    recipients_file: Option<&Path>,
    out: &Path,
) -> Result<i32, CtlError> {
    if let Some(path) = recipients_file {
        let text = crate::read_text(path, "recipients file")?;
        recipients.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned),
        );
    }
    if recipients.is_empty() {
        return Err(CtlError::Usage(
            "name an age recipient to encrypt the backup to: --recipient age1… (make one with \
             `fleetctl backup-key FILE`) or --recipients-file FILE"
                .to_owned(),
        ));
    }
    for r in &recipients {
        r.parse::<age::x25519::Recipient>()
            .map_err(|e| CtlError::Usage(format!("{r:?} is not an age recipient (age1…): {e}")))?;
    }
    let (dir, name) = split(out)?;
    if out.exists() {
        return Err(fail(format!(
            "{} exists; refusing to overwrite it",
            out.display()
        )));
    }
    let bytes = ctx
        .api()?
        .backup(&BackupRequest {
            recipients: recipients.clone(),
        })
        .await?;
    write_file(&dir, &name, &bytes, 0o600)?;
    if ctx.global.json {
        println!(
            "{}",
            json!({ "file": out, "bytes": bytes.len(), "recipients": recipients })
        );
    } else {
        println!(
            "backup written to {} ({} bytes, encrypted to {} recipient{})",
            out.display(),
            bytes.len(),
            recipients.len(),
            if recipients.len() == 1 { "" } else { "s" }
        );
    }
    Ok(0)
}

/// `fleetctl restore --identity FILE BACKUP` into the (empty) data dir.
pub fn restore(ctx: &Context, identity: &Path, file: &Path) -> Result<i32, CtlError> {
    let dir = &ctx.data_dir;
    refuse_used_dir(dir)?;
    let backup = open(identity, file)?;
    let origin = backup
        .check()
        .map_err(|e| fail(format!("{}: cannot be restored: {e}", file.display())))?;
    create_dir(dir)?;
    for f in &backup.files {
        write_file(dir, &f.name, f.contents.as_bytes(), 0o600)?;
    }
    // What the daemon writes into its store at its next start.
    let pending = Backup {
        files: Vec::new(),
        ..backup
    };
    let text = serde_json::to_vec(&pending).map_err(|e| fail(e.to_string()))?;
    write_file(dir, RESTORE_PENDING_FILE, &text, 0o600)?;
    if ctx.global.json {
        println!(
            "{}",
            serde_json::to_string(&origin).map_err(|e| fail(e.to_string()))?
        );
    } else {
        println!("{}", summary(&origin, dir));
    }
    Ok(0)
}

/// Decrypts and parses a backup, with an error that says which of the
/// operator's mistakes it is.
pub fn open(identity: &Path, file: &Path) -> Result<Backup, CtlError> {
    let identities = age_identities(identity)?;
    let f = std::fs::File::open(file).map_err(|e| fail(format!("{}: {e}", file.display())))?;
    let mut bytes = Vec::new();
    f.take(MAX_BACKUP_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(format!("{}: {e}", file.display())))?;
    if bytes.len() as u64 > MAX_BACKUP_BYTES {
        return Err(fail(format!(
            "{}: larger than {MAX_BACKUP_BYTES} bytes; not a fleet backup",
            file.display()
        )));
    }
    let damaged = |e: &dyn std::fmt::Display| {
        fail(format!(
            "{}: the backup is damaged or was modified; it does not decrypt ({e})",
            file.display()
        ))
    };
    let decryptor = age::Decryptor::new(&bytes[..]).map_err(|e| match e {
        age::DecryptError::InvalidHeader | age::DecryptError::UnknownFormat => fail(format!(
            "{}: not an age-encrypted file (is it a fleet backup?)",
            file.display()
        )),
        e => damaged(&e),
    })?;
    let mut reader = decryptor
        .decrypt(identities.iter().map(|i| i as &dyn age::Identity))
        .map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => fail(format!(
                "{}: not encrypted to the identity in {} (another key's backup?)",
                file.display(),
                identity.display()
            )),
            e => damaged(&e),
        })?;
    let mut plain = Vec::new();
    reader.read_to_end(&mut plain).map_err(|e| damaged(&e))?;
    serde_json::from_slice(&plain).map_err(|e| {
        fail(format!(
            "{}: decrypts, but is not a fleet backup this fleetctl reads ({e})",
            file.display()
        ))
    })
}

/// A data dir a daemon used (or uses) is never written over.
fn refuse_used_dir(dir: &Path) -> Result<(), CtlError> {
    let mut entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(fail(format!("{}: {e}", dir.display()))),
    };
    if entries.next().is_some() {
        let live = dir.join(fleet_core::protocol::DISCOVERY_FILE).exists();
        return Err(fail(format!(
            "refusing to restore into {}: it is not empty{}; restore into a new, empty data dir \
             (--data-dir) and point the daemon's data_dir at it",
            dir.display(),
            if live { " (a daemon uses it)" } else { "" }
        )));
    }
    Ok(())
}

fn summary(o: &BackupOrigin, dir: &Path) -> String {
    let records = if o.records.is_empty() {
        "no records".to_owned()
    } else {
        o.records
            .iter()
            .map(|(kind, n)| format!("{n} {kind}{}", if *n == 1 { "" } else { "s" }))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "restored fleet {} (namespace {}, epoch {}, taken at {} by fleet-daemon {}): {records}\n\
         into {}; start fleet-daemon with data_dir = {:?} (same namespace and store kind): \
         it writes the records into its store, which must be empty, before it leads",
        o.fleet_id,
        o.namespace,
        o.epoch.0,
        crate::render::utc(o.taken_at),
        o.daemon_version,
        dir.display(),
        dir.display().to_string(),
    )
}

/// A file path's directory (`.` for a bare name) and name.
fn split(path: &Path) -> Result<(PathBuf, String), CtlError> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| CtlError::Usage(format!("{} names no file", path.display())))?
        .to_owned();
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    Ok((dir, name))
}
