//! A schedule: everything a seed decides before the world starts — the
//! pool and its strategy, what the callers ask for and when, and how hard
//! each fault hits. Rates are per mille of the events they apply to.

use std::collections::BTreeMap;
use std::fmt;

use fleet_core::ids::{InstanceType, Millis, PoolName};
use fleet_core::schedule::{PeriodSpec, ScaleFactor, SchedulePeriod};
use fleet_core::strategy::{
    AlwaysOnResize, ColdImage, ColdSnapshot, Hybrid, PoolSpec, Spot, StoppedPool, StrategyConfig,
};

use crate::rng::Rng;

/// One caller's claim: asked for at `at`, held `hold_ms` after the grant.
#[derive(Debug, Clone)]
pub struct ClaimScript {
    /// Claim id suffix (`c<n>`).
    pub n: u32,
    /// When it is asked for (ms after the start).
    pub at: Millis,
    /// How long the caller keeps the node.
    pub hold_ms: Millis,
    /// The lease it asks for.
    pub lease_ttl_ms: Millis,
    /// Its `max_wait_ms`.
    pub max_wait_ms: Option<Millis>,
    /// Whether it names a recipient (credentials are issued).
    pub sealed: bool,
    /// Whether it needs more CPUs than the pool's small type has (only the
    /// large type serves it: a resize or a larger node).
    pub large: bool,
    /// Its affinity key (`repo-<n>`), if it names one.
    pub affinity: Option<u32>,
}

/// One submitter's job: `sleep <secs>` on a node of the pool.
#[derive(Debug, Clone)]
pub struct JobScript {
    /// Job id suffix (`j<n>`).
    pub n: u32,
    /// When it is submitted.
    pub at: Millis,
    /// How long the command runs.
    pub run_secs: u64,
}

/// One submitter's run: tasks `r<n>-t<i>`, each `sleep <secs>`.
#[derive(Debug, Clone)]
pub struct RunScript {
    /// Run id suffix (`r<n>`).
    pub n: u32,
    /// When it is submitted.
    pub at: Millis,
    /// How long each task's command runs.
    pub tasks: Vec<u64>,
}

/// Fault rates of one schedule (per mille) and their shapes.
#[derive(Debug, Clone)]
pub struct Faults {
    /// Claim- and job-plane messages (both ways) lost.
    pub msg_loss: u32,
    /// Claim- and job-plane messages delivered twice.
    pub msg_dup: u32,
    /// Longest claim- and job-plane delay (reordering follows from it).
    pub msg_delay_ms: Millis,
    /// Agent-plane messages whose connection breaks under them.
    pub link_break: u32,
    /// Longest agent-plane delay (order within a connection is kept).
    pub link_delay_ms: Millis,
    /// Store calls failing before they apply.
    pub store_error: u32,
    /// Store writes applied and then reported failed (a timeout).
    pub store_error_after: u32,
    /// Longest store latency.
    pub store_latency_ms: Millis,
    /// Provider calls failing before they apply.
    pub provider_error: u32,
    /// Provider calls applied and then reported failed.
    pub provider_error_after: u32,
    /// Provider latency range.
    pub provider_latency_ms: (Millis, Millis),
    /// Credential issues failing.
    pub issue_error: u32,
    /// Crash before a store write applies / after it applied, unacknowledged.
    pub crash_store: (u32, u32),
    /// Crash before a provider call applies / after it returned, unrecorded.
    pub crash_provider: (u32, u32),
    /// Crashes at these times regardless of what runs.
    pub crash_at: Vec<Millis>,
    /// At most this many crashes in the schedule.
    pub max_crashes: u32,
    /// Longest time the daemon stays down before it is started again.
    pub restart_ms: Millis,
    /// Store outages: (start, length).
    pub store_outages: Vec<(Millis, Millis)>,
    /// Provider outages: (start, length).
    pub provider_outages: Vec<(Millis, Millis)>,
    /// Job attempts failing recoverably on the node.
    pub job_fail: u32,
    /// Spot interruptions: when a running spot node (if any) is reclaimed.
    pub interrupt_at: Vec<Millis>,
}

/// A schedule.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The seed it was drawn from.
    pub seed: u64,
    /// The pool (its strategy included).
    pub pool: PoolSpec,
    /// Claims.
    pub claims: Vec<ClaimScript>,
    /// Jobs.
    pub jobs: Vec<JobScript>,
    /// Runs submitted.
    pub runs: Vec<RunScript>,
    /// Faults, on until `active_ms`.
    pub faults: Faults,
    /// Agent boot time range.
    pub boot_ms: (Millis, Millis),
    /// How long faults are on (ms after the start).
    pub active_ms: Millis,
    /// How long the world runs without faults afterwards, before the
    /// settled checks.
    pub settle_ms: Millis,
    /// Every restart of the daemon runs a new revision of the pool (its
    /// image and `revision` change), so the nodes left up have drifted.
    pub drift: bool,
}

/// Instance types of the simulated pool (EC2-like offerings of the memory
/// provider; both sold as spot).
pub(crate) const SMALL: &str = "c7i.large";
pub(crate) const LARGE: &str = "c7i.4xlarge";

impl Plan {
    /// The schedule of `seed`.
    pub fn draw(seed: u64) -> Plan {
        let mut r = Rng::new(seed);
        let strategy = match r.range(0, 5) {
            0 => StrategyConfig::ColdImage(ColdImage::default()),
            1 => StrategyConfig::ColdSnapshot(ColdSnapshot::default()),
            2 => StrategyConfig::AlwaysOnResize(AlwaysOnResize::default()),
            3 => StrategyConfig::StoppedPool(StoppedPool::default()),
            4 => StrategyConfig::Spot(Spot::default()),
            _ => StrategyConfig::Hybrid(Hybrid::default()),
        };
        let types = [SMALL, LARGE]
            .iter()
            .filter_map(|t| InstanceType::new(*t).ok())
            .collect();
        let max_nodes = r.range32(1, 4);
        let pool = PoolSpec {
            name: PoolName::new("sim").unwrap_or_else(|_| unreachable!("a valid pool name")),
            strategy,
            instance_types: types,
            image: "ami-chaos".to_owned(),
            labels: BTreeMap::new(),
            min_nodes: r.range32(0, 1).min(max_nodes),
            max_nodes,
            slots_per_node: r.range32(1, 2),
            ..PoolSpec::default()
        };
        // A claim only the large type serves waits for good (pending, its
        // caller told `PoolAtCapacity` or `WaitingForCapacity`) under the
        // strategies that keep a fixed set of baseline nodes — stopped_pool
        // never goes past `size`, hybrid's overflow needs room under
        // `max_nodes` — so only the others get such claims.
        let sizes_to_demand = matches!(
            pool.strategy,
            StrategyConfig::ColdImage(_)
                | StrategyConfig::ColdSnapshot(_)
                | StrategyConfig::AlwaysOnResize(_)
                | StrategyConfig::Spot(_)
        );
        let active_ms = r.range(10, 30) * 60_000;
        let claims = (0..r.range32(1, 8))
            .map(|n| ClaimScript {
                n,
                at: r.range(0, active_ms * 3 / 4),
                hold_ms: r.range(5_000, 240_000),
                lease_ttl_ms: r.range(45_000, 180_000),
                max_wait_ms: r.chance(200).then(|| r.range(60_000, 900_000)),
                sealed: r.chance(300),
                large: r.chance(250) && sizes_to_demand,
                affinity: None,
            })
            .collect();
        let jobs = (0..r.range32(0, 5))
            .map(|n| JobScript {
                n,
                at: r.range(0, active_ms * 3 / 4),
                run_secs: r.range(5, 180),
            })
            .collect();
        let windows = |r: &mut Rng, max: u32| -> Vec<(Millis, Millis)> {
            (0..r.range32(0, max))
                .map(|_| (r.range(0, active_ms), r.range(1_000, 90_000)))
                .collect()
        };
        let max_crashes = r.range32(0, 6);
        let faults = Faults {
            msg_loss: r.range32(0, 150),
            msg_dup: r.range32(0, 150),
            msg_delay_ms: r.range(1, 3_000),
            link_break: r.range32(0, 40),
            link_delay_ms: r.range(1, 800),
            store_error: r.range32(0, 60),
            store_error_after: r.range32(0, 40),
            store_latency_ms: r.range(0, 80),
            provider_error: r.range32(0, 200),
            provider_error_after: r.range32(0, 80),
            provider_latency_ms: {
                let lo = r.range(50, 2_000);
                (lo, lo + r.range(0, 20_000))
            },
            issue_error: r.range32(0, 100),
            crash_store: (r.range32(0, 15), r.range32(0, 15)),
            crash_provider: (r.range32(0, 60), r.range32(0, 60)),
            crash_at: (0..r.range32(0, 3))
                .map(|_| r.range(0, active_ms))
                .collect(),
            max_crashes,
            restart_ms: r.range(0, 60_000),
            store_outages: windows(&mut r, 2),
            provider_outages: windows(&mut r, 2),
            job_fail: r.range32(0, 250),
            interrupt_at: (0..r.range32(0, 2))
                .map(|_| r.range(0, active_ms))
                .collect(),
        };
        let mut plan = Plan {
            seed,
            pool,
            claims,
            jobs,
            // From a stream of their own, so the draws above (and every
            // regression seed's schedule) stay as they were.
            runs: {
                let mut r = Rng::new(seed ^ 0x72_75_6e_73);
                (0..r.range32(0, 3))
                    .map(|n| RunScript {
                        n,
                        at: r.range(0, active_ms * 3 / 4),
                        tasks: (0..r.range32(1, 4)).map(|_| r.range(5, 120)).collect(),
                    })
                    .collect()
            },
            faults,
            boot_ms: {
                let lo = r.range(2_000, 60_000);
                (lo, lo + r.range(0, 60_000))
            },
            active_ms,
            settle_ms: 2 * 3_600_000,
            drift: false,
        };
        // Pool policies, drawn last so that every other draw of a seed
        // stays what it was before they existed.
        if r.chance(300) {
            plan.pool.max_uses = Some(r.range32(1, 3));
        }
        if r.chance(300) {
            plan.pool.schedule = schedule(&mut r);
        }
        if r.chance(300) {
            plan.pool.affinity_wait_ms = r.range(0, 120_000);
            for c in &mut plan.claims {
                c.affinity = r.chance(700).then(|| r.range32(0, 2));
            }
        }
        if r.chance(300) {
            plan.drift = true;
            plan.pool.drift_replacements = r.range32(0, 2);
        }
        plan
    }

    /// The pool the daemon's `incarnation` (1 for the first start) runs:
    /// with `drift`, each restart a new image and revision.
    pub fn pool_at(&self, incarnation: u64) -> PoolSpec {
        let mut pool = self.pool.clone();
        if self.drift && incarnation > 1 {
            pool.image = format!("ami-chaos-v{incarnation}");
            pool.revision = incarnation.to_string();
        }
        pool
    }
}

/// A schedule whose periods change every few minutes, so that spare nodes
/// come and go while claims, jobs and faults do.
fn schedule(r: &mut Rng) -> Vec<SchedulePeriod> {
    let mut periods = Vec::new();
    for cron in ["* * * * *", "*/7 * * * *", "10-25 * * * *"] {
        if !r.chance(600) {
            continue;
        }
        let spec = PeriodSpec {
            periods: vec![cron.to_owned()],
            timezone: "UTC".to_owned(),
            min_idle: r.range32(0, 2),
            scale_factor: ScaleFactor::new(f64::from(r.range32(0, 2)) / 2.0).unwrap_or_default(),
            scale_factor_limit: r.chance(500).then(|| r.range32(0, 2)),
            idle_time_ms: r.chance(500).then(|| r.range(0, 300_000)),
        };
        if let Ok(p) = SchedulePeriod::new(spec) {
            periods.push(p);
        }
    }
    periods
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.pool;
        writeln!(
            f,
            "seed {}: pool {} strategy {} nodes {}..{} slots {}; {} claims, {} jobs; faults for {} s, then {} s settled",
            self.seed,
            p.name,
            p.strategy.name(),
            p.min_nodes,
            p.max_nodes,
            p.slots_per_node,
            self.claims.len(),
            self.jobs.len(),
            self.active_ms / 1000,
            self.settle_ms / 1000,
        )?;
        if let Some(m) = p.max_uses {
            writeln!(f, "max_uses: {m}")?;
        }
        if p.affinity_wait_ms > 0 {
            writeln!(f, "affinity_wait_ms: {}", p.affinity_wait_ms)?;
        }
        if self.drift {
            writeln!(
                f,
                "drift at every restart, {} at once",
                p.drift_replacements
            )?;
        }
        for s in &p.schedule {
            writeln!(f, "schedule: {} {:?}", s, s.spec())?;
        }
        writeln!(f, "faults: {:?}", self.faults)?;
        for c in &self.claims {
            writeln!(f, "claim: {c:?}")?;
        }
        for j in &self.jobs {
            writeln!(f, "job: {j:?}")?;
        }
        for run in &self.runs {
            writeln!(f, "run: {run:?}")?;
        }
        Ok(())
    }
}
