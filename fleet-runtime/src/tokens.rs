//! Secrets the runtime makes: random tokens, their digests, and the
//! single-use bootstrap tokens a new node's agent presents once.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use fleet_core::clock::Clock;
use fleet_core::ids::NodeId;
use fleet_core::protocol::{BootstrapRecord, Secret, decode, encode};
use fleet_core::store::{Key, Revision, Store, StoreError};
use fleet_core::subjects::Subjects;
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

/// Why a bootstrap token could not be minted, checked or forgotten.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BootstrapError {
    /// The OS gave no randomness: no token can be safe, so none is made
    /// (never an empty or predictable one).
    #[error("no randomness for a bootstrap token: {0}")]
    Entropy(String),
    /// The store failed.
    #[error("bootstrap record: {0}")]
    Store(#[from] StoreError),
    /// A stored record could not be decoded or encoded.
    #[error("bootstrap record {key} is unreadable: {error}")]
    Corrupt {
        /// Its key.
        key: String,
        /// The decode error.
        error: String,
    },
    /// Other writers kept changing the record between our read and write.
    #[error("bootstrap record {0} kept changing; try again")]
    Contended(String),
}

impl BootstrapError {
    /// A short stable name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            BootstrapError::Entropy(_) => "entropy",
            BootstrapError::Store(_) => "store",
            BootstrapError::Corrupt { .. } => "corrupt",
            BootstrapError::Contended(_) => "contended",
        }
    }
}

/// Read-modify-write attempts before [`BootstrapError::Contended`].
const CAS_ATTEMPTS: usize = 16;

/// Single-use bootstrap tokens, kept in the store as digests
/// ([`BootstrapRecord`] at [`Subjects::bootstrap_key`]): minted before each
/// provider create of a node, consumed by its agent's first hello. Because
/// the store holds them, a node created by one daemon incarnation joins the
/// next one; give it the leader's fenced store so a deposed daemon can
/// neither mint nor consume.
pub struct BootstrapRegistry {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for BootstrapRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapRegistry").finish_non_exhaustive()
    }
}

impl BootstrapRegistry {
    /// Tokens kept in `store`, timestamped by `clock`.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> BootstrapRegistry {
        BootstrapRegistry { store, clock }
    }

    async fn read(&self, key: &Key) -> Result<Option<(BootstrapRecord, Revision)>, BootstrapError> {
        let Some(v) = self.store.get(key).await? else {
            return Ok(None);
        };
        let record = decode(&v.value).map_err(|e| BootstrapError::Corrupt {
            key: key.to_string(),
            error: e.to_string(),
        })?;
        Ok(Some((record, v.revision)))
    }

    /// Consumes `token` for `node`: `Ok(true)` exactly once for any token
    /// minted for it (the record is deleted, so every other token of the
    /// node dies with it), `Ok(false)` for anything else.
    pub async fn consume(&self, node: &NodeId, token: &str) -> Result<bool, BootstrapError> {
        let key = Subjects::bootstrap_key(node);
        let presented = digest(token);
        for _ in 0..CAS_ATTEMPTS {
            let Some((record, revision)) = self.read(&key).await? else {
                return Ok(false);
            };
            // Every digest is compared, so timing says nothing of which.
            let known = record
                .digests
                .iter()
                .fold(false, |hit, d| same(d, &presented) | hit);
            if !known {
                return Ok(false);
            }
            match self.store.delete(&key, revision).await {
                Ok(()) => return Ok(true),
                // Minted again or consumed meanwhile: look again.
                Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(BootstrapError::Contended(key.to_string()))
    }

    /// Deletes the records of nodes not in `live` (nodes deleted while
    /// their record's removal was lost to a crash); returns how many.
    pub async fn retain(&self, live: &BTreeSet<NodeId>) -> Result<usize, BootstrapError> {
        let mut removed = 0;
        for (key, v) in self.store.list(Subjects::BOOTSTRAP_PREFIX).await? {
            let node = key
                .as_str()
                .strip_prefix(Subjects::BOOTSTRAP_PREFIX)
                .and_then(|n| NodeId::new(n).ok());
            if node.is_some_and(|n| live.contains(&n)) {
                continue;
            }
            match self.store.delete(&key, v.revision).await {
                Ok(()) => removed += 1,
                Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(removed)
    }
}

#[async_trait]
impl BootstrapTokens for BootstrapRegistry {
    async fn mint(&self, node: &NodeId) -> Result<Secret, BootstrapError> {
        // No randomness, no token: an empty or guessable one would let
        // anyone join as this node.
        let token = random_token().map_err(|e| BootstrapError::Entropy(e.to_string()))?;
        let key = Subjects::bootstrap_key(node);
        let corrupt = |e: fleet_core::protocol::EncodeError| BootstrapError::Corrupt {
            key: key.to_string(),
            error: e.to_string(),
        };
        for _ in 0..CAS_ATTEMPTS {
            let now = self.clock.now();
            let written = match self.read(&key).await? {
                None => {
                    let record = BootstrapRecord {
                        node: node.clone(),
                        digests: vec![digest(&token)],
                        minted_at: now,
                    };
                    let bytes = Bytes::from(encode(&record).map_err(corrupt)?);
                    self.store.create(&key, bytes).await.map(drop)
                }
                Some((mut record, revision)) => {
                    record.digests.push(digest(&token));
                    let excess = record
                        .digests
                        .len()
                        .saturating_sub(BootstrapRecord::MAX_DIGESTS);
                    record.digests.drain(..excess);
                    record.minted_at = now;
                    let bytes = Bytes::from(encode(&record).map_err(corrupt)?);
                    self.store.update(&key, bytes, revision).await.map(drop)
                }
            };
            match written {
                Ok(()) => return Ok(Secret::new(token)),
                Err(
                    StoreError::AlreadyExists { .. }
                    | StoreError::Conflict { .. }
                    | StoreError::NotFound { .. },
                ) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(BootstrapError::Contended(key.to_string()))
    }

    async fn forget(&self, node: &NodeId) -> Result<(), BootstrapError> {
        let key = Subjects::bootstrap_key(node);
        for _ in 0..CAS_ATTEMPTS {
            let Some(v) = self.store.get(&key).await? else {
                return Ok(());
            };
            match self.store.delete(&key, v.revision).await {
                Ok(()) | Err(StoreError::NotFound { .. }) => return Ok(()),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(BootstrapError::Contended(key.to_string()))
    }

    async fn retain(&self, live: &BTreeSet<NodeId>) -> Result<usize, BootstrapError> {
        BootstrapRegistry::retain(self, live).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_core::memory::store::MemoryStore;

    struct Fixed;
    impl Clock for Fixed {
        fn now(&self) -> fleet_core::ids::Millis {
            42
        }
    }

    fn node(s: &str) -> NodeId {
        NodeId::new(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn registry(store: &Arc<MemoryStore>) -> BootstrapRegistry {
        BootstrapRegistry::new(store.clone(), Arc::new(Fixed))
    }

    async fn consume(reg: &BootstrapRegistry, n: &NodeId, token: &str) -> bool {
        reg.consume(n, token)
            .await
            .unwrap_or_else(|e| panic!("consume: {e}"))
    }

    #[tokio::test]
    async fn bootstrap_tokens_are_single_use() {
        let store = Arc::new(MemoryStore::new());
        let reg = registry(&store);
        let n1 = node("n1");
        let t = reg.mint(&n1).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(!consume(&reg, &n1, "guess").await);
        assert!(
            !consume(&reg, &n1, "").await,
            "an empty token is never valid"
        );
        assert!(
            !consume(&reg, &node("n2"), t.expose()).await,
            "another node's"
        );
        assert!(consume(&reg, &n1, t.expose()).await);
        assert!(!consume(&reg, &n1, t.expose()).await, "second use refused");
    }

    #[tokio::test]
    async fn tokens_outlive_the_registry_and_every_earlier_one_stays_valid_until_one_is_used() {
        let store = Arc::new(MemoryStore::new());
        let n1 = node("n1");
        // One incarnation mints, crashes; the next re-issues the create.
        let first = registry(&store)
            .mint(&n1)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let restarted = registry(&store);
        let second = restarted.mint(&n1).await.unwrap_or_else(|e| panic!("{e}"));
        let raw = store
            .get(&Subjects::bootstrap_key(&n1))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("stored"));
        let record: BootstrapRecord = decode(&raw.value).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            record.digests,
            vec![digest(first.expose()), digest(second.expose())]
        );
        assert!(
            !String::from_utf8_lossy(&raw.value).contains(first.expose()),
            "only digests are stored"
        );
        // The instance the first create made joins the restarted daemon...
        assert!(consume(&restarted, &n1, first.expose()).await);
        // ...and the node has joined: no token of it works again.
        assert!(!consume(&restarted, &n1, second.expose()).await);
    }

    #[tokio::test]
    async fn a_record_keeps_the_newest_digests_and_forget_and_retain_remove_records() {
        let store = Arc::new(MemoryStore::new());
        let reg = registry(&store);
        let n1 = node("n1");
        let mut tokens = Vec::new();
        for _ in 0..BootstrapRecord::MAX_DIGESTS + 2 {
            tokens.push(reg.mint(&n1).await.unwrap_or_else(|e| panic!("{e}")));
        }
        assert!(!consume(&reg, &n1, tokens[0].expose()).await, "dropped");
        assert!(consume(&reg, &n1, tokens[tokens.len() - 1].expose()).await);

        let (n2, n3) = (node("n2"), node("n3"));
        let t2 = reg.mint(&n2).await.unwrap_or_else(|e| panic!("{e}"));
        reg.forget(&n2).await.unwrap_or_else(|e| panic!("{e}"));
        reg.forget(&n2)
            .await
            .unwrap_or_else(|e| panic!("twice: {e}"));
        assert!(!consume(&reg, &n2, t2.expose()).await);

        let t3 = reg.mint(&n3).await.unwrap_or_else(|e| panic!("{e}"));
        let t1 = reg.mint(&n1).await.unwrap_or_else(|e| panic!("{e}"));
        let live = BTreeSet::from([n3.clone()]);
        assert_eq!(reg.retain(&live).await.unwrap_or_else(|e| panic!("{e}")), 1);
        assert!(!consume(&reg, &n1, t1.expose()).await, "n1 is gone");
        assert!(consume(&reg, &n3, t3.expose()).await, "n3 lives");
    }

    #[tokio::test]
    async fn concurrent_hellos_with_one_token_admit_one() {
        let store = Arc::new(MemoryStore::new());
        let reg = Arc::new(registry(&store));
        let n1 = node("n1");
        let t = reg.mint(&n1).await.unwrap_or_else(|e| panic!("{e}"));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (reg, n1, t) = (reg.clone(), n1.clone(), t.expose().to_owned());
                tokio::spawn(async move { reg.consume(&n1, &t).await })
            })
            .collect();
        let mut admitted = 0;
        for task in tasks {
            if task
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|e| panic!("{e}"))
            {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 1);
    }
}
