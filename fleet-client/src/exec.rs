//! The exec API's client: run a command on the claimed node with its output
//! streamed back, and move files in and out of the claim's file area. The
//! frames are [`fleet_core::protocol::ExecFrame`] (PROTOCOL.md, "Exec API").

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
pub use fleet_core::protocol::ExecError;
use fleet_core::protocol::{EXEC_DATA_CHUNK, ExecFrame, OutputStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, f: &ExecFrame) -> Result<(), ExecError> {
    let wire = f.to_wire().map_err(|e| ExecError::Frame(e.to_string()))?;
    w.write_all(&wire).await?;
    w.flush().await?;
    Ok(())
}

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<ExecFrame, ExecError> {
    let mut prefix = [0u8; 4];
    match r.read_exact(&mut prefix).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(ExecError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = ExecFrame::body_len(prefix).map_err(|e| ExecError::Frame(e.to_string()))?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    ExecFrame::from_body(&body).map_err(|e| ExecError::Frame(e.to_string()))
}

fn decode_b64(s: &str) -> Result<Vec<u8>, ExecError> {
    B64.decode(s)
        .map_err(|e| ExecError::Frame(format!("bad base64: {e}")))
}

/// What a command run through [`ExecClient::exec`] produced.
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

/// A command for [`ExecClient::exec`].
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

impl ExecRequest {
    /// A command line with no extra environment, in the claim's file area,
    /// without a timeout.
    pub fn new<I, S>(argv: I) -> ExecRequest
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ExecRequest {
            argv: argv.into_iter().map(Into::into).collect(),
            ..ExecRequest::default()
        }
    }
}

/// The claimant's side of the exec API, over any stream (normally the
/// claim's mTLS connection to the gateway, [`crate::gateway::connect`]).
#[derive(Debug)]
pub struct ExecClient<S> {
    stream: S,
}

impl<S: AsyncRead + AsyncWrite + Unpin> ExecClient<S> {
    /// A client on an open stream.
    pub fn new(stream: S) -> ExecClient<S> {
        ExecClient { stream }
    }

    /// The stream back.
    pub fn into_inner(self) -> S {
        self.stream
    }

    async fn next(&mut self) -> Result<ExecFrame, ExecError> {
        read_frame(&mut self.stream).await
    }

    /// Runs a command, calling `on_output` with each chunk as it arrives;
    /// returns the exit (with empty `stdout`/`stderr`).
    pub async fn exec_streaming<F>(
        &mut self,
        req: &ExecRequest,
        mut on_output: F,
    ) -> Result<ExecResult, ExecError>
    where
        F: FnMut(OutputStream, &[u8]),
    {
        let frame = ExecFrame::Exec {
            argv: req.argv.clone(),
            env: req.env.clone(),
            cwd: req.cwd.clone(),
            timeout_ms: req.timeout_ms,
        };
        write_frame(&mut self.stream, &frame).await?;
        loop {
            match self.next().await? {
                ExecFrame::Stdout { data } => on_output(OutputStream::Stdout, &decode_b64(&data)?),
                ExecFrame::Stderr { data } => on_output(OutputStream::Stderr, &decode_b64(&data)?),
                ExecFrame::Exit {
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
                ExecFrame::Error { message } => return Err(ExecError::Remote(message)),
                other => return Err(ExecError::Frame(format!("unexpected {other:?}"))),
            }
        }
    }

    /// Runs a command and collects its output.
    pub async fn exec(&mut self, req: &ExecRequest) -> Result<ExecResult, ExecError> {
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
    pub async fn put(&mut self, path: &str, data: &[u8]) -> Result<u64, ExecError> {
        write_frame(
            &mut self.stream,
            &ExecFrame::Put {
                path: path.to_owned(),
            },
        )
        .await?;
        for chunk in data.chunks(EXEC_DATA_CHUNK) {
            let data = B64.encode(chunk);
            write_frame(&mut self.stream, &ExecFrame::Data { data }).await?;
        }
        write_frame(&mut self.stream, &ExecFrame::Eof).await?;
        match self.next().await? {
            ExecFrame::Ok { bytes } => Ok(bytes),
            ExecFrame::Error { message } => Err(ExecError::Remote(message)),
            other => Err(ExecError::Frame(format!("unexpected {other:?}"))),
        }
    }

    /// Downloads `path`.
    pub async fn get(&mut self, path: &str) -> Result<Vec<u8>, ExecError> {
        write_frame(
            &mut self.stream,
            &ExecFrame::Get {
                path: path.to_owned(),
            },
        )
        .await?;
        let mut out = Vec::new();
        loop {
            match self.next().await? {
                ExecFrame::Data { data } => out.extend(decode_b64(&data)?),
                ExecFrame::Ok { .. } => return Ok(out),
                ExecFrame::Error { message } => return Err(ExecError::Remote(message)),
                other => return Err(ExecError::Frame(format!("unexpected {other:?}"))),
            }
        }
    }
}
