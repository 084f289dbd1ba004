//! TLS configuration: PEM in, rustls (ring provider) configs out, and the
//! node id of a verified client certificate.

use std::fmt;
use std::sync::Arc;

use fleet_core::ids::NodeId;
use fleet_core::protocol::Secret;
use fleet_core::subjects::Subjects;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::config::WsError;

/// The server's TLS material (PEM).
#[derive(Clone)]
pub struct ServerTlsConfig {
    /// The server certificate chain, leaf first.
    pub cert_chain_pem: String,
    /// The server's private key.
    pub key_pem: Secret,
    /// When set, client certificates signed by this CA are verified and the
    /// node id in their URI SAN (`fleet://node/<id>`) is given to
    /// [`crate::AgentAuth`]. Clients without a certificate still connect
    /// (bootstrap sessions, claim-plane callers).
    pub client_ca_pem: Option<String>,
}

impl fmt::Debug for ServerTlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTlsConfig")
            .field("key_pem", &self.key_pem)
            .field("client_ca", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

/// A client certificate and its key (PEM).
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    /// The certificate chain, leaf first.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: Secret,
}

/// A client's TLS material (PEM).
#[derive(Clone)]
pub struct ClientTlsConfig {
    /// The CA that signed the server's certificate.
    pub ca_pem: String,
    /// The client certificate to present (an agent's node identity).
    pub identity: Option<ClientIdentity>,
    /// The name to verify the server certificate against; the URL's host
    /// when `None`.
    pub server_name: Option<String>,
}

impl fmt::Debug for ClientTlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTlsConfig")
            .field("identity", &self.identity.is_some())
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, WsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| WsError::TlsConfig(format!("{what}: {e}")))?;
    if certs.is_empty() {
        return Err(WsError::TlsConfig(format!("{what}: no certificate in PEM")));
    }
    Ok(certs)
}

fn key(pem: &Secret, what: &str) -> Result<PrivateKeyDer<'static>, WsError> {
    // The parse error never contains key material, but keep it short anyway.
    PrivateKeyDer::from_pem_slice(pem.expose().as_bytes())
        .map_err(|e| WsError::TlsConfig(format!("{what}: unreadable private key ({e:?})")))
}

fn roots(pem: &str, what: &str) -> Result<Arc<RootCertStore>, WsError> {
    let mut store = RootCertStore::empty();
    for c in certs(pem, what)? {
        store
            .add(c)
            .map_err(|e| WsError::TlsConfig(format!("{what}: {e}")))?;
    }
    Ok(Arc::new(store))
}

impl ServerTlsConfig {
    /// The rustls server configuration.
    pub fn build(&self) -> Result<Arc<ServerConfig>, WsError> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| WsError::TlsConfig(e.to_string()))?;
        let builder = match &self.client_ca_pem {
            Some(ca) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    roots(ca, "client CA")?,
                    provider(),
                )
                .allow_unauthenticated()
                .build()
                .map_err(|e| WsError::TlsConfig(format!("client CA: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(
                certs(&self.cert_chain_pem, "server certificate")?,
                key(&self.key_pem, "server key")?,
            )
            .map_err(|e| WsError::TlsConfig(format!("server certificate: {e}")))?;
        Ok(Arc::new(config))
    }
}

impl ClientTlsConfig {
    /// The rustls client configuration.
    pub fn build(&self) -> Result<Arc<ClientConfig>, WsError> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| WsError::TlsConfig(e.to_string()))?
            .with_root_certificates(roots(&self.ca_pem, "server CA")?);
        let config = match &self.identity {
            Some(id) => builder
                .with_client_auth_cert(
                    certs(&id.cert_pem, "client certificate")?,
                    key(&id.key_pem, "client key")?,
                )
                .map_err(|e| WsError::TlsConfig(format!("client certificate: {e}")))?,
            None => builder.with_no_client_auth(),
        };
        Ok(Arc::new(config))
    }
}

/// The node id in a certificate's `fleet://node/<id>` URI SAN, if any.
pub(crate) fn node_of_cert(der: &[u8]) -> Option<NodeId> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) => Subjects::parse_node_cert_uri(uri),
        _ => None,
    })
}
