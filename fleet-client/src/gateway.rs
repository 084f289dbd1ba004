//! The claim's mTLS connection to its node's gateway: trust the pool CA
//! from the bundle, present the claim's certificate, and verify the node's
//! server name (`<node id, lowercase, "_" → "-">.node.fleet`).

use std::sync::Arc;

use fleet_core::protocol::CredentialsBundle;
use fleet_core::subjects::Subjects;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The stream a claim's gateway connection gives: TLS over TCP.
pub type GatewayStream = TlsStream<TcpStream>;

/// Why the gateway could not be reached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The bundle's CA, certificate or key cannot be used.
    #[error("credentials: {0}")]
    Credentials(String),
    /// The node's address could not be reached.
    #[error("cannot reach the node at {endpoint}: {source}")]
    Unreachable {
        /// `host:port`.
        endpoint: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS handshake failed: the gateway refused the certificate
    /// (released, expired or another claim's), or is not the node named.
    #[error("TLS with the node at {endpoint}: {source}")]
    Handshake {
        /// `host:port`.
        endpoint: String,
        /// Why.
        source: std::io::Error,
    },
}

impl ConnectError {
    /// A short stable name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ConnectError::Credentials(_) => "credentials",
            ConnectError::Unreachable { .. } => "unreachable",
            ConnectError::Handshake { .. } => "handshake",
        }
    }

    /// Whether trying again may succeed (the node may still be booting its
    /// gateway, or a packet was lost).
    pub fn is_retryable(&self) -> bool {
        matches!(self, ConnectError::Unreachable { .. })
    }
}

/// The TLS client configuration a bundle describes.
pub fn tls_config(bundle: &CredentialsBundle) -> Result<rustls::ClientConfig, ConnectError> {
    let bad =
        |what: &str, e: &dyn std::fmt::Display| ConnectError::Credentials(format!("{what}: {e}"));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(bundle.ca_pem.as_bytes()) {
        let c = c.map_err(|e| bad("pool CA", &e))?;
        roots.add(c).map_err(|e| bad("pool CA", &e))?;
    }
    if roots.is_empty() {
        return Err(ConnectError::Credentials(
            "pool CA: no certificate in the bundle".to_owned(),
        ));
    }
    let certs = CertificateDer::pem_slice_iter(bundle.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("claim certificate", &e))?;
    // The parse error never contains key material.
    let key = PrivateKeyDer::from_pem_slice(bundle.key_pem.expose().as_bytes())
        .map_err(|e| ConnectError::Credentials(format!("claim key: unreadable ({e:?})")))?;
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("TLS", &e))?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| bad("claim certificate", &e))
}

/// Opens the claim's mTLS connection to its node's gateway.
pub async fn connect(bundle: &CredentialsBundle) -> Result<GatewayStream, ConnectError> {
    let config = tls_config(bundle)?;
    let name = ServerName::try_from(Subjects::node_server_name(&bundle.node))
        .map_err(|e| ConnectError::Credentials(format!("node server name: {e}")))?;
    let endpoint = bundle.endpoint.clone();
    let tcp = TcpStream::connect(endpoint.as_str())
        .await
        .map_err(|source| ConnectError::Unreachable {
            endpoint: endpoint.clone(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|source| ConnectError::Handshake { endpoint, source })
}
