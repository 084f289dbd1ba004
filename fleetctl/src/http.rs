//! A minimal HTTP/1.1 client for the daemon's loopback API: `http://` only,
//! one request per connection (`Connection: close`), `Content-Length` or
//! chunked bodies, a size limit and a timeout.

use std::fmt;
use std::time::Duration;

use fleet_core::protocol::Secret;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::CtlError;

/// The largest response accepted.
pub const MAX_RESPONSE_BYTES: usize = 32 << 20;
/// How long one request may take.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// The daemon's HTTP API.
#[derive(Clone)]
pub struct Api {
    base: String,
    authority: String,
    prefix: String,
    token: Option<Secret>,
}

impl fmt::Debug for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Api")
            .field("base", &self.base)
            .field("token", &self.token.is_some())
            .finish()
    }
}

/// A response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body (de-chunked).
    pub body: Vec<u8>,
}

impl Api {
    /// An API client for `base` (`http://host:port[/prefix]`).
    pub fn new(base: &str, token: Option<Secret>) -> Result<Api, CtlError> {
        let rest = base.strip_prefix("http://").ok_or_else(|| {
            CtlError::Failed(format!(
                "{base}: only http:// URLs are supported (the API listens on loopback)"
            ))
        })?;
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(CtlError::Failed(format!("{base}: no host")));
        }
        Ok(Api {
            base: base.trim_end_matches('/').to_owned(),
            authority: authority.to_owned(),
            prefix: prefix.to_owned(),
            token,
        })
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends a request; any status is returned.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, CtlError> {
        let url = format!("{}{path}", self.base);
        let fut = async {
            let mut stream = TcpStream::connect(&self.authority).await.map_err(|e| {
                CtlError::Failed(format!(
                    "cannot reach the daemon at {}: {e} (is it running?)",
                    self.base
                ))
            })?;
            let mut head = format!(
                "{method} {}{path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAccept: application/json\r\nUser-Agent: fleetctl/{}\r\n",
                self.prefix,
                self.authority,
                env!("CARGO_PKG_VERSION")
            );
            if let Some(t) = &self.token {
                head.push_str("Authorization: Bearer ");
                head.push_str(t.expose());
                head.push_str("\r\n");
            }
            if let Some(b) = body {
                head.push_str(&format!(
                    "Content-Type: application/json\r\nContent-Length: {}\r\n",
                    b.len()
                ));
            }
            head.push_str("\r\n");
            let io = |e: std::io::Error| CtlError::Failed(format!("{method} {url}: {e}"));
            stream.write_all(head.as_bytes()).await.map_err(io)?;
            if let Some(b) = body {
                stream.write_all(b).await.map_err(io)?;
            }
            stream.flush().await.map_err(io)?;
            let mut raw = Vec::new();
            let mut limited = (&mut stream).take(MAX_RESPONSE_BYTES as u64 + 1);
            limited.read_to_end(&mut raw).await.map_err(io)?;
            if raw.len() > MAX_RESPONSE_BYTES {
                return Err(CtlError::Failed(format!(
                    "{method} {url}: response larger than {MAX_RESPONSE_BYTES} bytes"
                )));
            }
            parse_response(&raw).map_err(|why| CtlError::Failed(format!("{method} {url}: {why}")))
        };
        tokio::time::timeout(TIMEOUT, fut).await.map_err(|_| {
            CtlError::Failed(format!("{method} {url}: no answer within {TIMEOUT:?}"))
        })?
    }

    /// `GET path`, expecting 2xx and JSON.
    pub async fn get_json(&self, path: &str) -> Result<serde_json::Value, CtlError> {
        let r = self.request("GET", path, None).await?;
        self.json("GET", path, r)
    }

    /// `POST path` with a JSON body, expecting 2xx and JSON.
    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, CtlError> {
        let bytes =
            serde_json::to_vec(body).map_err(|e| CtlError::Failed(format!("POST {path}: {e}")))?;
        let r = self.request("POST", path, Some(&bytes)).await?;
        self.json("POST", path, r)
    }

    fn json(&self, method: &str, path: &str, r: Response) -> Result<serde_json::Value, CtlError> {
        check_status(method, &format!("{}{path}", self.base), &r)?;
        serde_json::from_slice(&r.body).map_err(|e| {
            CtlError::Failed(format!(
                "{method} {}{path}: the daemon answered with invalid JSON ({e})",
                self.base
            ))
        })
    }
}

/// A clear error for a non-2xx answer.
pub fn check_status(method: &str, url: &str, r: &Response) -> Result<(), CtlError> {
    match r.status {
        200..=299 => Ok(()),
        401 => Err(CtlError::Failed(format!(
            "{method} {url}: the daemon refused the API token (401); pass --token, set FLEET_TOKEN, \
             or check <data dir>/admin.token"
        ))),
        status => {
            let detail = serde_json::from_slice::<serde_json::Value>(&r.body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_else(|| {
                    String::from_utf8_lossy(&r.body)
                        .chars()
                        .take(200)
                        .collect::<String>()
                        .trim()
                        .to_owned()
                });
            Err(CtlError::Failed(format!(
                "{method} {url}: HTTP {status}{}{detail}",
                if detail.is_empty() { "" } else { ": " }
            )))
        }
    }
}

/// Parses a complete HTTP/1.1 response.
pub fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("truncated response (no end of headers)")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "response headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1.x response: {status_line:?}"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| format!("bad Content-Length {value:?}"))?,
            );
        }
    }
    let rest = &raw[end + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        rest.get(..n).ok_or("truncated response body")?.to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response { status, body })
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk header")?;
        let size_text = std::str::from_utf8(&rest[..eol]).map_err(|_| "bad chunk header")?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(body);
        }
        let chunk = rest.get(..size).ok_or("truncated chunk")?;
        body.extend_from_slice(chunk);
        rest = rest.get(size + 2..).ok_or("truncated chunk")?;
    }
}
