//! The exec API: what a claimant speaks over the claim's mTLS stream to a
//! node whose gateway has no build service of its own.
//!
//! Every frame is a 4-byte big-endian length `N` (at most
//! [`MAX_EXEC_FRAME_BYTES`]) followed by `N` bytes of JSON: an object whose
//! `"type"` names the frame ([`ExecFrame`]). There is no version envelope:
//! the exec API is versioned with the protocol. Binary payloads (`data`) are
//! standard base64 with padding, at most [`EXEC_DATA_CHUNK`] raw bytes per
//! frame. A connection carries any number of requests one after another:
//!
//! | request (client → agent) | replies (agent → client) |
//! |---|---|
//! | `{"type":"exec","argv":[…],"env":{…},"cwd":"rel/dir","timeout_ms":N}` | `stdout` / `stderr` frames in order, then `{"type":"exit","code":0,"signal":null,"timed_out":false}` |
//! | `{"type":"put","path":"rel/file"}`, then `data` frames, then `{"type":"eof"}` | `{"type":"ok","bytes":N}` |
//! | `{"type":"get","path":"rel/file"}` | `data` frames, then `{"type":"ok","bytes":N}` |
//!
//! Any failure is answered with `{"type":"error","message":…}` in place of
//! the final frame; the connection stays usable after an error about a
//! request, and is closed after a malformed frame. Paths and `cwd` are
//! relative to the claim's file area on the node; absolute paths, `..` and
//! symlinks leading out of it are refused. The command runs in its own
//! process group, killed on timeout and when the connection ends.
//!
//! This module is the pure codec; the agent serves it and `fleet-client`
//! speaks it over real streams.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::DecodeError;

/// Largest frame body either side sends or accepts.
pub const MAX_EXEC_FRAME_BYTES: usize = 1 << 20;
/// Raw bytes per `data`/`stdout`/`stderr` frame.
pub const EXEC_DATA_CHUNK: usize = 256 * 1024;

/// One frame of the exec API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ExecFrame {
    /// Run a command.
    Exec {
        /// Command line.
        argv: Vec<String>,
        /// Extra environment.
        #[serde(default)]
        env: BTreeMap<String, String>,
        /// Working directory, relative to the claim's file area.
        #[serde(default)]
        cwd: Option<String>,
        /// Kill the process group after this long.
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    /// Upload a file: followed by `data` frames and `eof`.
    Put {
        /// Relative path.
        path: String,
    },
    /// Download a file.
    Get {
        /// Relative path.
        path: String,
    },
    /// A piece of a file (base64).
    Data {
        /// Base64 bytes.
        data: String,
    },
    /// End of an upload.
    Eof,
    /// Command output (base64).
    Stdout {
        /// Base64 bytes.
        data: String,
    },
    /// Command error output (base64).
    Stderr {
        /// Base64 bytes.
        data: String,
    },
    /// The command ended.
    Exit {
        /// Exit code, if it exited.
        code: Option<i32>,
        /// The signal that killed it, if one did.
        signal: Option<String>,
        /// Whether the timeout killed it.
        timed_out: bool,
    },
    /// A put or get finished.
    Ok {
        /// Bytes moved.
        bytes: u64,
    },
    /// The request failed.
    Error {
        /// Why.
        message: String,
    },
}

/// An exec-API failure, on either side of the connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecError {
    /// The stream failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A frame was malformed, too large or out of place.
    #[error("bad frame: {0}")]
    Frame(String),
    /// The node answered the request with an error (the connection stays
    /// usable).
    #[error("remote error: {0}")]
    Remote(String),
    /// The stream ended in the middle of an exchange.
    #[error("connection closed")]
    Closed,
}

impl ExecError {
    /// A short stable name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ExecError::Io(_) => "io",
            ExecError::Frame(_) => "frame",
            ExecError::Remote(_) => "remote",
            ExecError::Closed => "closed",
        }
    }

    /// Whether a new connection may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ExecError::Io(_) | ExecError::Closed)
    }
}

impl ExecFrame {
    /// The frame as sent: length prefix and JSON body.
    pub fn to_wire(&self) -> Result<Vec<u8>, DecodeError> {
        let body = serde_json::to_vec(self).map_err(|e| DecodeError::Invalid(e.to_string()))?;
        let len = u32::try_from(body.len())
            .ok()
            .filter(|&l| l as usize <= MAX_EXEC_FRAME_BYTES)
            .ok_or(DecodeError::TooLarge {
                len: body.len(),
                max: MAX_EXEC_FRAME_BYTES,
            })?;
        let mut out = Vec::with_capacity(4 + body.len());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// The body length a frame's 4-byte prefix announces, refused over the
    /// limit before anything is allocated.
    pub fn body_len(prefix: [u8; 4]) -> Result<usize, DecodeError> {
        let len = u32::from_be_bytes(prefix) as usize;
        if len > MAX_EXEC_FRAME_BYTES {
            return Err(DecodeError::TooLarge {
                len,
                max: MAX_EXEC_FRAME_BYTES,
            });
        }
        Ok(len)
    }

    /// Decodes a frame body (the JSON after the prefix).
    pub fn from_body(body: &[u8]) -> Result<ExecFrame, DecodeError> {
        if body.len() > MAX_EXEC_FRAME_BYTES {
            return Err(DecodeError::TooLarge {
                len: body.len(),
                max: MAX_EXEC_FRAME_BYTES,
            });
        }
        serde_json::from_slice(body).map_err(super::classify)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_round_trips_through_its_wire_form() {
        let f = ExecFrame::Exec {
            argv: vec!["make".into(), "-j8".into()],
            env: BTreeMap::new(),
            cwd: Some("src".into()),
            timeout_ms: None,
        };
        let wire = f.to_wire().unwrap_or_default();
        let len = ExecFrame::body_len([wire[0], wire[1], wire[2], wire[3]]);
        assert_eq!(len.ok(), Some(wire.len() - 4));
        assert_eq!(ExecFrame::from_body(&wire[4..]).ok(), Some(f));
    }

    #[test]
    fn bad_frames_are_typed_errors() {
        assert_eq!(
            ExecFrame::body_len(u32::MAX.to_be_bytes()).map_err(|e| e.kind()),
            Err("too_large")
        );
        assert_eq!(
            ExecFrame::from_body(b"{\"type\":\"teleport\"}").map_err(|e| e.kind()),
            Err("unknown_variant")
        );
        assert_eq!(
            ExecFrame::from_body(b"{\"type\":").map_err(|e| e.kind()),
            Err("malformed")
        );
    }
}
