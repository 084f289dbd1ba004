//! The whole-plane simulation in the default test run: a few dozen seeded
//! schedules, the determinism of a replay, and one seed per bug the
//! simulation found (each failed before its fix; see the commit that fixed
//! it). `cargo run --release -p fleet-chaos -- --schedules 10000` runs many
//! more.

use fleet_chaos::{Options, Outcome, run};

fn passes(seed: u64) -> Outcome {
    let o = run(seed, &Options::default());
    assert!(
        o.violations.is_empty(),
        "seed {seed}: {:#?}\nreplay: cargo run --release -p fleet-chaos -- --replay {seed}\n{}",
        o.violations,
        o.trace.join("\n")
    );
    o
}

#[test]
fn fifty_schedules_hold_every_invariant() {
    let mut steps = 0;
    let mut crashes = 0;
    for seed in 1..=50 {
        let o = passes(seed);
        steps += o.steps;
        crashes += o.crashes;
    }
    // Not a vacuous pass: the schedules did work and crashed the daemon.
    assert!(steps > 50_000, "{steps} steps");
    assert!(crashes > 20, "{crashes} crashes");
}

#[test]
fn a_seed_replays_the_same_trace() {
    let opts = Options { keep_trace: true };
    let a = run(123, &opts);
    let b = run(123, &opts);
    assert!(a.crashes > 0 && a.steps > 1_000, "a schedule with crashes");
    assert_eq!(a.steps, b.steps);
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(a.trace, b.trace);
    assert_ne!(run(124, &opts).trace_hash, a.trace_hash, "seeds differ");
}

// Regression seeds: each failed before the fix named.

/// A retried request was answered `Granted` from memory while the grant's
/// write was in flight (`Controller::answer_existing`).
#[test]
fn seed_70_no_grant_answered_before_it_is_stored() {
    passes(70);
}

/// A reconnecting agent was sent `Activate` for a grant still being written
/// (`Controller::reactivate`).
#[test]
fn seed_680_no_activate_before_the_grant_is_stored() {
    passes(680);
}

/// A job's final event lost with the agent's connection left the job
/// running for good; the daemon now re-sends the run of every attempt a
/// reconnecting node holds and the agent answers with the last event.
#[test]
fn seed_9_a_lost_final_event_does_not_strand_a_job() {
    passes(9);
}

/// A store write that timed out after it landed met itself on its retry
/// (`Conflict`) and fenced the control loop for good; the driver now tells
/// its own epoch's record and writes on top of it.
#[test]
fn seed_1_a_timed_out_write_does_not_fence_the_daemon() {
    passes(1);
}

/// always_on_resize asked to resize a running node where the provider
/// resizes only stopped ones; the controller refused and a claim only the
/// peak type serves waited for good. It now stops, resizes, starts.
#[test]
fn seed_6_always_on_resize_serves_a_peak_claim_where_resizing_needs_a_stop() {
    passes(6);
}
