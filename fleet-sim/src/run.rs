//! Running one strategy: the real controller and strategy in a
//! [`World`] under virtual time, fed the forecast's arrivals.
//!
//! The simulated caller requests a claim at each arrival and holds the node
//! for the job's duration once granted. A claim revoked under it (a spot
//! interruption) is requested again at once under a new claim id and the
//! job starts over; its wait counts from the first request. Spot nodes are
//! interrupted at a rate drawn per simulated day from the price book's band
//! (a Poisson process over running spot node-time).
//!
//! Costs are counted to the horizon or until the last job finished,
//! whichever is later (at most [`MAX_DRAIN_MS`] past the horizon).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use fleet_core::billing::BootPath;
use fleet_core::controller::{AffinityStats, ControllerConfig, PoolCost, Timing};
use fleet_core::harness::World;
use fleet_core::ids::Millis;
use fleet_core::money::Money;
use fleet_core::protocol::ClaimRequest;
use fleet_core::provider::{InstanceState, Market, Offering};
use fleet_core::schedule::Capacity;
use fleet_core::strategy::{PoolSpec, PoolView, StrategyConfig, StrategyInfo};
use fleet_core::{AffinityKey, ClaimId, Epoch, FleetId, NodeId, Workspace};

use crate::error::SimError;
use crate::forecast::Arrivals;
use crate::input::Scenario;
use crate::rng::Rng;

/// The virtual clock's start: 2024-01-01T00:00Z, a Monday.
pub const START_MS: Millis = 1_704_067_200_000;
/// How long after the horizon the last jobs may take to finish.
pub const MAX_DRAIN_MS: Millis = 48 * HOUR;
/// Points of the cost-over-time series (about).
pub const SERIES_POINTS: u64 = 100;

const HOUR: Millis = 3_600_000;
const DAY: Millis = 24 * HOUR;
/// After an interruption the caller watches its claims this closely, so a
/// revoked job is requested again within a second.
const WATCH_MS: Millis = 1_000;
const WATCH_FOR_MS: Millis = 180_000;

/// What one strategy did over the forecast.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// The strategy.
    pub strategy: StrategyConfig,
    /// How it describes itself in this pool (before anything ran).
    pub info: StrategyInfo,
    /// The pool's bill and counters at the end.
    pub cost: PoolCost,
    /// Milliseconds from the start to the end of accounting.
    pub end_ms: Millis,
    /// Wait of every job, request to grant, sorted; a job never served
    /// counts with its wait so far.
    pub waits_ms: Vec<Millis>,
    /// Jobs that arrived.
    pub arrived: u64,
    /// Jobs that ran to completion.
    pub served: u64,
    /// Jobs still waiting or running when accounting ended.
    pub unserved: u64,
    /// Claims requested again after a revocation.
    pub requeues: u64,
    /// Spot interruptions the simulated provider sent.
    pub interruptions_sent: u64,
    /// Create calls the simulated provider refused for capacity.
    pub capacity_errors: u64,
    /// Node-milliseconds jobs held nodes.
    pub busy_ms: u64,
    /// Cost so far at regular times: (ms from start, total).
    pub series: Vec<(Millis, Money)>,
    /// Controller events handled.
    pub steps: u64,
    /// Decision rounds the controller ran (events arriving together share
    /// one).
    pub rounds: u64,
    /// Grants of claims that named an affinity key: on a node that last
    /// served the key, or not.
    pub affinity: AffinityStats,
    /// Wall-clock time the run took (`--bench` prints it; no report holds
    /// it, since it differs from run to run).
    pub wall: std::time::Duration,
}

struct Active {
    job: usize,
    claim: ClaimId,
    first_at: Millis,
    attempt: u32,
}

/// Runs every strategy of `s` over `arrivals`, on up to `threads` threads;
/// results in the input's order. `progress` (if any) holds one counter per
/// strategy, advanced to 1000 as its simulated time passes.
pub fn run_all(
    s: &Scenario,
    arrivals: &Arrivals,
    threads: usize,
    progress: Option<&[AtomicU64]>,
) -> Result<Vec<RunOutcome>, SimError> {
    let n = s.input.strategies.len();
    let next = AtomicUsize::new(0);
    let mut results: Vec<Option<Result<RunOutcome, SimError>>> = (0..n).map(|_| None).collect();
    let workers = threads.clamp(1, n.max(1));
    let done: Vec<Vec<(usize, Result<RunOutcome, SimError>)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(strategy) = s.input.strategies.get(i) else {
                            break;
                        };
                        let p = progress.and_then(|p| p.get(i));
                        mine.push((i, run_one(s, arrivals, strategy, p)));
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    vec![(
                        usize::MAX,
                        Err(SimError::Run {
                            strategy: "?".to_owned(),
                            message: "a simulation thread panicked".to_owned(),
                        }),
                    )]
                })
            })
            .collect()
    });
    for (i, r) in done.into_iter().flatten() {
        match results.get_mut(i) {
            Some(slot) => *slot = Some(r),
            None => r.map(|_| ())?,
        }
    }
    results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                Err(SimError::Run {
                    strategy: "?".to_owned(),
                    message: "a strategy was not run".to_owned(),
                })
            })
        })
        .collect()
}

/// The strategy's self-description in the scenario's pool.
pub fn describe(s: &Scenario, strategy: &StrategyConfig) -> StrategyInfo {
    describe_pool(s, &with_strategy(s, strategy))
}

/// The scenario's pool running `strategy`.
fn with_strategy(s: &Scenario, strategy: &StrategyConfig) -> PoolSpec {
    let mut pool = s.pool.clone();
    pool.strategy = strategy.clone();
    pool
}

/// How `spec`'s strategy describes itself in `spec` (a pool of the
/// scenario's price book).
pub fn describe_pool(s: &Scenario, spec: &PoolSpec) -> StrategyInfo {
    let strategy = &spec.strategy;
    let offerings: Vec<_> = spec
        .instance_types
        .iter()
        .filter_map(|t| s.book.offerings.iter().find(|o| &o.instance_type == t))
        .cloned()
        .collect();
    let view = PoolView {
        spec,
        nodes: &[],
        pending: &[],
        offerings: &offerings,
        capabilities: &s.book.capabilities,
        billing: &s.book.billing,
        snapshot: None,
        // The strategy as configured, before any schedule period.
        capacity: Capacity::default(),
    };
    strategy.build().describe(&view)
}

fn fail(strategy: &StrategyConfig, message: impl Into<String>) -> SimError {
    SimError::Run {
        strategy: strategy.name().to_owned(),
        message: message.into(),
    }
}

/// Runs one strategy in the scenario's pool.
pub fn run_one(
    s: &Scenario,
    arrivals: &Arrivals,
    strategy: &StrategyConfig,
    progress: Option<&AtomicU64>,
) -> Result<RunOutcome, SimError> {
    run_pool(s, arrivals, &with_strategy(s, strategy), progress)
}

/// Runs `spec` (its strategy, and its own `min_nodes`, `max_nodes`… in
/// place of the scenario's) over `arrivals`: what [`crate::tune`] varies.
/// `spec` must be valid ([`PoolSpec::validate`]) and name types of the
/// scenario's price book.
pub fn run_pool(
    s: &Scenario,
    arrivals: &Arrivals,
    spec: &PoolSpec,
    progress: Option<&AtomicU64>,
) -> Result<RunOutcome, SimError> {
    let started = std::time::Instant::now();
    let strategy = &spec.strategy;
    let pool: PoolSpec = own_copy(spec).map_err(|e| fail(strategy, e))?;
    let offerings: Vec<Offering> = own_copy(&s.book.offerings).map_err(|e| fail(strategy, e))?;
    let pool_name = pool.name.clone();
    let affinity_keys: Vec<AffinityKey> =
        own_copy(&arrivals.affinity).map_err(|e| fail(strategy, e))?;
    let info = describe_pool(s, spec);
    let seed = s.input.seed;
    let config = ControllerConfig {
        pools: vec![pool],
        quotas: BTreeMap::new(),
        offerings,
        capabilities: s.book.capabilities.clone(),
        billing: s.book.billing.clone(),
        epoch: Epoch(1),
        namespace: "sim".to_owned(),
        // One fleet per run: a fixed identity keeps node ids stable.
        fleet_id: FleetId::new("sim").map_err(|e| fail(strategy, e.to_string()))?,
        timing: Timing {
            // No heartbeats are simulated: nodes must never time out.
            heartbeat_timeout_ms: s.horizon_ms + MAX_DRAIN_MS + 7 * DAY,
            // No caller retries a request here, so ended claims need not be
            // kept an hour to answer one; every controller step scans the
            // claims it keeps.
            claim_retention_ms: 60_000,
            ..Timing::default()
        },
    };
    let start = START_MS;
    let mut world = World::new(config, start, false);
    world.set_lean(true);
    // Nobody reads a simulated year's decisions: keep none.
    world.keep_history(false);
    // Same seed for every strategy: they see the same boot-time draws in order.
    world.set_boot_jitter(s.book.boot_spread, Rng::new(seed, 5).next_u64());
    world.set_capacity_errors(
        s.book.capacity_errors_per_million,
        Rng::new(seed, 8).next_u64(),
    );
    let workspace = Workspace::new("sim").map_err(|e| fail(strategy, e.to_string()))?;

    let step = s.input.step_ms;
    let horizon_end = start + s.horizon_ms;
    let drain_cap = horizon_end + MAX_DRAIN_MS;
    let sample_every = (s.horizon_ms / SERIES_POINTS).div_ceil(HOUR).max(1) * HOUR;
    let jobs = &arrivals.jobs;
    let band = s.book.spot_interruptions_per_1000h;

    let mut out = RunOutcome {
        strategy: strategy.clone(),
        info,
        cost: PoolCost::default(),
        end_ms: 0,
        waits_ms: Vec::with_capacity(jobs.len()),
        arrived: jobs.len() as u64,
        served: 0,
        unserved: 0,
        requeues: 0,
        interruptions_sent: 0,
        capacity_errors: 0,
        busy_ms: 0,
        series: vec![(0, Money::ZERO)],
        steps: 0,
        rounds: 0,
        affinity: AffinityStats::default(),
        wall: std::time::Duration::ZERO,
    };
    let mut next_job = 0usize;
    let mut next_sample = start + sample_every;
    let mut active: Vec<Active> = Vec::new();
    let mut picker = Rng::new(seed, 7);
    let mut hazard = 0.0f64;
    let mut threshold = picker.exp1();
    let mut interrupted: BTreeSet<NodeId> = BTreeSet::new();
    let mut watch_until: Millis = 0;
    let mut day_rate: (u64, f64) = (u64::MAX, 0.0);

    let submit = |world: &mut World, a: &Active| -> Result<(), SimError> {
        let job = &jobs[a.job];
        let req = ClaimRequest {
            claim_id: a.claim.clone(),
            workspace: workspace.clone(),
            pool: pool_name.clone(),
            requirements: arrivals
                .requirements
                .get(job.requirements)
                .cloned()
                .unwrap_or_default(),
            priority: 0,
            lease_ttl_ms: job.duration_ms + HOUR,
            max_wait_ms: None,
            recipient: None,
            affinity: job.affinity.and_then(|i| affinity_keys.get(i)).cloned(),
        };
        world.claim_for(req, job.duration_ms);
        Ok(())
    };

    loop {
        let now = world.now();
        while let Some(job) = jobs.get(next_job)
            && start + job.at_ms <= now
        {
            let claim =
                ClaimId::new(format!("j{next_job}")).map_err(|e| fail(strategy, e.to_string()))?;
            let a = Active {
                job: next_job,
                claim,
                first_at: now,
                attempt: 0,
            };
            submit(&mut world, &a)?;
            active.push(a);
            next_job += 1;
        }
        while next_sample <= now && next_sample <= horizon_end {
            out.series.push((
                next_sample - start,
                pool_total(&world, &pool_name, next_sample),
            ));
            next_sample += sample_every;
        }
        let drained = next_job >= jobs.len() && now >= horizon_end && active.is_empty();
        if drained || now >= drain_cap {
            break;
        }

        // Where to stop next: the next arrival or sample, the horizon, and
        // every step while spot nodes run or jobs drain.
        let spot: Vec<NodeId> = world
            .instances()
            .values()
            .filter(|i| i.market == Market::Spot && i.state == InstanceState::Running)
            .map(|i| i.node.clone())
            .collect();
        let mut target = drain_cap;
        if next_sample <= horizon_end {
            target = target.min(next_sample);
        }
        match jobs.get(next_job) {
            Some(job) => target = target.min(start + job.at_ms),
            None if now < horizon_end => target = target.min(horizon_end),
            None => target = target.min(now + step),
        }
        if !spot.is_empty() {
            target = target.min(now + step);
        }
        if now < watch_until {
            target = target.min(now + WATCH_MS);
        }
        let target = target.max(now + 1);
        world.run_until(target).map_err(|e| fail(strategy, e))?;

        // Spot interruptions over [now, target]: hazard accrues with the spot
        // nodes that were running; each crossing of an Exp(1) threshold
        // interrupts one running spot node.
        if !spot.is_empty() && band[1] > 0.0 {
            let day = (now - start) / DAY;
            if day_rate.0 != day {
                let u = Rng::new(seed ^ day.wrapping_mul(0x9E37_79B9), 6).unit();
                day_rate = (day, band[0] + (band[1] - band[0]) * u);
            }
            let hours = (target - now) as f64 / HOUR as f64;
            hazard += spot.len() as f64 * hours * day_rate.1 / 1000.0;
            while hazard >= threshold {
                hazard -= threshold;
                threshold = picker.exp1();
                interrupted.retain(|n| world.instances().contains_key(n));
                let candidates: Vec<NodeId> = world
                    .instances()
                    .values()
                    .filter(|i| {
                        i.market == Market::Spot
                            && i.state == InstanceState::Running
                            && !interrupted.contains(&i.node)
                    })
                    .map(|i| i.node.clone())
                    .collect();
                let pick = picker.below(candidates.len() as u64) as usize;
                if let Some(node) = candidates.get(pick) {
                    world.interrupt(node);
                    interrupted.insert(node.clone());
                    out.interruptions_sent += 1;
                    watch_until = world.now() + WATCH_FOR_MS;
                }
            }
        }

        // The callers: finished jobs leave, revoked ones ask again.
        let now = world.now();
        let mut i = 0;
        while i < active.len() {
            let a = &active[i];
            let (revoked, finished, held) = match world.traces().get(&a.claim) {
                Some(t) => match t.granted_at {
                    Some(g) if t.revoked => {
                        (true, false, t.ended_at.unwrap_or(now).saturating_sub(g))
                    }
                    Some(g) => (false, g + jobs[a.job].duration_ms <= now, 0),
                    None => (t.revoked, false, 0),
                },
                None => (false, false, 0),
            };
            if finished {
                let a = active.swap_remove(i);
                if let Some(t) = world.take_trace(&a.claim) {
                    let g = t.granted_at.unwrap_or(now);
                    out.waits_ms.push(g.saturating_sub(a.first_at));
                }
                out.busy_ms += jobs[a.job].duration_ms;
                out.served += 1;
                continue;
            }
            if revoked {
                out.busy_ms += held;
                out.requeues += 1;
                let old = active[i].claim.clone();
                world.take_trace(&old);
                let attempt = active[i].attempt + 1;
                let claim = ClaimId::new(format!("j{}-r{attempt}", active[i].job))
                    .map_err(|e| fail(strategy, e.to_string()))?;
                active[i].claim = claim;
                active[i].attempt = attempt;
                submit(&mut world, &active[i])?;
            }
            i += 1;
        }
        if let Some(p) = progress {
            let permille = ((world.now() - start) * 1000 / s.horizon_ms.max(1)).min(1000);
            p.store(permille, Ordering::Relaxed);
        }
    }
    let end = world.now().max(horizon_end);
    for a in &active {
        let waited = world
            .traces()
            .get(&a.claim)
            .and_then(|t| t.granted_at)
            .unwrap_or(end);
        out.waits_ms.push(waited.saturating_sub(a.first_at));
        out.unserved += 1;
    }
    out.waits_ms.sort_unstable();
    out.cost = world
        .controller()
        .costs(end)
        .pools
        .remove(&pool_name)
        .unwrap_or_default();
    out.end_ms = end - start;
    if out.series.last().is_none_or(|(t, _)| *t < out.end_ms) {
        out.series.push((out.end_ms, out.cost.total()));
    }
    out.steps = world.steps();
    out.rounds = world.rounds();
    out.affinity = world.controller().affinity_stats();
    out.capacity_errors = world.capacity_refusals();
    out.wall = started.elapsed();
    Ok(out)
}

/// A copy of `value` that shares no id with it. Ids are reference-counted
/// strings: a clone shares the count, and the controller clones pool names
/// and instance types on every round, so two runs on two threads cloning
/// the same ids fought over one cache line (each strategy ran ~8 % slower
/// beside another than alone). A round trip through JSON allocates each
/// id anew.
fn own_copy<T: serde::Serialize + serde::de::DeserializeOwned>(value: &T) -> Result<T, String> {
    serde_json::to_value(value)
        .and_then(serde_json::from_value)
        .map_err(|e| format!("copying the scenario for a run: {e}"))
}

fn pool_total(world: &World, pool: &fleet_core::PoolName, at: Millis) -> Money {
    world
        .controller()
        .costs(at)
        .pools
        .get(pool)
        .map_or(Money::ZERO, PoolCost::total)
}

/// Boots of `cost` keyed by source name.
pub fn boots_by_source(cost: &PoolCost) -> BTreeMap<String, u64> {
    cost.boots
        .iter()
        .map(|(path, n)| {
            let name = match path {
                BootPath::Image => "image",
                BootPath::Snapshot => "snapshot",
                BootPath::Stopped => "stopped",
                BootPath::Resize => "resize",
                _ => "other",
            };
            (name.to_owned(), *n)
        })
        .collect()
}
