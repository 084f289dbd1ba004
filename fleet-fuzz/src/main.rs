//! `fleet-fuzz <target>|all --inputs N --seed S`: runs the in-tree fuzzer
//! (see the crate docs) and exits non-zero if any input panicked or broke
//! an invariant.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use fleet_fuzz::engine::{self, FailureKind};
use fleet_fuzz::{Options, TARGETS, Target, by_name, corpus};

/// Fuzz fleet's decoders on the stable toolchain.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// A target (envelope, ws, tls, exec, config, sim) or `all`.
    target: Option<String>,
    /// Inputs per target (the seeds count).
    #[arg(long, default_value_t = 100_000)]
    inputs: u64,
    /// RNG seed: the same seed and corpus run the same inputs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The seed corpus (a folder per target).
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Where failing inputs are written.
    #[arg(long)]
    crashes: Option<PathBuf>,
    /// Print every distinct outcome with its count.
    #[arg(long)]
    outcomes: bool,
    /// Give up (and save the input) when one input runs this many seconds.
    #[arg(long, default_value_t = 30)]
    hang_secs: u64,
}

#[derive(Subcommand)]
enum Command {
    /// Runs one input file through a target and prints what happened.
    Replay {
        /// The target.
        target: String,
        /// The input file.
        file: PathBuf,
    },
    /// Writes the TLS target's generated seeds (real rustls ClientHellos of
    /// every client variant, session scripts) into a folder.
    SeedTls {
        /// The folder (normally fleet-fuzz/corpus/tls).
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Replay { target, file }) => replay(&target, &file),
        Some(Command::SeedTls { dir }) => seed_tls(&dir),
        None => fuzz(&cli),
    }
}

fn replay(target: &str, file: &std::path::Path) -> ExitCode {
    let Some(t) = by_name(target) else {
        eprintln!("no target {target}");
        return ExitCode::from(2);
    };
    let input = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    match engine::run_one(t, &input) {
        Ok(label) => {
            println!("ok: {label}");
            ExitCode::SUCCESS
        }
        Err((kind, msg)) => {
            println!("{kind:?}: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn seed_tls(dir: &std::path::Path) -> ExitCode {
    let seeds = match fleet_fuzz::targets::tls_seed_inputs() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    for (name, bytes) in seeds {
        let path = dir.join(name);
        if let Err(e) = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, bytes)) {
            eprintln!("{}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("{}", path.display());
    }
    ExitCode::SUCCESS
}

fn fuzz(cli: &Cli) -> ExitCode {
    let name = cli.target.as_deref().unwrap_or("all");
    let targets: Vec<&dyn Target> = if name == "all" {
        TARGETS.to_vec()
    } else {
        match by_name(name) {
            Some(t) => vec![t],
            None => {
                let names: Vec<&str> = TARGETS.iter().map(|t| t.name()).collect();
                eprintln!("no target {name}; targets: {}, all", names.join(", "));
                return ExitCode::from(2);
            }
        }
    };
    let corpus_dir = cli.corpus.clone().unwrap_or_else(corpus::default_dir);
    let opts = Options {
        inputs: cli.inputs,
        seed: cli.seed,
        crash_dir: Some(
            cli.crashes
                .clone()
                .unwrap_or_else(corpus::default_crash_dir),
        ),
        hang_timeout: Some(Duration::from_secs(cli.hang_secs)),
        ..Options::default()
    };
    println!(
        "{:<9} {:>10} {:>9} {:>10} {:>7} {:>10} {:>9} {:>7} {:>11}",
        "target",
        "inputs",
        "secs",
        "inputs/s",
        "panics",
        "violations",
        "outcomes",
        "seeds",
        "slowest ms"
    );
    let mut failed = false;
    for t in targets {
        let seeds = match corpus::load(&corpus_dir, t.name()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("corpus: {e}");
                return ExitCode::from(2);
            }
        };
        let r = fleet_fuzz::run(t, seeds, &opts);
        println!(
            "{:<9} {:>10} {:>9.1} {:>10.0} {:>7} {:>10} {:>9} {:>7} {:>11.1}",
            r.target,
            r.inputs,
            r.elapsed.as_secs_f64(),
            r.rate(),
            r.panics,
            r.violations,
            r.outcomes.len(),
            format!("{}+{}", r.seeds, r.learned),
            r.slowest.0.as_secs_f64() * 1000.0
        );
        if cli.outcomes {
            for (label, n) in &r.outcomes {
                println!("    {n:>10}  {label}");
            }
        }
        for f in &r.failures {
            let what = match f.kind {
                FailureKind::Panic => "PANIC",
                FailureKind::Violation => "VIOLATION",
            };
            let at = f
                .file
                .as_ref()
                .map(|p| format!(" (input: {})", p.display()))
                .unwrap_or_default();
            println!("  {what}{at}: {}", f.message);
        }
        failed |= r.failed();
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
