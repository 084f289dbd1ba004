//! [`FleetClient`] and [`Claim`]: claim a node, use it, give it back.
//!
//! ```no_run
//! # async fn demo() -> Result<(), fleet_client::ClientError> {
//! use fleet_client::{ClientConfig, ExecRequest, FleetClient};
//! use fleet_core::protocol::{ClaimRequest, Requirements};
//! use fleet_core::{AffinityKey, ClaimId, PoolName, Workspace};
//!
//! // The daemon's address, the pool CA and the daemon's signing key come
//! // from its `daemon.json` (or are configured out of band).
//! let discovery = fleet_client::read_discovery(std::path::Path::new(".fleet"))?;
//! let config = ClientConfig::from_discovery(&discovery)?.token("…".to_owned());
//! let fleet = FleetClient::connect(config).await?;
//! let mut claim = fleet
//!     .claim(ClaimRequest {
//!         claim_id: ClaimId::new("build-42").map_err(fleet_client::ClientError::invalid)?,
//!         workspace: Workspace::new("ci").map_err(fleet_client::ClientError::invalid)?,
//!         pool: PoolName::new("default").map_err(fleet_client::ClientError::invalid)?,
//!         requirements: Requirements::default(),
//!         priority: 0,
//!         lease_ttl_ms: 300_000,
//!         max_wait_ms: None,
//!         recipient: None,
//!         // Prefer a node whose caches are warm for this repository.
//!         affinity: Some(
//!             AffinityKey::new("github.com/acme/app").map_err(fleet_client::ClientError::invalid)?,
//!         ),
//!     })
//!     .await?;
//! claim.renew_in_background();
//! let out = claim.exec(&ExecRequest::new(["make", "-j8"])).await?;
//! println!("exit {:?}", out.code);
//! claim.release().await?;
//! # Ok(()) }
//! ```

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fleet_core::ids::{ClaimId, Millis, NodeId, Workspace};
use fleet_core::protocol::{
    ClaimGrant, ClaimRequest, CredentialsBundle, Discovery, OutputStream, Revocation,
    SealedCredentials, Secret,
};
use fleet_core::transport::{ClaimClient, ClaimError, JobClient};
use futures_core::stream::BoxStream;
use futures_util::StreamExt as _;
use tokio::task::JoinHandle;

use crate::credentials::{Expected, OpenError, SignerKey, open};
use crate::exec::{ExecClient, ExecError, ExecRequest, ExecResult};
use crate::gateway::{ConnectError, GatewayStream, connect};

/// Dial attempts (with doubling waits capped at 5 s) before a call gives
/// up: about a minute, so a daemon restart is waited out.
pub const DEFAULT_CONNECT_ATTEMPTS: u32 = 20;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The claim plane answered with an error (refused, revoked, timed
    /// out, unreachable).
    #[error(transparent)]
    Claim(#[from] ClaimError),
    /// The grant's credentials did not verify or open.
    #[error("credentials: {0}")]
    Credentials(#[from] OpenError),
    /// The node's gateway could not be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The exec API failed.
    #[error("exec: {0}")]
    Exec(#[from] ExecError),
    /// The daemon could not be reached at all.
    #[error("claim plane: {0}")]
    Dial(String),
    /// A configuration or argument cannot be used.
    #[error("{0}")]
    Invalid(String),
    /// The job plane refused a call (the reason is the control plane's).
    #[error("rejected: {0}")]
    Rejected(String),
    /// The job plane's transport failed.
    #[error(transparent)]
    Transport(#[from] fleet_core::transport::TransportError),
}

impl ClientError {
    /// Wraps a validation error (of an id, a URL, a file).
    pub fn invalid(e: impl std::fmt::Display) -> ClientError {
        ClientError::Invalid(e.to_string())
    }

    /// A short stable name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientError::Claim(_) => "claim",
            ClientError::Credentials(e) => e.kind(),
            ClientError::Connect(e) => e.kind(),
            ClientError::Exec(e) => e.kind(),
            ClientError::Dial(_) => "dial",
            ClientError::Invalid(_) => "invalid",
            ClientError::Rejected(_) => "rejected",
            ClientError::Transport(t) => t.kind(),
        }
    }
}

/// How to reach a daemon's claim plane and whom to trust.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The daemon's WebSocket URL: `wss://host:port` (the claim path
    /// `/v1/claims` is added) or a full URL with a path.
    pub url: String,
    /// The CA the daemon's TLS certificate chains to (the pool CA, PEM).
    pub ca_pem: String,
    /// The daemon's Ed25519 key: grants sealed by any other key are refused.
    pub signer: SignerKey,
    /// The API token presented on connect (a workspace-scoped one is
    /// enough to claim in its workspaces).
    pub token: Option<Secret>,
    /// Dial attempts before a call gives up ([`DEFAULT_CONNECT_ATTEMPTS`]).
    pub connect_attempts: u32,
}

impl ClientConfig {
    /// A configuration for the daemon at `url`.
    pub fn new(url: impl Into<String>, ca_pem: impl Into<String>, signer: SignerKey) -> Self {
        ClientConfig {
            url: url.into(),
            ca_pem: ca_pem.into(),
            signer,
            token: None,
            connect_attempts: DEFAULT_CONNECT_ATTEMPTS,
        }
    }

    /// The same with an API token.
    pub fn token(mut self, token: String) -> Self {
        self.token = Some(Secret::new(token));
        self
    }

    /// The daemon a `daemon.json` describes: its URL, and the CA and signer
    /// key files it names (read now).
    pub fn from_discovery(d: &Discovery) -> Result<ClientConfig, ClientError> {
        let read = |path: &Path, what: &str| {
            std::fs::read_to_string(path)
                .map_err(|e| ClientError::Invalid(format!("{what} {}: {e}", path.display())))
        };
        let ca_pem = read(&d.ca_file, "daemon CA file")?;
        let signer = SignerKey::from_base64(&read(&d.signer_file, "daemon signer key")?)?;
        Ok(ClientConfig::new(d.ws.clone(), ca_pem, signer))
    }

    /// The claim-plane URL: `wss://host:port` gains `/v1/claims`.
    pub fn claims_url(&self) -> String {
        claims_url(&self.url)
    }
}

/// `wss://host:port` → `wss://host:port/v1/claims`; a URL with a path is
/// kept as it is.
pub fn claims_url(ws: &str) -> String {
    let ws = ws.trim_end_matches('/');
    let after_scheme = ws.split_once("://").map_or(ws, |(_, r)| r);
    if after_scheme.contains('/') {
        ws.to_owned()
    } else {
        format!("{ws}{}", fleet_transport_ws::CLAIMS_PATH)
    }
}

/// The WebSocket claim-plane connection [`FleetClient::connect`] makes:
/// trusting `ca_pem`, presenting `token`, dialing up to `connect_attempts`
/// times. For a caller that needs the transport itself (its job plane).
pub async fn connect_claim_plane(
    url: &str,
    ca_pem: &str,
    token: Option<Secret>,
    connect_attempts: u32,
) -> Result<fleet_transport_ws::WsClaimClient, fleet_transport_ws::WsError> {
    let tls = fleet_transport_ws::ClientTlsConfig {
        ca_pem: ca_pem.to_owned(),
        identity: None,
        server_name: None,
    };
    let mut ws = fleet_transport_ws::WsConfig::default();
    ws.bearer_token = token;
    ws.connect_attempts = connect_attempts.max(1);
    fleet_transport_ws::WsClaimClient::connect(url, &tls, ws).await
}

/// A connection to a fleet's claim plane.
#[derive(Clone)]
pub struct FleetClient {
    claims: Arc<dyn ClaimClient>,
    jobs: Option<Arc<dyn JobClient>>,
    signer: SignerKey,
}

impl std::fmt::Debug for FleetClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetClient")
            .field("signer", &self.signer)
            .finish_non_exhaustive()
    }
}

impl FleetClient {
    /// Connects to the daemon's WebSocket claim plane. A daemon that is
    /// restarting is waited for (`connect_attempts`); calls re-send on a new
    /// connection when one drops, with the same claim id, so a waiting or
    /// granted claim survives a daemon restart.
    pub async fn connect(cfg: ClientConfig) -> Result<FleetClient, ClientError> {
        let url = cfg.claims_url();
        let client =
            connect_claim_plane(&url, &cfg.ca_pem, cfg.token.clone(), cfg.connect_attempts)
                .await
                .map_err(|e| ClientError::Dial(format!("{url}: {e}")))?;
        let client = Arc::new(client);
        Ok(FleetClient::with_claim_client(client.clone(), cfg.signer).with_job_client(client))
    }

    /// Connects to the claim plane on NATS subjects (`<namespace>.claim.…`,
    /// see PROTOCOL.md); `nats` says how to reach the servers (URLs,
    /// credentials, TLS, the inbox prefix a workspace's permissions allow).
    #[cfg(feature = "nats")]
    pub async fn connect_nats(
        nats: &fleet_transport_nats::NatsConfig,
        namespace: &str,
        signer: SignerKey,
    ) -> Result<FleetClient, ClientError> {
        let subjects =
            fleet_core::subjects::Subjects::new(namespace).map_err(ClientError::invalid)?;
        let conn = nats
            .connect()
            .await
            .map_err(|e| ClientError::Dial(format!("NATS: {e}")))?;
        let client = Arc::new(fleet_transport_nats::NatsClaimClient::new(conn, subjects));
        Ok(FleetClient::with_claim_client(client.clone(), signer).with_job_client(client))
    }

    /// A client over any claim transport: NATS (`fleet-transport-nats`), or
    /// an embedded fleet's in-process one.
    pub fn with_claim_client(claims: Arc<dyn ClaimClient>, signer: SignerKey) -> FleetClient {
        FleetClient {
            claims,
            jobs: None,
            signer,
        }
    }

    /// The job plane to use ([`connect`](FleetClient::connect) and
    /// `connect_nats` set it from the same connection as claims).
    pub fn with_job_client(mut self, jobs: Arc<dyn JobClient>) -> FleetClient {
        self.jobs = Some(jobs);
        self
    }

    /// The job plane: submit and watch jobs and runs, pause, resume, cancel.
    pub fn jobs(&self) -> Result<crate::jobs::Jobs, ClientError> {
        match &self.jobs {
            Some(j) => Ok(crate::jobs::Jobs::new(j.clone())),
            None => Err(ClientError::Invalid(
                "this client has no job plane (give one with `with_job_client`)".into(),
            )),
        }
    }

    /// The claim transport underneath (for what [`Claim`] does not cover).
    pub fn claim_client(&self) -> &Arc<dyn ClaimClient> {
        &self.claims
    }

    /// Claims a node with a fresh age identity (the request's recipient is
    /// replaced by its public key) and waits until it is granted, refused or
    /// ended. The grant's credentials are verified against the pinned key,
    /// then opened.
    pub async fn claim(&self, req: ClaimRequest) -> Result<Claim, ClientError> {
        self.claim_with_identity(req, age::x25519::Identity::generate())
            .await
    }

    /// [`FleetClient::claim`] with an identity the caller keeps (a retry of
    /// the same claim id after a crash gets the same grant, sealed to it).
    pub async fn claim_with_identity(
        &self,
        mut req: ClaimRequest,
        identity: age::x25519::Identity,
    ) -> Result<Claim, ClientError> {
        let recipient = identity.to_public().to_string();
        req.recipient = Some(recipient.clone());
        let grant = self.claims.claim(req).await?;
        let sealed = grant.credentials.as_ref().ok_or_else(|| {
            ClientError::Invalid(format!(
                "claim {} was granted on {} without credentials",
                grant.claim_id, grant.node
            ))
        })?;
        let bundle = open_for(&self.signer, &grant.claim_id, &identity, &recipient, sealed)?;
        Ok(Claim {
            inner: Arc::new(ClaimInner {
                claims: self.claims.clone(),
                signer: self.signer,
                recipient,
                identity,
                lease_expires_at: AtomicU64::new(grant.lease.expires_at),
                bundle: RwLock::new(bundle),
                grant,
            }),
            renewer: None,
            settled: false,
        })
    }
}

fn open_for(
    signer: &SignerKey,
    claim_id: &ClaimId,
    identity: &age::x25519::Identity,
    recipient: &str,
    sealed: &SealedCredentials,
) -> Result<CredentialsBundle, OpenError> {
    open(
        sealed,
        identity,
        &Expected {
            claim_id,
            recipient,
            // The certificate's expiry, which the seal signs; a lease may
            // outlive it (renewals bring new certificates).
            expires_at: sealed.expires_at,
            signer,
        },
    )
}

struct ClaimInner {
    claims: Arc<dyn ClaimClient>,
    signer: SignerKey,
    recipient: String,
    identity: age::x25519::Identity,
    grant: ClaimGrant,
    lease_expires_at: AtomicU64,
    bundle: RwLock<CredentialsBundle>,
}

impl ClaimInner {
    fn bundle(&self) -> CredentialsBundle {
        self.bundle
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    async fn renew(&self) -> Result<Millis, ClientError> {
        let g = &self.grant;
        let renewal = self.claims.renew(&g.workspace, &g.claim_id).await?;
        if let Some(sealed) = &renewal.credentials {
            let bundle = open_for(
                &self.signer,
                &g.claim_id,
                &self.identity,
                &self.recipient,
                sealed,
            )?;
            *self
                .bundle
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = bundle;
        }
        self.lease_expires_at
            .store(renewal.expires_at, Ordering::Relaxed);
        Ok(renewal.expires_at)
    }
}

/// A granted claim: the node is yours until the lease ends.
///
/// **Dropping** a `Claim` stops its background renewal and, when a tokio
/// runtime is running, releases it (best effort, in a spawned task): a
/// build tool that exits early never strands a node for the rest of the
/// lease. Call [`Claim::release`] to know the release went through, or
/// [`Claim::detach`] to keep the claim past this value (renew and release
/// it later by id, e.g. from another process).
pub struct Claim {
    inner: Arc<ClaimInner>,
    renewer: Option<JoinHandle<()>>,
    settled: bool,
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claim")
            .field("claim_id", &self.inner.grant.claim_id)
            .field("node", &self.inner.grant.node)
            .field("endpoint", &self.inner.grant.endpoint)
            .finish_non_exhaustive()
    }
}

impl Claim {
    /// The claim's id.
    pub fn id(&self) -> &ClaimId {
        &self.inner.grant.claim_id
    }

    /// Its workspace.
    pub fn workspace(&self) -> &Workspace {
        &self.inner.grant.workspace
    }

    /// The node serving it.
    pub fn node(&self) -> &NodeId {
        &self.inner.grant.node
    }

    /// The node's gateway, `host:port`.
    pub fn endpoint(&self) -> &str {
        &self.inner.grant.endpoint
    }

    /// The grant as the daemon sent it.
    pub fn grant(&self) -> &ClaimGrant {
        &self.inner.grant
    }

    /// When the lease ends (ms since the Unix epoch), as of the last grant
    /// or renewal.
    pub fn lease_expires_at(&self) -> Millis {
        self.inner.lease_expires_at.load(Ordering::Relaxed)
    }

    /// The current credentials (the newest renewal's).
    pub fn credentials(&self) -> CredentialsBundle {
        self.inner.bundle()
    }

    /// The age identity the credentials are sealed to.
    pub fn identity(&self) -> &age::x25519::Identity {
        &self.inner.identity
    }

    /// A new mTLS connection to the node's gateway with the current
    /// certificate (forwarded to the node's build service, or the exec API).
    pub async fn connect(&self) -> Result<GatewayStream, ClientError> {
        Ok(connect(&self.inner.bundle()).await?)
    }

    /// Runs a command on the node and collects its output.
    pub async fn exec(&self, req: &ExecRequest) -> Result<ExecResult, ClientError> {
        let mut c = ExecClient::new(self.connect().await?);
        Ok(c.exec(req).await?)
    }

    /// Runs a command, handing each chunk of output to `on_output` as it
    /// arrives; returns the exit.
    pub async fn exec_streaming<F>(
        &self,
        req: &ExecRequest,
        on_output: F,
    ) -> Result<ExecResult, ClientError>
    where
        F: FnMut(OutputStream, &[u8]),
    {
        let mut c = ExecClient::new(self.connect().await?);
        Ok(c.exec_streaming(req, on_output).await?)
    }

    /// Uploads `data` to `path` in the claim's file area; the bytes stored.
    pub async fn put(&self, path: &str, data: &[u8]) -> Result<u64, ClientError> {
        let mut c = ExecClient::new(self.connect().await?);
        Ok(c.put(path, data).await?)
    }

    /// Downloads `path` from the claim's file area.
    pub async fn get(&self, path: &str) -> Result<Vec<u8>, ClientError> {
        let mut c = ExecClient::new(self.connect().await?);
        Ok(c.get(path).await?)
    }

    /// Extends the lease now; new credentials (a certificate that lasts as
    /// long as the new lease) replace the old for new connections. Returns
    /// the new expiry.
    pub async fn renew(&self) -> Result<Millis, ClientError> {
        self.inner.renew().await
    }

    /// Renews in a background task whenever a third of the lease is left,
    /// until the claim is released, detached or dropped, or a renewal is
    /// refused (the claim ended: watch [`Claim::revocations`] for why).
    pub fn renew_in_background(&mut self) {
        if self.renewer.is_some() {
            return;
        }
        let inner = self.inner.clone();
        let ttl = inner
            .grant
            .lease
            .expires_at
            .saturating_sub(now_ms())
            .max(3_000);
        self.renewer = Some(tokio::spawn(async move {
            loop {
                let left = inner
                    .lease_expires_at
                    .load(Ordering::Relaxed)
                    .saturating_sub(now_ms());
                let wait = left.saturating_sub(ttl / 3);
                tokio::time::sleep(Duration::from_millis(wait)).await;
                if let Err(e) = inner.renew().await {
                    tracing::warn!(claim = %inner.grant.claim_id, error = %e, "background renewal stopped");
                    return;
                }
            }
        }));
    }

    /// This claim's revocations (release by another caller, lease expiry,
    /// node lost, spot interruption), with their reason.
    pub async fn revocations(&self) -> Result<BoxStream<'static, Revocation>, ClientError> {
        let id = self.inner.grant.claim_id.clone();
        let all = self
            .inner
            .claims
            .revocations(&self.inner.grant.workspace)
            .await?;
        Ok(all
            .filter(move |r| std::future::ready(r.claim_id == id))
            .boxed())
    }

    /// Gives the node back and waits for the daemon's answer.
    pub async fn release(mut self) -> Result<(), ClientError> {
        self.settled = true;
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
        let g = &self.inner.grant;
        Ok(self.inner.claims.release(&g.workspace, &g.claim_id).await?)
    }

    /// Keeps the claim past this value: no renewals from here, no release on
    /// drop. Returns the grant (renew or release it later by id).
    pub fn detach(mut self) -> ClaimGrant {
        self.settled = true;
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
        self.inner.grant.clone()
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
        if self.settled {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let inner = self.inner.clone();
            handle.spawn(async move {
                let g = &inner.grant;
                if let Err(e) = inner.claims.release(&g.workspace, &g.claim_id).await {
                    tracing::warn!(claim = %g.claim_id, error = %e, "release on drop failed");
                }
            });
        }
    }
}

fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
