//! The transport traits: how protocol messages move between callers, agents
//! and the control plane.
//!
//! [`Transport`] is the control-plane side: it yields [`Inbound`] messages
//! and sends [`Outbound`] ones to a [`Peer`]. [`ClaimClient`] is the caller
//! side. Implementations: in-process ([`crate::memory`]), WebSocket, NATS.

use std::fmt;

use async_trait::async_trait;
use futures_core::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::ids::{ClaimId, NodeId, Workspace};
use crate::protocol::{
    AgentMsg, ClaimGrant, ClaimMsg, ClaimRejection, ClaimReply, ClaimRequest, DaemonMsg,
    DecodeError, JobMsg, JobReply, Renewal, Revocation,
};

/// An opaque reply address chosen by the transport (a NATS inbox, a
/// WebSocket connection id, an in-process channel id).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReplyTo(pub String);

impl fmt::Debug for ReplyTo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReplyTo({})", self.0)
    }
}

/// Where an outbound message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Peer {
    /// The sender of an earlier inbound message.
    Reply(ReplyTo),
    /// Every listener of a claim's subject in a workspace (grants and
    /// revocations for callers that lost their reply address).
    Claim(Workspace, ClaimId),
    /// A node's agent session.
    Node(NodeId),
}

/// A message arriving at the control plane.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Inbound {
    /// A claim-plane message.
    Claim {
        /// The message.
        msg: ClaimMsg,
        /// Where to answer.
        reply: ReplyTo,
    },
    /// A job-plane message.
    Job {
        /// The message.
        msg: JobMsg,
        /// Where to answer.
        reply: ReplyTo,
    },
    /// A message from an agent session (the first is always `Hello`).
    Agent {
        /// The node.
        node: NodeId,
        /// The message.
        msg: AgentMsg,
    },
    /// An agent session closed.
    AgentGone {
        /// The node.
        node: NodeId,
    },
}

/// A message leaving the control plane.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Outbound {
    /// To a caller.
    Claim(ClaimReply),
    /// To a submitter.
    Job(JobReply),
    /// To an agent.
    Agent(DaemonMsg),
}

/// A transport failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The transport is shut down.
    #[error("transport closed")]
    Closed,
    /// No answer in time.
    #[error("timed out after {0} ms")]
    Timeout(u64),
    /// The peer is not connected.
    #[error("peer not connected: {0}")]
    NoPeer(String),
    /// The peer's send queue is full; the message was dropped.
    #[error("peer send queue full: {0}")]
    Backpressure(String),
    /// A message could not be decoded.
    #[error("decode: {0}")]
    Decode(#[from] DecodeError),
    /// Not allowed (authentication or authorization).
    #[error("permission denied: {0}")]
    Permission(String),
    /// An I/O or protocol failure.
    #[error("transport I/O: {0}")]
    Io(String),
}

impl TransportError {
    /// A short stable name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            TransportError::Closed => "closed",
            TransportError::Timeout(_) => "timeout",
            TransportError::NoPeer(_) => "no_peer",
            TransportError::Backpressure(_) => "backpressure",
            TransportError::Decode(_) => "decode",
            TransportError::Permission(_) => "permission",
            TransportError::Io(_) => "io",
        }
    }

    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            TransportError::Timeout(_)
                | TransportError::NoPeer(_)
                | TransportError::Backpressure(_)
                | TransportError::Io(_)
        )
    }
}

/// The control-plane side of a transport.
#[async_trait]
pub trait Transport: Send + Sync {
    /// The next inbound message. Malformed input never reaches here: the
    /// transport answers it with a rejection (where it can) and logs it.
    async fn recv(&self) -> Result<Inbound, TransportError>;
    /// Sends a message to a peer.
    async fn send(&self, to: &Peer, msg: Outbound) -> Result<(), TransportError>;
}

/// Why a claim call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClaimError {
    /// The control plane refused it.
    #[error("rejected: {0}")]
    Rejected(ClaimRejection),
    /// The claim ended before it was granted (wait exceeded) or was revoked.
    #[error("revoked: {0:?}")]
    Revoked(Revocation),
    /// The transport failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The control plane answered with something this call did not expect.
    #[error("unexpected reply: {0}")]
    Unexpected(String),
}

impl ClaimError {
    /// What a claim-plane call makes of an answer that is not the one it
    /// waits for: a rejection or revocation of this claim (or a rejection
    /// naming no claim), else [`ClaimError::Unexpected`]. Every
    /// [`ClaimClient`] implementation shares this reading.
    pub fn from_reply(id: &ClaimId, reply: ClaimReply, call: &str) -> ClaimError {
        match reply {
            ClaimReply::Rejected { claim_id, error }
                if claim_id.as_ref().is_none_or(|c| c == id) =>
            {
                ClaimError::Rejected(error)
            }
            ClaimReply::Revoked(r) if r.claim_id == *id => ClaimError::Revoked(r),
            other => ClaimError::Unexpected(format!("{call} {id}: {other:?}")),
        }
    }

    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClaimError::Rejected(r) => r.is_retryable(),
            ClaimError::Transport(t) => t.is_retryable(),
            ClaimError::Revoked(_) | ClaimError::Unexpected(_) => false,
        }
    }
}

/// The caller side of the job plane: jobs and runs.
#[async_trait]
pub trait JobClient: Send + Sync {
    /// Sends one job-plane message. The stream yields every answer to it —
    /// `accepted`/`run` or `rejected`, then for a submit the job's events,
    /// output and `finished`, for a run its status changes and every
    /// task's replies — until it is dropped or the transport closes.
    async fn send(&self, msg: JobMsg) -> Result<BoxStream<'static, JobReply>, TransportError>;
}

/// The caller side of the claim plane.
#[async_trait]
pub trait ClaimClient: Send + Sync {
    /// Requests a node and waits until it is granted, refused, or the claim
    /// ends. Retrying with the same `claim_id` returns the same grant.
    async fn claim(&self, req: ClaimRequest) -> Result<ClaimGrant, ClaimError>;
    /// Extends the lease; for a claim with a recipient the renewal carries
    /// credentials that last as long as the new lease.
    async fn renew(&self, workspace: &Workspace, id: &ClaimId) -> Result<Renewal, ClaimError>;
    /// Gives the node back.
    async fn release(&self, workspace: &Workspace, id: &ClaimId) -> Result<(), ClaimError>;
    /// Revocations of this client's workspace's claims.
    async fn revocations(
        &self,
        workspace: &Workspace,
    ) -> Result<BoxStream<'static, Revocation>, ClaimError>;
}
