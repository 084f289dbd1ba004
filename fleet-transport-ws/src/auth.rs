//! Who may connect: agents (a session for a node) and claim-plane clients
//! (which workspaces they may claim in).

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Mutex;

use async_trait::async_trait;
use fleet_core::ids::{NodeId, Workspace};
use fleet_core::protocol::{AgentRefusal, NodeIdentity, Secret};

/// What the server knows about an agent when it says `Hello`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AgentHelloInfo {
    /// The node the `Hello` names.
    pub node: NodeId,
    /// The bootstrap token in the `Hello`, if any.
    pub bootstrap_token: Option<Secret>,
    /// The node id in the verified client certificate's URI SAN, if the
    /// agent presented a certificate signed by the configured client CA.
    pub cert_node: Option<NodeId>,
    /// The peer's socket address.
    pub peer: SocketAddr,
}

/// Why an agent was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The bootstrap token is unknown or already used.
    #[error("bootstrap token unknown or already used")]
    BadToken,
    /// The bootstrap token was issued for another node.
    #[error("bootstrap token was issued for another node")]
    TokenForOtherNode,
    /// The client certificate names another node.
    #[error("client certificate is for node {cert}, hello says {hello}")]
    NodeMismatch {
        /// The node in the certificate.
        cert: NodeId,
        /// The node in the `Hello`.
        hello: NodeId,
    },
    /// Neither a token nor a client certificate.
    #[error("no bootstrap token and no client certificate")]
    NoCredentials,
    /// The authenticator could not decide (store unavailable, …).
    #[error("authentication unavailable: {0}")]
    Unavailable(String),
}

impl AuthError {
    /// What the agent is told: the close reason (and, through it, the
    /// close code) of the refused session.
    pub fn refusal(&self) -> AgentRefusal {
        match self {
            AuthError::BadToken => AgentRefusal::BadToken,
            AuthError::TokenForOtherNode => AgentRefusal::TokenForOtherNode,
            AuthError::NodeMismatch { .. } => AgentRefusal::NodeMismatch,
            AuthError::NoCredentials => AgentRefusal::NoCredentials,
            AuthError::Unavailable(_) => AgentRefusal::Unavailable,
        }
    }

    /// A short stable name for logs, metrics and close reasons.
    pub fn kind(&self) -> &'static str {
        self.refusal().as_str()
    }

    /// Whether the same credentials may be accepted later.
    pub fn is_retryable(&self) -> bool {
        !self.refusal().is_definitive()
    }
}

/// Decides whether an agent session may start. The daemon implements it
/// (single-use tokens in its store, the pool CA); [`StaticAgentAuth`] is a
/// simple in-memory one.
#[async_trait]
pub trait AgentAuth: Send + Sync {
    /// `Ok(Some(identity))`: accepted on a bootstrap token; the identity is
    /// sent in `Welcome`. `Ok(None)`: accepted on the client certificate.
    /// `Err`: refused, with the close code and reason of
    /// [`AuthError::refusal`] (4003 for good, 1013 to try again later).
    async fn authenticate(&self, hello: &AgentHelloInfo)
    -> Result<Option<NodeIdentity>, AuthError>;
}

/// An in-memory [`AgentAuth`]: single-use bootstrap tokens, each bound to a
/// node and an identity to hand out, and client certificates whose node id
/// must match the `Hello`.
#[derive(Default)]
pub struct StaticAgentAuth {
    tokens: Mutex<HashMap<String, (NodeId, NodeIdentity)>>,
}

impl fmt::Debug for StaticAgentAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.tokens.lock().map(|t| t.len()).unwrap_or(0);
        f.debug_struct("StaticAgentAuth")
            .field("tokens", &n)
            .finish()
    }
}

impl StaticAgentAuth {
    /// An authenticator with no tokens (certificates only).
    pub fn new() -> StaticAgentAuth {
        StaticAgentAuth::default()
    }

    /// Adds a single-use token for `node`, answered with `identity`.
    pub fn add_token(&self, token: &Secret, node: NodeId, identity: NodeIdentity) {
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token.expose().to_owned(), (node, identity));
    }
}

#[async_trait]
impl AgentAuth for StaticAgentAuth {
    async fn authenticate(
        &self,
        hello: &AgentHelloInfo,
    ) -> Result<Option<NodeIdentity>, AuthError> {
        if let Some(token) = &hello.bootstrap_token {
            let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
            return match tokens.get(token.expose()) {
                Some((node, _)) if *node != hello.node => Err(AuthError::TokenForOtherNode),
                Some(_) => Ok(tokens.remove(token.expose()).map(|(_, id)| id)),
                None => Err(AuthError::BadToken),
            };
        }
        match &hello.cert_node {
            Some(cert) if *cert == hello.node => Ok(None),
            Some(cert) => Err(AuthError::NodeMismatch {
                cert: cert.clone(),
                hello: hello.node.clone(),
            }),
            None => Err(AuthError::NoCredentials),
        }
    }
}

/// The workspaces a claim-plane client may claim, renew, release, submit
/// jobs and hear revocations in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimScope {
    /// Every workspace (an operator's token, or an open server).
    All,
    /// Only these.
    Workspaces(BTreeSet<Workspace>),
}

impl ClaimScope {
    /// Whether `workspace` is in scope.
    pub fn allows(&self, workspace: &Workspace) -> bool {
        match self {
            ClaimScope::All => true,
            ClaimScope::Workspaces(set) => set.contains(workspace),
        }
    }
}

/// Why a claim-plane client was refused at connect (HTTP 401 on the
/// WebSocket upgrade; the client sees [`crate::WsError::Refused`] with
/// [`crate::close_code::AUTH_REFUSED`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClaimAuthError {
    /// No `Authorization: Bearer …` header.
    #[error("no bearer token")]
    NoToken,
    /// The token is not one the server knows.
    #[error("unknown token")]
    BadToken,
    /// The authenticator could not decide.
    #[error("authentication unavailable: {0}")]
    Unavailable(String),
}

/// Decides what a claim-plane client may do from the bearer token on its
/// WebSocket upgrade request. Called once per connection, before the
/// upgrade completes, so it must not block.
pub trait ClaimAuth: Send + Sync {
    /// The client's scope, or why it is refused.
    fn authorize(&self, bearer: Option<&str>) -> Result<ClaimScope, ClaimAuthError>;
}

/// Every client may use every workspace: for a server only trusted callers
/// can reach (tests, an embedding program, a private network).
/// [`crate::WsServer::bind`] uses it; the daemon uses its API tokens instead.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenClaims;

impl ClaimAuth for OpenClaims {
    fn authorize(&self, _bearer: Option<&str>) -> Result<ClaimScope, ClaimAuthError> {
        Ok(ClaimScope::All)
    }
}
