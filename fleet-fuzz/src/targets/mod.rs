//! One module per decoder. Each feeds an input to the real code and says
//! what happened in a short label (one label per distinct outcome), or
//! names an invariant the code broke.

mod config;
mod envelope;
mod exec;
mod sim;
mod tls;
mod ws;

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use crate::mutate::{self, Rng};

/// A fuzz target.
pub trait Target: Sync {
    /// Its name on the command line and its corpus folder.
    fn name(&self) -> &'static str;

    /// Feeds `input` to the real decoder. `Ok`: a short label of the
    /// outcome (same label, same behaviour); `Err`: an invariant the code
    /// broke, which fails the run like a panic.
    fn run(&self, input: &[u8]) -> Result<String, String>;

    /// A structure-aware mutant of `input` (`pool`: every seed, for
    /// splicing); `None` when `input` has no structure this target reads.
    fn mutate_structured(&self, input: &[u8], pool: &[Vec<u8>], rng: &mut Rng) -> Option<Vec<u8>>;

    /// Tokens for the byte mutations to insert.
    fn dictionary(&self, seeds: &[Vec<u8>]) -> Vec<Vec<u8>> {
        mutate::json_dictionary(seeds)
    }
}

pub use tls::seed_inputs as tls_seed_inputs;

/// Every target, in the order `all` runs them.
pub static TARGETS: &[&dyn Target] = &[
    &envelope::Envelope,
    &ws::WsFrames,
    &tls::TlsStream,
    &exec::ExecFrames,
    &config::ConfigToml,
    &sim::SimInput,
];

/// The target called `name`.
pub fn by_name(name: &str) -> Option<&'static dyn Target> {
    TARGETS.iter().copied().find(|t| t.name() == name)
}

/// Polls `f` once: the targets' streams are in memory and never wait, so a
/// future that is not ready at once has stalled (an invariant broken).
fn poll_now<F: Future>(f: F) -> Result<F::Output, String> {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => Ok(out),
        Poll::Pending => Err("waits on an in-memory stream that has all its bytes".to_owned()),
    }
}

/// The label of an error message: digits dropped (sizes, offsets) and cut
/// short, so one kind of error is one label.
fn label_of(msg: &str) -> String {
    msg.chars()
        .filter(|c| !c.is_ascii_digit())
        .take(60)
        .collect()
}
