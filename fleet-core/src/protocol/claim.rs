//! The claim plane: request, grant, renew, release, revoke.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{AffinityKey, ClaimId, Epoch, Millis, NodeId, PoolName, Workspace};

/// Default lease length (seed 003: 300 s).
pub const DEFAULT_LEASE_TTL_MS: Millis = 300_000;
/// The longest lease a claim may ask for (one day).
pub const MAX_LEASE_TTL_MS: Millis = 86_400_000;

/// CPU architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Arch {
    /// x86-64 / amd64.
    X86_64,
    /// ARM64 / aarch64.
    Aarch64,
}

/// What a claim needs from a node. Zero means "any".
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Requirements {
    /// Minimum vCPUs.
    #[serde(default)]
    pub cpus: u32,
    /// Minimum memory in MiB.
    #[serde(default)]
    pub memory_mb: u64,
    /// Required architecture, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<Arch>,
    /// Labels the node must carry with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl Requirements {
    /// Whether a node with these resources meets the requirements.
    pub fn satisfied_by(&self, node: &NodeResources) -> bool {
        self.satisfied_by_parts(node.cpus, node.memory_mb, node.arch, &node.labels)
    }

    /// [`Requirements::satisfied_by`] of a node's resources given apart
    /// (an offering's size and a pool's labels: nothing is built to ask).
    pub fn satisfied_by_parts(
        &self,
        cpus: u32,
        memory_mb: u64,
        arch: Arch,
        labels: &BTreeMap<String, String>,
    ) -> bool {
        cpus >= self.cpus
            && memory_mb >= self.memory_mb
            && self.arch.is_none_or(|a| a == arch)
            && self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// What a node offers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct NodeResources {
    /// vCPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mb: u64,
    /// Architecture.
    pub arch: Arch,
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A request for a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ClaimRequest {
    /// Caller-chosen id; a retried request with the same id gets the same grant.
    pub claim_id: ClaimId,
    /// The tenant.
    pub workspace: Workspace,
    /// The pool to claim from.
    pub pool: PoolName,
    /// What the node must offer.
    #[serde(default)]
    pub requirements: Requirements,
    /// Higher is served first.
    #[serde(default)]
    pub priority: i32,
    /// Lease length; renew before it runs out.
    #[serde(default = "default_lease")]
    pub lease_ttl_ms: Millis,
    /// Give up (claim expires) if not granted within this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wait_ms: Option<Millis>,
    /// The caller's age X25519 recipient (`age1…`); credentials are encrypted
    /// to it. Without one, the grant carries no credentials. Anything but an
    /// X25519 recipient (Bech32, `age` prefix, 32 bytes) is rejected
    /// `invalid` with the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    /// What the work reuses between builds (a repository, a cache): a node
    /// that last served the same key is preferred, and the claim may wait
    /// the pool's `affinity_wait_ms` for one that is busy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<AffinityKey>,
}

fn default_lease() -> Millis {
    DEFAULT_LEASE_TTL_MS
}

impl ClaimRequest {
    /// A request for any node of `pool`, with every optional field at its
    /// default (no requirements, priority 0, the default lease, no wait
    /// limit, no recipient, no affinity). Fields added later get defaults
    /// too, so code built on this keeps compiling.
    pub fn new(claim_id: ClaimId, workspace: Workspace, pool: PoolName) -> ClaimRequest {
        ClaimRequest {
            claim_id,
            workspace,
            pool,
            requirements: Requirements::default(),
            priority: 0,
            lease_ttl_ms: DEFAULT_LEASE_TTL_MS,
            max_wait_ms: None,
            recipient: None,
            affinity: None,
        }
    }

    /// The same request, sent to a node that last served `key` when one is
    /// free (see [`ClaimRequest::affinity`]).
    pub fn with_affinity(mut self, key: AffinityKey) -> ClaimRequest {
        self.affinity = Some(key);
        self
    }
}

/// The lease a grant or renewal gives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Lease {
    /// The claim.
    pub claim_id: ClaimId,
    /// When the lease ends unless renewed (ms since the Unix epoch).
    pub expires_at: Millis,
}

/// A renewed lease, with credentials that last as long as it.
///
/// On the wire it is a [`Lease`] with an optional `credentials` field, so a
/// renewal of a claim without a recipient reads the same as before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Renewal {
    /// The claim.
    pub claim_id: ClaimId,
    /// When the lease now ends unless renewed again (ms since the Unix epoch).
    pub expires_at: Millis,
    /// For a claim with a recipient: credentials whose certificate expires
    /// with the renewed lease (a certificate cannot be extended, so each
    /// renewal issues a new one; connections opened with the previous one
    /// stay up). Absent for a claim without a recipient, or when issuing
    /// failed — then the previous certificate stays valid until its own
    /// expiry and the daemon raises a `credentials_failed` alert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<SealedCredentials>,
}

impl Renewal {
    /// The lease part.
    pub fn lease(&self) -> Lease {
        Lease {
            claim_id: self.claim_id.clone(),
            expires_at: self.expires_at,
        }
    }
}

/// Per-claim credentials, sealed by the daemon: `ciphertext` is an
/// ASCII-armored age file encrypted to the claim's recipient; `signature` is
/// the daemon's Ed25519 signature over (claim id, recipient, expiry,
/// ciphertext); `signer` is the daemon's public key. The core treats all three
/// as opaque.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct SealedCredentials {
    /// Bundle format name, e.g. `fleet-credentials-v1`.
    pub format: String,
    /// The encrypted bundle.
    pub ciphertext: String,
    /// Base64 Ed25519 signature.
    pub signature: String,
    /// Base64 Ed25519 public key of the signer.
    pub signer: String,
    /// The certificate's expiry (ms since epoch), covered by the signature.
    /// The lease may outlive it (renewals, a daemon restart); the agent's
    /// gateway enforces the lease, the certificate bounds it.
    #[serde(default)]
    pub expires_at: Millis,
}

/// A granted claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ClaimGrant {
    /// The claim.
    pub claim_id: ClaimId,
    /// Its workspace.
    pub workspace: Workspace,
    /// Its pool.
    pub pool: PoolName,
    /// The node serving it.
    pub node: NodeId,
    /// Where to connect (the node agent's mTLS gateway, `host:port`).
    pub endpoint: String,
    /// The lease.
    pub lease: Lease,
    /// The leader epoch that granted it.
    pub epoch: Epoch,
    /// Sealed credentials, when the request named a recipient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<SealedCredentials>,
}

/// Messages a caller sends on the claim plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ClaimMsg {
    /// Ask for a node.
    Request(ClaimRequest),
    /// Extend a lease.
    Renew {
        /// The workspace.
        workspace: Workspace,
        /// The claim.
        claim_id: ClaimId,
    },
    /// Give the node back.
    Release {
        /// The workspace.
        workspace: Workspace,
        /// The claim.
        claim_id: ClaimId,
    },
}

impl ClaimMsg {
    /// The claim this message is about.
    pub fn claim_id(&self) -> &ClaimId {
        match self {
            ClaimMsg::Request(r) => &r.claim_id,
            ClaimMsg::Renew { claim_id, .. } | ClaimMsg::Release { claim_id, .. } => claim_id,
        }
    }

    /// The workspace this message is about.
    pub fn workspace(&self) -> &Workspace {
        match self {
            ClaimMsg::Request(r) => &r.workspace,
            ClaimMsg::Renew { workspace, .. } | ClaimMsg::Release { workspace, .. } => workspace,
        }
    }
}

/// Why a claim is still waiting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum PendingReason {
    /// Waiting for a free node; capacity is being added if the strategy allows.
    WaitingForCapacity,
    /// The workspace is at its claim quota.
    QuotaExceeded {
        /// The quota.
        max_claims: u32,
    },
    /// Granting would exceed the workspace's hourly dollar cap.
    DollarCapExceeded {
        /// The cap, in micro-dollars per hour.
        cap_micros_per_hour: i64,
    },
    /// No instance type this pool can run meets the requirements; the claim
    /// will wait until it expires unless the pool changes.
    Unsatisfiable {
        /// What cannot be met.
        why: String,
    },
    /// The pool is at its node limit and every node is busy.
    PoolAtCapacity {
        /// The pool's node limit.
        max_nodes: u32,
    },
    /// A node that last served the claim's affinity key is busy; the claim
    /// waits for it until `until` (the pool's `affinity_wait_ms` after it
    /// arrived), then takes any node.
    WaitingForAffinity {
        /// When it stops waiting for that node (ms since the Unix epoch).
        until: Millis,
    },
    /// The workspace spent its budget for the window; the claim waits for
    /// the next one.
    BudgetExhausted {
        /// The budget that is spent.
        budget: BudgetExceeded,
    },
}

/// A workspace budget that is spent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct BudgetExceeded {
    /// `hourly` or `daily` (UTC hours and days).
    pub window: String,
    /// The budget, in micro-dollars.
    pub cap_micros: i64,
    /// Attributed in this window so far, in micro-dollars.
    pub spent_micros: i64,
    /// When the window resets (ms since the Unix epoch).
    pub resets_at: Millis,
}

/// Why a granted claim was taken away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum RevokeReason {
    /// The lease ran out without a renewal.
    Expired,
    /// The node stopped heartbeating.
    NodeLost,
    /// The provider is reclaiming a spot node.
    SpotInterrupted {
        /// When the provider will take it (ms since epoch).
        deadline: Millis,
    },
    /// The node is draining (agent shutdown).
    Drained,
    /// Never granted within `max_wait_ms`.
    WaitExceeded,
    /// An operator revoked it.
    Operator {
        /// Free text.
        note: String,
    },
}

/// A revocation notice: the caller must stop using the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Revocation {
    /// The claim.
    pub claim_id: ClaimId,
    /// Its workspace.
    pub workspace: Workspace,
    /// The node it held, if it was granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeId>,
    /// Why.
    pub reason: RevokeReason,
}

/// Why a claim message was refused outright.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "code", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ClaimRejection {
    /// No such pool.
    #[error("unknown pool {pool}")]
    UnknownPool {
        /// The pool asked for.
        pool: String,
    },
    /// No such claim (renew or release of an unknown id).
    #[error("unknown claim")]
    UnknownClaim,
    /// The claim id is already used by a different request.
    #[error("claim id already used by a different request")]
    IdReused,
    /// The claim already ended; it cannot be renewed.
    #[error("claim already ended")]
    Ended,
    /// The request is invalid.
    #[error("invalid request: {why}")]
    Invalid {
        /// What is wrong.
        why: String,
    },
    /// This daemon is not the leader.
    #[error("not the leader; retry against the leader")]
    NotLeader,
    /// The daemon is shedding load; retry later.
    #[error("overloaded; retry later")]
    Overloaded,
    /// The caller's credentials do not cover this workspace.
    #[error("not allowed in workspace {workspace}")]
    Forbidden {
        /// The workspace asked for.
        workspace: String,
    },
    /// The workspace spent its budget and its quota says reject.
    #[error(
        "the workspace's {} budget of {} micro-dollars is spent until {}",
        budget.window, budget.cap_micros, budget.resets_at
    )]
    BudgetExhausted {
        /// The budget that is spent.
        budget: BudgetExceeded,
    },
}

impl ClaimRejection {
    /// Whether retrying the same message later can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ClaimRejection::NotLeader | ClaimRejection::Overloaded)
    }
}

/// Messages the control plane sends to a caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ClaimReply {
    /// The claim is granted.
    Granted(ClaimGrant),
    /// The claim is accepted and waiting.
    Pending {
        /// The claim.
        claim_id: ClaimId,
        /// Why it waits.
        reason: PendingReason,
    },
    /// The lease was extended.
    Renewed(Renewal),
    /// The claim is released.
    Released {
        /// The claim.
        claim_id: ClaimId,
    },
    /// The claim was revoked or expired.
    Revoked(Revocation),
    /// The message was refused.
    Rejected {
        /// The claim, when the message named one that parsed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        claim_id: Option<ClaimId>,
        /// Why.
        error: ClaimRejection,
    },
}

/// The format name of [`CredentialsBundle`] and of [`SealedCredentials`].
pub const CREDENTIALS_FORMAT: &str = "fleet-credentials-v1";

/// What a claimant finds inside [`SealedCredentials::ciphertext`] after
/// decrypting it with its age identity: JSON of this struct.
///
/// `cert_pem` is a client certificate signed by the pool CA whose SAN holds
/// the URI [`crate::subjects::Subjects::claim_cert_uri`] of the claim and whose
/// validity ends at `expires_at`; the node's gateway accepts it while the
/// claim is active. The gateway's own certificate is signed by the same CA for
/// the DNS name [`crate::subjects::Subjects::node_server_name`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CredentialsBundle {
    /// Always `fleet-credentials-v1` ([`CREDENTIALS_FORMAT`]).
    pub format: String,
    /// The claim.
    pub claim_id: ClaimId,
    /// Its workspace.
    pub workspace: Workspace,
    /// The node.
    pub node: NodeId,
    /// The node's gateway (`host:port`).
    pub endpoint: String,
    /// Certificate expiry = lease expiry at grant (ms since epoch).
    pub expires_at: Millis,
    /// The pool CA certificate (PEM): trust anchor for the gateway.
    pub ca_pem: String,
    /// The claim's client certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PEM).
    pub key_pem: super::Secret,
}

/// The bytes the daemon signs with Ed25519 for a sealed bundle: the format
/// name, claim id, recipient, expiry and ciphertext, each followed by a
/// newline. A verifier rebuilds them from what it asked for and what it got.
pub fn credentials_signing_payload(
    claim_id: &ClaimId,
    recipient: &str,
    expires_at: Millis,
    ciphertext: &str,
) -> Vec<u8> {
    format!("{CREDENTIALS_FORMAT}\n{claim_id}\n{recipient}\n{expires_at}\n{ciphertext}\n")
        .into_bytes()
}
