//! A claim's files: `ca.pem`, `cert.pem`, `key.pem` (0600), `bundle.json`
//! (the decrypted bundle without the key, plus the pool), `endpoint`, and
//! `age.key` (0600, the age identity the bundle was sealed to). The
//! directory is created 0700.
//!
//! `age.key` is written before the claim is sent, so a retry with the same
//! `--id` (which the daemon answers with the same sealed grant) can still
//! be opened.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::str::FromStr;

use fleet_core::protocol::{CredentialsBundle, Secret};
use serde::{Deserialize, Serialize};

use crate::{CtlError, fail, read_text};

/// `ca.pem`.
pub const CA_FILE: &str = "ca.pem";
/// `cert.pem`.
pub const CERT_FILE: &str = "cert.pem";
/// `key.pem` (0600).
pub const KEY_FILE: &str = "key.pem";
/// `bundle.json`.
pub const BUNDLE_FILE: &str = "bundle.json";
/// `endpoint`.
pub const ENDPOINT_FILE: &str = "endpoint";
/// `age.key` (0600).
pub const AGE_KEY_FILE: &str = "age.key";

/// What `bundle.json` holds: the bundle minus its key, plus the pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimInfo {
    /// Bundle format.
    pub format: String,
    /// The claim.
    pub claim_id: String,
    /// Its workspace.
    pub workspace: String,
    /// Its pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// The node.
    pub node: String,
    /// The gateway (`host:port`).
    pub endpoint: String,
    /// Lease (and certificate) expiry, ms since the Unix epoch.
    pub expires_at: u64,
    /// The pool CA (PEM).
    pub ca_pem: String,
    /// The claim's client certificate (PEM).
    pub cert_pem: String,
}

impl ClaimInfo {
    /// From a decrypted bundle.
    pub fn from_bundle(b: &CredentialsBundle, pool: Option<String>) -> ClaimInfo {
        ClaimInfo {
            format: b.format.clone(),
            claim_id: b.claim_id.to_string(),
            workspace: b.workspace.to_string(),
            pool,
            node: b.node.to_string(),
            endpoint: b.endpoint.clone(),
            expires_at: b.expires_at,
            ca_pem: b.ca_pem.clone(),
            cert_pem: b.cert_pem.clone(),
        }
    }
}

/// Creates `dir` (and parents) with mode 0700.
pub fn create_dir(dir: &Path) -> Result<(), CtlError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))
}

/// Writes `name` in `dir` atomically with `mode`.
pub fn write_file(dir: &Path, name: &str, data: &[u8], mode: u32) -> Result<(), CtlError> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let err = |e: std::io::Error| fail(format!("cannot write {}: {e}", path.display()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(data).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, &path).map_err(err)
}

/// The age identity in `dir/age.key` (the key the claim's credentials are
/// sealed to).
pub fn load_age_key(dir: &Path) -> Result<age::x25519::Identity, CtlError> {
    let mut keys = age_identities(&dir.join(AGE_KEY_FILE))?;
    Ok(keys.swap_remove(0))
}

/// The age identities (`AGE-SECRET-KEY-1…` lines; `#` comments and blank
/// lines skipped) of an identity file, at least one.
pub fn age_identities(path: &Path) -> Result<Vec<age::x25519::Identity>, CtlError> {
    let text = read_text(path, "age key")?;
    let keys = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("AGE-SECRET-KEY-"))
        .map(|l| {
            age::x25519::Identity::from_str(l)
                .map_err(|_| fail(format!("{}: not a valid age identity", path.display())))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if keys.is_empty() {
        return Err(fail(format!("{}: no AGE-SECRET-KEY line", path.display())));
    }
    Ok(keys)
}

/// A fresh age identity file's text (the recipient in a comment).
pub fn new_age_key_text() -> (age::x25519::Identity, String) {
    use age::secrecy::ExposeSecret as _;
    let identity = age::x25519::Identity::generate();
    let secret = identity.to_string();
    let text = format!(
        "# recipient: {}\n{}\n",
        identity.to_public(),
        secret.expose_secret()
    );
    (identity, text)
}

/// The age identity in `dir/age.key`, or a fresh one written there.
pub fn load_or_create_age_key(dir: &Path) -> Result<age::x25519::Identity, CtlError> {
    if dir.join(AGE_KEY_FILE).exists() {
        return load_age_key(dir);
    }
    let (identity, text) = new_age_key_text();
    write_file(dir, AGE_KEY_FILE, text.as_bytes(), 0o600)?;
    Ok(identity)
}

/// Writes the claim's files (all but `age.key`).
pub fn write_claim(
    dir: &Path,
    bundle: &CredentialsBundle,
    pool: Option<String>,
) -> Result<(), CtlError> {
    create_dir(dir)?;
    let info = ClaimInfo::from_bundle(bundle, pool);
    let json = serde_json::to_vec_pretty(&info).map_err(|e| fail(e.to_string()))?;
    write_file(dir, KEY_FILE, bundle.key_pem.expose().as_bytes(), 0o600)?;
    write_file(dir, CA_FILE, bundle.ca_pem.as_bytes(), 0o644)?;
    write_file(dir, CERT_FILE, bundle.cert_pem.as_bytes(), 0o644)?;
    write_file(
        dir,
        ENDPOINT_FILE,
        format!("{}\n", bundle.endpoint).as_bytes(),
        0o644,
    )?;
    write_file(dir, BUNDLE_FILE, &json, 0o644)
}

/// Reads `bundle.json`.
pub fn read_info(dir: &Path) -> Result<ClaimInfo, CtlError> {
    let path = dir.join(BUNDLE_FILE);
    let text = read_text(&path, "claim file")?;
    serde_json::from_str(&text).map_err(|e| fail(format!("{}: {e}", path.display())))
}

/// A claim's credentials, read back for `exec`.
pub struct Credentials {
    /// `bundle.json`.
    pub info: ClaimInfo,
    /// `ca.pem`.
    pub ca_pem: String,
    /// `cert.pem`.
    pub cert_pem: String,
    /// `key.pem`.
    pub key_pem: Secret,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("claim_id", &self.info.claim_id)
            .field("endpoint", &self.info.endpoint)
            .finish_non_exhaustive()
    }
}

/// Reads everything `exec` needs from `dir`.
pub fn read_credentials(dir: &Path) -> Result<Credentials, CtlError> {
    Ok(Credentials {
        info: read_info(dir)?,
        ca_pem: read_text(&dir.join(CA_FILE), "claim CA")?,
        cert_pem: read_text(&dir.join(CERT_FILE), "claim certificate")?,
        key_pem: Secret::new(read_text(&dir.join(KEY_FILE), "claim key")?),
    })
}
