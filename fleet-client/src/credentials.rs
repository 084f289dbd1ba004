//! Opening a grant's sealed credentials: check the signer is the pinned
//! daemon key, verify the Ed25519 signature over what the claimant already
//! knows, and only then decrypt (age alone does not authenticate the
//! sender). The format is `fleet-credentials-v1` (PROTOCOL.md,
//! [`fleet_core::protocol::SealedCredentials`]).

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, VerifyingKey};
use fleet_core::ids::{ClaimId, Millis};
use fleet_core::protocol::{
    CREDENTIALS_FORMAT, CredentialsBundle, SealedCredentials, credentials_signing_payload,
};

/// The largest armored ciphertext [`open`] accepts. A bundle is a few KiB.
pub const MAX_CIPHERTEXT_BYTES: usize = 256 * 1024;

/// Why sealed credentials could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Signed by a key other than the trusted one.
    #[error("sealed by an untrusted signer")]
    UntrustedSigner,
    /// The signature does not verify over the expected claim, recipient,
    /// expiry and ciphertext: tampered, or sealed for another claim.
    #[error("signature does not verify")]
    BadSignature,
    /// The ciphertext could not be decrypted with the given identity.
    #[error("decryption failed: {0}")]
    DecryptFailed(String),
    /// The bundle names a different claim than expected.
    #[error("bundle is for claim {found}, expected {expected}")]
    WrongClaim {
        /// The claim asked for.
        expected: ClaimId,
        /// The claim in the bundle.
        found: ClaimId,
    },
    /// The bundle's expiry differs from the expected one.
    #[error("bundle expires at {found}, expected {expected}")]
    WrongExpiry {
        /// The expiry asked for.
        expected: Millis,
        /// The expiry in the bundle.
        found: Millis,
    },
    /// A field is not what the format says (bad base64, bad JSON, wrong
    /// format name, too large).
    #[error("malformed sealed credentials: {0}")]
    Malformed(String),
}

impl OpenError {
    /// A short stable name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            OpenError::UntrustedSigner => "untrusted_signer",
            OpenError::BadSignature => "bad_signature",
            OpenError::DecryptFailed(_) => "decrypt_failed",
            OpenError::WrongClaim { .. } => "wrong_claim",
            OpenError::WrongExpiry { .. } => "wrong_expiry",
            OpenError::Malformed(_) => "malformed",
        }
    }

    /// Never: the same bytes never open later.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// A trusted signer's Ed25519 public key: the daemon's, pinned by the
/// claimant (`seal.ed25519.pub` in the daemon's data dir).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SignerKey(VerifyingKey);

impl SignerKey {
    /// Parses the standard base64 of a 32-byte Ed25519 public key (the
    /// `signer` field, or the content of `seal.ed25519.pub`).
    pub fn from_base64(s: &str) -> Result<SignerKey, OpenError> {
        let bytes = B64
            .decode(s.trim().as_bytes())
            .map_err(|e| OpenError::Malformed(format!("signer key: {e}")))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| OpenError::Malformed("signer key is not 32 bytes".to_owned()))?;
        SignerKey::from_bytes(&bytes)
    }

    /// The key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<SignerKey, OpenError> {
        VerifyingKey::from_bytes(bytes)
            .map(SignerKey)
            .map_err(|_| OpenError::Malformed("signer key is not an Ed25519 point".to_owned()))
    }

    /// The standard base64 of the key.
    pub fn to_base64(&self) -> String {
        B64.encode(self.0.as_bytes())
    }
}

impl fmt::Debug for SignerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SignerKey({})", self.to_base64())
    }
}

impl fmt::Display for SignerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

/// What the claimant expects of a sealed bundle: all known before opening.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The claim it asked for.
    pub claim_id: &'a ClaimId,
    /// The age recipient it sent with the request.
    pub recipient: &'a str,
    /// The certificate expiry the grant's sealed credentials name
    /// (`SealedCredentials::expires_at`).
    pub expires_at: Millis,
    /// The daemon key it trusts.
    pub signer: &'a SignerKey,
}

/// Opens a sealed bundle: checks the signer is the trusted one, verifies
/// the signature over the expected claim, recipient and expiry, and only
/// then decrypts and checks the bundle matches.
pub fn open(
    sealed: &SealedCredentials,
    identity: &age::x25519::Identity,
    expected: &Expected<'_>,
) -> Result<CredentialsBundle, OpenError> {
    if sealed.format != CREDENTIALS_FORMAT {
        return Err(OpenError::Malformed(format!(
            "format {:?}, expected {CREDENTIALS_FORMAT:?}",
            sealed.format
        )));
    }
    if sealed.ciphertext.len() > MAX_CIPHERTEXT_BYTES {
        return Err(OpenError::Malformed(format!(
            "ciphertext of {} bytes exceeds {MAX_CIPHERTEXT_BYTES}",
            sealed.ciphertext.len()
        )));
    }
    let signer = SignerKey::from_base64(&sealed.signer)?;
    if signer != *expected.signer {
        return Err(OpenError::UntrustedSigner);
    }
    let signature = B64
        .decode(sealed.signature.trim().as_bytes())
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .map(|b| Signature::from_bytes(&b))
        .ok_or_else(|| OpenError::Malformed("signature is not 64 base64 bytes".to_owned()))?;
    let payload = credentials_signing_payload(
        expected.claim_id,
        expected.recipient,
        expected.expires_at,
        &sealed.ciphertext,
    );
    expected
        .signer
        .0
        .verify_strict(&payload, &signature)
        .map_err(|_| OpenError::BadSignature)?;
    let plaintext = age::decrypt(identity, sealed.ciphertext.as_bytes())
        .map_err(|e| OpenError::DecryptFailed(e.to_string()))?;
    let bundle: CredentialsBundle =
        serde_json::from_slice(&plaintext).map_err(|e| OpenError::Malformed(e.to_string()))?;
    if bundle.format != CREDENTIALS_FORMAT {
        return Err(OpenError::Malformed(format!(
            "bundle format {:?}, expected {CREDENTIALS_FORMAT:?}",
            bundle.format
        )));
    }
    if bundle.claim_id != *expected.claim_id {
        return Err(OpenError::WrongClaim {
            expected: expected.claim_id.clone(),
            found: bundle.claim_id,
        });
    }
    if bundle.expires_at != expected.expires_at {
        return Err(OpenError::WrongExpiry {
            expected: expected.expires_at,
            found: bundle.expires_at,
        });
    }
    Ok(bundle)
}
