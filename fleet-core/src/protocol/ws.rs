//! The WebSocket claim plane's frames (`wss://<daemon>/v1/claims`): control
//! frames around the claim and job messages, each sent in the versioned
//! envelope (`{"v":1,"msg":…}`) as one WebSocket text message.
//!
//! A client numbers its requests (`req`) and subscriptions (`sub`), unique
//! among its open ones; every answer names the number it answers. See
//! PROTOCOL.md ("WebSocket claim frames") for the exchange.

use serde::{Deserialize, Serialize};

use super::{ClaimMsg, ClaimReply, JobMsg, JobReply, Revocation};
use crate::ids::Workspace;

/// A frame a claim-plane client sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum WsClientFrame {
    /// A claim-plane message; answers come back as [`WsServerFrame::Reply`]
    /// with the same `req`.
    Claim {
        /// Client-chosen request number, unique among its open requests.
        req: u64,
        /// The message.
        msg: ClaimMsg,
    },
    /// A job-plane message; answers come back as [`WsServerFrame::JobReply`].
    Job {
        /// Client-chosen request number.
        req: u64,
        /// The message.
        msg: JobMsg,
    },
    /// The client needs no more answers for `req` (later sends to its
    /// reply address fail with `no_peer`).
    Done {
        /// The request.
        req: u64,
    },
    /// Deliver revocations of this workspace's claims as
    /// [`WsServerFrame::Revocation`]; acknowledged with
    /// [`WsServerFrame::Subscribed`].
    SubscribeRevocations {
        /// Client-chosen subscription number.
        sub: u64,
        /// The workspace.
        workspace: Workspace,
    },
    /// Ends a subscription.
    Unsubscribe {
        /// The subscription.
        sub: u64,
    },
}

/// A frame the server sends on the claim plane.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum WsServerFrame {
    /// An answer to a claim request (`Pending`s, then one final answer).
    Reply {
        /// The request it answers.
        req: u64,
        /// The answer.
        msg: ClaimReply,
    },
    /// An answer to a job request.
    JobReply {
        /// The request it answers.
        req: u64,
        /// The answer.
        msg: JobReply,
    },
    /// The subscription is live.
    Subscribed {
        /// The subscription.
        sub: u64,
    },
    /// A revocation in a subscribed workspace.
    Revocation {
        /// The subscription.
        sub: u64,
        /// The revocation.
        msg: Revocation,
    },
    /// A frame could not be used (it did not decode); the connection stays
    /// open.
    Error {
        /// The request or subscription number, when it could be read.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<u64>,
        /// A [`DecodeError::kind`](super::DecodeError::kind), `"forbidden"` or `"limit"`.
        kind: String,
        /// What went wrong.
        why: String,
    },
}
