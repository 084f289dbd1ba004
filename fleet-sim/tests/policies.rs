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

#[test]
fn affinity_hit_rate_is_reported_and_a_bounded_wait_raises_it() {
    let run_keys = |wait_ms: u64| {
        let mut v = common::input("aws", common::daytime(), 168);
        v["jobs"]["affinity_keys"] = json!(4);
        v["pool"]["min_nodes"] = json!(4);
        v["pool"]["affinity_wait_ms"] = json!(wait_ms);
        v["strategies"] = json!([{ "kind": "cold_image" }]);
        common::simulate(&v)
    };
    let prefer = run_keys(0);
    let wait = run_keys(120_000);
    let (p, w) = (&prefer.strategies[0], &wait.strategies[0]);
    let (Some(pa), Some(wa)) = (&p.affinity, &w.affinity) else {
        panic!("no affinity figures: {p:?}");
    };
    assert_eq!(pa.grants, p.jobs.served, "every job named a key");
    // Four repositories over four warm nodes: a node picked at random would
    // have served the same repository about a quarter of the time.
    assert!(pa.hit_rate > 0.4, "preferring alone: {pa:?}");
    assert!(wa.hit_rate > pa.hit_rate, "waiting 2 min: {wa:?} vs {pa:?}");
    let table = fleet_sim::report::table(&prefer);
    assert!(table.contains("cache affinity:"), "{table}");
    // Without keys nothing is reported.
    assert!(run(json!({})).strategies[0].affinity.is_none());
}
