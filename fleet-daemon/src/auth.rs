//! Who may talk to the daemon: API bearer tokens (stored hashed, shown
//! once) and agents (a single-use bootstrap token, then the node identity
//! the pool CA issued for it).
//!
//! An API token is either an operator's (every workspace, the HTTP API, new
//! tokens) or limited to a list of workspaces: then it opens the claim plane
//! for those workspaces only and, of the HTTP API, only the console's reads
//! cut to those workspaces (`crate::console`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use fleet_core::clock::Clock;
use fleet_core::ids::Millis;
use fleet_core::ids::Workspace;
use fleet_core::protocol::NodeIdentity;
use fleet_core::protocol::Secret;
use fleet_runtime::ca::PoolCa;
use fleet_runtime::tokens::BootstrapRegistry;
use fleet_transport_ws::{
    AgentAuth, AgentHelloInfo, AuthError, ClaimAuth, ClaimAuthError, ClaimScope,
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use fleet_runtime::tokens::{digest, random_token, same, write_private};

/// The file API token hashes are kept in.
pub const TOKENS_FILE: &str = "tokens.json";
pub use fleet_core::protocol::ADMIN_TOKEN_FILE;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredToken {
    name: String,
    sha256: String,
    created_at: u64,
    /// `None`: an operator's token. Tokens stored before scopes existed
    /// have none, and stay operator tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    workspaces: Option<BTreeSet<Workspace>>,
}

/// Who a presented token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenHolder {
    /// The token's name.
    pub name: String,
    /// The workspaces it is limited to; `None` for an operator.
    pub workspaces: Option<BTreeSet<Workspace>>,
}

impl TokenHolder {
    /// Whether this is an operator's token (every workspace, the HTTP API).
    pub fn is_operator(&self) -> bool {
        self.workspaces.is_none()
    }
}

/// API tokens, hashed with SHA-256 in `<data>/tokens.json`.
#[derive(Debug)]
pub struct ApiTokens {
    path: PathBuf,
    tokens: Mutex<Vec<StoredToken>>,
}

impl ApiTokens {
    /// Loads the token file (missing = none yet).
    pub fn load(data_dir: &Path) -> Result<ApiTokens, std::io::Error> {
        let path = data_dir.join(TOKENS_FILE);
        let tokens = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        Ok(ApiTokens {
            path,
            tokens: Mutex::new(tokens),
        })
    }

    /// Whether no token exists yet.
    pub fn is_empty(&self) -> bool {
        self.tokens.lock().map(|t| t.is_empty()).unwrap_or(true)
    }

    /// Creates a token named `name`, limited to `workspaces` (`None`: an
    /// operator's); returns it (the only time it is shown).
    pub fn create(
        &self,
        name: &str,
        workspaces: Option<BTreeSet<Workspace>>,
        now: u64,
    ) -> Result<Secret, std::io::Error> {
        let token = random_token()?;
        let mut tokens = self
            .tokens
            .lock()
            .map_err(|_| std::io::Error::other("token table poisoned"))?;
        tokens.push(StoredToken {
            name: name.to_owned(),
            sha256: digest(&token),
            created_at: now,
            workspaces,
        });
        let bytes = serde_json::to_vec_pretty(&*tokens).map_err(std::io::Error::other)?;
        write_private(&self.path, &bytes)?;
        Ok(Secret::new(token))
    }

    /// Who holds `presented`, if it is a token.
    pub fn check(&self, presented: &str) -> Option<TokenHolder> {
        let d = digest(presented);
        let tokens = self.tokens.lock().ok()?;
        tokens
            .iter()
            .find(|t| same(&t.sha256, &d))
            .map(|t| TokenHolder {
                name: t.name.clone(),
                workspaces: t.workspaces.clone(),
            })
    }
}

/// The claim plane over WebSocket takes the same tokens: an operator's opens
/// every workspace, a limited one its workspaces.
impl ClaimAuth for ApiTokens {
    fn authorize(&self, bearer: Option<&str>) -> Result<ClaimScope, ClaimAuthError> {
        let bearer = bearer.ok_or(ClaimAuthError::NoToken)?;
        let holder = self.check(bearer).ok_or(ClaimAuthError::BadToken)?;
        tracing::debug!(token = %holder.name, "claim-plane client admitted");
        Ok(match holder.workspaces {
            None => ClaimScope::All,
            Some(set) => ClaimScope::Workspaces(set),
        })
    }
}

/// Node identities (agent mTLS and gateway certificates) last this long.
const NODE_CERT_TTL_MS: Millis = 30 * 24 * 3_600_000;

/// Authenticates agents: a single-use bootstrap token gets a fresh node
/// identity from the pool CA; afterwards the agent's certificate must name
/// the node its hello names.
pub(crate) struct NodeAuth {
    pub(crate) tokens: Arc<BootstrapRegistry>,
    pub(crate) ca: Arc<PoolCa>,
    pub(crate) clock: Arc<dyn Clock>,
}

#[async_trait]
impl AgentAuth for NodeAuth {
    async fn authenticate(
        &self,
        hello: &AgentHelloInfo,
    ) -> Result<Option<NodeIdentity>, AuthError> {
        if let Some(cert_node) = &hello.cert_node {
            if cert_node == &hello.node {
                return Ok(None);
            }
            return Err(AuthError::NodeMismatch {
                cert: cert_node.clone(),
                hello: hello.node.clone(),
            });
        }
        let Some(token) = &hello.bootstrap_token else {
            return Err(AuthError::NoCredentials);
        };
        match self.tokens.consume(&hello.node, token.expose()).await {
            Ok(true) => {}
            Ok(false) => return Err(AuthError::BadToken),
            // The agent retries: the token may well be good.
            Err(e) => {
                tracing::warn!(node = %hello.node, error = %e, "bootstrap token not checked");
                return Err(AuthError::Unavailable(e.to_string()));
            }
        }
        let now = self.clock.now();
        let hosts = vec!["localhost".to_owned(), hello.peer.ip().to_string()];
        self.ca
            .issue_node_identity(&hello.node, &hosts, now, now + NODE_CERT_TTL_MS)
            .map(Some)
            .map_err(|e| AuthError::Unavailable(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_tokens_are_hashed_and_checked() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let tokens = ApiTokens::load(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert!(tokens.is_empty());
        let t = tokens
            .create("admin", None, 1)
            .unwrap_or_else(|e| panic!("{e}"));
        let holder = tokens.check(t.expose()).unwrap_or_else(|| panic!("known"));
        assert_eq!(holder.name, "admin");
        assert!(holder.is_operator());
        assert_eq!(tokens.check("nope"), None);
        let ws = |s: &str| Workspace::new(s).unwrap_or_else(|e| panic!("{e}"));
        let ci = tokens
            .create("ci", Some(BTreeSet::from([ws("team-a")])), 2)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!tokens.check(ci.expose()).is_some_and(|h| h.is_operator()));
        match tokens.authorize(Some(ci.expose())) {
            Ok(ClaimScope::Workspaces(set)) => assert_eq!(set, BTreeSet::from([ws("team-a")])),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(tokens.authorize(Some(t.expose())), Ok(ClaimScope::All));
        assert_eq!(tokens.authorize(None), Err(ClaimAuthError::NoToken));
        assert_eq!(
            tokens.authorize(Some("nope")),
            Err(ClaimAuthError::BadToken)
        );
        let file = std::fs::read_to_string(dir.path().join(TOKENS_FILE)).unwrap_or_default();
        assert!(
            !file.contains(t.expose()),
            "the token itself is never stored"
        );
        let again = ApiTokens::load(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            again.check(t.expose()).map(|h| h.name).as_deref(),
            Some("admin")
        );
        assert_eq!(
            again.check(ci.expose()).and_then(|h| h.workspaces),
            Some(BTreeSet::from([ws("team-a")])),
            "the scope survives a restart"
        );
    }
}
