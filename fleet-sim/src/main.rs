//! `fleet-sim`: rank the strategies against a forecast.
//!
//! ```text
//! fleet-sim --config sim-input.json [--out result.json] [--svg chart.svg] [--seed N] [--threads N]
//! fleet-sim --config sim-input.json --tune [--pool-out pool.toml] [--out tuned.json] [--svg chart.svg]
//! fleet-sim --bench [--config sim-input.json]
//! ```

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use fleet_sim::{Scenario, SimError, input, report};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A simulation allocates and frees small values (ids, views, plans) in
/// every controller round, millions of times a run; mimalloc's per-thread
/// free lists take that faster than the system allocator (measured in
/// BENCHMARKS.md, "fleet-sim --bench").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The example input, used by `--bench` without `--config`.
const EXAMPLE: &str = include_str!("../examples/sim-input.json");

/// fleet-sim: rank the strategies against a forecast
#[derive(Debug, Parser)]
#[command(
    name = "fleet-sim",
    version,
    override_usage = "fleet-sim --config FILE [--out FILE] [--svg FILE] [--seed N] [--threads N] [--quiet]
       fleet-sim --config FILE --tune [--pool-out FILE] [--out FILE] [--svg FILE] [--seed N] [--threads N] [--quiet]
       fleet-sim --bench [--config FILE] [--threads N]",
    after_help = "Exit codes: 0 success, 1 failure, 2 usage error or invalid input."
)]
struct Args {
    /// The input (JSON; schema: fleet-sim/sim-input.schema.json)
    #[arg(long, value_name = "FILE", required_unless_present = "bench")]
    config: Option<PathBuf>,
    /// Write result.json there (with --tune: the tuned pools and their runs)
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Draw cost vs wait and cost over time
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// Override the input's seed
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// Strategies simulated in parallel (default: the CPUs)
    #[arg(long, value_name = "N")]
    threads: Option<NonZeroUsize>,
    /// No table on stdout, no progress bar
    #[arg(long)]
    quiet: bool,
    /// One year at per-minute resolution x the six strategies; prints the
    /// wall time (the example input without --config)
    #[arg(long, conflicts_with = "tune")]
    bench: bool,
    /// Search each strategy's parameters and the pool's node bounds for the
    /// cheapest setting that meets the SLA; rank the tuned strategies and
    /// print the winner as a daemon.toml [[pool]] block
    #[arg(long)]
    tune: bool,
    /// With --tune: write the winner's [[pool]] block there, then the other
    /// strategies' blocks commented out
    #[arg(long, value_name = "FILE", requires = "tune")]
    pool_out: Option<PathBuf>,
}

fn main() -> ExitCode {
    // Usage errors exit 2 (clap's code), --help and --version 0.
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            match e.kind() {
                fleet_sim::ErrorKind::Invalid | fleet_sim::ErrorKind::TooLarge => ExitCode::from(2),
                _ => ExitCode::from(1),
            }
        }
    }
}

fn threads(args: &Args) -> usize {
    args.threads
        .or_else(|| std::thread::available_parallelism().ok())
        .map_or(1, NonZeroUsize::get)
}

fn run(args: &Args) -> Result<(), SimError> {
    let mut scenario = match &args.config {
        Some(path) => fleet_sim::load(path)?,
        None => input::parse(EXAMPLE.as_bytes())?,
    };
    if let Some(seed) = args.seed {
        scenario.input.seed = seed;
    }
    if args.bench {
        return bench(scenario, threads(args));
    }
    if args.tune {
        return tune(args, &scenario);
    }
    let result = with_progress(&scenario, threads(args), args.quiet, |s, t, p| {
        fleet_sim::simulate(s, t, p)
    })?;
    if let Some(out) = &args.out {
        write(out, &fleet_sim::to_json(&result))?;
    }
    if let Some(svg) = &args.svg {
        write(svg, &report::svg(&result)?)?;
    }
    if !args.quiet {
        print!("{}", report::table(&result));
    }
    Ok(())
}

fn tune(args: &Args, scenario: &Scenario) -> Result<(), SimError> {
    let tuning = with_progress(scenario, threads(args), args.quiet, |s, t, p| {
        fleet_sim::tune::tune(s, t, p)
    })?;
    if let Some(out) = &args.out {
        write(out, &fleet_sim::tune::to_json(&tuning))?;
    }
    if let Some(svg) = &args.svg {
        write(svg, &report::svg(&tuning.result)?)?;
    }
    if let Some(path) = &args.pool_out {
        write(path, &fleet_sim::tune::daemon_toml(&tuning)?)?;
    }
    if !args.quiet {
        print!("{}", fleet_sim::tune::table(&tuning));
        if let Some(block) = fleet_sim::tune::winner_toml(&tuning)? {
            print!("\n{block}");
        }
    }
    Ok(())
}

fn write(path: &std::path::Path, text: &str) -> Result<(), SimError> {
    std::fs::write(path, text).map_err(|source| SimError::Io {
        file: path.display().to_string(),
        source,
    })
}

/// Runs `f`, drawing a progress bar on stderr once it has taken a second,
/// if stderr is a terminal (never into a CI log or a pipe: indicatif's
/// stderr target hides itself there).
fn with_progress<T>(
    s: &Scenario,
    threads: usize,
    quiet: bool,
    f: impl FnOnce(&Scenario, usize, Option<&[AtomicU64]>) -> T + Send,
) -> T
where
    T: Send,
{
    let counters: Vec<AtomicU64> = s
        .input
        .strategies
        .iter()
        .map(|_| AtomicU64::new(0))
        .collect();
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        if !quiet {
            scope.spawn(|| {
                // Each strategy's counter runs to 1000.
                let total = 1000 * counters.len().max(1) as u64;
                let bar = ProgressBar::with_draw_target(
                    Some(total),
                    ProgressDrawTarget::stderr_with_hz(10),
                );
                if let Ok(style) =
                    ProgressStyle::with_template("[{bar:40}] {percent:>3}% {elapsed_precise}")
                {
                    bar.set_style(style.progress_chars("#>."));
                }
                let started = Instant::now();
                while !done.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    if started.elapsed() >= Duration::from_secs(1) {
                        bar.set_position(counters.iter().map(|c| c.load(Ordering::Relaxed)).sum());
                    }
                }
                bar.finish_and_clear();
            });
        }
        let r = f(s, threads, Some(&counters));
        done.store(true, Ordering::Relaxed);
        r
    })
}

fn bench(mut scenario: Scenario, threads: usize) -> Result<(), SimError> {
    scenario.input.horizon_hours = 8_760;
    scenario.input.step_ms = 60_000;
    scenario.input.strategies = fleet_core::strategy::StrategyConfig::all_defaults();
    let scenario = input::validate(scenario.input)?;
    let started = Instant::now();
    let arrivals = fleet_sim::forecast::arrivals(&scenario);
    let generated = started.elapsed();
    let runs = fleet_sim::run::run_all(&scenario, &arrivals, threads, None)?;
    let wall = started.elapsed();
    let steps: u64 = runs.iter().map(|r| r.steps).sum();
    println!(
        "bench: 1 year (8760 h) at {} ms steps, {} strategies, {} jobs, {} threads",
        scenario.input.step_ms,
        runs.len(),
        arrivals.jobs.len(),
        threads
    );
    for r in &runs {
        println!(
            "  {:<18} {:>9} controller steps {:>9} rounds  bill {}  {:.3} s",
            r.strategy.name(),
            r.steps,
            r.rounds,
            r.cost.total(),
            r.wall.as_secs_f64()
        );
    }
    println!(
        "wall time {:.3} s (arrivals {:.3} s), {} controller steps, {:.0} steps/s",
        wall.as_secs_f64(),
        generated.as_secs_f64(),
        steps,
        steps as f64 / wall.as_secs_f64().max(1e-9)
    );
    // For scripts/bench: the README's "1 year per minute × 6 strategies".
    println!(
        "BENCH sim.year_all_strategies {:.3} s - - <1s",
        wall.as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_clap_definition_is_consistent() {
        Args::command().debug_assert();
    }

    /// The `cargo run -p fleet-sim … -- ARGS` lines of the READMEs (a
    /// trailing `\` continues a line), as argument lists.
    fn documented(text: &str) -> Vec<Vec<String>> {
        let joined = text.replace("\\\n", " ");
        joined
            .lines()
            .filter(|l| l.contains("cargo run -p fleet-sim"))
            .filter_map(|l| l.split_once(" -- ").map(|(_, rest)| rest))
            .map(|rest| {
                rest.split_whitespace()
                    .take_while(|w| !w.starts_with('#'))
                    .map(str::to_owned)
                    .collect()
            })
            .collect()
    }

    #[test]
    fn the_documented_command_lines_parse() -> Result<(), Box<dyn std::error::Error>> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut found = Vec::new();
        for file in [root.join("README.md"), root.join("../README.md")] {
            found.extend(documented(&std::fs::read_to_string(&file)?));
        }
        assert!(found.len() >= 4, "{found:?}");
        for args in &found {
            let parsed = Args::try_parse_from(
                std::iter::once("fleet-sim").chain(args.iter().map(String::as_str)),
            );
            assert!(parsed.is_ok(), "{args:?}: {parsed:?}");
        }
        let bench = Args::try_parse_from(["fleet-sim", "--bench"])?;
        assert!(bench.bench && bench.config.is_none());
        Ok(())
    }
}
