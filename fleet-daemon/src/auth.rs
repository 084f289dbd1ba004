//! API bearer tokens (stored hashed, shown once) and single-use agent
//! bootstrap tokens.
//!
//! An API token is either an operator's (every workspace, the HTTP API, new
//! tokens) or limited to a list of workspaces: then it opens the claim plane
//! for those workspaces only and nothing of the HTTP API.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use fleet_core::ids::{NodeId, Workspace};
use fleet_core::protocol::Secret;
use fleet_transport_ws::{ClaimAuth, ClaimAuthError, ClaimScope};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::driver::BootstrapTokens;

/// The file API token hashes are kept in.
pub const TOKENS_FILE: &str = "tokens.json";
/// The file the first admin token is written to (0600), for `fleetctl` on
/// the same host.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// A fresh random token: 32 bytes, hex.
pub fn random_token() -> Result<String, std::io::Error> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(hex(&bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn digest(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// Compares without an early exit, so timing says nothing of a near miss.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

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

/// Writes `bytes` to `path` readable by the owner only.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), std::io::Error> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Single-use bootstrap tokens: minted per node at create, consumed at the
/// agent's first hello. Only hashes are kept.
#[derive(Debug, Default)]
pub struct BootstrapRegistry {
    pending: Mutex<BTreeMap<NodeId, String>>,
}

impl BootstrapRegistry {
    /// Consumes `token` for `node`: true exactly once for the minted token.
    pub fn consume(&self, node: &NodeId, token: &str) -> bool {
        let Ok(mut pending) = self.pending.lock() else {
            return false;
        };
        match pending.get(node) {
            Some(h) if same(h, &digest(token)) => {
                pending.remove(node);
                true
            }
            _ => false,
        }
    }
}

impl BootstrapTokens for BootstrapRegistry {
    fn mint(&self, node: &NodeId) -> Secret {
        // getrandom failing means the OS has no entropy: no token can be
        // safe then, so the agent will fail to bootstrap and the node is
        // replaced after its boot timeout.
        let token = random_token().unwrap_or_default();
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert(node.clone(), digest(&token));
        }
        Secret::new(token)
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

    #[test]
    fn bootstrap_tokens_are_single_use() {
        let reg = BootstrapRegistry::default();
        let node = NodeId::new("n1").unwrap_or_else(|e| panic!("{e}"));
        let t = reg.mint(&node);
        assert!(!reg.consume(&node, "guess"));
        assert!(reg.consume(&node, t.expose()));
        assert!(!reg.consume(&node, t.expose()), "second use refused");
    }
}
