//! The envelope decoder, `fleet_core::protocol::decode`, over every
//! enveloped message type. What decodes must also survive
//! `decode(encode(x)) == x`.

use std::fmt::Debug;

use fleet_core::protocol::{
    AgentMsg, ClaimMsg, ClaimReply, DaemonMsg, FleetRecord, JobMsg, JobReply, LeaderRecord, Record,
    WsClientFrame, WsServerFrame, decode, encode,
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
        ];
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
