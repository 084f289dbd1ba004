//! The built-in exec API: what a claimant gets on the gateway when the node
//! has no build service of its own. It runs over the claim's mTLS stream.
//!
//! # Frame format
//!
//! Every frame is a 4-byte big-endian length `N` (at most
//! [`MAX_FRAME_BYTES`]) followed by `N` bytes of JSON: an object whose
//! `"type"` field names the frame ([`Frame`]). Binary payloads (`data`) are
//! standard base64 with padding. A connection carries any number of requests
//! one after another:
//!
//! | request (client → agent) | replies (agent → client) |
//! |---|---|
//! | `{"type":"exec","argv":[…],"env":{…},"cwd":"rel/dir","timeout_ms":N}` | `{"type":"stdout","data":…}` / `{"type":"stderr","data":…}` in order, then `{"type":"exit","code":0,"signal":null,"timed_out":false}` |
//! | `{"type":"put","path":"rel/file"}`, then `{"type":"data","data":…}`…, then `{"type":"eof"}` | `{"type":"ok","bytes":N}` |
//! | `{"type":"get","path":"rel/file"}` | `{"type":"data","data":…}`…, then `{"type":"ok","bytes":N}` |
//!
//! Any failure is answered with `{"type":"error","message":…}` in place of
//! the final frame; the connection stays usable after an error about a
//! request, and is closed after a malformed frame. `env`, `cwd` and
//! `timeout_ms` are optional. Paths and `cwd` are relative to the claim's
//! file area on the node (`<work_dir>/claims/<claim_id>/`); absolute paths,
//! `..` and symlinks leading out of it are refused. The command runs in its
//! own process group, which is killed on timeout and when the connection
//! ends.
//!
//! [`Client`] speaks this over any `AsyncRead + AsyncWrite` stream.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use fleet_core::protocol::OutputStream;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use crate::exec::{Outcome, ProcessSpec, Stop, spawn_process};

/// Largest frame either side sends or accepts.
pub const MAX_FRAME_BYTES: usize = 1 << 20;
/// Raw bytes per `data`/`stdout`/`stderr` frame.
pub const DATA_CHUNK: usize = 256 * 1024;

/// One frame of the exec API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Frame {
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

/// An exec-API failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecApiError {
    /// The stream failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A frame was malformed or too large.
    #[error("bad frame: {0}")]
    Frame(String),
    /// The peer answered a request with an error.
    #[error("remote error: {0}")]
    Remote(String),
    /// The stream ended in the middle of an exchange.
    #[error("connection closed")]
    Closed,
}

impl ExecApiError {
    /// A short stable name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ExecApiError::Io(_) => "io",
            ExecApiError::Frame(_) => "frame",
            ExecApiError::Remote(_) => "remote",
            ExecApiError::Closed => "closed",
        }
    }

    /// Whether a new connection may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ExecApiError::Io(_) | ExecApiError::Closed)
    }
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, f: &Frame) -> Result<(), ExecApiError> {
    let body = serde_json::to_vec(f).map_err(|e| ExecApiError::Frame(e.to_string()))?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&l| l as usize <= MAX_FRAME_BYTES)
        .ok_or_else(|| ExecApiError::Frame("frame too large".to_owned()))?;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(&body).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Frame>, ExecApiError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(ExecApiError::Frame(format!(
            "{len} bytes is over the limit"
        )));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| ExecApiError::Frame(e.to_string()))
}

fn decode_b64(s: &str) -> Result<Vec<u8>, ExecApiError> {
    B64.decode(s)
        .map_err(|e| ExecApiError::Frame(format!("bad base64: {e}")))
}

/// Resolves a client path inside `root`: relative, no `..`, and (for what
/// exists) no symlink leading out.
pub fn confine(root: &Path, rel: &str) -> Result<PathBuf, String> {
    let p = Path::new(rel);
    if rel.is_empty() {
        return Err("empty path".to_owned());
    }
    let mut out = root.to_path_buf();
    for c in p.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(format!("path {rel:?} leaves the claim's file area"));
            }
        }
    }
    // Symlinks: the deepest existing ancestor must resolve inside root.
    let root_real = root.canonicalize().map_err(|e| e.to_string())?;
    let mut probe = out.as_path();
    loop {
        if let Ok(real) = probe.canonicalize() {
            if !real.starts_with(&root_real) {
                return Err(format!("path {rel:?} leaves the claim's file area"));
            }
            break;
        }
        match probe.parent() {
            Some(parent) => probe = parent,
            None => break,
        }
    }
    Ok(out)
}

/// Serves requests on `stream` until it ends; files and commands live under
/// `root` (created if missing).
pub async fn serve<S>(stream: &mut S, root: &Path) -> Result<(), ExecApiError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio::fs::create_dir_all(root).await?;
    while let Some(frame) = read_frame(stream).await? {
        match frame {
            Frame::Exec {
                argv,
                env,
                cwd,
                timeout_ms,
            } => serve_exec(stream, root, argv, env, cwd, timeout_ms).await?,
            Frame::Put { path } => serve_put(stream, root, &path).await?,
            Frame::Get { path } => serve_get(stream, root, &path).await?,
            other => {
                let message = format!("unexpected frame {other:?}; expected exec, put or get");
                write_frame(stream, &Frame::Error { message }).await?;
            }
        }
    }
    Ok(())
}

async fn serve_exec<S>(
    stream: &mut S,
    root: &Path,
    argv: Vec<String>,
    env: BTreeMap<String, String>,
    cwd: Option<String>,
    timeout_ms: Option<u64>,
) -> Result<(), ExecApiError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let cwd = match cwd.as_deref() {
        Some(c) => match confine(root, c) {
            Ok(p) => p,
            Err(message) => return write_frame(stream, &Frame::Error { message }).await,
        },
        None => root.to_path_buf(),
    };
    let spec = ProcessSpec {
        argv,
        env,
        cwd,
        timeout: timeout_ms.map(Duration::from_millis),
    };
    let (tx, mut rx) = mpsc::channel(16);
    let proc = match spawn_process(&spec, tx) {
        Ok(p) => p,
        Err(e) => {
            let message = format!("cannot start {:?}: {e}", spec.argv.first());
            return write_frame(stream, &Frame::Error { message }).await;
        }
    };
    // Nobody cancels an exec-API command but the connection ending, which
    // drops `proc` and kills its group.
    let (_stop_tx, stop_rx) = watch::channel(Stop::No);
    let wait = proc.wait(stop_rx);
    tokio::pin!(wait);
    let mut outcome = None;
    let mut rx_open = true;
    loop {
        tokio::select! {
            chunk = rx.recv(), if rx_open => match chunk {
                Some((s, bytes)) => {
                    let data = B64.encode(bytes);
                    let f = match s {
                        OutputStream::Stdout => Frame::Stdout { data },
                        OutputStream::Stderr => Frame::Stderr { data },
                    };
                    write_frame(stream, &f).await?;
                }
                None => rx_open = false,
            },
            o = &mut wait, if outcome.is_none() => outcome = Some(o),
        }
        if outcome.is_some() && !rx_open {
            break;
        }
    }
    let exit = match outcome {
        Some(Outcome::Exited(code)) => Frame::Exit {
            code: Some(code),
            signal: None,
            timed_out: false,
        },
        Some(Outcome::Signaled(sig)) => Frame::Exit {
            code: None,
            signal: Some(sig),
            timed_out: false,
        },
        Some(Outcome::TimedOut(_)) => Frame::Exit {
            code: None,
            signal: Some("SIGKILL".to_owned()),
            timed_out: true,
        },
        Some(Outcome::Stopped(_)) | None => Frame::Exit {
            code: None,
            signal: Some("SIGKILL".to_owned()),
            timed_out: false,
        },
    };
    write_frame(stream, &exit).await
}

async fn serve_put<S>(stream: &mut S, root: &Path, path: &str) -> Result<(), ExecApiError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let target = confine(root, path);
    // Always consume the upload, so the stream stays in step after a refusal.
    let mut data = Vec::new();
    loop {
        match read_frame(stream).await? {
            Some(Frame::Data { data: d }) => {
                if target.is_ok() {
                    data.extend(decode_b64(&d)?);
                }
            }
            Some(Frame::Eof) => break,
            Some(other) => {
                return Err(ExecApiError::Frame(format!(
                    "expected data or eof during put, got {other:?}"
                )));
            }
            None => return Err(ExecApiError::Closed),
        }
    }
    let target = match target {
        Ok(t) => t,
        Err(message) => return write_frame(stream, &Frame::Error { message }).await,
    };
    let write = async {
        if let Some(parent) = target.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        let tmp = target.with_extension("fleet-upload");
        tokio::fs::write(&tmp, &data).await?;
        tokio::fs::rename(&tmp, &target).await
    };
    match write.await {
        Ok(()) => {
            let bytes = data.len() as u64;
            write_frame(stream, &Frame::Ok { bytes }).await
        }
        Err(e) => {
            let message = format!("put {path:?}: {e}");
            write_frame(stream, &Frame::Error { message }).await
        }
    }
}

async fn serve_get<S>(stream: &mut S, root: &Path, path: &str) -> Result<(), ExecApiError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let target = match confine(root, path) {
        Ok(t) => t,
        Err(message) => return write_frame(stream, &Frame::Error { message }).await,
    };
    let mut file = match tokio::fs::File::open(&target).await {
        Ok(f) => f,
        Err(e) => {
            let message = format!("get {path:?}: {e}");
            return write_frame(stream, &Frame::Error { message }).await;
        }
    };
    let mut buf = vec![0u8; DATA_CHUNK];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        total += n as u64;
        let data = B64.encode(&buf[..n]);
        write_frame(stream, &Frame::Data { data }).await?;
    }
    write_frame(stream, &Frame::Ok { bytes: total }).await
}

/// What a command run through [`Client::exec`] produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecResult {
    /// Everything it wrote to stdout.
    pub stdout: Vec<u8>,
    /// Everything it wrote to stderr.
    pub stderr: Vec<u8>,
    /// Its exit code, if it exited.
    pub code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<String>,
    /// Whether the timeout killed it.
    pub timed_out: bool,
}

/// A command for [`Client::exec`].
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    /// Command line.
    pub argv: Vec<String>,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// Working directory, relative to the claim's file area.
    pub cwd: Option<String>,
    /// Timeout.
    pub timeout_ms: Option<u64>,
}

/// The claimant's side of the exec API, over any stream (normally the
/// claim's mTLS connection to the gateway).
#[derive(Debug)]
pub struct Client<S> {
    stream: S,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// A client on an open stream.
    pub fn new(stream: S) -> Client<S> {
        Client { stream }
    }

    /// The stream back.
    pub fn into_inner(self) -> S {
        self.stream
    }

    async fn next(&mut self) -> Result<Frame, ExecApiError> {
        read_frame(&mut self.stream)
            .await?
            .ok_or(ExecApiError::Closed)
    }

    /// Runs a command, calling `on_output` with each chunk as it arrives;
    /// returns the exit (with empty `stdout`/`stderr`).
    pub async fn exec_streaming<F>(
        &mut self,
        req: &ExecRequest,
        mut on_output: F,
    ) -> Result<ExecResult, ExecApiError>
    where
        F: FnMut(OutputStream, &[u8]),
    {
        let frame = Frame::Exec {
            argv: req.argv.clone(),
            env: req.env.clone(),
            cwd: req.cwd.clone(),
            timeout_ms: req.timeout_ms,
        };
        write_frame(&mut self.stream, &frame).await?;
        loop {
            match self.next().await? {
                Frame::Stdout { data } => on_output(OutputStream::Stdout, &decode_b64(&data)?),
                Frame::Stderr { data } => on_output(OutputStream::Stderr, &decode_b64(&data)?),
                Frame::Exit {
                    code,
                    signal,
                    timed_out,
                } => {
                    return Ok(ExecResult {
                        code,
                        signal,
                        timed_out,
                        ..ExecResult::default()
                    });
                }
                Frame::Error { message } => return Err(ExecApiError::Remote(message)),
                other => return Err(ExecApiError::Frame(format!("unexpected {other:?}"))),
            }
        }
    }

    /// Runs a command and collects its output.
    pub async fn exec(&mut self, req: &ExecRequest) -> Result<ExecResult, ExecApiError> {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let mut r = self
            .exec_streaming(req, |s, b| match s {
                OutputStream::Stdout => out.extend_from_slice(b),
                OutputStream::Stderr => err.extend_from_slice(b),
            })
            .await?;
        r.stdout = out;
        r.stderr = err;
        Ok(r)
    }

    /// Uploads `data` to `path`; returns the bytes stored.
    pub async fn put(&mut self, path: &str, data: &[u8]) -> Result<u64, ExecApiError> {
        write_frame(
            &mut self.stream,
            &Frame::Put {
                path: path.to_owned(),
            },
        )
        .await?;
        for chunk in data.chunks(DATA_CHUNK) {
            let data = B64.encode(chunk);
            write_frame(&mut self.stream, &Frame::Data { data }).await?;
        }
        write_frame(&mut self.stream, &Frame::Eof).await?;
        match self.next().await? {
            Frame::Ok { bytes } => Ok(bytes),
            Frame::Error { message } => Err(ExecApiError::Remote(message)),
            other => Err(ExecApiError::Frame(format!("unexpected {other:?}"))),
        }
    }

    /// Downloads `path`.
    pub async fn get(&mut self, path: &str) -> Result<Vec<u8>, ExecApiError> {
        write_frame(
            &mut self.stream,
            &Frame::Get {
                path: path.to_owned(),
            },
        )
        .await?;
        let mut out = Vec::new();
        loop {
            match self.next().await? {
                Frame::Data { data } => out.extend(decode_b64(&data)?),
                Frame::Ok { .. } => return Ok(out),
                Frame::Error { message } => return Err(ExecApiError::Remote(message)),
                other => return Err(ExecApiError::Frame(format!("unexpected {other:?}"))),
            }
        }
    }
}
