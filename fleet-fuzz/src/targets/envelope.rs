//! The envelope decoder, `fleet_core::protocol::decode`, over every
//! enveloped message type and stored record (the queue's claims and
//! records, bootstrap token digests). What decodes must also survive
//! `decode(encode(x)) == x`. The same bytes are read as an agent's close
//! reason (`AgentRefusal::parse`), which must round-trip too.

use std::fmt::Debug;

use fleet_core::protocol::{
    AgentMsg, AgentRefusal, BootstrapRecord, ClaimMsg, ClaimReply, DaemonMsg, FleetRecord, JobMsg,
    JobReply, LeaderRecord, QueueClaim, QueueRecord, Record, WsClientFrame, WsServerFrame, decode,
    encode,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Target;
use crate::mutate::{self, Rng};

pub(super) struct Envelope;

/// Decodes `input` as `T`: the error kind, or `None` when it decoded and
/// round-trips.
fn check<T>(name: &str, input: &[u8]) -> Result<Option<&'static str>, String>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let x: T = match decode(input) {
        Ok(x) => x,
        Err(e) => return Ok(Some(e.kind())),
    };
    let bytes = encode(&x).map_err(|e| format!("{name}: decoded but does not encode: {e}"))?;
    let y: T =
        decode(&bytes).map_err(|e| format!("{name}: its re-encoding does not decode: {e}"))?;
    if x != y {
        return Err(format!(
            "{name}: decode(encode(x)) != x\n  x = {x:?}\n  y = {y:?}"
        ));
    }
    Ok(None)
}

impl Target for Envelope {
    fn name(&self) -> &'static str {
        "envelope"
    }

    fn run(&self, input: &[u8]) -> Result<String, String> {
        let results = [
            ("ClaimMsg", check::<ClaimMsg>("ClaimMsg", input)?),
            ("ClaimReply", check::<ClaimReply>("ClaimReply", input)?),
            ("AgentMsg", check::<AgentMsg>("AgentMsg", input)?),
            ("DaemonMsg", check::<DaemonMsg>("DaemonMsg", input)?),
            ("JobMsg", check::<JobMsg>("JobMsg", input)?),
            ("JobReply", check::<JobReply>("JobReply", input)?),
            ("Record", check::<Record>("Record", input)?),
            (
                "LeaderRecord",
                check::<LeaderRecord>("LeaderRecord", input)?,
            ),
            ("FleetRecord", check::<FleetRecord>("FleetRecord", input)?),
            (
                "WsClientFrame",
                check::<WsClientFrame>("WsClientFrame", input)?,
            ),
            (
                "WsServerFrame",
                check::<WsServerFrame>("WsServerFrame", input)?,
            ),
            (
                "BootstrapRecord",
                check::<BootstrapRecord>("BootstrapRecord", input)?,
            ),
            ("QueueClaim", check::<QueueClaim>("QueueClaim", input)?),
            ("QueueRecord", check::<QueueRecord>("QueueRecord", input)?),
        ];
        // A close reason is a bare string on the wire.
        if let Ok(reason) = std::str::from_utf8(input)
            && let Some(refusal) = AgentRefusal::parse(reason)
            && AgentRefusal::parse(refusal.as_str()) != Some(refusal)
        {
            return Err(format!("AgentRefusal: {reason:?} does not round-trip"));
        }
        let decoded: Vec<&str> = results
            .iter()
            .filter(|(_, e)| e.is_none())
            .map(|(n, _)| *n)
            .collect();
        if !decoded.is_empty() {
            return Ok(format!("decoded {}", decoded.join("+")));
        }
        let mut kinds: Vec<&str> = results.iter().filter_map(|(_, e)| *e).collect();
        kinds.sort_unstable();
        kinds.dedup();
        Ok(kinds.join("+"))
    }

    fn mutate_structured(&self, input: &[u8], pool: &[Vec<u8>], rng: &mut Rng) -> Option<Vec<u8>> {
        mutate::json(input, pool, rng)
    }
}
