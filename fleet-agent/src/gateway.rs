//! The per-claim mTLS gateway: a TLS listener that accepts only the active
//! claim's client certificate and forwards the byte stream to the node's
//! build service, or serves the built-in [`exec_api`](crate::exec_api).
//!
//! A client is accepted when its certificate chains to the pool CA (from
//! the node's identity), is within its validity period, carries the URI SAN
//! `fleet://claim/<id>` of a claim the daemon activated (`Activate`), and
//! that claim's lease has not expired. `Deactivate` or the lease's end
//! closes the claim's live connections.
//!
//! What the gateway can judge from the certificate it judges in the TLS
//! handshake (a [`ClientCertVerifier`] around webpki's), so a refused
//! client gets a TLS alert that says why rather than a connection closed
//! without a word:
//!
//! | certificate | alert |
//! |---|---|
//! | not from the pool CA | `unknown_ca` |
//! | expired (or not yet valid) | `certificate_expired` |
//! | names no claim (`fleet://claim/<id>`) | `access_denied` |
//! | its claim has ended here: deactivated (released, expired, revoked) or its lease ran out | `certificate_revoked` |
//!
//! With TLS 1.3 the client finishes its side of the handshake before the
//! server has judged its certificate, so a client sees the alert as the
//! error of its handshake or of its first read. A claim this node has not
//! heard of yet passes the handshake: the daemon tells the claimant and the
//! agent at the same moment over different connections, so the gateway
//! waits up to [`ACTIVATION_GRACE`] for the activation (refusing at once if
//! the claim ends meanwhile) and then closes the connection (`close_notify`).
//! The last [`ENDED_REMEMBERED`] ended claims are remembered; an older one
//! falls back to that wait.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fleet_core::ids::{ClaimId, Millis};
use fleet_core::protocol::NodeIdentity;
use fleet_core::subjects::Subjects;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use x509_parser::extensions::{GeneralName, ParsedExtension};

use crate::config::Backend;

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection waits for the node's identity or its claim's
/// activation, which the daemon sends as it sends the grant.
const ACTIVATION_GRACE: Duration = Duration::from_secs(3);
/// How often it looks while waiting.
const GRACE_POLL: Duration = Duration::from_millis(20);
/// How many ended claims the gateway remembers, to refuse their
/// certificates in the handshake (ids are at most 64 bytes).
pub const ENDED_REMEMBERED: usize = 4_096;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Why the gateway could not be set up or refused a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The node identity's certificates or key are unusable.
    #[error("bad node identity: {0}")]
    Identity(String),
    /// The client's certificate names no active claim, or has expired.
    #[error("refused: {0}")]
    Refused(String),
    /// The certificate's claim is not (yet) active on this node.
    #[error("not active: {0}")]
    NotActive(String),
}

impl GatewayError {
    /// A short stable name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            GatewayError::Identity(_) => "identity",
            GatewayError::Refused(_) => "refused",
            GatewayError::NotActive(_) => "not_active",
        }
    }

    /// Whether trying again may help (a claim whose activation has not
    /// reached the node yet).
    pub fn is_retryable(&self) -> bool {
        matches!(self, GatewayError::NotActive(_))
    }
}

/// Builds the TLS acceptor from the node's identity: its certificate as the
/// server certificate, client certificates required, verified against the
/// pool CA and refused in the handshake when their claim has ended.
fn acceptor_for(
    identity: &NodeIdentity,
    claims: Arc<Mutex<ClaimBook>>,
) -> Result<TlsAcceptor, GatewayError> {
    let bad = |e: &dyn std::fmt::Display| GatewayError::Identity(e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(identity.ca_pem.as_bytes()) {
        roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
    }
    if roots.is_empty() {
        return Err(GatewayError::Identity("no CA certificate".to_owned()));
    }
    let pki = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
        .build()
        .map_err(|e| bad(&e))?;
    let verifier = Arc::new(ClaimCertVerifier { pki, claims });
    let certs = CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    // Never print the key or the parser's view of it.
    let key = PrivateKeyDer::from_pem_slice(identity.key_pem.expose().as_bytes())
        .map_err(|_| GatewayError::Identity("unreadable private key".to_owned()))?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| bad(&e))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// webpki's verdict (pool CA, validity period, client use), then the
/// claim's: a certificate naming no claim, or a claim that has ended here,
/// fails the handshake. A claim not known yet passes; the connection waits
/// for its activation after the handshake.
struct ClaimCertVerifier {
    pki: Arc<dyn ClientCertVerifier>,
    claims: Arc<Mutex<ClaimBook>>,
}

impl std::fmt::Debug for ClaimCertVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimCertVerifier").finish_non_exhaustive()
    }
}

impl ClientCertVerifier for ClaimCertVerifier {
    fn offer_client_auth(&self) -> bool {
        self.pki.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.pki.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.pki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .pki
            .verify_client_cert(end_entity, intermediates, now)?;
        let Ok((claim, _)) = claim_of_cert(end_entity) else {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        };
        if let Standing::Ended(why) = lock(&self.claims).standing(&claim, now_ms()) {
            tracing::info!(%claim, why, "gateway: certificate of an ended claim refused in the handshake");
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.pki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.pki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.pki.supported_verify_schemes()
    }
}

/// The claim a client certificate (DER) is for, and its `notAfter` in ms.
pub fn claim_of_cert(der: &[u8]) -> Result<(ClaimId, Millis), GatewayError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| GatewayError::Refused(format!("unparsable certificate: {e}")))?;
    let not_after = u64::try_from(cert.validity().not_after.timestamp())
        .unwrap_or(0)
        .saturating_mul(1000);
    for ext in cert.extensions() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
            for name in &san.general_names {
                if let GeneralName::URI(uri) = name
                    && let Some(id) = Subjects::parse_claim_cert_uri(uri)
                {
                    return Ok((id, not_after));
                }
            }
        }
    }
    Err(GatewayError::Refused(
        "certificate has no fleet://claim/ URI".to_owned(),
    ))
}

/// Where a claim stands on this node.
enum Standing {
    /// Activated and within its lease: a receiver of its lease end.
    Active(watch::Receiver<Option<Millis>>),
    /// Over here, and why.
    Ended(&'static str),
    /// Never activated here (or ended too long ago to be remembered).
    Unknown,
}

/// The claims this node's gateway knows: the active ones, and the last
/// [`ENDED_REMEMBERED`] that ended here.
#[derive(Default)]
struct ClaimBook {
    /// Active claims: the sender carries the lease end; `None` closes.
    active: HashMap<ClaimId, watch::Sender<Option<Millis>>>,
    ended: HashSet<ClaimId>,
    /// `ended` oldest first, to forget the oldest.
    ended_order: VecDeque<ClaimId>,
}

impl ClaimBook {
    fn activate(&mut self, claim: ClaimId, expires_at: Millis) {
        // The daemon decides: a claim it activates again is no longer over.
        if self.ended.remove(&claim) {
            self.ended_order.retain(|c| *c != claim);
        }
        match self.active.get(&claim) {
            Some(tx) => {
                tx.send_replace(Some(expires_at));
            }
            None => {
                self.active
                    .insert(claim, watch::Sender::new(Some(expires_at)));
            }
        }
    }

    /// Ends `claim` here; its live connections close.
    fn end(&mut self, claim: &ClaimId) {
        if let Some(tx) = self.active.remove(claim) {
            tx.send_replace(None);
        }
        if self.ended.insert(claim.clone()) {
            self.ended_order.push_back(claim.clone());
        }
        while self.ended_order.len() > ENDED_REMEMBERED {
            if let Some(old) = self.ended_order.pop_front() {
                self.ended.remove(&old);
            }
        }
    }

    fn standing(&self, claim: &ClaimId, now: Millis) -> Standing {
        match self.active.get(claim) {
            Some(tx) if tx.borrow().is_some_and(|end| end > now) => {
                Standing::Active(tx.subscribe())
            }
            Some(_) => Standing::Ended("lease has ended"),
            None if self.ended.contains(claim) => Standing::Ended("claim has ended"),
            None => Standing::Unknown,
        }
    }
}

fn lock(claims: &Mutex<ClaimBook>) -> MutexGuard<'_, ClaimBook> {
    // Nothing panics under the lock; a poisoned book is still consistent.
    claims.lock().unwrap_or_else(|e| e.into_inner())
}

struct Inner {
    claims: Arc<Mutex<ClaimBook>>,
    acceptor: Mutex<Option<TlsAcceptor>>,
    backend: Option<Backend>,
    files_root: PathBuf,
}

/// The gateway. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("backend", &self.inner.backend)
            .field("files_root", &self.inner.files_root)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// A gateway forwarding to `backend`, or serving the exec API with its
    /// files under `files_root/<claim id>/` when there is none.
    pub fn new(backend: Option<Backend>, files_root: PathBuf) -> Gateway {
        Gateway {
            inner: Arc::new(Inner {
                claims: Arc::new(Mutex::new(ClaimBook::default())),
                acceptor: Mutex::new(None),
                backend,
                files_root,
            }),
        }
    }

    fn claims(&self) -> MutexGuard<'_, ClaimBook> {
        lock(&self.inner.claims)
    }

    /// Installs (or replaces) the node identity; until then every client is
    /// turned away.
    pub fn set_identity(&self, identity: &NodeIdentity) -> Result<(), GatewayError> {
        let acceptor = acceptor_for(identity, Arc::clone(&self.inner.claims))?;
        *self
            .inner
            .acceptor
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(acceptor);
        Ok(())
    }

    /// Accepts `claim`'s certificate until `expires_at` (a renewal moves the
    /// end of live connections too).
    pub fn activate(&self, claim: ClaimId, expires_at: Millis) {
        self.claims().activate(claim, expires_at);
    }

    /// Stops accepting `claim`, closes its live connections, and refuses
    /// its certificate in the handshake from now on (until activated again).
    pub fn deactivate(&self, claim: &ClaimId) {
        self.claims().end(claim);
    }

    /// The claims accepted now.
    pub fn active_claims(&self) -> Vec<ClaimId> {
        let now = now_ms();
        let mut ids: Vec<ClaimId> = self
            .claims()
            .active
            .iter()
            .filter(|(_, tx)| tx.borrow().is_some_and(|e| e > now))
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// Checks a verified client certificate against the active claims.
    fn admit(
        &self,
        der: &[u8],
    ) -> Result<(ClaimId, watch::Receiver<Option<Millis>>), GatewayError> {
        let (claim, not_after) = claim_of_cert(der)?;
        let now = now_ms();
        if not_after <= now {
            return Err(GatewayError::Refused(format!(
                "certificate of claim {claim} has expired"
            )));
        }
        let standing = self.claims().standing(&claim, now);
        match standing {
            Standing::Active(lease) => Ok((claim, lease)),
            Standing::Ended(why) => Err(GatewayError::Refused(format!("{why}: {claim}"))),
            Standing::Unknown => Err(GatewayError::NotActive(format!(
                "claim {claim} is not active here"
            ))),
        }
    }

    /// Accepts connections until the listener fails.
    pub async fn serve(&self, listener: TcpListener) {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "gateway accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let this = self.clone();
            tokio::spawn(async move {
                if let Err(e) = this.connection(tcp).await {
                    tracing::info!(%peer, error = %e, "gateway connection refused");
                }
            });
        }
    }

    async fn connection(&self, tcp: TcpStream) -> Result<(), GatewayError> {
        // The daemon tells the claimant its grant and the agent its identity
        // and the claim's activation at the same moment, over different
        // connections: a claimant may knock first. Wait a little for what is
        // on its way rather than turn it away.
        let deadline = tokio::time::Instant::now() + ACTIVATION_GRACE;
        let acceptor = loop {
            let current = self
                .inner
                .acceptor
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            match current {
                Some(a) => break a,
                None if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(GRACE_POLL).await;
                }
                None => {
                    return Err(GatewayError::Refused("node has no identity yet".to_owned()));
                }
            }
        };
        let mut tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
            .await
            .map_err(|_| GatewayError::Refused("TLS handshake timed out".to_owned()))?
            .map_err(|e| GatewayError::Refused(format!("TLS handshake: {e}")))?;
        let der = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref().to_vec())
            .ok_or_else(|| GatewayError::Refused("no client certificate".to_owned()))?;
        let (claim, lease) = loop {
            match self.admit(&der) {
                Ok(ok) => break ok,
                Err(e) if e.is_retryable() && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(GRACE_POLL).await;
                }
                Err(e) => {
                    use tokio::io::AsyncWriteExt;
                    let _ = tls.shutdown().await;
                    return Err(e);
                }
            }
        };
        tracing::info!(%claim, "gateway: claim connected");
        let work = async {
            match &self.inner.backend {
                Some(backend) => {
                    if let Err(e) = forward(&mut tls, backend).await {
                        tracing::info!(%claim, error = %e, "gateway: forwarding ended");
                    }
                }
                None => {
                    let root = self.inner.files_root.join(claim.as_str());
                    if let Err(e) = crate::exec_api::serve(&mut tls, &root).await {
                        tracing::info!(%claim, error = %e, "gateway: exec API ended");
                    }
                }
            }
        };
        tokio::select! {
            () = work => {}
            () = until_revoked(lease) => {
                tracing::info!(%claim, "gateway: claim released or expired; closing connection");
            }
        }
        Ok(())
    }
}

/// Resolves when the lease ends: deactivated (`None`), or its end passed.
async fn until_revoked(mut rx: watch::Receiver<Option<Millis>>) {
    loop {
        let Some(end) = *rx.borrow_and_update() else {
            return;
        };
        let left = end.saturating_sub(now_ms());
        if left == 0 {
            return;
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(Duration::from_millis(left)) => {}
        }
    }
}

async fn forward<S>(client: &mut S, backend: &Backend) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match backend {
        Backend::Tcp(addr) => {
            let mut b = TcpStream::connect(addr).await?;
            tokio::io::copy_bidirectional(client, &mut b).await?;
        }
        Backend::Unix(path) => {
            let mut b = UnixStream::connect(path).await?;
            tokio::io::copy_bidirectional(client, &mut b).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: usize) -> ClaimId {
        ClaimId::new(format!("c{n}")).unwrap_or_else(|e| panic!("{e}"))
    }

    fn ended(book: &ClaimBook, claim: &ClaimId) -> bool {
        matches!(book.standing(claim, 1_000), Standing::Ended(_))
    }

    #[test]
    fn the_book_remembers_the_last_ended_claims_until_reactivated() {
        let mut book = ClaimBook::default();
        assert!(matches!(book.standing(&id(0), 1_000), Standing::Unknown));
        book.activate(id(0), 2_000);
        assert!(matches!(book.standing(&id(0), 1_000), Standing::Active(_)));
        assert!(matches!(book.standing(&id(0), 2_000), Standing::Ended(_)));
        for n in 0..=ENDED_REMEMBERED {
            book.end(&id(n));
        }
        assert!(book.active.is_empty());
        assert!(
            matches!(book.standing(&id(0), 1_000), Standing::Unknown),
            "the oldest is forgotten"
        );
        assert!(ended(&book, &id(1)) && ended(&book, &id(ENDED_REMEMBERED)));
        // Ending twice keeps one entry; re-activating clears it.
        book.end(&id(1));
        assert_eq!(book.ended.len(), ENDED_REMEMBERED);
        assert_eq!(book.ended_order.len(), ENDED_REMEMBERED);
        book.activate(id(1), 2_000);
        assert!(matches!(book.standing(&id(1), 1_000), Standing::Active(_)));
        assert_eq!(book.ended_order.len(), ENDED_REMEMBERED - 1);
        book.end(&id(1));
        assert!(ended(&book, &id(1)));
    }
}
