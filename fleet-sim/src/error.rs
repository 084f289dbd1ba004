//! The simulator's errors. Every complaint about the input names the JSON
//! path of the field at fault (`$.forecast.profile.rate_per_hour`).

/// What went wrong, in one word (for exit codes and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The input is malformed or out of range.
    Invalid,
    /// The input file is larger than [`crate::input::MAX_INPUT_BYTES`].
    TooLarge,
    /// A file could not be read or written.
    Io,
    /// The controller did not settle (a livelock in the world).
    Run,
    /// The chart could not be drawn.
    Chart,
    /// A tuned pool could not be written as TOML.
    Encode,
}

/// A simulator error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// A field of the input is wrong.
    #[error("{path}: {message}")]
    Invalid {
        /// JSON path of the field (`$.pool.max_nodes`).
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// The input file is too large.
    #[error("$: the input is {size} bytes; the limit is {limit}")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Reading or writing a file failed.
    #[error("{file}: {source}")]
    Io {
        /// The file.
        file: String,
        /// The error.
        source: std::io::Error,
    },
    /// The chart could not be drawn.
    #[error("drawing the chart: {0}")]
    Chart(String),
    /// A tuned pool could not be written as TOML.
    #[error("writing the pool as TOML: {0}")]
    Encode(String),
    /// A simulation run failed.
    #[error("simulating {strategy}: {message}")]
    Run {
        /// The strategy.
        strategy: String,
        /// Why.
        message: String,
    },
}

impl SimError {
    /// A complaint about the field at `path`.
    pub fn invalid(path: impl Into<String>, message: impl Into<String>) -> SimError {
        SimError::Invalid {
            path: path.into(),
            message: message.into(),
        }
    }

    /// The kind of error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            SimError::Invalid { .. } => ErrorKind::Invalid,
            SimError::TooLarge { .. } => ErrorKind::TooLarge,
            SimError::Io { .. } => ErrorKind::Io,
            SimError::Run { .. } => ErrorKind::Run,
            SimError::Chart(_) => ErrorKind::Chart,
            SimError::Encode(_) => ErrorKind::Encode,
        }
    }

    /// Whether trying again could help (never: the simulator is deterministic).
    pub fn is_retryable(&self) -> bool {
        false
    }

    /// The JSON path of the bad field, for input errors.
    pub fn json_path(&self) -> Option<&str> {
        match self {
            SimError::Invalid { path, .. } => Some(path),
            SimError::TooLarge { .. } => Some("$"),
            _ => None,
        }
    }
}
