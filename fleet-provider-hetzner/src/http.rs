//! A small HTTPS client for one API base URL: one HTTP/1.1 connection per
//! request (hyper over tokio-rustls with the system's trust roots; plain
//! HTTP for a loopback fake), a bearer token, a timeout.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fleet_core::protocol::Secret;
use fleet_core::provider::ProviderError;
use http_body_util::{BodyExt, Full};
use hyper::Uri;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderMap, HeaderValue};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The largest response body read (a page of 50 servers is ~100 KiB).
const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// An answer: status, headers, body.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

/// A client for one base URL (`https://api.hetzner.cloud/v1`).
pub(crate) struct HttpClient {
    host: String,
    port: u16,
    prefix: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    token: Secret,
    timeout: Duration,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("prefix", &self.prefix)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

fn bad_url(url: &str, why: &str) -> ProviderError {
    ProviderError::Permanent(format!("api_url {url:?}: {why}"))
}

impl HttpClient {
    /// A client for `base` (`http://` only for loopback fakes).
    pub(crate) fn new(base: &str, token: Secret, timeout: Duration) -> Result<Self, ProviderError> {
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
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // A certificate the store cannot use is skipped, as browsers do.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(ProviderError::Permanent(
                    "no trusted root certificates found on this system".to_owned(),
                ));
            }
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| ProviderError::Permanent(format!("TLS: {e}")))?
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
            prefix,
            tls,
            token,
            timeout,
        })
    }

    /// Sends `method path` (path relative to the base, with its query) with
    /// an optional JSON body.
    pub(crate) async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, ProviderError> {
        tokio::time::timeout(self.timeout, self.send_once(method, path, body))
            .await
            .map_err(|_| {
                ProviderError::Transient(format!(
                    "{method} {path}: no answer within {:?}",
                    self.timeout
                ))
            })?
    }

    async fn send_once(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, ProviderError> {
        let io_err =
            |e: &dyn std::fmt::Display| ProviderError::Transient(format!("{method} {path}: {e}"));
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| io_err(&e))?;
        let _ = tcp.set_nodelay(true);
        let mut builder = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.prefix))
            .header(HOST, self.host.as_str())
            .header(
                "user-agent",
                concat!("fleet-provider-hetzner/", env!("CARGO_PKG_VERSION")),
            );
        let bearer = HeaderValue::from_str(&format!("Bearer {}", self.token.expose()))
            .map_err(|_| ProviderError::Permanent("the API token is not a header value".into()))?;
        builder = builder.header(AUTHORIZATION, bearer);
        if body.is_some() {
            builder = builder.header(CONTENT_TYPE, "application/json");
        }
        let request = builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ProviderError::Permanent(format!("{method} {path}: {e}")))?;
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
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let result = sender.send_request(request).await;
    // The body is read by the caller; the connection task ends with it.
    drop(driver);
    result
}
