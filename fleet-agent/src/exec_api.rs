//! The built-in exec API: what a claimant gets on the gateway when the node
//! has no build service of its own. It runs over the claim's mTLS stream.
//!
//! The frames and their format are
//! [`fleet_core::protocol::ExecFrame`] (documented there and in
//! PROTOCOL.md); `fleet-client` is the claimant's side.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use fleet_core::protocol::{ExecFrame as Frame, OutputStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use crate::exec::{Outcome, ProcessSpec, Stop, spawn_process};

/// Largest frame either side sends or accepts.
pub const MAX_FRAME_BYTES: usize = fleet_core::protocol::MAX_EXEC_FRAME_BYTES;
/// Raw bytes per `data`/`stdout`/`stderr` frame.
pub const DATA_CHUNK: usize = fleet_core::protocol::EXEC_DATA_CHUNK;

/// An exec-API failure (the protocol's, shared with the client).
pub use fleet_core::protocol::ExecError as ExecApiError;

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, f: &Frame) -> Result<(), ExecApiError> {
    let wire = f
        .to_wire()
        .map_err(|e| ExecApiError::Frame(e.to_string()))?;
    w.write_all(&wire).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Frame>, ExecApiError> {
    let mut prefix = [0u8; 4];
    match r.read_exact(&mut prefix).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = Frame::body_len(prefix).map_err(|e| ExecApiError::Frame(e.to_string()))?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Frame::from_body(&body)
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
