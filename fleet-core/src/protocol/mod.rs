//! The wire protocol: every message, job type and stored record, and the one
//! codec that reads and writes them.
//!
//! Messages are JSON inside a versioned envelope `{"v": 1, "msg": …}`. The
//! decoder refuses oversized input before parsing, checks the version before
//! the body, ignores unknown fields (so a newer peer can add fields) and turns
//! every failure into a typed [`DecodeError`]; it never panics.

mod agent;
mod backup;
mod claim;
mod console;
mod diagnose;
mod discovery;
mod exec;
mod history;
mod http;
mod job;
mod queue;
mod recipient;
mod records;
mod run;
mod ws;

pub use agent::*;
pub use backup::*;
pub use claim::*;
pub use console::*;
pub use diagnose::*;
pub use discovery::*;
pub use exec::*;
pub use history::*;
pub use http::*;
pub use job::*;
pub use queue::*;
pub use recipient::*;
pub use records::*;
pub use run::*;
pub use ws::*;

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// The largest message any decoder accepts (1 MiB).
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// Why bytes could not be decoded into a protocol message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input is larger than the limit; it was not parsed.
    #[error("message is {len} bytes; the limit is {max}")]
    TooLarge {
        /// Input length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not JSON, or truncated.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The envelope has no `v` field.
    #[error("message has no protocol version field \"v\"")]
    MissingVersion,
    /// The peer speaks another protocol version.
    #[error("peer speaks protocol v{got}; this build speaks v{expected}")]
    Version {
        /// The version in the message.
        got: u16,
        /// [`PROTOCOL_VERSION`].
        expected: u16,
    },
    /// A tag names a message or variant this build does not know.
    #[error("unknown variant: {0}")]
    UnknownVariant(String),
    /// Well-formed JSON whose content is invalid (missing field, bad id, …).
    #[error("invalid message: {0}")]
    Invalid(String),
}

impl DecodeError {
    /// A short stable name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::Malformed(_) => "malformed",
            DecodeError::MissingVersion => "missing_version",
            DecodeError::Version { .. } => "version",
            DecodeError::UnknownVariant(_) => "unknown_variant",
            DecodeError::Invalid(_) => "invalid",
        }
    }

    /// Decode errors are properties of the input: retrying the same bytes
    /// never helps.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// Why a value could not be encoded (only a non-string map key can do this).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot encode message: {0}")]
pub struct EncodeError(String);

#[derive(Serialize)]
struct EnvelopeOut<'a, T> {
    v: u16,
    msg: &'a T,
}

#[derive(Deserialize)]
struct VersionProbe {
    v: Option<u16>,
}

#[derive(Deserialize)]
struct EnvelopeIn<T> {
    msg: T,
}

/// Encodes `msg` in the versioned envelope.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, EncodeError> {
    serde_json::to_vec(&EnvelopeOut {
        v: PROTOCOL_VERSION,
        msg,
    })
    .map_err(|e| EncodeError(e.to_string()))
}

/// Decodes a versioned envelope, enforcing [`MAX_MESSAGE_BYTES`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    decode_limited(bytes, MAX_MESSAGE_BYTES)
}

/// Decodes a versioned envelope with a caller-chosen size limit.
pub fn decode_limited<T: DeserializeOwned>(bytes: &[u8], max: usize) -> Result<T, DecodeError> {
    if bytes.len() > max {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    let probe: VersionProbe = serde_json::from_slice(bytes).map_err(classify)?;
    match probe.v {
        None => return Err(DecodeError::MissingVersion),
        Some(v) if v != PROTOCOL_VERSION => {
            return Err(DecodeError::Version {
                got: v,
                expected: PROTOCOL_VERSION,
            });
        }
        Some(_) => {}
    }
    let env: EnvelopeIn<T> = serde_json::from_slice(bytes).map_err(classify)?;
    Ok(env.msg)
}

fn classify(e: serde_json::Error) -> DecodeError {
    use serde_json::error::Category;
    let text = truncate(&e.to_string(), 200);
    match e.classify() {
        Category::Io | Category::Syntax | Category::Eof => DecodeError::Malformed(text),
        Category::Data if text.contains("unknown variant") => DecodeError::UnknownVariant(text),
        Category::Data => DecodeError::Invalid(text),
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// A secret string (bootstrap token, private key, webhook secret). It travels
/// on the wire as a plain string but never shows in `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself; call only where it is used, never to log.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}
