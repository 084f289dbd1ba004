//! Records as stored: the KV schema. Keys are built in [`crate::subjects`].

use serde::{Deserialize, Serialize};

use super::{ClaimRequest, PendingReason, Receipt, RevokeReason, SealedCredentials, TaskSpec};
use crate::ids::{CommandId, Epoch, FleetId, InstanceType, Millis, NodeId, PoolName};

/// A claim's lifecycle: `pending → granted → active → released | expired |
/// revoked{reason}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "state", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ClaimState {
    /// Accepted, waiting for a node.
    Pending,
    /// A node is assigned and the grant sent.
    Granted,
    /// The caller renewed at least once (it is using the node).
    Active,
    /// The caller released it.
    Released,
    /// The lease or the wait ran out.
    Expired,
    /// Taken away.
    Revoked {
        /// Why.
        reason: RevokeReason,
    },
}

impl ClaimState {
    /// Whether the claim has ended.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            ClaimState::Released | ClaimState::Expired | ClaimState::Revoked { .. }
        )
    }

    /// Whether the claim holds a node.
    pub fn holds_node(&self) -> bool {
        matches!(self, ClaimState::Granted | ClaimState::Active)
    }

    /// A short name for metrics and tables.
    pub fn name(&self) -> &'static str {
        match self {
            ClaimState::Pending => "pending",
            ClaimState::Granted => "granted",
            ClaimState::Active => "active",
            ClaimState::Released => "released",
            ClaimState::Expired => "expired",
            ClaimState::Revoked { .. } => "revoked",
        }
    }
}

/// A stored claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ClaimRecord {
    /// The request as accepted.
    pub request: ClaimRequest,
    /// Where it is in its lifecycle.
    pub state: ClaimState,
    /// When it was accepted.
    pub enqueued_at: Millis,
    /// The node assigned, once granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeId>,
    /// The node's endpoint at grant time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// When it was granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granted_at: Option<Millis>,
    /// Lease end while granted/active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Millis>,
    /// Sealed credentials, kept so a retried request gets the same grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<SealedCredentials>,
    /// Why it is waiting, while pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_reason: Option<PendingReason>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Millis>,
    /// The epoch that last wrote it.
    pub epoch: Epoch,
}

/// A node's lifecycle: `requested → provisioning → booting → ready ⇄ busy →
/// draining → stopping → stopped → starting → … → deleting → gone`, plus
/// `resizing`, `snapshotting`, `lost` and `interrupted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum NodeState {
    /// Recorded; the provider create is about to be issued.
    Requested,
    /// The provider is creating it.
    Provisioning,
    /// Created; waiting for the agent's hello.
    Booting,
    /// Agent connected, no claims.
    Ready,
    /// Serving claims. Derived from the claims a node holds: the store keeps
    /// `ready` for a busy node (claim records say which node they hold), so a
    /// grant costs one write, not two.
    Busy,
    /// Finishing its claims; takes no new ones.
    Draining,
    /// The provider is stopping it.
    Stopping,
    /// Stopped (powered off).
    Stopped,
    /// The provider is starting it.
    Starting,
    /// The provider is resizing it.
    Resizing,
    /// The provider is snapshotting it.
    Snapshotting,
    /// The provider is deleting it.
    Deleting,
    /// Deleted.
    Gone,
    /// Stopped heartbeating; being replaced.
    Lost,
    /// Spot interruption notice received.
    Interrupted,
}

impl NodeState {
    /// A short name for metrics and tables.
    pub fn name(self) -> &'static str {
        match self {
            NodeState::Requested => "requested",
            NodeState::Provisioning => "provisioning",
            NodeState::Booting => "booting",
            NodeState::Ready => "ready",
            NodeState::Busy => "busy",
            NodeState::Draining => "draining",
            NodeState::Stopping => "stopping",
            NodeState::Stopped => "stopped",
            NodeState::Starting => "starting",
            NodeState::Resizing => "resizing",
            NodeState::Snapshotting => "snapshotting",
            NodeState::Deleting => "deleting",
            NodeState::Gone => "gone",
            NodeState::Lost => "lost",
            NodeState::Interrupted => "interrupted",
        }
    }

    /// Every state, for metrics.
    pub const ALL: [NodeState; 15] = [
        NodeState::Requested,
        NodeState::Provisioning,
        NodeState::Booting,
        NodeState::Ready,
        NodeState::Busy,
        NodeState::Draining,
        NodeState::Stopping,
        NodeState::Stopped,
        NodeState::Starting,
        NodeState::Resizing,
        NodeState::Snapshotting,
        NodeState::Deleting,
        NodeState::Gone,
        NodeState::Lost,
        NodeState::Interrupted,
    ];

    /// Whether the provider bills it as running.
    pub fn bills_running(self) -> bool {
        !matches!(
            self,
            NodeState::Requested | NodeState::Stopped | NodeState::Gone
        )
    }

    /// Whether the node will be able to serve claims without a new boot
    /// (up now or on its way up).
    pub fn is_coming_up(self) -> bool {
        matches!(
            self,
            NodeState::Requested
                | NodeState::Provisioning
                | NodeState::Booting
                | NodeState::Starting
                | NodeState::Resizing
        )
    }
}

/// On-demand or spot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Market {
    /// Full price, not interrupted.
    OnDemand,
    /// Discounted, may be interrupted.
    Spot,
}

/// A snapshot a node can boot from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct SnapshotRef {
    /// Provider id of the snapshot/image.
    pub id: String,
    /// Size in GB (priced per GB-month).
    pub size_gb: u32,
    /// When it was taken.
    pub created_at: Millis,
}

/// What a node boots from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum BootSource {
    /// The pool's base image.
    Image {
        /// Provider image id or name.
        image: String,
    },
    /// A snapshot.
    Snapshot(SnapshotRef),
}

/// A stored node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct NodeRecord {
    /// The node.
    pub node: NodeId,
    /// Its pool.
    pub pool: PoolName,
    /// Its current instance type.
    pub instance_type: InstanceType,
    /// On-demand or spot.
    pub market: Market,
    /// What it booted from.
    pub source: BootSource,
    /// Lifecycle state.
    pub state: NodeState,
    /// The provider's id, once created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_id: Option<String>,
    /// The agent gateway endpoint, once it said hello.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// When it was requested.
    pub created_at: Millis,
    /// When it entered its current state.
    pub state_since: Millis,
    /// The epoch that last wrote it.
    pub epoch: Epoch,
    /// Claims and jobs it has been given so far (kept exact in the store
    /// for pools with `max_uses`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub uses: u32,
    /// Its pool's `revision` when it was created.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub revision: String,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A job's lifecycle in the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "state", rename_all = "snake_case")]
#[non_exhaustive]
pub enum JobState {
    /// Waiting for a node (or for its retry backoff to end).
    Queued {
        /// Not before this time.
        #[serde(default)]
        not_before: Millis,
    },
    /// Dispatched to a node.
    Leased {
        /// The node.
        node: NodeId,
        /// The command id of this attempt.
        command: CommandId,
    },
    /// Running on a node.
    Running {
        /// The node.
        node: NodeId,
        /// The command id of this attempt.
        command: CommandId,
    },
    /// The process ended and the scorer is `manual`: waits for a
    /// person's [`JobMsg::Verdict`](super::JobMsg::Verdict). Holds no node.
    AwaitingVerdict {
        /// The node it ran on.
        node: NodeId,
        /// The exit code of the attempt.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
    },
    /// Finished; see the receipt.
    Done,
    /// Cancelled.
    Cancelled,
}

impl JobState {
    /// The node the job holds now (leased or running), if any.
    pub fn node(&self) -> Option<&NodeId> {
        match self {
            JobState::Leased { node, .. } | JobState::Running { node, .. } => Some(node),
            _ => None,
        }
    }

    /// A short name for metrics and tables.
    pub fn name(&self) -> &'static str {
        match self {
            JobState::Queued { .. } => "queued",
            JobState::Leased { .. } => "leased",
            JobState::Running { .. } => "running",
            JobState::AwaitingVerdict { .. } => "awaiting_verdict",
            JobState::Done => "done",
            JobState::Cancelled => "cancelled",
        }
    }
}

/// A stored job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct JobRecord {
    /// The spec as submitted.
    pub spec: TaskSpec,
    /// Where it is.
    pub state: JobState,
    /// Attempts started.
    pub attempts: u32,
    /// When it was submitted.
    pub submitted_at: Millis,
    /// The last heartbeat or event from its node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event_at: Option<Millis>,
    /// Whether an alert was raised.
    #[serde(default)]
    pub escalated: bool,
    /// The outcome, once done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<Receipt>,
    /// The run it is a task of, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<crate::ids::RunId>,
    /// The epoch that last wrote it.
    pub epoch: Epoch,
}

/// Per-pool state that outlives nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PoolRecord {
    /// The pool.
    pub pool: PoolName,
    /// The newest snapshot to boot from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotRef>,
    /// Sequence for node ids.
    pub next_node_seq: u64,
    /// The epoch that last wrote it.
    pub epoch: Epoch,
}

/// The leader lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct LeaderRecord {
    /// Who holds it.
    pub holder: String,
    /// The fencing epoch.
    pub epoch: Epoch,
    /// When it lapses unless renewed.
    pub expires_at: Millis,
}

/// A daemon waiting to lead (key `followers.<holder>`): written by it
/// every third of a lease while it waits on a shared store, deleted when
/// it leads; the leader lists the recent ones (`fleetctl leader`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct FollowerRecord {
    /// The daemon (as it would name itself in the leader record).
    pub holder: String,
    /// When it last looked at the lease.
    pub seen_at: Millis,
}

/// The fleet's identity, written once at its first start with a create
/// (so two starters racing on a fresh store agree on one) and read at
/// every later start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct FleetRecord {
    /// The identity: in every instance's `fleet-id` tag and node id.
    pub fleet_id: FleetId,
    /// When it was generated.
    pub created_at: Millis,
}

/// The bootstrap tokens a node's agent may present at its first hello,
/// kept as SHA-256 digests (hex) — never the tokens. Written by the runtime
/// before each provider create of the node (a create re-issued after a
/// restart mints one more, while the instance an earlier create made still
/// holds its own), deleted when one of them is used or the node is gone: a
/// node joins once. Stored, not held in memory, so that a node created by
/// one daemon incarnation can join the next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct BootstrapRecord {
    /// The node.
    pub node: NodeId,
    /// Digests of the tokens minted for it, oldest first (at most
    /// [`BootstrapRecord::MAX_DIGESTS`]).
    pub digests: Vec<String>,
    /// When the last one was minted.
    pub minted_at: Millis,
}

impl BootstrapRecord {
    /// How many digests a record keeps: a node whose create was re-issued
    /// more often than this keeps the newest.
    pub const MAX_DIGESTS: usize = 8;
}

/// Anything the controller stores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Record {
    /// A claim.
    Claim(ClaimRecord),
    /// A node.
    Node(NodeRecord),
    /// A job.
    Job(JobRecord),
    /// A pool.
    Pool(PoolRecord),
    /// A run.
    Run(super::RunRecord),
}

impl Record {
    /// What kind of record it is, in words (`claim`, `node`, `job`, `run`,
    /// `pool`).
    pub fn kind(&self) -> &'static str {
        match self {
            Record::Claim(_) => "claim",
            Record::Node(_) => "node",
            Record::Job(_) => "job",
            Record::Run(_) => "run",
            Record::Pool(_) => "pool",
        }
    }

    /// The epoch of the leader that wrote it.
    pub fn epoch(&self) -> Epoch {
        match self {
            Record::Claim(r) => r.epoch,
            Record::Node(r) => r.epoch,
            Record::Job(r) => r.epoch,
            Record::Pool(r) => r.epoch,
            Record::Run(r) => r.epoch,
        }
    }
}

/// What the ssh provider's agent on a host is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum HostAgentState {
    /// The agent was started (the node runs).
    Running,
    /// The agent was stopped; the node's files stay.
    Stopped,
}

/// `<dir>/instance.json` on a host of the ssh provider: the one node the
/// host serves, written by the daemon over SSH before it starts the
/// agent, read back by `list` (so a restarted daemon adopts it) and
/// removed with the node. A host without it is free.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct SshHostRecord {
    /// The node.
    pub node: NodeId,
    /// `<host name>/<node>`.
    pub provider_id: String,
    /// `ssh.host`.
    pub instance_type: InstanceType,
    /// Whether its agent runs.
    pub state: HostAgentState,
    /// The node's tags (fleet id, namespace, pool, …): whose it is.
    pub tags: std::collections::BTreeMap<String, String>,
    /// When it was made.
    pub created_at: Millis,
}
