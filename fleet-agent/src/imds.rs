//! The spot interruption watcher: polls the EC2 instance metadata service
//! (IMDSv2) for `spot/instance-action` and reports the deadline.
//!
//! IMDSv2: `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds`
//! gets a session token; `GET /latest/meta-data/spot/instance-action` with
//! `X-aws-ec2-metadata-token` answers 404 while no action is scheduled and
//! `{"action":"terminate","time":"2024-01-01T00:02:00Z"}` once one is. The
//! HTTP client is a minimal HTTP/1.1 one (IMDS is plain HTTP on a link-local
//! address).

use std::time::Duration;

use fleet_core::ids::Millis;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Token lifetime asked for.
const TOKEN_TTL_SECONDS: u32 = 21_600;
/// Largest response read.
const MAX_RESPONSE: usize = 64 * 1024;
/// Per-request timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// An IMDS failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ImdsError {
    /// The endpoint could not be reached or timed out.
    #[error("imds unreachable: {0}")]
    Unreachable(String),
    /// The response could not be understood.
    #[error("imds bad response: {0}")]
    BadResponse(String),
}

impl ImdsError {
    /// A short stable name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ImdsError::Unreachable(_) => "unreachable",
            ImdsError::BadResponse(_) => "bad_response",
        }
    }

    /// Whether polling again may help.
    pub fn is_retryable(&self) -> bool {
        true
    }
}

/// A scheduled spot action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceAction {
    /// `terminate`, `stop` or `hibernate`.
    pub action: String,
    /// When (ms since epoch).
    pub deadline: Millis,
}

#[derive(Deserialize)]
struct RawAction {
    action: String,
    time: String,
}

/// An IMDSv2 client for one base URL (`http://host[:port]`).
#[derive(Debug, Clone)]
pub struct Imds {
    authority: String,
    token: Option<String>,
}

impl Imds {
    /// A client for `base_url`.
    pub fn new(base_url: &str) -> Result<Imds, ImdsError> {
        let rest = base_url
            .strip_prefix("http://")
            .ok_or_else(|| ImdsError::Unreachable(format!("{base_url}: not http://")))?;
        let authority = rest.split('/').next().unwrap_or("").to_owned();
        let authority = if authority.contains(':') {
            authority
        } else {
            format!("{authority}:80")
        };
        Ok(Imds {
            authority,
            token: None,
        })
    }

    /// Checks for a scheduled action (`None` on 404).
    pub async fn instance_action(&mut self) -> Result<Option<InstanceAction>, ImdsError> {
        for _ in 0..2 {
            let token = match &self.token {
                Some(t) => t.clone(),
                None => {
                    let ttl = TOKEN_TTL_SECONDS.to_string();
                    let (status, body) = self
                        .request(
                            "PUT",
                            "/latest/api/token",
                            &[("X-aws-ec2-metadata-token-ttl-seconds", &ttl)],
                        )
                        .await?;
                    if status != 200 {
                        return Err(ImdsError::BadResponse(format!("token: HTTP {status}")));
                    }
                    let t = String::from_utf8_lossy(&body).trim().to_owned();
                    self.token = Some(t.clone());
                    t
                }
            };
            let (status, body) = self
                .request(
                    "GET",
                    "/latest/meta-data/spot/instance-action",
                    &[("X-aws-ec2-metadata-token", &token)],
                )
                .await?;
            match status {
                404 => return Ok(None),
                // The token expired: get a fresh one and ask again.
                401 => self.token = None,
                200 => {
                    let raw: RawAction = serde_json::from_slice(&body)
                        .map_err(|e| ImdsError::BadResponse(e.to_string()))?;
                    let deadline = parse_rfc3339_ms(&raw.time).ok_or_else(|| {
                        ImdsError::BadResponse(format!("bad time {:?}", raw.time))
                    })?;
                    return Ok(Some(InstanceAction {
                        action: raw.action,
                        deadline,
                    }));
                }
                other => return Err(ImdsError::BadResponse(format!("HTTP {other}"))),
            }
        }
        Err(ImdsError::BadResponse("token refused twice".to_owned()))
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<(u16, Vec<u8>), ImdsError> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.request_inner(method, path, headers))
            .await
            .map_err(|_| ImdsError::Unreachable("timed out".to_owned()))?
    }

    async fn request_inner(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<(u16, Vec<u8>), ImdsError> {
        let io = |e: std::io::Error| ImdsError::Unreachable(e.to_string());
        let mut s = TcpStream::connect(&self.authority).await.map_err(io)?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: 0\r\n",
            self.authority
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await.map_err(io)?;
        let mut buf = Vec::new();
        (&mut s)
            .take(MAX_RESPONSE as u64 + 1)
            .read_to_end(&mut buf)
            .await
            .map_err(io)?;
        if buf.len() > MAX_RESPONSE {
            return Err(ImdsError::BadResponse("response too large".to_owned()));
        }
        parse_response(&buf)
    }
}

/// Splits an HTTP/1.1 response into status and body (Content-Length,
/// chunked, or to the end).
fn parse_response(buf: &[u8]) -> Result<(u16, Vec<u8>), ImdsError> {
    let bad = |w: &str| ImdsError::BadResponse(w.to_owned());
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| bad("non-UTF-8 header"))?;
    let body = &buf[end + 4..];
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    let mut len = None;
    let mut chunked = false;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "content-length" {
                len = v.parse::<usize>().ok();
            } else if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                chunked = true;
            }
        }
    }
    if chunked {
        let mut out = Vec::new();
        let mut rest = body;
        loop {
            let nl = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| bad("bad chunk"))?;
            let size_str = std::str::from_utf8(&rest[..nl]).map_err(|_| bad("bad chunk"))?;
            let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| bad("bad chunk size"))?;
            if size == 0 {
                return Ok((status, out));
            }
            let data = rest
                .get(nl + 2..nl + 2 + size)
                .ok_or_else(|| bad("short chunk"))?;
            out.extend_from_slice(data);
            rest = rest
                .get(nl + 4 + size..)
                .ok_or_else(|| bad("short chunk"))?;
        }
    }
    let body = match len {
        Some(n) => body.get(..n).ok_or_else(|| bad("short body"))?,
        None => body,
    };
    Ok((status, body.to_vec()))
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fff]Z` (UTC) into ms since the epoch.
pub fn parse_rfc3339_ms(s: &str) -> Option<Millis> {
    fleet_core::time::parse_rfc3339(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_times_and_responses() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_ms("2017-09-18T08:22:00Z"),
            Some(1_505_722_920_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2017-09-18T08:22:00.5Z"),
            Some(1_505_722_920_500)
        );
        assert_eq!(parse_rfc3339_ms("nonsense"), None);
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi");
        assert_eq!(r, Ok((200, b"hi".to_vec())));
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
        );
        assert_eq!(r, Ok((200, b"hi".to_vec())));
    }
}
