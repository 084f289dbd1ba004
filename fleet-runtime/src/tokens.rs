//! Secrets the runtime makes: random tokens, their digests, and the
//! single-use bootstrap tokens a new node's agent presents once.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use fleet_core::ids::NodeId;
use fleet_core::protocol::Secret;
use sha2::{Digest, Sha256};

use crate::driver::BootstrapTokens;

/// A fresh random token: 32 bytes, hex.
pub fn random_token() -> Result<String, std::io::Error> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(hex(&bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 of a token, hex: what is kept instead of the token.
pub fn digest(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// Compares without an early exit, so timing says nothing of a near miss.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
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
    fn bootstrap_tokens_are_single_use() {
        let reg = BootstrapRegistry::default();
        let node = NodeId::new("n1").unwrap_or_else(|e| panic!("{e}"));
        let t = reg.mint(&node);
        assert!(!reg.consume(&node, "guess"));
        assert!(reg.consume(&node, t.expose()));
        assert!(!reg.consume(&node, t.expose()), "second use refused");
    }
}
