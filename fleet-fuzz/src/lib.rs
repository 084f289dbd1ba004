//! The in-tree fuzzer: runs on the stable toolchain, so CI and every
//! developer can run it with `cargo run`, and a seed names the same inputs
//! everywhere.
//!
//! Each [`Target`] feeds an input to the real decoder in-process (the code
//! the daemon, agent, client or simulator runs, not a copy). The
//! [`engine`] takes the target's committed seed corpus
//! (`fleet-fuzz/corpus/<target>/`: real messages from PROTOCOL.md, the
//! README, the examples and the tests), mutates it with a seeded RNG —
//! byte flips, truncation, insertion, splicing, dictionary tokens
//! ([`mutate`]) and the target's own structure-aware mutations (JSON and
//! TOML trees, WebSocket frames, exec frames, TLS records and scripted TLS
//! sessions) — runs every input under `catch_unwind`, counts inputs,
//! panics, broken invariants and distinct outcomes, and keeps inputs with a
//! new outcome as further seeds. A panicking input is written out so it can
//! be replayed and kept as a regression seed.

pub mod corpus;
pub mod engine;
pub mod mutate;
pub mod targets;

pub use engine::{Options, Report, run};
pub use targets::{TARGETS, Target, by_name};
