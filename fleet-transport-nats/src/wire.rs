//! Encoding and error mapping shared by both sides of the claim plane.

use bytes::Bytes;
use fleet_core::protocol::{DecodeError, MAX_MESSAGE_BYTES, decode, encode};
use fleet_core::transport::TransportError;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Encodes with the protocol codec, refusing what no peer's decoder accepts.
pub(crate) fn to_wire<T: Serialize>(msg: &T) -> Result<Bytes, TransportError> {
    let bytes = encode(msg).map_err(|e| TransportError::Io(e.to_string()))?;
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(TransportError::Decode(DecodeError::TooLarge {
            len: bytes.len(),
            max: MAX_MESSAGE_BYTES,
        }));
    }
    Ok(Bytes::from(bytes))
}

/// Decodes with the protocol codec (and its size limit).
pub(crate) fn from_wire<T: DeserializeOwned>(body: &[u8]) -> Result<T, TransportError> {
    decode(body).map_err(TransportError::Decode)
}

pub(crate) fn publish_error(subject: &str, e: &async_nats::PublishError) -> TransportError {
    use async_nats::client::PublishErrorKind as K;
    match e.kind() {
        K::MaxPayloadExceeded => TransportError::Io(format!(
            "{subject}: message exceeds the server's max_payload"
        )),
        K::Send => TransportError::Closed,
        _ => TransportError::Io(format!("publish {subject}: {e}")),
    }
}

pub(crate) fn subscribe_error(subject: &str, e: &async_nats::SubscribeError) -> TransportError {
    TransportError::Io(format!("subscribe {subject}: {e}"))
}
