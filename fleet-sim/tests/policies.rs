//! Pool policies in the simulator: it runs the controller, so a pool's
//! schedule and `max_uses` act there as they do in the daemon.

mod common;

use serde_json::json;

/// Cold image boots on a weekday-daytime forecast, with `pool` merged into
/// the common pool.
fn run(pool: serde_json::Value) -> fleet_sim::SimResult {
    let mut v = common::input("aws", common::daytime(), 168);
    for (k, val) in pool.as_object().into_iter().flatten() {
        v["pool"][k] = val.clone();
    }
    v["strategies"] = json!([{ "kind": "cold_image" }]);
    common::simulate(&v)
}

#[test]
fn a_working_hours_schedule_costs_less_than_warm_nodes_all_week() {
    // Two warm nodes all week, versus two spare slots on weekdays 07-18
    // (UTC, the forecast's clock) only, versus no warm node at all.
    let warm = run(json!({ "min_nodes": 2 }));
    let scheduled = run(json!({ "schedule": [{
        "periods": ["* 7-17 * * mon-fri"], "min_idle": 2
    }]}));
    let cold = run(json!({}));
    let (w, s, c) = (
        &warm.strategies[0],
        &scheduled.strategies[0],
        &cold.strategies[0],
    );
    assert!(
        s.cost.total_micros < w.cost.total_micros,
        "scheduled {} vs warm all week {}",
        s.cost.total_usd,
        w.cost.total_usd
    );
    assert!(
        s.node_hours.idle_running < w.node_hours.idle_running * 0.6,
        "idle node-hours: scheduled {} vs warm {}",
        s.node_hours.idle_running,
        w.node_hours.idle_running
    );
    // The spare slots serve the daytime jobs without a boot: the median
    // wait drops from a cold boot to next to nothing.
    assert!(
        s.wait_s.p50 < c.wait_s.p50 / 4.0,
        "median wait: scheduled {} s vs cold {} s",
        s.wait_s.p50,
        c.wait_s.p50
    );
    assert_eq!(s.jobs.unserved, 0);
}

#[test]
fn max_uses_recycles_nodes_and_costs_boots() {
    let plain = run(json!({ "min_nodes": 1 }));
    let recycled = run(json!({ "min_nodes": 1, "max_uses": 1 }));
    let (p, r) = (&plain.strategies[0], &recycled.strategies[0]);
    let boots = |s: &fleet_sim::report::StrategyResult| s.boots.values().sum::<u64>();
    // One use per node: every job boots a node of its own.
    assert!(
        boots(r) >= r.jobs.served,
        "{} boots, {} jobs",
        boots(r),
        r.jobs.served
    );
    assert!(boots(p) < boots(r));
    assert_eq!(r.jobs.unserved, 0);
}
