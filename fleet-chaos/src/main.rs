//! `fleet-chaos`: runs seeded whole-plane schedules and reports how many
//! ran, how many steps they took and every invariant violation, with the
//! seed to replay it.

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use fleet_chaos::{Options, Outcome, run};

/// Whole-plane deterministic simulation of fleet: the real driver and
/// controller under seeded message loss, crashes and outages.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// How many schedules to run (seeds SEED, SEED+1, …).
    #[arg(long, default_value_t = 100)]
    schedules: u64,
    /// The first seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Run only this seed, twice, printing its schedule and whole trace and
    /// whether both runs agree.
    #[arg(long, value_name = "SEED")]
    replay: Option<u64>,
    /// Threads running schedules side by side (each schedule runs on one).
    #[arg(long, default_value_t = 1)]
    threads: u64,
}

fn report(o: &Outcome, tail: usize) {
    println!(
        "FAILED seed {} ({} violations)",
        o.plan.seed,
        o.violations.len()
    );
    print!("{}", o.plan);
    for v in &o.violations {
        println!("  violation: {v}");
    }
    println!("  last {tail} steps:");
    let skip = o.trace.len().saturating_sub(tail);
    for line in &o.trace[skip..] {
        println!("    {line}");
    }
    println!(
        "  replay: cargo run --release -p fleet-chaos -- --replay {}",
        o.plan.seed
    );
}

fn replay(seed: u64) -> ExitCode {
    let opts = Options { keep_trace: true };
    let first = run(seed, &opts);
    print!("{}", first.plan);
    for line in &first.trace {
        println!("{line}");
    }
    let second = run(seed, &opts);
    let same = first.trace_hash == second.trace_hash && first.steps == second.steps;
    println!(
        "seed {seed}: {} steps, {} crashes, {} daemon starts, {} s virtual, trace hash {:016x}; second run {:016x}: {}",
        first.steps,
        first.crashes,
        first.incarnations,
        first.virtual_ms / 1000,
        first.trace_hash,
        second.trace_hash,
        if same {
            "identical"
        } else {
            "DIFFERENT (nondeterminism)"
        }
    );
    for v in &first.violations {
        println!("violation: {v}");
    }
    if first.violations.is_empty() && same {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(seed) = args.replay {
        return replay(seed);
    }
    let started = Instant::now();
    let threads = args.threads.clamp(1, 64);
    let opts = Options::default();
    let results: Vec<Vec<Outcome>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let opts = opts.clone();
                s.spawn(move || {
                    (0..args.schedules)
                        .filter(|i| i % threads == t)
                        .map(|i| {
                            let o = run(args.seed.wrapping_add(i), &opts);
                            // Only failures are kept whole.
                            if o.violations.is_empty() {
                                Outcome {
                                    trace: Vec::new(),
                                    ..o
                                }
                            } else {
                                o
                            }
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let outcomes: Vec<Outcome> = results.into_iter().flatten().collect();
    let steps: u64 = outcomes.iter().map(|o| o.steps).sum();
    let crashes: u64 = outcomes.iter().map(|o| u64::from(o.crashes)).sum();
    let virtual_h = outcomes.iter().map(|o| o.virtual_ms).sum::<u64>() / 3_600_000;
    let failed: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| !o.violations.is_empty())
        .collect();
    for o in failed.iter().take(5) {
        report(o, 80);
    }
    let violations: usize = failed.iter().map(|o| o.violations.len()).sum();
    let mut counts = std::collections::BTreeMap::<&str, u64>::new();
    for o in &outcomes {
        for (k, v) in &o.counts {
            *counts.entry(k).or_default() += v;
        }
    }
    println!("exercised:");
    for (k, v) in counts {
        println!("  {k}: {v}");
    }
    println!(
        "schedules: {} (seeds {}..={}), steps: {steps}, daemon crashes: {crashes}, virtual time: {virtual_h} h, violations: {violations} in {} schedule(s), wall time: {:.1} s",
        outcomes.len(),
        args.seed,
        args.seed.wrapping_add(args.schedules.saturating_sub(1)),
        failed.len(),
        started.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        let seeds: Vec<String> = failed.iter().map(|o| o.plan.seed.to_string()).collect();
        println!("failing seeds: {}", seeds.join(" "));
    }
    if outcomes.len() as u64 != args.schedules {
        println!("some schedules did not complete (a thread panicked)");
        return ExitCode::FAILURE;
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
