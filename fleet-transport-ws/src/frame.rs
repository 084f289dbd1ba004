//! The claim-plane frames (`/v1/claims`): the wire types are
//! [`fleet_core::protocol::WsClientFrame`] and
//! [`WsServerFrame`](fleet_core::protocol::WsServerFrame) (re-exported here
//! under their old names); this module reads a client's frame, and what
//! can still be read of one that did not decode.

use fleet_core::protocol::{DecodeError, decode_limited};
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
fn probe(bytes: &[u8]) -> Option<ProbeInner> {
    serde_json::from_slice::<Probe>(bytes).ok().map(|p| p.msg)
}

/// A client frame that did not decode, with what could still be read of it
/// to address the answer.
#[derive(Debug)]
pub(crate) struct Undecodable {
    pub(crate) error: DecodeError,
    /// The frame's `type`, if readable.
    pub(crate) kind: Option<String>,
    /// Its `req` (or `sub`), if readable.
    pub(crate) req: Option<u64>,
}

/// Decodes one claim-plane data message from a client, at most `max` bytes.
pub(crate) fn read_client_frame(data: &[u8], max: usize) -> Result<ClientFrame, Undecodable> {
    decode_limited::<ClientFrame>(data, max).map_err(|error| {
        let p = probe(data);
        Undecodable {
            error,
            kind: p.as_ref().and_then(|p| p.kind.clone()),
            req: p.as_ref().and_then(|p| p.req.or(p.sub)),
        }
    })
}
