//! Exec API frames: the bytes of a connection read by both ends' real
//! readers — the agent's (`fleet_agent::exec_api::read_frame`, then the
//! path confinement every `put`/`get`/`cwd` goes through) and the
//! client's (`fleet_client::ExecClient`'s `exec`, `get` and `put`, reading
//! the answers).

use std::path::PathBuf;
use std::sync::OnceLock;

use fleet_client::{ExecClient, ExecRequest};
use fleet_core::protocol::ExecFrame;
use rand::Rng as _;
use rand::seq::SliceRandom;
use tokio::io::{join, sink};

use super::{Target, label_of, poll_now};
use crate::mutate::{self, Rng};

pub(super) struct ExecFrames;

/// The claim's file area paths are confined to: one empty folder, shared by
/// every run and never written (confinement only resolves paths).
fn root() -> &'static PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let dir = std::env::temp_dir().join("fleet-fuzz-exec-root");
        let _ = std::fs::create_dir_all(&dir);
        dir
    })
}

/// The agent's side: every frame until the end or an error.
fn agent_side(input: &[u8]) -> Result<String, String> {
    let mut stream = input;
    let mut frames = 0;
    loop {
        match poll_now(fleet_agent::exec_api::read_frame(&mut stream))? {
            Ok(Some(frame)) => {
                frames += 1;
                let path = match &frame {
                    ExecFrame::Put { path } | ExecFrame::Get { path } => Some(path),
                    ExecFrame::Exec { cwd, .. } => cwd.as_ref(),
                    _ => None,
                };
                if let Some(p) = path
                    && let Ok(resolved) = fleet_agent::exec_api::confine(root(), p)
                    && !resolved.starts_with(root())
                {
                    return Err(format!("confine({p:?}) left the file area: {resolved:?}"));
                }
            }
            Ok(None) => return Ok(format!("agent end after {}", frames.min(3))),
            Err(e) => return Ok(format!("agent {}", e.kind())),
        }
    }
}

/// The client's side of `exec`, `get` and `put`, each reading `input` as the
/// agent's answers.
fn client_side(input: &[u8]) -> Result<String, String> {
    let exec = poll_now(async {
        let mut c = ExecClient::new(join(input, sink()));
        c.exec(&ExecRequest::new(["true"])).await.map(drop)
    })?;
    let get = poll_now(async {
        let mut c = ExecClient::new(join(input, sink()));
        c.get("f").await.map(drop)
    })?;
    let put = poll_now(async {
        let mut c = ExecClient::new(join(input, sink()));
        c.put("f", b"data").await.map(drop)
    })?;
    let kind = |r: Result<(), fleet_client::ExecError>| match r {
        Ok(()) => "ok",
        Err(e) => e.kind(),
    };
    Ok(format!(
        "client exec {} get {} put {}",
        kind(exec),
        kind(get),
        kind(put)
    ))
}

/// Splits a stream into its frames' bodies (what is left over is lost).
fn frames(input: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = input;
    while rest.len() >= 4 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let Some(body) = rest.get(4..4 + len) else {
            break;
        };
        out.push(body.to_vec());
        rest = &rest[4 + len..];
    }
    out
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

impl Target for ExecFrames {
    fn name(&self) -> &'static str {
        "exec"
    }

    fn run(&self, input: &[u8]) -> Result<String, String> {
        let agent = agent_side(input)?;
        let client = client_side(input)?;
        Ok(format!("{}; {client}", label_of(&agent)))
    }

    /// Works on frames: a body mutated as JSON, frames dropped, repeated or
    /// taken from another seed, a length prefix that lies.
    fn mutate_structured(&self, input: &[u8], pool: &[Vec<u8>], rng: &mut Rng) -> Option<Vec<u8>> {
        let mut bodies = frames(input);
        if bodies.is_empty() {
            return None;
        }
        match rng.gen_range(0..5) {
            0 | 1 => {
                let i = rng.gen_range(0..bodies.len());
                let donors: Vec<Vec<u8>> = pool.iter().flat_map(|p| frames(p)).collect();
                if let Some(m) = mutate::json(&bodies[i], &donors, rng) {
                    bodies[i] = m;
                }
            }
            2 => {
                let i = rng.gen_range(0..bodies.len());
                bodies.remove(i);
            }
            3 => {
                let donor = pool.choose(rng).map(|p| frames(p)).unwrap_or_default();
                if let Some(f) = donor.choose(rng) {
                    let at = rng.gen_range(0..=bodies.len());
                    bodies.insert(at, f.clone());
                }
            }
            _ => {
                let i = rng.gen_range(0..bodies.len());
                let mut out: Vec<u8> = bodies[..i].iter().flat_map(|b| frame(b)).collect();
                let lie: u32 = [0, 1, (1 << 20) + 1, u32::MAX, bodies[i].len() as u32 + 1]
                    [rng.gen_range(0..5)];
                out.extend_from_slice(&lie.to_be_bytes());
                out.extend_from_slice(&bodies[i]);
                return Some(out);
            }
        }
        Some(bodies.iter().flat_map(|b| frame(b)).collect())
    }
}
