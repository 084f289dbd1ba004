//! Test PKI (rcgen) and a raw TLS WebSocket client for bad-input tests.

use fleet_core::protocol::{NodeIdentity, Secret};
use fleet_transport_ws::{ClientIdentity, ClientTlsConfig, ServerTlsConfig};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    SanType,
};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

pub(crate) struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    pub(crate) ca_pem: String,
}

impl Pki {
    pub(crate) fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let ca_pem = ca.pem();
        Pki { ca, ca_pem }
    }

    fn leaf(
        &self,
        names: Vec<String>,
        uri: Option<String>,
        eku: ExtendedKeyUsagePurpose,
    ) -> (String, String) {
        let mut params = CertificateParams::new(names).unwrap();
        if let Some(uri) = uri {
            params
                .subject_alt_names
                .push(SanType::URI(uri.try_into().unwrap()));
        }
        params.extended_key_usages = vec![eku];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    pub(crate) fn server_tls(&self, verify_clients: bool) -> ServerTlsConfig {
        let (cert, key) = self.leaf(
            vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
            None,
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        ServerTlsConfig {
            cert_chain_pem: cert,
            key_pem: Secret::new(key),
            client_ca_pem: verify_clients.then(|| self.ca_pem.clone()),
        }
    }

    /// A node identity (client certificate with `fleet://node/<node>`).
    pub(crate) fn node_identity(&self, node: &str) -> NodeIdentity {
        let (cert, key) = self.leaf(
            Vec::new(),
            Some(format!("fleet://node/{node}")),
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        NodeIdentity {
            cert_pem: cert,
            key_pem: Secret::new(key),
            ca_pem: self.ca_pem.clone(),
        }
    }

    pub(crate) fn client_tls(&self, identity: Option<&NodeIdentity>) -> ClientTlsConfig {
        ClientTlsConfig {
            ca_pem: self.ca_pem.clone(),
            identity: identity.map(|id| ClientIdentity {
                cert_pem: id.cert_pem.clone(),
                key_pem: id.key_pem.clone(),
            }),
            server_name: None,
        }
    }
}

pub(crate) type RawWs = WebSocketStream<TlsStream<TcpStream>>;

/// A TLS WebSocket connection with no size limits of its own, to send what a
/// well-behaved client never would.
pub(crate) async fn raw_connect(
    addr: std::net::SocketAddr,
    path: &str,
    tls: &ClientTlsConfig,
) -> RawWs {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = TlsConnector::from(tls.build().unwrap())
        .connect(name, tcp)
        .await
        .unwrap();
    let cfg = WebSocketConfig::default()
        .max_message_size(None)
        .max_frame_size(None);
    let url = format!("wss://127.0.0.1:{}{path}", addr.port());
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, tls, Some(cfg))
        .await
        .unwrap();
    ws
}
