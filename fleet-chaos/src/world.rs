//! One schedule, start to finish: the callers and faults of its plan, the
//! daemon started (and, after every crash or self-fencing, started again
//! with the next epoch on the same store and cloud, as its supervisor
//! would), the faults switched off, the world left to settle, the settled
//! checks.

use std::sync::Arc;
use std::time::Duration;

use fleet_core::controller::Timing;
use fleet_core::ids::{Epoch, FleetId, Millis};
use fleet_core::protocol::AgentMsg;
use fleet_core::provider::{InstanceState, Market};
use fleet_runtime::Fleet;

use crate::agent::{HEARTBEAT_MS, Note};
use crate::daemon::{SimIssuer, SimTransport};
use crate::plan::Plan;
use crate::provider::ChaosProvider;
use crate::sim::{Sim, SimClock, T0};
use crate::store::ChaosStore;

/// How to run a schedule.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Keep every line of the trace (otherwise the last few hundred).
    pub keep_trace: bool,
}

/// What a schedule did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The schedule.
    pub plan: Plan,
    /// Steps (trace lines): messages, store writes, provider calls, agent
    /// and caller actions, crashes.
    pub steps: u64,
    /// Invariant violations, in the order found (empty: the schedule
    /// passed).
    pub violations: Vec<String>,
    /// A hash of the whole trace: equal for two runs of one seed.
    pub trace_hash: u64,
    /// The trace (all of it with [`Options::keep_trace`], else its tail).
    pub trace: Vec<String>,
    /// Daemon crashes.
    pub crashes: u32,
    /// Daemon starts (crash restarts, restarts after fencing and failed
    /// starts included).
    pub incarnations: u64,
    /// Virtual time simulated (ms).
    pub virtual_ms: Millis,
    /// How often each kind of event happened.
    pub counts: std::collections::BTreeMap<&'static str, u64>,
}

/// The daemon's timers in the simulation: short enough that losses,
/// timeouts and orphan collection happen within a schedule.
pub(crate) fn timing() -> Timing {
    Timing {
        heartbeat_interval_ms: HEARTBEAT_MS,
        heartbeat_timeout_ms: 30_000,
        boot_timeout_ms: 240_000,
        provider_retry_initial_ms: 1_000,
        provider_retry_max_ms: 30_000,
        create_backoff_ms: 30_000,
        capacity_cooldown_ms: 120_000,
        store_retry_ms: 500,
        claim_retention_ms: 86_400_000,
        orphan_min_age_ms: 300_000,
        ..Timing::default()
    }
}

/// Runs the schedule of `seed`.
pub fn run(seed: u64, opts: &Options) -> Outcome {
    let plan = Plan::draw(seed);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build();
    match rt {
        Ok(rt) => rt.block_on(world(plan, opts)),
        Err(e) => Outcome {
            plan,
            steps: 0,
            violations: vec![format!("no runtime: {e}")],
            trace_hash: 0,
            trace: Vec::new(),
            crashes: 0,
            incarnations: 0,
            virtual_ms: 0,
            counts: Default::default(),
        },
    }
}

async fn world(plan: Plan, opts: &Options) -> Outcome {
    let sim = Sim::new(plan.clone(), opts.keep_trace);
    for c in &plan.claims {
        tokio::spawn(crate::clients::claim(Arc::clone(&sim), c.clone()));
    }
    for j in &plan.jobs {
        tokio::spawn(crate::clients::job(Arc::clone(&sim), j.clone()));
    }
    for run in &plan.runs {
        tokio::spawn(crate::clients::run(Arc::clone(&sim), run.clone()));
    }
    for at in plan.faults.crash_at.clone() {
        let sim = Arc::clone(&sim);
        tokio::spawn(async move {
            sim.until(at).await;
            let inc = sim.with(|st, _| st.life.incarnation);
            sim.crash(
                inc,
                "crashes at random instants",
                format_args!("at a random instant"),
            );
        });
    }
    for at in plan.faults.interrupt_at.clone() {
        tokio::spawn(interrupt(Arc::clone(&sim), at));
    }
    let end = plan.active_ms + plan.settle_ms;
    let mut incarnation = 0;
    let fleet = loop {
        incarnation += 1;
        let rx = sim.daemon_up(incarnation);
        let started = Fleet::builder()
            .store(Arc::new(ChaosStore {
                sim: Arc::clone(&sim),
                incarnation,
            }))
            .provider(Arc::new(ChaosProvider::new(Arc::clone(&sim), incarnation)))
            .transport(Arc::new(SimTransport::new(
                Arc::clone(&sim),
                incarnation,
                rx,
            )))
            .issuer(Arc::new(SimIssuer {
                sim: Arc::clone(&sim),
                incarnation,
            }))
            .pool(plan.pool_at(incarnation))
            .timing(timing())
            .namespace("chaos")
            .fleet_id(FleetId::new("chaos").unwrap_or_else(|_| unreachable!("a valid fleet id")))
            .epoch(Epoch(incarnation))
            .clock(Arc::new(SimClock { start: sim.start }))
            .inventory_every(Duration::from_secs(60))
            .start()
            .await;
        let fleet = match started {
            Ok(f) => f,
            Err(e) => {
                sim.with(|st, at| {
                    st.count("failed starts");
                    st.kill(at, format_args!("start failed: {e}"));
                });
                if sim.at() >= end {
                    break None;
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
        };
        sim.with(|st, at| {
            st.life.running = true;
            st.step(at, format_args!("daemon {incarnation} running"));
        });
        let stopped = loop {
            if sim.at() >= end {
                break None;
            }
            tokio::select! {
                biased;
                () = sim.crashed.notified() => {
                    if !sim.with(|st, _| st.alive(incarnation)) {
                        break Some("crashed");
                    }
                }
                () = tokio::time::sleep(Duration::from_secs(1)) => {
                    if !fleet.is_ready() {
                        break Some("its control loop stopped");
                    }
                }
            }
        };
        let Some(why) = stopped else {
            break Some(fleet);
        };
        sim.with(|st, at| {
            if st.alive(incarnation) {
                // Only one daemon ever writes (a dead one cannot), so a
                // control loop that stops itself was fenced by its own
                // writes: fleet-daemon would go on holding the lease and
                // serve nothing. The schedule goes on with a restart.
                st.violations(
                    at,
                    vec![format!(
                        "daemon {incarnation}: {why} with no other leader writing"
                    )],
                );
                st.kill(at, format_args!("{why}; restarted to go on"));
            }
        });
        drop(fleet);
        let delay = sim.with(|st, at| {
            if st.faults(at) {
                st.rng.range(0, plan.faults.restart_ms)
            } else {
                1_000
            }
        });
        tokio::time::sleep(Duration::from_millis(delay)).await;
    };
    let instances = sim.provider.instances();
    sim.with(|st, at| {
        st.step(at, format_args!("settled: checking"));
        let mut bad = Vec::new();
        if fleet.is_none() || !st.alive(incarnation) {
            bad.push("the daemon is not running at the end".to_owned());
        }
        bad.extend(st.check.settled(&instances, &st.claims, &st.jobs, &st.runs));
        st.violations(at, bad);
    });
    drop(fleet);
    sim.with(|st, at| Outcome {
        plan,
        steps: st.trace.steps(),
        violations: st.violations.clone(),
        trace_hash: st.trace.hash(),
        trace: st.trace.lines(),
        crashes: st.life.crashes,
        incarnations: incarnation,
        virtual_ms: at,
        counts: st.counts.clone(),
    })
}

/// A spot interruption at `at`: the first running spot instance's agent
/// gets the two-minute notice, then the cloud takes the instance.
async fn interrupt(sim: Arc<Sim>, at: Millis) {
    sim.until(at).await;
    let victim = sim
        .provider
        .instances()
        .into_iter()
        .find(|i| i.market == Market::Spot && i.state == InstanceState::Running);
    let Some(victim) = victim else { return };
    let node = victim.node;
    let deadline = T0 + at + 120_000;
    sim.with(|st, at| {
        st.count("spot interruptions");
        st.step(at, format_args!("spot interruption notice for {node}"));
        if let Some((_, tx)) = st.agents.get(&node) {
            let _ = tx.send(Note::Say(AgentMsg::Interrupted { deadline }));
        }
    });
    sim.until(at + 120_000).await;
    sim.with(|st, at| st.step(at, format_args!("spot instance of {node} reclaimed")));
    let _ = sim.provider.interrupt(&node);
    sim.power_off(&node);
}
