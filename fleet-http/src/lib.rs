//! The small HTTPS client fleet's cloud providers share: one HTTP/1.1
//! connection per request (hyper over tokio-rustls with the system's trust
//! roots; plain HTTP for loopback fakes and emulators), a per-request
//! timeout, a bounded response body. Providers call their APIs a few times
//! per node lifecycle, so connection reuse is not worth a pool.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Uri;
use hyper::header::{HOST, HeaderName, HeaderValue};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

pub use hyper::header::HeaderMap;

/// The largest response body read.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The base URL or a header cannot be used (a configuration error).
    #[error("{0}")]
    Invalid(String),
    /// Connecting, TLS or the exchange failed; trying again may work.
    #[error("{0}")]
    Io(String),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// An answer: status, headers, body.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// The body (at most [`MAX_BODY_BYTES`]).
    pub body: Bytes,
}

impl Answer {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// A client for one base URL (`https://api.hetzner.cloud/v1`,
/// `https://ec2.us-east-1.amazonaws.com`).
pub struct HttpClient {
    host: String,
    port: u16,
    https: bool,
    prefix: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    timeout: Duration,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("prefix", &self.prefix)
            .field("https", &self.https)
            .finish_non_exhaustive()
    }
}

fn bad_url(url: &str, why: &str) -> HttpError {
    HttpError::Invalid(format!("URL {url:?}: {why}"))
}

impl HttpClient {
    /// A client for `base` (`http://` only for loopback fakes).
    pub fn new(base: &str, timeout: Duration) -> Result<Self, HttpError> {
        let uri: Uri = base.parse().map_err(|_| bad_url(base, "not a URL"))?;
        let host = uri
            .host()
            .ok_or_else(|| bad_url(base, "no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(bad_url(
                    base,
                    "the scheme must be https (or http for a fake)",
                ));
            }
        };
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let prefix = uri.path().trim_end_matches('/').to_owned();
        let tls = if https {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                // A certificate the store cannot use is skipped, as browsers do.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(HttpError::Invalid(
                    "no trusted root certificates found on this system".to_owned(),
                ));
            }
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| HttpError::Invalid(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
            let name = ServerName::try_from(host.clone())
                .map_err(|_| bad_url(base, "the host is not a valid TLS server name"))?;
            Some((TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        Ok(HttpClient {
            host,
            port,
            https,
            prefix,
            tls,
            timeout,
        })
    }

    /// The `Host` header value this client sends (with the port when it is
    /// not the scheme's default), which request signatures cover.
    pub fn host_header(&self) -> String {
        let default = if self.https { 443 } else { 80 };
        if self.port == default {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The base URL's path (`/v1`), which `send` puts before `path`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Sends `method path` (relative to the base, with its query) with
    /// `headers` and an optional body.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: Option<Vec<u8>>,
    ) -> Result<Answer, HttpError> {
        tokio::time::timeout(self.timeout, self.send_once(method, path, headers, body))
            .await
            .map_err(|_| HttpError::Timeout(self.timeout))?
    }

    async fn send_once(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: Option<Vec<u8>>,
    ) -> Result<Answer, HttpError> {
        let io_err = |e: &dyn std::fmt::Display| HttpError::Io(format!("{method} {path}: {e}"));
        let mut builder = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.prefix))
            .header(HOST, self.host_header())
            .header("user-agent", concat!("fleet/", env!("CARGO_PKG_VERSION")));
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| HttpError::Invalid(format!("header name {name:?}")))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| HttpError::Invalid(format!("the value of header {name}")))?;
            builder = builder.header(name, value);
        }
        let request = builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| HttpError::Invalid(format!("{method} {path}: {e}")))?;
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| io_err(&e))?;
        let _ = tcp.set_nodelay(true);
        let response = match &self.tls {
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| io_err(&e))?;
                exchange(TokioIo::new(tls), request).await
            }
            None => exchange(TokioIo::new(tcp), request).await,
        }
        .map_err(|e| io_err(&e))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let limited = http_body_util::Limited::new(response.into_body(), MAX_BODY_BYTES);
        let body = limited.collect().await.map_err(|e| io_err(&e))?.to_bytes();
        Ok(Answer {
            status,
            headers,
            body,
        })
    }
}

async fn exchange<T>(
    io: TokioIo<T>,
    request: hyper::Request<Full<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, hyper::Error>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    // The connection task drives the exchange and then the body the caller
    // reads; it ends with them.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(request).await
}

/// Milliseconds since the Unix epoch of an RFC 3339 timestamp as cloud
/// APIs write them (`2026-11-25T20:00:00+00:00`, `…Z`, fractions allowed).
pub fn rfc3339_millis(ts: &str) -> Option<u64> {
    let b = ts.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        std::str::from_utf8(b.get(r)?).ok()?.parse().ok()
    };
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') || b.get(10) != Some(&b'T') {
        return None;
    }
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = b.get(19..)?;
    let mut ms = 0;
    if rest.first() == Some(&b'.') {
        let digits = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        let frac = std::str::from_utf8(&rest[1..1 + digits]).ok()?;
        ms = frac
            .chars()
            .chain("000".chars())
            .take(3)
            .collect::<String>()
            .parse()
            .ok()?;
        rest = &rest[1 + digits..];
    }
    let offset_s = match rest {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let h = i64::from(h1.wrapping_sub(b'0')) * 10 + i64::from(h2.wrapping_sub(b'0'));
            let m = i64::from(m1.wrapping_sub(b'0')) * 10 + i64::from(m2.wrapping_sub(b'0'));
            let s = (h * 60 + m) * 60;
            if *sign == b'+' { s } else { -s }
        }
        _ => return None,
    };
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3_600 + mm * 60 + ss - offset_s;
    u64::try_from(secs * 1_000 + ms).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse_as_the_api_writes_them() {
        assert_eq!(rfc3339_millis("1970-01-01T00:00:00+00:00"), Some(0));
        assert_eq!(
            rfc3339_millis("2016-01-30T23:50:00+00:00"),
            Some(1_454_197_800_000)
        );
        assert_eq!(
            rfc3339_millis("2016-01-30T23:50:00Z"),
            Some(1_454_197_800_000)
        );
        assert_eq!(
            rfc3339_millis("2016-01-31T00:50:00.25+01:00"),
            Some(1_454_197_800_250)
        );
        assert_eq!(
            rfc3339_millis("2024-02-29T12:00:00+00:00"),
            Some(1_709_208_000_000)
        );
        for bad in [
            "",
            "yesterday",
            "2016-13-01T00:00:00Z",
            "2016-01-30 23:50:00Z",
            "2016-01-30T23:50:00",
        ] {
            assert_eq!(rfc3339_millis(bad), None, "{bad}");
        }
    }

    #[test]
    fn base_urls_are_checked() {
        let t = Duration::from_secs(1);
        assert!(matches!(
            HttpClient::new("ftp://x", t),
            Err(HttpError::Invalid(_))
        ));
        assert!(matches!(
            HttpClient::new("not a url", t),
            Err(HttpError::Invalid(_))
        ));
        let c = HttpClient::new("http://127.0.0.1:8080/v1/", t).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.host_header(), "127.0.0.1:8080");
        assert_eq!(c.prefix(), "/v1");
        let c = HttpClient::new("http://example.com", t).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.host_header(), "example.com");
    }
}
