//! Sealing a claim's credentials bundle for its claimant. Opening is the
//! claimant's side: `fleet_client::credentials::open`.
//!
//! # Format (`fleet-credentials-v1`)
//!
//! A grant carries [`SealedCredentials`] `{format, ciphertext, signature,
//! signer}`; any language with age and Ed25519 can open it:
//!
//! 1. `format` is `fleet-credentials-v1`.
//! 2. `signer` is the standard base64 (with padding) of the daemon's 32-byte
//!    Ed25519 public key. The claimant compares it with the key it trusts
//!    (configured out of band, e.g. from `<data dir>/seal.ed25519.pub`).
//! 3. `signature` is the standard base64 of a 64-byte Ed25519 signature over
//!    the UTF-8 bytes
//!    `"fleet-credentials-v1\n<claim id>\n<recipient>\n<expires_at>\n<ciphertext>\n"`
//!    where `<recipient>` is the age recipient string the claimant sent,
//!    `<expires_at>` the lease expiry of the grant in decimal milliseconds
//!    since the Unix epoch, and `<ciphertext>` the `ciphertext` field
//!    verbatim (see `fleet_core::protocol::credentials_signing_payload`).
//!    Verify this first, with values the claimant knows (its claim id and
//!    recipient, the grant's expiry): age alone does not authenticate the
//!    sender.
//! 4. `ciphertext` is an ASCII-armored age file (`-----BEGIN AGE ENCRYPTED
//!    FILE-----`) encrypted to that X25519 recipient. Decrypted, it is the
//!    JSON of `fleet_core::protocol::CredentialsBundle`: `format`,
//!    `claim_id`, `workspace`, `node`, `endpoint`, `expires_at`, `ca_pem`,
//!    `cert_pem`, `key_pem`.
//! 5. Check the bundle's `claim_id` and `expires_at` equal the ones verified.
//!
//! With the CLI tools: `rage -d -i key.txt` (or `age -d`) decrypts step 4.
//!
//! The daemon's signing key lives in `<data dir>/seal.ed25519.key` (mode
//! 0600; standard base64 of the 32-byte Ed25519 seed) and its public key in
//! `<data dir>/seal.ed25519.pub` (standard base64 of the 32-byte key).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signer as _, SigningKey};
use fleet_core::protocol::{
    CREDENTIALS_FORMAT, CredentialsBundle, SealedCredentials, credentials_signing_payload,
};

use crate::ca::{CaError, create_private_dir, read_optional, write_private_file};

/// The signing key's file name in the data directory (mode 0600).
pub const SEAL_KEY_FILE: &str = "seal.ed25519.key";
/// The public key's file name in the data directory, for operators to hand
/// to claimants.
pub const SEAL_PUB_FILE: &str = "seal.ed25519.pub";

/// A sealing failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The recipient is not an age X25519 recipient (`age1…`).
    #[error("bad age recipient: {0}")]
    BadRecipient(String),
    /// The bundle is not what the format says (wrong format name, not
    /// JSON-encodable).
    #[error("malformed credentials: {0}")]
    Malformed(String),
    /// Encryption failed.
    #[error("encryption failed: {0}")]
    Encrypt(String),
    /// The signing key file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The signing key file does not hold a key.
    #[error("{path}: {detail}")]
    BadKeyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

impl SealError {
    /// A short stable name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            SealError::BadRecipient(_) => "bad_recipient",
            SealError::Malformed(_) => "malformed",
            SealError::Encrypt(_) => "encrypt",
            SealError::Io { .. } => "io",
            SealError::BadKeyFile { .. } => "bad_key_file",
        }
    }

    /// Whether the same call may succeed later: only I/O may be transient.
    pub fn is_retryable(&self) -> bool {
        matches!(self, SealError::Io { .. })
    }
}

impl From<CaError> for SealError {
    fn from(e: CaError) -> SealError {
        match e {
            CaError::Io { path, source } => SealError::Io { path, source },
            CaError::BadFile { path, detail } => SealError::BadKeyFile { path, detail },
            other => SealError::BadKeyFile {
                path: PathBuf::new(),
                detail: other.to_string(),
            },
        }
    }
}

/// The daemon's sealer: holds the Ed25519 signing key.
pub struct Sealer {
    key: SigningKey,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("signer", &self.signer())
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// Loads the signing key from `data_dir`, or creates and stores a new
    /// one (key mode 0600, directory 0700). Blocks on file I/O.
    pub fn load_or_create(data_dir: &Path) -> Result<Sealer, SealError> {
        create_private_dir(data_dir).map_err(|source| SealError::Io {
            path: data_dir.to_owned(),
            source,
        })?;
        let key_path = data_dir.join(SEAL_KEY_FILE);
        let pub_path = data_dir.join(SEAL_PUB_FILE);
        let sealer = match read_optional(&key_path)? {
            Some(text) => {
                let seed = B64
                    .decode(text.trim().as_bytes())
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or_else(|| SealError::BadKeyFile {
                        path: key_path.clone(),
                        detail: "not the base64 of a 32-byte Ed25519 seed".to_owned(),
                    })?;
                Sealer::from_seed(seed)
            }
            None => {
                let mut seed = [0u8; 32];
                getrandom::getrandom(&mut seed).map_err(|e| SealError::Io {
                    path: key_path.clone(),
                    source: io::Error::other(e.to_string()),
                })?;
                let sealer = Sealer::from_seed(seed);
                let text = format!("{}\n", B64.encode(seed));
                write_private_file(&key_path, text.as_bytes(), 0o600)?;
                tracing::info!(path = %key_path.display(), "created credentials signing key");
                sealer
            }
        };
        // Rewritten on every load so it always matches the key.
        let public = format!("{}\n", sealer.signer());
        if read_optional(&pub_path)?.as_deref() != Some(public.as_str()) {
            write_private_file(&pub_path, public.as_bytes(), 0o644)?;
        }
        Ok(sealer)
    }

    /// A sealer with the given Ed25519 seed (tests, or a key from a secret
    /// store).
    pub fn from_seed(seed: [u8; 32]) -> Sealer {
        Sealer {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// The public key claimants must trust: standard base64 of its 32
    /// bytes (`fleet_client::SignerKey::from_base64` reads it).
    pub fn signer(&self) -> String {
        B64.encode(self.key.verifying_key().as_bytes())
    }

    /// Seals `bundle` for `recipient` (an age X25519 recipient, `age1…`):
    /// JSON, age-encrypted and armored, then signed. See the module docs.
    pub fn seal(
        &self,
        bundle: &CredentialsBundle,
        recipient: &str,
    ) -> Result<SealedCredentials, SealError> {
        let to = age::x25519::Recipient::from_str(recipient)
            .map_err(|e| SealError::BadRecipient(e.to_owned()))?;
        if bundle.format != CREDENTIALS_FORMAT {
            return Err(SealError::Malformed(format!(
                "bundle format {:?}, expected {CREDENTIALS_FORMAT:?}",
                bundle.format
            )));
        }
        let plaintext =
            serde_json::to_vec(bundle).map_err(|e| SealError::Malformed(e.to_string()))?;
        let ciphertext = age::encrypt_and_armor(&to, &plaintext)
            .map_err(|e| SealError::Encrypt(e.to_string()))?;
        let payload = credentials_signing_payload(
            &bundle.claim_id,
            recipient,
            bundle.expires_at,
            &ciphertext,
        );
        let signature = self.key.sign(&payload);
        Ok(SealedCredentials {
            format: CREDENTIALS_FORMAT.to_owned(),
            ciphertext,
            signature: B64.encode(signature.to_bytes()),
            signer: self.signer(),
            expires_at: bundle.expires_at,
        })
    }
}
