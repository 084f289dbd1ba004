//! # fleet-chaos
//!
//! Whole-plane deterministic simulation: the real runtime driver
//! (`fleet_runtime::Fleet`, with the real controller inside) against the
//! memory store and the memory provider behind seeded fault handles,
//! simulated agents and callers on a simulated network, all on one
//! current-thread tokio runtime in paused (virtual) time. A seed decides
//! everything — the pool and strategy, the callers, every fault — so a
//! schedule replays exactly: [`Outcome::trace_hash`] is the same for two
//! runs of one seed.
//!
//! The faults: claim- and job-plane messages lost, duplicated, delayed and
//! reordered; agent connections breaking under a message (lost, resent or
//! both); store and provider latency, errors, outages, and errors after the
//! operation took effect; credential issues failing; spot interruptions;
//! daemon crashes before and after every store write and provider call and
//! at random instants, each followed by a restart on the same store and
//! cloud with the next epoch. The pool may run the pool policies: a
//! schedule whose periods change every few minutes, `max_uses`, cache
//! affinity keys on claims with a bounded wait, and drift — each restart
//! then runs a new image and revision, so the nodes left up are replaced
//! while claims and jobs hold some of them. The invariants (no double grant, nothing
//! accepted lost, write-ahead, no node stopped, resized or deleted under a
//! claim or a job, no orphaned or duplicated instance once settled) are
//! checked after every step, and once the world has settled.
//!
//! `cargo run --release -p fleet-chaos -- --schedules 10000` runs many
//! schedules; `--replay SEED` prints one schedule's trace.

mod agent;
mod check;
mod clients;
mod daemon;
mod plan;
mod provider;
mod rng;
mod sim;
mod store;
mod trace;
mod world;

pub use plan::{ClaimScript, Faults, JobScript, Plan};
pub use world::{Options, Outcome, run};
