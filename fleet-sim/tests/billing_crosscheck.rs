//! A trace replayed through the billing rules directly matches the
//! simulator's bill within 1 %.
//!
//! The trace is built so that each node's life is known without the
//! controller: jobs far apart, each on a fresh node (ColdImage) that runs
//! from its create call through boot, the job and the idle timeout until
//! its delete completes; or (StoppedPool, one node) runs, stops, and
//! starts again per job.

mod common;

use fleet_core::billing::BillingModel;
use fleet_core::money::{GbMonthPrice, HourlyPrice, Money};
use serde_json::json;

const API_MS: u64 = 2_000; // the world's provider API latency (delete, stop)

fn run(book: &str, strategy: serde_json::Value, trace: &[(u64, u64)], hours: u64) -> (i64, i64) {
    let t: Vec<_> = trace
        .iter()
        .map(|(a, d)| json!({"at_ms": a, "duration_ms": d}))
        .collect();
    let mut v = common::input(book, json!({ "trace": t }), hours);
    v["strategies"] = json!([strategy]);
    // No jitter: the direct replay uses the mean latencies.
    v["provider"]["boot"] =
        json!({"image_spread_ms": 0, "snapshot_spread_ms": 0, "stopped_spread_ms": 0});
    let r = common::simulate(&v);
    let s = &r.strategies[0];
    (s.cost.total_micros, s.cost.stopped_micros)
}

fn within_1pct(sim: i64, direct: Money) {
    let d = direct.micros() as f64;
    assert!(
        (sim as f64 - d).abs() <= d * 0.01,
        "simulator {sim} vs direct {d}"
    );
}

/// Jobs 2 h apart, 10 / 25 / 70 min long.
const TRACE: [(u64, u64); 3] = [
    (0, 600_000),
    (7_200_000, 1_500_000),
    (14_400_000, 4_200_000),
];

#[test]
fn cold_image_on_ec2_per_second_billing() {
    let b = BillingModel::ec2();
    let price = HourlyPrice::from_micros(178_500); // c7i.xlarge
    let direct: Money = TRACE
        .iter()
        .map(|(_, d)| b.running_cost(price, b.boot.image_ms + d + 60_000 + API_MS))
        .sum();
    let (sim, _) = run("aws", json!({"kind": "cold_image"}), &TRACE, 8);
    within_1pct(sim, direct);
}

#[test]
fn cold_image_on_hetzner_per_started_hour() {
    let b = BillingModel::hetzner();
    let price = HourlyPrice::from_micros(11_880); // cx32: €0.0110 × 1.08
    let direct: Money = TRACE
        .iter()
        .map(|(_, d)| b.running_cost(price, b.boot.image_ms + d + 60_000 + API_MS))
        .sum();
    // 10 min, 25 min, 70 min (+ boot and idle) → 1 + 1 + 2 started hours.
    assert_eq!(direct, price.0.times(4));
    let (sim, _) = run("hetzner", json!({"kind": "cold_image"}), &TRACE, 8);
    within_1pct(sim, direct);
}

#[test]
fn stopped_pool_on_ec2_pays_disk_while_stopped() {
    let b = BillingModel::ec2();
    let price = HourlyPrice::from_micros(178_500);
    let idle = 300_000;
    // The node is created at 0, boots, serves job 0 at once (it waits for
    // the boot), idles, stops; each later job starts it again.
    let mut running = Money::ZERO;
    let mut up_ms = 0;
    for (i, (_, d)) in TRACE.iter().enumerate() {
        let boot = if i == 0 {
            b.boot.image_ms
        } else {
            b.boot.stopped_ms
        };
        let run_ms = boot + d + idle + API_MS;
        running += b.running_cost(price, run_ms);
        up_ms += run_ms;
    }
    let total_ms = 8 * 3_600_000;
    let disk = GbMonthPrice(Money::from_micros(80_000));
    let stopped = disk.for_millis(50, total_ms - up_ms);
    let (sim, sim_stopped) = run("aws", json!({"kind": "stopped_pool", "size": 1}), &TRACE, 8);
    within_1pct(sim, running + stopped);
    within_1pct(sim_stopped, stopped);
}
