//! Validated identifiers.
//!
//! Every name that crosses a process boundary (claim ids, node ids, workspaces,
//! pools, job ids) is a newtype whose constructor checks it. The same checks
//! run when a value is deserialized, so a malformed id in a message or a stored
//! record is a typed decode error, never a string that later breaks a subject,
//! a store key or a file name.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize, Serializer};

/// The longest id accepted, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// Why a string was refused as an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The string was empty.
    #[error("{kind} must not be empty")]
    Empty {
        /// Which kind of id was being built.
        kind: &'static str,
    },
    /// The string was longer than allowed.
    #[error("{kind} is {len} bytes long; at most {max} are allowed")]
    TooLong {
        /// Which kind of id was being built.
        kind: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The string held a character outside the allowed set.
    #[error("{kind} contains {ch:?} at byte {at}; allowed are {allowed}")]
    BadChar {
        /// Which kind of id was being built.
        kind: &'static str,
        /// The offending character.
        ch: char,
        /// Its byte offset.
        at: usize,
        /// A description of the allowed set.
        allowed: &'static str,
    },
}

/// Characters allowed in a token: safe as a NATS subject token, a KV key
/// segment, a file name and a URL path segment.
fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

const TOKEN_CHARS: &str = "ASCII letters, digits, '-' and '_'";

/// Checks `s` as a token of kind `kind` (used by every id type and by
/// [`crate::subjects`]).
pub fn validate_token(kind: &'static str, s: &str) -> Result<(), IdError> {
    validate_with(kind, s, MAX_ID_LEN, is_token_char, TOKEN_CHARS)
}

fn validate_with(
    kind: &'static str,
    s: &str,
    max: usize,
    ok: fn(char) -> bool,
    allowed: &'static str,
) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if s.len() > max {
        return Err(IdError::TooLong {
            kind,
            len: s.len(),
            max,
        });
    }
    if let Some((at, ch)) = s.char_indices().find(|&(_, c)| !ok(c)) {
        return Err(IdError::BadChar {
            kind,
            ch,
            at,
            allowed,
        });
    }
    Ok(())
}

/// The JSON Schema `pattern` of a token ([`is_token_char`], at most
/// [`MAX_ID_LEN`] bytes).
#[cfg(feature = "schema")]
fn token_pattern() -> String {
    format!("^[A-Za-z0-9_-]{{1,{MAX_ID_LEN}}}$")
}

/// The JSON Schema `pattern` of a [`FleetId`].
#[cfg(feature = "schema")]
fn fleet_id_pattern() -> String {
    format!("^[a-z0-9-]{{1,{MAX_FLEET_ID_LEN}}}$")
}

/// The JSON Schema `pattern` of an [`InstanceType`]: a token that may also
/// hold `.`.
#[cfg(feature = "schema")]
fn instance_type_pattern() -> String {
    format!("^[A-Za-z0-9._-]{{1,{MAX_ID_LEN}}}$")
}

macro_rules! string_id {
    ($(#[doc = $doc:literal])* $name:ident, $kind:literal, $pattern:expr, $check:expr) => {
        string_id!($(#[doc = $doc])* $name, $kind, $pattern, $check, MAX_ID_LEN);
    };
    ($(#[doc = $doc:literal])* $name:ident, $kind:literal, $pattern:expr, $check:expr, $max:expr) => {
        $(#[doc = $doc])*
        ///
        /// Immutable and shared: a clone is a reference-count increment, which
        /// matters because the controller copies ids into every view, record
        /// and command.
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
        #[serde(try_from = "String")]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates and wraps `s`.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                let check: fn(&str) -> Result<(), IdError> = $check;
                check(&s)?;
                Ok(Self(Arc::from(s)))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Whether both are clones of one id (not only equal): asks
            /// nothing of the string, so a view kept from the last round
            /// can tell in a compare of pointers that its ids still hold.
            #[allow(dead_code, reason = "not every kind of id is kept in a view")]
            pub(crate) fn same(&self, other: &Self) -> bool {
                Arc::ptr_eq(&self.0, &other.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = IdError;
            fn try_from(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0.as_ref().to_owned()
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        // Hand-written: the derive would say "string" and lose the check
        // every decoder runs.
        #[cfg(feature = "schema")]
        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }

            fn schema_id() -> std::borrow::Cow<'static, str> {
                concat!(module_path!(), "::", stringify!($name)).into()
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                let pattern: fn() -> String = $pattern;
                let doc: &[&str] = &[$($doc),*];
                let description = doc.iter().map(|l| l.trim()).collect::<Vec<_>>().join(" ");
                schemars::json_schema!({
                    "description": description,
                    "type": "string",
                    "minLength": 1,
                    "maxLength": $max,
                    "pattern": pattern(),
                })
            }
        }
    };
}

string_id!(
    /// A caller-chosen claim id; also the idempotency key of a claim request.
    ClaimId, "claim id", token_pattern, |s| validate_token("claim id", s)
);
string_id!(
    /// A node id, chosen by the controller and used as the provider's
    /// idempotency key for `create`.
    NodeId, "node id", token_pattern, |s| validate_token("node id", s)
);
string_id!(
    /// A tenant: quotas, dollar caps and NATS permissions are per workspace.
    Workspace, "workspace", token_pattern, |s| validate_token("workspace", s)
);
string_id!(
    /// A pool of interchangeable nodes run by one strategy.
    PoolName, "pool name", token_pattern, |s| validate_token("pool name", s)
);
string_id!(
    /// A job (task) id, chosen by the submitter; idempotency key of a submit.
    JobId, "job id", token_pattern, |s| validate_token("job id", s)
);
string_id!(
    /// A run (a group of jobs with one lifecycle) id, chosen by the
    /// submitter; idempotency key of a run's submit.
    RunId, "run id", token_pattern, |s| validate_token("run id", s)
);
string_id!(
    /// The id of one command the daemon asked an agent to run. An agent
    /// remembers the ids it ran, so a command resent after a reconnect is not
    /// run twice.
    CommandId, "command id", token_pattern, |s| validate_token("command id", s)
);
string_id!(
    /// A provider's instance type name, e.g. `c7g.large` or `cx22`.
    InstanceType, "instance type", instance_type_pattern, |s| validate_with(
        "instance type",
        s,
        MAX_ID_LEN,
        |c| is_token_char(c) || c == '.',
        "ASCII letters, digits, '.', '-' and '_'"
    )
);

/// The longest affinity key accepted, in bytes.
pub const MAX_AFFINITY_KEY_LEN: usize = 200;

/// The JSON Schema `pattern` of an [`AffinityKey`].
#[cfg(feature = "schema")]
fn affinity_key_pattern() -> String {
    format!("^[A-Za-z0-9._/:@-]{{1,{MAX_AFFINITY_KEY_LEN}}}$")
}

string_id!(
    /// What a claim's work reuses from one build to the next — a
    /// repository (`github.com/acme/app`), a workspace, a cache name — so
    /// that arbitration can send it to a node that served the same key
    /// and still has its caches warm.
    AffinityKey, "affinity key", affinity_key_pattern, |s| validate_with(
        "affinity key",
        s,
        MAX_AFFINITY_KEY_LEN,
        |c| is_token_char(c) || matches!(c, '.' | '/' | ':' | '@'),
        "ASCII letters, digits, '.', '/', ':', '@', '-' and '_'"
    ), MAX_AFFINITY_KEY_LEN
);

/// The longest fleet id accepted, in bytes: it is part of every node id,
/// which must stay within [`MAX_ID_LEN`].
pub const MAX_FLEET_ID_LEN: usize = 16;

string_id!(
    /// A fleet's identity: generated at the fleet's first start and kept in
    /// its store, written into every instance's tags and node id, so fleets
    /// sharing a cloud account (even with one namespace and the same pool
    /// names) never touch each other's instances. Lowercase ASCII letters,
    /// digits and `-`, at most 16 bytes (node ids become host names, which
    /// ignore case).
    FleetId, "fleet id", fleet_id_pattern, |s| validate_with(
        "fleet id",
        s,
        MAX_FLEET_ID_LEN,
        |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-',
        "lowercase ASCII letters, digits and '-'"
    ),
    MAX_FLEET_ID_LEN
);

/// The leader's fencing epoch. Every mutation a leader makes carries it; a
/// write with an older epoch than the store's current leader is refused.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl Epoch {
    /// The epoch after this one.
    pub fn next(self) -> Epoch {
        Epoch(self.0.saturating_add(1))
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "e{}", self.0)
    }
}

/// The id of one provider operation the controller asked for; the driver
/// echoes it back in [`crate::controller::Event::ProviderDone`].
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct OpId(pub u64);

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "op{}", self.0)
    }
}

/// Milliseconds. Absolute instants are milliseconds since the Unix epoch;
/// durations are named `*_ms`. The core never reads a clock: callers pass
/// `now` in.
pub type Millis = u64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_tokens_and_rejects_subject_metacharacters() {
        assert!(ClaimId::new("build-42_a").is_ok());
        for bad in ["", "a.b", "a*", "a>", "a b", "a\tb", "ä", "a/b"] {
            assert!(ClaimId::new(bad).is_err(), "{bad:?} accepted");
        }
        let long = "x".repeat(MAX_ID_LEN + 1);
        assert!(matches!(
            Workspace::new(long),
            Err(IdError::TooLong { len: 65, .. })
        ));
        assert!(InstanceType::new("c7g.large").is_ok());
        assert!(InstanceType::new("c7g large").is_err());
        assert!(FleetId::new("3f9a0c2e").is_ok());
        for bad in ["", "Fleet", "a_b", "a.b", "0123456789abcdef0"] {
            assert!(FleetId::new(bad).is_err(), "fleet id {bad:?} accepted");
        }
    }

    #[test]
    fn deserialization_validates() {
        let ok: Result<NodeId, _> = serde_json::from_str("\"n-1\"");
        assert!(ok.is_ok());
        let bad: Result<NodeId, _> = serde_json::from_str("\"n.1\"");
        assert!(bad.is_err());
    }
}
