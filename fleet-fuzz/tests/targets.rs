//! Keeps the fuzzer honest in `cargo test`: every target runs a few
//! thousand inputs from its committed corpus with no panic and no broken
//! invariant, the corpus decodes as the real thing (the seeds reach past
//! the parsers), and a run is a function of its seed.

#![expect(clippy::expect_used, reason = "test code: a panic is a failure")]

use fleet_fuzz::engine::{FailureKind, run_one};
use fleet_fuzz::{Options, Report, TARGETS, Target, by_name, corpus};

/// Inputs per target: every mutation many times over, in a few seconds of
/// a debug build each (where the TLS target's real handshakes cost ~10 ms;
/// the documented runs are `--release` with 1 000 000 per target).
fn inputs(target: &str) -> u64 {
    match target {
        "tls" => 250,
        "config" => 1_000,
        "ws" => 3_000,
        "envelope" | "sim" => 5_000,
        _ => 10_000,
    }
}

fn run(name: &str, seed: u64, n: u64) -> Report {
    let target = by_name(name).expect("target");
    let seeds = corpus::load(&corpus::default_dir(), name).expect("corpus");
    fleet_fuzz::run(
        target,
        seeds,
        &Options {
            inputs: n,
            seed,
            ..Options::default()
        },
    )
}

fn check(name: &str) {
    let r = run(name, 0x5eed, inputs(name));
    let failures: Vec<String> = r
        .failures
        .iter()
        .map(|f| {
            format!(
                "{:?}: {} (input {:?})",
                f.kind,
                f.message,
                String::from_utf8_lossy(&f.input)
            )
        })
        .collect();
    assert!(
        !r.failed(),
        "{name}: {} panics, {} violations:\n{}",
        r.panics,
        r.violations,
        failures.join("\n")
    );
    assert_eq!(r.inputs, inputs(name));
    // The mutations reach more than one outcome (a target whose every input
    // ends the same way tests nothing).
    assert!(r.outcomes.len() >= 5, "{name}: outcomes {:?}", r.outcomes);
}

#[test]
fn envelope() {
    check("envelope");
}

#[test]
fn ws() {
    check("ws");
}

#[test]
fn tls() {
    check("tls");
}

#[test]
fn exec() {
    check("exec");
}

#[test]
fn config() {
    check("config");
}

#[test]
fn sim() {
    check("sim");
}

/// Every seed is a real, valid input of its decoder: it goes through
/// without an error, so the mutants start from inputs that reach the deep
/// end of the code. (TLS: every session seed completes its handshake.)
#[test]
fn every_seed_is_accepted_by_its_decoder() {
    for t in TARGETS {
        let seeds = corpus::load(&corpus::default_dir(), t.name()).expect("corpus");
        assert!(!seeds.is_empty(), "{}: empty corpus", t.name());
        for (i, seed) in seeds.iter().enumerate() {
            let label = run_one(*t, seed)
                .unwrap_or_else(|(k, m)| panic!("{} seed {i}: {k:?}: {m}", t.name()));
            let bad = match t.name() {
                "envelope" => !label.starts_with("decoded"),
                "ws" => !label.contains("decoded 1") && !label.contains("decoded 2"),
                "exec" => label.contains("agent frame") || label.contains("agent io"),
                "config" => !label.contains("daemon ok") && !label.contains("agent ok"),
                "sim" => label != "ok",
                // Raw ClientHellos end at the end of the stream; sessions
                // must get past the handshake (or be the tampered one).
                "tls" => label.starts_with("session: handshake") && !label.contains("decrypt"),
                _ => false,
            };
            assert!(!bad, "{} seed {i} is not a valid input: {label}", t.name());
        }
    }
}

/// The same seed runs the same inputs (outcome counts included); another
/// seed runs others.
#[test]
fn a_run_is_a_function_of_its_seed() {
    let a = run("envelope", 7, 3_000);
    let b = run("envelope", 7, 3_000);
    let c = run("envelope", 8, 3_000);
    assert_eq!(a.outcomes, b.outcomes);
    assert_ne!(a.outcomes, c.outcomes);
}

/// The harness catches a panic, keeps its message and does not stop.
#[test]
fn a_panicking_target_is_counted_not_fatal() {
    struct Boom;
    impl Target for Boom {
        fn name(&self) -> &'static str {
            "boom"
        }
        fn run(&self, input: &[u8]) -> Result<String, String> {
            if input.first() == Some(&b'!') {
                panic!("boom on {input:?}");
            }
            Ok(String::new())
        }
        fn mutate_structured(
            &self,
            _: &[u8],
            _: &[Vec<u8>],
            _: &mut fleet_fuzz::mutate::Rng,
        ) -> Option<Vec<u8>> {
            None
        }
    }
    let r = fleet_fuzz::run(
        &Boom,
        vec![b"!x".to_vec(), b"ok".to_vec()],
        &Options {
            inputs: 500,
            ..Options::default()
        },
    );
    assert!(r.panics >= 1 && r.failed());
    assert_eq!(r.inputs, 500);
    let f = r.failures.first().expect("a failure kept");
    assert_eq!(f.kind, FailureKind::Panic);
    assert!(f.message.contains("boom on"), "{}", f.message);
}
