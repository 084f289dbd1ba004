//! `--tune`: for each strategy of the input, the cheapest setting of its
//! parameters and of the pool's node bounds that meets the SLA on the
//! forecast, found by running the real controller ([`run::run_pool`]) on a
//! bounded set of candidates; the tuned strategies ranked; the winner as a
//! `[[pool]]` block for `daemon.toml`.
//!
//! **Objective.** A candidate meets the SLA when every job was served and
//! its `sla.percentile` wait is at most `max_wait_ms`. Among candidates
//! that meet it the cheapest total cost wins; if none does, the lowest SLA
//! percentile wait (flagged as missing the SLA). Ties go to the lower cost
//! or wait, then to the setting that changes fewest fields of the input's,
//! then to the pool's JSON text, so the choice never depends on the order
//! runs finish in.
//!
//! **Search, per strategy.** One *capacity* axis, along which waits are
//! assumed only to shrink as it grows: the warm floor `min_nodes`
//! (cold_image, cold_snapshot, spot), the always-on count (hybrid:
//! `min_nodes`; always_on_resize: `min_nodes` = `max_nodes`), the pool size
//! (stopped_pool: `size` = `max_nodes`). It is searched from the current
//! value, galloping then bisecting, for the smallest value that meets the
//! SLA (2–5 runs instead of one per value). Around it, a few *shape*
//! dimensions with a handful of values each ([`IDLE_TIMEOUTS_MS`],
//! [`STOP_AFTER_IDLE_MS`], [`SCALE_DOWN_AFTER_MS`],
//! [`SNAPSHOT_REFRESH_MS`], `max_nodes`, baseline/peak types among the
//! pool's, spot's on-demand fallback, and for the elastic strategies
//! whether the warm nodes are kept all week or only in the forecast's busy
//! hours as a `[[pool.schedule]]` period — see [`busy_hours`]), searched by
//! coordinate descent: each
//! value of a dimension is tried from the best point so far, each with its
//! own capacity fit, and the best kept; passes repeat until one changes
//! nothing (at most [`MAX_PASSES`]). The input's `max_nodes` bounds every
//! candidate: it is the most nodes the operator allows.
//!
//! Every candidate runs at most once (memoised by its pool's JSON), and the
//! result is the best of *every* candidate run, not only of the path the
//! descent took, so tuning never returns a setting costlier than an
//! SLA-meeting one it ran. The input's own setting is one of the candidates.
//!
//! **Determinism.** A run depends only on the scenario (seed included) and
//! the candidate; the search's path depends only on run results. Threads
//! (`threads` runs at once, over every strategy's candidates) change which
//! runs overlap, never what they return, so the output is identical for any
//! thread count.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};

use fleet_core::InstanceType;
use fleet_core::ids::Millis;
use fleet_core::money::Money;
use fleet_core::schedule::{PeriodSpec, ScaleFactor, SchedulePeriod};
use fleet_core::strategy::{PoolSpec, StrategyConfig};
use serde::Serialize;

use crate::error::SimError;
use crate::forecast::{self, Arrivals};
use crate::input::{Forecast, Scenario};
use crate::report::{self, RankEntry, SimResult};
use crate::run::{self, RunOutcome};

const MINUTE: Millis = 60_000;
const HOUR: Millis = 60 * MINUTE;

/// Idle timeouts tried (cold_image, cold_snapshot, spot; hybrid's overflow
/// nodes): from about EC2's minimum charge to keeping a node through a
/// working day's gaps.
pub const IDLE_TIMEOUTS_MS: [Millis; 5] = [30_000, MINUTE, 5 * MINUTE, 15 * MINUTE, HOUR];
/// `stopped_pool.stop_after_idle_ms` values tried: from stopping almost at
/// once (a start is cheap where stopped nodes bill only their disk) to
/// keeping a node through an hour's gap.
pub const STOP_AFTER_IDLE_MS: [Millis; 5] = [15_000, MINUTE, 5 * MINUTE, 15 * MINUTE, HOUR];
/// `always_on_resize.scale_down_after_ms` values tried.
pub const SCALE_DOWN_AFTER_MS: [Millis; 3] = [MINUTE, 5 * MINUTE, 30 * MINUTE];
/// `cold_snapshot.snapshot_refresh_ms` values tried.
pub const SNAPSHOT_REFRESH_MS: [Millis; 3] = [6 * HOUR, 24 * HOUR, 72 * HOUR];
/// How busy an hour must be, as a share of the busiest, to be in a
/// busy-hours period tried (a wider period serves more off-peak jobs warm).
pub const BUSY_SHARES: [f64; 3] = [0.5, 0.2, 0.05];
/// Coordinate-descent passes at most (each tries every shape dimension).
pub const MAX_PASSES: usize = 3;

/// The tuned strategies and the report of their tuned runs.
#[derive(Debug, Clone, Serialize)]
pub struct Tuning {
    /// One per entry of the input's `strategies`, in the input's order.
    pub tuned: Vec<Tuned>,
    /// The tuned runs as `fleet-sim` reports any run (same ids and order as
    /// `tuned`); its `ranking` ranks the tuned strategies by the tuning
    /// objective.
    pub result: SimResult,
    /// Simulation runs in all.
    pub evaluations: usize,
}

/// One strategy, tuned.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tuned {
    /// As in the result (`kind`, or `kind#2` for a second entry of a kind).
    pub id: String,
    /// The pool to run: strategy parameters, `min_nodes`, `max_nodes`.
    pub pool: PoolSpec,
    /// What the tuned pool did.
    pub outcome: Outcome,
    /// What the input's own setting did.
    pub untuned: Outcome,
    /// Simulation runs spent on this strategy.
    pub evaluations: usize,
}

/// How one setting fared on the forecast.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// Every job served, SLA percentile wait within the bound.
    pub meets_sla: bool,
    /// The wait at the SLA's percentile.
    pub sla_wait_ms: Millis,
    /// Jobs not served by the end of accounting.
    pub unserved: u64,
    /// Total cost over the accounted time, in micro-dollars.
    pub total_micros: i64,
}

impl Outcome {
    fn total(&self) -> Money {
        Money::from_micros(self.total_micros)
    }

    /// The objective's order: meeting the SLA first; then by cost if both
    /// meet it, by wait if neither does.
    fn order(&self, other: &Outcome) -> Ordering {
        other.meets_sla.cmp(&self.meets_sla).then_with(|| {
            let cost = self.total_micros.cmp(&other.total_micros);
            let wait = self.sla_wait_ms.cmp(&other.sla_wait_ms);
            if self.meets_sla {
                cost.then(wait)
            } else {
                wait.then(cost)
            }
        })
    }
}

/// Tunes every strategy of `s`, running up to `threads` simulations at
/// once. `progress`, if given, holds one counter per strategy, advanced to
/// 1000 as its search proceeds.
pub fn tune(
    s: &Scenario,
    threads: usize,
    progress: Option<&[AtomicU64]>,
) -> Result<Tuning, SimError> {
    let arrivals = forecast::arrivals(s);
    let gate = Gate::new(threads.max(1));
    let entries: Vec<usize> = (0..s.input.strategies.len()).collect();
    let found = each(&entries, |&i| {
        let progress = progress.and_then(|p| p.get(i));
        Search::new(s, &arrivals, &gate, progress, &s.input.strategies[i]).run()
    })?;
    let runs: Vec<RunOutcome> = found.iter().map(|f| f.best.outcome.clone()).collect();
    let mut result = report::build(s, &runs);
    let tuned: Vec<Tuned> = found
        .iter()
        .zip(&result.strategies)
        .map(|(f, r)| Tuned {
            id: r.id.clone(),
            pool: f.best.spec.clone(),
            outcome: f.best.outcome_summary,
            untuned: f.untuned,
            evaluations: f.evaluated.len(),
        })
        .collect();
    result.ranking = ranking(&tuned, &result);
    Ok(Tuning {
        evaluations: tuned.iter().map(|t| t.evaluations).sum(),
        tuned,
        result,
    })
}

/// The tuned strategies by the objective, with the reason for each place.
fn ranking(tuned: &[Tuned], result: &SimResult) -> Vec<RankEntry> {
    let mut order: Vec<(&Tuned, Option<&str>)> = tuned
        .iter()
        .zip(&result.strategies)
        .map(|(t, r)| (t, r.sla.reason.as_deref()))
        .collect();
    order.sort_by(|(a, _), (b, _)| a.outcome.order(&b.outcome).then_with(|| a.id.cmp(&b.id)));
    let best = order
        .first()
        .filter(|(t, _)| t.outcome.meets_sla)
        .map(|(t, _)| (t.id.clone(), t.outcome.total_micros));
    order
        .iter()
        .enumerate()
        .map(|(i, (t, why))| {
            let reason = report::rank_reason(
                best.as_ref(),
                &t.id,
                t.outcome.total_micros,
                *why,
                (
                    "tuned strategy",
                    "misses the SLA at every setting tried; closest",
                ),
            );
            RankEntry {
                rank: i + 1,
                strategy: t.id.clone(),
                total_usd: t.outcome.total().to_string(),
                meets_sla: t.outcome.meets_sla,
                reason,
            }
        })
        .collect()
}

/// Limits how many simulations run at once: a counting semaphore. The
/// searches themselves are threads that mostly wait here.
struct Gate {
    free: Mutex<usize>,
    freed: Condvar,
}

impl Gate {
    fn new(permits: usize) -> Gate {
        Gate {
            free: Mutex::new(permits),
            freed: Condvar::new(),
        }
    }

    fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        {
            let mut free = lock(&self.free);
            while *free == 0 {
                free = self
                    .freed
                    .wait(free)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            *free -= 1;
        }
        // Given back by drop, so a run that panics does not leave every
        // other search waiting for its permit.
        let _permit = Permit(self);
        f()
    }
}

/// A [`Gate`]'s permit, held while a simulation runs.
struct Permit<'a>(&'a Gate);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *lock(&self.0.free) += 1;
        self.0.freed.notify_one();
    }
}

/// A lock whose holder panicked still guards plain data: take it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `f` on every item on its own thread; results in the items' order.
/// Threads wait on the [`Gate`], so this bounds nothing itself.
fn each<T: Sync, R: Send>(
    items: &[T],
    f: impl Fn(&T) -> Result<R, SimError> + Sync,
) -> Result<Vec<R>, SimError> {
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .iter()
            .map(|item| scope.spawn(move || f(item)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(SimError::Run {
                        strategy: "?".to_owned(),
                        message: "a tuning thread panicked".to_owned(),
                    })
                })
            })
            .collect()
    })
}

/// One candidate, run.
#[derive(Debug)]
struct Eval {
    spec: PoolSpec,
    /// The pool's JSON: the memo key and the last tie-breaker.
    key: String,
    /// Fields that differ from the input's setting: among equals, the
    /// setting closest to what the operator wrote wins (a timeout that
    /// changes nothing is not reported as tuned).
    changes: usize,
    outcome: RunOutcome,
    outcome_summary: Outcome,
}

impl Eval {
    fn order(&self, other: &Eval) -> Ordering {
        self.outcome_summary
            .order(&other.outcome_summary)
            .then(self.changes.cmp(&other.changes))
            .then_with(|| self.key.cmp(&other.key))
    }
}

/// How many fields of two pools' JSON differ, the strategy's parameters
/// counted one by one.
fn changes(a: &serde_json::Value, b: &serde_json::Value) -> usize {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return usize::from(a != b);
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .map(|k| match (a.get(k), b.get(k)) {
            (Some(x), Some(y)) if k == "strategy" => changes(x, y),
            (x, y) => usize::from(x != y),
        })
        .sum()
}

type Memo = BTreeMap<String, Arc<OnceLock<Result<Arc<Eval>, String>>>>;

/// One strategy's search.
struct Search<'a> {
    scenario: &'a Scenario,
    /// The input's setting for this strategy.
    given: PoolSpec,
    given_json: serde_json::Value,
    arrivals: &'a Arrivals,
    gate: &'a Gate,
    progress: Option<&'a AtomicU64>,
    /// Every candidate asked for; a second ask waits for the first's run.
    cache: Mutex<Memo>,
}

/// What a search found.
struct Found {
    best: Arc<Eval>,
    untuned: Outcome,
    evaluated: Vec<Arc<Eval>>,
}

impl<'a> Search<'a> {
    fn new(
        scenario: &'a Scenario,
        arrivals: &'a Arrivals,
        gate: &'a Gate,
        progress: Option<&'a AtomicU64>,
        strategy: &StrategyConfig,
    ) -> Search<'a> {
        let mut given = scenario.pool.clone();
        given.strategy = strategy.clone();
        Search {
            scenario,
            given_json: serde_json::to_value(&given).unwrap_or_default(),
            given,
            arrivals,
            gate,
            progress,
            cache: Mutex::new(BTreeMap::new()),
        }
    }

    fn run(&self) -> Result<Found, SimError> {
        let s = self.scenario;
        let untuned = self.eval(self.given.clone())?.outcome_summary;
        let axis = Capacity::of(&self.given.strategy);
        let start = normalize(s, self.given.clone(), axis);
        let dims = dimensions(s, &start);
        let mut best = self.fit(&start, axis)?;
        let steps = (MAX_PASSES * dims.len()).max(1) as u64;
        let mut done = 0u64;
        for _ in 0..MAX_PASSES {
            let before = best.key.clone();
            for dim in &dims {
                let variants: Vec<PoolSpec> = dim
                    .iter()
                    .map(|knob| {
                        let mut v = best.spec.clone();
                        knob.apply(&mut v);
                        v
                    })
                    .collect();
                for fit in each(&variants, |v| self.fit(v, axis))? {
                    if fit.order(&best) == Ordering::Less {
                        best = fit;
                    }
                }
                done += 1;
                self.report(done * 1000 / steps);
            }
            if best.key == before {
                break;
            }
        }
        // The best of every run, not only of the path the descent took.
        let evaluated = self.evaluated();
        if let Some(e) = evaluated.iter().min_by(|a, b| a.order(b)) {
            best = Arc::clone(e);
        }
        self.report(1000);
        Ok(Found {
            best,
            untuned,
            evaluated,
        })
    }

    fn report(&self, permille: u64) {
        if let Some(p) = self.progress {
            p.store(permille.min(1000), AtomicOrdering::Relaxed);
        }
    }

    /// Every candidate run so far (in key order).
    fn evaluated(&self) -> Vec<Arc<Eval>> {
        lock(&self.cache)
            .values()
            .filter_map(|cell| cell.get())
            .filter_map(|r| r.as_ref().ok())
            .cloned()
            .collect()
    }

    /// Runs `spec` once; asked again, returns the first run's result.
    fn eval(&self, spec: PoolSpec) -> Result<Arc<Eval>, SimError> {
        let strategy = spec.strategy.name();
        let fail = |message: String| SimError::Run {
            strategy: strategy.to_owned(),
            message,
        };
        spec.validate().map_err(|e| fail(e.to_string()))?;
        let json = serde_json::to_value(&spec).map_err(|e| fail(e.to_string()))?;
        let key = json.to_string();
        let cell = Arc::clone(lock(&self.cache).entry(key.clone()).or_default());
        let evaluated = cell.get_or_init(|| {
            let s = self.scenario;
            let outcome = self
                .gate
                .run(|| run::run_pool(s, self.arrivals, &spec, None))
                .map_err(|e| match e {
                    SimError::Run { message, .. } => message,
                    other => other.to_string(),
                })?;
            let sla_wait_ms = report::percentile(&outcome.waits_ms, s.input.sla.percentile);
            let outcome_summary = Outcome {
                meets_sla: outcome.unserved == 0 && sla_wait_ms <= s.input.sla.max_wait_ms,
                sla_wait_ms,
                unserved: outcome.unserved,
                total_micros: outcome.cost.total().micros(),
            };
            Ok(Arc::new(Eval {
                changes: changes(&json, &self.given_json),
                spec,
                key,
                outcome,
                outcome_summary,
            }))
        });
        evaluated.clone().map_err(fail)
    }

    /// The best run of `shape` along the capacity axis: the smallest
    /// capacity that meets the SLA, found by galloping from `shape`'s own
    /// capacity and then bisecting (waits are assumed not to grow with
    /// capacity). If none meets it, the best tried (the largest, usually).
    fn fit(&self, shape: &PoolSpec, axis: Capacity) -> Result<Arc<Eval>, SimError> {
        let cap = self.scenario.pool.max_nodes;
        let (lo, hi) = axis.range(shape, cap);
        let mut best: Option<Arc<Eval>> = None;
        let mut meets = |c: u32| -> Result<bool, SimError> {
            let mut spec = shape.clone();
            axis.set(&mut spec, c);
            let e = self.eval(spec)?;
            let m = e.outcome_summary.meets_sla;
            if best.as_ref().is_none_or(|b| e.order(b) == Ordering::Less) {
                best = Some(e);
            }
            Ok(m)
        };
        smallest(lo, hi, axis.get(shape), &mut meets)?;
        best.ok_or_else(|| SimError::Run {
            strategy: shape.strategy.name().to_owned(),
            message: "no candidate was run".to_owned(),
        })
    }
}

/// The smallest `c` in `lo..=hi` for which `meets(c)`, if any, assuming
/// `meets` never turns false as `c` grows: gallops from `start` (doubling
/// its steps) to bracket the answer, then bisects. Near `start` that is a
/// couple of probes; anywhere, about twice log2 of the range.
fn smallest<E>(
    lo: u32,
    hi: u32,
    start: u32,
    meets: &mut impl FnMut(u32) -> Result<bool, E>,
) -> Result<Option<u32>, E> {
    if lo > hi {
        return Ok(None);
    }
    let start = start.clamp(lo, hi);
    // `fail` < `ok`: the largest value known to miss, the smallest known
    // to meet.
    let (mut fail, mut ok) = (None, None);
    let mut step = 1u32;
    if meets(start)? {
        ok = Some(start);
        let mut at = start;
        while at > lo {
            let probe = at.saturating_sub(step).max(lo);
            if !meets(probe)? {
                fail = Some(probe);
                break;
            }
            at = probe;
            ok = Some(probe);
            step = step.saturating_mul(2);
        }
    } else {
        fail = Some(start);
        let mut at = start;
        while at < hi {
            let probe = at.saturating_add(step).min(hi);
            if meets(probe)? {
                ok = Some(probe);
                break;
            }
            at = probe;
            fail = Some(probe);
            step = step.saturating_mul(2);
        }
    }
    while let (Some(f), Some(o)) = (fail, ok)
        && o - f > 1
    {
        let mid = f + (o - f) / 2;
        if meets(mid)? {
            ok = Some(mid);
        } else {
            fail = Some(mid);
        }
    }
    Ok(ok)
}

/// The pool setting whose growth shortens waits, per strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Capacity {
    /// `min_nodes` in `0..=max_nodes`: nodes kept warm by an elastic pool.
    Floor,
    /// `min_nodes` in `1..=max_nodes`: hybrid's always-on nodes (0 and 1
    /// are the same pool).
    AlwaysOn,
    /// `min_nodes` = `max_nodes` in `1..=cap`: always_on_resize's nodes
    /// (it creates nothing past its always-on count).
    Fixed,
    /// `stopped_pool.size` = `max_nodes` in `1..=cap`, `min_nodes` 0 (the
    /// pool never grows past its size).
    Size,
}

impl Capacity {
    fn of(strategy: &StrategyConfig) -> Capacity {
        match strategy {
            StrategyConfig::AlwaysOnResize(_) => Capacity::Fixed,
            StrategyConfig::StoppedPool(_) => Capacity::Size,
            StrategyConfig::Hybrid(_) => Capacity::AlwaysOn,
            _ => Capacity::Floor,
        }
    }

    fn range(self, spec: &PoolSpec, cap: u32) -> (u32, u32) {
        match self {
            Capacity::Floor => (0, spec.max_nodes),
            Capacity::AlwaysOn => (1, spec.max_nodes.max(1)),
            Capacity::Fixed | Capacity::Size => (1, cap.max(1)),
        }
    }

    fn get(self, spec: &PoolSpec) -> u32 {
        match (self, &spec.strategy) {
            (Capacity::Size, StrategyConfig::StoppedPool(p)) => p.size,
            // Warm only in busy hours (one period): the floor is the
            // period's spare slots.
            (Capacity::Floor, _) if spec.schedule.len() == 1 => spec.schedule[0].spec().min_idle,
            _ => spec.min_nodes,
        }
    }

    fn set(self, spec: &mut PoolSpec, c: u32) {
        match self {
            Capacity::Floor if spec.schedule.len() == 1 => {
                let c = c.min(spec.max_nodes);
                let mut period = spec.schedule[0].spec().clone();
                period.min_idle = c;
                if let Ok(p) = SchedulePeriod::new(period) {
                    spec.schedule = vec![p];
                }
            }
            Capacity::Floor | Capacity::AlwaysOn => spec.min_nodes = c.min(spec.max_nodes),
            Capacity::Fixed => {
                spec.min_nodes = c;
                spec.max_nodes = c;
            }
            Capacity::Size => {
                if let StrategyConfig::StoppedPool(p) = &mut spec.strategy {
                    p.size = c;
                }
                spec.min_nodes = 0;
                spec.max_nodes = c;
            }
        }
    }
}

/// The input's setting written the way the search varies it, doing the
/// same: always-on counts and pool sizes as `min_nodes`/`max_nodes`/`size`
/// the strategy would reach anyway, default types named.
fn normalize(s: &Scenario, mut spec: PoolSpec, axis: Capacity) -> PoolSpec {
    let always_on = spec.min_nodes.max(1).min(spec.max_nodes);
    match (axis, &spec.strategy) {
        (Capacity::Floor, _) => {}
        (Capacity::AlwaysOn, _) => spec.min_nodes = always_on,
        (Capacity::Size, StrategyConfig::StoppedPool(p)) => {
            let target = p.size.max(spec.min_nodes).min(spec.max_nodes);
            axis.set(&mut spec, target.max(1));
        }
        _ => axis.set(&mut spec, always_on),
    }
    let types = &s.pool.instance_types;
    let first = types.first().cloned();
    match &mut spec.strategy {
        StrategyConfig::AlwaysOnResize(a) => {
            a.baseline = a.baseline.clone().or(first);
            a.peak = a.peak.clone().or_else(|| largest(s));
        }
        StrategyConfig::Hybrid(h) => h.baseline = h.baseline.clone().or(first),
        _ => {}
    }
    spec
}

/// The pool's type with the most cpus, then memory (the first of equals):
/// always_on_resize's default peak.
fn largest(s: &Scenario) -> Option<InstanceType> {
    let mut best: Option<(u32, u64, &InstanceType)> = None;
    for t in &s.pool.instance_types {
        if let Some(o) = s.book.offerings.iter().find(|o| &o.instance_type == t)
            && best.is_none_or(|(c, m, _)| (o.cpus, o.memory_mb) > (c, m))
        {
            best = Some((o.cpus, o.memory_mb, t));
        }
    }
    best.map(|(_, _, t)| t.clone())
}

/// One value of one shape dimension.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Knob {
    /// The idle timeout (hybrid: of overflow nodes).
    IdleTimeout(Millis),
    SnapshotRefresh(Millis),
    StopAfterIdle(Millis),
    ScaleDownAfter(Millis),
    OnDemandFallback(bool),
    /// Lowering it lowers `min_nodes` with it.
    MaxNodes(u32),
    Baseline(InstanceType),
    BaselinePeak(InstanceType, InstanceType),
    /// Warm nodes all week (`min_nodes`), or only while this period is in
    /// force (its `min_idle`); the warm count carries over.
    Warm(Option<SchedulePeriod>),
}

impl Knob {
    fn apply(&self, spec: &mut PoolSpec) {
        match (self, &mut spec.strategy) {
            (Knob::IdleTimeout(ms), StrategyConfig::ColdImage(c)) => c.idle_timeout_ms = *ms,
            (Knob::IdleTimeout(ms), StrategyConfig::ColdSnapshot(c)) => c.idle_timeout_ms = *ms,
            (Knob::IdleTimeout(ms), StrategyConfig::Spot(c)) => c.idle_timeout_ms = *ms,
            (Knob::IdleTimeout(ms), StrategyConfig::Hybrid(c)) => {
                c.overflow_idle_timeout_ms = *ms;
            }
            (Knob::SnapshotRefresh(ms), StrategyConfig::ColdSnapshot(c)) => {
                c.snapshot_refresh_ms = *ms;
            }
            (Knob::StopAfterIdle(ms), StrategyConfig::StoppedPool(c)) => {
                c.stop_after_idle_ms = *ms;
            }
            (Knob::ScaleDownAfter(ms), StrategyConfig::AlwaysOnResize(c)) => {
                c.scale_down_after_ms = *ms;
            }
            (Knob::OnDemandFallback(on), StrategyConfig::Spot(c)) => c.on_demand_fallback = *on,
            (Knob::MaxNodes(n), _) => {
                spec.max_nodes = *n;
                spec.min_nodes = spec.min_nodes.min(*n);
            }
            (Knob::Baseline(t), StrategyConfig::Hybrid(c)) => c.baseline = Some(t.clone()),
            (Knob::BaselinePeak(b, p), StrategyConfig::AlwaysOnResize(c)) => {
                c.baseline = Some(b.clone());
                c.peak = Some(p.clone());
            }
            (Knob::Warm(period), _) => {
                let warm = Capacity::Floor.get(spec);
                spec.schedule.clear();
                spec.min_nodes = 0;
                if let Some(p) = period {
                    spec.schedule.push(p.clone());
                }
                Capacity::Floor.set(spec, warm);
            }
            // A knob of another strategy: nothing to turn.
            _ => {}
        }
    }
}

/// The shape dimensions of `spec`'s strategy (those with two values or
/// more).
fn dimensions(s: &Scenario, spec: &PoolSpec) -> Vec<Vec<Knob>> {
    let idle = || IDLE_TIMEOUTS_MS.map(Knob::IdleTimeout).to_vec();
    let cap = s.pool.max_nodes.max(1);
    let mut max_nodes: Vec<u32> = vec![cap.div_ceil(4), cap.div_ceil(2), cap];
    max_nodes.dedup();
    let max_nodes: Vec<Knob> = max_nodes.into_iter().map(Knob::MaxNodes).collect();
    let size = |t: &InstanceType| {
        s.book
            .offerings
            .iter()
            .find(|o| &o.instance_type == t)
            .map_or((0, 0), |o| (o.cpus, o.memory_mb))
    };
    let types = &s.pool.instance_types;
    // Warm nodes all week or in busy hours only, where the forecast has
    // quiet hours and the input sets no schedule of its own.
    let mut warm = vec![Knob::Warm(None)];
    if s.pool.schedule.is_empty() {
        for share in BUSY_SHARES {
            let knob = Knob::Warm(busy_hours(s, share));
            if !warm.contains(&knob) {
                warm.push(knob);
            }
        }
    }
    // Warm hours first: spare nodes need room under max_nodes, which a
    // pool tuned all-week warm may have lost in the same pass.
    let dims = match &spec.strategy {
        StrategyConfig::ColdImage(_) => vec![warm, idle(), max_nodes],
        StrategyConfig::ColdSnapshot(_) => vec![
            warm,
            idle(),
            max_nodes,
            SNAPSHOT_REFRESH_MS.map(Knob::SnapshotRefresh).to_vec(),
        ],
        StrategyConfig::Spot(_) => vec![
            warm,
            idle(),
            max_nodes,
            vec![Knob::OnDemandFallback(true), Knob::OnDemandFallback(false)],
        ],
        StrategyConfig::Hybrid(_) => vec![
            idle(),
            max_nodes,
            types.iter().cloned().map(Knob::Baseline).collect(),
        ],
        StrategyConfig::AlwaysOnResize(_) => vec![
            types
                .iter()
                .flat_map(|b| {
                    types
                        .iter()
                        .filter(|p| size(p) >= size(b))
                        .map(|p| Knob::BaselinePeak(b.clone(), p.clone()))
                })
                .collect(),
            SCALE_DOWN_AFTER_MS.map(Knob::ScaleDownAfter).to_vec(),
        ],
        StrategyConfig::StoppedPool(_) => {
            vec![STOP_AFTER_IDLE_MS.map(Knob::StopAfterIdle).to_vec()]
        }
        _ => Vec::new(),
    };
    dims.into_iter().filter(|d| d.len() > 1).collect()
}

/// The forecast's busy hours as a schedule period, if it has quiet ones:
/// the hours of the day whose rate is at least `share` of the busiest
/// hour's, on the days whose rate is at least `share` of the busiest
/// day's (simulated time is UTC and starts on a Monday, so the period
/// reads in UTC). Only a profile forecast with an hour-of-day shape has
/// them.
pub fn busy_hours(s: &Scenario, share: f64) -> Option<SchedulePeriod> {
    let Forecast::Profile(p) = &s.input.forecast else {
        return None;
    };
    let busy = |shape: &[f64]| -> Vec<usize> {
        let peak = shape.iter().copied().fold(0.0, f64::max);
        (0..shape.len())
            .filter(|&i| peak > 0.0 && shape[i] >= peak * share)
            .collect()
    };
    let hours = busy(p.hour_of_day.as_deref()?);
    if hours.is_empty() || hours.len() == 24 {
        return None;
    }
    let days = p.day_of_week.as_deref().map_or((0..7).collect(), busy);
    const NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let day_field = if days.len() == 7 {
        "*".to_owned()
    } else {
        days.iter()
            .filter_map(|&d| NAMES.get(d))
            .copied()
            .collect::<Vec<_>>()
            .join(",")
    };
    SchedulePeriod::new(PeriodSpec {
        periods: vec![format!("* {} * * {day_field}", ranges(&hours))],
        timezone: "UTC".to_owned(),
        min_idle: 0,
        scale_factor: ScaleFactor::default(),
        scale_factor_limit: None,
        idle_time_ms: None,
    })
    .ok()
}

/// Sorted hours as a cron field: runs of consecutive hours as `a-b`.
fn ranges(hours: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < hours.len() {
        let start = hours[i];
        let mut end = start;
        while i + 1 < hours.len() && hours[i + 1] == end + 1 {
            i += 1;
            end = hours[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    parts.join(",")
}

/// `spec` as a `[[pool]]` table of `daemon.toml`, fields in the order
/// [`PoolSpec`] declares them, defaults written out too (the block says
/// exactly what runs).
pub fn pool_toml(spec: &PoolSpec) -> Result<String, SimError> {
    #[derive(Serialize)]
    struct File<'a> {
        pool: [&'a PoolSpec; 1],
    }
    let text =
        toml::to_string(&File { pool: [spec] }).map_err(|e| SimError::Encode(e.to_string()))?;
    if !spec.labels.is_empty() {
        return Ok(text);
    }
    // An empty map is written as a bare `[pool.labels]` header; a missing
    // `labels` reads as empty, so the noise goes.
    let kept: Vec<&str> = text.lines().filter(|l| *l != "[pool.labels]").collect();
    Ok(format!("{}\n", kept.join("\n").trim_end()))
}

fn secs(ms: Millis) -> String {
    format!("{:.1}", ms as f64 / 1000.0)
}

fn verdict(o: &Outcome) -> &'static str {
    if o.meets_sla { "meets" } else { "misses" }
}

/// The tuned strategies in rank order.
fn ranked(t: &Tuning) -> Vec<&Tuned> {
    t.result
        .ranking
        .iter()
        .filter_map(|r| t.tuned.iter().find(|x| x.id == r.strategy))
        .collect()
}

/// The winner's block with a comment saying what it is (what `--tune`
/// prints), or `None` without strategies.
pub fn winner_toml(t: &Tuning) -> Result<Option<String>, SimError> {
    let Some(w) = ranked(t).first().copied() else {
        return Ok(None);
    };
    let sla = &t.result.scenario.sla;
    let head = if w.outcome.meets_sla {
        "The cheapest tuned strategy that meets the SLA"
    } else {
        "No tuned strategy meets the SLA; this one waits least"
    };
    Ok(Some(format!(
        "# fleet-sim --tune (seed {}, {} h, SLA p{} wait <= {} s).\n\
         # {head}: {}, {} over the horizon, p{} wait {} s.\n{}",
        t.result.scenario.seed,
        t.result.scenario.horizon_hours,
        sla.percentile,
        sla.max_wait_s,
        w.id,
        w.outcome.total(),
        sla.percentile,
        secs(w.outcome.sla_wait_ms),
        pool_toml(&w.pool)?
    )))
}

/// What `--pool-out` writes: the winner's block, then every other tuned
/// strategy's block commented out, in rank order.
pub fn daemon_toml(t: &Tuning) -> Result<String, SimError> {
    let mut out = winner_toml(t)?.unwrap_or_default();
    let pct = t.result.scenario.sla.percentile;
    for (i, x) in ranked(t).iter().enumerate().skip(1) {
        out.push_str(&format!(
            "\n# {}. {}: {}, p{pct} wait {} s ({} the SLA).\n",
            i + 1,
            x.id,
            x.outcome.total(),
            secs(x.outcome.sla_wait_ms),
            verdict(&x.outcome)
        ));
        for line in pool_toml(&x.pool)?.lines() {
            out.push_str(if line.is_empty() { "#" } else { "# " });
            out.push_str(line);
            out.push('\n');
        }
    }
    Ok(out)
}

/// The tuned setting in one line: node bounds, then the strategy's
/// parameters as in the config.
fn setting(p: &PoolSpec) -> String {
    let mut words = vec![format!("nodes {}..{}", p.min_nodes, p.max_nodes)];
    if let Ok(serde_json::Value::Object(m)) = serde_json::to_value(&p.strategy) {
        for (k, v) in m {
            match v {
                serde_json::Value::Null => {}
                _ if k == "kind" => {}
                serde_json::Value::String(s) => words.push(format!("{k}={s}")),
                other => words.push(format!("{k}={other}")),
            }
        }
    }
    for period in &p.schedule {
        let s = period.spec();
        words.push(format!(
            "min_idle={} in \"{}\" {}",
            s.min_idle,
            s.periods.join("\", \""),
            s.timezone
        ));
    }
    words.join(" ")
}

/// The ranked table `--tune` prints (the winner's block follows it).
pub fn table(t: &Tuning) -> String {
    let sc = &t.result.scenario;
    let pct = sc.sla.percentile;
    let mut out = format!(
        "tuned {} strategies for SLA p{pct} wait <= {} s over {} h (seed {}, {} arrivals): {} runs\n\n",
        t.tuned.len(),
        sc.sla.max_wait_s,
        sc.horizon_hours,
        sc.seed,
        sc.arrivals,
        t.evaluations,
    );
    let wait = format!("p{pct} s");
    out.push_str(&format!(
        "{:>4}  {:<18} {:>9} {:>9}  {:<6}  {:>9} {:>9}  {:>4}  setting\n",
        "rank", "strategy", "total $", wait, "SLA", "untuned $", wait, "runs"
    ));
    for (i, x) in ranked(t).iter().enumerate() {
        out.push_str(&format!(
            "{:>4}  {:<18} {:>9.2} {:>9}  {:<6}  {:>9.2} {:>9}  {:>4}  {}\n",
            i + 1,
            x.id,
            x.outcome.total_micros as f64 / 1e6,
            secs(x.outcome.sla_wait_ms),
            if x.outcome.meets_sla { "met" } else { "MISSED" },
            x.untuned.total_micros as f64 / 1e6,
            secs(x.untuned.sla_wait_ms),
            x.evaluations,
            setting(&x.pool),
        ));
    }
    out
}

/// The tuning as pretty JSON with a trailing newline (what `--out` writes
/// with `--tune`).
pub fn to_json(t: &Tuning) -> String {
    let mut s =
        serde_json::to_string_pretty(t).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A day of steady jobs with bursts, on a pool of up to 6 nodes: small
    /// enough to tune in a debug build.
    fn scenario(strategies: serde_json::Value) -> Scenario {
        let input = serde_json::json!({
            "horizon_hours": 24,
            "seed": 7,
            "forecast": { "profile": {
                "rate_per_hour": 6,
                "spikes": { "per_week": 14, "duration_minutes": 30, "rate_per_hour": 30 }
            } },
            "jobs": { "duration": { "kind": "fixed", "ms": 600000 } },
            "pool": { "name": "ci", "instance_types": ["c7i.large", "c7i.xlarge"], "max_nodes": 6 },
            "provider": { "price_book": "aws" },
            "sla": { "percentile": 90, "max_wait_ms": 120000 },
            "strategies": strategies,
        });
        crate::input::parse(input.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn all_six() -> Scenario {
        scenario(
            serde_json::to_value(StrategyConfig::all_defaults()).unwrap_or_else(|e| panic!("{e}")),
        )
    }

    #[test]
    fn the_same_seed_gives_the_same_tuning_on_any_number_of_threads() {
        let s = all_six();
        let one = tune(&s, 1, None).unwrap_or_else(|e| panic!("{e}"));
        let two = tune(&s, 2, None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(to_json(&one), to_json(&two));
        assert_eq!(
            daemon_toml(&one).unwrap_or_else(|e| panic!("{e}")),
            daemon_toml(&two).unwrap_or_else(|e| panic!("{e}"))
        );
        assert_eq!(one.tuned.len(), 6);
        assert_eq!(one.result.ranking.len(), 6);
    }

    #[test]
    fn busy_hours_are_the_forecasts_busy_hours_and_days() {
        let s = crate::input::parse(
            serde_json::json!({
                "horizon_hours": 24,
                "forecast": { "profile": {
                    "rate_per_hour": 10,
                    "hour_of_day": [0,0,0,0,0,0,0,0.3,0.8,1,1,1,0.7,1,1,1,0.8,0.4,0.1,0,0,0,0,0],
                    "day_of_week": [1,1,1,1,1,0.1,0]
                } },
                "provider": { "price_book": "aws" },
                "sla": { "max_wait_ms": 60000 }
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let cron = |share| busy_hours(&s, share).map(|p| p.spec().periods.clone());
        assert_eq!(
            cron(0.5),
            Some(vec!["* 8-16 * * mon,tue,wed,thu,fri".to_owned()])
        );
        assert_eq!(
            cron(0.2),
            Some(vec!["* 7-17 * * mon,tue,wed,thu,fri".to_owned()])
        );
        assert_eq!(
            cron(0.05),
            Some(vec!["* 7-18 * * mon,tue,wed,thu,fri,sat".to_owned()])
        );
        assert_eq!(ranges(&[1, 2, 3, 7, 9, 10]), "1-3,7,9-10");
        // A flat day has no quiet hours to leave cold.
        assert!(busy_hours(&all_six(), 0.5).is_none());
    }

    #[test]
    fn a_stopped_pool_too_small_for_the_sla_is_sized_up_until_it_meets_it() {
        let s = scenario(serde_json::json!([{ "kind": "stopped_pool", "size": 1 }]));
        let t = tune(&s, 2, None).unwrap_or_else(|e| panic!("{e}"));
        let tuned = &t.tuned[0];
        assert!(!tuned.untuned.meets_sla, "{tuned:?}");
        assert!(tuned.outcome.meets_sla, "{tuned:?}");
        let StrategyConfig::StoppedPool(p) = &tuned.pool.strategy else {
            panic!("{tuned:?}");
        };
        assert!(p.size > 1, "{tuned:?}");
        assert_eq!(tuned.pool.max_nodes, p.size);
        assert!(tuned.outcome.sla_wait_ms <= s.input.sla.max_wait_ms);
        assert_eq!(
            t.result.ranking[0].reason,
            "cheapest tuned strategy that meets the SLA"
        );
    }

    /// The search's result is the best of everything it ran: no candidate
    /// it ran meets the SLA for less, and if it misses the SLA, nothing it
    /// ran met it or waited less.
    #[test]
    fn tuning_never_keeps_a_costlier_setting_than_one_it_ran() {
        let s = all_six();
        let arrivals = forecast::arrivals(&s);
        let gate = Gate::new(2);
        for strategy in &s.input.strategies {
            let search = Search::new(&s, &arrivals, &gate, None, strategy);
            let found = search.run().unwrap_or_else(|e| panic!("{e}"));
            let best = found.best.outcome_summary;
            assert!(found.evaluated.len() > 1, "{}", strategy.name());
            for e in &found.evaluated {
                let o = e.outcome_summary;
                assert_ne!(
                    o.order(&best),
                    Ordering::Less,
                    "{} beats {}",
                    e.key,
                    found.best.key
                );
                if o.meets_sla {
                    assert!(
                        best.meets_sla && best.total_micros <= o.total_micros,
                        "{}",
                        e.key
                    );
                } else if !best.meets_sla {
                    assert!(best.sla_wait_ms <= o.sla_wait_ms, "{}", e.key);
                }
            }
        }
    }

    #[test]
    fn the_untuned_run_is_the_plain_simulation_of_the_input() {
        let s = scenario(
            serde_json::json!([{ "kind": "hybrid" }, { "kind": "stopped_pool", "size": 1 }]),
        );
        let plain = crate::simulate(&s, 2, None).unwrap_or_else(|e| panic!("{e}"));
        let t = tune(&s, 2, None).unwrap_or_else(|e| panic!("{e}"));
        for (tuned, run) in t.tuned.iter().zip(&plain.strategies) {
            assert_eq!(
                tuned.untuned.total_micros, run.cost.total_micros,
                "{}",
                run.id
            );
            assert_eq!(tuned.untuned.meets_sla, run.sla.met, "{}", run.id);
            assert!(
                tuned.outcome.order(&tuned.untuned) != Ordering::Greater,
                "{}",
                run.id
            );
        }
    }

    proptest::proptest! {
        /// On a monotone predicate (false below `threshold`, true from
        /// it), the search finds the threshold from any start, within
        /// about twice log2 of the range in probes.
        #[test]
        fn smallest_finds_the_threshold_of_a_monotone_predicate(
            lo in 0u32..20,
            span in 0u32..200,
            start in 0u32..250,
            above in 0u32..210,
        ) {
            let hi = lo + span;
            let threshold = lo + above;
            let mut probes = 0u32;
            let mut meets = |c: u32| -> Result<bool, ()> {
                probes += 1;
                Ok(c >= threshold)
            };
            let found = smallest(lo, hi, start, &mut meets);
            let want = (threshold <= hi).then_some(threshold);
            proptest::prop_assert_eq!(found, Ok(want));
            let bound = 2 * (32 - (span + 1).leading_zeros()) + 2;
            proptest::prop_assert!(probes <= bound, "{} probes, bound {}", probes, bound);
        }
    }

    #[test]
    fn a_run_that_panics_gives_its_permit_back() {
        let gate = Gate::new(1);
        let run = std::panic::AssertUnwindSafe(|| gate.run(|| panic!("a run's bug")));
        assert!(std::panic::catch_unwind(run).is_err());
        assert_eq!(gate.run(|| 7), 7);
    }

    #[test]
    fn a_pool_block_reads_back_as_the_same_pool() {
        #[derive(serde::Deserialize)]
        struct File {
            pool: Vec<PoolSpec>,
        }
        let s = all_six();
        for strategy in &s.input.strategies {
            let mut spec = normalize(&s, s.pool.clone(), Capacity::of(strategy));
            spec.strategy = strategy.clone();
            for labels in [
                BTreeMap::new(),
                BTreeMap::from([("team".to_owned(), "ci".to_owned())]),
            ] {
                spec.labels = labels;
                let text = pool_toml(&spec).unwrap_or_else(|e| panic!("{e}"));
                assert!(text.starts_with("[[pool]]\nname = \"ci\"\n"), "{text}");
                assert_eq!(
                    text.contains("[pool.labels]"),
                    !spec.labels.is_empty(),
                    "{text}"
                );
                let back: File = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
                assert_eq!(back.pool, [spec.clone()], "{text}");
            }
        }
    }
}
