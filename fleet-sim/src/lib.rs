//! Offline simulator: ranks the six strategies against a forecast by
//! running the real [`fleet_core::controller::Controller`] and
//! [`fleet_core::strategy`] planners under virtual time.
//!
//! It is not a model of the control plane: every run drives the same
//! controller the daemon runs, inside [`fleet_core::harness::World`], whose
//! simulated provider takes its boot latencies and billing rules from the
//! input's price book; the simulator adds arrivals, callers that hold nodes
//! for the job's duration (and ask again when revoked), and spot
//! interruptions.
//!
//! ```text
//! input (JSON) ─ parse/validate ─▶ Scenario ─ forecast ─▶ Arrivals
//!                                     │                      │
//!                                     └─ run (per strategy, World) ─▶ RunOutcome
//!                                                                     │
//!                                               report ─▶ result.json, table, SVG
//! ```

pub mod error;
pub mod forecast;
pub mod input;
pub mod price_books;
pub mod report;
pub mod rng;
pub mod run;
pub mod tune;

use std::sync::atomic::AtomicU64;

pub use error::{ErrorKind, SimError};
pub use input::{Scenario, SimInput};
pub use report::SimResult;

/// Reads, size-checks, parses and validates an input file.
pub fn load(path: &std::path::Path) -> Result<Scenario, SimError> {
    let io = |source| SimError::Io {
        file: path.display().to_string(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.len() > input::MAX_INPUT_BYTES as u64 {
        return Err(SimError::TooLarge {
            size: meta.len(),
            limit: input::MAX_INPUT_BYTES as u64,
        });
    }
    let bytes = std::fs::read(path).map_err(io)?;
    input::parse(&bytes)
}

/// Simulates every strategy of `scenario` on up to `threads` threads.
/// `progress`, if given, needs one counter per strategy (see [`run::run_all`]).
pub fn simulate(
    scenario: &Scenario,
    threads: usize,
    progress: Option<&[AtomicU64]>,
) -> Result<SimResult, SimError> {
    let arrivals = forecast::arrivals(scenario);
    let runs = run::run_all(scenario, &arrivals, threads, progress)?;
    Ok(report::build(scenario, &runs))
}

/// The result as pretty JSON with a trailing newline (what `--out` writes).
pub fn to_json(result: &SimResult) -> String {
    let mut s =
        serde_json::to_string_pretty(result).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    s.push('\n');
    s
}
