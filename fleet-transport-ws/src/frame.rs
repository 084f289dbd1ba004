//! The claim-plane frames (`/v1/claims`): the wire types are
//! [`fleet_core::protocol::WsClientFrame`] and
//! [`WsServerFrame`](fleet_core::protocol::WsServerFrame) (re-exported here
//! under their old names); this module keeps what reads a frame that did
//! not decode.

use serde::Deserialize;

pub use fleet_core::protocol::{WsClientFrame as ClientFrame, WsServerFrame as ServerFrame};

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
