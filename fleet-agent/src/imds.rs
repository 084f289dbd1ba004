//! The spot interruption watcher: polls the EC2 instance metadata service
//! (IMDSv2) for `spot/instance-action` and reports the deadline.
//!
//! IMDSv2: `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds`
//! gets a session token; `GET /latest/meta-data/spot/instance-action` with
//! `X-aws-ec2-metadata-token` answers 404 while no action is scheduled and
//! `{"action":"terminate","time":"2024-01-01T00:02:00Z"}` once one is.
//! Requests go through `reqwest` (plain HTTP: IMDS is on a link-local
//! address), never through a proxy from the environment, each within a
//! timeout and read up to a size limit.

use std::time::Duration;

use fleet_core::ids::Millis;
use serde::Deserialize;

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

/// An IMDSv2 client for one base URL (`http://host[:port]`; a path is
/// ignored, the API's paths are absolute).
#[derive(Debug, Clone)]
pub struct Imds {
    base: reqwest::Url,
    client: reqwest::Client,
    token: Option<String>,
}

impl Imds {
    /// A client for `base_url`.
    pub fn new(base_url: &str) -> Result<Imds, ImdsError> {
        let base = reqwest::Url::parse(base_url)
            .map_err(|e| ImdsError::Unreachable(format!("{base_url}: {e}")))?;
        if base.scheme() != "http" || base.host_str().is_none_or(str::is_empty) {
            return Err(ImdsError::Unreachable(format!("{base_url}: not http://")));
        }
        // The agent asks for no TLS, but a build that links reqwest's rustls
        // for another crate (fleetctl in the same workspace build) sets it up
        // when the client is built, from the process's crypto provider; the
        // agent's is ring. Installing fails harmlessly when one already is.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .no_proxy()
            .build()
            .map_err(|e| ImdsError::Unreachable(format!("HTTP client: {e}")))?;
        Ok(Imds {
            base,
            client,
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
                            reqwest::Method::PUT,
                            "/latest/api/token",
                            ("X-aws-ec2-metadata-token-ttl-seconds", &ttl),
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
                    reqwest::Method::GET,
                    "/latest/meta-data/spot/instance-action",
                    ("X-aws-ec2-metadata-token", &token),
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

    /// One request with one header; the status and the body, read up to
    /// [`MAX_RESPONSE`].
    async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        (name, value): (&str, &str),
    ) -> Result<(u16, Vec<u8>), ImdsError> {
        let url = self
            .base
            .join(path)
            .map_err(|e| ImdsError::Unreachable(format!("{path}: {e}")))?;
        let unreachable = |e: reqwest::Error| {
            ImdsError::Unreachable(if e.is_timeout() {
                "timed out".to_owned()
            } else {
                innermost(&e)
            })
        };
        let mut resp = self
            .client
            .request(method, url)
            .header(name, value)
            .send()
            .await
            .map_err(unreachable)?;
        let too_large = || ImdsError::BadResponse("response too large".to_owned());
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_RESPONSE as u64)
        {
            return Err(too_large());
        }
        let status = resp.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(unreachable)? {
            if body.len() + chunk.len() > MAX_RESPONSE {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, body))
    }
}

/// The innermost cause ("Connection refused (os error 111)").
fn innermost(e: &reqwest::Error) -> String {
    let mut inner: &dyn std::error::Error = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    inner.to_string()
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fff]Z` (UTC) into ms since the epoch.
pub fn parse_rfc3339_ms(s: &str) -> Option<Millis> {
    fleet_core::time::parse_rfc3339(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_times() {
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
    }

    #[test]
    fn only_plain_http_is_taken() {
        assert!(Imds::new("http://169.254.169.254").is_ok());
        assert!(Imds::new("http://127.0.0.1:8080/latest").is_ok());
        for bad in [
            "https://169.254.169.254",
            "ftp://x",
            "169.254.169.254",
            "http://",
        ] {
            assert!(Imds::new(bad).is_err(), "{bad}");
        }
    }
}
