//! The error every fleet configuration loader returns — `daemon.toml`,
//! `agent.toml`, the simulator's pool — so a bad setting reads the same
//! wherever it is made: the file, then the key, then why. Loading is the
//! binaries' business (this crate reads no files); the type is shared.

use std::path::PathBuf;

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is larger than any sane configuration.
    #[error("{path}: larger than {limit} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit.
        limit: u64,
    },
    /// Malformed text, an unknown key or a wrongly typed value (the message
    /// names the key and the line).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A value that parses but cannot be used.
    #[error("invalid {key}{}: {why}", value.as_ref().map(|v| format!(" {v:?}")).unwrap_or_default())]
    Invalid {
        /// The key, as a dotted path (`pool[0].max_nodes`).
        key: String,
        /// The value, when showing it helps (never a secret).
        value: Option<String>,
        /// Why it cannot be used.
        why: String,
    },
}

impl ConfigError {
    /// `key` cannot be used, because `why`.
    pub fn invalid(key: impl Into<String>, why: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.into(),
            value: None,
            why: why.into(),
        }
    }

    /// `key` cannot be `value`, because `why`.
    pub fn invalid_value(
        key: impl Into<String>,
        value: impl Into<String>,
        why: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            key: key.into(),
            value: Some(value.into()),
            why: why.into(),
        }
    }

    /// The same error with `prefix` in front of its key (`pool[2].` + `max_nodes`).
    pub fn under(self, prefix: &str) -> ConfigError {
        match self {
            ConfigError::Invalid { key, value, why } => ConfigError::Invalid {
                key: format!("{prefix}{key}"),
                value,
                why,
            },
            other => other,
        }
    }

    /// A short stable name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ConfigError::Read { .. } => "read",
            ConfigError::TooLarge { .. } => "too_large",
            ConfigError::Parse { .. } => "parse",
            ConfigError::Invalid { .. } => "invalid",
        }
    }

    /// Configuration errors never go away by retrying.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_key_and_show_the_value_when_given() {
        assert_eq!(
            ConfigError::invalid("max_nodes", "must be at least 1")
                .under("pool[0].")
                .to_string(),
            "invalid pool[0].max_nodes: must be at least 1"
        );
        assert_eq!(
            ConfigError::invalid_value("gateway_listen", "nope", "not an address").to_string(),
            "invalid gateway_listen \"nope\": not an address"
        );
    }
}
