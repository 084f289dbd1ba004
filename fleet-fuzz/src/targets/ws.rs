//! WebSocket frames: the bytes of an established connection read by
//! tungstenite with the server's settings (`fleet_transport_ws::fuzz::ws_read`,
//! the connection driver's limits), every data message then decoded as the
//! claim-plane frame reader and the agent plane do (as the server), or as
//! the clients do.
//!
//! Input: one byte for the side (even: the server reads a client's masked
//! frames; odd: a client reads the server's), then the frames.

use fleet_transport_ws::WsConfig;
use fleet_transport_ws::fuzz::{WsSide, ws_read};
use rand::Rng as _;
use rand::seq::SliceRandom;

use super::{Target, label_of};
use crate::mutate::{self, Rng};

pub(super) struct WsFrames;

/// One frame, payload unmasked.
#[derive(Debug, Clone)]
struct Frame {
    fin: bool,
    rsv: u8,
    opcode: u8,
    mask: Option<[u8; 4]>,
    /// Extended length bytes to use even when a shorter form fits (0, 2, 8).
    wide: u8,
    /// Declared length, when it should differ from the payload's.
    lie: Option<u64>,
    payload: Vec<u8>,
}

fn parse(mut b: &[u8]) -> Vec<Frame> {
    let mut out = Vec::new();
    while b.len() >= 2 {
        let (b0, b1) = (b[0], b[1]);
        let mut at = 2;
        let (len, wide) = match b1 & 0x7f {
            126 => match b.get(2..4) {
                Some(l) => {
                    at = 4;
                    (u64::from(u16::from_be_bytes([l[0], l[1]])), 2)
                }
                None => break,
            },
            127 => match b.get(2..10).and_then(|l| <[u8; 8]>::try_from(l).ok()) {
                Some(l) => {
                    at = 10;
                    (u64::from_be_bytes(l), 8)
                }
                None => break,
            },
            n => (u64::from(n), 0),
        };
        let mask = if b1 & 0x80 != 0 {
            let Some(m) = b.get(at..at + 4).and_then(|m| <[u8; 4]>::try_from(m).ok()) else {
                break;
            };
            at += 4;
            Some(m)
        } else {
            None
        };
        let Some(end) = usize::try_from(len).ok().and_then(|l| at.checked_add(l)) else {
            break;
        };
        let Some(raw) = b.get(at..end) else {
            break;
        };
        let payload = unmask(raw, mask);
        out.push(Frame {
            fin: b0 & 0x80 != 0,
            rsv: (b0 >> 4) & 7,
            opcode: b0 & 0x0f,
            mask,
            wide,
            lie: None,
            payload,
        });
        b = &b[end..];
    }
    out
}

fn unmask(data: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    match mask {
        Some(m) => data.iter().enumerate().map(|(i, x)| x ^ m[i % 4]).collect(),
        None => data.to_vec(),
    }
}

fn build(frames: &[Frame]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        out.push(u8::from(f.fin) << 7 | (f.rsv & 7) << 4 | (f.opcode & 0x0f));
        let len = f.lie.unwrap_or(f.payload.len() as u64);
        let m = if f.mask.is_some() { 0x80 } else { 0 };
        if len < 126 && f.wide == 0 {
            out.push(m | len as u8);
        } else if len <= 0xffff && f.wide != 8 {
            out.push(m | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(m | 127);
            out.extend_from_slice(&len.to_be_bytes());
        }
        if let Some(k) = f.mask {
            out.extend_from_slice(&k);
        }
        out.extend(unmask(&f.payload, f.mask));
    }
    out
}

const CLOSE_CODES: &[u16] = &[
    0, 999, 1000, 1001, 1002, 1004, 1005, 1006, 1007, 1009, 1011, 1015, 1016, 2999, 3000, 4001,
    4999, 5000, 65535,
];

/// A data message of another seed (a real claim-plane or agent message).
fn donor_payload(pool: &[Vec<u8>], rng: &mut Rng) -> Option<Vec<u8>> {
    let seed = pool.choose(rng)?;
    let frames = parse(seed.get(1..)?);
    frames
        .iter()
        .filter(|f| f.opcode == 1 || f.opcode == 2)
        .collect::<Vec<_>>()
        .choose(rng)
        .map(|f| f.payload.clone())
}

fn mutate_frames(frames: &mut Vec<Frame>, pool: &[Vec<u8>], rng: &mut Rng) {
    if frames.is_empty() {
        frames.push(Frame {
            fin: true,
            rsv: 0,
            opcode: 1,
            mask: Some(rng.r#gen()),
            wide: 0,
            lie: None,
            payload: donor_payload(pool, rng).unwrap_or_default(),
        });
    }
    let i = rng.gen_range(0..frames.len());
    match rng.gen_range(0..12) {
        0 => frames[i].fin = !frames[i].fin,
        1 => frames[i].rsv = rng.gen_range(0..8),
        2 => frames[i].opcode = rng.gen_range(0..16),
        3 => {
            // Fragment a message, a control frame in between now and then.
            let f = frames.remove(i);
            let cut = if f.payload.is_empty() {
                0
            } else {
                rng.gen_range(0..f.payload.len())
            };
            let (a, b) = f.payload.split_at(cut);
            let mut first = f.clone();
            first.fin = false;
            first.payload = a.to_vec();
            let mut rest = f.clone();
            rest.opcode = 0;
            rest.payload = b.to_vec();
            let mut parts = vec![first];
            if rng.gen_ratio(1, 2) {
                parts.push(Frame {
                    fin: true,
                    rsv: 0,
                    opcode: [8, 9, 10][rng.gen_range(0..3)],
                    mask: f.mask,
                    wide: 0,
                    lie: None,
                    payload: b"ping".to_vec(),
                });
            }
            parts.push(rest);
            frames.splice(i..i, parts);
        }
        4 => {
            if let Some(p) = donor_payload(pool, rng) {
                frames[i].payload = p;
            }
        }
        5 => {
            let donors: Vec<Vec<u8>> = pool
                .iter()
                .filter_map(|s| s.get(1..))
                .flat_map(parse)
                .map(|f| f.payload)
                .collect();
            if let Some(m) = mutate::json(&frames[i].payload, &donors, rng) {
                frames[i].payload = m;
            }
        }
        6 => {
            // A close frame: any code, a reason of any length or encoding.
            let mut payload = CLOSE_CODES[rng.gen_range(0..CLOSE_CODES.len())]
                .to_be_bytes()
                .to_vec();
            match rng.gen_range(0..4) {
                0 => payload.truncate(rng.gen_range(0..2)),
                1 => payload.extend(std::iter::repeat_n(b'x', rng.gen_range(100..130))),
                2 => payload.extend_from_slice(&[0xc3, 0x28, 0xff]),
                _ => payload.extend("é".repeat(rng.gen_range(55..70)).as_bytes()),
            }
            frames[i] = Frame {
                fin: true,
                rsv: 0,
                opcode: 8,
                mask: frames[i].mask,
                wide: 0,
                lie: None,
                payload,
            };
        }
        7 => frames[i].wide = [0, 2, 8][rng.gen_range(0..3)],
        8 => {
            let len = frames[i].payload.len() as u64;
            frames[i].lie = Some(
                [
                    0,
                    len.saturating_sub(1),
                    len + 1,
                    1 << 20,
                    (1 << 20) + 1,
                    u64::MAX >> 1,
                ][rng.gen_range(0..6)],
            );
        }
        9 => {
            frames[i].mask = match frames[i].mask {
                Some(_) => None,
                None => Some(rng.r#gen()),
            }
        }
        10 => {
            let f = frames[i].clone();
            frames.insert(i, f);
        }
        _ => {
            // Text that is not UTF-8.
            frames[i].opcode = 1;
            let at = rng.gen_range(0..=frames[i].payload.len());
            frames[i].payload.insert(at, 0xff);
        }
    }
}

impl Target for WsFrames {
    fn name(&self) -> &'static str {
        "ws"
    }

    fn run(&self, input: &[u8]) -> Result<String, String> {
        let Some((&side, frames)) = input.split_first() else {
            return Ok("empty".to_owned());
        };
        let (side, name) = if side % 2 == 0 {
            (WsSide::Server, "server")
        } else {
            (WsSide::Client, "client")
        };
        let cfg = WsConfig::default();
        let r = ws_read(frames, side, &cfg);
        if r.decoded + r.refused.len() != r.messages {
            return Err(format!(
                "{} messages read, {} decoded, {} refused",
                r.messages,
                r.decoded,
                r.refused.len()
            ));
        }
        let mut refused = r.refused.clone();
        refused.sort_unstable();
        refused.dedup();
        Ok(format!(
            "{name}: decoded {}, refused {}, peer close {:?}, close {:?} after {}",
            r.decoded.min(2),
            refused.join("+"),
            r.peer_close.is_some(),
            r.close_code,
            label_of(&r.error)
        ))
    }

    fn mutate_structured(&self, input: &[u8], pool: &[Vec<u8>], rng: &mut Rng) -> Option<Vec<u8>> {
        let (&side, rest) = input.split_first()?;
        let mut frames = parse(rest);
        for _ in 0..rng.gen_range(1..=3) {
            mutate_frames(&mut frames, pool, rng);
        }
        let side = if rng.gen_ratio(1, 16) { side ^ 1 } else { side };
        let mut out = vec![side];
        out.extend(build(&frames));
        Some(out)
    }
}
