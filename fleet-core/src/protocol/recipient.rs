//! The age recipient a claim names ([`ClaimRequest::recipient`]): what the
//! controller checks before it accepts the claim.
//!
//! The daemon seals credentials with the `age` crate's X25519 recipient
//! only, so a request is accepted only with one: Bech32 (BIP-173, not
//! Bech32m) with the human-readable part `age` and exactly 32 bytes of
//! data, lower- or upper-case but not mixed. Plugin recipients
//! (`age1<plugin>1…`) and anything else are refused when the request
//! arrives, instead of being accepted and revoked once sealing fails.
//!
//! The decoding is the `bech32` crate's (pure, no dependencies), which is
//! also what `age` parses recipients with, so this check and the sealer
//! agree by construction; the tests hold it to `age` itself.
//!
//! [`ClaimRequest::recipient`]: super::ClaimRequest::recipient

use bech32::primitives::decode::CheckedHrpstring;
use bech32::{Bech32, Hrp};

/// The length of every X25519 age recipient: `age1`, 52 data characters
/// (32 bytes) and a 6-character checksum.
pub const AGE_X25519_RECIPIENT_LEN: usize = 62;

/// The human-readable part of an X25519 age recipient.
const AGE_HRP: Hrp = Hrp::parse_unchecked("age");
/// What plugin recipients' human-readable parts start with (`age1yubikey`).
const PLUGIN_HRP_PREFIX: &str = "age1";

/// Why a string is not an X25519 age recipient.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecipientError {
    /// Not Bech32: a character outside the charset, mixed case, no
    /// separator, or a checksum that does not match (Bech32m included).
    #[error("not a Bech32 string: {0}")]
    Encoding(String),
    /// A plugin recipient (`age1<plugin>1…`): the daemon seals to X25519
    /// recipients only.
    #[error("plugin recipients are not supported; send an X25519 recipient (age1…)")]
    Plugin,
    /// Bech32, but not for age.
    #[error("human-readable part {0:?} is not \"age\"")]
    Hrp(String),
    /// Bech32 for age, but not 32 bytes.
    #[error("an X25519 recipient carries 32 bytes, this one {0}")]
    Length(usize),
}

impl RecipientError {
    /// A short stable name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            RecipientError::Encoding(_) => "encoding",
            RecipientError::Plugin => "plugin",
            RecipientError::Hrp(_) => "hrp",
            RecipientError::Length(_) => "length",
        }
    }
}

/// The X25519 public key an age recipient string (`age1…`) encodes, or why
/// it is not one. Pure: no key is checked for being a usable curve point.
pub fn x25519_recipient_key(recipient: &str) -> Result<[u8; 32], RecipientError> {
    let parsed = CheckedHrpstring::new::<Bech32>(recipient)
        .map_err(|e| RecipientError::Encoding(e.to_string()))?;
    let hrp = parsed.hrp();
    if hrp != AGE_HRP {
        let hrp = hrp.to_lowercase();
        return Err(if hrp.starts_with(PLUGIN_HRP_PREFIX) {
            RecipientError::Plugin
        } else {
            RecipientError::Hrp(hrp)
        });
    }
    let mut key = [0u8; 32];
    let mut len = 0usize;
    for byte in parsed.byte_iter() {
        if let Some(slot) = key.get_mut(len) {
            *slot = byte;
        }
        len += 1;
    }
    if len != key.len() {
        return Err(RecipientError::Length(len));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bech32 of sha256("fleet test recipient") under `age`.
    const VALID: &str = "age166j880zym4c8emmhegj987f0qa96pa7qyz9wza337kpftnytqk7qg3zd0u";

    #[test]
    fn a_valid_recipient_decodes_in_either_case_but_not_mixed() {
        assert_eq!(VALID.len(), AGE_X25519_RECIPIENT_LEN);
        let key = x25519_recipient_key(VALID);
        assert!(key.is_ok(), "{key:?}");
        assert_eq!(x25519_recipient_key(&VALID.to_uppercase()), key);
        let mixed = format!("AGE{}", &VALID[3..]);
        assert_eq!(
            x25519_recipient_key(&mixed).map_err(|e| e.kind()),
            Err("encoding")
        );
    }

    #[test]
    fn the_words_of_the_bug_report_are_refused() {
        for bad in [
            "age1notarecipient",
            "age1",
            "",
            "ssh-ed25519 AAAA",
            "age1qqqqexamplerecipient",
        ] {
            assert_eq!(
                x25519_recipient_key(bad).map_err(|e| e.kind()),
                Err("encoding"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn other_parts_and_lengths_are_named() {
        // Valid Bech32, made with the reference encoder (BIP-173).
        let cases = [
            // age1yubikey1 + 33 bytes: a plugin recipient's shape.
            (
                "age1yubikey1qgpsgpgxquyqjzstpsxsurcszyfpx9q4zct3sxg6rvwp68slyqsjyg52myc",
                "plugin",
            ),
            // HRP "bc", 32 bytes.
            (
                "bc1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqaj76hn",
                "hrp",
            ),
            // age, 31 and 33 bytes.
            (
                "age1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqar9jk6",
                "length",
            ),
            (
                "age1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqzhlqeg",
                "length",
            ),
            // The valid key's data with a Bech32m checksum (BIP-350).
            (
                "age166j880zym4c8emmhegj987f0qa96pa7qyz9wza337kpftnytqk7qadjp27",
                "encoding",
            ),
        ];
        for (s, kind) in cases {
            assert_eq!(
                x25519_recipient_key(s).map_err(|e| e.kind()),
                Err(kind),
                "{s}"
            );
        }
    }
}
