//! The claim-plane envelope (`/v1/claims`): control frames around the
//! fleet-core claim and job messages. See the crate docs for the format.

use fleet_core::ids::Workspace;
use fleet_core::protocol::{ClaimMsg, ClaimReply, JobMsg, JobReply, Revocation};
use serde::{Deserialize, Serialize};

/// A frame a claim-plane client sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ClientFrame {
    /// A claim-plane message; answers come back as [`ServerFrame::Reply`]
    /// with the same `req`.
    Claim {
        /// Client-chosen request number, unique among its open requests.
        req: u64,
        /// The message.
        msg: ClaimMsg,
    },
    /// A job-plane message; answers come back as [`ServerFrame::JobReply`].
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
    /// [`ServerFrame::Revocation`]; acknowledged with
    /// [`ServerFrame::Subscribed`].
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
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ServerFrame {
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
        /// A [`fleet_core::protocol::DecodeError::kind`] or `"limit"`.
        kind: String,
        /// What went wrong.
        why: String,
    },
}

/// The few fields of a frame that failed to decode that are still worth
/// reading, to address the error.
#[derive(Deserialize)]
pub(crate) struct Probe {
    pub(crate) msg: ProbeInner,
}

#[derive(Deserialize)]
pub(crate) struct ProbeInner {
    #[serde(rename = "type")]
    pub(crate) kind: Option<String>,
    pub(crate) req: Option<u64>,
    pub(crate) sub: Option<u64>,
}

/// Reads `type` and `req`/`sub` from a frame that did not decode, if it is
/// JSON at all.
pub(crate) fn probe(bytes: &[u8]) -> Option<ProbeInner> {
    serde_json::from_slice::<Probe>(bytes).ok().map(|p| p.msg)
}
