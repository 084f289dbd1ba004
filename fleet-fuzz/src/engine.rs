//! The run loop: pick a seed, mutate it, feed it to the target under
//! `catch_unwind`, count what happened.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use rand::{Rng as _, SeedableRng};

use crate::mutate::{self, Rng};
use crate::targets::Target;

/// How much to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Inputs to run (the seeds themselves count).
    pub inputs: u64,
    /// The RNG seed: the same seed and corpus give the same inputs.
    pub seed: u64,
    /// Where to write failing inputs; `None` keeps them in the report only.
    pub crash_dir: Option<PathBuf>,
    /// Inputs that found a new outcome join the seeds, up to this many.
    pub max_learned: usize,
    /// When one input runs longer than this, it is written out and the
    /// process exits (a hang cannot be caught like a panic).
    pub hang_timeout: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            inputs: 100_000,
            seed: 1,
            crash_dir: None,
            max_learned: 1024,
            hang_timeout: None,
        }
    }
}

/// How an input failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The decoder panicked.
    Panic,
    /// The decoder returned, but broke an invariant the target checks.
    Violation,
}

/// One failing input.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Panic or violation.
    pub kind: FailureKind,
    /// The panic message (with its location) or the broken invariant.
    pub message: String,
    /// The input.
    pub input: Vec<u8>,
    /// Where it was written, if it was.
    pub file: Option<PathBuf>,
}

/// What a run found.
#[derive(Debug, Clone)]
pub struct Report {
    /// The target's name.
    pub target: &'static str,
    /// Inputs run.
    pub inputs: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Inputs that panicked.
    pub panics: u64,
    /// Inputs that broke an invariant.
    pub violations: u64,
    /// How often each outcome label was seen.
    pub outcomes: BTreeMap<String, u64>,
    /// The first failures (at most 20 kept).
    pub failures: Vec<Failure>,
    /// The slowest input's time and length.
    pub slowest: (Duration, usize),
    /// Seeds at the start and inputs learned on the way.
    pub seeds: usize,
    /// Inputs kept as seeds because their outcome was new.
    pub learned: usize,
}

impl Report {
    /// Inputs per second.
    pub fn rate(&self) -> f64 {
        self.inputs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Whether anything failed.
    pub fn failed(&self) -> bool {
        self.panics + self.violations > 0
    }
}

thread_local! {
    /// Set while this thread runs a target: the panic hook records the
    /// message here instead of printing it.
    static CAPTURE: RefCell<Option<Option<String>>> = const { RefCell::new(None) };
}

fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let captured = CAPTURE.with(|c| {
                let mut c = c.borrow_mut();
                match c.as_mut() {
                    Some(slot) => {
                        let msg = match info.payload().downcast_ref::<&str>() {
                            Some(s) => (*s).to_owned(),
                            None => info
                                .payload()
                                .downcast_ref::<String>()
                                .cloned()
                                .unwrap_or_else(|| "panic".to_owned()),
                        };
                        let at = info
                            .location()
                            .map(|l| format!(" at {}:{}", l.file(), l.line()))
                            .unwrap_or_default();
                        // The trace is costly: only when asked for (replay).
                        let trace = if std::env::var_os("RUST_BACKTRACE").is_some() {
                            format!("\n{}", std::backtrace::Backtrace::force_capture())
                        } else {
                            String::new()
                        };
                        *slot = Some(format!("{msg}{at}{trace}"));
                        true
                    }
                    None => false,
                }
            });
            if !captured {
                previous(info);
            }
        }));
    });
}

/// Runs `input` through `target`, catching a panic: `Ok(label)`, or the
/// failure.
pub fn run_one(target: &dyn Target, input: &[u8]) -> Result<String, (FailureKind, String)> {
    install_hook();
    CAPTURE.with(|c| *c.borrow_mut() = Some(None));
    let result = panic::catch_unwind(AssertUnwindSafe(|| target.run(input)));
    let message = CAPTURE.with(|c| c.borrow_mut().take().flatten());
    match result {
        Ok(Ok(label)) => Ok(label),
        Ok(Err(violation)) => Err((FailureKind::Violation, violation)),
        Err(_) => Err((
            FailureKind::Panic,
            message.unwrap_or_else(|| "panic".to_owned()),
        )),
    }
}

/// FNV-1a, for crash file names that stay the same across builds.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Watches the input running now; one that runs past the limit is written
/// out and ends the process.
struct Watchdog {
    current: Arc<Mutex<(Instant, Vec<u8>)>>,
    done: Arc<AtomicBool>,
}

impl Watchdog {
    fn start(limit: Duration, target: &'static str, dir: Option<PathBuf>) -> Watchdog {
        let current = Arc::new(Mutex::new((Instant::now(), Vec::new())));
        let done = Arc::new(AtomicBool::new(false));
        let (c, d) = (Arc::clone(&current), Arc::clone(&done));
        std::thread::spawn(move || {
            while !d.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(500));
                let now = c.lock().unwrap_or_else(|e| e.into_inner());
                if now.0.elapsed() > limit && !d.load(Ordering::Relaxed) {
                    let path = dir.as_ref().map(|dir| {
                        let p = dir.join(format!("{target}-hang-{:016x}.bin", fnv(&now.1)));
                        let _ = std::fs::create_dir_all(dir);
                        let _ = std::fs::write(&p, &now.1);
                        p
                    });
                    eprintln!(
                        "{target}: an input ran over {} s (hang); input: {}",
                        limit.as_secs(),
                        path.map(|p| p.display().to_string()).unwrap_or_default()
                    );
                    std::process::exit(3);
                }
            }
        });
        Watchdog { current, done }
    }

    fn set(&self, input: &[u8]) {
        let mut c = self.current.lock().unwrap_or_else(|e| e.into_inner());
        c.0 = Instant::now();
        c.1.clear();
        c.1.extend_from_slice(input);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
    }
}

/// Runs `opts.inputs` inputs of `target` built from `seeds`.
pub fn run(target: &dyn Target, seeds: Vec<Vec<u8>>, opts: &Options) -> Report {
    let mut rng = Rng::seed_from_u64(opts.seed ^ fnv(target.name().as_bytes()));
    let mut pool = if seeds.is_empty() {
        vec![Vec::new()]
    } else {
        seeds
    };
    let seed_count = pool.len();
    let dict = target.dictionary(&pool);
    let mut report = Report {
        target: target.name(),
        inputs: 0,
        elapsed: Duration::ZERO,
        panics: 0,
        violations: 0,
        outcomes: BTreeMap::new(),
        failures: Vec::new(),
        slowest: (Duration::ZERO, 0),
        seeds: seed_count,
        learned: 0,
    };
    let watchdog = opts
        .hang_timeout
        .map(|limit| Watchdog::start(limit, target.name(), opts.crash_dir.clone()));
    let start = Instant::now();
    for i in 0..opts.inputs {
        let input = match usize::try_from(i) {
            // Every seed once as it is, then mutants.
            Ok(i) if i < seed_count => pool[i].clone(),
            _ => next_input(target, &pool, &dict, &mut rng),
        };
        if let Some(w) = &watchdog {
            w.set(&input);
        }
        let t = Instant::now();
        let result = run_one(target, &input);
        let took = t.elapsed();
        if took > report.slowest.0 {
            report.slowest = (took, input.len());
        }
        report.inputs += 1;
        match result {
            Ok(label) => {
                let seen = report.outcomes.entry(label).or_insert(0);
                *seen += 1;
                if *seen == 1 && report.learned < opts.max_learned {
                    report.learned += 1;
                    pool.push(input);
                }
            }
            Err((kind, message)) => {
                match kind {
                    FailureKind::Panic => report.panics += 1,
                    FailureKind::Violation => report.violations += 1,
                }
                let file = opts.crash_dir.as_ref().and_then(|dir| {
                    let what = match kind {
                        FailureKind::Panic => "panic",
                        FailureKind::Violation => "violation",
                    };
                    let path =
                        dir.join(format!("{}-{what}-{:016x}.bin", target.name(), fnv(&input)));
                    std::fs::create_dir_all(dir)
                        .and_then(|()| std::fs::write(&path, &input))
                        .ok()
                        .map(|()| path)
                });
                if report.failures.len() < 20 {
                    report.failures.push(Failure {
                        kind,
                        message,
                        input,
                        file,
                    });
                }
            }
        }
    }
    report.elapsed = start.elapsed();
    report
}

/// One mutant: a structure-aware mutation of a seed (when the target has
/// one and the dice say so) or a stack of byte mutations.
fn next_input(target: &dyn Target, pool: &[Vec<u8>], dict: &[Vec<u8>], rng: &mut Rng) -> Vec<u8> {
    let base = &pool[rng.gen_range(0..pool.len())];
    let mut input = if rng.gen_ratio(2, 5) {
        target
            .mutate_structured(base, pool, rng)
            .unwrap_or_else(|| base.clone())
    } else {
        base.clone()
    };
    if input == *base || rng.gen_ratio(1, 4) {
        mutate::bytes(&mut input, pool, dict, rng);
    }
    input
}
