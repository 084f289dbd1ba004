//! The small HTTPS client fleet's cloud providers share: one HTTP/1.1
//! connection per request (hyper over tokio-rustls with the system's trust
//! roots; plain HTTP for loopback fakes and emulators), a per-request
//! timeout, a bounded response body. Providers call their APIs a few times
//! per node lifecycle, so connection reuse is not worth a pool. [`sigv4`]
//! signs requests for AWS APIs.

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

pub mod sigv4;
pub mod xml;

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

#[cfg(test)]
mod tests {
    use super::*;

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
